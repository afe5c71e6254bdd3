//! `bulkhead-gui-receiver`: the headless dom0 GUI receiver for tests and the benchmark.
//!
//! Connects to one domain's GUI stream (through domaind's D-Bus `OpenGui`, or straight to a
//! gui-agent socket), keeps its windows and pixels, and answers commands read line by line
//! from stdin with one JSON line each on stdout:
//!
//! ```text
//! status                         -> {"state":"ready","version":1}
//! list                           -> [{"id":1,"title":"...","width":..,...}, ...]
//! wait-window TEXT [SECS]        -> the first mapped window whose title contains TEXT
//! wait-gone ID [SECS]            -> {"ok":true} once window ID is destroyed
//! pixels ID FILE                 -> {"width":W,"height":H}; FILE gets W*H*4 bytes (B,G,R,A)
//! key ID KEYCODE 0|1             -> {"ok":true}   (XKB keycode = evdev + 8)
//! tap ID KEYCODE...              -> press+release each
//! motion ID X Y | enter ID X Y | leave ID
//! button ID BTN 0|1 | scroll ID v|h VALUE V120
//! focus ID in|out | configure ID W H | close ID
//! copy [SECS]                    -> {"data":"..."} (lossy UTF-8)
//! paste TEXT
//! quit
//! ```
//! Errors are `{"error":"..."}` lines; the program keeps reading.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bulkhead_gui_host::{GuiConnection, Receiver, Rules, TitleMode};
use bulkhead_wire::gui::Axis;
use clap::Parser;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

const COMMANDS: &str = "Commands on stdin, one JSON line answered for each on stdout:
  status | list | wait-window TEXT [SECS] | wait-gone ID [SECS] | pixels ID FILE
  key ID KEYCODE 0|1 | tap ID KEYCODE... | motion ID X Y | enter ID X Y | leave ID
  button ID BTN 0|1 | scroll ID v|h VALUE V120 | focus ID in|out | configure ID W H
  close ID | copy [SECS] | paste TEXT | quit
Errors come as {\"error\":\"...\"}; keycodes are XKB (evdev + 8), pixels B,G,R,A bytes.";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Headless dom0 GUI receiver (tests and benchmark)",
    after_help = COMMANDS
)]
struct Args {
    /// Domain whose GUI to receive, through domaind's D-Bus OpenGui.
    #[arg(long, conflicts_with = "socket")]
    domain: Option<String>,
    /// Connect straight to a gui-agent socket instead (e.g. /run/bulkhead-gui/gui.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// D-Bus address of domaind's bus (default: $BULKHEAD_BUS_ADDRESS, else the system bus).
    #[arg(long)]
    bus_address: Option<String>,
    /// XKB keymap text file sent to the agent.
    #[arg(long)]
    keymap: Option<PathBuf>,
    /// Screen size windows are kept on, WxH.
    #[arg(long, default_value = "1920x1080")]
    screen: String,
    /// Allow UTF-8 titles (without control, bidi and zero-width characters).
    #[arg(long)]
    utf8_titles: bool,
}

async fn open_gui(domain: &str, bus: Option<&str>) -> Result<std::os::fd::OwnedFd> {
    let from_env = std::env::var("BULKHEAD_BUS_ADDRESS")
        .ok()
        .filter(|s| !s.is_empty());
    let conn = match bus.map(str::to_owned).or(from_env) {
        Some(a) => {
            zbus::connection::Builder::address(a.as_str())?
                .build()
                .await?
        }
        None => zbus::Connection::system().await?,
    };
    let reply = conn
        .call_method(
            Some("org.bulkhead.Domaind1"),
            "/org/bulkhead/Domaind1",
            Some("org.bulkhead.Domaind1"),
            "OpenGui",
            &(domain,),
        )
        .await
        .with_context(|| format!("OpenGui({domain}) on domaind"))?;
    let fd: zbus::zvariant::OwnedFd = reply.body().deserialize()?;
    Ok(fd.into())
}

fn parse<T: std::str::FromStr>(w: Option<&str>, what: &str) -> Result<T> {
    let s = w.with_context(|| format!("missing {what}"))?;
    s.parse().map_err(|_| anyhow::anyhow!("bad {what}: {s:?}"))
}

fn secs(w: Option<&str>) -> Result<Duration> {
    Ok(Duration::from_secs_f64(match w {
        Some(s) => s.parse().with_context(|| format!("bad seconds {s:?}"))?,
        None => 10.0,
    }))
}

async fn command(r: &Receiver, domain: &str, line: &str) -> Result<Option<serde_json::Value>> {
    let mut w = line.split_whitespace();
    let Some(cmd) = w.next() else {
        return Ok(None);
    };
    let ok = json!({"ok": true});
    let v = match cmd {
        "status" => serde_json::to_value(r.status(domain))?,
        "list" => serde_json::to_value(r.windows(domain))?,
        "wait-window" => {
            let text = w.next().unwrap_or("");
            serde_json::to_value(r.wait_window(domain, text, secs(w.next())?).await?)?
        }
        "wait-gone" => {
            let id: u32 = parse(w.next(), "window id")?;
            r.wait_for(secs(w.next())?, |r| {
                (!r.windows(domain).iter().any(|x| x.id == id)).then_some(())
            })
            .await?;
            ok
        }
        "pixels" => {
            let id = parse(w.next(), "window id")?;
            let file: PathBuf = parse(w.next(), "file")?;
            let p = r.pixels(domain, id)?;
            std::fs::write(&file, &p.data)
                .with_context(|| format!("writing {}", file.display()))?;
            json!({"width": p.width, "height": p.height})
        }
        "key" => {
            r.key(
                domain,
                parse(w.next(), "window id")?,
                parse(w.next(), "keycode")?,
                parse::<u8>(w.next(), "0|1")? == 1,
            )?;
            ok
        }
        "tap" => {
            let id = parse(w.next(), "window id")?;
            let codes = w
                .map(|s| parse(Some(s), "keycode"))
                .collect::<Result<Vec<u32>>>()?;
            r.tap_keys(domain, id, &codes)?;
            ok
        }
        "motion" => {
            r.motion(
                domain,
                parse(w.next(), "window id")?,
                parse(w.next(), "x")?,
                parse(w.next(), "y")?,
            )?;
            ok
        }
        "enter" => {
            let id = parse(w.next(), "window id")?;
            r.pointer_over(
                domain,
                id,
                Some((parse(w.next(), "x")?, parse(w.next(), "y")?)),
            )?;
            ok
        }
        "leave" => {
            r.pointer_over(domain, parse(w.next(), "window id")?, None)?;
            ok
        }
        "button" => {
            r.button(
                domain,
                parse(w.next(), "window id")?,
                parse(w.next(), "button")?,
                parse::<u8>(w.next(), "0|1")? == 1,
            )?;
            ok
        }
        "scroll" => {
            let id = parse(w.next(), "window id")?;
            let axis = match w.next() {
                Some("v") => Axis::Vertical,
                Some("h") => Axis::Horizontal,
                other => bail!("axis must be v or h, not {other:?}"),
            };
            r.scroll(
                domain,
                id,
                axis,
                parse(w.next(), "value")?,
                parse(w.next(), "v120")?,
            )?;
            ok
        }
        "focus" => {
            let id = parse(w.next(), "window id")?;
            r.focus(domain, id, w.next() == Some("in"))?;
            ok
        }
        "configure" => {
            r.configure(
                domain,
                parse(w.next(), "window id")?,
                parse(w.next(), "width")?,
                parse(w.next(), "height")?,
            )?;
            ok
        }
        "close" => {
            r.close(domain, parse(w.next(), "window id")?)?;
            ok
        }
        "copy" => {
            let data = r.copy(domain, secs(w.next())?).await?;
            json!({"data": String::from_utf8_lossy(&data)})
        }
        "paste" => {
            let text = line
                .trim_start()
                .strip_prefix("paste")
                .unwrap_or("")
                .trim_start();
            r.paste(domain, bytes::Bytes::copy_from_slice(text.as_bytes()))?;
            ok
        }
        "quit" => {
            // What was sent before (a close, a key) reaches the agent before we exit.
            r.flush(domain, std::time::Duration::from_secs(5)).await?;
            return Ok(Some(json!({"bye": true})));
        }
        other => bail!("unknown command {other:?}"),
    };
    Ok(Some(v))
}

#[tokio::main]
async fn main() -> Result<()> {
    bulkhead_logging::init("info");
    let args = Args::parse();
    let (sw, sh) = args
        .screen
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .with_context(|| format!("--screen must be WxH, not {:?}", args.screen))?;
    let rules = Rules {
        screen_width: sw,
        screen_height: sh,
        title_mode: if args.utf8_titles {
            TitleMode::Utf8
        } else {
            TitleMode::Ascii
        },
        ..Rules::default()
    };
    let keymap = match &args.keymap {
        Some(p) => {
            Some(bytes::Bytes::from(std::fs::read(p).with_context(|| {
                format!("reading keymap {}", p.display())
            })?))
        }
        None => None,
    };
    let receiver = Receiver::new();
    let domain = match (&args.domain, &args.socket) {
        (Some(d), _) => {
            let fd = open_gui(d, args.bus_address.as_deref()).await?;
            receiver.add_connection(d, GuiConnection::from_fd(fd, keymap)?, rules);
            d.clone()
        }
        (None, Some(path)) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .with_context(|| format!("connecting to {}", path.display()))?;
            receiver.add_peer("socket", s, rules, keymap);
            "socket".to_owned()
        }
        (None, None) => bail!("give --domain NAME or --socket PATH"),
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = std::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let v = match command(&receiver, &domain, &line).await {
            Ok(None) => continue,
            Ok(Some(v)) => v,
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        writeln!(out, "{v}")?;
        out.flush()?;
        if v.get("bye").is_some() {
            break;
        }
    }
    Ok(())
}
