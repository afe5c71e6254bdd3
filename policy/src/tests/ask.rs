//! `ask`: which targets are offered, the default target, answers, and `assume_yes_for_ask`.

use super::*;

#[test]
fn ask_targets_are_computed_as_qubes_does() {
    let p = ok_pol(
        "svc.A * home work deny\n\
         svc.A * home @anyvm ask\n\
         svc.A * home untrusted allow\n\
         svc.A * home @tag:work deny\n\
         svc.A * home @dispvm allow\n\
         svc.A * work @anyvm allow\n",
    );
    let r = ev(&p, "svc.A", "", "home", "");
    let mut t = ask_targets(&r);
    t.sort();
    // @anyvm expands to every domain and dispvm template; the earlier deny of `work`
    // removes it; the later deny of @tag:work is overridden by the earlier @anyvm ask;
    // @dispvm becomes the source's default; the source, dom0 and internal domains are not
    // offered; the rule for source `work` does not count.
    let mut want: Vec<String> = [
        "@dispvm:anon-whonix-dvm",
        "@dispvm:dvm",
        "@dispvm:work-dvm",
        "anon-whonix",
        "anon-whonix-dvm",
        "debian",
        "disp42",
        "dvm",
        "net",
        "solo",
        "untrusted",
        "work-dvm",
        "work-files",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(t, want);
}

#[test]
fn later_deny_removes_only_what_later_rules_added() {
    let p = ok_pol(
        "svc.A * @anyvm @tag:work ask\n\
         svc.A * @anyvm work-files deny\n\
         svc.A * @anyvm home allow\n",
    );
    // work-files is asked for by an earlier rule: stays. home added by the last rule.
    let t = ask_targets(&ev(&p, "svc.A", "", "untrusted", "work"));
    assert_eq!(t, vec!["home", "work", "work-dvm", "work-files"]);
}

#[test]
fn ask_tells_which_targets_a_rule_names() {
    let p = ok_pol(
        "svc.A * @anyvm @anyvm ask\n\
         svc.A * @anyvm work-files ask\n\
         svc.B * @anyvm @anyvm ask target=work\n",
    );
    let r = ev(&p, "svc.A", "", "untrusted", "work");
    let named: Vec<String> = ask(&r).named.iter().map(|t| t.to_string()).collect();
    assert_eq!(named, vec!["work-files"]);
    assert!(ask_targets(&r).len() > 1);
    let r = ev(&p, "svc.B", "", "untrusted", "home");
    assert_eq!(
        ask(&r).named.iter().cloned().collect::<Vec<_>>(),
        vec![CallTarget::Domain(n("work"))]
    );
}

#[test]
fn ask_with_explicit_target_and_default() {
    let p = ok_pol(
        "svc.A * @anyvm @anyvm ask target=work default_target=work\n\
         svc.B * @anyvm @anyvm ask target=@dispvm default_target=@dispvm\n\
         svc.C * @anyvm @anyvm ask target=dom0\n\
         svc.D * @anyvm @tag:work ask default_target=home\n\
         svc.E * @anyvm @anyvm ask target=nosuch\n\
         svc.F * @anyvm @tag:work ask default_target=work-files\n",
    );
    let r = ev(&p, "svc.A", "", "home", "");
    assert_eq!(ask_targets(&r), vec!["work"]);
    assert_eq!(ask(&r).default_target, Some(CallTarget::Domain(n("work"))));
    let r = ev(&p, "svc.B", "", "home", "untrusted");
    assert_eq!(ask_targets(&r), vec!["@dispvm:dvm"]);
    // As in Qubes 4.3: default_target=@dispvm is read as @dispvm:DEFAULT_DISPVM and compared
    // with the target as written (@dispvm), so it is dropped.
    assert_eq!(ask(&r).default_target, None);
    assert_eq!(ask_targets(&ev(&p, "svc.C", "", "home", "")), vec!["dom0"]);
    // default_target not among the targets is dropped.
    let r = ev(&p, "svc.D", "", "untrusted", "work");
    assert_eq!(ask(&r).default_target, None);
    assert!(matches!(
        deny_reason(&ev(&p, "svc.E", "", "home", "")),
        DenyReason::NoAskTargets(_)
    ));
    let r = ev(&p, "svc.F", "", "untrusted", "work");
    assert_eq!(
        ask(&r).default_target,
        Some(CallTarget::Domain(n("work-files")))
    );
}

#[test]
fn ask_autostart_no_keeps_running_targets() {
    let p =
        ok_pol("svc.A * @anyvm @anyvm ask autostart=no\nsvc.A * @anyvm @adminvm ask autostart=no");
    // Every rule for this service and source counts, whatever its target (Qubes), so the
    // second rule adds dom0; not-running domains and new disposables are dropped.
    let t = ask_targets(&ev(&p, "svc.A", "", "home", ""));
    assert_eq!(t, vec!["dom0", "disp42", "net", "untrusted", "work"]);
    let t = ask_targets(&ev(&p, "svc.A", "", "home", "dom0"));
    assert!(t.contains(&"dom0".to_string()));
}

#[test]
fn ask_with_nothing_to_choose_is_denied() {
    let p = ok_pol("svc.A * home @default ask\n");
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "home", "")),
        DenyReason::NoAskTargets(_)
    ));
}

#[test]
fn ask_answers() {
    let p = ok_pol("svc.A * @anyvm @tag:work ask user=u notify=yes\nsvc.A * @anyvm @adminvm ask");
    let r = ev(&p, "svc.A", "", "home", "work");
    let a = ask(&r);
    let allow = a.answer(Some("work-files")).unwrap();
    assert_eq!(allow.target, CallTarget::Domain(n("work-files")));
    assert_eq!(allow.user.as_deref(), Some("u"));
    assert!(allow.notify);
    assert!(matches!(
        a.answer(Some("home")),
        Err(Deny {
            reason: DenyReason::InvalidChoice(_),
            ..
        })
    ));
    assert!(matches!(
        a.answer(None),
        Err(Deny {
            notify: true,
            reason: DenyReason::ByUser(_)
        })
    ));
    let r = ev(&p, "svc.A", "", "home", "dom0");
    assert_eq!(
        ask(&r).answer(Some("@adminvm")).unwrap().target,
        CallTarget::AdminVm
    );
}

#[test]
fn assume_yes_for_ask() {
    let p = ok_pol(
        "svc.A * @anyvm @tag:work ask\n\
         svc.A * @anyvm home deny\n\
         svc.A * @anyvm @default ask default_target=work\n\
         svc.A * @anyvm @dispvm ask\n\
         svc.A * @anyvm @dispvm:dvm ask\n\
         svc.B * @anyvm @anyvm ask default_target=home\n",
    );
    let yes =
        |src: &str, tgt: &str| p.evaluate_assume_yes(&Request::new("svc.A", "", src, tgt), &sys());
    assert_eq!(allow_target(&yes("untrusted", "work")), "work");
    assert!(yes("untrusted", "home").is_deny());
    // Qubes answers with the requested target as spelt: `@default` (or none) and `@dispvm`
    // are never among the ask targets, even with a default_target.
    assert!(
        matches!(deny_reason(&yes("untrusted", "")), DenyReason::InvalidChoice(t) if t == "@default")
    );
    assert!(yes("untrusted", "@default").is_deny());
    assert!(yes("home", "@dispvm").is_deny());
    assert!(yes("untrusted", "@dispvm").is_deny());
    assert_eq!(allow_target(&yes("home", "@dispvm:dvm")), "@dispvm:dvm");
    // A `uuid:` spelling is not the name the targets are listed under.
    assert!(yes("untrusted", &format!("uuid:{WORK_UUID}")).is_deny());
    // Deny stays deny, allow stays allow.
    let p2 = ok_pol("svc.A * @anyvm home deny\nsvc.A * @anyvm work allow");
    assert!(p2
        .evaluate_assume_yes(&Request::new("svc.A", "", "untrusted", "home"), &sys())
        .is_deny());
    assert!(p2
        .evaluate_assume_yes(&Request::new("svc.A", "", "untrusted", "work"), &sys())
        .is_allow());
}

/// Qubes 4.3 `assume_yes_for_ask` with dom0 and disposable targets: `dom0` is offered,
/// `@adminvm` and `uuid:00…0` are not; `ask target=X` is answered only by X as written.
#[test]
fn assume_yes_for_ask_adminvm_and_dispvm() {
    let p = ok_pol(
        "svc.A * @anyvm @adminvm ask\n\
         svc.B * @anyvm * ask target=@adminvm\n\
         svc.C * @anyvm * ask target=@dispvm\n\
         svc.D * @anyvm * ask target=@dispvm:dvm\n\
         svc.E * @anyvm * ask target=uuid:11111111-2222-3333-4444-555555555555\n",
    );
    let yes = |svc: &str, src: &str, tgt: &str| {
        p.evaluate_assume_yes(&Request::new(svc, "", src, tgt), &sys())
    };
    let dom0_uuid = format!("uuid:{DOM0_UUID}");
    for svc in ["svc.A", "svc.B"] {
        assert_eq!(allow_target(&yes(svc, "work", "dom0")), "dom0");
        assert!(yes(svc, "work", "@adminvm").is_deny(), "{svc}");
        assert!(yes(svc, "work", &dom0_uuid).is_deny(), "{svc}");
        assert!(yes(svc, "work", "$adminvm").is_deny(), "{svc}");
    }
    // `ask target=@dispvm` is answered by `@dispvm`: a new disposable of the default.
    assert_eq!(
        allow_target(&yes("svc.C", "work", "@dispvm")),
        "@dispvm:work-dvm"
    );
    assert_eq!(
        allow_target(&yes("svc.C", "home", "$dispvm")),
        "@dispvm:dvm"
    );
    assert!(yes("svc.C", "home", "@dispvm:dvm").is_deny());
    assert!(yes("svc.C", "untrusted", "@dispvm").is_deny());
    assert_eq!(
        allow_target(&yes("svc.D", "work", "@dispvm:dvm")),
        "@dispvm:dvm"
    );
    assert!(yes("svc.D", "home", "@dispvm").is_deny());
    // `target=uuid:…` is answered by that spelling only.
    assert_eq!(
        allow_target(&yes("svc.E", "home", &format!("uuid:{WORK_UUID}"))),
        "work"
    );
    assert!(yes("svc.E", "home", "work").is_deny());
}
