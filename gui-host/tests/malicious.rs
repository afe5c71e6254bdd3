//! A hostile gui-agent (raw bytes written by this test) breaks each rule on its own
//! connection; the receiver drops that peer and closes its socket, while a well-behaved
//! domain's connection in the same receiver keeps working (windows, pixels, input).

use std::time::Duration;

use bulkhead_gui_host::{PeerStatus, Receiver, Rules};
use bulkhead_wire::gui::{
    AgentMsg, GuiDecoder, GuiMessage, Header, Hello, HostMsg, PixelFormat, Rect, T_CREATE,
    T_DAMAGE, T_TITLE,
};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(20);

fn enc(msgs: &[AgentMsg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode_into(&mut out);
    }
    out
}

fn hello() -> AgentMsg {
    AgentMsg::Hello(Hello::OURS)
}

fn create(window: u32, width: u32, height: u32, parent: Option<u32>) -> AgentMsg {
    AgentMsg::Create {
        window,
        x: 0,
        y: 0,
        width,
        height,
        parent,
    }
}

fn raw(kind: u32, window: u32, len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Header { kind, window, len }.to_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn solid(rect: Rect, argb: u32) -> AgentMsg {
    let n = (rect.width * rect.height) as usize;
    AgentMsg::Damage {
        window: 1,
        rect,
        format: PixelFormat::Argb8888,
        pixels: Bytes::from(argb.to_le_bytes().repeat(n)),
    }
}

/// Connects a hostile peer as `domain`, writes `bytes` (from a task: the receiver may stop
/// reading), waits until the receiver drops it, checks the reason and that our socket sees
/// the connection closed.
async fn hostile(r: &Receiver, domain: &str, rules: Rules, bytes: Vec<u8>, reason: &str) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    r.add_peer(domain, theirs, rules, None);
    let (mut rd, mut wr) = ours.into_split();
    let writer = tokio::spawn(async move {
        // Errors are expected once the receiver has closed the connection.
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let status = r
        .wait_for(T, |r| match r.status(domain) {
            Some(PeerStatus::Dropped { reason }) => Some(reason),
            _ => None,
        })
        .await
        .unwrap_or_else(|e| panic!("{domain}: not dropped: {e}; status {:?}", r.status(domain)));
    assert!(
        status.contains(reason),
        "{domain}: dropped for {status:?}, expected {reason:?}"
    );
    // The receiver closed the socket: reading reaches EOF (after our hello bytes).
    let mut sink = Vec::new();
    tokio::time::timeout(T, rd.read_to_end(&mut sink))
        .await
        .unwrap_or_else(|_| panic!("{domain}: socket not closed after the drop"))
        .ok();
    let _ = writer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_are_dropped_while_another_domain_keeps_working() {
    let r = Receiver::new();

    // The well-behaved domain.
    let (good, good_theirs) = UnixStream::pair().unwrap();
    r.add_peer(
        "good",
        good_theirs,
        Rules::default(),
        Some(Bytes::from_static(b"xkb_keymap {};")),
    );
    let (mut good_rd, mut good_wr) = good.into_split();
    let full = Rect {
        x: 0,
        y: 0,
        width: 64,
        height: 48,
    };
    good_wr
        .write_all(&enc(&[
            hello(),
            create(1, 64, 48, None),
            AgentMsg::Title {
                window: 1,
                title: Bytes::from_static(b"good window"),
            },
            solid(full, 0xff00_00ff),
            AgentMsg::Map { window: 1 },
        ]))
        .await
        .unwrap();
    let w = r.wait_window("good", "good window", T).await.unwrap();
    assert_eq!((w.width, w.height), (64, 48));

    let small = Rules {
        max_windows: 4,
        max_buffer_bytes: 4 * 1024 * 1024,
        ..Rules::default()
    };
    // Oversized window (wider than the protocol allows).
    hostile(
        &r,
        "oversized",
        small.clone(),
        enc(&[hello(), create(1, 20_000, 10, None)]),
        "size",
    )
    .await;
    // Within the protocol but above the domain's buffer memory limit.
    hostile(
        &r,
        "memory",
        small.clone(),
        enc(&[hello(), create(1, 4096, 4096, None)]),
        "buffers",
    )
    .await;
    // Lying lengths: a title header announcing more than the limit; a create with a short
    // body; a damage whose length does not match its rectangle.
    let mut b = enc(&[hello(), create(1, 10, 10, None)]);
    b.extend(raw(T_TITLE, 1, 1_000_000, b"x"));
    hostile(&r, "liar-title", small.clone(), b, "body of 1000000 bytes").await;
    let mut b = enc(&[hello()]);
    b.extend(raw(T_CREATE, 1, 8, &[0; 8]));
    hostile(&r, "liar-create", small.clone(), b, "expected exactly 20").await;
    let mut b = enc(&[hello(), create(1, 10, 10, None)]);
    let mut body = Vec::new();
    for v in [0u32, 0, 10, 10, 0] {
        body.extend(v.to_le_bytes());
    }
    body.extend([0u8; 100]);
    b.extend(raw(T_DAMAGE, 1, body.len() as u32, &body));
    hostile(&r, "liar-damage", small.clone(), b, "for a 10x10 rectangle").await;
    // Damage outside the window's buffer.
    hostile(
        &r,
        "outside",
        small.clone(),
        enc(&[
            hello(),
            create(1, 10, 10, None),
            solid(
                Rect {
                    x: 8,
                    y: 0,
                    width: 4,
                    height: 1,
                },
                0,
            ),
        ]),
        "outside window 1",
    )
    .await;
    // Unknown window, duplicate create, popup of a missing parent, unknown type, no hello.
    hostile(
        &r,
        "unknown",
        small.clone(),
        enc(&[hello(), AgentMsg::Map { window: 7 }]),
        "unknown window 7",
    )
    .await;
    hostile(
        &r,
        "duplicate",
        small.clone(),
        enc(&[hello(), create(1, 10, 10, None), create(1, 10, 10, None)]),
        "already exists",
    )
    .await;
    hostile(
        &r,
        "orphan",
        small.clone(),
        enc(&[hello(), create(2, 10, 10, Some(1))]),
        "does not exist",
    )
    .await;
    let mut b = enc(&[hello()]);
    b.extend(raw(0x7777, 0, 0, &[]));
    hostile(
        &r,
        "unknown-type",
        small.clone(),
        b,
        "unknown GUI message type 0x7777",
    )
    .await;
    hostile(
        &r,
        "no-hello",
        small.clone(),
        enc(&[create(1, 10, 10, None)]),
        "before its hello",
    )
    .await;
    // Too many windows.
    let mut msgs = vec![hello()];
    msgs.extend((1..=5).map(|i| create(i, 10, 10, None)));
    hostile(&r, "many", small.clone(), enc(&msgs), "more than 4 windows").await;
    // A flood: far more messages than the rate limit allows in a burst.
    let flood_rules = Rules {
        max_messages_per_sec: 1000,
        message_burst: 2000,
        ..small.clone()
    };
    let mut msgs = vec![hello(), create(1, 10, 10, None)];
    msgs.extend(std::iter::repeat_n(AgentMsg::Map { window: 1 }, 200_000));
    hostile(&r, "flood", flood_rules, enc(&msgs), "flood").await;

    // The good domain was never disturbed: it is still connected, its window is intact,
    // new pixels arrive and input reaches it.
    assert_eq!(r.status("good"), Some(PeerStatus::Ready { version: 1 }));
    let px = r.pixels("good", 1).unwrap();
    assert_eq!(px.get(63, 47), Some(0xff00_00ff));
    good_wr
        .write_all(&enc(&[solid(
            Rect {
                x: 10,
                y: 10,
                width: 5,
                height: 5,
            },
            0xff00_ff00,
        )]))
        .await
        .unwrap();
    r.wait_for(T, |r| {
        let p = r.pixels("good", 1).ok()?;
        (p.get(12, 12) == Some(0xff00_ff00)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(r.pixels("good", 1).unwrap().get(0, 0), Some(0xff00_00ff));
    r.key("good", 1, 38, true).unwrap();
    r.configure("good", 1, 320, 200).unwrap();

    let mut dec = GuiDecoder::<HostMsg>::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.len() < 4 {
        let n = tokio::time::timeout(T, good_rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "good domain's connection closed");
        dec.push(&buf[..n]);
        while let Some(m) = dec.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got[0], HostMsg::Hello(Hello::OURS));
    assert!(matches!(got[1], HostMsg::Keymap { .. }));
    assert_eq!(
        got[2],
        HostMsg::Key {
            window: 1,
            keycode: 38,
            pressed: true
        }
    );
    assert_eq!(
        got[3],
        HostMsg::ConfigureRequest {
            window: 1,
            width: 320,
            height: 200
        }
    );
    // The agent closing its side is a clean close, not a violation.
    drop(good_wr);
    drop(good_rd);
    r.wait_for(T, |r| {
        (r.status("good") == Some(PeerStatus::Closed)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn clipboard_round_trip_only_on_request() {
    let r = Receiver::new();
    let (ours, theirs) = UnixStream::pair().unwrap();
    r.add_peer("d", theirs, Rules::default(), None);
    let (mut rd, mut wr) = ours.into_split();
    // Unrequested clipboard data is ignored (not an error).
    wr.write_all(&enc(&[
        hello(),
        AgentMsg::ClipboardData {
            data: Bytes::from_static(b"pushed"),
        },
    ]))
    .await
    .unwrap();
    // Answer the request when it comes.
    let agent = tokio::spawn(async move {
        let mut dec = GuiDecoder::<HostMsg>::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0);
            dec.push(&buf[..n]);
            while let Some(m) = dec.next_message().unwrap() {
                if m == HostMsg::ClipboardRequest {
                    wr.write_all(&enc(&[AgentMsg::ClipboardData {
                        data: Bytes::from_static(b"copied text"),
                    }]))
                    .await
                    .unwrap();
                    return (rd, wr);
                }
            }
        }
    });
    r.wait_for(T, |r| {
        matches!(r.status("d"), Some(PeerStatus::Ready { .. })).then_some(())
    })
    .await
    .unwrap();
    let data = r.copy("d", T).await.unwrap();
    assert_eq!(&data[..], b"copied text");
    let _keep = agent.await.unwrap();
    assert_eq!(r.status("d"), Some(PeerStatus::Ready { version: 1 }));
}
