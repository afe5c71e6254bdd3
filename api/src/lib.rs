//! The D-Bus contract of domaind, shared by the daemon and its clients (the `bulkhead` CLI,
//! dom0's desktop and manager, tests, the bench). It depends on zbus and serde only, so a
//! client builds none of the daemon (sandbox, monitor, templates, net, usb).
//!
//! Bus name, object path and interface are all `org.bulkhead.Domaind1`
//! (object `/org/bulkhead/Domaind1`). Errors are D-Bus errors named `org.bulkhead.Error.<Kind>`
//! whose message is a sentence a person can act on; [`Error`] maps them back on the client
//! side, so `proxy.start("work").await` returns `Err(Error::InvalidState(msg))` and so on.
//! Each kind ([`ErrorKind`]) has its exit code for scripts ([`exit::Code`], the one table the
//! `bulkhead` CLI exits with and lists in its `--help`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), bulkhead_api::Error> {
//! let conn = bulkhead_api::connect(None).await?;
//! let proxy = bulkhead_api::Domaind1Proxy::new(&conn).await?;
//! for d in proxy.list().await? {
//!     println!("{} {} {}", d.name, d.class, d.state);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;

pub mod exit;

use exit::Code;
use serde::{Deserialize, Serialize};
use zbus::zvariant::{Fd, Type};

/// Well-known bus name of domaind.
pub const BUS_NAME: &str = "org.bulkhead.Domaind1";
/// Object path of the single domaind object.
pub const OBJECT_PATH: &str = "/org/bulkhead/Domaind1";
/// Interface name.
pub const INTERFACE: &str = "org.bulkhead.Domaind1";
/// Environment variable naming a private bus address (tests); otherwise the system bus is used.
pub const BUS_ADDRESS_ENV: &str = "BULKHEAD_BUS_ADDRESS";
/// Prefix of every error name domaind returns.
pub const ERROR_PREFIX: &str = "org.bulkhead.Error";
/// Interface an ask agent (the GUI) exports to answer `ask` policy decisions.
pub const ASK_AGENT_INTERFACE: &str = "org.bulkhead.AskAgent1";
/// Object path of the ask agent's object, on the agent's own connection.
pub const ASK_AGENT_PATH: &str = "/org/bulkhead/AskAgent1";

/// Domain states as reported by `List` and `StateChanged`.
pub mod state {
    pub const HALTED: &str = "halted";
    pub const STARTING: &str = "starting";
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    pub const STOPPING: &str = "stopping";
    pub const DYING: &str = "dying";
    /// The domain's config file could not be read; `GetProperties` returns the file error.
    pub const BROKEN: &str = "broken";
}

/// One row of `List()`; D-Bus signature `(sssssuuss)`.
///
/// `template` and `netvm` are `""` when unset.
#[derive(Serialize, Deserialize, Type, Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub class: String,
    pub state: String,
    pub label: String,
    pub isolation: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub template: String,
    pub netvm: String,
}

/// One row of `ListTemplates()`; D-Bus signature `(ssssstt)`.
///
/// `state`: `ready` (built from its recipe), `changed` (changes made in the template kept
/// since), `stale` (its recipe changed since it was built: `template install` rebuilds it and
/// drops the changes), `not built`, `broken` (see `detail`), or `available` (a recipe that is
/// not installed). `recipe` is the recipe it comes from (another template's for a clone);
/// times are Unix seconds, 0 when unknown.
#[derive(Serialize, Deserialize, Type, Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    pub name: String,
    pub state: String,
    pub recipe: String,
    pub root: String,
    pub detail: String,
    pub built_at: u64,
    pub changed_at: u64,
}

/// Errors of the domaind API. On the wire each variant is `org.bulkhead.Error.<Variant>` with
/// the message as its only argument.
#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "org.bulkhead.Error")]
pub enum Error {
    /// Transport or protocol error of the bus itself (or an error name we do not know).
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchDomain(String),
    AlreadyExists(String),
    InvalidName(String),
    InvalidProperty(String),
    InvalidState(String),
    TemplateMissing(String),
    Backend(String),
    Agent(String),
    AccessDenied(String),
    Io(String),
    /// An argument was refused (a policy text with errors, a bad file name, an unknown
    /// application); for a policy text the message has one `file:line: message` per line.
    InvalidArgument(String),
    /// A resource limit refused the request: a cap on live disposables (in total or for one
    /// source) or the memory margin of disposable starts. The message says which limit, how
    /// much is in use and which setting raises it; ending something frees it again.
    LimitReached(String),
}

/// The kinds of [`Error`] domaind returns (every variant but `ZBus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NoSuchDomain,
    AlreadyExists,
    InvalidName,
    InvalidProperty,
    InvalidState,
    TemplateMissing,
    Backend,
    Agent,
    AccessDenied,
    Io,
    InvalidArgument,
    LimitReached,
}

impl ErrorKind {
    /// Every kind, in the order of [`Error`]'s variants.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NoSuchDomain,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidName,
        ErrorKind::InvalidProperty,
        ErrorKind::InvalidState,
        ErrorKind::TemplateMissing,
        ErrorKind::Backend,
        ErrorKind::Agent,
        ErrorKind::AccessDenied,
        ErrorKind::Io,
        ErrorKind::InvalidArgument,
        ErrorKind::LimitReached,
    ];

    /// The table: each kind's D-Bus error name (after [`ERROR_PREFIX`]`.`, the name of its
    /// [`Error`] variant) and the exit code for scripts.
    const fn row(self) -> (&'static str, Code) {
        match self {
            ErrorKind::NoSuchDomain => ("NoSuchDomain", Code::NoSuchDomain),
            ErrorKind::AlreadyExists => ("AlreadyExists", Code::AlreadyExists),
            ErrorKind::InvalidName => ("InvalidName", Code::InvalidInput),
            ErrorKind::InvalidProperty => ("InvalidProperty", Code::InvalidInput),
            ErrorKind::InvalidArgument => ("InvalidArgument", Code::InvalidInput),
            ErrorKind::InvalidState => ("InvalidState", Code::InvalidState),
            ErrorKind::TemplateMissing => ("TemplateMissing", Code::TemplateMissing),
            ErrorKind::LimitReached => ("LimitReached", Code::LimitReached),
            ErrorKind::AccessDenied => ("AccessDenied", Code::AccessDenied),
            ErrorKind::Backend => ("Backend", Code::Failure),
            ErrorKind::Agent => ("Agent", Code::Failure),
            ErrorKind::Io => ("Io", Code::Failure),
        }
    }

    /// The last part of the D-Bus error name (`org.bulkhead.Error.<name>`).
    pub const fn name(self) -> &'static str {
        self.row().0
    }

    /// The exit code for scripts.
    pub const fn exit_code(self) -> Code {
        self.row().1
    }

    /// The kind named `name` (the last part of its D-Bus error name).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl Error {
    /// The kind of error domaind returned; `None` for a failure of the bus itself.
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            Error::ZBus(_) => return None,
            Error::NoSuchDomain(_) => ErrorKind::NoSuchDomain,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidName(_) => ErrorKind::InvalidName,
            Error::InvalidProperty(_) => ErrorKind::InvalidProperty,
            Error::InvalidState(_) => ErrorKind::InvalidState,
            Error::TemplateMissing(_) => ErrorKind::TemplateMissing,
            Error::Backend(_) => ErrorKind::Backend,
            Error::Agent(_) => ErrorKind::Agent,
            Error::AccessDenied(_) => ErrorKind::AccessDenied,
            Error::Io(_) => ErrorKind::Io,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::LimitReached(_) => ErrorKind::LimitReached,
        })
    }

    /// Stable exit code for scripts, the one the `bulkhead` CLI exits with: its kind's (see
    /// [`ErrorKind::exit_code`]), or for a failure of the bus the one
    /// [`exit::code_for_zbus_error`] gives.
    pub fn exit_code(&self) -> Code {
        match self {
            Error::ZBus(e) => exit::code_for_zbus_error(e),
            _ => self.kind().map_or(Code::Failure, ErrorKind::exit_code),
        }
    }

    /// The human message (without the D-Bus error name).
    pub fn message(&self) -> String {
        match self {
            Error::ZBus(e) => e.to_string(),
            Error::NoSuchDomain(m)
            | Error::AlreadyExists(m)
            | Error::InvalidName(m)
            | Error::InvalidProperty(m)
            | Error::InvalidState(m)
            | Error::TemplateMissing(m)
            | Error::Backend(m)
            | Error::Agent(m)
            | Error::AccessDenied(m)
            | Error::Io(m)
            | Error::InvalidArgument(m)
            | Error::LimitReached(m) => m.clone(),
        }
    }
}

/// Client proxy for `org.bulkhead.Domaind1`.
///
/// Method calls have no timeout of their own (a `Run` lasts as long as the command).
#[zbus::proxy(
    interface = "org.bulkhead.Domaind1",
    default_service = "org.bulkhead.Domaind1",
    default_path = "/org/bulkhead/Domaind1"
)]
pub trait Domaind1 {
    /// Every domain with its state; broken config files are listed with state "broken".
    fn list(&self) -> Result<Vec<DomainInfo>, Error>;

    /// Every property as text (`features.KEY` for features), plus `state`.
    fn get_properties(&self, name: &str) -> Result<HashMap<String, String>, Error>;

    /// `value` "" with `netvm`/`template`/`default_dispvm` clears it.
    fn set_property(&self, name: &str, prop: &str, value: &str) -> Result<(), Error>;

    /// Create a domain. `template` "" = none; `label` "" = default ("red"); `props` as in
    /// `SetProperty`.
    fn create(
        &self,
        name: &str,
        class: &str,
        template: &str,
        label: &str,
        props: HashMap<&str, &str>,
    ) -> Result<(), Error>;

    /// Copy config and private volume of `source` to a new domain `dest`.
    #[zbus(name = "Clone")]
    fn clone_domain(&self, source: &str, dest: &str) -> Result<(), Error>;

    /// Remove a halted domain with its data.
    fn remove(&self, name: &str) -> Result<(), Error>;

    /// Start; returns when the domain's agent has connected.
    fn start(&self, name: &str) -> Result<(), Error>;

    /// Graceful shutdown through init; kill after `timeout_secs` (0 = 20 s). Returns when halted.
    fn shutdown(&self, name: &str, timeout_secs: u32) -> Result<(), Error>;

    fn kill(&self, name: &str) -> Result<(), Error>;
    fn pause(&self, name: &str) -> Result<(), Error>;
    fn unpause(&self, name: &str) -> Result<(), Error>;

    /// Run `argv` in the domain (started if halted) with the given fds; returns the exit code
    /// (128+signal when killed by a signal). `user` "" = the default user.
    fn run(
        &self,
        name: &str,
        argv: &[&str],
        user: &str,
        stdin: Fd<'_>,
        stdout: Fd<'_>,
        stderr: Fd<'_>,
    ) -> Result<i32, Error>;

    /// Create a disposable from `base`, run `argv` in it, remove it. Returns (name, exit code).
    fn run_disposable(
        &self,
        base: &str,
        argv: &[&str],
        user: &str,
        stdin: Fd<'_>,
        stdout: Fd<'_>,
        stderr: Fd<'_>,
    ) -> Result<(String, i32), Error>;

    /// Build template recipe `name`, writing progress lines to `progress`; returns the root path.
    fn build_template(&self, name: &str, progress: Fd<'_>) -> Result<String, Error>;

    /// Installed templates and the recipes that are not installed.
    fn list_templates(&self) -> Result<Vec<TemplateInfo>, Error>;

    /// A new template `dest` with a copy of template `source`'s current root (Qubes'
    /// `qvm-clone` of a template); returns the new root path.
    fn clone_template(&self, source: &str, dest: &str) -> Result<String, Error>;

    /// `RevertTemplate(name s) -> s`: Qubes' `qvm-volume revert` of a template's root. The
    /// root template `name` had before its last switch (the changes made in it kept at a
    /// stop, a rebuild, or a revert) becomes current again and the root it replaces becomes
    /// the one to go back to, so a second revert undoes the first. Returns the new root path.
    /// Domains that run keep the root they started on; their next start uses the new one.
    /// `InvalidState` while the template is not halted (what it changes is kept on the root
    /// it started on), when it has no earlier root (built and never changed since, or
    /// cloned) or that root is unusable; `InvalidProperty` if `name` is not a template.
    fn revert_template(&self, name: &str) -> Result<String, Error>;

    /// Path of the domain's log file.
    fn log_path(&self, name: &str) -> Result<String, Error>;

    /// `OpenLog(name s) -> h`: a read-only descriptor of the domain's current log (the log
    /// directory is root-only; this lets bulkhead-admin members read it). The rotated
    /// previous generation (`<log>.old`) is not included. `Io` if the domain has no log yet.
    fn open_log(&self, name: &str) -> Result<zbus::zvariant::OwnedFd, Error>;

    /// `OpenConsole(name s) -> h`: a write-only descriptor of running VM domain `name`'s
    /// serial console input (its bytes reach the guest's ttyS0, where its init keeps a root
    /// shell); the output is the domain's log (`OpenLog`). `InvalidState` if the domain is not
    /// a running VM (a sandbox has no serial console).
    fn open_console(&self, name: &str) -> Result<zbus::zvariant::OwnedFd, Error>;

    /// `OpenGui(name s) -> h`: one end of a unix socketpair carrying the GUI protocol
    /// (`bulkhead_wire::gui`) of running domain `name`; `InvalidState` if it is not running,
    /// `Agent` if its agent cannot open a GUI stream. dom0 parses it with bulkhead-gui-host.
    fn open_gui(&self, name: &str) -> Result<zbus::zvariant::OwnedFd, Error>;

    /// `Call(target s, service s, stdin h, stdout h, stderr h) -> i`: a service call from
    /// dom0 (policy source `@adminvm`): `service` is `SERVICE[+ARG]`, `target` a domain or a
    /// token (`@dispvm`, `@dispvm:NAME`, `@default`). Returns the service's exit code;
    /// `AccessDenied` when the policy refused (the CLI exits 126), `Agent` when it could not
    /// be run (125).
    fn call(
        &self,
        target: &str,
        service: &str,
        stdin: Fd<'_>,
        stdout: Fd<'_>,
        stderr: Fd<'_>,
    ) -> Result<i32, Error>;

    /// Make the caller the ask agent: `ask` decisions call `org.bulkhead.AskAgent1.Ask` on
    /// its `/org/bulkhead/AskAgent1` object (a later registration replaces it).
    fn register_ask_agent(&self) -> Result<(), Error>;

    /// Whether `source` may paste into `target` (service `bulkhead.ClipboardPaste`; `ask`
    /// counts as allow because the hotkey is the consent, `deny` is final).
    fn evaluate_paste(&self, source: &str, target: &str) -> Result<bool, Error>;

    /// `LastDecision(source s, target s) -> (service s, outcome s, detail s, at t)`: the
    /// newest call from `source` to `target` (as the caller named it) since domaind started:
    /// `SERVICE[+ARG]`, "allowed" / "denied" / "allowed after asking" / "denied after asking",
    /// the rule that decided (`file:line`) or the reason, seconds since the epoch.
    /// `InvalidArgument` when there was none.
    fn last_decision(
        &self,
        source: &str,
        target: &str,
    ) -> Result<(String, String, String, u64), Error>;

    /// Every error of the installed policy as (file, line, message); empty when valid.
    fn check_policy(&self) -> Result<Vec<(String, u32, String)>, Error>;

    /// The errors `text` would have as the policy file `file_name` (for an editor).
    fn check_policy_text(
        &self,
        file_name: &str,
        text: &str,
    ) -> Result<Vec<(String, u32, String)>, Error>;

    /// `FirewallList(domain s) -> as`: the domain's firewall rules in order, in Qubes' text
    /// form (`action=accept dst4=192.0.2.0/24 proto=tcp dstports=80-80`). Empty: the default
    /// (everything allowed but other domains). `InvalidProperty` with the reason when the
    /// stored rules do not parse (all the domain's traffic is then dropped).
    fn firewall_list(&self, domain: &str) -> Result<Vec<String>, Error>;

    /// `FirewallAdd(domain s, rule s, position i)`: insert `rule` before index `position`
    /// (-1 or past the end: append); applied at once. `expire=+SECONDS` is made absolute.
    fn firewall_add(&self, domain: &str, rule: &str, position: i32) -> Result<(), Error>;

    /// `FirewallDel(domain s, index u)`: remove rule `index` (0-based, as listed).
    fn firewall_del(&self, domain: &str, index: u32) -> Result<(), Error>;

    /// `FirewallDelRule(domain s, rule s)`: remove the first rule whose text (as
    /// `FirewallList` gives it) is `rule`: a client that shows the rules deletes the one the
    /// user saw even when the list changed meanwhile (a rule expired, another client edited
    /// it). `InvalidProperty` when no rule has that text (nothing removed).
    fn firewall_del_rule(&self, domain: &str, rule: &str) -> Result<(), Error>;

    /// `FirewallReset(domain s)`: remove every rule (back to the default).
    fn firewall_reset(&self, domain: &str) -> Result<(), Error>;
    /// `ListPolicyFiles() -> a(ss)`: (file name, full path) of every policy file in
    /// evaluation order (runtime files merged in by name).
    fn list_policy_files(&self) -> Result<Vec<(String, String)>, Error>;

    /// `ReadPolicyFile(name s) -> s`: the text of one policy file (a plain name).
    fn read_policy_file(&self, name: &str) -> Result<String, Error>;

    /// `WritePolicyFile(name s, text s)`: replace or create `NN-name.policy` in the policy
    /// directory atomically; `InvalidArgument` with every `file:line: message` (one per
    /// line) when the text has errors, nothing written then.
    fn write_policy_file(&self, name: &str, text: &str) -> Result<(), Error>;

    /// `DeletePolicyFile(name s)`: remove `NN-name.policy` from the policy directory (its
    /// rules stop applying with the next call); `InvalidArgument` when the directory has no
    /// such file (files elsewhere, e.g. runtime ones, are not deleted).
    fn delete_policy_file(&self, name: &str) -> Result<(), Error>;

    /// `ListApplications(domain s) -> a(sss)`: (desktop id, display name, icon name; "" when
    /// none) of the domain's application menu, from its template's
    /// `/usr/share/applications` (`NoDisplay` entries skipped).
    fn list_applications(&self, domain: &str) -> Result<Vec<(String, String, String)>, Error>;

    /// `GetApplicationIcon(domain s, desktop_id s) -> ay`: the PNG file of the icon of one
    /// application of the domain's menu (as listed by `ListApplications`), read from its
    /// template's root only: an `Icon=` name as `/usr/share/icons/hicolor/SIZE/apps/NAME.png`
    /// (48x48, 64x64, 32x32, 128x128, 256x256, 24x24, 16x16, in that order), then
    /// `/usr/share/pixmaps/NAME.png`; symbolic links are resolved inside that root, never out
    /// of it. PNG only (SVG and XPM icons are not supported), at most 256 KiB (a larger file
    /// counts as not found). Empty when the entry has no icon, names a path, or none is
    /// found; the bytes are the template's, unchecked: decode them with limits.
    /// `InvalidArgument` for a desktop id that is not in the menu.
    fn get_application_icon(&self, domain: &str, desktop_id: &str) -> Result<Vec<u8>, Error>;

    /// `RunApplication(domain s, desktop_id s)`: start the application detached in `domain`
    /// (started first if halted), or in a new disposable: `@dispvm` (dom0's default
    /// disposable template) or `@dispvm:BASE`. Returns when the launch began.
    fn run_application(&self, domain: &str, desktop_id: &str) -> Result<(), Error>;

    /// `GetUsage(domain s) -> (tt)`: memory in use (bytes) and CPU time used (ns) by the
    /// domain's cgroup; (0, 0) when it is not running.
    fn get_usage(&self, domain: &str) -> Result<(u64, u64), Error>;

    /// `UsbList() -> a(ssssss)`: the usb domain's devices as (busid, `vendor:product`,
    /// manufacturer, product, serial, class); the class reads e.g. `keyboard`, `mouse`,
    /// `hid`, `mass-storage`, `class 0xNN`, with `, attached to DOMAIN` when attached.
    fn usb_list(&self) -> Result<Vec<(String, String, String, String, String, String)>, Error>;

    /// `UsbAttach(busid s, domain s)`: the policy-checked call `bulkhead.usb.Attach+BUSID`
    /// from `domain` (`dom0` = `@adminvm`, input devices only) to the usb domain.
    /// `AccessDenied` when refused; `Backend` when the kernel lacks USB/IP (the message says
    /// what is missing).
    fn usb_attach(&self, busid: &str, domain: &str) -> Result<(), Error>;

    /// `UsbDetach(busid s)`: give an attached device back to the usb domain.
    fn usb_detach(&self, busid: &str) -> Result<(), Error>;

    /// `UsbStatus() -> s`: "" when USB/IP can be used here, else a plain sentence on what
    /// the kernel lacks and what to do.
    fn usb_status(&self) -> Result<String, Error>;

    #[zbus(signal)]
    fn state_changed(&self, name: String, state: String) -> zbus::Result<()>;

    #[zbus(signal)]
    fn progress(&self, name: String, step: String, done: u32, total: u32) -> zbus::Result<()>;

    /// A call was refused (policy deny, the user's deny, or no answer to an ask); `service`
    /// is `SERVICE[+ARG]`, `reason` a sentence for the user.
    #[zbus(signal)]
    fn call_denied(
        &self,
        source: String,
        target: String,
        service: String,
        reason: String,
    ) -> zbus::Result<()>;
}

/// Client proxy for an ask agent (domaind calls it; the GUI implements
/// `org.bulkhead.AskAgent1` at [`ASK_AGENT_PATH`] on its own connection).
#[zbus::proxy(
    interface = "org.bulkhead.AskAgent1",
    default_path = "/org/bulkhead/AskAgent1"
)]
pub trait AskAgent1 {
    /// `source` asks for `service+arg`; choose one of `targets` (`default_target` preselected,
    /// "" when none: then preselect nothing) or answer "" to deny. domaind asks at most one
    /// question per source at a time, throttles a source that keeps asking, and leaves out
    /// templates and service domains nobody named (see domaind's `calls` module).
    fn ask(
        &self,
        source: &str,
        service: &str,
        arg: &str,
        targets: &[&str],
        default_target: &str,
    ) -> zbus::Result<String>;
}

/// Connect to the bus domaind serves on: `address` if given, else `$BULKHEAD_BUS_ADDRESS`,
/// else the system bus.
pub async fn connect(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    let from_env = std::env::var(BUS_ADDRESS_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    match address.map(str::to_owned).or(from_env) {
        Some(addr) => {
            zbus::connection::Builder::address(addr.as_str())?
                .build()
                .await
        }
        None => zbus::Connection::system().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_info_signature_matches_contract() {
        assert_eq!(DomainInfo::SIGNATURE.to_string(), "(sssssuuss)");
    }

    #[test]
    fn error_names_have_prefix() {
        use zbus::DBusError as _;
        let e = Error::NoSuchDomain("no domain 'x'".into());
        assert_eq!(e.name().as_str(), "org.bulkhead.Error.NoSuchDomain");
        assert_eq!(e.exit_code() as u8, 3);
        let e = Error::LimitReached("too many".into());
        assert_eq!(e.name().as_str(), "org.bulkhead.Error.LimitReached");
        // The CLI's code (this said 4, a number no program ever exited with).
        assert_eq!(e.exit_code() as u8, 10);
    }

    /// Every kind's name is the one the error's D-Bus name ends with, both ways.
    #[test]
    fn kinds_and_dbus_names_agree() {
        use zbus::DBusError as _;
        let reply = zbus::Message::method_call("/", "Test")
            .unwrap()
            .build(&())
            .unwrap();
        let distinct: std::collections::HashSet<_> = ErrorKind::ALL.into_iter().collect();
        assert_eq!(distinct.len(), ErrorKind::ALL.len(), "a kind listed twice");
        for kind in ErrorKind::ALL {
            let name = format!("{ERROR_PREFIX}.{}", kind.name());
            let e = Error::from(zbus::Error::MethodError(
                name.clone().try_into().unwrap(),
                Some("message".into()),
                reply.clone(),
            ));
            assert_eq!(e.kind(), Some(kind), "{name}");
            assert_eq!(e.name().as_str(), name);
            assert_eq!(e.message(), "message");
            assert_eq!(e.exit_code(), kind.exit_code());
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
        }
        let unknown = Error::from(zbus::Error::MethodError(
            "org.freedesktop.DBus.Error.ServiceUnknown"
                .try_into()
                .unwrap(),
            None,
            reply,
        ));
        assert_eq!(unknown.kind(), None);
        assert_eq!(unknown.exit_code(), Code::Unreachable);
    }
}
