//! Domains that really run: the real domaind binary, the real sandbox launcher, the real
//! bulkhead-init and bulkhead-agent, on a tiny template root built through the real template
//! store (see `bulkhead_testkit::build_mini_template`).
//!
//! Needs root, user namespaces, idmapped mounts, overlayfs and cgroups; skips with the reason
//! otherwise. Guest tools and launcher come from BULKHEAD_TEST_GUEST_TOOLS /
//! BULKHEAD_TEST_LIBEXEC or are built with cargo.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{
    bounded, build_mini_template, cloexec_pipe, collect, domain_state, process_alive,
    sandbox_available, wait_state, Debian12Env, DomaindOptions, MiniEnv, StdioPipes, TestBus,
    TestDomaind,
};
use futures_util::StreamExt;
use zbus::zvariant::Fd;

/// Every test body gets this long; a hang becomes a failure whose drop handlers still kill
/// the test's domains (a test process killed from outside could not).
const TEST_LIMIT: Duration = Duration::from_secs(180);

type Env = MiniEnv;

async fn setup(tag: &str) -> Option<Env> {
    MiniEnv::start(
        tag,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..Default::default()
        },
    )
    .await
}

fn pipe() -> (OwnedFd, OwnedFd) {
    cloexec_pipe().expect("pipe")
}

/// Run through D-Bus with pipes; returns (exit code, stdout, stderr).
async fn run(
    p: &Domaind1Proxy<'_>,
    disposable_base: Option<&str>,
    name: &str,
    argv: &[&str],
    user: &str,
    input: &[u8],
) -> Result<(i32, String, String, String), Error> {
    let io = StdioPipes::new(input).expect("pipes");
    let (i, o, e) = io.fds();
    let res = match disposable_base {
        None => p
            .run(name, argv, user, i, o, e)
            .await
            .map(|c| (String::new(), c)),
        Some(base) => p.run_disposable(base, argv, user, i, o, e).await,
    };
    let (out, err) = io.finish().await;
    res.map(|(disp, code)| (code, out, err, disp))
}

fn instance_pid(d: &TestDomaind, name: &str) -> i32 {
    d.instance_record(name)["init_pid"].as_i64().expect("pid") as i32
}

/// Everything a halted domain must not leave behind.
fn assert_clean(d: &TestDomaind, name: &str, pid: i32) {
    assert!(!process_alive(pid), "init {pid} of {name} still alive");
    assert!(!d.cgroup_exists(name), "cgroup of {name} left behind");
    let rt = d.paths.runtime_dir.join("domains").join(name);
    assert!(!rt.join("instance.json").exists(), "instance.json left");
    assert!(!rt.join("channel/agent.sock").exists(), "socket left");
    let scratch = d.paths.state_dir.join("domains").join(name).join("scratch");
    assert!(
        !scratch.exists()
            || std::fs::read_dir(&scratch)
                .map(|mut r| r.next().is_none())
                .unwrap_or(true),
        "scratch not wiped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_run_pause_shutdown() {
    bounded(TEST_LIMIT, start_run_pause_shutdown_body()).await
}

async fn start_run_pause_shutdown_body() {
    let Some(env) = setup("lc").await else { return };
    let p = &env.p;
    let work = env.name("work");
    p.create(&work, "app", &env.name("tmpl"), "blue", HashMap::new())
        .await
        .unwrap();

    let mut states = p.receive_state_changed().await.unwrap();
    let mut progress = p.receive_progress().await.unwrap();
    p.start(&work)
        .await
        .unwrap_or_else(|e| panic!("start: {e}\n{}", env.d.log()));
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("running")
    );
    let s1 = states.next().await.unwrap();
    assert_eq!(s1.args().unwrap().state(), "starting");
    let s2 = states.next().await.unwrap();
    assert_eq!(s2.args().unwrap().state(), "running");
    let first = progress.next().await.unwrap();
    assert_eq!(first.args().unwrap().done, 0);
    assert!(first.args().unwrap().total > 0);

    match p.start(&work).await {
        Err(Error::InvalidState(m)) => assert!(m.contains("already running"), "{m}"),
        other => panic!("{other:?}"),
    }

    let (code, out, _, _) = run(p, None, &work, &["echo", "hello"], "", b"")
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    // a host process (uid 0, outside the domain's range) that connects to the channel is
    // dropped and does not disturb the agent link
    let sock = env
        .d
        .paths
        .runtime_dir
        .join("domains")
        .join(&work)
        .join("channel/agent.sock");
    let mut intruder = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    intruder
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(intruder.read(&mut buf), Ok(0)),
        "intruder not dropped"
    );
    let (code, out, _, _) = run(p, None, &work, &["cat"], "", b"piped input")
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "piped input"));
    let (code, _, err, _) = run(
        p,
        None,
        &work,
        &["sh", "-c", "echo oops >&2; exit 3"],
        "",
        b"",
    )
    .await
    .unwrap();
    assert_eq!((code, err.as_str()), (3, "oops\n"));
    let (code, _, _, _) = run(p, None, &work, &["sh", "-c", "kill -9 $$"], "", b"")
        .await
        .unwrap();
    assert_eq!(code, 128 + 9);
    let (_, out, _, _) = run(p, None, &work, &["id", "-u"], "", b"").await.unwrap();
    assert_eq!(out, "1000\n", "default user is not root");
    let (_, out, _, _) = run(p, None, &work, &["id", "-u"], "root", b"")
        .await
        .unwrap();
    assert_eq!(out, "0\n");
    // the private volume is /home, writable by the user, and persists
    let (code, _, err, _) = run(
        p,
        None,
        &work,
        &["sh", "-c", "echo kept > /home/user/f"],
        "",
        b"",
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");

    // many concurrent runs
    let runs = (0..6).map(|i| {
        let w = work.clone();
        async move {
            let s = i.to_string();
            run(p, None, &w, &["echo", s.as_str()], "", b"").await
        }
    });
    let results = futures_util::future::join_all(runs).await;
    for (i, r) in results.into_iter().enumerate() {
        let (code, out, _, _) = r.unwrap();
        assert_eq!((code, out), (0, format!("{i}\n")));
    }

    // pause / unpause
    p.pause(&work).await.unwrap();
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("paused")
    );
    match run(p, None, &work, &["true"], "", b"").await {
        Err(Error::InvalidState(m)) => assert!(m.contains("unpause"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.remove(&work).await {
        Err(Error::InvalidState(m)) => assert!(m.contains("shut it down first"), "{m}"),
        other => panic!("{other:?}"),
    }
    p.unpause(&work).await.unwrap();
    let (code, _, _, _) = run(p, None, &work, &["true"], "", b"").await.unwrap();
    assert_eq!(code, 0);

    let pid = instance_pid(&env.d, &work);
    p.shutdown(&work, 10).await.unwrap();
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("halted")
    );
    assert_clean(&env.d, &work, pid);
    let kept = bulkhead_testkit::with_private_volume(&env.d.paths, &work, |p| {
        std::fs::read_to_string(p.join("user/f")).unwrap()
    });
    assert_eq!(kept, "kept\n");

    // run on a halted domain starts it
    let (code, out, _, _) = run(p, None, &work, &["cat", "/home/user/f"], "", b"")
        .await
        .unwrap();
    assert_eq!((code, out.as_str()), (0, "kept\n"));
    let pid = instance_pid(&env.d, &work);
    p.kill(&work).await.unwrap();
    assert_clean(&env.d, &work, pid);
    p.remove(&work).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn init_death_is_noticed_and_disposable_removed() {
    bounded(
        TEST_LIMIT,
        init_death_is_noticed_and_disposable_removed_body(),
    )
    .await
}

async fn init_death_is_noticed_and_disposable_removed_body() {
    let Some(env) = setup("dd").await else { return };
    let p = &env.p;
    let a = env.name("a");
    p.create(&a, "app", &env.name("tmpl"), "red", HashMap::new())
        .await
        .unwrap();
    p.start(&a)
        .await
        .unwrap_or_else(|e| panic!("start: {e}\n{}", env.d.log()));
    let pid = instance_pid(&env.d, &a);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_state(p, &a, "halted").await;
    assert_clean(&env.d, &a, pid);

    // a disposable-template with a seed file in its private volume
    let dvm = env.name("dvm");
    p.create(
        &dvm,
        "disposable-template",
        &env.name("tmpl"),
        "purple",
        HashMap::new(),
    )
    .await
    .unwrap();
    bulkhead_testkit::with_private_volume(&env.d.paths, &dvm, |p| {
        let seed = p.join("user/seed");
        std::fs::write(&seed, "from the dvm\n").unwrap();
        std::os::unix::fs::chown(&seed, Some(1000), Some(1000)).unwrap();
    });
    let (code, out, _, disp) = run(p, Some(&dvm), "", &["cat", "/home/user/seed"], "", b"")
        .await
        .unwrap_or_else(|e| panic!("run_disposable: {e}\n{}", env.d.log()));
    assert_eq!((code, out.as_str()), (0, "from the dvm\n"));
    assert!(disp.starts_with("disp"), "{disp}");
    assert!(
        domain_state(&p.list().await.unwrap(), &disp).is_none(),
        "disposable still listed"
    );
    assert!(!env
        .d
        .paths
        .config_dir
        .join(format!("domains/{disp}.toml"))
        .exists());
    assert!(!env.d.paths.state_dir.join("domains").join(&disp).exists());
    assert!(!env.d.cgroup_exists(&disp));
    // the dvm's own volume is untouched
    let seed = bulkhead_testkit::with_private_volume(&env.d.paths, &dvm, |p| {
        std::fs::read_to_string(p.join("user/seed")).unwrap()
    });
    assert_eq!(seed, "from the dvm\n");

    // a disposable straight from a template, whose command fails: still removed
    let (code, _, _, disp) = run(p, Some(&env.name("tmpl")), "", &["false"], "", b"")
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(domain_state(&p.list().await.unwrap(), &disp).is_none());

    // how long a disposable `true` takes end to end (printed, not asserted)
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (code, ..) = run(p, Some(&dvm), "", &["true"], "", b"").await.unwrap();
        assert_eq!(code, 0);
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "disposable `true` on the mini template: median {:?}",
        times[2]
    );

    // a disposable whose command cannot start: the error comes back, nothing is left
    let before = p.list().await.unwrap().len();
    let r = run(p, Some(&dvm), "", &["/no/such/program"], "", b"").await;
    match r {
        Ok((code, ..)) => assert_ne!(code, 0),
        Err(e) => assert!(matches!(e, Error::Agent(_)), "{e:?}"),
    }
    assert_eq!(p.list().await.unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn template_missing_and_init_failure_are_reported() {
    bounded(
        TEST_LIMIT,
        template_missing_and_init_failure_are_reported_body(),
    )
    .await
}

async fn template_missing_and_init_failure_are_reported_body() {
    let Some(env) = setup("tm").await else { return };
    let p = &env.p;
    // a template domain that was never built
    let ghost = env.name("ghost");
    p.create(&ghost, "template", "", "black", HashMap::new())
        .await
        .unwrap();
    let app = env.name("app");
    p.create(&app, "app", &ghost, "red", HashMap::new())
        .await
        .unwrap();
    match p.start(&app).await {
        Err(Error::TemplateMissing(m)) => assert!(m.contains("not built"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &app).as_deref(),
        Some("halted")
    );

    // guest tools without a working init: start fails with the log's last lines, and nothing
    // is left behind
    let init = env.d.guest_tools_dir.join("bulkhead-init");
    let saved = std::fs::read(&init).unwrap();
    std::fs::write(
        &init,
        "#!/bin/sh\necho init is broken on purpose >&2\nexit 7\n",
    )
    .unwrap();
    let b = env.name("b");
    p.create(&b, "app", &env.name("tmpl"), "red", HashMap::new())
        .await
        .unwrap();
    let r = p.start(&b).await;
    std::fs::write(&init, saved).unwrap();
    match r {
        Err(Error::Agent(m)) | Err(Error::Backend(m)) => {
            assert!(m.contains("broken on purpose"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &b).as_deref(),
        Some("halted")
    );
    assert!(!env.d.cgroup_exists(&b));
    // and it starts once the init is back
    p.start(&b).await.unwrap();
    p.kill(&b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn domaind_restart_adopts_running_domains() {
    bounded(TEST_LIMIT, domaind_restart_adopts_running_domains_body()).await
}

async fn domaind_restart_adopts_running_domains_body() {
    let Some(mut env) = setup("rr").await else {
        return;
    };
    let w = env.name("w");
    let paused = env.name("p");
    for n in [&w, &paused] {
        env.p
            .create(n, "app", &env.name("tmpl"), "green", HashMap::new())
            .await
            .unwrap();
        env.p
            .start(n)
            .await
            .unwrap_or_else(|e| panic!("start: {e}\n{}", env.d.log()));
    }
    env.p.pause(&paused).await.unwrap();
    let pid = instance_pid(&env.d, &w);
    // a disposable in the middle of its command when domaind dies
    let p2 = env.p.clone();
    let tmpl = env.name("tmpl");
    let disp_task = tokio::spawn(async move {
        let _ = run(&p2, Some(&tmpl), "", &["sleep", "1000"], "", b"").await;
    });
    let mut disp = None;
    for _ in 0..300 {
        disp = env
            .p
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.name.starts_with("disp") && d.state == "running")
            .map(|d| d.name);
        if disp.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let disp = disp.expect("disposable running");
    let disp_pid = instance_pid(&env.d, &disp);

    env.d.kill9();
    assert!(process_alive(pid), "the domain must survive domaind");
    env.d.restart().await.unwrap();
    let (conn, p) = env.d.client().await.unwrap();
    env.conn = conn;
    let list = p.list().await.unwrap();
    assert_eq!(domain_state(&list, &w).as_deref(), Some("running"));
    assert_eq!(domain_state(&list, &paused).as_deref(), Some("paused"));
    // the orphaned disposable was stopped and removed, not adopted
    assert!(domain_state(&list, &disp).is_none(), "{disp} adopted");
    assert_clean(&env.d, &disp, disp_pid);
    assert!(!env.d.paths.state_dir.join("domains").join(&disp).exists());
    disp_task.abort();
    let (code, out, _, _) = run(&p, None, &w, &["echo", "still here"], "", b"")
        .await
        .unwrap_or_else(|e| panic!("run after restart: {e}\n{}", env.d.log()));
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    assert_eq!(instance_pid(&env.d, &w), pid);

    // SIGTERM leaves domains running as well
    env.d.terminate().unwrap();
    assert!(process_alive(pid));
    env.d.restart().await.unwrap();
    let (conn, p) = env.d.client().await.unwrap();
    env.conn = conn;
    p.unpause(&paused).await.unwrap();
    p.shutdown(&w, 10).await.unwrap();
    p.kill(&paused).await.unwrap();
    assert_clean(&env.d, &w, pid);

    // a domain that died while domaind was away is cleaned up at the next start
    p.start(&w).await.unwrap();
    let pid = instance_pid(&env.d, &w);
    env.d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !process_alive(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    env.d.restart().await.unwrap();
    let (conn, p) = env.d.client().await.unwrap();
    env.conn = conn;
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &w).as_deref(),
        Some("halted")
    );
    assert_clean(&env.d, &w, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn domaind_killed_during_start_leaves_no_orphan() {
    bounded(
        TEST_LIMIT,
        domaind_killed_during_start_leaves_no_orphan_body(),
    )
    .await
}

async fn domaind_killed_during_start_leaves_no_orphan_body() {
    let Some(mut env) = setup("ks").await else {
        return;
    };
    let w = env.name("w");
    env.p
        .create(&w, "app", &env.name("tmpl"), "green", HashMap::new())
        .await
        .unwrap();
    let mut progress = env.p.receive_progress().await.unwrap();
    let p2 = env.p.clone();
    let w2 = w.clone();
    let start = tokio::spawn(async move { p2.start(&w2).await });
    // kill domaind as soon as it launches the sandbox
    while let Some(sig) = progress.next().await {
        if sig.args().unwrap().step() == "launching sandbox" {
            break;
        }
    }
    env.d.kill9();
    assert!(start.await.unwrap().is_err());
    // let a launcher that was still running finish on its own
    std::thread::sleep(Duration::from_millis(500));
    env.d.restart().await.unwrap();
    let (conn, p) = env.d.client().await.unwrap();
    env.conn = conn;
    let st = domain_state(&p.list().await.unwrap(), &w).unwrap();
    match st.as_str() {
        // the record was written before the kill: adopted, and it works
        "running" => {
            let (code, ..) = run(&p, None, &w, &["true"], "", b"").await.unwrap();
            assert_eq!(code, 0);
            let pid = instance_pid(&env.d, &w);
            p.kill(&w).await.unwrap();
            assert_clean(&env.d, &w, pid);
        }
        "halted" => {
            assert!(
                !env.d.cgroup_exists(&w),
                "orphan cgroup of {w} left\n{}",
                env.d.log()
            );
        }
        other => panic!("unexpected state {other}"),
    }
    // either way it starts again
    p.start(&w).await.unwrap();
    p.kill(&w).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn disposable_removed_when_caller_disconnects() {
    bounded(
        TEST_LIMIT,
        disposable_removed_when_caller_disconnects_body(),
    )
    .await
}

async fn disposable_removed_when_caller_disconnects_body() {
    let Some(env) = setup("cd").await else { return };
    let conn2 = env.d.connect().await.unwrap();
    let p2 = Domaind1Proxy::new(&conn2).await.unwrap();
    let tmpl = env.name("tmpl");
    let task = tokio::spawn(async move {
        let _ = run(&p2, Some(&tmpl), "", &["sleep", "1000"], "", b"").await;
    });
    // wait for the disposable to run
    let mut disp = None;
    for _ in 0..300 {
        disp = env
            .p
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.name.starts_with("disp") && d.state == "running")
            .map(|d| d.name);
        if disp.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let disp = disp.unwrap_or_else(|| panic!("no disposable started\n{}", env.d.log()));
    task.abort();
    let _ = task.await;
    conn2.graceful_shutdown().await;
    for _ in 0..300 {
        if domain_state(&env.p.list().await.unwrap(), &disp).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        domain_state(&env.p.list().await.unwrap(), &disp).is_none(),
        "disposable {disp} outlived its caller\n{}",
        env.d.log()
    );
    assert!(!env.d.cgroup_exists(&disp));
    assert!(!env.d.paths.state_dir.join("domains").join(&disp).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn autostart_domains_start_with_domaind() {
    bounded(TEST_LIMIT, autostart_domains_start_with_domaind_body()).await
}

async fn autostart_domains_start_with_domaind_body() {
    let Some(mut env) = setup("as").await else {
        return;
    };
    let a = env.name("auto");
    let mut props = HashMap::new();
    props.insert("autostart", "true");
    env.p
        .create(&a, "app", &env.name("tmpl"), "yellow", props)
        .await
        .unwrap();
    assert_eq!(
        domain_state(&env.p.list().await.unwrap(), &a).as_deref(),
        Some("halted")
    );
    env.d.restart().await.unwrap();
    let (conn, p) = env.d.client().await.unwrap();
    env.conn = conn;
    wait_state(&p, &a, "running").await;
    let (code, out, _, _) = run(&p, None, &a, &["echo", "auto"], "", b"").await.unwrap();
    assert_eq!((code, out.as_str()), (0, "auto\n"));
    p.kill(&a).await.unwrap();
}

/// The real Debian 12 template from the template cache: BuildTemplate finds it up to date and
/// registers it, and a disposable prints Debian's release file.
#[tokio::test(flavor = "multi_thread")]
async fn debian12_disposable_from_template_cache() {
    bounded(TEST_LIMIT, debian12_disposable_from_template_cache_body()).await
}

async fn debian12_disposable_from_template_cache_body() {
    if !sandbox_available() {
        return;
    }
    let Some(cache) = bulkhead_testkit::template_cache() else {
        return;
    };
    if !cache.join("debian-12/current").exists() {
        bulkhead_test_skip::skip(format_args!(
            "{} has no built debian-12 template",
            cache.display()
        ));
        return;
    }
    let Debian12Env {
        bus: _bus,
        d,
        conn: _c,
        p,
        root,
        progress,
    } = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        ..DomaindOptions::debian12(cache)
    })
    .await;
    assert!(progress.contains("up to date"), "{progress}");
    assert!(Path::new(&root).join("etc/os-release").exists());
    let list = p.list().await.unwrap();
    assert_eq!(
        list.iter()
            .find(|d| d.name == "debian-12")
            .map(|d| d.class.as_str()),
        Some("template")
    );
    let started = std::time::Instant::now();
    let (code, out, err, _) = run(
        &p,
        Some("debian-12"),
        "",
        &["cat", "/etc/os-release"],
        "",
        b"",
    )
    .await
    .unwrap_or_else(|e| panic!("run_disposable: {e}\n{}", d.log()));
    eprintln!(
        "disposable cat /etc/os-release took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    let (_, out, _, _) = run(&p, Some("debian-12"), "", &["id", "-un"], "", b"")
        .await
        .unwrap();
    assert_eq!(out, "user\n");
}

/// Processes other than us and domaind that hold the pipe with this inode.
fn pipe_holders(inode: u64, domaind_pid: u32) -> Vec<i32> {
    let me = std::process::id();
    let target = format!("pipe:[{inode}]");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me || pid as u32 == domaind_pid {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
        {
            out.push(pid);
        }
    }
    out
}

/// The fds a caller passes to Run/RunDisposable reach only domaind, never a domain.
#[tokio::test(flavor = "multi_thread")]
async fn caller_fds_do_not_leak_into_domains() {
    bounded(TEST_LIMIT, caller_fds_do_not_leak_into_domains_body()).await
}

async fn caller_fds_do_not_leak_into_domains_body() {
    use std::os::unix::fs::MetadataExt;
    let Some(env) = setup("fd").await else { return };
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let inode = std::fs::File::from(in_r.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino();
    let tmpl = env.name("tmpl");
    let p2 = env.p.clone();
    let (r2, o2) = (in_r.try_clone().unwrap(), out_w.try_clone().unwrap());
    let call = tokio::spawn(async move {
        p2.run_disposable(
            &tmpl,
            &["sleep", "30"],
            "",
            Fd::from(&r2),
            Fd::from(&o2),
            Fd::from(&o2),
        )
        .await
    });
    let mut disp = None;
    for _ in 0..300 {
        disp = env
            .p
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.name.starts_with("disp") && d.state == "running")
            .map(|d| d.name);
        if disp.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let disp = disp.unwrap_or_else(|| panic!("no disposable\n{}", env.d.log()));
    let holders: Vec<String> = pipe_holders(inode, env.d.pid().unwrap())
        .into_iter()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect();
    assert!(
        holders.is_empty(),
        "the caller's stdin pipe is held by {holders:?} (domain {disp})"
    );
    env.p.kill(&disp).await.unwrap();
    let _ = call.await;
    drop((in_r, in_w, out_r, out_w));
}

#[tokio::test(flavor = "multi_thread")]
async fn running_source_is_not_copied() {
    bounded(TEST_LIMIT, running_source_is_not_copied_body()).await
}

async fn running_source_is_not_copied_body() {
    let Some(env) = setup("rs").await else { return };
    let p = &env.p;
    let dvm = env.name("dvm");
    let copy = env.name("copy");
    p.create(
        &dvm,
        "disposable-template",
        &env.name("tmpl"),
        "red",
        HashMap::new(),
    )
    .await
    .unwrap();
    p.start(&dvm).await.unwrap();
    match run(p, Some(&dvm), "", &["true"], "", b"").await {
        Err(Error::InvalidState(m)) => assert!(
            m.contains(&format!(
                "{dvm} is running; shut it down to use it as a disposable template"
            )),
            "{m}"
        ),
        other => panic!("disposable from a running dvm template: {other:?}"),
    }
    match p.clone_domain(&dvm, &copy).await {
        Err(Error::InvalidState(m)) => assert!(m.contains("shut it down"), "{m}"),
        other => panic!("clone of a running domain: {other:?}"),
    }
    p.kill(&dvm).await.unwrap();

    // A Start of the source issued while the clone copies waits until the copy is done
    // (the clone holds the source's lifecycle lock): when the source reports "starting",
    // the clone's config file (saved after the copy) already exists.
    // Enough data that the copy of the image takes a while.
    bulkhead_testkit::with_private_volume(&env.d.paths, &dvm, |p| {
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8 + 1).collect();
        let mut f = std::fs::File::create(p.join("bulk")).unwrap();
        for _ in 0..384 {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
        f.sync_all().unwrap();
    });
    let dest_private = env
        .d
        .paths
        .state_dir
        .join("domains")
        .join(&copy)
        .join(domaind::volume::IMAGE_NAME);
    let dest_cfg = env
        .d
        .paths
        .config_dir
        .join("domains")
        .join(format!("{copy}.toml"));
    let mut states = p.receive_state_changed().await.unwrap();
    let (pc, d2, c2) = (p.clone(), dvm.clone(), copy.clone());
    let cloning = tokio::spawn(async move { pc.clone_domain(&d2, &c2).await });
    while !dest_private.exists() {
        assert!(
            !cloning.is_finished(),
            "clone ended before its copy was seen"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (ps, d3) = (p.clone(), dvm.clone());
    let starting = tokio::spawn(async move { ps.start(&d3).await });
    loop {
        let sig = states.next().await.unwrap();
        let a = sig.args().unwrap();
        if a.name() == &dvm && a.state() == "starting" {
            break;
        }
    }
    assert!(
        dest_cfg.exists(),
        "the source started while its private volume was being copied"
    );
    cloning.await.unwrap().unwrap();
    starting.await.unwrap().unwrap();
    let copied = bulkhead_testkit::with_private_volume(&env.d.paths, &copy, |p| {
        std::fs::metadata(p.join("bulk")).unwrap().len()
    });
    assert_eq!(copied, 384 << 20);
    p.kill(&dvm).await.unwrap();
}

fn instance_uid_base(d: &TestDomaind, name: &str) -> u64 {
    let text = std::fs::read_to_string(
        d.paths
            .runtime_dir
            .join("domains")
            .join(name)
            .join("instance.json"),
    )
    .expect("instance.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["record"]["uid_base"].as_u64().expect("uid_base")
}

/// uid slots are claimed host-wide: two domaind instances never hand out the same range.
#[tokio::test(flavor = "multi_thread")]
async fn two_domainds_get_distinct_uid_ranges() {
    bounded(TEST_LIMIT, two_domainds_get_distinct_uid_ranges_body()).await
}

async fn two_domainds_get_distinct_uid_ranges_body() {
    let Some(a) = setup("ua").await else { return };
    let Some(b) = setup("ub").await else { return };
    let (wa, wb) = (a.name("w"), b.name("w"));
    for (env, w) in [(&a, &wa), (&b, &wb)] {
        env.p
            .create(w, "app", &env.name("tmpl"), "green", HashMap::new())
            .await
            .unwrap();
        env.p
            .start(w)
            .await
            .unwrap_or_else(|e| panic!("start {w}: {e}\n{}", env.d.log()));
    }
    let (ua, ub) = (instance_uid_base(&a.d, &wa), instance_uid_base(&b.d, &wb));
    assert_ne!(ua, ub, "two domaind instances gave out the same uid range");
    // the claims name their owners; a halted domain's claim is gone
    let slot =
        (ua - u64::from(bulkhead_sandbox::UID_BASE)) / u64::from(bulkhead_sandbox::UID_RANGE);
    let claim = Path::new(domaind::slots::SLOT_DIR).join(slot.to_string());
    let text = std::fs::read_to_string(&claim).unwrap();
    assert!(text.contains(&wa), "{text}");
    a.p.kill(&wa).await.unwrap();
    let still = std::fs::read_to_string(&claim).unwrap_or_default();
    assert!(
        !still.contains(&wa),
        "claim of {wa} left after kill: {still}"
    );
    b.p.kill(&wb).await.unwrap();
}

/// A launcher still running when domaind is SIGKILLed creates its cgroup late; the next
/// domaind waits for it (launch lock) before it looks for orphan cgroups, so the domain does
/// not keep running untracked. The launcher is held back by a wrapper script until the new
/// domaind is recovering.
#[tokio::test(flavor = "multi_thread")]
async fn late_launcher_of_a_killed_domaind_leaves_no_orphan() {
    bounded(
        TEST_LIMIT,
        late_launcher_of_a_killed_domaind_leaves_no_orphan_body(),
    )
    .await
}

async fn late_launcher_of_a_killed_domaind_leaves_no_orphan_body() {
    use std::os::unix::fs::PermissionsExt;
    if !sandbox_available() {
        return;
    }
    let real = bulkhead_testkit::libexec_dir()
        .expect("launcher")
        .join("bulkhead-sandbox");
    let wrap = tempfile::tempdir().unwrap();
    let gate = wrap.path().join("gate");
    let started = wrap.path().join("started");
    let script = wrap.path().join("bulkhead-sandbox");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > '{}.tmp' && mv '{0}.tmp' '{0}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nexec '{}' \"$@\"\n",
            started.display(),
            gate.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = TestBus::start().expect("dbus-daemon");
    let mut d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            with_guest_tools: true,
            env: vec![(
                "BULKHEAD_LIBEXEC_DIR".into(),
                wrap.path().display().to_string(),
            )],
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let pre = format!("ll{}-", std::process::id() % 100_000);
    let (tmpl, w) = (format!("{pre}tmpl"), format!("{pre}w"));
    d.mini_template(&tmpl).expect("mini template");
    let (_c, p) = d.client().await.unwrap();
    p.create(&tmpl, "template", "", "black", HashMap::new())
        .await
        .unwrap();
    p.create(&w, "app", &tmpl, "green", HashMap::new())
        .await
        .unwrap();
    let p2 = p.clone();
    let w2 = w.clone();
    let start = tokio::spawn(async move { p2.start(&w2).await });
    while !started.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let launcher_pid: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    d.kill9();
    assert!(start.await.unwrap().is_err());
    assert!(
        !d.cgroup_exists(&w),
        "the held-back launcher made its cgroup early"
    );
    d.restart().await.unwrap();
    let (_c2, p) = d.client().await.unwrap();
    // Release the launcher once the new domaind is recovering: it either says it waits for
    // launches, or (without that wait) has finished recovery and answers calls.
    loop {
        if d.log().contains(domaind::manager::LAUNCH_WAIT_MESSAGE) {
            break;
        }
        if tokio::time::timeout(Duration::from_millis(200), p.list())
            .await
            .is_ok()
        {
            break;
        }
    }
    // Recovery removes a record-less runtime dir, which by itself would make this late launch
    // fail at its channel mount; put the channel dir back (a launcher that had got past that
    // point) so only the cgroup scan is under test.
    std::fs::create_dir_all(d.paths.runtime_dir.join("domains").join(&w).join("channel")).unwrap();
    std::fs::write(&gate, b"").unwrap();
    while process_alive(launcher_pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = domain_state(&p.list().await.unwrap(), &w);
    assert_eq!(st.as_deref(), Some("halted"), "{}", d.log());
    assert!(
        !d.cgroup_exists(&w),
        "{w} runs untracked: its launcher created the cgroup after recovery\n{}",
        d.log()
    );
    // it starts normally afterwards (the gate stays open)
    p.start(&w).await.unwrap();
    p.kill(&w).await.unwrap();
}

/// BuildTemplate collects old template trees no running domain uses; removing a template
/// domain removes its trees (refused while a domain is based on it).
#[tokio::test(flavor = "multi_thread")]
async fn template_trees_are_collected_and_removed() {
    bounded(TEST_LIMIT, template_trees_are_collected_and_removed_body()).await
}

async fn template_trees_are_collected_and_removed_body() {
    if !sandbox_available() {
        return;
    }
    let recipes = tempfile::tempdir().unwrap();
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            with_guest_tools: true,
            recipes_dir: Some(recipes.path().to_owned()),
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let pre = format!("tg{}-", std::process::id() % 100_000);
    let (tmpl, w) = (format!("{pre}tmpl"), format!("{pre}w"));
    let templates = d.paths.templates_dir();
    let tdir = templates.join(&tmpl);
    let root_a = build_mini_template(&templates, recipes.path(), &tmpl, &d.guest_tools_dir)
        .expect("mini template");
    let (_c, p) = d.client().await.unwrap();
    p.create(&tmpl, "template", "", "black", HashMap::new())
        .await
        .unwrap();
    p.create(&w, "app", &tmpl, "green", HashMap::new())
        .await
        .unwrap();
    p.start(&w).await.unwrap();
    // Three rebuilds from changed recipes: root B, C, then root D is current (C, the root
    // before it, is kept for `RevertTemplate`).
    let rebuild = |tag: &str| {
        let rp = recipes.path().join(format!("{tmpl}.toml"));
        let mut text = std::fs::read_to_string(&rp).unwrap();
        text.push_str(&format!("# {tag}\n"));
        std::fs::write(&rp, text).unwrap();
        let dn = bulkhead_domain::DomainName::new(&tmpl).unwrap();
        let recipe = bulkhead_templates::Recipe::load_named(recipes.path(), &dn).unwrap();
        bulkhead_templates::TemplateStore::new(&templates)
            .build_with(
                &recipe,
                &bulkhead_testkit::MiniRootBuilder {
                    guest_tools: d.guest_tools_dir.clone(),
                },
                &mut |_| {},
            )
            .unwrap()
    };
    let root_b = rebuild("b");
    let root_c = rebuild("c");
    let root_d = rebuild("d");
    assert!(root_a != root_b && root_b != root_c && root_c != root_d);
    assert!(root_a.exists() && root_b.exists());
    // The recipe is up to date (root D): nothing is built, old trees are collected.
    let (r, wfd) = pipe();
    let out = collect(r);
    let got = p
        .build_template(&tmpl, Fd::from(&wfd))
        .await
        .unwrap_or_else(|e| panic!("build_template: {e}\n{}", d.log()));
    drop(wfd);
    let progress = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    assert!(progress.contains("up to date"), "{progress}");
    assert_eq!(
        std::fs::canonicalize(&got).unwrap(),
        std::fs::canonicalize(&root_d).unwrap()
    );
    assert!(root_a.exists(), "the root of running {w} was collected");
    assert!(!root_b.exists(), "an unused old root was kept\n{}", d.log());
    assert!(root_c.exists(), "the root to revert to was collected");
    assert!(root_d.exists());

    match p.remove(&tmpl).await {
        Err(Error::InvalidState(m)) => assert!(m.contains(&w), "{m}"),
        other => panic!("removing a template in use: {other:?}"),
    }
    assert!(tdir.exists());
    p.kill(&w).await.unwrap();
    p.remove(&w).await.unwrap();
    p.remove(&tmpl).await.unwrap();
    assert!(
        !tdir.exists(),
        "the template's trees stayed after its removal"
    );
}
