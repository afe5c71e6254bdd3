//! Sandbox backend: one confined process tree per domain, assembled from kernel primitives.
//!
//! The work is split in two:
//! - this library, used by `domaind`: [`start`] runs the `bulkhead-sandbox launch` helper
//!   (a small single-threaded process, see [`launch`]) and returns a [`SandboxRecord`]; the
//!   record then drives the running sandbox through its cgroup (freeze, thaw, kill, cleanup).
//! - the launcher, which creates the cgroup, clones the domain init into new user, mount, pid,
//!   net, uts, ipc and cgroup namespaces, maps root inside to a host uid range of its own
//!   (`UID_BASE + slot * 65536`), assembles the root inside the child's mount namespace
//!   (idmapped read-only template under an overlay, idmapped private volume at /home with
//!   /home/user/Incoming bound again noexec,nosuid,nodev (created 0700 with the user's ids if
//!   missing; a symlink there refuses the start), tmpfs
//!   with nosuid/nodev/noexec, minimal /dev), and lets the child pivot_root, drop every
//!   capability but the three an init needs, set no_new_privs, install the seccomp filter and
//!   exec the init. No mount ever happens in the host mount namespace.
//!
//! Capabilities left to the domain init (CAP_SETUID, CAP_SETGID, CAP_KILL) are capabilities in
//! the domain's own user namespace: they let the init switch to the domain user and signal the
//! domain's processes; they give nothing over host objects, which are owned by uids outside
//! the domain's range. The bounding set holds only these three, so nothing run in the domain
//! (even as its root) gets more; root inside has no CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, etc.
//!
//! Decisions and host notes:
//! - `/proc/<pid>/setgroups` stays "allow": the map is written by host root, the child drops
//!   every host supplementary group before anything runs, and the init needs setgroups(2) to
//!   give the domain user its groups. The negative-ACL bypass that "deny" prevents cannot occur:
//!   every gid a domain can hold lies in its own range.
//! - cgroups: v2 when a cgroup2 mount has memory, cpu and pids (the v2 path is not exercised on
//!   the build hosts, whose controllers are all on v1), else v1 memory/cpu/pids/freezer.
//!   Memory+swap is limited too where swap accounting exists.
//! - The launcher exits once the init has exec'd; the init is reparented to the nearest
//!   subreaper (or pid 1). domaind watches it with [`SandboxRecord::pidfd`]; if domaind wants
//!   exit statuses it should be a subreaper (PR_SET_CHILD_SUBREAPER) and reap inits itself.
//! - [`start`] blocks for the launch (tens of ms); call it from a blocking thread in async code.
//! - The init's stdout/stderr are a pipe to a small log-writer process (see [`logwriter`])
//!   that keeps `log_file` below [`logwriter::LOG_MAX_BYTES`], rotating once to
//!   `<log_file>.old`; it runs in the domain's cgroup, survives domaind restarts and exits
//!   when the domain is gone. Its pid is in the record ([`SandboxRecord::wait_log_flushed`]).
//! - Storage is bounded per domain: the private volume is an ext4 image of a fixed size
//!   (a full domain gets ENOSPC in its own volume only), the root's writable layer a tmpfs
//!   of [`SandboxSpec::root_overlay_mib`] charged to the domain's memory cgroup. Neither is
//!   ever mounted on the host: what the domain writes there (setuid files, file
//!   capabilities) is only reachable through the domain's own mounts, all nosuid. The image
//!   file is the host's only trace; keep it root-only (0600 in a 0700 dir).
//! - 32-bit (i386) syscalls kill the calling process (seccomp arch check).
//! - Each domain's user namespace is owned by the domain's base uid, not by host root, so the
//!   kernel's per-user counters (inotify, namespaces, message queues, ...) are charged per
//!   domain (see `userns`). Core dumps stay inside the domain (see [`coredump`]).

pub mod cgroup;
pub mod coredump;
pub mod devices;
pub mod instance;
pub mod launch;
pub mod logwriter;
pub mod loopdev;
mod mounts;
mod seccomp;
mod userns;

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupPaths, CgroupRoot};
pub use mounts::DOMAIN_USER_UID;

/// First host uid (and gid) of the domain ranges. Slot `n` owns
/// `UID_BASE + n * UID_RANGE ..= UID_BASE + n * UID_RANGE + 65535`; root inside is its first uid.
/// Far above the uids a distribution hands out (< 65536, including systemd's dynamic users).
/// systemd-nspawn's automatic range (0x80000..0x6FFFFFFF) overlaps it: a Bulkhead host must not
/// also run `systemd-nspawn --private-users=pick` containers.
pub const UID_BASE: u32 = 0x2000_0000;
/// Size of one domain's uid range (a full 16-bit range, as a Debian root tree expects).
pub const UID_RANGE: u32 = 65536;
/// Number of slots: `UID_BASE + MAX_SLOTS * UID_RANGE` stays below the invalid uid 0xFFFFFFFF.
pub const MAX_SLOTS: u32 = 32768;

/// Longest domain name accepted here (the domain model enforces Qubes' 31).
pub const MAX_NAME_LEN: usize = 64;

/// Default size of a domain root's writable layer, in MiB.
pub const DEFAULT_ROOT_OVERLAY_MIB: u64 = 1024;

fn default_root_overlay_mib() -> u64 {
    DEFAULT_ROOT_OVERLAY_MIB
}

/// Errors of the sandbox backend.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("starting sandbox `{name}` failed at step `{step}`: {message}")]
    Launch {
        name: String,
        step: String,
        message: String,
    },
    #[error("cannot run the launcher {path}: {source}")]
    LauncherSpawn { path: PathBuf, source: io::Error },
    #[error("launcher {path} exited ({status}) without a report; its stderr: {stderr}")]
    LauncherCrashed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot find the bulkhead-sandbox launcher: {0}")]
    LauncherMissing(String),
    #[error("cgroup {path}: {action}: {source}")]
    Cgroup {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("no usable cgroup hierarchy: {0}")]
    NoCgroups(String),
    #[error("sandbox init (pid {pid}) is gone")]
    Gone { pid: i32 },
    #[error("{action}: {source}")]
    Sys {
        action: &'static str,
        source: nix::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    #[error("cannot hand the device to the sandbox: {0}")]
    Device(String),
}

/// What a sandbox is made of. Serialized as JSON to the launcher.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Domain name (already validated by the domain model): hostname and cgroup name.
    pub name: String,
    /// The domaind instance's cgroup directory the domain's cgroup goes below (absent in
    /// specs of older domainds: the system root).
    #[serde(default)]
    pub cgroup_root: CgroupRoot,
    /// Read-only root tree, canonical ids.
    pub template_root: PathBuf,
    /// Persistent private volume: an ext4 image (canonical ids) the launcher mounts at
    /// /home through a loop device (see [`loopdev`]); its size bounds what the domain keeps.
    pub private_image: PathBuf,
    /// Holds the staging mount point only; wiped by start() and cleanup().
    pub scratch_dir: PathBuf,
    /// Size of the root's writable layer (a tmpfs under the overlay) in MiB.
    #[serde(default = "default_root_overlay_mib")]
    pub root_overlay_mib: u64,
    /// A template domain's root writable layer on disk instead of a tmpfs: an empty
    /// directory (root-owned, 0700) the launcher binds in place of the tmpfs and makes
    /// `upper`/`work` in; what the domain changes in its root stays there after it stops
    /// (domaind folds it into the template). Not bounded by `root_overlay_mib`.
    #[serde(default)]
    pub root_changes_dir: Option<PathBuf>,
    /// Root inside keeps [`launch::PACKAGE_MANAGER_CAPS`] too (chown, override file modes of
    /// the domain's own files), in the domain's user namespace only: a template's package
    /// manager needs them.
    #[serde(default)]
    pub package_manager_caps: bool,
    /// Host dir with agent.sock; read-only at /run/bulkhead-channel.
    pub channel_dir: PathBuf,
    /// Read-only at /usr/lib/bulkhead.
    pub guest_tools_dir: PathBuf,
    /// argv of the domain init inside.
    pub init: Vec<String>,
    /// Init stdout/stderr go here (append), bounded by the log writer (see [`logwriter`]).
    pub log_file: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub pids_max: u64,
    /// Host range = UID_BASE + slot*65536 .. +65536.
    pub uid_slot: u32,
    /// Text of the domain's /etc/resolv.conf (written into the overlay's upper layer before
    /// the root is assembled, owned by the domain's root); `None` keeps the template's.
    #[serde(default)]
    pub resolv_conf: Option<String>,
}

impl SandboxSpec {
    /// First host uid of this sandbox's range (root inside).
    pub fn uid_base(&self) -> u32 {
        UID_BASE + self.uid_slot * UID_RANGE
    }

    /// Checks everything the launcher relies on; the message names the field.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidSpec(m));
        if !valid_name(&self.name) {
            return bad(format!(
                "name {:?}: 1..={MAX_NAME_LEN} chars of [A-Za-z0-9_.-], not starting with '.' or '-'",
                self.name
            ));
        }
        for (field, p) in [
            ("template_root", &self.template_root),
            ("private_image", &self.private_image),
            ("scratch_dir", &self.scratch_dir),
            ("channel_dir", &self.channel_dir),
            ("guest_tools_dir", &self.guest_tools_dir),
            ("log_file", &self.log_file),
        ] {
            if !p.is_absolute() {
                return bad(format!("{field} {} is not an absolute path", p.display()));
            }
            if p.to_str()
                .is_none_or(|s| s.contains(',') || s.contains(':'))
            {
                return bad(format!(
                    "{field} {} must be UTF-8 without ',' or ':' (overlay option syntax)",
                    p.display()
                ));
            }
        }
        if let Some(d) = &self.root_changes_dir {
            use std::os::unix::fs::MetadataExt as _;
            let md = match std::fs::symlink_metadata(d) {
                Ok(m) => m,
                Err(e) => return bad(format!("root_changes_dir {}: {e}", d.display())),
            };
            let empty = std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_none());
            if !d.is_absolute() || !md.is_dir() || md.uid() != 0 || md.mode() & 0o077 != 0 || !empty
            {
                return bad(format!(
                    "root_changes_dir {} must be an empty directory owned by root, mode 0700, at an absolute path",
                    d.display()
                ));
            }
        }
        for (field, p) in [
            ("template_root", &self.template_root),
            ("channel_dir", &self.channel_dir),
            ("guest_tools_dir", &self.guest_tools_dir),
        ] {
            if !p.is_dir() {
                return bad(format!("{field} {} is not a directory", p.display()));
            }
        }
        match self.init.first() {
            Some(p) if p.starts_with('/') => {}
            _ => return bad("init: argv[0] must be an absolute path inside the domain".into()),
        }
        if self.init.len() > 256 || self.init.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
            return bad("init: at most 256 arguments of at most 4096 bytes, no NUL".into());
        }
        if !(16..=1 << 20).contains(&self.memory_mib) {
            return bad(format!(
                "memory_mib {} not in 16..=1048576",
                self.memory_mib
            ));
        }
        if !(1..=1024).contains(&self.vcpus) {
            return bad(format!("vcpus {} not in 1..=1024", self.vcpus));
        }
        if !(8..=1 << 22).contains(&self.pids_max) {
            return bad(format!("pids_max {} not in 8..=4194304", self.pids_max));
        }
        if self
            .resolv_conf
            .as_ref()
            .is_some_and(|r| r.len() > 4096 || r.contains('\0'))
        {
            return bad("resolv_conf: at most 4096 bytes, no NUL".into());
        }
        if !(1..=1 << 20).contains(&self.root_overlay_mib) {
            return bad(format!(
                "root_overlay_mib {} not in 1..=1048576",
                self.root_overlay_mib
            ));
        }
        if self.uid_slot >= MAX_SLOTS {
            return bad(format!("uid_slot {} not below {MAX_SLOTS}", self.uid_slot));
        }
        Ok(())
    }
}

/// Domain names as used for cgroup directories and hostnames.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The launcher binary (`bulkhead-sandbox`).
#[derive(Clone, Debug)]
pub struct Launcher {
    pub path: PathBuf,
}

impl Launcher {
    /// `$BULKHEAD_LIBEXEC_DIR/bulkhead-sandbox`, else `bulkhead-sandbox` next to the running executable.
    pub fn locate() -> Result<Launcher, SandboxError> {
        let candidate = match std::env::var_os("BULKHEAD_LIBEXEC_DIR") {
            Some(dir) => PathBuf::from(dir).join("bulkhead-sandbox"),
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| SandboxError::LauncherMissing(format!("current_exe: {e}")))?;
                exe.with_file_name("bulkhead-sandbox")
            }
        };
        if candidate.is_file() {
            Ok(Launcher { path: candidate })
        } else {
            Err(SandboxError::LauncherMissing(format!(
                "{} does not exist (set BULKHEAD_LIBEXEC_DIR)",
                candidate.display()
            )))
        }
    }
}

/// What the launcher prints on stdout (one JSON document).
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum LauncherReply {
    Ok(SandboxRecord),
    Error { step: String, message: String },
}

/// Starts a sandbox through the launcher. Blocking; returns once the init has exec'd.
pub fn start(spec: &SandboxSpec, launcher: &Launcher) -> Result<SandboxRecord, SandboxError> {
    spec.validate()?;
    let json = serde_json::to_vec(spec).map_err(|e| SandboxError::InvalidSpec(e.to_string()))?;
    let mut child = Command::new(&launcher.path)
        .arg("launch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::LauncherSpawn {
            path: launcher.path.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A launcher that dies early closes its stdin; its reply or exit status says why.
        if let Err(e) = stdin.write_all(&json) {
            tracing::warn!(error = %e, "writing the spec to the launcher failed");
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|source| SandboxError::LauncherSpawn {
            path: launcher.path.clone(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr_tail: String = {
        let s = stderr.trim();
        let start = s.len().saturating_sub(2000);
        let start = (start..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_string()
    };
    match serde_json::from_slice::<LauncherReply>(&out.stdout) {
        Ok(LauncherReply::Ok(record)) if out.status.success() => {
            tracing::info!(name = %record.name, pid = record.init_pid, "sandbox started");
            Ok(record)
        }
        Ok(LauncherReply::Error { step, message }) => Err(SandboxError::Launch {
            name: spec.name.clone(),
            step,
            message,
        }),
        _ => Err(SandboxError::LauncherCrashed {
            path: launcher.path.clone(),
            status: out.status.to_string(),
            stderr: stderr_tail,
        }),
    }
}

/// A running (or dead, not yet cleaned) sandbox. Serializable for recovery after a domaind restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxRecord {
    pub name: String,
    /// Host pid of the domain init (pid 1 inside).
    pub init_pid: i32,
    /// Start time of the init in clock ticks since boot (/proc/<pid>/stat field 22).
    pub init_start_time: u64,
    pub uid_base: u32,
    pub cgroup: CgroupPaths,
    pub scratch_dir: PathBuf,
    /// Host pid of the log writer (see [`logwriter`]); absent in records of older launchers.
    #[serde(default)]
    pub log_writer_pid: Option<i32>,
    /// Its start time (clock ticks since boot), guarding against pid reuse.
    #[serde(default)]
    pub log_writer_start_time: Option<u64>,
}

/// Start time (field 22) and state (field 3) of a process, from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

impl SandboxRecord {
    /// Init alive (not a zombie) AND the same start time (guards against pid reuse).
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.init_pid), Some((start, state))
            if start == self.init_start_time && state != 'Z' && state != 'X')
    }

    /// A pidfd for the init; it polls readable when the init exits (works for non-children).
    pub fn pidfd(&self) -> Result<OwnedFd, SandboxError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.init_pid, 0) };
        if fd < 0 {
            return Err(SandboxError::Sys {
                action: "pidfd_open",
                source: nix::Error::last(),
            });
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pid may have been reused between recording and opening: check after opening.
        if !self.is_alive() {
            return Err(SandboxError::Gone { pid: self.init_pid });
        }
        Ok(fd)
    }

    pub fn freeze(&self) -> Result<(), SandboxError> {
        self.cgroup.freeze()
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        self.cgroup.thaw()
    }

    pub fn is_frozen(&self) -> Result<bool, SandboxError> {
        self.cgroup.is_frozen()
    }

    /// Sends a signal to the init (checked against pid reuse first).
    pub fn signal_init(&self, sig: Signal) -> Result<(), SandboxError> {
        if !self.is_alive() {
            return Err(SandboxError::Gone { pid: self.init_pid });
        }
        kill(Pid::from_raw(self.init_pid), sig).map_err(|source| SandboxError::Sys {
            action: "kill(init)",
            source,
        })
    }

    /// Kills every process in the sandbox's cgroup; works while frozen.
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        self.cgroup.kill_all()
    }

    /// Whether the log writer still runs (it exits once every domain process is gone and
    /// the pipe is drained).
    pub fn log_writer_alive(&self) -> bool {
        match (self.log_writer_pid, self.log_writer_start_time) {
            (Some(pid), Some(start)) => matches!(proc_stat(pid), Some((s, state))
                if s == start && state != 'Z' && state != 'X'),
            _ => false,
        }
    }

    /// Waits (up to `limit`) until the log writer has written everything the domain sent and
    /// exited; true if it did (or there is none). Call after the init has exited to read a
    /// complete log.
    pub fn wait_log_flushed(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut delay = std::time::Duration::from_millis(1);
        while self.log_writer_alive() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(std::time::Duration::from_millis(50));
        }
        true
    }

    /// After exit: kills leftovers, removes the cgroups and wipes scratch. Idempotent.
    /// When the init is gone, the log writer gets a moment (at most 2 s) to write the rest of
    /// the domain's output before the cgroup removal kills it.
    pub fn cleanup(&self) -> Result<(), SandboxError> {
        if !self.is_alive() && !self.wait_log_flushed(std::time::Duration::from_secs(2)) {
            tracing::warn!(name = %self.name, "log writer still busy; killing it with the cgroup");
        }
        self.cgroup.remove()?;
        wipe_dir(&self.scratch_dir)
    }

    /// Current memory charged to the sandbox, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        self.cgroup.memory_usage()
    }
}

/// Removes everything inside `dir` (not `dir` itself); a missing dir is fine.
/// [`bulkhead_fsutil::remove_tree`] does not follow symlinks, so a domain cannot steer it
/// outside.
pub fn wipe_dir(dir: &Path) -> Result<(), SandboxError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SandboxError::Io {
                action: "read scratch dir",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| SandboxError::Io {
            action: "read scratch dir",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let res = if is_dir {
            bulkhead_fsutil::remove_tree(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    action: "wipe scratch",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Domain names that have a cgroup below `owner` (one domaind instance's root) on this host.
pub fn list_orphan_cgroups(owner: &CgroupRoot) -> Result<Vec<String>, SandboxError> {
    cgroup::list_domains(owner)
}

/// Kills everything in the named domain's cgroups below `owner` and removes them.
pub fn remove_cgroup(owner: &CgroupRoot, name: &str) -> Result<(), SandboxError> {
    if !valid_name(name) {
        return Err(SandboxError::InvalidSpec(format!("cgroup name {name:?}")));
    }
    let hier = cgroup::Hierarchy::detect()?;
    hier.paths_for(owner, name).remove()
}

/// Removes `owner`'s cgroup directory if no domain cgroup is left below it (a test
/// instance's root after its last domain). The system root is kept. True if it is gone.
pub fn remove_cgroup_root_if_empty(owner: &CgroupRoot) -> Result<bool, SandboxError> {
    if owner.is_system() {
        return Ok(false);
    }
    Ok(cgroup::Hierarchy::detect()?.remove_root_if_empty(owner))
}

/// What the host offers, for logs and notes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Capabilities {
    /// "v2", "v1" or "none" for memory, cpu, pids, freezer.
    pub cgroup_memory: String,
    pub cgroup_cpu: String,
    pub cgroup_pids: String,
    pub cgroup_freezer: String,
    /// The hierarchy the launcher will use ("v2", "v1" or an error).
    pub cgroup_mode: String,
    pub user_namespaces: bool,
    /// mount_setattr exists (idmapped mounts need it; the filesystem must support them too).
    pub idmapped_mounts: bool,
    pub seccomp_filter: bool,
    pub overlayfs: bool,
    pub kernel: String,
}

/// Probes the host.
pub fn probe() -> Capabilities {
    let ctrl = cgroup::controller_versions();
    let get = |c: &str| {
        ctrl.iter()
            .find(|(n, _)| n == c)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "none".into())
    };
    let cgroup_mode = match cgroup::Hierarchy::detect() {
        Ok(cgroup::Hierarchy::V2 { .. }) => "v2".to_string(),
        Ok(cgroup::Hierarchy::V1 { .. }) => "v1".to_string(),
        Err(e) => format!("unusable: {e}"),
    };
    let user_namespaces = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let idmapped_mounts = mounts::mount_setattr_available();
    let seccomp_filter = fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map(|s| s.contains("errno"))
        .unwrap_or(false);
    let overlayfs = fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Capabilities {
        cgroup_memory: get("memory"),
        cgroup_cpu: get("cpu"),
        cgroup_pids: get("pids"),
        cgroup_freezer: get("freezer"),
        cgroup_mode,
        user_namespaces,
        idmapped_mounts,
        seccomp_filter,
        overlayfs,
        kernel,
    }
}

/// Reads a small text file (cgroup knobs, proc files) with a size limit.
pub(crate) fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    fs::File::open(path)?.take(1 << 20).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> SandboxSpec {
        SandboxSpec {
            resolv_conf: None,
            name: "work".into(),
            cgroup_root: CgroupRoot::system(),
            template_root: dir.to_path_buf(),
            private_image: dir.join("private.img"),
            root_overlay_mib: DEFAULT_ROOT_OVERLAY_MIB,
            root_changes_dir: None,
            package_manager_caps: false,
            scratch_dir: dir.join("scratch"),
            channel_dir: dir.to_path_buf(),
            guest_tools_dir: dir.to_path_buf(),
            init: vec!["/usr/lib/bulkhead/bulkhead-init".into()],
            log_file: dir.join("log"),
            memory_mib: 400,
            vcpus: 2,
            pids_max: 1024,
            uid_slot: 3,
        }
    }

    #[test]
    fn uid_base_per_slot() {
        let d = std::env::temp_dir();
        let s = spec(&d);
        assert_eq!(s.uid_base(), UID_BASE + 3 * 65536);
        // the last slot's range ends below u32::MAX
        let last = UID_BASE as u64 + (MAX_SLOTS as u64) * UID_RANGE as u64;
        assert!(last < u32::MAX as u64);
    }

    #[test]
    fn validation_names_the_field() {
        let d = std::env::temp_dir();
        let ok = spec(&d);
        assert!(ok.validate().is_ok());
        type Edit = Box<dyn Fn(&mut SandboxSpec)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.name = "../x".into()), "name"),
            (Box::new(|s| s.name = String::new()), "name"),
            (
                Box::new(|s| s.template_root = "rel".into()),
                "template_root",
            ),
            (
                Box::new(|s| s.template_root = "/nonexistent-bh".into()),
                "template_root",
            ),
            (Box::new(|s| s.scratch_dir = "/a,b".into()), "scratch_dir"),
            (Box::new(|s| s.init = vec![]), "init"),
            (Box::new(|s| s.init = vec!["bin/sh".into()]), "init"),
            (Box::new(|s| s.memory_mib = 1), "memory_mib"),
            (Box::new(|s| s.vcpus = 0), "vcpus"),
            (Box::new(|s| s.pids_max = 2), "pids_max"),
            (Box::new(|s| s.uid_slot = MAX_SLOTS), "uid_slot"),
        ];
        for (f, field) in cases {
            let mut s = ok.clone();
            f(&mut s);
            let err = s.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn proc_stat_of_self() {
        let (start, state) = proc_stat(std::process::id() as i32).expect("own stat");
        assert!(start > 0);
        assert!(state == 'R' || state == 'S');
        assert!(proc_stat(-5).is_none());
    }

    #[test]
    fn record_roundtrip() {
        let r = SandboxRecord {
            name: "x".into(),
            init_pid: 42,
            init_start_time: 7,
            uid_base: UID_BASE,
            cgroup: CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead/x".into(),
            },
            scratch_dir: "/s".into(),
            log_writer_pid: Some(43),
            log_writer_start_time: Some(8),
        };
        let j = serde_json::to_string(&r).expect("serialize");
        let back: SandboxRecord = serde_json::from_str(&j).expect("parse");
        assert_eq!(back, r);
        // records written before the log writer existed still load
        let old = j.replace(r#","log_writer_pid":43,"log_writer_start_time":8"#, "");
        assert!(!old.contains("log_writer"), "{old}");
        let back: SandboxRecord = serde_json::from_str(&old).expect("parse old record");
        assert_eq!(back.log_writer_pid, None);
        assert!(!back.log_writer_alive());
    }
}
