//! `bulkhead-manager`: the domain manager window.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;

use dom0_manager::{ManagerInit, ManagerWindow, PolicyEditor, PolicyInit};

/// The Bulkhead domain manager.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// D-Bus address of the bus domaind serves on (default: $BULKHEAD_BUS_ADDRESS, else the
    /// system bus).
    #[arg(long)]
    bus_address: Option<String>,
    /// Open the policy editor instead of the domain list.
    #[arg(long)]
    policy: bool,
}

fn main() -> anyhow::Result<()> {
    bulkhead_logging::init("error");
    let args = Args::parse();
    // zbus runs its socket tasks on this runtime; it lives as long as the window.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let conn = rt
        .block_on(bulkhead_api::connect(args.bus_address.as_deref()))
        .context("cannot connect to the bus domaind serves on")?;
    if args.policy {
        relm4::RelmApp::new("org.bulkhead.PolicyEditor")
            .with_args(Vec::new())
            .run::<PolicyEditor>(PolicyInit { conn });
    } else {
        relm4::RelmApp::new("org.bulkhead.Manager")
            .with_args(Vec::new())
            .run::<ManagerWindow>(ManagerInit { conn });
    }
    drop(rt);
    Ok(())
}
