//! The helper modes the tests run: `idle` (a minimal init), `inotify-hog`, and the single
//! i386 system call of `int80`.

use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::Context;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use crate::child::{drop_to, in_child, status_pid};

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

pub(crate) fn idle(root_file: Option<PathBuf>, user_file: Option<PathBuf>) -> anyhow::Result<()> {
    // pid 1 gets no default signal actions: install a SIGTERM handler so shutdown works.
    // SAFETY: the handler only calls _exit, which is async-signal-safe.
    unsafe {
        nix::sys::signal::signal(
            Signal::SIGTERM,
            nix::sys::signal::SigHandler::Handler(on_term),
        )
    }
    .context("install SIGTERM handler")?;
    if let Some(p) = root_file {
        fs::write(&p, "root\n").with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = user_file {
        let status = in_child(|| {
            drop_to(1000)?;
            fs::write(&p, "user\n").map_err(|e| anyhow::anyhow!("write {}: {e}", p.display()))
        })?;
        anyhow::ensure!(
            status == WaitStatus::Exited(status_pid(&status), 0),
            "user write: {status:?}"
        );
    }
    println!("READY");
    let _ = std::io::stdout().flush();
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            Err(Errno::ECHILD) => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

pub(crate) fn inotify_hog() -> anyhow::Result<()> {
    let mut held: Vec<OwnedFd> = Vec::new();
    let error = loop {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            break Errno::last();
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        if held.len() >= 1 << 20 {
            break Errno::UnknownErrno;
        }
    };
    let userns_max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable:{e}"));
    println!(
        "INOTIFY-HOG opened={} error={error:?} userns_max={userns_max}",
        held.len()
    );
    idle(None, None)
}

/// One i386 system call through the 32-bit entry `int 0x80`, from this 64-bit process.
/// Returns what the kernel put in eax (sign-extended), when the call returns at all.
#[cfg(target_arch = "x86_64")]
pub(crate) fn int80(nr: u32, arg: u32) -> i64 {
    let mut ret: u32 = nr;
    // SAFETY: `int 0x80` enters the kernel's i386 system call path with eax = number and
    // ebx = first argument (ecx, edx zero). rbx is reserved by LLVM, so the argument is
    // swapped into it and back. The compat entry clobbers r8-r11; the rest is preserved.
    unsafe {
        std::arch::asm!(
            "xchg {a:r}, rbx",
            "int 0x80",
            "xchg {a:r}, rbx",
            a = inout(reg) arg as u64 => _,
            inout("eax") ret,
            in("ecx") 0u32,
            in("edx") 0u32,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    ret as i32 as i64
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn int80(_nr: u32, _arg: u32) -> i64 {
    -(libc::ENOSYS as i64)
}
