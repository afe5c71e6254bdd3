//! Legacy port I/O devices: the 16550 serial console (vm-superio), the i8042 reset line
//! (vm-superio), the POST code port (first-instruction timing) and the ACPI hardware-reduced
//! sleep registers (power off).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::device::MmioDevice;
use crate::serial_log::BoundedLog;

/// Why the VM stopped (set once by whoever stops it first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// The guest reset the machine through the i8042 (Linux `reboot=k`).
    Reset = 1,
    /// The guest powered off through the ACPI sleep control register (S5).
    PowerOff = 2,
    /// A vCPU triple-faulted or KVM reported a shutdown.
    Shutdown = 3,
    /// A vCPU halted with nothing that could wake it (only without the in-kernel irqchip).
    Halted = 4,
    /// The monitor failed (details were logged by the failing thread).
    Error = 5,
    /// Asked to stop from outside (SIGTERM/SIGINT).
    External = 6,
}

/// The VM-wide stop flag and the event the control thread waits on.
pub struct StopSignal {
    reason: AtomicU8,
    event: EventFd,
}

impl StopSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(StopSignal {
            reason: AtomicU8::new(0),
            event: EventFd::new(libc::EFD_CLOEXEC)?,
        })
    }

    /// Records `reason` unless another reason was recorded first, and wakes the control thread.
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        if let Err(e) = self.event.write(1) {
            tracing::error!("waking the control thread: {e}");
        }
    }

    pub fn requested(&self) -> bool {
        self.reason.load(Ordering::SeqCst) != 0
    }

    pub fn reason(&self) -> Option<StopReason> {
        Some(match self.reason.load(Ordering::SeqCst) {
            1 => StopReason::Reset,
            2 => StopReason::PowerOff,
            3 => StopReason::Shutdown,
            4 => StopReason::Halted,
            5 => StopReason::Error,
            6 => StopReason::External,
            _ => return None,
        })
    }

    /// Blocks until some thread calls [`StopSignal::stop`].
    pub fn wait(&self) -> std::io::Result<()> {
        loop {
            match self.event.read() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if self.requested() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

/// An interrupt line: an EventFd registered with KVM as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port's interrupt, or nothing (unit tests, fuzzing).
pub enum SerialIrq {
    Kvm(IrqTrigger),
    None,
}

impl Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        match self {
            SerialIrq::Kvm(t) => t.trigger(),
            SerialIrq::None => Ok(()),
        }
    }
}

/// COM1: vm-superio's 16550 writing to the bounded console log.
pub struct SerialDevice {
    serial: Serial<SerialIrq, vm_superio::serial::NoEvents, BoundedLog>,
}

impl SerialDevice {
    pub fn new(irq: SerialIrq, log: BoundedLog) -> Self {
        SerialDevice {
            serial: Serial::new(irq, log),
        }
    }

    pub fn log(&self) -> &BoundedLog {
        self.serial.writer()
    }

    /// Queues console input for the guest (as much as its receive FIFO takes); returns how
    /// many bytes were taken.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl MmioDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; a wider access reads the first register and zeros.
        data.fill(0);
        if let Ok(off) = u8::try_from(offset) {
            data[0] = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.serial.write(off, v) {
                bulkhead_virtio::warn_limited!("serial: {e:?}");
            }
        }
    }
}

/// What the i8042 reset line does.
pub struct ResetTrigger(pub Arc<StopSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        bulkhead_virtio::info_limited!("guest reset through the i8042");
        self.0.stop(StopReason::Reset);
        Ok(())
    }
}

/// Ports 0x60..=0x64: only the CPU reset command (0xFE to 0x64) does anything.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(stop: Arc<StopSignal>) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(stop)),
        }
    }
}

impl MmioDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Ok(off) = u8::try_from(offset) {
            data[0] = self.dev.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first()) {
            let _ = self.dev.write(off, v);
        }
    }
}

/// Port 0x80: the first byte the guest writes is reported once on the boot-timer fd
/// (`bulkhead-vmm run --boot-timer-fd N`), so a benchmark learns when the guest's first
/// instruction ran. Later writes are ignored, as POST codes are on real hardware without a card.
pub struct PostPort {
    notify: Option<File>,
}

impl PostPort {
    pub fn new(notify: Option<File>) -> Self {
        PostPort { notify }
    }
}

impl MmioDevice for PostPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(mut f) = self.notify.take() {
            let b = data.first().copied().unwrap_or(0);
            if let Err(e) = f.write_all(&[b]) {
                tracing::warn!("boot timer fd: {e}");
            }
        }
    }
}

/// ACPI hardware-reduced sleep control (offset 0) and status (offset 1) registers, as the FADT
/// declares them. Writing SLP_EN with SLP_TYP 5 (the DSDT's `_S5_`) powers the VM off.
pub struct AcpiSleep {
    stop: Arc<StopSignal>,
}

/// The sleep type the DSDT's `_S5_` object names.
pub const S5_SLEEP_TYPE: u8 = 5;

impl AcpiSleep {
    pub fn new(stop: Arc<StopSignal>) -> Self {
        AcpiSleep { stop }
    }
}

impl MmioDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        const SLP_EN: u8 = 1 << 5;
        if offset == 0 && v & SLP_EN != 0 && (v >> 2) & 7 == S5_SLEEP_TYPE {
            bulkhead_virtio::info_limited!("guest powered off through ACPI S5");
            self.stop.stop(StopReason::PowerOff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_reset_command_stops_with_reset() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut k = I8042::new(stop.clone());
        k.write(4, &[0xaa]);
        k.write(0, &[0xfe]);
        assert!(!stop.requested());
        k.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
        // The first reason wins.
        stop.stop(StopReason::Error);
        assert_eq!(stop.reason(), Some(StopReason::Reset));
        stop.wait().unwrap();
    }

    #[test]
    fn acpi_sleep_only_s5_powers_off() {
        let stop = Arc::new(StopSignal::new().unwrap());
        let mut s = AcpiSleep::new(stop.clone());
        s.write(0, &[(3 << 2) | (1 << 5)]);
        s.write(1, &[(5 << 2) | (1 << 5)]);
        s.write(0, &[5 << 2]);
        assert!(!stop.requested());
        s.write(0, &[(5 << 2) | (1 << 5)]);
        assert_eq!(stop.reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn serial_writes_reach_the_log() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("console.log");
        let log = BoundedLog::open(&path, 1024).unwrap();
        let mut s = SerialDevice::new(SerialIrq::None, log);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        // LSR: transmitter empty.
        let mut lsr = [0u8; 1];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        let mut wide = [0xaau8; 4];
        s.read(u64::MAX, &mut wide);
        assert_eq!(wide, [0; 4]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi\n");
    }
}
