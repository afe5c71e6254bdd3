//! Tokens: which column accepts which, what a caller may request, what each matches as
//! source and target, and the `uuid:` and `@dispvm:uuid:` spellings.

use super::*;

const DVM_UUID: &str = "abcdef01-2345-4678-9abc-def012345678";

/// [`sys`] with a UUID on `dvm` too.
fn sys_with_uuids() -> System {
    let mut s = sys();
    if let Some(d) = s.domain("dvm").cloned() {
        s.insert(d.with_uuid(DVM_UUID));
    }
    s
}

/// Reference §1.3: which column accepts which token.
#[test]
fn token_table() {
    // token, source, target, redirect
    let table: &[(&str, bool, bool, bool)] = &[
        ("work", true, true, true),
        (
            "uuid:11111111-2222-3333-4444-555555555555",
            true,
            true,
            true,
        ),
        ("*", true, true, false),
        ("@anyvm", true, true, false),
        ("@adminvm", true, true, true),
        ("dom0", true, true, true),
        ("@default", false, true, false),
        ("@dispvm", false, true, true),
        ("@dispvm:work-dvm", true, true, true),
        ("@dispvm:@tag:work", true, true, false),
        ("@tag:work", true, true, false),
        ("@type:AppVM", true, true, false),
        ("@type:app", true, true, false),
    ];
    for (tok, src, tgt, redir) in table {
        let s = pol(&format!("svc.A * {tok} @anyvm deny"));
        assert_eq!(s.is_valid(), *src, "{tok} in source: {:?}", s.diagnostics());
        let t = pol(&format!("svc.A * @anyvm {tok} deny"));
        assert_eq!(t.is_valid(), *tgt, "{tok} in target: {:?}", t.diagnostics());
        let r = pol(&format!("svc.A * @anyvm @anyvm allow target={tok}"));
        assert_eq!(
            r.is_valid(),
            *redir,
            "{tok} in target=: {:?}",
            r.diagnostics()
        );
        let d = pol(&format!("svc.A * @anyvm @anyvm ask default_target={tok}"));
        assert_eq!(
            d.is_valid(),
            *redir,
            "{tok} in default_target=: {:?}",
            d.diagnostics()
        );
    }
}

/// Reference §1.3, column "caller may request": what a caller may name as its target.
/// `@` tokens the caller may not request are refused as invalid requests; `*` is no token
/// for a caller but an unknown name, which Qubes turns into `@default` (never a wildcard).
#[test]
fn token_table_caller_may_request() {
    let p = ok_pol("svc.A * @anyvm * allow target=net\nsvc.A * dom0 * allow target=net");
    let table: &[(&str, bool)] = &[
        ("work", true),
        ("uuid:11111111-2222-3333-4444-555555555555", true),
        ("@anyvm", false),
        ("@adminvm", true),
        ("dom0", true),
        ("@default", true),
        ("", true),
        ("@dispvm", true),
        ("@dispvm:work-dvm", true),
        ("@dispvm:@tag:work", false),
        ("@tag:work", false),
        ("@type:AppVM", false),
        ("@type:app", false),
    ];
    for (tok, may) in table {
        let r = ev(&p, "svc.A", "", "work", tok);
        if *may {
            assert_eq!(allow_target(&r), "net", "{tok:?} should be accepted: {r:?}");
        } else {
            assert!(
                matches!(&r, Resolution::Deny(d) if matches!(d.reason, DenyReason::InvalidRequest(_) | DenyReason::NotDispvmTemplate(_))),
                "{tok:?} should be refused as a request: {r:?}"
            );
        }
    }
    let p = ok_pol("svc.A * @anyvm @default deny\nsvc.A * @anyvm * allow target=net");
    assert!(
        matches!(deny_reason(&ev(&p, "svc.A", "", "work", "*")), DenyReason::ByRule(l) if l.line == 1),
        "a requested * must be @default"
    );
}

#[test]
fn invalid_tokens() {
    type Check = fn(&ErrorKind) -> bool;
    let cases: &[(&str, Check)] = &[
        (
            "@uuid:11111111-2222-3333-4444-555555555555",
            |e| matches!(e, ErrorKind::InvalidToken { hint, .. } if hint.contains("without @")),
        ),
        ("@tag:", |e| {
            matches!(
                e,
                ErrorKind::EmptyTokenValue {
                    prefix: "@tag:",
                    ..
                }
            )
        }),
        ("@type:", |e| matches!(e, ErrorKind::EmptyTokenValue { .. })),
        ("@dispvm:", |e| {
            matches!(e, ErrorKind::EmptyTokenValue { .. })
        }),
        ("@dispvm:@tag:", |e| {
            matches!(e, ErrorKind::EmptyTokenValue { .. })
        }),
        ("uuid:", |e| matches!(e, ErrorKind::EmptyTokenValue { .. })),
        ("@dispvm:@foo", |e| {
            matches!(e, ErrorKind::InvalidToken { .. })
        }),
        ("@anything", |e| matches!(e, ErrorKind::InvalidToken { .. })),
        (
            "$anyvm",
            |e| matches!(e, ErrorKind::InvalidToken { hint, .. } if hint.contains("@anyvm")),
        ),
        ("uuid:xyz", |e| matches!(e, ErrorKind::InvalidUuid(_))),
        ("@type:Car", |e| matches!(e, ErrorKind::UnknownType(_))),
        ("@tag:a/b", |e| matches!(e, ErrorKind::InvalidTag(_))),
        ("9lives", |e| matches!(e, ErrorKind::InvalidName { .. })),
        ("a-dm", |e| matches!(e, ErrorKind::InvalidName { .. })),
    ];
    for (tok, check) in cases {
        let e = one_error(&format!("svc.A * @anyvm {tok} deny"));
        assert!(check(&e), "{tok}: {e:?}");
    }
    let long = "a".repeat(300);
    assert!(matches!(
        one_error(&format!("svc.A * @anyvm {long} deny")),
        ErrorKind::TokenTooLong { .. }
    ));
}

#[test]
fn dom0_spellings_are_the_same_token() {
    let p = ok_pol(&format!(
        "svc.A * @anyvm dom0 deny\nsvc.A * @anyvm @adminvm deny\nsvc.A * @anyvm uuid:{DOM0_UUID} deny"
    ));
    assert!(p.rules().iter().all(|r| r.target == Token::AdminVm));
}

#[test]
fn source_tokens() {
    let check = |src_tok: &str, yes: &[&str], no: &[&str]| {
        let p = ok_pol(&format!("svc.A * {src_tok} * deny"));
        for s in yes {
            let r = ev(&p, "svc.A", "", s, "");
            assert!(
                matches!(deny_reason(&r), DenyReason::ByRule(_)),
                "{src_tok} should match source {s}"
            );
        }
        for s in no {
            let r = ev(&p, "svc.A", "", s, "");
            assert_eq!(
                deny_reason(&r),
                DenyReason::NoMatchingRule,
                "{src_tok} should not match source {s}"
            );
        }
    };
    check("work", &["work"], &["home", "dom0"]);
    check(&format!("uuid:{WORK_UUID}"), &["work"], &["home", "dom0"]);
    check(
        &format!("uuid:{}", WORK_UUID.to_uppercase()),
        &["work"],
        &["home"],
    );
    check("*", &["work", "home", "dom0"], &[]);
    check("@anyvm", &["work", "home", "disp42"], &["dom0"]);
    check("@adminvm", &["dom0"], &["work"]);
    check("dom0", &["dom0"], &["work"]);
    check(
        "@tag:work",
        &["work", "work-files", "work-dvm"],
        &["home", "dom0"],
    );
    check(
        "@type:app",
        &["work", "home"],
        &["debian", "disp42", "work-dvm", "dom0"],
    );
    check(
        "@type:AppVM",
        &["work", "work-dvm"],
        &["debian", "disp42", "dom0"],
    );
    check("@type:TemplateVM", &["debian"], &["work"]);
    check("@type:StandaloneVM", &["solo"], &["work"]);
    check("@type:DispVM", &["disp42"], &["work", "dvm"]);
    check("@type:disposable-template", &["dvm", "work-dvm"], &["work"]);
    check("@type:service", &["net"], &["work"]);
    check("@type:AdminVM", &["dom0"], &["work"]);
    check("@type:RemoteVM", &[], &["work", "dom0"]);
    // As in Qubes' code, these never match a source.
    check("@dispvm:dvm", &[], &["disp42", "dvm"]);
    check("@dispvm:@tag:work", &[], &["disp42", "work-dvm"]);
}

#[test]
fn target_tokens() {
    // (rule target token, requested targets that match, ones that do not); source is `home`
    // (default_dispvm = dvm).
    let table: &[(&str, &[&str], &[&str])] = &[
        (
            "work",
            &["work", &format!("uuid:{WORK_UUID}")],
            &["home", "dom0", "", "nosuch"],
        ),
        (
            &format!("uuid:{WORK_UUID}"),
            &["work"],
            &["untrusted", "dom0"],
        ),
        (
            "*",
            &[
                "work",
                "dom0",
                "@adminvm",
                "",
                "@dispvm",
                "@dispvm:work-dvm",
            ],
            &[],
        ),
        (
            "@anyvm",
            &["work", "", "nosuch", "@dispvm", "@dispvm:dvm"],
            &["dom0", "@adminvm", &format!("uuid:{DOM0_UUID}")],
        ),
        (
            "@adminvm",
            &["dom0", "@adminvm", "$adminvm", &format!("uuid:{DOM0_UUID}")],
            &["work", ""],
        ),
        (
            "@default",
            &[
                "",
                "@default",
                "$default",
                "nosuch",
                "uuid:99999999-2222-3333-4444-555555555555",
            ],
            &["work", "dom0", "@dispvm"],
        ),
        (
            "@dispvm",
            &["@dispvm", "$dispvm"],
            &["@dispvm:dvm", "dvm", ""],
        ),
        (
            "@dispvm:dvm",
            &["@dispvm:dvm", "@dispvm", "$dispvm:dvm"],
            &["@dispvm:work-dvm", "dvm"],
        ),
        (
            "@dispvm:work-dvm",
            &["@dispvm:work-dvm"],
            &["@dispvm", "work-dvm"],
        ),
        (
            "@dispvm:@tag:work",
            &["@dispvm:work-dvm"],
            &["@dispvm", "@dispvm:dvm", "work"],
        ),
        (
            "@tag:work",
            &["work", "work-files", "work-dvm"],
            &["home", "@dispvm:work-dvm", "dom0"],
        ),
        ("@type:TemplateVM", &["debian"], &["work", "dom0"]),
        ("@type:AdminVM", &["dom0"], &["work"]),
    ];
    for (tok, yes, no) in table {
        let p = ok_pol(&format!(
            "svc.A * home {tok} deny notify=no\nsvc.A * home * allow target=net"
        ));
        for t in *yes {
            let r = ev(&p, "svc.A", "", "home", t);
            assert!(
                matches!(&r, Resolution::Deny(Deny { reason: DenyReason::ByRule(l), .. }) if l.line == 1),
                "{tok} should match requested target {t:?}: {r:?}"
            );
        }
        for t in *no {
            let r = ev(&p, "svc.A", "", "home", t);
            assert!(
                !matches!(&r, Resolution::Deny(Deny { reason: DenyReason::ByRule(l), .. }) if l.line == 1),
                "{tok} should not match requested target {t:?}: {r:?}"
            );
        }
    }
}

#[test]
fn dispvm_tag_follows_the_source_default_dispvm() {
    // `work` has default_dispvm work-dvm (tagged work); `home` has dvm (untagged).
    let p = ok_pol("svc.A * @anyvm @dispvm:@tag:work allow\nsvc.A * @anyvm @anyvm deny");
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "work", "@dispvm")),
        "@dispvm:work-dvm"
    );
    assert!(ev(&p, "svc.A", "", "home", "@dispvm").is_deny());
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "home", "@dispvm:work-dvm")),
        "@dispvm:work-dvm"
    );
}

/// `@dispvm:uuid:…` in every column and in requests (Qubes 4.2+), and `uuid:` in target,
/// redirect and requests.
#[test]
fn dispvm_uuid_tokens() {
    let dvm = sys_with_uuids();
    let p = ok_pol(&format!(
        "svc.A * @anyvm @dispvm:uuid:{DVM_UUID} allow\n\
         svc.B * @anyvm * allow target=@dispvm:uuid:{DVM_UUID}\n\
         svc.C * @anyvm * ask target=@dispvm:uuid:{DVM_UUID} default_target=@dispvm:uuid:{DVM_UUID}\n\
         svc.D * @dispvm:uuid:{DVM_UUID} * allow target=work\n\
         svc.E * @anyvm uuid:{WORK_UUID} allow\n\
         svc.F * @anyvm * allow target=uuid:{WORK_UUID}\n\
         svc.G * @anyvm @dispvm:uuid:{DVM_UUID} ask\n\
         svc.G * @anyvm @dispvm:dvm ask\n"
    ));
    let ev = |svc: &str, src: &str, tgt: &str| p.evaluate(&Request::new(svc, "", src, tgt), &dvm);
    // A rule's @dispvm:uuid: matches a request for the template by name or UUID...
    assert_eq!(
        allow_target(&ev("svc.A", "home", "@dispvm:dvm")),
        "@dispvm:dvm"
    );
    assert_eq!(
        allow_target(&ev("svc.A", "home", &format!("@dispvm:uuid:{DVM_UUID}"))),
        "@dispvm:dvm"
    );
    // ...but not `@dispvm` (Qubes compares it with `@dispvm:DEFAULT` as text).
    assert!(matches!(
        deny_reason(&ev("svc.A", "home", "@dispvm")),
        DenyReason::NoMatchingRule
    ));
    // A request for a UUID that is no disposable template is refused.
    assert!(matches!(
        deny_reason(&ev("svc.A", "home", &format!("@dispvm:uuid:{WORK_UUID}"))),
        DenyReason::NotDispvmTemplate(_)
    ));
    assert_eq!(allow_target(&ev("svc.B", "home", "")), "@dispvm:dvm");
    let r = ev("svc.C", "home", "");
    assert_eq!(ask_targets(&r), vec!["@dispvm:dvm"]);
    assert_eq!(
        ask(&r).default_target,
        Some(CallTarget::NewDisposable { template: n("dvm") })
    );
    // In the source column it parses and never matches, as `@dispvm:NAME` there.
    assert!(ev("svc.D", "home", "").is_deny());
    assert_eq!(
        allow_target(&ev("svc.E", "home", &format!("uuid:{WORK_UUID}"))),
        "work"
    );
    assert_eq!(allow_target(&ev("svc.E", "home", "work")), "work");
    assert_eq!(allow_target(&ev("svc.F", "home", "")), "work");
    assert_eq!(
        ask_targets(&ev("svc.G", "home", "@dispvm:dvm")),
        vec!["@dispvm:dvm"]
    );
}

/// UUIDs are compared as written, as in Qubes: upper case parses but names no domain.
#[test]
fn upper_case_uuids_match_nothing() {
    let upper = DVM_UUID.to_ascii_uppercase();
    let s = sys_with_uuids();
    let p = ok_pol(&format!(
        "svc.A * @anyvm uuid:{upper} allow\n\
         svc.A * uuid:{upper} @anyvm allow target=work\n\
         svc.B * @anyvm * allow target=uuid:{upper}\n\
         svc.C * @anyvm * allow target=@dispvm:uuid:{upper}\n\
         svc.D * @anyvm @anyvm allow\n\
         svc.E * @anyvm @dispvm:uuid:{upper} allow\n"
    ));
    let ev = |svc: &str, src: &str, tgt: &str| p.evaluate(&Request::new(svc, "", src, tgt), &s);
    // The lower-case spelling works.
    assert_eq!(
        allow_target(&ev("svc.D", "home", &format!("uuid:{DVM_UUID}"))),
        "dvm"
    );
    assert!(matches!(
        deny_reason(&ev("svc.A", "home", "dvm")),
        DenyReason::NoMatchingRule
    ));
    assert!(matches!(
        deny_reason(&ev("svc.A", "dvm", "home")),
        DenyReason::NoMatchingRule
    ));
    assert!(matches!(
        deny_reason(&ev("svc.B", "home", "")),
        DenyReason::NoTarget(_)
    ));
    assert!(matches!(
        deny_reason(&ev("svc.C", "home", "")),
        DenyReason::NotDispvmTemplate(_)
    ));
    // A requested upper-case UUID is no domain: `@default`.
    assert!(matches!(
        deny_reason(&ev("svc.D", "home", &format!("uuid:{upper}"))),
        DenyReason::NoTarget(_)
    ));
    assert!(matches!(
        deny_reason(&ev("svc.E", "home", "@dispvm:dvm")),
        DenyReason::NoMatchingRule
    ));
    assert!(matches!(
        deny_reason(&ev("svc.E", "home", &format!("@dispvm:uuid:{upper}"))),
        DenyReason::NotDispvmTemplate(_)
    ));
}
