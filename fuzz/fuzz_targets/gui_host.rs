//! dom0's window-state machine on arbitrary agent bytes: after the hello, every decoded
//! message is applied under small limits until the first violation. Never panics, and after
//! every applied message the bookkeeping holds: buffer bytes = sum of window buffers, within
//! the limit; at most max_windows windows; every window placed on screen; popups only with a
//! parent that existed and within the size rule; pixels exactly width*height*4.
#![no_main]

use std::time::{Duration, Instant};

use bulkhead_gui_host::{DomainWindows, Rules};
use bulkhead_wire::gui::{AgentMsg, GuiDecoder, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rules = Rules {
        screen_width: 640,
        screen_height: 480,
        max_windows: 8,
        max_buffer_bytes: 8 << 20,
        max_messages_per_sec: 1000,
        message_burst: 4000,
        ..Rules::default()
    };
    let mut st = DomainWindows::new(rules.clone());
    let t0 = Instant::now();
    st.apply_at(AgentMsg::Hello(Hello::OURS), t0).expect("hello");
    let mut dec = GuiDecoder::<AgentMsg>::new();
    dec.push(data);
    let mut n = 0u64;
    while let Ok(Some(m)) = dec.next_message() {
        n += 1;
        if st.apply_at(m, t0 + Duration::from_micros(n * 300)).is_err() {
            break;
        }
        let mut total = 0u64;
        let mut count = 0usize;
        for w in st.windows() {
            count += 1;
            assert_eq!(
                w.pixels().len() as u64,
                u64::from(w.width) * u64::from(w.height) * 4
            );
            total += w.pixels().len() as u64;
            for (pos, len, screen) in [
                (w.x, w.width, rules.screen_width),
                (w.y, w.height, rules.screen_height),
            ] {
                assert!(pos >= 0, "{w:?}");
                assert!(
                    pos as u64 + u64::from(len.min(screen)) <= u64::from(screen),
                    "{w:?}"
                );
            }
            if w.popup_parent.is_some() {
                let area = u64::from(w.width) * u64::from(w.height);
                assert!(area * 100 <= 640 * 480 * 90, "{w:?}");
            }
        }
        assert!(count <= rules.max_windows);
        assert_eq!(total, st.buffer_bytes());
        assert!(total <= rules.max_buffer_bytes);
    }
});
