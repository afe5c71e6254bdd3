//! Service `bulkhead.Filecopy`: receives a copy stream on stdin into
//! `~/Incoming/<source>/` (source = `BULKHEAD_REMOTE_DOMAIN`, set by domaind) and answers
//! on stdout (see `bulkhead_services::filecopy`). Ignores its arguments.
#![forbid(unsafe_code)]

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use bulkhead_services::{config, filecopy, names};

fn answer(line: &str) {
    let mut out = std::io::stdout().lock();
    // nothing more to do if the caller is gone
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

fn setup() -> anyhow::Result<(std::os::fd::OwnedFd, filecopy::Limits, String)> {
    let source = std::env::var("BULKHEAD_REMOTE_DOMAIN")
        .context("BULKHEAD_REMOTE_DOMAIN is not set (this program runs as a service, started by the domain agent)")?;
    names::check_source_domain(&source).map_err(|e| {
        anyhow!(
            "refusing source domain name {}: {e}",
            names::Shown(source.as_bytes())
        )
    })?;
    let limits = config::load_limits(&config::limits_path())?;
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let dest = filecopy::open_incoming(&home, &source)?;
    Ok((dest, limits, source))
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    let (dest, limits, source) = match setup() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("{e:#}");
            answer(&filecopy::error_answer(&format!("{e:#}")));
            return ExitCode::from(1);
        }
    };
    let input = BufReader::with_capacity(128 * 1024, std::io::stdin().lock());
    match filecopy::receive(input, std::os::fd::AsFd::as_fd(&dest), limits) {
        Ok(got) => {
            tracing::info!("received from {source}: {got:?}");
            answer(&got.answer_line());
            ExitCode::SUCCESS
        }
        Err(f) => {
            tracing::warn!("copy from {source} refused: {}", f.error);
            answer(&f.kept.error_line(&f.error));
            ExitCode::from(1)
        }
    }
}
