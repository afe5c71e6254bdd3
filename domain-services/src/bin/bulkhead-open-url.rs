//! `bulkhead-open-url [VM] URL`: opens an http(s) URL in domain VM (default: a new
//! disposable, @dispvm) with its default browser.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bulkhead-open-url",
    version,
    about = "Open an http or https URL in another domain (default: a new disposable)"
)]
struct Args {
    /// Target domain, then the URL; with one argument it is the URL and the target is @dispvm.
    #[arg(num_args = 1..=2, required = true, value_names = ["VM", "URL"])]
    args: Vec<String>,
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let args = Args::parse();
    let (vm, url) = match args.args.as_slice() {
        [url] => ("@dispvm", url.as_str()),
        [vm, url] => (vm.as_str(), url.as_str()),
        _ => unreachable!("clap enforces 1..=2 arguments"),
    };
    bulkhead_services::client::open_url_command("bulkhead-open-url", vm, url)
}
