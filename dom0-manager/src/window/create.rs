//! The create tab: name, class, template and label of a new domain, validated as you type
//! ([`crate::forms::create_problem`]). The fields are bound both ways to the model; a change
//! of any of them validates.

use relm4::binding::{Binding, StringBinding};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, RelmObjectExt, RelmWidgetExt, SimpleComponent};

use bulkhead_api::DomainInfo;
use bulkhead_domain::{DomainClass, Label};

use super::{Event, ManagerMsg};
use crate::forms::{create_problem, CreateForm};
use crate::widgets::{with_none, Choice, FormGrid, NONE_ENTRY};

/// The create form.
pub struct CreatePanel {
    name: StringBinding,
    class: Choice,
    template: Choice,
    label: Choice,
    /// Every domain's name.
    existing: Vec<String>,
    /// What is wrong with the form (`None`: it can be created).
    problem: Option<String>,
}

#[derive(Debug)]
pub enum CreateMsg {
    /// The domains now listed (the templates offered follow them).
    Domains(Vec<DomainInfo>),
    /// Fill the form in (validated as if typed).
    Set(CreateForm),
    /// A field changed.
    Changed,
    /// Create the domain the form describes.
    Create,
}

impl CreatePanel {
    fn form(&self) -> CreateForm {
        CreateForm {
            name: self.name.get(),
            class: self.class.text(),
            template: self.template.text_or_empty(),
            label: self.label.text(),
        }
    }

    fn validate(&mut self, sender: &ComponentSender<Self>) {
        self.problem = create_problem(&self.form(), &self.existing);
        let _ = sender.output(Event::CreateValidation(self.problem.clone()).into());
    }

    /// The problem to show: an empty name is no error yet, just not ready.
    fn shown_problem(&self) -> Option<&str> {
        self.problem
            .as_deref()
            .filter(|_| !self.name.get().is_empty())
    }
}

#[relm4::component(pub)]
impl SimpleComponent for CreatePanel {
    type Init = ();
    type Input = CreateMsg;
    type Output = ManagerMsg;

    view! {
        #[template]
        FormGrid {
            attach[0, 0, 1, 1] = &super::caption("Name"),
            attach[1, 0, 1, 1] = &gtk::Entry {
                set_placeholder_text: Some("name, e.g. mail"),
                add_binding: (&model.name, "text"),
                #[watch]
                set_class_active: ("error", model.shown_problem().is_some()),
                connect_changed => CreateMsg::Changed,
            },
            attach[0, 1, 1, 1] = &super::caption("Class"),
            attach[1, 1, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.class.items),
                add_binding: (&model.class.selected, "selected"),
                connect_selected_notify => CreateMsg::Changed,
            },
            attach[0, 2, 1, 1] = &super::caption("Template"),
            attach[1, 2, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.template.items),
                add_binding: (&model.template.selected, "selected"),
                connect_selected_notify => CreateMsg::Changed,
            },
            attach[0, 3, 1, 1] = &super::caption("Label"),
            attach[1, 3, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.label.items),
                add_binding: (&model.label.selected, "selected"),
                connect_selected_notify => CreateMsg::Changed,
            },
            attach[0, 4, 2, 1] = &gtk::Label {
                add_css_class: "validation-error",
                set_xalign: 0.0,
                set_wrap: true,
                #[watch]
                set_text: model.shown_problem().unwrap_or_default(),
                #[watch]
                set_visible: model.shown_problem().is_some(),
            },
            attach[1, 5, 1, 1] = &gtk::Button {
                set_label: "Create",
                #[watch]
                set_sensitive: model.problem.is_none(),
                connect_clicked => CreateMsg::Create,
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let classes: Vec<&str> = DomainClass::ALL.iter().map(|c| c.as_str()).collect();
        let labels: Vec<&str> = Label::ALL.iter().map(|l| l.as_str()).collect();
        let model = CreatePanel {
            name: StringBinding::default(),
            class: Choice::new(&classes),
            template: Choice::new(&[NONE_ENTRY]),
            label: Choice::new(&labels),
            existing: Vec::new(),
            problem: Some(String::new()),
        };
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: CreateMsg, sender: ComponentSender<Self>) {
        match msg {
            CreateMsg::Domains(domains) => {
                self.existing = domains.iter().map(|d| d.name.clone()).collect();
                let first_fill = self.template.len() <= 1;
                let templates = with_none(
                    domains
                        .into_iter()
                        .filter(|d| d.class == "template")
                        .map(|d| d.name),
                );
                self.template.set_items(&templates);
                if first_fill {
                    // a new form: the first template is the likely choice
                    self.template
                        .selected
                        .set(if templates.len() > 1 { 1 } else { 0 });
                }
                self.validate(&sender);
            }
            CreateMsg::Set(f) => {
                self.name.set(f.name);
                self.class.select(&f.class);
                self.template.select_or_none(&f.template);
                self.label.select(&f.label);
                self.validate(&sender);
            }
            CreateMsg::Changed => self.validate(&sender),
            CreateMsg::Create => {
                let form = self.form();
                if let Some(p) = create_problem(&form, &self.existing) {
                    let _ = sender.output(Event::Error(p).into());
                    return;
                }
                self.name.set(String::new());
                let _ = sender.output(Event::Create(form).into());
            }
        }
    }
}
