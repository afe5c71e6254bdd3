//! The shipped default policies (`policies/`) parse without error and decide as intended.

use std::path::PathBuf;

use bulkhead_domain::{DomainClass, DomainName};
use bulkhead_policy::{check, CallTarget, DomainInfo, Policy, Request, Resolution, System};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn n(s: &str) -> DomainName {
    DomainName::new(s).unwrap()
}

fn system() -> System {
    let mut s = System::new()
        .with(
            DomainInfo::new(n("work"), DomainClass::App)
                .with_running(true)
                .with_default_dispvm(n("dvm")),
        )
        .with(DomainInfo::new(n("home"), DomainClass::App).with_default_dispvm(n("dvm")))
        .with(DomainInfo::new(n("untrusted"), DomainClass::App))
        .with(DomainInfo::new(n("dvm"), DomainClass::DisposableTemplate))
        .with(DomainInfo::new(n("debian-12"), DomainClass::Template))
        .with(DomainInfo::new(n("net"), DomainClass::Service).with_running(true));
    s.set_dom0_default_dispvm(Some(n("dvm")));
    s
}

fn decide(p: &Policy, service: &str, source: &str, target: &str) -> Resolution {
    p.evaluate(&Request::new(service, "", source, target), &system())
}

#[test]
fn default_policies_have_no_errors() {
    let diags = check(policies_dir());
    assert!(
        diags.is_empty(),
        "{}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let p = Policy::load_dir(policies_dir());
    assert!(p.rules().len() >= 10);
}

#[test]
fn default_policy_decisions() {
    let p = Policy::load_dir(policies_dir());
    assert!(p.is_valid());

    // File copy: ask, with every other domain offered; never into dom0.
    match decide(&p, "bulkhead.Filecopy", "untrusted", "") {
        Resolution::Ask(a) => {
            let t: Vec<String> = a.targets.iter().map(|t| t.to_string()).collect();
            assert!(t.contains(&"work".to_string()), "{t:?}");
            assert!(!t.contains(&"untrusted".to_string()), "{t:?}");
            assert!(!t.contains(&"dom0".to_string()), "{t:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(decide(&p, "bulkhead.Filecopy", "work", "home").is_ask());
    assert!(decide(&p, "bulkhead.Filecopy", "work", "dom0").is_deny());

    // Open in disposable: allow, to a new disposable of the caller's default_dispvm.
    match decide(&p, "bulkhead.OpenInVM", "work", "@dispvm") {
        Resolution::Allow(a) => {
            assert_eq!(a.target, CallTarget::NewDisposable { template: n("dvm") })
        }
        other => panic!("{other:?}"),
    }
    assert!(decide(&p, "bulkhead.OpenInVM", "work", "home").is_ask());
    assert!(decide(&p, "bulkhead.OpenInVM", "work", "dom0").is_deny());
    assert!(decide(&p, "bulkhead.OpenURL", "home", "$dispvm").is_allow());
    assert!(decide(&p, "bulkhead.OpenURL", "untrusted", "work").is_ask());
    // No default_dispvm: nothing to create.
    assert!(decide(&p, "bulkhead.OpenURL", "untrusted", "@dispvm").is_deny());

    // Clipboard: ask (the hotkey counts as the answer), from dom0 too.
    assert!(decide(&p, "bulkhead.ClipboardPaste", "work", "home").is_ask());
    assert!(decide(&p, "bulkhead.ClipboardPaste", "dom0", "home").is_ask());
    let paste = Request::new("bulkhead.ClipboardPaste", "", "work", "home");
    match p.evaluate_assume_yes(&paste, &system()) {
        Resolution::Allow(a) => assert_eq!(a.target, CallTarget::Domain(n("home"))),
        other => panic!("{other:?}"),
    }

    // Admin and unknown calls from a domain to dom0: deny; other unknown calls: no rule.
    assert!(decide(&p, "bulkhead.admin.vm.List", "work", "dom0").is_deny());
    assert!(decide(&p, "bulkhead.VMShell", "work", "home").is_deny());

    // The update proxy: templates to the net domain, no one else.
    match decide(&p, "bulkhead.UpdatesProxy", "debian-12", "@default") {
        Resolution::Allow(a) => assert_eq!(a.target, CallTarget::Domain(n("net"))),
        other => panic!("{other:?}"),
    }
    assert!(decide(&p, "bulkhead.UpdatesProxy", "work", "@default").is_deny());
    assert!(decide(&p, "bulkhead.UpdatesProxy", "work", "net").is_deny());

    // dom0's own calls are allowed.
    assert!(decide(&p, "bulkhead.VMShell", "dom0", "home").is_allow());
    assert!(decide(&p, "bulkhead.VMShell", "dom0", "@dispvm").is_allow());
}
