//! GUI streams end to end over real unix sockets: a "dom0" socket <-> domaind-side relay <->
//! wire connection <-> agent-side relay <-> a "gui-agent" socket. Bytes both ways (more than
//! the stream window, so credit must flow), EOF in both directions, and a connection that
//! negotiated version 2 cannot open a GUI stream.

use bulkhead_wire::relay::relay_bytes;
use bulkhead_wire::{Connection, IncomingEvent, Limits, OpenRequest, WireError, GUI_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gui_stream_relays_bytes_both_ways_and_eof() {
    let (a, b) = UnixStream::pair().unwrap();
    let (client, server) = tokio::join!(
        Connection::client(a, Limits::default()),
        Connection::server(b, Limits::default())
    );
    let (client, _ci) = client.unwrap();
    let (_server, mut si) = server.unwrap();
    assert!(u16::from(client.version()) >= GUI_VERSION);

    // Agent side: relay every Gui stream to the "gui-agent" socket.
    let (agent_sock, mut gui_agent) = UnixStream::pair().unwrap();
    let agent = tokio::spawn(async move {
        let Some(IncomingEvent::Stream(s)) = si.next().await else {
            panic!("no stream");
        };
        assert_eq!(s.request, OpenRequest::Gui);
        relay_bytes(s.stream, agent_sock).await
    });
    // domaind side: open the stream and relay it to the "dom0" socket.
    let stream = client.open(OpenRequest::Gui).await.unwrap();
    let (domaind_sock, mut dom0) = UnixStream::pair().unwrap();
    let domaind = tokio::spawn(relay_bytes(stream, domaind_sock));

    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let (mut ga_r, mut ga_w) = gui_agent.split();
    let (mut d0_r, mut d0_w) = dom0.split();
    let ((), (), got_down, got_up) = tokio::join!(
        async {
            ga_w.write_all(&up2).await.unwrap();
            ga_w.shutdown().await.unwrap();
        },
        async {
            d0_w.write_all(&down2).await.unwrap();
            d0_w.shutdown().await.unwrap();
        },
        async {
            let mut v = Vec::new();
            ga_r.read_to_end(&mut v).await.unwrap();
            v
        },
        async {
            let mut v = Vec::new();
            d0_r.read_to_end(&mut v).await.unwrap();
            v
        },
    );
    assert!(got_up == up, "gui-agent -> dom0 bytes differ");
    assert!(got_down == down, "dom0 -> gui-agent bytes differ");
    agent.await.unwrap().unwrap();
    domaind.await.unwrap().unwrap();
}

#[tokio::test]
async fn gui_stream_needs_version_3() {
    let (a, b) = UnixStream::pair().unwrap();
    let old = Limits {
        max_version: 2,
        ..Limits::default()
    };
    let (client, server) = tokio::join!(
        Connection::client(a, Limits::default()),
        Connection::server(b, old)
    );
    let (client, _ci) = client.unwrap();
    let (_server, _si) = server.unwrap();
    assert_eq!(client.version(), 2);
    assert!(matches!(
        client.open(OpenRequest::Gui).await,
        Err(WireError::Unsupported { needed: 3, .. })
    ));
}
