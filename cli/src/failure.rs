//! What went wrong, said so a person can act on it, and an exit code a script can rely on.

use std::fmt;
use std::process::ExitCode;

use bulkhead_api::exit;
/// Exit codes: the one table, in bulkhead-api; `--help` lists them ([`exit_codes_help`]) and
/// scripts depend on them, so never renumber.
pub use bulkhead_api::exit::Code;

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

/// The exit codes for `--help`, from the table in bulkhead-api: the general ones, then `run`'s.
pub fn exit_codes_help() -> String {
    let (run, general): (Vec<_>, Vec<_>) = Code::TABLE
        .iter()
        .partition(|(code, _)| matches!(code, Code::RunFailed | Code::RunRefused));
    let list = |codes: Vec<&(Code, &str)>| {
        codes
            .into_iter()
            .map(|(code, meaning)| format!("{} {meaning}", *code as u8))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Exit codes: {}. `run` exits with the command's own status (128+N for signal N), {}.",
        list(general),
        list(run)
    )
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        let code = exit::code_for_zbus_error(&e);
        let message = match &e {
            zbus::Error::MethodError(name, message, _) => {
                let message = message.clone().unwrap_or_else(|| name.to_string());
                if code == Code::AccessDenied {
                    // The bus itself refused (its policy), so domaind never saw the call.
                    format!("access denied by the bus: {message} ({ADMINS})")
                } else {
                    message
                }
            }
            zbus::Error::FDO(fdo) => return from_fdo(fdo),
            zbus::Error::InputOutput(io) => format!(
                "cannot reach the bus: {io} (is dbus running? is BULKHEAD_BUS_ADDRESS right?)"
            ),
            zbus::Error::Address(a) => format!("bad bus address: {a}"),
            _ => e.to_string(),
        };
        Failure::new(code, message)
    }
}

impl From<bulkhead_api::Error> for Failure {
    fn from(e: bulkhead_api::Error) -> Self {
        match &e {
            bulkhead_api::Error::ZBus(inner) => Failure::from(clone_zbus(inner)),
            // The kind's code, from the table in bulkhead-api.
            _ => Failure::new(e.exit_code(), e.message()),
        }
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
    let message = match e {
        E::ServiceUnknown(_) | E::NameHasNoOwner(_) | E::NoServer(_) => {
            "domaind is not running on this bus (start it: systemctl start bulkhead-domaind)"
                .to_owned()
        }
        E::AccessDenied(m) => format!(
            "access denied: {m} (only root and the bulkhead-admin group may manage domains)"
        ),
        other => other.to_string(),
    };
    Failure::new(exit::code_for_fdo_error(e), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Error names to codes is tested next to the table, in bulkhead-api
    // (`exit::tests::error_names_map_to_documented_codes`).

    #[test]
    fn help_lists_the_exit_codes() {
        use clap::CommandFactory;
        let expected = "Exit codes: 0 ok, 1 failure, 2 usage, 3 no such domain, 4 wrong domain state, \
5 invalid name/property/value, 6 domaind unreachable, 7 access denied, 8 already exists, \
9 template missing, 10 a limit reached (live disposables, memory margin). `run` exits with the command's own status (128+N for signal N), \
125 when the command could not be run, 126 when it was refused.";
        assert_eq!(exit_codes_help(), expected);
        let cli = crate::cli::Cli::command();
        assert_eq!(
            cli.get_after_help().map(ToString::to_string).as_deref(),
            Some(expected)
        );
    }

    #[test]
    fn api_errors_exit_with_their_kinds_codes() {
        use bulkhead_api::Error as E;
        let code = |e: E| Failure::from(e).code as u8;
        assert_eq!(code(E::NoSuchDomain("x".into())), 3);
        assert_eq!(code(E::InvalidState("x".into())), 4);
        assert_eq!(code(E::InvalidName("x".into())), 5);
        assert_eq!(code(E::InvalidProperty("x".into())), 5);
        assert_eq!(code(E::InvalidArgument("x".into())), 5);
        assert_eq!(code(E::AccessDenied("x".into())), 7);
        assert_eq!(code(E::AlreadyExists("x".into())), 8);
        assert_eq!(code(E::TemplateMissing("x".into())), 9);
        assert_eq!(code(E::LimitReached("x".into())), 10);
        assert_eq!(code(E::Backend("x".into())), 1);
        assert_eq!(code(E::Agent("x".into())), 1);
        assert_eq!(code(E::Io("x".into())), 1);
    }

    #[test]
    fn run_failures_use_qubes_codes() {
        let refused = Failure::new(Code::AccessDenied, "no").for_run();
        assert_eq!(refused.code as u8, 126);
        let failed = Failure::new(Code::NoSuchDomain, "no").for_run();
        assert_eq!(failed.code as u8, 125);
    }
}
