//! The policy parser on arbitrary bytes (as one policy file, no includes), then a few
//! evaluations. A policy with any error must deny every call; every diagnostic must format
//! as `file:line: message` with a line inside the input. The last line of the input, if it
//! has four fields, is also evaluated as a request `SERVICE ARGUMENT SOURCE TARGET`.
#![no_main]

use std::sync::OnceLock;

use bulkhead_domain::{DomainClass, DomainName};
use bulkhead_policy::{DomainInfo, Policy, Request, Resolution, System};
use libfuzzer_sys::fuzz_target;

fn system() -> &'static System {
    static SYS: OnceLock<System> = OnceLock::new();
    SYS.get_or_init(|| {
        let n = |s: &str| DomainName::new(s).expect("fixed valid name");
        let mut s = System::new()
            .with(
                DomainInfo::new(n("work"), DomainClass::App)
                    .with_tag("work")
                    .with_running(true)
                    .with_default_dispvm(n("dvm"))
                    .with_uuid("11111111-2222-3333-4444-555555555555"),
            )
            .with(DomainInfo::new(n("home"), DomainClass::App).with_default_dispvm(n("dvm")))
            .with(DomainInfo::new(n("dvm"), DomainClass::DisposableTemplate).with_tag("work"))
            .with(DomainInfo::new(n("debian"), DomainClass::Template))
            .with(DomainInfo::new(n("net"), DomainClass::Service).with_internal(true));
        s.set_dom0_default_dispvm(Some(n("dvm")));
        s
    })
}

fn check(p: &Policy, req: &Request) {
    let r = p.evaluate(req, system());
    if !p.is_valid() {
        assert!(r.is_deny(), "invalid policy allowed a call: {r:?}");
    }
    if let Resolution::Ask(a) = &r {
        assert!(!a.targets.is_empty());
        for t in &a.targets {
            assert!(a.answer(Some(&t.to_answer())).is_ok());
        }
        assert!(a.answer(None).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    let p = Policy::from_text("fuzz.policy", data);
    let lines = data.split(|b| *b == b'\n').count();
    for d in p.diagnostics() {
        assert!(d.line <= lines, "line {} past the end ({lines})", d.line);
        let shown = d.to_string();
        assert!(shown.starts_with(&format!("fuzz.policy:{}: ", d.line)));
    }
    let fixed = [
        ("svc.A", "", "work", "home"),
        ("svc.A", "+x", "home", "@dispvm"),
        ("svc.A", "+", "work", ""),
        ("svc.B", "+arg", "dom0", "work"),
        ("svc.B", "", "debian", "@dispvm:dvm"),
        ("svc.A", "", "work", "dom0"),
    ];
    for (s, a, src, tgt) in fixed {
        check(&p, &Request::new(s, a, src, tgt));
    }
    if let Some(last) = data.rsplit(|b| *b == b'\n').next() {
        if let Ok(last) = std::str::from_utf8(last) {
            if let [s, a, src, tgt] = last.split_whitespace().collect::<Vec<_>>()[..] {
                check(&p, &Request::new(s, a, src, tgt));
            }
        }
    }
});
