//! Starting an exec request's process and serving its stream.

use std::ffi::CString;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::Stdio;

use bulkhead_wire::{exec, ExecRequest, ExitStatus, Stream};
use nix::sys::signal::Signal;
use nix::unistd::Uid;

use crate::account::{self, Account, AccountError};

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The requested user does not resolve.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// fork/exec failed (program missing, not executable, cwd missing, ...).
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Builds the command for `req` running as `acct`: clean environment (HOME, USER, LOGNAME,
/// SHELL, PATH, XDG_RUNTIME_DIR and WAYLAND_DISPLAY of the domain's GUI session plus the request's env), cwd = request cwd or home (or / if the home cannot be
/// entered), changed after the uid switch,
/// a new session, supplementary groups, gid and uid (uid change skipped when it already
/// matches ours), pipes for stdin/stdout/stderr.
pub fn command(req: &ExecRequest, acct: &Account) -> tokio::process::Command {
    let mut cmd = std::process::Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..])
        .env_clear()
        .env("HOME", &acct.home)
        .env("USER", &acct.name)
        .env("LOGNAME", &acct.name)
        .env("SHELL", &acct.shell)
        .env("PATH", acct.path_env())
        // Every command finds the domain's Wayland display (contract E).
        .envs(crate::gui::session_env())
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The directory change happens in the child after the uid switch: the domain's root
    // has no CAP_DAC_OVERRIDE, so only the user may enter a 0700 home.
    let (cwd, cwd_required) = match &req.cwd {
        Some(c) => (c.clone(), true),
        None => (acct.home.to_string_lossy().into_owned(), false),
    };
    // Request paths never contain NUL (validated by the wire decoder); a home with one
    // (broken passwd) falls back to "/".
    let cwd = CString::new(cwd).unwrap_or_else(|_| CString::from(c"/"));
    let root = CString::from(c"/");

    let switch = acct.uid != Uid::effective();
    let (uid, gid, groups) = (acct.uid, acct.gid, acct.groups.clone());
    let pre_exec = move || -> std::io::Result<()> {
        // A command starts with default signal handling and an empty signal mask whatever
        // the agent inherited (a SIGHUP ignored or blocked in the agent's parent would pass
        // on, and a shell cannot trap a signal ignored on entry: a hangup would go unnoticed).
        for sig in [
            Signal::SIGHUP,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTERM,
        ] {
            // SAFETY: installing SIG_DFL (no handler code) in the forked child before exec;
            // sigaction is async-signal-safe.
            unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) }?;
        }
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        nix::unistd::setsid()?;
        if switch {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        match nix::unistd::chdir(cwd.as_c_str()) {
            Ok(()) => Ok(()),
            Err(e) if cwd_required => Err(e.into()),
            Err(_) => Ok(nix::unistd::chdir(root.as_c_str())?),
        }
    };
    // SAFETY: the closure runs in the forked child before exec. It only calls sigaction, pthread_sigmask, setsid,
    // setgroups, setgid, setuid and chdir (thin syscall wrappers, async-signal-safe in a
    // single-threaded child) on values computed before the fork (C strings, no allocation).
    unsafe {
        cmd.pre_exec(pre_exec);
    }
    tokio::process::Command::from(cmd)
}

fn convert(st: std::process::ExitStatus) -> ExitStatus {
    match (st.code(), st.signal()) {
        (Some(c), _) => ExitStatus::Code(c),
        (None, Some(s)) => ExitStatus::Signal(s),
        (None, None) => ExitStatus::Code(255),
    }
}

/// How long a command waits for the domain's gui-agent to be listening (just after start).
const DISPLAY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Spawns the process for `req` and serves the exec stream until the command has ended and
/// the client finished. Spawn failures are reported to the client as `ExecMessage::Failed`.
pub async fn run_exec(req: ExecRequest, stream: Stream) {
    let id = stream.id();
    crate::gui::wait_for_display(DISPLAY_WAIT).await;
    let started = account::lookup(req.user.as_deref())
        .map_err(SpawnError::from)
        .and_then(|acct| {
            command(&req, &acct)
                .spawn()
                .map_err(|source| SpawnError::Spawn {
                    program: req.argv[0].clone(),
                    source,
                })
        });
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(stream = id, error = %e, "exec refused");
            if let Err(e) = exec::reject(stream, &e.to_string()).await {
                tracing::debug!(stream = id, error = %e, "reporting exec failure");
            }
            return;
        }
    };
    let pid = child.id();
    tracing::info!(stream = id, ?pid, argv0 = %req.argv[0], user = ?req.user, "exec started");
    let stdin = child.stdin.take();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        // Cannot happen: both were configured as pipes.
        let _ = exec::reject(stream, "internal error: missing output pipes").await;
        return;
    };
    let wait = async { child.wait().await.map(convert) };
    match exec::serve(stream, stdin, stdout, stderr, wait).await {
        Ok(status) => tracing::info!(stream = id, ?pid, ?status, "exec finished"),
        Err(e) => {
            tracing::warn!(stream = id, ?pid, error = %e, "exec stream failed");
            hang_up(child, pid).await;
        }
    }
}

/// The client went away (stream reset or connection lost): like a terminal hangup, send
/// SIGHUP to the command's session (it is a session and process group leader), then reap it.
async fn hang_up(mut child: tokio::process::Child, pid: Option<u32>) {
    // Only while it is unreaped: a zombie still owns its pid, so the group cannot be reused.
    if let (Ok(None), Some(pid)) = (child.try_wait(), pid.and_then(|p| i32::try_from(p).ok())) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP);
    }
    match child.wait().await {
        Ok(st) => tracing::debug!(?pid, status = ?st, "abandoned command ended"),
        Err(e) => tracing::debug!(?pid, error = %e, "waiting for abandoned command"),
    }
}
