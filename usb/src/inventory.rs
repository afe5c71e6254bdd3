//! The USB devices of a sysfs tree.
//!
//! `<root>/bus/usb/devices` holds one entry per device (`1-1`, `2-1.4`), per interface
//! (`1-1:1.0`) and per root hub (`usb1`). Devices are read from their attribute files
//! (`idVendor`, `idProduct`, `manufacturer`, `product`, `serial`, `bDeviceClass`, `busnum`,
//! `devnum`, `speed`, ...) and their interfaces from the `<busid>:<config>.<n>` entries
//! (`bInterfaceClass`, `bInterfaceSubClass`, `bInterfaceProtocol`). Hubs are left out: they
//! are not attached to domains.
//!
//! The strings come from the device's descriptors, so from the device itself: every file is
//! read with a size limit ([`MAX_ATTR_BYTES`]), strings are cut to [`MAX_STRING_CHARS`] and
//! control characters are replaced. A device whose files break a rule is skipped, logged and
//! reported in [`Inventory::skipped`]; the others are still listed.

use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::BusId;

/// Largest attribute file read.
pub const MAX_ATTR_BYTES: u64 = 4096;
/// Longest descriptor string kept (longer ones are cut).
pub const MAX_STRING_CHARS: usize = 126;
/// Most devices listed; entries beyond are reported as skipped.
pub const MAX_DEVICES: usize = 256;
/// Most interfaces read per device.
pub const MAX_INTERFACES: usize = 32;
/// USB class code of HID interfaces.
pub const CLASS_HID: u8 = 0x03;
/// USB class code of hubs.
pub const CLASS_HUB: u8 = 0x09;

/// Whether an interface (or device) class moves data rather than input: mass storage
/// (0x08), still image (0x06, PTP/MTP file transfer), communications and CDC data
/// (0x02/0x0a: CDC ECM/NCM/ACM networks and modems), wireless controllers (0xe0: RNDIS,
/// Bluetooth) and the miscellaneous class's RNDIS (0xef/0x04). A device with any of these is
/// never an input device, whatever HID interfaces it also has.
pub fn is_data_class(class: u8, subclass: u8) -> bool {
    matches!(class, 0x02 | 0x06 | 0x08 | 0x0a | 0xe0) || (class == 0xef && subclass == 0x04)
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_ATTR_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("more than {MAX_DEVICES} USB devices; the rest are not listed")]
    TooMany,
}

/// One interface of the active configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub number: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
}

/// What a device is, as far as the usb domain's rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A HID boot keyboard interface (class 3, subclass 1, protocol 1).
    Keyboard,
    /// A HID boot mouse interface (3/1/2) and no keyboard.
    Mouse,
    /// Another HID device (it may still type or point: treated as input).
    OtherHid,
    /// A HID interface next to a storage or network interface (the class of the first such
    /// interface): a keyboard that is also a disk or a network card is not an input device.
    HidWithData(u8),
    /// Anything else; the class of the device or of its first interface.
    Other(u8),
}

impl DeviceKind {
    /// Keyboards, mice and every other HID device: input that reaches dom0 only if policy
    /// says so. Never a device that also has a storage or network interface
    /// ([`DeviceKind::HidWithData`]).
    pub fn is_input(self) -> bool {
        matches!(
            self,
            DeviceKind::Keyboard | DeviceKind::Mouse | DeviceKind::OtherHid
        )
    }

    /// A short name: `keyboard`, `mouse`, `hid`, `mass-storage`, `class 0xNN`, ...
    pub fn describe(self) -> String {
        match self {
            DeviceKind::Keyboard => "keyboard".into(),
            DeviceKind::Mouse => "mouse".into(),
            DeviceKind::OtherHid => "hid".into(),
            DeviceKind::HidWithData(c) => format!(
                "{} with a hid interface",
                class_name(c)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("class 0x{c:02x}"))
            ),
            DeviceKind::Other(c) => class_name(c)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("class 0x{c:02x}")),
        }
    }
}

/// Names of the USB-IF base classes that matter here.
pub fn class_name(class: u8) -> Option<&'static str> {
    Some(match class {
        0x01 => "audio",
        0x02 => "communications",
        0x03 => "hid",
        0x06 => "image",
        0x07 => "printer",
        0x08 => "mass-storage",
        0x09 => "hub",
        0x0a => "cdc-data",
        0x0b => "smart-card",
        0x0e => "video",
        0x0f => "healthcare",
        0x10 => "audio-video",
        0xe0 => "wireless",
        0xef => "miscellaneous",
        0xfe => "application-specific",
        0xff => "vendor-specific",
        _ => return None,
    })
}

/// One USB device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbDevice {
    pub busid: BusId,
    pub vendor_id: u16,
    pub product_id: u16,
    pub bcd_device: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub busnum: u32,
    pub devnum: u32,
    /// Mbit/s as sysfs writes it (`1.5`, `12`, `480`, `5000`, ...).
    pub speed: String,
    pub configuration_value: u8,
    pub num_configurations: u8,
    pub interfaces: Vec<Interface>,
    /// The driver bound to the device (e.g. `usb`, `usbip-host`).
    pub driver: Option<String>,
}

impl UsbDevice {
    pub fn kind(&self) -> DeviceKind {
        let hid: Vec<&Interface> = self
            .interfaces
            .iter()
            .filter(|i| i.class == CLASS_HID)
            .collect();
        let data = if is_data_class(self.device_class, self.device_subclass) {
            Some(self.device_class)
        } else {
            self.interfaces
                .iter()
                .find(|i| is_data_class(i.class, i.subclass))
                .map(|i| i.class)
        };
        if let Some(class) = data {
            if !hid.is_empty() || self.device_class == CLASS_HID {
                return DeviceKind::HidWithData(class);
            }
        }
        if hid.iter().any(|i| i.subclass == 1 && i.protocol == 1) {
            DeviceKind::Keyboard
        } else if hid.iter().any(|i| i.subclass == 1 && i.protocol == 2) {
            DeviceKind::Mouse
        } else if !hid.is_empty() || self.device_class == CLASS_HID {
            DeviceKind::OtherHid
        } else if self.device_class != 0 {
            DeviceKind::Other(self.device_class)
        } else {
            DeviceKind::Other(self.interfaces.first().map(|i| i.class).unwrap_or(0))
        }
    }

    /// `vvvv:pppp`.
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.product_id)
    }
}

/// The devices of a sysfs tree, and the entries that could not be read.
#[derive(Debug, Default)]
pub struct Inventory {
    pub devices: Vec<UsbDevice>,
    pub skipped: Vec<(String, InventoryError)>,
}

impl Inventory {
    pub fn get(&self, busid: &BusId) -> Option<&UsbDevice> {
        self.devices.iter().find(|d| &d.busid == busid)
    }
}

/// Read every USB device below `<sysfs_root>/bus/usb/devices` (sorted by bus id). No USB
/// bus at all (no such directory) is an empty inventory.
pub fn scan(sysfs_root: &Path) -> Result<Inventory, InventoryError> {
    let dir = sysfs_root.join("bus/usb/devices");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inventory::default()),
        Err(source) => return Err(InventoryError::Io { path: dir, source }),
    };
    let mut inv = Inventory::default();
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e = e.map_err(|source| InventoryError::Io {
            path: dir.clone(),
            source,
        })?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Interfaces (`1-1:1.0`) and root hubs (`usb1`) are not devices of their own here.
        if let Ok(busid) = BusId::new(&name) {
            names.push(busid.as_str().to_owned());
        }
    }
    names.sort();
    for name in names {
        if inv.devices.len() >= MAX_DEVICES {
            warn!(busid = %name, "{}", InventoryError::TooMany);
            inv.skipped.push((name, InventoryError::TooMany));
            continue;
        }
        let path = dir.join(&name);
        match read_device(&path, &name) {
            Ok(Some(d)) => inv.devices.push(d),
            Ok(None) => {}
            Err(e) => {
                warn!(busid = %name, error = %e, "skipping a USB device whose sysfs entry breaks the rules");
                inv.skipped.push((name, e));
            }
        }
    }
    Ok(inv)
}

/// Read one attribute file (limited), trimmed of the trailing newline; None if absent.
fn read_attr(dir: &Path, name: &str) -> Result<Option<String>, InventoryError> {
    let path = dir.join(name);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(InventoryError::Io { path, source }),
    };
    let mut buf = Vec::new();
    f.take(MAX_ATTR_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| InventoryError::Io {
            path: path.clone(),
            source,
        })?;
    if buf.len() as u64 > MAX_ATTR_BYTES {
        return Err(InventoryError::TooLarge { path });
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(Some(text.trim_end_matches(['\n', '\0']).to_owned()))
}

/// A descriptor string made safe to show: control characters replaced, cut to the limit,
/// None when empty.
fn clean_string(s: &str) -> Option<String> {
    let cleaned: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(MAX_STRING_CHARS)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

fn invalid(path: &Path, message: String) -> InventoryError {
    InventoryError::Invalid {
        path: path.to_owned(),
        message,
    }
}

fn hex_u16(dir: &Path, name: &str) -> Result<u16, InventoryError> {
    let v = read_attr(dir, name)?.ok_or_else(|| invalid(&dir.join(name), "missing".into()))?;
    let t = v.trim();
    if t.len() != 4 {
        return Err(invalid(
            &dir.join(name),
            format!("{t:?} is not 4 hex digits"),
        ));
    }
    u16::from_str_radix(t, 16)
        .map_err(|_| invalid(&dir.join(name), format!("{t:?} is not 4 hex digits")))
}

fn hex_u8(dir: &Path, name: &str) -> Result<u8, InventoryError> {
    let v = read_attr(dir, name)?.ok_or_else(|| invalid(&dir.join(name), "missing".into()))?;
    let t = v.trim();
    if t.is_empty() || t.len() > 2 {
        return Err(invalid(&dir.join(name), format!("{t:?} is not a hex byte")));
    }
    u8::from_str_radix(t, 16)
        .map_err(|_| invalid(&dir.join(name), format!("{t:?} is not a hex byte")))
}

fn dec<T: std::str::FromStr>(dir: &Path, name: &str) -> Result<T, InventoryError> {
    let v = read_attr(dir, name)?.ok_or_else(|| invalid(&dir.join(name), "missing".into()))?;
    v.trim()
        .parse()
        .map_err(|_| invalid(&dir.join(name), format!("{:?} is not a number", v.trim())))
}

fn opt_dec<T: std::str::FromStr + Default>(dir: &Path, name: &str) -> Result<T, InventoryError> {
    match read_attr(dir, name)? {
        None => Ok(T::default()),
        Some(v) if v.trim().is_empty() => Ok(T::default()),
        Some(_) => dec(dir, name),
    }
}

fn read_device(path: &Path, busid: &str) -> Result<Option<UsbDevice>, InventoryError> {
    let busid = BusId::new(busid).map_err(|e| invalid(path, e.to_string()))?;
    let device_class = hex_u8(path, "bDeviceClass")?;
    if device_class == CLASS_HUB {
        return Ok(None);
    }
    let speed = read_attr(path, "speed")?.unwrap_or_default();
    let speed = speed.trim();
    if speed.len() > 8 || !speed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(invalid(
            &path.join("speed"),
            format!("{speed:?} is not a speed"),
        ));
    }
    let string = |n: &str| -> Result<Option<String>, InventoryError> {
        Ok(read_attr(path, n)?.and_then(|s| clean_string(&s)))
    };
    let mut dev = UsbDevice {
        vendor_id: hex_u16(path, "idVendor")?,
        product_id: hex_u16(path, "idProduct")?,
        bcd_device: match read_attr(path, "bcdDevice")? {
            Some(_) => hex_u16(path, "bcdDevice")?,
            None => 0,
        },
        manufacturer: string("manufacturer")?,
        product: string("product")?,
        serial: string("serial")?,
        device_class,
        device_subclass: hex_u8(path, "bDeviceSubClass")?,
        device_protocol: hex_u8(path, "bDeviceProtocol")?,
        busnum: dec(path, "busnum")?,
        devnum: dec(path, "devnum")?,
        speed: speed.to_owned(),
        configuration_value: opt_dec(path, "bConfigurationValue")?,
        num_configurations: opt_dec(path, "bNumConfigurations")?,
        interfaces: Vec::new(),
        driver: driver_of(path),
        busid,
    };
    dev.interfaces = read_interfaces(path, dev.busid.as_str())?;
    Ok(Some(dev))
}

/// The name of the driver a sysfs entry is bound to (the `driver` link's last component).
fn driver_of(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path.join("driver")).ok()?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(clean_string)
}

/// Interfaces: `<busid>:<config>.<n>` entries inside the device directory.
fn read_interfaces(path: &Path, busid: &str) -> Result<Vec<Interface>, InventoryError> {
    let prefix = format!("{busid}:");
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(source) => {
            return Err(InventoryError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    if names.len() > MAX_INTERFACES {
        return Err(invalid(
            path,
            format!(
                "{} interfaces; at most {MAX_INTERFACES} are read",
                names.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for n in names {
        let dir = path.join(&n);
        out.push(Interface {
            number: match read_attr(&dir, "bInterfaceNumber")? {
                Some(_) => hex_u8(&dir, "bInterfaceNumber")?,
                None => 0,
            },
            class: hex_u8(&dir, "bInterfaceClass")?,
            subclass: hex_u8(&dir, "bInterfaceSubClass")?,
            protocol: hex_u8(&dir, "bInterfaceProtocol")?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_cleaned() {
        assert_eq!(
            clean_string("  Logitech\u{1b}[2J ").as_deref(),
            Some("Logitech\u{fffd}[2J")
        );
        assert_eq!(clean_string(" \t "), None);
        assert_eq!(
            clean_string(&"x".repeat(500)).map(|s| s.len()),
            Some(MAX_STRING_CHARS)
        );
    }

    #[test]
    fn kinds() {
        let mut d = UsbDevice {
            busid: BusId::new("1-1").unwrap(),
            vendor_id: 1,
            product_id: 2,
            bcd_device: 0,
            manufacturer: None,
            product: None,
            serial: None,
            device_class: 0,
            device_subclass: 0,
            device_protocol: 0,
            busnum: 1,
            devnum: 2,
            speed: "12".into(),
            configuration_value: 1,
            num_configurations: 1,
            interfaces: vec![Interface {
                number: 0,
                class: 8,
                subclass: 6,
                protocol: 0x50,
            }],
            driver: None,
        };
        assert_eq!(d.kind(), DeviceKind::Other(8));
        assert_eq!(d.kind().describe(), "mass-storage");
        assert!(!d.kind().is_input());
        d.interfaces.push(Interface {
            number: 1,
            class: 3,
            subclass: 0,
            protocol: 0,
        });
        assert_eq!(d.kind(), DeviceKind::HidWithData(8));
        assert!(
            !d.kind().is_input(),
            "a storage stick with a HID interface is not input"
        );
        d.interfaces[1].subclass = 1;
        d.interfaces[1].protocol = 1;
        assert_eq!(d.kind(), DeviceKind::HidWithData(8));
        assert_eq!(d.kind().describe(), "mass-storage with a hid interface");
        d.interfaces[0].class = 0x0a;
        assert!(!d.kind().is_input(), "a keyboard with CDC data");
        d.interfaces[0] = Interface {
            number: 0,
            class: 0xef,
            subclass: 4,
            protocol: 1,
        };
        assert!(!d.kind().is_input(), "a keyboard with RNDIS");
        d.interfaces[0].subclass = 2; // IAD, not RNDIS
        assert_eq!(d.kind(), DeviceKind::Keyboard);
        d.interfaces[0] = Interface {
            number: 0,
            class: 8,
            subclass: 6,
            protocol: 0x50,
        };
        d.interfaces[1].subclass = 1;
        d.interfaces[1].protocol = 2;
        assert_eq!(d.kind(), DeviceKind::HidWithData(8));
        d.interfaces.remove(0);
        assert_eq!(d.kind(), DeviceKind::Mouse);
        d.interfaces[0] = Interface {
            number: 0,
            class: 3,
            subclass: 1,
            protocol: 1,
        };
        assert_eq!(d.kind(), DeviceKind::Keyboard);
        assert_eq!(DeviceKind::Other(0x42).describe(), "class 0x42");
    }
}
