//! The D-Bus methods the dom0 desktop uses (dom0-manager): policy files (ListPolicyFiles,
//! ReadPolicyFile, WritePolicyFile), application menus (ListApplications, RunApplication,
//! GetApplicationIcon) and usage (GetUsage). The real domaind binary on a private bus; the application and usage
//! tests run a real sandbox domain on the mini template (skipped with the reason where
//! sandboxes cannot run).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{sandbox_available, start_domaind, DomaindOptions, TestBus, TestDomaind};

const TEST_LIMIT: Duration = Duration::from_secs(180);

async fn start(
    with_guest_tools: bool,
) -> (
    TestBus,
    TestDomaind,
    zbus::Connection,
    Domaind1Proxy<'static>,
) {
    start_domaind(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        with_guest_tools,
        ..Default::default()
    })
    .await
}

fn invalid_argument(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_files_in_order_read_and_written_atomically() {
    let (_bus, d, _c, p) = start(false).await;
    let dir = d.paths.config_dir.join("policy.d");
    let rt_dir = d.paths.runtime_dir.join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&rt_dir).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/90-default.policy");
    std::fs::copy(&shipped, dir.join("90-default.policy")).unwrap();
    std::fs::write(
        dir.join("50-a.policy"),
        "bulkhead.Filecopy * @anyvm @anyvm ask\n",
    )
    .unwrap();
    std::fs::write(dir.join("README"), "not a policy").unwrap();
    std::fs::write(dir.join(".hidden.policy"), "x").unwrap();
    // the runtime copy of a name replaces the configured one
    std::fs::write(
        rt_dir.join("50-a.policy"),
        "bulkhead.Filecopy * @anyvm @anyvm deny\n",
    )
    .unwrap();
    std::fs::write(rt_dir.join("10-rt.policy"), "").unwrap();

    let files = p.list_policy_files().await.unwrap();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["10-rt.policy", "50-a.policy", "90-default.policy"]);
    assert_eq!(Path::new(&files[1].1), rt_dir.join("50-a.policy"));
    assert_eq!(Path::new(&files[2].1), dir.join("90-default.policy"));

    assert_eq!(
        p.read_policy_file("90-default.policy").await.unwrap(),
        std::fs::read_to_string(&shipped).unwrap()
    );
    assert!(p
        .read_policy_file("50-a.policy")
        .await
        .unwrap()
        .contains("deny"));
    invalid_argument(p.read_policy_file("../domains/x.policy").await);
    invalid_argument(p.read_policy_file("README").await);
    invalid_argument(p.read_policy_file("30-missing.policy").await);

    // text with errors: refused with every error at file:line, nothing written
    let broken = "bulkhead.Filecopy * work\nbulkhead.Filecopy * work vault allow\nbulkhead.Filecopy * work vault maybe\n";
    let m = invalid_argument(p.write_policy_file("30-user.policy", broken).await);
    assert!(m.contains("30-user.policy:1:"), "{m}");
    assert!(m.contains("30-user.policy:3:"), "{m}");
    assert!(!m.contains("30-user.policy:2:"), "{m}");
    assert!(!dir.join("30-user.policy").exists());
    // names: NN-name.policy only, never a path
    invalid_argument(p.write_policy_file("user.policy", "").await);
    invalid_argument(p.write_policy_file("30-../x.policy", "").await);
    invalid_argument(p.write_policy_file("30-x.conf", "").await);

    let good = "bulkhead.Filecopy * work vault allow\n";
    p.write_policy_file("30-user.policy", good).await.unwrap();
    let path = dir.join("30-user.policy");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    assert_eq!(p.read_policy_file("30-user.policy").await.unwrap(), good);
    assert!(p.check_policy().await.unwrap().is_empty());

    // a rewrite is a rename over the old file: a reader holding it sees the old text whole
    let ino = std::fs::metadata(&path).unwrap().ino();
    let held = std::fs::File::open(&path).unwrap();
    let good2 = "bulkhead.Filecopy * work vault deny\n";
    p.write_policy_file("30-user.policy", good2).await.unwrap();
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(std::io::read_to_string(held).unwrap(), good);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good2);
    let strays: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".policy-edit-"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");

    // delete: the file leaves the list (and a second delete says there is none); names are
    // checked; a runtime file is not the policy directory's; a symlink goes as a link
    invalid_argument(p.delete_policy_file("../x.policy").await);
    invalid_argument(p.delete_policy_file("30-../x.policy").await);
    // 50-a.policy in effect is the runtime directory's: not deleted through the config one
    std::fs::write(dir.join("50-a.policy"), "").unwrap();
    invalid_argument(p.delete_policy_file("50-a.policy").await);
    assert!(dir.join("50-a.policy").exists() && rt_dir.join("50-a.policy").exists());
    std::fs::remove_file(dir.join("50-a.policy")).unwrap();
    invalid_argument(p.delete_policy_file("user.policy").await);
    invalid_argument(p.delete_policy_file("10-rt.policy").await);
    assert!(rt_dir.join("10-rt.policy").exists());
    p.delete_policy_file("30-user.policy").await.unwrap();
    assert!(!path.exists());
    let names: Vec<String> = p
        .list_policy_files()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n == "30-user.policy"), "{names:?}");
    invalid_argument(p.delete_policy_file("30-user.policy").await);
    let target = dir.join("kept-target");
    std::fs::write(&target, "not a policy\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("40-link.policy")).unwrap();
    p.delete_policy_file("40-link.policy").await.unwrap();
    assert!(dir.join("40-link.policy").symlink_metadata().is_err());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a policy\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_of_a_halted_domain_is_zero() {
    let (_bus, _d, _c, p) = start(false).await;
    p.create("tpl", "template", "", "black", HashMap::new())
        .await
        .unwrap();
    p.create("work", "app", "tpl", "blue", HashMap::new())
        .await
        .unwrap();
    assert_eq!(p.get_usage("work").await.unwrap(), (0, 0));
    assert!(matches!(
        p.get_usage("nope").await,
        Err(Error::NoSuchDomain(_))
    ));
    assert!(matches!(
        p.get_usage("Bad Name").await,
        Err(Error::InvalidName(_))
    ));
}

/// Poll `cond` every 100 ms for up to 30 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn applications_listed_launched_and_usage_counted() {
    if !sandbox_available() {
        return;
    }
    let body = async {
        let (_bus, d, _c, p) = start(true).await;
        let pre = format!("dt{}-", std::process::id() % 100_000);
        let tmpl = format!("{pre}tmpl");
        let app = format!("{pre}app");
        let root = d.mini_template(&tmpl).expect("mini template");
        // the template's menu: one launcher that leaves a mark in the private volume, one
        // hidden entry, one that is no application, and a symlink that must not be followed
        let apps = root.join("usr/share/applications");
        std::fs::create_dir_all(&apps).unwrap();
        std::fs::write(
            apps.join("marker.desktop"),
            "[Desktop Entry]\nType=Application\nName=Marker\nIcon=marker-icon\nExec=sh -c \"echo launched > /home/user/launched; sleep 2\" %U\n",
        )
        .unwrap();
        std::fs::write(
            apps.join("hidden.desktop"),
            "[Desktop Entry]\nType=Application\nName=Hidden\nExec=true\nNoDisplay=true\n",
        )
        .unwrap();
        std::fs::write(
            apps.join("link.desktop"),
            "[Desktop Entry]\nType=Link\nName=Link\nURL=http://example.invalid/\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", apps.join("escape.desktop")).unwrap();
        p.create(&tmpl, "template", "", "black", HashMap::new())
            .await
            .unwrap();
        p.create(&app, "app", &tmpl, "green", HashMap::new())
            .await
            .unwrap();

        let list = p.list_applications(&app).await.unwrap();
        assert_eq!(
            list,
            [(
                "marker.desktop".to_owned(),
                "Marker".to_owned(),
                "marker-icon".to_owned()
            )]
        );
        invalid_argument(p.run_application(&app, "hidden.desktop").await);
        invalid_argument(p.run_application(&app, "escape.desktop").await);
        assert!(matches!(
            p.run_application("nope", "marker.desktop").await,
            Err(Error::NoSuchDomain(_))
        ));

        // launching starts the halted domain and runs the Exec line in it
        p.run_application(&app, "marker.desktop").await.unwrap();
        let state = p.get_properties(&app).await.unwrap()["state"].clone();
        assert_eq!(state, "running");
        let mark = d.in_domain(&app, "/home/user/launched");
        assert!(
            eventually(|| std::fs::read_to_string(&mark).is_ok_and(|s| s == "launched\n")).await,
            "the application never ran ({})",
            mark.display()
        );

        // usage: memory is charged, CPU time grows with work done in the domain
        let (mem, cpu) = p.get_usage(&app).await.unwrap();
        assert!(mem > 0, "memory {mem}");
        let null = || std::fs::File::open("/dev/null").unwrap();
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let code = p
            .run(
                &app,
                &[
                    "sh",
                    "-c",
                    "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
                ],
                "",
                zbus::zvariant::Fd::from(&null()),
                zbus::zvariant::Fd::from(&out),
                zbus::zvariant::Fd::from(&out),
            )
            .await
            .unwrap();
        assert_eq!(code, 0);
        let (_, cpu2) = p.get_usage(&app).await.unwrap();
        assert!(cpu2 > cpu, "cpu time {cpu} -> {cpu2}");

        p.kill(&app).await.unwrap();
        assert_eq!(p.get_usage(&app).await.unwrap(), (0, 0));
    };
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

/// GetApplicationIcon: the PNG an entry's `Icon=` names, from the template root only (no
/// domain runs for it).
#[tokio::test(flavor = "multi_thread")]
async fn application_icons_come_from_the_template_root() {
    let body = async {
        let (_bus, d, _c, p) = start(false).await;
        let pre = format!("di{}-", std::process::id() % 100_000);
        let tmpl = format!("{pre}tmpl");
        let app = format!("{pre}app");
        let root = d.mini_template(&tmpl).expect("mini template");
        let apps = root.join("usr/share/applications");
        let hicolor = root.join("usr/share/icons/hicolor/48x48/apps");
        let pixmaps = root.join("usr/share/pixmaps");
        for dir in [&apps, &hicolor, &pixmaps] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let entry = |id: &str, icon: &str| {
            std::fs::write(
                apps.join(id),
                format!("[Desktop Entry]\nType=Application\nName={id}\nIcon={icon}\nExec=true\n"),
            )
            .unwrap();
        };
        entry("hicolor.desktop", "bh-hicolor");
        std::fs::write(hicolor.join("bh-hicolor.png"), b"hicolor png").unwrap();
        entry("pixmap.desktop", "bh-pixmap");
        std::fs::write(pixmaps.join("bh-pixmap.png"), b"pixmap png").unwrap();
        // a link to a file of the host: never read
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret.png");
        std::fs::write(&secret, b"host file").unwrap();
        entry("escape.desktop", "bh-escape");
        std::os::unix::fs::symlink(&secret, hicolor.join("bh-escape.png")).unwrap();
        entry("path.desktop", secret.to_str().unwrap());
        entry("none.desktop", "");
        p.create(&tmpl, "template", "", "black", HashMap::new())
            .await
            .unwrap();
        p.create(&app, "app", &tmpl, "green", HashMap::new())
            .await
            .unwrap();

        for domain in [&app, &tmpl] {
            let icon = |id: &'static str| p.get_application_icon(domain, id);
            assert_eq!(icon("hicolor.desktop").await.unwrap(), b"hicolor png");
            assert_eq!(icon("pixmap.desktop").await.unwrap(), b"pixmap png");
            for id in ["escape.desktop", "path.desktop", "none.desktop"] {
                assert_eq!(icon(id).await.unwrap(), b"", "{domain} {id}");
            }
            invalid_argument(icon("gone.desktop").await);
            invalid_argument(icon("../hicolor.desktop").await);
        }
        assert!(matches!(
            p.get_application_icon("nope", "hicolor.desktop").await,
            Err(Error::NoSuchDomain(_))
        ));
    };
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}
