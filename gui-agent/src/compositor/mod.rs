//! The headless compositor, laid out like smithay's smallvil example:
//!
//! - `state`: the compositor state (`Agent`), its setup and window bookkeeping;
//! - `handlers`: one file per Wayland protocol smithay delegates to us (compositor, shm,
//!   xdg_shell, xdg_decoration, seat, data_device, output);
//! - `input`: what dom0 sends, applied to the seat and the windows (keys, pointer, focus,
//!   configure and close requests, clipboard);
//! - `capture`: copying committed wl_shm buffers and encoding the damage for dom0.

mod capture;
mod handlers;
mod input;
mod state;

pub use capture::CaptureError;
pub use state::{Agent, ClientState, Options};
