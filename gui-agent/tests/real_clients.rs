//! Real Wayland clients against a real bulkhead-gui-agent, checked from the dom0 side.

mod common;

use common::{have, Agent, Dom0};

use bulkhead_gui_agent::proto::HostMsg;
use bulkhead_gui_agent::testclient::{frame_of, pattern};

/// Every pixel equals the test pattern of one frame.
fn shows_pattern(w: &common::Win) -> bool {
    if w.width == 0 || w.height == 0 {
        return false;
    }
    let f = frame_of(w.px(0, 0), 0);
    (0..w.height).all(|y| (0..w.width).all(|x| w.px(x, y) == pattern(f, x, y)))
}

#[test]
fn test_client_pixels_resize_reconnect_and_exit() {
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    dom0.send(&HostMsg::Hello { version: 1 });
    let mut client = agent
        .client(env!("CARGO_BIN_EXE_bulkhead-gui-testclient"))
        .args([
            "--title",
            "pattern test",
            "--width",
            "320",
            "--height",
            "240",
        ])
        .spawn()
        .expect("start the test client");
    dom0.until("the test window with its pattern", 30, |d| {
        d.window_titled("pattern test")
            .is_some_and(|(_, w)| w.mapped && w.width == 320 && w.height == 240 && shows_pattern(w))
    });
    assert_eq!(dom0.hello, Some(1));
    let (id, w) = dom0.window_titled("pattern test").expect("window");
    assert_eq!(w.app_id, "bulkhead-gui-testclient");

    // a resize from dom0 is honoured: new size, still the pattern
    dom0.send(&HostMsg::ConfigureRequest {
        window: id,
        width: 400,
        height: 300,
    });
    dom0.until("the resized window", 30, |d| {
        d.windows
            .get(&id)
            .is_some_and(|w| w.width == 400 && w.height == 300 && shows_pattern(w))
    });

    // a second dom0 peer gets the full current state
    drop(dom0);
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    dom0.until("the window after a reconnect", 30, |d| {
        d.windows
            .get(&id)
            .is_some_and(|w| w.title == "pattern test" && w.width == 400 && shows_pattern(w))
    });

    // unknown windows in dom0 messages are ignored, the link stays up
    dom0.send(&HostMsg::ConfigureRequest {
        window: 9999,
        width: 10,
        height: 10,
    });
    dom0.send(&HostMsg::FocusIn { window: 9999 });

    // close request -> the client exits -> the window disappears
    dom0.send(&HostMsg::CloseRequest { window: id });
    dom0.until("the window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
    let status = client.wait().expect("wait for the client");
    assert!(status.success(), "test client: {status}");
}

#[test]
fn weston_simple_shm_window_and_pixels() {
    if !have("weston-simple-shm") {
        return;
    }
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    let mut client = agent
        .client("weston-simple-shm")
        .spawn()
        .expect("start weston-simple-shm");
    dom0.until("the simple-shm window", 30, |d| {
        d.window_titled("simple-shm")
            .is_some_and(|(_, w)| w.mapped && w.damage_msgs > 3)
    });
    let (id, w) = dom0.window_titled("simple-shm").expect("window");
    eprintln!("simple-shm window {id}: {}x{}", w.width, w.height);
    let _ = client.kill();
    let _ = client.wait();
    dom0.until("the simple-shm window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
}
