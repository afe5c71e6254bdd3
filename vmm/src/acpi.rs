//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced, with sleep control/status registers for
//! power-off), MADT (one local APIC per vCPU, the IOAPIC, IRQ0 -> GSI 2, LINT1 NMI) and a DSDT
//! with COM1, `_S5_` and one `LNRO0005` device per virtio-mmio window.
//!
//! RSDP, XSDT, FADT and the DSDT's AML come from the rust-vmm `acpi_tables` crate. The MADT is
//! assembled here on the crate's generic `Sdt` because the crate's MADT type cannot set the
//! PCAT_COMPAT flag and has no interrupt source override or local APIC NMI structures.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, IO, ONE,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::*;
use crate::GuestMemory;

const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_TABLE_ID: [u8; 8] = *b"BULKHEAD";
const OEM_REVISION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit between {RSDP_ADDR:#x} and {BIOS_END:#x}")]
    TooBig(usize),
    #[error("writing the ACPI tables into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// One virtio-mmio window as the DSDT declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

impl MmioWindow {
    /// The window of virtio-mmio device `i` in our layout.
    pub fn for_device(i: usize) -> Self {
        MmioWindow {
            base: VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            gsi: VIRTIO_GSI_BASE + i as u32,
        }
    }
}

/// The tables, each with the guest-physical address it goes to.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    pub fn rsdp_addr(&self) -> u64 {
        RSDP_ADDR
    }

    /// Writes every table into guest memory.
    pub fn write(&self, mem: &GuestMemory) -> Result<(), AcpiError> {
        for (addr, bytes) in &self.tables {
            mem.write_slice(bytes, GuestAddress(*addr))
                .map_err(AcpiError::Write)?;
        }
        Ok(())
    }
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// The DSDT body (AML): COM1, the S5 sleep state and the virtio-mmio devices in order.
pub fn dsdt_aml(devices: &[MmioWindow]) -> Vec<u8> {
    let mut aml = Vec::new();
    Device::new(
        Path::new("_SB_.COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &0usize),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &Interrupt::new(true, true, false, false, COM1_GSI),
                    &IO::new(COM1_PORT, COM1_PORT, 1, 8),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut aml);
    // \_S5_: Package { SLP_TYP_A, SLP_TYP_B } for the sleep control register.
    let s5_type = usize::from(crate::legacy::S5_SLEEP_TYPE);
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5_type, &s5_type])).to_aml_bytes(&mut aml);
    for (i, w) in devices.iter().enumerate() {
        let path = format!("_SB_.V{i:03X}");
        Device::new(
            Path::new(&path),
            vec![
                &Name::new(Path::new("_HID"), &"LNRO0005"),
                &Name::new(Path::new("_UID"), &i),
                &Name::new(Path::new("_CCA"), &ONE),
                &Name::new(
                    Path::new("_CRS"),
                    &ResourceTemplate::new(vec![
                        &Memory32Fixed::new(true, w.base as u32, w.size as u32),
                        &Interrupt::new(true, true, false, false, w.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut aml);
    }
    aml
}

/// The MADT: local APIC address and PCAT_COMPAT (the in-kernel 8259s exist), one enabled local
/// APIC per vCPU (UID = APIC ID = index), the IOAPIC at GSI base 0, ISA IRQ 0 -> GSI 2 (KVM
/// routes the PIT there), and LINT1 as NMI on every processor.
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, 1); // PCAT_COMPAT
    for id in 0..vcpus {
        // Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        let mut s = vec![0u8, 8, id, id];
        s.extend_from_slice(&1u32.to_le_bytes());
        t.append_slice(&s);
    }
    // I/O APIC: type 1, length 12, id, reserved, address, GSI base.
    let mut s = vec![1u8, 12, 0, 0];
    s.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&s);
    // Interrupt Source Override: type 2, length 10, bus 0 (ISA), source IRQ 0, GSI 2, flags 0.
    let mut s = vec![2u8, 10, 0, 0];
    s.extend_from_slice(&2u32.to_le_bytes());
    s.extend_from_slice(&0u16.to_le_bytes());
    t.append_slice(&s);
    // Local APIC NMI: type 4, length 6, all processors (0xff), flags 0, LINT1.
    t.append_slice(&[4u8, 6, 0xff, 0, 0, 1]);
    t.as_slice().to_vec()
}

/// The hardware-reduced FADT pointing at the DSDT, with the sleep registers on I/O ports.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    let port = |p: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(p),
        )
    };
    f.sleep_control_reg = port(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = port(ACPI_SLEEP_STATUS_PORT);
    // IA-PC boot architecture: no VGA (bit 2), no MSI (bit 3), no CMOS RTC (bit 5).
    f.iapc_boot_arch = ((1u16 << 2) | (1 << 3) | (1 << 5)).into();
    aml_bytes(&f.finalize())
}

/// Builds every table for `vcpus` processors and the given virtio-mmio windows.
pub fn build(vcpus: u8, devices: &[MmioWindow]) -> Result<AcpiTables, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(devices));
    let dsdt = dsdt.as_slice().to_vec();

    let dsdt_addr = align(RSDP_ADDR + Rsdp::len() as u64);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = aml_bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > BIOS_END {
        return Err(AcpiError::TooBig((end - RSDP_ADDR) as usize));
    }
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        tables: vec![
            (RSDP_ADDR, rsdp),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    /// Finds the table at guest address `addr` in `t`.
    fn at(t: &AcpiTables, addr: u64) -> &[u8] {
        &t.tables.iter().find(|(a, _)| *a == addr).expect("table").1
    }

    fn devices(n: usize) -> Vec<MmioWindow> {
        (0..n).map(MmioWindow::for_device).collect()
    }

    #[test]
    fn checksums_and_lengths() {
        let t = build(2, &devices(3)).unwrap();
        let rsdp = at(&t, RSDP_ADDR);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        for (addr, b) in &t.tables[1..] {
            assert_eq!(sum(b), 0, "checksum of table at {addr:#x}");
            assert_eq!(
                u32_at(b, 4) as usize,
                b.len(),
                "length of table at {addr:#x}"
            );
            assert_eq!(addr % 16, 0);
        }
    }

    #[test]
    fn tables_parse_back_from_the_rsdp() {
        let n_dev = 4;
        let t = build(3, &devices(n_dev)).unwrap();
        let xsdt_addr = u64_at(at(&t, RSDP_ADDR), 24);
        let xsdt = at(&t, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = at(&t, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let x_dsdt = u64_at(fadt, 140);
        // Sleep control register: GAS at 244, system I/O, port 0x600.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        let dsdt = at(&t, x_dsdt);
        assert_eq!(&dsdt[..4], b"DSDT");
        let hids = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(hids, n_dev);
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));

        let madt = at(&t, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let mut off = 44;
        let (mut lapics, mut ioapics, mut isos, mut nmis) = (vec![], 0, 0, 0);
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            assert!(len >= 2 && off + len <= madt.len());
            match kind {
                0 => lapics.push(madt[off + 3]),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(madt, off + 4), IOAPIC_ADDR);
                }
                2 => {
                    isos += 1;
                    assert_eq!(u32_at(madt, off + 4), 2);
                }
                4 => nmis += 1,
                k => panic!("unexpected MADT structure {k}"),
            }
            off += len;
        }
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!((ioapics, isos, nmis), (1, 1, 1));
    }

    #[test]
    fn dsdt_resources_carry_the_window_and_gsi() {
        let aml = dsdt_aml(&[MmioWindow::for_device(2)]);
        // Memory32Fixed: 0x86, length 9, RW, base, length.
        let pos = aml.windows(1).position(|w| w[0] == 0x86).unwrap();
        assert_eq!(aml[pos + 3], 1);
        assert_eq!(u32_at(&aml, pos + 4), 0xd000_2000);
        assert_eq!(u32_at(&aml, pos + 8), 0x1000);
        // Extended interrupt: 0x89, length 6, flags (consumer|edge), count 1, GSI.
        let irq = aml
            .windows(5)
            .rposition(|w| w[0] == 0x89 && w[1] == 6 && w[4] == 1)
            .unwrap();
        assert_eq!(u32_at(&aml, irq + 5), 7);
    }

    #[test]
    fn most_devices_still_fit() {
        build(
            crate::spec::MAX_VCPUS,
            &devices(crate::spec::MAX_MMIO_DEVICES),
        )
        .unwrap();
    }
}
