//! The device worker: multiplexes the guest's vsock packets and the host unix sockets on the
//! worker's epoll. It parses tx packets and dispatches them to their connection, fills rx
//! buffers with control packets and data, accepts host connections and reads their
//! `CONNECT` line, connects guest requests to host sockets, and enforces the device-wide
//! limits and timeouts.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Conn, State, BUF_ALLOC, TO_GUEST_MAX};
use super::packet::*;
use super::{Vsock, RX_QUEUE, TX_QUEUE};
use crate::util::{add_used, pop};
use crate::worker::FIRST_BACKEND_TOKEN;
use crate::{Activation, Error, GuestMemory, IrqLine, Result, Worker};

pub const MAX_CONNECTIONS: usize = 128;
/// Host connections still sending their `CONNECT` line.
pub const MAX_PENDING_HOST: usize = 32;
/// Control packets waiting for guest rx buffers; beyond this the tx queue is not served until
/// the guest gives rx buffers (back-pressure instead of unbounded memory).
pub const MAX_CONTROL_BACKLOG: usize = 1024;
/// Longest accepted `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host connection may take to send its CONNECT line, and the guest to answer a
/// connection request or finish a shutdown.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const LISTENER_TOKEN: u64 = FIRST_BACKEND_TOKEN;
const CONN_TOKEN_BASE: u64 = FIRST_BACKEND_TOKEN + 1;

/// A host connection that has not sent its CONNECT line yet.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

type Key = (u32, u32); // (local port on the host side, guest port)

pub(super) struct VsockWorker {
    mem: GuestMemory,
    rxq: Queue,
    txq: Queue,
    irq: Arc<IrqLine>,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<u64, Conn>,
    by_key: HashMap<Key, u64>,
    pending: HashMap<u64, Pending>,
    /// Control packets for the guest: (key, op, flags).
    ctrl: VecDeque<(Key, u16, u32)>,
    next_id: u64,
    next_host_port: u32,
    tx_blocked: bool,
    rx_starved: bool,
    pkt: Vec<u8>,
}

impl VsockWorker {
    /// The worker of an activated device (its listener duplicated, no connections yet).
    pub(super) fn new(dev: &Vsock, a: Activation) -> Result<Self> {
        let listener = dev
            .listener
            .try_clone()
            .map_err(|e| Error::io("dup the vsock listener", e))?;
        let mut queues = a.queues.into_iter();
        let (Some(rxq), Some(txq)) = (queues.next(), queues.next()) else {
            return Err(Error::Driver("vsock needs rx and tx queues".into()));
        };
        // Connections the host opened while the device was not active are served now; drop
        // nothing here.
        Ok(VsockWorker {
            mem: a.mem,
            rxq,
            txq,
            irq: a.irq,
            guest_cid: dev.guest_cid,
            uds_path: dev.uds_path.clone(),
            listener,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            next_id: 0,
            next_host_port: 1 << 30,
            tx_blocked: false,
            rx_starved: false,
            pkt: vec![0u8; MAX_PKT_PAYLOAD],
        })
    }

    fn token(id: u64) -> u64 {
        CONN_TOKEN_BASE + id
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn send_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        self.ctrl.push_back((key, op, flags));
    }

    /// Removes a connection (closing its host socket).
    fn remove(&mut self, ep: &Epoll, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.by_key.remove(&(c.local_port, c.peer_port));
            if c.interest.is_some() {
                let _ = ep.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    /// Resets a connection: RST to the guest, host socket closed.
    fn reset_conn(&mut self, ep: &Epoll, id: u64) {
        if let Some(c) = self.conns.get(&id) {
            let key = (c.local_port, c.peer_port);
            self.send_ctrl(key, OP_RST, 0);
        }
        self.remove(ep, id);
    }

    fn process_tx(&mut self, ep: &Epoll) -> Result<()> {
        self.tx_blocked = false;
        let mem = self.mem.clone();
        let mut used = false;
        for _ in 0..self.txq.size() {
            if self.ctrl.len() >= MAX_CONTROL_BACKLOG {
                self.tx_blocked = true;
                break;
            }
            let Some(chain) = pop(&mut self.txq, &mem)? else {
                break;
            };
            let head = chain.head_index();
            let parsed = match chain.reader(&mem) {
                Ok(mut r) => {
                    let mut h = [0u8; HDR_LEN];
                    if r.read_exact(&mut h).is_err() {
                        crate::warn_limited!(
                            "virtio-vsock: tx packet shorter than its header dropped"
                        );
                        None
                    } else {
                        let hdr = Header::parse(&h);
                        let len = hdr.len as usize;
                        if len > MAX_PKT_PAYLOAD || len > r.available_bytes() {
                            crate::warn_limited!(
                                len,
                                available = r.available_bytes(),
                                "virtio-vsock: tx packet length larger than its buffer or the maximum"
                            );
                            Some((hdr, None))
                        } else if r.read_exact(&mut self.pkt[..len]).is_err() {
                            Some((hdr, None))
                        } else {
                            Some((hdr, Some(len)))
                        }
                    }
                }
                Err(e) => {
                    crate::warn_limited!(error = %e, "virtio-vsock: bad tx descriptors");
                    None
                }
            };
            add_used(&mut self.txq, &mem, head, 0)?;
            used = true;
            match parsed {
                Some((hdr, Some(len))) => self.handle_packet(ep, &hdr, len),
                Some((hdr, None)) => {
                    // Malformed packet on a connection: reset it.
                    self.protocol_violation(ep, &hdr, "malformed packet");
                }
                None => {}
            }
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }

    fn protocol_violation(&mut self, ep: &Epoll, hdr: &Header, what: &str) {
        crate::warn_limited!(
            src_port = hdr.src_port,
            dst_port = hdr.dst_port,
            op = hdr.op,
            "virtio-vsock: {what}; connection reset"
        );
        let key = (hdr.dst_port, hdr.src_port);
        match self.by_key.get(&key).copied() {
            Some(id) => self.reset_conn(ep, id),
            None if hdr.op != OP_RST => self.send_ctrl(key, OP_RST, 0),
            None => {}
        }
    }

    fn handle_packet(&mut self, ep: &Epoll, hdr: &Header, len: usize) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            crate::debug_limited!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "virtio-vsock: packet with wrong CIDs dropped"
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.send_ctrl(key, OP_RST, 0);
            }
            return;
        }
        let Some(id) = self.by_key.get(&key).copied() else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(ep, hdr),
                OP_RST => {}
                _ => self.send_ctrl(key, OP_RST, 0),
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RST => self.remove(ep, id),
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                c.deadline = None;
                let line = format!("OK {}\n", c.local_port);
                for (i, b) in line.bytes().enumerate() {
                    c.to_host.insert(i, b);
                }
                c.prefix += line.len();
                if c.flush().is_err() {
                    self.reset_conn(ep, id);
                }
            }
            OP_RW if c.state == State::Established && c.guest_shut_send => {
                self.protocol_violation(ep, hdr, "data after the guest's SHUTDOWN SEND");
            }
            OP_RW if c.state == State::Established => {
                if c.guest_bytes_queued() + len > BUF_ALLOC as usize {
                    self.protocol_violation(ep, hdr, "guest sent more than its credit");
                    return;
                }
                let data = &self.pkt[..len];
                let res = if c.to_host.is_empty() {
                    // Common case: straight from the packet to the host socket.
                    c.write_direct(data)
                } else {
                    c.to_host.extend(data);
                    c.flush()
                };
                if res.is_err() {
                    self.reset_conn(ep, id);
                }
            }
            OP_SHUTDOWN => {
                let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
                if hdr.flags & both == both {
                    if c.to_host.is_empty() {
                        self.reset_conn(ep, id);
                    } else {
                        c.state = State::Draining;
                        c.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
                    }
                } else {
                    c.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                    if hdr.flags & SHUTDOWN_RCV != 0 {
                        c.guest_shut_rcv = true;
                        c.to_guest.clear();
                    }
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                let k = (c.local_port, c.peer_port);
                c.last_fwd_sent = c.fwd_cnt;
                self.send_ctrl(k, OP_CREDIT_UPDATE, 0);
            }
            OP_RW if c.state == State::Closing || c.state == State::Draining => {
                // Data after a shutdown: drop it.
            }
            _ => self.protocol_violation(ep, hdr, "unexpected operation for the connection state"),
        }
    }

    fn guest_connect(&mut self, ep: &Epoll, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::warn_limited!("virtio-vsock: too many connections; guest connect refused");
            self.send_ctrl(key, OP_RST, 0);
            return;
        }
        let mut path: OsString = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                if matches!(
                    e,
                    Error::Sys {
                        source: nix::Error::EACCES | nix::Error::EPERM,
                        ..
                    }
                ) {
                    // A host configuration problem, not the guest's doing.
                    crate::warn_limited!(port = hdr.dst_port, error = %e, "virtio-vsock: no permission to connect to the host socket; guest connect refused");
                } else {
                    crate::debug_limited!(port = hdr.dst_port, error = %e, "virtio-vsock: guest connect refused");
                }
                self.send_ctrl(key, OP_RST, 0);
                return;
            }
        };
        let id = self.new_id();
        let mut c = Conn::new(stream, hdr.dst_port, hdr.src_port, State::Established);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        self.conns.insert(id, c);
        self.by_key.insert(key, id);
        self.send_ctrl(key, OP_RESPONSE, 0);
        self.update_interest(ep, id);
    }

    fn accept(&mut self, ep: &Epoll) {
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    crate::warn_limited!(error = %e, "virtio-vsock: accept failed");
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_HOST || self.conns.len() >= MAX_CONNECTIONS {
                crate::warn_limited!("virtio-vsock: too many host connections; one refused");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.new_id();
            if ep
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, Self::token(id)),
                )
                .is_err()
            {
                continue;
            }
            self.pending.insert(
                id,
                Pending {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
        }
    }

    /// Reads a pending host connection's CONNECT line.
    fn pending_readable(&mut self, ep: &Epoll, id: u64) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE - p.line.len();
        let n = match p.stream.read(&mut buf[..room]) {
            Ok(0) => {
                self.drop_pending(ep, id);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return
            }
            Err(_) => {
                self.drop_pending(ep, id);
                return;
            }
        };
        p.line.extend_from_slice(&buf[..n]);
        let Some(nl) = p.line.iter().position(|&b| b == b'\n') else {
            if p.line.len() >= MAX_CONNECT_LINE {
                crate::warn_limited!("virtio-vsock: host sent no CONNECT line; closed");
                self.drop_pending(ep, id);
            }
            return;
        };
        let port = std::str::from_utf8(&p.line[..nl])
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|s| s.trim().parse::<u32>().ok());
        let rest = p.line[nl + 1..].to_vec();
        let Some(port) = port else {
            crate::warn_limited!("virtio-vsock: malformed CONNECT line from the host; closed");
            self.drop_pending(ep, id);
            return;
        };
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            let _ = ep.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        }
        // A host port not in use towards that guest port.
        let mut local = self.next_host_port;
        for _ in 0..1024 {
            local = local.wrapping_add(1).max(1 << 30);
            if !self.by_key.contains_key(&(local, port)) {
                break;
            }
        }
        self.next_host_port = local;
        let mut c = Conn::new(p.stream, local, port, State::Connecting);
        c.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
        c.to_guest.extend(rest);
        // The fd stays registered with its token; interest is recomputed below.
        c.interest = Some(EventSet::IN);
        self.conns.insert(id, c);
        self.by_key.insert((local, port), id);
        self.send_ctrl((local, port), OP_REQUEST, 0);
        self.update_interest(ep, id);
    }

    fn drop_pending(&mut self, ep: &Epoll, id: u64) {
        if let Some(p) = self.pending.remove(&id) {
            let _ = ep.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn conn_event(&mut self, ep: &Epoll, id: u64, ev: EventSet) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if ev.contains(EventSet::OUT) && c.flush().is_err() {
            self.reset_conn(ep, id);
            return;
        }
        if ev.contains(EventSet::IN)
            || ev.contains(EventSet::HANG_UP)
            || ev.contains(EventSet::ERROR)
        {
            self.read_host(ep, id);
        }
        if let Some(c) = self.conns.get_mut(&id) {
            if (ev.contains(EventSet::HANG_UP) || ev.contains(EventSet::ERROR)) && !c.hup {
                // Out of epoll (HUP is level-triggered and cannot be masked); `tick` reads
                // the rest.
                c.hup = true;
                if c.interest.take().is_some() {
                    let _ = ep.ctl(
                        ControlOperation::Delete,
                        c.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
            }
        }
    }

    fn read_host(&mut self, ep: &Epoll, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state != State::Established || c.host_eof || c.guest_shut_rcv {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        match c.fill(&mut buf) {
            Ok(true) => {}
            Ok(false) => c.host_eof = true,
            Err(e) => {
                crate::debug_limited!(error = %e, "virtio-vsock: host socket error; connection reset");
                self.reset_conn(ep, id);
            }
        }
    }

    fn update_interest(&mut self, ep: &Epoll, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.hup {
            return;
        }
        let mut want = EventSet::empty();
        if c.state == State::Established
            && !c.host_eof
            && !c.guest_shut_rcv
            && c.to_guest.len() < TO_GUEST_MAX
        {
            want |= EventSet::IN;
        }
        if !c.to_host.is_empty() {
            want |= EventSet::OUT;
        }
        let fd = c.stream.as_raw_fd();
        let token = Self::token(id);
        let res = match c.interest {
            Some(cur) if cur == want => return,
            Some(_) => ep.ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token)),
            None => ep.ctl(ControlOperation::Add, fd, EpollEvent::new(want, token)),
        };
        match res {
            Ok(()) => c.interest = Some(want),
            Err(e) => {
                crate::warn_limited!(error = %e, "virtio-vsock: epoll update failed; connection reset");
                self.reset_conn(ep, id);
            }
        }
    }

    /// Fills guest rx buffers: control packets first, then data.
    fn process_rx(&mut self) -> Result<()> {
        let mem = self.mem.clone();
        let mut used = false;
        let mut data_ids: VecDeque<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == State::Established && !c.to_guest.is_empty() && c.peer_credit() > 0
            })
            .map(|(&id, _)| id)
            .collect();
        for _ in 0..self.rxq.size() {
            if self.ctrl.is_empty() && data_ids.is_empty() {
                break;
            }
            let Some(chain) = pop(&mut self.rxq, &mem)? else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let mut w = match chain.writer(&mem) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                Ok(_) => {
                    crate::warn_limited!("virtio-vsock: rx buffer smaller than a header");
                    add_used(&mut self.rxq, &mem, head, 0)?;
                    used = true;
                    continue;
                }
                Err(e) => {
                    crate::warn_limited!(error = %e, "virtio-vsock: bad rx descriptors");
                    add_used(&mut self.rxq, &mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let mut written = 0usize;
            if let Some((key, op, flags)) = self.ctrl.pop_front() {
                let mut hdr = Header {
                    src_cid: HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: key.0,
                    dst_port: key.1,
                    type_: TYPE_STREAM,
                    op,
                    flags,
                    ..Header::default()
                };
                if let Some(c) = self.by_key.get(&key).and_then(|id| self.conns.get_mut(id)) {
                    hdr.buf_alloc = BUF_ALLOC;
                    hdr.fwd_cnt = c.fwd_cnt;
                    c.last_fwd_sent = c.fwd_cnt;
                }
                if w.write_all(&hdr.to_bytes()).is_ok() {
                    written = HDR_LEN;
                }
            } else if let Some(id) = data_ids.pop_front() {
                if let Some(c) = self.conns.get_mut(&id) {
                    let room = w.available_bytes() - HDR_LEN;
                    let n = c
                        .to_guest
                        .len()
                        .min(c.peer_credit())
                        .min(room)
                        .min(MAX_PKT_PAYLOAD);
                    let hdr = Header {
                        src_cid: HOST_CID,
                        dst_cid: self.guest_cid,
                        src_port: c.local_port,
                        dst_port: c.peer_port,
                        len: n as u32,
                        type_: TYPE_STREAM,
                        op: OP_RW,
                        flags: 0,
                        buf_alloc: BUF_ALLOC,
                        fwd_cnt: c.fwd_cnt,
                    };
                    let (a, b) = c.to_guest.as_slices();
                    let first = n.min(a.len());
                    let ok = w.write_all(&hdr.to_bytes()).is_ok()
                        && w.write_all(&a[..first]).is_ok()
                        && w.write_all(&b[..n - first]).is_ok();
                    if ok {
                        written = HDR_LEN + n;
                        c.to_guest.drain(..n);
                        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                        c.last_fwd_sent = c.fwd_cnt;
                        if !c.to_guest.is_empty() && c.peer_credit() > 0 {
                            data_ids.push_back(id);
                        }
                    }
                }
            }
            add_used(&mut self.rxq, &mem, head, written as u32)?;
            used = true;
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }

    /// Housekeeping after events: flushes, credit updates, shutdowns, timeouts, interest.
    fn housekeeping(&mut self, ep: &Epoll) {
        let now = Instant::now();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let key = (c.local_port, c.peer_port);
            if c.deadline.is_some_and(|d| now >= d) {
                crate::debug_limited!(local = key.0, peer = key.1, state = ?c.state, "virtio-vsock: connection timed out");
                self.reset_conn(ep, id);
                continue;
            }
            if c.hup && c.guest_shut_rcv {
                // The host hung up and the guest reads no more: nothing left to carry.
                c.host_eof = true;
            }
            if c.hup && c.state == State::Established && !c.host_eof && !c.guest_shut_rcv {
                let mut buf = [0u8; 16 * 1024];
                match c.fill(&mut buf) {
                    Ok(true) => {}
                    Ok(false) => c.host_eof = true,
                    Err(_) => {
                        self.reset_conn(ep, id);
                        continue;
                    }
                }
            }
            if !c.to_host.is_empty() && c.flush().is_err() {
                self.reset_conn(ep, id);
                continue;
            }
            if c.guest_shut_send && !c.shut_write_done && c.to_host.is_empty() {
                let _ = c.stream.shutdown(Shutdown::Write);
                c.shut_write_done = true;
            }
            if c.state == State::Draining && c.to_host.is_empty() {
                self.reset_conn(ep, id);
                continue;
            }
            if c.state == State::Established && c.host_eof && c.to_guest.is_empty() {
                if c.hup || c.guest_shut_send {
                    // Nothing flows either way any more: close.
                    c.state = State::Closing;
                    c.deadline = Some(now + HANDSHAKE_TIMEOUT);
                    self.send_ctrl(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                    continue;
                }
                if !c.host_shut_sent {
                    // A half-close (shutdown(SHUT_WR)) on the host side: the guest reads EOF
                    // and can still answer (an exit status after its input ended). Telling
                    // it "both" would make Linux reset the connection and drop the answer.
                    c.host_shut_sent = true;
                    self.send_ctrl(key, OP_SHUTDOWN, SHUTDOWN_SEND);
                }
            }
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.state == State::Established
                && c.fwd_cnt.wrapping_sub(c.last_fwd_sent) >= BUF_ALLOC / 4
            {
                c.last_fwd_sent = c.fwd_cnt;
                self.send_ctrl(key, OP_CREDIT_UPDATE, 0);
            }
            self.update_interest(ep, id);
        }
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            crate::debug_limited!(
                "virtio-vsock: host connection sent no CONNECT line in time; closed"
            );
            self.drop_pending(ep, id);
        }
    }
}

impl Worker for VsockWorker {
    fn init(&mut self, ep: &Epoll) -> Result<()> {
        ep.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )
        .map_err(|e| Error::io("epoll add vsock listener", e))
    }

    fn queue_notified(&mut self, ep: &Epoll, index: usize) -> Result<()> {
        match index {
            RX_QUEUE => {
                self.rx_starved = false;
                Ok(())
            }
            TX_QUEUE => self.process_tx(ep),
            _ => Ok(()),
        }
    }

    fn backend_event(&mut self, ep: &Epoll, token: u64, events: EventSet) -> Result<()> {
        if token == LISTENER_TOKEN {
            self.accept(ep);
        } else if let Some(id) = token.checked_sub(CONN_TOKEN_BASE) {
            if self.pending.contains_key(&id) {
                self.pending_readable(ep, id);
            } else {
                self.conn_event(ep, id, events);
            }
        }
        Ok(())
    }

    fn tick(&mut self, ep: &Epoll) -> Result<()> {
        self.housekeeping(ep);
        if !self.rx_starved {
            self.process_rx()?;
        }
        if self.tx_blocked && self.ctrl.len() < MAX_CONTROL_BACKLOG {
            self.process_tx(ep)?;
            if !self.rx_starved {
                self.process_rx()?;
            }
        }
        Ok(())
    }

    fn timeout_ms(&self) -> i32 {
        let waiting =
            !self.pending.is_empty() || self.conns.values().any(|c| c.deadline.is_some() || c.hup);
        if waiting {
            200
        } else {
            -1
        }
    }
}

/// Connects to a unix socket without blocking (a listener with a full backlog is a refusal,
/// not a stall of the device).
fn connect_nonblocking(path: &Path) -> Result<UnixStream> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket", e))?;
    let addr = UnixAddr::new(path).map_err(|e| Error::sys("unix socket address", e))?;
    socket::connect(fd.as_raw_fd(), &addr)
        .map_err(|e| Error::sys(format!("connect {}", path.display()), e))?;
    Ok(UnixStream::from(fd))
}
