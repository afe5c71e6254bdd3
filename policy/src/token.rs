//! Domain tokens of the SOURCE and TARGET columns and of `target=` / `default_target=`.

use std::fmt;

use bulkhead_domain::DomainName;

use crate::error::ErrorKind;
use crate::system::{TypeSel, ADMINVM_NAME, DOM0_UUID};

/// Longest token accepted anywhere in a rule.
pub const MAX_TOKEN_LEN: usize = 255;
/// Longest tag accepted in `@tag:` / `@dispvm:@tag:`.
pub const MAX_TAG_LEN: usize = 64;

/// A parsed domain token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A literal domain name.
    Name(DomainName),
    /// `uuid:UUID`, as written. dom0's UUID is parsed as [`Token::AdminVm`]. As in Qubes, a
    /// UUID is compared as written: domains' UUIDs are lower case, so an upper-case one
    /// matches nothing.
    Uuid(String),
    /// `*`: anything, including dom0.
    Wildcard,
    /// `@anyvm`: any domain except dom0.
    AnyVm,
    /// `@adminvm` (also written `dom0`).
    AdminVm,
    /// `@default`: the caller named no target.
    Default,
    /// `@dispvm`: a new disposable from the source's `default_dispvm`.
    DispVm,
    /// `@dispvm:NAME`: a new disposable from the disposable template NAME.
    DispVmTemplate(DomainName),
    /// `@dispvm:uuid:UUID`: a new disposable from the disposable template with this UUID
    /// (as written, like [`Token::Uuid`]).
    DispVmUuid(String),
    /// `@dispvm:@tag:T`: a new disposable from any disposable template tagged T.
    DispVmTag(String),
    /// `@tag:T`.
    Tag(String),
    /// `@type:T`.
    Type(TypeSel, String),
}

/// Where a token appears; each column accepts a different set (reference §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    Source,
    Target,
    /// `target=` and `default_target=`.
    Redirect,
}

impl Column {
    fn label(self) -> &'static str {
        match self {
            Column::Source => "source",
            Column::Target => "target",
            Column::Redirect => "redirect",
        }
    }

    fn accepts(self, t: &Token) -> bool {
        match self {
            Column::Source => !matches!(t, Token::Default | Token::DispVm),
            Column::Target => true,
            Column::Redirect => matches!(
                t,
                Token::Name(_)
                    | Token::Uuid(_)
                    | Token::AdminVm
                    | Token::DispVm
                    | Token::DispVmTemplate(_)
                    | Token::DispVmUuid(_)
            ),
        }
    }
}

pub(crate) fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` has the 8-4-4-4-12 hex form of a UUID (either case).
pub(crate) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == lens.len()
        && groups
            .iter()
            .zip(lens)
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The UUID of a `uuid:` / `@dispvm:uuid:` token, checked and kept as written.
fn uuid_value(prefix: &'static str, token: &str, value: &str) -> Result<String, ErrorKind> {
    let v = nonempty(prefix, token, value)?;
    if !is_uuid(v) {
        return Err(ErrorKind::InvalidUuid(v.to_owned()));
    }
    if v.bytes().any(|b| b.is_ascii_uppercase()) {
        // Qubes compares UUIDs as written and reports them in lower case.
        tracing::warn!(
            token,
            "upper-case UUID in a policy never matches a domain (UUIDs are compared as written, and domains' UUIDs are lower case)"
        );
    }
    Ok(v.to_owned())
}

fn name_token(token: &str, column: Column) -> Result<DomainName, ErrorKind> {
    DomainName::new(token).map_err(|e| match token.strip_prefix('$') {
        Some(rest) => ErrorKind::InvalidToken {
            column: column.label(),
            token: token.to_owned(),
            hint: format!(" (the $ form is only for legacy files; write @{rest})"),
        },
        None => ErrorKind::InvalidName {
            column: column.label(),
            token: token.to_owned(),
            reason: e.to_string(),
        },
    })
}

fn nonempty<'a>(prefix: &'static str, token: &str, value: &'a str) -> Result<&'a str, ErrorKind> {
    if value.is_empty() {
        Err(ErrorKind::EmptyTokenValue {
            prefix,
            token: token.to_owned(),
        })
    } else {
        Ok(value)
    }
}

fn tag_value(prefix: &'static str, token: &str, value: &str) -> Result<String, ErrorKind> {
    let v = nonempty(prefix, token, value)?;
    if !valid_tag(v) {
        return Err(ErrorKind::InvalidTag(v.to_owned()));
    }
    Ok(v.to_owned())
}

/// Parse `token` for `column`.
pub(crate) fn parse_token(token: &str, column: Column) -> Result<Token, ErrorKind> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ErrorKind::TokenTooLong {
            token: token.chars().take(40).collect(),
            len: token.len(),
            limit: MAX_TOKEN_LEN,
        });
    }
    let invalid = |hint: &str| ErrorKind::InvalidToken {
        column: column.label(),
        token: token.to_owned(),
        hint: hint.to_owned(),
    };
    let parsed = if token == ADMINVM_NAME || token == "@adminvm" {
        Token::AdminVm
    } else if token == "*" {
        Token::Wildcard
    } else if token == "@anyvm" {
        Token::AnyVm
    } else if token == "@default" {
        Token::Default
    } else if token == "@dispvm" {
        Token::DispVm
    } else if let Some(v) = token.strip_prefix("@dispvm:@tag:") {
        Token::DispVmTag(tag_value("@dispvm:@tag:", token, v)?)
    } else if let Some(v) = token.strip_prefix("@dispvm:uuid:") {
        Token::DispVmUuid(uuid_value("@dispvm:uuid:", token, v)?)
    } else if let Some(v) = token.strip_prefix("@dispvm:") {
        let v = nonempty("@dispvm:", token, v)?;
        if v.starts_with('@') {
            return Err(invalid(""));
        }
        Token::DispVmTemplate(name_token(v, column)?)
    } else if let Some(v) = token.strip_prefix("@tag:") {
        Token::Tag(tag_value("@tag:", token, v)?)
    } else if let Some(v) = token.strip_prefix("@type:") {
        let v = nonempty("@type:", token, v)?;
        let sel = TypeSel::parse(v).ok_or_else(|| ErrorKind::UnknownType(v.to_owned()))?;
        Token::Type(sel, v.to_owned())
    } else if token.starts_with("@uuid:") {
        return Err(invalid(" (write uuid:… without @)"));
    } else if token.starts_with('@') {
        return Err(invalid(""));
    } else if let Some(v) = token.strip_prefix("uuid:") {
        let u = uuid_value("uuid:", token, v)?;
        if u == DOM0_UUID {
            Token::AdminVm
        } else {
            Token::Uuid(u)
        }
    } else {
        Token::Name(name_token(token, column)?)
    };
    if !column.accepts(&parsed) {
        let hint = match column {
            Column::Source => " (not allowed in the source column)",
            Column::Redirect => {
                " (target= and default_target= take a name, uuid:…, @adminvm, @dispvm, @dispvm:NAME or @dispvm:uuid:…)"
            }
            Column::Target => "",
        };
        return Err(invalid(hint));
    }
    Ok(parsed)
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Name(n) => write!(f, "{n}"),
            Token::Uuid(u) => write!(f, "uuid:{u}"),
            Token::Wildcard => f.write_str("*"),
            Token::AnyVm => f.write_str("@anyvm"),
            Token::AdminVm => f.write_str("@adminvm"),
            Token::Default => f.write_str("@default"),
            Token::DispVm => f.write_str("@dispvm"),
            Token::DispVmTemplate(n) => write!(f, "@dispvm:{n}"),
            Token::DispVmUuid(u) => write!(f, "@dispvm:uuid:{u}"),
            Token::DispVmTag(t) => write!(f, "@dispvm:@tag:{t}"),
            Token::Tag(t) => write!(f, "@tag:{t}"),
            Token::Type(_, t) => write!(f, "@type:{t}"),
        }
    }
}
