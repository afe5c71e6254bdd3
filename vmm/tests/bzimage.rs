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
