//! `bulkhead-open-in-vm VM FILE`: opens FILE in domain VM with its default application; an
//! edited copy comes back over the original when the application exits.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-open-in-vm",
    version,
    about = "Open a file in another domain; edits come back when the application exits"
)]
struct Args {
    /// Target domain (a name, or a policy token such as @dispvm).
    vm: String,
    /// The file to open.
    file: PathBuf,
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let args = Args::parse();
    bulkhead_services::client::open_command("bulkhead-open-in-vm", &args.vm, &args.file)
}
