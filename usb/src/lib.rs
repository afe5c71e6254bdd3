//! The usb domain's building blocks.
//!
//! - [`inventory`]: the USB devices a sysfs tree shows (`<root>/bus/usb/devices`), with
//!   vendor, product, serial, manufacturer, class and whether a device is a keyboard or mouse.
//!   The root is a parameter so tests read recorded trees (`usb/tests/data`).
//! - [`usbip`]: the USB/IP wire protocol (the kernel's `Documentation/usb/usbip_protocol.rst`):
//!   `OP_REQ/REP_DEVLIST`, `OP_REQ/REP_IMPORT`, `USBIP_CMD_SUBMIT`/`RET_SUBMIT`/`CMD_UNLINK`/
//!   `RET_UNLINK`, decoded with explicit [`usbip::Limits`] (fuzz target `usbip_codec`);
//!   [`usbip::UrbGuard`], the checker of a URB stream between an importing and an exporting
//!   domain (fuzz target `usbip_guard`), which checks every submit against the device's
//!   endpoint model ([`usbip::DeviceEndpoints`], from the raw descriptors
//!   [`usbip::parse_descriptors`] reads, bounded, and the active configuration and
//!   altsettings, followed through `SET_CONFIGURATION`/`SET_INTERFACE`), and
//!   [`usbip::relay_urbs`], the async relay dom0 runs through it.
//! - [`probe`]: whether this kernel has the USB/IP modules (`usbip-host` on the side that
//!   holds the device, `vhci-hcd` on the side that uses it), with a plain message when not.
//! - [`host`]: the kernel's USB/IP drivers through sysfs: export a device to a socket
//!   (`usbip-host`), plug a socket's device into a virtual port (`vhci-hcd`), and undo both;
//!   [`host::Sysfs::endpoint_map`] reads a device's endpoint model for the guard.
//! - [`BusId`]: a validated sysfs bus id (`1-1`, `2-1.4`).
//!
//! Attaching a device is a policy-checked call in domaind (service [`ATTACH_SERVICE`] with the
//! bus id as argument, from the receiving domain to the usb domain).
#![forbid(unsafe_code)]

pub mod host;
pub mod inventory;
pub mod probe;
pub mod usbip;

pub use inventory::{scan, DeviceKind, Interface, Inventory, InventoryError, UsbDevice};
pub use probe::{probe, UsbipSupport};

/// The policy service of an attach: `bulkhead.usb.Attach+BUSID`, source = the domain that
/// receives the device (`@adminvm` for dom0), target = the usb domain.
pub const ATTACH_SERVICE: &str = "bulkhead.usb.Attach";
/// Default name of the usb domain.
pub const DEFAULT_USB_DOMAIN: &str = "usb";
/// Longest bus id (the kernel's `SYSFS_BUS_ID_SIZE` is 32 with the terminating NUL).
pub const MAX_BUSID_LEN: usize = 31;

/// A USB device's bus id as sysfs names it: `BUS-PORT[.PORT]*` (e.g. `1-1`, `3-2.4.1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusId(String);

/// A string that is not a bus id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a USB bus id (BUS-PORT[.PORT...], e.g. 1-1 or 2-1.4; see bulkhead usb list)")]
pub struct BusIdError(pub String);

impl BusId {
    pub fn new(s: &str) -> Result<Self, BusIdError> {
        let bad = || BusIdError(s.chars().take(64).collect());
        if s.is_empty() || s.len() > MAX_BUSID_LEN {
            return Err(bad());
        }
        let (bus, ports) = s.split_once('-').ok_or_else(bad)?;
        let number =
            |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if !number(bus) || !ports.split('.').all(number) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BusId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids() {
        for ok in ["1-1", "2-1.4", "10-3.2.1", "1-12"] {
            assert_eq!(BusId::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "usb1",
            "1-",
            "-1",
            "1-1.",
            "1-1:1.0",
            "1-a",
            "1-1/../x",
            "1--1",
            "1-1234",
            &"1-1.".repeat(20),
        ] {
            assert!(BusId::new(bad).is_err(), "{bad:?}");
        }
        assert!(BusId::new("x").unwrap_err().to_string().contains("bus id"));
    }
}
