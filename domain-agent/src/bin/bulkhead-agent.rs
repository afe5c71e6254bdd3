//! bulkhead-agent: serves the domain channel inside a domain.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Bulkhead domain agent: runs commands for domaind over the domain channel")]
struct Args {
    /// Unix socket of the domain channel.
    #[arg(long, env = bulkhead_agent::ENV_AGENT_SOCKET, default_value = bulkhead_agent::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bulkhead_agent::init_logging("info");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating the async runtime")?;
    let target = bulkhead_agent::agent::shutdown_target_from_env();
    tracing::info!(socket = %args.socket.display(), ?target, "bulkhead-agent starting");
    rt.block_on(bulkhead_agent::agent::run_forever(
        &args.socket,
        bulkhead_wire::Limits::default(),
        target,
    ))
}
