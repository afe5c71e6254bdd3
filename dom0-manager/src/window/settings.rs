//! The settings tab: label, net domain, memory, vCPUs, isolation and default disposable of
//! the selected domain. The fields are bound both ways to the model ([`Choice`] and
//! [`F64Binding`]), so the form is read and filled without a round of signals.

use std::collections::HashMap;

use relm4::binding::{Binding, F64Binding};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, RelmObjectExt, SimpleComponent};

use bulkhead_domain::{Isolation, Label, MEMORY_RANGE_MIB, VCPUS_RANGE};

use super::{Event, ManagerMsg};
use crate::widgets::{with_none, Choice, FormGrid, NONE_ENTRY};

/// The settings form.
pub struct SettingsPanel {
    domain: Option<String>,
    /// The domain's settings as domaind last said (empty until loaded).
    loaded: HashMap<String, String>,
    label: Choice,
    netvm: Choice,
    memory: F64Binding,
    vcpus: F64Binding,
    isolation: Choice,
    dispvm: Choice,
}

#[derive(Debug)]
pub enum SettingsMsg {
    /// The selected domain changed: the loaded settings are forgotten.
    Domain(Option<String>),
    /// These domains exist (the choices of net domain and default disposable).
    Names(Vec<String>),
    /// domaind's settings of the selected domain: fill the form.
    Loaded(HashMap<String, String>),
    /// Fill these (property, value) pairs in as if chosen.
    Set(Vec<(String, String)>),
    /// Save the values that differ from the loaded ones.
    Apply,
}

impl SettingsPanel {
    fn title(&self) -> String {
        match &self.domain {
            Some(n) => format!("Settings of {n}"),
            None => "Select a domain".into(),
        }
    }

    /// Put `value` into the field `key`; the problem when there is no such field or the
    /// value is no number.
    fn set_field(&self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "label" => self.label.select(value),
            "netvm" => self.netvm.select_or_none(value),
            "default_dispvm" => self.dispvm.select_or_none(value),
            "isolation" => self.isolation.select(value),
            "memory" | "vcpus" => {
                let n = value
                    .parse::<f64>()
                    .map_err(|_| format!("{key}: '{value}' is not a number"))?;
                if key == "memory" {
                    self.memory.set(n);
                } else {
                    self.vcpus.set(n);
                }
            }
            other => return Err(format!("the settings form has no field '{other}'")),
        }
        Ok(())
    }

    /// (property, value) pairs of the form that differ from the loaded ones.
    fn changed(&self) -> Vec<(String, String)> {
        let form = [
            ("label", self.label.text()),
            ("netvm", self.netvm.text_or_empty()),
            ("memory", (self.memory.get().round() as i64).to_string()),
            ("vcpus", (self.vcpus.get().round() as i64).to_string()),
            ("isolation", self.isolation.text()),
            ("default_dispvm", self.dispvm.text_or_empty()),
        ];
        form.into_iter()
            .filter(|(k, v)| self.loaded.get(*k).map(String::as_str).unwrap_or_default() != v)
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }
}

fn caption(text: &str) -> gtk::Label {
    let l = gtk::Label::new(Some(text));
    l.set_xalign(0.0);
    l
}

#[relm4::component(pub)]
impl SimpleComponent for SettingsPanel {
    type Init = ();
    type Input = SettingsMsg;
    type Output = ManagerMsg;

    view! {
        #[template]
        FormGrid {
            attach[0, 0, 2, 1] = &gtk::Label {
                set_xalign: 0.0,
                #[watch]
                set_text: &model.title(),
            },
            attach[0, 1, 1, 1] = &caption("Label"),
            attach[1, 1, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.label.items),
                add_binding: (&model.label.selected, "selected"),
            },
            attach[0, 2, 1, 1] = &caption("Net domain"),
            attach[1, 2, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.netvm.items),
                add_binding: (&model.netvm.selected, "selected"),
            },
            attach[0, 3, 1, 1] = &caption("Memory (MiB)"),
            attach[1, 3, 1, 1] = &gtk::SpinButton::with_range(
                *MEMORY_RANGE_MIB.start() as f64,
                *MEMORY_RANGE_MIB.end() as f64,
                64.0,
            ) {
                add_binding: (&model.memory, "value"),
            },
            attach[0, 4, 1, 1] = &caption("vCPUs"),
            attach[1, 4, 1, 1] = &gtk::SpinButton::with_range(
                *VCPUS_RANGE.start() as f64,
                *VCPUS_RANGE.end() as f64,
                1.0,
            ) {
                add_binding: (&model.vcpus, "value"),
            },
            attach[0, 5, 1, 1] = &caption("Isolation"),
            attach[1, 5, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.isolation.items),
                add_binding: (&model.isolation.selected, "selected"),
            },
            attach[0, 6, 1, 1] = &caption("Default disposable"),
            attach[1, 6, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.dispvm.items),
                add_binding: (&model.dispvm.selected, "selected"),
            },
            attach[1, 7, 1, 1] = &gtk::Button {
                set_label: "Apply",
                #[watch]
                set_sensitive: model.domain.is_some(),
                connect_clicked => SettingsMsg::Apply,
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let labels: Vec<&str> = Label::ALL.iter().map(|l| l.as_str()).collect();
        let isolations: Vec<&str> = Isolation::ALL.iter().map(|i| i.as_str()).collect();
        let model = SettingsPanel {
            domain: None,
            loaded: HashMap::new(),
            label: Choice::new(&labels),
            netvm: Choice::new(&[NONE_ENTRY]),
            // the spin buttons' lowest values, as they start
            memory: F64Binding::new(*MEMORY_RANGE_MIB.start() as f64),
            vcpus: F64Binding::new(*VCPUS_RANGE.start() as f64),
            isolation: Choice::new(&isolations),
            dispvm: Choice::new(&[NONE_ENTRY]),
        };
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: SettingsMsg, sender: ComponentSender<Self>) {
        match msg {
            SettingsMsg::Domain(name) => {
                self.domain = name;
                self.loaded.clear();
            }
            SettingsMsg::Names(names) => {
                let choices = with_none(names);
                self.netvm.set_items(&choices);
                self.dispvm.set_items(&choices);
            }
            SettingsMsg::Loaded(props) => {
                self.loaded = props;
                let get = |k: &str| self.loaded.get(k).map(String::as_str).unwrap_or_default();
                self.label.select(get("label"));
                self.netvm.select_or_none(get("netvm"));
                self.dispvm.select_or_none(get("default_dispvm"));
                self.isolation.select(get("isolation"));
                for k in ["memory", "vcpus"] {
                    // a value that is no number leaves the field as it is
                    let _ = self.set_field(k, get(k));
                }
            }
            SettingsMsg::Set(values) => {
                for (k, v) in values {
                    if let Err(e) = self.set_field(&k, &v) {
                        let _ = sender.output(Event::Error(e).into());
                    }
                }
            }
            SettingsMsg::Apply => {
                let Some(domain) = self.domain.clone() else {
                    return;
                };
                let changes = self.changed();
                if !changes.is_empty() {
                    let _ = sender.output(Event::Apply { domain, changes }.into());
                }
            }
        }
    }
}
