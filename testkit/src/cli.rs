//! The `bulkhead` CLI under test, run against a test domaind.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::TestDomaind;

/// The `bulkhead` CLI binary against a test domaind (through `BULKHEAD_BUS_ADDRESS`), stdin
/// /dev/null; each run is echoed to stderr with its exit code and output.
pub struct TestCli<'a> {
    binary: PathBuf,
    daemon: &'a TestDomaind,
}

impl<'a> TestCli<'a> {
    /// `binary` is the CLI under test (`env!("CARGO_BIN_EXE_bulkhead")` in the CLI's tests).
    pub fn new(binary: impl Into<PathBuf>, daemon: &'a TestDomaind) -> Self {
        Self {
            binary: binary.into(),
            daemon,
        }
    }

    /// The command, not yet run (to change stdin or the environment).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("BULKHEAD_BUS_ADDRESS", self.daemon.bus_address())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs to the end; panics only if the binary cannot run.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        eprintln!(
            "$ bulkhead {}\n-> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "bulkhead {args:?} failed");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// [`ok`](Self::ok) with `key=value` added to the environment; a failure shows stderr.
    pub fn ok_env(&self, args: &[&str], key: &str, value: impl AsRef<std::ffi::OsStr>) -> String {
        let out = self
            .command(args)
            .env(key, value)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        assert!(
            out.status.success(),
            "bulkhead {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs and checks the documented exit code and that stderr says something useful.
    pub fn fails(&self, args: &[&str], code: i32, stderr_has: &str) {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "exit code of bulkhead {args:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(stderr_has),
            "stderr of bulkhead {args:?} should mention {stderr_has:?}: {stderr}"
        );
    }

    /// `bulkhead run DOMAIN -- sh -c SCRIPT` (as the default user).
    pub fn sh(&self, domain: &str, script: &str) -> std::process::Output {
        self.run(&["run", domain, "--", "sh", "-c", script])
    }
}
