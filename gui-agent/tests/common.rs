//! Test harness: runs a real bulkhead-gui-agent in a temporary runtime dir and plays dom0
//! on its link socket, keeping every window's pixels like the dom0 receiver would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_wire::gui::{decode_one, AgentMsg, GuiMessage, Hello, HostMsg, Rect};

pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Agent {
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(env!("CARGO_BIN_EXE_bulkhead-gui-agent"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .env("BULKHEAD_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .expect("start bulkhead-gui-agent");
        let a = Agent { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(a.gui_socket().exists() && a.wayland_socket().exists()) {
            assert!(Instant::now() < deadline, "agent sockets never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        a
    }
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn gui_socket(&self) -> PathBuf {
        self.dir.path().join("gui.sock")
    }
    pub fn wayland_socket(&self) -> PathBuf {
        self.dir.path().join("wayland-0")
    }
    /// A client command with the agent's Wayland environment.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("WAYLAND_DISPLAY", "wayland-0")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Default)]
pub struct Win {
    pub width: u32,
    pub height: u32,
    pub parent: Option<u32>,
    pub title: String,
    pub app_id: String,
    pub mapped: bool,
    /// XRGB/ARGB pixels as u32, row-major.
    pub pixels: Vec<u32>,
    pub damage_msgs: u64,
}

impl Win {
    pub fn px(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// The dom0 end of the link.
pub struct Dom0 {
    pub stream: UnixStream,
    buf: Vec<u8>,
    pub windows: BTreeMap<u32, Win>,
    pub clipboard: Option<Vec<u8>>,
    pub hello: bool,
    pub cursor: Option<String>,
}

impl Dom0 {
    pub fn connect(path: &Path) -> Dom0 {
        let stream = UnixStream::connect(path).expect("connect to the agent's gui.sock");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut d = Dom0 {
            stream,
            buf: Vec::new(),
            windows: BTreeMap::new(),
            clipboard: None,
            hello: false,
            cursor: None,
        };
        d.send(&HostMsg::Hello(Hello {
            min_version: 1,
            max_version: 1,
        }));
        d
    }

    pub fn send(&mut self, msg: &HostMsg) {
        self.stream
            .write_all(&msg.encode())
            .expect("write to agent");
    }

    fn apply(&mut self, msg: AgentMsg) {
        match msg {
            AgentMsg::Hello(_) => self.hello = true,
            AgentMsg::Create {
                window,
                width,
                height,
                parent,
                ..
            } => {
                assert!(
                    !self.windows.contains_key(&window),
                    "duplicate create {window}"
                );
                self.windows.insert(
                    window,
                    Win {
                        width,
                        height,
                        parent,
                        pixels: vec![0; (width * height) as usize],
                        ..Win::default()
                    },
                );
            }
            AgentMsg::Configure {
                window,
                width,
                height,
                ..
            } => {
                let w = self
                    .windows
                    .get_mut(&window)
                    .expect("configure of unknown window");
                w.width = width;
                w.height = height;
                w.pixels = vec![0; (width * height) as usize];
            }
            AgentMsg::Map { window } => self.windows.get_mut(&window).expect("map").mapped = true,
            AgentMsg::Unmap { window } => {
                self.windows.get_mut(&window).expect("unmap").mapped = false
            }
            AgentMsg::Destroy { window } => {
                self.windows
                    .remove(&window)
                    .expect("destroy of unknown window");
            }
            AgentMsg::Title { window, title } => {
                self.windows.get_mut(&window).expect("title").title =
                    String::from_utf8_lossy(&title).into_owned()
            }
            AgentMsg::AppId { window, app_id } => {
                self.windows.get_mut(&window).expect("app id").app_id =
                    String::from_utf8_lossy(&app_id).into_owned()
            }
            AgentMsg::Damage {
                window,
                rect:
                    Rect {
                        x,
                        y,
                        width,
                        height,
                    },
                pixels,
                ..
            } => {
                let w = self
                    .windows
                    .get_mut(&window)
                    .expect("damage of unknown window");
                assert!(
                    x + width <= w.width && y + height <= w.height,
                    "damage outside the window"
                );
                for row in 0..height {
                    for col in 0..width {
                        let o = ((row * width + col) * 4) as usize;
                        let p = u32::from_le_bytes([
                            pixels[o],
                            pixels[o + 1],
                            pixels[o + 2],
                            pixels[o + 3],
                        ]);
                        w.pixels[((y + row) * w.width + x + col) as usize] = p;
                    }
                }
                w.damage_msgs += 1;
            }
            AgentMsg::Cursor { cursor, .. } => self.cursor = Some(cursor.name().to_string()),
            AgentMsg::State { .. } => panic!("this agent never sends STATE"),
            AgentMsg::ClipboardData { data } => self.clipboard = Some(data.to_vec()),
        }
    }

    /// Reads and applies messages until `done` holds (checked after every message).
    pub fn until(&mut self, what: &str, secs: u64, mut done: impl FnMut(&Dom0) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            while let Some((msg, used)) =
                decode_one::<AgentMsg>(&self.buf).expect("agent sent a malformed message")
            {
                self.buf.drain(..used);
                self.apply(msg);
                if done(self) {
                    return;
                }
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}; windows: {:?}",
                self.windows
                    .iter()
                    .map(|(i, w)| (i, w.width, w.height, &w.title, w.mapped))
                    .collect::<Vec<_>>()
            );
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("agent closed the link while waiting for: {what}"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the link: {e}"),
            }
        }
    }

    pub fn window_titled(&self, title: &str) -> Option<(u32, &Win)> {
        self.windows
            .iter()
            .find(|(_, w)| w.title == title)
            .map(|(i, w)| (*i, w))
    }
}

pub fn have(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bulkhead_test_skip::skip(format_args!(
            "{program} not installed (scripts/install-deps.sh installs it)"
        ));
    }
    found
}
