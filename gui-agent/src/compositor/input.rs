//! What dom0 sends, applied inside the domain: keys, pointer and focus into the seat,
//! configure and close requests to the windows, clipboard requests and pastes.

use std::sync::Arc;

use bulkhead_wire::gui::{self as wire, AgentMsg, Hello, HostMsg, MAX_HEIGHT, MAX_WIDTH};
use smithay::backend::input::{Axis, AxisSource, ButtonState, KeyState};
use smithay::input::keyboard::{FilterResult, Keycode};
use smithay::input::pointer::{AxisFrame, ButtonEvent, MotionEvent};
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::SERIAL_COUNTER;
use smithay::wayland::selection::data_device::{
    request_data_device_client_selection, set_data_device_selection,
};
use tracing::{debug, info, warn};

use super::state::{Agent, Role};
use crate::clipboard;

impl Agent {
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
                let bytes = keymap.len();
                if let Some(kb) = self.seat.get_keyboard() {
                    match kb.set_keymap_from_string(self, keymap) {
                        Ok(()) => info!(bytes, "keymap from dom0 applied"),
                        Err(e) => warn!(error = ?e, "keymap from dom0 rejected"),
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
                // dom0's positions are the window's pixels; the surface has the client's
                // margins (shadows) around them, and may be scaled.
                let ((cx, cy), scale) = self
                    .windows
                    .get(&window)
                    .map_or(((0, 0), 1), |w| (w.crop, w.scale));
                let s = f64::from(scale.max(1));
                let location = (
                    (f64::from(x) + f64::from(cx)) / s,
                    (f64::from(y) + f64::from(cy)) / s,
                );
                self.pointer_window = window;
                if let Some(ptr) = self.seat.get_pointer() {
                    ptr.motion(
                        self,
                        Some((surface, (0.0, 0.0).into())),
                        &MotionEvent {
                            location: location.into(),
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
