//! The kernel's USB/IP drivers through sysfs: exporting a device (`usbip-host`, the side that
//! holds it) and importing one (`vhci-hcd`, the side that uses it). This is what the `usbip`
//! command-line tool does (its `bind`, `unbind` and `attach`), written here against sysfs so
//! that the stream is a socket we hold and check, not a TCP connection of the tool's.
//!
//! Exporting device BUSID (`<root>/bus/usb/...`):
//! 1. unbind it from its driver (normally the generic `usb`),
//! 2. `add BUSID` to `drivers/usbip-host/match_busid` and write BUSID to `.../bind`,
//! 3. write the number of a connected stream socket of this process to
//!    `devices/BUSID/usbip_sockfd`: the kernel takes the socket and speaks the URB phase of
//!    USB/IP on it.
//!
//! [`Sysfs::unexport`] undoes it: `-1` to `usbip_sockfd` (when still in use), unbind from
//! `usbip-host`, `del BUSID`, and `rebind` so the device's own drivers take it again.
//!
//! Importing: `devices/platform/vhci_hcd.0/status*` lists the virtual ports (`hs`/`ss`, port,
//! state); `port sockfd devid speed` written to `.../attach` plugs the device in at that port,
//! the port number written to `.../detach` unplugs it.
//!
//! Every file this reads is the kernel's own (never a domain's), but the lines are still
//! parsed without trusting their shape: a line that does not parse is skipped.

use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::usbip::{parse_descriptors, DescriptorError, DeviceEndpoints, MAX_DESCRIPTORS_LEN};
use crate::BusId;

/// The driver that exports devices.
pub const USBIP_HOST: &str = "usbip-host";
/// `vhci-hcd`'s state of a free port (`VDEV_ST_NULL`).
const VDEV_ST_NULL: u32 = 4;
/// How long usbip-host may take to end a connection (shut it down and reset the device).
pub const STUB_IDLE_WAIT: Duration = Duration::from_secs(10);
/// Time left to usbip's event worker after a device's status changed, before an unbind.
const STUB_SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("there is no USB device {0} in this kernel (unplugged?)")]
    NoDevice(BusId),
    #[error("{path} says {value:?}, which is not what it should hold")]
    Invalid { path: PathBuf, value: String },
    #[error("cannot load the kernel module {module}: {problem}")]
    Module { module: String, problem: String },
    #[error("{path}: {source}")]
    Descriptors {
        path: PathBuf,
        #[source]
        source: DescriptorError,
    },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: usize },
    #[error("vhci-hcd has no free {hub} port (every virtual port is in use)")]
    NoFreePort { hub: &'static str },
    #[error("usbip-host has not ended the connection of USB device {0} within {secs} s; it stays with usbip-host (detach it again later)", secs = STUB_IDLE_WAIT.as_secs())]
    StillConnected(BusId),
}

/// What an exported device tells the importing side (for `vhci-hcd`'s `attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedDevice {
    /// `busnum << 16 | devnum`.
    pub devid: u32,
    /// The kernel's `enum usb_device_speed`.
    pub speed: u32,
}

/// One virtual port of `vhci-hcd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhciPort {
    /// `hs` (USB 2 and slower) or `ss` (USB 3).
    pub hub: String,
    pub port: u32,
    pub state: u32,
    /// The bus id the device plugged in there has in this kernel (`3-1`), once it has one.
    pub local_busid: Option<BusId>,
}

/// A device node of a USB device: its name under `/dev` as the kernel gives it (`sdb`,
/// `input/event7`, `bus/usb/003/002`), its device number, and its sysfs directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceNode {
    pub devname: String,
    pub major: u32,
    pub minor: u32,
    pub sys_path: PathBuf,
}

impl DeviceNode {
    /// The raw USB device node (`bus/usb/BBB/DDD`, usbfs): whoever opens it can talk to the
    /// device directly, and detach the kernel's drivers from it.
    pub fn is_usbfs(&self) -> bool {
        self.devname.starts_with("bus/usb/")
    }

    /// The `bInterfaceProtocol` of the USB interface the node belongs to (1 keyboard, 2 mouse
    /// for boot-protocol HID), if it belongs to one.
    pub fn interface_protocol(&self) -> Option<u8> {
        // The first ancestor with the attribute (a HID device's own directory, named like
        // `0003:0627:0001.0001`, lies between the event node and the interface).
        let mut dir = self.sys_path.as_path();
        loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("bInterfaceProtocol")) {
                return u8::from_str_radix(text.trim(), 16).ok();
            }
            dir = dir.parent()?;
            if dir.join("devnum").exists() {
                return None; // up to the USB device itself: not below an interface
            }
        }
    }
}

/// Most sysfs directories walked below one USB device when looking for its nodes.
pub const MAX_SYSFS_WALK: usize = 4096;
/// Most device nodes of one USB device.
pub const MAX_DEVICE_NODES: usize = 64;

/// The kernel's speed code of a device's sysfs `speed` (Mbit/s): `1.5` low, `12` full,
/// `480` high, `53.3-480` wireless, `5000` super, `10000`/`20000` super-plus.
pub fn speed_code(mbits: &str) -> Option<u32> {
    match mbits.trim() {
        "1.5" => Some(1),
        "12" => Some(2),
        "480" => Some(3),
        "53.3-480" => Some(4),
        "5000" => Some(5),
        "10000" | "20000" => Some(6),
        _ => None,
    }
}

/// Parses `vhci-hcd`'s `status` file: a header line, then `hub port sta spd dev sockfd
/// local_busid` per port (`hs  0000 004 000 00000000 000000 0-0`).
pub fn parse_vhci_status(text: &str) -> Vec<VhciPort> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let hub = f.next()?;
            if hub != "hs" && hub != "ss" {
                return None;
            }
            let port = f.next()?.parse().ok()?;
            let state = f.next()?.parse().ok()?;
            // spd dev sockfd, then local_busid ("0-0" for none)
            let local_busid = f
                .nth(3)
                .and_then(|b| BusId::new(b).ok())
                .filter(|b| b.as_str() != "0-0");
            Some(VhciPort {
                hub: hub.to_owned(),
                port,
                state,
                local_busid,
            })
        })
        .collect()
}

/// The USB/IP drivers of the kernel whose sysfs is at `root` (normally `/sys`).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn device(&self, busid: &BusId) -> PathBuf {
        self.root.join("bus/usb/devices").join(busid.as_str())
    }

    fn stub_driver(&self) -> PathBuf {
        self.root.join("bus/usb/drivers").join(USBIP_HOST)
    }

    fn vhci(&self) -> PathBuf {
        self.root.join("devices/platform/vhci_hcd.0")
    }

    /// Loads `module` unless `present` exists already.
    fn ensure_module(&self, module: &str, present: &Path) -> Result<(), HostError> {
        if present.exists() {
            return Ok(());
        }
        let out = Command::new("modprobe")
            .arg(module)
            .output()
            .map_err(|e| HostError::Module {
                module: module.to_owned(),
                problem: format!("cannot run modprobe: {e}"),
            })?;
        if !out.status.success() || !present.exists() {
            return Err(HostError::Module {
                module: module.to_owned(),
                problem: format!(
                    "modprobe {module}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        info!(module, "kernel module loaded");
        Ok(())
    }

    /// The driver bound to `busid` (`usb`, `usbip-host`), if any.
    pub fn driver_of(&self, busid: &BusId) -> Option<String> {
        let link = std::fs::read_link(self.device(busid).join("driver")).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// The devices bound to `usbip-host` now (to clean up after a crash).
    pub fn exported(&self) -> Vec<BusId> {
        let Ok(entries) = std::fs::read_dir(self.stub_driver()) else {
            return Vec::new();
        };
        let mut out: Vec<BusId> = entries
            .filter_map(|e| BusId::new(&e.ok()?.file_name().to_string_lossy()).ok())
            .collect();
        out.sort();
        out
    }

    /// Binds `busid` to `usbip-host` and hands the kernel the connected stream socket
    /// `sockfd` (a descriptor of this process; the kernel takes its own reference, so the
    /// caller closes its copy afterwards). On an error after the unbind the device is given
    /// back to its drivers.
    pub fn export(&self, busid: &BusId, sockfd: RawFd) -> Result<ExportedDevice, HostError> {
        let dev = self.device(busid);
        if !dev.exists() {
            return Err(HostError::NoDevice(busid.clone()));
        }
        let stub = self.stub_driver();
        self.ensure_module("usbip-host", &stub)?;
        let busnum: u32 = self.read_number(&dev.join("busnum"))?;
        let devnum: u32 = self.read_number(&dev.join("devnum"))?;
        let speed_path = dev.join("speed");
        let speed_text = read(&speed_path)?;
        let speed = speed_code(&speed_text).ok_or(HostError::Invalid {
            path: speed_path,
            value: speed_text,
        })?;
        let device = ExportedDevice {
            devid: (busnum << 16) | devnum,
            speed,
        };
        let bind = || -> Result<(), HostError> {
            match self.driver_of(busid).as_deref() {
                Some(USBIP_HOST) => {}
                Some(_) => {
                    write(&dev.join("driver/unbind"), busid.as_str())?;
                    write(&stub.join("match_busid"), &format!("add {busid}"))?;
                    write(&stub.join("bind"), busid.as_str())?;
                }
                None => {
                    write(&stub.join("match_busid"), &format!("add {busid}"))?;
                    write(&stub.join("bind"), busid.as_str())?;
                }
            }
            write(&dev.join("usbip_sockfd"), &sockfd.to_string())
        };
        if let Err(e) = bind() {
            if let Err(undo) = self.unexport(busid) {
                warn!(busid = %busid, error = %undo, "cannot give the device back after a failed export");
            }
            return Err(e);
        }
        info!(busid = %busid, devid = device.devid, speed, "USB device exported (usbip-host)");
        Ok(device)
    }

    /// Stops exporting `busid` and leaves it without a driver (the first half of
    /// [`Self::unexport`]). The caller has closed its end of the connection: usbip-host then
    /// shuts the connection down and resets the device in usbip's event worker, and only
    /// after that (the device's `usbip_status` no longer "used") is it unbound. An unbind,
    /// or a `usbip_sockfd -1`, while that worker still has an event of the device queued or
    /// running queues a second one, and the kernel (seen on 6.1) can free the device with
    /// that second event still on its list: the worker then crashes on freed memory (an oops
    /// in dom0's kernel, seen in L1). So a connection still in use after [`STUB_IDLE_WAIT`]
    /// is an error and the device stays with usbip-host, bound but connected to no one.
    pub fn unexport_unbound(&self, busid: &BusId) -> Result<(), HostError> {
        if self.driver_of(busid).as_deref() == Some(USBIP_HOST) {
            if !self.wait_stub_idle(busid, STUB_IDLE_WAIT) {
                return Err(HostError::StillConnected(busid.clone()));
            }
            // The worker touches the device for a moment after setting its status.
            std::thread::sleep(STUB_SETTLE);
        }
        self.unbind_from_stub(busid)
    }

    /// Waits until usbip-host no longer uses a connection for `busid` (its `usbip_status`
    /// is not 2, "used"; a missing or unreadable status counts as not used). True if so
    /// within `limit`.
    fn wait_stub_idle(&self, busid: &BusId, limit: Duration) -> bool {
        let status = self.device(busid).join("usbip_status");
        let t0 = std::time::Instant::now();
        loop {
            let used = read(&status).is_ok_and(|v| v.trim() == "2");
            if !used {
                return true;
            }
            if t0.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes `busid` from `usbip-host` without ending its connection first: the driver's
    /// removal closes the connection itself and, unlike an end of the connection or
    /// `usbip_sockfd -1`, does not reset the device. For a device that is itself behind
    /// `vhci-hcd` (a usb VM passing on what it imported): that reset would run in usbip's
    /// single event worker, wait on the device's own import, and hold up that import's
    /// detach for minutes. Left without a driver, like [`Self::unexport_unbound`].
    pub fn unbind_from_stub(&self, busid: &BusId) -> Result<(), HostError> {
        let stub = self.stub_driver();
        if self.driver_of(busid).as_deref() == Some(USBIP_HOST) {
            write(&stub.join("unbind"), busid.as_str())?;
        }
        if stub.exists() {
            // The kernel refuses a `del` of a bus id it does not match; nothing to undo then.
            let _ = write(&stub.join("match_busid"), &format!("del {busid}"));
        }
        Ok(())
    }

    /// Stops exporting `busid` and gives it back to its own drivers. Does what is needed of
    /// that and no more: safe on a device that is not exported, or no longer plugged in.
    pub fn unexport(&self, busid: &BusId) -> Result<(), HostError> {
        self.unexport_unbound(busid)?;
        let dev = self.device(busid);
        let stub = self.stub_driver();
        if stub.exists() && dev.exists() && self.driver_of(busid).is_none() {
            if let Err(e) = write(&stub.join("rebind"), busid.as_str()) {
                debug!(busid = %busid, error = %e, "rebind refused; probing the bus instead");
                write(&self.root.join("bus/usb/drivers_probe"), busid.as_str())?;
            }
            if let Some(d) = self.driver_of(busid).filter(|d| d == USBIP_HOST) {
                warn!(busid = %busid, driver = %d, "the device went back to usbip-host instead of its own drivers");
            }
        }
        info!(busid = %busid, "USB device no longer exported");
        Ok(())
    }

    /// `vhci-hcd`'s virtual ports (every controller's `status*` file).
    pub fn vhci_ports(&self) -> Result<Vec<VhciPort>, HostError> {
        let dir = self.vhci();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| HostError::Read {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                (name == "status" || name.starts_with("status.")).then(|| e.path())
            })
            .collect();
        files.sort();
        let mut ports = Vec::new();
        for f in files {
            ports.extend(parse_vhci_status(&read(&f)?));
        }
        Ok(ports)
    }

    /// Plugs the device that `sockfd` (a connected stream socket of this process) leads to
    /// into a free port of `vhci-hcd`: a `ss` port for USB 3 speeds, else a `hs` one.
    /// Returns the port.
    pub fn vhci_attach(&self, sockfd: RawFd, devid: u32, speed: u32) -> Result<u32, HostError> {
        let vhci = self.vhci();
        self.ensure_module("vhci-hcd", &vhci)?;
        // vhci-hcd (Linux 6.1) takes no SuperSpeed-Plus: such a device runs at SuperSpeed.
        let speed = speed.min(5);
        let hub = if speed == 5 { "ss" } else { "hs" };
        let port = self
            .vhci_ports()?
            .into_iter()
            .find(|p| p.hub == hub && p.state == VDEV_ST_NULL)
            .ok_or(HostError::NoFreePort { hub })?
            .port;
        write(
            &vhci.join("attach"),
            &format!("{port} {sockfd} {devid} {speed}"),
        )?;
        info!(port, devid, speed, "USB device attached to vhci-hcd");
        Ok(port)
    }

    /// Unplugs the device at `port`; nothing to do when the port is free already.
    pub fn vhci_detach(&self, port: u32) -> Result<(), HostError> {
        let in_use = self
            .vhci_ports()?
            .iter()
            .any(|p| p.port == port && p.state != VDEV_ST_NULL);
        if in_use {
            write(&self.vhci().join("detach"), &port.to_string())?;
            info!(port, "USB device detached from vhci-hcd");
        }
        Ok(())
    }

    /// Unplugs `busid` logically and plugs it in again (`authorized` 0, then 1): its drivers
    /// let go of it and bind again, so every descriptor opened on its old nodes (an input
    /// device's, say) stops working; the nodes are made anew, owned as the kernel makes them.
    pub fn reauthorize(&self, busid: &BusId) -> Result<(), HostError> {
        let f = self.device(busid).join("authorized");
        write(&f, "0")?;
        write(&f, "1")
    }

    /// The endpoint model of `busid` for [`crate::usbip::GuardLimits::endpoints`]: its raw
    /// `descriptors` (parsed with [`crate::usbip::parse_descriptors`]), the active
    /// configuration (`bConfigurationValue`, empty when unconfigured) and the current
    /// altsetting of each interface of it (`BUSID:C.I/bAlternateSetting`). A file that is
    /// missing or does not parse is an error: the caller refuses the attach.
    pub fn endpoint_map(&self, busid: &BusId) -> Result<DeviceEndpoints, HostError> {
        let dev = self.device(busid);
        if !dev.exists() {
            return Err(HostError::NoDevice(busid.clone()));
        }
        let path = dev.join("descriptors");
        let raw = read_bounded(&path, MAX_DESCRIPTORS_LEN)?;
        let descriptors =
            parse_descriptors(&raw).map_err(|source| HostError::Descriptors { path, source })?;
        let config_path = dev.join("bConfigurationValue");
        let text = read(&config_path)?;
        let config: u8 = if text.trim().is_empty() {
            0
        } else {
            text.trim().parse().map_err(|_| HostError::Invalid {
                path: config_path.clone(),
                value: text.clone(),
            })?
        };
        let mut alts = Vec::new();
        if config != 0 {
            let c = descriptors.config(config).ok_or(HostError::Invalid {
                path: config_path,
                value: text,
            })?;
            for iface in &c.interfaces {
                let p = dev
                    .join(format!("{busid}:{config}.{}", iface.number))
                    .join("bAlternateSetting");
                let alt: u8 = self
                    .read_number(&p)?
                    .try_into()
                    .map_err(|_| HostError::Invalid {
                        path: p.clone(),
                        value: "beyond 255".into(),
                    })?;
                if !iface.alts.iter().any(|a| a.alt == alt) {
                    return Err(HostError::Invalid {
                        path: p,
                        value: alt.to_string(),
                    });
                }
                alts.push((iface.number, alt));
            }
        }
        Ok(DeviceEndpoints::new(descriptors, config, &alts))
    }

    /// The bus id this kernel gave the device plugged into `port`, once it enumerated.
    pub fn vhci_device(&self, port: u32) -> Result<Option<BusId>, HostError> {
        Ok(self
            .vhci_ports()?
            .into_iter()
            .find(|p| p.port == port)
            .and_then(|p| p.local_busid))
    }

    /// The device nodes of USB device `busid` and everything below it (its interfaces' disks,
    /// partitions, input devices, ...): every `uevent` with a `DEVNAME=` in its sysfs subtree.
    /// Symlinks in the tree are not followed; the walk is bounded ([`MAX_SYSFS_WALK`],
    /// [`MAX_DEVICE_NODES`]).
    pub fn device_nodes(&self, busid: &BusId) -> Vec<DeviceNode> {
        let Ok(top) = std::fs::canonicalize(self.device(busid)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut todo = vec![top];
        let mut walked = 0;
        while let Some(dir) = todo.pop() {
            walked += 1;
            if walked > MAX_SYSFS_WALK || out.len() >= MAX_DEVICE_NODES {
                warn!(busid = %busid, "stopped looking for device nodes: too many entries");
                break;
            }
            if let Ok(text) = std::fs::read_to_string(dir.join("uevent")) {
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(|v| v.trim().to_owned())
                };
                let number = |k: &str| field(k).and_then(|v| v.parse::<u32>().ok());
                if let (Some(devname), Some(major), Some(minor)) =
                    (field("DEVNAME="), number("MAJOR="), number("MINOR="))
                {
                    out.push(DeviceNode {
                        devname,
                        major,
                        minor,
                        sys_path: dir.clone(),
                    });
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Loads the drivers of `busid`'s interfaces by their `modalias` (what udev does when a
    /// device appears; a dom0 without udev needs it). Failures are logged only: a device
    /// without a driver still has its raw node.
    pub fn load_drivers(&self, busid: &BusId) {
        let dev = self.device(busid);
        let Ok(entries) = std::fs::read_dir(&dev) else {
            return;
        };
        let prefix = format!("{busid}:");
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let Ok(alias) = std::fs::read_to_string(e.path().join("modalias")) else {
                continue;
            };
            let alias = alias.trim();
            if alias.is_empty() || alias.len() > 256 || !alias.is_ascii() {
                continue;
            }
            match Command::new("modprobe").args(["-bq", alias]).status() {
                Ok(s) if s.success() => debug!(busid = %busid, alias, "driver loaded"),
                Ok(s) => debug!(busid = %busid, alias, %s, "no driver for this interface"),
                Err(e) => warn!(error = %e, "cannot run modprobe"),
            }
        }
    }

    fn read_number(&self, path: &Path) -> Result<u32, HostError> {
        let text = read(path)?;
        text.trim().parse().map_err(|_| HostError::Invalid {
            path: path.to_owned(),
            value: text,
        })
    }
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The bytes of `path`, at most `limit` of them (more is an error).
fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, HostError> {
    use std::io::Read;
    let err = |source| HostError::Read {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut out = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() > limit {
        return Err(HostError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(out)
}

/// One `write(2)` of `value` (sysfs takes an attribute in one write).
fn write(path: &Path, value: &str) -> Result<(), HostError> {
    let err = |source| HostError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    let n = f.write(value.as_bytes()).map_err(err)?;
    if n != value.len() {
        return Err(err(std::io::Error::other(format!(
            "the kernel took {n} of {} bytes",
            value.len()
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds() {
        for (s, c) in [
            ("1.5", 1),
            ("12\n", 2),
            ("480", 3),
            ("5000", 5),
            ("10000", 6),
        ] {
            assert_eq!(speed_code(s), Some(c), "{s}");
        }
        assert_eq!(speed_code("7"), None);
    }

    #[test]
    fn vhci_status_lines() {
        let text = "hub port sta spd dev      sockfd local_busid\n\
                    hs  0000 004 000 00000000 000000 0-0\n\
                    hs  0001 006 003 00010002 000011 1-2\n\
                    ss  0015 004 000 00000000 000000 0-0\n\
                    garbage line\n\
                    hs  zz 004\n";
        let ports = parse_vhci_status(text);
        assert_eq!(
            ports,
            vec![
                VhciPort {
                    hub: "hs".into(),
                    port: 0,
                    state: 4,
                    local_busid: None,
                },
                VhciPort {
                    hub: "hs".into(),
                    port: 1,
                    state: 6,
                    local_busid: Some(BusId::new("1-2").unwrap()),
                },
                VhciPort {
                    hub: "ss".into(),
                    port: 15,
                    state: 4,
                    local_busid: None,
                },
            ]
        );
    }

    /// A recorded-shape vhci-hcd directory: attach picks the first free port of the right hub
    /// and writes the kernel's line; detach writes the port only when it is in use.
    #[test]
    fn vhci_attach_and_detach_write_what_the_kernel_reads() {
        let root = tempfile::tempdir().unwrap();
        let vhci = root.path().join("devices/platform/vhci_hcd.0");
        std::fs::create_dir_all(&vhci).unwrap();
        std::fs::write(
            vhci.join("status"),
            "hub port sta spd dev      sockfd local_busid\n\
             hs  0000 006 003 00010002 000011 1-2\n\
             hs  0001 004 000 00000000 000000 0-0\n\
             ss  0015 004 000 00000000 000000 0-0\n",
        )
        .unwrap();
        for f in ["attach", "detach"] {
            std::fs::write(vhci.join(f), "").unwrap();
        }
        let s = Sysfs::new(root.path());
        assert_eq!(s.vhci_attach(7, 0x10003, 3).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(vhci.join("attach")).unwrap(),
            "1 7 65539 3"
        );
        assert_eq!(s.vhci_attach(7, 0x10003, 5).unwrap(), 15);
        s.vhci_detach(1).unwrap();
        assert_eq!(std::fs::read_to_string(vhci.join("detach")).unwrap(), "");
        s.vhci_detach(0).unwrap();
        assert_eq!(std::fs::read_to_string(vhci.join("detach")).unwrap(), "0");
        std::fs::write(
            vhci.join("status"),
            "hub port sta\nhs  0000 006\nss  0015 004\n",
        )
        .unwrap();
        let e = s.vhci_attach(7, 1, 2).unwrap_err();
        assert!(e.to_string().contains("no free hs port"), "{e}");
    }

    /// Taking a device from usbip-host: `unbind_from_stub` only unbinds, `unexport_unbound`
    /// waits for the connection to have ended (and never queues a second event when it has);
    /// both leave the bus id out of `match_busid`, neither touches another driver's device.
    #[test]
    fn unbinding_from_the_stub_with_and_without_ending_the_connection() {
        let root = tempfile::tempdir().unwrap();
        let stub = root.path().join("bus/usb/drivers/usbip-host");
        let dev = root.path().join("bus/usb/devices/2-1");
        std::fs::create_dir_all(&stub).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let reset = |driver: &Path| {
            for f in [
                stub.join("unbind"),
                stub.join("match_busid"),
                dev.join("usbip_sockfd"),
            ] {
                std::fs::write(f, "").unwrap();
            }
            let _ = std::fs::remove_file(dev.join("driver"));
            std::os::unix::fs::symlink(driver, dev.join("driver")).unwrap();
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let s = Sysfs::new(root.path());
        let b = BusId::new("2-1").unwrap();

        reset(&stub);
        s.unbind_from_stub(&b).unwrap();
        assert_eq!(read(stub.join("unbind")), "2-1");
        assert_eq!(read(stub.join("match_busid")), "del 2-1");
        assert_eq!(read(dev.join("usbip_sockfd")), "", "no reset");

        // The connection ended (status 1, available): unbound without a `-1`.
        reset(&stub);
        std::fs::write(dev.join("usbip_status"), "1\n").unwrap();
        s.unexport_unbound(&b).unwrap();
        assert_eq!(read(dev.join("usbip_sockfd")), "", "no second event");
        assert_eq!(read(stub.join("unbind")), "2-1");
        // Still in use: waited for (the fake kernel never ends it).
        reset(&stub);
        std::fs::write(dev.join("usbip_status"), "2\n").unwrap();
        assert!(!s.wait_stub_idle(&b, Duration::from_millis(120)));
        std::fs::write(dev.join("usbip_status"), "3\n").unwrap();
        assert!(
            s.wait_stub_idle(&b, Duration::from_millis(120)),
            "error is not in use"
        );

        reset(&root.path().join("bus/usb/drivers/usb-storage"));
        s.unbind_from_stub(&b).unwrap();
        assert_eq!(read(stub.join("unbind")), "", "another driver's device");
    }

    /// The nodes of a device are the DEVNAMEs of its subtree; symlinks are not followed.
    #[test]
    fn device_nodes_of_a_subtree() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("devices/pci0/usb3/3-1");
        for d in [
            "3-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb/sdb1",
            "3-1:1.1/0003:0627:0001.0001/input/input9/event9",
        ] {
            std::fs::create_dir_all(real.join(d)).unwrap();
        }
        std::fs::write(
            real.join("uevent"),
            "MAJOR=189\nMINOR=257\nDEVNAME=bus/usb/003/002\n",
        )
        .unwrap();
        std::fs::write(
            real.join("3-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb/uevent"),
            "MAJOR=8\nMINOR=16\nDEVNAME=sdb\n",
        )
        .unwrap();
        std::fs::write(
            real.join("3-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb/sdb1/uevent"),
            "MAJOR=8\nMINOR=17\nDEVNAME=sdb1\n",
        )
        .unwrap();
        std::fs::write(
            real.join("3-1:1.1/0003:0627:0001.0001/input/input9/event9/uevent"),
            "MAJOR=13\nMINOR=73\nDEVNAME=input/event9\n",
        )
        .unwrap();
        std::fs::write(real.join("3-1:1.1/bInterfaceProtocol"), "02\n").unwrap();
        std::fs::write(real.join("devnum"), "2\n").unwrap();
        // a link out of the subtree (sysfs has many: driver, subsystem, port)
        let elsewhere = root.path().join("devices/other");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("uevent"), "MAJOR=8\nMINOR=0\nDEVNAME=sda\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, real.join("port")).unwrap();
        std::fs::create_dir_all(root.path().join("bus/usb/devices")).unwrap();
        std::os::unix::fs::symlink(&real, root.path().join("bus/usb/devices/3-1")).unwrap();
        let s = Sysfs::new(root.path());
        let nodes = s.device_nodes(&BusId::new("3-1").unwrap());
        let names: Vec<&str> = nodes.iter().map(|n| n.devname.as_str()).collect();
        assert_eq!(names, ["bus/usb/003/002", "input/event9", "sdb", "sdb1"]);
        assert!(nodes[0].is_usbfs() && !nodes[2].is_usbfs());
        assert_eq!((nodes[2].major, nodes[2].minor), (8, 16));
        assert_eq!(
            nodes[1].interface_protocol(),
            Some(2),
            "the mouse interface"
        );
        assert_eq!(nodes[0].interface_protocol(), None, "the device itself");
        assert!(s.device_nodes(&BusId::new("3-2").unwrap()).is_empty());
    }

    /// The endpoint map of a recorded-shape device: descriptors, active configuration and
    /// the altsettings sysfs shows; errors refuse the attach.
    #[test]
    fn endpoint_map_from_sysfs() {
        use crate::usbip::endpoints_build as build;
        use crate::usbip::TransferType;
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("bus/usb/devices/1-4");
        std::fs::create_dir_all(dev.join("1-4:1.0")).unwrap();
        std::fs::create_dir_all(dev.join("1-4:1.1")).unwrap();
        std::fs::write(dev.join("descriptors"), build::audio()).unwrap();
        std::fs::write(dev.join("bConfigurationValue"), "1\n").unwrap();
        std::fs::write(dev.join("1-4:1.0/bAlternateSetting"), " 0\n").unwrap();
        std::fs::write(dev.join("1-4:1.1/bAlternateSetting"), " 1\n").unwrap();
        let s = Sysfs::new(root.path());
        let b = BusId::new("1-4").unwrap();
        let m = s.endpoint_map(&b).unwrap();
        assert_eq!(m.active_config(), Some(1));
        assert_eq!(m.current_alt(1), Some(1));
        assert_eq!(m.endpoint(2, true), Some(TransferType::Isochronous));
        assert_eq!(m.endpoint(3, true), Some(TransferType::Interrupt));
        // unconfigured: no endpoints
        std::fs::write(dev.join("bConfigurationValue"), "\n").unwrap();
        let m = s.endpoint_map(&b).unwrap();
        assert_eq!((m.active_config(), m.endpoint(3, true)), (Some(0), None));
        // an altsetting the descriptors lack, a configuration they lack, broken descriptors
        std::fs::write(dev.join("bConfigurationValue"), "1\n").unwrap();
        std::fs::write(dev.join("1-4:1.1/bAlternateSetting"), " 5\n").unwrap();
        assert!(matches!(s.endpoint_map(&b), Err(HostError::Invalid { .. })));
        std::fs::write(dev.join("1-4:1.1/bAlternateSetting"), " 0\n").unwrap();
        std::fs::write(dev.join("bConfigurationValue"), "2\n").unwrap();
        assert!(matches!(s.endpoint_map(&b), Err(HostError::Invalid { .. })));
        std::fs::write(dev.join("bConfigurationValue"), "1\n").unwrap();
        let mut raw = build::audio();
        raw.truncate(raw.len() - 3);
        std::fs::write(dev.join("descriptors"), raw).unwrap();
        let e = s.endpoint_map(&b).unwrap_err();
        assert!(matches!(e, HostError::Descriptors { .. }), "{e}");
        std::fs::write(dev.join("descriptors"), vec![0u8; MAX_DESCRIPTORS_LEN + 1]).unwrap();
        assert!(matches!(
            s.endpoint_map(&b),
            Err(HostError::TooLarge { .. })
        ));
        assert!(matches!(
            s.endpoint_map(&BusId::new("1-5").unwrap()),
            Err(HostError::NoDevice(_))
        ));
    }

    #[test]
    fn export_of_a_missing_device_says_so() {
        let root = tempfile::tempdir().unwrap();
        let s = Sysfs::new(root.path());
        let e = s.export(&BusId::new("1-1").unwrap(), 3).unwrap_err();
        assert!(matches!(e, HostError::NoDevice(_)), "{e}");
        assert!(s.exported().is_empty());
    }
}
