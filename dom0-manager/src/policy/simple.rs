//! The "Common rules" tab ([`crate::simple_policy`]): one section per kind of decision (a
//! factory), each with its rules (a factory of rows with "Remove") and a row to add one.

use relm4::binding::{Binding, StringBinding};
use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{Component, ComponentParts, ComponentSender, RelmObjectExt};

use super::{Ev, PolicyMsg, PolicyOutput};
use crate::client::{describe, proxy};
use crate::simple_policy::{Kind, SimpleFile, SimpleRule, ACTIONS};
use crate::widgets::Choice;

/// One rule of a section.
#[derive(Debug)]
pub struct RuleRow {
    text: String,
}

/// "Remove" was clicked on the rule at this index.
#[derive(Debug)]
pub struct RemoveRule(DynamicIndex);

#[relm4::factory(pub)]
impl FactoryComponent for RuleRow {
    type Init = SimpleRule;
    type Input = ();
    type Output = RemoveRule;
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Horizontal,
            set_spacing: 8,

            gtk::Label {
                set_label: &self.text,
                set_xalign: 0.0,
                set_hexpand: true,
            },
            gtk::Button {
                set_label: "Remove",
                connect_clicked[sender, index] => move |_| {
                    let _ = sender.output(RemoveRule(index.clone()));
                },
            },
        }
    }

    fn init_model(r: SimpleRule, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        Self {
            text: format!("{}  →  {}   {}", r.source, r.target, r.action),
        }
    }
}

/// The section of one kind: its rules and the fields of a new one.
#[derive(Debug)]
pub struct Section {
    kind: Kind,
    rules: FactoryVecDeque<RuleRow>,
    source: StringBinding,
    target: StringBinding,
    action: Choice,
}

#[derive(Debug)]
pub enum SectionMsg {
    Add,
    Remove(usize),
}

impl Section {
    /// Show the rules of `file`.
    fn show(&mut self, file: &SimpleFile) {
        let mut g = self.rules.guard();
        g.clear();
        for r in file.rules() {
            g.push_back(r.clone());
        }
    }

    /// Empty the fields of a new rule.
    fn reset(&self) {
        self.source.set(String::new());
        self.target.set(self.kind.default_target().to_owned());
        self.action.selected.set(0);
    }
}

#[relm4::factory(pub)]
impl FactoryComponent for Section {
    type Init = Kind;
    type Input = SectionMsg;
    type Output = PolicyMsg;
    type CommandOutput = ();
    type ParentWidget = gtk::Box;

    view! {
        gtk::Box {
            set_orientation: gtk::Orientation::Vertical,
            set_spacing: 4,

            gtk::Label {
                set_label: self.kind.title(),
                set_xalign: 0.0,
                add_css_class: "domain-name",
            },
            append: self.rules.widget(),
            gtk::Box {
                set_orientation: gtk::Orientation::Horizontal,
                set_spacing: 6,

                gtk::Entry {
                    set_placeholder_text: Some("source (work, @anyvm, @tag:T)"),
                    add_binding: (&self.source, "text"),
                },
                gtk::Label {
                    set_label: "→",
                },
                gtk::Entry {
                    add_binding: (&self.target, "text"),
                },
                gtk::DropDown {
                    set_model: Some(&self.action.items),
                    add_binding: (&self.action.selected, "selected"),
                },
                gtk::Button {
                    set_label: "Add",
                    connect_clicked => SectionMsg::Add,
                },
            },
        }
    }

    fn init_model(kind: Kind, _index: &DynamicIndex, sender: FactorySender<Self>) -> Self {
        let rules: FactoryVecDeque<RuleRow> = FactoryVecDeque::builder()
            .launch(gtk::ListBox::default())
            .forward(sender.input_sender(), |RemoveRule(i)| {
                SectionMsg::Remove(i.current_index())
            });
        rules.widget().set_selection_mode(gtk::SelectionMode::None);
        Self {
            kind,
            rules,
            source: StringBinding::default(),
            target: StringBinding::new(kind.default_target()),
            action: Choice::new(&ACTIONS),
        }
    }

    fn update(&mut self, msg: SectionMsg, sender: FactorySender<Self>) {
        let kind = self.kind;
        let _ = sender.output(match msg {
            SectionMsg::Add => PolicyMsg::SimpleAdd {
                kind,
                rule: SimpleRule {
                    source: self.source.get().trim().to_owned(),
                    target: self.target.get().trim().to_owned(),
                    action: Some(self.action.text())
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| "deny".into()),
                },
            },
            SectionMsg::Remove(index) => PolicyMsg::SimpleRemove { kind, index },
        });
    }
}

/// The "Common rules" tab.
pub struct SimplePanel {
    conn: zbus::Connection,
    sections: FactoryVecDeque<Section>,
    /// The files as the sections show them.
    files: Vec<(Kind, SimpleFile)>,
}

#[derive(Debug)]
pub enum SimpleMsg {
    Reload,
    Add { kind: Kind, rule: SimpleRule },
    Remove { kind: Kind, index: usize },
}

#[derive(Debug)]
pub enum SimpleCmd {
    Loaded(Kind, Result<String, String>),
    Saved(Kind, Result<(), String>),
}

impl SimplePanel {
    fn load(&self, sender: &ComponentSender<Self>, kind: Kind) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async {
                let p = proxy(&conn).await?;
                // a file that is not there yet is an empty simple view
                if p.list_policy_files()
                    .await?
                    .iter()
                    .any(|(n, _)| n == kind.file())
                {
                    p.read_policy_file(kind.file()).await
                } else {
                    Ok(String::new())
                }
            }
            .await;
            SimpleCmd::Loaded(kind, r.map_err(|e| describe(&e)))
        });
    }

    fn save(&self, sender: &ComponentSender<Self>, kind: Kind) {
        let Some(text) = self.file(kind).map(SimpleFile::render) else {
            return;
        };
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async {
                proxy(&conn)
                    .await?
                    .write_policy_file(kind.file(), &text)
                    .await
            }
            .await;
            SimpleCmd::Saved(kind, r.map_err(|e| describe(&e)))
        });
    }

    fn file(&self, kind: Kind) -> Option<&SimpleFile> {
        self.files.iter().find(|(k, _)| *k == kind).map(|(_, f)| f)
    }

    /// The section of `kind` (its index is the kind's in [`Kind::ALL`]).
    fn section(&mut self, kind: Kind, f: impl FnOnce(&mut Section)) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            if let Some(s) = self.sections.guard().get_mut(i) {
                f(s);
            }
        }
    }
}

#[relm4::component(pub)]
impl Component for SimplePanel {
    type Init = zbus::Connection;
    type Input = SimpleMsg;
    type Output = PolicyMsg;
    type CommandOutput = SimpleCmd;

    view! {
        gtk::ScrolledWindow {
            #[local_ref]
            section_box -> gtk::Box {
                set_orientation: gtk::Orientation::Vertical,
                set_spacing: 16,
                set_margin_top: 8,
                set_margin_start: 8,
            },
        }
    }

    fn init(
        conn: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let mut sections = FactoryVecDeque::builder()
            .launch(gtk::Box::default())
            .forward(sender.output_sender(), |m| m);
        for kind in Kind::ALL {
            sections.guard().push_back(kind);
        }
        let model = SimplePanel {
            conn,
            sections,
            files: Vec::new(),
        };
        let section_box = model.sections.widget();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: SimpleMsg, sender: ComponentSender<Self>, _root: &Self::Root) {
        match msg {
            SimpleMsg::Reload => {
                for kind in Kind::ALL {
                    self.load(&sender, kind);
                }
            }
            SimpleMsg::Add { kind, rule } => {
                if rule.source.is_empty() || rule.target.is_empty() {
                    let _ = sender.output(Ev::Error("give a source and a target".into()).into());
                    return;
                }
                match self.files.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, f)) => f.add_first(rule),
                    None => {
                        let mut f = SimpleFile::parse(kind, "");
                        f.add_first(rule);
                        self.files.push((kind, f));
                    }
                }
                self.section(kind, |s| s.reset());
                self.save(&sender, kind);
            }
            SimpleMsg::Remove { kind, index } => {
                if let Some((_, f)) = self.files.iter_mut().find(|(k, _)| *k == kind) {
                    f.remove_rule(index);
                    self.save(&sender, kind);
                }
            }
        }
    }

    fn update_cmd(&mut self, msg: SimpleCmd, sender: ComponentSender<Self>, _root: &Self::Root) {
        let event = match msg {
            SimpleCmd::Loaded(kind, Ok(text)) => {
                let file = SimpleFile::parse(kind, &text);
                self.section(kind, |s| s.show(&file));
                self.files.retain(|(k, _)| *k != kind);
                self.files.push((kind, file));
                return;
            }
            SimpleCmd::Loaded(kind, Err(e)) => Ev::Error(format!("{}: {e}", kind.file())),
            SimpleCmd::Saved(kind, r) => {
                let said = match r {
                    Err(e) => Ev::Error(format!("{} not saved: {e}", kind.file())),
                    Ok(()) => Ev::Output(PolicyOutput::Saved(kind.file().to_owned())),
                };
                let _ = sender.output(said.into());
                // show what is on disk now (also after a refused write)
                Ev::Written(Some(kind.file().to_owned()))
            }
        };
        let _ = sender.output(event.into());
    }
}
