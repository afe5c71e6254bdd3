//! Seccomp filters per thread kind (seccompiler), installed when the VMM is confined.
//!
//! - **control** (the main thread once the vCPUs run): waits for the stop event, kicks and
//!   joins the vCPU threads, logs, exits. No ioctl, no open, no socket.
//! - **vcpu**: `KVM_RUN` and `KVM_GET_REGS` (to name the RIP of a KVM internal error) only
//!   among ioctls, the serial log (write/pread/pwrite/ftruncate), eventfd writes. No thread
//!   creation, no sockets: a device's worker thread is started with its transport before the
//!   vCPUs run, and a DRIVER_OK write only hands it work (bulkhead-virtio's worker module).
//! - **device**: epoll, eventfds, block I/O on already open files (pread/pwrite/fdatasync),
//!   AF_UNIX sockets for the hybrid vsock, tap reads/writes, getrandom. No KVM ioctls.
//!
//! Every filter refuses mmap/mprotect with PROT_EXEC. A syscall outside the list kills the
//! process (`BULKHEAD_VMM_SECCOMP=log` logs instead, for finding a missing syscall).

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind} seccomp filter: {message}")]
    Build { kind: &'static str, message: String },
    #[error("installing the {kind} seccomp filter: {source}")]
    Apply {
        kind: &'static str,
        source: seccompiler::Error,
    },
}

/// The three compiled programs.
#[derive(Clone)]
pub struct Filters {
    pub control: Arc<BpfProgram>,
    pub vcpu: Arc<BpfProgram>,
    pub device: Arc<BpfProgram>,
}

/// `_IO(KVMIO, 0x80)`
const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`
const KVM_GET_REGS: u64 =
    nix::request_code_read!(0xae, 0x81, std::mem::size_of::<kvm_bindings::kvm_regs>()) as u64;

type Rules = Vec<(i64, Vec<SeccompRule>)>;

fn cond(arg: u8, op: Op, v: u64) -> Result<Cond, seccompiler::BackendError> {
    Cond::new(arg, Len::Qword, op, v)
}

fn allow(list: &[i64]) -> Rules {
    list.iter().map(|&n| (n, vec![])).collect()
}

/// Syscalls every Rust thread of ours needs (allocation, thread start/exit, futexes, signals
/// for the vCPU kick, logging to stderr, time).
fn common() -> Result<Rules, seccompiler::BackendError> {
    let mut r = allow(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_munmap,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_rseq,
        libc::SYS_set_robust_list,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_restart_syscall,
        libc::SYS_fcntl,
        libc::SYS_getrandom,
    ]);
    // No executable mappings: PROT_EXEC (4) must be clear in the protection argument.
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![SeccompRule::new(vec![Cond::new(
            2,
            Len::Dword,
            Op::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    r.push((libc::SYS_mmap, no_exec()?));
    r.push((libc::SYS_mprotect, no_exec()?));
    // prctl: thread names only. Every thread installs its filter while still unfiltered (no
    // filtered thread creates threads), so no filter allows seccomp or PR_SET_NO_NEW_PRIVS.
    r.push((
        libc::SYS_prctl,
        vec![SeccompRule::new(vec![cond(
            0,
            Op::Eq,
            libc::PR_SET_NAME as u64,
        )?])?],
    ));
    Ok(r)
}

fn device_extra() -> Result<Rules, seccompiler::BackendError> {
    let mut r = allow(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_lseek,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_connect,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_poll,
        libc::SYS_ppoll,
    ]);
    // Sockets: AF_UNIX only (the hybrid vsock's connections to <uds>_<port>).
    r.push((
        libc::SYS_socket,
        vec![SeccompRule::new(vec![cond(
            0,
            Op::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    ));
    // ioctl: FIONBIO only (std's set_nonblocking on accepted/connected streams).
    r.push((
        libc::SYS_ioctl,
        vec![SeccompRule::new(vec![cond(1, Op::Eq, libc::FIONBIO)?])?],
    ));
    Ok(r)
}

/// Collects rules per syscall: an unconditional entry (empty rule list) wins, conditional
/// rules for the same syscall add up.
fn to_map(rules: Rules) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, r) in rules {
        match m.get_mut(&nr) {
            None => {
                m.insert(nr, r);
            }
            Some(e) if e.is_empty() || r.is_empty() => e.clear(),
            Some(e) => e.extend(r),
        }
    }
    m
}

fn compile(
    kind: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
) -> Result<Arc<BpfProgram>, SeccompError> {
    let err = |message: String| SeccompError::Build { kind, message };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| err(e.to_string()))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(e.to_string()))?;
    Ok(Arc::new(prog))
}

/// Builds the control, vCPU and device filters.
pub fn filters() -> Result<Filters, SeccompError> {
    let mismatch = if std::env::var("BULKHEAD_VMM_SECCOMP").as_deref() == Ok("log") {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let b = |kind: &'static str| {
        move |e: seccompiler::BackendError| SeccompError::Build {
            kind,
            message: e.to_string(),
        }
    };

    let mut control = common().map_err(b("control"))?;
    control.extend(allow(&[libc::SYS_tgkill, libc::SYS_wait4]));

    let mut vcpu = common().map_err(b("vcpu"))?;
    vcpu.extend(allow(&[
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_ftruncate,
        libc::SYS_tgkill,
    ]));
    vcpu.push((
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(1, Op::Eq, KVM_RUN).map_err(b("vcpu"))?])
                .map_err(b("vcpu"))?,
            SeccompRule::new(vec![cond(1, Op::Eq, KVM_GET_REGS).map_err(b("vcpu"))?])
                .map_err(b("vcpu"))?,
        ],
    ));
    let mut device = common().map_err(b("device"))?;
    device.extend(device_extra().map_err(b("device"))?);
    Ok(Filters {
        control: compile("control", to_map(control), mismatch.clone())?,
        vcpu: compile("vcpu", to_map(vcpu), mismatch.clone())?,
        device: compile("device", to_map(device), mismatch)?,
    })
}

/// Installs `prog` on the calling thread.
pub fn apply(kind: &'static str, prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(|source| SeccompError::Apply { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;

    #[test]
    fn filters_compile() {
        let f = filters().unwrap();
        assert!(!f.control.is_empty() && !f.vcpu.is_empty() && !f.device.is_empty());
    }

    /// Runs the raw syscall `nr(args)` in a child with `prog` installed and returns how the
    /// child ended (in a child: KillProcess would take the test runner down).
    fn run_filtered(prog: &BpfProgram, nr: i64, args: [u64; 3]) -> WaitStatus {
        // SAFETY: the child only makes raw syscalls and _exits; it takes no locks after fork
        // (the filter was compiled before).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                if apply("test", prog).is_err() {
                    // SAFETY: _exit is always safe to call.
                    unsafe { libc::_exit(3) };
                }
                // SAFETY: a raw syscall whose pointer arguments (if any) point to live data
                // or are invalid on purpose (the kernel checks them: EFAULT, no UB).
                unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    fn killed(st: WaitStatus) -> bool {
        matches!(st, WaitStatus::Signaled(_, Signal::SIGSYS, _))
    }

    #[test]
    fn a_device_worker_may_not_open_files() {
        let f = filters().unwrap();
        let path = c"/etc/passwd".as_ptr() as u64;
        let st = run_filtered(
            &f.device,
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, path, 0],
        );
        assert!(killed(st), "{st:?}");
    }

    #[test]
    fn a_vcpu_thread_may_not_make_sockets_or_threads() {
        let f = filters().unwrap();
        let unix = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0];
        let st = run_filtered(&f.vcpu, libc::SYS_socket, unix);
        assert!(killed(st), "socket: {st:?}");
        // Invalid arguments: the filter decides before the kernel looks at them.
        let st = run_filtered(&f.vcpu, libc::SYS_clone3, [0, 0, 0]);
        assert!(killed(st), "clone3: {st:?}");
        // The device filter does allow AF_UNIX sockets (the hybrid vsock).
        let st = run_filtered(&f.device, libc::SYS_socket, unix);
        assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), 0));
    }

    #[test]
    fn a_vcpu_thread_may_read_registers() {
        // KVM_GET_REGS on a closed fd fails with EBADF instead of killing the process.
        let f = filters().unwrap();
        let st = run_filtered(&f.vcpu, libc::SYS_ioctl, [u64::MAX >> 33, KVM_GET_REGS, 0]);
        assert_eq!(st, WaitStatus::Exited(st.pid().unwrap(), 0));
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
    }
}
