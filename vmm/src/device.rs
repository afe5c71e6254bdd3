//! The device interface of the buses.
//!
//! Stand-in with exactly the signature of `bulkhead_virtio::MmioDevice` (contract A) until that
//! crate is in main; then this becomes a re-export.

/// A device on the MMIO (or port I/O) bus. `offset` is relative to the device's base;
/// `data.len()` is 1, 2, 4 or 8.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}
