//! The whole connection state machine: a server Connection (as the agent runs it) gets a
//! valid handshake followed by arbitrary bytes. It must never panic or hang, and streams
//! it yields are read until they end.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bulkhead_wire::frame::{Frame, FrameKind};
use bulkhead_wire::handshake::Hello;
use bulkhead_wire::{Connection, IncomingEvent, Limits};
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

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut peer, ours) = UnixStream::pair().expect("socketpair");
        let limits = Limits {
            initial_window: 4096,
            max_frame_payload: 4096,
            max_streams: 4,
            ..Limits::default()
        };
        let server = tokio::spawn(Connection::server(ours, limits));
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            max_frame_payload: 4096,
            initial_window: 4096,
        };
        let f = Frame::new(0, FrameKind::Hello, 0, hello.encode().into());
        peer.write_all(&f.encode()).await.expect("hello");
        let Ok(Ok((conn, mut incoming))) = server.await else {
            panic!("handshake failed")
        };
        // Drain whatever the server writes so it never blocks on us.
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
        })
        .await
        .expect("connection did not close after the peer hung up");
        drain.abort();
    });
});
