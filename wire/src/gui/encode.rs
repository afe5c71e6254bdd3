//! Encoding GUI messages: the header writer, the body writers of both directions and
//! [`damage_prefix`] for sending pixels straight from a client buffer.

use bytes::BufMut;

use super::types::*;
use super::GuiMessage;

/// Encodes one message.
pub fn encode<M: GuiMessage>(m: &M) -> Vec<u8> {
    m.encode()
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

pub(super) fn le_u32s(vals: &[u32]) -> Vec<u8> {
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

/// Appends an agent -> dom0 message (header and body).
pub(super) fn encode_agent(msg: &AgentMsg, out: &mut Vec<u8>) {
    match msg {
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

pub(super) fn hello_body(h: &Hello) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&h.min_version.to_le_bytes());
    b[2..].copy_from_slice(&h.max_version.to_le_bytes());
    b
}

/// Appends a dom0 -> agent message (header and body).
pub(super) fn encode_host(msg: &HostMsg, out: &mut Vec<u8>) {
    match msg {
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
