//! Typed payloads of Open, Control and exec Message frames, encoded with postcard.
//!
//! Decoders are pure functions over a byte slice (already bounded by the frame limit);
//! after decoding, every value is checked against the explicit limits below and trailing
//! bytes are refused.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Most argv entries in an exec request.
pub const MAX_ARGV: usize = 4096;
/// Most environment entries in an exec request.
pub const MAX_ENV: usize = 1024;
/// Longest single argv/env string.
pub const MAX_ARG_LEN: usize = 128 * 1024;
/// Longest user name.
pub const MAX_USER_LEN: usize = 32;
/// Longest working directory.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest failure reason text in an exec message (fits a Message frame).
pub const MAX_REASON_LEN: usize = 1024;
/// Exit codes a process can have (`wait` reports the low 8 bits).
pub const EXIT_CODES: std::ops::RangeInclusive<i32> = 0..=255;
/// Signal numbers Linux has (1..=31 standard, 32..=64 real-time).
pub const SIGNALS: std::ops::RangeInclusive<i32> = 1..=64;
/// Longest service name of a call (`[A-Za-z0-9._-]`, Qubes' charset).
pub const MAX_SERVICE_LEN: usize = 64;
/// Longest service argument of a call (`[A-Za-z0-9._+-]`, may be empty).
pub const MAX_SERVICE_ARG_LEN: usize = 64;
/// Longest call target (a domain name or a policy token such as `@dispvm:NAME`).
pub const MAX_TARGET_LEN: usize = 64;
/// Longest source domain name in a service request.
pub const MAX_SOURCE_LEN: usize = 64;
/// First protocol version that knows [`OpenRequest::Call`] and [`OpenRequest::Service`]
/// (and [`ExecMessage::Refused`]).
pub const CALLS_VERSION: u16 = 2;
/// First protocol version that knows [`OpenRequest::Gui`].
pub const GUI_VERSION: u16 = 3;
/// First protocol version that knows [`OpenRequest::UsbImport`].
pub const USB_VERSION: u16 = 4;
/// Longest USB bus id (the kernel's `SYSFS_BUS_ID_SIZE` is 32 with its NUL).
pub const MAX_USB_BUSID_LEN: usize = 31;
/// Longest reason in a [`UsbImportReply::Failed`].
pub const MAX_USB_REASON_LEN: usize = 1024;

/// A payload that does not decode or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// postcard could not decode the bytes.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Message name.
        what: &'static str,
        /// Decoder detail.
        detail: String,
    },
    /// Bytes left after the message.
    #[error("{what} has {extra} trailing bytes")]
    TrailingBytes {
        /// Message name.
        what: &'static str,
        /// Number of extra bytes.
        extra: usize,
    },
    /// A field breaks a limit or a syntax rule.
    #[error("invalid {what}: {problem}")]
    Invalid {
        /// Field name.
        what: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn decode_exact<T: DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, MessageError> {
    let (v, rest) = postcard::take_from_bytes::<T>(b).map_err(|e| MessageError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(MessageError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(v)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain enums/structs into a Vec cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

fn invalid(what: &'static str, problem: impl Into<String>) -> MessageError {
    MessageError::Invalid {
        what,
        problem: problem.into(),
    }
}

/// Connection-level control messages (stream 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Ask the domain to shut down gracefully; its init kills what is left after `timeout_secs`.
    Shutdown {
        /// Grace period before SIGKILL inside the domain.
        timeout_secs: u32,
    },
    /// Liveness probe; the connection layer answers it with a Pong automatically.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Answer to a Ping (consumed by the connection layer, never yielded by `Incoming`).
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
}

impl Control {
    /// Encodes the control message.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a control message.
    pub fn decode(b: &[u8]) -> Result<Control, MessageError> {
        decode_exact("control message", b)
    }
}

/// What a new stream is for. A peer only sends variants that exist in the negotiated
/// version ([`OpenRequest::min_version`]); a variant the version does not have is a violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenRequest {
    /// Run a command (see [`crate::exec`]).
    Exec(ExecRequest),
    /// agent -> domaind (and `bulkhead-call` -> agent): a program in the domain asks for a
    /// service call. Stream data follows the exec protocol (the caller is the exec client).
    Call(CallRequest),
    /// domaind -> target agent: run a service for a source. Exec protocol, domaind is the
    /// exec client.
    Service(ServiceRequest),
    /// domaind -> agent: a GUI stream. Channel [`crate::relay::BYTES_CHANNEL`] carries the
    /// GUI protocol ([`crate::gui`]) both ways; the agent relays it to the gui-agent's socket
    /// (`/run/bulkhead-gui/gui.sock`), domaind to dom0's `OpenGui` socket. EOF on the
    /// channel, then Fin, when a side closes.
    Gui,
    /// domaind -> agent of a VM domain: attach a USB device exported by the usb domain to
    /// this domain's kernel (`vhci-hcd`). The agent answers with one Message, a
    /// [`UsbImportReply`]; after `Attached` channel [`crate::relay::BYTES_CHANNEL`] carries
    /// the USB/IP URB stream both ways (domaind checks every message) until either side
    /// closes, which detaches the device.
    UsbImport(UsbImportRequest),
    /// domaind -> agent of a usb VM: export the device plugged into this kernel's `vhci-hcd`
    /// port `port` (by an earlier `UsbImport`) with `usbip-host`. The agent answers with one
    /// Message, a [`UsbExportReply`]; after `Exported` channel
    /// [`crate::relay::BYTES_CHANNEL`] carries the device's USB/IP URB stream both ways until
    /// either side closes, which takes it back from `usbip-host`.
    UsbExport(UsbExportRequest),
}

/// A device a usb VM exports onwards: the one at its vhci-hcd port `port`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsbExportRequest {
    /// The bus id the device has in dom0 (`1-2`), for messages and logs.
    pub busid: String,
    /// The `vhci-hcd` port it was plugged into.
    pub port: u32,
}

/// The usb VM agent's answer to [`OpenRequest::UsbExport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsbExportReply {
    /// Exported: what the receiving `vhci-hcd` needs.
    Exported { devid: u32, speed: u32 },
    /// It could not be exported: why.
    Failed { reason: String },
}

impl UsbExportReply {
    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and validates a reply.
    pub fn decode(b: &[u8]) -> Result<UsbExportReply, MessageError> {
        let r: UsbExportReply = decode_exact("USB export reply", b)?;
        match &r {
            UsbExportReply::Failed { reason } => {
                check_str("USB export failure reason", reason, MAX_USB_REASON_LEN)?
            }
            UsbExportReply::Exported { speed, .. } if !(1..=6).contains(speed) => {
                return Err(invalid("USB speed", format!("{speed} (expected 1..=6)")))
            }
            UsbExportReply::Exported { .. } => {}
        }
        Ok(r)
    }
}

/// A USB device to attach to the receiving domain's virtual host controller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsbImportRequest {
    /// The bus id the device has in the usb domain (`1-2`), for messages and logs.
    pub busid: String,
    /// USB/IP device id: `busnum << 16 | devnum` in the exporting kernel.
    pub devid: u32,
    /// The kernel's `enum usb_device_speed`: 1 low, 2 full, 3 high, 4 wireless, 5 super,
    /// 6 super-plus.
    pub speed: u32,
}

impl UsbImportRequest {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        check_charset("USB bus id", &self.busid, MAX_USB_BUSID_LEN, false, |b| {
            b.is_ascii_digit() || matches!(b, b'.' | b'-')
        })?;
        if !(1..=6).contains(&self.speed) {
            return Err(invalid(
                "USB speed",
                format!("{} (expected 1..=6)", self.speed),
            ));
        }
        Ok(())
    }
}

/// The receiving agent's answer to [`OpenRequest::UsbImport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsbImportReply {
    /// The device is attached to `vhci-hcd` port `port`; the URB stream may flow.
    Attached { port: u32 },
    /// It could not be attached (no vhci-hcd, no free port, a sandbox...): why.
    Failed { reason: String },
}

impl UsbImportReply {
    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and validates a reply.
    pub fn decode(b: &[u8]) -> Result<UsbImportReply, MessageError> {
        let r: UsbImportReply = decode_exact("USB import reply", b)?;
        if let UsbImportReply::Failed { reason } = &r {
            check_str("USB import failure reason", reason, MAX_USB_REASON_LEN)?;
        }
        Ok(r)
    }
}

impl OpenRequest {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and validates a request.
    pub fn decode(b: &[u8]) -> Result<OpenRequest, MessageError> {
        let r: OpenRequest = decode_exact("open request", b)?;
        r.validate()?;
        Ok(r)
    }

    /// Checks every limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            OpenRequest::Exec(e) => e.validate(),
            OpenRequest::Call(c) => c.validate(),
            OpenRequest::Service(s) => s.validate(),
            OpenRequest::Gui => Ok(()),
            OpenRequest::UsbImport(u) => u.validate(),
            OpenRequest::UsbExport(u) => {
                check_charset("USB bus id", &u.busid, MAX_USB_BUSID_LEN, false, |b| {
                    b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
            }
        }
    }

    /// The lowest protocol version that has this variant.
    pub fn min_version(&self) -> u16 {
        match self {
            OpenRequest::Exec(_) => 1,
            OpenRequest::Call(_) | OpenRequest::Service(_) => CALLS_VERSION,
            OpenRequest::Gui => GUI_VERSION,
            OpenRequest::UsbImport(_) | OpenRequest::UsbExport(_) => USB_VERSION,
        }
    }
}

/// A service call a program in a domain asks for: `SERVICE+ARG` on `target`. The source is
/// the domain of the connection it arrives on; it is never carried in the request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallRequest {
    /// A domain name or a policy token (`@default`, `@dispvm`, `@dispvm:NAME`, `uuid:...`,
    /// `$dispvm`...); empty means `@default`.
    pub target: String,
    /// Service name, `[A-Za-z0-9._-]{1,64}`.
    pub service: String,
    /// Argument without its `+`, `[A-Za-z0-9._+-]{0,64}`.
    pub arg: String,
}

/// A service to run in the target domain for `source` (set by domaind only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceRequest {
    /// Service name, `[A-Za-z0-9._-]{1,64}`.
    pub service: String,
    /// Argument without its `+`, `[A-Za-z0-9._+-]{0,64}`.
    pub arg: String,
    /// The calling domain (`dom0` for calls from the admin domain).
    pub source: String,
    /// The policy's `user=`; `None` means the domain's default user.
    pub user: Option<String>,
}

fn check_charset(
    what: &'static str,
    s: &str,
    max: usize,
    empty_ok: bool,
    ok: impl Fn(u8) -> bool,
) -> Result<(), MessageError> {
    if s.len() > max {
        return Err(invalid(what, format!("{} bytes, limit {max}", s.len())));
    }
    if s.is_empty() && !empty_ok {
        return Err(invalid(what, "empty"));
    }
    if let Some(b) = s.bytes().find(|b| !ok(*b)) {
        return Err(invalid(
            what,
            format!("contains the byte {b:#04x}, which is not allowed"),
        ));
    }
    Ok(())
}

/// Whether `s` is a valid service name (`[A-Za-z0-9._-]{1,64}`).
pub fn valid_service_name(s: &str) -> bool {
    check_service(s).is_ok()
}

fn check_service(s: &str) -> Result<(), MessageError> {
    check_charset("service name", s, MAX_SERVICE_LEN, false, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })
}

fn check_arg(s: &str) -> Result<(), MessageError> {
    check_charset("service argument", s, MAX_SERVICE_ARG_LEN, true, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+')
    })
}

impl CallRequest {
    /// A call of `service` (with `arg`, "" for none) on `target`.
    pub fn new(target: &str, service: &str, arg: &str) -> Self {
        Self {
            target: target.to_owned(),
            service: service.to_owned(),
            arg: arg.to_owned(),
        }
    }

    /// Parses `SERVICE[+ARG]` (the argument is everything after the first `+`).
    pub fn parse(target: &str, service_and_arg: &str) -> Result<Self, MessageError> {
        let (service, arg) = service_and_arg
            .split_once('+')
            .unwrap_or((service_and_arg, ""));
        let c = Self::new(target, service, arg);
        c.validate()?;
        Ok(c)
    }

    /// Checks every limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        check_charset("call target", &self.target, MAX_TARGET_LEN, true, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':' | b'$')
        })?;
        check_service(&self.service)?;
        check_arg(&self.arg)
    }
}

impl ServiceRequest {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        check_service(&self.service)?;
        check_arg(&self.arg)?;
        check_charset("source domain", &self.source, MAX_SOURCE_LEN, false, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
        })?;
        if let Some(u) = &self.user {
            if !valid_user_name(u) {
                return Err(invalid("user", format!("{u:?} is not a valid user name")));
            }
        }
        Ok(())
    }
}

/// A command to run in the domain.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in PATH.
    pub argv: Vec<String>,
    /// User to run as; `None` means the domain's default user `user`.
    pub user: Option<String>,
    /// Extra environment on top of HOME/USER/LOGNAME/SHELL/PATH.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` means the user's home.
    pub cwd: Option<String>,
}

fn check_str(what: &'static str, s: &str, max: usize) -> Result<(), MessageError> {
    if s.len() > max {
        return Err(invalid(what, format!("{} bytes, limit {max}", s.len())));
    }
    if s.contains('\0') {
        return Err(invalid(what, "contains a NUL byte"));
    }
    Ok(())
}

/// Whether `name` is an acceptable user name (`[a-z_][a-z0-9_-]*`, at most 32 bytes).
pub fn valid_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_USER_LEN
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl ExecRequest {
    /// A request for `argv` as the default user.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> ExecRequest {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }

    /// Checks every limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.argv.is_empty() {
            return Err(invalid("argv", "empty"));
        }
        if self.argv.len() > MAX_ARGV {
            return Err(invalid(
                "argv",
                format!("{} entries, limit {MAX_ARGV}", self.argv.len()),
            ));
        }
        if self.argv[0].is_empty() {
            return Err(invalid("argv[0]", "empty program name"));
        }
        for a in &self.argv {
            check_str("argv entry", a, MAX_ARG_LEN)?;
        }
        if self.env.len() > MAX_ENV {
            return Err(invalid(
                "env",
                format!("{} entries, limit {MAX_ENV}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            check_str("env name", k, MAX_ARG_LEN)?;
            check_str("env value", v, MAX_ARG_LEN)?;
            if k.is_empty() || k.contains('=') {
                return Err(invalid(
                    "env name",
                    format!("{k:?} is empty or contains '='"),
                ));
            }
        }
        if let Some(u) = &self.user {
            if !valid_user_name(u) {
                return Err(invalid("user", format!("{u:?} is not a valid user name")));
            }
        }
        if let Some(c) = &self.cwd {
            check_str("cwd", c, MAX_PATH_LEN)?;
            if !c.starts_with('/') {
                return Err(invalid("cwd", format!("{c:?} is not absolute")));
            }
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Shell convention: the code, or 128 + signal. Saturates instead of overflowing for
    /// values outside [`EXIT_CODES`] / [`SIGNALS`] (which the decoder never yields).
    pub fn as_shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => s.saturating_add(128),
        }
    }

    /// Checks that the status is one a process can have: a code in [`EXIT_CODES`] or a signal
    /// in [`SIGNALS`].
    pub fn validate(&self) -> Result<(), MessageError> {
        match *self {
            ExitStatus::Code(c) if !EXIT_CODES.contains(&c) => {
                Err(invalid("exit code", format!("{c} not in 0..=255")))
            }
            ExitStatus::Signal(s) if !SIGNALS.contains(&s) => {
                Err(invalid("exit signal", format!("{s} not in 1..=64")))
            }
            _ => Ok(()),
        }
    }
}

/// Messages the serving side sends on an exec stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecMessage {
    /// The command ended (sent after stdout and stderr reached EOF).
    Exit(ExitStatus),
    /// The command could not be started.
    Failed {
        /// Human-readable reason, e.g. "no such file: foo".
        reason: String,
    },
    /// The call was refused by policy (call streams only, protocol version 2).
    Refused {
        /// Human-readable reason.
        reason: String,
    },
}

impl ExecMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes and validates the message.
    pub fn decode(b: &[u8]) -> Result<ExecMessage, MessageError> {
        let m: ExecMessage = decode_exact("exec message", b)?;
        match &m {
            ExecMessage::Failed { reason } | ExecMessage::Refused { reason }
                if reason.len() > MAX_REASON_LEN =>
            {
                return Err(invalid(
                    "exec failure reason",
                    format!("{} bytes, limit {MAX_REASON_LEN}", reason.len()),
                ));
            }
            ExecMessage::Exit(status) => status.validate()?,
            ExecMessage::Failed { .. } | ExecMessage::Refused { .. } => {}
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_round_trip() {
        let r = OpenRequest::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            user: Some("root".into()),
            env: vec![("LANG".into(), "C.UTF-8".into())],
            cwd: Some("/tmp".into()),
        });
        assert_eq!(OpenRequest::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn exec_request_limits() {
        let bad = [
            ExecRequest::new(Vec::<String>::new()),
            ExecRequest::new([""]),
            ExecRequest::new(["a\0b"]),
            ExecRequest {
                user: Some("Root!".into()),
                ..ExecRequest::new(["true"])
            },
            ExecRequest {
                env: vec![("A=B".into(), "c".into())],
                ..ExecRequest::new(["true"])
            },
            ExecRequest {
                cwd: Some("relative".into()),
                ..ExecRequest::new(["true"])
            },
            ExecRequest::new(vec!["x"; MAX_ARGV + 1]),
        ];
        for r in bad {
            let enc = OpenRequest::Exec(r.clone()).encode();
            assert!(
                matches!(OpenRequest::decode(&enc), Err(MessageError::Invalid { .. })),
                "{r:?}"
            );
        }
    }

    #[test]
    fn trailing_and_truncated() {
        let mut enc = Control::Shutdown { timeout_secs: 5 }.encode();
        enc.push(0);
        assert!(matches!(
            Control::decode(&enc),
            Err(MessageError::TrailingBytes { extra: 1, .. })
        ));
        let enc = ExecMessage::Exit(ExitStatus::Code(3)).encode();
        assert!(matches!(
            ExecMessage::decode(&enc[..enc.len() - 1]),
            Err(MessageError::Malformed { .. })
        ));
        // unknown variant
        assert!(matches!(
            Control::decode(&[9]),
            Err(MessageError::Malformed { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // Exec variant, argv with a claimed 2^32 entries but no data.
        let b = [0u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(OpenRequest::decode(&b).is_err());
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(3).as_shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).as_shell_code(), 137);
        assert_eq!(ExitStatus::Signal(64).as_shell_code(), 192);
        // values the decoder refuses still do not overflow if built locally
        assert_eq!(ExitStatus::Signal(i32::MAX).as_shell_code(), i32::MAX);
        assert_eq!(ExitStatus::Signal(i32::MIN).as_shell_code(), i32::MIN + 128);
    }

    #[test]
    fn exit_status_ranges() {
        for ok in [
            ExitStatus::Code(0),
            ExitStatus::Code(255),
            ExitStatus::Signal(1),
            ExitStatus::Signal(64),
        ] {
            let enc = ExecMessage::Exit(ok).encode();
            assert_eq!(ExecMessage::decode(&enc), Ok(ExecMessage::Exit(ok)));
        }
        for bad in [
            ExitStatus::Code(-1),
            ExitStatus::Code(256),
            ExitStatus::Code(i32::MIN),
            ExitStatus::Code(i32::MAX),
            ExitStatus::Signal(0),
            ExitStatus::Signal(-9),
            ExitStatus::Signal(65),
            ExitStatus::Signal(i32::MAX),
        ] {
            let enc = ExecMessage::Exit(bad).encode();
            assert!(
                matches!(ExecMessage::decode(&enc), Err(MessageError::Invalid { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn usb_import_requests_and_replies() {
        let ok = UsbImportRequest {
            busid: "1-2.4".into(),
            devid: (1 << 16) | 3,
            speed: 3,
        };
        let r = OpenRequest::UsbImport(ok.clone());
        assert_eq!(OpenRequest::decode(&r.encode()), Ok(r.clone()));
        assert_eq!(r.min_version(), USB_VERSION);
        for bad in [
            UsbImportRequest {
                busid: String::new(),
                ..ok.clone()
            },
            UsbImportRequest {
                busid: "1-1/../x".into(),
                ..ok.clone()
            },
            UsbImportRequest {
                busid: "1".repeat(32),
                ..ok.clone()
            },
            UsbImportRequest {
                speed: 0,
                ..ok.clone()
            },
            UsbImportRequest { speed: 7, ..ok },
        ] {
            let enc = OpenRequest::UsbImport(bad.clone()).encode();
            assert!(OpenRequest::decode(&enc).is_err(), "{bad:?} accepted");
        }
        for reply in [
            UsbImportReply::Attached { port: 8 },
            UsbImportReply::Failed {
                reason: "no vhci-hcd".into(),
            },
        ] {
            assert_eq!(UsbImportReply::decode(&reply.encode()), Ok(reply));
        }
        let long = UsbImportReply::Failed {
            reason: "x".repeat(MAX_USB_REASON_LEN + 1),
        };
        assert!(UsbImportReply::decode(&long.encode()).is_err());
        assert!(UsbImportReply::decode(&[0xff; 3]).is_err());
        let e = OpenRequest::UsbExport(UsbExportRequest {
            busid: "2-1".into(),
            port: 8,
        });
        assert_eq!(OpenRequest::decode(&e.encode()), Ok(e));
        let bad = OpenRequest::UsbExport(UsbExportRequest {
            busid: "2-1/x".into(),
            port: 8,
        });
        assert!(OpenRequest::decode(&bad.encode()).is_err());
        for r in [
            UsbExportReply::Exported {
                devid: 0x10002,
                speed: 3,
            },
            UsbExportReply::Failed { reason: "x".into() },
        ] {
            assert_eq!(UsbExportReply::decode(&r.encode()), Ok(r));
        }
        let r = UsbExportReply::Exported { devid: 1, speed: 9 };
        assert!(UsbExportReply::decode(&r.encode()).is_err());
    }

    #[test]
    fn call_and_service_requests() {
        let c = OpenRequest::Call(
            CallRequest::parse("@dispvm:work-dvm", "bulkhead.Filecopy+a+b").unwrap(),
        );
        assert_eq!(OpenRequest::decode(&c.encode()), Ok(c.clone()));
        let OpenRequest::Call(cr) = &c else {
            unreachable!()
        };
        assert_eq!(
            (cr.service.as_str(), cr.arg.as_str()),
            ("bulkhead.Filecopy", "a+b")
        );
        assert_eq!(c.min_version(), CALLS_VERSION);
        assert!(
            CallRequest::parse("", "svc").is_ok(),
            "empty target is @default"
        );
        let s = OpenRequest::Service(ServiceRequest {
            service: "test.Echo".into(),
            arg: String::new(),
            source: "work".into(),
            user: Some("root".into()),
        });
        assert_eq!(OpenRequest::decode(&s.encode()), Ok(s));
        for (t, sa) in [
            ("work", ""),
            ("work", "+arg"),
            ("work", "a/b"),
            ("work", "sv c"),
            ("work", &"s".repeat(65)),
            ("work", &format!("s+{}", "a".repeat(65))),
            ("wo rk", "svc"),
            ("w/x", "svc"),
            (&"w".repeat(65), "svc"),
            ("work", "svc+a/b"),
            ("work", "svc+\n"),
        ] {
            assert!(CallRequest::parse(t, sa).is_err(), "{t:?} {sa:?} accepted");
            let (service, arg) = sa.split_once('+').unwrap_or((sa, ""));
            let raw = OpenRequest::Call(CallRequest::new(t, service, arg)).encode();
            assert!(OpenRequest::decode(&raw).is_err(), "{t:?} {sa:?} decoded");
        }
        for bad in [
            ServiceRequest {
                service: "s".into(),
                arg: "".into(),
                source: "".into(),
                user: None,
            },
            ServiceRequest {
                service: "s".into(),
                arg: "".into(),
                source: "a b".into(),
                user: None,
            },
            ServiceRequest {
                service: "s".into(),
                arg: "".into(),
                source: "w".into(),
                user: Some("../x".into()),
            },
            ServiceRequest {
                service: "".into(),
                arg: "".into(),
                source: "w".into(),
                user: None,
            },
        ] {
            let raw = OpenRequest::Service(bad.clone()).encode();
            assert!(OpenRequest::decode(&raw).is_err(), "{bad:?} decoded");
        }
        let long = ExecMessage::Refused {
            reason: "x".repeat(MAX_REASON_LEN + 1),
        }
        .encode();
        assert!(ExecMessage::decode(&long).is_err());
        let ok = ExecMessage::Refused {
            reason: "denied".into(),
        };
        assert_eq!(ExecMessage::decode(&ok.encode()), Ok(ok));
    }

    /// The committed fuzz seeds for calls are valid messages (so the fuzzer starts there).
    #[test]
    fn call_fuzz_seeds_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/messages");
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
        assert!(matches!(
            OpenRequest::decode(&read("call")),
            Ok(OpenRequest::Call(_))
        ));
        assert!(matches!(
            OpenRequest::decode(&read("service")),
            Ok(OpenRequest::Service(_))
        ));
        assert!(matches!(
            ExecMessage::decode(&read("refused")),
            Ok(ExecMessage::Refused { .. })
        ));
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("user"));
        assert!(valid_user_name("_apt"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("../x"));
        assert!(!valid_user_name(&"a".repeat(33)));
    }
}
