//! The serial console of a VM domain: init keeps a root login shell on it, so dom0's
//! `bulkhead console NAME` (bytes into the VMM's COM1) reaches a shell. dom0 is trusted and
//! can already run anything as root in a domain; the console adds no power, it adds a way in
//! when the agent is broken.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::SigSet;
use nix::unistd::Pid;

/// The serial console device in a VM domain.
pub const SERIAL_CONSOLE: &str = "/dev/ttyS0";

/// Starts a root login shell (bash when the template has it, else sh) on `tty`, in a session
/// of its own with `tty` as its controlling terminal. init reaps it with waitpid(-1).
pub fn spawn_console_shell(tty: &Path) -> std::io::Result<Pid> {
    let shell = ["/bin/bash", "/bin/sh"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no /bin/bash or /bin/sh")
        })?;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(tty)
    };
    let mut cmd = Command::new(shell);
    cmd.arg("-l")
        .env_clear()
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("TERM", "vt100")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .current_dir("/root")
        .stdin(Stdio::from(open()?))
        .stdout(Stdio::from(open()?))
        .stderr(Stdio::from(open()?));
    if !Path::new("/root").is_dir() {
        cmd.current_dir("/");
    }
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe calls:
    // pthread_sigmask (clears init's signalfd mask), setsid, and ioctl(TIOCSCTTY) on fd 0.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// How long the relay waits for a console that takes nothing before it starts dropping.
const CONSOLE_WAIT: Duration = Duration::from_secs(1);

/// Puts a relay between the console and everything that logs to it: init's standard output
/// and error (and so those of the agent and the gui-agent, which inherit them) become a pipe
/// that a thread of init drains into the console (the kernel's `/dev/console`, the VM's
/// serial port). The console is slow under emulation and can stop taking output altogether
/// (a UART interrupt lost, nobody draining it); writers never wait on it: while the console
/// takes nothing for [`CONSOLE_WAIT`], the relay drops what it reads and later says how many
/// bytes it dropped. The writers' end stays a blocking pipe, so no writer ever sees EAGAIN
/// (print macros panic on it). Standard input becomes /dev/null. The console shell opens the
/// tty itself and is not affected.
pub fn relay_output_to_console() -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use nix::sys::signal::{pthread_sigmask, SigmaskHow};
    let console = std::io::stderr().as_fd().try_clone_to_owned()?;
    let flags = OFlag::from_bits_truncate(fcntl(console.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        console.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    let (from, to) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let null = std::fs::File::open("/dev/null")?;
    // dup2 leaves the new descriptors inheritable: the agent and gui-agent get the pipe.
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    nix::unistd::dup2(to.as_raw_fd(), 1)?;
    nix::unistd::dup2(to.as_raw_fd(), 2)?;
    drop(to);
    // The relay thread blocks every signal: init reads SIGCHLD and SIGTERM from a signalfd,
    // and a thread that let one through would swallow it.
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let spawned = std::thread::Builder::new()
        .name("console-relay".into())
        .spawn(move || relay(std::fs::File::from(from), std::fs::File::from(console)));
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    spawned.map(drop)
}

fn relay(mut from: std::fs::File, mut console: std::fs::File) {
    use std::io::Read as _;
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        // A console that took nothing for CONSOLE_WAIT is not waited for again until it
        // takes something.
        let wait = |dropped: u64| {
            if dropped == 0 {
                CONSOLE_WAIT
            } else {
                Duration::ZERO
            }
        };
        if dropped > 0 {
            let note = format!(
                "\n[bulkhead-init: {dropped} bytes of log dropped: the console was full]\n"
            );
            if write_within(&mut console, note.as_bytes(), wait(dropped)) == note.len() {
                dropped = 0;
            }
        }
        let written = write_within(&mut console, &buf[..n], wait(dropped));
        dropped += (n - written) as u64;
    }
}

/// Writes what the non-blocking `console` takes within `wait`; returns how many bytes.
fn write_within(console: &mut std::fs::File, mut data: &[u8], wait: Duration) -> usize {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Write as _;
    let total = data.len();
    let deadline = Instant::now() + wait;
    while !data.is_empty() {
        match console.write(data) {
            Ok(0) => break,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(console.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(ms));
            }
            Err(_) => break,
        }
    }
    total - data.len()
}
