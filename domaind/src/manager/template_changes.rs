//! A template domain's changes to its root, kept as Qubes keeps a template's root volume: while
//! a template runs as a sandbox, its root's writable layer is a directory on disk
//! (`<state>/domains/<name>/root-changes`, not a tmpfs); after it stopped, the template store
//! folds that layer into a new root and makes it current
//! ([`bulkhead_templates::TemplateStore::commit_changes`]). Domains that run keep the root they
//! started on; each next start sees the change.
//!
//! A layer left over from a run whose end this domaind did not see (the host or domaind went
//! down with the template) is dropped at the next start: it may be half-written, and the
//! template's previous root stays.
//!
//! A change can be undone (Qubes' `qvm-volume revert`, `RevertTemplate`): the root the change
//! replaced is kept as the template's `previous` root and becomes current again
//! ([`bulkhead_templates::TemplateStore::revert`]), only while the template is halted.

use std::path::PathBuf;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainConfig, DomainName};
use bulkhead_templates::{CommitOutcome, IdRange, TemplateStore};
use tracing::{info, warn};

use crate::fsutil;
use crate::tmpl;

use super::{blocking, store_err, Manager};
use crate::state::DomainState;

/// Name of the layer's directory in the domain's state directory.
const ROOT_CHANGES: &str = "root-changes";

impl Manager {
    fn root_changes_dir(&self, name: &DomainName) -> PathBuf {
        self.cfg.paths.domain_state_dir(name).join(ROOT_CHANGES)
    }

    /// For a template starting as a sandbox: an empty directory for its root's writable layer.
    /// None for every other domain (their layer is a tmpfs, gone at stop).
    pub(super) fn prepare_root_changes(
        &self,
        cfg: &DomainConfig,
    ) -> Result<Option<PathBuf>, String> {
        if cfg.class != DomainClass::Template {
            return Ok(None);
        }
        let dir = self.root_changes_dir(&cfg.name);
        if dir.exists() {
            warn!(domain = %cfg.name, dir = %dir.display(), "dropping the changes of a template run whose end was not seen; its previous root stays");
            fsutil::remove_tree(&dir)
                .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        }
        // Umask-proof: the launcher refuses a layer others may enter.
        std::fs::create_dir(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Some(dir))
    }

    /// After template `name` (a sandbox that ran in uid slot `slot`) stopped: keep what it
    /// changed in its root as the template's new root. A failure is logged and leaves the
    /// template's root as it was; the layer is removed either way.
    /// Returns whether a new root was made.
    pub(super) async fn keep_template_changes(&self, name: &DomainName, slot: u32) -> bool {
        let dir = self.root_changes_dir(name);
        if !dir.exists() {
            return false;
        }
        self.progress(name.as_str(), 0, 1, "keeping the template's changes");
        let templates = self.cfg.paths.templates_dir();
        let n = name.clone();
        let upper = dir.join("upper");
        let res = blocking(move || -> Result<CommitOutcome, String> {
            let store = TemplateStore::new(&templates);
            if tmpl::linked_in(&store, &n) {
                return Err(format!(
                    "the template's store {} is linked in from elsewhere and not this domaind's to change",
                    store.template_dir(&n).display()
                ));
            }
            if !upper.is_dir() {
                return Ok(CommitOutcome::Unchanged);
            }
            let ids = IdRange {
                base: bulkhead_sandbox::UID_BASE + slot * bulkhead_sandbox::UID_RANGE,
                len: bulkhead_sandbox::UID_RANGE,
            };
            store.commit_changes(&n, &upper, ids).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.message())
        .and_then(|r| r);
        let committed = match res {
            Ok(CommitOutcome::Unchanged) => {
                info!(domain = %name, "template unchanged");
                false
            }
            Ok(CommitOutcome::Committed { root, entries }) => {
                info!(domain = %name, root = %root.display(), entries, "template changes kept: domains based on it see them at their next start");
                true
            }
            Err(e) => {
                warn!(domain = %name, error = %e, "template changes not kept");
                false
            }
        };
        let d = dir.clone();
        let removed = blocking(move || fsutil::remove_tree(&d)).await;
        if !matches!(removed, Ok(Ok(()))) {
            warn!(domain = %name, dir = %dir.display(), "cannot remove the template's old changes");
        }
        self.progress(name.as_str(), 1, 1, "template stopped");
        committed
    }

    /// `RevertTemplate`: template `name` goes back to its root before its last change (or
    /// rebuild, or revert). Refused unless the template is halted: a running template's
    /// changes are folded, when it stops, into a new root made from the root it started on, so
    /// a revert under it would be lost (or its changes land on another base). Domains based on
    /// it that run keep their root (in use, so no collection removes it). Returns the new
    /// root path.
    pub async fn revert_template(&self, name: &DomainName) -> Result<String, Error> {
        match self.store.load(name) {
            Ok(c) if c.class == DomainClass::Template => {}
            Ok(c) => {
                return Err(Error::InvalidProperty(format!(
                    "'{name}' is a domain of class {}, not a template",
                    c.class
                )))
            }
            Err(e) => return Err(store_err(name.as_str(), e)),
        }
        let not_halted = |state: DomainState| {
            Error::InvalidState(format!(
                "template '{name}' is {}; shut it down first (bulkhead shutdown {name}): what changes in it is kept, when it stops, on the root it started on",
                state.as_str()
            ))
        };
        let rt = self.runtime(name);
        if rt.state() != DomainState::Halted {
            return Err(not_halted(rt.state()));
        }
        // Held until the links are switched: the template cannot start meanwhile. Busy means
        // a start, stop or other change of the template is under way.
        let Ok(_op) = rt.op.try_lock() else {
            return Err(Error::InvalidState(format!(
                "template '{name}' is being started, stopped or changed; try again once it is halted"
            )));
        };
        if rt.state() != DomainState::Halted {
            return Err(not_halted(rt.state()));
        }
        let templates = self.cfg.paths.templates_dir();
        let n = name.clone();
        let (from, to) = blocking(move || tmpl::revert(&templates, &n)).await??;
        info!(
            domain = %name,
            from = %from.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            to = %to.display(),
            "template reverted: domains based on it use that root from their next start"
        );
        // warm disposables on the root left behind are replaced
        self.pool.wake();
        Ok(to.display().to_string())
    }

    /// After a domain that ran on `root` stopped: when `root` is no longer its template's
    /// current root, the template's unused roots go.
    pub(super) async fn collect_root_if_old(&self, root: &std::path::Path) {
        let Some(template) = root
            .parent()
            .and_then(|t| t.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| DomainName::new(n).ok())
        else {
            return;
        };
        let current = tmpl::ready_root(&self.cfg.paths.templates_dir(), template.as_str());
        if current.is_ok_and(|c| c != root) {
            self.collect_old_roots(&template).await;
        }
    }

    /// After a change: the template's roots no domain uses any more go (call once the
    /// template itself no longer counts as using its old root).
    pub(super) async fn collect_old_roots(&self, name: &DomainName) {
        let templates = self.cfg.paths.templates_dir();
        let in_use = self.roots_in_use();
        let n = name.clone();
        match blocking(move || tmpl::gc(&templates, n.as_str(), &in_use)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                info!(domain = %name, removed = removed.len(), "old template roots removed")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(domain = %name, error = %e.message(), "cannot remove old template roots")
            }
            Err(e) => {
                warn!(domain = %name, error = %e.message(), "cannot remove old template roots")
            }
        }
    }
}
