//! # dom0-ui: Bulkhead's desktop session in dom0
//!
//! - Guest windows ([`ui`], [`view`]): for every running domain (domaind's `List` and
//!   `StateChanged`) dom0-ui opens the GUI stream (`OpenGui`) and drives bulkhead-gui-host's
//!   window-state machine ([`backend`]); every guest toplevel becomes a GTK window with a
//!   title strip and a frame in the domain's label colour (from dom0's config) and the title
//!   `[domain] title` (sanitised by gui-host); popups become popovers with their own frame.
//!   Keyboard, pointer, scroll and focus go to the owning domain only; resizing is forwarded;
//!   a new guest window never takes the keyboard from another domain's window or dom0's (it
//!   maps without focus, with an urgency hint and a notice), only from its own domain's;
//!   closing asks the guest. Damage re-uploads only the touched 128 px tiles ([`tiles`]).
//! - The secure clipboard ([`clipboard`]): Ctrl-Shift-C takes the focused domain's clipboard
//!   into dom0 (size-capped), Ctrl-Shift-V pastes it into the focused domain if domaind's
//!   `EvaluatePaste` allows, then clears it. Neither chord reaches a guest.
//! - The ask agent ([`ask`]) and notices ([`notify`]) of denied calls (signal `CallDenied`)
//!   and clipboard events.
//! - "Open in disposable" for dom0 files ([`open_dvm`]).
//! - dom0's keyboard layout ([`keymap`]): sent to every domain at connect and when it changes.
//! - A small panel ([`panel`]) that opens dom0-manager's domain manager and policy editor.
#![forbid(unsafe_code)]

pub mod ask;
pub mod backend;
pub mod clipboard;
pub mod keymap;
pub mod notify;
pub mod open_dvm;
pub mod panel;
pub mod placement;
pub mod tiles;
pub mod ui;
pub mod view;
pub mod x11;
