//! The template store: built root trees under `<state>/templates`, cached by recipe hash.
//!
//! Layout of one template `<dir>/<name>/`:
//! - `build-<hash16>.partial/`  a build in progress (or interrupted: ignored, removed by the
//!   next build or by [`TemplateStore::gc`])
//! - `root-<hash16>/`           a finished tree; its `etc/bulkhead-template` marker (TOML:
//!   name, full hash, builder format, build time) is written before the rename that makes
//!   it a root, so a root without a valid marker is never used
//! - `current -> root-<hash16>` the tree in use, switched atomically (symlink + rename)
//! - `previous -> root-<id>`    the tree `current` pointed to before its last switch by a
//!   change, a rebuild or a revert (see [`TemplateStore::revert`]); absent for a template
//!   built and never changed since
//! - `build.log`                the last build's full output
//! - `apt/<suite>.sources`      the host apt sources the last build used
//! - `.lock`                    flock held while building or collecting garbage
//!
//! Old roots are never removed by [`TemplateStore::build`]: running domains may still use
//! them as their overlay lower layer. [`TemplateStore::gc`] removes every root other than
//! `current` and `previous` for which the caller's `in_use` says no.
//!
//! `previous` is written before `current` is switched (both under the lock), so a crash in
//! between leaves `previous` equal to `current`, which [`TemplateStore::revert`] reports as
//! nothing to revert; the new root, never made current, is then removed by the next `gc`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bulkhead_domain::DomainName;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::TemplateError;
use crate::mmdebstrap::{Mmdebstrap, RootBuilder};
use crate::progress::{BuildProgress, Stage};
use crate::recipe::{Recipe, BUILDER_FORMAT_VERSION};

/// Path of the completion marker inside a root tree.
pub const MARKER_PATH: &str = "etc/bulkhead-template";
const CURRENT: &str = "current";
const CURRENT_TMP: &str = ".current.new";
const PREVIOUS: &str = "previous";
const PREVIOUS_TMP: &str = ".previous.new";
const LOCK: &str = ".lock";
pub(crate) const ROOT_PREFIX: &str = "root-";
pub(crate) const PARTIAL_PREFIX: &str = "build-";
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";
const VM_PREFIX: &str = "vm-";
/// How long [`TemplateStore::revert`] waits for the template's lock (a collection, a
/// commit of another domaind sharing the store).
const REVERT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The marker written into a finished tree (and readable inside domains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMarker {
    pub name: String,
    pub hash: String,
    pub builder_format: u32,
    /// Unix time the build finished.
    pub built_at: u64,
    /// Unix time the last changes made in the template domain were kept (see
    /// [`crate::changes`]); None for a tree as the recipe built it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<u64>,
    /// The tree's directory is `root-<root_id>` (a changed tree); None: `root-<hash16>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// The recipe the tree was built from when it is not the template's own name (a clone,
    /// see [`TemplateStore::clone_template`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

/// The state of a template in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateStatus {
    /// Never built.
    Missing,
    /// Usable; `root` is the real `root-<hash>` directory (not the `current` link).
    Ready { hash: String, root: PathBuf },
    /// Usable, but built from another version of the recipe (`wanted` is the new hash).
    Stale {
        hash: String,
        root: PathBuf,
        wanted: String,
    },
    /// Not usable (half-built, dangling link, marker missing...).
    Broken { reason: String },
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

fn is_hex16(s: &str) -> bool {
    s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit())
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), TemplateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TemplateError::io(dir, "cannot fsync directory"))
}

/// Detach every mount at or below `path` (deepest first), so that removing a tree never
/// descends into a mounted /proc, /sys or /dev left by an interrupted build.
fn detach_mounts_under(path: &Path) -> Result<(), TemplateError> {
    let info = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(s) => s,
        Err(e) => return Err(TemplateError::io("/proc/self/mountinfo", "cannot read")(e)),
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(bulkhead_fsutil::unescape_mountinfo(p)))
        .filter(|p| p.starts_with(path))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        warn!(mount = %p.display(), "detaching leftover mount inside a template tree");
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).map_err(|source| {
            TemplateError::Sys {
                what: format!("cannot detach leftover mount {}", p.display()),
                source,
            }
        })?;
    }
    Ok(())
}

/// Points `<tdir>/current` at `root` atomically (a new symlink renamed over the old).
pub(crate) fn switch_current(tdir: &Path, root: &Path) -> Result<(), TemplateError> {
    switch_link(tdir, CURRENT, CURRENT_TMP, root)
}

/// Points `<tdir>/previous` at `root` atomically, as [`switch_current`] does `current`:
/// called before `current` is switched away from `root`.
pub(crate) fn set_previous(tdir: &Path, root: &Path) -> Result<(), TemplateError> {
    switch_link(tdir, PREVIOUS, PREVIOUS_TMP, root)
}

/// Points `<tdir>/<link>` at `root` (relative, by its file name) through a new symlink `tmp`
/// renamed over it; the directory is synced.
fn switch_link(tdir: &Path, link: &str, tmp: &str, root: &Path) -> Result<(), TemplateError> {
    let tmp = tdir.join(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(TemplateError::io(&tmp, "cannot remove")(e)),
    }
    let rel = root
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.to_owned());
    symlink(&rel, &tmp).map_err(TemplateError::io(&tmp, "cannot create symlink"))?;
    let link = tdir.join(link);
    fs::rename(&tmp, &link).map_err(TemplateError::io(&link, "cannot switch"))?;
    fsync_dir(tdir)
}

/// The root `<tdir>/<link>` names: Ok(None) when there is no such link, Err when it is not a
/// symlink to a `root-<hex16>` name in `tdir`. The root itself is not checked.
fn linked_root(tdir: &Path, link: &str) -> Result<Option<PathBuf>, String> {
    let path = tdir.join(link);
    let target = match fs::read_link(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{} is not a readable symlink ({e})",
                path.display()
            ))
        }
    };
    match target.to_str() {
        Some(t) if t.strip_prefix(ROOT_PREFIX).is_some_and(is_hex16) => Ok(Some(tdir.join(t))),
        _ => Err(format!(
            "{} points to {:?}, not to a root-<hash> directory",
            path.display(),
            target
        )),
    }
}

/// Remove a tree that we created (a partial build or an old root), after detaching any
/// mount inside it.
pub(crate) fn remove_tree(path: &Path) -> Result<(), TemplateError> {
    detach_mounts_under(path)?;
    bulkhead_fsutil::remove_tree(path).map_err(TemplateError::io(path, "cannot remove"))
}

/// The templates directory (`<state>/templates`).
#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
}

impl TemplateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<name>`.
    pub fn template_dir(&self, name: &DomainName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// `<dir>/<name>/build.log`.
    pub fn log_path(&self, name: &DomainName) -> PathBuf {
        self.template_dir(name).join("build.log")
    }

    /// Check a finished root and read its marker.
    pub(crate) fn check_root(
        &self,
        name: &DomainName,
        root: &Path,
    ) -> Result<TemplateMarker, String> {
        let meta = fs::symlink_metadata(root)
            .map_err(|e| format!("{} is missing ({e})", root.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", root.display()));
        }
        if meta.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root",
                root.display(),
                meta.uid()
            ));
        }
        let marker_path = root.join(MARKER_PATH);
        let text = fs::read_to_string(&marker_path).map_err(|e| {
            format!(
                "{} has no completion marker {} ({e})",
                root.display(),
                marker_path.display()
            )
        })?;
        let marker: TemplateMarker = toml::from_str(&text)
            .map_err(|e| format!("{}: bad completion marker: {e}", marker_path.display()))?;
        let dir_hash = root
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(ROOT_PREFIX))
            .unwrap_or("");
        let want = marker
            .root_id
            .as_deref()
            .unwrap_or_else(|| short(&marker.hash));
        if marker.name != name.as_str() || want != dir_hash {
            return Err(format!(
                "{}: marker says template {:?} hash {}, which does not match the directory",
                marker_path.display(),
                marker.name,
                short(&marker.hash)
            ));
        }
        if fs::symlink_metadata(root.join("etc/os-release")).is_err() {
            return Err(format!("{} has no etc/os-release", root.display()));
        }
        Ok(marker)
    }

    fn partials(&self, name: &DomainName) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.template_dir(name)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(PARTIAL_PREFIX) && n.ends_with(PARTIAL_SUFFIX))
            })
            .map(|e| e.path())
            .collect()
    }

    /// The template's state, judged from the files alone.
    pub fn status(&self, name: &DomainName) -> TemplateStatus {
        let tdir = self.template_dir(name);
        let current = tdir.join(CURRENT);
        let target = match fs::read_link(&current) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let partials = self.partials(name);
                return match partials.first() {
                    Some(p) => TemplateStatus::Broken {
                        reason: format!(
                            "half-built: a build was interrupted and never finished ({})",
                            p.display()
                        ),
                    },
                    None => TemplateStatus::Missing,
                };
            }
            Err(e) => {
                return TemplateStatus::Broken {
                    reason: format!("{} is not a readable symlink ({e})", current.display()),
                }
            }
        };
        let target_name = target.to_str().unwrap_or("");
        let ok_name = target_name.strip_prefix(ROOT_PREFIX).is_some_and(is_hex16);
        if !ok_name {
            return TemplateStatus::Broken {
                reason: format!(
                    "{} points to {:?}, not to a root-<hash> directory",
                    current.display(),
                    target
                ),
            };
        }
        let root = tdir.join(target_name);
        match self.check_root(name, &root) {
            Ok(marker) => TemplateStatus::Ready {
                hash: marker.hash,
                root,
            },
            Err(reason) => TemplateStatus::Broken { reason },
        }
    }

    /// The marker of a finished root (what it was built from, when, changed when).
    pub fn marker(&self, name: &DomainName, root: &Path) -> Result<TemplateMarker, String> {
        self.check_root(name, root)
    }

    /// Like [`status`](Self::status), and `Stale` when the built tree is from another
    /// version of `recipe`.
    pub fn status_for(&self, recipe: &Recipe) -> TemplateStatus {
        match self.status(recipe.name()) {
            TemplateStatus::Ready { hash, root } if hash != recipe.hash() => {
                TemplateStatus::Stale {
                    hash,
                    root,
                    wanted: recipe.hash().to_owned(),
                }
            }
            other => other,
        }
    }

    /// The root tree to start a domain on: the resolved `root-<hash>` directory, so that a
    /// later rebuild does not change a running domain's root under it.
    pub fn root_path(&self, name: &DomainName) -> Result<PathBuf, TemplateError> {
        match self.status(name) {
            TemplateStatus::Ready { root, .. } | TemplateStatus::Stale { root, .. } => Ok(root),
            TemplateStatus::Missing => Err(TemplateError::NotBuilt {
                name: name.to_string(),
            }),
            TemplateStatus::Broken { reason } => Err(TemplateError::Broken {
                name: name.to_string(),
                reason,
            }),
        }
    }

    /// [`lock`](Self::lock), waiting up to `limit` while another process holds it (a build
    /// of the VM files, a collection): for work that must not be dropped for a busy lock.
    pub(crate) fn lock_wait(
        &self,
        name: &DomainName,
        limit: std::time::Duration,
    ) -> Result<Flock<File>, TemplateError> {
        let start = Instant::now();
        loop {
            match self.lock(name) {
                Err(TemplateError::BuildInProgress { .. }) if start.elapsed() < limit => {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    pub(crate) fn lock(&self, name: &DomainName) -> Result<Flock<File>, TemplateError> {
        let tdir = self.template_dir(name);
        fs::create_dir_all(&tdir).map_err(TemplateError::io(&tdir, "cannot create"))?;
        let path = tdir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(TemplateError::io(&path, "cannot open lock file"))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                TemplateError::BuildInProgress {
                    name: name.to_string(),
                    lock: path.clone(),
                }
            } else {
                TemplateError::Sys {
                    what: format!("cannot lock {}", path.display()),
                    source: errno,
                }
            }
        })
    }

    /// Build the template with mmdebstrap; see [`build_with`](Self::build_with).
    pub fn build(
        &self,
        recipe: &Recipe,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<PathBuf, TemplateError> {
        self.build_with(recipe, &Mmdebstrap::default(), progress)
    }

    /// Make the template current for `recipe` and return its root. A no-op (one
    /// `Cached` event) when the current root was built from the same recipe hash. Otherwise
    /// interrupted builds are removed, `builder` builds into `build-<hash>.partial`, the tree
    /// is verified, the marker written, the tree synced and renamed to `root-<hash>`, and
    /// `current` switched to it. Old roots stay until [`gc`](Self::gc).
    ///
    /// A rebuild keeps the way back: the usable root it replaces (the recipe's older build,
    /// or that build with the template's changes) becomes `previous`, so
    /// [`revert`](Self::revert) undoes a rebuild as it undoes a change (the template is then
    /// stale again: the recipe differs from its root's).
    pub fn build_with(
        &self,
        recipe: &Recipe,
        builder: &dyn RootBuilder,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<PathBuf, TemplateError> {
        let name = recipe.name();
        // A cache hit needs no lock (`current` is switched atomically once a root is
        // complete): many domainds sharing one store may check it at once.
        if let TemplateStatus::Ready { root, .. } = self.status_for(recipe) {
            progress(BuildProgress::Cached { root: root.clone() });
            return Ok(root);
        }
        let _lock = self.lock(name)?;
        if let TemplateStatus::Ready { root, .. } = self.status_for(recipe) {
            progress(BuildProgress::Cached { root: root.clone() });
            return Ok(root);
        }
        let started = Instant::now();
        let tdir = self.template_dir(name);
        let root = tdir.join(format!("{ROOT_PREFIX}{}", recipe.short_hash()));
        progress(BuildProgress::Started {
            name: name.to_string(),
            hash: recipe.hash().to_owned(),
        });
        for p in self.partials(name) {
            info!(path = %p.display(), "removing interrupted template build");
            remove_tree(&p)?;
        }
        // A root for this very hash may exist from a build that crashed before the switch.
        let reuse = match self.check_root(name, &root) {
            Ok(m) if m.hash == recipe.hash() => true,
            Ok(_) | Err(_) => {
                if root.exists() {
                    info!(path = %root.display(), "removing unfinished root");
                    remove_tree(&root)?;
                }
                false
            }
        };
        let log_path = self.log_path(name);
        if !reuse {
            let partial = tdir.join(format!(
                "{PARTIAL_PREFIX}{}{PARTIAL_SUFFIX}",
                recipe.short_hash()
            ));
            let mut log = File::create(&log_path)
                .map_err(TemplateError::io(&log_path, "cannot create build log"))?;
            let _ = writeln!(
                log,
                "# template {name} recipe {} hash {}",
                recipe.path.display(),
                recipe.hash()
            );
            builder.build_root(recipe, &partial, &tdir, &mut log, progress)?;
            progress(BuildProgress::Stage {
                stage: Stage::Finalize,
                message: "verifying the tree and switching the template to it".into(),
            });
            verify_tree(recipe, &partial).map_err(|problem| TemplateError::Verify {
                root: partial.clone(),
                log: log_path.clone(),
                problem,
            })?;
            let marker = TemplateMarker {
                name: name.to_string(),
                hash: recipe.hash().to_owned(),
                builder_format: BUILDER_FORMAT_VERSION,
                built_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                changed_at: None,
                root_id: None,
                recipe: None,
            };
            let marker_path = partial.join(MARKER_PATH);
            let text = toml::to_string(&marker).map_err(|e| TemplateError::Verify {
                root: partial.clone(),
                log: log_path.clone(),
                problem: format!("cannot serialize marker: {e}"),
            })?;
            fs::write(&marker_path, text)
                .map_err(TemplateError::io(&marker_path, "cannot write marker"))?;
            // Everything in the tree must be on disk before the rename makes it a root.
            let dirf = File::open(&partial).map_err(TemplateError::io(&partial, "cannot open"))?;
            nix::unistd::syncfs(dirf.as_raw_fd()).map_err(|source| TemplateError::Sys {
                what: format!("syncfs {}", partial.display()),
                source,
            })?;
            fs::rename(&partial, &root)
                .map_err(TemplateError::io(&partial, "cannot rename to root"))?;
            fsync_dir(&tdir)?;
        }
        // The usable root this build replaces can be gone back to (`revert`); a broken one
        // is not recorded, and `previous` then stays as it was.
        if let TemplateStatus::Ready { root: old, .. } = self.status(name) {
            if old != root {
                set_previous(&tdir, &old)?;
            }
        }
        switch_current(&tdir, &root)?;
        let seconds = started.elapsed().as_secs_f64();
        info!(template = %name, root = %root.display(), seconds, "template ready");
        progress(BuildProgress::Finished {
            root: root.clone(),
            seconds,
        });
        Ok(root)
    }

    /// Remove what no one needs: interrupted builds, and every root except `current`'s and
    /// `previous`'s (the way back of [`revert`](Self::revert)) for which `in_use(root)` is
    /// false; VM files go with their root. Returns what was removed. Fails with
    /// `BuildInProgress` while a build runs.
    pub fn gc(
        &self,
        name: &DomainName,
        in_use: &dyn Fn(&Path) -> bool,
    ) -> Result<Vec<PathBuf>, TemplateError> {
        let tdir = self.template_dir(name);
        if !tdir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock(name)?;
        let current = fs::read_link(tdir.join(CURRENT)).ok().map(|t| tdir.join(t));
        let previous = fs::read_link(tdir.join(PREVIOUS))
            .ok()
            .map(|t| tdir.join(t));
        let kept = |root: &PathBuf| {
            current.as_ref() == Some(root) || previous.as_ref() == Some(root) || in_use(root)
        };
        let mut removed = Vec::new();
        let entries = fs::read_dir(&tdir).map_err(TemplateError::io(&tdir, "cannot list"))?;
        for entry in entries {
            let entry = entry.map_err(TemplateError::io(&tdir, "cannot list"))?;
            let path = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let partial =
                file_name.starts_with(PARTIAL_PREFIX) && file_name.ends_with(PARTIAL_SUFFIX);
            let old_root = file_name.starts_with(ROOT_PREFIX) && !kept(&path);
            // VM files (`vm-<hash16>`) go with their root; interrupted ones always.
            let old_vm = file_name.strip_prefix(VM_PREFIX).is_some_and(|rest| {
                if rest.ends_with(PARTIAL_SUFFIX) {
                    return true;
                }
                !kept(&tdir.join(format!("{ROOT_PREFIX}{rest}")))
            });
            if partial || old_root || old_vm {
                remove_tree(&path)?;
                removed.push(path);
            } else if file_name == CURRENT_TMP || file_name == PREVIOUS_TMP {
                let _ = fs::remove_file(&path);
            }
        }
        if !removed.is_empty() {
            fsync_dir(&tdir)?;
        }
        Ok(removed)
    }

    /// The root `previous` names (what [`revert`](Self::revert) would go back to), not
    /// checked; None when there is none or the link is not a `root-<hash>` name.
    pub fn previous_root(&self, name: &DomainName) -> Option<PathBuf> {
        linked_root(&self.template_dir(name), PREVIOUS)
            .ok()
            .flatten()
    }

    /// Qubes' `qvm-volume revert` of a template's root: under the template's lock, the root
    /// `current` pointed to before its last switch (by a change kept, a rebuild or a revert,
    /// see `previous` in the module docs) becomes current again, checked as any root is, and
    /// the root it replaces becomes `previous`, so a second revert undoes the first. Both
    /// links change in one step (`renameat2` with `RENAME_EXCHANGE`; where the file system
    /// cannot, `current` is switched first). Returns the new current root.
    ///
    /// The caller makes sure the template is not running (its changes would be folded onto
    /// the root it started on); domains that run keep the root they started on, and neither
    /// root is removed by [`gc`](Self::gc) while both are `current` and `previous`.
    pub fn revert(&self, name: &DomainName) -> Result<PathBuf, TemplateError> {
        let tdir = self.template_dir(name);
        if !tdir.is_dir() {
            return Err(TemplateError::NotBuilt {
                name: name.to_string(),
            });
        }
        let _lock = self.lock_wait(name, REVERT_LOCK_WAIT)?;
        let broken = |reason: String| TemplateError::PreviousBroken {
            name: name.to_string(),
            reason,
        };
        let nothing = |why| TemplateError::NothingToRevert {
            name: name.to_string(),
            why,
        };
        let to = linked_root(&tdir, PREVIOUS)
            .map_err(broken)?
            .ok_or_else(|| {
                nothing(
                    "it was built and never changed since, or cloned and never changed, or last \
                 changed before Bulkhead kept earlier roots",
                )
            })?;
        let from = fs::read_link(tdir.join(CURRENT)).ok().map(|t| tdir.join(t));
        if from.as_ref() == Some(&to) {
            // A crash between the two links of a switch: there is no other root.
            return Err(nothing(
                "the last switch of its root was interrupted (a crash or a power cut) before \
                 the earlier root was recorded; the current root is whole",
            ));
        }
        self.check_root(name, &to).map_err(broken)?;
        let (current, previous) = (tdir.join(CURRENT), tdir.join(PREVIOUS));
        match &from {
            Some(from) => {
                let swapped = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &current,
                    rustix::fs::CWD,
                    &previous,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                match swapped {
                    Ok(()) => fsync_dir(&tdir)?,
                    Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                        // No RENAME_EXCHANGE here: current first, so a crash in between
                        // leaves the template on the root asked for.
                        switch_current(&tdir, &to)?;
                        set_previous(&tdir, from)?;
                    }
                    Err(e) => {
                        return Err(
                            TemplateError::io(&current, "cannot exchange with previous")(e.into()),
                        )
                    }
                }
            }
            None => {
                // No current link (lost, or removed by hand): the earlier root is all there
                // is.
                fs::rename(&previous, &current)
                    .map_err(TemplateError::io(&current, "cannot switch"))?;
                fsync_dir(&tdir)?;
            }
        }
        info!(
            template = %name,
            from = %from.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            to = %to.display(),
            "template reverted to its earlier root"
        );
        Ok(to)
    }

    /// Remove the whole template. Refused (`InUse`) if `in_use` says any of its roots is in use.
    pub fn remove(
        &self,
        name: &DomainName,
        in_use: &dyn Fn(&Path) -> bool,
    ) -> Result<(), TemplateError> {
        let tdir = self.template_dir(name);
        if !tdir.exists() {
            return Ok(());
        }
        let lock = self.lock(name)?;
        let entries = fs::read_dir(&tdir).map_err(TemplateError::io(&tdir, "cannot list"))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let p = entry.path();
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(ROOT_PREFIX))
                && in_use(&p)
            {
                return Err(TemplateError::InUse { root: p });
            }
        }
        remove_tree(&tdir)?;
        drop(lock);
        Ok(())
    }
}

/// Post-build checks: the tree is what domains expect.
fn verify_tree(recipe: &Recipe, root: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(root).map_err(|e| format!("no tree ({e})"))?;
    if meta.uid() != 0 || meta.gid() != 0 {
        return Err(format!(
            "the tree's top is owned by {}:{}, not 0:0",
            meta.uid(),
            meta.gid()
        ));
    }
    if fs::symlink_metadata(root.join("etc/os-release")).is_err() {
        return Err("etc/os-release is missing".into());
    }
    let u = &recipe.spec.user;
    let passwd = fs::read_to_string(root.join("etc/passwd"))
        .map_err(|e| format!("cannot read etc/passwd ({e})"))?;
    let want = format!("{}:x:{}:{}:", u.name, u.uid, u.gid);
    if !passwd.lines().any(|l| l.starts_with(&want)) {
        return Err(format!(
            "etc/passwd has no entry for user {} with uid {} gid {}",
            u.name, u.uid, u.gid
        ));
    }
    let home = root.join(u.home.trim_start_matches('/'));
    let hm = fs::symlink_metadata(&home).map_err(|e| format!("{} is missing ({e})", u.home))?;
    if !hm.is_dir() || hm.uid() != u.uid || hm.gid() != u.gid {
        return Err(format!(
            "{} must be a directory owned by {}:{}",
            u.home, u.uid, u.gid
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::os::unix::fs::chown;

    /// A builder that writes a tiny tree the way mmdebstrap would (for the file logic).
    pub(crate) struct FakeBuilder {
        calls: Cell<u32>,
        fail: bool,
        skip_user: bool,
    }

    impl FakeBuilder {
        pub(crate) fn new() -> Self {
            Self {
                calls: Cell::new(0),
                fail: false,
                skip_user: false,
            }
        }
    }

    impl RootBuilder for FakeBuilder {
        fn build_root(
            &self,
            recipe: &Recipe,
            target: &Path,
            _work_dir: &Path,
            log: &mut dyn Write,
            progress: &mut dyn FnMut(BuildProgress),
        ) -> Result<(), TemplateError> {
            self.calls.set(self.calls.get() + 1);
            fs::create_dir_all(target.join("etc")).unwrap();
            fs::write(target.join("etc/os-release"), "ID=debian\n").unwrap();
            writeln!(log, "fake build").unwrap();
            progress(BuildProgress::Stage {
                stage: Stage::Download,
                message: "downloading".into(),
            });
            if self.fail {
                return Err(TemplateError::BuildFailed {
                    program: "fake".into(),
                    status: "exit status: 1".into(),
                    log: target.to_owned(),
                    tail: "boom".into(),
                });
            }
            if !self.skip_user {
                let u = &recipe.spec.user;
                fs::write(
                    target.join("etc/passwd"),
                    format!(
                        "root:x:0:0::/root:/bin/sh\n{}:x:{}:{}::{}:{}\n",
                        u.name, u.uid, u.gid, u.home, u.shell
                    ),
                )
                .unwrap();
                let home = target.join(u.home.trim_start_matches('/'));
                fs::create_dir_all(&home).unwrap();
                chown(&home, Some(u.uid), Some(u.gid)).unwrap();
            } else {
                fs::write(target.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
            }
            Ok(())
        }
    }

    const RECIPE: &str = "format = 1\nname = \"tmpl\"\nsuite = \"bookworm\"\nvariant = \"minbase\"\nhostname = \"localhost\"\n{extra}[user]\nname = \"user\"\nuid = 1000\ngid = 1000\nhome = \"/home/user\"\nshell = \"/bin/bash\"\n";

    pub(crate) fn recipe(extra: &str) -> Recipe {
        Recipe::from_bytes(
            Path::new("tmpl.toml"),
            RECIPE.replace("{extra}", extra).as_bytes(),
        )
        .unwrap()
    }

    pub(crate) fn root_user() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    pub(crate) fn n() -> DomainName {
        DomainName::new("tmpl").unwrap()
    }

    #[test]
    fn build_cache_switch_and_gc() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root (trees are owned by uid 0 and home by 1000)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        assert_eq!(store.status(&n()), TemplateStatus::Missing);
        assert!(matches!(
            store.root_path(&n()),
            Err(TemplateError::NotBuilt { .. })
        ));
        let b = FakeBuilder::new();
        let r1 = recipe("");
        let mut events = Vec::new();
        let root1 = store.build_with(&r1, &b, &mut |e| events.push(e)).unwrap();
        assert_eq!(b.calls.get(), 1);
        assert!(root1.ends_with(format!("tmpl/root-{}", r1.short_hash())));
        assert!(matches!(
            events.last(),
            Some(BuildProgress::Finished { .. })
        ));
        assert!(events.iter().any(|e| matches!(
            e,
            BuildProgress::Stage {
                stage: Stage::Finalize,
                ..
            }
        )));
        assert_eq!(
            store.status(&n()),
            TemplateStatus::Ready {
                hash: r1.hash().into(),
                root: root1.clone()
            }
        );
        assert_eq!(store.root_path(&n()).unwrap(), root1);
        let marker: TemplateMarker =
            toml::from_str(&fs::read_to_string(root1.join(MARKER_PATH)).unwrap()).unwrap();
        assert_eq!(marker.hash, r1.hash());
        assert!(fs::read_to_string(store.log_path(&n()))
            .unwrap()
            .contains("fake build"));

        // Same recipe: cached, builder not called.
        let mut events = Vec::new();
        assert_eq!(
            store.build_with(&r1, &b, &mut |e| events.push(e)).unwrap(),
            root1
        );
        assert_eq!(b.calls.get(), 1);
        assert_eq!(
            events,
            vec![BuildProgress::Cached {
                root: root1.clone()
            }]
        );

        // Changed recipe: stale, then rebuilt and switched; the old root stays until gc.
        let r2 = recipe("exclude_docs = true\n");
        assert!(matches!(
            store.status_for(&r2),
            TemplateStatus::Stale { .. }
        ));
        let root2 = store.build_with(&r2, &b, &mut |_| {}).unwrap();
        assert_ne!(root1, root2);
        assert_eq!(b.calls.get(), 2);
        assert_eq!(store.root_path(&n()).unwrap(), root2);
        assert!(root1.exists());

        // VM files live next to their root and go with it; interrupted ones always go.
        let vm1 = root1.with_file_name(format!("vm-{}", r1.short_hash()));
        let vm2 = root2.with_file_name(format!("vm-{}", r2.short_hash()));
        let vm_partial = root2.with_file_name("vm-0123456789abcdef.partial");
        for v in [&vm1, &vm2, &vm_partial] {
            fs::create_dir_all(v).unwrap();
        }
        // gc keeps the root the rebuild replaced (the way back of `revert`) with its VM
        // files, and roots in use; it removes them once they are neither.
        assert_eq!(store.previous_root(&n()), Some(root1.clone()));
        let removed = store.gc(&n(), &|_: &Path| false).unwrap();
        assert_eq!(removed, vec![vm_partial.clone()]);
        assert!(
            root1.exists() && vm1.exists(),
            "previous and its VM files stay"
        );
        let r3 = recipe("clean = false\n");
        let root3 = store.build_with(&r3, &b, &mut |_| {}).unwrap();
        assert_eq!(store.previous_root(&n()), Some(root2.clone()));
        let mut removed = store.gc(&n(), &|p: &Path| p == root1).unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        assert!(vm1.exists(), "the VM files of a root in use stay");
        removed = store.gc(&n(), &|_: &Path| false).unwrap();
        removed.sort();
        assert_eq!(removed, vec![root1.clone(), vm1.clone()]);
        assert!(!root1.exists() && root2.exists() && root3.exists());
        assert!(vm2.exists(), "the previous root's VM files stay");

        // remove refuses while in use.
        assert!(matches!(
            store.remove(&n(), &|_: &Path| true),
            Err(TemplateError::InUse { .. })
        ));
        store.remove(&n(), &|_: &Path| false).unwrap();
        assert_eq!(store.status(&n()), TemplateStatus::Missing);
    }

    #[test]
    fn interrupted_build_is_detected_ignored_and_cleaned() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        let r = recipe("");
        // A crash mid-build leaves a partial tree and no current link.
        let partial = d
            .path()
            .join("tmpl")
            .join(format!("build-{}.partial", r.short_hash()));
        fs::create_dir_all(partial.join("etc")).unwrap();
        fs::write(partial.join("etc/os-release"), "x").unwrap();
        match store.status(&n()) {
            TemplateStatus::Broken { reason } => assert!(reason.contains("half-built"), "{reason}"),
            s => panic!("{s:?}"),
        }
        let e = store.root_path(&n()).unwrap_err().to_string();
        assert!(
            e.contains("half-built") && e.contains("bulkhead template build tmpl"),
            "{e}"
        );
        // A failing build leaves only a partial, and the template stays not usable.
        let failing = FakeBuilder {
            fail: true,
            ..FakeBuilder::new()
        };
        assert!(store.build_with(&r, &failing, &mut |_| {}).is_err());
        assert!(!d.path().join("tmpl/current").exists());
        // The next build removes the leftovers and succeeds.
        let root = store
            .build_with(&r, &FakeBuilder::new(), &mut |_| {})
            .unwrap();
        assert!(!partial.exists());
        assert_eq!(store.root_path(&n()).unwrap(), root);

        // A half-built rebuild next to a good root: the good root stays in use.
        let r2 = recipe("clean = false\n");
        let p2 = d
            .path()
            .join("tmpl")
            .join(format!("build-{}.partial", r2.short_hash()));
        fs::create_dir_all(&p2).unwrap();
        assert_eq!(store.root_path(&n()).unwrap(), root);
        let removed = store.gc(&n(), &|_: &Path| false).unwrap();
        assert_eq!(removed, vec![p2]);
    }

    #[test]
    fn verification_failure_is_reported_and_not_switched() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        let b = FakeBuilder {
            skip_user: true,
            ..FakeBuilder::new()
        };
        let e = store.build_with(&recipe(""), &b, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("no entry for user user"), "{e}");
        assert!(
            matches!(store.status(&n()), TemplateStatus::Broken { reason } if reason.contains("half-built")),
            "a tree that failed verification never becomes current"
        );
        assert!(!d.path().join("tmpl/current").exists());
    }

    #[test]
    fn broken_states() {
        if !root_user() {
            bulkhead_test_skip::skip("needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        let r = recipe("");
        let root = store
            .build_with(&r, &FakeBuilder::new(), &mut |_| {})
            .unwrap();
        // Marker removed: the root is not trusted.
        let marker = fs::read(root.join(MARKER_PATH)).unwrap();
        fs::remove_file(root.join(MARKER_PATH)).unwrap();
        assert!(
            matches!(store.status(&n()), TemplateStatus::Broken { reason } if reason.contains("completion marker"))
        );
        // A rebuild of the same recipe replaces the unmarked root.
        let b = FakeBuilder::new();
        assert_eq!(store.build_with(&r, &b, &mut |_| {}).unwrap(), root);
        assert_eq!(b.calls.get(), 1);
        assert!(matches!(store.status(&n()), TemplateStatus::Ready { .. }));
        // Dangling link.
        let current = d.path().join("tmpl/current");
        fs::remove_file(&current).unwrap();
        symlink("root-0123456789abcdef", &current).unwrap();
        assert!(
            matches!(store.status(&n()), TemplateStatus::Broken { reason } if reason.contains("missing"))
        );
        // Link to something else.
        fs::remove_file(&current).unwrap();
        symlink("/etc", &current).unwrap();
        assert!(
            matches!(store.status(&n()), TemplateStatus::Broken { reason } if reason.contains("not to a root"))
        );
        // Crash after the rename but before the switch: the finished root is reused.
        fs::remove_file(&current).unwrap();
        fs::write(root.join(MARKER_PATH), marker).unwrap();
        let b = FakeBuilder::new();
        assert_eq!(store.build_with(&r, &b, &mut |_| {}).unwrap(), root);
        assert_eq!(b.calls.get(), 0, "finished root reused");
    }

    #[test]
    fn concurrent_build_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        let _held = store.lock(&n()).unwrap();
        let e = store
            .build_with(&recipe(""), &FakeBuilder::new(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, TemplateError::BuildInProgress { .. }), "{e}");
    }

    #[test]
    fn a_cache_hit_needs_no_lock() {
        let d = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(d.path());
        let r = recipe("");
        let root = store
            .build_with(&r, &FakeBuilder::new(), &mut |_| {})
            .unwrap();
        // another process builds or collects garbage meanwhile
        let _held = store.lock(&n()).unwrap();
        let b = FakeBuilder::new();
        assert_eq!(store.build_with(&r, &b, &mut |_| {}).unwrap(), root);
        assert_eq!(b.calls.get(), 0);
    }
}
