//! The full VM test: a VM domain on the real debian-12 template boots Debian's cloud kernel
//! with the project's initramfs (built by domaind at the first start), and the guest's agent
//! answers `Run` (what `bulkhead run` calls) over vsock; then a graceful shutdown through the
//! agent ends the VM.
//!
//! Runs only where `bulkhead-vmm probe` finds hardware virtualization (VT-x/AMD-V): PVM's
//! software KVM (the build and CI machines) emulates a stock kernel instruction by
//! instruction and it never gets far. Elsewhere the test prints why it did not run and passes
//! as skipped. Also needs `BULKHEAD_TEST_TEMPLATE_CACHE` with debian-12 built (scripts/test.sh
//! sets it up) and the host's apt sources (the kernel and busybox .debs are fetched once).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

use domaind::api::Domaind1Proxy;
use domaind::testing::{
    bounded, register_template, run_in, sandbox_available, vmm_bin, vmm_probe, DomaindOptions,
    TestBus, TestDomaind,
};

const TEST_LIMIT: Duration = Duration::from_secs(600);

/// `Run` as the default user: (exit code, stdout, stderr).
async fn run(p: &Domaind1Proxy<'_>, name: &str, argv: &[&str]) -> (i32, String, String) {
    let out = run_in(p, name, argv, "", b"").await.expect("pipes");
    let code = match out.result {
        Ok(c) => c,
        Err(e) => panic!("run {argv:?} in {name}: {e}"),
    };
    (code, out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_cloud_kernel_boots_to_the_agent() {
    bounded(TEST_LIMIT, body()).await
}

async fn body() {
    if !sandbox_available() {
        return;
    }
    let vmm = match vmm_bin() {
        Ok(v) => v,
        Err(e) => {
            println!("SKIPPED (full VM boot): no bulkhead-vmm: {e}");
            return;
        }
    };
    let (hardware, reason) = vmm_probe(&vmm).expect("bulkhead-vmm probe");
    if !hardware {
        println!(
            "SKIPPED (full VM boot): booting Debian's cloud kernel to the agent needs hardware virtualization (VT-x or AMD-V), and this host has none: {reason}"
        );
        return;
    }
    let Some(cache) = domaind::testing::template_cache() else {
        println!("SKIPPED (full VM boot): no template cache with debian-12");
        return;
    };
    if !cache.join("debian-12/current").exists() {
        println!(
            "SKIPPED (full VM boot): {} has no built debian-12 template",
            cache.display()
        );
        return;
    }
    let bus = TestBus::start().expect("dbus-daemon");
    let d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            ..DomaindOptions::debian12(cache)
        },
    )
    .await
    .expect("domaind");
    let (_c, p) = d.client().await.expect("client");
    register_template(&p, "debian-12")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    let name = format!("vmfull{}", std::process::id() % 100_000);
    let props = HashMap::from([("isolation", "vm"), ("memory", "1024"), ("vcpus", "2")]);
    p.create(&name, "app", "debian-12", "green", props)
        .await
        .expect("create");

    let started = std::time::Instant::now();
    if let Err(e) = p.start(&name).await {
        let mut log = String::new();
        if let Ok(fd) = p.open_log(&name).await {
            let fd: OwnedFd = fd.into();
            let _ = std::fs::File::from(fd).read_to_string(&mut log);
        }
        panic!("start: {e}\nconsole:\n{log}\ndomaind:\n{}", d.log());
    }
    println!(
        "VM domain started (agent connected) in {:?}",
        started.elapsed()
    );
    let (code, out, err) = run(&p, &name, &["cat", "/etc/os-release"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    let (_, out, _) = run(&p, &name, &["uname", "-r"]).await;
    assert!(
        out.trim().ends_with("cloud-amd64"),
        "not the guest kernel: {out}"
    );
    let (_, out, _) = run(&p, &name, &["id", "-un"]).await;
    assert_eq!(out, "user\n");
    let (_, out, _) = run(&p, &name, &["sh", "-c", "echo kept > ~/f && cat ~/f"]).await;
    assert_eq!(out, "kept\n");
    let _ = std::io::stdout().flush();

    p.shutdown(&name, 30).await.expect("shutdown");
    let list = p.list().await.expect("list");
    assert_eq!(
        list.iter()
            .find(|i| i.name == name)
            .map(|i| i.state.as_str()),
        Some("halted")
    );
    assert!(!d
        .paths
        .runtime_dir
        .join("domains")
        .join(&name)
        .join("instance.json")
        .exists());
}
