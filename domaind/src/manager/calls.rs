//! The manager's side of inter-domain calls (see [`crate::calls`]): the policy's view of the
//! system, the decision, opening the service on the target, and dom0's `Call`.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bulkhead_api::Error;
use bulkhead_domain::DomainName;
use bulkhead_policy::{Allow, CallTarget, Request, Resolution, System};
use bulkhead_wire::{
    exec, CallRequest, ExecMessage, Incoming, IncomingEvent, OpenRequest, ServiceRequest, Stream,
};
use tracing::{debug, info, warn};

use crate::calls::{narrow_ask, CallError, LastDecision, DOM0, PASTE_SERVICE};
use crate::state::DomainState;
use crate::stdio;

use super::{exit_code, CallerGone, Manager, Stdio};

/// `+ARG` as the policy engine takes it ("" for no argument).
fn policy_argument(arg: &str) -> String {
    if arg.is_empty() {
        String::new()
    } else {
        format!("+{arg}")
    }
}

/// `SERVICE` or `SERVICE+ARG`, as the `CallDenied` signal names a call.
fn policy_service(service: &str, arg: &str) -> String {
    format!("{service}{}", policy_argument(arg))
}

fn feature_on(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.as_str(), "1" | "yes" | "true"))
}

/// Serve what a domain's agent opens towards domaind: `Call` streams. Anything else is
/// refused on that stream.
pub(crate) async fn serve_incoming(mgr: Weak<Manager>, source: DomainName, mut incoming: Incoming) {
    while let Some(ev) = incoming.next().await {
        match ev {
            IncomingEvent::Stream(s) => {
                let Some(m) = mgr.upgrade() else { return };
                let source = source.clone();
                tokio::spawn(async move {
                    match s.request {
                        OpenRequest::Call(req) => m.domain_call(&source, req, s.stream).await,
                        other => {
                            warn!(domain = %source, request = ?other, "agent opened a stream domaind does not serve");
                            let _ = exec::reject(s.stream, "domaind serves only calls").await;
                        }
                    }
                });
            }
            IncomingEvent::Control(c) => {
                debug!(domain = %source, control = ?c, "ignoring a control message from an agent")
            }
        }
    }
}

impl Manager {
    /// The policy's view of the system now.
    pub(crate) fn policy_system(&self) -> System {
        let good = self.configs.good(self.store());
        let mut sys = System::new();
        for c in good.iter() {
            let running = self.state_of(&c.name) == DomainState::Running;
            let mut info = bulkhead_policy::DomainInfo::from_config(c, running);
            if let Some(tags) = c.features.get("tags") {
                for t in tags.split_whitespace() {
                    if t.len() <= bulkhead_policy::MAX_TAG_LEN
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                    {
                        info = info.with_tag(t);
                    } else {
                        warn!(domain = %c.name, tag = t, "ignoring an invalid tag");
                    }
                }
            }
            if feature_on(c.features.get("template_for_dispvms")) {
                info = info.with_template_for_dispvms(true);
            }
            sys.insert(info);
        }
        sys.set_dom0_default_dispvm(self.calls().dom0_default_dispvm.clone());
        sys
    }

    /// Decide a call: allow (possibly after asking) or why not. The decision is kept as the
    /// last one between the two domains (`LastDecision`).
    pub(crate) async fn decide(
        &self,
        source: &str,
        target: &str,
        service: &str,
        arg: &str,
    ) -> Result<Allow, CallError> {
        let (r, outcome, detail) = self.decide_inner(source, target, service, arg).await;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.calls().record_decision(
            source,
            target,
            LastDecision {
                service: policy_service(service, arg),
                outcome,
                detail,
                at,
            },
        );
        r
    }

    async fn decide_inner(
        &self,
        source: &str,
        target: &str,
        service: &str,
        arg: &str,
    ) -> (Result<Allow, CallError>, &'static str, String) {
        let request = Request::new(service, &policy_argument(arg), source, target);
        let sys = self.policy_system();
        let resolution = self.calls().with_policy(|p| p.evaluate(&request, &sys));
        match resolution {
            Resolution::Allow(a) => {
                info!(source, target, service, arg, to = %a.target, rule = %a.rule, "call allowed");
                let detail = format!("rule {} (to {})", a.rule, a.target);
                (Ok(a), "allowed", detail)
            }
            Resolution::Deny(d) => {
                info!(source, target, service, arg, reason = %d.reason, "call denied");
                let reason = d.reason.to_string();
                self.call_denied(source, target, &policy_service(service, arg), &reason);
                (Err(CallError::Refused(reason.clone())), "denied", reason)
            }
            Resolution::Ask(mut ask) => {
                narrow_ask(&mut ask, target, &sys);
                if ask.targets.is_empty() {
                    let reason = format!(
                        "the policy rule {} offers only templates or service domains that neither it nor the caller names",
                        ask.rule
                    );
                    info!(source, target, service, arg, %reason, "call denied");
                    self.call_denied(source, target, &policy_service(service, arg), &reason);
                    return (Err(CallError::Refused(reason.clone())), "denied", reason);
                }
                // Only questions put to an ask agent count (without one, ask is deny).
                let ticket = if self.calls().has_ask_agent() {
                    match self.calls().ask_gate.open(source, Instant::now()) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            // No dialog and no notice: a source that keeps asking must not
                            // be able to flood the desktop either way.
                            info!(source, target, service, arg, reason = %e, "call refused without asking");
                            let reason = e.to_string();
                            return (Err(CallError::Refused(reason.clone())), "denied", reason);
                        }
                    }
                } else {
                    None
                };
                let ticket_was_open = ticket.is_some();
                let answer = self.calls().ask(source, service, arg, &ask).await;
                match ask.answer(answer.as_deref()) {
                    Ok(a) => {
                        if let Some(t) = ticket {
                            t.allowed();
                        }
                        let detail = format!("rule {} (to {})", a.rule, a.target);
                        (Ok(a), "allowed after asking", detail)
                    }
                    Err(d) => {
                        drop(ticket);
                        info!(source, target, service, arg, reason = %d.reason, "call denied after ask");
                        let reason = d.reason.to_string();
                        self.call_denied(source, target, &policy_service(service, arg), &reason);
                        let outcome = if ticket_was_open {
                            "denied after asking"
                        } else {
                            "denied (nobody to ask)"
                        };
                        (Err(CallError::Refused(reason.clone())), outcome, reason)
                    }
                }
            }
        }
    }

    /// Evaluate the clipboard paste from `source` into `target`: ask counts as allow (the
    /// hotkey is the consent), deny is final.
    pub fn evaluate_paste(&self, source: &str, target: &str) -> bool {
        let request = Request::new(PASTE_SERVICE, "", source, target);
        let sys = self.policy_system();
        let r = self
            .calls()
            .with_policy(|p| p.evaluate_assume_yes(&request, &sys));
        debug!(source, target, allowed = r.is_allow(), "paste evaluated");
        r.is_allow()
    }

    /// Resolve the allowed target, start it if needed, and open the service stream on it.
    /// Returns the stream and the disposable made for the call (to destroy afterwards).
    async fn open_service(
        self: &Arc<Self>,
        source: &str,
        req: &CallRequest,
        allow: &Allow,
    ) -> Result<(Stream, Option<DomainName>), CallError> {
        let (name, disposable) = match &allow.target {
            CallTarget::AdminVm => {
                return Err(CallError::Failed(
                    "calls to services in dom0 are not supported".into(),
                ))
            }
            CallTarget::Domain(n) => (n.clone(), None),
            CallTarget::NewDisposable { template } => {
                let dn = self
                    .disposable_for(template.as_str(), source)
                    .await
                    .map_err(|e| {
                        let m = format!(
                            "cannot create a disposable from '{template}': {}",
                            e.message()
                        );
                        match e {
                            Error::LimitReached(_) => CallError::Limit(m),
                            _ => CallError::Failed(m),
                        }
                    })?;
                info!(source, disposable = %dn, "disposable created for a call");
                (dn.clone(), Some(dn))
            }
        };
        let opened = async {
            let inst = self.ensure_running(&name).await?;
            let conn = self.agent_conn(&inst, &name).await?;
            conn.open(OpenRequest::Service(ServiceRequest {
                service: req.service.clone(),
                arg: req.arg.clone(),
                source: source.to_owned(),
                user: allow.user.clone(),
            }))
            .await
            .map_err(|e| Error::Agent(format!("cannot reach the agent of '{name}': {e}")))
        }
        .await;
        match opened {
            Ok(s) => Ok((s, disposable)),
            Err(e) => {
                if let Some(d) = &disposable {
                    self.destroy_disposable(d).await;
                }
                Err(CallError::Failed(format!(
                    "cannot start the service in '{name}': {}",
                    e.message()
                )))
            }
        }
    }

    /// A `Call` stream from the agent of `source`.
    async fn domain_call(
        self: &Arc<Self>,
        source_dn: &DomainName,
        req: CallRequest,
        stream: Stream,
    ) {
        // The policy and the limits take the caller as text: dom0 is a caller too.
        let source = source_dn.as_str();
        let allow = match self
            .decide(source, &req.target, &req.service, &req.arg)
            .await
        {
            Ok(a) => a,
            Err(CallError::Refused(reason)) => {
                let _ = exec::refuse(stream, &reason).await;
                return;
            }
            Err(CallError::Failed(reason) | CallError::Limit(reason)) => {
                let _ = exec::reject(stream, &reason).await;
                return;
            }
        };
        let (svc, disposable) = match self.open_service(source, &req, &allow).await {
            Ok(v) => v,
            Err(e) => {
                warn!(source, service = %req.service, error = %e, "call failed");
                let _ = exec::reject(stream, &e.to_string()).await;
                return;
            }
        };
        match exec::relay(stream, svc).await {
            Ok(ExecMessage::Exit(st)) => {
                debug!(source, service = %req.service, status = ?st, "call ended")
            }
            Ok(other) => debug!(source, service = %req.service, end = ?other, "call ended"),
            Err(e) => info!(source, service = %req.service, error = %e, "call aborted"),
        }
        if let Some(d) = disposable {
            self.destroy_disposable(&d).await;
        }
    }

    /// D-Bus `Call` from dom0: `SERVICE[+ARG]` on `target` with the caller's stdio; the
    /// service's exit code, `AccessDenied` when refused, `Agent` on other failures.
    pub async fn dom0_call(
        self: &Arc<Self>,
        target: &str,
        service_and_arg: &str,
        io: Stdio,
        caller_gone: CallerGone,
    ) -> Result<i32, Error> {
        let req = CallRequest::parse(target, service_and_arg).map_err(|e| {
            Error::InvalidProperty(format!("invalid call '{target} {service_and_arg}': {e}"))
        })?;
        let allow = self
            .decide(DOM0, &req.target, &req.service, &req.arg)
            .await?;
        let (svc, disposable) = self.open_service(DOM0, &req, &allow).await?;
        let work = exec::run_stream(
            svc,
            stdio::reader(io.stdin),
            stdio::writer(io.stdout),
            stdio::writer(io.stderr),
        );
        let res = tokio::select! {
            r = work => r.map(exit_code).map_err(|e| Error::Agent(format!("the call failed: {e}"))),
            _ = caller_gone => {
                info!(service = %req.service, "caller went away; call abandoned");
                Err(Error::Agent("the caller disconnected".into()))
            }
        };
        if let Some(d) = disposable {
            self.destroy_disposable(&d).await;
        }
        res
    }
}
