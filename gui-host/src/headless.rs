//! A headless dom0 receiver: keeps every connected domain's windows and pixels, and lets
//! tests and the benchmark list windows, read pixels and send input. One [`Receiver`] serves
//! many domains; a domain that breaks a rule is dropped alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bulkhead_wire::gui::{Axis, HostMsg, WindowId};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::conn::{drive, GuiConnection, HostSender, PeerEnd, SendError};
use crate::state::{Change, DomainWindows, Rules, Window};

/// Errors of the receiver's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiverError {
    /// No connection for that domain.
    #[error("no GUI connection for domain {0:?}")]
    NoDomain(String),
    /// No such window.
    #[error("domain {domain:?} has no window {window}")]
    NoWindow {
        /// Domain.
        domain: String,
        /// Window.
        window: WindowId,
    },
    /// The message could not be queued.
    #[error("domain {domain:?}: {err}")]
    Send {
        /// Domain.
        domain: String,
        /// Why.
        err: SendError,
    },
    /// Waiting ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// [`Receiver::type_text`] has no key for this character on a US keyboard.
    #[error("no key for {0:?} on a US keyboard")]
    Untypable(char),
}

/// Rows of a US keyboard: (evdev code of the first key, characters unshifted, shifted).
const US_ROWS: [(u32, &str, &str); 5] = [
    (2, "1234567890-=", "!@#$%^&*()_+"),
    (16, "qwertyuiop[]", "QWERTYUIOP{}"),
    (30, "asdfghjkl;'`", "ASDFGHJKL:\"~"),
    (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
    (57, " ", " "),
];
/// evdev KEY_LEFTSHIFT.
const EVDEV_LEFTSHIFT: u32 = 42;
/// XKB keycodes are evdev codes + 8.
const XKB_OFFSET: u32 = 8;

/// The XKB keycode (evdev + 8) of `c` on a US keyboard (the agent's default keymap) and
/// whether Shift must be held; `None` for characters without a key (Enter is `'\n'`, Tab
/// `'\t'`).
pub fn us_key(c: char) -> Option<(u32, bool)> {
    let evdev = match c {
        '\n' => return Some((28 + XKB_OFFSET, false)),
        '\t' => return Some((15 + XKB_OFFSET, false)),
        _ => US_ROWS.iter().find_map(|(first, plain, shifted)| {
            let pos = |row: &str| row.chars().position(|k| k == c);
            pos(plain)
                .map(|i| (i, false))
                .or_else(|| pos(shifted).map(|i| (i, true)))
                .and_then(|(i, shift)| Some((first + u32::try_from(i).ok()?, shift)))
        })?,
    };
    Some((evdev.0 + XKB_OFFSET, evdev.1))
}

/// State of one domain's connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum PeerStatus {
    /// Waiting for the agent's hello.
    Connecting,
    /// Hello exchanged.
    Ready {
        /// Negotiated version.
        version: u16,
    },
    /// Closed by the domain.
    Closed,
    /// Dropped for a violation or an I/O failure.
    Dropped {
        /// Why.
        reason: String,
    },
}

/// A window as listed by [`Receiver::windows`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowInfo {
    /// Agent's id.
    pub id: WindowId,
    /// Sanitised title.
    pub title: String,
    /// Sanitised app id.
    pub app_id: String,
    /// Screen position.
    pub x: i32,
    /// Screen position.
    pub y: i32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Shown.
    pub mapped: bool,
    /// Parent if shown as a popup.
    pub popup_parent: Option<WindowId>,
    /// Maximised (also for fullscreen requests).
    pub maximized: bool,
    /// Minimised.
    pub minimized: bool,
    /// CSS cursor name.
    pub cursor: &'static str,
    /// Damage messages applied so far.
    pub damage_count: u64,
}

impl From<&Window> for WindowInfo {
    fn from(w: &Window) -> Self {
        Self {
            id: w.id,
            title: w.title.clone(),
            app_id: w.app_id.clone(),
            x: w.x,
            y: w.y,
            width: w.width,
            height: w.height,
            mapped: w.mapped,
            popup_parent: w.popup_parent,
            maximized: w.maximized,
            minimized: w.minimized,
            cursor: w.cursor.name(),
            damage_count: w.damage_count,
        }
    }
}

/// A copy of a window's pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// ARGB8888 little-endian (B, G, R, A bytes), rows packed.
    pub data: Vec<u8>,
}

impl Pixels {
    /// The pixel at (x, y) as `0xAARRGGBB`.
    pub fn get(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 4;
        let p = self.data.get(i..i + 4)?;
        Some(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
    }
}

struct Peer {
    state: Arc<Mutex<DomainWindows>>,
    sender: HostSender,
    status: Arc<Mutex<PeerStatus>>,
    clipboard: Arc<Mutex<Option<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    peers: Mutex<HashMap<String, Peer>>,
    generation: watch::Sender<u64>,
}

/// The headless receiver; cheap to clone (shared state).
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("domains", &self.domains())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// No domains yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                peers: Mutex::new(HashMap::new()),
                generation: watch::channel(0).0,
            }),
        }
    }

    fn bump(&self) {
        self.inner
            .generation
            .send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Serves `domain`'s GUI stream (must run inside a tokio runtime). A previous connection
    /// of the same domain is stopped and replaced.
    pub fn add_peer<S>(&self, domain: &str, stream: S, rules: Rules, keymap: Option<Bytes>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.add_connection(domain, GuiConnection::new(stream, keymap), rules);
    }

    /// Serves an already set up connection (e.g. [`GuiConnection::from_fd`]).
    pub fn add_connection(&self, domain: &str, conn: GuiConnection, rules: Rules) {
        let state = Arc::new(Mutex::new(DomainWindows::new(rules)));
        let status = Arc::new(Mutex::new(PeerStatus::Connecting));
        let clipboard = Arc::new(Mutex::new(None));
        let sender = conn.sender();
        let me = self.clone();
        let name = domain.to_owned();
        let (st, stat, clip) = (state.clone(), status.clone(), clipboard.clone());
        let task = tokio::spawn(async move {
            let end = drive(&name, conn, st, |c| {
                match c {
                    Change::Ready { version } => {
                        *lock(&stat) = PeerStatus::Ready { version: *version }
                    }
                    Change::Clipboard(data) => *lock(&clip) = Some(data.clone()),
                    _ => {}
                }
                me.bump();
            })
            .await;
            *lock(&stat) = match end {
                PeerEnd::Closed => PeerStatus::Closed,
                other => PeerStatus::Dropped {
                    reason: other.to_string(),
                },
            };
            me.bump();
        });
        let old = lock(&self.inner.peers).insert(
            domain.to_owned(),
            Peer {
                state,
                sender,
                status,
                clipboard,
                task,
            },
        );
        if let Some(old) = old {
            old.task.abort();
        }
        self.bump();
    }

    /// Stops serving a domain (its windows are forgotten).
    pub fn remove_peer(&self, domain: &str) -> bool {
        let old = lock(&self.inner.peers).remove(domain);
        let found = old.is_some();
        if let Some(p) = old {
            p.task.abort();
        }
        self.bump();
        found
    }

    /// Domains with a connection (in any state).
    pub fn domains(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.peers).keys().cloned().collect();
        v.sort();
        v
    }

    fn with_peer<T>(&self, domain: &str, f: impl FnOnce(&Peer) -> T) -> Result<T, ReceiverError> {
        let peers = lock(&self.inner.peers);
        let p = peers
            .get(domain)
            .ok_or_else(|| ReceiverError::NoDomain(domain.to_owned()))?;
        Ok(f(p))
    }

    /// The state of a domain's connection.
    pub fn status(&self, domain: &str) -> Option<PeerStatus> {
        self.with_peer(domain, |p| lock(&p.status).clone()).ok()
    }

    /// A domain's windows, by id (empty if the domain is unknown).
    pub fn windows(&self, domain: &str) -> Vec<WindowInfo> {
        self.with_peer(domain, |p| {
            lock(&p.state).windows().map(WindowInfo::from).collect()
        })
        .unwrap_or_default()
    }

    /// Runs `f` on a window without copying its pixels.
    pub fn with_window<T>(
        &self,
        domain: &str,
        id: WindowId,
        f: impl FnOnce(&Window) -> T,
    ) -> Result<T, ReceiverError> {
        self.with_peer(domain, |p| lock(&p.state).window(id).map(f))?
            .ok_or_else(|| ReceiverError::NoWindow {
                domain: domain.to_owned(),
                window: id,
            })
    }

    /// A copy of a window's pixels.
    pub fn pixels(&self, domain: &str, id: WindowId) -> Result<Pixels, ReceiverError> {
        self.with_window(domain, id, |w| Pixels {
            width: w.width,
            height: w.height,
            data: w.pixels().to_vec(),
        })
    }

    /// Waits (at most `limit`) until what was sent to `domain` is written to its socket.
    pub async fn flush(
        &self,
        domain: &str,
        limit: std::time::Duration,
    ) -> Result<(), ReceiverError> {
        let sender = self.with_peer(domain, |p| p.sender.clone())?;
        let _ = tokio::time::timeout(limit, sender.flushed()).await;
        Ok(())
    }

    /// Sends any dom0 -> agent message.
    pub fn send(&self, domain: &str, msg: &HostMsg) -> Result<(), ReceiverError> {
        self.with_peer(domain, |p| p.sender.send(msg))?
            .map_err(|err| ReceiverError::Send {
                domain: domain.to_owned(),
                err,
            })
    }

    /// Key press or release (XKB keycode = evdev + 8).
    pub fn key(
        &self,
        domain: &str,
        window: WindowId,
        keycode: u32,
        pressed: bool,
    ) -> Result<(), ReceiverError> {
        self.send(
            domain,
            &HostMsg::Key {
                window,
                keycode,
                pressed,
            },
        )
    }

    /// Presses and releases each XKB keycode in turn.
    pub fn tap_keys(
        &self,
        domain: &str,
        window: WindowId,
        keycodes: &[u32],
    ) -> Result<(), ReceiverError> {
        for &k in keycodes {
            self.key(domain, window, k, true)?;
            self.key(domain, window, k, false)?;
        }
        Ok(())
    }

    /// Types `text` into a window as key presses on a US keyboard (Shift held where needed).
    /// Checks every character first: nothing is sent if one has no key.
    pub fn type_text(
        &self,
        domain: &str,
        window: WindowId,
        text: &str,
    ) -> Result<(), ReceiverError> {
        let keys = text
            .chars()
            .map(|c| us_key(c).ok_or(ReceiverError::Untypable(c)))
            .collect::<Result<Vec<_>, _>>()?;
        let shift = EVDEV_LEFTSHIFT + XKB_OFFSET;
        for (code, shifted) in keys {
            if shifted {
                self.key(domain, window, shift, true)?;
            }
            self.tap_keys(domain, window, &[code])?;
            if shifted {
                self.key(domain, window, shift, false)?;
            }
        }
        Ok(())
    }

    /// Pointer motion (window-local pixels).
    pub fn motion(
        &self,
        domain: &str,
        window: WindowId,
        x: i32,
        y: i32,
    ) -> Result<(), ReceiverError> {
        self.send(domain, &HostMsg::Motion { window, x, y })
    }

    /// Pointer button (Linux BTN_*).
    pub fn button(
        &self,
        domain: &str,
        window: WindowId,
        button: u32,
        pressed: bool,
    ) -> Result<(), ReceiverError> {
        self.send(
            domain,
            &HostMsg::Button {
                window,
                button,
                pressed,
            },
        )
    }

    /// Scroll (`value` in 1/256 pixel, `v120` wheel steps).
    pub fn scroll(
        &self,
        domain: &str,
        window: WindowId,
        axis: Axis,
        value: i32,
        v120: i32,
    ) -> Result<(), ReceiverError> {
        self.send(
            domain,
            &HostMsg::Scroll {
                window,
                axis,
                value,
                v120,
            },
        )
    }

    /// Pointer enters (`Some((x, y))`) or leaves (`None`) a window.
    pub fn pointer_over(
        &self,
        domain: &str,
        window: WindowId,
        at: Option<(i32, i32)>,
    ) -> Result<(), ReceiverError> {
        match at {
            Some((x, y)) => self.send(domain, &HostMsg::Enter { window, x, y }),
            None => self.send(domain, &HostMsg::Leave { window }),
        }
    }

    /// Keyboard focus in or out.
    pub fn focus(
        &self,
        domain: &str,
        window: WindowId,
        focused: bool,
    ) -> Result<(), ReceiverError> {
        if focused {
            self.send(domain, &HostMsg::FocusIn { window })
        } else {
            self.send(domain, &HostMsg::FocusOut { window })
        }
    }

    /// Asks the window for a size.
    pub fn configure(
        &self,
        domain: &str,
        window: WindowId,
        width: u32,
        height: u32,
    ) -> Result<(), ReceiverError> {
        self.send(
            domain,
            &HostMsg::ConfigureRequest {
                window,
                width,
                height,
            },
        )
    }

    /// Asks the window to close.
    pub fn close(&self, domain: &str, window: WindowId) -> Result<(), ReceiverError> {
        self.send(domain, &HostMsg::Close { window })
    }

    /// Pastes data into the domain's clipboard.
    pub fn paste(&self, domain: &str, data: Bytes) -> Result<(), ReceiverError> {
        self.send(domain, &HostMsg::ClipboardData { data })
    }

    /// Asks the domain for its clipboard and waits for the answer.
    pub async fn copy(&self, domain: &str, timeout: Duration) -> Result<Bytes, ReceiverError> {
        self.with_peer(domain, |p| {
            *lock(&p.clipboard) = None;
            lock(&p.state).clipboard_requested();
        })?;
        self.send(domain, &HostMsg::ClipboardRequest)?;
        self.wait_for(timeout, |r| {
            r.with_peer(domain, |p| lock(&p.clipboard).take())
                .ok()
                .flatten()
        })
        .await
    }

    /// A receiver of a counter bumped after every change (for event loops).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Waits until `f` returns something (checked now and after every change).
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&Receiver) -> Option<T>,
    ) -> Result<T, ReceiverError> {
        let mut rx = self.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if let Some(v) = f(self) {
                    return v;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ReceiverError::Timeout(timeout))
    }

    /// Waits for a mapped window of `domain` whose title contains `title` and returns it.
    pub async fn wait_window(
        &self,
        domain: &str,
        title: &str,
        timeout: Duration,
    ) -> Result<WindowInfo, ReceiverError> {
        self.wait_for(timeout, |r| {
            r.windows(domain)
                .into_iter()
                .find(|w| w.mapped && w.title.contains(title))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_keys() {
        // evdev: KEY_A 30, KEY_Z 44, KEY_1 2, KEY_SLASH 53, KEY_SPACE 57, KEY_ENTER 28
        assert_eq!(us_key('a'), Some((38, false)));
        assert_eq!(us_key('A'), Some((38, true)));
        assert_eq!(us_key('z'), Some((52, false)));
        assert_eq!(us_key('1'), Some((10, false)));
        assert_eq!(us_key('!'), Some((10, true)));
        assert_eq!(us_key('/'), Some((61, false)));
        assert_eq!(us_key('?'), Some((61, true)));
        assert_eq!(us_key('\\'), Some((51, false)));
        assert_eq!(us_key('|'), Some((51, true)));
        assert_eq!(us_key('"'), Some((48, true)));
        assert_eq!(us_key(' '), Some((65, false)));
        assert_eq!(us_key('\n'), Some((36, false)));
        assert_eq!(us_key('é'), None);
        assert_eq!(us_key('\u{7f}'), None);
    }

    #[tokio::test]
    async fn type_text_refuses_untypable_before_sending() {
        let r = Receiver::new();
        assert_eq!(
            r.type_text("d", 1, "ok é"),
            Err(ReceiverError::Untypable('é'))
        );
        assert_eq!(
            r.type_text("d", 1, "ok"),
            Err(ReceiverError::NoDomain("d".into()))
        );
    }
}
