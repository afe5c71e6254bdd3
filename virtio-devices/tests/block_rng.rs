//! virtio-blk and virtio-rng driven through the MMIO transport on real guest memory, with the
//! device's worker thread running as in the VMM.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use bulkhead_virtio::block::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use bulkhead_virtio::mmio::{reg, status, MMIO_MAGIC};
use bulkhead_virtio::{device_type, features, Block, Rng};
use common::Driver;

const SECTORS: u64 = 64;

fn disk() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let mut data = vec![0u8; (SECTORS * 512) as usize];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / 512) as u8 ^ 0x5a;
    }
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    f
}

fn blk_driver(ro: bool) -> (Driver, tempfile::NamedTempFile) {
    let f = disk();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!ro)
        .open(f.path())
        .unwrap();
    let mut d = Driver::new(Box::new(Block::new(file, ro).unwrap()), false);
    d.init(u64::MAX, 16);
    (d, f)
}

/// One request: header, optional data, status. Returns (used len, status, data read).
fn blk_req(
    d: &mut Driver,
    rtype: u32,
    sector: u64,
    data: Option<(&[u8], bool)>,
    inlen: u32,
) -> (u32, u8, Vec<u8>) {
    let hdr = d.alloc(16, 16);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.write(hdr, &h);
    let st = d.alloc(1, 1);
    d.write(st, &[0xff]);
    let mut bufs = vec![(hdr, 16u32, false)];
    let mut data_addr = 0;
    if let Some((bytes, _)) = data {
        data_addr = d.alloc(bytes.len() as u64, 512);
        d.write(data_addr, bytes);
        bufs.push((data_addr, bytes.len() as u32, false));
    } else if inlen > 0 {
        data_addr = d.alloc(u64::from(inlen), 512);
        bufs.push((data_addr, inlen, true));
    }
    bufs.push((st, 1, true));
    let head = d.submit(0, &bufs);
    d.kick(0);
    let (id, len) = d.wait_used(0);
    assert_eq!(id, u32::from(head));
    let s = d.read(st, 1)[0];
    let out = if inlen > 0 {
        d.read(data_addr, inlen as usize)
    } else {
        Vec::new()
    };
    (len, s, out)
}

#[test]
fn mmio_identity_and_features() {
    let (mut d, _f) = blk_driver(true);
    assert_eq!(d.r32(reg::MAGIC), MMIO_MAGIC);
    assert_eq!(d.r32(reg::VERSION), 2);
    assert_eq!(d.r32(reg::DEVICE_ID), device_type::BLOCK);
    let f = d.device_features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_ne!(f & VIRTIO_BLK_F_RO, 0);
    assert_ne!(f & VIRTIO_BLK_F_FLUSH, 0);
    let cap = u64::from_le_bytes(d.config(0, 8).try_into().unwrap());
    assert_eq!(cap, SECTORS);
    assert_ne!(d.r32(reg::STATUS) & status::DRIVER_OK, 0);
    assert!(d.t.is_activated());
}

#[test]
fn features_without_version_1_are_refused() {
    let f = disk();
    let mut d = Driver::new(
        Box::new(Block::new(f.reopen().unwrap(), false).unwrap()),
        false,
    );
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::DRIVER_FEATURES_SEL, 0);
    d.w32(reg::DRIVER_FEATURES, 0);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.r32(reg::STATUS) & status::FEATURES_OK, 0);
    // Features the device does not offer are refused as well.
    d.w32(reg::STATUS, 0);
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::DRIVER_FEATURES_SEL, 1);
    d.w32(reg::DRIVER_FEATURES, 1 | 2);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.r32(reg::STATUS) & status::FEATURES_OK, 0);
}

#[test]
fn blk_read_write_checked_on_host_file() {
    let (mut d, f) = blk_driver(false);
    // Read sectors 3..5 and compare with the file's pattern.
    let (len, s, data) = blk_req(&mut d, VIRTIO_BLK_T_IN, 3, None, 1024);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(len, 1025);
    assert!(data[..512].iter().all(|&b| b == 3 ^ 0x5a));
    assert!(data[512..].iter().all(|&b| b == 4 ^ 0x5a));
    // Write sector 10 and 11 and check the host file.
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 1) as u8).collect();
    let (len, s, _) = blk_req(&mut d, VIRTIO_BLK_T_OUT, 10, Some((&payload, false)), 0);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(len, 1);
    let mut host = f.reopen().unwrap();
    host.seek(SeekFrom::Start(10 * 512)).unwrap();
    let mut back = vec![0u8; 1024];
    host.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
    // Neighbours untouched.
    let mut nb = [0u8; 512];
    host.seek(SeekFrom::Start(12 * 512)).unwrap();
    host.read_exact(&mut nb).unwrap();
    assert!(nb.iter().all(|&b| b == 12 ^ 0x5a));
    // Flush.
    let (_, s, _) = blk_req(&mut d, VIRTIO_BLK_T_FLUSH, 0, None, 0);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    // Read back through the device.
    let (_, s, data) = blk_req(&mut d, VIRTIO_BLK_T_IN, 10, None, 1024);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(data, payload);
    assert!(d.irq.0.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn blk_read_only_refuses_writes() {
    let (mut d, f) = blk_driver(true);
    let payload = vec![0xeeu8; 512];
    let (len, s, _) = blk_req(&mut d, VIRTIO_BLK_T_OUT, 1, Some((&payload, false)), 0);
    assert_eq!(s, VIRTIO_BLK_S_IOERR);
    assert_eq!(len, 1);
    let mut host = f.reopen().unwrap();
    host.seek(SeekFrom::Start(512)).unwrap();
    let mut back = vec![0u8; 512];
    host.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 1 ^ 0x5a));
    // Reads still work.
    let (_, s, data) = blk_req(&mut d, VIRTIO_BLK_T_IN, 1, None, 512);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(data, back);
}

#[test]
fn blk_out_of_range_unsupported_and_get_id() {
    let (mut d, _f) = blk_driver(false);
    let (_, s, _) = blk_req(&mut d, VIRTIO_BLK_T_IN, SECTORS - 1, None, 1024);
    assert_eq!(s, VIRTIO_BLK_S_IOERR, "read past the end");
    let (_, s, _) = blk_req(&mut d, VIRTIO_BLK_T_IN, u64::MAX / 2, None, 512);
    assert_eq!(s, VIRTIO_BLK_S_IOERR, "sector overflow");
    let (_, s, _) = blk_req(&mut d, VIRTIO_BLK_T_IN, 0, None, 100);
    assert_eq!(s, VIRTIO_BLK_S_IOERR, "partial sector");
    let (_, s, _) = blk_req(&mut d, 99, 0, None, 0);
    assert_eq!(s, VIRTIO_BLK_S_UNSUPP);
    let (len, s, id) = blk_req(&mut d, VIRTIO_BLK_T_GET_ID, 0, None, 20);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert_eq!(len, 21);
    assert!(id.starts_with(b"bulkhead-"));
    assert!(!d.t.needs_reset());
}

#[test]
fn rng_fills_buffers() {
    let mut d = Driver::new(Box::new(Rng::new()), false);
    assert_eq!(d.r32(reg::DEVICE_ID), device_type::RNG);
    d.init(u64::MAX, 8);
    let a = d.alloc(256, 8);
    let b = d.alloc(256, 8);
    d.write(a, &[0u8; 256]);
    d.write(b, &[0u8; 256]);
    let h1 = d.submit(0, &[(a, 256, true)]);
    let h2 = d.submit(0, &[(b, 200, true)]);
    d.kick(0);
    let (id, len) = d.wait_used(0);
    assert_eq!((id, len), (u32::from(h1), 256));
    let (id, len) = d.wait_used(0);
    assert_eq!((id, len), (u32::from(h2), 200));
    let x = d.read(a, 256);
    let y = d.read(b, 256);
    assert!(x.iter().filter(|&&v| v == 0).count() < 32, "not random");
    assert_ne!(x[..200], y[..200]);
    assert!(y[200..].iter().all(|&v| v == 0), "wrote past the buffer");
    // A read-only buffer gets nothing.
    let c = d.alloc(64, 8);
    d.write(c, &[0u8; 64]);
    d.submit(0, &[(c, 64, false)]);
    d.kick(0);
    assert_eq!(d.wait_used(0).1, 0);
    assert!(d.read(c, 64).iter().all(|&v| v == 0));
}

#[test]
fn reset_stops_the_worker_and_device_works_again() {
    let (mut d, _f) = blk_driver(false);
    let (_, s, _) = blk_req(&mut d, VIRTIO_BLK_T_IN, 0, None, 512);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    d.w32(reg::STATUS, 0);
    assert!(!d.t.is_activated());
    assert_eq!(d.r32(reg::STATUS), 0);
    d.init(u64::MAX, 8);
    let (_, s, data) = blk_req(&mut d, VIRTIO_BLK_T_IN, 2, None, 512);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    assert!(data.iter().all(|&b| b == 2 ^ 0x5a));
}
