//! D-Bus API tests that need no running domain: the real domaind binary on a private
//! dbus-daemon, driven through the same proxy the CLI uses.

use std::collections::HashMap;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{start_domaind, DomaindOptions, TestBus, TestDomaind};

async fn start() -> (
    TestBus,
    TestDomaind,
    zbus::Connection,
    Domaind1Proxy<'static>,
) {
    start_domaind(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        ..Default::default()
    })
    .await
}

fn no_props() -> HashMap<&'static str, &'static str> {
    HashMap::new()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_list_prefs_clone_remove() {
    let (_bus, d, _c, p) = start().await;
    assert!(p.list().await.unwrap().is_empty());

    p.create("debian-12", "template", "", "black", no_props())
        .await
        .unwrap();
    let mut props = HashMap::new();
    props.insert("memory", "512");
    props.insert("features.gui", "1");
    p.create("work", "app", "debian-12", "blue", props)
        .await
        .unwrap();

    let list = p.list().await.unwrap();
    let names: Vec<_> = list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["debian-12", "work"]);
    let work = &list[1];
    assert_eq!(work.class, "app");
    assert_eq!(work.state, "halted");
    assert_eq!(work.label, "blue");
    assert_eq!(work.memory_mib, 512);
    assert_eq!(work.template, "debian-12");
    assert_eq!(work.isolation, "sandbox");

    let props = p.get_properties("work").await.unwrap();
    assert_eq!(props["features.gui"], "1");
    assert_eq!(props["state"], "halted");

    p.set_property("work", "vcpus", "4").await.unwrap();
    p.set_property("work", "label", "green").await.unwrap();
    let props = p.get_properties("work").await.unwrap();
    assert_eq!(props["vcpus"], "4");
    assert_eq!(props["label"], "green");
    // the file on disk says so too
    let text = std::fs::read_to_string(d.paths.config_dir.join("domains/work.toml")).unwrap();
    assert!(text.contains("vcpus = 4"), "{text}");

    // the private volume image exists, with /home/user owned by the domain user
    bulkhead_testkit::with_private_volume(&d.paths, "work", |p| {
        let user = std::fs::metadata(p.join("user")).unwrap();
        assert!(user.is_dir());
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&user), 1000);
        std::fs::write(p.join("user/note"), b"hello").unwrap();
    });

    p.clone_domain("work", "work2").await.unwrap();
    let props = p.get_properties("work2").await.unwrap();
    assert_eq!(props["vcpus"], "4");
    let note = bulkhead_testkit::with_private_volume(&d.paths, "work2", |p| {
        std::fs::read(p.join("user/note")).unwrap()
    });
    assert_eq!(note, b"hello");

    // the template is in use: refused, naming the users
    match p.remove("debian-12").await {
        Err(Error::InvalidState(m)) => {
            assert!(
                m.contains("work (template)") && m.contains("work2 (template)"),
                "{m}"
            )
        }
        other => panic!("expected InvalidState, got {other:?}"),
    }
    p.remove("work2").await.unwrap();
    assert!(!d.paths.state_dir.join("domains/work2").exists());
    assert!(!d.paths.config_dir.join("domains/work2.toml").exists());
    p.remove("work").await.unwrap();
    p.remove("debian-12").await.unwrap();
    assert!(p.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_are_typed_and_actionable() {
    let (_bus, _d, _c, p) = start().await;
    match p.create("0bad", "app", "", "red", no_props()).await {
        Err(Error::InvalidName(m)) => assert!(m.contains("must start with a letter"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.create("x", "wizard", "", "red", no_props()).await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("app"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.create("x", "app", "nope", "red", no_props()).await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("'nope' does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.create("x", "app", "", "red", no_props()).await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("template"), "{m}"),
        other => panic!("{other:?}"),
    }
    p.create("t", "template", "", "black", no_props())
        .await
        .unwrap();
    match p.create("t", "template", "", "black", no_props()).await {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("'t'"), "{m}"),
        other => panic!("{other:?}"),
    }
    p.create("a", "app", "t", "red", no_props()).await.unwrap();
    match p.set_property("a", "memory", "8").await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("memory"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.set_property("a", "colour", "red").await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("unknown property"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.set_property("a", "template", "a").await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("must be a template"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.get_properties("ghost").await {
        Err(Error::NoSuchDomain(m)) => assert!(m.contains("'ghost'"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.kill("ghost").await {
        Err(Error::NoSuchDomain(m)) => assert!(m.contains("'ghost'"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.start("ghost").await {
        Err(Error::NoSuchDomain(m)) => assert!(m.contains("'ghost'"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.shutdown("a", 0).await {
        Err(Error::InvalidState(m)) => assert!(m.contains("not running"), "{m}"),
        other => panic!("{other:?}"),
    }
    match p.pause("a").await {
        Err(Error::InvalidState(m)) => assert!(m.contains("halted"), "{m}"),
        other => panic!("{other:?}"),
    }
    // a recipe that does not exist
    let (r, w) = nix::unistd::pipe().unwrap();
    match p.build_template("nope", zbus::zvariant::Fd::from(&w)).await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("recipes are read from"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop((r, w));
    // vm isolation: a clear error (here: no hardware virtualization, or no bulkhead-vmm; on a
    // host with VT-x/AMD-V the probe passes and the missing template is reported), nothing
    // left half-started
    p.set_property("a", "isolation", "vm").await.unwrap();
    match p.start("a").await {
        Err(Error::Backend(m)) => assert!(
            m.contains("VM domains need hardware virtualization (VT-x or AMD-V)")
                || m.contains("bulkhead-vmm"),
            "{m}"
        ),
        Err(Error::TemplateMissing(m)) => assert!(m.contains("template"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.get_properties("a").await.unwrap()["state"], "halted");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_file_is_reported_and_others_work() {
    let bus = TestBus::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let paths = bulkhead_domain::Paths::under(root.path());
    let dir = paths.config_dir.join("domains");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("good.toml"),
        "name = \"good\"\nlabel = \"red\"\nclass = \"template\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "name = \"bad\"\nlabel = \"red\"\nclass = \"app\"\ntemplate = \"good\"\nmemory = \"lots\"\n",
    )
    .unwrap();
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            paths: Some(paths.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_c, p) = d.client().await.unwrap();
    let list = p.list().await.unwrap();
    let good = list.iter().find(|d| d.name == "good").unwrap();
    assert_eq!(good.state, "halted");
    let bad = list.iter().find(|d| d.name == "bad").unwrap();
    assert_eq!(bad.state, "broken");
    match p.get_properties("bad").await {
        Err(Error::InvalidProperty(m)) => {
            assert!(m.contains("bad.toml") && m.contains("memory"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match p.start("bad").await {
        Err(Error::InvalidProperty(m)) => assert!(m.contains("bad.toml"), "{m}"),
        other => panic!("{other:?}"),
    }
    // the log names the file
    assert!(d.log().contains("bad.toml"), "{}", d.log());
    // a broken domain can be removed to get rid of it
    p.remove("bad").await.unwrap();
    assert!(!dir.join("bad.toml").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_caller_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs root to run a client as another uid");
        return;
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
        || std::process::Command::new("dbus-send")
            .arg("--help")
            .output()
            .is_err()
    {
        bulkhead_test_skip::skip("setpriv or dbus-send missing");
        return;
    }
    let (_bus, d, _c, _p) = start().await;
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "dbus-send",
        ])
        .arg(format!("--bus={}", d.bus_address()))
        .args([
            "--print-reply",
            "--dest=org.bulkhead.Domaind1",
            "/org/bulkhead/Domaind1",
            "org.bulkhead.Domaind1.List",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("org.bulkhead.Error.AccessDenied"), "{err}");
    assert!(err.contains("bulkhead-admin"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_domaind_refuses_to_start() {
    let (_bus, d, _c, p) = start().await;
    p.create("t", "template", "", "black", no_props())
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_domaind"))
        .arg("--bus-address")
        .arg(d.bus_address())
        .arg("--config-dir")
        .arg(&d.paths.config_dir)
        .arg("--state-dir")
        .arg(&d.paths.state_dir)
        .arg("--runtime-dir")
        .arg(&d.paths.runtime_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another domaind already serves"), "{err}");
    // the first one still works
    assert_eq!(p.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_log_hands_out_a_read_only_descriptor() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (_bus, d, _c, p) = start().await;
    p.create("logged", "template", "", "black", no_props())
        .await
        .unwrap();
    // no log before the first start
    match p.open_log("logged").await {
        Err(Error::Io(m)) => assert!(m.contains("no log yet"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.open_log("nosuch").await,
        Err(Error::NoSuchDomain(_))
    ));
    let log = d.paths.state_dir.join("logs/logged.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, b"init: hello\n").unwrap();
    let fd: std::os::fd::OwnedFd = p.open_log("logged").await.unwrap().into();
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(flags & libc_accmode(), nix::fcntl::OFlag::O_RDONLY.bits());
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).unwrap();
    assert_eq!(text, "init: hello\n");
    // a symlink in place of the log is not followed
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &log).unwrap();
    assert!(matches!(p.open_log("logged").await, Err(Error::Io(_))));
}

fn libc_accmode() -> i32 {
    nix::fcntl::OFlag::O_ACCMODE.bits()
}
