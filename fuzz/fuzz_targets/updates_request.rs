//! A template's request to the update proxy as the net domain reads it: arbitrary bytes up to
//! the end of a head, then parsed. The parser must never panic, a parsed request names a valid
//! host and a non-zero port, a plain request's rewritten head is itself a request head that
//! ends the connection (`Connection: close`) and carries no proxy header.
#![no_main]

use bulkhead_updates_proxy::request::{head_end, parse, valid_host, ProxyRequest, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = match head_end(data) {
        Some(end) => &data[..end],
        None => data,
    };
    let Ok(req) = parse(head) else {
        return;
    };
    assert!(head.len() <= MAX_HEAD);
    assert!(req.port() != 0);
    assert_eq!(valid_host(req.host()).as_deref(), Some(req.host()));
    if let ProxyRequest::Http { head: out, .. } = &req {
        assert_eq!(head_end(out), Some(out.len()));
        let text = String::from_utf8_lossy(out).to_ascii_lowercase();
        assert!(text.ends_with("connection: close\r\n\r\n"));
        assert!(!text.contains("\nproxy-"));
    }
});
