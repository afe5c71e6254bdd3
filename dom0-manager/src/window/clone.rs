//! The clone tab: the selected domain cloned under a new name, validated as you type
//! ([`crate::forms::clone_problem`]).

use relm4::binding::{Binding, StringBinding};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, RelmObjectExt, SimpleComponent};

use super::{Event, ManagerMsg};
use crate::forms::clone_problem;
use crate::widgets::FormGrid;

/// The clone form.
pub struct ClonePanel {
    /// The selected domain.
    source: Option<String>,
    /// The new name (bound to the entry).
    name: StringBinding,
    /// Every domain's name.
    existing: Vec<String>,
}

#[derive(Debug)]
pub enum CloneMsg {
    /// The selected domain.
    Source(Option<String>),
    /// Every domain's name.
    Existing(Vec<String>),
    /// Put this into "new name".
    SetName(String),
    /// The new name was edited.
    Changed,
    /// Clone the selected domain under the new name.
    Clone,
}

impl ClonePanel {
    fn title(&self) -> String {
        match &self.source {
            Some(n) => format!("Clone {n} as"),
            None => "Select the domain to clone".into(),
        }
    }

    fn problem(&self) -> Option<String> {
        clone_problem(self.source.as_deref(), &self.name.get(), &self.existing)
    }

    /// The problem to show: none while the name is empty.
    fn shown_problem(&self) -> Option<String> {
        self.problem().filter(|_| !self.name.get().is_empty())
    }
}

#[relm4::component(pub)]
impl SimpleComponent for ClonePanel {
    type Init = ();
    type Input = CloneMsg;
    type Output = ManagerMsg;

    view! {
        #[template]
        FormGrid {
            attach[0, 0, 2, 1] = &gtk::Label {
                set_xalign: 0.0,
                #[watch]
                set_text: &model.title(),
            },
            attach[0, 1, 1, 1] = &super::caption("New name"),
            attach[1, 1, 1, 1] = &gtk::Entry {
                add_binding: (&model.name, "text"),
                connect_changed => CloneMsg::Changed,
            },
            attach[0, 2, 2, 1] = &gtk::Label {
                add_css_class: "validation-error",
                set_xalign: 0.0,
                set_wrap: true,
                #[watch]
                set_text: &model.shown_problem().unwrap_or_default(),
                #[watch]
                set_visible: model.shown_problem().is_some(),
            },
            attach[1, 3, 1, 1] = &gtk::Button {
                set_label: "Clone",
                #[watch]
                set_sensitive: model.problem().is_none(),
                connect_clicked => CloneMsg::Clone,
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let model = ClonePanel {
            source: None,
            name: StringBinding::default(),
            existing: Vec::new(),
        };
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: CloneMsg, sender: ComponentSender<Self>) {
        match msg {
            CloneMsg::Source(s) => self.source = s,
            CloneMsg::Existing(names) => self.existing = names,
            CloneMsg::SetName(n) => self.name.set(n),
            // the view follows the model after every message
            CloneMsg::Changed => {}
            CloneMsg::Clone => {
                let dest = self.name.get();
                if let Some(p) = self.problem() {
                    let _ = sender.output(Event::Error(p).into());
                    return;
                }
                let Some(source) = self.source.clone() else {
                    return;
                };
                self.name.set(String::new());
                let _ = sender.output(Event::Clone { source, dest }.into());
            }
        }
    }
}
