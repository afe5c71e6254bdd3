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
use std::sync::{Arc, Mutex as StdMutex};

use bulkhead_api::Error;
use bulkhead_policy::CallTarget;
use bulkhead_usb::{BusId, UsbDevice};
use tracing::info;

use crate::calls::{CallError, DOM0};
use crate::manager::Manager;

/// One row of `UsbList`: busid, `vendor:product`, manufacturer, product, serial, class (with
/// `, attached to DOMAIN` when attached).
pub type UsbRow = (String, String, String, String, String, String);

/// Which device is attached where.
#[derive(Default)]
pub struct UsbState {
    attached: StdMutex<BTreeMap<String, String>>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn row(d: &UsbDevice, attached_to: Option<&String>) -> UsbRow {
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

impl Manager {
    async fn usb_inventory(&self) -> Result<bulkhead_usb::Inventory, Error> {
        let root = self.config().usb_sysfs_root.clone();
        tokio::task::spawn_blocking(move || bulkhead_usb::scan(&root))
            .await
            .map_err(|e| Error::Io(format!("internal task failed: {e}")))?
            .map_err(|e| Error::Io(format!("cannot list USB devices: {e}")))
    }

    /// `UsbList`.
    pub async fn usb_list(&self) -> Result<Vec<UsbRow>, Error> {
        let inv = self.usb_inventory().await?;
        let attached = lock(&self.usb_state().attached).clone();
        Ok(inv
            .devices
            .iter()
            .map(|d| row(d, attached.get(d.busid.as_str())))
            .collect())
    }

    /// `UsbStatus`: "" when USB/IP can be used, else what is missing and what to do.
    pub fn usb_status(&self) -> String {
        bulkhead_usb::probe(&self.config().usb_sysfs_root)
            .message()
            .unwrap_or_default()
    }

    /// `UsbAttach`: policy first, then the kernel.
    pub async fn usb_attach(self: &Arc<Self>, busid: &str, domain: &str) -> Result<(), Error> {
        let busid = BusId::new(busid).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        let inv = self.usb_inventory().await?;
        let dev = inv.get(&busid).ok_or_else(|| {
            Error::InvalidProperty(format!(
                "there is no USB device {busid} (see bulkhead usb list)"
            ))
        })?;
        if let Some(to) = lock(&self.usb_state().attached).get(busid.as_str()) {
            return Err(Error::InvalidState(format!(
                "USB device {busid} is attached to {to}; detach it first (bulkhead usb detach {busid})"
            )));
        }
        let usb_domain = self.config().usb_domain.clone();
        if self
            .store()
            .load_all()
            .0
            .iter()
            .all(|c| c.name.as_str() != usb_domain)
        {
            return Err(Error::NoSuchDomain(format!(
                "there is no usb domain '{usb_domain}' to hold the devices; create it (bulkhead create -C service -l red {usb_domain})"
            )));
        }
        let to_dom0 = domain == "dom0" || domain == DOM0;
        let source = if to_dom0 {
            if !dev.kind().is_input() {
                return Err(Error::AccessDenied(format!(
                    "USB device {busid} is a {}; dom0 takes only keyboards and mice from the usb domain",
                    dev.kind().describe()
                )));
            }
            DOM0.to_owned()
        } else {
            if self
                .store()
                .load_all()
                .0
                .iter()
                .all(|c| c.name.as_str() != domain)
            {
                return Err(Error::NoSuchDomain(format!(
                    "no domain named '{domain}' (see bulkhead ls)"
                )));
            }
            domain.to_owned()
        };
        let allow = self
            .decide(
                &source,
                &usb_domain,
                bulkhead_usb::ATTACH_SERVICE,
                busid.as_str(),
            )
            .await?;
        if !matches!(&allow.target, CallTarget::Domain(d) if d.as_str() == usb_domain) {
            return Err(CallError::Failed(format!(
                "the policy sent the attach of {busid} to {}, not to the usb domain {usb_domain}",
                allow.target
            ))
            .into());
        }
        info!(busid = %busid, domain, kind = %dev.kind().describe(), "USB attach allowed by policy");
        let support = bulkhead_usb::probe(&self.config().usb_sysfs_root);
        if let Some(msg) = support.message() {
            return Err(Error::Backend(format!(
                "the policy allows attaching {busid} to {domain}, but {msg}"
            )));
        }
        Err(Error::Backend(format!(
            "the policy allows attaching {busid} to {domain} and the kernel has USB/IP, but the USB/IP data path between domains is not implemented yet"
        )))
    }

    /// `UsbDetach`: give an attached device back to the usb domain.
    pub async fn usb_detach(&self, busid: &str) -> Result<(), Error> {
        let busid = BusId::new(busid).map_err(|e| Error::InvalidProperty(e.to_string()))?;
        match lock(&self.usb_state().attached).remove(busid.as_str()) {
            Some(dom) => {
                info!(busid = %busid, domain = %dom, "USB device detached");
                Ok(())
            }
            None => Err(Error::InvalidState(format!(
                "USB device {busid} is not attached to any domain (see bulkhead usb list)"
            ))),
        }
    }
}
