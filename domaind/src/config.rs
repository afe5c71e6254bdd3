//! The daemon's directories and tunables. Paths below the three roots come from
//! [`bulkhead_domain::Paths`] so that domaind, the CLI and the tests agree on them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_domain::Paths;
use bulkhead_sandbox::CgroupRoot;

// `--instance` and the cgroup root it gives live with the cgroups (the test harness, which
// does not link domaind, derives a test domaind's root the same way).
pub use bulkhead_sandbox::instance::{cgroup_root, InstanceError, ENV_INSTANCE, SYSTEM_INSTANCE};

/// Default for `--recipes-dir`.
pub const DEFAULT_RECIPES_DIR: &str = "/usr/local/share/bulkhead/templates/recipes";
/// Environment variable for `--recipes-dir`.
pub const ENV_RECIPES_DIR: &str = "BULKHEAD_RECIPES_DIR";
/// How long a start waits for the domain's agent to connect.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a start waits for the agent of a VM domain: the guest kernel boots first (about
/// a second with VT-x/AMD-V, 20-60 s nested under QEMU's TCG).
pub const DEFAULT_VM_AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of [`DaemonConfig::pool_memory_margin_mib`].
pub const DEFAULT_POOL_MEMORY_MARGIN_MIB: u64 = 1024;
/// Environment variable for `--pool-memory-margin-mib`.
pub const ENV_POOL_MEMORY_MARGIN: &str = "BULKHEAD_POOL_MEMORY_MARGIN_MIB";
/// Graceful shutdown timeout when the caller passes 0.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub paths: Paths,
    /// This instance's cgroup root: its domains' cgroups live below it and nothing else is
    /// ever listed or removed (see [`cgroup_root`]).
    pub cgroup_root: CgroupRoot,
    pub guest_tools_dir: PathBuf,
    pub recipes_dir: PathBuf,
    /// The `bulkhead-sandbox` launcher binary.
    pub launcher: PathBuf,
    pub agent_timeout: Duration,
    /// [`Self::agent_timeout`] for VM domains (their kernel boots first).
    pub vm_agent_timeout: Duration,
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
    /// Every disposable start (a warm pool member, or a cold disposable for a request when
    /// no member is ready) needs `MemAvailable` minus its memory to stay at or above this
    /// many MiB. (Named after the pool, where it came first; handing out a ready member needs
    /// no new memory and is not checked.)
    pub pool_memory_margin_mib: u64,
    /// `[disposables]` of `domaind.toml`: caps on live disposables.
    pub disposables: DisposableLimits,
    /// `[net]` of `domaind.toml`: the net domain's uplink.
    pub net: NetConfig,
    /// The sysfs tree the USB inventory is read from (`/sys`; a recorded tree in tests).
    pub usb_sysfs_root: PathBuf,
    /// The service domain that holds the USB devices (target of `bulkhead.usb.Attach`).
    pub usb_domain: String,
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

/// File name of domaind's own settings in the config dir (`<config>/domaind.toml`).
pub use bulkhead_domain::DAEMON_CONFIG_FILE;

/// `domaind.toml`: settings that are not per domain. Every section is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    #[serde(default)]
    pub net: NetConfig,
    #[serde(default)]
    pub disposables: DisposableLimits,
}

/// Default of [`DisposableLimits::max_live`].
pub const DEFAULT_MAX_LIVE_DISPOSABLES: u32 = 16;
/// Default of [`DisposableLimits::max_live_per_source`].
pub const DEFAULT_MAX_LIVE_DISPOSABLES_PER_SOURCE: u32 = 4;

/// `[disposables]`: how many disposables may be live at once, so that no domain (and no
/// policy rule that lets it ask for `@dispvm`) can start them without bound.
///
/// ```toml
/// [disposables]
/// max_live = 16             # all sources together
/// max_live_per_source = 4   # per domain the disposable is started for (dom0 included)
/// ```
///
/// A disposable counts from the moment it is requested (before it is created) until it is
/// removed, against the source it was started for: the calling domain of an `@dispvm` call
/// (open-in-disposable included), dom0 for `RunDisposable`, the desktop's menu and D-Bus
/// `Call`. A warm pool member counts once it is handed out; ready (paused, unclaimed)
/// members do not count: they are bounded by their templates' `dispvm_pool_size` (set by
/// dom0) and the memory margin, so at most `max_live` plus the pools' sizes are live. 0
/// refuses every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisposableLimits {
    #[serde(default = "default_max_live")]
    pub max_live: u32,
    #[serde(default = "default_max_live_per_source")]
    pub max_live_per_source: u32,
}

fn default_max_live() -> u32 {
    DEFAULT_MAX_LIVE_DISPOSABLES
}

fn default_max_live_per_source() -> u32 {
    DEFAULT_MAX_LIVE_DISPOSABLES_PER_SOURCE
}

impl Default for DisposableLimits {
    fn default() -> Self {
        DisposableLimits {
            max_live: DEFAULT_MAX_LIVE_DISPOSABLES,
            max_live_per_source: DEFAULT_MAX_LIVE_DISPOSABLES_PER_SOURCE,
        }
    }
}

/// `[net]`: the uplink of the net domain.
///
/// ```toml
/// [net]
/// domain = "net"            # the domain that gets the uplink (default "net")
/// uplink = "enp1s0"         # host interface moved into that domain's network namespace
/// address = "192.0.2.2/24"  # its address there (the host's configuration does not follow it)
/// gateway = "192.0.2.1"     # default route of the net domain
/// dns = ["192.0.2.1"]       # resolvers the domains' 10.139.1.1/2 are redirected to
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default = "default_net_domain")]
    pub domain: String,
    pub uplink: Option<String>,
    pub address: Option<String>,
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<std::net::Ipv4Addr>,
}

fn default_net_domain() -> String {
    "net".into()
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            domain: default_net_domain(),
            uplink: None,
            address: None,
            gateway: None,
            dns: Vec::new(),
        }
    }
}

impl NetConfig {
    /// The uplink as the net crate takes it (`None` without `uplink`).
    pub fn uplink(&self) -> Result<Option<bulkhead_net::link::Uplink>, String> {
        let Some(ifname) = &self.uplink else {
            return Ok(None);
        };
        if ifname.is_empty()
            || ifname.len() > 15
            || !ifname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!("[net] uplink {ifname:?} is not an interface name"));
        }
        let addr = self
            .address
            .as_deref()
            .ok_or("[net] uplink needs address = \"A.B.C.D/LEN\"")?;
        let (ip, len) = addr
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 32)?)))
            .ok_or_else(|| format!("[net] address {addr:?} is not A.B.C.D/LEN"))?;
        Ok(Some(bulkhead_net::link::Uplink {
            ifname: ifname.clone(),
            address: ip,
            prefix: len,
            gateway: self.gateway,
        }))
    }
}

/// Read `<config_dir>/domaind.toml` (defaults when it does not exist).
pub fn load_daemon_file(config_dir: &Path) -> Result<DaemonFile, String> {
    let path = config_dir.join(DAEMON_CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DaemonFile::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let f: DaemonFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    bulkhead_domain::DomainName::new(&f.net.domain)
        .map_err(|e| format!("{}: [net] domain: {e}", path.display()))?;
    f.net
        .uplink()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposable_limits_from_domaind_toml() {
        let d = tempfile::tempdir().unwrap();
        // No file, and a file without the section: the defaults.
        let f = load_daemon_file(d.path()).unwrap();
        assert_eq!(f.disposables, DisposableLimits::default());
        assert_eq!(
            (f.disposables.max_live, f.disposables.max_live_per_source),
            (16, 4)
        );
        let file = d.path().join(DAEMON_CONFIG_FILE);
        std::fs::write(&file, "[net]\n").unwrap();
        assert_eq!(
            load_daemon_file(d.path()).unwrap().disposables,
            DisposableLimits::default()
        );
        std::fs::write(&file, "[disposables]\nmax_live_per_source = 1\n").unwrap();
        assert_eq!(
            load_daemon_file(d.path()).unwrap().disposables,
            DisposableLimits {
                max_live: 16,
                max_live_per_source: 1
            }
        );
        std::fs::write(
            &file,
            "[disposables]\nmax_live = 2\nmax_live_per_source = 1\n",
        )
        .unwrap();
        assert_eq!(load_daemon_file(d.path()).unwrap().disposables.max_live, 2);
        // A typo or a negative number is an error, not a silent default.
        std::fs::write(&file, "[disposables]\nmax_lives = 2\n").unwrap();
        let e = load_daemon_file(d.path()).unwrap_err();
        assert!(e.contains("max_lives"), "{e}");
        std::fs::write(&file, "[disposables]\nmax_live = -1\n").unwrap();
        assert!(load_daemon_file(d.path()).is_err());
    }
}
