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

/// Logging to stderr for the binaries: `BULKHEAD_LOG` (tracing env-filter syntax), default
/// `warn` (a service's stderr reaches the caller's terminal).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
