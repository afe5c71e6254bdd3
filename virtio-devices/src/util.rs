//! Small helpers shared by the devices.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::{Error, GuestMemory, Result};

/// The next available chain of `queue`, or None when the ring is empty or the queue is not
/// enabled. An avail index more than the queue size ahead of ours is a driver error.
pub(crate) fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>> {
    if !queue.ready() {
        return Ok(None);
    }
    let mut it = queue.iter(mem)?;
    Ok(it.next())
}

/// Puts back the chain `pop` returned last (it will be returned again).
pub(crate) fn unpop(queue: &mut Queue) {
    queue.go_to_previous_position();
}

/// Adds a used element. Fails (the device then needs a reset) when the head index is out of
/// range or the used ring cannot be written.
pub(crate) fn add_used(queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32) -> Result<()> {
    queue.add_used(mem, head, len).map_err(|e| {
        crate::warn_limited!(head, error = %e, "virtio: cannot return a descriptor chain");
        Error::Queue(e)
    })
}

/// A copy of a queue's configuration and indices.
pub(crate) fn clone_queue(q: &Queue) -> Queue {
    // The state of a Queue always converts back (its values were validated when set).
    match Queue::try_from(q.state()) {
        Ok(c) => c,
        Err(e) => {
            crate::error_limited!(error = %e, "virtio: queue state did not round-trip");
            Queue::new(q.max_size()).unwrap_or_default()
        }
    }
}

/// Copies the bytes of a little-endian config space image at `offset` into `data`; bytes
/// past the end read as zero.
pub(crate) fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o).copied())
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::read_config_bytes;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1u8, 2, 3, 4, 5, 6];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 4, &mut d);
        assert_eq!(d, [5, 6, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
        let mut one = [0u8; 1];
        read_config_bytes(&cfg, 0, &mut one);
        assert_eq!(one, [1]);
    }
}
