//! A hostile driver: descriptors outside memory, loops, oversize lengths, wrong directions,
//! bad ring indices, bad registers. The device reports an error (status byte, used length 0
//! or DEVICE_NEEDS_RESET), keeps its invariants and keeps working after a reset.
//! Notifications are served inline so every check is deterministic.

mod common;

use std::io::Write;

use bulkhead_virtio::block::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use bulkhead_virtio::mmio::{reg, status};
use bulkhead_virtio::{Block, MmioDevice, Rng};
use common::{Driver, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

fn blk() -> (Driver, tempfile::NamedTempFile) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0x11u8; 16 * 512]).unwrap();
    let d = Driver::new(
        Box::new(Block::new(f.reopen().unwrap(), false).unwrap()),
        true,
    );
    (d, f)
}

fn header(d: &mut Driver, rtype: u32, sector: u64) -> u64 {
    let a = d.alloc(16, 16);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write(a, &h);
    a
}

/// A well-formed read must still work (the device kept its invariants).
fn assert_blk_works(d: &mut Driver) {
    let h = header(d, VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512, 512);
    let st = d.alloc(1, 1);
    d.write(st, &[0xff]);
    let head = d.submit(0, &[(h, 16, false), (data, 512, true), (st, 1, true)]);
    d.kick(0);
    let (id, len) = d.pop_used(0).expect("used element");
    assert_eq!((id, len), (u32::from(head), 513));
    assert_eq!(d.read(st, 1)[0], VIRTIO_BLK_S_OK);
    assert!(d.read(data, 512).iter().all(|&b| b == 0x11));
    assert!(!d.t.needs_reset());
}

#[test]
fn descriptors_outside_memory() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    let outside = MEM_SIZE as u64 + 0x1000;
    // Header outside memory: the request fails with IOERR in the status byte.
    let st = d.alloc(1, 1);
    d.write(st, &[0xff]);
    let data = d.alloc(512, 512);
    d.submit(0, &[(outside, 16, false), (data, 512, true), (st, 1, true)]);
    d.kick(0);
    let (_, len) = d.pop_used(0).unwrap();
    assert_eq!(len, 1);
    assert_eq!(d.read(st, 1)[0], VIRTIO_BLK_S_IOERR);
    // Data buffer straddling the end of memory: dropped, nothing written.
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    d.submit(
        0,
        &[
            (h, 16, false),
            (MEM_SIZE as u64 - 256, 512, true),
            (st, 1, true),
        ],
    );
    d.kick(0);
    assert_eq!(d.pop_used(0).unwrap().1, 0);
    // Address that overflows u64.
    d.submit(
        0,
        &[(h, 16, false), (u64::MAX - 8, 512, true), (st, 1, true)],
    );
    d.kick(0);
    assert_eq!(d.pop_used(0).unwrap().1, 0);
    assert_blk_works(&mut d);
}

#[test]
fn descriptor_loops_terminate() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let st = d.alloc(1, 1);
    // 0 -> 1 -> 0 -> ... forever.
    d.write_desc(0, 0, h, 16, VRING_DESC_F_NEXT, 1);
    d.write_desc(0, 1, st, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
    d.push_avail(0, 0);
    // A self loop.
    d.write_desc(0, 2, st, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    d.push_avail(0, 2);
    d.kick(0);
    assert!(d.pop_used(0).is_some());
    assert!(d.pop_used(0).is_some());
    d.queues[0].next_desc = 4;
    assert_blk_works(&mut d);
}

#[test]
fn oversize_lengths_and_wrong_directions() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let st = d.alloc(1, 1);
    d.write(st, &[0xff]);
    // A 4 GiB data buffer.
    d.submit(
        0,
        &[(h, 16, false), (0x10000, u32::MAX, true), (st, 1, true)],
    );
    d.kick(0);
    assert_eq!(d.pop_used(0).unwrap().1, 0);
    // Header writable, status readable: no status byte reachable with data, request refused.
    d.write(st, &[0xff]);
    d.submit(0, &[(h, 16, true), (st, 1, false)]);
    d.kick(0);
    let (_, len) = d.pop_used(0).unwrap();
    assert!(len <= 1);
    // Everything read-only: no status byte at all; dropped with used length 0.
    d.submit(0, &[(h, 16, false), (st, 1, false)]);
    d.kick(0);
    assert_eq!(d.pop_used(0).unwrap().1, 0);
    // Rng with a huge buffer inside memory gets at most its cap.
    let mut r = Driver::new(Box::new(Rng::new()), true);
    r.init(u64::MAX, 8);
    r.submit(0, &[(0x10_0000, 3 << 20, true)]);
    r.kick(0);
    let (_, len) = r.pop_used(0).unwrap();
    assert_eq!(len as usize, bulkhead_virtio::rng::MAX_PER_REQUEST);
    assert_blk_works(&mut d);
}

#[test]
fn bad_avail_index_needs_reset() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    // The driver claims 40 new buffers in a 16-entry queue.
    d.set_avail_idx(0, 40);
    d.kick(0);
    assert!(d.t.needs_reset());
    assert_ne!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.r32(reg::INTERRUPT_STATUS) & 2, 0, "config interrupt");
    assert_eq!(d.used_idx(0), 0);
    // Reset and re-init: works again.
    d.init(u64::MAX, 16);
    assert!(!d.t.needs_reset());
    assert_blk_works(&mut d);
}

#[test]
fn head_index_out_of_range_needs_reset() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    d.push_avail(0, 1000);
    d.kick(0);
    assert!(d.t.needs_reset());
    assert_eq!(d.used_idx(0), 0);
}

#[test]
fn rings_outside_memory_refuse_activation() {
    let (mut d, _f) = blk();
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::DRIVER_FEATURES_SEL, 1);
    d.w32(reg::DRIVER_FEATURES, 1);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    d.w32(reg::QUEUE_SEL, 0);
    d.w32(reg::QUEUE_NUM, 16);
    d.w32(reg::QUEUE_DESC_LOW, 0xffff_f000);
    d.w32(reg::QUEUE_DESC_HIGH, 0x7);
    d.w32(reg::QUEUE_DRIVER_LOW, 0x2000);
    d.w32(reg::QUEUE_DEVICE_LOW, 0x3000);
    d.w32(reg::QUEUE_READY, 1);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(!d.t.is_activated());
    assert!(d.t.needs_reset());
}

#[test]
fn register_abuse_is_harmless() {
    let (mut d, _f) = blk();
    // Queue size that is not a power of two or larger than the maximum: ignored.
    d.w32(reg::QUEUE_SEL, 0);
    d.w32(reg::QUEUE_NUM, 3);
    d.w32(reg::QUEUE_NUM, 70000);
    // QueueSel out of range.
    d.w32(reg::QUEUE_SEL, 99);
    assert_eq!(d.r32(reg::QUEUE_NUM_MAX), 0);
    d.w32(reg::QUEUE_READY, 1);
    d.w32(reg::QUEUE_NOTIFY, 99);
    d.w32(reg::QUEUE_NOTIFY, 0);
    // Odd sizes and offsets.
    let mut b = [0u8; 2];
    d.t.read(0x2, &mut b);
    d.t.write(0x71, &[1]);
    let mut b8 = [0u8; 8];
    d.t.read(0xff8, &mut b8);
    d.t.read(u64::MAX - 3, &mut [0u8; 4]);
    d.t.write(u64::MAX - 3, &[0u8; 4]);
    d.t.write(0x100 + 5000, &[1, 2, 3, 4]);
    // DRIVER_OK without FEATURES_OK.
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(!d.t.is_activated());
    d.w32(reg::STATUS, 0);
    assert!(!d.t.needs_reset());
    d.init(u64::MAX, 16);
    assert_blk_works(&mut d);
}

#[test]
fn indirect_descriptors_valid_nested_and_misaligned() {
    let (mut d, _f) = blk();
    d.init(u64::MAX, 16);
    let h = header(&mut d, VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512, 512);
    let st = d.alloc(1, 1);
    let table = d.alloc(16 * 4, 16);
    let put = |d: &mut Driver, t: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        d.write(t + 16 * i, &addr.to_le_bytes());
        d.write(t + 16 * i + 8, &len.to_le_bytes());
        d.write(t + 16 * i + 12, &flags.to_le_bytes());
        d.write(t + 16 * i + 14, &next.to_le_bytes());
    };
    // A valid indirect request (what Linux sends when INDIRECT_DESC is negotiated).
    put(&mut d, table, 0, h, 16, VRING_DESC_F_NEXT, 1);
    put(
        &mut d,
        table,
        1,
        data,
        512,
        VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
        2,
    );
    put(&mut d, table, 2, st, 1, VRING_DESC_F_WRITE, 0);
    d.write(st, &[0xff]);
    d.write_desc(0, 0, table, 48, common::VRING_DESC_F_INDIRECT, 0);
    d.push_avail(0, 0);
    d.kick(0);
    assert_eq!(d.pop_used(0).unwrap(), (0, 513));
    assert_eq!(d.read(st, 1)[0], VIRTIO_BLK_S_OK);
    assert!(d.read(data, 512).iter().all(|&b| b == 0x11));

    // An indirect table pointing to another indirect table: refused, nothing written.
    put(
        &mut d,
        table,
        0,
        table,
        48,
        common::VRING_DESC_F_INDIRECT,
        0,
    );
    d.write(st, &[0xff]);
    d.write_desc(0, 1, table, 48, common::VRING_DESC_F_INDIRECT, 0);
    d.push_avail(0, 1);
    // A table length that is not a multiple of 16, and one outside memory.
    d.write_desc(0, 2, table, 47, common::VRING_DESC_F_INDIRECT, 0);
    d.push_avail(0, 2);
    d.write_desc(0, 3, MEM_SIZE as u64, 48, common::VRING_DESC_F_INDIRECT, 0);
    d.push_avail(0, 3);
    d.kick(0);
    for head in 1..4 {
        assert_eq!(d.pop_used(0).unwrap(), (head, 0));
    }
    assert_eq!(d.read(st, 1)[0], 0xff);
    d.queues[0].next_desc = 4;
    assert_blk_works(&mut d);
}
