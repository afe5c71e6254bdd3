//! Adapter to the template store and builder (crate bulkhead-templates).
//!
//! Filled in against the real API once bulkhead-templates lands; until then both calls
//! report that templates are unavailable.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::api::Error;

/// The root tree of a built, ready template.
pub fn ready_root(templates_dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let _ = templates_dir;
    Err(Error::TemplateMissing(format!(
        "template '{name}' is not available (template store not built into this domaind yet)"
    )))
}

/// Build recipe `name`, writing progress lines to `progress`; returns the root path.
pub fn build(
    recipes_dir: &Path,
    templates_dir: &Path,
    name: &str,
    progress: OwnedFd,
) -> Result<PathBuf, Error> {
    let _ = (recipes_dir, templates_dir, progress);
    Err(Error::Backend(format!(
        "cannot build template '{name}': the template builder is not built into this domaind yet"
    )))
}
