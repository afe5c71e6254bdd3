//! Templates as a user handles them (Qubes' `qvm-template`): the list of installed templates
//! and available recipes, clones, and the template domain a build or a clone registers.

use std::path::Path;

use bulkhead_api::{Error, TemplateInfo};
use bulkhead_domain::{DomainClass, DomainConfig, DomainName, Label, StoreError};
use bulkhead_templates::{Recipe, TemplateStatus, TemplateStore};
use tracing::info;

use crate::tmpl;
use crate::volume::PrivateVolume;

use super::domains::volume_err;
use super::{blocking, store_err, Manager};

impl Manager {
    /// Registers `dn` as a template domain (its tree at `root` is built): a no-op when it is
    /// one; `AlreadyExists` when another kind of domain has the name.
    pub(super) async fn register_template_domain(
        &self,
        dn: &DomainName,
        root: &Path,
    ) -> Result<(), Error> {
        let name = dn.as_str();
        let _cl = self.config_lock.lock().await;
        match self.store.load(dn) {
            Ok(c) if c.class == DomainClass::Template => Ok(()),
            Ok(c) => Err(Error::AlreadyExists(format!(
                "template '{name}' was made at {} but a domain of class {} has that name; remove or rename it to register the template",
                root.display(),
                c.class
            ))),
            Err(StoreError::NotFound { .. }) => {
                let cfg = DomainConfig::new(dn.clone(), DomainClass::Template, Label::Black, None)
                    .map_err(|e| Error::InvalidProperty(e.to_string()))?;
                let volume = PrivateVolume::new(&self.cfg.paths, dn);
                let store = self.store.clone();
                self.store_write(move || -> Result<(), Error> {
                    volume.ensure(cfg.private_size).map_err(volume_err)?;
                    store.save(&cfg).map_err(|e| store_err(cfg.name.as_str(), e))
                })
                .await??;
                info!(template = name, "template domain registered");
                Ok(())
            }
            Err(e) => Err(store_err(name, e)),
        }
    }

    /// `ListTemplates`: every template domain and every recipe, with the state of its tree.
    pub async fn list_templates(&self) -> Result<Vec<TemplateInfo>, Error> {
        let registered: Vec<String> = self
            .list()
            .into_iter()
            .filter(|d| d.class == DomainClass::Template.to_string())
            .map(|d| d.name)
            .collect();
        let templates = self.cfg.paths.templates_dir();
        let recipes = self.cfg.recipes_dir.clone();
        blocking(move || list(&templates, &recipes, &registered)).await
    }

    /// `CloneTemplate`: a new template with a copy of `source`'s current root.
    pub async fn clone_template(
        &self,
        source: &DomainName,
        dest: &DomainName,
    ) -> Result<String, Error> {
        match self.store.load(source) {
            Ok(c) if c.class == DomainClass::Template => {}
            Ok(c) => {
                return Err(Error::InvalidProperty(format!(
                    "'{source}' is a domain of class {}, not a template",
                    c.class
                )))
            }
            Err(e) => return Err(store_err(source.as_str(), e)),
        }
        if self.store.load(dest).is_ok() {
            return Err(Error::AlreadyExists(format!("domain '{dest}' exists")));
        }
        let templates = self.cfg.paths.templates_dir();
        let (s, d) = (source.clone(), dest.clone());
        let root = blocking(move || tmpl::clone(&templates, &s, &d)).await??;
        self.register_template_domain(dest, &root).await?;
        Ok(root.display().to_string())
    }
}

/// The rows of `ListTemplates` (blocking: reads the store and the recipes).
fn list(templates: &Path, recipes: &Path, registered: &[String]) -> Vec<TemplateInfo> {
    let store = TemplateStore::new(templates);
    let mut names: Vec<String> = registered.to_vec();
    if let Ok(entries) = std::fs::read_dir(recipes) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = file.strip_suffix(".toml") {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_owned());
                }
            }
        }
    }
    names.sort();
    names
        .into_iter()
        .filter_map(|n| DomainName::new(&n).ok())
        .map(|dn| {
            row(
                &store,
                recipes,
                &dn,
                registered.iter().any(|r| r == dn.as_str()),
            )
        })
        .collect()
}

fn row(store: &TemplateStore, recipes: &Path, dn: &DomainName, registered: bool) -> TemplateInfo {
    let mut info = TemplateInfo {
        name: dn.to_string(),
        state: String::new(),
        recipe: String::new(),
        root: String::new(),
        detail: String::new(),
        built_at: 0,
        changed_at: 0,
    };
    match store.status(dn) {
        TemplateStatus::Missing => {
            info.recipe = dn.to_string();
            info.state = if registered { "not built" } else { "available" }.into();
        }
        TemplateStatus::Broken { reason } => {
            info.state = "broken".into();
            info.detail = reason;
        }
        TemplateStatus::Ready { root, .. } | TemplateStatus::Stale { root, .. } => {
            info.root = root.display().to_string();
            match store.marker(dn, &root) {
                Ok(m) => {
                    info.recipe = m.recipe.clone().unwrap_or_else(|| dn.to_string());
                    info.built_at = m.built_at;
                    info.changed_at = m.changed_at.unwrap_or(0);
                    let stale = DomainName::new(&info.recipe)
                        .ok()
                        .and_then(|r| Recipe::load_named(recipes, &r).ok())
                        .is_some_and(|r| r.hash() != m.hash);
                    info.state = if stale {
                        "stale"
                    } else if m.changed_at.is_some() {
                        "changed"
                    } else {
                        "ready"
                    }
                    .into();
                    if !registered {
                        info.detail = "built but not registered as a domain".into();
                    }
                }
                Err(reason) => {
                    info.state = "broken".into();
                    info.detail = reason;
                }
            }
        }
    }
    info
}
