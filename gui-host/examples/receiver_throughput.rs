//! Throughput of dom0's receiving side: 1920x1080 full-frame damage messages written into a
//! unix socket and applied by the headless receiver (decode, checks, copy into the window's
//! buffer), next to the same bytes read from a socket and discarded (the peer in the same
//! run). Prints frames per second for both and the ratio. `cargo run --release -p
//! bulkhead-gui-host --example receiver_throughput [FRAMES]`.

use std::time::{Duration, Instant};

use bulkhead_gui_host::{Receiver, Rules};
use bulkhead_wire::gui::{AgentMsg, GuiMessage, Hello, PixelFormat, Rect};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const W: u32 = 1920;
const H: u32 = 1080;

fn frame(i: u32) -> Vec<u8> {
    AgentMsg::Damage {
        window: 1,
        rect: Rect {
            x: 0,
            y: 0,
            width: W,
            height: H,
        },
        format: PixelFormat::Xrgb8888,
        pixels: Bytes::from(vec![(i % 251) as u8; (W * H * 4) as usize]),
    }
    .encode()
}

#[tokio::main]
async fn main() {
    let frames: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let f = [frame(1), frame(2)];

    // Peer: the same bytes through a socket into a sink.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let total = f[0].len() as u64 * u64::from(frames);
    let start = Instant::now();
    let sink = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            got += b.read(&mut buf).await.unwrap() as u64;
        }
    });
    for i in 0..frames {
        a.write_all(&f[(i % 2) as usize]).await.unwrap();
    }
    sink.await.unwrap();
    let raw = start.elapsed();

    // The receiver.
    let r = Receiver::new();
    let (mut agent, dom0) = UnixStream::pair().unwrap();
    r.add_peer("bench", dom0, Rules::default(), None);
    let mut setup = Vec::new();
    for m in [
        AgentMsg::Hello(Hello::OURS),
        AgentMsg::Create {
            window: 1,
            x: 0,
            y: 0,
            width: W,
            height: H,
            parent: None,
        },
        AgentMsg::Map { window: 1 },
    ] {
        m.encode_into(&mut setup);
    }
    agent.write_all(&setup).await.unwrap();
    let start = Instant::now();
    for i in 0..frames {
        agent.write_all(&f[(i % 2) as usize]).await.unwrap();
    }
    let want = u64::from(frames);
    r.wait_for(Duration::from_secs(600), |r| {
        r.with_window("bench", 1, |w| w.damage_count)
            .ok()
            .filter(|&c| c >= want)
    })
    .await
    .unwrap();
    let recv = start.elapsed();

    let fps = |d: Duration| f64::from(frames) / d.as_secs_f64();
    println!(
        "1920x1080 full frames: receiver {:.1} fps, raw socket read {:.1} fps, ratio {:.2}",
        fps(recv),
        fps(raw),
        fps(recv) / fps(raw)
    );
}
