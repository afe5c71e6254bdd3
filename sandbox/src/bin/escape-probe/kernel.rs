//! Kernel interfaces a domain must not reach: keyrings, modules, kexec, bpf, perf,
//! userfaultfd, io_uring and other system calls the filter refuses; new namespaces; and the
//! 32-bit `int 0x80` entry.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::child::in_child;
use crate::modes::int80;
use crate::report::{close_if, sys, Report};

/// i386 `unshare(CLONE_NEWUSER)` through `int 0x80`: the seccomp filter checks the
/// architecture of every call and kills the process for a foreign one. If the call returns
/// at all (whatever its result), the 32-bit path is open.
pub(crate) fn compat_syscalls(r: &mut Report) {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    const I386_UNSHARE: u32 = 310;
    match in_child(|| {
        let ret = int80(I386_UNSHARE, libc::CLONE_NEWUSER as u32);
        println!("ESCAPE-INFO int80 unshare returned {ret}");
        let _ = std::io::stdout().flush();
        // SAFETY: leave at once with a code the parent recognises.
        unsafe { libc::_exit(42) }
    }) {
        Ok(WaitStatus::Signaled(_, Signal::SIGSYS, _)) => r.line(
            "int80-unshare-user",
            true,
            "killed by SIGSYS (seccomp architecture check)",
        ),
        Ok(WaitStatus::Signaled(_, Signal::SIGSEGV, _)) => r.line(
            "int80-unshare-user",
            true,
            "SIGSEGV: this kernel has no IA32 emulation",
        ),
        Ok(st) => r.line(
            "int80-unshare-user",
            false,
            format!("the 32-bit call returned: {st:?}"),
        ),
        Err(e) => r.line("int80-unshare-user", false, format!("fork: {e}")),
    }
}

pub(crate) fn kernel_interfaces(r: &mut Report) {
    let desc = c"x";
    // SAFETY: add_key with static NUL-terminated strings and a 1-byte payload.
    r.call(
        "keyring-add-key",
        sys(unsafe {
            libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                c"x".as_ptr(),
                1usize,
                -2 as libc::c_long, // KEY_SPEC_PROCESS_KEYRING
            )
        }),
    );
    // SAFETY: KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), create=1; integers only.
    r.call(
        "keyring-keyctl",
        sys(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3 as libc::c_long, 1) }),
    );
    // SAFETY: request_key with static strings.
    r.call(
        "keyring-request-key",
        sys(unsafe {
            libc::syscall(
                libc::SYS_request_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                std::ptr::null::<u8>(),
                0,
            )
        }),
    );
    let image = [0u8; 64];
    // SAFETY: init_module reads `image` (64 valid bytes) and the static params string.
    r.call(
        "init-module",
        sys(unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len(),
                c"".as_ptr(),
            )
        }),
    );
    let devnull = fs::File::open("/dev/null");
    let fd = devnull.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: finit_module with an fd we own and a static params string.
    r.call(
        "finit-module",
        sys(unsafe { libc::syscall(libc::SYS_finit_module, fd, c"".as_ptr(), 0) }),
    );
    // SAFETY: delete_module with a static name.
    r.call(
        "delete-module",
        sys(unsafe { libc::syscall(libc::SYS_delete_module, c"loop".as_ptr(), libc::O_NONBLOCK) }),
    );
    // SAFETY: kexec_load with zero segments and a NULL segment array.
    r.call(
        "kexec-load",
        sys(unsafe {
            libc::syscall(
                libc::SYS_kexec_load,
                0usize,
                0usize,
                std::ptr::null::<u8>(),
                0usize,
            )
        }),
    );
    // SAFETY: kexec_file_load with invalid fds and a static empty cmdline.
    r.call(
        "kexec-file-load",
        sys(unsafe {
            libc::syscall(
                libc::SYS_kexec_file_load,
                fd,
                fd,
                1usize,
                c"".as_ptr(),
                0usize,
            )
        }),
    );
    // bpf(BPF_MAP_CREATE) with a small array map.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key size
    attr[2] = 4; // value size
    attr[3] = 1; // max entries
                 // SAFETY: attr is a valid 128-byte buffer for union bpf_attr.
    let b = sys(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    });
    close_if(&b);
    r.call("bpf-map-create", b);
    let mut pattr = [0u8; 128];
    pattr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
                                                        // SAFETY: pattr is a zeroed perf_event_attr (type HARDWARE, config CYCLES) of the stated size.
    let p = sys(unsafe { libc::syscall(libc::SYS_perf_event_open, pattr.as_ptr(), 0, -1, -1, 0) });
    close_if(&p);
    r.call("perf-event-open", p);
    // SAFETY: userfaultfd takes flags only.
    let u = sys(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) });
    close_if(&u);
    r.call("userfaultfd", u);
    let params = [0u8; 128];
    // SAFETY: io_uring_setup with a zeroed params struct large enough for the kernel's.
    let io = sys(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_ptr()) });
    close_if(&io);
    r.call("io-uring-setup", io);
    // SAFETY: personality with a flag value; restored below if it succeeded.
    let pers = sys(unsafe { libc::personality(0x0400000) } as libc::c_long); // READ_IMPLIES_EXEC
    if pers.is_ok() {
        // SAFETY: back to the default persona.
        unsafe { libc::personality(0) };
    }
    r.call("personality-read-implies-exec", pers);
    // TIOCSTI: typing into a terminal (the classic sandbox-to-parent-shell injection); tried on
    // a pty of our own, which is harmless if it worked.
    let tiocsti = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|f| {
            let ch: libc::c_char = b'x' as libc::c_char;
            // SAFETY: TIOCSTI reads one byte from `ch`, which is valid for the call.
            sys(unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCSTI, &ch) } as libc::c_long)
        });
    r.call("ioctl-tiocsti", tiocsti);
    // SAFETY: reboot with the CAD_OFF command (harmless even if allowed in a pid namespace).
    r.call(
        "reboot",
        sys(unsafe { libc::reboot(libc::RB_DISABLE_CAD) } as libc::c_long),
    );
    // SAFETY: swapoff of a static path.
    r.call(
        "swapoff",
        sys(unsafe { libc::swapoff(c"/dev/vda".as_ptr()) } as libc::c_long),
    );
    // SAFETY: settimeofday to the current time read just before (no-op if it were allowed).
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: gettimeofday writes into tv.
    unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    // SAFETY: tv is valid; tz NULL.
    r.call(
        "settimeofday",
        sys(unsafe { libc::settimeofday(&tv, std::ptr::null()) } as libc::c_long),
    );
    let mut handle = [0u8; 136];
    handle[0..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at writes into `handle` (128 bytes of f_handle) and mount_id.
    r.call(
        "name-to-handle-at",
        sys(unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                handle.as_mut_ptr(),
                &mut mount_id,
                0,
            )
        }),
    );
    // SAFETY: open_by_handle_at reads the handle buffer.
    let o = sys(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            libc::AT_FDCWD,
            handle.as_ptr(),
            libc::O_RDONLY,
        )
    });
    close_if(&o);
    r.call("open-by-handle-at", o);
    // kcmp compares kernel objects of two processes (an ordering oracle on kernel pointers)
    let me = std::process::id() as libc::c_long;
    // SAFETY: kcmp(pid, pid, KCMP_FILE, 0, 0) takes integers only.
    r.call(
        "kcmp",
        sys(unsafe { libc::syscall(libc::SYS_kcmp, me, me, 0, 0, 0) }),
    );
    // pidfd_getfd on our own pidfd (stdin): steals fds from a process when allowed
    // SAFETY: pidfd_open of ourselves, then pidfd_getfd on it with integer arguments.
    let pidfd = sys(unsafe { libc::syscall(libc::SYS_pidfd_open, me, 0) });
    let g = pidfd.and_then(|pfd| {
        // SAFETY: as above.
        let r = sys(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd, 0, 0) });
        close_if(&Ok(pfd));
        r
    });
    close_if(&g);
    r.call("pidfd-getfd", g);
    // listmount (Linux 6.8), above the filter's syscall-number ceiling: ENOSYS by default.
    // A NULL request of size 0 is rejected by the kernel (EINVAL) when the call is allowed;
    // any success or non-ENOSYS error means the ceiling is not in place.
    // SAFETY: NULL pointers with zero sizes; the kernel reads nothing.
    let lm = sys(unsafe { libc::syscall(458, 0usize, 0usize, 0usize, 0usize) });
    r.line(
        "listmount-new-syscall",
        lm == Err(Errno::ENOSYS),
        format!("{lm:?}"),
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: modify_ldt(0 = read, NULL, 0) writes nothing.
        r.call(
            "modify-ldt",
            sys(unsafe { libc::syscall(libc::SYS_modify_ldt, 0, 0usize, 0usize) }),
        );
        // SAFETY: iopl(3) takes an integer.
        r.call("iopl", sys(unsafe { libc::syscall(libc::SYS_iopl, 3) }));
        // SAFETY: ioperm on port 0x80 takes integers.
        r.call(
            "ioperm",
            sys(unsafe { libc::syscall(libc::SYS_ioperm, 0x80, 1, 1) }),
        );
    }
}

pub(crate) fn namespaces(r: &mut Report) {
    // SAFETY: unshare takes flags.
    r.call(
        "unshare-user",
        sys(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long),
    );
    // SAFETY: as above.
    r.call(
        "unshare-mount",
        sys(unsafe { libc::unshare(libc::CLONE_NEWNS) } as libc::c_long),
    );
    // SAFETY: as above.
    r.call(
        "unshare-net",
        sys(unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long),
    );
    // raw clone with CLONE_NEWUSER: a child that exits at once if it was created
    // SAFETY: fork-like clone (no CLONE_VM, NULL stack) in a single-threaded process; the child
    // exits immediately.
    let c = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if c == 0 {
        // SAFETY: child exits at once.
        unsafe { libc::_exit(0) }
    }
    let res = sys(c);
    if let Ok(pid) = res {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
    }
    r.call("clone-newuser", res);
    // clone3 with CLONE_NEWUSER (flags in memory: the filter answers ENOSYS for all clone3)
    let mut args = [0u64; 11];
    args[0] = libc::CLONE_NEWUSER as u64;
    args[4] = libc::SIGCHLD as u64; // exit_signal
                                    // SAFETY: args is a valid clone_args of the given size; a child would exit at once.
    let c3 = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    if c3 == 0 {
        // SAFETY: child exits at once.
        unsafe { libc::_exit(0) }
    }
    let res = sys(c3);
    if let Ok(pid) = res {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
    }
    r.call("clone3-newuser", res);
    let setns = fs::File::open("/proc/1/ns/mnt")
        .map_err(|_| Errno::EACCES)
        .and_then(|f| nix::sched::setns(f, nix::sched::CloneFlags::empty()));
    r.call("setns-mnt", setns);
}
