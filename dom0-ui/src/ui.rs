//! The GTK side: one GTK window per guest toplevel (title strip and frame in the domain's
//! label colour, title `[domain] title`), popovers for guest popups, input forwarded to the
//! owning domain only, the secure clipboard, notices and the ask dialog.
//!
//! Every GTK callback only sends messages (to the domain's [`HostSender`] or, for the
//! clipboard chords, to the UI's own queue), so no callback ever re-enters [`Desktop`].

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use bulkhead_domain::Label;
use bulkhead_gui_host::{DomainWindows, HostSender, Window};
use bulkhead_wire::gui::{Axis, HostMsg, WindowId};
use gtk4::prelude::*;
use gtk4::{gdk, glib};
use tokio::sync::mpsc;

use crate::backend::{lock, Cmd, DomainGui, UiEvent};
use crate::clipboard::{chord, Buffer, Chord, Stored};
use crate::notify::Notifier;
use crate::placement::{place, Area};
use crate::view::{GuestView, FRAME};
use crate::x11::X11;

/// Height assumed for the title strip before GTK has measured it.
const STRIP_HEIGHT: i32 = 26;
/// Scroll distance of one wheel notch, in pixels (1/256 units go on the wire).
const WHEEL_STEP_PX: f64 = 10.0;

/// CSS for the label classes and the guest window parts.
pub fn css() -> String {
    let mut s = String::from(
        ".bh-strip { padding: 2px 6px; }\n\
         .bh-strip label { font-weight: bold; }\n\
         .bh-strip button { padding: 0 6px; min-height: 0; min-width: 0; border: none; \
           background: none; box-shadow: none; color: inherit; }\n\
         popover.bh-popup, popover.bh-popup > contents { padding: 0; margin: 0; border: none; \
           border-radius: 0; box-shadow: none; background: none; }\n\
         .bh-notice { padding: 8px 12px; border-left: 6px solid #888; background: #2e3436; \
           color: #eeeeec; }\n\
         .bh-notice.bh-refused { border-left-color: #cc0000; }\n\
         .bh-panel { padding: 6px 10px; }\n\
         .bh-panel-name { font-weight: bold; }\n",
    );
    for l in Label::ALL {
        let rgb = l.color_rgb();
        let lum = 0.299 * f64::from((rgb >> 16) & 0xff)
            + 0.587 * f64::from((rgb >> 8) & 0xff)
            + 0.114 * f64::from(rgb & 0xff);
        let fg = if lum > 150.0 { "#000000" } else { "#ffffff" };
        s.push_str(&format!(
            ".bh-strip.bh-{} {{ background-color: #{}; color: {fg}; }}\n",
            l.as_str(),
            l.color_hex()
        ));
    }
    s
}

/// The title dom0 shows: the domain name from dom0's config, then the sanitised title.
pub fn window_title(domain: &str, title: &str) -> String {
    if title.is_empty() {
        format!("[{domain}]")
    } else {
        format!("[{domain}] {title}")
    }
}

/// Linux `BTN_*` code of a GDK button number.
pub fn button_code(button: u32) -> Option<u32> {
    match button {
        1 => Some(0x110),
        2 => Some(0x112),
        3 => Some(0x111),
        8 => Some(0x113),
        9 => Some(0x114),
        _ => None,
    }
}

/// Keys held down in one toplevel, and chord keys whose release must not reach the guest.
#[derive(Default)]
struct Keys {
    pressed: BTreeSet<u32>,
    swallowed: HashSet<u32>,
}

enum Kind {
    Toplevel {
        window: gtk4::Window,
        title: gtk4::Label,
        placed: Option<Area>,
    },
    Popup {
        popover: gtk4::Popover,
        parent: WindowId,
    },
}

struct UiWindow {
    kind: Kind,
    view: GuestView,
    title: String,
    maximized: bool,
    minimized: bool,
    cursor: &'static str,
}

struct UiDomain {
    gui: DomainGui,
    windows: BTreeMap<WindowId, UiWindow>,
}

/// Everything the GTK thread keeps.
pub struct Desktop {
    domains: HashMap<String, UiDomain>,
    clipboard: Buffer,
    copy_waiting: Option<String>,
    notifier: Notifier,
    x11: Option<Rc<X11>>,
    /// Screen areas guest windows are not placed on (the panel).
    reserved: Vec<Area>,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: async_channel::Sender<UiEvent>,
}

impl Desktop {
    /// A desktop with no windows yet.
    pub fn new(
        cmds: mpsc::UnboundedSender<Cmd>,
        events: async_channel::Sender<UiEvent>,
        clipboard_max: usize,
    ) -> Self {
        let x11 = X11::connect().map(Rc::new);
        set_event_queue(events.clone());
        Self {
            domains: HashMap::new(),
            clipboard: Buffer::new(clipboard_max),
            copy_waiting: None,
            notifier: Notifier::new(x11.clone()),
            x11,
            reserved: Vec::new(),
            cmds,
            events,
        }
    }

    /// The X11 connection, when GTK runs on X11.
    pub fn x11(&self) -> Option<Rc<X11>> {
        self.x11.clone()
    }

    /// Keeps guest windows off `area` when dom0-ui places them.
    pub fn reserve(&mut self, area: Area) {
        self.reserved.push(area);
    }

    /// Shows a notice.
    pub fn notice(&mut self, text: &str, refused: bool) {
        tracing::info!(notice = text, refused);
        self.notifier.show(text, refused);
    }

    /// Handles one event.
    pub fn handle(&mut self, ev: UiEvent) {
        match ev {
            UiEvent::Connected(gui) => {
                if let Some(old) = self.domains.remove(&gui.domain) {
                    close_all(old);
                }
                self.domains.insert(
                    gui.domain.clone(),
                    UiDomain {
                        gui,
                        windows: BTreeMap::new(),
                    },
                );
            }
            UiEvent::Changed { domain, gen } => self.sync(&domain, gen),
            UiEvent::Ended { domain, gen } => {
                let current = self.domains.get(&domain).map(|d| d.gui.gen);
                if current.is_some() && (gen.is_none() || gen == current) {
                    if let Some(d) = self.domains.remove(&domain) {
                        close_all(d);
                    }
                }
            }
            UiEvent::Notice(text) => {
                let refused = text.starts_with("Denied");
                self.notice(&text, refused);
            }
            UiEvent::Keymap(keymap) => {
                for (name, d) in &self.domains {
                    let msg = HostMsg::Keymap {
                        keymap: keymap.clone(),
                    };
                    if let Err(e) = d.gui.sender.send(&msg) {
                        tracing::warn!(domain = %name, error = %e, "keymap not sent");
                    }
                }
            }
            UiEvent::Ask(req) => crate::ask::show(req, self.x11.as_deref()),
            UiEvent::Chord { domain, chord } => self.chord(&domain, chord),
            UiEvent::CopyTimeout { domain } => {
                if self.copy_waiting.as_deref() == Some(domain.as_str()) {
                    self.copy_waiting = None;
                    self.notice(&format!("Copy: no answer from {domain}'s clipboard"), true);
                }
            }
            UiEvent::PasteDecided {
                source,
                target,
                result,
            } => self.paste_decided(&source, &target, result),
        }
    }

    fn chord(&mut self, domain: &str, chord: Chord) {
        let Some(d) = self.domains.get(domain) else {
            return;
        };
        match chord {
            Chord::Copy => {
                lock(&d.gui.state).clipboard_requested();
                if d.gui.sender.send(&HostMsg::ClipboardRequest).is_ok() {
                    self.copy_waiting = Some(domain.to_owned());
                    let events = self.events.clone();
                    let domain = domain.to_owned();
                    // No answer in time: say so (the agent answers within 2 s).
                    glib::timeout_add_local_once(std::time::Duration::from_secs(5), move || {
                        let _ = events.try_send(UiEvent::CopyTimeout { domain });
                    });
                }
            }
            Chord::Paste => match self.clipboard.peek() {
                None => self.notice(
                    "Paste: the dom0 clipboard is empty (Ctrl-Shift-C in a window copies that domain's clipboard)",
                    true,
                ),
                Some(held) => {
                    let _ = self.cmds.send(Cmd::EvaluatePaste {
                        source: held.source.clone(),
                        target: domain.to_owned(),
                    });
                }
            },
        }
    }

    fn got_clipboard(&mut self, domain: &str, data: bytes::Bytes) {
        if self.copy_waiting.as_deref() != Some(domain) {
            return;
        }
        self.copy_waiting = None;
        match self.clipboard.store(domain, data) {
            Stored::Kept(src, n) => self.notice(
                &format!("Copied {n} bytes from {src}'s clipboard; Ctrl-Shift-V pastes them into the window you choose"),
                false,
            ),
            Stored::Empty(src) => self.notice(&format!("Copy: {src}'s clipboard is empty"), true),
            Stored::TooBig(src, n) => self.notice(
                &format!("Copy refused: {src}'s clipboard holds {n} bytes, more than dom0 keeps"),
                true,
            ),
        }
    }

    fn paste_decided(&mut self, source: &str, target: &str, result: Result<bool, String>) {
        match result {
            Ok(true) => {
                let Some(held) = self.clipboard.take() else {
                    return;
                };
                let Some(d) = self.domains.get(target) else {
                    self.notice(&format!("Paste: {target} has no windows any more"), true);
                    return;
                };
                let n = held.data.len();
                match d.gui.sender.send(&HostMsg::ClipboardData { data: held.data }) {
                    Ok(()) => self.notice(
                        &format!("Pasted {n} bytes from {source} into {target}'s clipboard; the dom0 clipboard is empty again"),
                        false,
                    ),
                    Err(e) => self.notice(&format!("Paste into {target} failed: {e}"), true),
                }
            }
            Ok(false) => self.notice(
                &format!("Paste refused: the policy does not allow pasting from {source} into {target} (bulkhead.ClipboardPaste)"),
                true,
            ),
            Err(e) => self.notice(&format!("Paste: cannot ask domaind: {e}"), true),
        }
    }

    /// Brings the GTK windows of `domain` in line with its window state.
    fn sync(&mut self, domain: &str, gen: u64) {
        let Some(d) = self.domains.get_mut(domain) else {
            return;
        };
        if d.gui.gen != gen {
            return;
        }
        let pending = lock(&d.gui.pending).take();
        let state = d.gui.state.clone();
        let st = lock(&state);
        let mut created = HashSet::new();
        if pending.structure {
            created = self.sync_windows(domain, &st);
        }
        let Some(d) = self.domains.get_mut(domain) else {
            return;
        };
        for (id, rects) in &pending.damage {
            if created.contains(id) {
                continue;
            }
            if let (Some(uw), Some(w)) = (d.windows.get(id), st.window(*id)) {
                uw.view.update(w.pixels(), w.width, w.height, rects);
            }
        }
        drop(st);
        if let Some(data) = pending.clipboard {
            self.got_clipboard(domain, data);
        }
    }

    /// Creates, updates and removes GTK windows; returns the ids created (already drawn).
    fn sync_windows(&mut self, domain: &str, st: &DomainWindows) -> HashSet<WindowId> {
        let mut desired: BTreeMap<WindowId, &Window> = BTreeMap::new();
        for w in st.windows() {
            if !w.mapped {
                continue;
            }
            if let Some(p) = w.popup_parent {
                if !desired.contains_key(&p) {
                    continue;
                }
            }
            desired.insert(w.id, w);
        }
        let taken = self.taken_areas();
        let x11 = self.x11.clone();
        let Some(d) = self.domains.get_mut(domain) else {
            return HashSet::new();
        };
        // Gone, hidden, or changed between popup and toplevel: remove (popups first).
        let stale: Vec<WindowId> = d
            .windows
            .iter()
            .rev()
            .filter(|(id, uw)| match desired.get(id) {
                None => true,
                Some(w) => match uw.kind {
                    Kind::Popup { parent, .. } => w.popup_parent != Some(parent),
                    Kind::Toplevel { .. } => w.popup_parent.is_some(),
                },
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(uw) = d.windows.remove(&id) {
                close_window(uw);
            }
        }
        let mut created = HashSet::new();
        let mut opened = Vec::new();
        let mut taken = taken;
        for (id, w) in desired {
            if let Some(uw) = d.windows.get_mut(&id) {
                update_window(&d.gui, uw, w);
                continue;
            }
            let uw = match w.popup_parent {
                Some(parent) => {
                    let Some(pv) = d.windows.get(&parent).map(|p| p.view.clone()) else {
                        continue;
                    };
                    let parent_pos = st.window(parent).map(|p| (p.x, p.y)).unwrap_or((0, 0));
                    make_popup(&d.gui, w, parent, &pv, parent_pos)
                }
                None => {
                    // A new window may take the keyboard only from its own domain.
                    let focus = own_domain_has_focus(&d.windows);
                    if !focus {
                        opened.push(window_title(&d.gui.domain, &w.title));
                    }
                    make_toplevel(&d.gui, w, x11.as_deref(), &mut taken, focus)
                }
            };
            d.windows.insert(id, uw);
            created.insert(id);
        }
        // The user is typing somewhere: say that a window came, instead of moving the keys.
        if !opened.is_empty() && focus_in_this_desktop() {
            for title in opened {
                self.notice(
                    &format!("New window {title}; click it to type into it"),
                    false,
                );
            }
        }
        created
    }

    fn taken_areas(&self) -> Vec<Area> {
        let mut v = self.reserved.clone();
        v.extend(
            self.domains
                .values()
                .flat_map(|d| d.windows.values())
                .filter_map(|uw| match &uw.kind {
                    Kind::Toplevel { placed, .. } => *placed,
                    Kind::Popup { .. } => None,
                }),
        );
        v
    }
}

/// Whether one of these (one domain's) windows has the keyboard.
fn own_domain_has_focus(windows: &BTreeMap<WindowId, UiWindow>) -> bool {
    windows.values().any(|uw| match &uw.kind {
        Kind::Toplevel { window, .. } => window.is_active(),
        Kind::Popup { .. } => false,
    })
}

/// Whether one of dom0-ui's windows (a guest's or dom0's own) has the keyboard.
fn focus_in_this_desktop() -> bool {
    gtk4::Window::list_toplevels()
        .iter()
        .filter_map(|w| w.downcast_ref::<gtk4::Window>())
        .any(|w| w.is_active())
}

fn close_all(d: UiDomain) {
    for (_, uw) in d.windows.into_iter().rev() {
        close_window(uw);
    }
}

fn close_window(uw: UiWindow) {
    match uw.kind {
        Kind::Toplevel { window, .. } => window.destroy(),
        Kind::Popup { popover, .. } => {
            popover.popdown();
            if popover.parent().is_some() {
                popover.unparent();
            }
        }
    }
}

fn update_window(gui: &DomainGui, uw: &mut UiWindow, w: &Window) {
    if uw.title != w.title {
        uw.title = w.title.clone();
        if let Kind::Toplevel { window, title, .. } = &uw.kind {
            let t = window_title(&gui.domain, &w.title);
            window.set_title(Some(&t));
            title.set_text(&t);
        }
    }
    let cursor = w.cursor.name();
    if uw.cursor != cursor {
        uw.cursor = cursor;
        uw.view.set_cursor_from_name(Some(cursor));
    }
    let old = uw.view.guest_size();
    if old != Some((w.width, w.height)) {
        uw.view.update(w.pixels(), w.width, w.height, &[]);
        // The guest changed its size itself: fit the window to it.
        if let Kind::Toplevel { window, .. } = &uw.kind {
            if uw.view.allocated() != (w.width, w.height) && !w.maximized {
                let strip = window
                    .child()
                    .and_then(|c| c.first_child())
                    .map(|s| s.height())
                    .filter(|h| *h > 0)
                    .unwrap_or(STRIP_HEIGHT);
                window.set_default_size(px(w.width + 2 * FRAME), px(w.height + 2 * FRAME) + strip);
            }
        }
    }
    if let Kind::Toplevel { window, .. } = &uw.kind {
        // A guest may minimise its own window (never un-minimise it: that is the user's).
        if w.minimized && !uw.minimized {
            window.minimize();
        }
        uw.minimized = w.minimized;
        if uw.maximized != w.maximized {
            uw.maximized = w.maximized;
            if w.maximized {
                window.maximize();
            } else {
                window.unmaximize();
            }
        }
    }
}

fn px(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Which edge of a `width` x `height` view a press at (`x`, `y`) grabs: within the coloured
/// frame on the left, right or bottom (the strip is the top), with the corners `CORNER`
/// pixels long. None: inside, for the guest.
fn frame_edge(width: f64, height: f64, x: f64, y: f64) -> Option<gdk::SurfaceEdge> {
    const CORNER: f64 = 16.0;
    let f = f64::from(FRAME);
    let (left, right, bottom) = (x < f, x >= width - f, y >= height - f);
    let (near_left, near_right) = (x < CORNER, x >= width - CORNER);
    let near_bottom = y >= height - CORNER;
    use gdk::SurfaceEdge as E;
    Some(match () {
        _ if bottom && near_left || left && near_bottom => E::SouthWest,
        _ if bottom && near_right || right && near_bottom => E::SouthEast,
        _ if bottom => E::South,
        _ if left => E::West,
        _ if right => E::East,
        _ => return None,
    })
}

/// The frame resizes the window (undecorated, it has no other edges): a press on it starts
/// the window manager's resize (GDK does it itself without one) and never reaches the guest.
fn attach_frame_resize(window: &gtk4::Window, view: &GuestView) {
    let press = gtk4::EventControllerLegacy::new();
    press.set_propagation_phase(gtk4::PropagationPhase::Capture);
    let (w, v) = (window.downgrade(), view.downgrade());
    press.connect_event(move |_, ev| {
        let (Some(window), Some(view)) = (w.upgrade(), v.upgrade()) else {
            return glib::Propagation::Proceed;
        };
        if ev.event_type() != gdk::EventType::ButtonPress {
            return glib::Propagation::Proceed;
        }
        let Some(b) = ev.downcast_ref::<gdk::ButtonEvent>() else {
            return glib::Propagation::Proceed;
        };
        let Some((sx, sy)) = ev.position() else {
            return glib::Propagation::Proceed;
        };
        // Event positions are the surface's; the view's own are needed for the edge.
        let (tx, ty) = window.surface_transform();
        let Some((vx, vy)) = window.translate_coordinates(&view, sx - tx, sy - ty) else {
            return glib::Propagation::Proceed;
        };
        let (vw, vh) = (f64::from(view.width()), f64::from(view.height()));
        // Only a left press on the view's own frame (not one outside it, e.g. during a drag
        // that started in the guest), and not while maximised: anything else is the guest's.
        if b.button() != 1
            || window.is_maximized()
            || !(0.0..vw).contains(&vx)
            || !(0.0..vh).contains(&vy)
        {
            return glib::Propagation::Proceed;
        }
        let edge = frame_edge(vw, vh, vx, vy);
        let (Some(edge), Some(surface)) = (edge, window.surface()) else {
            return glib::Propagation::Proceed;
        };
        let Ok(toplevel) = surface.downcast::<gdk::Toplevel>() else {
            return glib::Propagation::Proceed;
        };
        toplevel.begin_resize(edge, ev.device().as_ref(), 1, sx, sy, ev.time());
        glib::Propagation::Stop
    });
    view.add_controller(press);
}

/// Pointer input on a view goes to window `id` of the view's domain.
fn attach_pointer(view: &GuestView, sender: &HostSender, id: WindowId) {
    let motion = gtk4::EventControllerMotion::new();
    {
        let (s, v) = (sender.clone(), view.clone());
        motion.connect_enter(move |_, x, y| {
            let (x, y) = v.to_guest(x, y);
            let _ = s.send(&HostMsg::Enter { window: id, x, y });
        });
    }
    {
        let (s, v) = (sender.clone(), view.clone());
        motion.connect_motion(move |_, x, y| {
            let (x, y) = v.to_guest(x, y);
            let _ = s.send(&HostMsg::Motion { window: id, x, y });
        });
    }
    {
        let s = sender.clone();
        motion.connect_leave(move |_| {
            let _ = s.send(&HostMsg::Leave { window: id });
        });
    }
    view.add_controller(motion);

    // Raw button events: a click gesture would swallow the release of a drag.
    let buttons = gtk4::EventControllerLegacy::new();
    {
        let (s, v) = (sender.clone(), view.clone());
        buttons.connect_event(move |_, ev| {
            let pressed = match ev.event_type() {
                gdk::EventType::ButtonPress => true,
                gdk::EventType::ButtonRelease => false,
                _ => return glib::Propagation::Proceed,
            };
            let Some(b) = ev.downcast_ref::<gdk::ButtonEvent>() else {
                return glib::Propagation::Proceed;
            };
            if pressed && v.is_focusable() {
                v.grab_focus();
            }
            if let Some(button) = button_code(b.button()) {
                let _ = s.send(&HostMsg::Button {
                    window: id,
                    button,
                    pressed,
                });
            }
            glib::Propagation::Stop
        });
    }
    view.add_controller(buttons);

    let scroll = gtk4::EventControllerScroll::new(gtk4::EventControllerScrollFlags::BOTH_AXES);
    {
        let s = sender.clone();
        scroll.connect_scroll(move |c, dx, dy| {
            let wheel = c.unit() == gdk::ScrollUnit::Wheel;
            for (axis, d) in [(Axis::Vertical, dy), (Axis::Horizontal, dx)] {
                if d == 0.0 {
                    continue;
                }
                let (px, v120) = if wheel {
                    (d * WHEEL_STEP_PX, (d * 120.0) as i32)
                } else {
                    (d, 0)
                };
                let _ = s.send(&HostMsg::Scroll {
                    window: id,
                    axis,
                    value: (px * 256.0).clamp(-1e9, 1e9) as i32,
                    v120,
                });
            }
            glib::Propagation::Stop
        });
    }
    view.add_controller(scroll);
}

/// Keyboard and focus of a toplevel: keys go to window `id` of this domain only, except the
/// clipboard chords, which go to dom0's queue and never reach the guest.
fn attach_keys(
    window: &gtk4::Window,
    gui: &DomainGui,
    id: WindowId,
    events: async_channel::Sender<UiEvent>,
) {
    let keys = Rc::new(RefCell::new(Keys::default()));
    let ctl = gtk4::EventControllerKey::new();
    ctl.set_propagation_phase(gtk4::PropagationPhase::Capture);
    {
        let (s, keys, domain) = (gui.sender.clone(), keys.clone(), gui.domain.clone());
        ctl.connect_key_pressed(move |_, keyval, keycode, state| {
            let name = keyval.name().map(|n| n.to_string()).unwrap_or_default();
            let alt_super = state.intersects(
                gdk::ModifierType::ALT_MASK
                    | gdk::ModifierType::SUPER_MASK
                    | gdk::ModifierType::META_MASK,
            );
            if let Some(c) = chord(
                &name,
                state.contains(gdk::ModifierType::CONTROL_MASK),
                state.contains(gdk::ModifierType::SHIFT_MASK),
                alt_super,
            ) {
                keys.borrow_mut().swallowed.insert(keycode);
                let _ = events.try_send(UiEvent::Chord {
                    domain: domain.clone(),
                    chord: c,
                });
                return glib::Propagation::Stop;
            }
            // The guest repeats keys itself: drop the X server's auto-repeat.
            if keys.borrow_mut().pressed.insert(keycode) {
                let _ = s.send(&HostMsg::Key {
                    window: id,
                    keycode,
                    pressed: true,
                });
            }
            glib::Propagation::Stop
        });
    }
    {
        let (s, keys) = (gui.sender.clone(), keys.clone());
        ctl.connect_key_released(move |_, _, keycode, _| {
            let mut k = keys.borrow_mut();
            if k.swallowed.remove(&keycode) {
                return;
            }
            if k.pressed.remove(&keycode) {
                let _ = s.send(&HostMsg::Key {
                    window: id,
                    keycode,
                    pressed: false,
                });
            }
        });
    }
    window.add_controller(ctl);
    let s = gui.sender.clone();
    window.connect_is_active_notify(move |w| {
        if w.is_active() {
            let _ = s.send(&HostMsg::FocusIn { window: id });
        } else {
            // Release what is held so nothing stays stuck in the guest.
            let held: Vec<u32> = std::mem::take(&mut keys.borrow_mut().pressed)
                .into_iter()
                .collect();
            for keycode in held {
                let _ = s.send(&HostMsg::Key {
                    window: id,
                    keycode,
                    pressed: false,
                });
            }
            let _ = s.send(&HostMsg::FocusOut { window: id });
        }
    });
}

// The UI's own event queue, for callbacks (set once at start).
thread_local! {
    static EVENTS: RefCell<Option<async_channel::Sender<UiEvent>>> = const { RefCell::new(None) };
}

/// Sets the queue callbacks post to.
fn set_event_queue(tx: async_channel::Sender<UiEvent>) {
    EVENTS.with(|e| *e.borrow_mut() = Some(tx));
}

fn event_queue() -> Option<async_channel::Sender<UiEvent>> {
    EVENTS.with(|e| e.borrow().clone())
}

fn make_toplevel(
    gui: &DomainGui,
    w: &Window,
    x11: Option<&X11>,
    taken: &mut Vec<Area>,
    take_focus: bool,
) -> UiWindow {
    let id = w.id;
    let title_text = window_title(&gui.domain, &w.title);
    let window = gtk4::Window::new();
    window.set_title(Some(&title_text));
    let vbox = gtk4::Box::new(gtk4::Orientation::Vertical, 0);
    let strip = gtk4::Box::new(gtk4::Orientation::Horizontal, 0);
    strip.add_css_class("bh-strip");
    strip.add_css_class(&format!("bh-{}", gui.label.as_str()));
    let title = gtk4::Label::new(None);
    // Plain text, never markup.
    title.set_use_markup(false);
    title.set_text(&title_text);
    title.set_hexpand(true);
    title.set_xalign(0.0);
    title.set_ellipsize(gtk4::pango::EllipsizeMode::End);
    let button = |label: &str, tip: &str| {
        let b = gtk4::Button::with_label(label);
        b.set_focusable(false);
        b.set_tooltip_text(Some(tip));
        b
    };
    let minimize = button("–", "Minimise");
    {
        let w = window.downgrade();
        minimize.connect_clicked(move |_| {
            if let Some(window) = w.upgrade() {
                window.minimize();
            }
        });
    }
    let maximize = button("□", "Maximise or restore");
    {
        let w = window.downgrade();
        maximize.connect_clicked(move |_| match w.upgrade() {
            Some(window) if window.is_maximized() => window.unmaximize(),
            Some(window) => window.maximize(),
            None => {}
        });
    }
    let close = button("×", "Ask the application to close this window");
    {
        let s = gui.sender.clone();
        close.connect_clicked(move |_| {
            let _ = s.send(&HostMsg::Close { window: id });
        });
    }
    strip.append(&title);
    strip.append(&minimize);
    strip.append(&maximize);
    strip.append(&close);
    // The strip is the window's only title bar: the window manager is asked for none (one
    // title bar per guest window, in the domain's colour, with its name), and dragging the
    // strip moves the window (a double click maximises, as on any title bar).
    window.set_decorated(false);
    let handle = gtk4::WindowHandle::new();
    handle.set_child(Some(&strip));
    let view = GuestView::new(gui.label.color_rgb());
    view.set_hexpand(true);
    view.set_vexpand(true);
    view.update(w.pixels(), w.width, w.height, &[]);
    attach_frame_resize(&window, &view);
    vbox.append(&handle);
    vbox.append(&view);
    window.set_child(Some(&vbox));
    {
        let s = gui.sender.clone();
        window.connect_close_request(move |_| {
            let _ = s.send(&HostMsg::Close { window: id });
            glib::Propagation::Stop
        });
    }
    attach_pointer(&view, &gui.sender, id);
    if let Some(events) = event_queue() {
        attach_keys(&window, gui, id, events);
    }
    {
        // The user resized the window: ask the guest for that size (once per size).
        let s = gui.sender.clone();
        let v = view.clone();
        let last = RefCell::new(None);
        view.on_resize(move |width, height| {
            if v.guest_size() == Some((width, height)) || *last.borrow() == Some((width, height)) {
                return;
            }
            *last.borrow_mut() = Some((width, height));
            let _ = s.send(&HostMsg::ConfigureRequest {
                window: id,
                width,
                height,
            });
        });
    }
    if w.maximized {
        window.maximize();
    }
    view.set_cursor_from_name(Some(w.cursor.name()));
    // The window opens at its natural size: a guest window narrower than the strip's natural
    // width (the whole title and the buttons) gets a wider window, the view showing the
    // guest's pixels at its left and the frame at the window's edges. Placement uses that
    // width (with the guest's, the next window covered the strip's end).
    let (_, natural_width, _, _) = window.measure(gtk4::Orientation::Horizontal, -1);
    let width = px(w.width + 2 * FRAME).max(natural_width);
    let height = px(w.height + 2 * FRAME) + STRIP_HEIGHT;
    tracing::debug!(window = id, width, natural_width, "guest window size");
    // No window manager: place the window ourselves, beside the others.
    let placed =
        crate::x11::place_unmanaged(x11, &window, |screen| place(screen, taken, width, height))
            .map(|(x, y)| Area {
                x,
                y,
                width,
                height,
            });
    taken.extend(placed);
    if take_focus {
        // The keyboard is in this domain already (e.g. wl-copy's window while the user works
        // in that domain): it may move within it.
        window.present();
    } else {
        // A guest never takes the keyboard from another domain or dom0: the window maps
        // without focus and asks for attention instead; it gets the focus only by the
        // user's click or keys.
        crate::x11::show_without_focus(&window);
        crate::x11::set_urgent(&window, true);
    }
    window.connect_is_active_notify(|w| {
        if w.is_active() {
            crate::x11::set_urgent(w, false);
        }
    });
    UiWindow {
        kind: Kind::Toplevel {
            window,
            title,
            placed,
        },
        view,
        title: w.title.clone(),
        maximized: w.maximized,
        minimized: false,
        cursor: w.cursor.name(),
    }
}

fn make_popup(
    gui: &DomainGui,
    w: &Window,
    parent: WindowId,
    parent_view: &GuestView,
    parent_pos: (i32, i32),
) -> UiWindow {
    let popover = gtk4::Popover::new();
    popover.add_css_class("bh-popup");
    popover.set_has_arrow(false);
    popover.set_autohide(false);
    popover.set_position(gtk4::PositionType::Bottom);
    let view = GuestView::new(gui.label.color_rgb());
    view.set_focusable(false);
    view.update(w.pixels(), w.width, w.height, &[]);
    popover.set_child(Some(&view));
    popover.set_parent(parent_view);
    // The popup's top-left (outside its frame) at its place relative to the parent's pixels.
    let rel = (w.x - parent_pos.0, w.y - parent_pos.1);
    let f = px(FRAME);
    popover.set_pointing_to(Some(&gdk::Rectangle::new(
        f + rel.0 - f,
        f + rel.1 - f - 1,
        px(w.width + 2 * FRAME),
        1,
    )));
    attach_pointer(&view, &gui.sender, w.id);
    view.set_cursor_from_name(Some(w.cursor.name()));
    popover.popup();
    UiWindow {
        kind: Kind::Popup { popover, parent },
        view,
        title: w.title.clone(),
        maximized: false,
        minimized: false,
        cursor: w.cursor.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_carry_the_domain() {
        assert_eq!(window_title("work", "foot"), "[work] foot");
        assert_eq!(window_title("work", ""), "[work]");
    }

    #[test]
    fn the_frame_is_the_resize_edge() {
        use gdk::SurfaceEdge as E;
        let (w, h) = (200.0, 100.0);
        assert_eq!(frame_edge(w, h, 1.0, 50.0), Some(E::West));
        assert_eq!(frame_edge(w, h, 199.0, 50.0), Some(E::East));
        assert_eq!(frame_edge(w, h, 100.0, 98.0), Some(E::South));
        assert_eq!(frame_edge(w, h, 5.0, 99.0), Some(E::SouthWest));
        assert_eq!(frame_edge(w, h, 1.0, 90.0), Some(E::SouthWest));
        assert_eq!(frame_edge(w, h, 195.0, 99.0), Some(E::SouthEast));
        assert_eq!(frame_edge(w, h, 100.0, 50.0), None, "the guest's pixels");
        assert_eq!(frame_edge(w, h, 100.0, 1.0), None, "the top is the strip's");
    }

    #[test]
    fn buttons_map_to_linux_codes() {
        assert_eq!(button_code(1), Some(0x110));
        assert_eq!(button_code(3), Some(0x111));
        assert_eq!(button_code(2), Some(0x112));
        assert_eq!(button_code(42), None);
    }

    #[test]
    fn css_has_every_label() {
        let css = css();
        for l in Label::ALL {
            assert!(css.contains(&format!(".bh-{} ", l.as_str())), "{l:?}");
        }
        assert!(css.contains("background-color: #edd400; color: #000000"));
    }
}
