//! dom0's keyboard layout for the guests: the keys dom0-ui forwards are keycodes, and a guest
//! turns them into characters with the keymap dom0 sends (the gui-agent's default is US
//! English). The keymap is the X server's own, as `xkbcomp -xkb $DISPLAY -` prints it, read
//! at start and again whenever the X server announces a new keyboard mapping (MappingNotify,
//! e.g. after `setxkbmap de`); every connected domain gets the new one, every new connection
//! starts with it.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::Mapping;
use x11rb::protocol::Event;

use crate::backend::UiEvent;

/// Largest keymap read (xkbcomp's are ~60 KiB).
pub const MAX_KEYMAP: usize = 1 << 20;

static CURRENT: Mutex<Option<Bytes>> = Mutex::new(None);

/// The keymap new GUI connections start with (None: the guest's default).
pub fn current() -> Option<Bytes> {
    CURRENT.lock().ok().and_then(|k| k.clone())
}

/// The X server's keymap as XKB text, or None (logged) when xkbcomp fails.
pub fn read() -> Option<Bytes> {
    let display = std::env::var("DISPLAY").ok()?;
    // Bounded: a stuck X server must not stall whoever asks.
    let mut child = match Command::new("timeout")
        .args(["5", "xkbcomp", "-xkb", &display, "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot run xkbcomp (x11-xkb-utils): guests keep a US keymap");
            return None;
        }
    };
    let mut text = Vec::new();
    let read = child
        .stdout
        .take()
        .map(|o| o.take(MAX_KEYMAP as u64 + 1).read_to_end(&mut text));
    let status = child.wait();
    let ok = matches!(read, Some(Ok(_)))
        && status.is_ok_and(|s| s.success())
        && text.len() <= MAX_KEYMAP
        && std::str::from_utf8(&text).is_ok_and(|t| t.contains("xkb_keymap"));
    if !ok {
        tracing::warn!("xkbcomp gave no keymap: guests keep theirs");
        return None;
    }
    Some(Bytes::from(text))
}

/// Reads the keymap, then follows the X server's mapping changes, on a thread of its own,
/// telling the UI (which sends it to every connected domain) about each keymap.
pub fn follow(ui: async_channel::Sender<UiEvent>) {
    let spawned = std::thread::Builder::new()
        .name("keymap".into())
        .spawn(move || {
            // The first keymap, for connections made from now on and those made meanwhile.
            if let Some(first) = read() {
                if let Ok(mut k) = CURRENT.lock() {
                    *k = Some(first.clone());
                }
                if ui.send_blocking(UiEvent::Keymap(first)).is_err() {
                    return;
                }
            }
            let Ok((conn, _)) = x11rb::rust_connection::RustConnection::connect(None) else {
                return;
            };
            loop {
                let Ok(ev) = conn.wait_for_event() else {
                    return;
                };
                let Event::MappingNotify(n) = ev else {
                    continue;
                };
                if n.request != Mapping::KEYBOARD {
                    continue;
                }
                // setxkbmap sends a burst: read once it is over.
                std::thread::sleep(Duration::from_millis(200));
                while let Ok(Some(_)) = conn.poll_for_event() {}
                let Some(new) = read() else { continue };
                let changed = CURRENT
                    .lock()
                    .map(|mut k| {
                        let changed = k.as_ref() != Some(&new);
                        *k = Some(new.clone());
                        changed
                    })
                    .unwrap_or(false);
                if changed {
                    tracing::info!(
                        bytes = new.len(),
                        "dom0's keymap changed; sending it to the domains"
                    );
                    if ui.send_blocking(UiEvent::Keymap(new)).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot follow keymap changes");
    }
}
