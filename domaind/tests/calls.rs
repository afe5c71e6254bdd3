//! Inter-domain calls with real domains: the real domaind, sandbox launcher, bulkhead-init,
//! bulkhead-agent and bulkhead-call on a tiny template root (see `lifecycle.rs`), with the
//! policy in the test domaind's `<config>/policy.d` and test services in the guest tools'
//! `rpc/` directory (mounted at /usr/lib/bulkhead/rpc in every domain).
//!
//! A call is made by running `bulkhead-call` in the source domain through D-Bus `Run`, whose
//! exit code is then bulkhead-call's: the service's status, 126 refused, 125 failure.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{
    bounded, exchange, AskAnswer, DomaindOptions, MiniEnv, TestAskAgent, TestBus, TestDomaind,
};

const TEST_LIMIT: Duration = Duration::from_secs(240);
const CALL: &str = "/usr/lib/bulkhead/bulkhead-call";

/// The mini-template set-up with this file's helpers.
struct Env(MiniEnv);

impl std::ops::Deref for Env {
    type Target = MiniEnv;
    fn deref(&self) -> &MiniEnv {
        &self.0
    }
}

impl Env {
    fn policy_dir(&self) -> PathBuf {
        self.d.paths.config_dir.join("policy.d")
    }

    /// Replace the policy with `files` (name, text); `{p}` in the text is the name prefix.
    fn set_policy(&self, files: &[(&str, &str)]) {
        let dir = self.policy_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text.replace("{p}", &self.pre)).unwrap();
        }
    }

    /// A service script in the guest tools' rpc dir.
    fn service(&self, name: &str, body: &str) {
        let p = self.d.guest_tools_dir.join("rpc").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Whether `~/file` exists in running domain `name` (asked inside it: its private
    /// volume is an image mounted only in the domain).
    async fn home_has(&self, name: &str, file: &str) -> bool {
        let script = format!("[ -e /home/user/{file} ]");
        let (r, _, _) = exchange(&self.p, Some(name), &["sh", "-c", &script], b"").await;
        r.expect("run [ -e ]") == 0
    }

    /// Whether `~/file` exists in halted domain `name`: read from its private volume image
    /// with debugfs, without mounting it.
    fn halted_home_has(&self, name: &str, file: &str) -> bool {
        let dn = bulkhead_domain::DomainName::new(name).unwrap();
        let image = self.d.paths.private_image(&dn);
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat /user/{file}")])
            .arg(&image)
            .output()
            .expect("debugfs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(image.exists(), "no image {}", image.display());
        !err.contains("File not found")
    }
}

async fn setup(tag: &str, ask_timeout_secs: &str) -> Option<Env> {
    let env = MiniEnv::start(
        tag,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            env: vec![("BULKHEAD_ASK_TIMEOUT".into(), ask_timeout_secs.into())],
            ..Default::default()
        },
    )
    .await?;
    assert!(
        env.d.guest_tools_dir.join("bulkhead-call").is_file(),
        "bulkhead-call is not among the guest tools; build it first (cargo build --workspace --bins)"
    );
    Some(Env(env))
}

/// `bulkhead-call TARGET SERVICE` in domain `source`: (exit code, stdout, stderr).
async fn call_from(
    e: &Env,
    source: &str,
    target: &str,
    service: &str,
    input: &[u8],
) -> (i32, String, String) {
    let (r, out, err) = exchange(&e.p, Some(source), &[CALL, target, service], input).await;
    (r.expect("Run of bulkhead-call"), out, err)
}

async fn state(p: &Domaind1Proxy<'_>, name: &str) -> String {
    p.list()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == name)
        .map(|d| d.state)
        .unwrap_or_else(|| "absent".into())
}

const ECHO: &str = r#"printf '%s|%s|%s|%s|' "$BULKHEAD_REMOTE_DOMAIN" "$BULKHEAD_SERVICE" "$1" "$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"; cat; echo "ran $BULKHEAD_REMOTE_DOMAIN" >> "$HOME/ran-$BULKHEAD_SERVICE""#;

#[tokio::test(flavor = "multi_thread")]
async fn calls_between_domains_follow_the_policy() {
    bounded(TEST_LIMIT, calls_between_domains_follow_the_policy_body()).await
}

async fn calls_between_domains_follow_the_policy_body() {
    let Some(e) = setup("cl", "2").await else {
        return;
    };
    let (a, b, c, dvm, tmpl) = (
        e.name("a"),
        e.name("b"),
        e.name("c"),
        e.name("dvm"),
        e.name("tmpl"),
    );
    for (n, class, t) in [
        (&a, "app", &tmpl),
        (&b, "app", &tmpl),
        (&c, "app", &tmpl),
        (&dvm, "disposable-template", &tmpl),
    ] {
        e.p.create(n, class, t, "blue", HashMap::new())
            .await
            .unwrap();
    }
    e.p.set_property(&a, "default_dispvm", &dvm).await.unwrap();
    e.p.set_property(&c, "features.tags", "trusted other")
        .await
        .unwrap();
    for s in [
        "test.Echo",
        "test.Mark",
        "test.Ask",
        "test.Dvm",
        "test.Tag",
        "test.None",
    ] {
        e.service(s, ECHO);
    }
    e.set_policy(&[(
        "30-test.policy",
        "# test policy\n\
         test.Echo  *       @anyvm    {p}b        allow\n\
         test.Echo  *       @adminvm  @anyvm      allow\n\
         test.Mark  +deny   @anyvm    @anyvm      deny\n\
         test.Mark  *       @anyvm    {p}b        allow autostart=no\n\
         test.Ask   *       @anyvm    @anyvm      ask default_target={p}b\n\
         test.Dvm   *       @anyvm    @dispvm     allow\n\
         test.Tag   *       @anyvm    @tag:trusted allow\n",
    )]);

    // Allowed: runs in b, which autostarts; the source and argument come from domaind.
    assert_eq!(state(&e.p, &b).await, "halted");
    let (code, out, err) = call_from(&e, &a, &b, "test.Echo+x.y", b"hello").await;
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}\n{}", e.d.log());
    assert_eq!(out, format!("{a}|test.Echo|x.y|{b}|hello"));
    assert_eq!(state(&e.p, &b).await, "running", "b was not autostarted");
    assert!(e.home_has(&b, "ran-test.Echo").await);

    // A caller that lies about its name changes nothing.
    let (r, out, _) = exchange(
        &e.p,
        Some(&a),
        &["env", "BULKHEAD_REMOTE_DOMAIN=dom0", CALL, &b, "test.Echo"],
        b"",
    )
    .await;
    assert_eq!(r.unwrap(), 0);
    assert!(out.starts_with(&format!("{a}|")), "{out}");

    // Denied by a rule, and no matching rule: 126, and the service never runs.
    let (code, _, err) = call_from(&e, &a, &b, "test.Mark+deny", b"").await;
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("30-test.policy:4"), "{err}");
    let (code, _, err) = call_from(&e, &a, &b, "test.None", b"").await;
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("no matching rule"), "{err}");
    // autostart=no towards a halted domain is refused too.
    let (code, _, _) = call_from(&e, &a, &c, "test.Mark", b"").await;
    assert_eq!(code, 126);
    assert_eq!(state(&e.p, &c).await, "halted");
    assert!(!e.home_has(&b, "ran-test.Mark").await);
    assert!(!e.halted_home_has(&c, "ran-test.Mark"));

    // Tags come from the feature `tags`.
    let (code, out, err) = call_from(&e, &a, &c, "test.Tag", b"").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{a}|test.Tag||{c}|")), "{out}");

    // Ask without an ask agent: deny.
    let (code, _, err) = call_from(&e, &a, "@default", "test.Ask", b"").await;
    assert_eq!(code, 126, "{err}");
    // Ask answered by the ask agent with a chosen target.
    let agent = TestAskAgent::register(&e.d, AskAnswer::Target(c.clone()))
        .await
        .unwrap();
    let (code, out, err) = call_from(&e, &a, "@default", "test.Ask+q", b"").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("{a}|test.Ask|q|{c}|")), "{out}");
    let asked = agent.take_questions();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (
            asked[0].source.as_str(),
            asked[0].service.as_str(),
            asked[0].arg.as_str()
        ),
        (a.as_str(), "test.Ask", "q")
    );
    assert_eq!(asked[0].default_target, b);
    assert!(asked[0].targets.contains(&b) && asked[0].targets.contains(&c));
    assert!(
        !asked[0].targets.contains(&a),
        "the source is offered: {asked:?}"
    );
    // A target outside the offered list is refused.
    agent.set_answer(AskAnswer::Target("dom0".into()));
    let (code, _, _) = call_from(&e, &a, "@default", "test.Ask", b"").await;
    assert_eq!(code, 126);
    // Deny, and no answer within the (2 s) timeout.
    agent.set_answer(AskAnswer::Deny);
    let (code, _, _) = call_from(&e, &a, &b, "test.Ask", b"").await;
    assert_eq!(code, 126);
    agent.set_answer(AskAnswer::Never);
    let (code, _, err) = call_from(&e, &a, &b, "test.Ask", b"").await;
    assert_eq!(code, 126, "{err}");
    assert_eq!(agent.take_questions().len(), 3);

    // @dispvm: a disposable from a's default_dispvm runs the service and is gone afterwards.
    let before: Vec<String> =
        e.p.list()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
    let (code, out, err) = call_from(&e, &a, "@dispvm", "test.Dvm", b"in").await;
    assert_eq!(code, 0, "{err}\n{}", e.d.log());
    let host = out.split('|').nth(3).unwrap_or_default().to_owned();
    assert!(host.starts_with("disp"), "ran in {host:?}: {out}");
    assert!(out.ends_with("|in"), "{out}");
    // It is removed right after the call ended (the caller does not wait for that).
    let mut after = Vec::new();
    for _ in 0..300 {
        after =
            e.p.list()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.name)
                .collect::<Vec<_>>();
        if !after.contains(&host) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(before, after, "the disposable {host} was not removed");

    // dom0 through D-Bus Call (the CLI's `bulkhead run --service`).
    let (r, out, _) = exchange(&e.p, None, &[&b, "test.Echo+d0"], b"z").await;
    assert_eq!(r.unwrap(), 0);
    assert_eq!(out, format!("dom0|test.Echo|d0|{b}|z"));
    // A deny is also announced on the bus (signal CallDenied, for the desktop's notices).
    let mut denied =
        e.p.receive_call_denied()
            .await
            .expect("subscribe to CallDenied");
    let (r, _, _) = exchange(&e.p, None, &[&b, "test.Mark+deny"], b"").await;
    assert!(matches!(r, Err(Error::AccessDenied(_))), "{r:?}");
    let sig = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut denied),
    )
    .await
    .expect("no CallDenied signal within 10 s")
    .expect("signal stream ended");
    let args = sig.args().expect("CallDenied arguments");
    assert_eq!(
        (
            args.source.as_str(),
            args.target.as_str(),
            args.service.as_str()
        ),
        ("dom0", b.as_str(), "test.Mark+deny")
    );
    // dom0 matches no rule of 30-test.policy (they are for @anyvm).
    assert_eq!(args.reason, "no matching rule found");

    // A broken policy file denies every call, until it is fixed (reloaded on change).
    std::fs::write(
        e.policy_dir().join("10-broken.policy"),
        "test.Echo * @anyvm\n",
    )
    .unwrap();
    let (code, _, err) = call_from(&e, &a, &b, "test.Echo", b"").await;
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("10-broken.policy:1"), "{err}");
    let (r, _, _) = exchange(&e.p, None, &[&b, "test.Echo"], b"").await;
    assert!(matches!(r, Err(Error::AccessDenied(_))), "{r:?}");
    std::fs::remove_file(e.policy_dir().join("10-broken.policy")).unwrap();
    let (code, _, err) = call_from(&e, &a, &b, "test.Echo", b"").await;
    assert_eq!(code, 0, "{err}");

    // The last decision between two domains names the rule that made it (the policy
    // editor shows it): a's call to b was allowed by the rule on line 2; dom0's last call to b
    // was denied because of the broken file, which the reason names; c never called a.
    let (svc, outcome, detail, at) = e.p.last_decision(&a, &b).await.unwrap();
    assert_eq!((svc.as_str(), outcome.as_str()), ("test.Echo", "allowed"));
    assert!(detail.contains("30-test.policy:2"), "{detail}");
    assert!(at > 1_700_000_000, "{at}");
    let (svc, outcome, detail, _) = e.p.last_decision("dom0", &b).await.unwrap();
    assert_eq!((svc.as_str(), outcome.as_str()), ("test.Echo", "denied"));
    assert!(detail.contains("10-broken.policy:1"), "{detail}");
    assert!(matches!(
        e.p.last_decision(&c, &a).await,
        Err(Error::InvalidArgument(_))
    ));

    for n in [&a, &b, &c] {
        let _ = e.p.kill(n).await;
    }
}

/// The rules domaind puts around questions, whatever the ask agent: templates and service
/// domains are offered only when named, the requested target is preselected (else none),
/// a source has one question open at a time and is throttled when it keeps asking.
#[tokio::test(flavor = "multi_thread")]
async fn questions_are_guarded_by_domaind() {
    bounded(TEST_LIMIT, questions_are_guarded_by_domaind_body()).await
}

async fn questions_are_guarded_by_domaind_body() {
    let Some(e) = setup("qg", "4").await else {
        return;
    };
    let (a, b, svc, tmpl) = (e.name("a"), e.name("b"), e.name("svc"), e.name("tmpl"));
    for (n, class) in [(&a, "app"), (&b, "app"), (&svc, "service")] {
        e.p.create(n, class, &tmpl, "blue", HashMap::new())
            .await
            .unwrap();
    }
    for s in ["test.Ask", "test.Named"] {
        e.service(s, ECHO);
    }
    e.set_policy(&[(
        "30-test.policy",
        "test.Ask   *  @anyvm  @anyvm  ask\n\
         test.Named *  @anyvm  {p}svc  ask\n\
         test.Named *  @anyvm  @anyvm  ask\n",
    )]);
    let agent = TestAskAgent::register(&e.d, AskAnswer::Target(b.clone()))
        .await
        .unwrap();

    // The template and the service domain are not offered; the requested target is
    // preselected.
    let (code, _, err) = call_from(&e, &a, &b, "test.Ask", b"").await;
    assert_eq!(code, 0, "{err}\n{}", e.d.log());
    let q = agent.take_questions();
    assert_eq!(q.len(), 1);
    assert!(q[0].targets.contains(&b), "{q:?}");
    assert!(
        !q[0].targets.contains(&tmpl) && !q[0].targets.contains(&svc),
        "a template or service domain nobody named is offered: {q:?}"
    );
    assert_eq!(q[0].default_target, b, "{q:?}");
    // Nothing requested: nothing preselected (not the first target).
    let (code, _, err) = call_from(&e, &a, "@default", "test.Ask", b"").await;
    assert_eq!(code, 0, "{err}");
    let q = agent.take_questions();
    assert_eq!(q[0].default_target, "", "{q:?}");
    // The caller names the template: offered, and preselected.
    let (code, _, err) = call_from(&e, &a, &tmpl, "test.Ask", b"").await;
    assert_eq!(code, 0, "{err}");
    let q = agent.take_questions();
    assert!(q[0].targets.contains(&tmpl), "{q:?}");
    assert_eq!(q[0].default_target, tmpl, "{q:?}");
    // A rule names the service domain: offered.
    let (code, _, err) = call_from(&e, &a, &b, "test.Named", b"").await;
    assert_eq!(code, 0, "{err}");
    let q = agent.take_questions();
    assert!(
        q[0].targets.contains(&svc) && !q[0].targets.contains(&tmpl),
        "{q:?}"
    );

    // One open question per source: while a's question waits (never answered, 4 s timeout),
    // a second call from a is refused at once without a question; b may still ask.
    agent.set_answer(AskAnswer::Never);
    let first = call_from(&e, &a, &b, "test.Ask", b"");
    let others = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while agent.take_questions().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first question never came"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = std::time::Instant::now();
        let (code, _, err) = call_from(&e, &a, &b, "test.Ask", b"").await;
        assert_eq!(code, 126, "{err}");
        assert!(err.contains("already has a question open"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the second call waited for an answer"
        );
        assert!(
            agent.take_questions().is_empty(),
            "a second question from the same source was asked"
        );
        let (code, _, _) = call_from(&e, &b, &a, "test.Ask", b"").await;
        assert_eq!(code, 126);
        assert_eq!(agent.take_questions().len(), 1, "b was not asked about");
    };
    let ((code, _, _), ()) = tokio::join!(first, others);
    assert_eq!(code, 126);

    // Throttling: a's unanswered question counts; after two denials more (three questions
    // not allowed within a minute) a is refused without a question.
    agent.set_answer(AskAnswer::Deny);
    for _ in 0..2 {
        let (code, _, _) = call_from(&e, &a, &b, "test.Ask", b"").await;
        assert_eq!(code, 126);
    }
    assert_eq!(agent.take_questions().len(), 2);
    agent.set_answer(AskAnswer::Target(b.clone()));
    let (code, _, err) = call_from(&e, &a, &b, "test.Ask", b"").await;
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("may ask again in"), "{err}");
    assert!(
        agent.take_questions().is_empty(),
        "a throttled source was asked about"
    );
    // b is not throttled.
    agent.set_answer(AskAnswer::Target(a.clone()));
    let (code, _, err) = call_from(&e, &b, &a, "test.Ask", b"").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(agent.take_questions().len(), 1);

    for n in [&a, &b] {
        let _ = e.p.kill(n).await;
    }
}

/// Policy queries on D-Bus need no running domain.
#[tokio::test(flavor = "multi_thread")]
async fn paste_and_policy_checks_over_dbus() {
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let (_conn, p) = d.client().await.unwrap();
    p.create("tmpl", "template", "", "black", HashMap::new())
        .await
        .unwrap();
    for n in ["work", "mail", "vault"] {
        p.create(n, "app", "tmpl", "blue", HashMap::new())
            .await
            .unwrap();
    }
    let dir = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("50-clip.policy"),
        "bulkhead.ClipboardPaste * vault @anyvm deny\n\
         bulkhead.ClipboardPaste * work mail allow\n\
         bulkhead.ClipboardPaste * @anyvm @anyvm ask\n",
    )
    .unwrap();
    assert!(p.check_policy().await.unwrap().is_empty());
    assert!(p.evaluate_paste("work", "mail").await.unwrap(), "allow");
    assert!(
        p.evaluate_paste("mail", "work").await.unwrap(),
        "ask counts as allow"
    );
    assert!(!p.evaluate_paste("vault", "work").await.unwrap(), "deny");
    assert!(
        !p.evaluate_paste("work", "nosuch").await.unwrap(),
        "unknown target"
    );
    assert!(
        !p.evaluate_paste("work", "work").await.unwrap(),
        "same domain"
    );

    // The editor's check: file:line errors of the text as if saved.
    let rows = p
        .check_policy_text(
            "30-user.policy",
            "# ok\nbulkhead.Filecopy * @anyvm @anyvm ask\nx y\n",
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.ends_with("policy.d/30-user.policy"), "{rows:?}");
    assert_eq!(rows[0].1, 3);
    assert!(rows[0].2.contains("wrong number of fields"), "{rows:?}");
    assert!(p
        .check_policy_text("30-user.policy", "* * @anyvm @anyvm deny\n")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        p.check_policy_text("../x.policy", "").await,
        Err(Error::InvalidProperty(_))
    ));

    // A broken installed file: reported, and every paste is denied.
    std::fs::write(
        dir.join("60-bad.policy"),
        "bulkhead.X * @anyvm @anyvm allow bogus=1\n",
    )
    .unwrap();
    let rows = p.check_policy().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].0.ends_with("60-bad.policy") && rows[0].1 == 1,
        "{rows:?}"
    );
    assert!(!p.evaluate_paste("work", "mail").await.unwrap());
}
