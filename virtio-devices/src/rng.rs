//! virtio-rng (virtio 1.x section 5.4): fills the driver's buffers from getrandom(2).

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::Epoll;

use crate::util::{add_used, pop};
use crate::{
    device_type, features, Activation, Error, GuestMemory, IrqLine, Result, VirtioDevice, Worker,
};

pub const QUEUE_SIZE: u16 = 64;
/// Most bytes given for one buffer (a driver asking for more gets this much).
pub const MAX_PER_REQUEST: usize = 64 * 1024;

/// The entropy device.
pub struct Rng {
    queue_sizes: [u16; 1],
}

impl Rng {
    pub fn new() -> Self {
        Rng {
            queue_sizes: [QUEUE_SIZE],
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }
    fn kind(&self) -> &'static str {
        "rng"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, a: Activation) -> Result<Box<dyn Worker>> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| Error::Driver("no queue".into()))?;
        Ok(Box::new(RngWorker {
            mem: a.mem,
            queue,
            irq: a.irq,
            buf: vec![0u8; MAX_PER_REQUEST],
        }))
    }
}

struct RngWorker {
    mem: GuestMemory,
    queue: Queue,
    irq: Arc<IrqLine>,
    buf: Vec<u8>,
}

impl Worker for RngWorker {
    fn queue_notified(&mut self, _ep: &Epoll, _index: usize) -> Result<()> {
        let mem = self.mem.clone();
        let mut used = false;
        for _ in 0..self.queue.size() {
            let Some(chain) = pop(&mut self.queue, &mem)? else {
                break;
            };
            let head = chain.head_index();
            let mut len = 0u32;
            match chain.writer(&mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_PER_REQUEST);
                    if n == 0 {
                        crate::warn_limited!("virtio-rng: buffer without writable descriptors");
                    } else if let Err(e) = getrandom::fill(&mut self.buf[..n]) {
                        crate::error_limited!(error = %e, "virtio-rng: getrandom failed");
                    } else if let Err(e) = w.write_all(&self.buf[..n]) {
                        crate::warn_limited!(error = %e, "virtio-rng: cannot write the buffer");
                    } else {
                        len = n as u32;
                    }
                }
                Err(e) => crate::warn_limited!(error = %e, "virtio-rng: bad descriptors"),
            }
            add_used(&mut self.queue, &mem, head, len)?;
            used = true;
        }
        if used {
            self.irq.signal_used();
        }
        Ok(())
    }
}
