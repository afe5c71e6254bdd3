//! The USB/IP URB guard on arbitrary bytes: the input is cut into chunks, each chunk's first
//! byte says which side sent it (even: the importer, odd: the exporter) and how long it is;
//! each side's bytes are fed through one `UrbGuard` as a relay would (buffered, message by
//! message). The guard must never panic, never claim more bytes than it was given (nor
//! zero), and never count more pending commands than its limit.
#![no_main]

use bulkhead_usb::usbip::{GuardLimits, Limits, UrbGuard};
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
        devid: if data.first().is_some_and(|b| b & 0x80 != 0) {
            Some(0x0001_0002)
        } else {
            None
        },
    };
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
            assert!(guard.pending() <= limits.max_pending);
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
