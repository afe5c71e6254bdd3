//! A device's endpoints as the exporting kernel sees them, for [`super::UrbGuard`].
//!
//! [`parse_descriptors`] reads the raw descriptors sysfs shows in
//! `/sys/bus/usb/devices/BUSID/descriptors` (the 18-byte device descriptor, then each
//! configuration descriptor with its interface and endpoint descriptors, `wTotalLength`
//! bytes per configuration) into [`DeviceDescriptors`], with explicit bounds
//! ([`MAX_DESCRIPTORS_LEN`], [`MAX_CONFIGS`], [`MAX_INTERFACES`], [`MAX_ALTSETTINGS`],
//! [`MAX_ENDPOINTS`]); a malformed file is an error.
//!
//! The parser keeps only endpoints the kernel keeps (`drivers/usb/core/config.c`): an
//! endpoint descriptor shorter than 7 bytes, with address 0 or reserved address bits, or
//! beyond the altsetting's `bNumEndpoints` (at most 30) is skipped. An endpoint address used
//! twice in one altsetting or by two interfaces of a configuration (the kernel keeps the
//! first) is left out of the model entirely: the guard then refuses it, which is stricter
//! than the kernel but never lets through a submit the kernel would not parse.
//!
//! [`DeviceEndpoints`] is the active configuration plus the current altsetting of each of its
//! interfaces; it answers which endpoints exist now ([`DeviceEndpoints::endpoint`]) and
//! follows `SET_CONFIGURATION` / `SET_INTERFACE`. When a change leaves the model unsure
//! (unknown configuration or altsetting) it *loses* the state: no endpoint but 0 exists until
//! a successful `SET_CONFIGURATION`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Largest descriptors file read.
pub const MAX_DESCRIPTORS_LEN: usize = 64 * 1024;
/// Most configurations of a device.
pub const MAX_CONFIGS: usize = 8;
/// Most interfaces of a configuration.
pub const MAX_INTERFACES: usize = 32;
/// Most altsettings of an interface.
pub const MAX_ALTSETTINGS: usize = 16;
/// Most endpoint descriptors of one altsetting.
pub const MAX_ENDPOINTS: usize = 32;
/// The kernel's cap on the endpoints of an altsetting (`USB_MAXENDPOINTS` less ep 0).
const KERNEL_MAX_ENDPOINTS: usize = 30;

const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;

/// A descriptors file that is not what the kernel writes, or beyond the bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    #[error("the descriptors are {len} bytes; the limit is {MAX_DESCRIPTORS_LEN}")]
    TooLong { len: usize },
    #[error("malformed USB descriptors at byte {at}: {problem}")]
    Malformed { at: usize, problem: String },
    #[error("more than {limit} {what}")]
    Limit { what: &'static str, limit: usize },
}

fn malformed(at: usize, problem: impl Into<String>) -> DescriptorError {
    DescriptorError::Malformed {
        at,
        problem: problem.into(),
    }
}

/// An endpoint's transfer type (`bmAttributes & 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferType {
    Control,
    Isochronous,
    Bulk,
    Interrupt,
}

impl TransferType {
    fn from_attributes(a: u8) -> Self {
        match a & 3 {
            0 => TransferType::Control,
            1 => TransferType::Isochronous,
            2 => TransferType::Bulk,
            _ => TransferType::Interrupt,
        }
    }
}

/// One endpoint of an altsetting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// `bEndpointAddress`: number in bits 0..=3, bit 7 set for IN.
    pub address: u8,
    pub kind: TransferType,
}

/// One altsetting of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AltSetting {
    pub alt: u8,
    pub endpoints: Vec<Endpoint>,
}

/// One interface of a configuration, its altsettings in descriptor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDescriptors {
    pub number: u8,
    pub alts: Vec<AltSetting>,
}

/// One configuration, its interfaces in descriptor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// `bConfigurationValue`.
    pub value: u8,
    pub interfaces: Vec<InterfaceDescriptors>,
}

impl Configuration {
    fn interface(&self, number: u8) -> Option<&InterfaceDescriptors> {
        self.interfaces.iter().find(|i| i.number == number)
    }
}

/// Every configuration of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescriptors {
    pub configs: Vec<Configuration>,
}

impl DeviceDescriptors {
    pub fn config(&self, value: u8) -> Option<&Configuration> {
        self.configs.iter().find(|c| c.value == value)
    }
}

/// Parses a sysfs `descriptors` file; see the module docs.
pub fn parse_descriptors(bytes: &[u8]) -> Result<DeviceDescriptors, DescriptorError> {
    if bytes.len() > MAX_DESCRIPTORS_LEN {
        return Err(DescriptorError::TooLong { len: bytes.len() });
    }
    let dev = bytes
        .get(..18)
        .ok_or_else(|| malformed(0, "shorter than a device descriptor"))?;
    if dev[0] != 18 || dev[1] != DT_DEVICE {
        return Err(malformed(0, "not a device descriptor"));
    }
    let mut configs: Vec<Configuration> = Vec::new();
    let mut at = 18;
    while at < bytes.len() {
        if configs.len() >= MAX_CONFIGS {
            return Err(DescriptorError::Limit {
                what: "configurations",
                limit: MAX_CONFIGS,
            });
        }
        let head = bytes
            .get(at..at + 9)
            .ok_or_else(|| malformed(at, "truncated configuration descriptor"))?;
        if head[0] < 9 || head[1] != DT_CONFIG {
            return Err(malformed(at, "not a configuration descriptor"));
        }
        let total = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if total < usize::from(head[0]) {
            return Err(malformed(at, format!("wTotalLength {total}")));
        }
        let body = bytes
            .get(at..at + total)
            .ok_or_else(|| malformed(at, format!("wTotalLength {total} beyond the file")))?;
        let config = parse_config(body, at)?;
        if configs.iter().any(|c| c.value == config.value) {
            return Err(malformed(
                at,
                format!("configuration {} twice", config.value),
            ));
        }
        configs.push(config);
        at += total;
    }
    Ok(DeviceDescriptors { configs })
}

/// Parses one configuration's `wTotalLength` bytes (`base`: their offset, for errors).
fn parse_config(body: &[u8], base: usize) -> Result<Configuration, DescriptorError> {
    let value = body[5];
    let mut interfaces: Vec<InterfaceDescriptors> = Vec::new();
    // (interface index, alt index, endpoints still kept by bNumEndpoints)
    let mut current: Option<(usize, usize, usize)> = None;
    // Endpoint descriptors seen since the last interface descriptor.
    let mut seen = 0usize;
    let mut at = usize::from(body[0]);
    while at < body.len() {
        let (len, kind) = match body.get(at..at + 2) {
            Some(h) => (usize::from(h[0]), h[1]),
            None => return Err(malformed(base + at, "truncated descriptor header")),
        };
        if len < 2 {
            return Err(malformed(base + at, format!("descriptor length {len}")));
        }
        let d = body
            .get(at..at + len)
            .ok_or_else(|| malformed(base + at, "descriptor beyond wTotalLength"))?;
        match kind {
            DT_INTERFACE if len >= 9 => {
                let (number, alt, num_ep) = (d[2], d[3], usize::from(d[4]));
                let i = match interfaces.iter().position(|i| i.number == number) {
                    Some(i) => i,
                    None => {
                        if interfaces.len() >= MAX_INTERFACES {
                            return Err(DescriptorError::Limit {
                                what: "interfaces in a configuration",
                                limit: MAX_INTERFACES,
                            });
                        }
                        interfaces.push(InterfaceDescriptors {
                            number,
                            alts: Vec::new(),
                        });
                        interfaces.len() - 1
                    }
                };
                let alts = &mut interfaces[i].alts;
                if alts.iter().any(|a| a.alt == alt) {
                    return Err(malformed(
                        base + at,
                        format!("interface {number} altsetting {alt} twice"),
                    ));
                }
                if alts.len() >= MAX_ALTSETTINGS {
                    return Err(DescriptorError::Limit {
                        what: "altsettings of an interface",
                        limit: MAX_ALTSETTINGS,
                    });
                }
                alts.push(AltSetting {
                    alt,
                    endpoints: Vec::new(),
                });
                current = Some((i, alts.len() - 1, num_ep.min(KERNEL_MAX_ENDPOINTS)));
                seen = 0;
            }
            DT_ENDPOINT => {
                seen += 1;
                if seen > MAX_ENDPOINTS {
                    return Err(DescriptorError::Limit {
                        what: "endpoints of an altsetting",
                        limit: MAX_ENDPOINTS,
                    });
                }
                // Before any interface, or short: the kernel skips it.
                if let (Some((i, a, left)), true) = (current.as_mut(), len >= 7) {
                    let address = d[2];
                    let number = address & 0x7f;
                    if number != 0 && number < 16 && *left > 0 {
                        interfaces[*i].alts[*a].endpoints.push(Endpoint {
                            address,
                            kind: TransferType::from_attributes(d[3]),
                        });
                        *left -= 1;
                    }
                }
            }
            _ => {}
        }
        at += len;
    }
    drop_ambiguous(&mut interfaces);
    Ok(Configuration { value, interfaces })
}

/// The key the kernel compares endpoints by: a control endpoint by number only.
fn ep_key(e: &Endpoint) -> u8 {
    if e.kind == TransferType::Control {
        e.address & 0x0f
    } else {
        e.address
    }
}

fn keys_overlap(a: &Endpoint, b: &Endpoint) -> bool {
    if a.kind == TransferType::Control || b.kind == TransferType::Control {
        a.address & 0x0f == b.address & 0x0f
    } else {
        a.address == b.address
    }
}

/// Removes endpoints whose address is used twice in one altsetting or by two interfaces.
fn drop_ambiguous(interfaces: &mut [InterfaceDescriptors]) {
    let mut bad: Vec<Endpoint> = Vec::new();
    for (ii, iface) in interfaces.iter().enumerate() {
        for alt in &iface.alts {
            for (k, e) in alt.endpoints.iter().enumerate() {
                let twice_here = alt.endpoints[..k].iter().any(|o| keys_overlap(e, o));
                let elsewhere = interfaces.iter().enumerate().any(|(jj, other)| {
                    jj != ii
                        && other
                            .alts
                            .iter()
                            .any(|a| a.endpoints.iter().any(|o| keys_overlap(e, o)))
                });
                if twice_here || elsewhere {
                    bad.push(*e);
                }
            }
        }
    }
    if bad.is_empty() {
        return;
    }
    for iface in interfaces.iter_mut() {
        for alt in &mut iface.alts {
            alt.endpoints
                .retain(|e| !bad.iter().any(|b| keys_overlap(e, b)));
        }
    }
}

/// A configuration change an importer asked for on ep 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// `SET_CONFIGURATION` (0: unconfigured), `wValue`.
    Configuration(u16),
    /// `SET_INTERFACE`: `wIndex`, `wValue`.
    Interface { interface: u16, alt: u16 },
}

impl ConfigChange {
    /// The change a control setup packet asks for, as the stub recognises it
    /// (`stub_rx.c`: `is_set_interface_cmd`, `is_set_configuration_cmd`).
    pub fn from_setup(setup: &[u8; 8]) -> Option<Self> {
        let value = u16::from_le_bytes([setup[2], setup[3]]);
        let index = u16::from_le_bytes([setup[4], setup[5]]);
        match (setup[0], setup[1]) {
            (0x00, 0x09) => Some(ConfigChange::Configuration(value)),
            (0x01, 0x0b) => Some(ConfigChange::Interface {
                interface: index,
                alt: value,
            }),
            _ => None,
        }
    }
}

/// The active configuration and the current altsettings of a device; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEndpoints {
    descriptors: Arc<DeviceDescriptors>,
    /// The active configuration (0: unconfigured); `None`: lost (no endpoints).
    config: Option<u8>,
    /// Current altsetting per interface of the active configuration.
    alts: BTreeMap<u8, u8>,
    /// The endpoints of the current altsettings: (number | 0x80 for IN) → type.
    table: HashMap<u8, TransferType>,
}

impl DeviceEndpoints {
    /// The model of `descriptors` with configuration `config` (0: unconfigured) active and
    /// `alts` (interface, altsetting) current; an interface not in `alts` is at its first
    /// altsetting 0. A configuration or altsetting the descriptors lack gives a lost model.
    pub fn new(descriptors: DeviceDescriptors, config: u8, alts: &[(u8, u8)]) -> Self {
        let mut m = Self {
            descriptors: Arc::new(descriptors),
            config: None,
            alts: BTreeMap::new(),
            table: HashMap::new(),
        };
        m.set_configuration(config.into());
        for &(interface, alt) in alts {
            m.set_interface(interface.into(), alt.into());
        }
        m
    }

    /// The descriptors this model follows.
    pub fn descriptors(&self) -> &DeviceDescriptors {
        &self.descriptors
    }

    /// The active configuration; `None` once a change left the model unsure.
    pub fn active_config(&self) -> Option<u8> {
        self.config
    }

    /// The current altsetting of `interface` in the active configuration.
    pub fn current_alt(&self, interface: u8) -> Option<u8> {
        self.config.and(self.alts.get(&interface).copied())
    }

    /// The type of endpoint `ep` (1..=15) in direction `is_in`, when the current altsettings
    /// have it. Endpoint 0 is not in the model (it always exists).
    pub fn endpoint(&self, ep: u32, is_in: bool) -> Option<TransferType> {
        let ep = u8::try_from(ep).ok().filter(|e| (1..16).contains(e))?;
        self.table
            .get(&(ep | if is_in { 0x80 } else { 0 }))
            .copied()
    }

    /// Whether `value` is a configuration of the device (or 0, unconfigured).
    pub fn has_config(&self, value: u16) -> bool {
        value == 0 || u8::try_from(value).is_ok_and(|v| self.descriptors.config(v).is_some())
    }

    /// Forgets the state: only endpoint 0 exists until a `SET_CONFIGURATION`.
    pub fn lose(&mut self) {
        self.config = None;
        self.alts.clear();
        self.table.clear();
    }

    /// Applies a change the device accepted.
    pub fn apply(&mut self, change: ConfigChange) {
        match change {
            ConfigChange::Configuration(c) => self.set_configuration(c),
            ConfigChange::Interface { interface, alt } => self.set_interface(interface, alt),
        }
    }

    /// `SET_CONFIGURATION`: every interface at altsetting 0 (the first one without a 0),
    /// as `usb_set_configuration` does.
    fn set_configuration(&mut self, value: u16) {
        self.lose();
        if value == 0 {
            self.config = Some(0);
            return;
        }
        let Some((value, c)) = u8::try_from(value)
            .ok()
            .and_then(|v| Some((v, self.descriptors.config(v)?)))
        else {
            return;
        };
        let alts = c
            .interfaces
            .iter()
            .filter_map(|i| {
                let alt = i
                    .alts
                    .iter()
                    .find(|a| a.alt == 0)
                    .or_else(|| i.alts.first())?;
                Some((i.number, alt.alt))
            })
            .collect();
        self.config = Some(value);
        self.alts = alts;
        self.rebuild();
    }

    fn set_interface(&mut self, interface: u16, alt: u16) {
        let (Ok(interface), Ok(alt)) = (u8::try_from(interface), u8::try_from(alt)) else {
            self.lose();
            return;
        };
        let known = self
            .config
            .and_then(|c| self.descriptors.config(c))
            .and_then(|c| c.interface(interface))
            .is_some_and(|i| i.alts.iter().any(|a| a.alt == alt));
        if known {
            self.alts.insert(interface, alt);
            self.rebuild();
        } else {
            self.lose();
        }
    }

    fn rebuild(&mut self) {
        self.table.clear();
        let Some(c) = self.config.and_then(|c| self.descriptors.config(c)) else {
            return;
        };
        for (&number, &alt) in &self.alts {
            let eps = c
                .interface(number)
                .and_then(|i| i.alts.iter().find(|a| a.alt == alt))
                .map(|a| a.endpoints.as_slice())
                .unwrap_or_default();
            for e in eps {
                // A control endpoint is both directions (`usb_enable_endpoint`).
                if e.kind == TransferType::Control {
                    self.table.insert(ep_key(e), e.kind);
                    self.table.insert(ep_key(e) | 0x80, e.kind);
                } else {
                    self.table.insert(e.address, e.kind);
                }
            }
        }
    }
}

/// Builders of raw descriptors, for tests here, in the guard and in `host`.
#[cfg(test)]
pub(crate) mod build {
    pub fn device(num_configs: u8) -> Vec<u8> {
        let mut d = vec![18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x81, 0x07, 0x58, 0x55, 0, 1];
        d.extend_from_slice(&[1, 2, 3, num_configs]);
        d
    }

    pub fn endpoint(address: u8, attributes: u8) -> Vec<u8> {
        vec![7, 5, address, attributes, 0x00, 0x02, 0]
    }

    /// An interface descriptor followed by its endpoints (bNumEndpoints = their count).
    pub fn interface(number: u8, alt: u8, class: u8, eps: &[Vec<u8>]) -> Vec<u8> {
        let mut d = vec![9, 4, number, alt, eps.len() as u8, class, 0, 0, 0];
        for e in eps {
            d.extend_from_slice(e);
        }
        d
    }

    pub fn config(value: u8, num_interfaces: u8, body: &[Vec<u8>]) -> Vec<u8> {
        let len: usize = 9 + body.iter().map(Vec::len).sum::<usize>();
        let mut d = vec![9, 2];
        d.extend_from_slice(&(len as u16).to_le_bytes());
        d.extend_from_slice(&[num_interfaces, value, 0, 0x80, 50]);
        for b in body {
            d.extend_from_slice(b);
        }
        d
    }

    /// A mass-storage device: bulk IN 0x81, bulk OUT 0x02.
    pub fn mass_storage() -> Vec<u8> {
        let mut d = device(1);
        d.extend(config(
            1,
            1,
            &[interface(0, 0, 8, &[endpoint(0x81, 2), endpoint(0x02, 2)])],
        ));
        d
    }

    /// An audio-like device: interface 0 (control) with interrupt IN 0x83; interface 1
    /// (streaming) with alt 0 empty and alt 1 an isochronous IN 0x82 (plus a class-specific
    /// descriptor between them, as audio devices have).
    pub fn audio() -> Vec<u8> {
        let mut d = device(1);
        d.extend(config(
            1,
            2,
            &[
                interface(0, 0, 1, &[endpoint(0x83, 3)]),
                interface(1, 0, 1, &[]),
                vec![7, 0x24, 1, 1, 1, 1, 0],
                interface(1, 1, 1, &[endpoint(0x82, 0x05)]),
            ],
        ));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn mass_storage_is_parsed() {
        let d = parse_descriptors(&mass_storage()).unwrap();
        assert_eq!(d.configs.len(), 1);
        let c = &d.configs[0];
        assert_eq!(c.value, 1);
        assert_eq!(
            c.interfaces[0].alts[0].endpoints,
            [
                Endpoint {
                    address: 0x81,
                    kind: TransferType::Bulk
                },
                Endpoint {
                    address: 0x02,
                    kind: TransferType::Bulk
                }
            ]
        );
        let m = DeviceEndpoints::new(d, 1, &[(0, 0)]);
        assert_eq!(m.endpoint(1, true), Some(TransferType::Bulk));
        assert_eq!(m.endpoint(2, false), Some(TransferType::Bulk));
        assert_eq!(m.endpoint(1, false), None);
        assert_eq!(m.endpoint(2, true), None);
        assert_eq!(m.endpoint(0, true), None);
        assert_eq!(m.endpoint(16, true), None);
    }

    #[test]
    fn audio_altsettings_switch() {
        let d = parse_descriptors(&audio()).unwrap();
        let c = &d.configs[0];
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[1].alts.len(), 2);
        let mut m = DeviceEndpoints::new(d.clone(), 1, &[]);
        assert_eq!(m.current_alt(1), Some(0));
        assert_eq!(m.endpoint(3, true), Some(TransferType::Interrupt));
        assert_eq!(m.endpoint(2, true), None);
        m.apply(ConfigChange::Interface {
            interface: 1,
            alt: 1,
        });
        assert_eq!(m.endpoint(2, true), Some(TransferType::Isochronous));
        assert_eq!(m.endpoint(3, true), Some(TransferType::Interrupt));
        // an unknown altsetting loses the model; SET_CONFIGURATION brings it back
        m.apply(ConfigChange::Interface {
            interface: 1,
            alt: 7,
        });
        assert_eq!(m.active_config(), None);
        assert_eq!(m.endpoint(3, true), None);
        m.apply(ConfigChange::Configuration(1));
        assert_eq!(m.endpoint(3, true), Some(TransferType::Interrupt));
        assert_eq!(m.endpoint(2, true), None);
        m.apply(ConfigChange::Configuration(0));
        assert_eq!((m.active_config(), m.endpoint(3, true)), (Some(0), None));
        // sysfs said alt 1 at attach time
        let m = DeviceEndpoints::new(d, 1, &[(1, 1)]);
        assert_eq!(m.endpoint(2, true), Some(TransferType::Isochronous));
    }

    #[test]
    fn setup_packets() {
        assert_eq!(
            ConfigChange::from_setup(&[0x01, 0x0b, 1, 0, 2, 0, 0, 0]),
            Some(ConfigChange::Interface {
                interface: 2,
                alt: 1
            })
        );
        assert_eq!(
            ConfigChange::from_setup(&[0x00, 0x09, 3, 0, 0, 0, 0, 0]),
            Some(ConfigChange::Configuration(3))
        );
        assert_eq!(
            ConfigChange::from_setup(&[0x80, 0x06, 0, 1, 0, 0, 18, 0]),
            None
        );
    }

    #[test]
    fn kernel_skips_are_mirrored() {
        let mut d = device(1);
        d.extend(config(
            1,
            2,
            &[
                // an endpoint before any interface; in interface 0 (bNumEndpoints 1): one
                // with address 0, one with reserved bits, a short one (none of them counts),
                // then 0x81, and 0x87 beyond bNumEndpoints
                endpoint(0x84, 2),
                {
                    let mut i = interface(0, 0, 0xff, &[endpoint(0x00, 2), endpoint(0x75, 2)]);
                    i[4] = 1;
                    i.extend(vec![5, 5, 0x86, 2, 0]);
                    i.extend(endpoint(0x81, 2));
                    i.extend(endpoint(0x87, 2));
                    i
                },
                // 0x02 in two interfaces: left out of both
                interface(1, 0, 0xff, &[endpoint(0x02, 2), endpoint(0x03, 1)]),
                interface(2, 0, 0xff, &[endpoint(0x02, 3)]),
            ],
        ));
        let m = DeviceEndpoints::new(parse_descriptors(&d).unwrap(), 1, &[]);
        assert_eq!(m.endpoint(1, true), Some(TransferType::Bulk));
        for (ep, is_in) in [(4, true), (5, true), (6, true), (7, true), (2, false)] {
            assert_eq!(m.endpoint(ep, is_in), None, "{ep} {is_in}");
        }
        assert_eq!(m.endpoint(3, false), Some(TransferType::Isochronous));
    }

    #[test]
    fn malformed_and_oversized_are_errors() {
        let good = mass_storage();
        let e = |b: &[u8]| parse_descriptors(b).unwrap_err();
        assert!(matches!(e(&good[..10]), DescriptorError::Malformed { .. }));
        // truncated: wTotalLength beyond the file
        assert!(matches!(
            e(&good[..good.len() - 1]),
            DescriptorError::Malformed { .. }
        ));
        // a zero-length descriptor inside a config
        let mut z = device(1);
        z.extend(config(1, 1, &[vec![0, 4, 0, 0]]));
        assert!(matches!(e(&z), DescriptorError::Malformed { .. }));
        // not a config descriptor where one should be
        let mut nc = good.clone();
        nc[19] = 4;
        assert!(matches!(e(&nc), DescriptorError::Malformed { .. }));
        // not a device descriptor
        let mut nd = good.clone();
        nd[1] = 2;
        assert!(matches!(e(&nd), DescriptorError::Malformed { .. }));
        // the same altsetting twice
        let mut twice = device(1);
        twice.extend(config(
            1,
            1,
            &[interface(0, 0, 8, &[]), interface(0, 0, 8, &[])],
        ));
        assert!(matches!(e(&twice), DescriptorError::Malformed { .. }));
        // the same configuration value twice
        let mut dup = device(2);
        dup.extend(config(1, 0, &[]));
        dup.extend(config(1, 0, &[]));
        assert!(matches!(e(&dup), DescriptorError::Malformed { .. }));
        // too long
        let mut long = good.clone();
        long.resize(MAX_DESCRIPTORS_LEN + 1, 0);
        assert!(matches!(e(&long), DescriptorError::TooLong { .. }));
    }

    #[test]
    fn limits_are_enforced() {
        let e = |b: &[u8]| parse_descriptors(b).unwrap_err();
        let mut many = device(9);
        for v in 1..=9 {
            many.extend(config(v, 0, &[]));
        }
        assert!(matches!(
            e(&many),
            DescriptorError::Limit {
                what: "configurations",
                ..
            }
        ));
        let ok = {
            let mut d = device(8);
            for v in 1..=8 {
                d.extend(config(v, 0, &[]));
            }
            d
        };
        assert_eq!(parse_descriptors(&ok).unwrap().configs.len(), 8);
        let ifaces: Vec<Vec<u8>> = (0..33).map(|n| interface(n, 0, 0xff, &[])).collect();
        let mut d = device(1);
        d.extend(config(1, 33, &ifaces));
        assert!(matches!(e(&d), DescriptorError::Limit { .. }));
        let alts: Vec<Vec<u8>> = (0..17).map(|a| interface(0, a, 0xff, &[])).collect();
        let mut d = device(1);
        d.extend(config(1, 1, &alts));
        assert!(matches!(e(&d), DescriptorError::Limit { .. }));
        // endpoints beyond the kernel's 30 are not kept (and not an error)
        let eps: Vec<Vec<u8>> = (1..=15u8)
            .flat_map(|n| [endpoint(n, 2), endpoint(0x80 | n, 2)])
            .chain([endpoint(0x81, 2)])
            .collect();
        let mut d = device(1);
        let mut i = interface(0, 0, 0xff, &eps);
        i[4] = 31;
        d.extend(config(1, 1, &[i]));
        let p = parse_descriptors(&d).unwrap();
        assert_eq!(p.configs[0].interfaces[0].alts[0].endpoints.len(), 30);
        // more than 32 endpoint descriptors in one altsetting: an error
        let eps: Vec<Vec<u8>> = (0..33).map(|_| endpoint(0x81, 2)).collect();
        let mut d = device(1);
        d.extend(config(1, 1, &[interface(0, 0, 0xff, &eps)]));
        assert!(matches!(
            e(&d),
            DescriptorError::Limit {
                what: "endpoints of an altsetting",
                ..
            }
        ));
    }
}
