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
//!
//! This module holds the [`Manager`], its per-domain runtime state and instances, and the
//! events it sends; the rest is by concern: `start` (the start steps), `lifecycle`
//! (shutdown, kill, pause, teardown), `launch` (the backends, uid slots), `agent` (the
//! agent link and runs), `domains` (create, clone, remove, properties, queries),
//! `disposables` with `pool` and `limits`, `recovery` (start-up), `netvm`,
//! `desktop`, and the manager's side of `calls`, `usb` and `gui`.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex};

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainConfig, DomainName, DomainStore, StoreError};
use bulkhead_wire::Connection;
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex};
use tracing::{debug, info, warn};

use crate::backend::DomainRecord;
use crate::config::DaemonConfig;
use crate::slots::SlotDir;
use crate::state::DomainState;

mod limits;
pub use limits::LimitError;
mod pool;
pub use pool::MARKER as POOL_MARKER;
mod netvm;

mod agent;
mod calls;
mod configs;
mod desktop;
mod disposables;
mod domains;
mod gui;
mod launch;
mod lifecycle;
mod recovery;
mod start;
mod template_changes;
mod templates;
mod usb;
mod usb_input;
pub use agent::exit_code;
pub use desktop::{
    valid_policy_file_name, writable_policy_file_name, APPLICATIONS_DIR, DISPVM_TARGET,
};

pub use crate::slots::LAUNCH_LOCK;
/// Logged while recovery waits for such launchers (tests look for it).
pub const LAUNCH_WAIT_MESSAGE: &str =
    "waiting for sandbox launches of a previous domaind to finish";
/// Limit on the number of processes in a sandbox domain.
pub const DOMAIN_PIDS_MAX: u64 = 4096;

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
    name: DomainName,
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

/// A domain name as a client gave it, checked (D-Bus methods parse names with this once).
pub fn domain_name(s: &str) -> Result<DomainName, Error> {
    DomainName::new(s).map_err(|e| Error::InvalidName(e.to_string()))
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
    /// The good domain configs as the policy sees them (see `configs`).
    configs: configs::ConfigCache,
    domains: StdMutex<HashMap<DomainName, Arc<Runtime>>>,
    /// Host-wide uid slot claims (see [`crate::slots`]).
    slots: SlotDir,
    /// Template root of every starting or running domain (`None`: unknown, an adopted
    /// domain of an older domaind); template garbage collection keeps these.
    roots: StdMutex<HashMap<DomainName, Option<PathBuf>>>,
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
            configs: configs::ConfigCache::default(),
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

    fn name(&self, s: &str) -> Result<DomainName, Error> {
        domain_name(s)
    }

    /// Whether `dn` has a config file or a live instance.
    fn known(&self, dn: &DomainName) -> Result<(), Error> {
        if self.store.exists(dn) || self.state_of(dn).is_active() {
            Ok(())
        } else {
            Err(Error::NoSuchDomain(format!(
                "no domain named '{dn}' (see bulkhead ls)"
            )))
        }
    }

    /// Whether the config file of `dn` exists; if not, the store's NotFound error naming the
    /// file.
    fn stored(&self, dn: &DomainName) -> Result<(), Error> {
        let name = dn.as_str();
        if self.store.exists(dn) {
            Ok(())
        } else {
            Err(store_err(
                name,
                StoreError::NotFound {
                    name: name.into(),
                    path: self.store.path_for(dn),
                },
            ))
        }
    }

    fn runtime(&self, name: &DomainName) -> Arc<Runtime> {
        lock(&self.domains)
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Runtime {
                    name: name.clone(),
                    op: AsyncMutex::new(()),
                    st: StdMutex::new(RtState::default()),
                })
            })
            .clone()
    }

    pub(crate) fn state_of(&self, name: &DomainName) -> DomainState {
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
                name: rt.name.to_string(),
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

    /// Run `f`, which saves or removes domain files, on the blocking pool; the config cache
    /// hears of it whatever the outcome.
    async fn store_write<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let r = blocking(f).await;
        self.configs.changed();
        r
    }

    fn load(&self, name: &DomainName) -> Result<DomainConfig, Error> {
        self.store
            .load(name)
            .map_err(|e| store_err(name.as_str(), e))
    }
}
