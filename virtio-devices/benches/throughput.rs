//! Device throughput next to a peer measured in the same run: virtio-blk reads through the
//! transport (driver-style, inline) vs pread(2) of the same file, and vsock guest->host bytes
//! through the device vs a plain unix socket write. Prints figures and ratios.
//! Run: cargo bench -p bulkhead-virtio

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use bulkhead_virtio::vsock::{
    Header, BUF_ALLOC, HDR_LEN, HOST_CID, OP_REQUEST, OP_RW, TYPE_STREAM,
};
use bulkhead_virtio::{Block, Vsock};
use common::Driver;

const DISK: usize = 16 << 20;
const REQ: u32 = 64 * 1024;
const ROUNDS: usize = 8;

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn blk() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().write_all_at(&vec![0x3cu8; DISK], 0).unwrap();
    let mut d = Driver::new(
        Box::new(Block::new(f.reopen().unwrap(), true).unwrap()),
        true,
    );
    d.init(u64::MAX, 16);
    let hdr = d.alloc(16, 16);
    let data = d.alloc(u64::from(REQ), 4096);
    let st = d.alloc(1, 1);
    let total = DISK * ROUNDS;
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for off in (0..DISK).step_by(REQ as usize) {
            let mut h = [0u8; 16];
            h[8..16].copy_from_slice(&((off / 512) as u64).to_le_bytes());
            d.write(hdr, &h);
            d.submit(0, &[(hdr, 16, false), (data, REQ, true), (st, 1, true)]);
            d.kick(0);
            d.pop_used(0).expect("completed inline");
        }
    }
    let dev = t.elapsed().as_secs_f64();
    let file = f.reopen().unwrap();
    let mut buf = vec![0u8; REQ as usize];
    let t = Instant::now();
    for _ in 0..ROUNDS {
        for off in (0..DISK).step_by(REQ as usize) {
            file.read_exact_at(&mut buf, off as u64).unwrap();
        }
    }
    let direct = t.elapsed().as_secs_f64();
    println!(
        "virtio-blk read, 64 KiB requests: device {:.0} MB/s, pread {:.0} MB/s, ratio {:.2}",
        mbps(total, dev),
        mbps(total, direct),
        dev / direct
    );
}

fn vsock() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut d = Driver::new(Box::new(Vsock::new(3, uds.clone()).unwrap()), true);
    d.init(u64::MAX, 64);
    let listener = UnixListener::bind(dir.path().join("v.sock_1024")).unwrap();
    let total: usize = 256 << 20;
    let drain = |mut s: UnixStream| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0usize;
            while n < total {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            n
        })
    };
    let hdr = |op: u16, len: u32, fwd: u32| Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 9,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: fwd,
    };
    let pkt = d.alloc(HDR_LEN as u64 + 65536, 8);
    let rx = d.alloc(4096, 8);
    d.submit(0, &[(rx, 4096, true)]);
    d.kick(0);
    d.write(pkt, &hdr(OP_REQUEST, 0, 0).to_bytes());
    d.submit(1, &[(pkt, HDR_LEN as u32, false)]);
    d.kick(1);
    d.pop_used(1).unwrap();
    let (host, _) = listener.accept().unwrap();
    let reader = drain(host);
    d.write(pkt, &hdr(OP_RW, 65536, 0).to_bytes());
    let t = Instant::now();
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    while sent < total {
        // Respect the device's credit: BUF_ALLOC minus what it has not forwarded yet.
        loop {
            while let Some((_, len)) = d.pop_used(0) {
                if len as usize >= HDR_LEN {
                    let raw = d.read(rx, HDR_LEN);
                    peer_fwd = Header::parse(raw[..HDR_LEN].try_into().unwrap()).fwd_cnt;
                }
                d.submit(0, &[(rx, 4096, true)]);
                d.kick(0);
            }
            let in_flight = (sent as u32).wrapping_sub(peer_fwd) as usize;
            if in_flight + 65536 <= BUF_ALLOC as usize {
                break;
            }
            d.t.poll_backends();
            std::thread::yield_now();
        }
        d.submit(1, &[(pkt, HDR_LEN as u32 + 65536, false)]);
        d.kick(1);
        d.pop_used(1).unwrap();
        sent += 65536;
    }
    // Whatever is still buffered in the device goes out on the next polls.
    while !reader.is_finished() {
        d.t.poll_backends();
        std::thread::yield_now();
    }
    let got = reader.join().unwrap();
    let dev = t.elapsed().as_secs_f64();
    assert_eq!(got, total, "the host did not get every byte");

    let (mut a, b) = UnixStream::pair().unwrap();
    let reader = drain(b);
    let buf = vec![0u8; 65536];
    let t = Instant::now();
    let mut sent = 0usize;
    while sent < total {
        a.write_all(&buf).unwrap();
        sent += buf.len();
    }
    reader.join().unwrap();
    let direct = t.elapsed().as_secs_f64();
    println!(
        "vsock guest->host, 64 KiB packets: device {:.0} MB/s, unix socket {:.0} MB/s, ratio {:.2}",
        mbps(total, dev),
        mbps(total, direct),
        dev / direct
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not: nothing to measure there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    blk();
    vsock();
}
