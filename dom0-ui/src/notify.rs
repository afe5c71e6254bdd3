//! dom0's own notices: small undecorated windows in the top right corner that go away by
//! themselves (no notification daemon is needed, and none runs in CI). Each notice's window
//! title is `Bulkhead: <text>`, so it can be found like any window. A notice never takes the
//! keyboard from the window the user is typing in.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gtk4::glib;
use gtk4::prelude::*;

use crate::x11::X11;

/// How long a notice stays.
pub const NOTICE_SECS: u64 = 8;
/// Width of a notice.
const WIDTH: i32 = 380;
/// Margin from the screen edge and between notices.
const MARGIN: i32 = 10;
/// Height a notice is assumed to have for stacking.
const SLOT: i32 = 64;

/// Shows notices.
pub struct Notifier {
    x11: Option<Rc<X11>>,
    shown: Rc<RefCell<Vec<gtk4::Window>>>,
}

impl Notifier {
    /// Notices placed through `x11` when no window manager does it.
    pub fn new(x11: Option<Rc<X11>>) -> Self {
        Self {
            x11,
            shown: Rc::new(RefCell::new(Vec::new())),
        }
    }

    /// Shows `text` for [`NOTICE_SECS`]; `refused` marks refusals (red edge).
    pub fn show(&self, text: &str, refused: bool) {
        let w = gtk4::Window::new();
        w.set_title(Some(&format!("Bulkhead: {text}")));
        w.set_decorated(false);
        w.set_resizable(false);
        w.set_focusable(false);
        w.set_default_size(WIDTH, -1);
        let label = gtk4::Label::new(None);
        label.set_use_markup(false);
        label.set_text(text);
        label.set_wrap(true);
        label.set_max_width_chars(48);
        label.set_xalign(0.0);
        label.add_css_class("bh-notice");
        if refused {
            label.add_css_class("bh-refused");
        }
        w.set_child(Some(&label));
        let slot = {
            let mut shown = self.shown.borrow_mut();
            shown.retain(|s| s.is_visible());
            shown.push(w.clone());
            i32::try_from(shown.len()).unwrap_or(1) - 1
        };
        crate::x11::place_unmanaged(self.x11.as_deref(), &w, |screen| {
            (screen.0 - WIDTH - MARGIN, MARGIN + slot * (SLOT + MARGIN))
        });
        // Never takes the keyboard focus (nor would a window manager give it).
        crate::x11::show_without_focus(&w);
        let shown = self.shown.clone();
        glib::timeout_add_local_once(Duration::from_secs(NOTICE_SECS), move || {
            w.destroy();
            shown.borrow_mut().retain(|s| s != &w);
        });
    }
}
