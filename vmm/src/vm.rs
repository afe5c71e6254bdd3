//! Building a VM from a [`VmSpec`] and running it to its end.
//!
//! Threads: the control thread (the caller of [`Vm::run`]) waits for a stop; one thread per
//! vCPU runs `KVM_RUN` and dispatches port I/O and MMIO exits synchronously on the buses;
//! virtio devices run their own worker threads.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::acpi::{self, AcpiError};
use crate::arch::{self, ArchError};
use crate::boot::{self, BootError, ZeroPage};
use crate::bus::{Bus, BusError};
use crate::devices::{self, DeviceError};
use crate::layout::*;
use crate::legacy::{
    AcpiSleep, IrqTrigger, PostPort, SerialDevice, SerialIrq, StopReason, StopSignal, I8042,
};
use crate::seccomp::{self, Filters, SeccompError};
use crate::serial_log::{BoundedLog, LogError};
use crate::spec::VmSpec;
use crate::GuestMemory;
use bulkhead_virtio::MmioTransport;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "opening /dev/kvm: {0} (VM domains need KVM; are you root and is a kvm module loaded?)"
    )]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0}, need 12")]
    KvmApi(i32),
    #[error("KVM lacks capability {0}")]
    KvmCap(&'static str),
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("allocating {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("starting vCPU thread {id}: {source}")]
    Thread { id: u8, source: std::io::Error },
    #[error("vCPU {id}: {message}")]
    VcpuFailed { id: u8, message: String },
    #[error("a monitor thread panicked while {0}")]
    Panicked(&'static str),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Descriptors the caller hands to the monitor besides the spec.
#[derive(Default)]
pub struct RunOptions {
    /// Gets one byte once every vCPU thread runs (`--ready-fd`).
    pub ready_fd: Option<OwnedFd>,
    /// Gets the guest's first byte written to port 0x80 (`--boot-timer-fd`).
    pub boot_timer_fd: Option<OwnedFd>,
    /// Seccomp filters per thread kind; `None` runs unfiltered (tests without confinement).
    pub seccomp: Option<Filters>,
}

/// How a VM ended without a monitor error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    Reset,
    PowerOff,
    Shutdown,
    Halted,
    External,
}

/// A VM ready to run: memory loaded, vCPUs configured, devices on the buses.
pub struct Vm {
    // Field order is drop order: vCPU fds and the VM fd go before the memory they map.
    vcpus: Vec<VcpuFd>,
    _vm_fd: VmFd,
    _kvm: Kvm,
    mem: GuestMemory,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stop: Arc<StopSignal>,
    ready_fd: Option<OwnedFd>,
    seccomp: Option<Filters>,
    name: String,
    /// Every irqfd / ioeventfd registered with KVM (kept open for the VM's life).
    _eventfds: Vec<EventFd>,
    /// The virtio transports (also on `mmio`).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The console input FIFO and the serial port it feeds.
    console_input: Option<(File, Arc<Mutex<SerialDevice>>)>,
}

impl Vm {
    /// Creates the KVM VM for `spec`: memory, kernel, command line, zero page, boot tables,
    /// irqchip, PIT, vCPUs and legacy devices.
    pub fn new(spec: &VmSpec, opts: RunOptions) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        Self::with_kvm(kvm, spec, opts)
    }

    /// As [`Vm::new`] with an already opened /dev/kvm.
    pub fn with_kvm(kvm: Kvm, spec: &VmSpec, opts: RunOptions) -> Result<Self, VmError> {
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::KvmApi(api));
        }
        use kvm_ioctls::Cap;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::SetTssAddr, "SET_TSS_ADDR"),
            (Cap::Pit2, "PIT2"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::ExtCpuid, "EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::KvmCap(name));
            }
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let mem_size = spec.memory_mib << 20;
        let mem = GuestMemory::from_ranges(&boot::ram_regions(mem_size)).map_err(|source| {
            VmError::Memory {
                mib: spec.memory_mib,
                source,
            }
        })?;
        // Each of these ioctls waits for a kernel SRCU grace period (milliseconds on a busy
        // host); run the memory registration beside the irqchip and PIT creation so the waits
        // overlap.
        let (chips, slots) = std::thread::scope(|s| {
            let slots = s.spawn(|| register_memory(&vm_fd, &mem));
            let chips = create_irqchip_and_pit(&vm_fd);
            (chips, slots.join())
        });
        chips?;
        slots.map_err(|_| VmError::Panicked("registering guest memory"))??;

        // Devices.
        let stop = Arc::new(StopSignal::new().map_err(io_err("creating the stop eventfd"))?);
        let mut eventfds = Vec::new();
        let mut pio = Bus::new("pio");
        let mut mmio = Bus::new("mmio");
        let opened = devices::open_devices(spec)?;
        let mut wired = devices::wire_devices(
            opened,
            &vm_fd,
            &mem,
            &mut mmio,
            opts.seccomp.as_ref().map(|f| f.device.clone()),
        )?;
        eventfds.append(&mut wired.eventfds);

        let serial_evt = EventFd::new(libc::EFD_CLOEXEC).map_err(io_err("serial eventfd"))?;
        vm_fd
            .register_irqfd(&serial_evt, COM1_GSI)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let serial_irq = serial_evt
            .try_clone()
            .map_err(io_err("serial eventfd clone"))?;
        eventfds.push(serial_evt);
        let log = BoundedLog::open(&spec.serial_log, spec.serial_log_max)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            SerialIrq::Kvm(IrqTrigger(serial_irq)),
            log,
        )));
        pio.insert(u64::from(COM1_PORT), 8, serial.clone())?;
        let console_input = match &spec.serial_input {
            Some(p) => Some((
                crate::console::open_input(p).map_err(io_err("opening the console input FIFO"))?,
                serial,
            )),
            None => None,
        };
        pio.insert(
            u64::from(I8042_PORT),
            5,
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
        )?;
        let timer = opts.boot_timer_fd.map(File::from);
        pio.insert(
            u64::from(POST_PORT),
            1,
            Arc::new(Mutex::new(PostPort::new(timer))),
        )?;
        pio.insert(
            u64::from(ACPI_SLEEP_CONTROL_PORT),
            2,
            Arc::new(Mutex::new(AcpiSleep::new(stop.clone()))),
        )?;

        // Kernel, initramfs, command line, zero page, boot tables.
        let kernel = boot::load_kernel(&mem, &spec.kernel)?;
        let initramfs = match &spec.initramfs {
            Some(p) => Some(boot::load_initramfs(&mem, p, &kernel)?),
            None => None,
        };
        let cmdline = boot::build_cmdline(&spec.cmdline, wired.windows.len())?;
        let cmdline_len = boot::load_cmdline(&mem, &cmdline)?;
        let tables = acpi::build(spec.vcpus, &wired.windows)?;
        tables.write(&mem)?;
        ZeroPage {
            setup_header: kernel.setup_header.clone(),
            cmdline_len,
            initramfs,
            e820: boot::e820_map(mem_size),
            rsdp: Some(tables.rsdp_addr()),
        }
        .write(&mem)?;
        // The vCPUs' CPUID decides whether the boot tables may use 1 GiB pages.
        let mut supported = arch::supported_cpuid(&kvm)?;
        if arch::host_is_pvm() {
            arch::pvm_cpuid_quirks(&mut supported);
        }
        let gib_pages = arch::has_1gib_pages(&supported);
        arch::write_boot_tables(&mem, mem_size, gib_pages)?;
        tracing::debug!(gib_pages, "boot page tables written");
        tracing::debug!(
            entry = format_args!("{:#x}", kernel.entry),
            format = ?kernel.format,
            "kernel loaded"
        );

        // vCPUs.
        let mut vcpus = Vec::with_capacity(usize::from(spec.vcpus));
        for id in 0..spec.vcpus {
            let vcpu = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            arch::configure_vcpu(&vcpu, id, spec.vcpus, &supported, kernel.entry)?;
            vcpus.push(vcpu);
        }

        Ok(Vm {
            vcpus,
            _vm_fd: vm_fd,
            _kvm: kvm,
            mem,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            stop,
            ready_fd: opts.ready_fd,
            seccomp: opts.seccomp,
            name: spec.name.clone(),
            _eventfds: eventfds,
            transports: wired.transports,
            console_input,
        })
    }

    /// Guest memory (for tests and devices).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The stop signal (another thread may stop the VM with [`StopReason::External`]).
    pub fn stop_signal(&self) -> Arc<StopSignal> {
        self.stop.clone()
    }

    /// Runs the vCPUs until the guest resets, powers off or a vCPU fails.
    pub fn run(mut self) -> Result<VmExit, VmError> {
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(SIGRTMIN(), kick).map_err(|e| VmError::Io {
            what: "installing the vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;

        // Device worker threads start here, from this (confined, still unfiltered) thread: a
        // vCPU thread, whose filter forbids thread creation, then only hands them work.
        for (index, t) in self.transports.iter().enumerate() {
            t.lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_worker_thread()
                .map_err(|source| DeviceError::Transport { index, source })?;
        }
        if let Some((input, serial)) = self.console_input.take() {
            let stop = self.stop.clone();
            let filter = self.seccomp.as_ref().map(|f| f.device.clone());
            std::thread::Builder::new()
                .name("console-in".into())
                .spawn(move || {
                    if let Some(f) = filter {
                        if let Err(e) = seccomp::apply("device", &f) {
                            tracing::error!(error = %e, "console input: no seccomp filter; console input off");
                            return;
                        }
                    }
                    crate::console::pump(input, serial, stop)
                })
                .map_err(io_err("starting the console input thread"))?;
        }
        let failure: Arc<Mutex<Option<(u8, String)>>> = Arc::new(Mutex::new(None));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let id = id as u8;
            let ctx = VcpuContext {
                id,
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                stop: self.stop.clone(),
                failure: failure.clone(),
                filter: self.seccomp.as_ref().map(|f| f.vcpu.clone()),
            };
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || ctx.run(vcpu))
                .map_err(|source| VmError::Thread { id, source });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.stop.stop(StopReason::Error);
                    stop_threads(threads);
                    return Err(e);
                }
            }
        }
        if let Some(fd) = self.ready_fd.take() {
            let mut f = File::from(fd);
            if let Err(e) = std::io::Write::write_all(&mut f, b"R") {
                tracing::warn!("ready fd: {e}");
            }
        }
        tracing::info!(vm = %self.name, "running");
        if let Some(f) = &self.seccomp {
            if let Err(e) = seccomp::apply("control", &f.control) {
                self.stop.stop(StopReason::Error);
                stop_threads(threads);
                return Err(e.into());
            }
        }
        let waited = self.stop.wait();
        stop_threads(threads);
        waited.map_err(io_err("waiting for the VM to stop"))?;
        if let Some((id, message)) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(VmError::VcpuFailed { id, message });
        }
        Ok(match self.stop.reason() {
            Some(StopReason::Reset) => VmExit::Reset,
            Some(StopReason::PowerOff) => VmExit::PowerOff,
            Some(StopReason::Shutdown) => VmExit::Shutdown,
            Some(StopReason::Halted) => VmExit::Halted,
            Some(StopReason::External) => VmExit::External,
            Some(StopReason::Error) | None => {
                return Err(VmError::VcpuFailed {
                    id: 0,
                    message: "stopped without a reason".into(),
                })
            }
        })
    }
}

fn create_irqchip_and_pit(vm_fd: &VmFd) -> Result<(), VmError> {
    vm_fd
        .create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))
}

/// Registers every guest RAM region as a KVM memory slot.
fn register_memory(vm_fd: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Io {
                what: "guest memory host address",
                source: std::io::Error::other(e.to_string()),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: `host` is the start of a live anonymous mapping of `region.len()` bytes
        // owned by `mem`, which the Vm keeps until after the VM fd and every vCPU fd are
        // closed (field order), and device threads hold their own clones of it.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Kicks every vCPU thread out of KVM_RUN (repeating: a kick that lands just before the thread
/// enters KVM_RUN is lost) until all have returned.
fn stop_threads(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

struct VcpuContext {
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stop: Arc<StopSignal>,
    failure: Arc<Mutex<Option<(u8, String)>>>,
    filter: Option<Arc<seccompiler::BpfProgram>>,
}

impl VcpuContext {
    fn fail(&self, message: String) {
        tracing::error!(vcpu = self.id, "{message}");
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some((self.id, message));
        }
        self.stop.stop(StopReason::Error);
    }

    fn run(self, mut vcpu: VcpuFd) {
        if let Some(f) = &self.filter {
            if let Err(e) = seccomp::apply("vcpu", f) {
                self.fail(e.to_string());
                return;
            }
        }
        while !self.stop.requested() {
            match vcpu.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => {
                    tracing::info!(vcpu = self.id, "vCPU halted");
                    self.stop.stop(StopReason::Halted);
                }
                Ok(VcpuExit::Shutdown) => {
                    tracing::warn!(vcpu = self.id, "guest shutdown (triple fault)");
                    self.stop.stop(StopReason::Shutdown);
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    tracing::info!(vcpu = self.id, kind, "guest system event");
                    self.stop.stop(StopReason::Shutdown);
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.fail(format!(
                        "KVM entry failed: hardware reason {reason:#x} on cpu {cpu}"
                    ));
                }
                Ok(VcpuExit::InternalError) => {
                    let at = match vcpu.get_regs() {
                        Ok(r) => format!(" at RIP {:#x}", r.rip),
                        Err(_) => String::new(),
                    };
                    self.fail(format!(
                        "KVM internal error{at} (the guest ran something KVM cannot emulate; \
                         on PVM hosts a stock kernel is emulated instruction by instruction)"
                    ));
                }
                Ok(other) => {
                    self.fail(format!("unexpected KVM exit {other:?}"));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    vcpu.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    self.fail(format!("KVM_RUN: {e}"));
                }
            }
        }
    }
}
