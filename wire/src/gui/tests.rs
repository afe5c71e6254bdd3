//! Tests of the GUI protocol: round trips of every message, the header and body checks,
//! the decoder's incremental behaviour and the clamping constructors.

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
    assert!(
        decode_one::<AgentMsg>(&raw(T_AGENT_CLIPBOARD_DATA, 0, &vec![0; MAX_CLIPBOARD_LEN]))
            .is_ok()
    );
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
    assert!(matches!(&big, AgentMsg::ClipboardData { data } if data.len() == MAX_CLIPBOARD_LEN));
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
