//! Disposables: creating one from a base, running a command in it, destroying it (the warm
//! pool is in [`super::pool`]).

use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainConfig, DomainName};
use tracing::{error, info};

use crate::state::DomainState;
use crate::volume::PrivateVolume;

use super::{lock, store_err, CallerGone, Manager, Stdio};

impl Manager {
    pub(super) async fn discard_disposable(&self, dn: &DomainName) {
        let name = dn.as_str();
        if self.pool.forget(dn) {
            info!(domain = name, "a warm disposable ended; the pool refills");
            self.pool.wake();
        }
        if let Err(e) = self.remove_data(dn).await {
            error!(domain = name, error = %e.message(), "cannot remove disposable");
        } else {
            info!(domain = name, "disposable removed");
        }
        lock(&self.domains).remove(dn);
        // Whatever removed it (its call ended, a kill, its init exiting, a failed start,
        // recovery), its live-disposable slot is free again.
        self.limits.release(dn);
        // A handed-out warm disposable: its replacement starts now that it is gone.
        self.pool.returned(dn);
    }

    /// Create a disposable from `base` (a disposable-template or a template).
    pub(crate) async fn create_disposable(&self, bn: &DomainName) -> Result<DomainName, Error> {
        let base = bn.as_str();
        let _cl = self.config_lock.lock().await;
        let bcfg = self.load(bn)?;
        let template = match bcfg.class {
            DomainClass::DisposableTemplate | DomainClass::Template => bn.clone(),
            other => {
                return Err(Error::InvalidProperty(format!(
                    "domain '{base}' is of class {other}; a disposable needs a disposable-template or a template"
                )))
            }
        };
        // The base's private volume is copied; a running base could change it under the copy
        // (and swap files for links), so it must be halted, and its lifecycle lock is held
        // until the copy is done so a Start cannot race it. (No snapshot of a running base:
        // a dvm template is meant to be shut down while disposables are made from it.)
        let base_rt = self.runtime(bn);
        let _base_op = base_rt.op.lock().await;
        if base_rt.state().is_active() {
            return Err(Error::InvalidState(format!(
                "{base} is {}; shut it down to use it as a disposable template (bulkhead shutdown {base})",
                base_rt.state().as_str()
            )));
        }
        let running: Vec<DomainName> = lock(&self.domains).keys().cloned().collect();
        let store = self.store.clone();
        let dn = bulkhead_domain::new_disposable_name(&|n: &str| {
            running.iter().any(|r| r == n)
                || DomainName::new(n).map(|d| store.exists(&d)).unwrap_or(true)
        })
        .map_err(|e| Error::Backend(e.to_string()))?;
        // The disposable's template is its base: a disposable-template (whose private volume
        // seeds it) or directly a template.
        let mut cfg = DomainConfig::new(
            dn.clone(),
            DomainClass::Disposable,
            bcfg.label,
            Some(template),
        )
        .map_err(|e| Error::InvalidProperty(format!("disposable of '{base}': {e}")))?;
        cfg.memory = bcfg.memory;
        cfg.vcpus = bcfg.vcpus;
        cfg.isolation = bcfg.isolation;
        cfg.netvm = bcfg.netvm.clone();
        cfg.private_size = bcfg.private_size;
        let from = PrivateVolume::new(&self.cfg.paths, bn);
        let to = PrivateVolume::new(&self.cfg.paths, &dn);
        let store = self.store.clone();
        self.store_write(move || -> Result<(), Error> {
            from.copy_to(&to, cfg.private_size)
                .map_err(|e| Error::Io(format!("seeding the disposable's private volume: {e}")))?;
            store
                .save(&cfg)
                .map_err(|e| store_err(cfg.name.as_str(), e))
        })
        .await??;
        info!(domain = %dn, base, "disposable created");
        Ok(dn)
    }

    /// Kill a disposable (if running) and remove it with all its data.
    pub(crate) async fn destroy_disposable(self: &Arc<Self>, dn: &DomainName) {
        let rt = self.runtime(dn);
        {
            let _op = rt.op.lock().await;
            if let Some(inst) = rt.instance() {
                self.set_state(&rt, DomainState::Dying);
                self.teardown(&rt, &inst).await;
            }
            self.set_state(&rt, DomainState::Halted);
        }
        let _cl = self.config_lock.lock().await;
        self.discard_disposable(dn).await;
    }

    /// `RunDisposable` (and the desktop's applications in a disposable): returns
    /// (disposable name, exit code). Always on behalf of dom0, whose caps it counts against.
    pub async fn run_disposable(
        self: &Arc<Self>,
        base: &str,
        argv: Vec<String>,
        user: &str,
        io: Stdio,
        caller_gone: CallerGone,
    ) -> Result<(String, i32), Error> {
        if argv.is_empty() {
            return Err(Error::InvalidProperty("no command given".into()));
        }
        let dn = self.disposable_for(base, crate::calls::DOM0).await?;
        let name = dn.to_string();
        let work = async {
            let inst = self.ensure_running(&dn).await?;
            self.exec_in(&inst, &dn, argv, user, io).await
        };
        let res = tokio::select! {
            r = work => r,
            _ = caller_gone => {
                info!(domain = %name, "caller went away; discarding the disposable");
                Err(Error::Agent("the caller disconnected".into()))
            }
        };
        self.destroy_disposable(&dn).await;
        res.map(|code| (name, code))
    }
}
