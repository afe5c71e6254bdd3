//! `escape-probe`: tries the classic ways out of a sandbox domain, from inside it.
//!
//! `escape-probe battery [options]` prints one line per attempt,
//! `ESCAPE <name> blocked <detail>` or `ESCAPE <name> ESCAPED <detail>`, then
//! `ESCAPE-SUMMARY total=<n> escaped=<m>`, and exits 0 only if every attempt was blocked.
//! It depends on nothing in the domain (no shell, no tools), so it runs the same as the init
//! of a bare test root or as a command inside the Debian template.
//!
//! It refuses to run where uid 0 is the host's root: succeeding attempts would act on the host.
//!
//! Helper modes used by the tests: `whoami` (prints the effective uid, used for the setuid
//! checks), `idle` (a minimal init: writes test files, then reaps children until SIGTERM).

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

/// Files placed by the host test start with this; finding it from inside is an escape.
const SECRET_PREFIX: &[u8] = b"BULKHEAD-SECRET";

#[derive(Parser)]
#[command(name = "escape-probe")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every escape attempt.
    Battery(BatteryArgs),
    /// Print the effective and real uid.
    Whoami,
    /// Write MIB mebibytes of numbered lines to stdout, then "SPEW-DONE" (log bound tests).
    Spew {
        #[arg(long)]
        mib: u64,
    },
    /// Open inotify instances until the kernel refuses one, print
    /// `INOTIFY-HOG opened=<n> error=<errno>` and `READY`, then hold them until SIGTERM.
    InotifyHog,
    /// Make one i386 system call through `int 0x80` (x86_64 only) and print
    /// `INT80 nr=<nr> returned=<value>`. Run on the host by the tests to learn whether the
    /// kernel has IA32 emulation (`--nr 20`, i386 getpid).
    Int80 {
        #[arg(long)]
        nr: u32,
        #[arg(long, default_value_t = 0)]
        arg: u32,
    },
    /// Minimal init for tests: write files, then reap children until SIGTERM.
    Idle {
        /// Write "root" to this path as root.
        #[arg(long)]
        root_file: Option<PathBuf>,
        /// Write "user" to this path as uid:gid 1000.
        #[arg(long)]
        user_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct BatteryArgs {
    /// A host pid (outside the domain) to try to reach.
    #[arg(long)]
    host_pid: Option<i32>,
    /// Host paths of secret files (another domain's private file, host files).
    #[arg(long)]
    secret: Vec<PathBuf>,
    /// An abstract unix socket name listening in the host network namespace.
    #[arg(long)]
    host_abstract: Option<String>,
    /// The domain's pids limit; the fork bomb must stop below it.
    #[arg(long)]
    pids_max: Option<u64>,
    /// The domain's memory limit in MiB; the allocation must be stopped near it.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Drop to this uid/gid before the attempts (default: stay root of the domain).
    #[arg(long)]
    as_user: Option<u32>,
}

struct Report {
    total: usize,
    escaped: usize,
}

impl Report {
    fn line(&mut self, name: &str, blocked: bool, detail: impl AsRef<str>) {
        self.total += 1;
        let detail = detail.as_ref().replace('\n', " ");
        if blocked {
            println!("ESCAPE {name} blocked {detail}");
        } else {
            self.escaped += 1;
            println!("ESCAPE {name} ESCAPED {detail}");
        }
        let _ = std::io::stdout().flush();
    }

    /// For attempts where any failure of the call means blocked.
    fn call(&mut self, name: &str, r: Result<impl std::fmt::Debug, Errno>) {
        match r {
            Ok(v) => self.line(name, false, format!("call succeeded: {v:?}")),
            Err(e) => self.line(name, true, format!("{e}")),
        }
    }
}

fn sys(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn read_secret(p: &Path) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let mut f = fs::File::open(p).ok()?;
    let n = f.read(&mut buf).ok()?;
    buf.truncate(n);
    buf.starts_with(SECRET_PREFIX).then(|| {
        format!(
            "{} revealed {}",
            p.display(),
            String::from_utf8_lossy(&buf).trim()
        )
    })
}

fn rel(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Spew { mib } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let line = [b'x'; 1023];
            for i in 0..mib * 1024 {
                write!(out, "{i:08} ")?;
                out.write_all(&line[..1023 - 9])?;
                out.write_all(b"\n")?;
            }
            writeln!(out, "SPEW-DONE")?;
            out.flush()?;
            Ok(())
        }
        Cmd::Whoami => {
            println!("euid={} ruid={}", Uid::effective(), Uid::current());
            Ok(())
        }
        Cmd::Idle {
            root_file,
            user_file,
        } => idle(root_file, user_file),
        Cmd::InotifyHog => inotify_hog(),
        Cmd::Int80 { nr, arg } => {
            println!("INT80 nr={nr} returned={}", int80(nr, arg));
            Ok(())
        }
        Cmd::Battery(args) => {
            let escaped = battery(&args)?;
            std::process::exit(if escaped == 0 { 0 } else { 1 });
        }
    }
}

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn idle(root_file: Option<PathBuf>, user_file: Option<PathBuf>) -> anyhow::Result<()> {
    // pid 1 gets no default signal actions: install a SIGTERM handler so shutdown works.
    // SAFETY: the handler only calls _exit, which is async-signal-safe.
    unsafe {
        nix::sys::signal::signal(
            Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_term),
        )
    }
    .context("install SIGTERM handler")?;
    if let Some(p) = root_file {
        fs::write(&p, "root\n").with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = user_file {
        let status = in_child(|| {
            drop_to(1000)?;
            fs::write(&p, "user\n").map_err(|e| anyhow::anyhow!("write {}: {e}", p.display()))
        })?;
        anyhow::ensure!(
            status == WaitStatus::Exited(status_pid(&status), 0),
            "user write: {status:?}"
        );
    }
    println!("READY");
    let _ = std::io::stdout().flush();
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            Err(Errno::ECHILD) => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

fn inotify_hog() -> anyhow::Result<()> {
    let mut held: Vec<OwnedFd> = Vec::new();
    let error = loop {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            break Errno::last();
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        if held.len() >= 1 << 20 {
            break Errno::UnknownErrno;
        }
    };
    let userns_max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable:{e}"));
    println!(
        "INOTIFY-HOG opened={} error={error:?} userns_max={userns_max}",
        held.len()
    );
    idle(None, None)
}

/// One i386 system call through the 32-bit entry `int 0x80`, from this 64-bit process.
/// Returns what the kernel put in eax (sign-extended), when the call returns at all.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u32, arg: u32) -> i64 {
    let mut ret: u32 = nr;
    // SAFETY: `int 0x80` enters the kernel's i386 system call path with eax = number and
    // ebx = first argument (ecx, edx zero). rbx is reserved by LLVM, so the argument is
    // swapped into it and back. The compat entry clobbers r8-r11; the rest is preserved.
    unsafe {
        std::arch::asm!(
            "xchg {a:r}, rbx",
            "int 0x80",
            "xchg {a:r}, rbx",
            a = inout(reg) arg as u64 => _,
            inout("eax") ret,
            in("ecx") 0u32,
            in("edx") 0u32,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    ret as i32 as i64
}

#[cfg(not(target_arch = "x86_64"))]
fn int80(_nr: u32, _arg: u32) -> i64 {
    -(libc::ENOSYS as i64)
}

/// i386 `unshare(CLONE_NEWUSER)` through `int 0x80`: the seccomp filter checks the
/// architecture of every call and kills the process for a foreign one. If the call returns
/// at all (whatever its result), the 32-bit path is open.
fn compat_syscalls(r: &mut Report) {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    const I386_UNSHARE: u32 = 310;
    match in_child(|| {
        let ret = int80(I386_UNSHARE, libc::CLONE_NEWUSER as u32);
        println!("ESCAPE-INFO int80 unshare returned {ret}");
        let _ = std::io::stdout().flush();
        // SAFETY: leave at once with a code the parent recognises.
        unsafe { libc::_exit(42) }
    }) {
        Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => r.line(
            "int80-unshare-user",
            true,
            "killed by SIGSYS (seccomp architecture check)",
        ),
        Ok(WaitStatus::Signaled(_, Signal::SIGSEGV, _)) => r.line(
            "int80-unshare-user",
            true,
            "SIGSEGV: this kernel has no IA32 emulation",
        ),
        Ok(st) => r.line(
            "int80-unshare-user",
            false,
            format!("the 32-bit call returned: {st:?}"),
        ),
        Err(e) => r.line("int80-unshare-user", false, format!("fork: {e}")),
    }
}

fn status_pid(s: &WaitStatus) -> Pid {
    s.pid().unwrap_or(Pid::from_raw(0))
}

fn drop_to(uid: u32) -> anyhow::Result<()> {
    nix::unistd::setgroups(&[]).context("setgroups")?;
    nix::unistd::setresgid(Gid::from_raw(uid), Gid::from_raw(uid), Gid::from_raw(uid))
        .context("setresgid")?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .context("setresuid")?;
    Ok(())
}

/// Runs `f` in a forked child; returns its wait status (exit 0 = Ok, 1 = Err).
fn in_child(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<WaitStatus> {
    // SAFETY: the probe is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("child: {e:#}");
                    1
                }
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(waitpid(child, None).context("waitpid")?),
    }
}

/// True when this process runs in the host's user namespace (uid 0 maps to host uid 0): the
/// battery's mount and sysctl attempts would then act on the host itself.
fn on_host() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 3 && f[0] == "0" && f[1] == "0"
    })
}

fn battery(a: &BatteryArgs) -> anyhow::Result<usize> {
    anyhow::ensure!(
        !on_host(),
        "refusing to run: uid 0 here is the host's root (not inside a sandbox domain); \
         the attempts would change the host"
    );
    if let Some(uid) = a.as_user {
        drop_to(uid)?;
    }
    let mut r = Report {
        total: 0,
        escaped: 0,
    };
    println!(
        "ESCAPE-INFO uid={} pid={} hostname={}",
        Uid::effective(),
        std::process::id(),
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    confinement_state(&mut r);
    chroot_walk(&mut r, a);
    proc_walks(&mut r, a);
    mounts(&mut r);
    template_write(&mut r);
    tracing_host(&mut r, a);
    sockets(&mut r, a);
    devices(&mut r);
    secrets(&mut r, a);
    proc_writes(&mut r);
    setuid(&mut r);
    kernel_interfaces(&mut r);
    compat_syscalls(&mut r);
    namespaces(&mut r);
    if let Some(n) = a.pids_max {
        fork_bomb(&mut r, n);
    }
    if let Some(m) = a.memory_mib {
        memory_bomb(&mut r, m);
    }
    println!("ESCAPE-SUMMARY total={} escaped={}", r.total, r.escaped);
    Ok(r.escaped)
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

fn confinement_state(r: &mut Report) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let nnp = status_field(&status, "NoNewPrivs:");
    r.line(
        "no-new-privs",
        nnp.as_deref() == Some("1"),
        format!("NoNewPrivs={nnp:?}"),
    );
    let sec = status_field(&status, "Seccomp:");
    r.line(
        "seccomp-active",
        sec.as_deref() == Some("2"),
        format!("Seccomp={sec:?}"),
    );
    // CAP_KILL(5), CAP_SETGID(6), CAP_SETUID(7) at most.
    const ALLOWED: u64 = 0xe0;
    for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "CapInh:"] {
        let v = status_field(&status, key).and_then(|h| u64::from_str_radix(&h, 16).ok());
        let ok = matches!(v, Some(bits) if bits & !ALLOWED == 0);
        r.line(
            &format!("caps-{}", key.trim_end_matches(':').to_lowercase()),
            ok,
            match v {
                Some(bits) => format!("{key} {bits:#x}"),
                None => format!("{key} unreadable"),
            },
        );
    }
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let first: Vec<u64> = map
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ok = first.len() == 3 && first[0] == 0 && first[1] != 0 && first[2] <= 65536;
    r.line(
        "uid-map-unprivileged",
        ok,
        format!("uid_map {}", map.trim()),
    );
}

fn chroot_walk(r: &mut Report, a: &BatteryArgs) {
    // The classic: chroot into a subdir while holding a dir fd outside it, fchdir out, walk up.
    let jail = Path::new("/tmp/escape-jail");
    let _ = fs::create_dir_all(jail);
    let outside = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    );
    let chrooted = nix::unistd::chroot(jail);
    let mut detail = format!("chroot: {chrooted:?}");
    if let Ok(fd) = outside {
        let _ = nix::unistd::fchdir(fd);
        for _ in 0..128 {
            let _ = nix::unistd::chdir("..");
        }
        let _ = nix::unistd::chroot(".");
        // SAFETY: fd came from open above and is not used elsewhere.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut found = None;
    for s in &a.secret {
        if let Some(hit) = read_secret(&rel(s)).or_else(|| read_secret(s)) {
            found = Some(hit);
        }
    }
    let _ = nix::unistd::chdir("/");
    // what "/" looks like after the walk: must still be the domain root
    let root_entries: Vec<String> = fs::read_dir(".")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    detail.push_str(&format!(
        "; / after walk has {} entries",
        root_entries.len()
    ));
    match found {
        Some(hit) => r.line("chroot-fchdir-walk", false, hit),
        None => r.line("chroot-fchdir-walk", true, detail),
    }
}

fn proc_walks(r: &mut Report, a: &BatteryArgs) {
    let mut hits = Vec::new();
    let mut pids = Vec::new();
    if let Ok(d) = fs::read_dir("/proc") {
        for e in d.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                pids.push(pid);
            }
        }
    }
    for s in &a.secret {
        for base in [
            "/proc/1/root",
            "/proc/self/root",
            "/proc/1/cwd",
            "/proc/thread-self/root",
        ] {
            if let Some(h) = read_secret(&Path::new(base).join(rel(s))) {
                hits.push(h);
            }
        }
        for pid in &pids {
            if let Some(h) = read_secret(&Path::new(&format!("/proc/{pid}/root")).join(rel(s))) {
                hits.push(h);
            }
        }
    }
    r.line(
        "proc-1-root",
        hits.is_empty(),
        if hits.is_empty() {
            format!(
                "secrets not reachable through /proc/*/root ({} pids visible)",
                pids.len()
            )
        } else {
            hits.join("; ")
        },
    );
    if let Some(hp) = a.host_pid {
        let p = PathBuf::from(format!("/proc/{hp}"));
        // Our pid namespace numbers from 1; the host pid must not be there, or if a domain
        // process happens to have that number, it must be ours (same uid map as ours).
        let visible = p.exists();
        let ours = fs::read_to_string(p.join("uid_map")).ok()
            == fs::read_to_string("/proc/self/uid_map").ok();
        r.line(
            "proc-host-pid",
            !visible || ours,
            format!(
                "/proc/{hp} exists={visible} same-userns={ours}; {} pids visible",
                pids.len()
            ),
        );
    }
}

fn mounts(r: &mut Report) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let _ = fs::create_dir_all("/tmp/escape-mnt");
    r.call(
        "mount-tmpfs",
        mount(
            Some("tmpfs"),
            "/tmp/escape-mnt",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        ),
    );
    r.call(
        "mount-proc",
        mount(
            Some("proc"),
            "/tmp/escape-mnt",
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        ),
    );
    r.call(
        "mount-bind-root",
        mount(
            Some("/"),
            "/tmp/escape-mnt",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    );
    r.call(
        "remount-guest-tools-rw",
        mount(
            None::<&str>,
            "/usr/lib/bulkhead",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        ),
    );
    r.call(
        "remount-tmp-exec",
        mount(
            None::<&str>,
            "/tmp",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        ),
    );
    r.call("umount-root", umount2("/", MntFlags::MNT_DETACH));
    r.call("umount-proc", umount2("/proc", MntFlags::MNT_DETACH));
    // SAFETY: fsopen with a static NUL-terminated name and no flags.
    r.call(
        "fsopen",
        sys(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 0) }),
    );
    // SAFETY: open_tree on "/" with constant flags; returns an fd or -1.
    r.call(
        "open-tree-clone",
        sys(unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
            )
        }),
    );
    r.call(
        "pivot-root",
        nix::unistd::pivot_root("/tmp", "/tmp/escape-mnt"),
    );
}

fn template_write(r: &mut Report) {
    // Find the overlay layer paths the kernel shows and try to write into them.
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut tried = Vec::new();
    let mut wrote = Vec::new();
    for line in mi.lines() {
        let Some((_, sup)) = line.split_once(" - ") else {
            continue;
        };
        for opt in sup.split([',', ' ']) {
            for key in [
                "lowerdir=",
                "upperdir=",
                "workdir=",
                "datadir+=",
                "lowerdir+=",
            ] {
                if let Some(v) = opt.strip_prefix(key) {
                    for layer in v.split(':') {
                        for cand in [PathBuf::from(layer), Path::new("/").join(layer)] {
                            let f = cand.join("escape-probe-write");
                            tried.push(f.display().to_string());
                            if fs::write(&f, "x").is_ok() {
                                wrote.push(f.display().to_string());
                                let _ = fs::remove_file(&f);
                            }
                        }
                    }
                }
            }
        }
    }
    r.line(
        "template-layer-write",
        wrote.is_empty(),
        if wrote.is_empty() {
            format!("tried {}", tried.join(" "))
        } else {
            format!("wrote {}", wrote.join(" "))
        },
    );
}

fn tracing_host(r: &mut Report, a: &BatteryArgs) {
    let Some(hp) = a.host_pid else { return };
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr/data.
    r.call(
        "ptrace-host-pid",
        sys(unsafe { libc::ptrace(libc::PTRACE_ATTACH, hp, 0usize, 0usize) }),
    );
    let mut buf = [0u8; 64];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: 0x400000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local iovec points into `buf`, which outlives the call; the remote address is only
    // interpreted in the target process.
    r.call(
        "process-vm-readv-host",
        sys(unsafe { libc::process_vm_readv(hp, &local, 1, &remote, 1, 0) } as libc::c_long),
    );
    r.call("kill-host-pid", kill(Pid::from_raw(hp), None));
    // pidfd_open of the host pid (signals and pidfd_getfd need one)
    // SAFETY: pidfd_open takes integers.
    r.call(
        "pidfd-open-host",
        sys(unsafe { libc::syscall(libc::SYS_pidfd_open, hp, 0) }),
    );
}

fn sockets(r: &mut Report, a: &BatteryArgs) {
    let eth_p_all = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
    // SAFETY: socket takes integers; a returned fd is closed below.
    let s =
        sys(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, eth_p_all) } as libc::c_long);
    close_if(&s);
    r.call("raw-socket-packet", s);
    // SAFETY: as above.
    let s = sys(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) } as libc::c_long,
    );
    close_if(&s);
    r.call("raw-socket-inet", s);
    // SAFETY: as above.
    let s = sys(
        unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) }
            as libc::c_long,
    );
    close_if(&s);
    r.call("raw-socket-inet6", s);
    // vsock is not network-namespaced: a connection to the host's CID would reach host
    // listeners (the VM channel). Try the socket and a connect to the host (CID 2) and to the
    // local loopback CID (1).
    // SAFETY: socket takes integers; a returned fd is used for connect below, then closed.
    let v = sys(
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    );
    let v = v.and_then(|fd| {
        let mut last = Errno::UnknownErrno;
        for cid in [libc::VMADDR_CID_HOST, 1] {
            // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
            let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = cid;
            addr.svm_port = 1024;
            // SAFETY: addr is a valid sockaddr_vm of the given size; fd is ours.
            let c = unsafe {
                libc::connect(
                    fd as i32,
                    (&addr as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            if c == 0 {
                return Ok(fd);
            }
            last = Errno::last();
        }
        close_if(&Ok(fd));
        Err(last)
    });
    close_if(&v);
    r.call("vsock-socket", v);
    // AF_ALG: the kernel crypto API, a recurring source of kernel bugs.
    // SAFETY: socket takes integers; a returned fd is closed below.
    let alg =
        sys(
            unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) }
                as libc::c_long,
        );
    close_if(&alg);
    r.call("af-alg-socket", alg);
    let ifaces = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let names: Vec<&str> = ifaces
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    r.line(
        "network-namespace",
        names.iter().all(|n| *n == "lo"),
        format!("interfaces: {names:?}"),
    );
    if let Some(name) = &a.host_abstract {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let res = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .and_then(|fd| {
            let addr = UnixAddr::new_abstract(name.as_bytes())?;
            connect(fd.as_raw_fd(), &addr).map(|()| fd)
        });
        r.call("host-abstract-socket", res.map(|_| "connected"));
    }
}

fn close_if(r: &Result<libc::c_long, Errno>) {
    if let Ok(fd) = r {
        // SAFETY: the fd was just returned by socket and is owned here.
        drop(unsafe { OwnedFd::from_raw_fd(*fd as i32) });
    }
}

fn devices(r: &mut Report) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    for (name, dir) in [
        ("tmp", "/tmp"),
        ("dev", "/dev"),
        ("home", "/home"),
        ("root", "/"),
    ] {
        let p = Path::new(dir).join("escape-null");
        let res = mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        );
        if res.is_ok() {
            // created: it must at least be unusable (nodev)
            let usable = fs::OpenOptions::new().write(true).open(&p).is_ok();
            let _ = fs::remove_file(&p);
            r.line(
                &format!("mknod-char-{name}"),
                !usable,
                format!("created, usable={usable}"),
            );
        } else {
            r.call(&format!("mknod-char-{name}"), res);
        }
        let p = Path::new(dir).join("escape-blk");
        let res = mknod(
            &p,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o666),
            makedev(8, 0),
        );
        if res.is_ok() {
            let _ = fs::remove_file(&p);
        }
        r.call(&format!("mknod-block-{name}"), res);
    }
    let mut opened = Vec::new();
    for dev in [
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/sda",
        "/dev/vda",
        "/dev/nvme0n1",
        "/dev/kmsg",
        "/dev/kvm",
        "/dev/fuse",
        "/dev/loop0",
        "/dev/loop-control",
        "/dev/mapper/control",
        "/proc/kcore",
        "/proc/kmsg",
        "/sys/kernel/debug",
    ] {
        if fs::File::open(dev).is_ok() {
            opened.push(dev);
        }
    }
    r.line(
        "host-devices",
        opened.is_empty(),
        if opened.is_empty() { "none of /dev/mem kmem port sda vda nvme0n1 kmsg kvm fuse loop* mapper, /proc/kcore kmsg openable".to_string() } else { format!("opened {opened:?}") },
    );
}

fn secrets(r: &mut Report, a: &BatteryArgs) {
    let mut hits = Vec::new();
    for s in &a.secret {
        let mut paths = vec![s.clone()];
        for base in [
            "/run/bulkhead-channel/../../..",
            "/usr/lib/bulkhead/../../..",
            "/home/../..",
        ] {
            paths.push(Path::new(base).join(rel(s)));
        }
        for p in paths {
            if let Some(h) = read_secret(&p) {
                hits.push(h);
            }
        }
    }
    // a symlink planted in the domain pointing at the host path must resolve inside
    for (i, s) in a.secret.iter().enumerate() {
        let l = PathBuf::from(format!("/tmp/escape-link-{i}"));
        let _ = fs::remove_file(&l);
        if symlink(s, &l).is_ok() {
            if let Some(h) = read_secret(&l) {
                hits.push(h);
            }
        }
    }
    r.line(
        "secret-files",
        hits.is_empty(),
        if hits.is_empty() {
            format!("{} secret paths unreachable", a.secret.len())
        } else {
            hits.join("; ")
        },
    );
}

fn proc_writes(r: &mut Report) {
    // Each write is harmless if it succeeds: the current value is written back (sysrq "h" only
    // prints help, drop_caches "1" only drops clean page cache).
    for (name, path, fixed) in [
        ("proc-sysrq-trigger", "/proc/sysrq-trigger", Some("h")),
        ("proc-core-pattern", "/proc/sys/kernel/core_pattern", None),
        ("proc-drop-caches", "/proc/sys/vm/drop_caches", Some("1")),
        ("proc-modprobe-path", "/proc/sys/kernel/modprobe", None),
    ] {
        let value = match fixed {
            Some(v) => v.to_string(),
            None => fs::read_to_string(path).unwrap_or_default(),
        };
        let res = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        match res {
            Ok(()) => r.line(name, false, format!("wrote {path}")),
            Err(e) => r.line(name, true, e.to_string()),
        }
    }
}

fn setuid(r: &mut Report) {
    // A root-owned setuid copy of this binary, run as uid 1000, must not run with euid 0.
    for (name, dir) in [
        ("setuid-tmp", "/tmp"),
        ("setuid-home", "/home"),
        ("setuid-shm", "/dev/shm"),
    ] {
        let target = Path::new(dir).join("escape-suid");
        let prep = (|| -> anyhow::Result<()> {
            let _ = fs::remove_file(&target);
            fs::copy("/proc/self/exe", &target).context("copy")?;
            nix::unistd::chown(&target, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
                .context("chown")?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o4755)).context("chmod")?;
            Ok(())
        })();
        if let Err(e) = prep {
            r.line(name, true, format!("cannot plant a setuid file: {e:#}"));
            continue;
        }
        let out = run_as_user_capture(&target, 1000);
        let _ = fs::remove_file(&target);
        match out {
            Ok(text) if text.contains("euid=0") => {
                r.line(name, false, format!("setuid gave {}", text.trim()))
            }
            Ok(text) if text.contains("euid=") => r.line(
                name,
                true,
                format!("ran without privilege: {}", text.trim()),
            ),
            Ok(text) => r.line(name, true, format!("did not run: {}", text.trim())),
            Err(e) => r.line(name, true, format!("did not run: {e:#}")),
        }
    }
}

/// Forks, drops to `uid`, execs `bin whoami` with stdout to a pipe; returns what it printed.
fn run_as_user_capture(bin: &Path, uid: u32) -> anyhow::Result<String> {
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    let cbin = CString::new(bin.as_os_str().as_encoded_bytes()).context("path")?;
    let arg = c"whoami".to_owned();
    // SAFETY: single-threaded probe; the child only drops privileges, dup2s and execs.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let ok = drop_to(uid).is_ok();
            // SAFETY: dup2 onto stdout of the child.
            unsafe { libc::dup2(wr.as_raw_fd(), 1) };
            if ok {
                let Err(e) = nix::unistd::execv(&cbin, &[cbin.clone(), arg]);
                println!("exec failed: {e}");
            } else {
                println!("could not drop to uid {uid}");
            }
            let _ = std::io::stdout().flush();
            // SAFETY: leave without running destructors.
            unsafe { libc::_exit(126) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut s = String::new();
            fs::File::from(rd)
                .take(4096)
                .read_to_string(&mut s)
                .context("read")?;
            let _ = waitpid(child, None);
            Ok(s)
        }
    }
}

fn kernel_interfaces(r: &mut Report) {
    let desc = c"x";
    // SAFETY: add_key with static NUL-terminated strings and a 1-byte payload.
    r.call(
        "keyring-add-key",
        sys(unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                c"x".as_ptr(),
                1usize,
                -2 as libc::c_long, // KEY_SPEC_PROCESS_KEYRING
            )
        }),
    );
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), create=1; integers only.
    r.call(
        "keyring-keyctl",
        sys(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3 as libc::c_long, 1) }),
    );
    // SAFETY: request_key with static strings.
    r.call(
        "keyring-request-key",
        sys(unsafe {
            libc::syscall(
                libc::SYS_request_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                std::ptr::null::<u8>(),
                0,
            )
        }),
    );
    let image = [0u8; 64];
    // SAFETY: init_module reads `image` (64 valid bytes) and the static params string.
    r.call(
        "init-module",
        sys(unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len(),
                c"".as_ptr(),
            )
        }),
    );
    let devnull = fs::File::open("/dev/null");
    let fd = devnull.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: finit_module with an fd we own and a static params string.
    r.call(
        "finit-module",
        sys(unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0) }),
    );
    // SAFETY: delete_module with a static name.
    r.call(
        "delete-module",
        sys(unsafe { libc::syscall(libc::SYS_delete_module, c"loop".as_ptr(), libc::O_NONBLOCK) }),
    );
    // SAFETY: kexec_load with zero segments and a NULL segment array.
    r.call(
        "kexec-load",
        sys(unsafe {
            libc::syscall(
                libc::SYS_kexec_load,
                0usize,
                0usize,
                std::ptr::null::<u8>(),
                0usize,
            )
        }),
    );
    // SAFETY: kexec_file_load with invalid fds and a static empty cmdline.
    r.call(
        "kexec-file-load",
        sys(unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                fd,
                fd,
                1usize,
                c"".as_ptr(),
                0usize,
            )
        }),
    );
    // bpf(BPF_MAP_CREATE) with a small array map.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key size
    attr[2] = 4; // value size
    attr[3] = 1; // max entries
                 // SAFETY: attr is a valid 128-byte buffer for union bpf_attr.
    let b = sys(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    });
    close_if(&b);
    r.call("bpf-map-create", b);
    let mut pattr = [0u8; 128];
    pattr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
                                                        // SAFETY: pattr is a zeroed perf_event_attr (type HARDWARE, config CYCLES) of the stated size.
    let p = sys(unsafe { libc::syscall(libc::SYS_perf_event_open, pattr.as_ptr(), 0, -1, -1, 0) });
    close_if(&p);
    r.call("perf-event-open", p);
    // SAFETY: userfaultfd takes flags only.
    let u = sys(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) });
    close_if(&u);
    r.call("userfaultfd", u);
    let params = [0u8; 128];
    // SAFETY: io_uring_setup with a zeroed params struct large enough for the kernel's.
    let io = sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_ptr()) });
    close_if(&io);
    r.call("io-uring-setup", io);
    // SAFETY: personality with a flag value; restored below if it succeeded.
    let pers = sys(unsafe { libc::personality(0x0400000) } as libc::c_long); // READ_IMPLIES_EXEC
    if pers.is_ok() {
        // SAFETY: back to the default persona.
        unsafe { libc::personality(0) };
    }
    r.call("personality-read-implies-exec", pers);
    // TIOCSTI: typing into a terminal (the classic sandbox-to-parent-shell injection); tried on
    // a pty of our own, which is harmless if it worked.
    let tiocsti = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|f| {
            let ch: libc::c_char = b'x' as libc::c_char;
            // SAFETY: TIOCSTI reads one byte from `ch`, which is valid for the call.
            sys(unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCSTI, &ch) } as libc::c_long)
        });
    r.call("ioctl-tiocsti", tiocsti);
    // SAFETY: reboot with the CAD_OFF command (harmless even if allowed in a pid namespace).
    r.call(
        "reboot",
        sys(unsafe { libc::reboot(libc::RB_DISABLE_CAD) } as libc::c_long),
    );
    // SAFETY: swapoff of a static path.
    r.call(
        "swapoff",
        sys(unsafe { libc::swapoff(c"/dev/vda".as_ptr()) } as libc::c_long),
    );
    // SAFETY: settimeofday to the current time read just before (no-op if it were allowed).
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: gettimeofday writes into tv.
    unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    // SAFETY: tv is valid; tz NULL.
    r.call(
        "settimeofday",
        sys(unsafe { libc::settimeofday(&tv, std::ptr::null()) } as libc::c_long),
    );
    let mut handle = [0u8; 136];
    handle[0..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at writes into `handle` (128 bytes of f_handle) and mount_id.
    r.call(
        "name-to-handle-at",
        sys(unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                handle.as_mut_ptr(),
                &mut mount_id,
                0,
            )
        }),
    );
    // SAFETY: open_by_handle_at reads the handle buffer.
    let o = sys(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::AT_FDCWD,
            handle.as_ptr(),
            libc::O_RDONLY,
        )
    });
    close_if(&o);
    r.call("open-by-handle-at", o);
    // kcmp compares kernel objects of two processes (an ordering oracle on kernel pointers)
    let me = std::process::id() as libc::c_long;
    // SAFETY: kcmp(pid, pid, KCMP_FILE, 0, 0) takes integers only.
    r.call(
        "kcmp",
        sys(unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 0, 0) }),
    );
    // pidfd_getfd on our own pidfd (stdin): steals fds from a process when allowed
    // SAFETY: pidfd_open of ourselves, then pidfd_getfd on it with integer arguments.
    let pidfd = sys(unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) });
    let g = pidfd.and_then(|pfd| {
        // SAFETY: as above.
        let r = sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd, 0, 0) });
        close_if(&Ok(pfd));
        r
    });
    close_if(&g);
    r.call("pidfd-getfd", g);
    // listmount (Linux 6.8), above the filter's syscall-number ceiling: ENOSYS by default.
    // A NULL request of size 0 is rejected by the kernel (EINVAL) when the call is allowed;
    // any success or non-ENOSYS error means the ceiling is not in place.
    // SAFETY: NULL pointers with zero sizes; the kernel reads nothing.
    let lm = sys(unsafe { libc::syscall(458, 0usize, 0usize, 0usize, 0usize) });
    r.line(
        "listmount-new-syscall",
        lm == Err(Errno::ENOSYS),
        format!("{lm:?}"),
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: modify_ldt(0 = read, NULL, 0) writes nothing.
        r.call(
            "modify-ldt",
            sys(unsafe { libc::syscall(libc::SYS_modify_ldt, 0, 0usize, 0usize) }),
        );
        // SAFETY: iopl(3) takes an integer.
        r.call("iopl", sys(unsafe { libc::syscall(libc::SYS_iopl, 3) }));
        // SAFETY: ioperm on port 0x80 takes integers.
        r.call(
            "ioperm",
            sys(unsafe { libc::syscall(libc::SYS_ioperm, 0x80, 1, 1) }),
        );
    }
}

fn namespaces(r: &mut Report) {
    // SAFETY: unshare takes flags.
    r.call(
        "unshare-user",
        sys(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long),
    );
    // SAFETY: as above.
    r.call(
        "unshare-mount",
        sys(unsafe { libc::unshare(libc::CLONE_NEWNS) } as libc::c_long),
    );
    // SAFETY: as above.
    r.call(
        "unshare-net",
        sys(unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long),
    );
    // raw clone with CLONE_NEWUSER: a child that exits at once if it was created
    // SAFETY: fork-like clone (no CLONE_VM, NULL stack) in a single-threaded process; the child
    // exits immediately.
    let c = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if c == 0 {
        // SAFETY: child exits at once.
        unsafe { libc::_exit(0) }
    }
    let res = sys(c);
    if let Ok(pid) = res {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
    }
    r.call("clone-newuser", res);
    // clone3 with CLONE_NEWUSER (flags in memory: the filter answers ENOSYS for all clone3)
    let mut args = [0u64; 11];
    args[0] = libc::CLONE_NEWUSER as u64;
    args[4] = libc::SIGCHLD as u64; // exit_signal
                                    // SAFETY: args is a valid clone_args of the given size; a child would exit at once.
    let c3 = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    if c3 == 0 {
        // SAFETY: child exits at once.
        unsafe { libc::_exit(0) }
    }
    let res = sys(c3);
    if let Ok(pid) = res {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
    }
    r.call("clone3-newuser", res);
    let setns = fs::File::open("/proc/1/ns/mnt")
        .map_err(|_| Errno::EACCES)
        .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::empty()));
    r.call("setns-mnt", setns);
}

fn fork_bomb(r: &mut Report, pids_max: u64) {
    // Fork until the kernel refuses; every child just waits to be killed.
    let cap = pids_max.saturating_mul(4).max(64);
    let mut children = Vec::new();
    let mut stop = None;
    while (children.len() as u64) < cap {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => loop {
                // SAFETY: pause just sleeps.
                unsafe { libc::pause() };
            },
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                stop = Some(e);
                break;
            }
        }
    }
    let n = children.len() as u64;
    for c in &children {
        let _ = kill(*c, Signal::SIGKILL);
    }
    for c in &children {
        let _ = waitpid(*c, None);
    }
    let blocked = stop.is_some() && n < pids_max;
    r.line(
        "fork-bomb",
        blocked,
        format!("forked {n} children before {stop:?} (pids.max {pids_max})"),
    );
}

fn memory_bomb(r: &mut Report, memory_mib: u64) {
    let target_mib = memory_mib.saturating_mul(4);
    // SAFETY: single-threaded; the child allocates and touches memory, then exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..target_mib {
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(1 << 20).is_err() {
                    // SAFETY: exit without unwinding.
                    unsafe { libc::_exit(3) }
                }
                v.resize(1 << 20, 0xa5);
                blocks.push(v);
            }
            // survived allocating four times the limit
            // SAFETY: exit without unwinding.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            let st = waitpid(child, None);
            let (blocked, detail) = match st {
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    (true, format!("allocator killed by {sig:?} (OOM)"))
                }
                Ok(WaitStatus::Exited(_, 3)) => (true, "allocation refused".to_string()),
                Ok(WaitStatus::Exited(_, 0)) => {
                    (false, format!("allocated and touched {target_mib} MiB"))
                }
                other => (true, format!("allocator ended: {other:?}")),
            };
            r.line(
                "memory-bomb",
                blocked,
                format!("{detail} (limit {memory_mib} MiB)"),
            );
        }
        Err(e) => r.line("memory-bomb", true, format!("could not fork: {e}")),
    }
}
