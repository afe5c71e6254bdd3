//! wl_compositor / wl_subcompositor: surface commits. A toplevel or popup commit is captured;
//! other surfaces (subsurfaces, cursors) get their buffers released at once.

use smithay::delegate_compositor;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::Client;
use smithay::wayland::compositor::{
    with_states, BufferAssignment, CompositorClientState, CompositorHandler, CompositorState,
    SurfaceAttributes,
};
use tracing::warn;

use crate::compositor::state::{Agent, ClientState, Role};

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

delegate_compositor!(Agent);
