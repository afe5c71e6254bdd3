//! xdg_wm_base: toplevels and popups become forwarded windows; titles and app ids go to dom0.

use bulkhead_wire::gui::AgentMsg;
use smithay::delegate_xdg_shell;
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_server::protocol::wl_seat::WlSeat;
use smithay::utils::Serial;
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState,
};

use crate::compositor::state::{surface_title, Agent, Role};

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
        // the position is relative to the parent's window geometry, and dom0's windows are
        // the window geometries (capture crops to them), so it is dom0's position as it is
        let pos = (geometry.loc.x, geometry.loc.y);
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

delegate_xdg_shell!(Agent);
