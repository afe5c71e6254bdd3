//! The firewall tab: the selected domain's rules in order (Qubes' text form, as
//! `FirewallList` gives them), each with Delete (by the rule's text, `FirewallDelRule`: a rule
//! that expired meanwhile does not shift which one goes); a new rule typed in and added at
//! the end;
//! Reset back to the default. domaind checks every rule; its answer is shown as is.

use relm4::binding::{Binding, StringBinding};
use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{ComponentParts, ComponentSender, RelmObjectExt, SimpleComponent};

use super::ManagerMsg;

/// One rule, with its Delete button.
#[derive(Debug)]
pub struct RuleRow {
    rule: String,
}

#[relm4::factory(pub)]
impl FactoryComponent for RuleRow {
    type Init = String;
    type Input = ();
    /// The rule to delete, as shown.
    type Output = String;
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Horizontal,
            set_spacing: 6,

            gtk::Label {
                set_label: &self.rule,
                set_hexpand: true,
                set_xalign: 0.0,
                set_selectable: true,
                set_wrap: true,
                set_wrap_mode: gtk::pango::WrapMode::WordChar,
                set_max_width_chars: 40,
            },
            gtk::Button {
                set_label: "Delete",
                connect_clicked[sender, rule = self.rule.clone()] => move |_| {
                    let _ = sender.output(rule.clone());
                },
            },
        }
    }

    fn init_model(rule: String, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        Self { rule }
    }
}

/// The firewall tab.
pub struct FirewallPanel {
    domain: Option<String>,
    title: String,
    rules: FactoryVecDeque<RuleRow>,
    /// The rule being typed (bound to the entry).
    new_rule: StringBinding,
}

#[derive(Debug)]
pub enum FirewallMsg {
    /// The selected domain changed (its rules are loaded by the window).
    Domain(Option<String>),
    /// The rules of a domain, or why they cannot be listed.
    Rules(String, Result<Vec<String>, String>),
    /// Add the typed rule at the end.
    Add,
    /// Delete this rule (by its text: the list may have changed since it was shown).
    Delete(String),
    /// Remove every rule.
    Reset,
}

#[relm4::component(pub)]
impl SimpleComponent for FirewallPanel {
    type Init = ();
    type Input = FirewallMsg;
    type Output = ManagerMsg;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Vertical,
            set_spacing: 6,
            set_margin_top: 8,
            set_margin_start: 8,
            set_margin_end: 8,

            gtk::Label {
                set_xalign: 0.0,
                set_wrap: true,
                set_max_width_chars: 50,
                #[watch]
                set_text: &model.title,
            },
            gtk::ScrolledWindow {
                set_vexpand: true,
                // long rules wrap: the Delete buttons stay in view
                set_hscrollbar_policy: gtk::PolicyType::Never,
                #[local_ref]
                list -> gtk::ListBox {
                    set_selection_mode: gtk::SelectionMode::None,
                },
            },
            gtk::Entry {
                set_width_chars: 30,
                set_placeholder_text: Some("action=accept dsthost=example.org proto=tcp dstports=443"),
                set_tooltip_text: Some("Qubes' rule form: action=accept|drop, then dst4=, dsthost=, proto=, dstports=, specialtarget=dns, expire=+SECONDS, comment="),
                add_binding: (&model.new_rule, "text"),
                connect_activate => FirewallMsg::Add,
            },
            gtk::Box {
                set_orientation: gtk::Orientation::Horizontal,
                set_spacing: 6,
                set_halign: gtk::Align::End,
                gtk::Button {
                    set_label: "Add",
                    #[watch]
                    set_sensitive: model.domain.is_some(),
                    connect_clicked => FirewallMsg::Add,
                },
                gtk::Button {
                    set_label: "Reset",
                    set_tooltip_text: Some("Remove every rule: everything but other domains is allowed"),
                    #[watch]
                    set_sensitive: model.domain.is_some(),
                    connect_clicked => FirewallMsg::Reset,
                },
            },
        }
    }

    fn init(_: (), root: Self::Root, sender: ComponentSender<Self>) -> ComponentParts<Self> {
        let rules = FactoryVecDeque::builder()
            .launch(gtk::ListBox::default())
            .forward(sender.input_sender(), FirewallMsg::Delete);
        let model = FirewallPanel {
            domain: None,
            title: "Select a domain".into(),
            rules,
            new_rule: StringBinding::default(),
        };
        let list = model.rules.widget();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: FirewallMsg, sender: ComponentSender<Self>) {
        match msg {
            FirewallMsg::Domain(d) => {
                self.title = match &d {
                    Some(n) => format!("Firewall of {n}: loading…"),
                    None => "Select a domain".into(),
                };
                self.domain = d;
                self.rules.guard().clear();
            }
            FirewallMsg::Rules(domain, r) => {
                if self.domain.as_deref() != Some(domain.as_str()) {
                    return;
                }
                let mut g = self.rules.guard();
                g.clear();
                self.title = match r {
                    Ok(rules) if rules.is_empty() => format!(
                        "{domain} has no firewall rules: it may reach everything but other domains"
                    ),
                    Ok(rules) => {
                        for r in rules {
                            g.push_back(r);
                        }
                        format!("Firewall of {domain}, first match decides (then: drop)")
                    }
                    Err(e) => format!("The firewall of {domain} cannot be shown: {e}"),
                };
            }
            FirewallMsg::Add => {
                let rule = self.new_rule.get().trim().to_owned();
                if let (Some(domain), false) = (self.domain.clone(), rule.is_empty()) {
                    self.new_rule.set(String::new());
                    let _ = sender.output(ManagerMsg::FirewallAdd { domain, rule });
                }
            }
            FirewallMsg::Delete(rule) => {
                if let Some(domain) = self.domain.clone() {
                    let _ = sender.output(ManagerMsg::FirewallDelete { domain, rule });
                }
            }
            FirewallMsg::Reset => {
                if let Some(domain) = self.domain.clone() {
                    let _ = sender.output(ManagerMsg::FirewallReset(domain));
                }
            }
        }
    }
}
