//! Templates you can change (issue 16): what a template domain changes in its root becomes
//! the template's root when it stops; domains that run keep the root they started on, every
//! next start sees the change. A change can be undone (`RevertTemplate`, Qubes' `qvm-volume
//! revert`) and the undo undone; warm disposables made before a change or a revert are
//! replaced. Real domaind, real sandboxes, a mini template in this test's own store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_api::Error;
use bulkhead_testkit::{bounded, run_sh, run_sh_as, DomaindOptions, MiniEnv};

const TEST_LIMIT: Duration = Duration::from_secs(180);

fn current(env: &MiniEnv, tmpl: &str) -> PathBuf {
    std::fs::read_link(env.d.paths.templates_dir().join(tmpl).join("current"))
        .expect("current link")
}

fn roots(env: &MiniEnv, tmpl: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.d.paths.templates_dir().join(tmpl))
        .expect("template dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("root-") || n.starts_with("build-"))
        .collect();
    v.sort();
    v
}

/// This test's domaind with a mini template of its own (None: skipped, and said so).
async fn mini_env(tag: &str) -> Option<MiniEnv> {
    MiniEnv::start(
        tag,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_change_reaches_the_next_start_of_its_domains() {
    bounded(TEST_LIMIT, body()).await;
}

async fn body() {
    let Some(env) = mini_env("tc").await else {
        return;
    };
    let p = &env.p;
    let (tmpl, a, b) = (env.name("tmpl"), env.name("a"), env.name("b"));
    for x in [&a, &b] {
        p.create(x, "app", &tmpl, "blue", HashMap::new())
            .await
            .expect("create");
    }
    p.start(&a).await.expect("start a");
    let first = current(&env, &tmpl);

    // In the template, as its root: new files, a symlink, a removed file, and the
    // resolv.conf Bulkhead writes for each domain (not kept).
    let (code, out) = run_sh_as(
        p,
        &tmpl,
        "root",
        "mkdir -p /opt/t && echo v2 > /opt/t/file && ln -s file /opt/t/link \
         && echo changed > /etc/passwd-extra && rm /bin/false \
         && echo nameserver 192.0.2.9 > /etc/resolv.conf",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    let second = current(&env, &tmpl);
    assert_ne!(first, second, "the template's changes made a new root");

    // a ran all along: its root is the one it started on.
    let (code, out) = run_sh(p, &a, "cat /opt/t/file; test -e /bin/false").await;
    assert_ne!(out.trim(), "v2", "a running domain saw the change");
    assert_eq!(code, 0, "a running domain lost /bin/false: {out}");
    // b starts now: it sees the change.
    let (code, out) = run_sh(
        p,
        &b,
        "cat /opt/t/file /opt/t/link /etc/passwd-extra; ls -ln /opt/t/file; test ! -e /bin/false",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("v2\nv2\nchanged\n"), "{out}");
    assert!(
        out.contains(" 0 0 "),
        "the file is root's inside the domain: {out}"
    );
    let (_, resolv) = run_sh(p, &b, "cat /etc/resolv.conf 2>&1").await;
    assert!(
        !resolv.contains("192.0.2.9"),
        "the template's resolv.conf is not part of its root: {resolv}"
    );
    // a restarted sees it too, and the first root goes once no one uses it.
    p.shutdown(&a, 0).await.expect("shutdown a");
    p.start(&a).await.expect("start a");
    let (code, out) = run_sh(p, &a, "cat /opt/t/file").await;
    assert_eq!((code, out.trim()), (0, "v2"));
    p.shutdown(&tmpl, 0).await.ok();
    p.start(&tmpl).await.expect("start template");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    assert_eq!(current(&env, &tmpl), second, "no change, no new root");
    let has = |root: &PathBuf| {
        roots(&env, &tmpl)
            .iter()
            .any(|r| r == root.to_str().unwrap_or(""))
    };
    assert!(
        has(&first),
        "the root before the change stays, to revert to: {:?}",
        roots(&env, &tmpl)
    );

    // Killed, the template keeps its changes too (its files are complete; what a process
    // had half-written is what the user would find after a power cut in Qubes).
    let (code, out) = run_sh_as(p, &tmpl, "root", "echo v3 > /opt/t/file").await;
    assert_eq!(code, 0, "{out}");
    p.kill(&tmpl).await.expect("kill template");
    let third = current(&env, &tmpl);
    assert_ne!(third, second);
    assert!(
        !has(&first) && has(&second),
        "the first root, unused and no longer the one to revert to, was removed: {:?}",
        roots(&env, &tmpl)
    );

    // A layer left from a run whose end domaind did not see (host crash): dropped at the
    // next start, the root stays.
    let layer = env
        .d
        .paths
        .state_dir
        .join("domains")
        .join(&tmpl)
        .join("root-changes/upper/opt");
    std::fs::create_dir_all(&layer).expect("plant a layer");
    std::fs::write(layer.join("junk"), "junk").expect("plant a file");
    p.start(&tmpl).await.expect("start template");
    let (_, out) = run_sh(p, &tmpl, "cat /opt/junk 2>&1; cat /opt/t/file").await;
    assert!(!out.contains("junk\n") && out.contains("v3"), "{out}");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    assert_eq!(current(&env, &tmpl), third, "a dropped layer made no root");
    assert!(
        roots(&env, &tmpl).iter().all(|r| !r.starts_with("build-")),
        "nothing half-made: {:?}",
        roots(&env, &tmpl)
    );
}

/// The state `ListTemplates` shows for template `tmpl`.
async fn listed_state(env: &MiniEnv, tmpl: &str) -> String {
    env.p
        .list_templates()
        .await
        .expect("list templates")
        .into_iter()
        .find(|t| t.name == tmpl)
        .map(|t| t.state)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_change_is_reverted_and_the_revert_undone() {
    bounded(TEST_LIMIT, revert_body()).await;
}

async fn revert_body() {
    let Some(env) = mini_env("tr").await else {
        return;
    };
    let p = &env.p;
    let (tmpl, a) = (env.name("tmpl"), env.name("a"));
    p.create(&a, "app", &tmpl, "blue", HashMap::new())
        .await
        .expect("create");
    let built = current(&env, &tmpl);

    // Built and never changed: nothing to go back to.
    let e = p
        .revert_template(&tmpl)
        .await
        .expect_err("nothing to revert");
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains("nothing to revert")),
        "{e:?}"
    );
    let e = p.revert_template(&a).await.expect_err("not a template");
    assert!(matches!(&e, Error::InvalidProperty(_)), "{e:?}");

    // A change made as root in the template; a revert is refused while it runs.
    let file = "/usr/local/share/revert-test";
    let (code, out) = run_sh_as(
        p,
        &tmpl,
        "root",
        &format!("mkdir -p /usr/local/share && echo installed > {file}"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let e = p
        .revert_template(&tmpl)
        .await
        .expect_err("refused while the template runs");
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains("running") && m.contains("shut it down first")),
        "{e:?}"
    );
    // so is a rebuild: the change would land on the new root, not the one it was made on
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let e = p
        .build_template(&tmpl, zbus::zvariant::Fd::from(&null))
        .await
        .expect_err("no build while the template runs");
    assert!(
        matches!(&e, Error::InvalidState(m) if m.contains("shut it down first")),
        "{e:?}"
    );
    assert_eq!(current(&env, &tmpl), built, "nothing built");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    let changed = current(&env, &tmpl);
    assert_ne!(changed, built, "the change made a new root");
    assert_eq!(listed_state(&env, &tmpl).await, "changed");
    let (code, out) = run_sh(p, &a, &format!("cat {file}")).await;
    assert_eq!((code, out.trim()), (0, "installed"), "a sees the change");

    // Reverted: the root before the change is current; a, running, keeps its root.
    let root = p.revert_template(&tmpl).await.expect("revert");
    assert_eq!(current(&env, &tmpl), built);
    assert!(root.ends_with(built.to_str().unwrap_or("?")), "{root}");
    assert_eq!(listed_state(&env, &tmpl).await, "ready");
    let (code, out) = run_sh(p, &a, &format!("cat {file}")).await;
    assert_eq!(
        (code, out.trim()),
        (0, "installed"),
        "a running domain keeps the root it started on"
    );
    // Its next start no longer sees the change; both roots stay (the changed one is the way
    // back) although a stopped using it.
    p.shutdown(&a, 0).await.expect("shutdown a");
    let (code, out) = run_sh(p, &a, &format!("test ! -e {file} && echo gone")).await;
    assert_eq!(
        (code, out.trim()),
        (0, "gone"),
        "the revert reached a's next start"
    );
    let kept = roots(&env, &tmpl);
    for r in [&built, &changed] {
        assert!(
            kept.iter().any(|k| k == r.to_str().unwrap_or("")),
            "{r:?} kept: {kept:?}"
        );
    }

    // Reverted again: the change is back.
    p.revert_template(&tmpl).await.expect("revert the revert");
    assert_eq!(current(&env, &tmpl), changed);
    assert_eq!(listed_state(&env, &tmpl).await, "changed");
    p.shutdown(&a, 0).await.expect("shutdown a");
    let (code, out) = run_sh(p, &a, &format!("cat {file}")).await;
    assert_eq!((code, out.trim()), (0, "installed"), "the change is back");

    // The template starts on the reverted-to root and keeps changing from there.
    let (code, out) = run_sh(p, &tmpl, &format!("cat {file}")).await;
    assert_eq!((code, out.trim()), (0, "installed"), "{out}");
    let e = p
        .revert_template(&tmpl)
        .await
        .expect_err("refused while the template runs");
    assert!(matches!(&e, Error::InvalidState(_)), "{e:?}");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    assert_eq!(current(&env, &tmpl), changed, "no change, no new root");
}

/// RunDisposable of `sh -c SCRIPT` from `dvm`: (the disposable, exit code, output).
async fn run_dvm(
    p: &bulkhead_api::Domaind1Proxy<'_>,
    dvm: &str,
    script: &str,
) -> (String, i32, String) {
    let io = bulkhead_testkit::StdioPipes::new(b"").expect("pipes");
    let (i, o, e) = io.fds();
    let res = p
        .run_disposable(dvm, &["/bin/sh", "-c", script], "", i, o, e)
        .await;
    let (out, err) = io.finish().await;
    let (name, code) = res.expect("RunDisposable");
    (name, code, format!("{out}{err}"))
}

/// Waits until the pool of `dvm` holds one member that is none of `not`; returns it.
async fn wait_members(env: &MiniEnv, dvm: &str, not: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = pool_members(&env.p, dvm).await;
        if m.len() == 1 && !not.contains(&m[0]) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pool of {dvm}: {m:?} (old: {not:?})\n{}",
            env.d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Paused pool members of `dvm` (disposables made ahead of a request), by name.
async fn pool_members(p: &bulkhead_api::Domaind1Proxy<'_>, dvm: &str) -> Vec<String> {
    let props = p.get_properties(dvm).await.expect("properties");
    let mut v: Vec<String> = props
        .get("pool_members")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_disposables_follow_a_template_change() {
    bounded(TEST_LIMIT, pool_body()).await;
}

/// A warm disposable made before its template changed would hand out the old software: after
/// the change (and after a revert) the pool holds only members made on the current root.
async fn pool_body() {
    let Some(env) = mini_env("tp").await else {
        return;
    };
    let p = &env.p;
    let (tmpl, dvm) = (env.name("tmpl"), env.name("dvm"));
    let mut props = HashMap::new();
    props.insert("dispvm_pool_size", "1");
    p.create(&dvm, "disposable-template", &tmpl, "red", props)
        .await
        .expect("create the disposable template");
    let before = wait_members(&env, &dvm, &[]).await;

    // the template changes: the member made before goes, a new one is made on the new root
    let file = "/usr/local/share/pool-test";
    let (code, out) = run_sh_as(
        p,
        &tmpl,
        "root",
        &format!("mkdir -p /usr/local/share && echo new > {file}"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    p.shutdown(&tmpl, 0).await.expect("shutdown template");
    let after = wait_members(&env, &dvm, &before).await;
    // reverted: that member goes too, the next one is made on the old root again
    p.revert_template(&tmpl).await.expect("revert");
    let reverted = wait_members(&env, &dvm, &after).await;
    let (used, code, out) = run_dvm(p, &dvm, &format!("test ! -e {file} && echo gone")).await;
    assert_eq!(used, reverted[0], "the warm member was handed out");
    assert_eq!((code, out.trim()), (0, "gone"), "{out}");
    // reverted again: the change is back in the next warm member
    let refilled = wait_members(&env, &dvm, &reverted).await;
    p.revert_template(&tmpl).await.expect("revert the revert");
    let redone = wait_members(&env, &dvm, &refilled).await;
    let (used, code, out) = run_dvm(p, &dvm, &format!("cat {file}")).await;
    assert_eq!(used, redone[0], "the warm member was handed out");
    assert_eq!((code, out.trim()), (0, "new"), "the member has the change");
}
