//! Test support shared by domaind's and the CLI's integration tests (feature `testing`).
//!
//! Everything here starts real programs: a private `dbus-daemon` per test and the real
//! `domaind` binary with temporary config/state/runtime dirs.
//!
//! ```no_run
//! # async fn t() {
//! use domaind::testing::*;
//! let bus = TestBus::start().unwrap();
//! let d = TestDomaind::start(&bus, DomaindOptions::default()).await.unwrap();
//! let (_conn, proxy) = d.client().await.unwrap();
//! proxy.list().await.unwrap();
//! # }
//! ```
//!
//! Binaries: `domaind` from `$BULKHEAD_TEST_DOMAIND` (or the caller passes the path, e.g.
//! `env!("CARGO_BIN_EXE_domaind")`), the launcher from `$BULKHEAD_TEST_LIBEXEC`, the guest
//! tools from `$BULKHEAD_TEST_GUEST_TOOLS`; else the test executable's own `<target>/debug`
//! when they are there (`cargo build --workspace --bins` first, as scripts/test.sh does);
//! else built with cargo into `<target>/domaind-test-helpers` (a separate target dir, so it
//! never waits on the lock of the `cargo test` that runs us).

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, BUS_NAME};
use bulkhead_domain::Paths;

/// Environment variable with a pre-built template cache (state dir `templates/`).
pub const ENV_TEMPLATE_CACHE: &str = "BULKHEAD_TEST_TEMPLATE_CACHE";
/// Environment variable with a dir holding bulkhead-init and bulkhead-agent.
pub const ENV_GUEST_TOOLS: &str = "BULKHEAD_TEST_GUEST_TOOLS";
/// Environment variable with a dir holding the bulkhead-sandbox launcher.
pub const ENV_LIBEXEC: &str = "BULKHEAD_TEST_LIBEXEC";
/// Environment variable with the domaind binary.
pub const ENV_DOMAIND: &str = "BULKHEAD_TEST_DOMAIND";

pub type TestResult<T> = Result<T, String>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn helper_target_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    base.join("domaind-test-helpers")
}

/// `cargo build -p <pkg>` into the helper target dir; returns `<target>/debug`.
fn cargo_build(pkg: &str) -> TestResult<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = helper_target_dir();
    let status = Command::new(cargo)
        .args(["build", "-p", pkg])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot run cargo build -p {pkg}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {pkg} failed ({status})"));
    }
    Ok(target.join("debug"))
}

/// `<target>/debug` of the running test executable (`<target>/debug/deps/<test>`), if the
/// named binaries are all there (e.g. after `cargo build --workspace --bins`).
fn sibling_bins(names: &[&str]) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.to_owned();
    names.iter().all(|n| dir.join(n).is_file()).then_some(dir)
}

static BUILT_AGENT: OnceLock<TestResult<PathBuf>> = OnceLock::new();
static BUILT_SANDBOX: OnceLock<TestResult<PathBuf>> = OnceLock::new();
static BUILT_DOMAIND: OnceLock<TestResult<PathBuf>> = OnceLock::new();

/// The domaind binary: `$BULKHEAD_TEST_DOMAIND`, else built with cargo.
pub fn domaind_bin() -> TestResult<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_DOMAIND).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = sibling_bins(&["domaind"]) {
        return Ok(dir.join("domaind"));
    }
    BUILT_DOMAIND
        .get_or_init(|| cargo_build("domaind").map(|d| d.join("domaind")))
        .clone()
}

/// Dir with the `bulkhead-sandbox` launcher.
pub fn libexec_dir() -> TestResult<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_LIBEXEC).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = sibling_bins(&["bulkhead-sandbox"]) {
        return Ok(dir);
    }
    BUILT_SANDBOX
        .get_or_init(|| cargo_build("bulkhead-sandbox"))
        .clone()
}

/// Dir with `bulkhead-init`, `bulkhead-agent` (and the other guest tools when built).
pub fn guest_tools_source() -> TestResult<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_GUEST_TOOLS).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = sibling_bins(&["bulkhead-init", "bulkhead-agent"]) {
        return Ok(dir);
    }
    BUILT_AGENT
        .get_or_init(|| cargo_build("bulkhead-agent"))
        .clone()
}

/// One entry of `packaging/guest-tools.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestToolsEntry {
    /// `bin NAME`: the binary NAME.
    Bin(String),
    /// `rpc SERVICE BINARY`: `rpc/SERVICE` -> `../BINARY`.
    Rpc { service: String, binary: String },
}

/// The guest tools list of this source tree (`packaging/guest-tools.txt`).
pub fn guest_tools_list() -> TestResult<Vec<GuestToolsEntry>> {
    let path = workspace_root().join("packaging/guest-tools.txt");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    parse_guest_tools(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse the guest tools list (see `packaging/guest-tools.txt`).
pub fn parse_guest_tools(text: &str) -> Result<Vec<GuestToolsEntry>, String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let entry = match words[..] {
            [] => continue,
            [w, ..] if w.starts_with('#') => continue,
            ["bin", name] if plain(name) => GuestToolsEntry::Bin(name.to_owned()),
            ["rpc", service, binary] if plain(service) && plain(binary) => GuestToolsEntry::Rpc {
                service: service.to_owned(),
                binary: binary.to_owned(),
            },
            _ => return Err(format!("line {}: cannot parse {line:?}", i + 1)),
        };
        out.push(entry);
    }
    Ok(out)
}

/// Fill `dst` as the guest tools dir from the binaries in `src`, following
/// `packaging/guest-tools.txt`. bulkhead-init and bulkhead-agent must be there; any other
/// missing binary is reported on stderr and left out (a test that needs it says so).
pub fn assemble_guest_tools(src: &Path, dst: &Path) -> TestResult<()> {
    std::fs::create_dir_all(dst.join("rpc")).map_err(|e| format!("mkdir guest: {e}"))?;
    for entry in guest_tools_list()? {
        let bins: Vec<String> = match &entry {
            GuestToolsEntry::Bin(bin) => vec![bin.clone()],
            GuestToolsEntry::Rpc { binary, .. } => vec![binary.clone()],
        };
        for bin in bins {
            if dst.join(&bin).exists() {
                continue;
            }
            if let Err(e) = std::fs::copy(src.join(&bin), dst.join(&bin)) {
                if bin == "bulkhead-init" || bin == "bulkhead-agent" {
                    return Err(format!("copy {bin} from {}: {e}", src.display()));
                }
                eprintln!(
                    "note: guest tool {bin} not found in {} ({e}); left out",
                    src.display()
                );
            }
        }
        match entry {
            GuestToolsEntry::Bin(_) => {}
            GuestToolsEntry::Rpc { service, binary } => {
                let link = dst.join("rpc").join(&service);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(format!("../{binary}"), &link)
                    .map_err(|e| format!("symlink {}: {e}", link.display()))?;
            }
        }
    }
    Ok(())
}

/// `Run` of `argv` in `domain` with empty stdin; returns (exit code, stdout, stderr).
pub async fn run_captured(
    p: &Domaind1Proxy<'_>,
    domain: &str,
    argv: &[&str],
) -> Result<(i32, String, String), bulkhead_api::Error> {
    let io = StdioPipes::new(b"").map_err(bulkhead_api::Error::Io)?;
    let (i, o, e) = io.fds();
    let res = p.run(domain, argv, "", i, o, e).await;
    let (out, err) = io.finish().await;
    res.map(|code| (code, out, err))
}

/// The template cache from `$BULKHEAD_TEST_TEMPLATE_CACHE`, or None with the reason printed.
pub fn template_cache() -> Option<PathBuf> {
    match std::env::var_os(ENV_TEMPLATE_CACHE).filter(|p| !p.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            bulkhead_test_skip::skip(format_args!(
                "{ENV_TEMPLATE_CACHE} is not set (a state dir whose templates/ holds a built debian-12 template)"
            ));
            None
        }
    }
}

/// A private dbus-daemon that lets any local user connect and own any name.
pub struct TestBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl TestBus {
    /// A session-type bus where anyone may own any name and send anything (tests of
    /// domaind's own caller check use it: the bus lets everything through).
    pub fn start() -> TestResult<Self> {
        Self::start_with(
            "session",
            r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>"#,
        )
    }

    /// A bus configured like Debian's system bus (deny by default, talking to the bus
    /// itself allowed) plus the service policy file `include`, e.g. the shipped
    /// `packaging/dbus/org.bulkhead.Domaind1.conf`, so that file's rules are what is tested.
    pub fn start_system_like(include: &Path) -> TestResult<Self> {
        Self::start_with(
            "system",
            &format!(
                r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
  <include>{}</include>"#,
                include.display()
            ),
        )
    }

    fn start_with(bus_type: &str, policy: &str) -> TestResult<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-bus-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        // World-searchable so that tests can connect as an unprivileged uid.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        let conf = dir.path().join("bus.conf");
        let sock = dir.path().join("bus.sock");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{bus_type}</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
{policy}
</busconfig>
"#,
                sock.display()
            ),
        )
        .map_err(|e| format!("write bus config: {e}"))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run dbus-daemon (apt-get install dbus): {e}"))?;
        let stdout = child.stdout.take().ok_or("no dbus-daemon stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the dbus-daemon address: {e}"))?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            return Err("dbus-daemon printed no address".into());
        }
        Ok(Self {
            child,
            address,
            _dir: dir,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a test domaind.
#[derive(Debug, Clone, Default)]
pub struct DomaindOptions {
    /// The domaind binary (default: [`domaind_bin`]).
    pub binary: Option<PathBuf>,
    /// Reuse these directories (e.g. to restart domaind on the same state).
    pub paths: Option<Paths>,
    /// Guest tools dir (default: a temp dir that gets bulkhead-init and bulkhead-agent
    /// copied in, only if `with_guest_tools`).
    pub guest_tools_dir: Option<PathBuf>,
    /// Copy freshly built guest tools into a temp dir (needs the agent crate to build).
    pub with_guest_tools: bool,
    /// Symlink `<template cache>/templates/*` into the state dir.
    pub template_cache: Option<PathBuf>,
    pub recipes_dir: Option<PathBuf>,
    /// Extra environment (e.g. BULKHEAD_LOG).
    pub env: Vec<(String, String)>,
    /// Binaries copied into the guest tools dir besides those of
    /// `packaging/guest-tools.txt` (from the same source dir).
    pub extra_guest_binaries: Vec<String>,
    /// Pass `--allow-software-kvm` (VM domains on hosts without hardware virtualization).
    pub allow_software_kvm: bool,
    /// Text of `<config>/domaind.toml` (e.g. a `[net]` section), written before the start.
    pub daemon_file: Option<String>,
}

impl DomaindOptions {
    /// The guest tools, the template cache `cache` linked into the state dir and the source
    /// tree's recipes: what a test of real domains of the debian-12 template needs (add
    /// `binary` and the rest with `..DomaindOptions::debian12(cache)`).
    pub fn debian12(cache: PathBuf) -> Self {
        Self {
            with_guest_tools: true,
            template_cache: Some(cache),
            recipes_dir: Some(bulkhead_templates::source_recipes_dir()),
            ..Self::default()
        }
    }
}

/// Runs a test's body and fails the test if it takes longer than `limit`.
pub async fn bounded(limit: Duration, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

/// The state of domain `name` in a `List` answer.
pub fn domain_state(list: &[bulkhead_api::DomainInfo], name: &str) -> Option<String> {
    list.iter()
        .find(|d| d.name == name)
        .map(|d| d.state.clone())
}

/// Waits (up to 60 s) until `List` shows domain `name` in state `want`; panics otherwise.
pub async fn wait_state(p: &Domaind1Proxy<'_>, name: &str, want: &str) {
    for _ in 0..600 {
        if let Ok(list) = p.list().await {
            if domain_state(&list, name).as_deref() == Some(want) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never reached state {want}");
}

/// Whether process `pid` exists and is not a zombie (read from /proc).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A running domaind on a test bus, with its own directories (kept until drop).
pub struct TestDomaind {
    child: Option<Child>,
    address: String,
    pub paths: Paths,
    pub guest_tools_dir: PathBuf,
    pub log_file: PathBuf,
    root: Option<tempfile::TempDir>,
    options: DomaindOptions,
    /// The domaind's cgroup root (from its runtime dir, or `BULKHEAD_INSTANCE` in
    /// `options.env`).
    cgroup_root: bulkhead_sandbox::CgroupRoot,
}

impl TestDomaind {
    /// Start domaind on `bus` and wait until it owns its name.
    pub async fn start(bus: &TestBus, opts: DomaindOptions) -> TestResult<Self> {
        let root = tempfile::Builder::new()
            .prefix("bulkhead-domaind-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        let paths = opts
            .paths
            .clone()
            .unwrap_or_else(|| Paths::under(root.path()));
        let guest = match (&opts.guest_tools_dir, opts.with_guest_tools) {
            (Some(g), _) => g.clone(),
            (None, true) => {
                let src = guest_tools_source()?;
                let dst = root.path().join("guest");
                assemble_guest_tools(&src, &dst)?;
                for extra in &opts.extra_guest_binaries {
                    std::fs::copy(src.join(extra), dst.join(extra))
                        .map_err(|e| format!("copy {extra} from {}: {e}", src.display()))?;
                }
                if src.join("escape-probe").exists() {
                    let _ = std::fs::copy(src.join("escape-probe"), dst.join("escape-probe"));
                }
                dst
            }
            (None, false) => {
                let g = root.path().join("guest");
                std::fs::create_dir_all(&g).map_err(|e| format!("mkdir guest: {e}"))?;
                g
            }
        };
        if let Some(cache) = &opts.template_cache {
            link_templates(cache, &paths.templates_dir())?;
        }
        if let Some(text) = &opts.daemon_file {
            std::fs::create_dir_all(&paths.config_dir).map_err(|e| format!("mkdir config: {e}"))?;
            std::fs::write(
                paths.config_dir.join(crate::config::DAEMON_CONFIG_FILE),
                text,
            )
            .map_err(|e| format!("write domaind.toml: {e}"))?;
        }
        let log_file = root.path().join("domaind.log");
        let instance = opts
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == crate::config::ENV_INSTANCE)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty());
        let cgroup_root =
            crate::config::cgroup_root(instance, &paths.runtime_dir).map_err(|e| e.to_string())?;
        let mut me = Self {
            cgroup_root,
            child: None,
            address: bus.address().to_owned(),
            paths,
            guest_tools_dir: guest,
            log_file,
            root: Some(root),
            options: opts,
        };
        me.spawn()?;
        me.wait_ready().await?;
        Ok(me)
    }

    fn spawn(&mut self) -> TestResult<()> {
        let bin = match &self.options.binary {
            Some(b) => b.clone(),
            None => domaind_bin()?,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| format!("open {}: {e}", self.log_file.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--bus-address")
            .arg(&self.address)
            .arg("--config-dir")
            .arg(&self.paths.config_dir)
            .arg("--state-dir")
            .arg(&self.paths.state_dir)
            .arg("--runtime-dir")
            .arg(&self.paths.runtime_dir)
            .arg("--guest-tools-dir")
            .arg(&self.guest_tools_dir)
            .env("BULKHEAD_LOG", "debug,zbus=info")
            // a test domaind is its own instance unless the test says otherwise
            .env_remove(crate::config::ENV_INSTANCE)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(r) = &self.options.recipes_dir {
            cmd.arg("--recipes-dir").arg(r);
        }
        if self.options.allow_software_kvm {
            cmd.arg("--allow-software-kvm");
        }
        if self.options.with_guest_tools || self.options.template_cache.is_some() {
            if let Ok(dir) = libexec_dir() {
                cmd.env("BULKHEAD_LIBEXEC_DIR", dir);
            }
        }
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait until domaind owns its bus name (or fail with its log if it exited).
    pub async fn wait_ready(&mut self) -> TestResult<()> {
        let conn = self.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(BUS_NAME).map_err(|e| e.to_string())?;
        for _ in 0..1200 {
            if dbus.name_has_owner(name.clone()).await.unwrap_or(false) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(format!(
                        "domaind exited ({st}) before serving:\n{}",
                        self.log()
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "domaind did not take its bus name within 60 s:\n{}",
            self.log()
        ))
    }

    pub async fn connect(&self) -> TestResult<zbus::Connection> {
        zbus::connection::Builder::address(self.address.as_str())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("connect to the test bus: {e}"))
    }

    /// A client connection and proxy.
    pub async fn client(&self) -> TestResult<(zbus::Connection, Domaind1Proxy<'static>)> {
        let conn = self.connect().await?;
        let proxy = Domaind1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
        Ok((conn, proxy))
    }

    /// The bus address (for `BULKHEAD_BUS_ADDRESS` of a CLI under test).
    pub fn bus_address(&self) -> &str {
        &self.address
    }

    /// domaind's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL domaind (domains keep running) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM domaind and wait for it.
    pub fn terminate(&mut self) -> TestResult<std::process::ExitStatus> {
        let mut c = self.child.take().ok_or("domaind is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).map_err(|e| e.to_string())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| e.to_string())?;
        c.wait().map_err(|e| e.to_string())
    }

    /// Start domaind again on the same bus and directories.
    pub async fn restart(&mut self) -> TestResult<()> {
        self.kill9();
        self.spawn()?;
        self.wait_ready().await
    }

    /// The `record` of running domain `name`'s runtime `instance.json`; panics if it is
    /// missing or not JSON.
    pub fn instance_record(&self, name: &str) -> serde_json::Value {
        let path = self
            .paths
            .runtime_dir
            .join("domains")
            .join(name)
            .join("instance.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        v["record"].clone()
    }

    /// Where running sandbox domain `name`'s `path` (absolute, inside the domain) is seen
    /// from the host: through its init's root (`/proc/<init>/root/...`).
    pub fn in_domain(&self, name: &str, path: &str) -> PathBuf {
        let rec = self.instance_record(name);
        let pid = rec["init_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no init_pid in {name}'s record: {rec}"));
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }

    /// Builds (or reuses) the mini template `name` ([`build_mini_template`]) in this
    /// domaind's template store, its recipe under the temporary root. Returns the tree.
    pub fn mini_template(&self, name: &str) -> TestResult<PathBuf> {
        let recipes = self
            .root()
            .ok_or("this test domaind has no temporary root")?
            .join("recipes");
        build_mini_template(
            &self.paths.templates_dir(),
            &recipes,
            name,
            &self.guest_tools_dir,
        )
    }

    /// The temporary root (config/state/run live below unless `paths` was given).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_ref().map(|r| r.path())
    }

    /// This domaind's cgroup root (its domains' cgroups live below it).
    pub fn cgroup_root(&self) -> &bulkhead_sandbox::CgroupRoot {
        &self.cgroup_root
    }

    /// Whether this domaind has a cgroup for domain `name` (another domaind's domain of
    /// the same name does not count).
    pub fn cgroup_exists(&self, name: &str) -> bool {
        bulkhead_sandbox::list_orphan_cgroups(&self.cgroup_root)
            .map(|v| v.iter().any(|n| n == name))
            .unwrap_or(false)
    }
}

impl Drop for TestDomaind {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Domains a failed test left running: kill their cgroups (below this domaind's own
        // root only) so that nothing is orphaned, then the root itself once empty.
        if let Ok(names) = bulkhead_sandbox::list_orphan_cgroups(&self.cgroup_root) {
            let run = self.paths.runtime_dir.join("domains");
            for n in names {
                if run.join(&n).exists() {
                    let _ = bulkhead_sandbox::remove_cgroup(&self.cgroup_root, &n);
                }
            }
        }
        let _ = bulkhead_sandbox::remove_cgroup_root_if_empty(&self.cgroup_root);
    }
}

/// The three pipes of one `Run`/`RunDisposable`/`Call` through D-Bus: stdin is fed from a
/// byte string, stdout and stderr are collected. All are close-on-exec: tests run in
/// parallel, and a process another test spawns meanwhile must not hold these pipes open.
///
/// ```no_run
/// # async fn t(p: &bulkhead_api::Domaind1Proxy<'_>) {
/// let io = domaind::testing::StdioPipes::new(b"").unwrap();
/// let (i, o, e) = io.fds();
/// let code = p.run("work", &["id", "-un"], "", i, o, e).await;
/// let (stdout, stderr) = io.finish().await;
/// # }
/// ```
pub struct StdioPipes {
    stdin: std::os::fd::OwnedFd,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    feeder: std::thread::JoinHandle<()>,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

/// A close-on-exec pipe (read end, write end): tests run in parallel, and a domaind another
/// test spawns meanwhile must not inherit this test's pipes (it would hold them open).
pub fn cloexec_pipe() -> TestResult<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// A thread reading `fd` to its end; joins with everything read.
pub fn collect(fd: std::os::fd::OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut v);
        v
    })
}

impl StdioPipes {
    /// Pipes whose stdin delivers `input` and then EOF.
    pub fn new(input: &[u8]) -> TestResult<Self> {
        let (in_r, in_w) = cloexec_pipe()?;
        let (out_r, out_w) = cloexec_pipe()?;
        let (err_r, err_w) = cloexec_pipe()?;
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut std::fs::File::from(in_w), &input);
        });
        Ok(Self {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
            feeder,
            out: collect(out_r),
            err: collect(err_r),
        })
    }

    /// The (stdin, stdout, stderr) descriptors to pass in the D-Bus call.
    pub fn fds(
        &self,
    ) -> (
        zbus::zvariant::Fd<'_>,
        zbus::zvariant::Fd<'_>,
        zbus::zvariant::Fd<'_>,
    ) {
        (
            zbus::zvariant::Fd::from(&self.stdin),
            zbus::zvariant::Fd::from(&self.stdout),
            zbus::zvariant::Fd::from(&self.stderr),
        )
    }

    /// After the call: closes our ends and returns (stdout, stderr) once every other holder
    /// (domaind, the domain's processes) has closed them too.
    pub async fn finish(self) -> (String, String) {
        let Self {
            stdin,
            stdout,
            stderr,
            feeder,
            out,
            err,
        } = self;
        drop((stdin, stdout, stderr));
        // Joining blocks until the pipes' last holder is gone: not on a runtime worker.
        let joined = tokio::task::spawn_blocking(move || {
            let _ = feeder.join();
            (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        })
        .await
        .unwrap_or_default();
        (
            String::from_utf8_lossy(&joined.0).into_owned(),
            String::from_utf8_lossy(&joined.1).into_owned(),
        )
    }
}

/// What [`run_in`] returns: the call's result (the exit code), stdout and stderr.
#[derive(Debug)]
pub struct RunOutput {
    pub result: Result<i32, bulkhead_api::Error>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code; panics with the call's error and output if the call itself failed.
    pub fn code(&self) -> i32 {
        match &self.result {
            Ok(c) => *c,
            Err(e) => panic!(
                "Run failed: {e}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }
}

/// D-Bus `Run` of `argv` in `domain` as `user` ("" = the default user) with `input` on stdin.
pub async fn run_in(
    p: &Domaind1Proxy<'_>,
    domain: &str,
    argv: &[&str],
    user: &str,
    input: &[u8],
) -> TestResult<RunOutput> {
    let io = StdioPipes::new(input)?;
    let (i, o, e) = io.fds();
    let result = p.run(domain, argv, user, i, o, e).await;
    let (stdout, stderr) = io.finish().await;
    Ok(RunOutput {
        result,
        stdout,
        stderr,
    })
}

/// D-Bus `BuildTemplate` of recipe `name`: builds it into the store if it is not up to date
/// there, and registers the template domain. Returns (root, progress text); the error carries
/// the progress too.
pub async fn register_template(p: &Domaind1Proxy<'_>, name: &str) -> TestResult<(String, String)> {
    let (r, w) = cloexec_pipe()?;
    let progress = collect(r);
    let res = p.build_template(name, zbus::zvariant::Fd::from(&w)).await;
    drop(w);
    let progress = tokio::task::spawn_blocking(move || progress.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    let progress = String::from_utf8_lossy(&progress).into_owned();
    match res {
        Ok(root) => Ok((root, progress)),
        Err(e) => Err(format!("BuildTemplate {name}: {e}\n{progress}")),
    }
}

/// The `bulkhead` CLI binary against a test domaind (through `BULKHEAD_BUS_ADDRESS`), stdin
/// /dev/null; each run is echoed to stderr with its exit code and output.
pub struct TestCli<'a> {
    binary: PathBuf,
    daemon: &'a TestDomaind,
}

impl<'a> TestCli<'a> {
    /// `binary` is the CLI under test (`env!("CARGO_BIN_EXE_bulkhead")` in the CLI's tests).
    pub fn new(binary: impl Into<PathBuf>, daemon: &'a TestDomaind) -> Self {
        Self {
            binary: binary.into(),
            daemon,
        }
    }

    /// The command, not yet run (to change stdin or the environment).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("BULKHEAD_BUS_ADDRESS", self.daemon.bus_address())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to the end; panics only if the binary cannot run.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        eprintln!(
            "$ bulkhead {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "bulkhead {args:?} failed");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs and checks the documented exit code and that stderr says something useful.
    pub fn fails(&self, args: &[&str], code: i32, stderr_has: &str) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "exit code of bulkhead {args:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(stderr_has),
            "stderr of bulkhead {args:?} should mention {stderr_has:?}: {stderr}"
        );
    }

    /// `bulkhead run DOMAIN -- sh -c SCRIPT` (as the default user).
    pub fn sh(&self, domain: &str, script: &str) -> std::process::Output {
        self.run(&["run", domain, "--", "sh", "-c", script])
    }
}

/// What a [`TestAskAgent`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskAnswer {
    /// Choose this target.
    Target(String),
    /// Answer "" (the user refused).
    Deny,
    /// Never answer (domaind's timeout must deny).
    Never,
}

/// One question domaind asked a [`TestAskAgent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskQuestion {
    pub source: String,
    pub service: String,
    pub arg: String,
    pub targets: Vec<String>,
    pub default_target: String,
}

#[derive(Debug)]
struct AskState {
    answer: AskAnswer,
    asked: Vec<AskQuestion>,
}

struct AskObject(std::sync::Arc<std::sync::Mutex<AskState>>);

#[zbus::interface(name = "org.bulkhead.AskAgent1")]
impl AskObject {
    async fn ask(
        &self,
        source: String,
        service: String,
        arg: String,
        targets: Vec<String>,
        default_target: String,
    ) -> String {
        let answer = {
            let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
            st.asked.push(AskQuestion {
                source,
                service,
                arg,
                targets,
                default_target,
            });
            st.answer.clone()
        };
        match answer {
            AskAnswer::Target(t) => t,
            AskAnswer::Deny => String::new(),
            AskAnswer::Never => std::future::pending().await,
        }
    }
}

/// An ask agent on the test bus (as the GUI will be): exports `org.bulkhead.AskAgent1` and
/// registers with domaind; answers as told and records every question.
pub struct TestAskAgent {
    _conn: zbus::Connection,
    state: std::sync::Arc<std::sync::Mutex<AskState>>,
}

impl TestAskAgent {
    pub async fn register(d: &TestDomaind, answer: AskAnswer) -> TestResult<Self> {
        let state = std::sync::Arc::new(std::sync::Mutex::new(AskState {
            answer,
            asked: Vec::new(),
        }));
        let conn = zbus::connection::Builder::address(d.bus_address())
            .map_err(|e| e.to_string())?
            .serve_at(bulkhead_api::ASK_AGENT_PATH, AskObject(state.clone()))
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| format!("ask agent connection: {e}"))?;
        let proxy = Domaind1Proxy::new(&conn).await.map_err(|e| e.to_string())?;
        proxy
            .register_ask_agent()
            .await
            .map_err(|e| format!("RegisterAskAgent: {e}"))?;
        Ok(Self { _conn: conn, state })
    }

    pub fn set_answer(&self, answer: AskAnswer) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).answer = answer;
    }

    /// Every question so far (and forget them).
    pub fn take_questions(&self) -> Vec<AskQuestion> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).asked)
    }
}

/// Symlink every template of `cache/templates` into `dest`.
fn link_templates(cache: &Path, dest: &Path) -> TestResult<()> {
    let src = cache.join("templates");
    let src = if src.is_dir() { src } else { cache.to_owned() };
    std::fs::create_dir_all(dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))?;
    let entries = std::fs::read_dir(&src).map_err(|e| format!("read {}: {e}", src.display()))?;
    for e in entries.flatten() {
        let to = dest.join(e.file_name());
        if !to.exists() {
            std::os::unix::fs::symlink(e.path(), &to)
                .map_err(|err| format!("symlink {}: {err}", to.display()))?;
        }
    }
    Ok(())
}

/// Binaries copied (with their libraries) into a [`build_mini_template`] root.
pub const MINI_BINARIES: &[&str] = &[
    "/bin/sh",
    "/bin/cat",
    "/bin/echo",
    "/bin/true",
    "/bin/false",
    "/bin/sleep",
    "/bin/ls",
    "/usr/bin/id",
    "/usr/bin/env",
    "/usr/bin/head",
];

/// A [`bulkhead_templates::RootBuilder`] that makes a tiny root from host binaries: a shell,
/// coreutils, the libraries of the guest tools, `user` (1000) in passwd. Seconds instead of
/// an mmdebstrap run, for lifecycle tests that do not care about Debian.
pub struct MiniRootBuilder {
    /// Dir with bulkhead-init and bulkhead-agent (their libraries are copied in).
    pub guest_tools: PathBuf,
}

fn copy_with_libs(bin: &Path, root: &Path) -> std::io::Result<()> {
    let rel = bin.strip_prefix("/").unwrap_or(bin);
    let dest = root.join(rel);
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p)?;
    }
    if !dest.exists() && bin.starts_with("/") {
        std::fs::copy(bin, &dest)?;
    }
    copy_libs(bin, root)
}

fn copy_libs(bin: &Path, root: &Path) -> std::io::Result<()> {
    let out = Command::new("ldd").arg(bin).output()?;
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if !word.starts_with('/') {
            continue;
        }
        let lib = Path::new(word);
        let d = root.join(word.trim_start_matches('/'));
        if d.exists() {
            continue;
        }
        if let Some(p) = d.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(lib, &d)?;
    }
    Ok(())
}

impl bulkhead_templates::RootBuilder for MiniRootBuilder {
    fn build_root(
        &self,
        _recipe: &bulkhead_templates::Recipe,
        target: &Path,
        _work_dir: &Path,
        log: &mut dyn std::io::Write,
        _progress: &mut dyn FnMut(bulkhead_templates::BuildProgress),
    ) -> Result<(), bulkhead_templates::TemplateError> {
        let mut mk = || -> std::io::Result<()> {
            for d in [
                "bin",
                "etc",
                "home/user",
                "proc",
                "dev",
                "tmp",
                "run",
                "root",
                "usr/bin",
                "usr/lib/bulkhead",
                "var/tmp",
                "sys",
            ] {
                std::fs::create_dir_all(target.join(d))?;
            }
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(target.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
            for b in MINI_BINARIES {
                copy_with_libs(Path::new(b), target)?;
            }
            for t in ["bulkhead-init", "bulkhead-agent"] {
                copy_libs(&self.guest_tools.join(t), target)?;
            }
            std::fs::write(
                target.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
            )?;
            std::fs::write(target.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
            std::fs::write(
                target.join("etc/os-release"),
                "NAME=\"bulkhead mini test root\"\nID=bulkhead-mini\n",
            )?;
            std::os::unix::fs::chown(target.join("home/user"), Some(1000), Some(1000))?;
            writeln!(log, "mini root built")?;
            Ok(())
        };
        // The trait's error type takes a static action string; wrap the whole step.
        mk().map_err(|source| bulkhead_templates::TemplateError::Io {
            path: target.to_owned(),
            action: "building the mini test root",
            source,
        })
    }
}

/// Build (or reuse) a tiny template named `name` in `templates_dir` through the real
/// template store, with a recipe written to `recipes_dir`. Returns the root.
pub fn build_mini_template(
    templates_dir: &Path,
    recipes_dir: &Path,
    name: &str,
    guest_tools: &Path,
) -> TestResult<PathBuf> {
    let base = workspace_root().join("templates/recipes/debian-12.toml");
    let text =
        std::fs::read_to_string(&base).map_err(|e| format!("read {}: {e}", base.display()))?;
    let text = text.replace("name = \"debian-12\"", &format!("name = \"{name}\""));
    std::fs::create_dir_all(recipes_dir).map_err(|e| e.to_string())?;
    let recipe_path = recipes_dir.join(format!("{name}.toml"));
    std::fs::write(&recipe_path, text).map_err(|e| e.to_string())?;
    let dn = bulkhead_domain::DomainName::new(name).map_err(|e| e.to_string())?;
    let recipe =
        bulkhead_templates::Recipe::load_named(recipes_dir, &dn).map_err(|e| e.to_string())?;
    let store = bulkhead_templates::TemplateStore::new(templates_dir);
    store
        .build_with(
            &recipe,
            &MiniRootBuilder {
                guest_tools: guest_tools.to_owned(),
            },
            &mut |_| {},
        )
        .map_err(|e| e.to_string())
}

/// A test domaind with the guest tools and a mini template ([`build_mini_template`])
/// registered as `<pre>tmpl`: the set-up of tests of real sandbox domains that do not need
/// Debian.
pub struct MiniEnv {
    pub bus: TestBus,
    pub d: TestDomaind,
    pub conn: zbus::Connection,
    pub p: Domaind1Proxy<'static>,
    /// Unique per test process and tag: domain names start with it.
    pub pre: String,
}

impl MiniEnv {
    /// Starts domaind with `opts` (plus the guest tools) and builds the mini template; `tag`
    /// starts the name prefix. None (the reason printed) where sandboxes cannot run; panics
    /// on any other failure.
    pub async fn start(tag: &str, opts: DomaindOptions) -> Option<Self> {
        if !sandbox_available() {
            return None;
        }
        let bus = TestBus::start().expect("dbus-daemon");
        let d = TestDomaind::start(
            &bus,
            DomaindOptions {
                with_guest_tools: true,
                ..opts
            },
        )
        .await
        .expect("domaind");
        let pre = format!("{tag}{}-", std::process::id() % 100_000);
        let tmpl = format!("{pre}tmpl");
        d.mini_template(&tmpl).expect("mini template");
        let (conn, p) = d.client().await.expect("client");
        p.create(
            &tmpl,
            "template",
            "",
            "black",
            std::collections::HashMap::new(),
        )
        .await
        .expect("register template");
        Some(Self {
            bus,
            d,
            conn,
            p,
            pre,
        })
    }

    /// A domain name with this test's prefix.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.pre)
    }
}

/// Whether this host can run sandbox domains; prints the reason and returns false if not.
pub fn sandbox_available() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("sandbox domains need root");
        return false;
    }
    let caps = bulkhead_sandbox::probe();
    let why = if !caps.user_namespaces {
        Some("user namespaces disabled".to_owned())
    } else if !caps.overlayfs {
        Some("no overlayfs".to_owned())
    } else if !caps.idmapped_mounts {
        Some("no idmapped mounts".to_owned())
    } else if caps.cgroup_mode.starts_with("unusable") {
        Some(format!("cgroups: {}", caps.cgroup_mode))
    } else {
        None
    };
    match why {
        Some(w) => {
            bulkhead_test_skip::skip(format_args!("cannot run sandboxes here: {w}"));
            false
        }
        None => true,
    }
}

/// The `bulkhead-vmm` binary in the libexec dir (built by `cargo build --workspace --bins`).
pub fn vmm_bin() -> TestResult<PathBuf> {
    let p = libexec_dir()?.join("bulkhead-vmm");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} does not exist (cargo build --workspace --bins)",
            p.display()
        ))
    }
}

/// `bulkhead-vmm probe`: (hardware virtualization?, its line of text).
pub fn vmm_probe(vmm: &Path) -> TestResult<(bool, String)> {
    let out = Command::new(vmm)
        .arg("probe")
        .output()
        .map_err(|e| format!("cannot run {} probe: {e}", vmm.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok((true, text)),
        Some(3) => Ok((false, text)),
        _ => Err(format!(
            "{} probe failed ({}): {text}",
            vmm.display(),
            out.status
        )),
    }
}

/// Compile the VM lifecycle test's guest (`domaind/tests/guests/ticker.c`: prints to the
/// serial console forever, no drivers, no agent) with gcc into `out_dir`; returns the ELF.
pub fn build_ticker_guest(out_dir: &Path) -> TestResult<PathBuf> {
    let src = workspace_root().join("domaind/tests/guests");
    let out = out_dir.join("ticker.elf");
    let result = Command::new("gcc")
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pie",
            "-no-pie",
            "-fno-stack-protector",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
        ])
        .arg(format!("-Wl,-T,{}", src.join("ticker.ld").display()))
        .arg("-o")
        .arg(&out)
        .arg(src.join("ticker.c"))
        .output()
        .map_err(|e| format!("cannot run gcc (scripts/install-deps.sh installs it): {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "gcc failed for the ticker guest:\n{}",
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(out)
}

/// Give template `name` (built in `templates_dir`) VM files without building them: `kernel`
/// as its kernel, an empty initramfs, a small ext4 root image. Returns the VM files' dir.
pub fn install_test_vm_artifacts(
    templates_dir: &Path,
    name: &str,
    kernel: &Path,
) -> TestResult<PathBuf> {
    use bulkhead_templates::vm;
    let dn = bulkhead_domain::DomainName::new(name).map_err(|e| e.to_string())?;
    let store = bulkhead_templates::TemplateStore::new(templates_dir);
    let root = store.root_path(&dn).map_err(|e| e.to_string())?;
    let marker: bulkhead_templates::TemplateMarker = toml::from_str(
        &std::fs::read_to_string(root.join(bulkhead_templates::MARKER_PATH))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let hash16 = root
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("root-"))
        .ok_or("template root is not root-<hash>")?
        .to_owned();
    let dir = root.with_file_name(format!("vm-{hash16}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::copy(kernel, dir.join("vmlinuz")).map_err(|e| format!("copy kernel: {e}"))?;
    let mut cpio = Vec::new();
    vm::write_cpio(&[], &mut cpio).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("initramfs.cpio"), cpio).map_err(|e| e.to_string())?;
    let empty = dir.join("empty-root");
    std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
    vm::make_ext4_image(
        &empty,
        &dir.join("root.img"),
        vm::ROOT_LABEL,
        16,
        false,
        &mut std::io::sink(),
    )
    .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir(&empty);
    let m = vm::VmMarker {
        format: vm::VM_FORMAT_VERSION,
        hash: marker.hash,
        kernel_package: "test guest (domaind/tests/guests/ticker.c)".into(),
        kernel_release: "ticker".into(),
        modules: Vec::new(),
        built_at: 0,
    };
    std::fs::write(
        dir.join("vm.toml"),
        toml::to_string(&m).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `scripts/nested-kvm.sh`'s exit status when L1 itself ended before the command did.
const NESTED_L1_ENDED: i32 = 123;

/// Set inside L1 by [`hardware_vm_here_or_nested`] (no second level of nesting).
pub const ENV_IN_L1: &str = "BULKHEAD_TEST_IN_L1";

/// Where a test that boots a real Linux guest runs.
#[derive(Debug)]
pub enum VmHost {
    /// This host has hardware virtualization: run the test body here.
    Here,
    /// The test ran inside an L1 with a real `/dev/kvm` (`scripts/nested-kvm.sh`) and passed
    /// there; its output has been printed. The caller returns.
    PassedInL1,
}

/// For a test that needs hardware virtualization (VT-x/AMD-V): on a host that has it, run
/// here; on one that has not (PVM's software KVM, as on our build and CI machines), run the
/// same test executable with `--exact test` inside the nested environment, which boots an L1
/// kernel under QEMU TCG with emulated AMD-V, and panic unless it passed there. Panics with
/// the reason when neither can be done: a VM test never passes without having run.
pub fn hardware_vm_here_or_nested(test: &str) -> VmHost {
    let vmm = vmm_bin().unwrap_or_else(|e| panic!("no bulkhead-vmm: {e}"));
    let (hardware, reason) = vmm_probe(&vmm).unwrap_or_else(|e| panic!("{e}"));
    if hardware {
        return VmHost::Here;
    }
    if std::env::var_os(ENV_IN_L1).is_some() {
        panic!("inside L1 and still no hardware virtualization: {reason}");
    }
    let script = workspace_root().join("scripts/nested-kvm.sh");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    println!(
        "no hardware virtualization here ({reason}); running {test} inside L1 ({})",
        script.display()
    );
    // L1's limit is above the tests' own (at most 20 min), so a test that hangs fails with its
    // own diagnostics instead of being cut off.
    let in_l1 = || {
        Command::new(&script)
            .args(["--timeout", "1800", "--"])
            .arg(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ENV_IN_L1, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
    };
    // What the script itself says (why L1 ended, its console's last lines) is part of this
    // test's output, so that libtest shows it with the failure.
    let show = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let said = String::from_utf8_lossy(&out.stderr);
        println!("---- {test} inside L1 ----\n{text}---- end of L1 output ----\n{said}");
        text
    };
    let mut out = in_l1();
    let mut text = show(&out);
    // Exit 123: L1 itself reset or crashed before the test ended (QEMU's TCG emulation of
    // nested SVM under two busy vCPUs; its log is above). That is the emulator's failure, not
    // the test's, so the test runs once more in a new L1; a test that failed is never re-run.
    if out.status.code() == Some(NESTED_L1_ENDED) {
        // Past libtest's capture, so that scripts/test.sh counts it in a passing run too.
        let _ = writeln!(
            std::io::stderr(),
            "L1 RESET {test}: L1 ended before the test did; running it once more in a new L1"
        );
        out = in_l1();
        text = show(&out);
    }
    assert!(
        out.status.success(),
        "{test} failed inside L1 ({}); its output is above",
        out.status
    );
    // A skip inside L1 cannot reach the host's skip log: it is a failure here.
    assert!(
        !text.lines().any(|l| l.starts_with("SKIP")),
        "{test} skipped inside L1; its output is above"
    );
    // Zero tests run also exits 0: make sure this one ran.
    assert!(
        text.contains("test result: ok. 1 passed"),
        "{test} did not run inside L1; its output is above"
    );
    VmHost::PassedInL1
}

/// Runs `f` on halted domain `name`'s private volume, mounted read-write on the host for the
/// moment (after the domain has released it: the same lock the sandbox launcher takes), as
/// the host sees it: canonical ids. For tests that plant or inspect private data.
pub fn with_private_volume<R>(paths: &Paths, name: &str, f: impl FnOnce(&Path) -> R) -> R {
    let dn = bulkhead_domain::DomainName::new(name).expect("domain name");
    let image = crate::volume::PrivateVolume::new(paths, &dn).image;
    let at = tempfile::tempdir().expect("mount point");
    bulkhead_sandbox::loopdev::mount_ext4(
        &image,
        at.path(),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None,
    )
    .unwrap_or_else(|e| panic!("private volume of {name}: {e}"));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _u = Unmount(at.path());
    f(at.path())
}

/// The template store inside a template cache (`<cache>/templates` or the cache itself, as
/// [`DomaindOptions::template_cache`] links it).
pub fn cache_store(cache: &Path) -> PathBuf {
    let t = cache.join("templates");
    if t.is_dir() {
        t
    } else {
        cache.to_owned()
    }
}

/// Build (or find) the VM files of template `name` in the template cache, from the source
/// tree's recipe: Debian's cloud kernel and busybox are fetched with apt, so this runs on the
/// host before a test enters L1. Returns their dir.
pub fn ensure_vm_files(cache: &Path, name: &str) -> TestResult<PathBuf> {
    let name = bulkhead_domain::DomainName::new(name).map_err(|e| e.to_string())?;
    let recipe =
        bulkhead_templates::Recipe::load_named(&bulkhead_templates::source_recipes_dir(), &name)
            .map_err(|e| e.to_string())?;
    let store = bulkhead_templates::TemplateStore::new(cache_store(cache));
    let a = store
        .build_vm(&recipe, &mut |p| println!("{p}"))
        .map_err(|e| e.to_string())?;
    Ok(a.kernel.parent().map(Path::to_owned).unwrap_or_default())
}

/// (thread name, state letter) of every thread of the VMM `pid` and its children (the confined
/// VMM runs as a child of `bulkhead-vmm run`).
pub fn vmm_thread_states(pid: i32) -> Vec<(String, char)> {
    let mut pids = vec![pid];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    let mut out = Vec::new();
    for p in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            if let (Some(a), Some(b)) = (stat.find('('), stat.rfind(')')) {
                let state = stat[b + 1..].trim_start().chars().next().unwrap_or('?');
                out.push((stat[a + 1..b].to_owned(), state));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `packaging/guest-tools.txt` names each binary once (a `bin` entry or the binary of
    /// `rpc` entries, which may share one), each service once, and no test-only binary.
    #[test]
    fn guest_tools_each_once_and_no_test_client() {
        const TEST_ONLY: [&str; 2] = ["bulkhead-gui-testclient", "escape-probe"];
        let list = guest_tools_list().unwrap();
        assert!(list.contains(&GuestToolsEntry::Bin("bulkhead-init".into())));
        assert!(list.contains(&GuestToolsEntry::Bin("bulkhead-agent".into())));
        let mut bins = std::collections::HashSet::new();
        let mut rpc_bins = std::collections::HashSet::new();
        let mut services = std::collections::HashSet::new();
        for e in &list {
            let bin = match e {
                GuestToolsEntry::Bin(b) => {
                    assert!(bins.insert(b.as_str()), "bin {b} listed twice");
                    b
                }
                GuestToolsEntry::Rpc { service, binary } => {
                    assert!(services.insert(service.as_str()), "rpc {service} twice");
                    rpc_bins.insert(binary.as_str());
                    binary
                }
            };
            assert!(
                !TEST_ONLY.contains(&bin.as_str()) && !bin.contains("test"),
                "{bin} is for tests; it does not ship into guests"
            );
        }
        if let Some(b) = bins.intersection(&rpc_bins).next() {
            panic!("{b} listed both as bin and as an rpc binary");
        }
    }
}
