//! Maps [`AgentMsg`]/[`HostMsg`] to and from the GUI protocol of `bulkhead-wire`
//! (`bulkhead_wire::gui`: 12-byte header, per-type body limits, checked decoding). Values the
//! wire format cannot carry are clamped or dropped here, with the reason in the docs below.

use bulkhead_wire::gui as wire;
use bytes::Bytes;

use super::{AgentMsg, HostMsg, PixelFormat, Press};

/// A message from dom0 that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] wire::GuiError),
    #[error("{0}")]
    Malformed(&'static str),
}

fn wire_format(f: PixelFormat) -> wire::PixelFormat {
    match f {
        PixelFormat::Argb8888 => wire::PixelFormat::Argb8888,
        PixelFormat::Xrgb8888 => wire::PixelFormat::Xrgb8888,
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> Bytes {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Bytes::copy_from_slice(&s.as_bytes()[..end])
}

/// Appends one agent message to `out`. Titles and app ids longer than the protocol allows are
/// cut; cursor names outside the protocol's named set become `default`; a cursor for no
/// window is not sent.
pub fn encode_agent(msg: &AgentMsg, out: &mut Vec<u8>) {
    use wire::GuiMessage;
    let m = match msg {
        AgentMsg::Hello => wire::AgentMsg::Hello(wire::Hello::OURS),
        AgentMsg::Create {
            window,
            width,
            height,
            parent,
            x,
            y,
        } => wire::AgentMsg::Create {
            window: *window,
            x: *x,
            y: *y,
            width: *width,
            height: *height,
            parent: *parent,
        },
        AgentMsg::Configure {
            window,
            x,
            y,
            width,
            height,
        } => wire::AgentMsg::Configure {
            window: *window,
            x: *x,
            y: *y,
            width: *width,
            height: *height,
        },
        AgentMsg::Map { window } => wire::AgentMsg::Map { window: *window },
        AgentMsg::Unmap { window } => wire::AgentMsg::Unmap { window: *window },
        AgentMsg::Destroy { window } => wire::AgentMsg::Destroy { window: *window },
        AgentMsg::Title { window, title } => wire::AgentMsg::Title {
            window: *window,
            title: cut(title, wire::MAX_TITLE_LEN),
        },
        AgentMsg::AppId { window, app_id } => wire::AgentMsg::AppId {
            window: *window,
            app_id: cut(app_id, wire::MAX_APP_ID_LEN),
        },
        AgentMsg::Damage {
            window,
            x,
            y,
            width,
            height,
            format,
            pixels,
        } => {
            encode_damage_header(out, *window, *x, *y, *width, *height, *format);
            out.extend_from_slice(pixels);
            return;
        }
        AgentMsg::Cursor { window, name } => {
            if *window == 0 {
                return;
            }
            let cursor = wire::Cursor::ALL
                .iter()
                .copied()
                .find(|c| c.name() == name)
                .unwrap_or(wire::Cursor::Default);
            wire::AgentMsg::Cursor {
                window: *window,
                cursor,
            }
        }
        AgentMsg::ClipboardData { data } => wire::AgentMsg::ClipboardData {
            data: Bytes::copy_from_slice(&data[..data.len().min(wire::MAX_CLIPBOARD_LEN)]),
        },
    };
    m.encode_into(out);
}

/// Header and fixed part of a damage message; the caller appends exactly
/// `width * height * 4` pixel bytes (saves one copy of large rectangles).
pub fn encode_damage_header(
    out: &mut Vec<u8>,
    window: u32,
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    format: PixelFormat,
) {
    let rect = wire::Rect {
        x,
        y,
        width,
        height,
    };
    out.extend_from_slice(&wire::damage_prefix(window, rect, wire_format(format)));
}

/// Appends one dom0 message to `out` (the dom0 side of tests and the benchmark).
pub fn encode_host(msg: &HostMsg, out: &mut Vec<u8>) {
    use wire::GuiMessage;
    let press = |p: &Press| matches!(p, Press::Pressed);
    let m = match msg {
        HostMsg::Hello {
            min_version,
            max_version,
        } => wire::HostMsg::Hello(wire::Hello {
            min_version: *min_version,
            max_version: *max_version,
        }),
        HostMsg::Keymap { keymap } => wire::HostMsg::Keymap {
            keymap: Bytes::copy_from_slice(keymap.as_bytes()),
        },
        HostMsg::Key {
            window,
            keycode,
            state,
        } => wire::HostMsg::Key {
            window: *window,
            keycode: *keycode,
            pressed: press(state),
        },
        HostMsg::Motion { window, x, y } => wire::HostMsg::Motion {
            window: *window,
            x: *x as i32,
            y: *y as i32,
        },
        HostMsg::Button {
            window,
            button,
            state,
        } => wire::HostMsg::Button {
            window: *window,
            button: *button,
            pressed: press(state),
        },
        HostMsg::Scroll {
            window,
            axis,
            value,
            v120,
        } => wire::HostMsg::Scroll {
            window: *window,
            axis: if *axis == 1 {
                wire::Axis::Horizontal
            } else {
                wire::Axis::Vertical
            },
            value: (*value * 256.0) as i32,
            v120: *v120,
        },
        HostMsg::Enter { window, x, y } => wire::HostMsg::Enter {
            window: *window,
            x: *x as i32,
            y: *y as i32,
        },
        HostMsg::Leave { window } => wire::HostMsg::Leave { window: *window },
        HostMsg::FocusIn { window } => wire::HostMsg::FocusIn { window: *window },
        HostMsg::FocusOut { window } => wire::HostMsg::FocusOut { window: *window },
        HostMsg::ConfigureRequest {
            window,
            width,
            height,
        } => wire::HostMsg::ConfigureRequest {
            window: *window,
            width: *width,
            height: *height,
        },
        HostMsg::CloseRequest { window } => wire::HostMsg::Close { window: *window },
        HostMsg::ClipboardRequest => wire::HostMsg::ClipboardRequest,
        HostMsg::ClipboardData { data } => wire::HostMsg::ClipboardData {
            data: Bytes::copy_from_slice(data),
        },
    };
    m.encode_into(out);
}

/// Decodes one dom0 message from the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode_host(buf: &[u8]) -> Result<Option<(HostMsg, usize)>, DecodeError> {
    let Some((m, used)) = wire::decode_one::<wire::HostMsg>(buf)? else {
        return Ok(None);
    };
    let press = |p: bool| if p { Press::Pressed } else { Press::Released };
    let msg = match m {
        wire::HostMsg::Hello(h) => HostMsg::Hello {
            min_version: h.min_version,
            max_version: h.max_version,
        },
        wire::HostMsg::Keymap { keymap } => HostMsg::Keymap {
            keymap: String::from_utf8(keymap.to_vec())
                .map_err(|_| DecodeError::Malformed("keymap is not UTF-8 text"))?,
        },
        wire::HostMsg::Key {
            window,
            keycode,
            pressed,
        } => HostMsg::Key {
            window,
            keycode,
            state: press(pressed),
        },
        wire::HostMsg::Motion { window, x, y } => HostMsg::Motion {
            window,
            x: x as f64,
            y: y as f64,
        },
        wire::HostMsg::Button {
            window,
            button,
            pressed,
        } => HostMsg::Button {
            window,
            button,
            state: press(pressed),
        },
        wire::HostMsg::Scroll {
            window,
            axis,
            value,
            v120,
        } => HostMsg::Scroll {
            window,
            axis: match axis {
                wire::Axis::Vertical => 0,
                wire::Axis::Horizontal => 1,
            },
            value: value as f64 / 256.0,
            v120,
        },
        wire::HostMsg::Enter { window, x, y } => HostMsg::Enter {
            window,
            x: x as f64,
            y: y as f64,
        },
        wire::HostMsg::Leave { window } => HostMsg::Leave { window },
        wire::HostMsg::FocusIn { window } => HostMsg::FocusIn { window },
        wire::HostMsg::FocusOut { window } => HostMsg::FocusOut { window },
        wire::HostMsg::ConfigureRequest {
            window,
            width,
            height,
        } => HostMsg::ConfigureRequest {
            window,
            width,
            height,
        },
        wire::HostMsg::Close { window } => HostMsg::CloseRequest { window },
        wire::HostMsg::ClipboardRequest => HostMsg::ClipboardRequest,
        wire::HostMsg::ClipboardData { data } => HostMsg::ClipboardData {
            data: data.to_vec(),
        },
    };
    Ok(Some((msg, used)))
}

/// Decodes one agent message from the start of `buf` (the dom0 side of tests and the
/// benchmark); `Ok(None)` when more bytes are needed.
pub fn decode_agent(buf: &[u8]) -> Result<Option<(AgentMsg, usize)>, DecodeError> {
    let Some((m, used)) = wire::decode_one::<wire::AgentMsg>(buf)? else {
        return Ok(None);
    };
    let text = |b: Bytes| String::from_utf8_lossy(&b).into_owned();
    let msg = match m {
        wire::AgentMsg::Hello(_) => AgentMsg::Hello,
        wire::AgentMsg::Create {
            window,
            x,
            y,
            width,
            height,
            parent,
        } => AgentMsg::Create {
            window,
            width,
            height,
            parent,
            x,
            y,
        },
        wire::AgentMsg::Configure {
            window,
            x,
            y,
            width,
            height,
        } => AgentMsg::Configure {
            window,
            x,
            y,
            width,
            height,
        },
        wire::AgentMsg::Map { window } => AgentMsg::Map { window },
        wire::AgentMsg::Unmap { window } => AgentMsg::Unmap { window },
        wire::AgentMsg::Destroy { window } => AgentMsg::Destroy { window },
        wire::AgentMsg::Title { window, title } => AgentMsg::Title {
            window,
            title: text(title),
        },
        wire::AgentMsg::AppId { window, app_id } => AgentMsg::AppId {
            window,
            app_id: text(app_id),
        },
        wire::AgentMsg::Damage {
            window,
            rect,
            format,
            pixels,
        } => AgentMsg::Damage {
            window,
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
            format: match format {
                wire::PixelFormat::Argb8888 => PixelFormat::Argb8888,
                wire::PixelFormat::Xrgb8888 => PixelFormat::Xrgb8888,
            },
            pixels: pixels.to_vec(),
        },
        wire::AgentMsg::Cursor { window, cursor } => AgentMsg::Cursor {
            window,
            name: cursor.name().to_string(),
        },
        wire::AgentMsg::State { .. } => {
            return Err(DecodeError::Malformed("this agent never sends STATE"))
        }
        wire::AgentMsg::ClipboardData { data } => AgentMsg::ClipboardData {
            data: data.to_vec(),
        },
    };
    Ok(Some((msg, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_messages_round_trip() {
        let msgs = vec![
            HostMsg::Hello {
                min_version: 1,
                max_version: 1,
            },
            HostMsg::Keymap {
                keymap: "xkb_keymap {}".into(),
            },
            HostMsg::Key {
                window: 2,
                keycode: 36,
                state: Press::Pressed,
            },
            HostMsg::Motion {
                window: 3,
                x: 1.0,
                y: 2.0,
            },
            HostMsg::Scroll {
                window: 3,
                axis: 0,
                value: -10.5,
                v120: -120,
            },
            HostMsg::ConfigureRequest {
                window: 3,
                width: 640,
                height: 480,
            },
            HostMsg::CloseRequest { window: 3 },
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
                window: 1,
                keycode: 10,
                state: Press::Released,
            },
            &mut buf,
        );
        for cut in 0..buf.len() {
            assert_eq!(decode_host(&buf[..cut]), Ok(None));
        }
        let mut bad = buf.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_host(&bad).is_err(), "lying length");
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&999u32.to_le_bytes());
        assert!(decode_host(&bad).is_err(), "unknown type");
        let mut bad = Vec::new();
        encode_agent(&AgentMsg::Map { window: 1 }, &mut bad);
        assert!(decode_host(&bad).is_err(), "message of the other direction");
        let mut bad = Vec::new();
        encode_host(
            &HostMsg::Keymap {
                keymap: String::new(),
            },
            &mut bad,
        );
        bad.push(0xff);
        let len = (bad.len() - 12) as u32;
        bad[8..12].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode_host(&bad),
            Err(DecodeError::Malformed("keymap is not UTF-8 text"))
        );
    }

    #[test]
    fn agent_messages_round_trip_and_limits() {
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
        let long = "é".repeat(200);
        let mut buf = Vec::new();
        encode_agent(
            &AgentMsg::Title {
                window: 4,
                title: long,
            },
            &mut buf,
        );
        match decode_agent(&buf).unwrap() {
            Some((AgentMsg::Title { title, .. }, _)) => {
                assert!(title.len() <= wire::MAX_TITLE_LEN && title.chars().all(|c| c == 'é'))
            }
            other => panic!("{other:?}"),
        }
        let mut buf = Vec::new();
        encode_agent(
            &AgentMsg::Cursor {
                window: 4,
                name: "no-such-cursor".into(),
            },
            &mut buf,
        );
        assert!(matches!(
            decode_agent(&buf).unwrap(),
            Some((AgentMsg::Cursor { name, .. }, _)) if name == "default"
        ));
    }
}
