//! dom0's own small panel: opens the domain manager and the policy editor (dom0-manager's
//! relm4 components) and reminds of the clipboard chords. Ctrl-Alt-M in the panel opens the
//! manager too. Without a window manager it sits in the bottom left corner.

use std::cell::RefCell;
use std::rc::Rc;

use dom0_manager::{ManagerInit, ManagerWindow, PolicyEditor, PolicyInit};
use gtk4::prelude::*;
use gtk4::{gdk, glib};
use relm4::component::{Component, ComponentController, Controller};

use crate::x11::X11;

/// The panel's window title.
pub const TITLE: &str = "Bulkhead";
/// Height of the screen strip kept for the panel when dom0-ui places windows.
pub const HEIGHT: i32 = 44;

#[derive(Default)]
struct Open {
    manager: Option<Controller<ManagerWindow>>,
    policy: Option<Controller<PolicyEditor>>,
}

/// Brings up the component in `slot`, launching it first when it is not shown.
fn present_or_launch<C>(slot: &mut Option<Controller<C>>, init: C::Init)
where
    C: Component<Root = gtk4::Window>,
{
    if let Some(c) = slot.as_ref().filter(|c| c.widget().is_visible()) {
        c.widget().present();
        return;
    }
    let c = C::builder().launch(init).detach();
    c.widget().present();
    *slot = Some(c);
}

/// Shows (or brings up) the domain manager.
fn open_manager(open: &Rc<RefCell<Open>>, conn: &zbus::Connection) {
    let init = ManagerInit { conn: conn.clone() };
    present_or_launch(&mut open.borrow_mut().manager, init);
}

/// Shows (or brings up) the policy editor.
fn open_policy(open: &Rc<RefCell<Open>>, conn: &zbus::Connection) {
    let init = PolicyInit { conn: conn.clone() };
    present_or_launch(&mut open.borrow_mut().policy, init);
}

/// Builds and shows the panel. `conn` is None when domaind's bus could not be reached at
/// start (the buttons then say so).
pub fn show(conn: Option<zbus::Connection>, x11: Option<&X11>) -> gtk4::Window {
    let open = Rc::new(RefCell::new(Open::default()));
    let w = gtk4::Window::new();
    w.set_title(Some(TITLE));
    w.set_resizable(false);
    let row = gtk4::Box::new(gtk4::Orientation::Horizontal, 8);
    row.add_css_class("bh-panel");
    let name = gtk4::Label::new(Some("Bulkhead"));
    name.add_css_class("bh-panel-name");
    let manager = gtk4::Button::with_label("Domains");
    manager.set_tooltip_text(Some("The domain manager (Ctrl-Alt-M)"));
    let policy = gtk4::Button::with_label("Policy");
    policy.set_tooltip_text(Some("The policy editor"));
    let hint = gtk4::Label::new(Some("Ctrl-Shift-C copy · Ctrl-Shift-V paste"));
    hint.add_css_class("dim-label");
    row.append(&name);
    row.append(&manager);
    row.append(&policy);
    row.append(&hint);
    w.set_child(Some(&row));
    match conn {
        Some(conn) => {
            {
                let (open, conn) = (open.clone(), conn.clone());
                manager.connect_clicked(move |_| open_manager(&open, &conn));
            }
            {
                let (open, conn) = (open.clone(), conn.clone());
                policy.connect_clicked(move |_| open_policy(&open, &conn));
            }
            let keys = gtk4::EventControllerKey::new();
            keys.connect_key_pressed(move |_, key, _, state| {
                let want = gdk::ModifierType::CONTROL_MASK | gdk::ModifierType::ALT_MASK;
                if state.contains(want) && matches!(key, gdk::Key::m | gdk::Key::M) {
                    open_manager(&open, &conn);
                    return glib::Propagation::Stop;
                }
                glib::Propagation::Proceed
            });
            w.add_controller(keys);
        }
        None => {
            for b in [&manager, &policy] {
                b.set_sensitive(false);
                b.set_tooltip_text(Some(
                    "domaind's bus could not be reached when dom0-ui started",
                ));
            }
        }
    }
    crate::x11::place_unmanaged(x11, &w, |screen| (0, screen.1 - HEIGHT));
    w.set_visible(true);
    w
}
