//! Client and server over a real UnixStream pair: exec round trips with real processes,
//! flow control under load, and protocol violations from a hand-written raw peer.

use std::process::Stdio;
use std::time::Duration;

use bulkhead_wire::exec::{self, STDIN, STDOUT};
use bulkhead_wire::frame::{decode_one, Frame, FrameKind, HEADER_LEN};
use bulkhead_wire::handshake::{Hello, HelloAck};
use bulkhead_wire::{
    Connection, Control, ExecRequest, ExitStatus, Incoming, IncomingEvent, Limits, OpenRequest,
    StreamEvent, WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Generous bound so a broken implementation fails instead of hanging CI.
const HANG: Duration = Duration::from_secs(60);

/// A minimal agent: runs each exec request with tokio::process as the current user.
async fn serve_execs(mut incoming: Incoming) {
    while let Some(ev) = incoming.next().await {
        let IncomingEvent::Stream(s) = ev else {
            continue;
        };
        tokio::spawn(async move {
            let OpenRequest::Exec(req) = s.request else {
                let _ = exec::reject(s.stream, "only exec here").await;
                return;
            };
            let child = tokio::process::Command::new(&req.argv[0])
                .args(&req.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    let _ = exec::reject(s.stream, &format!("{}: {e}", req.argv[0])).await;
                    return;
                }
            };
            let (i, o, e) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let (Some(o), Some(e)) = (o, e) else { return };
            let wait = async move {
                use std::os::unix::process::ExitStatusExt;
                let st = child.wait().await?;
                Ok(match st.code() {
                    Some(c) => ExitStatus::Code(c),
                    None => ExitStatus::Signal(st.signal().unwrap_or(0)),
                })
            };
            let _ = exec::serve(s.stream, i, o, e, wait).await;
        });
    }
}

async fn pair(client: Limits, server: Limits) -> (Connection, Incoming, Connection, Incoming) {
    let (a, b) = UnixStream::pair().unwrap();
    let (c, s) = tokio::join!(Connection::client(a, client), Connection::server(b, server));
    let (cc, ci) = c.unwrap();
    let (sc, si) = s.unwrap();
    (cc, ci, sc, si)
}

async fn run(conn: &Connection, argv: &[&str], stdin: &[u8]) -> (ExitStatus, Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let st = tokio::time::timeout(
        HANG,
        exec::run(
            conn,
            ExecRequest::new(argv.iter().copied()),
            stdin,
            &mut out,
            &mut err,
        ),
    )
    .await
    .expect("exec hung")
    .unwrap();
    (st, out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_round_trip_codes_and_signals() {
    let (c, _ci, _s, si) = pair(Limits::default(), Limits::default()).await;
    tokio::spawn(serve_execs(si));

    let (st, out, err) = run(&c, &["sh", "-c", "echo out; echo err >&2; exit 3"], b"").await;
    assert_eq!(st, ExitStatus::Code(3));
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");

    let (st, _, _) = run(&c, &["sh", "-c", "kill -9 $$"], b"").await;
    assert_eq!(st, ExitStatus::Signal(9));

    let mut out = Vec::new();
    let r = exec::run(
        &c,
        ExecRequest::new(["/nonexistent/prog"]),
        &b""[..],
        &mut out,
        tokio::io::sink(),
    )
    .await;
    assert!(matches!(r, Err(WireError::ExecFailed { .. })), "{r:?}");

    // Invalid requests are refused locally before anything is sent.
    let r = exec::run(
        &c,
        ExecRequest::new(Vec::<String>::new()),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await;
    assert!(matches!(r, Err(WireError::InvalidRequest(_))), "{r:?}");

    // The connection is still healthy after all of that.
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_and_stdin_stream_through_small_windows() {
    // Small windows force many credit round trips.
    let small = Limits {
        initial_window: 8192,
        max_frame_payload: 4096,
        ..Limits::default()
    };
    let (c, _ci, _s, si) = pair(small.clone(), small).await;
    tokio::spawn(serve_execs(si));

    let size = 3 * 1024 * 1024 + 17;
    let (st, out, err) = run(&c, &["head", "-c", &size.to_string(), "/dev/urandom"], b"").await;
    assert_eq!(st, ExitStatus::Code(0));
    assert_eq!(out.len(), size);
    assert!(err.is_empty());

    let input: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (st, out, _) = run(&c, &["cat"], &input).await;
    assert_eq!(st, ExitStatus::Code(0));
    assert!(
        out == input,
        "cat output differs ({} vs {} bytes)",
        out.len(),
        input.len()
    );

    // A command that ignores stdin: the run must still finish.
    let (st, out, _) = run(&c, &["sh", "-c", "echo done"], &input).await;
    assert_eq!((st, out.as_slice()), (ExitStatus::Code(0), &b"done\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs() {
    let (c, _ci, _s, si) = pair(Limits::default(), Limits::default()).await;
    tokio::spawn(serve_execs(si));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let script = format!("head -c 300000 /dev/zero; exit {i}");
            let (st, out, _) = run(&c, &["sh", "-c", &script], b"").await;
            assert_eq!(st, ExitStatus::Code(i));
            assert_eq!(out.len(), 300000);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn controls_and_close() {
    let (c, _ci, s, mut si) = pair(Limits::default(), Limits::default()).await;
    c.send_control(Control::Shutdown { timeout_secs: 7 })
        .await
        .unwrap();
    match tokio::time::timeout(HANG, si.next()).await.unwrap() {
        Some(IncomingEvent::Control(Control::Shutdown { timeout_secs: 7 })) => {}
        other => panic!("unexpected {other:?}"),
    }
    s.ping().await.unwrap();
    drop(c);
    drop(_ci);
    tokio::time::timeout(HANG, s.closed()).await.unwrap();
    assert!(si.next().await.is_none());
    assert!(matches!(
        s.send_control(Control::Ping { nonce: 1 }).await,
        Err(WireError::ConnectionClosed { .. })
    ));
}

#[tokio::test]
async fn version_mismatch_fails_both_sides() {
    let (a, b) = UnixStream::pair().unwrap();
    let newer = Limits {
        min_version: PROTOCOL_VERSION + 1,
        max_version: PROTOCOL_VERSION + 2,
        ..Limits::default()
    };
    let (c, s) = tokio::join!(
        Connection::client(a, newer),
        Connection::server(b, Limits::default())
    );
    match c {
        Err(WireError::VersionMismatch { ours, theirs }) => {
            assert_eq!(
                (ours, theirs),
                (
                    (PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 2),
                    (1, PROTOCOL_VERSION)
                )
            );
        }
        other => panic!("client: {:?}", other.map(|_| ())),
    }
    assert!(matches!(s, Err(WireError::VersionMismatch { .. })));
}

#[tokio::test]
async fn handshake_timeout() {
    let (_a, b) = UnixStream::pair().unwrap();
    let l = Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    assert!(matches!(
        Connection::server(b, l).await,
        Err(WireError::HandshakeTimeout(_))
    ));
}

/// A hand-driven client that can send anything.
struct Raw {
    io: UnixStream,
    ack: HelloAck,
}

impl Raw {
    async fn connect(server: Limits) -> (Raw, Connection, Incoming) {
        let (mut a, b) = UnixStream::pair().unwrap();
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            max_frame_payload: 65536,
            initial_window: 65536,
        };
        let server = tokio::spawn(Connection::server(b, server));
        a.write_all(&Frame::new(0, FrameKind::Hello, 0, hello.encode().into()).encode())
            .await
            .unwrap();
        let mut hdr = [0u8; HEADER_LEN + 10];
        a.read_exact(&mut hdr).await.unwrap();
        let (f, _) = decode_one(&hdr, 0, 64).unwrap();
        let ack = HelloAck::decode(&f.payload).unwrap();
        let (conn, inc) = server.await.unwrap().unwrap();
        (Raw { io: a, ack }, conn, inc)
    }

    async fn send(&mut self, kind: FrameKind, stream: u32, payload: &[u8]) {
        let f = Frame::new(
            self.ack.version as u8,
            kind,
            stream,
            payload.to_vec().into(),
        );
        // The server may already have dropped us; a write error is fine then.
        let _ = self.io.write_all(&f.encode()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    /// Reads until EOF; true if the server closed the connection.
    async fn closed_by_server(&mut self) -> bool {
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(HANG, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn open_true() -> Vec<u8> {
    OpenRequest::Exec(ExecRequest::new(["true"])).encode()
}

async fn expect_dropped(mut raw: Raw, conn: Connection, what: &str) {
    assert!(
        raw.closed_by_server().await,
        "{what}: server kept the connection"
    );
    tokio::time::timeout(HANG, conn.closed()).await.unwrap();
    let reason = conn.close_reason().unwrap_or_default();
    assert!(
        reason.contains("violated"),
        "{what}: close reason {reason:?}"
    );
}

#[tokio::test]
async fn violation_credit_exceeded() {
    let small = Limits {
        initial_window: 4096,
        ..Limits::default()
    };
    let (mut raw, conn, mut inc) = Raw::connect(small).await;
    raw.send(FrameKind::Open, 1, &open_true()).await;
    let Some(IncomingEvent::Stream(_s)) = inc.next().await else {
        panic!("no stream")
    };
    let mut data = vec![STDIN];
    data.extend(std::iter::repeat_n(b'x', 3000));
    raw.send(FrameKind::Data, 1, &data).await; // 3001 of 4096
    raw.send(FrameKind::Data, 1, &data).await; // exceeds
    expect_dropped(raw, conn, "credit").await;
}

#[tokio::test]
async fn violation_stream_id_reuse() {
    let (mut raw, conn, _inc) = Raw::connect(Limits::default()).await;
    raw.send(FrameKind::Open, 3, &open_true()).await;
    raw.send(FrameKind::Open, 1, &open_true()).await;
    expect_dropped(raw, conn, "reuse").await;
}

#[tokio::test]
async fn violation_wrong_parity_and_unknown_stream() {
    let (mut raw, conn, _inc) = Raw::connect(Limits::default()).await;
    raw.send(FrameKind::Open, 2, &open_true()).await;
    expect_dropped(raw, conn, "parity").await;

    let (mut raw, conn, _inc) = Raw::connect(Limits::default()).await;
    raw.send(FrameKind::Data, 9, b"\x00abc").await;
    expect_dropped(raw, conn, "unknown stream").await;
}

#[tokio::test]
async fn violation_bad_version_unknown_kind_oversize_garbage() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad version",
            Frame::new(7, FrameKind::Fin, 1, Default::default())
                .encode()
                .to_vec(),
        ),
        ("unknown kind", vec![1, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        (
            "oversize",
            vec![1, 17, 0, 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff],
        ),
        (
            "hello again",
            Frame::new(0, FrameKind::Hello, 0, vec![0; 20].into())
                .encode()
                .to_vec(),
        ),
        (
            "bad control",
            Frame::new(1, FrameKind::Control, 0, vec![200].into())
                .encode()
                .to_vec(),
        ),
        (
            "bad open",
            Frame::new(1, FrameKind::Open, 1, vec![0, 0].into())
                .encode()
                .to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let (mut raw, conn, _inc) = Raw::connect(Limits::default()).await;
        raw.send_raw(&bytes).await;
        expect_dropped(raw, conn, what).await;
    }
}

#[tokio::test]
async fn violation_data_after_eof_and_after_fin() {
    for (what, tail) in [
        (
            "after eof",
            vec![
                (FrameKind::Eof, vec![STDIN]),
                (FrameKind::Data, vec![STDIN, 1]),
            ],
        ),
        (
            "double fin",
            vec![(FrameKind::Fin, vec![]), (FrameKind::Fin, vec![])],
        ),
        (
            "window overflow",
            vec![(FrameKind::Window, 0xffff_ffffu32.to_be_bytes().to_vec())],
        ),
    ] {
        let (mut raw, conn, mut inc) = Raw::connect(Limits::default()).await;
        raw.send(FrameKind::Open, 1, &open_true()).await;
        let Some(IncomingEvent::Stream(_s)) = inc.next().await else {
            panic!("no stream")
        };
        for (k, p) in tail {
            raw.send(k, 1, &p).await;
        }
        expect_dropped(raw, conn, what).await;
    }
}

#[tokio::test]
async fn too_many_streams_are_refused_not_fatal() {
    let l = Limits {
        max_streams: 2,
        ..Limits::default()
    };
    let (mut raw, conn, mut inc) = Raw::connect(l).await;
    for id in [1u32, 3, 5] {
        raw.send(FrameKind::Open, id, &open_true()).await;
    }
    let mut kept = Vec::new();
    for _ in 0..2 {
        match inc.next().await {
            Some(IncomingEvent::Stream(s)) => kept.push(s),
            other => panic!("{other:?}"),
        }
    }
    // The third gets a Reset with the refused code.
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let f = loop {
        let n = tokio::time::timeout(HANG, raw.io.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed");
        got.extend_from_slice(&buf[..n]);
        if let Ok((f, _)) = decode_one(&got, 1, 65536) {
            break f;
        }
    };
    assert_eq!((f.kind, f.stream), (FrameKind::Reset, 5));
    assert_eq!(&f.payload[..4], &bulkhead_wire::RESET_REFUSED.to_be_bytes());
    assert!(!conn.is_closed());
    // Streams the server side sees deliver data in order.
    raw.send(FrameKind::Data, 1, b"\x00hello").await;
    let mut s = kept.remove(0).stream;
    assert_eq!(
        s.recv().await.unwrap(),
        StreamEvent::Data {
            channel: STDIN,
            data: "hello".into()
        }
    );
    let _ = STDOUT;
}

/// A hostile agent answering an exec with an exit status no process can have: the client
/// (domaind) gets a violation and drops the connection instead of passing the value on.
#[tokio::test]
async fn violation_impossible_exit_status_from_agent() {
    use bulkhead_wire::ExecMessage;
    for bad in [
        ExitStatus::Signal(i32::MAX),
        ExitStatus::Signal(0),
        ExitStatus::Code(-1),
        ExitStatus::Code(256),
    ] {
        let (c, _ci, _s, mut si) = pair(Limits::default(), Limits::default()).await;
        let agent = tokio::spawn(async move {
            let Some(IncomingEvent::Stream(s)) = si.next().await else {
                panic!("no stream")
            };
            let (tx, _rx) = s.stream.split();
            let _ = tx.send_message(&ExecMessage::Exit(bad).encode()).await;
            let _ = tx.finish();
            // keep the receiver alive until the client has judged the message
            tokio::time::sleep(HANG).await;
        });
        let r = tokio::time::timeout(
            HANG,
            exec::run(
                &c,
                ExecRequest::new(["true"]),
                &b""[..],
                tokio::io::sink(),
                tokio::io::sink(),
            ),
        )
        .await
        .expect("exec hung");
        assert!(matches!(r, Err(WireError::Violation(_))), "{bad:?}: {r:?}");
        tokio::time::timeout(HANG, c.closed())
            .await
            .expect("connection kept");
        agent.abort();
    }
}

/// A call relayed through a middle hop (as domaind joins a caller's Call stream to the
/// target's Service stream): data both ways, exit status, refusal, and a caller that goes
/// away resets the service side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_relay_through_a_middle_hop() {
    use bulkhead_wire::{CallRequest, ServiceRequest};
    // caller <-> middle (middle serves Call streams), middle <-> service agent.
    let (caller, _ci, _mc, mut middle_in) = pair(Limits::default(), Limits::default()).await;
    let (to_agent, _ai, _ac, agent_in) = pair(Limits::default(), Limits::default()).await;
    tokio::spawn(serve_services(agent_in));
    tokio::spawn(async move {
        while let Some(IncomingEvent::Stream(s)) = middle_in.next().await {
            let to_agent = to_agent.clone();
            tokio::spawn(async move {
                let OpenRequest::Call(c) = s.request else {
                    return;
                };
                if c.target == "nobody" {
                    let _ = exec::refuse(s.stream, "denied by policy x.policy:1").await;
                    return;
                }
                let svc = to_agent
                    .open(OpenRequest::Service(ServiceRequest {
                        service: c.service,
                        arg: c.arg,
                        source: "caller-domain".into(),
                        user: None,
                    }))
                    .await
                    .unwrap();
                let _ = exec::relay(s.stream, svc).await;
            });
        }
    });
    // "cat": stdin comes back on stdout, large enough to need credit several times.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = tokio::time::timeout(
        HANG,
        exec::call(
            &caller,
            CallRequest::new("target", "cat", ""),
            &input[..],
            &mut out,
            &mut err,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(st, ExitStatus::Code(0));
    assert!(out == input, "got {} bytes back", out.len());
    // source and argument reach the service
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = exec::call(
        &caller,
        CallRequest::new("target", "env", "a.b"),
        &b""[..],
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(st, ExitStatus::Code(3));
    assert_eq!(String::from_utf8_lossy(&out), "caller-domain a.b");
    assert_eq!(err, b"e");
    // refusal
    let r = exec::call(
        &caller,
        CallRequest::new("nobody", "cat", ""),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await;
    assert!(
        matches!(&r, Err(WireError::CallRefused { reason }) if reason.contains("x.policy:1")),
        "{r:?}"
    );
    // the connection still works afterwards
    let st = exec::call(
        &caller,
        CallRequest::new("target", "env", ""),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await
    .unwrap();
    assert_eq!(st, ExitStatus::Code(3));
}

/// Serves Service streams: "cat" echoes stdin, "env" prints source and argument.
async fn serve_services(mut incoming: Incoming) {
    while let Some(IncomingEvent::Stream(s)) = incoming.next().await {
        tokio::spawn(async move {
            let OpenRequest::Service(req) = s.request else {
                let _ = exec::reject(s.stream, "only services here").await;
                return;
            };
            let script = match req.service.as_str() {
                "cat" => "cat".to_string(),
                _ => "printf '%s %s' \"$SRC\" \"$ARG\"; printf e >&2; exit 3".to_string(),
            };
            let mut child = tokio::process::Command::new("sh")
                .args(["-c", &script])
                .env("SRC", &req.source)
                .env("ARG", &req.arg)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (i, o, e) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
            let (Some(o), Some(e)) = (o, e) else { return };
            let wait = async move {
                let st = child.wait().await?;
                Ok(ExitStatus::Code(st.code().unwrap_or(255)))
            };
            let _ = exec::serve(s.stream, i, o, e, wait).await;
        });
    }
}

/// Calls need protocol version 2: a version-1 connection refuses to open one, and a
/// version-1 peer that receives one drops the connection.
#[tokio::test]
async fn calls_need_version_two() {
    use bulkhead_wire::CallRequest;
    let v1 = Limits {
        max_version: 1,
        ..Limits::default()
    };
    let (c, _ci, _s, _si) = pair(v1.clone(), Limits::default()).await;
    assert_eq!(c.version(), 1);
    let r = c
        .open(OpenRequest::Call(CallRequest::new("x", "svc", "")))
        .await;
    assert!(matches!(r, Err(WireError::Unsupported { .. })), "{r:?}");

    // A raw peer speaking version 1 sends a Call open anyway.
    let (mut raw, conn, _inc) = Raw::connect(Limits::default()).await;
    assert_eq!(raw.ack.version, 1);
    let call = OpenRequest::Call(CallRequest::new("x", "svc", "")).encode();
    raw.send(FrameKind::Open, 1, &call).await;
    expect_dropped(raw, conn, "call on v1").await;
}

/// A relay whose service side breaks the exec protocol drops that side's connection only:
/// the caller's call fails with a reset, and the caller's connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_violation_drops_only_the_violating_peer() {
    use bulkhead_wire::{CallRequest, ServiceRequest};
    let (caller, _ci, _mc, mut middle_in) = pair(Limits::default(), Limits::default()).await;
    let (to_bad, _bi, _bc, mut bad_in) = pair(Limits::default(), Limits::default()).await;
    // The bad agent answers every Service stream with data on channel 7.
    tokio::spawn(async move {
        while let Some(IncomingEvent::Stream(s)) = bad_in.next().await {
            let _ = s.stream.send_data(7, b"nope").await;
            std::mem::forget(s.stream);
        }
    });
    let to_bad2 = to_bad.clone();
    tokio::spawn(async move {
        while let Some(IncomingEvent::Stream(s)) = middle_in.next().await {
            let to_bad = to_bad2.clone();
            tokio::spawn(async move {
                let OpenRequest::Call(c) = s.request else {
                    return;
                };
                if c.target == "refuse" {
                    let _ = exec::refuse(s.stream, "no").await;
                    return;
                }
                let Ok(svc) = to_bad
                    .open(OpenRequest::Service(ServiceRequest {
                        service: c.service,
                        arg: c.arg,
                        source: "x".into(),
                        user: None,
                    }))
                    .await
                else {
                    let _ = exec::reject(s.stream, "service side gone").await;
                    return;
                };
                let _ = exec::relay(s.stream, svc).await;
            });
        }
    });
    let r = tokio::time::timeout(
        HANG,
        exec::call(
            &caller,
            CallRequest::new("bad", "svc", ""),
            &b""[..],
            tokio::io::sink(),
            tokio::io::sink(),
        ),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(WireError::StreamReset { .. })), "{r:?}");
    tokio::time::timeout(HANG, to_bad.closed()).await.unwrap();
    assert!(to_bad
        .close_reason()
        .unwrap_or_default()
        .contains("violated"));
    assert!(
        !caller.is_closed(),
        "the caller's connection was dropped too"
    );
    let r = exec::call(
        &caller,
        CallRequest::new("refuse", "svc", ""),
        &b""[..],
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await;
    assert!(matches!(r, Err(WireError::CallRefused { .. })), "{r:?}");
}
