//! The full VM test: VM domains on the real debian-12 template boot Debian's generic kernel with
//! the project's initramfs, through domaind and the confined VMM in its cgroup, and the guest
//! agent answers over vsock. One scenario, because every boot costs tens of seconds nested:
//! `Run` (the kernel release is Debian's), the template disk is read-only in the guest, the
//! private volume keeps what was written across a shutdown and a kill, pause and unpause with
//! a live guest, a domaind restart adopts the running VM and its agent reconnects, a VMM that
//! dies marks the domain halted with the reason in its log, and a shutdown through the agent
//! leaves nothing behind.
//!
//! Needs hardware virtualization (VT-x/AMD-V). Where there is none (PVM's software KVM, as on
//! our build and CI machines) the test runs itself inside the nested environment
//! (`scripts/nested-kvm.sh`: an L1 kernel under QEMU TCG with emulated AMD-V), see
//! [`hardware_vm_here_or_nested`]. Also needs `BULKHEAD_TEST_TEMPLATE_CACHE` with debian-12
//! built (scripts/test.sh builds it); the template's VM files are built before entering L1
//! (they fetch Debian's kernel with apt, and L1 has no network).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_api::Domaind1Proxy;
use bulkhead_testkit::{
    bounded, domain_state, hardware_vm_here_or_nested, process_alive, run_in, template_cache,
    vmm_thread_states, wait_state, Debian12Env, DomaindOptions, TestDomaind, VmHost, EDITOR_SETUP,
    ENV_IN_L1,
};

const TEST_LIMIT: Duration = Duration::from_secs(1200);
const TEST_NAME: &str = "debian_kernel_boots_to_the_agent";

#[test]
fn debian_kernel_boots_to_the_agent() {
    let Some(cache) = template_cache() else {
        panic!("the full VM test needs the debian-12 template cache (scripts/test.sh builds it)");
    };
    assert!(
        cache.join("debian-12/current").exists()
            || cache.join("templates/debian-12/current").exists(),
        "{} has no built debian-12 template (scripts/test.sh builds it)",
        cache.display()
    );
    if std::env::var_os(ENV_IN_L1).is_none() {
        let built = bulkhead_testkit::ensure_vm_files(&cache, "debian-12")
            .unwrap_or_else(|e| panic!("the VM files of debian-12: {e}"));
        println!("VM files: {}", built.display());
    }
    match hardware_vm_here_or_nested(TEST_NAME) {
        VmHost::PassedInL1 => {}
        VmHost::Here => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(bounded(TEST_LIMIT, scenario(cache))),
    }
}

/// `Run` as `user` (default user when empty): (exit code, stdout, stderr).
async fn run_as(
    p: &Domaind1Proxy<'_>,
    name: &str,
    user: &str,
    argv: &[&str],
) -> (i32, String, String) {
    let out = run_in(p, name, argv, user, b"").await.expect("pipes");
    let code = match out.result {
        Ok(c) => c,
        Err(e) => panic!(
            "run {argv:?} in {name}: {e}\nconsole of {name}:\n{}\n{}",
            tail(&console(p, name).await, 30),
            host_state()
        ),
    };
    (code, out.stdout, out.stderr)
}

async fn run(p: &Domaind1Proxy<'_>, name: &str, argv: &[&str]) -> (i32, String, String) {
    run_as(p, name, "", argv).await
}

async fn console(p: &Domaind1Proxy<'_>, name: &str) -> String {
    let mut log = String::new();
    if let Ok(fd) = p.open_log(name).await {
        let fd: OwnedFd = fd.into();
        let _ = std::fs::File::from(fd).read_to_string(&mut log);
    }
    log
}

/// Start `name` and say how long it took; on failure, panic with its console and domaind's log.
async fn start(p: &Domaind1Proxy<'_>, d: &TestDomaind, name: &str, what: &str) {
    let t0 = Instant::now();
    if let Err(e) = p.start(name).await {
        panic!(
            "start ({what}): {e}\nconsole:\n{}\ndomaind:\n{}",
            console(p, name).await,
            d.log()
        );
    }
    println!("{what}: started (agent connected) in {:?}", t0.elapsed());
}

fn vmm_pid(d: &TestDomaind, name: &str) -> i32 {
    let rec = d.instance_record(name);
    i32::try_from(rec["vmm_pid"].as_i64().expect("vmm_pid")).expect("pid")
}

async fn scenario(cache: std::path::PathBuf) {
    // the bus and the connection stay in env
    let env = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let (mut d, p) = (env.d, env.p);
    let name = format!("vmfull{}", std::process::id() % 100_000);
    // One vCPU: with two, L1's kernel (6.1, nested SVM under TCG) twice hit a kernel stack
    // overflow on this VM's second vCPU thread while a second VM booted.
    let props = HashMap::from([("isolation", "vm"), ("memory", "768"), ("vcpus", "1")]);
    p.create(&name, "app", "debian-12", "green", props)
        .await
        .expect("create");

    // Boot to the agent; `Run` answers from Debian's kernel.
    start(&p, &d, &name, "first boot").await;
    let (code, out, err) = run(&p, &name, &["cat", "/etc/os-release"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Debian GNU/Linux 12"), "{out}");
    // L1 boots the same Debian kernel, so its release does not tell them apart; the command
    // line does (the VMM's, with the vsock channel).
    let (_, out, _) = run(&p, &name, &["cat", "/proc/cmdline"]).await;
    assert!(
        out.contains("bulkhead.channel=vsock"),
        "not the guest kernel: {out}"
    );
    let (_, out, _) = run(&p, &name, &["uname", "-r"]).await;
    println!("uname -r in the VM: {}", out.trim());
    let (_, out, _) = run(&p, &name, &["id", "-un"]).await;
    assert_eq!(out, "user\n");

    // `bulkhead console`: what is typed reaches the root shell on the serial console, and
    // its output comes back (through the domain's log).
    console_answers(&p, &d, &name).await;

    // Files from one VM domain to another through a policy-checked call (the target VM is
    // started for it): out of one VM and into the other, over both agents' vsock links.
    copy_between_vms(&p, &d, &name).await;

    // Open a file in a new disposable VM: its default application edits it, the edit comes
    // back, the disposable is gone afterwards.
    open_in_disposable_vm(&p, &d, &name).await;

    // Pause and unpause with a live guest.
    p.pause(&name).await.expect("pause");
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &name).as_deref(),
        Some("paused")
    );
    let pid = vmm_pid(&d, &name);
    let threads = vmm_thread_states(pid);
    assert!(
        !threads.is_empty() && threads.iter().all(|(_, s)| *s == 'T'),
        "paused, yet VMM threads run: {threads:?}"
    );
    p.unpause(&name).await.expect("unpause");
    let (_, out, _) = run(&p, &name, &["echo", "after unpause"]).await;
    assert_eq!(out, "after unpause\n");

    // The template's disk is read-only even for the guest's root; the root overlay is not
    // the template's.
    let (code, _, err) = run_as(
        &p,
        &name,
        "root",
        &[
            "dd",
            "if=/dev/zero",
            "of=/dev/disk/by-label/bh-root",
            "bs=512",
            "count=1",
            "conv=fsync",
        ],
    )
    .await;
    assert_ne!(code, 0, "writing the template disk succeeded: {err}");
    let (code, _, err) = run_as(
        &p,
        &name,
        "root",
        &["sh", "-c", "echo x > /etc/written-in-vm"],
    )
    .await;
    assert_eq!(code, 0, "the root overlay is writable: {err}");

    // The private volume keeps what was written across a graceful shutdown...
    let (code, _, err) = run(&p, &name, &["sh", "-c", "echo kept > ~/kept && sync"]).await;
    assert_eq!(code, 0, "{err}");
    p.shutdown(&name, 60).await.expect("shutdown");
    assert_eq!(
        domain_state(&p.list().await.unwrap(), &name).as_deref(),
        Some("halted")
    );
    start(&p, &d, &name, "after a shutdown").await;
    let (_, out, _) = run(&p, &name, &["cat", "/home/user/kept"]).await;
    assert_eq!(
        out, "kept\n",
        "the private volume lost a file across a shutdown"
    );
    let (code, _, _) = run(&p, &name, &["test", "-e", "/etc/written-in-vm"]).await;
    assert_ne!(code, 0, "the root overlay survived a restart");

    // ... a domaind restart adopts the running VM, and its agent comes back ...
    let pid = vmm_pid(&d, &name);
    d.restart().await.expect("domaind restart");
    let (_c2, p2) = d.client().await.expect("client after restart");
    assert_eq!(
        domain_state(&p2.list().await.unwrap(), &name).as_deref(),
        Some("running")
    );
    assert!(process_alive(pid), "the VMM died with domaind");
    assert_eq!(vmm_pid(&d, &name), pid, "adopted, not restarted");
    let (_, out, _) = run(
        &p2,
        &name,
        &["sh", "-c", "echo again >> ~/kept && sync && cat ~/kept"],
    )
    .await;
    assert_eq!(out, "kept\nagain\n");

    // ... and a kill (synced data stays).
    p2.kill(&name).await.expect("kill");
    assert_eq!(
        domain_state(&p2.list().await.unwrap(), &name).as_deref(),
        Some("halted")
    );
    assert!(!process_alive(pid));
    start(&p2, &d, &name, "after a kill").await;
    let (_, out, _) = run(&p2, &name, &["cat", "/home/user/kept"]).await;
    assert_eq!(
        out, "kept\nagain\n",
        "the private volume lost data across a kill"
    );

    // A VMM that dies on its own: the domain is halted and its log says why.
    let pid = vmm_pid(&d, &name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    wait_state(&p2, &name, "halted").await;
    let log = console(&p2, &name).await;
    assert!(
        log.contains("the VMM exited") || log.contains("VMM exited"),
        "the domain's log does not say the VMM ended:\n{}",
        tail(&log, 15)
    );
    assert!(!d.cgroup_exists(&name), "the cgroup of a dead VMM stayed");

    // A graceful shutdown through the agent leaves nothing behind.
    start(&p2, &d, &name, "after the VMM died").await;
    let pid = vmm_pid(&d, &name);
    p2.shutdown(&name, 60).await.expect("shutdown");
    assert_eq!(
        domain_state(&p2.list().await.unwrap(), &name).as_deref(),
        Some("halted")
    );
    assert!(!process_alive(pid));
    assert!(!d.cgroup_exists(&name));
    let rundir = d.paths.runtime_dir.join("domains").join(&name);
    assert!(!rundir.join("instance.json").exists());
    assert!(
        !Path::new(&rundir).join("channel/vsock.sock").exists(),
        "the VMM's socket stayed"
    );
}

async fn copy_between_vms(p: &Domaind1Proxy<'_>, d: &TestDomaind, from: &str) {
    let to = format!("{from}b");
    let props = HashMap::from([("isolation", "vm"), ("memory", "512"), ("vcpus", "1")]);
    p.create(&to, "app", "debian-12", "blue", props)
        .await
        .expect("create the second VM");
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(
        policy.join("30-vm-test.policy"),
        format!("bulkhead.Filecopy * {from} {to} allow\n"),
    )
    .expect("policy");
    let t0 = Instant::now();
    let copy =
        format!("echo from-the-vm > ~/t.txt && /usr/lib/bulkhead/bulkhead-copy-to-vm {to} ~/t.txt");
    let copied =
        tokio::time::timeout(Duration::from_secs(300), run(p, from, &["sh", "-c", &copy])).await;
    let Ok((code, _, err)) = copied else {
        panic!(
            "copy-to-vm did not end within 300 s\nconsole of {from}:\n{}\nconsole of {to}:\n{}\ndomaind:\n{}",
            tail(&console(p, from).await, 30),
            tail(&console(p, &to).await, 40),
            tail(&d.log(), 60)
        );
    };
    assert_eq!(
        code,
        0,
        "copy-to-vm: {err}\nconsole of {to}:\n{}\ndomaind:\n{}",
        tail(&console(p, &to).await, 20),
        tail(&d.log(), 30)
    );
    println!("copy into a VM that was started for it: {:?}", t0.elapsed());
    let (code, out, err) = run(
        p,
        &to,
        &["cat", &format!("/home/user/Incoming/{from}/t.txt")],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from-the-vm\n"), "{err}");
    let (_, line, _) = run(
        p,
        &to,
        &["grep", " /home/user/Incoming ", "/proc/self/mountinfo"],
    )
    .await;
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(
            line.contains(flag),
            "Incoming in a VM is not {flag}: {line}"
        );
    }
    p.kill(&to).await.expect("kill the second VM");
}

async fn open_in_disposable_vm(p: &Domaind1Proxy<'_>, d: &TestDomaind, from: &str) {
    let dvm = format!("{from}dvm");
    let props = HashMap::from([("isolation", "vm"), ("memory", "512"), ("vcpus", "1")]);
    p.create(&dvm, "disposable-template", "debian-12", "red", props)
        .await
        .expect("create the disposable VM template");
    // The disposable template's default application for text/plain, synced to its private
    // volume (a VM's disk) before the shutdown.
    let setup = format!("{EDITOR_SETUP}sync\n");
    let (code, _, err) = run(p, &dvm, &["sh", "-c", &setup]).await;
    assert_eq!(code, 0, "editor setup in {dvm}: {err}");
    p.shutdown(&dvm, 60)
        .await
        .expect("shutdown the disposable template");
    p.set_property(from, "default_dispvm", &dvm)
        .await
        .expect("default_dispvm");
    let policy = d.paths.config_dir.join("policy.d");
    std::fs::write(
        policy.join("31-vm-dvm.policy"),
        format!("bulkhead.OpenInVM * {from} @dispvm allow\n"),
    )
    .expect("policy");
    let t0 = Instant::now();
    let open = "printf 'original\\n' > doc.txt && /usr/lib/bulkhead/bulkhead-open-in-dvm doc.txt && cat doc.txt";
    let opened = tokio::time::timeout(
        Duration::from_secs(300),
        run_in(p, from, &["sh", "-c", open], "", b""),
    )
    .await;
    let (code, out, err) = match opened.map(|o| o.map(|o| (o.result, o.stdout, o.stderr))) {
        Ok(Ok((Ok(code), out, err))) => (code, out, err),
        failed => panic!(
            "open-in-dvm did not end within 300 s or failed: {failed:?}\nconsole of {from}:\n{}\ndomaind:\n{}\n{}",
            tail(&console(p, from).await, 30),
            tail(&d.log(), 80),
            host_diagnostics(d, from)
        ),
    };
    assert_eq!(
        code,
        0,
        "open-in-dvm: {err}\nconsole of {from}:\n{}\ndomaind:\n{}\n{}",
        tail(&console(p, from).await, 30),
        tail(&d.log(), 80),
        host_diagnostics(d, from)
    );
    assert!(out.starts_with("original\nedited in disp"), "{out}");
    println!(
        "open in a new disposable VM, edited and back: {:?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: Vec<String> = p
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.name.starts_with("disp"))
            .map(|i| i.name)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the disposable VM is still there: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the host (L1 when nested) says when a VM stops answering: whether its VMM lives, then
/// [`host_state`].
fn host_diagnostics(d: &TestDomaind, name: &str) -> String {
    let pid = vmm_pid(d, name);
    format!(
        "VMM of {name} (pid {pid}) alive: {}\nthreads: {:?}\n{}",
        process_alive(pid),
        vmm_thread_states(pid),
        host_state()
    )
}

/// The VMMs that run, the kernel's last messages (oopses, OOM kills, KVM errors) and memory.
fn host_state() -> String {
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("{cmd}: {e}"))
    };
    format!(
        "VMMs:\n{}\nkernel log:\n{}\nmemory:\n{}",
        sh("ps -eo pid,stat,etimes,args | grep '[b]ulkhead-vmm'"),
        tail(&sh("dmesg"), 60),
        sh("free -m")
    )
}

async fn console_answers(p: &Domaind1Proxy<'_>, d: &TestDomaind, name: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cli = bulkhead_testkit::libexec_dir()
        .expect("libexec dir")
        .join("bulkhead");
    let mut child = Command::new(&cli)
        .args(["console", name])
        .env("BULKHEAD_BUS_ADDRESS", d.bus_address())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli.display()));
    let mut stdin = child.stdin.take().expect("stdin");
    // The shell starts when the guest's init does; type until it answers.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered = false;
    while Instant::now() < deadline {
        stdin
            .write_all(b"echo CONSOLE-$((6*7))\n")
            .expect("type into the console");
        tokio::time::sleep(Duration::from_secs(2)).await;
        if console(p, name).await.contains("CONSOLE-42") {
            answered = true;
            break;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().expect("bulkhead console");
    let log = console(p, name).await;
    assert!(
        answered,
        "the console shell never ran what was typed; console:\n{}\nbulkhead console: {}",
        tail(&log, 20),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "bulkhead console: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CONSOLE-42"),
        "bulkhead console did not show the answer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
