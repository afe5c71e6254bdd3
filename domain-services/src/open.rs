//! Open a file in another domain (service `bulkhead.OpenInVM`).
//!
//! # Protocol (integers little-endian)
//!
//! Client -> service (stdin), then EOF:
//! ```text
//! magic     8 bytes "BHOPEN01"
//! name_len  u16, then the file's base name (the client sends only the base name; the
//!           service sanitises it again, see `names::sanitize_component`)
//! size      u64, then `size` bytes of content (<= MAX_OPEN_BYTES)
//! ```
//! Service -> client (stdout), once the application has exited:
//! ```text
//! 0                          unchanged (or emptied: an empty result is never sent back)
//! 1, size u64, content       edited: the client replaces the original with it
//! 2, len u16, message        error (printable text)
//! ```
//! The service keeps the file in a private temporary directory (0700, removed afterwards),
//! opens it with the domain's default application for its MIME type ([`crate::xdg`]), and
//! waits for that process to exit (an application that hands the file to an already running
//! instance and exits at once ends the edit early, as in Qubes).
//! The client writes an edited copy back atomically: a temporary file in the original's
//! directory, fsynced, given exactly the original's mode (the protocol carries no mode: no
//! setuid, setgid or exec bit of the copy in the other domain can arrive), renamed over the
//! (symlink-resolved) original, then the directory is fsynced. An edited copy larger than the
//! caller's `max_edited_bytes` ([`crate::config::OpenLimits`], 1 GiB by default) is refused
//! before anything is written; on any error the temporary file is removed and the original
//! stays as it was.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::names;
use crate::xdg::{self, XdgDirs, XdgError};

/// First bytes of a request.
pub const OPEN_MAGIC: &[u8; 8] = b"BHOPEN01";
pub use crate::config::MAX_OPEN_BYTES;
/// Longest raw name accepted in a request.
pub const MAX_NAME_FIELD: usize = 4096;

const CODE_UNCHANGED: u8 = 0;
const CODE_EDITED: u8 = 1;
const CODE_ERROR: u8 = 2;

/// Errors of open-in-vm, both sides.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Local {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("{what} is {size} bytes; at most {MAX_OPEN_BYTES} can be opened elsewhere")]
    TooBig { what: String, size: u64 },
    #[error("the edited copy of {original} is {size} bytes, more than the {max} bytes accepted back (max_edited_bytes in {}); the original is unchanged", crate::config::open_limits_path().display())]
    EditTooBig {
        original: String,
        size: u64,
        max: u64,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("malformed message from the other domain: {0}")]
    Protocol(String),
    #[error("the other domain ended the transfer early ({0})")]
    Truncated(&'static str),
    #[error("the other domain reported: {0}")]
    Remote(String),
    #[error(transparent)]
    Xdg(#[from] XdgError),
    #[error("cannot start {program}: {source}")]
    Launch {
        program: String,
        #[source]
        source: io::Error,
    },
}

fn local(path: &Path) -> impl Fn(io::Error) -> OpenError + '_ {
    move |source| OpenError::Local {
        path: path.display().to_string(),
        source,
    }
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), OpenError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            OpenError::Truncated(what)
        } else {
            OpenError::Protocol(format!("reading {what}: {e}"))
        }
    })
}

/// Copies exactly `size` bytes from `r` to `w`, hashing them.
fn copy_exact<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    size: u64,
    what: &'static str,
    out_name: &Path,
) -> Result<[u8; 32], OpenError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => return Err(OpenError::Truncated(what)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OpenError::Protocol(format!("reading {what}: {e}"))),
        };
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(local(out_name))?;
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

/// What happened to an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    Unchanged,
    /// The edited copy replaced the original (bytes).
    Replaced(u64),
}

/// Client side: sends `file` on `to`, waits for the answer on `from`, writes an edited copy
/// back over the original, within the limits of the caller's configuration
/// ([`crate::config::open_limits_path`]; an invalid file refuses the open).
pub fn client<W: Write, R: Read>(file: &Path, to: W, from: R) -> Result<Opened, OpenError> {
    let limits = crate::config::load_open_limits(&crate::config::open_limits_path())?;
    client_with_limits(file, to, from, &limits)
}

/// [`client`] with explicit limits.
pub fn client_with_limits<W: Write, R: Read>(
    file: &Path,
    to: W,
    mut from: R,
    limits: &crate::config::OpenLimits,
) -> Result<Opened, OpenError> {
    let real = fs::canonicalize(file).map_err(local(file))?;
    let mut f = File::open(&real).map_err(local(&real))?;
    let meta = f.metadata().map_err(local(&real))?;
    if !meta.is_file() {
        return Err(OpenError::NotAFile(real.display().to_string()));
    }
    if meta.len() > MAX_OPEN_BYTES {
        return Err(OpenError::TooBig {
            what: real.display().to_string(),
            size: meta.len(),
        });
    }
    let name = names::sanitize_component(real.file_name().map(|n| n.as_bytes()).unwrap_or(b"file"));
    let mut w = io::BufWriter::new(to);
    let sent = (|| -> io::Result<()> {
        w.write_all(OPEN_MAGIC)?;
        w.write_all(&(name.len() as u16).to_le_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&meta.len().to_le_bytes())?;
        let n = io::copy(&mut (&mut f).take(meta.len()), &mut w)?;
        if n != meta.len() {
            return Err(io::Error::other("the file shrank while being sent"));
        }
        w.flush()
    })();
    drop(w);
    // On a send error the service may still have answered why.
    let sent_ok = sent.is_ok();
    match (
        sent,
        read_answer(&mut from, &real, sent_ok, limits.max_edited_bytes),
    ) {
        (Ok(()), r) => r,
        (Err(_), Err(remote @ OpenError::Remote(_))) => Err(remote),
        (Err(e), _) => Err(OpenError::Local {
            path: real.display().to_string(),
            source: e,
        }),
    }
}

/// Reads the service's answer; an edited copy replaces `original` (only when `accept_edit`,
/// i.e. the whole file was sent, and only if it is at most `max_edited` bytes).
pub fn read_answer<R: Read>(
    mut from: R,
    original: &Path,
    accept_edit: bool,
    max_edited: u64,
) -> Result<Opened, OpenError> {
    let mut code = [0u8; 1];
    read_exact_or(&mut from, &mut code, "the answer")?;
    match code[0] {
        CODE_UNCHANGED => Ok(Opened::Unchanged),
        CODE_EDITED if !accept_edit => Err(OpenError::Protocol(
            "an edited file for a file that was not sent completely".into(),
        )),
        CODE_EDITED => {
            let mut s = [0u8; 8];
            read_exact_or(&mut from, &mut s, "the edited file's size")?;
            let size = u64::from_le_bytes(s);
            if size == 0 {
                return Err(OpenError::Protocol("an empty edited file".into()));
            }
            if size > MAX_OPEN_BYTES {
                return Err(OpenError::TooBig {
                    what: "the edited file".into(),
                    size,
                });
            }
            if size > max_edited {
                tracing::warn!(
                    original = %original.display(),
                    size,
                    max_edited,
                    "refusing an edited copy over the limit"
                );
                return Err(OpenError::EditTooBig {
                    original: original.display().to_string(),
                    size,
                    max: max_edited,
                });
            }
            write_back(original, &mut from, size)?;
            Ok(Opened::Replaced(size))
        }
        CODE_ERROR => {
            let mut l = [0u8; 2];
            read_exact_or(&mut from, &mut l, "the error message")?;
            let mut msg = vec![0u8; usize::from(u16::from_le_bytes(l))];
            read_exact_or(&mut from, &mut msg, "the error message")?;
            let text: String = String::from_utf8_lossy(&msg)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(OpenError::Remote(text))
        }
        c => Err(OpenError::Protocol(format!("answer code {c}"))),
    }
}

/// Replaces `original` with `size` bytes from `r`, atomically.
fn write_back<R: Read>(original: &Path, r: &mut R, size: u64) -> Result<(), OpenError> {
    let dir = original.parent().unwrap_or(Path::new("."));
    let base = original
        .file_name()
        .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned())
        .unwrap_or_default();
    // The original's mode, exactly; nothing about the copy's mode crosses the boundary.
    let mode = fs::metadata(original)
        .map_err(local(original))?
        .permissions()
        .mode()
        & 0o7777;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .suffix(".bulkhead-edit")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(local(dir))?;
    let tmp_path = tmp.path().to_owned();
    copy_exact(r, tmp.as_file_mut(), size, "the edited file", &tmp_path)?;
    tmp.as_file().sync_all().map_err(local(&tmp_path))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(local(&tmp_path))?;
    tmp.persist(original).map_err(|e| OpenError::Local {
        path: original.display().to_string(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(local(dir))?;
    Ok(())
}

/// A received request: the file written in a private directory.
pub struct Incoming {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub name: String,
    pub digest: [u8; 32],
    pub head: Vec<u8>,
}

/// Service side, part 1: reads the request into a new private directory under `tmp_base`.
pub fn receive_request<R: Read>(mut r: R, tmp_base: &Path) -> Result<Incoming, OpenError> {
    let mut m = [0u8; 8];
    read_exact_or(&mut r, &mut m, "the request header")?;
    if &m != OPEN_MAGIC {
        return Err(OpenError::Protocol("bad magic".into()));
    }
    let mut l = [0u8; 2];
    read_exact_or(&mut r, &mut l, "the file name")?;
    let len = usize::from(u16::from_le_bytes(l));
    if len > MAX_NAME_FIELD {
        return Err(OpenError::Protocol(format!("name of {len} bytes")));
    }
    let mut raw = vec![0u8; len];
    read_exact_or(&mut r, &mut raw, "the file name")?;
    let name = names::sanitize_component(&raw);
    let mut s = [0u8; 8];
    read_exact_or(&mut r, &mut s, "the file size")?;
    let size = u64::from_le_bytes(s);
    if size > MAX_OPEN_BYTES {
        return Err(OpenError::TooBig {
            what: "the file".into(),
            size,
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("bulkhead-open-")
        .tempdir_in(tmp_base)
        .map_err(local(tmp_base))?;
    let path = dir.path().join(&name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(local(&path))?;
    let digest = copy_exact(&mut r, &mut f, size, "the file", &path)?;
    drop(f);
    let mut head = vec![0u8; 4096];
    let n = File::open(&path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(local(&path))?;
    head.truncate(n);
    Ok(Incoming {
        dir,
        path,
        name,
        digest,
        head,
    })
}

/// Service side, part 2: the argv that opens the file with the default application.
pub fn application_for(dirs: &XdgDirs, inc: &Incoming) -> Result<Vec<String>, OpenError> {
    let mime = xdg::mime_type(&inc.name, &inc.head);
    let app = xdg::default_application(dirs, &mime)?;
    tracing::info!("opening {} ({mime}) with {}", inc.name, app.id);
    Ok(xdg::expand_exec(&app, &inc.path.to_string_lossy())?)
}

/// Service side, part 3: runs the application and waits for it.
pub fn run_application(argv: &[String], cwd: &Path) -> Result<(), OpenError> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| OpenError::Protocol("empty command".into()))?;
    let status = Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        // the service's stdout is the answer channel: the application must not write there
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|source| OpenError::Launch {
            program: prog.clone(),
            source,
        })?;
    if !status.success() {
        tracing::warn!("{prog} exited with {status}");
    }
    Ok(())
}

/// Service side, part 4: answers with the edited file, or "unchanged".
pub fn answer<W: Write>(inc: &Incoming, mut w: W) -> Result<(), OpenError> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&inc.path);
    let unchanged = |w: &mut W| -> Result<(), OpenError> {
        w.write_all(&[CODE_UNCHANGED])
            .and_then(|_| w.flush())
            .map_err(local(Path::new("the answer")))
    };
    let Ok(mut f) = opened else {
        tracing::info!("{} is gone after the application exited", inc.name);
        return unchanged(&mut w);
    };
    let meta = f.metadata().map_err(local(&inc.path))?;
    if !meta.is_file() || meta.len() == 0 || meta.len() > MAX_OPEN_BYTES {
        return unchanged(&mut w);
    }
    let mut h = Sha256::new();
    io::copy(&mut (&mut f).take(meta.len()), &mut h).map_err(local(&inc.path))?;
    let digest: [u8; 32] = h.finalize().into();
    if digest == inc.digest {
        return unchanged(&mut w);
    }
    let size = meta.len();
    let mut f = File::open(&inc.path).map_err(local(&inc.path))?;
    let mut out = io::BufWriter::new(&mut w);
    let to = Path::new("the answer");
    out.write_all(&[CODE_EDITED]).map_err(local(to))?;
    out.write_all(&size.to_le_bytes()).map_err(local(to))?;
    let n = io::copy(&mut (&mut f).take(size), &mut out).map_err(local(to))?;
    if n != size {
        return Err(OpenError::Protocol(
            "the edited file shrank while being sent".into(),
        ));
    }
    out.flush().map_err(local(to))
}

/// Service side: an error answer.
pub fn answer_error<W: Write>(mut w: W, err: &OpenError) -> io::Result<()> {
    let mut msg: String = err
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut cut = msg.len().min(2000);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    msg.truncate(cut);
    w.write_all(&[CODE_ERROR])?;
    w.write_all(&(msg.len() as u16).to_le_bytes())?;
    w.write_all(msg.as_bytes())?;
    w.flush()
}
