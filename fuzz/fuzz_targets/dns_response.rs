//! The DNS answer parser (answers come from the uplink's resolver: hostile) on arbitrary
//! bytes, as an answer to query id 0x1234; and answers built for a query made from the input.
#![no_main]

use bulkhead_net::dns::{build_query, build_response, parse_response, MAX_ANSWERS, TYPE_A};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_response(data, 0x1234) {
        assert!(v.len() <= MAX_ANSWERS);
    }
    if let Ok(name) = std::str::from_utf8(data) {
        if let Ok(q) = build_query(7, name, TYPE_A) {
            let a = "192.0.2.1".parse().expect("fixed address");
            if let Some(r) = build_response(&q, &[a]) {
                assert_eq!(parse_response(&r, 7), Ok(vec![a]));
            }
        }
    }
});
