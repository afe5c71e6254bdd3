//! The Bulkhead policy engine: Qubes 4.1+ qrexec policy files, parsed and evaluated.
//!
//! Nothing crosses between domains unless this engine says so. The grammar and semantics
//! are Qubes' (see `shared/reference/qubes.md` §1), so Qubes users can read and write our
//! policy files:
//!
//! ```text
//! # SERVICE          ARGUMENT  SOURCE      TARGET     ACTION [PARAM=VALUE ...]
//! bulkhead.Filecopy  *         @anyvm      @anyvm     ask
//! bulkhead.OpenInVM  *         @anyvm      @dispvm    allow
//! !include-dir include
//! ```
//!
//! - [`Policy::load`] reads the `*.policy` files of the policy directory and of an optional
//!   runtime directory, merged by file name (runtime first) and read in C-locale name
//!   order. It never fails: errors are collected as [`Diagnostic`]s (`file:line: message`)
//!   and **any** error makes every call denied ([`DenyReason::PolicyInvalid`]).
//! - [`Policy::evaluate`] decides a [`Request`] against a [`System`] snapshot: the first
//!   matching rule wins, no match is deny. The result is a [`Resolution`]: allow (with the
//!   resolved [`CallTarget`], e.g. a new disposable of the source's `default_dispvm` for
//!   `@dispvm`), deny, or ask (with the targets computed as Qubes computes them).
//! - [`check`] lints a directory for `bulkhead policy check` and the GUI editor.
//! - [`Policy::load_if_changed`] reloads when a file or directory changed (size, mtime,
//!   ctime or inode of everything the last load looked at); the caller picks when.
//!
//! # Agreement with Qubes 4.3
//!
//! The engine is held against Qubes' own parser (`qubes-core-qrexec`, branch `release4.3`
//! = v4.3.12, `qrexec/policy/parser.py`) on about ten thousand cases
//! (`tests/qubes43_oracle.rs`). As in Qubes 4.3:
//! - `uuid:UUID` is accepted in the SOURCE and TARGET columns, in `target=` /
//!   `default_target=` and in requests, and `@dispvm:uuid:UUID` wherever `@dispvm:NAME` is
//!   (in the SOURCE column both, and `@dispvm:@tag:T`, parse and never match). A rule naming a domain matches a
//!   request naming it by UUID and the other way round; a rule's `@dispvm:uuid:…` does not
//!   match a requested `@dispvm` (Qubes compares it with `@dispvm:DEFAULT` as text).
//! - UUIDs are compared as written; domains' UUIDs are lower case ([`DomainInfo::with_uuid`]
//!   lower-cases), so an upper-case UUID in a policy matches nothing (a warning is logged)
//!   and a requested upper-case UUID is an unknown target, i.e. `@default`.
//! - [`Policy::evaluate_assume_yes`] (`assume_yes_for_ask`) answers with the requested
//!   target as the caller spelt it: `dom0` can be allowed, `@adminvm`, `uuid:…`, `@dispvm`
//!   and `@default` cannot (except that `ask target=X` is answered by X as written).
//! - `default_target=` is compared with the ask targets as Qubes spells both: `target=` as
//!   written, `default_target=@dispvm` as `@dispvm:DEFAULT_DISPVM`, dom0 as `dom0`.
//! - A `default_dispvm` that is not a disposable template is still what `@dispvm:NAME` /
//!   `@dispvm:@tag:T` rules compare a requested `@dispvm` with (see the differences for
//!   what `@dispvm` then resolves to).
//! - As in Qubes: a requested target that does not exist is treated as `@default`; the
//!   `$dispvm` / `$default` spellings VMs send are accepted in requests (Qubes' daemon
//!   rewrites them); no match and failed resolutions deny with `notify` set.
//!
//! # Deliberate differences from Qubes 4.3
//!
//! Each is named as in the oracle data (`tests/qubes43_oracle.tsv`), which records Qubes'
//! answer next to Bulkhead's for every case where they differ. All but `adminvm-tag-type`
//! fail closed (deny where Qubes would not, never the other way round).
//! - `strict-tokens`: literal names in rules must be valid domain names, `uuid:` values
//!   8-4-4-4-12 hex UUIDs, tags `[A-Za-z0-9_.-]{1,64}`, `@type:` a known class (Bulkhead's:
//!   `app`, `template`, `standalone`, `disposable-template`, `disposable`, `service`,
//!   `admin`; or Qubes': `AppVM`, ...), `user=` a user name. Qubes accepts any string
//!   there; it could never match, so a typo would silently disable a rule. Here it is an
//!   error, and a policy with errors denies everything.
//! - `adminvm-tag-type`: `@tag:` and `@type:` in the TARGET column match a call aimed at
//!   dom0 (when dom0 has that tag / type) however the caller spells dom0. Qubes matches
//!   them for `dom0` and `uuid:00…0` but not for `@adminvm`; a decision should not depend
//!   on the spelling of the same target. This one allows more than Qubes: a call spelt
//!   `@adminvm` that such a rule allows, which Qubes allows only when spelt `dom0`.
//! - `loopback`: a call whose target is its source is refused whatever the spelling. Qubes
//!   compares the names as text, so `uuid:` of the source itself (or `uuid:00…0` from dom0)
//!   gets through, and `ask target=SOURCE` offers the source, which then fails.
//! - `ask-target-unresolved`: `ask target=X` where X is no domain (or `@dispvm:X` where X
//!   is no disposable template) leaves nothing to choose and denies; Qubes offers X, and
//!   choosing it fails.
//! - `ask-target-dispvm`: `ask target=@dispvm` offers the new disposable of the source's
//!   default template (`@dispvm:TEMPLATE`), and denies without one; Qubes offers `@dispvm`
//!   unresolved. Under `assume_yes_for_ask` a requested `@dispvm` is allowed to that
//!   disposable, as Qubes' `policy.EvalSimple` answers allow (its full evaluation fails).
//! - `default-dispvm-not-template`: a `default_dispvm` that is not a disposable template
//!   never becomes a new disposable: `@dispvm` with it denies
//!   ([`DenyReason::NotDispvmTemplate`]), and `ask` neither offers nor preselects it. Qubes
//!   resolves `@dispvm` to it and the disposable's creation is then refused by qubesd.
//! - `qubes-error`: where Qubes fails with an internal error the call is denied with a
//!   reason, which is what Qubes' failure amounts to: a rule's `@dispvm:NAME` /
//!   `@dispvm:uuid:…` compared with a requested `@dispvm` from a source without
//!   `default_dispvm` ([`DenyReason::NoDefaultDispvmToCompare`], not the next rule); ask
//!   targets computed from a rule whose `@dispvm:…` names no domain
//!   ([`DenyReason::UnknownDispvmTemplate`]); `ask autostart=no target=X` with X no domain.
//!
//! Further choices where Qubes is silent or Bulkhead is stricter (not covered by the
//! oracle, which evaluates single files against a fixed system):
//! - Qubes class names map onto Bulkhead classes: `AppVM` = app, disposable-template and
//!   service domains (Qubes' disposable templates and sys-* qubes are AppVMs); `DispVM` =
//!   disposable; `AdminVM` = dom0; `RemoteVM` matches nothing.
//! - Include cycles are refused with an error at the including line; includes nest at most
//!   [`Limits::max_include_depth`] deep; a load reads at most [`Limits::max_files`] files.
//!   Relative include paths resolve against the directory of the top-level policy file the
//!   chain started from (Qubes' loader); absolute paths are used as given.
//! - `!compat-4.0` is an error: there is no legacy policy directory.
//! - Requests from dom0 are evaluated like any other (Qubes' daemon skips policy for
//!   them); the default policy allows them explicitly.
//! - All errors are reported, not only the first. Whole-file errors (unreadable, too large,
//!   invalid name) are reported at line 0.
//! - [`Ask::answer`] turns the user's choice into an [`Allow`] (only a listed target).
#![forbid(unsafe_code)]

mod error;
mod eval;
mod load;
mod rule;
mod system;
mod token;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use error::{Diagnostic, ErrorKind};
pub use eval::{
    Allow, Ask, CallTarget, Deny, DenyReason, Resolution, MAX_ARGUMENT_LEN, MAX_SERVICE_LEN,
    MAX_TARGET_LEN,
};
pub use load::{Limits, POLICY_SUFFIX};
pub use rule::{Action, AllowParams, AskParams, Location, Rule};
pub use system::{DomainInfo, Request, System, TypeSel, ADMINVM_NAME, DOM0_UUID};
pub use token::{Token, MAX_TAG_LEN, MAX_TOKEN_LEN};

use load::{Fingerprint, Loader};

/// Where the policy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The policy directory (Qubes: `/etc/qubes/policy.d`); it must exist.
    pub dir: PathBuf,
    /// The runtime directory (Qubes: `/run/qubes/policy.d`), read first, optional.
    pub runtime_dir: Option<PathBuf>,
    pub limits: Limits,
}

/// Name of the policy directory under the config and runtime directories.
pub const POLICY_DIR_NAME: &str = "policy.d";

impl PolicyConfig {
    /// The installed layout: `<config_dir>/policy.d` (e.g. `/etc/bulkhead/policy.d`) with the
    /// runtime directory `<runtime_dir>/policy.d` (e.g. `/run/bulkhead/policy.d`).
    pub fn from_paths(paths: &bulkhead_domain::Paths) -> Self {
        Self::new(paths.config_dir.join(POLICY_DIR_NAME))
            .with_runtime_dir(paths.runtime_dir.join(POLICY_DIR_NAME))
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            runtime_dir: None,
            limits: Limits::default(),
        }
    }

    pub fn with_runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// A loaded policy: the flattened rule list, or the errors that make it deny everything.
#[derive(Debug, Clone)]
pub struct Policy {
    config: Option<PolicyConfig>,
    rules: Vec<Rule>,
    diagnostics: Vec<Diagnostic>,
    fingerprint: Fingerprint,
    /// For each service named in some rule: indices of its own rules, in policy order.
    by_service: HashMap<String, Vec<u32>>,
    /// Indices of the `*` service rules, in policy order.
    wildcard: Vec<u32>,
    /// Every literal domain name in a SOURCE or TARGET column, numbered, so that matching
    /// a name is an integer compare.
    names: HashMap<String, u32>,
    /// Per rule: the number of its SOURCE and TARGET names, or [`NO_NAME`].
    name_keys: Vec<[u32; 2]>,
}

/// A rule column that is not a literal name.
const NO_NAME: u32 = u32::MAX;

/// Merge two ascending index lists (a service's own rules and the `*` rules).
#[derive(Clone)]
struct Merge<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Merge<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match (self.a.split_first(), self.b.split_first()) {
            (Some((x, ra)), Some((y, rb))) => {
                if x < y {
                    self.a = ra;
                    Some(*x)
                } else {
                    self.b = rb;
                    Some(*y)
                }
            }
            (Some((x, ra)), None) => {
                self.a = ra;
                Some(*x)
            }
            (None, Some((y, rb))) => {
                self.b = rb;
                Some(*y)
            }
            (None, None) => None,
        }
    }
}

impl Policy {
    /// Load the policy directories. Never fails; see [`Policy::diagnostics`].
    pub fn load(config: PolicyConfig) -> Self {
        let mut loader = Loader::new(config.limits);
        let mut dirs = Vec::new();
        if let Some(rt) = &config.runtime_dir {
            dirs.push((rt.clone(), false));
        }
        dirs.push((config.dir.clone(), true));
        loader.load_dirs(&dirs);
        Self::build(Some(config), loader)
    }

    /// Load one policy directory with default limits.
    pub fn load_dir(dir: impl Into<PathBuf>) -> Self {
        Self::load(PolicyConfig::new(dir))
    }

    /// Parse `text` as the policy file `label`. Includes are errors (no file system access).
    pub fn from_text(label: impl AsRef<Path>, text: &[u8]) -> Self {
        Self::from_text_with(label, text, None, Limits::default())
    }

    /// Parse `text` as the policy file `label`; includes resolve against `base` if given.
    pub fn from_text_with(
        label: impl AsRef<Path>,
        text: &[u8],
        base: Option<&Path>,
        limits: Limits,
    ) -> Self {
        let mut loader = Loader::new(limits);
        if text.len() as u64 > limits.max_file_bytes {
            loader.diagnostics.push(Diagnostic::new(
                label.as_ref(),
                0,
                ErrorKind::FileTooLarge {
                    size: text.len() as u64,
                    limit: limits.max_file_bytes,
                },
            ));
        } else {
            loader.load_text(label.as_ref(), text, base);
        }
        Self::build(None, loader)
    }

    fn build(config: Option<PolicyConfig>, loader: Loader) -> Self {
        let rules = loader.rules;
        let mut by_service: HashMap<String, Vec<u32>> = HashMap::new();
        let mut wildcard = Vec::new();
        let mut names: HashMap<String, u32> = HashMap::new();
        let mut name_keys = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            // Bounded by Limits::max_rules, far below u32::MAX.
            let i = u32::try_from(i).unwrap_or(NO_NAME);
            match &r.service {
                None => wildcard.push(i),
                Some(s) => by_service.entry(s.clone()).or_default().push(i),
            }
            let mut key = |t: &Token| match t {
                Token::Name(n) => {
                    let next = u32::try_from(names.len()).unwrap_or(NO_NAME);
                    *names.entry(n.as_str().to_owned()).or_insert(next)
                }
                _ => NO_NAME,
            };
            name_keys.push([key(&r.source), key(&r.target)]);
        }
        let policy = Self {
            config,
            rules,
            diagnostics: loader.diagnostics,
            fingerprint: loader.fingerprint,
            by_service,
            wildcard,
            names,
            name_keys,
        };
        if policy.diagnostics.is_empty() {
            tracing::debug!(rules = policy.rules.len(), "policy loaded");
        } else {
            for d in &policy.diagnostics {
                tracing::error!("policy error: {d}");
            }
            tracing::error!(
                errors = policy.diagnostics.len(),
                "policy has errors: every call will be denied until they are fixed"
            );
        }
        policy
    }

    /// The flattened rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every error found; non-empty means every call is denied.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub fn config(&self) -> Option<&PolicyConfig> {
        self.config.as_ref()
    }

    /// Indices of the rules that can apply to `service`, in policy order.
    fn candidates(&self, service: &str) -> Merge<'_> {
        Merge {
            a: self.by_service.get(service).map_or(&[], Vec::as_slice),
            b: &self.wildcard,
        }
    }

    /// Decide `req`. First match wins; no match is deny; a policy with errors denies all.
    pub fn evaluate(&self, req: &Request, sys: &System) -> Resolution {
        self.decide(req, sys, false)
    }

    fn decide(&self, req: &Request, sys: &System, assume_yes: bool) -> Resolution {
        if let Some(first) = self.diagnostics.first() {
            return Resolution::deny(DenyReason::PolicyInvalid {
                count: self.diagnostics.len(),
                first: first.to_string(),
            });
        }
        let checked = match eval::check_request(req, sys) {
            Ok(c) => c,
            Err(reason) => return Resolution::deny(reason),
        };
        let source_key = match checked.source {
            system::Who::Domain(d) => self.names.get(d.name.as_str()).copied(),
            system::Who::Dom0 => None,
        };
        let target_key = match &checked.target {
            system::Intended::Name(n) => self.names.get(n.as_str()).copied(),
            _ => None,
        };
        let candidates = self.candidates(checked.service);
        for i in candidates.clone() {
            let (Some(rule), Some(&[src, tgt])) =
                (self.rules.get(i as usize), self.name_keys.get(i as usize))
            else {
                continue;
            };
            // Candidates have the requested service or `*`: only the argument is left.
            if rule
                .argument
                .as_deref()
                .is_some_and(|a| a != checked.argument)
            {
                continue;
            }
            let source_ok = if src == NO_NAME {
                eval::match_source(&rule.source, checked.source, sys)
            } else {
                Some(src) == source_key
            };
            if !source_ok {
                continue;
            }
            let target_ok = if tgt == NO_NAME {
                match eval::match_target(&rule.target, &checked.target, checked.source, sys) {
                    Ok(m) => m,
                    Err(eval::NoDefaultToCompare) => {
                        return Resolution::deny(DenyReason::NoDefaultDispvmToCompare {
                            rule: rule.location.clone(),
                            domain: checked.source.name().to_owned(),
                        })
                    }
                }
            } else {
                Some(tgt) == target_key
            };
            if !target_ok {
                continue;
            }
            return match &rule.action {
                Action::Deny { notify } => Resolution::Deny(Deny {
                    notify: *notify,
                    reason: DenyReason::ByRule(rule.location.clone()),
                }),
                Action::Allow(p) => eval::evaluate_allow(p, rule, &checked, sys),
                Action::Ask(p) => {
                    let rules: Vec<&Rule> = candidates
                        .filter_map(|j| self.rules.get(j as usize))
                        .collect();
                    let answer = assume_yes.then(|| eval::requested_spelling(req, &checked));
                    eval::evaluate_ask(p, rule, rules.into_iter(), &checked, sys, answer.as_deref())
                }
            };
        }
        Resolution::deny(DenyReason::NoMatchingRule)
    }

    /// Decide `req` with `ask` taken as yes for the requested target, as Qubes'
    /// `assume_yes_for_ask` does: used where a user action is the consent, e.g. the
    /// clipboard paste hotkey. The answer is the requested target as the caller spelt it
    /// (`@default` for none), so it is allowed only if the ask would offer it under that
    /// spelling: `dom0`, a name or `@dispvm:TEMPLATE` among the computed targets, or the
    /// rule's `target=` as written. `@adminvm`, `@dispvm` (except for `ask target=@dispvm`),
    /// `@default` and `uuid:` spellings are therefore denied, as in Qubes.
    pub fn evaluate_assume_yes(&self, req: &Request, sys: &System) -> Resolution {
        self.decide(req, sys, true)
    }

    /// Whether anything the last load read (or looked for) changed since.
    pub fn changed(&self) -> bool {
        self.config.is_some()
            && self
                .fingerprint
                .iter()
                .any(|(path, old)| load::stamp(path) != *old)
    }

    /// Reload if [`Policy::changed`]; returns whether it reloaded. A policy parsed from
    /// text never reloads.
    pub fn load_if_changed(&mut self) -> bool {
        if !self.changed() {
            return false;
        }
        if let Some(config) = self.config.take() {
            tracing::info!(dir = %config.dir.display(), "policy files changed; reloading");
            *self = Self::load(config);
            return true;
        }
        false
    }
}

/// Lint the policy directory `dir`: every error, as `file:line: message`.
pub fn check(dir: impl Into<PathBuf>) -> Vec<Diagnostic> {
    check_config(&PolicyConfig::new(dir))
}

/// Lint with a full configuration (runtime directory, limits).
pub fn check_config(config: &PolicyConfig) -> Vec<Diagnostic> {
    Policy::load(config.clone()).diagnostics
}

#[cfg(test)]
mod tests;
