//! bulkhead-gui-agent: a headless Wayland compositor inside a domain. Applications draw into
//! wl_shm buffers; the agent copies the damaged rectangles and forwards them with window
//! metadata to dom0 over one unix socket (`bulkhead_wire::gui`), and injects the input dom0
//! sends back.
//!
//! - Globals: wl_compositor, wl_subcompositor, wl_shm (argb8888/xrgb8888), xdg_wm_base
//!   (toplevels and popups, server-side decorations via xdg-decoration), wl_seat (keyboard
//!   with dom0's keymap, pointer), wl_output (one headless output), wl_data_device.
//! - Pixels: on each commit of a toplevel/popup root surface the damaged rectangles of the
//!   wl_shm buffer are copied into the window's own copy and the buffer is released at once;
//!   the pending damage is sent to dom0 when its link has room (a writer thread drains it;
//!   more than 24 MiB queued stops encoding, damage then accumulates), so a slow dom0 makes
//!   updates coarser, never blocks clients. Frame callbacks fire when the window's damage
//!   has gone out and the backlog is under 4 MiB, at most once per `--frame-interval-ms`.
//! - dom0 link: one peer at a time; a new connection replaces the old one and receives HELLO
//!   then every window (create, title, app id, map, full contents). The first message from
//!   dom0 must be HELLO (version negotiated with `bulkhead_wire::gui::negotiate`); any
//!   protocol violation drops the link, nothing else stops. Unknown windows and out-of-range
//!   values in dom0's messages are ignored with a log line.
//! - Clipboard: dom0's CLIPBOARD_REQUEST is answered with the domain's current selection as
//!   text (read from the owner through a pipe, capped at the protocol's limit, 2 s deadline);
//!   dom0's CLIPBOARD_DATA becomes the domain's selection (offered as text types).
//!
//! Not forwarded: subsurfaces (their buffers are released, not composited), cursor surfaces
//! (named cursors only), dmabuf (not offered), maximise/fullscreen requests.

pub mod clipboard;
pub mod compositor;
pub mod link;
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
