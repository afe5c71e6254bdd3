//! The usb domain: listing the host's USB devices and moving them between domains.
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
//! The data path of an allowed attach (both domains running):
//! 1. **Export** in the usb domain's kernel. A sandbox usb domain shares dom0's kernel, so
//!    domaind binds the device to `usbip-host` there and gives the kernel one end of a socket
//!    pair ([`bulkhead_usb::host::Sysfs::export`]).
//! 2. **Import** in the receiving domain's kernel: a VM's agent gets an
//!    `OpenRequest::UsbImport` stream and plugs its own socket pair into its kernel's
//!    `vhci-hcd` (`domain-agent/src/usb.rs`); the device shows up in that VM alone.
//! 3. **Relay**: a task joins the two, checking every USB/IP message both ways
//!    ([`bulkhead_usb::usbip::relay_urbs`]: commands only from the receiving side, answers only
//!    to pending commands, lengths within limits, the device's own id). A violation drops the
//!    attachment (both sides), logged; nothing else stops.
//! 4. **Release**: when the relay ends for any reason (detach, either domain stopping or
//!    dying, a violation, the device unplugged), the device is unbound from `usbip-host` and
//!    given back to its drivers, and the attachment is forgotten. At start-up domaind gives
//!    back every device a previous domaind left bound to `usbip-host`.
//!
//! A sandbox shares dom0's kernel: a device attached to one is plugged into dom0's `vhci-hcd`
//! instead, and its nodes (as they appear: `/dev/sdX`, `/dev/input/eventN`, the raw
//! `/dev/bus/usb/...`) are handed to that sandbox alone (`bulkhead_sandbox::devices`), owned
//! by its user, mode 0600 in dom0.
//!
//! **Input devices for dom0** (`usb attach dom0 BUSID`, allowed by a rule for `@adminvm`, and
//! only keyboards and mice: a composite device with storage or network interfaces is never
//! input) go through the *input proxy* (`bulkhead_input`), as Qubes' sys-usb does it: the
//! device's event nodes are handed to the usb domain, which runs `bulkhead-input-sender` on
//! each (it grabs the device, so nothing else reads it raw); domaind reads the stream, checks
//! every event against what a keyboard or mouse may send (no SysRq, bounded values and rate)
//! and injects what passes through a uinput device of its own in dom0. A sandbox usb domain
//! shares dom0's kernel, whose drivers still parse the device; the grab keeps dom0's desktop
//! to the proxied events. A USB device that is attached nowhere stays with dom0's drivers.
//!
//! **A usb VM** (the usb domain with `isolation = vm`) gets the device in two hops, each a
//! relay with its own guard: dom0's `usbip-host` to the usb VM's `vhci-hcd`
//! (`OpenRequest::UsbImport`), then the usb VM's `usbip-host` (`OpenRequest::UsbExport`) to
//! the receiving domain. The receiving domain's commands reach the usb VM's kernel only. It is
//! the fallback of a VMM without VFIO passthrough: dom0's USB core still enumerates the
//! device. The input proxy needs a sandbox usb domain.
//!
//! A device is attached to one domain at a time; [`UsbState`] says where.

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;

use bulkhead_usb::UsbDevice;
use tokio::sync::{oneshot, watch};

/// One row of `UsbList`: busid, `vendor:product`, manufacturer, product, serial, class (with
/// `, attached to DOMAIN` when attached).
pub type UsbRow = (String, String, String, String, String, String);

/// A device attached to a domain: its relay task is running.
pub(crate) struct Attachment {
    /// The receiving domain.
    pub domain: String,
    /// Told to end the relay (detach); `None` once told.
    pub stop: Option<oneshot::Sender<()>>,
    /// Becomes `true` when the relay ended and the device was given back.
    pub released: watch::Receiver<bool>,
    /// Which attachment of this device this is (a late release of an old one must not remove
    /// a new one).
    pub id: u64,
}

/// Which device is attached where.
#[derive(Default)]
pub struct UsbState {
    pub(crate) attached: StdMutex<BTreeMap<String, Attachment>>,
    pub(crate) next_id: std::sync::atomic::AtomicU64,
    /// One attach at a time (the check that a device is free and its export go together).
    pub(crate) op: tokio::sync::Mutex<()>,
}

pub(crate) fn row(d: &UsbDevice, attached_to: Option<&str>) -> UsbRow {
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

/// Whether dom0's kernel offers uinput (loading the module when it is not loaded yet): the
/// input proxy needs it. Blocking.
pub(crate) fn uinput_available() -> Result<(), String> {
    let dev = std::path::Path::new(bulkhead_input::uinput::UINPUT_PATH);
    if !dev.exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("uinput")
            .output();
    }
    if dev.exists() {
        Ok(())
    } else {
        Err(format!(
            "this kernel has no uinput ({} is missing and `modprobe uinput` did not make it; a kernel with CONFIG_INPUT_UINPUT is needed), through which the input proxy gives dom0 a device's events",
            dev.display()
        ))
    }
}
