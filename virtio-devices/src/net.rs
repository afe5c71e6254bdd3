//! virtio-net (virtio 1.x section 5.1) on a host tap device opened by the caller with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
//!
//! No offloads are offered, so every frame carries a zero `virtio_net_hdr_v1` (12 bytes, the
//! VERSION_1 layout); the tap's vnet header size is set to 12 so frames pass through
//! unchanged. Headers from the guest are zeroed before they reach the tap (a guest cannot ask
//! the host kernel for checksum or segmentation work it never negotiated). One frame per rx
//! buffer (no mergeable buffers); a frame larger than the guest's buffer is dropped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::util::{add_used, pop, read_config_bytes, unpop};
use crate::worker::FIRST_BACKEND_TOKEN;
use crate::{
    device_type, features, Activation, Error, GuestMemory, IrqLine, Result, VirtioDevice, Worker,
};

/// The tap flags this device needs: Ethernet frames, no packet info, a virtio-net header
/// in front of each frame.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// Opens the tap `name` in the calling thread's network namespace with [`TAP_FLAGS`]
/// (the kernel creates it when it does not exist and the caller may).
pub fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name must be 1..15 bytes",
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads (and updates) one ifreq through the pointer, which points to a
    // live, NUL-terminated (name shorter than IFNAMSIZ) local; the fd is a tun fd we own.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(std::io::Error::from)?;
    Ok(OwnedFd::from(tun))
}

pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Size of struct virtio_net_hdr_v1.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame (without the header) accepted in either direction.
pub const MAX_FRAME: usize = 65535;

const TAP_TOKEN: u64 = FIRST_BACKEND_TOKEN;

nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, libc::c_int);

/// The network device.
pub struct Net {
    tap: OwnedFd,
    mac: [u8; 6],
    queue_sizes: [u16; 2],
}

impl Net {
    /// Takes a tap opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; sets its vnet header size
    /// to 12 bytes and makes it nonblocking.
    pub fn new(tap: OwnedFd, mac: [u8; 6]) -> Result<Self> {
        let size: libc::c_int = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which points to a live
        // local; the fd is owned by us for the duration of the call.
        unsafe { tun_set_vnet_hdr_sz(tap.as_raw_fd(), &size) }.map_err(|e| {
            Error::sys(
                "TUNSETVNETHDRSZ on the tap (was it opened with IFF_VNET_HDR?)",
                e,
            )
        })?;
        let flags = fcntl(tap.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| Error::sys("F_GETFL on the tap", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(tap.as_raw_fd(), FcntlArg::F_SETFL(flags))
            .map_err(|e| Error::sys("F_SETFL on the tap", e))?;
        Ok(Self::from_frames_fd(tap, mac))
    }

    /// Uses `fd` as the tap without any tap setup: every read and write of `fd` must carry one
    /// frame with its 12-byte header (a nonblocking `SOCK_SEQPACKET` socket works). For tests
    /// and fuzzing.
    #[doc(hidden)]
    pub fn from_frames_fd(fd: OwnedFd, mac: [u8; 6]) -> Self {
        Net {
            tap: fd,
            mac,
            queue_sizes: [QUEUE_SIZE; 2],
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }
    fn kind(&self) -> &'static str {
        "net"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | VIRTIO_NET_F_MAC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<Box<dyn Worker>> {
        let tap = self
            .tap
            .try_clone()
            .map_err(|e| Error::io("dup the tap descriptor", e))?;
        let mut queues = a.queues.into_iter();
        let (Some(rxq), Some(txq)) = (queues.next(), queues.next()) else {
            return Err(Error::Driver("net needs rx and tx queues".into()));
        };
        Ok(Box::new(NetWorker {
            mem: a.mem,
            rxq,
            txq,
            irq: a.irq,
            tap,
            frame: vec![0u8; NET_HDR_LEN + MAX_FRAME],
            frame_len: 0,
            txbuf: vec![0u8; NET_HDR_LEN + MAX_FRAME],
            rx_starved: false,
            tap_failed: false,
            tap_interest: None,
        }))
    }
}

struct NetWorker {
    mem: GuestMemory,
    rxq: Queue,
    txq: Queue,
    irq: Arc<IrqLine>,
    tap: OwnedFd,
    /// A frame read from the tap waiting for an rx buffer (frame_len 0: none).
    frame: Vec<u8>,
    frame_len: usize,
    txbuf: Vec<u8>,
    rx_starved: bool,
    tap_failed: bool,
    tap_interest: Option<EventSet>,
}

impl NetWorker {
    fn process_rx(&mut self) -> Result<()> {
        let mem = self.mem.clone();
        let mut used = false;
        for _ in 0..self.rxq.size() {
            if self.frame_len == 0 {
                match nix::unistd::read(self.tap.as_raw_fd(), &mut self.frame) {
                    Ok(n) if n > NET_HDR_LEN => self.frame_len = n,
                    Ok(_) => continue,
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        crate::error_limited!(error = %e, "virtio-net: tap read failed; receive stopped");
                        self.tap_failed = true;
                        break;
                    }
                }
            }
            let Some(chain) = pop(&mut self.rxq, &mem)? else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let len = self.frame_len;
            match chain.writer(&mem) {
                Ok(mut w) if w.available_bytes() >= len => {
                    // No offloads were negotiated (and none set on the tap): the header
                    // carries nothing but num_buffers = 1, which the tap leaves alone.
                    self.frame[..10].fill(0);
                    self.frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                    let wrote = std::io::Write::write_all(&mut w, &self.frame[..len]).is_ok();
                    self.frame_len = 0;
                    add_used(
                        &mut self.rxq,
                        &mem,
                        head,
                        if wrote { len as u32 } else { 0 },
                    )?;
                    used = true;
                }
                Ok(_) => {
                    crate::debug_limited!(
                        len,
                        "virtio-net: frame larger than the guest's buffer dropped"
                    );
                    self.frame_len = 0;
                    unpop(&mut self.rxq);
                }
                Err(e) => {
                    crate::warn_limited!(error = %e, "virtio-net: bad rx descriptors");
                    add_used(&mut self.rxq, &mem, head, 0)?;
                    used = true;
                }
            }
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }

    fn process_tx(&mut self) -> Result<()> {
        let mem = self.mem.clone();
        let mut used = false;
        for _ in 0..self.txq.size() {
            let Some(chain) = pop(&mut self.txq, &mem)? else {
                break;
            };
            let head = chain.head_index();
            match chain.reader(&mem) {
                Ok(mut r) => {
                    let total = r.available_bytes();
                    if total <= NET_HDR_LEN || total > self.txbuf.len() {
                        crate::warn_limited!(
                            total,
                            "virtio-net: tx frame with a bad length dropped"
                        );
                    } else if std::io::Read::read_exact(&mut r, &mut self.txbuf[..total]).is_ok() {
                        self.txbuf[..NET_HDR_LEN].fill(0);
                        match nix::unistd::write(&self.tap, &self.txbuf[..total]) {
                            Ok(_) => {}
                            Err(e) => {
                                crate::debug_limited!(error = %e, "virtio-net: tap write failed; frame dropped")
                            }
                        }
                    }
                }
                Err(e) => crate::warn_limited!(error = %e, "virtio-net: bad tx descriptors"),
            }
            add_used(&mut self.txq, &mem, head, 0)?;
            used = true;
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }

    fn update_interest(&mut self, ep: &Epoll) -> Result<()> {
        let want = if self.rx_starved || self.tap_failed {
            EventSet::empty()
        } else {
            EventSet::IN
        };
        let op = match self.tap_interest {
            Some(cur) if cur == want => return Ok(()),
            Some(_) => ControlOperation::Modify,
            None => ControlOperation::Add,
        };
        ep.ctl(op, self.tap.as_raw_fd(), EpollEvent::new(want, TAP_TOKEN))
            .map_err(|e| Error::io("epoll update for the tap", e))?;
        self.tap_interest = Some(want);
        Ok(())
    }
}

impl Worker for NetWorker {
    fn init(&mut self, ep: &Epoll) -> Result<()> {
        self.update_interest(ep)
    }

    fn queue_notified(&mut self, _ep: &Epoll, index: usize) -> Result<()> {
        match index {
            RX_QUEUE => {
                self.rx_starved = false;
                self.process_rx()
            }
            TX_QUEUE => self.process_tx(),
            _ => Ok(()),
        }
    }

    fn backend_event(&mut self, _ep: &Epoll, token: u64, _events: EventSet) -> Result<()> {
        if token == TAP_TOKEN {
            self.process_rx()?;
        }
        Ok(())
    }

    fn tick(&mut self, ep: &Epoll) -> Result<()> {
        self.update_interest(ep)
    }
}
