//! Running the daemon: connect to the bus, recover domains, serve, stop on SIGTERM/SIGINT.
//!
//! # Stopping domaind leaves domains running
//! On SIGTERM or SIGINT domaind releases its bus name and exits **without** stopping any
//! domain. Every running domain keeps its `instance.json` in the runtime dir, and its agent
//! keeps trying to reconnect; the next domaind adopts it (re-binds the channel socket, watches
//! the init's pidfd) or, if it died meanwhile, cleans up its cgroup, scratch and socket. This
//! is why the systemd unit uses `KillMode=process`: a domaind restart or upgrade must not take
//! the user's domains down. To stop the domains, shut them down through the API first.

use std::sync::Arc;

use bulkhead_api::{BUS_NAME, OBJECT_PATH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};
use zbus::fdo::RequestNameFlags;

use crate::config::DaemonConfig;
use crate::manager::Manager;
use crate::service::{forward_events, Service};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot connect to the bus{}: {source}", address.as_ref().map(|a| format!(" at {a}")).unwrap_or_else(|| " (system bus)".into()))]
    Connect {
        address: Option<String>,
        #[source]
        source: zbus::Error,
    },
    #[error("cannot serve {BUS_NAME}: {0}")]
    Serve(#[source] zbus::Error),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another domaind already serves {BUS_NAME} on this bus")]
    AlreadyRunning,
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Create `dir` if needed and take away any permission beyond `mode` (logged when it had more).
fn private_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let current = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if current & !mode != 0 {
        tracing::warn!(
            dir = %dir.display(),
            from = format!("{current:o}"),
            to = format!("{:o}", current & mode),
            "tightening permissions"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

/// Serve until SIGTERM/SIGINT. `bus_address` None = the system bus.
pub async fn run(cfg: DaemonConfig, bus_address: Option<String>) -> Result<(), DaemonError> {
    // State and runtime hold the domains' volumes (whose files keep the domains' own ids,
    // setuid bits included, through idmapped mounts) and their channel sockets: root only.
    for (dir, mode) in [
        (&cfg.paths.config_dir, 0o755),
        (&cfg.paths.state_dir, 0o700),
        (&cfg.paths.runtime_dir, 0o700),
    ] {
        private_dir(dir, mode).map_err(|source| DaemonError::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let (tx, rx) = mpsc::unbounded_channel();
    let mgr = Manager::new(cfg, tx);
    info!(caps = ?bulkhead_sandbox::probe(), "host capabilities");
    info!(
        cgroup_root = %mgr.config().cgroup_root,
        runtime_dir = %mgr.config().paths.runtime_dir.display(),
        "cgroup root: this instance's domains live below it; other instances' are never touched"
    );

    // Serve the object first (calls wait until recovery is done), then take the name without
    // queueing: a second domaind must stop here, before it touches any domain.
    let builder = match &bus_address {
        Some(a) => zbus::connection::Builder::address(a.as_str()),
        None => zbus::connection::Builder::system(),
    }
    .map_err(|source| DaemonError::Connect {
        address: bus_address.clone(),
        source,
    })?;
    let conn = builder
        .serve_at(OBJECT_PATH, Service::new(Arc::clone(&mgr)))
        .map_err(DaemonError::Serve)?
        .build()
        .await
        .map_err(|source| DaemonError::Connect {
            address: bus_address.clone(),
            source,
        })?;
    tokio::spawn(forward_events(conn.clone(), rx));
    mgr.calls().set_bus(conn.clone());
    conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into())
        .await
        .map_err(|e| match e {
            zbus::Error::NameTaken => DaemonError::AlreadyRunning,
            other => DaemonError::Serve(other),
        })?;
    mgr.recover().await;
    info!(
        bus = bus_address.as_deref().unwrap_or("system"),
        "serving {BUS_NAME}"
    );

    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping (domains keep running)"),
        _ = int.recv() => info!("SIGINT: stopping (domains keep running)"),
    }
    if let Err(e) = conn.release_name(BUS_NAME).await {
        warn!(error = %e, "cannot release the bus name");
    }
    Ok(())
}
