//! One policy rule: `SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ErrorKind;
use crate::token::{parse_token, Column, Token};

/// Characters of a service name (Qubes' RPC name charset without `+`).
fn service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

fn argument_char(c: char) -> bool {
    service_char(c) || c == '+'
}

fn bad_chars(s: &str, ok: fn(char) -> bool) -> Vec<char> {
    let mut v: Vec<char> = s.chars().filter(|c| !ok(*c)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Check the SERVICE and ARGUMENT columns; `None` stands for `*`.
pub(crate) fn parse_service_argument(
    service: &str,
    argument: &str,
) -> Result<(Option<String>, Option<String>), ErrorKind> {
    let service = if service == "*" {
        None
    } else {
        let chars = bad_chars(service, service_char);
        if !chars.is_empty() {
            return Err(ErrorKind::InvalidService {
                service: service.to_owned(),
                chars,
            });
        }
        Some(service.to_owned())
    };
    let argument = if argument == "*" {
        None
    } else {
        let chars = bad_chars(argument, argument_char);
        if !chars.is_empty() {
            return Err(ErrorKind::InvalidArgumentChars {
                argument: argument.to_owned(),
                chars,
            });
        }
        if !argument.starts_with('+') {
            return Err(ErrorKind::ArgumentWithoutPlus(argument.to_owned()));
        }
        if service.is_none() {
            return Err(ErrorKind::ArgumentForWildcardService);
        }
        Some(argument.to_owned())
    };
    Ok((service, argument))
}

/// Parameters of `allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowParams {
    /// `target=`: redirect the call.
    pub target: Option<Token>,
    /// `user=`: run the service as this user in the target.
    pub user: Option<String>,
    /// `notify=` (default no).
    pub notify: bool,
    /// `autostart=` (default yes).
    pub autostart: bool,
}

/// Parameters of `ask`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskParams {
    pub target: Option<Token>,
    /// `default_target=`: preselected in the dialog.
    pub default_target: Option<Token>,
    pub user: Option<String>,
    pub notify: bool,
    pub autostart: bool,
}

/// A rule's action with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Allow(AllowParams),
    /// `deny [notify=yes|no]` (default yes).
    Deny {
        notify: bool,
    },
    Ask(AskParams),
}

impl Action {
    /// The `target=` redirect, if any.
    pub fn redirect(&self) -> Option<&Token> {
        match self {
            Action::Allow(p) => p.target.as_ref(),
            Action::Ask(p) => p.target.as_ref(),
            Action::Deny { .. } => None,
        }
    }
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl Location {
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One parsed rule. `service` / `argument` are `None` for `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub service: Option<String>,
    pub argument: Option<String>,
    pub source: Token,
    pub target: Token,
    pub action: Action,
    pub location: Location,
}

/// A rule without its location (what a line parses to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleBody {
    pub service: Option<String>,
    pub argument: Option<String>,
    pub source: Token,
    pub target: Token,
    pub action: Action,
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, ErrorKind> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(ErrorKind::BadBool {
            key,
            value: value.to_owned(),
        }),
    }
}

fn parse_user(value: &str) -> Result<String, ErrorKind> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && !value.starts_with(['-', '.'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ErrorKind::InvalidUser(value.to_owned()))
    }
}

const ALLOW_PARAMS: &str = "target, user, notify, autostart";
const ASK_PARAMS: &str = "target, default_target, user, notify, autostart";
const DENY_PARAMS: &str = "notify";

/// Build the action from its name and `KEY=VALUE` parameters.
fn parse_action(action: &str, params: &[&str]) -> Result<Action, ErrorKind> {
    let (name, accepted): (&'static str, &'static str) = match action {
        "allow" => ("allow", ALLOW_PARAMS),
        "deny" => ("deny", DENY_PARAMS),
        "ask" => ("ask", ASK_PARAMS),
        other => return Err(ErrorKind::InvalidAction(other.to_owned())),
    };
    let mut kv: Vec<(&str, &str)> = Vec::with_capacity(params.len());
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| ErrorKind::ParamSyntax((*p).to_owned()))?;
        if kv.iter().any(|(seen, _)| *seen == k) {
            return Err(ErrorKind::ParamTwice(k.to_owned()));
        }
        kv.push((k, v));
    }
    let mut target = None;
    let mut default_target = None;
    let mut user = None;
    let mut notify = None;
    let mut autostart = None;
    for (k, v) in kv {
        let key_ok = accepted.split(", ").any(|a| a == k);
        if !key_ok {
            return Err(ErrorKind::ParamNotAccepted {
                action: name,
                key: k.to_owned(),
                accepted,
            });
        }
        match k {
            "target" => target = Some(parse_token(v, Column::Redirect)?),
            "default_target" => default_target = Some(parse_token(v, Column::Redirect)?),
            "user" => user = Some(parse_user(v)?),
            "notify" => notify = Some(parse_bool("notify", v)?),
            "autostart" => autostart = Some(parse_bool("autostart", v)?),
            // `accepted` lists only the keys handled above.
            _ => {
                return Err(ErrorKind::ParamNotAccepted {
                    action: name,
                    key: k.to_owned(),
                    accepted,
                })
            }
        }
    }
    Ok(match name {
        "allow" => Action::Allow(AllowParams {
            target,
            user,
            notify: notify.unwrap_or(false),
            autostart: autostart.unwrap_or(true),
        }),
        "deny" => Action::Deny {
            notify: notify.unwrap_or(true),
        },
        _ => Action::Ask(AskParams {
            target,
            default_target,
            user,
            notify: notify.unwrap_or(false),
            autostart: autostart.unwrap_or(true),
        }),
    })
}

fn build(
    service: Option<String>,
    argument: Option<String>,
    source: &str,
    target: &str,
    action: &str,
    params: &[&str],
) -> Result<RuleBody, ErrorKind> {
    let source = parse_token(source, Column::Source)?;
    let target = parse_token(target, Column::Target)?;
    let action = parse_action(action, params)?;
    if target == Token::Default {
        if let Action::Allow(AllowParams { target: None, .. }) = action {
            return Err(ErrorKind::AllowDefaultWithoutTarget);
        }
    }
    Ok(RuleBody {
        service,
        argument,
        source,
        target,
        action,
    })
}

/// Parse a rule line of the 4.1+ format (already split on whitespace).
pub(crate) fn parse_rule_fields(fields: &[&str]) -> Result<RuleBody, ErrorKind> {
    let [service, argument, source, target, action, params @ ..] = fields else {
        return Err(ErrorKind::WrongNumberOfFields);
    };
    let (service, argument) = parse_service_argument(service, argument)?;
    build(service, argument, source, target, action, params)
}

/// Parse a line of a legacy file read through `!include-service` (`SOURCE TARGET
/// ACTION[,PARAMS]`, already rewritten: `$` to `@`, `,` to space).
pub(crate) fn parse_legacy_fields(
    service: &Option<String>,
    argument: &Option<String>,
    fields: &[&str],
) -> Result<RuleBody, ErrorKind> {
    let [source, target, action, params @ ..] = fields else {
        return Err(ErrorKind::WrongNumberOfFields);
    };
    build(
        service.clone(),
        argument.clone(),
        source,
        target,
        action,
        params,
    )
}
