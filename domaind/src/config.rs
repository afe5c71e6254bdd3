//! The daemon's directories and tunables. Paths below the three roots come from
//! [`bulkhead_domain::Paths`] so that domaind, the CLI and the tests agree on them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_domain::Paths;

/// Default for `--recipes-dir`.
pub const DEFAULT_RECIPES_DIR: &str = "/usr/local/share/bulkhead/templates/recipes";
/// Environment variable for `--recipes-dir`.
pub const ENV_RECIPES_DIR: &str = "BULKHEAD_RECIPES_DIR";
/// How long a start waits for the domain's agent to connect.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`DaemonConfig::pool_memory_margin_mib`].
pub const DEFAULT_POOL_MEMORY_MARGIN_MIB: u64 = 1024;
/// Environment variable for `--pool-memory-margin-mib`.
pub const ENV_POOL_MEMORY_MARGIN: &str = "BULKHEAD_POOL_MEMORY_MARGIN_MIB";
/// Graceful shutdown timeout when the caller passes 0.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub paths: Paths,
    pub guest_tools_dir: PathBuf,
    pub recipes_dir: PathBuf,
    /// The `bulkhead-sandbox` launcher binary.
    pub launcher: PathBuf,
    pub agent_timeout: Duration,
    /// How long the ask agent (the GUI) has to answer an `ask` before it counts as deny.
    pub ask_timeout: Duration,
    /// Disposable template for `@dispvm` calls made from dom0.
    pub dom0_default_dispvm: Option<bulkhead_domain::DomainName>,
    /// The `bulkhead-vmm` monitor binary (VM domains).
    pub vmm: PathBuf,
    /// Start VM domains even where the probe finds no hardware virtualization (PVM or other
    /// software KVM). For tests only: a stock Linux guest does not boot there, so such a start
    /// ends once the VMM runs, without waiting for the agent. Off by default.
    pub allow_software_kvm: bool,
    /// Warm disposable pools: a member is started only if `MemAvailable` minus its memory
    /// stays at or above this many MiB.
    pub pool_memory_margin_mib: u64,
}

/// Find the VM monitor: `$BULKHEAD_LIBEXEC_DIR/bulkhead-vmm`, else next to our executable.
pub fn find_vmm(own_exe: Option<&Path>) -> PathBuf {
    if let Some(dir) = std::env::var_os("BULKHEAD_LIBEXEC_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("bulkhead-vmm");
    }
    own_exe
        .and_then(Path::parent)
        .map(|d| d.join("bulkhead-vmm"))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/bulkhead/bulkhead-vmm"))
}

/// Find the launcher: `$BULKHEAD_LIBEXEC_DIR/bulkhead-sandbox`, else next to our executable.
pub fn find_launcher(own_exe: Option<&Path>) -> PathBuf {
    if let Some(dir) = std::env::var_os("BULKHEAD_LIBEXEC_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("bulkhead-sandbox");
    }
    own_exe
        .and_then(Path::parent)
        .map(|d| d.join("bulkhead-sandbox"))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/bulkhead/bulkhead-sandbox"))
}
