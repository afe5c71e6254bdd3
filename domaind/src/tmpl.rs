//! Adapter to the template store and builder (crate bulkhead-templates).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_templates::{Recipe, TemplateError, TemplateStore};
use tracing::info;

fn template_err(e: TemplateError) -> Error {
    match e {
        TemplateError::NotBuilt { .. } | TemplateError::Broken { .. } => {
            Error::TemplateMissing(e.to_string())
        }
        TemplateError::Recipe(_) => Error::InvalidProperty(e.to_string()),
        TemplateError::BuildInProgress { .. }
        | TemplateError::InUse { .. }
        | TemplateError::NothingToRevert { .. }
        | TemplateError::PreviousBroken { .. } => Error::InvalidState(e.to_string()),
        TemplateError::Exists { .. } => Error::AlreadyExists(e.to_string()),
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

/// The VM files of the template root `root` (a `root-<hash16>` directory of the store in
/// `templates_dir`), built first if missing: the recipe named like the template is loaded
/// from `recipes_dir` and must be the one the root was built from. Each progress line goes to
/// `progress`.
pub fn vm_artifacts(
    templates_dir: &Path,
    recipes_dir: &Path,
    root: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<bulkhead_templates::vm::VmArtifacts, Error> {
    let store = TemplateStore::new(templates_dir);
    if let Some(a) = store.vm_artifacts_for_root(root) {
        return Ok(a);
    }
    let name = root
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Backend(format!("{} is not a template root", root.display())))?;
    let name = dn(name)?;
    if let Ok(m) = store.marker(&name, root) {
        if let Some(from) = m.recipe {
            return Err(Error::Backend(format!(
                "template '{name}' is a clone of '{from}': VM domains on a cloned template are not supported yet (its VM files would be built from the recipe); use a sandbox (isolation = \"sandbox\") or a template built from a recipe"
            )));
        }
    }
    let recipe = Recipe::load_named(recipes_dir, &name).map_err(|e| {
        Error::InvalidProperty(format!(
            "the VM files of template '{name}' are not built and its recipe cannot be read: {e} (recipes are read from {})",
            recipes_dir.display()
        ))
    })?;
    match store.status_for(&recipe) {
        bulkhead_templates::TemplateStatus::Ready { root: r, .. } if r == root => {}
        _ => {
            return Err(Error::TemplateMissing(format!(
                "the VM files of template '{name}' are not built and its recipe changed since {} was built; rebuild the template (bulkhead template build {name})",
                root.display()
            )))
        }
    }
    info!(template = %name, "building the VM files");
    store
        .build_vm(&recipe, &mut |p| progress(p.to_string()))
        .map_err(template_err)
}

/// A new template `dest` with a copy (hard links) of `source`'s current root. A linked-in
/// `source` is fine (its tree is only linked to, never changed).
pub fn clone(
    templates_dir: &Path,
    source: &DomainName,
    dest: &DomainName,
) -> Result<PathBuf, Error> {
    TemplateStore::new(templates_dir)
        .clone_template(source, dest)
        .map_err(template_err)
}

/// Makes the template's earlier root current again
/// ([`TemplateStore::revert`]). Returns (the root it replaced, if there was a usable one; the
/// new current root). A linked-in template is refused: its trees are not this domaind's.
pub fn revert(
    templates_dir: &Path,
    name: &DomainName,
) -> Result<(Option<PathBuf>, PathBuf), Error> {
    let store = TemplateStore::new(templates_dir);
    if linked_in(&store, name) {
        return Err(Error::InvalidState(format!(
            "template '{name}' cannot be reverted: its store {} is linked in from elsewhere and not this domaind's to change",
            store.template_dir(name).display()
        )));
    }
    let from = store.root_path(name).ok();
    let to = store.revert(name).map_err(template_err)?;
    Ok((from, to))
}

/// Whether the template's directory is a symlink: a store shared from elsewhere (tests link a
/// cached store in) whose trees this domaind does not own.
pub fn linked_in(store: &TemplateStore, name: &DomainName) -> bool {
    std::fs::symlink_metadata(store.template_dir(name))
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

/// Remove the template's interrupted builds and old roots for which `in_use` is false
/// (never `current`). Returns what was removed. A linked-in template is left alone.
pub fn gc(
    templates_dir: &Path,
    name: &str,
    in_use: &dyn Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, Error> {
    let name = dn(name)?;
    let store = TemplateStore::new(templates_dir);
    if linked_in(&store, &name) {
        return Ok(Vec::new());
    }
    store.gc(&name, in_use).map_err(template_err)
}

/// Remove the template's whole tree; `InvalidState` if `in_use` says a root is in use. A
/// linked-in template loses only its link.
pub fn remove(
    templates_dir: &Path,
    name: &str,
    in_use: &dyn Fn(&Path) -> bool,
) -> Result<(), Error> {
    let name = dn(name)?;
    let store = TemplateStore::new(templates_dir);
    let tdir = store.template_dir(&name);
    if linked_in(&store, &name) {
        return std::fs::remove_file(&tdir)
            .map_err(|e| Error::Io(format!("cannot remove {}: {e}", tdir.display())));
    }
    store.remove(&name, in_use).map_err(template_err)
}
