//! The headless compositor: smithay globals and handlers, window tracking, pixel capture
//! from committed wl_shm buffers, and dom0 input injection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_wire::gui::{
    self as wire, AgentMsg, GuiMessage, Hello, HostMsg, PixelFormat, Rect, MAX_HEIGHT, MAX_WIDTH,
};
use smithay::backend::input::{Axis, AxisSource, ButtonState, KeyState};
use smithay::input::keyboard::{FilterResult, Keycode, XkbConfig};
use smithay::input::pointer::{AxisFrame, ButtonEvent, CursorImageStatus, MotionEvent};
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::output::{Mode as OutputMode, Output, PhysicalProperties, Scale, Subpixel};
use smithay::reexports::calloop::LoopHandle;
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_buffer::WlBuffer;
use smithay::reexports::wayland_server::protocol::wl_callback::WlCallback;
use smithay::reexports::wayland_server::protocol::wl_output::Transform as WlTransform;
use smithay::reexports::wayland_server::protocol::wl_seat::WlSeat;
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::{Client, DisplayHandle, Resource};
use smithay::utils::{Serial, Transform, SERIAL_COUNTER};
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{
    with_states, BufferAssignment, CompositorClientState, CompositorHandler, CompositorState,
    Damage, SurfaceAttributes,
};
use smithay::wayland::output::{OutputHandler, OutputManagerState};
use smithay::wayland::selection::data_device::{
    clear_data_device_selection, request_data_device_client_selection, set_data_device_focus,
    set_data_device_selection, ClientDndGrabHandler, DataDeviceHandler, DataDeviceState,
    ServerDndGrabHandler,
};
use smithay::wayland::selection::{SelectionHandler, SelectionSource, SelectionTarget};
use smithay::wayland::shell::xdg::decoration::{XdgDecorationHandler, XdgDecorationState};
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, SurfaceCachedState, ToplevelSurface, XdgShellHandler,
    XdgShellState, XdgToplevelSurfaceData,
};
use smithay::wayland::shm::{with_buffer_contents, ShmHandler, ShmState};
use smithay::{
    delegate_compositor, delegate_data_device, delegate_output, delegate_seat, delegate_shm,
    delegate_xdg_decoration, delegate_xdg_shell,
};
use tracing::{debug, info, warn};

use crate::clipboard;
use crate::link::Link;

/// Stop encoding new damage while this many bytes wait for dom0.
const HIGH_WATER: usize = 24 << 20;
/// Frame callbacks are held while more than this waits for dom0 (clients pace to the link).
const LOW_WATER: usize = 4 << 20;
/// More damage rectangles than this in one pending set are merged into their bounding box.
const MAX_RECTS: usize = 16;
/// Damage messages carry at most this many pixel bytes (large rectangles go in bands).
const MAX_DAMAGE_BYTES: usize = 4 << 20;
/// Room reserved for one damage message's header (frame header + damage fields).
const DAMAGE_HEADER_ROOM: usize = 64;

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

enum Role {
    Toplevel(ToplevelSurface),
    Popup(PopupSurface),
}

/// One forwarded window (an xdg toplevel or popup) and dom0's view of it.
struct Window {
    role: Role,
    surface: WlSurface,
    parent: Option<u32>,
    pos: (i32, i32),
    /// dom0 was told about the window (it has had a buffer).
    announced: bool,
    mapped: bool,
    width: u32,
    height: u32,
    format: PixelFormat,
    /// The window's current contents, `width * height * 4` bytes, kept for reconnects.
    pixels: Vec<u8>,
    /// Damage not yet sent to dom0.
    pending: Vec<Rect>,
    callbacks: Vec<WlCallback>,
    last_frame: Instant,
    title: String,
    app_id: String,
}

/// Why a committed buffer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("buffer is not a wl_shm buffer (only wl_shm is offered)")]
    NotShm,
    #[error("wl_shm pool is unreadable (client truncated it)")]
    BadPool,
    #[error("unsupported wl_shm format {0:?} (argb8888/xrgb8888 only)")]
    Format(wl_shm::Format),
    #[error("buffer geometry {width}x{height} stride {stride} offset {offset} does not fit a pool of {pool} bytes or the size limit")]
    Geometry {
        width: i32,
        height: i32,
        stride: i32,
        offset: i32,
        pool: usize,
    },
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
    compositor_state: CompositorState,
    xdg_shell_state: XdgShellState,
    shm_state: ShmState,
    #[allow(dead_code)]
    output_manager_state: OutputManagerState,
    seat_state: SeatState<Agent>,
    data_device_state: DataDeviceState,
    #[allow(dead_code)]
    decoration_state: XdgDecorationState,
    seat: Seat<Agent>,
    output: Output,
    windows: BTreeMap<u32, Window>,
    by_surface: HashMap<WlSurface, u32>,
    /// The window dom0 last put the pointer over (0: none). `cursor_image` reads it:
    /// smithay calls that handler with the pointer's lock held, so asking the pointer for
    /// its focus there would deadlock.
    pointer_window: u32,
    next_id: u32,
    /// Frame callbacks of surfaces that are not windows (subsurfaces, cursors).
    other_callbacks: Vec<WlCallback>,
    pub(crate) link: Option<Link>,
    clipboard_mimes: Vec<String>,
    start: Instant,
    opts: Options,
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

    fn now_ms(&self) -> u32 {
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

    fn send(&mut self, msg: &AgentMsg) {
        if let Some(link) = &self.link {
            link.send(msg.encode());
        }
    }

    fn add_window(&mut self, surface: WlSurface, role: Role, parent: Option<u32>, pos: (i32, i32)) {
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

    fn remove_window(&mut self, surface: &WlSurface) {
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

    /// Sends pending damage while the link has room and fires frame callbacks that are due.
    pub fn flush(&mut self) {
        let now = Instant::now();
        let backlog = match &self.link {
            Some(link) if link.alive() => Some(link.backlog()),
            Some(_) => {
                info!("dom0 link closed");
                self.link = None;
                None
            }
            None => None,
        };
        match (&self.link, backlog) {
            (Some(link), Some(mut backlog)) => {
                for (&id, w) in self.windows.iter_mut() {
                    if backlog > HIGH_WATER {
                        break;
                    }
                    if !w.announced || w.pending.is_empty() {
                        continue;
                    }
                    let buf = encode_damage(id, w);
                    backlog += buf.len();
                    link.send(buf);
                }
            }
            _ => {
                for w in self.windows.values_mut() {
                    w.pending.clear();
                }
            }
        }
        let backlog = self.link.as_ref().map_or(0, |l| l.backlog());
        if backlog > LOW_WATER {
            return;
        }
        let time = self.now_ms();
        for w in self.windows.values_mut() {
            if w.pending.is_empty()
                && !w.callbacks.is_empty()
                && now.duration_since(w.last_frame) >= self.opts.frame_interval
            {
                w.last_frame = now;
                for cb in w.callbacks.drain(..) {
                    cb.done(time);
                }
            }
        }
        for cb in self.other_callbacks.drain(..) {
            cb.done(time);
        }
    }

    /// Reads the committed state of a window's surface: new buffer, damage, frame callbacks.
    fn commit_window(&mut self, id: u32, surface: &WlSurface) {
        let (buffer, damage, callbacks, scale, transform) = with_states(surface, |states| {
            let mut guard = states.cached_state.get::<SurfaceAttributes>();
            let attrs = guard.current();
            (
                attrs.buffer.take(),
                std::mem::take(&mut attrs.damage),
                std::mem::take(&mut attrs.frame_callbacks),
                attrs.buffer_scale,
                attrs.buffer_transform,
            )
        });
        let (title, app_id) = surface_title(surface);
        let mut msgs = Vec::new();
        let Some(w) = self.windows.get_mut(&id) else {
            return;
        };
        w.callbacks.extend(callbacks);
        match buffer {
            Some(BufferAssignment::NewBuffer(buf)) => {
                let res = capture(w, &buf, &damage, scale, transform);
                buf.release();
                match res {
                    Ok(resized) => {
                        if !w.announced {
                            w.announced = true;
                            w.mapped = true;
                            w.title = title;
                            w.app_id = app_id;
                            msgs = window_intro(id, w);
                        } else {
                            if resized {
                                msgs.push(AgentMsg::Configure {
                                    window: id,
                                    x: w.pos.0,
                                    y: w.pos.1,
                                    width: w.width,
                                    height: w.height,
                                });
                            }
                            if !w.mapped {
                                w.mapped = true;
                                msgs.push(AgentMsg::Map { window: id });
                            }
                        }
                    }
                    Err(e) => warn!(window = id, error = %e, "committed buffer ignored"),
                }
                self.output.enter(surface);
            }
            Some(BufferAssignment::Removed) => {
                if w.mapped {
                    w.mapped = false;
                    w.pending.clear();
                    msgs.push(AgentMsg::Unmap { window: id });
                }
                // an unmapped toplevel gets a new initial configure when it maps again
                if let Role::Toplevel(t) = &w.role {
                    t.reset_initial_configure_sent();
                }
            }
            None => {}
        }
        for m in msgs {
            self.send(&m);
        }
    }

    fn window_surface(&self, id: u32) -> Option<&WlSurface> {
        let s = self.windows.get(&id).map(|w| &w.surface);
        if s.is_none() {
            warn!(window = id, "dom0 named an unknown window; ignored");
        }
        s
    }

    /// Applies one validated message from dom0.
    pub fn handle_host(&mut self, msg: HostMsg) {
        let serial = SERIAL_COUNTER.next_serial();
        let time = self.now_ms();
        match msg {
            HostMsg::Hello(theirs) => match wire::negotiate(Hello::OURS, theirs) {
                Ok(v) => info!(version = v, "GUI protocol version agreed with dom0"),
                Err(e) => {
                    warn!(error = %e, "dom0 speaks no GUI protocol version we speak (update dom0 and the guest tools together); dropping it");
                    self.link = None;
                }
            },
            HostMsg::Keymap { keymap } => {
                // the link refused a keymap that is not UTF-8 (`link::usable`)
                let keymap = String::from_utf8_lossy(&keymap).into_owned();
                if let Some(kb) = self.seat.get_keyboard() {
                    if let Err(e) = kb.set_keymap_from_string(self, keymap) {
                        warn!(error = ?e, "keymap from dom0 rejected");
                    }
                }
            }
            HostMsg::Key {
                window,
                keycode,
                pressed,
            } => {
                if self.window_surface(window).is_none() {
                    return;
                }
                if !(8..=767).contains(&keycode) {
                    warn!(keycode, "keycode out of range; ignored");
                    return;
                }
                let state = if pressed {
                    KeyState::Pressed
                } else {
                    KeyState::Released
                };
                if let Some(kb) = self.seat.get_keyboard() {
                    kb.input::<(), _>(
                        self,
                        Keycode::new(keycode),
                        state,
                        serial,
                        time,
                        |_, _, _| FilterResult::Forward,
                    );
                }
            }
            HostMsg::FocusIn { window } => {
                let Some(surface) = self.window_surface(window).cloned() else {
                    return;
                };
                self.set_activated(window, true);
                if let Some(kb) = self.seat.get_keyboard() {
                    kb.set_focus(self, Some(surface), serial);
                }
            }
            HostMsg::FocusOut { window } => {
                if self.window_surface(window).is_none() {
                    return;
                }
                self.set_activated(window, false);
                if let Some(kb) = self.seat.get_keyboard() {
                    kb.set_focus(self, None, serial);
                }
            }
            HostMsg::Enter { window, x, y } | HostMsg::Motion { window, x, y } => {
                let Some(surface) = self.window_surface(window).cloned() else {
                    return;
                };
                self.pointer_window = window;
                if let Some(ptr) = self.seat.get_pointer() {
                    ptr.motion(
                        self,
                        Some((surface, (0.0, 0.0).into())),
                        &MotionEvent {
                            location: (f64::from(x), f64::from(y)).into(),
                            serial,
                            time,
                        },
                    );
                    ptr.frame(self);
                }
            }
            HostMsg::Leave { window } => {
                if self.window_surface(window).is_none() {
                    return;
                }
                self.pointer_window = 0;
                if let Some(ptr) = self.seat.get_pointer() {
                    ptr.motion(
                        self,
                        None,
                        &MotionEvent {
                            location: (0.0, 0.0).into(),
                            serial,
                            time,
                        },
                    );
                    ptr.frame(self);
                }
            }
            HostMsg::Button {
                window,
                button,
                pressed,
            } => {
                if self.window_surface(window).is_none() {
                    return;
                }
                if !(0x110..=0x11f).contains(&button) {
                    warn!(button, "not a mouse button code; ignored");
                    return;
                }
                let state = if pressed {
                    ButtonState::Pressed
                } else {
                    ButtonState::Released
                };
                if let Some(ptr) = self.seat.get_pointer() {
                    ptr.button(
                        self,
                        &ButtonEvent {
                            button,
                            state,
                            serial,
                            time,
                        },
                    );
                    ptr.frame(self);
                }
            }
            HostMsg::Scroll {
                window,
                axis,
                value,
                v120,
            } => {
                if self.window_surface(window).is_none() {
                    return;
                }
                let axis = match axis {
                    wire::Axis::Vertical => Axis::Vertical,
                    wire::Axis::Horizontal => Axis::Horizontal,
                };
                let frame = AxisFrame::new(time)
                    .source(AxisSource::Wheel)
                    .value(axis, value as f64 / 256.0)
                    .v120(axis, v120.clamp(-120 * 100, 120 * 100));
                if let Some(ptr) = self.seat.get_pointer() {
                    ptr.axis(self, frame);
                    ptr.frame(self);
                }
            }
            HostMsg::ConfigureRequest {
                window,
                width,
                height,
            } => {
                if !(1..=MAX_WIDTH).contains(&width) || !(1..=MAX_HEIGHT).contains(&height) {
                    warn!(
                        window,
                        width, height, "configure size out of range; ignored"
                    );
                    return;
                }
                match self.windows.get(&window).map(|w| &w.role) {
                    Some(Role::Toplevel(t)) => {
                        t.with_pending_state(|s| {
                            s.size = Some((width as i32, height as i32).into());
                        });
                        if t.is_initial_configure_sent() {
                            t.send_pending_configure();
                        }
                    }
                    Some(Role::Popup(_)) => debug!(window, "configure request for a popup ignored"),
                    None => warn!(window, "dom0 named an unknown window; ignored"),
                }
            }
            HostMsg::Close { window } => match self.windows.get(&window).map(|w| &w.role) {
                Some(Role::Toplevel(t)) => t.send_close(),
                Some(Role::Popup(p)) => p.send_popup_done(),
                None => warn!(window, "dom0 named an unknown window; ignored"),
            },
            HostMsg::ClipboardRequest => self.clipboard_request(),
            HostMsg::ClipboardData { data } => {
                info!(bytes = data.len(), "clipboard set from dom0");
                set_data_device_selection(
                    &self.dh,
                    &self.seat,
                    clipboard::TEXT_MIMES
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    Arc::new(data.to_vec()),
                );
            }
        }
    }

    fn set_activated(&self, window: u32, on: bool) {
        if let Some(Role::Toplevel(t)) = self.windows.get(&window).map(|w| &w.role) {
            t.with_pending_state(|s| {
                if on {
                    s.states.set(xdg_toplevel::State::Activated);
                } else {
                    s.states.unset(xdg_toplevel::State::Activated);
                }
            });
            if t.is_initial_configure_sent() {
                t.send_pending_configure();
            }
        }
    }

    fn clipboard_request(&mut self) {
        // a selection dom0 pasted is answered from our own copy
        let own = smithay::wayland::selection::data_device::current_data_device_selection_userdata(
            &self.seat,
        )
        .map(|d| d.as_ref().clone());
        if let Some(data) = own {
            self.send(&AgentMsg::clipboard_data(data));
            return;
        }
        let Some(mime) = clipboard::pick_mime(&self.clipboard_mimes) else {
            info!("clipboard request: no text selection in the domain");
            self.send(&AgentMsg::clipboard_data(Vec::new()));
            return;
        };
        let (read, write) = match nix::unistd::pipe() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "clipboard pipe");
                return;
            }
        };
        match request_data_device_client_selection(&self.seat, mime.to_string(), write) {
            Ok(()) => clipboard::read_selection(read, self.clipboard_tx.clone()),
            Err(e) => {
                info!(error = %e, "clipboard request: selection unavailable");
                self.send(&AgentMsg::clipboard_data(Vec::new()));
            }
        }
    }

    pub(crate) fn clipboard_reply(&mut self, reply: clipboard::Reply) {
        self.send(&AgentMsg::clipboard_data(reply.data));
    }
}

/// Create/title/app id/map/full damage of a window that dom0 does not know yet.
fn window_intro(id: u32, w: &mut Window) -> Vec<AgentMsg> {
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

fn surface_title(surface: &WlSurface) -> (String, String) {
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

/// Encodes a window's pending damage from its pixel copy and clears it.
fn encode_damage(id: u32, w: &mut Window) -> Vec<u8> {
    let mut rects = std::mem::take(&mut w.pending);
    if rects.len() > MAX_RECTS {
        let first = rects[0];
        rects = vec![rects[1..].iter().fold(first, |a, r| a.union(*r))];
    }
    let stride = w.width as usize * 4;
    // One allocation for the whole message: growing it by doubling cost a full-frame copy
    // or two per frame.
    let pixel_bytes: usize = rects
        .iter()
        .map(|r| r.width as usize * 4 * r.height as usize)
        .sum();
    let bands: usize = rects
        .iter()
        .map(|r| {
            let band = (MAX_DAMAGE_BYTES / (r.width as usize * 4).max(1)).max(1);
            (r.height as usize).div_ceil(band)
        })
        .sum();
    let mut out = Vec::with_capacity(pixel_bytes + bands * DAMAGE_HEADER_ROOM);
    for r in rects {
        let row_bytes = r.width as usize * 4;
        let band = (MAX_DAMAGE_BYTES / row_bytes.max(1)).max(1) as u32;
        let mut y = r.y;
        while y < r.y + r.height {
            let h = band.min(r.y + r.height - y);
            let rect = Rect {
                x: r.x,
                y,
                width: r.width,
                height: h,
            };
            out.extend_from_slice(&wire::damage_prefix(id, rect, w.format));
            for row in y..y + h {
                let start = row as usize * stride + r.x as usize * 4;
                out.extend_from_slice(&w.pixels[start..start + row_bytes]);
            }
            y += h;
        }
    }
    out
}

/// Copies the damaged parts of a committed wl_shm buffer into the window's pixel copy.
/// Returns whether the window's size changed.
fn capture(
    w: &mut Window,
    buf: &WlBuffer,
    damage: &[Damage],
    scale: i32,
    transform: WlTransform,
) -> Result<bool, CaptureError> {
    let res = with_buffer_contents(buf, |ptr, pool_len, data| {
        let format = match data.format {
            wl_shm::Format::Argb8888 => PixelFormat::Argb8888,
            wl_shm::Format::Xrgb8888 => PixelFormat::Xrgb8888,
            other => return Err(CaptureError::Format(other)),
        };
        let geometry_err = || CaptureError::Geometry {
            width: data.width,
            height: data.height,
            stride: data.stride,
            offset: data.offset,
            pool: pool_len,
        };
        let (width, height) = (data.width, data.height);
        if width <= 0
            || height <= 0
            || width as u32 > MAX_WIDTH
            || height as u32 > MAX_HEIGHT
            || data.offset < 0
            || (data.stride as i64) < width as i64 * 4
        {
            return Err(geometry_err());
        }
        let (width, height, stride, offset) = (
            width as usize,
            height as usize,
            data.stride as usize,
            data.offset as usize,
        );
        let end = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(width * 4))
            .and_then(|n| n.checked_add(offset));
        if end.is_none_or(|end| end > pool_len) {
            return Err(geometry_err());
        }
        // SAFETY: smithay maps the pool for `pool_len` bytes and keeps it mapped for the
        // duration of this closure; a concurrent truncation by the client raises SIGBUS, which
        // smithay's pool guard turns into an error for this call.
        let pool = unsafe { std::slice::from_raw_parts(ptr, pool_len) };
        let resized = width as u32 != w.width || height as u32 != w.height;
        let full = Rect {
            x: 0,
            y: 0,
            width: width as u32,
            height: height as u32,
        };
        let mut rects: Vec<Rect> = Vec::new();
        if resized || w.pending.len() > MAX_RECTS || transform != WlTransform::Normal {
            rects.push(full);
        } else {
            let s = scale.max(1) as i64;
            for d in damage {
                let r = match d {
                    Damage::Buffer(r) => Rect::clipped(
                        r.loc.x as i64,
                        r.loc.y as i64,
                        r.size.w as i64,
                        r.size.h as i64,
                        full.width,
                        full.height,
                    ),
                    Damage::Surface(r) => Rect::clipped(
                        r.loc.x as i64 * s,
                        r.loc.y as i64 * s,
                        r.size.w as i64 * s,
                        r.size.h as i64 * s,
                        full.width,
                        full.height,
                    ),
                };
                rects.extend(r);
            }
            if rects.len() > MAX_RECTS {
                let first = rects[0];
                rects = vec![rects[1..].iter().fold(first, |a, r| a.union(*r))];
            }
        }
        if resized {
            w.width = width as u32;
            w.height = height as u32;
            w.pixels = vec![0; width * height * 4];
            w.pending.clear();
        }
        w.format = format;
        let dst_stride = width * 4;
        for r in &rects {
            let n = r.width as usize * 4;
            for row in r.y as usize..(r.y + r.height) as usize {
                let src = offset + row * stride + r.x as usize * 4;
                let dst = row * dst_stride + r.x as usize * 4;
                w.pixels[dst..dst + n].copy_from_slice(&pool[src..src + n]);
            }
        }
        w.pending.extend(rects);
        Ok(resized)
    });
    match res {
        Ok(r) => r,
        Err(smithay::wayland::shm::BufferAccessError::NotManaged) => Err(CaptureError::NotShm),
        Err(_) => Err(CaptureError::BadPool),
    }
}

impl CompositorHandler for Agent {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.compositor_state
    }

    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        // every client is inserted with a ClientState (main loop)
        static FALLBACK: std::sync::OnceLock<CompositorClientState> = std::sync::OnceLock::new();
        match client.get_data::<ClientState>() {
            Some(d) => &d.compositor_state,
            None => FALLBACK.get_or_init(CompositorClientState::default),
        }
    }

    fn commit(&mut self, surface: &WlSurface) {
        let Some(&id) = self.by_surface.get(surface) else {
            // subsurfaces and cursor surfaces: not forwarded; release their buffers at once
            let (buffer, callbacks) = with_states(surface, |states| {
                let mut guard = states.cached_state.get::<SurfaceAttributes>();
                let attrs = guard.current();
                attrs.damage.clear();
                (
                    attrs.buffer.take(),
                    std::mem::take(&mut attrs.frame_callbacks),
                )
            });
            if let Some(BufferAssignment::NewBuffer(b)) = buffer {
                b.release();
            }
            self.other_callbacks.extend(callbacks);
            return;
        };
        let configured = match self.windows.get(&id).map(|w| &w.role) {
            Some(Role::Toplevel(t)) => {
                if !t.is_initial_configure_sent() {
                    t.send_configure();
                    false
                } else {
                    true
                }
            }
            Some(Role::Popup(p)) => {
                if !p.is_initial_configure_sent() {
                    if let Err(e) = p.send_configure() {
                        warn!(window = id, error = ?e, "popup configure");
                    }
                    false
                } else {
                    true
                }
            }
            None => false,
        };
        if configured {
            self.commit_window(id, surface);
        } else {
            // drain callbacks so the client is not stuck before its first buffer
            let callbacks = with_states(surface, |states| {
                std::mem::take(
                    &mut states
                        .cached_state
                        .get::<SurfaceAttributes>()
                        .current()
                        .frame_callbacks,
                )
            });
            self.other_callbacks.extend(callbacks);
        }
    }
}

impl BufferHandler for Agent {
    fn buffer_destroyed(&mut self, _buffer: &WlBuffer) {}
}

impl ShmHandler for Agent {
    fn shm_state(&self) -> &ShmState {
        &self.shm_state
    }
}

impl XdgShellHandler for Agent {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg_shell_state
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        surface.with_pending_state(|s| {
            s.decoration_mode = Some(DecorationMode::ServerSide);
        });
        let wl = surface.wl_surface().clone();
        self.add_window(wl, Role::Toplevel(surface), None, (0, 0));
    }

    fn new_popup(&mut self, surface: PopupSurface, positioner: PositionerState) {
        let geometry = positioner.get_geometry();
        surface.with_pending_state(|s| s.geometry = geometry);
        let parent_surface = surface.get_parent_surface();
        let parent = parent_surface
            .as_ref()
            .and_then(|p| self.by_surface.get(p).copied());
        // the position is relative to the parent's window geometry; dom0 wants it relative
        // to the parent's buffer
        let offset = parent_surface
            .map(|p| {
                with_states(&p, |s| {
                    s.cached_state
                        .get::<SurfaceCachedState>()
                        .current()
                        .geometry
                        .map(|g| (g.loc.x, g.loc.y))
                        .unwrap_or((0, 0))
                })
            })
            .unwrap_or((0, 0));
        let pos = (geometry.loc.x + offset.0, geometry.loc.y + offset.1);
        let wl = surface.wl_surface().clone();
        self.add_window(wl, Role::Popup(surface), parent, pos);
    }

    fn grab(&mut self, _surface: PopupSurface, _seat: WlSeat, _serial: Serial) {
        // popup grabs are dom0's business (it routes input); nothing to do here
    }

    fn reposition_request(
        &mut self,
        surface: PopupSurface,
        positioner: PositionerState,
        token: u32,
    ) {
        let geometry = positioner.get_geometry();
        surface.with_pending_state(|s| {
            s.geometry = geometry;
            s.positioner = positioner;
        });
        surface.send_repositioned(token);
    }

    fn toplevel_destroyed(&mut self, surface: ToplevelSurface) {
        self.remove_window(surface.wl_surface());
    }

    fn popup_destroyed(&mut self, surface: PopupSurface) {
        self.remove_window(surface.wl_surface());
    }

    fn title_changed(&mut self, surface: ToplevelSurface) {
        let (title, _) = surface_title(surface.wl_surface());
        if let Some(&id) = self.by_surface.get(surface.wl_surface()) {
            if let Some(w) = self.windows.get_mut(&id) {
                w.title = title.clone();
                if w.announced {
                    self.send(&AgentMsg::title(id, &title));
                }
            }
        }
    }

    fn app_id_changed(&mut self, surface: ToplevelSurface) {
        let (_, app_id) = surface_title(surface.wl_surface());
        if let Some(&id) = self.by_surface.get(surface.wl_surface()) {
            if let Some(w) = self.windows.get_mut(&id) {
                w.app_id = app_id.clone();
                if w.announced {
                    self.send(&AgentMsg::app_id(id, &app_id));
                }
            }
        }
    }
}

impl XdgDecorationHandler for Agent {
    fn new_decoration(&mut self, toplevel: ToplevelSurface) {
        toplevel.with_pending_state(|s| s.decoration_mode = Some(DecorationMode::ServerSide));
    }
    fn request_mode(&mut self, toplevel: ToplevelSurface, _mode: DecorationMode) {
        toplevel.with_pending_state(|s| s.decoration_mode = Some(DecorationMode::ServerSide));
        if toplevel.is_initial_configure_sent() {
            toplevel.send_pending_configure();
        }
    }
    fn unset_mode(&mut self, toplevel: ToplevelSurface) {
        self.request_mode(toplevel, DecorationMode::ServerSide);
    }
}

impl SeatHandler for Agent {
    type KeyboardFocus = WlSurface;
    type PointerFocus = WlSurface;
    type TouchFocus = WlSurface;

    fn seat_state(&mut self) -> &mut SeatState<Self> {
        &mut self.seat_state
    }

    fn focus_changed(&mut self, seat: &Seat<Self>, focused: Option<&WlSurface>) {
        let client = focused.and_then(|s| self.dh.get_client(s.id()).ok());
        set_data_device_focus(&self.dh, seat, client);
    }

    fn cursor_image(&mut self, _seat: &Seat<Self>, image: CursorImageStatus) {
        let name = match image {
            CursorImageStatus::Hidden => "none",
            CursorImageStatus::Named(icon) => icon.name(),
            CursorImageStatus::Surface(_) => "default",
        };
        // no window under the pointer: nothing to tell dom0
        let window = self.pointer_window;
        if window != 0 {
            self.send(&AgentMsg::cursor_named(window, name));
        }
    }
}

impl SelectionHandler for Agent {
    type SelectionUserData = Arc<Vec<u8>>;

    fn new_selection(
        &mut self,
        ty: SelectionTarget,
        source: Option<SelectionSource>,
        _seat: Seat<Self>,
    ) {
        if ty == SelectionTarget::Clipboard {
            self.clipboard_mimes = source.map(|s| s.mime_types()).unwrap_or_default();
            debug!(mimes = ?self.clipboard_mimes, "domain clipboard changed");
        }
    }

    fn send_selection(
        &mut self,
        _ty: SelectionTarget,
        _mime_type: String,
        fd: std::os::fd::OwnedFd,
        _seat: Seat<Self>,
        user_data: &Self::SelectionUserData,
    ) {
        clipboard::write_selection(fd, user_data.clone());
    }
}

impl DataDeviceHandler for Agent {
    fn data_device_state(&self) -> &DataDeviceState {
        &self.data_device_state
    }
}
impl ClientDndGrabHandler for Agent {}
impl ServerDndGrabHandler for Agent {}

impl OutputHandler for Agent {}

/// Clears the dom0-set selection (used when dom0 pastes nothing).
#[allow(dead_code)]
pub(crate) fn clear_selection(agent: &Agent) {
    clear_data_device_selection(&agent.dh, &agent.seat);
}

delegate_compositor!(Agent);
delegate_shm!(Agent);
delegate_xdg_shell!(Agent);
delegate_xdg_decoration!(Agent);
delegate_seat!(Agent);
delegate_data_device!(Agent);
delegate_output!(Agent);
