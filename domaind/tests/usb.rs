//! The usb domain through the real domaind over D-Bus, on the sysfs trees recorded in
//! `usb/tests/data` (these hosts have no USB bus): the inventory, the policy decisions of
//! `bulkhead.usb.Attach+BUSID` (dom0 only for input devices and only by policy), and the plain
//! message when the kernel has no USB/IP (the recorded tree has neither usbip-host nor
//! vhci-hcd, so that message is what an allowed attach gets on every host).

use std::collections::HashMap;

use bulkhead_api::Error;
use bulkhead_testkit::{DomaindOptions, TestBus, TestDomaind};

fn laptop_sysfs() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("usb/tests/data/laptop/sys")
        .display()
        .to_string()
}

const POLICY: &str = "\
bulkhead.usb.Attach  +1-3  work      usb  allow
bulkhead.usb.Attach  +1-1  @adminvm  usb  allow
bulkhead.usb.Attach  +1-3  @adminvm  usb  allow
bulkhead.usb.Attach  *     @anyvm    @anyvm  deny
";

#[tokio::test(flavor = "multi_thread")]
async fn usb_inventory_and_attach_policy() {
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            env: vec![("BULKHEAD_USB_SYSFS_ROOT".into(), laptop_sysfs())],
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let (_conn, p) = d.client().await.expect("client");

    // the inventory: root hubs and hubs are left out
    let rows = p.usb_list().await.expect("UsbList");
    let busids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(busids, ["1-1", "1-2", "1-3", "2-1.4"]);
    assert_eq!(
        rows[2],
        (
            "1-3".to_owned(),
            "0781:5581".to_owned(),
            "USB".to_owned(),
            "SanDisk 3.2Gen1".to_owned(),
            "4C530001230518111392".to_owned(),
            "mass-storage".to_owned()
        )
    );
    assert_eq!(rows[0].5, "keyboard");
    assert_eq!(rows[1].5, "mouse");
    let status = p.usb_status().await.expect("UsbStatus");
    assert!(
        status.contains("usbip-host") && status.contains("vhci-hcd"),
        "{status}"
    );

    // no usb domain yet: said plainly
    let e = p.usb_attach("1-3", "work").await.unwrap_err();
    assert!(
        matches!(&e, Error::NoSuchDomain(m) if m.contains("usb domain")),
        "{e:?}"
    );

    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(policy.join("30-usb.policy"), POLICY).expect("policy");
    let none = HashMap::new();
    p.create("tmpl", "template", "", "black", none.clone())
        .await
        .expect("template");
    p.create("usb", "service", "", "red", none.clone())
        .await
        .expect("usb domain");
    for n in ["work", "other"] {
        p.create(n, "app", "tmpl", "blue", none.clone())
            .await
            .expect("app");
    }

    // allowed by policy: the attach gets as far as the kernel, which lacks USB/IP here
    let e = p.usb_attach("1-3", "work").await.unwrap_err();
    match &e {
        Error::Backend(m) => {
            assert!(m.contains("policy allows attaching 1-3 to work"), "{m}");
            assert!(m.contains("vhci-hcd"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // refused by policy
    for (busid, dom) in [("1-3", "other"), ("2-1.4", "work"), ("1-1", "work")] {
        let e = p.usb_attach(busid, dom).await.unwrap_err();
        assert!(
            matches!(e, Error::AccessDenied(_)),
            "{busid} -> {dom}: {e:?}"
        );
    }
    // dom0: the keyboard only because policy says so; the mouse has no rule; storage never,
    // even with a rule
    let e = p.usb_attach("1-1", "dom0").await.unwrap_err();
    assert!(
        matches!(&e, Error::Backend(m) if m.contains("policy allows attaching 1-1 to dom0")),
        "{e:?}"
    );
    let e = p.usb_attach("1-2", "dom0").await.unwrap_err();
    assert!(matches!(e, Error::AccessDenied(_)), "{e:?}");
    let e = p.usb_attach("1-3", "dom0").await.unwrap_err();
    assert!(
        matches!(&e, Error::AccessDenied(m) if m.contains("only keyboards and mice")),
        "{e:?}"
    );

    // unknown device, bad bus id, unknown domain, detach of what is not attached
    let e = p.usb_attach("9-9", "work").await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidProperty(m) if m.contains("no USB device 9-9")),
        "{e:?}"
    );
    let e = p.usb_attach("../../x", "work").await.unwrap_err();
    assert!(matches!(e, Error::InvalidProperty(_)), "{e:?}");
    let e = p.usb_attach("1-3", "nosuch").await.unwrap_err();
    assert!(matches!(e, Error::NoSuchDomain(_)), "{e:?}");
    let e = p.usb_detach("1-3").await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains("not attached")),
        "{e:?}"
    );
}
