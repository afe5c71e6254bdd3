//! GUI plumbing with a real domain (mini template, real domaind/sandbox/init/agent):
//! bulkhead-init starts the gui-agent from the guest tools as the default user with its
//! runtime dir (a stand-in script here: the mini root has no Wayland libraries; the real
//! gui-agent is tested with real clients on the host in gui-agent/tests and in a Debian
//! domain in gui_clients.rs), commands get the session
//! environment, and D-Bus `OpenGui` refuses a halted domain and hands out a socket for a
//! running one (closed at once when no gui-agent listens).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{bounded, run_in, DomaindOptions, MiniEnv};

const TEST_LIMIT: Duration = Duration::from_secs(240);

/// Stand-in gui-agent: records who started it and with which runtime dir, then stays. It is
/// slow to start, as a real one under load: its "Wayland socket" (a plain file is enough for
/// the agent's wait) appears after 2 s.
const FAKE_GUI_AGENT: &str = r#"#!/bin/sh
{ id -u; echo "$XDG_RUNTIME_DIR"; } > "$XDG_RUNTIME_DIR/started"
sleep 2
: > "$XDG_RUNTIME_DIR/wayland-0"
exec sleep 1000
"#;

async fn run(p: &Domaind1Proxy<'_>, domain: &str, script: &str) -> (i32, String, String) {
    let out = run_in(p, domain, &["/bin/sh", "-c", script], "", b"")
        .await
        .expect("Run");
    (out.code(), out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn gui_agent_started_and_open_gui() {
    bounded(TEST_LIMIT, body()).await
}

async fn body() {
    let Some(env) = MiniEnv::start(
        "gui",
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let (d, p) = (&env.d, &env.p);
    let (tmpl, app) = (env.name("tmpl"), env.name("app"));
    let fake = d.guest_tools_dir.join("bulkhead-gui-agent");
    let _ = std::fs::remove_file(&fake);
    std::fs::write(&fake, FAKE_GUI_AGENT).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    p.create(&app, "app", &tmpl, "blue", HashMap::new())
        .await
        .unwrap();

    // Not running: refused.
    match p.open_gui(&app).await {
        Err(Error::InvalidState(m)) => assert!(m.contains("start it first"), "{m}"),
        other => panic!("OpenGui on a halted domain: {:?}", other.map(|_| ())),
    }

    p.start(&app).await.expect("start");
    // init started the stand-in as the default user with the runtime dir prepared, and a
    // command asked for at once waits for the Wayland socket (a terminal started right
    // after the domain must find its compositor).
    let (code, last, last_err) = run(
        p,
        &app,
        "test -e \"$WAYLAND_DISPLAY\" && cat /run/bulkhead-gui/started && ls -ldn /run/bulkhead-gui && echo \"$WAYLAND_DISPLAY $XDG_RUNTIME_DIR\"",
    )
    .await;
    let lines: Vec<&str> = last.lines().collect();
    let log = p
        .log_path(&app)
        .await
        .ok()
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    assert_eq!(
        (code, lines.len()),
        (0, 4),
        "{last:?} {last_err:?}\ndomain log:\n{log}"
    );
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "/run/bulkhead-gui");
    let fields: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        ("drwx------", "1000", "1000"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "/run/bulkhead-gui/wayland-0 /run/bulkhead-gui");

    // Running: a socket comes back; with no gui-agent listening on gui.sock the agent resets
    // the stream and domaind closes our end.
    let fd: OwnedFd = p.open_gui(&app).await.expect("OpenGui").into();
    let mut sock = std::os::unix::net::UnixStream::from(fd);
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let _ = sock.write_all(b"x");
    let mut buf = [0u8; 16];
    // Closed shows as EOF, or as a reset when domaind closed its end with our "x" still
    // unread in its buffer; a timeout or data would be a failure.
    match sock.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the GUI socket was not closed: {other:?}"),
    }

    p.kill(&app).await.unwrap();
}
