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
//!
//! # Code layout
//! The message types, limits and type table are in `types`, the encoder in `encode`, the
//! checks and the decoder in `decode`; everything public is re-exported here, so the paths
//! are `bulkhead_wire::gui::*`.

use bytes::Bytes;

mod decode;
mod encode;
mod types;

#[cfg(test)]
mod tests;

pub use decode::*;
pub use encode::*;
pub use types::*;

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

impl GuiMessage for AgentMsg {
    const DIRECTION: Direction = Direction::AgentToHost;

    fn decode_body(h: Header, body: Bytes) -> Result<Self, GuiError> {
        decode::decode_agent(h, body)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        encode::encode_agent(self, out)
    }
}

impl GuiMessage for HostMsg {
    const DIRECTION: Direction = Direction::HostToAgent;

    fn decode_body(h: Header, body: Bytes) -> Result<Self, GuiError> {
        decode::decode_host(h, body)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        encode::encode_host(self, out)
    }
}
