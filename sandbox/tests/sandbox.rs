//! Integration tests: real launcher, real namespaces, idmapped mounts, overlayfs and cgroups.
//! They need root, user namespaces, overlayfs and idmapped mounts on the filesystem of the
//! temp dir; without those they print why and skip.

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_sandbox::{
    probe, start, CgroupRoot, Launcher, SandboxError, SandboxRecord, SandboxSpec, UID_BASE,
    UID_RANGE,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const LAUNCHER: &str = env!("CARGO_BIN_EXE_bulkhead-sandbox");
const PROBE: &str = env!("CARGO_BIN_EXE_escape-probe");

/// Every attempt the battery makes; each must be reported, and blocked.
const BATTERY: &[&str] = &[
    "no-new-privs",
    "seccomp-active",
    "caps-capeff",
    "caps-capprm",
    "caps-capbnd",
    "caps-capamb",
    "caps-capinh",
    "uid-map-unprivileged",
    "chroot-fchdir-walk",
    "proc-1-root",
    "proc-host-pid",
    "mount-tmpfs",
    "mount-proc",
    "mount-bind-root",
    "remount-guest-tools-rw",
    "remount-tmp-exec",
    "umount-root",
    "umount-proc",
    "fsopen",
    "open-tree-clone",
    "pivot-root",
    "template-layer-write",
    "ptrace-host-pid",
    "process-vm-readv-host",
    "kill-host-pid",
    "pidfd-open-host",
    "raw-socket-packet",
    "raw-socket-inet",
    "raw-socket-inet6",
    "vsock-socket",
    "af-alg-socket",
    "network-namespace",
    "host-abstract-socket",
    "mknod-char-tmp",
    "mknod-block-tmp",
    "mknod-char-dev",
    "mknod-block-dev",
    "mknod-char-home",
    "mknod-block-home",
    "mknod-char-root",
    "mknod-block-root",
    "host-devices",
    "secret-files",
    "proc-sysrq-trigger",
    "proc-core-pattern",
    "proc-drop-caches",
    "proc-modprobe-path",
    "setuid-tmp",
    "setuid-home",
    "setuid-shm",
    "keyring-add-key",
    "keyring-keyctl",
    "keyring-request-key",
    "init-module",
    "finit-module",
    "delete-module",
    "kexec-load",
    "kexec-file-load",
    "bpf-map-create",
    "perf-event-open",
    "userfaultfd",
    "io-uring-setup",
    "kcmp",
    "pidfd-getfd",
    "listmount-new-syscall",
    "personality-read-implies-exec",
    "ioctl-tiocsti",
    "reboot",
    "swapoff",
    "settimeofday",
    "name-to-handle-at",
    "open-by-handle-at",
    "unshare-user",
    "unshare-mount",
    "unshare-net",
    "clone-newuser",
    "clone3-newuser",
    "setns-mnt",
    "int80-unshare-user",
];

/// Returns a reason to skip, or None when the host can run sandboxes.
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    let caps = probe();
    if !caps.user_namespaces {
        return Some("user namespaces disabled".into());
    }
    if !caps.overlayfs {
        return Some("no overlayfs".into());
    }
    if !caps.idmapped_mounts {
        return Some("kernel lacks mount_setattr (idmapped mounts)".into());
    }
    if caps.cgroup_mode.starts_with("unusable") {
        return Some(format!("cgroups: {}", caps.cgroup_mode));
    }
    None
}

macro_rules! require_host {
    () => {
        if let Some(why) = skip_reason() {
            bulkhead_test_skip::skip(why);
            return;
        }
        become_subreaper();
    };
}

/// Orphaned inits (their launcher exits) are reparented to us, so we can reap them and read
/// their exit status.
fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

fn copy_with_libs(bin: &Path, root: &Path) {
    let dest = root.join(bin.strip_prefix("/").unwrap_or(bin));
    fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    fs::copy(bin, &dest).expect("copy binary");
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if word.starts_with('/') {
            let lib = Path::new(word);
            let d = root.join(word.trim_start_matches('/'));
            if !d.exists() {
                fs::create_dir_all(d.parent().expect("parent")).expect("mkdir lib");
                fs::copy(lib, &d).expect("copy lib");
            }
        }
    }
}

/// This test process's own cgroup root: the fixtures' fixed names must not meet the cgroups
/// of a domaind on this host, nor those of another run of these tests.
fn test_root() -> CgroupRoot {
    CgroupRoot::instance(&format!("sandbox-tests-{}", std::process::id())).expect("cgroup root")
}

/// Domain cgroups below this test process's root.
fn list_orphan_cgroups() -> Result<Vec<String>, SandboxError> {
    bulkhead_sandbox::list_orphan_cgroups(&test_root())
}

struct Fixture {
    dir: tempfile::TempDir,
    name: String,
    slot: u32,
    /// A real template root to use instead of the tiny test root.
    template: Option<PathBuf>,
}

impl Fixture {
    /// A tiny root tree from host files (canonical ids: owned by root), a private volume with
    /// /home/user owned by 1000, a channel dir and guest tools holding the escape probe.
    fn new(name: &str, slot: u32) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("bh-sandbox-test-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        for d in [
            "bin", "etc", "home", "proc", "dev", "tmp", "run", "usr/lib", "root",
        ] {
            fs::create_dir_all(root.join(d)).expect("mkdir root dirs");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
        for bin in ["/bin/sh", "/bin/cat"] {
            copy_with_libs(Path::new(bin), &root);
        }
        // the probe's libraries (it runs from /usr/lib/bulkhead inside)
        let libs_only = dir.path().join("probe-libs");
        copy_with_libs(Path::new(PROBE), &libs_only);
        copy_tree_libs(&libs_only, &root);
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )
        .expect("passwd");
        fs::write(
            root.join("etc/group"),
            "root:x:0:\ntty:x:5:\nuser:x:1000:\n",
        )
        .expect("group");
        fs::write(root.join("etc/template-marker"), "original\n").expect("marker");

        let private = dir.path().join("private");
        fs::create_dir_all(private.join("user")).expect("private");
        nix::unistd::chown(
            &private.join("user"),
            Some(nix::unistd::Uid::from_raw(1000)),
            Some(nix::unistd::Gid::from_raw(1000)),
        )
        .expect("chown user home");
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).expect("chmod");
        let tools = dir.path().join("tools");
        fs::create_dir_all(&tools).expect("tools");
        fs::copy(PROBE, tools.join("escape-probe")).expect("copy probe");
        fs::create_dir_all(dir.path().join("channel")).expect("channel");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Fixture {
            dir,
            name: name.to_string(),
            slot,
            template: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn spec(&self, init: &[&str]) -> SandboxSpec {
        SandboxSpec {
            resolv_conf: None,
            name: self.name.clone(),
            cgroup_root: test_root(),
            template_root: self.template.clone().unwrap_or_else(|| self.path("root")),
            private_image: self.private_image(),
            root_overlay_mib: 64,
            root_changes_dir: None,
            package_manager_caps: false,
            scratch_dir: self.path("scratch"),
            channel_dir: self.path("channel"),
            guest_tools_dir: self.path("tools"),
            init: init.iter().map(|s| s.to_string()).collect(),
            log_file: self.path("log/init.log"),
            memory_mib: 128,
            vcpus: 1,
            pids_max: 64,
            uid_slot: self.slot,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("log/init.log")).unwrap_or_default()
    }

    /// The private volume image, made from the `private` dir at its first use (so a test
    /// plants what it wants in `private` before its first [`Fixture::spec`]).
    fn private_image(&self) -> PathBuf {
        let image = self.path("private.img");
        if !image.exists() {
            let f = fs::File::create(&image).expect("image");
            f.set_len(64 << 20).expect("size");
            let out = std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
                .arg(self.path("private"))
                .arg(&image)
                .output()
                .expect("mkfs.ext4 (e2fsprogs)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        image
    }

    /// Runs `f` on the private volume mounted read-only on the host for a moment (once the
    /// domain has released it), as the host sees it: canonical ids.
    fn with_private<R>(&self, f: impl FnOnce(&Path) -> R) -> R {
        let image = self.private_image();
        let at = tempfile::tempdir().expect("mount point");
        bulkhead_sandbox::loopdev::mount_ext4(
            &image,
            at.path(),
            nix::mount::MsFlags::MS_RDONLY | nix::mount::MsFlags::MS_NOSUID,
            None,
        )
        .expect("mount the private volume read-only");
        let r = f(at.path());
        nix::mount::umount2(at.path(), nix::mount::MntFlags::MNT_DETACH).expect("umount");
        r
    }

    /// Host mounts that mention this fixture: there must never be any.
    fn host_mounts(&self) -> Vec<String> {
        let me = self.dir.path().to_string_lossy().into_owned();
        fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.contains(&me))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // the root goes with this process's last domain cgroup
        let _ = bulkhead_sandbox::remove_cgroup_root_if_empty(&test_root());
    }
}

fn copy_tree_libs(from: &Path, to: &Path) {
    for e in fs::read_dir(from).expect("read").flatten() {
        let src = e.path();
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            fs::create_dir_all(&dst).expect("mkdir");
            copy_tree_libs(&src, &dst);
        } else if !dst.exists() && src.to_string_lossy().contains("lib") {
            fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn launcher() -> Launcher {
    Launcher {
        path: PathBuf::from(LAUNCHER),
    }
}

/// Waits (bounded) until the init exits and reaps it (it is our child: we are a subreaper),
/// then until the log writer has written the rest of the output (and reaps it too).
fn wait_exit(rec: &SandboxRecord, limit: Duration) -> WaitStatus {
    let st = wait_init(rec, limit);
    assert!(
        rec.wait_log_flushed(limit),
        "log writer still running after the init exited"
    );
    if let Some(pid) = rec.log_writer_pid {
        // our child too once the launcher exited; ECHILD if someone else reaped it
        let _ = waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    st
}

fn wait_init(rec: &SandboxRecord, limit: Duration) -> WaitStatus {
    let fd = match rec.pidfd() {
        Ok(fd) => fd,
        // already exited (a zombie waiting for us)
        Err(SandboxError::Gone { .. }) => {
            return waitpid(Pid::from_raw(rec.init_pid), None).expect("reap init")
        }
        Err(e) => panic!("pidfd: {e}"),
    };
    let deadline = Instant::now() + limit;
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(1000u16)).expect("poll");
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "init still running after {limit:?}"
        );
    }
    waitpid(Pid::from_raw(rec.init_pid), None).expect("reap init")
}

fn wait_for_log(fx: &Fixture, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fx.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the init log: {}",
            fx.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `spec`, waits (up to a minute) for its init to exit, cleans up, checks the init
/// exited with 0 and returns the domain's log.
fn run_to_clean_exit(fx: &Fixture, spec: &SandboxSpec) -> String {
    let rec = start(spec, &launcher()).expect("start");
    let status = wait_exit(&rec, Duration::from_secs(60));
    let log = fx.log();
    rec.cleanup().expect("cleanup");
    assert_eq!(
        status,
        WaitStatus::Exited(Pid::from_raw(rec.init_pid), 0),
        "{log}"
    );
    log
}

fn scratch_is_empty(fx: &Fixture) -> bool {
    fs::read_dir(fx.path("scratch"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

fn run_battery(fx: &Fixture, extra: &[&str], expect: &[&str]) -> String {
    // secrets the domain must not reach: a host file, another domain's private file
    let host_secret = fx.path("host-secret");
    fs::write(&host_secret, "BULKHEAD-SECRET host file\n").expect("secret");
    let other = fx.path("other-domain/private/user");
    fs::create_dir_all(&other).expect("other domain");
    let other_secret = other.join("secret");
    fs::write(&other_secret, "BULKHEAD-SECRET other domain\n").expect("secret");
    // an abstract unix socket in the host network namespace
    let abstract_name = format!("bulkhead-test-{}-{}", std::process::id(), fx.name);
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            abstract_name.as_bytes(),
        )
        .expect("abstract addr");
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");

    let host_pid = std::process::id().to_string();
    let hs = host_secret.to_string_lossy().into_owned();
    let os = other_secret.to_string_lossy().into_owned();
    let mut init = vec![
        "/usr/lib/bulkhead/escape-probe",
        "battery",
        "--host-pid",
        &host_pid,
        "--secret",
        &hs,
        "--secret",
        &os,
        "--secret",
        "/etc/shadow-of-the-host-does-not-exist",
        "--host-abstract",
        &abstract_name,
    ];
    init.extend_from_slice(extra);
    let mounts_before = fx.host_mounts();
    let rec = start(&fx.spec(&init), &launcher()).expect("start battery sandbox");
    assert!(fx.host_mounts().is_empty(), "host sees sandbox mounts");
    let status = wait_exit(&rec, Duration::from_secs(300));
    let log = fx.log();
    let mut failures = Vec::new();
    for name in expect {
        let line = log
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name));
        match line {
            None => failures.push(format!("{name}: not reported")),
            Some(l) if l.split_whitespace().nth(2) != Some("blocked") => {
                failures.push(format!("{name}: {l}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "escapes that worked or were not tried:\n{}\nfull log:\n{log}",
        failures.join("\n")
    );
    assert!(log.contains("escaped=0"), "{log}");
    assert_eq!(
        status,
        WaitStatus::Exited(Pid::from_raw(rec.init_pid), 0),
        "{log}"
    );
    rec.cleanup().expect("cleanup");
    assert!(!rec.cgroup.exists(), "cgroup left behind");
    assert!(scratch_is_empty(fx), "scratch left behind");
    assert_eq!(fx.host_mounts(), mounts_before);
    log
}

#[test]
fn escape_battery_as_domain_root() {
    require_host!();
    let fx = Fixture::new("bh-test-escape", 4001);
    let mut expect: Vec<&str> = BATTERY.to_vec();
    expect.extend(["fork-bomb", "memory-bomb"]);
    let log = run_battery(&fx, &["--pids-max", "64", "--memory-mib", "128"], &expect);
    // the host is fine after the fork bomb
    assert!(Command::new("true")
        .status()
        .expect("spawn on host")
        .success());
    println!("{log}");
}

/// The battery inside a real template (the Debian 12 tree built by `templates/`), when one is
/// available: BULKHEAD_TEST_TEMPLATE, else the templates crate's test cache.
#[test]
fn escape_battery_in_real_template() {
    require_host!();
    let Some(template) = real_template_or_skip() else {
        return;
    };
    let mut fx = Fixture::new("bh-test-escape-tmpl", 4007);
    fx.template = Some(template.clone());
    let before = fs::read_dir(&template).expect("template").count();
    let mut expect: Vec<&str> = BATTERY.to_vec();
    expect.extend(["fork-bomb", "memory-bomb"]);
    run_battery(&fx, &["--pids-max", "64", "--memory-mib", "128"], &expect);
    assert_eq!(fs::read_dir(&template).expect("template").count(), before);
}

/// Ordinary Debian programs run under the filter as the domain init would run them: a shell,
/// coreutils, setpriv switching to the domain user (setgroups/setresuid), signals, sockets.
#[test]
fn debian_programs_run_under_the_filter() {
    require_host!();
    let Some(template) = real_template_or_skip() else {
        return;
    };
    let mut fx = Fixture::new("bh-test-debian-progs", 4009);
    fx.template = Some(template);
    let script = "set -e; id; ls / >/dev/null && echo ls-ok; head -n1 /etc/os-release; \
        setpriv --reuid=user --regid=user --init-groups id; \
        perl -e 'use Socket; socket(my $s, PF_INET, SOCK_STREAM, 0) or die $!; print qq(perl-socket-ok\\n)'; \
        sort </etc/passwd >/dev/null && echo sort-ok; kill -0 1 && echo kill-ok; \
        timeout 5 true && echo timeout-ok; cat /etc/hostname >/dev/null || true; \
        getent passwd user >/dev/null && echo getent-ok; echo ALL-OK";
    let log = run_to_clean_exit(&fx, &fx.spec(&["/bin/sh", "-c", script]));
    println!("{log}");
    for needle in [
        "uid=0(root)",
        "ls-ok",
        "Debian",
        "uid=1000(user) gid=1000(user)",
        "perl-socket-ok",
        "sort-ok",
        "kill-ok",
        "timeout-ok",
        "getent-ok",
        "ALL-OK",
    ] {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
}

/// The real template's root, or None after reporting the test as skipped.
fn real_template_or_skip() -> Option<PathBuf> {
    let template = real_template();
    if template.join("etc/os-release").exists() {
        return Some(template);
    }
    bulkhead_test_skip::skip(format_args!(
        "no built template at {} (set BULKHEAD_TEST_TEMPLATE)",
        template.display()
    ));
    None
}

fn real_template() -> PathBuf {
    std::env::var_os("BULKHEAD_TEST_TEMPLATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bulkhead-test/templates/debian-12/current"))
}

#[test]
fn escape_battery_as_domain_user() {
    require_host!();
    let fx = Fixture::new("bh-test-escape-user", 4002);
    // setuid planting needs root, so those attempts report "cannot plant" (still blocked)
    run_battery(&fx, &["--as-user", "1000"], BATTERY);
}

#[test]
fn lifecycle_limits_uid_map_freeze_kill_cleanup() {
    require_host!();
    let fx = Fixture::new("bh-test-life", 4003);
    let init = [
        "/usr/lib/bulkhead/escape-probe",
        "idle",
        "--root-file",
        "/etc/written-inside",
        "--user-file",
        "/home/user/created-inside",
    ];
    let rec = start(&fx.spec(&init), &launcher()).expect("start");
    wait_for_log(&fx, "READY");

    // record
    assert_eq!(rec.uid_base, UID_BASE + 4003 * UID_RANGE);
    assert!(rec.is_alive());
    assert!(rec.init_start_time > 0);
    assert!(
        fx.host_mounts().is_empty(),
        "host sees: {:?}",
        fx.host_mounts()
    );

    // credentials of the init as the host sees them
    let status = fs::read_to_string(format!("/proc/{}/status", rec.init_pid)).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert!(
        field("Uid:").starts_with(&rec.uid_base.to_string()),
        "{status}"
    );
    assert_eq!(field("CapEff:"), "00000000000000e0");
    assert_eq!(field("CapBnd:"), "00000000000000e0");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // template unchanged; the write went to the overlay upper layer as the domain's root
    assert!(
        !fx.path("root/etc/written-inside").exists(),
        "template modified"
    );
    assert_eq!(
        fs::read_to_string(fx.path("root/etc/template-marker")).expect("marker"),
        "original\n"
    );
    // (the upper layer is a tmpfs in the domain's mount namespace; seen through its root)
    let in_domain = |p: &str| PathBuf::from(format!("/proc/{}/root{p}", rec.init_pid));
    let upper = fs::metadata(in_domain("/etc/written-inside")).expect("upper file");
    assert_eq!(upper.uid(), rec.uid_base);

    // limits
    assert_eq!(rec.cgroup.memory_limit(), Some(128 << 20));
    assert_eq!(rec.cgroup.pids_limit(), Some(64));
    assert!(rec.memory_usage().is_some_and(|m| m > 0));
    assert!(list_orphan_cgroups().expect("list").contains(&fx.name));

    // freeze / thaw
    rec.freeze().expect("freeze");
    assert!(rec.is_frozen().expect("is_frozen"));
    let state = proc_state(rec.init_pid);
    assert_eq!(state, 'D', "a frozen task reports D");
    rec.thaw().expect("thaw");
    assert!(!rec.is_frozen().expect("is_frozen"));
    assert_eq!(proc_state(rec.init_pid), 'S');

    // a second start of the same domain while it runs is refused and harms nothing
    let err = start(&fx.spec(&init), &launcher()).expect_err("double start");
    match &err {
        SandboxError::Launch { step, .. } => assert_eq!(step, "cgroup", "{err}"),
        other => panic!("unexpected error {other}"),
    }
    assert!(
        rec.is_alive(),
        "first instance harmed by the refused second start"
    );
    assert!(
        in_domain("/etc/written-inside").exists(),
        "the refused second start touched the running instance's root"
    );

    // kill everything while frozen
    rec.freeze().expect("freeze");
    rec.kill_all().expect("kill_all");
    let st = wait_exit(&rec, Duration::from_secs(30));
    assert!(
        matches!(st, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
        "{st:?}"
    );
    assert!(!rec.is_alive());
    assert!(
        rec.signal_init(Signal::SIGTERM).is_err(),
        "signal to a dead init"
    );

    rec.cleanup().expect("cleanup");
    rec.cleanup().expect("cleanup is idempotent");
    assert!(!rec.cgroup.exists());
    assert!(!list_orphan_cgroups().expect("list").contains(&fx.name));
    assert!(scratch_is_empty(&fx));
    assert!(fx.host_mounts().is_empty());
    // uid map: a file created as user 1000 inside is canonical 1000 on disk; nothing lost
    let made = fx.with_private(|p| fs::metadata(p.join("user/created-inside")));
    let made = made.expect("private data lost");
    assert_eq!((made.uid(), made.gid()), (1000, 1000));
}

fn proc_state(pid: i32) -> char {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &s[s.rfind(')').expect(")") + 2..];
    rest.chars().next().expect("state")
}

#[test]
fn signal_init_and_clean_exit() {
    require_host!();
    let fx = Fixture::new("bh-test-signal", 4004);
    let rec = start(
        &fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]),
        &launcher(),
    )
    .expect("start");
    wait_for_log(&fx, "READY");
    rec.signal_init(Signal::SIGTERM).expect("SIGTERM");
    let st = wait_exit(&rec, Duration::from_secs(30));
    assert_eq!(st, WaitStatus::Exited(Pid::from_raw(rec.init_pid), 0));
    rec.cleanup().expect("cleanup");
    assert!(!rec.cgroup.exists());
    assert!(scratch_is_empty(&fx));
}

#[test]
fn failed_exec_names_the_step_and_leaves_nothing() {
    require_host!();
    let fx = Fixture::new("bh-test-badinit", 4005);
    let before = fx.host_mounts();
    let err =
        start(&fx.spec(&["/usr/lib/bulkhead/no-such-init"]), &launcher()).expect_err("must fail");
    match &err {
        SandboxError::Launch {
            step,
            message,
            name,
        } => {
            assert_eq!(step, "child:exec", "{err}");
            assert!(message.contains("no-such-init"), "{message}");
            assert_eq!(name, &fx.name);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        !list_orphan_cgroups().expect("list").contains(&fx.name),
        "cgroup left"
    );
    assert!(scratch_is_empty(&fx), "scratch left");
    assert_eq!(fx.host_mounts(), before);
}

#[test]
fn launcher_rejects_bad_specs_with_the_step() {
    require_host!();
    let fx = Fixture::new("bh-test-badspec", 4006);
    // a half-built template: missing root
    let mut spec = fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]);
    spec.template_root = fx.path("missing-template");
    let err = start(&spec, &launcher()).expect_err("missing template");
    assert!(
        matches!(err, SandboxError::InvalidSpec(ref m) if m.contains("template_root")),
        "{err}"
    );

    // the launcher itself checks too (domaind-independent), and answers with a JSON error
    let json = serde_json::to_string(&spec).expect("json");
    let out = run_launcher(json.as_bytes());
    assert!(!out.status.success());
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json reply");
    assert_eq!(reply["error"]["step"], "validate", "{reply}");

    // garbage on stdin
    let out = run_launcher(b"{not json");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json reply");
    assert_eq!(reply["error"]["step"], "parse-spec", "{reply}");

    // a template that is a file, not a tree
    fs::write(fx.path("file-template"), "x").expect("write");
    spec.template_root = fx.path("file-template");
    assert!(start(&spec, &launcher()).is_err());
    assert!(!list_orphan_cgroups().expect("list").contains(&fx.name));
}

fn run_launcher(stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(LAUNCHER)
        .arg("launch")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn launcher");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[test]
fn probe_reports_this_host() {
    let caps = probe();
    println!("{}", serde_json::to_string_pretty(&caps).expect("json"));
    assert!(!caps.kernel.is_empty());
    for v in [
        &caps.cgroup_memory,
        &caps.cgroup_cpu,
        &caps.cgroup_pids,
        &caps.cgroup_freezer,
    ] {
        assert!(["v1", "v2", "none"].contains(&v.as_str()), "{v}");
    }
    // reading a knob of our own cgroup works through the same parser
    let mut s = String::new();
    fs::File::open("/proc/self/cgroup")
        .expect("cgroup")
        .read_to_string(&mut s)
        .expect("read");
    assert!(!s.is_empty());
}

/// The launcher killed at its worst moment (child cloned, root assembled, not released): the
/// child goes away by itself, the host sees no mount, and the leftover cgroup is found and
/// removed like domaind's recovery does; the domain then starts normally.
#[test]
fn launcher_killed_mid_start_leaves_recoverable_state() {
    require_host!();
    let fx = Fixture::new("bh-test-killed", 4008);
    let spec = fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]);
    let mut child = Command::new(LAUNCHER)
        .arg("launch")
        .env(bulkhead_sandbox::launch::PAUSE_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn launcher");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&serde_json::to_vec(&spec).expect("json"))
            .expect("write spec");
    }
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proc_state(pid) != 'T' {
        assert!(
            Instant::now() < deadline,
            "launcher never reached the pause point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // the sandbox child exists now, in the domain's cgroup
    assert!(list_orphan_cgroups().expect("list").contains(&fx.name));
    assert!(fx.host_mounts().is_empty(), "assembly leaked into the host");
    child.kill().expect("SIGKILL launcher");
    let _ = child.wait();

    // the child sees EOF on its go pipe and exits; recovery removes the cgroup
    bulkhead_sandbox::remove_cgroup(&test_root(), &fx.name).expect("remove leftover cgroup");
    assert!(!list_orphan_cgroups().expect("list").contains(&fx.name));
    assert!(fx.host_mounts().is_empty());

    // and the domain starts again from the leftover scratch
    let rec = start(&spec, &launcher()).expect("start after a killed launcher");
    wait_for_log(&fx, "READY");
    rec.kill_all().expect("kill");
    let _ = wait_exit(&rec, Duration::from_secs(30));
    rec.cleanup().expect("cleanup");
    assert!(scratch_is_empty(&fx));
}

/// A template whose mount targets are symlinks to absolute paths: the launcher (host root)
/// must not follow them into the host tree. The start fails naming the step and the path,
/// nothing is created or mounted on the host, and nothing is left behind.
#[test]
fn symlinked_mount_targets_in_the_template_are_refused() {
    require_host!();
    // /home -> /etc: the private volume must not be bound over the host's /etc
    let fx = Fixture::new("bh-test-symlink-home", 4010);
    let root = fx.path("root");
    fs::remove_dir(root.join("home")).expect("rm home");
    std::os::unix::fs::symlink("/etc", root.join("home")).expect("symlink home");
    // /usr -> a host directory: guest tools must not create usr/lib/bulkhead in it
    let fx2 = Fixture::new("bh-test-symlink-usr", 4011);
    let host_usr = fx2.path("host-usr");
    fs::create_dir_all(host_usr.join("lib")).expect("host dir");
    let root2 = fx2.path("root");
    fs::rename(root2.join("usr"), fx2.path("real-usr")).expect("move usr away");
    std::os::unix::fs::symlink(&host_usr, root2.join("usr")).expect("symlink usr");

    for (fx, step, path) in [
        (&fx, "mount:home", "/home"),
        (&fx2, "mount:guest-tools", "/usr"),
    ] {
        let before = fx.host_mounts();
        let err = start(
            &fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]),
            &launcher(),
        )
        .expect_err("a symlinked mount target must refuse the start");
        match &err {
            SandboxError::Launch {
                step: s, message, ..
            } => {
                assert_eq!(s, step, "{err}");
                assert!(
                    message.contains(path) && message.contains("symlink"),
                    "{message}"
                );
            }
            other => panic!("unexpected error {other}"),
        }
        assert_eq!(fx.host_mounts(), before);
        assert!(!list_orphan_cgroups().expect("list").contains(&fx.name));
        assert!(scratch_is_empty(fx), "scratch left");
    }
    assert!(
        !host_usr.join("lib/bulkhead").exists(),
        "the launcher created a directory through the template's symlink on the host"
    );
}

/// The domain's output goes through the log writer: the file stays bounded however much the
/// domain writes, one older generation is kept, the newest output is complete; the writer runs
/// in the domain's cgroup as an unprivileged host process and goes away with the domain.
#[test]
fn log_stays_bounded_and_the_writer_lives_in_the_domain_cgroup() {
    use bulkhead_sandbox::logwriter::{old_log_path, LOG_MAX_BYTES};
    require_host!();
    let fx = Fixture::new("bh-test-log", 4012);
    let spew_mib = 3 * (LOG_MAX_BYTES >> 20) + 2;
    let mib = spew_mib.to_string();
    let rec = start(
        &fx.spec(&["/usr/lib/bulkhead/escape-probe", "spew", "--mib", &mib]),
        &launcher(),
    )
    .expect("start spew");
    let status = wait_exit(&rec, Duration::from_secs(120));
    assert_eq!(status, WaitStatus::Exited(Pid::from_raw(rec.init_pid), 0));
    let log = fx.path("log/init.log");
    let cur = fs::metadata(&log).expect("log").len();
    let old = fs::metadata(old_log_path(&log)).expect("old log").len();
    let slack = 64 * 1024 + 4096;
    assert!(cur <= LOG_MAX_BYTES + slack, "log is {cur} bytes");
    assert!(old <= LOG_MAX_BYTES + slack, "old log is {old} bytes");
    assert!(
        fx.log().ends_with("SPEW-DONE\n"),
        "the newest output is missing"
    );
    rec.cleanup().expect("cleanup");

    // while a domain runs: where the writer is and what it may do. A descriptor leaked by
    // the caller (no close-on-exec, like fds received by domaind) must not reach the writer.
    let (leak_r, leak_w) = nix::unistd::pipe().expect("pipe without cloexec");
    let rec = start(
        &fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]),
        &launcher(),
    )
    .expect("start idle");
    wait_for_log(&fx, "READY");
    let wpid = rec.log_writer_pid.expect("writer pid in the record");
    assert!(rec.log_writer_alive());
    let fds: Vec<String> = fs::read_dir(format!("/proc/{wpid}/fd"))
        .expect("writer fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut fds_sorted = fds.clone();
    fds_sorted.sort();
    assert_eq!(fds_sorted, ["0", "1", "2"], "writer holds more descriptors");
    drop((leak_r, leak_w));
    let cg = fs::read_to_string(format!("/proc/{wpid}/cgroup")).expect("writer cgroup");
    assert!(
        cg.lines()
            .any(|l| l.contains("pids") && l.ends_with(&format!("/{}/{}", test_root(), fx.name))),
        "writer not in the domain's cgroup:\n{cg}"
    );
    let status = fs::read_to_string(format!("/proc/{wpid}/status")).expect("writer status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        "{status}"
    );
    let comm = fs::read_to_string(format!("/proc/{wpid}/comm")).expect("writer comm");
    assert_eq!(comm.trim(), "bulkhead-log");
    let oom = fs::read_to_string(format!("/proc/{wpid}/oom_score_adj")).expect("oom");
    if caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false)
    {
        assert_eq!(oom.trim(), "-1000");
    } else {
        println!("note: no CAP_SYS_RESOURCE on this host; the writer's OOM score stays {oom}");
    }
    // the domain's cgroup going away takes the writer with it
    rec.kill_all().expect("kill");
    let _ = wait_exit(&rec, Duration::from_secs(30));
    assert!(!rec.log_writer_alive());
    rec.cleanup().expect("cleanup");
    assert!(!rec.cgroup.exists());
}

/// ~/Incoming (where files from other domains land) is created in the private volume with
/// the user's ownership and mounted noexec,nosuid,nodev: a program copied there cannot run,
/// the same program in the home can.
#[test]
fn incoming_is_created_and_mounted_noexec() {
    require_host!();
    let fx = Fixture::new("bh-test-incoming", 4013);
    let root = fx.path("root");
    for bin in ["/usr/bin/setpriv", "/bin/chmod"] {
        copy_with_libs(Path::new(bin), &root);
    }
    let script = "setpriv --reuid=1000 --regid=1000 --clear-groups /bin/sh -c '\
        cat /bin/cat > $HOME/Incoming/prog && chmod 755 $HOME/Incoming/prog && \
        if $HOME/Incoming/prog /etc/template-marker; then echo INCOMING-EXEC-WORKED; \
        else echo INCOMING-EXEC-REFUSED; fi; \
        cat /bin/cat > $HOME/prog && chmod 755 $HOME/prog && \
        $HOME/prog /etc/template-marker >/dev/null && echo HOME-EXEC-WORKED'; \
        while read -r line; do case \"$line\" in *' /home/user/Incoming '*) echo \"MOUNT $line\";; esac; \
        done </proc/self/mountinfo; echo DONE";
    let mut spec = fx.spec(&["/bin/sh", "-c", script]);
    spec.init = vec![
        "/usr/bin/env".into(),
        "HOME=/home/user".into(),
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
    ];
    copy_with_libs(Path::new("/usr/bin/env"), &root);
    let log = run_to_clean_exit(&fx, &spec);
    assert!(log.contains("DONE"), "{log}");
    assert!(
        log.contains("HOME-EXEC-WORKED"),
        "control: exec from home works\n{log}"
    );
    assert!(log.contains("INCOMING-EXEC-REFUSED"), "{log}");
    assert!(!log.contains("INCOMING-EXEC-WORKED"), "{log}");
    let mount = log
        .lines()
        .find(|l| l.starts_with("MOUNT "))
        .unwrap_or_else(|| panic!("no mount at /home/user/Incoming:\n{log}"));
    let opts = mount.split_whitespace().nth(6).unwrap_or_default();
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(
            opts.split(',').any(|o| o == flag),
            "{flag} missing: {mount}"
        );
    }
    // created on the host side with the user's (canonical) ids, private to the user
    let (m, prog) = fx.with_private(|p| {
        (
            fs::symlink_metadata(p.join("user/Incoming")).expect("Incoming on disk"),
            fs::metadata(p.join("user/Incoming/prog")).expect("written inside"),
        )
    });
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o700));
    assert_eq!(prog.uid(), 1000);
    assert!(fx.host_mounts().is_empty());
}

/// A private volume whose user/Incoming is a symlink (planted by the domain itself) must not
/// make the launcher bind a host directory: the start fails naming the step.
#[test]
fn a_symlinked_incoming_in_the_private_volume_is_refused() {
    require_host!();
    let fx = Fixture::new("bh-test-incoming-link", 4014);
    let host_dir = fx.path("host-dir");
    fs::create_dir_all(&host_dir).expect("mkdir");
    std::os::unix::fs::symlink(&host_dir, fx.path("private/user/Incoming")).expect("symlink");
    let before = fx.host_mounts();
    let err = start(
        &fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]),
        &launcher(),
    )
    .expect_err("a symlinked Incoming must refuse the start");
    match &err {
        SandboxError::Launch { step, message, .. } => {
            assert_eq!(step, "mount:incoming", "{err}");
            assert!(
                message.contains("user/Incoming") && message.contains("symlink"),
                "{message}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(fx.host_mounts(), before);
    assert!(!list_orphan_cgroups().expect("list").contains(&fx.name));
    assert!(scratch_is_empty(&fx), "scratch left");
}

/// Stops and cleans a domain when dropped, so a failed assertion leaves nothing running.
struct Running(Option<SandboxRecord>);

impl Running {
    fn rec(&self) -> &SandboxRecord {
        self.0.as_ref().expect("record")
    }

    fn stop(&mut self) {
        if let Some(rec) = self.0.take() {
            let _ = rec.kill_all();
            let _ = wait_exit(&rec, Duration::from_secs(30));
            rec.cleanup().expect("cleanup");
            assert!(!rec.cgroup.exists(), "cgroup left behind");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rec) = self.0.take() {
            let _ = rec.kill_all();
            let _ = rec.cleanup();
        }
    }
}

/// "INOTIFY-HOG opened=<n> ..." from a domain running `escape-probe inotify-hog`.
fn hog_count(fx: &Fixture) -> u64 {
    wait_for_log(fx, "READY");
    let log = fx.log();
    log.lines()
        .find_map(|l| l.strip_prefix("INOTIFY-HOG opened="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no INOTIFY-HOG line in:\n{log}"))
}

fn host_inotify_init() -> Result<(), nix::Error> {
    // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    Ok(())
}

/// Per-user kernel counters (here inotify instances, `fs.inotify.max_user_instances`) are
/// charged to the domain's own host uid, not to host root: a domain on the real template
/// that opens inotify instances until the kernel refuses one is bounded by the host's
/// per-user limit, and host root and a second domain can still open theirs.
#[test]
fn inotify_instances_are_charged_to_the_domain_not_to_host_root() {
    require_host!();
    let Some(template) = real_template_or_skip() else {
        return;
    };
    if let Err(e) = host_inotify_init() {
        bulkhead_test_skip::skip(format_args!(
            "host root cannot open an inotify instance even before the test: {e}"
        ));
        return;
    }
    let max: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .expect("max_user_instances")
        .trim()
        .parse()
        .expect("a number");
    let hog = ["/usr/lib/bulkhead/escape-probe", "inotify-hog"];

    let mut fx = Fixture::new("bh-test-inotify-a", 4015);
    fx.template = Some(template.clone());
    let mut a = Running(Some(
        start(&fx.spec(&hog), &launcher()).expect("start first domain"),
    ));
    let opened_a = hog_count(&fx);
    assert!(
        (1..=max).contains(&opened_a),
        "the first domain opened {opened_a} instances (host limit {max} per user)"
    );
    // the domain is at its limit, and host root is not affected
    assert_eq!(
        host_inotify_init(),
        Ok(()),
        "host root cannot open an inotify instance while a domain holds {opened_a}"
    );

    let mut fx2 = Fixture::new("bh-test-inotify-b", 4016);
    fx2.template = Some(template);
    let mut b = Running(Some(
        start(&fx2.spec(&hog), &launcher()).expect("start second domain"),
    ));
    let opened_b = hog_count(&fx2);
    assert!(
        opened_b >= 1,
        "a second domain could open no inotify instance while the first holds {opened_a}"
    );
    assert!(opened_b <= max, "{opened_b}");
    assert_eq!(
        host_inotify_init(),
        Ok(()),
        "host root, with two domains full"
    );
    println!("inotify instances: first domain {opened_a}, second {opened_b}, limit {max}");

    // the domain's own user namespace refuses nested ones (its /proc/sys/user)
    assert!(
        fx.log().contains("userns_max=0"),
        "max_user_namespaces inside the domain: {}",
        fx.log()
    );
    b.stop();
    a.stop();
    assert_eq!(host_inotify_init(), Ok(()));
}

/// The domain's RLIMIT_CORE follows the host's core dump settings: 1 (no core leaves the
/// domain) when the host hands cores to a helper or socket, else what the launcher had.
#[test]
fn core_limit_follows_the_host_core_pattern() {
    use bulkhead_sandbox::coredump::{host_core_limit, CoreLimit};
    require_host!();
    let fx = Fixture::new("bh-test-core", 4017);
    let mut dom = Running(Some(
        start(
            &fx.spec(&["/usr/lib/bulkhead/escape-probe", "idle"]),
            &launcher(),
        )
        .expect("start"),
    ));
    wait_for_log(&fx, "READY");
    let core_line = |pid: &str| {
        fs::read_to_string(format!("/proc/{pid}/limits"))
            .expect("limits")
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .expect("core line")
    };
    let init = core_line(&dom.rec().init_pid.to_string());
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let decision = host_core_limit();
    println!(
        "host core_pattern {:?}: {decision:?}; init limits {init}",
        pattern.trim()
    );
    match decision {
        CoreLimit::One(_) => {
            assert_eq!(init, "1 1", "soft and hard RLIMIT_CORE of the init");
            assert!(
                fx.log().contains("core dumps disabled in this domain"),
                "{}",
                fx.log()
            );
        }
        CoreLimit::Keep => {
            assert_eq!(
                init,
                core_line("self"),
                "the launcher's own limit, unchanged"
            );
            assert!(!fx.log().contains("core dumps disabled"), "{}", fx.log());
        }
    }
    dom.stop();
}

/// A real `int 0x80` from inside a domain: the 32-bit system call entry must not get around
/// the seccomp filter. i386 getpid (allowed as a 64-bit call) and i386 unshare(CLONE_NEWUSER)
/// both kill the caller with SIGSYS: the filter's architecture check, not its deny list.
#[test]
fn int80_from_a_domain_is_killed_by_the_filter() {
    require_host!();
    if !cfg!(target_arch = "x86_64") {
        bulkhead_test_skip::skip("int 0x80 is x86 only");
        return;
    }
    // On the host the same call works (else the kernel has no IA32 emulation and a kill
    // inside would prove nothing about the filter).
    let host = Command::new(PROBE)
        .args(["int80", "--nr", "20"])
        .output()
        .expect("probe on host");
    let host_out = String::from_utf8_lossy(&host.stdout);
    if !host.status.success() {
        bulkhead_test_skip::skip(format_args!(
            "int 0x80 fails on this host ({}): no IA32 emulation",
            host.status
        ));
        return;
    }
    let host_ret: i64 = host_out
        .trim()
        .rsplit_once("returned=")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(-1);
    assert!(host_ret > 0, "i386 getpid on the host: {host_out}");
    let fx = Fixture::new("bh-test-int80", 4018);
    let script = "/usr/lib/bulkhead/escape-probe int80 --nr 20; echo GETPID-STATUS=$?; \
        /usr/lib/bulkhead/escape-probe int80 --nr 310 --arg 268435456; echo UNSHARE-STATUS=$?";
    let log = run_to_clean_exit(&fx, &fx.spec(&["/bin/sh", "-c", script]));
    // 128 + SIGSYS (31): killed by the filter
    let sigsys = 128 + Signal::SIGSYS as i32;
    assert!(log.contains(&format!("GETPID-STATUS={sigsys}")), "{log}");
    assert!(log.contains(&format!("UNSHARE-STATUS={sigsys}")), "{log}");
    assert!(
        !log.contains("INT80 nr="),
        "a 32-bit call returned inside the domain:\n{log}"
    );
}

/// A device node handed to a running sandbox (`bulkhead-sandbox device-add`, as domaind does
/// for a USB device attached to it): the domain user reads it at /dev/<name>, the domain's root
/// (no CAP_DAC_OVERRIDE) does not, the host's mount table never shows it, a symlink the domain
/// planted under /dev is refused, and `device-remove` takes it away.
#[test]
fn a_device_handed_to_a_sandbox_opens_there_for_its_user() {
    require_host!();
    let fx = Fixture::new("bh-test-device", 4015);
    let root = fx.path("root");
    for bin in ["/usr/bin/setpriv", "/bin/sleep", "/usr/bin/head", "/bin/ln"] {
        copy_with_libs(Path::new(bin), &root);
    }
    // A loop device over a file with a marker stands for the USB disk.
    let backing = fx.path("disk.img");
    fs::write(&backing, format!("{:<4096}", "bulkhead-device-marker")).expect("backing");
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", "--read-only"])
        .arg(&backing)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    struct Detach(PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.0)
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());
    let script = "ln -s /tmp /dev/planted; \
        while [ ! -e /dev/usb/disk0 ]; do sleep 0.05; done; \
        if head -c 22 /dev/usb/disk0 >/dev/null 2>&1; then echo ROOT-READ; else echo ROOT-DENIED; fi; \
        echo \"USER-READ $(setpriv --reuid=1000 --regid=1000 --clear-groups head -c 22 /dev/usb/disk0)\"; \
        while [ -e /dev/usb/disk0 ]; do sleep 0.05; done; echo GONE; \
        sleep 600";
    let rec = start(&fx.spec(&["/bin/sh", "-c", script]), &launcher()).expect("start");
    let mut running = Running(Some(rec.clone()));
    let user = rec.uid_base + 1000;
    let target = bulkhead_sandbox::devices::Target::of(&rec);
    let st = fs::metadata(&loopdev).expect("stat the loop device");
    let rdev = (
        nix::sys::stat::major(st.rdev()) as u32,
        nix::sys::stat::minor(st.rdev()) as u32,
    );
    let (owner0, mode0) = (st.uid(), st.mode() & 0o7777);
    use bulkhead_sandbox::devices::{add_device, remove_device};
    // A node that is another device now, or a pid that is another process: refused, and the
    // node keeps its owner.
    let e = add_device(
        &launcher(),
        target,
        &loopdev,
        (rdev.0, rdev.1 + 1000),
        "usb/disk0",
        user,
    )
    .expect_err("another device number");
    assert!(e.to_string().contains("went away"), "{e}");
    let stale = bulkhead_sandbox::devices::Target {
        init_start_time: target.init_start_time + 1,
        ..target
    };
    let e = add_device(&launcher(), stale, &loopdev, rdev, "usb/disk0", user)
        .expect_err("another process");
    assert!(e.to_string().contains("is gone"), "{e}");
    let st = fs::metadata(&loopdev).expect("stat");
    assert_eq!(
        (st.uid(), st.mode() & 0o7777),
        (owner0, mode0),
        "owner not restored"
    );
    add_device(&launcher(), target, &loopdev, rdev, "usb/disk0", user).expect("device-add");
    wait_for_log(&fx, "USER-READ");
    let log = fx.log();
    assert!(log.contains("USER-READ bulkhead-device-marker"), "{log}");
    assert!(log.contains("ROOT-DENIED"), "{log}");
    let meta = fs::metadata(&loopdev).expect("stat the host node");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (user, 0o600));
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .contains("usb/disk0"),
        "the device's mount shows on the host"
    );
    // The domain's own symlink under /dev does not lead the mount elsewhere.
    let e = add_device(&launcher(), target, &loopdev, rdev, "planted/disk1", user)
        .expect_err("a symlinked directory under /dev");
    assert!(e.to_string().contains("planted"), "{e}");
    for bad in ["../etc/x", "/dev/sda"] {
        assert!(add_device(&launcher(), target, &loopdev, rdev, bad, user).is_err());
    }
    remove_device(&launcher(), target, "usb/disk0").expect("device-remove");
    wait_for_log(&fx, "GONE");
    // Removing what is not there is no error.
    remove_device(&launcher(), target, "usb/disk0").expect("device-remove again");
    running.stop();
}
