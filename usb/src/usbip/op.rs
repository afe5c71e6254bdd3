//! The operations phase: device records, `OP_REQ_DEVLIST` / `OP_REP_DEVLIST` and
//! `OP_REQ_IMPORT` / `OP_REP_IMPORT`, decoded and encoded.

use super::{
    invalid, limit, CodecError, Limits, Rd, BUSID_SIZE, DEVICE_SIZE, INTERFACE_SIZE,
    OP_REP_DEVLIST, OP_REP_IMPORT, OP_REQ_DEVLIST, OP_REQ_IMPORT, PATH_SIZE, USBIP_VERSION,
};

/// A device record (`struct usbip_usb_device`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceRecord {
    pub path: String,
    pub busid: String,
    pub busnum: u32,
    pub devnum: u32,
    pub speed: u32,
    pub id_vendor: u16,
    pub id_product: u16,
    pub bcd_device: u16,
    pub device_class: u8,
    pub device_subclass: u8,
    pub device_protocol: u8,
    pub configuration_value: u8,
    pub num_configurations: u8,
    pub num_interfaces: u8,
}

/// An interface record of `OP_REP_DEVLIST` (class, subclass, protocol, padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceRecord {
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpMessage {
    ReqDevlist,
    RepDevlist {
        status: u32,
        devices: Vec<(DeviceRecord, Vec<InterfaceRecord>)>,
    },
    ReqImport {
        busid: String,
    },
    /// `device` is present exactly when `status` is 0.
    RepImport {
        status: u32,
        device: Option<DeviceRecord>,
    },
}

/// A NUL-padded string field: the bytes before the first NUL, UTF-8, and NUL-terminated
/// within the field (the kernel's tools rely on it).
fn fixed_str(field: &'static str, raw: &[u8]) -> Result<String, CodecError> {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| invalid(field, "not NUL-terminated"))?;
    let s = std::str::from_utf8(&raw[..end]).map_err(|_| invalid(field, "not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(s.to_owned())
}

fn put_fixed(out: &mut Vec<u8>, s: &str, size: usize) {
    // One byte stays for the terminating NUL; longer strings are cut (at a char boundary).
    let mut end = s.len().min(size - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&s.as_bytes()[..end]);
    out.resize(out.len() + size - end, 0);
}

/// A bus id as the protocol carries it: the sysfs syntax (see [`crate::BusId`]).
fn check_busid(s: &str) -> Result<(), CodecError> {
    crate::BusId::new(s)
        .map(|_| ())
        .map_err(|e| invalid("busid", e.to_string()))
}

fn read_device(r: &mut Rd<'_>) -> Result<Option<DeviceRecord>, CodecError> {
    let Some(raw) = r.take(DEVICE_SIZE) else {
        return Ok(None);
    };
    let mut d = Rd::new(raw);
    // The lengths were checked by take(DEVICE_SIZE); the Nones below cannot happen.
    let (Some(path), Some(busid)) = (d.take(PATH_SIZE), d.take(BUSID_SIZE)) else {
        return Ok(None);
    };
    let path = fixed_str("path", path)?;
    let busid = fixed_str("busid", busid)?;
    check_busid(&busid)?;
    let rec = (|| {
        Some(DeviceRecord {
            path,
            busid,
            busnum: d.u32()?,
            devnum: d.u32()?,
            speed: d.u32()?,
            id_vendor: d.u16()?,
            id_product: d.u16()?,
            bcd_device: d.u16()?,
            device_class: d.u8()?,
            device_subclass: d.u8()?,
            device_protocol: d.u8()?,
            configuration_value: d.u8()?,
            num_configurations: d.u8()?,
            num_interfaces: d.u8()?,
        })
    })();
    Ok(rec)
}

fn write_device(out: &mut Vec<u8>, d: &DeviceRecord) {
    put_fixed(out, &d.path, PATH_SIZE);
    put_fixed(out, &d.busid, BUSID_SIZE);
    for v in [d.busnum, d.devnum, d.speed] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for v in [d.id_vendor, d.id_product, d.bcd_device] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&[
        d.device_class,
        d.device_subclass,
        d.device_protocol,
        d.configuration_value,
        d.num_configurations,
        d.num_interfaces,
    ]);
}

/// Decode one operation message from the start of `buf`.
pub fn decode_op(buf: &[u8], limits: &Limits) -> Result<Option<(OpMessage, usize)>, CodecError> {
    let mut r = Rd::new(buf);
    let (Some(version), Some(code), Some(status)) = (r.u16(), r.u16(), r.u32()) else {
        return Ok(None);
    };
    if version != USBIP_VERSION {
        return Err(CodecError::Version(version));
    }
    let msg = match code {
        OP_REQ_DEVLIST => {
            if status != 0 {
                return Err(invalid("status", "a request carries status 0"));
            }
            OpMessage::ReqDevlist
        }
        OP_REQ_IMPORT => {
            if status != 0 {
                return Err(invalid("status", "a request carries status 0"));
            }
            let Some(raw) = r.take(BUSID_SIZE) else {
                return Ok(None);
            };
            let busid = fixed_str("busid", raw)?;
            check_busid(&busid)?;
            OpMessage::ReqImport { busid }
        }
        OP_REP_IMPORT => {
            if status != 0 {
                OpMessage::RepImport {
                    status,
                    device: None,
                }
            } else {
                let Some(d) = read_device(&mut r)? else {
                    return Ok(None);
                };
                OpMessage::RepImport {
                    status,
                    device: Some(d),
                }
            }
        }
        OP_REP_DEVLIST => {
            let Some(n) = r.u32() else { return Ok(None) };
            limit(
                "number of devices",
                u64::from(n),
                u64::from(limits.max_devices),
            )?;
            let mut devices = Vec::new();
            for _ in 0..n {
                let Some(d) = read_device(&mut r)? else {
                    return Ok(None);
                };
                limit(
                    "bNumInterfaces",
                    u64::from(d.num_interfaces),
                    u64::from(limits.max_interfaces),
                )?;
                let mut ifs = Vec::with_capacity(usize::from(d.num_interfaces));
                for _ in 0..d.num_interfaces {
                    let Some(raw) = r.take(INTERFACE_SIZE) else {
                        return Ok(None);
                    };
                    ifs.push(InterfaceRecord {
                        class: raw[0],
                        subclass: raw[1],
                        protocol: raw[2],
                    });
                }
                devices.push((d, ifs));
            }
            OpMessage::RepDevlist { status, devices }
        }
        other => return Err(CodecError::OpCode(other)),
    };
    Ok(Some((msg, r.at)))
}

/// Encode an operation message.
pub fn encode_op(msg: &OpMessage) -> Vec<u8> {
    let mut out = Vec::new();
    let head = |out: &mut Vec<u8>, code: u16, status: u32| {
        out.extend_from_slice(&USBIP_VERSION.to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&status.to_be_bytes());
    };
    match msg {
        OpMessage::ReqDevlist => head(&mut out, OP_REQ_DEVLIST, 0),
        OpMessage::ReqImport { busid } => {
            head(&mut out, OP_REQ_IMPORT, 0);
            put_fixed(&mut out, busid, BUSID_SIZE);
        }
        OpMessage::RepImport { status, device } => {
            head(&mut out, OP_REP_IMPORT, *status);
            if *status == 0 {
                write_device(&mut out, &device.clone().unwrap_or_default());
            }
        }
        OpMessage::RepDevlist { status, devices } => {
            head(&mut out, OP_REP_DEVLIST, *status);
            let n = u32::try_from(devices.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            for (d, ifs) in devices {
                // bNumInterfaces is what the reader uses to find the records.
                let mut d = d.clone();
                d.num_interfaces = u8::try_from(ifs.len()).unwrap_or(u8::MAX);
                write_device(&mut out, &d);
                for i in ifs.iter().take(usize::from(d.num_interfaces)) {
                    out.extend_from_slice(&[i.class, i.subclass, i.protocol, 0]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyboard() -> DeviceRecord {
        DeviceRecord {
            path: "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1".into(),
            busid: "1-1".into(),
            busnum: 1,
            devnum: 2,
            speed: 2,
            id_vendor: 0x046d,
            id_product: 0xc31c,
            bcd_device: 0x6400,
            device_class: 0,
            device_subclass: 0,
            device_protocol: 0,
            configuration_value: 1,
            num_configurations: 1,
            num_interfaces: 2,
        }
    }

    #[test]
    fn sizes_match_the_protocol() {
        assert_eq!(DEVICE_SIZE, 312);
        assert_eq!(encode_op(&OpMessage::ReqDevlist).len(), 8);
        assert_eq!(
            encode_op(&OpMessage::ReqImport {
                busid: "1-1".into()
            })
            .len(),
            40
        );
        let rep = OpMessage::RepImport {
            status: 0,
            device: Some(keyboard()),
        };
        assert_eq!(encode_op(&rep).len(), 8 + 312);
    }

    #[test]
    fn op_request_bytes() {
        // OP_REQ_IMPORT for "1-1": version 0x0111, code 0x8003, status 0, busid NUL-padded.
        let b = encode_op(&OpMessage::ReqImport {
            busid: "1-1".into(),
        });
        assert_eq!(&b[..8], &[0x01, 0x11, 0x80, 0x03, 0, 0, 0, 0]);
        assert_eq!(&b[8..11], b"1-1");
        assert!(b[11..].iter().all(|&x| x == 0));
    }

    #[test]
    fn ops_round_trip_and_partial_input_asks_for_more() {
        let limits = Limits::default();
        let msgs = [
            OpMessage::ReqDevlist,
            OpMessage::ReqImport {
                busid: "2-1.4".into(),
            },
            OpMessage::RepImport {
                status: 0,
                device: Some(keyboard()),
            },
            OpMessage::RepImport {
                status: 1,
                device: None,
            },
            OpMessage::RepDevlist {
                status: 0,
                devices: vec![(
                    keyboard(),
                    vec![
                        InterfaceRecord {
                            class: 3,
                            subclass: 1,
                            protocol: 1,
                        },
                        InterfaceRecord {
                            class: 3,
                            subclass: 0,
                            protocol: 0,
                        },
                    ],
                )],
            },
        ];
        for m in &msgs {
            let b = encode_op(m);
            let (back, used) = decode_op(&b, &limits).unwrap().unwrap();
            assert_eq!(&back, m);
            assert_eq!(used, b.len());
            for cut in 0..b.len() {
                assert_eq!(decode_op(&b[..cut], &limits).unwrap(), None, "cut {cut}");
            }
        }
    }

    #[test]
    fn op_violations() {
        let limits = Limits::default();
        let mut b = encode_op(&OpMessage::ReqDevlist);
        b[1] = 0x06;
        assert_eq!(decode_op(&b, &limits), Err(CodecError::Version(0x0106)));
        let mut b = encode_op(&OpMessage::ReqDevlist);
        b[3] = 0x42;
        assert_eq!(decode_op(&b, &limits), Err(CodecError::OpCode(0x8042)));
        // too many devices announced
        let mut b = encode_op(&OpMessage::RepDevlist {
            status: 0,
            devices: vec![],
        });
        b[8..12].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            decode_op(&b, &limits),
            Err(CodecError::Limit {
                field: "number of devices",
                ..
            })
        ));
        // a bus id that is not one, or not NUL-terminated
        let mut b = encode_op(&OpMessage::ReqImport {
            busid: "1-1".into(),
        });
        b[8..11].copy_from_slice(b"../");
        assert!(decode_op(&b, &limits).is_err());
        let mut b = encode_op(&OpMessage::ReqImport {
            busid: "1-1".into(),
        });
        for x in &mut b[8..40] {
            *x = b'1';
        }
        assert!(matches!(
            decode_op(&b, &limits),
            Err(CodecError::Invalid { field: "busid", .. })
        ));
        // too many interfaces in a device record
        let mut d = keyboard();
        d.num_interfaces = 200;
        let mut b = encode_op(&OpMessage::RepDevlist {
            status: 0,
            devices: vec![(keyboard(), vec![])],
        });
        let at = 12 + DEVICE_SIZE - 1;
        b[at] = d.num_interfaces;
        assert!(matches!(
            decode_op(&b, &limits),
            Err(CodecError::Limit {
                field: "bNumInterfaces",
                ..
            })
        ));
    }
}
