//! The usb domain: listing the host's USB devices and policy-checked attach/detach.
//!
//! The usb domain (`--usb-domain`, default `usb`, a service-class domain) holds the USB
//! devices; domaind reads the inventory from the sysfs tree it sees (`--usb-sysfs-root`,
//! default `/sys`, a recorded tree in tests; a sandbox usb domain shares the host kernel's
//! devices). An attach of device BUSID to domain D is the call `bulkhead.usb.Attach+BUSID`
//! from D (`@adminvm` for dom0) to the usb domain, decided by the policy like any call:
//!
//! - dom0 takes only input devices (keyboards, mice, other HID), and only when a rule allows
//!   `bulkhead.usb.Attach +BUSID @adminvm <usb domain>`; storage or anything else never goes
//!   to dom0;
//! - then the kernel must offer USB/IP (`usbip-host` for the usb domain, `vhci-hcd` for the
//!   receiving side, see [`bulkhead_usb::probe`]); when it does not, the attach fails with a
//!   plain message saying what is missing (the policy decision is still made first, so a
//!   refusal is a refusal on every host).
//!
//! What is not built yet: the data path itself (binding the device to `usbip-host`, relaying
//! the USB/IP stream over an inter-domain call, `vhci-hcd` attach in the receiving domain).
//! With the modules present an allowed attach says so instead of pretending.

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;

use bulkhead_usb::UsbDevice;

/// One row of `UsbList`: busid, `vendor:product`, manufacturer, product, serial, class (with
/// `, attached to DOMAIN` when attached).
pub type UsbRow = (String, String, String, String, String, String);

/// Which device is attached where.
#[derive(Default)]
pub struct UsbState {
    pub(crate) attached: StdMutex<BTreeMap<String, String>>,
}

pub(crate) fn row(d: &UsbDevice, attached_to: Option<&String>) -> UsbRow {
    let mut class = d.kind().describe();
    if let Some(dom) = attached_to {
        class.push_str(&format!(", attached to {dom}"));
    }
    (
        d.busid.to_string(),
        d.ids(),
        d.manufacturer.clone().unwrap_or_default(),
        d.product.clone().unwrap_or_default(),
        d.serial.clone().unwrap_or_default(),
        class,
    )
}
