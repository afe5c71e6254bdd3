//! Guest-physical memory layout (x86_64), the Firecracker layout (see the project's
//! reference notes, vmm.md §1.2), with one difference: the boot page tables identity-map
//! 4 GiB instead of 1 GiB so small test guests reach the MMIO hole without their own tables.

/// GDT: NULL, CODE64, DATA, TSS.
pub const GDT_ADDR: u64 = 0x500;
/// IDT: one null entry.
pub const IDT_ADDR: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4, PDPT, and four page directories (2 MiB pages) follow it.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// How many 1 GiB page directories the boot tables map (identity).
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line including its NUL (the x86 boot protocol limit).
pub const CMDLINE_MAX: usize = 2048;
/// End of low RAM in the e820 map (start of the EBDA-style reserved area).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP here, the rest right after it (all within the reserved BIOS area).
pub const RSDP_ADDR: u64 = 0xe0000;
/// End of the reserved BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// Kernel load address / start of high RAM.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: no RAM between here and 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows: device i at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`, GSI `VIRTIO_GSI_BASE + i`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_GSI_BASE: u32 = 5;
/// IOAPIC and local APIC MMIO (handled by KVM's in-kernel irqchip).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's three-page TSS for real-mode emulation.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_GSI: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
/// POST code port: the first byte written to it is reported on `--boot-timer-fd`.
pub const POST_PORT: u16 = 0x80;
/// ACPI hardware-reduced sleep control / status registers (one byte each).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
