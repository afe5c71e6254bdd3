//! Loading a policy directory: file order and names, the runtime directory, includes and
//! their limits, `check`, size limits and reloading when files change.

use super::*;
use std::fs;

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(path, text).unwrap();
}

fn diag_strings(p: &Policy) -> Vec<String> {
    p.diagnostics().iter().map(|d| d.to_string()).collect()
}

#[test]
fn files_are_read_in_c_locale_name_order() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("50-b.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    write(
        &d.path().join("30-user.policy"),
        "svc.A * @anyvm home deny\n",
    );
    write(&d.path().join("5-a.policy"), "svc.A * work @anyvm deny\n");
    write(
        &d.path().join("50-a_b.policy"),
        "svc.B * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let files: Vec<String> = p
        .rules()
        .iter()
        .map(|r| {
            r.location
                .file()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Byte order: '3' < '5'; "5-a" < "50-": '-' (0x2d) < '0' (0x30); "50-a_b" < "50-b".
    assert_eq!(
        files,
        vec![
            "30-user.policy",
            "5-a.policy",
            "50-a_b.policy",
            "50-b.policy"
        ]
    );
    assert!(ev(&p, "svc.A", "", "untrusted", "home").is_deny());
    assert!(ev(&p, "svc.A", "", "untrusted", "work").is_allow());
}

#[test]
fn other_files_are_ignored_and_bad_names_are_errors() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("README"), "not a policy");
    write(&d.path().join("90-x.policy~"), "garbage");
    write(&d.path().join(".90-x.policy.swp"), "garbage");
    write(&d.path().join(".hidden.policy"), "garbage");
    fs::create_dir(d.path().join("dir.policy")).unwrap();
    write(
        &d.path().join("10-ok.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 1);
    write(
        &d.path().join("20-Bad.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1);
    assert!(ds[0].ends_with("20-Bad.policy:0: invalid filename \"20-Bad.policy\": policy file names may only contain 0-9 a-z _ . -"), "{}", ds[0]);
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());
}

#[test]
fn symlinked_policy_files_are_followed() {
    let d = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    write(&other.path().join("real"), "svc.A * @anyvm @anyvm allow\n");
    std::os::unix::fs::symlink(other.path().join("real"), d.path().join("10-link.policy")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.path().join("20-dangling.policy")).unwrap();
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 1);
}

#[test]
fn runtime_directory_is_merged_by_name() {
    let d = tempfile::tempdir().unwrap();
    let rt = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(
        &d.path().join("30-c.policy"),
        "svc.C * @anyvm @anyvm allow\n",
    );
    write(
        &rt.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    write(
        &rt.path().join("20-disp42.policy"),
        "svc.B * disp42 @anyvm allow\n",
    );
    let cfg = PolicyConfig::new(d.path()).with_runtime_dir(rt.path());
    let p = Policy::load(cfg);
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let lines: Vec<(String, String)> = p
        .rules()
        .iter()
        .map(|r| {
            (
                r.location
                    .file()
                    .parent()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                r.location
                    .file()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect();
    let rt_s = rt.path().to_string_lossy().into_owned();
    let d_s = d.path().to_string_lossy().into_owned();
    assert_eq!(
        lines,
        vec![
            (rt_s.clone(), "10-a.policy".into()),
            (rt_s, "20-disp42.policy".into()),
            (d_s, "30-c.policy".into())
        ]
    );
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    // A missing runtime directory is fine; a missing policy directory is an error.
    let p = Policy::load(PolicyConfig::new(d.path()).with_runtime_dir(d.path().join("nope")));
    assert!(p.is_valid());
    let p = Policy::load_dir(d.path().join("nope"));
    assert!(!p.is_valid());
    assert!(
        diag_strings(&p)[0].contains(":0: cannot read"),
        "{:?}",
        diag_strings(&p)
    );
}

#[test]
fn includes() {
    let d = tempfile::tempdir().unwrap();
    let abs = tempfile::tempdir().unwrap();
    write(&d.path().join("10-main.policy"), &format!(
        "svc.A * @anyvm @anyvm deny notify=no\n!include include/a\n!include-dir include/dir\n!include {}\n",
        abs.path().join("abs").display()
    ));
    write(
        &d.path().join("include/a"),
        "svc.B * @anyvm @anyvm allow\n!include include/b\n",
    );
    write(&d.path().join("include/b"), "svc.C * @anyvm @anyvm allow\n");
    write(
        &d.path().join("include/dir/20-y.policy"),
        "svc.E * @anyvm @anyvm allow\n",
    );
    write(
        &d.path().join("include/dir/10-x.policy"),
        "svc.D * @anyvm @anyvm allow\n",
    );
    write(&d.path().join("include/dir/README"), "ignored");
    write(&abs.path().join("abs"), "svc.F * @anyvm @anyvm allow\n");
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let svcs: Vec<&str> = p
        .rules()
        .iter()
        .map(|r| r.service.as_deref().unwrap())
        .collect();
    assert_eq!(
        svcs,
        vec!["svc.A", "svc.B", "svc.C", "svc.D", "svc.E", "svc.F"]
    );
    // Files in include/ (no .policy suffix, not in the top directory) are only read by include.
    assert!(ev(&p, "svc.C", "", "work", "home").is_allow());
}

#[test]
fn include_errors() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-main.policy"),
        "!include nope\n!include-dir nodir\n!include-dir 10-main.policy\n!include include\n",
    );
    fs::create_dir(d.path().join("include")).unwrap();
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 4, "{ds:?}");
    assert!(ds[0].contains("10-main.policy:1: not a file"), "{}", ds[0]);
    assert!(
        ds[1].contains("10-main.policy:2: not a directory"),
        "{}",
        ds[1]
    );
    assert!(
        ds[2].contains("10-main.policy:3: not a directory"),
        "{}",
        ds[2]
    );
    assert!(ds[3].contains("10-main.policy:4: not a file"), "{}", ds[3]);
}

#[test]
fn include_cycles_are_refused() {
    let d = tempfile::tempdir().unwrap();
    // Self include.
    write(
        &d.path().join("10-self.policy"),
        "!include 10-self.policy\n",
    );
    // A -> B -> A through include/.
    write(&d.path().join("20-a.policy"), "!include include/b\n");
    write(
        &d.path().join("include/b"),
        "svc.B * @anyvm @anyvm allow\n!include 20-a.policy\n",
    );
    // A directory that contains the including file.
    write(&d.path().join("30-dir.policy"), "!include-dir .\n");
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert!(
        ds.iter()
            .any(|s| s.contains("10-self.policy:1: circular include")),
        "{ds:?}"
    );
    assert!(
        ds.iter()
            .any(|s| s.contains("include/b:2: circular include")),
        "{ds:?}"
    );
    assert!(
        ds.iter()
            .any(|s| s.contains("30-dir.policy:1: circular include")),
        "{ds:?}"
    );
    assert!(ev(&p, "svc.B", "", "work", "home").is_deny());
    // The same file included twice (no cycle) is fine.
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "!include include/x\n!include include/x\n",
    );
    write(&d.path().join("include/x"), "svc.B * @anyvm @anyvm allow\n");
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 2);
}

#[test]
fn include_depth_and_file_count_limits() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("10-a.policy"), "!include include/1\n");
    for i in 1..10 {
        write(
            &d.path().join(format!("include/{i}")),
            &format!("!include include/{}\n", i + 1),
        );
    }
    write(
        &d.path().join("include/10"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let limits = Limits {
        max_include_depth: 4,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert!(
        ds[0].contains("include/4:1: include depth limit of 4 exceeded"),
        "{}",
        ds[0]
    );
    // Fan-out: each file includes the next one 10 times.
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        &"!include include/1\n".repeat(10),
    );
    write(
        &d.path().join("include/1"),
        &"!include include/2\n".repeat(10),
    );
    write(
        &d.path().join("include/2"),
        &"!include include/3\n".repeat(10),
    );
    write(&d.path().join("include/3"), "svc.A * @anyvm @anyvm allow\n");
    let limits = Limits {
        max_files: 100,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    assert!(p
        .diagnostics()
        .iter()
        .any(|d| d.kind == ErrorKind::TooManyFiles(100)));
}

#[test]
fn include_service_reads_legacy_files() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "!include-service svc.A * include/svc.A\n!include-service svc.B +x include/svc.B\n",
    );
    write(
        &d.path().join("include/svc.A"),
        "# legacy\n$anyvm $dispvm allow\nwork $anyvm allow,target=home,user=root\n$include:include/more\n",
    );
    write(
        &d.path().join("include/more"),
        "$anyvm $anyvm ask,default_target=work\n",
    );
    write(
        &d.path().join("include/svc.B"),
        "@anyvm @anyvm deny\n!include-dir include\n",
    );
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert!(
        ds[0].contains("include/svc.B:2: invalid directive \"!include-dir\""),
        "{}",
        ds[0]
    );
    let r = &p.rules()[1];
    assert_eq!(r.service.as_deref(), Some("svc.A"));
    assert_eq!(r.argument, None);
    assert!(matches!(&r.action, Action::Allow(a) if a.user.as_deref() == Some("root")));
    assert_eq!(p.rules()[2].service.as_deref(), Some("svc.A"));
    assert_eq!(p.rules()[3].argument.as_deref(), Some("+x"));
    let d2 = tempfile::tempdir().unwrap();
    write(
        &d2.path().join("10-a.policy"),
        "!include-service svc.A * include/svc.A\n",
    );
    write(
        &d2.path().join("include/svc.A"),
        "$anyvm $dispvm allow\nwork $anyvm allow,target=home\n$include:include/more\n",
    );
    write(
        &d2.path().join("include/more"),
        "$anyvm $anyvm ask,default_target=work\n",
    );
    let p = Policy::load_dir(d2.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "work", "untrusted")),
        "home"
    );
    assert!(ev(&p, "svc.A", "", "home", "untrusted").is_ask());
    assert!(ev(&p, "svc.B", "", "home", "untrusted").is_deny());
}

#[test]
fn check_reports_file_line_message() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\nsvc.A * @anyvm\n",
    );
    write(
        &d.path().join("20-b.policy"),
        "svc.A * @anyvm @default allow\n",
    );
    let diags = check(d.path());
    let s: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        s,
        vec![
            format!("{}:2: wrong number of fields (expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...])", d.path().join("10-a.policy").display()),
            format!("{}:1: allow action for @default rule must specify target= option", d.path().join("20-b.policy").display()),
        ]
    );
    assert_eq!(
        diags[1].message(),
        "allow action for @default rule must specify target= option"
    );
    fs::write(
        d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    )
    .unwrap();
    fs::remove_file(d.path().join("20-b.policy")).unwrap();
    assert!(check(d.path()).is_empty());
}

#[test]
fn big_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        &"# filler filler filler\n".repeat(100),
    );
    let limits = Limits {
        max_file_bytes: 1000,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    let ds = diag_strings(&p);
    assert!(
        ds[0].ends_with("10-a.policy:0: file is 2300 bytes; the limit is 1000"),
        "{ds:?}"
    );
}

#[test]
fn reload_when_files_change() {
    let d = tempfile::tempdir().unwrap();
    let rt = tempfile::tempdir().unwrap();
    let rt_dir = rt.path().join("policy.d");
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(&d.path().join("include/x"), "svc.B * @anyvm @anyvm deny\n");
    write(&d.path().join("20-b.policy"), "!include include/x\n");
    let mut p = Policy::load(PolicyConfig::new(d.path()).with_runtime_dir(&rt_dir));
    assert!(!p.load_if_changed(), "nothing changed yet");
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // Edit in place.
    fs::write(
        d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    )
    .unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    assert!(!p.load_if_changed());

    // An included file changes.
    fs::write(d.path().join("include/x"), "svc.B * @anyvm @anyvm allow\n").unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.B", "", "work", "home").is_allow());

    // The runtime directory appears with a rule.
    write(&rt_dir.join("05-disp.policy"), "svc.A * work home deny\n");
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // A file is removed; a broken file is added.
    fs::remove_file(rt_dir.join("05-disp.policy")).unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    write(&d.path().join("50-broken.policy"), "oops\n");
    assert!(p.load_if_changed());
    assert!(!p.is_valid());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // Text policies never reload.
    let mut t = pol("svc.A * @anyvm @anyvm allow");
    assert!(!t.load_if_changed());
}

#[test]
fn retargeted_include_symlink_reloads() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("include/deny"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(
        &d.path().join("include/allow"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    std::os::unix::fs::symlink("deny", d.path().join("include/current")).unwrap();
    write(&d.path().join("10-a.policy"), "!include include/current\n");
    let mut p = Policy::load_dir(d.path());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());
    fs::remove_file(d.path().join("include/current")).unwrap();
    std::os::unix::fs::symlink("allow", d.path().join("include/current")).unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
}
