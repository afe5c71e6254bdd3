//! The settings tab: every property a user sets in Qubes' settings window, for the selected
//! domain: label, template, net domain, memory, vCPUs, private volume size, isolation,
//! default disposable, autostart and features (`key=value` lines; the menu's
//! `features.menu-items` is the applications tab's). Fields are bound both ways to the model
//! ([`Choice`], [`F64Binding`], [`BoolBinding`], a text buffer), so the form is read and
//! filled without a round of signals.
//!
//! What the form shows is always the selected domain's own: on selection the fields the list
//! already knows (label, template, net domain, memory, vCPUs, isolation) are filled at once,
//! and the form stays insensitive, Apply with it, until domaind's answer for that domain has
//! filled the rest. A form filled for another domain is never saved to this one.

use std::collections::{BTreeMap, HashMap};

use relm4::binding::{Binding, BoolBinding, F64Binding};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, RelmObjectExt, SimpleComponent};

use bulkhead_api::DomainInfo;
use bulkhead_domain::{
    Isolation, Label, FEATURE_PREFIX, MEMORY_RANGE_MIB, PRIVATE_SIZE_RANGE_MIB, VCPUS_RANGE,
};

use super::{Event, ManagerMsg};
use crate::widgets::{with_none, Choice, FormGrid, NONE_ENTRY};

/// The feature the applications tab edits (not shown among the features).
pub const MENU_FEATURE: &str = "menu-items";

/// The property holding the menu choice: `features.menu-items`.
pub fn menu_key() -> String {
    format!("{FEATURE_PREFIX}{MENU_FEATURE}")
}

/// The form's plain fields, in the order [`SettingsPanel::form_values`] lists them.
pub const FIELDS: [&str; 10] = [
    "label",
    "template",
    "netvm",
    "memory",
    "vcpus",
    "private_size",
    "isolation",
    "default_dispvm",
    "autostart",
    "features",
];

/// The settings form.
pub struct SettingsPanel {
    domain: Option<String>,
    /// The selected domain's class (its template field is offered for app and disposable
    /// domains only).
    class: String,
    /// The domain's settings as domaind last said; `None` until they came for this domain.
    loaded: Option<HashMap<String, String>>,
    /// What the form showed right after it was last filled from `loaded` (a field that
    /// differs now is the user's edit).
    filled: Vec<(String, String)>,
    label: Choice,
    template: Choice,
    netvm: Choice,
    memory: F64Binding,
    vcpus: F64Binding,
    private_size: F64Binding,
    isolation: Choice,
    dispvm: Choice,
    autostart: BoolBinding,
    features: gtk::TextBuffer,
}

#[derive(Debug)]
pub enum SettingsMsg {
    /// The selected domain changed: what the list knows of it is shown at once, the rest
    /// waits for [`SettingsMsg::Loaded`].
    Domain(Option<DomainInfo>),
    /// These domains exist (the choices of template, net domain and default disposable).
    Domains(Vec<DomainInfo>),
    /// domaind's settings of the selected domain: fill the form.
    Loaded(String, HashMap<String, String>),
    /// Fill these (property, value) pairs in as if chosen.
    Set(Vec<(String, String)>),
    /// Save the values that differ from the loaded ones.
    Apply,
}

/// `features.KEY` properties as `key=value` lines, sorted, without the menu's feature.
pub fn features_text(props: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&str, &str> = props
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(FEATURE_PREFIX)?, v.as_str())))
        .filter(|(k, _)| *k != MENU_FEATURE)
        .collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect()
}

/// `key=value` lines (blank lines skipped) as features; the problem of the first bad line.
pub fn parse_features(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "features, line {}: '{line}' is not key=value",
                n + 1
            ));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("features, line {}: the key is empty", n + 1));
        }
        if k == MENU_FEATURE {
            return Err(format!(
                "features, line {}: {MENU_FEATURE} is chosen in the Applications tab",
                n + 1
            ));
        }
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("features, line {}: '{k}' is given twice", n + 1));
        }
    }
    Ok(out)
}

/// The `features.KEY` changes from `loaded` to `wanted` ("" removes a feature).
pub fn feature_changes(
    loaded: &HashMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = loaded
        .keys()
        .filter_map(|k| k.strip_prefix(FEATURE_PREFIX))
        .filter(|k| *k != MENU_FEATURE && !wanted.contains_key(*k))
        .map(|k| (format!("{FEATURE_PREFIX}{k}"), String::new()))
        .collect();
    out.sort();
    for (k, v) in wanted {
        let key = format!("{FEATURE_PREFIX}{k}");
        if loaded.get(&key) != Some(v) {
            out.push((key, v.clone()));
        }
    }
    out
}

impl SettingsPanel {
    fn title(&self) -> String {
        match (&self.domain, &self.loaded) {
            (Some(n), Some(_)) => format!("Settings of {n} ({})", self.class),
            (Some(n), None) => format!("Settings of {n}: loading…"),
            (None, _) => "Select a domain".into(),
        }
    }

    /// Whether the domain has a template to choose (app domains and disposables).
    fn has_template(&self) -> bool {
        matches!(
            self.class.as_str(),
            "app" | "disposable" | "disposable-template"
        )
    }

    fn features_text(&self) -> String {
        let (start, end) = self.features.bounds();
        self.features.text(&start, &end, false).to_string()
    }

    /// Put `value` into the field `key`; the problem when there is no such field or the
    /// value does not fit it.
    fn set_field(&self, key: &str, value: &str) -> Result<(), String> {
        let number = || {
            value
                .parse::<f64>()
                .map_err(|_| format!("{key}: '{value}' is not a number"))
        };
        match key {
            "label" => self.label.select(value),
            "template" => self.template.show(value),
            "netvm" => self.netvm.show(value),
            "default_dispvm" => self.dispvm.show(value),
            "isolation" => self.isolation.select(value),
            "memory" => self.memory.set(number()?),
            "vcpus" => self.vcpus.set(number()?),
            "private_size" => self.private_size.set(number()?),
            "autostart" => self.autostart.set(matches!(value, "true" | "1" | "yes")),
            "features" => self.features.set_text(value),
            other => return Err(format!("the settings form has no field '{other}'")),
        }
        Ok(())
    }

    /// What the form shows, field by field (as [`FIELDS`]; numbers rounded, "" for none).
    pub fn form_values(&self) -> Vec<(String, String)> {
        let int = |b: &F64Binding| (b.get().round() as i64).to_string();
        let values = [
            self.label.text(),
            self.template.text_or_empty(),
            self.netvm.text_or_empty(),
            int(&self.memory),
            int(&self.vcpus),
            int(&self.private_size),
            self.isolation.text(),
            self.dispvm.text_or_empty(),
            self.autostart.get().to_string(),
            self.features_text(),
        ];
        FIELDS.iter().map(|k| (*k).to_owned()).zip(values).collect()
    }

    /// (property, value) pairs of the form that differ from the loaded ones; the problem
    /// when a field cannot be saved.
    fn changed(&self, loaded: &HashMap<String, String>) -> Result<Vec<(String, String)>, String> {
        let get = |k: &str| loaded.get(k).map(String::as_str).unwrap_or_default();
        let mut out: Vec<(String, String)> = self
            .form_values()
            .into_iter()
            .filter(|(k, _)| k != "features" && (k != "template" || self.has_template()))
            .filter(|(k, v)| get(k) != v)
            .collect();
        let wanted = parse_features(&self.features_text())?;
        out.extend(feature_changes(loaded, &wanted));
        Ok(out)
    }

    /// Fill every field from domaind's properties.
    fn fill(&mut self, props: &HashMap<String, String>) {
        let get = |k: &str| props.get(k).map(String::as_str).unwrap_or_default();
        self.class = get("class").to_owned();
        self.label.select(get("label"));
        self.template.show(get("template"));
        self.netvm.show(get("netvm"));
        self.dispvm.show(get("default_dispvm"));
        self.isolation.select(get("isolation"));
        self.autostart.set(get("autostart") == "true");
        self.features.set_text(&features_text(props));
        for k in ["memory", "vcpus", "private_size"] {
            // a value that is no number leaves the field as it is
            let _ = self.set_field(k, get(k));
        }
    }

    /// Show what the list knows of `d` (the rest comes with [`SettingsMsg::Loaded`]).
    fn show_info(&mut self, d: &DomainInfo) {
        self.class = d.class.clone();
        self.label.select(&d.label);
        self.template.show(&d.template);
        self.netvm.show(&d.netvm);
        self.isolation.select(&d.isolation);
        self.memory.set(f64::from(d.memory_mib));
        self.vcpus.set(f64::from(d.vcpus));
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
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 2, 1, 1] = &caption("Template"),
            attach[1, 2, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.template.items),
                add_binding: (&model.template.selected, "selected"),
                #[watch]
                set_sensitive: model.loaded.is_some() && model.has_template(),
            },
            attach[0, 3, 1, 1] = &caption("Net domain"),
            attach[1, 3, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.netvm.items),
                add_binding: (&model.netvm.selected, "selected"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 4, 1, 1] = &caption("Memory (MiB)"),
            attach[1, 4, 1, 1] = &gtk::SpinButton::with_range(
                *MEMORY_RANGE_MIB.start() as f64,
                *MEMORY_RANGE_MIB.end() as f64,
                64.0,
            ) {
                add_binding: (&model.memory, "value"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 5, 1, 1] = &caption("vCPUs"),
            attach[1, 5, 1, 1] = &gtk::SpinButton::with_range(
                *VCPUS_RANGE.start() as f64,
                *VCPUS_RANGE.end() as f64,
                1.0,
            ) {
                add_binding: (&model.vcpus, "value"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 6, 1, 1] = &caption("Private volume (MiB)"),
            attach[1, 6, 1, 1] = &gtk::SpinButton::with_range(
                *PRIVATE_SIZE_RANGE_MIB.start() as f64,
                *PRIVATE_SIZE_RANGE_MIB.end() as f64,
                256.0,
            ) {
                set_tooltip_text: Some("A private volume only grows"),
                add_binding: (&model.private_size, "value"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 7, 1, 1] = &caption("Isolation"),
            attach[1, 7, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.isolation.items),
                add_binding: (&model.isolation.selected, "selected"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 8, 1, 1] = &caption("Default disposable"),
            attach[1, 8, 1, 1] = &gtk::DropDown {
                set_model: Some(&model.dispvm.items),
                add_binding: (&model.dispvm.selected, "selected"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 9, 1, 1] = &caption("Start with domaind"),
            attach[1, 9, 1, 1] = &gtk::CheckButton {
                add_binding: (&model.autostart, "active"),
                #[watch]
                set_sensitive: model.loaded.is_some(),
            },
            attach[0, 10, 1, 1] = &caption("Features (key=value)") {
                set_valign: gtk::Align::Start,
            },
            attach[1, 10, 1, 1] = &gtk::ScrolledWindow {
                set_min_content_height: 90,
                set_min_content_width: 260,
                gtk::TextView {
                    set_buffer: Some(&model.features),
                    set_monospace: true,
                    #[watch]
                    set_sensitive: model.loaded.is_some(),
                },
            },
            attach[1, 11, 1, 1] = &gtk::Button {
                set_label: "Apply",
                #[watch]
                set_sensitive: model.loaded.is_some(),
                connect_clicked => SettingsMsg::Apply,
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let labels: Vec<&str> = Label::ALL.iter().map(|l| l.as_str()).collect();
        let isolations: Vec<&str> = Isolation::ALL.iter().map(|i| i.as_str()).collect();
        let model = SettingsPanel {
            domain: None,
            class: String::new(),
            loaded: None,
            filled: Vec::new(),
            label: Choice::new(&labels),
            template: Choice::new(&[NONE_ENTRY]),
            netvm: Choice::new(&[NONE_ENTRY]),
            // the spin buttons' lowest values, as they start
            memory: F64Binding::new(*MEMORY_RANGE_MIB.start() as f64),
            vcpus: F64Binding::new(*VCPUS_RANGE.start() as f64),
            private_size: F64Binding::new(*PRIVATE_SIZE_RANGE_MIB.start() as f64),
            isolation: Choice::new(&isolations),
            dispvm: Choice::new(&[NONE_ENTRY]),
            autostart: BoolBinding::new(false),
            features: gtk::TextBuffer::new(None),
        };
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: SettingsMsg, sender: ComponentSender<Self>) {
        match msg {
            SettingsMsg::Domain(info) => {
                self.loaded = None;
                self.filled.clear();
                self.domain = info.as_ref().map(|d| d.name.clone());
                match info {
                    Some(d) => self.show_info(&d),
                    None => self.class.clear(),
                }
            }
            SettingsMsg::Domains(domains) => {
                let names = |f: &dyn Fn(&DomainInfo) -> bool| {
                    with_none(domains.iter().filter(|d| f(d)).map(|d| d.name.clone()))
                };
                self.template.set_items(&names(&|d| d.class == "template"));
                self.netvm.set_items(&names(&|_| true));
                self.dispvm
                    .set_items(&names(&|d| d.class == "disposable-template"));
            }
            SettingsMsg::Loaded(name, props) => {
                if self.domain.as_deref() != Some(name.as_str()) {
                    return;
                }
                // Fields the user edited since the last fill keep the edit (a reload after
                // some other action must not undo it); the others show domaind's values.
                let edited: Vec<(String, String)> = match self.loaded {
                    Some(_) => {
                        let filled = &self.filled;
                        self.form_values()
                            .into_iter()
                            .filter(|kv| !filled.contains(kv))
                            .collect()
                    }
                    None => Vec::new(),
                };
                self.fill(&props);
                self.filled = self.form_values();
                for (k, v) in &edited {
                    let _ = self.set_field(k, v);
                }
                self.loaded = Some(props);
                let _ = sender.output(Event::SettingsShown(name, self.form_values()).into());
            }
            SettingsMsg::Set(values) => {
                for (k, v) in values {
                    if let Err(e) = self.set_field(&k, &v) {
                        let _ = sender.output(Event::Error(e).into());
                    }
                }
            }
            SettingsMsg::Apply => {
                let (Some(domain), Some(loaded)) = (self.domain.clone(), self.loaded.as_ref())
                else {
                    let _ = sender.output(
                        Event::Error("the settings are not loaded yet; nothing saved".into())
                            .into(),
                    );
                    return;
                };
                match self.changed(loaded) {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => {
                        let _ = sender.output(Event::Apply { domain, changes }.into());
                    }
                    Err(e) => {
                        let _ = sender.output(Event::Error(e).into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn features_are_lines_without_the_menu() {
        let p = props(&[
            ("memory", "400"),
            ("features.gui", "1"),
            ("features.menu-items", "foot.desktop"),
            ("features.a", "x y"),
        ]);
        assert_eq!(features_text(&p), "a=x y\ngui=1\n");
    }

    #[test]
    fn feature_lines_are_parsed_with_their_problems() {
        let f = parse_features("a = 1\n\n b=two words \n").expect("valid");
        assert_eq!(f.get("a").map(String::as_str), Some("1"));
        assert_eq!(f.get("b").map(String::as_str), Some("two words"));
        assert!(parse_features("novalue").unwrap_err().contains("line 1"));
        assert!(parse_features("=1").unwrap_err().contains("empty"));
        assert!(parse_features("a=1\na=2").unwrap_err().contains("twice"));
        assert!(parse_features("menu-items=x.desktop")
            .unwrap_err()
            .contains("Applications"));
    }

    #[test]
    fn feature_changes_set_changed_and_remove_dropped() {
        let loaded = props(&[
            ("features.keep", "1"),
            ("features.change", "old"),
            ("features.drop", "1"),
            ("features.menu-items", "foot.desktop"),
        ]);
        let wanted = parse_features("keep=1\nchange=new\nadd=2").expect("valid");
        let c = feature_changes(&loaded, &wanted);
        let pairs: Vec<(&str, &str)> = c.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("features.drop", ""),
                ("features.add", "2"),
                ("features.change", "new")
            ]
        );
    }
}
