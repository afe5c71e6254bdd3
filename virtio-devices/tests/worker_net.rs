//! The worker thread installs the given seccomp program; the transport ignores status bits
//! cleared without a reset; virtio-net framing details checked on a seqpacket socket standing
//! in for the tap (one frame per read/write, like a tap).

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use bulkhead_virtio::mmio::{reg, status};
use bulkhead_virtio::net::NET_HDR_LEN;
use bulkhead_virtio::{DeviceContext, MmioTransport, Net, Rng};
use common::{CountingIrq, Driver};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[test]
fn worker_thread_installs_its_seccomp_filter() {
    // getrandom(2) and openat(2) (the getrandom crate's /dev/urandom fallback) fail with EPERM
    // under this filter; everything else is allowed.
    let mut rules = BTreeMap::new();
    rules.insert(libc::SYS_getrandom, vec![]);
    rules.insert(libc::SYS_openat, vec![]);
    rules.insert(libc::SYS_open, vec![]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .unwrap();
    let prog: BpfProgram = filter.try_into().unwrap();
    let mem = common::guest_memory();
    let ctx = DeviceContext {
        mem: mem.clone(),
        irq: Arc::new(CountingIrq::default()),
        thread_filter: Some(Arc::new(prog)),
    };
    let t = MmioTransport::new(Box::new(Rng::new()), ctx).unwrap();
    let mut d = Driver::new(Box::new(Rng::new()), false);
    d.t = t;
    d.mem = mem;
    d.init(u64::MAX, 8);
    let buf = d.alloc(64, 8);
    d.submit(0, &[(buf, 64, true)]);
    d.kick(0);
    let (_, len) = d.wait_used(0);
    assert_eq!(len, 0, "getrandom worked inside the filtered worker");
    // The test thread itself is not filtered.
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
}

#[test]
fn clearing_status_bits_without_reset_is_ignored() {
    let mut d = Driver::new(Box::new(Rng::new()), true);
    d.init(u64::MAX, 8);
    let s = d.r32(reg::STATUS);
    d.w32(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(d.r32(reg::STATUS), s);
    assert!(d.t.is_activated());
}

fn net_pair() -> (Driver, OwnedFd) {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK,
    )
    .unwrap();
    let mac = [2, 0, 0, 0, 0, 7];
    let mut d = Driver::new(Box::new(Net::from_frames_fd(a, mac)), true);
    d.init(u64::MAX, 8);
    (d, b)
}

#[test]
fn net_tx_zeroes_guest_headers_and_drops_bad_lengths() {
    let (mut d, host) = net_pair();
    let buf = d.alloc(2048, 8);
    let mut pkt = vec![0xffu8; NET_HDR_LEN];
    pkt.extend_from_slice(b"0123456789abcdef-frame");
    d.write(buf, &pkt);
    d.submit(1, &[(buf, pkt.len() as u32, false)]);
    // Header only: dropped.
    d.submit(1, &[(buf, NET_HDR_LEN as u32, false)]);
    // Device-writable tx buffer: nothing to send.
    d.submit(1, &[(buf, 100, true)]);
    d.kick(1);
    for _ in 0..3 {
        assert_eq!(d.pop_used(1).unwrap().1, 0);
    }
    let mut got = [0u8; 4096];
    let n = nix::unistd::read(host.as_raw_fd(), &mut got).unwrap();
    assert_eq!(n, pkt.len());
    assert!(
        got[..NET_HDR_LEN].iter().all(|&b| b == 0),
        "header not zeroed"
    );
    assert_eq!(&got[NET_HDR_LEN..n], &pkt[NET_HDR_LEN..]);
    assert!(
        nix::unistd::read(host.as_raw_fd(), &mut got).is_err(),
        "only one frame sent"
    );
}

#[test]
fn net_rx_drops_frames_larger_than_the_buffer_and_keeps_the_buffer() {
    let (mut d, host) = net_pair();
    let small = d.alloc(64, 8);
    d.submit(0, &[(small, 64, true)]);
    d.kick(0);
    let mut big = vec![0u8; NET_HDR_LEN + 200];
    big[NET_HDR_LEN] = 0xaa;
    nix::unistd::write(&host, &big).unwrap();
    let mut ok = vec![0x55u8; NET_HDR_LEN + 20];
    ok[NET_HDR_LEN..].copy_from_slice(b"small frame fits....");
    nix::unistd::write(&host, &ok).unwrap();
    d.t.poll_backends();
    let (_, len) = d.pop_used(0).expect("the small frame delivered");
    assert_eq!(len as usize, ok.len());
    let data = d.read(small, ok.len());
    assert_eq!(u16::from_le_bytes([data[10], data[11]]), 1, "num_buffers");
    assert!(data[..10].iter().all(|&b| b == 0), "rx header not cleared");
    assert_eq!(&data[NET_HDR_LEN..], b"small frame fits....");
    assert!(d.pop_used(0).is_none());
}
