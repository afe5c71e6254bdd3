//! The update proxy forwarder of a template domain (`bulkhead-updates-forwarder`, crate
//! bulkhead-updates-proxy): apt's proxy at 127.0.0.1:8082, whose connections become
//! `bulkhead.UpdatesProxy` calls. Init keeps it running in templates (domaind passes
//! `--updates-forwarder`), as the default user.

use std::path::Path;

use nix::unistd::Pid;

use crate::account;

/// The forwarder binary (guest tools dir).
pub const FORWARDER_BIN: &str = "/usr/lib/bulkhead/bulkhead-updates-forwarder";

/// apt's configuration in a template: every archive through the forwarder. Written by init
/// at each start of a template and never kept in its root (bulkhead-templates leaves the same
/// path out of a template's changes): a domain based on the template has no forwarder and
/// reaches archives, if at all, through its own network.
pub const APT_PROXY_CONF: &str = "/etc/apt/apt.conf.d/80bulkhead-updates-proxy";

const APT_PROXY_TEXT: &str =
    "// Written by bulkhead-init in template domains: archives through the update proxy.\n\
Acquire::http::Proxy \"http://127.0.0.1:8082/\";\n\
Acquire::https::Proxy \"http://127.0.0.1:8082/\";\n\
// One request per connection: the proxy serves one and closes.\n\
Acquire::http::Pipeline-Depth \"0\";\n";

/// Writes [`APT_PROXY_CONF`] (when apt is installed).
pub fn write_apt_proxy_conf() -> std::io::Result<()> {
    let path = Path::new(APT_PROXY_CONF);
    match path.parent() {
        Some(dir) if dir.is_dir() => std::fs::write(path, APT_PROXY_TEXT),
        _ => Ok(()),
    }
}

/// Errors starting the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error(transparent)]
    Account(#[from] account::AccountError),
    #[error("bulkhead-updates-forwarder: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Starts `bin` as the default user (init reaps it).
pub fn spawn_forwarder(bin: &Path) -> Result<Pid, ForwarderError> {
    let acct = account::lookup(None)?;
    let mut cmd = account::helper_command(bin, &acct);
    let child = cmd.spawn().map_err(ForwarderError::Spawn)?;
    Ok(Pid::from_raw(child.id() as i32))
}
