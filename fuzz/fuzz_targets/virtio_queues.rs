//! Random queue contents for every virtio device (blk, rng, vsock, net) behind the virtio-mmio
//! transport on a small guest memory: descriptor tables, avail rings, request/packet headers,
//! arbitrary memory bytes and MMIO register writes, then notifications. Devices run inline
//! (no threads), so each kick is served before the register write returns.
//!
//! Checks: no panic; every guest memory access goes through vm-memory (out of range is an
//! error, never an access); bounded work per kick: the used index advances by at most the
//! queue size per notification (and libFuzzer's timeout catches a loop).
#![no_main]

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bulkhead_virtio::mmio::{reg, status};
use bulkhead_virtio::{
    Block, DeviceContext, GuestMemory, Interrupt, MmioDevice, MmioTransport, Net, Rng,
    VirtioDevice, Vsock,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x10000;
const QSIZE: u16 = 8;
const RINGS_END: u64 = 0x1000;

struct Irq(AtomicUsize);
impl Interrupt for Irq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    uds: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, vec![0xa5u8; 64 * 1024]).expect("disk image");
        let uds = dir.path().join("v.sock");
        // A host service on port 1024 so guest connections can succeed.
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("v.sock_1024"))
            .expect("listener");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        Env {
            _dir: dir,
            disk,
            uds,
            listener: listener,
        }
    })
}

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Where the harness puts queue q's rings (unless the input asks for its own addresses).
fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x100 + q * 0x300;
    (base, base + 0x100, base + 0x200)
}

fn device(sel: u8) -> Option<Box<dyn VirtioDevice>> {
    let e = env();
    Some(match sel % 4 {
        0 => {
            let ro = sel & 4 != 0;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(!ro)
                .open(&e.disk)
                .ok()?;
            Box::new(Block::new(f, ro).ok()?)
        }
        1 => Box::new(Rng::new()),
        2 => Box::new(Vsock::new(3 + u64::from(sel >> 4), e.uds.clone()).ok()?),
        _ => {
            let (a, _b) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            )
            .ok()?;
            let fd: OwnedFd = a;
            Box::new(Net::from_frames_fd(fd, [2, 0, 0, 0, 0, 1]))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    // Connections of earlier runs: accept and close them so the backlog never fills up.
    while env().listener.accept().is_ok() {}
    let Some(sel) = inp.u8() else { return };
    let Some(dev) = device(sel) else { return };
    let nqueues = dev.queue_max_sizes().len();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
    let irq = Arc::new(Irq(AtomicUsize::new(0)));
    let ctx = DeviceContext {
        mem: mem.clone(),
        irq,
        thread_filter: None,
    };
    let Ok(mut t) = MmioTransport::new_inline(dev, ctx) else {
        return;
    };

    // Driver initialisation, with the input choosing features and (sometimes) ring addresses.
    let Some(setup) = inp.u8() else { return };
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    let feats = if setup & 1 == 0 {
        let Some(f) = inp.u64() else { return };
        f
    } else {
        1 << 32 | 1 << 28
    };
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w32(&mut t, reg::DRIVER_FEATURES, feats as u32);
    w32(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w32(&mut t, reg::DRIVER_FEATURES, (feats >> 32) as u32);
    w32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..nqueues as u64 {
        w32(&mut t, reg::QUEUE_SEL, q as u32);
        w32(&mut t, reg::QUEUE_NUM, u32::from(QSIZE));
        let (d, a, u) = if setup & 2 != 0 {
            let (Some(d), Some(a), Some(u)) = (inp.u64(), inp.u64(), inp.u64()) else {
                return;
            };
            (d, a, u)
        } else {
            rings(q)
        };
        w32(&mut t, reg::QUEUE_DESC_LOW, d as u32);
        w32(&mut t, reg::QUEUE_DESC_HIGH, (d >> 32) as u32);
        w32(&mut t, reg::QUEUE_DRIVER_LOW, a as u32);
        w32(&mut t, reg::QUEUE_DRIVER_HIGH, (a >> 32) as u32);
        w32(&mut t, reg::QUEUE_DEVICE_LOW, u as u32);
        w32(&mut t, reg::QUEUE_DEVICE_HIGH, (u >> 32) as u32);
        w32(&mut t, reg::QUEUE_READY, 1);
    }
    w32(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );

    let mut avail_idx = [0u16; 4];
    // The used index each queue had after the device last touched it (raw memory writes may
    // change the field in between; the device writes its own counter).
    let used_now = |q: usize| -> u16 {
        mem.read_obj(GuestAddress(rings(q as u64).2 + 2))
            .unwrap_or(0)
    };
    let mut rings_tampered = setup & 2 != 0;
    let mut last_used: Vec<u16> = (0..nqueues).map(used_now).collect();
    for _ in 0..256 {
        let Some(op) = inp.u8() else { break };
        let q = usize::from(op >> 4) % nqueues;
        let (desc, avail, _used) = rings(q as u64);
        match op & 0xf {
            // Raw bytes anywhere in memory (headers, payloads, rings).
            0 => {
                let (Some(addr), Some(len)) = (inp.u16(), inp.u8()) else {
                    break;
                };
                let bytes = inp.bytes(usize::from(len)).to_vec();
                let _ = mem.write_slice(&bytes, GuestAddress(u64::from(addr)));
                if u64::from(addr) < RINGS_END {
                    // Raw descriptors may now point into the rings: the used index is no
                    // longer only the device's counter.
                    rings_tampered = true;
                }
                // The device's counters are its own; a raw write over a used index is the
                // driver's business.
                last_used = (0..nqueues).map(used_now).collect();
            }
            // A descriptor in queue q's table.
            1 | 2 | 3 => {
                let (Some(i), Some(addr), Some(len), Some(flags), Some(next)) =
                    (inp.u8(), inp.u32(), inp.u32(), inp.u8(), inp.u8())
                else {
                    break;
                };
                let addr = if op & 0xf == 3 {
                    u64::from(addr) << 16
                } else {
                    u64::from(addr) % MEM as u64
                };
                // Buffers never overlap the rings (below RINGS_END), so the used index the
                // bound check reads is the device's own.
                let addr = if addr < RINGS_END {
                    addr | RINGS_END
                } else {
                    addr
                };
                let len = if op & 0xf == 1 { len % 0x2000 } else { len };
                let e = desc + 16 * u64::from(i % QSIZE as u8);
                let _ = mem.write_obj(addr, GuestAddress(e));
                let _ = mem.write_obj(len, GuestAddress(e + 8));
                let _ = mem.write_obj(u16::from(flags & 7), GuestAddress(e + 12));
                let _ = mem.write_obj(u16::from(next), GuestAddress(e + 14));
            }
            // Make a head available.
            4 => {
                let Some(head) = inp.u8() else { break };
                let idx = &mut avail_idx[q];
                let slot = avail + 4 + 2 * u64::from(*idx % QSIZE);
                let _ = mem.write_obj(u16::from(head), GuestAddress(slot));
                *idx = idx.wrapping_add(1);
                let _ = mem.write_obj(*idx, GuestAddress(avail + 2));
            }
            // Raw avail index.
            5 => {
                let Some(v) = inp.u16() else { break };
                avail_idx[q] = v;
                let _ = mem.write_obj(v, GuestAddress(avail + 2));
            }
            // Notify, checking the work done is bounded by the queue size.
            6 | 7 | 8 => {
                w32(&mut t, reg::QUEUE_NOTIFY, q as u32);
                for (qi, last) in last_used.iter_mut().enumerate() {
                    let after = used_now(qi);
                    // A kick serves the queue once; a device may refill another queue in
                    // the same pass (vsock answers on rx), at most twice per kick.
                    if !rings_tampered {
                        assert!(
                            after.wrapping_sub(*last) <= 2 * QSIZE,
                            "one notification returned {} buffers on queue {qi} (size {QSIZE})",
                            after.wrapping_sub(*last)
                        );
                    }
                    *last = after;
                }
            }
            // Any register write.
            9 => {
                let (Some(off), Some(v)) = (inp.u16(), inp.u32()) else {
                    break;
                };
                w32(&mut t, u64::from(off) & 0xffc, v);
                last_used = (0..nqueues).map(used_now).collect();
            }
            // Register or config reads of any width.
            10 => {
                let (Some(off), Some(w)) = (inp.u16(), inp.u8()) else {
                    break;
                };
                let mut b = [0u8; 8];
                let n = [1usize, 2, 4, 8][usize::from(w & 3)];
                t.read(u64::from(off), &mut b[..n]);
            }
            11 => {
                t.poll_backends();
                last_used = (0..nqueues).map(used_now).collect();
            }
            _ => {
                let _ = t.status();
            }
        }
        if t.needs_reset() && op & 0x80 != 0 {
            // A driver would reset here; the device must come back clean.
            w32(&mut t, reg::STATUS, 0);
            assert!(!t.needs_reset());
            assert!(!t.is_activated());
            break;
        }
    }
});
