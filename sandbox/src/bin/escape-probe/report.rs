//! What every attempt shares: the [`Report`] that prints and counts each line, and the
//! small helpers for system call results and secret files.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// Files placed by the host test start with this; finding it from inside is an escape.
pub(crate) const SECRET_PREFIX: &[u8] = b"BULKHEAD-SECRET";

pub(crate) struct Report {
    pub(crate) total: usize,
    pub(crate) escaped: usize,
}

impl Report {
    pub(crate) fn line(&mut self, name: &str, blocked: bool, detail: impl AsRef<str>) {
        self.total += 1;
        let detail = detail.as_ref().replace('\n', " ");
        if blocked {
            println!("ESCAPE {name} blocked {detail}");
        } else {
            self.escaped += 1;
            println!("ESCAPE {name} ESCAPED {detail}");
        }
        let _ = std::io::stdout().flush();
    }

    /// For attempts where any failure of the call means blocked.
    pub(crate) fn call(&mut self, name: &str, r: Result<impl std::fmt::Debug, Errno>) {
        match r {
            Ok(v) => self.line(name, false, format!("call succeeded: {v:?}")),
            Err(e) => self.line(name, true, format!("{e}")),
        }
    }
}

pub(crate) fn sys(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub(crate) fn read_secret(p: &Path) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let mut f = fs::File::open(p).ok()?;
    let n = f.read(&mut buf).ok()?;
    buf.truncate(n);
    buf.starts_with(SECRET_PREFIX).then(|| {
        format!(
            "{} revealed {}",
            p.display(),
            String::from_utf8_lossy(&buf).trim()
        )
    })
}

pub(crate) fn rel(p: &Path) -> PathBuf {
    p.strip_prefix("/").unwrap_or(p).to_path_buf()
}

pub(crate) fn close_if(r: &Result<libc::c_long, Errno>) {
    if let Ok(fd) = r {
        // SAFETY: the fd was just returned by socket and is owned here.
        drop(unsafe { OwnedFd::from_raw_fd(*fd as i32) });
    }
}
