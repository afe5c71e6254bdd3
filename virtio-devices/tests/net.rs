//! virtio-net frames both ways through a real tap device, in a network namespace the test
//! creates (so the host's interfaces are untouched). Skips, saying why, without /dev/net/tun or
//! without the privilege to create a network namespace.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bulkhead_virtio::mmio::reg;
use bulkhead_virtio::net::NET_HDR_LEN;
use bulkhead_virtio::{device_type, Net};
use common::Driver;

const IFNAME: &str = "bhtap0";
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const GUEST_MAC: [u8; 6] = [0x02, 0xb1, 0x00, 0x00, 0x00, 0x01];
const HOST_MAC: [u8; 6] = [0x02, 0xb1, 0x00, 0x00, 0x00, 0x02];

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    r
}

/// Opens a tap in the current thread's network namespace, brings it up, and opens an
/// AF_PACKET socket bound to it.
fn tap_and_packet_socket() -> Result<(OwnedFd, OwnedFd), String> {
    let path = CString::new("/dev/net/tun").unwrap();
    // SAFETY: plain syscalls on valid arguments; every returned fd is checked and owned.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(format!(
                "open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tap = OwnedFd::from_raw_fd(fd);
        let mut r = ifreq(IFNAME);
        r.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        if libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut r) < 0 {
            return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
        }
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err("socket".into());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut r = ifreq(IFNAME);
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r) < 0 {
            return Err("SIOCGIFFLAGS".into());
        }
        r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut r) < 0 {
            return Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()));
        }
        let name = CString::new(IFNAME).unwrap();
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err("if_nametoindex".into());
        }
        let p = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        if p < 0 {
            return Err(format!(
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let p = OwnedFd::from_raw_fd(p);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            p.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(format!(
                "bind AF_PACKET: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            p.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok((tap, p))
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn frames_both_ways_through_a_tap() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        bulkhead_test_skip::skip("/dev/net/tun is missing");
        return;
    }
    // This test thread gets its own network namespace.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        bulkhead_test_skip::skip(format_args!("cannot create a network namespace: {e}"));
        return;
    }
    let (tap, pkt) = tap_and_packet_socket().expect("tap in the test's network namespace");

    let mut d = Driver::new(Box::new(Net::new(tap, GUEST_MAC).unwrap()), false);
    assert_eq!(d.r32(reg::DEVICE_ID), device_type::NET);
    assert_eq!(d.config(0, 6), GUEST_MAC);
    d.init(u64::MAX, 16);

    // Guest -> host.
    let payload = b"from the guest, through virtio-net";
    let f = frame(HOST_MAC, GUEST_MAC, payload);
    let buf = d.alloc(2048, 8);
    // A hostile header (GSO request) is zeroed by the device; the frame still arrives.
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO TCPv4
    d.write(buf, &hdr);
    d.write(buf + NET_HDR_LEN as u64, &f);
    d.submit(
        1,
        &[
            (buf, NET_HDR_LEN as u32, false),
            (buf + NET_HDR_LEN as u64, f.len() as u32, false),
        ],
    );
    d.kick(1);
    d.wait_used(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = None;
    while Instant::now() < deadline {
        let mut b = [0u8; 2048];
        // SAFETY: recv into a local buffer of the given length.
        let n = unsafe {
            libc::recv(
                pkt.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                b.len(),
                0,
            )
        };
        if n >= 14 && b[12..14] == ETHERTYPE.to_be_bytes() {
            got = Some(b[..n as usize].to_vec());
            break;
        }
    }
    let got = got.expect("the guest's frame on the tap");
    assert_eq!(&got[..f.len()], &f[..]);

    // Host -> guest.
    let mut rx = Vec::new();
    for _ in 0..8 {
        let a = d.alloc(2048, 8);
        let head = d.submit(0, &[(a, 2048, true)]);
        rx.push((head, a));
    }
    d.kick(0);
    let back = frame(GUEST_MAC, HOST_MAC, b"from the host, through the tap");
    // SAFETY: send from a live buffer of the given length.
    let n = unsafe {
        libc::send(
            pkt.as_raw_fd(),
            back.as_ptr() as *const libc::c_void,
            back.len(),
            0,
        )
    };
    assert_eq!(n as usize, back.len());
    // Other traffic (IPv6 router solicitations...) may come first; find ours.
    let mut found = false;
    for _ in 0..8 {
        let (id, len) = d.wait_used(0);
        let addr = rx
            .iter()
            .find(|(h, _)| u32::from(*h) == id)
            .expect("known buffer")
            .1;
        let data = d.read(addr, len as usize);
        assert!(data.len() >= NET_HDR_LEN);
        assert_eq!(u16::from_le_bytes([data[10], data[11]]), 1, "num_buffers");
        if data[NET_HDR_LEN..] == back[..] {
            found = true;
            break;
        }
    }
    assert!(found, "the host's frame did not reach the guest");
}
