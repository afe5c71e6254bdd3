//! The console log: at most `max` bytes in `<path>`, then one rotation to `<path>.old`, and at
//! most [`CONSOLE_BURST`] bytes at once, then [`CONSOLE_RATE`] bytes per second.
//!
//! The rate limit is there because the guest writes the console without pause if it likes:
//! every byte is a write(2) (and dirty page cache) on the host, forever, even though the size
//! is bounded. Bytes over the limit are dropped; when output resumes, one line says how many:
//! `[bulkhead-vmm: N bytes of console output dropped: rate limit]`.
//!
//! Both files are opened up front and rotation works on the open descriptors (copy the full log
//! into `.old`, truncate the log), so it keeps working after the confined VMM has pivoted into
//! an empty root where neither path exists.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bulkhead_virtio::ratelimit::TokenBucket;

/// Console bytes the guest may write at once: a whole verbose Linux boot log (typically
/// 30-60 KiB) or a kernel oops with its backtrace goes through unthrottled.
pub const CONSOLE_BURST: u64 = 64 * 1024;
/// Sustained console bytes per second after the burst: more than a 115200-baud serial line
/// (11.25 KiB/s) less a margin, far more than a person reads, and a bound on the host work a
/// flooding guest causes (at most 8192 one-byte writes and 8 KiB of page cache a second).
pub const CONSOLE_RATE: u64 = 8 * 1024;
/// Once bytes were dropped, output resumes only when this much budget came back (half a
/// second at [`CONSOLE_RATE`]), so a sustained flood gives one marker line per 4 KiB of
/// output instead of one per byte.
pub const CONSOLE_RESUME: u64 = 4 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("opening serial log {path}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct BoundedLog {
    log: File,
    old: File,
    written: u64,
    max: u64,
    failed: bool,
    bucket: TokenBucket,
    /// Bytes dropped by the rate limit since output last went through.
    dropped: u64,
    /// Whether the last byte written was a newline (or nothing was written yet).
    at_line_start: bool,
}

/// The line written when output resumes after `dropped` bytes were dropped.
pub fn dropped_marker(dropped: u64) -> String {
    format!("[bulkhead-vmm: {dropped} bytes of console output dropped: rate limit]\n")
}

/// `<path>.old`
pub fn old_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".old");
    PathBuf::from(s)
}

impl BoundedLog {
    /// Opens (creating, appending) the log and its `.old` companion. Files are created 0600.
    pub fn open(path: &Path, max: u64) -> Result<Self, LogError> {
        let open = |p: &Path, append: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .append(append)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(p)
                .map_err(|source| LogError {
                    path: p.into(),
                    source,
                })
        };
        let log = open(path, true)?;
        let old = open(&old_path(path), false)?;
        let written = log
            .metadata()
            .map_err(|source| LogError {
                path: path.into(),
                source,
            })?
            .len();
        Ok(BoundedLog {
            log,
            old,
            written,
            max: max.max(1),
            failed: false,
            bucket: TokenBucket::new(CONSOLE_BURST, CONSOLE_RATE),
            dropped: 0,
            at_line_start: true,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.old.set_len(0)?;
        let mut buf = vec![0u8; 8 * 1024];
        let mut off = 0u64;
        loop {
            let n = self.log.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            self.old.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        self.log.set_len(0)?;
        self.written = 0;
        Ok(())
    }

    fn write_bounded(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        if let Some(&last) = buf.last() {
            self.at_line_start = last == b'\n';
        }
        while !buf.is_empty() {
            if self.written >= self.max {
                self.rotate()?;
            }
            let room = (self.max - self.written).min(buf.len() as u64) as usize;
            self.log.write_all(&buf[..room])?;
            self.written += room as u64;
            buf = &buf[room..];
        }
        Ok(())
    }

    /// Writes what the rate limit lets through of `buf` at `now`; the rest is dropped and
    /// counted (see the module docs).
    fn write_limited(&mut self, buf: &[u8], now: Instant) -> std::io::Result<()> {
        let len = buf.len() as u64;
        if self.dropped > 0 {
            let mut marker = dropped_marker(self.dropped);
            if !self.at_line_start {
                marker.insert(0, '\n');
            }
            let need = CONSOLE_RESUME.max(marker.len() as u64 + 1);
            if self.bucket.available_at(now) < need {
                self.dropped = self.dropped.saturating_add(len);
                return Ok(());
            }
            // The marker counts against the budget too: what reaches the file is bounded.
            self.bucket.take_at(marker.len() as u64, now);
            self.dropped = 0;
            self.write_bounded(marker.as_bytes())?;
        }
        let n = self.bucket.take_at(len, now);
        self.dropped = len - n;
        // n <= buf.len(), so the cast and the slice are in range.
        self.write_bounded(&buf[..n as usize])
    }

    /// [`Write::write`] at the time `now` (the rate limit's clock).
    pub fn write_at(&mut self, buf: &[u8], now: Instant) {
        if !self.failed {
            if let Err(e) = self.write_limited(buf, now) {
                tracing::error!("serial log: {e}; console output is dropped from now on");
                self.failed = true;
            }
        }
    }

    /// Bytes dropped by the rate limit and not yet reported in the log.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Write for BoundedLog {
    /// Never fails towards the guest: a host-side error is logged once and output is dropped,
    /// and output over the rate limit is dropped.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_at(buf, Instant::now());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_once_to_old() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = BoundedLog::open(&p, 10).unwrap();
        l.write_all(b"0123456789").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"0123456789");
        l.write_all(b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
        assert_eq!(std::fs::read(old_path(&p)).unwrap(), b"0123456789");
        l.write_all(b"defghijklmnop").unwrap();
        // "abcdefghij" rotated, "klmnop" current; only one generation kept.
        assert_eq!(std::fs::read(&p).unwrap(), b"klmnop");
        assert_eq!(std::fs::read(old_path(&p)).unwrap(), b"abcdefghij");
    }

    #[test]
    fn reopening_continues_the_count() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        BoundedLog::open(&p, 4).unwrap().write_all(b"abc").unwrap();
        let mut l = BoundedLog::open(&p, 4).unwrap();
        l.write_all(b"de").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"e");
        assert_eq!(std::fs::read(old_path(&p)).unwrap(), b"abcd");
    }

    #[test]
    fn a_console_flood_is_cut_at_the_burst() {
        // One write of 1 MiB at one instant: only the burst reaches the file.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = BoundedLog::open(&p, 4 << 20).unwrap();
        l.write_all(&vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 64 * 1024);
    }

    #[test]
    fn output_resumes_with_one_marker_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = BoundedLog::open(&p, 4 << 20).unwrap();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let burst = CONSOLE_BURST as usize;
        l.write_at(&vec![b'a'; burst + 100], t0);
        assert_eq!(l.dropped(), 100);
        // A byte at a time as the 16550 writes, a byte every millisecond for 400 ms: the
        // budget comes back at 8 bytes/ms but stays under CONSOLE_RESUME, so all is dropped.
        for i in 1..=400 {
            l.write_at(b"b", ms(i));
        }
        assert_eq!(l.dropped(), 500);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), burst as u64);
        // At 600 ms the budget passed CONSOLE_RESUME: the marker, on its own line, then output.
        l.write_at(b"hello\n", ms(600));
        assert_eq!(l.dropped(), 0);
        let text = std::fs::read(&p).unwrap();
        let tail = String::from_utf8_lossy(&text[burst..]);
        assert_eq!(
            tail,
            "\n[bulkhead-vmm: 500 bytes of console output dropped: rate limit]\nhello\n"
        );
        // No further marker while under the limit.
        l.write_at(b"more\n", ms(601));
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .ends_with("hello\nmore\n"));
    }

    #[test]
    fn a_sustained_flood_writes_at_most_the_burst_plus_the_rate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let mut l = BoundedLog::open(&p, 64 << 20).unwrap();
        let t0 = Instant::now();
        // 100 s of a guest writing 64 bytes every 10 µs (6.4 MB/s).
        for step in 0..10_000_000u64 {
            l.write_at(
                &[b'z'; 64],
                t0 + std::time::Duration::from_micros(step * 10),
            );
        }
        let written = std::fs::metadata(&p).unwrap().len();
        let bound = CONSOLE_BURST + 100 * CONSOLE_RATE;
        assert!(written <= bound, "{written} > {bound}");
        assert!(written > bound - CONSOLE_RESUME, "{written}");
        let text = std::fs::read_to_string(&p).unwrap();
        let markers = text.matches("dropped: rate limit]").count() as u64;
        // One marker per resumption (about every CONSOLE_RESUME bytes), not one per write.
        assert!(
            markers <= 100 * CONSOLE_RATE / CONSOLE_RESUME + 1,
            "{markers} markers"
        );
    }

    #[test]
    fn symlinked_log_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(BoundedLog::open(&p, 4).is_err());
    }
}
