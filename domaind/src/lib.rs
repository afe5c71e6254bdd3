//! domaind: the Bulkhead controller daemon.
//!
//! - The D-Bus contract it serves is the `bulkhead-api` crate ([`bulkhead_api`]: the proxy
//!   clients use, [`bulkhead_api::DomainInfo`], [`bulkhead_api::Error`]); clients depend on
//!   it, not on domaind.
//! - [`daemon`]: running the daemon (bus connection, recovery, signals; stopping domaind
//!   leaves domains running, see there).
//! - [`manager`]: domain lifecycle and state; [`state`]: the state machine.
//! - [`backend`]: the record of a running domain, sandbox or VM, and what the lifecycle does
//!   with it; [`vm`]: the VM backend (the confined `bulkhead-vmm` process).
//! - [`service`]: the D-Bus object; [`access`]: who may call it.
//! - [`calls`]: inter-domain calls (policy, ask agent, relaying a caller to a service).
//! - [`instance`]: the recovery record; [`stdio`]: caller fds as async streams;
//!   [`fsutil`]: volume copies and log tails; [`tmpl`]: template store adapter;
//!   [`slots`]: host-wide uid slot claims; [`usb`]: the usb domain's devices and attaches.
//!
//! The test harness (private dbus-daemon + the real domaind) is the `bulkhead-testkit` crate.

pub mod access;
pub mod backend;
pub mod calls;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod instance;
pub mod manager;
pub mod service;
pub mod slots;
pub mod state;
pub mod stdio;
pub mod tmpl;
pub mod usb;
pub mod vm;
// The private volume image is the domain model's (the storage bench uses it too).
pub use bulkhead_domain::volume;
