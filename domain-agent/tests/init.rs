//! Drives the real bulkhead-init binary: as a subreaper on the host and as pid 1 of a
//! fresh pid namespace (via unshare).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bulkhead_wire::{exec, Connection, Control, ExecRequest, ExitStatus, Incoming, Limits};
use tokio::net::UnixListener;

const HANG: Duration = Duration::from_secs(60);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn accept(l: &UnixListener) -> (Connection, Incoming) {
    let (io, _) = tokio::time::timeout(HANG, l.accept())
        .await
        .expect("agent did not connect")
        .unwrap();
    Connection::client(io, Limits::default()).await.unwrap()
}

async fn run(c: &Connection, script: &str) -> (ExitStatus, String) {
    let req = ExecRequest {
        user: Some("root".into()),
        ..ExecRequest::new(["sh", "-c", script])
    };
    let mut out = Vec::new();
    let st = tokio::time::timeout(
        HANG,
        exec::run(c, req, &b""[..], &mut out, tokio::io::sink()),
    )
    .await
    .expect("exec hung")
    .unwrap();
    (st, String::from_utf8_lossy(&out).into_owned())
}

async fn wait_exit(child: &mut Kill) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            return st;
        }
        assert!(tokio::time::Instant::now() < deadline, "init did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn init_cmd(sock: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-init"));
    cmd.env("BULKHEAD_AGENT_SOCKET", sock)
        .env("BULKHEAD_AGENT", env!("CARGO_BIN_EXE_bulkhead-agent"))
        .env("BULKHEAD_SHUTDOWN_TIMEOUT", "30")
        .stdin(Stdio::null());
    cmd
}

/// Not pid 1: shutdown kills a TERM-ignoring descendant after the (queued) timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subreaper_shutdown_kills_stubborn_descendants() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut init = Kill(init_cmd(&sock).spawn().unwrap());
    let (c, _inc) = accept(&listener).await;

    let (st, out) = run(
        &c,
        "(trap '' TERM; exec sleep 1000) >/dev/null 2>&1 </dev/null & echo $!",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0));
    let pid: i32 = out.trim().parse().expect("pid");
    let stubborn = nix::unistd::Pid::from_raw(pid);
    assert!(nix::sys::signal::kill(stubborn, None).is_ok());

    // Agent -> sigqueue(init, SIGTERM, 1s) -> init: TERM all, 1s, KILL rest, exit 0.
    c.send_control(Control::Shutdown { timeout_secs: 1 })
        .await
        .unwrap();
    let st = wait_exit(&mut init).await;
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(
        nix::sys::signal::kill(stubborn, None),
        Err(nix::errno::Errno::ESRCH),
        "TERM-ignoring process survived shutdown"
    );
    tokio::time::timeout(HANG, c.closed()).await.unwrap();
}

/// pid 1 of a new pid namespace: zombies are reaped, a killed agent is restarted and
/// reconnects, SIGTERM shuts everything down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid1_in_namespace_reaps_restarts_and_shuts_down() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        bulkhead_test_skip::skip("cannot create pid namespaces here (unshare --pid failed)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_bulkhead-init"))
        .env("BULKHEAD_AGENT_SOCKET", &sock)
        .env("BULKHEAD_AGENT", env!("CARGO_BIN_EXE_bulkhead-agent"))
        .stdin(Stdio::null());
    let mut init = Kill(cmd.spawn().unwrap());
    let (c, _inc) = accept(&listener).await;

    let (_, out) = run(&c, "cat /proc/1/comm").await;
    assert_eq!(out.trim(), "bulkhead-init");

    // An orphan that exits becomes a zombie child of pid 1 unless init reaps it.
    let (_, out) = run(&c, "sh -c 'sleep 0.2 & echo $!' </dev/null").await;
    let orphan = out.trim().to_string();
    let (_, state) = run(
        &c,
        &format!("while [ \"$(cut -d' ' -f3 /proc/{orphan}/stat 2>/dev/null)\" = S ]; do sleep 0.05; done; sleep 0.5; cat /proc/{orphan}/stat 2>/dev/null | cut -d' ' -f3; echo end"),
    )
    .await;
    assert_eq!(state.trim(), "end", "orphan {orphan} not reaped: {state}");

    // Kill the agent (the exec's parent): init restarts it and it reconnects.
    let req = ExecRequest {
        user: Some("root".into()),
        ..ExecRequest::new(["sh", "-c", "kill -9 $PPID; sleep 5"])
    };
    let r = exec::run(&c, req, &b""[..], tokio::io::sink(), tokio::io::sink()).await;
    assert!(r.is_err(), "exec survived the death of its agent: {r:?}");
    tokio::time::timeout(HANG, c.closed()).await.unwrap();
    let (c, _inc) = accept(&listener).await;
    let (st, out) = run(&c, "echo back").await;
    assert_eq!((st, out.as_str()), (ExitStatus::Code(0), "back\n"));

    c.send_control(Control::Shutdown { timeout_secs: 5 })
        .await
        .unwrap();
    let st = wait_exit(&mut init).await;
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// domaind's path: SIGTERM sent from the host (an ancestor pid namespace) to the domain's
/// init shuts it down, although a namespace init ignores signals it does not handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid1_shuts_down_on_sigterm_from_the_host() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        bulkhead_test_skip::skip("cannot create pid namespaces here (unshare --pid failed)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_bulkhead-init"))
        .env("BULKHEAD_AGENT_SOCKET", &sock)
        .env("BULKHEAD_AGENT", env!("CARGO_BIN_EXE_bulkhead-agent"))
        .stdin(Stdio::null());
    let mut unshare = Kill(cmd.spawn().unwrap());
    let (c, _inc) = accept(&listener).await;
    let (_, out) = run(&c, "cat /proc/1/comm").await;
    assert_eq!(out.trim(), "bulkhead-init");

    // init's pid on the host is the only child of unshare.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.0.id())).unwrap();
    let init_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_exit(&mut unshare).await;
    assert_eq!(st.code(), Some(0), "{st:?}");
    tokio::time::timeout(HANG, c.closed()).await.unwrap();
}
