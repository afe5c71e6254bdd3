//! Policy errors, always tied to a file and a line.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with a policy line or file.
///
/// The messages follow Qubes' wording where Qubes has one, so that users who know Qubes
/// recognise them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error(
        "wrong number of fields (expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...])"
    )]
    WrongNumberOfFields,
    #[error("service {service:?} contains invalid characters: {chars:?} (allowed: A-Z a-z 0-9 - . _, or * alone)")]
    InvalidService { service: String, chars: Vec<char> },
    #[error("argument {argument:?} contains invalid characters: {chars:?} (allowed: A-Z a-z 0-9 + - . _)")]
    InvalidArgumentChars { argument: String, chars: Vec<char> },
    #[error(
        "argument {0:?} does not start with + (write * for any argument, + for the empty one)"
    )]
    ArgumentWithoutPlus(String),
    #[error("only * argument allowed for * service")]
    ArgumentForWildcardService,
    #[error("invalid empty {prefix} token: {token:?}")]
    EmptyTokenValue { prefix: &'static str, token: String },
    #[error("invalid {column} token: {token:?}{hint}")]
    InvalidToken {
        column: &'static str,
        token: String,
        hint: String,
    },
    #[error("invalid domain name {token:?} in {column} column: {reason}")]
    InvalidName {
        column: &'static str,
        token: String,
        reason: String,
    },
    #[error("invalid tag {0:?}: a tag is 1 to 64 characters from A-Z a-z 0-9 - _ .")]
    InvalidTag(String),
    #[error("unknown domain type {0:?} in @type: (known: {known})", known = crate::system::TYPE_NAMES_HELP)]
    UnknownType(String),
    #[error("invalid uuid {0:?} (expected 8-4-4-4-12 hexadecimal digits)")]
    InvalidUuid(String),
    #[error("invalid action: {0:?} (expected allow, deny or ask)")]
    InvalidAction(String),
    #[error("invalid action parameter syntax: {0:?} (expected KEY=VALUE)")]
    ParamSyntax(String),
    #[error("parameter given twice: {0:?}")]
    ParamTwice(String),
    #[error(
        "invalid parameters for action {action}: {key:?} is not accepted (accepted: {accepted})"
    )]
    ParamNotAccepted {
        action: &'static str,
        key: String,
        accepted: &'static str,
    },
    #[error("{key:?} is {value:?}, but can be only 'yes' or 'no'")]
    BadBool { key: &'static str, value: String },
    #[error(
        "invalid user {0:?}: 1 to 32 characters from A-Z a-z 0-9 _ . -, not starting with - or ."
    )]
    InvalidUser(String),
    #[error("allow action for @default rule must specify target= option")]
    AllowDefaultWithoutTarget,
    #[error("invalid directive {0:?} (expected !include, !include-dir or !include-service)")]
    InvalidDirective(String),
    #[error("!compat-4.0 is not supported: Bulkhead has no Qubes 4.0 legacy policy directory")]
    Compat40Unsupported,
    #[error("invalid number of params for {0}")]
    DirectiveParams(&'static str),
    #[error("not a file: {0}")]
    NotAFile(PathBuf),
    #[error("not a directory: {0}")]
    NotADirectory(PathBuf),
    #[error("circular include: {0} is already being loaded")]
    IncludeCycle(PathBuf),
    #[error("include depth limit of {0} exceeded")]
    IncludeTooDeep(usize),
    #[error("includes are not available here (no base directory)")]
    IncludeUnavailable,
    #[error("too many policy files loaded (limit {0}); check for runaway includes")]
    TooManyFiles(usize),
    #[error("invalid filename {0:?}: policy file names may only contain 0-9 a-z _ . -")]
    InvalidFilename(String),
    #[error("file is {size} bytes; the limit is {limit}")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("line is {len} bytes long; the limit is {limit}")]
    LineTooLong { len: usize, limit: usize },
    #[error("too many rules (limit {0})")]
    TooManyRules(usize),
    #[error("line is not valid UTF-8")]
    NotUtf8,
    #[error("token {token:?} is {len} bytes long; the limit is {limit}")]
    TokenTooLong {
        token: String,
        len: usize,
        limit: usize,
    },
    #[error("cannot read {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// One problem in the policy, at `file:line`. Line 0 means the file as a whole (it could
/// not be listed, opened or read, or its name is invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub kind: ErrorKind,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, line: usize, kind: ErrorKind) -> Self {
        Self {
            file: file.into(),
            line,
            kind,
        }
    }

    /// The message alone, without `file:line: `.
    pub fn message(&self) -> String {
        self.kind.to_string()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.kind)
    }
}

impl std::error::Error for Diagnostic {}
