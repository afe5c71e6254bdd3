//! Debian's cloud kernel (a bzImage) loads the Linux 64-bit way: protected-mode code at 1 MiB,
//! entry at +0x200, the zero page seeded from its setup header, initramfs above the kernel.

mod common;

use bulkhead_vmm::boot::{self, KernelFormat, ZeroPage};
use bulkhead_vmm::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

#[test]
fn debian_bzimage_loads_with_its_setup_header() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let file = std::fs::read(&kernel).unwrap();
    assert_eq!(
        &file[0x202..0x206],
        b"HdrS",
        "{} is not a bzImage",
        kernel.display()
    );

    let mem = GuestMemory::from_ranges(&boot::ram_regions(256 << 20)).unwrap();
    let k = boot::load_kernel(&mem, &kernel).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(k.entry, 0x10_0000 + 0x200);
    let hdr = k.setup_header.as_ref().unwrap();
    // The raw header as the file has it, from 0x1f1 on.
    assert_eq!(&hdr[..], &file[0x1f1..0x1f1 + hdr.len()]);
    let version = u16::from_le_bytes([file[0x206], file[0x207]]);
    assert!(version >= 0x020c, "boot protocol {version:#x}");
    // The protected-mode kernel starts after (setup_sects + 1) sectors and sits at 1 MiB.
    let setup_sects = match file[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm = &file[(setup_sects + 1) * 512..];
    let mut loaded = vec![0u8; 4096];
    mem.read_slice(&mut loaded, GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(&loaded[..], &pm[..4096]);
    assert!(k.kernel_end >= 0x10_0000 + pm.len() as u64);

    // Initramfs: page aligned, above the kernel, below initrd_addr_max and the end of RAM.
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, vec![0xa5u8; 3 << 20]).unwrap();
    let (addr, size) = boot::load_initramfs(&mem, &initrd, &k).unwrap();
    assert_eq!(size, 3 << 20);
    assert_eq!(addr % 4096, 0);
    assert!(addr >= k.kernel_end && addr + size <= 256 << 20);
    let mut b = [0u8; 4];
    mem.read_slice(&mut b, GuestAddress(addr + size - 4))
        .unwrap();
    assert_eq!(b, [0xa5; 4]);

    // The zero page keeps the kernel's header fields and adds ours.
    let zp = ZeroPage {
        setup_header: k.setup_header.clone(),
        cmdline_len: 10,
        initramfs: Some((addr, size)),
        e820: boot::e820_map(256 << 20),
        rsdp: Some(0xe0000),
    }
    .to_bytes();
    assert_eq!(zp[0x1f1], file[0x1f1]); // setup_sects
    assert_eq!(&zp[0x206..0x208], &file[0x206..0x208]); // version
    assert_eq!(&zp[0x236..0x238], &file[0x236..0x238]); // xloadflags
    assert_eq!(zp[0x210], 0xff);
    assert_eq!(
        u32::from_le_bytes(zp[0x218..0x21c].try_into().unwrap()) as u64,
        addr
    );
}

/// Debian's bzImage under the real monitor. With hardware virtualization it boots to the
/// kernel's "no root" panic, which (panic=-1, reboot=k) resets through the i8042 and ends the
/// VM with status 0, having found our ACPI tables and CPUs on the way. Without it (PVM here,
/// which emulates a stock kernel instruction by instruction) the test only checks that the
/// decompressor starts at the 64-bit entry and reads our command line from the zero page: it
/// prints "KASLR disabled: 'nokaslr' on cmdline." on the serial console within seconds.
#[test]
fn debian_bzimage_boots_under_the_monitor() {
    if !common::kvm_available() {
        return;
    }
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let probe = bulkhead_vmm::probe_hardware_virtualization();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = common::guest_spec(&kernel, dir.path());
    spec.memory_mib = 256;
    spec.vcpus = 2;
    spec.cmdline = "nokaslr earlyprintk=serial,ttyS0 loglevel=8".into();
    if probe.hardware {
        let out = common::run_guest_with(spec, &[], std::time::Duration::from_secs(300));
        assert!(!out.timed_out, "{}", out.serial);
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
        for needle in [
            "Linux version",
            "ACPI: DSDT",
            "smpboot: Allowing 2 CPUs",
            "Kernel panic",
        ] {
            assert!(
                out.serial.contains(needle),
                "{needle} missing:\n{}",
                out.serial
            );
        }
        return;
    }
    eprintln!(
        "NOTE: {}; checking only that the bzImage's decompressor starts",
        probe.reason
    );
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut child = std::process::Command::new(common::vmm_binary())
        .args(["run", "--spec"])
        .arg(&spec_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut serial = String::new();
    while start.elapsed() < common::GUEST_TIMEOUT {
        serial = std::fs::read_to_string(&spec.serial_log).unwrap_or_default();
        if serial.contains("KASLR disabled: 'nokaslr' on cmdline.") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the VMM ended: {serial}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        serial.contains("KASLR disabled: 'nokaslr' on cmdline."),
        "the decompressor did not start: {serial:?}"
    );
}
