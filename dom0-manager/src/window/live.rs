//! The window's background D-Bus work: its command results ([`ManagerCmd`]) and the
//! subscription to domaind's signals with the usage and list ticks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use relm4::ComponentSender;

use bulkhead_api::DomainInfo;

use super::{DomainAction, Event, ManagerMsg, ManagerOutput, ManagerWindow, Progress, Usage};
use crate::client::{describe, proxy};

/// How often usage is polled.
const USAGE_PERIOD: Duration = Duration::from_secs(2);
/// How often the list is reloaded without a signal (create/remove by others).
const LIST_PERIOD: Duration = Duration::from_secs(5);
/// Between the two first samples of a domain the list shows for the first time (its CPU
/// share is the difference).
const FIRST_CPU_WINDOW: Duration = Duration::from_millis(250);

/// The desktop ids in a domain's menu, from its properties (`features.menu-items`).
pub(super) fn menu_items(props: &HashMap<String, String>) -> Vec<String> {
    props
        .get(&super::settings::menu_key())
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A change of a domain's firewall rules.
#[derive(Debug)]
pub(super) enum FirewallEdit {
    Add(String),
    Delete(String),
    Reset,
}

/// Results of background D-Bus work.
#[derive(Debug)]
pub enum ManagerCmd {
    Domains(Result<Vec<DomainInfo>, String>),
    /// (domain, memory, CPU time, when it was read)
    Usage(Vec<(String, u64, u64, Instant)>),
    StateChanged(String, String),
    Progress(String, String, u32, u32),
    Props(String, Result<HashMap<String, String>, String>),
    Apps(String, Result<Vec<(String, String, String)>, String>),
    Firewall(String, Result<Vec<String>, String>),
    /// A write of a domain's menu choice ended.
    MenuWritten(String, Result<(), String>),
    Done(String, Result<(), String>),
    /// The signal subscription failed (shown as an error).
    SignalsLost(String),
    /// Time to poll usage.
    UsageTick,
    /// Time to reload the list.
    ListTick,
}

/// Follow `StateChanged` and `Progress` until the component shuts down; a tick every
/// [`USAGE_PERIOD`] polls usage and every [`LIST_PERIOD`] reloads the list.
pub fn subscribe(conn: zbus::Connection, sender: &ComponentSender<ManagerWindow>) {
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

/// The window's D-Bus calls (each result comes back as a [`ManagerCmd`]) and what it does
/// with usage, state changes and progress.
impl ManagerWindow {
    pub(super) fn refresh(&self, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list().await }.await;
            ManagerCmd::Domains(r.map_err(|e| describe(&e)))
        });
    }

    pub(super) fn load_selected(&self, sender: &ComponentSender<Self>) {
        let Some(name) = self.selected.clone() else {
            return;
        };
        let conn = self.conn.clone();
        let n = name.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.get_properties(&n).await }.await;
            ManagerCmd::Props(n, r.map_err(|e| describe(&e)))
        });
        let conn = self.conn.clone();
        let n = name.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.list_applications(&n).await }.await;
            ManagerCmd::Apps(n, r.map_err(|e| describe(&e)))
        });
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let r = async { proxy(&conn).await?.firewall_list(&name).await }.await;
            ManagerCmd::Firewall(name, r.map_err(|e| describe(&e)))
        });
    }

    /// Put `desktop_id` into `domain`'s menu or take it out (its `features.menu-items`,
    /// from the properties last loaded; dom0-ui's menu follows at its next sync).
    pub(super) fn set_menu_item(
        &mut self,
        domain: String,
        desktop_id: String,
        in_menu: bool,
        sender: &ComponentSender<Self>,
    ) {
        if self.selected.as_deref() != Some(domain.as_str()) || self.props.is_empty() {
            self.show_error(
                sender,
                format!("the menu of {domain} is not loaded yet; nothing changed"),
            );
            return;
        }
        let mut ids = menu_items(&self.props);
        ids.retain(|i| i != &desktop_id);
        if in_menu {
            ids.push(desktop_id.clone());
        }
        let key = super::settings::menu_key();
        // what the next toggle builds on, before domaind's answer reloads it
        self.props.insert(key.clone(), ids.join(" "));
        let conn = self.conn.clone();
        let what = format!(
            "{} {desktop_id} {} the menu of {domain}",
            if in_menu { "put" } else { "take" },
            if in_menu { "into" } else { "out of" }
        );
        // One write at a time, in the order of the toggles (each carries the whole list as
        // it was then, so the last one holds every toggle).
        self.menu_writes += 1;
        let order = self.menu_order.clone();
        sender.oneshot_command(async move {
            let _turn = order.lock().await;
            let r = async {
                proxy(&conn)
                    .await?
                    .set_property(&domain, &key, &ids.join(" "))
                    .await
            }
            .await;
            ManagerCmd::MenuWritten(what, r.map_err(|e| describe(&e)))
        });
    }

    /// Change `domain`'s firewall rules (domaind checks the rule; its answer is shown).
    pub(super) fn firewall_edit(
        &self,
        sender: &ComponentSender<Self>,
        domain: String,
        edit: FirewallEdit,
    ) {
        let conn = self.conn.clone();
        let what = match &edit {
            FirewallEdit::Add(r) => format!("add firewall rule '{r}' to {domain}"),
            FirewallEdit::Delete(r) => format!("delete firewall rule '{r}' of {domain}"),
            FirewallEdit::Reset => format!("reset the firewall of {domain}"),
        };
        self.run(sender, what, async move {
            let p = proxy(&conn).await?;
            match edit {
                FirewallEdit::Add(rule) => p.firewall_add(&domain, &rule, -1).await,
                FirewallEdit::Delete(rule) => p.firewall_del_rule(&domain, &rule).await,
                FirewallEdit::Reset => p.firewall_reset(&domain).await,
            }
        });
    }

    /// Run `call` in the background; its result is shown as done or as an error.
    pub(super) fn run<F>(&self, sender: &ComponentSender<Self>, what: String, call: F)
    where
        F: std::future::Future<Output = Result<(), bulkhead_api::Error>> + Send + 'static,
    {
        sender.oneshot_command(async move {
            ManagerCmd::Done(what, call.await.map_err(|e| describe(&e)))
        });
    }

    pub(super) fn start_action(
        &mut self,
        action: DomainAction,
        name: String,
        sender: &ComponentSender<Self>,
    ) {
        let conn = self.conn.clone();
        let what = format!("{} {name}", action.label().to_lowercase());
        if action == DomainAction::Start {
            self.progress = Progress {
                text: format!("{name}: starting"),
                fraction: 0.0,
                visible: true,
            };
        }
        self.run(sender, what, async move {
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

    /// Asks before removing `name`, saying what goes with it; Remove sends
    /// [`ManagerMsg::RemoveConfirmed`], anything else leaves the domain as it is.
    pub(super) fn confirm_remove(
        &mut self,
        name: String,
        sender: &ComponentSender<Self>,
        root: &gtk4::Window,
    ) {
        let props = (self.selected.as_deref() == Some(name.as_str())).then_some(&self.props);
        let text = remove_warning(&name, props);
        let _ = sender.output(ManagerOutput::ConfirmRemove(name.clone(), text.clone()));
        let input = sender.input_sender().clone();
        let dialog = crate::widgets::confirm_destructive(
            Some(root),
            &format!("Remove the domain {name}?"),
            &text,
            "Remove",
            move || input.emit(ManagerMsg::RemoveConfirmed(name.clone())),
        );
        if let Some(old) = self.question.replace(dialog) {
            gtk4::prelude::GtkWindowExt::close(&old);
        }
    }

    /// Asks before removing every firewall rule of `domain` (that opens its network to
    /// everything but other domains); Reset sends [`ManagerMsg::FirewallResetConfirmed`].
    pub(super) fn confirm_firewall_reset(
        &mut self,
        domain: String,
        sender: &ComponentSender<Self>,
        root: &gtk4::Window,
    ) {
        let _ = sender.output(ManagerOutput::ConfirmFirewallReset(domain.clone()));
        let input = sender.input_sender().clone();
        let dialog = crate::widgets::confirm_destructive(
            Some(root),
            &format!("Reset the firewall of {domain}?"),
            &format!(
                "Every rule of {domain} goes: it may then reach every address its net domain \
                 reaches (other domains stay closed)."
            ),
            "Reset",
            move || input.emit(ManagerMsg::FirewallResetConfirmed(domain.clone())),
        );
        if let Some(old) = self.question.replace(dialog) {
            gtk4::prelude::GtkWindowExt::close(&old);
        }
    }

    pub(super) fn launch(
        &self,
        domain: String,
        desktop_id: String,
        disposable: bool,
        sender: &ComponentSender<Self>,
    ) {
        let target = if disposable {
            match self.props.get("default_dispvm").filter(|v| !v.is_empty()) {
                Some(base) if self.selected.as_deref() == Some(domain.as_str()) => {
                    format!("@dispvm:{base}")
                }
                _ => "@dispvm".to_owned(),
            }
        } else {
            domain
        };
        let conn = self.conn.clone();
        let what = format!("start {desktop_id} in {target}");
        self.run(sender, what, async move {
            proxy(&conn)
                .await?
                .run_application(&target, &desktop_id)
                .await
        });
    }

    /// What a tab reported.
    pub(super) fn panel_event(&mut self, e: Event, sender: &ComponentSender<Self>) {
        let conn = self.conn.clone();
        match e {
            Event::Error(m) => self.show_error(sender, m),
            Event::CreateValidation(p) => {
                let _ = sender.output(ManagerOutput::CreateValidation(p));
            }
            Event::Create(f) => self.run(sender, format!("create {}", f.name), async move {
                proxy(&conn)
                    .await?
                    .create(&f.name, &f.class, &f.template, &f.label, HashMap::new())
                    .await
            }),
            Event::Clone { source, dest } => {
                self.run(sender, format!("clone {source} as {dest}"), async move {
                    proxy(&conn).await?.clone_domain(&source, &dest).await
                })
            }
            Event::Apply { domain, changes } => {
                let keys: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
                let what = format!("set {} of {domain}", keys.join(", "));
                self.run(sender, what, async move {
                    let p = proxy(&conn).await?;
                    for (k, v) in changes {
                        p.set_property(&domain, &k, &v).await?;
                    }
                    Ok(())
                });
            }
            Event::SettingsShown(name, values) => {
                if self.selected.as_deref() == Some(name.as_str()) {
                    let _ = sender.output(ManagerOutput::SettingsLoaded(name, values));
                }
            }
        }
    }

    /// Names of the domains that run (usage is polled for these).
    fn running(&self) -> impl Iterator<Item = &str> {
        self.domains
            .iter()
            .filter(|d| matches!(d.state.as_str(), "running" | "paused" | "starting"))
            .map(|d| d.name.as_str())
    }

    /// One sample of each running domain with usage, two of those without
    /// ([`ManagerWindow::poll_new_usage`]).
    pub(super) fn poll_usage(&self, sender: &ComponentSender<Self>) {
        let known: Vec<String> = self
            .running()
            .filter(|n| self.usage.contains_key(*n))
            .map(str::to_owned)
            .collect();
        if !known.is_empty() {
            self.sample_usage(sender, known, 1);
        }
        self.poll_new_usage(sender);
    }

    /// Usage of the running domains that have none yet, sampled twice [`FIRST_CPU_WINDOW`]
    /// apart: their rows show memory and CPU share without waiting for the next polls.
    pub(super) fn poll_new_usage(&self, sender: &ComponentSender<Self>) {
        let new: Vec<String> = self
            .running()
            .filter(|n| !self.usage.contains_key(*n))
            .map(str::to_owned)
            .collect();
        if !new.is_empty() {
            self.sample_usage(sender, new, 2);
        }
    }

    /// `GetUsage` of `names`, `rounds` times [`FIRST_CPU_WINDOW`] apart, as one result.
    fn sample_usage(&self, sender: &ComponentSender<Self>, names: Vec<String>, rounds: u32) {
        let conn = self.conn.clone();
        sender.oneshot_command(async move {
            let mut out = Vec::new();
            if let Ok(p) = proxy(&conn).await {
                for round in 0..rounds {
                    if round > 0 {
                        tokio::time::sleep(FIRST_CPU_WINDOW).await;
                    }
                    for n in &names {
                        if let Ok((mem, cpu)) = p.get_usage(n).await {
                            out.push((n.clone(), mem, cpu, Instant::now()));
                        }
                    }
                }
            }
            ManagerCmd::Usage(out)
        });
    }

    pub(super) fn usage(
        &mut self,
        v: Vec<(String, u64, u64, Instant)>,
        sender: &ComponentSender<Self>,
    ) {
        let mut shown = Vec::new();
        // a sample taken before the domain stopped does not bring its usage back
        let running: Vec<String> = self.running().map(str::to_owned).collect();
        for (name, mem, cpu, at) in v.into_iter().filter(|(n, ..)| running.contains(n)) {
            let u = self.usage.entry(name.clone()).or_default();
            u.sample(mem, cpu, at);
            let u = *u;
            self.with_row(&name, |r| r.usage = u);
            shown.retain(|(n, _): &(String, Usage)| n != &name);
            shown.push((name, u));
        }
        for (name, u) in shown {
            let _ = sender.output(ManagerOutput::Usage(
                name,
                u.mem,
                u.cpu_percent.map(|p| p.round() as u32),
            ));
        }
    }

    pub(super) fn state_changed(
        &mut self,
        name: String,
        state: String,
        sender: &ComponentSender<Self>,
    ) {
        let known = self.position(&name).is_some();
        if let Some(i) = self.position(&name) {
            self.domains[i].state = state.clone();
        }
        self.with_row(&name, |r| r.info.state = state.clone());
        if state != "starting" && self.progress.text.starts_with(&format!("{name}:")) {
            self.progress.visible = false;
        }
        if state == "halted" {
            self.usage.remove(&name);
            self.with_row(&name, |r| r.usage = Usage::default());
        }
        if state == "running" {
            self.poll_new_usage(sender);
        }
        self.sync_actions();
        self.shown(sender);
        // a new domain (a disposable) appears only in a reload
        if !known {
            self.refresh(sender);
        }
    }

    pub(super) fn progress(
        &mut self,
        name: String,
        step: String,
        done: u32,
        total: u32,
        sender: &ComponentSender<Self>,
    ) {
        let fraction = if total > 0 {
            f64::from(done.min(total)) / f64::from(total)
        } else {
            0.0
        };
        self.progress = Progress {
            text: format!("{name}: {step} ({done}/{total})"),
            fraction,
            visible: done < total || total == 0,
        };
        let _ = sender.output(ManagerOutput::Progress(name, step, done, total));
    }
}

/// What removing `name` deletes, from its properties when known (the selected domain's).
pub(crate) fn remove_warning(name: &str, props: Option<&HashMap<String, String>>) -> String {
    let get = |k: &str| props.and_then(|p| p.get(k)).filter(|v| !v.is_empty());
    let private = match get("private_size") {
        Some(mib) => format!("its private volume (up to {mib} MiB: the files in its home)"),
        None => "its private volume (the files in its home)".to_owned(),
    };
    let mut text = format!(
        "This deletes {private}, its settings, its firewall rules and its application menu \
         entries. It cannot be undone; back up what you want to keep first."
    );
    if get("class").map(String::as_str) == Some("template") {
        text.push_str(&format!(
            " {name} is a template: its installed software goes too, and domains based on it \
             will not start until they get another template."
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remove_warning_says_what_goes() {
        let t = remove_warning("mail", None);
        assert!(t.contains("private volume") && t.contains("firewall") && t.contains("menu"));
        let mut p = HashMap::new();
        p.insert("private_size".to_owned(), "2048".to_owned());
        p.insert("class".to_owned(), "template".to_owned());
        let t = remove_warning("debian-12", Some(&p));
        assert!(t.contains("up to 2048 MiB"), "{t}");
        assert!(t.contains("debian-12 is a template"), "{t}");
    }
}
