//! One bridged connection: its state machine (connecting, established, closing, draining),
//! the credit counters of both directions, and the bounded buffers between the guest and
//! the host socket with the reads and writes that fill and drain them.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

/// Our receive buffer per connection (guest -> host bytes not yet written to the host socket),
/// advertised to the guest as buf_alloc.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Bytes read from a host socket waiting to go to the guest, per connection.
pub const TO_GUEST_MAX: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting,
    Established,
    /// We sent SHUTDOWN(both) after the host closed; waiting for the guest's RST.
    Closing,
    /// The guest shut down both directions; we finish writing its data, then RST.
    Draining,
}

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) local_port: u32,
    pub(super) peer_port: u32,
    pub(super) state: State,
    pub(super) deadline: Option<Instant>,
    /// Peer credit (from the guest's headers).
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    pub(super) tx_cnt: u32,
    /// Guest bytes written to the host socket.
    pub(super) fwd_cnt: u32,
    /// fwd_cnt last told to the guest.
    pub(super) last_fwd_sent: u32,
    /// Bytes for the host: `prefix` control bytes (our "OK ..." line) then guest data.
    pub(super) to_host: VecDeque<u8>,
    pub(super) prefix: usize,
    pub(super) to_guest: VecDeque<u8>,
    pub(super) host_eof: bool,
    /// The guest will send no more (SHUTDOWN SEND): the host socket's write side is shut once
    /// the buffered data is written.
    pub(super) guest_shut_send: bool,
    /// The guest will receive no more (SHUTDOWN RCV): host data is no longer read.
    pub(super) guest_shut_rcv: bool,
    /// EPOLLHUP seen: the fd is out of epoll, read in `tick` while there is room.
    pub(super) hup: bool,
    pub(super) shut_write_done: bool,
    /// We told the guest the host sends no more (SHUTDOWN SEND, after a half-close): the
    /// guest may still send.
    pub(super) host_shut_sent: bool,
    pub(super) interest: Option<EventSet>,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            deadline: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            to_host: VecDeque::new(),
            prefix: 0,
            to_guest: VecDeque::new(),
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            hup: false,
            shut_write_done: false,
            host_shut_sent: false,
            interest: None,
        }
    }

    /// Bytes the guest can still receive.
    pub(super) fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        if in_flight > self.peer_buf_alloc {
            0
        } else {
            (self.peer_buf_alloc - in_flight) as usize
        }
    }

    pub(super) fn guest_bytes_queued(&self) -> usize {
        self.to_host.len() - self.prefix
    }

    /// Writes what it can of `to_host`. Err: the host socket is broken.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(std::io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    let ctl = n.min(self.prefix);
                    self.prefix -= ctl;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ctl) as u32);
                    self.to_host.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes guest data while nothing is queued; what the socket does not take is queued.
    pub(super) fn write_direct(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(std::io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    data = &data[n..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Reads from the host socket into `to_guest` while there is room. Ok(false) on EOF.
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        while self.to_guest.len() < TO_GUEST_MAX {
            let room = (TO_GUEST_MAX - self.to_guest.len()).min(buf.len());
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.to_guest.extend(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credit_never_wraps_into_a_huge_window() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 1, 2, State::Established);
        c.peer_buf_alloc = 100;
        c.tx_cnt = 30;
        c.peer_fwd_cnt = 10;
        assert_eq!(c.peer_credit(), 80);
        // Counters wrap around u32.
        c.tx_cnt = 5;
        c.peer_fwd_cnt = u32::MAX - 4;
        assert_eq!(c.peer_credit(), 90);
        // A guest claiming it consumed more than was sent gets no extra credit.
        c.tx_cnt = 10;
        c.peer_fwd_cnt = 20;
        assert_eq!(c.peer_credit(), 0);
        c.peer_fwd_cnt = 0;
        c.tx_cnt = 150;
        assert_eq!(c.peer_credit(), 0);
    }
}
