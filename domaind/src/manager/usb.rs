//! The manager's side of USB attachments (see [`crate::usb`]): listing, attach, detach.

use std::sync::Arc;

use bulkhead_api::Error;
use bulkhead_policy::CallTarget;
use bulkhead_usb::BusId;
use tracing::info;

use crate::calls::{CallError, DOM0};
use crate::usb::{row, UsbRow};

use super::{lock, Manager};

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
