//! The sending side: scan what to send (refusing what cannot be sent), write the stream,
//! read the receiver's answer.

use std::fs::{self, File, Metadata};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::format::{EntryKind, FilecopyError, Limits, StreamWriter};
use crate::names::{self, Shown};

/// One entry to send.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub kind: EntryKind,
    /// Local path.
    pub source: PathBuf,
    /// Path in the transfer ('/'-joined checked components).
    pub rel: String,
    pub mode: u32,
    pub mtime: (i64, u32),
    /// Size at scan time (files).
    pub size: u64,
    /// Top-level argument: follow a symlink given on the command line.
    pub top: bool,
}

/// Everything to send, depth first.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub entries: Vec<PlanEntry>,
    pub total_bytes: u64,
}

fn unsendable(path: &Path, reason: impl Into<String>) -> FilecopyError {
    FilecopyError::Unsendable {
        path: Shown(path.as_os_str().as_bytes()).to_string(),
        reason: reason.into(),
    }
}

fn mtime_of(m: &Metadata) -> (i64, u32) {
    (m.mtime(), u32::try_from(m.mtime_nsec()).unwrap_or(0))
}

fn kind_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a fifo"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "of an unknown kind"
    }
}

fn scan_into(
    plan: &mut Plan,
    path: &Path,
    rel: String,
    depth: usize,
    meta: Metadata,
    top: bool,
) -> Result<(), FilecopyError> {
    if depth > Limits::DEPTH_CAP || rel.len() > Limits::PATH_CAP {
        return Err(unsendable(path, "nested too deeply or path too long"));
    }
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    let mtime = mtime_of(&meta);
    if ft.is_file() {
        plan.total_bytes = plan.total_bytes.saturating_add(meta.len());
        plan.entries.push(PlanEntry {
            kind: EntryKind::File,
            source: path.to_owned(),
            rel,
            mode,
            mtime,
            size: meta.len(),
            top,
        });
    } else if ft.is_dir() {
        plan.entries.push(PlanEntry {
            kind: EntryKind::Dir,
            source: path.to_owned(),
            rel: rel.clone(),
            mode,
            mtime,
            size: 0,
            top,
        });
        let mut children: Vec<_> = fs::read_dir(path)
            .map_err(|e| unsendable(path, format!("cannot list it: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| unsendable(path, format!("cannot list it: {e}")))?;
        children.sort_by_key(|c| c.file_name());
        for c in children {
            let cpath = c.path();
            let name = c.file_name();
            let name = names::check_component(name.as_bytes())
                .map_err(|e| unsendable(&cpath, format!("its name cannot be sent: {e}")))?;
            let cmeta =
                fs::symlink_metadata(&cpath).map_err(|e| unsendable(&cpath, e.to_string()))?;
            scan_into(
                plan,
                &cpath,
                format!("{rel}/{name}"),
                depth + 1,
                cmeta,
                false,
            )?;
        }
    } else if ft.is_symlink() {
        let target =
            fs::read_link(path).map_err(|e| unsendable(path, format!("cannot read link: {e}")))?;
        names::check_symlink_target(depth, target.as_os_str().as_bytes()).map_err(|e| {
            unsendable(
                path,
                format!(
                    "symlink to {}: {e}; only links that stay inside the copied tree can be sent",
                    Shown(target.as_os_str().as_bytes())
                ),
            )
        })?;
        plan.entries.push(PlanEntry {
            kind: EntryKind::Symlink,
            source: path.to_owned(),
            rel,
            mode: 0o777,
            mtime,
            size: target.as_os_str().len() as u64,
            top,
        });
    } else {
        return Err(unsendable(
            path,
            format!(
                "it is {}; only regular files, directories and symlinks can be copied",
                kind_name(ft)
            ),
        ));
    }
    Ok(())
}

/// Scans the given paths (a symlink given directly is followed; symlinks inside directories
/// are sent as links, and must stay inside the copied tree). Refuses names the receiver
/// would refuse, and special files.
pub fn scan(paths: &[PathBuf]) -> Result<Plan, FilecopyError> {
    let mut plan = Plan::default();
    for p in paths {
        let meta = fs::metadata(p).map_err(|e| unsendable(p, e.to_string()))?;
        let name = match p.file_name() {
            Some(n) => n.to_owned(),
            None => fs::canonicalize(p)
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_owned()))
                .ok_or_else(|| unsendable(p, "it has no name to send (the root directory?)"))?,
        };
        let name = names::check_component(name.as_bytes())
            .map_err(|e| unsendable(p, format!("its name cannot be sent: {e}")))?
            .to_string();
        scan_into(&mut plan, p, name, 1, meta, true)?;
    }
    Ok(plan)
}

/// What was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Progress callback: (bytes sent, total bytes planned).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Writes the stream for `plan` to `w` (magic, entries, end marker). A file that changed
/// size while being sent aborts the copy (the caller closes the stream without an end
/// marker, so the receiver discards the partial file).
pub fn send<W: Write>(
    plan: &Plan,
    w: W,
    progress: Progress<'_>,
) -> Result<SendSummary, FilecopyError> {
    let mut sw = StreamWriter::new(w);
    let mut sum = SendSummary::default();
    let werr = |e| FilecopyError::io("sending", "the stream", e);
    sw.magic().map_err(werr)?;
    let mut buf = vec![0u8; 128 * 1024];
    for e in &plan.entries {
        match e.kind {
            EntryKind::Dir => {
                sw.header(EntryKind::Dir, e.mode, e.mtime, 0, e.rel.as_bytes())
                    .map_err(werr)?;
                sum.dirs += 1;
            }
            EntryKind::Symlink => {
                let target = fs::read_link(&e.source)
                    .map_err(|err| unsendable(&e.source, format!("cannot read link: {err}")))?;
                let t = target.as_os_str().as_bytes();
                names::check_symlink_target(e.rel.split('/').count(), t).map_err(|err| {
                    unsendable(&e.source, format!("changed while sending: {err}"))
                })?;
                sw.header(
                    EntryKind::Symlink,
                    0o777,
                    e.mtime,
                    t.len() as u64,
                    e.rel.as_bytes(),
                )
                .map_err(werr)?;
                sw.data(t).map_err(werr)?;
                sum.symlinks += 1;
            }
            EntryKind::File => {
                let mut opts = fs::OpenOptions::new();
                opts.read(true);
                if !e.top {
                    opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
                }
                let mut f: File = opts
                    .open(&e.source)
                    .map_err(|err| unsendable(&e.source, err.to_string()))?;
                let meta = f
                    .metadata()
                    .map_err(|err| unsendable(&e.source, err.to_string()))?;
                if !meta.is_file() {
                    return Err(unsendable(&e.source, "changed while sending: not a file"));
                }
                let size = meta.len();
                sw.header(
                    EntryKind::File,
                    meta.mode() & 0o7777,
                    mtime_of(&meta),
                    size,
                    e.rel.as_bytes(),
                )
                .map_err(werr)?;
                let mut left = size;
                while left > 0 {
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let n = f
                        .read(&mut buf[..want])
                        .map_err(|err| unsendable(&e.source, err.to_string()))?;
                    if n == 0 {
                        return Err(unsendable(&e.source, "it shrank while being sent"));
                    }
                    sw.data(&buf[..n]).map_err(werr)?;
                    left -= n as u64;
                    sum.bytes += n as u64;
                    progress(sum.bytes, plan.total_bytes);
                }
                let after = f
                    .metadata()
                    .map_err(|err| unsendable(&e.source, err.to_string()))?;
                if after.len() != size {
                    return Err(unsendable(&e.source, "it grew while being sent"));
                }
                sum.files += 1;
            }
        }
    }
    sw.end().map_err(werr)?;
    Ok(sum)
}

/// The receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok(SendSummary),
    Error(String),
}

/// Parses the receiver's answer line (at most 4096 bytes are looked at).
pub fn parse_answer(raw: &[u8]) -> Result<Answer, FilecopyError> {
    let raw = &raw[..raw.len().min(4096)];
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if raw.is_empty() {
        return Err(FilecopyError::BadAnswer("no answer".into()));
    }
    if let Some(msg) = clean.strip_prefix("error ") {
        return Ok(Answer::Error(msg.to_string()));
    }
    let Some(rest) = clean.strip_prefix("ok ") else {
        return Err(FilecopyError::BadAnswer(format!("{:?}", clean)));
    };
    let mut s = SendSummary::default();
    let mut seen = 0;
    for kv in rest.split(' ') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| FilecopyError::BadAnswer(format!("{clean:?}")))?;
        let v: u64 = v
            .parse()
            .map_err(|_| FilecopyError::BadAnswer(format!("{clean:?}")))?;
        match k {
            "files" => s.files = v,
            "dirs" => s.dirs = v,
            "symlinks" => s.symlinks = v,
            "bytes" => s.bytes = v,
            _ => return Err(FilecopyError::BadAnswer(format!("{clean:?}"))),
        }
        seen += 1;
    }
    if seen != 4 {
        return Err(FilecopyError::BadAnswer(format!("{clean:?}")));
    }
    Ok(Answer::Ok(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(b"ok files=1 dirs=2 symlinks=3 bytes=4\n").unwrap(),
            Answer::Ok(SendSummary {
                files: 1,
                dirs: 2,
                symlinks: 3,
                bytes: 4
            })
        );
        assert_eq!(
            parse_answer(b"error no\x1b[31m\n").unwrap(),
            Answer::Error("no [31m".into())
        );
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"ok files=1\n").is_err());
        assert!(parse_answer(b"ok files=x dirs=2 symlinks=3 bytes=4").is_err());
        assert!(parse_answer(b"whatever").is_err());
    }
}
