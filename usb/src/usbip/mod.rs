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
//!
//! Here: the constants, [`Limits`], [`CodecError`] and the reader both phases decode with;
//! the operations are in `op`, the URBs in `urb`.
//!
//! On top of the codec, for a URB-phase stream dom0 carries between two domains (the
//! importer's `vhci-hcd` and the exporter's `usbip-host`, attached through sysfs, so no
//! operation exchange on it):
//! - [`UrbGuard`] (`guard`): a synchronous checker that decodes each message from one side,
//!   checks it against what is pending (commands only from the importer, replies only to
//!   pending commands, `actual_length` and ISO packets within the submit, unlink semantics of
//!   the kernel's stub, [`GuardLimits::max_pending`] and `max_pending_bytes`, the devid, and
//!   with a [`DeviceEndpoints`] model the endpoints of the current altsettings, ISO only on
//!   isochronous ones and the configuration changes) and says how many bytes to forward
//!   unchanged; fuzz target `usbip_guard`.
//! - [`parse_descriptors`] (`endpoints`): the device's raw descriptors (sysfs
//!   `descriptors`), bounded, into [`DeviceDescriptors`], and [`DeviceEndpoints`], the active
//!   configuration and current altsettings the guard follows.
//! - [`relay_urbs`] (`relay`): the async relay that runs both directions through one guard,
//!   with bounded buffers and backpressure, until a side ends its stream or breaks a rule.

mod endpoints;
mod guard;
mod op;
mod relay;
mod urb;

#[cfg(test)]
pub(crate) use endpoints::build as endpoints_build;
pub use endpoints::{
    parse_descriptors, AltSetting, ConfigChange, Configuration, DescriptorError, DeviceDescriptors,
    DeviceEndpoints, Endpoint, InterfaceDescriptors, TransferType, MAX_ALTSETTINGS, MAX_CONFIGS,
    MAX_DESCRIPTORS_LEN, MAX_ENDPOINTS, MAX_INTERFACES,
};
pub use guard::{GuardError, GuardLimits, Side, UrbGuard, Violation};
pub use op::{decode_op, encode_op, DeviceRecord, InterfaceRecord, OpMessage};
pub use relay::{relay_urbs, RelayEnd, RelayError, RelayStats};
pub use urb::{decode_urb, encode_urb, Basic, Direction, IsoDescriptor, UrbMessage};

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
