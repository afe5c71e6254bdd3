//! `bulkhead console NAME`: the serial console of a running VM domain, interactively.
//!
//! Output is the domain's log (`OpenLog`: the VMM writes the console there), followed as it
//! grows, from its last lines on; on a terminal it goes through the same escape filter as
//! `bulkhead log`. Input goes to `OpenConsole`'s FIFO, which the VMM feeds to the guest's
//! COM1, where the domain's init keeps a root shell. On a terminal, stdin is in raw mode
//! (every key goes to the guest) and Ctrl-] leaves; otherwise the console ends at the end of
//! stdin, once what was written has had time to echo.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_api::Domaind1Proxy;
use nix::sys::termios::{self, SetArg, Termios};

use crate::failure::{Code, Failure};
use crate::terminal::EscapeFilter;

/// The key that leaves the console (Ctrl-], as telnet and virsh use).
const ESCAPE: u8 = 0x1d;
/// How much of the log before the end is shown when the console opens.
const BACKLOG: u64 = 2048;
/// How often a log that did not grow is looked at again.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// After the end of a non-terminal stdin: how long the output is still followed.
const LINGER: Duration = Duration::from_secs(2);

pub async fn console(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let input: OwnedFd = proxy.open_console(name).await?.into();
    let log: OwnedFd = proxy.open_log(name).await?.into();
    let input = File::from(input);
    clear_nonblock(&input).map_err(|e| fail(name, "console input", e))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("bulkhead: the serial console of '{name}'; Ctrl-] leaves\r");
    }
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let done = done.clone();
        let filter = std::io::stdout().is_terminal();
        std::thread::spawn(move || follow(File::from(log), filter, &done))
    };
    let raw = interactive
        .then(RawMode::enter)
        .transpose()
        .map_err(|e| fail(name, "the terminal", e))?;
    let sent = send_input(input, interactive);
    drop(raw);
    if !interactive {
        std::thread::sleep(LINGER);
    }
    done.store(true, Ordering::Relaxed);
    let _ = follower.join();
    match sent {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            eprintln!("bulkhead: the console of '{name}' closed (the domain stopped)");
            Ok(())
        }
        Err(e) => Err(fail(name, "console input", e)),
    }
}

fn fail(name: &str, what: &str, e: std::io::Error) -> Failure {
    Failure::new(Code::Failure, format!("console of '{name}': {what}: {e}"))
}

fn clear_nonblock(f: &File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Stdin to the console until its end (or Ctrl-] on a terminal).
fn send_input(mut to: File, interactive: bool) -> std::io::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        let (chunk, leave) = match chunk.iter().position(|&b| interactive && b == ESCAPE) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        to.write_all(chunk)?;
        if leave {
            return Ok(());
        }
    }
}

/// Prints the log from a little before its end, then what is appended, until `done`.
fn follow(mut log: File, filter: bool, done: &AtomicBool) {
    let mut stdout = std::io::stdout().lock();
    let mut escape = EscapeFilter::default();
    let mut pos = log
        .metadata()
        .map(|m| m.len().saturating_sub(BACKLOG))
        .unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filtered = Vec::new();
    let mut out = Vec::new();
    while !done.load(Ordering::Relaxed) {
        // The VMM rotates a full log by truncating it: start again from its beginning.
        if log.metadata().map(|m| m.len() < pos).unwrap_or(false) {
            pos = 0;
        }
        if log.seek(SeekFrom::Start(pos)).is_err() {
            return;
        }
        match log.read(&mut buf) {
            Ok(0) => std::thread::sleep(FOLLOW_EVERY),
            Ok(n) => {
                pos += n as u64;
                let shown: &[u8] = if filter {
                    filtered.clear();
                    escape.push(&buf[..n], &mut filtered);
                    // raw mode: the terminal does not turn \n into \r\n
                    out.clear();
                    for &b in &filtered {
                        if b == b'\n' {
                            out.push(b'\r');
                        }
                        out.push(b);
                    }
                    &out
                } else {
                    &buf[..n]
                };
                if stdout
                    .write_all(shown)
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The terminal in raw mode while it lives; restored on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(std::io::Error::from)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(std::io::Error::from)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}
