//! A test domaind: the real `domaind` binary on a [`TestBus`](crate::TestBus), with its own
//! config, state and runtime dirs in a temporary root, and so its own cgroup root (derived
//! from its runtime dir, as domaind does; `BULKHEAD_INSTANCE` of the environment is not
//! passed on). A suite of them can run on a host where Bulkhead is installed and in use:
//! they never touch the system domaind's domains, nor each other's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, BUS_NAME};
use bulkhead_domain::Paths;
use bulkhead_sandbox::instance::ENV_INSTANCE;

use crate::{
    assemble_guest_tools, build_mini_template, domaind_bin, guest_tools_source, libexec_dir,
    TestBus, TestResult,
};

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
    /// Templates of the cache this domaind gets a store of its own for (its current root
    /// copied as hard links, as a template change copies it), instead of a link to the
    /// shared cache: tests that change a template.
    pub own_templates: Vec<String>,
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
            for name in &opts.own_templates {
                copy_template(cache, &paths.templates_dir(), name)?;
            }
            link_templates(cache, &paths.templates_dir())?;
        }
        if let Some(text) = &opts.daemon_file {
            std::fs::create_dir_all(&paths.config_dir).map_err(|e| format!("mkdir config: {e}"))?;
            std::fs::write(
                paths.config_dir.join(bulkhead_domain::DAEMON_CONFIG_FILE),
                text,
            )
            .map_err(|e| format!("write domaind.toml: {e}"))?;
        }
        let log_file = root.path().join("domaind.log");
        let instance = opts
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == ENV_INSTANCE)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty());
        let cgroup_root = bulkhead_sandbox::instance::cgroup_root(instance, &paths.runtime_dir)
            .map_err(|e| e.to_string())?;
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
            .env_remove(ENV_INSTANCE)
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

/// Symlink every template of `cache/templates` into `dest`.
/// `<dest>/<name>`: a store of its own holding a hard-link copy of the cache's current root
/// of template `name` (the cache is never changed through it: a template change replaces
/// entries, it never writes through a link).
fn copy_template(cache: &Path, dest: &Path, name: &str) -> TestResult<()> {
    let src = cache.join("templates");
    let src = if src.is_dir() { src } else { cache.to_owned() }.join(name);
    let target = std::fs::read_link(src.join("current"))
        .map_err(|e| format!("{}/current: {e}", src.display()))?;
    let to = dest.join(name);
    std::fs::create_dir_all(&to).map_err(|e| format!("mkdir {}: {e}", to.display()))?;
    let out = std::process::Command::new("cp")
        .arg("-al")
        .arg(src.join(&target))
        .arg(to.join(&target))
        .output()
        .map_err(|e| format!("cp: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cp -al {}: {}",
            src.join(&target).display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::os::unix::fs::symlink(&target, to.join("current"))
        .map_err(|e| format!("symlink current: {e}"))
}

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

/// Runs `f` on halted domain `name`'s private volume, mounted read-write on the host for the
/// moment (after the domain has released it: the same lock the sandbox launcher takes), as
/// the host sees it: canonical ids. For tests that plant or inspect private data.
pub fn with_private_volume<R>(paths: &Paths, name: &str, f: impl FnOnce(&Path) -> R) -> R {
    let dn = bulkhead_domain::DomainName::new(name).expect("domain name");
    let image = paths.private_image(&dn);
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

/// A test domaind started with `opts` on a bus of its own, and a client (connection and
/// proxy); panics on failure. Keep the bus as long as domaind.
pub async fn start_domaind(
    opts: DomaindOptions,
) -> (
    TestBus,
    TestDomaind,
    zbus::Connection,
    Domaind1Proxy<'static>,
) {
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(&bus, opts).await.expect("domaind");
    let (conn, p) = d.client().await.expect("client");
    (bus, d, conn, p)
}

/// A test domaind on its own bus with the debian-12 template registered (`BuildTemplate`,
/// which finds it up to date in the template cache `opts` links, e.g.
/// [`DomaindOptions::debian12`]): the set-up of the tests of real Debian domains, sandbox or
/// VM. Panics on any failure, with domaind's log where it has one.
pub struct Debian12Env {
    pub bus: TestBus,
    pub d: TestDomaind,
    pub conn: zbus::Connection,
    pub p: Domaind1Proxy<'static>,
    /// What `BuildTemplate` returned: the template's root and its progress text.
    pub root: String,
    pub progress: String,
}

impl Debian12Env {
    pub async fn start(opts: DomaindOptions) -> Self {
        let (bus, d, conn, p) = start_domaind(opts).await;
        let (root, progress) = crate::register_template(&p, "debian-12")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
        Self {
            bus,
            d,
            conn,
            p,
            root,
            progress,
        }
    }
}
