//! # bulkhead-gui-host: the dom0 side of GUI forwarding
//!
//! Each domain's gui-agent speaks the protocol of [`bulkhead_wire::gui`] to dom0 over the
//! stream D-Bus `OpenGui(name)` returns. This crate holds what dom0 does with it:
//!
//! - [`conn`]: an async connection over that fd (or any byte stream): decodes agent
//!   messages with the checked incremental decoder, queues dom0 -> agent messages with a
//!   bounded queue, and [`conn::drive`] to apply everything to a window state.
//! - [`state`]: the window-state machine. Every rule of reference/qubes.md §3.5 / gui.md §6
//!   that applies here: hello first; unknown window, duplicate create, reused ids, unknown
//!   popup parent, too many windows, too much buffer memory, damage outside the buffer, a
//!   message flood and every decoder error (bad length, unknown type, out-of-range field)
//!   drop the peer ([`state::Violation`], logged with tracing, nothing else stops);
//!   positions kept on screen; popups placed relative to an existing parent, kept on screen,
//!   and refused as popups (shown as ordinary windows) when they would cover more than 90%
//!   of it; fullscreen turned into maximise; titles sanitised ([`sanitize`]: printable ASCII
//!   by default, optional UTF-8 without control, bidi or zero-width characters); clipboard
//!   data accepted only after dom0 asked. dom0 owns each window's ARGB buffer and copies a
//!   damage rectangle in only after checking that it lies inside.
//! - [`headless`]: a receiver for tests and the benchmark serving many domains at once: list
//!   windows, read pixels, send input, configure and close requests, clipboard.
//!
//! The binary `bulkhead-gui-receiver` wraps the headless receiver with a line protocol on
//! stdin/stdout (see `--help`).
#![forbid(unsafe_code)]

pub mod conn;
pub mod headless;
pub mod sanitize;
pub mod state;

pub use conn::{GuiConnection, HostSender};
pub use headless::{PeerStatus, Pixels, Receiver, WindowInfo};
pub use sanitize::TitleMode;
pub use state::{Change, DomainWindows, Rules, Violation, Window};
