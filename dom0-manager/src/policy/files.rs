//! The "Files" tab: the policy files in evaluation order (a factory of rows), the open one
//! in a text view, every error of the text at `file:line` under it with its lines
//! highlighted, and Save.
//!
//! Whether the text is modified is not tracked by muting the buffer's `changed` signal while
//! the program fills it: the buffer is compared with the text last loaded or saved.

use relm4::factory::{DynamicIndex, FactoryComponent, FactorySender, FactoryVecDeque};
use relm4::gtk;
use relm4::gtk::prelude::*;
use relm4::{Component, ComponentParts, ComponentSender, RelmWidgetExt};

use super::{base_name, Ev, PolicyMsg, PolicyOutput, CHECK_DELAY};
use crate::client::{describe, proxy};
use crate::style;

const ERROR_TAG: &str = "policy-error-line";

/// One policy file in the list.
#[derive(Debug)]
pub struct FileRow {
    name: String,
    path: String,
}

#[relm4::factory(pub)]
impl FactoryComponent for FileRow {
    /// (name, path)
    type Init = (String, String);
    type Input = ();
    type Output = ();
    type CommandOutput = ();
    type ParentWidget = gtk::ListBox;

    view! {
        gtk::ListBoxRow {
            // the list reports a selection by this name
            set_widget_name: &self.name,
            gtk::Label {
                set_label: &self.name,
                set_xalign: 0.0,
                set_tooltip_text: Some(&self.path),
            },
        }
    }

    fn init_model(
        (name, path): Self::Init,
        _index: &DynamicIndex,
        _sender: FactorySender<Self>,
    ) -> Self {
        Self { name, path }
    }
}

/// The "Files" tab.
pub struct FilesPanel {
    conn: zbus::Connection,
    files: FactoryVecDeque<FileRow>,
    /// The open file.
    open: Option<String>,
    title: String,
    buffer: gtk::TextBuffer,
    /// The open file's text as loaded or last saved (`None`: a new file).
    saved: Option<String>,
    /// The buffer differs from `saved`.
    modified: bool,
    /// Bumped on every edit; a check result for an older generation is dropped.
    generation: u64,
    /// A check is due or running.
    checking: bool,
    errors: Vec<(String, u32, String)>,
    new_name: gtk::EntryBuffer,
    /// The open "Delete?" question (closed when the answer comes, whichever way).
    question: Option<gtk::MessageDialog>,
}

#[derive(Debug)]
pub enum FilesMsg {
    Reload,
    Open(String),
    /// Open `file` again if it is open and not modified (it was written by others).
    Reopen(String),
    /// Replace the text (as if typed).
    SetText(String),
    TextChanged,
    Save,
    NewFile(String),
    /// "New file" was clicked: the name is in the entry.
    NewFileClicked,
    /// Delete the open file: asks first.
    Delete,
    /// The user confirmed deleting this file.
    DeleteConfirmed(String),
}

#[derive(Debug)]
pub enum FilesCmd {
    Files(Result<Vec<(String, String)>, String>),
    Text(String, Result<String, String>),
    CheckDue(u64),
    Checked(u64, Result<Vec<(String, u32, String)>, String>),
    Saved(String, String, Result<(), String>),
    Deleted(String, Result<(), String>),
}

impl FilesPanel {
    fn text(&self) -> String {
        let (a, b) = self.buffer.bounds();
        self.buffer.text(&a, &b, true).to_string()
    }

    fn output(sender: &ComponentSender<Self>, e: Ev) {
        let _ = sender.output(e.into());
    }

    fn reload(&self, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list_policy_files().await }.await;
            FilesCmd::Files(r.map_err(|e| describe(&e)))
        });
    }

    fn open(&self, sender: &ComponentSender<Self>, name: String) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.read_policy_file(&name).await }.await;
            FilesCmd::Text(name, r.map_err(|e| describe(&e)))
        });
    }

    fn schedule_check(&mut self, sender: &ComponentSender<Self>) {
        self.generation += 1;
        self.checking = true;
        let g = self.generation;
        sender.oneshot_command(async move {
            tokio::time::sleep(CHECK_DELAY).await;
            FilesCmd::CheckDue(g)
        });
    }

    /// Fill the buffer; `saved` is what the file holds (`None`: a new file).
    fn load(&mut self, text: &str, saved: Option<String>) {
        self.saved = saved;
        self.buffer.set_text(text);
        self.modified = self.saved.as_deref() != Some(text);
    }

    /// Highlight the lines of the open file that have errors.
    fn mark_errors(&self) {
        let (a, b) = self.buffer.bounds();
        self.buffer.remove_tag_by_name(ERROR_TAG, &a, &b);
        let name = self.open.clone().unwrap_or_default();
        for (file, line, _) in &self.errors {
            if base_name(file) != name || *line == 0 {
                continue;
            }
            let Ok(l) = i32::try_from(*line - 1) else {
                continue;
            };
            if let Some(start) = self.buffer.iter_at_line(l) {
                let mut end = start;
                end.forward_line();
                self.buffer.apply_tag_by_name(ERROR_TAG, &start, &end);
            }
        }
    }

    fn error_lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|(f, l, m)| format!("{}:{l}: {m}", base_name(f)))
            .collect()
    }

    fn error_text(&self) -> String {
        if self.errors.is_empty() {
            "No errors.".into()
        } else {
            self.error_lines().join("\n")
        }
    }

    /// The open file is one of the listed (saved) ones.
    fn can_delete(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| self.saved.is_some() && self.files.iter().any(|f| &f.name == o))
    }

    /// Asks whether to delete `name`; Delete sends [`FilesMsg::DeleteConfirmed`].
    fn confirm_delete(&mut self, sender: &ComponentSender<Self>, root: &gtk::Paned, name: String) {
        Self::output(
            sender,
            Ev::Output(PolicyOutput::ConfirmDelete(name.clone())),
        );
        let parent = root.root().and_downcast::<gtk::Window>();
        let input = sender.input_sender().clone();
        let dialog = crate::widgets::confirm_destructive(
            parent.as_ref(),
            &format!("Delete the policy file {name}?"),
            "Its rules stop applying with the next call between domains; calls they allowed \
             or denied are decided by the other files. It cannot be undone.",
            "Delete",
            move || input.emit(FilesMsg::DeleteConfirmed(name.clone())),
        );
        if let Some(old) = self.question.replace(dialog) {
            old.close();
        }
    }

    fn can_save(&self) -> bool {
        self.open.is_some() && !self.checking && self.errors.is_empty() && self.modified
    }

    /// The list's row of the open file.
    fn open_row(&self) -> Option<gtk::ListBoxRow> {
        let open = self.open.as_deref()?;
        let i = self.files.iter().position(|f| f.name == open)?;
        self.files.widget().row_at_index(i32::try_from(i).ok()?)
    }
}

#[relm4::component(pub)]
impl Component for FilesPanel {
    type Init = zbus::Connection;
    type Input = FilesMsg;
    type Output = PolicyMsg;
    type CommandOutput = FilesCmd;

    view! {
        gtk::Paned {
            set_orientation: gtk::Orientation::Horizontal,

            #[wrap(Some)]
            set_start_child = &gtk::Box {
                set_orientation: gtk::Orientation::Vertical,
                set_spacing: 6,

                gtk::Label {
                    set_label: "Files, in the order they are read",
                },
                gtk::ScrolledWindow {
                    set_vexpand: true,
                    set_size_request: (230, -1),

                    #[local_ref]
                    file_list -> gtk::ListBox {
                        #[watch]
                        #[block_signal(file_selected)]
                        select_row: model.open_row().as_ref(),
                        connect_row_selected[sender] => move |_, row| {
                            if let Some(row) = row {
                                sender.input(FilesMsg::Open(row.widget_name().to_string()));
                            }
                        } @file_selected,
                    },
                },
                gtk::Entry {
                    set_placeholder_text: Some("30-user.policy"),
                    set_buffer: &model.new_name,
                },
                gtk::Button {
                    set_label: "New file",
                    connect_clicked => FilesMsg::NewFileClicked,
                },
            },

            #[wrap(Some)]
            set_end_child = &gtk::Box {
                set_orientation: gtk::Orientation::Vertical,
                set_spacing: 6,

                gtk::Label {
                    set_xalign: 0.0,
                    #[watch]
                    set_text: &model.title,
                },
                gtk::ScrolledWindow {
                    set_vexpand: true,
                    gtk::TextView {
                        set_buffer: Some(&model.buffer),
                        set_monospace: true,
                    },
                },
                gtk::Label {
                    set_xalign: 0.0,
                    set_wrap: true,
                    set_selectable: true,
                    #[watch]
                    set_text: &model.error_text(),
                    #[watch]
                    set_class_active: ("validation-error", !model.errors.is_empty()),
                },
                gtk::Box {
                    set_orientation: gtk::Orientation::Horizontal,
                    set_spacing: 6,
                    gtk::Button {
                        set_label: "Save",
                        set_hexpand: true,
                        #[watch]
                        set_sensitive: model.can_save(),
                        connect_clicked => FilesMsg::Save,
                    },
                    gtk::Button {
                        set_label: "Delete file",
                        add_css_class: "destructive-action",
                        #[watch]
                        set_sensitive: model.can_delete(),
                        connect_clicked => FilesMsg::Delete,
                    },
                },
            },
        }
    }

    fn init(
        conn: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let buffer = gtk::TextBuffer::new(None);
        let tag = gtk::TextTag::new(Some(ERROR_TAG));
        tag.set_paragraph_background(Some(&format!("#{:06x}", style::POLICY_ERROR_LINE_RGB)));
        buffer.tag_table().add(&tag);
        let s = sender.clone();
        buffer.connect_changed(move |_| s.input(FilesMsg::TextChanged));
        let model = FilesPanel {
            conn,
            files: FactoryVecDeque::builder()
                .launch(gtk::ListBox::default())
                .detach(),
            open: None,
            title: "Select a file".into(),
            buffer,
            saved: None,
            modified: false,
            generation: 0,
            checking: false,
            errors: Vec::new(),
            new_name: gtk::EntryBuffer::default(),
            question: None,
        };
        let file_list = model.files.widget();
        let widgets = view_output!();
        ComponentParts { model, widgets }
    }

    fn update(&mut self, msg: FilesMsg, sender: ComponentSender<Self>, root: &Self::Root) {
        match msg {
            FilesMsg::Delete => {
                if let Some(name) = self.open.clone().filter(|_| self.can_delete()) {
                    self.confirm_delete(&sender, root, name);
                }
            }
            FilesMsg::DeleteConfirmed(name) => {
                if let Some(q) = self.question.take() {
                    q.close();
                }
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r = async { proxy(&conn).await?.delete_policy_file(&name).await }.await;
                    FilesCmd::Deleted(name, r.map_err(|e| describe(&e)))
                });
            }
            FilesMsg::Reload => self.reload(&sender),
            FilesMsg::Open(name) => self.open(&sender, name),
            FilesMsg::Reopen(name) => {
                if self.open.as_deref() == Some(name.as_str()) && !self.modified {
                    self.open(&sender, name);
                }
            }
            // typed, not loaded: TextChanged follows from the buffer
            FilesMsg::SetText(t) => self.buffer.set_text(&t),
            FilesMsg::TextChanged => {
                if self.open.is_none() {
                    return;
                }
                self.modified = self.saved.as_deref() != Some(self.text().as_str());
                self.schedule_check(&sender);
            }
            FilesMsg::Save => {
                let Some(name) = self.open.clone() else {
                    return;
                };
                let text = self.text();
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r =
                        async { proxy(&conn).await?.write_policy_file(&name, &text).await }.await;
                    FilesCmd::Saved(name, text, r.map_err(|e| describe(&e)))
                });
            }
            FilesMsg::NewFile(name) => {
                let name = name.trim().to_owned();
                if self.files.iter().any(|f| f.name == name) {
                    self.open(&sender, name);
                    return;
                }
                self.title = format!("{name} (new, not saved)");
                self.open = Some(name);
                self.load("# SERVICE  ARG  SOURCE  TARGET  ACTION\n", None);
                self.schedule_check(&sender);
            }
            FilesMsg::NewFileClicked => {
                let name = self.new_name.text().to_string();
                let _ = sender.output(PolicyMsg::NewFile(name));
            }
        }
    }

    fn update_cmd(&mut self, msg: FilesCmd, sender: ComponentSender<Self>, _root: &Self::Root) {
        match msg {
            FilesCmd::Files(Ok(files)) => {
                let names = files.iter().map(|(n, _)| n.clone()).collect();
                let mut g = self.files.guard();
                g.clear();
                for f in files {
                    g.push_back(f);
                }
                drop(g);
                Self::output(&sender, Ev::Output(PolicyOutput::Files(names)));
            }
            FilesCmd::Files(Err(e)) => Self::output(&sender, Ev::Error(e)),
            FilesCmd::Text(name, Ok(text)) => {
                self.open = Some(name.clone());
                self.title = name.clone();
                self.load(&text, Some(text.clone()));
                self.errors.clear();
                self.mark_errors();
                self.schedule_check(&sender);
                Self::output(&sender, Ev::Output(PolicyOutput::Opened(name)));
            }
            FilesCmd::Text(name, Err(e)) => {
                Self::output(&sender, Ev::Error(format!("{name}: {e}")))
            }
            FilesCmd::CheckDue(g) => {
                let Some(name) = self.open.clone().filter(|_| g == self.generation) else {
                    return;
                };
                let text = self.text();
                let conn = self.conn.clone();
                sender.oneshot_command(async move {
                    let r =
                        async { proxy(&conn).await?.check_policy_text(&name, &text).await }.await;
                    FilesCmd::Checked(g, r.map_err(|e| describe(&e)))
                });
            }
            FilesCmd::Checked(g, r) => {
                if g != self.generation {
                    return;
                }
                self.checking = false;
                match r {
                    Ok(errors) => {
                        self.errors = errors;
                        self.mark_errors();
                        let shown = self.error_lines();
                        Self::output(&sender, Ev::Output(PolicyOutput::Checked(shown)));
                    }
                    Err(e) => {
                        Self::output(&sender, Ev::Error(format!("cannot check the text: {e}")))
                    }
                }
            }
            FilesCmd::Saved(name, text, Ok(())) => {
                self.title = name.clone();
                self.saved = Some(text);
                self.modified = self.saved.as_deref() != Some(self.text().as_str());
                Self::output(&sender, Ev::Written(None));
                Self::output(&sender, Ev::Output(PolicyOutput::Saved(name)));
            }
            FilesCmd::Saved(name, _, Err(e)) => {
                Self::output(&sender, Ev::Error(format!("{name} not saved: {e}")))
            }
            FilesCmd::Deleted(name, Ok(())) => {
                if self.open.as_deref() == Some(name.as_str()) {
                    self.open = None;
                    self.title = "Select a file".into();
                    self.load("", None);
                    self.errors.clear();
                    self.mark_errors();
                }
                Self::output(&sender, Ev::Written(None));
                Self::output(&sender, Ev::Output(PolicyOutput::Deleted(name)));
            }
            FilesCmd::Deleted(name, Err(e)) => {
                Self::output(&sender, Ev::Error(format!("{name} not deleted: {e}")))
            }
        }
    }
}
