//! `bulkhead-bench vmm`: the KVM monitor's start-up time and memory overhead.
//!
//! Start-up: from spawning `bulkhead-vmm run` to the tiny guest's first instruction, which
//! writes to I/O port 0x80; the monitor reports that write on `--boot-timer-fd` (a pipe the
//! bench reads). Memory: once the guest has printed its line and halted, the monitor's total
//! resident set (/proc/PID/smaps) minus the resident part of the guest-RAM mapping. The peers,
//! measured in the same run: spawning `/bin/true` until it exits, and the resident set of a
//! freshly spawned `sleep`.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_vmm::{ConfineSpec, VmSpec};

/// Guest RAM of the measured VM; an unusual size so its mapping is easy to find in smaps.
const GUEST_MIB: u64 = 36;

/// Compiles the tiny guest (vmm/tests/guests/spin.c) with the flags the vmm tests use.
fn build_guest(out: &Path) -> Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/tests/guests");
    let st = Command::new("gcc")
        .args([
            "-m64",
            "-O2",
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
        .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(out)
        .arg(src.join("spin.c"))
        .status()
        .context("running gcc (apt-get install gcc)")?;
    if !st.success() {
        bail!("gcc failed to build the bench guest");
    }
    Ok(())
}

/// Resident kB of the whole process and of its guest-RAM mapping (Size == guest RAM).
fn smaps_rss(pid: u32, guest_bytes: u64) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = b - a == guest_bytes;
                continue;
            }
        }
        if first == "Rss:" {
            let kb: u64 = f.next().unwrap_or("0").parse().unwrap_or(0);
            total += kb;
            if in_guest {
                guest += kb;
            }
        }
    }
    Ok((total, guest))
}

fn wait_readable(fd: &OwnedFd, timeout: Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    if poll(&mut fds, ms)? == 0 {
        bail!("the guest's first instruction did not come within {timeout:?}");
    }
    Ok(())
}

struct Sample {
    first_instruction: Duration,
    overhead_kb: u64,
    total_kb: u64,
}

fn one_vmm_run(binary: &Path, spec_path: &Path, serial: &Path, confined: bool) -> Result<Sample> {
    let _ = std::fs::remove_file(serial);
    let (r, w) = nix::unistd::pipe().context("pipe")?;
    nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(["run", "--spec"])
        .arg(spec_path)
        .arg("--boot-timer-fd")
        .arg(w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    drop(w);
    let result = (|| {
        wait_readable(&r, Duration::from_secs(60))?;
        let first_instruction = start.elapsed();
        let mut b = [0u8; 1];
        std::fs::File::from(r.try_clone()?).read_exact(&mut b)?;
        // Let the guest finish its line and halt, then look at the monitor's memory.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(serial)
            .unwrap_or_default()
            .contains("SPINNING")
        {
            if Instant::now() > deadline {
                bail!("the guest did not print its line");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let pid = if confined {
            let id = child.id();
            let c = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))?;
            c.split_whitespace()
                .next()
                .context("no confined child")?
                .parse()?
        } else {
            child.id()
        };
        let (total_kb, guest_kb) = smaps_rss(pid, GUEST_MIB << 20)?;
        if guest_kb == 0 {
            bail!("no resident guest-RAM mapping of {GUEST_MIB} MiB found in /proc/{pid}/smaps");
        }
        Ok(Sample {
            first_instruction,
            overhead_kb: total_kb - guest_kb,
            total_kb,
        })
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    result
}

fn peer_spawn_true() -> Result<Duration> {
    let start = Instant::now();
    let st = Command::new("/bin/true").stdin(Stdio::null()).status()?;
    if !st.success() {
        bail!("/bin/true failed");
    }
    Ok(start.elapsed())
}

fn peer_sleep_rss() -> Result<u64> {
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait until the exec happened (comm changes from ours to sleep).
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        if Instant::now() > deadline {
            bail!("sleep did not start");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5));
    let (total, _) = smaps_rss(pid, u64::MAX)?;
    let _ = child.kill();
    let _ = child.wait();
    Ok(total)
}

fn median<T: Copy + Ord>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

pub fn run(runs: usize, binary: Option<PathBuf>, confined: bool) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("bulkhead-vmm"))
            .context("no directory for bulkhead-vmm")?,
    };
    if !binary.is_file() {
        bail!(
            "{} not found (cargo build -p bulkhead-vmm, or --vmm PATH)",
            binary.display()
        );
    }
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm is missing: the VMM benchmark needs KVM");
    }
    let dir = tempfile::tempdir()?;
    let guest = dir.path().join("spin");
    build_guest(&guest)?;
    let serial = dir.path().join("console.log");
    let spec = VmSpec {
        name: "bench".into(),
        kernel: guest,
        initramfs: None,
        cmdline: String::new(),
        memory_mib: GUEST_MIB,
        vcpus: 1,
        serial_log: serial.clone(),
        serial_log_max: 1 << 20,
        serial_input: None,
        disks: vec![],
        vsock: None,
        nets: Vec::new(),
        rng: false,
        confine: confined.then_some(ConfineSpec {
            uid: 65534,
            gid: 65534,
            cgroup: None,
        }),
    };
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;

    // One warm-up of each, then `runs` measured.
    one_vmm_run(&binary, &spec_path, &serial, confined)?;
    peer_spawn_true()?;
    let mut firsts = Vec::new();
    let mut overheads = Vec::new();
    let mut totals = Vec::new();
    let mut trues = Vec::new();
    let mut sleeps = Vec::new();
    for _ in 0..runs {
        let s = one_vmm_run(&binary, &spec_path, &serial, confined)?;
        firsts.push(s.first_instruction);
        overheads.push(s.overhead_kb);
        totals.push(s.total_kb);
        trues.push(peer_spawn_true()?);
        sleeps.push(peer_sleep_rss()?);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (first, t) = (median(&mut firsts), median(&mut trues));
    let (over, total, sleep) = (
        median(&mut overheads),
        median(&mut totals),
        median(&mut sleeps),
    );
    let mode = if confined { "confined" } else { "unconfined" };
    println!(
        "bulkhead-vmm ({mode}, {}, {runs} runs, medians):",
        binary.display()
    );
    println!(
        "  process start to guest's first instruction: {:.2} ms   | peer: spawn /bin/true to exit {:.2} ms | ratio {:.1} (target < 10 ms)",
        ms(first),
        ms(t),
        first.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "  resident memory beyond guest RAM: {:.2} MiB (total {:.2} MiB) | peer: a spawned `sleep` {:.2} MiB | ratio {:.1} (target < 5 MiB)",
        over as f64 / 1024.0,
        total as f64 / 1024.0,
        sleep as f64 / 1024.0,
        over as f64 / sleep.max(1) as f64
    );
    Ok(())
}
