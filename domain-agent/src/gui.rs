//! GUI forwarding inside a domain (contract E): where the gui-agent lives, how init starts
//! it, and the agent's relay of `OpenRequest::Gui` streams to the gui-agent's socket.

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use bulkhead_wire::Stream;
use nix::unistd::{chown, Pid};

use crate::account::{self, Account};

/// The gui-agent binary (guest tools dir); init starts it when it exists.
pub const GUI_AGENT_BIN: &str = "/usr/lib/bulkhead/bulkhead-gui-agent";
/// XDG_RUNTIME_DIR of the gui-agent and of every command the agent runs.
pub const GUI_RUNTIME_DIR: &str = "/run/bulkhead-gui";
/// The Wayland socket (WAYLAND_DISPLAY of every command the agent runs).
pub const WAYLAND_DISPLAY: &str = "/run/bulkhead-gui/wayland-0";
/// The gui-agent's socket for the dom0 peer.
pub const GUI_SOCKET: &str = "/run/bulkhead-gui/gui.sock";

/// The environment the agent adds to every command it runs (before the request's own): the
/// GUI session, and a UTF-8 locale (glibc's built-in C.UTF-8, present in every Debian
/// template; terminals such as foot refuse to start cleanly without a UTF-8 locale).
pub fn session_env() -> [(&'static str, &'static str); 3] {
    [
        ("XDG_RUNTIME_DIR", GUI_RUNTIME_DIR),
        ("WAYLAND_DISPLAY", WAYLAND_DISPLAY),
        ("LANG", "C.UTF-8"),
    ]
}

/// Errors starting the gui-agent.
#[derive(Debug, thiserror::Error)]
pub enum GuiStartError {
    /// The default user does not resolve.
    #[error("gui-agent: {0}")]
    Account(#[from] account::AccountError),
    /// The runtime dir cannot be prepared.
    #[error("gui-agent runtime dir {GUI_RUNTIME_DIR}: {0}")]
    RuntimeDir(String),
    /// Spawning failed.
    #[error("starting {GUI_AGENT_BIN}: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Creates `dir` (if missing) owned by `acct`, mode 0700. An existing entry that is not a
/// real directory (a symlink, a file) is refused.
pub fn prepare_runtime_dir(dir: &Path, acct: &Account) -> Result<(), GuiStartError> {
    let err = |e: &dyn std::fmt::Display| GuiStartError::RuntimeDir(e.to_string());
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(&e)),
    }
    let md = std::fs::symlink_metadata(dir).map_err(|e| err(&e))?;
    if !md.is_dir() {
        return Err(err(&"exists and is not a directory"));
    }
    // A sandbox's launcher already made it (the domain's init has no CAP_CHOWN); a VM's init
    // is a full root and fixes owner and mode itself.
    if md.uid() != acct.uid.as_raw() || md.gid() != acct.gid.as_raw() {
        chown(dir, Some(acct.uid), Some(acct.gid)).map_err(|e| err(&e))?;
    }
    if md.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

/// Starts the gui-agent as the default user with XDG_RUNTIME_DIR set (called by init, which
/// reaps it). `Ok(None)` if the binary is not installed.
pub fn spawn_gui_agent(bin: &Path) -> Result<Option<Pid>, GuiStartError> {
    if !bin.exists() {
        return Ok(None);
    }
    let acct = account::lookup(None)?;
    prepare_runtime_dir(Path::new(GUI_RUNTIME_DIR), &acct)?;
    let mut cmd = account::helper_command(bin, &acct);
    cmd.env("XDG_RUNTIME_DIR", GUI_RUNTIME_DIR);
    let child = cmd.spawn().map_err(GuiStartError::Spawn)?;
    let pid = Pid::from_raw(child.id() as i32);
    // init reaps it with waitpid(-1).
    drop(child);
    Ok(Some(pid))
}

/// Set once the first wait ended: later commands do not wait again (a gui-agent that init
/// restarts is back within its backoff).
static DISPLAY_WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits, at most `limit`, until the gui-agent's Wayland socket exists, when a gui-agent is
/// installed in the domain. init starts the agent and the gui-agent side by side, so a
/// command asked for right after the domain started (`bulkhead start vault && bulkhead run
/// vault foot`) could otherwise find no compositor and exit. When init started no gui-agent
/// (no [`crate::ENV_GUI_EXPECTED`]), or when the limit passes (logged, and later commands
/// do not wait again), the command starts anyway. The look happens on a thread of its own
/// with the file-system identity of the runtime dir's owner (see [`connect_as_dir_owner`]):
/// in a sandbox, root may not look inside that directory.
pub async fn wait_for_display(limit: std::time::Duration) {
    use std::sync::atomic::Ordering;
    if DISPLAY_WAITED.load(Ordering::Relaxed) || std::env::var_os(crate::ENV_GUI_EXPECTED).is_none()
    {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("gui-wait".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            let (dir, socket) = (Path::new(GUI_RUNTIME_DIR), Path::new(WAYLAND_DISPLAY));
            let seen = loop {
                // the owner is read again each time: a VM's init makes the dir first and
                // gives it to the user after
                if let Ok(md) = std::fs::metadata(dir) {
                    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(md.gid()));
                    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(md.uid()));
                    match socket.try_exists() {
                        Ok(true) => break true,
                        Ok(false) => {}
                        // not a "not yet": waiting longer would not change it
                        Err(_) => break false,
                    }
                }
                if std::time::Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            let _ = tx.send(seen);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot wait for the Wayland socket; starting the command");
        return;
    }
    let seen = rx.await.unwrap_or(false);
    DISPLAY_WAITED.store(true, Ordering::Relaxed);
    if !seen {
        tracing::warn!(
            socket = WAYLAND_DISPLAY,
            waited = ?limit,
            "the gui-agent's Wayland socket is not there; starting the command without it"
        );
    }
}

/// Connects to the gui-agent's socket with the file-system identity (fsuid/fsgid) of the
/// owner of the socket's directory, the default user. In a sandbox domain the agent is a root
/// without CAP_DAC_OVERRIDE and the runtime dir is the user's, mode 0700, so root itself may
/// not even look inside; the user may. setfsuid/setfsgid change only the calling thread, so
/// the connect runs on a thread of its own that ends with it (no other task ever runs with
/// the changed identity, and nothing has to be switched back).
async fn connect_as_dir_owner(socket: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let md = std::fs::metadata(dir)?;
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(md.uid()),
        nix::unistd::Gid::from_raw(md.gid()),
    );
    let path = socket.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gui-connect".into())
        .spawn(move || {
            // the group first, while the thread still has root's identity
            nix::unistd::setfsgid(gid);
            nix::unistd::setfsuid(uid);
            let _ = tx.send(std::os::unix::net::UnixStream::connect(&path));
        })?;
    let std = rx
        .await
        .map_err(|_| std::io::Error::other("the GUI connect thread ended without an answer"))??;
    std.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std)
}

/// Serves one GUI stream from domaind: connects to the gui-agent's socket and relays bytes
/// both ways until either side closes. Without a gui-agent the stream is reset with a reason.
pub async fn serve_stream(stream: Stream, socket: &Path) {
    let io = match connect_as_dir_owner(socket).await {
        Ok(io) => io,
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "GUI stream refused: no gui-agent");
            stream.reset(&format!(
                "no gui-agent in the domain ({}: {e})",
                socket.display()
            ));
            return;
        }
    };
    tracing::info!("GUI stream connected to the gui-agent");
    match bulkhead_wire::relay::relay_bytes(stream, io).await {
        Ok(()) => tracing::info!("GUI stream ended"),
        Err(e) => tracing::warn!(error = %e, "GUI stream failed"),
    }
}
