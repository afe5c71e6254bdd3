//! What went wrong, said so a person can act on it, and an exit code a script can rely on.

use std::fmt;
use std::process::ExitCode;

/// Exit codes; `--help` lists them and scripts depend on them, so never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Failure = 1,
    NoSuchDomain = 3,
    InvalidState = 4,
    InvalidInput = 5,
    Unreachable = 6,
    AccessDenied = 7,
    AlreadyExists = 8,
    TemplateMissing = 9,
    /// A limit refused it (live disposables, the memory margin); ending something frees it.
    LimitReached = 10,
    /// `run`: the command could not be run at all (Qubes' convention).
    RunFailed = 125,
    /// `run`: the call was refused (Qubes' convention).
    RunRefused = 126,
}

const ADMINS: &str = "only root and members of the bulkhead-admin group may manage domains";

#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// For `run`: any failure before the command ran becomes 125, a refusal 126.
    pub fn for_run(self) -> Self {
        let code = match self.code {
            Code::AccessDenied => Code::RunRefused,
            _ => Code::RunFailed,
        };
        Failure { code, ..self }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        match &e {
            zbus::Error::MethodError(name, message, _) => {
                let message = message.clone().unwrap_or_else(|| name.to_string());
                match code_for_error_name(name.as_str()) {
                    // The bus itself refused (its policy), so domaind never saw the call.
                    Code::AccessDenied => Failure::new(
                        Code::AccessDenied,
                        format!("access denied by the bus: {message} ({ADMINS})"),
                    ),
                    code => Failure::new(code, message),
                }
            }
            zbus::Error::FDO(fdo) => from_fdo(fdo),
            zbus::Error::InputOutput(io) => Failure::new(
                Code::Unreachable,
                format!(
                    "cannot reach the bus: {io} (is dbus running? is BULKHEAD_BUS_ADDRESS right?)"
                ),
            ),
            zbus::Error::Address(a) => {
                Failure::new(Code::Unreachable, format!("bad bus address: {a}"))
            }
            _ => Failure::new(Code::Failure, e.to_string()),
        }
    }
}

impl From<bulkhead_api::Error> for Failure {
    fn from(e: bulkhead_api::Error) -> Self {
        use bulkhead_api::Error as E;
        let code = match &e {
            E::ZBus(inner) => return Failure::from(clone_zbus(inner)),
            E::NoSuchDomain(_) => Code::NoSuchDomain,
            E::AlreadyExists(_) => Code::AlreadyExists,
            E::InvalidName(_) | E::InvalidProperty(_) | E::InvalidArgument(_) => Code::InvalidInput,
            E::InvalidState(_) => Code::InvalidState,
            E::TemplateMissing(_) => Code::TemplateMissing,
            E::LimitReached(_) => Code::LimitReached,
            E::AccessDenied(_) => Code::AccessDenied,
            E::Backend(_) | E::Agent(_) | E::Io(_) => Code::Failure,
        };
        Failure::new(code, e.message())
    }
}

/// `zbus::Error` is not `Clone`; rebuild the variants we classify, keep the text of the rest.
fn clone_zbus(e: &zbus::Error) -> zbus::Error {
    match e {
        zbus::Error::MethodError(name, message, reply) => {
            zbus::Error::MethodError(name.clone(), message.clone(), reply.clone())
        }
        zbus::Error::FDO(fdo) => zbus::Error::FDO(fdo.clone()),
        other => zbus::Error::Failure(other.to_string()),
    }
}

impl From<zbus::fdo::Error> for Failure {
    fn from(e: zbus::fdo::Error) -> Self {
        from_fdo(&e)
    }
}

fn from_fdo(e: &zbus::fdo::Error) -> Failure {
    use zbus::fdo::Error as E;
    match e {
        E::ServiceUnknown(_) | E::NameHasNoOwner(_) | E::NoServer(_) => Failure::new(
            Code::Unreachable,
            "domaind is not running on this bus (start it: systemctl start bulkhead-domaind)",
        ),
        E::AccessDenied(m) => Failure::new(
            Code::AccessDenied,
            format!(
                "access denied: {m} (only root and the bulkhead-admin group may manage domains)"
            ),
        ),
        other => Failure::new(Code::Failure, other.to_string()),
    }
}

/// Maps domaind's `org.bulkhead.Error.*` names (and the bus's own) to exit codes.
pub fn code_for_error_name(name: &str) -> Code {
    match name.rsplit('.').next().unwrap_or(name) {
        "NoSuchDomain" => Code::NoSuchDomain,
        "InvalidState" => Code::InvalidState,
        "InvalidName" | "InvalidProperty" | "InvalidArgs" => Code::InvalidInput,
        "AlreadyExists" => Code::AlreadyExists,
        "TemplateMissing" => Code::TemplateMissing,
        "LimitReached" => Code::LimitReached,
        "AccessDenied" => Code::AccessDenied,
        "ServiceUnknown" | "NameHasNoOwner" | "NoServer" => Code::Unreachable,
        _ => Code::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_map_to_documented_codes() {
        assert_eq!(
            code_for_error_name("org.bulkhead.Error.NoSuchDomain"),
            Code::NoSuchDomain
        );
        assert_eq!(
            code_for_error_name("org.bulkhead.Error.InvalidName"),
            Code::InvalidInput
        );
        assert_eq!(
            code_for_error_name("org.bulkhead.Error.InvalidState"),
            Code::InvalidState
        );
        assert_eq!(
            code_for_error_name("org.freedesktop.DBus.Error.AccessDenied"),
            Code::AccessDenied
        );
        assert_eq!(
            code_for_error_name("org.freedesktop.DBus.Error.ServiceUnknown"),
            Code::Unreachable
        );
        assert_eq!(
            code_for_error_name("org.bulkhead.Error.Backend"),
            Code::Failure
        );
        assert_eq!(
            code_for_error_name("org.bulkhead.Error.LimitReached"),
            Code::LimitReached
        );
    }

    #[test]
    fn run_failures_use_qubes_codes() {
        let refused = Failure::new(Code::AccessDenied, "no").for_run();
        assert_eq!(refused.code as u8, 126);
        let failed = Failure::new(Code::NoSuchDomain, "no").for_run();
        assert_eq!(failed.code as u8, 125);
    }
}
