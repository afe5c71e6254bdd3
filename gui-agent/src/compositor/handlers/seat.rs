//! wl_seat: keyboard focus follows dom0 (and carries the data device focus); cursor images
//! go to dom0 as named cursors.

use bulkhead_wire::gui::AgentMsg;
use smithay::delegate_seat;
use smithay::input::pointer::CursorImageStatus;
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::Resource;
use smithay::wayland::selection::data_device::set_data_device_focus;

use crate::compositor::state::Agent;

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

delegate_seat!(Agent);
