//! Confinement of the VMM process (contract A), in two stages around opening the VM:
//!
//! 1. [`enter_pid_namespace`], first thing in `main`: join the spec's cgroup, then
//!    `unshare(CLONE_NEWPID)` and fork. The parent only waits for the child (the real VMM, pid 1
//!    of the new namespace), kills it with SIGKILL when the parent gets SIGTERM/SIGINT/SIGHUP,
//!    and exits with its status. The fork must come before KVM is opened: a KVM VM belongs to
//!    the address space that created it.
//! 2. [`confine`], after `/dev/kvm`, the kernel, disks, tap, vsock listener and console log are
//!    open: new mount, IPC, UTS and network namespaces; an empty read-only tmpfs root that holds
//!    only the vsock sockets directory (bind-mounted at its host path, so `<uds>_<port>` connects
//!    work), `pivot_root` into it; the capability bounding set emptied; setgroups/setgid/setuid
//!    to the spec's ids; every capability set cleared; no_new_privs. The per-thread seccomp
//!    filters (crate::seccomp) are installed as the threads start.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Gid, Pid, Uid};

use crate::spec::{ConfineSpec, VmSpec};

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("joining cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("dropping capabilities: {0}")]
    Caps(String),
    #[error("cannot fork into a new PID namespace: the process already has {0} threads")]
    Threads(usize),
    #[error(
        "cannot confine a process with {0} threads: namespaces, capabilities and no_new_privs \
         would apply to the calling thread only (start threads after confining)"
    )]
    ThreadsAtConfine(usize),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> ConfineError {
    let what = what.into();
    move |source| ConfineError::Sys { what, source }
}

/// How stage 1 ended for the calling process.
pub enum PidNamespace {
    /// We are the VMM (pid 1 of the new namespace): go on.
    Child,
    /// We are the waiting parent: exit with this code.
    ParentExit(u8),
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Stage 1 (see the module docs). Must be called while the process has one thread.
pub fn enter_pid_namespace(c: &ConfineSpec) -> Result<PidNamespace, ConfineError> {
    if let Some(cg) = &c.cgroup {
        std::fs::write(cg.join("cgroup.procs"), format!("{}\n", getpid())).map_err(|source| {
            ConfineError::Cgroup {
                path: cg.clone(),
                source,
            }
        })?;
    }
    let n = thread_count();
    if n != 1 {
        return Err(ConfineError::Threads(n));
    }
    // Signals the parent waits for are blocked before fork; the child unblocks them.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set.thread_block().map_err(sys("blocking signals"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
    // SAFETY: the process is single-threaded (checked above), so the child cannot inherit a
    // lock held by another thread.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
            set.thread_unblock().map_err(sys("unblocking signals"))?;
            Ok(PidNamespace::Child)
        }
        ForkResult::Parent { child } => Ok(PidNamespace::ParentExit(wait_for(child, &set))),
    }
}

/// Waits for the confined child. Its exit code is ours; if a signal asked us to stop, the child
/// is killed and we exit 128 + that signal's number, as a shell reports a killed process.
fn wait_for(child: Pid, set: &SigSet) -> u8 {
    let mut asked: Option<Signal> = None;
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return u8::try_from(code).unwrap_or(1),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    if let Some(a) = asked {
                        return 128u8.saturating_add(a as u8);
                    }
                    eprintln!("bulkhead-vmm: the confined VMM was killed by {sig}");
                    return 1;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("bulkhead-vmm: waiting for the confined VMM: {e}");
                    return 1;
                }
            },
            Ok(sig) => {
                // SIGTERM/SIGINT/SIGHUP: pid 1 of a namespace ignores those, so end it hard.
                asked.get_or_insert(sig);
                let _ = kill(child, Signal::SIGKILL);
            }
            Err(e) => {
                eprintln!("bulkhead-vmm: sigwait: {e}");
                let _ = kill(child, Signal::SIGKILL);
                return 1;
            }
        }
    }
}

/// The directories the confined root keeps: the vsock socket's directory.
pub fn kept_dirs(spec: &VmSpec) -> Vec<PathBuf> {
    spec.vsock
        .iter()
        .filter_map(|v| v.uds_path.parent().map(Path::to_path_buf))
        .filter(|p| p.is_absolute())
        .collect()
}

/// Stage 2 (see the module docs). Call with every host resource already open and no thread
/// but the caller: unshare, capabilities and no_new_privs act on the calling thread only.
pub fn confine(c: &ConfineSpec, keep: &[PathBuf]) -> Result<(), ConfineError> {
    let n = thread_count();
    if n != 1 {
        return Err(ConfineError::ThreadsAtConfine(n));
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(sys("unshare(mount, ipc, uts, net)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private"))?;

    // Open what the new root keeps before /tmp is covered (in this namespace: a bind mount
    // cannot take its source from another mount namespace).
    let mut kept: Vec<(PathBuf, OwnedFd)> = Vec::new();
    for dir in keep {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| ConfineError::Sys {
                what: format!("opening {}", dir.display()),
                source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        kept.push((dir.clone(), OwnedFd::from(fd)));
    }

    // The new root: a small tmpfs mounted over /tmp of this private mount namespace.
    let root = Path::new("/tmp");
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(sys("mounting the tmpfs root"))?;
    for (dir, fd) in &kept {
        let rel = dir.strip_prefix("/").unwrap_or(dir);
        let target = root.join(rel);
        std::fs::create_dir_all(&target).map_err(|e| ConfineError::Sys {
            what: format!("creating {}", target.display()),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(src.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("bind-mounting {}", dir.display())))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys(format!(
            "remounting {} nosuid,nodev,noexec",
            dir.display()
        )))?;
    }
    drop(kept);

    nix::unistd::chdir(root).map_err(sys("chdir to the new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("remounting the root read-only"))?;
    nix::unistd::sethostname("bulkhead-vmm").map_err(sys("sethostname"))?;

    // Capabilities: the bounding set while we still have CAP_SETPCAP, then the ids, then the rest.
    for cap in caps::all() {
        caps::drop(None, caps::CapSet::Bounding, cap)
            .map_err(|e| ConfineError::Caps(format!("bounding set {cap}: {e}")))?;
    }
    let gid = Gid::from_raw(c.gid);
    let uid = Uid::from_raw(c.uid);
    nix::unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| ConfineError::Caps(format!("{set:?}: {e}")))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    tracing::info!(uid = c.uid, gid = c.gid, "confined");
    Ok(())
}
