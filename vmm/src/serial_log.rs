//! The console log: at most `max` bytes in `<path>`, then one rotation to `<path>.old`.
//!
//! Both files are opened up front and rotation works on the open descriptors (copy the full log
//! into `.old`, truncate the log), so it keeps working after the confined VMM has pivoted into
//! an empty root where neither path exists.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
}

impl Write for BoundedLog {
    /// Never fails towards the guest: a host-side error is logged once and output is dropped.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.failed {
            if let Err(e) = self.write_bounded(buf) {
                tracing::error!("serial log: {e}; console output is dropped from now on");
                self.failed = true;
            }
        }
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
    fn symlinked_log_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(BoundedLog::open(&p, 4).is_err());
    }
}
