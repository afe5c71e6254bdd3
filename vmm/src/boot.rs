//! Loading the kernel (ELF vmlinux first, then bzImage, via linux-loader), the initramfs and the
//! command line, and writing the zero page (`struct boot_params`) with its e820 map.
//!
//! The zero page is serialized field by field at the offsets the x86 boot protocol documents
//! (Documentation/arch/x86/boot.rst, zero-page.rst) rather than through linux-loader's bindgen
//! struct, which would need an `unsafe impl ByteValued`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::*;
use crate::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening kernel {path}: {source}")]
    OpenKernel {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path} is neither a loadable ELF vmlinux ({elf}) nor a bzImage ({bzimage})")]
    Kernel {
        path: std::path::PathBuf,
        elf: linux_loader::loader::Error,
        bzimage: linux_loader::loader::Error,
    },
    #[error("bzImage {path}: boot protocol {version:#x} without a 64-bit entry (need >= 2.12 and XLF_KERNEL_64)")]
    BzImageTooOld {
        path: std::path::PathBuf,
        version: u16,
    },
    #[error("reading the bzImage setup header of {path}: {source}")]
    SetupHeader {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("opening initramfs {path}: {source}")]
    OpenInitramfs {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitramfsTooBig {
        path: std::path::PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("loading initramfs {path} into guest memory: {source}")]
    LoadInitramfs {
        path: std::path::PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("writing the kernel command line into guest memory: {0}")]
    LoadCmdline(linux_loader::loader::Error),
    #[error("writing the zero page: {0}")]
    ZeroPage(vm_memory::GuestMemoryError),
}

/// e820 memory types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 entry as the zero page carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM regions for `mem_size` bytes: below the 32-bit MMIO hole, the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut v = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_HOLE_START {
        v.push((
            GuestAddress(MMIO_HOLE_END),
            (mem_size - MMIO_HOLE_START) as usize,
        ));
    }
    v
}

/// The e820 map the zero page describes for `mem_size` bytes of RAM (at least 2 MiB).
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = mem_size.min(MMIO_HOLE_START);
    let mut v = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        // The EBDA and BIOS area, which holds the ACPI tables.
        E820Entry {
            addr: EBDA_START,
            size: BIOS_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    if mem_size > MMIO_HOLE_START {
        v.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    v
}

/// What loading the kernel produced.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// 64-bit entry point (guest-physical).
    pub entry: u64,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage's raw setup header bytes (zero page offsets 0x1f1..), `None` for an ELF.
    pub setup_header: Option<Vec<u8>>,
    pub format: KernelFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Offsets in the zero page (struct boot_params).
mod zp {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const HDR: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_MAX: usize = 128;
    /// The setup header never extends past here (0x290 is the EDD buffer).
    pub const HDR_END_MAX: usize = 0x290;
}

/// Loads the kernel at `path`: ELF vmlinux first (entry = ELF entry), else bzImage (protected-mode
/// part at its preferred 1 MiB, entry = load address + 0x200, the 64-bit entry).
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut f = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.into(),
        source,
    })?;
    let elf = match Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            return Ok(LoadedKernel {
                entry: r.kernel_load.raw_value(),
                kernel_end: r.kernel_end,
                setup_header: None,
                format: KernelFormat::Elf,
            })
        }
        Err(e) => e,
    };
    let r = match BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => r,
        Err(bzimage) => {
            return Err(BootError::Kernel {
                path: path.into(),
                elf,
                bzimage,
            })
        }
    };
    let hdr = read_setup_header(&mut f).map_err(|source| BootError::SetupHeader {
        path: path.into(),
        source,
    })?;
    let version = le16(&hdr, zp::VERSION - zp::HDR);
    let xloadflags = le16(&hdr, zp::XLOADFLAGS - zp::HDR);
    if version < 0x020c || xloadflags & 1 == 0 {
        return Err(BootError::BzImageTooOld {
            path: path.into(),
            version,
        });
    }
    Ok(LoadedKernel {
        entry: r.kernel_load.raw_value() + 0x200,
        kernel_end: r.kernel_end,
        setup_header: Some(hdr),
        format: KernelFormat::BzImage,
    })
}

fn le16(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// Reads the raw setup header (file offsets 0x1f1 up to 0x202 + the byte at 0x201).
fn read_setup_header(f: &mut File) -> std::io::Result<Vec<u8>> {
    let mut jump = [0u8; 1];
    f.seek(SeekFrom::Start(0x201))?;
    f.read_exact(&mut jump)?;
    let end = (0x202 + usize::from(jump[0])).min(zp::HDR_END_MAX);
    let mut hdr = vec![0u8; end - zp::HDR];
    f.seek(SeekFrom::Start(zp::HDR as u64))?;
    f.read_exact(&mut hdr)?;
    Ok(hdr)
}

/// Loads the initramfs page-aligned at the top of low RAM (below `initrd_addr_max` for a
/// bzImage), above the kernel. Returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), BootError> {
    let mut f = File::open(path).map_err(|source| BootError::OpenInitramfs {
        path: path.into(),
        source,
    })?;
    let size = f
        .metadata()
        .map_err(|source| BootError::OpenInitramfs {
            path: path.into(),
            source,
        })?
        .len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0);
    let addr_max = kernel
        .setup_header
        .as_ref()
        .map(|h| {
            let off = 0x22c - zp::HDR;
            h.get(off..off + 4)
                .map(|s| u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
                .unwrap_or(0x37ff_ffff)
        })
        .unwrap_or(0x37ff_ffff);
    let limit = low_end.min(addr_max.saturating_add(1));
    let too_big = || BootError::InitramfsTooBig {
        path: path.into(),
        size,
        kernel_end: kernel.kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.kernel_end || addr < HIMEM_START {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|source| BootError::LoadInitramfs {
            path: path.into(),
            source,
        })?;
    Ok((addr, size))
}

/// The full kernel command line: the spec's, then what the VMM always needs, then one
/// `virtio_mmio.device=4K@ADDR:GSI` per device window.
pub fn build_cmdline(base: &str, mmio_devices: usize) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if !base.trim().is_empty() {
        c.insert_str(base.trim()).map_err(BootError::Cmdline)?;
    }
    c.insert_str("console=ttyS0 reboot=k panic=-1")
        .map_err(BootError::Cmdline)?;
    for i in 0..mmio_devices {
        c.add_virtio_mmio_device(
            VIRTIO_MMIO_SIZE,
            GuestAddress(VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE),
            VIRTIO_GSI_BASE + i as u32,
            None,
        )
        .map_err(BootError::Cmdline)?;
    }
    Ok(c)
}

/// Writes the command line at `CMDLINE_ADDR`; returns its length without the NUL.
pub fn load_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(BootError::LoadCmdline)?;
    Ok(cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0))
}

/// Everything the zero page says.
#[derive(Debug, Clone)]
pub struct ZeroPage {
    pub setup_header: Option<Vec<u8>>,
    pub cmdline_len: usize,
    pub initramfs: Option<(u64, u64)>,
    pub e820: Vec<E820Entry>,
    pub rsdp: Option<u64>,
}

impl ZeroPage {
    /// The 4 KiB page.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        let put = |p: &mut Vec<u8>, off: usize, b: &[u8]| p[off..off + b.len()].copy_from_slice(b);
        if let Some(h) = &self.setup_header {
            let n = h.len().min(zp::HDR_END_MAX - zp::HDR);
            put(&mut p, zp::HDR, &h[..n]);
        } else {
            // No bzImage header: the kernel only looks at what we set here.
            put(&mut p, zp::KERNEL_ALIGNMENT, &0x0100_0000u32.to_le_bytes());
        }
        put(&mut p, zp::BOOT_FLAG, &0xaa55u16.to_le_bytes());
        put(&mut p, zp::HEADER, &0x5372_6448u32.to_le_bytes()); // "HdrS"
        p[zp::TYPE_OF_LOADER] = 0xff;
        put(
            &mut p,
            zp::CMD_LINE_PTR,
            &(CMDLINE_ADDR as u32).to_le_bytes(),
        );
        put(
            &mut p,
            zp::CMDLINE_SIZE,
            &(self.cmdline_len as u32).to_le_bytes(),
        );
        if let Some((addr, size)) = self.initramfs {
            put(&mut p, zp::RAMDISK_IMAGE, &(addr as u32).to_le_bytes());
            put(&mut p, zp::RAMDISK_SIZE, &(size as u32).to_le_bytes());
        }
        if let Some(rsdp) = self.rsdp {
            put(&mut p, zp::ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
        }
        let n = self.e820.len().min(zp::E820_MAX);
        p[zp::E820_ENTRIES] = n as u8;
        for (i, e) in self.e820.iter().take(n).enumerate() {
            let off = zp::E820_TABLE + i * 20;
            put(&mut p, off, &e.addr.to_le_bytes());
            put(&mut p, off + 8, &e.size.to_le_bytes());
            put(&mut p, off + 16, &e.kind.to_le_bytes());
        }
        p
    }

    pub fn write(&self, mem: &GuestMemory) -> Result<(), BootError> {
        mem.write_slice(&self.to_bytes(), GuestAddress(ZERO_PAGE_ADDR))
            .map_err(BootError::ZeroPage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_skips_the_hole() {
        let m = e820_map(64 << 20);
        let ram: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (64 << 20) - (BIOS_END - EBDA_START));
        let big = e820_map(5 << 30);
        let last = big.last().unwrap();
        assert_eq!(
            (last.addr, last.size),
            (1 << 32, (5 << 30) - MMIO_HOLE_START)
        );
        assert_eq!(ram_regions(5 << 30).len(), 2);
        assert_eq!(ram_regions(64 << 20), vec![(GuestAddress(0), 64 << 20)]);
    }

    #[test]
    fn zero_page_fields_at_documented_offsets() {
        let z = ZeroPage {
            setup_header: None,
            cmdline_len: 42,
            initramfs: Some((0x100_0000, 0x2345)),
            e820: e820_map(32 << 20),
            rsdp: Some(RSDP_ADDR),
        };
        let p = z.to_bytes();
        assert_eq!(&p[0x202..0x206], b"HdrS");
        assert_eq!(p[0x1fe..0x200], [0x55, 0xaa]);
        assert_eq!(p[0x210], 0xff);
        assert_eq!(
            u32::from_le_bytes(p[0x228..0x22c].try_into().unwrap()),
            0x20000
        );
        assert_eq!(u32::from_le_bytes(p[0x238..0x23c].try_into().unwrap()), 42);
        assert_eq!(
            u32::from_le_bytes(p[0x218..0x21c].try_into().unwrap()),
            0x100_0000
        );
        assert_eq!(
            u64::from_le_bytes(p[0x70..0x78].try_into().unwrap()),
            RSDP_ADDR
        );
        assert_eq!(p[0x1e8], 3);
        let e2 = 0x2d0 + 2 * 20;
        assert_eq!(
            u64::from_le_bytes(p[e2..e2 + 8].try_into().unwrap()),
            HIMEM_START
        );
    }

    #[test]
    fn cmdline_has_console_and_virtio_entries() {
        let c = build_cmdline("root=/dev/vda ro", 2).unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(
            s.starts_with("root=/dev/vda ro console=ttyS0 reboot=k panic=-1"),
            "{s}"
        );
        assert!(s.contains("virtio_mmio.device=4K@0xd0000000:5"), "{s}");
        assert!(s.contains("virtio_mmio.device=4K@0xd0001000:6"), "{s}");
    }

    #[test]
    fn garbage_kernel_is_refused_with_both_reasons() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, vec![0x5a; 8192]).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let e = load_kernel(&mem, &k).unwrap_err().to_string();
        assert!(e.contains("neither"), "{e}");
    }
}
