use super::*;
use bulkhead_domain::{DomainClass, DomainName};
use std::fs;

const WORK_UUID: &str = "11111111-2222-3333-4444-555555555555";
const DVM_UUID: &str = "abcdef01-2345-4678-9abc-def012345678";

/// [`sys`] with a UUID on `dvm` too.
fn sys_with_uuids() -> System {
    let mut s = sys();
    if let Some(d) = s.domain("dvm").cloned() {
        s.insert(d.with_uuid(DVM_UUID));
    }
    s
}

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

// ---------------------------------------------------------------- grammar

#[test]
fn comments_blank_lines_and_whitespace() {
    let p = ok_pol(
        "# a comment\n\n   \t\n   # indented comment\n\tsvc.A\t*   @anyvm\t\t@anyvm   allow  \r\n",
    );
    assert_eq!(p.rules().len(), 1);
    assert_eq!(p.rules()[0].location.line, 5);
    assert_eq!(allow_target(&ev(&p, "svc.A", "", "work", "home")), "home");
}

#[test]
fn inline_hash_is_not_a_comment() {
    // Qubes has no inline comments: `#` after a rule is a bad parameter.
    assert_eq!(
        one_error("svc.A * @anyvm @anyvm allow # hi"),
        ErrorKind::ParamSyntax("#".into())
    );
}

#[test]
fn wrong_number_of_fields() {
    assert_eq!(
        one_error("svc.A * @anyvm @anyvm"),
        ErrorKind::WrongNumberOfFields
    );
    assert_eq!(one_error("svc.A"), ErrorKind::WrongNumberOfFields);
}

#[test]
fn service_column() {
    assert!(matches!(
        one_error("svc.A+x * @anyvm @anyvm allow"),
        ErrorKind::InvalidService { chars, .. } if chars == vec!['+']
    ));
    assert!(matches!(
        one_error("sv/c * @anyvm @anyvm allow"),
        ErrorKind::InvalidService { .. }
    ));
    ok_pol("* * @anyvm @anyvm deny\nA-b.c_9 * @anyvm @anyvm deny");
}

#[test]
fn argument_column() {
    ok_pol("svc.A + @anyvm @anyvm deny\nsvc.A +a-b.c_+d @anyvm @anyvm deny");
    assert_eq!(
        one_error("svc.A foo @anyvm @anyvm allow"),
        ErrorKind::ArgumentWithoutPlus("foo".into())
    );
    assert!(matches!(
        one_error("svc.A +a/b @anyvm @anyvm allow"),
        ErrorKind::InvalidArgumentChars { .. }
    ));
    assert_eq!(
        one_error("* +x @anyvm @anyvm allow"),
        ErrorKind::ArgumentForWildcardService
    );
}

#[test]
fn argument_matching() {
    let p = ok_pol(
        "svc.A +one @anyvm @anyvm allow\n\
         svc.A + @anyvm @anyvm allow target=home\n\
         svc.A * @anyvm @anyvm deny",
    );
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "+one", "work", "untrusted")),
        "untrusted"
    );
    // The empty argument is `+`, and an empty request argument means the same.
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "work", "untrusted")),
        "home"
    );
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "+", "work", "untrusted")),
        "home"
    );
    assert!(ev(&p, "svc.A", "+two", "work", "untrusted").is_deny());
}

#[test]
fn actions_and_their_parameters() {
    assert_eq!(
        one_error("svc.A * @anyvm @anyvm permit"),
        ErrorKind::InvalidAction("permit".into())
    );
    let p = ok_pol(
        "svc.A * @anyvm @anyvm allow target=home user=alice notify=yes autostart=no\n\
         svc.B * @anyvm @anyvm ask target=home default_target=home user=bob notify=yes autostart=no\n\
         svc.C * @anyvm @anyvm deny notify=no",
    );
    assert_eq!(
        p.rules()[0].action,
        Action::Allow(AllowParams {
            target: Some(Token::Name(n("home"))),
            user: Some("alice".into()),
            notify: true,
            autostart: false,
        })
    );
    assert_eq!(
        p.rules()[1].action,
        Action::Ask(AskParams {
            target: Some(Token::Name(n("home"))),
            default_target: Some(Token::Name(n("home"))),
            user: Some("bob".into()),
            notify: true,
            autostart: false,
        })
    );
    assert_eq!(p.rules()[2].action, Action::Deny { notify: false });
    // Defaults: allow/ask notify=no autostart=yes, deny notify=yes.
    let p = ok_pol("a * @anyvm @anyvm allow\nb * @anyvm @anyvm ask\nc * @anyvm @anyvm deny");
    assert!(
        matches!(&p.rules()[0].action, Action::Allow(a) if !a.notify && a.autostart && a.user.is_none())
    );
    assert!(matches!(&p.rules()[1].action, Action::Ask(a) if !a.notify && a.autostart));
    assert_eq!(p.rules()[2].action, Action::Deny { notify: true });
}

#[test]
fn parameters_not_accepted_by_an_action() {
    for line in [
        "svc.A * @anyvm @anyvm deny target=home",
        "svc.A * @anyvm @anyvm deny user=alice",
        "svc.A * @anyvm @anyvm deny autostart=no",
        "svc.A * @anyvm @anyvm allow default_target=home",
        "svc.A * @anyvm @anyvm allow color=red",
        "svc.A * @anyvm @anyvm ask foo=bar",
    ] {
        assert!(
            matches!(one_error(line), ErrorKind::ParamNotAccepted { .. }),
            "{line}"
        );
    }
}

#[test]
fn parameter_syntax() {
    assert_eq!(
        one_error("svc.A * @anyvm @anyvm allow notify"),
        ErrorKind::ParamSyntax("notify".into())
    );
    assert_eq!(
        one_error("svc.A * @anyvm @anyvm allow notify=yes notify=no"),
        ErrorKind::ParamTwice("notify".into())
    );
    // Comma separation is not accepted in the new format.
    assert!(matches!(
        one_error("svc.A * @anyvm @anyvm allow notify=yes,autostart=no"),
        ErrorKind::BadBool { .. }
    ));
    for bad in ["Yes", "true", "1", ""] {
        assert!(matches!(
            one_error(&format!("svc.A * @anyvm @anyvm allow autostart={bad}")),
            ErrorKind::BadBool {
                key: "autostart",
                ..
            }
        ));
    }
    for bad in [
        "",
        "-x",
        ".x",
        "a b",
        "a/b",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let line = format!("svc.A * @anyvm @anyvm allow user={bad}");
        let e = errors(&line);
        assert!(!e.is_empty(), "{line}");
    }
}

#[test]
fn allow_to_default_needs_target() {
    assert_eq!(
        one_error("svc.A * @anyvm @default allow"),
        ErrorKind::AllowDefaultWithoutTarget
    );
    ok_pol("svc.A * @anyvm @default allow target=dom0");
    ok_pol("svc.A * @anyvm @default ask");
    ok_pol("svc.A * @anyvm @default deny");
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
fn directives() {
    assert_eq!(
        one_error("!frobnicate x"),
        ErrorKind::InvalidDirective("!frobnicate".into())
    );
    assert_eq!(
        one_error("!include"),
        ErrorKind::DirectiveParams("!include")
    );
    assert_eq!(
        one_error("!include a b"),
        ErrorKind::DirectiveParams("!include")
    );
    assert_eq!(
        one_error("!include-dir"),
        ErrorKind::DirectiveParams("!include-dir")
    );
    assert_eq!(
        one_error("!include-service svc *"),
        ErrorKind::DirectiveParams("!include-service")
    );
    assert_eq!(
        one_error("!include-service * +x path"),
        ErrorKind::ArgumentForWildcardService
    );
    assert_eq!(one_error("!compat-4.0"), ErrorKind::Compat40Unsupported);
    // No base directory: includes cannot be resolved.
    assert_eq!(
        one_error("!include x.policy"),
        ErrorKind::IncludeUnavailable
    );
}

#[test]
fn every_error_is_reported_with_file_and_line() {
    let p = pol("svc.A * @anyvm @anyvm allow\nbad line\n\nsvc.B * @anyvm @anyvm nope\n!what");
    let d: Vec<String> = p.diagnostics().iter().map(|d| d.to_string()).collect();
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(
        d[0].starts_with("test.policy:2: wrong number of fields"),
        "{}",
        d[0]
    );
    assert!(
        d[1].starts_with("test.policy:4: invalid action"),
        "{}",
        d[1]
    );
    assert!(
        d[2].starts_with("test.policy:5: invalid directive"),
        "{}",
        d[2]
    );
    assert_eq!(p.diagnostics()[1].line, 4);
    assert_eq!(p.diagnostics()[1].file, PathBuf::from("test.policy"));
}

#[test]
fn any_syntax_error_denies_every_call() {
    let good = "svc.A * @anyvm @anyvm allow\n* * @anyvm @anyvm allow\n";
    assert!(ev(&ok_pol(good), "svc.A", "", "work", "home").is_allow());
    // The error is after the rule that would allow, in an unrelated service.
    let p = pol(&format!("{good}other.Svc * @anyvm @anyvm alow\n"));
    assert!(!p.is_valid());
    for (svc, src, tgt) in [
        ("svc.A", "work", "home"),
        ("x", "home", "work"),
        ("svc.A", "dom0", "home"),
    ] {
        match deny_reason(&ev(&p, svc, "", src, tgt)) {
            DenyReason::PolicyInvalid { count, first } => {
                assert_eq!(count, 1);
                assert!(first.starts_with("test.policy:3:"), "{first}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn non_utf8_and_long_lines() {
    let p = Policy::from_text("t.policy", b"svc.A * @anyvm @anyvm allow\n\xff\xfe\n");
    assert_eq!(p.diagnostics()[0].kind, ErrorKind::NotUtf8);
    assert_eq!(p.diagnostics()[0].line, 2);
    let long = format!("# {}", "x".repeat(5000));
    assert!(matches!(
        one_error(&long),
        ErrorKind::LineTooLong {
            len: 5002,
            limit: 4096
        }
    ));
}

#[test]
fn rule_and_file_size_limits() {
    let limits = Limits {
        max_rules: 3,
        ..Limits::default()
    };
    let text = "a * @anyvm @anyvm deny\n".repeat(5);
    let p = Policy::from_text_with("t.policy", text.as_bytes(), None, limits);
    assert_eq!(p.rules().len(), 3);
    assert_eq!(p.diagnostics().len(), 1, "reported once");
    assert_eq!(p.diagnostics()[0].kind, ErrorKind::TooManyRules(3));
    assert_eq!(p.diagnostics()[0].line, 4);
    let limits = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let p = Policy::from_text_with("t.policy", text.as_bytes(), None, limits);
    assert!(matches!(
        p.diagnostics()[0].kind,
        ErrorKind::FileTooLarge { limit: 10, .. }
    ));
}

// ---------------------------------------------------------------- evaluation

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
fn unknown_source_is_denied() {
    let p = ok_pol("* * * * allow target=net");
    assert!(matches!(
        deny_reason(&ev(&p, "svc.A", "", "ghost", "")),
        DenyReason::UnknownSource(_)
    ));
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

// ---------------------------------------------------------------- ask

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

// ---------------------------------------------------------------- Qubes' examples

#[test]
fn qubes_default_policy_lines() {
    let p = ok_pol(
        "qubes.Filecopy          *           @anyvm          @anyvm      ask\n\
         qubes.OpenInVM          *           @anyvm          @dispvm     allow\n\
         qubes.OpenInVM          *           @anyvm          @anyvm      ask\n\
         qubes.OpenURL           *           @anyvm          @dispvm     allow\n\
         qubes.OpenURL           *           @anyvm          @anyvm      ask\n\
         qubes.StartApp          *           @anyvm          @dispvm     allow\n\
         qubes.GetDate           *           @tag:anon-vm    @anyvm      deny\n\
         qubes.GetDate           *           @anyvm          @anyvm      allow target=dom0\n\
         qubes.Notifications     *           @anyvm          @default    allow target=dom0\n\
         qubes.UpdatesProxy      *   @type:TemplateVM        @default    allow target=net\n\
         qubes.VMShell           *           @anyvm          @dispvm     allow\n\
         qubes.VMShell           *           @anyvm          @anyvm      deny\n\
         qubes.ConnectTCP        *           @anyvm          @anyvm      deny\n\
         qubes.ClipboardPaste * @adminvm\t@anyvm\task\n\
         qubes.ClipboardPaste * @anyvm\t@anyvm\task\n\
         qubes.WindowIconUpdater *   @anyvm dom0 allow\n\
         qubes.Filecopy * @anyvm @adminvm deny\n\
         qubes.InputMouse * net @adminvm deny\n",
    );
    assert!(ev(&p, "qubes.Filecopy", "", "work", "").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.OpenInVM", "", "work", "@dispvm")),
        "@dispvm:work-dvm"
    );
    assert!(ev(&p, "qubes.OpenInVM", "", "work", "home").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.GetDate", "", "work", "")),
        "dom0"
    );
    let mut s = sys();
    s.insert(DomainInfo::new(n("anon"), DomainClass::App).with_tag("anon-vm"));
    let req = Request::new("qubes.GetDate", "", "anon", "");
    assert!(p.evaluate(&req, &s).is_deny());
    assert_eq!(
        allow_target(&ev(&p, "qubes.Notifications", "", "work", "")),
        "dom0"
    );
    assert!(ev(&p, "qubes.Notifications", "", "work", "home").is_deny());
    assert_eq!(
        allow_target(&ev(&p, "qubes.UpdatesProxy", "", "debian", "")),
        "net"
    );
    assert!(ev(&p, "qubes.UpdatesProxy", "", "work", "").is_deny());
    assert!(ev(&p, "qubes.VMShell", "", "work", "home").is_deny());
    assert!(ev(&p, "qubes.VMShell", "", "work", "@dispvm").is_allow());
    assert!(ev(&p, "qubes.ClipboardPaste", "", "dom0", "work").is_ask());
    assert!(ev(&p, "qubes.ClipboardPaste", "", "home", "work").is_ask());
    assert_eq!(
        allow_target(&ev(&p, "qubes.WindowIconUpdater", "", "work", "dom0")),
        "dom0"
    );
    assert!(ev(&p, "qubes.Filecopy", "", "work", "dom0").is_deny());
    assert!(ev(&p, "qubes.ConnectTCP", "+22", "work", "home").is_deny());
}

#[test]
fn qubes_doc_examples() {
    let p = ok_pol(
        "* * anon-whonix @dispvm allow target=@dispvm:anon-whonix-dvm\n\
         * * work @tag:work ask default_target=work-files\n\
         test.File +testfile1 home work allow\n",
    );
    assert_eq!(
        allow_target(&ev(&p, "any.Thing", "", "anon-whonix", "@dispvm")),
        "@dispvm:anon-whonix-dvm"
    );
    let r = ev(&p, "x.Y", "+a", "work", "work-files");
    assert_eq!(ask_targets(&r), vec!["work-dvm", "work-files"]);
    assert_eq!(
        ask(&r).default_target,
        Some(CallTarget::Domain(n("work-files")))
    );
    assert!(ev(&p, "test.File", "+testfile1", "home", "work").is_allow());
    assert!(ev(&p, "test.File", "+testfile2", "home", "work").is_deny());
}

// ---------------------------------------------------------------- files

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(path, text).unwrap();
}

fn diag_strings(p: &Policy) -> Vec<String> {
    p.diagnostics().iter().map(|d| d.to_string()).collect()
}

#[test]
fn files_are_read_in_c_locale_name_order() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("50-b.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    write(
        &d.path().join("30-user.policy"),
        "svc.A * @anyvm home deny\n",
    );
    write(&d.path().join("5-a.policy"), "svc.A * work @anyvm deny\n");
    write(
        &d.path().join("50-a_b.policy"),
        "svc.B * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let files: Vec<String> = p
        .rules()
        .iter()
        .map(|r| {
            r.location
                .file()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Byte order: '3' < '5'; "5-a" < "50-": '-' (0x2d) < '0' (0x30); "50-a_b" < "50-b".
    assert_eq!(
        files,
        vec![
            "30-user.policy",
            "5-a.policy",
            "50-a_b.policy",
            "50-b.policy"
        ]
    );
    assert!(ev(&p, "svc.A", "", "untrusted", "home").is_deny());
    assert!(ev(&p, "svc.A", "", "untrusted", "work").is_allow());
}

#[test]
fn other_files_are_ignored_and_bad_names_are_errors() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("README"), "not a policy");
    write(&d.path().join("90-x.policy~"), "garbage");
    write(&d.path().join(".90-x.policy.swp"), "garbage");
    write(&d.path().join(".hidden.policy"), "garbage");
    fs::create_dir(d.path().join("dir.policy")).unwrap();
    write(
        &d.path().join("10-ok.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 1);
    write(
        &d.path().join("20-Bad.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1);
    assert!(ds[0].ends_with("20-Bad.policy:0: invalid filename \"20-Bad.policy\": policy file names may only contain 0-9 a-z _ . -"), "{}", ds[0]);
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());
}

#[test]
fn symlinked_policy_files_are_followed() {
    let d = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    write(&other.path().join("real"), "svc.A * @anyvm @anyvm allow\n");
    std::os::unix::fs::symlink(other.path().join("real"), d.path().join("10-link.policy")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.path().join("20-dangling.policy")).unwrap();
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 1);
}

#[test]
fn runtime_directory_is_merged_by_name() {
    let d = tempfile::tempdir().unwrap();
    let rt = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(
        &d.path().join("30-c.policy"),
        "svc.C * @anyvm @anyvm allow\n",
    );
    write(
        &rt.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    write(
        &rt.path().join("20-disp42.policy"),
        "svc.B * disp42 @anyvm allow\n",
    );
    let cfg = PolicyConfig::new(d.path()).with_runtime_dir(rt.path());
    let p = Policy::load(cfg);
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let lines: Vec<(String, String)> = p
        .rules()
        .iter()
        .map(|r| {
            (
                r.location
                    .file()
                    .parent()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                r.location
                    .file()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect();
    let rt_s = rt.path().to_string_lossy().into_owned();
    let d_s = d.path().to_string_lossy().into_owned();
    assert_eq!(
        lines,
        vec![
            (rt_s.clone(), "10-a.policy".into()),
            (rt_s, "20-disp42.policy".into()),
            (d_s, "30-c.policy".into())
        ]
    );
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    // A missing runtime directory is fine; a missing policy directory is an error.
    let p = Policy::load(PolicyConfig::new(d.path()).with_runtime_dir(d.path().join("nope")));
    assert!(p.is_valid());
    let p = Policy::load_dir(d.path().join("nope"));
    assert!(!p.is_valid());
    assert!(
        diag_strings(&p)[0].contains(":0: cannot read"),
        "{:?}",
        diag_strings(&p)
    );
}

#[test]
fn includes() {
    let d = tempfile::tempdir().unwrap();
    let abs = tempfile::tempdir().unwrap();
    write(&d.path().join("10-main.policy"), &format!(
        "svc.A * @anyvm @anyvm deny notify=no\n!include include/a\n!include-dir include/dir\n!include {}\n",
        abs.path().join("abs").display()
    ));
    write(
        &d.path().join("include/a"),
        "svc.B * @anyvm @anyvm allow\n!include include/b\n",
    );
    write(&d.path().join("include/b"), "svc.C * @anyvm @anyvm allow\n");
    write(
        &d.path().join("include/dir/20-y.policy"),
        "svc.E * @anyvm @anyvm allow\n",
    );
    write(
        &d.path().join("include/dir/10-x.policy"),
        "svc.D * @anyvm @anyvm allow\n",
    );
    write(&d.path().join("include/dir/README"), "ignored");
    write(&abs.path().join("abs"), "svc.F * @anyvm @anyvm allow\n");
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let svcs: Vec<&str> = p
        .rules()
        .iter()
        .map(|r| r.service.as_deref().unwrap())
        .collect();
    assert_eq!(
        svcs,
        vec!["svc.A", "svc.B", "svc.C", "svc.D", "svc.E", "svc.F"]
    );
    // Files in include/ (no .policy suffix, not in the top directory) are only read by include.
    assert!(ev(&p, "svc.C", "", "work", "home").is_allow());
}

#[test]
fn include_errors() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-main.policy"),
        "!include nope\n!include-dir nodir\n!include-dir 10-main.policy\n!include include\n",
    );
    fs::create_dir(d.path().join("include")).unwrap();
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 4, "{ds:?}");
    assert!(ds[0].contains("10-main.policy:1: not a file"), "{}", ds[0]);
    assert!(
        ds[1].contains("10-main.policy:2: not a directory"),
        "{}",
        ds[1]
    );
    assert!(
        ds[2].contains("10-main.policy:3: not a directory"),
        "{}",
        ds[2]
    );
    assert!(ds[3].contains("10-main.policy:4: not a file"), "{}", ds[3]);
}

#[test]
fn include_cycles_are_refused() {
    let d = tempfile::tempdir().unwrap();
    // Self include.
    write(
        &d.path().join("10-self.policy"),
        "!include 10-self.policy\n",
    );
    // A -> B -> A through include/.
    write(&d.path().join("20-a.policy"), "!include include/b\n");
    write(
        &d.path().join("include/b"),
        "svc.B * @anyvm @anyvm allow\n!include 20-a.policy\n",
    );
    // A directory that contains the including file.
    write(&d.path().join("30-dir.policy"), "!include-dir .\n");
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert!(
        ds.iter()
            .any(|s| s.contains("10-self.policy:1: circular include")),
        "{ds:?}"
    );
    assert!(
        ds.iter()
            .any(|s| s.contains("include/b:2: circular include")),
        "{ds:?}"
    );
    assert!(
        ds.iter()
            .any(|s| s.contains("30-dir.policy:1: circular include")),
        "{ds:?}"
    );
    assert!(ev(&p, "svc.B", "", "work", "home").is_deny());
    // The same file included twice (no cycle) is fine.
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "!include include/x\n!include include/x\n",
    );
    write(&d.path().join("include/x"), "svc.B * @anyvm @anyvm allow\n");
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(p.rules().len(), 2);
}

#[test]
fn include_depth_and_file_count_limits() {
    let d = tempfile::tempdir().unwrap();
    write(&d.path().join("10-a.policy"), "!include include/1\n");
    for i in 1..10 {
        write(
            &d.path().join(format!("include/{i}")),
            &format!("!include include/{}\n", i + 1),
        );
    }
    write(
        &d.path().join("include/10"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    let p = Policy::load_dir(d.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    let limits = Limits {
        max_include_depth: 4,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert!(
        ds[0].contains("include/4:1: include depth limit of 4 exceeded"),
        "{}",
        ds[0]
    );
    // Fan-out: each file includes the next one 10 times.
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        &"!include include/1\n".repeat(10),
    );
    write(
        &d.path().join("include/1"),
        &"!include include/2\n".repeat(10),
    );
    write(
        &d.path().join("include/2"),
        &"!include include/3\n".repeat(10),
    );
    write(&d.path().join("include/3"), "svc.A * @anyvm @anyvm allow\n");
    let limits = Limits {
        max_files: 100,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    assert!(p
        .diagnostics()
        .iter()
        .any(|d| d.kind == ErrorKind::TooManyFiles(100)));
}

#[test]
fn include_service_reads_legacy_files() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "!include-service svc.A * include/svc.A\n!include-service svc.B +x include/svc.B\n",
    );
    write(
        &d.path().join("include/svc.A"),
        "# legacy\n$anyvm $dispvm allow\nwork $anyvm allow,target=home,user=root\n$include:include/more\n",
    );
    write(
        &d.path().join("include/more"),
        "$anyvm $anyvm ask,default_target=work\n",
    );
    write(
        &d.path().join("include/svc.B"),
        "@anyvm @anyvm deny\n!include-dir include\n",
    );
    let p = Policy::load_dir(d.path());
    let ds = diag_strings(&p);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert!(
        ds[0].contains("include/svc.B:2: invalid directive \"!include-dir\""),
        "{}",
        ds[0]
    );
    let r = &p.rules()[1];
    assert_eq!(r.service.as_deref(), Some("svc.A"));
    assert_eq!(r.argument, None);
    assert!(matches!(&r.action, Action::Allow(a) if a.user.as_deref() == Some("root")));
    assert_eq!(p.rules()[2].service.as_deref(), Some("svc.A"));
    assert_eq!(p.rules()[3].argument.as_deref(), Some("+x"));
    let d2 = tempfile::tempdir().unwrap();
    write(
        &d2.path().join("10-a.policy"),
        "!include-service svc.A * include/svc.A\n",
    );
    write(
        &d2.path().join("include/svc.A"),
        "$anyvm $dispvm allow\nwork $anyvm allow,target=home\n$include:include/more\n",
    );
    write(
        &d2.path().join("include/more"),
        "$anyvm $anyvm ask,default_target=work\n",
    );
    let p = Policy::load_dir(d2.path());
    assert!(p.is_valid(), "{:?}", p.diagnostics());
    assert_eq!(
        allow_target(&ev(&p, "svc.A", "", "work", "untrusted")),
        "home"
    );
    assert!(ev(&p, "svc.A", "", "home", "untrusted").is_ask());
    assert!(ev(&p, "svc.B", "", "home", "untrusted").is_deny());
}

#[test]
fn check_reports_file_line_message() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\nsvc.A * @anyvm\n",
    );
    write(
        &d.path().join("20-b.policy"),
        "svc.A * @anyvm @default allow\n",
    );
    let diags = check(d.path());
    let s: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        s,
        vec![
            format!("{}:2: wrong number of fields (expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...])", d.path().join("10-a.policy").display()),
            format!("{}:1: allow action for @default rule must specify target= option", d.path().join("20-b.policy").display()),
        ]
    );
    assert_eq!(
        diags[1].message(),
        "allow action for @default rule must specify target= option"
    );
    fs::write(
        d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    )
    .unwrap();
    fs::remove_file(d.path().join("20-b.policy")).unwrap();
    assert!(check(d.path()).is_empty());
}

#[test]
fn big_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("10-a.policy"),
        &"# filler filler filler\n".repeat(100),
    );
    let limits = Limits {
        max_file_bytes: 1000,
        ..Limits::default()
    };
    let p = Policy::load(PolicyConfig::new(d.path()).with_limits(limits));
    let ds = diag_strings(&p);
    assert!(
        ds[0].ends_with("10-a.policy:0: file is 2300 bytes; the limit is 1000"),
        "{ds:?}"
    );
}

#[test]
fn reload_when_files_change() {
    let d = tempfile::tempdir().unwrap();
    let rt = tempfile::tempdir().unwrap();
    let rt_dir = rt.path().join("policy.d");
    write(
        &d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(&d.path().join("include/x"), "svc.B * @anyvm @anyvm deny\n");
    write(&d.path().join("20-b.policy"), "!include include/x\n");
    let mut p = Policy::load(PolicyConfig::new(d.path()).with_runtime_dir(&rt_dir));
    assert!(!p.load_if_changed(), "nothing changed yet");
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // Edit in place.
    fs::write(
        d.path().join("10-a.policy"),
        "svc.A * @anyvm @anyvm allow\n",
    )
    .unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    assert!(!p.load_if_changed());

    // An included file changes.
    fs::write(d.path().join("include/x"), "svc.B * @anyvm @anyvm allow\n").unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.B", "", "work", "home").is_allow());

    // The runtime directory appears with a rule.
    write(&rt_dir.join("05-disp.policy"), "svc.A * work home deny\n");
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // A file is removed; a broken file is added.
    fs::remove_file(rt_dir.join("05-disp.policy")).unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
    write(&d.path().join("50-broken.policy"), "oops\n");
    assert!(p.load_if_changed());
    assert!(!p.is_valid());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());

    // Text policies never reload.
    let mut t = pol("svc.A * @anyvm @anyvm allow");
    assert!(!t.load_if_changed());
}

#[test]
fn retargeted_include_symlink_reloads() {
    let d = tempfile::tempdir().unwrap();
    write(
        &d.path().join("include/deny"),
        "svc.A * @anyvm @anyvm deny\n",
    );
    write(
        &d.path().join("include/allow"),
        "svc.A * @anyvm @anyvm allow\n",
    );
    std::os::unix::fs::symlink("deny", d.path().join("include/current")).unwrap();
    write(&d.path().join("10-a.policy"), "!include include/current\n");
    let mut p = Policy::load_dir(d.path());
    assert!(ev(&p, "svc.A", "", "work", "home").is_deny());
    fs::remove_file(d.path().join("include/current")).unwrap();
    std::os::unix::fs::symlink("allow", d.path().join("include/current")).unwrap();
    assert!(p.load_if_changed());
    assert!(ev(&p, "svc.A", "", "work", "home").is_allow());
}

#[test]
fn config_from_installed_paths() {
    let paths = bulkhead_domain::Paths::under(Path::new("/x"));
    let c = PolicyConfig::from_paths(&paths);
    assert_eq!(c.dir, paths.config_dir.join("policy.d"));
    assert_eq!(c.runtime_dir, Some(paths.runtime_dir.join("policy.d")));
}

#[test]
fn domain_info_from_config() {
    use bulkhead_domain::{DomainConfig, Label};
    let mut cfg =
        DomainConfig::new(n("mail"), DomainClass::App, Label::Blue, Some(n("debian"))).unwrap();
    cfg.default_dispvm = Some(n("dvm"));
    let info = DomainInfo::from_config(&cfg, true);
    assert_eq!(info.name, n("mail"));
    assert_eq!(info.class, DomainClass::App);
    assert_eq!(info.default_dispvm, Some(n("dvm")));
    assert!(info.running && !info.internal && !info.template_for_dispvms);
    cfg.features.insert("internal".into(), "1".into());
    assert!(DomainInfo::from_config(&cfg, false).internal);
    let dvm = DomainConfig::new(
        n("dvm"),
        DomainClass::DisposableTemplate,
        Label::Red,
        Some(n("debian")),
    )
    .unwrap();
    assert!(DomainInfo::from_config(&dvm, false).template_for_dispvms);
}
