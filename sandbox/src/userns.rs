//! The domain's user namespace, owned by the domain's own host uid.
//!
//! Why: the kernel's per-user counters ("ucounts": inotify instances and watches, fanotify
//! groups, user/mount/pid/net/... namespaces, POSIX message queue bytes, pending signals,
//! locked memory, processes) are charged by `inc_ucount()` at every level of the user
//! namespace chain: at the task's own namespace to its euid, and at each parent level to the
//! *owner* of the namespace below (the euid of the process that created it). A namespace
//! created by the launcher as host root charged everything a domain did to (initial
//! namespace, uid 0): a domain that opened `fs.inotify.max_user_instances` (128) inotify
//! instances left none for host root or any other domain.
//!
//! So the namespace is created by a short-lived helper that has switched to the domain's base
//! uid (root inside) before `unshare(CLONE_NEWUSER)`. Every domain then draws on its own host
//! uid's allowance (the host's `/proc/sys/fs/inotify/max_user_*`, `/proc/sys/user/max_*` and
//! the rlimits below), and one domain running out leaves dom0 and the other domains untouched.
//!
//! The helper keeps CAP_SYS_ADMIN across the uid switch (PR_SET_KEEPCAPS) so that hosts that
//! restrict unprivileged user namespaces (Debian's `kernel.unprivileged_userns_clone=0`,
//! Ubuntu's AppArmor restriction) still let it create one; ownership is the euid, whatever the
//! capabilities. Host root (the launcher) then writes the id maps, which it may in any
//! namespace below its own.
//!
//! Consequences kept in mind elsewhere:
//! - the owner of a user namespace has every capability in it when it acts from the parent
//!   namespace (`cap_capable`'s owner rule). No host process other than this helper may run
//!   as a domain's base uid in the initial user namespace (the log writer runs as root with
//!   no capabilities; the VMM of a VM domain uses its own slot).
//! - limits copied from the creator when the namespace is made: RLIMIT_NPROC (only when the
//!   creator is not root), RLIMIT_MSGQUEUE, RLIMIT_SIGPENDING, RLIMIT_MEMLOCK become the
//!   namespace's ceilings for the whole domain. The helper raises RLIMIT_NPROC to infinity
//!   first, as it is for a root-created namespace: the domain's cgroup `pids.max` bounds its
//!   processes. The others are the launcher's own, as before, but now per domain instead of
//!   shared with host root.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Gid, Pid, Uid};

use crate::launch::{LaunchError, StepResult};
use crate::UID_RANGE;

const STEP: &str = "userns";

/// Per-namespace limits written into the domain's own user namespace (its
/// `/proc/sys/user/max_*`, which exist once per user namespace and which only a holder of
/// CAP_SYS_RESOURCE there may change: the domain's root has no such capability).
///
/// They bound each user *inside* the domain; what bounds the domain as a whole against dom0
/// and the other domains is the host-level charge to its base uid (see the module docs), so
/// the other limits stay as the kernel sets them. Only nested user namespaces are turned off:
/// the seccomp filter already refuses CLONE_NEWUSER, this makes the kernel refuse it too
/// should the filter ever be bypassed.
pub(crate) const DOMAIN_NS_LIMITS: [(&str, &str); 1] = [("max_user_namespaces", "0")];

/// Creates a user namespace owned by host uid `base`, maps 0..UID_RANGE inside to
/// `base..base + UID_RANGE` (uid and gid) and returns a descriptor of it. Call only from a
/// single-threaded process running as host root.
pub(crate) fn create_owned_by(base: u32) -> StepResult<OwnedFd> {
    // ready: helper -> launcher ("u" once unshared, else an error text);
    // done: launcher -> helper (EOF: exit). Both close-on-exec, nothing is exec'd anyway.
    let (ready_r, ready_w) = step(pipe2(OFlag::O_CLOEXEC))?;
    let (done_r, done_w) = step(pipe2(OFlag::O_CLOEXEC))?;
    // SAFETY: the launcher is single-threaded, so the forked child may run ordinary code; it
    // leaves through _exit only.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(ready_r);
        drop(done_w);
        let mut out = fs::File::from(ready_w);
        let code = match helper(base) {
            Ok(()) => {
                let _ = out.write_all(b"u");
                // Wait until the launcher holds the namespace (EOF), then go.
                let mut b = [0u8; 1];
                let _ = fs::File::from(done_r).read(&mut b);
                0
            }
            Err(msg) => {
                let _ = out.write_all(msg.as_bytes());
                1
            }
        };
        // SAFETY: leave the forked child without running the launcher's destructors.
        unsafe { libc::_exit(code) }
    }
    if pid < 0 {
        return Err(LaunchError::new(
            STEP,
            format!("fork the namespace helper: {}", nix::Error::last()),
        ));
    }
    let pid = Pid::from_raw(pid);
    drop(ready_w);
    drop(done_r);
    let result = finish(pid, ready_r, base);
    // Releases the helper (EOF on done) whatever happened, then reaps it.
    drop(done_w);
    if result.is_err() {
        let _ = kill(pid, Signal::SIGKILL);
    }
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, 0)) => {}
        Ok(other) if result.is_ok() => {
            return Err(LaunchError::new(
                STEP,
                format!("namespace helper ended with {other:?}"),
            ))
        }
        Ok(_) => {}
        Err(e) => return Err(LaunchError::new(STEP, format!("reap the helper: {e}"))),
    }
    result
}

fn step<T, E: std::fmt::Display>(r: Result<T, E>) -> StepResult<T> {
    r.map_err(|e| LaunchError::new(STEP, e.to_string()))
}

/// The launcher's half: wait for the namespace, write its maps, open it.
fn finish(pid: Pid, ready_r: OwnedFd, base: u32) -> StepResult<OwnedFd> {
    let mut ready = fs::File::from(ready_r);
    let mut buf = [0u8; 1];
    // The helper writes "u" and waits, or writes an error text and exits.
    let n = step(ready.read(&mut buf))?;
    if n != 1 || buf[0] != b'u' {
        let mut msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut rest = String::new();
        let _ = ready.take(4096).read_to_string(&mut rest);
        msg.push_str(&rest);
        if msg.is_empty() {
            msg = "namespace helper exited without a report".into();
        }
        return Err(LaunchError::new(STEP, msg));
    }
    write_id_maps(pid, base)?;
    step(open_ns_fd(&format!("/proc/{pid}/ns/user")))
}

/// The helper's half, in the forked child: become the domain's base uid (keeping only
/// CAP_SYS_ADMIN), then unshare the user namespace.
fn helper(base: u32) -> Result<(), String> {
    let e = |what: &str, err: nix::Error| format!("{what}: {err}");
    // The namespace's process ceiling is the creator's soft RLIMIT_NPROC: infinity where
    // allowed (raising the hard limit needs CAP_SYS_RESOURCE), else at least the hard limit.
    let inf = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &inf) } != 0 {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct passed by reference.
        if unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut cur) } != 0 {
            return Err(e("getrlimit(RLIMIT_NPROC)", nix::Error::last()));
        }
        cur.rlim_cur = cur.rlim_max;
        // SAFETY: as above; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &cur) } != 0 {
            return Err(e("setrlimit(RLIMIT_NPROC)", nix::Error::last()));
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(e("prctl(PR_SET_KEEPCAPS)", nix::Error::last()));
    }
    nix::unistd::setgroups(&[]).map_err(|x| e("setgroups", x))?;
    let (g, u) = (Gid::from_raw(base), Uid::from_raw(base));
    nix::unistd::setresgid(g, g, g).map_err(|x| e("setresgid", x))?;
    nix::unistd::setresuid(u, u, u).map_err(|x| e("setresuid", x))?;
    let keep: caps::CapsHashSet = [caps::Capability::CAP_SYS_ADMIN].into_iter().collect();
    for set in [caps::CapSet::Permitted, caps::CapSet::Effective] {
        caps::set(None, set, &keep).map_err(|x| format!("capabilities: {x}"))?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|x| e("unshare(CLONE_NEWUSER) as the domain's uid", x))?;
    Ok(())
}

/// Root inside = `base` outside, [`UID_RANGE`] ids, for uids and gids. setgroups stays
/// "allow" (see the crate docs): the maps are written by host root.
pub(crate) fn write_id_maps(pid: Pid, base: u32) -> StepResult<()> {
    let line = format!("0 {base} {UID_RANGE}\n");
    for f in ["uid_map", "gid_map"] {
        let p = format!("/proc/{pid}/{f}");
        fs::write(&p, &line).map_err(|e| LaunchError::new("uid-map", format!("{p}: {e}")))?;
    }
    Ok(())
}

/// Writes [`DOMAIN_NS_LIMITS`]. Must run in a process that has joined the domain's user
/// namespace (the files under /proc/sys/user are those of the caller's user namespace).
pub(crate) fn write_domain_limits() -> Result<(), String> {
    for (name, value) in DOMAIN_NS_LIMITS {
        let p = Path::new("/proc/sys/user").join(name);
        fs::write(&p, value).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn open_ns_fd(path: &str) -> nix::Result<OwnedFd> {
    let fd = open(
        Path::new(path),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
