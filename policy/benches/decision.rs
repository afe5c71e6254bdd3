//! Policy decision time against a generated 1,000-rule policy. Target: under 5 µs.
//!
//! Run: `cargo bench -p bulkhead-policy --bench decision`

use std::fmt::Write;
use std::hint::black_box;

use bulkhead_domain::{DomainClass, DomainName};
use bulkhead_policy::{DomainInfo, Policy, Request, System};
use criterion::{criterion_group, criterion_main, Criterion};

fn name(s: &str) -> DomainName {
    match DomainName::new(s) {
        Ok(n) => n,
        Err(e) => panic!("bench setup: {e}"),
    }
}

/// 50 domains (app, templates, disposable templates), tags on every other one.
fn system() -> System {
    let mut s = System::new();
    for i in 0..40 {
        let mut d = DomainInfo::new(name(&format!("vm{i}")), DomainClass::App)
            .with_running(i % 3 == 0)
            .with_default_dispvm(name("dvm0"));
        if i % 2 == 0 {
            d = d.with_tag(&format!("tag{}", i % 10));
        }
        s.insert(d);
    }
    for i in 0..5 {
        s.insert(DomainInfo::new(
            name(&format!("dvm{i}")),
            DomainClass::DisposableTemplate,
        ));
        s.insert(DomainInfo::new(
            name(&format!("tpl{i}")),
            DomainClass::Template,
        ));
    }
    s
}

/// 1,000 rules: 100 services with 9 rules each (names, tags, types, @dispvm, deny and
/// allow), then 100 `*` service rules at the end.
fn policy_text() -> String {
    let mut t = String::new();
    for svc in 0..100 {
        for r in 0..9 {
            let line = match r {
                0 => format!("svc.S{svc} +arg{r} vm{} vm{} allow\n", r, r + 1),
                1 => format!("svc.S{svc} * @tag:tag{} @anyvm deny\n", (svc + 1) % 10),
                2 => format!("svc.S{svc} * @type:TemplateVM @default allow target=vm1\n"),
                3 => format!("svc.S{svc} * vm{} @dispvm allow\n", svc % 40),
                4 => format!("svc.S{svc} * @anyvm @dispvm:dvm{} allow\n", svc % 5),
                5 => format!("svc.S{svc} * vm{} @tag:tag{} ask\n", svc % 40, svc % 10),
                6 => format!("svc.S{svc} * uuid:00000000-0000-0000-0000-{svc:012} @anyvm deny\n"),
                7 => format!("svc.S{svc} * @anyvm @adminvm deny\n"),
                _ => format!("svc.S{svc} * vm39 vm38 allow user=user notify=yes\n"),
            };
            t.push_str(&line);
        }
    }
    for i in 0..100 {
        let _ = writeln!(t, "* * vm{} vm{} deny", i % 40, (i + 7) % 40);
    }
    t
}

fn bench(c: &mut Criterion) {
    let text = policy_text();
    let policy = Policy::from_text("bench.policy", text.as_bytes());
    assert!(policy.is_valid(), "{:?}", policy.diagnostics());
    assert_eq!(policy.rules().len(), 1000);
    let sys = system();

    // The last rule of the last service matches.
    let last = Request::new("svc.S99", "+x", "vm39", "vm38");
    assert!(policy.evaluate(&last, &sys).is_allow());
    c.bench_function(
        "decision: allow at the last rule of a service (1000 rules)",
        |b| b.iter(|| policy.evaluate(black_box(&last), black_box(&sys))),
    );

    // No rule matches: walks the service's rules and every `*` rule.
    let none = Request::new("svc.S50", "+x", "vm21", "vm22");
    assert!(policy.evaluate(&none, &sys).is_deny());
    c.bench_function("decision: no match, deny (1000 rules)", |b| {
        b.iter(|| policy.evaluate(black_box(&none), black_box(&sys)))
    });

    // @dispvm resolved through the source's default_dispvm.
    let disp = Request::new("svc.S10", "", "vm10", "@dispvm");
    assert!(policy.evaluate(&disp, &sys).is_allow());
    c.bench_function("decision: @dispvm allow (1000 rules)", |b| {
        b.iter(|| policy.evaluate(black_box(&disp), black_box(&sys)))
    });

    // Every rule has service `*`: all 1,000 are walked before the match at the end.
    let mut flat = String::new();
    for i in 0..999 {
        let _ = writeln!(flat, "* * vm{} @tag:tag{} deny", i % 39, i % 10);
    }
    flat.push_str("* * vm39 vm38 allow\n");
    let flat = Policy::from_text("flat.policy", flat.as_bytes());
    assert!(flat.is_valid());
    assert!(flat.evaluate(&last, &sys).is_allow());
    c.bench_function(
        "decision: worst case, 1000 wildcard rules, match at the end",
        |b| b.iter(|| flat.evaluate(black_box(&last), black_box(&sys))),
    );

    // An ask, which walks the service's rules again to compute the targets.
    let ask = Request::new("svc.S10", "", "vm10", "vm0");
    assert!(policy.evaluate(&ask, &sys).is_ask());
    c.bench_function("decision: ask with computed targets (1000 rules)", |b| {
        b.iter(|| policy.evaluate(black_box(&ask), black_box(&sys)))
    });

    c.bench_function("parse: 1000-rule policy", |b| {
        b.iter(|| Policy::from_text("bench.policy", black_box(text.as_bytes())))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
