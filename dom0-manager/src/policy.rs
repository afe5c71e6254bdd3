//! The policy editor (relm4 component [`PolicyEditor`]).
//!
//! "Files" (`files`): the policy files in evaluation order (`ListPolicyFiles`); the
//! selected one in a text view; every error of the text at `file:line` under it and its
//! lines highlighted, checked by domaind's engine (`CheckPolicyText`) 300 ms after the last
//! keystroke; Save writes it atomically (`WritePolicyFile`, which refuses text with errors).
//! "Common rules" (`simple`): the simple view ([`crate::simple_policy`]) writing the same
//! files. Each tab is its own component; the editor holds them, the tab shown and the error
//! bar. Under them, "Last call from A to B" shows which rule decided the newest call between
//! two domains (`LastDecision`).

mod files;
mod simple;

use std::time::Duration;

use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{
    Component, ComponentController, ComponentParts, ComponentSender, Controller, RelmWidgetExt,
};

use crate::simple_policy::{Kind, SimpleRule};
use crate::style;
use crate::widgets::{Dismissed, ErrorBar, ErrorBarMsg};
use files::{FilesMsg, FilesPanel};
use simple::{SimpleMsg, SimplePanel};

/// Quiet time after the last edit before the text is checked.
pub const CHECK_DELAY: Duration = Duration::from_millis(300);

/// What [`PolicyEditor`] is started with.
pub struct PolicyInit {
    /// A connection to the bus domaind serves on.
    pub conn: zbus::Connection,
}

/// Messages [`PolicyEditor`] accepts.
#[derive(Debug)]
pub enum PolicyMsg {
    /// Reload the file list (and the simple view).
    Reload,
    /// Open a policy file in the text view.
    Open(String),
    /// Replace the text in the view (as if typed; it is checked after [`CHECK_DELAY`]).
    SetText(String),
    /// The text view changed.
    TextChanged,
    /// Save the open file.
    Save,
    /// Start a new file with this name (`NN-name.policy`).
    NewFile(String),
    /// Delete the open file (asks first).
    Delete,
    /// The user confirmed deleting this file: delete it.
    DeleteConfirmed(String),
    /// Simple view: add a rule first in the kind's file.
    SimpleAdd { kind: Kind, rule: SimpleRule },
    /// Simple view: remove the kind's `index`th rule.
    SimpleRemove { kind: Kind, index: usize },
    /// Show the decision of the newest call from the first domain to the second.
    ShowLastDecision(String, String),
    /// "Show" was clicked: the domains are in the entries.
    ShowLastDecisionClicked,
    /// Hide the error bar.
    DismissError,
    /// What a tab reports to the editor (sent by the tabs only).
    Panel(PolicyEvent),
}

/// What the editor reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOutput {
    /// These files are listed, in order.
    Files(Vec<String>),
    /// A file was opened.
    Opened(String),
    /// The text was checked: every error as `file:line: message` (empty: valid).
    Checked(Vec<String>),
    /// The file was written.
    Saved(String),
    /// Asked whether to delete this file.
    ConfirmDelete(String),
    /// The file was deleted.
    Deleted(String),
    /// An error is shown in the error bar.
    Error(String),
    /// The last decision between two domains is shown (this text).
    LastDecision(String),
}

/// What a tab reports to the editor: made by the tabs only (the field is private).
#[derive(Debug)]
pub struct PolicyEvent(Ev);

/// What a tab reports to the editor.
#[derive(Debug)]
enum Ev {
    /// Show this in the error bar.
    Error(String),
    /// Report this to the editor's owner.
    Output(PolicyOutput),
    /// A policy file was written: reload both tabs, and open this file again if it is open
    /// and not modified.
    Written(Option<String>),
    /// The user switched to this page.
    Page(u32),
}

impl From<Ev> for PolicyMsg {
    fn from(e: Ev) -> Self {
        PolicyMsg::Panel(PolicyEvent(e))
    }
}

const PAGE_FILES: u32 = 0;
const PAGE_SIMPLE: u32 = 1;

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The policy editor.
pub struct PolicyEditor {
    conn: zbus::Connection,
    files: Controller<FilesPanel>,
    simple: Controller<SimplePanel>,
    errors: Controller<ErrorBar>,
    page: u32,
    last_source: gtk::EntryBuffer,
    last_target: gtk::EntryBuffer,
    last_text: String,
}

/// Results of the editor's own calls.
#[derive(Debug)]
pub enum PolicyCmd {
    /// (source, target, LastDecision's answer or why not).
    LastDecision(
        String,
        String,
        Result<(String, String, String, u64), String>,
    ),
}

/// How the last decision reads: `SERVICE from A to B: OUTCOME, DETAIL, N s ago`.
pub fn last_decision_text(
    source: &str,
    target: &str,
    (service, outcome, detail, at): &(String, String, String, u64),
    now: u64,
) -> String {
    format!(
        "{service} from {source} to {target}: {outcome} ({detail}), {} s ago",
        now.saturating_sub(*at)
    )
}

impl PolicyEditor {
    fn reload(&self) {
        self.files.emit(FilesMsg::Reload);
        self.simple.emit(SimpleMsg::Reload);
    }

    fn show_error(&self, sender: &ComponentSender<Self>, msg: String) {
        tracing::warn!(error = %msg, "shown to the user");
        self.errors.emit(ErrorBarMsg::Show(msg.clone()));
        let _ = sender.output(PolicyOutput::Error(msg));
    }
}

#[relm4::component(pub)]
impl Component for PolicyEditor {
    type CommandOutput = PolicyCmd;
    type Input = PolicyMsg;
    type Output = PolicyOutput;
    type Init = PolicyInit;

    view! {
        gtk::Window {
            set_title: Some("Bulkhead policy"),
            set_default_width: 1000,
            set_default_height: 640,

            gtk::Box {
                set_orientation: gtk::Orientation::Vertical,
                set_spacing: 6,
                set_margin_all: 6,

                gtk::Notebook {
                    set_vexpand: true,
                    append_page: (model.files.widget(), Some(&gtk::Label::new(Some("Files")))),
                    append_page: (
                        model.simple.widget(),
                        Some(&gtk::Label::new(Some("Common rules"))),
                    ),
                    #[watch]
                    #[block_signal(page_switched)]
                    set_current_page: Some(model.page),
                    connect_switch_page[sender] => move |_, _, page| {
                        sender.input(PolicyMsg::Panel(PolicyEvent(Ev::Page(page))));
                    } @page_switched,
                },

                gtk::Box {
                    set_orientation: gtk::Orientation::Horizontal,
                    set_spacing: 6,
                    gtk::Label { set_label: "Last call from" },
                    gtk::Entry {
                        set_placeholder_text: Some("work"),
                        set_buffer: &model.last_source,
                    },
                    gtk::Label { set_label: "to" },
                    gtk::Entry {
                        set_placeholder_text: Some("vault"),
                        set_buffer: &model.last_target,
                    },
                    gtk::Button {
                        set_label: "Show",
                        connect_clicked => PolicyMsg::ShowLastDecisionClicked,
                    },
                    gtk::Label {
                        set_xalign: 0.0,
                        set_hexpand: true,
                        set_wrap: true,
                        set_selectable: true,
                        #[watch]
                        set_text: &model.last_text,
                    },
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
        let model = PolicyEditor {
            conn: init.conn.clone(),
            last_source: gtk::EntryBuffer::default(),
            last_target: gtk::EntryBuffer::default(),
            last_text: String::new(),
            files: FilesPanel::builder()
                .launch(init.conn.clone())
                .forward(input, |m| m),
            simple: SimplePanel::builder()
                .launch(init.conn)
                .forward(input, |m| m),
            errors: ErrorBar::builder()
                .launch(())
                .forward(input, |Dismissed| PolicyMsg::DismissError),
            page: PAGE_FILES,
        };
        model.reload();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: PolicyMsg, sender: ComponentSender<Self>, _root: &Self::Root) {
        match msg {
            PolicyMsg::Reload => self.reload(),
            PolicyMsg::Open(name) => {
                self.page = PAGE_FILES;
                self.files.emit(FilesMsg::Open(name));
            }
            PolicyMsg::SetText(t) => {
                self.page = PAGE_FILES;
                self.files.emit(FilesMsg::SetText(t));
            }
            PolicyMsg::TextChanged => self.files.emit(FilesMsg::TextChanged),
            PolicyMsg::Save => self.files.emit(FilesMsg::Save),
            PolicyMsg::Delete => self.files.emit(FilesMsg::Delete),
            PolicyMsg::DeleteConfirmed(name) => self.files.emit(FilesMsg::DeleteConfirmed(name)),
            PolicyMsg::NewFile(name) => {
                self.page = PAGE_FILES;
                self.files.emit(FilesMsg::NewFile(name));
            }
            PolicyMsg::SimpleAdd { kind, rule } => {
                self.page = PAGE_SIMPLE;
                self.simple.emit(SimpleMsg::Add { kind, rule });
            }
            PolicyMsg::SimpleRemove { kind, index } => {
                self.page = PAGE_SIMPLE;
                self.simple.emit(SimpleMsg::Remove { kind, index });
            }
            PolicyMsg::ShowLastDecisionClicked => {
                let (s, t) = (self.last_source.text(), self.last_target.text());
                sender.input(PolicyMsg::ShowLastDecision(
                    s.trim().to_owned(),
                    t.trim().to_owned(),
                ));
            }
            PolicyMsg::ShowLastDecision(source, target) => {
                self.last_source.set_text(&source);
                self.last_target.set_text(&target);
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r = async {
                        crate::client::proxy(&conn)
                            .await?
                            .last_decision(&source, &target)
                            .await
                    }
                    .await;
                    PolicyCmd::LastDecision(
                        source,
                        target,
                        r.map_err(|e| crate::client::describe(&e)),
                    )
                });
            }
            PolicyMsg::DismissError => self.errors.emit(ErrorBarMsg::Hide),
            PolicyMsg::Panel(PolicyEvent(e)) => match e {
                Ev::Error(m) => self.show_error(&sender, m),
                Ev::Output(o) => {
                    let _ = sender.output(o);
                }
                Ev::Written(reopen) => {
                    self.reload();
                    if let Some(f) = reopen {
                        self.files.emit(FilesMsg::Reopen(f));
                    }
                }
                Ev::Page(p) => self.page = p,
            },
        }
    }

    fn update_cmd(&mut self, msg: PolicyCmd, sender: ComponentSender<Self>, _root: &Self::Root) {
        match msg {
            PolicyCmd::LastDecision(source, target, r) => {
                self.last_text = match r {
                    Ok(d) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        last_decision_text(&source, &target, &d, now)
                    }
                    Err(e) => e,
                };
                let _ = sender.output(PolicyOutput::LastDecision(self.last_text.clone()));
            }
        }
    }
}
