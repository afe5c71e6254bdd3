//! Inter-domain calls: the policy decision, the ask agent, and joining a caller to a service.
//!
//! A call arrives either as a `Call` stream from a domain's agent (the source is the domain
//! whose channel it came on, never anything the caller says) or from dom0 through D-Bus
//! `Call` (source `dom0`, policy token `@adminvm`). domaind evaluates the policy
//! ([`bulkhead_policy`], reloaded when its files change) against a snapshot of the system
//! (domains, classes, tags, running state, `default_dispvm`):
//! - deny (including a broken policy, no matching rule, or no answer to an ask): the caller
//!   gets `ExecMessage::Refused` (exit code 126);
//! - ask: the registered ask agent (`org.bulkhead.AskAgent1.Ask` on the bus) chooses a target
//!   within [`Calls::ask_timeout`]; none registered, an error or no answer in time is deny;
//! - allow: the target is resolved (a new disposable for `@dispvm`, removed when the call
//!   ends), started if halted, and a `Service` stream with the source set by domaind is
//!   opened to its agent and relayed to the caller ([`bulkhead_wire::exec::relay`]).
//!
//! Failures after the decision end with `ExecMessage::Failed` (exit code 125).
//!
//! Questions are guarded here, so it holds whatever ask agent answers them:
//! - a source has at most one question open; a call from it while one is open is refused
//!   without asking, and a source whose questions the user did not allow
//!   [`ASK_THROTTLE_LIMIT`] times within [`ASK_THROTTLE_WINDOW`] is refused without asking
//!   until the oldest of those ages out ([`AskGate`]);
//! - templates, disposable templates (as themselves) and service domains are offered only
//!   when a rule names them or the caller asked for them; any other is left out of the list;
//! - the preselected target is the one the caller asked for when it is offered, else the
//!   rule's `default_target=`, else none (never an arbitrary first).
//!
//! Tags of a domain come from its feature `tags` (whitespace-separated); a domain other than
//! a disposable-template may seed disposables when its feature `template_for_dispvms` is
//! `1`/`yes`/`true`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex as StdMutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_api::{AskAgent1Proxy, Error, ASK_AGENT_PATH};
use bulkhead_domain::{DomainClass, DomainName};
use bulkhead_policy::{Ask, CallTarget, Policy, PolicyConfig, System};
use tracing::{debug, info, warn};

/// Default time the ask agent has to answer.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(60);
/// The service the clipboard paste hotkey is evaluated as.
pub const PASTE_SERVICE: &str = "bulkhead.ClipboardPaste";
/// The source name of calls made from dom0.
pub const DOM0: &str = bulkhead_policy::ADMINVM_NAME;

/// How long questions the user did not allow count against their source.
pub const ASK_THROTTLE_WINDOW: Duration = Duration::from_secs(60);
/// How many questions of one source the user may leave unallowed (denied, unanswered,
/// answered with no offered target) within [`ASK_THROTTLE_WINDOW`] before the source is
/// refused without asking.
pub const ASK_THROTTLE_LIMIT: usize = 3;

/// Why a question was not put to the user at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskRefused {
    #[error("{domain} already has a question open; further calls from it are refused until it is answered")]
    AlreadyAsking { domain: String },
    #[error("{domain} asked {count} questions the user did not allow within {window_secs} s; it may ask again in {retry_secs} s")]
    Throttled {
        domain: String,
        count: usize,
        window_secs: u64,
        retry_secs: u64,
    },
}

#[derive(Debug, Default)]
struct GateState {
    /// Sources with a question open.
    open: HashSet<String>,
    /// Per source, when its questions that were not allowed ended (oldest first).
    unallowed: HashMap<String, VecDeque<Instant>>,
}

/// One open question per source, and throttling of a source that keeps asking.
#[derive(Debug)]
pub struct AskGate {
    state: StdMutex<GateState>,
    window: Duration,
    limit: usize,
}

impl Default for AskGate {
    fn default() -> Self {
        Self::new(ASK_THROTTLE_WINDOW, ASK_THROTTLE_LIMIT)
    }
}

impl AskGate {
    pub fn new(window: Duration, limit: usize) -> Self {
        Self {
            state: StdMutex::new(GateState::default()),
            window,
            limit,
        }
    }

    /// Opens a question from `source` at `now`, or says why none may be asked. The question
    /// stays open until the ticket is dropped ([`AskTicket::allowed`] first if the user
    /// allowed the call).
    pub fn open(&self, source: &str, now: Instant) -> Result<AskTicket<'_>, AskRefused> {
        let mut st = lock(&self.state);
        if st.open.contains(source) {
            return Err(AskRefused::AlreadyAsking {
                domain: source.to_owned(),
            });
        }
        if let Some(q) = st.unallowed.get_mut(source) {
            while q
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
            {
                q.pop_front();
            }
            if q.len() >= self.limit {
                let retry = q
                    .front()
                    .map(|t| {
                        self.window
                            .saturating_sub(now.saturating_duration_since(*t))
                    })
                    .unwrap_or_default();
                return Err(AskRefused::Throttled {
                    domain: source.to_owned(),
                    count: q.len(),
                    window_secs: self.window.as_secs(),
                    retry_secs: retry.as_secs().max(1),
                });
            }
            if q.is_empty() {
                st.unallowed.remove(source);
            }
        }
        st.open.insert(source.to_owned());
        Ok(AskTicket {
            gate: self,
            source: source.to_owned(),
            allowed: false,
        })
    }

    fn close(&self, source: &str, allowed: bool) {
        let mut st = lock(&self.state);
        st.open.remove(source);
        if !allowed {
            st.unallowed
                .entry(source.to_owned())
                .or_default()
                .push_back(Instant::now());
        }
    }
}

/// An open question (see [`AskGate::open`]); closes it when dropped.
#[derive(Debug)]
pub struct AskTicket<'a> {
    gate: &'a AskGate,
    source: String,
    allowed: bool,
}

impl AskTicket<'_> {
    /// The user allowed the call: the question does not count against its source.
    pub fn allowed(mut self) {
        self.allowed = true;
    }
}

impl Drop for AskTicket<'_> {
    fn drop(&mut self) {
        self.gate.close(&self.source, self.allowed);
    }
}

/// Whether a domain of `class` is offered as an ask target only when named (by a rule or
/// by the caller): its root or its services are shared by other domains.
fn offered_only_when_named(class: DomainClass) -> bool {
    matches!(
        class,
        DomainClass::Template | DomainClass::DisposableTemplate | DomainClass::Service
    )
}

/// Leaves out of `ask.targets` the templates and service domains that neither a rule nor
/// the caller (`requested`) names, and preselects the requested target if it is offered,
/// else the rule's default if it still is, else none.
pub fn narrow_ask(ask: &mut Ask, requested: &str, sys: &System) {
    let requested_target = ask
        .targets
        .iter()
        .find(|t| !requested.is_empty() && t.to_answer() == requested)
        .cloned();
    let named = |t: &CallTarget| {
        ask.named.contains(t)
            || ask.default_target.as_ref() == Some(t)
            || requested_target.as_ref() == Some(t)
    };
    let keep: Vec<CallTarget> = ask
        .targets
        .iter()
        .filter(|t| match t {
            CallTarget::Domain(n) => {
                named(t)
                    || !sys
                        .domain(n.as_str())
                        .is_some_and(|d| offered_only_when_named(d.class))
            }
            CallTarget::AdminVm | CallTarget::NewDisposable { .. } => true,
        })
        .cloned()
        .collect();
    for t in ask.targets.iter().filter(|t| !keep.contains(t)) {
        debug!(target = %t, "not offered: a template or service domain nobody named");
    }
    ask.targets = keep;
    ask.default_target = requested_target.or_else(|| ask.default_target.take());
}

/// Why a call did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The policy (or the user) refused it: exit code 126.
    #[error("{0}")]
    Refused(String),
    /// Anything else went wrong: exit code 125.
    #[error("{0}")]
    Failed(String),
    /// A limit refused it (live disposables, the memory margin): exit code 125 for a
    /// domain's call, `LimitReached` for dom0's.
    #[error("{0}")]
    Limit(String),
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(m) => Error::AccessDenied(format!("call refused: {m}")),
            CallError::Failed(m) => Error::Agent(m),
            CallError::Limit(m) => Error::LimitReached(m),
        }
    }
}

/// Call state shared by the agents' streams and the D-Bus methods.
pub struct Calls {
    policy_config: PolicyConfig,
    policy: StdMutex<Option<Policy>>,
    ask_timeout: Duration,
    pub(crate) dom0_default_dispvm: Option<DomainName>,
    bus: OnceLock<zbus::Connection>,
    /// Unique bus name of the registered ask agent.
    ask_agent: StdMutex<Option<String>>,
    /// One open question per source; throttling.
    pub(crate) ask_gate: AskGate,
    /// The newest decision per (source, requested target), for the policy editor.
    last: StdMutex<HashMap<(String, String), LastDecision>>,
}

/// What was decided for the newest call from one domain to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastDecision {
    /// `SERVICE` or `SERVICE+ARG`.
    pub service: String,
    /// "allowed", "denied", "allowed after asking", "denied after asking".
    pub outcome: &'static str,
    /// The rule that decided (`file:line`), or the reason of a denial (which names the rule
    /// when one decided).
    pub detail: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// Pairs of domains whose last decision is kept (the oldest goes first).
pub const MAX_DECISIONS: usize = 1024;
/// Of those, at most this many per source: a domain calling made-up targets pushes out only
/// its own records, never another domain's or dom0's.
pub const MAX_DECISIONS_PER_SOURCE: usize = 32;

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Calls {
    pub fn new(
        policy_config: PolicyConfig,
        ask_timeout: Duration,
        dom0_default_dispvm: Option<DomainName>,
    ) -> Self {
        Self {
            policy_config,
            policy: StdMutex::new(None),
            ask_timeout,
            dom0_default_dispvm,
            bus: OnceLock::new(),
            ask_agent: StdMutex::new(None),
            ask_gate: AskGate::default(),
            last: StdMutex::new(HashMap::new()),
        }
    }

    /// Keeps `decision` as the last one from `source` to `target`, bounded: a new pair first
    /// pushes out the source's oldest when it has [`MAX_DECISIONS_PER_SOURCE`], else the
    /// oldest of all when [`MAX_DECISIONS`] are kept.
    pub(crate) fn record_decision(&self, source: &str, target: &str, decision: LastDecision) {
        let mut last = lock(&self.last);
        let key = (source.to_owned(), target.to_owned());
        if !last.contains_key(&key) {
            let oldest_of = |from_source: bool| {
                last.iter()
                    .filter(|(k, _)| !from_source || k.0 == source)
                    .min_by_key(|(_, d)| d.at)
                    .map(|(k, _)| k.clone())
            };
            let own = last.keys().filter(|k| k.0 == source).count();
            let evict = if own >= MAX_DECISIONS_PER_SOURCE {
                oldest_of(true)
            } else if last.len() >= MAX_DECISIONS {
                oldest_of(false)
            } else {
                None
            };
            if let Some(k) = evict {
                last.remove(&k);
            }
        }
        last.insert(key, decision);
    }

    /// The last decision from `source` to `target` (the target as the caller named it).
    pub fn last_decision(&self, source: &str, target: &str) -> Option<LastDecision> {
        lock(&self.last)
            .get(&(source.to_owned(), target.to_owned()))
            .cloned()
    }

    /// The bus connection used to reach the ask agent (set once the daemon is on the bus).
    pub fn set_bus(&self, conn: zbus::Connection) {
        let _ = self.bus.set(conn);
    }

    pub fn ask_timeout(&self) -> Duration {
        self.ask_timeout
    }

    pub fn policy_config(&self) -> &PolicyConfig {
        &self.policy_config
    }

    /// Record `sender` (a unique bus name) as the ask agent, replacing any earlier one.
    pub fn register_ask_agent(&self, sender: &str) {
        info!(agent = sender, "ask agent registered");
        *lock(&self.ask_agent) = Some(sender.to_owned());
    }

    /// Whether an ask agent is registered.
    pub(crate) fn has_ask_agent(&self) -> bool {
        lock(&self.ask_agent).is_some()
    }

    /// Run `f` on the current policy, loading it first or reloading it if its files changed.
    pub(crate) fn with_policy<T>(&self, f: impl FnOnce(&Policy) -> T) -> T {
        let mut guard = lock(&self.policy);
        match guard.as_mut() {
            Some(p) => {
                p.load_if_changed();
            }
            None => *guard = Some(Policy::load(self.policy_config.clone())),
        }
        match guard.as_ref() {
            Some(p) => f(p),
            // Just loaded above.
            None => f(&Policy::load(self.policy_config.clone())),
        }
    }

    /// Ask the registered agent; `None` is deny (no agent, an error, "" or a timeout).
    pub(crate) async fn ask(
        &self,
        source: &str,
        service: &str,
        arg: &str,
        ask: &Ask,
    ) -> Option<String> {
        let agent = lock(&self.ask_agent).clone();
        let (Some(conn), Some(agent)) = (self.bus.get(), agent) else {
            info!(source, service, "ask: no ask agent registered; denying");
            return None;
        };
        let targets: Vec<String> = ask.targets.iter().map(CallTarget::to_answer).collect();
        let target_refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        let default = ask
            .default_target
            .as_ref()
            .map(CallTarget::to_answer)
            .unwrap_or_default();
        let proxy = async {
            AskAgent1Proxy::builder(conn)
                .destination(agent.clone())?
                .path(ASK_AGENT_PATH)?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
        };
        let call = async {
            let p = proxy.await?;
            p.ask(source, service, arg, &target_refs, &default).await
        };
        match tokio::time::timeout(self.ask_timeout, call).await {
            Ok(Ok(answer)) if answer.is_empty() => {
                info!(source, service, "ask: the user denied");
                None
            }
            Ok(Ok(answer)) => {
                info!(source, service, answer = %answer, "ask: the user chose");
                Some(answer)
            }
            Ok(Err(e)) => {
                warn!(source, service, agent = %agent, error = %e, "ask agent failed; denying");
                None
            }
            Err(_) => {
                warn!(
                    source,
                    service,
                    secs = self.ask_timeout.as_secs_f32(),
                    "ask agent did not answer in time; denying"
                );
                None
            }
        }
    }
}

/// `(file, line, message)` rows for D-Bus, from policy diagnostics.
pub fn diagnostics_rows(d: &[bulkhead_policy::Diagnostic]) -> Vec<(String, u32, String)> {
    d.iter()
        .map(|d| {
            (
                d.file.display().to_string(),
                u32::try_from(d.line).unwrap_or(u32::MAX),
                d.message(),
            )
        })
        .collect()
}

/// Most bytes `CheckPolicyText` accepts.
pub const MAX_CHECK_TEXT: usize = 1024 * 1024;

impl Calls {
    /// `CheckPolicy`: every error of the installed policy.
    pub fn check_installed(&self) -> Vec<(String, u32, String)> {
        diagnostics_rows(Policy::load(self.policy_config.clone()).diagnostics())
    }

    /// `CheckPolicyText`: the errors of `text` as the policy file `file_name` (a plain file
    /// name; includes resolve against the policy directory).
    pub fn check_text(
        &self,
        file_name: &str,
        text: &str,
    ) -> Result<Vec<(String, u32, String)>, Error> {
        if file_name.is_empty() || file_name.contains('/') || file_name.len() > 255 {
            return Err(Error::InvalidProperty(format!(
                "'{file_name}' is not a policy file name (a plain name such as 30-user.policy)"
            )));
        }
        if text.len() > MAX_CHECK_TEXT {
            return Err(Error::InvalidProperty(format!(
                "the policy text is {} bytes; at most {MAX_CHECK_TEXT} are checked",
                text.len()
            )));
        }
        let label = self.policy_config.dir.join(file_name);
        let p = Policy::from_text_with(
            &label,
            text.as_bytes(),
            Some(&self.policy_config.dir),
            self.policy_config.limits,
        );
        Ok(diagnostics_rows(p.diagnostics()))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn last_decisions_are_bounded_and_the_oldest_goes() {
        let c = Calls::new(
            PolicyConfig::new("/nonexistent"),
            Duration::from_secs(1),
            None,
        );
        let d = |at: u64| LastDecision {
            service: "s".into(),
            outcome: "allowed",
            detail: String::new(),
            at,
        };
        for i in 0..MAX_DECISIONS {
            c.record_decision(&format!("d{i}"), "t", d(100 + i as u64));
        }
        // an update of a known pair forgets nothing
        c.record_decision("d5", "t", d(10_000));
        assert!(c.last_decision("d0", "t").is_some());
        c.record_decision("new", "t", d(20_000));
        assert!(c.last_decision("d0", "t").is_none(), "the oldest went");
        assert!(c.last_decision("d1", "t").is_some());
        assert_eq!(c.last_decision("d5", "t").map(|x| x.at), Some(10_000));
        assert_eq!(lock(&c.last).len(), MAX_DECISIONS);
        // one source calling many targets pushes out only its own records
        for i in 0..(MAX_DECISIONS_PER_SOURCE + 5) {
            c.record_decision("flood", &format!("t{i}"), d(30_000 + i as u64));
        }
        assert!(
            c.last_decision("d5", "t").is_some(),
            "another source's record stays"
        );
        let own = lock(&c.last).keys().filter(|k| k.0 == "flood").count();
        assert_eq!(own, MAX_DECISIONS_PER_SOURCE);
        assert!(c.last_decision("flood", "t0").is_none());
    }
    use super::*;
    use bulkhead_policy::{DomainInfo, Request, Resolution};

    fn dn(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    #[test]
    fn one_open_question_per_source() {
        let gate = AskGate::default();
        let now = Instant::now();
        let t = gate.open("untrusted", now).unwrap();
        assert!(matches!(
            gate.open("untrusted", now),
            Err(AskRefused::AlreadyAsking { .. })
        ));
        // Another source may ask meanwhile.
        drop(gate.open("work", now).unwrap());
        t.allowed();
        // Allowed questions do not count.
        for _ in 0..10 {
            gate.open("untrusted", Instant::now()).unwrap().allowed();
        }
    }

    #[test]
    fn a_source_that_keeps_asking_is_throttled() {
        let gate = AskGate::new(Duration::from_secs(60), 3);
        for _ in 0..3 {
            drop(gate.open("untrusted", Instant::now()).unwrap());
        }
        let err = gate.open("untrusted", Instant::now()).unwrap_err();
        assert!(
            matches!(err, AskRefused::Throttled { count: 3, .. }),
            "{err}"
        );
        // Others are not affected; the source may ask again once the window has passed.
        drop(gate.open("work", Instant::now()).unwrap());
        gate.open("untrusted", Instant::now() + Duration::from_secs(61))
            .unwrap()
            .allowed();
    }

    fn system() -> System {
        let mut sys = System::new();
        for (n, class) in [
            ("work", DomainClass::App),
            ("personal", DomainClass::App),
            ("untrusted", DomainClass::App),
            ("debian-12", DomainClass::Template),
            ("net", DomainClass::Service),
            ("dvm", DomainClass::DisposableTemplate),
        ] {
            sys.insert(DomainInfo::new(dn(n), class));
        }
        sys
    }

    fn ask_for(policy: &str, source: &str, target: &str) -> Ask {
        let p = Policy::from_text_with(
            std::path::Path::new("/t/30-test.policy"),
            policy.as_bytes(),
            None,
            Default::default(),
        );
        let sys = system();
        match p.evaluate(&Request::new("svc.A", "", source, target), &sys) {
            Resolution::Ask(mut a) => {
                narrow_ask(&mut a, target, &sys);
                a
            }
            other => panic!("expected ask: {other:?}"),
        }
    }

    fn names(a: &Ask) -> Vec<String> {
        a.targets.iter().map(CallTarget::to_answer).collect()
    }

    #[test]
    fn templates_and_service_domains_only_when_named() {
        let any = "svc.A * @anyvm @anyvm ask\n";
        let a = ask_for(any, "untrusted", "work");
        // A new disposable of dvm is offered, dvm itself is not.
        assert_eq!(names(&a), vec!["personal", "work", "@dispvm:dvm"]);
        assert_eq!(a.default_target, Some(CallTarget::Domain(dn("work"))));
        // Nothing requested: nothing preselected (never the first).
        let a = ask_for(any, "untrusted", "@default");
        assert_eq!(a.default_target, None);
        // The caller names the template: offered and preselected.
        let a = ask_for(any, "untrusted", "debian-12");
        assert_eq!(
            names(&a),
            vec!["debian-12", "personal", "work", "@dispvm:dvm"]
        );
        assert_eq!(a.default_target, Some(CallTarget::Domain(dn("debian-12"))));
        // A rule names the service domain.
        let a = ask_for(
            "svc.A * @anyvm net ask\nsvc.A * @anyvm @anyvm ask\n",
            "untrusted",
            "work",
        );
        assert_eq!(names(&a), vec!["net", "personal", "work", "@dispvm:dvm"]);
        // default_target= names one too; the requested target still wins the preselection.
        let a = ask_for(
            "svc.A * @anyvm @anyvm ask default_target=debian-12\n",
            "untrusted",
            "work",
        );
        assert_eq!(
            names(&a),
            vec!["debian-12", "personal", "work", "@dispvm:dvm"]
        );
        assert_eq!(a.default_target, Some(CallTarget::Domain(dn("work"))));
        let a = ask_for(
            "svc.A * @anyvm @anyvm ask default_target=debian-12\n",
            "untrusted",
            "@default",
        );
        assert_eq!(a.default_target, Some(CallTarget::Domain(dn("debian-12"))));
    }
}
