//! Payload decoders of domain data: Open requests (exec), controls and exec stream
//! messages. Accepted values must satisfy the limits and round-trip.
#![no_main]

use bulkhead_wire::{Control, ExecMessage, OpenRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = OpenRequest::decode(data) {
        assert!(r.validate().is_ok());
        assert_eq!(OpenRequest::decode(&r.encode()).as_ref(), Ok(&r));
    }
    if let Ok(c) = Control::decode(data) {
        assert_eq!(Control::decode(&c.encode()).as_ref(), Ok(&c));
    }
    if let Ok(m) = ExecMessage::decode(data) {
        assert_eq!(ExecMessage::decode(&m.encode()).as_ref(), Ok(&m));
    }
});
