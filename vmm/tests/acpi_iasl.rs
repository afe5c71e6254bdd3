//! The ACPI tables decode with ACPICA's disassembler (iasl -d, Debian package acpica-tools).

use std::process::Command;

use bulkhead_vmm::acpi::{build, MmioWindow};

#[test]
fn iasl_disassembles_every_table() {
    if Command::new("iasl").arg("-v").output().is_err() {
        bulkhead_test_skip::skip(
            "iasl not found (apt-get install acpica-tools; scripts/install-deps.sh does)",
        );
        return;
    }
    let devices: Vec<MmioWindow> = (0..3).map(MmioWindow::for_device).collect();
    let tables = build(2, &devices).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut dsl = std::collections::HashMap::new();
    for (_, bytes) in &tables.tables[1..] {
        let sig = String::from_utf8_lossy(&bytes[..4]).into_owned();
        let dat = dir.path().join(format!("{sig}.dat"));
        std::fs::write(&dat, bytes).unwrap();
        let out = Command::new("iasl")
            .current_dir(dir.path())
            .arg("-d")
            .arg(&dat)
            .output()
            .unwrap();
        let text =
            std::fs::read_to_string(dir.path().join(format!("{sig}.dsl"))).unwrap_or_default();
        assert!(
            out.status.success() && !text.is_empty(),
            "iasl -d {sig} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains("Invalid"), "{sig}:\n{text}");
        dsl.insert(sig, text);
    }
    let dsdt = &dsl["DSDT"];
    assert_eq!(dsdt.matches("\"LNRO0005\"").count(), 3, "{dsdt}");
    assert!(
        dsdt.contains("0xD0002000") && dsdt.contains("0x00000007"),
        "{dsdt}"
    );
    assert!(dsdt.contains("_S5_") && dsdt.contains("PNP0501"), "{dsdt}");
    let madt = &dsl["APIC"];
    assert_eq!(madt.matches("Processor Local APIC").count(), 2, "{madt}");
    assert!(
        madt.contains("I/O APIC") && madt.contains("Interrupt Source Override"),
        "{madt}"
    );
    let fadt = &dsl["FACP"];
    assert!(fadt.contains("Hardware Reduced (V5) : 1"), "{fadt}");
    let xsdt = &dsl["XSDT"];
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 2, "{xsdt}");
}
