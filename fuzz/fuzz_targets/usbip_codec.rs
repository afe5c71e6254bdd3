//! The USB/IP codec on arbitrary bytes. The first byte chooses the phase (even: operation
//! messages, odd: URBs); the rest is decoded message after message as a stream would be.
//! Every decoded message must encode to bytes that decode to the same message and length,
//! a decoder must never claim more bytes than it was given, and nothing may panic.
#![no_main]

use bulkhead_usb::usbip::{decode_op, decode_urb, encode_op, encode_urb, Direction, Limits};
use libfuzzer_sys::fuzz_target;

/// Pending commands as the fuzzer's seqnums say: some IN, some OUT, some unknown.
fn direction_of(seqnum: u32) -> Option<Direction> {
    match seqnum % 3 {
        0 => Some(Direction::In),
        1 => Some(Direction::Out),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    // Small limits so the fuzzer reaches them.
    let limits = Limits {
        max_devices: 8,
        max_interfaces: 8,
        max_transfer: 4096,
        max_iso_packets: 16,
    };
    for _ in 0..64 {
        if mode % 2 == 0 {
            match decode_op(rest, &limits) {
                Ok(Some((msg, used))) => {
                    assert!(used > 0 && used <= rest.len());
                    let bytes = encode_op(&msg);
                    let (again, n) = decode_op(&bytes, &limits)
                        .expect("re-encoded message decodes")
                        .expect("re-encoded message is complete");
                    assert_eq!(again, msg);
                    assert_eq!(n, bytes.len());
                    rest = &rest[used..];
                }
                Ok(None) | Err(_) => return,
            }
        } else {
            match decode_urb(rest, &limits, &direction_of) {
                Ok(Some((msg, used))) => {
                    assert!(used > 0 && used <= rest.len());
                    let bytes = encode_urb(&msg);
                    let (again, n) = decode_urb(&bytes, &limits, &direction_of)
                        .expect("re-encoded URB decodes")
                        .expect("re-encoded URB is complete");
                    assert_eq!(again, msg);
                    assert_eq!(n, bytes.len());
                    rest = &rest[used..];
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
});
