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
    /// How to reach domaind: `unix` (the socket above, sandbox domains), `vsock` (CID 2 port
    /// 1024, VM domains) or `auto` (vsock when the kernel command line has
    /// `bulkhead.channel=vsock`, else unix).
    #[arg(long, env = "BULKHEAD_CHANNEL", default_value = "auto", value_parser = ["auto", "unix", "vsock"])]
    channel: String,
    /// Unix socket for bulkhead-call (default /run/bulkhead/call.sock, or $BULKHEAD_CALL_SOCKET).
    #[arg(long)]
    call_socket: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bulkhead_logging::init("info");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating the async runtime")?;
    let target = bulkhead_agent::agent::shutdown_target_from_env();
    let vsock = match args.channel.as_str() {
        "vsock" => true,
        "unix" => false,
        _ => bulkhead_agent::in_vm(),
    };
    let channel = if vsock {
        bulkhead_agent::agent::Channel::Vsock {
            cid: bulkhead_agent::HOST_CID,
            port: bulkhead_agent::AGENT_VSOCK_PORT,
        }
    } else {
        bulkhead_agent::agent::Channel::Unix(args.socket)
    };
    tracing::info!(%channel, ?target, "bulkhead-agent starting");
    let (current, upstream) = tokio::sync::watch::channel(None);
    rt.block_on(async {
        // Calls from programs in the domain; without the socket the agent still serves domaind.
        let call_socket = args
            .call_socket
            .unwrap_or_else(bulkhead_agent::call::call_socket_path);
        match bulkhead_agent::call::bind(&call_socket) {
            Ok(l) => {
                tracing::info!(socket = %call_socket.display(), "serving local calls");
                tokio::spawn(bulkhead_agent::call::serve(l, upstream));
            }
            Err(e) => {
                tracing::error!(error = %e, "no local call socket; bulkhead-call will not work")
            }
        }
        bulkhead_agent::agent::run_channel_forever(
            &channel,
            bulkhead_wire::Limits::default(),
            target,
            current,
        )
        .await
    })
}
