//! Domain configuration: queries (list, properties, log, console), create, clone, remove,
//! set property, and registering a built template.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::{DomainInfo, Error};
use bulkhead_domain::{DomainClass, DomainConfig, DomainName, Isolation, Label, StoreError};
use tracing::{info, warn};

use crate::backend::DomainRecord;
use crate::state::{DomainState, Op};
use crate::volume::PrivateVolume;
use crate::{fsutil, tmpl, vm};

use super::{blocking, io_err, lock, store_err, Manager};

impl Manager {
    /// Every domain with its state; broken files are listed with state "broken".
    pub fn list(&self) -> Vec<DomainInfo> {
        let (good, bad) = self.store.load_all();
        let mut out: Vec<DomainInfo> = good
            .iter()
            .map(|c| DomainInfo {
                name: c.name.to_string(),
                class: c.class.to_string(),
                state: self.state_of(&c.name).as_str().to_owned(),
                label: c.label.to_string(),
                isolation: c.isolation.to_string(),
                memory_mib: u32::try_from(c.memory).unwrap_or(u32::MAX),
                vcpus: c.vcpus,
                template: c
                    .template
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                netvm: c.netvm.as_ref().map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect();
        for e in bad {
            let Some(stem) = e
                .path()
                .and_then(|p| p.file_stem())
                .and_then(|s| s.to_str())
                .filter(|s| bulkhead_domain::validate_name(s).is_ok())
            else {
                continue;
            };
            out.push(DomainInfo {
                name: stem.to_owned(),
                class: String::new(),
                state: bulkhead_api::state::BROKEN.to_owned(),
                label: String::new(),
                isolation: String::new(),
                memory_mib: 0,
                vcpus: 0,
                template: String::new(),
                netvm: String::new(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn get_properties(&self, dn: &DomainName) -> Result<HashMap<String, String>, Error> {
        let cfg = self.load(dn)?;
        let mut props: HashMap<String, String> = cfg.properties().into_iter().collect();
        props.insert("state".into(), self.state_of(dn).as_str().into());
        if let Some(mode) = self.uplink_mode(&cfg) {
            props.insert("uplink".into(), mode);
        }
        if cfg.class == DomainClass::DisposableTemplate {
            props.extend(self.pool_properties(dn));
        }
        Ok(props)
    }

    pub fn log_path(&self, dn: &DomainName) -> Result<String, Error> {
        self.stored(dn)?;
        Ok(self.cfg.paths.log_file(dn).display().to_string())
    }

    /// `OpenLog`: a read-only descriptor of the domain's log, so callers that may not read
    /// the root-only log directory (bulkhead-admin members) can still read it. The last path
    /// component is not followed if it is a symlink.
    pub fn open_log(&self, dn: &DomainName) -> Result<OwnedFd, Error> {
        let name = dn.as_str();
        self.stored(dn)?;
        let path = self.cfg.paths.log_file(dn);
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(&path)
        {
            Ok(f) => Ok(OwnedFd::from(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Io(format!(
                "domain '{name}' has no log yet (it has not been started): {}",
                path.display()
            ))),
            Err(e) => Err(Error::Io(format!("cannot open {}: {e}", path.display()))),
        }
    }

    /// `OpenConsole`: a write-only, non-blocking descriptor of a running VM domain's console
    /// input FIFO (the VMM holds its read end; once the VMM is gone a write fails with EPIPE).
    pub fn open_console(&self, dn: &DomainName) -> Result<OwnedFd, Error> {
        let name = dn.as_str();
        self.stored(dn)?;
        let rt = self.runtime(dn);
        match rt.instance().map(|i| i.record.clone()) {
            Some(DomainRecord::Vm(_)) => {}
            Some(_) => {
                return Err(Error::InvalidState(format!(
                    "domain '{name}' is a sandbox: it has no serial console (bulkhead run -u root {name} -- bash gives a shell)"
                )))
            }
            None => {
                return Err(Error::InvalidState(format!(
                    "domain '{name}' is not running"
                )))
            }
        }
        let path = self
            .cfg
            .paths
            .runtime_domain_dir(dn)
            .join(vm::CONSOLE_FIFO_NAME);
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| {
                Error::Io(format!(
                    "cannot open the console of '{name}' ({}): {e}",
                    path.display()
                ))
            })
    }

    /// Check that `value` names a domain that may be used as `prop` of a domain of `class`.
    pub(super) fn check_reference(
        &self,
        class: DomainClass,
        prop: &str,
        value: &str,
    ) -> Result<(), Error> {
        let dn = self
            .name(value)
            .map_err(|e| Error::InvalidProperty(format!("{prop}: {}", e.message())))?;
        let target = match self.store.load(&dn) {
            Ok(c) => c,
            Err(StoreError::NotFound { .. }) => {
                return Err(Error::InvalidProperty(format!(
                    "{prop} '{value}' does not exist (see bulkhead ls)"
                )))
            }
            Err(e) => return Err(store_err(value, e)),
        };
        let ok = match prop {
            "template" if class == DomainClass::Disposable => {
                target.class == DomainClass::DisposableTemplate
            }
            "template" => target.class == DomainClass::Template,
            "default_dispvm" => matches!(
                target.class,
                DomainClass::DisposableTemplate | DomainClass::Template
            ),
            _ => true,
        };
        if !ok {
            let want = match (prop, class) {
                ("template", DomainClass::Disposable) => "a disposable-template",
                ("template", _) => "a template",
                _ => "a disposable-template or template",
            };
            return Err(Error::InvalidProperty(format!(
                "{prop} '{value}' is of class {}; it must be {want}",
                target.class
            )));
        }
        Ok(())
    }

    pub(super) fn prop_err(name: &str, e: bulkhead_domain::PropertyError) -> Error {
        Error::InvalidProperty(format!("domain '{name}': {e}"))
    }

    pub async fn create(
        &self,
        dn: &DomainName,
        class: &str,
        template: &str,
        label: &str,
        props: HashMap<String, String>,
    ) -> Result<(), Error> {
        let name = dn.as_str();
        let class: DomainClass = class
            .parse()
            .map_err(|e: bulkhead_domain::ParseEnumError| Error::InvalidProperty(e.to_string()))?;
        let label: Label = if label.is_empty() {
            Label::Red
        } else {
            label
                .parse()
                .map_err(|e: bulkhead_domain::ParseEnumError| {
                    Error::InvalidProperty(e.to_string())
                })?
        };
        let _cl = self.config_lock.lock().await;
        if self.store.exists(dn) {
            return Err(Error::AlreadyExists(format!(
                "a domain named '{name}' already exists"
            )));
        }
        let template = if template.is_empty() {
            None
        } else {
            self.check_reference(class, "template", template)?;
            Some(self.name(template)?)
        };
        let mut cfg = DomainConfig::new(dn.clone(), class, label, template)
            .map_err(|e| Error::InvalidProperty(format!("domain '{name}': {e}")))?;
        let mut keys: Vec<_> = props.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let v = &props[&k];
            if matches!(k.as_str(), "netvm" | "template" | "default_dispvm") && !v.is_empty() {
                self.check_reference(class, &k, v)?;
            }
            cfg.set_property(&k, v)
                .map_err(|e| Self::prop_err(name, e))?;
        }
        let volume = PrivateVolume::new(&self.cfg.paths, dn);
        let store = self.store.clone();
        self.store_write(move || -> Result<(), Error> {
            volume.ensure(cfg.private_size).map_err(volume_err)?;
            store
                .save(&cfg)
                .map_err(|e| store_err(cfg.name.as_str(), e))
        })
        .await??;
        info!(domain = name, "created");
        Ok(())
    }

    pub async fn set_property(
        self: &Arc<Self>,
        dn: &DomainName,
        prop: &str,
        value: &str,
    ) -> Result<(), Error> {
        let name = dn.as_str();
        let _cl = self.config_lock.lock().await;
        let mut cfg = self.load(dn)?;
        if matches!(prop, "template" | "isolation") {
            self.state_of(dn)
                .check(name, Op::ChangeStaticProperty)
                .map_err(Error::InvalidState)?;
        }
        if matches!(prop, "netvm" | "template" | "default_dispvm") && !value.is_empty() {
            self.check_reference(cfg.class, prop, value)?;
        }
        if prop == "netvm" && !value.is_empty() {
            self.check_netvm_cycle(dn, value)?;
        }
        let old_netvm = cfg.netvm.clone();
        let old_isolation = cfg.isolation;
        cfg.set_property(prop, value)
            .map_err(|e| Self::prop_err(name, e))?;
        // A VM's guest wrote its private volume as a raw disk: dom0's kernel never mounts
        // such an image, so it cannot become a sandbox's (see crate::volume).
        let volume = PrivateVolume::new(&self.cfg.paths, dn);
        if old_isolation == Isolation::Vm && cfg.isolation != Isolation::Vm && volume.vm_written() {
            return Err(Error::InvalidState(format!(
                "domain '{name}' keeps its private volume in {}, written by its VM's guest as a raw disk; dom0 never mounts such a volume, so the domain cannot become a sandbox. Copy what you need out first (bulkhead-copy) into a new sandbox domain, or keep isolation = vm",
                volume.image.display()
            )));
        }
        if prop == "private_size" {
            let have = blocking({
                let v = volume.clone();
                move || v.image.exists().then(|| v.size_mib()).transpose()
            })
            .await?
            .map_err(volume_err)?;
            if let Some(have) = have.filter(|h| cfg.private_size < *h) {
                return Err(Error::InvalidProperty(format!(
                    "domain '{name}': private_size {} MiB is smaller than its private volume ({have} MiB); a volume only grows",
                    cfg.private_size
                )));
            }
        }
        let new_netvm = cfg.netvm.clone();
        let store = self.store.clone();
        self.store_write(move || {
            store
                .save(&cfg)
                .map_err(|e| store_err(cfg.name.as_str(), e))
        })
        .await??;
        drop(_cl);
        info!(domain = name, prop, value, "property set");
        if prop == "dispvm_pool_size" {
            // Shrinking happens now (so the domain can be removed next); growing in the
            // background.
            self.pool_trim(dn).await;
        }
        if prop == "netvm" && old_netvm != new_netvm && self.state_of(dn).is_active() {
            // A running domain follows its new netvm at once.
            self.net_netvm_changed(dn, new_netvm).await?;
        }
        if prop == format!("features.{}", bulkhead_net::nft::ALLOW_INTER_DOMAIN_FEATURE) {
            // The pairs between clients live in the netvm's ruleset.
            self.net_features_changed(dn).await;
        }
        Ok(())
    }

    pub async fn clone_domain(&self, src: &DomainName, dst: &DomainName) -> Result<(), Error> {
        let (source, dest) = (src.as_str(), dst.as_str());
        let _cl = self.config_lock.lock().await;
        let mut cfg = self.load(src)?;
        // Held until the copy is done, so a Start of the source waits for it.
        let src_rt = self.runtime(src);
        let _src_op = src_rt.op.lock().await;
        let st = src_rt.state();
        st.check(source, Op::ChangeStaticProperty).map_err(|_| {
            Error::InvalidState(format!(
                "domain '{source}' is {}; shut it down before cloning it (bulkhead shutdown {source})",
                st.as_str()
            ))
        })?;
        if self.store.exists(dst) {
            return Err(Error::AlreadyExists(format!(
                "a domain named '{dest}' already exists"
            )));
        }
        cfg.name = dst.clone();
        let from = PrivateVolume::new(&self.cfg.paths, src);
        let to = PrivateVolume::new(&self.cfg.paths, dst);
        let store = self.store.clone();
        self.store_write(move || -> Result<(), Error> {
            from.copy_to(&to, cfg.private_size).map_err(volume_err)?;
            store.save(&cfg).map_err(|e| {
                let _ = fsutil::remove_file(&to.image);
                store_err(cfg.name.as_str(), e)
            })
        })
        .await??;
        info!(source, dest, "cloned");
        Ok(())
    }

    /// Domains that name `name` as template, default_dispvm or netvm.
    pub(super) fn users_of(&self, name: &DomainName) -> Vec<String> {
        let (good, _) = self.store.load_all();
        let mut out = Vec::new();
        for c in good {
            let is = |o: &Option<DomainName>| o.as_ref() == Some(name);
            for (prop, v) in [
                ("template", &c.template),
                ("default_dispvm", &c.default_dispvm),
                ("netvm", &c.netvm),
            ] {
                if is(v) {
                    out.push(format!("{} ({prop})", c.name));
                }
            }
        }
        out
    }

    pub async fn remove(&self, dn: &DomainName) -> Result<(), Error> {
        let name = dn.as_str();
        let _cl = self.config_lock.lock().await;
        self.stored(dn)?;
        let rt = self.runtime(dn);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Remove)
            .map_err(Error::InvalidState)?;
        if matches!(self.store.load(dn), Ok(c) if c.dispvm_pool_size > 0) {
            return Err(Error::InvalidState(format!(
                "domain '{name}' keeps a pool of warm disposables; set its size to 0 first (bulkhead prefs {name} dispvm_pool_size 0)"
            )));
        }
        let users = self.users_of(dn);
        if !users.is_empty() {
            return Err(Error::InvalidState(format!(
                "domain '{name}' is still used by: {}; change those properties first (bulkhead prefs DOMAIN PROPERTY VALUE)",
                users.join(", ")
            )));
        }
        // A template domain takes its built trees with it (refused while a root is in use).
        if matches!(self.store.load(dn), Ok(c) if c.class == DomainClass::Template) {
            let in_use = self.roots_in_use();
            let templates = self.cfg.paths.templates_dir();
            let n = name.to_owned();
            blocking(move || tmpl::remove(&templates, &n, &in_use))
                .await?
                .map_err(|e| match e {
                    Error::InvalidState(m) => Error::InvalidState(format!(
                        "template '{name}' is in use by a running domain ({m}); shut it down first"
                    )),
                    other => other,
                })?;
            info!(template = name, "template tree removed");
        }
        self.remove_data(dn).await?;
        lock(&self.domains).remove(name);
        info!(domain = name, "removed");
        Ok(())
    }

    /// Remove a domain's config file and every file it owns (private, scratch, log, runtime).
    pub(super) async fn remove_data(&self, dn: &DomainName) -> Result<(), Error> {
        let store = self.store.clone();
        let paths = self.cfg.paths.clone();
        let dn = dn.clone();
        // The config file goes last: a domain that is no longer listed has no data left, and
        // one whose removal failed half-way is still listed and can be removed again.
        self.store_write(move || -> Result<(), Error> {
            let state = paths.domain_state_dir(&dn);
            fsutil::remove_tree(&state).map_err(io_err(&state.display().to_string()))?;
            fsutil::remove_runtime_dir(&paths, &dn)
                .map_err(io_err(&paths.runtime_domain_dir(&dn).display().to_string()))?;
            let log = paths.log_file(&dn);
            fsutil::remove_file(&log).map_err(io_err(&log.display().to_string()))?;
            let old = old_log(&log);
            fsutil::remove_file(&old).map_err(io_err(&old.display().to_string()))?;
            match store.remove(&dn) {
                Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_err(dn.as_str(), e)),
            }
        })
        .await?
    }

    /// `BuildTemplate`: build recipe `name`, report progress on `progress`, register the
    /// template domain. Returns the root path.
    pub async fn build_template(
        &self,
        dn: &DomainName,
        progress: OwnedFd,
    ) -> Result<String, Error> {
        let name = dn.as_str();
        // A template that runs keeps its changes, at its stop, on the root current then: a
        // rebuild under it would get them instead of the root they were made on.
        let rt = self.runtime(dn);
        let busy = || {
            Error::InvalidState(format!(
                "template '{name}' is {}; shut it down first (bulkhead shutdown {name}), then build it",
                rt.state().as_str()
            ))
        };
        if rt.state() != DomainState::Halted {
            return Err(busy());
        }
        // held through the build: the template cannot start meanwhile
        let Ok(_op) = rt.op.try_lock() else {
            return Err(Error::InvalidState(format!(
                "template '{name}' is being started, stopped or changed; build it once it is halted"
            )));
        };
        if rt.state() != DomainState::Halted {
            return Err(busy());
        }
        let recipes = self.cfg.recipes_dir.clone();
        let templates = self.cfg.paths.templates_dir();
        let n = name.to_owned();
        let root = blocking(move || tmpl::build(&recipes, &templates, &n, progress)).await??;
        self.register_template_domain(dn, &root).await?;
        // Old roots no starting or running domain uses, and interrupted builds, go now.
        let in_use = self.roots_in_use();
        let templates = self.cfg.paths.templates_dir();
        let n = name.to_owned();
        match blocking(move || tmpl::gc(&templates, &n, &in_use)).await? {
            Ok(removed) => {
                for r in removed {
                    info!(template = name, path = %r.display(), "removed an unused template tree");
                }
            }
            Err(e) => {
                warn!(template = name, error = %e.message(), "template garbage collection failed")
            }
        }
        Ok(root.display().to_string())
    }
}

pub(super) fn volume_err(e: crate::volume::VolumeError) -> Error {
    match e {
        crate::volume::VolumeError::Shrink { .. } => Error::InvalidProperty(e.to_string()),
        _ => Error::Io(e.to_string()),
    }
}

/// The previous generation of a domain log (the sandbox's log writer rotates to it).
fn old_log(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".old");
    PathBuf::from(s)
}
