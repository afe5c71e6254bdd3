//! virtio-blk (virtio 1.x section 5.2), backed by a host file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::epoll::Epoll;

use crate::util::{add_used, pop, read_config_bytes};
use crate::{
    device_type, features, Activation, Error, GuestMemory, IrqLine, Result, VirtioDevice, Worker,
};

pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Bounce buffer for copies between guest memory and the file.
const CHUNK: usize = 64 * 1024;

/// A virtio block device on a host file (or block device).
pub struct Block {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    id: [u8; ID_LEN],
    config: Vec<u8>,
    queue_sizes: [u16; 1],
}

impl Block {
    /// `read_only` offers VIRTIO_BLK_F_RO and fails every write with IOERR. The capacity is the
    /// file's size rounded down to whole sectors, fixed here.
    pub fn new(file: File, read_only: bool) -> Result<Self> {
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("size of the disk image", e))?;
        let capacity_sectors = size / SECTOR_SIZE;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat the disk image", e))?;
        let mut id = [0u8; ID_LEN];
        let text = format!("bulkhead-{:x}-{:x}", meta.dev(), meta.ino());
        let n = text.len().min(ID_LEN);
        id[..n].copy_from_slice(&text.as_bytes()[..n]);

        // struct virtio_blk_config: capacity (le64) @0, size_max @8, seg_max @12, ...
        let mut config = vec![0u8; 24];
        config[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        Ok(Block {
            file,
            read_only,
            capacity_sectors,
            id,
            config,
            queue_sizes: [QUEUE_SIZE],
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// The serial number GET_ID returns (NUL padded).
    pub fn id(&self) -> [u8; ID_LEN] {
        self.id
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn kind(&self) -> &'static str {
        "blk"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_FLUSH;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<Box<dyn Worker>> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("dup the disk image descriptor", e))?;
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| Error::Driver("no queue".into()))?;
        Ok(Box::new(BlockWorker {
            file,
            read_only: self.read_only,
            capacity_bytes: self.capacity_sectors * SECTOR_SIZE,
            id: self.id,
            mem: a.mem,
            queue,
            irq: a.irq,
            buf: vec![0u8; CHUNK],
        }))
    }
}

struct BlockWorker {
    file: File,
    read_only: bool,
    capacity_bytes: u64,
    id: [u8; ID_LEN],
    mem: GuestMemory,
    queue: Queue,
    irq: std::sync::Arc<IrqLine>,
    buf: Vec<u8>,
}

/// Why a request failed; logged, then reported to the driver as a status.
#[derive(Debug, thiserror::Error)]
enum ReqError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request beyond the end of the disk (sector {sector}, {len} bytes)")]
    OutOfRange { sector: u64, len: usize },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("host I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl BlockWorker {
    fn check_range(&self, sector: u64, len: usize) -> Result<u64, ReqError> {
        let start = sector.checked_mul(SECTOR_SIZE);
        let end = start.and_then(|s| s.checked_add(len as u64));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.capacity_bytes && len as u64 % SECTOR_SIZE == 0 => {
                Ok(s)
            }
            _ => Err(ReqError::OutOfRange { sector, len }),
        }
    }

    /// Serves one request; returns the number of bytes written into the chain (the used
    /// length), or None if the chain has no room for a status byte.
    fn request(&mut self, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        let mem = &self.mem;
        let mut reader = match chain.clone().reader(mem) {
            Ok(r) => r,
            Err(e) => {
                crate::warn_limited!(error = %e, "virtio-blk: bad readable descriptors");
                return self.status_only(chain);
            }
        };
        let mut writer = match chain.clone().writer(mem) {
            Ok(w) => w,
            Err(e) => {
                crate::warn_limited!(error = %e, "virtio-blk: bad writable descriptors");
                return None;
            }
        };
        let avail = writer.available_bytes();
        if avail == 0 {
            crate::warn_limited!("virtio-blk: request without a writable status byte dropped");
            return None;
        }
        let mut status_w = match writer.split_at(avail - 1) {
            Ok(s) => s,
            Err(e) => {
                crate::warn_limited!(error = %e, "virtio-blk: cannot split the writable part");
                return None;
            }
        };
        let mut hdr = [0u8; 16];
        let result: Result<usize, ReqError> = match reader.read_exact(&mut hdr) {
            Err(_) => Err(ReqError::Malformed("header shorter than 16 bytes".into())),
            Ok(()) => {
                let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let sector = u64::from_le_bytes([
                    hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
                ]);
                match rtype {
                    VIRTIO_BLK_T_IN => {
                        let len = writer.available_bytes();
                        self.check_range(sector, len).and_then(|mut off| {
                            let mut left = len;
                            while left > 0 {
                                let n = left.min(self.buf.len());
                                self.file.read_exact_at(&mut self.buf[..n], off)?;
                                writer.write_all(&self.buf[..n])?;
                                left -= n;
                                off += n as u64;
                            }
                            Ok(len)
                        })
                    }
                    VIRTIO_BLK_T_OUT => {
                        let len = reader.available_bytes();
                        if self.read_only {
                            Err(ReqError::ReadOnly)
                        } else {
                            self.check_range(sector, len).and_then(|mut off| {
                                let mut left = len;
                                while left > 0 {
                                    let n = left.min(self.buf.len());
                                    reader.read_exact(&mut self.buf[..n])?;
                                    self.file.write_all_at(&self.buf[..n], off)?;
                                    left -= n;
                                    off += n as u64;
                                }
                                Ok(0)
                            })
                        }
                    }
                    VIRTIO_BLK_T_FLUSH => self.file.sync_data().map(|_| 0).map_err(ReqError::Io),
                    VIRTIO_BLK_T_GET_ID => {
                        let n = writer.available_bytes().min(ID_LEN);
                        writer
                            .write_all(&self.id[..n])
                            .map(|_| n)
                            .map_err(ReqError::Io)
                    }
                    other => Err(ReqError::Unsupported(other)),
                }
            }
        };
        let (status, data_len) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(ReqError::Unsupported(t)) => {
                crate::debug_limited!(rtype = t, "virtio-blk: unsupported request type");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(e) => {
                crate::warn_limited!(error = %e, "virtio-blk: request failed");
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        if status_w.write_all(&[status]).is_err() {
            return None;
        }
        u32::try_from(data_len + 1).ok()
    }

    /// Writes IOERR into the last writable byte of a chain whose readable part is unusable.
    fn status_only(&self, chain: DescriptorChain<&GuestMemory>) -> Option<u32> {
        let mut w = chain.writer(&self.mem).ok()?;
        let avail = w.available_bytes();
        if avail == 0 {
            return None;
        }
        let mut s = w.split_at(avail - 1).ok()?;
        s.write_all(&[VIRTIO_BLK_S_IOERR]).ok()?;
        Some(1)
    }
}

impl Worker for BlockWorker {
    fn queue_notified(&mut self, _ep: &Epoll, _index: usize) -> Result<()> {
        let mut used = false;
        let mem = self.mem.clone();
        for _ in 0..self.queue.size() {
            let Some(chain) = pop(&mut self.queue, &mem)? else {
                break;
            };
            let head = chain.head_index();
            let len = self.request(chain).unwrap_or(0);
            add_used(&mut self.queue, &mem, head, len)?;
            used = true;
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }
}
