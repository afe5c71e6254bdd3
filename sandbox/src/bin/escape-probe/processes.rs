//! Other processes and resource limits: reaching a host process (ptrace, process_vm_readv,
//! kill, pidfd_open), and the fork and memory bombs that the pids and memory limits stop.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::report::{sys, Report};
use crate::BatteryArgs;

pub(crate) fn tracing_host(r: &mut Report, a: &BatteryArgs) {
    let Some(hp) = a.host_pid else { return };
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr/data.
    r.call(
        "ptrace-host-pid",
        sys(unsafe { libc::ptrace(libc::PTRACE_ATTACH, hp, 0usize, 0usize) }),
    );
    let mut buf = [0u8; 64];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: 0x400000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: local iovec points into `buf`, which outlives the call; the remote address is only
    // interpreted in the target process.
    r.call(
        "process-vm-readv-host",
        sys(unsafe { libc::process_vm_readv(hp, &local, 1, &remote, 1, 0) } as libc::c_long),
    );
    r.call("kill-host-pid", kill(Pid::from_raw(hp), None));
    // pidfd_open of the host pid (signals and pidfd_getfd need one)
    // SAFETY: pidfd_open takes integers.
    r.call(
        "pidfd-open-host",
        sys(unsafe { libc::syscall(libc::SYS_pidfd_open, hp, 0) }),
    );
}

pub(crate) fn fork_bomb(r: &mut Report, pids_max: u64) {
    // Fork until the kernel refuses; every child just waits to be killed.
    let cap = pids_max.saturating_mul(4).max(64);
    let mut children = Vec::new();
    let mut stop = None;
    while (children.len() as u64) < cap {
        // SAFETY: the child only pauses until it is killed.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => loop {
                // SAFETY: pause just sleeps.
                unsafe { libc::pause() };
            },
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                stop = Some(e);
                break;
            }
        }
    }
    let n = children.len() as u64;
    for c in &children {
        let _ = kill(*c, Signal::SIGKILL);
    }
    for c in &children {
        let _ = waitpid(*c, None);
    }
    let blocked = stop.is_some() && n < pids_max;
    r.line(
        "fork-bomb",
        blocked,
        format!("forked {n} children before {stop:?} (pids.max {pids_max})"),
    );
}

pub(crate) fn memory_bomb(r: &mut Report, memory_mib: u64) {
    let target_mib = memory_mib.saturating_mul(4);
    // SAFETY: single-threaded; the child allocates and touches memory, then exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..target_mib {
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(1 << 20).is_err() {
                    // SAFETY: exit without unwinding.
                    unsafe { libc::_exit(3) }
                }
                v.resize(1 << 20, 0xa5);
                blocks.push(v);
            }
            // survived allocating four times the limit
            // SAFETY: exit without unwinding.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            let st = waitpid(child, None);
            let (blocked, detail) = match st {
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    (true, format!("allocator killed by {sig:?} (OOM)"))
                }
                Ok(WaitStatus::Exited(_, 3)) => (true, "allocation refused".to_string()),
                Ok(WaitStatus::Exited(_, 0)) => {
                    (false, format!("allocated and touched {target_mib} MiB"))
                }
                other => (true, format!("allocator ended: {other:?}")),
            };
            r.line(
                "memory-bomb",
                blocked,
                format!("{detail} (limit {memory_mib} MiB)"),
            );
        }
        Err(e) => r.line("memory-bomb", true, format!("could not fork: {e}")),
    }
}
