//! The two ways a domain runs, behind one record type: a sandbox (the `bulkhead-sandbox`
//! launcher, see `bulkhead_sandbox`) or a VM (one confined `bulkhead-vmm` process, see
//! [`crate::vm`]). The lifecycle in [`crate::manager`] only talks to [`DomainRecord`]: it
//! watches the main process (the sandbox's init or the VMM) through a pidfd, freezes and
//! thaws the domain's cgroup, kills everything in it and cleans up, the same way for both.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use bulkhead_sandbox::{CgroupPaths, SandboxError, SandboxRecord};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A running VM domain: the VMM process and its cgroup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VmRecord {
    pub name: String,
    /// Host pid of the `bulkhead-vmm` process.
    pub vmm_pid: i32,
    /// Its start time (clock ticks since boot, /proc/<pid>/stat field 22): guards against
    /// pid reuse.
    pub vmm_start_time: u64,
    /// The uid (and gid) the VMM runs as: the first uid of the domain's slot. The channel
    /// accepts only this peer.
    pub vmm_uid: u32,
    pub cgroup: CgroupPaths,
    /// Per-start files (the guest tools image); wiped at cleanup.
    pub scratch_dir: PathBuf,
}

impl VmRecord {
    pub fn is_alive(&self) -> bool {
        matches!(bulkhead_sandbox::proc_stat(self.vmm_pid), Some((start, state))
            if start == self.vmm_start_time && state != 'Z' && state != 'X')
    }
}

/// What domaind records about a running domain (in `instance.json`, so it survives a domaind
/// restart). Untagged: records written before VM domains existed are plain sandbox records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum DomainRecord {
    Vm(VmRecord),
    Sandbox(SandboxRecord),
}

impl DomainRecord {
    /// Which backend runs it (for logs and messages).
    pub fn kind(&self) -> &'static str {
        match self {
            DomainRecord::Vm(_) => "vm",
            DomainRecord::Sandbox(_) => "sandbox",
        }
    }

    /// Pid of the main process: the sandbox's init, or the VMM.
    pub fn main_pid(&self) -> i32 {
        match self {
            DomainRecord::Vm(v) => v.vmm_pid,
            DomainRecord::Sandbox(s) => s.init_pid,
        }
    }

    /// Start time of the main process (for the uid slot claim).
    pub fn main_start_time(&self) -> u64 {
        match self {
            DomainRecord::Vm(v) => v.vmm_start_time,
            DomainRecord::Sandbox(s) => s.init_start_time,
        }
    }

    /// Host uids a channel peer of this domain may have: the sandbox's whole range (any
    /// process of the domain may be the agent), or exactly the VMM's uid.
    pub fn channel_peers(&self) -> std::ops::Range<u32> {
        match self {
            DomainRecord::Vm(v) => v.vmm_uid..v.vmm_uid.saturating_add(1),
            DomainRecord::Sandbox(s) => {
                s.uid_base..s.uid_base.saturating_add(bulkhead_sandbox::UID_RANGE)
            }
        }
    }

    fn cgroup(&self) -> &CgroupPaths {
        match self {
            DomainRecord::Vm(v) => &v.cgroup,
            DomainRecord::Sandbox(s) => &s.cgroup,
        }
    }

    /// The main process is alive (same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        match self {
            DomainRecord::Vm(v) => v.is_alive(),
            DomainRecord::Sandbox(s) => s.is_alive(),
        }
    }

    /// A pidfd of the main process; it polls readable when the process exits.
    pub fn pidfd(&self) -> Result<OwnedFd, SandboxError> {
        match self {
            DomainRecord::Sandbox(s) => s.pidfd(),
            DomainRecord::Vm(v) => {
                // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no
                // memory is shared.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, v.vmm_pid, 0) };
                if fd < 0 {
                    return Err(SandboxError::Sys {
                        action: "pidfd_open(vmm)",
                        source: nix::Error::last(),
                    });
                }
                let raw = i32::try_from(fd).map_err(|_| SandboxError::Sys {
                    action: "pidfd_open(vmm)",
                    source: nix::Error::EBADF,
                })?;
                // SAFETY: the kernel just returned this fd and nothing else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // The pid may have been reused between recording and opening.
                if !v.is_alive() {
                    return Err(SandboxError::Gone { pid: v.vmm_pid });
                }
                Ok(fd)
            }
        }
    }

    /// Freeze every process of the domain: a sandbox with the cgroup freezer; a VM by
    /// stopping its VMM (every vCPU and device thread), because under cgroup v2 KVM's worker
    /// thread in the VMM's cgroup keeps the freezer from ever reporting frozen.
    pub fn freeze(&self) -> Result<(), SandboxError> {
        match self {
            DomainRecord::Vm(v) => v.cgroup.stop_processes(),
            DomainRecord::Sandbox(s) => s.cgroup.freeze(),
        }
    }

    /// Memory charged to the domain's cgroup (bytes) and CPU time its processes used (ns);
    /// `None` where the cgroup does not say.
    pub fn usage(&self) -> (Option<u64>, Option<u64>) {
        let cg = self.cgroup();
        (cg.memory_usage(), cg.cpu_usage_ns())
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        match self {
            DomainRecord::Vm(v) => v.cgroup.continue_processes(),
            DomainRecord::Sandbox(s) => s.cgroup.thaw(),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, SandboxError> {
        match self {
            DomainRecord::Vm(v) => v.cgroup.processes_stopped(),
            DomainRecord::Sandbox(s) => s.cgroup.is_frozen(),
        }
    }

    /// Signal the main process (checked against pid reuse first).
    pub fn signal_main(&self, sig: Signal) -> Result<(), SandboxError> {
        match self {
            DomainRecord::Sandbox(s) => s.signal_init(sig),
            DomainRecord::Vm(v) => {
                if !v.is_alive() {
                    return Err(SandboxError::Gone { pid: v.vmm_pid });
                }
                kill(Pid::from_raw(v.vmm_pid), sig).map_err(|source| SandboxError::Sys {
                    action: "kill(vmm)",
                    source,
                })
            }
        }
    }

    /// Kill every process in the domain's cgroup (works while frozen).
    pub fn kill_all(&self) -> Result<(), SandboxError> {
        self.cgroup().kill_all()
    }

    /// After exit: kill leftovers, remove the cgroup, wipe per-start files. Idempotent.
    pub fn cleanup(&self) -> Result<(), SandboxError> {
        match self {
            DomainRecord::Sandbox(s) => s.cleanup(),
            DomainRecord::Vm(v) => {
                v.cgroup.remove()?;
                bulkhead_sandbox::wipe_dir(&v.scratch_dir)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_sandbox_records_still_load_and_vm_records_round_trip() {
        let sandbox = SandboxRecord {
            name: "x".into(),
            init_pid: 42,
            init_start_time: 7,
            uid_base: bulkhead_sandbox::UID_BASE,
            cgroup: CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead/x".into(),
            },
            scratch_dir: "/s".into(),
            log_writer_pid: None,
            log_writer_start_time: None,
        };
        // What an older domaind wrote: the bare sandbox record.
        let old = serde_json::to_string(&sandbox).unwrap();
        let back: DomainRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(back, DomainRecord::Sandbox(sandbox.clone()));
        assert_eq!(
            back.channel_peers().len(),
            bulkhead_sandbox::UID_RANGE as usize
        );

        let vm = DomainRecord::Vm(VmRecord {
            name: "v".into(),
            vmm_pid: 43,
            vmm_start_time: 8,
            vmm_uid: bulkhead_sandbox::UID_BASE + 65536,
            cgroup: CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead/v".into(),
            },
            scratch_dir: "/s2".into(),
        });
        let j = serde_json::to_string(&vm).unwrap();
        let back: DomainRecord = serde_json::from_str(&j).unwrap();
        assert_eq!(back, vm);
        assert_eq!(back.kind(), "vm");
        assert_eq!(back.main_pid(), 43);
        // A VM's channel accepts the VMM's uid only.
        let peers = back.channel_peers();
        assert!(peers.contains(&(bulkhead_sandbox::UID_BASE + 65536)));
        assert!(!peers.contains(&(bulkhead_sandbox::UID_BASE + 65537)));
    }
}
