//! The port I/O and MMIO buses the vCPU threads dispatch guest accesses on.
//!
//! A bus is built before the vCPUs start and is immutable afterwards, so dispatch takes no bus
//! lock, only the addressed device's mutex. An access that hits no device, straddles a device's
//! end or has an odd size reads as all-ones and is otherwise ignored; it is counted, logged
//! through a rate limit (bulkhead-virtio's `debug_limited!`: the first few, then one line per
//! interval with the number suppressed) and never stops the VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::device::MmioDevice;

/// A device shared between the bus and whoever built it.
pub type SharedDevice = Arc<Mutex<dyn MmioDevice>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("{bus} bus: device range {base:#x}+{len:#x} overlaps an existing device or wraps")]
    Overlap {
        bus: &'static str,
        base: u64,
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    dev: SharedDevice,
}

/// One address space (port I/O or MMIO).
pub struct Bus {
    name: &'static str,
    entries: Vec<Entry>,
    unknown: AtomicU64,
}

/// Locks a device, recovering from a poisoned mutex: a device that panicked keeps its state and
/// the VM goes on (the panic itself was already reported).
pub fn lock(dev: &SharedDevice) -> MutexGuard<'_, dyn MmioDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            entries: Vec::new(),
            unknown: AtomicU64::new(0),
        }
    }

    /// Adds a device at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let err = BusError::Overlap {
            bus: self.name,
            base,
            len,
        };
        let end = match base.checked_add(len) {
            Some(e) if len > 0 => e,
            _ => return Err(err),
        };
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(err);
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, dev });
        Ok(())
    }

    /// The device and offset for an access of `size` bytes at `addr`, if one device holds all of it.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[idx];
        let off = addr - e.base;
        (off.checked_add(size as u64)? <= e.len).then_some((e, off))
    }

    /// Dispatches a guest read. Returns false (and fills all-ones) when no device answered.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                self.note_unknown("read", addr, data.len());
                false
            }
        }
    }

    /// Dispatches a guest write. Returns false when no device took it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.dev).write(off, data);
                true
            }
            None => {
                self.note_unknown("write", addr, data.len());
                false
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unknown_accesses(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    fn note_unknown(&self, op: &str, addr: u64, size: usize) {
        let n = self.unknown.fetch_add(1, Ordering::Relaxed);
        bulkhead_virtio::debug_limited!(
            bus = self.name,
            op,
            addr = format_args!("{addr:#x}"),
            size,
            count = n + 1,
            "guest access to no device"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl MmioDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range_and_offset() {
        let mut bus = Bus::new("test");
        let a = Arc::new(Mutex::new(Reg::default()));
        let b = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x2000, 0x10, b.clone()).unwrap();
        let mut d = [0u8; 4];
        assert!(bus.read(0x1004, &mut d));
        assert_eq!(d, [4; 4]);
        assert!(bus.write(0x200c, &[1, 2, 3, 4]));
        assert_eq!(b.lock().unwrap().last, vec![(0xc, vec![1, 2, 3, 4])]);
        // Straddling the end, a hole, odd sizes: all-ones and no dispatch.
        assert!(!bus.read(0x200e, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.read(0x1800, &mut d));
        let mut odd = [0u8; 3];
        assert!(!bus.read(0x1000, &mut odd));
        assert!(!bus.write(0x1000, &[]));
        assert!(!bus.read(u64::MAX, &mut d));
        assert_eq!(bus.unknown_accesses(), 5);
        assert!(a.lock().unwrap().last.is_empty());
    }

    #[test]
    fn a_flood_of_unknown_accesses_logs_a_bounded_number_of_lines() {
        let bus = Bus::new("test");
        let counter = Arc::new(bulkhead_virtio::ratelimit::EventCounter::default());
        tracing::subscriber::with_default(counter.clone(), || {
            let mut d = [0u8; 4];
            for i in 0..100_000u64 {
                bus.read(i * 4, &mut d);
            }
        });
        assert_eq!(bus.unknown_accesses(), 100_000);
        // Far less than LOG_INTERVAL passed: the burst only.
        assert_eq!(
            counter.count("guest access to no device"),
            bulkhead_virtio::ratelimit::LOG_BURST as usize
        );
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new("test");
        let d = || Arc::new(Mutex::new(Reg::default())) as SharedDevice;
        bus.insert(0x10, 0x10, d()).unwrap();
        assert!(bus.insert(0x18, 0x10, d()).is_err());
        assert!(bus.insert(0x8, 0x9, d()).is_err());
        assert!(bus.insert(u64::MAX, 2, d()).is_err());
        assert!(bus.insert(0x40, 0, d()).is_err());
        bus.insert(0x20, 0x10, d()).unwrap();
        bus.insert(0x0, 0x10, d()).unwrap();
    }
}
