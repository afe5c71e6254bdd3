//! The applications tab: the selected domain's applications (its template's desktop files),
//! each row a factory element with "In menu" (whether dom0's menu has an entry for it: the
//! domain's `features.menu-items`, as `bulkhead appmenus --set`), "Start" and "In
//! disposable".

use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, SimpleComponent};

use super::ManagerMsg;

/// What a row's buttons do.
#[derive(Debug, Clone, Copy)]
pub enum RowMsg {
    /// "Start" (`false`) or "In disposable" (`true`).
    Launch(bool),
    /// "In menu" toggled by the user.
    Menu(bool),
    /// The menu's choice as domaind says (not a user's toggle).
    Chosen(bool),
}

/// One application of the domain.
#[derive(Debug)]
pub struct AppRow {
    domain: String,
    desktop_id: String,
    name: String,
    in_menu: bool,
}

#[relm4::factory(pub)]
impl FactoryComponent for AppRow {
    /// (domain, desktop id, name, in the menu)
    type Init = (String, String, String, bool);
    type Input = RowMsg;
    type Output = ManagerMsg;
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Horizontal,
            set_spacing: 6,

            gtk::Label {
                set_label: &self.name,
                set_hexpand: true,
                set_xalign: 0.0,
            },
            gtk::CheckButton {
                set_label: Some("In menu"),
                #[watch]
                #[block_signal(toggled)]
                set_active: self.in_menu,
                connect_toggled[sender] => move |b| {
                    sender.input(RowMsg::Menu(b.is_active()));
                } @toggled,
            },
            gtk::Button {
                set_label: "Start",
                connect_clicked => RowMsg::Launch(false),
            },
            gtk::Button {
                set_label: "In disposable",
                connect_clicked => RowMsg::Launch(true),
            },
        }
    }

    fn init_model(
        (domain, desktop_id, name, in_menu): Self::Init,
        _index: &DynamicIndex,
        _sender: FactorySender<Self>,
    ) -> Self {
        Self {
            domain,
            desktop_id,
            name,
            in_menu,
        }
    }

    fn update(&mut self, msg: RowMsg, sender: FactorySender<Self>) {
        let out = match msg {
            RowMsg::Launch(disposable) => ManagerMsg::Launch {
                domain: self.domain.clone(),
                desktop_id: self.desktop_id.clone(),
                disposable,
            },
            RowMsg::Menu(on) => {
                self.in_menu = on;
                ManagerMsg::SetMenuItem {
                    domain: self.domain.clone(),
                    desktop_id: self.desktop_id.clone(),
                    in_menu: on,
                }
            }
            RowMsg::Chosen(on) => {
                self.in_menu = on;
                return;
            }
        };
        let _ = sender.output(out);
    }
}

/// The applications tab.
pub struct AppsPanel {
    title: String,
    /// The domain the rows are of, and the desktop ids in its menu.
    domain: Option<String>,
    chosen: Vec<String>,
    apps: FactoryVecDeque<AppRow>,
}

#[derive(Debug)]
pub enum AppsMsg {
    /// The applications of a domain: (desktop id, name, icon).
    Show(String, Vec<(String, String, String)>),
    /// The domain's applications cannot be listed: why.
    Failed(String, String),
    /// The desktop ids in the domain's menu (`features.menu-items`).
    Chosen(String, Vec<String>),
}

#[relm4::component(pub)]
impl SimpleComponent for AppsPanel {
    type Init = ();
    type Input = AppsMsg;
    type Output = ManagerMsg;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Vertical,
            set_spacing: 6,
            set_margin_top: 8,
            set_margin_start: 8,

            gtk::Label {
                set_xalign: 0.0,
                // a long error wraps instead of widening the window
                set_wrap: true,
                set_wrap_mode: gtk::pango::WrapMode::WordChar,
                set_max_width_chars: 50,
                #[watch]
                set_text: &model.title,
            },
            gtk::ScrolledWindow {
                set_vexpand: true,
                #[local_ref]
                list -> gtk::ListBox {
                    set_selection_mode: gtk::SelectionMode::None,
                },
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let apps = FactoryVecDeque::builder()
            .launch(gtk::ListBox::default())
            .forward(sender.output_sender(), |m| m);
        let model = AppsPanel {
            title: "Select a domain".into(),
            domain: None,
            chosen: Vec::new(),
            apps,
        };
        let list = model.apps.widget();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: AppsMsg, _sender: ComponentSender<Self>) {
        let (domain, apps, failure) = match msg {
            AppsMsg::Show(domain, apps) => (domain, apps, None),
            AppsMsg::Failed(domain, e) => (domain, Vec::new(), Some(e)),
            AppsMsg::Chosen(domain, ids) => {
                if self.domain.as_deref() != Some(domain.as_str()) {
                    self.domain = Some(domain);
                    self.apps.guard().clear();
                }
                for (i, row) in self.apps.iter().enumerate() {
                    let on = ids.contains(&row.desktop_id);
                    if on != row.in_menu {
                        self.apps.send(i, RowMsg::Chosen(on));
                    }
                }
                self.chosen = ids;
                return;
            }
        };
        if self.domain.as_deref() != Some(domain.as_str()) {
            self.chosen.clear();
        }
        self.domain = Some(domain.clone());
        self.title = match failure {
            Some(e) => format!("No applications for {domain}: {e}"),
            None if apps.is_empty() => {
                format!("{domain} has no applications in its template's menu")
            }
            None => format!("Applications of {domain}"),
        };
        let mut g = self.apps.guard();
        g.clear();
        for (id, name, _icon) in apps {
            let on = self.chosen.contains(&id);
            g.push_back((domain.clone(), id, name, on));
        }
    }
}
