//! The ask dialog: domaind's policy said `ask`, so the user picks a target among the allowed
//! ones (the default preselected) or denies. Closing the dialog or Escape denies; so does not
//! answering (the backend stops waiting and the dialog goes away).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use gtk4::glib;
use gtk4::prelude::*;
use tokio::sync::oneshot;

use crate::backend::AskRequest;

/// The sentence the dialog asks.
pub fn question(source: &str, service: &str, arg: &str) -> String {
    let call = if arg.is_empty() {
        service.to_owned()
    } else {
        format!("{service}+{arg}")
    };
    format!("Domain {source} wants to call {call}.\nWhere should it run?")
}

/// Index of the preselected target (the default, else the first).
pub fn preselected(targets: &[String], default_target: &str) -> u32 {
    targets
        .iter()
        .position(|t| t == default_target)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

type Reply = Rc<RefCell<Option<oneshot::Sender<String>>>>;

fn answer(reply: &Reply, value: String) {
    if let Some(tx) = reply.borrow_mut().take() {
        let _ = tx.send(value);
    }
}

/// Shows the dialog for `req` (placed through `x11` when no window manager runs).
pub fn show(req: AskRequest, x11: Option<&crate::x11::X11>) {
    let AskRequest {
        source,
        service,
        arg,
        targets,
        default_target,
        reply,
    } = req;
    let reply: Reply = Rc::new(RefCell::new(Some(reply)));
    let w = gtk4::Window::new();
    w.set_title(Some(&format!("Bulkhead: allow {service} from {source}?")));
    let vbox = gtk4::Box::new(gtk4::Orientation::Vertical, 10);
    vbox.set_margin_top(14);
    vbox.set_margin_bottom(14);
    vbox.set_margin_start(14);
    vbox.set_margin_end(14);
    let label = gtk4::Label::new(None);
    label.set_use_markup(false);
    label.set_text(&question(&source, &service, &arg));
    label.set_xalign(0.0);
    vbox.append(&label);
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let list = gtk4::DropDown::from_strings(&refs);
    list.set_selected(preselected(&targets, &default_target));
    vbox.append(&list);
    let buttons = gtk4::Box::new(gtk4::Orientation::Horizontal, 8);
    buttons.set_halign(gtk4::Align::End);
    let deny = gtk4::Button::with_label("Deny");
    let allow = gtk4::Button::with_label("Allow");
    allow.add_css_class("suggested-action");
    buttons.append(&deny);
    buttons.append(&allow);
    vbox.append(&buttons);
    w.set_child(Some(&vbox));
    w.set_default_widget(Some(&allow));
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
            let chosen = targets
                .get(list.selected() as usize)
                .cloned()
                .unwrap_or_default();
            answer(&reply, chosen);
            w2.destroy();
        });
    }
    {
        // Escape denies, like closing.
        let (reply, w2) = (reply.clone(), w.clone());
        let keys = gtk4::EventControllerKey::new();
        keys.connect_key_pressed(move |_, key, _, _| {
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
    w.present();
    allow.grab_focus();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_preselected_else_first() {
        let t = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(preselected(&t, "b"), 1);
        assert_eq!(preselected(&t, ""), 0);
        assert_eq!(preselected(&t, "zz"), 0);
    }

    #[test]
    fn question_names_the_call() {
        assert!(question("work", "bulkhead.Filecopy", "")
            .contains("work wants to call bulkhead.Filecopy."));
        assert!(question("work", "x.Y", "z").contains("x.Y+z"));
    }
}
