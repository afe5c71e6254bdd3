//! Services inside domains and the user commands that call them (issue 4, contract C).
//!
//! - [`filecopy`]: `bulkhead-copy[-to-vm]`, `bulkhead-move[-to-vm]` and the receiver
//!   `bulkhead.Filecopy` (stream format documented there).
//! - [`open`]: `bulkhead-open-in-vm`, `bulkhead-open-in-dvm` and `bulkhead.OpenInVM`.
//! - [`url`]: `bulkhead-open-url` and `bulkhead.OpenURL` (http/https only).
//! - [`xdg`]: the domain's default application for a MIME type or URL scheme.
//! - [`call`]: running `bulkhead-call` and mapping its exit status (126 refused, 125 failed).
//! - [`names`]: rules for names that cross a domain boundary.
//!
//! Services read the caller's name from `BULKHEAD_REMOTE_DOMAIN` (set by domaind, never by
//! the caller) and ignore their argv.
#![forbid(unsafe_code)]

pub mod call;
pub mod client;
pub mod config;
pub mod filecopy;
pub mod names;
pub mod open;
pub mod url;
pub mod xdg;

/// Logging to stderr for the binaries ([`bulkhead_logging`]: filter from `BULKHEAD_LOG`),
/// default `warn` (a service's stderr reaches the caller's terminal), lines without targets.
pub fn init_logging() {
    bulkhead_logging::Setup::new("warn").targets(false).init();
}
