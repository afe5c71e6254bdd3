//! Only root and the bulkhead-admin group may manage domains: the bus policy shipped in
//! packaging/dbus is the first fence, domaind's own check of the caller's uid the second.
//! Both are tested with a real dbus-daemon and a real unprivileged caller (uid 65534).

use domaind::testing::{DomaindOptions, TestBus, TestDomaind};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn bulkhead_as(uid: u32, bus: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    cmd.args(args)
        .env("BULKHEAD_BUS_ADDRESS", bus)
        .stdin(Stdio::null());
    if uid != 0 {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("bulkhead runs");
    eprintln!(
        "uid {uid}: bulkhead {args:?} -> {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Second fence: even on a bus that lets anyone talk to anyone, domaind refuses a caller
/// that is neither root nor in bulkhead-admin.
#[tokio::test(flavor = "multi_thread")]
async fn domaind_refuses_callers_outside_the_admin_group() {
    if !running_as_root() {
        eprintln!("SKIP: needs root to run the CLI as another uid");
        return;
    }
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind starts");
    let out = bulkhead_as(NOBODY, daemon.bus_address(), &["ls"]);
    assert_eq!(out.status.code(), Some(7), "access denied is exit code 7");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bulkhead-admin"));
    let out = bulkhead_as(
        NOBODY,
        daemon.bus_address(),
        &["create", "-C", "standalone", "-l", "red", "sneaky"],
    );
    assert_eq!(out.status.code(), Some(7));
    // A refused `run` is Qubes' 126, so a script can tell it from the command's own status.
    let out = bulkhead_as(NOBODY, daemon.bus_address(), &["run", "x", "--", "true"]);
    assert_eq!(out.status.code(), Some(126));
    // Root is let in, and nothing was created by the refused call.
    let out = bulkhead_as(0, daemon.bus_address(), &["ls", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// First fence: the shipped bus policy, loaded by a system-bus-like dbus-daemon, keeps an
/// unprivileged caller from even reaching domaind.
#[test]
fn shipped_bus_policy_lets_only_root_and_admins_through() {
    if !running_as_root() {
        eprintln!("SKIP: needs root to run the CLI as another uid");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/dbus/org.bulkhead.Domaind1.conf")
        .canonicalize()
        .expect("the shipped policy exists");
    let conf = dir.path().join("system-like.conf");
    let socket = dir.path().join("bus");
    // Like Debian's system.conf: deny by default, allow talking to the bus itself,
    // then the service's own policy file.
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
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
  <include>{}</include>
</busconfig>
"#,
            socket.display(),
            policy.display()
        ),
    )
    .expect("write bus config");
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon runs (apt-get install dbus)");
    let mut address = String::new();
    BufReader::new(bus.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .expect("bus address");
    let address = address.trim().to_string();
    let _bus = KillOnDrop(bus);

    let state = dir.path().join("root");
    let domaind = Command::new(domaind::testing::domaind_bin().expect("domaind binary"))
        .arg("--bus-address")
        .arg(&address)
        .arg("--config-dir")
        .arg(state.join("etc"))
        .arg("--state-dir")
        .arg(state.join("var"))
        .arg("--runtime-dir")
        .arg(state.join("run"))
        .stdout(Stdio::null())
        .spawn()
        .expect("domaind runs");
    let _domaind = KillOnDrop(domaind);

    // Root (allowed by the policy) can call once domaind owns its name.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = bulkhead_as(0, &address, &["ls", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "domaind never answered root");
        std::thread::sleep(Duration::from_millis(100));
    }
    // nobody is stopped by the bus itself (the message never reaches domaind).
    let out = bulkhead_as(NOBODY, &address, &["ls"]);
    assert_eq!(out.status.code(), Some(7), "the bus denies: exit code 7");
    assert!(String::from_utf8_lossy(&out.stderr).contains("access denied"));
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
