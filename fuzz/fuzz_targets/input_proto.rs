//! The input proxy's stream as dom0 reads it: arbitrary bytes decoded message after message,
//! the first Hello restricted by the policy, every Events batch validated (with a time that
//! the fuzzer moves). A decoder must never claim more bytes than it was given, a decoded
//! message must re-encode to bytes that decode to the same message, the policy must never
//! let KEY_SYSRQ or anything outside a kind's allowed set through, and nothing may panic.
#![no_main]

use std::time::{Duration, Instant};

use bulkhead_input::proto::{
    allowed, decode, encode, restrict, Limits, Msg, Validator, EV_KEY, EV_REL, EV_SYN, KEY_SYSRQ,
    MAX_EVENTS, MAX_REL_VALUE, SYN_REPORT,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut rest = data;
    let mut validator: Option<Validator> = None;
    for step in 0..256u64 {
        let (msg, used) = match decode(rest) {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return,
        };
        assert!(used > 0 && used <= rest.len());
        let bytes = encode(&msg);
        assert_eq!(bytes.len(), used);
        let (again, n) = decode(&bytes)
            .expect("re-encoded message decodes")
            .expect("re-encoded message is complete");
        assert_eq!(again, msg);
        assert_eq!(n, used);
        rest = &rest[used..];
        match (msg, validator.as_mut()) {
            (Msg::Hello(h), None) => {
                assert!(!h.name.is_empty() && h.name.len() <= 80);
                assert!(h.name.bytes().all(|b| (0x20..=0x7e).contains(&b)));
                let v = Validator::new(
                    &h,
                    Limits {
                        max_events_per_sec: 500,
                        kind: None,
                    },
                );
                let caps = v.caps();
                let allow = allowed(h.kind);
                assert!(!caps.keys.contains(KEY_SYSRQ));
                assert!(caps.keys.iter().all(|k| allow.keys.contains(k)));
                assert!(caps.rels.iter().all(|r| allow.rels.contains(r)));
                assert!(caps.types.iter().all(|t| allow.types.contains(t)));
                assert_eq!(caps, &restrict(&h));
                validator = Some(v);
            }
            // The caller drops the peer here.
            (Msg::Hello(_), Some(_)) | (Msg::Events(_), None) => return,
            (Msg::Events(events), Some(v)) => {
                assert!(!events.is_empty() && events.len() <= MAX_EVENTS);
                let now = t0 + Duration::from_millis(step * 37);
                let Ok(checked) = v.check(&events, now) else {
                    return;
                };
                assert!(checked.events.len() + checked.dropped <= events.len());
                for e in &checked.events {
                    match e.type_ {
                        EV_SYN => assert_eq!(e.code, SYN_REPORT),
                        EV_KEY => {
                            assert!(v.caps().keys.contains(e.code) && e.code != KEY_SYSRQ);
                            assert!((0..=2).contains(&e.value));
                        }
                        EV_REL => {
                            assert!(v.caps().rels.contains(e.code));
                            assert!(e.value.unsigned_abs() <= MAX_REL_VALUE as u32);
                        }
                        t => panic!("event type {t} passed"),
                    }
                }
            }
        }
    }
});
