//! The byte stream from the usb domain's input sender to dom0, and dom0's policy over it.
//!
//! The peer is hostile: every length, count and code is bounded, and any violation is an
//! error after which the caller drops the peer (and destroys its uinput device).
//!
//! # Wire format (hand-written; all integers little-endian)
//!
//! Each message is a frame: `len: u32` (the length of the body that follows, at most
//! [`MAX_FRAME_BODY`]), then the body, whose first byte is the tag:
//!
//! - `1` Hello (exactly once, first): `magic: [u8; 4] = "BHIN"`, `version: u16 = 1`,
//!   `kind: u8` (1 keyboard, 2 mouse), `name_len: u8` (1..=[`MAX_NAME`]), `name` (printable
//!   ASCII, 0x20..=0x7e), `types: [u8; 4]` (bitset over EV_* 0..=[`EV_MAX`]), `keys: [u8; 96]`
//!   (bitset over key codes 0..=[`KEY_MAX`]), `rels: [u8; 2]` (bitset over REL_* 0..=
//!   [`REL_MAX`]). Bit `n` of a bitset is bit `n % 8` of byte `n / 8`, as the kernel's.
//! - `2` Events: `count: u8` (1..=[`MAX_EVENTS`]), then `count` times `type: u16`,
//!   `code: u16`, `value: i32`. The sender ends a batch at each SYN_REPORT.
//!
//! A frame's length must be exactly what its body needs: no trailing bytes.
//!
//! # Policy ([`restrict`], [`Validator`])
//!
//! dom0 creates its uinput device with the claimed capabilities intersected with what a
//! keyboard or mouse may have ([`allowed`]): keyboards keys 1..=248 except KEY_SYSRQ (99), a
//! proxied keyboard must never reach dom0's magic SysRq handler; mice BTN_LEFT..=BTN_TASK and
//! REL_X, REL_Y, REL_WHEEL, REL_HWHEEL and the two hi-res wheel codes. Types: EV_SYN, and
//! EV_KEY / EV_REL when some code of theirs remains.
//!
//! Events, per [`Validator::check`]:
//! - injected: EV_SYN SYN_REPORT; EV_KEY with a code in the restricted caps and value 0, 1
//!   or 2; EV_REL with a code in the restricted caps and |value| <= [`MAX_REL_VALUE`];
//! - dropped silently: EV_SYN SYN_DROPPED (uinput ignores it anyway), every other known
//!   event type (EV_MSC, EV_SW, EV_LED, EV_SND, EV_REP, EV_FF, EV_PWR, EV_FF_STATUS, EV_ABS:
//!   a real keyboard sends MSC_SCAN with each key), and EV_KEY / EV_REL codes the Hello
//!   claimed but the policy removed (KEY_SYSRQ is the Print Screen key: pressing it must not
//!   cost the user the keyboard);
//! - violations: an unknown type (not an EV_* of the kernel's), another EV_SYN code, an
//!   EV_KEY / EV_REL code the Hello did not claim, a key value other than 0/1/2, a relative
//!   value beyond [`MAX_REL_VALUE`], and more than [`Limits::max_events_per_sec`] events
//!   (counted before filtering) in a one-second window.

use std::time::{Duration, Instant};

/// The Hello's magic.
pub const MAGIC: [u8; 4] = *b"BHIN";
/// The protocol version in the Hello.
pub const VERSION: u16 = 1;
/// The longest device name, in bytes.
pub const MAX_NAME: usize = 80;
/// The most events in one Events message.
pub const MAX_EVENTS: usize = 64;
/// The highest key code (the kernel's KEY_MAX).
pub const KEY_MAX: u16 = 0x2ff;
/// The highest relative axis (REL_MAX).
pub const REL_MAX: u16 = 0x0f;
/// The highest event type (EV_MAX).
pub const EV_MAX: u16 = 0x1f;
/// The largest |value| of a relative event.
pub const MAX_REL_VALUE: i32 = 4096;

const KEY_BYTES: usize = (KEY_MAX as usize + 1) / 8;
const REL_BYTES: usize = (REL_MAX as usize + 1) / 8;
const TYPE_BYTES: usize = (EV_MAX as usize + 1) / 8;
const EVENT_LEN: usize = 8;
const TAG_HELLO: u8 = 1;
const TAG_EVENTS: u8 = 2;
const HELLO_FIXED: usize = 1 + 4 + 2 + 1 + 1 + TYPE_BYTES + KEY_BYTES + REL_BYTES;
/// The largest frame body (an Events message of [`MAX_EVENTS`]).
pub const MAX_FRAME_BODY: usize = 1 + 1 + MAX_EVENTS * EVENT_LEN;
const LEN_PREFIX: usize = 4;

// Event types and codes (linux/input-event-codes.h).
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_MSC: u16 = 0x04;
pub const EV_SW: u16 = 0x05;
pub const EV_LED: u16 = 0x11;
pub const EV_SND: u16 = 0x12;
pub const EV_REP: u16 = 0x14;
pub const EV_FF: u16 = 0x15;
pub const EV_PWR: u16 = 0x16;
pub const EV_FF_STATUS: u16 = 0x17;
pub const SYN_REPORT: u16 = 0;
pub const SYN_DROPPED: u16 = 3;
pub const KEY_ESC: u16 = 1;
pub const KEY_A: u16 = 30;
pub const KEY_SYSRQ: u16 = 99;
pub const KEY_MICMUTE: u16 = 248;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_TASK: u16 = 0x117;
pub const REL_X: u16 = 0x00;
pub const REL_Y: u16 = 0x01;
pub const REL_HWHEEL: u16 = 0x06;
pub const REL_WHEEL: u16 = 0x08;
pub const REL_WHEEL_HI_RES: u16 = 0x0b;
pub const REL_HWHEEL_HI_RES: u16 = 0x0c;

/// A fixed-size bitset in the kernel's layout.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bits<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for Bits<N> {
    fn default() -> Self {
        Bits([0; N])
    }
}

impl<const N: usize> Bits<N> {
    /// The number of bits.
    pub const BITS: usize = N * 8;

    /// Whether bit `n` is set (false beyond the end).
    pub fn contains(&self, n: u16) -> bool {
        let n = usize::from(n);
        n < Self::BITS && self.0[n / 8] & (1 << (n % 8)) != 0
    }

    /// Sets bit `n`; false (and nothing set) beyond the end.
    pub fn insert(&mut self, n: u16) -> bool {
        let i = usize::from(n);
        if i >= Self::BITS {
            return false;
        }
        self.0[i / 8] |= 1 << (i % 8);
        true
    }

    /// Clears bit `n`.
    pub fn remove(&mut self, n: u16) {
        let i = usize::from(n);
        if i < Self::BITS {
            self.0[i / 8] &= !(1 << (i % 8));
        }
    }

    /// The bits set in both.
    pub fn intersect(&self, other: &Self) -> Self {
        let mut out = [0u8; N];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a & b;
        }
        Bits(out)
    }

    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// The bits that are set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..Self::BITS).filter_map(move |n| {
            let n = n as u16;
            self.contains(n).then_some(n)
        })
    }

    /// A bitset from the start of `bytes` (as the kernel fills it; missing bytes are 0).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut out = [0u8; N];
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = *b;
        }
        Bits(out)
    }
}

impl<const N: usize> std::fmt::Debug for Bits<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<const N: usize> FromIterator<u16> for Bits<N> {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut b = Bits::default();
        for n in iter {
            b.insert(n);
        }
        b
    }
}

/// Key codes 0..=KEY_MAX.
pub type KeySet = Bits<KEY_BYTES>;
/// Relative axes 0..=REL_MAX.
pub type RelSet = Bits<REL_BYTES>;
/// Event types 0..=EV_MAX.
pub type TypeSet = Bits<TYPE_BYTES>;

/// What a device has (claimed by the sender, or left by [`restrict`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caps {
    pub types: TypeSet,
    pub keys: KeySet,
    pub rels: RelSet,
}

/// What the sender says its device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Keyboard,
    Mouse,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Keyboard => 1,
            Kind::Mouse => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Kind::Keyboard),
            2 => Some(Kind::Mouse),
            _ => None,
        }
    }
}

/// The first message: the device and what it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// 1..=MAX_NAME bytes of printable ASCII ([`sanitize_name`]).
    pub name: String,
    pub kind: Kind,
    pub caps: Caps,
}

/// One input event (`struct input_event` without its time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    pub type_: u16,
    pub code: u16,
    pub value: i32,
}

impl Event {
    pub const fn new(type_: u16, code: u16, value: i32) -> Self {
        Event { type_, code, value }
    }

    /// EV_SYN SYN_REPORT.
    pub const fn syn_report() -> Self {
        Event::new(EV_SYN, SYN_REPORT, 0)
    }

    /// Whether this is EV_SYN SYN_REPORT.
    pub fn is_syn_report(&self) -> bool {
        self.type_ == EV_SYN && self.code == SYN_REPORT
    }
}

/// A message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    /// 1..=MAX_EVENTS events.
    Events(Vec<Event>),
}

/// A malformed stream: the caller drops the peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("frame of {0} bytes (at most {MAX_FRAME_BODY})")]
    FrameTooLong(u32),
    #[error("empty frame")]
    EmptyFrame,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("frame length {got} does not match its {tag} message's {want}")]
    BadLength {
        tag: &'static str,
        got: usize,
        want: usize,
    },
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported version {0}")]
    BadVersion(u16),
    #[error("unknown device kind {0}")]
    BadKind(u8),
    #[error("device name of {0} bytes (1..={MAX_NAME})")]
    BadNameLength(usize),
    #[error("device name has byte {0:#04x}, not printable ASCII")]
    BadNameByte(u8),
    #[error("events message with {0} events (1..={MAX_EVENTS})")]
    BadEventCount(usize),
}

/// Makes a device name fit the protocol: bytes outside printable ASCII become `?`, then at
/// most [`MAX_NAME`] bytes; an empty name becomes `unnamed`.
pub fn sanitize_name(raw: &[u8]) -> String {
    let s: String = raw
        .iter()
        .take(MAX_NAME)
        .map(|&b| {
            if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    if s.is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

/// Encodes a message as one frame. A Hello's name is sanitised ([`sanitize_name`]) and an
/// Events message must have 1..=[`MAX_EVENTS`] events: longer ones are the caller's bug and
/// are cut to [`MAX_EVENTS`] (use [`encode_events`] to split).
pub fn encode(msg: &Msg) -> Vec<u8> {
    let mut body = Vec::with_capacity(MAX_FRAME_BODY);
    match msg {
        Msg::Hello(h) => {
            let name = sanitize_name(h.name.as_bytes());
            body.push(TAG_HELLO);
            body.extend_from_slice(&MAGIC);
            body.extend_from_slice(&VERSION.to_le_bytes());
            body.push(h.kind.to_byte());
            // sanitize_name gives 1..=MAX_NAME (80) bytes.
            body.push(name.len() as u8);
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(&h.caps.types.0);
            body.extend_from_slice(&h.caps.keys.0);
            body.extend_from_slice(&h.caps.rels.0);
        }
        Msg::Events(events) => {
            let events = &events[..events.len().min(MAX_EVENTS)];
            body.push(TAG_EVENTS);
            body.push(events.len() as u8);
            for e in events {
                body.extend_from_slice(&e.type_.to_le_bytes());
                body.extend_from_slice(&e.code.to_le_bytes());
                body.extend_from_slice(&e.value.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encodes `events` as as many Events frames as needed (none for no events).
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    events
        .chunks(MAX_EVENTS)
        .flat_map(|c| encode(&Msg::Events(c.to_vec())))
        .collect()
}

/// Decodes the first message of `buf`: `Ok(None)` when more bytes are needed, else the
/// message and the number of bytes it took (never more than `buf.len()`).
pub fn decode(buf: &[u8]) -> Result<Option<(Msg, usize)>, ProtoError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len as usize > MAX_FRAME_BODY {
        return Err(ProtoError::FrameTooLong(len));
    }
    let len = len as usize;
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    let (&tag, rest) = body.split_first().ok_or(ProtoError::EmptyFrame)?;
    let msg = match tag {
        TAG_HELLO => Msg::Hello(decode_hello(rest, len)?),
        TAG_EVENTS => Msg::Events(decode_events(rest, len)?),
        t => return Err(ProtoError::UnknownTag(t)),
    };
    Ok(Some((msg, LEN_PREFIX + len)))
}

fn decode_hello(rest: &[u8], len: usize) -> Result<Hello, ProtoError> {
    let short = |want| ProtoError::BadLength {
        tag: "hello",
        got: len,
        want,
    };
    // Magic, version, kind and name length first: they say how long the rest must be.
    let head = rest.get(..8).ok_or(short(HELLO_FIXED))?;
    let magic = [head[0], head[1], head[2], head[3]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != VERSION {
        return Err(ProtoError::BadVersion(version));
    }
    let kind = Kind::from_byte(head[6]).ok_or(ProtoError::BadKind(head[6]))?;
    let name_len = usize::from(head[7]);
    if name_len == 0 || name_len > MAX_NAME {
        return Err(ProtoError::BadNameLength(name_len));
    }
    let want = HELLO_FIXED + name_len;
    if len != want {
        return Err(short(want));
    }
    let rest = &rest[8..];
    let (name, rest) = rest.split_at(name_len);
    if let Some(&b) = name.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
        return Err(ProtoError::BadNameByte(b));
    }
    let (types, rest) = rest.split_at(TYPE_BYTES);
    let (keys, rels) = rest.split_at(KEY_BYTES);
    Ok(Hello {
        // Printable ASCII, checked above.
        name: name.iter().map(|&b| char::from(b)).collect(),
        kind,
        caps: Caps {
            types: TypeSet::from_bytes(types),
            keys: KeySet::from_bytes(keys),
            rels: RelSet::from_bytes(rels),
        },
    })
}

fn decode_events(rest: &[u8], len: usize) -> Result<Vec<Event>, ProtoError> {
    let (&count, rest) = rest.split_first().ok_or(ProtoError::BadLength {
        tag: "events",
        got: len,
        want: 2,
    })?;
    let count = usize::from(count);
    if count == 0 || count > MAX_EVENTS {
        return Err(ProtoError::BadEventCount(count));
    }
    let want = 2 + count * EVENT_LEN;
    if len != want {
        return Err(ProtoError::BadLength {
            tag: "events",
            got: len,
            want,
        });
    }
    Ok(rest
        .chunks_exact(EVENT_LEN)
        .map(|c| Event {
            type_: u16::from_le_bytes([c[0], c[1]]),
            code: u16::from_le_bytes([c[2], c[3]]),
            value: i32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// What a device of `kind` may have in dom0, whatever it claims.
pub fn allowed(kind: Kind) -> Caps {
    let mut caps = Caps::default();
    caps.types.insert(EV_SYN);
    match kind {
        Kind::Keyboard => {
            caps.types.insert(EV_KEY);
            caps.keys = (KEY_ESC..=KEY_MICMUTE)
                .filter(|&k| k != KEY_SYSRQ)
                .collect();
        }
        Kind::Mouse => {
            caps.types.insert(EV_KEY);
            caps.types.insert(EV_REL);
            caps.keys = (BTN_LEFT..=BTN_TASK).collect();
            caps.rels = [
                REL_X,
                REL_Y,
                REL_WHEEL,
                REL_HWHEEL,
                REL_WHEEL_HI_RES,
                REL_HWHEEL_HI_RES,
            ]
            .into_iter()
            .collect();
        }
    }
    caps
}

/// The capabilities dom0 gives the uinput device for `hello`: what it claims, within
/// [`allowed`] for its kind. EV_KEY / EV_REL only when claimed and some code remains; codes
/// of a type it does not claim are not kept.
pub fn restrict(hello: &Hello) -> Caps {
    let allow = allowed(hello.kind);
    let mut out = Caps::default();
    out.types.insert(EV_SYN);
    if hello.caps.types.contains(EV_KEY) {
        out.keys = hello.caps.keys.intersect(&allow.keys);
    }
    if hello.caps.types.contains(EV_REL) {
        out.rels = hello.caps.rels.intersect(&allow.rels);
    }
    if !out.keys.is_empty() {
        out.types.insert(EV_KEY);
    }
    if !out.rels.is_empty() {
        out.types.insert(EV_REL);
    }
    out
}

/// dom0's limits on a stream.
#[derive(Debug, Clone)]
pub struct Limits {
    /// More events than this (before filtering) in one second is a violation.
    pub max_events_per_sec: u32,
    /// What dom0 knows the device to be (from its USB interface, not from the sender): a Hello
    /// claiming another kind is refused, so a sender cannot turn a mouse the user allowed
    /// into a keyboard that types into dom0. `None`: take the Hello's kind.
    pub kind: Option<Kind>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events_per_sec: 4000,
            kind: None,
        }
    }
}

/// An event or rate the policy does not accept: the caller drops the peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Violation {
    #[error("unknown event type {0:#x}")]
    UnknownType(u16),
    #[error("EV_SYN code {0} (only SYN_REPORT and SYN_DROPPED)")]
    SynCode(u16),
    #[error("{kind} code {code:#x} the device did not claim")]
    Unclaimed { kind: &'static str, code: u16 },
    #[error("EV_KEY {code:#x} with value {value} (0, 1 or 2)")]
    KeyValue { code: u16, value: i32 },
    #[error("EV_REL {code:#x} with value {value} (|value| <= {MAX_REL_VALUE})")]
    RelValue { code: u16, value: i32 },
    #[error("more than {0} events in one second")]
    Rate(u32),
}

/// The events of a batch that pass, and how many were dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checked {
    /// To inject, in order. Empty when only SYN_REPORTs would be left (nothing happened).
    pub events: Vec<Event>,
    pub dropped: usize,
}

/// Checks the events of one stream against its Hello and the policy (see the module's
/// documentation).
#[derive(Debug)]
pub struct Validator {
    claimed: Caps,
    caps: Caps,
    limits: Limits,
    window_start: Option<Instant>,
    in_window: u64,
}

impl Validator {
    pub fn new(hello: &Hello, limits: Limits) -> Self {
        Validator {
            claimed: hello.caps.clone(),
            caps: restrict(hello),
            limits,
            window_start: None,
            in_window: 0,
        }
    }

    /// The restricted capabilities ([`restrict`]) the uinput device is to have.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Checks one batch received at `now`.
    pub fn check(&mut self, events: &[Event], now: Instant) -> Result<Checked, Violation> {
        self.count(events.len(), now)?;
        let mut out = Checked::default();
        for e in events {
            if self.accept(e)? {
                out.events.push(*e);
            } else {
                out.dropped += 1;
            }
        }
        if out.events.iter().all(Event::is_syn_report) {
            out.events.clear();
        }
        Ok(out)
    }

    fn count(&mut self, n: usize, now: Instant) -> Result<(), Violation> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        self.in_window += n as u64;
        if self.in_window > u64::from(self.limits.max_events_per_sec) {
            return Err(Violation::Rate(self.limits.max_events_per_sec));
        }
        Ok(())
    }

    /// Ok(true): inject; Ok(false): drop silently.
    fn accept(&self, e: &Event) -> Result<bool, Violation> {
        match e.type_ {
            EV_SYN => match e.code {
                SYN_REPORT => Ok(true),
                SYN_DROPPED => Ok(false),
                c => Err(Violation::SynCode(c)),
            },
            EV_KEY => {
                if !self.claimed.types.contains(EV_KEY) || !self.claimed.keys.contains(e.code) {
                    return Err(Violation::Unclaimed {
                        kind: "EV_KEY",
                        code: e.code,
                    });
                }
                if !(0..=2).contains(&e.value) {
                    return Err(Violation::KeyValue {
                        code: e.code,
                        value: e.value,
                    });
                }
                Ok(self.caps.keys.contains(e.code))
            }
            EV_REL => {
                if !self.claimed.types.contains(EV_REL) || !self.claimed.rels.contains(e.code) {
                    return Err(Violation::Unclaimed {
                        kind: "EV_REL",
                        code: e.code,
                    });
                }
                if e.value.unsigned_abs() > MAX_REL_VALUE as u32 {
                    return Err(Violation::RelValue {
                        code: e.code,
                        value: e.value,
                    });
                }
                Ok(self.caps.rels.contains(e.code))
            }
            EV_ABS | EV_MSC | EV_SW | EV_LED | EV_SND | EV_REP | EV_FF | EV_PWR | EV_FF_STATUS => {
                Ok(false)
            }
            t => Err(Violation::UnknownType(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyboard() -> Hello {
        Hello {
            name: "Test Keyboard".into(),
            kind: Kind::Keyboard,
            caps: Caps {
                types: [EV_SYN, EV_KEY, EV_MSC, EV_LED, EV_REP]
                    .into_iter()
                    .collect(),
                keys: (0..=255).chain([BTN_LEFT, 0x2ff]).collect(),
                rels: [REL_X].into_iter().collect(),
            },
        }
    }

    fn mouse() -> Hello {
        Hello {
            name: "Test Mouse".into(),
            kind: Kind::Mouse,
            caps: Caps {
                types: [EV_SYN, EV_KEY, EV_REL, EV_MSC, EV_ABS]
                    .into_iter()
                    .collect(),
                keys: (BTN_LEFT..=0x11f).chain([KEY_A, KEY_SYSRQ]).collect(),
                rels: (0..=REL_MAX).collect(),
            },
        }
    }

    fn one(buf: &[u8]) -> Msg {
        let (m, used) = decode(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        m
    }

    #[test]
    fn hello_and_events_round_trip() {
        for h in [keyboard(), mouse()] {
            let m = Msg::Hello(h);
            assert_eq!(one(&encode(&m)), m);
        }
        let ev = Msg::Events(vec![
            Event::new(EV_KEY, KEY_A, 1),
            Event::new(EV_REL, REL_X, -4096),
            Event::new(0xffff, 0xffff, i32::MIN),
            Event::syn_report(),
        ]);
        assert_eq!(one(&encode(&ev)), ev);
        let full = Msg::Events(vec![Event::new(EV_REL, REL_Y, 7); MAX_EVENTS]);
        let bytes = encode(&full);
        assert_eq!(bytes.len(), 4 + MAX_FRAME_BODY);
        assert_eq!(one(&bytes), full);
    }

    #[test]
    fn decoding_is_incremental_and_never_claims_more() {
        let mut stream = encode(&Msg::Hello(keyboard()));
        stream.extend(encode_events(&[Event::new(EV_KEY, KEY_A, 1); 130]));
        let mut msgs = Vec::new();
        let mut buf = Vec::new();
        for &b in &stream {
            buf.push(b);
            while let Some((m, used)) = decode(&buf).unwrap() {
                assert!(used <= buf.len());
                buf.drain(..used);
                msgs.push(m);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(msgs.len(), 4);
        let sizes: Vec<_> = msgs
            .iter()
            .skip(1)
            .map(|m| match m {
                Msg::Events(e) => e.len(),
                Msg::Hello(_) => 0,
            })
            .collect();
        assert_eq!(sizes, [64, 64, 2]);
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[1, 0, 0]), Ok(None));
        assert_eq!(decode(&[2, 0, 0, 0, 2]), Ok(None));
    }

    #[test]
    fn frame_limits() {
        let too_long = (MAX_FRAME_BODY as u32 + 1).to_le_bytes();
        assert_eq!(
            decode(&too_long),
            Err(ProtoError::FrameTooLong(MAX_FRAME_BODY as u32 + 1))
        );
        assert_eq!(
            decode(&u32::MAX.to_le_bytes()),
            Err(ProtoError::FrameTooLong(u32::MAX))
        );
        assert_eq!(decode(&[0, 0, 0, 0]), Err(ProtoError::EmptyFrame));
        assert_eq!(decode(&[1, 0, 0, 0, 9]), Err(ProtoError::UnknownTag(9)));
        // Trailing bytes inside a frame.
        let mut b = encode(&Msg::Events(vec![Event::syn_report()]));
        b[0] += 1;
        b.push(0);
        assert!(matches!(decode(&b), Err(ProtoError::BadLength { .. })));
        let mut b = encode(&Msg::Hello(keyboard()));
        b[0] -= 1;
        b.pop();
        assert!(matches!(decode(&b), Err(ProtoError::BadLength { .. })));
    }

    #[test]
    fn event_count_limits() {
        assert_eq!(
            decode(&[2, 0, 0, 0, TAG_EVENTS, 0]),
            Err(ProtoError::BadEventCount(0))
        );
        let mut b = vec![TAG_EVENTS, 65];
        b.extend(vec![0; 65 * 8]);
        let mut f = (b.len() as u32).to_le_bytes().to_vec();
        f.extend(b);
        assert!(matches!(decode(&f), Err(ProtoError::FrameTooLong(_))));
        // 65 within a legal frame length: the count itself is refused.
        let mut b = vec![TAG_EVENTS, 65];
        b.extend(vec![0; 64 * 8]);
        let mut f = (b.len() as u32).to_le_bytes().to_vec();
        f.extend(b);
        assert_eq!(decode(&f), Err(ProtoError::BadEventCount(65)));
        // encode never writes more than MAX_EVENTS in one frame.
        let long = Msg::Events(vec![Event::syn_report(); 100]);
        assert!(matches!(one(&encode(&long)), Msg::Events(e) if e.len() == MAX_EVENTS));
    }

    fn hello_bytes(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = encode(&Msg::Hello(keyboard()));
        edit(&mut b);
        b
    }

    #[test]
    fn hello_limits() {
        assert_eq!(
            decode(&hello_bytes(|b| b[5] = b'X')),
            Err(ProtoError::BadMagic(*b"XHIN"))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[9] = 2)),
            Err(ProtoError::BadVersion(2))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[11] = 3)),
            Err(ProtoError::BadKind(3))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[12] = 0)),
            Err(ProtoError::BadNameLength(0))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[12] = 81)),
            Err(ProtoError::BadNameLength(81))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[13] = b'\n')),
            Err(ProtoError::BadNameByte(b'\n'))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[14] = 0xc3)),
            Err(ProtoError::BadNameByte(0xc3))
        );
        assert_eq!(
            decode(&hello_bytes(|b| b[13] = 0x7f)),
            Err(ProtoError::BadNameByte(0x7f))
        );
        // A name of exactly MAX_NAME bytes is fine; longer ones are cut by the encoder.
        let mut h = keyboard();
        h.name = "n".repeat(200);
        let Msg::Hello(back) = one(&encode(&Msg::Hello(h))) else {
            panic!("not a hello");
        };
        assert_eq!(back.name, "n".repeat(MAX_NAME));
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(
            sanitize_name(b"Logi\x1b[2J\xc3\xa9 Mouse\n"),
            "Logi?[2J?? Mouse?"
        );
        assert_eq!(sanitize_name(b""), "unnamed");
        assert_eq!(sanitize_name(&[b'x'; 100]).len(), MAX_NAME);
    }

    #[test]
    fn keyboard_caps_are_restricted_and_sysrq_refused() {
        let caps = restrict(&keyboard());
        assert!(!caps.keys.contains(KEY_SYSRQ));
        assert!(!caps.keys.contains(0));
        assert!(!caps.keys.contains(249));
        assert!(!caps.keys.contains(BTN_LEFT));
        assert!(!caps.keys.contains(0x2ff));
        assert!(caps.keys.contains(KEY_ESC) && caps.keys.contains(KEY_MICMUTE));
        assert_eq!(caps.keys.iter().count(), 247);
        assert!(caps.rels.is_empty());
        assert_eq!(caps.types.iter().collect::<Vec<_>>(), [EV_SYN, EV_KEY]);
        // Even a keyboard that claims only SysRq gets no key at all.
        let mut h = keyboard();
        h.caps.keys = [KEY_SYSRQ].into_iter().collect();
        let caps = restrict(&h);
        assert!(caps.keys.is_empty());
        assert_eq!(caps.types.iter().collect::<Vec<_>>(), [EV_SYN]);
        // Keys without EV_KEY are not kept.
        let mut h = keyboard();
        h.caps.types.remove(EV_KEY);
        assert!(restrict(&h).keys.is_empty());
    }

    #[test]
    fn mouse_caps_are_restricted() {
        let caps = restrict(&mouse());
        assert_eq!(
            caps.keys.iter().collect::<Vec<_>>(),
            (BTN_LEFT..=BTN_TASK).collect::<Vec<_>>()
        );
        assert_eq!(
            caps.rels.iter().collect::<Vec<_>>(),
            [
                REL_X,
                REL_Y,
                REL_HWHEEL,
                REL_WHEEL,
                REL_WHEEL_HI_RES,
                REL_HWHEEL_HI_RES
            ]
        );
        assert_eq!(
            caps.types.iter().collect::<Vec<_>>(),
            [EV_SYN, EV_KEY, EV_REL]
        );
    }

    fn at(v: &mut Validator, events: &[Event]) -> Result<Checked, Violation> {
        v.check(events, Instant::now())
    }

    #[test]
    fn validator_passes_drops_and_refuses() {
        let mut v = Validator::new(&keyboard(), Limits::default());
        let press = [
            Event::new(EV_MSC, 4, 0x70004),
            Event::new(EV_KEY, KEY_A, 1),
            Event::syn_report(),
        ];
        assert_eq!(
            at(&mut v, &press).unwrap(),
            Checked {
                events: vec![Event::new(EV_KEY, KEY_A, 1), Event::syn_report()],
                dropped: 1
            }
        );
        for value in [0, 1, 2] {
            assert_eq!(
                at(&mut v, &[Event::new(EV_KEY, KEY_A, value)])
                    .unwrap()
                    .events
                    .len(),
                1
            );
        }
        // SysRq (claimed, removed by the policy): dropped, and a batch of nothing else is empty.
        let sysrq = at(
            &mut v,
            &[Event::new(EV_KEY, KEY_SYSRQ, 1), Event::syn_report()],
        )
        .unwrap();
        assert_eq!(sysrq.events, []);
        assert_eq!(sysrq.dropped, 1);
        // Claimed but off-policy codes and known non-key types: dropped.
        for e in [
            Event::new(EV_KEY, BTN_LEFT, 1),
            Event::new(EV_KEY, 0x2ff, 1),
            Event::new(EV_LED, 0, 1),
            Event::new(EV_ABS, 0, 5),
            Event::new(EV_SW, 0, 1),
            Event::new(EV_REP, 0, 250),
            Event::new(EV_SYN, SYN_DROPPED, 0),
        ] {
            assert_eq!(at(&mut v, &[e]).unwrap().dropped, 1, "{e:?}");
        }
        // Violations.
        assert_eq!(
            at(&mut v, &[Event::new(EV_KEY, KEY_A, 3)]),
            Err(Violation::KeyValue {
                code: KEY_A,
                value: 3
            })
        );
        assert_eq!(
            at(&mut v, &[Event::new(EV_KEY, KEY_A, -1)]),
            Err(Violation::KeyValue {
                code: KEY_A,
                value: -1
            })
        );
        assert_eq!(
            at(&mut v, &[Event::new(EV_KEY, 0x300, 1)]),
            Err(Violation::Unclaimed {
                kind: "EV_KEY",
                code: 0x300
            })
        );
        // The keyboard claimed REL_X but not EV_REL.
        assert!(matches!(
            at(&mut v, &[Event::new(EV_REL, REL_X, 1)]),
            Err(Violation::Unclaimed { .. })
        ));
        assert_eq!(
            at(&mut v, &[Event::new(EV_SYN, 2, 0)]),
            Err(Violation::SynCode(2))
        );
        for t in [0x06, 0x10, 0x13, 0x1f, 0x20, 0xffff] {
            assert_eq!(
                at(&mut v, &[Event::new(t, 0, 0)]),
                Err(Violation::UnknownType(t))
            );
        }
    }

    #[test]
    fn validator_mouse_values() {
        let mut v = Validator::new(&mouse(), Limits::default());
        let ok = [
            Event::new(EV_REL, REL_X, 4096),
            Event::new(EV_REL, REL_Y, -4096),
            Event::new(EV_REL, REL_WHEEL_HI_RES, 120),
            Event::new(EV_KEY, BTN_LEFT, 1),
            Event::syn_report(),
        ];
        assert_eq!(at(&mut v, &ok).unwrap().events, ok);
        // REL_DIAL (7) and REL_MISC (9): claimed, not allowed: dropped.
        let c = at(
            &mut v,
            &[Event::new(EV_REL, 7, 1), Event::new(EV_REL, 9, 1)],
        )
        .unwrap();
        assert_eq!((c.events.len(), c.dropped), (0, 2));
        // Keys a mouse claimed beyond the buttons: dropped.
        assert_eq!(
            at(&mut v, &[Event::new(EV_KEY, KEY_SYSRQ, 1)])
                .unwrap()
                .dropped,
            1
        );
        for value in [4097, -4097, i32::MIN, i32::MAX] {
            assert_eq!(
                at(&mut v, &[Event::new(EV_REL, REL_X, value)]),
                Err(Violation::RelValue { code: REL_X, value })
            );
        }
    }

    #[test]
    fn rate_bound() {
        let mut v = Validator::new(
            &mouse(),
            Limits {
                max_events_per_sec: 100,
                kind: None,
            },
        );
        let t0 = Instant::now();
        let batch = [Event::new(EV_REL, REL_X, 1); 50];
        v.check(&batch, t0).unwrap();
        v.check(&batch, t0 + Duration::from_millis(900)).unwrap();
        assert_eq!(
            v.check(&[Event::syn_report()], t0 + Duration::from_millis(999)),
            Err(Violation::Rate(100))
        );
        // A new second starts a new window.
        let mut v = Validator::new(
            &mouse(),
            Limits {
                max_events_per_sec: 100,
                kind: None,
            },
        );
        for s in 0..5 {
            let t = t0 + Duration::from_secs(s);
            v.check(&batch, t).unwrap();
            v.check(&batch, t + Duration::from_millis(500)).unwrap();
        }
        // The default bound.
        assert_eq!(Limits::default().max_events_per_sec, 4000);
        let mut v = Validator::new(&mouse(), Limits::default());
        let big = [Event::new(EV_REL, REL_X, 1); 64];
        for _ in 0..62 {
            v.check(&big, t0).unwrap();
        }
        assert_eq!(v.check(&big, t0), Err(Violation::Rate(4000)));
    }

    #[test]
    fn bitsets() {
        let mut k = KeySet::default();
        assert!(k.insert(KEY_MAX));
        assert!(!k.insert(KEY_MAX + 1));
        assert!(!k.contains(KEY_MAX + 1));
        assert!(k.contains(KEY_MAX));
        k.remove(KEY_MAX);
        assert!(k.is_empty());
        let r = RelSet::from_bytes(&[0xff, 0xff, 0xff]);
        assert_eq!(r.iter().count(), 16);
    }
}
