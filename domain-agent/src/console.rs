//! The serial console of a VM domain: init keeps a root login shell on it, so dom0's
//! `bulkhead console NAME` (bytes into the VMM's COM1) reaches a shell. dom0 is trusted and
//! can already run anything as root in a domain; the console adds no power, it adds a way in
//! when the agent is broken.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

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

/// Makes the console that init's standard output and error are (the kernel's `/dev/console`,
/// the VM's serial port) non-blocking, for init and every helper that inherits it (the agent,
/// the gui-agent): their log lines go to the console, and a console that stops taking output
/// (a UART interrupt lost, nobody draining it) must never stop the agent answering dom0. A
/// line the full console cannot take is dropped (tracing ignores the write error). The console
/// shell opens the tty itself and keeps blocking writes.
pub fn never_block_on_console() -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}
