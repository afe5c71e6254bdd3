//! Pieces both windows use: [`Choice`], the model of a drop-down, [`FormGrid`], the grid
//! of a form, and [`ErrorBar`], the error bar at the bottom of a window.

use relm4::binding::{Binding, U32Binding};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, SimpleComponent, WidgetTemplate};

/// The entry that stands for "no domain" in a drop-down.
pub const NONE_ENTRY: &str = "(none)";

/// What a drop-down offers and which of it is selected, bound both ways to a
/// `gtk::DropDown` in a `view!`:
/// `set_model: Some(&model.x.items), add_binding: (&model.x.selected, "selected")`.
#[derive(Debug, Clone)]
pub struct Choice {
    pub items: gtk::StringList,
    pub selected: U32Binding,
}

impl Choice {
    pub fn new(items: &[&str]) -> Self {
        Self {
            items: gtk::StringList::new(items),
            selected: U32Binding::new(0u32),
        }
    }

    /// The selected text ("" when nothing is).
    pub fn text(&self) -> String {
        self.items
            .string(self.selected.get())
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// The selected text, "" for [`NONE_ENTRY`].
    pub fn text_or_empty(&self) -> String {
        Some(self.text())
            .filter(|t| t != NONE_ENTRY)
            .unwrap_or_default()
    }

    /// Select `text` if it is offered (otherwise the selection stays).
    pub fn select(&self, text: &str) {
        if let Some(i) = self.position(text) {
            self.selected.set(i);
        }
    }

    /// Select `text`, [`NONE_ENTRY`] for "".
    pub fn select_or_none(&self, text: &str) {
        self.select(if text.is_empty() { NONE_ENTRY } else { text });
    }

    /// Show `text` ([`NONE_ENTRY`] for ""), offering it first when it is not among the
    /// items: a form shows what is saved, never what an earlier selection left.
    pub fn show(&self, text: &str) {
        let text = if text.is_empty() { NONE_ENTRY } else { text };
        if self.position(text).is_none() {
            self.items.append(text);
        }
        self.select(text);
    }

    pub fn position(&self, text: &str) -> Option<u32> {
        (0..self.items.n_items()).find(|&i| self.items.string(i).is_some_and(|s| s == text))
    }

    pub fn len(&self) -> u32 {
        self.items.n_items()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offer `items` instead; the selected text stays selected (offered as well when it is
    /// not among `items`).
    pub fn set_items(&self, items: &[String]) {
        let keep = self.text();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        self.items.splice(0, self.items.n_items(), &refs);
        if keep.is_empty() {
            self.selected.set(0);
        } else {
            self.show(&keep);
        }
    }
}

/// Asks a question that cannot be undone: `title`, `text`, Cancel (the default) and a
/// destructive `action` button, modal over `parent` when given. `on_yes` runs when the action
/// is chosen. The dialog closes itself on any answer; the caller keeps it to close it when
/// the answer comes another way.
pub fn confirm_destructive(
    parent: Option<&gtk::Window>,
    title: &str,
    text: &str,
    action: &str,
    on_yes: impl Fn() + 'static,
) -> gtk::MessageDialog {
    let dialog = gtk::MessageDialog::builder()
        .modal(true)
        .message_type(gtk::MessageType::Warning)
        .text(title)
        .secondary_text(text)
        .build();
    dialog.set_transient_for(parent);
    dialog.add_button("Cancel", gtk::ResponseType::Cancel);
    dialog
        .add_button(action, gtk::ResponseType::Accept)
        .add_css_class("destructive-action");
    dialog.set_default_response(gtk::ResponseType::Cancel);
    dialog.connect_response(move |d, r| {
        if r == gtk::ResponseType::Accept {
            on_yes();
        }
        d.close();
    });
    dialog.present();
    dialog
}

/// [`NONE_ENTRY`] followed by `names`.
pub fn with_none(names: impl IntoIterator<Item = String>) -> Vec<String> {
    std::iter::once(NONE_ENTRY.to_owned())
        .chain(names)
        .collect()
}

/// The grid of a form: captions left, fields right.
#[relm4::widget_template(pub)]
impl WidgetTemplate for FormGrid {
    view! {
        gtk::Grid {
            set_row_spacing: 6,
            set_column_spacing: 8,
            set_margin_top: 8,
            set_margin_start: 8,
        }
    }
}

/// The error bar at the bottom of a window: a message stays until dismissed.
#[derive(Debug, Default)]
pub struct ErrorBar {
    message: Option<String>,
}

/// What [`ErrorBar`] accepts.
#[derive(Debug)]
pub enum ErrorBarMsg {
    Show(String),
    Hide,
}

/// The bar's Dismiss button was clicked.
#[derive(Debug)]
pub struct Dismissed;

#[relm4::component(pub)]
impl SimpleComponent for ErrorBar {
    type Init = ();
    type Input = ErrorBarMsg;
    type Output = Dismissed;

    view! {
        // vertical: a wrapping label beside a button confuses GTK's height-for-width
        gtk::Box {
            set_orientation: gtk::Orientation::Vertical,
            set_spacing: 4,
            add_css_class: "error-bar",
            #[watch]
            set_visible: model.message.is_some(),

            gtk::Label {
                set_wrap: true,
                set_xalign: 0.0,
                set_selectable: true,
                #[watch]
                set_text: model.message.as_deref().unwrap_or_default(),
            },
            gtk::Button {
                set_label: "Dismiss",
                set_halign: gtk::Align::End,
                connect_clicked[sender] => move |_| {
                    let _ = sender.output(Dismissed);
                },
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let model = ErrorBar::default();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: ErrorBarMsg, _sender: ComponentSender<Self>) {
        self.message = match msg {
            ErrorBarMsg::Show(m) => Some(m),
            ErrorBarMsg::Hide => None,
        };
    }
}
