//! The GUI protocol decoders (both directions; dom0 runs the agent->dom0 one on hostile
//! bytes) and `decode_one` on arbitrary bytes, pushed in arbitrary chunk sizes. Decoded
//! messages must re-encode to the same bytes, and the decoder never buffers more than one
//! header plus the largest body of the announced type plus the last chunk.
#![no_main]

use bulkhead_wire::gui::{
    decode_one, AgentMsg, GuiDecoder, GuiMessage, HostMsg, HEADER_LEN, MAX_DAMAGE_BODY,
    MAX_KEYMAP_LEN,
};
use libfuzzer_sys::fuzz_target;

fn run<M: GuiMessage + PartialEq + std::fmt::Debug>(input: &[u8], chunk: usize) {
    let mut dec = GuiDecoder::<M>::new();
    let mut msgs = Vec::new();
    'outer: for piece in input.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(_) => {
                    assert!(dec.next_message().is_err(), "decoder recovered after an error");
                    break 'outer;
                }
            }
        }
        assert!(dec.buffered() <= HEADER_LEN + MAX_DAMAGE_BODY.max(MAX_KEYMAP_LEN) + chunk);
    }
    let mut rest = input;
    for m in &msgs {
        let (g, used) = decode_one::<M>(rest)
            .expect("decode_one disagrees")
            .expect("decode_one wants more");
        assert_eq!(&g, m);
        assert_eq!(&m.encode()[..], &rest[..used]);
        rest = &rest[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl >> 1).max(1);
    if ctl & 1 == 0 {
        run::<AgentMsg>(input, chunk);
    } else {
        run::<HostMsg>(input, chunk);
    }
});
