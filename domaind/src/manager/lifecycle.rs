//! Shutdown, kill, pause/unpause of one domain; tracking a launched instance and its teardown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bulkhead_api::Error;
use bulkhead_domain::{DomainClass, DomainName};
use nix::sys::signal::Signal;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::backend::DomainRecord;
use crate::config::DEFAULT_SHUTDOWN_TIMEOUT;
use crate::fsutil;
use crate::state::{DomainState, Op};

use super::agent::{agent_link, wait_pidfd};
use super::{blocking, lock, Instance, Manager, Runtime};

/// How long to wait for the init to be gone after a kill.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Manager {
    /// Track a live domain: install it in the runtime and start its watcher and agent link.
    pub(super) fn activate(
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

    /// Stop tracking an instance and remove everything it left: processes, cgroups, scratch,
    /// socket, instance.json, uid slot. Idempotent.
    pub(super) async fn teardown(&self, rt: &Runtime, inst: &Arc<Instance>) {
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
        // Its USB devices (or, for the usb domain, every attached device) go back.
        self.usb_on_stop(&rt.name).await;
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
            let _ = fsutil::remove_runtime_dir(&paths, &name2);
            let _ = fsutil::remove_tree(&paths.scratch_dir(&name2));
            Ok(())
        })
        .await;
        debug!(domain = %rt.name, ms = t0.elapsed().as_millis() as u64, "cleanup done");
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(domain = %rt.name, error = %e, "cleanup failed"),
            Err(e) => error!(domain = %rt.name, error = %e.message(), "cleanup failed"),
        }
        // A template's changes become its new root (the slot's ids are still its files').
        let changed = inst.class == DomainClass::Template
            && matches!(inst.record, DomainRecord::Sandbox(_))
            && self.keep_template_changes(&rt.name, inst.uid_slot).await;
        self.release_slot(inst.uid_slot, &rt.name);
        let root = lock(&self.roots).remove(&rt.name).flatten();
        // A root that is no longer its template's current one may now be used by no one.
        if changed {
            // warm disposables made on the old root are replaced (the pool filler sees them)
            self.pool.wake();
            self.collect_old_roots(&rt.name).await;
        } else if let Some(root) = root {
            self.collect_root_if_old(&root).await;
        }
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
    pub(super) async fn on_init_exit(self: &Arc<Self>, rt: &Arc<Runtime>, generation: u64) {
        let _op = rt.op.lock().await;
        let Some(inst) = rt.instance().filter(|i| i.generation == generation) else {
            return; // a shutdown/kill/failed start already handled it
        };
        warn!(domain = %rt.name, "the domain's init exited on its own");
        let what = match inst.record {
            DomainRecord::Vm(_) => "VMM",
            _ => "init",
        };
        fsutil::append_log_line(
            &self.cfg.paths.log_file(&rt.name),
            &format!("domaind: the domain's {what} exited on its own; the domain is halted"),
        );
        self.set_state(rt, DomainState::Dying);
        self.teardown(rt, &inst).await;
        self.set_state(rt, DomainState::Halted);
        if inst.class == DomainClass::Disposable {
            self.discard_disposable(&rt.name).await;
        }
    }

    pub async fn shutdown(
        self: &Arc<Self>,
        dn: &DomainName,
        timeout_secs: u32,
    ) -> Result<(), Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
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
            self.discard_disposable(dn).await;
        }
        Ok(())
    }

    pub async fn kill(self: &Arc<Self>, dn: &DomainName) -> Result<(), Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
        let _op = rt.op.lock().await;
        rt.state()
            .check(name, Op::Kill)
            .map_err(Error::InvalidState)?;
        if let Some(inst) = rt.instance() {
            self.set_state(&rt, DomainState::Dying);
            self.teardown(&rt, &inst).await;
            if inst.class == DomainClass::Disposable {
                self.set_state(&rt, DomainState::Halted);
                self.discard_disposable(dn).await;
                return Ok(());
            }
        }
        self.set_state(&rt, DomainState::Halted);
        Ok(())
    }

    pub async fn pause(&self, dn: &DomainName) -> Result<(), Error> {
        self.freeze(dn, true).await
    }

    pub async fn unpause(&self, dn: &DomainName) -> Result<(), Error> {
        self.freeze(dn, false).await
    }

    pub(super) async fn freeze(&self, dn: &DomainName, freeze: bool) -> Result<(), Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
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
        dn: &DomainName,
    ) -> Result<Arc<Instance>, Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let rt = self.runtime(dn);
        let _op = rt.op.lock().await;
        let st = rt.state();
        st.check(name, Op::Run).map_err(Error::InvalidState)?;
        if st == DomainState::Running {
            if let Some(i) = rt.instance() {
                return Ok(i);
            }
        }
        let cfg = self.load(dn)?;
        self.start_locked(&rt, &cfg).await
    }
}
