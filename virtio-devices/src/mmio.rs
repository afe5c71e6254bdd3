//! virtio-mmio transport, version 2 ("modern"), virtio 1.x section 4.2.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::util::clone_queue;
use crate::worker::{InlineWorker, WorkerThread};
use crate::{
    features, Activation, DeviceContext, Error, GuestMemory, IrqLine, Result, VirtioDevice,
};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("BLKH").
pub const VENDOR_ID: u32 = 0x484b_4c42;
/// Size of one device window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

enum Running {
    Stopped,
    /// On `MmioTransport::thread`.
    Thread,
    Inline(InlineWorker),
}

/// virtio-mmio (version 2, "modern") transport around one device; implements
/// [`crate::MmioDevice`].
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    irq: Arc<IrqLine>,
    thread_filter: Option<Arc<seccompiler::BpfProgram>>,
    /// Runs the worker; started by [`MmioTransport::start_worker_thread`] or at the first
    /// activation (never when inline).
    thread: Option<WorkerThread>,
    inline: bool,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    needs_reset: Arc<AtomicBool>,
    running: Running,
}

impl MmioTransport {
    /// Wraps `device`. Fails only if the queue eventfds cannot be created.
    pub fn new(device: Box<dyn VirtioDevice>, ctx: DeviceContext) -> Result<Self> {
        Self::build(device, ctx, false)
    }

    /// Starts the device's worker thread now rather than at the first activation, which runs
    /// on the vCPU thread that writes DRIVER_OK. A thread inherits its creator's namespaces,
    /// credentials and seccomp filter: the VMM calls this once it is confined and before any
    /// vCPU runs, so that the vCPU filter need not allow thread creation nor anything a worker
    /// does. The worker installs `DeviceContext::thread_filter` itself. Idempotent; does
    /// nothing for an inline transport.
    pub fn start_worker_thread(&mut self) -> Result<()> {
        if self.thread.is_none() && !self.inline {
            self.thread = Some(WorkerThread::spawn(
                self.device.kind(),
                self.thread_filter.clone(),
                self.irq.clone(),
                self.needs_reset.clone(),
            )?);
        }
        Ok(())
    }

    fn build(device: Box<dyn VirtioDevice>, ctx: DeviceContext, inline: bool) -> Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max)?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::io("eventfd", e))?);
        }
        Ok(MmioTransport {
            device,
            mem: ctx.mem,
            irq: Arc::new(IrqLine::new(ctx.irq)),
            thread_filter: ctx.thread_filter,
            thread: None,
            inline,
            queues,
            queue_evts,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            needs_reset: Arc::new(AtomicBool::new(false)),
            running: Running::Stopped,
        })
    }

    /// Like [`MmioTransport::new`] but runs the device without a thread: a QueueNotify write
    /// is served before it returns, and backend fds are served by
    /// [`MmioTransport::poll_backends`]. For tests and fuzzing.
    pub fn new_inline(device: Box<dyn VirtioDevice>, ctx: DeviceContext) -> Result<Self> {
        Self::build(device, ctx, true)
    }

    /// The queue notification eventfds, for the VMM to register as KVM ioeventfds on
    /// QueueNotify (offset 0x50) with the queue index as datamatch.
    pub fn queue_events(&self) -> Vec<(u32, &EventFd)> {
        self.queue_evts
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u32, e))
            .collect()
    }

    /// virtio device id of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        let mut s = self.status;
        if self.needs_reset.load(Ordering::SeqCst) {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Whether the device reported an unrecoverable driver error.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        !matches!(self.running, Running::Stopped)
    }

    /// Inline mode only: serves ready backend fds once without blocking.
    pub fn poll_backends(&mut self) {
        if let Running::Inline(w) = &mut self.running {
            if let Err(e) = w.poll_backends() {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &Error) {
        crate::error_limited!(device = self.device.kind(), error = %e, "virtio: device failed; it needs a reset");
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.irq.signal_config();
        }
    }

    fn device_features(&self) -> u64 {
        self.device.features() | features::VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Thread => {
                if let Some(t) = &mut self.thread {
                    t.finish();
                }
            }
            Running::Inline(_) | Running::Stopped => {}
        }
        for q in &mut self.queues {
            q.reset();
            q.set_next_avail(0);
            q.set_next_used(0);
        }
        for e in &self.queue_evts {
            let _ = e.read();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.needs_reset.store(false, Ordering::SeqCst);
        self.irq.clear();
        self.device.reset();
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            crate::warn_limited!(
                device = self.device.kind(),
                old,
                value,
                "virtio-mmio: driver cleared status bits without a reset; ignored"
            );
            return;
        }
        let mut new = value & 0xff;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device_features();
            let bad = self.driver_features & !offered;
            if bad != 0 || self.driver_features & features::VERSION_1 == 0 {
                crate::warn_limited!(
                    device = self.device.kind(),
                    driver_features = self.driver_features,
                    offered,
                    "virtio: driver accepted features the device does not offer, or not VERSION_1; FEATURES_OK refused"
                );
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                crate::warn_limited!(
                    device = self.device.kind(),
                    "virtio: DRIVER_OK without FEATURES_OK"
                );
                self.status = new & !status::DRIVER_OK;
                self.fail(&Error::Driver("DRIVER_OK without FEATURES_OK".into()));
                return;
            }
            self.status = new;
            if let Err(e) = self.activate() {
                self.fail(&e);
            }
            return;
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<()> {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(Error::Driver(format!(
                    "queue {i} is enabled but its rings are not inside guest memory or misaligned"
                )));
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues: self.queues.iter().map(clone_queue).collect(),
            irq: self.irq.clone(),
            acked_features: self.driver_features,
        };
        let worker = self.device.activate(activation)?;
        self.running = if self.inline {
            Running::Inline(InlineWorker::new(worker)?)
        } else {
            let evts = self
                .queue_evts
                .iter()
                .map(|e| e.try_clone().map_err(|e| Error::io("dup eventfd", e)))
                .collect::<Result<Vec<_>>>()?;
            self.start_worker_thread()?;
            let thread = self
                .thread
                .as_mut()
                .ok_or_else(|| Error::Worker("no worker thread".into()))?;
            thread.start(worker, evts)?;
            Running::Thread
        };
        Ok(())
    }

    fn notify(&mut self, index: u32) {
        let i = index as usize;
        if i >= self.queue_evts.len() {
            crate::debug_limited!(
                device = self.device.kind(),
                index,
                "virtio: notify of a queue that does not exist"
            );
            return;
        }
        if self.needs_reset.load(Ordering::SeqCst) {
            return;
        }
        match &mut self.running {
            Running::Inline(w) => {
                if let Err(e) = w.notify(i) {
                    self.fail(&e);
                }
            }
            _ => {
                if let Err(e) = self.queue_evts[i].write(1) {
                    crate::warn_limited!(error = %e, "virtio: cannot signal a queue eventfd");
                }
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.irq.status(),
            reg::STATUS => self.status(),
            // No shared memory regions: length -1 means "no such region".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                crate::debug_limited!(
                    device = self.device.kind(),
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_ok = self.status & status::DRIVER_OK != 0;
        let features_phase = self.status & status::DRIVER != 0
            && self.status & status::FEATURES_OK == 0
            && !driver_ok;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if features_phase => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => crate::debug_limited!("virtio-mmio: driver features bank out of range"),
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => self.notify(v & 0xffff),
            reg::INTERRUPT_ACK => self.irq.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
                if !driver_ok =>
            {
                let kind = self.device.kind();
                let Some(q) = self.selected_queue() else {
                    crate::debug_limited!(
                        device = kind,
                        "virtio-mmio: queue register write with QueueSel out of range"
                    );
                    return;
                };
                if offset != reg::QUEUE_READY && q.ready() {
                    crate::debug_limited!(
                        device = kind,
                        offset,
                        "virtio-mmio: queue register write while the queue is enabled ignored"
                    );
                    return;
                }
                match offset {
                    reg::QUEUE_NUM => match u16::try_from(v) {
                        Ok(n) if n <= q.max_size() => q.set_size(n),
                        _ => crate::warn_limited!(
                            device = kind,
                            size = v,
                            "virtio-mmio: queue size out of range"
                        ),
                    },
                    reg::QUEUE_READY => q.set_ready(v == 1),
                    reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                    reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                    reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
                    reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
                    reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
                    reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
                    _ => {}
                }
            }
            _ => crate::debug_limited!(
                device = self.device.kind(),
                offset,
                status = self.status,
                "virtio-mmio: write ignored (read-only/unknown register or wrong device state)"
            ),
        }
    }
}

impl crate::MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            if offset >= MMIO_WINDOW {
                data.fill(0);
                return;
            }
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            crate::debug_limited!(
                offset,
                len = data.len(),
                "virtio-mmio: register read that is not 32-bit aligned"
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if offset < MMIO_WINDOW {
                self.device.write_config(offset - reg::CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            crate::debug_limited!(
                offset,
                len = data.len(),
                "virtio-mmio: register write that is not 32-bit"
            );
            return;
        };
        if offset % 4 != 0 {
            crate::debug_limited!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
