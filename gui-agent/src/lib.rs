//! bulkhead-gui-agent: a headless Wayland compositor inside a domain. Applications draw into
//! wl_shm buffers; the agent copies the damaged rectangles and forwards them with window
//! metadata to dom0 over one unix socket, and injects the input dom0 sends back.

pub mod clipboard;
pub mod compositor;
pub mod link;
pub mod proto;
pub mod testclient;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{channel, ping, EventLoop, Interest, Mode, PostAction};
use smithay::reexports::wayland_server::Display;
use smithay::wayland::socket::ListeningSocketSource;
use tracing::{info, warn};

pub use compositor::{Agent, Options};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("event loop: {0}")]
    Loop(String),
    #[error("creating the Wayland display: {0}")]
    Display(String),
    #[error("binding the Wayland socket {path}: {reason} (is another compositor using it?)")]
    Bind { path: PathBuf, reason: String },
    #[error("setting up the keyboard: {0}")]
    Keyboard(String),
}

/// Where the agent listens.
#[derive(Debug, Clone)]
pub struct Paths {
    /// XDG_RUNTIME_DIR of the clients; the Wayland socket is created in it.
    pub runtime_dir: PathBuf,
    /// Socket name inside `runtime_dir` (wayland-0).
    pub socket_name: String,
    /// The dom0 link socket.
    pub gui_socket: PathBuf,
}

/// Runs the compositor until a fatal error.
pub fn run(paths: &Paths, opts: Options) -> Result<(), Error> {
    let mut event_loop: EventLoop<'static, Agent> =
        EventLoop::try_new().map_err(|e| Error::Loop(e.to_string()))?;
    let display: Display<Agent> = Display::new().map_err(|e| Error::Display(e.to_string()))?;
    let handle = event_loop.handle();
    let (clip_tx, clip_rx) = channel::channel();
    let mut agent = Agent::new(display.handle(), handle.clone(), opts.clone(), clip_tx)?;

    std::fs::create_dir_all(&paths.runtime_dir)
        .map_err(|e| Error::Io("creating the runtime dir", e))?;
    // smithay resolves the socket name against XDG_RUNTIME_DIR
    std::env::set_var("XDG_RUNTIME_DIR", &paths.runtime_dir);
    let source = ListeningSocketSource::with_name(&paths.socket_name).map_err(|e| Error::Bind {
        path: paths.runtime_dir.join(&paths.socket_name),
        reason: e.to_string(),
    })?;
    info!(socket = ?paths.runtime_dir.join(&paths.socket_name), "Wayland clients may connect");
    handle
        .insert_source(source, |stream, _, agent| {
            if let Err(e) = agent
                .dh
                .insert_client(stream, Arc::new(compositor::ClientState::default()))
            {
                warn!(error = %e, "adding a client");
            }
        })
        .map_err(|e| Error::Loop(e.to_string()))?;
    handle
        .insert_source(
            Generic::new(display, Interest::READ, Mode::Level),
            |_, display, agent| {
                // SAFETY: the display is not dropped while the source is registered.
                let d = unsafe { display.get_mut() };
                if let Err(e) = d.dispatch_clients(agent) {
                    warn!(error = %e, "dispatching clients");
                }
                Ok(PostAction::Continue)
            },
        )
        .map_err(|e| Error::Loop(e.to_string()))?;

    let (wake, wake_source) = ping::make_ping().map_err(|e| Error::Loop(e.to_string()))?;
    handle
        .insert_source(wake_source, |_, _, agent| agent.flush())
        .map_err(|e| Error::Loop(e.to_string()))?;
    handle
        .insert_source(clip_rx, |ev, _, agent| {
            if let channel::Event::Msg(reply) = ev {
                agent.clipboard_reply(reply);
            }
        })
        .map_err(|e| Error::Loop(e.to_string()))?;
    let tick = opts.frame_interval.max(Duration::from_millis(1));
    handle
        .insert_source(Timer::from_duration(tick), move |_, _, agent| {
            agent.flush();
            TimeoutAction::ToDuration(tick)
        })
        .map_err(|e| Error::Loop(e.to_string()))?;

    if let Some(parent) = paths.gui_socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Io("creating the dom0 socket dir", e))?;
    }
    match std::fs::remove_file(&paths.gui_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io("removing a stale dom0 socket", e)),
    }
    let listener = UnixListener::bind(&paths.gui_socket)
        .map_err(|e| Error::Io("binding the dom0 socket", e))?;
    info!(socket = ?paths.gui_socket, "dom0 may connect");
    link::listen(&handle, listener, wake)?;

    event_loop
        .run(None, &mut agent, |agent| {
            agent.flush();
            if let Err(e) = agent.dh.flush_clients() {
                warn!(error = %e, "flushing clients");
            }
        })
        .map_err(|e| Error::Loop(e.to_string()))
}
