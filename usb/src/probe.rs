//! Does this kernel offer USB/IP?
//!
//! The side that holds a device (the usb domain) needs `usbip-host` (it exports a device:
//! `<sysfs>/bus/usb/drivers/usbip-host`), the side that uses it needs `vhci-hcd` (the virtual
//! host controller: `<sysfs>/devices/platform/vhci_hcd.0`). Either may be built in or a
//! module (`<sysfs>/module/usbip_host`, `<sysfs>/module/vhci_hcd`), loaded or listed in the
//! running kernel's `modules.dep` (then [`crate::host::Sysfs`] loads it when it is needed).
//! Nothing here loads a module; the message says what is missing.

use std::path::{Path, PathBuf};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbipSupport {
    /// `<sysfs>/bus/usb` exists (the kernel has USB at all).
    pub usb_bus: bool,
    /// `usbip-host` is loaded or built in.
    pub usbip_host: bool,
    /// `vhci-hcd` is loaded or built in.
    pub vhci_hcd: bool,
    /// `/lib/modules/<release>` exists (so `modprobe` could load what is missing).
    pub modules_dir: Option<PathBuf>,
}

impl UsbipSupport {
    /// Whether devices can be attached through USB/IP.
    pub fn usable(&self) -> bool {
        self.usbip_host && self.vhci_hcd
    }

    /// One plain sentence on what is missing and what to do; `None` when all is there.
    pub fn message(&self) -> Option<String> {
        if self.usable() {
            return None;
        }
        let mut missing = Vec::new();
        if !self.usbip_host {
            missing.push("usbip-host (exports a device from the usb domain)");
        }
        if !self.vhci_hcd {
            missing.push("vhci-hcd (the virtual USB controller of the receiving domain)");
        }
        let how = match &self.modules_dir {
            Some(d) => format!(
                "its modules ({}) do not have them either; use a kernel built with CONFIG_USBIP_HOST and CONFIG_USBIP_VHCI_HCD",
                d.display()
            ),
            None => "this kernel has no module directory (/lib/modules/<release>), so they would have to be built in; use a kernel with CONFIG_USBIP_HOST and CONFIG_USBIP_VHCI_HCD".to_owned(),
        };
        let bus = if self.usb_bus {
            ""
        } else {
            "this host has no USB bus at all (no /sys/bus/usb); "
        };
        Some(format!(
            "USB devices cannot be attached to domains here: {bus}the kernel lacks {}; {how}",
            missing.join(" and ")
        ))
    }
}

/// Probe the sysfs tree at `sysfs_root` (normally `/sys`) and `modules_root` (normally
/// `/lib/modules`) for the running kernel `release`.
pub fn probe_at(sysfs_root: &Path, modules_root: &Path, release: &str) -> UsbipSupport {
    let exists = |p: &str| sysfs_root.join(p).exists();
    let modules = modules_root.join(release);
    let modules_dir = (!release.is_empty() && modules.is_dir()).then_some(modules);
    // modules.dep names every module of the kernel (`kernel/drivers/usb/usbip/vhci-hcd.ko:`).
    let dep = modules_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("modules.dep")).ok())
        .unwrap_or_default();
    let has_module = |file: &str| {
        dep.lines().any(|l| {
            l.split(':')
                .next()
                .and_then(|p| p.rsplit('/').next())
                .is_some_and(|f| f.split(".ko").next() == Some(file))
        })
    };
    UsbipSupport {
        usb_bus: exists("bus/usb"),
        usbip_host: exists("bus/usb/drivers/usbip-host")
            || exists("module/usbip_host")
            || has_module("usbip-host"),
        vhci_hcd: exists("devices/platform/vhci_hcd.0")
            || exists("module/vhci_hcd")
            || has_module("vhci-hcd"),
        modules_dir,
    }
}

/// Probe the running kernel through `sysfs_root`.
pub fn probe(sysfs_root: &Path) -> UsbipSupport {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    probe_at(sysfs_root, Path::new("/lib/modules"), release.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_present() {
        let d = tempfile::tempdir().unwrap();
        let s = probe_at(d.path(), d.path(), "6.1.0");
        assert!(!s.usable());
        let m = s.message().unwrap();
        assert!(m.contains("usbip-host") && m.contains("vhci-hcd"), "{m}");
        assert!(m.contains("no USB bus") && m.contains("built in"), "{m}");
        std::fs::create_dir_all(d.path().join("bus/usb/drivers/usbip-host")).unwrap();
        std::fs::create_dir_all(d.path().join("6.1.0")).unwrap();
        let s = probe_at(d.path(), d.path(), "6.1.0");
        let m = s.message().unwrap();
        assert!(!m.contains("usbip-host (") && m.contains("vhci-hcd"), "{m}");
        assert!(m.contains("modules (") && m.contains("CONFIG_USBIP"), "{m}");
        std::fs::create_dir_all(d.path().join("module/vhci_hcd")).unwrap();
        let s = probe_at(d.path(), d.path(), "6.1.0");
        assert!(s.usable());
        assert_eq!(s.message(), None);
    }

    /// A module the kernel has but has not loaded counts: it is loaded when needed.
    #[test]
    fn modules_listed_in_modules_dep_count() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        std::fs::create_dir_all(sys.join("bus/usb")).unwrap();
        std::fs::create_dir_all(d.path().join("6.1.0")).unwrap();
        std::fs::write(
            d.path().join("6.1.0/modules.dep"),
            "kernel/drivers/usb/usbip/usbip-host.ko: kernel/drivers/usb/usbip/usbip-core.ko\n\
             kernel/drivers/usb/usbip/vhci-hcd-extra.ko:\n",
        )
        .unwrap();
        let s = probe_at(&sys, d.path(), "6.1.0");
        assert!(s.usbip_host && !s.vhci_hcd, "{s:?}");
        std::fs::write(
            d.path().join("6.1.0/modules.dep"),
            "kernel/drivers/usb/usbip/usbip-host.ko:\nkernel/drivers/usb/usbip/vhci-hcd.ko: x.ko\n",
        )
        .unwrap();
        assert!(probe_at(&sys, d.path(), "6.1.0").usable());
    }
}
