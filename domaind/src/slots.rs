//! Host-wide uid slot claims.
//!
//! Every sandbox domain gets a host uid range `UID_BASE + slot * UID_RANGE`. Two domains must
//! never share a range while any process of either lives, even when they belong to different
//! domaind instances (parallel tests, a misconfiguration) or to a domaind that restarted.
//! So slots are claimed in a fixed host directory ([`SLOT_DIR`]): one file per slot, named by
//! its number, written atomically and only while holding an exclusive `flock` on
//! `<dir>/.lock`. The file names its owner: domain name, runtime dir, the domaind that
//! claimed it, and (once launched) the domain's init pid and start time.
//!
//! A claim is free for reuse only when nothing can still run in that range:
//! - a launched claim: its init is dead (pid + start time, so a reused pid does not count),
//! - a pending claim (launch in progress): the claiming domaind is dead, and no launch is
//!   in progress under its runtime dir (the launch lock, see [`crate::manager`]),
//! - and in both cases the domain's cgroup (its name below the claiming instance's cgroup
//!   root) is gone (processes may live in it: a teardown whose kill or cgroup removal failed
//!   leaves the slot quarantined this way until the cgroup is gone). Another instance's
//!   cgroup of the same name does not count.
//!
//! The directory is shared by every domaind instance on purpose: uid ranges must be disjoint
//! host-wide, so the instances draw from one pool, and each one's claims name it (runtime
//! dir and cgroup root); an instance releases only its own claims.
//!
//! domaind removes its claim when a domain's cgroup is confirmed gone, and rewrites it when
//! it adopts a running domain after a restart.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bulkhead_sandbox::CgroupRoot;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Domain cgroups on the host as (instance cgroup root, domain name).
pub type CgroupSet = BTreeSet<(String, String)>;

/// The host-wide claim directory.
pub const SLOT_DIR: &str = "/run/bulkhead-uid-slots";
/// Largest claim file read (they are ours, but be strict).
const MAX_CLAIM_FILE: u64 = 64 * 1024;
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "all {max} uid ranges are in use on this host (claims in {dir}); shut a domain down first"
    )]
    Full { max: u32, dir: PathBuf },
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> SlotError + 'a {
    move |source| SlotError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Who owns a slot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Domain name (also the name of its cgroups).
    pub name: String,
    /// Runtime dir of the domaind that owns the domain.
    pub runtime_dir: PathBuf,
    /// That domaind's cgroup root (absent in claims of older domainds, which all used the
    /// system root).
    #[serde(default)]
    pub cgroup_root: CgroupRoot,
    /// The domaind that claimed the slot, with its start time.
    pub domaind_pid: i32,
    pub domaind_start: u64,
    /// The domain's init (pid, start time) once the launcher returned.
    #[serde(default)]
    pub init: Option<(i32, u64)>,
}

impl Claim {
    /// A pending claim of this process (an instance with `runtime_dir` and `cgroup_root`)
    /// for `name`.
    pub fn pending(name: &str, runtime_dir: &Path, cgroup_root: &CgroupRoot) -> Self {
        let pid = std::process::id() as i32;
        Self {
            name: name.to_owned(),
            runtime_dir: runtime_dir.to_owned(),
            cgroup_root: cgroup_root.clone(),
            domaind_pid: pid,
            domaind_start: start_time(pid).unwrap_or(0),
            init: None,
        }
    }

    fn same_owner(&self, other: &Claim) -> bool {
        self.name == other.name && self.runtime_dir == other.runtime_dir
    }
}

/// Start time of a live (non-zombie) process, from /proc/<pid>/stat field 22.
fn start_time(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Name of the launch lock in the runtime dir: every launch holds a shared `flock` on it
/// while the sandbox launcher runs.
pub const LAUNCH_LOCK: &str = "launch.lock";

fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && start_time(pid) == Some(start)
}

/// Whether a launch is in progress under `runtime_dir`: some process holds its launch lock.
fn launch_in_progress(runtime_dir: &Path) -> bool {
    let path = runtime_dir.join(LAUNCH_LOCK);
    let Ok(f) = File::open(&path) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err(_) => true,
    }
}

/// The claim directory.
#[derive(Debug, Clone)]
pub struct SlotDir {
    dir: PathBuf,
}

impl SlotDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, slot: u32) -> PathBuf {
        self.dir.join(slot.to_string())
    }

    /// Exclusive lock over the whole directory (blocking; held for a few file operations).
    fn lock(&self) -> Result<Flock<File>, SlotError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir, "cannot create the uid slot dir"))?;
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path, "cannot open"))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| SlotError::Io {
            path,
            action: "cannot lock",
            source: e.into(),
        })
    }

    fn read(&self, slot: u32) -> Result<Option<Claim>, SlotError> {
        let path = self.path(slot);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "cannot open")(e)),
        };
        let mut buf = Vec::new();
        f.take(MAX_CLAIM_FILE)
            .read_to_end(&mut buf)
            .map_err(io(&path, "cannot read"))?;
        match serde_json::from_slice(&buf) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                // Claims are written atomically, so this is tampering or a disk problem:
                // keep the slot out of use rather than risk sharing a range.
                warn!(path = %path.display(), error = %e, "unreadable uid slot claim; the slot stays in use");
                Err(SlotError::Io {
                    path,
                    action: "unreadable claim",
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                })
            }
        }
    }

    fn write(&self, slot: u32, claim: &Claim) -> Result<(), SlotError> {
        let path = self.path(slot);
        let json = serde_json::to_vec(claim).map_err(|e| SlotError::Io {
            path: path.clone(),
            action: "cannot serialize",
            source: std::io::Error::other(e),
        })?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir, "cannot create"))?;
        tmp.write_all(&json).map_err(io(&path, "cannot write"))?;
        tmp.persist(&path).map_err(|e| SlotError::Io {
            path: path.clone(),
            action: "cannot rename",
            source: e.error,
        })?;
        Ok(())
    }

    /// Whether `claim` no longer protects anything (see the module docs).
    fn reusable(claim: &Claim, cgroups: Option<&CgroupSet>) -> bool {
        let Some(cgroups) = cgroups else {
            return false;
        };
        let running = match claim.init {
            Some((pid, start)) => alive(pid, start),
            None => {
                alive(claim.domaind_pid, claim.domaind_start)
                    || launch_in_progress(&claim.runtime_dir)
            }
        };
        !running && !cgroups.contains(&(claim.cgroup_root.as_str().to_owned(), claim.name.clone()))
    }

    /// Claim the lowest reusable slot below `max` for `claim`. `cgroups` lists the domain
    /// cgroups of every instance on the host, `None` if unknown (asked only if an existing
    /// claim has to be judged; unknown keeps every existing claim).
    pub fn claim(
        &self,
        claim: &Claim,
        max: u32,
        cgroups: &dyn Fn() -> Option<CgroupSet>,
    ) -> Result<u32, SlotError> {
        let _lock = self.lock()?;
        let mut seen: Option<Option<CgroupSet>> = None;
        for slot in 0..max {
            let free = match self.read(slot) {
                Ok(None) => true,
                Ok(Some(c)) => Self::reusable(&c, seen.get_or_insert_with(cgroups).as_ref()),
                Err(_) => false,
            };
            if free {
                self.write(slot, claim)?;
                return Ok(slot);
            }
        }
        Err(SlotError::Full {
            max,
            dir: self.dir.clone(),
        })
    }

    /// Record `claim` (e.g. with the init filled in, or adopted after a restart) for `slot`.
    pub fn update(&self, slot: u32, claim: &Claim) -> Result<(), SlotError> {
        let _lock = self.lock()?;
        if let Ok(Some(old)) = self.read(slot) {
            if !old.same_owner(claim) {
                warn!(slot, old = %old.name, new = %claim.name, "uid slot claim names another domain; taking it over");
            }
        }
        self.write(slot, claim)
    }

    /// Remove the claim of `slot` if it still belongs to `name` under `runtime_dir`.
    pub fn release(&self, slot: u32, name: &str, runtime_dir: &Path) -> Result<(), SlotError> {
        let _lock = self.lock()?;
        match self.read(slot)? {
            Some(c) if c.name == name && c.runtime_dir == runtime_dir => {
                let path = self.path(slot);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io(&path, "cannot remove")(e)),
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Option<CgroupSet> {
        Some(BTreeSet::new())
    }

    fn sys() -> CgroupRoot {
        CgroupRoot::system()
    }

    #[test]
    fn claims_are_exclusive_until_released_and_dead_owners_free_them() {
        let dir = tempfile::tempdir().unwrap();
        let rt = dir.path().join("run");
        let slots = SlotDir::new(dir.path().join("slots"));
        let a = slots
            .claim(&Claim::pending("a", &rt, &sys()), 8, &none)
            .unwrap();
        let b = slots
            .claim(&Claim::pending("b", &rt, &sys()), 8, &none)
            .unwrap();
        assert_ne!(a, b, "a pending claim of a live domaind is taken");
        // a launched claim whose init lives stays taken
        let mut ca = Claim::pending("a", &rt, &sys());
        ca.init = Some((
            std::process::id() as i32,
            start_time(std::process::id() as i32).unwrap(),
        ));
        slots.update(a, &ca).unwrap();
        let c = slots
            .claim(&Claim::pending("c", &rt, &sys()), 8, &none)
            .unwrap();
        assert!(c != a && c != b);
        // release by someone else is ignored; by the owner frees it
        slots.release(a, "x", &rt).unwrap();
        assert!(slots.read(a).unwrap().is_some());
        slots.release(a, "a", &rt).unwrap();
        assert_eq!(
            slots
                .claim(&Claim::pending("d", &rt, &sys()), 8, &none)
                .unwrap(),
            a
        );
        // a dead init frees the slot, unless a cgroup of that domain still exists (quarantine)
        let mut dead = Claim::pending("e", &rt, &sys());
        dead.init = Some((i32::MAX - 1, 1));
        slots.update(b, &dead).unwrap();
        // (the same name below another instance's root does not count)
        let other = CgroupRoot::instance("other").unwrap();
        let elsewhere = || Some(BTreeSet::from([(other.to_string(), "e".to_owned())]));
        let with_cgroup = || {
            Some(BTreeSet::from([
                ("bulkhead".to_owned(), "e".to_owned()),
                (other.to_string(), "e".to_owned()),
            ]))
        };
        let f = slots
            .claim(&Claim::pending("f", &rt, &sys()), 8, &with_cgroup)
            .unwrap();
        assert_ne!(f, b, "slot reused while the dead domain's cgroup exists");
        let g = slots
            .claim(&Claim::pending("g", &rt, &sys()), 8, &elsewhere)
            .unwrap();
        assert_eq!(g, b);
        // full
        assert!(matches!(
            slots.claim(&Claim::pending("h", &rt, &sys()), 4, &none),
            Err(SlotError::Full { .. })
        ));
    }
}
