//! Launching a domain's backend (the sandbox launcher or the confined VMM) and what a launch
//! holds: the host-wide uid slot, the launch lock, the template roots in use.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_domain::{DomainConfig, DomainName};
use bulkhead_sandbox::{Launcher, SandboxSpec};
use nix::fcntl::{FdFlag, Flock, FlockArg};
use tracing::{debug, warn};

use crate::backend::DomainRecord;
use crate::slots::Claim;
use crate::volume::PrivateVolume;
use crate::{tmpl, vm};

use super::start::START_STEPS;
use super::{blocking, io_err, lock, Event, Manager, DOMAIN_PIDS_MAX, LAUNCH_LOCK};

impl Manager {
    /// Claim a host-wide uid slot for domain `name` (blocking: takes the slot dir's lock).
    pub(super) fn alloc_slot(&self, name: &DomainName) -> Result<u32, Error> {
        let claim = Claim::pending(
            name.as_str(),
            &self.cfg.paths.runtime_dir,
            &self.cfg.cgroup_root,
        );
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
    pub(super) fn slot_launched(&self, slot: u32, dn: &DomainName, record: &DomainRecord) {
        let name = dn.as_str();
        let mut claim = Claim::pending(name, &self.cfg.paths.runtime_dir, &self.cfg.cgroup_root);
        claim.init = Some((record.main_pid(), record.main_start_time()));
        if let Err(e) = self.slots.update(slot, &claim) {
            warn!(domain = name, slot, error = %e, "cannot record the init in the uid slot claim");
        }
    }

    /// Give `slot` back, unless our cgroup of `name` still exists (processes may live in it:
    /// the slot then stays quarantined until that cgroup is gone, see [`crate::slots`]).
    pub(super) fn release_slot(&self, slot: u32, dn: &DomainName) {
        let name = dn.as_str();
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
    pub(super) fn roots_in_use(&self) -> impl Fn(&Path) -> bool + Send + 'static {
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

    /// The sandbox backend: the `bulkhead-sandbox` launcher makes the sandbox; returns once
    /// its init has exec'd.
    pub(super) async fn launch_sandbox(
        &self,
        cfg: &DomainConfig,
        template_root: &Path,
        slot: u32,
    ) -> Result<DomainRecord, String> {
        let paths = &self.cfg.paths;
        let root_changes_dir = self.prepare_root_changes(cfg)?;
        let spec = SandboxSpec {
            name: cfg.name.to_string(),
            cgroup_root: self.cfg.cgroup_root.clone(),
            template_root: template_root.to_owned(),
            private_image: PrivateVolume::new(paths, &cfg.name).image,
            root_overlay_mib: root_overlay_mib(cfg.memory),
            package_manager_caps: root_changes_dir.is_some(),
            root_changes_dir,
            scratch_dir: paths.scratch_dir(&cfg.name),
            channel_dir: paths.channel_dir(&cfg.name),
            guest_tools_dir: self.cfg.guest_tools_dir.clone(),
            init: init_argv(cfg),
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
    pub(super) async fn launch_vm(
        self: &Arc<Self>,
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
                    total: START_STEPS,
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
            self.net_on_stop(&cfg.name).await;
        }
        launched
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

/// The sandbox init's argv: a template also keeps apt's update proxy forwarder running
/// (its only way to the package archives, through the net domain; see
/// bulkhead-updates-proxy).
fn init_argv(cfg: &DomainConfig) -> Vec<String> {
    let mut argv = vec![bulkhead_domain::GUEST_INIT_PATH.to_owned()];
    if cfg.class == bulkhead_domain::DomainClass::Template {
        argv.push("--updates-forwarder".to_owned());
    }
    argv
}
