//! Starting a domain: a sequence of named steps (check virtualization, start the netvm, check
//! the template, prepare volumes, claim a uid slot, bind the channel, launch, record the
//! instance, network, wait for the agent). Each step fails with a [`StartError`]; what the
//! steps before it did is undone by one [`Rollback`] list, filled in as they succeed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainConfig, DomainName, Isolation, StoreError};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::backend::DomainRecord;
use crate::instance::{now_secs, InstanceFile, INSTANCE_VERSION};
use crate::state::{DomainState, Op};
use crate::volume::PrivateVolume;
use crate::{fsutil, tmpl, vm};

use super::agent::bind_channel;
use super::domains::volume_err;
use super::{blocking, io_err, lock, store_err, Instance, Manager, Runtime};

/// Progress steps a start reports (`Progress` signal: done of total).
pub(super) const START_STEPS: u32 = 6;

/// Why a start failed, by step. [`Error::from`] is the one place it becomes the API error
/// clients see; a step whose cause is already an API error carries it unchanged.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The host cannot run this VM (no hardware virtualization, or the probe failed).
    #[error("cannot start domain '{name}': {reason}")]
    Virtualization { name: String, reason: String },
    /// The domain's netvm did not start.
    #[error("{}", .0.message())]
    Netvm(Error),
    /// No usable template root.
    #[error("{}", .0.message())]
    Template(Error),
    /// The private volume, scratch, log or channel dir could not be prepared.
    #[error("{}", .0.message())]
    Volumes(Error),
    /// No uid slot could be claimed.
    #[error("{}", .0.message())]
    Slot(Error),
    /// The channel socket could not be bound.
    #[error("{}", .0.message())]
    Channel(Error),
    /// The backend (sandbox launcher or VMM) failed; `log` is the log tail, if any.
    #[error("cannot start domain '{name}': {reason}{log}")]
    Launch {
        name: String,
        reason: String,
        log: String,
    },
    /// The instance record could not be written.
    #[error("cannot record domain '{name}': {reason}")]
    Record { name: String, reason: String },
    /// The domain's init exited while its network was set up.
    #[error("domain '{name}' stopped while starting (its init exited)")]
    InitExited { name: String, log: PathBuf },
    /// The domain's network could not be set up.
    #[error("{}", .0.message())]
    Network(Error),
    /// The agent did not connect (timeout, init exited, link stopped).
    #[error("{}", .0.message())]
    Agent(Error),
    /// A blocking task of a step failed.
    #[error("{}", .0.message())]
    Internal(Error),
}

impl StartError {
    /// The step that failed, for the log.
    fn step(&self) -> &'static str {
        match self {
            StartError::Virtualization { .. } => "check virtualization",
            StartError::Netvm(_) => "start netvm",
            StartError::Template(_) => "check template",
            StartError::Volumes(_) => "prepare volumes",
            StartError::Slot(_) => "claim slot",
            StartError::Channel(_) => "bind channel",
            StartError::Launch { .. } => "launch",
            StartError::Record { .. } => "record instance",
            StartError::Internal(_) => "internal task",
            StartError::InitExited { .. } | StartError::Network(_) => "network",
            StartError::Agent(_) => "wait for agent",
        }
    }
}

impl From<StartError> for Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Virtualization { .. } | StartError::Launch { .. } => {
                Error::Backend(e.to_string())
            }
            StartError::Record { .. } => Error::Io(e.to_string()),
            StartError::InitExited { name, log } => init_exited_error(&name, &log),
            StartError::Netvm(e)
            | StartError::Template(e)
            | StartError::Volumes(e)
            | StartError::Slot(e)
            | StartError::Channel(e)
            | StartError::Network(e)
            | StartError::Agent(e)
            | StartError::Internal(e) => e,
        }
    }
}

/// What a failed start undoes: one list, filled in as the steps succeed, run once by
/// [`Manager::start_locked`] (compare `bulkhead_sandbox`'s launch rollback).
#[derive(Default)]
struct Rollback {
    /// The template root was recorded as in use (`Manager::roots`).
    root: bool,
    /// The claimed uid slot.
    slot: Option<u32>,
    /// The bound channel socket.
    socket: Option<PathBuf>,
    /// The tracked instance: its teardown kills the init, removes what it left (cgroups,
    /// scratch, runtime dir with the socket, instance record) and gives the slot back.
    instance: Option<Arc<Instance>>,
}

impl Rollback {
    async fn run(self, mgr: &Manager, rt: &Runtime) {
        if let Some(inst) = &self.instance {
            mgr.teardown(rt, inst).await;
        } else {
            if let Some(slot) = self.slot {
                mgr.release_slot(slot, &rt.name);
            }
            if let Some(sock) = &self.socket {
                let _ = fsutil::remove_file(sock);
            }
        }
        if self.root {
            lock(&mgr.roots).remove(&rt.name);
        }
    }
}

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
    pub async fn start(self: &Arc<Self>, dn: &DomainName) -> Result<(), Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Start)
            .map_err(Error::InvalidState)?;
        let cfg = self.load(dn)?;
        self.start_locked(&rt, &cfg).await.map(|_| ())
    }

    pub(super) async fn start_locked(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        cfg: &DomainConfig,
    ) -> Result<Arc<Instance>, Error> {
        let name = cfg.name.as_str();
        self.set_state(rt, DomainState::Starting);
        let mut rollback = Rollback::default();
        match self.start_steps(rt, cfg, &mut rollback).await {
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
                let step = e.step();
                let e = Error::from(e);
                warn!(domain = name, step, error = %e.message(), "start failed");
                rollback.run(self, rt).await;
                self.set_state(rt, DomainState::Halted);
                Err(e)
            }
        }
    }

    /// The start steps in order; each records in `rollback` what a later failure must undo.
    async fn start_steps(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        cfg: &DomainConfig,
        rollback: &mut Rollback,
    ) -> Result<Arc<Instance>, StartError> {
        let name = cfg.name.as_str();
        let wait_for_agent = self.check_virtualization(cfg).await?;
        // A domain with a netvm needs it running first (it is started if halted).
        self.start_netvm_first(cfg)
            .await
            .map_err(StartError::Netvm)?;
        let template_root = self.check_template(cfg, rollback)?;
        self.prepare_volumes(cfg).await?;
        let slot = self.claim_slot(&cfg.name, rollback).await?;
        let listener = self.bind_agent_channel(cfg, slot, rollback)?;
        let record = self.launch(cfg, &template_root, slot).await?;
        let inst = self
            .record_instance(rt, cfg, record, slot, template_root, listener, rollback)
            .await?;
        self.start_network(cfg, &inst).await?;
        if wait_for_agent {
            self.wait_for_agent(cfg, &inst).await?;
        }
        self.progress(name, START_STEPS, START_STEPS, "running");
        Ok(inst)
    }

    /// A VM start first asks whether this host can run VMs at all: fail at once, plainly.
    /// Returns whether the start waits for the agent.
    async fn check_virtualization(&self, cfg: &DomainConfig) -> Result<bool, StartError> {
        if cfg.isolation != Isolation::Vm {
            return Ok(true);
        }
        let name = cfg.name.as_str();
        self.progress(name, 0, START_STEPS, "checking hardware virtualization");
        let vmm = self.cfg.vmm.clone();
        let probe = blocking(move || vm::probe(&vmm))
            .await
            .map_err(StartError::Internal)?
            .map_err(|e| StartError::Virtualization {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        if probe.hardware {
            return Ok(true);
        }
        if !self.cfg.allow_software_kvm {
            return Err(StartError::Virtualization {
                name: name.to_owned(),
                reason: vm::VmError::NoHardware {
                    reason: probe.reason,
                }
                .to_string(),
            });
        }
        // Test hosts: a guest on software KVM cannot be expected to boot Linux and reach its
        // agent, so the start ends once the VMM runs.
        warn!(domain = name, reason = %probe.reason, "no hardware virtualization; starting the VMM anyway (--allow-software-kvm); not waiting for the agent");
        Ok(false)
    }

    /// The template root the domain starts from, recorded as in use.
    fn check_template(
        &self,
        cfg: &DomainConfig,
        rollback: &mut Rollback,
    ) -> Result<PathBuf, StartError> {
        let name = cfg.name.as_str();
        self.progress(name, 0, START_STEPS, "checking template");
        let template_root = self.template_root_for(cfg).map_err(StartError::Template)?;
        lock(&self.roots).insert(cfg.name.clone(), Some(template_root.clone()));
        rollback.root = true;
        Ok(template_root)
    }

    /// The private volume (made or grown), a fresh scratch dir, the log and channel dirs.
    async fn prepare_volumes(&self, cfg: &DomainConfig) -> Result<(), StartError> {
        self.progress(cfg.name.as_str(), 1, START_STEPS, "preparing volumes");
        let paths = &self.cfg.paths;
        let is_vm = cfg.isolation == Isolation::Vm;
        let volume = PrivateVolume::new(paths, &cfg.name);
        let scratch = paths.scratch_dir(&cfg.name);
        let log_file = paths.log_file(&cfg.name);
        let channel_dir = paths.channel_dir(&cfg.name);
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
            std::fs::create_dir_all(&scratch).map_err(io_err(&scratch.display().to_string()))?;
            if let Some(d) = log_file.parent() {
                std::fs::create_dir_all(d).map_err(io_err(&d.display().to_string()))?;
            }
            std::fs::create_dir_all(&channel_dir)
                .map_err(io_err(&channel_dir.display().to_string()))?;
            Ok(())
        })
        .await
        .and_then(|r| r)
        .map_err(StartError::Volumes)
    }

    /// A host-wide uid slot, given back by the rollback.
    async fn claim_slot(
        self: &Arc<Self>,
        name: &DomainName,
        rollback: &mut Rollback,
    ) -> Result<u32, StartError> {
        self.progress(name.as_str(), 2, START_STEPS, "allocating uid range");
        let me = self.clone();
        let n = name.clone();
        let slot = blocking(move || me.alloc_slot(&n))
            .await
            .and_then(|r| r)
            .map_err(StartError::Slot)?;
        rollback.slot = Some(slot);
        Ok(slot)
    }

    /// The listening socket of the domain's channel, owned by the slot's root uid; removed by
    /// the rollback.
    fn bind_agent_channel(
        &self,
        cfg: &DomainConfig,
        slot: u32,
        rollback: &mut Rollback,
    ) -> Result<UnixListener, StartError> {
        self.progress(cfg.name.as_str(), 3, START_STEPS, "binding channel");
        let paths = &self.cfg.paths;
        let channel_dir = paths.channel_dir(&cfg.name);
        let sock = if cfg.isolation == Isolation::Vm {
            vm::agent_socket(&channel_dir)
        } else {
            paths.agent_socket(&cfg.name)
        };
        let uid_base = bulkhead_sandbox::UID_BASE + slot * bulkhead_sandbox::UID_RANGE;
        let listener = bind_channel(&channel_dir, &sock, uid_base).map_err(StartError::Channel)?;
        rollback.socket = Some(sock);
        Ok(listener)
    }

    /// The backend: the sandbox launcher or the VMM; the launched init goes into the slot's
    /// claim.
    async fn launch(
        self: &Arc<Self>,
        cfg: &DomainConfig,
        template_root: &Path,
        slot: u32,
    ) -> Result<DomainRecord, StartError> {
        let name = cfg.name.as_str();
        let launched = if cfg.isolation == Isolation::Vm {
            self.progress(name, 4, START_STEPS, "launching VM");
            self.launch_vm(cfg, template_root, slot).await
        } else {
            self.progress(name, 4, START_STEPS, "launching sandbox");
            self.launch_sandbox(cfg, template_root, slot).await
        };
        match launched {
            Ok(r) => {
                self.slot_launched(slot, &cfg.name, &r);
                Ok(r)
            }
            Err(reason) => {
                let log_file = self.cfg.paths.log_file(&cfg.name);
                let tail = fsutil::log_tail(&log_file, 10);
                Err(StartError::Launch {
                    name: name.to_owned(),
                    reason,
                    log: if tail.is_empty() {
                        String::new()
                    } else {
                        format!("\nlast lines of {}:\n{tail}", log_file.display())
                    },
                })
            }
        }
    }

    /// Persist the instance record at once (from here on a domaind crash must find this
    /// domain again) and track the instance; from here the rollback is its teardown.
    #[allow(clippy::too_many_arguments)]
    async fn record_instance(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        cfg: &DomainConfig,
        record: DomainRecord,
        slot: u32,
        template_root: PathBuf,
        listener: UnixListener,
        rollback: &mut Rollback,
    ) -> Result<Arc<Instance>, StartError> {
        let name = cfg.name.as_str();
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
        let ipath = self.cfg.paths.instance_file(&cfg.name);
        let written = blocking(move || file.write(&ipath)).await;
        let inst = self
            .activate(rt, record, slot, cfg.class, listener)
            .map_err(StartError::Internal)?;
        rollback.instance = Some(inst.clone());
        match written {
            Ok(Ok(())) => Ok(inst),
            Ok(Err(e)) => Err(StartError::Record {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) => Err(StartError::Internal(e)),
        }
    }

    /// The domain's network: its netvm link, or its uplink if it serves as a netvm.
    async fn start_network(
        self: &Arc<Self>,
        cfg: &DomainConfig,
        inst: &Arc<Instance>,
    ) -> Result<(), StartError> {
        self.net_after_start(cfg, inst).await.map_err(|e| {
            // An init that died at once makes every namespace step fail: say why it died.
            if *inst.exited.borrow() {
                StartError::InitExited {
                    name: cfg.name.to_string(),
                    log: self.cfg.paths.log_file(&cfg.name),
                }
            } else {
                StartError::Network(e)
            }
        })
    }

    /// The domain's agent connects (bounded by the agent timeout; the init must not exit).
    async fn wait_for_agent(&self, cfg: &DomainConfig, inst: &Instance) -> Result<(), StartError> {
        let name = cfg.name.as_str();
        self.progress(name, 5, START_STEPS, "waiting for agent");
        let log_file = self.cfg.paths.log_file(&cfg.name);
        self.wait_agent(inst, name, &log_file)
            .await
            .map_err(StartError::Agent)
    }

    async fn wait_agent(&self, inst: &Instance, name: &str, log: &Path) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_become_the_api_errors_clients_saw() {
        let api = |e: StartError| Error::from(e);
        assert!(matches!(
            api(StartError::Launch {
                name: "w".into(),
                reason: "boom".into(),
                log: "\nlast lines of l:\nx".into(),
            }),
            Error::Backend(m) if m == "cannot start domain 'w': boom\nlast lines of l:\nx"
        ));
        assert!(matches!(
            api(StartError::Virtualization { name: "w".into(), reason: "no KVM".into() }),
            Error::Backend(m) if m == "cannot start domain 'w': no KVM"
        ));
        assert!(matches!(
            api(StartError::Record { name: "w".into(), reason: "disk full".into() }),
            Error::Io(m) if m == "cannot record domain 'w': disk full"
        ));
        assert!(matches!(
            api(StartError::InitExited { name: "w".into(), log: "/nonexistent/w.log".into() }),
            Error::Agent(m) if m == "domain 'w' stopped while starting (its init exited); (the log /nonexistent/w.log is empty)"
        ));
        // a step whose cause is an API error passes it on unchanged
        assert!(matches!(
            api(StartError::Template(Error::TemplateMissing("t".into()))),
            Error::TemplateMissing(m) if m == "t"
        ));
        assert!(matches!(
            api(StartError::Volumes(Error::InvalidState("v".into()))),
            Error::InvalidState(m) if m == "v"
        ));
    }
}
