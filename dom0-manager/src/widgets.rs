//! Small widget builders both windows use.

use relm4::gtk;
use relm4::gtk::prelude::*;

/// A vertical box with a margin of `m` on every side.
pub fn margin_box(orientation: gtk::Orientation, spacing: i32, m: i32) -> gtk::Box {
    let b = gtk::Box::new(orientation, spacing);
    b.set_margin_top(m);
    b.set_margin_bottom(m);
    b.set_margin_start(m);
    b.set_margin_end(m);
    b
}

/// A grid for a form (captions left, fields right).
pub fn form_grid() -> gtk::Grid {
    let g = gtk::Grid::new();
    g.set_row_spacing(6);
    g.set_column_spacing(8);
    g.set_margin_top(8);
    g.set_margin_start(8);
    g
}

/// `child` in a scrolled window.
pub fn scrolled(child: &impl IsA<gtk::Widget>) -> gtk::ScrolledWindow {
    let s = gtk::ScrolledWindow::new();
    s.set_child(Some(child));
    s
}

/// The error bar at the bottom of a window: the message stays until dismissed.
pub struct ErrorBar {
    pub bar: gtk::Box,
    label: gtk::Label,
}

impl ErrorBar {
    /// A hidden error bar; `on_dismiss` runs when its button is clicked.
    pub fn new(on_dismiss: impl Fn() + 'static) -> Self {
        // vertical: a wrapping label beside a button confuses GTK's height-for-width
        let bar = gtk::Box::new(gtk::Orientation::Vertical, 4);
        bar.add_css_class("error-bar");
        let label = gtk::Label::new(None);
        label.set_wrap(true);
        label.set_xalign(0.0);
        label.set_selectable(true);
        let dismiss = gtk::Button::with_label("Dismiss");
        dismiss.set_halign(gtk::Align::End);
        dismiss.connect_clicked(move |_| on_dismiss());
        bar.append(&label);
        bar.append(&dismiss);
        bar.set_visible(false);
        Self { bar, label }
    }

    pub fn show(&self, msg: &str) {
        self.label.set_text(msg);
        self.bar.set_visible(true);
    }

    pub fn hide(&self) {
        self.bar.set_visible(false);
    }
}
