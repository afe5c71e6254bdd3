//! [`CgroupPaths`]: the handle on one sandbox's cgroup directories: its processes, stopping
//! and freezing them, killing them all, removing the cgroup, and its usage and limits.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::procfs::{is_kernel_thread, proc_cpu_ticks, task_states, threads_stopped};
use super::{read, write};
use crate::{read_small, SandboxError};

/// How long freeze/kill/remove wait for the kernel before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// The cgroup directories of one sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum CgroupPaths {
    V2 {
        dir: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

impl CgroupPaths {
    /// Every directory of this cgroup (one for v2, one per controller for v1).
    pub fn dirs(&self) -> Vec<&PathBuf> {
        match self {
            CgroupPaths::V2 { dir } => vec![dir],
            CgroupPaths::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => vec![memory, cpu, pids, freezer],
        }
    }

    /// The directory whose cgroup.procs lists every process of the sandbox.
    fn procs_dir(&self) -> &Path {
        match self {
            CgroupPaths::V2 { dir } => dir,
            CgroupPaths::V1 { pids, .. } => pids,
        }
    }

    /// Pids in the cgroup (empty if it does not exist).
    pub fn procs(&self) -> Result<Vec<i32>, SandboxError> {
        let p = self.procs_dir().join("cgroup.procs");
        match read_small(&p) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(SandboxError::Cgroup {
                path: p,
                action: "read",
                source,
            }),
        }
    }

    /// The cgroup's user-space processes: [`Self::procs`] without kernel threads (KVM attaches
    /// its per-VM worker thread, `kvm-nx-lpage-recovery`, to the cgroup of the VMM that made
    /// the VM; no signal reaches it and it never freezes).
    pub fn user_procs(&self) -> Result<Vec<i32>, SandboxError> {
        Ok(self
            .procs()?
            .into_iter()
            .filter(|pid| !is_kernel_thread(*pid))
            .collect())
    }

    /// Stop every user-space process of the cgroup with SIGSTOP and wait until each of their
    /// threads is stopped. The pause of a VM domain: under cgroup v2 a cgroup that holds
    /// KVM's worker thread never reports frozen (see [`Self::user_procs`]), and a stopped
    /// VMM runs no vCPU either. SIGSTOP cannot be caught or ignored.
    pub fn stop_processes(&self) -> Result<(), SandboxError> {
        wait_until("every process of the cgroup stopped", || {
            let procs = self.user_procs()?;
            let mut all = true;
            for pid in &procs {
                if !threads_stopped(*pid) {
                    // again: a process forked since the last round gets it too
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
                    all = false;
                }
            }
            Ok(all)
        })
    }

    /// Let the processes stopped by [`Self::stop_processes`] go on.
    pub fn continue_processes(&self) -> Result<(), SandboxError> {
        self.signal_all(Signal::SIGCONT)
    }

    /// Whether every user-space process of the cgroup is stopped (and there is one).
    pub fn processes_stopped(&self) -> Result<bool, SandboxError> {
        let procs = self.user_procs()?;
        Ok(!procs.is_empty() && procs.iter().all(|p| threads_stopped(*p)))
    }

    /// Moves a process into the cgroup (every hierarchy).
    pub fn join(&self, pid: i32) -> Result<(), SandboxError> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    pub fn freeze(&self) -> Result<(), SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => {
                write(&dir.join("cgroup.freeze"), "1")?;
                wait_until("cgroup frozen", || self.is_frozen()).map_err(|e| match e {
                    SandboxError::Timeout { what, secs } => SandboxError::Timeout {
                        what: format!(
                            "{what} (tasks: {})",
                            task_states(&dir.join("cgroup.threads"))
                        ),
                        secs,
                    },
                    other => other,
                })
            }
            CgroupPaths::V1 { freezer, .. } => {
                let state = freezer.join("freezer.state");
                wait_until("cgroup frozen", || {
                    // writing FROZEN again retries a freeze that is still FREEZING
                    write(&state, "FROZEN")?;
                    self.is_frozen()
                })
            }
        }
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => write(&dir.join("cgroup.freeze"), "0"),
            CgroupPaths::V1 { freezer, .. } => write(&freezer.join("freezer.state"), "THAWED"),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, SandboxError> {
        match self {
            CgroupPaths::V2 { dir } => Ok(read(&dir.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1")),
            CgroupPaths::V1 { freezer, .. } => {
                Ok(read(&freezer.join("freezer.state"))?.trim() == "FROZEN")
            }
        }
    }

    /// SIGKILLs every process and waits until the cgroup is empty. Works while frozen.
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        if !self.exists() {
            return Ok(());
        }
        match self {
            CgroupPaths::V2 { dir } if dir.join("cgroup.kill").exists() => {
                write(&dir.join("cgroup.kill"), "1")?;
            }
            CgroupPaths::V2 { .. } => self.signal_all(Signal::SIGKILL)?,
            CgroupPaths::V1 { freezer, .. } => {
                // Freeze so nothing forks while we kill, kill everything listed, then thaw so
                // the frozen tasks can act on their pending SIGKILL.
                let frozen = self.freeze();
                if let Err(e) = &frozen {
                    tracing::warn!(cgroup = %freezer.display(), error = %e, "freeze before kill failed; killing anyway");
                }
                self.signal_all(Signal::SIGKILL)?;
                self.thaw()?;
            }
        }
        wait_until("cgroup empty after SIGKILL", || {
            let left = self.procs()?;
            if left.is_empty() {
                return Ok(true);
            }
            // v1 without cgroup.kill: catch anything forked in between
            self.signal_all(Signal::SIGKILL)?;
            Ok(false)
        })
    }

    fn signal_all(&self, sig: Signal) -> Result<(), SandboxError> {
        for pid in self.procs()? {
            // ESRCH: already gone, fine
            let _ = kill(Pid::from_raw(pid), sig);
        }
        Ok(())
    }

    /// Kills what is left and removes every directory; idempotent.
    pub fn remove(&self) -> Result<(), SandboxError> {
        if !self.exists() {
            return Ok(());
        }
        // a frozen v2 cgroup keeps killed tasks from exiting on old kernels; thaw first
        if self.is_frozen().unwrap_or(false) {
            self.thaw()?;
        }
        self.kill_all()?;
        for d in self.dirs() {
            wait_until("cgroup rmdir", || match fs::remove_dir(d) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
                // EBUSY while the last task finishes exiting
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
                Err(source) => Err(SandboxError::Cgroup {
                    path: d.clone(),
                    action: "rmdir",
                    source,
                }),
            })?;
        }
        Ok(())
    }

    /// Memory charged to the cgroup, bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("memory.current"),
            CgroupPaths::V1 { memory, .. } => memory.join("memory.usage_in_bytes"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }

    /// CPU time used by every process of the cgroup, nanoseconds (v2 `cpu.stat` usage_usec,
    /// v1 `cpuacct.usage` of the cpu hierarchy when cpuacct is mounted with it).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            CgroupPaths::V2 { dir } => read_small(&dir.join("cpu.stat"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|us| us.saturating_mul(1000)),
            CgroupPaths::V1 { cpu, .. } => match read_small(&cpu.join("cpuacct.usage")) {
                Ok(v) => v.trim().parse().ok(),
                // cpuacct mounted on its own: add up the processes' own and reaped children's
                // times (a process that exited unreaped is missed)
                Err(_) => {
                    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                        .ok()
                        .flatten()
                        .and_then(|t| u64::try_from(t).ok())
                        .filter(|t| *t > 0)?;
                    let ticks: u64 = self
                        .procs()
                        .ok()?
                        .iter()
                        .filter_map(|pid| read_small(Path::new(&format!("/proc/{pid}/stat"))).ok())
                        .filter_map(|stat| proc_cpu_ticks(&stat))
                        .sum();
                    Some(ticks.saturating_mul(1_000_000_000 / tick))
                }
            },
        }
    }

    /// The memory limit in bytes as the kernel reports it.
    pub fn memory_limit(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("memory.max"),
            CgroupPaths::V1 { memory, .. } => memory.join("memory.limit_in_bytes"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }

    /// The pids limit as the kernel reports it.
    pub fn pids_limit(&self) -> Option<u64> {
        let p = match self {
            CgroupPaths::V2 { dir } => dir.join("pids.max"),
            CgroupPaths::V1 { pids, .. } => pids.join("pids.max"),
        };
        read_small(&p).ok()?.trim().parse().ok()
    }
}

fn wait_until(
    what: &str,
    mut f: impl FnMut() -> Result<bool, SandboxError>,
) -> Result<(), SandboxError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(1);
    loop {
        if f()? {
            return Ok(());
        }
        if start.elapsed() > WAIT {
            return Err(SandboxError::Timeout {
                what: what.to_string(),
                secs: WAIT.as_secs(),
            });
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}
