//! Byte encoding of [`AgentMsg`]/[`HostMsg`]: a 12-byte little-endian header
//! `{u32 type, u32 window, u32 body_len}` then the body. Interim format used until the GUI
//! protocol of `bulkhead-wire` is available; every length is checked against explicit limits.

use super::{AgentMsg, HostMsg, PixelFormat, Press, MAX_CLIPBOARD, MAX_WINDOW_SIDE};

pub const HEADER_LEN: usize = 12;
/// Largest body of an agent message (a 16384x4096 ARGB band).
pub const MAX_AGENT_BODY: usize = 16 + (MAX_WINDOW_SIDE as usize) * 4096 * 4;
/// Largest body of a dom0 message (a keymap or clipboard data).
pub const MAX_HOST_BODY: usize = 1 << 20;
const MAX_TEXT: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown message type {0}")]
    UnknownType(u32),
    #[error("message type {ty} has a body of {len} bytes, over the limit {max}")]
    TooLong { ty: u32, len: usize, max: usize },
    #[error("message type {ty}: malformed body ({what})")]
    Malformed { ty: u32, what: &'static str },
}

mod ty {
    pub const HELLO: u32 = 1;
    pub const CREATE: u32 = 2;
    pub const CONFIGURE: u32 = 3;
    pub const MAP: u32 = 4;
    pub const UNMAP: u32 = 5;
    pub const DESTROY: u32 = 6;
    pub const TITLE: u32 = 7;
    pub const APP_ID: u32 = 8;
    pub const DAMAGE: u32 = 9;
    pub const CURSOR: u32 = 10;
    pub const CLIPBOARD_DATA: u32 = 11;
    pub const SCREEN: u32 = 20;
    pub const KEYMAP: u32 = 21;
    pub const KEY: u32 = 22;
    pub const MOTION: u32 = 23;
    pub const BUTTON: u32 = 24;
    pub const SCROLL: u32 = 25;
    pub const ENTER: u32 = 26;
    pub const LEAVE: u32 = 27;
    pub const FOCUS_IN: u32 = 28;
    pub const FOCUS_OUT: u32 = 29;
    pub const CONFIGURE_REQUEST: u32 = 30;
    pub const CLOSE_REQUEST: u32 = 31;
    pub const CLIPBOARD_REQUEST: u32 = 32;
}

fn header(out: &mut Vec<u8>, ty: u32, window: u32, len: usize) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&window.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

fn u32s(out: &mut Vec<u8>, ty: u32, window: u32, vals: &[u32]) {
    header(out, ty, window, vals.len() * 4);
    for v in vals {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn bytes(out: &mut Vec<u8>, ty: u32, window: u32, data: &[u8]) {
    header(out, ty, window, data.len());
    out.extend_from_slice(data);
}

/// Appends one agent message to `out`.
pub fn encode_agent(msg: &AgentMsg, out: &mut Vec<u8>) {
    match msg {
        AgentMsg::Hello { version } => u32s(out, ty::HELLO, 0, &[*version]),
        AgentMsg::Create {
            window,
            width,
            height,
            parent,
            x,
            y,
        } => u32s(
            out,
            ty::CREATE,
            *window,
            &[*width, *height, parent.unwrap_or(0), *x as u32, *y as u32],
        ),
        AgentMsg::Configure {
            window,
            width,
            height,
        } => u32s(out, ty::CONFIGURE, *window, &[*width, *height]),
        AgentMsg::Map { window } => u32s(out, ty::MAP, *window, &[]),
        AgentMsg::Unmap { window } => u32s(out, ty::UNMAP, *window, &[]),
        AgentMsg::Destroy { window } => u32s(out, ty::DESTROY, *window, &[]),
        AgentMsg::Title { window, title } => bytes(out, ty::TITLE, *window, title.as_bytes()),
        AgentMsg::AppId { window, app_id } => bytes(out, ty::APP_ID, *window, app_id.as_bytes()),
        AgentMsg::Damage {
            window,
            x,
            y,
            width,
            height,
            format,
            pixels,
        } => {
            encode_damage_header(out, *window, *x, *y, *width, *height, *format, pixels.len());
            out.extend_from_slice(pixels);
        }
        AgentMsg::Cursor { window, name } => bytes(out, ty::CURSOR, *window, name.as_bytes()),
        AgentMsg::ClipboardData { data } => bytes(out, ty::CLIPBOARD_DATA, 0, data),
    }
}

/// Header of a damage message whose `pixels_len` pixel bytes the caller appends itself
/// (saves one copy of large rectangles).
#[allow(clippy::too_many_arguments)]
pub fn encode_damage_header(
    out: &mut Vec<u8>,
    window: u32,
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    format: PixelFormat,
    pixels_len: usize,
) {
    let fmt = match format {
        PixelFormat::Argb8888 => 0u32,
        PixelFormat::Xrgb8888 => 1,
    };
    header(out, ty::DAMAGE, window, 20 + pixels_len);
    for v in [x, y, width, height, fmt] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends one dom0 message to `out`.
pub fn encode_host(msg: &HostMsg, out: &mut Vec<u8>) {
    match msg {
        HostMsg::Hello { version } => u32s(out, ty::HELLO, 0, &[*version]),
        HostMsg::Screen { width, height } => u32s(out, ty::SCREEN, 0, &[*width, *height]),
        HostMsg::Keymap { keymap } => bytes(out, ty::KEYMAP, 0, keymap.as_bytes()),
        HostMsg::Key { keycode, state } => u32s(out, ty::KEY, 0, &[*keycode, press(*state)]),
        HostMsg::Motion { window, x, y } => f64s(out, ty::MOTION, *window, &[*x, *y]),
        HostMsg::Button {
            window,
            button,
            state,
        } => u32s(out, ty::BUTTON, *window, &[*button, press(*state)]),
        HostMsg::Scroll {
            window,
            axis,
            value,
            v120,
        } => {
            header(out, ty::SCROLL, *window, 16);
            out.extend_from_slice(&axis.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&v120.to_le_bytes());
        }
        HostMsg::Enter { window, x, y } => f64s(out, ty::ENTER, *window, &[*x, *y]),
        HostMsg::Leave { window } => u32s(out, ty::LEAVE, *window, &[]),
        HostMsg::FocusIn { window } => u32s(out, ty::FOCUS_IN, *window, &[]),
        HostMsg::FocusOut { window } => u32s(out, ty::FOCUS_OUT, *window, &[]),
        HostMsg::ConfigureRequest {
            window,
            width,
            height,
        } => u32s(out, ty::CONFIGURE_REQUEST, *window, &[*width, *height]),
        HostMsg::CloseRequest { window } => u32s(out, ty::CLOSE_REQUEST, *window, &[]),
        HostMsg::ClipboardRequest => u32s(out, ty::CLIPBOARD_REQUEST, 0, &[]),
        HostMsg::ClipboardData { data } => bytes(out, ty::CLIPBOARD_DATA, 0, data),
    }
}

fn press(p: Press) -> u32 {
    match p {
        Press::Pressed => 1,
        Press::Released => 0,
    }
}

fn f64s(out: &mut Vec<u8>, ty: u32, window: u32, vals: &[f64]) {
    header(out, ty, window, vals.len() * 8);
    for v in vals {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// (type, window, body, bytes used) of a complete message.
type Split<'a> = (u32, u32, &'a [u8], usize);

/// A complete message at the start of `buf`.
fn split(buf: &[u8], max_body: usize) -> Result<Option<Split<'_>>, DecodeError> {
    let Some(hdr) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (t, window, len) = (word(0), word(4), word(8) as usize);
    if len > max_body {
        return Err(DecodeError::TooLong {
            ty: t,
            len,
            max: max_body,
        });
    }
    match buf.get(HEADER_LEN..HEADER_LEN + len) {
        Some(body) => Ok(Some((t, window, body, HEADER_LEN + len))),
        None => Ok(None),
    }
}

struct Body<'a> {
    ty: u32,
    b: &'a [u8],
}

impl<'a> Body<'a> {
    fn exact(ty: u32, b: &'a [u8], len: usize) -> Result<Self, DecodeError> {
        if b.len() != len {
            return Err(DecodeError::Malformed {
                ty,
                what: "wrong body length",
            });
        }
        Ok(Body { ty, b })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed {
                ty: self.ty,
                what: "body too short",
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn f64(&mut self) -> Result<f64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        let v = f64::from_le_bytes(a);
        if !v.is_finite() || v.abs() > 1e6 {
            return Err(DecodeError::Malformed {
                ty: self.ty,
                what: "coordinate out of range",
            });
        }
        Ok(v)
    }
    fn press(&mut self) -> Result<Press, DecodeError> {
        match self.u32()? {
            0 => Ok(Press::Released),
            1 => Ok(Press::Pressed),
            _ => Err(DecodeError::Malformed {
                ty: self.ty,
                what: "press state not 0/1",
            }),
        }
    }
}

fn text(ty: u32, b: &[u8], max: usize) -> Result<String, DecodeError> {
    if b.len() > max {
        return Err(DecodeError::Malformed {
            ty,
            what: "text too long",
        });
    }
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Malformed {
        ty,
        what: "text not UTF-8",
    })
}

/// Decodes one dom0 message from the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode_host(buf: &[u8]) -> Result<Option<(HostMsg, usize)>, DecodeError> {
    let Some((t, window, body, used)) = split(buf, MAX_HOST_BODY)? else {
        return Ok(None);
    };
    let msg = match t {
        ty::HELLO => HostMsg::Hello {
            version: Body::exact(t, body, 4)?.u32()?,
        },
        ty::SCREEN => {
            let mut b = Body::exact(t, body, 8)?;
            HostMsg::Screen {
                width: b.u32()?,
                height: b.u32()?,
            }
        }
        ty::KEYMAP => HostMsg::Keymap {
            keymap: text(t, body, MAX_HOST_BODY)?,
        },
        ty::KEY => {
            let mut b = Body::exact(t, body, 8)?;
            HostMsg::Key {
                keycode: b.u32()?,
                state: b.press()?,
            }
        }
        ty::MOTION | ty::ENTER => {
            let mut b = Body::exact(t, body, 16)?;
            let (x, y) = (b.f64()?, b.f64()?);
            if t == ty::MOTION {
                HostMsg::Motion { window, x, y }
            } else {
                HostMsg::Enter { window, x, y }
            }
        }
        ty::BUTTON => {
            let mut b = Body::exact(t, body, 8)?;
            HostMsg::Button {
                window,
                button: b.u32()?,
                state: b.press()?,
            }
        }
        ty::SCROLL => {
            let mut b = Body::exact(t, body, 16)?;
            HostMsg::Scroll {
                window,
                axis: b.u32()?,
                value: b.f64()?,
                v120: b.u32()? as i32,
            }
        }
        ty::LEAVE => {
            Body::exact(t, body, 0)?;
            HostMsg::Leave { window }
        }
        ty::FOCUS_IN => {
            Body::exact(t, body, 0)?;
            HostMsg::FocusIn { window }
        }
        ty::FOCUS_OUT => {
            Body::exact(t, body, 0)?;
            HostMsg::FocusOut { window }
        }
        ty::CONFIGURE_REQUEST => {
            let mut b = Body::exact(t, body, 8)?;
            HostMsg::ConfigureRequest {
                window,
                width: b.u32()?,
                height: b.u32()?,
            }
        }
        ty::CLOSE_REQUEST => {
            Body::exact(t, body, 0)?;
            HostMsg::CloseRequest { window }
        }
        ty::CLIPBOARD_REQUEST => {
            Body::exact(t, body, 0)?;
            HostMsg::ClipboardRequest
        }
        ty::CLIPBOARD_DATA => {
            if body.len() > MAX_CLIPBOARD {
                return Err(DecodeError::TooLong {
                    ty: t,
                    len: body.len(),
                    max: MAX_CLIPBOARD,
                });
            }
            HostMsg::ClipboardData {
                data: body.to_vec(),
            }
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Some((msg, used)))
}

/// Decodes one agent message from the start of `buf` (the dom0 side; used by tests and the
/// benchmark); `Ok(None)` when more bytes are needed.
pub fn decode_agent(buf: &[u8]) -> Result<Option<(AgentMsg, usize)>, DecodeError> {
    let Some((t, window, body, used)) = split(buf, MAX_AGENT_BODY)? else {
        return Ok(None);
    };
    let msg = match t {
        ty::HELLO => AgentMsg::Hello {
            version: Body::exact(t, body, 4)?.u32()?,
        },
        ty::CREATE => {
            let mut b = Body::exact(t, body, 20)?;
            let (width, height, parent) = (b.u32()?, b.u32()?, b.u32()?);
            AgentMsg::Create {
                window,
                width,
                height,
                parent: (parent != 0).then_some(parent),
                x: b.u32()? as i32,
                y: b.u32()? as i32,
            }
        }
        ty::CONFIGURE => {
            let mut b = Body::exact(t, body, 8)?;
            AgentMsg::Configure {
                window,
                width: b.u32()?,
                height: b.u32()?,
            }
        }
        ty::MAP => {
            Body::exact(t, body, 0)?;
            AgentMsg::Map { window }
        }
        ty::UNMAP => {
            Body::exact(t, body, 0)?;
            AgentMsg::Unmap { window }
        }
        ty::DESTROY => {
            Body::exact(t, body, 0)?;
            AgentMsg::Destroy { window }
        }
        ty::TITLE => AgentMsg::Title {
            window,
            title: text(t, body, MAX_TEXT)?,
        },
        ty::APP_ID => AgentMsg::AppId {
            window,
            app_id: text(t, body, MAX_TEXT)?,
        },
        ty::CURSOR => AgentMsg::Cursor {
            window,
            name: text(t, body, 64)?,
        },
        ty::DAMAGE => {
            let mut b = Body { ty: t, b: body };
            let (x, y, width, height, fmt) = (b.u32()?, b.u32()?, b.u32()?, b.u32()?, b.u32()?);
            let format = match fmt {
                0 => PixelFormat::Argb8888,
                1 => PixelFormat::Xrgb8888,
                _ => {
                    return Err(DecodeError::Malformed {
                        ty: t,
                        what: "unknown pixel format",
                    })
                }
            };
            let expect = (width as usize)
                .checked_mul(height as usize)
                .and_then(|n| n.checked_mul(4));
            if width > MAX_WINDOW_SIDE || height > MAX_WINDOW_SIDE || expect != Some(b.b.len()) {
                return Err(DecodeError::Malformed {
                    ty: t,
                    what: "pixel bytes do not match the rectangle",
                });
            }
            AgentMsg::Damage {
                window,
                x,
                y,
                width,
                height,
                format,
                pixels: b.b.to_vec(),
            }
        }
        ty::CLIPBOARD_DATA => AgentMsg::ClipboardData {
            data: body.to_vec(),
        },
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok(Some((msg, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_round_trip() {
        let msgs = vec![
            HostMsg::Hello { version: 1 },
            HostMsg::Screen {
                width: 1920,
                height: 1080,
            },
            HostMsg::Keymap {
                keymap: "xkb_keymap {}".into(),
            },
            HostMsg::Key {
                keycode: 36,
                state: Press::Pressed,
            },
            HostMsg::Motion {
                window: 3,
                x: 1.5,
                y: 2.0,
            },
            HostMsg::Scroll {
                window: 3,
                axis: 0,
                value: -10.0,
                v120: -120,
            },
            HostMsg::ConfigureRequest {
                window: 3,
                width: 640,
                height: 480,
            },
            HostMsg::ClipboardRequest,
            HostMsg::ClipboardData {
                data: b"hello".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            encode_host(m, &mut buf);
        }
        let mut got = Vec::new();
        let mut rest = &buf[..];
        while let Some((m, used)) = decode_host(rest).unwrap() {
            got.push(m);
            rest = &rest[used..];
        }
        assert_eq!(got, msgs);
        assert!(rest.is_empty());
    }

    #[test]
    fn partial_and_hostile_input() {
        let mut buf = Vec::new();
        encode_host(
            &HostMsg::Key {
                keycode: 10,
                state: Press::Released,
            },
            &mut buf,
        );
        for cut in 0..buf.len() {
            assert_eq!(decode_host(&buf[..cut]), Ok(None));
        }
        // lying length
        let mut bad = buf.clone();
        bad[8..12].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(
            decode_host(&bad),
            Err(DecodeError::TooLong { .. })
        ));
        // wrong fixed length
        let mut bad = Vec::new();
        header(&mut bad, ty::KEY, 0, 4);
        bad.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode_host(&bad),
            Err(DecodeError::Malformed { .. })
        ));
        // NaN coordinates
        let mut bad = Vec::new();
        f64s(&mut bad, ty::MOTION, 1, &[f64::NAN, 0.0]);
        assert!(decode_host(&bad).is_err());
        // unknown type
        let mut bad = Vec::new();
        header(&mut bad, 999, 0, 0);
        assert_eq!(decode_host(&bad), Err(DecodeError::UnknownType(999)));
    }

    #[test]
    fn damage_round_trip_and_checks() {
        let m = AgentMsg::Damage {
            window: 1,
            x: 2,
            y: 3,
            width: 2,
            height: 1,
            format: PixelFormat::Xrgb8888,
            pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
        };
        let mut buf = Vec::new();
        encode_agent(&m, &mut buf);
        assert_eq!(decode_agent(&buf).unwrap(), Some((m, buf.len())));
        let mut bad = Vec::new();
        encode_damage_header(&mut bad, 1, 0, 0, 3, 1, PixelFormat::Argb8888, 8);
        bad.extend_from_slice(&[0; 8]);
        assert!(decode_agent(&bad).is_err());
    }
}
