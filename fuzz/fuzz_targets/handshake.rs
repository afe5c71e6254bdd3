//! Handshake message decoders; accepted messages must round-trip.
#![no_main]

use bulkhead_wire::handshake::{Hello, HelloAck, HelloReject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(h.encode(), data);
        assert!(h.min_version <= h.max_version);
    }
    if let Ok(a) = HelloAck::decode(data) {
        assert_eq!(a.encode(), data);
    }
    if let Ok(r) = HelloReject::decode(data) {
        assert_eq!(r.encode(), data);
    }
});
