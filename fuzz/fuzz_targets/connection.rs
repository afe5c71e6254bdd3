//! The whole connection state machine on arbitrary bytes after a valid handshake, in both
//! roles: as the agent runs it (server) and as domaind runs it (client, with an exec in
//! flight on stream 1 so exec::run parses what the domain sends). It must never panic or
//! hang: once the peer hangs up everything ends.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_wire::frame::{Frame, FrameKind, HEADER_LEN};
use bulkhead_wire::handshake::{Hello, HelloAck};
use bulkhead_wire::{exec, Connection, ExecRequest, Incoming, IncomingEvent, Limits};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn limits() -> Limits {
    Limits {
        initial_window: 4096,
        max_frame_payload: 4096,
        max_streams: 4,
        ..Limits::default()
    }
}

async fn as_server(peer: &mut UnixStream, ours: UnixStream) -> (Connection, Incoming) {
    let server = tokio::spawn(Connection::server(ours, limits()));
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        max_frame_payload: 4096,
        initial_window: 4096,
    };
    let f = Frame::new(0, FrameKind::Hello, 0, hello.encode().into());
    peer.write_all(&f.encode()).await.expect("hello");
    match server.await {
        Ok(Ok(c)) => c,
        _ => panic!("handshake failed"),
    }
}

async fn as_client(peer: &mut UnixStream, ours: UnixStream) -> (Connection, Incoming) {
    let client = tokio::spawn(Connection::client(ours, limits()));
    let mut hello = [0u8; HEADER_LEN + 20];
    peer.read_exact(&mut hello).await.expect("hello");
    let ack = HelloAck {
        version: 1,
        max_frame_payload: 4096,
        initial_window: 4096,
    };
    let f = Frame::new(0, FrameKind::HelloAck, 0, ack.encode().into());
    peer.write_all(&f.encode()).await.expect("ack");
    match client.await {
        Ok(Ok(c)) => c,
        _ => panic!("handshake failed"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, data)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let (mut peer, ours) = UnixStream::pair().expect("socketpair");
        let client_role = role & 1 == 1;
        let (conn, mut incoming) = if client_role {
            as_client(&mut peer, ours).await
        } else {
            as_server(&mut peer, ours).await
        };
        let exec_task = client_role.then(|| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let _ = exec::run(
                    &conn,
                    ExecRequest::new(["true"]),
                    &b"input"[..],
                    tokio::io::sink(),
                    tokio::io::sink(),
                )
                .await;
            })
        });
        // Drain whatever we are sent so our side never blocks on the peer.
        let (mut rd, mut wr) = peer.into_split();
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        let consume = async {
            while let Some(ev) = incoming.next().await {
                if let IncomingEvent::Stream(s) = ev {
                    let mut stream = s.stream;
                    tokio::spawn(async move { while stream.recv().await.is_ok() {} });
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            consume.await;
            conn.closed().await;
            if let Some(t) = exec_task {
                let _ = t.await;
            }
        })
        .await
        .expect("connection did not end after the peer hung up");
        drain.abort();
    });
});
