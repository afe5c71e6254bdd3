//! Guest side of a Bulkhead domain.
//!
//! * [`init`]: the logic of `bulkhead-init`, pid 1 inside a domain: reaps every child,
//!   keeps `bulkhead-agent` running (restart with backoff) and performs shutdown.
//! * [`agent`]: the logic of `bulkhead-agent`: keeps a wire connection to domaind (reconnecting
//!   forever) and serves exec requests and controls.
//! * [`account`] and [`spawn`]: user lookup and process creation for exec requests.
//! * [`service`]: running the service executable of a service call routed to this domain.
//! * [`call`]: the local call socket that `bulkhead-call` uses to make calls.
//! * [`gui`]: the gui-agent (started by init) and the relay of GUI streams to its socket.

pub mod account;
pub mod agent;
pub mod call;
pub mod console;
pub mod gui;
pub mod incoming;
pub mod init;
pub mod service;
pub mod spawn;
pub mod updates;
pub mod usb;
pub mod vmnet;

/// Environment variable through which init tells the agent which pid to signal for shutdown.
pub const ENV_INIT_PID: &str = "BULKHEAD_INIT_PID";
/// Set by init for the agent when it starts a gui-agent: commands wait for its Wayland
/// socket ([`gui::wait_for_display`]).
pub const ENV_GUI_EXPECTED: &str = "BULKHEAD_GUI_EXPECTED";

/// Environment variable overriding the gui-agent's socket path the agent relays GUI
/// streams to (tests; default [`gui::GUI_SOCKET`]).
pub const ENV_GUI_SOCKET: &str = "BULKHEAD_GUI_SOCKET";

/// Environment variable overriding the channel socket path (tests).
pub const ENV_AGENT_SOCKET: &str = "BULKHEAD_AGENT_SOCKET";

/// Where the agent finds domaind's socket inside a domain.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/bulkhead-channel/agent.sock";

/// vsock port domaind's side of the channel listens on (the VMM bridges the guest's
/// connection to CID 2 on this port to the host socket `channel/vsock.sock_1024`). Same value
/// as `bulkhead_wire::AGENT_VSOCK_PORT` (contract A).
pub const AGENT_VSOCK_PORT: u32 = bulkhead_wire::AGENT_VSOCK_PORT;

/// The host's vsock CID as the guest sees it.
pub const HOST_CID: u32 = 2;

/// Kernel command line parameter that selects the channel inside a VM.
pub const CMDLINE_CHANNEL: &str = "bulkhead.channel";

/// Whether a kernel command line asks for the vsock channel (`bulkhead.channel=vsock`).
pub fn cmdline_wants_vsock(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .any(|(k, v)| k == CMDLINE_CHANNEL && v == "vsock")
}

/// Whether this domain runs in a VM: the kernel command line says `bulkhead.channel=vsock`
/// (a sandbox shares the host kernel, whose command line never does).
pub fn in_vm() -> bool {
    std::fs::read("/proc/cmdline")
        .map(|b| cmdline_wants_vsock(&String::from_utf8_lossy(&b[..b.len().min(64 * 1024)])))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_from_the_kernel_command_line() {
        assert!(cmdline_wants_vsock(
            "reboot=k panic=1 bulkhead.channel=vsock console=ttyS0"
        ));
        assert!(!cmdline_wants_vsock("reboot=k panic=1 console=ttyS0"));
        assert!(!cmdline_wants_vsock("bulkhead.channel=unix"));
        assert!(!cmdline_wants_vsock("xbulkhead.channel=vsock"));
        assert!(!cmdline_wants_vsock("bulkhead.channel=vsockx"));
    }
}
