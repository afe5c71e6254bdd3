//! The little dom0-ui does with X11 directly: on a bare X server (no window manager, e.g.
//! the test Xvfb) nobody places windows, so dom0-ui places its own; with a window manager it
//! leaves placement to it.

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConfigureWindowAux, ConnectionExt};
use x11rb::rust_connection::RustConnection;

/// A connection to the X server GTK uses.
pub struct X11 {
    conn: RustConnection,
    root: u32,
    /// Screen size.
    pub screen: (i32, i32),
}

impl X11 {
    /// Connects to `$DISPLAY`; None when there is no X server (e.g. a Wayland session).
    pub fn connect() -> Option<Self> {
        let (conn, n) = match RustConnection::connect(None) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no X11 connection; windows are placed by the compositor");
                return None;
            }
        };
        let screen = conn.setup().roots.get(n)?;
        let root = screen.root;
        let size = (
            i32::from(screen.width_in_pixels),
            i32::from(screen.height_in_pixels),
        );
        Some(Self {
            conn,
            root,
            screen: size,
        })
    }

    /// Whether a window manager runs (EWMH `_NET_SUPPORTING_WM_CHECK` on the root window).
    pub fn has_window_manager(&self) -> bool {
        let check = || -> Option<bool> {
            let atom = self
                .conn
                .intern_atom(true, b"_NET_SUPPORTING_WM_CHECK")
                .ok()?
                .reply()
                .ok()?
                .atom;
            if atom == 0 {
                return Some(false);
            }
            let prop = self
                .conn
                .get_property(false, self.root, atom, AtomEnum::WINDOW, 0, 1)
                .ok()?
                .reply()
                .ok()?;
            Some(prop.value_len > 0)
        };
        check().unwrap_or(false)
    }

    /// Moves a top-level window (only done when no window manager runs).
    pub fn move_window(&self, xid: u32, x: i32, y: i32) {
        let aux = ConfigureWindowAux::new().x(x).y(y);
        let sent = self
            .conn
            .configure_window(xid, &aux)
            .map(|_| ())
            .and_then(|()| self.conn.flush());
        if let Err(e) = sent {
            tracing::debug!(error = %e, xid, "moving a window");
        }
    }
}

/// Without a window manager: realizes `window` (unmapped) and moves it to `at(screen size)`;
/// returns where it went. With one (or not on X11) nothing happens and None comes back.
pub fn place_unmanaged(
    x11: Option<&X11>,
    window: &gtk4::Window,
    at: impl FnOnce((i32, i32)) -> (i32, i32),
) -> Option<(i32, i32)> {
    use gtk4::prelude::*;
    let x = x11.filter(|x| !x.has_window_manager())?;
    WidgetExt::realize(window);
    let xid = window
        .surface()
        .and_then(|s| s.downcast::<gdk4_x11::X11Surface>().ok())
        .map(|s| s.xid())?;
    let pos = at(x.screen);
    x.move_window(u32::try_from(xid).ok()?, pos.0, pos.1);
    Some(pos)
}

/// Shows `window` without taking the keyboard focus: its X11 `_NET_WM_USER_TIME` is 0 before
/// it maps (EWMH: "do not focus on map", which window managers such as openbox honour), and
/// it is shown, never presented (GTK's present asks for the focus, and without a window
/// manager sets it itself). The focus moves to it only by the user's click or keys.
pub fn show_without_focus(window: &gtk4::Window) {
    use gtk4::prelude::*;
    WidgetExt::realize(window);
    if let Some(s) = x11_surface(window) {
        s.set_user_time(0);
    }
    window.set_visible(true);
}

/// Marks `window` as wanting the user's attention (ICCCM urgency hint, shown by window
/// managers), or clears that.
pub fn set_urgent(window: &gtk4::Window, urgent: bool) {
    if let Some(s) = x11_surface(window) {
        s.set_urgency_hint(urgent);
    }
}

fn x11_surface(window: &gtk4::Window) -> Option<gdk4_x11::X11Surface> {
    use gtk4::prelude::*;
    window
        .surface()
        .and_then(|s| s.downcast::<gdk4_x11::X11Surface>().ok())
}
