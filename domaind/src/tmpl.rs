//! Adapter to the template store and builder (crate bulkhead-templates).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use bulkhead_domain::DomainName;
use bulkhead_templates::{Recipe, TemplateError, TemplateStore};
use tracing::info;

use crate::api::Error;

fn template_err(e: TemplateError) -> Error {
    match e {
        TemplateError::NotBuilt { .. } | TemplateError::Broken { .. } => {
            Error::TemplateMissing(e.to_string())
        }
        TemplateError::Recipe(_) => Error::InvalidProperty(e.to_string()),
        TemplateError::BuildInProgress { .. } | TemplateError::InUse { .. } => {
            Error::InvalidState(e.to_string())
        }
        TemplateError::Io { .. } => Error::Io(e.to_string()),
        other => Error::Backend(other.to_string()),
    }
}

fn dn(name: &str) -> Result<DomainName, Error> {
    DomainName::new(name).map_err(|e| Error::InvalidName(e.to_string()))
}

/// The root tree of a built template (the resolved `root-<hash>`, so a rebuild does not
/// change it under a running domain).
pub fn ready_root(templates_dir: &Path, name: &str) -> Result<PathBuf, Error> {
    TemplateStore::new(templates_dir)
        .root_path(&dn(name)?)
        .map_err(template_err)
}

/// Build recipe `<recipes_dir>/<name>.toml` into the store, writing one human line per
/// progress event to `progress` (write errors are ignored: the caller may have gone).
/// Returns the root path.
pub fn build(
    recipes_dir: &Path,
    templates_dir: &Path,
    name: &str,
    progress: OwnedFd,
) -> Result<PathBuf, Error> {
    let name = dn(name)?;
    let recipe = Recipe::load_named(recipes_dir, &name).map_err(|e| {
        Error::InvalidProperty(format!(
            "{e} (recipes are read from {})",
            recipes_dir.display()
        ))
    })?;
    let mut out = std::fs::File::from(progress);
    let store = TemplateStore::new(templates_dir);
    info!(template = %name, "building template");
    let root = store
        .build(&recipe, &mut |p| {
            let _ = writeln!(out, "{p}");
        })
        .map_err(template_err)?;
    Ok(root)
}
