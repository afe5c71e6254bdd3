//! Tiny guests driving the virtio devices under the real bulkhead-vmm: virtio-mmio discovery
//! of every device, virtio-vsock to and from host unix sockets, virtio-blk reads and writes
//! checked on the host files (and a read-only disk refusing writes), virtio-rng.
//! Guest sources: tests/guests/virtio_{mmio,blk,vsock,rng}.c with the shared driver tests/guests/virtio.h.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_vmm::ConfineSpec;
use common::*;

/// build_guest caches on guest.h/guest.ld/<name>.c; our guests also include virtio.h.
fn build_virtio_guest(name: &str) -> PathBuf {
    let header = guests_dir().join("virtio.h");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("guests")
        .join(name);
    let newer = |a: &Path, b: &Path| -> bool {
        match (
            std::fs::metadata(a).and_then(|m| m.modified()),
            std::fs::metadata(b).and_then(|m| m.modified()),
        ) {
            (Ok(x), Ok(y)) => x > y,
            _ => false,
        }
    };
    if newer(&header, &out) {
        let _ = std::fs::remove_file(&out);
    }
    build_guest(name)
}

const SECTORS: u64 = 64;

fn pattern(sector: u64) -> u8 {
    (sector * 7 + 1) as u8
}

fn make_disk(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; (SECTORS * 512) as usize];
    for (i, b) in data.iter_mut().enumerate() {
        *b = pattern(i as u64 / 512);
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Creates a persistent tap `name` in the calling thread's network namespace (the test
/// thread's own, see below) so the VMM, started from this thread, can open it.
fn create_tap(name: &str) -> Result<(), String> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("open /dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain old data; all-zero is valid; the name is shorter than IFNAMSIZ.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads/updates the live ifreq; TUNSETPERSIST takes an integer argument.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0 {
            return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
        }
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(format!(
                "TUNSETPERSIST: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[test]
fn virtio_mmio_discovery_of_every_device() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_virtio_guest("virtio_mmio"), dir.path());
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    make_disk(&a);
    make_disk(&b);
    spec.disks = vec![
        DiskSpec {
            path: a,
            read_only: false,
        },
        DiskSpec {
            path: b,
            read_only: true,
        },
    ];
    spec.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.path().join("vsock.sock"),
    });
    spec.rng = true;
    // virtio-net needs a tap: made in a network namespace of this test thread (the VMM started
    // from this thread inherits it), so the host's interfaces are untouched.
    let mut want = vec![2u32, 2, 19];
    let net = if !Path::new("/dev/net/tun").exists() {
        bulkhead_test_skip::skip("virtio-net not probed: /dev/net/tun is missing");
        false
    } else if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        bulkhead_test_skip::skip(format_args!(
            "virtio-net not probed: cannot create a network namespace: {e}"
        ));
        false
    } else {
        create_tap("bhguest0").expect("tap in the test's network namespace");
        true
    };
    if net {
        spec.nets = vec![NetSpec {
            tap: "bhguest0".into(),
            mac: [0x02, 0xb1, 0, 0, 0, 9],
            fd: None,
        }];
        want.push(1);
    }
    want.push(4);

    let out = run_guest(spec);
    out.assert_passed();
    let found: Vec<(u64, u64, u32, u32)> = out
        .lines_with("VIRTIO ")
        .iter()
        .filter(|l| !l.starts_with("COUNT"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                f[0].parse().unwrap(),
                hex(f[1]),
                f[2].parse().unwrap(),
                f[4].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(found.len(), want.len(), "{}", out.serial);
    for (i, (n, addr, id, qmax)) in found.iter().enumerate() {
        assert_eq!(*n, i as u64);
        assert_eq!(*addr, 0xd000_0000 + 0x1000 * i as u64);
        assert_eq!(*id, want[i], "device id at window {i}\n{}", out.serial);
        assert!(*qmax >= 64, "queue size {qmax}");
    }
    // The command line declares the same windows, with GSI 5 + i.
    let declared: Vec<(u64, u32, u32)> = out
        .lines_with("CMDLINE-DEV ")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u32, u32)> = want
        .iter()
        .enumerate()
        .map(|(i, &id)| (0xd000_0000 + 0x1000 * i as u64, 5 + i as u32, id))
        .collect();
    assert_eq!(declared, expected, "{}", out.serial);
    assert_eq!(
        out.lines_with("VIRTIO COUNT "),
        vec![want.len().to_string()]
    );
}

#[test]
fn virtio_blk_reads_writes_and_read_only_disk() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    let before = make_disk(&rw);
    let ro_before = make_disk(&ro);
    let mut spec = guest_spec(&build_virtio_guest("virtio_blk"), dir.path());
    spec.disks = vec![
        DiskSpec {
            path: rw.clone(),
            read_only: false,
        },
        DiskSpec {
            path: ro.clone(),
            read_only: true,
        },
    ];
    let out = run_guest(spec);
    out.assert_passed();
    assert_eq!(out.lines_with("BLK CAPACITY "), vec![SECTORS.to_string()]);
    assert_eq!(
        out.lines_with("BLK RO WRITE STATUS "),
        vec!["1".to_string()]
    );
    assert!(
        out.lines_with("BLK ID ")
            .first()
            .is_some_and(|id| id.starts_with("bulkhead-")),
        "{}",
        out.serial
    );

    // The guest's write is on the host file, and nothing else changed.
    let after = std::fs::read(&rw).unwrap();
    let mut want = before.clone();
    for i in 0..1024 {
        want[1024 + i] = 0xc0 + (i % 61) as u8;
    }
    assert_eq!(after.len(), want.len());
    for s in 0..SECTORS as usize {
        assert_eq!(
            after[s * 512..(s + 1) * 512],
            want[s * 512..(s + 1) * 512],
            "sector {s} of the read-write disk"
        );
    }
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_before,
        "read-only disk modified"
    );
}

#[test]
fn virtio_rng_bytes() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_virtio_guest("virtio_rng"), dir.path());
    spec.rng = true;
    let out = run_guest(spec);
    out.assert_passed();
    let a = out.lines_with("RNG A ");
    let b = out.lines_with("RNG B ");
    assert_eq!((a.len(), b.len()), (1, 1), "{}", out.serial);
    assert_eq!(a[0].len(), 64);
    assert_ne!(a[0], b[0]);
    assert_ne!(a[0], "0".repeat(64));
}

/// The host half of the vsock guest: serves <uds>_1234, then connects to the guest's port 5000.
fn vsock_host(uds: PathBuf, listener: UnixListener) -> Result<String, String> {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut conn = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("the guest never connected to port 1234".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(GUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("reading the guest's ping: {e}"))?;
    if line != "ping from guest\n" {
        return Err(format!("guest sent {line:?}"));
    }
    conn.write_all(b"pong from host\n")
        .map_err(|e| e.to_string())?;
    // The guest shuts the connection down; the device closes our end.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for EOF: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("unexpected bytes after the ping: {rest:?}"));
    }

    // Host -> guest.
    let mut s = UnixStream::connect(&uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(GUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT 5000\n").map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut ok = String::new();
    r.read_line(&mut ok)
        .map_err(|e| format!("reading OK: {e}"))?;
    if !ok.starts_with("OK ") || ok.trim_end()[3..].parse::<u32>().is_err() {
        return Err(format!("expected OK <port>, got {ok:?}"));
    }
    s.write_all(b"hello guest\n").map_err(|e| e.to_string())?;
    let mut echo = String::new();
    r.read_line(&mut echo)
        .map_err(|e| format!("reading the echo: {e}"))?;
    if echo != "echo: hello guest\n" {
        return Err(format!("guest echoed {echo:?}"));
    }
    drop(r);
    drop(s);

    // Host -> guest, half-closed: the guest's answer after our EOF still arrives.
    let mut s = UnixStream::connect(&uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(GUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT 5001\n").map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut ok2 = String::new();
    r.read_line(&mut ok2)
        .map_err(|e| format!("reading OK: {e}"))?;
    if !ok2.starts_with("OK ") {
        return Err(format!("expected OK <port>, got {ok2:?}"));
    }
    s.write_all(b"half\n").map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    r.read_to_string(&mut answer)
        .map_err(|e| format!("reading the answer after our half-close: {e}"))?;
    if answer != "after eof\n" {
        return Err(format!(
            "after our half-close the guest's answer was {answer:?}"
        ));
    }
    Ok(ok)
}

#[test]
fn virtio_vsock_guest_to_host_and_back() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(dir.path().join("vsock.sock_1234")).unwrap();
    let mut spec = guest_spec(&build_virtio_guest("virtio_vsock"), dir.path());
    spec.vsock = Some(VsockSpec {
        guest_cid: 7,
        uds_path: uds.clone(),
    });
    let host = std::thread::spawn(move || vsock_host(uds, listener));
    let out = run_guest(spec);
    let host_result = host.join().expect("host thread");
    out.assert_passed();
    assert_eq!(out.lines_with("VSOCK CID "), vec!["7".to_string()]);
    assert!(
        out.serial.contains("VSOCK GUEST-TO-HOST OK"),
        "{}",
        out.serial
    );
    assert!(
        out.serial.contains("VSOCK HOST-TO-GUEST OK"),
        "{}",
        out.serial
    );
    assert!(out.serial.contains("VSOCK HALF-CLOSE OK"), "{}", out.serial);
    let ok =
        host_result.unwrap_or_else(|e| panic!("host side: {e}\n--- serial ---\n{}", out.serial));
    assert!(ok.starts_with("OK "));
}

/// The same vsock exchange with the VMM confined (namespaces, empty root holding only the
/// sockets dir, uid/gid 65534, seccomp per thread kind): the vsock worker's syscalls (accept,
/// connect to `<uds>_<port>` inside the confined root, epoll, read/write) pass its filter.
#[test]
fn virtio_vsock_under_confinement() {
    let Some((dir, socks)) = common::confinement_dirs() else {
        return;
    };
    let uds = socks.join("vsock.sock");
    let port_sock = socks.join("vsock.sock_1234");
    let listener = UnixListener::bind(&port_sock).unwrap();
    // The confined VMM (uid 65534) connects to the host service: it needs write permission on
    // the socket, as the VM's uid would be given by whoever creates the listener.
    nix::unistd::chown(
        &port_sock,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let mut spec = guest_spec(&build_virtio_guest("virtio_vsock"), dir.path());
    spec.vsock = Some(VsockSpec {
        guest_cid: 7,
        uds_path: uds.clone(),
    });
    spec.confine = Some(ConfineSpec {
        uid: 65534,
        gid: 65534,
        cgroup: None,
    });
    let host = std::thread::spawn(move || vsock_host(uds, listener));
    let out = run_guest(spec);
    let host_result = host.join().expect("host thread");
    out.assert_passed();
    assert!(out.stderr.contains("confined"), "{}", out.stderr);
    host_result.unwrap_or_else(|e| panic!("host side: {e}\n--- serial ---\n{}", out.serial));
}

/// Brings `name` up and opens an AF_PACKET socket bound to it (1 s receive timeout).
fn up_and_packet_socket(name: &str) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain syscalls with valid arguments; every returned fd is checked and owned.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err("socket".into());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, c) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = c as libc::c_char;
        }
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err("SIOCGIFFLAGS".into());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()));
        }
        let ifindex = libc::if_nametoindex(cname.as_ptr());
        let p = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        if p < 0 || ifindex == 0 {
            return Err(format!("AF_PACKET: {}", std::io::Error::last_os_error()));
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
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
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
        Ok(p)
    }
}

#[test]
fn virtio_net_frames_both_ways_through_a_tap() {
    if !kvm_available() {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        bulkhead_test_skip::skip("/dev/net/tun is missing");
        return;
    }
    // A network namespace of this test thread; the VMM started from here inherits it.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        bulkhead_test_skip::skip(format_args!("cannot create a network namespace: {e}"));
        return;
    }
    create_tap("bhnet0").expect("tap");
    let pkt = up_and_packet_socket("bhnet0").expect("packet socket on the tap");
    let mac = [0x02, 0xb1, 0, 0, 0, 0x33];
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_virtio_guest("virtio_net"), dir.path());
    spec.nets = vec![NetSpec {
        tap: "bhnet0".into(),
        mac,
        fd: None,
    }];
    // The host side: wait for the guest's frame, then answer until the guest is done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let host = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let mut got = None;
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while got.is_none()
            && Instant::now() < deadline
            && !stop2.load(std::sync::atomic::Ordering::SeqCst)
        {
            let mut b = [0u8; 2048];
            // SAFETY: recv into a live local buffer of the given length.
            let n = unsafe {
                libc::recv(
                    pkt.as_raw_fd(),
                    b.as_mut_ptr() as *mut libc::c_void,
                    b.len(),
                    0,
                )
            };
            if n >= 14 && b[12..14] == [0x88, 0xb5] {
                got = Some(b[..n as usize].to_vec());
            }
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x02, 0xb1, 0, 0, 0, 0x44]);
        frame.extend_from_slice(&[0x88, 0xb5]);
        frame.extend_from_slice(b"bulkhead host frame");
        while got.is_some() && !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: send from a live buffer of the given length.
            unsafe {
                libc::send(
                    pkt.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            std::thread::sleep(Duration::from_millis(50));
        }
        got
    });
    let out = run_guest(spec);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let got = host.join().expect("host thread");
    out.assert_passed();
    assert_eq!(
        out.lines_with("NET MAC "),
        vec!["02:b1:00:00:00:33".to_string()]
    );
    let got = got.expect("the guest's frame on the tap");
    assert_eq!(&got[..6], &[0xff; 6]);
    assert_eq!(&got[6..12], &mac);
    assert_eq!(&got[14..], b"bulkhead guest frame");
}
