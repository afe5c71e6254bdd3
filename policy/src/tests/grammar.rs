//! The grammar of a policy file: comments, columns, actions and their parameters,
//! directives, and how errors and limits are reported.

use super::*;

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
