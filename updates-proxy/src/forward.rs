//! The template's side: a listener on 127.0.0.1:8082 (apt's proxy) whose every connection
//! becomes a `bulkhead-call @default bulkhead.UpdatesProxy` with the connection as its stdin
//! and stdout; the policy picks the net domain. At most [`MAX_CONNECTIONS`] at once.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most proxied connections at once (apt opens a few).
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `listener` until it fails; each connection runs `call` (the `bulkhead-call`
/// program).
pub async fn run(listener: TcpListener, call: &Path) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (conn, peer) = listener.accept().await?;
        let conn = conn.into_std()?;
        conn.set_nonblocking(false)?;
        let fd = OwnedFd::from(conn);
        let child = fd.try_clone().and_then(|out| {
            tokio::process::Command::new(call)
                .args(["@default", crate::SERVICE])
                .stdin(Stdio::from(fd))
                .stdout(Stdio::from(out))
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
        });
        match child {
            Ok(mut child) => {
                tokio::spawn(async move {
                    let status = child.wait().await;
                    tracing::debug!(%peer, ?status, "update proxy connection ended");
                    drop(permit);
                });
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot run {}", call.display()),
        }
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
