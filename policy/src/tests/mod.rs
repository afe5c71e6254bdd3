//! Unit tests of the policy engine, by subject; this module holds what they share: a
//! [`System`] with one domain of each kind and helpers that parse a policy and evaluate a
//! call against it.

use super::*;
use bulkhead_domain::{DomainClass, DomainName};

mod ask;
mod config;
mod evaluation;
mod files;
mod grammar;
mod qubes_examples;
mod tokens;

const WORK_UUID: &str = "11111111-2222-3333-4444-555555555555";

fn n(s: &str) -> DomainName {
    DomainName::new(s).unwrap()
}

/// A system with one of everything.
fn sys() -> System {
    System::new()
        .with(
            DomainInfo::new(n("work"), DomainClass::App)
                .with_tag("work")
                .with_running(true)
                .with_default_dispvm(n("work-dvm"))
                .with_uuid(WORK_UUID),
        )
        .with(
            DomainInfo::new(n("work-files"), DomainClass::App)
                .with_tag("work")
                .with_running(false),
        )
        .with(DomainInfo::new(n("home"), DomainClass::App).with_default_dispvm(n("dvm")))
        .with(DomainInfo::new(n("untrusted"), DomainClass::App).with_running(true))
        .with(DomainInfo::new(n("work-dvm"), DomainClass::DisposableTemplate).with_tag("work"))
        .with(DomainInfo::new(n("dvm"), DomainClass::DisposableTemplate))
        .with(DomainInfo::new(n("debian"), DomainClass::Template))
        .with(DomainInfo::new(n("solo"), DomainClass::Standalone))
        .with(
            DomainInfo::new(n("disp42"), DomainClass::Disposable)
                .with_running(true)
                .with_default_dispvm(n("dvm")),
        )
        .with(DomainInfo::new(n("net"), DomainClass::Service).with_running(true))
        .with(DomainInfo::new(n("hidden"), DomainClass::App).with_internal(true))
        .with(DomainInfo::new(n("anon-whonix"), DomainClass::App))
        .with(DomainInfo::new(
            n("anon-whonix-dvm"),
            DomainClass::DisposableTemplate,
        ))
}

fn pol(text: &str) -> Policy {
    Policy::from_text("test.policy", text.as_bytes())
}

fn ok_pol(text: &str) -> Policy {
    let p = pol(text);
    assert!(p.is_valid(), "unexpected errors: {:?}", p.diagnostics());
    p
}

fn ev(p: &Policy, service: &str, arg: &str, src: &str, tgt: &str) -> Resolution {
    p.evaluate(&Request::new(service, arg, src, tgt), &sys())
}

fn allow_target(r: &Resolution) -> String {
    match r {
        Resolution::Allow(a) => a.target.to_string(),
        other => panic!("expected allow, got {other:?}"),
    }
}

fn deny_reason(r: &Resolution) -> DenyReason {
    match r {
        Resolution::Deny(d) => d.reason.clone(),
        other => panic!("expected deny, got {other:?}"),
    }
}

fn ask(r: &Resolution) -> &Ask {
    match r {
        Resolution::Ask(a) => a,
        other => panic!("expected ask, got {other:?}"),
    }
}

fn ask_targets(r: &Resolution) -> Vec<String> {
    ask(r).targets.iter().map(|t| t.to_string()).collect()
}

fn errors(text: &str) -> Vec<ErrorKind> {
    pol(text)
        .diagnostics()
        .iter()
        .map(|d| d.kind.clone())
        .collect()
}

fn one_error(text: &str) -> ErrorKind {
    let e = errors(text);
    assert_eq!(
        e.len(),
        1,
        "expected exactly one error for {text:?}, got {e:?}"
    );
    e[0].clone()
}
