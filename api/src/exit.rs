//! The exit codes of the `bulkhead` CLI: one table, from which `bulkhead --help` lists them and
//! every error gets its code. Scripts depend on the numbers, so a number never changes.
//!
//! domaind's error kinds map to these in [`ErrorKind::exit_code`](crate::ErrorKind::exit_code)
//! (the table of kinds, D-Bus error names and codes); [`code_for_error_name`] adds the bus's
//! own error names and [`code_for_zbus_error`] the bus failures, so that
//! [`Error::exit_code`](crate::Error::exit_code) is the code the CLI exits with.

use crate::ErrorKind;

/// An exit code of the `bulkhead` CLI; `Code::X as u8` is its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Success = 0,
    Failure = 1,
    /// The command line was wrong (clap's own exit code).
    Usage = 2,
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

impl Code {
    /// Every code in increasing order, with what `bulkhead --help` says of it. `run`'s own
    /// codes (125, 126) are said as "NUMBER when ...".
    pub const TABLE: [(Code, &'static str); 13] = [
        (Code::Success, "ok"),
        (Code::Failure, "failure"),
        (Code::Usage, "usage"),
        (Code::NoSuchDomain, "no such domain"),
        (Code::InvalidState, "wrong domain state"),
        (Code::InvalidInput, "invalid name/property/value"),
        (Code::Unreachable, "domaind unreachable"),
        (Code::AccessDenied, "access denied"),
        (Code::AlreadyExists, "already exists"),
        (Code::TemplateMissing, "template missing"),
        (
            Code::LimitReached,
            "a limit reached (live disposables, memory margin)",
        ),
        (Code::RunFailed, "when the command could not be run"),
        (Code::RunRefused, "when it was refused"),
    ];

    /// What `bulkhead --help` says of this code.
    pub fn meaning(self) -> &'static str {
        Code::TABLE
            .iter()
            .find(|(code, _)| *code == self)
            .map(|(_, meaning)| *meaning)
            .unwrap_or_default()
    }
}

/// The exit code for a D-Bus error name: domaind's `org.bulkhead.Error.*` kinds (see
/// [`ErrorKind`]) and the bus's own (`AccessDenied`, `InvalidArgs`, the "no such service"
/// family); anything else is [`Code::Failure`]. Only the last part of the name counts.
pub fn code_for_error_name(name: &str) -> Code {
    let last = name.rsplit('.').next().unwrap_or(name);
    if let Some(kind) = ErrorKind::from_name(last) {
        return kind.exit_code();
    }
    match last {
        "InvalidArgs" => Code::InvalidInput,
        "ServiceUnknown" | "NameHasNoOwner" | "NoServer" => Code::Unreachable,
        _ => Code::Failure,
    }
}

/// The exit code for an error of the bus itself (`org.freedesktop.DBus.Error.*`): domaind not
/// on the bus, or the bus's policy refusing the caller.
pub fn code_for_fdo_error(e: &zbus::fdo::Error) -> Code {
    use zbus::fdo::Error as E;
    match e {
        E::ServiceUnknown(_) | E::NameHasNoOwner(_) | E::NoServer(_) => Code::Unreachable,
        E::AccessDenied(_) => Code::AccessDenied,
        _ => Code::Failure,
    }
}

/// The exit code for a bus failure: an error reply by its name, a bus error, no bus to talk
/// to ([`Code::Unreachable`]), else [`Code::Failure`].
pub fn code_for_zbus_error(e: &zbus::Error) -> Code {
    match e {
        zbus::Error::MethodError(name, _, _) => code_for_error_name(name.as_str()),
        zbus::Error::FDO(fdo) => code_for_fdo_error(fdo),
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) => Code::Unreachable,
        _ => Code::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_change() {
        let numbers: Vec<(u8, &str)> = Code::TABLE
            .iter()
            .map(|(code, meaning)| (*code as u8, *meaning))
            .collect();
        assert_eq!(
            numbers,
            [
                (0, "ok"),
                (1, "failure"),
                (2, "usage"),
                (3, "no such domain"),
                (4, "wrong domain state"),
                (5, "invalid name/property/value"),
                (6, "domaind unreachable"),
                (7, "access denied"),
                (8, "already exists"),
                (9, "template missing"),
                (10, "a limit reached (live disposables, memory margin)"),
                (125, "when the command could not be run"),
                (126, "when it was refused"),
            ]
        );
    }

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
    fn bus_failures_have_codes() {
        let fdo = zbus::fdo::Error::ServiceUnknown("gone".into());
        assert_eq!(code_for_fdo_error(&fdo), Code::Unreachable);
        assert_eq!(
            code_for_zbus_error(&zbus::Error::FDO(Box::new(fdo))),
            Code::Unreachable
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            code_for_zbus_error(&zbus::Error::InputOutput(io.into())),
            Code::Unreachable
        );
        assert_eq!(
            code_for_zbus_error(&zbus::Error::Failure("?".into())),
            Code::Failure
        );
    }
}
