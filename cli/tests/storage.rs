//! Each domain's storage is its own, and nothing inside a domain tells it about the host
//! (issue 13, items 3 and 4), on real sandbox domains of the debian-12 template:
//! - a domain that fills its private volume (`private_size`) or its root's writable layer
//!   gets ENOSPC there, while another domain and dom0 keep writing;
//! - `/proc/self/mountinfo` inside a domain names none of the host's paths (state, runtime
//!   and template dirs, guest tools);
//! - a setuid file made by a domain's root never reaches the host's file system as one.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use bulkhead_testkit::{sandbox_template_cache, DomaindOptions, TestBus, TestCli, TestDomaind};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Regular files with a setuid or setgid bit below `dir` (not following symlinks).
fn setid_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            found.extend(setid_files(&e.path()));
        } else if m.is_file() && m.mode() & 0o6000 != 0 {
            found.push(e.path().display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_domain_fills_only_itself_and_sees_no_host_path() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache.clone()))
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    cli.ok(&["template", "build", "debian-12"]);
    cli.ok(&[
        "create",
        "-t",
        "debian-12",
        "-l",
        "red",
        "-P",
        "private_size=128",
        "filler",
    ]);
    cli.ok(&["create", "-t", "debian-12", "-l", "green", "other"]);
    let prop = cli.ok(&["prefs", "filler", "private_size"]);
    assert_eq!(prop.trim(), "128");

    // The private volume: 128 MiB, whatever the host has free.
    let out = cli.sh(
        "filler",
        "dd if=/dev/zero of=$HOME/fill bs=1M count=160 2>&1; echo status=$?",
    );
    let t = text(&out);
    assert!(t.contains("No space left on device"), "{t}");
    assert!(!t.contains("status=0"), "{t}");
    // The root's writable layer: half the domain's memory (400 MiB by default).
    let out = cli.sh(
        "filler",
        "dd if=/dev/zero of=/var/tmp/fill bs=1M count=300 2>&1; echo status=$?",
    );
    let t = text(&out);
    assert!(t.contains("No space left on device"), "{t}");
    assert!(!t.contains("status=0"), "{t}");

    // The other domain and dom0 keep writing.
    let out = cli.sh(
        "other",
        "dd if=/dev/zero of=$HOME/ok bs=1M count=16 2>&1 && dd if=/dev/zero of=/var/tmp/ok bs=1M count=16 2>&1 && echo WROTE",
    );
    assert!(text(&out).contains("WROTE"), "{}", text(&out));
    let host_file = daemon.paths.state_dir.join("host-write-check");
    std::fs::write(&host_file, vec![7u8; 16 << 20]).expect("dom0 writes");
    std::fs::remove_file(&host_file).expect("rm");
    // And the full domain writes again once it has made room.
    let out = cli.sh(
        "filler",
        "rm $HOME/fill /var/tmp/fill && echo again > $HOME/after && cat $HOME/after",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "again\n",
        "{}",
        text(&out)
    );

    // Nothing in the domain's mount table names a host path.
    let out = cli.sh("other", "cat /proc/self/mountinfo");
    let mountinfo = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(mountinfo.contains(" /home "), "{mountinfo}");
    let host_paths = [
        daemon.paths.state_dir.clone(),
        daemon.paths.runtime_dir.clone(),
        daemon.paths.config_dir.clone(),
        daemon.guest_tools_dir.clone(),
        cache.clone(),
    ];
    for p in &host_paths {
        let p = p.display().to_string();
        assert!(
            !mountinfo.contains(&p),
            "{p} in the domain's mountinfo:\n{mountinfo}"
        );
    }
    for word in [
        "/var/lib/bulkhead",
        "/run/bulkhead/",
        "/usr/local/lib/bulkhead",
        "/tmp/",
    ] {
        assert!(
            !mountinfo.contains(word),
            "{word} in the domain's mountinfo:\n{mountinfo}"
        );
    }

    // A setuid-root file made in the domain stays a file inside its volume image.
    let out = cli.run(&[
        "run",
        "-u",
        "root",
        "filler",
        "--",
        "sh",
        "-c",
        "cp /bin/true /home/suid && chmod 6755 /home/suid && stat -c %a /home/suid",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "6755\n",
        "{}",
        text(&out)
    );
    cli.ok(&["shutdown", "--timeout", "20", "filler"]);
    let found = setid_files(&daemon.paths.state_dir);
    assert!(
        found.is_empty(),
        "setuid/setgid files on the host: {found:?}"
    );
    let image = daemon
        .paths
        .state_dir
        .join("domains/filler")
        .join(bulkhead_domain::PRIVATE_IMAGE_NAME);
    let mode = std::fs::metadata(&image)
        .expect("private volume image")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // still there for the domain itself
    let out = cli.run(&[
        "run",
        "-u",
        "root",
        "filler",
        "--",
        "stat",
        "-c",
        "%a",
        "/home/suid",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "6755\n",
        "{}",
        text(&out)
    );
    // and a volume only grows
    let out = cli.run(&["prefs", "filler", "private_size", "64"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("only grows"), "{}", text(&out));
}
