//! Service `bulkhead.OpenInVM`: receives one file (see `bulkhead_services::open`), opens it
//! with this domain's default application for its type, waits for the application to exit
//! and sends an edited, non-empty copy back. Ignores its arguments.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_services::open::{self, OpenError};
use bulkhead_services::xdg::XdgDirs;

fn tmp_base() -> PathBuf {
    // XDG_RUNTIME_DIR is private to the user when set; else TMPDIR or /tmp (the temporary
    // directory itself is 0700 either way).
    // (only when we may create in it: a runtime dir shared with a GUI agent may not be ours)
    let usable = |p: &PathBuf| {
        rustix::fs::access(
            p,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .is_ok()
            && p.is_dir()
    };
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(usable)
        .unwrap_or_else(std::env::temp_dir)
}

fn run() -> Result<(), OpenError> {
    let source = std::env::var("BULKHEAD_REMOTE_DOMAIN").unwrap_or_default();
    let inc = open::receive_request(std::io::stdin().lock(), &tmp_base())?;
    tracing::info!("{} from {source}", inc.name);
    let argv = open::application_for(&XdgDirs::from_env(), &inc)?;
    open::run_application(&argv, inc.dir.path())?;
    open::answer(&inc, std::io::stdout().lock())
}

fn main() -> ExitCode {
    bulkhead_services::init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!("{e}");
            // the client prints it; nothing more to do if the client is gone
            let _ = open::answer_error(std::io::stdout().lock(), &e);
            ExitCode::from(1)
        }
    }
}
