//! A small virtio driver for tests: it writes descriptor tables and rings into a real
//! GuestMemoryMmap and talks to the device through its MMIO registers, as a guest does.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_virtio::mmio::{reg, status};
use bulkhead_virtio::{
    DeviceContext, GuestMemory, Interrupt, MmioDevice, MmioTransport, VirtioDevice,
};
use vm_memory::{Bytes, GuestAddress};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

pub const MEM_SIZE: usize = 4 << 20;

#[derive(Default)]
pub struct CountingIrq(pub AtomicUsize);

impl Interrupt for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub struct DrvQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub next_desc: u16,
    pub avail_idx: u16,
    pub used_seen: u16,
}

pub struct Driver {
    pub t: MmioTransport,
    pub mem: GuestMemory,
    pub irq: Arc<CountingIrq>,
    pub queues: Vec<DrvQueue>,
    next_free: u64,
}

pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

impl Driver {
    /// A transport around `dev`; `inline` serves notifications on the test's thread.
    pub fn new(dev: Box<dyn VirtioDevice>, inline: bool) -> Self {
        let mem = guest_memory();
        let irq = Arc::new(CountingIrq::default());
        let ctx = DeviceContext {
            mem: mem.clone(),
            irq: irq.clone(),
            thread_filter: None,
        };
        let t = if inline {
            MmioTransport::new_inline(dev, ctx)
        } else {
            MmioTransport::new(dev, ctx)
        }
        .expect("transport");
        Driver {
            t,
            mem,
            irq,
            queues: Vec::new(),
            next_free: 0x1000,
        }
    }

    pub fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn w32(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    pub fn config(&mut self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.t.read(reg::CONFIG + off, &mut b);
        b
    }

    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.next_free.div_ceil(align) * align;
        self.next_free = a + len;
        assert!(
            self.next_free <= MEM_SIZE as u64,
            "test driver ran out of guest memory"
        );
        a
    }

    pub fn device_features(&mut self) -> u64 {
        self.w32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r32(reg::DEVICE_FEATURES);
        self.w32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.r32(reg::DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Negotiates `dev_features & want`, sets up every queue with `qsize` entries and sets
    /// DRIVER_OK. Returns the negotiated features.
    pub fn init(&mut self, want: u64, qsize: u16) -> u64 {
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let f = self.device_features() & want;
        self.w32(reg::DRIVER_FEATURES_SEL, 0);
        self.w32(reg::DRIVER_FEATURES, f as u32);
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, (f >> 32) as u32);
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(
            self.r32(reg::STATUS) & status::FEATURES_OK,
            0,
            "FEATURES_OK refused"
        );
        self.queues.clear();
        for i in 0..8u32 {
            self.w32(reg::QUEUE_SEL, i);
            let max = self.r32(reg::QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = qsize.min(max as u16);
            let desc = self.alloc(16 * u64::from(size), 16);
            let avail = self.alloc(6 + 2 * u64::from(size), 2);
            let used = self.alloc(6 + 8 * u64::from(size), 4);
            self.w32(reg::QUEUE_NUM, u32::from(size));
            self.w32(reg::QUEUE_DESC_LOW, desc as u32);
            self.w32(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.w32(reg::QUEUE_DRIVER_LOW, avail as u32);
            self.w32(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            self.w32(reg::QUEUE_DEVICE_LOW, used as u32);
            self.w32(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            self.w32(reg::QUEUE_READY, 1);
            self.queues.push(DrvQueue {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            });
        }
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        f
    }

    pub fn write_desc(&mut self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = self.queues[q].desc + 16 * u64::from(idx);
        self.mem
            .write_obj(addr.to_le(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_obj(len.to_le(), GuestAddress(base + 8))
            .unwrap();
        self.mem
            .write_obj(flags.to_le(), GuestAddress(base + 12))
            .unwrap();
        self.mem
            .write_obj(next.to_le(), GuestAddress(base + 14))
            .unwrap();
    }

    /// Puts `head` in the next avail slot and publishes it.
    pub fn push_avail(&mut self, q: usize, head: u16) {
        let dq = &self.queues[q];
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        let idx = dq.avail_idx.wrapping_add(1);
        let avail = dq.avail;
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .unwrap();
        self.mem
            .write_obj(idx.to_le(), GuestAddress(avail + 2))
            .unwrap();
        self.queues[q].avail_idx = idx;
    }

    /// Sets the avail idx field to an arbitrary value (hostile tests).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        let avail = self.queues[q].avail;
        self.mem
            .write_obj(idx.to_le(), GuestAddress(avail + 2))
            .unwrap();
        self.queues[q].avail_idx = idx;
    }

    /// Builds a chain of `bufs` (addr, len, device-writable) and makes it available; returns the head.
    pub fn submit(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let head = self.queues[q].next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(q, idx, addr, len, flags, (idx + 1) % size);
        }
        self.queues[q].next_desc = (head + bufs.len() as u16) % size;
        self.push_avail(q, head);
        head
    }

    pub fn kick(&mut self, q: usize) {
        self.w32(reg::QUEUE_NOTIFY, q as u32);
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        u16::from_le(
            self.mem
                .read_obj(GuestAddress(self.queues[q].used + 2))
                .unwrap(),
        )
    }

    /// The next used element (id, len), if the device returned one.
    pub fn pop_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let dq = &self.queues[q];
        if self.used_idx(q) == dq.used_seen {
            return None;
        }
        let e = dq.used + 4 + 8 * u64::from(dq.used_seen % dq.size);
        let id = u32::from_le(self.mem.read_obj(GuestAddress(e)).unwrap());
        let len = u32::from_le(self.mem.read_obj(GuestAddress(e + 4)).unwrap());
        self.queues[q].used_seen = self.queues[q].used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// Waits (up to 20 s, generous for a loaded machine) for the next used element.
    pub fn wait_used(&mut self, q: usize) -> (u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.t.poll_backends();
            if let Some(u) = self.pop_used(q) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "device did not return a buffer on queue {q}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// Polls `f` until it returns Some (20 s limit).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
