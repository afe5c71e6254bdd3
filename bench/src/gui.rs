//! `bulkhead-bench gui`: a Wayland client drawing 1920x1080 frames, forwarded
//! (a) by bulkhead-gui-agent to a dom0-side receiver, and
//! (b) by waypipe (client+server pair, its defaults plus --no-gpu) to a headless weston,
//! both measured in the same run, for a full-frame and a small-damage case.
//!
//! Each frame is one closed loop (one frame in flight): the client commits frame k, and the
//! frame counts as delivered when (a) the dom0 receiver holds all of frame k's damaged pixels,
//! or (b) a wl_display.sync issued right after the commit returns through waypipe from
//! weston (waypipe forwards a commit only after the buffer contents it diffed arrived).
//! Latency = commit to delivery; frames per second = frames / wall time of the loop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulkhead_gui_agent::testclient::{frame_of, DamageKind, TestClient};
use bulkhead_wire::gui::{decode_one, AgentMsg, GuiMessage, Hello, HostMsg, Rect};

const SMALL: u32 = 128;

/// A child started in its own process group; dropping it kills the whole group (waypipe
/// server's `sleep`, weston's helper clients).
struct Killed(Child);
impl Killed {
    fn spawn(cmd: &mut Command) -> std::io::Result<Killed> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).spawn().map(Killed)
    }
}
impl Drop for Killed {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    fps: f64,
    median_ms: f64,
    p95_ms: f64,
}

fn stats(lat: &mut [Duration], wall: Duration) -> Stats {
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Stats {
        fps: lat.len() as f64 / wall.as_secs_f64(),
        median_ms: ms(lat[lat.len() / 2]),
        p95_ms: ms(lat[(lat.len() * 95 / 100).min(lat.len() - 1)]),
    }
}

fn wait_for(path: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{what} never created {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn beside_me(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("own path")?;
    Ok(me.with_file_name(name))
}

/// The damaged rectangle of frames in a case and the probe rows that show a frame is complete.
fn rect(damage: DamageKind, w: u32, h: u32) -> (u32, u32, u32, u32) {
    match damage {
        DamageKind::Full => (0, 0, w, h),
        DamageKind::Square(s) => (s, s, s.min(w - s), s.min(h - s)),
    }
}

/// dom0 side: applies damage to the window's pixels; reports (frame mod 256, time) once the
/// first and last row of the damaged rectangle show the same new frame.
fn receive(mut stream: UnixStream, probe: (u32, u32, u32), tx: mpsc::Sender<(u32, Instant)>) {
    let (px, top, bottom) = probe;
    let mut wins: HashMap<u32, (u32, u32, Vec<u8>)> = HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4 << 20];
    let mut last = u32::MAX;
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        loop {
            let (msg, len) = match decode_one::<AgentMsg>(&buf[used..]) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("receiver: bad message from the agent: {e}");
                    return;
                }
            };
            used += len;
            match msg {
                AgentMsg::Create {
                    window,
                    width,
                    height,
                    ..
                }
                | AgentMsg::Configure {
                    window,
                    width,
                    height,
                    ..
                } => {
                    wins.insert(
                        window,
                        (width, height, vec![0; width as usize * height as usize * 4]),
                    );
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
                    let Some((ww, wh, px_buf)) = wins.get_mut(&window) else {
                        continue;
                    };
                    if x.saturating_add(width) > *ww || y.saturating_add(height) > *wh {
                        eprintln!("receiver: damage outside the window");
                        return;
                    }
                    let stride = *ww as usize * 4;
                    let row = width as usize * 4;
                    for r in 0..height as usize {
                        let d = (y as usize + r) * stride + x as usize * 4;
                        px_buf[d..d + row].copy_from_slice(&pixels[r * row..(r + 1) * row]);
                    }
                    let at = |yy: u32| {
                        let o = yy as usize * stride + px as usize * 4;
                        u32::from_le_bytes([px_buf[o], px_buf[o + 1], px_buf[o + 2], px_buf[o + 3]])
                    };
                    if *wh > bottom {
                        let (a, b) = (frame_of(at(top), px), frame_of(at(bottom), px));
                        if a == b && a != last {
                            last = a;
                            if tx.send((a, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        buf.drain(..used);
    }
}

fn run_agent(agent_bin: &Path, frames: u32, damage: DamageKind, w: u32, h: u32) -> Result<Stats> {
    let dir = tempfile::tempdir()?;
    let _agent = Killed::spawn(
        Command::new(agent_bin)
            .arg("--runtime-dir")
            .arg(dir.path())
            .env("BULKHEAD_LOG", "warn")
            .stdout(Stdio::null()),
    )
    .with_context(|| format!("starting {}", agent_bin.display()))?;
    let gui = dir.path().join("gui.sock");
    let wl = dir.path().join("wayland-0");
    wait_for(&gui, "bulkhead-gui-agent")?;
    wait_for(&wl, "bulkhead-gui-agent")?;
    let mut stream = UnixStream::connect(&gui).context("connecting to the agent's dom0 socket")?;
    let hello = HostMsg::Hello(Hello {
        min_version: 1,
        max_version: 1,
    });
    stream
        .write_all(&hello.encode())
        .context("greeting the agent")?;
    let (x0, y0, dw, dh) = rect(damage, w, h);
    let _ = dw;
    let (tx, rx) = mpsc::channel();
    let rs = stream.try_clone()?;
    let receiver = std::thread::spawn(move || receive(rs, (x0, y0, y0 + dh - 1), tx));
    let mut client = TestClient::connect(&wl, "bench", w, h)?;
    let mut one = |k: u32| -> Result<Duration> {
        let t0 = client.draw(k, damage, false)?;
        loop {
            let (f, t) = rx
                .recv_timeout(Duration::from_secs(20))
                .context("the dom0 receiver got no frame for 20 s")?;
            if f == k & 0xff {
                return Ok(t.saturating_duration_since(t0));
            }
        }
    };
    for k in 1..=5 {
        one(k)?;
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    for k in 6..6 + frames {
        lat.push(one(k)?);
    }
    let wall = start.elapsed();
    drop(client);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = receiver.join();
    Ok(stats(&mut lat, wall))
}

fn run_waypipe(frames: u32, damage: DamageKind, w: u32, h: u32) -> Result<Stats> {
    let dir = tempfile::tempdir()?;
    let rt = dir.path();
    let _weston = Killed::spawn(
        Command::new("weston")
            .args([
                "--backend=headless-backend.so",
                "--use-pixman",
                "--socket=wayland-weston",
                "--idle-time=0",
            ])
            .arg(format!("--width={w}"))
            .arg(format!("--height={h}"))
            .env("XDG_RUNTIME_DIR", rt)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting weston (Debian package weston)")?;
    wait_for(&rt.join("wayland-weston"), "weston")?;
    let sock = rt.join("waypipe.sock");
    let _wp_client = Killed::spawn(
        Command::new("waypipe")
            .args(["--no-gpu", "--socket"])
            .arg(&sock)
            .arg("client")
            .env("XDG_RUNTIME_DIR", rt)
            .env("WAYLAND_DISPLAY", "wayland-weston")
            .stderr(Stdio::null()),
    )
    .context("starting waypipe client (Debian package waypipe)")?;
    wait_for(&sock, "waypipe client")?;
    let display = rt.join("wayland-waypipe");
    let _wp_server = Killed::spawn(
        Command::new("waypipe")
            .args(["--no-gpu", "--socket"])
            .arg(&sock)
            .arg("--display")
            .arg(&display)
            .args(["server", "--", "sleep", "3600"])
            .env("XDG_RUNTIME_DIR", rt)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting waypipe server")?;
    wait_for(&display, "waypipe server")?;
    let mut client = TestClient::connect(&display, "bench", w, h)?;
    let mut one = |k: u32| -> Result<Duration> {
        let t0 = client.draw(k, damage, false)?;
        client.roundtrip()?;
        Ok(t0.elapsed())
    };
    for k in 1..=5 {
        one(k)?;
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    for k in 6..6 + frames {
        lat.push(one(k)?);
    }
    Ok(stats(&mut lat, start.elapsed()))
}

pub fn run(frames: u32, agent: Option<PathBuf>) -> Result<()> {
    if frames == 0 {
        bail!("--frames must be at least 1");
    }
    let agent = match agent {
        Some(a) => a,
        None => beside_me("bulkhead-gui-agent")?,
    };
    let (w, h) = (1920, 1080);
    println!("GUI forwarding, {w}x{h} XRGB8888 frames, {frames} measured frames per case, one frame in flight");
    if cfg!(debug_assertions) {
        println!("(debug build: build with --release for meaningful figures)");
    }
    for (name, damage) in [
        ("full-frame", DamageKind::Full),
        ("small-damage", DamageKind::Square(SMALL)),
    ] {
        let a = run_agent(&agent, frames, damage, w, h).context("bulkhead-gui-agent case")?;
        let b = run_waypipe(frames, damage, w, h).context("waypipe case")?;
        println!("{name}:");
        println!(
            "  gui-agent -> dom0 receiver : {:8.1} frames/s, latency median {:7.3} ms, p95 {:7.3} ms",
            a.fps, a.median_ms, a.p95_ms
        );
        println!(
            "  waypipe -> headless weston : {:8.1} frames/s, latency median {:7.3} ms, p95 {:7.3} ms",
            b.fps, b.median_ms, b.p95_ms
        );
        println!(
            "  ratio gui-agent/waypipe    : {:8.2}x frames/s, {:.2}x median latency (lower is better)",
            a.fps / b.fps,
            a.median_ms / b.median_ms
        );
    }
    Ok(())
}
