//! The `bulkhead-gui-receiver` binary against a fake gui-agent socket: commands on stdin,
//! JSON lines on stdout (window list, pixels to a file, input and requests reaching the
//! agent, clipboard both ways), and the process survives a bad command.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_wire::gui::{AgentMsg, GuiDecoder, GuiMessage, Hello, HostMsg, PixelFormat, Rect};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_binary_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gui.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead-gui-receiver"))
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (agent, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let (mut a_rd, mut a_wr) = agent.into_split();

    // The fake gui-agent: a window, then answer a clipboard request; report what dom0 sent.
    let mut out = Vec::new();
    for m in [
        AgentMsg::Hello(Hello::OURS),
        AgentMsg::Create {
            window: 3,
            x: 5,
            y: 6,
            width: 4,
            height: 2,
            parent: None,
        },
        AgentMsg::Title {
            window: 3,
            title: Bytes::from_static(b"bin test"),
        },
        AgentMsg::Damage {
            window: 3,
            rect: Rect {
                x: 0,
                y: 0,
                width: 4,
                height: 2,
            },
            format: PixelFormat::Argb8888,
            pixels: Bytes::from(0x8011_2233u32.to_le_bytes().repeat(8)),
        },
        AgentMsg::Map { window: 3 },
    ] {
        m.encode_into(&mut out);
    }
    a_wr.write_all(&out).await.unwrap();
    let agent = tokio::spawn(async move {
        let mut dec = GuiDecoder::<HostMsg>::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = a_rd.read(&mut buf).await.unwrap();
            if n == 0 {
                return got;
            }
            dec.push(&buf[..n]);
            while let Some(m) = dec.next_message().unwrap() {
                if m == HostMsg::ClipboardRequest {
                    let reply = AgentMsg::ClipboardData {
                        data: Bytes::from_static(b"from the domain"),
                    };
                    a_wr.write_all(&reply.encode()).await.unwrap();
                }
                got.push(m);
            }
        }
    });

    let pixels = dir.path().join("px");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut rd = BufReader::new(stdout);
        let mut ask = |cmd: String| -> serde_json::Value {
            writeln!(stdin, "{cmd}").unwrap();
            stdin.flush().unwrap();
            let mut line = String::new();
            rd.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{cmd}: {line:?}: {e}"))
        };
        let v = vec![
            ask("wait-window bin 20".into()),
            ask("status".into()),
            ask("list".into()),
            ask(format!("pixels 3 {}", pixels.display())),
            ask("tap 3 38 39".into()),
            ask("configure 3 200 100".into()),
            ask("scroll 3 v 2560 120".into()),
            ask("nonsense".into()),
            ask("copy 20".into()),
            ask("paste hello there".into()),
            ask("close 3".into()),
            ask("quit".into()),
        ];
        (v, pixels)
    })
    .await
    .unwrap();
    let (v, pixels) = lines;
    assert_eq!(v[0]["id"], 3);
    assert_eq!(v[0]["title"], "bin test");
    assert_eq!(v[1]["state"], "ready");
    assert_eq!(v[2][0]["width"], 4);
    assert_eq!(v[2][0]["x"], 5);
    assert_eq!(v[3]["width"], 4);
    let px = std::fs::read(pixels).unwrap();
    assert_eq!(px.len(), 4 * 2 * 4);
    assert_eq!(&px[..4], &0x8011_2233u32.to_le_bytes());
    assert_eq!(v[4]["ok"], true);
    assert!(v[7]["error"].as_str().unwrap().contains("unknown command"));
    assert_eq!(v[8]["data"], "from the domain");
    assert_eq!(v[11]["bye"], true);

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let got = tokio::time::timeout(T, agent).await.unwrap().unwrap();
    let expected = vec![
        HostMsg::Hello(Hello::OURS),
        HostMsg::Key {
            window: 3,
            keycode: 38,
            pressed: true,
        },
        HostMsg::Key {
            window: 3,
            keycode: 38,
            pressed: false,
        },
        HostMsg::Key {
            window: 3,
            keycode: 39,
            pressed: true,
        },
        HostMsg::Key {
            window: 3,
            keycode: 39,
            pressed: false,
        },
        HostMsg::ConfigureRequest {
            window: 3,
            width: 200,
            height: 100,
        },
        HostMsg::Scroll {
            window: 3,
            axis: bulkhead_wire::gui::Axis::Vertical,
            value: 2560,
            v120: 120,
        },
        HostMsg::ClipboardRequest,
        HostMsg::ClipboardData {
            data: Bytes::from_static(b"hello there"),
        },
        HostMsg::Close { window: 3 },
    ];
    assert_eq!(got, expected);
}
