//! virtio-mmio (version 2) transport and virtio devices for the Bulkhead KVM monitor.
//!
//! No KVM dependency: a device runs on a plain [`GuestMemory`], so everything here is testable
//! (and fuzzable) without a VM. The monitor (`bulkhead-vmm`) puts each [`MmioTransport`] on its
//! MMIO bus and implements [`Interrupt`] with a KVM irqfd.
//!
//! Every value the guest controls (descriptor addresses and lengths, chains, ring indices,
//! request headers, register and config offsets) is checked. A malformed request is dropped
//! (completed with an error status where the device has one) and logged with `tracing`
//! through a per-call-site rate limit ([`ratelimit`]: a guest can repeat anything forever); a
//! broken queue (ring index beyond the queue size, head index out of range, rings outside
//! memory) makes the device report `DEVICE_NEEDS_RESET` and stop serving until the driver
//! resets it. Work per notification is bounded by the queue size (virtio-queue bounds each
//! chain by the queue size too).
//!
//! Queues are the rust-vmm `virtio-queue` crate (split virtqueues, `Reader`/`Writer` over
//! descriptor chains); the transport, the worker loop and the devices are our own code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub mod block;
pub mod mmio;
pub mod net;
pub mod ratelimit;
pub mod rng;
mod util;
pub mod vsock;
mod worker;

pub use block::Block;
pub use mmio::MmioTransport;
pub use net::Net;

pub use rng::Rng;
pub use vsock::Vsock;

pub use worker::Worker;

/// For the `*_limited!` macros.
#[doc(hidden)]
pub use tracing as __tracing;

/// Guest memory type used everywhere.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// A device on the MMIO bus. `offset` is relative to the device's base; `data.len()` is 1, 2, 4
/// or 8.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// How a device raises its interrupt (the VMM implements it with a KVM irqfd EventFd,
/// edge-triggered GSI).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

/// Per-device context given at construction.
pub struct DeviceContext {
    pub mem: GuestMemory,
    pub irq: Arc<dyn Interrupt>,
    /// Seccomp program the device's worker thread installs first thing (None in unit tests/fuzz).
    pub thread_filter: Option<Arc<seccompiler::BpfProgram>>,
}

/// virtio device ids (virtio 1.x, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
}

/// Feature bits common to every device.
pub mod features {
    /// VIRTIO_F_VERSION_1: the modern (virtio 1.x) interface. Every device offers it and the
    /// transport refuses FEATURES_OK without it.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_RING_F_INDIRECT_DESC.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
}

/// Interrupt status bits of the virtio-mmio InterruptStatus register.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The interrupt line of one device plus its InterruptStatus register, shared between the
/// transport (which the vCPU reads and acknowledges) and the device's worker.
pub struct IrqLine {
    status: AtomicU32,
    irq: Arc<dyn Interrupt>,
}

impl IrqLine {
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        IrqLine {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Signals "used buffers added".
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// Signals a configuration change (also used with DEVICE_NEEDS_RESET).
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            crate::warn_limited!(error = %e, "virtio: cannot trigger the interrupt");
        }
    }

    /// Current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    /// One queue per `queue_max_sizes()` entry, as the driver configured it (a queue the driver
    /// did not enable has `ready() == false`).
    pub queues: Vec<virtio_queue::Queue>,
    pub irq: Arc<IrqLine>,
    /// Features the driver acknowledged (a subset of the device's).
    pub acked_features: u64,
}

/// A virtio device model behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device id (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Short name used for the worker thread ("virtio-<kind>") and logs.
    fn kind(&self) -> &'static str;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (include [`features::VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::debug_limited!(
            kind = self.kind(),
            offset,
            len = data.len(),
            "virtio: config write ignored"
        );
    }
    /// Builds the worker that serves the queues. Called once per activation; the transport
    /// runs it on a thread named "virtio-<kind>" (or inline in tests).
    fn activate(&mut self, activation: Activation) -> Result<Box<dyn Worker>, Error>;
    /// Returns the device to its initial state after the worker stopped (default: nothing to do,
    /// the worker owned all per-activation state).
    fn reset(&mut self) {}
}

/// Errors of this crate. A worker error makes the device report DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtio queue: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("guest driver error: {0}")]
    Driver(String),
    #[error("worker thread: {0}")]
    Worker(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
