//! The tokio side of dom0-ui: D-Bus with domaind (domains, their states, `OpenGui`,
//! `EvaluatePaste`, the `CallDenied` signal), one GUI connection per running domain driven
//! through bulkhead-gui-host's window-state machine, and the ask agent
//! (`org.bulkhead.AskAgent1`). It hands the GTK thread [`UiEvent`]s; pixels stay in the
//! shared [`DomainWindows`] and only "something changed" travels.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error as ApiError};
use bulkhead_domain::Label;
use bulkhead_gui_host::conn::{drive, PeerEnd};
use bulkhead_gui_host::{Change, DomainWindows, GuiConnection, HostSender, Rules};
use bulkhead_wire::gui::{Rect, WindowId};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::tiles::add_damage;

/// Longest wait between two attempts to open a running domain's GUI (its gui-agent may not
/// listen yet, or restarted) ...
const MAX_RETRY: Duration = Duration::from_secs(10);
/// ... and after [`QUIET_AFTER`] failures in a row (a template without the GUI packages has
/// no gui-agent: ask once a minute, not every 10 s).
const QUIET_RETRY: Duration = Duration::from_secs(60);
/// Failures in a row before [`QUIET_RETRY`].
const QUIET_AFTER: u32 = 12;
/// First wait.
const FIRST_RETRY: Duration = Duration::from_millis(300);

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// D-Bus transport.
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    /// domaind refused or failed.
    #[error("domaind: {0}")]
    Domaind(String),
}

impl From<ApiError> for BackendError {
    fn from(e: ApiError) -> Self {
        BackendError::Domaind(e.message())
    }
}

/// What changed in one domain's windows since the UI last looked.
#[derive(Debug, Default)]
pub struct Pending {
    /// Damage per window.
    pub damage: HashMap<WindowId, Vec<Rect>>,
    /// Windows were created, destroyed, mapped, retitled, resized...
    pub structure: bool,
    /// The answer to a copy request.
    pub clipboard: Option<Bytes>,
    /// A wake-up is on its way to the UI.
    queued: bool,
}

impl Pending {
    /// Takes everything (the next change wakes the UI again).
    pub fn take(&mut self) -> Pending {
        let mut p = std::mem::take(self);
        p.queued = false;
        p
    }

    /// Records a change; true when the UI must be woken.
    pub fn record(&mut self, c: &Change) -> bool {
        match c {
            Change::Nothing => return false,
            Change::Damaged(w, r) => add_damage(self.damage.entry(*w).or_default(), *r),
            Change::Clipboard(d) => self.clipboard = Some(d.clone()),
            _ => self.structure = true,
        }
        let wake = !self.queued;
        self.queued = true;
        wake
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One domain's GUI connection as the UI sees it.
#[derive(Clone)]
pub struct DomainGui {
    /// Domain name (from dom0's config).
    pub domain: String,
    /// Its label (from dom0's config).
    pub label: Label,
    /// Connection number (events of older connections are ignored).
    pub gen: u64,
    /// Window state and pixels.
    pub state: Arc<Mutex<DomainWindows>>,
    /// Input, configure, close and clipboard messages to the domain.
    pub sender: HostSender,
    /// What changed.
    pub pending: Arc<Mutex<Pending>>,
}

/// A question from domaind's policy (`ask`).
pub struct AskRequest {
    /// Calling domain.
    pub source: String,
    /// Service.
    pub service: String,
    /// Argument ("" for none).
    pub arg: String,
    /// Targets the user may pick.
    pub targets: Vec<String>,
    /// Preselected target ("" for none).
    pub default_target: String,
    /// Label colours of the source and the targets (from dom0's config; a new disposable
    /// under its template's name, dom0 under `dom0`).
    pub labels: HashMap<String, Label>,
    /// The answer: a target, or "" to deny.
    pub reply: oneshot::Sender<String>,
}

/// Something for the GTK thread.
pub enum UiEvent {
    /// A domain's GUI connection is up.
    Connected(DomainGui),
    /// Something changed in a connection (see its [`Pending`]).
    Changed {
        /// Domain.
        domain: String,
        /// Connection.
        gen: u64,
    },
    /// A connection ended (None: whichever is current).
    Ended {
        /// Domain.
        domain: String,
        /// Connection.
        gen: Option<u64>,
    },
    /// A short notice for the user.
    Notice(String),
    /// dom0's keymap changed (see [`crate::keymap`]): send it to every domain.
    Keymap(bytes::Bytes),
    /// The ask dialog.
    Ask(AskRequest),
    /// The user pressed a clipboard chord in one of the domain's windows.
    Chord {
        /// Domain whose window had the keyboard.
        domain: String,
        /// Which.
        chord: crate::clipboard::Chord,
    },
    /// A copy request got no answer in time.
    CopyTimeout {
        /// Domain asked.
        domain: String,
    },
    /// domaind's answer to a paste.
    PasteDecided {
        /// From.
        source: String,
        /// Into.
        target: String,
        /// Allowed, or why not.
        result: Result<bool, String>,
    },
}

/// Requests from the GTK thread.
#[derive(Debug)]
pub enum Cmd {
    /// Ask domaind whether `source` may paste into `target`.
    EvaluatePaste {
        /// From.
        source: String,
        /// Into.
        target: String,
    },
}

/// The backend; cheap to share.
pub struct Backend {
    proxy: Domaind1Proxy<'static>,
    ui: async_channel::Sender<UiEvent>,
    rules: Rules,
    watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// How often the user's application menu is rewritten at the latest (None: never);
    /// a domain starting or stopping does it sooner ([`Backend::keep_menus`]).
    menu_sync: Option<Duration>,
    menu_kick: tokio::sync::Notify,
}

/// The ask agent object.
struct AskAgent {
    ui: async_channel::Sender<UiEvent>,
    timeout: Duration,
    proxy: Domaind1Proxy<'static>,
}

#[zbus::interface(name = "org.bulkhead.AskAgent1")]
impl AskAgent {
    /// Asks the user; "" is deny (also on close or timeout). Only domaind may ask.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        source: String,
        service: String,
        arg: String,
        targets: Vec<String>,
        default_target: String,
    ) -> String {
        if !from_domaind(conn, &hdr).await {
            warn!(sender = ?hdr.sender(), "an ask from someone other than domaind; denied");
            return String::new();
        }
        let mut labels = HashMap::new();
        for name in std::iter::once(source.as_str()).chain(targets.iter().map(String::as_str)) {
            let domain = name.strip_prefix("@dispvm:").unwrap_or(name);
            if !labels.contains_key(domain) {
                let label = if domain == "dom0" {
                    Label::Black
                } else {
                    label_of(&self.proxy, domain).await
                };
                labels.insert(domain.to_owned(), label);
            }
        }
        info!(
            source,
            service,
            arg,
            ?targets,
            preselected = default_target,
            "asking the user"
        );
        let (tx, rx) = oneshot::channel();
        let req = AskRequest {
            source,
            service,
            arg,
            targets,
            default_target,
            labels,
            reply: tx,
        };
        if self.ui.send(UiEvent::Ask(req)).await.is_err() {
            return String::new();
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => String::new(),
        }
    }
}

/// The label of `domain` from dom0's config (red when unknown).
async fn label_of(proxy: &Domaind1Proxy<'static>, domain: &str) -> Label {
    let label = proxy
        .get_properties(domain)
        .await
        .ok()
        .and_then(|p| p.get("label").cloned())
        .unwrap_or_default();
    Label::from_str(&label).unwrap_or_else(|_| {
        warn!(domain, label, "unknown label; framing the domain in red");
        Label::Red
    })
}

/// Whether the message came from the current owner of domaind's bus name.
async fn from_domaind(conn: &zbus::Connection, hdr: &zbus::message::Header<'_>) -> bool {
    let Some(sender) = hdr.sender() else {
        return false;
    };
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::try_from(bulkhead_api::BUS_NAME) else {
        return false;
    };
    match dbus.get_name_owner(name).await {
        Ok(owner) => owner.as_str() == sender.as_str(),
        Err(_) => false,
    }
}

impl Backend {
    /// Connects the pieces (does not talk to domaind yet).
    pub async fn new(
        conn: &zbus::Connection,
        ui: async_channel::Sender<UiEvent>,
        rules: Rules,
        menu_sync: Option<Duration>,
    ) -> Result<Arc<Self>, BackendError> {
        let proxy = Domaind1Proxy::new(conn).await?;
        Ok(Arc::new(Self {
            proxy,
            ui,
            rules,
            watchers: Mutex::new(HashMap::new()),
            menu_sync,
            menu_kick: tokio::sync::Notify::new(),
        }))
    }

    /// Keeps the user's application menu (`bulkhead_appmenus`) in step with the domains:
    /// rewritten now, a second after a domain starts or stops (a template that stopped may
    /// have new applications; a domain removed or created shows in the next one), and every
    /// `every` at the latest. Entries run the `bulkhead` CLI next to this program (else the
    /// one on PATH).
    async fn keep_menus(self: Arc<Self>, every: Duration) {
        let cli = std::env::current_exe()
            .ok()
            .map(|p| p.with_file_name("bulkhead"))
            .filter(|p| p.exists())
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "bulkhead".to_owned());
        let mut failing = false;
        loop {
            match bulkhead_appmenus::sync(&self.proxy, &cli).await {
                Ok((applied, missing)) => {
                    failing = false;
                    if !applied.written.is_empty() || !applied.removed.is_empty() {
                        info!(written = ?applied.written, removed = ?applied.removed, "application menu updated");
                    }
                    for m in missing {
                        debug!(reason = %m, "menu entry not shown");
                    }
                }
                // once per failing stretch, not every period
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "application menu not updated");
                }
                Err(e) => debug!(error = %e, "application menu still not updated"),
            }
            tokio::select! {
                () = self.menu_kick.notified() => {
                    // one rewrite for a burst of changes
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Serves the ask agent on `conn` and registers it with domaind.
    pub async fn serve_ask_agent(
        &self,
        conn: &zbus::Connection,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        conn.object_server()
            .at(
                bulkhead_api::ASK_AGENT_PATH,
                AskAgent {
                    ui: self.ui.clone(),
                    timeout,
                    proxy: self.proxy.clone(),
                },
            )
            .await?;
        self.proxy.register_ask_agent().await?;
        info!("registered as domaind's ask agent");
        Ok(())
    }

    fn notice(&self, text: String) {
        info!(notice = %text);
        let _ = self.ui.try_send(UiEvent::Notice(text));
    }

    /// Runs until the bus connection ends: follows domain states and denied calls, serves
    /// `cmds`.
    pub async fn run(
        self: Arc<Self>,
        conn: zbus::Connection,
        ask_timeout: Duration,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(), BackendError> {
        let mut states = self.proxy.receive_state_changed().await?;
        let mut denied = self.proxy.receive_call_denied().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, bulkhead_api::BUS_NAME)])
            .await?;
        self.serve_ask_agent(&conn, ask_timeout).await?;
        self.open_running().await?;
        let menus = self.menu_sync.map(|every| {
            let task = tokio::spawn(self.clone().keep_menus(every));
            AbortOnDrop(task.abort_handle())
        });
        let _menus = menus;
        loop {
            tokio::select! {
                Some(sig) = states.next() => {
                    if let Ok(a) = sig.args() {
                        self.state_changed(&a.name, &a.state);
                    }
                }
                Some(sig) = denied.next() => {
                    if let Ok(a) = sig.args() {
                        self.notice(format!(
                            "Denied: {} → {} {}: {}",
                            a.source, a.target, a.service, a.reason
                        ));
                    }
                }
                Some(sig) = owners.next() => {
                    // domaind restarted: register again and pick up its domains.
                    if sig.args().ok().and_then(|a| a.new_owner().as_ref().map(|_| ())).is_some() {
                        info!("domaind (re)appeared on the bus");
                        self.menu_kick.notify_one();
                        if let Err(e) = self.proxy.register_ask_agent().await {
                            warn!(error = %e.message(), "registering the ask agent again");
                        }
                        if let Err(e) = self.open_running().await {
                            warn!(error = %e, "listing domains again");
                        }
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::EvaluatePaste { source, target }) => {
                        let proxy = self.proxy.clone();
                        let ui = self.ui.clone();
                        tokio::spawn(async move {
                            let result = proxy
                                .evaluate_paste(&source, &target)
                                .await
                                .map_err(|e| e.message());
                            let _ = ui.send(UiEvent::PasteDecided { source, target, result }).await;
                        });
                    }
                    None => return Ok(()),
                },
                else => return Ok(()),
            }
        }
    }

    /// Opens the GUI of every running domain not yet watched.
    async fn open_running(self: &Arc<Self>) -> Result<(), BackendError> {
        for d in self.proxy.list().await? {
            if d.state == bulkhead_api::state::RUNNING {
                self.watch(&d.name);
            }
        }
        Ok(())
    }

    fn state_changed(self: &Arc<Self>, name: &str, state: &str) {
        debug!(domain = name, state, "domain state");
        if matches!(
            state,
            bulkhead_api::state::RUNNING | bulkhead_api::state::HALTED
        ) {
            self.menu_kick.notify_one();
        }
        match state {
            bulkhead_api::state::RUNNING => self.watch(name),
            bulkhead_api::state::HALTED
            | bulkhead_api::state::DYING
            | bulkhead_api::state::STOPPING
            | bulkhead_api::state::BROKEN => {
                if let Some(h) = lock(&self.watchers).remove(name) {
                    h.abort();
                    let _ = self.ui.try_send(UiEvent::Ended {
                        domain: name.to_owned(),
                        gen: None,
                    });
                }
            }
            _ => {}
        }
    }

    /// Starts following a running domain's GUI (no-op if already).
    fn watch(self: &Arc<Self>, name: &str) {
        let mut w = lock(&self.watchers);
        if w.get(name).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let me = self.clone();
        let domain = name.to_owned();
        let task = tokio::spawn(async move { me.follow(domain).await });
        w.insert(name.to_owned(), task.abort_handle());
    }

    async fn label_of(&self, domain: &str) -> Label {
        label_of(&self.proxy, domain).await
    }

    /// Opens and drives `domain`'s GUI until it halts, re-opening when the stream closes
    /// (the gui-agent may not listen yet). A domain that breaks the GUI rules is not
    /// re-opened.
    async fn follow(self: Arc<Self>, domain: String) {
        let mut delay = FIRST_RETRY;
        let mut failures = 0u32;
        loop {
            match self.proxy.open_gui(&domain).await {
                Ok(fd) => {
                    let label = self.label_of(&domain).await;
                    match self.serve(&domain, label, fd.into()).await {
                        Served::Stop => return,
                        Served::Retry { was_ready } => {
                            if was_ready {
                                delay = FIRST_RETRY;
                                failures = 0;
                            }
                        }
                    }
                }
                Err(ApiError::InvalidState(_) | ApiError::NoSuchDomain(_)) => {
                    debug!(domain, "not running; no GUI");
                    return;
                }
                Err(e) => debug!(domain, error = %e.message(), "OpenGui"),
            }
            tokio::time::sleep(delay).await;
            failures = failures.saturating_add(1);
            let cap = if failures >= QUIET_AFTER {
                QUIET_RETRY
            } else {
                MAX_RETRY
            };
            delay = (delay * 2).min(cap);
        }
    }

    async fn serve(&self, domain: &str, label: Label, fd: std::os::fd::OwnedFd) -> Served {
        let conn = match GuiConnection::from_fd(fd, crate::keymap::current()) {
            Ok(c) => c,
            Err(e) => {
                warn!(domain, error = %e, "GUI stream");
                return Served::Retry { was_ready: false };
            }
        };
        serve_connection(&self.ui, &self.rules, domain, label, conn).await
    }
}

static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// Drives one GUI connection of `domain` for the UI until it ends.
async fn serve_connection(
    ui: &async_channel::Sender<UiEvent>,
    rules: &Rules,
    domain: &str,
    label: Label,
    conn: GuiConnection,
) -> Served {
    let gen = NEXT_GEN.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(Mutex::new(DomainWindows::new(rules.clone())));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let gui = DomainGui {
        domain: domain.to_owned(),
        label,
        gen,
        state: state.clone(),
        sender: conn.sender(),
        pending: pending.clone(),
    };
    if ui.send(UiEvent::Connected(gui)).await.is_err() {
        return Served::Stop;
    }
    let mut ready = false;
    let end = drive(domain, conn, state, |c| {
        if matches!(c, Change::Ready { .. }) {
            ready = true;
            info!(domain, "GUI connected");
        }
        if lock(&pending).record(c) {
            let _ = ui.try_send(UiEvent::Changed {
                domain: domain.to_owned(),
                gen,
            });
        }
    })
    .await;
    let _ = ui.try_send(UiEvent::Ended {
        domain: domain.to_owned(),
        gen: Some(gen),
    });
    match end {
        PeerEnd::Dropped(v) => {
            let text = format!("The windows of {domain} were closed: it broke the GUI rules ({v})");
            info!(notice = %text);
            let _ = ui.try_send(UiEvent::Notice(text));
            Served::Stop
        }
        PeerEnd::Closed | PeerEnd::Failed(_) => Served::Retry { was_ready: ready },
    }
}

/// Development aid: shows the windows of a gui-agent listening on `socket` (not through
/// domaind) as domain `domain` with `label`.
pub async fn attach_socket(
    ui: async_channel::Sender<UiEvent>,
    rules: Rules,
    domain: String,
    label: Label,
    socket: std::path::PathBuf,
) -> std::io::Result<()> {
    let stream = tokio::net::UnixStream::connect(&socket).await?;
    let conn = GuiConnection::new(stream, None);
    serve_connection(&ui, &rules, &domain, label, conn).await;
    Ok(())
}

enum Served {
    /// Do not open again.
    Stop,
    /// Open again after a pause.
    Retry { was_ready: bool },
}

/// Aborts a task when dropped (the menu keeper ends with the backend's run).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_wakes_once_until_taken() {
        let mut p = Pending::default();
        let r = Rect {
            x: 0,
            y: 0,
            width: 1,
            height: 1,
        };
        assert!(!p.record(&Change::Nothing));
        assert!(p.record(&Change::Damaged(1, r)));
        assert!(!p.record(&Change::Title(1)));
        assert!(!p.record(&Change::Damaged(1, r)));
        let t = p.take();
        assert!(t.structure);
        assert_eq!(t.damage[&1].len(), 2);
        assert!(p.damage.is_empty() && !p.structure);
        assert!(p.record(&Change::Clipboard(Bytes::from_static(b"x"))));
    }
}
