//! Where Bulkhead keeps things: FHS defaults for a system service, overridable for tests.

use std::path::{Path, PathBuf};

use crate::name::DomainName;
use crate::store::DomainStore;

pub const DEFAULT_CONFIG_DIR: &str = "/etc/bulkhead";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bulkhead";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/bulkhead";
pub const DEFAULT_GUEST_TOOLS_DIR: &str = "/usr/local/lib/bulkhead/guest";

pub const ENV_CONFIG_DIR: &str = "BULKHEAD_CONFIG_DIR";
pub const ENV_STATE_DIR: &str = "BULKHEAD_STATE_DIR";
pub const ENV_RUNTIME_DIR: &str = "BULKHEAD_RUNTIME_DIR";
pub const ENV_GUEST_TOOLS_DIR: &str = "BULKHEAD_GUEST_TOOLS_DIR";

/// File name of the agent socket inside a domain's channel directory.
pub const AGENT_SOCKET_NAME: &str = "agent.sock";
/// Where the channel directory appears inside a domain.
pub const CHANNEL_MOUNT_POINT: &str = "/run/bulkhead-channel";
/// Where the guest tools appear inside a domain.
pub const GUEST_TOOLS_MOUNT_POINT: &str = "/usr/lib/bulkhead";
/// The domain init, inside a domain.
pub const GUEST_INIT_PATH: &str = "/usr/lib/bulkhead/bulkhead-init";

/// File name of domaind's own settings in the config dir (`<config>/domaind.toml`).
pub const DAEMON_CONFIG_FILE: &str = "domaind.toml";
/// File name of a domain's private volume image in its state dir.
pub const PRIVATE_IMAGE_NAME: &str = "private.img";

/// The three roots of Bulkhead's files (see CONTRACTS.md "Paths").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `/etc/bulkhead`: `domains/<name>.toml`.
    pub config_dir: PathBuf,
    /// `/var/lib/bulkhead`: templates, private and scratch volumes, logs.
    pub state_dir: PathBuf,
    /// `/run/bulkhead`: channel sockets, instance records.
    pub runtime_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::fhs()
    }
}

impl Paths {
    /// The FHS defaults.
    pub fn fhs() -> Self {
        Self {
            config_dir: DEFAULT_CONFIG_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
        }
    }

    /// All three under one directory (`<root>/config`, `<root>/state`, `<root>/run`), for tests.
    pub fn under(root: &Path) -> Self {
        Self {
            config_dir: root.join("config"),
            state_dir: root.join("state"),
            runtime_dir: root.join("run"),
        }
    }

    /// FHS defaults overridden by `BULKHEAD_CONFIG_DIR`, `BULKHEAD_STATE_DIR`,
    /// `BULKHEAD_RUNTIME_DIR` where set and non-empty.
    pub fn from_env() -> Self {
        let get = |var: &str, default: &str| -> PathBuf {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| default.into())
        };
        Self {
            config_dir: get(ENV_CONFIG_DIR, DEFAULT_CONFIG_DIR),
            state_dir: get(ENV_STATE_DIR, DEFAULT_STATE_DIR),
            runtime_dir: get(ENV_RUNTIME_DIR, DEFAULT_RUNTIME_DIR),
        }
    }

    /// `<config>/domains`.
    pub fn domains_config_dir(&self) -> PathBuf {
        self.config_dir.join("domains")
    }

    /// The domain store over `<config>/domains`.
    pub fn domain_store(&self) -> DomainStore {
        DomainStore::new(self.domains_config_dir())
    }

    /// `<config>/domains/<name>.toml`.
    pub fn domain_file(&self, name: &DomainName) -> PathBuf {
        self.domains_config_dir().join(format!("{name}.toml"))
    }

    /// `<state>/templates` (the template store).
    pub fn templates_dir(&self) -> PathBuf {
        self.state_dir.join("templates")
    }

    /// `<state>/domains/<name>`.
    pub fn domain_state_dir(&self, name: &DomainName) -> PathBuf {
        self.state_dir.join("domains").join(name.as_str())
    }

    /// `<state>/domains/<name>/private` (persistent private volume, canonical ids).
    pub fn private_dir(&self, name: &DomainName) -> PathBuf {
        self.domain_state_dir(name).join("private")
    }

    /// `<state>/domains/<name>/private.img` (the private volume image, see domaind's
    /// `volume`).
    pub fn private_image(&self, name: &DomainName) -> PathBuf {
        self.domain_state_dir(name).join(PRIVATE_IMAGE_NAME)
    }

    /// `<state>/domains/<name>/scratch` (overlay upper/work, wiped at start and stop).
    pub fn scratch_dir(&self, name: &DomainName) -> PathBuf {
        self.domain_state_dir(name).join("scratch")
    }

    /// `<state>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// `<state>/logs/<name>.log`.
    pub fn log_file(&self, name: &DomainName) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    /// `<runtime>/domains/<name>`.
    pub fn runtime_domain_dir(&self, name: &DomainName) -> PathBuf {
        self.runtime_dir.join("domains").join(name.as_str())
    }

    /// `<runtime>/domains/<name>/channel` (bind-mounted read-only at /run/bulkhead-channel).
    pub fn channel_dir(&self, name: &DomainName) -> PathBuf {
        self.runtime_domain_dir(name).join("channel")
    }

    /// `<runtime>/domains/<name>/channel/agent.sock` (domaind listens here).
    pub fn agent_socket(&self, name: &DomainName) -> PathBuf {
        self.channel_dir(name).join(AGENT_SOCKET_NAME)
    }

    /// `<runtime>/domains/<name>/instance.json` (sandbox record for recovery).
    pub fn instance_file(&self, name: &DomainName) -> PathBuf {
        self.runtime_domain_dir(name).join("instance.json")
    }
}

/// The guest tools directory: `BULKHEAD_GUEST_TOOLS_DIR` or the default.
pub fn guest_tools_dir_from_env() -> PathBuf {
    std::env::var_os(ENV_GUEST_TOOLS_DIR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_GUEST_TOOLS_DIR.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_paths() {
        let p = Paths::fhs();
        let n = DomainName::new("work").unwrap();
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        assert_eq!(s(p.domain_file(&n)), "/etc/bulkhead/domains/work.toml");
        assert_eq!(s(p.templates_dir()), "/var/lib/bulkhead/templates");
        assert_eq!(
            s(p.private_dir(&n)),
            "/var/lib/bulkhead/domains/work/private"
        );
        assert_eq!(
            s(p.scratch_dir(&n)),
            "/var/lib/bulkhead/domains/work/scratch"
        );
        assert_eq!(s(p.log_file(&n)), "/var/lib/bulkhead/logs/work.log");
        assert_eq!(
            s(p.agent_socket(&n)),
            "/run/bulkhead/domains/work/channel/agent.sock"
        );
        assert_eq!(
            s(p.instance_file(&n)),
            "/run/bulkhead/domains/work/instance.json"
        );
        assert_eq!(p.domain_store().path_for(&n), p.domain_file(&n));
        let t = Paths::under(Path::new("/tmp/x"));
        assert_eq!(s(t.domain_file(&n)), "/tmp/x/config/domains/work.toml");
    }
}
