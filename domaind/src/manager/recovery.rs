//! Start-up recovery: adopting domains that survived a domaind restart, cleaning up what did
//! not, orphan cgroups, then autostart.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_domain::{DomainClass, DomainName};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use crate::backend::DomainRecord;
use crate::instance::InstanceFile;
use crate::state::DomainState;
use crate::{fsutil, vm};

use super::agent::bind_channel;
use super::{blocking, lock, Manager, LAUNCH_LOCK, LAUNCH_WAIT_MESSAGE};

/// How long start-up recovery waits for launchers of a previous domaind to finish.
const LAUNCH_WAIT: Duration = Duration::from_secs(60);

impl Manager {
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
        let mut adopted: BTreeSet<DomainName> = BTreeSet::new();
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
                adopted.insert(dn);
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
                    .filter(|n| !adopted.contains(n.as_str()) && known.contains(n))
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
        self.usb_recover().await;
        // Disposables that are not running are leftovers.
        for c in &good {
            if c.class == DomainClass::Disposable && !adopted.contains(&c.name) {
                info!(domain = %c.name, "removing a halted disposable left from before");
                self.discard_disposable(&c.name).await;
            }
        }
        self.net_adopt().await;
        self.spawn_expiry();
        self.ready.send_replace(true);
        self.spawn_pool_filler();
        for c in good.into_iter().filter(|c| c.autostart) {
            if adopted.contains(&c.name) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                info!(domain = %c.name, "autostart");
                if let Err(e) = me.start(&c.name).await {
                    error!(domain = %c.name, error = %e.message(), "autostart failed");
                }
            });
        }
    }

    /// Take the launch lock exclusively: every launcher started by a previous domaind has
    /// finished (bounded by [`LAUNCH_WAIT`]; `None` if it could not be taken).
    pub(super) async fn wait_for_launches(&self) -> Option<Flock<std::fs::File>> {
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
    pub(super) async fn recover_one(self: &Arc<Self>, dn: &DomainName) -> bool {
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
        let rt = self.runtime(dn);
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
            self.release_slot(file.uid_slot, dn);
            if disposable {
                self.discard_disposable(dn).await;
            }
            return false;
        }
        let class: DomainClass = file.class.parse().unwrap_or(DomainClass::App);
        self.slot_launched(file.uid_slot, dn, &record);
        lock(&self.roots).insert(dn.clone(), file.template_root.clone());
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
                self.release_slot(file.uid_slot, dn);
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
                    self.adopt_member(base, dn);
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
