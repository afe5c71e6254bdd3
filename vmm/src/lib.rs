//! bulkhead-vmm: the KVM monitor for VM domains, built on the rust-vmm crates.
//!
//! One `bulkhead-vmm run --spec FILE.json` process runs one VM: it loads the kernel (ELF
//! vmlinux or bzImage) with the Linux 64-bit boot protocol, gives it a zero page with an e820
//! map, identity page tables and long-mode registers, an in-kernel irqchip and PIT, a 16550
//! console writing to a bounded log, an i8042 whose reset ends the VM, ACPI tables and the
//! virtio-mmio devices of the spec.

pub mod acpi;
pub mod arch;
pub mod boot;
pub mod bus;
pub mod confine;
pub mod console;
pub mod device;
pub mod devices;
pub mod layout;
pub mod legacy;
pub mod probe;
pub mod seccomp;
pub mod serial_log;
pub mod spec;
pub mod vm;

pub use probe::{probe_hardware_virtualization, Probe};
pub use spec::{ConfineSpec, DiskSpec, NetSpec, SpecError, VmSpec, VsockSpec};
pub use vm::{RunOptions, Vm, VmError, VmExit};

/// Guest memory type used everywhere (same as bulkhead-virtio's).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
