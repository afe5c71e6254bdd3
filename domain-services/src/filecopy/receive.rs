//! The receiving side: writes a checked stream under one directory fd.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::format::{EntryHeader, EntryKind, FilecopyError, Limits, StreamReader};
use crate::names;

/// Counts of what a transfer created (complete entries only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Top-level names as created (after renaming around existing names).
    pub top_names: Vec<String>,
}

impl Received {
    /// The receiver's `ok` answer line.
    pub fn answer_line(&self) -> String {
        format!(
            "ok files={} dirs={} symlinks={} bytes={}\n",
            self.files, self.dirs, self.symlinks, self.bytes
        )
    }

    /// The receiver's `error` answer line for `err`.
    pub fn error_line(&self, err: &FilecopyError) -> String {
        error_answer(&format!(
            "{err}; {} entries received completely before the error were kept, no partial file was left",
            self.files + self.dirs + self.symlinks
        ))
    }
}

/// An `error` answer line: one line of printable text, at most 2000 bytes of message.
pub fn error_answer(msg: &str) -> String {
    let mut clean: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() > 2000 {
        let mut cut = 2000;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    format!("error {clean}\n")
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Makes (if missing) and opens `name` in `parent` as a real directory (never a symlink).
fn mkdir_open(parent: BorrowedFd<'_>, name: &str, shown: &str) -> Result<OwnedFd, FilecopyError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(FilecopyError::io("creating", shown, errno_io(e))),
    }
    rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
        let why = match e {
            Errno::LOOP | Errno::NOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                "it exists and is not a directory (a symlink?); refusing to write through it",
            ),
            e => errno_io(e),
        };
        FilecopyError::io("opening", shown, why)
    })
}

/// Opens (creating as needed) `<home>/Incoming/<source>` without following a symlink at
/// `Incoming` or `<source>`. `source` must already be a checked domain name.
pub fn open_incoming(home: &Path, source: &str) -> Result<OwnedFd, FilecopyError> {
    let home_fd = rustix::fs::open(
        home,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FilecopyError::io("opening", home.display().to_string(), errno_io(e)))?;
    let inc = mkdir_open(home_fd.as_fd(), "Incoming", "~/Incoming")?;
    mkdir_open(inc.as_fd(), source, &format!("~/Incoming/{source}"))
}

/// `name (n).ext` candidates for a top-level name that exists.
fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{} ({n}){}", &name[..i], &name[i..]),
        _ => format!("{name} ({n})"),
    }
}

const MAX_RENAMES: u32 = 999;

struct Level {
    fd: OwnedFd,
    shown: String,
    mode: u32,
    mtime: (i64, u32),
}

fn times(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1.into(),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A finished directory: final mode, time, fsync.
fn finish_dir(level: Level) -> Result<(), FilecopyError> {
    rustix::fs::fchmod(&level.fd, Mode::from_raw_mode((level.mode & 0o777) | 0o700))
        .map_err(|e| FilecopyError::io("setting the mode of", &level.shown, errno_io(e)))?;
    if let Err(e) = rustix::fs::futimens(&level.fd, &times(level.mtime)) {
        tracing::debug!("cannot set the time of {}: {e}", level.shown);
    }
    rustix::fs::fsync(&level.fd)
        .map_err(|e| FilecopyError::io("syncing", &level.shown, errno_io(e)))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(n) if n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error()
    )
}

struct Receiver<'a, R> {
    reader: StreamReader<R>,
    dest: BorrowedFd<'a>,
    stack: Vec<Level>,
    got: Received,
    buf: Vec<u8>,
}

impl<R: Read> Receiver<'_, R> {
    fn pop_to(&mut self, depth: usize) -> Result<(), FilecopyError> {
        while self.stack.len() > depth {
            if let Some(level) = self.stack.pop() {
                finish_dir(level)?;
            }
        }
        Ok(())
    }

    /// Creates the entry's object under a free name: `create(parent, name)` returns
    /// `Err(Errno::EXIST)` when the name is taken; only top-level names are renamed.
    fn create_named<T>(
        &mut self,
        e: &EntryHeader,
        mut create: impl FnMut(BorrowedFd<'_>, &str) -> Result<T, Errno>,
    ) -> Result<(T, String, String), FilecopyError> {
        let depth = e.path.len() - 1;
        let parent = match depth {
            0 => self.dest,
            d => self.stack[d - 1].fd.as_fd(),
        };
        let prefix = match depth {
            0 => String::new(),
            d => format!("{}/", self.stack[d - 1].shown),
        };
        let base = &e.path[depth];
        let tries = if depth == 0 { MAX_RENAMES } else { 0 };
        for n in 0..=tries {
            let name = candidate(base, n);
            if names::check_component(name.as_bytes()).is_err() {
                break;
            }
            match create(parent, &name) {
                Ok(t) => {
                    let shown = format!("{prefix}{name}");
                    return Ok((t, name, shown));
                }
                Err(Errno::EXIST) if depth == 0 => continue,
                Err(Errno::EXIST) => {
                    return Err(FilecopyError::Duplicate {
                        name: format!("{prefix}{name}"),
                    })
                }
                Err(err) if is_no_space(&errno_io(err)) => {
                    return Err(FilecopyError::NoSpace {
                        name: format!("{prefix}{name}"),
                    })
                }
                Err(err) => {
                    return Err(FilecopyError::io(
                        "creating",
                        format!("{prefix}{name}"),
                        errno_io(err),
                    ))
                }
            }
        }
        Err(FilecopyError::io(
            "creating",
            e.display_path(),
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the name exists and no free variant `name (1..={MAX_RENAMES})` fits"),
            ),
        ))
    }

    fn parent_fd(&self, depth: usize) -> BorrowedFd<'_> {
        match depth {
            0 => self.dest,
            d => self.stack[d - 1].fd.as_fd(),
        }
    }

    fn entry(&mut self, e: EntryHeader) -> Result<(), FilecopyError> {
        let depth = e.path.len() - 1;
        self.pop_to(depth)?;
        match e.kind {
            EntryKind::Dir => {
                let ((), name, shown) = self.create_named(&e, |p, n| {
                    rustix::fs::mkdirat(p, n, Mode::from_raw_mode(0o700))
                })?;
                let fd = rustix::fs::openat(
                    self.parent_fd(depth),
                    name.as_str(),
                    DIR_FLAGS,
                    Mode::empty(),
                )
                .map_err(|err| FilecopyError::io("opening", &shown, errno_io(err)))?;
                if depth == 0 {
                    self.got.top_names.push(name);
                }
                self.stack.push(Level {
                    fd,
                    shown,
                    mode: e.mode,
                    mtime: (e.mtime, e.mtime_ns),
                });
                self.got.dirs += 1;
            }
            EntryKind::Symlink => {
                let target = e.target.clone().unwrap_or_default();
                let ((), _name, _shown) =
                    self.create_named(&e, |p, n| rustix::fs::symlinkat(target.as_str(), p, n))?;
                self.got.symlinks += 1;
            }
            EntryKind::File => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let (fd, name, shown) = self.create_named(&e, |p, n| {
                    rustix::fs::openat(p, n, flags, Mode::from_raw_mode(0o600))
                })?;
                let result = self.write_file(File::from(fd), &e, &shown);
                if let Err(err) = result {
                    // Never leave a partial file.
                    if let Err(u) = rustix::fs::unlinkat(
                        self.parent_fd(depth),
                        name.as_str(),
                        rustix::fs::AtFlags::empty(),
                    ) {
                        tracing::warn!("cannot remove the partial file {shown}: {u}");
                    }
                    return Err(err);
                }
                if depth == 0 {
                    self.got.top_names.push(name);
                }
                self.got.files += 1;
                self.got.bytes += e.size;
            }
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        mut f: File,
        e: &EntryHeader,
        shown: &str,
    ) -> Result<(), FilecopyError> {
        let io_err = |action, err: io::Error| {
            if is_no_space(&err) {
                FilecopyError::NoSpace {
                    name: shown.to_string(),
                }
            } else {
                FilecopyError::io(action, shown, err)
            }
        };
        loop {
            let n = self.reader.read_data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&self.buf[..n])
                .map_err(|err| io_err("writing", err))?;
        }
        f.sync_all().map_err(|err| io_err("syncing", err))?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode((e.mode & 0o777) | 0o600))
            .map_err(|err| io_err("setting the mode of", errno_io(err)))?;
        if let Err(err) = rustix::fs::futimens(&f, &times((e.mtime, e.mtime_ns))) {
            tracing::debug!("cannot set the time of {shown}: {err}");
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), FilecopyError> {
        self.reader.read_magic()?;
        while let Some(e) = self.reader.next_entry()? {
            self.entry(e)?;
        }
        self.pop_to(0)?;
        rustix::fs::fsync(self.dest)
            .map_err(|e| FilecopyError::io("syncing", "the incoming folder", errno_io(e)))?;
        self.reader.expect_eof()
    }
}

/// Failure of a transfer, with what was kept.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ReceiveFailure {
    pub error: FilecopyError,
    pub kept: Received,
}

/// Receives a whole stream into `dest` (the source's incoming folder). On error the file
/// being written is removed; complete entries stay and are counted in the failure.
pub fn receive<R: Read>(
    input: R,
    dest: BorrowedFd<'_>,
    limits: Limits,
) -> Result<Received, Box<ReceiveFailure>> {
    let mut r = Receiver {
        reader: StreamReader::new(input, limits),
        dest,
        stack: Vec::new(),
        got: Received::default(),
        buf: vec![0u8; 128 * 1024],
    };
    match r.run() {
        Ok(()) => Ok(r.got),
        Err(error) => {
            // close what is open (modes of finished dirs are applied; errors here are secondary)
            let _ = r.pop_to(0);
            Err(Box::new(ReceiveFailure { error, kept: r.got }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        assert_eq!(candidate("a.txt", 0), "a.txt");
        assert_eq!(candidate("a.txt", 2), "a (2).txt");
        assert_eq!(candidate(".bashrc", 1), ".bashrc (1)");
        assert_eq!(candidate("dir", 3), "dir (3)");
        assert_eq!(candidate("a.tar.gz", 1), "a.tar (1).gz");
    }
}
