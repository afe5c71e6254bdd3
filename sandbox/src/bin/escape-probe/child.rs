//! Running code in a forked child and dropping to an unprivileged uid.

use anyhow::Context;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};

pub(crate) fn status_pid(s: &WaitStatus) -> Pid {
    s.pid().unwrap_or(Pid::from_raw(0))
}

pub(crate) fn drop_to(uid: u32) -> anyhow::Result<()> {
    nix::unistd::setgroups(&[]).context("setgroups")?;
    nix::unistd::setresgid(Gid::from_raw(uid), Gid::from_raw(uid), Gid::from_raw(uid))
        .context("setresgid")?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .context("setresuid")?;
    Ok(())
}

/// Runs `f` in a forked child; returns its wait status (exit 0 = Ok, 1 = Err).
pub(crate) fn in_child(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<WaitStatus> {
    // SAFETY: the probe is single-threaded, so the child may run ordinary code.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = match f() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("child: {e:#}");
                    1
                }
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(waitpid(child, None).context("waitpid")?),
    }
}
