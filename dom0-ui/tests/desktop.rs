//! dom0-ui as a user sees it: the real `dom0-ui` binary on a private Xvfb, a real domaind on
//! a private bus, two real debian-12 sandbox domains (labels blue and green) running real
//! Wayland clients (weston-simple-shm, foot, wl-clipboard) through their gui-agents.
//! Screenshots are checked by pixels and kept as artefacts (`$BULKHEAD_TEST_ARTIFACTS` or
//! `target/test-artifacts/`):
//! - every guest window has a frame in its domain's label colour on every side, a title
//!   `[domain] title` (read back from X11 `_NET_WM_NAME`), and the guest's pixels inside;
//!   the second domain's windows are in its own colour;
//! - keys typed (XTEST, through xdotool) into one domain's terminal run there and never in
//!   the other domain;
//! - the secure clipboard: wl-copy in one domain, Ctrl-Shift-C there, Ctrl-Shift-V in the
//!   other, wl-paste there shows it (allowed by the policy); the opposite direction is denied
//!   by the policy: the target's clipboard is unchanged and a notice says why; neither chord
//!   reaches a terminal;
//! - the ask dialog: Return does not answer it, Alt+A (once it takes keys) allows the
//!   preselected default, Escape denies, and the denial shows a notice (signal
//!   `CallDenied`); `dom0-ui open-in-dvm` is refused without a policy;
//! - the panel's Ctrl-Alt-M opens dom0-manager's domain manager.
//!
//! A second test (issue 13 items 1 and 2), without a window manager and under openbox: while
//! the user types into `work`'s terminal, `untrusted` maps a window and then asks a question;
//! the keys keep going to `work` (X input focus checked), Return does not answer, the
//! question offers `work` (preselected) and not the template, and shows both domains'
//! colours.
//!
//! Needs root (sandboxes), Xvfb, xdotool, openbox, and `$BULKHEAD_TEST_TEMPLATE_CACHE` with
//! the debian-12 template built with its GUI group (scripts/test.sh sets it up).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_domain::Label;
use bulkhead_testkit::{sandbox_available, template_cache, DomaindOptions, TestBus, TestDomaind};
use dom0_manager::testing::{save_artifact, screenshot, Xvfb};
use image::RgbaImage;
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState};
use x11rb::rust_connection::RustConnection;
use zbus::zvariant::Fd;

const TEST_LIMIT: Duration = Duration::from_secs(600);
/// dom0-ui's frame width (dom0_ui::view::FRAME).
const FRAME: u32 = dom0_ui::view::FRAME;

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// `Run` of `script` (sh -c) in `domain`: (exit code, stdout, stderr).
async fn run(p: &Domaind1Proxy<'_>, domain: &str, script: &str) -> (i32, String, String) {
    let (in_r, in_w) = pipe();
    drop(in_w);
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let rd = |fd: OwnedFd| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::fs::File::from(fd).read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let (out, err) = (rd(out_r), rd(err_r));
    let res = p
        .run(
            domain,
            &["/bin/sh", "-c", script],
            "",
            Fd::from(&in_r),
            Fd::from(&out_w),
            Fd::from(&err_w),
        )
        .await;
    drop((in_r, out_w, err_w));
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match res {
        Ok(code) => (code, out, err),
        Err(e) => panic!("Run in {domain}: {e}"),
    }
}

/// stdin, stdout and stderr on /dev/null.
fn null_stdio() -> (std::fs::File, std::fs::File, std::fs::File) {
    let null = || {
        std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .expect("/dev/null")
    };
    (null(), null(), null())
}

/// Starts `script` in `domain` in the background (the Run call lasts as long as it). Its
/// output, and how the call ended, go to `spawn-DOMAIN-N.log` in `dir`, which
/// `spawned_logs` shows when a test fails.
fn spawn_in(p: &Domaind1Proxy<'static>, domain: &str, script: &str, dir: &Path) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("spawn-{domain}-{n}.log"));
    let (p, domain, script) = (p.clone(), domain.to_owned(), script.to_owned());
    tokio::spawn(async move {
        let (i, _, _) = null_stdio();
        let out = std::fs::File::create(&path).expect("spawn log");
        let err = out.try_clone().expect("spawn log");
        let _ = writeln!(&out, "$ {script}");
        let res = p
            .run(
                &domain,
                &["/bin/sh", "-c", &script],
                "",
                Fd::from(&i),
                Fd::from(&out),
                Fd::from(&err),
            )
            .await;
        let _ = writeln!(&out, "--- ended: {res:?}");
    });
}

/// What the programs started by `spawn_in` in `dir` printed, for a failure message.
fn spawned_logs(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("spawn-"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            format!(
                "--- {}:\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A top-level X window as dom0-ui shows it.
#[derive(Debug, Clone)]
struct XWin {
    id: u32,
    name: String,
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

/// Viewable top-level windows with their `_NET_WM_NAME` (else `WM_NAME`).
fn x_windows(display: &str) -> Vec<XWin> {
    let (conn, screen) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let root = conn.setup().roots[screen].root;
    let net_wm_name = conn
        .intern_atom(false, b"_NET_WM_NAME")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    let utf8 = conn
        .intern_atom(false, b"UTF8_STRING")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    let mut out = Vec::new();
    let Ok(tree) = conn.query_tree(root).unwrap().reply() else {
        return out;
    };
    for w in tree.children {
        let Ok(attrs) = conn.get_window_attributes(w).unwrap().reply() else {
            continue;
        };
        if attrs.map_state != MapState::VIEWABLE {
            continue;
        }
        let name = conn
            .get_property(false, w, net_wm_name, utf8, 0, 1024)
            .unwrap()
            .reply()
            .ok()
            .filter(|p| p.value_len > 0)
            .or_else(|| {
                conn.get_property(false, w, AtomEnum::WM_NAME, AtomEnum::STRING, 0, 1024)
                    .unwrap()
                    .reply()
                    .ok()
            })
            .map(|p| String::from_utf8_lossy(&p.value).into_owned())
            .unwrap_or_default();
        let Ok(g) = conn.get_geometry(w).unwrap().reply() else {
            continue;
        };
        if g.x < 0 || g.y < 0 {
            continue;
        }
        out.push(XWin {
            id: w,
            name,
            x: g.x as u32,
            y: g.y as u32,
            width: u32::from(g.width),
            height: u32::from(g.height),
        });
    }
    out
}

/// Waits for a window whose name satisfies `f`.
async fn wait_window(
    display: &str,
    what: &str,
    secs: u64,
    diag: &dyn Fn() -> String,
    f: impl Fn(&str) -> bool,
) -> XWin {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(w) = x_windows(display).into_iter().find(|w| f(&w.name)) {
            return w;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = x_windows(display).into_iter().map(|w| w.name).collect();
            panic!(
                "no window {what} within {secs} s; windows: {names:?}\n{}",
                diag()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rgb(img: &RgbaImage, x: u32, y: u32) -> u32 {
    let p = img.get_pixel(x, y).0;
    (u32::from(p[0]) << 16) | (u32::from(p[1]) << 8) | u32::from(p[2])
}

/// Checks the frame of `w` in the screenshot: every pixel of the outer `FRAME` pixels on the
/// left, right and bottom, and the top row of the title strip, is `colour`; inside there are
/// guest pixels of other colours. Returns a description of the first failure.
fn check_frame(img: &RgbaImage, w: &XWin, colour: u32) -> Result<(), String> {
    let (x0, y0, x1, y1) = (w.x, w.y, w.x + w.width - 1, w.y + w.height - 1);
    let bad = |x: u32, y: u32, side: &str| {
        let got = rgb(img, x, y);
        (got != colour).then(|| {
            format!(
                "{side} of {:?} at ({x},{y}): {got:06x}, want {colour:06x}",
                w.name
            )
        })
    };
    for x in x0..=x1 {
        if let Some(e) = bad(x, y0, "top") {
            return Err(e);
        }
        for d in 0..FRAME {
            if let Some(e) = bad(x, y1 - d, "bottom") {
                return Err(e);
            }
        }
    }
    for y in y0..=y1 {
        for d in 0..FRAME {
            if let Some(e) = bad(x0 + d, y, "left").or_else(|| bad(x1 - d, y, "right")) {
                return Err(e);
            }
        }
    }
    // The title strip and the frame's top edge: the label colour down the column just inside
    // the left frame, until the guest's pixels start.
    let top = (y0..y1)
        .find(|&y| rgb(img, x0 + FRAME, y) != colour)
        .ok_or_else(|| format!("{:?} is all frame", w.name))?;
    if top < y0 + FRAME + 10 {
        return Err(format!(
            "{:?}: no title strip above the guest ({top})",
            w.name
        ));
    }
    // Inside the frame: the guest's pixels, not just one colour.
    let mut colours = std::collections::HashSet::new();
    for y in top..(y1 - FRAME) {
        for x in (x0 + FRAME)..(x1 - FRAME) {
            colours.insert(rgb(img, x, y));
        }
    }
    if colours.len() < 2 {
        return Err(format!("{:?} shows no guest content: {colours:x?}", w.name));
    }
    Ok(())
}

struct Ui {
    child: Child,
    log: std::path::PathBuf,
}

impl Ui {
    /// dom0-ui on `display` for domaind `d`, its output in `<d's root>/<log_name>`.
    fn start(display: &str, d: &TestDomaind, log_name: &str) -> Ui {
        Ui::start_with_menu_sync(display, d, log_name, 3600)
    }

    /// [`Ui::start`], rewriting the menu every `menu_sync` seconds at the latest.
    fn start_with_menu_sync(display: &str, d: &TestDomaind, log_name: &str, menu_sync: u32) -> Ui {
        let log = d.root().expect("domaind root").join(log_name);
        let out = std::fs::File::create(&log).expect("dom0-ui log");
        let err = out.try_clone().expect("dom0-ui log");
        Ui {
            child: Command::new(env!("CARGO_BIN_EXE_dom0-ui"))
                .env("DISPLAY", display)
                .env("GDK_BACKEND", "x11")
                .env("GSK_RENDERER", "cairo")
                .env("NO_AT_BRIDGE", "1")
                .env("GTK_A11Y", "none")
                .env("BULKHEAD_BUS_ADDRESS", d.bus_address())
                .env("BULKHEAD_LOG", "info,dom0_ui=debug")
                // the menu it keeps goes to the test's directory, never the user's
                .env("XDG_DATA_HOME", Ui::data_home(d))
                .args(["--menu-sync", &menu_sync.to_string()])
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start dom0-ui"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// dom0-ui's XDG_DATA_HOME (its menu entries are in `applications/` below).
    fn data_home(d: &TestDomaind) -> PathBuf {
        d.root().expect("domaind root").join("xdg-data")
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xdotool(display: &str, args: &[&str]) {
    let st = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .status()
        .expect("xdotool");
    assert!(st.success(), "xdotool {args:?}: {st}");
}

/// Focuses window `w` and types `text` into it (then Return).
fn type_into(display: &str, w: &XWin, text: &str) {
    let id = w.id.to_string();
    xdotool(display, &["windowfocus", "--sync", &id]);
    xdotool(display, &["type", "--delay", "40", text]);
    xdotool(display, &["key", "Return"]);
}

fn key_into(display: &str, w: &XWin, key: &str) {
    let id = w.id.to_string();
    xdotool(display, &["windowfocus", "--sync", &id]);
    xdotool(display, &["key", key]);
}

/// Types `touch /home/user/NAME` into `w` and checks it ran in `domain` (it would not if a
/// chord had reached the terminal and pasted text before it).
async fn assert_next_command_runs(
    p: &Domaind1Proxy<'_>,
    display: &str,
    domain: &str,
    w: &XWin,
    name: &str,
) {
    let file = format!("/home/user/{name}");
    type_into(display, w, &format!("touch {file}"));
    for _ in 0..20 {
        if run(p, domain, &format!("test -e {file}")).await.0 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("`touch {file}` typed after a chord did not run in {domain}: the chord reached the terminal");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_windows_keys_and_clipboard_through_dom0_ui() {
    tokio::time::timeout(TEST_LIMIT, body())
        .await
        .expect("test did not finish in time");
}

async fn body() {
    let Some(env) = desktop_env(
        &["Xvfb", "xdotool"],
        &["usr/bin/foot", "usr/bin/weston-simple-shm"],
    )
    .await
    else {
        return;
    };
    let (p, d, display) = (&env.p, &env.d, env.display.clone());
    let pre = format!("ui{}-", std::process::id() % 100_000);
    let (work, vault) = (format!("{pre}work"), format!("{pre}vault"));
    let (work_label, vault_label) = (Label::Blue, Label::Green);
    p.create(
        &work,
        "app",
        "debian-12",
        work_label.as_str(),
        HashMap::new(),
    )
    .await
    .unwrap();
    p.create(
        &vault,
        "app",
        "debian-12",
        vault_label.as_str(),
        HashMap::new(),
    )
    .await
    .unwrap();
    // vault may paste into work, work never into vault.
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("30-test.policy"),
        format!(
            "bulkhead.ClipboardPaste * {vault} {work} allow\n\
             bulkhead.ClipboardPaste * {work} {vault} deny\n\
             test.Ask * @adminvm @anyvm ask default_target={vault}\n"
        ),
    )
    .unwrap();
    p.start(&work).await.expect("start work");
    p.start(&vault).await.expect("start vault");

    let spawn_dir = d.root().unwrap().to_path_buf();
    let ui = Ui::start(&display, d, "dom0-ui.log");
    let ui_log = || ui.log();
    let diag = || {
        format!(
            "--- dom0-ui log:\n{}\n{}\n--- domaind log (tail):\n{}",
            ui_log(),
            spawned_logs(&spawn_dir),
            d.log()
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    spawn_in(p, &work, "exec weston-simple-shm", &spawn_dir);
    let term = |title: &str| {
        format!("cd /home/user && LC_ALL=C.UTF-8 exec foot --window-size-pixels=560x300 --title={title} /bin/sh")
    };
    spawn_in(p, &work, &term("term-work"), &spawn_dir);
    spawn_in(p, &vault, &term("term-vault"), &spawn_dir);
    let shm = wait_window(&display, "[work] simple-shm", 90, &diag, |n| {
        n == format!("[{work}] simple-shm")
    })
    .await;
    let tw = wait_window(&display, "[work] term-work", 90, &diag, |n| {
        n == format!("[{work}] term-work")
    })
    .await;
    let tv = wait_window(&display, "[vault] term-vault", 90, &diag, |n| {
        n == format!("[{vault}] term-vault")
    })
    .await;
    // Without a window manager dom0-ui places the windows side by side: none covers another
    // (a window is as wide as its title strip needs, even over a narrow guest window).
    let overlapping = || {
        let now = x_windows(&display);
        let wins: Vec<&XWin> = [&shm, &tw, &tv]
            .iter()
            .filter_map(|w| now.iter().find(|n| n.id == w.id))
            .collect();
        let mut bad = None;
        for (i, a) in wins.iter().enumerate() {
            for b in &wins[i + 1..] {
                let apart = a.x + a.width <= b.x
                    || b.x + b.width <= a.x
                    || a.y + a.height <= b.y
                    || b.y + b.height <= a.y;
                if !apart {
                    bad = Some(format!("{a:?} and {b:?} overlap"));
                }
            }
        }
        bad
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(e) = overlapping() {
        assert!(Instant::now() < deadline, "{e}\n{}", ui_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Frames: every side in the label colour, guest pixels inside; retry while the guests
    // draw their first frames.
    let deadline = Instant::now() + Duration::from_secs(30);
    let img = loop {
        let img = screenshot(&display).expect("screenshot");
        let checks = [
            check_frame(&img, &shm, work_label.color_rgb()),
            check_frame(&img, &tw, work_label.color_rgb()),
            check_frame(&img, &tv, vault_label.color_rgb()),
        ];
        match checks.into_iter().find_map(Result::err) {
            None => break img,
            Some(e) if Instant::now() > deadline => {
                let path = save_artifact("dom0-ui-frames-failed", &img).unwrap();
                panic!("{e} (screenshot {})\n{}", path.display(), ui_log());
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    eprintln!(
        "desktop screenshot: {}",
        save_artifact("dom0-ui-desktop", &img).unwrap().display()
    );

    // Keys typed into work's terminal run in work only.
    let marker = "/home/user/typed-from-dom0";
    let mut typed = false;
    for _ in 0..5 {
        type_into(&display, &tw, &format!("touch {marker}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        if run(p, &work, &format!("test -e {marker}")).await.0 == 0 {
            typed = true;
            break;
        }
    }
    assert!(
        typed,
        "what was typed into work's terminal did not run there\n{}",
        ui_log()
    );
    assert_eq!(
        run(p, &vault, &format!("test -e {marker}")).await.0,
        1,
        "the keys typed into work's window reached vault"
    );

    // Clipboard, allowed: vault -> work. The user works in vault (wl-copy's window needs the
    // keyboard, and a new window may take it only from its own domain).
    xdotool(&display, &["windowfocus", "--sync", &tv.id.to_string()]);
    let (code, _, err) = run(
        p,
        &vault,
        "wl-copy 'from vault, 1' </dev/null >/dev/null 2>&1",
    )
    .await;
    assert_eq!(code, 0, "wl-copy in vault: {err}");
    key_into(&display, &tv, "ctrl+shift+c");
    wait_window(&display, "the copy notice", 20, &diag, |n| {
        n.starts_with("Bulkhead: Copied 13 bytes from") && n.contains(&vault)
    })
    .await;
    key_into(&display, &tw, "ctrl+shift+v");
    wait_window(&display, "the paste notice", 20, &diag, |n| {
        n.starts_with("Bulkhead: Pasted 13 bytes from") && n.contains(&work)
    })
    .await;
    let (code, out, err) = run(p, &work, "wl-paste --no-newline").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from vault, 1"),
        "wl-paste in work: {err}"
    );
    // The chords never reached the terminals (foot would have pasted work's clipboard into
    // its command line, and the next command would not run).
    assert_next_command_runs(p, &display, &work, &tw, "after-paste").await;

    // Clipboard, denied: work -> vault leaves vault's clipboard as it was.
    let (code, _, err) = run(
        p,
        &work,
        "wl-copy 'from work, 2' </dev/null >/dev/null 2>&1",
    )
    .await;
    assert_eq!(code, 0, "wl-copy in work: {err}");
    key_into(&display, &tw, "ctrl+shift+c");
    wait_window(&display, "the second copy notice", 20, &diag, |n| {
        n.starts_with("Bulkhead: Copied 12 bytes from") && n.contains(&work)
    })
    .await;
    key_into(&display, &tv, "ctrl+shift+v");
    wait_window(&display, "the refusal notice", 20, &diag, |n| {
        n.starts_with("Bulkhead: Paste refused") && n.contains(&work) && n.contains(&vault)
    })
    .await;
    assert_next_command_runs(p, &display, &vault, &tv, "after-refusal").await;
    let img = screenshot(&display).expect("screenshot");
    eprintln!(
        "refusal screenshot: {}",
        save_artifact("dom0-ui-paste-refused", &img)
            .unwrap()
            .display()
    );
    let (code, out, err) = run(p, &vault, "wl-paste --no-newline").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "from vault, 1"),
        "vault's clipboard changed after a denied paste: {err}"
    );

    // The ask dialog: a dom0 call the policy asks about. Return never answers (no default
    // button, and keys are ignored for a moment after the dialog gets the keyboard); Alt+A
    // after that allows the preselected default (the call then runs in vault: no such
    // service there, so it fails, but it is not denied); Escape denies, and the denial shows
    // a notice (signal CallDenied).
    for (key, denied) in [("alt+a", false), ("Escape", true)] {
        let call = {
            let p = p.clone();
            tokio::spawn(async move {
                let (i, o, e) = null_stdio();
                p.call(
                    "@default",
                    "test.Ask",
                    Fd::from(&i),
                    Fd::from(&o),
                    Fd::from(&e),
                )
                .await
            })
        };
        let dialog = wait_window(&display, "the ask dialog", 30, &diag, |n| {
            n == "Bulkhead: allow test.Ask from dom0?"
        })
        .await;
        if !denied {
            let img = screenshot(&display).expect("screenshot");
            save_artifact("dom0-ui-ask", &img).unwrap();
        }
        key_into(&display, &dialog, "Return");
        tokio::time::sleep(dom0_ui::ask::ARM_DELAY + Duration::from_millis(700)).await;
        assert!(!call.is_finished(), "Return answered the ask dialog");
        xdotool(&display, &["key", key]);
        let res = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call did not end")
            .expect("call task");
        assert_eq!(
            matches!(res, Err(Error::AccessDenied(_))),
            denied,
            "{key} in the ask dialog: {res:?}\n{}",
            diag()
        );
    }
    wait_window(&display, "the denial notice", 20, &diag, |n| {
        n.starts_with("Bulkhead: Denied: dom0") && n.contains("test.Ask")
    })
    .await;

    // dom0's "Open in disposable" goes through the policy too (none allows it here).
    let file = d.root().unwrap().join("note.txt");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dom0-ui"))
        .args(["open-in-dvm"])
        .arg(&file)
        .env("BULKHEAD_BUS_ADDRESS", d.bus_address())
        .output()
        .expect("dom0-ui open-in-dvm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "open-in-dvm without a policy: {err}");
    assert!(
        err.contains("the policy does not let dom0 open files"),
        "{err}"
    );

    // The panel opens the domain manager (Ctrl-Alt-M), which lists both running domains.
    let panel = wait_window(&display, "the panel", 10, &diag, |n| n == "Bulkhead").await;
    key_into(&display, &panel, "ctrl+alt+m");
    wait_window(&display, "the domain manager", 30, &diag, |n| {
        n == "Bulkhead domains"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let img = screenshot(&display).expect("screenshot");
    eprintln!(
        "manager screenshot: {}",
        save_artifact("dom0-ui-manager", &img).unwrap().display()
    );

    drop(ui);
    for n in [&work, &vault] {
        let _ = p.kill(n).await;
    }
}

/// Named client windows, also under a window manager (whose frames are the root's children):
/// the root's children and their children, with their position on the screen.
fn client_windows(display: &str) -> Vec<XWin> {
    let (conn, screen) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let root = conn.setup().roots[screen].root;
    let atom = |n: &[u8]| conn.intern_atom(false, n).unwrap().reply().unwrap().atom;
    let (net_wm_name, utf8) = (atom(b"_NET_WM_NAME"), atom(b"UTF8_STRING"));
    let children = |w: u32| {
        conn.query_tree(w)
            .ok()
            .and_then(|c| c.reply().ok())
            .map(|t| t.children)
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for top in children(root) {
        for w in std::iter::once(top).chain(children(top)) {
            let viewable = conn
                .get_window_attributes(w)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some_and(|a| a.map_state == MapState::VIEWABLE);
            let name = conn
                .get_property(false, w, net_wm_name, utf8, 0, 1024)
                .ok()
                .and_then(|c| c.reply().ok())
                .map(|p| String::from_utf8_lossy(&p.value).into_owned())
                .unwrap_or_default();
            if !viewable || name.is_empty() {
                continue;
            }
            let Some(g) = conn.get_geometry(w).ok().and_then(|c| c.reply().ok()) else {
                continue;
            };
            let Some(at) = conn
                .translate_coordinates(w, root, 0, 0)
                .ok()
                .and_then(|c| c.reply().ok())
            else {
                continue;
            };
            out.push(XWin {
                id: w,
                name,
                x: at.dst_x.max(0) as u32,
                y: at.dst_y.max(0) as u32,
                width: u32::from(g.width),
                height: u32::from(g.height),
            });
        }
    }
    out
}

async fn wait_client(display: &str, what: &str, diag: &dyn Fn() -> String, name: &str) -> XWin {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(w) = client_windows(display).into_iter().find(|w| w.name == name) {
            return w;
        }
        if Instant::now() > deadline {
            let names: Vec<String> = client_windows(display)
                .into_iter()
                .map(|w| w.name)
                .collect();
            panic!(
                "no window {what} within 90 s; windows: {names:?}\n{}",
                diag()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `s` without ANSI colour sequences (none when dom0-ui writes to a file, as here).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `_NET_FRAME_EXTENTS` of `w` (left, right, top, bottom), set by a window manager.
fn frame_extents(display: &str, w: u32) -> Option<[u32; 4]> {
    let (conn, _) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let atom = conn
        .intern_atom(false, b"_NET_FRAME_EXTENTS")
        .ok()?
        .reply()
        .ok()?
        .atom;
    let p = conn
        .get_property(false, w, atom, AtomEnum::CARDINAL, 0, 4)
        .ok()?
        .reply()
        .ok()?;
    let v: Vec<u32> = p.value32()?.collect();
    v.try_into().ok()
}

/// The screen's size in pixels.
fn screen_size(display: &str) -> (u32, u32) {
    let (conn, screen) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let s = &conn.setup().roots[screen];
    (u32::from(s.width_in_pixels), u32::from(s.height_in_pixels))
}

/// The window with the keyboard focus.
fn input_focus(display: &str) -> u32 {
    let (conn, _) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    conn.get_input_focus().unwrap().reply().unwrap().focus
}

/// Whether `path` exists in `domain`, waiting up to `secs` for it.
async fn appears(p: &Domaind1Proxy<'_>, domain: &str, path: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if run(p, domain, &format!("test -e {path}")).await.0 == 0 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pixels of `colour` inside `w` on the screenshot.
fn count_colour(img: &RgbaImage, w: &XWin, colour: u32) -> usize {
    let mut n = 0;
    for y in w.y..(w.y + w.height).min(img.height()) {
        for x in w.x..(w.x + w.width).min(img.width()) {
            if rgb(img, x, y) == colour {
                n += 1;
            }
        }
    }
    n
}

struct Wm(Child);

impl Drop for Wm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts openbox on `display` and waits until it manages the screen.
async fn start_openbox(display: &str) -> Wm {
    let wm = Wm(Command::new("openbox")
        .arg("--sm-disable")
        .env("DISPLAY", display)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openbox"));
    let (conn, screen) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let root = conn.setup().roots[screen].root;
    let check = conn
        .intern_atom(false, b"_NET_SUPPORTING_WM_CHECK")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    for _ in 0..100 {
        let set = conn
            .get_property(false, root, check, AtomEnum::WINDOW, 0, 1)
            .ok()
            .and_then(|c| c.reply().ok())
            .is_some_and(|p| p.value_len > 0);
        if set {
            // Let it adopt the windows already there.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return wm;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("openbox did not start on {display}");
}

/// Issue 13, items 1 and 2: the user types into `work`'s terminal while `untrusted` maps a
/// window and then asks a question (as `bulkhead-copy-to-vm` would): the keys keep going to
/// `work`, Return does not answer the question, the question offers `work` (preselected),
/// not the template, and shows the asking domain's and the target's colours. Once without a
/// window manager, once under openbox.
#[tokio::test(flavor = "multi_thread")]
async fn guest_windows_and_questions_do_not_take_the_keyboard() {
    tokio::time::timeout(TEST_LIMIT, focus_body())
        .await
        .expect("test did not finish in time");
}

async fn focus_body() {
    let Some(env) = desktop_env(&["Xvfb", "xdotool", "openbox"], &["usr/bin/foot"]).await else {
        return;
    };
    let (p, d, display) = (&env.p, &env.d, env.display.clone());
    let pre = format!("fo{}-", std::process::id() % 100_000);
    let (work, untrusted) = (format!("{pre}work"), format!("{pre}untrusted"));
    for (n, l) in [(&work, Label::Blue), (&untrusted, Label::Red)] {
        p.create(n, "app", "debian-12", l.as_str(), HashMap::new())
            .await
            .unwrap();
    }
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("30-test.policy"),
        format!("test.Ask * {untrusted} @anyvm ask\n"),
    )
    .unwrap();
    p.start(&work).await.expect("start work");
    p.start(&untrusted).await.expect("start untrusted");

    let spawn_dir = d.root().unwrap().to_path_buf();
    let ui = Ui::start(&display, d, "dom0-ui-focus.log");
    let ui_log = || ui.log();
    let diag = || {
        format!(
            "--- dom0-ui log:\n{}\n{}",
            ui_log(),
            spawned_logs(&spawn_dir)
        )
    };
    let term = |title: &str| {
        format!("cd /home/user && LC_ALL=C.UTF-8 exec foot --window-size-pixels=500x260 --title={title} /bin/sh")
    };
    spawn_in(p, &work, &term("term-work"), &spawn_dir);
    let tw_name = format!("[{work}] term-work");
    let tw = wait_client(&display, "[work] term-work", &diag, &tw_name).await;
    // The terminal takes keys once its shell runs.
    let mut ready = false;
    for _ in 0..5 {
        type_into(&display, &tw, "touch /home/user/ready");
        if appears(p, &work, "/home/user/ready", 2).await {
            ready = true;
            break;
        }
    }
    assert!(
        ready,
        "typing into work's terminal did not work\n{}",
        diag()
    );

    let mut _wm = None;
    for (round, wm) in [(0, "no window manager"), (1, "openbox")] {
        if round == 1 {
            _wm = Some(start_openbox(&display).await);
        }
        let tw = wait_client(&display, "[work] term-work", &diag, &tw_name).await;
        xdotool(&display, &["windowfocus", "--sync", &tw.id.to_string()]);

        // untrusted maps a window while the user types into work.
        let pop = format!("pop{round}");
        spawn_in(p, &untrusted, &term(&pop), &spawn_dir);
        wait_client(
            &display,
            "untrusted's window",
            &diag,
            &format!("[{untrusted}] {pop}"),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            input_focus(&display),
            tw.id,
            "{wm}: untrusted's new window took the keyboard focus\n{}",
            diag()
        );
        let file = format!("/home/user/after-map-{round}");
        xdotool(
            &display,
            &["type", "--delay", "40", &format!("touch {file}")],
        );
        xdotool(&display, &["key", "Return"]);
        assert!(
            appears(p, &work, &file, 10).await,
            "{wm}: what was typed after untrusted's window came did not reach work\n{}",
            diag()
        );
        assert_eq!(
            run(p, &untrusted, &format!("test -e {file}")).await.0,
            1,
            "{wm}: keys typed for work reached untrusted"
        );

        // untrusted asks to send something to work while the user types into work.
        let call = {
            let (p, untrusted, work) = (p.clone(), untrusted.clone(), work.clone());
            tokio::spawn(async move {
                run(
                    &p,
                    &untrusted,
                    &format!("/usr/lib/bulkhead/bulkhead-call {work} test.Ask"),
                )
                .await
            })
        };
        let title = format!("Bulkhead: allow test.Ask from {untrusted}?");
        let dialog = wait_client(&display, "the ask dialog", &diag, &title).await;
        let file = format!("/home/user/after-ask-{round}");
        xdotool(
            &display,
            &["type", "--delay", "40", &format!("touch {file}")],
        );
        xdotool(&display, &["key", "Return", "Return"]);
        assert!(
            appears(p, &work, &file, 10).await,
            "{wm}: what was typed while the question came did not reach work\n{}",
            diag()
        );
        assert_eq!(
            input_focus(&display),
            tw.id,
            "{wm}: the ask dialog took the keyboard"
        );
        assert!(
            !call.is_finished(),
            "{wm}: the keys typed into work answered the question"
        );
        // Offered: work only (not the template debian-12), preselected.
        let log = strip_ansi(&ui_log());
        assert!(
            log.contains(&format!("targets=[\"{work}\"]"))
                && log.contains(&format!("preselected=\"{work}\"")),
            "{wm}: the question does not offer exactly work, preselected\n{log}"
        );
        // In its own colours: the asking domain's (red) and the target's (blue).
        tokio::time::sleep(dom0_ui::ask::ARM_DELAY).await;
        let img = screenshot(&display).expect("screenshot");
        let shot = save_artifact(&format!("dom0-ui-ask-focus-{round}"), &img).unwrap();
        for (who, colour) in [("untrusted", Label::Red), ("work", Label::Blue)] {
            assert!(
                count_colour(&img, &dialog, colour.color_rgb()) > 500,
                "{wm}: the dialog does not show {who}'s colour ({})",
                shot.display()
            );
        }
        // Even given the keyboard, Return does not answer, nor (right after it got the
        // keyboard) Alt+A or Space; Escape (once keys count) denies.
        xdotool(&display, &["windowfocus", "--sync", &dialog.id.to_string()]);
        xdotool(&display, &["key", "Return", "alt+a", "space"]);
        tokio::time::sleep(dom0_ui::ask::ARM_DELAY + Duration::from_millis(700)).await;
        assert!(
            !call.is_finished(),
            "{wm}: Return in the ask dialog answered it"
        );
        xdotool(&display, &["key", "Escape"]);
        let (code, _, err) = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the call did not end")
            .expect("call task");
        assert_eq!(code, 126, "{wm}: Escape did not deny: {err}\n{}", diag());
    }

    // One title bar: openbox draws none around a guest window (its frame extents are a
    // border at most, the same on top as on the sides), so dom0-ui's coloured strip with
    // the domain's name is the only one; a double click on it maximises the window, as on
    // any title bar.
    let tw = wait_client(&display, "[work] term-work", &diag, &tw_name).await;
    let ext = frame_extents(&display, tw.id).expect("openbox sets _NET_FRAME_EXTENTS");
    assert!(
        ext[2] == ext[0] && ext[2] <= 2,
        "openbox decorates the guest window: frame extents (left, right, top, bottom) {ext:?}"
    );
    let (sw, _) = screen_size(&display);
    xdotool(
        &display,
        &[
            "mousemove",
            &(tw.x + 40).to_string(),
            &(tw.y + 8).to_string(),
            "click",
            "--repeat",
            "2",
            "--delay",
            "80",
            "1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = wait_client(&display, "[work] term-work", &diag, &tw_name).await;
        if w.width + 10 >= sw {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a double click on the strip did not maximise the window ({} of {sw} px)\n{}",
            w.width,
            diag()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    drop(ui);
    for n in [&work, &untrusted] {
        let _ = p.kill(n).await;
    }
}

/// Swaps the symbols of the Y and Z keys (keycodes 29 and 52) in the X server's keyboard
/// mapping through the core protocol (Xvfb ignores `setxkbmap`): a keymap change as a layout
/// switch makes it.
fn swap_y_and_z(display: &str) {
    use x11rb::protocol::xproto::ConnectionExt as _;
    let (conn, _) = RustConnection::connect(Some(display)).expect("connect to Xvfb");
    let (y, z) = (29u8, 52u8);
    let get = |k: u8| {
        conn.get_keyboard_mapping(k, 1)
            .expect("request")
            .reply()
            .expect("keyboard mapping")
    };
    let (ym, zm) = (get(y), get(z));
    let per = zm.keysyms_per_keycode;
    conn.change_keyboard_mapping(1, z, per, &ym.keysyms)
        .expect("request");
    conn.change_keyboard_mapping(1, y, per, &zm.keysyms)
        .expect("request");
    x11rb::wrapper::ConnectionExt::sync(&conn).expect("sync");
}

/// dom0's keymap reaches the guests: the X server's keymap goes to a domain when dom0-ui
/// starts (its gui-agent applies it), and again when dom0's mapping changes.
#[tokio::test(flavor = "multi_thread")]
async fn the_guest_follows_dom0s_keyboard_layout() {
    tokio::time::timeout(TEST_LIMIT, keymap_body())
        .await
        .expect("test did not finish in time");
}

async fn keymap_body() {
    let Some(env) = desktop_env(&["Xvfb", "xkbcomp"], &[]).await else {
        return;
    };
    let (p, d, display) = (&env.p, &env.d, env.display.as_str());
    let kb = format!("kb{}", std::process::id() % 100_000);
    p.create(&kb, "app", "debian-12", "blue", HashMap::new())
        .await
        .unwrap();
    p.start(&kb).await.expect("start");
    let ui = Ui::start(display, d, "dom0-ui-keymap.log");
    let ui_log = || ui.log();
    let count = || {
        let (p, kb) = (p.clone(), kb.clone());
        async move {
            bulkhead_testkit::domain_log(&p, &kb)
                .await
                .matches("keymap from dom0 applied")
                .count()
        }
    };
    let applied = |n: usize| async move {
        for _ in 0..100 {
            if count().await >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(
        applied(1).await,
        "the guest got no keymap from dom0\n{}\n{}",
        ui_log(),
        bulkhead_testkit::domain_log(p, &kb).await
    );
    // dom0-ui's first reading of the keymap may still be on its way: let it settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = count().await;
    swap_y_and_z(display);
    assert!(
        applied(before + 1).await,
        "the guest did not get dom0's new keymap\n{}\n{}",
        ui_log(),
        bulkhead_testkit::domain_log(p, &kb).await
    );
    assert!(ui_log().contains("dom0's keymap changed"), "{}", ui_log());
}

/// What the keymap and menu tests run against: Xvfb, a private bus, domaind with the
/// debian-12 template registered, and a client. Fields drop in order (the client first, Xvfb
/// last). None (said as a skip) when a program or the template cache is missing.
struct DesktopEnv {
    p: Domaind1Proxy<'static>,
    _conn: zbus::Connection,
    d: TestDomaind,
    _bus: TestBus,
    display: String,
    _x: Xvfb,
}

/// `template_files`: paths in the debian-12 template's root the test needs (else a skip).
async fn desktop_env(programs: &[&str], template_files: &[&str]) -> Option<DesktopEnv> {
    if !sandbox_available() {
        return None;
    }
    for prog in programs {
        if !have(prog) {
            bulkhead_test_skip::skip(format_args!(
                "{prog} is not installed (scripts/install-deps.sh)"
            ));
            return None;
        }
    }
    let cache = template_cache()?;
    let root = cache.join("debian-12/current");
    if !template_files.iter().all(|f| root.join(f).exists()) {
        bulkhead_test_skip::skip(format_args!(
            "{} has no debian-12 template with the GUI group ({})",
            cache.display(),
            template_files.join(", ")
        ));
        return None;
    }
    let x = Xvfb::start().expect("Xvfb");
    let display = x.display().to_owned();
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            with_guest_tools: true,
            template_cache: Some(cache),
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let (conn, p) = d.client().await.expect("client");
    p.create("debian-12", "template", "", "black", HashMap::new())
        .await
        .or_else(|e| match e {
            Error::AlreadyExists(_) => Ok(()),
            e => Err(e),
        })
        .expect("register the template");
    Some(DesktopEnv {
        p,
        _conn: conn,
        d,
        _bus: bus,
        display,
        _x: x,
    })
}

/// dom0-ui keeps the application menu by itself: a domain's chosen application appears as an
/// entry without `bulkhead appmenus --sync` once the domain starts (the sync a state change
/// causes: the periodic one is an hour away), and the entry of a removed domain goes at
/// dom0-ui's next start.
#[tokio::test(flavor = "multi_thread")]
async fn dom0_ui_keeps_the_application_menu() {
    tokio::time::timeout(TEST_LIMIT, menu_body())
        .await
        .expect("test did not finish in time");
}

async fn menu_body() {
    let Some(env) = desktop_env(&["Xvfb"], &[]).await else {
        return;
    };
    let (p, d, display) = (&env.p, &env.d, env.display.as_str());
    let mw = format!("mw{}", std::process::id() % 100_000);
    let ui = Ui::start_with_menu_sync(display, d, "dom0-ui-menu.log", 3600);
    let entry = Ui::data_home(d)
        .join("applications")
        .join(format!("bulkhead-{mw}+foot.desktop"));
    p.create(&mw, "app", "debian-12", "purple", HashMap::new())
        .await
        .unwrap();
    p.set_property(&mw, "features.menu-items", "foot.desktop")
        .await
        .unwrap();
    p.start(&mw).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entry.exists() {
        assert!(
            Instant::now() < deadline,
            "no menu entry {} within 30 s\n{}",
            entry.display(),
            ui.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = std::fs::read_to_string(&entry).expect("entry");
    assert!(text.contains(&format!("\nName=[{mw}] Foot\n")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("Exec=") && l.ends_with(&format!(" app {mw} foot.desktop"))),
        "{text}"
    );
    p.kill(&mw).await.expect("kill");
    p.remove(&mw).await.expect("remove");
    drop(ui);
    let ui = Ui::start_with_menu_sync(display, d, "dom0-ui-menu-2.log", 3600);
    let deadline = Instant::now() + Duration::from_secs(30);
    while entry.exists() {
        assert!(
            Instant::now() < deadline,
            "the entry of the removed domain is still there after 30 s\n{}",
            ui.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(ui);
}
