//! domaind: the Bulkhead controller daemon (library part).
//!
//! [`api`] is the D-Bus contract shared with clients.
pub mod api;
