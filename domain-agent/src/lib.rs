//! Guest side of a Bulkhead domain.
//!
//! * [`init`]: the logic of `bulkhead-init`, pid 1 inside a domain: reaps every child,
//!   keeps `bulkhead-agent` running (restart with backoff) and performs shutdown.
//! * [`agent`]: the logic of `bulkhead-agent`: keeps a wire connection to domaind (reconnecting
//!   forever) and serves exec requests and controls.
//! * [`account`] and [`spawn`]: user lookup and process creation for exec requests.

pub mod account;
pub mod agent;
pub mod init;
pub mod spawn;

/// Environment variable through which init tells the agent which pid to signal for shutdown.
pub const ENV_INIT_PID: &str = "BULKHEAD_INIT_PID";

/// Environment variable overriding the channel socket path (tests).
pub const ENV_AGENT_SOCKET: &str = "BULKHEAD_AGENT_SOCKET";

/// Where the agent finds domaind's socket inside a domain.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/bulkhead-channel/agent.sock";

/// Sets up logging to stderr (the launcher points it at the domain log file).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
