//! Caps on live disposables, and the memory margin of every disposable start.
//!
//! A request for a disposable (`RunDisposable`, an `@dispvm` call from a domain or from
//! dom0, an application of the desktop's menu in a disposable) first takes a [`Slot`] for its
//! source: refused with [`LimitError::Total`] when `max_live` disposables are live, with
//! [`LimitError::PerSource`] when that source has `max_live_per_source` (see
//! [`crate::config::DisposableLimits`]). The slot is pending while the disposable is made
//! (a warm pool member handed out, or a cold one created); once it has a name it is bound
//! to it and counts until that disposable is removed ([`Limits::release`], called where every
//! disposable is removed). A pending slot that is dropped (the request failed before a
//! disposable existed) frees itself, so no error path can leak one.
//!
//! Ready warm pool members are not counted (see `DisposableLimits`); after a domaind
//! restart only such members survive (every other disposable is killed, its caller being
//! gone), so the count starts from zero with nothing left to count.
//!
//! A cold start (no ready member) also needs memory: `MemAvailable` minus the disposable's
//! memory must stay at or above the margin, as for pool members ([`check_memory`]). Each
//! request compares against `MemAvailable` as it is then, so requests that arrive together
//! before any of them has started see the same figure; the caps bound how many those can be.
//!
//! The cost is a mutex-guarded map update per request and per removal: nothing measurable
//! next to a disposable's start.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;

use bulkhead_domain::DomainName;
use tracing::warn;

use super::lock;
use crate::config::{DisposableLimits, DAEMON_CONFIG_FILE, ENV_POOL_MEMORY_MARGIN};

/// Why a disposable was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{requester} already has {live} live disposables, its limit; end one of them, or raise max_live_per_source (now {max}) in [disposables] of {DAEMON_CONFIG_FILE} and restart domaind")]
    PerSource {
        requester: String,
        live: u32,
        max: u32,
    },
    #[error("{live} disposables are live, the limit for all domains together; end some of them, or raise max_live (now {max}) in [disposables] of {DAEMON_CONFIG_FILE} and restart domaind")]
    Total { live: u32, max: u32 },
    #[error("not enough memory for a disposable of {base}: {available} MiB available minus its {memory} MiB would fall below the margin of {margin} MiB; stop a domain, or lower domaind's --pool-memory-margin-mib ({ENV_POOL_MEMORY_MARGIN})")]
    Memory {
        base: String,
        available: u64,
        memory: u64,
        margin: u64,
    },
    #[error("cannot read MemAvailable from /proc/meminfo, so the memory margin for a disposable of {base} cannot be checked; not starting it")]
    MemoryUnknown { base: String },
}

impl From<LimitError> for bulkhead_api::Error {
    fn from(e: LimitError) -> Self {
        bulkhead_api::Error::LimitReached(e.to_string())
    }
}

/// The live-disposable bookkeeping of one domaind.
pub(crate) struct Limits {
    caps: DisposableLimits,
    inner: StdMutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Requests whose disposable has no name yet: id -> source.
    pending: HashMap<u64, String>,
    /// Live disposables counted against a source: name -> source. Sources stay strings:
    /// a source is a caller, and dom0 (not a domain name) is one.
    live: HashMap<DomainName, String>,
}

impl Inner {
    fn total(&self) -> usize {
        self.pending.len() + self.live.len()
    }

    fn of(&self, source: &str) -> usize {
        self.pending.values().filter(|s| *s == source).count()
            + self.live.values().filter(|s| *s == source).count()
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Limits {
    pub(crate) fn new(caps: DisposableLimits) -> Self {
        Self {
            caps,
            inner: StdMutex::new(Inner::default()),
        }
    }

    /// A slot for one more disposable started for `source`, or why not (logged).
    pub(crate) fn reserve(&self, source: &str) -> Result<Slot<'_>, LimitError> {
        let mut inner = lock(&self.inner);
        let total = count(inner.total());
        let mine = count(inner.of(source));
        let refused = if mine >= self.caps.max_live_per_source {
            Some(LimitError::PerSource {
                requester: source.to_owned(),
                live: mine,
                max: self.caps.max_live_per_source,
            })
        } else if total >= self.caps.max_live {
            Some(LimitError::Total {
                live: total,
                max: self.caps.max_live,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            drop(inner);
            warn!(
                source,
                live_total = total,
                live_of_source = mine,
                max_live = self.caps.max_live,
                max_live_per_source = self.caps.max_live_per_source,
                "disposable refused: {e}"
            );
            return Err(e);
        }
        let id = inner.next;
        inner.next = inner.next.wrapping_add(1);
        inner.pending.insert(id, source.to_owned());
        Ok(Slot {
            limits: self,
            id: Some(id),
        })
    }

    /// Disposable `name` was removed: free its slot (if it had one; idempotent).
    pub(crate) fn release(&self, name: &DomainName) {
        lock(&self.inner).live.remove(name);
    }

    /// (all live disposables counted, those of `source`).
    #[cfg(test)]
    fn counts(&self, source: &str) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.total(), inner.of(source))
    }
}

/// A live-disposable slot of one request; freed on drop unless bound to a disposable.
pub(crate) struct Slot<'a> {
    limits: &'a Limits,
    id: Option<u64>,
}

impl Slot<'_> {
    /// The request got disposable `name`: it counts until [`Limits::release`] of `name`.
    pub(crate) fn bind(mut self, name: &DomainName) {
        if let Some(id) = self.id.take() {
            let mut inner = lock(&self.limits.inner);
            if let Some(source) = inner.pending.remove(&id) {
                inner.live.insert(name.clone(), source);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.limits.inner).pending.remove(&id);
        }
    }
}

/// Whether a new disposable of `base` with `memory_mib` may start, given the text of
/// `/proc/meminfo` (`None`: unreadable) and the margin.
pub(crate) fn check_memory(
    base: &str,
    meminfo: Option<&str>,
    memory_mib: u64,
    margin_mib: u64,
) -> Result<(), LimitError> {
    let available =
        meminfo
            .and_then(mem_available_mib)
            .ok_or_else(|| LimitError::MemoryUnknown {
                base: base.to_owned(),
            })?;
    if fits(available, memory_mib, margin_mib) {
        Ok(())
    } else {
        Err(LimitError::Memory {
            base: base.to_owned(),
            available,
            memory: memory_mib,
            margin: margin_mib,
        })
    }
}

/// `MemAvailable` in MiB from a `/proc/meminfo` text.
pub fn mem_available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let mut words = rest.split_whitespace();
        let kib: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") | None => Some(kib / 1024),
            Some(_) => None,
        }
    })
}

/// Whether one more member of `member_mib` fits: `available - member >= margin`.
pub fn fits(available_mib: u64, member_mib: u64, margin_mib: u64) -> bool {
    available_mib
        .checked_sub(member_mib)
        .is_some_and(|left| left >= margin_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    #[test]
    fn meminfo_available() {
        let text = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(mem_available_mib(text), Some(8000));
        assert_eq!(mem_available_mib("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available_mib("MemAvailable: lots kB\n"), None);
        assert_eq!(mem_available_mib("MemAvailable: 2048 MB\n"), None);
    }

    #[test]
    fn memory_margin() {
        assert!(fits(2000, 400, 1024));
        assert!(fits(1424, 400, 1024));
        assert!(!fits(1423, 400, 1024));
        assert!(!fits(300, 400, 0));
        assert!(fits(400, 400, 0));
    }

    fn limits(total: u32, per_source: u32) -> Limits {
        Limits::new(DisposableLimits {
            max_live: total,
            max_live_per_source: per_source,
        })
    }

    #[test]
    fn per_source_cap_refuses_that_source_only() {
        let l = limits(3, 1);
        l.reserve("work").unwrap().bind(&n("disp1"));
        let e = l.reserve("work").err().unwrap();
        assert_eq!(
            e,
            LimitError::PerSource {
                requester: "work".into(),
                live: 1,
                max: 1
            }
        );
        let text = e.to_string();
        assert!(text.contains("work already has 1 live"), "{text}");
        assert!(text.contains("max_live_per_source"), "{text}");
        assert!(text.contains("domaind.toml"), "{text}");
        // Another source is not affected.
        l.reserve("dom0").unwrap().bind(&n("disp2"));
        assert_eq!(l.counts("work"), (2, 1));
        // The removal frees the slot.
        l.release(&n("disp1"));
        l.reserve("work").unwrap().bind(&n("disp3"));
        assert_eq!(l.counts("work"), (2, 1));
    }

    #[test]
    fn total_cap_counts_every_source_and_pending_requests() {
        let l = limits(2, 2);
        let pending = l.reserve("a").unwrap();
        l.reserve("b").unwrap().bind(&n("disp1"));
        let e = l.reserve("c").err().unwrap();
        assert_eq!(e, LimitError::Total { live: 2, max: 2 });
        assert!(e.to_string().contains("max_live (now 2)"), "{e}");
        // The per-source cap is reported first when both apply.
        let l1 = limits(1, 1);
        let _s = l1.reserve("a").unwrap();
        assert!(matches!(l1.reserve("a"), Err(LimitError::PerSource { .. })));
        assert!(matches!(l1.reserve("b"), Err(LimitError::Total { .. })));
        // A request that failed before it had a disposable frees its slot.
        drop(pending);
        assert_eq!(l.counts("a"), (1, 0));
        l.reserve("c").unwrap().bind(&n("disp2"));
        assert_eq!(l.counts("c"), (2, 1));
    }

    #[test]
    fn release_is_idempotent_and_ignores_unknown_names() {
        let l = limits(2, 2);
        l.reserve("a").unwrap().bind(&n("disp1"));
        // A pool member that was never handed out, removed: nothing to free.
        l.release(&n("disp9"));
        assert_eq!(l.counts("a"), (1, 1));
        l.release(&n("disp1"));
        l.release(&n("disp1"));
        assert_eq!(l.counts("a"), (0, 0));
        // Many requests and removals leave nothing behind.
        for i in 0..100 {
            let s = l.reserve("a").unwrap();
            if i % 2 == 0 {
                s.bind(&n(&format!("d{i}")));
                l.release(&n(&format!("d{i}")));
            }
        }
        assert_eq!(l.counts("a"), (0, 0));
    }

    #[test]
    fn zero_refuses_everything() {
        assert!(matches!(
            limits(0, 4).reserve("a"),
            Err(LimitError::Total { live: 0, max: 0 })
        ));
        assert!(matches!(
            limits(4, 0).reserve("a"),
            Err(LimitError::PerSource { .. })
        ));
    }

    #[test]
    fn memory_margin_of_a_start() {
        let mi = "MemTotal: 4096000 kB\nMemAvailable: 2048000 kB\n"; // 2000 MiB
        assert_eq!(check_memory("dvm", Some(mi), 400, 1024), Ok(()));
        assert_eq!(check_memory("dvm", Some(mi), 976, 1024), Ok(()));
        let e = check_memory("dvm", Some(mi), 977, 1024).unwrap_err();
        assert_eq!(
            e,
            LimitError::Memory {
                base: "dvm".into(),
                available: 2000,
                memory: 977,
                margin: 1024
            }
        );
        let text = e.to_string();
        assert!(text.contains("2000 MiB available"), "{text}");
        assert!(text.contains("--pool-memory-margin-mib"), "{text}");
        assert!(matches!(
            check_memory("dvm", Some(mi), 400, u64::MAX),
            Err(LimitError::Memory { .. })
        ));
        assert_eq!(
            check_memory("dvm", None, 400, 0),
            Err(LimitError::MemoryUnknown { base: "dvm".into() })
        );
        assert!(matches!(
            check_memory("dvm", Some("MemTotal: 1 kB\n"), 400, 0),
            Err(LimitError::MemoryUnknown { .. })
        ));
    }

    #[test]
    fn limit_errors_are_limit_reached_on_the_bus() {
        let e: bulkhead_api::Error = LimitError::Total { live: 1, max: 1 }.into();
        assert!(matches!(e, bulkhead_api::Error::LimitReached(m) if m.contains("max_live")));
    }
}
