//! The launcher: runs in the `bulkhead-sandbox launch` process, which must be single-threaded
//! (it forks with a raw clone and calls setns on its mount namespace).
//!
//! Order of work:
//! 1. validate the spec; create the cgroup with its limits (this fails if the domain is
//!    running, before anything else is touched); wipe and prepare scratch (upper/work owned by
//!    the domain's root); open the log file and start the log writer (see
//!    [`crate::logwriter`]) in the domain's cgroup, reading a pipe whose write end becomes the
//!    init's output;
//! 2. when the host's core dump settings would hand a domain's cores to the host, set
//!    RLIMIT_CORE to 1 (inherited by the init; see [`crate::coredump`]); create the domain's
//!    user namespace through a helper running as the domain's base uid, so that it owns the
//!    namespace and the kernel's per-user counters are charged to it, not to host root, and
//!    write its uid/gid maps (0 -> uid_base, 65536 ids; see `crate::userns`);
//! 3. step into the cgroup and fork a spawner there, then step back out. The spawner (still
//!    host root) joins the domain's user namespace, sets that namespace's own limits, and
//!    clones the child with CLONE_PARENT into new mount, pid, net, uts, ipc and cgroup
//!    namespaces (owned by the domain's user namespace; the cgroup namespace is rooted at the
//!    domain's cgroup), reports its pid and exits. The child is the launcher's; it waits on a
//!    pipe;
//! 4. setns into its mount namespace, make everything private, assemble the root
//!    (see [`crate::mounts`]), setns back;
//! 5. release the child, which switches to root-in-namespace, mounts /proc, pivots into the new
//!    root and detaches the old one, sets hostname and loopback, redirects output to the log pipe,
//!    sets no_new_privs, drops capabilities, installs the seccomp filter and execs the init;
//!    a close-on-exec pipe tells the launcher whether the exec happened.
//!
//! Any failure kills the child, removes the cgroup and wipes scratch, and names the step.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupPaths, Hierarchy, Limits};
use crate::coredump::{self, CoreLimit};
use crate::mounts::{self, Layout};
use crate::{logwriter, proc_stat, seccomp, userns, wipe_dir, SandboxRecord, SandboxSpec};

/// A failed launch step. `step` is a short stable name ("cgroup", "mount:home", "child:exec", ...).
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("step `{step}`: {message}")]
pub struct LaunchError {
    pub step: String,
    pub message: String,
}

impl LaunchError {
    pub fn new(step: &str, message: impl Into<String>) -> LaunchError {
        LaunchError {
            step: step.to_string(),
            message: message.into(),
        }
    }
}

pub type StepResult<T> = Result<T, LaunchError>;

/// Test hook: when set in the launcher's environment, it stops itself (SIGSTOP) after the root
/// is assembled and before the child is released.
pub const PAUSE_ENV: &str = "BULKHEAD_SANDBOX_TEST_PAUSE_BEFORE_RELEASE";

/// Capabilities the domain init keeps, in the domain's user namespace only: switching to the
/// domain user for commands, and signalling the domain's processes.
pub const KEPT_CAPS: [caps::Capability; 3] = [
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_KILL,
];

/// Added to [`KEPT_CAPS`] for a domain whose root manages files it does not own
/// ([`SandboxSpec::package_manager_caps`]: a template's apt and dpkg chown, chmod and replace
/// files of other users). Capabilities of the domain's user namespace: they reach only inodes
/// whose owners map into the domain's range, never a host file. Not CAP_SETFCAP (a file
/// capability written here would be kept in the template's root) nor CAP_MKNOD.
pub const PACKAGE_MANAGER_CAPS: [caps::Capability; 5] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
];

/// Environment of the init: nothing from the host.
const INIT_ENV: [&str; 4] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "container=bulkhead",
    "LANG=C.UTF-8",
];

fn step<T, E: std::fmt::Display>(name: &str, r: Result<T, E>) -> StepResult<T> {
    r.map_err(|e| LaunchError::new(name, e.to_string()))
}

/// Undo list for a failed launch.
struct Rollback {
    child: Option<Pid>,
    /// Exits by itself at EOF once the child is gone; the cgroup removal kills it anyway.
    log_writer: Option<std::process::Child>,
    cgroup: Option<CgroupPaths>,
    /// Set once this launch owns the scratch dir (after its cgroup was created: a running
    /// instance of the same domain makes cgroup creation fail before scratch is touched).
    scratch: Option<std::path::PathBuf>,
}

impl Rollback {
    fn run(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(mut w) = self.log_writer.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.remove() {
                tracing::error!(error = %e, "rollback: removing the cgroup failed");
            }
        }
        if let Some(scratch) = self.scratch.take() {
            if let Err(e) = wipe_dir(&scratch) {
                tracing::error!(error = %e, "rollback: wiping scratch failed");
            }
        }
    }
}

/// Runs a whole launch. Call only from a single-threaded process.
pub fn launch(spec: &SandboxSpec) -> StepResult<SandboxRecord> {
    step("validate", spec.validate())?;
    let mut rb = Rollback {
        child: None,
        log_writer: None,
        cgroup: None,
        scratch: None,
    };
    match launch_inner(spec, &mut rb) {
        Ok(r) => Ok(r),
        Err(e) => {
            tracing::error!(step = %e.step, message = %e.message, "launch failed, rolling back");
            rb.run();
            Err(e)
        }
    }
}

/// The scratch dir holds only the staging mount point; everything the domain writes lives in
/// its own mounts (see [`crate::mounts`]).
fn prepare_scratch(spec: &SandboxSpec, layout: &Layout) -> StepResult<()> {
    let s = "scratch";
    step(s, fs::create_dir_all(&spec.scratch_dir))?;
    step(
        s,
        fs::set_permissions(&spec.scratch_dir, fs::Permissions::from_mode(0o700)),
    )?;
    step(s, wipe_dir(&spec.scratch_dir))?;
    step(s, fs::create_dir(&layout.staging))?;
    step(
        s,
        fs::set_permissions(&layout.staging, fs::Permissions::from_mode(0o700)),
    )?;
    Ok(())
}

fn launch_inner(spec: &SandboxSpec, rb: &mut Rollback) -> StepResult<SandboxRecord> {
    let hier = step("cgroup", Hierarchy::detect())?;
    let own = step("cgroup", cgroup::own_cgroups(&hier))?;
    let cg = step(
        "cgroup",
        hier.create(
            &spec.cgroup_root,
            &spec.name,
            Limits {
                memory_bytes: spec.memory_mib << 20,
                vcpus: spec.vcpus,
                pids_max: spec.pids_max,
            },
        ),
    )?;
    rb.cgroup = Some(cg.clone());
    tracing::debug!(name = %spec.name, cgroup = ?cg, "cgroup created");
    rb.scratch = Some(spec.scratch_dir.clone());
    let layout = Layout::new(&spec.scratch_dir);
    prepare_scratch(spec, &layout)?;

    if let Some(parent) = spec.log_file.parent() {
        step("log", fs::create_dir_all(parent))?;
    }
    let log = step("log", logwriter::open_log(&spec.log_file)).map_err(|e| {
        LaunchError::new("log", format!("{}: {}", spec.log_file.display(), e.message))
    })?;
    // The domain writes into a pipe; the log writer (in the domain's cgroup) bounds the file.
    let (log_r, log_w) = step("log", pipe2(OFlag::O_CLOEXEC))?;
    let writer = spawn_log_writer(spec, log_r, log)?;
    let writer_pid = writer.id() as i32;
    rb.log_writer = Some(writer);
    step("log", cg.join(writer_pid))?;
    let writer_start = proc_stat(writer_pid).map(|(start, _)| start);

    // go: launcher -> child ("assembled, continue"); report: child -> launcher (error text, or
    // EOF at exec). Both close-on-exec.
    let (go_r, go_w) = step("pipes", pipe2(OFlag::O_CLOEXEC))?;
    let (rep_r, rep_w) = step("pipes", pipe2(OFlag::O_CLOEXEC))?;

    // Everything the child needs, computed before the clone.
    let child_plan = ChildPlan::new(spec, &layout)?;
    if let CoreLimit::One(why) = coredump::host_core_limit() {
        // Set on the launcher itself, before the init is forked, so the init inherits it:
        // lowering needs no privilege, and the init could not raise a hard limit of 0 to 1.
        let note = match set_core_limit_one() {
            Ok(()) => {
                tracing::info!(name = %spec.name, "RLIMIT_CORE of the domain set to 1: {why}");
                format!("core dumps disabled in this domain (RLIMIT_CORE 1): {why}")
            }
            Err(e) => {
                tracing::warn!(name = %spec.name, error = %e, "cannot set RLIMIT_CORE to 1: {why}");
                format!("could not set RLIMIT_CORE to 1 ({e}): {why}")
            }
        };
        // Also in the domain's log, where its owner looks for why no core appeared.
        let mut f = fs::File::from(step("log", log_w.try_clone())?);
        let _ = writeln!(f, "bulkhead-sandbox: {note}");
    }

    // The domain's user namespace, owned by its own host uid (see crate::userns).
    let userns = userns::create_owned_by(spec.uid_base())?;
    // spawner -> launcher: the init's host pid (4 bytes, native endian).
    let (pid_r, pid_w) = step("pipes", pipe2(OFlag::O_CLOEXEC))?;

    // Be in the domain cgroup while forking, so the spawner and the init are born there.
    step("cgroup:enter", cg.join(0))?;
    // SAFETY: the launcher is single-threaded, so the forked child may run ordinary code; it
    // leaves through _exit only.
    let spawner = unsafe { libc::fork() };
    if spawner == 0 {
        drop(go_w);
        drop(rep_r);
        drop(pid_r);
        let code = match spawn_init(&child_plan, &userns, go_r, log_w, pid_w, &rep_w) {
            Ok(()) => 0,
            Err(e) => {
                let msg = format!("{}\t{}", e.step, e.message);
                let _ = fs::File::from(rep_w).write_all(msg.as_bytes());
                1
            }
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // destructors twice.
        unsafe { libc::_exit(code) }
    }
    let fork_err = nix::Error::last();
    // Back to our own cgroups (before any error return, so rollback can rmdir).
    let back = cgroup::move_self(&own);
    if spawner < 0 {
        return Err(LaunchError::new("clone", format!("fork: {fork_err}")));
    }
    let spawner = Pid::from_raw(spawner);
    drop(go_r);
    drop(rep_w);
    drop(log_w);
    drop(pid_w);
    // The spawner exits right after the clone, leaving the init our child (CLONE_PARENT).
    let mut pid_buf = [0u8; 4];
    let got_pid = fs::File::from(pid_r).read_exact(&mut pid_buf);
    let spawned = waitpid(spawner, None);
    if let Ok(()) = got_pid {
        rb.child = Some(Pid::from_raw(i32::from_ne_bytes(pid_buf)));
    }
    step("cgroup:leave", back)?;
    let pid = match (got_pid, spawned) {
        (Ok(()), Ok(WaitStatus::Exited(_, 0))) => Pid::from_raw(i32::from_ne_bytes(pid_buf)),
        (Ok(()), st) => {
            return Err(LaunchError::new(
                "clone",
                format!("spawner ended with {st:?}"),
            ))
        }
        (Err(_), st) => {
            // No init was made. The spawner's report, if it wrote one (the pipe reaches EOF:
            // the spawner is gone and no init holds a copy).
            drop(go_w);
            let mut report = String::new();
            let _ = fs::File::from(rep_r)
                .take(64 * 1024)
                .read_to_string(&mut report);
            return Err(match report.split_once('\t') {
                Some((s, m)) => LaunchError::new(&format!("child:{s}"), m),
                None => LaunchError::new("clone", format!("spawner ended with {st:?}")),
            });
        }
    };

    tracing::debug!(pid = pid.as_raw(), "child cloned");

    let child_mnt = step("mount-ns", open_ns(pid, "mnt"))?;
    let own_mnt = step(
        "mount-ns",
        open(
            Path::new("/proc/self/ns/mnt"),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let own_mnt = unsafe { OwnedFd::from_raw_fd(own_mnt) };
    step(
        "mount-ns",
        setns(child_mnt.as_fd(), CloneFlags::CLONE_NEWNS),
    )?;
    let assembled = mounts::assemble(spec, &layout, userns.as_fd());
    // Always return to the host mount namespace, even after a failure. Should that fail, do
    // not wipe scratch from in here: inside the child's namespace the staging mounts (the
    // private volume among them) are reachable below scratch.
    if let Err(e) = setns(own_mnt.as_fd(), CloneFlags::CLONE_NEWNS) {
        rb.scratch = None;
        return Err(LaunchError::new(
            "mount-ns",
            format!("returning to the host mount namespace: {e}"),
        ));
    }
    assembled?;
    tracing::debug!(root = %layout.root().display(), "root assembled in the child's mount namespace");

    // Fault-injection hook for tests: stop here, with the child cloned and its root assembled,
    // so a test can SIGKILL the launcher at its worst moment.
    if std::env::var_os(PAUSE_ENV).is_some() {
        tracing::warn!("{PAUSE_ENV} set: stopping before releasing the child");
        step("release", nix::sys::signal::raise(Signal::SIGSTOP))?;
    }

    // Release the child and wait for exec (EOF) or an error report.
    let mut go = fs::File::from(go_w);
    step("release", go.write_all(b"g"))?;
    drop(go);
    let mut report = String::new();
    step(
        "child",
        fs::File::from(rep_r)
            .take(64 * 1024)
            .read_to_string(&mut report),
    )?;
    if !report.is_empty() {
        let (s, m) = report
            .split_once('\t')
            .unwrap_or(("unknown", report.as_str()));
        return Err(LaunchError::new(&format!("child:{s}"), m));
    }
    let (start, _) = proc_stat(pid.as_raw()).ok_or_else(|| {
        LaunchError::new(
            "child:exec",
            "init exited right after exec (no /proc entry)",
        )
    })?;
    rb.child = None;
    rb.cgroup = None;
    // The writer stays: it is reparented when the launcher exits (dropping Child neither
    // kills nor waits for it).
    rb.log_writer = None;
    tracing::info!(name = %spec.name, pid = pid.as_raw(), uid_base = spec.uid_base(), "init running");
    Ok(SandboxRecord {
        name: spec.name.clone(),
        init_pid: pid.as_raw(),
        init_start_time: start,
        uid_base: spec.uid_base(),
        cgroup: cg,
        scratch_dir: spec.scratch_dir.clone(),
        log_writer_pid: Some(writer_pid),
        log_writer_start_time: writer_start,
    })
}

/// Starts `bulkhead-sandbox log-writer` (this very binary, through /proc/self/exe): stdin the
/// pipe's read end, stdout the open log file, stderr /dev/null (never the launcher's own
/// stdout/stderr: start() reads those to EOF and would wait for the domain to end). Its own
/// process group, so terminal signals aimed at domaind do not reach it.
fn spawn_log_writer(
    spec: &SandboxSpec,
    read_end: OwnedFd,
    log: fs::File,
) -> StepResult<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    Command::new("/proc/self/exe")
        .arg0("bulkhead-sandbox")
        .arg("log-writer")
        .arg("--file")
        .arg(&spec.log_file)
        .arg("--max-bytes")
        .arg(logwriter::LOG_MAX_BYTES.to_string())
        .env_clear()
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::from(log))
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| LaunchError::new("log", format!("start the log writer: {e}")))
}

fn open_ns(pid: Pid, kind: &str) -> nix::Result<OwnedFd> {
    userns::open_ns_fd(&format!("/proc/{pid}/ns/{kind}"))
}

/// The spawner, a fork of the launcher still running as host root: joins the domain's user
/// namespace (host root has CAP_SYS_ADMIN in every user namespace below its own, whoever owns
/// it), sets the namespace's own limits, and clones the init into new mount, pid, net, uts,
/// ipc and cgroup namespaces, which are then owned by the domain's user namespace. With
/// CLONE_PARENT the init is the launcher's child, not the spawner's. The init keeps host uid 0
/// (unmapped inside) until it has pivoted, as before: it must traverse the root-only scratch
/// dir, which a process with the domain's host uid could not.
fn spawn_init(
    plan: &ChildPlan,
    userns: &OwnedFd,
    go_r: OwnedFd,
    log_w: OwnedFd,
    pid_w: OwnedFd,
    rep_w: &OwnedFd,
) -> StepResult<()> {
    step(
        "userns:join",
        setns(userns.as_fd(), CloneFlags::CLONE_NEWUSER),
    )?;
    userns::write_domain_limits().map_err(|m| LaunchError::new("userns:limits", m))?;
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_PARENT;
    // SAFETY: raw clone without CLONE_VM and with a NULL stack behaves like fork(): the child
    // gets a copy-on-write copy of this single-threaded process and continues from here.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret == 0 {
        // the init
        drop(pid_w);
        let code = match child_main(plan, go_r, log_w) {
            Ok(never) => match never {},
            Err(e) => {
                let msg = format!("{}\t{}", e.step, e.message);
                if let Ok(dup) = rep_w.try_clone() {
                    let _ = fs::File::from(dup).write_all(msg.as_bytes());
                }
                1
            }
        };
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // destructors twice.
        unsafe { libc::_exit(code) }
    }
    if ret < 0 {
        return Err(LaunchError::new(
            "clone",
            format!(
                "clone(new mnt/pid/net/uts/ipc/cgroup namespaces): {}",
                nix::Error::last()
            ),
        ));
    }
    let pid = ret as i32;
    step("clone", fs::File::from(pid_w).write_all(&pid.to_ne_bytes()))
}

/// What the child does, prepared (allocated) before the clone.
struct ChildPlan {
    hostname: String,
    new_root: CString,
    proc_dir: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    seccomp: Vec<seccompiler::BpfProgram>,
    /// The capabilities the init keeps.
    caps: Vec<caps::Capability>,
}

impl ChildPlan {
    fn new(spec: &SandboxSpec, layout: &Layout) -> StepResult<ChildPlan> {
        let cs = |s: &str| {
            CString::new(s).map_err(|_| LaunchError::new("validate", format!("NUL in {s:?}")))
        };
        let root = layout.root();
        let root_s = root
            .to_str()
            .ok_or_else(|| LaunchError::new("validate", "scratch path not UTF-8"))?;
        Ok(ChildPlan {
            hostname: spec.name.clone(),
            new_root: cs(root_s)?,
            proc_dir: cs(&format!("{root_s}/proc"))?,
            argv: spec.init.iter().map(|a| cs(a)).collect::<StepResult<_>>()?,
            env: INIT_ENV.iter().map(|a| cs(a)).collect::<StepResult<_>>()?,
            seccomp: seccomp::programs(matches!(coredump::host_core_limit(), CoreLimit::One(_)))
                .map_err(|e| LaunchError::new("seccomp", e))?,
            caps: KEPT_CAPS
                .iter()
                .chain(
                    spec.package_manager_caps
                        .then_some(&PACKAGE_MANAGER_CAPS)
                        .into_iter()
                        .flatten(),
                )
                .copied()
                .collect(),
        })
    }
}

enum Never {}

fn child_main(plan: &ChildPlan, go_r: OwnedFd, log: OwnedFd) -> StepResult<Never> {
    // Wait for the launcher. EOF without a byte: the launcher gave up.
    let mut b = [0u8; 1];
    let n = step("wait", fs::File::from(go_r).read(&mut b))?;
    if n != 1 {
        return Err(LaunchError::new("wait", "launcher went away"));
    }

    // /proc of the new pid namespace, mounted while the host's /proc is still visible (the
    // kernel requires a fully visible proc mount to allow a new one in a user namespace).
    step(
        "proc",
        mount(
            Some("proc"),
            plan.proc_dir.as_c_str(),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        ),
    )?;

    // pivot_root into the assembled root and detach the old one.
    let old_root = step(
        "pivot_root",
        open(
            "/",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
    )?;
    // SAFETY: fresh fd from open.
    let old_root = unsafe { OwnedFd::from_raw_fd(old_root) };
    step("pivot_root", nix::unistd::chdir(plan.new_root.as_c_str()))?;
    step("pivot_root", nix::unistd::pivot_root(".", "."))?;
    step("pivot_root", nix::unistd::fchdir(old_root.as_raw_fd()))?;
    step("pivot_root", umount2(".", MntFlags::MNT_DETACH))?;
    drop(old_root);
    step("pivot_root", nix::unistd::chdir("/"))?;

    // Become root of the new user namespace (until now the child ran with host uid 0, unmapped
    // here, which let it traverse the root-only scratch dir); drop the host's supplementary groups.
    step("credentials", nix::unistd::setgroups(&[]))?;
    step(
        "credentials",
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
    )?;
    step(
        "credentials",
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
    )?;
    step("setsid", nix::unistd::setsid())?;

    step("hostname", nix::unistd::sethostname(&plan.hostname))?;
    step("loopback", loopback_up())?;

    // stdio: stdin /dev/null, stdout/stderr the log pipe.
    let null = step(
        "stdio",
        open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()),
    )?;
    step("stdio", dup_to(null, 0))?;
    step("stdio", dup_to(log.as_raw_fd(), 1))?;
    step("stdio", dup_to(log.as_raw_fd(), 2))?;
    // Nothing else of the launcher may leak into the domain.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks fds; no memory involved.
    if unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    } != 0
    {
        return Err(LaunchError::new(
            "stdio",
            format!("close_range: {}", nix::Error::last()),
        ));
    }

    // SAFETY: prctl with constant integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(LaunchError::new(
            "no_new_privs",
            nix::Error::last().to_string(),
        ));
    }
    drop_capabilities(&plan.caps)?;
    // The Rust runtime ignores SIGPIPE; ignored dispositions survive exec, so restore it.
    // SAFETY: setting a signal to its default disposition installs no handler code.
    step("signals", unsafe {
        nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
    })?;
    step(
        "signals",
        nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        ),
    )?;
    seccomp::install(&plan.seccomp).map_err(|e| LaunchError::new("seccomp", e))?;

    let Err(e) = nix::unistd::execve(&plan.argv[0], &plan.argv, &plan.env);
    Err(LaunchError::new(
        "exec",
        format!("{}: {e}", plan.argv[0].to_string_lossy()),
    ))
}

/// Soft and hard RLIMIT_CORE of this process to 1 (see [`crate::coredump`]).
fn set_core_limit_one() -> nix::Result<()> {
    let one = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: setrlimit reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &one) } != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

fn dup_to(fd: RawFd, target: RawFd) -> nix::Result<()> {
    // SAFETY: dup2 on fds we own; the target is a standard stream slot.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Keeps only `kept` in the bounding, permitted and effective sets; inheritable and ambient
/// empty. With no_new_privs, exec cannot add to the permitted set.
fn drop_capabilities(kept: &[caps::Capability]) -> StepResult<()> {
    let s = "capabilities";
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(63);
    let keep: Vec<u32> = kept.iter().map(|c| c.index() as u32).collect();
    for cap in 0..=last {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL for caps the kernel does not know.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 && nix::Error::last() != nix::Error::EINVAL {
            return Err(LaunchError::new(
                s,
                format!("drop cap {cap} from bounding set: {}", nix::Error::last()),
            ));
        }
    }
    let set: caps::CapsHashSet = kept.iter().copied().collect();
    step(s, caps::clear(None, caps::CapSet::Ambient))?;
    step(s, caps::clear(None, caps::CapSet::Inheritable))?;
    step(s, caps::set(None, caps::CapSet::Effective, &set))?;
    step(s, caps::set(None, caps::CapSet::Permitted, &set))?;
    Ok(())
}

/// Brings up `lo` in the new network namespace (the only interface it has).
fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`, which is valid.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// The launcher's whole job for `bulkhead-sandbox launch`: a reply for stdout.
pub fn run_to_reply(spec_json: &[u8]) -> crate::LauncherReply {
    let spec: SandboxSpec = match serde_json::from_slice(spec_json) {
        Ok(s) => s,
        Err(e) => {
            return crate::LauncherReply::Error {
                step: "parse-spec".into(),
                message: e.to_string(),
            }
        }
    };
    match launch(&spec) {
        Ok(r) => crate::LauncherReply::Ok(r),
        Err(e) => crate::LauncherReply::Error {
            step: e.step,
            message: e.message,
        },
    }
}
