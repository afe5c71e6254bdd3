//! The ask dialog: domaind's policy said `ask`, so the user picks a target among the allowed
//! ones or denies. Closing the dialog or Escape denies; so does not answering (the backend
//! stops waiting and the dialog goes away).
//!
//! A question must not be answerable by accident, by keys meant for another window:
//! - the dialog maps without taking the keyboard focus (it asks for attention instead), so
//!   what the user is typing keeps going where it went;
//! - it has no default button (Return never allows), and it ignores every key and click for
//!   [`ARM_DELAY`] after it appears and after it gets the keyboard (its buttons are off
//!   meanwhile), as browsers do with their permission prompts;
//! - the preselected target is the one domaind sent (the one the caller asked for, when
//!   offered); with none, nothing is selected and Allow stays off until the user picks one;
//! - a strip in the asking domain's label colour says who asks and for what, another in the
//!   chosen target's colour says where the call would run.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bulkhead_domain::Label;
use gtk4::glib;
use gtk4::prelude::*;
use tokio::sync::oneshot;

use crate::backend::AskRequest;

/// How long the dialog ignores input after it appears (clicks) or gets the keyboard (keys).
pub const ARM_DELAY: Duration = Duration::from_millis(1000);

/// The entry shown when nothing is preselected.
const CHOOSE: &str = "Choose where it runs…";

/// The sentence the dialog asks.
pub fn question(source: &str, service: &str, arg: &str) -> String {
    let call = if arg.is_empty() {
        service.to_owned()
    } else {
        format!("{service}+{arg}")
    };
    format!("Domain {source} wants to call {call}.\nWhere should it run?")
}

/// The dropdown's entries and the selected index: the targets with the default selected, or
/// a "choose" entry first (selected) when there is no default among them. Never the first
/// target just because it is first.
pub fn entries(targets: &[String], default_target: &str) -> (Vec<String>, u32) {
    match targets.iter().position(|t| t == default_target) {
        Some(i) => (targets.to_vec(), u32::try_from(i).unwrap_or(0)),
        None => {
            let mut v = Vec::with_capacity(targets.len() + 1);
            v.push(CHOOSE.to_owned());
            v.extend(targets.iter().cloned());
            (v, 0)
        }
    }
}

/// The domain whose label colours a target: a new disposable in its template's colour.
fn label_domain(target: &str) -> &str {
    target.strip_prefix("@dispvm:").unwrap_or(target)
}

type Reply = Rc<RefCell<Option<oneshot::Sender<String>>>>;

fn answer(reply: &Reply, value: String) {
    if let Some(tx) = reply.borrow_mut().take() {
        let _ = tx.send(value);
    }
}

fn strip(text: &str, label: Label) -> gtk4::Label {
    let l = gtk4::Label::new(None);
    l.set_use_markup(false);
    l.set_text(text);
    l.set_xalign(0.0);
    l.add_css_class("bh-strip");
    l.add_css_class(&format!("bh-{}", label.as_str()));
    l
}

/// Shows the dialog for `req` (placed through `x11` when no window manager runs).
pub fn show(req: AskRequest, x11: Option<&crate::x11::X11>) {
    let AskRequest {
        source,
        service,
        arg,
        targets,
        default_target,
        labels,
        reply,
    } = req;
    let label_of = move |d: &str| labels.get(label_domain(d)).copied().unwrap_or(Label::Red);
    let reply: Reply = Rc::new(RefCell::new(Some(reply)));
    let w = gtk4::Window::new();
    w.set_title(Some(&format!("Bulkhead: allow {service} from {source}?")));
    let vbox = gtk4::Box::new(gtk4::Orientation::Vertical, 10);
    vbox.set_margin_bottom(14);
    let call = if arg.is_empty() {
        service.clone()
    } else {
        format!("{service}+{arg}")
    };
    vbox.append(&strip(
        &format!("{source} asks to call {call}"),
        label_of(&source),
    ));
    let body = gtk4::Box::new(gtk4::Orientation::Vertical, 10);
    body.set_margin_start(14);
    body.set_margin_end(14);
    let text = gtk4::Label::new(None);
    text.set_use_markup(false);
    text.set_text(&question(&source, &service, &arg));
    text.set_xalign(0.0);
    body.append(&text);
    let (items, selected) = entries(&targets, &default_target);
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let list = gtk4::DropDown::from_strings(&refs);
    list.set_selected(selected);
    body.append(&list);
    let runs_in = gtk4::Label::new(None);
    runs_in.set_use_markup(false);
    runs_in.set_xalign(0.0);
    body.append(&runs_in);
    let buttons = gtk4::Box::new(gtk4::Orientation::Horizontal, 8);
    buttons.set_halign(gtk4::Align::End);
    let deny = gtk4::Button::with_mnemonic("_Deny");
    let allow = gtk4::Button::with_mnemonic("_Allow");
    buttons.append(&deny);
    buttons.append(&allow);
    body.append(&buttons);
    vbox.append(&body);
    w.set_child(Some(&vbox));
    // No default widget: Return never answers.
    w.set_default_widget(None::<&gtk4::Widget>);

    // The chosen target (None for the "choose" entry), and whether clicks count yet.
    let chosen = {
        let items = items.clone();
        let targets = targets.clone();
        move |i: u32| {
            items
                .get(i as usize)
                .filter(|t| targets.contains(t))
                .cloned()
        }
    };
    let clicks_armed = Rc::new(Cell::new(false));
    // When the dialog got the keyboard, plus ARM_DELAY (None while it has not got it).
    let keys_from: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
    let update = {
        let (allow, deny, runs_in, clicks_armed, keys_from, chosen) = (
            allow.clone(),
            deny.clone(),
            runs_in.clone(),
            clicks_armed.clone(),
            keys_from.clone(),
            chosen.clone(),
        );
        let label_of = label_of.clone();
        move |i: u32| {
            for l in Label::ALL {
                runs_in.remove_css_class(&format!("bh-{}", l.as_str()));
            }
            match chosen(i) {
                Some(t) => {
                    runs_in.set_text(&format!("Runs in {t}"));
                    runs_in.add_css_class("bh-strip");
                    runs_in.add_css_class(&format!("bh-{}", label_of(&t).as_str()));
                }
                None => {
                    runs_in.set_text("Runs nowhere until you choose");
                    runs_in.remove_css_class("bh-strip");
                }
            }
            let armed = clicks_armed.get() && keys_from.get().is_none_or(|t| Instant::now() >= t);
            deny.set_sensitive(armed);
            allow.set_sensitive(armed && chosen(i).is_some());
        }
    };
    update(selected);
    {
        let update = update.clone();
        list.connect_selected_notify(move |l| update(l.selected()));
    }
    {
        let (reply, w2) = (reply.clone(), w.clone());
        deny.connect_clicked(move |_| {
            answer(&reply, String::new());
            w2.destroy();
        });
    }
    {
        let (reply, w2, list) = (reply.clone(), w.clone(), list.clone());
        allow.connect_clicked(move |_| {
            let Some(t) = chosen(list.selected()) else {
                return;
            };
            answer(&reply, t);
            w2.destroy();
        });
    }
    // Keys count only ARM_DELAY after the dialog got the keyboard; until then every key is
    // swallowed (also Escape: an accidental deny would be harmless, but it is input too), and
    // the buttons are off (so no mnemonic, Space or click right then answers either).
    {
        let (keys_from, update, list) = (keys_from.clone(), update.clone(), list.clone());
        w.connect_is_active_notify(move |w| {
            keys_from.set(w.is_active().then(|| Instant::now() + ARM_DELAY));
            update(list.selected());
            if w.is_active() {
                crate::x11::set_urgent(w, false);
                let (update, list) = (update.clone(), list.clone());
                glib::timeout_add_local_once(ARM_DELAY + Duration::from_millis(20), move || {
                    update(list.selected())
                });
            }
        });
    }
    {
        let (reply, w2, keys_from) = (reply.clone(), w.clone(), keys_from.clone());
        let keys = gtk4::EventControllerKey::new();
        keys.set_propagation_phase(gtk4::PropagationPhase::Capture);
        keys.connect_key_pressed(move |_, key, _, _| {
            if keys_from.get().is_none_or(|t| Instant::now() < t) {
                tracing::debug!(key = ?key.name(), "ask dialog: key ignored (not armed yet)");
                return glib::Propagation::Stop;
            }
            if key == gtk4::gdk::Key::Escape {
                answer(&reply, String::new());
                w2.destroy();
                return glib::Propagation::Stop;
            }
            glib::Propagation::Proceed
        });
        w.add_controller(keys);
    }
    {
        let reply = reply.clone();
        w.connect_close_request(move |_| {
            answer(&reply, String::new());
            glib::Propagation::Proceed
        });
    }
    {
        // Clicks count ARM_DELAY after the dialog appeared.
        let (clicks_armed, list, update) = (clicks_armed.clone(), list.clone(), update);
        w.connect_map(move |_| {
            let (clicks_armed, list, update) = (clicks_armed.clone(), list.clone(), update.clone());
            glib::timeout_add_local_once(ARM_DELAY, move || {
                clicks_armed.set(true);
                update(list.selected());
            });
        });
    }
    {
        // The backend gave up waiting (timeout): take the dialog away.
        let (reply, w2) = (reply.clone(), w.clone());
        glib::timeout_add_local(Duration::from_millis(500), move || {
            let gone = reply.borrow().as_ref().is_none_or(|tx| tx.is_closed());
            if gone {
                w2.destroy();
                return glib::ControlFlow::Break;
            }
            glib::ControlFlow::Continue
        });
    }
    // Without a window manager: in the middle of the screen.
    crate::x11::place_unmanaged(x11, &w, |screen| (screen.0 / 2 - 170, screen.1 / 3));
    // When the user gives it the keyboard, it starts on the list, not on a button.
    GtkWindowExt::set_focus(&w, Some(&list));
    crate::x11::show_without_focus(&w);
    crate::x11::set_urgent(&w, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn default_preselected_else_nothing() {
        let t = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(entries(&t, "b"), (t.clone(), 1));
        for none in ["", "zz"] {
            let (items, sel) = entries(&t, none);
            assert_eq!(sel, 0);
            assert_eq!(items[0], CHOOSE);
            assert_eq!(&items[1..], &t[..]);
        }
    }

    #[test]
    fn question_names_the_call() {
        assert!(question("work", "bulkhead.Filecopy", "")
            .contains("work wants to call bulkhead.Filecopy."));
        assert!(question("work", "x.Y", "z").contains("x.Y+z"));
    }

    #[test]
    fn disposables_in_their_templates_colour() {
        assert_eq!(label_domain("@dispvm:dvm"), "dvm");
        assert_eq!(label_domain("work"), "work");
    }

    #[test]
    fn label_map_is_by_domain() {
        let m: HashMap<String, Label> = [("work".to_owned(), Label::Blue)].into();
        assert_eq!(m.get(label_domain("work")), Some(&Label::Blue));
    }
}
