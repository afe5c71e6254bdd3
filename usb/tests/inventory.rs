//! The inventory on sysfs trees under `tests/data` (see its README).

use std::path::{Path, PathBuf};

use bulkhead_usb::{scan, BusId, DeviceKind, InventoryError};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .join("sys")
}

#[test]
fn laptop_devices() {
    let inv = scan(&data("laptop")).expect("scan");
    assert!(inv.skipped.is_empty(), "{:?}", inv.skipped);
    let ids: Vec<&str> = inv.devices.iter().map(|d| d.busid.as_str()).collect();
    // root hubs (usbN) and the hub 2-1 are not listed
    assert_eq!(ids, ["1-1", "1-2", "1-3", "2-1.4"]);

    let kb = inv.get(&BusId::new("1-1").unwrap()).unwrap();
    assert_eq!(kb.ids(), "046d:c31c");
    assert_eq!(kb.manufacturer.as_deref(), Some("Logitech"));
    assert_eq!(kb.product.as_deref(), Some("USB Keyboard"));
    assert_eq!(kb.serial, None);
    assert_eq!(kb.speed, "1.5");
    assert_eq!((kb.busnum, kb.devnum), (1, 2));
    assert_eq!(kb.bcd_device, 0x6400);
    assert_eq!(kb.interfaces.len(), 2);
    assert_eq!(kb.kind(), DeviceKind::Keyboard);
    assert!(kb.kind().is_input());
    assert_eq!(kb.driver.as_deref(), Some("usb"));

    let mouse = inv.get(&BusId::new("1-2").unwrap()).unwrap();
    assert_eq!(mouse.kind(), DeviceKind::Mouse);
    assert_eq!(mouse.product.as_deref(), Some("USB Optical Mouse"));

    let stick = inv.get(&BusId::new("1-3").unwrap()).unwrap();
    assert_eq!(stick.ids(), "0781:5581");
    assert_eq!(stick.serial.as_deref(), Some("4C530001230518111392"));
    assert_eq!(stick.product.as_deref(), Some("SanDisk 3.2Gen1"));
    assert_eq!(stick.kind(), DeviceKind::Other(8));
    assert_eq!(stick.kind().describe(), "mass-storage");
    assert!(!stick.kind().is_input());

    let cam = inv.get(&BusId::new("2-1.4").unwrap()).unwrap();
    assert_eq!(cam.device_class, 0xef);
    assert_eq!(cam.kind().describe(), "miscellaneous");
    assert_eq!(cam.interfaces.len(), 4);
    assert_eq!(cam.interfaces[0].class, 0x0e);
    assert_eq!(cam.serial.as_deref(), Some("2F1A3B50"));
}

#[test]
fn hostile_descriptors_are_contained() {
    let inv = scan(&data("hostile")).expect("scan");
    let ids: Vec<&str> = inv.devices.iter().map(|d| d.busid.as_str()).collect();
    assert_eq!(
        ids,
        ["3-2", "3-4"],
        "the broken ones are skipped, the rest listed"
    );
    let skipped: Vec<&str> = inv.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, ["3-1", "3-3"]);
    assert!(matches!(inv.skipped[0].1, InventoryError::Invalid { .. }));
    assert!(matches!(inv.skipped[1].1, InventoryError::TooLarge { .. }));
    assert!(inv.skipped[0].1.to_string().contains("idVendor"));

    let evil = &inv.devices[0];
    for s in [&evil.manufacturer, &evil.product, &evil.serial] {
        let s = s.as_deref().unwrap();
        assert!(!s.chars().any(char::is_control), "{s:?}");
    }
    assert_eq!(
        evil.product.as_deref(),
        Some("Totally a disk\u{fffd}rm -rf")
    );
    assert_eq!(evil.serial.as_deref().map(str::len), Some(126));

    assert_eq!(
        inv.devices[1].kind(),
        DeviceKind::HidWithData(8),
        "a storage stick with a HID interface"
    );
    assert!(
        !inv.devices[1].kind().is_input(),
        "a HID interface does not make a storage stick an input device"
    );
}

#[test]
fn keyboards_that_are_also_disks_or_network_cards_are_not_input() {
    let inv = scan(&data("composite")).expect("scan");
    assert!(inv.skipped.is_empty(), "{:?}", inv.skipped);
    let kind = |b: &str| inv.get(&BusId::new(b).unwrap()).unwrap().kind();
    for (busid, class, what) in [
        ("4-1", 0x08, "keyboard + mass storage"),
        ("4-2", 0x02, "composite gadget: CDC ECM + keyboard"),
        ("4-3", 0xe0, "RNDIS (wireless class) + keyboard"),
        ("4-4", 0xef, "RNDIS (misc class) + keyboard"),
        ("4-5", 0x02, "CDC device class + keyboard"),
        ("4-7", 0x06, "still image + keyboard"),
    ] {
        assert_eq!(
            kind(busid),
            DeviceKind::HidWithData(class),
            "{busid}: {what}"
        );
        assert!(!kind(busid).is_input(), "{busid}: {what} counted as input");
    }
    assert_eq!(kind("4-1").describe(), "mass-storage with a hid interface");
    // A receiver with a keyboard, a mouse and a vendor HID interface stays a keyboard.
    assert_eq!(kind("4-6"), DeviceKind::Keyboard);
    assert!(kind("4-6").is_input());
}

#[test]
fn no_usb_bus_is_an_empty_inventory() {
    let d = tempfile::tempdir().unwrap();
    let inv = scan(d.path()).expect("scan");
    assert!(inv.devices.is_empty() && inv.skipped.is_empty());
}
