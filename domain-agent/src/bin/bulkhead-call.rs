//! bulkhead-call: make a service call from inside a domain (like Qubes' qrexec-client-vm).
//!
//! `bulkhead-call TARGET SERVICE[+ARG]`: the call goes through the local agent to domaind,
//! which asks the policy. Our stdin/stdout are the service's stdin/stdout, its stderr goes
//! to our stderr; we exit with the service's status, 126 when the policy refused the call,
//! 125 on any other failure (with a message on stderr).

use std::path::PathBuf;

use bulkhead_wire::{exec, CallRequest, Connection, Limits, WireError};
use clap::Parser;

/// Exit code when the policy refused the call.
const REFUSED: i32 = 126;
/// Exit code for any other failure.
const FAILED: i32 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "bulkhead-call",
    about = "Call a service in another domain (through domaind's policy)",
    after_help = "Exit status: the service's own, 126 when the policy refused the call, 125 on any other failure."
)]
struct Args {
    /// Target domain, or a policy token: @default, @dispvm, @dispvm:TEMPLATE.
    target: String,
    /// SERVICE or SERVICE+ARGUMENT.
    service: String,
    /// The agent's call socket.
    #[arg(long, env = bulkhead_agent::call::ENV_CALL_SOCKET, default_value = bulkhead_agent::call::DEFAULT_CALL_SOCKET)]
    socket: PathBuf,
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("bulkhead-call: {msg}");
    std::process::exit(code);
}

async fn call(args: Args) -> i32 {
    let req = match CallRequest::parse(&args.target, &args.service) {
        Ok(r) => r,
        Err(e) => fail(
            FAILED,
            &format!("invalid call {} {}: {e}", args.target, args.service),
        ),
    };
    let io = match tokio::net::UnixStream::connect(&args.socket).await {
        Ok(io) => io,
        Err(e) => fail(
            FAILED,
            &format!(
                "cannot reach the domain agent at {}: {e}",
                args.socket.display()
            ),
        ),
    };
    let conn = match Connection::client(io, Limits::default()).await {
        Ok((c, _incoming)) => c,
        Err(e) => fail(FAILED, &format!("talking to the domain agent: {e}")),
    };
    let res = exec::call(
        &conn,
        req,
        tokio::io::stdin(),
        tokio::io::stdout(),
        tokio::io::stderr(),
    )
    .await;
    // Let our Fin reach the agent before we exit (bounded: the agent may be gone).
    conn.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed()).await;
    match res {
        Ok(status) => status.as_shell_code(),
        Err(WireError::CallRefused { reason }) => fail(REFUSED, &format!("refused: {reason}")),
        Err(e) => fail(FAILED, &e.to_string()),
    }
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(FAILED, &format!("cannot start: {e}")),
    };
    let code = rt.block_on(call(args));
    // Exit at once: a blocking read of our stdin may still be pending in tokio's pool.
    std::process::exit(code);
}
