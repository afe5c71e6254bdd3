//! Drives the real bulkhead-agent binary over a real unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use bulkhead_wire::{exec, Connection, ExecRequest, ExitStatus, Incoming, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

const HANG: Duration = Duration::from_secs(60);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(sock: &Path) -> Kill {
    start_agent_with(sock, &[])
}

/// The agent with its call socket next to `sock` (never the host's /run/bulkhead).
fn start_agent_with(sock: &Path, env: &[(&str, &Path)]) -> Kill {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-agent"));
    cmd.env("BULKHEAD_AGENT_SOCKET", sock)
        .env("BULKHEAD_CALL_SOCKET", sock.with_file_name("call.sock"))
        .env_remove("BULKHEAD_INIT_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Kill(cmd.spawn().expect("starting bulkhead-agent"))
}

async fn accept(l: &UnixListener) -> (Connection, Incoming) {
    let (io, _) = tokio::time::timeout(HANG, l.accept())
        .await
        .expect("agent did not connect")
        .unwrap();
    Connection::client(io, Limits::default()).await.unwrap()
}

async fn run(
    c: &Connection,
    argv: &[&str],
    user: Option<&str>,
    stdin: &[u8],
) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let req = ExecRequest {
        user: user.map(str::to_string),
        ..ExecRequest::new(argv.iter().copied())
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = tokio::time::timeout(HANG, exec::run(c, req, stdin, &mut out, &mut err))
        .await
        .expect("exec hung")
        .unwrap();
    (st, out, err)
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("agent.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_real_agent_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = start_agent(&sock);
    let (c, _inc) = accept(&listener).await;

    let (st, out, err) = run(
        &c,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        Some("root"),
        b"",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(3));
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");

    // Clean environment, HOME and cwd of the account.
    let (_, out, _) = run(
        &c,
        &["sh", "-c", "echo $USER:$HOME:$(pwd); env | wc -l"],
        Some("root"),
        b"",
    )
    .await;
    let text = String::from_utf8(out).unwrap();
    let root_home = nix::unistd::User::from_name("root").unwrap().unwrap().dir;
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("root:{}:{}", root_home.display(), root_home.display())
    );
    let nenv: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(nenv < 10, "environment not cleaned: {nenv} variables");

    // stdin passthrough
    let input: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let (st, out, _) = run(&c, &["cat"], Some("root"), &input).await;
    assert_eq!(st, ExitStatus::Code(0));
    assert!(out == input, "cat returned {} bytes", out.len());

    // large output
    let (st, out, _) = run(
        &c,
        &["head", "-c", "5000000", "/dev/zero"],
        Some("root"),
        b"",
    )
    .await;
    assert_eq!((st, out.len()), (ExitStatus::Code(0), 5_000_000));

    // signal exit, missing program, unknown user
    let (st, _, _) = run(&c, &["sh", "-c", "kill -TERM $$"], Some("root"), b"").await;
    assert_eq!(st, ExitStatus::Signal(15));
    let r = exec::run(
        &c,
        ExecRequest::new(["/no/such/program"]),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await;
    assert!(
        matches!(r, Err(bulkhead_wire::WireError::ExecFailed { .. })),
        "{r:?}"
    );
    let req = ExecRequest {
        user: Some("no-such-user-bh".into()),
        ..ExecRequest::new(["true"])
    };
    let r = exec::run(&c, req, &b""[..], tokio::io::sink(), tokio::io::sink()).await;
    assert!(
        matches!(r, Err(bulkhead_wire::WireError::ExecFailed { .. })),
        "{r:?}"
    );

    // Reconnection: domaind goes away (listener and connection dropped, socket removed)
    // and comes back on the same path.
    drop(c);
    drop(_inc);
    drop(listener);
    std::fs::remove_file(&sock).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let (c, _inc) = accept(&listener).await;
    let (st, out, _) = run(&c, &["echo", "again"], Some("root"), b"").await;
    assert_eq!((st, out.as_slice()), (ExitStatus::Code(0), &b"again\n"[..]));

    // Garbage from the channel: the agent drops the connection and reconnects.
    drop(c);
    drop(_inc);
    let (mut io, _) = tokio::time::timeout(HANG, listener.accept())
        .await
        .unwrap()
        .unwrap();
    io.write_all(b"this is not a bulkhead hello frame at all")
        .await
        .unwrap();
    let (c, _inc) = accept(&listener).await;
    let (st, _, _) = run(&c, &["true"], Some("root"), b"").await;
    assert_eq!(st, ExitStatus::Code(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_user_is_not_root() {
    if !nix::unistd::Uid::effective().is_root() {
        bulkhead_test_skip::skip("switching users needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = start_agent(&sock);
    let (c, _inc) = accept(&listener).await;
    let expected = match nix::unistd::User::from_name("user").unwrap() {
        Some(u) => (u.uid.as_raw(), u.gid.as_raw()),
        None => (1000, 1000),
    };
    let (st, out, _) = run(
        &c,
        &["sh", "-c", "id -u; id -g; id -G; echo $USER"],
        None,
        b"",
    )
    .await;
    assert_eq!(st, ExitStatus::Code(0));
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], expected.0.to_string(), "{text}");
    assert_eq!(lines[1], expected.1.to_string(), "{text}");
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "kept root's groups: {text}"
    );
    assert_eq!(lines[3], "user");
    // The process runs in its own session.
    let (_, out, _) = run(&c, &["sh", "-c", "ps -o sid= -p $$; echo $$"], None, b"").await;
    let text = String::from_utf8(out).unwrap();
    let v: Vec<&str> = text.split_whitespace().collect();
    if v.len() == 2 {
        assert_eq!(v[0], v[1], "not a session leader: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_command_gets_hangup() {
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = start_agent(&sock);
    let (c, _inc) = accept(&listener).await;
    let marker = dir.path().join("hup");
    // Prints its pid, then waits silently; records SIGHUP in a file. (stderr goes to
    // /dev/null: sh reports the killed `sleep` there, and the pipe to the agent is gone.)
    let script = format!(
        "exec 2>/dev/null; trap 'echo hup > {}; exit 1' HUP; echo $$; while :; do sleep 0.1; done",
        marker.display()
    );
    let req = ExecRequest {
        user: Some("root".into()),
        ..ExecRequest::new(["sh", "-c", script.as_str()])
    };
    let (mut rd, wr) = tokio::io::duplex(1024);
    let run = tokio::spawn({
        let c = c.clone();
        async move { exec::run(&c, req, tokio::io::empty(), wr, tokio::io::sink()).await }
    });
    // Wait until the command is running (it printed its pid).
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(HANG, tokio::io::AsyncReadExt::read(&mut rd, &mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
    // domaind goes away mid-command.
    run.abort();
    drop(c);
    drop(_inc);
    let deadline = tokio::time::Instant::now() + HANG;
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "command never got SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As in a sandbox, the agent's root has no CAP_DAC_OVERRIDE: it must switch to the user
/// before entering a 0700 directory that only the user may enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_is_entered_as_the_user() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        bulkhead_test_skip::skip("switching users needs root");
        return;
    }
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_setpriv {
        bulkhead_test_skip::skip("setpriv (util-linux) not installed");
        return;
    }
    let expected_uid = match nix::unistd::User::from_name("user").unwrap() {
        Some(u) => u.uid.as_raw(),
        None => 1000,
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::os::unix::fs::chown(&private, Some(expected_uid), Some(expected_uid)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();

    let sock = socket_path(&dir);
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = Kill(
        Command::new("setpriv")
            .args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
            .arg(env!("CARGO_BIN_EXE_bulkhead-agent"))
            .env("BULKHEAD_AGENT_SOCKET", &sock)
            .spawn()
            .unwrap(),
    );
    let (c, _inc) = accept(&listener).await;

    // The agent's own root cannot enter it...
    let req = ExecRequest {
        user: Some("root".into()),
        cwd: Some(private.to_string_lossy().into_owned()),
        ..ExecRequest::new(["pwd"])
    };
    let r = exec::run(&c, req, &b""[..], tokio::io::sink(), tokio::io::sink()).await;
    assert!(
        matches!(r, Err(bulkhead_wire::WireError::ExecFailed { .. })),
        "{r:?}"
    );
    // ...the user can.
    let req = ExecRequest {
        cwd: Some(private.to_string_lossy().into_owned()),
        ..ExecRequest::new(["pwd"])
    };
    let mut out = Vec::new();
    let st = exec::run(&c, req, &b""[..], &mut out, tokio::io::sink())
        .await
        .unwrap();
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        private.to_str().unwrap()
    );
}

/// Service calls through the real agent and the real bulkhead-call: the test plays domaind
/// (it serves the agent's Call streams by opening a Service stream back to the same agent,
/// with a source it chooses), so a call runs the service executable from the rpc path with
/// the source, argument and stdio of the contract, and bulkhead-call exits with the
/// service's status, 126 when refused, 125 on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_through_bulkhead_call() {
    use bulkhead_wire::{IncomingEvent, OpenRequest, ServiceRequest};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let rpc_a = dir.path().join("etc-rpc");
    let rpc_b = dir.path().join("lib-rpc");
    std::fs::create_dir_all(&rpc_a).unwrap();
    std::fs::create_dir_all(&rpc_b).unwrap();
    let script = |p: &Path, body: &str| {
        std::fs::write(p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        &rpc_b.join("test.Env"),
        "printf '%s|%s|%s|%s|%s' \"$BULKHEAD_REMOTE_DOMAIN\" \"$BULKHEAD_SERVICE\" \"$BULKHEAD_SERVICE_ARGUMENT\" \"$1\" \"$(id -un)\"; echo oops >&2; exit 7",
    );
    script(&rpc_b.join("test.Cat"), "exec cat");
    // /etc/bulkhead/rpc comes first.
    script(&rpc_a.join("test.Cat"), "echo first; exec cat");
    let rpc_path = std::env::join_paths([&rpc_a, &rpc_b]).unwrap();
    let rpc_path = std::path::PathBuf::from(rpc_path);
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = start_agent_with(&sock, &[("BULKHEAD_RPC_PATH", &rpc_path)]);
    let (c, mut inc) = accept(&listener).await;
    let c2 = c.clone();
    tokio::spawn(async move {
        while let Some(IncomingEvent::Stream(s)) = inc.next().await {
            let c = c2.clone();
            tokio::spawn(async move {
                let OpenRequest::Call(req) = s.request else {
                    return;
                };
                match req.target.as_str() {
                    "refused" => {
                        let _ = exec::refuse(s.stream, "denied by policy t.policy:3").await;
                    }
                    "broken" => {
                        let _ = exec::reject(s.stream, "cannot start the target").await;
                    }
                    _ => {
                        let svc = c
                            .open(OpenRequest::Service(ServiceRequest {
                                service: req.service,
                                arg: req.arg,
                                source: "the-source".into(),
                                user: Some("root".into()),
                            }))
                            .await
                            .unwrap();
                        let _ = exec::relay(s.stream, svc).await;
                    }
                }
            });
        }
    });
    let call = |target: &str, service: &str, input: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead-call"))
            .args([target, service])
            .env("BULKHEAD_CALL_SOCKET", sock.with_file_name("call.sock"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let w = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The agent may still be connecting its call socket: retry the first call briefly.
    let mut first = call("work", "test.Env+a.b", b"");
    for _ in 0..100 {
        if first.0 != 125 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        first = call("work", "test.Env+a.b", b"");
    }
    let (code, out, err) = first;
    assert_eq!(code, 7, "stderr: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "the-source|test.Env|a.b|a.b|root"
    );
    assert_eq!(err, "oops\n");
    let input: Vec<u8> = (0..2_000_000u32).map(|i| (i % 249) as u8).collect();
    let (code, out, err) = call("work", "test.Cat", &input);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(b"first\n"));
    assert!(out[6..] == input[..], "got {} bytes", out.len());
    let (code, _, err) = call("refused", "test.Cat", b"");
    assert_eq!(code, 126);
    assert!(err.contains("t.policy:3"), "{err}");
    let (code, _, err) = call("broken", "test.Cat", b"");
    assert_eq!(code, 125);
    assert!(err.contains("cannot start the target"), "{err}");
    let (code, _, err) = call("work", "test.Missing", b"");
    assert_eq!(code, 125);
    assert!(err.contains("no service test.Missing"), "{err}");
    let (code, _, err) = call("work", "bad/service", b"");
    assert_eq!(code, 125, "{err}");
}
