//! One module per Wayland protocol: the smithay handler trait implemented by [`Agent`] and
//! the `delegate_*!` that routes the protocol's requests to it.
//!
//! [`Agent`]: super::Agent

mod compositor;
mod data_device;
mod output;
mod seat;
mod shm;
mod xdg_decoration;
mod xdg_shell;
