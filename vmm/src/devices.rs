//! The virtio-mmio devices of a spec (bulkhead-virtio), in the order disks, vsock, net, rng:
//! device i at `0xd000_0000 + i * 0x1000`, GSI `5 + i`, interrupts through KVM irqfds and queue
//! notifications through KVM ioeventfds on QueueNotify (datamatch = queue index).
//!
//! Every host resource (disk files, the vsock listener, the tap) is opened here, before the
//! process confines itself.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bulkhead_virtio::{
    Block, DeviceContext, Interrupt, MmioTransport, Net, Rng, VirtioDevice, Vsock,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::MmioWindow;
use crate::bus::Bus;
use crate::spec::VmSpec;
use crate::GuestMemory;

/// Offset of the virtio-mmio QueueNotify register.
const QUEUE_NOTIFY: u64 = 0x50;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("opening disk {path}: {source}")]
    OpenDisk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "disk {path} is in use by another VM or domain start (its lock stayed taken for 10 s)"
    )]
    DiskInUse { path: PathBuf },
    #[error("disk {path}: {source}")]
    Block {
        path: PathBuf,
        source: bulkhead_virtio::Error,
    },
    #[error("vsock on {path}: {source}")]
    Vsock {
        path: PathBuf,
        source: bulkhead_virtio::Error,
    },
    #[error("opening tap {name}: {source}")]
    Tap {
        name: String,
        source: std::io::Error,
    },
    #[error("net device on tap {name}: {source}")]
    Net {
        name: String,
        source: bulkhead_virtio::Error,
    },
    #[error("virtio-mmio transport for device {index}: {source}")]
    Transport {
        index: usize,
        source: bulkhead_virtio::Error,
    },
    #[error("device {index} interrupt eventfd: {source}")]
    EventFd {
        index: usize,
        source: std::io::Error,
    },
    #[error("KVM_IRQFD for device {index} (GSI {gsi}): {source}")]
    Irqfd {
        index: usize,
        gsi: u32,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// A device's interrupt: an eventfd KVM injects as an edge on the device's GSI.
struct IrqFd(EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The devices of a spec, opened but not yet on a bus.
pub struct OpenedDevices {
    pub devices: Vec<(String, Box<dyn VirtioDevice>)>,
}

/// Takes an exclusive `flock` on a writable disk for as long as the VMM keeps it open: the
/// sandbox launcher takes the same lock on a private volume image before it mounts one, so
/// one volume is never written by two kernels at once. Waits up to 10 s for a previous
/// holder (a loop device being released).
fn lock_disk(file: &std::fs::File, path: &std::path::Path) -> Result<(), DeviceError> {
    use std::os::fd::AsRawFd;
    for _ in 0..500 {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(DeviceError::OpenDisk {
                path: path.to_path_buf(),
                source: e,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(DeviceError::DiskInUse {
        path: path.to_path_buf(),
    })
}

/// Opens every host resource the spec's devices need and builds the device models.
pub fn open_devices(spec: &VmSpec) -> Result<OpenedDevices, DeviceError> {
    let mut devices: Vec<(String, Box<dyn VirtioDevice>)> = Vec::new();
    for d in &spec.disks {
        let file = OpenOptions::new()
            .read(true)
            .write(!d.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(&d.path)
            .map_err(|source| DeviceError::OpenDisk {
                path: d.path.clone(),
                source,
            })?;
        if !d.read_only {
            lock_disk(&file, &d.path)?;
        }
        let blk = Block::new(file, d.read_only).map_err(|source| DeviceError::Block {
            path: d.path.clone(),
            source,
        })?;
        devices.push((format!("block {}", d.path.display()), Box::new(blk)));
    }
    if let Some(v) = &spec.vsock {
        let dev =
            Vsock::new(v.guest_cid, v.uds_path.clone()).map_err(|source| DeviceError::Vsock {
                path: v.uds_path.clone(),
                source,
            })?;
        devices.push((format!("vsock cid {}", v.guest_cid), Box::new(dev)));
    }
    for n in &spec.nets {
        let tap = match n.fd {
            Some(fd) => inherited_tap(fd),
            None => bulkhead_virtio::net::open_tap(&n.tap),
        }
        .map_err(|source| DeviceError::Tap {
            name: n.tap.clone(),
            source,
        })?;
        let dev = Net::new(tap, n.mac).map_err(|source| DeviceError::Net {
            name: n.tap.clone(),
            source,
        })?;
        devices.push((format!("net {}", n.tap), Box::new(dev)));
    }
    if spec.rng {
        devices.push(("rng".into(), Box::new(Rng::new())));
    }
    Ok(OpenedDevices { devices })
}

nix::ioctl_read_bad!(tun_get_iff, libc::TUNGETIFF, libc::ifreq);

/// Takes ownership of the inherited tap descriptor `fd` after checking that it is open and
/// is a tap attached with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (TUNGETIFF); made
/// close-on-exec.
pub fn inherited_tap(fd: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "stdin, stdout and stderr are not taps",
        ));
    }
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(std::io::Error::from)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq through the pointer, which points to a live local;
    // on a descriptor that is not a tun device the kernel fails with EBADFD/EINVAL/ENOTTY and
    // writes nothing.
    unsafe { tun_get_iff(fd, &mut req) }.map_err(std::io::Error::from)?;
    // SAFETY: reading the flags member of the union TUNGETIFF filled in.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = bulkhead_virtio::net::TAP_FLAGS;
    if flags & want != want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the inherited tap has flags {flags:#x}, not IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"),
        ));
    }
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(std::io::Error::from)?;
    // SAFETY: the fd is open and a tap (checked above), not a standard stream, and nothing
    // else in this process refers to it: it was inherited for exactly this purpose and the
    // spec names it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What wiring the devices produced.
pub struct WiredDevices {
    /// The windows in device order (for the command line and the DSDT).
    pub windows: Vec<MmioWindow>,
    /// The irqfd and ioeventfd eventfds KVM holds; kept for the VM's life.
    pub eventfds: Vec<EventFd>,
    /// How many queue notifications go through KVM ioeventfds (0 if KVM refused them).
    pub ioeventfds: usize,
    /// The transports (also on the MMIO bus), to start their worker threads once confined.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

/// Puts each device behind a virtio-mmio transport on `mmio` at its window, with an irqfd and
/// ioeventfds. `thread_filter` is the seccomp program each device worker installs.
pub fn wire_devices(
    opened: OpenedDevices,
    vm_fd: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    thread_filter: Option<Arc<seccompiler::BpfProgram>>,
) -> Result<WiredDevices, DeviceError> {
    let mut wired = WiredDevices {
        windows: Vec::new(),
        eventfds: Vec::new(),
        ioeventfds: 0,
        transports: Vec::new(),
    };
    for (index, (what, dev)) in opened.devices.into_iter().enumerate() {
        let w = MmioWindow::for_device(index);
        let evt = EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)
            .map_err(|source| DeviceError::EventFd { index, source })?;
        vm_fd
            .register_irqfd(&evt, w.gsi)
            .map_err(|source| DeviceError::Irqfd {
                index,
                gsi: w.gsi,
                source,
            })?;
        let irq = IrqFd(
            evt.try_clone()
                .map_err(|source| DeviceError::EventFd { index, source })?,
        );
        wired.eventfds.push(evt);
        let ctx = DeviceContext {
            mem: mem.clone(),
            irq: Arc::new(irq),
            thread_filter: thread_filter.clone(),
        };
        let transport = MmioTransport::new(dev, ctx)
            .map_err(|source| DeviceError::Transport { index, source })?;
        for (queue, qevt) in transport.queue_events() {
            let addr = IoEventAddress::Mmio(w.base + QUEUE_NOTIFY);
            match vm_fd.register_ioevent(qevt, &addr, queue) {
                Ok(()) => wired.ioeventfds += 1,
                Err(e) => tracing::warn!(
                    device = index,
                    queue,
                    "KVM_IOEVENTFD refused ({e}); QueueNotify goes through the MMIO exit"
                ),
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(w.base, w.size, transport.clone())?;
        wired.transports.push(transport);
        tracing::debug!(
            device = index,
            %what,
            base = format_args!("{:#x}", w.base),
            gsi = w.gsi,
            "virtio-mmio device"
        );
        wired.windows.push(w);
    }
    Ok(wired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn inherited_tap_refuses_what_is_not_a_tap() {
        assert!(inherited_tap(1).is_err());
        let (r, w) = nix::unistd::pipe().unwrap();
        let raw = r.into_raw_fd();
        assert!(inherited_tap(raw).is_err());
        // Not taken: still ours to close.
        // SAFETY: raw is the pipe's read end, which inherited_tap did not take.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        drop(w);
    }
}
