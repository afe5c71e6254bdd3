//! Service `bulkhead.OpenURL`: reads one URL line on stdin, accepts http and https only,
//! opens it with this domain's default handler for the scheme
//! (`x-scheme-handler/http[s]`) and waits for it to exit. Ignores its arguments.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_services::url::{check_url, MAX_URL_BYTES};
use bulkhead_services::{open, xdg};

fn run() -> anyhow::Result<()> {
    let mut raw = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_URL_BYTES as u64 + 2)
        .read_to_end(&mut raw)
        .context("reading the URL")?;
    if raw.len() > MAX_URL_BYTES + 1 {
        bail!("URL longer than {MAX_URL_BYTES} bytes refused");
    }
    if raw.last() == Some(&b'\n') {
        raw.pop();
    }
    let text = std::str::from_utf8(&raw).context("URL is not UTF-8")?;
    let url = check_url(text)?;
    let scheme = url.split(':').next().unwrap_or("https");
    let mime = format!("x-scheme-handler/{scheme}");
    let app = xdg::default_application(&xdg::XdgDirs::from_env(), &mime)?;
    tracing::info!("opening {url} with {}", app.id);
    let argv = xdg::expand_exec(&app, &url)?;
    let cwd = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/".into());
    open::run_application(&argv, &cwd)?;
    Ok(())
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead.OpenURL: {e:#}");
            ExitCode::from(1)
        }
    }
}
