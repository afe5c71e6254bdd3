//! "Open in disposable" for dom0 files: D-Bus `Call("@dispvm", "bulkhead.OpenInVM")` from
//! dom0 (policy source `@adminvm`) with the open-in-vm protocol of bulkhead-services on its
//! stdin/stdout; an edited copy comes back over the original (atomically, by that crate).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use bulkhead_api::{Domaind1Proxy, Error as ApiError};
use bulkhead_services::open::{self, Opened};
use zbus::zvariant::Fd;

/// The service.
pub const SERVICE: &str = "bulkhead.OpenInVM";
/// The target: a new disposable from dom0's default disposable template.
pub const TARGET: &str = "@dispvm";

/// Why opening failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenDvmError {
    /// The policy refused (add e.g. `bulkhead.OpenInVM * @adminvm @dispvm allow`).
    #[error("the policy does not let dom0 open files in a disposable: {0}")]
    Refused(String),
    /// domaind or the disposable failed.
    #[error("domaind: {0}")]
    Domaind(String),
    /// The file, or the exchange with the service.
    #[error(transparent)]
    Open(#[from] open::OpenError),
    /// The service exited with an error.
    #[error("the service in the disposable exited with {code}: {stderr}")]
    Service {
        /// Exit code.
        code: i32,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// Pipes.
    #[error("creating pipes: {0}")]
    Pipe(#[from] nix::Error),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), nix::Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Opens `file` in a new disposable and waits until its application exits.
pub async fn open_in_dvm(proxy: &Domaind1Proxy<'_>, file: &Path) -> Result<Opened, OpenDvmError> {
    // Check the file before starting a disposable for it.
    let meta = std::fs::metadata(file).map_err(|e| open::OpenError::Local {
        path: file.display().to_string(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(open::OpenError::NotAFile(file.display().to_string()).into());
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let path = file.to_owned();
    let client = std::thread::spawn(move || {
        open::client(&path, std::fs::File::from(in_w), std::fs::File::from(out_r))
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(err_r)
            .take(64 * 1024)
            .read_to_string(&mut s);
        s
    });
    let res = proxy
        .call(
            TARGET,
            SERVICE,
            Fd::from(&in_r),
            Fd::from(&out_w),
            Fd::from(&err_w),
        )
        .await;
    drop((in_r, out_w, err_w));
    let opened = client
        .join()
        .map_err(|_| OpenDvmError::Domaind("the open-in-vm client thread panicked".into()))?;
    let stderr = errors.join().unwrap_or_default();
    match res {
        Ok(0) => Ok(opened?),
        Ok(code) => Err(OpenDvmError::Service {
            code,
            stderr: stderr.trim().to_owned(),
        }),
        Err(ApiError::AccessDenied(m)) => Err(OpenDvmError::Refused(m)),
        Err(e) => Err(OpenDvmError::Domaind(e.message())),
    }
}
