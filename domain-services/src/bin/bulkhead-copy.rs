//! `bulkhead-copy`: Copies files and directories to another domain (chosen through the policy's ask dialog) into its ~/Incoming/<this domain>/.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-copy",
    version,
    about = "Copies files and directories to another domain (chosen through the policy's ask dialog) into its ~/Incoming/<this domain>/."
)]
struct Args {
    /// Files and directories to send.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let args = Args::parse();
    bulkhead_services::client::copy_command("bulkhead-copy", "@default", &args.files, false)
}
