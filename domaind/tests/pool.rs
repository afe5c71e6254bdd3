//! Warm disposable pools with real sandbox domains from the debian-12 template of
//! `$BULKHEAD_TEST_TEMPLATE_CACHE`: the pool fills to its size with paused disposables, a
//! request (RunDisposable or an `@dispvm` call) gets a member that existed before it was made
//! and the pool refills, size 0 means cold disposables, the memory margin holds a pool back
//! (and cold disposables: a request is refused below it),
//! a size change shrinks or grows it, and a domaind restart adopts the members without
//! leaking a domain, cgroup or mount.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bulkhead_api::Domaind1Proxy;
use bulkhead_testkit::{sandbox_template_cache, Debian12Env, DomaindOptions, TestBus, TestDomaind};
use zbus::zvariant::Fd;

const TEST_LIMIT: Duration = Duration::from_secs(420);
/// How long a pool may take to reach a size (each member is a real start).
const FILL_LIMIT: Duration = Duration::from_secs(180);

async fn bounded(body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

struct Env {
    _bus: TestBus,
    d: TestDomaind,
    _conn: zbus::Connection,
    p: Domaind1Proxy<'static>,
    dvm: String,
}

/// domaind with the cached debian-12 template, the given pool memory margin, and a
/// disposable template `<tag>-dvm` (pool size 0).
async fn setup(tag: &str, margin_mib: &str) -> Option<Env> {
    let cache = sandbox_template_cache()?;
    // the cached debian-12 template registered
    let Debian12Env {
        bus, d, conn, p, ..
    } = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        env: vec![("BULKHEAD_POOL_MEMORY_MARGIN_MIB".into(), margin_mib.into())],
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let dvm = format!("{tag}{}-dvm", std::process::id() % 10_000);
    p.create(
        &dvm,
        "disposable-template",
        "debian-12",
        "red",
        HashMap::new(),
    )
    .await
    .expect("create the disposable template");
    Some(Env {
        _bus: bus,
        d,
        _conn: conn,
        p,
        dvm,
    })
}

impl Env {
    async fn props(&self) -> HashMap<String, String> {
        self.p
            .get_properties(&self.dvm)
            .await
            .expect("GetProperties")
    }

    async fn members(&self) -> Vec<String> {
        let props = self.props().await;
        props["pool_members"]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    async fn set_size(&self, n: u32) {
        self.p
            .set_property(&self.dvm, "dispvm_pool_size", &n.to_string())
            .await
            .expect("set dispvm_pool_size");
    }

    /// Wait until the pool holds exactly `n` members; returns them.
    async fn wait_members(&self, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + FILL_LIMIT;
        loop {
            let m = self.members().await;
            if m.len() == n {
                return m;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the pool has {m:?}, not {n} members; note: {:?}\n{}",
                    self.props().await.get("pool_note"),
                    self.d.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// name -> (class, state) of every listed domain.
    async fn listed(&self) -> HashMap<String, (String, String)> {
        self.p
            .list()
            .await
            .expect("List")
            .into_iter()
            .map(|d| (d.name, (d.class, d.state)))
            .collect()
    }

    /// RunDisposable `sh -c SCRIPT`: (disposable, status, stdout).
    async fn run_dvm(&self, script: &str) -> (String, i32, String) {
        let (out_w, reader) = capture();
        let null = null();
        let (name, status) = self
            .p
            .run_disposable(
                &self.dvm,
                &["sh", "-c", script],
                "",
                Fd::from(&null),
                Fd::from(&out_w),
                Fd::from(&null),
            )
            .await
            .expect("RunDisposable");
        drop(out_w);
        (name, status, reader.join().expect("reader"))
    }

    /// The members' cgroups and mounts are gone and they are no longer listed.
    async fn assert_gone(&self, names: &[String]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listed = self.listed().await;
            let cgroups =
                bulkhead_sandbox::list_orphan_cgroups(self.d.cgroup_root()).expect("list cgroups");
            let left: Vec<&String> = names
                .iter()
                .filter(|n| listed.contains_key(*n) || cgroups.contains(n))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still there (listed or cgroup): {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for n in names {
            let dn = bulkhead_domain::DomainName::new(n).expect("name");
            assert!(
                !self.d.paths.runtime_domain_dir(&dn).exists(),
                "{n}: runtime dir left"
            );
            assert!(
                !self.d.paths.domain_state_dir(&dn).exists(),
                "{n}: state dir left"
            );
        }
    }

    /// No mount of the host's mount table lies below this domaind's directories.
    fn assert_no_mounts(&self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = self.d.root().expect("root").display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
    }
}

/// A pipe whose read end a thread drains: (write end, the text once it is closed).
fn capture() -> (OwnedFd, std::thread::JoinHandle<String>) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut s);
        s
    });
    (w, reader)
}

fn null() -> std::fs::File {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null")
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_fills_hands_out_refills_and_resizes() {
    bounded(pool_fills_body()).await
}

async fn pool_fills_body() {
    let Some(e) = setup("pf", "0").await else {
        return;
    };
    // size 0: no members, a request gets a cold disposable
    assert!(e.members().await.is_empty());
    let (cold, status, out) = e.run_dvm("uname -n").await;
    assert_eq!(status, 0);
    assert_eq!(out.trim(), cold, "ran in the disposable it names");
    assert!(cold.starts_with("disp"), "{cold}");

    // size 2: two paused disposables, named like any disposable
    e.set_size(2).await;
    let members = e.wait_members(2).await;
    let listed = e.listed().await;
    for m in &members {
        assert!(m.starts_with("disp"), "{m}");
        assert_eq!(
            listed.get(m),
            Some(&("disposable".to_owned(), "paused".to_owned())),
            "{m}"
        );
    }
    assert_eq!(e.props().await["pool_note"], "");

    // a request gets a member that was already running (no new start), unpaused
    let (got, status, out) = e
        .run_dvm("uname -n; cat /proc/self/cgroup >/dev/null")
        .await;
    assert_eq!(status, 0);
    assert!(members.contains(&got), "{got} is not one of {members:?}");
    assert_eq!(out.trim(), got);
    // it ends like any disposable, and the pool refills with a new member
    e.assert_gone(std::slice::from_ref(&got)).await;
    let refilled = e.wait_members(2).await;
    assert!(!refilled.contains(&got));
    let kept: Vec<&String> = members.iter().filter(|m| **m != got).collect();
    assert!(
        kept.iter().all(|k| refilled.contains(k)),
        "{refilled:?} lost one of {kept:?}"
    );

    // an @dispvm call from dom0 also takes a member
    let policy = e.d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-pool.policy"),
        format!("test.Name  *  @adminvm  @dispvm:{}  allow\n", e.dvm),
    )
    .expect("policy");
    let svc = e.d.guest_tools_dir.join("rpc").join("test.Name");
    std::fs::write(&svc, "#!/bin/sh\nuname -n\n").expect("service");
    std::fs::set_permissions(
        &svc,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod service");
    let before = e.members().await;
    let (out_w, reader) = capture();
    let null = null();
    let code =
        e.p.call(
            &format!("@dispvm:{}", e.dvm),
            "test.Name",
            Fd::from(&null),
            Fd::from(&out_w),
            Fd::from(&null),
        )
        .await
        .expect("Call @dispvm");
    drop(out_w);
    let out = reader.join().expect("reader");
    assert_eq!(code, 0);
    assert!(
        before.contains(&out.trim().to_owned()),
        "the call ran in {out:?}, not in a member of {before:?}"
    );
    e.assert_gone(&[out.trim().to_owned()]).await;
    let after_call = e.wait_members(2).await;

    // shrinking happens before SetProperty returns; growing in the background
    e.set_size(1).await;
    let one = e.members().await;
    assert_eq!(one.len(), 1, "{one:?}");
    let dropped: Vec<String> = after_call
        .into_iter()
        .filter(|m| !one.contains(m))
        .collect();
    e.assert_gone(&dropped).await;
    e.set_size(3).await;
    let three = e.wait_members(3).await;
    assert!(three.contains(&one[0]));

    // a template with a pool cannot be removed; the error says what to do
    match e.p.remove(&e.dvm).await {
        Err(bulkhead_api::Error::InvalidState(m)) => {
            assert!(m.contains("dispvm_pool_size 0"), "{m}")
        }
        other => panic!("{other:?}"),
    }

    // back to 0: every member goes, requests are cold again, and the template can go
    e.set_size(0).await;
    assert!(e.members().await.is_empty());
    e.assert_gone(&three).await;
    let (cold2, status, _) = e.run_dvm("true").await;
    assert_eq!(status, 0);
    assert!(!three.contains(&cold2));
    e.assert_gone(&[cold2]).await;
    e.p.remove(&e.dvm)
        .await
        .expect("remove the disposable template");
    e.assert_no_mounts();
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_respects_the_memory_margin() {
    bounded(memory_margin_body()).await
}

async fn memory_margin_body() {
    // A margin no host has: the pool must stay empty and say why.
    let Some(e) = setup("pm", "100000000").await else {
        return;
    };
    e.set_size(2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let note = loop {
        let props = e.props().await;
        if !props["pool_note"].is_empty() {
            break props["pool_note"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no pool note");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        note.contains("0 of 2") && note.contains("margin of 100000000 MiB"),
        "{note}"
    );
    assert!(e.members().await.is_empty());
    assert!(
        !e.listed().await.keys().any(|n| n.starts_with("disp")),
        "a member was started"
    );
    // A cold start for a request is held to the same margin: refused, and nothing is made.
    let null = null();
    let r =
        e.p.run_disposable(
            &e.dvm,
            &["true"],
            "",
            Fd::from(&null),
            Fd::from(&null),
            Fd::from(&null),
        )
        .await;
    match r {
        Err(bulkhead_api::Error::LimitReached(m)) => assert!(
            m.contains("not enough memory") && m.contains("margin of 100000000 MiB"),
            "{m}"
        ),
        other => panic!("a cold disposable started below the margin: {other:?}"),
    }
    assert!(
        !e.listed().await.keys().any(|n| n.starts_with("disp")),
        "a disposable was made"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_survives_a_domaind_restart_without_leaks() {
    bounded(restart_body()).await
}

async fn restart_body() {
    let Some(mut e) = setup("pr", "0").await else {
        return;
    };
    e.set_size(2).await;
    let members: BTreeSet<String> = e.wait_members(2).await.into_iter().collect();

    // SIGKILL domaind: the members keep running; the next domaind adopts them, paused, and
    // starts no new ones
    e.d.restart().await.expect("restart domaind");
    let (conn, p) = e.d.client().await.expect("client");
    e.p = p;
    e._conn = conn;
    let adopted: BTreeSet<String> = e.wait_members(2).await.into_iter().collect();
    assert_eq!(adopted, members);
    assert!(e
        .d
        .log()
        .contains("adopted a warm disposable into its pool"));
    let listed = e.listed().await;
    for m in &members {
        assert_eq!(listed[m].1, "paused", "{m}");
    }
    let disposables: Vec<&String> = listed
        .iter()
        .filter(|(_, (c, _))| c == "disposable")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(disposables.len(), 2, "{disposables:?}");

    // an adopted member works once handed out (its agent reconnects to the new domaind)
    let (got, status, out) = e.run_dvm("uname -n").await;
    assert_eq!(status, 0);
    assert!(members.contains(&got), "{got}");
    assert_eq!(out.trim(), got);
    let now = e.wait_members(2).await;

    // lower the size while domaind is down: the extra members are destroyed after adoption
    e.d.kill9();
    let file =
        e.d.paths
            .config_dir
            .join("domains")
            .join(format!("{}.toml", e.dvm));
    let text = std::fs::read_to_string(&file).expect("dvm config");
    std::fs::write(
        &file,
        text.replace("dispvm_pool_size = 2", "dispvm_pool_size = 1"),
    )
    .expect("edit dvm config");
    e.d.restart().await.expect("restart domaind");
    let (conn, p) = e.d.client().await.expect("client");
    e.p = p;
    e._conn = conn;
    let one = e.wait_members(1).await;
    assert!(now.contains(&one[0]), "{one:?} not from {now:?}");
    let extra: Vec<String> = now.iter().filter(|m| **m != one[0]).cloned().collect();
    e.assert_gone(&extra).await;

    // and everything goes with size 0: no domain, cgroup, runtime dir or mount left
    e.set_size(0).await;
    let all: Vec<String> = members.into_iter().chain(now).collect();
    e.assert_gone(&all).await;
    e.p.remove(&e.dvm)
        .await
        .expect("remove the disposable template");
    e.assert_no_mounts();
}
