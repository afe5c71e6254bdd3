//! Software in templates (issue 16): apt in a template reaches a package archive through the
//! update proxy in the net domain (the template itself has no network), the installed
//! package is in the template's root after it stops, domains see it at their next start and
//! a running one does not; the proxy reaches the archives of its list and nothing else, and
//! only templates may call it.
//!
//! The archive is served inside the test's "internet" (a network namespace made here, behind
//! the net domain's uplink); nothing leaves the machine.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bulkhead_testkit::{
    bounded, build_test_archive, run_sh, run_sh_as, sandbox_available, template_cache,
    DomaindOptions, TestBus, TestDomaind, TestInternet,
};

const TEST_LIMIT: Duration = Duration::from_secs(480);
/// The test internet's gateway, DNS server and package archive.
const ARCHIVE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ARCHIVE_PORT: u16 = 8000;
/// A server that is not a package archive.
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PACKAGE: &str = "bulkhead-hello";

#[tokio::test(flavor = "multi_thread")]
async fn a_template_installs_from_an_archive_through_the_update_proxy() {
    bounded(TEST_LIMIT, body()).await;
}

async fn body() {
    if !sandbox_available() {
        return;
    }
    let Some(cache) = template_cache() else {
        return;
    };
    if !cache.join("debian-12/current").exists() {
        bulkhead_test_skip::skip(format_args!(
            "{} has no built debian-12 template",
            cache.display()
        ));
        return;
    }
    for prog in ["nft", "dpkg-deb"] {
        if std::process::Command::new(prog)
            .arg("--version")
            .output()
            .is_err()
        {
            bulkhead_test_skip::skip(format_args!(
                "{prog} is not installed (scripts/install-deps.sh)"
            ));
            return;
        }
    }
    let inet = TestInternet::start(
        "bhu",
        &[("archive.test", ARCHIVE), ("other.test", OTHER)],
        &[(OTHER, 80)],
    )
    .await;
    let archive_dir = tempfile::tempdir().expect("archive dir");
    build_test_archive(archive_dir.path(), PACKAGE, "hello from the archive");
    let requests = inet.serve_http_dir(
        SocketAddr::from((ARCHIVE, ARCHIVE_PORT)),
        archive_dir.path().to_owned(),
    );
    let pre = format!("u{}-", std::process::id() % 100_000);
    let (net, work, personal) = (
        format!("{pre}net"),
        format!("{pre}work"),
        format!("{pre}personal"),
    );
    let tmpl = "debian-12";
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            own_templates: vec![tmpl.into()],
            daemon_file: Some(inet.net_section(&net, ARCHIVE)),
            ..DomaindOptions::debian12(cache)
        },
    )
    .await
    .expect("domaind");
    let (_c, p) = d.client().await.expect("client");
    bulkhead_testkit::register_template(&p, tmpl)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-updates.policy"),
        format!(
            "bulkhead.UpdatesProxy * @type:TemplateVM @default allow target={net}\n\
             bulkhead.UpdatesProxy * @anyvm @anyvm deny\n"
        ),
    )
    .expect("policy");
    p.create(&net, "service", tmpl, "red", HashMap::new())
        .await
        .expect("create net");
    for x in [&work, &personal] {
        p.create(x, "app", tmpl, "blue", HashMap::new())
            .await
            .expect("create");
    }
    p.start(&net).await.expect("start net");
    // The net domain's list (from its template) names the Debian archives; the test's
    // archive is added for this run only (net's root is not kept).
    let (code, out) = run_sh_as(
        &p,
        &net,
        "root",
        &format!(
            "grep -q deb.debian.org /etc/bulkhead/updates-proxy.allow && echo {ARCHIVE}:{ARCHIVE_PORT} >> /etc/bulkhead/updates-proxy.allow"
        ),
    )
    .await;
    assert_eq!(code, 0, "the template's archive list: {out}");
    p.start(&work).await.expect("start work");

    // In the template: no network of its own, apt through the proxy.
    let sources = format!("deb [trusted=yes] http://{ARCHIVE}:{ARCHIVE_PORT}/ ./");
    let apt =
        "-o Dir::Etc::sourcelist=/etc/apt/sources.list.d/test.list -o Dir::Etc::sourceparts=-";
    let (code, out) = run_sh_as(
        &p,
        tmpl,
        "root",
        &format!(
            "echo '{sources}' > /etc/apt/sources.list.d/test.list && apt-get {apt} update && apt-get {apt} install -y {PACKAGE} && {PACKAGE}"
        ),
    )
    .await;
    assert_eq!(
        code,
        0,
        "apt in the template: {out}\narchive requests: {:?}\nnet's log:\n{}",
        requests.lock().map(|r| r.clone()).unwrap_or_default(),
        bulkhead_testkit::log_tail(&p, &net, 40).await
    );
    assert!(out.contains("hello from the archive"), "{out}");

    // The proxy reaches the archives of its list only, and only templates may call it.
    let ask = |host: Ipv4Addr| {
        format!("printf 'GET http://{host}/ HTTP/1.1\\r\\n\\r\\n' | /usr/lib/bulkhead/bulkhead-call @default bulkhead.UpdatesProxy")
    };
    let (_, out) = run_sh(&p, tmpl, &ask(OTHER)).await;
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("not a package archive"),
        "a non-archive host through the proxy: {out}"
    );
    let (code, out) = run_sh(&p, &work, &ask(ARCHIVE)).await;
    assert_eq!(code, 126, "an app domain called the update proxy: {out}");
    let (code, out) = run_sh(
        &p,
        tmpl,
        &format!("bash -c 'exec 3<>/dev/tcp/{OTHER}/80' 2>&1 && echo connected"),
    )
    .await;
    assert!(
        code != 0 && !out.contains("connected"),
        "the template reached the network directly: {out}"
    );

    p.shutdown(tmpl, 0).await.expect("shutdown template");
    // work ran all along: the root it started on.
    let (code, _) = run_sh(&p, &work, &format!("command -v {PACKAGE}")).await;
    assert_ne!(code, 0, "a running domain saw the template's new package");
    // personal starts now, work again: both see it.
    let (code, out) = run_sh(&p, &personal, PACKAGE).await;
    assert_eq!((code, out.trim()), (0, "hello from the archive"));
    p.shutdown(&work, 0).await.expect("shutdown work");
    let (code, out) = run_sh(&p, &work, PACKAGE).await;
    assert_eq!((code, out.trim()), (0, "hello from the archive"));
    // apt's proxy setting is the template's alone.
    let (code, _) = run_sh(
        &p,
        &work,
        "test -e /etc/apt/apt.conf.d/80bulkhead-updates-proxy",
    )
    .await;
    assert_ne!(
        code, 0,
        "the template's apt proxy setting reached an app domain"
    );
}
