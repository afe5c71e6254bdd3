//! The applications tab: the selected domain's application menu (its template's desktop
//! files), each row a factory element with "Start" and "In disposable".

use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, SimpleComponent};

use super::ManagerMsg;

/// A click on "Start" (`disposable: false`) or "In disposable".
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    disposable: bool,
}

/// One application of the domain.
#[derive(Debug)]
pub struct AppRow {
    domain: String,
    desktop_id: String,
    name: String,
}

#[relm4::factory(pub)]
impl FactoryComponent for AppRow {
    /// (domain, desktop id, name)
    type Init = (String, String, String);
    type Input = Launch;
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
            gtk::Button {
                set_label: "Start",
                connect_clicked => Launch { disposable: false },
            },
            gtk::Button {
                set_label: "In disposable",
                connect_clicked => Launch { disposable: true },
            },
        }
    }

    fn init_model(
        (domain, desktop_id, name): Self::Init,
        _index: &DynamicIndex,
        _sender: FactorySender<Self>,
    ) -> Self {
        Self {
            domain,
            desktop_id,
            name,
        }
    }

    fn update(&mut self, Launch { disposable }: Launch, sender: FactorySender<Self>) {
        let _ = sender.output(ManagerMsg::Launch {
            domain: self.domain.clone(),
            desktop_id: self.desktop_id.clone(),
            disposable,
        });
    }
}

/// The applications tab.
pub struct AppsPanel {
    title: String,
    apps: FactoryVecDeque<AppRow>,
}

#[derive(Debug)]
pub enum AppsMsg {
    /// The applications of a domain: (desktop id, name, icon).
    Show(String, Vec<(String, String, String)>),
    /// The domain's applications cannot be listed: why.
    Failed(String, String),
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
        };
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
            g.push_back((domain.clone(), id, name));
        }
    }
}
