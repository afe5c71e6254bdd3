//! Encoding and checked decoding of the copy stream (see the module docs).

use std::io::{self, Read, Write};

use serde::Deserialize;

use crate::names::{self, NameError, Shown, SymlinkError};

/// First bytes of every copy stream.
pub const MAGIC: &[u8; 8] = b"BHFCOPY1";
/// Fixed part of an entry header.
pub const HEADER_LEN: usize = 27;

/// Receiver limits. Loaded from TOML (every key optional, defaults below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Entries (files + directories + symlinks) in one transfer.
    pub max_entries: u64,
    /// Sum of file sizes in one transfer.
    pub max_total_bytes: u64,
    /// Size of one file.
    pub max_file_bytes: u64,
    /// Components in one path (`a/b/c` is 3). Capped at [`Limits::DEPTH_CAP`].
    pub max_depth: usize,
    /// Bytes of one path. Capped at [`Limits::PATH_CAP`].
    pub max_path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 100_000,
            max_total_bytes: 16 << 30,
            max_file_bytes: 16 << 30,
            max_depth: 32,
            max_path_bytes: 4096,
        }
    }
}

impl Limits {
    /// Hard cap on `max_depth` (one open directory fd per level).
    pub const DEPTH_CAP: usize = 256;
    /// Hard cap on `max_path_bytes` (the name length field is a u16, PATH_MAX is 4096).
    pub const PATH_CAP: usize = 4096;

    /// The limits with the hard caps applied.
    pub fn capped(self) -> Limits {
        Limits {
            max_depth: self.max_depth.clamp(1, Self::DEPTH_CAP),
            max_path_bytes: self.max_path_bytes.clamp(1, Self::PATH_CAP),
            ..self
        }
    }
}

/// Entry kinds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::Dir => 1,
            EntryKind::File => 2,
            EntryKind::Symlink => 3,
        }
    }
}

/// A decoded and checked entry header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub size: u64,
    /// Checked path components.
    pub path: Vec<String>,
    /// Symlink target (checked), for symlinks only.
    pub target: Option<String>,
}

impl EntryHeader {
    /// The path as sent, components joined by '/'.
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// Everything that can go wrong with a copy.
#[derive(Debug, thiserror::Error)]
pub enum FilecopyError {
    #[error("not a copy stream (bad magic); is the sender a Bulkhead domain?")]
    BadMagic,
    #[error("the stream ended in the middle of {0}")]
    Truncated(String),
    #[error("unknown entry kind {0}")]
    BadKind(u8),
    #[error("malformed entry header: {0}")]
    BadHeader(String),
    #[error("refused name {name}: {reason}")]
    BadName { name: String, reason: NameError },
    #[error("refused symlink {name} -> {target}: {reason}")]
    BadSymlink {
        name: String,
        target: String,
        reason: SymlinkError,
    },
    #[error("{name}: its directory was not sent before it (entries must come depth first)")]
    NotInTree { name: String },
    #[error("limit exceeded: {what} (limit {limit}, got {got})")]
    Limit {
        what: &'static str,
        limit: u64,
        got: u64,
    },
    #[error("data after the end marker")]
    TrailingData,
    #[error("{name}: already exists (duplicate entry in the stream)")]
    Duplicate { name: String },
    #[error("no space left on the receiving domain's disk while writing {name}")]
    NoSpace { name: String },
    #[error("{action} {name}: {source}")]
    Io {
        action: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {path}: {reason}")]
    Unsendable { path: String, reason: String },
    #[error("the receiver refused the copy: {0}")]
    Remote(String),
    #[error("the receiver's answer is malformed: {0}")]
    BadAnswer(String),
}

impl FilecopyError {
    pub(crate) fn io(action: &'static str, name: impl Into<String>, source: io::Error) -> Self {
        FilecopyError::Io {
            action,
            name: name.into(),
            source,
        }
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), FilecopyError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FilecopyError::Truncated(what.to_string())
        } else {
            FilecopyError::io("reading", what.to_string(), e)
        }
    })
}

/// Checked decoder of a copy stream.
///
/// Use: [`StreamReader::read_magic`], then [`StreamReader::next_entry`] until `None`; after a
/// file entry, [`StreamReader::read_data`] until it returns 0; finally
/// [`StreamReader::expect_eof`]. The reader tracks the depth-first branch (one name per
/// level), counts against the limits and never allocates more than a path or a symlink
/// target at a time.
pub struct StreamReader<R> {
    r: R,
    limits: Limits,
    entries: u64,
    total_bytes: u64,
    /// Directories of the current branch, from the top of the transfer.
    branch: Vec<String>,
    /// Bytes of the current file still to read.
    remaining: u64,
    current: String,
    ended: bool,
}

impl<R: Read> StreamReader<R> {
    pub fn new(r: R, limits: Limits) -> Self {
        StreamReader {
            r,
            limits: limits.capped(),
            entries: 0,
            total_bytes: 0,
            branch: Vec::new(),
            remaining: 0,
            current: String::new(),
            ended: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks the magic.
    pub fn read_magic(&mut self) -> Result<(), FilecopyError> {
        let mut m = [0u8; 8];
        read_full(&mut self.r, &mut m, "the stream header")?;
        if &m != MAGIC {
            return Err(FilecopyError::BadMagic);
        }
        Ok(())
    }

    /// Depth of the directory branch the next entry may go into.
    pub fn branch_depth(&self) -> usize {
        self.branch.len()
    }

    /// Next entry, `None` at the end marker. Before it, the previous file's data must have
    /// been read completely.
    pub fn next_entry(&mut self) -> Result<Option<EntryHeader>, FilecopyError> {
        if self.remaining != 0 {
            return Err(FilecopyError::BadHeader(format!(
                "{} bytes of {} not consumed",
                self.remaining, self.current
            )));
        }
        if self.ended {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut self.r, &mut h, "an entry header")?;
        let kind = h[0];
        let mode = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let mtime = i64::from_le_bytes([h[5], h[6], h[7], h[8], h[9], h[10], h[11], h[12]]);
        let mtime_ns = u32::from_le_bytes([h[13], h[14], h[15], h[16]]);
        let size = u64::from_le_bytes([h[17], h[18], h[19], h[20], h[21], h[22], h[23], h[24]]);
        let name_len = usize::from(u16::from_le_bytes([h[25], h[26]]));
        let kind = match kind {
            0 => {
                if h[1..].iter().any(|&b| b != 0) {
                    return Err(FilecopyError::BadHeader(
                        "end marker with non-zero fields".into(),
                    ));
                }
                self.ended = true;
                self.branch.clear();
                return Ok(None);
            }
            1 => EntryKind::Dir,
            2 => EntryKind::File,
            3 => EntryKind::Symlink,
            k => return Err(FilecopyError::BadKind(k)),
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(FilecopyError::Limit {
                what: "entries in one copy",
                limit: self.limits.max_entries,
                got: self.entries,
            });
        }
        if mode > 0o7777 {
            return Err(FilecopyError::BadHeader(format!("mode {mode:#o}")));
        }
        if mtime_ns >= 1_000_000_000 {
            return Err(FilecopyError::BadHeader(format!("mtime_ns {mtime_ns}")));
        }
        if name_len > self.limits.max_path_bytes {
            return Err(FilecopyError::Limit {
                what: "bytes in a path",
                limit: self.limits.max_path_bytes as u64,
                got: name_len as u64,
            });
        }
        let mut raw = vec![0u8; name_len];
        read_full(&mut self.r, &mut raw, "an entry name")?;
        let shown = Shown(&raw).to_string();
        let mut path = Vec::new();
        for comp in raw.split(|&b| b == b'/') {
            let c = names::check_component(comp).map_err(|reason| FilecopyError::BadName {
                name: shown.clone(),
                reason,
            })?;
            path.push(c.to_string());
        }
        if path.len() > self.limits.max_depth {
            return Err(FilecopyError::Limit {
                what: "components in a path",
                limit: self.limits.max_depth as u64,
                got: path.len() as u64,
            });
        }
        // The parent must be the current branch (or a prefix of it).
        let parent = &path[..path.len() - 1];
        if parent.len() > self.branch.len() || self.branch[..parent.len()] != *parent {
            return Err(FilecopyError::NotInTree { name: shown });
        }
        self.branch.truncate(parent.len());
        let mut target = None;
        match kind {
            EntryKind::Dir => {
                if size != 0 {
                    return Err(FilecopyError::BadHeader(format!(
                        "directory {shown} with size {size}"
                    )));
                }
                self.branch.push(path[path.len() - 1].clone());
            }
            EntryKind::File => {
                if size > self.limits.max_file_bytes {
                    return Err(FilecopyError::Limit {
                        what: "bytes in one file",
                        limit: self.limits.max_file_bytes,
                        got: size,
                    });
                }
                let total = self.total_bytes.saturating_add(size);
                if total > self.limits.max_total_bytes {
                    return Err(FilecopyError::Limit {
                        what: "bytes in one copy",
                        limit: self.limits.max_total_bytes,
                        got: total,
                    });
                }
                self.total_bytes = total;
                self.remaining = size;
                self.current = shown;
            }
            EntryKind::Symlink => {
                if size == 0 || size > names::MAX_SYMLINK_TARGET as u64 {
                    return Err(FilecopyError::BadSymlink {
                        name: shown,
                        target: String::new(),
                        reason: if size == 0 {
                            SymlinkError::Empty
                        } else {
                            SymlinkError::TooLong(usize::try_from(size).unwrap_or(usize::MAX))
                        },
                    });
                }
                // size <= 4095 checked above
                let mut t = vec![0u8; size as usize];
                read_full(&mut self.r, &mut t, "a symlink target")?;
                let checked = names::check_symlink_target(path.len(), &t).map_err(|reason| {
                    FilecopyError::BadSymlink {
                        name: shown.clone(),
                        target: Shown(&t).to_string(),
                        reason,
                    }
                })?;
                target = Some(checked.to_string());
            }
        }
        Ok(Some(EntryHeader {
            kind,
            mode,
            mtime,
            mtime_ns,
            size,
            path,
            target,
        }))
    }

    /// Reads up to `buf.len()` bytes of the current file's content; 0 when it is complete.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, FilecopyError> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = loop {
            match self.r.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FilecopyError::io("reading", self.current.clone(), e)),
            }
        };
        if n == 0 {
            return Err(FilecopyError::Truncated(format!(
                "the content of {} ({} bytes missing)",
                self.current, self.remaining
            )));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// After the end marker: the stream must end here.
    pub fn expect_eof(&mut self) -> Result<(), FilecopyError> {
        let mut b = [0u8; 1];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(FilecopyError::TrailingData),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FilecopyError::io("reading", "the stream end", e)),
            }
        }
    }
}

/// Encoder of a copy stream (the sender's side; it checks nothing about names).
pub struct StreamWriter<W> {
    w: W,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(w: W) -> Self {
        StreamWriter { w }
    }

    pub fn magic(&mut self) -> io::Result<()> {
        self.w.write_all(MAGIC)
    }

    /// Writes a header (the caller then writes `size` bytes of data with [`Self::data`]).
    pub fn header(
        &mut self,
        kind: EntryKind,
        mode: u32,
        mtime: (i64, u32),
        size: u64,
        path: &[u8],
    ) -> io::Result<()> {
        let len = u16::try_from(path.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
        let mut h = [0u8; HEADER_LEN];
        h[0] = kind.code();
        h[1..5].copy_from_slice(&mode.to_le_bytes());
        h[5..13].copy_from_slice(&mtime.0.to_le_bytes());
        h[13..17].copy_from_slice(&mtime.1.to_le_bytes());
        h[17..25].copy_from_slice(&size.to_le_bytes());
        h[25..27].copy_from_slice(&len.to_le_bytes());
        self.w.write_all(&h)?;
        self.w.write_all(path)
    }

    pub fn data(&mut self, d: &[u8]) -> io::Result<()> {
        self.w.write_all(d)
    }

    pub fn end(&mut self) -> io::Result<()> {
        self.w.write_all(&[0u8; HEADER_LEN])?;
        self.w.flush()
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(build: impl FnOnce(&mut StreamWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut v = Vec::new();
        let mut w = StreamWriter::new(&mut v);
        w.magic().unwrap();
        build(&mut w);
        v
    }

    fn parse(bytes: &[u8], limits: Limits) -> Result<Vec<EntryHeader>, FilecopyError> {
        let mut r = StreamReader::new(bytes, limits);
        r.read_magic()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        while let Some(e) = r.next_entry()? {
            while r.read_data(&mut buf)? > 0 {}
            out.push(e);
        }
        r.expect_eof()?;
        Ok(out)
    }

    #[test]
    fn roundtrip() {
        let s = stream(|w| {
            w.header(EntryKind::Dir, 0o755, (1, 2), 0, b"top").unwrap();
            w.header(EntryKind::File, 0o644, (3, 4), 5, b"top/a")
                .unwrap();
            w.data(b"hello").unwrap();
            w.header(EntryKind::Dir, 0o700, (0, 0), 0, b"top/d")
                .unwrap();
            w.header(EntryKind::Symlink, 0o777, (0, 0), 4, b"top/d/l")
                .unwrap();
            w.data(b"../a").unwrap();
            w.header(EntryKind::File, 0o600, (0, 0), 0, b"top/e")
                .unwrap();
            w.header(EntryKind::File, 0o600, (0, 0), 1, b"f").unwrap();
            w.data(b"x").unwrap();
            w.end().unwrap();
        });
        let es = parse(&s, Limits::default()).unwrap();
        assert_eq!(es.len(), 6);
        assert_eq!(es[1].path, ["top", "a"]);
        assert_eq!(es[1].mtime, 3);
        assert_eq!(es[3].target.as_deref(), Some("../a"));
        assert_eq!(es[5].display_path(), "f");
    }

    #[test]
    fn refusals() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"NOTMAGIC".to_vec(), "bad magic"),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 1, b"../x")
                        .unwrap()
                }),
                "`.` and `..`",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"/etc/passwd")
                        .unwrap()
                }),
                "empty name",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"a/b").unwrap();
                }),
                "not sent before",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"a").unwrap();
                    w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"b").unwrap();
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"a/x").unwrap();
                }),
                "not sent before",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"a").unwrap();
                    w.header(EntryKind::Symlink, 0o777, (0, 0), 11, b"a/l")
                        .unwrap();
                    w.data(b"/etc/passwd").unwrap();
                }),
                "absolute target",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::Symlink, 0o777, (0, 0), 1, b"l")
                        .unwrap();
                    w.data(b"x").unwrap();
                }),
                "top of a copy",
            ),
            (
                stream(|w| w.header(EntryKind::File, 0o644, (0, 0), 10, b"a").unwrap()),
                "ended in the middle of the content",
            ),
            (
                stream(|w| w.data(&[2, 0, 0]).unwrap()),
                "ended in the middle of an entry header",
            ),
            (
                stream(|w| w.data(&[9; HEADER_LEN]).unwrap()),
                "unknown entry kind 9",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o104755, (0, 0), 0, b"a")
                        .unwrap()
                }),
                "mode",
            ),
            (
                stream(|w| w.header(EntryKind::Dir, 0o755, (0, 0), 3, b"a").unwrap()),
                "with size 3",
            ),
            (
                stream(|w| {
                    w.end().unwrap();
                    w.data(b"x").unwrap();
                }),
                "after the end marker",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"a\nb")
                        .unwrap()
                }),
                "control character",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"\xff")
                        .unwrap()
                }),
                "UTF-8",
            ),
            (
                stream(|w| {
                    w.header(EntryKind::File, 0o644, (0, 0), 0, b"a").unwrap();
                    w.data(&[0, 1]).unwrap();
                    w.data(&[0; HEADER_LEN - 2]).unwrap();
                }),
                "end marker with non-zero",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse(&bytes, Limits::default()).expect_err(want);
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_entries: 2,
            max_total_bytes: 10,
            max_file_bytes: 6,
            max_depth: 2,
            max_path_bytes: 8,
        };
        let many = stream(|w| {
            for n in [b"a", b"b", b"c"] {
                w.header(EntryKind::File, 0o644, (0, 0), 0, n).unwrap();
            }
        });
        assert!(parse(&many, l).unwrap_err().to_string().contains("entries"));
        let big = stream(|w| w.header(EntryKind::File, 0o644, (0, 0), 7, b"a").unwrap());
        assert!(parse(&big, l)
            .unwrap_err()
            .to_string()
            .contains("bytes in one file"));
        let total = stream(|w| {
            w.header(EntryKind::File, 0o644, (0, 0), 6, b"a").unwrap();
            w.data(b"123456").unwrap();
            w.header(EntryKind::File, 0o644, (0, 0), 6, b"b").unwrap();
        });
        assert!(parse(&total, l)
            .unwrap_err()
            .to_string()
            .contains("bytes in one copy"));
        let deep = stream(|w| {
            w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"a").unwrap();
            w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"a/b").unwrap();
            w.header(EntryKind::Dir, 0o755, (0, 0), 0, b"a/b/c")
                .unwrap();
        });
        let l3 = Limits {
            max_entries: 10,
            ..l
        };
        assert!(parse(&deep, l3)
            .unwrap_err()
            .to_string()
            .contains("components"));
        let long = stream(|w| {
            w.header(EntryKind::File, 0o644, (0, 0), 0, b"123456789")
                .unwrap()
        });
        assert!(parse(&long, l)
            .unwrap_err()
            .to_string()
            .contains("bytes in a path"));
    }
}
