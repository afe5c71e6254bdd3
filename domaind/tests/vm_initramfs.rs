//! The VM initramfs's `/init` for real, without a VM: the debian-12 template's real VM files
//! (built if needed), the initramfs unpacked onto a tmpfs and its `/init` run as pid 1 of new
//! mount/pid/uts/net namespaces, with the template root, a private volume and the guest tools
//! as loop devices in place of the virtio disks. Checks that it finds the disks by label,
//! mounts the read-only root under a tmpfs overlay, the private volume at /home and the tools
//! at /usr/lib/bulkhead, sets the host name and switch_roots to bulkhead-init, which starts
//! the agent.
//!
//! Not checked here: loading the modules (they are for the guest kernel; the `insmod` lines
//! are taken out), the guest kernel itself, vsock (the agent uses its unix socket here, since
//! the host's command line has no `bulkhead.channel=vsock`), the reboot at the end. Those need
//! a VM: vm_full_boot.rs, on hosts with hardware virtualization.
//!
//! Needs root, util-linux (unshare, losetup, nsenter), e2fsprogs, and
//! `BULKHEAD_TEST_TEMPLATE_CACHE` with debian-12 (scripts/test.sh sets it up).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_domain::DomainName;
use bulkhead_templates::vm::{INITRAMFS_FAIL_PREFIX, INITRAMFS_READY_LINE};
use bulkhead_templates::{source_recipes_dir, Recipe, TemplateStore};
use bulkhead_testkit::descendants;

/// Loop devices and the namespace's process, released even when the test panics.
struct Guard {
    loops: Vec<String>,
    child: Option<Child>,
    init_pid: Option<i32>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.init_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for l in &self.loops {
            // Busy until the namespace's mounts are gone; -d then detaches it lazily.
            let _ = Command::new("losetup").arg("-d").arg(l).status();
        }
    }
}

fn losetup(image: &Path, read_only: bool) -> String {
    let mut c = Command::new("losetup");
    c.args(["-f", "--show"]);
    if read_only {
        c.arg("-r");
    }
    let out = c.arg(image).output().expect("losetup");
    assert!(
        out.status.success(),
        "losetup {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Unpack a newc archive (dirs, regular files, symlinks; device nodes are skipped: /init
/// mounts devtmpfs).
fn unpack(cpio_path: &Path, dest: &Path) {
    let data = std::fs::read(cpio_path).expect("read initramfs");
    let mut r: &[u8] = &data;
    loop {
        let mut rd = cpio::newc::Reader::new(r).expect("cpio entry");
        if rd.entry().is_trailer() {
            break;
        }
        let name = rd.entry().name().to_owned();
        let mode = rd.entry().mode();
        assert!(!name.contains(".."), "{name}");
        let p = dest.join(&name);
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut rd, &mut body).expect("cpio body");
        match mode & 0o170000 {
            0o040000 => std::fs::create_dir_all(&p).expect("mkdir"),
            0o100000 => {
                std::fs::write(&p, &body).expect("write");
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                    .expect("chmod");
            }
            0o120000 => std::os::unix::fs::symlink(String::from_utf8_lossy(&body).as_ref(), &p)
                .expect("symlink"),
            _ => {}
        }
        r = rd.finish().expect("cpio next");
    }
}

#[test]
fn initramfs_init_mounts_by_label_and_switches_to_bulkhead_init() {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs root (loop devices, namespaces)");
        return;
    }
    let Some(cache) = bulkhead_testkit::template_cache() else {
        return;
    };
    let store = TemplateStore::new(&cache);
    let name = DomainName::new("debian-12").expect("name");
    let recipe = Recipe::load_named(&source_recipes_dir(), &name).expect("recipe");
    if !matches!(
        store.status_for(&recipe),
        bulkhead_templates::TemplateStatus::Ready { .. }
    ) {
        bulkhead_test_skip::skip(format_args!(
            "{} has no debian-12 template built from the current recipe",
            cache.display()
        ));
        return;
    }
    let a = store
        .build_vm(&recipe, &mut |e| println!("{e}"))
        .unwrap_or_else(|e| panic!("VM files: {e}"));
    let tools_src = bulkhead_testkit::guest_tools_source().expect("guest tools");

    let d = tempfile::tempdir().expect("tempdir");
    let t = d.path();
    // The initramfs, without the module loading (those modules are for the guest kernel).
    let ex = t.join("initrd");
    std::fs::create_dir_all(&ex).expect("mkdir");
    unpack(&a.initramfs, &ex);
    let init = std::fs::read_to_string(ex.join("init")).expect("init");
    assert!(
        init.contains("insmod /lib/modules/virtio_mmio.ko"),
        "{init}"
    );
    let init: String = init
        .lines()
        .filter(|l| !l.contains(" insmod "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(ex.join("init"), init).expect("write init");
    // Private volume and guest tools images, as domaind makes them.
    let private = t.join("private");
    std::fs::create_dir_all(private.join("user")).expect("mkdir");
    std::os::unix::fs::chown(private.join("user"), Some(1000), Some(1000)).expect("chown");
    let private_img = t.join("private.img");
    domaind::volume::PrivateVolume {
        image: private_img.clone(),
        legacy_dir: private.clone(),
    }
    .ensure(256)
    .expect("private image");
    let tools = t.join("tools");
    std::fs::create_dir_all(&tools).expect("mkdir");
    for b in ["bulkhead-init", "bulkhead-agent"] {
        std::fs::copy(tools_src.join(b), tools.join(b)).expect("copy tool");
    }
    let tools_img = t.join("tools.img");
    domaind::vm::make_tools_image(&tools, &tools_img).expect("tools image");

    let mut g = Guard {
        loops: Vec::new(),
        child: None,
        init_pid: None,
    };
    g.loops.push(losetup(&a.root_image, true));
    g.loops.push(losetup(&private_img, false));
    g.loops.push(losetup(&tools_img, true));

    let driver = t.join("driver.sh");
    std::fs::write(
        &driver,
        format!(
            "set -e\nmkdir -p {r}\nmount -t tmpfs -o mode=0755 tmpfs {r}\ncp -a {ex}/. {r}/\nexec chroot {r} /init\n",
            r = t.join("rootfs").display(),
            ex = ex.display()
        ),
    )
    .expect("driver");
    let out_path = t.join("console");
    let out = std::fs::File::create(&out_path).expect("console file");
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--uts",
            "--net",
            "--propagation",
            "private",
            "sh",
        ])
        .arg(&driver)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("unshare (util-linux)");
    let unshare_pid = i32::try_from(child.id()).expect("pid");
    g.child = Some(child);

    let start = Instant::now();
    let console = loop {
        let c = std::fs::read_to_string(&out_path).unwrap_or_default();
        assert!(!c.contains(INITRAMFS_FAIL_PREFIX), "/init failed:\n{c}");
        if c.contains(INITRAMFS_READY_LINE) && c.contains("agent started") {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "/init did not hand over to bulkhead-init within 60 s:\n{c}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let init_pid = descendants(unshare_pid)
        .into_iter()
        .find(|(_, cmd)| cmd.starts_with("/usr/lib/bulkhead/bulkhead-init"))
        .map(|(p, _)| p)
        .unwrap_or_else(|| panic!("no bulkhead-init process; console:\n{console}"));
    g.init_pid = Some(init_pid);
    let root = PathBuf::from(format!("/proc/{init_pid}/root"));

    let os = std::fs::read_to_string(root.join("etc/os-release")).expect("os-release");
    assert!(os.contains("Debian GNU/Linux 12"), "{os}");
    let home = std::fs::metadata(root.join("home/user")).expect("/home/user");
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert!(root.join("usr/lib/bulkhead/bulkhead-agent").is_file());
    let mounts = std::fs::read_to_string(format!("/proc/{init_pid}/mountinfo")).expect("mountinfo");
    let mount = |point: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("nothing mounted at {point}:\n{mounts}"))
            .to_owned()
    };
    assert!(mount("/").contains(" - overlay "), "{}", mount("/"));
    let home_m = mount("/home");
    assert!(
        home_m.contains(" - ext4 ") && home_m.contains(" rw,"),
        "{home_m}"
    );
    let tools_m = mount("/usr/lib/bulkhead");
    assert!(
        tools_m.contains(" - ext4 ") && tools_m.contains(" ro,"),
        "{tools_m}"
    );
    assert!(mount("/tmp").contains(" - tmpfs "));
    // The root is the template image, read-only, under the overlay.
    assert!(
        !mounts.contains("/newroot"),
        "the initramfs is gone after switch_root:\n{mounts}"
    );
    let host = Command::new("nsenter")
        .args([
            "-t",
            &init_pid.to_string(),
            "-u",
            "cat",
            "/proc/sys/kernel/hostname",
        ])
        .output()
        .expect("nsenter");
    // The host's command line has no bulkhead.name=: the fallback name.
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "localhost");
    // A write to / lands in the tmpfs upper layer, not in the read-only template image.
    std::fs::write(root.join("etc/bulkhead-write-test"), "x").expect("write to the overlay");
    drop(g);
}
