//! Really builds the shipped debian-12 template with mmdebstrap.
//!
//! Opt-in: set BULKHEAD_TEST_TEMPLATE_CACHE to a directory used as the template store (a
//! second run with the same directory exercises the cache and takes no time). Needs root
//! (mmdebstrap mode root) and the host's apt sources for bookworm.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bulkhead_domain::DomainName;
use bulkhead_templates::{
    source_recipes_dir, BuildProgress, Recipe, Stage, TemplateStatus, TemplateStore,
};

/// Both tests build into the same store, whose per-template lock refuses a second builder
/// instead of waiting: the tests of this file take turns.
static STORE: Mutex<()> = Mutex::new(());

fn store_turn() -> MutexGuard<'static, ()> {
    STORE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn build_debian_12_template_for_real() {
    let _turn = store_turn();
    let Some(cache) = std::env::var_os("BULKHEAD_TEST_TEMPLATE_CACHE") else {
        bulkhead_test_skip::skip(
            "set BULKHEAD_TEST_TEMPLATE_CACHE=<dir> to build the debian-12 template for real",
        );
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        bulkhead_test_skip::skip("building a template needs root (mmdebstrap --mode=root)");
        return;
    }
    let store = TemplateStore::new(PathBuf::from(cache));
    let name = DomainName::new("debian-12").unwrap();
    let recipe = Recipe::load_named(&source_recipes_dir(), &name).unwrap();
    let was_ready = matches!(store.status_for(&recipe), TemplateStatus::Ready { .. });

    let started = Instant::now();
    let mut events = Vec::new();
    let root = store
        .build(&recipe, &mut |e| {
            println!("{e}");
            events.push(e);
        })
        .unwrap_or_else(|e| panic!("template build failed: {e}"));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "debian-12 template: {} in {secs:.1} s (cached before: {was_ready})",
        root.display()
    );

    if was_ready {
        assert_eq!(events, vec![BuildProgress::Cached { root: root.clone() }]);
    } else {
        let stages: Vec<Stage> = events
            .iter()
            .filter_map(|e| match e {
                BuildProgress::Stage { stage, .. } => Some(*stage),
                _ => None,
            })
            .collect();
        for s in [
            Stage::Update,
            Stage::Download,
            Stage::InstallRemaining,
            Stage::Customize,
            Stage::Finalize,
        ] {
            assert!(stages.contains(&s), "no {s} stage in {stages:?}");
        }
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BuildProgress::Percent { .. })),
            "no percent progress parsed"
        );
        let log = std::fs::read_to_string(store.log_path(&name)).unwrap();
        assert!(log.contains("I: success"), "build log incomplete");
    }

    let os_release = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(os_release.contains("VERSION_ID=\"12\""), "{os_release}");
    assert!(os_release.contains("Debian"), "{os_release}");
    assert!(root.join("etc/os-release").symlink_metadata().is_ok());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("user:x:1000:1000:")),
        "{passwd}"
    );
    let home = std::fs::metadata(root.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    let top = std::fs::metadata(&root).unwrap();
    assert_eq!((top.uid(), top.gid()), (0, 0));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "localhost\n"
    );
    // No package caches shipped in the shared tree.
    let lists: Vec<_> = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        lists
            .iter()
            .all(|n| n == "lock" || n == "partial" || n == "auxfiles"),
        "{lists:?}"
    );
    assert!(matches!(
        store.status_for(&recipe),
        TemplateStatus::Ready { .. }
    ));
    assert_eq!(store.root_path(&name).unwrap(), root);
}

/// The VM files of the debian-12 template, for real: Debian's generic kernel fetched with
/// apt-get download, the initramfs with busybox and the virtio modules, the root image.
/// Needs the same as the test above (it builds the template first if needed) plus the host's
/// apt lists, dpkg-deb, depmod (kmod) and mkfs.ext4/debugfs (e2fsprogs). Booting it needs
/// hardware virtualization: see domaind/tests/vm_full_boot.rs.
#[test]
fn build_debian_12_vm_files_for_real() {
    let _turn = store_turn();
    let Some(cache) = std::env::var_os("BULKHEAD_TEST_TEMPLATE_CACHE") else {
        bulkhead_test_skip::skip(
            "set BULKHEAD_TEST_TEMPLATE_CACHE=<dir> to build the debian-12 VM files for real",
        );
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        bulkhead_test_skip::skip("building a template needs root (mmdebstrap --mode=root)");
        return;
    }
    let store = TemplateStore::new(PathBuf::from(cache));
    let name = DomainName::new("debian-12").unwrap();
    let recipe = Recipe::load_named(&source_recipes_dir(), &name).unwrap();
    store
        .build(&recipe, &mut |e| println!("{e}"))
        .unwrap_or_else(|e| panic!("template build failed: {e}"));
    let started = Instant::now();
    let a = store
        .build_vm(&recipe, &mut |e| println!("{e}"))
        .unwrap_or_else(|e| panic!("VM files build failed: {e}"));
    println!(
        "debian-12 VM files: {} in {:.1} s ({})",
        a.dir.display(),
        started.elapsed().as_secs_f64(),
        a.marker.kernel_package
    );
    assert_eq!(store.vm_artifacts(&name).as_ref(), Some(&a), "found again");
    // A bzImage: "HdrS" at 0x202 (Linux boot protocol), 64-bit capable.
    let kernel = std::fs::read(&a.kernel).unwrap();
    assert_eq!(&kernel[0x202..0x206], b"HdrS");
    assert!(a.marker.kernel_package.starts_with("linux-image-"));
    assert!(a.marker.kernel_release.ends_with("-amd64"));
    for m in [
        "virtio.ko",
        "virtio_ring.ko",
        "virtio_mmio.ko",
        "virtio_blk.ko",
        "vsock.ko",
        "vmw_vsock_virtio_transport.ko",
        "virtio_net.ko",
        "overlay.ko",
    ] {
        assert!(
            a.marker.modules.iter().any(|x| x == m),
            "{m} missing: {:?}",
            a.marker.modules
        );
    }
    let pos = |m: &str| a.marker.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("virtio_ring.ko") < pos("virtio_mmio.ko"));
    assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport.ko"));
    // The initramfs: newc with /init, busybox and the modules.
    let cpio = std::fs::read(&a.initramfs).unwrap();
    assert_eq!(&cpio[..6], b"070701");
    let mut names = Vec::new();
    let mut r: &[u8] = &cpio;
    loop {
        let rd = cpio::newc::Reader::new(r).unwrap();
        if rd.entry().is_trailer() {
            break;
        }
        names.push(rd.entry().name().to_owned());
        r = rd.finish().unwrap();
    }
    for n in [
        "init",
        "bin/busybox",
        "dev/console",
        "lib/modules/virtio_mmio.ko",
    ] {
        assert!(
            names.iter().any(|x| x == n),
            "{n} not in the initramfs: {names:?}"
        );
    }
    // The root image: ext4 labelled bh-root holding the tree (read without mounting).
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /usr/lib/os-release"])
        .arg(&a.root_image)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VERSION_ID=\"12\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let label = std::process::Command::new("e2label")
        .arg(&a.root_image)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&label.stdout).trim(),
        bulkhead_templates::vm::ROOT_LABEL
    );
}
