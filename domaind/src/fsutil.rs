//! Host-side file helpers for volumes: copying a private volume (seeding a disposable,
//! cloning a domain) and reading the tail of a domain log.
//!
//! Volume contents were written by a domain and are hostile: symlinks are copied as symlinks
//! and never followed, device nodes, FIFOs and sockets are skipped, and ownership and modes are
//! copied as they are (canonical ids; the domain sees them through an idmapped mount).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deepest directory nesting copied; deeper trees are refused (a hostile volume could nest
/// without bound).
pub const MAX_COPY_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: directories nested deeper than {MAX_COPY_DEPTH} levels")]
    TooDeep { path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn chown(path: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid())).map_err(io_at(path))
}

/// Copy the tree `src` to `dst` (which must not exist), preserving owners and modes.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), CopyError> {
    copy_dir(src, dst, 0)
}

fn copy_dir(src: &Path, dst: &Path, depth: usize) -> Result<(), CopyError> {
    if depth > MAX_COPY_DEPTH {
        return Err(CopyError::TooDeep {
            path: src.to_owned(),
        });
    }
    let md = fs::symlink_metadata(src).map_err(io_at(src))?;
    fs::create_dir(dst).map_err(io_at(dst))?;
    for entry in fs::read_dir(src).map_err(io_at(src))? {
        let entry = entry.map_err(io_at(src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let emd = fs::symlink_metadata(&from).map_err(io_at(&from))?;
        let ft = emd.file_type();
        if ft.is_dir() {
            copy_dir(&from, &to, depth + 1)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(io_at(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_at(&to))?;
            chown(&to, &emd)?;
        } else if ft.is_file() {
            copy_file(&from, &to, &emd)?;
        } else {
            tracing::debug!(path = %from.display(), "not copying a special file");
        }
    }
    chown(dst, &md)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_at(dst))
}

fn copy_file(from: &Path, to: &Path, md: &fs::Metadata) -> Result<(), CopyError> {
    // Open without following a symlink swapped in after the lstat.
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags_nofollow()
        .open(from)
        .map_err(io_at(from))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_at(to))?;
    io::copy(&mut src, &mut dst).map_err(io_at(to))?;
    chown(to, md)?;
    // chown clears setuid/setgid; set the mode afterwards.
    fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_at(to))
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}
impl NoFollow for fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

/// Remove a directory tree if it exists (symlinks inside are removed, not followed).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Remove a file if it exists.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The last `max_lines` lines of a log (reads at most the last 8 KiB).
pub fn log_tail(path: &Path, max_lines: usize) -> String {
    const WINDOW: u64 = 8192;
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(WINDOW).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_preserves_owner_mode_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("user/sub")).unwrap();
        fs::write(src.join("user/file"), b"data").unwrap();
        fs::set_permissions(src.join("user/file"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("user/link")).unwrap();
        let can_chown = nix::unistd::geteuid().is_root();
        if can_chown {
            std::os::unix::fs::lchown(src.join("user"), Some(1000), Some(1000)).unwrap();
        }
        let dst = t.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("user/file")).unwrap(), b"data");
        let md = fs::metadata(dst.join("user/file")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_link(dst.join("user/link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(dst.join("user/sub").is_dir());
        if can_chown {
            assert_eq!(fs::metadata(dst.join("user")).unwrap().uid(), 1000);
        }
    }

    #[test]
    fn tail_of_log() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("l");
        fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&p, 2), "c\nd");
        assert_eq!(log_tail(&t.path().join("missing"), 2), "");
    }
}
