//! Only root and the bulkhead-admin group may manage domains: the bus policy shipped in
//! packaging/dbus is the first fence, domaind's own check of the caller's uid the second.
//! Both are tested with a real dbus-daemon and a real unprivileged caller (uid 65534).

use bulkhead_testkit::{DomaindOptions, TestBus, TestDomaind};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
        bulkhead_test_skip::skip("needs root to run the CLI as another uid");
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
#[tokio::test(flavor = "multi_thread")]
async fn shipped_bus_policy_lets_only_root_and_admins_through() {
    if !running_as_root() {
        bulkhead_test_skip::skip("needs root to run the CLI as another uid");
        return;
    }
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/dbus/org.bulkhead.Domaind1.conf")
        .canonicalize()
        .expect("the shipped policy exists");
    let bus = TestBus::start_system_like(&policy).expect("dbus-daemon starts");
    // domaind (root) may own its name under the shipped policy, or this fails.
    let daemon = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind starts and owns org.bulkhead.Domaind1");
    let out = bulkhead_as(0, daemon.bus_address(), &["ls", "--json"]);
    assert!(out.status.success(), "root is let through");
    // nobody is stopped by the bus itself (the message never reaches domaind).
    let out = bulkhead_as(NOBODY, daemon.bus_address(), &["ls"]);
    assert_eq!(out.status.code(), Some(7), "the bus denies: exit code 7");
    assert!(String::from_utf8_lossy(&out.stderr).contains("access denied by the bus"));
}
