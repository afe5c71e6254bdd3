//! Evaluation: matching a request against the rules and resolving the action.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use bulkhead_domain::DomainName;

use crate::rule::{Action, AllowParams, AskParams, Location, Rule};
use crate::system::{Intended, Request, System, Who, ADMINVM_NAME};
use crate::token::{is_uuid, Token};

/// Longest service name accepted in a request.
pub const MAX_SERVICE_LEN: usize = 255;
/// Longest argument (with its `+`) accepted in a request.
pub const MAX_ARGUMENT_LEN: usize = 255;
/// Longest requested-target string accepted in a request.
pub const MAX_TARGET_LEN: usize = 255;

/// Where an allowed call goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallTarget {
    /// dom0 (`@adminvm`).
    AdminVm,
    /// An existing domain.
    Domain(DomainName),
    /// A new disposable to be created from this disposable template.
    NewDisposable { template: DomainName },
}

impl CallTarget {
    /// The name the GUI shows and the user answers with: a domain name, `dom0`, or
    /// `@dispvm:TEMPLATE`.
    pub fn to_answer(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CallTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallTarget::AdminVm => f.write_str(ADMINVM_NAME),
            CallTarget::Domain(n) => write!(f, "{n}"),
            CallTarget::NewDisposable { template } => write!(f, "@dispvm:{template}"),
        }
    }
}

/// Why a call is denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    #[error("the policy has {count} error(s), so every call is denied; first: {first}")]
    PolicyInvalid { count: usize, first: String },
    #[error("no matching rule found")]
    NoMatchingRule,
    #[error("denied by policy {0}")]
    ByRule(Location),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unknown source domain {0:?}")]
    UnknownSource(String),
    #[error("policy defines 'allow' action at {0} but no target is specified by caller or policy")]
    NoTarget(Location),
    #[error(
        "policy defines 'allow' action to @dispvm at {0} but no default_dispvm is set for {1}"
    )]
    NoDefaultDispvm(Location, String),
    #[error("not a template for disposables: {0}")]
    NotDispvmTemplate(String),
    #[error("target {target} is denied because it would require autostart (rule {rule})")]
    AutostartRequired { target: String, rule: Location },
    #[error("loopback call (source and target are both {0}) is not supported")]
    Loopback(String),
    #[error("policy defines 'ask' action at {0} but no target is available to choose from")]
    NoAskTargets(Location),
    #[error("denied by the user (rule {0})")]
    ByUser(Location),
    #[error("target {0} is not a valid choice")]
    InvalidChoice(String),
    #[error(
        "policy rule {rule} names a disposable template for a requested @dispvm, but no \
         default_dispvm is set for {domain} to compare with"
    )]
    NoDefaultDispvmToCompare { rule: Location, domain: String },
    #[error("policy rule {rule} names {token}, which is no domain, so the ask targets cannot be computed")]
    UnknownDispvmTemplate { rule: Location, token: String },
}

/// A decision to allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub target: CallTarget,
    /// `user=`, or `None` for the target's default user.
    pub user: Option<String>,
    pub notify: bool,
    pub autostart: bool,
    /// The rule that decided.
    pub rule: Location,
}

/// A decision to deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// Whether to show the user a notification.
    pub notify: bool,
    pub reason: DenyReason,
}

/// A decision to ask the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// What the user may choose from, sorted.
    pub targets: Vec<CallTarget>,
    /// Preselected choice (only if it is among `targets`).
    pub default_target: Option<CallTarget>,
    /// The targets a rule names itself (by name or uuid as its target, or in `target=`),
    /// as opposed to those a wildcard, a tag or a type brought in. Qubes does not tell
    /// them apart; Bulkhead's domaind offers templates and service domains only when named.
    pub named: BTreeSet<CallTarget>,
    pub user: Option<String>,
    pub notify: bool,
    pub autostart: bool,
    pub rule: Location,
}

impl Ask {
    /// Turn the user's answer into a decision. `answer` is `None` when the user refused
    /// (or nobody answered); otherwise it is one of the targets as [`CallTarget::to_answer`]
    /// spells it (`@adminvm` is accepted for `dom0`).
    pub fn answer(&self, answer: Option<&str>) -> Result<Allow, Deny> {
        let Some(chosen) = answer else {
            return Err(Deny {
                notify: self.notify,
                reason: DenyReason::ByUser(self.rule.clone()),
            });
        };
        let chosen = if chosen == "@adminvm" {
            ADMINVM_NAME
        } else {
            chosen
        };
        match self.targets.iter().find(|t| t.to_answer() == chosen) {
            Some(t) => Ok(Allow {
                target: t.clone(),
                user: self.user.clone(),
                notify: self.notify,
                autostart: self.autostart,
                rule: self.rule.clone(),
            }),
            None => Err(Deny {
                notify: true,
                reason: DenyReason::InvalidChoice(chosen.chars().take(64).collect()),
            }),
        }
    }
}

/// The outcome of evaluating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Allow(Allow),
    Deny(Deny),
    Ask(Ask),
}

impl Resolution {
    pub fn is_allow(&self) -> bool {
        matches!(self, Resolution::Allow(_))
    }
    pub fn is_deny(&self) -> bool {
        matches!(self, Resolution::Deny(_))
    }
    pub fn is_ask(&self) -> bool {
        matches!(self, Resolution::Ask(_))
    }

    pub(crate) fn deny(reason: DenyReason) -> Self {
        Resolution::Deny(Deny {
            notify: true,
            reason,
        })
    }
}

/// A checked request.
pub(crate) struct Checked<'a> {
    pub service: &'a str,
    pub argument: &'a str,
    pub source: Who<'a>,
    pub target: Intended,
}

fn rpc_chars_ok(s: &str, plus: bool) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') || (plus && b == b'+')
    })
}

/// Check a request against the system: names, charsets, and the intended target (a target
/// that does not exist becomes `@default`, as in Qubes).
pub(crate) fn check_request<'a>(
    req: &'a Request,
    sys: &'a System,
) -> Result<Checked<'a>, DenyReason> {
    let bad = |m: String| DenyReason::InvalidRequest(m);
    if req.service.is_empty()
        || req.service.len() > MAX_SERVICE_LEN
        || !rpc_chars_ok(&req.service, false)
    {
        return Err(bad(format!(
            "invalid service name {:?}",
            short(&req.service)
        )));
    }
    let argument = if req.argument.is_empty() {
        "+"
    } else {
        req.argument.as_str()
    };
    if argument.len() > MAX_ARGUMENT_LEN
        || !argument.starts_with('+')
        || !rpc_chars_ok(argument, true)
    {
        return Err(bad(format!("invalid argument {:?}", short(&req.argument))));
    }
    let source = sys
        .who(&req.source)
        .ok_or_else(|| DenyReason::UnknownSource(short(&req.source)))?;
    if req.target.len() > MAX_TARGET_LEN {
        return Err(bad("requested target is too long".to_owned()));
    }
    let t = req.target.as_str();
    // VMs write `$dispvm`, `$default`, ...: the same as the `@` forms.
    let t: Cow<'_, str> = match t.strip_prefix('$') {
        Some(rest) => format!("@{rest}").into(),
        None => t.into(),
    };
    let target = match t.as_ref() {
        "" | "@default" => Intended::Default,
        "@adminvm" | ADMINVM_NAME => Intended::AdminVm,
        "@dispvm" => Intended::DispVm,
        other => {
            if let Some(u) = other.strip_prefix("@dispvm:uuid:") {
                match sys.domain_by_uuid(u).filter(|d| d.template_for_dispvms) {
                    Some(d) => Intended::DispVmTemplate(d.name.clone()),
                    None => return Err(DenyReason::NotDispvmTemplate(short(other))),
                }
            } else if let Some(name) = other.strip_prefix("@dispvm:") {
                match sys.dispvm_template(name) {
                    Some(d) => Intended::DispVmTemplate(d.name.clone()),
                    None => return Err(DenyReason::NotDispvmTemplate(short(name))),
                }
            } else if other.starts_with('@') {
                return Err(bad(format!("invalid target {:?}", short(other))));
            } else if let Some(u) = other.strip_prefix("uuid:") {
                // Compared as written, as Qubes does: an unknown (or upper-case) UUID is
                // no domain, so `@default`.
                if u == crate::system::DOM0_UUID {
                    Intended::AdminVm
                } else {
                    match sys.domain_by_uuid(u).filter(|_| is_uuid(u)) {
                        Some(d) => Intended::Name(d.name.clone()),
                        None => {
                            tracing::warn!(target = %short(other), "requested target does not exist, using @default instead");
                            Intended::Default
                        }
                    }
                }
            } else {
                match sys.domain(other) {
                    Some(d) => Intended::Name(d.name.clone()),
                    None => {
                        tracing::warn!(target = %short(other), "requested target does not exist, using @default instead");
                        Intended::Default
                    }
                }
            }
        }
    };
    Ok(Checked {
        service: &req.service,
        argument,
        source,
        target,
    })
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(crate) fn match_source(tok: &Token, who: Who<'_>, sys: &System) -> bool {
    match tok {
        Token::Name(n) => matches!(who, Who::Domain(d) if d.name == *n),
        Token::Uuid(u) => matches!(who, Who::Domain(d) if d.uuid.as_deref() == Some(u.as_str())),
        Token::Wildcard => true,
        Token::AnyVm => matches!(who, Who::Domain(_)),
        Token::AdminVm => matches!(who, Who::Dom0),
        Token::Tag(t) => sys.tags_of(who).contains(t),
        Token::Type(sel, _) => sel.matches(who),
        // Qubes compares these against the source's name, so they never match a source.
        Token::DispVmTemplate(_) | Token::DispVmUuid(_) | Token::DispVmTag(_) => false,
        // Not accepted in the source column by the parser.
        Token::Default | Token::DispVm => false,
    }
}

fn intended_who<'a>(intended: &Intended, sys: &'a System) -> Option<Who<'a>> {
    match intended {
        Intended::Name(n) => sys.domain(n.as_str()).map(Who::Domain),
        Intended::AdminVm => Some(Who::Dom0),
        _ => None,
    }
}

/// A rule's TARGET column compared with a requested `@dispvm` from a source without a
/// `default_dispvm`, where the column names a disposable template (`@dispvm:NAME`,
/// `@dispvm:uuid:…`): Qubes fails there with an internal error, so the call is denied
/// instead of going on to the next rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoDefaultToCompare;

pub(crate) fn match_target(
    tok: &Token,
    intended: &Intended,
    source: Who<'_>,
    sys: &System,
) -> Result<bool, NoDefaultToCompare> {
    Ok(match tok {
        Token::Name(n) => matches!(intended, Intended::Name(m) if m == n),
        Token::Uuid(u) => match intended {
            Intended::Name(m) => has_uuid(sys, m, u),
            _ => false,
        },
        Token::Wildcard => true,
        Token::AnyVm => *intended != Intended::AdminVm,
        Token::AdminVm => *intended == Intended::AdminVm,
        Token::Default => *intended == Intended::Default,
        Token::DispVm => *intended == Intended::DispVm,
        Token::DispVmTemplate(n) => match intended {
            Intended::DispVmTemplate(m) => m == n,
            Intended::DispVm => sys.default_dispvm_of(source).ok_or(NoDefaultToCompare)? == n,
            _ => false,
        },
        Token::DispVmUuid(u) => match intended {
            Intended::DispVmTemplate(m) => has_uuid(sys, m, u),
            // Qubes compares `@dispvm:uuid:…` with `@dispvm:DEFAULT` as strings: never equal.
            Intended::DispVm => {
                sys.default_dispvm_of(source).ok_or(NoDefaultToCompare)?;
                false
            }
            _ => false,
        },
        Token::DispVmTag(t) => {
            let template = match intended {
                Intended::DispVm => sys.default_dispvm_of(source),
                Intended::DispVmTemplate(m) => Some(m),
                _ => None,
            };
            template
                .and_then(|m| sys.dispvm_template(m.as_str()))
                .is_some_and(|d| d.tags.contains(t))
        }
        Token::Tag(t) => intended_who(intended, sys).is_some_and(|w| sys.tags_of(w).contains(t)),
        Token::Type(sel, _) => intended_who(intended, sys).is_some_and(|w| sel.matches(w)),
    })
}

/// Whether domain `name` has UUID `uuid` (as written).
fn has_uuid(sys: &System, name: &DomainName, uuid: &str) -> bool {
    sys.domain(name.as_str())
        .is_some_and(|d| d.uuid.as_deref() == Some(uuid))
}

/// Does `rule` apply to this service, argument and source (the target aside)?
pub(crate) fn match_but_target(rule: &Rule, req: &Checked<'_>, sys: &System) -> bool {
    rule.service.as_deref().is_none_or(|s| s == req.service)
        && rule.argument.as_deref().is_none_or(|a| a == req.argument)
        && match_source(&rule.source, req.source, sys)
}

/// An intermediate ask target, before `@dispvm` is expanded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Candidate {
    Target(CallTarget),
    DispVm,
}

/// A rule names a disposable template that is no domain at all: Qubes cannot compute the
/// ask targets then (an internal error), so the call is denied.
struct UnknownTemplate;

fn expand(tok: &Token, sys: &System, out: &mut Vec<Candidate>) -> Result<(), UnknownTemplate> {
    let all_domains = |out: &mut Vec<Candidate>| {
        for d in sys.domains() {
            out.push(Candidate::Target(CallTarget::Domain(d.name.clone())));
            if d.template_for_dispvms {
                out.push(Candidate::Target(CallTarget::NewDisposable {
                    template: d.name.clone(),
                }));
            }
        }
        out.push(Candidate::DispVm);
    };
    match tok {
        Token::Name(n) => {
            if sys.domain(n.as_str()).is_some() {
                out.push(Candidate::Target(CallTarget::Domain(n.clone())));
            }
        }
        Token::Uuid(u) => {
            if let Some(d) = sys.domain_by_uuid(u) {
                out.push(Candidate::Target(CallTarget::Domain(d.name.clone())));
            }
        }
        Token::Wildcard => {
            out.push(Candidate::Target(CallTarget::AdminVm));
            all_domains(out);
        }
        Token::AnyVm => all_domains(out),
        Token::AdminVm => out.push(Candidate::Target(CallTarget::AdminVm)),
        Token::Default => {}
        Token::DispVm => out.push(Candidate::DispVm),
        Token::DispVmTemplate(n) => {
            let d = sys.domain(n.as_str()).ok_or(UnknownTemplate)?;
            if d.template_for_dispvms {
                out.push(Candidate::Target(CallTarget::NewDisposable {
                    template: n.clone(),
                }));
            }
        }
        Token::DispVmUuid(u) => {
            let d = sys.domain_by_uuid(u).ok_or(UnknownTemplate)?;
            if d.template_for_dispvms {
                out.push(Candidate::Target(CallTarget::NewDisposable {
                    template: d.name.clone(),
                }));
            }
        }
        Token::DispVmTag(t) => {
            for d in sys
                .domains()
                .filter(|d| d.template_for_dispvms && d.tags.contains(t))
            {
                out.push(Candidate::Target(CallTarget::NewDisposable {
                    template: d.name.clone(),
                }));
            }
        }
        Token::Tag(t) => {
            if sys.dom0_tags().contains(t) {
                out.push(Candidate::Target(CallTarget::AdminVm));
            }
            for d in sys.domains().filter(|d| d.tags.contains(t)) {
                out.push(Candidate::Target(CallTarget::Domain(d.name.clone())));
            }
        }
        Token::Type(sel, _) => {
            if sel.matches(Who::Dom0) {
                out.push(Candidate::Target(CallTarget::AdminVm));
            }
            for d in sys.domains().filter(|d| sel.matches(Who::Domain(d))) {
                out.push(Candidate::Target(CallTarget::Domain(d.name.clone())));
            }
        }
    }
    Ok(())
}

/// The disposable template for `@dispvm` from `source`, if set and valid.
fn default_dispvm(source: Who<'_>, sys: &System) -> Option<DomainName> {
    sys.default_dispvm_of(source)
        .and_then(|t| sys.dispvm_template(t.as_str()))
        .map(|d| d.name.clone())
}

/// Qubes' `collect_targets_for_ask`: walk the rules for this service, argument and source
/// in reverse, adding each rule's target (or its `target=`) and removing a `deny` rule's
/// target; then expand `@dispvm`, and drop the source itself and `internal` domains.
/// A rule whose `@dispvm:…` names no domain makes this fail, as in Qubes. The targets
/// that some (non-deny) rule names by name or uuid are added to `named`.
pub(crate) fn collect_ask_targets<'r>(
    rules: impl DoubleEndedIterator<Item = &'r Rule>,
    req: &Checked<'_>,
    sys: &System,
    named: &mut BTreeSet<CallTarget>,
) -> Result<BTreeSet<CallTarget>, DenyReason> {
    let mut set: BTreeSet<Candidate> = BTreeSet::new();
    let mut buf = Vec::new();
    for rule in rules.rev() {
        if !match_but_target(rule, req, sys) {
            continue;
        }
        buf.clear();
        let tok = rule.action.redirect().unwrap_or(&rule.target);
        if expand(tok, sys, &mut buf).is_err() {
            return Err(DenyReason::UnknownDispvmTemplate {
                rule: rule.location.clone(),
                token: tok.to_string(),
            });
        }
        if matches!(rule.action, Action::Deny { .. }) {
            for c in &buf {
                set.remove(c);
            }
        } else {
            if matches!(tok, Token::Name(_) | Token::Uuid(_)) {
                named.extend(buf.iter().filter_map(|c| match c {
                    Candidate::Target(t) => Some(t.clone()),
                    Candidate::DispVm => None,
                }));
            }
            set.extend(buf.drain(..));
        }
    }
    let mut out = BTreeSet::new();
    for c in set {
        match c {
            Candidate::DispVm => {
                if let Some(template) = default_dispvm(req.source, sys) {
                    out.insert(CallTarget::NewDisposable { template });
                }
            }
            Candidate::Target(t) => {
                out.insert(t);
            }
        }
    }
    out.retain(|t| match t {
        CallTarget::AdminVm => !matches!(req.source, Who::Dom0),
        CallTarget::Domain(n) => {
            n.as_str() != req.source.name() && sys.domain(n.as_str()).is_some_and(|d| !d.internal)
        }
        CallTarget::NewDisposable { template } => {
            sys.domain(template.as_str()).is_some_and(|d| !d.internal)
        }
    });
    named.retain(|t| out.contains(t));
    Ok(out)
}

/// Whether a target may be used with `autostart=no`: dom0 and running domains only.
fn running_ok(t: &CallTarget, sys: &System) -> bool {
    match t {
        CallTarget::AdminVm => true,
        CallTarget::NewDisposable { .. } => false,
        CallTarget::Domain(n) => sys.domain(n.as_str()).is_some_and(|d| d.running),
    }
}

/// Resolve a `target=` redirect or the intended target to where the call goes.
fn resolve_target(
    intended: &Intended,
    rule: &Rule,
    source: Who<'_>,
    sys: &System,
) -> Result<CallTarget, DenyReason> {
    match intended {
        Intended::Default => Err(DenyReason::NoTarget(rule.location.clone())),
        Intended::AdminVm => Ok(CallTarget::AdminVm),
        Intended::Name(n) => Ok(CallTarget::Domain(n.clone())),
        Intended::DispVmTemplate(n) => Ok(CallTarget::NewDisposable {
            template: n.clone(),
        }),
        Intended::DispVm => match sys.default_dispvm_of(source) {
            None => Err(DenyReason::NoDefaultDispvm(
                rule.location.clone(),
                source.name().to_owned(),
            )),
            Some(t) => match sys.dispvm_template(t.as_str()) {
                Some(d) => Ok(CallTarget::NewDisposable {
                    template: d.name.clone(),
                }),
                None => Err(DenyReason::NotDispvmTemplate(t.to_string())),
            },
        },
    }
}

/// A redirect token as an intended target (Qubes: `IntendedTarget(redirect).verify()`).
fn redirect_intended(tok: &Token, sys: &System) -> Result<Intended, DenyReason> {
    Ok(match tok {
        Token::Name(n) => match sys.domain(n.as_str()) {
            Some(_) => Intended::Name(n.clone()),
            None => Intended::Default,
        },
        Token::Uuid(u) => match sys.domain_by_uuid(u) {
            Some(d) => Intended::Name(d.name.clone()),
            None => Intended::Default,
        },
        Token::AdminVm => Intended::AdminVm,
        Token::DispVm => Intended::DispVm,
        Token::DispVmTemplate(n) => match sys.dispvm_template(n.as_str()) {
            Some(_) => Intended::DispVmTemplate(n.clone()),
            None => return Err(DenyReason::NotDispvmTemplate(n.to_string())),
        },
        Token::DispVmUuid(u) => match sys.domain_by_uuid(u).filter(|d| d.template_for_dispvms) {
            Some(d) => Intended::DispVmTemplate(d.name.clone()),
            None => return Err(DenyReason::NotDispvmTemplate(tok.to_string())),
        },
        // The parser accepts no other token in target= / default_target=.
        _ => Intended::Default,
    })
}

fn is_loopback(t: &CallTarget, source: Who<'_>) -> bool {
    match (t, source) {
        (CallTarget::AdminVm, Who::Dom0) => true,
        (CallTarget::Domain(n), Who::Domain(d)) => *n == d.name,
        _ => false,
    }
}

pub(crate) fn evaluate_allow(
    p: &AllowParams,
    rule: &Rule,
    req: &Checked<'_>,
    sys: &System,
) -> Resolution {
    let deny = |reason, notify| Resolution::Deny(Deny { notify, reason });
    let intended = match &p.target {
        Some(tok) => match redirect_intended(tok, sys) {
            Ok(i) => i,
            Err(r) => return deny(r, true),
        },
        None => req.target.clone(),
    };
    let target = match resolve_target(&intended, rule, req.source, sys) {
        Ok(t) => t,
        Err(r) => return deny(r, true),
    };
    if !p.autostart && !running_ok(&target, sys) {
        return deny(
            DenyReason::AutostartRequired {
                target: target.to_string(),
                rule: rule.location.clone(),
            },
            p.notify,
        );
    }
    if is_loopback(&target, req.source) {
        return deny(DenyReason::Loopback(target.to_string()), true);
    }
    Resolution::Allow(Allow {
        target,
        user: p.user.clone(),
        notify: p.notify,
        autostart: p.autostart,
        rule: rule.location.clone(),
    })
}

/// Whether `t` is spelt `s` in the dialog: a domain name, `dom0` or `@dispvm:TEMPLATE`.
fn answer_eq(t: &CallTarget, s: &str) -> bool {
    match t {
        CallTarget::AdminVm => s == ADMINVM_NAME,
        CallTarget::Domain(n) => s == n.as_str(),
        CallTarget::NewDisposable { template } => {
            s.strip_prefix("@dispvm:") == Some(template.as_str())
        }
    }
}

/// How Qubes spells a `target=` / `default_target=` token when it compares it with the
/// ask targets: as written, except that dom0 is `dom0` and `@dispvm` (for
/// `default_target=` only) is the source's `@dispvm:DEFAULT_DISPVM`.
fn redirect_spelling(tok: &Token, source: Who<'_>, sys: &System, default: bool) -> Option<String> {
    match tok {
        Token::AdminVm => Some(ADMINVM_NAME.to_owned()),
        Token::DispVm if default => sys
            .default_dispvm_of(source)
            .map(|t| format!("@dispvm:{t}")),
        other => Some(other.to_string()),
    }
}

/// The requested target as Qubes' `assume_yes_for_ask` answers with it: as the caller
/// spelt it (`$` forms read as `@`), or `@default` for none or a domain that does not
/// exist.
pub(crate) fn requested_spelling<'a>(req: &'a Request, checked: &Checked<'_>) -> Cow<'a, str> {
    if checked.target == Intended::Default {
        return Cow::Borrowed("@default");
    }
    match req.target.strip_prefix('$') {
        Some(rest) => Cow::Owned(format!("@{rest}")),
        None => Cow::Borrowed(req.target.as_str()),
    }
}

/// `ask`: the targets to choose from, the preselected one; with `assume_yes` (the
/// requested target as [`requested_spelling`] spells it), the call allowed to that target
/// if it is one of them, as Qubes' `assume_yes_for_ask` does.
pub(crate) fn evaluate_ask<'r>(
    p: &AskParams,
    rule: &Rule,
    candidates: impl DoubleEndedIterator<Item = &'r Rule>,
    req: &Checked<'_>,
    sys: &System,
    assume_yes: Option<&str>,
) -> Resolution {
    // Qubes offers `target=` as written and compares answers with that spelling; the
    // computed targets are spelt as `CallTarget::to_answer`.
    let explicit = match &p.target {
        Some(tok) if assume_yes.is_some() || p.default_target.is_some() => {
            redirect_spelling(tok, req.source, sys, false)
        }
        _ => None,
    };
    let mut named = BTreeSet::new();
    let mut targets: Vec<CallTarget> = match &p.target {
        Some(tok) => {
            let resolved =
                redirect_intended(tok, sys).and_then(|i| resolve_target(&i, rule, req.source, sys));
            match resolved {
                Ok(t) if !is_loopback(&t, req.source) => {
                    named.insert(t.clone());
                    vec![t]
                }
                _ => Vec::new(),
            }
        }
        None => match collect_ask_targets(candidates, req, sys, &mut named) {
            Ok(set) => set.into_iter().collect(),
            Err(reason) => return Resolution::deny(reason),
        },
    };
    if !p.autostart {
        targets.retain(|t| running_ok(t, sys));
    }
    if targets.is_empty() {
        return Resolution::deny(DenyReason::NoAskTargets(rule.location.clone()));
    }
    let spelt = |t: &CallTarget, s: &str| match &explicit {
        Some(e) => e == s,
        None => answer_eq(t, s),
    };
    if let Some(answer) = assume_yes {
        return match targets.iter().find(|t| spelt(t, answer)) {
            Some(t) => Resolution::Allow(Allow {
                target: t.clone(),
                user: p.user.clone(),
                notify: p.notify,
                autostart: p.autostart,
                rule: rule.location.clone(),
            }),
            None => Resolution::deny(DenyReason::InvalidChoice(short(answer))),
        };
    }
    let default_target = p.default_target.as_ref().and_then(|tok| {
        let t = redirect_spelling(tok, req.source, sys, true)
            .and_then(|s| targets.iter().find(|t| spelt(t, &s)));
        if t.is_none() {
            tracing::warn!(rule = %rule.location, default_target = %tok, "default_target is not among the ask targets; dropped");
        }
        t.cloned()
    });
    named.retain(|t| targets.contains(t));
    Resolution::Ask(Ask {
        targets,
        default_target,
        named,
        user: p.user.clone(),
        notify: p.notify,
        autostart: p.autostart,
        rule: rule.location.clone(),
    })
}
