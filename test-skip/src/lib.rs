//! Skipping a test that cannot run on this host, so that it is counted as skipped.
//!
//! libtest has no runtime skip: a test that returns early is counted as passed. A test that
//! cannot run here calls [`skip`] with the reason and then returns. [`skip`] prints
//! `SKIP: <test>: <reason>` to stderr and, when `$BULKHEAD_TEST_SKIP_LOG` names a file,
//! appends the line `<test>: <reason>` to it; scripts/test.sh reads that file and moves each
//! skip from "passed" to "skipped" in its closing line (and fails when
//! `BULKHEAD_TEST_NO_SKIPS=1`). libtest hides a passing test's stderr unless run with
//! `--nocapture`, so the log, not the message, is what gets a skip counted.
//!
//! `<test>` is the test binary's name without cargo's `-<hash>` suffix, then `::` and the
//! current thread's name when that is not `main` (libtest runs each test on a thread named
//! after the test; a `harness = false` binary runs on `main`).
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

/// The environment variable naming the file a skip is appended to.
pub const ENV_SKIP_LOG: &str = "BULKHEAD_TEST_SKIP_LOG";

/// Says that the calling test does not run here, and why; the caller then returns.
///
/// Panics when `$BULKHEAD_TEST_SKIP_LOG` is set and the line cannot be appended to it: a skip
/// that is not recorded would be counted as a pass.
pub fn skip(reason: impl Display) {
    let exe = std::env::current_exe().ok();
    let exe_name = exe
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown-test-binary".to_owned());
    let thread = std::thread::current();
    let id = test_id(&exe_name, thread.name());
    let reason = reason.to_string();
    eprintln!("SKIP: {id}: {reason}");
    if let Some(log) = std::env::var_os(ENV_SKIP_LOG).filter(|p| !p.is_empty()) {
        record(Path::new(&log), &id, &reason);
    }
}

/// The test's name as a skip reports it: the binary's name without cargo's hash, and
/// `::<thread>` unless the thread is unnamed or `main`.
pub fn test_id(exe_file_name: &str, thread: Option<&str>) -> String {
    let bin = binary_name(exe_file_name);
    match thread {
        Some(t) if !t.is_empty() && t != "main" => format!("{bin}::{t}"),
        _ => bin.to_owned(),
    }
}

/// `exe_file_name` without the `-<16 hex digits>` cargo appends to a test binary's name.
pub fn binary_name(exe_file_name: &str) -> &str {
    match exe_file_name.rsplit_once('-') {
        Some((name, hash))
            if !name.is_empty()
                && hash.len() == 16
                && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        _ => exe_file_name,
    }
}

/// The log line for a skip: `<id>: <reason>` with the reason's lines joined by ` / ` (one skip,
/// one line) and a trailing newline.
pub fn log_line(id: &str, reason: &str) -> String {
    let reason: Vec<&str> = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("{id}: {}\n", reason.join(" / "))
}

/// Appends the skip's line to `log` with one write on an O_APPEND file, so that lines of
/// tests running in parallel (threads or processes) do not interleave. Panics on failure.
pub fn record(log: &Path, id: &str, reason: &str) {
    let line = log_line(id, reason);
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .and_then(|mut f| f.write(line.as_bytes()));
    match written {
        Ok(n) if n == line.len() => {}
        Ok(n) => panic!(
            "skip not recorded: wrote {n} of {} bytes to {} (${ENV_SKIP_LOG}): {}",
            line.len(),
            log.display(),
            line.trim_end()
        ),
        Err(e) => panic!(
            "skip not recorded in {} (${ENV_SKIP_LOG}): {e}: {}",
            log.display(),
            line.trim_end()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_hash_is_removed() {
        assert_eq!(binary_name("lifecycle-0123456789abcdef"), "lifecycle");
        assert_eq!(
            binary_name("bulkhead_sandbox-fedcba9876543210"),
            "bulkhead_sandbox"
        );
        assert_eq!(binary_name("vm-full-boot-0123456789ABCDEF"), "vm-full-boot");
    }

    #[test]
    fn names_without_a_cargo_hash_are_kept() {
        assert_eq!(binary_name("look"), "look");
        assert_eq!(binary_name("vm-full-boot"), "vm-full-boot");
        assert_eq!(binary_name("api-0123456789abcde"), "api-0123456789abcde");
        assert_eq!(
            binary_name("api-0123456789abcdefg"),
            "api-0123456789abcdefg"
        );
        assert_eq!(binary_name("api-0123456789abcdeg"), "api-0123456789abcdeg");
        assert_eq!(binary_name("-0123456789abcdef"), "-0123456789abcdef");
        assert_eq!(binary_name(""), "");
    }

    #[test]
    fn the_thread_names_the_test_unless_it_is_main() {
        assert_eq!(
            test_id(
                "api-0123456789abcdef",
                Some("unprivileged_caller_is_refused")
            ),
            "api::unprivileged_caller_is_refused"
        );
        assert_eq!(
            test_id(
                "bulkhead_sandbox-0123456789abcdef",
                Some("cgroup::tests::x")
            ),
            "bulkhead_sandbox::cgroup::tests::x"
        );
        assert_eq!(test_id("look-0123456789abcdef", Some("main")), "look");
        assert_eq!(test_id("look-0123456789abcdef", None), "look");
        assert_eq!(test_id("look-0123456789abcdef", Some("")), "look");
    }

    #[test]
    fn this_test_is_named_after_its_thread() {
        let exe = std::env::current_exe().unwrap();
        let id = test_id(
            &exe.file_name().unwrap().to_string_lossy(),
            std::thread::current().name(),
        );
        assert_eq!(
            id,
            "bulkhead_test_skip::tests::this_test_is_named_after_its_thread"
        );
    }

    #[test]
    fn a_reason_of_several_lines_is_one_log_line() {
        assert_eq!(log_line("t", "needs root"), "t: needs root\n");
        assert_eq!(
            log_line("t", "apt-cache depends:\n  Depends: x\n\n"),
            "t: apt-cache depends: / Depends: x\n"
        );
    }

    #[test]
    fn skips_are_appended_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        std::fs::write(&log, "earlier: line\n").unwrap();
        std::thread::scope(|s| {
            for i in 0..8 {
                let log = &log;
                s.spawn(move || {
                    for j in 0..50 {
                        record(log, &format!("bin::t{i}"), &format!("reason {j}"));
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 8 * 50);
        assert_eq!(lines[0], "earlier: line");
        for l in &lines[1..] {
            let (id, reason) = l.split_once(": ").unwrap();
            assert!(id.starts_with("bin::t"), "{l}");
            assert!(reason.starts_with("reason "), "{l}");
        }
    }

    /// The child half of `skip_prints_and_records`: skips only when run by it.
    #[test]
    fn skip_child() {
        if std::env::var_os("BULKHEAD_TEST_SKIP_CHILD").is_some() {
            skip(format_args!("child {}", 1));
        }
    }

    #[test]
    fn skip_prints_and_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        std::fs::write(&log, "").unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::skip_child",
                "--test-threads=2",
                "--nocapture",
            ])
            .env("BULKHEAD_TEST_SKIP_CHILD", "1")
            .env(ENV_SKIP_LOG, &log)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let want = "bulkhead_test_skip::tests::skip_child: child 1";
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("SKIP: {want}\n")),
            "{out:?}"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), format!("{want}\n"));
    }

    #[test]
    #[should_panic(expected = "skip not recorded")]
    fn a_skip_that_cannot_be_recorded_panics() {
        let dir = tempfile::tempdir().unwrap();
        record(&dir.path().join("missing/skips"), "bin::t", "needs root");
    }
}
