//! The domain manager window (relm4 component [`ManagerWindow`]).
//!
//! Left: every domain with its label colour, name, class, state (text and a coloured
//! badge), memory and CPU. Toolbar: start, shutdown, kill, pause, unpause, remove, the
//! policy editor. Right, for the selected domain: settings, applications (launch in the
//! domain or in a new disposable), clone; and the create form. Bottom: start progress and
//! an error bar that stays until dismissed.
//!
//! Live: `StateChanged` and `Progress` signals update rows and the progress bar; the list is
//! reloaded after every action and every few seconds, usage (`GetUsage`) every 2 seconds.
//! Every widget action is also a [`ManagerMsg`], so tests and dom0-ui drive the window the
//! way a click does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{Component, ComponentController, ComponentParts, ComponentSender, Controller};

use bulkhead_api::DomainInfo;
use bulkhead_domain::{DomainClass, Isolation, Label, MEMORY_RANGE_MIB, VCPUS_RANGE};

use crate::client::{describe, format_bytes, proxy};
use crate::forms::{clone_problem, create_problem, CreateForm};
use crate::policy::{PolicyEditor, PolicyInit};
use crate::style;
use crate::widgets::{form_grid, margin_box, scrolled, ErrorBar};

/// How often usage is polled.
const USAGE_PERIOD: Duration = Duration::from_secs(2);
/// How often the list is reloaded without a signal (create/remove by others).
const LIST_PERIOD: Duration = Duration::from_secs(5);

/// What [`ManagerWindow`] is started with.
pub struct ManagerInit {
    /// A connection to the bus domaind serves on. Its background tasks must keep running
    /// (the runtime it was made on must live as long as the window).
    pub conn: zbus::Connection,
}

/// A lifecycle action on one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainAction {
    Start,
    Shutdown,
    Kill,
    Pause,
    Unpause,
    Remove,
}

impl DomainAction {
    pub const ALL: [DomainAction; 6] = [
        DomainAction::Start,
        DomainAction::Shutdown,
        DomainAction::Kill,
        DomainAction::Pause,
        DomainAction::Unpause,
        DomainAction::Remove,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DomainAction::Start => "Start",
            DomainAction::Shutdown => "Shut down",
            DomainAction::Kill => "Kill",
            DomainAction::Pause => "Pause",
            DomainAction::Unpause => "Unpause",
            DomainAction::Remove => "Remove",
        }
    }

    /// Whether the action makes sense in `state` (buttons are insensitive otherwise).
    pub fn allowed_in(self, state: &str) -> bool {
        match self {
            DomainAction::Start => state == "halted",
            DomainAction::Shutdown => matches!(state, "running" | "paused"),
            DomainAction::Kill => matches!(state, "running" | "paused" | "starting" | "stopping"),
            DomainAction::Pause => state == "running",
            DomainAction::Unpause => state == "paused",
            DomainAction::Remove => matches!(state, "halted" | "broken"),
        }
    }
}

/// Messages [`ManagerWindow`] accepts (every button and field sends one of these).
#[derive(Debug)]
pub enum ManagerMsg {
    /// Reload the domain list.
    Refresh,
    /// Select a domain (loads its settings and applications).
    Select(Option<String>),
    /// Run a lifecycle action on a domain.
    Action(DomainAction, String),
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
    /// Show the settings form with these (property, value) pairs filled in (label, netvm,
    /// memory, vcpus, isolation, default_dispvm; "" = none), not saved yet.
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
    /// Hide the error bar.
    DismissError,
    /// Open (or raise) the policy editor.
    OpenPolicyEditor,
    /// Show one of the tabs on the right.
    ShowTab(ManagerTab),
}

/// The tabs on the right of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerTab {
    Settings,
    Applications,
    Create,
    Clone,
}

impl ManagerTab {
    fn page(self) -> u32 {
        match self {
            ManagerTab::Settings => 0,
            ManagerTab::Applications => 1,
            ManagerTab::Create => 2,
            ManagerTab::Clone => 3,
        }
    }
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
    /// The settings form shows the domain's current settings.
    SettingsLoaded(String),
}

/// Results of background D-Bus work.
#[derive(Debug)]
pub enum ManagerCmd {
    Domains(Result<Vec<DomainInfo>, String>),
    Usage(Vec<(String, u64, u64)>),
    StateChanged(String, String),
    Progress(String, String, u32, u32),
    Props(String, Result<HashMap<String, String>, String>),
    Apps(String, Result<Vec<(String, String, String)>, String>),
    Done(String, Result<(), String>),
    /// The signal subscription failed (shown as an error).
    SignalsLost(String),
    /// Time to poll usage.
    UsageTick,
    /// Time to reload the list.
    ListTick,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    mem: u64,
    cpu_ns: u64,
    at: Option<Instant>,
    cpu_percent: Option<f64>,
}

/// The domain manager.
pub struct ManagerWindow {
    conn: zbus::Connection,
    domains: Vec<DomainInfo>,
    selected: Option<String>,
    usage: HashMap<String, Usage>,
    props: HashMap<String, String>,
    policy: Option<Controller<PolicyEditor>>,
}

struct RowWidgets {
    row: gtk::ListBoxRow,
    state: gtk::Label,
    badge: gtk::Box,
    mem: gtk::Label,
    cpu: gtk::Label,
}

struct Settings {
    title: gtk::Label,
    label: gtk::DropDown,
    netvm: gtk::DropDown,
    netvm_model: gtk::StringList,
    memory: gtk::SpinButton,
    vcpus: gtk::SpinButton,
    isolation: gtk::DropDown,
    dispvm: gtk::DropDown,
    dispvm_model: gtk::StringList,
    apply: gtk::Button,
}

struct CreateWidgets {
    name: gtk::Entry,
    class: gtk::DropDown,
    template: gtk::DropDown,
    template_model: gtk::StringList,
    label: gtk::DropDown,
    problem: gtk::Label,
    button: gtk::Button,
}

struct CloneWidgets {
    title: gtk::Label,
    name: gtk::Entry,
    problem: gtk::Label,
    button: gtk::Button,
}

/// Widgets of [`ManagerWindow`].
pub struct ManagerWidgets {
    list: gtk::ListBox,
    rows: HashMap<String, RowWidgets>,
    actions: Vec<(DomainAction, gtk::Button)>,
    progress: gtk::ProgressBar,
    errors: ErrorBar,
    settings: Settings,
    apps_title: gtk::Label,
    apps: gtk::ListBox,
    create: CreateWidgets,
    clone: CloneWidgets,
    tabs: gtk::Notebook,
    /// Guards against the list's row-selected signal while rows are rebuilt.
    rebuilding: std::rc::Rc<std::cell::Cell<bool>>,
}

const NONE_ENTRY: &str = "(none)";

fn strings(items: &[&str]) -> gtk::DropDown {
    gtk::DropDown::from_strings(items)
}

fn dropdown_text(d: &gtk::DropDown) -> String {
    d.selected_item()
        .and_then(|o| o.downcast::<gtk::StringObject>().ok())
        .map(|s| s.string().to_string())
        .unwrap_or_default()
}

fn dropdown_select(d: &gtk::DropDown, text: &str) {
    let Some(model) = d.model() else { return };
    for i in 0..model.n_items() {
        let matches = model
            .item(i)
            .and_then(|o| o.downcast::<gtk::StringObject>().ok())
            .is_some_and(|s| s.string() == text);
        if matches {
            d.set_selected(i);
            return;
        }
    }
}

fn set_strings(model: &gtk::StringList, items: &[String]) {
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    model.splice(0, model.n_items(), &refs);
}

fn field(grid: &gtk::Grid, row: i32, caption: &str, w: &impl IsA<gtk::Widget>) {
    let l = gtk::Label::new(Some(caption));
    l.set_xalign(0.0);
    grid.attach(&l, 0, row, 1, 1);
    grid.attach(w, 1, row, 1, 1);
}

fn problem_label() -> gtk::Label {
    let l = gtk::Label::new(None);
    l.set_xalign(0.0);
    l.set_wrap(true);
    l.add_css_class("validation-error");
    l.set_visible(false);
    l
}

fn show_problem(l: &gtk::Label, problem: Option<&str>) {
    l.set_text(problem.unwrap_or_default());
    l.set_visible(problem.is_some());
}

impl ManagerWindow {
    fn names(&self) -> Vec<String> {
        self.domains.iter().map(|d| d.name.clone()).collect()
    }

    fn state_of(&self, name: &str) -> Option<&str> {
        self.domains
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.state.as_str())
    }

    fn refresh(&self, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list().await }.await;
            ManagerCmd::Domains(r.map_err(|e| describe(&e)))
        });
    }

    fn load_selected(&self, sender: &ComponentSender<Self>) {
        let Some(name) = self.selected.clone() else {
            return;
        };
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.get_properties(&name).await }.await;
            ManagerCmd::Props(name, r.map_err(|e| describe(&e)))
        });
        let Some(name) = self.selected.clone() else {
            return;
        };
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list_applications(&name).await }.await;
            ManagerCmd::Apps(name, r.map_err(|e| describe(&e)))
        });
    }

    /// Run `call` in the background; its result is shown as done or as an error.
    fn run<F>(&self, sender: &ComponentSender<Self>, what: String, call: F)
    where
        F: std::future::Future<Output = Result<(), bulkhead_api::Error>> + Send + 'static,
    {
        sender.oneshot_command(async move {
            ManagerCmd::Done(what, call.await.map_err(|e| describe(&e)))
        });
    }

    fn show_error(&self, w: &ManagerWidgets, sender: &ComponentSender<Self>, msg: String) {
        tracing::warn!(error = %msg, "shown to the user");
        w.errors.show(&msg);
        let _ = sender.output(ManagerOutput::Error(msg));
    }

    fn create_form(w: &ManagerWidgets) -> CreateForm {
        let template = dropdown_text(&w.create.template);
        CreateForm {
            name: w.create.name.text().to_string(),
            class: dropdown_text(&w.create.class),
            template: if template == NONE_ENTRY {
                String::new()
            } else {
                template
            },
            label: dropdown_text(&w.create.label),
        }
    }

    fn validate_create(&self, w: &ManagerWidgets, sender: &ComponentSender<Self>) {
        let form = Self::create_form(w);
        let problem = create_problem(&form, &self.names());
        // an empty name is no error yet, just not ready
        let shown = problem.as_deref().filter(|_| !form.name.is_empty());
        show_problem(&w.create.problem, shown);
        w.create.button.set_sensitive(problem.is_none());
        if problem.is_some() && !form.name.is_empty() {
            w.create.name.add_css_class("error");
        } else {
            w.create.name.remove_css_class("error");
        }
        let _ = sender.output(ManagerOutput::CreateValidation(problem));
    }

    fn validate_clone(&self, w: &ManagerWidgets) {
        let dest = w.clone.name.text().to_string();
        let problem = clone_problem(self.selected.as_deref(), &dest, &self.names());
        show_problem(
            &w.clone.problem,
            problem.as_deref().filter(|_| !dest.is_empty()),
        );
        w.clone.button.set_sensitive(problem.is_none());
    }

    fn update_buttons(&self, w: &ManagerWidgets) {
        let state = self.selected.as_deref().and_then(|n| self.state_of(n));
        for (a, b) in &w.actions {
            b.set_sensitive(state.is_some_and(|s| a.allowed_in(s)));
        }
        w.settings.apply.set_sensitive(self.selected.is_some());
        let title = self
            .selected
            .as_deref()
            .map(|n| format!("Settings of {n}"))
            .unwrap_or_else(|| "Select a domain".into());
        w.settings.title.set_text(&title);
        w.clone.title.set_text(&match &self.selected {
            Some(n) => format!("Clone {n} as"),
            None => "Select the domain to clone".into(),
        });
        self.validate_clone(w);
    }

    fn rebuild_list(&self, w: &mut ManagerWidgets, sender: &ComponentSender<Self>) {
        w.rebuilding.set(true);
        while let Some(child) = w.list.first_child() {
            w.list.remove(&child);
        }
        w.rows.clear();
        for d in &self.domains {
            let grid = gtk::Box::new(gtk::Orientation::Horizontal, 10);
            grid.set_margin_top(4);
            grid.set_margin_bottom(4);
            grid.set_margin_start(6);
            grid.set_margin_end(6);
            let swatch = gtk::Box::new(gtk::Orientation::Horizontal, 0);
            swatch.set_size_request(24, 24);
            swatch.set_valign(gtk::Align::Center);
            if !d.label.is_empty() {
                swatch.add_css_class(&style::label_class(&d.label));
            }
            let name = gtk::Label::new(Some(&d.name));
            name.add_css_class("domain-name");
            name.set_width_chars(14);
            name.set_xalign(0.0);
            let class = gtk::Label::new(Some(&d.class));
            class.set_width_chars(18);
            class.set_xalign(0.0);
            let badge = gtk::Box::new(gtk::Orientation::Horizontal, 0);
            badge.set_size_request(14, 14);
            badge.set_valign(gtk::Align::Center);
            badge.add_css_class(&style::state_class(&d.state));
            let state = gtk::Label::new(Some(&d.state));
            state.set_width_chars(9);
            state.set_xalign(0.0);
            let u = self.usage.get(&d.name).copied().unwrap_or_default();
            let mem = gtk::Label::new(Some(&format_bytes(u.mem)));
            mem.set_width_chars(9);
            mem.set_xalign(1.0);
            let cpu = gtk::Label::new(Some(&cpu_text(&u)));
            cpu.set_width_chars(7);
            cpu.set_xalign(1.0);
            for c in [
                swatch.upcast_ref::<gtk::Widget>(),
                name.upcast_ref(),
                class.upcast_ref(),
                badge.upcast_ref(),
                state.upcast_ref(),
                mem.upcast_ref(),
                cpu.upcast_ref(),
            ] {
                grid.append(c);
            }
            let row = gtk::ListBoxRow::new();
            row.set_child(Some(&grid));
            row.set_widget_name(&d.name);
            w.list.append(&row);
            if self.selected.as_deref() == Some(d.name.as_str()) {
                w.list.select_row(Some(&row));
            }
            w.rows.insert(
                d.name.clone(),
                RowWidgets {
                    row,
                    state,
                    badge,
                    mem,
                    cpu,
                },
            );
        }
        w.rebuilding.set(false);
        // the choices of the forms follow the list
        let names = self.names();
        let mut with_none = vec![NONE_ENTRY.to_owned()];
        with_none.extend(names.iter().cloned());
        let keep_netvm = dropdown_text(&w.settings.netvm);
        let keep_dispvm = dropdown_text(&w.settings.dispvm);
        set_strings(&w.settings.netvm_model, &with_none);
        set_strings(&w.settings.dispvm_model, &with_none);
        dropdown_select(&w.settings.netvm, &keep_netvm);
        dropdown_select(&w.settings.dispvm, &keep_dispvm);
        let keep_template = dropdown_text(&w.create.template);
        let first_fill = w.create.template_model.n_items() <= 1;
        let mut templates = vec![NONE_ENTRY.to_owned()];
        templates.extend(
            self.domains
                .iter()
                .filter(|d| d.class == "template")
                .map(|d| d.name.clone()),
        );
        set_strings(&w.create.template_model, &templates);
        if first_fill {
            // a new form: the first template is the likely choice
            w.create
                .template
                .set_selected(if templates.len() > 1 { 1 } else { 0 });
        } else {
            dropdown_select(&w.create.template, &keep_template);
        }
        self.update_buttons(w);
        self.validate_create(w, sender);
        let shown = self
            .domains
            .iter()
            .map(|d| (d.name.clone(), d.state.clone()))
            .collect();
        let _ = sender.output(ManagerOutput::Shown(shown));
    }

    fn update_row_state(&self, w: &ManagerWidgets, name: &str, state: &str) {
        if let Some(r) = w.rows.get(name) {
            r.state.set_text(state);
            r.badge
                .set_css_classes(&[style::state_class(state).as_str()]);
        }
    }

    fn fill_settings(&self, w: &ManagerWidgets) {
        let p = &self.props;
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
        dropdown_select(&w.settings.label, get("label"));
        let or_none = |v: &str| {
            if v.is_empty() {
                NONE_ENTRY.to_owned()
            } else {
                v.to_owned()
            }
        };
        dropdown_select(&w.settings.netvm, &or_none(get("netvm")));
        dropdown_select(&w.settings.dispvm, &or_none(get("default_dispvm")));
        dropdown_select(&w.settings.isolation, get("isolation"));
        if let Ok(m) = get("memory").parse::<f64>() {
            w.settings.memory.set_value(m);
        }
        if let Ok(v) = get("vcpus").parse::<f64>() {
            w.settings.vcpus.set_value(v);
        }
    }

    /// (property, value) pairs of the settings form that differ from the loaded ones.
    fn changed_settings(&self, w: &ManagerWidgets) -> Vec<(String, String)> {
        let none_is_empty = |s: String| if s == NONE_ENTRY { String::new() } else { s };
        let form = [
            ("label", dropdown_text(&w.settings.label)),
            ("netvm", none_is_empty(dropdown_text(&w.settings.netvm))),
            ("memory", w.settings.memory.value_as_int().to_string()),
            ("vcpus", w.settings.vcpus.value_as_int().to_string()),
            ("isolation", dropdown_text(&w.settings.isolation)),
            (
                "default_dispvm",
                none_is_empty(dropdown_text(&w.settings.dispvm)),
            ),
        ];
        form.into_iter()
            .filter(|(k, v)| self.props.get(*k).map(String::as_str).unwrap_or_default() != v)
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn fill_apps(
        &self,
        w: &ManagerWidgets,
        sender: &ComponentSender<Self>,
        domain: &str,
        apps: &[(String, String, String)],
    ) {
        while let Some(child) = w.apps.first_child() {
            w.apps.remove(&child);
        }
        w.apps_title.set_text(&if apps.is_empty() {
            format!("{domain} has no applications in its template's menu")
        } else {
            format!("Applications of {domain}")
        });
        for (id, name, _icon) in apps {
            let hb = gtk::Box::new(gtk::Orientation::Horizontal, 6);
            let l = gtk::Label::new(Some(name));
            l.set_hexpand(true);
            l.set_xalign(0.0);
            let run = gtk::Button::with_label("Start");
            let disp = gtk::Button::with_label("In disposable");
            for (b, disposable) in [(&run, false), (&disp, true)] {
                let s = sender.clone();
                let (d, i) = (domain.to_owned(), id.clone());
                b.connect_clicked(move |_| {
                    s.input(ManagerMsg::Launch {
                        domain: d.clone(),
                        desktop_id: i.clone(),
                        disposable,
                    })
                });
            }
            hb.append(&l);
            hb.append(&run);
            hb.append(&disp);
            w.apps.append(&hb);
        }
        let ids = apps.iter().map(|(id, _, _)| id.clone()).collect();
        let _ = sender.output(ManagerOutput::Applications(domain.to_owned(), ids));
    }

    fn poll_usage(&self, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        let running: Vec<String> = self
            .domains
            .iter()
            .filter(|d| matches!(d.state.as_str(), "running" | "paused" | "starting"))
            .map(|d| d.name.clone())
            .collect();
        sender.oneshot_command(async move {
            let mut out = Vec::new();
            if let Ok(p) = proxy(&conn).await {
                for n in running {
                    if let Ok((mem, cpu)) = p.get_usage(&n).await {
                        out.push((n, mem, cpu));
                    }
                }
            }
            ManagerCmd::Usage(out)
        });
    }
}

fn cpu_text(u: &Usage) -> String {
    match u.cpu_percent {
        Some(p) => format!("{p:.0}%"),
        None => "-".into(),
    }
}

/// Follow `StateChanged` and `Progress` until the component shuts down; a tick every
/// [`USAGE_PERIOD`] polls usage and every [`LIST_PERIOD`] reloads the list.
fn subscribe(conn: zbus::Connection, sender: &ComponentSender<ManagerWindow>) {
    sender.command(move |out, shutdown| {
        shutdown
            .register(async move {
                let p = match proxy(&conn).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = out.send(ManagerCmd::SignalsLost(describe(&e)));
                        return;
                    }
                };
                let streams = async {
                    Ok::<_, zbus::Error>((
                        p.receive_state_changed().await?,
                        p.receive_progress().await?,
                    ))
                };
                let (mut states, mut progress) = match streams.await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = out.send(ManagerCmd::SignalsLost(e.to_string()));
                        return;
                    }
                };
                let mut usage_tick = tokio::time::interval(USAGE_PERIOD);
                let mut list_tick = tokio::time::interval(LIST_PERIOD);
                loop {
                    let cmd = tokio::select! {
                        s = states.next() => match s.map(|s| s.args().map(|a| (a.name, a.state))) {
                            Some(Ok((n, st))) => ManagerCmd::StateChanged(n, st),
                            Some(Err(e)) => { tracing::debug!(error = %e, "bad StateChanged"); continue }
                            None => { let _ = out.send(ManagerCmd::SignalsLost("domaind went away".into())); return }
                        },
                        s = progress.next() => match s.map(|s| s.args().map(|a| (a.name, a.step, a.done, a.total))) {
                            Some(Ok((n, st, d, t))) => ManagerCmd::Progress(n, st, d, t),
                            Some(Err(e)) => { tracing::debug!(error = %e, "bad Progress"); continue }
                            None => return,
                        },
                        _ = usage_tick.tick() => ManagerCmd::UsageTick,
                        _ = list_tick.tick() => ManagerCmd::ListTick,
                    };
                    if out.send(cmd).is_err() {
                        return;
                    }
                }
            })
            .drop_on_shutdown()
    });
}

impl Component for ManagerWindow {
    type CommandOutput = ManagerCmd;
    type Input = ManagerMsg;
    type Output = ManagerOutput;
    type Init = ManagerInit;
    type Root = gtk::Window;
    type Widgets = ManagerWidgets;

    fn init_root() -> Self::Root {
        gtk::Window::builder()
            .title("Bulkhead domains")
            .default_width(1180)
            .default_height(680)
            .build()
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        style::install();
        let outer = margin_box(gtk::Orientation::Vertical, 6, 6);

        // toolbar
        let toolbar = gtk::Box::new(gtk::Orientation::Horizontal, 6);
        let mut actions = Vec::new();
        for a in DomainAction::ALL {
            let b = gtk::Button::with_label(a.label());
            b.set_sensitive(false);
            toolbar.append(&b);
            actions.push((a, b));
        }
        let spacer = gtk::Box::new(gtk::Orientation::Horizontal, 0);
        spacer.set_hexpand(true);
        toolbar.append(&spacer);
        let policy_btn = gtk::Button::with_label("Policy editor");
        let refresh_btn = gtk::Button::with_label("Reload");
        toolbar.append(&refresh_btn);
        toolbar.append(&policy_btn);
        outer.append(&toolbar);

        // domain list | tabs
        let paned = gtk::Paned::new(gtk::Orientation::Horizontal);
        paned.set_vexpand(true);
        let list = gtk::ListBox::new();
        list.set_selection_mode(gtk::SelectionMode::Single);
        let scroller = scrolled(&list);
        scroller.set_size_request(660, -1);
        paned.set_start_child(Some(&scroller));
        let notebook = gtk::Notebook::new();
        paned.set_end_child(Some(&notebook));
        outer.append(&paned);

        // settings tab
        let sgrid = form_grid();
        let stitle = gtk::Label::new(Some("Select a domain"));
        stitle.set_xalign(0.0);
        sgrid.attach(&stitle, 0, 0, 2, 1);
        let labels: Vec<&str> = Label::ALL.iter().map(|l| l.as_str()).collect();
        let slabel = strings(&labels);
        let netvm_model = gtk::StringList::new(&[NONE_ENTRY]);
        let snetvm = gtk::DropDown::new(Some(netvm_model.clone()), None::<gtk::Expression>);
        let smemory = gtk::SpinButton::with_range(
            *MEMORY_RANGE_MIB.start() as f64,
            *MEMORY_RANGE_MIB.end() as f64,
            64.0,
        );
        let svcpus = gtk::SpinButton::with_range(
            *VCPUS_RANGE.start() as f64,
            *VCPUS_RANGE.end() as f64,
            1.0,
        );
        let isolations: Vec<&str> = Isolation::ALL.iter().map(|i| i.as_str()).collect();
        let siso = strings(&isolations);
        let dispvm_model = gtk::StringList::new(&[NONE_ENTRY]);
        let sdisp = gtk::DropDown::new(Some(dispvm_model.clone()), None::<gtk::Expression>);
        field(&sgrid, 1, "Label", &slabel);
        field(&sgrid, 2, "Net domain", &snetvm);
        field(&sgrid, 3, "Memory (MiB)", &smemory);
        field(&sgrid, 4, "vCPUs", &svcpus);
        field(&sgrid, 5, "Isolation", &siso);
        field(&sgrid, 6, "Default disposable", &sdisp);
        let sapply = gtk::Button::with_label("Apply");
        sapply.set_sensitive(false);
        sgrid.attach(&sapply, 1, 7, 1, 1);
        notebook.append_page(&sgrid, Some(&gtk::Label::new(Some("Settings"))));

        // applications tab
        let apps_box = gtk::Box::new(gtk::Orientation::Vertical, 6);
        apps_box.set_margin_top(8);
        apps_box.set_margin_start(8);
        let apps_title = gtk::Label::new(Some("Select a domain"));
        apps_title.set_xalign(0.0);
        let apps = gtk::ListBox::new();
        apps.set_selection_mode(gtk::SelectionMode::None);
        let apps_scroll = scrolled(&apps);
        apps_scroll.set_vexpand(true);
        apps_box.append(&apps_title);
        apps_box.append(&apps_scroll);
        notebook.append_page(&apps_box, Some(&gtk::Label::new(Some("Applications"))));

        // create tab
        let cgrid = form_grid();
        let cname = gtk::Entry::new();
        cname.set_placeholder_text(Some("name, e.g. mail"));
        let classes: Vec<&str> = DomainClass::ALL.iter().map(|c| c.as_str()).collect();
        let cclass = strings(&classes);
        let template_model = gtk::StringList::new(&[NONE_ENTRY]);
        let ctemplate = gtk::DropDown::new(Some(template_model.clone()), None::<gtk::Expression>);
        let clabel = strings(&labels);
        field(&cgrid, 0, "Name", &cname);
        field(&cgrid, 1, "Class", &cclass);
        field(&cgrid, 2, "Template", &ctemplate);
        field(&cgrid, 3, "Label", &clabel);
        let cproblem = problem_label();
        cgrid.attach(&cproblem, 0, 4, 2, 1);
        let cbutton = gtk::Button::with_label("Create");
        cbutton.set_sensitive(false);
        cgrid.attach(&cbutton, 1, 5, 1, 1);
        notebook.append_page(&cgrid, Some(&gtk::Label::new(Some("Create"))));

        // clone tab
        let kgrid = form_grid();
        let ktitle = gtk::Label::new(Some("Select the domain to clone"));
        ktitle.set_xalign(0.0);
        kgrid.attach(&ktitle, 0, 0, 2, 1);
        let kname = gtk::Entry::new();
        field(&kgrid, 1, "New name", &kname);
        let kproblem = problem_label();
        kgrid.attach(&kproblem, 0, 2, 2, 1);
        let kbutton = gtk::Button::with_label("Clone");
        kbutton.set_sensitive(false);
        kgrid.attach(&kbutton, 1, 3, 1, 1);
        notebook.append_page(&kgrid, Some(&gtk::Label::new(Some("Clone"))));

        // progress and errors
        let progress = gtk::ProgressBar::new();
        progress.set_show_text(true);
        progress.set_visible(false);
        outer.append(&progress);
        let errors = {
            let s = sender.clone();
            ErrorBar::new(move || s.input(ManagerMsg::DismissError))
        };
        outer.append(&errors.bar);
        root.set_child(Some(&outer));

        // signals -> messages
        for (a, b) in &actions {
            let (s, a) = (sender.clone(), *a);
            let l = list.clone();
            b.connect_clicked(move |_| {
                if let Some(row) = l.selected_row() {
                    s.input(ManagerMsg::Action(a, row.widget_name().to_string()));
                }
            });
        }
        let rebuilding = std::rc::Rc::new(std::cell::Cell::new(false));
        {
            let s = sender.clone();
            let r = rebuilding.clone();
            list.connect_row_selected(move |_, row| {
                if !r.get() {
                    s.input(ManagerMsg::Select(row.map(|r| r.widget_name().to_string())));
                }
            });
        }
        let s = sender.clone();
        refresh_btn.connect_clicked(move |_| s.input(ManagerMsg::Refresh));
        let s = sender.clone();
        policy_btn.connect_clicked(move |_| s.input(ManagerMsg::OpenPolicyEditor));
        let s = sender.clone();
        sapply.connect_clicked(move |_| s.input(ManagerMsg::ApplySettings));
        let s = sender.clone();
        cname.connect_changed(move |_| s.input(ManagerMsg::CreateChanged));
        for d in [&cclass, &ctemplate, &clabel] {
            let s = sender.clone();
            d.connect_selected_notify(move |_| s.input(ManagerMsg::CreateChanged));
        }
        let s = sender.clone();
        cbutton.connect_clicked(move |_| s.input(ManagerMsg::Create));
        let s = sender.clone();
        kname.connect_changed(move |_| s.input(ManagerMsg::CloneChanged));
        let s = sender.clone();
        kbutton.connect_clicked(move |_| s.input(ManagerMsg::Clone));

        let model = ManagerWindow {
            conn: init.conn,
            domains: Vec::new(),
            selected: None,
            usage: HashMap::new(),
            props: HashMap::new(),
            policy: None,
        };
        subscribe(model.conn.clone(), &sender);
        model.refresh(&sender);
        let widgets = ManagerWidgets {
            list,
            rows: HashMap::new(),
            actions,
            progress,
            errors,
            settings: Settings {
                title: stitle,
                label: slabel,
                netvm: snetvm,
                netvm_model,
                memory: smemory,
                vcpus: svcpus,
                isolation: siso,
                dispvm: sdisp,
                dispvm_model,
                apply: sapply,
            },
            apps_title,
            apps,
            create: CreateWidgets {
                name: cname,
                class: cclass,
                template: ctemplate,
                template_model,
                label: clabel,
                problem: cproblem,
                button: cbutton,
            },
            clone: CloneWidgets {
                title: ktitle,
                name: kname,
                problem: kproblem,
                button: kbutton,
            },
            tabs: notebook,
            rebuilding,
        };
        ComponentParts { model, widgets }
    }

    fn update_with_view(
        &mut self,
        w: &mut Self::Widgets,
        msg: ManagerMsg,
        sender: ComponentSender<Self>,
        root: &Self::Root,
    ) {
        match msg {
            ManagerMsg::Refresh => self.refresh(&sender),
            ManagerMsg::Select(name) => {
                if let Some(n) = &name {
                    if let Some(r) = w.rows.get(n) {
                        if w.list.selected_row().as_ref() != Some(&r.row) {
                            w.rebuilding.set(true);
                            w.list.select_row(Some(&r.row));
                            w.rebuilding.set(false);
                        }
                    }
                }
                self.selected = name;
                self.props.clear();
                self.update_buttons(w);
                self.load_selected(&sender);
            }
            ManagerMsg::Action(action, name) => {
                let conn = self.conn.clone();
                let what = format!("{} {name}", action.label().to_lowercase());
                if action == DomainAction::Start {
                    w.progress.set_fraction(0.0);
                    w.progress.set_text(Some(&format!("{name}: starting")));
                    w.progress.set_visible(true);
                }
                self.run(&sender, what, async move {
                    let p = proxy(&conn).await?;
                    match action {
                        DomainAction::Start => p.start(&name).await,
                        DomainAction::Shutdown => p.shutdown(&name, 0).await,
                        DomainAction::Kill => p.kill(&name).await,
                        DomainAction::Pause => p.pause(&name).await,
                        DomainAction::Unpause => p.unpause(&name).await,
                        DomainAction::Remove => p.remove(&name).await,
                    }
                });
            }
            ManagerMsg::SetCreateForm(f) => {
                w.tabs.set_current_page(Some(ManagerTab::Create.page()));
                w.create.name.set_text(&f.name);
                dropdown_select(&w.create.class, &f.class);
                dropdown_select(
                    &w.create.template,
                    if f.template.is_empty() {
                        NONE_ENTRY
                    } else {
                        &f.template
                    },
                );
                dropdown_select(&w.create.label, &f.label);
                self.validate_create(w, &sender);
            }
            ManagerMsg::CreateChanged => self.validate_create(w, &sender),
            ManagerMsg::Create => {
                let f = Self::create_form(w);
                if let Some(p) = create_problem(&f, &self.names()) {
                    self.show_error(w, &sender, p);
                    return;
                }
                let conn = self.conn.clone();
                w.create.name.set_text("");
                self.run(&sender, format!("create {}", f.name), async move {
                    proxy(&conn)
                        .await?
                        .create(&f.name, &f.class, &f.template, &f.label, HashMap::new())
                        .await
                });
            }
            ManagerMsg::SetCloneName(n) => {
                w.tabs.set_current_page(Some(ManagerTab::Clone.page()));
                w.clone.name.set_text(&n);
                self.validate_clone(w);
            }
            ManagerMsg::CloneChanged => self.validate_clone(w),
            ManagerMsg::Clone => {
                let dest = w.clone.name.text().to_string();
                let source = self.selected.clone();
                if let Some(p) = clone_problem(source.as_deref(), &dest, &self.names()) {
                    self.show_error(w, &sender, p);
                    return;
                }
                let Some(source) = source else { return };
                let conn = self.conn.clone();
                w.clone.name.set_text("");
                self.run(&sender, format!("clone {source} as {dest}"), async move {
                    proxy(&conn).await?.clone_domain(&source, &dest).await
                });
            }
            ManagerMsg::SetSettings(values) => {
                w.tabs.set_current_page(Some(ManagerTab::Settings.page()));
                let or_none = |v: &str| {
                    if v.is_empty() {
                        NONE_ENTRY.to_owned()
                    } else {
                        v.to_owned()
                    }
                };
                for (k, v) in values {
                    match k.as_str() {
                        "label" => dropdown_select(&w.settings.label, &v),
                        "netvm" => dropdown_select(&w.settings.netvm, &or_none(&v)),
                        "default_dispvm" => dropdown_select(&w.settings.dispvm, &or_none(&v)),
                        "isolation" => dropdown_select(&w.settings.isolation, &v),
                        "memory" | "vcpus" => match v.parse::<f64>() {
                            Ok(n) if k == "memory" => w.settings.memory.set_value(n),
                            Ok(n) => w.settings.vcpus.set_value(n),
                            Err(_) => {
                                self.show_error(w, &sender, format!("{k}: '{v}' is not a number"))
                            }
                        },
                        other => self.show_error(
                            w,
                            &sender,
                            format!("the settings form has no field '{other}'"),
                        ),
                    }
                }
            }
            ManagerMsg::ApplySettings => {
                let Some(name) = self.selected.clone() else {
                    return;
                };
                let changes = self.changed_settings(w);
                if changes.is_empty() {
                    return;
                }
                let conn = self.conn.clone();
                let what = format!(
                    "set {} of {name}",
                    changes
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.run(&sender, what, async move {
                    let p = proxy(&conn).await?;
                    for (k, v) in changes {
                        p.set_property(&name, &k, &v).await?;
                    }
                    Ok(())
                });
            }
            ManagerMsg::Launch {
                domain,
                desktop_id,
                disposable,
            } => {
                let target = if disposable {
                    match self.props.get("default_dispvm").filter(|v| !v.is_empty()) {
                        Some(base) if self.selected.as_deref() == Some(domain.as_str()) => {
                            format!("@dispvm:{base}")
                        }
                        _ => "@dispvm".to_owned(),
                    }
                } else {
                    domain.clone()
                };
                let conn = self.conn.clone();
                let what = format!("start {desktop_id} in {target}");
                self.run(&sender, what, async move {
                    proxy(&conn)
                        .await?
                        .run_application(&target, &desktop_id)
                        .await
                });
            }
            ManagerMsg::DismissError => w.errors.hide(),
            ManagerMsg::ShowTab(t) => w.tabs.set_current_page(Some(t.page())),
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
        }
    }

    fn update_cmd_with_view(
        &mut self,
        w: &mut Self::Widgets,
        msg: ManagerCmd,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match msg {
            ManagerCmd::Domains(Ok(d)) => {
                if d != self.domains {
                    self.domains = d;
                    if let Some(s) = &self.selected {
                        if !self.domains.iter().any(|d| &d.name == s) {
                            self.selected = None;
                        }
                    }
                    self.rebuild_list(w, &sender);
                }
            }
            ManagerCmd::ListTick => self.refresh(&sender),
            ManagerCmd::Domains(Err(e)) => self.show_error(w, &sender, e),
            ManagerCmd::UsageTick => self.poll_usage(&sender),
            ManagerCmd::Usage(v) => {
                let now = Instant::now();
                for (name, mem, cpu) in v {
                    let u = self.usage.entry(name.clone()).or_default();
                    u.cpu_percent = match u.at {
                        Some(t) if cpu >= u.cpu_ns => {
                            let wall = now.duration_since(t).as_nanos() as f64;
                            (wall > 0.0).then(|| (cpu - u.cpu_ns) as f64 * 100.0 / wall)
                        }
                        _ => None,
                    };
                    u.mem = mem;
                    u.cpu_ns = cpu;
                    u.at = Some(now);
                    if let Some(r) = w.rows.get(&name) {
                        r.mem.set_text(&format_bytes(mem));
                        r.cpu.set_text(&cpu_text(u));
                    }
                }
            }
            ManagerCmd::StateChanged(name, state) => {
                if let Some(d) = self.domains.iter_mut().find(|d| d.name == name) {
                    d.state = state.clone();
                }
                self.update_row_state(w, &name, &state);
                if state != "starting"
                    && w.progress
                        .text()
                        .is_some_and(|t| t.starts_with(&format!("{name}:")))
                {
                    w.progress.set_visible(false);
                }
                if state == "halted" {
                    self.usage.remove(&name);
                    if let Some(r) = w.rows.get(&name) {
                        r.mem.set_text("-");
                        r.cpu.set_text("-");
                    }
                }
                self.update_buttons(w);
                let shown = self
                    .domains
                    .iter()
                    .map(|d| (d.name.clone(), d.state.clone()))
                    .collect();
                let _ = sender.output(ManagerOutput::Shown(shown));
                // a new domain (a disposable) appears only in a reload
                if !w.rows.contains_key(&name) {
                    self.refresh(&sender);
                }
            }
            ManagerCmd::Progress(name, step, done, total) => {
                let frac = if total > 0 {
                    f64::from(done.min(total)) / f64::from(total)
                } else {
                    0.0
                };
                w.progress.set_fraction(frac);
                w.progress
                    .set_text(Some(&format!("{name}: {step} ({done}/{total})")));
                w.progress.set_visible(done < total || total == 0);
                let _ = sender.output(ManagerOutput::Progress(name, step, done, total));
            }
            ManagerCmd::Props(name, r) => {
                if self.selected.as_deref() != Some(name.as_str()) {
                    return;
                }
                match r {
                    Ok(p) => {
                        self.props = p;
                        self.fill_settings(w);
                        let _ = sender.output(ManagerOutput::SettingsLoaded(name));
                    }
                    Err(e) => self.show_error(w, &sender, e),
                }
            }
            ManagerCmd::Apps(name, r) => {
                if self.selected.as_deref() != Some(name.as_str()) {
                    return;
                }
                match r {
                    Ok(apps) => self.fill_apps(w, &sender, &name, &apps),
                    Err(e) => {
                        self.fill_apps(w, &sender, &name, &[]);
                        w.apps_title
                            .set_text(&format!("No applications for {name}: {e}"));
                    }
                }
            }
            ManagerCmd::Done(what, r) => {
                if what.starts_with("start ") {
                    w.progress.set_visible(false);
                }
                match r {
                    Ok(()) => {
                        let _ = sender.output(ManagerOutput::Done(what));
                    }
                    Err(e) => self.show_error(w, &sender, format!("{what}: {e}")),
                }
                self.refresh(&sender);
                self.load_selected(&sender);
            }
            ManagerCmd::SignalsLost(e) => self.show_error(
                w,
                &sender,
                format!("live updates stopped ({e}); use Reload"),
            ),
        }
    }
}
