//! Evaluating a call: rule order, invalid requests, how `allow` resolves its target,
//! redirects and parameters, and where Qubes' own errors deny.

use super::*;

#[test]
fn first_match_wins_and_no_match_denies() {
    let p = ok_pol(
        "svc.A * work home deny\n\
         svc.A * @anyvm home allow\n\
         svc.A * @anyvm @anyvm deny notify=no",
    );
    assert!(
        matches!(deny_reason(&ev(&p, "svc.A", "", "work", "home")), DenyReason::ByRule(l) if l.line == 1)
    );
    assert!(ev(&p, "svc.A", "", "untrusted", "home").is_allow());
    let r = ev(&p, "svc.A", "", "untrusted", "work");
    assert!(
        matches!(&r, Resolution::Deny(Deny { notify: false, reason: DenyReason::ByRule(l) }) if l.line == 3)
    );
    let r = ev(&p, "svc.B", "", "work", "home");
    assert!(matches!(
        r,
        Resolution::Deny(Deny {
            notify: true,
            reason: DenyReason::NoMatchingRule
        })
    ));
    let empty = ok_pol("");
    assert_eq!(
        deny_reason(&ev(&empty, "svc.A", "", "work", "home")),
        DenyReason::NoMatchingRule
    );
}

#[test]
fn wildcard_service_rules_keep_their_place() {
    let p = ok_pol(
        "svc.A * work @anyvm allow\n\
         * * work @anyvm deny\n\
         svc.B * work @anyvm allow\n",
    );
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    // The `*` rule comes before svc.B's own rule.
    assert!(
        matches!(deny_reason(&ev(&p, "svc.B", "", "work", "home")), DenyReason::ByRule(l) if l.line == 2)
    );
    // A service no rule names still meets the `*` rules.
    assert!(
        matches!(deny_reason(&ev(&p, "svc.Z", "", "work", "home")), DenyReason::ByRule(l) if l.line == 2)
    );
}

#[test]
fn unknown_source_is_denied() {
    let p = ok_pol("* * * * allow target=net");
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "ghost", "")),
        DenyReason::UnknownSource(_)
    ));
}

#[test]
fn invalid_requests_are_denied() {
    let p = ok_pol("* * @anyvm * allow");
    for (svc, arg, tgt) in [
        ("bad/svc", "", "home"),
        ("", "", "home"),
        ("svc+x", "", "home"),
        ("svc", "noplus", "home"),
        ("svc", "+a/b", "home"),
        ("svc", "", "@nonsense"),
    ] {
        assert!(
            matches!(
                deny_reason(&ev(&p, svc, arg, "work", tgt)),
                DenyReason::InvalidRequest(_)
            ),
            "{svc} {arg} {tgt}"
        );
    }
    assert!(matches!(
        deny_reason(&ev(&p, "svc", "", "work", "@dispvm:home")),
        DenyReason::NotDispvmTemplate(_)
    ));
    let long = "a".repeat(MAX_SERVICE_LEN + 1);
    assert!(ev(&p, &long, "", "work", "home").is_deny());
}

#[test]
fn allow_resolves_targets() {
    let p = ok_pol("svc.A * @anyvm * allow");
    assert_eq!(allow_target(&ev(&p, "svc.A", "", "work", "home")), "home");
    assert_eq!(
        ev(&p, "svc.A", "", "work", "@adminvm"),
        Resolution::Allow(Allow {
            target: CallTarget::AdminVm,
            user: None,
            notify: false,
            autostart: true,
            rule: p.rules()[0].location.clone(),
        })
    );
    match ev(&p, "svc.A", "", "work", "@dispvm") {
        Resolution::Allow(a) => assert_eq!(
            a.target,
            CallTarget::NewDisposable {
                template: n("work-dvm")
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "home", "@dispvm")),
        "@dispvm:dvm"
    );
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "work", "@dispvm:dvm")),
        "@dispvm:dvm"
    );
    // No default_dispvm.
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "untrusted", "@dispvm")),
        DenyReason::NoDefaultDispvm(..)
    ));
    // No target at all.
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "work", "")),
        DenyReason::NoTarget(_)
    ));
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "work", "nosuch")),
        DenyReason::NoTarget(_)
    ));
    // Loopback.
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "work", "work")),
        DenyReason::Loopback(_)
    ));
    let p = ok_pol("svc.A * @adminvm * allow");
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "dom0", "dom0")),
        DenyReason::Loopback(_)
    ));
    assert_eq!(allow_target(&ev(&p, "svc.A", "", "dom0", "work")), "work");
}

#[test]
fn default_dispvm_of_dom0() {
    let p = ok_pol("svc.A * @adminvm @dispvm allow");
    let mut s = sys();
    let req = Request::new("svc.A", "", "dom0", "@dispvm");
    assert!(matches!(
        deny_reason(&p.evaluate(&req, &s)),
        DenyReason::NoDefaultDispvm(..)
    ));
    s.set_dom0_default_dispvm(Some(n("dvm")));
    assert_eq!(allow_target(&p.evaluate(&req, &s)), "@dispvm:dvm");
}

#[test]
fn redirects() {
    let p = ok_pol(
        "svc.A * @anyvm @default allow target=dom0\n\
         svc.B * @anyvm @anyvm allow target=home\n\
         svc.B * @anyvm home deny\n\
         svc.C * @anyvm @anyvm allow target=@dispvm\n\
         svc.D * @anyvm @anyvm allow target=@dispvm:dvm\n\
         svc.E * @anyvm @anyvm allow target=nosuch\n\
         svc.F * @anyvm @anyvm allow target=@dispvm:work\n\
         svc.G * @anyvm @anyvm allow target=uuid:11111111-2222-3333-4444-555555555555\n",
    );
    assert_eq!(allow_target(&ev(&p, "svc.A", "", "work", "")), "dom0");
    // The redirect is honoured although a later rule denies calls to home.
    assert_eq!(
        allow_target(&ev(&p, "svc.B", "", "work", "untrusted")),
        "home"
    );
    assert_eq!(
        allow_target(&ev(&p, "svc.C", "", "work", "untrusted")),
        "@dispvm:work-dvm"
    );
    assert_eq!(
        allow_target(&ev(&p, "svc.D", "", "work", "untrusted")),
        "@dispvm:dvm"
    );
    assert!(matches!(
        deny_reason(&ev(&p, "svc.E", "", "work", "home")),
        DenyReason::NoTarget(_)
    ));
    assert!(matches!(
        deny_reason(&ev(&p, "svc.F", "", "home", "untrusted")),
        DenyReason::NotDispvmTemplate(_)
    ));
    assert_eq!(
        allow_target(&ev(&p, "svc.G", "", "home", "untrusted")),
        "work"
    );
}

#[test]
fn user_and_notify_are_passed_through() {
    let p = ok_pol("svc.A * @anyvm @anyvm allow user=root notify=yes");
    match ev(&p, "svc.A", "", "work", "home") {
        Resolution::Allow(a) => {
            assert_eq!(a.user.as_deref(), Some("root"));
            assert!(a.notify);
            assert!(a.autostart);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn autostart_no() {
    let p = ok_pol("svc.A * @anyvm * allow autostart=no notify=yes");
    assert!(ev(&p, "svc.A", "", "home", "work").is_allow()); // running
    assert!(ev(&p, "svc.A", "", "home", "dom0").is_allow());
    let r = ev(&p, "svc.A", "", "work", "home"); // not running
    assert!(matches!(
        r,
        Resolution::Deny(Deny {
            notify: true,
            reason: DenyReason::AutostartRequired { .. }
        })
    ));
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "work", "@dispvm")),
        DenyReason::AutostartRequired { .. }
    ));
}

/// Where Qubes fails with an internal error, the call is denied rather than going on to
/// later rules.
#[test]
fn qubes_internal_errors_deny() {
    let p = ok_pol(
        "svc.A * @anyvm @dispvm:dvm deny\n\
         svc.A * @anyvm * allow target=net\n\
         svc.B * @anyvm @dispvm:nosuch ask\n\
         svc.B * @anyvm work ask\n",
    );
    // `untrusted` has no default_dispvm to compare with @dispvm:dvm.
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "untrusted", "@dispvm")),
        DenyReason::NoDefaultDispvmToCompare { .. }
    ));
    // With one, the rule is compared: `work`'s (work-dvm) does not match, the next rule
    // decides.
    assert_eq!(allow_target(&ev(&p, "svc.A", "", "work", "@dispvm")), "net");
    assert!(ev(&p, "svc.A", "", "home", "@dispvm").is_deny());
    // The ask targets cannot be computed when a rule names a template that does not exist.
    assert!(matches!(
        deny_reason(&ev(&p, "svc.B", "", "home", "work")),
        DenyReason::UnknownDispvmTemplate { .. }
    ));
}

/// A `default_dispvm` that is not a disposable template is compared with as set, but no
/// disposable is made from it (deliberate difference from Qubes, which resolves `@dispvm`
/// to it and then fails to create the disposable).
#[test]
fn default_dispvm_that_is_not_a_template() {
    let s = sys().with(
        DomainInfo::new(n("odd"), DomainClass::App)
            .with_running(true)
            .with_default_dispvm(n("home")),
    );
    let p = ok_pol(
        "svc.A * @anyvm @dispvm:home deny\n\
         svc.A * @anyvm @dispvm allow\n\
         svc.B * @anyvm @anyvm ask default_target=@dispvm\n",
    );
    let ev = |svc: &str, tgt: &str| p.evaluate(&Request::new(svc, "", "odd", tgt), &s);
    assert!(matches!(
        deny_reason(&ev("svc.A", "@dispvm")),
        DenyReason::ByRule(_)
    ));
    let p2 = ok_pol("svc.A * @anyvm @dispvm allow");
    assert!(matches!(
        deny_reason(&p2.evaluate(&Request::new("svc.A", "", "odd", "@dispvm"), &s)),
        DenyReason::NotDispvmTemplate(t) if t == "home"
    ));
    let r = ev("svc.B", "");
    assert!(!ask_targets(&r).contains(&"@dispvm:home".to_owned()));
    assert_eq!(ask(&r).default_target, None);
}
