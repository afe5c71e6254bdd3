//! The agent's connection loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_wire::{exec, Connection, Control, IncomingEvent, Limits, OpenRequest};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// First reconnect delay.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What to do when domaind asks the domain to shut down.
#[derive(Debug, Clone, Copy)]
pub enum ShutdownTarget {
    /// Signal this pid (bulkhead-init) with SIGTERM carrying the timeout.
    Init(i32),
    /// No init to signal (agent started by hand): log and ignore.
    None,
}

/// Reads the shutdown target from the environment set by bulkhead-init.
pub fn shutdown_target_from_env() -> ShutdownTarget {
    match std::env::var(crate::ENV_INIT_PID)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(pid) if pid > 0 => ShutdownTarget::Init(pid),
        _ => ShutdownTarget::None,
    }
}

/// Sends SIGTERM to init with the grace period as the queued signal value.
pub fn request_shutdown(target: ShutdownTarget, timeout_secs: u32) {
    let ShutdownTarget::Init(pid) = target else {
        tracing::warn!("shutdown requested but no init pid is known; ignoring");
        return;
    };
    let value = libc::sigval {
        sival_ptr: timeout_secs as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue only reads its integer arguments and the by-value sigval; nix has no
    // wrapper for it. The pointer is never dereferenced: it carries the timeout as a number.
    let rc = unsafe { libc::sigqueue(pid, libc::SIGTERM, value) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        tracing::error!(pid, error = %err, "signalling init for shutdown failed");
    } else {
        tracing::info!(pid, timeout_secs, "asked init to shut the domain down");
    }
}

/// Serves one established connection until it ends.
pub async fn serve(
    conn: Connection,
    mut incoming: bulkhead_wire::Incoming,
    target: ShutdownTarget,
) {
    while let Some(ev) = incoming.next().await {
        match ev {
            IncomingEvent::Stream(s) => match s.request {
                OpenRequest::Exec(req) => {
                    tokio::spawn(crate::spawn::run_exec(req, s.stream));
                }
                OpenRequest::Service(req) => {
                    tokio::spawn(crate::service::run_service(req, s.stream));
                }
                OpenRequest::Gui => {
                    let socket = std::env::var_os(crate::ENV_GUI_SOCKET)
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(crate::gui::GUI_SOCKET));
                    tokio::spawn(async move { crate::gui::serve_stream(s.stream, &socket).await });
                }
                OpenRequest::UsbImport(req) => {
                    tokio::spawn(crate::usb::serve_import(req, s.stream));
                }
                OpenRequest::UsbExport(req) => {
                    tokio::spawn(crate::usb::serve_export(req, s.stream));
                }
                OpenRequest::Call(_) => {
                    tokio::spawn(async move {
                        let _ =
                            exec::reject(s.stream, "the agent does not take calls from domaind")
                                .await;
                    });
                }
            },
            IncomingEvent::Control(Control::Shutdown { timeout_secs }) => {
                request_shutdown(target, timeout_secs);
            }
            IncomingEvent::Control(other) => {
                tracing::debug!(?other, "ignoring control message");
            }
        }
    }
    tracing::warn!(
        reason = conn.close_reason().as_deref().unwrap_or("unknown"),
        "channel connection ended"
    );
}

/// How the agent reaches domaind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A unix socket (sandbox domains: the channel dir is bind-mounted in).
    Unix(PathBuf),
    /// AF_VSOCK to `cid`:`port` (VM domains: CID 2, [`crate::AGENT_VSOCK_PORT`]).
    Vsock { cid: u32, port: u32 },
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Unix(p) => write!(f, "unix:{}", p.display()),
            Channel::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// Connect and hand the stream to the wire handshake.
async fn connect(
    channel: &Channel,
    limits: Limits,
) -> Result<Result<(Connection, bulkhead_wire::Incoming), bulkhead_wire::WireError>, std::io::Error>
{
    match channel {
        Channel::Unix(socket) => {
            let io = UnixStream::connect(socket).await?;
            Ok(Connection::server(io, limits).await)
        }
        Channel::Vsock { cid, port } => {
            let addr = tokio_vsock::VsockAddr::new(*cid, *port);
            let io = tokio_vsock::VsockStream::connect(addr).await?;
            Ok(Connection::server(io, limits).await)
        }
    }
}

/// Connects to `socket` and serves it, reconnecting with backoff forever. The current
/// connection is published in `current` (for the local call socket).
pub async fn run_forever(
    socket: &Path,
    limits: Limits,
    target: ShutdownTarget,
    current: watch::Sender<Option<Connection>>,
) -> ! {
    run_channel_forever(&Channel::Unix(socket.to_owned()), limits, target, current).await
}

/// Connects over `channel` and serves it, reconnecting with backoff forever. The current
/// connection is published in `current` (for the local call socket).
pub async fn run_channel_forever(
    channel: &Channel,
    limits: Limits,
    target: ShutdownTarget,
    current: watch::Sender<Option<Connection>>,
) -> ! {
    let mut backoff = BACKOFF_START;
    let mut failures: u64 = 0;
    loop {
        match connect(channel, limits.clone()).await {
            Ok(Ok((conn, incoming))) => {
                tracing::info!(%channel, "connected to domaind");
                backoff = BACKOFF_START;
                failures = 0;
                current.send_replace(Some(conn.clone()));
                serve(conn, incoming, target).await;
                current.send_replace(None);
                continue;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "channel handshake failed"),
            Err(e) => {
                // Log the first failure and then sparsely: domaind may be down for a while.
                if failures.is_power_of_two() || failures == 0 {
                    tracing::warn!(%channel, error = %e, failures, "cannot reach domaind; retrying");
                }
            }
        }
        failures += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
