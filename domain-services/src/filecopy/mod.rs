//! File copy between domains (service `bulkhead.Filecopy`).
//!
//! # Stream format (sender -> receiver, on the service's stdin)
//!
//! All integers are little-endian.
//!
//! ```text
//! magic      8 bytes  "BHFCOPY1"
//! entry*     one per file, directory or symlink, depth first (a directory before its contents)
//! end        an entry header with kind 0 and every other field 0
//! ```
//!
//! Entry header (27 bytes, then the name):
//!
//! ```text
//! kind       u8   1 directory, 2 regular file, 3 symlink (0 = end marker)
//! mode       u32  permission bits (<= 0o7777; the receiver keeps only 0o777, see below)
//! mtime      i64  seconds since the epoch
//! mtime_ns   u32  < 1_000_000_000
//! size       u64  file: content length; symlink: target length; directory: 0
//! name_len   u16  then name_len bytes: the entry's path in the transfer, components joined by '/'
//! data       `size` bytes (file content or symlink target)
//! ```
//!
//! Rules the receiver enforces ([`Limits`] has the configurable numbers):
//! - every path component passes [`crate::names::check_component`] (no empty, `.`, `..`,
//!   control characters, invalid UTF-8...), the path has at most `max_depth` components and
//!   `max_path_bytes` bytes;
//! - an entry's parent is the top of the transfer or a directory sent earlier on the current
//!   depth-first branch (so the receiver holds only one directory fd per level and never
//!   walks a path string);
//! - symlinks follow [`crate::names::check_symlink_target`] (relative, leading `..` only,
//!   never above the top directory of the copy; top-level symlinks are refused);
//! - no other kinds exist: hard links are sent as separate files, devices, fifos and sockets
//!   cannot be expressed (the sender refuses them);
//! - entry count, total bytes and bytes per file are limited;
//! - after the end marker the stream must end (EOF).
//!
//! # Receiver's answer (receiver -> sender, on the service's stdout), one line
//!
//! ```text
//! ok files=F dirs=D symlinks=S bytes=B\n
//! error MESSAGE\n
//! ```
//!
//! The sender checks the counts against what it sent; `bulkhead-move` deletes its sources only
//! after a matching `ok`.
//!
//! # Where things land
//! Under `~/Incoming/<source>/`, created if missing. Everything is created relative to
//! directory fds with `O_NOFOLLOW` and `O_EXCL` (`mkdirat`, `openat`, `symlinkat`): nothing
//! existing is ever opened for writing or replaced. A top-level name that already exists is
//! renamed: `name (1).ext`, `name (2).ext`, ... (up to 999); an existing name below a new
//! top-level directory can only come from a duplicate in the stream and is an error.
//! Files are written with mode 0600, then get `(mode & 0o777) | 0o600`; directories are
//! made 0700 and get `(mode & 0o777) | 0o700` once their contents are written. No setuid,
//! setgid or sticky bit is ever set. Every file is fsynced, every directory too when it is
//! finished, and only then is `ok` sent.
//!
//! On any violation (bad stream, limit, full disk...) the receiver stops reading, removes
//! the file it was writing (a partial file is never left), keeps the entries already
//! complete, and answers `error ...` naming the entry and how many entries were kept.

mod format;
mod receive;
mod send;

pub use format::{
    EntryHeader, EntryKind, FilecopyError, Limits, StreamReader, StreamWriter, HEADER_LEN, MAGIC,
};
pub use receive::{error_answer, open_incoming, receive, ReceiveFailure, Received};
pub use send::{parse_answer, scan, send, Answer, Plan, PlanEntry, Progress, SendSummary};
