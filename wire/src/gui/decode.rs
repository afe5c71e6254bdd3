//! Decoding GUI messages: the header and body checks, the body readers of both directions
//! (each field range-checked), the incremental [`GuiDecoder`] and [`decode_one`].

use bytes::{Buf, Bytes, BytesMut};

use super::types::*;
use super::GuiMessage;

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

/// Reads the body of an agent -> dom0 message whose header passed [`check_header`].
pub(super) fn decode_agent(h: Header, mut b: Bytes) -> Result<AgentMsg, GuiError> {
    check_body(AgentMsg::DIRECTION, &h, &b)?;
    let window = h.window;
    let name = name_of(AgentMsg::DIRECTION, h.kind);
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

/// Reads the body of a dom0 -> agent message whose header passed [`check_header`].
pub(super) fn decode_host(h: Header, mut b: Bytes) -> Result<HostMsg, GuiError> {
    check_body(HostMsg::DIRECTION, &h, &b)?;
    let window = h.window;
    let name = name_of(HostMsg::DIRECTION, h.kind);
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
