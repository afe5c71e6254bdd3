//! Console input: bytes written into a FIFO (`VmSpec::serial_input`) reach the guest's COM1,
//! as keystrokes on its serial console (`bulkhead console`).
//!
//! The FIFO is opened read-write before confinement (so it never reads end-of-file when the
//! last writer goes) and pumped by one thread under the device-worker seccomp filter: at most
//! [`CHUNK`] bytes are read at a time and fed into the 16550's receive FIFO as it drains; the
//! thread waits while the guest does not read, so what the host writes is bounded by the
//! pipe's capacity and never buffered without limit here.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::legacy::{SerialDevice, StopSignal};

/// Bytes read from the FIFO at a time (the 16550's receive FIFO holds 64).
pub const CHUNK: usize = 64;
/// How long the pump waits for the guest to drain the receive FIFO before it tries again.
const DRAIN_WAIT: Duration = Duration::from_millis(5);

/// Opens the console input FIFO; refuses anything that is not a FIFO.
pub fn open_input(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.file_type().is_fifo() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a FIFO", path.display()),
        ));
    }
    Ok(f)
}

/// Moves bytes from `input` into `serial` until `stop` is signalled.
pub fn pump(mut input: File, serial: Arc<Mutex<SerialDevice>>, stop: Arc<StopSignal>) {
    let mut buf = [0u8; CHUNK];
    loop {
        let n = {
            // SAFETY: the stop eventfd lives as long as `stop`, which this function holds.
            let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.event().as_raw_fd()) };
            let mut fds = [
                PollFd::new(input.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_fd, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "console input: poll failed; console input ends");
                    return;
                }
            }
            if stop.requested() {
                return;
            }
            match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "console input: read failed; console input ends");
                    return;
                }
            }
        };
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(pending);
            pending = &pending[taken..];
            if !pending.is_empty() {
                if stop.requested() {
                    return;
                }
                std::thread::sleep(DRAIN_WAIT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fifo_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        assert!(open_input(&plain).is_err());
        let link = dir.path().join("link");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(open_input(&link).is_err(), "a symlink is not followed");
        assert!(open_input(&fifo).is_ok());
    }
}
