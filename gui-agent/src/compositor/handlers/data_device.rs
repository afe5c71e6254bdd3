//! wl_data_device: the domain's clipboard selection (what dom0 may ask for) and pastes from
//! dom0 served to clients. Drag and drop is not forwarded.

use std::sync::Arc;

use smithay::delegate_data_device;
use smithay::input::Seat;
use smithay::wayland::selection::data_device::{
    clear_data_device_selection, ClientDndGrabHandler, DataDeviceHandler, DataDeviceState,
    ServerDndGrabHandler,
};
use smithay::wayland::selection::{SelectionHandler, SelectionSource, SelectionTarget};
use tracing::debug;

use crate::clipboard;
use crate::compositor::state::Agent;

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

/// Clears the dom0-set selection (used when dom0 pastes nothing).
#[allow(dead_code)]
pub(crate) fn clear_selection(agent: &Agent) {
    clear_data_device_selection(&agent.dh, &agent.seat);
}

delegate_data_device!(Agent);
