//! The window-state machine of one domain's GUI connection: applies every decoded agent
//! message under the rules of reference/qubes.md §3.5 and gui.md §6, and owns each window's
//! ARGB buffer. It does no I/O; [`crate::conn`] and [`crate::headless`] feed it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bulkhead_wire::gui::{
    negotiate, AgentMsg, Cursor, GuiError, Hello, PixelFormat, Rect, WindowId, WindowState,
};
use bytes::Bytes;

use crate::sanitize::{sanitize_app_id, sanitize_title, TitleMode};

/// Per-domain rules. The defaults follow Qubes where it has a number.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Screen (work area) width that windows are kept on.
    pub screen_width: u32,
    /// Screen (work area) height.
    pub screen_height: u32,
    /// Most windows a domain may have at once.
    pub max_windows: usize,
    /// Most bytes of window buffers (width * height * 4 summed) a domain may hold.
    pub max_buffer_bytes: u64,
    /// How titles are filtered.
    pub title_mode: TitleMode,
    /// Largest share of the screen a popup may cover, in percent; bigger popups are refused
    /// as popups (they become ordinary windows, as in Qubes).
    pub max_popup_percent: u64,
    /// Messages per second a domain may send on average ...
    pub max_messages_per_sec: u32,
    /// ... and in a burst.
    pub message_burst: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            screen_width: 1920,
            screen_height: 1080,
            max_windows: 256,
            max_buffer_bytes: 1 << 30,
            title_mode: TitleMode::Ascii,
            max_popup_percent: 90,
            max_messages_per_sec: 20_000,
            message_burst: 100_000,
        }
    }
}

/// Something a domain did that breaks the rules; the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Malformed bytes (from the decoder).
    #[error(transparent)]
    Protocol(#[from] GuiError),
    /// The first message was not a hello.
    #[error("sent {0} before its hello")]
    NoHello(&'static str),
    /// A second hello.
    #[error("sent a second hello")]
    SecondHello,
    /// A message for a window that does not exist.
    #[error("{msg} for unknown window {window}")]
    UnknownWindow {
        /// Message name.
        msg: &'static str,
        /// The id.
        window: WindowId,
    },
    /// Create for an id that exists.
    #[error("created window {0}, which already exists")]
    DuplicateCreate(WindowId),
    /// Create with an id not above every earlier id (ids are never reused).
    #[error("created window {window}, not above the last id {last} (ids must increase)")]
    IdNotIncreasing {
        /// The id.
        window: WindowId,
        /// The highest id seen.
        last: WindowId,
    },
    /// A popup whose parent does not exist.
    #[error("popup {window} names parent {parent}, which does not exist")]
    UnknownParent {
        /// The popup.
        window: WindowId,
        /// The named parent.
        parent: WindowId,
    },
    /// Too many windows.
    #[error("more than {0} windows")]
    TooManyWindows(usize),
    /// Window buffers above the memory limit.
    #[error("window buffers would need {needed} bytes, limit {limit}")]
    BufferMemory {
        /// Total needed.
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// A damage rectangle outside the window's buffer.
    #[error("damage {rect:?} outside window {window}'s {width}x{height} buffer")]
    DamageOutside {
        /// Window.
        window: WindowId,
        /// Rectangle sent.
        rect: Rect,
        /// Buffer width.
        width: u32,
        /// Buffer height.
        height: u32,
    },
    /// Faster than the message rate limit.
    #[error("message flood: more than {burst} messages beyond {rate}/s")]
    Flood {
        /// Allowed average.
        rate: u32,
        /// Allowed burst.
        burst: u32,
    },
}

/// One guest window as dom0 keeps it.
#[derive(Clone)]
pub struct Window {
    /// Agent's id.
    pub id: WindowId,
    /// Parent if this is a popup (None for toplevels and for refused popups).
    pub popup_parent: Option<WindowId>,
    /// Screen position (kept on screen).
    pub x: i32,
    /// Screen position.
    pub y: i32,
    /// Buffer width.
    pub width: u32,
    /// Buffer height.
    pub height: u32,
    /// Shown.
    pub mapped: bool,
    /// Sanitised title.
    pub title: String,
    /// Sanitised app id.
    pub app_id: String,
    /// Cursor over the window.
    pub cursor: Cursor,
    /// Maximised (also what a fullscreen request becomes).
    pub maximized: bool,
    /// Minimised.
    pub minimized: bool,
    /// Damage messages applied.
    pub damage_count: u64,
    /// Screen origin of the parent when the popup was placed (popups only).
    parent_origin: (i32, i32),
    /// ARGB8888 pixels, little-endian `0xAARRGGBB`, `width * height * 4` bytes, rows packed.
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Window {
    // Everything but the pixels.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("id", &self.id)
            .field("popup_parent", &self.popup_parent)
            .field("geometry", &(self.x, self.y, self.width, self.height))
            .field("mapped", &self.mapped)
            .field("title", &self.title)
            .field("app_id", &self.app_id)
            .field("cursor", &self.cursor)
            .field("maximized", &self.maximized)
            .field("minimized", &self.minimized)
            .field("damage_count", &self.damage_count)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// The pixels (`width * height * 4` bytes, B G R A per pixel in memory).
    pub fn pixels(&self) -> &[u8] {
        &self.buffer
    }

    /// Whether this window is shown as a popup (no decoration, placed by its parent).
    pub fn is_popup(&self) -> bool {
        self.popup_parent.is_some()
    }
}

/// What applying a message changed (for a UI to redraw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The version is agreed.
    Ready {
        /// Negotiated version.
        version: u16,
    },
    /// New window.
    Created(WindowId),
    /// Geometry changed.
    Configured(WindowId),
    /// Shown.
    Mapped(WindowId),
    /// Hidden.
    Unmapped(WindowId),
    /// Gone.
    Destroyed(WindowId),
    /// Title changed.
    Title(WindowId),
    /// App id changed.
    AppId(WindowId),
    /// Pixels changed in the rectangle.
    Damaged(WindowId, Rect),
    /// Cursor changed.
    Cursor(WindowId),
    /// Maximised/minimised changed.
    State(WindowId),
    /// Clipboard contents dom0 asked for.
    Clipboard(Bytes),
    /// Nothing (e.g. unrequested clipboard data, ignored).
    Nothing,
}

/// Token bucket against message floods.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

/// The windows of one domain and the rules they obey.
#[derive(Debug)]
pub struct DomainWindows {
    rules: Rules,
    version: Option<u16>,
    windows: BTreeMap<WindowId, Window>,
    last_id: WindowId,
    buffer_bytes: u64,
    clipboard_requested: bool,
    bucket: Bucket,
}

fn msg_name(m: &AgentMsg) -> &'static str {
    match m {
        AgentMsg::Hello(_) => "hello",
        AgentMsg::Create { .. } => "create",
        AgentMsg::Configure { .. } => "configure",
        AgentMsg::Map { .. } => "map",
        AgentMsg::Unmap { .. } => "unmap",
        AgentMsg::Destroy { .. } => "destroy",
        AgentMsg::Title { .. } => "title",
        AgentMsg::AppId { .. } => "app id",
        AgentMsg::Damage { .. } => "damage",
        AgentMsg::Cursor { .. } => "cursor",
        AgentMsg::State { .. } => "state",
        AgentMsg::ClipboardData { .. } => "clipboard data",
    }
}

/// Clamps `pos` so that a span of `len` starting there lies inside `0..screen` (or starts at
/// 0 when it is longer than the screen).
fn keep_on_screen(pos: i64, len: u32, screen: u32) -> i32 {
    let max = i64::from(screen.saturating_sub(len));
    // max <= u32::MAX and the result is within 0..=max, so it fits i32 for any screen the
    // rules allow (<= 16384).
    i32::try_from(pos.clamp(0, max)).unwrap_or(0)
}

impl DomainWindows {
    /// No windows yet; waiting for the agent's hello.
    pub fn new(rules: Rules) -> Self {
        let tokens = f64::from(rules.message_burst);
        Self {
            rules,
            version: None,
            windows: BTreeMap::new(),
            last_id: 0,
            buffer_bytes: 0,
            clipboard_requested: false,
            bucket: Bucket { tokens, last: None },
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The negotiated version, once the hello came.
    pub fn version(&self) -> Option<u16> {
        self.version
    }

    /// Every window, by id.
    pub fn windows(&self) -> impl Iterator<Item = &Window> {
        self.windows.values()
    }

    /// One window.
    pub fn window(&self, id: WindowId) -> Option<&Window> {
        self.windows.get(&id)
    }

    /// Bytes of window buffers held.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes
    }

    /// dom0 sent a clipboard request: the next clipboard data is accepted once.
    pub fn clipboard_requested(&mut self) {
        self.clipboard_requested = true;
    }

    /// Applies one message received now.
    pub fn apply(&mut self, msg: AgentMsg) -> Result<Change, Violation> {
        self.apply_at(msg, Instant::now())
    }

    fn charge(&mut self, now: Instant) -> Result<(), Violation> {
        let rate = f64::from(self.rules.max_messages_per_sec);
        let burst = f64::from(self.rules.message_burst);
        if let Some(last) = self.bucket.last {
            let dt = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(3600));
            self.bucket.tokens = (self.bucket.tokens + dt.as_secs_f64() * rate).min(burst);
        }
        self.bucket.last = Some(now);
        if self.bucket.tokens < 1.0 {
            return Err(Violation::Flood {
                rate: self.rules.max_messages_per_sec,
                burst: self.rules.message_burst,
            });
        }
        self.bucket.tokens -= 1.0;
        Ok(())
    }

    fn get_mut(&mut self, msg: &'static str, id: WindowId) -> Result<&mut Window, Violation> {
        self.windows
            .get_mut(&id)
            .ok_or(Violation::UnknownWindow { msg, window: id })
    }

    /// Reserves buffer memory for a `width` x `height` buffer replacing `old_bytes`.
    fn reserve(&mut self, old_bytes: u64, width: u32, height: u32) -> Result<u64, Violation> {
        let bytes = u64::from(width) * u64::from(height) * 4;
        let needed = self.buffer_bytes - old_bytes + bytes;
        if needed > self.rules.max_buffer_bytes {
            return Err(Violation::BufferMemory {
                needed,
                limit: self.rules.max_buffer_bytes,
            });
        }
        self.buffer_bytes = needed;
        Ok(bytes)
    }

    /// Places a window: popups relative to their parent's origin, everything kept on screen.
    fn place(&self, origin: (i32, i32), x: i32, y: i32, width: u32, height: u32) -> (i32, i32) {
        (
            keep_on_screen(
                i64::from(origin.0) + i64::from(x),
                width,
                self.rules.screen_width,
            ),
            keep_on_screen(
                i64::from(origin.1) + i64::from(y),
                height,
                self.rules.screen_height,
            ),
        )
    }

    fn popup_too_big(&self, width: u32, height: u32) -> bool {
        let area = u64::from(width) * u64::from(height);
        let screen = u64::from(self.rules.screen_width) * u64::from(self.rules.screen_height);
        area * 100 > screen * self.rules.max_popup_percent
    }

    /// Applies one message received at `now` (the rate limit's clock).
    pub fn apply_at(&mut self, msg: AgentMsg, now: Instant) -> Result<Change, Violation> {
        self.charge(now)?;
        let name = msg_name(&msg);
        if self.version.is_none() {
            let AgentMsg::Hello(h) = msg else {
                return Err(Violation::NoHello(name));
            };
            let v = negotiate(Hello::OURS, h)?;
            self.version = Some(v);
            return Ok(Change::Ready { version: v });
        }
        match msg {
            AgentMsg::Hello(_) => Err(Violation::SecondHello),
            AgentMsg::Create {
                window,
                x,
                y,
                width,
                height,
                parent,
            } => {
                if self.windows.contains_key(&window) {
                    return Err(Violation::DuplicateCreate(window));
                }
                if window <= self.last_id {
                    return Err(Violation::IdNotIncreasing {
                        window,
                        last: self.last_id,
                    });
                }
                if self.windows.len() >= self.rules.max_windows {
                    return Err(Violation::TooManyWindows(self.rules.max_windows));
                }
                let mut origin = (0, 0);
                let mut popup_parent = None;
                if let Some(p) = parent {
                    let pw = self
                        .windows
                        .get(&p)
                        .ok_or(Violation::UnknownParent { window, parent: p })?;
                    origin = (pw.x, pw.y);
                    if self.popup_too_big(width, height) {
                        tracing::warn!(
                            window,
                            width,
                            height,
                            "popup covers more than {}% of the screen; shown as an ordinary window",
                            self.rules.max_popup_percent
                        );
                    } else {
                        popup_parent = Some(p);
                    }
                }
                let bytes = self.reserve(0, width, height)?;
                let (sx, sy) = if popup_parent.is_some() {
                    self.place(origin, x, y, width, height)
                } else {
                    self.place((0, 0), x, y, width, height)
                };
                self.last_id = window;
                self.windows.insert(
                    window,
                    Window {
                        id: window,
                        popup_parent,
                        x: sx,
                        y: sy,
                        width,
                        height,
                        mapped: false,
                        title: String::new(),
                        app_id: String::new(),
                        cursor: Cursor::Default,
                        maximized: false,
                        minimized: false,
                        damage_count: 0,
                        parent_origin: origin,
                        // bytes <= max_buffer_bytes, which the caller chose to allow; zeroed
                        // allocations are lazily backed by the kernel.
                        buffer: vec![0; bytes as usize],
                    },
                );
                Ok(Change::Created(window))
            }
            AgentMsg::Configure {
                window,
                x,
                y,
                width,
                height,
            } => {
                let (old_w, old_h, popup, origin) = {
                    let w = self.get_mut(name, window)?;
                    (w.width, w.height, w.popup_parent, w.parent_origin)
                };
                let mut width_height = (old_w, old_h);
                if (width, height) != (old_w, old_h) {
                    if popup.is_some() && self.popup_too_big(width, height) {
                        tracing::warn!(
                            window,
                            width,
                            height,
                            "popup resized to cover most of the screen; no longer a popup"
                        );
                        if let Some(w) = self.windows.get_mut(&window) {
                            w.popup_parent = None;
                        }
                    }
                    let old_bytes = u64::from(old_w) * u64::from(old_h) * 4;
                    let bytes = self.reserve(old_bytes, width, height)?;
                    let w = self.get_mut(name, window)?;
                    w.buffer = vec![0; bytes as usize];
                    width_height = (width, height);
                }
                let still_popup = self
                    .windows
                    .get(&window)
                    .is_some_and(|w| w.popup_parent.is_some());
                let (sx, sy) = self.place(
                    if still_popup { origin } else { (0, 0) },
                    x,
                    y,
                    width_height.0,
                    width_height.1,
                );
                let w = self.get_mut(name, window)?;
                w.width = width_height.0;
                w.height = width_height.1;
                w.x = sx;
                w.y = sy;
                Ok(Change::Configured(window))
            }
            AgentMsg::Map { window } => {
                let w = self.get_mut(name, window)?;
                if w.mapped {
                    return Ok(Change::Nothing);
                }
                w.mapped = true;
                Ok(Change::Mapped(window))
            }
            AgentMsg::Unmap { window } => {
                let w = self.get_mut(name, window)?;
                if !w.mapped {
                    return Ok(Change::Nothing);
                }
                w.mapped = false;
                Ok(Change::Unmapped(window))
            }
            AgentMsg::Destroy { window } => {
                let w = self
                    .windows
                    .remove(&window)
                    .ok_or(Violation::UnknownWindow { msg: name, window })?;
                self.buffer_bytes -= w.buffer.len() as u64;
                Ok(Change::Destroyed(window))
            }
            AgentMsg::Title { window, title } => {
                let mode = self.rules.title_mode;
                let w = self.get_mut(name, window)?;
                w.title = sanitize_title(&title, mode);
                Ok(Change::Title(window))
            }
            AgentMsg::AppId { window, app_id } => {
                let w = self.get_mut(name, window)?;
                w.app_id = sanitize_app_id(&app_id);
                Ok(Change::AppId(window))
            }
            AgentMsg::Damage {
                window,
                rect,
                format,
                pixels,
            } => {
                let w = self.get_mut(name, window)?;
                if !rect.fits_in(w.width, w.height) {
                    return Err(Violation::DamageOutside {
                        window,
                        rect,
                        width: w.width,
                        height: w.height,
                    });
                }
                blit(w, rect, format, &pixels);
                w.damage_count += 1;
                Ok(Change::Damaged(window, rect))
            }
            AgentMsg::Cursor { window, cursor } => {
                let w = self.get_mut(name, window)?;
                w.cursor = cursor;
                Ok(Change::Cursor(window))
            }
            AgentMsg::State { window, state } => {
                let w = self.get_mut(name, window)?;
                // Fullscreen is never granted: it becomes maximise (Qubes' allow_fullscreen=false).
                w.maximized =
                    state.has(WindowState::MAXIMIZED) || state.has(WindowState::FULLSCREEN);
                w.minimized = state.has(WindowState::MINIMIZED);
                Ok(Change::State(window))
            }
            AgentMsg::ClipboardData { data } => {
                if !std::mem::take(&mut self.clipboard_requested) {
                    tracing::warn!(
                        bytes = data.len(),
                        "clipboard data nobody asked for; ignored"
                    );
                    return Ok(Change::Nothing);
                }
                Ok(Change::Clipboard(data))
            }
        }
    }
}

/// Copies a checked rectangle into the window's buffer. `rect` lies inside the buffer and
/// `pixels` holds exactly `rect.width * rect.height * 4` bytes (the decoder checked it), so
/// the slicing below stays in bounds; `get` keeps it total anyway.
fn blit(w: &mut Window, rect: Rect, format: PixelFormat, pixels: &[u8]) {
    let row_len = rect.width as usize * 4;
    let stride = w.width as usize * 4;
    for (row, src) in pixels.chunks_exact(row_len).enumerate() {
        let start = (rect.y as usize + row) * stride + rect.x as usize * 4;
        let Some(dst) = w.buffer.get_mut(start..start + row_len) else {
            return;
        };
        dst.copy_from_slice(src);
        if format == PixelFormat::Xrgb8888 {
            for px in dst.chunks_exact_mut(4) {
                px[3] = 0xFF;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(rules: Rules) -> DomainWindows {
        let mut d = DomainWindows::new(rules);
        assert_eq!(
            d.apply(AgentMsg::Hello(Hello::OURS)),
            Ok(Change::Ready { version: 1 })
        );
        d
    }

    fn create(id: WindowId, x: i32, y: i32, w: u32, h: u32, parent: Option<u32>) -> AgentMsg {
        AgentMsg::Create {
            window: id,
            x,
            y,
            width: w,
            height: h,
            parent,
        }
    }

    #[test]
    fn hello_first_and_once() {
        let mut d = DomainWindows::new(Rules::default());
        assert_eq!(
            d.apply(AgentMsg::Map { window: 1 }),
            Err(Violation::NoHello("map"))
        );
        let mut d = DomainWindows::new(Rules::default());
        assert!(matches!(
            d.apply(AgentMsg::Hello(Hello {
                min_version: 7,
                max_version: 9
            })),
            Err(Violation::Protocol(GuiError::VersionMismatch { .. }))
        ));
        let mut d = ready(Rules::default());
        assert_eq!(
            d.apply(AgentMsg::Hello(Hello::OURS)),
            Err(Violation::SecondHello)
        );
    }

    #[test]
    fn unknown_windows_duplicates_and_reused_ids() {
        let mut d = ready(Rules::default());
        for m in [
            AgentMsg::Map { window: 3 },
            AgentMsg::Destroy { window: 3 },
            AgentMsg::Title {
                window: 3,
                title: Bytes::new(),
            },
        ] {
            assert!(matches!(
                ready(Rules::default()).apply(m),
                Err(Violation::UnknownWindow { window: 3, .. })
            ));
        }
        d.apply(create(5, 0, 0, 10, 10, None)).unwrap();
        assert_eq!(
            d.apply(create(5, 0, 0, 10, 10, None)),
            Err(Violation::DuplicateCreate(5))
        );
        d.apply(AgentMsg::Destroy { window: 5 }).unwrap();
        assert_eq!(
            d.apply(create(5, 0, 0, 10, 10, None)),
            Err(Violation::IdNotIncreasing { window: 5, last: 5 })
        );
    }

    #[test]
    fn geometry_kept_on_screen() {
        let mut d = ready(Rules::default());
        d.apply(create(1, -500, 5000, 800, 600, None)).unwrap();
        let w = d.window(1).unwrap();
        assert_eq!((w.x, w.y, w.width, w.height), (0, 1080 - 600, 800, 600));
        // Wider than the screen: starts at 0, buffer keeps the agent's size.
        d.apply(AgentMsg::Configure {
            window: 1,
            x: 100,
            y: 100,
            width: 4000,
            height: 100,
        })
        .unwrap();
        let w = d.window(1).unwrap();
        assert_eq!(
            (w.x, w.y, w.width, w.pixels().len()),
            (0, 100, 4000, 4000 * 100 * 4)
        );
    }

    #[test]
    fn popups_need_a_parent_stay_on_screen_and_are_refused_when_huge() {
        let mut d = ready(Rules::default());
        assert_eq!(
            d.apply(create(2, 0, 0, 10, 10, Some(1))),
            Err(Violation::UnknownParent {
                window: 2,
                parent: 1
            })
        );
        let mut d = ready(Rules::default());
        d.apply(create(1, 100, 200, 800, 600, None)).unwrap();
        d.apply(create(2, 10, 20, 100, 50, Some(1))).unwrap();
        let p = d.window(2).unwrap();
        assert_eq!((p.x, p.y, p.popup_parent), (110, 220, Some(1)));
        // Placed off the bottom right: pulled back on screen.
        d.apply(create(3, 5000, 5000, 100, 50, Some(1))).unwrap();
        let p = d.window(3).unwrap();
        assert_eq!((p.x, p.y), (1920 - 100, 1080 - 50));
        // Covering more than 90%: not a popup.
        d.apply(create(4, 0, 0, 1920, 1000, Some(1))).unwrap();
        assert_eq!(d.window(4).unwrap().popup_parent, None);
        // Exactly 90% is still allowed.
        d.apply(create(5, 0, 0, 1920, 972, Some(1))).unwrap();
        assert_eq!(d.window(5).unwrap().popup_parent, Some(1));
        // Growing past it later also ends its popup status.
        d.apply(AgentMsg::Configure {
            window: 5,
            x: 0,
            y: 0,
            width: 1920,
            height: 1080,
        })
        .unwrap();
        assert_eq!(d.window(5).unwrap().popup_parent, None);
    }

    #[test]
    fn fullscreen_becomes_maximise() {
        let mut d = ready(Rules::default());
        d.apply(create(1, 0, 0, 10, 10, None)).unwrap();
        d.apply(AgentMsg::State {
            window: 1,
            state: WindowState::from_bits(WindowState::FULLSCREEN).unwrap(),
        })
        .unwrap();
        assert!(d.window(1).unwrap().maximized);
        d.apply(AgentMsg::State {
            window: 1,
            state: WindowState::from_bits(0).unwrap(),
        })
        .unwrap();
        assert!(!d.window(1).unwrap().maximized);
    }

    #[test]
    fn window_and_memory_limits() {
        let mut d = ready(Rules {
            max_windows: 2,
            ..Rules::default()
        });
        d.apply(create(1, 0, 0, 10, 10, None)).unwrap();
        d.apply(create(2, 0, 0, 10, 10, None)).unwrap();
        assert_eq!(
            d.apply(create(3, 0, 0, 10, 10, None)),
            Err(Violation::TooManyWindows(2))
        );
        let mut d = ready(Rules {
            max_buffer_bytes: 1000 * 1000 * 4,
            ..Rules::default()
        });
        d.apply(create(1, 0, 0, 1000, 500, None)).unwrap();
        d.apply(create(2, 0, 0, 1000, 500, None)).unwrap();
        assert!(matches!(
            d.apply(create(3, 0, 0, 1, 1, None)),
            Err(Violation::BufferMemory { .. })
        ));
        let mut d = ready(Rules {
            max_buffer_bytes: 1000 * 1000 * 4,
            ..Rules::default()
        });
        d.apply(create(1, 0, 0, 1000, 500, None)).unwrap();
        d.apply(create(2, 0, 0, 1000, 500, None)).unwrap();
        d.apply(AgentMsg::Destroy { window: 2 }).unwrap();
        assert_eq!(d.buffer_bytes(), 2_000_000);
        d.apply(AgentMsg::Configure {
            window: 1,
            x: 0,
            y: 0,
            width: 1000,
            height: 1000,
        })
        .unwrap();
        assert!(matches!(
            d.apply(create(3, 0, 0, 1, 1, None)),
            Err(Violation::BufferMemory { .. })
        ));
    }

    #[test]
    fn damage_checked_against_the_buffer_and_applied() {
        let mut d = ready(Rules::default());
        d.apply(create(1, 0, 0, 4, 3, None)).unwrap();
        let px: Vec<u8> = (0..2 * 2 * 4).map(|i| i as u8).collect();
        d.apply(AgentMsg::Damage {
            window: 1,
            rect: Rect {
                x: 2,
                y: 1,
                width: 2,
                height: 2,
            },
            format: PixelFormat::Xrgb8888,
            pixels: Bytes::from(px),
        })
        .unwrap();
        let b = d.window(1).unwrap().pixels();
        // Row 1, pixel 2: first source pixel with alpha forced opaque.
        assert_eq!(
            &b[(4 + 2) * 4..(4 + 2) * 4 + 8],
            &[0, 1, 2, 255, 4, 5, 6, 255]
        );
        assert_eq!(&b[(8 + 2) * 4..(8 + 2) * 4 + 4], &[8, 9, 10, 255]);
        assert_eq!(&b[..16], &[0; 16]);
        for rect in [
            Rect {
                x: 3,
                y: 0,
                width: 2,
                height: 1,
            },
            Rect {
                x: 0,
                y: 3,
                width: 1,
                height: 1,
            },
            Rect {
                x: u32::MAX,
                y: 0,
                width: 2,
                height: 1,
            },
        ] {
            let n = rect.byte_len() as usize;
            assert!(matches!(
                d.apply(AgentMsg::Damage {
                    window: 1,
                    rect,
                    format: PixelFormat::Argb8888,
                    pixels: Bytes::from(vec![0; n]),
                }),
                Err(Violation::DamageOutside { .. })
            ));
        }
    }

    #[test]
    fn titles_sanitised_by_mode() {
        let mut d = ready(Rules::default());
        d.apply(create(1, 0, 0, 4, 3, None)).unwrap();
        d.apply(AgentMsg::Title {
            window: 1,
            title: Bytes::from_static("évil\u{202E}".as_bytes()),
        })
        .unwrap();
        assert_eq!(d.window(1).unwrap().title, "__vil___");
        let mut d = ready(Rules {
            title_mode: TitleMode::Utf8,
            ..Rules::default()
        });
        d.apply(create(1, 0, 0, 4, 3, None)).unwrap();
        d.apply(AgentMsg::Title {
            window: 1,
            title: Bytes::from_static("évil\u{202E}".as_bytes()),
        })
        .unwrap();
        assert_eq!(d.window(1).unwrap().title, "évil_");
    }

    #[test]
    fn flood_limit() {
        let mut d = DomainWindows::new(Rules {
            max_messages_per_sec: 10,
            message_burst: 20,
            ..Rules::default()
        });
        let t0 = Instant::now();
        d.apply_at(AgentMsg::Hello(Hello::OURS), t0).unwrap();
        d.apply_at(create(1, 0, 0, 4, 3, None), t0).unwrap();
        for _ in 0..18 {
            d.apply_at(AgentMsg::Map { window: 1 }, t0).unwrap();
        }
        assert!(matches!(
            d.apply_at(AgentMsg::Map { window: 1 }, t0),
            Err(Violation::Flood { .. })
        ));
        // One second later ten more are fine.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            d.apply_at(AgentMsg::Map { window: 1 }, t1).unwrap();
        }
        assert!(d.apply_at(AgentMsg::Map { window: 1 }, t1).is_err());
    }

    #[test]
    fn clipboard_only_when_requested() {
        let mut d = ready(Rules::default());
        let data = Bytes::from_static(b"secret");
        assert_eq!(
            d.apply(AgentMsg::ClipboardData { data: data.clone() }),
            Ok(Change::Nothing)
        );
        d.clipboard_requested();
        assert_eq!(
            d.apply(AgentMsg::ClipboardData { data: data.clone() }),
            Ok(Change::Clipboard(data.clone()))
        );
        assert_eq!(
            d.apply(AgentMsg::ClipboardData { data }),
            Ok(Change::Nothing)
        );
    }
}
