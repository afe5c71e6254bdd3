//! A template's changes: what a template domain wrote into its root (the upper layer of its
//! overlay, kept on disk while it runs) folded into a new root after it stopped, as Qubes keeps
//! a template's root volume.
//!
//! [`TemplateStore::commit_changes`]: under the template's lock, the current root is copied
//! as a tree of hard links into `build-<id>.partial` (directories are new, every other entry
//! a link), the upper layer is applied to it (whiteouts remove, opaque directories replace,
//! everything else is replaced by a new entry: a linked file is never written through, so
//! the old root, which running domains may still use, never changes), owners shifted back
//! from the domain's host id range, the marker rewritten, the tree synced, renamed to
//! `root-<id>`, the root it replaces recorded as `previous` (the way back of
//! [`TemplateStore::revert`]) and `current` switched. Any failure leaves `current` where it
//! was.
//!
//! The upper layer is the domain's to write, so it is read as hostile: no entry is
//! followed, ids outside the domain's range, device nodes and more than [`MAX_DEPTH`]
//! levels or [`MAX_ENTRIES`] entries refuse the whole change, with the reason.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bulkhead_domain::DomainName;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tracing::{info, warn};

use crate::error::TemplateError;
use crate::store::{
    fsync_dir, remove_tree, set_previous, switch_current, TemplateStatus, TemplateStore,
    MARKER_PATH, PARTIAL_PREFIX, PARTIAL_SUFFIX, ROOT_PREFIX,
};

/// Deepest directory nesting accepted in a template's changes.
pub const MAX_DEPTH: usize = 128;
/// Most entries accepted in a template's changes (a large `apt-get upgrade` writes tens of
/// thousands).
pub const MAX_ENTRIES: u64 = 2_000_000;

/// How long a commit waits for the template's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Paths (relative to the root) a template's changes never carry into its root: Bulkhead
/// writes them for each domain (resolv.conf; apt's update proxy configuration, which
/// bulkhead-init writes in templates: bulkhead_agent::updates::APT_PROXY_CONF) or owns them
/// (the template marker).
const NOT_KEPT: &[&str] = &[
    "etc/resolv.conf",
    "etc/apt/apt.conf.d/80bulkhead-updates-proxy",
    MARKER_PATH,
];

/// The host ids a domain's files carry in its upper layer: `base + id` for `id` in
/// `0..len`.
#[derive(Debug, Clone, Copy)]
pub struct IdRange {
    pub base: u32,
    pub len: u32,
}

impl IdRange {
    fn unshift(&self, host: u32) -> Option<u32> {
        host.checked_sub(self.base).filter(|id| *id < self.len)
    }
}

/// What [`TemplateStore::commit_changes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Nothing was changed; `current` stays.
    Unchanged,
    /// A new root holds the changes and is `current`.
    Committed {
        root: PathBuf,
        /// Entries of the upper layer applied (whiteouts included).
        entries: u64,
    },
}

/// Why a template's changes were refused.
fn refused(path: &Path, why: impl std::fmt::Display) -> TemplateError {
    TemplateError::ChangesRefused {
        path: path.to_owned(),
        reason: why.to_string(),
    }
}

fn random_id() -> Result<String, TemplateError> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(TemplateError::io("/dev/urandom", "cannot read"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn set_times(path: &Path, md: &fs::Metadata) -> Result<(), TemplateError> {
    let at = TimeSpec::new(md.atime(), md.atime_nsec());
    let mt = TimeSpec::new(md.mtime(), md.mtime_nsec());
    utimensat(None, path, &at, &mt, UtimensatFlags::NoFollowSymlink).map_err(|source| {
        TemplateError::Sys {
            what: format!("cannot set the times of {}", path.display()),
            source,
        }
    })
}

/// Owner, mode (not for symlinks) and times of `path` set to `md`'s, ids as given.
fn set_meta(path: &Path, md: &fs::Metadata, uid: u32, gid: u32) -> Result<(), TemplateError> {
    lchown(path, Some(uid), Some(gid)).map_err(TemplateError::io(path, "cannot chown"))?;
    if !md.file_type().is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(TemplateError::io(path, "cannot chmod"))?;
    }
    set_times(path, md)
}

/// Copies `src` (a root tree) to `dst` as new directories holding hard links to every other
/// entry.
fn link_tree(src: &Path, dst: &Path, depth: usize) -> Result<(), TemplateError> {
    if depth > MAX_DEPTH {
        return Err(refused(src, "the template's root is nested too deeply"));
    }
    let md = fs::symlink_metadata(src).map_err(TemplateError::io(src, "cannot stat"))?;
    fs::create_dir(dst).map_err(TemplateError::io(dst, "cannot create"))?;
    for entry in fs::read_dir(src).map_err(TemplateError::io(src, "cannot list"))? {
        let entry = entry.map_err(TemplateError::io(src, "cannot list"))?;
        let (s, d) = (entry.path(), dst.join(entry.file_name()));
        let ft = entry
            .file_type()
            .map_err(TemplateError::io(&s, "cannot stat"))?;
        if ft.is_dir() {
            link_tree(&s, &d, depth + 1)?;
        } else {
            // linkat without AT_SYMLINK_FOLLOW: a symlink is linked, not followed.
            fs::hard_link(&s, &d).map_err(TemplateError::io(&d, "cannot link"))?;
        }
    }
    set_meta(dst, &md, md.uid(), md.gid())
}

/// Removes whatever is at `path` (a directory with its contents), if anything.
fn remove_any(path: &Path) -> Result<(), TemplateError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            bulkhead_fsutil::remove_tree(path).map_err(TemplateError::io(path, "cannot remove"))
        }
        Ok(_) => fs::remove_file(path).map_err(TemplateError::io(path, "cannot remove")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TemplateError::io(path, "cannot stat")(e)),
    }
}

/// Whether the overlay marked `dir` opaque (it hides the lower directory's entries).
fn is_opaque(dir: &Path) -> Result<bool, TemplateError> {
    // The overlay is mounted by dom0's root, so it keeps its attributes in the trusted
    // namespace (the domain cannot write those); user.overlay.* would be the domain's own.
    match rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut [0u8; 4]) {
        Ok(n) => Ok(n == 1),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(TemplateError::io(dir, "cannot read overlay attributes")(
            e.into(),
        )),
    }
}

/// Refuses an entry the overlay marked as a redirect or a metadata-only copy: the layer is
/// mounted with `redirect_dir=off,metacopy=off`, so such a mark did not come from it (and
/// folding it would lose the lower data it points to).
fn check_overlay_marks(path: &Path) -> Result<(), TemplateError> {
    for name in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        match rustix::fs::lgetxattr(path, name, &mut [0u8; 0]) {
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => {}
            Ok(_) | Err(rustix::io::Errno::RANGE) => {
                return Err(refused(path, format!("carries the overlay mark {name}")))
            }
            Err(e) => {
                return Err(TemplateError::io(path, "cannot read overlay attributes")(
                    e.into(),
                ))
            }
        }
    }
    Ok(())
}

/// Refuses a tree whose `etc` (where the marker is written and os-release read) is not a
/// real directory: a symlink there would make dom0 write the marker wherever it points.
fn check_etc(tree: &Path) -> Result<(), TemplateError> {
    let etc = tree.join("etc");
    match fs::symlink_metadata(&etc) {
        Ok(md) if md.is_dir() => Ok(()),
        _ => Err(refused(
            &etc,
            "etc is not a directory (a symlink or missing)",
        )),
    }
}

/// Applies one upper layer to a tree of links.
struct Apply<'a> {
    ids: IdRange,
    upper: &'a Path,
    entries: u64,
    /// Upper files with several links: (dev, ino) -> where the first one went.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Apply<'_> {
    fn ids_of(&self, path: &Path, md: &fs::Metadata) -> Result<(u32, u32), TemplateError> {
        let uid = self.ids.unshift(md.uid());
        let gid = self.ids.unshift(md.gid());
        match (uid, gid) {
            (Some(u), Some(g)) => Ok((u, g)),
            _ => Err(refused(
                path,
                format!(
                    "owned by host ids {}:{}, outside the domain's range {}..{}",
                    md.uid(),
                    md.gid(),
                    self.ids.base,
                    u64::from(self.ids.base) + u64::from(self.ids.len)
                ),
            )),
        }
    }

    fn dir(
        &mut self,
        src: &Path,
        dst: &Path,
        rel: &Path,
        depth: usize,
    ) -> Result<(), TemplateError> {
        if depth > MAX_DEPTH {
            return Err(refused(
                src,
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        // Counted while listing: one directory with millions of names stops at the limit
        // instead of being held in memory whole.
        let room = usize::try_from(MAX_ENTRIES.saturating_sub(self.entries)).unwrap_or(usize::MAX);
        let mut names = Vec::new();
        for e in fs::read_dir(src).map_err(TemplateError::io(src, "cannot list"))? {
            names.push(
                e.map_err(TemplateError::io(src, "cannot list"))?
                    .file_name(),
            );
            if names.len() > room {
                return Err(refused(
                    self.upper,
                    format!("more than {MAX_ENTRIES} entries"),
                ));
            }
        }
        names.sort();
        for name in names {
            self.entry(&src.join(&name), &dst.join(&name), &rel.join(&name), depth)?;
        }
        Ok(())
    }

    fn entry(&mut self, s: &Path, d: &Path, rel: &Path, depth: usize) -> Result<(), TemplateError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(refused(
                self.upper,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        if NOT_KEPT.iter().any(|p| rel == Path::new(p)) {
            return Ok(());
        }
        let md = fs::symlink_metadata(s).map_err(TemplateError::io(s, "cannot stat"))?;
        let ft = md.file_type();
        if !ft.is_symlink() {
            check_overlay_marks(s)?;
        }
        if ft.is_char_device() && md.rdev() == 0 {
            // A whiteout: the entry was deleted.
            return remove_any(d);
        }
        if ft.is_file() && md.nlink() > 1 {
            // Another link of a file already applied (and so already re-owned).
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                remove_any(d)?;
                return fs::hard_link(first, d).map_err(TemplateError::io(d, "cannot link"));
            }
        }
        let (uid, gid) = self.ids_of(s, &md)?;
        if ft.is_dir() {
            let keep =
                !is_opaque(s)? && fs::symlink_metadata(d).map(|m| m.is_dir()).unwrap_or(false);
            if !keep {
                remove_any(d)?;
                fs::create_dir(d).map_err(TemplateError::io(d, "cannot create"))?;
            }
            self.dir(s, d, rel, depth + 1)?;
            return set_meta(d, &md, uid, gid);
        }
        remove_any(d)?;
        if ft.is_file() && md.nlink() > 1 {
            self.links.insert((md.dev(), md.ino()), d.to_owned());
        }
        if ft.is_file() {
            // The upper layer is thrown away after the commit: move when it shares the
            // file system, else copy.
            if let Err(e) = fs::rename(s, d) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(TemplateError::io(d, "cannot move")(e));
                }
                fs::copy(s, d).map_err(TemplateError::io(d, "cannot copy"))?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(s).map_err(TemplateError::io(s, "cannot read link"))?;
            symlink(&target, d).map_err(TemplateError::io(d, "cannot create symlink"))?;
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(d, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |source| TemplateError::Sys {
                    what: format!("cannot make fifo {}", d.display()),
                    source,
                },
            )?;
        } else if ft.is_socket() {
            // A socket left by a process is not part of a root.
            return Ok(());
        } else {
            return Err(refused(s, "a device node (a domain cannot make one)"));
        }
        set_meta(d, &md, uid, gid)
    }
}

/// Whether `upper` holds anything to keep over `base`: an entry other than those never kept,
/// where a plain (not opaque) directory counts only for what is in it or for an owner or mode
/// other than the base's (the overlay copies parents up unchanged).
fn has_changes(
    upper: &Path,
    base: &Path,
    rel: &Path,
    ids: IdRange,
    depth: usize,
) -> Result<bool, TemplateError> {
    if depth > MAX_DEPTH {
        return Ok(true);
    }
    for entry in fs::read_dir(upper).map_err(TemplateError::io(upper, "cannot list"))? {
        let entry = entry.map_err(TemplateError::io(upper, "cannot list"))?;
        let rel = rel.join(entry.file_name());
        if NOT_KEPT.iter().any(|p| rel == Path::new(p)) {
            continue;
        }
        let path = entry.path();
        let md = fs::symlink_metadata(&path).map_err(TemplateError::io(&path, "cannot stat"))?;
        if !md.file_type().is_symlink() {
            check_overlay_marks(&path)?;
        }
        if !md.is_dir() || is_opaque(&path)? {
            return Ok(true);
        }
        let lower = base.join(&rel);
        let same = fs::symlink_metadata(&lower).is_ok_and(|l| {
            l.is_dir()
                && l.mode() == md.mode()
                && ids.unshift(md.uid()) == Some(l.uid())
                && ids.unshift(md.gid()) == Some(l.gid())
        });
        if !same || has_changes(&path, base, &rel, ids, depth + 1)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Turns a finished `partial` tree into `<tdir>/root-<id>` and makes it current: marker
/// written anew (never through a link), os-release checked, synced, renamed, `replaces` (the
/// root that was current) recorded as `previous`, switched. On error the partial tree is
/// removed and `current` stays.
fn finish_tree(
    store: &TemplateStore,
    name: &DomainName,
    partial: &Path,
    id: &str,
    marker: &mut crate::TemplateMarker,
    replaces: Option<&Path>,
) -> Result<PathBuf, TemplateError> {
    let tdir = store.template_dir(name);
    let root = tdir.join(format!("{ROOT_PREFIX}{id}"));
    let result = (|| {
        check_etc(partial)?;
        marker.root_id = Some(id.to_owned());
        let marker_path = partial.join(MARKER_PATH);
        let text = toml::to_string(&*marker).map_err(|e| TemplateError::Verify {
            root: partial.to_owned(),
            log: store.log_path(name),
            problem: format!("cannot serialize marker: {e}"),
        })?;
        remove_any(&marker_path)?;
        fs::write(&marker_path, text)
            .map_err(TemplateError::io(&marker_path, "cannot write marker"))?;
        if fs::symlink_metadata(partial.join("etc/os-release")).is_err() {
            return Err(refused(partial, "the tree has no etc/os-release"));
        }
        let dirf = File::open(partial).map_err(TemplateError::io(partial, "cannot open"))?;
        nix::unistd::syncfs(dirf.as_raw_fd()).map_err(|source| TemplateError::Sys {
            what: format!("syncfs {}", partial.display()),
            source,
        })?;
        fs::rename(partial, &root).map_err(TemplateError::io(partial, "cannot rename to root"))?;
        fsync_dir(&tdir)
    })();
    if let Err(e) = result {
        if let Err(r) = remove_tree(partial) {
            warn!(path = %partial.display(), error = %r, "cannot remove an unfinished tree");
        }
        return Err(e);
    }
    if let Some(old) = replaces {
        set_previous(&tdir, old)?;
    }
    switch_current(&tdir, &root)?;
    Ok(root)
}

impl TemplateStore {
    /// A new template `dest` whose root is a copy (hard links) of `source`'s current root,
    /// as Qubes clones a template to change the clone only. The clone has no recipe of its
    /// own (its marker names `source`'s); it is changed by starting it. Fails if `dest`
    /// already has a tree.
    pub fn clone_template(
        &self,
        source: &DomainName,
        dest: &DomainName,
    ) -> Result<PathBuf, TemplateError> {
        let base = self.root_path(source)?;
        let mut marker =
            self.check_root(source, &base)
                .map_err(|reason| TemplateError::Broken {
                    name: source.to_string(),
                    reason,
                })?;
        let _src_lock = self.lock(source)?;
        let _lock = self.lock(dest)?;
        if !matches!(self.status(dest), TemplateStatus::Missing) {
            return Err(TemplateError::Exists {
                name: dest.to_string(),
            });
        }
        let tdir = self.template_dir(dest);
        let id = random_id()?;
        let partial = tdir.join(format!("{PARTIAL_PREFIX}{id}{PARTIAL_SUFFIX}"));
        if let Err(e) = link_tree(&base, &partial, 0) {
            let _ = remove_tree(&partial);
            return Err(e);
        }
        marker.recipe = Some(marker.recipe.take().unwrap_or_else(|| source.to_string()));
        marker.name = dest.to_string();
        let root = finish_tree(self, dest, &partial, &id, &mut marker, None)?;
        info!(template = %dest, from = %source, root = %root.display(), "template cloned");
        Ok(root)
    }

    /// Folds `upper` (the upper layer of a stopped template domain's root, its files owned
    /// by `ids`) into a new root of template `name` and makes it current. Domains that run
    /// keep the root they started on; the next start of any domain based on the template
    /// sees the change. The recipe hash in the marker stays (the root is still that recipe's
    /// build, changed), so `template build` keeps it until the recipe changes. The root it
    /// replaces becomes `previous`: [`revert`](Self::revert) goes back to it.
    pub fn commit_changes(
        &self,
        name: &DomainName,
        upper: &Path,
        ids: IdRange,
    ) -> Result<CommitOutcome, TemplateError> {
        // A build of the VM files may hold the lock for minutes: wait rather than lose the
        // user's changes.
        let _lock = self.lock_wait(name, LOCK_WAIT)?;
        let base = match self.status(name) {
            TemplateStatus::Ready { root, .. } | TemplateStatus::Stale { root, .. } => root,
            TemplateStatus::Missing => {
                return Err(TemplateError::NotBuilt {
                    name: name.to_string(),
                })
            }
            TemplateStatus::Broken { reason } => {
                return Err(TemplateError::Broken {
                    name: name.to_string(),
                    reason,
                })
            }
        };
        let mut marker = self
            .check_root(name, &base)
            .map_err(|reason| TemplateError::Broken {
                name: name.to_string(),
                reason,
            })?;
        if !has_changes(upper, &base, Path::new(""), ids, 0)? {
            return Ok(CommitOutcome::Unchanged);
        }
        let tdir = self.template_dir(name);
        let id = random_id()?;
        let partial = tdir.join(format!("{PARTIAL_PREFIX}{id}{PARTIAL_SUFFIX}"));
        let started = std::time::Instant::now();
        let applied = (|| {
            link_tree(&base, &partial, 0)?;
            let mut apply = Apply {
                ids,
                upper,
                entries: 0,
                links: HashMap::new(),
            };
            apply.dir(upper, &partial, Path::new(""), 0)?;
            Ok(apply.entries)
        })();
        let entries = match applied {
            Ok(n) => n,
            Err(e) => {
                if let Err(r) = remove_tree(&partial) {
                    warn!(path = %partial.display(), error = %r, "cannot remove a failed commit");
                }
                return Err(e);
            }
        };
        marker.changed_at = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        let root = finish_tree(self, name, &partial, &id, &mut marker, Some(&base)).map_err(
            |e| match e {
                TemplateError::ChangesRefused { path, .. } if path == partial => {
                    refused(upper, "the changes removed etc/os-release")
                }
                other => other,
            },
        )?;
        info!(template = %name, root = %root.display(), entries, seconds = started.elapsed().as_secs_f64(), "template changes kept");
        Ok(CommitOutcome::Committed { root, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{n, recipe, root_user, FakeBuilder};
    use nix::sys::stat::{mknod, Mode, SFlag};
    use std::os::unix::fs::chown;

    const IDS: IdRange = IdRange {
        base: 300_000,
        len: 65536,
    };

    /// A store with a built root holding `usr/bin/tool` (linked twice), `opt/old/{a,b}` and
    /// `var/keep`, and an empty upper layer next to it.
    fn setup() -> (tempfile::TempDir, TemplateStore, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path().join("templates"));
        let root = store
            .build_with(&recipe(""), &FakeBuilder::new(), &mut |_| {})
            .unwrap();
        for dir in ["usr/bin", "opt/old", "var"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("usr/bin/tool"), "v1").unwrap();
        fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-alias")).unwrap();
        fs::write(root.join("opt/old/a"), "a").unwrap();
        fs::write(root.join("opt/old/b"), "b").unwrap();
        fs::write(root.join("var/keep"), "keep").unwrap();
        let upper = d.path().join("upper");
        fs::create_dir(&upper).unwrap();
        (d, store, root, upper)
    }

    fn owned(p: &Path, id: u32) {
        lchown(p, Some(IDS.base + id), Some(IDS.base + id)).unwrap();
    }

    #[test]
    fn changes_become_a_new_root_and_the_old_one_stays() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (whiteouts are device nodes, ids are chowned)");
            return;
        }
        let (_d, store, old, upper) = setup();
        // Only what Bulkhead writes itself, under parents copied up unchanged: nothing to
        // keep.
        fs::create_dir_all(upper.join("etc/apt/apt.conf.d")).unwrap();
        fs::create_dir_all(old.join("etc/apt/apt.conf.d")).unwrap();
        for d in ["etc", "etc/apt", "etc/apt/apt.conf.d"] {
            owned(&upper.join(d), 0);
            fs::set_permissions(upper.join(d), fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(old.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(upper.join("etc/resolv.conf"), "nameserver 10.0.0.1\n").unwrap();
        fs::write(
            upper.join("etc/apt/apt.conf.d/80bulkhead-updates-proxy"),
            "Acquire::http::Proxy \"x\";\n",
        )
        .unwrap();
        assert_eq!(
            store.commit_changes(&n(), &upper, IDS).unwrap(),
            CommitOutcome::Unchanged
        );
        // A changed file, a new file owned by the user, a deleted file, an opaque directory
        // (rm -r then mkdir), a new symlink and a pair of hard links.
        fs::create_dir_all(upper.join("usr/bin")).unwrap();
        fs::write(upper.join("usr/bin/tool"), "v2").unwrap();
        owned(&upper.join("usr/bin/tool"), 0);
        fs::set_permissions(
            upper.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs::write(upper.join("usr/bin/new"), "new").unwrap();
        owned(&upper.join("usr/bin/new"), 1000);
        fs::hard_link(upper.join("usr/bin/new"), upper.join("usr/bin/new2")).unwrap();
        symlink("new", upper.join("usr/bin/new-link")).unwrap();
        lchown(
            upper.join("usr/bin/new-link"),
            Some(IDS.base),
            Some(IDS.base),
        )
        .unwrap();
        owned(&upper.join("usr/bin"), 0);
        owned(&upper.join("usr"), 0);
        fs::create_dir(upper.join("var")).unwrap();
        owned(&upper.join("var"), 0);
        mknod(&upper.join("var/keep"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        fs::create_dir_all(upper.join("opt/old")).unwrap();
        rustix::fs::setxattr(
            upper.join("opt/old"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::write(upper.join("opt/old/c"), "c").unwrap();
        for p in ["opt", "opt/old", "opt/old/c", "etc", "etc/resolv.conf"] {
            owned(&upper.join(p), 0);
        }

        let CommitOutcome::Committed { root, entries } =
            store.commit_changes(&n(), &upper, IDS).unwrap()
        else {
            panic!("changes not committed");
        };
        assert!(entries >= 10, "{entries}");
        assert_ne!(root, old);
        assert_eq!(store.root_path(&n()).unwrap(), root, "current switched");
        let read = |r: &Path, p: &str| fs::read_to_string(r.join(p)).ok();
        assert_eq!(read(&root, "usr/bin/tool").as_deref(), Some("v2"));
        let md = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(
            (md.uid(), md.mode() & 0o7777),
            (0, 0o4755),
            "ids shifted, set-uid kept"
        );
        assert_eq!(
            read(&root, "usr/bin/tool-alias").as_deref(),
            Some("v1"),
            "the other link of a changed file keeps the old content, as in the overlay"
        );
        let new = fs::metadata(root.join("usr/bin/new")).unwrap();
        assert_eq!((new.uid(), new.gid()), (1000, 1000));
        assert_eq!(
            new.ino(),
            fs::metadata(root.join("usr/bin/new2")).unwrap().ino(),
            "hard links stay links"
        );
        assert_eq!(
            fs::read_link(root.join("usr/bin/new-link")).unwrap(),
            Path::new("new")
        );
        assert!(!root.join("var/keep").exists(), "whiteout removed it");
        assert!(
            !root.join("opt/old/a").exists(),
            "opaque dir replaced the old one"
        );
        assert_eq!(read(&root, "opt/old/c").as_deref(), Some("c"));
        assert_eq!(
            read(&root, "etc/resolv.conf"),
            read(&old, "etc/resolv.conf"),
            "the domain's resolv.conf is not kept"
        );
        let marker: crate::TemplateMarker =
            toml::from_str(&read(&root, MARKER_PATH).unwrap()).unwrap();
        assert_eq!(marker.hash, recipe("").hash(), "still the recipe's tree");
        assert!(marker.changed_at.is_some());
        // The old root, which running domains may use, did not change at all.
        assert_eq!(read(&old, "usr/bin/tool").as_deref(), Some("v1"));
        assert_eq!(
            fs::metadata(old.join("usr/bin/tool")).unwrap().mode() & 0o7777,
            0o644
        );
        assert_eq!(read(&old, "var/keep").as_deref(), Some("keep"));
        assert_eq!(read(&old, "opt/old/a").as_deref(), Some("a"));
        assert!(!old.join("usr/bin/new").exists());
        let old_marker: crate::TemplateMarker =
            toml::from_str(&read(&old, MARKER_PATH).unwrap()).unwrap();
        assert_eq!(old_marker.changed_at, None);
        // The recipe did not change: a build keeps the changed root.
        assert_eq!(
            store
                .build_with(&recipe(""), &FakeBuilder::new(), &mut |_| {})
                .unwrap(),
            root
        );
    }

    #[test]
    fn hostile_changes_are_refused_and_current_stays() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (ids are chowned, nodes made)");
            return;
        }
        type Case = fn(&Path);
        let cases: [(&str, Case); 6] = [
            ("etc is not a directory", |u| {
                symlink("/etc", u.join("etc")).unwrap();
                lchown(u.join("etc"), Some(IDS.base), Some(IDS.base)).unwrap();
            }),
            ("overlay mark", |u| {
                fs::create_dir(u.join("opt")).unwrap();
                owned(&u.join("opt"), 0);
                rustix::fs::setxattr(
                    u.join("opt"),
                    "trusted.overlay.redirect",
                    b"/elsewhere",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            }),
            ("outside the domain's range", |u| {
                fs::write(u.join("x"), "x").unwrap();
                chown(u.join("x"), Some(0), Some(0)).unwrap();
            }),
            ("device node", |u| {
                mknod(
                    &u.join("sda"),
                    SFlag::S_IFBLK,
                    Mode::from_bits_truncate(0o600),
                    0x801,
                )
                .unwrap();
                owned(&u.join("sda"), 0);
            }),
            ("nested deeper", |u| {
                let mut p = u.to_owned();
                for _ in 0..=MAX_DEPTH + 1 {
                    p.push("d");
                    fs::create_dir(&p).unwrap();
                    owned(&p, 0);
                }
            }),
            ("etc/os-release", |u| {
                fs::create_dir(u.join("etc")).unwrap();
                owned(&u.join("etc"), 0);
                mknod(&u.join("etc/os-release"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
            }),
        ];
        for (want, make) in cases {
            let (d, store, old, upper) = setup();
            make(&upper);
            let e = store.commit_changes(&n(), &upper, IDS).unwrap_err();
            assert!(
                matches!(e, TemplateError::ChangesRefused { .. }) && e.to_string().contains(want),
                "{want}: {e}"
            );
            assert_eq!(store.root_path(&n()).unwrap(), old, "{want}: current stays");
            let left: Vec<_> = fs::read_dir(store.template_dir(&n()))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(PARTIAL_SUFFIX) || n.starts_with(ROOT_PREFIX))
                .collect();
            assert_eq!(left.len(), 1, "{want}: nothing half-made left: {left:?}");
            drop(d);
        }
    }

    /// Keeps `upper/usr/bin/tool` with `content` as the template's new root.
    fn change_tool(store: &TemplateStore, upper: &Path, content: &str) -> PathBuf {
        fs::create_dir_all(upper.join("usr/bin")).unwrap();
        owned(&upper.join("usr/bin"), 0);
        owned(&upper.join("usr"), 0);
        fs::write(upper.join("usr/bin/tool"), content).unwrap();
        owned(&upper.join("usr/bin/tool"), 0);
        let CommitOutcome::Committed { root, .. } = store.commit_changes(&n(), upper, IDS).unwrap()
        else {
            panic!("not committed");
        };
        fs::remove_dir_all(upper).unwrap();
        fs::create_dir(upper).unwrap();
        root
    }

    #[test]
    fn revert_goes_back_to_the_root_before_the_change_and_back_again() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (ids are chowned)");
            return;
        }
        let (_d, store, built, upper) = setup();
        let tool = |r: &Path| fs::read_to_string(r.join("usr/bin/tool")).unwrap();
        // Built and never changed: nothing to go back to.
        assert_eq!(store.previous_root(&n()), None);
        let e = store.revert(&n()).unwrap_err();
        assert!(
            matches!(e, TemplateError::NothingToRevert { .. })
                && e.to_string()
                    .starts_with("nothing to revert: tmpl has no earlier root"),
            "{e}"
        );
        assert_eq!(store.root_path(&n()).unwrap(), built);

        let changed = change_tool(&store, &upper, "v2");
        assert_eq!(store.previous_root(&n()), Some(built.clone()));
        // Revert: the built root is current again, the changed one is the way back.
        assert_eq!(store.revert(&n()).unwrap(), built);
        assert_eq!(store.root_path(&n()).unwrap(), built);
        assert_eq!(tool(&store.root_path(&n()).unwrap()), "v1");
        assert_eq!(store.previous_root(&n()), Some(changed.clone()));
        // Revert again: back to the change.
        assert_eq!(store.revert(&n()).unwrap(), changed);
        assert_eq!(tool(&store.root_path(&n()).unwrap()), "v2");
        assert_eq!(store.previous_root(&n()), Some(built.clone()));

        // gc keeps current and previous; an older root goes once no one uses it.
        assert!(store.gc(&n(), &|_: &Path| false).unwrap().is_empty());
        assert!(built.exists() && changed.exists());
        let third = change_tool(&store, &upper, "v3");
        assert_eq!(store.previous_root(&n()), Some(changed.clone()));
        assert!(
            store.gc(&n(), &|p: &Path| p == built).unwrap().is_empty(),
            "a root in use stays"
        );
        assert_eq!(
            store.gc(&n(), &|_: &Path| false).unwrap(),
            vec![built.clone()]
        );
        assert!(changed.exists() && third.exists());
        // The change is undone on top of the changed root it was made on.
        assert_eq!(store.revert(&n()).unwrap(), changed);
        assert_eq!(tool(&store.root_path(&n()).unwrap()), "v2");
        // A change after a revert is made on the reverted-to root and replaces it as
        // previous: the undone change (third) is then old and goes.
        let fourth = change_tool(&store, &upper, "v4");
        assert_eq!(store.previous_root(&n()), Some(changed.clone()));
        assert_eq!(
            store.gc(&n(), &|_: &Path| false).unwrap(),
            vec![third.clone()]
        );
        assert_eq!(tool(&fourth), "v4");
    }

    #[test]
    fn revert_refuses_a_broken_earlier_root_and_a_crash_leftover() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (ids are chowned)");
            return;
        }
        let (_d, store, built, upper) = setup();
        let changed = change_tool(&store, &upper, "v2");
        let tdir = store.template_dir(&n());
        // The earlier root lost its marker: refused, current stays.
        let marker = fs::read(built.join(MARKER_PATH)).unwrap();
        fs::remove_file(built.join(MARKER_PATH)).unwrap();
        let e = store.revert(&n()).unwrap_err();
        assert!(
            matches!(e, TemplateError::PreviousBroken { .. })
                && e.to_string().contains("completion marker")
                && e.to_string().contains("the current root stays"),
            "{e}"
        );
        assert_eq!(store.root_path(&n()).unwrap(), changed);
        fs::write(built.join(MARKER_PATH), marker).unwrap();
        // The link names something else than a root.
        fs::remove_file(tdir.join("previous")).unwrap();
        symlink("/etc", tdir.join("previous")).unwrap();
        assert!(matches!(
            store.revert(&n()),
            Err(TemplateError::PreviousBroken { .. })
        ));
        // A crash between `previous` and `current` of a switch: both name one root.
        fs::remove_file(tdir.join("previous")).unwrap();
        symlink(changed.file_name().unwrap(), tdir.join("previous")).unwrap();
        let e = store.revert(&n()).unwrap_err();
        assert!(
            matches!(e, TemplateError::NothingToRevert { .. })
                && e.to_string().contains("interrupted"),
            "{e}"
        );
        assert_eq!(store.root_path(&n()).unwrap(), changed);
        // No template at all.
        let other = DomainName::new("never-built").unwrap();
        assert!(matches!(
            store.revert(&other),
            Err(TemplateError::NotBuilt { .. })
        ));
    }

    #[test]
    fn a_rebuild_can_be_reverted_to_the_changed_root() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (ids are chowned)");
            return;
        }
        let (_d, store, _built, upper) = setup();
        let changed = change_tool(&store, &upper, "v2");
        let r2 = recipe("exclude_docs = true\n");
        let rebuilt = store
            .build_with(&r2, &FakeBuilder::new(), &mut |_| {})
            .unwrap();
        assert_eq!(store.previous_root(&n()), Some(changed.clone()));
        assert_eq!(store.revert(&n()).unwrap(), changed);
        assert!(
            matches!(store.status_for(&r2), TemplateStatus::Stale { .. }),
            "the root is the older recipe's again"
        );
        assert_eq!(store.previous_root(&n()), Some(rebuilt));
    }

    #[test]
    fn a_clone_is_a_template_of_its_own() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (trees are owned by uid 0)");
            return;
        }
        let (_d, store, src_root, upper) = setup();
        let dest = DomainName::new("tmpl-work").unwrap();
        let root = store.clone_template(&n(), &dest).unwrap();
        assert_eq!(store.root_path(&dest).unwrap(), root);
        let marker: crate::TemplateMarker =
            toml::from_str(&fs::read_to_string(root.join(MARKER_PATH)).unwrap()).unwrap();
        assert_eq!(marker.name, "tmpl-work");
        assert_eq!(marker.recipe.as_deref(), Some("tmpl"));
        assert_eq!(fs::read_to_string(root.join("usr/bin/tool")).unwrap(), "v1");
        assert!(matches!(
            store.clone_template(&n(), &dest),
            Err(TemplateError::Exists { .. })
        ));
        // Changing the clone leaves the source as it was.
        fs::create_dir_all(upper.join("usr/bin")).unwrap();
        owned(&upper.join("usr/bin"), 0);
        owned(&upper.join("usr"), 0);
        fs::write(upper.join("usr/bin/tool"), "clone").unwrap();
        owned(&upper.join("usr/bin/tool"), 0);
        let CommitOutcome::Committed { root: changed, .. } =
            store.commit_changes(&dest, &upper, IDS).unwrap()
        else {
            panic!("not committed");
        };
        assert_eq!(
            fs::read_to_string(changed.join("usr/bin/tool")).unwrap(),
            "clone"
        );
        assert_eq!(
            fs::read_to_string(src_root.join("usr/bin/tool")).unwrap(),
            "v1"
        );
        assert_eq!(store.root_path(&n()).unwrap(), src_root);
    }
}
