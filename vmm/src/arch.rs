//! x86_64 vCPU boot state for the Linux 64-bit boot protocol: GDT, identity page tables,
//! segment and control registers, general registers, FPU, CPUID, MSRs and the local APIC's
//! LINT pins. The order (CPUID, then MSRs, then registers) follows Firecracker's
//! `configure_boot_state` (reference notes vmm.md §1.2); the code is our own.

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("writing the boot {what} into guest memory at {addr:#x}: {source}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("vCPU {id}: {what}: {source}")]
    Vcpu {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("building the MSR list: {0}")]
    MsrList(String),
    #[error(
        "guest RAM of {mem_mib} MiB needs {need_gib} GiB identity-mapped at boot, but the boot \
         page tables map at most {max_gib} GiB with {page} pages{hint}; give the VM less memory"
    )]
    BootMapTooBig {
        mem_mib: u64,
        need_gib: u64,
        max_gib: u64,
        page: &'static str,
        hint: &'static str,
    },
}

/// Segment descriptor flags (access byte in bits 0..7, flags nibble in bits 12..15).
const GDT_CODE64: u16 = 0xa09b;
const GDT_DATA: u16 = 0xc093;
const GDT_TSS: u16 = 0x808b;

/// Encodes one 8-byte GDT descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment register value the descriptor `entry` at GDT index `index` loads.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn write_u64s(
    mem: &GuestMemory,
    addr: u64,
    what: &'static str,
    vals: &[u64],
) -> Result<(), ArchError> {
    let mut bytes = Vec::with_capacity(vals.len() * 8);
    for v in vals {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| ArchError::GuestWrite { what, addr, source })
}

/// The four boot GDT entries: null, 64-bit code, data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(GDT_CODE64, 0, 0xfffff),
        gdt_entry(GDT_DATA, 0, 0xfffff),
        gdt_entry(GDT_TSS, 0, 0xfffff),
    ]
}

/// Whether a vCPU with this CPUID may use 1 GiB pages (CPUID 0x8000_0001 EDX bit 26,
/// pdpe1gb). Under shadow paging (PVM) a 1 GiB page the guest CPUID does not allow faults, so
/// this is asked of the vCPU's table, not of the host.
pub fn has_1gib_pages(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 26) != 0)
}

/// The guest-physical range `[0, end)` the boot page tables identity-map for `mem_size` bytes
/// of RAM: all of the RAM (which continues above the MMIO hole), at least the first 4 GiB,
/// rounded up to whole GiB. In GiB; None when it overflows.
pub fn boot_map_gib(mem_size: u64) -> Option<u64> {
    let ram_end = if mem_size > MMIO_HOLE_START {
        MMIO_HOLE_END.checked_add(mem_size - MMIO_HOLE_START)?
    } else {
        mem_size
    };
    Some(ram_end.max(MMIO_HOLE_END).div_ceil(1 << 30))
}

/// Writes the VM-wide boot structures (GDT, IDT, page tables) into guest memory, once per VM.
/// The page tables identity-map [`boot_map_gib`] GiB: PML4[0] -> PDPT, whose entry i is the
/// 1 GiB page i (`gib_pages`) or points to a page directory of 2 MiB pages in the PD area.
pub fn write_boot_tables(
    mem: &GuestMemory,
    mem_size: u64,
    gib_pages: bool,
) -> Result<(), ArchError> {
    let (max_gib, page, hint) = if gib_pages {
        (PDPT_MAX, "1 GiB", "")
    } else {
        (
            PD_MAX,
            "2 MiB",
            " (the vCPU has no 1 GiB pages: CPUID 0x80000001 EDX bit 26, pdpe1gb)",
        )
    };
    let gib = boot_map_gib(mem_size)
        .filter(|&g| g <= max_gib)
        .ok_or(ArchError::BootMapTooBig {
            mem_mib: mem_size >> 20,
            need_gib: boot_map_gib(mem_size).unwrap_or(u64::MAX),
            max_gib,
            page,
            hint,
        })?;
    write_u64s(mem, GDT_ADDR, "GDT", &boot_gdt())?;
    write_u64s(mem, IDT_ADDR, "IDT", &[0])?;
    const PRESENT_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    write_u64s(mem, PML4_ADDR, "PML4", &[PDPT_ADDR | PRESENT_RW])?;
    if gib_pages {
        let pdpt: Vec<u64> = (0..gib).map(|i| (i << 30) | PS | PRESENT_RW).collect();
        write_u64s(mem, PDPT_ADDR, "PDPT", &pdpt)?;
    } else {
        let pdpt: Vec<u64> = (0..gib)
            .map(|i| (PD_AREA_START + i * 0x1000) | PRESENT_RW)
            .collect();
        write_u64s(mem, PDPT_ADDR, "PDPT", &pdpt)?;
        let pd: Vec<u64> = (0..gib * 512)
            .map(|i| (i << 21) | PS | PRESENT_RW)
            .collect();
        write_u64s(mem, PD_AREA_START, "page directories", &pd)?;
    }
    Ok(())
}

/// The CPUID table every vCPU gets: what KVM supports, with the APIC ID, the vCPU count and the
/// hypervisor bit filled in for vCPU `id`.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(vcpus) << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if vcpus > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is valid
                }
            }
            0xb | 0x1f => {
                // x2APIC topology: EDX holds the x2APIC ID on every sub-leaf.
                e.edx = u32::from(id);
            }
            6 => {
                // No energy-performance bias MSR is emulated.
                e.ecx &= !(1 << 3);
            }
            _ => {}
        }
    }
    cpuid
}

/// Whether /dev/kvm is PVM (kvm_pvm), which runs a guest that is not PVM-enlightened through
/// KVM's instruction emulator.
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// CPUID changes for guests emulated by PVM, for instructions KVM's emulator failed on while
/// running Debian's 6.1 kernel (a KVM internal error at that instruction): CMPXCHG16B
/// (CPUID.1:ECX bit 13) is hidden, because `lock cmpxchg16b` in SLUB's double-word cmpxchg
/// fails and the kernel skips it without CX16. (The emulator also fails on `xrstor64`, but
/// this PVM reports XSAVE whatever the CPUID table says; a stock kernel needs `noxsave`.)
pub fn pvm_cpuid_quirks(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx &= !(1 << 13);
        }
    }
}

/// KVM's supported CPUID, asked once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, ArchError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ArchError::SupportedCpuid)
}

/// Boot MSR values (Firecracker's list: zeroed SYSENTER/SYSCALL state and TSC, fast strings,
/// MTRRs enabled with write-back default).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1), // fast-string enable
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

/// Puts vCPU `id` into 64-bit long mode at `entry` with RSI = zero page, as the Linux 64-bit
/// boot protocol wants. The boot tables must already be in guest memory.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    id: u8,
    vcpus: u8,
    supported: &CpuId,
    entry: u64,
) -> Result<(), ArchError> {
    let err = |what| move |source| ArchError::Vcpu { id, what, source };
    vcpu.set_cpuid2(&vcpu_cpuid(supported, id, vcpus))
        .map_err(err("KVM_SET_CPUID2"))?;

    let msrs =
        Msrs::from_entries(&boot_msrs()).map_err(|e| ArchError::MsrList(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    if set != msrs.as_slice().len() {
        // KVM stops at the first MSR it refuses; PVM may not know every one of them.
        let refused = msrs.as_slice().get(set).map(|m| m.index).unwrap_or(0);
        tracing::warn!(
            vcpu = id,
            set,
            refused = format_args!("{refused:#x}"),
            "not every boot MSR was accepted"
        );
    }

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;

    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    const CR0_PE: u64 = 1;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;

    // LINT0 = ExtINT (the PIC), LINT1 = NMI.
    let mut lapic = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 7);
    set_lvt(&mut lapic.regs, 0x360, 4);
    vcpu.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Sets the delivery mode (bits 8..10) of the LVT register at byte offset `off`.
fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_back() {
        let gdt = boot_gdt();
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.present, cs.s, cs.type_),
            (8, 1, 0, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (16, 0, 1, 3));
        let tr = segment_from_gdt(gdt[3], 3);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.g), (24, 0xb, 0, 1));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn pvm_quirk_hides_cx16_only() {
        let mut c = CpuId::new(1).unwrap();
        c.as_mut_slice()[0].function = 1;
        c.as_mut_slice()[0].ecx = (1 << 13) | (1 << 31) | 1;
        pvm_cpuid_quirks(&mut c);
        assert_eq!(c.as_slice()[0].ecx, (1 << 31) | 1);
    }

    #[test]
    fn lvt_mode_is_replaced() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x351] = 0x7; // mode bits already set
        regs[0x350] = 0x20u8 as std::os::raw::c_char;
        set_lvt(&mut regs, 0x350, 4);
        assert_eq!(regs[0x350] as u8, 0x20);
        assert_eq!(regs[0x351] as u8, 0x4);
    }

    /// Walks the 4-level tables at `cr3` for `va` like the MMU: Some(physical address) when
    /// mapped present and writable, None otherwise.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        const P_RW: u64 = 0x3;
        const PS: u64 = 0x80;
        const ADDR: u64 = 0x000f_ffff_ffff_f000;
        let entry = |table: u64, idx: u64| -> Option<u64> {
            let e: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
            (e & P_RW == P_RW).then_some(e)
        };
        let pml4e = entry(cr3 & ADDR, (va >> 39) & 511)?;
        let pdpte = entry(pml4e & ADDR, (va >> 30) & 511)?;
        if pdpte & PS != 0 {
            return Some((pdpte & ADDR & !((1 << 30) - 1)) + (va & ((1 << 30) - 1)));
        }
        let pde = entry(pdpte & ADDR, (va >> 21) & 511)?;
        (pde & PS != 0).then(|| (pde & ADDR & !((1 << 21) - 1)) + (va & ((1 << 21) - 1)))
    }

    /// Every 2 MiB of the guest's RAM (and its last byte) maps to itself.
    fn assert_ram_identity_mapped(mem: &GuestMemory, mem_size: u64) {
        for (start, len) in crate::boot::ram_regions(mem_size) {
            let (start, end) = (start.0, start.0 + len as u64);
            for va in (start..end).step_by(1 << 21).chain([end - 1]) {
                assert_eq!(
                    translate(mem, PML4_ADDR, va),
                    Some(va),
                    "{va:#x} of a {} GiB guest",
                    mem_size >> 30
                );
            }
        }
    }

    fn low_memory() -> GuestMemory {
        // The tables live in low memory; the RAM they describe need not exist here.
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn page_tables_map_all_ram_of_big_guests() {
        for gib_pages in [true, false] {
            for gib in [6u64, 64] {
                let mem = low_memory();
                write_boot_tables(&mem, gib << 30, gib_pages).unwrap();
                assert_ram_identity_mapped(&mem, gib << 30);
                // RAM ends at 4 GiB + (size - 3 GiB): the GiB after it is not mapped.
                let end = (gib + 1) << 30;
                assert_eq!(translate(&mem, PML4_ADDR, end - 1), Some(end - 1));
                assert_eq!(translate(&mem, PML4_ADDR, end), None, "{gib} GiB");
            }
        }
        // The largest spec (256 GiB) with 1 GiB pages.
        let mem = low_memory();
        let max = crate::spec::MAX_MEMORY_MIB << 20;
        write_boot_tables(&mem, max, true).unwrap();
        assert_ram_identity_mapped(&mem, max);
    }

    #[test]
    fn sizes_the_tables_cannot_map_are_errors() {
        let mem = low_memory();
        let e = write_boot_tables(&mem, 256 << 30, false).unwrap_err();
        assert!(matches!(
            e,
            ArchError::BootMapTooBig {
                need_gib: 257,
                max_gib: 126,
                ..
            }
        ));
        assert!(e.to_string().contains("pdpe1gb"), "{e}");
        assert!(write_boot_tables(&mem, 600 << 30, true).is_err());
        assert!(write_boot_tables(&mem, u64::MAX, true).is_err());
        // The largest 2 MiB-page mapping fits (its last page directory ends below the EBDA).
        write_boot_tables(&mem, (PD_MAX - 1) << 30, false).unwrap();
        assert_ram_identity_mapped(&mem, (PD_MAX - 1) << 30);
    }

    #[test]
    fn small_guests_get_the_first_4gib_and_1gib_pages_follow_cpuid() {
        for gib_pages in [true, false] {
            let mem = low_memory();
            write_boot_tables(&mem, 64 << 20, gib_pages).unwrap();
            for va in [0, 0x10_0000, VIRTIO_MMIO_BASE + 0x50, (4 << 30) - 1] {
                assert_eq!(translate(&mem, PML4_ADDR, va), Some(va));
            }
            assert_eq!(translate(&mem, PML4_ADDR, 4 << 30), None);
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPT_ADDR)).unwrap();
            assert_eq!(pdpte & 0x80 != 0, gib_pages);
        }
        let mut c = CpuId::new(2).unwrap();
        c.as_mut_slice()[0].function = 0x8000_0001;
        assert!(!has_1gib_pages(&c));
        c.as_mut_slice()[0].edx = 1 << 26;
        assert!(has_1gib_pages(&c));
    }
}
