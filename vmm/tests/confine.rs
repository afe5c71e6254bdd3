//! The confined VMM (spec.confine): while a guest runs, the VMM process has no capabilities, the
//! spec's uid/gid, no_new_privs, a seccomp filter on every thread, its own namespaces and a
//! root that holds nothing but the vsock sockets directory.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_vmm::ConfineSpec;
use common::*;

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn confined_vmm_has_no_privileges_and_an_empty_root() {
    let Some((dir, socks)) = common::confinement_dirs() else {
        return;
    };
    let mut spec = guest_spec(&build_guest("spin"), dir.path());
    spec.vsock = Some(VsockSpec {
        guest_cid: 7,
        uds_path: socks.join("vsock.sock"),
    });
    // A pids cgroup (v1 here) the VMM joins before confining itself.
    let cgroup =
        Path::new("/sys/fs/cgroup/pids").join(format!("bulkhead-vmm-test-{}", std::process::id()));
    let cgroup = std::fs::create_dir(&cgroup).ok().map(|_| cgroup);
    spec.confine = Some(ConfineSpec {
        uid: 65534,
        gid: 65534,
        cgroup: cgroup.clone(),
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let mut parent = Command::new(vmm_binary())
        .args(["run", "--spec"])
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ppid = parent.id();

    // Wait for the guest to run (it runs only after confinement).
    let start = Instant::now();
    while !std::fs::read_to_string(&spec.serial_log)
        .unwrap_or_default()
        .contains("SPINNING")
    {
        if start.elapsed() > GUEST_TIMEOUT || parent.try_wait().unwrap().is_some() {
            let _ = parent.kill();
            let out = parent.wait_with_output().unwrap();
            panic!("guest never ran: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let children = std::fs::read_to_string(format!("/proc/{ppid}/task/{ppid}/children")).unwrap();
    let vmm: u32 = children
        .split_whitespace()
        .next()
        .expect("the confined child")
        .parse()
        .unwrap();
    let proc_ = format!("/proc/{vmm}");

    let status = std::fs::read_to_string(format!("{proc_}/status")).unwrap();
    assert_eq!(status_field(&status, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&status, "Gid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(&status, "Groups:"), "65534");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, cap),
            "0000000000000000",
            "{cap}\n{status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    // Every thread (control, vcpu0, and any device worker) runs under a seccomp filter.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unfiltered: Vec<String> = std::fs::read_dir(format!("{proc_}/task"))
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let s = std::fs::read_to_string(t.join("status")).ok()?;
                (status_field(&s, "Seccomp:") != "2").then(|| status_field(&s, "Name:"))
            })
            .collect();
        if unfiltered.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads without seccomp: {unfiltered:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Own namespaces, a user namespace included: it maps the VMM's uid and gid, to the same
    // host ids, and nothing else (so the host's root is not even a name inside).
    for ns in ["mnt", "net", "pid", "ipc", "uts", "user"] {
        let theirs = std::fs::read_link(format!("{proc_}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace is shared");
    }
    let map = |f: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(format!("{proc_}/{f}"))
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    assert_eq!(map("uid_map"), vec![vec!["65534", "65534", "1"]], "uid_map");
    assert_eq!(map("gid_map"), vec![vec!["65534", "65534", "1"]], "gid_map");
    // Its root: a read-only tmpfs holding only the path down to the sockets directory.
    let root = Path::new(&proc_).join("root");
    let top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let first = socks
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        top,
        vec![first],
        "the confined root holds more than the sockets path"
    );
    assert!(!root.join("etc/passwd").exists() && !root.join("dev/kvm").exists());
    let inner = root.join(socks.strip_prefix("/").unwrap());
    assert!(
        inner.join("vsock.sock").exists(),
        "the vsock socket is not visible inside"
    );
    let mountinfo = std::fs::read_to_string(format!("{proc_}/mountinfo")).unwrap();
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root_mount.contains(" - tmpfs ") && root_mount.contains(" ro,"),
        "{root_mount}"
    );
    assert_eq!(mountinfo.lines().count(), 2, "{mountinfo}");

    if let Some(cg) = &cgroup {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l == vmm.to_string()),
            "VMM not in {}: {procs}",
            cg.display()
        );
    } else {
        eprintln!("note: no pids cgroup v1 hierarchy; cgroup joining not checked");
    }

    // SIGTERM to the parent ends the confined VMM too.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ppid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = parent.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15), "exit status after SIGTERM");
    let gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&proc_).exists() {
        assert!(
            Instant::now() < gone,
            "the confined VMM outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(cg) = cgroup {
        let _ = std::fs::remove_dir(cg);
    }
}

#[test]
fn confined_vmm_runs_a_guest_with_a_device_worker_to_the_end() {
    if !kvm_available() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs KVM and root");
        return;
    }
    // virtio-rng's worker thread starts under the vCPU filter and installs the device filter;
    // the guest gets its random bytes and an interrupt, and the VM ends with status 0.
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("virtio_rng_irq"), dir.path());
    spec.rng = true;
    spec.confine = Some(ConfineSpec {
        uid: 65534,
        gid: 65534,
        cgroup: None,
    });
    let out = run_guest(spec);
    out.assert_passed();
    assert!(out.stderr.contains("confined"), "{}", out.stderr);
    assert!(out.stderr.contains("userns=true"), "{}", out.stderr);
}

#[test]
fn without_user_namespaces_the_vmm_is_confined_as_before() {
    if !kvm_available() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs KVM and root");
        return;
    }
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = guest_spec(&build_guest("virtio_rng_irq"), dir.path());
    spec.rng = true;
    spec.confine = Some(ConfineSpec {
        uid: 65534,
        gid: 65534,
        cgroup: None,
    });
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    // unshare(CLONE_NEWUSER) fails with EPERM in the VMM, as with user.max_user_namespaces = 0
    // (which would be a host-wide change): a seccomp filter it inherits says so.
    let newuser = libc::CLONE_NEWUSER as u64;
    let rule = SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(newuser),
        newuser,
    )
    .unwrap()])
    .unwrap();
    let filter: seccompiler::BpfProgram = SeccompFilter::new(
        [(libc::SYS_unshare, vec![rule])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap();
    let (len, ptr) = (filter.len() as u16, filter.as_ptr() as usize);
    let mut cmd = Command::new(vmm_binary());
    cmd.args(["run", "--spec"])
        .arg(&spec_path)
        .env("BULKHEAD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure makes two prctl calls on data the parent built
    // (`filter` outlives the spawn); no allocation, no locks.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let prog = libc::sock_fprog {
                len,
                filter: ptr as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    drop(filter);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let serial = std::fs::read_to_string(&spec.serial_log).unwrap_or_default();
    assert!(
        out.status.success() && serial.contains("BULKHEAD-GUEST PASS"),
        "{:?}\n{serial}\n{stderr}",
        out.status
    );
    assert_eq!(
        stderr.matches("cannot create a user namespace").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("userns=false"), "{stderr}");
}

#[test]
fn guest_accesses_outside_its_memory_read_all_ones() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_guest(guest_spec(&build_guest("outside"), dir.path()));
    out.assert_passed();
    assert_eq!(out.lines_with("OUTSIDE ").len(), 7, "{}", out.serial);
}
