//! The USB/IP URB guard on arbitrary bytes: the input is cut into chunks, each chunk's first
//! byte says which side sent it (even: the importer, odd: the exporter) and how long it is;
//! each side's bytes are fed through one `UrbGuard` as a relay would (buffered, message by
//! message). The guard must never panic, never claim more bytes than it was given (nor
//! zero), and never count more pending commands than its limit.
//!
//! The first byte also chooses the endpoint model: bit 6 clear, none (endpoints unknown);
//! set, a fixed device with bulk IN 0x81 / OUT 0x02 in interface 0 and, in interface 1, an
//! empty alt 0 and an isochronous IN 0x83 / OUT 0x04 alt 1 (bit 5: alt 1 current at the
//! start), in configuration 1 of two, so submits to missing endpoints, ISO rules and
//! SET_INTERFACE / SET_CONFIGURATION tracking are reached.
#![no_main]

use bulkhead_usb::usbip::{parse_descriptors, DeviceEndpoints, GuardLimits, Limits, UrbGuard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits so the fuzzer reaches them.
    let limits = GuardLimits {
        codec: Limits {
            max_devices: 8,
            max_interfaces: 8,
            max_transfer: 4096,
            max_iso_packets: 16,
        },
        max_pending: 8,
        max_pending_bytes: 8192,
        devid: if data.first().is_some_and(|b| b & 0x80 != 0) {
            Some(0x0001_0002)
        } else {
            None
        },
        endpoints: data
            .first()
            .filter(|b| *b & 0x40 != 0)
            .map(|b| model(b & 0x20 != 0)),
    };
    let max_pending = limits.max_pending;
    let max_pending_bytes = limits.max_pending_bytes;
    let mut guard = UrbGuard::new(limits);
    // What each side has sent that the guard has not claimed yet.
    let mut pending_bytes: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let side = usize::from(head & 1);
        let len = usize::from(head >> 1).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        let buf = &mut pending_bytes[side];
        buf.extend_from_slice(chunk);
        loop {
            let r = if side == 0 {
                guard.from_importer(buf)
            } else {
                guard.from_exporter(buf)
            };
            assert!(guard.pending() <= max_pending);
            assert!(guard.pending_bytes() <= max_pending_bytes);
            match r {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len(), "claimed {n} of {}", buf.len());
                    buf.drain(..n);
                }
                Ok(None) => break,
                // A violation ends the stream, as the relay does.
                Err(_) => return,
            }
        }
    }
});

fn model(alt1: bool) -> DeviceEndpoints {
    let ep = |address: u8, attributes: u8| [7, 5, address, attributes, 8, 0, 1];
    let mut raw = vec![18, 1, 0, 2, 0, 0, 0, 64, 1, 0, 2, 0, 0, 1, 0, 0, 0, 2];
    let mut config = vec![9, 2, 0, 0, 2, 1, 0, 0x80, 50];
    config.extend([9, 4, 0, 0, 2, 8, 6, 0x50, 0]);
    config.extend(ep(0x81, 2));
    config.extend(ep(0x02, 2));
    config.extend([9, 4, 1, 0, 0, 1, 2, 0, 0]);
    config.extend([9, 4, 1, 1, 2, 1, 2, 0, 0]);
    config.extend(ep(0x83, 5));
    config.extend(ep(0x04, 9));
    let len = config.len() as u16;
    config[2..4].copy_from_slice(&len.to_le_bytes());
    raw.extend(&config);
    // configuration 2: one interface with an interrupt IN 0x85
    let mut second = vec![9, 2, 0, 0, 1, 2, 0, 0x80, 50];
    second.extend([9, 4, 0, 0, 1, 3, 0, 0, 0]);
    second.extend(ep(0x85, 3));
    let len = second.len() as u16;
    second[2..4].copy_from_slice(&len.to_le_bytes());
    raw.extend(&second);
    let descriptors = match parse_descriptors(&raw) {
        Ok(d) => d,
        Err(e) => panic!("the fixed descriptors do not parse: {e}"),
    };
    DeviceEndpoints::new(descriptors, 1, if alt1 { &[(1, 1)] } else { &[] })
}
