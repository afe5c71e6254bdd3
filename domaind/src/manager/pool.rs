//! Warm disposables: a pool per disposable template, started in advance and paused.
//!
//! A disposable-template with `dispvm_pool_size = N` gets up to N disposables (`dispNNNN`,
//! ordinary disposables in every other way) that domaind creates, starts and pauses ahead of
//! time. `RunDisposable`, `@dispvm` calls and everything built on them (open in disposable)
//! take a member first: unpause it and hand it out; with no member ready they make a cold
//! disposable as before.
//!
//! - **Refill.** The replacement of a handed-out member is started once that member has been
//!   removed, or after [`REFILL_DEFER`] if it is still running then (a long editing session).
//!   Starting it at once made it compete for the CPU with the member's application start and
//!   its teardown (and for the config lock with its removal): warm requests took about twice
//!   as long on a loaded 2-core machine.
//! - **Memory bound.** A member is started only if `MemAvailable` (from `/proc/meminfo`)
//!   minus the member's memory stays at or above the margin
//!   (`DaemonConfig::pool_memory_margin_mib`); otherwise the pool stays short and its note
//!   (`pool_note` in `GetProperties`) says why. The pool filler retries every
//!   [`RETRY`].
//! - **Template changes.** While the disposable template itself is not halted its pool is
//!   drained (members made before a change would be stale) and refilled once it halts.
//! - **Restart.** A member carries a marker file ([`MARKER`]) in its runtime dir, next to
//!   `instance.json`. The marker is written after the member is started and paused and
//!   removed before it is unpaused to be handed out. A domaind restart adopts a live, frozen
//!   member with a marker naming a base back into the pool; every other disposable is killed
//!   as before (its caller is gone). Excess members (the size was lowered meanwhile) are then
//!   destroyed by the filler, so nothing leaks.
//! - **State.** `GetProperties` of a disposable template lists `pool_members` (the ready
//!   members, space-separated) and `pool_note`; the members themselves are listed by `List`
//!   as paused disposables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainName};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::limits::{fits, mem_available_mib};
use super::{blocking, lock, Manager};
use crate::fsutil;
use crate::state::DomainState;

/// Marker file in a pool member's runtime dir; its content is the base's name.
pub const MARKER: &str = "pool-member";
/// Longest marker we read (a domain name is far shorter).
const MAX_MARKER: u64 = 256;
/// How often the filler looks again when nothing woke it (memory may have been freed).
pub const RETRY: Duration = Duration::from_secs(10);
/// Longest the refill waits for a handed-out member to end. Until then the member's own
/// work (its application starting, its teardown) has the CPU to itself rather than sharing
/// it with a replacement being started.
pub const REFILL_DEFER: Duration = Duration::from_secs(2);

/// The kernel's memory summary.
const MEMINFO: &str = "/proc/meminfo";

/// Pool bookkeeping of one domaind.
pub(crate) struct Pool {
    /// Ready (started, paused) members per base, oldest first.
    ready: StdMutex<BTreeMap<DomainName, Vec<DomainName>>>,
    /// Why a base's pool is short, per base.
    notes: StdMutex<BTreeMap<DomainName, String>>,
    wake: Arc<Notify>,
    /// Members handed out (to their base) whose refill waits for their end (or [`REFILL_DEFER`]).
    lent: Arc<StdMutex<BTreeMap<DomainName, DomainName>>>,
    margin_mib: u64,
}

impl Pool {
    pub(crate) fn new(margin_mib: u64) -> Self {
        Self {
            ready: StdMutex::new(BTreeMap::new()),
            notes: StdMutex::new(BTreeMap::new()),
            wake: Arc::new(Notify::new()),
            lent: Arc::new(StdMutex::new(BTreeMap::new())),
            margin_mib,
        }
    }

    /// Ask the filler to look at every pool now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// `member` was handed out: refill once it ended ([`Pool::returned`]) or after
    /// [`REFILL_DEFER`], whichever comes first.
    fn lend(&self, base: &DomainName, member: &DomainName) {
        lock(&self.lent).insert(member.clone(), base.clone());
        let lent = self.lent.clone();
        let wake = self.wake.clone();
        let m = member.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_DEFER).await;
            if lock(&lent).remove(&m).is_some() {
                debug!(domain = %m, "handed-out warm disposable still running; the pool refills");
                wake.notify_one();
            }
        });
    }

    /// A disposable ended and was removed: if it was a handed-out member, refill now.
    pub(crate) fn returned(&self, member: &DomainName) {
        if lock(&self.lent).remove(member).is_some() {
            debug!(
                domain = member.as_str(),
                "handed-out warm disposable ended; the pool refills"
            );
            self.wake();
        }
    }

    /// Whether a handed-out member of `base` is still waiting to be replaced.
    fn lending(&self, base: &DomainName) -> bool {
        lock(&self.lent).values().any(|b| b == base)
    }

    fn members(&self, base: &DomainName) -> Vec<DomainName> {
        lock(&self.ready).get(base).cloned().unwrap_or_default()
    }

    fn pop(&self, base: &DomainName, newest: bool) -> Option<DomainName> {
        let mut ready = lock(&self.ready);
        let v = ready.get_mut(base)?;
        let n = if newest {
            v.pop()
        } else if v.is_empty() {
            None
        } else {
            Some(v.remove(0))
        };
        if v.is_empty() {
            ready.remove(base);
        }
        n
    }

    fn push(&self, base: &DomainName, member: &DomainName) {
        lock(&self.ready)
            .entry(base.clone())
            .or_default()
            .push(member.clone());
    }

    /// Forget `member` wherever it is (it ended or was taken).
    pub(crate) fn forget(&self, member: &DomainName) -> bool {
        let mut ready = lock(&self.ready);
        let mut found = false;
        ready.retain(|_, v| {
            let before = v.len();
            v.retain(|m| m != member);
            found |= v.len() != before;
            !v.is_empty()
        });
        found
    }

    fn note(&self, base: &DomainName, text: Option<String>) {
        let mut notes = lock(&self.notes);
        match text {
            Some(t) => {
                if notes.get(base) != Some(&t) {
                    info!(base = base.as_str(), note = %t, "disposable pool");
                }
                notes.insert(base.clone(), t);
            }
            None => {
                notes.remove(base);
            }
        }
    }
}

fn marker_path(runtime_domain_dir: &Path) -> PathBuf {
    runtime_domain_dir.join(MARKER)
}

/// Write the marker atomically (temp file + rename in the same dir).
fn write_marker(runtime_domain_dir: &Path, base: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = tempfile::NamedTempFile::new_in(runtime_domain_dir)?;
    tmp.write_all(base.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(marker_path(runtime_domain_dir))
        .map_err(|e| e.error)?;
    Ok(())
}

/// The base named by a member's marker; `None` if there is none or it is not a valid name.
fn read_marker(runtime_domain_dir: &Path) -> Option<DomainName> {
    use std::io::Read as _;
    let f = std::fs::File::open(marker_path(runtime_domain_dir)).ok()?;
    let mut text = String::new();
    f.take(MAX_MARKER).read_to_string(&mut text).ok()?;
    match DomainName::new(text.trim()) {
        Ok(n) => Some(n),
        Err(e) => {
            warn!(dir = %runtime_domain_dir.display(), error = %e, "ignoring an invalid pool marker");
            None
        }
    }
}

/// What one look at the pools decided.
enum Step {
    /// Something was done; look again at once.
    Again,
    /// Every pool is as it should be (or held back); wait for a wake-up or [`RETRY`].
    Idle,
}

impl Manager {
    /// Start the pool filler (once, after recovery).
    pub(crate) fn spawn_pool_filler(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(pool_filler(me));
    }

    /// `pool_members` and `pool_note` of a disposable template for `GetProperties`.
    pub(crate) fn pool_properties(&self, base: &DomainName) -> [(String, String); 2] {
        let members: Vec<String> = self
            .pool
            .members(base)
            .into_iter()
            .map(String::from)
            .collect();
        [
            ("pool_members".into(), members.join(" ")),
            (
                "pool_note".into(),
                lock(&self.pool.notes)
                    .get(base)
                    .cloned()
                    .unwrap_or_default(),
            ),
        ]
    }

    /// A disposable from `base` for a request made on behalf of `source` (the calling
    /// domain, or dom0): a ready pool member (unpaused, its marker removed) or else a new cold
    /// one (created, not started).
    ///
    /// Refused ([`Error::LimitReached`]) when `source` or all sources together are at their
    /// cap of live disposables, or, for a cold one, when its memory would take
    /// `MemAvailable` below the margin (see [`super::limits`]). The disposable counts
    /// against `source` until it is removed.
    pub(crate) async fn disposable_for(
        self: &Arc<Self>,
        base: &str,
        source: &str,
    ) -> Result<DomainName, Error> {
        let slot = self.limits.reserve(source)?;
        // The name is checked after the limits; a base that is not a valid name has no pool,
        // so its error comes just below.
        let bn = self.name(base);
        let member = match &bn {
            Ok(bn) => self.take_member(bn).await,
            Err(_) => None,
        };
        if let Some(n) = member {
            // Already running: no new memory.
            slot.bind(&n);
            return Ok(n);
        }
        let bn = bn?;
        let memory = self.load(&bn)?.memory;
        let text = std::fs::read_to_string(MEMINFO).ok();
        if let Err(e) =
            super::limits::check_memory(base, text.as_deref(), memory, self.pool.margin_mib)
        {
            warn!(base, source, "disposable refused: {e}");
            return Err(e.into());
        }
        let dn = self.create_disposable(&bn).await?;
        slot.bind(&dn);
        Ok(dn)
    }

    /// Hand out a ready member of `base`'s pool, if any.
    async fn take_member(self: &Arc<Self>, base: &DomainName) -> Option<DomainName> {
        while let Some(name) = self.pool.pop(base, false) {
            let rt = self.runtime(&name);
            let _op = rt.op.lock().await;
            let inst = match (rt.state(), rt.instance()) {
                (DomainState::Paused, Some(i)) => i,
                (st, _) => {
                    // Unpaused by hand or ending: not handed out (it may have been used).
                    warn!(domain = %name, state = st.as_str(), "pool member is no longer paused; not handing it out");
                    let me = self.clone();
                    let n = name.clone();
                    drop(_op);
                    tokio::spawn(async move { me.destroy_disposable(&n).await });
                    self.pool.wake();
                    continue;
                }
            };
            let dir = self.cfg.paths.runtime_domain_dir(&name);
            let rec = inst.record.clone();
            // Marker first: a domaind that dies from here on kills it as a plain disposable.
            let thawed = blocking(move || -> Result<(), String> {
                fsutil::remove_file(&marker_path(&dir)).map_err(|e| e.to_string())?;
                rec.thaw().map_err(|e| e.to_string())
            })
            .await;
            match thawed {
                Ok(Ok(())) => {
                    self.pool.lend(base, &name);
                    self.set_state(&rt, DomainState::Running);
                    info!(domain = %name, base = base.as_str(), "handed out a warm disposable");
                    return Some(name);
                }
                Ok(Err(e)) => warn!(domain = %name, error = %e, "cannot unpause a pool member"),
                Err(e) => {
                    warn!(domain = %name, error = %e.message(), "cannot unpause a pool member")
                }
            }
            drop(_op);
            self.destroy_disposable(&name).await;
            self.pool.wake();
        }
        None
    }

    /// Destroy ready members of `base` beyond its current size (after a size change).
    pub(crate) async fn pool_trim(self: &Arc<Self>, base: &DomainName) {
        let want = self.pool_want(base);
        while self.pool.members(base).len() > want {
            let Some(m) = self.pool.pop(base, true) else {
                break;
            };
            info!(domain = %m, base = base.as_str(), "pool shrinks; destroying a member");
            self.destroy_disposable(&m).await;
        }
        self.pool.wake();
    }

    /// The root `member` runs on when it is no longer its template's current root.
    fn stale_root(&self, member: &DomainName) -> Option<PathBuf> {
        let root = lock(&self.roots).get(member).cloned().flatten()?;
        let template = root.parent()?.file_name()?.to_str()?.to_owned();
        let current = crate::tmpl::ready_root(&self.cfg.paths.templates_dir(), &template).ok()?;
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        (canon(&root) != canon(&current)).then_some(root)
    }

    /// How many members `base` should have now: its size while it is a halted
    /// disposable-template, else 0.
    fn pool_want(&self, base: &DomainName) -> usize {
        match self.store.load(base) {
            Ok(c)
                if c.class == DomainClass::DisposableTemplate
                    && self.state_of(base) == DomainState::Halted =>
            {
                c.dispvm_pool_size as usize
            }
            _ => 0,
        }
    }

    /// One look at every pool: shrink one that is too big, or add one member to one that is
    /// short (if memory allows).
    async fn pool_step(self: &Arc<Self>) -> Step {
        let (good, _) = self.store.load_all();
        let mut bases: Vec<DomainName> = good
            .iter()
            .filter(|c| c.class == DomainClass::DisposableTemplate && c.dispvm_pool_size > 0)
            .map(|c| c.name.clone())
            .collect();
        for b in lock(&self.pool.ready).keys() {
            if !bases.contains(b) {
                bases.push(b.clone());
            }
        }
        let notes: Vec<DomainName> = lock(&self.pool.notes).keys().cloned().collect();
        for b in notes {
            if !bases.contains(&b) {
                self.pool.note(&b, None);
            }
        }
        // A member made on a root its template has left (a kept change, a revert) would hand
        // out the old software: it goes, and the pool refills on the current root.
        for base in &bases {
            for m in self.pool.members(base) {
                if let Some(root) = self.stale_root(&m) {
                    if self.pool.forget(&m) {
                        info!(domain = %m, base = %base, root = %root.display(), "pool member runs on a template root that is no longer current; destroying it");
                        self.destroy_disposable(&m).await;
                        return Step::Again;
                    }
                }
            }
        }
        for base in &bases {
            let want = self.pool_want(base);
            if self.pool.members(base).len() > want {
                if let Some(m) = self.pool.pop(base, true) {
                    info!(domain = %m, base = %base, want, "pool too big; destroying a member");
                    self.destroy_disposable(&m).await;
                    return Step::Again;
                }
            }
        }
        for base in &bases {
            let want = self.pool_want(base);
            let have = self.pool.members(base).len();
            if have >= want {
                if want > 0 || self.state_of(base) == DomainState::Halted {
                    self.pool.note(base, None);
                } else {
                    self.pool.note(
                        base,
                        Some(format!(
                            "the pool is empty while {base} is {}; it refills once {base} is halted",
                            self.state_of(base).as_str()
                        )),
                    );
                }
                continue;
            }
            if self.pool.lending(base) {
                // Woken by something else meanwhile; the refill still waits for the handed-out
                // member (its end or REFILL_DEFER wakes the filler).
                continue;
            }
            let member_mib = good
                .iter()
                .find(|c| &c.name == base)
                .map(|c| c.memory)
                .unwrap_or(bulkhead_domain::DEFAULT_MEMORY_MIB);
            let text = std::fs::read_to_string(MEMINFO).unwrap_or_default();
            let Some(avail) = mem_available_mib(&text) else {
                self.pool.note(
                    base,
                    Some(format!(
                        "{have} of {want} ready: cannot read MemAvailable from {MEMINFO}"
                    )),
                );
                continue;
            };
            if !fits(avail, member_mib, self.pool.margin_mib) {
                self.pool.note(
                    base,
                    Some(format!(
                        "{have} of {want} ready: {avail} MiB available minus {member_mib} MiB for another member would fall below the margin of {} MiB",
                        self.pool.margin_mib
                    )),
                );
                continue;
            }
            match self.fill_one(base).await {
                Ok(name) => {
                    info!(domain = %name, base = %base, have = have + 1, want, "pool member ready");
                    self.pool.note(base, None);
                    return Step::Again;
                }
                Err(e) => {
                    self.pool.note(
                        base,
                        Some(format!(
                            "{have} of {want} ready: starting a member failed: {}",
                            e.message()
                        )),
                    );
                }
            }
        }
        Step::Idle
    }

    /// Create, start and pause one member of `base`; it is ready when this returns.
    async fn fill_one(self: &Arc<Self>, base: &DomainName) -> Result<DomainName, Error> {
        let dn = self.create_disposable(base).await?;
        let name = dn.as_str();
        let made = async {
            let rt = self.runtime(&dn);
            let _op = rt.op.lock().await;
            rt.state()
                .check(name, crate::state::Op::Start)
                .map_err(Error::InvalidState)?;
            let cfg = self.load(&dn)?;
            let inst = self.start_locked(&rt, &cfg).await?;
            let rec = inst.record.clone();
            let dir = self.cfg.paths.runtime_domain_dir(&dn);
            let b = base.clone();
            blocking(move || -> Result<(), String> {
                rec.freeze().map_err(|e| format!("cannot pause: {e}"))?;
                write_marker(&dir, b.as_str())
                    .map_err(|e| format!("cannot write the pool marker: {e}"))
            })
            .await?
            .map_err(Error::Backend)?;
            self.set_state(&rt, DomainState::Paused);
            // Only a member still paused and whose base still wants it joins the pool.
            self.pool.push(base, &dn);
            Ok::<(), Error>(())
        }
        .await;
        match made {
            Ok(()) => Ok(dn),
            Err(e) => {
                warn!(domain = %name, base = base.as_str(), error = %e.message(), "cannot make a pool member; removing it");
                self.destroy_disposable(&dn).await;
                Err(e)
            }
        }
    }

    /// After a restart: the base of a live disposable that is a frozen pool member (to adopt
    /// into the pool), else `None` (it is killed like any disposable whose caller is gone).
    pub(crate) async fn adoptable_member(
        &self,
        dn: &DomainName,
        record: &crate::backend::DomainRecord,
    ) -> Option<DomainName> {
        let dir = self.cfg.paths.runtime_domain_dir(dn);
        let rec = record.clone();
        let (base, frozen) =
            blocking(move || (read_marker(&dir), rec.is_frozen().unwrap_or(false)))
                .await
                .ok()?;
        let base = base?;
        if !frozen {
            info!(domain = %dn, base = %base, "pool member was not paused; not adopting it");
            return None;
        }
        Some(base)
    }

    /// Put an adopted member back into its base's pool.
    pub(crate) fn adopt_member(&self, base: &DomainName, member: &DomainName) {
        info!(
            domain = member.as_str(),
            base = base.as_str(),
            "adopted a warm disposable into its pool"
        );
        self.pool.push(base, member);
    }
}

/// The background filler: one [`Manager::pool_step`] after another while there is work,
/// then wait for a wake-up (a member taken, a size changed, a domain halted) or [`RETRY`].
async fn pool_filler(me: Weak<Manager>) {
    loop {
        let Some(m) = me.upgrade() else { return };
        let step = m.pool_step().await;
        if let Step::Idle = step {
            let wake = m.pool.wake.clone();
            drop(m);
            tokio::select! {
                _ = wake.notified() => debug!("pool filler woken"),
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    #[test]
    fn markers_round_trip_and_reject_junk() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(d.path()), None);
        write_marker(d.path(), "dvm").unwrap();
        assert_eq!(read_marker(d.path()).unwrap().as_str(), "dvm");
        std::fs::write(marker_path(d.path()), "../etc").unwrap();
        assert_eq!(read_marker(d.path()), None);
        std::fs::write(marker_path(d.path()), "x".repeat(10_000)).unwrap();
        assert_eq!(read_marker(d.path()), None);
    }

    #[test]
    fn pool_lists() {
        let p = Pool::new(0);
        p.push(&n("dvm"), &n("disp1"));
        p.push(&n("dvm"), &n("disp2"));
        p.push(&n("dvm"), &n("disp3"));
        assert_eq!(
            p.pop(&n("dvm"), false).as_ref().map(DomainName::as_str),
            Some("disp1")
        );
        assert_eq!(
            p.pop(&n("dvm"), true).as_ref().map(DomainName::as_str),
            Some("disp3")
        );
        assert!(p.forget(&n("disp2")));
        assert!(!p.forget(&n("disp2")));
        assert_eq!(p.pop(&n("dvm"), false), None);
        assert!(lock(&p.ready).is_empty());
    }

    #[tokio::test]
    async fn a_lent_member_holds_the_refill_until_it_returns() {
        let p = Pool::new(0);
        p.lend(&n("dvm"), &n("disp1"));
        assert!(p.lending(&n("dvm")));
        assert!(!p.lending(&n("other")));
        // Another disposable ending does not release it.
        p.returned(&n("disp2"));
        assert!(p.lending(&n("dvm")));
        p.returned(&n("disp1"));
        assert!(!p.lending(&n("dvm")));
        // The filler was woken (the permit is stored until it waits).
        p.wake.notified().await;
    }
}
