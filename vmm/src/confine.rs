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
//!    work), `pivot_root` into it; a new user namespace if the kernel allows one
//!    ([`UserNsHelper`]: the spec's uid and gid map to themselves on the host and nothing else
//!    is mapped, so an escaped VMM has no privilege over anything the host owns, its own
//!    namespaces included; without one, a warning and the rest as before); the capability
//!    bounding set emptied; setgroups/setgid/setuid to the spec's ids; every capability set
//!    cleared; no_new_privs. The per-thread seccomp filters (crate::seccomp) are installed as
//!    the threads start.

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
    #[error(
        "mapping uid {uid} / gid {gid} into the VMM's new user namespace: {message} (the VMM is \
         root in the initial user namespace until here; is /proc mounted?)"
    )]
    UserNsMap { uid: u32, gid: u32, message: String },
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

/// The helper that maps ids into the VMM's user namespace.
///
/// A process cannot map ids other than its own into a user namespace it just entered (it has
/// no capability in the parent namespace any more), so a helper forked beforehand, still root
/// in the initial user namespace and still in the host's mount namespace (with its /proc),
/// writes `/proc/<pid>/{uid,gid}_map` once told the namespace exists. Dropped unused, it exits
/// and is reaped.
pub struct UserNsHelper {
    child: Option<Pid>,
    go: Option<OwnedFd>,
    err: Option<OwnedFd>,
    uid: u32,
    gid: u32,
}

impl UserNsHelper {
    /// Forks the helper. The caller must be single-threaded.
    pub fn spawn(c: &ConfineSpec) -> Result<Self, ConfineError> {
        // Our pid as the mounted (host) procfs names it: we are pid 1 only in our PID namespace.
        let pid = std::fs::read_link("/proc/self").map_err(|e| ConfineError::UserNsMap {
            uid: c.uid,
            gid: c.gid,
            message: format!("reading /proc/self: {e}"),
        })?;
        let pid = pid.to_string_lossy().into_owned();
        let (go_r, go_w) = nix::unistd::pipe().map_err(sys("pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(sys("pipe"))?;
        // SAFETY: the caller is single-threaded (confine checks it), so the child cannot inherit
        // a lock held by another thread; it reads a pipe, writes two proc files and _exits.
        match unsafe { fork() }.map_err(sys("fork (user namespace id map helper)"))? {
            ForkResult::Child => {
                drop(go_w);
                drop(err_r);
                let mut b = [0u8; 1];
                let code = match nix::unistd::read(go_r.as_raw_fd(), &mut b) {
                    // Told the namespace exists: map the ids.
                    Ok(1) => match write_id_maps(&pid, c.uid, c.gid) {
                        Ok(()) => 0,
                        Err(e) => {
                            let _ = nix::unistd::write(&err_w, e.as_bytes());
                            1
                        }
                    },
                    // No namespace after all (or the VMM died): nothing to do.
                    _ => 0,
                };
                // SAFETY: _exit is always safe to call; it skips the atexit handlers and
                // destructors of the VMM's state, which are not this helper's to run.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(UserNsHelper {
                child: Some(child),
                go: Some(go_w),
                err: Some(err_r),
                uid: c.uid,
                gid: c.gid,
            }),
        }
    }

    /// Moves the caller into a new user namespace in which only the spec's uid and gid exist,
    /// each mapped to the same id on the host. Returns false, after a warning, when the kernel
    /// refuses to create one (`user.max_user_namespaces` = 0, an LSM policy, no
    /// CONFIG_USER_NS): confinement then goes on without it.
    pub fn enter(mut self) -> Result<bool, ConfineError> {
        let go = self.go.take();
        let entered = match unshare(CloneFlags::CLONE_NEWUSER) {
            Ok(()) => {
                if let Some(go) = &go {
                    nix::unistd::write(go, b"u").map_err(sys("waking the id map helper"))?;
                }
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot create a user namespace (user.max_user_namespaces = 0, an LSM, or \
                     a kernel without user namespaces); the VMM is confined without one"
                );
                false
            }
        };
        drop(go);
        let status = self.reap()?;
        let mut msg = String::new();
        if let Some(err) = self.err.take() {
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err), &mut msg);
        }
        match status {
            Some(WaitStatus::Exited(_, 0)) | None => Ok(entered),
            Some(other) => Err(ConfineError::UserNsMap {
                uid: self.uid,
                gid: self.gid,
                message: if msg.is_empty() {
                    format!("the helper ended with {other:?}")
                } else {
                    msg
                },
            }),
        }
    }

    fn reap(&mut self) -> Result<Option<WaitStatus>, ConfineError> {
        match self.child.take() {
            Some(child) => waitpid(child, None)
                .map(Some)
                .map_err(sys("waiting for the id map helper")),
            None => Ok(None),
        }
    }
}

impl Drop for UserNsHelper {
    fn drop(&mut self) {
        // Unused (confinement failed before the namespace): EOF ends the helper.
        self.go.take();
        let _ = self.reap();
    }
}

/// `<id> <id> 1` into `/proc/<pid>/uid_map` and `gid_map`: one id each, the same inside and out.
fn write_id_maps(pid: &str, uid: u32, gid: u32) -> Result<(), String> {
    for (file, id) in [("uid_map", uid), ("gid_map", gid)] {
        let path = format!("/proc/{pid}/{file}");
        // One write(2): the kernel takes a map in a single write only.
        std::fs::write(&path, format!("{id} {id} 1\n")).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Stage 2 (see the module docs). Call with every host resource already open and no thread
/// but the caller: unshare, capabilities and no_new_privs act on the calling thread only.
pub fn confine(c: &ConfineSpec, keep: &[PathBuf]) -> Result<(), ConfineError> {
    let n = thread_count();
    if n != 1 {
        return Err(ConfineError::ThreadsAtConfine(n));
    }
    // Forked here, so it keeps the host's namespaces and /proc (see UserNsHelper).
    let userns_helper = UserNsHelper::spawn(c)?;
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

    // The user namespace last, once nothing more needs the host's root: every namespace above
    // stays owned by the initial user namespace, so even capabilities regained inside this
    // one would give no power over the VMM's own mounts, network or hostname.
    let userns = userns_helper.enter()?;

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
    tracing::info!(uid = c.uid, gid = c.gid, userns, "confined");
    Ok(())
}
