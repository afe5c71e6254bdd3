//! Mini templates: a tiny root made from host binaries (a shell, coreutils, the libraries of
//! the guest tools) through the real template store, in seconds instead of an mmdebstrap run;
//! and [`MiniEnv`], a test domaind with one registered, the set-up of most tests of real
//! sandbox domains that do not need Debian.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_api::Domaind1Proxy;

use crate::{sandbox_available, workspace_root, DomaindOptions, TestBus, TestDomaind, TestResult};

/// Binaries copied (with their libraries) into a [`build_mini_template`] root.
pub const MINI_BINARIES: &[&str] = &[
    "/bin/sh",
    "/bin/cat",
    "/bin/echo",
    "/bin/true",
    "/bin/false",
    "/bin/sleep",
    "/bin/ls",
    "/bin/rm",
    "/bin/mkdir",
    "/bin/ln",
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
