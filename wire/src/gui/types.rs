//! The GUI protocol's message types and everything that bounds them: versions, header
//! layout, the type table with each type's body and window rules, the size limits, the
//! field types (rectangles, pixel formats, cursors, window state) and the clamping
//! constructors that keep outgoing values inside those limits.

use bytes::Bytes;

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
pub(super) enum WindowRule {
    Zero,
    Window,
}

pub(super) struct TypeInfo {
    pub(super) name: &'static str,
    pub(super) len: BodyLen,
    pub(super) window: WindowRule,
}

pub(super) fn type_info(dir: Direction, kind: u32) -> Option<TypeInfo> {
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
    pub(super) fn from_u32(v: u32) -> Option<Self> {
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
