//! GUI streams through the real bulkhead-agent binary: domaind's side opens
//! `OpenRequest::Gui`, the agent relays it to the gui-agent socket (a fake gui-agent here,
//! speaking the GUI protocol with raw messages), and dom0's headless receiver on the other end
//! sees the window. Also: no gui-agent => the stream is reset; commands get the GUI session's
//! environment.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use bulkhead_gui_host::{PeerStatus, Receiver, Rules};
use bulkhead_wire::gui::{AgentMsg, GuiDecoder, GuiMessage, Hello, HostMsg, PixelFormat, Rect};
use bulkhead_wire::relay::relay_bytes;
use bulkhead_wire::{exec, Connection, ExecRequest, Incoming, Limits, OpenRequest, StreamEvent};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const HANG: Duration = Duration::from_secs(60);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(dir: &Path) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_bulkhead-agent"))
            .env("BULKHEAD_AGENT_SOCKET", dir.join("agent.sock"))
            .env("BULKHEAD_CALL_SOCKET", dir.join("call.sock"))
            .env("BULKHEAD_GUI_SOCKET", dir.join("gui.sock"))
            .env_remove("BULKHEAD_INIT_PID")
            .spawn()
            .expect("starting bulkhead-agent"),
    )
}

async fn accept(l: &UnixListener) -> (Connection, Incoming) {
    let (io, _) = tokio::time::timeout(HANG, l.accept())
        .await
        .expect("agent did not connect")
        .unwrap();
    Connection::client(io, Limits::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gui_stream_through_the_real_agent() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let gui_listener = UnixListener::bind(dir.path().join("gui.sock")).unwrap();
    let _agent = start_agent(dir.path());
    let (conn, _incoming) = accept(&listener).await;

    // domaind's part: open the stream, relay it to a socketpair whose other end is dom0's.
    let stream = conn.open(OpenRequest::Gui).await.unwrap();
    let (domaind_end, dom0_end) = UnixStream::pair().unwrap();
    let relay = tokio::spawn(relay_bytes(stream, domaind_end));
    let receiver = Receiver::new();
    receiver.add_peer("work", dom0_end, Rules::default(), None);

    // The fake gui-agent accepts the agent's connection and shows a window.
    let (gui, _) = tokio::time::timeout(HANG, gui_listener.accept())
        .await
        .expect("the agent did not connect to the gui-agent socket")
        .unwrap();
    let (mut g_rd, mut g_wr) = gui.into_split();
    let mut out = Vec::new();
    for m in [
        AgentMsg::Hello(Hello::OURS),
        AgentMsg::Create {
            window: 1,
            x: 0,
            y: 0,
            width: 32,
            height: 16,
            parent: None,
        },
        AgentMsg::Title {
            window: 1,
            title: Bytes::from_static(b"relayed"),
        },
        AgentMsg::Damage {
            window: 1,
            rect: Rect {
                x: 0,
                y: 0,
                width: 32,
                height: 16,
            },
            format: PixelFormat::Xrgb8888,
            pixels: Bytes::from(0x0012_3456u32.to_le_bytes().repeat(32 * 16)),
        },
        AgentMsg::Map { window: 1 },
    ] {
        m.encode_into(&mut out);
    }
    g_wr.write_all(&out).await.unwrap();
    let w = receiver.wait_window("work", "relayed", HANG).await.unwrap();
    assert_eq!((w.id, w.width, w.height), (1, 32, 16));
    assert_eq!(
        receiver.pixels("work", 1).unwrap().get(31, 15),
        Some(0xff12_3456)
    );

    // Input from dom0 reaches the gui-agent.
    receiver.key("work", 1, 38, true).unwrap();
    let mut dec = GuiDecoder::<HostMsg>::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.len() < 2 {
        let n = tokio::time::timeout(HANG, g_rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        dec.push(&buf[..n]);
        while let Some(m) = dec.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got[0], HostMsg::Hello(Hello::OURS));
    assert_eq!(
        got[1],
        HostMsg::Key {
            window: 1,
            keycode: 38,
            pressed: true
        }
    );

    // The gui-agent goes away: dom0 sees the connection closed, the relay ends cleanly.
    drop(g_wr);
    drop(g_rd);
    receiver
        .wait_for(HANG, |r| {
            (r.status("work") == Some(PeerStatus::Closed)).then_some(())
        })
        .await
        .unwrap();
    receiver.remove_peer("work");
    tokio::time::timeout(HANG, relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gui_agent_resets_the_stream_and_commands_get_the_session_env() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("agent.sock")).unwrap();
    let _agent = start_agent(dir.path());
    let (conn, _incoming) = accept(&listener).await;

    let mut stream = conn.open(OpenRequest::Gui).await.unwrap();
    let r = tokio::time::timeout(HANG, stream.recv()).await.unwrap();
    match r {
        Err(e) => assert!(e.to_string().contains("no gui-agent"), "{e}"),
        Ok(StreamEvent::Finished) | Ok(_) => panic!("stream not reset: {r:?}"),
    }

    let req = ExecRequest::new([
        "sh",
        "-c",
        "echo \"$WAYLAND_DISPLAY $XDG_RUNTIME_DIR $LANG\"",
    ]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = exec::run(&conn, req, tokio::io::empty(), &mut out, &mut err)
        .await
        .unwrap();
    assert_eq!(st.as_shell_code(), 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "/run/bulkhead-gui/wayland-0 /run/bulkhead-gui C.UTF-8\n"
    );
}
