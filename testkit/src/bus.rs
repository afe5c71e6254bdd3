//! A private `dbus-daemon` per test: session-like (anyone may own and send anything) or
//! configured like Debian's system bus plus a service policy file, so that file's rules are
//! what is tested.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::TestResult;

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
