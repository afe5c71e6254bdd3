//! VM domains (`isolation = "vm"`) through the real domaind, the real `bulkhead-vmm` and KVM.
//!
//! On a host without hardware virtualization (the build and CI machines: PVM), a start fails
//! at once with the probe's message, and with `--allow-software-kvm` domaind runs the
//! confined VMM anyway, on a template whose "kernel" is a tiny test guest
//! (`tests/guests/ticker.c`) that prints to the serial console forever.
//!
//! What this checks: the domain is created and listed with isolation vm; the probe refusal;
//! the VMM process runs as the domain slot's first uid inside the domain's cgroup; its
//! console output reaches the domain log (OpenLog, what `bulkhead log` reads); pause freezes
//! the cgroup and unpause lets the guest go on; a domaind restart adopts the running VM;
//! kill and shutdown end it, the state returns to halted and nothing is left (process,
//! cgroup, sockets, instance record, scratch).
//!
//! What this does NOT check: a Linux guest booting, the initramfs, the guest's agent
//! connecting over vsock, `bulkhead run` in a VM, a graceful shutdown through the agent.
//! The tiny guest has no drivers and no agent; those need hardware virtualization and are
//! covered by `vm_full_boot.rs`, which runs only where the probe finds it.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_api::Domaind1Proxy;
use bulkhead_testkit::{
    bounded, build_ticker_guest, children, domain_state, install_test_vm_artifacts, proc_uid,
    process_alive, processes_mentioning, sandbox_available, vmm_bin, vmm_probe, vmm_thread_states,
    wait_state, DomaindOptions, TestBus, TestDomaind,
};
use futures_util::StreamExt;

const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The domain log through OpenLog (what `bulkhead log` shows).
async fn log_text(p: &Domaind1Proxy<'_>, name: &str) -> String {
    let fd = p.open_log(name).await.expect("OpenLog");
    let fd: std::os::fd::OwnedFd = fd.into();
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
}

/// Wait (bounded) until the log has at least `n` ticks; returns the log.
async fn wait_ticks(p: &Domaind1Proxy<'_>, name: &str, n: usize) -> String {
    for _ in 0..1200 {
        let log = log_text(p, name).await;
        if log.matches("BULKHEAD-TEST-GUEST tick").count() >= n {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the guest's console never showed {n} ticks; log:\n{}",
        log_text(p, name).await
    );
}

fn assert_clean(d: &TestDomaind, name: &str, pid: i32) {
    assert!(!process_alive(pid), "VMM {pid} of {name} still alive");
    assert!(!d.cgroup_exists(name), "cgroup of {name} left behind");
    let rt = d.paths.runtime_dir.join("domains").join(name);
    for f in [
        "instance.json",
        "vm.json",
        "channel/vsock.sock",
        "channel/vsock.sock_1024",
    ] {
        assert!(!rt.join(f).exists(), "{f} left behind");
    }
    let scratch = d.paths.state_dir.join("domains").join(name).join("scratch");
    assert!(
        !scratch.exists()
            || std::fs::read_dir(&scratch)
                .map(|mut r| r.next().is_none())
                .unwrap_or(true),
        "scratch (tools image) not wiped"
    );
}

/// Whether process `pid` has the pipe with inode `inode` open.
fn holds_pipe(pid: i32, inode: u64) -> bool {
    let target = format!("pipe:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
}

/// The freezer state file of a record's cgroup.
fn procs_of(rec: &serde_json::Value) -> Vec<i32> {
    let cg = &rec["cgroup"];
    let dir = if cg["version"] == "v2" {
        cg["dir"].as_str()
    } else {
        cg["pids"].as_str()
    };
    let path = PathBuf::from(dir.expect("cgroup dir")).join("cgroup.procs");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_domain_lifecycle_on_software_kvm() {
    bounded(TEST_LIMIT, body()).await
}

async fn body() {
    if !sandbox_available() {
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        bulkhead_test_skip::skip("no /dev/kvm on this host");
        return;
    }
    let vmm = match vmm_bin() {
        Ok(v) => v,
        Err(e) => {
            bulkhead_test_skip::skip(format_args!("no bulkhead-vmm to run VM domains with: {e}"));
            return;
        }
    };
    let (hardware, reason) = vmm_probe(&vmm).expect("bulkhead-vmm probe");
    if hardware {
        // There a start waits for the guest's agent, which the tiny guest does not have; the
        // full test (vm_full_boot.rs) covers hardware hosts.
        bulkhead_test_skip::skip(format_args!("this test covers hosts without hardware virtualization; this one has it ({reason}); see vm_full_boot.rs"));
        return;
    }
    let bus = TestBus::start().expect("dbus-daemon");
    let mut d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            with_guest_tools: true,
            ..Default::default()
        },
    )
    .await
    .expect("domaind");
    let pre = format!("vm{}-", std::process::id() % 100_000);
    let tmpl = format!("{pre}tmpl");
    let work = format!("{pre}work");
    let root = d.root().expect("root").to_owned();
    d.mini_template(&tmpl).expect("mini template");
    let guest = build_ticker_guest(&root).expect("ticker guest");
    install_test_vm_artifacts(&d.paths.templates_dir(), &tmpl, &guest).expect("VM files");

    let (_conn, p) = d.client().await.expect("client");
    p.create(&tmpl, "template", "", "black", HashMap::new())
        .await
        .expect("register template");
    let props = HashMap::from([("isolation", "vm"), ("memory", "64"), ("vcpus", "1")]);
    p.create(&work, "app", &tmpl, "blue", props)
        .await
        .expect("create vm domain");
    let info = p.list().await.unwrap();
    let me = info.iter().find(|i| i.name == work).expect("listed");
    assert_eq!(me.isolation, "vm");
    assert_eq!(me.state, "halted");

    // Without the option: refused at once, with the probe's reason.
    let e = p
        .start(&work)
        .await
        .expect_err("no hardware virtualization");
    let msg = e.to_string();
    assert!(
        msg.contains("VM domains need hardware virtualization (VT-x or AMD-V)")
            && msg.contains(&reason),
        "{msg}"
    );
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("halted")
    );
    assert!(!d.cgroup_exists(&work));

    // With --allow-software-kvm: the confined VMM runs the tiny guest.
    let paths = d.paths.clone();
    let tools = d.guest_tools_dir.clone();
    d.kill9();
    let d2 = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            paths: Some(paths),
            guest_tools_dir: Some(tools),
            with_guest_tools: true,
            allow_software_kvm: true,
            ..Default::default()
        },
    )
    .await
    .expect("domaind --allow-software-kvm");
    let (_conn2, p) = d2.client().await.expect("client");
    // The VMM is started while another caller's `Run` holds descriptors that zbus received
    // without close-on-exec (a call that autostarts a VM does exactly this): the VMM must not
    // inherit them, or that caller's output never ends.
    let sb = format!("{pre}sb");
    p.create(&sb, "app", &tmpl, "green", HashMap::new())
        .await
        .expect("create a sandbox domain");
    let (in_r, in_w) = nix::unistd::pipe().expect("pipe");
    let inode = std::fs::File::from(in_r.try_clone().unwrap())
        .metadata()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let (p_run, sb_run) = (p.clone(), sb.clone());
    let (r2, w2) = (in_r.try_clone().unwrap(), in_w.try_clone().unwrap());
    let held = tokio::spawn(async move {
        p_run
            .run(
                &sb_run,
                &["sleep", "60"],
                "",
                zbus::zvariant::Fd::from(&r2),
                zbus::zvariant::Fd::from(&w2),
                zbus::zvariant::Fd::from(&w2),
            )
            .await
    });
    wait_state(&p, &sb, "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Err(e) = p.start(&work).await {
        panic!("start: {e}\ndomaind log:\n{}", d2.log());
    }
    let vmm_pid = d2.instance_record(&work)["vmm_pid"]
        .as_i64()
        .expect("vmm_pid") as i32;
    for pid in std::iter::once(vmm_pid).chain(children(vmm_pid)) {
        assert!(
            !holds_pipe(pid, inode),
            "VMM process {pid} inherited another caller's Run descriptors"
        );
    }
    p.kill(&sb).await.expect("kill the sandbox");
    let _ = held.await;
    drop((in_r, in_w));
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("running")
    );
    let rec = d2.instance_record(&work);
    let pid = rec["vmm_pid"].as_i64().expect("vmm_pid") as i32;
    let uid = rec["vmm_uid"].as_u64().expect("vmm_uid") as u32;
    assert!(process_alive(pid));
    assert!(uid >= bulkhead_sandbox::UID_BASE, "VMM uid {uid}");
    assert!(
        procs_of(&rec).contains(&pid),
        "the VMM is in the domain's cgroup"
    );
    assert!(d2
        .paths
        .runtime_dir
        .join("domains")
        .join(&work)
        .join("channel/vsock.sock_1024")
        .exists());
    // The console reaches the domain log.
    let log = wait_ticks(&p, &work, 1).await;
    assert!(log.contains("BULKHEAD-TEST-GUEST running"), "{log}");
    // Confined: `bulkhead-vmm run` forks the VMM proper into a new PID namespace (the parent
    // only waits for it), and that child drops to the slot's uid once its files are open.
    let vmm_child = children(pid);
    assert_eq!(
        vmm_child.len(),
        1,
        "one confined VMM under {pid}: {vmm_child:?}"
    );
    assert_eq!(
        proc_uid(vmm_child[0]),
        Some(uid),
        "the VMM runs as the domain's uid"
    );
    assert!(
        procs_of(&rec).contains(&vmm_child[0]),
        "in the domain's cgroup"
    );

    // Pause freezes the cgroup; unpause lets the guest go on.
    p.pause(&work).await.expect("pause");
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("paused")
    );
    // A VM's pause stops its VMM (the cgroup freezer cannot: see DomainRecord::freeze).
    let threads = vmm_thread_states(pid);
    assert!(
        !threads.is_empty() && threads.iter().all(|(_, s)| *s == 'T'),
        "paused, yet VMM threads run: {threads:?}"
    );
    p.unpause(&work).await.expect("unpause");
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &work).as_deref(),
        Some("running")
    );
    let threads = vmm_thread_states(pid);
    assert!(
        threads.iter().all(|(_, s)| *s != 'T'),
        "unpaused, yet VMM threads are stopped: {threads:?}"
    );
    let before = log_text(&p, &work).await.matches("tick").count();
    wait_ticks(&p, &work, before + 1).await;

    // `bulkhead log` shows the console too, `bulkhead ls` the VM (the CLI binary, when it is built next to the
    // launcher as `cargo build --workspace --bins` does).
    if let Some(cli) = bulkhead_testkit::libexec_dir()
        .ok()
        .map(|d| d.join("bulkhead"))
        .filter(|p| p.is_file())
    {
        let out = std::process::Command::new(&cli)
            .args(["log", &work])
            .env("BULKHEAD_BUS_ADDRESS", d2.bus_address())
            .output()
            .expect("run bulkhead log");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("BULKHEAD-TEST-GUEST running"),
            "bulkhead log {work}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(&cli)
            .arg("ls")
            .env("BULKHEAD_BUS_ADDRESS", d2.bus_address())
            .output()
            .expect("run bulkhead ls");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{work} ")))
            .unwrap_or_else(|| panic!("bulkhead ls does not list {work}:\n{text}"));
        assert!(
            line.contains("running") && line.trim_end().ends_with("vm"),
            "{line}"
        );
    } else {
        eprintln!("note: no bulkhead CLI binary next to the launcher; `bulkhead log`/`ls` not run");
    }

    // A domaind restart adopts the running VM (its record says vm: the vsock channel is bound
    // again and the VMM watched).
    let mut d2 = d2;
    d2.restart().await.expect("restart domaind");
    let (_conn3, p) = d2.client().await.expect("client");
    wait_state(&p, &work, "running").await;
    assert_eq!(
        d2.instance_record(&work)["vmm_pid"].as_i64(),
        Some(i64::from(pid))
    );
    assert!(d2
        .paths
        .runtime_dir
        .join("domains")
        .join(&work)
        .join("channel/vsock.sock_1024")
        .exists());
    let before = log_text(&p, &work).await.matches("tick").count();
    wait_ticks(&p, &work, before + 1).await;

    // Kill ends it and leaves nothing.
    p.kill(&work).await.expect("kill");
    wait_state(&p, &work, "halted").await;
    assert_clean(&d2, &work, pid);

    // Shutdown without an agent: the VMM is stopped and cleaned up the same way.
    p.start(&work).await.expect("second start");
    let pid2 = d2.instance_record(&work)["vmm_pid"].as_i64().expect("pid") as i32;
    p.shutdown(&work, 1).await.expect("shutdown");
    wait_state(&p, &work, "halted").await;
    assert_clean(&d2, &work, pid2);
    // The private volume image stays (made at the first start).
    assert!(d2
        .paths
        .state_dir
        .join("domains")
        .join(&work)
        .join("private.img")
        .exists());
    // ... and as long as it does, the domain cannot become a sandbox (which would use the
    // private dir and silently leave what the VM wrote behind).
    let e = p
        .set_property(&work, "isolation", "sandbox")
        .await
        .expect_err("a VM with a private image became a sandbox");
    assert!(e.to_string().contains("keeps its private volume in"), "{e}");
    let info = p.list().await.unwrap();
    assert_eq!(
        info.iter()
            .find(|i| i.name == work)
            .map(|i| i.isolation.as_str()),
        Some("vm")
    );

    // domaind killed at each step of a VM start: after its restart the domain is either
    // adopted (running, and it ends cleanly) or halted with nothing left behind (no VMM, no
    // cgroup, no socket), its private volume is still there, and it starts again.
    let image = d2
        .paths
        .state_dir
        .join("domains")
        .join(&work)
        .join("private.img");
    for step in [
        "checking template",
        "preparing volumes",
        "allocating uid range",
        "binding channel",
        "launching VM",
    ] {
        let (_c, p) = d2.client().await.expect("client");
        let mut progress = p.receive_progress().await.expect("progress signals");
        let (p_start, w) = (p.clone(), work.clone());
        let starting = tokio::spawn(async move { p_start.start(&w).await });
        loop {
            let sig = progress.next().await.expect("progress until the step");
            let args = sig.args().expect("progress args");
            if args.name() == &work && args.step() == step {
                break;
            }
        }
        d2.kill9();
        assert!(
            starting.await.unwrap().is_err(),
            "start survived domaind ({step})"
        );
        // A VMM spawned just before the kill goes on starting by itself meanwhile.
        tokio::time::sleep(Duration::from_millis(500)).await;
        d2.restart().await.expect("restart domaind");
        let (_c, p) = d2.client().await.expect("client");
        match domain_state(&p.list().await.unwrap(), &work).as_deref() {
            Some("running") => {
                let pid = d2.instance_record(&work)["vmm_pid"].as_i64().expect("pid") as i32;
                p.kill(&work).await.expect("kill the adopted VM");
                wait_state(&p, &work, "halted").await;
                assert_clean(&d2, &work, pid);
            }
            Some("halted") => {
                assert!(!d2.cgroup_exists(&work), "cgroup of {work} left ({step})");
                let spec = d2
                    .paths
                    .runtime_dir
                    .join("domains")
                    .join(&work)
                    .join("vm.json");
                let left = processes_mentioning(&spec.to_string_lossy());
                assert!(left.is_empty(), "VMM processes left ({step}): {left:?}");
                assert!(
                    !d2.paths
                        .runtime_dir
                        .join("domains")
                        .join(&work)
                        .join("channel/vsock.sock_1024")
                        .exists(),
                    "channel socket left ({step})"
                );
            }
            other => panic!("state {other:?} after domaind was killed at {step:?}"),
        }
        assert!(image.exists(), "private volume lost ({step})");
        p.start(&work)
            .await
            .unwrap_or_else(|e| panic!("start after the kill at {step:?}: {e}\n{}", d2.log()));
        let pid = d2.instance_record(&work)["vmm_pid"].as_i64().expect("pid") as i32;
        p.kill(&work).await.expect("kill");
        wait_state(&p, &work, "halted").await;
        assert_clean(&d2, &work, pid);
    }
    drop(d);
}
