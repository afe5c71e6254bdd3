//! The KVM monitor's guest-facing dispatch: random port I/O and MMIO reads and writes (any
//! address, any size including invalid ones) on the buses holding the 16550 serial, the i8042,
//! the POST port and the ACPI sleep registers. Nothing may panic, a read keeps its length, and
//! an access that hits no device reads as all-ones.
#![no_main]

use std::sync::{Arc, Mutex};

use bulkhead_vmm::bus::Bus;
use bulkhead_vmm::legacy::{AcpiSleep, PostPort, SerialDevice, SerialIrq, StopSignal, I8042};
use bulkhead_vmm::serial_log::BoundedLog;
use libfuzzer_sys::fuzz_target;

fn log() -> BoundedLog {
    let path = std::env::temp_dir().join(format!("bulkhead-fuzz-vmm-serial-{}", std::process::id()));
    BoundedLog::open(&path, 4096).expect("opening the fuzz serial log")
}

fuzz_target!(|data: &[u8]| {
    let stop = Arc::new(StopSignal::new().expect("eventfd"));
    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    pio.insert(0x3f8, 8, Arc::new(Mutex::new(SerialDevice::new(SerialIrq::None, log()))))
        .unwrap();
    pio.insert(0x60, 5, Arc::new(Mutex::new(I8042::new(stop.clone())))).unwrap();
    pio.insert(0x80, 1, Arc::new(Mutex::new(PostPort::new(None)))).unwrap();
    pio.insert(0x600, 2, Arc::new(Mutex::new(AcpiSleep::new(stop.clone())))).unwrap();
    mmio.insert(0xd000_0000, 0x1000, Arc::new(Mutex::new(SerialDevice::new(SerialIrq::None, log()))))
        .unwrap();
    mmio.insert(0xfeff_f000, 0x1000, Arc::new(Mutex::new(I8042::new(stop.clone())))).unwrap();

    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let write = op & 1 != 0;
        let on_mmio = op & 2 != 0;
        let size = [1usize, 2, 4, 8, 3, 0, 16, 5][usize::from((op >> 2) & 7)];
        let addr = if on_mmio {
            let n = if op & 0x20 != 0 { 8 } else { 2 };
            let (a, rest) = input.split_at(n.min(input.len()));
            input = rest;
            let mut b = [0u8; 8];
            b[..a.len()].copy_from_slice(a);
            let v = u64::from_le_bytes(b);
            if n == 2 { 0xd000_0000 + v } else { v }
        } else {
            let (a, rest) = input.split_at(2.min(input.len()));
            input = rest;
            let mut b = [0u8; 2];
            b[..a.len()].copy_from_slice(a);
            // Bias towards the devices' ports.
            let p = u16::from_le_bytes(b);
            u64::from(if op & 0x40 != 0 { 0x3f8 + (p & 0xf) } else { p })
        };
        let bus = if on_mmio { &mmio } else { &pio };
        if write {
            let (d, rest) = input.split_at(size.min(input.len()));
            input = rest;
            bus.write(addr, d);
        } else {
            let mut buf = vec![0x5au8; size];
            let hit = bus.read(addr, &mut buf);
            assert_eq!(buf.len(), size);
            if !hit {
                assert!(buf.iter().all(|&b| b == 0xff), "unknown read not all-ones");
            }
        }
    }
});
