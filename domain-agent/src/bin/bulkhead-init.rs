//! bulkhead-init: pid 1 inside a Bulkhead domain.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Bulkhead domain init: reaps children, keeps the agent running, shuts down")]
struct Args {
    /// Seconds between SIGTERM and SIGKILL at shutdown (a queued SIGTERM may carry its own).
    #[arg(long, env = "BULKHEAD_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    shutdown_timeout: u64,
    /// Agent binary (default: bulkhead-agent next to this executable).
    #[arg(long, env = "BULKHEAD_AGENT")]
    agent: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bulkhead_agent::init_logging("info");
    let agent = match args.agent {
        Some(a) => a,
        // current_exe needs /proc; fall back to argv[0] when it is not mounted.
        None => std::env::current_exe()
            .or_else(|e| std::env::args_os().next().map(PathBuf::from).ok_or(e))
            .context("finding our own executable")?
            .with_file_name("bulkhead-agent"),
    };
    let code = bulkhead_agent::init::run(bulkhead_agent::init::InitConfig {
        agent,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    })?;
    // In a VM the init is the kernel's pid 1: it ends the VM instead of exiting.
    if bulkhead_agent::in_vm() && std::process::id() == 1 {
        let e = bulkhead_agent::init::end_vm();
        return Err(e).context("ending the VM");
    }
    std::process::exit(code);
}
