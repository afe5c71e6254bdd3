//! bulkhead-init: pid 1 inside a Bulkhead domain.

use std::path::{Path, PathBuf};
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
    /// gui-agent binary, started as the default user when it exists (default: when pid 1,
    /// bulkhead-gui-agent next to this executable, i.e. /usr/lib/bulkhead in a domain).
    #[arg(long, env = "BULKHEAD_GUI_AGENT")]
    gui_agent: Option<PathBuf>,
    /// Keep the update proxy forwarder (bulkhead-updates-forwarder next to this executable)
    /// running: apt's proxy in a template domain (domaind passes it to templates).
    #[arg(long)]
    updates_forwarder: bool,
}

/// Configure the VM's network if the kernel command line has one; failures are logged (the
/// domain still runs, without network).
fn setup_vm_network() {
    use bulkhead_agent::vmnet;
    let cmdline = match std::fs::read("/proc/cmdline") {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(64 * 1024)]).into_owned(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read /proc/cmdline; no network");
            return;
        }
    };
    match vmnet::parse_netvm_cmdline(&cmdline) {
        Ok(None) => {}
        Ok(Some(n)) => {
            match vmnet::configure_netvm(&n) {
                Ok((up, down)) => {
                    tracing::info!(uplink = %up, clients = %down, "net VM: network configured, forwarding and masquerading")
                }
                Err(e) => tracing::error!(error = %e, "cannot configure the net VM's network"),
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "bad net VM network parameters; no network");
            return;
        }
    }
    match vmnet::parse_cmdline(&cmdline) {
        Ok(None) => tracing::info!("no netvm: no network"),
        Ok(Some(n)) => match vmnet::configure(&n) {
            Ok(ifname) => {
                tracing::info!(interface = %ifname, ip = %n.ip, gateway = %n.gateway, dns = ?n.dns, "network configured")
            }
            Err(e) => tracing::error!(error = %e, "cannot configure the network"),
        },
        Err(e) => tracing::error!(error = %e, "bad network parameters; no network"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    bulkhead_logging::init("info");
    // current_exe needs /proc; fall back to argv[0] when it is not mounted.
    let me = std::env::current_exe()
        .or_else(|e| std::env::args_os().next().map(PathBuf::from).ok_or(e))
        .context("finding our own executable")?;
    let agent = args
        .agent
        .unwrap_or_else(|| me.with_file_name("bulkhead-agent"));
    // Only a domain's init (pid 1) looks for the gui-agent by itself: init run by hand or in
    // tests must not start one on the host.
    let gui_agent = args
        .gui_agent
        .or_else(|| (std::process::id() == 1).then(|| me.with_file_name("bulkhead-gui-agent")));
    // A VM domain's init keeps a root shell on the serial console (`bulkhead console`).
    let in_vm = bulkhead_agent::in_vm();
    let console = (in_vm && std::process::id() == 1)
        .then(|| PathBuf::from(bulkhead_agent::console::SERIAL_CONSOLE));
    // A VM domain with a netvm: its address, routes and resolv.conf from the command line.
    if in_vm && std::process::id() == 1 {
        if let Err(e) = bulkhead_agent::console::relay_output_to_console() {
            tracing::warn!(error = %e, "no relay to the console: a stalled console can stall the agent");
        }
        setup_vm_network();
        // ~/Incoming noexec,nosuid,nodev, as a sandbox has it.
        match bulkhead_agent::incoming::mount_incoming(Path::new("/home")) {
            Ok(true) => tracing::info!("~/Incoming mounted noexec,nosuid,nodev"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "~/Incoming left as it is"),
        }
    }
    let code = bulkhead_agent::init::run(bulkhead_agent::init::InitConfig {
        agent,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        gui_agent,
        console,
        updates_forwarder: args
            .updates_forwarder
            .then(|| me.with_file_name("bulkhead-updates-forwarder")),
    })?;
    // In a VM the init is the kernel's pid 1: it ends the VM instead of exiting.
    if in_vm && std::process::id() == 1 {
        let e = bulkhead_agent::init::end_vm();
        return Err(e).context("ending the VM");
    }
    std::process::exit(code);
}
