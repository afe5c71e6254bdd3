//! bulkhead-gui-agent: the headless Wayland compositor of a domain.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Headless Wayland compositor forwarding a domain's windows to dom0"
)]
struct Args {
    /// XDG_RUNTIME_DIR for clients; the Wayland socket is created here.
    #[arg(
        long,
        env = "BULKHEAD_GUI_RUNTIME_DIR",
        default_value = "/run/bulkhead-gui"
    )]
    runtime_dir: PathBuf,
    /// Name of the Wayland socket inside the runtime dir.
    #[arg(long, default_value = "wayland-0")]
    socket_name: String,
    /// The socket dom0's side connects to (default: <runtime-dir>/gui.sock).
    #[arg(long)]
    gui_socket: Option<PathBuf>,
    /// Output size until dom0 sets its own.
    #[arg(long, default_value_t = 1920)]
    width: u32,
    #[arg(long, default_value_t = 1080)]
    height: u32,
    /// Minimum milliseconds between two frame callbacks of one window (0: paced by dom0 only).
    #[arg(long, default_value_t = 16)]
    frame_interval_ms: u64,
}

fn main() -> anyhow::Result<()> {
    // bulkhead-init passes its BULKHEAD_LOG on to the gui-agent it starts
    bulkhead_logging::init("info");
    let args = Args::parse();
    let paths = bulkhead_gui_agent::Paths {
        gui_socket: args
            .gui_socket
            .unwrap_or_else(|| args.runtime_dir.join("gui.sock")),
        runtime_dir: args.runtime_dir,
        socket_name: args.socket_name,
    };
    let opts = bulkhead_gui_agent::Options {
        output_width: args.width.clamp(1, 16384),
        output_height: args.height.clamp(1, 16384),
        frame_interval: Duration::from_millis(args.frame_interval_ms),
    };
    bulkhead_gui_agent::run(&paths, opts)?;
    Ok(())
}
