//! Caps on live disposables and the memory margin of disposable starts, with the real
//! domaind, sandbox launcher, guest tools and `bulkhead-call` on the mini template (see
//! `calls.rs`): a source at its cap (`[disposables] max_live_per_source` in `domaind.toml`)
//! or all sources at `max_live` get `LimitReached` (a domain's call: 125 and the message)
//! while other sources still get theirs; ending disposables frees their slots; a handed-out
//! warm pool member counts; a domaind restart leaves nothing counted; and a memory margin
//! above what the host has refuses every disposable start but no ordinary domain start.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{bounded, cloexec_pipe, exchange, DomaindOptions, MiniEnv, StdioPipes};
use zbus::zvariant::Fd;

const TEST_LIMIT: Duration = Duration::from_secs(300);
const CALL: &str = "/usr/lib/bulkhead/bulkhead-call";
/// Holds its disposable until the caller closes stdin.
const HOLD: &str = "cat >/dev/null";

async fn setup(tag: &str, daemon_file: &str, margin_mib: &str) -> Option<MiniEnv> {
    let e = MiniEnv::start(
        tag,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            daemon_file: Some(daemon_file.into()),
            env: vec![("BULKHEAD_POOL_MEMORY_MARGIN_MIB".into(), margin_mib.into())],
            ..Default::default()
        },
    )
    .await?;
    assert!(
        e.d.guest_tools_dir.join("bulkhead-call").is_file(),
        "bulkhead-call is not among the guest tools; build it first (cargo build --workspace --bins)"
    );
    let tmpl = e.name("tmpl");
    for (n, class) in [
        (e.name("a"), "app"),
        (e.name("b"), "app"),
        (e.name("dvm"), "disposable-template"),
    ] {
        e.p.create(&n, class, &tmpl, "red", HashMap::new())
            .await
            .unwrap();
    }
    for n in [e.name("a"), e.name("b")] {
        e.p.set_property(&n, "default_dispvm", &e.name("dvm"))
            .await
            .unwrap();
    }
    let svc = e.d.guest_tools_dir.join("rpc/test.Hold");
    std::fs::create_dir_all(svc.parent().unwrap()).unwrap();
    std::fs::write(&svc, format!("#!/bin/sh\n{HOLD}\n")).unwrap();
    std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = e.d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("30-test.policy"),
        format!(
            "test.Hold * @anyvm @dispvm allow\n\
             test.Hold * @adminvm @dispvm:{dvm} allow\n",
            dvm = e.name("dvm")
        ),
    )
    .unwrap();
    Some(e)
}

/// A request whose disposable lives until [`Held::end`]: its stdin is a pipe we keep open.
struct Held {
    stdin: OwnedFd,
    task: tokio::task::JoinHandle<Result<i32, Error>>,
}

enum Hold {
    /// `RunDisposable` of `cat` from dom0 (the disposable template).
    Dom0(String),
    /// `bulkhead-call @dispvm test.Hold` in this domain (through `Run`).
    Call(String),
}

impl Held {
    fn dom0(p: &Domaind1Proxy<'static>, dvm: &str) -> Self {
        Self::spawn(p, Hold::Dom0(dvm.to_owned()))
    }

    fn call(p: &Domaind1Proxy<'static>, source: &str) -> Self {
        Self::spawn(p, Hold::Call(source.to_owned()))
    }

    fn spawn(p: &Domaind1Proxy<'static>, what: Hold) -> Self {
        let (r, w) = cloexec_pipe().expect("pipe");
        let null = || -> OwnedFd {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null")
                .into()
        };
        let (out, err) = (null(), null());
        let p = p.clone();
        let task = tokio::spawn(async move {
            let (i, o, e) = (Fd::from(&r), Fd::from(&out), Fd::from(&err));
            match what {
                Hold::Dom0(dvm) => p
                    .run_disposable(&dvm, &["sh", "-c", HOLD], "", i, o, e)
                    .await
                    .map(|(_, code)| code),
                Hold::Call(source) => {
                    p.run(&source, &[CALL, "@dispvm", "test.Hold"], "", i, o, e)
                        .await
                }
            }
        });
        Held { stdin: w, task }
    }

    /// Close its stdin: the command ends, and with it the disposable. Returns the result.
    async fn end(self) -> Result<i32, Error> {
        drop(self.stdin);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the held request did not end within 60 s")
            .expect("task")
    }
}

/// The disposables listed, with their states.
async fn disposables(p: &Domaind1Proxy<'_>) -> Vec<(String, String)> {
    p.list()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.class == "disposable")
        .map(|d| (d.name, d.state))
        .collect()
}

/// Wait until exactly `n` disposables are listed, all running (`n` = 0: none is left).
async fn wait_disposables(e: &MiniEnv, n: usize) -> Vec<String> {
    for _ in 0..600 {
        let d = disposables(&e.p).await;
        if d.len() == n && d.iter().all(|(_, s)| s == "running") {
            return d.into_iter().map(|(n, _)| n).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "not {n} running disposables: {:?}\n{}",
        disposables(&e.p).await,
        e.d.log()
    );
}

/// `bulkhead-call @dispvm test.Hold` in `source` with empty stdin: (code, stderr).
async fn call_once(p: &Domaind1Proxy<'_>, source: &str) -> (i32, String) {
    let (res, _, err) = exchange(p, Some(source), &[CALL, "@dispvm", "test.Hold"], b"").await;
    (res.expect("Run of bulkhead-call"), err)
}

/// `RunDisposable` of `true` from dom0.
async fn dom0_once(p: &Domaind1Proxy<'_>, dvm: &str) -> Result<i32, Error> {
    let io = StdioPipes::new(b"").expect("pipes");
    let (i, o, er) = io.fds();
    let res = p.run_disposable(dvm, &["true"], "", i, o, er).await;
    io.finish().await;
    res.map(|(_, code)| code)
}

fn limit_message(r: Result<i32, Error>) -> String {
    match r {
        Err(Error::LimitReached(m)) => m,
        other => panic!("not refused with LimitReached: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_disposables_are_capped_per_source_and_in_total() {
    bounded(TEST_LIMIT, caps_body()).await
}

async fn caps_body() {
    let Some(mut e) = setup(
        "dc",
        "[disposables]\nmax_live = 2\nmax_live_per_source = 1\n",
        "0",
    )
    .await
    else {
        return;
    };
    let (a, b, dvm) = (e.name("a"), e.name("b"), e.name("dvm"));

    // dom0 takes its one disposable; its next request is refused, and none is made for it.
    let dom0 = Held::dom0(&e.p, &dvm);
    let first = wait_disposables(&e, 1).await;
    let m = limit_message(dom0_once(&e.p, &dvm).await);
    assert!(
        m.contains("dom0 already has 1 live disposables") && m.contains("max_live_per_source"),
        "{m}"
    );
    assert_eq!(
        disposables(&e.p)
            .await
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        first
    );
    // Over D-Bus `Call` (the CLI's `run --service`) too.
    let (r, _, _) = exchange(&e.p, None, &[&format!("@dispvm:{dvm}"), "test.Hold"], b"").await;
    let m = limit_message(r);
    assert!(m.contains("max_live_per_source"), "{m}");

    // Another source still gets one: a's @dispvm call (the open-in-disposable path).
    let from_a = Held::call(&e.p, &a);
    wait_disposables(&e, 2).await;
    // a is at its own cap now...
    let (code, err) = call_once(&e.p, &a).await;
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains(&format!("{a} already has 1 live disposables")),
        "{err}"
    );
    // ...and b, with none of its own, meets the total.
    let (code, err) = call_once(&e.p, &b).await;
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("2 disposables are live") && err.contains("max_live (now 2)"),
        "{err}"
    );
    assert_eq!(disposables(&e.p).await.len(), 2);
    assert!(e.d.log().contains("disposable refused"), "{}", e.d.log());

    // Ending them frees their slots: each source gets one again.
    assert_eq!(dom0.end().await.expect("dom0's RunDisposable"), 0);
    assert_eq!(from_a.end().await.expect("a's call"), 0);
    wait_disposables(&e, 0).await;
    assert_eq!(dom0_once(&e.p, &dvm).await.expect("RunDisposable"), 0);
    let (code, err) = call_once(&e.p, &b).await;
    assert_eq!(code, 0, "{err}\n{}", e.d.log());
    let (code, err) = call_once(&e.p, &a).await;
    assert_eq!(code, 0, "{err}");
    wait_disposables(&e, 0).await;

    // A handed-out warm pool member counts; ready members do not.
    e.p.set_property(&dvm, "dispvm_pool_size", "1")
        .await
        .unwrap();
    let ready = wait_members(&e, &dvm).await;
    let dom0 = Held::dom0(&e.p, &dvm);
    // The pool refills (after its member is handed out): a ready member again, not dom0's.
    let refilled = loop {
        let m = wait_members(&e, &dvm).await;
        if m != ready {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let m = limit_message(dom0_once(&e.p, &dvm).await);
    assert!(m.contains("dom0 already has 1 live"), "{m}");
    assert_eq!(
        wait_members(&e, &dvm).await,
        refilled,
        "a refused request took the ready member"
    );
    // b gets the ready member.
    let (code, err) = call_once(&e.p, &b).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(dom0.end().await.expect("dom0's RunDisposable"), 0);
    e.p.set_property(&dvm, "dispvm_pool_size", "0")
        .await
        .unwrap();

    // A restart kills a held disposable (its caller is gone) and nothing stays counted.
    let dom0 = Held::dom0(&e.p, &dvm);
    wait_disposables(&e, 1).await;
    e.d.restart().await.expect("restart domaind");
    let (_c, p) = e.d.client().await.expect("client");
    assert!(dom0.end().await.is_err(), "the old domaind answered");
    for _ in 0..300 {
        if disposables(&p).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dom0_once(&p, &dvm).await.expect("RunDisposable"), 0);
    let held = Held::dom0(&p, &dvm);
    for _ in 0..300 {
        if disposables(&p).await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    limit_message(dom0_once(&p, &dvm).await);
    assert_eq!(held.end().await.expect("RunDisposable"), 0);
}

/// Wait until `dvm`'s pool has exactly one ready member; returns it.
async fn wait_members(e: &MiniEnv, dvm: &str) -> Vec<String> {
    for _ in 0..1200 {
        let props = e.p.get_properties(dvm).await.unwrap();
        let m: Vec<String> = props["pool_members"]
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if m.len() == 1 {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the pool of {dvm} did not fill: {:?}\n{}",
        e.p.get_properties(dvm).await.unwrap().get("pool_note"),
        e.d.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_margin_holds_back_every_disposable_start() {
    bounded(TEST_LIMIT, memory_body()).await
}

async fn memory_body() {
    // A margin no host has: every new disposable would take MemAvailable below it.
    let Some(e) = setup("dm", "", "1000000000000").await else {
        return;
    };
    let (a, dvm) = (e.name("a"), e.name("dvm"));
    let m = limit_message(dom0_once(&e.p, &dvm).await);
    assert!(
        m.contains("not enough memory") && m.contains("--pool-memory-margin-mib"),
        "{m}"
    );
    // An ordinary domain starts (the margin is for disposables), and its call is refused
    // the same way.
    e.p.start(&a).await.expect("an app domain starts");
    let (code, err) = call_once(&e.p, &a).await;
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("not enough memory"), "{err}");
    // No disposable was made (nor left behind).
    assert!(disposables(&e.p).await.is_empty());
    let listed: Vec<String> =
        e.p.list()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
    assert!(!listed.iter().any(|n| n.starts_with("disp")), "{listed:?}");
    e.p.kill(&a).await.unwrap();
}
