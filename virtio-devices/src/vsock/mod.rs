//! virtio-vsock (virtio 1.x section 5.10), bridged to host unix sockets the way Firecracker's
//! "hybrid" vsock is (our own implementation of that model):
//!
//! - Guest connects to (CID 2, port P): the device connects to the host unix socket
//!   `<uds_path>_<P>`; if that fails the guest gets RST.
//! - Host connects to `<uds_path>` (the device listens there), writes `CONNECT <port>\n`, gets
//!   `OK <hostport>\n` once the guest accepted, then the stream is bridged to guest port
//!   `<port>`. If the guest refuses, the host connection is closed.
//!
//! Stream sockets only. Credit flow control per the spec in both directions, with bounded
//! buffers: per connection at most [`BUF_ALLOC`] bytes from the guest waiting for the host
//! socket (a guest that sends beyond the credit we gave it is reset) and at most
//! [`TO_GUEST_MAX`] bytes read from the host waiting for guest buffers or credit; at most
//! [`MAX_CONNECTIONS`] connections.
//!
//! The code: `packet` holds the header and the protocol constants, `connection` one
//! bridged connection with its credit and buffers, `muxer` the worker that multiplexes the
//! queues and the host sockets; this module holds the device itself.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::util::read_config_bytes;
use crate::{device_type, features, Activation, Error, Result, VirtioDevice, Worker};

mod connection;
mod muxer;
mod packet;

pub use connection::{BUF_ALLOC, TO_GUEST_MAX};
pub use muxer::{
    HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_CONTROL_BACKLOG, MAX_PENDING_HOST,
};
pub use packet::{
    Header, HDR_LEN, HOST_CID, MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

use muxer::VsockWorker;

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// The vsock device: configuration plus the host listener (kept across resets).
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    queue_sizes: [u16; 3],
}

impl Vsock {
    /// Listens on `uds_path` (a stale socket file nobody listens on is replaced) for host
    /// connections; guest connections go to `<uds_path>_<port>`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(Error::Driver(format!(
                "guest CID {guest_cid} is reserved or out of range (3..2^32-1)"
            )));
        }
        if uds_path.exists() {
            if UnixStream::connect(&uds_path).is_ok() {
                return Err(Error::io(
                    format!("vsock socket {}", uds_path.display()),
                    std::io::Error::new(ErrorKind::AddrInUse, "another process listens there"),
                ));
            }
            std::fs::remove_file(&uds_path)
                .map_err(|e| Error::io(format!("remove stale {}", uds_path.display()), e))?;
        }
        let listener = UnixListener::bind(&uds_path)
            .map_err(|e| Error::io(format!("listen on {}", uds_path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("nonblocking listener", e))?;
        Ok(Vsock {
            guest_cid,
            uds_path,
            listener,
            queue_sizes: [QUEUE_SIZE; 3],
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    fn kind(&self) -> &'static str {
        "vsock"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        features::VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<Box<dyn Worker>> {
        Ok(Box::new(VsockWorker::new(self, a)?))
    }
}
