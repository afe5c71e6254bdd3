use std::path::PathBuf;

use crate::recipe::RecipeError;

/// Errors of the template store and builder.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name:?} is not built; build it with `bulkhead template build {name}`")]
    NotBuilt { name: String },
    #[error(
        "template {name:?} is unusable: {reason}; rebuild it with `bulkhead template build {name}`"
    )]
    Broken { name: String, reason: String },
    #[error("template {name:?} is being built by another process (lock {} held)", lock.display())]
    BuildInProgress { name: String, lock: PathBuf },
    #[error(
        "no apt source for suite {suite:?} found in {}; configure apt on the host (e.g. a deb822 file in /etc/apt/sources.list.d/) for that suite",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoAptSources {
        suite: String,
        searched: Vec<PathBuf>,
    },
    #[error("cannot run {program}: {source} (is it installed? `apt-get install mmdebstrap`)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}); full log: {}\nlast lines:\n{tail}", log.display())]
    BuildFailed {
        program: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the built tree {} is not usable: {problem}; full log: {}", root.display(), log.display())]
    Verify {
        root: PathBuf,
        log: PathBuf,
        problem: String,
    },
    #[error("the template's changes were not kept ({}: {reason}); the template's root stays as it was", path.display())]
    ChangesRefused { path: PathBuf, reason: String },
    #[error("template {name:?} already exists")]
    Exists { name: String },
    #[error("{} is used by a running domain; stop it first", root.display())]
    InUse { root: PathBuf },
    /// [`crate::TemplateStore::revert`] with no earlier root to go back to.
    #[error("nothing to revert: {name} has no earlier root; {why}")]
    NothingToRevert { name: String, why: &'static str },
    /// [`crate::TemplateStore::revert`]: the earlier root cannot be used.
    #[error(
        "cannot revert {name}: its earlier root is unusable ({reason}); the current root stays"
    )]
    PreviousBroken { name: String, reason: String },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl TemplateError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> TemplateError {
        let path = path.into();
        move |source| TemplateError::Io {
            path,
            action,
            source,
        }
    }
}
