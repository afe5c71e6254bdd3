//! `bulkhead.UpdatesProxy` in the net domain: one proxied request per call (see
//! bulkhead_updates_proxy::proxy). The call's stdin/stdout are the template's connection.

use std::path::PathBuf;

use bulkhead_updates_proxy::allow::AllowList;
use bulkhead_updates_proxy::proxy::{self, Outcome};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Bulkhead update proxy service (run by the agent for bulkhead.UpdatesProxy)")]
struct Args {
    /// The archives this proxy reaches.
    #[arg(long, env = "BULKHEAD_UPDATES_ALLOW", default_value = bulkhead_updates_proxy::ALLOW_FILE)]
    allow: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    bulkhead_logging::Setup::new("info").targets(false).init();
    // The service's argv[1] is the call's argument, which this service ignores.
    let args = Args::parse_from(std::env::args().take(1));
    let caller = std::env::var("BULKHEAD_REMOTE_DOMAIN").unwrap_or_default();
    let allow = match AllowList::load(&args.allow) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "no archive list: every request is refused");
            AllowList::default()
        }
    };
    match proxy::serve(tokio::io::stdin(), tokio::io::stdout(), &allow).await {
        Outcome::Relayed { host, port, bytes } => {
            tracing::info!(caller, host, port, bytes, "update request relayed")
        }
        Outcome::Refused { status, reason } => {
            tracing::warn!(caller, status, reason, "update request refused")
        }
    }
    // Not a return: the runtime would wait for the thread still blocked reading stdin.
    std::process::exit(0)
}
