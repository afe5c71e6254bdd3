//! The services of issue 4 between real sandbox domains, through domaind and the policy:
//! a file copied from one domain lands in the other's ~/Incoming/<source>/ when policy
//! allows, the copy exits 126 and writes nothing when it denies; `bulkhead-open-in-dvm`
//! opens a file in a new disposable whose default application edits it, the edited copy
//! comes back, and the disposable is gone afterwards.

// EDITOR_SETUP: the disposable template's default application for text/plain, a script
// that edits the file it is given (installed in the template's private volume).
use bulkhead_testkit::{
    sandbox_template_cache, DomaindOptions, TestBus, TestCli, TestDomaind, EDITOR_SETUP,
};

const POLICY: &str = "\
bulkhead.Filecopy  *  work  personal  allow
bulkhead.Filecopy  *  @anyvm  @anyvm  deny
bulkhead.OpenInVM  *  @anyvm  @dispvm  allow
bulkhead.OpenInVM  *  @anyvm  @anyvm  deny
";

#[tokio::test(flavor = "multi_thread")]
async fn copy_and_open_in_disposable_between_sandbox_domains() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache))
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    // the policy lives in the test domaind's <config>/policy.d (reloaded on change)
    let policy_dir = daemon.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("30-test.policy"), POLICY).expect("policy");
    cli.ok(&["template", "build", "debian-12"]);

    cli.ok(&[
        "create",
        "-C",
        "disposable-template",
        "-t",
        "debian-12",
        "-l",
        "red",
        "dvm",
    ]);
    let out = cli.sh("dvm", EDITOR_SETUP);
    assert!(out.status.success());
    cli.ok(&["shutdown", "--timeout", "10", "dvm"]);
    cli.ok(&[
        "create",
        "-t",
        "debian-12",
        "-l",
        "blue",
        "-P",
        "default_dispvm=dvm",
        "work",
    ]);
    for d in ["personal", "other"] {
        cli.ok(&["create", "-t", "debian-12", "-l", "green", d]);
    }

    // allowed: a tree lands in personal's ~/Incoming/work/
    let out = cli.sh(
        "work",
        "mkdir -p d/sub && echo hello > d/sub/f && ln -s ../t d/sub/up && echo top > t.txt && \
         /usr/lib/bulkhead/bulkhead-copy-to-vm personal d t.txt",
    );
    assert!(out.status.success());
    let out = cli.sh(
        "personal",
        "cat ~/Incoming/work/d/sub/f ~/Incoming/work/t.txt; readlink ~/Incoming/work/d/sub/up",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\ntop\n../t\n");
    // the incoming folder is noexec,nosuid,nodev in the receiving domain
    let out = cli.sh(
        "personal",
        "grep ' /home/user/Incoming ' /proc/self/mountinfo",
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(line.contains(flag), "{flag} missing: {line}");
    }

    // denied: exit 126, nothing written (and the target was not even started)
    let out = cli.sh("work", "/usr/lib/bulkhead/bulkhead-copy-to-vm other t.txt");
    assert_eq!(out.status.code(), Some(126));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "a clear message"
    );
    let out = cli.sh("other", "test ! -e ~/Incoming/work");
    assert!(out.status.success(), "something was written");
    // the receiver's files belong to its user (uid 1000 in the domain)
    let out = cli.sh("personal", "stat -c %u ~/Incoming/work/t.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n");

    // a move removes the source after the receiver confirmed
    let out = cli.sh(
        "work",
        "echo moved > m.txt && /usr/lib/bulkhead/bulkhead-move-to-vm personal m.txt && test ! -e m.txt",
    );
    assert!(out.status.success());
    let out = cli.sh("personal", "cat ~/Incoming/work/m.txt");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "moved\n");

    // open in a new disposable: its application edits the file, the edit comes back
    let before: Vec<String> = domain_names(&cli);
    let out = cli.sh(
        "work",
        "printf 'original\\n' > doc.txt && /usr/lib/bulkhead/bulkhead-open-in-dvm doc.txt && cat doc.txt",
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("original\nedited in disp"), "{text}");
    // domaind removes the disposable once the call has ended (bounded wait)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let after = domain_names(&cli);
        if after == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the disposable is still there: {after:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // open in a named domain is denied by this policy: 126 and the file untouched
    let out = cli.sh(
        "work",
        "/usr/lib/bulkhead/bulkhead-open-in-vm personal doc.txt; s=$?; cat doc.txt; exit $s",
    );
    assert_eq!(out.status.code(), Some(126));
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);

    for d in ["work", "personal"] {
        cli.ok(&["shutdown", "--timeout", "10", d]);
    }
}

fn domain_names(cli: &TestCli<'_>) -> Vec<String> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(&["ls", "--json"])).expect("ls --json is JSON");
    let mut v: Vec<String> = rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}
