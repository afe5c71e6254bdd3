//! The local call socket: programs in the domain (`bulkhead-call`) ask the agent to make a
//! service call; the agent forwards it to domaind on the domain channel.
//!
//! The socket (`/run/bulkhead/call.sock`, mode 0666) speaks the wire protocol: the program is
//! the client and opens one `Call` stream per call; the agent relays it to a `Call` stream
//! towards domaind ([`bulkhead_wire::exec::relay`]). The domain is one trust unit, so any
//! process in it may call; the peer's credentials are logged. domaind decides with the policy
//! who the source is (this domain) and whether the call may happen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bulkhead_wire::{exec, Connection, IncomingEvent, Limits, OpenRequest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Where `bulkhead-call` finds the agent inside a domain.
pub const DEFAULT_CALL_SOCKET: &str = "/run/bulkhead/call.sock";
/// Environment variable overriding the call socket path (tests).
pub const ENV_CALL_SOCKET: &str = "BULKHEAD_CALL_SOCKET";
/// Most local call connections served at once.
const MAX_LOCAL_CONNECTIONS: usize = 256;

/// Errors setting up the call socket.
#[derive(Debug, thiserror::Error)]
pub enum CallSocketError {
    /// Creating, binding or setting up the socket failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The call socket path: `$BULKHEAD_CALL_SOCKET` or [`DEFAULT_CALL_SOCKET`].
pub fn call_socket_path() -> PathBuf {
    std::env::var_os(ENV_CALL_SOCKET)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CALL_SOCKET))
}

/// Binds the call socket (replacing a stale one), world-connectable.
pub fn bind(path: &Path) -> Result<UnixListener, CallSocketError> {
    let io = |what: &'static str| {
        let path = path.to_owned();
        move |source| CallSocketError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the stale socket")(e)),
    }
    let l = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(io("setting the mode of"))?;
    Ok(l)
}

/// Accepts local callers forever; `upstream` holds the current connection to domaind.
pub async fn serve(listener: UnixListener, upstream: watch::Receiver<Option<Connection>>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_LOCAL_CONNECTIONS));
    loop {
        let (io, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the call socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many local callers; dropping one");
            continue;
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            serve_one(io, upstream).await;
            drop(permit);
        });
    }
}

async fn serve_one(io: UnixStream, upstream: watch::Receiver<Option<Connection>>) {
    let peer = io
        .peer_cred()
        .map(|c| format!("pid {:?} uid {} gid {}", c.pid(), c.uid(), c.gid()))
        .unwrap_or_else(|e| format!("unknown peer ({e})"));
    let (conn, mut incoming) = match Connection::server(io, Limits::default()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%peer, error = %e, "local caller handshake failed");
            return;
        }
    };
    while let Some(ev) = incoming.next().await {
        let IncomingEvent::Stream(s) = ev else {
            continue;
        };
        let peer = peer.clone();
        let upstream = upstream.borrow().clone();
        tokio::spawn(async move {
            let OpenRequest::Call(req) = s.request else {
                let _ = exec::reject(s.stream, "only calls are served on this socket").await;
                return;
            };
            tracing::info!(%peer, target = %req.target, service = %req.service, arg = %req.arg, "local call");
            let Some(up) = upstream else {
                let _ = exec::reject(s.stream, "the agent is not connected to domaind").await;
                return;
            };
            let out = match up.open(OpenRequest::Call(req)).await {
                Ok(o) => o,
                Err(e) => {
                    let _ = exec::reject(s.stream, &format!("cannot reach domaind: {e}")).await;
                    return;
                }
            };
            match exec::relay(s.stream, out).await {
                Ok(end) => tracing::debug!(%peer, ?end, "local call ended"),
                Err(e) => tracing::info!(%peer, error = %e, "local call failed"),
            }
        });
    }
    drop(conn);
}
