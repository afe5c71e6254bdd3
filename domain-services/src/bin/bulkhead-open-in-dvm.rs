//! `bulkhead-open-in-dvm FILE`: opens FILE in a new disposable (target @dispvm); an edited
//! copy comes back over the original when the application exits, then the disposable goes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-open-in-dvm",
    version,
    about = "Open a file in a new disposable; edits come back when the application exits"
)]
struct Args {
    /// The file to open.
    file: PathBuf,
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let args = Args::parse();
    bulkhead_services::client::open_command("bulkhead-open-in-dvm", "@dispvm", &args.file)
}
