//! Real Wayland clients in a sandbox domain of the Debian 12 template, seen from dom0.
//!
//! Everything is the real thing: domaind, the sandbox, bulkhead-init starting the domain's
//! bulkhead-gui-agent, D-Bus `OpenGui` handing dom0 the GUI stream, and
//! `bulkhead_gui_host::Receiver` (the window-state machine dom0 draws with) on our side.
//! The clients (weston-simple-shm, foot, GTK 4's gtk4-builder-tool) come from the template's
//! GUI package group and are started with D-Bus `Run`, as `bulkhead run` does.
//!
//! Needs `BULKHEAD_TEST_TEMPLATE_CACHE` (scripts/test.sh sets it; BuildTemplate builds the
//! template there if it is not up to date) and a host that can run sandbox domains.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_api::Domaind1Proxy;
use bulkhead_gui_host::{GuiConnection, Receiver, Rules, WindowInfo};
use bulkhead_testkit::{
    bounded, ensure_vm_files, hardware_vm_here_or_nested, run_in, sandbox_template_cache,
    template_cache, Debian12Env, DomaindOptions, RunOutput, TestBus, TestDomaind, VmHost,
    ENV_IN_L1,
};

/// Whole test, including a template build if the cache is stale.
const TEST_LIMIT: Duration = Duration::from_secs(600);
/// One step: a window appearing, a command's effect, a window going away.
const STEP: Duration = Duration::from_secs(60);

/// A running domain of the debian-12 template whose GUI stream dom0's receiver serves.
struct GuiDomain {
    _bus: TestBus,
    d: TestDomaind,
    _conn: zbus::Connection,
    p: Domaind1Proxy<'static>,
    name: String,
    rx: Receiver,
}

impl GuiDomain {
    /// A sandbox domain. None (reason printed) when the template cache or sandboxes are
    /// unavailable.
    async fn start(tag: &str) -> Option<Self> {
        let cache = sandbox_template_cache()?;
        Some(Self::start_with(tag, cache, HashMap::new()).await)
    }

    /// A domain of the debian-12 template in `cache` with properties `props`.
    async fn start_with(tag: &str, cache: PathBuf, props: HashMap<&str, &str>) -> Self {
        let Debian12Env {
            bus, d, conn, p, ..
        } = Debian12Env::start(DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..DomaindOptions::debian12(cache)
        })
        .await;
        // cgroups are host-global: a name unique to this test process
        let name = format!("{tag}{}", std::process::id() % 100_000);
        p.create(&name, "app", "debian-12", "orange", props)
            .await
            .expect("create");
        p.start(&name)
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", d.log()));
        let rx = Receiver::new();
        let me = Self {
            _bus: bus,
            d,
            _conn: conn,
            p,
            name,
            rx,
        };
        me.open_gui().await;
        me
    }

    /// OpenGui and serve the stream with the default rules (US keymap: the agent's default).
    /// bulkhead-init starts the gui-agent in the background, so the first tries may find no
    /// agent listening yet (the stream is closed at once); retried until the hello arrives.
    async fn open_gui(&self) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let fd: std::os::fd::OwnedFd =
                self.p.open_gui(&self.name).await.expect("OpenGui").into();
            let conn = GuiConnection::from_fd(fd, None).expect("GUI stream");
            self.rx.add_connection(&self.name, conn, Rules::default());
            let ready = self
                .rx
                .wait_for(Duration::from_secs(5), |r| match r.status(&self.name) {
                    Some(bulkhead_gui_host::PeerStatus::Ready { .. }) => Some(true),
                    Some(bulkhead_gui_host::PeerStatus::Connecting) | None => None,
                    Some(_) => Some(false),
                })
                .await;
            if ready == Ok(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the domain's gui-agent never answered: {:?}\ndomain log:\n{}\ndomaind log:\n{}",
                self.rx.status(&self.name),
                self.domain_log().await,
                self.d.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn domain_log(&self) -> String {
        self.p
            .log_path(&self.name)
            .await
            .ok()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// A short command in the domain as the default user.
    async fn sh(&self, script: &str, input: &[u8]) -> RunOutput {
        run_in(&self.p, &self.name, &["sh", "-c", script], "", input)
            .await
            .expect("Run")
    }

    /// Starts a long-running client (`sh -c SCRIPT` as the default user); the task ends
    /// with its `Run` output when the client exits.
    fn spawn_client(&self, script: &str) -> tokio::task::JoinHandle<RunOutput> {
        let (p, name, script) = (self.p.clone(), self.name.clone(), script.to_owned());
        tokio::spawn(async move {
            run_in(&p, &name, &["sh", "-c", &script], "", b"")
                .await
                .expect("Run")
        })
    }

    /// Waits for a mapped window whose title is exactly `title` that has drawn something.
    async fn window(&self, title: &str) -> WindowInfo {
        self.rx
            .wait_for(STEP, |r| {
                r.windows(&self.name)
                    .into_iter()
                    .find(|w| w.mapped && w.title == title && w.damage_count > 0)
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no window {title:?} ({e}); windows: {:?}; GUI link: {:?}",
                    self.rx.windows(&self.name),
                    self.rx.status(&self.name)
                )
            })
    }

    async fn window_gone(&self, id: u32, what: &str) {
        self.rx
            .wait_for(STEP, |r| {
                (!r.windows(&self.name).iter().any(|w| w.id == id)).then_some(())
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: window {id} still there ({e})"));
    }

    /// Asks for a new size; waits until the client has drawn a buffer of another size.
    async fn reconfigure(&self, id: u32, width: u32, height: u32) -> WindowInfo {
        let before = self.info(id);
        self.rx
            .configure(&self.name, id, width, height)
            .expect("configure request");
        self.rx
            .wait_for(STEP, |r| {
                r.windows(&self.name).into_iter().find(|i| {
                    i.id == id
                        && i.damage_count > before.damage_count
                        && (i.width, i.height) != (before.width, before.height)
                })
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "window {id} drew no buffer of a new size after a request for {width}x{height} ({e}): {:?}",
                    self.rx.windows(&self.name)
                )
            })
    }

    /// Asks for a new size; the client's next buffer has exactly that size.
    async fn resize(&self, id: u32, width: u32, height: u32) {
        let now = self.reconfigure(id, width, height).await;
        assert_eq!((now.width, now.height), (width, height), "{now:?}");
        let px = self.rx.pixels(&self.name, id).expect("pixels");
        assert_eq!(px.data.len(), (px.width * px.height * 4) as usize);
    }

    fn info(&self, id: u32) -> WindowInfo {
        self.rx
            .windows(&self.name)
            .into_iter()
            .find(|w| w.id == id)
            .unwrap_or_else(|| panic!("no window {id}"))
    }

    /// Colours in a window's current pixels.
    fn distinct_colours(&self, id: u32) -> usize {
        let px = self.rx.pixels(&self.name, id).expect("pixels");
        let set: std::collections::HashSet<&[u8]> = px.data.chunks_exact(4).collect();
        set.len()
    }
}

/// What weston-simple-shm (weston 10, `paint_pixels` in clients/simple-shm.c) draws in its
/// 250x250 window for a frame at time `t` ms: a 20-pixel padding left as the buffer was
/// initialised (0xff bytes: white), inside it a disc (colour from the squared distance to the
/// centre and t/64), a ring (from y and t/32) and the rest (from x and t/16), each value
/// times 0x080401 in the low 24 bits. Its buffers are XRGB8888, which dom0 shows opaque.
fn simple_shm_pixel(x: i32, y: i32, t16: u32) -> u32 {
    const SIZE: i32 = 250;
    const PAD: i32 = 20;
    if x < PAD || y < PAD || x >= SIZE - PAD || y >= SIZE - PAD {
        return 0xffff_ffff;
    }
    let half = PAD + (SIZE - 2 * PAD) / 2;
    let outer = half - 8;
    let inner = outer - 32;
    let r2 = (x - half) * (x - half) + (y - half) * (y - half);
    // floor(t/32) = floor(floor(t/16)/2), likewise for t/64
    let n = if r2 < inner * inner {
        (r2 as u32 / 32).wrapping_add(t16 >> 2)
    } else if r2 < outer * outer {
        (y as u32).wrapping_add(t16 >> 1)
    } else {
        (x as u32).wrapping_add(t16)
    };
    0xff00_0000 | (n.wrapping_mul(0x0008_0401) & 0x00ff_ffff)
}

/// The frame times (in units of 16 ms) a pixel of the outer area allows: its colour gives
/// x + t/16 modulo 2^24 (0x080401 is odd, so invertible modulo 2^24); t is a 32-bit
/// millisecond clock, so t/16 < 2^28 leaves 16 candidates.
fn simple_shm_times(x: u32, colour: u32) -> Vec<u32> {
    // inverse of 0x080401 modulo 2^32 by Newton's iteration (each step doubles the bits)
    let a: u32 = 0x0008_0401;
    let mut inv: u32 = 1;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(a.wrapping_mul(inv)));
    }
    let n = (colour & 0x00ff_ffff).wrapping_mul(inv) & 0x00ff_ffff;
    let base = n.wrapping_sub(x) & 0x00ff_ffff;
    (0..16).map(|k| base + (k << 24)).collect()
}

/// Whether `px` is exactly one simple-shm frame; returns its time (t/16).
fn matches_simple_shm(px: &bulkhead_gui_host::Pixels) -> Option<u32> {
    // (22, 40) is in the outer area: (22-125)^2 + (40-125)^2 > 117^2
    let reference = px.get(22, 40)?;
    simple_shm_times(22, reference).into_iter().find(|&t16| {
        (0..250).all(|y| {
            (0..250).all(|x| px.get(x as u32, y as u32) == Some(simple_shm_pixel(x, y, t16)))
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn weston_simple_shm_window_pixels_and_kill() {
    bounded(TEST_LIMIT, async {
        let Some(g) = GuiDomain::start("shm").await else {
            return;
        };
        simple_shm_window_pixels_and_kill(&g).await;
    })
    .await
}

/// The same from a VM domain: the gui-agent's stream comes over vsock through the VMM. Runs
/// inside L1 where this host has no hardware virtualization (see vm_full_boot.rs).
#[test]
fn vm_weston_simple_shm_window_pixels_and_kill() {
    const NAME: &str = "vm_weston_simple_shm_window_pixels_and_kill";
    let cache = template_cache().expect("the VM GUI test needs the debian-12 template cache");
    if std::env::var_os(ENV_IN_L1).is_none() {
        ensure_vm_files(&cache, "debian-12").unwrap_or_else(|e| panic!("VM files: {e}"));
    }
    if let VmHost::PassedInL1 = hardware_vm_here_or_nested(NAME) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bounded(TEST_LIMIT, async {
            let props = HashMap::from([("isolation", "vm"), ("memory", "768"), ("vcpus", "2")]);
            let g = GuiDomain::start_with("vmshm", cache, props).await;
            simple_shm_window_pixels_and_kill(&g).await;
        }));
}

async fn simple_shm_window_pixels_and_kill(g: &GuiDomain) {
    {
        let client = g.spawn_client("exec weston-simple-shm");
        let w = g.window("simple-shm").await;
        assert_eq!((w.width, w.height), (250, 250), "{w:?}");
        assert!(w.popup_parent.is_none());

        // A received frame equals what simple-shm draws, pixel for pixel. A snapshot taken
        // while a frame's damage is still arriving mixes two frames, so a few are tried.
        let mut frames = Vec::new();
        let mut last_count = 0;
        for _ in 0..20 {
            let count =
                g.rx.wait_for(STEP, |r| {
                    r.windows(&g.name)
                        .into_iter()
                        .find(|i| i.id == w.id && i.damage_count > last_count)
                        .map(|i| i.damage_count)
                })
                .await
                .expect("simple-shm keeps drawing");
            last_count = count;
            let px = g.rx.pixels(&g.name, w.id).expect("pixels");
            if let Some(t16) = matches_simple_shm(&px) {
                frames.push(t16);
                if frames.len() == 2 {
                    break;
                }
            }
        }
        assert_eq!(
            frames.len(),
            2,
            "fewer than two received frames matched simple-shm's drawing"
        );
        // frame callbacks keep it animating: the two frames are of different times
        assert!(frames[1] > frames[0], "frame times {frames:?}");

        // Killed in the domain: its window goes away.
        // (-f: the 15-character process name is cut short; the pattern skips this shell)
        let out = g.sh("pkill -f '^weston-simple-shm'", b"").await;
        assert_eq!(out.code(), 0, "pkill: {}", out.stderr);
        g.window_gone(w.id, "simple-shm killed").await;
        let ended = tokio::time::timeout(STEP, client)
            .await
            .expect("Run of the client returns")
            .expect("client task");
        assert_eq!(ended.code(), 128 + 15, "{}", ended.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn foot_typed_command_resize_and_exit() {
    bounded(TEST_LIMIT, async {
        let Some(g) = GuiDomain::start("foot").await else {
            return;
        };
        let _ = g.sh("rm -f /tmp/typed-from-dom0", b"").await;
        let client = g.spawn_client(
            "cd && LC_ALL=C.UTF-8 exec foot --override=title=foot-in-a-domain /bin/sh",
        );
        let w = g.window("foot-in-a-domain").await;
        assert_eq!(w.app_id, "foot");
        assert!(g.distinct_colours(w.id) > 1, "foot drew nothing");
        g.rx.focus(&g.name, w.id, true).expect("focus");

        // Keys typed in dom0 reach the shell in foot: the command runs in the domain.
        // The shell may not read its terminal yet when the window appears, so the check
        // waits and the line is typed again if nothing happened.
        let mut done = false;
        for _ in 0..5 {
            g.rx.type_text(&g.name, w.id, "touch /tmp/typed-from-dom0\n")
                .expect("type");
            for _ in 0..20 {
                if g.sh("test -e /tmp/typed-from-dom0", b"").await.code() == 0 {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            if done {
                break;
            }
        }
        assert!(
            done,
            "the command typed from dom0 did not run in the domain"
        );
        let owner = g.sh("stat -c %U /tmp/typed-from-dom0", b"").await;
        assert_eq!(owner.stdout.trim(), "user");

        // dom0 asks for a new size: foot takes it and draws a buffer of that size.
        g.resize(w.id, 640, 400).await;
        assert!(g.distinct_colours(w.id) > 1);

        // `exit` typed from dom0 ends the shell, foot exits, the window goes away.
        g.rx.type_text(&g.name, w.id, "exit\n").expect("type");
        g.window_gone(w.id, "foot exited").await;
        let ended = tokio::time::timeout(STEP, client)
            .await
            .expect("Run of the client returns")
            .expect("client task");
        assert_eq!(ended.code(), 0, "foot: {}", ended.stderr);
    })
    .await
}

/// A GTK 4 window from a GtkBuilder file, shown by `gtk4-builder-tool preview` (libgtk-4-bin).
const GTK_UI: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<interface>
  <object class="GtkWindow" id="main">
    <property name="title">gtk4 in a domain</property>
    <property name="default-width">320</property>
    <property name="default-height">200</property>
    <child>
      <object class="GtkLabel">
        <property name="label">GTK 4 in a domain</property>
      </object>
    </child>
  </object>
</interface>
"#;

#[tokio::test(flavor = "multi_thread")]
async fn gtk4_window_resize_and_close() {
    bounded(TEST_LIMIT, async {
        let Some(g) = GuiDomain::start("gtk").await else {
            return;
        };
        let out = g.sh("cat > /tmp/window.ui", GTK_UI.as_bytes()).await;
        assert_eq!(out.code(), 0, "{}", out.stderr);
        // Wayland only; software rendering (no GPU in a domain); no session bus for
        // GSettings or accessibility.
        let client = g.spawn_client(
            "GDK_BACKEND=wayland GSK_RENDERER=cairo GSETTINGS_BACKEND=memory NO_AT_BRIDGE=1 \
             GTK_A11Y=none exec gtk4-builder-tool preview /tmp/window.ui",
        );
        let w = g.window("gtk4 in a domain").await;
        assert!(w.popup_parent.is_none());
        // the label's text is drawn with the template's font: many shades, not a blank fill
        g.rx.wait_for(STEP, |_| (g.distinct_colours(w.id) > 10).then_some(()))
            .await
            .unwrap_or_else(|_| panic!("the GTK window looks blank: {:?}", g.info(w.id)));

        // GTK 4 draws its own decorations with a shadow around the window and sets the
        // xdg window geometry inside it; the agent forwards the whole buffer, shadow
        // included. So a resize shows as the buffer changing by exactly what dom0 asked for.
        let a = g.reconfigure(w.id, 700, 500).await;
        let b = g.reconfigure(w.id, 820, 560).await;
        eprintln!(
            "GTK buffers: {}x{} for 700x500, {}x{} for 820x560",
            a.width, a.height, b.width, b.height
        );
        assert_eq!(
            (b.width - a.width, b.height - a.height),
            (120, 60),
            "{a:?} {b:?}"
        );

        // Closed from dom0: GTK destroys the window. (The 4.8 preview tool then idles on;
        // it is ended like any process.)
        g.rx.close(&g.name, w.id).expect("close");
        g.window_gone(w.id, "GTK window closed from dom0").await;
        let out = g.sh("pkill -f '^gtk4-builder-tool'", b"").await;
        assert_eq!(out.code(), 0, "pkill: {}", out.stderr);
        let ended = tokio::time::timeout(STEP, client)
            .await
            .expect("Run of the client returns")
            .expect("client task");
        assert_eq!(
            ended.code(),
            128 + 15,
            "gtk4-builder-tool: {}",
            ended.stderr
        );
    })
    .await
}

#[test]
fn simple_shm_model_inverts_its_own_colours() {
    // the time recovered from a pixel of the outer area reproduces that pixel
    for t16 in [0u32, 1, 5_000, (1 << 24) + 77, (1 << 28) - 1] {
        let colour = simple_shm_pixel(22, 40, t16);
        let times = simple_shm_times(22, colour);
        assert!(times.contains(&t16), "{t16}: {times:?}");
    }
    assert_eq!(simple_shm_pixel(5, 5, 123), 0xffff_ffff);
    assert_eq!(simple_shm_pixel(125, 125, 0), 0xff00_0000);
}
