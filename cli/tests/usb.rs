//! `bulkhead usb` against the real domaind on the sysfs tree recorded in `usb/tests/data`
//! (these hosts have no USB bus): the listing with its note on missing USB/IP, and the exit
//! codes of a refused attach (7) and an allowed one that the kernel cannot carry out (1).

use std::collections::HashMap;
use std::process::Output;

use bulkhead_testkit::{DomaindOptions, TestBus, TestCli, TestDomaind};

fn bulkhead(d: &TestDomaind, args: &[&str]) -> Output {
    TestCli::new(env!("CARGO_BIN_EXE_bulkhead"), d).run(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn usb_list_attach_detach() {
    let sysfs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("usb/tests/data/laptop/sys");
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            env: vec![(
                "BULKHEAD_USB_SYSFS_ROOT".into(),
                sysfs.display().to_string(),
            )],
            ..Default::default()
        },
    )
    .await
    .expect("domaind");

    let out = bulkhead(&d, &["usb", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("BUSID"), "{text}");
    for (line, want) in lines[1..].iter().zip([
        ["1-1", "046d:c31c", "Logitech", "USB Keyboard", "keyboard"],
        ["1-2", "046d:c077", "Logitech", "USB Optical Mouse", "mouse"],
        ["1-3", "0781:5581", "USB", "SanDisk 3.2Gen1", "mass-storage"],
        ["2-1.4", "046d:0825", "", "", "miscellaneous"],
    ]) {
        for w in want {
            assert!(line.contains(w), "{line:?} lacks {w:?}");
        }
    }
    assert!(lines[3].contains("4C530001230518111392"), "the serial");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("cannot be attached") && note.contains("vhci-hcd"),
        "{note}"
    );
    let out = bulkhead(&d, &["usb", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows[2]["serial"], "4C530001230518111392");
    assert_eq!(rows[0]["class"], "keyboard");

    let (_conn, p) = d.client().await.expect("client");
    let none = HashMap::new();
    p.create("usb", "service", "", "red", none.clone())
        .await
        .expect("usb domain");
    p.create("tmpl", "template", "", "black", none.clone())
        .await
        .expect("template");
    p.create("work", "app", "tmpl", "blue", none)
        .await
        .expect("work");
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-usb.policy"),
        "bulkhead.usb.Attach  +1-3  work  usb  allow\n",
    )
    .expect("policy");

    // refused (no rule for the keyboard): 7, and nothing else happens
    let out = bulkhead(&d, &["usb", "attach", "1-1", "work"]);
    assert_eq!(out.status.code(), Some(7));
    // allowed, but the kernel has no USB/IP: a plain message, exit 1
    let out = bulkhead(&d, &["usb", "attach", "1-3", "work"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy allows attaching 1-3 to work") && err.contains("usbip-host"),
        "{err}"
    );
    // nothing attached, so nothing to detach: 4
    let out = bulkhead(&d, &["usb", "detach", "1-3"]);
    assert_eq!(out.status.code(), Some(4));
    let out = bulkhead(&d, &["usb", "attach", "bogus", "work"]);
    assert_eq!(out.status.code(), Some(5));
}
