//! Helpers shared by the integration tests: a fake home, a snapshot of a tree, running the
//! real service binaries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const RECEIVER: &str = env!("CARGO_BIN_EXE_bulkhead-service-filecopy");
pub const OPEN_SERVICE: &str = env!("CARGO_BIN_EXE_bulkhead-service-open");
pub const URL_SERVICE: &str = env!("CARGO_BIN_EXE_bulkhead-service-openurl");

/// What a tree holds: relative path -> description (kind, mode, content or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let desc = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).expect("readlink").display())
            } else if m.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                format!(
                    "file {:o} nlink={} {:?}",
                    m.mode() & 0o7777,
                    m.nlink(),
                    fs::read(&p).expect("read")
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

/// A temporary home with something of the receiver's that must never change.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = Home { dir };
        fs::write(h.path().join("secret"), "the receiver's own file\n").expect("write");
        fs::create_dir_all(h.path().join(".config")).expect("mkdir");
        fs::write(h.path().join(".config/settings"), "x=1\n").expect("write");
        // in a domain, ~/Incoming is a mount point made by the sandbox
        fs::create_dir(h.path().join("Incoming")).expect("mkdir");
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn incoming(&self, source: &str) -> PathBuf {
        self.path().join("Incoming").join(source)
    }

    /// Everything outside `~/Incoming/<source>`.
    pub fn outside(&self, source: &str) -> BTreeMap<String, String> {
        let inc = format!("Incoming/{source}");
        snapshot(self.path())
            .into_iter()
            .filter(|(k, _)| *k != inc && !k.starts_with(&format!("{inc}/")))
            .collect()
    }
}

/// Runs the receiver on `stream` as a service called by `source`.
pub fn receive(home: &Path, source: &str, stream: &[u8], config: Option<&Path>) -> Output {
    let mut cmd = Command::new(RECEIVER);
    cmd.env_clear()
        .env("HOME", home)
        .env("BULKHEAD_REMOTE_DOMAIN", source)
        .env(
            "BULKHEAD_FILECOPY_CONFIG",
            config.unwrap_or(Path::new("/nonexistent/filecopy.toml")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn receiver");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = stream.to_vec();
    // the receiver may stop reading early: write from a thread, ignore EPIPE
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait receiver");
    writer.join().expect("writer");
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}
