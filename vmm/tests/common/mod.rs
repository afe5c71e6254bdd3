//! Test harness for tiny guests (contract A, session 4): compile a freestanding C guest from
//! `vmm/tests/guests/<name>.c` with gcc, and run it under the real `bulkhead-vmm` binary.
#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub use bulkhead_vmm::{DiskSpec, NetSpec, VmSpec, VsockSpec};

/// The guests' source directory.
pub fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests")
}

/// The monitor binary cargo built for these tests.
pub fn vmm_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bulkhead-vmm"))
}

/// True when /dev/kvm can be opened; otherwise prints why the calling test does not run.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            bulkhead_test_skip::skip(format_args!(
                "/dev/kvm cannot be opened ({e}); guest tests need KVM (or PVM) and root"
            ));
            false
        }
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// For a test that confines the VMM: None (saying why) without KVM or root; else a temporary
/// directory and the empty sockets directory `channel/` inside it (the one the confined root
/// keeps).
pub fn confinement_dirs() -> Option<(tempfile::TempDir, PathBuf)> {
    if !kvm_available() {
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("confinement needs root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let socks = dir.path().join("channel");
    std::fs::create_dir(&socks).unwrap();
    Some((dir, socks))
}

/// Compiles `tests/guests/<name>.c` (with guest.h and guest.ld) into a static ELF under the
/// cargo target tmp dir and returns its path. Rebuilt only when a source is newer.
pub fn build_guest(name: &str) -> PathBuf {
    let src_dir = guests_dir();
    let src = src_dir.join(format!("{name}.c"));
    assert!(src.exists(), "no guest source {}", src.display());
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).expect("creating the guest output dir");
    let out = out_dir.join(name);
    let inputs = [
        src.clone(),
        src_dir.join("guest.h"),
        src_dir.join("guest.ld"),
    ];
    let newest = inputs
        .iter()
        .map(|p| mtime(p))
        .max()
        .unwrap_or(SystemTime::now());
    if out.exists() && mtime(&out) >= newest {
        return out;
    }
    // Compile to a private name, then rename: tests running in parallel may build the same guest.
    // Per process and thread: two tests of one binary may build the same guest at once.
    let tmp = out_dir.join(format!(
        "{name}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = Command::new("gcc")
        .args([
            "-m64",
            "-O2",
            "-Wall",
            "-Werror",
            "-ffreestanding",
            "-fno-builtin",
            "-nostdlib",
            "-nostartfiles",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-fno-stack-protector",
            "-fcf-protection=none",
            "-fno-asynchronous-unwind-tables",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-Wl,--build-id=none",
            "-Wl,-z,noexecstack",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", src_dir.join("guest.ld").display()))
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .expect("running gcc (scripts/install-deps.sh installs it)");
    assert!(
        result.status.success(),
        "gcc failed for guest {name}:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&tmp, &out).expect("renaming the built guest");
    out
}

/// A spec for a small guest: 32 MiB, one vCPU, console log in `dir`.
///
/// With `BULKHEAD_TEST_VMM_CONFINE=1` every guest runs confined (namespaces, empty root, no
/// capabilities, no_new_privs, seccomp per thread), staying uid 0 so the tests' root-owned
/// files and sockets remain usable without capabilities; scripts/test.sh runs the guest tests
/// a second time that way. The uid/gid drop itself is checked in tests/confine.rs.
pub fn guest_spec(kernel: &Path, dir: &Path) -> VmSpec {
    let confine = (std::env::var("BULKHEAD_TEST_VMM_CONFINE").as_deref() == Ok("1")).then_some(
        bulkhead_vmm::ConfineSpec {
            uid: 0,
            gid: 0,
            cgroup: None,
        },
    );
    VmSpec {
        name: "test-guest".into(),
        kernel: kernel.into(),
        initramfs: None,
        cmdline: String::new(),
        memory_mib: 32,
        vcpus: 1,
        serial_log: dir.join("console.log"),
        serial_log_max: 1 << 20,
        serial_input: None,
        disks: vec![],
        vsock: None,
        nets: Vec::new(),
        rng: false,
        confine,
    }
}

/// How a guest run ended.
#[derive(Debug)]
pub struct GuestOutcome {
    /// Exit status of bulkhead-vmm (killed by SIGKILL on timeout).
    pub status: ExitStatus,
    /// The console log.
    pub serial: String,
    /// bulkhead-vmm's stderr (its log, at the level `BULKHEAD_LOG` or `debug`).
    pub stderr: String,
    pub timed_out: bool,
}

impl GuestOutcome {
    /// Asserts the guest printed `BULKHEAD-GUEST PASS` and the monitor exited 0.
    pub fn assert_passed(&self) {
        assert!(
            !self.timed_out && self.status.success() && self.serial.contains("BULKHEAD-GUEST PASS"),
            "guest did not pass: status {:?}, timed out {}\n--- serial ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.timed_out,
            self.serial,
            self.stderr
        );
    }

    /// The console lines starting with `prefix` (prefix removed).
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.serial
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// How long a guest may run before the test gives up (PVM emulates at ~1M instructions/s).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `spec` under the real `bulkhead-vmm run --spec`, waits (at most [`GUEST_TIMEOUT`]).
pub fn run_guest(spec: VmSpec) -> GuestOutcome {
    run_guest_with(spec, &[], GUEST_TIMEOUT)
}

/// As [`run_guest`] with extra arguments after `--spec FILE` and an explicit timeout.
pub fn run_guest_with(spec: VmSpec, extra_args: &[&str], timeout: Duration) -> GuestOutcome {
    let dir = spec
        .serial_log
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let spec_path = dir.join(format!("spec-{}.json", std::process::id()));
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&spec).expect("spec to JSON"),
    )
    .expect("writing the spec");
    let mut child = Command::new(vmm_binary())
        .arg("run")
        .arg("--spec")
        .arg(&spec_path)
        .args(extra_args)
        .env(
            "BULKHEAD_LOG",
            std::env::var("BULKHEAD_LOG").unwrap_or_else(|_| "debug".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bulkhead-vmm");
    let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for bulkhead-vmm") {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("reaping bulkhead-vmm");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    let serial = std::fs::read(&spec.serial_log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if spec.confine.is_some() && status.success() {
        assert!(
            stderr.contains("confined"),
            "the VMM did not confine itself:\n{stderr}"
        );
    }
    GuestOutcome {
        status,
        serial,
        stderr,
        timed_out,
    }
}

/// Debian's cloud kernel (bzImage), fetched once with `apt-get download` and unpacked with
/// `dpkg-deb` into `$BULKHEAD_TEST_KERNEL_CACHE` (default /var/cache/bulkhead-test/kernel).
/// `None` (with the reason printed) when apt cannot fetch it.
pub fn debian_kernel() -> Option<PathBuf> {
    let cache = std::env::var_os("BULKHEAD_TEST_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/bulkhead-test/kernel"));
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let Some(k) = find(&cache) {
        return Some(k);
    }
    let skip = |why: String| {
        bulkhead_test_skip::skip(format_args!("cannot fetch Debian's cloud kernel: {why}"));
        None
    };
    let depends = match Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return skip(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => return skip(format!("apt-cache: {e}")),
    };
    let Some(pkg) = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
    else {
        return skip(format!(
            "apt-cache depends named no linux-image package:\n{depends}"
        ));
    };
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return skip(format!("tempdir: {e}")),
    };
    let dl = Command::new("apt-get")
        .args(["download", "-q", pkg])
        .current_dir(work.path())
        .output();
    match dl {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return skip(format!(
                "apt-get download {pkg}: {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
        Err(e) => return skip(format!("apt-get: {e}")),
    }
    let Some(deb) = std::fs::read_dir(work.path()).ok().and_then(|mut d| {
        d.find_map(|e| {
            e.ok()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        })
    }) else {
        return skip("apt-get download produced no .deb".into());
    };
    let root = work.path().join("root");
    match Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
    {
        Ok(s) if s.success() => {}
        other => return skip(format!("dpkg-deb -x: {other:?}")),
    }
    let Some(k) = find(&root.join("boot")) else {
        return skip(format!("{pkg} has no /boot/vmlinuz-*"));
    };
    if let Err(e) = std::fs::create_dir_all(&cache) {
        return skip(format!("creating {}: {e}", cache.display()));
    }
    let name = k.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let tmp = cache.join(format!(".{}.tmp", std::process::id()));
    if let Err(e) = std::fs::copy(&k, &tmp).and_then(|_| std::fs::rename(&tmp, cache.join(&name))) {
        return skip(format!("caching the kernel: {e}"));
    }
    find(&cache)
}
