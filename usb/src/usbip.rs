//! The USB/IP protocol (the Linux kernel's `Documentation/usb/usbip_protocol.rst`), written
//! here by hand (no maintained Rust crate covers it). Every field is big-endian.
//!
//! Two phases on one stream:
//! - **Operations** ([`OpMessage`]): an 8-byte header (version `0x0111`, code, status), then
//!   `OP_REQ_DEVLIST` (nothing more) / `OP_REP_DEVLIST` (a count, then per device a 312-byte
//!   device record and 4 bytes per interface), `OP_REQ_IMPORT` (a 32-byte bus id) /
//!   `OP_REP_IMPORT` (a device record when the status is 0).
//! - **URBs** ([`UrbMessage`]) after a successful import: 48-byte headers (a 20-byte basic
//!   header: command, seqnum, devid, direction, ep) for `USBIP_CMD_SUBMIT` (followed by the
//!   OUT data and ISO packet descriptors), `USBIP_RET_SUBMIT` (IN data, ISO descriptors),
//!   `USBIP_CMD_UNLINK`, `USBIP_RET_UNLINK`.
//!
//! Decoders take a buffer that may hold a partial message: `Ok(None)` asks for more bytes,
//! `Ok(Some((msg, used)))` gives a message and its length, `Err` means the peer broke the
//! protocol or a [`Limits`] bound (drop the peer). Encoders write what the decoders read.

/// Protocol version in every operation header.
pub const USBIP_VERSION: u16 = 0x0111;
pub const OP_REQ_DEVLIST: u16 = 0x8005;
pub const OP_REP_DEVLIST: u16 = 0x0005;
pub const OP_REQ_IMPORT: u16 = 0x8003;
pub const OP_REP_IMPORT: u16 = 0x0003;
pub const CMD_SUBMIT: u32 = 1;
pub const CMD_UNLINK: u32 = 2;
pub const RET_SUBMIT: u32 = 3;
pub const RET_UNLINK: u32 = 4;
/// `number_of_packets` of a transfer that is not isochronous.
pub const NOT_ISO: u32 = 0xffff_ffff;
/// Size of the `path` field of a device record.
pub const PATH_SIZE: usize = 256;
/// Size of the `busid` field.
pub const BUSID_SIZE: usize = 32;
/// A device record: path, busid, 3 × u32, 3 × u16, 6 × u8.
pub const DEVICE_SIZE: usize = PATH_SIZE + BUSID_SIZE + 12 + 6 + 6;
/// One interface record of `OP_REP_DEVLIST`.
pub const INTERFACE_SIZE: usize = 4;
/// Operation header.
pub const OP_HEADER_SIZE: usize = 8;
/// Every URB header (basic header plus the command's fields, padded).
pub const URB_HEADER_SIZE: usize = 48;
/// One ISO packet descriptor.
pub const ISO_DESCRIPTOR_SIZE: usize = 16;

/// Bounds a decoder enforces on what a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most devices in one `OP_REP_DEVLIST`.
    pub max_devices: u32,
    /// Most interfaces per device record.
    pub max_interfaces: u8,
    /// Largest transfer buffer of one URB.
    pub max_transfer: u32,
    /// Most ISO packets per URB (the kernel's `USBIP_MAX_ISO_PACKETS` is 1024).
    pub max_iso_packets: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_devices: 256,
            max_interfaces: 32,
            max_transfer: 1 << 20,
            max_iso_packets: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported USB/IP version 0x{0:04x} (expected 0x0111)")]
    Version(u16),
    #[error("unknown USB/IP operation code 0x{0:04x}")]
    OpCode(u16),
    #[error("unknown USB/IP command {0}")]
    Command(u32),
    #[error("{field} is {value}; the limit is {limit}")]
    Limit {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn limit(field: &'static str, value: u64, max: u64) -> Result<(), CodecError> {
    if value > max {
        Err(CodecError::Limit {
            field,
            value,
            limit: max,
        })
    } else {
        Ok(())
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> CodecError {
    CodecError::Invalid {
        field,
        message: message.into(),
    }
}

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

/// A small big-endian reader over a slice; `None` means "not enough bytes yet".
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
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

/// Transfer direction of a URB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

/// The basic header of every URB message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basic {
    pub seqnum: u32,
    pub devid: u32,
    pub direction: Direction,
    /// Endpoint number 0..=15.
    pub ep: u32,
}

/// One ISO packet descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDescriptor {
    pub offset: u32,
    pub length: u32,
    pub actual_length: u32,
    pub status: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrbMessage {
    CmdSubmit {
        basic: Basic,
        transfer_flags: u32,
        transfer_buffer_length: u32,
        start_frame: i32,
        /// [`NOT_ISO`] for a transfer that is not isochronous.
        number_of_packets: u32,
        interval: i32,
        setup: [u8; 8],
        /// The OUT data (`transfer_buffer_length` bytes); empty for IN.
        data: Vec<u8>,
        iso: Vec<IsoDescriptor>,
    },
    RetSubmit {
        basic: Basic,
        status: i32,
        actual_length: u32,
        start_frame: i32,
        number_of_packets: u32,
        error_count: i32,
        /// The IN data (`actual_length` bytes); empty for OUT.
        data: Vec<u8>,
        iso: Vec<IsoDescriptor>,
    },
    CmdUnlink {
        basic: Basic,
        unlink_seqnum: u32,
    },
    RetUnlink {
        basic: Basic,
        status: i32,
    },
}

fn iso_count(n: u32, limits: &Limits) -> Result<usize, CodecError> {
    if n == NOT_ISO {
        return Ok(0);
    }
    limit(
        "number_of_packets",
        u64::from(n),
        u64::from(limits.max_iso_packets),
    )?;
    Ok(n as usize)
}

fn read_iso(
    r: &mut Rd<'_>,
    n: usize,
    buffer_len: u32,
) -> Result<Option<Vec<IsoDescriptor>>, CodecError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(raw) = r.take(ISO_DESCRIPTOR_SIZE) else {
            return Ok(None);
        };
        let mut d = Rd::new(raw);
        let (Some(offset), Some(length), Some(actual_length), Some(status)) =
            (d.u32(), d.u32(), d.u32(), d.u32())
        else {
            return Ok(None);
        };
        if u64::from(offset) + u64::from(length) > u64::from(buffer_len) {
            return Err(invalid(
                "iso packet",
                format!("offset {offset} + length {length} beyond the buffer of {buffer_len}"),
            ));
        }
        if actual_length > length {
            return Err(invalid("iso packet", "actual_length above length"));
        }
        out.push(IsoDescriptor {
            offset,
            length,
            actual_length,
            status,
        });
    }
    Ok(Some(out))
}

/// Decode one URB message from the start of `buf`. A `RET_SUBMIT` carries data only for IN
/// transfers, and its own direction field is 0, so `direction_of(seqnum)` tells the decoder
/// the direction of the command it answers (`None`: no such command is pending, an error).
pub fn decode_urb(
    buf: &[u8],
    limits: &Limits,
    direction_of: &dyn Fn(u32) -> Option<Direction>,
) -> Result<Option<(UrbMessage, usize)>, CodecError> {
    let mut r = Rd::new(buf);
    let Some(head) = r.take(URB_HEADER_SIZE) else {
        return Ok(None);
    };
    let mut h = Rd::new(head);
    // The header is URB_HEADER_SIZE bytes, more than every field below reads.
    let fields = (|| Some((h.u32()?, h.u32()?, h.u32()?, h.u32()?, h.u32()?)))();
    let Some((command, seqnum, devid, dir, ep)) = fields else {
        return Ok(None);
    };
    let direction = match dir {
        0 => Direction::Out,
        1 => Direction::In,
        other => return Err(invalid("direction", format!("{other} (expected 0 or 1)"))),
    };
    limit("ep", u64::from(ep), 15)?;
    let basic = Basic {
        seqnum,
        devid,
        direction,
        ep,
    };
    let msg = match command {
        CMD_SUBMIT => {
            let parts = (|| Some((h.u32()?, h.u32()?, h.i32()?, h.u32()?, h.i32()?, h.take(8)?)))();
            let Some((transfer_flags, len, start_frame, npk, interval, setup)) = parts else {
                return Ok(None);
            };
            limit(
                "transfer_buffer_length",
                u64::from(len),
                u64::from(limits.max_transfer),
            )?;
            let n = iso_count(npk, limits)?;
            let data = if direction == Direction::Out {
                let Some(d) = r.take(len as usize) else {
                    return Ok(None);
                };
                d.to_vec()
            } else {
                Vec::new()
            };
            let Some(iso) = read_iso(&mut r, n, len)? else {
                return Ok(None);
            };
            let mut s = [0u8; 8];
            s.copy_from_slice(setup);
            UrbMessage::CmdSubmit {
                basic,
                transfer_flags,
                transfer_buffer_length: len,
                start_frame,
                number_of_packets: npk,
                interval,
                setup: s,
                data,
                iso,
            }
        }
        RET_SUBMIT => {
            let parts = (|| Some((h.i32()?, h.u32()?, h.i32()?, h.u32()?, h.i32()?)))();
            let Some((status, actual, start_frame, npk, error_count)) = parts else {
                return Ok(None);
            };
            limit(
                "actual_length",
                u64::from(actual),
                u64::from(limits.max_transfer),
            )?;
            let n = iso_count(npk, limits)?;
            if error_count < 0 || error_count as u64 > n as u64 {
                return Err(invalid(
                    "error_count",
                    format!("{error_count} with {n} packets"),
                ));
            }
            let dir = direction_of(seqnum)
                .ok_or_else(|| invalid("seqnum", format!("{seqnum} answers no pending command")))?;
            let data = if dir == Direction::In {
                let Some(d) = r.take(actual as usize) else {
                    return Ok(None);
                };
                d.to_vec()
            } else {
                Vec::new()
            };
            let Some(iso) = read_iso(&mut r, n, actual)? else {
                return Ok(None);
            };
            UrbMessage::RetSubmit {
                basic,
                status,
                actual_length: actual,
                start_frame,
                number_of_packets: npk,
                error_count,
                data,
                iso,
            }
        }
        CMD_UNLINK => {
            let Some(unlink_seqnum) = h.u32() else {
                return Ok(None);
            };
            UrbMessage::CmdUnlink {
                basic,
                unlink_seqnum,
            }
        }
        RET_UNLINK => {
            let Some(status) = h.i32() else {
                return Ok(None);
            };
            UrbMessage::RetUnlink { basic, status }
        }
        other => return Err(CodecError::Command(other)),
    };
    Ok(Some((msg, r.at)))
}

/// Encode a URB message (48-byte header, then data and ISO descriptors as the decoder
/// expects them).
pub fn encode_urb(msg: &UrbMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(URB_HEADER_SIZE);
    let put = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_be_bytes());
    let basic = |out: &mut Vec<u8>, cmd: u32, b: &Basic| {
        for v in [
            cmd,
            b.seqnum,
            b.devid,
            match b.direction {
                Direction::Out => 0,
                Direction::In => 1,
            },
            b.ep,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    };
    let iso = |out: &mut Vec<u8>, iso: &[IsoDescriptor]| {
        for d in iso {
            for v in [d.offset, d.length, d.actual_length, d.status] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    };
    match msg {
        UrbMessage::CmdSubmit {
            basic: b,
            transfer_flags,
            transfer_buffer_length,
            start_frame,
            number_of_packets,
            interval,
            setup,
            data,
            iso: descs,
        } => {
            basic(&mut out, CMD_SUBMIT, b);
            put(&mut out, *transfer_flags);
            put(&mut out, *transfer_buffer_length);
            put(&mut out, *start_frame as u32);
            put(&mut out, *number_of_packets);
            put(&mut out, *interval as u32);
            out.extend_from_slice(setup);
            out.extend_from_slice(data);
            iso(&mut out, descs);
        }
        UrbMessage::RetSubmit {
            basic: b,
            status,
            actual_length,
            start_frame,
            number_of_packets,
            error_count,
            data,
            iso: descs,
        } => {
            basic(&mut out, RET_SUBMIT, b);
            put(&mut out, *status as u32);
            put(&mut out, *actual_length);
            put(&mut out, *start_frame as u32);
            put(&mut out, *number_of_packets);
            put(&mut out, *error_count as u32);
            out.resize(URB_HEADER_SIZE, 0);
            out.extend_from_slice(data);
            iso(&mut out, descs);
        }
        UrbMessage::CmdUnlink {
            basic: b,
            unlink_seqnum,
        } => {
            basic(&mut out, CMD_UNLINK, b);
            put(&mut out, *unlink_seqnum);
            out.resize(URB_HEADER_SIZE, 0);
        }
        UrbMessage::RetUnlink { basic: b, status } => {
            basic(&mut out, RET_UNLINK, b);
            put(&mut out, *status as u32);
            out.resize(URB_HEADER_SIZE, 0);
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

    fn basic(dir: Direction) -> Basic {
        Basic {
            seqnum: 7,
            devid: 0x0001_0002,
            direction: dir,
            ep: 1,
        }
    }

    #[test]
    fn urbs_round_trip() {
        let limits = Limits::default();
        let dir_in = |_: u32| Some(Direction::In);
        let msgs = [
            UrbMessage::CmdSubmit {
                basic: basic(Direction::Out),
                transfer_flags: 0,
                transfer_buffer_length: 4,
                start_frame: 0,
                number_of_packets: NOT_ISO,
                interval: 0,
                setup: [0x21, 0x09, 0, 2, 0, 0, 1, 0],
                data: vec![1, 2, 3, 4],
                iso: vec![],
            },
            UrbMessage::CmdSubmit {
                basic: basic(Direction::In),
                transfer_flags: 0x200,
                transfer_buffer_length: 64,
                start_frame: 0,
                number_of_packets: 2,
                interval: 1,
                setup: [0; 8],
                data: vec![],
                iso: vec![
                    IsoDescriptor {
                        offset: 0,
                        length: 32,
                        actual_length: 0,
                        status: 0,
                    },
                    IsoDescriptor {
                        offset: 32,
                        length: 32,
                        actual_length: 0,
                        status: 0,
                    },
                ],
            },
            UrbMessage::RetSubmit {
                basic: Basic {
                    seqnum: 7,
                    devid: 0,
                    direction: Direction::Out,
                    ep: 0,
                },
                status: 0,
                actual_length: 8,
                start_frame: 0,
                number_of_packets: NOT_ISO,
                error_count: 0,
                data: vec![0, 0, 4, 0, 0, 0, 0, 0],
                iso: vec![],
            },
            UrbMessage::CmdUnlink {
                basic: basic(Direction::Out),
                unlink_seqnum: 6,
            },
            UrbMessage::RetUnlink {
                basic: basic(Direction::Out),
                status: -104,
            },
        ];
        for m in &msgs {
            let b = encode_urb(m);
            let (back, used) = decode_urb(&b, &limits, &dir_in).unwrap().unwrap();
            assert_eq!(&back, m);
            assert_eq!(used, b.len());
            for cut in 0..b.len() {
                assert_eq!(decode_urb(&b[..cut], &limits, &dir_in).unwrap(), None);
            }
        }
        assert_eq!(encode_urb(&msgs[3]).len(), URB_HEADER_SIZE);
    }

    #[test]
    fn urb_violations() {
        let limits = Limits::default();
        let dir_in = |_: u32| Some(Direction::In);
        let submit = UrbMessage::CmdSubmit {
            basic: basic(Direction::In),
            transfer_flags: 0,
            transfer_buffer_length: 8,
            start_frame: 0,
            number_of_packets: NOT_ISO,
            interval: 0,
            setup: [0; 8],
            data: vec![],
            iso: vec![],
        };
        let good = encode_urb(&submit);
        let mut b = good.clone();
        b[24..28].copy_from_slice(&(64u32 << 20).to_be_bytes());
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Limit {
                field: "transfer_buffer_length",
                ..
            })
        ));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&2u32.to_be_bytes());
        assert!(decode_urb(&b, &limits, &dir_in).is_err(), "direction 2");
        let mut b = good.clone();
        b[16..20].copy_from_slice(&16u32.to_be_bytes());
        assert!(decode_urb(&b, &limits, &dir_in).is_err(), "ep 16");
        let mut b = good.clone();
        b[0..4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Command(9))
        );
        let mut b = good.clone();
        b[32..36].copy_from_slice(&5000u32.to_be_bytes());
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Limit {
                field: "number_of_packets",
                ..
            })
        ));
        // an ISO packet beyond the buffer
        let mut b = good.clone();
        b[32..36].copy_from_slice(&1u32.to_be_bytes());
        for v in [4u32, 8, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Invalid {
                field: "iso packet",
                ..
            })
        ));
        // a reply to nothing pending
        let ret = encode_urb(&UrbMessage::RetUnlink {
            basic: basic(Direction::Out),
            status: 0,
        });
        let mut b = ret.clone();
        b[0..4].copy_from_slice(&RET_SUBMIT.to_be_bytes());
        assert!(decode_urb(&b, &limits, &|_| None).is_err());
    }
}
