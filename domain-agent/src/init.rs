//! bulkhead-init: pid 1 of a domain.
//!
//! Blocks SIGCHLD/SIGTERM/SIGINT and reads them from a signalfd (a pid-namespace init only
//! receives signals it handles or blocks). It reaps every child, keeps the agent running
//! (restart with exponential backoff) and on SIGTERM/SIGINT shuts down: SIGTERM to every
//! process, wait up to the timeout for them to exit, SIGKILL the rest, exit 0.
//! A SIGTERM queued with `sigqueue` carries the timeout in seconds as its value (the agent
//! sends it that way for `Control::Shutdown`).
//!
//! When it is not pid 1 (tests, debugging) it makes itself a child subreaper and only ever
//! signals its own descendants, never `kill(-1)`.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};

/// Longest shutdown grace period accepted from a queued signal.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);
const RESTART_START: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// An agent that ran this long is considered healthy: the backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Errors that stop init itself.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A syscall init depends on failed.
    #[error("{what}: {source}")]
    Sys {
        /// What init was doing.
        what: &'static str,
        /// The error.
        #[source]
        source: Errno,
    },
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> InitError {
    move |source| InitError::Sys { what, source }
}

/// Configuration of init.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// Path of the agent binary.
    pub agent: PathBuf,
    /// Grace period when SIGTERM carries none.
    pub shutdown_timeout: Duration,
    /// The gui-agent binary to keep running as the default user when it exists
    /// ([`crate::gui::spawn_gui_agent`]); None: no GUI.
    pub gui_agent: Option<PathBuf>,
    /// A terminal to keep a root shell on ([`crate::console::spawn_console_shell`]): the
    /// serial console of a VM domain; None: no console shell.
    pub console: Option<PathBuf>,
    /// The update proxy forwarder to keep running as the default user
    /// ([`crate::updates::spawn_forwarder`]): template domains only; None: none.
    pub updates_forwarder: Option<PathBuf>,
}

/// A supervised helper process (the gui-agent, the console shell): restarted with backoff.
#[derive(Default)]
struct Supervised {
    pid: Option<Pid>,
    started: Option<Instant>,
    restart_at: Option<Instant>,
    backoff: Duration,
}

impl Supervised {
    fn started(&mut self, pid: Pid) {
        self.pid = Some(pid);
        self.started = Some(Instant::now());
    }

    /// It exited: a long healthy run starts the backoff over.
    fn exited(&mut self) {
        self.pid = None;
        if self
            .started
            .take()
            .is_some_and(|t| t.elapsed() >= HEALTHY_RUN)
        {
            self.backoff = RESTART_START;
        }
    }

    fn schedule_restart(&mut self, what: &str) {
        let delay = self.backoff.max(RESTART_START);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "restarting {what} after delay"
        );
        self.restart_at = Some(Instant::now() + delay);
        self.backoff = (delay * 2).min(RESTART_MAX);
    }

    /// Whether a scheduled restart is due at `now`.
    fn due(&self, now: Instant) -> bool {
        self.pid.is_none() && self.restart_at.is_some_and(|t| t <= now)
    }
}

struct Agent {
    pid: Pid,
    started: Instant,
}

struct State {
    cfg: InitConfig,
    pid1: bool,
    agent: Option<Agent>,
    restart_at: Option<Instant>,
    backoff: Duration,
    deadline: Option<Instant>,
    killed: bool,
    gui: Supervised,
    console: Supervised,
    updates: Supervised,
}

/// Process ids of all descendants of `root`, from /proc.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut parent_of: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..." where comm may contain anything: split after the last ')'.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root.as_raw()];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && !out.contains(&Pid::from_raw(child)) {
                out.push(Pid::from_raw(child));
                frontier.push(child);
            }
        }
    }
    out
}

impl State {
    fn signal_all(&self, sig: Signal) {
        if self.pid1 {
            match kill(Pid::from_raw(-1), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::error!(?sig, error = %e, "kill(-1) failed"),
            }
        } else {
            for pid in descendants(getpid()) {
                let _ = kill(pid, sig);
            }
        }
    }

    fn spawn_agent(&mut self) {
        self.restart_at = None;
        let mut cmd = Command::new(&self.cfg.agent);
        cmd.env(crate::ENV_INIT_PID, getpid().as_raw().to_string())
            .stdin(Stdio::null());
        if self
            .cfg
            .gui_agent
            .as_deref()
            .is_some_and(std::path::Path::exists)
        {
            cmd.env(crate::ENV_GUI_EXPECTED, "1");
        }
        // SAFETY: runs in the forked child before exec and only calls pthread_sigmask
        // (async-signal-safe) to clear the mask init set up for its signalfd, so the agent
        // and its commands see SIGTERM/SIGINT/SIGCHLD normally.
        unsafe {
            cmd.pre_exec(|| {
                SigSet::empty()
                    .thread_set_mask()
                    .map_err(std::io::Error::from)
            });
        }
        let res = cmd.spawn();
        match res {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                tracing::info!(pid = pid.as_raw(), agent = %self.cfg.agent.display(), "agent started");
                // We reap it with waitpid(-1) ourselves; the std handle is not needed.
                drop(child);
                self.agent = Some(Agent {
                    pid,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                tracing::error!(agent = %self.cfg.agent.display(), error = %e, "cannot start agent");
                self.schedule_restart();
            }
        }
    }

    fn spawn_gui_agent(&mut self) {
        self.gui.restart_at = None;
        let Some(bin) = self.cfg.gui_agent.clone() else {
            return;
        };
        match crate::gui::spawn_gui_agent(&bin) {
            Ok(Some(pid)) => {
                tracing::info!(pid = pid.as_raw(), bin = %bin.display(), "gui-agent started");
                self.gui.started(pid);
            }
            Ok(None) => tracing::debug!(bin = %bin.display(), "no gui-agent installed"),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the gui-agent");
                self.schedule_gui_restart();
            }
        }
    }

    fn schedule_gui_restart(&mut self) {
        if self.deadline.is_none() {
            self.gui.schedule_restart("gui-agent");
        }
    }

    fn spawn_forwarder(&mut self) {
        self.updates.restart_at = None;
        let Some(bin) = self.cfg.updates_forwarder.clone() else {
            return;
        };
        if let Err(e) = crate::updates::write_apt_proxy_conf() {
            tracing::warn!(error = %e, path = crate::updates::APT_PROXY_CONF, "apt will not use the update proxy");
        }
        match crate::updates::spawn_forwarder(&bin) {
            Ok(pid) => {
                tracing::info!(pid = pid.as_raw(), "update proxy forwarder started");
                self.updates.started(pid);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the update proxy forwarder");
                if self.deadline.is_none() {
                    self.updates.schedule_restart("update proxy forwarder");
                }
            }
        }
    }

    fn spawn_console(&mut self) {
        self.console.restart_at = None;
        let Some(tty) = self.cfg.console.clone() else {
            return;
        };
        match crate::console::spawn_console_shell(&tty) {
            Ok(pid) => {
                tracing::info!(pid = pid.as_raw(), tty = %tty.display(), "console shell started");
                self.console.started(pid);
            }
            Err(e) => {
                tracing::error!(tty = %tty.display(), error = %e, "cannot start the console shell");
                if self.deadline.is_none() {
                    self.console.schedule_restart("console shell");
                }
            }
        }
    }

    fn schedule_restart(&mut self) {
        if self.deadline.is_some() {
            return;
        }
        tracing::info!(
            delay_ms = self.backoff.as_millis() as u64,
            "restarting agent after delay"
        );
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RESTART_MAX);
    }

    fn begin_shutdown(&mut self, timeout: Duration) {
        if self.deadline.is_some() {
            return;
        }
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "shutting down: SIGTERM to all processes"
        );
        self.deadline = Some(Instant::now() + timeout);
        self.restart_at = None;
        self.signal_all(Signal::SIGTERM);
    }

    /// Reaps everything that exited. Returns true when shutting down and nothing is left.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return false,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if self.agent.as_ref().is_some_and(|a| a.pid == pid) {
                        let ran = self.agent.take().map(|a| a.started.elapsed());
                        tracing::warn!(?status, "agent exited");
                        if ran.is_some_and(|r| r >= HEALTHY_RUN) {
                            self.backoff = RESTART_START;
                        }
                        self.schedule_restart();
                    } else if self.gui.pid == Some(pid) {
                        self.gui.exited();
                        tracing::warn!(?status, "gui-agent exited");
                        self.schedule_gui_restart();
                    } else if self.updates.pid == Some(pid) {
                        self.updates.exited();
                        tracing::warn!(?status, "update proxy forwarder exited");
                        if self.deadline.is_none() {
                            self.updates.schedule_restart("update proxy forwarder");
                        }
                    } else if self.console.pid == Some(pid) {
                        // a logout ends the shell: a new one waits on the console
                        self.console.exited();
                        tracing::info!(?status, "console shell exited");
                        if self.deadline.is_none() {
                            self.console.schedule_restart("console shell");
                        }
                    } else {
                        tracing::debug!(?status, "reaped");
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return self.deadline.is_some(),
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return false;
                }
            }
        }
    }

    fn timeout_from(&self, info: &libc::signalfd_siginfo) -> Duration {
        if info.ssi_code == libc::SI_QUEUE && info.ssi_ptr > 0 {
            Duration::from_secs(info.ssi_ptr).min(MAX_SHUTDOWN_TIMEOUT)
        } else {
            self.cfg.shutdown_timeout
        }
    }
}

/// End the VM: a VM domain's init must not exit (the kernel would panic); it syncs the disks,
/// unmounts the private volume so its journal is clean, and reboots. The kernel runs with
/// `reboot=k`, so the reboot is an i8042 reset, which the VMM takes as the end of the VM.
/// Returns only if the reboot call fails.
pub fn end_vm() -> InitError {
    tracing::info!("all processes gone; syncing and ending the VM");
    nix::unistd::sync();
    if let Err(e) = nix::mount::umount("/home") {
        tracing::warn!(error = %e, "cannot unmount /home before the reboot; synced only");
        nix::unistd::sync();
    }
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(e) => InitError::Sys {
            what: "reboot",
            source: e,
        },
    }
}

/// Runs init until shutdown completes. Returns the exit code (0).
pub fn run(cfg: InitConfig) -> Result<i32, InitError> {
    let pid1 = getpid().as_raw() == 1;
    if !pid1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(sys("becoming a child subreaper"))?;
        tracing::warn!("not pid 1: acting as subreaper, signalling only descendants");
    }
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    mask.thread_block().map_err(sys("blocking signals"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("creating signalfd"))?;

    let mut st = State {
        cfg,
        pid1,
        agent: None,
        restart_at: None,
        backoff: RESTART_START,
        deadline: None,
        killed: false,
        gui: Supervised::default(),
        console: Supervised::default(),
        updates: Supervised::default(),
    };
    tracing::info!(pid1, "bulkhead-init running");
    st.spawn_gui_agent();
    st.spawn_agent();
    st.spawn_console();
    st.spawn_forwarder();

    loop {
        let now = Instant::now();
        if st.deadline.is_none() && st.agent.is_none() && st.restart_at.is_some_and(|t| t <= now) {
            st.spawn_agent();
        }
        if st.deadline.is_none() && st.gui.due(now) {
            st.spawn_gui_agent();
        }
        if st.deadline.is_none() && st.console.due(now) {
            st.spawn_console();
        }
        if st.deadline.is_none() && st.updates.due(now) {
            st.spawn_forwarder();
        }
        if let Some(deadline) = st.deadline {
            if !st.killed && deadline <= now {
                tracing::warn!("shutdown timeout reached: SIGKILL to all remaining processes");
                st.signal_all(Signal::SIGKILL);
                st.killed = true;
            }
        }
        let next = [
            st.restart_at,
            st.gui.restart_at,
            st.console.restart_at,
            st.updates.restart_at,
            st.deadline.filter(|_| !st.killed),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(InitError::Sys {
                    what: "poll",
                    source: e,
                })
            }
        }
        loop {
            match sfd.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    if signo == libc::SIGTERM || signo == libc::SIGINT {
                        let timeout = st.timeout_from(&info);
                        st.begin_shutdown(timeout);
                    }
                }
                Ok(None) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(InitError::Sys {
                        what: "reading signalfd",
                        source: e,
                    })
                }
            }
        }
        if st.reap() {
            tracing::info!("all processes gone; init exits");
            return Ok(0);
        }
    }
}
