//! Finding (or building) the binaries a test runs: domaind, the sandbox launcher, the guest
//! tools and the VMM, and assembling a guest tools dir as `packaging/guest-tools.txt` lists it.
//!
//! Each comes from its environment variable if set (`BULKHEAD_TEST_DOMAIND`,
//! `BULKHEAD_TEST_LIBEXEC`, `BULKHEAD_TEST_GUEST_TOOLS`); else from the test executable's own
//! `<target>/debug` when they are there (`cargo build --workspace --bins` first, as
//! scripts/test.sh does); else built with cargo into `<target>/domaind-test-helpers` (a
//! separate target dir, so it never waits on the lock of the `cargo test` that runs us).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{workspace_root, TestResult};

/// Environment variable with a dir holding bulkhead-init and bulkhead-agent.
pub const ENV_GUEST_TOOLS: &str = "BULKHEAD_TEST_GUEST_TOOLS";
/// Environment variable with a dir holding the bulkhead-sandbox launcher.
pub const ENV_LIBEXEC: &str = "BULKHEAD_TEST_LIBEXEC";
/// Environment variable with the domaind binary.
pub const ENV_DOMAIND: &str = "BULKHEAD_TEST_DOMAIND";

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
