//! The domain list and the toolbar's lifecycle buttons, both relm4 factories.
//!
//! [`DomainRow`]: one row of the list (label colour, name, class, state badge and text,
//! memory, CPU). The window changes a row's model through the factory's guard and the row's
//! `#[watch]` attributes show it; [`reconcile`] brings the rows in line with a new list.
//!
//! [`ActionButton`]: one lifecycle action, sensitive when the selected domain's state allows
//! it; a click reports the action with the domain it was meant for.

use std::time::Instant;

use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;

use bulkhead_api::DomainInfo;

use crate::client::format_bytes;
use crate::style;

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

/// Memory and CPU of a running domain, as last polled.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub mem: u64,
    pub cpu_ns: u64,
    pub at: Option<Instant>,
    pub cpu_percent: Option<f64>,
}

impl Usage {
    /// Take a new sample (`cpu` in ns); the CPU share is computed from the previous one.
    pub fn sample(&mut self, mem: u64, cpu: u64, now: Instant) {
        self.cpu_percent = match self.at {
            Some(t) if cpu >= self.cpu_ns => {
                let wall = now.duration_since(t).as_nanos() as f64;
                (wall > 0.0).then(|| (cpu - self.cpu_ns) as f64 * 100.0 / wall)
            }
            _ => None,
        };
        self.mem = mem;
        self.cpu_ns = cpu;
        self.at = Some(now);
    }

    fn cpu_text(&self) -> String {
        match self.cpu_percent {
            Some(p) => format!("{p:.0}%"),
            None => "-".into(),
        }
    }
}

/// One row of the domain list.
#[derive(Debug)]
pub struct DomainRow {
    pub info: DomainInfo,
    pub usage: Usage,
}

impl DomainRow {
    fn swatch_classes(&self) -> Vec<String> {
        if self.info.label.is_empty() {
            Vec::new()
        } else {
            vec![style::label_class(&self.info.label)]
        }
    }
}

fn refs(classes: &[String]) -> Vec<&str> {
    classes.iter().map(String::as_str).collect()
}

#[relm4::factory(pub)]
impl FactoryComponent for DomainRow {
    type Init = (DomainInfo, Usage);
    type Input = ();
    type Output = ();
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        gtk::ListBoxRow {
            // the list reports a selection by this name
            set_widget_name: &self.info.name,

            gtk::Box {
                set_orientation: gtk::Orientation::Horizontal,
                set_spacing: 10,
                set_margin_top: 4,
                set_margin_bottom: 4,
                set_margin_start: 6,
                set_margin_end: 6,

                gtk::Box {
                    set_size_request: (24, 24),
                    set_valign: gtk::Align::Center,
                    #[watch]
                    set_css_classes: &refs(&self.swatch_classes()),
                },
                gtk::Label {
                    set_label: &self.info.name,
                    add_css_class: "domain-name",
                    set_width_chars: 14,
                    set_xalign: 0.0,
                },
                gtk::Label {
                    #[watch]
                    set_label: &self.info.class,
                    set_width_chars: 18,
                    set_xalign: 0.0,
                },
                gtk::Box {
                    set_size_request: (14, 14),
                    set_valign: gtk::Align::Center,
                    #[watch]
                    set_css_classes: &[style::state_class(&self.info.state).as_str()],
                },
                gtk::Label {
                    #[watch]
                    set_label: &self.info.state,
                    set_width_chars: 9,
                    set_xalign: 0.0,
                },
                gtk::Label {
                    #[watch]
                    set_label: &format_bytes(self.usage.mem),
                    set_width_chars: 9,
                    set_xalign: 1.0,
                },
                gtk::Label {
                    #[watch]
                    set_label: &self.usage.cpu_text(),
                    set_width_chars: 7,
                    set_xalign: 1.0,
                },
            }
        }
    }

    fn init_model(
        (info, usage): Self::Init,
        _index: &DynamicIndex,
        _sender: FactorySender<Self>,
    ) -> Self {
        Self { info, usage }
    }
}

/// Make `rows` show `domains` (in that order): in place when the same domains stay at the
/// same places, else made anew. Removing or moving the selected row makes the list report a
/// selection of nothing: the window blocks that signal's handler meanwhile.
pub fn reconcile(
    rows: &mut FactoryVecDeque<DomainRow>,
    domains: &[DomainInfo],
    usage: impl Fn(&str) -> Usage,
) {
    let mut g = rows.guard();
    let same_places =
        g.len() == domains.len() && g.iter().zip(domains).all(|(r, d)| r.info.name == d.name);
    if same_places {
        for (r, d) in g.iter_mut().zip(domains) {
            r.info = d.clone();
        }
    } else {
        g.clear();
        for d in domains {
            g.push_back((d.clone(), usage(&d.name)));
        }
    }
}

/// A toolbar button for one lifecycle action.
#[derive(Debug)]
pub struct ActionButton {
    action: DomainAction,
    /// The selected domain and its state.
    pub target: Option<(String, String)>,
}

#[derive(Debug)]
pub struct Clicked;

#[relm4::factory(pub)]
impl FactoryComponent for ActionButton {
    type Init = DomainAction;
    type Input = Clicked;
    /// The action and the domain it is for.
    type Output = (DomainAction, String);
    type CommandOutput = ();
    type ParentWidget = gtk::Box;

    view! {
        gtk::Button {
            set_label: self.action.label(),
            #[watch]
            set_sensitive: self
                .target
                .as_ref()
                .is_some_and(|(_, state)| self.action.allowed_in(state)),
            connect_clicked => Clicked,
        }
    }

    fn init_model(action: Self::Init, _index: &DynamicIndex, _sender: FactorySender<Self>) -> Self {
        Self {
            action,
            target: None,
        }
    }

    fn update(&mut self, Clicked: Self::Input, sender: FactorySender<Self>) {
        if let Some((name, _)) = &self.target {
            let _ = sender.output((self.action, name.clone()));
        }
    }
}
