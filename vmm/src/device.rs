//! The device interface of the buses: bulkhead-virtio's `MmioDevice` (contract A), which the
//! legacy devices here implement too.

pub use bulkhead_virtio::{DeviceContext, Interrupt, MmioDevice};
