//! dom0-manager: the Bulkhead domain manager and policy editor (GTK 4.8 with relm4), a
//! client of domaind's D-Bus API ([`bulkhead_api`]).
//!
//! - [`ManagerWindow`] (init [`ManagerInit`], messages [`ManagerMsg`], output
//!   [`ManagerOutput`]): every domain with label colour, class, state, memory and CPU;
//!   lifecycle actions; create/clone forms validated as you type; settings; applications.
//! - [`PolicyEditor`] (init [`PolicyInit`], messages [`PolicyMsg`], output [`PolicyOutput`]):
//!   policy files with errors at file:line as you type; the simple view for common rules.
//! - `testing` (feature `testing`): a private Xvfb, screenshots and artefacts for tests that
//!   look at the screen (also used by dom0-ui).
#![forbid(unsafe_code)]

pub mod client;
pub mod forms;
pub mod policy;
pub mod simple_policy;
pub mod style;
pub mod widgets;
pub mod window;

pub use policy::{PolicyEditor, PolicyInit, PolicyMsg, PolicyOutput};
pub use window::{DomainAction, ManagerInit, ManagerMsg, ManagerOutput, ManagerTab, ManagerWindow};

#[cfg(feature = "testing")]
pub mod testing;
