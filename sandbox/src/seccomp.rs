//! The seccomp filter of sandbox domains: refuses, with EPERM, what a desktop domain never
//! needs. Everything else is allowed (the capability drop and the namespaces do the rest).
//! Syscalls of a foreign architecture (i386 `int 0x80`) kill the process (seccompiler's arch
//! check), so 32-bit binaries do not run in domains.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Refused unconditionally.
pub(crate) const DENIED: &[(&str, libc::c_long)] = &[
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("quotactl_fd", libc::SYS_quotactl_fd),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("syslog", libc::SYS_syslog),
    ("vhangup", libc::SYS_vhangup),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

fn cond32(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp arch: {e:?}"))
}

/// The programs to install, in order.
pub(crate) fn programs() -> Result<Vec<BpfProgram>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        rules.insert(*nr, vec![]);
    }
    let new_user = libc::CLONE_NEWUSER as u64;
    let r = |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| format!("{e:?}"));
    let c = |res: Result<SeccompCondition, seccompiler::BackendError>| {
        res.map_err(|e| format!("{e:?}"))
    };
    // unshare(CLONE_NEWUSER) and clone(CLONE_NEWUSER): a new user namespace would give the
    // domain a full capability set again (over its own objects, but still a large attack surface).
    rules.insert(
        libc::SYS_unshare,
        vec![r(vec![c(cond(
            0,
            SeccompCmpOp::MaskedEq(new_user),
            new_user,
        ))?])?],
    );
    rules.insert(
        libc::SYS_clone,
        vec![r(vec![c(cond(
            0,
            SeccompCmpOp::MaskedEq(new_user),
            new_user,
        ))?])?],
    );
    // personality: only the default and the query.
    rules.insert(
        libc::SYS_personality,
        vec![r(vec![
            c(cond32(0, SeccompCmpOp::Ne, 0))?,
            c(cond32(0, SeccompCmpOp::Ne, 0xffff_ffff))?,
        ])?],
    );
    // packet sockets (the domain has no CAP_NET_RAW anyway; this closes it twice)
    rules.insert(
        libc::SYS_socket,
        vec![r(vec![c(cond32(
            0,
            SeccompCmpOp::Eq,
            libc::AF_PACKET as u64,
        ))?])?],
    );
    // terminal injection: TIOCSTI pushes input into a terminal, TIOCLINUX can too (selection paste)
    rules.insert(
        libc::SYS_ioctl,
        vec![
            r(vec![c(cond32(1, SeccompCmpOp::Eq, libc::TIOCSTI))?])?,
            r(vec![c(cond32(1, SeccompCmpOp::Eq, libc::TIOCLINUX))?])?,
        ],
    );
    let main = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(|e| format!("seccomp filter: {e:?}"))?;
    // clone3 passes its flags in memory, which seccomp cannot read: answer ENOSYS so libc
    // falls back to clone(2), whose flags the main filter checks.
    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, vec![]);
    let clone3 = SeccompFilter::new(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| format!("seccomp clone3 filter: {e:?}"))?;
    let mut out: Vec<BpfProgram> = vec![
        main.try_into().map_err(|e| format!("compile: {e:?}"))?,
        clone3.try_into().map_err(|e| format!("compile: {e:?}"))?,
    ];
    #[cfg(target_arch = "x86_64")]
    out.push(x32_filter());
    Ok(out)
}

/// x32 syscalls share the x86_64 audit arch with bit 30 set in the number; the filters above
/// match exact numbers, so refuse x32 entirely (it is off on these kernels anyway).
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    vec![
        // A = seccomp_data.nr
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

/// Installs every program on the calling thread (needs no_new_privs).
pub(crate) fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| format!("seccomp install: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let p = programs().expect("compile");
        assert!(p.len() >= 2);
        assert!(p[0].len() > DENIED.len());
    }

    #[test]
    fn filter_refuses_in_a_forked_child() {
        let progs = programs().expect("compile");
        // SAFETY: the test harness may be multi-threaded; the child only makes raw syscalls
        // and exits with _exit, never returning into Rust code that could take locks.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: prctl with constant arguments.
                let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let ok = nnp == 0 && install(&progs).is_ok();
                // SAFETY: raw syscalls with null/zero arguments; none dereference memory we own.
                let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) };
                let e1 = nix::Error::last_raw();
                // SAFETY: as above.
                let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
                let e2 = nix::Error::last_raw();
                // SAFETY: as above.
                let pers = unsafe { libc::personality(0x0040000) };
                let e3 = nix::Error::last_raw();
                // SAFETY: getpid has no arguments.
                let pid_ok = unsafe { libc::getpid() } > 0;
                let code = if ok
                    && keyctl == -1
                    && e1 == libc::EPERM
                    && unshare == -1
                    && e2 == libc::EPERM
                    && pers == -1
                    && e3 == libc::EPERM
                    && pid_ok
                {
                    0
                } else {
                    1
                };
                // SAFETY: _exit never returns and runs no destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
            Err(e) => panic!("fork: {e}"),
        }
    }
}
