//! The compositor state: smithay globals, the seat and output, the forwarded windows and the
//! dom0 link.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bulkhead_wire::gui::{AgentMsg, GuiMessage, Hello, PixelFormat, Rect};
use smithay::input::keyboard::XkbConfig;
use smithay::input::{Seat, SeatState};
use smithay::output::{Mode as OutputMode, Output, PhysicalProperties, Scale, Subpixel};
use smithay::reexports::calloop::LoopHandle;
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_callback::WlCallback;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::DisplayHandle;
use smithay::utils::Transform;
use smithay::wayland::compositor::{with_states, CompositorClientState, CompositorState};
use smithay::wayland::output::OutputManagerState;
use smithay::wayland::selection::data_device::DataDeviceState;
use smithay::wayland::shell::xdg::decoration::XdgDecorationState;
use smithay::wayland::shell::xdg::{
    PopupSurface, ToplevelSurface, XdgShellState, XdgToplevelSurfaceData,
};
use smithay::wayland::shm::ShmState;
use tracing::debug;

use crate::clipboard;
use crate::link::Link;

/// Per-client data smithay needs.
#[derive(Default)]
pub struct ClientState {
    pub compositor_state: CompositorClientState,
}

impl ClientData for ClientState {
    fn initialized(&self, client_id: ClientId) {
        debug!(?client_id, "client connected");
    }
    fn disconnected(&self, client_id: ClientId, reason: DisconnectReason) {
        debug!(?client_id, ?reason, "client disconnected");
    }
}

pub(super) enum Role {
    Toplevel(ToplevelSurface),
    Popup(PopupSurface),
}

/// One forwarded window (an xdg toplevel or popup) and dom0's view of it.
pub(super) struct Window {
    pub(super) role: Role,
    pub(super) surface: WlSurface,
    pub(super) parent: Option<u32>,
    pub(super) pos: (i32, i32),
    /// dom0 was told about the window (it has had a buffer).
    pub(super) announced: bool,
    pub(super) mapped: bool,
    pub(super) width: u32,
    pub(super) height: u32,
    /// Where the window (its xdg window geometry: the client's shadows and margins cropped
    /// off) starts in the client's buffer, in buffer pixels; (0, 0) without a geometry.
    pub(super) crop: (u32, u32),
    /// The buffer's scale: dom0's positions are buffer pixels of the window, the client's
    /// are `(position + crop) / scale`.
    pub(super) scale: i32,
    pub(super) format: PixelFormat,
    /// The window's current contents, `width * height * 4` bytes, kept for reconnects.
    pub(super) pixels: Vec<u8>,
    /// Damage not yet sent to dom0.
    pub(super) pending: Vec<Rect>,
    pub(super) callbacks: Vec<WlCallback>,
    pub(super) last_frame: Instant,
    pub(super) title: String,
    pub(super) app_id: String,
}

/// Options of the compositor.
#[derive(Debug, Clone)]
pub struct Options {
    pub output_width: u32,
    pub output_height: u32,
    /// Minimum time between two frame callbacks of one window.
    pub frame_interval: Duration,
}

/// The compositor state.
pub struct Agent {
    pub dh: DisplayHandle,
    pub handle: LoopHandle<'static, Agent>,
    pub(super) compositor_state: CompositorState,
    pub(super) xdg_shell_state: XdgShellState,
    pub(super) shm_state: ShmState,
    #[allow(dead_code)]
    pub(super) output_manager_state: OutputManagerState,
    pub(super) seat_state: SeatState<Agent>,
    pub(super) data_device_state: DataDeviceState,
    #[allow(dead_code)]
    pub(super) decoration_state: XdgDecorationState,
    pub(super) seat: Seat<Agent>,
    pub(super) output: Output,
    pub(super) windows: BTreeMap<u32, Window>,
    pub(super) by_surface: HashMap<WlSurface, u32>,
    /// The window dom0 last put the pointer over (0: none). `cursor_image` reads it:
    /// smithay calls that handler with the pointer's lock held, so asking the pointer for
    /// its focus there would deadlock.
    pub(super) pointer_window: u32,
    pub(super) next_id: u32,
    /// Frame callbacks of surfaces that are not windows (subsurfaces, cursors).
    pub(super) other_callbacks: Vec<WlCallback>,
    pub(crate) link: Option<Link>,
    pub(super) clipboard_mimes: Vec<String>,
    pub(super) start: Instant,
    pub(super) opts: Options,
    pub(crate) clipboard_tx: smithay::reexports::calloop::channel::Sender<clipboard::Reply>,
}

impl Agent {
    pub fn new(
        dh: DisplayHandle,
        handle: LoopHandle<'static, Agent>,
        opts: Options,
        clipboard_tx: smithay::reexports::calloop::channel::Sender<clipboard::Reply>,
    ) -> Result<Self, crate::Error> {
        let compositor_state = CompositorState::new::<Self>(&dh);
        let xdg_shell_state = XdgShellState::new::<Self>(&dh);
        let shm_state = ShmState::new::<Self>(&dh, vec![]);
        let output_manager_state = OutputManagerState::new_with_xdg_output::<Self>(&dh);
        let mut seat_state = SeatState::new();
        let data_device_state = DataDeviceState::new::<Self>(&dh);
        let decoration_state = XdgDecorationState::new::<Self>(&dh);
        let mut seat = seat_state.new_wl_seat(&dh, "seat0");
        seat.add_keyboard(XkbConfig::default(), 600, 25)
            .map_err(|e| crate::Error::Keyboard(e.to_string()))?;
        seat.add_pointer();
        let output = Output::new(
            "bulkhead-0".into(),
            PhysicalProperties {
                size: (0, 0).into(),
                subpixel: Subpixel::Unknown,
                make: "Bulkhead".into(),
                model: "headless".into(),
            },
        );
        let _global = output.create_global::<Self>(&dh);
        let mut agent = Agent {
            dh,
            handle,
            compositor_state,
            xdg_shell_state,
            shm_state,
            output_manager_state,
            seat_state,
            data_device_state,
            decoration_state,
            seat,
            output,
            windows: BTreeMap::new(),
            by_surface: HashMap::new(),
            pointer_window: 0,
            next_id: 1,
            other_callbacks: Vec::new(),
            link: None,
            clipboard_mimes: Vec::new(),
            start: Instant::now(),
            opts: opts.clone(),
            clipboard_tx,
        };
        agent.set_output_size(opts.output_width, opts.output_height);
        Ok(agent)
    }

    pub(super) fn now_ms(&self) -> u32 {
        self.start.elapsed().as_millis() as u32
    }

    fn set_output_size(&mut self, width: u32, height: u32) {
        let mode = OutputMode {
            size: (width as i32, height as i32).into(),
            refresh: 60_000,
        };
        self.output.change_current_state(
            Some(mode),
            Some(Transform::Normal),
            Some(Scale::Integer(1)),
            Some((0, 0).into()),
        );
        self.output.set_preferred(mode);
    }

    pub(super) fn send(&mut self, msg: &AgentMsg) {
        if let Some(link) = &self.link {
            link.send(msg.encode());
        }
    }

    pub(super) fn add_window(
        &mut self,
        surface: WlSurface,
        role: Role,
        parent: Option<u32>,
        pos: (i32, i32),
    ) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.by_surface.insert(surface.clone(), id);
        self.windows.insert(
            id,
            Window {
                role,
                surface,
                parent,
                pos,
                announced: false,
                mapped: false,
                width: 0,
                height: 0,
                crop: (0, 0),
                scale: 1,
                format: PixelFormat::Argb8888,
                pixels: Vec::new(),
                pending: Vec::new(),
                callbacks: Vec::new(),
                last_frame: Instant::now(),
                title: String::new(),
                app_id: String::new(),
            },
        );
        debug!(window = id, "new window");
    }

    pub(super) fn remove_window(&mut self, surface: &WlSurface) {
        if let Some(id) = self.by_surface.remove(surface) {
            if self.pointer_window == id {
                self.pointer_window = 0;
            }
            if let Some(w) = self.windows.remove(&id) {
                if w.announced {
                    self.send(&AgentMsg::Destroy { window: id });
                }
            }
            debug!(window = id, "window destroyed");
        }
    }

    /// Messages that recreate every announced window, for a freshly connected dom0.
    pub(crate) fn announce_all(&mut self) {
        self.send(&AgentMsg::Hello(Hello::OURS));
        let ids: Vec<u32> = self.windows.keys().copied().collect();
        for id in ids {
            let Some(w) = self.windows.get_mut(&id) else {
                continue;
            };
            if !w.announced {
                continue;
            }
            w.pending = vec![Rect {
                x: 0,
                y: 0,
                width: w.width,
                height: w.height,
            }];
            let msgs = window_intro(id, w);
            for m in msgs {
                self.send(&m);
            }
        }
    }
}

/// Create/title/app id/map/full damage of a window that dom0 does not know yet.
pub(super) fn window_intro(id: u32, w: &mut Window) -> Vec<AgentMsg> {
    w.pending = vec![Rect {
        x: 0,
        y: 0,
        width: w.width,
        height: w.height,
    }];
    let mut msgs = vec![AgentMsg::Create {
        window: id,
        width: w.width,
        height: w.height,
        parent: w.parent,
        x: w.pos.0,
        y: w.pos.1,
    }];
    if !w.title.is_empty() {
        msgs.push(AgentMsg::title(id, &w.title));
    }
    if !w.app_id.is_empty() {
        msgs.push(AgentMsg::app_id(id, &w.app_id));
    }
    if w.mapped {
        msgs.push(AgentMsg::Map { window: id });
    }
    msgs
}

pub(super) fn surface_title(surface: &WlSurface) -> (String, String) {
    with_states(surface, |states| {
        states
            .data_map
            .get::<XdgToplevelSurfaceData>()
            .and_then(|d| d.lock().ok())
            .map(|d| {
                (
                    d.title.clone().unwrap_or_default(),
                    d.app_id.clone().unwrap_or_default(),
                )
            })
            .unwrap_or_default()
    })
}
