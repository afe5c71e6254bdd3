//! In a template: apt's proxy at 127.0.0.1:8082; each connection becomes a
//! `bulkhead.UpdatesProxy` call (see bulkhead_updates_proxy::forward). Started by
//! bulkhead-init in template domains.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Bulkhead update proxy forwarder (template side)")]
struct Args {
    /// Where apt connects.
    #[arg(long, default_value = bulkhead_updates_proxy::LISTEN)]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    bulkhead_logging::init("info");
    let args = Args::parse();
    let call = bulkhead_services::call::locate_call().context("finding bulkhead-call")?;
    let listener = bulkhead_updates_proxy::forward::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "update proxy forwarder: apt's requests go to the net domain");
    bulkhead_updates_proxy::forward::run(listener, &call)
        .await
        .context("accepting connections")
}
