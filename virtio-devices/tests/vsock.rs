//! virtio-vsock driven by a test driver on real guest memory, bridged to real unix sockets.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_virtio::mmio::reg;
use bulkhead_virtio::vsock::{
    Header, BUF_ALLOC, HDR_LEN, HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use bulkhead_virtio::{device_type, Vsock};
use common::Driver;

const CID: u64 = 42;
const RX: usize = 0;
const TX: usize = 1;
const RXBUF: u32 = 4096;

struct Guest {
    d: Driver,
    rx_bufs: HashMap<u32, u64>,
    tx_buf: u64,
    _dir: tempfile::TempDir,
    uds: PathBuf,
}

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let mut d = Driver::new(Box::new(Vsock::new(CID, uds.clone()).unwrap()), false);
        assert_eq!(d.r32(reg::DEVICE_ID), device_type::VSOCK);
        assert_eq!(u64::from_le_bytes(d.config(0, 8).try_into().unwrap()), CID);
        d.init(u64::MAX, 64);
        let tx_buf = d.alloc(HDR_LEN as u64 + 65536, 8);
        let mut g = Guest {
            d,
            rx_bufs: HashMap::new(),
            tx_buf,
            _dir: dir,
            uds,
        };
        for _ in 0..32 {
            let a = g.d.alloc(u64::from(RXBUF), 8);
            let head = g.d.submit(RX, &[(a, RXBUF, true)]);
            g.rx_bufs.insert(u32::from(head), a);
        }
        g.d.kick(RX);
        g
    }

    fn hdr(
        src_port: u32,
        dst_port: u32,
        op: u16,
        len: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// Sends one packet (header and payload in two descriptors) and waits until it is used.
    fn send(&mut self, h: Header, payload: &[u8]) {
        self.d.write(self.tx_buf, &h.to_bytes());
        self.d.write(self.tx_buf + HDR_LEN as u64, payload);
        let mut bufs = vec![(self.tx_buf, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            bufs.push((self.tx_buf + HDR_LEN as u64, payload.len() as u32, false));
        }
        self.d.submit(TX, &bufs);
        self.d.kick(TX);
        self.d.wait_used(TX);
    }

    /// The next packet the device put in an rx buffer (the buffer is given back).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let (id, len) = self.d.wait_used(RX);
        let addr = self.rx_bufs[&id];
        assert!(len as usize >= HDR_LEN, "short rx packet");
        let raw = self.d.read(addr, len as usize);
        let h = Header::parse(raw[..HDR_LEN].try_into().unwrap());
        assert_eq!(h.len as usize, len as usize - HDR_LEN);
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID));
        let payload = raw[HDR_LEN..].to_vec();
        // Recycle the buffer.
        self.rx_bufs.remove(&id);
        let head = self.d.submit(RX, &[(addr, RXBUF, true)]);
        self.rx_bufs.insert(u32::from(head), addr);
        self.d.kick(RX);
        (h, payload)
    }

    fn recv_op(&mut self, op: u16) -> (Header, Vec<u8>) {
        let (h, p) = self.recv();
        assert_eq!(h.op, op, "unexpected packet {h:?}");
        (h, p)
    }

    fn port_path(&self, port: u32) -> PathBuf {
        PathBuf::from(format!("{}_{port}", self.uds.display()))
    }
}

#[test]
fn guest_connects_to_host_socket_data_both_ways() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.port_path(1024)).unwrap();
    g.send(Guest::hdr(5000, 1024, OP_REQUEST, 0, 65536, 0), &[]);
    let (h, _) = g.recv_op(OP_RESPONSE);
    assert_eq!((h.src_port, h.dst_port), (1024, 5000));
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    g.send(Guest::hdr(5000, 1024, OP_RW, 10, 65536, 0), b"hello host");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");

    host.write_all(b"hello guest").unwrap();
    let (h, p) = g.recv_op(OP_RW);
    assert_eq!(p, b"hello guest");
    assert_eq!((h.src_port, h.dst_port), (1024, 5000));

    // Host closes: the guest is told both directions are shut, then the guest resets.
    drop(host);
    let (h, _) = g.recv_op(OP_SHUTDOWN);
    assert_eq!(h.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    g.send(Guest::hdr(5000, 1024, OP_RST, 0, 65536, 11), &[]);

    // Nobody listens on port 1025: RST.
    g.send(Guest::hdr(5001, 1025, OP_REQUEST, 0, 65536, 0), &[]);
    let (h, _) = g.recv_op(OP_RST);
    assert_eq!((h.src_port, h.dst_port), (1025, 5001));
    // Data for a connection that does not exist: RST.
    g.send(Guest::hdr(5002, 1024, OP_RW, 3, 65536, 0), b"abc");
    let (h, _) = g.recv_op(OP_RST);
    assert_eq!(h.dst_port, 5002);
    assert!(!g.d.t.needs_reset());
}

#[test]
fn host_connects_to_guest_port() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let (req, _) = g.recv_op(OP_REQUEST);
    assert_eq!(req.dst_port, 52);
    let hostport = req.src_port;
    g.send(Guest::hdr(52, hostport, OP_RESPONSE, 0, 65536, 0), &[]);
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {hostport}\n"));

    host.write_all(b"ping").unwrap();
    let (_, p) = g.recv_op(OP_RW);
    assert_eq!(p, b"ping");
    g.send(Guest::hdr(52, hostport, OP_RW, 4, 65536, 4), b"pong");
    let mut got = [0u8; 4];
    reader.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // The guest closes: the device resets the connection and the host sees EOF.
    let mut h = Guest::hdr(52, hostport, OP_SHUTDOWN, 0, 65536, 4);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(h, &[]);
    let (h, _) = g.recv_op(OP_RST);
    assert_eq!(h.dst_port, 52);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn host_connect_refused_by_guest_and_bad_lines() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"CONNECT 77\n").unwrap();
    let (req, _) = g.recv_op(OP_REQUEST);
    g.send(Guest::hdr(77, req.src_port, OP_RST, 0, 0, 0), &[]);
    let mut buf = Vec::new();
    host.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "no OK line after a refusal");

    for bad in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'A'; 64][..]] {
        let mut s = UnixStream::connect(&g.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(bad).unwrap();
        let mut out = Vec::new();
        // Closed by the device (EOF or reset), never answered.
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty());
    }
}

#[test]
fn credit_limits_host_to_guest_data() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.port_path(2000)).unwrap();
    // The guest has only 16 bytes of buffer.
    g.send(Guest::hdr(6000, 2000, OP_REQUEST, 0, 16, 0), &[]);
    g.recv_op(OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 100]).unwrap();
    let (_, p) = g.recv_op(OP_RW);
    assert_eq!(p.len(), 16, "device sent beyond the guest's credit");
    // The guest consumed 16 bytes.
    g.send(Guest::hdr(6000, 2000, OP_CREDIT_UPDATE, 0, 16, 16), &[]);
    let (_, p) = g.recv_op(OP_RW);
    assert_eq!(p.len(), 16);
    // A bigger buffer lets the rest through.
    g.send(Guest::hdr(6000, 2000, OP_CREDIT_UPDATE, 0, 4096, 32), &[]);
    let mut total = 0;
    while total < 68 {
        let (_, p) = g.recv_op(OP_RW);
        assert!(p.iter().all(|&b| b == 7));
        total += p.len();
    }
    assert_eq!(total, 68);
}

#[test]
fn guest_exceeding_credit_is_reset() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.port_path(3000)).unwrap();
    g.send(Guest::hdr(7000, 3000, OP_REQUEST, 0, 65536, 0), &[]);
    g.recv_op(OP_RESPONSE);
    // The host never reads: the socket buffer and then the device's BUF_ALLOC fill up.
    let (host, _) = listener.accept().unwrap();
    let chunk = vec![1u8; 65536];
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..64 {
        g.send(
            Guest::hdr(7000, 3000, OP_RW, chunk.len() as u32, 65536, 0),
            &chunk,
        );
        sent += chunk.len();
        while g.d.used_idx(RX) != g.d.queues[RX].used_seen {
            let (h, _) = g.recv();
            if h.op == OP_RST {
                reset = true;
            } else {
                assert_eq!(h.op, OP_CREDIT_UPDATE, "unexpected {h:?}");
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "sent {sent} bytes beyond credit without a reset");
    drop(host);
    assert!(!g.d.t.needs_reset());
}

#[test]
fn hostile_packets() {
    let mut g = Guest::new();
    // Header claims more payload than the buffer holds.
    g.d.write(g.tx_buf, &Guest::hdr(1, 2, OP_RW, 60000, 0, 0).to_bytes());
    g.d.submit(TX, &[(g.tx_buf, HDR_LEN as u32 + 10, false)]);
    g.d.kick(TX);
    g.d.wait_used(TX);
    let (h, _) = g.recv_op(OP_RST);
    assert_eq!(h.dst_port, 1);
    // Short header, writable tx buffer, buffer outside memory: dropped.
    g.d.submit(TX, &[(g.tx_buf, 10, false)]);
    g.d.submit(TX, &[(g.tx_buf, HDR_LEN as u32, true)]);
    g.d.submit(TX, &[(1 << 40, HDR_LEN as u32, false)]);
    g.d.kick(TX);
    for _ in 0..3 {
        g.d.wait_used(TX);
    }
    // Wrong CIDs: dropped silently; then a valid REQUEST to a missing port still gets RST.
    let mut h = Guest::hdr(9, 9, OP_REQUEST, 0, 0, 0);
    h.src_cid = 3;
    g.send(h, &[]);
    g.send(Guest::hdr(10, 10, OP_REQUEST, 0, 0, 0), &[]);
    let (h, _) = g.recv_op(OP_RST);
    assert_eq!(h.dst_port, 10);
    assert!(!g.d.t.needs_reset());
}

#[test]
fn guest_half_close_shuts_the_host_write_side() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.port_path(4000)).unwrap();
    g.send(Guest::hdr(8000, 4000, OP_REQUEST, 0, 65536, 0), &[]);
    g.recv_op(OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    g.send(Guest::hdr(8000, 4000, OP_RW, 5, 65536, 0), b"last!");
    let mut h = Guest::hdr(8000, 4000, OP_SHUTDOWN, 0, 65536, 0);
    h.flags = SHUTDOWN_SEND;
    g.send(h, &[]);
    // The host reads the data, then EOF; it can still answer.
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last!");
    host.write_all(b"reply").unwrap();
    let (_, p) = g.recv_op(OP_RW);
    assert_eq!(p, b"reply");
    // More data after SHUTDOWN SEND is a protocol violation: reset.
    g.send(Guest::hdr(8000, 4000, OP_RW, 1, 65536, 5), b"x");
    g.recv_op(OP_RST);
}

/// Megabytes both ways on one connection with a slow host reader and a guest that only has a
/// 64 KiB receive buffer: every byte arrives in order, nobody exceeds the other's credit.
#[test]
fn bulk_data_both_ways_with_flow_control() {
    const TOTAL: usize = 3 << 20;
    const GUEST_BUF: u32 = 64 * 1024;
    let byte = |i: usize| (i % 251) as u8;
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.port_path(6000)).unwrap();
    g.send(Guest::hdr(9000, 6000, OP_REQUEST, 0, GUEST_BUF, 0), &[]);
    g.recv_op(OP_RESPONSE);
    let (host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut host_w = host.try_clone().unwrap();
    // Host reader: slow (small reads with pauses) so the device has to buffer and wait.
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let mut got = 0usize;
        let mut buf = [0u8; 8192];
        while got < TOTAL {
            let n = host.read(&mut buf).unwrap();
            assert!(n > 0, "EOF after {got} bytes");
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, byte(got + k), "guest->host byte {}", got + k);
            }
            got += n;
            if got % (256 << 10) < 8192 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        got
    });
    // Host writer.
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..TOTAL).map(byte).collect();
        host_w.write_all(&data).unwrap();
    });

    let mut sent = 0usize;
    let mut peer_buf = BUF_ALLOC;
    let mut peer_fwd = 0u32;
    let mut received = 0usize;
    let mut consumed_reported = 0usize;
    let chunk = 16 * 1024;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while sent < TOTAL || received < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled: sent {sent}, received {received}"
        );
        // Send what the device's credit allows.
        let in_flight = (sent as u32).wrapping_sub(peer_fwd) as usize;
        if sent < TOTAL && in_flight + chunk <= peer_buf as usize {
            let n = chunk.min(TOTAL - sent);
            let data: Vec<u8> = (sent..sent + n).map(byte).collect();
            g.send(
                Guest::hdr(9000, 6000, OP_RW, n as u32, GUEST_BUF, received as u32),
                &data,
            );
            sent += n;
            continue;
        }
        // Otherwise take the next packet from the device.
        let (h, p) = g.recv();
        peer_buf = h.buf_alloc;
        peer_fwd = h.fwd_cnt;
        match h.op {
            OP_RW => {
                assert!(
                    received + p.len() - consumed_reported <= GUEST_BUF as usize,
                    "device exceeded the guest's credit"
                );
                for (k, &b) in p.iter().enumerate() {
                    assert_eq!(b, byte(received + k), "host->guest byte {}", received + k);
                }
                received += p.len();
                // Consume and report when half the buffer is used.
                if received - consumed_reported >= GUEST_BUF as usize / 2 || received == TOTAL {
                    consumed_reported = received;
                    g.send(
                        Guest::hdr(9000, 6000, OP_CREDIT_UPDATE, 0, GUEST_BUF, received as u32),
                        &[],
                    );
                }
            }
            OP_CREDIT_UPDATE => {}
            other => panic!("unexpected op {other}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), TOTAL);
    assert!(!g.d.t.needs_reset());
}
