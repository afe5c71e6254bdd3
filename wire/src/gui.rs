//! The GUI protocol between a domain's `gui-agent` and dom0 (issue 5, contract E).
//!
//! It travels as plain bytes on a wire stream opened with `OpenRequest::Gui` (domaind relays
//! it to dom0 over the socket returned by D-Bus `OpenGui`; inside the domain the agent relays
//! it to the gui-agent's socket `/run/bulkhead-gui/gui.sock`). Everything here is pure: an
//! encoder producing bytes and an incremental decoder over byte slices, so the dom0 side can
//! be fuzzed without I/O.
//!
//! # Message layout
//! Every message is a fixed 12-byte header followed by `length` body bytes, all integers
//! little-endian:
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0      | 4    | type (`T_*` constants; one table for both directions)         |
//! | 4      | 4    | window id (0 for connection-wide messages, never 0 otherwise) |
//! | 8      | 4    | body length                                                   |
//!
//! Each type has either an exact body length or a maximum ([`body_limit`]); the decoder
//! checks the header before it buffers a body, so a peer can never make it hold more than
//! one header plus the largest body of the type it announced. A message of the other
//! direction, an unknown type, a wrong length, a zero/non-zero window where the other is
//! needed, or a field out of range is an error ([`GuiError`]); the decoder stays failed after
//! one (the reader is expected to drop the peer).
//!
//! ## Bodies (agent -> dom0, [`AgentMsg`])
//! - `HELLO` (window 0): `u16 min_version, u16 max_version`.
//! - `CREATE`: `i32 x, i32 y, u32 width, u32 height, u32 parent` (0 = toplevel; otherwise a
//!   popup whose `x, y` are relative to the parent's top-left corner). Window ids are chosen
//!   by the agent, strictly increasing on one connection (so never reused: input dom0 sent
//!   to a destroyed window can never reach a new one); dom0 refuses an id not above every
//!   earlier one.
//! - `CONFIGURE`: `i32 x, i32 y, u32 width, u32 height`: new geometry; dom0 reallocates the
//!   window's buffer (cleared) when the size changes, the agent then sends damage.
//! - `MAP`, `UNMAP`, `DESTROY`: no body.
//! - `TITLE`, `APP_ID`: raw bytes, at most [`MAX_TITLE_LEN`] / [`MAX_APP_ID_LEN`] (dom0
//!   sanitises them; they are not required to be UTF-8 here). [`AgentMsg::title`] and
//!   [`AgentMsg::app_id`] cut longer text on a character boundary.
//! - `DAMAGE`: `u32 x, u32 y, u32 width, u32 height, u32 format` ([`PixelFormat`]) followed by
//!   exactly `width * height * 4` bytes of pixels, rows top to bottom, no padding, each pixel
//!   a little-endian `u32` `0xAARRGGBB` (wl_shm's ARGB8888/XRGB8888 memory layout).
//!   At most [`MAX_DAMAGE_PIXELS`] pixels per message; the agent splits bigger rectangles
//!   into row bands.
//! - `CURSOR`: `u32` named cursor ([`Cursor`]; [`AgentMsg::cursor_named`] maps a name outside
//!   the set to `default`).
//! - `STATE`: `u32` flags ([`WindowState`]): maximised, fullscreen (dom0 turns it into
//!   maximise), minimised.
//! - `CLIPBOARD_DATA` (window 0): at most [`MAX_CLIPBOARD_LEN`] bytes
//!   ([`AgentMsg::clipboard_data`] cuts the rest), only as the answer to a
//!   `CLIPBOARD_REQUEST` (dom0 ignores unrequested data).
//!
//! ## Bodies (dom0 -> agent, [`HostMsg`])
//! - `HELLO` (window 0): as above.
//! - `KEYMAP` (window 0): XKB keymap text (`xkb_keymap` v1 format), at most [`MAX_KEYMAP_LEN`].
//! - `KEY`: `u32 keycode` (XKB keycode = evdev + 8), `u32 pressed` (0 or 1).
//! - `MOTION`: `i32 x, i32 y` in window-local pixels.
//! - `BUTTON`: `u32 button` (Linux `BTN_*`, e.g. 0x110 left), `u32 pressed` (0 or 1).
//! - `SCROLL`: `u32 axis` (0 vertical, 1 horizontal), `i32 value` (1/256 pixel, like
//!   `wl_fixed`), `i32 v120` (high-resolution wheel steps, 120 = one notch; 0 = none).
//! - `ENTER`: `i32 x, i32 y` (pointer entered the window); `LEAVE`: no body.
//! - `FOCUS_IN`, `FOCUS_OUT`: keyboard focus, no body.
//! - `CONFIGURE_REQUEST`: `u32 width, u32 height` (dom0 asks for a size).
//! - `CLOSE`: no body (the user asked to close the window).
//! - `CLIPBOARD_REQUEST` (window 0): no body (user pressed the copy chord in dom0).
//! - `CLIPBOARD_DATA` (window 0): at most [`MAX_CLIPBOARD_LEN`] bytes (paste into the domain).
//!
//! # Design note: versions
//! Both sides send `HELLO` with the range of versions they speak as their first message,
//! right after connecting, without waiting for the peer (no round trip, no deadlock). Each
//! side then computes the same result with [`negotiate`]: the highest version in both
//! ranges. If the ranges do not overlap, both sides log both ranges (dom0 tells the user the
//! domain's guest tools and dom0 must be updated together) and close the connection; nothing
//! else is sent. Any message before the peer's `HELLO`, a second `HELLO`, or a type newer
//! than the negotiated version ([`type_min_version`]) is a protocol violation and the peer is
//! dropped. New features come as new message types in a new version, sent only when that
//! version was negotiated; existing bodies never change meaning within a version.
//!
//! # Design note: pixels
//! Pixels travel as bytes inside `DAMAGE` messages for both sandbox and VM domains: one code
//! path, no shared memory whose contents the guest could change while dom0 reads them (a
//! memfd shared with a sandbox would give zero-copy but invites time-of-check/time-of-use
//! bugs and needs seals plus fd passing through domaind; VMs have no shared memory with dom0
//! at all here). Only damaged rectangles are sent. dom0 owns each window's buffer and copies
//! a rectangle in only after checking that it lies inside the buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Newest GUI protocol version this build speaks.
pub const GUI_PROTOCOL_VERSION: u16 = 1;
/// Oldest GUI protocol version this build speaks.
pub const MIN_GUI_PROTOCOL_VERSION: u16 = 1;

/// Size of the fixed message header.
pub const HEADER_LEN: usize = 12;
/// Widest window (Qubes' `MAX_WINDOW_WIDTH`).
pub const MAX_WIDTH: u32 = 16384;
/// Tallest window (Qubes' `MAX_WINDOW_HEIGHT`).
pub const MAX_HEIGHT: u32 = 6144;
/// Longest title in bytes.
pub const MAX_TITLE_LEN: usize = 128;
/// Longest app id in bytes.
pub const MAX_APP_ID_LEN: usize = 128;
/// Largest clipboard transfer (Qubes' upper bound).
pub const MAX_CLIPBOARD_LEN: usize = 256_000;
/// Largest XKB keymap text.
pub const MAX_KEYMAP_LEN: usize = 1 << 20;
/// Most pixels in one `DAMAGE` message (fits a 3840x2160 frame; 32 MiB of pixels).
pub const MAX_DAMAGE_PIXELS: u64 = 8 << 20;
/// Size of the fixed part of a `DAMAGE` body (before the pixels).
pub const DAMAGE_FIXED_LEN: usize = 20;
/// Largest position coordinate magnitude accepted in `CREATE`/`CONFIGURE` (x).
pub const MAX_POS_X: i32 = MAX_WIDTH as i32;
/// Largest position coordinate magnitude accepted in `CREATE`/`CONFIGURE` (y).
pub const MAX_POS_Y: i32 = MAX_HEIGHT as i32;

/// Both directions: version range.
pub const T_HELLO: u32 = 1;
/// agent -> dom0: new window.
pub const T_CREATE: u32 = 0x10;
/// agent -> dom0: new geometry.
pub const T_CONFIGURE: u32 = 0x11;
/// agent -> dom0: show.
pub const T_MAP: u32 = 0x12;
/// agent -> dom0: hide.
pub const T_UNMAP: u32 = 0x13;
/// agent -> dom0: window gone.
pub const T_DESTROY: u32 = 0x14;
/// agent -> dom0: title.
pub const T_TITLE: u32 = 0x15;
/// agent -> dom0: app id.
pub const T_APP_ID: u32 = 0x16;
/// agent -> dom0: damaged rectangle with pixels.
pub const T_DAMAGE: u32 = 0x17;
/// agent -> dom0: named cursor.
pub const T_CURSOR: u32 = 0x18;
/// agent -> dom0: maximised/fullscreen/minimised.
pub const T_STATE: u32 = 0x19;
/// agent -> dom0: clipboard contents (answer to a request).
pub const T_AGENT_CLIPBOARD_DATA: u32 = 0x1A;
/// dom0 -> agent: keymap.
pub const T_KEYMAP: u32 = 0x40;
/// dom0 -> agent: key.
pub const T_KEY: u32 = 0x41;
/// dom0 -> agent: pointer motion.
pub const T_MOTION: u32 = 0x42;
/// dom0 -> agent: pointer button.
pub const T_BUTTON: u32 = 0x43;
/// dom0 -> agent: scroll.
pub const T_SCROLL: u32 = 0x44;
/// dom0 -> agent: pointer entered a window.
pub const T_ENTER: u32 = 0x45;
/// dom0 -> agent: pointer left a window.
pub const T_LEAVE: u32 = 0x46;
/// dom0 -> agent: keyboard focus in.
pub const T_FOCUS_IN: u32 = 0x47;
/// dom0 -> agent: keyboard focus out.
pub const T_FOCUS_OUT: u32 = 0x48;
/// dom0 -> agent: size request.
pub const T_CONFIGURE_REQUEST: u32 = 0x49;
/// dom0 -> agent: close request.
pub const T_CLOSE: u32 = 0x4A;
/// dom0 -> agent: send me the clipboard.
pub const T_CLIPBOARD_REQUEST: u32 = 0x4B;
/// dom0 -> agent: paste this.
pub const T_HOST_CLIPBOARD_DATA: u32 = 0x4C;

/// A window id chosen by the agent; 0 is never a window.
pub type WindowId = u32;

/// Something in the byte stream the protocol forbids. The reader drops the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuiError {
    /// Type number unknown for this direction.
    #[error("unknown GUI message type {kind:#x}")]
    UnknownType {
        /// The type field.
        kind: u32,
    },
    /// Body length not allowed for the type.
    #[error("GUI message {name}: body of {len} bytes, {expected}")]
    BadLength {
        /// Message name.
        name: &'static str,
        /// The length field.
        len: u64,
        /// What was allowed.
        expected: String,
    },
    /// Window id 0 where a window is needed, or non-zero on a connection-wide message.
    #[error("GUI message {name}: window id {window} not allowed here")]
    BadWindow {
        /// Message name.
        name: &'static str,
        /// The window field.
        window: u32,
    },
    /// A field out of range.
    #[error("GUI message {name}: {problem}")]
    BadValue {
        /// Message name.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The version ranges do not overlap.
    #[error("GUI protocol versions do not overlap: we speak {our_min}..={our_max}, the peer {their_min}..={their_max}; update the domain's guest tools and dom0 together")]
    VersionMismatch {
        /// Our lowest.
        our_min: u16,
        /// Our highest.
        our_max: u16,
        /// Peer's lowest.
        their_min: u16,
        /// Peer's highest.
        their_max: u16,
    },
    /// The decoder already failed; the connection must be dropped.
    #[error("GUI decoder used after a protocol error")]
    Failed,
}

/// The fixed header of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: u32,
    /// Window id (0 = connection-wide).
    pub window: u32,
    /// Body length.
    pub len: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes (None if fewer).
    pub fn parse(b: &[u8]) -> Option<Header> {
        let h = b.get(..HEADER_LEN)?;
        let u = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        Some(Header {
            kind: u(0),
            window: u(4),
            len: u(8),
        })
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.window.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// Which side sends a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// gui-agent -> dom0.
    AgentToHost,
    /// dom0 -> gui-agent.
    HostToAgent,
}

/// Allowed body length of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// Exactly this many bytes.
    Exact(usize),
    /// At most this many bytes.
    Max(usize),
    /// `DAMAGE_FIXED_LEN + width * height * 4`, at most [`MAX_DAMAGE_PIXELS`] pixels.
    Damage,
}

/// Whether the window field must be 0 (connection-wide) or a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowRule {
    Zero,
    Window,
}

struct TypeInfo {
    name: &'static str,
    len: BodyLen,
    window: WindowRule,
}

fn type_info(dir: Direction, kind: u32) -> Option<TypeInfo> {
    use BodyLen::{Exact, Max};
    use WindowRule::{Window, Zero};
    let (name, len, window) = match (dir, kind) {
        (_, T_HELLO) => ("hello", Exact(4), Zero),
        (Direction::AgentToHost, k) => match k {
            T_CREATE => ("create", Exact(20), Window),
            T_CONFIGURE => ("configure", Exact(16), Window),
            T_MAP => ("map", Exact(0), Window),
            T_UNMAP => ("unmap", Exact(0), Window),
            T_DESTROY => ("destroy", Exact(0), Window),
            T_TITLE => ("title", Max(MAX_TITLE_LEN), Window),
            T_APP_ID => ("app id", Max(MAX_APP_ID_LEN), Window),
            T_DAMAGE => ("damage", BodyLen::Damage, Window),
            T_CURSOR => ("cursor", Exact(4), Window),
            T_STATE => ("state", Exact(4), Window),
            T_AGENT_CLIPBOARD_DATA => ("clipboard data", Max(MAX_CLIPBOARD_LEN), Zero),
            _ => return None,
        },
        (Direction::HostToAgent, k) => match k {
            T_KEYMAP => ("keymap", Max(MAX_KEYMAP_LEN), Zero),
            T_KEY => ("key", Exact(8), Window),
            T_MOTION => ("motion", Exact(8), Window),
            T_BUTTON => ("button", Exact(8), Window),
            T_SCROLL => ("scroll", Exact(12), Window),
            T_ENTER => ("enter", Exact(8), Window),
            T_LEAVE => ("leave", Exact(0), Window),
            T_FOCUS_IN => ("focus in", Exact(0), Window),
            T_FOCUS_OUT => ("focus out", Exact(0), Window),
            T_CONFIGURE_REQUEST => ("configure request", Exact(8), Window),
            T_CLOSE => ("close", Exact(0), Window),
            T_CLIPBOARD_REQUEST => ("clipboard request", Exact(0), Zero),
            T_HOST_CLIPBOARD_DATA => ("clipboard data", Max(MAX_CLIPBOARD_LEN), Zero),
            _ => return None,
        },
    };
    Some(TypeInfo { name, len, window })
}

/// The body length rule of `kind` in direction `dir` (None = unknown type).
pub fn body_limit(dir: Direction, kind: u32) -> Option<BodyLen> {
    type_info(dir, kind).map(|t| t.len)
}

/// The first protocol version that has message type `kind` (every type is in version 1).
pub fn type_min_version(_kind: u32) -> u16 {
    1
}

/// Largest body a damage message may announce.
pub const MAX_DAMAGE_BODY: usize = DAMAGE_FIXED_LEN + (MAX_DAMAGE_PIXELS as usize) * 4;

/// A version range, sent first by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version spoken.
    pub min_version: u16,
    /// Highest version spoken.
    pub max_version: u16,
}

impl Hello {
    /// This build's range.
    pub const OURS: Hello = Hello {
        min_version: MIN_GUI_PROTOCOL_VERSION,
        max_version: GUI_PROTOCOL_VERSION,
    };
}

impl Default for Hello {
    fn default() -> Self {
        Hello::OURS
    }
}

/// The version both sides use: the highest in both ranges.
pub fn negotiate(ours: Hello, theirs: Hello) -> Result<u16, GuiError> {
    let lo = ours.min_version.max(theirs.min_version);
    let hi = ours.max_version.min(theirs.max_version);
    if lo > hi {
        return Err(GuiError::VersionMismatch {
            our_min: ours.min_version,
            our_max: ours.max_version,
            their_min: theirs.min_version,
            their_max: theirs.max_version,
        });
    }
    Ok(hi)
}

/// A rectangle in window-local pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width (> 0 in damage).
    pub width: u32,
    /// Height (> 0 in damage).
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle lies inside a `width` x `height` area (overflow-safe).
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        matches!(self.x.checked_add(self.width), Some(r) if r <= width)
            && matches!(self.y.checked_add(self.height), Some(b) if b <= height)
    }

    /// `width * height * 4` (u64, cannot overflow).
    pub fn byte_len(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 4
    }

    /// The part of the signed rectangle `x, y, w, h` (e.g. damage a client reported) that
    /// lies inside `0..width x 0..height`; None when nothing is left.
    pub fn clipped(x: i64, y: i64, w: i64, h: i64, width: u32, height: u32) -> Option<Rect> {
        let x0 = x.clamp(0, i64::from(width));
        let y0 = y.clamp(0, i64::from(height));
        let x1 = x.saturating_add(w).clamp(0, i64::from(width));
        let y1 = y.saturating_add(h).clamp(0, i64::from(height));
        (x1 > x0 && y1 > y0).then(|| Rect {
            x: x0 as u32,
            y: y0 as u32,
            width: (x1 - x0) as u32,
            height: (y1 - y0) as u32,
        })
    }

    /// The smallest rectangle holding both (edges past `u32::MAX` saturate).
    pub fn union(self, o: Rect) -> Rect {
        let x0 = self.x.min(o.x);
        let y0 = self.y.min(o.y);
        let x1 = self
            .x
            .saturating_add(self.width)
            .max(o.x.saturating_add(o.width));
        let y1 = self
            .y
            .saturating_add(self.height)
            .max(o.y.saturating_add(o.height));
        Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        }
    }
}

/// Pixel format of damage pixels (wl_shm formats, little-endian `0xAARRGGBB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Alpha is meaningful (premultiplied, as in Wayland).
    Argb8888 = 0,
    /// Alpha byte undefined; dom0 treats it as opaque.
    Xrgb8888 = 1,
}

impl PixelFormat {
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Argb8888),
            1 => Some(Self::Xrgb8888),
            _ => None,
        }
    }
}

macro_rules! cursors {
    ($($(#[$m:meta])* $v:ident = $n:literal, $css:literal;)*) => {
        /// The named cursors a window may ask for (CSS cursor names); nothing else.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Cursor { $($(#[$m])* $v = $n,)* }
        impl Cursor {
            /// Parses the wire value.
            pub fn from_u32(v: u32) -> Option<Cursor> {
                match v { $($n => Some(Cursor::$v),)* _ => None }
            }
            /// The CSS / cursor-shape name.
            pub fn name(self) -> &'static str {
                match self { $(Cursor::$v => $css,)* }
            }
            /// Every cursor.
            pub const ALL: &'static [Cursor] = &[$(Cursor::$v,)*];
        }
    };
}

cursors! {
    /// Arrow.
    Default = 0, "default";
    /// I-beam.
    Text = 1, "text";
    /// Hand (link).
    Pointer = 2, "pointer";
    /// Open hand.
    Grab = 3, "grab";
    /// Closed hand.
    Grabbing = 4, "grabbing";
    /// Crosshair.
    Crosshair = 5, "crosshair";
    /// Busy.
    Wait = 6, "wait";
    /// Busy but usable.
    Progress = 7, "progress";
    /// Move.
    Move = 8, "move";
    /// Not allowed.
    NotAllowed = 9, "not-allowed";
    /// Horizontal resize.
    EwResize = 10, "ew-resize";
    /// Vertical resize.
    NsResize = 11, "ns-resize";
    /// Diagonal resize (top right / bottom left).
    NeswResize = 12, "nesw-resize";
    /// Diagonal resize (top left / bottom right).
    NwseResize = 13, "nwse-resize";
    /// Help.
    Help = 14, "help";
    /// No cursor.
    Hidden = 15, "none";
}

impl Cursor {
    /// The cursor with this CSS / cursor-shape name (None if it is not in the set).
    pub fn from_name(name: &str) -> Option<Cursor> {
        Cursor::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The cursor with this name; a name outside the set becomes [`Cursor::Default`].
    pub fn from_name_or_default(name: &str) -> Cursor {
        Cursor::from_name(name).unwrap_or(Cursor::Default)
    }
}

/// Window state flags sent by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState(u32);

impl WindowState {
    /// The client asks to be maximised.
    pub const MAXIMIZED: u32 = 1;
    /// The client asks for fullscreen (dom0 maximises instead).
    pub const FULLSCREEN: u32 = 2;
    /// The client asks to be minimised.
    pub const MINIMIZED: u32 = 4;
    const KNOWN: u32 = Self::MAXIMIZED | Self::FULLSCREEN | Self::MINIMIZED;

    /// Flags from bits (None if an unknown bit is set).
    pub fn from_bits(bits: u32) -> Option<Self> {
        (bits & !Self::KNOWN == 0).then_some(Self(bits))
    }
    /// The bits.
    pub fn bits(self) -> u32 {
        self.0
    }
    /// Whether `flag` (one of the constants) is set.
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
}

/// Scroll axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Up/down.
    Vertical = 0,
    /// Left/right.
    Horizontal = 1,
}

/// A message from the gui-agent to dom0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    /// Version range (first message).
    Hello(Hello),
    /// New window (toplevel if `parent` is None, else a popup placed relative to it).
    Create {
        /// New id.
        window: WindowId,
        /// X (toplevel: placement hint; popup: relative to the parent).
        x: i32,
        /// Y.
        y: i32,
        /// Width, 1..=MAX_WIDTH.
        width: u32,
        /// Height, 1..=MAX_HEIGHT.
        height: u32,
        /// Parent of a popup.
        parent: Option<WindowId>,
    },
    /// New geometry (buffer size).
    Configure {
        /// Window.
        window: WindowId,
        /// X.
        x: i32,
        /// Y.
        y: i32,
        /// Width, 1..=MAX_WIDTH.
        width: u32,
        /// Height, 1..=MAX_HEIGHT.
        height: u32,
    },
    /// Show the window.
    Map {
        /// Window.
        window: WindowId,
    },
    /// Hide the window.
    Unmap {
        /// Window.
        window: WindowId,
    },
    /// The window is gone.
    Destroy {
        /// Window.
        window: WindowId,
    },
    /// Title bytes (unsanitised).
    Title {
        /// Window.
        window: WindowId,
        /// At most MAX_TITLE_LEN bytes.
        title: Bytes,
    },
    /// App id bytes (unsanitised).
    AppId {
        /// Window.
        window: WindowId,
        /// At most MAX_APP_ID_LEN bytes.
        app_id: Bytes,
    },
    /// Damaged rectangle with its pixels.
    Damage {
        /// Window.
        window: WindowId,
        /// Rectangle (not yet checked against the window's buffer).
        rect: Rect,
        /// Pixel format.
        format: PixelFormat,
        /// Exactly `rect.width * rect.height * 4` bytes.
        pixels: Bytes,
    },
    /// Named cursor over the window.
    Cursor {
        /// Window.
        window: WindowId,
        /// Which.
        cursor: Cursor,
    },
    /// Maximised/fullscreen/minimised request.
    State {
        /// Window.
        window: WindowId,
        /// Flags.
        state: WindowState,
    },
    /// Clipboard contents, answering a clipboard request.
    ClipboardData {
        /// At most MAX_CLIPBOARD_LEN bytes.
        data: Bytes,
    },
}

/// `s` cut to at most `max` bytes on a character boundary (a UTF-8 sequence is never split).
fn cut_str(s: &str, max: usize) -> Bytes {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Bytes::copy_from_slice(&s.as_bytes()[..end])
}

/// Constructors that bring a value into the protocol's range, so every producer sends what
/// the decoder accepts.
impl AgentMsg {
    /// `TITLE`, cut to at most [`MAX_TITLE_LEN`] bytes on a character boundary.
    pub fn title(window: WindowId, title: &str) -> AgentMsg {
        AgentMsg::Title {
            window,
            title: cut_str(title, MAX_TITLE_LEN),
        }
    }

    /// `APP_ID`, cut to at most [`MAX_APP_ID_LEN`] bytes on a character boundary.
    pub fn app_id(window: WindowId, app_id: &str) -> AgentMsg {
        AgentMsg::AppId {
            window,
            app_id: cut_str(app_id, MAX_APP_ID_LEN),
        }
    }

    /// `CURSOR` by CSS / cursor-shape name; a name outside the set becomes
    /// [`Cursor::Default`].
    pub fn cursor_named(window: WindowId, name: &str) -> AgentMsg {
        AgentMsg::Cursor {
            window,
            cursor: Cursor::from_name_or_default(name),
        }
    }

    /// `CLIPBOARD_DATA`, cut to at most [`MAX_CLIPBOARD_LEN`] bytes.
    pub fn clipboard_data(data: impl Into<Bytes>) -> AgentMsg {
        let mut data = data.into();
        data.truncate(MAX_CLIPBOARD_LEN);
        AgentMsg::ClipboardData { data }
    }
}

/// A message from dom0 to the gui-agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// Version range (first message).
    Hello(Hello),
    /// XKB keymap text.
    Keymap {
        /// At most MAX_KEYMAP_LEN bytes.
        keymap: Bytes,
    },
    /// Key press/release.
    Key {
        /// Window with keyboard focus.
        window: WindowId,
        /// XKB keycode (evdev + 8).
        keycode: u32,
        /// Pressed (true) or released.
        pressed: bool,
    },
    /// Pointer motion in window-local pixels.
    Motion {
        /// Window.
        window: WindowId,
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
    /// Pointer button.
    Button {
        /// Window.
        window: WindowId,
        /// Linux BTN_* code.
        button: u32,
        /// Pressed (true) or released.
        pressed: bool,
    },
    /// Scroll.
    Scroll {
        /// Window.
        window: WindowId,
        /// Axis.
        axis: Axis,
        /// Distance in 1/256 pixel.
        value: i32,
        /// Wheel steps in 1/120 (0 = not a wheel).
        v120: i32,
    },
    /// Pointer entered the window at x, y.
    Enter {
        /// Window.
        window: WindowId,
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
    /// Pointer left the window.
    Leave {
        /// Window.
        window: WindowId,
    },
    /// Keyboard focus in.
    FocusIn {
        /// Window.
        window: WindowId,
    },
    /// Keyboard focus out.
    FocusOut {
        /// Window.
        window: WindowId,
    },
    /// dom0 asks for a size.
    ConfigureRequest {
        /// Window.
        window: WindowId,
        /// Width, 1..=MAX_WIDTH.
        width: u32,
        /// Height, 1..=MAX_HEIGHT.
        height: u32,
    },
    /// The user asked to close the window.
    Close {
        /// Window.
        window: WindowId,
    },
    /// Send the domain's clipboard.
    ClipboardRequest,
    /// Paste data into the domain's clipboard.
    ClipboardData {
        /// At most MAX_CLIPBOARD_LEN bytes.
        data: Bytes,
    },
}

/// A message type of one direction: what [`GuiDecoder`] yields.
pub trait GuiMessage: Sized {
    /// The direction these messages travel.
    const DIRECTION: Direction;
    /// Decodes a body whose header passed [`check_header`].
    fn decode_body(h: Header, body: Bytes) -> Result<Self, GuiError>;
    /// Appends the encoded message (header and body).
    fn encode_into(&self, out: &mut Vec<u8>);
    /// The encoded message.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Encodes one message.
pub fn encode<M: GuiMessage>(m: &M) -> Vec<u8> {
    m.encode()
}

/// Checks a header for direction `dir`: known type, window rule, body length rule (for
/// `DAMAGE` only the upper bound; the exact length is checked with the body).
pub fn check_header(dir: Direction, h: &Header) -> Result<(), GuiError> {
    let info = type_info(dir, h.kind).ok_or(GuiError::UnknownType { kind: h.kind })?;
    match (info.window, h.window) {
        (WindowRule::Zero, 0) => {}
        (WindowRule::Window, w) if w != 0 => {}
        _ => {
            return Err(GuiError::BadWindow {
                name: info.name,
                window: h.window,
            })
        }
    }
    let len = h.len as usize;
    let (ok, expected) = match info.len {
        BodyLen::Exact(n) => (len == n, format!("expected exactly {n}")),
        BodyLen::Max(n) => (len <= n, format!("limit {n}")),
        BodyLen::Damage => (
            (DAMAGE_FIXED_LEN..=MAX_DAMAGE_BODY).contains(&len),
            format!("expected {DAMAGE_FIXED_LEN}..={MAX_DAMAGE_BODY}"),
        ),
    };
    if !ok {
        return Err(GuiError::BadLength {
            name: info.name,
            len: u64::from(h.len),
            expected,
        });
    }
    Ok(())
}

/// Header rules plus "the body is as long as the header says", so the body readers below
/// never run past the end.
fn check_body(dir: Direction, h: &Header, b: &Bytes) -> Result<(), GuiError> {
    check_header(dir, h)?;
    if b.len() as u64 != u64::from(h.len) {
        return Err(GuiError::BadLength {
            name: name_of(dir, h.kind),
            len: b.len() as u64,
            expected: format!("header says {}", h.len),
        });
    }
    Ok(())
}

fn name_of(dir: Direction, kind: u32) -> &'static str {
    type_info(dir, kind).map_or("unknown", |t| t.name)
}

fn bad(name: &'static str, problem: impl Into<String>) -> GuiError {
    GuiError::BadValue {
        name,
        problem: problem.into(),
    }
}

fn check_size(name: &'static str, width: u32, height: u32) -> Result<(), GuiError> {
    if !(1..=MAX_WIDTH).contains(&width) || !(1..=MAX_HEIGHT).contains(&height) {
        return Err(bad(
            name,
            format!("size {width}x{height} outside 1x1..={MAX_WIDTH}x{MAX_HEIGHT}"),
        ));
    }
    Ok(())
}

fn check_pos(name: &'static str, x: i32, y: i32) -> Result<(), GuiError> {
    if !(-MAX_POS_X..=MAX_POS_X).contains(&x) || !(-MAX_POS_Y..=MAX_POS_Y).contains(&y) {
        return Err(bad(name, format!("position {x},{y} out of range")));
    }
    Ok(())
}

fn check_bool(name: &'static str, v: u32) -> Result<bool, GuiError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(name, format!("boolean field is {v}"))),
    }
}

fn decode_hello(b: &mut Bytes) -> Result<Hello, GuiError> {
    let h = Hello {
        min_version: b.get_u16_le(),
        max_version: b.get_u16_le(),
    };
    if h.min_version == 0 || h.min_version > h.max_version {
        return Err(bad(
            "hello",
            format!("version range {}..={}", h.min_version, h.max_version),
        ));
    }
    Ok(h)
}

fn put_header(out: &mut Vec<u8>, kind: u32, window: u32, len: usize) {
    // Bodies built here are bounded by the per-type limits (all far below u32::MAX) unless a
    // caller builds an oversized message; saturating keeps the encoder total and the peer's
    // decoder then refuses the length.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&Header { kind, window, len }.to_bytes());
}

fn put_msg(out: &mut Vec<u8>, kind: u32, window: u32, body: &[u8]) {
    put_header(out, kind, window, body.len());
    out.extend_from_slice(body);
}

fn le_u32s(vals: &[u32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(vals.len() * 4);
    for v in vals {
        b.put_u32_le(*v);
    }
    b
}

/// The header and fixed part of a `DAMAGE` message; the caller writes exactly
/// `rect.width * rect.height * 4` pixel bytes after it (lets the agent send rows straight
/// from a client buffer).
pub fn damage_prefix(
    window: WindowId,
    rect: Rect,
    format: PixelFormat,
) -> [u8; HEADER_LEN + DAMAGE_FIXED_LEN] {
    let len = u32::try_from(rect.byte_len() + DAMAGE_FIXED_LEN as u64).unwrap_or(u32::MAX);
    let mut out = [0u8; HEADER_LEN + DAMAGE_FIXED_LEN];
    out[..HEADER_LEN].copy_from_slice(
        &Header {
            kind: T_DAMAGE,
            window,
            len,
        }
        .to_bytes(),
    );
    let fixed = le_u32s(&[rect.x, rect.y, rect.width, rect.height, format as u32]);
    out[HEADER_LEN..].copy_from_slice(&fixed);
    out
}

impl GuiMessage for AgentMsg {
    const DIRECTION: Direction = Direction::AgentToHost;

    fn decode_body(h: Header, mut b: Bytes) -> Result<Self, GuiError> {
        check_body(Self::DIRECTION, &h, &b)?;
        let window = h.window;
        let name = name_of(Self::DIRECTION, h.kind);
        Ok(match h.kind {
            T_HELLO => AgentMsg::Hello(decode_hello(&mut b)?),
            T_CREATE => {
                let (x, y, width, height, parent) = (
                    b.get_i32_le(),
                    b.get_i32_le(),
                    b.get_u32_le(),
                    b.get_u32_le(),
                    b.get_u32_le(),
                );
                check_size(name, width, height)?;
                check_pos(name, x, y)?;
                if parent == window {
                    return Err(bad(name, "a window cannot be its own parent"));
                }
                AgentMsg::Create {
                    window,
                    x,
                    y,
                    width,
                    height,
                    parent: (parent != 0).then_some(parent),
                }
            }
            T_CONFIGURE => {
                let (x, y, width, height) = (
                    b.get_i32_le(),
                    b.get_i32_le(),
                    b.get_u32_le(),
                    b.get_u32_le(),
                );
                check_size(name, width, height)?;
                check_pos(name, x, y)?;
                AgentMsg::Configure {
                    window,
                    x,
                    y,
                    width,
                    height,
                }
            }
            T_MAP => AgentMsg::Map { window },
            T_UNMAP => AgentMsg::Unmap { window },
            T_DESTROY => AgentMsg::Destroy { window },
            T_TITLE => AgentMsg::Title { window, title: b },
            T_APP_ID => AgentMsg::AppId { window, app_id: b },
            T_DAMAGE => {
                let rect = Rect {
                    x: b.get_u32_le(),
                    y: b.get_u32_le(),
                    width: b.get_u32_le(),
                    height: b.get_u32_le(),
                };
                let fmt = b.get_u32_le();
                let format = PixelFormat::from_u32(fmt)
                    .ok_or_else(|| bad(name, format!("unknown pixel format {fmt}")))?;
                if rect.width == 0 || rect.height == 0 {
                    return Err(bad(name, "empty rectangle"));
                }
                check_size(name, rect.width, rect.height)?;
                if u64::from(rect.width) * u64::from(rect.height) > MAX_DAMAGE_PIXELS {
                    return Err(bad(
                        name,
                        format!(
                            "{}x{} is more than {MAX_DAMAGE_PIXELS} pixels in one message",
                            rect.width, rect.height
                        ),
                    ));
                }
                if b.len() as u64 != rect.byte_len() {
                    return Err(GuiError::BadLength {
                        name,
                        len: u64::from(h.len),
                        expected: format!(
                            "expected {} for a {}x{} rectangle",
                            rect.byte_len() + DAMAGE_FIXED_LEN as u64,
                            rect.width,
                            rect.height
                        ),
                    });
                }
                AgentMsg::Damage {
                    window,
                    rect,
                    format,
                    pixels: b,
                }
            }
            T_CURSOR => {
                let v = b.get_u32_le();
                let cursor =
                    Cursor::from_u32(v).ok_or_else(|| bad(name, format!("unknown cursor {v}")))?;
                AgentMsg::Cursor { window, cursor }
            }
            T_STATE => {
                let v = b.get_u32_le();
                let state = WindowState::from_bits(v)
                    .ok_or_else(|| bad(name, format!("unknown state bits {v:#x}")))?;
                AgentMsg::State { window, state }
            }
            T_AGENT_CLIPBOARD_DATA => AgentMsg::ClipboardData { data: b },
            kind => return Err(GuiError::UnknownType { kind }),
        })
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            AgentMsg::Hello(h) => put_msg(out, T_HELLO, 0, &hello_body(h)),
            AgentMsg::Create {
                window,
                x,
                y,
                width,
                height,
                parent,
            } => put_msg(
                out,
                T_CREATE,
                *window,
                &le_u32s(&[*x as u32, *y as u32, *width, *height, parent.unwrap_or(0)]),
            ),
            AgentMsg::Configure {
                window,
                x,
                y,
                width,
                height,
            } => put_msg(
                out,
                T_CONFIGURE,
                *window,
                &le_u32s(&[*x as u32, *y as u32, *width, *height]),
            ),
            AgentMsg::Map { window } => put_msg(out, T_MAP, *window, &[]),
            AgentMsg::Unmap { window } => put_msg(out, T_UNMAP, *window, &[]),
            AgentMsg::Destroy { window } => put_msg(out, T_DESTROY, *window, &[]),
            AgentMsg::Title { window, title } => put_msg(out, T_TITLE, *window, title),
            AgentMsg::AppId { window, app_id } => put_msg(out, T_APP_ID, *window, app_id),
            AgentMsg::Damage {
                window,
                rect,
                format,
                pixels,
            } => {
                let fixed = le_u32s(&[rect.x, rect.y, rect.width, rect.height, *format as u32]);
                put_header(out, T_DAMAGE, *window, fixed.len() + pixels.len());
                out.extend_from_slice(&fixed);
                out.extend_from_slice(pixels);
            }
            AgentMsg::Cursor { window, cursor } => {
                put_msg(out, T_CURSOR, *window, &le_u32s(&[*cursor as u32]))
            }
            AgentMsg::State { window, state } => {
                put_msg(out, T_STATE, *window, &le_u32s(&[state.bits()]))
            }
            AgentMsg::ClipboardData { data } => put_msg(out, T_AGENT_CLIPBOARD_DATA, 0, data),
        }
    }
}

fn hello_body(h: &Hello) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&h.min_version.to_le_bytes());
    b[2..].copy_from_slice(&h.max_version.to_le_bytes());
    b
}

impl GuiMessage for HostMsg {
    const DIRECTION: Direction = Direction::HostToAgent;

    fn decode_body(h: Header, mut b: Bytes) -> Result<Self, GuiError> {
        check_body(Self::DIRECTION, &h, &b)?;
        let window = h.window;
        let name = name_of(Self::DIRECTION, h.kind);
        Ok(match h.kind {
            T_HELLO => HostMsg::Hello(decode_hello(&mut b)?),
            T_KEYMAP => HostMsg::Keymap { keymap: b },
            T_KEY => {
                let keycode = b.get_u32_le();
                let pressed = check_bool(name, b.get_u32_le())?;
                HostMsg::Key {
                    window,
                    keycode,
                    pressed,
                }
            }
            T_MOTION => HostMsg::Motion {
                window,
                x: b.get_i32_le(),
                y: b.get_i32_le(),
            },
            T_BUTTON => {
                let button = b.get_u32_le();
                let pressed = check_bool(name, b.get_u32_le())?;
                HostMsg::Button {
                    window,
                    button,
                    pressed,
                }
            }
            T_SCROLL => {
                let axis = match b.get_u32_le() {
                    0 => Axis::Vertical,
                    1 => Axis::Horizontal,
                    v => return Err(bad(name, format!("unknown axis {v}"))),
                };
                HostMsg::Scroll {
                    window,
                    axis,
                    value: b.get_i32_le(),
                    v120: b.get_i32_le(),
                }
            }
            T_ENTER => HostMsg::Enter {
                window,
                x: b.get_i32_le(),
                y: b.get_i32_le(),
            },
            T_LEAVE => HostMsg::Leave { window },
            T_FOCUS_IN => HostMsg::FocusIn { window },
            T_FOCUS_OUT => HostMsg::FocusOut { window },
            T_CONFIGURE_REQUEST => {
                let (width, height) = (b.get_u32_le(), b.get_u32_le());
                check_size(name, width, height)?;
                HostMsg::ConfigureRequest {
                    window,
                    width,
                    height,
                }
            }
            T_CLOSE => HostMsg::Close { window },
            T_CLIPBOARD_REQUEST => HostMsg::ClipboardRequest,
            T_HOST_CLIPBOARD_DATA => HostMsg::ClipboardData { data: b },
            kind => return Err(GuiError::UnknownType { kind }),
        })
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            HostMsg::Hello(h) => put_msg(out, T_HELLO, 0, &hello_body(h)),
            HostMsg::Keymap { keymap } => put_msg(out, T_KEYMAP, 0, keymap),
            HostMsg::Key {
                window,
                keycode,
                pressed,
            } => put_msg(
                out,
                T_KEY,
                *window,
                &le_u32s(&[*keycode, u32::from(*pressed)]),
            ),
            HostMsg::Motion { window, x, y } => {
                put_msg(out, T_MOTION, *window, &le_u32s(&[*x as u32, *y as u32]))
            }
            HostMsg::Button {
                window,
                button,
                pressed,
            } => put_msg(
                out,
                T_BUTTON,
                *window,
                &le_u32s(&[*button, u32::from(*pressed)]),
            ),
            HostMsg::Scroll {
                window,
                axis,
                value,
                v120,
            } => put_msg(
                out,
                T_SCROLL,
                *window,
                &le_u32s(&[*axis as u32, *value as u32, *v120 as u32]),
            ),
            HostMsg::Enter { window, x, y } => {
                put_msg(out, T_ENTER, *window, &le_u32s(&[*x as u32, *y as u32]))
            }
            HostMsg::Leave { window } => put_msg(out, T_LEAVE, *window, &[]),
            HostMsg::FocusIn { window } => put_msg(out, T_FOCUS_IN, *window, &[]),
            HostMsg::FocusOut { window } => put_msg(out, T_FOCUS_OUT, *window, &[]),
            HostMsg::ConfigureRequest {
                window,
                width,
                height,
            } => put_msg(
                out,
                T_CONFIGURE_REQUEST,
                *window,
                &le_u32s(&[*width, *height]),
            ),
            HostMsg::Close { window } => put_msg(out, T_CLOSE, *window, &[]),
            HostMsg::ClipboardRequest => put_msg(out, T_CLIPBOARD_REQUEST, 0, &[]),
            HostMsg::ClipboardData { data } => put_msg(out, T_HOST_CLIPBOARD_DATA, 0, data),
        }
    }
}

/// Incremental decoder for messages of one direction (`GuiDecoder<AgentMsg>` in dom0,
/// `GuiDecoder<HostMsg>` in the agent). Push bytes with [`GuiDecoder::push`] (or read into
/// [`GuiDecoder::buffer_mut`]), then call [`GuiDecoder::next_message`] until it returns
/// `Ok(None)`. Headers are checked before a body is buffered; after an error every call
/// fails.
#[derive(Debug)]
pub struct GuiDecoder<M> {
    buf: BytesMut,
    failed: bool,
    _m: std::marker::PhantomData<fn() -> M>,
}

impl<M: GuiMessage> Default for GuiDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: GuiMessage> GuiDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            failed: false,
            _m: std::marker::PhantomData,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The internal buffer, for reading straight into it (e.g. `AsyncReadExt::read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the message being received needs (0 if a whole message is
    /// buffered or nothing is known yet beyond the header). Lets a reader reserve capacity.
    pub fn wanted(&self) -> usize {
        match Header::parse(&self.buf) {
            Some(h) => (HEADER_LEN + h.len as usize).saturating_sub(self.buf.len()),
            None => HEADER_LEN - self.buf.len(),
        }
    }

    /// Whether a protocol error happened.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<M>, GuiError> {
        if self.failed {
            return Err(GuiError::Failed);
        }
        let Some(h) = Header::parse(&self.buf) else {
            return Ok(None);
        };
        if let Err(e) = check_header(M::DIRECTION, &h) {
            self.failed = true;
            return Err(e);
        }
        let total = HEADER_LEN + h.len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut msg = self.buf.split_to(total).freeze();
        msg.advance(HEADER_LEN);
        match M::decode_body(h, msg) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
}

/// Decodes exactly one message from the start of `b`: the message and the bytes it used,
/// `Ok(None)` if `b` holds only part of one.
pub fn decode_one<M: GuiMessage>(b: &[u8]) -> Result<Option<(M, usize)>, GuiError> {
    let Some(h) = Header::parse(b) else {
        return Ok(None);
    };
    check_header(M::DIRECTION, &h)?;
    let total = HEADER_LEN + h.len as usize;
    let Some(body) = b.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((
        M::decode_body(h, Bytes::copy_from_slice(body))?,
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_samples() -> Vec<AgentMsg> {
        vec![
            AgentMsg::Hello(Hello::OURS),
            AgentMsg::Create {
                window: 1,
                x: -5,
                y: 7,
                width: 640,
                height: 480,
                parent: None,
            },
            AgentMsg::Create {
                window: 2,
                x: 10,
                y: 20,
                width: 100,
                height: 50,
                parent: Some(1),
            },
            AgentMsg::Configure {
                window: 1,
                x: 0,
                y: 0,
                width: MAX_WIDTH,
                height: MAX_HEIGHT,
            },
            AgentMsg::Map { window: 1 },
            AgentMsg::Unmap { window: 1 },
            AgentMsg::Destroy { window: 2 },
            AgentMsg::Title {
                window: 1,
                title: Bytes::from_static(b"hello \xff"),
            },
            AgentMsg::AppId {
                window: 1,
                app_id: Bytes::from_static(b"org.example.App"),
            },
            AgentMsg::Damage {
                window: 1,
                rect: Rect {
                    x: 3,
                    y: 4,
                    width: 2,
                    height: 3,
                },
                format: PixelFormat::Xrgb8888,
                pixels: Bytes::from((0..24u8).collect::<Vec<_>>()),
            },
            AgentMsg::Cursor {
                window: 1,
                cursor: Cursor::Text,
            },
            AgentMsg::State {
                window: 1,
                state: WindowState::from_bits(3).unwrap(),
            },
            AgentMsg::ClipboardData {
                data: Bytes::from_static(b"copied"),
            },
        ]
    }

    fn host_samples() -> Vec<HostMsg> {
        vec![
            HostMsg::Hello(Hello::OURS),
            HostMsg::Keymap {
                keymap: Bytes::from_static(b"xkb_keymap { };"),
            },
            HostMsg::Key {
                window: 1,
                keycode: 38,
                pressed: true,
            },
            HostMsg::Motion {
                window: 1,
                x: -1,
                y: 2,
            },
            HostMsg::Button {
                window: 1,
                button: 0x110,
                pressed: false,
            },
            HostMsg::Scroll {
                window: 1,
                axis: Axis::Horizontal,
                value: -2560,
                v120: -120,
            },
            HostMsg::Enter {
                window: 1,
                x: 4,
                y: 5,
            },
            HostMsg::Leave { window: 1 },
            HostMsg::FocusIn { window: 1 },
            HostMsg::FocusOut { window: 1 },
            HostMsg::ConfigureRequest {
                window: 1,
                width: 800,
                height: 600,
            },
            HostMsg::Close { window: 1 },
            HostMsg::ClipboardRequest,
            HostMsg::ClipboardData {
                data: Bytes::from_static(b"paste"),
            },
        ]
    }

    fn roundtrip<M: GuiMessage + PartialEq + std::fmt::Debug>(msgs: &[M]) {
        let mut all = Vec::new();
        for m in msgs {
            let enc = m.encode();
            let (d, used) = decode_one::<M>(&enc).unwrap().unwrap();
            assert_eq!(&d, m);
            assert_eq!(used, enc.len());
            all.extend_from_slice(&enc);
        }
        // Byte by byte through the incremental decoder.
        let mut dec = GuiDecoder::<M>::new();
        let mut got = Vec::new();
        for b in &all {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(&got, msgs);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn roundtrip_both_directions() {
        roundtrip(&agent_samples());
        roundtrip(&host_samples());
    }

    #[test]
    fn header_layout_is_little_endian() {
        let enc = AgentMsg::Map {
            window: 0x0102_0304,
        }
        .encode();
        assert_eq!(enc, [0x12, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0]);
        let d = damage_prefix(
            7,
            Rect {
                x: 1,
                y: 2,
                width: 3,
                height: 4,
            },
            PixelFormat::Argb8888,
        );
        let full = AgentMsg::Damage {
            window: 7,
            rect: Rect {
                x: 1,
                y: 2,
                width: 3,
                height: 4,
            },
            format: PixelFormat::Argb8888,
            pixels: Bytes::from(vec![0u8; 48]),
        }
        .encode();
        assert_eq!(&full[..d.len()], &d[..]);
    }

    fn err_of<M: GuiMessage + std::fmt::Debug>(bytes: &[u8]) -> GuiError {
        let mut dec = GuiDecoder::<M>::new();
        dec.push(bytes);
        let e = dec.next_message().unwrap_err();
        assert_eq!(dec.next_message().unwrap_err(), GuiError::Failed);
        e
    }

    fn raw(kind: u32, window: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Header {
            kind,
            window,
            len: body.len() as u32,
        }
        .to_bytes()
        .to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn refuses_wrong_direction_and_unknown_types() {
        let key = HostMsg::Key {
            window: 1,
            keycode: 1,
            pressed: true,
        }
        .encode();
        assert!(matches!(
            err_of::<AgentMsg>(&key),
            GuiError::UnknownType { kind: T_KEY }
        ));
        let map = AgentMsg::Map { window: 1 }.encode();
        assert!(matches!(
            err_of::<HostMsg>(&map),
            GuiError::UnknownType { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(0xdead, 1, &[])),
            GuiError::UnknownType { kind: 0xdead }
        ));
    }

    #[test]
    fn refuses_bad_lengths_before_buffering() {
        // A lying length is refused from the header alone.
        let mut h = Header {
            kind: T_TITLE,
            window: 1,
            len: u32::MAX,
        }
        .to_bytes()
        .to_vec();
        h.truncate(HEADER_LEN);
        assert!(matches!(err_of::<AgentMsg>(&h), GuiError::BadLength { .. }));
        let big_damage = Header {
            kind: T_DAMAGE,
            window: 1,
            len: (MAX_DAMAGE_BODY + 1) as u32,
        }
        .to_bytes();
        assert!(matches!(
            err_of::<AgentMsg>(&big_damage),
            GuiError::BadLength { .. }
        ));
        // Fixed-size bodies must be exact.
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_MAP, 1, &[0])),
            GuiError::BadLength { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_CREATE, 1, &[0; 16])),
            GuiError::BadLength { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_TITLE, 1, &[b'a'; MAX_TITLE_LEN + 1])),
            GuiError::BadLength { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(
                T_AGENT_CLIPBOARD_DATA,
                0,
                &vec![0; MAX_CLIPBOARD_LEN + 1]
            )),
            GuiError::BadLength { .. }
        ));
        assert!(decode_one::<AgentMsg>(&raw(
            T_AGENT_CLIPBOARD_DATA,
            0,
            &vec![0; MAX_CLIPBOARD_LEN]
        ))
        .is_ok());
    }

    #[test]
    fn damage_length_must_match_rectangle() {
        let fixed = le_u32s(&[0, 0, 2, 2, 0]);
        for pixels in [15usize, 17, 0, 32] {
            let mut body = fixed.clone();
            body.extend(vec![0u8; pixels]);
            assert!(
                matches!(
                    err_of::<AgentMsg>(&raw(T_DAMAGE, 1, &body)),
                    GuiError::BadLength { .. }
                ),
                "{pixels}"
            );
        }
        // Multiplication that would overflow 32 bits: 65536 x 65537 x 4.
        let mut body = le_u32s(&[0, 0, 65536, 65537, 0]);
        body.extend([0u8; 16]);
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_DAMAGE, 1, &body)),
            GuiError::BadValue { .. }
        ));
        // Too many pixels for one message even though each side is in range.
        let mut body = le_u32s(&[0, 0, MAX_WIDTH, 1024, 0]);
        body.extend([0u8; 4]);
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_DAMAGE, 1, &body)),
            GuiError::BadValue { .. }
        ));
        for bad in [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 2]] {
            let mut body = le_u32s(&bad);
            body.extend([0u8; 4]);
            assert!(matches!(
                err_of::<AgentMsg>(&raw(T_DAMAGE, 1, &body)),
                GuiError::BadValue { .. }
            ));
        }
    }

    #[test]
    fn window_field_rules() {
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_MAP, 0, &[])),
            GuiError::BadWindow { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_HELLO, 3, &hello_body(&Hello::OURS))),
            GuiError::BadWindow { .. }
        ));
        assert!(matches!(
            err_of::<HostMsg>(&raw(T_CLIPBOARD_REQUEST, 1, &[])),
            GuiError::BadWindow { .. }
        ));
        // Own parent.
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_CREATE, 4, &le_u32s(&[0, 0, 10, 10, 4]))),
            GuiError::BadValue { .. }
        ));
    }

    #[test]
    fn field_ranges() {
        for body in [
            le_u32s(&[0, 0, MAX_WIDTH + 1, 10, 0]),
            le_u32s(&[0, 0, 10, MAX_HEIGHT + 1, 0]),
            le_u32s(&[0, 0, 0, 10, 0]),
            le_u32s(&[(MAX_POS_X + 1) as u32, 0, 10, 10, 0]),
            le_u32s(&[0, (-MAX_POS_Y - 1) as u32, 10, 10, 0]),
        ] {
            assert!(matches!(
                err_of::<AgentMsg>(&raw(T_CREATE, 1, &body)),
                GuiError::BadValue { .. }
            ));
        }
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_CURSOR, 1, &le_u32s(&[99]))),
            GuiError::BadValue { .. }
        ));
        assert!(matches!(
            err_of::<AgentMsg>(&raw(T_STATE, 1, &le_u32s(&[8]))),
            GuiError::BadValue { .. }
        ));
        assert!(matches!(
            err_of::<HostMsg>(&raw(T_KEY, 1, &le_u32s(&[30, 2]))),
            GuiError::BadValue { .. }
        ));
        assert!(matches!(
            err_of::<HostMsg>(&raw(T_SCROLL, 1, &le_u32s(&[2, 0, 0]))),
            GuiError::BadValue { .. }
        ));
        for (lo, hi) in [(0u16, 1u16), (3, 2)] {
            let mut b = lo.to_le_bytes().to_vec();
            b.extend(hi.to_le_bytes());
            assert!(matches!(
                err_of::<AgentMsg>(&raw(T_HELLO, 0, &b)),
                GuiError::BadValue { .. }
            ));
        }
    }

    #[test]
    fn version_negotiation() {
        let r = |a, b| Hello {
            min_version: a,
            max_version: b,
        };
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Ok(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Ok(1));
        assert!(matches!(
            negotiate(r(1, 2), r(3, 4)),
            Err(GuiError::VersionMismatch {
                our_min: 1,
                our_max: 2,
                their_min: 3,
                their_max: 4
            })
        ));
        assert_eq!(
            negotiate(Hello::OURS, Hello::OURS),
            Ok(GUI_PROTOCOL_VERSION)
        );
    }

    #[test]
    fn rect_clipping() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        assert_eq!(Rect::clipped(-5, -5, 10, 10, 100, 100), Some(r(0, 0, 5, 5)));
        assert_eq!(
            Rect::clipped(95, 0, 10, 10, 100, 100),
            Some(r(95, 0, 5, 10))
        );
        assert_eq!(Rect::clipped(100, 0, 10, 10, 100, 100), None);
        assert_eq!(
            Rect::clipped(0, 0, i32::MAX as i64, i32::MAX as i64, 7, 9),
            Some(r(0, 0, 7, 9))
        );
        assert_eq!(Rect::clipped(0, 0, -4, 3, 7, 9), None);
        assert_eq!(Rect::clipped(i64::MAX, i64::MIN, i64::MAX, 1, 7, 9), None);
    }

    #[test]
    fn rect_union() {
        let r = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        assert_eq!(r(1, 1, 2, 2).union(r(5, 0, 1, 1)), r(1, 0, 5, 3));
        assert_eq!(r(0, 0, 4, 4).union(r(1, 1, 1, 1)), r(0, 0, 4, 4));
        assert_eq!(
            r(u32::MAX - 1, 0, 5, 1).union(r(0, 0, 1, 1)),
            r(0, 0, u32::MAX, 1)
        );
    }

    #[test]
    fn constructors_clamp_to_the_protocol() {
        // Titles and app ids are cut on a character boundary, never inside one.
        let long = "é".repeat(200);
        for m in [AgentMsg::title(4, &long), AgentMsg::app_id(4, &long)] {
            let text = match &m {
                AgentMsg::Title { title, .. } => title.clone(),
                AgentMsg::AppId { app_id, .. } => app_id.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(text.len(), 128);
            assert!(std::str::from_utf8(&text)
                .unwrap()
                .chars()
                .all(|c| c == 'é'));
            assert!(decode_one::<AgentMsg>(&m.encode()).is_ok());
        }
        let odd = format!("a{long}");
        match AgentMsg::title(1, &odd) {
            AgentMsg::Title { title, .. } => assert_eq!(title.len(), 127),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            AgentMsg::title(1, "short"),
            AgentMsg::Title {
                window: 1,
                title: Bytes::from_static(b"short"),
            }
        );
        // Cursor names outside the set become the default arrow.
        for c in Cursor::ALL {
            assert_eq!(Cursor::from_name(c.name()), Some(*c));
        }
        assert_eq!(Cursor::from_name("no-such-cursor"), None);
        assert_eq!(
            AgentMsg::cursor_named(4, "no-such-cursor"),
            AgentMsg::Cursor {
                window: 4,
                cursor: Cursor::Default,
            }
        );
        assert_eq!(
            AgentMsg::cursor_named(4, "none"),
            AgentMsg::Cursor {
                window: 4,
                cursor: Cursor::Hidden,
            }
        );
        // Clipboard data is cut to the limit.
        let big = AgentMsg::clipboard_data(vec![7u8; MAX_CLIPBOARD_LEN + 10]);
        assert!(
            matches!(&big, AgentMsg::ClipboardData { data } if data.len() == MAX_CLIPBOARD_LEN)
        );
        assert!(decode_one::<AgentMsg>(&big.encode()).is_ok());
        assert_eq!(
            AgentMsg::clipboard_data(b"hi".to_vec()),
            AgentMsg::ClipboardData {
                data: Bytes::from_static(b"hi"),
            }
        );
    }

    #[test]
    fn rect_fits_is_overflow_safe() {
        let r = Rect {
            x: u32::MAX,
            y: 0,
            width: 2,
            height: 1,
        };
        assert!(!r.fits_in(u32::MAX, 10));
        let r = Rect {
            x: 8,
            y: 6,
            width: 2,
            height: 4,
        };
        assert!(r.fits_in(10, 10));
        assert!(!r.fits_in(9, 10));
        assert!(!r.fits_in(10, 9));
    }
}
