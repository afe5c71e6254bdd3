//! The seccomp filter of sandbox domains. Four programs are installed; for each syscall the
//! kernel runs all of them and the most restrictive answer wins (an errno beats allow), so
//! they compose as independent deny rules:
//!
//! 1. the main filter (seccompiler): refuses with EPERM what a desktop domain never needs
//!    ([`DENIED`]: module loading, kexec, bpf, perf, keyrings, the mount API, ptrace and
//!    cross-process memory access, pidfd_getfd, kcmp, NUMA memory policy, io_uring, ...),
//!    plus argument checks: no CLONE_NEWUSER in unshare/clone, personality only default or
//!    query, no TIOCSTI/TIOCLINUX ioctls. Its architecture check kills the process for
//!    syscalls of a foreign architecture (i386 `int 0x80`), so 32-bit binaries do not run.
//! 2. socket families, an allowlist (seccompiler): `socket(2)` and `socketpair(2)` work only
//!    for [`ALLOWED_FAMILIES`] (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK); every other family
//!    gets EAFNOSUPPORT, which programs treat as "not built into this kernel". AF_VSOCK in
//!    particular is not network-namespaced, so a domain could otherwise reach host vsock
//!    listeners (the future VM channel); AF_ALG, AF_PACKET, AF_KEY, AF_BLUETOOTH, AF_RDS,
//!    AF_TIPC, ... are kernel attack surface a desktop domain does not need.
//! 3. clone3 (seccompiler): ENOSYS, because its flags live in memory that seccomp cannot
//!    read; libc falls back to clone(2), whose flags filter 1 checks.
//! 4. syscall-number ceiling (hand-written BPF): every number above [`LAST_REVIEWED_NR`]
//!    gets ENOSYS. seccompiler matches exact syscall numbers only (its rules are a map from
//!    number to argument conditions, with no "nr > N" form), so a deny list built with it has
//!    a gap for every syscall a newer kernel adds (listmount, statmount, open_tree_attr,
//!    file_setattr, ...). This four-instruction program closes that gap: syscalls nobody has
//!    reviewed are refused by default, with ENOSYS so libc falls back to the older call as it
//!    does on an older kernel. To allow a newer syscall, review it and raise the ceiling (or
//!    add an explicit exception). On x86_64 it also refuses the whole x32 ABI (numbers with
//!    bit 30 set are far above the ceiling; x32 shares the x86_64 audit arch, so filter 1's
//!    exact numbers never match them). It checks no architecture: a foreign-arch syscall is
//!    killed by filter 1, and a kill outranks any errno.
//!
//! The capability drop and the namespaces do the rest; this filter reduces the kernel
//! surface a domain can reach. The domain init and agent need (and keep) kill,
//! rt_sigqueueinfo, setsid, setgroups, setresuid/setresgid and pidfd_open.

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
    // another process's fds, kernel pointer-order oracle, another process's memory advice
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("process_madvise", libc::SYS_process_madvise),
    // NUMA placement: moving other processes' pages, memory policy (historically buggy)
    ("move_pages", libc::SYS_move_pages),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("mbind", libc::SYS_mbind),
    ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node),
    #[cfg(target_arch = "x86_64")]
    ("modify_ldt", libc::SYS_modify_ldt),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
    #[cfg(target_arch = "x86_64")]
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    #[cfg(target_arch = "x86_64")]
    ("uselib", libc::SYS_uselib),
];

/// Socket families `socket(2)` and `socketpair(2)` accept; everything else gets EAFNOSUPPORT.
pub(crate) const ALLOWED_FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// The highest syscall number the filter has been reviewed against: 456 (futex_requeue,
/// Linux 6.7). Since Linux 5.1 new syscalls get the same number on every architecture, so
/// the ceiling is the same on x86_64 and aarch64. Everything above it (statmount 457,
/// listmount 458, the lsm_* calls, mseal, the *xattrat calls, open_tree_attr 467,
/// file_getattr/file_setattr, and whatever comes next) gets ENOSYS.
pub(crate) const LAST_REVIEWED_NR: u32 = 456;

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

/// The programs to install, in order. `pin_core_limit`: the host's core dumps would reach
/// the host (see `crate::coredump`), so the domain's RLIMIT_CORE of 1 must stay (a domain
/// that lowered it to 0 would have a pipe helper started again): [`core_limit_filter`].
pub(crate) fn programs(pin_core_limit: bool) -> Result<Vec<BpfProgram>, String> {
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
    let mut out = vec![
        main.try_into().map_err(|e| format!("compile: {e:?}"))?,
        socket_filter()?,
        clone3.try_into().map_err(|e| format!("compile: {e:?}"))?,
        ceiling_filter(),
    ];
    if pin_core_limit {
        out.push(core_limit_filter()?);
    }
    Ok(out)
}

/// Setting RLIMIT_CORE (setrlimit, or prlimit64 with a new limit) "succeeds" without doing
/// anything (errno 0: the syscall is skipped and returns 0). The limit stays 1, which is
/// already "no core dump": programs that lower it to disable their cores (sudo, ssh) get
/// what they asked for and see no error; raising it was refused by the hard limit anyway.
/// Reading the limit (prlimit64 with a NULL new limit, getrlimit) is untouched.
fn core_limit_filter() -> Result<BpfProgram, String> {
    let core = libc::RLIMIT_CORE as u64;
    let e = |x: seccompiler::BackendError| format!("{x:?}");
    let mut rules = BTreeMap::new();
    rules.insert(
        libc::SYS_setrlimit,
        vec![
            SeccompRule::new(vec![cond32(0, SeccompCmpOp::Eq, core).map_err(e)?])
                .map_err(|x| format!("{x:?}"))?,
        ],
    );
    rules.insert(
        libc::SYS_prlimit64,
        vec![SeccompRule::new(vec![
            cond32(1, SeccompCmpOp::Eq, core).map_err(e)?,
            cond(2, SeccompCmpOp::Ne, 0).map_err(e)?,
        ])
        .map_err(|x| format!("{x:?}"))?],
    );
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(0),
        arch()?,
    )
    .map_err(|x| format!("seccomp core limit filter: {x:?}"))?;
    f.try_into().map_err(|x| format!("compile: {x:?}"))
}

/// socket(2) and socketpair(2): EAFNOSUPPORT unless the family (argument 0, an int) is one of
/// [`ALLOWED_FAMILIES`]. One rule whose conditions are all "family != allowed": they must
/// all hold (AND) for the errno.
fn socket_filter() -> Result<BpfProgram, String> {
    let not_allowed = || -> Result<SeccompRule, String> {
        let conds = ALLOWED_FAMILIES
            .iter()
            .map(|f| cond32(0, SeccompCmpOp::Ne, *f as u64).map_err(|e| format!("{e:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        SeccompRule::new(conds).map_err(|e| format!("{e:?}"))
    };
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_socket, vec![not_allowed()?]);
    rules.insert(libc::SYS_socketpair, vec![not_allowed()?]);
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch()?,
    )
    .map_err(|e| format!("seccomp socket filter: {e:?}"))?;
    f.try_into().map_err(|e| format!("compile: {e:?}"))
}

/// ENOSYS for every syscall number above [`LAST_REVIEWED_NR`] (see the module docs for why
/// this is hand-written BPF).
fn ceiling_filter() -> BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS
    const BPF_LD_W_ABS: u16 = 0x20;
    // BPF_JMP | BPF_JGT | BPF_K (unsigned compare)
    const BPF_JMP_JGT_K: u16 = 0x05 | 0x20;
    const BPF_RET_K: u16 = 0x06;
    vec![
        // A = seccomp_data.nr (offset 0)
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // nr > ceiling: next instruction (ENOSYS), else skip it (allow)
        sock_filter {
            code: BPF_JMP_JGT_K,
            jt: 0,
            jf: 1,
            k: LAST_REVIEWED_NR,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
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
        let p = programs(false).expect("compile");
        assert_eq!(programs(true).expect("compile").len(), p.len() + 1);
        assert!(p.len() >= 2);
        assert!(p[0].len() > DENIED.len());
    }

    /// Runs `check` in a forked child with the filters installed; it returns the number of
    /// the first failed expectation (0 = all held), which becomes the exit code.
    fn in_filtered_child(check: fn() -> i32) {
        in_child_with(programs(false).expect("compile"), check)
    }

    fn in_child_with(progs: Vec<BpfProgram>, check: fn() -> i32) {
        // SAFETY: the test harness may be multi-threaded; the child only makes raw syscalls
        // and exits with _exit, never returning into Rust code that could take locks.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: prctl with constant arguments.
                let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if nnp == 0 && install(&progs).is_ok() {
                    check()
                } else {
                    100
                };
                // SAFETY: _exit never returns and runs no destructors.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert_eq!(
                    st,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "exit code = number of the failed expectation"
                );
            }
            Err(e) => panic!("fork: {e}"),
        }
    }

    /// -1 with this errno.
    fn refused(ret: libc::c_long, errno: i32) -> bool {
        ret == -1 && nix::Error::last_raw() == errno
    }

    /// With the core limit pinned, lowering RLIMIT_CORE from 1 to 0 "succeeds" and changes
    /// nothing; reading it and setting other limits work.
    #[test]
    fn a_pinned_core_limit_stays_one() {
        in_child_with(programs(true).expect("compile"), || {
            let get = |r| {
                let mut l = libc::rlimit {
                    rlim_cur: 9,
                    rlim_max: 9,
                };
                // SAFETY: getrlimit writes into the struct passed by reference.
                let ok = unsafe { libc::getrlimit(r, &mut l) } == 0;
                (ok, l.rlim_cur, l.rlim_max)
            };
            let set = |r, v| {
                let l = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                // SAFETY: setrlimit reads the struct passed by reference.
                unsafe { libc::setrlimit(r, &l) }
            };
            let nofile = get(libc::RLIMIT_NOFILE);
            let core = get(libc::RLIMIT_CORE);
            let checks = [
                nofile.0 && core.0,
                // other limits are still set for real
                set(libc::RLIMIT_NOFILE, nofile.1) == 0,
                // RLIMIT_CORE "succeeds" and stays what it was
                set(libc::RLIMIT_CORE, 7) == 0,
                get(libc::RLIMIT_CORE) == core,
                set(libc::RLIMIT_CORE, 0) == 0,
                get(libc::RLIMIT_CORE) == core,
            ];
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
        });
    }

    #[test]
    fn filter_refuses_in_a_forked_child() {
        in_filtered_child(|| {
            // Each call runs in the forked child only, which exits right after the checks.
            let checks: [bool; 5] = [
                refused(
                    // SAFETY: keyctl with integer arguments only (operation 0, no pointer);
                    // nothing of ours is read or written.
                    unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) },
                    libc::EPERM,
                ),
                refused(
                    // SAFETY: unshare takes flags only; a new user namespace would affect
                    // only this child.
                    unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into(),
                    libc::EPERM,
                ),
                // SAFETY: personality takes a flag value; a change would affect only this child.
                refused(unsafe { libc::personality(0x0040000) }.into(), libc::EPERM),
                refused(
                    // SAFETY: clone3 with a null args pointer and size 0 reads no memory and
                    // creates no process (the kernel rejects that size).
                    unsafe { libc::syscall(libc::SYS_clone3, 0, 0) },
                    libc::ENOSYS,
                ),
                // SAFETY: getpid takes no arguments and cannot fail.
                unsafe { libc::getpid() } > 0,
            ];
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
        });
    }

    #[test]
    fn socket_families_are_an_allowlist() {
        in_filtered_child(|| {
            let sock = |fam: i32, ty: i32, proto: i32| -> libc::c_long {
                // SAFETY: socket takes integers; a returned fd is closed at once.
                let fd = unsafe { libc::socket(fam, ty | libc::SOCK_CLOEXEC, proto) };
                if fd >= 0 {
                    // SAFETY: fd was just returned to us.
                    unsafe { libc::close(fd) };
                }
                fd.into()
            };
            let pair = |fam: i32| -> libc::c_long {
                let mut fds = [-1; 2];
                // SAFETY: socketpair writes two ints into `fds`.
                let r = unsafe { libc::socketpair(fam, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
                for fd in fds.into_iter().filter(|fd| *fd >= 0) {
                    // SAFETY: fds just returned to us.
                    unsafe { libc::close(fd) };
                }
                r.into()
            };
            let nope = libc::EAFNOSUPPORT;
            let checks: [bool; 12] = [
                sock(libc::AF_UNIX, libc::SOCK_STREAM, 0) >= 0,
                sock(libc::AF_INET, libc::SOCK_DGRAM, 0) >= 0,
                sock(libc::AF_INET6, libc::SOCK_STREAM, 0) >= 0,
                sock(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE) >= 0,
                pair(libc::AF_UNIX) == 0,
                refused(sock(libc::AF_VSOCK, libc::SOCK_STREAM, 0), nope),
                refused(sock(libc::AF_ALG, libc::SOCK_SEQPACKET, 0), nope),
                refused(sock(libc::AF_PACKET, libc::SOCK_RAW, 0), nope),
                refused(sock(libc::AF_KEY, libc::SOCK_RAW, 2), nope),
                refused(sock(libc::AF_BLUETOOTH, libc::SOCK_RAW, 0), nope),
                refused(pair(libc::AF_VSOCK), nope),
                refused(pair(libc::AF_TIPC), nope),
            ];
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
        });
    }

    #[test]
    fn new_and_cross_process_syscalls_are_refused() {
        in_filtered_child(|| {
            // SAFETY: syscall `nr` with six zero arguments: integers and null pointers only,
            // so none reads or writes memory of ours; it runs in the forked child, which exits
            // right after the checks, so whatever the kernel does stays there.
            let sc = |nr: libc::c_long| unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
            let me = std::process::id() as libc::c_long;
            let checks: [bool; 13] = [
                // above the ceiling: statmount, listmount, mseal, open_tree_attr, far future
                refused(sc(457), libc::ENOSYS),
                refused(sc(458), libc::ENOSYS),
                refused(sc(libc::SYS_mseal), libc::ENOSYS),
                refused(sc(467), libc::ENOSYS),
                refused(sc(4000), libc::ENOSYS),
                // newly denied
                refused(
                    // SAFETY: kcmp(pid, pid, KCMP_FILE, 0, 0): integers only.
                    unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 0, 0) },
                    libc::EPERM,
                ),
                refused(sc(libc::SYS_pidfd_getfd), libc::EPERM),
                refused(sc(libc::SYS_process_madvise), libc::EPERM),
                refused(sc(libc::SYS_mbind), libc::EPERM),
                refused(sc(libc::SYS_migrate_pages), libc::EPERM),
                // still allowed: the last reviewed numbers and what the init needs
                !refused(sc(libc::SYS_futex_waitv), libc::ENOSYS)
                    && !refused(sc(libc::SYS_futex_waitv), libc::EPERM),
                // SAFETY: pidfd_open of ourselves; the fd is leaked into a child that exits.
                unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) } >= 0,
                // SAFETY: setsid takes no arguments (EPERM only if already a group leader).
                unsafe { libc::setsid() } > 0 || nix::Error::last_raw() == libc::EPERM,
            ];
            #[cfg(target_arch = "x86_64")]
            {
                // x32 getpid and modify_ldt
                if !refused(sc(0x4000_0000 | libc::SYS_getpid), libc::ENOSYS) {
                    return 50;
                }
                if !refused(sc(libc::SYS_modify_ldt), libc::EPERM) {
                    return 51;
                }
            }
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
        });
    }
}
