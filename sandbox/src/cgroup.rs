//! cgroups for sandboxes: `<root>/<domain>` under the cgroup2 hierarchy when it has the
//! memory, cpu and pids controllers, else under each cgroup v1 hierarchy (memory, cpu, pids,
//! freezer).
//!
//! `<root>` ([`CgroupRoot`]) belongs to one domaind instance: `bulkhead` for the system
//! instance, `bulkhead-<id>` for any other (a test's, a second daemon's). Everything that
//! lists or removes domain cgroups is given a root and looks only below it, so one instance
//! never touches another's domains, even those of the same name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{read_small, SandboxError};

/// Parent directory of the system instance's domain cgroups, under each hierarchy; other
/// instances use `bulkhead-<id>` ([`CgroupRoot`]).
pub const PARENT: &str = "bulkhead";
/// Longest instance id in `bulkhead-<id>`.
pub const MAX_ROOT_ID_LEN: usize = 32;

/// The cgroup directory (one path component below each hierarchy's mount point) under which
/// one domaind instance creates its domains' cgroups: [`PARENT`] for the system instance,
/// `bulkhead-<id>` (`<id>`: 1..=32 of `[a-z0-9_-]`) for any other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupRoot(String);

impl CgroupRoot {
    /// The system instance's root, `bulkhead`.
    pub fn system() -> Self {
        CgroupRoot(PARENT.to_owned())
    }

    /// `bulkhead-<id>`.
    pub fn instance(id: &str) -> Result<Self, SandboxError> {
        Self::parse(&format!("{PARENT}-{id}"))
    }

    /// The root of the instance whose runtime dir is `dir` (as the daemon uses it, ideally
    /// canonical): `bulkhead-<16 hex digits of a hash of the path>`. Stable across restarts
    /// and versions (FNV-1a 64, not the std hasher).
    pub fn for_runtime_dir(dir: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in dir.as_os_str().as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        CgroupRoot(format!("{PARENT}-{h:016x}"))
    }

    /// Checks a directory name: `bulkhead` or `bulkhead-<id>`.
    pub fn parse(s: &str) -> Result<Self, SandboxError> {
        let ok = s == PARENT
            || s.strip_prefix(PARENT)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|id| {
                    !id.is_empty()
                        && id.len() <= MAX_ROOT_ID_LEN
                        && id.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        })
                });
        if ok {
            Ok(CgroupRoot(s.to_owned()))
        } else {
            Err(SandboxError::InvalidSpec(format!(
                "cgroup root {s:?}: must be `{PARENT}` or `{PARENT}-<id>` with 1..={MAX_ROOT_ID_LEN} of [a-z0-9_-]"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the system instance's root.
    pub fn is_system(&self) -> bool {
        self.0 == PARENT
    }
}

impl Default for CgroupRoot {
    /// The system root: what specs and records written before roots existed used.
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Display for CgroupRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CgroupRoot {
    type Error = SandboxError;
    fn try_from(s: String) -> Result<Self, SandboxError> {
        Self::parse(&s)
    }
}

impl From<CgroupRoot> for String {
    fn from(r: CgroupRoot) -> String {
        r.0
    }
}
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CFS_PERIOD_US: u64 = 100_000;
/// How long freeze/kill/remove wait for the kernel before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// The cgroup directories of one sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum CgroupPaths {
    V2 {
        dir: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

/// The hierarchy (mount points) the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

/// Limits written into a new cgroup.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub pids_max: u64,
}

struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    super_opts: String,
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: PathBuf::from(bulkhead_fsutil::unescape_mountinfo(lf.get(4)?)),
                fstype: rf.first()?.to_string(),
                super_opts: rf.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn mounts() -> Result<Vec<MountEntry>, SandboxError> {
    let text =
        read_small(Path::new("/proc/self/mountinfo")).map_err(|source| SandboxError::Io {
            action: "read",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    Ok(parse_mountinfo(&text))
}

fn v2_controllers(root: &Path) -> Vec<String> {
    read_small(&root.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn v1_mount<'a>(entries: &'a [MountEntry], ctrl: &str) -> Option<&'a MountEntry> {
    entries
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == ctrl))
}

/// Per controller: which cgroup version serves it on this host.
pub fn controller_versions() -> Vec<(String, &'static str)> {
    let entries = mounts().unwrap_or_default();
    let v2: Vec<String> = entries
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .flat_map(|m| v2_controllers(&m.mount_point))
        .collect();
    V1_CONTROLLERS
        .iter()
        .map(|c| {
            // the v2 freezer is core (cgroup.freeze): usable when the v2 hierarchy is the one in use
            let v2_in_use = V2_CONTROLLERS.iter().all(|k| v2.iter().any(|x| x == k));
            let in_v2 = v2.iter().any(|x| x == c) || (*c == "freezer" && v2_in_use);
            let version = if in_v2 {
                "v2"
            } else if v1_mount(&entries, c).is_some() {
                "v1"
            } else {
                "none"
            };
            (c.to_string(), version)
        })
        .collect()
}

impl Hierarchy {
    /// v2 when a cgroup2 mount has memory, cpu and pids; else v1 when all four v1 controllers
    /// are mounted.
    pub fn detect() -> Result<Hierarchy, SandboxError> {
        let entries = mounts()?;
        let mut v2: Vec<&MountEntry> = entries.iter().filter(|m| m.fstype == "cgroup2").collect();
        // prefer the conventional location
        v2.sort_by_key(|m| m.mount_point != Path::new("/sys/fs/cgroup"));
        for m in v2 {
            let have = v2_controllers(&m.mount_point);
            if V2_CONTROLLERS.iter().all(|c| have.iter().any(|h| h == c)) {
                return Ok(Hierarchy::V2 {
                    root: m.mount_point.clone(),
                });
            }
        }
        let find = |c: &str| {
            v1_mount(&entries, c)
                .map(|m| m.mount_point.clone())
                .ok_or_else(|| {
                    SandboxError::NoCgroups(format!(
                        "no cgroup2 mount with memory, cpu and pids, and no cgroup v1 `{c}` hierarchy"
                    ))
                })
        };
        Ok(Hierarchy::V1 {
            memory: find("memory")?,
            cpu: find("cpu")?,
            pids: find("pids")?,
            freezer: find("freezer")?,
        })
    }

    /// Paths a domain's cgroup has (or would have) in this hierarchy, below `owner`.
    pub fn paths_for(&self, owner: &CgroupRoot, name: &str) -> CgroupPaths {
        let parent = owner.as_str();
        match self {
            Hierarchy::V2 { root } => CgroupPaths::V2 {
                dir: root.join(parent).join(name),
            },
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => CgroupPaths::V1 {
                memory: memory.join(parent).join(name),
                cpu: cpu.join(parent).join(name),
                pids: pids.join(parent).join(name),
                freezer: freezer.join(parent).join(name),
            },
        }
    }

    /// Creates `<owner>/<name>` with the limits. A leftover empty cgroup of the same name is
    /// reused; one that still has processes is an error (the domain is running).
    pub fn create(
        &self,
        owner: &CgroupRoot,
        name: &str,
        limits: Limits,
    ) -> Result<CgroupPaths, SandboxError> {
        let paths = self.paths_for(owner, name);
        if let Some(pid) = paths.procs()?.first() {
            return Err(SandboxError::Cgroup {
                path: paths.dirs()[0].clone(),
                action: "create: cgroup still has processes (is the domain running?)",
                source: io::Error::other(format!("pid {pid} present")),
            });
        }
        match self {
            Hierarchy::V2 { root } => {
                let parent = root.join(owner.as_str());
                mkdir(&parent)?;
                let enable = "+memory +cpu +pids";
                write(&root.join("cgroup.subtree_control"), enable)?;
                write(&parent.join("cgroup.subtree_control"), enable)?;
            }
            Hierarchy::V1 { .. } => {
                for d in paths.dirs() {
                    if let Some(p) = d.parent() {
                        mkdir(p)?;
                    }
                }
            }
        }
        for d in paths.dirs() {
            mkdir(d)?;
        }
        let quota = u64::from(limits.vcpus) * CFS_PERIOD_US;
        match &paths {
            CgroupPaths::V2 { dir } => {
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                // no swap: the memory limit is the limit
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            }
            CgroupPaths::V1 {
                memory, cpu, pids, ..
            } => {
                set_v1_memory(memory, limits.memory_bytes)?;
                write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
            }
        }
        Ok(paths)
    }

    /// The mount points of the hierarchy (one for v2, one per controller for v1).
    fn mount_points(&self) -> Vec<&PathBuf> {
        match self {
            Hierarchy::V2 { root } => vec![root],
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => vec![memory, cpu, pids, freezer],
        }
    }

    fn parents(&self, owner: &CgroupRoot) -> Vec<PathBuf> {
        self.mount_points()
            .into_iter()
            .map(|p| p.join(owner.as_str()))
            .collect()
    }

    /// The instance roots present (`bulkhead` and `bulkhead-*` directories, any hierarchy).
    pub fn roots(&self) -> Result<Vec<CgroupRoot>, SandboxError> {
        let mut roots = Vec::new();
        for mp in self.mount_points() {
            let entries = fs::read_dir(mp).map_err(|source| SandboxError::Cgroup {
                path: mp.clone(),
                action: "list",
                source,
            })?;
            for e in entries.flatten() {
                let Some(n) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                if let Ok(r) = CgroupRoot::parse(&n) {
                    if !roots.contains(&r) {
                        roots.push(r);
                    }
                }
            }
        }
        roots.sort();
        Ok(roots)
    }

    /// Removes `owner`'s directory where it is empty (no domain cgroup left below it).
    /// Returns whether it is gone from every hierarchy.
    pub fn remove_root_if_empty(&self, owner: &CgroupRoot) -> bool {
        let mut gone = true;
        for d in self.parents(owner) {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => gone = false,
            }
        }
        gone
    }
}

/// Names of the domain cgroups below `owner` (any hierarchy). Another instance's cgroups,
/// even of the same names, are not listed.
pub fn list_domains(owner: &CgroupRoot) -> Result<Vec<String>, SandboxError> {
    let hier = Hierarchy::detect()?;
    list_domains_in(&hier, owner)
}

/// [`list_domains`] in a given hierarchy.
pub fn list_domains_in(hier: &Hierarchy, owner: &CgroupRoot) -> Result<Vec<String>, SandboxError> {
    let mut names = Vec::new();
    for parent in hier.parents(owner) {
        let entries = match fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SandboxError::Cgroup {
                    path: parent,
                    action: "list",
                    source,
                })
            }
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(n) = e.file_name().to_str() {
                    if crate::valid_name(n) && !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Every domain cgroup on the host, of every instance: (root, name). For judging whether
/// anything may still run in a uid range, whoever owns it.
pub fn list_all_domains() -> Result<Vec<(CgroupRoot, String)>, SandboxError> {
    let hier = Hierarchy::detect()?;
    let mut all = Vec::new();
    for root in hier.roots()? {
        for n in list_domains_in(&hier, &root)? {
            all.push((root.clone(), n));
        }
    }
    Ok(all)
}

fn mkdir(p: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SandboxError::Cgroup {
            path: p.to_path_buf(),
            action: "mkdir",
            source,
        }),
    }
}

fn write(p: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(p, value).map_err(|source| SandboxError::Cgroup {
        path: p.to_path_buf(),
        action: "write",
        source,
    })
}

/// Sets memory and memory+swap (where swap accounting exists) of a v1 memory cgroup to
/// `bytes`. The kernel keeps `memory.limit_in_bytes <= memory.memsw.limit_in_bytes` at every
/// step and answers EINVAL to a write that would break it, and a reused leftover cgroup holds
/// the limits of its previous run: when raising, memsw goes first; when lowering, memory.
fn set_v1_memory(dir: &Path, bytes: u64) -> Result<(), SandboxError> {
    let mem = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let value = bytes.to_string();
    if !memsw.exists() {
        return write(&mem, &value);
    }
    let current: u64 = read(&mem)?
        .trim()
        .parse()
        .map_err(|e| SandboxError::Cgroup {
            path: mem.clone(),
            action: "parse current limit",
            source: io::Error::other(format!("{e}")),
        })?;
    if bytes > current {
        write(&memsw, &value)?;
        write(&mem, &value)
    } else {
        write(&mem, &value)?;
        write(&memsw, &value)
    }
}

fn read(p: &Path) -> Result<String, SandboxError> {
    read_small(p).map_err(|source| SandboxError::Cgroup {
        path: p.to_path_buf(),
        action: "read",
        source,
    })
}

impl CgroupPaths {
    /// Every directory of this cgroup (one for v2, one per controller for v1).
    pub fn dirs(&self) -> Vec<&PathBuf> {
        match self {
            CgroupPaths::V2 { dir } => vec![dir],
            CgroupPaths::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => vec![memory, cpu, pids, freezer],
        }
    }

    /// The directory whose cgroup.procs lists every process of the sandbox.
    fn procs_dir(&self) -> &Path {
        match self {
            CgroupPaths::V2 { dir } => dir,
            CgroupPaths::V1 { pids, .. } => pids,
        }
    }

    /// Pids in the cgroup (empty if it does not exist).
    pub fn procs(&self) -> Result<Vec<i32>, SandboxError> {
        let p = self.procs_dir().join("cgroup.procs");
        match read_small(&p) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(SandboxError::Cgroup {
                path: p,
                action: "read",
                source,
            }),
        }
    }

    /// The cgroup's user-space processes: [`Self::procs`] without kernel threads (KVM attaches
    /// its per-VM worker thread, `kvm-nx-lpage-recovery`, to the cgroup of the VMM that made
    /// the VM; no signal reaches it and it never freezes).
    pub fn user_procs(&self) -> Result<Vec<i32>, SandboxError> {
        Ok(self
            .procs()?
            .into_iter()
            .filter(|pid| !is_kernel_thread(*pid))
            .collect())
    }

    /// Stop every user-space process of the cgroup with SIGSTOP and wait until each of their
    /// threads is stopped. The pause of a VM domain: under cgroup v2 a cgroup that holds
    /// KVM's worker thread never reports frozen (see [`Self::user_procs`]), and a stopped
    /// VMM runs no vCPU either. SIGSTOP cannot be caught or ignored.
    pub fn stop_processes(&self) -> Result<(), SandboxError> {
        wait_until("every process of the cgroup stopped", || {
            let procs = self.user_procs()?;
            let mut all = true;
            for pid in &procs {
                if !threads_stopped(*pid) {
                    // again: a process forked since the last round gets it too
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
                    all = false;
                }
            }
            Ok(all)
        })
    }

    /// Let the processes stopped by [`Self::stop_processes`] go on.
    pub fn continue_processes(&self) -> Result<(), SandboxError> {
        self.signal_all(Signal::SIGCONT)
    }

    /// Whether every user-space process of the cgroup is stopped (and there is one).
    pub fn processes_stopped(&self) -> Result<bool, SandboxError> {
        let procs = self.user_procs()?;
        Ok(!procs.is_empty() && procs.iter().all(|p| threads_stopped(*p)))
    }

    /// Moves a process into the cgroup (every hierarchy).
    pub fn join(&self, pid: i32) -> Result<(), SandboxError> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    pub fn freeze(&self) -> Result<(), SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => {
                write(&dir.join("cgroup.freeze"), "1")?;
                wait_until("cgroup frozen", || self.is_frozen()).map_err(|e| match e {
                    SandboxError::Timeout { what, secs } => SandboxError::Timeout {
                        what: format!(
                            "{what} (tasks: {})",
                            task_states(&dir.join("cgroup.threads"))
                        ),
                        secs,
                    },
                    other => other,
                })
            }
            CgroupPaths::V1 { freezer, .. } => {
                let state = freezer.join("freezer.state");
                wait_until("cgroup frozen", || {
                    // writing FROZEN again retries a freeze that is still FREEZING
                    write(&state, "FROZEN")?;
                    self.is_frozen()
                })
            }
        }
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => write(&dir.join("cgroup.freeze"), "0"),
            CgroupPaths::V1 { freezer, .. } => write(&freezer.join("freezer.state"), "THAWED"),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => Ok(read(&dir.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1")),
            CgroupPaths::V1 { freezer, .. } => {
                Ok(read(&freezer.join("freezer.state"))?.trim() == "FROZEN")
            }
        }
    }

    /// SIGKILLs every process and waits until the cgroup is empty. Works while frozen.
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        if !self.exists() {
            return Ok(());
        }
        match self {
            CgroupPaths::V2 { dir } if dir.join("cgroup.kill").exists() => {
                write(&dir.join("cgroup.kill"), "1")?;
            }
            CgroupPaths::V2 { .. } => self.signal_all(Signal::SIGKILL)?,
            CgroupPaths::V1 { freezer, .. } => {
                // Freeze so nothing forks while we kill, kill everything listed, then thaw so
                // the frozen tasks can act on their pending SIGKILL.
                let frozen = self.freeze();
                if let Err(e) = &frozen {
                    tracing::warn!(cgroup = %freezer.display(), error = %e, "freeze before kill failed; killing anyway");
                }
                self.signal_all(Signal::SIGKILL)?;
                self.thaw()?;
            }
        }
        wait_until("cgroup empty after SIGKILL", || {
            let left = self.procs()?;
            if left.is_empty() {
                return Ok(true);
            }
            // v1 without cgroup.kill: catch anything forked in between
            self.signal_all(Signal::SIGKILL)?;
            Ok(false)
        })
    }

    fn signal_all(&self, sig: Signal) -> Result<(), SandboxError> {
        for pid in self.procs()? {
            // ESRCH: already gone, fine
            let _ = kill(Pid::from_raw(pid), sig);
        }
        Ok(())
    }

    /// Kills what is left and removes every directory; idempotent.
    pub fn remove(&self) -> Result<(), SandboxError> {
        if !self.exists() {
            return Ok(());
        }
        // a frozen v2 cgroup keeps killed tasks from exiting on old kernels; thaw first
        if self.is_frozen().unwrap_or(false) {
            self.thaw()?;
        }
        self.kill_all()?;
        for d in self.dirs() {
            wait_until("cgroup rmdir", || match fs::remove_dir(d) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
                // EBUSY while the last task finishes exiting
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
                Err(source) => Err(SandboxError::Cgroup {
                    path: d.clone(),
                    action: "rmdir",
                    source,
                }),
            })?;
        }
        Ok(())
    }

    /// Memory charged to the cgroup, bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("memory.current"),
            CgroupPaths::V1 { memory, .. } => memory.join("memory.usage_in_bytes"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }

    /// CPU time used by every process of the cgroup, nanoseconds (v2 `cpu.stat` usage_usec,
    /// v1 `cpuacct.usage` of the cpu hierarchy when cpuacct is mounted with it).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            CgroupPaths::V2 { dir } => read_small(&dir.join("cpu.stat"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|us| us.saturating_mul(1000)),
            CgroupPaths::V1 { cpu, .. } => match read_small(&cpu.join("cpuacct.usage")) {
                Ok(v) => v.trim().parse().ok(),
                // cpuacct mounted on its own: add up the processes' own and reaped children's
                // times (a process that exited unreaped is missed)
                Err(_) => {
                    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                        .ok()
                        .flatten()
                        .and_then(|t| u64::try_from(t).ok())
                        .filter(|t| *t > 0)?;
                    let ticks: u64 = self
                        .procs()
                        .ok()?
                        .iter()
                        .filter_map(|pid| read_small(Path::new(&format!("/proc/{pid}/stat"))).ok())
                        .filter_map(|stat| proc_cpu_ticks(&stat))
                        .sum();
                    Some(ticks.saturating_mul(1_000_000_000 / tick))
                }
            },
        }
    }

    /// The memory limit in bytes as the kernel reports it.
    pub fn memory_limit(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("memory.max"),
            CgroupPaths::V1 { memory, .. } => memory.join("memory.limit_in_bytes"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }

    /// The pids limit as the kernel reports it.
    pub fn pids_limit(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("pids.max"),
            CgroupPaths::V1 { pids, .. } => pids.join("pids.max"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }
}

/// utime + stime + cutime + cstime (clock ticks) of a `/proc/<pid>/stat` line.
fn proc_cpu_ticks(stat: &str) -> Option<u64> {
    // the command name may contain anything, so count fields after its closing parenthesis
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14
    f.get(11..15)?.iter().map(|v| v.parse::<u64>().ok()).sum()
}

/// The state letter and flags of `/proc/<path>/stat` (`None` if it is gone).
fn stat_state_flags(path: &str) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{path}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // after state: ppid pgrp session tty_nr tpgid flags
    let flags = fields.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// PF_KTHREAD in a task's flags.
const PF_KTHREAD: u64 = 0x0020_0000;

fn is_kernel_thread(pid: i32) -> bool {
    stat_state_flags(&pid.to_string()).is_some_and(|(_, f)| f & PF_KTHREAD != 0)
}

/// Every thread of `pid` is stopped (`T`), or the process is gone.
fn threads_stopped(pid: i32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    dir.flatten().all(|t| {
        let tid = t.file_name();
        match stat_state_flags(&format!("{pid}/task/{}", tid.to_string_lossy())) {
            Some((state, _)) => matches!(state, 'T' | 'X' | 'Z'),
            None => true,
        }
    })
}

/// `tid comm state wchan` of every thread listed in `threads` (a cgroup's `cgroup.threads`),
/// for an error that says which tasks did not freeze. Best effort, at most 16 threads.
fn task_states(threads: &Path) -> String {
    let Ok(list) = read_small(threads) else {
        return "unknown".into();
    };
    let mut out = Vec::new();
    for tid in list.split_whitespace().take(16) {
        let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).unwrap_or_default();
        let (comm, rest) = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => (&stat[a + 1..b], stat[b + 1..].trim_start()),
            _ => ("?", ""),
        };
        let state = rest.split(' ').next().unwrap_or("?");
        let wchan = std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default();
        out.push(format!("{tid} {comm} {state} {wchan}"));
    }
    out.join(", ")
}

fn wait_until(
    what: &str,
    mut f: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<(), SandboxError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        if f()? {
            return Ok(());
        }
        if start.elapsed() > WAIT {
            return Err(SandboxError::Timeout {
                what: what.to_string(),
                secs: WAIT.as_secs(),
            });
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// The process's own cgroup path per hierarchy directory, so the launcher can step into the
/// domain cgroup (to clone the child there) and back out.
pub(crate) fn own_cgroups(hier: &Hierarchy) -> Result<Vec<PathBuf>, SandboxError> {
    let text = read_small(Path::new("/proc/self/cgroup")).map_err(|source| SandboxError::Io {
        action: "read",
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let lookup = |ctrl: Option<&str>| -> Result<String, SandboxError> {
        text.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                let ctrls = parts.next()?;
                let path = parts.next()?;
                let hit = match ctrl {
                    None => ctrls.is_empty(),
                    Some(c) => ctrls.split(',').any(|x| x == c),
                };
                hit.then(|| path.to_string())
            })
            .ok_or_else(|| {
                SandboxError::NoCgroups(format!("/proc/self/cgroup has no entry for {ctrl:?}"))
            })
    };
    let rel = |root: &Path, p: String| root.join(p.trim_start_matches('/'));
    Ok(match hier {
        Hierarchy::V2 { root } => vec![rel(root, lookup(None)?)],
        Hierarchy::V1 {
            memory,
            cpu,
            pids,
            freezer,
        } => vec![
            rel(memory, lookup(Some("memory"))?),
            rel(cpu, lookup(Some("cpu"))?),
            rel(pids, lookup(Some("pids"))?),
            rel(freezer, lookup(Some("freezer"))?),
        ],
    })
}

/// Moves the calling process into the given directories (as returned by [`own_cgroups`]).
pub(crate) fn move_self(dirs: &[PathBuf]) -> Result<(), SandboxError> {
    for d in dirs {
        write(&d.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_ticks() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 5 0 0";
        assert_eq!(proc_cpu_ticks(line), Some(13));
        assert_eq!(proc_cpu_ticks("42 (x) S 1"), None);
        assert_eq!(proc_cpu_ticks("no paren"), None);
    }

    #[test]
    fn mountinfo_parsing() {
        let text =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 27 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            v1_mount(&m, "cpu").map(|e| e.mount_point.clone()),
            Some(m[0].mount_point.clone())
        );
        assert!(v1_mount(&m, "cpuacct").is_some());
        assert!(v1_mount(&m, "cpuset").is_none());
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn paths_layout() {
        let h = Hierarchy::V2 {
            root: "/sys/fs/cgroup".into(),
        };
        let sys = CgroupRoot::system();
        assert_eq!(
            h.paths_for(&sys, "work"),
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead/work".into()
            }
        );
        let json = serde_json::to_string(&h.paths_for(&sys, "work")).expect("json");
        assert!(json.contains("\"version\":\"v2\""), "{json}");
        let other = CgroupRoot::instance("t1").expect("root");
        assert_eq!(
            h.paths_for(&other, "work"),
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead-t1/work".into()
            }
        );
    }

    #[test]
    fn roots_are_checked_and_stable() {
        assert_eq!(CgroupRoot::system().as_str(), "bulkhead");
        assert!(CgroupRoot::system().is_system());
        assert_eq!(CgroupRoot::default(), CgroupRoot::system());
        for bad in [
            "",
            "bulkhead-",
            "bulkhead-A",
            "bulkhead-a/b",
            "bulkheadx",
            "bulkhead-..",
            "x",
        ] {
            assert!(CgroupRoot::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(CgroupRoot::instance(&"a".repeat(MAX_ROOT_ID_LEN + 1)).is_err());
        let r = CgroupRoot::for_runtime_dir(Path::new("/tmp/bulkhead-domaind-x/run"));
        // fixed: the name must not change between versions, or a restarted domaind would
        // lose its running domains
        assert_eq!(r.as_str(), "bulkhead-386822c33bc0b168");
        assert!(!r.is_system());
        assert_eq!(CgroupRoot::parse(r.as_str()).expect("parse"), r);
        assert_ne!(
            r,
            CgroupRoot::for_runtime_dir(Path::new("/tmp/bulkhead-domaind-y/run"))
        );
        // serde goes through the check
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json, format!("\"{r}\""));
        assert!(serde_json::from_str::<CgroupRoot>("\"../etc\"").is_err());
    }

    /// Listing looks below one root only; the roots present are found.
    #[test]
    fn listing_is_per_root() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            vcpus: 1,
            pids_max: 16,
        };
        let t = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::V2 {
            root: t.path().to_path_buf(),
        };
        let sys = CgroupRoot::system();
        let mine = CgroupRoot::instance("mine").expect("root");
        h.create(&sys, "work", limits).expect("create");
        h.create(&mine, "work", limits).expect("create");
        h.create(&mine, "other", limits).expect("create");
        fs::create_dir(t.path().join("unrelated")).expect("mkdir");
        assert_eq!(list_domains_in(&h, &sys).expect("list"), ["work"]);
        assert_eq!(list_domains_in(&h, &mine).expect("list"), ["other", "work"]);
        assert_eq!(h.roots().expect("roots"), [sys.clone(), mine.clone()]);
        assert!(
            !h.remove_root_if_empty(&mine),
            "removed a root with domains in it"
        );
    }

    /// The knob values written for each layout. Plain directories stand in for cgroupfs here
    /// because the build hosts cannot mount a v2 hierarchy with controllers; the real v1 path
    /// is exercised by the integration tests.
    #[test]
    fn knobs_written_v2_and_v1() {
        let limits = Limits {
            memory_bytes: 256 << 20,
            vcpus: 2,
            pids_max: 500,
        };
        let t = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::V2 {
            root: t.path().to_path_buf(),
        };
        let p = h
            .create(&CgroupRoot::system(), "dom", limits)
            .expect("create v2");
        let dir = t.path().join("bulkhead/dom");
        assert_eq!(p, CgroupPaths::V2 { dir: dir.clone() });
        let rd = |f: &Path| fs::read_to_string(f).expect("read knob");
        assert_eq!(
            rd(&t.path().join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            rd(&t.path().join("bulkhead/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(rd(&dir.join("memory.max")), (256u64 << 20).to_string());
        assert_eq!(rd(&dir.join("cpu.max")), "200000 100000");
        assert_eq!(rd(&dir.join("pids.max")), "500");
        assert_eq!(p.memory_limit(), Some(256 << 20));
        assert_eq!(p.pids_limit(), Some(500));

        let t = tempfile::tempdir().expect("tempdir");
        let sub = |n: &str| t.path().join(n);
        for c in V1_CONTROLLERS {
            fs::create_dir(sub(c)).expect("hierarchy mount point");
        }
        let h = Hierarchy::V1 {
            memory: sub("memory"),
            cpu: sub("cpu"),
            pids: sub("pids"),
            freezer: sub("freezer"),
        };
        let p = h
            .create(&CgroupRoot::system(), "dom", limits)
            .expect("create v1");
        assert_eq!(
            rd(&sub("memory/bulkhead/dom/memory.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        assert_eq!(rd(&sub("cpu/bulkhead/dom/cpu.cfs_quota_us")), "200000");
        assert_eq!(rd(&sub("cpu/bulkhead/dom/cpu.cfs_period_us")), "100000");
        assert_eq!(rd(&sub("pids/bulkhead/dom/pids.max")), "500");
        assert!(sub("freezer/bulkhead/dom").is_dir());
        assert_eq!(p.dirs().len(), 4);
    }

    /// A leftover v1 cgroup is reused with a larger, then a smaller memory limit (the
    /// kernel refuses memory > memory+swap, so the order of the two writes matters).
    #[test]
    fn v1_reused_cgroup_memory_limit_up_and_down() {
        if !nix::unistd::Uid::effective().is_root() {
            bulkhead_test_skip::skip("not root");
            return;
        }
        let h = match Hierarchy::detect() {
            Ok(h @ Hierarchy::V1 { .. }) => h,
            other => {
                bulkhead_test_skip::skip(format_args!("no cgroup v1 memory hierarchy ({other:?})"));
                return;
            }
        };
        let name = format!("bh-test-memsw-{}", std::process::id());
        let owner = CgroupRoot::instance("unit-tests").expect("root");
        let limits = |mib: u64| Limits {
            memory_bytes: mib << 20,
            vcpus: 1,
            pids_max: 16,
        };
        let CgroupPaths::V1 { memory, .. } = h.paths_for(&owner, &name) else {
            unreachable!("v1 hierarchy gives v1 paths")
        };
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        let memsw_value = || -> Option<u64> { read_small(&memsw).ok()?.trim().parse().ok() };
        let mut had_memsw = false;
        let result = (|| -> Result<(), String> {
            for mib in [64u64, 256, 32, 512] {
                let p = h
                    .create(&owner, &name, limits(mib))
                    .map_err(|e| format!("{mib} MiB: {e}"))?;
                if p.memory_limit() != Some(mib << 20) {
                    return Err(format!("{mib} MiB: memory limit {:?}", p.memory_limit()));
                }
                had_memsw = memsw.exists();
                if had_memsw && memsw_value() != Some(mib << 20) {
                    return Err(format!("{mib} MiB: memsw limit {:?}", memsw_value()));
                }
            }
            Ok(())
        })();
        h.paths_for(&owner, &name)
            .remove()
            .expect("remove test cgroup");
        h.remove_root_if_empty(&owner);
        if !had_memsw {
            println!("note: no swap accounting here; only memory.limit_in_bytes was checked");
        }
        result.expect("reused cgroup limits");
    }

    #[test]
    fn own_cgroup_lines() {
        // whatever the layout, the launcher must find its own cgroup in each hierarchy it uses
        if let Ok(h) = Hierarchy::detect() {
            let own = own_cgroups(&h).expect("own cgroups");
            assert!(
                own.iter().all(|d| d.join("cgroup.procs").exists()),
                "{own:?}"
            );
        }
    }

    #[test]
    fn detect_on_this_host() {
        // every supported host has one of the two layouts; this one must be recognised
        match Hierarchy::detect() {
            Ok(h) => {
                let p = h.paths_for(&CgroupRoot::system(), "x");
                assert!(p.dirs().iter().all(|d| d.ends_with("bulkhead/x")));
            }
            Err(e) => {
                bulkhead_test_skip::skip(format_args!(
                    "no usable cgroup hierarchy on this host: {e}"
                ));
            }
        }
    }
}
