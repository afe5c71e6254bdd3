//! Guest-physical memory layout (x86_64), the Firecracker layout (see the project's
//! reference notes, vmm.md §1.2), with one difference: the boot page tables identity-map all
//! guest RAM and at least the first 4 GiB (Firecracker maps 1 GiB), so a big guest's RAM (where
//! an initramfs may sit) is mapped at entry and small test guests reach the MMIO hole without
//! their own tables. Everything below 1 MiB is checked not to overlap at compile time.

/// GDT: NULL, CODE64, DATA, TSS.
pub const GDT_ADDR: u64 = 0x500;
/// IDT: one null entry.
pub const IDT_ADDR: u64 = 0x520;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The boot page tables' PML4 (one entry) and PDPT (one entry per GiB mapped: a 1 GiB page,
/// or a page directory of 2 MiB pages when the vCPU lacks 1 GiB pages).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line including its NUL (the x86 boot protocol limit).
pub const CMDLINE_MAX: usize = 2048;
/// Page directories (2 MiB pages, one page directory per GiB), only without 1 GiB pages: from
/// the page after the command line up to the page holding the EBDA.
pub const PD_AREA_START: u64 = 0x21000;
pub const PD_AREA_END: u64 = 0x9f000;
/// How many GiB 2 MiB-page tables can map (126).
pub const PD_MAX: u64 = (PD_AREA_END - PD_AREA_START) / 0x1000;
/// How many GiB 1 GiB-page tables map: one full PDPT.
pub const PDPT_MAX: u64 = 512;
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

// Nothing below 1 MiB overlaps: GDT (4 entries), IDT (1), zero page, the stack (below
// BOOT_STACK, above the zero page), PML4, PDPT, command line, page directories, EBDA.
const _: () = assert!(GDT_ADDR + 4 * 8 <= IDT_ADDR);
const _: () = assert!(IDT_ADDR + 8 <= ZERO_PAGE_ADDR);
const _: () = assert!(ZERO_PAGE_ADDR + 0x1000 < BOOT_STACK && BOOT_STACK < PML4_ADDR);
const _: () = assert!(PML4_ADDR + 0x1000 <= PDPT_ADDR && PDPT_ADDR + 0x1000 <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= PD_AREA_START);
const _: () = assert!(PD_AREA_START.is_multiple_of(0x1000) && PD_AREA_END <= EBDA_START);
const _: () = assert!(EBDA_START < RSDP_ADDR && RSDP_ADDR < BIOS_END);

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_GSI: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
/// POST code port: the first byte written to it is reported on `--boot-timer-fd`.
pub const POST_PORT: u16 = 0x80;
/// ACPI hardware-reduced sleep control / status registers (one byte each).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
