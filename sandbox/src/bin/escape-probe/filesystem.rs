//! The file system: chroot and `/proc/*/root` walks out of the domain root, mounts, writes
//! into the template's layers, device nodes, the host's secret files and `/proc` knobs.

use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::report::{read_secret, rel, sys, Report};
use crate::BatteryArgs;

pub(crate) fn chroot_walk(r: &mut Report, a: &BatteryArgs) {
    // The classic: chroot into a subdir while holding a dir fd outside it, fchdir out, walk up.
    let jail = Path::new("/tmp/escape-jail");
    let _ = fs::create_dir_all(jail);
    let outside = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    );
    let chrooted = nix::unistd::chroot(jail);
    let mut detail = format!("chroot: {chrooted:?}");
    if let Ok(fd) = outside {
        let _ = nix::unistd::fchdir(fd);
        for _ in 0..128 {
            let _ = nix::unistd::chdir("..");
        }
        let _ = nix::unistd::chroot(".");
        // SAFETY: fd came from open above and is not used elsewhere.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut found = None;
    for s in &a.secret {
        if let Some(hit) = read_secret(&rel(s)).or_else(|| read_secret(s)) {
            found = Some(hit);
        }
    }
    let _ = nix::unistd::chdir("/");
    // what "/" looks like after the walk: must still be the domain root
    let root_entries: Vec<String> = fs::read_dir(".")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    detail.push_str(&format!(
        "; / after walk has {} entries",
        root_entries.len()
    ));
    match found {
        Some(hit) => r.line("chroot-fchdir-walk", false, hit),
        None => r.line("chroot-fchdir-walk", true, detail),
    }
}

pub(crate) fn proc_walks(r: &mut Report, a: &BatteryArgs) {
    let mut hits = Vec::new();
    let mut pids = Vec::new();
    if let Ok(d) = fs::read_dir("/proc") {
        for e in d.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                pids.push(pid);
            }
        }
    }
    for s in &a.secret {
        for base in [
            "/proc/1/root",
            "/proc/self/root",
            "/proc/1/cwd",
            "/proc/thread-self/root",
        ] {
            if let Some(h) = read_secret(&Path::new(base).join(rel(s))) {
                hits.push(h);
            }
        }
        for pid in &pids {
            if let Some(h) = read_secret(&Path::new(&format!("/proc/{pid}/root")).join(rel(s))) {
                hits.push(h);
            }
        }
    }
    r.line(
        "proc-1-root",
        hits.is_empty(),
        if hits.is_empty() {
            format!(
                "secrets not reachable through /proc/*/root ({} pids visible)",
                pids.len()
            )
        } else {
            hits.join("; ")
        },
    );
    if let Some(hp) = a.host_pid {
        let p = PathBuf::from(format!("/proc/{hp}"));
        // Our pid namespace numbers from 1; the host pid must not be there, or if a domain
        // process happens to have that number, it must be ours (same uid map as ours).
        let visible = p.exists();
        let ours = fs::read_to_string(p.join("uid_map")).ok()
            == fs::read_to_string("/proc/self/uid_map").ok();
        r.line(
            "proc-host-pid",
            !visible || ours,
            format!(
                "/proc/{hp} exists={visible} same-userns={ours}; {} pids visible",
                pids.len()
            ),
        );
    }
}

pub(crate) fn mounts(r: &mut Report) {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let _ = fs::create_dir_all("/tmp/escape-mnt");
    r.call(
        "mount-tmpfs",
        mount(
            Some("tmpfs"),
            "/tmp/escape-mnt",
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        ),
    );
    r.call(
        "mount-proc",
        mount(
            Some("proc"),
            "/tmp/escape-mnt",
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        ),
    );
    r.call(
        "mount-bind-root",
        mount(
            Some("/"),
            "/tmp/escape-mnt",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
    );
    r.call(
        "remount-guest-tools-rw",
        mount(
            None::<&str>,
            "/usr/lib/bulkhead",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        ),
    );
    r.call(
        "remount-tmp-exec",
        mount(
            None::<&str>,
            "/tmp",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            None::<&str>,
        ),
    );
    r.call("umount-root", umount2("/", MntFlags::MNT_DETACH));
    r.call("umount-proc", umount2("/proc", MntFlags::MNT_DETACH));
    // SAFETY: fsopen with a static NUL-terminated name and no flags.
    r.call(
        "fsopen",
        sys(unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 0) }),
    );
    // SAFETY: open_tree on "/" with constant flags; returns an fd or -1.
    r.call(
        "open-tree-clone",
        sys(unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
            )
        }),
    );
    r.call(
        "pivot-root",
        nix::unistd::pivot_root("/tmp", "/tmp/escape-mnt"),
    );
}

pub(crate) fn template_write(r: &mut Report) {
    // Find the overlay layer paths the kernel shows and try to write into them.
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut tried = Vec::new();
    let mut wrote = Vec::new();
    for line in mi.lines() {
        let Some((_, sup)) = line.split_once(" - ") else {
            continue;
        };
        for opt in sup.split([',', ' ']) {
            for key in [
                "lowerdir=",
                "upperdir=",
                "workdir=",
                "datadir+=",
                "lowerdir+=",
            ] {
                if let Some(v) = opt.strip_prefix(key) {
                    for layer in v.split(':') {
                        for cand in [PathBuf::from(layer), Path::new("/").join(layer)] {
                            let f = cand.join("escape-probe-write");
                            tried.push(f.display().to_string());
                            if fs::write(&f, "x").is_ok() {
                                wrote.push(f.display().to_string());
                                let _ = fs::remove_file(&f);
                            }
                        }
                    }
                }
            }
        }
    }
    r.line(
        "template-layer-write",
        wrote.is_empty(),
        if wrote.is_empty() {
            format!("tried {}", tried.join(" "))
        } else {
            format!("wrote {}", wrote.join(" "))
        },
    );
}

pub(crate) fn devices(r: &mut Report) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    for (name, dir) in [
        ("tmp", "/tmp"),
        ("dev", "/dev"),
        ("home", "/home"),
        ("root", "/"),
    ] {
        let p = Path::new(dir).join("escape-null");
        let res = mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        );
        if res.is_ok() {
            // created: it must at least be unusable (nodev)
            let usable = fs::OpenOptions::new().write(true).open(&p).is_ok();
            let _ = fs::remove_file(&p);
            r.line(
                &format!("mknod-char-{name}"),
                !usable,
                format!("created, usable={usable}"),
            );
        } else {
            r.call(&format!("mknod-char-{name}"), res);
        }
        let p = Path::new(dir).join("escape-blk");
        let res = mknod(
            &p,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o666),
            makedev(8, 0),
        );
        if res.is_ok() {
            let _ = fs::remove_file(&p);
        }
        r.call(&format!("mknod-block-{name}"), res);
    }
    let mut opened = Vec::new();
    for dev in [
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/sda",
        "/dev/vda",
        "/dev/nvme0n1",
        "/dev/kmsg",
        "/dev/kvm",
        "/dev/fuse",
        "/dev/loop0",
        "/dev/loop-control",
        "/dev/mapper/control",
        "/proc/kcore",
        "/proc/kmsg",
        "/sys/kernel/debug",
    ] {
        if fs::File::open(dev).is_ok() {
            opened.push(dev);
        }
    }
    r.line(
        "host-devices",
        opened.is_empty(),
        if opened.is_empty() { "none of /dev/mem kmem port sda vda nvme0n1 kmsg kvm fuse loop* mapper, /proc/kcore kmsg openable".to_string() } else { format!("opened {opened:?}") },
    );
}

pub(crate) fn secrets(r: &mut Report, a: &BatteryArgs) {
    let mut hits = Vec::new();
    for s in &a.secret {
        let mut paths = vec![s.clone()];
        for base in [
            "/run/bulkhead-channel/../../..",
            "/usr/lib/bulkhead/../../..",
            "/home/../..",
        ] {
            paths.push(Path::new(base).join(rel(s)));
        }
        for p in paths {
            if let Some(h) = read_secret(&p) {
                hits.push(h);
            }
        }
    }
    // a symlink planted in the domain pointing at the host path must resolve inside
    for (i, s) in a.secret.iter().enumerate() {
        let l = PathBuf::from(format!("/tmp/escape-link-{i}"));
        let _ = fs::remove_file(&l);
        if symlink(s, &l).is_ok() {
            if let Some(h) = read_secret(&l) {
                hits.push(h);
            }
        }
    }
    r.line(
        "secret-files",
        hits.is_empty(),
        if hits.is_empty() {
            format!("{} secret paths unreachable", a.secret.len())
        } else {
            hits.join("; ")
        },
    );
}

pub(crate) fn proc_writes(r: &mut Report) {
    // Each write is harmless if it succeeds: the current value is written back (sysrq "h" only
    // prints help, drop_caches "1" only drops clean page cache).
    for (name, path, fixed) in [
        ("proc-sysrq-trigger", "/proc/sysrq-trigger", Some("h")),
        ("proc-core-pattern", "/proc/sys/kernel/core_pattern", None),
        ("proc-drop-caches", "/proc/sys/vm/drop_caches", Some("1")),
        ("proc-modprobe-path", "/proc/sys/kernel/modprobe", None),
    ] {
        let value = match fixed {
            Some(v) => v.to_string(),
            None => fs::read_to_string(path).unwrap_or_default(),
        };
        let res = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        match res {
            Ok(()) => r.line(name, false, format!("wrote {path}")),
            Err(e) => r.line(name, true, e.to_string()),
        }
    }
}
