//! Real Wayland clients against a real bulkhead-gui-agent, checked from the dom0 side.

mod common;

use common::{have, Agent, Dom0};

use bulkhead_gui_agent::testclient::{frame_of, pattern};
use bulkhead_wire::gui::HostMsg;

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
    assert!(dom0.hello);
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
    dom0.send(&HostMsg::Close { window: id });
    dom0.until("the window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
    let status = client.wait().expect("wait for the client");
    assert!(status.success(), "test client: {status}");
}

/// A client that draws shadows around its window (outside the xdg window geometry it sets):
/// dom0 gets the window alone, its first pixel the buffer's at (shadow, shadow), also after a
/// resize from dom0.
#[test]
fn client_shadows_are_cropped_to_the_window_geometry() {
    const SHADOW: u32 = 12;
    let shows_window = |w: &common::Win| {
        if w.width == 0 || w.height == 0 {
            return false;
        }
        let f = frame_of(w.px(0, 0), SHADOW);
        (0..w.height)
            .all(|y| (0..w.width).all(|x| w.px(x, y) == pattern(f, x + SHADOW, y + SHADOW)))
    };
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    let mut client = agent
        .client(env!("CARGO_BIN_EXE_bulkhead-gui-testclient"))
        .args(["--title", "shadowed", "--width", "300", "--height", "200"])
        .args(["--shadow", &SHADOW.to_string()])
        .spawn()
        .expect("start the test client");
    dom0.until("the window without its shadows", 30, |d| {
        d.window_titled("shadowed")
            .is_some_and(|(_, w)| w.mapped && w.width == 300 && w.height == 200 && shows_window(w))
    });
    let (id, _) = dom0.window_titled("shadowed").expect("window");
    dom0.send(&HostMsg::ConfigureRequest {
        window: id,
        width: 360,
        height: 240,
    });
    dom0.until("the resized window without its shadows", 30, |d| {
        d.windows
            .get(&id)
            .is_some_and(|w| w.width == 360 && w.height == 240 && shows_window(w))
    });
    dom0.send(&HostMsg::Close { window: id });
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
    assert_eq!((w.width, w.height), (250, 250));
    // what simple-shm draws: a white 20-pixel padding; inside, the outer area's colour steps
    // by 0x080401 per column; the alpha is cleared along the x == y diagonal (its "cross")
    for (x, y) in [(5, 5), (244, 100), (100, 245)] {
        assert_eq!(w.px(x, y), 0xffff_ffff, "padding at ({x},{y})");
    }
    for x in 21..40 {
        let step = w.px(x + 1, 30).wrapping_sub(w.px(x, 30)) & 0x00ff_ffff;
        assert_eq!(step, 0x0008_0401, "colour step at ({x},30)");
    }
    for x in 21..229 {
        assert_eq!(w.px(x, x) >> 24, 0, "alpha on the diagonal at {x}");
    }
    assert_eq!(w.px(21, 200) >> 24, 0xff);
    // it animates: frame callbacks keep it drawing and new pixels keep arriving
    let before = w.px(21, 30);
    dom0.until("simple-shm's next frames", 30, |d| {
        d.windows.get(&id).is_some_and(|w| w.px(21, 30) != before)
    });
    let _ = client.kill();
    let _ = client.wait();
    dom0.until("the simple-shm window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
}

/// The XKB keycode of an unshifted character on a US keyboard (the agent's default keymap).
fn xkb_key(c: char) -> u32 {
    match bulkhead_gui_host::headless::us_key(c) {
        Some((keycode, false)) => keycode,
        _ => panic!("no unshifted key for {c:?}"),
    }
}

fn type_text(dom0: &mut Dom0, window: u32, text: &str) {
    for c in text.chars() {
        let keycode = xkb_key(c);
        dom0.send(&HostMsg::Key {
            window,
            keycode,
            pressed: true,
        });
        dom0.send(&HostMsg::Key {
            window,
            keycode,
            pressed: false,
        });
    }
}

#[test]
fn foot_gets_keys_typed_from_dom0() {
    if !have("foot") {
        return;
    }
    let agent = Agent::start();
    let work = tempfile::tempdir().expect("tempdir");
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    let mut foot = agent
        .client("foot")
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", work.path())
        .env("SHELL", "/bin/sh")
        .arg("--override=title=foot-under-test")
        .arg("--working-directory")
        .arg(work.path())
        .arg("/bin/sh")
        .spawn()
        .expect("start foot");
    dom0.until("the foot window", 30, |d| {
        d.windows
            .values()
            .any(|w| w.mapped && w.app_id == "foot" && w.damage_msgs > 0)
    });
    let id = *dom0
        .windows
        .iter()
        .find(|(_, w)| w.app_id == "foot")
        .expect("foot window")
        .0;
    dom0.send(&HostMsg::FocusIn { window: id });
    // give the shell time to start, then type; retry typing once if the shell was late
    let target = work.path().join("typed-ok");
    for attempt in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(500 * (attempt + 1)));
        type_text(&mut dom0, id, "touch typed-ok\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !target.exists() && std::time::Instant::now() < deadline {
            dom0.until("foot redraws", 1, |_| true);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if target.exists() {
            break;
        }
    }
    assert!(
        target.exists(),
        "the command typed from dom0 did not run in foot"
    );
    type_text(&mut dom0, id, "exit\n");
    dom0.until("the foot window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
    let _ = foot.wait();
}

#[test]
fn gtk4_app_maps_a_window() {
    if !have("gtk4-demo") {
        return;
    }
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    let mut app = agent
        .client("gtk4-demo")
        .env("GDK_BACKEND", "wayland")
        .env("GSK_RENDERER", "cairo")
        .env("NO_AT_BRIDGE", "1")
        .env("GTK_A11Y", "none")
        .spawn()
        .expect("start gtk4-demo");
    dom0.until("the GTK4 window with a title", 60, |d| {
        d.windows
            .values()
            .any(|w| w.mapped && w.parent.is_none() && !w.title.is_empty() && w.damage_msgs > 0)
    });
    let (id, w) = dom0
        .windows
        .iter()
        .find(|(_, w)| w.parent.is_none())
        .expect("window");
    eprintln!(
        "gtk4-demo window {id}: {:?} {}x{}",
        w.title, w.width, w.height
    );
    // its pixels are not blank
    let distinct: std::collections::HashSet<u32> = w.pixels.iter().copied().collect();
    assert!(distinct.len() > 10, "GTK window looks blank");
    let id = *id;
    dom0.send(&HostMsg::Close { window: id });
    dom0.until("the GTK window to go away", 30, |d| {
        !d.windows.contains_key(&id)
    });
    let _ = app.kill();
    let _ = app.wait();
}

/// Waits for a window that is not in `known` and gives it keyboard focus (wl-clipboard's
/// tools map a tiny surface and need focus to reach the selection).
fn focus_new_window(dom0: &mut Dom0, known: &[u32], what: &str) -> u32 {
    dom0.until(what, 30, |d| d.windows.keys().any(|k| !known.contains(k)));
    let id = *dom0
        .windows
        .keys()
        .find(|k| !known.contains(k))
        .expect("new window");
    dom0.send(&HostMsg::FocusIn { window: id });
    id
}

#[test]
fn clipboard_both_ways() {
    if !have("wl-copy") || !have("wl-paste") {
        return;
    }
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    // domain -> dom0: wl-copy sets the domain's selection, dom0 asks for it
    let mut copy = agent
        .client("wl-copy")
        .args([
            "--foreground",
            "--type",
            "text/plain;charset=utf-8",
            "copied in the domain",
        ])
        .spawn()
        .expect("start wl-copy");
    let known: Vec<u32> = dom0.windows.keys().copied().collect();
    let w = focus_new_window(&mut dom0, &known, "wl-copy's surface");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        dom0.clipboard = None;
        dom0.send(&HostMsg::ClipboardRequest);
        dom0.until("the clipboard answer", 10, |d| d.clipboard.is_some());
        if dom0.clipboard.as_deref() == Some(b"copied in the domain".as_slice()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "clipboard answer: {:?}",
            dom0.clipboard
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = copy.kill();
    let _ = copy.wait();
    dom0.until("wl-copy's surface to go", 30, |d| {
        !d.windows.contains_key(&w)
    });

    // dom0 -> domain: dom0 pastes, wl-paste in the domain reads it
    dom0.send(&HostMsg::ClipboardData {
        data: bytes::Bytes::from_static(b"pasted from dom0"),
    });
    let out = std::sync::Arc::new(std::sync::Mutex::new(None));
    let paste = agent
        .client("wl-paste")
        .args(["--no-newline"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start wl-paste");
    let out2 = out.clone();
    let waiter = std::thread::spawn(move || {
        let o = paste.wait_with_output().expect("wl-paste output");
        *out2.lock().expect("lock") = Some(o);
    });
    let known: Vec<u32> = dom0.windows.keys().copied().collect();
    let _ = focus_new_window(&mut dom0, &known, "wl-paste's surface");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while out.lock().expect("lock").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "wl-paste did not finish"
        );
        dom0.until("wl-paste", 1, |_| true);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    waiter.join().expect("waiter");
    let o = out.lock().expect("lock").take().expect("output");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "pasted from dom0");
}

/// The pointer moving from one window to another (smithay resets the cursor image then, with
/// the pointer's lock held) leaves the agent working: it once deadlocked there.
#[test]
fn pointer_moving_between_windows_keeps_the_agent_alive() {
    let agent = Agent::start();
    let mut dom0 = Dom0::connect(&agent.gui_socket());
    let spawn = |title: &str| {
        agent
            .client(env!("CARGO_BIN_EXE_bulkhead-gui-testclient"))
            .args(["--title", title, "--width", "64", "--height", "48"])
            .spawn()
            .expect("start the test client")
    };
    let mut a = spawn("first");
    let mut b = spawn("second");
    dom0.until("both windows", 30, |d| {
        d.window_titled("first").is_some_and(|(_, w)| w.mapped)
            && d.window_titled("second").is_some_and(|(_, w)| w.mapped)
    });
    let (ia, _) = dom0.window_titled("first").expect("first");
    let (ib, _) = dom0.window_titled("second").expect("second");
    for (window, x) in [(ia, 5), (ia, 6), (ib, 7), (ia, 8), (ib, 9)] {
        dom0.send(&HostMsg::Enter { window, x, y: 5 });
        dom0.send(&HostMsg::Motion { window, x, y: 6 });
    }
    dom0.send(&HostMsg::Leave { window: ib });
    // Still serving: a resize is answered.
    dom0.send(&HostMsg::ConfigureRequest {
        window: ia,
        width: 80,
        height: 60,
    });
    dom0.until("the agent to answer after the pointer moves", 20, |d| {
        d.windows.get(&ia).is_some_and(|w| w.width == 80)
    });
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
