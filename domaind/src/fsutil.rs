//! Host-side file helpers for volumes: copying a private volume (seeding a disposable,
//! cloning a domain), reading the tail of a domain log, and reading one small file inside a
//! template root ([`read_in_root`]).
//!
//! Volume contents were written by a domain and are hostile: symlinks are copied as symlinks
//! and never followed, device nodes, FIFOs and sockets are skipped, and ownership and modes are
//! copied as they are (canonical ids; the domain sees them through an idmapped mount).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Deepest directory nesting copied; deeper trees are refused (a hostile volume could nest
/// without bound).
pub const MAX_COPY_DEPTH: usize = 256;
/// Most bytes one copy writes (a volume's files, sparse ones counted at full size).
pub const MAX_COPY_BYTES: u64 = 64 << 30;
/// Most entries (files, directories, symlinks) one copy creates.
pub const MAX_COPY_ENTRIES: u64 = 2_000_000;

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
    #[error("{path}: changed while being copied (a file was swapped for another or a symlink); nothing was copied through it")]
    Changed { path: PathBuf },
    #[error("{path}: the volume is larger than a copy may be ({MAX_COPY_BYTES} bytes, {MAX_COPY_ENTRIES} entries)")]
    TooLarge { path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn errno_at(path: &Path) -> impl FnOnce(rustix::io::Errno) -> CopyError + '_ {
    move |e| CopyError::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// What is left of the limits of one copy.
struct Budget {
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn entry(&mut self, path: &Path) -> Result<(), CopyError> {
        self.entries = self
            .entries
            .checked_sub(1)
            .ok_or_else(|| CopyError::TooLarge {
                path: path.to_owned(),
            })?;
        Ok(())
    }
}

/// Copy the tree `src` to `dst` (which must not exist), preserving owners and modes.
///
/// The source may belong to a running domain that changes it while we copy, so the walk
/// never resolves a path twice: every entry is looked at (`fstatat`, no follow), opened
/// relative to its parent's descriptor with `O_NOFOLLOW`, and the opened file must be the
/// one that was looked at (same device and inode) or the copy stops. A directory swapped for
/// a symlink to `/` therefore fails the copy instead of copying the host's files.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), CopyError> {
    use rustix::fs::{fstat, mkdirat, openat, FileType, Mode, OFlags, CWD};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let src_fd = openat(CWD, src, dir_flags, Mode::empty()).map_err(errno_at(src))?;
    let st = fstat(&src_fd).map_err(errno_at(src))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(CopyError::Changed {
            path: src.to_owned(),
        });
    }
    mkdirat(CWD, dst, Mode::from_raw_mode(0o700)).map_err(errno_at(dst))?;
    let dst_fd = openat(CWD, dst, dir_flags, Mode::empty()).map_err(errno_at(dst))?;
    let mut budget = Budget {
        bytes: MAX_COPY_BYTES,
        entries: MAX_COPY_ENTRIES,
    };
    copy_dir_at(&src_fd, &dst_fd, src, 0, &mut budget)?;
    set_owner_mode(&dst_fd, &st, dst)
}

fn copy_dir_at(
    src: &std::os::fd::OwnedFd,
    dst: &std::os::fd::OwnedFd,
    path: &Path,
    depth: usize,
    budget: &mut Budget,
) -> Result<(), CopyError> {
    use rustix::fs::{
        chownat, fstat, mkdirat, openat, readlinkat, statat, symlinkat, AtFlags, Dir, FileType,
        Mode, OFlags,
    };
    if depth > MAX_COPY_DEPTH {
        return Err(CopyError::TooDeep {
            path: path.to_owned(),
        });
    }
    let mut dir = Dir::read_from(src).map_err(errno_at(path))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(errno_at(path))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let here = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        budget.entry(&here)?;
        let seen = statat(src, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_at(&here))?;
        let same = |st: &rustix::fs::Stat| st.st_dev == seen.st_dev && st.st_ino == seen.st_ino;
        match FileType::from_raw_mode(seen.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let from = openat(src, name, flags, Mode::empty())
                    .map_err(|_| CopyError::Changed { path: here.clone() })?;
                if !same(&fstat(&from).map_err(errno_at(&here))?) {
                    return Err(CopyError::Changed { path: here });
                }
                mkdirat(dst, name, Mode::from_raw_mode(0o700)).map_err(errno_at(&here))?;
                let to = openat(dst, name, flags, Mode::empty()).map_err(errno_at(&here))?;
                copy_dir_at(&from, &to, &here, depth + 1, budget)?;
                set_owner_mode(&to, &seen, &here)?;
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let from = openat(src, name, flags, Mode::empty())
                    .map_err(|_| CopyError::Changed { path: here.clone() })?;
                if !same(&fstat(&from).map_err(errno_at(&here))?) {
                    return Err(CopyError::Changed { path: here });
                }
                let create = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let to = openat(dst, name, create, Mode::from_raw_mode(0o600))
                    .map_err(errno_at(&here))?;
                let mut reader = std::fs::File::from(from).take(budget.bytes.saturating_add(1));
                let mut writer = std::fs::File::from(to);
                let copied = io::copy(&mut reader, &mut writer).map_err(io_at(&here))?;
                budget.bytes = budget
                    .bytes
                    .checked_sub(copied)
                    .ok_or_else(|| CopyError::TooLarge { path: here.clone() })?;
                set_owner_mode(&writer, &seen, &here)?;
            }
            FileType::Symlink => {
                // Copied as a symlink, never followed; the domain sees it inside its own root.
                let target = readlinkat(src, name, Vec::new()).map_err(errno_at(&here))?;
                symlinkat(target.as_c_str(), dst, name).map_err(errno_at(&here))?;
                chownat(
                    dst,
                    name,
                    Some(rustix::fs::Uid::from_raw(seen.st_uid)),
                    Some(rustix::fs::Gid::from_raw(seen.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno_at(&here))?;
            }
            _ => tracing::debug!(path = %here.display(), "not copying a special file"),
        }
    }
    Ok(())
}

/// Owner and mode of a copied file or directory, set on the descriptor (chown first: it
/// clears setuid/setgid, which the mode then restores as the domain had them).
fn set_owner_mode(
    fd: impl std::os::fd::AsFd,
    st: &rustix::fs::Stat,
    path: &Path,
) -> Result<(), CopyError> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
    .map_err(errno_at(path))?;
    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(errno_at(path))
}

/// Remove a directory tree if it exists (symlinks inside are removed, not followed).
pub use bulkhead_fsutil::{copy_image, remove_file, remove_tree};

/// Removes a domain's runtime dir, unmounting its channel file system first (see
/// `bind_channel`: each channel dir is a small tmpfs of its own).
pub fn remove_runtime_dir(
    paths: &bulkhead_domain::Paths,
    name: &bulkhead_domain::DomainName,
) -> io::Result<()> {
    unmount_channel(&paths.channel_dir(name))?;
    remove_tree(&paths.runtime_domain_dir(name))
}

/// Detaches the tmpfs on a channel dir, if one is mounted there.
pub fn unmount_channel(dir: &Path) -> io::Result<()> {
    match nix::mount::umount2(
        dir,
        nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
    ) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
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

/// How [`read_in_root`] treats symbolic links on the way to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// None anywhere on the path (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a link is an error.
    Refused,
    /// Resolved as if the root were `/` (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`), as the
    /// domain itself sees them: an absolute target or `..` never leaves the root.
    InRoot,
}

/// Why [`read_in_root`] returned no bytes.
#[derive(Debug, thiserror::Error)]
pub enum RootReadError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: {reason}; not read")]
    Refused { path: String, reason: &'static str },
    #[error("{path}: {size} bytes, more than the {max} that are read")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens a root directory for [`read_in_root`] (not through a symbolic link).
pub fn open_root(root: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The bytes of the regular file `rel` (relative, `/`-separated) below the directory `root`
/// (from [`open_root`]), at most `max` of them; the tree may belong to a domain and is
/// hostile. Nothing outside `root` is ever opened, whatever `links` says: the lookup is one
/// `openat2` with `RESOLVE_BENEATH` or `RESOLVE_IN_ROOT`. The file is first opened as a
/// path only (`O_PATH`) and read only when it is a regular file of at most `max` bytes, so
/// a device node or FIFO is never opened for reading.
pub fn read_in_root(
    root: std::os::fd::BorrowedFd<'_>,
    rel: &str,
    links: Links,
    max: u64,
) -> Result<Vec<u8>, RootReadError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    use std::os::fd::AsRawFd as _;
    let path = rel.to_owned();
    let (resolve, nofollow) = match links {
        Links::Refused => (
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            OFlags::NOFOLLOW,
        ),
        Links::InRoot => (
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            OFlags::empty(),
        ),
    };
    // EAGAIN: a rename elsewhere raced the lookup; the kernel asks for a retry.
    let mut tries = 0;
    let fd = loop {
        tries += 1;
        match rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::CLOEXEC | nofollow,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => break fd,
            Err(Errno::AGAIN) if tries < 4 => continue,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(RootReadError::NotFound { path }),
            Err(Errno::LOOP) => {
                return Err(RootReadError::Refused {
                    path,
                    reason: "a symbolic link (or too many) on the way",
                })
            }
            Err(Errno::XDEV) => {
                return Err(RootReadError::Refused {
                    path,
                    reason: "the path leads out of the root",
                })
            }
            Err(e) => {
                return Err(RootReadError::Io {
                    path,
                    source: e.into(),
                })
            }
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| RootReadError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(RootReadError::Refused {
            path,
            reason: "not a regular file",
        });
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > max {
        return Err(RootReadError::TooLarge { path, size, max });
    }
    // Reopening our own O_PATH descriptor reads exactly the file that was looked at.
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|source| RootReadError::Io {
                path: path.clone(),
                source,
            })?
    };
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| RootReadError::Io {
            path: path.clone(),
            source,
        })?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > max {
        // it grew since the fstat
        return Err(RootReadError::TooLarge {
            path,
            size: read,
            max,
        });
    }
    Ok(bytes)
}

/// Append one line of domaind's own to a domain's log (`bulkhead log` shows it next to the
/// domain's output): why a domain stopped, for one. Never creates the log, never follows a
/// symlink; a failure is only logged.
pub fn append_log_line(log: &Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!(log = %log.display(), error = %e, "cannot add a line to the domain's log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn image_copy_keeps_holes_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("a.img");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"data", 1 << 20).unwrap();
        drop(f);
        let dst = d.path().join("b.img");
        assert!(copy_image(&src, &dst).unwrap());
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 8 << 20,
            "holes filled: {} blocks",
            m.blocks()
        );
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_at(&std::fs::File::open(&dst).unwrap(), &mut buf, 1 << 20)
            .unwrap();
        assert_eq!(&buf, b"data");
        assert!(copy_image(&src, &dst).is_err(), "no overwrite");
        assert!(!copy_image(&d.path().join("none"), &d.path().join("c")).unwrap());
    }

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
    fn a_symlinked_source_is_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
        assert!(copy_tree(&t.path().join("link"), &t.path().join("dst")).is_err());
    }

    /// A running domain swaps a directory of its volume for a symlink to a host directory
    /// while the host copies the volume, again and again. Whatever the interleaving, the
    /// host's file must never be in the copy: each copy either completes without it or
    /// stops with an error.
    #[test]
    fn swapping_a_directory_for_a_symlink_during_a_copy_never_leaks_host_files() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host-secret");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("shadow"), b"host secret").unwrap();
        let src = t.path().join("private");
        fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..50 {
            fs::write(src.join("d").join(format!("f{i}")), b"domain data").unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (src, host, stop) = (src.clone(), host.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::rename(src.join("d"), src.join("d.real"));
                    let _ = std::os::unix::fs::symlink(&host, src.join("d"));
                    let _ = fs::remove_file(src.join("d"));
                    let _ = fs::rename(src.join("d.real"), src.join("d"));
                }
            })
        };
        for i in 0..300 {
            let dst = t.path().join(format!("copy{i}"));
            let _ = copy_tree(&src, &dst);
            for sub in ["d", "d.real"] {
                // A copied symlink is fine (it points into the domain's own root when the
                // domain sees it); a real directory holding the host's file is the leak.
                let copied_dir = fs::symlink_metadata(dst.join(sub)).is_ok_and(|m| m.is_dir());
                assert!(
                    !(copied_dir && dst.join(sub).join("shadow").exists()),
                    "copy {i} followed the planted symlink into the host directory"
                );
            }
            let _ = remove_tree(&dst);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
    }

    #[test]
    fn read_in_root_stays_in_the_root() {
        use std::os::fd::AsFd as _;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("a/b/f"), "inside").unwrap();
        fs::write(root.join("etc/secret"), "root's own").unwrap();
        fs::write(t.path().join("outside"), "host").unwrap();
        fs::write(root.join("big"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink("b/f", root.join("a/rel")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../../outside", root.join("a/up")).unwrap();
        std::os::unix::fs::symlink("/etc/secret", root.join("a/rooted")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let fd = open_root(&root).unwrap();
        let read = |rel: &str, links| read_in_root(fd.as_fd(), rel, links, 64);
        for links in [Links::Refused, Links::InRoot] {
            assert_eq!(read("a/b/f", links).unwrap(), b"inside");
            assert!(matches!(
                read("missing", links),
                Err(RootReadError::NotFound { .. })
            ));
            assert!(matches!(
                read("big", links),
                Err(RootReadError::TooLarge { size: 100, .. })
            ));
            assert!(matches!(
                read("a/b", links),
                Err(RootReadError::Refused { .. })
            ));
            assert!(matches!(
                read("fifo", links),
                Err(RootReadError::Refused { .. })
            ));
            // never the host's file, however the link is written
            for rel in ["a/abs", "a/up", "dirlink/outside", "../outside"] {
                let got = read(rel, links);
                assert!(
                    !matches!(&got, Ok(b) if b == b"host"),
                    "{rel} {links:?}: {got:?}"
                );
            }
        }
        assert!(matches!(
            read("a/rel", Links::Refused),
            Err(RootReadError::Refused { .. })
        ));
        assert!(matches!(
            read("../outside", Links::Refused),
            Err(RootReadError::Refused { .. })
        ));
        assert_eq!(read("a/rel", Links::InRoot).unwrap(), b"inside");
        // an absolute target is the root's own file, as the domain sees it
        assert_eq!(read("a/rooted", Links::InRoot).unwrap(), b"root's own");
        assert!(matches!(
            read("a/abs", Links::InRoot),
            Err(RootReadError::NotFound { .. })
        ));
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
