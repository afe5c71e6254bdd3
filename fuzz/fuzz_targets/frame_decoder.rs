//! The incremental frame decoder and `decode_one` on arbitrary bytes, pushed in arbitrary
//! chunk sizes. Decoded frames must re-encode to the same bytes.
#![no_main]

use bulkhead_wire::frame::{decode_one, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let version = ctl & 1; // 0 = handshake phase, 1 = protocol version 1
    let chunk = usize::from(ctl >> 1).max(1);
    let max_payload = 4096 + u32::from(ctl) * 257;

    let mut dec = FrameDecoder::new(max_payload);
    dec.set_version(version);
    let mut frames = Vec::new();
    'outer: for piece in input.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    assert!(
                        dec.next_frame().is_err(),
                        "decoder recovered after an error"
                    );
                    break 'outer;
                }
            }
        }
        // Never more buffered than one incomplete frame plus the last chunk.
        assert!(dec.buffered() <= 12 + max_payload as usize + chunk);
    }

    // The one-shot decoder agrees with the incremental one.
    let mut rest = input;
    for f in &frames {
        let (g, used) = decode_one(rest, version, max_payload).expect("decode_one disagrees");
        assert_eq!(&g, f);
        assert_eq!(&f.encode()[..], &rest[..used]);
        rest = &rest[used..];
    }
});
