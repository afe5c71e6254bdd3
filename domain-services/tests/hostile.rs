//! The real receiver (`bulkhead-service-filecopy`) against hostile streams. Every case must
//! end with a clear `error` answer and exit 1, nothing written outside
//! `~/Incoming/<source>/`, nothing of the receiver's changed, and no partial file.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bulkhead_services::filecopy::{EntryKind, StreamWriter, HEADER_LEN};
use common::*;

const SRC: &str = "work";

fn stream(build: impl FnOnce(&mut StreamWriter<&mut Vec<u8>>)) -> Vec<u8> {
    let mut v = Vec::new();
    let mut w = StreamWriter::new(&mut v);
    w.magic().unwrap();
    build(&mut w);
    v
}

fn file(w: &mut StreamWriter<&mut Vec<u8>>, path: &str, data: &[u8]) {
    w.header(
        EntryKind::File,
        0o644,
        (1_600_000_000, 0),
        data.len() as u64,
        path.as_bytes(),
    )
    .unwrap();
    w.data(data).unwrap();
}

fn dir(w: &mut StreamWriter<&mut Vec<u8>>, path: &str) {
    w.header(EntryKind::Dir, 0o755, (0, 0), 0, path.as_bytes())
        .unwrap();
}

fn link(w: &mut StreamWriter<&mut Vec<u8>>, path: &str, target: &[u8]) {
    w.header(
        EntryKind::Symlink,
        0o777,
        (0, 0),
        target.len() as u64,
        path.as_bytes(),
    )
    .unwrap();
    w.data(target).unwrap();
}

/// Runs a hostile stream; checks the refusal, that nothing outside the incoming folder
/// changed, and returns the answer and what the incoming folder holds.
fn refused(home: &Home, bytes: &[u8], want: &str) -> std::collections::BTreeMap<String, String> {
    let before = home.outside(SRC);
    let out = receive(home.path(), SRC, bytes, None);
    let answer = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "answer: {answer}");
    assert!(answer.starts_with("error "), "{answer}");
    assert!(answer.contains(want), "wanted {want:?} in {answer}");
    assert_eq!(answer.matches('\n').count(), 1, "one line: {answer:?}");
    assert_eq!(
        home.outside(SRC),
        before,
        "something outside ~/Incoming/{SRC} changed"
    );
    snapshot(&home.incoming(SRC))
}

fn ok(home: &Home, bytes: &[u8]) -> String {
    let before = home.outside(SRC);
    let out = receive(home.path(), SRC, bytes, None);
    let answer = stdout(&out);
    assert!(
        out.status.success(),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(home.outside(SRC), before);
    answer
}

#[test]
fn a_good_tree_lands_in_incoming() {
    let home = Home::new();
    let s = stream(|w| {
        dir(w, "top");
        file(w, "top/a.txt", b"hello");
        dir(w, "top/sub");
        link(w, "top/sub/up", b"../a.txt");
        link(w, "top/sub/dir", b"..");
        file(w, "top/sub/empty", b"");
        w.header(EntryKind::File, 0o4755, (1_600_000_000, 5), 1, b"top/suid")
            .unwrap();
        w.data(b"x").unwrap();
        file(w, "single", b"one");
        w.end().unwrap();
    });
    let answer = ok(&home, &s);
    assert_eq!(answer, "ok files=4 dirs=2 symlinks=2 bytes=9\n");
    let inc = home.incoming(SRC);
    assert_eq!(fs::read(inc.join("top/a.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(inc.join("top/sub/up")).unwrap(), b"hello");
    assert_eq!(
        fs::read_link(inc.join("top/sub/dir")).unwrap(),
        Path::new("..")
    );
    let m = fs::metadata(inc.join("top/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "setuid bit stripped");
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(inc.join("top/a.txt")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(fs::read(inc.join("single")).unwrap(), b"one");
}

#[test]
fn path_traversal_absolute_and_dotdot_names_are_refused() {
    for (name, want) in [
        ("../escaped", "`.` and `..`"),
        ("../../../../tmp/escaped", "`.` and `..`"),
        ("/tmp/escaped-abs", "empty name"),
        ("a/../../escaped", "`.` and `..`"),
        (".", "`.` and `..`"),
        ("", "empty name"),
        ("a//b", "empty name"),
        ("trailing/", "empty name"),
    ] {
        let home = Home::new();
        let s = stream(|w| {
            dir(w, "a");
            file(w, name, b"payload");
            w.end().unwrap();
        });
        let inc = refused(&home, &s, want);
        assert_eq!(inc.keys().collect::<Vec<_>>(), ["a"], "{name}: {inc:?}");
        assert!(!home.path().join("escaped").exists());
        assert!(!home.path().join("Incoming/escaped").exists());
    }
}

#[test]
fn symlinks_pointing_out_are_refused_and_never_written_through() {
    for (path, target, want) in [
        ("t/l", &b"/etc/passwd"[..], "absolute target"),
        ("t/l", b"../..", "climbs 2 levels"),
        ("t/d/l", b"../../../secret", "climbs 3 levels"),
        ("t/l", b"d/../../x", "`..` after a name"),
        ("l", b"t", "top of a copy"),
        ("t/l", b"", "empty target"),
    ] {
        let home = Home::new();
        let s = stream(|w| {
            dir(w, "t");
            dir(w, "t/d");
            link(w, path, target);
            w.end().unwrap();
        });
        let inc = refused(&home, &s, want);
        assert!(
            !inc.keys().any(|k| k.ends_with("/l") || k == "l"),
            "{inc:?}"
        );
    }
    // a link sent earlier cannot be used as a directory afterwards
    let home = Home::new();
    let s = stream(|w| {
        dir(w, "t");
        dir(w, "t/d");
        link(w, "t/d/l", b"..");
        file(w, "t/d/l/x", b"through the link");
        w.end().unwrap();
    });
    refused(&home, &s, "not sent before it");
    assert!(!home.incoming(SRC).join("t/x").exists());
}

#[test]
fn a_symlink_planted_in_the_incoming_folder_is_not_followed() {
    let home = Home::new();
    let inc = home.incoming(SRC);
    fs::create_dir_all(&inc).unwrap();
    std::os::unix::fs::symlink(home.path().join("secret"), inc.join("report.txt")).unwrap();
    std::os::unix::fs::symlink(home.path(), inc.join("dir")).unwrap();
    let s = stream(|w| {
        file(w, "report.txt", b"overwrite?");
        dir(w, "dir");
        file(w, "dir/secret", b"overwrite?");
        w.end().unwrap();
    });
    let answer = ok(&home, &s);
    assert!(answer.starts_with("ok files=2 dirs=1"), "{answer}");
    assert_eq!(fs::read(inc.join("report (1).txt")).unwrap(), b"overwrite?");
    assert_eq!(fs::read(inc.join("dir (1)/secret")).unwrap(), b"overwrite?");
    assert_eq!(
        fs::read_to_string(home.path().join("secret")).unwrap(),
        "the receiver's own file\n"
    );
}

#[test]
fn an_incoming_folder_that_is_a_symlink_is_refused() {
    let home = Home::new();
    std::os::unix::fs::symlink(home.path().join(".config"), home.incoming(SRC)).unwrap();
    let s = stream(|w| {
        file(w, "settings", b"evil");
        w.end().unwrap();
    });
    let out = receive(home.path(), SRC, &s, None);
    let answer = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(answer.contains("not a directory (a symlink?)"), "{answer}");
    assert_eq!(
        fs::read_to_string(home.path().join(".config/settings")).unwrap(),
        "x=1\n"
    );
}

#[test]
fn hard_links_devices_and_unknown_kinds_do_not_exist_in_the_format() {
    for kind in [0u8.wrapping_add(4), 5, 6, 7, 255] {
        let home = Home::new();
        let mut s = stream(|w| file(w, "ok", b"fine"));
        let mut h = [0u8; HEADER_LEN];
        h[0] = kind;
        h[25] = 3;
        s.extend_from_slice(&h);
        s.extend_from_slice(b"dev");
        let inc = refused(&home, &s, &format!("unknown entry kind {kind}"));
        assert_eq!(inc.keys().collect::<Vec<_>>(), ["ok"]);
        assert!(refused_message_counts(&home, &s).contains("1 entries received completely"));
    }
}

fn refused_message_counts(home: &Home, s: &[u8]) -> String {
    // run again into a fresh incoming dir to read the message
    let _ = fs::remove_dir_all(home.incoming(SRC));
    stdout(&receive(home.path(), SRC, s, None))
}

#[test]
fn control_characters_and_invalid_utf8_in_names_are_refused() {
    for (name, want) in [
        (&b"new\nline"[..], "control character U+000A"),
        (b"esc\x1b[31m", "control character U+001B"),
        (b"nul\0byte", "control character U+0000"),
        (b"bad\xff\xfe", "not valid UTF-8"),
        ("rtl\u{202e}txt.exe".as_bytes(), "direction control U+202E"),
        (&[b'n'; 256], "at most 255"),
    ] {
        let home = Home::new();
        let s = stream(|w| {
            w.header(EntryKind::File, 0o644, (0, 0), 1, name).unwrap();
            w.data(b"x").unwrap();
            w.end().unwrap();
        });
        let inc = refused(&home, &s, want);
        assert!(inc.is_empty(), "{inc:?}");
    }
    // the answer itself carries no control characters
    let home = Home::new();
    let s = stream(|w| {
        w.header(EntryKind::File, 0o644, (0, 0), 0, b"a\x1b]0;pwned\x07")
            .unwrap();
    });
    let answer = stdout(&receive(home.path(), SRC, &s, None));
    assert!(
        !answer.trim_end().chars().any(|c| c.is_control()),
        "{answer:?}"
    );
}

#[test]
fn truncated_streams_leave_no_partial_file() {
    let home = Home::new();
    let mut s = stream(|w| {
        file(w, "complete", b"all of it");
        w.header(EntryKind::File, 0o644, (0, 0), 1 << 20, b"partial")
            .unwrap();
    });
    s.extend_from_slice(&[7u8; 1000]);
    let inc = refused(&home, &s, "ended in the middle of the content of 'partial'");
    assert_eq!(inc.keys().collect::<Vec<_>>(), ["complete"]);
    let answer = refused_message_counts(&home, &s);
    assert!(answer.contains("1 entries received completely"), "{answer}");

    for (cut, want) in [
        (3usize, "stream header"),
        (8 + 10, "an entry header"),
        (8 + HEADER_LEN + 2, "an entry name"),
    ] {
        let home = Home::new();
        let full = stream(|w| {
            file(w, "name", b"data");
            w.end().unwrap();
        });
        let inc = refused(&home, &full[..cut], want);
        assert!(inc.is_empty());
    }
    // no end marker
    let home = Home::new();
    let s = stream(|w| file(w, "f", b"data"));
    let inc = refused(&home, &s, "an entry header");
    assert_eq!(inc.keys().collect::<Vec<_>>(), ["f"]);
}

#[test]
fn a_sender_lying_about_lengths_is_caught() {
    // more data than declared: the excess is read as a header and refused
    let home = Home::new();
    let mut s = stream(|w| {
        w.header(EntryKind::File, 0o644, (0, 0), 4, b"short")
            .unwrap();
    });
    s.extend_from_slice(b"1234this is more than four bytes, pretending to be headers......");
    refused(&home, &s, "unknown entry kind");
    // a name length beyond the data
    let home = Home::new();
    let mut s = stream(|_| {});
    let mut h = [0u8; HEADER_LEN];
    h[0] = 2;
    h[25..27].copy_from_slice(&4000u16.to_le_bytes());
    s.extend_from_slice(&h);
    s.extend_from_slice(b"abc");
    refused(&home, &s, "an entry name");
    // a directory claiming content
    let home = Home::new();
    let s = stream(|w| {
        w.header(EntryKind::Dir, 0o755, (0, 0), 100, b"d").unwrap();
    });
    refused(&home, &s, "with size 100");
    // a symlink target longer than PATH_MAX
    let home = Home::new();
    let s = stream(|w| {
        dir(w, "d");
        w.header(EntryKind::Symlink, 0o777, (0, 0), 1 << 40, b"d/l")
            .unwrap();
    });
    refused(&home, &s, "at most 4095");
    // trailing bytes after the end marker
    let home = Home::new();
    let s = stream(|w| {
        file(w, "f", b"x");
        w.end().unwrap();
        w.data(b"more").unwrap();
    });
    refused(&home, &s, "data after the end marker");
}

#[test]
fn nothing_is_overwritten() {
    let home = Home::new();
    let inc = home.incoming(SRC);
    fs::create_dir_all(inc.join("photos")).unwrap();
    fs::write(inc.join("report.txt"), "earlier copy").unwrap();
    fs::write(inc.join("photos/a.jpg"), "earlier photo").unwrap();
    let s = stream(|w| {
        file(w, "report.txt", b"new");
        file(w, "report.txt", b"newer");
        dir(w, "photos");
        file(w, "photos/a.jpg", b"new photo");
        w.end().unwrap();
    });
    let answer = ok(&home, &s);
    assert!(answer.starts_with("ok files=3 dirs=1"), "{answer}");
    assert_eq!(
        fs::read_to_string(inc.join("report.txt")).unwrap(),
        "earlier copy"
    );
    assert_eq!(
        fs::read_to_string(inc.join("report (1).txt")).unwrap(),
        "new"
    );
    assert_eq!(
        fs::read_to_string(inc.join("report (2).txt")).unwrap(),
        "newer"
    );
    assert_eq!(
        fs::read_to_string(inc.join("photos/a.jpg")).unwrap(),
        "earlier photo"
    );
    assert_eq!(
        fs::read_to_string(inc.join("photos (1)/a.jpg")).unwrap(),
        "new photo"
    );

    // a duplicate below a new directory is an error; the first copy stays
    let home = Home::new();
    let s = stream(|w| {
        dir(w, "d");
        file(w, "d/x", b"first");
        file(w, "d/x", b"second");
        w.end().unwrap();
    });
    refused(&home, &s, "already exists (duplicate entry");
    assert_eq!(
        fs::read_to_string(home.incoming(SRC).join("d/x")).unwrap(),
        "first"
    );
}

#[test]
fn limits_from_the_config_file_are_enforced() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("filecopy.toml");
    fs::write(
        &cfg,
        "max_entries = 3\nmax_total_bytes = 100\nmax_file_bytes = 60\nmax_depth = 3\nmax_path_bytes = 20\n",
    )
    .unwrap();
    let run = |s: &[u8], want: &str| {
        let home = Home::new();
        let before = home.outside(SRC);
        let out = receive(home.path(), SRC, s, Some(&cfg));
        let answer = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{answer}");
        assert!(answer.contains(want), "wanted {want:?}: {answer}");
        assert_eq!(home.outside(SRC), before);
    };
    run(
        &stream(|w| {
            for n in ["a", "b", "c", "d"] {
                file(w, n, b"");
            }
        }),
        "entries in one copy (limit 3, got 4)",
    );
    run(
        &stream(|w| file(w, "big", &[0u8; 61])),
        "bytes in one file (limit 60, got 61)",
    );
    run(
        &stream(|w| {
            file(w, "a", &[0u8; 60]);
            file(w, "b", &[0u8; 41]);
        }),
        "bytes in one copy (limit 100, got 101)",
    );
    run(
        &stream(|w| {
            dir(w, "a");
            dir(w, "a/b");
            dir(w, "a/b/c/d");
        }),
        "components in a path (limit 3, got 4)",
    );
    run(
        &stream(|w| file(w, "a-name-longer-than-20", b"")),
        "bytes in a path (limit 20, got 21)",
    );
    // a broken config refuses the copy rather than running without limits
    fs::write(&cfg, "max_entries = \"many\"\n").unwrap();
    run(&stream(|w| w.end().unwrap()), "filecopy.toml");
}

#[test]
fn a_bad_source_name_is_refused_before_anything_is_created() {
    for src in ["../evil", "", "a/b", "x\ny", ".hidden"] {
        let home = Home::new();
        let before = snapshot(home.path());
        let s = stream(|w| w.end().unwrap());
        let out = receive(home.path(), src, &s, None);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stdout(&out).contains("refusing source domain name"),
            "{}",
            stdout(&out)
        );
        assert_eq!(snapshot(home.path()), before);
    }
}

/// A full disk: a small tmpfs mounted by the test (needs root; skipped otherwise).
#[test]
fn a_full_disk_ends_with_an_error_and_no_partial_file() {
    if !nix::unistd::Uid::effective().is_root() {
        bulkhead_test_skip::skip("mounting a tmpfs needs root");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    if let Err(e) = nix::mount::mount(
        Some("tmpfs"),
        mnt.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("size=1m,mode=0755"),
    ) {
        bulkhead_test_skip::skip(format_args!("cannot mount a tmpfs: {e}"));
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(mnt.path());
    let home = mnt.path();
    fs::write(home.join("secret"), "mine").unwrap();
    let s = stream(|w| {
        file(w, "small", b"fits");
        file(w, "huge", &vec![1u8; 2 << 20]);
        w.end().unwrap();
    });
    let out = receive(home, SRC, &s, None);
    let answer = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{answer}");
    assert!(answer.contains("no space left"), "{answer}");
    assert!(
        answer.contains("'huge'") || answer.contains("huge"),
        "{answer}"
    );
    let inc = home.join("Incoming").join(SRC);
    assert_eq!(fs::read(inc.join("small")).unwrap(), b"fits");
    assert!(!inc.join("huge").exists(), "partial file left");
    assert_eq!(fs::read_to_string(home.join("secret")).unwrap(), "mine");
    assert_eq!(
        fs::metadata(&inc).unwrap().permissions().mode() & 0o777,
        0o700
    );
}
