//! The messages the compositor core exchanges with dom0, as plain Rust values.
//!
//! The compositor never sees bytes: it produces [`AgentMsg`] and consumes [`HostMsg`]. The
//! byte encoding lives in [`codec`], which maps these to the GUI protocol of `bulkhead-wire`
//! (`bulkhead_wire::gui`), the only wire format.

/// Pixel layout of a damage rectangle: 4 bytes per pixel, little-endian ARGB/XRGB (as wl_shm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Argb8888,
    Xrgb8888,
}

/// Agent -> dom0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    /// Our version range (always the one of this build).
    Hello,
    /// A new window; `parent` is set for popups, whose position is relative to the parent.
    Create {
        window: u32,
        width: u32,
        height: u32,
        parent: Option<u32>,
        x: i32,
        y: i32,
    },
    /// The window's buffer size changed (the next damage covers the new size).
    Configure {
        window: u32,
        x: i32,
        y: i32,
        width: u32,
        height: u32,
    },
    Map {
        window: u32,
    },
    Unmap {
        window: u32,
    },
    Destroy {
        window: u32,
    },
    Title {
        window: u32,
        title: String,
    },
    AppId {
        window: u32,
        app_id: String,
    },
    /// Pixels of one rectangle, rows of `width * 4` bytes without padding.
    Damage {
        window: u32,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
        format: PixelFormat,
        pixels: Vec<u8>,
    },
    /// A named cursor (CSS/xcursor name, e.g. "default", "text", "pointer").
    Cursor {
        window: u32,
        name: String,
    },
    ClipboardData {
        data: Vec<u8>,
    },
}

/// Pressed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    Pressed,
    Released,
}

/// dom0 -> agent.
#[derive(Debug, Clone, PartialEq)]
pub enum HostMsg {
    /// dom0's version range.
    Hello {
        min_version: u16,
        max_version: u16,
    },
    /// An XKB keymap in text format v1.
    Keymap {
        keymap: String,
    },
    /// XKB keycode (evdev + 8).
    Key {
        window: u32,
        keycode: u32,
        state: Press,
    },
    Motion {
        window: u32,
        x: f64,
        y: f64,
    },
    /// Linux BTN_* code.
    Button {
        window: u32,
        button: u32,
        state: Press,
    },
    /// axis 0 = vertical, 1 = horizontal.
    Scroll {
        window: u32,
        axis: u32,
        value: f64,
        v120: i32,
    },
    Enter {
        window: u32,
        x: f64,
        y: f64,
    },
    Leave {
        window: u32,
    },
    FocusIn {
        window: u32,
    },
    FocusOut {
        window: u32,
    },
    ConfigureRequest {
        window: u32,
        width: u32,
        height: u32,
    },
    CloseRequest {
        window: u32,
    },
    ClipboardRequest,
    ClipboardData {
        data: Vec<u8>,
    },
}

/// Largest window width the agent forwards or accepts in a configure request.
pub const MAX_WIDTH: u32 = bulkhead_wire::gui::MAX_WIDTH;
/// Largest window height.
pub const MAX_HEIGHT: u32 = bulkhead_wire::gui::MAX_HEIGHT;
/// Largest clipboard content, both directions.
pub const MAX_CLIPBOARD: usize = bulkhead_wire::gui::MAX_CLIPBOARD_LEN;

pub mod codec;
