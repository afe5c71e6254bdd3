//! The domain manager window (relm4 component [`ManagerWindow`]).
//!
//! Left: every domain with its label colour, name, class, state (text and a coloured
//! badge), memory and CPU (`list::DomainRow`, a factory). Toolbar: start, shutdown, kill,
//! pause, unpause, remove (`list::ActionButton`, a factory), the policy editor. Right, for
//! the selected domain, each tab its own component: settings (every property of Qubes'
//! settings window, `settings`), applications (which are in dom0's menu; launch in the
//! domain or in a new disposable, `apps`), firewall (`firewall`), create (`create`), clone
//! (`clone`). Bottom: start progress and an error bar that stays until dismissed.
//!
//! Live (`live`): `StateChanged` and `Progress` signals update rows and the progress bar;
//! the list is reloaded after every action and every few seconds, usage (`GetUsage`) every
//! 2 seconds, and twice in quick succession for a running domain the list shows for the
//! first time (so its memory and CPU share are there from the start). Every widget action is also a [`ManagerMsg`], so tests and dom0-ui drive the
//! window the way a click does.

mod apps;
mod clone;
mod create;
mod firewall;
mod list;
mod live;
mod settings;

use std::collections::HashMap;

use relm4::factory::FactoryVecDeque;
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{
    Component, ComponentController, ComponentParts, ComponentSender, Controller, RelmWidgetExt,
};

use bulkhead_api::DomainInfo;

use crate::forms::CreateForm;
use crate::policy::{PolicyEditor, PolicyInit};
use crate::style;
use crate::widgets::{Dismissed, ErrorBar, ErrorBarMsg};

use apps::{AppsMsg, AppsPanel};
use clone::{CloneMsg, ClonePanel};
use create::{CreateMsg, CreatePanel};
use firewall::{FirewallMsg, FirewallPanel};
pub use list::DomainAction;
use list::{reconcile, ActionButton, DomainRow, Usage};
pub use live::ManagerCmd;
use live::{menu_items, FirewallEdit};
use settings::{SettingsMsg, SettingsPanel};

/// What [`ManagerWindow`] is started with.
pub struct ManagerInit {
    /// A connection to the bus domaind serves on. Its background tasks must keep running
    /// (the runtime it was made on must live as long as the window).
    pub conn: zbus::Connection,
}

/// Messages [`ManagerWindow`] accepts (every button and field sends one of these).
#[derive(Debug)]
pub enum ManagerMsg {
    /// Reload the domain list.
    Refresh,
    /// Select a domain (loads its settings and applications).
    Select(Option<String>),
    /// Run a lifecycle action on a domain (Remove asks first).
    Action(DomainAction, String),
    /// The user confirmed removing this domain: remove it.
    RemoveConfirmed(String),
    /// Show the create form with these values (validated as if typed).
    SetCreateForm(CreateForm),
    /// A create form field changed (validates).
    CreateChanged,
    /// Create the domain the form describes.
    Create,
    /// Show the clone form with this name in its "new name" field.
    SetCloneName(String),
    /// The clone form changed (validates).
    CloneChanged,
    /// Clone the selected domain under the name in the clone form.
    Clone,
    /// Show the settings form with these (property, value) pairs filled in (the fields of
    /// `settings::FIELDS`; "" = none; `features` as `key=value` lines), not saved yet.
    SetSettings(Vec<(String, String)>),
    /// Save the settings form of the selected domain (changed values only).
    ApplySettings,
    /// Start an application: in `domain`, or in a new disposable of the domain's
    /// `default_dispvm` (dom0's default when it has none) when `disposable`.
    Launch {
        domain: String,
        desktop_id: String,
        disposable: bool,
    },
    /// Put `desktop_id` into the domain's menu (`features.menu-items`) or take it out.
    SetMenuItem {
        domain: String,
        desktop_id: String,
        in_menu: bool,
    },
    /// Add a firewall rule at the end of the domain's rules.
    FirewallAdd { domain: String, rule: String },
    /// Delete the domain's firewall rule with this text (as listed).
    FirewallDelete { domain: String, rule: String },
    /// Remove every firewall rule of the domain (back to the default: everything but other
    /// domains allowed); asks first.
    FirewallReset(String),
    /// The user confirmed the firewall reset of this domain.
    FirewallResetConfirmed(String),
    /// Hide the error bar.
    DismissError,
    /// Open (or raise) the policy editor.
    OpenPolicyEditor,
    /// Show one of the tabs on the right.
    ShowTab(ManagerTab),
    /// What a tab reports to the window (sent by the tabs only).
    Panel(PanelEvent),
}

/// The tabs on the right of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerTab {
    Settings,
    Applications,
    Firewall,
    Create,
    Clone,
}

impl ManagerTab {
    const ALL: [ManagerTab; 5] = [
        ManagerTab::Settings,
        ManagerTab::Applications,
        ManagerTab::Firewall,
        ManagerTab::Create,
        ManagerTab::Clone,
    ];

    fn page(self) -> u32 {
        match self {
            ManagerTab::Settings => 0,
            ManagerTab::Applications => 1,
            ManagerTab::Firewall => 2,
            ManagerTab::Create => 3,
            ManagerTab::Clone => 4,
        }
    }

    fn of_page(page: u32) -> Self {
        Self::ALL
            .into_iter()
            .find(|t| t.page() == page)
            .unwrap_or(ManagerTab::Settings)
    }
}

/// What a tab reports to the window: made by the tabs only (the field is private).
#[derive(Debug)]
pub struct PanelEvent(Event);

/// What a tab reports to the window.
#[derive(Debug)]
pub(crate) enum Event {
    /// Show this in the error bar.
    Error(String),
    /// The create form was validated (`None` = valid).
    CreateValidation(Option<String>),
    /// Create this domain.
    Create(CreateForm),
    /// Clone `source` as `dest`.
    Clone { source: String, dest: String },
    /// Save these settings of `domain`.
    Apply {
        domain: String,
        changes: Vec<(String, String)>,
    },
    /// The settings form now shows these (field, value) pairs of the domain.
    SettingsShown(String, Vec<(String, String)>),
}

impl From<Event> for ManagerMsg {
    fn from(e: Event) -> Self {
        ManagerMsg::Panel(PanelEvent(e))
    }
}

/// A caption of a form field.
fn caption(text: &str) -> gtk::Label {
    gtk::Label::builder().label(text).xalign(0.0).build()
}

/// What the window reports to its owner (dom0-ui, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerOutput {
    /// The list now shows these domains as (name, state).
    Shown(Vec<(String, String)>),
    /// An error is shown in the error bar.
    Error(String),
    /// An action finished; the text says which ("start work").
    Done(String),
    /// The create form's validation result (`None` = valid).
    CreateValidation(Option<String>),
    /// Start progress shown: (domain, step, done, total).
    Progress(String, String, u32, u32),
    /// The applications tab lists these desktop ids of the domain.
    Applications(String, Vec<String>),
    /// The settings form shows the domain's current settings: (field, value) as the form
    /// shows them (`settings::FIELDS`).
    SettingsLoaded(String, Vec<(String, String)>),
    /// The firewall tab shows these rules of the domain.
    Firewall(String, Vec<String>),
    /// The list shows this domain's memory (bytes) and, when known, its CPU share (whole %).
    Usage(String, u64, Option<u32>),
    /// Asked whether to remove this domain; the text says what would be lost.
    ConfirmRemove(String, String),
    /// Asked whether to reset this domain's firewall.
    ConfirmFirewallReset(String),
}

/// The start progress shown at the bottom.
#[derive(Debug, Default)]
struct Progress {
    text: String,
    fraction: f64,
    visible: bool,
}

/// The domain manager.
pub struct ManagerWindow {
    conn: zbus::Connection,
    domains: Vec<DomainInfo>,
    selected: Option<String>,
    usage: HashMap<String, Usage>,
    /// The selected domain's settings as domaind last said.
    props: HashMap<String, String>,
    /// Writes of the menu choice not answered yet: meanwhile a reload of the properties
    /// keeps the menu choice shown (domaind may not have it yet).
    menu_writes: u32,
    /// Menu writes take their turn here.
    menu_order: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The open "Remove?" question (closed when the answer comes, whichever way).
    question: Option<gtk::MessageDialog>,
    tab: ManagerTab,
    progress: Progress,
    rows: FactoryVecDeque<DomainRow>,
    actions: FactoryVecDeque<ActionButton>,
    settings: Controller<SettingsPanel>,
    apps: Controller<AppsPanel>,
    firewall: Controller<FirewallPanel>,
    create: Controller<CreatePanel>,
    clone: Controller<ClonePanel>,
    errors: Controller<ErrorBar>,
    policy: Option<Controller<PolicyEditor>>,
}

impl ManagerWindow {
    fn names(&self) -> Vec<String> {
        self.domains.iter().map(|d| d.name.clone()).collect()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.domains.iter().position(|d| d.name == name)
    }

    /// The list's row of the selected domain.
    fn selected_row(&self) -> Option<gtk::ListBoxRow> {
        let i = self.position(self.selected.as_deref()?)?;
        self.rows.widget().row_at_index(i32::try_from(i).ok()?)
    }

    /// Change the row of `name` (shown when the factory's guard is dropped).
    fn with_row(&mut self, name: &str, f: impl FnOnce(&mut DomainRow)) {
        if let Some(i) = self.position(name) {
            if let Some(r) = self.rows.guard().get_mut(i) {
                f(r);
            }
        }
    }

    /// The toolbar's buttons follow the selected domain and its state.
    fn sync_actions(&mut self) {
        let target = self.selected.as_ref().and_then(|n| {
            let i = self.position(n)?;
            Some((n.clone(), self.domains[i].state.clone()))
        });
        for b in self.actions.guard().iter_mut() {
            b.target = target.clone();
        }
    }

    fn shown(&self, sender: &ComponentSender<Self>) {
        let shown = self
            .domains
            .iter()
            .map(|d| (d.name.clone(), d.state.clone()))
            .collect();
        let _ = sender.output(ManagerOutput::Shown(shown));
    }

    fn show_error(&self, sender: &ComponentSender<Self>, msg: String) {
        tracing::warn!(error = %msg, "shown to the user");
        self.errors.emit(ErrorBarMsg::Show(msg.clone()));
        let _ = sender.output(ManagerOutput::Error(msg));
    }

    /// The list changed: rows, the forms' choices and the toolbar follow.
    fn list_changed(&mut self, sender: &ComponentSender<Self>) {
        let usage = &self.usage;
        reconcile(&mut self.rows, &self.domains, |n| {
            usage.get(n).copied().unwrap_or_default()
        });
        let names = self.names();
        self.settings
            .emit(SettingsMsg::Domains(self.domains.clone()));
        self.clone.emit(CloneMsg::Existing(names));
        self.create.emit(CreateMsg::Domains(self.domains.clone()));
        self.sync_actions();
        self.shown(sender);
    }
}

#[relm4::component(pub)]
impl Component for ManagerWindow {
    type CommandOutput = ManagerCmd;
    type Input = ManagerMsg;
    type Output = ManagerOutput;
    type Init = ManagerInit;

    view! {
        gtk::Window {
            set_title: Some("Bulkhead domains"),
            set_default_width: 1180,
            set_default_height: 680,

            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,
                set_spacing: 6,
                set_margin_all: 6,

                gtk::Box {
                    set_orientation: gtk::Orientation::Horizontal,
                    set_spacing: 6,

                    #[local_ref]
                    action_box -> gtk::Box {
                        set_orientation: gtk::Orientation::Horizontal,
                        set_spacing: 6,
                    },
                    gtk::Box {
                        set_hexpand: true,
                    },
                    gtk::Button {
                        set_label: "Reload",
                        connect_clicked => ManagerMsg::Refresh,
                    },
                    gtk::Button {
                        set_label: "Policy editor",
                        connect_clicked => ManagerMsg::OpenPolicyEditor,
                    },
                },

                gtk::Paned {
                    set_orientation: gtk::Orientation::Horizontal,
                    set_vexpand: true,
                    // the list keeps its width: the tabs get what is left
                    set_shrink_start_child: false,
                    set_resize_start_child: false,
                    set_shrink_end_child: false,

                    #[wrap(Some)]
                    set_start_child = &gtk::ScrolledWindow {
                        set_size_request: (660, -1),

                        #[local_ref]
                        domain_list -> gtk::ListBox {
                            set_selection_mode: gtk::SelectionMode::Single,
                            #[watch]
                            #[block_signal(row_selected)]
                            select_row: model.selected_row().as_ref(),
                            connect_row_selected[sender] => move |_, row| {
                                let name = row.map(|r| r.widget_name().to_string());
                                sender.input(ManagerMsg::Select(name));
                            } @row_selected,
                        },
                    },

                    #[wrap(Some)]
                    // (a form tab's root is its FormGrid template, a gtk::Grid underneath)
                    set_end_child = &gtk::Notebook {
                        append_page: (&**model.settings.widget(), Some(&gtk::Label::new(Some("Settings")))),
                        append_page: (model.apps.widget(), Some(&gtk::Label::new(Some("Applications")))),
                        append_page: (model.firewall.widget(), Some(&gtk::Label::new(Some("Firewall")))),
                        append_page: (&**model.create.widget(), Some(&gtk::Label::new(Some("Create")))),
                        append_page: (&**model.clone.widget(), Some(&gtk::Label::new(Some("Clone")))),
                        #[watch]
                        #[block_signal(page_switched)]
                        set_current_page: Some(model.tab.page()),
                        connect_switch_page[sender] => move |_, _, page| {
                            sender.input(ManagerMsg::ShowTab(ManagerTab::of_page(page)));
                        } @page_switched,
                    },
                },

                gtk::ProgressBar {
                    set_show_text: true,
                    #[watch]
                    set_fraction: model.progress.fraction,
                    #[watch]
                    set_text: Some(&model.progress.text),
                    #[watch]
                    set_visible: model.progress.visible,
                },

                append: model.errors.widget(),
            }
        }
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        style::install();
        let input = sender.input_sender();
        let mut actions = FactoryVecDeque::builder()
            .launch(gtk::Box::default())
            .forward(input, |(a, name)| ManagerMsg::Action(a, name));
        for a in DomainAction::ALL {
            actions.guard().push_back(a);
        }
        let model = ManagerWindow {
            conn: init.conn,
            domains: Vec::new(),
            selected: None,
            usage: HashMap::new(),
            props: HashMap::new(),
            menu_writes: 0,
            menu_order: Default::default(),
            question: None,
            tab: ManagerTab::Settings,
            progress: Progress::default(),
            rows: FactoryVecDeque::builder()
                .launch(gtk::ListBox::default())
                .detach(),
            actions,
            settings: SettingsPanel::builder().launch(()).forward(input, |m| m),
            apps: AppsPanel::builder().launch(()).forward(input, |m| m),
            firewall: FirewallPanel::builder().launch(()).forward(input, |m| m),
            create: CreatePanel::builder().launch(()).forward(input, |m| m),
            clone: ClonePanel::builder().launch(()).forward(input, |m| m),
            errors: ErrorBar::builder()
                .launch(())
                .forward(input, |Dismissed| ManagerMsg::DismissError),
            policy: None,
        };
        live::subscribe(model.conn.clone(), &sender);
        model.refresh(&sender);
        let action_box = model.actions.widget();
        let domain_list = model.rows.widget();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: ManagerMsg, sender: ComponentSender<Self>, root: &Self::Root) {
        match msg {
            ManagerMsg::Refresh => self.refresh(&sender),
            ManagerMsg::Select(name) => {
                self.selected = name;
                self.props.clear();
                let info = self
                    .selected
                    .as_ref()
                    .and_then(|n| self.domains.iter().find(|d| &d.name == n))
                    .cloned();
                self.settings.emit(SettingsMsg::Domain(info));
                self.firewall
                    .emit(FirewallMsg::Domain(self.selected.clone()));
                self.clone.emit(CloneMsg::Source(self.selected.clone()));
                self.sync_actions();
                self.load_selected(&sender);
            }
            ManagerMsg::Action(DomainAction::Remove, name) => {
                self.confirm_remove(name, &sender, root)
            }
            ManagerMsg::Action(action, name) => self.start_action(action, name, &sender),
            ManagerMsg::RemoveConfirmed(name) => {
                if let Some(q) = self.question.take() {
                    q.close();
                }
                self.start_action(DomainAction::Remove, name, &sender)
            }
            ManagerMsg::SetCreateForm(f) => {
                self.tab = ManagerTab::Create;
                self.create.emit(CreateMsg::Set(f));
            }
            ManagerMsg::CreateChanged => self.create.emit(CreateMsg::Changed),
            ManagerMsg::Create => self.create.emit(CreateMsg::Create),
            ManagerMsg::SetCloneName(n) => {
                self.tab = ManagerTab::Clone;
                self.clone.emit(CloneMsg::SetName(n));
            }
            ManagerMsg::CloneChanged => self.clone.emit(CloneMsg::Changed),
            ManagerMsg::Clone => self.clone.emit(CloneMsg::Clone),
            ManagerMsg::SetSettings(values) => {
                self.tab = ManagerTab::Settings;
                self.settings.emit(SettingsMsg::Set(values));
            }
            ManagerMsg::ApplySettings => self.settings.emit(SettingsMsg::Apply),
            ManagerMsg::Launch {
                domain,
                desktop_id,
                disposable,
            } => self.launch(domain, desktop_id, disposable, &sender),
            ManagerMsg::SetMenuItem {
                domain,
                desktop_id,
                in_menu,
            } => self.set_menu_item(domain, desktop_id, in_menu, &sender),
            ManagerMsg::FirewallAdd { domain, rule } => {
                self.firewall_edit(&sender, domain, FirewallEdit::Add(rule))
            }
            ManagerMsg::FirewallDelete { domain, rule } => {
                self.firewall_edit(&sender, domain, FirewallEdit::Delete(rule))
            }
            ManagerMsg::FirewallReset(domain) => self.confirm_firewall_reset(domain, &sender, root),
            ManagerMsg::FirewallResetConfirmed(domain) => {
                if let Some(q) = self.question.take() {
                    q.close();
                }
                self.firewall_edit(&sender, domain, FirewallEdit::Reset)
            }
            ManagerMsg::DismissError => self.errors.emit(ErrorBarMsg::Hide),
            ManagerMsg::ShowTab(t) => self.tab = t,
            ManagerMsg::OpenPolicyEditor => match &self.policy {
                Some(c) => c.widget().present(),
                None => {
                    let c = PolicyEditor::builder()
                        .transient_for(root)
                        .launch(PolicyInit {
                            conn: self.conn.clone(),
                        })
                        .detach();
                    c.widget().present();
                    self.policy = Some(c);
                }
            },
            ManagerMsg::Panel(PanelEvent(e)) => self.panel_event(e, &sender),
        }
    }

    /// A new list makes rows anew: meanwhile the list's selection is no user's (the
    /// selected domain's row is selected again by the view).
    fn update_cmd_with_view(
        &mut self,
        widgets: &mut Self::Widgets,
        msg: ManagerCmd,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        let list = &widgets.domain_list;
        list.block_signal(&widgets.row_selected);
        self.update_cmd(msg, sender.clone(), root);
        list.unblock_signal(&widgets.row_selected);
        self.update_view(widgets, sender);
    }

    fn update_cmd(&mut self, msg: ManagerCmd, sender: ComponentSender<Self>, _root: &Self::Root) {
        match msg {
            ManagerCmd::Domains(Ok(d)) => {
                if d != self.domains {
                    self.domains = d;
                    if let Some(s) = &self.selected {
                        if !self.domains.iter().any(|d| &d.name == s) {
                            self.selected = None;
                            self.settings.emit(SettingsMsg::Domain(None));
                            self.firewall.emit(FirewallMsg::Domain(None));
                            self.clone.emit(CloneMsg::Source(None));
                        }
                    }
                    self.list_changed(&sender);
                    self.poll_new_usage(&sender);
                }
            }
            ManagerCmd::Domains(Err(e)) => self.show_error(&sender, e),
            ManagerCmd::ListTick => self.refresh(&sender),
            ManagerCmd::UsageTick => self.poll_usage(&sender),
            ManagerCmd::Usage(v) => self.usage(v, &sender),
            ManagerCmd::StateChanged(name, state) => self.state_changed(name, state, &sender),
            ManagerCmd::Progress(name, step, done, total) => {
                self.progress(name, step, done, total, &sender)
            }
            ManagerCmd::Props(name, r) => {
                if self.selected.as_deref() != Some(name.as_str()) {
                    return;
                }
                match r {
                    Ok(mut p) => {
                        if self.menu_writes > 0 {
                            let key = settings::menu_key();
                            match self.props.get(&key) {
                                Some(v) => p.insert(key, v.clone()),
                                None => p.remove(&key),
                            };
                        }
                        self.props = p.clone();
                        self.apps
                            .emit(AppsMsg::Chosen(name.clone(), menu_items(&self.props)));
                        self.settings.emit(SettingsMsg::Loaded(name, p));
                    }
                    Err(e) => self.show_error(&sender, e),
                }
            }
            ManagerCmd::Firewall(name, r) => {
                if self.selected.as_deref() != Some(name.as_str()) {
                    return;
                }
                if let Ok(rules) = &r {
                    let _ = sender.output(ManagerOutput::Firewall(name.clone(), rules.clone()));
                }
                self.firewall.emit(FirewallMsg::Rules(name, r));
            }
            ManagerCmd::Apps(name, r) => {
                if self.selected.as_deref() != Some(name.as_str()) {
                    return;
                }
                let ids = match r {
                    Ok(apps) => {
                        let ids = apps.iter().map(|(id, _, _)| id.clone()).collect();
                        self.apps.emit(AppsMsg::Show(name.clone(), apps));
                        ids
                    }
                    Err(e) => {
                        self.apps.emit(AppsMsg::Failed(name.clone(), e));
                        Vec::new()
                    }
                };
                let _ = sender.output(ManagerOutput::Applications(name, ids));
            }
            ManagerCmd::MenuWritten(what, r) => {
                self.menu_writes = self.menu_writes.saturating_sub(1);
                match r {
                    Ok(()) => {
                        let _ = sender.output(ManagerOutput::Done(what));
                    }
                    Err(e) => self.show_error(&sender, format!("{what}: {e}")),
                }
                // the last answer: what domaind holds is shown again
                if self.menu_writes == 0 {
                    self.load_selected(&sender);
                }
            }
            ManagerCmd::Done(what, r) => {
                if what.starts_with("start ") {
                    self.progress.visible = false;
                }
                match r {
                    Ok(()) => {
                        let _ = sender.output(ManagerOutput::Done(what));
                    }
                    Err(e) => self.show_error(&sender, format!("{what}: {e}")),
                }
                self.refresh(&sender);
                self.load_selected(&sender);
            }
            ManagerCmd::SignalsLost(e) => {
                self.show_error(&sender, format!("live updates stopped ({e}); use Reload"))
            }
        }
    }
}
