//! Running `bulkhead-call TARGET SERVICE[+ARG]` with pipes, and what its exit status means.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

/// Environment variable naming the `bulkhead-call` program to use (tests, unusual installs).
pub const ENV_CALL: &str = "BULKHEAD_CALL";
/// Where the guest tools are mounted inside a domain.
pub const GUEST_TOOLS_DIR: &str = "/usr/lib/bulkhead";
/// Exit status of `bulkhead-call` when policy refused the call.
pub const EXIT_REFUSED: i32 = 126;
/// Exit status of `bulkhead-call` on any other failure of the call itself.
pub const EXIT_CALL_FAILED: i32 = 125;

/// Errors of the client tools.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot find bulkhead-call (looked at ${ENV_CALL}, next to this program and in {GUEST_TOOLS_DIR})")]
    NoCallProgram,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the call to {target} was refused by policy")]
    Refused { target: String },
    #[error("the call to {target} failed (bulkhead-call exit status 125; see its message above)")]
    CallFailed { target: String },
    #[error(transparent)]
    Copy(#[from] crate::filecopy::FilecopyError),
    #[error(transparent)]
    Open(#[from] crate::open::OpenError),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// Exit status for the command: 126 refused, 125 call failure, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused { .. } => EXIT_REFUSED,
            ClientError::CallFailed { .. } | ClientError::NoCallProgram => EXIT_CALL_FAILED,
            ClientError::Spawn { .. } => EXIT_CALL_FAILED,
            _ => 1,
        }
    }
}

/// `$BULKHEAD_CALL`, else `bulkhead-call` next to the running program, else in the guest tools dir.
pub fn locate_call() -> Result<PathBuf, ClientError> {
    if let Some(p) = std::env::var_os(ENV_CALL) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("bulkhead-call");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    let installed = PathBuf::from(GUEST_TOOLS_DIR).join("bulkhead-call");
    if installed.is_file() {
        return Ok(installed);
    }
    Err(ClientError::NoCallProgram)
}

/// Starts `bulkhead-call TARGET SERVICE` with stdin and stdout piped (stderr inherited, so
/// the service's and the call's messages reach the user).
pub fn spawn_call(target: &str, service: &str) -> Result<Child, ClientError> {
    let program = locate_call()?;
    tracing::debug!("running {} {target} {service}", program.display());
    Command::new(&program)
        .arg(target)
        .arg(service)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| ClientError::Spawn {
            program: program.display().to_string(),
            source,
        })
}

/// Maps a refused or failed call to its error; `None` for any other status (the service's).
pub fn call_failure(target: &str, status: ExitStatus) -> Option<ClientError> {
    match status.code() {
        Some(EXIT_REFUSED) => Some(ClientError::Refused {
            target: target.to_string(),
        }),
        Some(EXIT_CALL_FAILED) => Some(ClientError::CallFailed {
            target: target.to_string(),
        }),
        _ => None,
    }
}
