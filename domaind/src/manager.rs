//! Domain lifecycle: the state of every domain, start/stop/pause, runs, disposables, config
//! changes and recovery after a domaind restart.
//!
//! Locking: each domain has a lifecycle lock (`Runtime::op`, a tokio mutex) held for the whole
//! of a start, shutdown, kill, pause or unpause, so two lifecycle operations on one domain never
//! interleave; a `Run` holds it only while it makes sure the domain is running and then works
//! on a clone of the agent connection, so many runs proceed at once. Config changes (create,
//! clone, remove, set property, disposable creation) are serialized by `config_lock`, taken
//! before any domain's lifecycle lock when both are needed.
//!
//! Every running domain has two tasks: the exit watcher (polls the init's pidfd and cleans up a
//! domain whose init dies on its own) and the agent link (owns the listening socket, accepts
//! the agent, re-accepts it after a reconnect, publishes the connection in a watch channel).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bulkhead_api::{DomainInfo, Error};
use bulkhead_domain::{
    DomainClass, DomainConfig, DomainName, DomainStore, Isolation, Label, StoreError,
};
use bulkhead_sandbox::{Launcher, SandboxSpec};
use bulkhead_wire::{Connection, ExecRequest};
use nix::fcntl::{FdFlag, Flock, FlockArg};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex};
use tracing::{debug, error, info, warn};

use crate::backend::DomainRecord;
use crate::config::{DaemonConfig, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::instance::{now_secs, InstanceFile, INSTANCE_VERSION};
use crate::slots::{Claim, SlotDir};
use crate::state::{DomainState, Op};
use crate::volume::PrivateVolume;
use crate::{fsutil, stdio, tmpl, vm};

mod limits;
pub use limits::LimitError;
mod pool;
pub use pool::MARKER as POOL_MARKER;
mod netvm;

mod desktop;
pub use desktop::{
    valid_policy_file_name, writable_policy_file_name, APPLICATIONS_DIR, DISPVM_TARGET,
};

/// Name of the launch lock in the runtime dir: every launch holds a shared `flock` on it
/// while the sandbox launcher runs (see [`crate::slots`]).
pub const LAUNCH_LOCK: &str = "launch.lock";
/// How long start-up recovery waits for launchers of a previous domaind to finish.
const LAUNCH_WAIT: Duration = Duration::from_secs(60);
/// Logged while recovery waits for such launchers (tests look for it).
pub const LAUNCH_WAIT_MESSAGE: &str =
    "waiting for sandbox launches of a previous domaind to finish";
/// Limit on the number of processes in a sandbox domain.
pub const DOMAIN_PIDS_MAX: u64 = 4096;
/// A channel peer must finish the wire handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the init to be gone after a kill.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Something the D-Bus layer turns into a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    StateChanged {
        name: String,
        state: &'static str,
    },
    Progress {
        name: String,
        step: String,
        done: u32,
        total: u32,
    },
    /// A call was refused (by the policy, the user, or for want of an answer).
    CallDenied {
        source: String,
        target: String,
        /// `SERVICE` or `SERVICE+ARG`.
        service: String,
        reason: String,
    },
}

/// A future that resolves when the D-Bus caller of a long call has gone away.
pub type CallerGone = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The caller's stdio for a run.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A running domain (sandbox or VM) as domaind tracks it.
pub(crate) struct Instance {
    record: DomainRecord,
    uid_slot: u32,
    class: DomainClass,
    generation: u64,
    agent: watch::Receiver<Option<Connection>>,
    exited: watch::Receiver<bool>,
    tasks: StdMutex<Vec<tokio::task::AbortHandle>>,
}

impl Instance {
    fn abort_tasks(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

#[derive(Default)]
struct RtState {
    state: DomainState,
    inst: Option<Arc<Instance>>,
}

/// Runtime side of one domain.
struct Runtime {
    name: String,
    op: AsyncMutex<()>,
    st: StdMutex<RtState>,
}

impl Runtime {
    fn state(&self) -> DomainState {
        lock(&self.st).state
    }
    fn instance(&self) -> Option<Arc<Instance>> {
        lock(&self.st).inst.clone()
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Map a domain-store error to an API error that names the domain.
fn store_err(name: &str, e: StoreError) -> Error {
    match e {
        StoreError::NotFound { .. } => Error::NoSuchDomain(format!(
            "no domain named '{name}' (see bulkhead ls)"
        )),
        StoreError::Io { .. } => Error::Io(e.to_string()),
        other => Error::InvalidProperty(format!(
            "the config file of domain '{name}' is broken: {other}; fix the file or remove the domain (bulkhead rm {name})"
        )),
    }
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(format!("internal task failed: {e}")))
}

pub struct Manager {
    cfg: DaemonConfig,
    store: DomainStore,
    config_lock: AsyncMutex<()>,
    domains: StdMutex<HashMap<String, Arc<Runtime>>>,
    /// Host-wide uid slot claims (see [`crate::slots`]).
    slots: SlotDir,
    /// Template root of every starting or running domain (`None`: unknown, an adopted
    /// domain of an older domaind); template garbage collection keeps these.
    roots: StdMutex<HashMap<String, Option<PathBuf>>>,
    events: mpsc::UnboundedSender<Event>,
    generation: AtomicU64,
    /// False until start-up recovery is done; calls wait for it.
    ready: watch::Sender<bool>,
    /// Inter-domain calls: policy, ask agent (see [`crate::calls`]).
    calls: crate::calls::Calls,
    /// Warm disposables (see [`pool`]).
    pool: pool::Pool,
    /// Caps on live disposables (see [`limits`]).
    limits: limits::Limits,
    /// Netvm links, uplink, firewall (see [`netvm`]).
    net: netvm::Net,
    /// USB attachments (see [`crate::usb`]).
    usb: crate::usb::UsbState,
}

impl Manager {
    /// A manager for `cfg`; events go to `events`.
    pub fn new(cfg: DaemonConfig, events: mpsc::UnboundedSender<Event>) -> Arc<Self> {
        let store = cfg.paths.domain_store();
        let calls = crate::calls::Calls::new(
            bulkhead_policy::PolicyConfig::from_paths(&cfg.paths),
            cfg.ask_timeout,
            cfg.dom0_default_dispvm.clone(),
        );
        Arc::new(Self {
            calls,
            pool: pool::Pool::new(cfg.pool_memory_margin_mib),
            limits: limits::Limits::new(cfg.disposables),
            usb: crate::usb::UsbState::default(),
            cfg,
            store,
            config_lock: AsyncMutex::new(()),
            domains: StdMutex::new(HashMap::new()),
            slots: SlotDir::new(crate::slots::SLOT_DIR),
            roots: StdMutex::new(HashMap::new()),
            events,
            generation: AtomicU64::new(1),
            ready: watch::Sender::new(false),
            net: netvm::Net::new(),
        })
    }

    /// Wait until [`recover`](Self::recover) has finished.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.cfg
    }

    /// Inter-domain call state (policy, ask agent).
    pub fn calls(&self) -> &crate::calls::Calls {
        &self.calls
    }

    pub(crate) fn store(&self) -> &DomainStore {
        &self.store
    }

    pub(crate) fn usb_state(&self) -> &crate::usb::UsbState {
        &self.usb
    }

    // ----- small helpers -------------------------------------------------------------------

    fn name(&self, s: &str) -> Result<DomainName, Error> {
        DomainName::new(s).map_err(|e| Error::InvalidName(e.to_string()))
    }

    /// A valid name of a domain that has a config file or a live instance.
    fn known(&self, name: &str) -> Result<DomainName, Error> {
        let dn = self.name(name)?;
        if self.store.exists(&dn) || self.state_of(name).is_active() {
            Ok(dn)
        } else {
            Err(Error::NoSuchDomain(format!(
                "no domain named '{name}' (see bulkhead ls)"
            )))
        }
    }

    /// `name` if its config file exists, else the store's NotFound error naming the file.
    fn stored(&self, name: &str) -> Result<DomainName, Error> {
        let dn = self.name(name)?;
        if self.store.exists(&dn) {
            Ok(dn)
        } else {
            Err(store_err(
                name,
                StoreError::NotFound {
                    name: name.into(),
                    path: self.store.path_for(&dn),
                },
            ))
        }
    }

    fn runtime(&self, name: &str) -> Arc<Runtime> {
        lock(&self.domains)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Runtime {
                    name: name.to_owned(),
                    op: AsyncMutex::new(()),
                    st: StdMutex::new(RtState::default()),
                })
            })
            .clone()
    }

    pub(crate) fn state_of(&self, name: &str) -> DomainState {
        lock(&self.domains)
            .get(name)
            .map(|r| r.state())
            .unwrap_or_default()
    }

    fn set_state(&self, rt: &Runtime, state: DomainState) {
        let changed = {
            let mut st = lock(&rt.st);
            let changed = st.state != state;
            st.state = state;
            changed
        };
        if changed {
            if matches!(state, DomainState::Halted | DomainState::Starting) {
                // A disposable template's pool drains while it runs and refills once halted.
                self.pool.wake();
            }
            info!(domain = %rt.name, state = state.as_str(), "state changed");
            let _ = self.events.send(Event::StateChanged {
                name: rt.name.clone(),
                state: state.as_str(),
            });
        }
    }

    fn progress(&self, name: &str, done: u32, total: u32, step: &str) {
        debug!(domain = name, done, total, step, "start progress");
        let _ = self.events.send(Event::Progress {
            name: name.to_owned(),
            step: step.to_owned(),
            done,
            total,
        });
    }

    /// Tell the bus (signal `CallDenied`) that a call was refused.
    pub(crate) fn call_denied(&self, source: &str, target: &str, service: &str, reason: &str) {
        let _ = self.events.send(Event::CallDenied {
            source: source.to_owned(),
            target: target.to_owned(),
            service: service.to_owned(),
            reason: reason.to_owned(),
        });
    }

    fn load(&self, name: &DomainName) -> Result<DomainConfig, Error> {
        self.store
            .load(name)
            .map_err(|e| store_err(name.as_str(), e))
    }

    /// Claim a host-wide uid slot for domain `name` (blocking: takes the slot dir's lock).
    fn alloc_slot(&self, name: &str) -> Result<u32, Error> {
        let claim = Claim::pending(name, &self.cfg.paths.runtime_dir, &self.cfg.cgroup_root);
        // every instance's cgroups: a claim of another instance is judged by its own
        let cgroups = || -> Option<crate::slots::CgroupSet> {
            match bulkhead_sandbox::cgroup::list_all_domains() {
                Ok(v) => Some(
                    v.into_iter()
                        .map(|(root, n)| (root.as_str().to_owned(), n))
                        .collect(),
                ),
                Err(e) => {
                    // Without the list no dead claim can be judged safe: keep them all.
                    warn!(error = %e, "cannot list domain cgroups; treating every claimed uid slot as in use");
                    None
                }
            }
        };
        self.slots
            .claim(&claim, bulkhead_sandbox::MAX_SLOTS, &cgroups)
            .map_err(|e| Error::Backend(e.to_string()))
    }

    /// Record the launched init in the claim of `slot`.
    fn slot_launched(&self, slot: u32, name: &str, record: &DomainRecord) {
        let mut claim = Claim::pending(name, &self.cfg.paths.runtime_dir, &self.cfg.cgroup_root);
        claim.init = Some((record.main_pid(), record.main_start_time()));
        if let Err(e) = self.slots.update(slot, &claim) {
            warn!(domain = name, slot, error = %e, "cannot record the init in the uid slot claim");
        }
    }

    /// Give `slot` back, unless our cgroup of `name` still exists (processes may live in it:
    /// the slot then stays quarantined until that cgroup is gone, see [`crate::slots`]).
    fn release_slot(&self, slot: u32, name: &str) {
        match bulkhead_sandbox::list_orphan_cgroups(&self.cfg.cgroup_root) {
            Ok(v) if !v.iter().any(|n| n == name) => {}
            Ok(_) => {
                warn!(domain = name, slot, "the domain's cgroup still exists; its uid slot stays quarantined until it is gone");
                return;
            }
            Err(e) => {
                warn!(domain = name, slot, error = %e, "cannot list cgroups; the uid slot stays quarantined");
                return;
            }
        }
        if let Err(e) = self.slots.release(slot, name, &self.cfg.paths.runtime_dir) {
            warn!(domain = name, slot, error = %e, "cannot release the uid slot");
        }
    }

    /// A predicate for the template store: is this root used by a starting or running
    /// domain? (An unknown root counts as using every root.)
    fn roots_in_use(&self) -> impl Fn(&Path) -> bool + Send + 'static {
        let roots: Vec<Option<PathBuf>> = lock(&self.roots)
            .values()
            .map(|r| {
                r.as_ref()
                    .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            })
            .collect();
        move |p: &Path| {
            let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
            roots.iter().any(|r| r.as_ref().is_none_or(|r| *r == p))
        }
    }

    // ----- queries -------------------------------------------------------------------------

    /// Every domain with its state; broken files are listed with state "broken".
    pub fn list(&self) -> Vec<DomainInfo> {
        let (good, bad) = self.store.load_all();
        let mut out: Vec<DomainInfo> = good
            .iter()
            .map(|c| DomainInfo {
                name: c.name.to_string(),
                class: c.class.to_string(),
                state: self.state_of(c.name.as_str()).as_str().to_owned(),
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

    pub fn get_properties(&self, name: &str) -> Result<HashMap<String, String>, Error> {
        let dn = self.name(name)?;
        let cfg = self.load(&dn)?;
        let mut props: HashMap<String, String> = cfg.properties().into_iter().collect();
        props.insert("state".into(), self.state_of(name).as_str().into());
        if cfg.class == DomainClass::DisposableTemplate {
            props.extend(self.pool_properties(name));
        }
        Ok(props)
    }

    pub fn log_path(&self, name: &str) -> Result<String, Error> {
        let dn = self.stored(name)?;
        Ok(self.cfg.paths.log_file(&dn).display().to_string())
    }

    /// `OpenLog`: a read-only descriptor of the domain's log, so callers that may not read
    /// the root-only log directory (bulkhead-admin members) can still read it. The last path
    /// component is not followed if it is a symlink.
    pub fn open_log(&self, name: &str) -> Result<OwnedFd, Error> {
        let dn = self.stored(name)?;
        let path = self.cfg.paths.log_file(&dn);
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
    pub fn open_console(&self, name: &str) -> Result<OwnedFd, Error> {
        let dn = self.stored(name)?;
        let rt = self.runtime(name);
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
            .runtime_domain_dir(&dn)
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

    // ----- configuration -------------------------------------------------------------------

    /// Check that `value` names a domain that may be used as `prop` of a domain of `class`.
    fn check_reference(&self, class: DomainClass, prop: &str, value: &str) -> Result<(), Error> {
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

    fn prop_err(name: &str, e: bulkhead_domain::PropertyError) -> Error {
        Error::InvalidProperty(format!("domain '{name}': {e}"))
    }

    pub async fn create(
        &self,
        name: &str,
        class: &str,
        template: &str,
        label: &str,
        props: HashMap<String, String>,
    ) -> Result<(), Error> {
        let dn = self.name(name)?;
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
        if self.store.exists(&dn) {
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
        let volume = PrivateVolume::new(&self.cfg.paths, &dn);
        let store = self.store.clone();
        blocking(move || -> Result<(), Error> {
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
        name: &str,
        prop: &str,
        value: &str,
    ) -> Result<(), Error> {
        let dn = self.name(name)?;
        let _cl = self.config_lock.lock().await;
        let mut cfg = self.load(&dn)?;
        if matches!(prop, "template" | "isolation") {
            self.state_of(name)
                .check(name, Op::ChangeStaticProperty)
                .map_err(Error::InvalidState)?;
        }
        if matches!(prop, "netvm" | "template" | "default_dispvm") && !value.is_empty() {
            self.check_reference(cfg.class, prop, value)?;
        }
        if prop == "netvm" && !value.is_empty() {
            self.check_netvm_cycle(name, value)?;
        }
        let old_netvm = cfg.netvm.clone();
        let old_isolation = cfg.isolation;
        cfg.set_property(prop, value)
            .map_err(|e| Self::prop_err(name, e))?;
        // A VM's guest wrote its private volume as a raw disk: dom0's kernel never mounts
        // such an image, so it cannot become a sandbox's (see crate::volume).
        let volume = PrivateVolume::new(&self.cfg.paths, &dn);
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
        blocking(move || {
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
            self.pool_trim(name).await;
        }
        if prop == "netvm" && old_netvm != new_netvm && self.state_of(name).is_active() {
            // A running domain follows its new netvm at once.
            self.net_netvm_changed(name, new_netvm.map(|n| n.to_string()))
                .await?;
        }
        if prop == format!("features.{}", bulkhead_net::nft::ALLOW_INTER_DOMAIN_FEATURE) {
            // The pairs between clients live in the netvm's ruleset.
            self.net_features_changed(name).await;
        }
        Ok(())
    }

    pub async fn clone_domain(&self, source: &str, dest: &str) -> Result<(), Error> {
        let src = self.name(source)?;
        let dst = self.name(dest)?;
        let _cl = self.config_lock.lock().await;
        let mut cfg = self.load(&src)?;
        // Held until the copy is done, so a Start of the source waits for it.
        let src_rt = self.runtime(source);
        let _src_op = src_rt.op.lock().await;
        let st = src_rt.state();
        st.check(source, Op::ChangeStaticProperty).map_err(|_| {
            Error::InvalidState(format!(
                "domain '{source}' is {}; shut it down before cloning it (bulkhead shutdown {source})",
                st.as_str()
            ))
        })?;
        if self.store.exists(&dst) {
            return Err(Error::AlreadyExists(format!(
                "a domain named '{dest}' already exists"
            )));
        }
        cfg.name = dst.clone();
        let from = PrivateVolume::new(&self.cfg.paths, &src);
        let to = PrivateVolume::new(&self.cfg.paths, &dst);
        let store = self.store.clone();
        blocking(move || -> Result<(), Error> {
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
    fn users_of(&self, name: &str) -> Vec<String> {
        let (good, _) = self.store.load_all();
        let mut out = Vec::new();
        for c in good {
            let is = |o: &Option<DomainName>| o.as_ref().is_some_and(|n| n.as_str() == name);
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

    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let _cl = self.config_lock.lock().await;
        let dn = self.stored(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Remove)
            .map_err(Error::InvalidState)?;
        if matches!(self.store.load(&dn), Ok(c) if c.dispvm_pool_size > 0) {
            return Err(Error::InvalidState(format!(
                "domain '{name}' keeps a pool of warm disposables; set its size to 0 first (bulkhead prefs {name} dispvm_pool_size 0)"
            )));
        }
        let users = self.users_of(name);
        if !users.is_empty() {
            return Err(Error::InvalidState(format!(
                "domain '{name}' is still used by: {}; change those properties first (bulkhead prefs DOMAIN PROPERTY VALUE)",
                users.join(", ")
            )));
        }
        // A template domain takes its built trees with it (refused while a root is in use).
        if matches!(self.store.load(&dn), Ok(c) if c.class == DomainClass::Template) {
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
        self.remove_data(&dn).await?;
        lock(&self.domains).remove(name);
        info!(domain = name, "removed");
        Ok(())
    }

    /// Remove a domain's config file and every file it owns (private, scratch, log, runtime).
    async fn remove_data(&self, dn: &DomainName) -> Result<(), Error> {
        let store = self.store.clone();
        let paths = self.cfg.paths.clone();
        let dn = dn.clone();
        // The config file goes last: a domain that is no longer listed has no data left, and
        // one whose removal failed half-way is still listed and can be removed again.
        blocking(move || -> Result<(), Error> {
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

    // ----- lifecycle -----------------------------------------------------------------------

    /// The template root a domain starts from (follows disposable -> disposable-template ->
    /// template).
    fn template_root_for(&self, cfg: &DomainConfig) -> Result<PathBuf, Error> {
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

    async fn start_locked(
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

    async fn start_steps(
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

    /// The sandbox backend: the `bulkhead-sandbox` launcher makes the sandbox; returns once
    /// its init has exec'd.
    async fn launch_sandbox(
        &self,
        cfg: &DomainConfig,
        template_root: &Path,
        slot: u32,
    ) -> Result<DomainRecord, String> {
        let paths = &self.cfg.paths;
        let spec = SandboxSpec {
            name: cfg.name.to_string(),
            cgroup_root: self.cfg.cgroup_root.clone(),
            template_root: template_root.to_owned(),
            private_image: PrivateVolume::new(paths, &cfg.name).image,
            root_overlay_mib: root_overlay_mib(cfg.memory),
            scratch_dir: paths.scratch_dir(&cfg.name),
            channel_dir: paths.channel_dir(&cfg.name),
            guest_tools_dir: self.cfg.guest_tools_dir.clone(),
            init: vec![bulkhead_domain::GUEST_INIT_PATH.to_owned()],
            log_file: paths.log_file(&cfg.name),
            memory_mib: cfg.memory,
            vcpus: cfg.vcpus,
            pids_max: DOMAIN_PIDS_MAX,
            uid_slot: slot,
            resolv_conf: self.resolv_conf_for(cfg),
        };
        let launcher = Launcher {
            path: self.cfg.launcher.clone(),
        };
        // Held (and inherited by the launcher) while the launcher runs: if domaind dies now,
        // the next one waits for the launcher before it looks for orphan cgroups.
        let launch_lock = {
            let dir = paths.runtime_dir.clone();
            blocking(move || hold_launch_lock(&dir))
                .await
                .map_err(|e| e.message())?
                .map_err(|e| e.message())?
        };
        let launched = blocking(move || bulkhead_sandbox::start(&spec, &launcher)).await;
        drop(launch_lock);
        match launched {
            Ok(Ok(r)) => Ok(DomainRecord::Sandbox(r)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.message()),
        }
    }

    /// The VM backend: VM files (built on first use), disk images, then the confined VMM;
    /// returns once its vCPUs run. See [`crate::vm`].
    async fn launch_vm(
        &self,
        cfg: &DomainConfig,
        template_root: &Path,
        slot: u32,
    ) -> Result<DomainRecord, String> {
        let paths = &self.cfg.paths;
        let name = cfg.name.to_string();
        let templates = paths.templates_dir();
        let recipes = self.cfg.recipes_dir.clone();
        let root = template_root.to_owned();
        let events = self.events.clone();
        let n = name.clone();
        let artifacts = blocking(move || {
            tmpl::vm_artifacts(&templates, &recipes, &root, &mut |line| {
                debug!(domain = %n, "{line}");
                let _ = events.send(Event::Progress {
                    name: n.clone(),
                    step: line,
                    done: 4,
                    total: 6,
                });
            })
        })
        .await
        .map_err(|e| e.message())?
        .map_err(|e| e.message())?;
        // A netvm: the VM's link namespace and tap, linked before the VMM gets the tap.
        let net = self.vm_net_prepare(cfg).await.map_err(|e| e.message())?;
        let has_net = net.is_some();
        let start = vm::VmStart {
            name: name.clone(),
            vmm: self.cfg.vmm.clone(),
            kernel: artifacts.kernel,
            initramfs: artifacts.initramfs,
            root_image: artifacts.root_image,
            private_image: PrivateVolume::new(paths, &cfg.name).image,
            tools_image: paths.scratch_dir(&cfg.name).join("tools.img"),
            channel_dir: paths.channel_dir(&cfg.name),
            log_file: paths.log_file(&cfg.name),
            spec_file: paths.runtime_domain_dir(&cfg.name).join("vm.json"),
            console_input: paths
                .runtime_domain_dir(&cfg.name)
                .join(vm::CONSOLE_FIFO_NAME),
            scratch_dir: paths.scratch_dir(&cfg.name),
            memory_mib: cfg.memory,
            vcpus: cfg.vcpus,
            uid: bulkhead_sandbox::UID_BASE + slot * bulkhead_sandbox::UID_RANGE,
            cgroup_root: self.cfg.cgroup_root.clone(),
            net,
        };
        let tools = self.cfg.guest_tools_dir.clone();
        let launched = blocking(move || -> Result<DomainRecord, vm::VmError> {
            vm::make_tools_image(&tools, &start.tools_image)?;
            vm::make_console_fifo(&start.console_input)?;
            vm::launch(&start).map(DomainRecord::Vm)
        })
        .await
        .map_err(|e| e.message())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if launched.is_err() && has_net {
            // No VMM holds the tap: the link namespace goes with domaind's descriptor.
            self.net_on_stop(&name).await;
        }
        launched
    }

    /// Track a live domain: install it in the runtime and start its watcher and agent link.
    fn activate(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        record: DomainRecord,
        slot: u32,
        class: DomainClass,
        listener: UnixListener,
    ) -> Result<Arc<Instance>, Error> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (agent_tx, agent_rx) = watch::channel(None);
        let (exit_tx, exit_rx) = watch::channel(false);
        let pidfd = record.pidfd();
        let inst = Arc::new(Instance {
            record,
            uid_slot: slot,
            class,
            generation,
            agent: agent_rx,
            exited: exit_rx,
            tasks: StdMutex::new(Vec::new()),
        });
        lock(&rt.st).inst = Some(inst.clone());
        let link = tokio::spawn(agent_link(
            rt.name.clone(),
            listener,
            inst.record.channel_peers(),
            agent_tx,
            Arc::downgrade(self),
        ));
        lock(&inst.tasks).push(link.abort_handle());
        match pidfd {
            Ok(fd) => {
                let me = Arc::downgrade(self);
                let rt2 = rt.clone();
                tokio::spawn(async move {
                    wait_pidfd(fd).await;
                    let _ = exit_tx.send(true);
                    if let Some(me) = me.upgrade() {
                        me.on_init_exit(&rt2, generation).await;
                    }
                });
            }
            Err(e) => {
                // The init is already gone (or pidfds are unavailable): treat it as dead.
                warn!(domain = %rt.name, error = %e, "cannot watch the domain init");
                let _ = exit_tx.send(true);
            }
        }
        Ok(inst)
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

    /// Stop tracking an instance and remove everything it left: processes, cgroups, scratch,
    /// socket, instance.json, uid slot. Idempotent.
    async fn teardown(&self, rt: &Runtime, inst: &Arc<Instance>) {
        debug!(domain = %rt.name, "teardown");
        inst.abort_tasks();
        let record = inst.record.clone();
        let paths = self.cfg.paths.clone();
        let name = rt.name.clone();
        let mut exited = inst.exited.clone();
        let t0 = std::time::Instant::now();
        // Thaw (a frozen task cannot die), then SIGKILL the init: the kernel kills every other
        // process of the domain's pid namespace with it, which is quicker than the cgroup-wide
        // freeze-kill-thaw. kill_all afterwards makes sure the cgroup is empty.
        if !*exited.borrow() {
            let rec = record.clone();
            let _ = blocking(move || {
                let _ = rec.thaw();
                rec.signal_main(Signal::SIGKILL)
            })
            .await;
            let _ = tokio::time::timeout(KILL_WAIT, exited.wait_for(|e| *e)).await;
        }
        debug!(domain = %rt.name, ms = t0.elapsed().as_millis() as u64, "init gone");
        // Its network namespace is still held if it served as a netvm: the uplink goes back.
        self.net_on_stop(&rt.name).await;
        let rec = record.clone();
        let _ = blocking(move || {
            let _ = rec.thaw();
            rec.kill_all()
        })
        .await
        .map(|r| r.map_err(|e| debug!(domain = %name, error = %e, "kill_all")));
        debug!(domain = %rt.name, ms = t0.elapsed().as_millis() as u64, "cgroup empty");
        let name2 = rt.name.clone();
        let res = blocking(move || -> Result<(), String> {
            record.cleanup().map_err(|e| e.to_string())?;
            if let Ok(dn) = DomainName::new(&name2) {
                let _ = fsutil::remove_runtime_dir(&paths, &dn);
                let _ = fsutil::remove_tree(&paths.scratch_dir(&dn));
            }
            Ok(())
        })
        .await;
        debug!(domain = %rt.name, ms = t0.elapsed().as_millis() as u64, "cleanup done");
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(domain = %rt.name, error = %e, "cleanup failed"),
            Err(e) => error!(domain = %rt.name, error = %e.message(), "cleanup failed"),
        }
        self.release_slot(inst.uid_slot, &rt.name);
        lock(&self.roots).remove(&rt.name);
        let mut st = lock(&rt.st);
        if st
            .inst
            .as_ref()
            .is_some_and(|i| i.generation == inst.generation)
        {
            st.inst = None;
        }
    }

    /// The exit watcher saw the init exit.
    async fn on_init_exit(self: &Arc<Self>, rt: &Arc<Runtime>, generation: u64) {
        let _op = rt.op.lock().await;
        let Some(inst) = rt.instance().filter(|i| i.generation == generation) else {
            return; // a shutdown/kill/failed start already handled it
        };
        warn!(domain = %rt.name, "the domain's init exited on its own");
        let what = match inst.record {
            DomainRecord::Vm(_) => "VMM",
            _ => "init",
        };
        if let Ok(dn) = DomainName::new(&rt.name) {
            fsutil::append_log_line(
                &self.cfg.paths.log_file(&dn),
                &format!("domaind: the domain's {what} exited on its own; the domain is halted"),
            );
        }
        self.set_state(rt, DomainState::Dying);
        self.teardown(rt, &inst).await;
        self.set_state(rt, DomainState::Halted);
        if inst.class == DomainClass::Disposable {
            self.discard_disposable(&rt.name).await;
        }
    }

    async fn discard_disposable(&self, name: &str) {
        let Ok(dn) = DomainName::new(name) else {
            return;
        };
        if self.pool.forget(name) {
            info!(domain = name, "a warm disposable ended; the pool refills");
            self.pool.wake();
        }
        if let Err(e) = self.remove_data(&dn).await {
            error!(domain = name, error = %e.message(), "cannot remove disposable");
        } else {
            info!(domain = name, "disposable removed");
        }
        lock(&self.domains).remove(name);
        // Whatever removed it (its call ended, a kill, its init exiting, a failed start,
        // recovery), its live-disposable slot is free again.
        self.limits.release(name);
        // A handed-out warm disposable: its replacement starts now that it is gone.
        self.pool.returned(name);
    }

    pub async fn shutdown(self: &Arc<Self>, name: &str, timeout_secs: u32) -> Result<(), Error> {
        self.known(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Shutdown)
            .map_err(Error::InvalidState)?;
        let Some(inst) = rt.instance() else {
            self.set_state(&rt, DomainState::Halted);
            return Ok(());
        };
        let timeout = if timeout_secs == 0 {
            DEFAULT_SHUTDOWN_TIMEOUT
        } else {
            Duration::from_secs(u64::from(timeout_secs))
        };
        if rt.state() == DomainState::Paused {
            let rec = inst.record.clone();
            blocking(move || rec.thaw())
                .await?
                .map_err(|e| Error::Backend(format!("cannot unpause '{name}': {e}")))?;
        }
        self.set_state(&rt, DomainState::Stopping);
        let conn = inst.agent.borrow().clone();
        let asked = match conn {
            Some(c) => c
                .send_control(bulkhead_wire::Control::Shutdown {
                    timeout_secs: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
                })
                .await
                .map_err(|e| debug!(domain = name, error = %e, "shutdown over the channel"))
                .is_ok(),
            None => false,
        };
        if !asked {
            let rec = inst.record.clone();
            // A sandbox's init shuts its processes down on SIGTERM; a VMM simply ends the VM.
            let _ = blocking(move || rec.signal_main(Signal::SIGTERM)).await;
        }
        let mut exited = inst.exited.clone();
        if tokio::time::timeout(timeout, exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            warn!(
                domain = name,
                secs = timeout.as_secs(),
                "did not stop in time; killing it"
            );
        }
        self.teardown(&rt, &inst).await;
        self.set_state(&rt, DomainState::Halted);
        if inst.class == DomainClass::Disposable {
            self.discard_disposable(name).await;
        }
        Ok(())
    }

    pub async fn kill(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        self.known(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Kill)
            .map_err(Error::InvalidState)?;
        if let Some(inst) = rt.instance() {
            self.set_state(&rt, DomainState::Dying);
            self.teardown(&rt, &inst).await;
            if inst.class == DomainClass::Disposable {
                self.set_state(&rt, DomainState::Halted);
                self.discard_disposable(name).await;
                return Ok(());
            }
        }
        self.set_state(&rt, DomainState::Halted);
        Ok(())
    }

    pub async fn pause(&self, name: &str) -> Result<(), Error> {
        self.freeze(name, true).await
    }

    pub async fn unpause(&self, name: &str) -> Result<(), Error> {
        self.freeze(name, false).await
    }

    async fn freeze(&self, name: &str, freeze: bool) -> Result<(), Error> {
        self.known(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        let op = if freeze { Op::Pause } else { Op::Unpause };
        rt.state().check(name, op).map_err(Error::InvalidState)?;
        let inst = rt
            .instance()
            .ok_or_else(|| Error::InvalidState(format!("domain '{name}' is not running")))?;
        let rec = inst.record.clone();
        blocking(move || if freeze { rec.freeze() } else { rec.thaw() })
            .await?
            .map_err(|e| Error::Backend(format!("cannot change freezer state of '{name}': {e}")))?;
        self.set_state(
            &rt,
            if freeze {
                DomainState::Paused
            } else {
                DomainState::Running
            },
        );
        Ok(())
    }

    /// The running instance of `name`, starting the domain if it is halted.
    pub(crate) async fn ensure_running(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Arc<Instance>, Error> {
        let dn = self.known(name)?;
        let rt = self.runtime(name);
        let _op = rt.op.lock().await;
        let st = rt.state();
        st.check(name, Op::Run).map_err(Error::InvalidState)?;
        if st == DomainState::Running {
            if let Some(i) = rt.instance() {
                return Ok(i);
            }
        }
        let cfg = self.load(&dn)?;
        self.start_locked(&rt, &cfg).await
    }

    /// The agent connection of a running instance (waits for a reconnect, e.g. after a
    /// domaind restart).
    pub(crate) async fn agent_conn(
        &self,
        inst: &Instance,
        name: &str,
    ) -> Result<Connection, Error> {
        let mut agent = inst.agent.clone();
        let mut exited = inst.exited.clone();
        tokio::select! {
            r = agent.wait_for(|c| c.is_some()) => r
                .map(|c| c.clone().unwrap_or_else(|| unreachable!()))
                .map_err(|_| Error::Agent(format!("domain '{name}' stopped"))),
            _ = exited.wait_for(|e| *e) => Err(Error::Agent(format!("domain '{name}' stopped"))),
            _ = tokio::time::sleep(self.cfg.agent_timeout) => Err(Error::Agent(format!(
                "the agent of domain '{name}' is not connected (waited {} s); see bulkhead log or restart the domain",
                self.cfg.agent_timeout.as_secs()
            ))),
        }
    }

    /// The agent connection of a domain that is running now (no start): for `OpenGui`.
    pub(crate) async fn running_agent_conn(&self, name: &str) -> Result<Connection, Error> {
        self.known(name)?;
        let rt = self.runtime(name);
        let inst = match (rt.state(), rt.instance()) {
            (DomainState::Running, Some(i)) => i,
            (st, _) => {
                return Err(Error::InvalidState(format!(
                    "{name} is {}; start it first (bulkhead start {name})",
                    st.as_str()
                )))
            }
        };
        self.agent_conn(&inst, name).await
    }

    async fn exec_in(
        &self,
        inst: &Instance,
        name: &str,
        argv: Vec<String>,
        user: &str,
        io: Stdio,
    ) -> Result<i32, Error> {
        if argv.is_empty() {
            return Err(Error::InvalidProperty("no command given".into()));
        }
        let conn = self.agent_conn(inst, name).await?;
        let req = ExecRequest {
            argv,
            user: (!user.is_empty()).then(|| user.to_owned()),
            env: Vec::new(),
            cwd: None,
        };
        let stdin = stdio::reader(io.stdin);
        let stdout = stdio::writer(io.stdout);
        let stderr = stdio::writer(io.stderr);
        let status = bulkhead_wire::exec::run(&conn, req, stdin, stdout, stderr)
            .await
            .map_err(|e| Error::Agent(format!("running the command in '{name}' failed: {e}")))?;
        Ok(exit_code(status))
    }

    /// `Run`: start if halted, run, return the exit code.
    pub async fn run(
        self: &Arc<Self>,
        name: &str,
        argv: Vec<String>,
        user: &str,
        io: Stdio,
        caller_gone: CallerGone,
    ) -> Result<i32, Error> {
        let inst = self.ensure_running(name).await?;
        tokio::select! {
            r = self.exec_in(&inst, name, argv, user, io) => r,
            _ = caller_gone => {
                info!(domain = name, "caller went away; run abandoned");
                Err(Error::Agent("the caller disconnected".into()))
            }
        }
    }

    /// Create a disposable from `base` (a disposable-template or a template).
    pub(crate) async fn create_disposable(&self, base: &str) -> Result<DomainName, Error> {
        let bn = self.name(base)?;
        let _cl = self.config_lock.lock().await;
        let bcfg = self.load(&bn)?;
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
        let base_rt = self.runtime(base);
        let _base_op = base_rt.op.lock().await;
        if base_rt.state().is_active() {
            return Err(Error::InvalidState(format!(
                "{base} is {}; shut it down to use it as a disposable template (bulkhead shutdown {base})",
                base_rt.state().as_str()
            )));
        }
        let running: Vec<String> = lock(&self.domains).keys().cloned().collect();
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
        let from = PrivateVolume::new(&self.cfg.paths, &bn);
        let to = PrivateVolume::new(&self.cfg.paths, &dn);
        let store = self.store.clone();
        blocking(move || -> Result<(), Error> {
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
    pub(crate) async fn destroy_disposable(self: &Arc<Self>, name: &str) {
        let rt = self.runtime(name);
        {
            let _op = rt.op.lock().await;
            if let Some(inst) = rt.instance() {
                self.set_state(&rt, DomainState::Dying);
                self.teardown(&rt, &inst).await;
            }
            self.set_state(&rt, DomainState::Halted);
        }
        let _cl = self.config_lock.lock().await;
        self.discard_disposable(name).await;
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
            let inst = self.ensure_running(&name).await?;
            self.exec_in(&inst, &name, argv, user, io).await
        };
        let res = tokio::select! {
            r = work => r,
            _ = caller_gone => {
                info!(domain = %name, "caller went away; discarding the disposable");
                Err(Error::Agent("the caller disconnected".into()))
            }
        };
        self.destroy_disposable(&name).await;
        res.map(|code| (name, code))
    }

    // ----- templates -----------------------------------------------------------------------

    /// `BuildTemplate`: build recipe `name`, report progress on `progress`, register the
    /// template domain. Returns the root path.
    pub async fn build_template(&self, name: &str, progress: OwnedFd) -> Result<String, Error> {
        let dn = self.name(name)?;
        let recipes = self.cfg.recipes_dir.clone();
        let templates = self.cfg.paths.templates_dir();
        let n = name.to_owned();
        let root = blocking(move || tmpl::build(&recipes, &templates, &n, progress)).await??;
        let _cl = self.config_lock.lock().await;
        match self.store.load(&dn) {
            Ok(c) if c.class == DomainClass::Template => {}
            Ok(c) => {
                return Err(Error::AlreadyExists(format!(
                    "template '{name}' was built at {} but a domain of class {} has that name; remove or rename it to register the template",
                    root.display(),
                    c.class
                )))
            }
            Err(StoreError::NotFound { .. }) => {
                let cfg = DomainConfig::new(dn.clone(), DomainClass::Template, Label::Black, None)
                    .map_err(|e| Error::InvalidProperty(e.to_string()))?;
                let volume = PrivateVolume::new(&self.cfg.paths, &dn);
                let store = self.store.clone();
                blocking(move || -> Result<(), Error> {
                    volume.ensure(cfg.private_size).map_err(volume_err)?;
                    store.save(&cfg).map_err(|e| store_err(cfg.name.as_str(), e))
                })
                .await??;
                info!(template = name, "template domain registered");
            }
            Err(e) => return Err(store_err(name, e)),
        }
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

    // ----- start-up ------------------------------------------------------------------------

    /// Find domains that survived a domaind restart, clean up what did not, remove orphan
    /// cgroups and halted disposables, then start autostart domains.
    pub async fn recover(self: &Arc<Self>) {
        match self.store.sweep_temp_files() {
            Ok(v) if !v.is_empty() => info!(count = v.len(), "removed interrupted domain saves"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot sweep temporary domain files"),
        }
        // A launcher started by a previous domaind that was killed may still be running and
        // create its cgroup after the scan below; wait for it (it holds the launch lock).
        let launches_done = self.wait_for_launches().await;
        let (good, bad) = self.store.load_all();
        for e in &bad {
            error!(error = %e, "domain file not loaded; that domain is unavailable until the file is fixed");
        }
        let mut adopted: BTreeSet<String> = BTreeSet::new();
        let run_domains = self.cfg.paths.runtime_dir.join("domains");
        let entries = match std::fs::read_dir(&run_domains) {
            Ok(e) => e.flatten().collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                error!(dir = %run_domains.display(), error = %e, "cannot list runtime dir");
                Vec::new()
            }
        };
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(dn) = DomainName::new(&name) else {
                warn!(path = %entry.path().display(), "unexpected entry in the runtime dir");
                continue;
            };
            if self.recover_one(&dn).await {
                adopted.insert(name);
            }
        }
        // Cgroups without a record: a start interrupted before instance.json was written.
        // Only this instance's cgroup root is looked at (another instance's domains, even
        // of the same names, live below its own root), and in it only cgroups of domains
        // this domaind knows (a config file, good or broken): a start needs the config file,
        // and a disposable's file goes only after its teardown, so every cgroup this daemon
        // created is covered.
        let known: BTreeSet<String> = good
            .iter()
            .map(|c| c.name.to_string())
            .chain(bad.iter().filter_map(|e| {
                e.path()
                    .and_then(|p| p.file_stem())
                    .and_then(|s| s.to_str())
                    .map(str::to_owned)
            }))
            .collect();
        let root = self.cfg.cgroup_root.clone();
        match blocking(move || bulkhead_sandbox::list_orphan_cgroups(&root)).await {
            Ok(Ok(names)) => {
                for n in names
                    .into_iter()
                    .filter(|n| !adopted.contains(n) && known.contains(n))
                {
                    warn!(cgroup = %n, "orphan domain cgroup (no instance record); killing and removing it");
                    let n2 = n.clone();
                    let root = self.cfg.cgroup_root.clone();
                    match blocking(move || bulkhead_sandbox::remove_cgroup(&root, &n2)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error!(cgroup = %n, error = %e, "cannot remove orphan cgroup")
                        }
                        Err(e) => {
                            error!(cgroup = %n, error = %e.message(), "cannot remove orphan cgroup")
                        }
                    }
                    if let Ok(dn) = DomainName::new(&n) {
                        let _ = fsutil::remove_tree(&self.cfg.paths.scratch_dir(&dn));
                        let _ = fsutil::remove_runtime_dir(&self.cfg.paths, &dn);
                    }
                }
            }
            Ok(Err(e)) => error!(error = %e, "cannot list domain cgroups"),
            Err(e) => error!(error = %e.message(), "cannot list domain cgroups"),
        }
        drop(launches_done);
        // Disposables that are not running are leftovers.
        for c in &good {
            if c.class == DomainClass::Disposable && !adopted.contains(c.name.as_str()) {
                info!(domain = %c.name, "removing a halted disposable left from before");
                self.discard_disposable(c.name.as_str()).await;
            }
        }
        self.net_adopt().await;
        self.spawn_expiry();
        self.ready.send_replace(true);
        self.spawn_pool_filler();
        for c in good.into_iter().filter(|c| c.autostart) {
            if adopted.contains(c.name.as_str()) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                info!(domain = %c.name, "autostart");
                if let Err(e) = me.start(c.name.as_str()).await {
                    error!(domain = %c.name, error = %e.message(), "autostart failed");
                }
            });
        }
    }

    /// Take the launch lock exclusively: every launcher started by a previous domaind has
    /// finished (bounded by [`LAUNCH_WAIT`]; `None` if it could not be taken).
    async fn wait_for_launches(&self) -> Option<Flock<std::fs::File>> {
        let dir = self.cfg.paths.runtime_dir.clone();
        let path = dir.join(LAUNCH_LOCK);
        let t0 = std::time::Instant::now();
        let mut said = false;
        loop {
            let p = path.clone();
            let d = dir.clone();
            let r = blocking(
                move || -> Result<Option<Flock<std::fs::File>>, std::io::Error> {
                    std::fs::create_dir_all(&d)?;
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .mode(0o600)
                        .open(&p)?;
                    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                        Ok(l) => Ok(Some(l)),
                        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
                        Err((_, e)) => Err(e.into()),
                    }
                },
            )
            .await;
            match r {
                Ok(Ok(Some(l))) => {
                    if said {
                        info!(
                            ms = t0.elapsed().as_millis() as u64,
                            "sandbox launches finished"
                        );
                    }
                    return Some(l);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    error!(path = %path.display(), error = %e, "cannot take the launch lock");
                    return None;
                }
                Err(e) => {
                    error!(error = %e.message(), "cannot take the launch lock");
                    return None;
                }
            }
            if !said {
                info!(lock = %path.display(), "{LAUNCH_WAIT_MESSAGE}");
                said = true;
            }
            if t0.elapsed() > LAUNCH_WAIT {
                warn!(lock = %path.display(), secs = LAUNCH_WAIT.as_secs(), "a sandbox launch still holds the launch lock; recovering without waiting longer");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adopt or clean up one domain found in the runtime dir; true if it is running.
    async fn recover_one(self: &Arc<Self>, dn: &DomainName) -> bool {
        let name = dn.as_str();
        let ipath = self.cfg.paths.instance_file(dn);
        let file = match InstanceFile::<DomainRecord>::read(&ipath) {
            Ok(f) => f,
            Err(e) => {
                if ipath.exists() {
                    error!(error = %e, "unreadable instance record; removing the domain's cgroup");
                    let n = name.to_owned();
                    let root = self.cfg.cgroup_root.clone();
                    let _ = blocking(move || bulkhead_sandbox::remove_cgroup(&root, &n)).await;
                }
                let _ = fsutil::remove_runtime_dir(&self.cfg.paths, dn);
                return false;
            }
        };
        let record = file.record;
        let rec = record.clone();
        let alive = blocking(move || rec.is_alive()).await.unwrap_or(false);
        let rt = self.runtime(name);
        // A disposable lives only as long as the call that made it, and that call ended with
        // the previous domaind: stop it instead of adopting it. A paused member of a warm
        // pool is the exception: it goes back into its pool.
        let disposable = file.class == DomainClass::Disposable.as_str();
        let pool_base = if alive && disposable {
            self.adoptable_member(dn, &record).await
        } else {
            None
        };
        let disposable = disposable && pool_base.is_none();
        if !alive || disposable {
            if alive {
                info!(domain = name, "stopping a disposable whose caller is gone");
                let rec = record.clone();
                let _ = blocking(move || {
                    let _ = rec.thaw();
                    rec.signal_main(Signal::SIGKILL)
                })
                .await;
            } else {
                info!(domain = name, "found dead after a restart; cleaning up");
            }
            let rec = record.clone();
            let paths = self.cfg.paths.clone();
            let dn2 = dn.clone();
            let _ = blocking(move || {
                let _ = rec.kill_all();
                if let Err(e) = rec.cleanup() {
                    error!(domain = %dn2, error = %e, "cleanup failed");
                }
                let _ = fsutil::remove_runtime_dir(&paths, &dn2);
                let _ = fsutil::remove_tree(&paths.scratch_dir(&dn2));
            })
            .await;
            self.release_slot(file.uid_slot, name);
            if disposable {
                self.discard_disposable(name).await;
            }
            return false;
        }
        let class: DomainClass = file.class.parse().unwrap_or(DomainClass::App);
        self.slot_launched(file.uid_slot, name, &record);
        lock(&self.roots).insert(name.to_owned(), file.template_root.clone());
        let channel_dir = self.cfg.paths.channel_dir(dn);
        let sock = match record {
            DomainRecord::Vm(_) => vm::agent_socket(&channel_dir),
            DomainRecord::Sandbox(_) => self.cfg.paths.agent_socket(dn),
        };
        let uid_base = record.channel_peers().start;
        let listener = match bind_channel(&channel_dir, &sock, uid_base) {
            Ok(l) => l,
            Err(e) => {
                error!(domain = name, error = %e.message(), "cannot re-bind the channel; stopping the domain");
                let rec = record.clone();
                let _ = blocking(move || {
                    let _ = rec.kill_all();
                    rec.cleanup()
                })
                .await;
                self.release_slot(file.uid_slot, name);
                let _ = fsutil::remove_runtime_dir(&self.cfg.paths, dn);
                return false;
            }
        };
        let frozen = {
            let rec = record.clone();
            blocking(move || rec.is_frozen().unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        let _op = rt.op.lock().await;
        match self.activate(&rt, record, file.uid_slot, class, listener) {
            Ok(inst) => {
                info!(
                    domain = name,
                    backend = inst.record.kind(),
                    pid = inst.record.main_pid(),
                    "adopted a running domain"
                );
                self.set_state(
                    &rt,
                    if frozen {
                        DomainState::Paused
                    } else {
                        DomainState::Running
                    },
                );
                if let Some(base) = &pool_base {
                    self.adopt_member(base, name);
                }
                true
            }
            Err(e) => {
                error!(domain = name, error = %e.message(), "cannot adopt");
                false
            }
        }
    }
}

/// Take a shared lock on `<runtime_dir>/launch.lock` through a descriptor WITHOUT
/// close-on-exec, so the sandbox launcher spawned next inherits it and the lock lasts as long
/// as the launcher even if domaind dies (the launcher marks inherited descriptors
/// close-on-exec, so nothing it starts keeps it). Other processes domaind spawns meanwhile
/// inherit it too; that only makes a recovery wait for them as well.
fn hold_launch_lock(runtime_dir: &Path) -> Result<Flock<std::fs::File>, Error> {
    let path = runtime_dir.join(LAUNCH_LOCK);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path.display().to_string()))?;
    nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(FdFlag::empty()),
    )
    .map_err(|e| Error::Io(format!("{}: clearing close-on-exec: {e}", path.display())))?;
    Flock::lock(f, FlockArg::LockShared)
        .map_err(|(_, e)| Error::Io(format!("{}: cannot lock: {e}", path.display())))
}

/// Bound of a sandbox root's writable layer (a tmpfs charged to the domain's memory): half
/// the domain's memory, so a domain that fills its root gets ENOSPC before its memory
/// cgroup has to kill something. What must last belongs in /home, the private volume.
fn root_overlay_mib(memory_mib: u64) -> u64 {
    (memory_mib / 2).max(16)
}

fn volume_err(e: crate::volume::VolumeError) -> Error {
    match e {
        crate::volume::VolumeError::Shrink { .. } => Error::InvalidProperty(e.to_string()),
        _ => Error::Io(e.to_string()),
    }
}

/// The previous generation of a domain log (the sandbox's log writer rotates to it).
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

fn old_log(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".old");
    PathBuf::from(s)
}

/// Exit code of a finished command: the code, or 128 + signal (saturating, so an
/// out-of-range signal number from a domain cannot overflow).
pub fn exit_code(status: bulkhead_wire::ExitStatus) -> i32 {
    match status {
        bulkhead_wire::ExitStatus::Code(c) => c,
        bulkhead_wire::ExitStatus::Signal(s) => 128i32.saturating_add(s),
    }
}

/// Bind the listening socket of a domain's channel (replacing a stale one), owned by the
/// domain's root uid, mode 0600; the channel dir is 0700 and owned by the same uid.
///
/// The channel dir is writable by that uid (a VM's VMM creates `vsock.sock` there), so
/// whatever is in it may be a symlink planted to make us chown or chmod a file elsewhere.
/// Nothing here resolves a path inside it: the dir is opened with `O_NOFOLLOW` (its parent,
/// `<runtime>/domains/<name>`, is root's) and changed through that descriptor; the socket is
/// bound, chowned and chmodded in a fresh root-only staging dir next to it and then renamed
/// into the channel dir relative to the descriptor, replacing (never following) whatever the
/// domain put under that name.
fn bind_channel(dir: &Path, sock: &Path, uid_base: u32) -> Result<UnixListener, Error> {
    use rustix::fs::{
        fchmod, fchown, fstat, openat, renameat, unlinkat, AtFlags, FileType, Gid, Mode, OFlags,
        Uid, CWD,
    };
    let shown = dir.display().to_string();
    let errno = |what: &str| {
        let what = what.to_owned();
        move |e: rustix::io::Errno| Error::Io(format!("{what}: {}", std::io::Error::from(e)))
    };
    let name = match (sock.parent(), sock.file_name()) {
        (Some(p), Some(n)) if p == dir => n.to_owned(),
        _ => {
            return Err(Error::Io(format!(
                "internal error: the channel socket {} is not directly in {shown}",
                sock.display()
            )))
        }
    };
    let parent = dir.parent().ok_or_else(|| {
        Error::Io(format!(
            "internal error: the channel dir {shown} has no parent"
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(io_err(&shown))?;
    let open_dir = || {
        openat(
            CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&format!(
            "{shown} (must be a directory, not a symlink)"
        )))
    };
    // The channel dir is a tmpfs of its own: bound into a sandbox, its mountinfo line then
    // shows "/" instead of the host path of the dir. It is already one when a domain is
    // adopted after a domaind restart (a different device than its parent's).
    let dfd = open_dir()?;
    let parent_dev = std::fs::metadata(parent)
        .map_err(io_err(&parent.display().to_string()))?
        .dev();
    if fstat(&dfd).map_err(errno(&shown))?.st_dev == parent_dev {
        nix::mount::mount(
            Some("tmpfs"),
            &PathBuf::from(format!("/proc/self/fd/{}", dfd.as_raw_fd())),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("size=64k,nr_inodes=256,mode=0700"),
        )
        .map_err(|e| Error::Io(format!("cannot mount the channel tmpfs on {shown}: {e}")))?;
    }
    let dfd = open_dir()?;
    let st = fstat(&dfd).map_err(errno(&shown))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory
        || (st.st_uid != 0 && st.st_uid != uid_base)
    {
        return Err(Error::Io(format!(
            "{shown} is owned by uid {} (expected root or the domain's uid {uid_base}); remove it and start the domain again",
            st.st_uid
        )));
    }
    let (uid, gid) = (Uid::from_raw(uid_base), Gid::from_raw(uid_base));
    fchown(&dfd, Some(uid), Some(gid)).map_err(errno(&format!("chown {shown}")))?;
    fchmod(&dfd, Mode::from_raw_mode(0o700)).map_err(errno(&format!("chmod {shown}")))?;

    // Staging: a root-owned 0700 dir in the channel dir (the same file system, for the
    // rename), used only through its fd: if the domain's uid (owner of the channel dir)
    // swaps the name for something of its own, the fstat below or the fd path notices.
    let stage_name = format!(
        ".bind-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    rustix::fs::mkdirat(&dfd, stage_name.as_str(), Mode::from_raw_mode(0o700))
        .map_err(errno(&format!("staging dir in {shown}")))?;
    let sfd = openat(
        &dfd,
        stage_name.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(&format!("staging dir in {shown}")))?;
    let sst = fstat(&sfd).map_err(errno(&format!("staging dir in {shown}")))?;
    if sst.st_uid != 0 || sst.st_mode & 0o777 != 0o700 {
        return Err(Error::Io(format!(
            "the staging dir in {shown} was replaced (owner {}); not binding there",
            sst.st_uid
        )));
    }
    let remove_stage = || {
        let _ = unlinkat(&dfd, stage_name.as_str(), AtFlags::REMOVEDIR);
    };
    let staged = PathBuf::from(format!("/proc/self/fd/{}/s", sfd.as_raw_fd()));
    let l = std::os::unix::net::UnixListener::bind(&staged).map_err(|e| {
        remove_stage();
        Error::Io(format!("cannot bind a socket in {shown}: {e}"))
    })?;
    rustix::fs::chownat(&sfd, "s", Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno(&format!("chown {}", staged.display())))?;
    rustix::fs::chmodat(&sfd, "s", Mode::from_raw_mode(0o600), AtFlags::empty())
        .map_err(errno(&format!("chmod {}", staged.display())))?;
    // A stale socket (or anything the domain put there) goes; a directory under that name
    // is not emptied for the domain: the rename below then fails with a message.
    match unlinkat(&dfd, name.as_os_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::ISDIR) => {}
        Err(e) => return Err(errno(&format!("remove {}", sock.display()))(e)),
    }
    let moved = renameat(&sfd, "s", &dfd, name.as_os_str());
    let _ = unlinkat(&sfd, "s", AtFlags::empty());
    remove_stage();
    moved.map_err(errno(&format!(
        "cannot move the bound socket to {}",
        sock.display()
    )))?;
    l.set_nonblocking(true)
        .map_err(io_err(&sock.display().to_string()))?;
    UnixListener::from_std(l).map_err(io_err(&sock.display().to_string()))
}

/// Wait until a pidfd is readable (the process exited).
async fn wait_pidfd(fd: OwnedFd) {
    // SAFETY: the pidfd is an OwnedFd moved into the AsyncFd, open and unchanged until the
    // AsyncFd drops it; `as_raw_fd` always returns it.
    match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => {
            warn!(error = %e, "cannot poll a pidfd; assuming the process is gone");
        }
    }
}

/// Accept the domain's agent on `listener`, hand out the connection, accept it again after it
/// drops (the agent reconnects forever). Peers whose uid is outside `range` (the sandbox's uid
/// range, or a VM's VMM uid) are
/// dropped at once, and so is any second peer while an agent is connected.
async fn agent_link(
    name: String,
    listener: UnixListener,
    range: std::ops::Range<u32>,
    tx: watch::Sender<Option<Connection>>,
    mgr: std::sync::Weak<Manager>,
) {
    let mut current: Option<Connection> = None;
    loop {
        let closed = {
            let c = current.clone();
            async move {
                match c {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(domain = %name, error = %e, "accept on the channel failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = closed => {
                info!(domain = %name, "agent disconnected");
                current = None;
                let _ = tx.send(None);
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if range.contains(&c.uid()) => {}
            Ok(c) => {
                warn!(domain = %name, uid = c.uid(), "refused a channel peer outside the domain's uid range");
                continue;
            }
            Err(e) => {
                warn!(domain = %name, error = %e, "cannot read channel peer credentials");
                continue;
            }
        }
        if current.is_some() {
            warn!(domain = %name, "refused a second channel peer while the agent is connected");
            continue;
        }
        let handshake = Connection::client(stream, bulkhead_wire::Limits::default());
        let (conn, incoming) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!(domain = %name, error = %e, "agent handshake failed; dropping the peer");
                continue;
            }
            Err(_) => {
                warn!(domain = %name, "agent handshake timed out; dropping the peer");
                continue;
            }
        };
        info!(domain = %name, "agent connected");
        // Streams the agent opens towards dom0: service calls, with this domain as source.
        tokio::spawn(crate::calls::serve_incoming(
            mgr.clone(),
            name.clone(),
            incoming,
        ));
        current = Some(conn.clone());
        let _ = tx.send(Some(conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_wire::ExitStatus;

    /// A channel dir as domaind makes it: `<tmp>/domains/x/channel`, plus a file outside
    /// that a planted symlink points at.
    /// A temp dir that unmounts the channel tmpfs `bind_channel` put in it.
    struct ChannelTmp(tempfile::TempDir);

    impl ChannelTmp {
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for ChannelTmp {
        fn drop(&mut self) {
            let _ = fsutil::unmount_channel(&self.0.path().join("domains/x/channel"));
        }
    }

    fn channel_fixture() -> (ChannelTmp, PathBuf, PathBuf, PathBuf) {
        let tmp = ChannelTmp(tempfile::tempdir().unwrap());
        let dir = tmp.path().join("domains/x/channel");
        let sock = vm::agent_socket(&dir);
        let outside = tmp.path().join("outside.txt");
        std::fs::write(&outside, "host file\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        (tmp, dir, sock, outside)
    }

    fn owner_mode(p: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777)
    }

    const DOMAIN_UID: u32 = 0x6000_0000;

    #[test]
    fn bind_channel_replaces_a_planted_symlink_without_following_it() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (_tmp, dir, sock, outside) = channel_fixture();
        let before = owner_mode(&outside);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        drop(bind_channel(&dir, &sock, DOMAIN_UID).unwrap());
        assert_eq!(owner_mode(&dir), (DOMAIN_UID, 0o700));
        // What the VMM (the domain's uid, owner of the dir) could leave there.
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink(&outside, &sock).unwrap();
        let l = bind_channel(&dir, &sock, DOMAIN_UID).unwrap();
        assert_eq!(
            owner_mode(&outside),
            before,
            "the symlink's target was changed"
        );
        let m = std::fs::symlink_metadata(&sock).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_socket(), "{m:?}");
        assert_eq!(owner_mode(&sock), (DOMAIN_UID, 0o600));
        drop(l);
        // No staging dir is left next to the channel dir.
        let left: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("channel")]);
    }

    #[test]
    fn bind_channel_never_follows_a_symlink_swapped_in_while_it_runs() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (_tmp, dir, sock, outside) = channel_fixture();
        let before = owner_mode(&outside);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _g = rt.enter();
        drop(bind_channel(&dir, &sock, DOMAIN_UID).unwrap());
        // The "VMM": as the domain's uid, swap the socket's name for a symlink to the file
        // outside, over and over, while domaind binds.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let planter = {
            let (stop, dir, sock, outside) =
                (stop.clone(), dir.clone(), sock.clone(), outside.clone());
            std::thread::spawn(move || {
                // SAFETY: setfsuid changes only this thread's filesystem uid (a raw syscall,
                // not broadcast to other threads); it takes and returns plain integers.
                unsafe { libc::setfsuid(DOMAIN_UID) };
                let tmp = dir.join(".planted");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(&tmp);
                    if std::os::unix::fs::symlink(&outside, &tmp).is_ok()
                        && std::fs::rename(&tmp, &sock).is_ok()
                    {
                        n += 1;
                    }
                }
                n
            })
        };
        let mut bound = 0;
        for _ in 0..2000 {
            // Failing is fine (the domain only hurts itself); following the symlink is not.
            if bind_channel(&dir, &sock, DOMAIN_UID).is_ok() {
                bound += 1;
            }
            assert_eq!(
                owner_mode(&outside),
                before,
                "the planted symlink was followed"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let planted = planter.join().unwrap();
        assert!(planted > 100, "the planter did not run ({planted})");
        assert!(bound > 0);
        assert_eq!(owner_mode(&outside), before);
    }

    #[test]
    fn bind_channel_refuses_a_channel_dir_that_is_a_symlink() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("bind_channel chowns to the domain's uid: needs root");
            return;
        }
        let (tmp, dir, sock, _outside) = channel_fixture();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let e = bind_channel(&dir, &sock, DOMAIN_UID).unwrap_err();
        assert!(e.message().contains("not a symlink"), "{}", e.message());
        assert_eq!(owner_mode(&elsewhere), (0, 0o755));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn exit_code_maps_signals_and_saturates() {
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(ExitStatus::Signal(9)), 137);
        // a hostile agent's value must not overflow (a panic in debug, a wrap in release)
        assert_eq!(exit_code(ExitStatus::Signal(i32::MAX)), i32::MAX);
        assert_eq!(exit_code(ExitStatus::Signal(i32::MIN)), 128 + i32::MIN);
    }
}
