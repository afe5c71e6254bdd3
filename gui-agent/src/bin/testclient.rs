//! bulkhead-gui-testclient: maps a window and draws bulkhead_gui_agent::testclient::pattern
//! frames, one per frame callback, following the sizes the compositor configures.

use std::path::PathBuf;

use anyhow::Context;
use bulkhead_gui_agent::testclient::{ClientError, DamageKind, TestClient};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Wayland test client drawing a known pattern")]
struct Args {
    /// Compositor socket (default: $XDG_RUNTIME_DIR/$WAYLAND_DISPLAY).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long, default_value = "bulkhead test client")]
    title: String,
    #[arg(long, default_value_t = 320)]
    width: u32,
    #[arg(long, default_value_t = 240)]
    height: u32,
    /// Pixels of "shadow" around the window, outside the xdg window geometry it sets.
    #[arg(long, default_value_t = 0)]
    shadow: u32,
    /// Frames to draw before exiting (0: until closed).
    #[arg(long, default_value_t = 0)]
    frames: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = match args.socket {
        Some(s) => s,
        None => {
            let display = std::env::var("WAYLAND_DISPLAY").unwrap_or_else(|_| "wayland-0".into());
            let p = PathBuf::from(&display);
            if p.is_absolute() {
                p
            } else {
                PathBuf::from(std::env::var("XDG_RUNTIME_DIR").context("XDG_RUNTIME_DIR unset")?)
                    .join(display)
            }
        }
    };
    let mut c = TestClient::connect_with_shadow(
        &socket,
        &args.title,
        args.width,
        args.height,
        args.shadow,
    )?;
    let mut n = 0u32;
    loop {
        let res = c
            .draw(n, DamageKind::Full, true)
            .and_then(|_| c.wait_frame());
        match res {
            Ok(()) => {}
            Err(ClientError::Closed) => {
                eprintln!("closed by the compositor");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        n += 1;
        if args.frames != 0 && n >= args.frames {
            return Ok(());
        }
    }
}
