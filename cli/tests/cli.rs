//! The `bulkhead` binary against a real domaind on a private bus: what a person or a script
//! sees (output, JSON, exit codes), not just what the D-Bus API returns.

use bulkhead_testkit::{sandbox_template_cache, DomaindOptions, TestBus, TestCli, TestDomaind};
use std::io::Write;
use std::process::{Command, Stdio};

fn json_names(json: &str) -> Vec<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).expect("ls --json is JSON");
    rows.iter()
        .map(|r| r["name"].as_str().expect("name is a string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn manage_domains_with_exit_codes_scripts_can_rely_on() {
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);

    assert_eq!(json_names(&cli.ok(&["ls", "--json"])), Vec::<String>::new());

    // A standalone needs no template, so this runs without one.
    cli.ok(&["create", "--class", "standalone", "--label", "blue", "work"]);
    cli.ok(&[
        "create",
        "-C",
        "standalone",
        "-l",
        "green",
        "-P",
        "memory=800",
        "-P",
        "vcpus=1",
        "home",
    ]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(&["ls", "--json"])).expect("JSON");
    assert_eq!(rows.len(), 2);
    let home = rows
        .iter()
        .find(|r| r["name"] == "home")
        .expect("home listed");
    assert_eq!(home["label"], "green");
    assert_eq!(home["memory_mib"], 800);
    assert_eq!(home["vcpus"], 1);
    assert_eq!(home["state"], "halted");
    assert_eq!(home["class"], "standalone");

    let table = cli.ok(&["ls"]);
    assert!(table.starts_with("NAME"), "a header line: {table}");
    assert!(table.contains("work") && table.contains("blue") && table.contains("800 MiB"));

    // prefs: one, all, set, JSON.
    assert_eq!(cli.ok(&["prefs", "work", "label"]).trim(), "blue");
    cli.ok(&["prefs", "work", "label", "purple"]);
    assert_eq!(cli.ok(&["prefs", "work", "label"]).trim(), "purple");
    let all: serde_json::Value =
        serde_json::from_str(&cli.ok(&["prefs", "--json", "work"])).expect("JSON");
    assert_eq!(all["label"], "purple");
    assert!(cli.ok(&["prefs", "work"]).contains("memory"));

    // Errors: the documented codes, and a message naming what was wrong.
    cli.fails(
        &["create", "-C", "standalone", "-l", "red", "9lives"],
        5,
        "9lives",
    );
    cli.fails(
        &["create", "-C", "standalone", "-l", "red", "x-dm"],
        5,
        "x-dm",
    );
    cli.fails(
        &["create", "-C", "standalone", "-l", "pink", "ok"],
        5,
        "pink",
    );
    cli.fails(
        &["create", "-C", "standalone", "-l", "red", "work"],
        8,
        "work",
    );
    cli.fails(
        &["create", "-C", "app", "-l", "red", "needs-template"],
        5,
        "template",
    );
    cli.fails(&["prefs", "work", "memory", "lots"], 5, "memory");
    cli.fails(&["prefs", "work", "colour"], 5, "colour");
    cli.fails(&["prefs", "nosuch"], 3, "nosuch");
    cli.fails(&["start", "nosuch"], 3, "nosuch");
    cli.fails(&["rm", "nosuch"], 3, "nosuch");
    cli.fails(
        &[
            "create",
            "-C",
            "standalone",
            "-l",
            "red",
            "-P",
            "novalue",
            "x",
        ],
        5,
        "KEY=VALUE",
    );
    // `run` reports its own failures as 125 so they never look like the command's status.
    cli.fails(&["run", "nosuch", "--", "true"], 125, "nosuch");
    // Usage errors are clap's 2.
    cli.fails(&["create"], 2, "Usage");

    cli.ok(&["clone", "work", "work2"]);
    assert_eq!(cli.ok(&["prefs", "work2", "label"]).trim(), "purple");
    cli.ok(&["rm", "work2", "home"]);
    assert_eq!(
        json_names(&cli.ok(&["ls", "--json"])),
        vec!["work".to_string()]
    );
}

#[test]
fn unreachable_domaind_is_exit_code_6() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["ls"])
        .env("BULKHEAD_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BULKHEAD_BUS_ADDRESS"));
}

/// The README's promise: a disposable made from the Debian 12 template prints Debian's
/// release file, exit statuses and stdin pass through, and the disposable is gone after.
#[tokio::test(flavor = "multi_thread")]
async fn run_in_a_disposable_from_the_debian_template() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache))
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);

    // The template is cached, so this registers it without rebuilding; progress goes to stderr.
    let out = cli.run(&["template", "build", "debian-12"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("template debian-12"));

    cli.ok(&[
        "create",
        "-C",
        "disposable-template",
        "-t",
        "debian-12",
        "-l",
        "red",
        "debian-12-dvm",
    ]);
    let release = cli.ok(&[
        "run",
        "--dispvm",
        "debian-12-dvm",
        "--",
        "cat",
        "/etc/os-release",
    ]);
    assert!(release.contains("VERSION_ID=\"12\""), "{release}");
    assert!(release.contains("Debian GNU/Linux"), "{release}");

    let out = cli.run(&[
        "run",
        "--dispvm",
        "debian-12-dvm",
        "--",
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");

    // stdin reaches the command; the default user is `user`, not root.
    let mut child = cli
        .command(&[
            "run",
            "--dispvm",
            "debian-12-dvm",
            "--",
            "sh",
            "-c",
            "id -un; cat",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through the pipe\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "user\nthrough the pipe\n"
    );

    // On a terminal, escape sequences from the domain are defused (`script` gives us a pty).
    let on_tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} run --dispvm debian-12-dvm -- printf '\\033]0;owned\\007hi\\n'",
            env!("CARGO_BIN_EXE_bulkhead")
        ))
        .arg("/dev/null")
        .env("BULKHEAD_BUS_ADDRESS", daemon.bus_address())
        .stdin(Stdio::null())
        .output()
        .expect("script (bsdutils) runs");
    let seen = String::from_utf8_lossy(&on_tty.stdout);
    assert!(on_tty.status.success(), "{seen}");
    assert!(
        !seen.contains('\u{1b}') && !seen.contains('\u{7}'),
        "raw escapes reached the tty: {seen:?}"
    );
    assert!(seen.contains("_]0;owned_hi"), "{seen:?}");

    // A persistent domain: start shows progress, run, pause, shutdown.
    cli.ok(&[
        "create",
        "-C",
        "app",
        "-t",
        "debian-12",
        "-l",
        "blue",
        "work",
    ]);
    let out = cli.run(&["start", "work"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("start work"));
    assert_eq!(
        cli.ok(&["run", "-u", "root", "work", "--", "id", "-u"])
            .trim(),
        "0"
    );
    // Service calls from dom0: `bulkhead run --service`, through the policy (source dom0).
    {
        use std::os::unix::fs::PermissionsExt;
        let rpc = daemon.guest_tools_dir.join("rpc");
        std::fs::create_dir_all(&rpc).expect("rpc dir");
        let svc = rpc.join("test.Echo");
        std::fs::write(
            &svc,
            "#!/bin/sh\nprintf '%s %s ' \"$BULKHEAD_REMOTE_DOMAIN\" \"$1\"; cat; echo err >&2; exit 3\n",
        )
        .expect("service");
        std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let policy = daemon.paths.config_dir.join("policy.d");
        std::fs::create_dir_all(&policy).expect("policy dir");
        std::fs::write(
            policy.join("30-cli.policy"),
            "test.Echo     +no  @adminvm  @anyvm  deny\n\
             test.Echo     *    @adminvm  work    allow\n\
             test.Missing  *    @adminvm  work    allow\n",
        )
        .expect("policy");
        let mut child = cli
            .command(&["run", "--service", "work", "test.Echo+a.b"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"in")
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "dom0 a.b in");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        cli.fails(
            &["run", "--service", "--", "work", "test.Echo+no"],
            126,
            "refused",
        );
        cli.fails(
            &["run", "--service", "work", "test.Nothing"],
            126,
            "no matching rule",
        );
        cli.fails(
            &["run", "--service", "work", "test.Missing"],
            125,
            "test.Missing",
        );
        cli.fails(
            &["run", "--service", "work", "bad/name"],
            125,
            "invalid call",
        );
        cli.fails(&["run", "--service", "work"], 125, "TARGET and SERVICE");
    }

    // The log is one command away (through a descriptor domaind opens: logs are root-only).
    let log = cli.ok(&["log", "work"]);
    assert!(log.contains("bulkhead-init"), "the init's own lines: {log}");
    cli.fails(&["log", "nosuch"], 3, "nosuch");
    cli.fails(&["rm", "work"], 4, "work");
    cli.ok(&["pause", "work"]);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(&["ls", "--json"])).expect("JSON");
    let work = rows.iter().find(|r| r["name"] == "work").expect("listed");
    assert_eq!(work["state"], "paused");
    cli.ok(&["unpause", "work"]);
    cli.ok(&["shutdown", "--timeout", "10", "work"]);

    // No disposable is left behind.
    let names = json_names(&cli.ok(&["ls", "--json"]));
    assert!(
        !names.iter().any(|n| n.starts_with("disp")),
        "disposables left: {names:?}"
    );
}

/// `bulkhead policy check` lints without domaind: the shipped defaults pass, a broken file is
/// reported as file:line with exit code 5 (a broken policy denies every call).
#[test]
fn policy_check_reports_errors_at_file_and_line() {
    let bulkhead = env!("CARGO_BIN_EXE_bulkhead");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = Command::new(bulkhead)
        .args(["policy", "check", "--dir"])
        .arg(&shipped)
        .env("BULKHEAD_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("30-mine.policy"),
        "bulkhead.Filecopy * work home ask\n\nbulkhead.Filecopy * work\n",
    )
    .expect("write");
    let out = Command::new(bulkhead)
        .args(["policy", "check", "--dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("{}:3: ", dir.path().join("30-mine.policy").display());
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn firewall_rules_are_listed_added_removed_and_a_broken_file_is_explained() {
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::default())
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    cli.ok(&["create", "-C", "standalone", "-l", "red", "fw"]);
    assert!(cli.ok(&["firewall", "fw", "list"]).contains("no rules"));
    cli.ok(&["firewall", "fw", "add", "action=drop"]);
    cli.ok(&[
        "firewall",
        "fw",
        "add",
        "--before",
        "0",
        "action=accept",
        "dst4=192.0.2.0/24",
        "proto=tcp",
        "dstports=443",
        "comment=the",
        "web",
    ]);
    let list = cli.ok(&["firewall", "fw", "list"]);
    let lines: Vec<&str> = list.lines().map(str::trim).collect();
    assert_eq!(
        lines,
        vec![
            "0  action=accept dst4=192.0.2.0/24 proto=tcp dstports=443-443 comment=the web",
            "1  action=drop",
        ]
    );
    cli.fails(
        &["firewall", "fw", "add", "action=accept", "dstports=80"],
        5,
        "dstports needs proto",
    );
    cli.fails(&["firewall", "fw", "del", "7"], 5, "no rule 7");
    cli.fails(&["firewall", "nosuch", "list"], 3, "nosuch");
    cli.ok(&["firewall", "fw", "del", "0"]);
    assert_eq!(cli.ok(&["firewall", "fw", "list"]).trim(), "0  action=drop");

    // A hand-edited file that does not parse: list says why (and that traffic is dropped);
    // del still works on it.
    let dn = bulkhead_domain::DomainName::new("fw").expect("name");
    let file = daemon.paths.domain_state_dir(&dn).join("firewall.rules");
    std::fs::write(&file, "action=drop\naction=sometimes\n").expect("write rules");
    cli.fails(&["firewall", "fw", "list"], 5, "rule 2");
    cli.fails(&["firewall", "fw", "list"], 5, "dropped");
    cli.ok(&["firewall", "fw", "del", "1"]);
    assert_eq!(cli.ok(&["firewall", "fw", "list"]).trim(), "0  action=drop");
    cli.ok(&["firewall", "fw", "reset"]);
    assert!(!file.exists());
}

/// `bulkhead template` as a Qubes user uses `qvm-template`: list, clone, change the clone by
/// installing into it (its domains see it at their next start), remove (refused while used).
#[tokio::test(flavor = "multi_thread")]
async fn templates_listed_cloned_changed_and_removed() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache))
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    let state_of = |name: &str| -> Option<(String, String)> {
        let rows: serde_json::Value =
            serde_json::from_str(&cli.ok(&["template", "list", "--json"])).expect("JSON");
        rows.as_array()?
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| {
                (
                    r["state"].as_str().unwrap_or("").to_owned(),
                    r["recipe"].as_str().unwrap_or("").to_owned(),
                )
            })
    };
    cli.ok(&["template", "install", "debian-12"]);
    assert_eq!(
        state_of("debian-12"),
        Some(("ready".into(), "debian-12".into()))
    );
    let table = cli.ok(&["template", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("debian-12"),
        "{table}"
    );

    cli.ok(&["template", "clone", "debian-12", "d12-work"]);
    assert_eq!(
        state_of("d12-work"),
        Some(("ready".into(), "debian-12".into()))
    );
    cli.ok(&["create", "-t", "d12-work", "-l", "blue", "w"]);
    cli.ok(&[
        "run",
        "-u",
        "root",
        "d12-work",
        "--",
        "sh",
        "-c",
        "echo cloned > /opt/clone-marker",
    ]);
    cli.ok(&["shutdown", "d12-work"]);
    assert_eq!(
        state_of("d12-work").map(|s| s.0).as_deref(),
        Some("changed")
    );
    assert_eq!(
        cli.ok(&["run", "w", "--", "cat", "/opt/clone-marker"])
            .trim(),
        "cloned"
    );
    // Undone (Qubes' qvm-volume revert), then redone; w, running, keeps its root meanwhile.
    let out = cli.ok(&["template", "revert", "d12-work"]);
    assert!(
        out.starts_with("d12-work: back to the root built "),
        "{out}"
    );
    assert_eq!(state_of("d12-work").map(|s| s.0).as_deref(), Some("ready"));
    assert_eq!(
        cli.ok(&["run", "w", "--", "cat", "/opt/clone-marker"])
            .trim(),
        "cloned"
    );
    let out = cli.ok(&["template", "revert", "d12-work"]);
    assert!(
        out.starts_with("d12-work: back to the root changed "),
        "{out}"
    );
    assert_eq!(
        state_of("d12-work").map(|s| s.0).as_deref(),
        Some("changed")
    );
    let out = cli.run(&["template", "revert", "w"]);
    assert_eq!(out.status.code(), Some(5), "not a template: invalid input");
    // Never changed here (and a store linked in from the test cache): invalid state.
    let out = cli.run(&["template", "revert", "debian-12"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli.ok(&["create", "-t", "debian-12", "-l", "green", "v"]);
    let out = cli.run(&["run", "v", "--", "test", "-e", "/opt/clone-marker"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the clone's change reached its source"
    );

    let out = cli.run(&["template", "remove", "d12-work"]);
    assert!(!out.status.success(), "a template in use was removed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("w"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli.run(&["template", "remove", "w"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a template"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli.ok(&["shutdown", "w"]);
    cli.ok(&["rm", "w"]);
    cli.ok(&["template", "remove", "d12-work"]);
    assert_eq!(state_of("d12-work"), None);
}

/// Application menus (qvm-appmenus): a domain's chosen applications become entries in this
/// user's menu directory that run `bulkhead app DOMAIN ID`; they go with the domain.
#[tokio::test(flavor = "multi_thread")]
async fn application_menus_follow_their_domains() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache))
        .await
        .expect("domaind starts");
    let home = tempfile::tempdir().expect("home");
    let menu = home.path().join("applications");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    let with_menu = |args: &[&str]| cli.ok_env(args, "XDG_DATA_HOME", home.path());
    cli.ok(&["template", "install", "debian-12"]);
    cli.ok(&["create", "-t", "debian-12", "-l", "orange", "work"]);
    let list = with_menu(&["appmenus", "work", "--list"]);
    assert!(list.contains("  foot.desktop  Foot"), "{list}");
    with_menu(&["appmenus", "work", "--set", "foot.desktop"]);
    assert!(with_menu(&["appmenus", "work", "--list"]).contains("* foot.desktop"));
    let entry = std::fs::read_to_string(menu.join("bulkhead-work+foot.desktop")).expect("entry");
    assert!(entry.contains("\nName=[work] Foot\n"), "{entry}");
    let exec = entry
        .lines()
        .find_map(|l| l.strip_prefix("Exec="))
        .expect("Exec line");
    assert!(exec.ends_with(" app work foot.desktop"), "{exec}");
    // What the entry runs starts the template's foot in work (started for it).
    let argv: Vec<&str> = exec.split(' ').skip(1).collect();
    cli.ok(&argv);
    let mut running = false;
    for _ in 0..50 {
        let out = cli.sh("work", "pgrep -x foot");
        if out.status.success() {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(running, "foot did not start in work");
    // Setting an application the template does not have: nothing written for it.
    let out = cli
        .command(&["appmenus", "work", "--set", "foot.desktop", "nope.desktop"])
        .env("XDG_DATA_HOME", home.path())
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.desktop is not an application"));
    assert!(!menu.join("bulkhead-work+nope.desktop").exists());
    // The domain goes, its entries go.
    cli.ok(&["kill", "work"]);
    let out = cli
        .command(&["rm", "work"])
        .env("XDG_DATA_HOME", home.path())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !menu.join("bulkhead-work+foot.desktop").exists(),
        "the entry outlived its domain"
    );
}

/// The default domains of a new installation (scripts/default-domains.sh, which
/// scripts/setup.sh runs): net, work, personal, untrusted, vault with their labels, networks
/// and menus; `usb` only on a host with a USB controller; a second run leaves them alone;
/// vault has no network, work reaches net.
#[tokio::test(flavor = "multi_thread")]
async fn default_domains_as_qubes_first_boot_makes_them() {
    let Some(cache) = sandbox_template_cache() else {
        return;
    };
    let bus = TestBus::start().expect("dbus-daemon starts");
    let daemon = TestDomaind::start(&bus, DomaindOptions::debian12(cache))
        .await
        .expect("domaind starts");
    let cli = TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), &daemon);
    cli.ok(&["template", "install", "debian-12"]);
    cli.ok(&[
        "create",
        "-C",
        "disposable-template",
        "-t",
        "debian-12",
        "-l",
        "red",
        "debian-12-dvm",
    ]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/default-domains.sh");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_bulkhead"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // a sysfs without USB, then one with a controller (its root hub)
    let no_usb = tempfile::tempdir().expect("tempdir");
    let with_usb = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(with_usb.path().join("bus/usb/devices/usb1")).expect("usb1");
    let run_script = |sysfs: &std::path::Path| {
        let out = Command::new("bash")
            .arg(&script)
            .env("PATH", &path)
            .env("BULKHEAD_SYSFS", sysfs)
            .env("BULKHEAD_BUS_ADDRESS", daemon.bus_address())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run_script(no_usb.path());
    assert!(first.contains("net has no uplink yet"), "{first}");
    assert!(first.contains("usb: not made"), "{first}");
    let rows: serde_json::Value = serde_json::from_str(&cli.ok(&["ls", "--json"])).expect("JSON");
    let row = |name: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|d| d["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not made: {first}"))
    };
    for (name, class, label) in [
        ("net", "service", "red"),
        ("work", "app", "blue"),
        ("personal", "app", "yellow"),
        ("untrusted", "app", "red"),
        ("vault", "app", "black"),
    ] {
        let r = row(name);
        assert_eq!(
            (r["class"].as_str(), r["label"].as_str()),
            (Some(class), Some(label)),
            "{r}"
        );
    }
    assert_eq!(cli.ok(&["prefs", "work", "netvm"]).trim(), "net");
    assert_eq!(cli.ok(&["prefs", "vault", "netvm"]).trim(), "");
    assert_eq!(
        cli.ok(&["prefs", "untrusted", "default_dispvm"]).trim(),
        "debian-12-dvm"
    );
    assert_eq!(
        cli.ok(&["prefs", "work", "features.menu-items"]).trim(),
        "foot.desktop"
    );
    // Run again: nothing changes.
    cli.ok(&["prefs", "work", "label", "green"]);
    let second = run_script(with_usb.path());
    assert!(second.contains("work: exists, left as it is"), "{second}");
    assert!(second.contains("usb: created"), "{second}");
    assert_eq!(cli.ok(&["prefs", "usb", "class"]).trim(), "service");
    assert_eq!(cli.ok(&["prefs", "usb", "netvm"]).trim(), "");
    assert_eq!(cli.ok(&["prefs", "work", "label"]).trim(), "green");
    // work starts with net as its netvm (net started for it) and has an address from it.
    let addr = cli.ok(&[
        "run", "work", "--", "ip", "-4", "-o", "addr", "show", "scope", "global",
    ]);
    assert!(addr.contains("inet "), "work has no address: {addr}");
    let out = cli.run(&[
        "run", "vault", "--", "ip", "-4", "-o", "addr", "show", "scope", "global",
    ]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("inet "),
        "vault has a network: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
