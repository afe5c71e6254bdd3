//! `bulkhead-copy-to-vm`: Copies files and directories to another domain's ~/Incoming/<this domain>/.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-copy-to-vm",
    version,
    about = "Copies files and directories to another domain's ~/Incoming/<this domain>/."
)]
struct Args {
    /// Target domain (a name, or a policy token such as @default or @dispvm).
    vm: String,
    /// Files and directories to send.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let args = Args::parse();
    bulkhead_services::client::copy_command("bulkhead-copy-to-vm", &args.vm, &args.files, false)
}
