//! The policy editor (relm4 component [`PolicyEditor`]).
//!
//! "Files": the policy files in evaluation order (`ListPolicyFiles`); the selected one in a
//! text view; every error of the text at `file:line` under it and its lines highlighted,
//! checked by domaind's engine (`CheckPolicyText`) 300 ms after the last keystroke; Save
//! writes it atomically (`WritePolicyFile`, which refuses text with errors). "Common rules":
//! the simple view ([`crate::simple_policy`]) writing the same files.

use std::collections::HashMap;
use std::time::Duration;

use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{Component, ComponentController, ComponentParts, ComponentSender, Controller};

use crate::client::{describe, proxy};
use crate::simple_policy::{Kind, SimpleFile, SimpleRule, ACTIONS};
use crate::style;
use crate::widgets::{margin_box, scrolled, Dismissed, ErrorBar, ErrorBarMsg};

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
    /// Simple view: add a rule first in the kind's file.
    SimpleAdd { kind: Kind, rule: SimpleRule },
    /// Simple view: remove the kind's `index`th rule.
    SimpleRemove { kind: Kind, index: usize },
    /// Hide the error bar.
    DismissError,
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
    /// An error is shown in the error bar.
    Error(String),
}

/// Results of background D-Bus work.
#[derive(Debug)]
pub enum PolicyCmd {
    Files(Result<Vec<(String, String)>, String>),
    Text(String, Result<String, String>),
    CheckDue(u64),
    Checked(u64, Result<Vec<(String, u32, String)>, String>),
    Saved(String, Result<(), String>),
    Simple(Kind, Result<String, String>),
    SimpleSaved(Kind, Result<(), String>),
}

/// The policy editor.
pub struct PolicyEditor {
    conn: zbus::Connection,
    files: Vec<(String, String)>,
    open: Option<String>,
    /// Bumped on every edit; a check result for an older generation is dropped.
    generation: u64,
    errors: Vec<(String, u32, String)>,
    /// The loaded text differs from the buffer.
    modified: bool,
    /// Set while the buffer is filled by the program, not by typing.
    loading: bool,
    simple: HashMap<Kind, SimpleFile>,
}

struct SimpleSection {
    rules: gtk::ListBox,
    source: gtk::Entry,
    target: gtk::Entry,
    action: gtk::DropDown,
}

/// Widgets of [`PolicyEditor`].
pub struct PolicyWidgets {
    files: gtk::ListBox,
    title: gtk::Label,
    buffer: gtk::TextBuffer,
    errors: gtk::Label,
    save: gtk::Button,
    error_bar: Controller<ErrorBar>,
    simple: HashMap<Kind, SimpleSection>,
    pages: gtk::Notebook,
    /// Guards against row-selected while the list is rebuilt.
    rebuilding: std::rc::Rc<std::cell::Cell<bool>>,
}

const ERROR_TAG: &str = "policy-error-line";
const PAGE_FILES: u32 = 0;
const PAGE_SIMPLE: u32 = 1;

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl PolicyEditor {
    fn reload(&self, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list_policy_files().await }.await;
            PolicyCmd::Files(r.map_err(|e| describe(&e)))
        });
        for kind in Kind::ALL {
            self.load_simple(sender, kind);
        }
    }

    fn load_simple(&self, sender: &ComponentSender<Self>, kind: Kind) {
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
            PolicyCmd::Simple(kind, r.map_err(|e| describe(&e)))
        });
    }

    fn show_error(&self, w: &PolicyWidgets, sender: &ComponentSender<Self>, msg: String) {
        tracing::warn!(error = %msg, "shown to the user");
        w.error_bar.emit(ErrorBarMsg::Show(msg.clone()));
        let _ = sender.output(PolicyOutput::Error(msg));
    }

    fn text(w: &PolicyWidgets) -> String {
        let (a, b) = w.buffer.bounds();
        w.buffer.text(&a, &b, true).to_string()
    }

    fn set_text(&mut self, w: &PolicyWidgets, text: &str) {
        self.loading = true;
        w.buffer.set_text(text);
        self.loading = false;
    }

    fn schedule_check(&mut self, sender: &ComponentSender<Self>) {
        self.generation += 1;
        let g = self.generation;
        sender.oneshot_command(async move {
            tokio::time::sleep(CHECK_DELAY).await;
            PolicyCmd::CheckDue(g)
        });
    }

    fn show_errors(&self, w: &PolicyWidgets) {
        let (a, b) = w.buffer.bounds();
        w.buffer.remove_tag_by_name(ERROR_TAG, &a, &b);
        let name = self.open.clone().unwrap_or_default();
        let mut lines = Vec::new();
        for (file, line, msg) in &self.errors {
            let f = base_name(file);
            lines.push(format!("{f}:{line}: {msg}"));
            if f != name || *line == 0 {
                continue;
            }
            let Ok(l) = i32::try_from(*line - 1) else {
                continue;
            };
            if let Some(start) = w.buffer.iter_at_line(l) {
                let mut end = start;
                end.forward_line();
                w.buffer.apply_tag_by_name(ERROR_TAG, &start, &end);
            }
        }
        if lines.is_empty() {
            w.errors.set_text("No errors.");
            w.errors.remove_css_class("validation-error");
        } else {
            w.errors.set_text(&lines.join("\n"));
            w.errors.add_css_class("validation-error");
        }
        w.save
            .set_sensitive(self.open.is_some() && self.errors.is_empty() && self.modified);
    }

    fn fill_simple(&self, w: &PolicyWidgets, sender: &ComponentSender<Self>, kind: Kind) {
        let (Some(sec), Some(file)) = (w.simple.get(&kind), self.simple.get(&kind)) else {
            return;
        };
        while let Some(c) = sec.rules.first_child() {
            sec.rules.remove(&c);
        }
        for (i, r) in file.rules().iter().enumerate() {
            let hb = gtk::Box::new(gtk::Orientation::Horizontal, 8);
            let l = gtk::Label::new(Some(&format!(
                "{}  →  {}   {}",
                r.source, r.target, r.action
            )));
            l.set_xalign(0.0);
            l.set_hexpand(true);
            let rm = gtk::Button::with_label("Remove");
            let s = sender.clone();
            rm.connect_clicked(move |_| s.input(PolicyMsg::SimpleRemove { kind, index: i }));
            hb.append(&l);
            hb.append(&rm);
            sec.rules.append(&hb);
        }
    }

    fn save_simple(&self, sender: &ComponentSender<Self>, kind: Kind) {
        let Some(file) = self.simple.get(&kind) else {
            return;
        };
        let text = file.render();
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async {
                proxy(&conn)
                    .await?
                    .write_policy_file(kind.file(), &text)
                    .await
            }
            .await;
            PolicyCmd::SimpleSaved(kind, r.map_err(|e| describe(&e)))
        });
    }
}

fn simple_section(kind: Kind, sender: &ComponentSender<PolicyEditor>) -> (gtk::Box, SimpleSection) {
    let b = gtk::Box::new(gtk::Orientation::Vertical, 4);
    let title = gtk::Label::new(Some(kind.title()));
    title.set_xalign(0.0);
    title.add_css_class("domain-name");
    let rules = gtk::ListBox::new();
    rules.set_selection_mode(gtk::SelectionMode::None);
    let add = gtk::Box::new(gtk::Orientation::Horizontal, 6);
    let source = gtk::Entry::new();
    source.set_placeholder_text(Some("source (work, @anyvm, @tag:T)"));
    let target = gtk::Entry::new();
    target.set_text(kind.default_target());
    let action = gtk::DropDown::from_strings(&ACTIONS);
    let button = gtk::Button::with_label("Add");
    {
        let (s, src, tgt, act) = (
            sender.clone(),
            source.clone(),
            target.clone(),
            action.clone(),
        );
        button.connect_clicked(move |_| {
            let a = act.selected() as usize;
            s.input(PolicyMsg::SimpleAdd {
                kind,
                rule: SimpleRule {
                    source: src.text().trim().to_owned(),
                    target: tgt.text().trim().to_owned(),
                    action: ACTIONS.get(a).copied().unwrap_or("deny").to_owned(),
                },
            });
        });
    }
    add.append(&source);
    add.append(&gtk::Label::new(Some("→")));
    add.append(&target);
    add.append(&action);
    add.append(&button);
    b.append(&title);
    b.append(&rules);
    b.append(&add);
    (
        b,
        SimpleSection {
            rules,
            source,
            target,
            action,
        },
    )
}

impl Component for PolicyEditor {
    type CommandOutput = PolicyCmd;
    type Input = PolicyMsg;
    type Output = PolicyOutput;
    type Init = PolicyInit;
    type Root = gtk::Window;
    type Widgets = PolicyWidgets;

    fn init_root() -> Self::Root {
        gtk::Window::builder()
            .title("Bulkhead policy")
            .default_width(1000)
            .default_height(640)
            .build()
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        style::install();
        let outer = margin_box(gtk::Orientation::Vertical, 6, 6);
        let notebook = gtk::Notebook::new();
        notebook.set_vexpand(true);

        // files page
        let paned = gtk::Paned::new(gtk::Orientation::Horizontal);
        let left = gtk::Box::new(gtk::Orientation::Vertical, 6);
        let files = gtk::ListBox::new();
        let fscroll = scrolled(&files);
        fscroll.set_vexpand(true);
        fscroll.set_size_request(230, -1);
        let new_name = gtk::Entry::new();
        new_name.set_placeholder_text(Some("30-user.policy"));
        let new_btn = gtk::Button::with_label("New file");
        left.append(&gtk::Label::new(Some("Files, in the order they are read")));
        left.append(&fscroll);
        left.append(&new_name);
        left.append(&new_btn);
        paned.set_start_child(Some(&left));
        let right = gtk::Box::new(gtk::Orientation::Vertical, 6);
        let title = gtk::Label::new(Some("Select a file"));
        title.set_xalign(0.0);
        let buffer = gtk::TextBuffer::new(None);
        let tag = gtk::TextTag::new(Some(ERROR_TAG));
        tag.set_paragraph_background(Some(&format!("#{:06x}", style::POLICY_ERROR_LINE_RGB)));
        buffer.tag_table().add(&tag);
        let view = gtk::TextView::with_buffer(&buffer);
        view.set_monospace(true);
        let vscroll = scrolled(&view);
        vscroll.set_vexpand(true);
        let errors = gtk::Label::new(None);
        errors.set_xalign(0.0);
        errors.set_wrap(true);
        errors.set_selectable(true);
        let save = gtk::Button::with_label("Save");
        save.set_sensitive(false);
        right.append(&title);
        right.append(&vscroll);
        right.append(&errors);
        right.append(&save);
        paned.set_end_child(Some(&right));
        notebook.append_page(&paned, Some(&gtk::Label::new(Some("Files"))));

        // simple view
        let simple_box = gtk::Box::new(gtk::Orientation::Vertical, 16);
        simple_box.set_margin_top(8);
        simple_box.set_margin_start(8);
        let mut simple = HashMap::new();
        for kind in Kind::ALL {
            let (b, sec) = simple_section(kind, &sender);
            simple_box.append(&b);
            simple.insert(kind, sec);
        }
        let sscroll = scrolled(&simple_box);
        notebook.append_page(&sscroll, Some(&gtk::Label::new(Some("Common rules"))));
        outer.append(&notebook);

        let error_bar = ErrorBar::builder()
            .launch(())
            .forward(sender.input_sender(), |Dismissed| PolicyMsg::DismissError);
        outer.append(error_bar.widget());
        root.set_child(Some(&outer));

        let rebuilding = std::rc::Rc::new(std::cell::Cell::new(false));
        {
            let (s, r) = (sender.clone(), rebuilding.clone());
            files.connect_row_selected(move |_, row| {
                if let (false, Some(row)) = (r.get(), row) {
                    s.input(PolicyMsg::Open(row.widget_name().to_string()));
                }
            });
        }
        let s = sender.clone();
        buffer.connect_changed(move |_| s.input(PolicyMsg::TextChanged));
        let s = sender.clone();
        save.connect_clicked(move |_| s.input(PolicyMsg::Save));
        {
            let (s, e) = (sender.clone(), new_name.clone());
            new_btn.connect_clicked(move |_| s.input(PolicyMsg::NewFile(e.text().to_string())));
        }

        let model = PolicyEditor {
            conn: init.conn,
            files: Vec::new(),
            open: None,
            generation: 0,
            errors: Vec::new(),
            modified: false,
            loading: false,
            simple: HashMap::new(),
        };
        model.reload(&sender);
        ComponentParts {
            model,
            widgets: PolicyWidgets {
                files,
                title,
                buffer,
                errors,
                save,
                error_bar,
                simple,
                pages: notebook,
                rebuilding,
            },
        }
    }

    fn update_with_view(
        &mut self,
        w: &mut Self::Widgets,
        msg: PolicyMsg,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match msg {
            PolicyMsg::Reload => self.reload(&sender),
            PolicyMsg::Open(name) => {
                w.pages.set_current_page(Some(PAGE_FILES));
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r = async { proxy(&conn).await?.read_policy_file(&name).await }.await;
                    PolicyCmd::Text(name, r.map_err(|e| describe(&e)))
                });
            }
            PolicyMsg::SetText(t) => {
                w.pages.set_current_page(Some(PAGE_FILES));
                // typed, not loaded: TextChanged follows from the buffer
                w.buffer.set_text(&t);
            }
            PolicyMsg::TextChanged => {
                if self.loading || self.open.is_none() {
                    return;
                }
                self.modified = true;
                w.save.set_sensitive(false);
                self.schedule_check(&sender);
            }
            PolicyMsg::Save => {
                let Some(name) = self.open.clone() else {
                    return;
                };
                let text = Self::text(w);
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r =
                        async { proxy(&conn).await?.write_policy_file(&name, &text).await }.await;
                    PolicyCmd::Saved(name, r.map_err(|e| describe(&e)))
                });
            }
            PolicyMsg::NewFile(name) => {
                w.pages.set_current_page(Some(PAGE_FILES));
                let name = name.trim().to_owned();
                if self.files.iter().any(|(n, _)| *n == name) {
                    sender.input(PolicyMsg::Open(name));
                    return;
                }
                self.open = Some(name.clone());
                w.title.set_text(&format!("{name} (new, not saved)"));
                self.set_text(w, "# SERVICE  ARG  SOURCE  TARGET  ACTION\n");
                self.modified = true;
                self.schedule_check(&sender);
            }
            PolicyMsg::SimpleAdd { kind, rule } => {
                w.pages.set_current_page(Some(PAGE_SIMPLE));
                if rule.source.is_empty() || rule.target.is_empty() {
                    self.show_error(w, &sender, "give a source and a target".into());
                    return;
                }
                let file = self
                    .simple
                    .entry(kind)
                    .or_insert_with(|| SimpleFile::parse(kind, ""));
                file.add_first(rule);
                if let Some(sec) = w.simple.get(&kind) {
                    sec.source.set_text("");
                    sec.target.set_text(kind.default_target());
                    sec.action.set_selected(0);
                }
                self.save_simple(&sender, kind);
            }
            PolicyMsg::SimpleRemove { kind, index } => {
                w.pages.set_current_page(Some(PAGE_SIMPLE));
                if let Some(f) = self.simple.get_mut(&kind) {
                    f.remove_rule(index);
                    self.save_simple(&sender, kind);
                }
            }
            PolicyMsg::DismissError => w.error_bar.emit(ErrorBarMsg::Hide),
        }
    }

    fn update_cmd_with_view(
        &mut self,
        w: &mut Self::Widgets,
        msg: PolicyCmd,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match msg {
            PolicyCmd::Files(Ok(files)) => {
                self.files = files;
                w.rebuilding.set(true);
                while let Some(c) = w.files.first_child() {
                    w.files.remove(&c);
                }
                for (name, path) in &self.files {
                    let l = gtk::Label::new(Some(name));
                    l.set_xalign(0.0);
                    l.set_tooltip_text(Some(path));
                    let row = gtk::ListBoxRow::new();
                    row.set_child(Some(&l));
                    row.set_widget_name(name);
                    w.files.append(&row);
                    if self.open.as_deref() == Some(name.as_str()) {
                        w.files.select_row(Some(&row));
                    }
                }
                w.rebuilding.set(false);
                let _ = sender.output(PolicyOutput::Files(
                    self.files.iter().map(|(n, _)| n.clone()).collect(),
                ));
            }
            PolicyCmd::Files(Err(e)) => self.show_error(w, &sender, e),
            PolicyCmd::Text(name, Ok(text)) => {
                self.open = Some(name.clone());
                w.title.set_text(&name);
                self.set_text(w, &text);
                self.modified = false;
                self.errors.clear();
                self.show_errors(w);
                self.schedule_check(&sender);
                let _ = sender.output(PolicyOutput::Opened(name));
            }
            PolicyCmd::Text(name, Err(e)) => self.show_error(w, &sender, format!("{name}: {e}")),
            PolicyCmd::CheckDue(g) => {
                if g != self.generation {
                    return;
                }
                let Some(name) = self.open.clone() else {
                    return;
                };
                let text = Self::text(w);
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r =
                        async { proxy(&conn).await?.check_policy_text(&name, &text).await }.await;
                    PolicyCmd::Checked(g, r.map_err(|e| describe(&e)))
                });
            }
            PolicyCmd::Checked(g, r) => {
                if g != self.generation {
                    return;
                }
                match r {
                    Ok(errors) => {
                        self.errors = errors;
                        self.show_errors(w);
                        let shown = self
                            .errors
                            .iter()
                            .map(|(f, l, m)| format!("{}:{l}: {m}", base_name(f)))
                            .collect();
                        let _ = sender.output(PolicyOutput::Checked(shown));
                    }
                    Err(e) => self.show_error(w, &sender, format!("cannot check the text: {e}")),
                }
            }
            PolicyCmd::Saved(name, Ok(())) => {
                self.modified = false;
                w.title.set_text(&name);
                self.show_errors(w);
                self.reload(&sender);
                let _ = sender.output(PolicyOutput::Saved(name));
            }
            PolicyCmd::Saved(name, Err(e)) => {
                self.show_error(w, &sender, format!("{name} not saved: {e}"))
            }
            PolicyCmd::Simple(kind, Ok(text)) => {
                self.simple.insert(kind, SimpleFile::parse(kind, &text));
                self.fill_simple(w, &sender, kind);
            }
            PolicyCmd::Simple(kind, Err(e)) => {
                self.show_error(w, &sender, format!("{}: {e}", kind.file()))
            }
            PolicyCmd::SimpleSaved(kind, r) => {
                if let Err(e) = r {
                    self.show_error(w, &sender, format!("{} not saved: {e}", kind.file()));
                } else {
                    let _ = sender.output(PolicyOutput::Saved(kind.file().to_owned()));
                }
                // show what is on disk now (also after a refused write)
                self.reload(&sender);
                if self.open.as_deref() == Some(kind.file()) && !self.modified {
                    sender.input(PolicyMsg::Open(kind.file().to_owned()));
                }
            }
        }
    }
}
