//! The agent against the real dom0 side: bulkhead-gui-host's headless Receiver (with its
//! window rules) receives a real client's window through the agent.

mod common;

use std::time::Duration;

use bulkhead_gui_agent::testclient::{frame_of, pattern};
use bulkhead_gui_host::headless::Receiver;
use bulkhead_gui_host::Rules;
use common::Agent;

fn shows_pattern(p: &bulkhead_gui_host::headless::Pixels) -> bool {
    let Some(p00) = p.get(0, 0) else {
        return false;
    };
    let f = frame_of(p00, 0);
    (0..p.height).all(|y| (0..p.width).all(|x| p.get(x, y) == Some(pattern(f, x, y))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gui_host_receiver_gets_window_pixels_resize_and_close() {
    let agent = Agent::start();
    let stream = tokio::net::UnixStream::connect(agent.gui_socket())
        .await
        .expect("connect to the agent");
    let rx = Receiver::new();
    rx.add_peer("work", stream, Rules::default(), None);
    let mut client = agent
        .client(env!("CARGO_BIN_EXE_bulkhead-gui-testclient"))
        .args([
            "--title",
            "through gui-host",
            "--width",
            "300",
            "--height",
            "200",
        ])
        .spawn()
        .expect("start the test client");
    let secs = Duration::from_secs(30);
    let w = rx
        .wait_window("work", "through gui-host", secs)
        .await
        .expect("window in the receiver");
    assert_eq!(w.app_id, "bulkhead-gui-testclient");
    rx.wait_for(secs, |r| {
        r.pixels("work", w.id)
            .ok()
            .filter(|p| p.width == 300 && p.height == 200 && shows_pattern(p))
    })
    .await
    .expect("the client's pattern in dom0's buffer");

    rx.configure("work", w.id, 500, 400).expect("configure");
    rx.wait_for(secs, |r| {
        r.pixels("work", w.id)
            .ok()
            .filter(|p| p.width == 500 && p.height == 400 && shows_pattern(p))
    })
    .await
    .expect("the resized window");

    rx.close("work", w.id).expect("close");
    rx.wait_for(secs, |r| {
        (!r.windows("work").iter().any(|x| x.id == w.id)).then_some(())
    })
    .await
    .expect("window gone after close");
    let status = client.wait().expect("client exit");
    assert!(status.success());
    let st = rx.status("work");
    assert!(
        matches!(
            st,
            Some(bulkhead_gui_host::headless::PeerStatus::Ready { .. })
        ),
        "dom0 side still happy with the agent: {st:?}"
    );
}
