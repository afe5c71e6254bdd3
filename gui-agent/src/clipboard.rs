//! Moving clipboard bytes through pipes without blocking the compositor: each transfer runs
//! on its own short-lived thread with a size cap and a deadline.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_wire::gui::MAX_CLIPBOARD_LEN;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use smithay::reexports::calloop::channel::Sender;
use tracing::{debug, warn};

/// Text types offered for a dom0 paste and looked for in a domain selection, best first.
pub const TEXT_MIMES: &[&str] = &[
    "text/plain;charset=utf-8",
    "text/plain",
    "UTF8_STRING",
    "STRING",
    "TEXT",
];
const DEADLINE: Duration = Duration::from_secs(2);

/// A domain selection read for dom0 (empty when too big, late or unreadable).
#[derive(Debug)]
pub struct Reply {
    pub data: Vec<u8>,
}

/// The best text type among the ones a selection offers.
pub fn pick_mime(offered: &[String]) -> Option<&'static str> {
    TEXT_MIMES
        .iter()
        .find(|m| offered.iter().any(|o| o == *m))
        .copied()
}

/// Reads a client's selection from `read` (capped, with a deadline) and hands it to the loop.
pub fn read_selection(read: OwnedFd, tx: Sender<Reply>) {
    let spawned = std::thread::Builder::new()
        .name("clipboard-read".into())
        .spawn(move || {
            let data = match read_capped(read) {
                Ok(d) => d,
                Err(why) => {
                    warn!(%why, "domain clipboard not forwarded");
                    Vec::new()
                }
            };
            let _ = tx.send(Reply { data });
        });
    if let Err(e) = spawned {
        warn!(error = %e, "clipboard reader thread");
    }
}

fn read_capped(read: OwnedFd) -> Result<Vec<u8>, String> {
    let start = Instant::now();
    let mut file = std::fs::File::from(read);
    let mut data = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err("selection owner too slow".into());
        }
        let ms = PollTimeout::try_from(left.as_millis() as i32).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&file),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, ms) {
            Ok(0) => return Err("selection owner too slow".into()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
        match file.read(&mut chunk) {
            Ok(0) => return Ok(data),
            Ok(n) => {
                data.extend_from_slice(&chunk[..n]);
                if data.len() > MAX_CLIPBOARD_LEN {
                    return Err(format!("selection over {MAX_CLIPBOARD_LEN} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Writes dom0-pasted bytes to a client that asked for the selection.
pub fn write_selection(fd: OwnedFd, data: Arc<Vec<u8>>) {
    let spawned = std::thread::Builder::new()
        .name("clipboard-write".into())
        .spawn(move || {
            let mut file = std::fs::File::from(fd);
            if let Err(e) = file.write_all(&data) {
                debug!(error = %e, "client stopped reading the pasted selection");
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "clipboard writer thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_choice() {
        let offered = vec![
            "image/png".to_string(),
            "text/plain".to_string(),
            "UTF8_STRING".to_string(),
        ];
        assert_eq!(pick_mime(&offered), Some("text/plain"));
        assert_eq!(pick_mime(&["image/png".to_string()]), None);
    }

    #[test]
    fn capped_read() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = std::thread::spawn(move || {
            let mut f = std::fs::File::from(w);
            let _ = f.write_all(&vec![b'a'; MAX_CLIPBOARD_LEN + 10]);
        });
        assert!(read_capped(r).is_err());
        t.join().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        std::fs::File::from(w).write_all(b"hi").unwrap();
        assert_eq!(read_capped(r).unwrap(), b"hi");
    }
}
