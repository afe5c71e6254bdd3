//! The user commands against the real services, joined by a local pipe instead of a domain
//! boundary: `BULKHEAD_CALL` names a script that runs the service as the agent would (env
//! `BULKHEAD_REMOTE_DOMAIN`, the receiving user's HOME). The tests through real domains,
//! domaind and policy are in `cli/tests/services.rs`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const SRC: &str = "work";

fn bin(name: &str) -> PathBuf {
    // the test executable lives in <target>/debug/deps
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name)
}

/// A stand-in for `bulkhead-call TARGET SERVICE` that runs the named service locally.
struct Pipe {
    dir: tempfile::TempDir,
}

impl Pipe {
    fn new(receiver_home: &Path, extra_env: &str) -> Pipe {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "echo \"$1 $2\" >> '{log}'\n\
             case \"$2\" in\n\
               bulkhead.Filecopy) svc='{fc}' ;;\n\
               bulkhead.OpenInVM) svc='{op}' ;;\n\
               bulkhead.OpenURL) svc='{url}' ;;\n\
               *) echo \"no such service $2\" >&2; exit 125 ;;\n\
             esac\n\
             exec env -i HOME='{home}' BULKHEAD_REMOTE_DOMAIN={SRC} BULKHEAD_FILECOPY_CONFIG='{cfg}' {extra_env} \"$svc\"",
            log = dir.path().join("calls.log").display(),
            fc = RECEIVER,
            op = OPEN_SERVICE,
            url = URL_SERVICE,
            home = receiver_home.display(),
            cfg = dir.path().join("filecopy.toml").display(),
        );
        script(&dir.path().join("bulkhead-call"), &body);
        Pipe { dir }
    }

    fn refusing() -> Pipe {
        let dir = tempfile::tempdir().unwrap();
        script(
            &dir.path().join("bulkhead-call"),
            "echo 'bulkhead-call: refused by policy' >&2; exit 126",
        );
        Pipe { dir }
    }

    fn config(&self, text: &str) {
        fs::write(self.dir.path().join("filecopy.toml"), text).unwrap();
    }

    fn calls(&self) -> String {
        fs::read_to_string(self.dir.path().join("calls.log")).unwrap_or_default()
    }

    fn run(&self, prog: &str, args: &[&str], cwd: &Path) -> Output {
        self.run_env(prog, args, cwd, &[])
    }

    fn run_env(&self, prog: &str, args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Output {
        Command::new(bin(prog))
            .args(args)
            .current_dir(cwd)
            .env("BULKHEAD_CALL", self.dir.path().join("bulkhead-call"))
            .envs(env.iter().copied())
            .output()
            .expect("run command")
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A source tree: dir/ with a nested file, an inside symlink, two hard-linked names.
fn source_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("dir/sub/deep.txt"), "deep").unwrap();
    fs::write(root.join("dir/a"), "hard").unwrap();
    fs::hard_link(root.join("dir/a"), root.join("dir/b")).unwrap();
    std::os::unix::fs::symlink("../a", root.join("dir/sub/link")).unwrap();
    fs::write(root.join("single.txt"), "single").unwrap();
    fs::set_permissions(root.join("single.txt"), fs::Permissions::from_mode(0o640)).unwrap();
}

#[test]
fn copy_to_vm_sends_a_tree_into_incoming() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "");
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    let before = snapshot(src.path());
    let o = pipe.run(
        "bulkhead-copy-to-vm",
        &["personal", "dir", "single.txt"],
        src.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(pipe.calls(), "personal bulkhead.Filecopy\n");
    let inc = home.incoming(SRC);
    assert_eq!(
        fs::read_to_string(inc.join("dir/sub/deep.txt")).unwrap(),
        "deep"
    );
    assert_eq!(
        fs::read_to_string(inc.join("dir/sub/link")).unwrap(),
        "hard"
    );
    assert_eq!(
        fs::read_link(inc.join("dir/sub/link")).unwrap(),
        Path::new("../a")
    );
    for n in ["a", "b"] {
        let m = fs::metadata(inc.join("dir").join(n)).unwrap();
        assert_eq!(m.nlink(), 1, "hard links arrive as separate files");
    }
    assert_eq!(
        fs::metadata(inc.join("single.txt")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(snapshot(src.path()), before, "a copy keeps the sources");

    // the same again: renamed, nothing overwritten
    let o = pipe.run("bulkhead-copy", &["single.txt"], src.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(pipe.calls().ends_with("@default bulkhead.Filecopy\n"));
    assert_eq!(
        fs::read_to_string(inc.join("single (1).txt")).unwrap(),
        "single"
    );
}

#[test]
fn move_removes_the_sources_only_after_the_receiver_confirmed() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "");
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    fs::write(src.path().join("keep-me"), "not sent").unwrap();
    let o = pipe.run(
        "bulkhead-move-to-vm",
        &["personal", "dir", "single.txt"],
        src.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!src.path().join("dir").exists());
    assert!(!src.path().join("single.txt").exists());
    assert!(src.path().join("keep-me").exists());
    assert_eq!(
        fs::read_to_string(home.incoming(SRC).join("dir/sub/deep.txt")).unwrap(),
        "deep"
    );

    // the receiver refuses (limit): the sources stay
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    let before = snapshot(src.path());
    pipe.config("max_entries = 2\n");
    let o = pipe.run("bulkhead-move", &["dir"], src.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("entries in one copy (limit 2"),
        "{}",
        text(&o)
    );
    assert_eq!(snapshot(src.path()), before);

    // refused by policy: exit 126, sources stay
    let refusing = Pipe::refusing();
    let o = refusing.run("bulkhead-move-to-vm", &["personal", "dir"], src.path());
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    assert!(text(&o).contains("refused by policy"), "{}", text(&o));
    assert_eq!(snapshot(src.path()), before);
}

#[test]
fn special_files_and_escaping_symlinks_are_refused_before_sending() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "");
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    nix::unistd::mkfifo(&src.path().join("d/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let o = pipe.run("bulkhead-copy-to-vm", &["personal", "d"], src.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("it is a fifo; only regular files"),
        "{}",
        text(&o)
    );
    assert_eq!(pipe.calls(), "", "nothing was sent");

    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("d/out")).unwrap();
    let o = pipe.run("bulkhead-copy-to-vm", &["personal", "d"], src.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("absolute target"), "{}", text(&o));
    assert_eq!(pipe.calls(), "");
}

#[test]
fn big_copies_show_progress() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "");
    let src = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    fs::write(&big, vec![0x5au8; 40 << 20]).unwrap();
    let o = pipe.run("bulkhead-copy-to-vm", &["personal", "big.bin"], src.path());
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sent 40.0 MiB of 40.0 MiB (100%)"), "{err}");
    assert_eq!(
        fs::metadata(home.incoming(SRC).join("big.bin"))
            .unwrap()
            .len(),
        40 << 20
    );
}

/// A home whose default application for text/plain is `script_body` (run as `edit FILE`).
fn editor_home(script_body: &str) -> Home {
    let home = Home::new();
    let h = home.path();
    fs::create_dir_all(h.join(".local/share/applications")).unwrap();
    fs::create_dir_all(h.join("bin")).unwrap();
    script(&h.join("bin/edit"), script_body);
    fs::write(
        h.join(".config/mimeapps.list"),
        "[Default Applications]\ntext/plain=test-editor.desktop\nx-scheme-handler/https=test-editor.desktop\n",
    )
    .unwrap();
    fs::write(
        h.join(".local/share/applications/test-editor.desktop"),
        format!(
            "[Desktop Entry]\nType=Application\nName=Test editor\nExec={} %f\n",
            h.join("bin/edit").display()
        ),
    )
    .unwrap();
    home
}

#[test]
fn open_in_vm_writes_the_edited_copy_back_atomically() {
    let home = editor_home("echo \"edited in $(basename \"$1\")\" >> \"$1\"");
    let pipe = Pipe::new(home.path(), "");
    let src = tempfile::tempdir().unwrap();
    let doc = src.path().join("notes.txt");
    fs::write(&doc, "original\n").unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o604)).unwrap();
    let ino = fs::metadata(&doc).unwrap().ino();
    let o = pipe.run("bulkhead-open-in-dvm", &["notes.txt"], src.path());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(pipe.calls(), "@dispvm bulkhead.OpenInVM\n");
    assert_eq!(
        fs::read_to_string(&doc).unwrap(),
        "original\nedited in notes.txt\n"
    );
    let m = fs::metadata(&doc).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o604, "mode kept");
    assert_ne!(m.ino(), ino, "replaced by rename");
    let leftovers: Vec<_> = fs::read_dir(src.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
    // the service's private copy is gone
    let tmp_left = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("bulkhead-open-")
        })
        .filter(|e| e.path().join("notes.txt").exists())
        .count();
    assert_eq!(tmp_left, 0);
}

#[test]
fn open_in_vm_keeps_the_originals_mode_exactly() {
    // The disposable's copy gets setuid, setgid, sticky and every exec bit.
    let home = editor_home("chmod 7777 \"$1\"; echo edited >> \"$1\"");
    let pipe = Pipe::new(home.path(), "");
    for mode in [0o640, 0o600, 0o755, 0o444] {
        let src = tempfile::tempdir().unwrap();
        let doc = src.path().join("m.txt");
        fs::write(&doc, "original\n").unwrap();
        fs::set_permissions(&doc, fs::Permissions::from_mode(mode)).unwrap();
        let o = pipe.run("bulkhead-open-in-dvm", &["m.txt"], src.path());
        assert!(o.status.success(), "{mode:o}: {}", text(&o));
        assert_eq!(fs::read_to_string(&doc).unwrap(), "original\nedited\n");
        assert_eq!(
            fs::metadata(&doc).unwrap().mode() & 0o7777,
            mode,
            "mode {mode:o} not kept"
        );
    }
}

#[test]
fn open_in_vm_refuses_an_edited_copy_over_the_callers_limit() {
    let home = editor_home("head -c 4096 /dev/zero | tr '\\0' x >> \"$1\"");
    let pipe = Pipe::new(home.path(), "");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("open-in-vm.toml");
    fs::write(&cfg, "max_edited_bytes = 1024\n").unwrap();
    let src = tempfile::tempdir().unwrap();
    let doc = src.path().join("small.txt");
    fs::write(&doc, "small\n").unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o640)).unwrap();
    let ino = fs::metadata(&doc).unwrap().ino();
    let o = pipe.run_env(
        "bulkhead-open-in-dvm",
        &["small.txt"],
        src.path(),
        &[("BULKHEAD_OPEN_CONFIG", &cfg)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("4102 bytes") && t.contains("max_edited_bytes") && t.contains("unchanged"),
        "{t}"
    );
    assert_eq!(fs::read_to_string(&doc).unwrap(), "small\n");
    let m = fs::metadata(&doc).unwrap();
    assert_eq!((m.ino(), m.mode() & 0o7777), (ino, 0o640));
    let left: Vec<_> = fs::read_dir(src.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "a partial file was left: {left:?}");
    // Under the limit, the same edit is written back.
    fs::write(&cfg, "max_edited_bytes = 8192\n").unwrap();
    let o = pipe.run_env(
        "bulkhead-open-in-dvm",
        &["small.txt"],
        src.path(),
        &[("BULKHEAD_OPEN_CONFIG", &cfg)],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::metadata(&doc).unwrap().len(), 4102);
    // A configuration that does not parse refuses the open instead of guessing.
    fs::write(&cfg, "max_edited = 1\n").unwrap();
    let o = pipe.run_env(
        "bulkhead-open-in-dvm",
        &["small.txt"],
        src.path(),
        &[("BULKHEAD_OPEN_CONFIG", &cfg)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("open-in-vm.toml"), "{}", text(&o));
}

#[test]
fn open_in_vm_leaves_the_original_when_unchanged_or_emptied() {
    for body in [
        "true",
        ": > \"$1\"",
        "rm -f \"$1\"",
        "ln -sf /etc/passwd \"$1\"",
    ] {
        let home = editor_home(body);
        let pipe = Pipe::new(home.path(), "");
        let src = tempfile::tempdir().unwrap();
        let doc = src.path().join("doc.txt");
        fs::write(&doc, "keep\n").unwrap();
        let ino = fs::metadata(&doc).unwrap().ino();
        let o = pipe.run("bulkhead-open-in-vm", &["personal", "doc.txt"], src.path());
        assert!(o.status.success(), "{body}: {}", text(&o));
        assert_eq!(fs::read_to_string(&doc).unwrap(), "keep\n", "{body}");
        assert_eq!(fs::metadata(&doc).unwrap().ino(), ino, "{body}");
    }
}

#[test]
fn open_in_vm_reports_a_missing_application() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "XDG_DATA_DIRS=/nonexistent");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("x.txt"), "x").unwrap();
    let o = pipe.run("bulkhead-open-in-vm", &["personal", "x.txt"], src.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no application for text/plain"),
        "{}",
        text(&o)
    );
    assert_eq!(fs::read_to_string(src.path().join("x.txt")).unwrap(), "x");
}

#[test]
fn open_url_accepts_http_and_https_only() {
    let home = editor_home("echo \"$1\" > \"$HOME/opened\"");
    let pipe = Pipe::new(home.path(), "");
    let cwd = tempfile::tempdir().unwrap();
    let o = pipe.run(
        "bulkhead-open-url",
        &["personal", "https://example.org/a?b"],
        cwd.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::read_to_string(home.path().join("opened")).unwrap(),
        "https://example.org/a?b\n"
    );
    let o = pipe.run(
        "bulkhead-open-url",
        &["https://example.org/dvm"],
        cwd.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        pipe.calls().ends_with("@dispvm bulkhead.OpenURL\n"),
        "{}",
        pipe.calls()
    );

    for bad in ["file:///etc/passwd", "javascript:alert(1)", "--help-all"] {
        fs::remove_file(home.path().join("opened")).ok();
        let o = pipe.run("bulkhead-open-url", &["personal", "--", bad], cwd.path());
        assert_eq!(o.status.code(), Some(1), "{bad}: {}", text(&o));
        assert!(!home.path().join("opened").exists());
    }
    // the service checks again whatever the client did
    for bad in [
        "file:///etc/passwd\n",
        "ftp://example.org/\n",
        "https://a b/\n",
    ] {
        let out = std::process::Command::new(URL_SERVICE)
            .env_clear()
            .env("HOME", home.path())
            .env("BULKHEAD_REMOTE_DOMAIN", SRC)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(bad.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(!home.path().join("opened").exists(), "{bad}");
    }
}

#[test]
fn a_receiver_refusing_mid_stream_gives_its_reason_to_the_sender() {
    let home = Home::new();
    let pipe = Pipe::new(home.path(), "");
    pipe.config("max_file_bytes = 1000\n");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("small"), "fits").unwrap();
    // far more than a pipe buffer: the sender is still writing when the receiver quits
    fs::write(src.path().join("z-big"), vec![1u8; 16 << 20]).unwrap();
    let o = pipe.run(
        "bulkhead-move-to-vm",
        &["personal", "small", "z-big"],
        src.path(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("bytes in one file (limit 1000, got 16777216)"),
        "{}",
        text(&o)
    );
    assert!(src.path().join("z-big").exists() && src.path().join("small").exists());
    let inc = home.incoming(SRC);
    assert_eq!(fs::read_to_string(inc.join("small")).unwrap(), "fits");
    assert!(!inc.join("z-big").exists());
}
