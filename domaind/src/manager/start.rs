//! Starting a domain: the template it starts from, the start steps, waiting for its agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainConfig, Isolation, StoreError};
use tracing::{info, warn};

use crate::backend::DomainRecord;
use crate::instance::{now_secs, InstanceFile, INSTANCE_VERSION};
use crate::state::{DomainState, Op};
use crate::volume::PrivateVolume;
use crate::{fsutil, tmpl, vm};

use super::agent::bind_channel;
use super::domains::volume_err;
use super::{blocking, io_err, lock, store_err, Instance, Manager, Runtime};

impl Manager {
    /// The template root a domain starts from (follows disposable -> disposable-template ->
    /// template).
    pub(super) fn template_root_for(&self, cfg: &DomainConfig) -> Result<PathBuf, Error> {
        let mut cur = cfg.clone();
        for _ in 0..4 {
            match cur.class {
                DomainClass::Template => {
                    return tmpl::ready_root(&self.cfg.paths.templates_dir(), cur.name.as_str())
                }
                DomainClass::Standalone => {
                    return Err(Error::Backend(format!(
                    "domain '{}' is standalone; standalone sandbox domains are not supported yet",
                    cfg.name
                )))
                }
                _ => {}
            }
            let Some(t) = cur.template.clone() else {
                return Err(Error::TemplateMissing(format!(
                    "domain '{}' has no template; set one (bulkhead prefs {} template TEMPLATE)",
                    cur.name, cur.name
                )));
            };
            cur = match self.store.load(&t) {
                Ok(c) => c,
                Err(StoreError::NotFound { .. }) => {
                    return Err(Error::TemplateMissing(format!(
                        "template '{t}' of domain '{}' does not exist; build it (bulkhead template build {t}) or set another template",
                        cur.name
                    )))
                }
                Err(e) => return Err(store_err(t.as_str(), e)),
            };
        }
        Err(Error::TemplateMissing(format!(
            "the template chain of domain '{}' is too long",
            cfg.name
        )))
    }

    /// Start a halted domain; returns when its agent has connected.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        let dn = self.known(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Start)
            .map_err(Error::InvalidState)?;
        let cfg = self.load(&dn)?;
        self.start_locked(&rt, &cfg).await.map(|_| ())
    }

    pub(super) async fn start_locked(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        cfg: &DomainConfig,
    ) -> Result<Arc<Instance>, Error> {
        let name = cfg.name.as_str();
        self.set_state(rt, DomainState::Starting);
        match self.start_steps(rt, cfg).await {
            Ok(inst) => {
                self.set_state(rt, DomainState::Running);
                info!(
                    domain = name,
                    backend = inst.record.kind(),
                    pid = inst.record.main_pid(),
                    "running"
                );
                Ok(inst)
            }
            Err(e) => {
                warn!(domain = name, error = %e.message(), "start failed");
                lock(&self.roots).remove(name);
                self.set_state(rt, DomainState::Halted);
                Err(e)
            }
        }
    }

    pub(super) async fn start_steps(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        cfg: &DomainConfig,
    ) -> Result<Arc<Instance>, Error> {
        const TOTAL: u32 = 6;
        let name = cfg.name.as_str();
        let paths = &self.cfg.paths;
        let is_vm = cfg.isolation == Isolation::Vm;

        // A VM start first asks whether this host can run VMs at all: fail at once, plainly.
        let mut wait_for_agent = true;
        if is_vm {
            self.progress(name, 0, TOTAL, "checking hardware virtualization");
            let vmm = self.cfg.vmm.clone();
            let probe = blocking(move || vm::probe(&vmm))
                .await?
                .map_err(|e| Error::Backend(format!("cannot start domain '{name}': {e}")))?;
            if !probe.hardware {
                if !self.cfg.allow_software_kvm {
                    return Err(Error::Backend(format!(
                        "cannot start domain '{name}': {}",
                        vm::VmError::NoHardware {
                            reason: probe.reason
                        }
                    )));
                }
                // Test hosts: a guest on software KVM cannot be expected to boot Linux and
                // reach its agent, so the start ends once the VMM runs.
                warn!(domain = name, reason = %probe.reason, "no hardware virtualization; starting the VMM anyway (--allow-software-kvm); not waiting for the agent");
                wait_for_agent = false;
            }
        }

        // A domain with a netvm needs it running first (it is started if halted).
        self.start_netvm_first(cfg).await?;

        self.progress(name, 0, TOTAL, "checking template");
        let template_root = self.template_root_for(cfg)?;
        lock(&self.roots).insert(name.to_owned(), Some(template_root.clone()));

        self.progress(name, 1, TOTAL, "preparing volumes");
        let volume = PrivateVolume::new(paths, &cfg.name);
        let scratch = paths.scratch_dir(&cfg.name);
        let log_file = paths.log_file(&cfg.name);
        let channel_dir = paths.channel_dir(&cfg.name);
        {
            let (scratch, log_file, channel_dir) =
                (scratch.clone(), log_file.clone(), channel_dir.clone());
            let size = cfg.private_size;
            blocking(move || -> Result<(), Error> {
                volume.ensure(size).map_err(volume_err)?;
                if is_vm {
                    volume.mark_vm_written().map_err(volume_err)?;
                } else if volume.vm_written() {
                    return Err(Error::InvalidState(format!(
                        "the private volume {} was written by a VM's guest as a raw disk; dom0 never mounts it, so this domain cannot start as a sandbox (isolation = vm)",
                        volume.image.display()
                    )));
                }
                fsutil::remove_tree(&scratch).map_err(io_err(&scratch.display().to_string()))?;
                std::fs::create_dir_all(&scratch)
                    .map_err(io_err(&scratch.display().to_string()))?;
                if let Some(d) = log_file.parent() {
                    std::fs::create_dir_all(d).map_err(io_err(&d.display().to_string()))?;
                }
                std::fs::create_dir_all(&channel_dir)
                    .map_err(io_err(&channel_dir.display().to_string()))?;
                Ok(())
            })
            .await??;
        }

        self.progress(name, 2, TOTAL, "allocating uid range");
        let slot = {
            let me = self.clone();
            let n = name.to_owned();
            blocking(move || me.alloc_slot(&n)).await??
        };
        let uid_base = bulkhead_sandbox::UID_BASE + slot * bulkhead_sandbox::UID_RANGE;

        self.progress(name, 3, TOTAL, "binding channel");
        let sock = if is_vm {
            vm::agent_socket(&channel_dir)
        } else {
            paths.agent_socket(&cfg.name)
        };
        let listener = match bind_channel(&channel_dir, &sock, uid_base) {
            Ok(l) => l,
            Err(e) => {
                self.release_slot(slot, name);
                return Err(e);
            }
        };

        let launched = if is_vm {
            self.progress(name, 4, TOTAL, "launching VM");
            self.launch_vm(cfg, &template_root, slot).await
        } else {
            self.progress(name, 4, TOTAL, "launching sandbox");
            self.launch_sandbox(cfg, &template_root, slot).await
        };
        let record = match launched {
            Ok(r) => {
                self.slot_launched(slot, name, &r);
                r
            }
            Err(e) => {
                self.release_slot(slot, name);
                let _ = fsutil::remove_file(&sock);
                let tail = fsutil::log_tail(&log_file, 10);
                return Err(Error::Backend(format!(
                    "cannot start domain '{name}': {e}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("\nlast lines of {}:\n{tail}", log_file.display())
                    }
                )));
            }
        };
        // Persist at once: from here on a domaind crash must find this domain again.
        let file = InstanceFile {
            version: INSTANCE_VERSION,
            name: name.to_owned(),
            uid_slot: slot,
            class: cfg.class.to_string(),
            started_at: now_secs(),
            domaind_pid: std::process::id(),
            template_root: Some(template_root),
            record: record.clone(),
        };
        let ipath = paths.instance_file(&cfg.name);
        let written = blocking(move || file.write(&ipath)).await?;
        let inst = self.activate(rt, record, slot, cfg.class, listener)?;
        if let Err(e) = written {
            self.teardown(rt, &inst).await;
            return Err(Error::Io(format!("cannot record domain '{name}': {e}")));
        }

        if let Err(e) = self.net_after_start(cfg, &inst).await {
            // An init that died at once makes every namespace step fail: say why it died.
            let e = if *inst.exited.borrow() {
                init_exited_error(name, &log_file)
            } else {
                e
            };
            self.teardown(rt, &inst).await;
            return Err(e);
        }

        if wait_for_agent {
            self.progress(name, 5, TOTAL, "waiting for agent");
            if let Err(e) = self.wait_agent(&inst, name, &log_file).await {
                self.teardown(rt, &inst).await;
                return Err(e);
            }
        }
        self.progress(name, TOTAL, TOTAL, "running");
        Ok(inst)
    }

    pub(super) async fn wait_agent(
        &self,
        inst: &Instance,
        name: &str,
        log: &Path,
    ) -> Result<(), Error> {
        let mut agent = inst.agent.clone();
        let mut exited = inst.exited.clone();
        let limit = match inst.record {
            DomainRecord::Vm(_) => self.cfg.vm_agent_timeout,
            _ => self.cfg.agent_timeout,
        };
        tokio::select! {
            r = agent.wait_for(|c| c.is_some()) => r.map(|_| ()).map_err(|_| {
                Error::Agent(format!("domain '{name}': the agent link stopped"))
            }),
            _ = exited.wait_for(|e| *e) => Err(init_exited_error(name, log)),
            _ = tokio::time::sleep(limit) => Err(Error::Agent(format!(
                "the agent of domain '{name}' did not connect within {} s; {}",
                limit.as_secs(), start_log_tail(log)
            ))),
        }
    }
}

/// The last lines of a domain's log for a start error, or a note that it is empty.
fn start_log_tail(log: &Path) -> String {
    let t = fsutil::log_tail(log, 10);
    if t.is_empty() {
        format!("(the log {} is empty)", log.display())
    } else {
        format!("last lines of {}:\n{t}", log.display())
    }
}

/// A start that failed because the domain's init exited.
fn init_exited_error(name: &str, log: &Path) -> Error {
    Error::Agent(format!(
        "domain '{name}' stopped while starting (its init exited); {}",
        start_log_tail(log)
    ))
}
