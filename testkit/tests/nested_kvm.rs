//! `scripts/nested-kvm.sh` itself, with real L1s: the command's exit status comes back, and an
//! L1 whose kernel reports a CPU locked up for two minutes is stopped at once with exit 123 (so
//! that the harness runs the test again) instead of at the timeout. Each case boots an L1 (about
//! 10 s here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nested-kvm.sh")
}

/// Whether this host can boot an L1 (root, QEMU); prints the skip reason if not.
fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("nested-kvm.sh runs as root");
        return false;
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        bulkhead_test_skip::skip("no qemu-system-x86_64 (scripts/install-deps.sh installs it)");
        return false;
    }
    true
}

fn nested(timeout_s: u32, shell: &str) -> Output {
    Command::new(script())
        .args(["--timeout", &timeout_s.to_string(), "--", "sh", "-c", shell])
        .output()
        .expect("run nested-kvm.sh")
}

fn said(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_commands_output_and_exit_status_come_back() {
    if !can_run() {
        return;
    }
    let out = nested(300, "echo from-l1; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("from-l1"),
        "{}",
        said(&out)
    );
}

#[test]
fn an_l1_that_locks_up_is_stopped_at_once_with_123() {
    if !can_run() {
        return;
    }
    // What L1's kernel prints when a CPU is stuck (as seen with two L2 guests), then a command
    // that would run for 250 s more.
    let lockup = "[  130.0] watchdog: BUG: soft lockup - CPU#1 stuck for 130s! [vcpu0:1]";
    let out = nested(
        600,
        &format!("echo '{lockup}' >/dev/ttyS0; sleep 250; echo not stopped"),
    );
    assert_eq!(out.status.code(), Some(123), "{}", said(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("L1 locked up"), "{}", said(&out));
    assert!(
        err.contains(lockup),
        "L1's console is shown: {}",
        said(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("not stopped"),
        "{}",
        said(&out)
    );
}

#[test]
fn a_short_lockup_report_is_not_a_lockup() {
    if !can_run() {
        return;
    }
    // Soft-lockup reports start at about 22 s; under TCG a busy L1 can print one and recover.
    let out = nested(
        300,
        "echo '[ 30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [x:1]' >/dev/ttyS0; sleep 8; exit 0",
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}
