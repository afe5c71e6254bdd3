//! One domaind never touches another's domains (issue 13, item 5).
//!
//! A "system-like" domaind (the system instance's cgroup naming, `bulkhead/<domain>`, given
//! by `BULKHEAD_INSTANCE=system`, with its own temporary directories) runs a real sandbox
//! domain X. A second, ordinary test domaind then creates, starts, kills, restarts over
//! (orphan recovery), adopts and removes a domain of the same name, and is dropped with the
//! test's clean-up. The first one's X must run through all of it, its cgroup untouched, and
//! the second one must be able to run its own X meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_api::Domaind1Proxy;
use bulkhead_testkit::{
    bounded, domain_state, process_alive, DomaindOptions, MiniEnv, StdioPipes, TestDomaind,
};

const TEST_LIMIT: Duration = Duration::from_secs(600);

async fn env(system_like: bool) -> Option<MiniEnv> {
    let mut env = Vec::new();
    if system_like {
        env.push(("BULKHEAD_INSTANCE".to_owned(), "system".to_owned()));
    }
    // the same tag: both get the same name prefix, so the same domain names
    MiniEnv::start(
        "own",
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            env,
            ..Default::default()
        },
    )
    .await
}

/// The init pid and the cgroup directories of running domain `name`, from its instance record.
fn record(d: &TestDomaind, name: &str) -> (i32, Vec<PathBuf>) {
    let r = d.instance_record(name);
    let pid = r["init_pid"].as_i64().expect("init_pid") as i32;
    let dirs = r["cgroup"]
        .as_object()
        .expect("cgroup")
        .iter()
        .filter(|(k, _)| *k != "version")
        .filter_map(|(_, v)| v.as_str().map(PathBuf::from))
        .collect();
    (pid, dirs)
}

/// What is wrong with the first domaind's domain: `None` while its init lives and is in every
/// one of its cgroup directories.
fn harmed(pid: i32, dirs: &[PathBuf]) -> Option<String> {
    if !process_alive(pid) {
        return Some(format!("its init {pid} is dead"));
    }
    for d in dirs {
        match std::fs::read_to_string(d.join("cgroup.procs")) {
            Ok(procs) if procs.lines().any(|l| l.trim() == pid.to_string()) => {}
            Ok(procs) => {
                return Some(format!(
                    "its init {pid} is no longer in {} (procs: {procs:?})",
                    d.display()
                ))
            }
            Err(e) => return Some(format!("its cgroup {} is gone: {e}", d.display())),
        }
    }
    None
}

/// `echo` in `name` through D-Bus; its output.
async fn echo(p: &Domaind1Proxy<'_>, name: &str) -> Result<String, String> {
    let io = StdioPipes::new(b"").map_err(|e| e.to_string())?;
    let (i, o, e) = io.fds();
    let res = p.run(name, &["echo", "still here"], "", i, o, e).await;
    let (out, err) = io.finish().await;
    match res {
        Ok(0) => Ok(out),
        Ok(code) => Err(format!("exit {code}: {err}")),
        Err(e) => Err(e.to_string()),
    }
}

fn claim_exists(slot: u64) -> bool {
    Path::new(domaind::slots::SLOT_DIR)
        .join(slot.to_string())
        .exists()
}

fn slot_of(d: &TestDomaind, name: &str) -> u64 {
    let base = d.instance_record(name)["uid_base"]
        .as_u64()
        .expect("uid_base");
    (base - u64::from(bulkhead_sandbox::UID_BASE)) / u64::from(bulkhead_sandbox::UID_RANGE)
}

#[tokio::test(flavor = "multi_thread")]
async fn another_domaind_leaves_a_same_named_domain_alone() {
    bounded(
        TEST_LIMIT,
        another_domaind_leaves_a_same_named_domain_alone_body(),
    )
    .await
}

async fn another_domaind_leaves_a_same_named_domain_alone_body() {
    let Some(sys) = env(true).await else { return };
    let x = sys.name("x");
    sys.p
        .create(&x, "app", &sys.name("tmpl"), "blue", HashMap::new())
        .await
        .expect("create X in the system-like domaind");
    sys.p
        .start(&x)
        .await
        .unwrap_or_else(|e| panic!("start X in the system-like domaind: {e}\n{}", sys.d.log()));
    let (pid, dirs) = record(&sys.d, &x);
    assert!(
        dirs.iter()
            .all(|d| d.ends_with(Path::new("bulkhead").join(&x))),
        "the system-like domaind does not use the system naming bulkhead/<domain>: {dirs:?}"
    );
    assert_eq!(harmed(pid, &dirs), None);

    let Some(mut test) = env(false).await else {
        return;
    };
    assert_eq!(test.name("x"), x, "both domainds must use the same names");
    assert!(
        !test.d.cgroup_root().is_system(),
        "a test domaind has the system instance's cgroup root"
    );
    // the test domaind's cgroup directories (to see them go with it)
    let mut test_roots: Vec<PathBuf> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let check = |when: &str, failures: &mut Vec<String>| {
        if let Some(h) = harmed(pid, &dirs) {
            failures.push(format!("after {when}: the system-like domaind's {x}: {h}"));
        }
    };

    // create, start, kill in the test domaind
    test.p
        .create(&x, "app", &test.name("tmpl"), "green", HashMap::new())
        .await
        .expect("create X in the test domaind");
    match test.p.start(&x).await {
        Ok(()) => {
            let (tpid, tdirs) = record(&test.d, &x);
            assert_ne!(tpid, pid);
            assert!(
                tdirs.iter().all(|d| !dirs.contains(d)),
                "the two X share cgroup directories: {tdirs:?}"
            );
            let slot = slot_of(&test.d, &x);
            test_roots = tdirs
                .iter()
                .filter_map(|d| d.parent().map(Path::to_owned))
                .collect();
            check("the test domaind started its X", &mut failures);
            test.p.kill(&x).await.expect("kill X in the test domaind");
            assert!(!process_alive(tpid), "the test domaind's X survived kill");
            if claim_exists(slot) {
                failures.push(format!(
                    "the test domaind's uid slot {slot} stayed claimed after its X was killed"
                ));
            }
        }
        Err(e) => failures.push(format!(
            "the test domaind cannot start its own {x} while the system-like one runs one: {e}"
        )),
    }
    check("the test domaind killed its X", &mut failures);

    // a restart with X halted but configured: orphan recovery
    test.d.restart().await.expect("restart the test domaind");
    let (_c, p2) = test.d.client().await.expect("client");
    check(
        "the test domaind restarted (orphan recovery)",
        &mut failures,
    );

    // its X running across a restart is adopted, then removed
    if p2.start(&x).await.is_ok() {
        let (tpid, _) = record(&test.d, &x);
        test.d.restart().await.expect("restart the test domaind");
        let (_c, p3) = test.d.client().await.expect("client");
        assert_eq!(
            domain_state(&p3.list().await.expect("list"), &x).as_deref(),
            Some("running"),
            "the test domaind did not adopt its own X:\n{}",
            test.d.log()
        );
        assert_eq!(record(&test.d, &x).0, tpid);
        check("the test domaind adopted its X", &mut failures);
        p3.kill(&x).await.expect("kill");
        p3.remove(&x).await.expect("remove X in the test domaind");
    } else {
        let _ = p2.remove(&x).await;
    }
    check("the test domaind removed its X", &mut failures);
    drop(test);
    check("the test domaind was dropped", &mut failures);
    for r in &test_roots {
        assert!(
            !r.exists(),
            "the test domaind's cgroup root {} stayed",
            r.display()
        );
    }

    match echo(&sys.p, &x).await {
        Ok(out) if out == "still here\n" => {}
        other => failures.push(format!(
            "the system-like domaind's {x} does not answer: {other:?}"
        )),
    }
    assert_eq!(
        domain_state(&sys.p.list().await.expect("list"), &x).as_deref(),
        Some("running")
    );
    assert!(
        failures.is_empty(),
        "one domaind touched another's domain:\n  {}\nsystem-like domaind's log:\n{}",
        failures.join("\n  "),
        sys.d.log()
    );
    sys.p
        .kill(&x)
        .await
        .expect("kill X in the system-like domaind");
    assert!(!process_alive(pid));
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup left: {dirs:?}");
}
