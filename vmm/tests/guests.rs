//! Tiny guests under the real bulkhead-vmm: serial, zero page and e820, I/O exits, reset.

mod common;

use common::*;

#[test]
fn serial_output_reaches_the_console_log() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_guest(guest_spec(&build_guest("hello"), dir.path()));
    out.assert_passed();
    assert!(
        out.serial.starts_with("hello from the guest\n"),
        "{}",
        out.serial
    );
}

#[test]
fn guest_reads_back_the_zero_page_and_e820() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("zeropage"), dir.path());
    spec.memory_mib = 48;
    spec.cmdline = "bulkhead.test=zeropage".into();
    let out = run_guest(spec);
    out.assert_passed();

    let expected = bulkhead_vmm::boot::e820_map(48 << 20);
    let count = out.lines_with("E820 COUNT ");
    assert_eq!(count, vec![expected.len().to_string()], "{}", out.serial);
    let got: Vec<(u64, u64, u32)> = out
        .lines_with("E820 0x")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (
                hex(&format!("0x{}", f[0])),
                hex(f[1]),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u32)> = expected.iter().map(|e| (e.addr, e.size, e.kind)).collect();
    assert_eq!(got, want);
    // Independently of the library: RAM starts at 0, and all RAM entries add up to 48 MiB minus
    // the reserved BIOS area.
    assert_eq!(got[0].0, 0);
    let ram: u64 = got.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
    assert_eq!(ram, (48 << 20) - (0x10_0000 - 0x9fc00));

    let cmdline = out.lines_with("CMDLINE ");
    assert_eq!(
        cmdline,
        vec!["bulkhead.test=zeropage console=ttyS0 reboot=k panic=-1".to_string()]
    );
}

#[test]
fn port_io_and_mmio_exits_and_unknown_addresses() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_guest(guest_spec(&build_guest("io_exits"), dir.path()));
    out.assert_passed();
    assert!(out.serial.contains("IO OK"), "{}", out.serial);
    // Unknown accesses are logged by the monitor.
    for needle in ["addr=0xd0000000", "addr=0x1234", "addr=0xe0000000"] {
        assert!(
            out.stderr.contains(needle) && out.stderr.contains("guest access to no device"),
            "{needle} not logged:\n{}",
            out.stderr
        );
    }
}

#[test]
fn i8042_reset_ends_the_vm_with_status_0() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_guest(guest_spec(&build_guest("reset"), dir.path()));
    assert!(!out.timed_out, "VM did not end: {}", out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.serial, "RESETTING\n");
    assert!(
        out.stderr.contains("guest reset through the i8042"),
        "{}",
        out.stderr
    );
}

#[test]
fn missing_kernel_is_a_typed_error_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let spec = guest_spec(&dir.path().join("no-such-kernel"), dir.path());
    let out = run_guest(spec);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("no-such-kernel") || out.stderr.contains("/dev/kvm"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_probe_answers() {
    let s = std::process::Command::new(vmm_binary())
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(s.status.code(), Some(2));
    let p = std::process::Command::new(vmm_binary())
        .arg("probe")
        .output()
        .unwrap();
    let code = p.status.code();
    assert!(code == Some(0) || code == Some(3), "{code:?}");
    let line = String::from_utf8_lossy(&p.stdout);
    assert_eq!(
        code == Some(0),
        bulkhead_vmm::probe_hardware_virtualization().hardware
    );
    assert!(line.contains("virtualization"), "{line}");
}

#[test]
fn two_vcpus_the_ap_starts_through_init_sipi() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("smp"), dir.path());
    spec.vcpus = 2;
    let out = run_guest(spec);
    out.assert_passed();
    assert!(
        out.serial.contains("BSP APIC 0 LOGICAL 2"),
        "{}",
        out.serial
    );
    assert!(out.serial.contains("AP APIC 1 ALIVE"), "{}", out.serial);
}

#[test]
fn guest_finds_and_checks_the_acpi_tables() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("acpi"), dir.path());
    spec.vcpus = 2;
    let out = run_guest(spec);
    out.assert_passed();
    assert_eq!(out.lines_with("MADT LAPICS "), vec!["2"], "{}", out.serial);
    assert_eq!(out.lines_with("DSDT VIRTIO "), vec!["0"], "{}", out.serial);
    let flags = out.lines_with("FADT FLAGS 0x");
    let flags = u32::from_str_radix(&flags[0], 16).unwrap();
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
}

#[test]
fn acpi_poweroff_ends_the_vm_with_status_0() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_guest(guest_spec(&build_guest("poweroff"), dir.path()));
    assert!(!out.timed_out, "VM did not end: {}", out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.serial, "POWERING OFF\n");
    assert!(
        out.stderr.contains("powered off through ACPI S5"),
        "{}",
        out.stderr
    );
}

#[test]
fn spec_from_stdin_and_ready_fd() {
    if !kvm_available() {
        return;
    }
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let spec = guest_spec(&build_guest("hello"), dir.path());
    let (r, w) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .unwrap();
    let mut child = std::process::Command::new(vmm_binary())
        .args(["run", "--spec", "-", "--ready-fd"])
        .arg(w.as_raw_fd().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(w);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&spec).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "bulkhead-vmm printed to stdout");
    let mut ready = Vec::new();
    std::fs::File::from(r).read_to_end(&mut ready).unwrap();
    assert_eq!(ready.len(), 1, "exactly one byte on the ready fd");
    let serial = std::fs::read_to_string(&spec.serial_log).unwrap();
    assert!(serial.contains("BULKHEAD-GUEST PASS"), "{serial}");
}
