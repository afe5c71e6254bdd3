//! What a VM domain boots: the guest kernel, an initramfs built here, and disk images.
//!
//! Built on demand (not by the default template build, so CI's template build stays fast):
//! by `bulkhead-template build --vm` or by domaind at the first start of a VM domain. The
//! artifacts of a template root `root-<hash16>` live in `vm-<hash16>/` next to it (the recipe
//! hash covers the `[vm]` section, so one key serves both):
//! - `vmlinuz`         the kernel of the recipe's `vm.kernel_package` (Debian's
//!   `linux-image-cloud-amd64`: the metapackage is followed to the versioned package it
//!   depends on, fetched with `apt-get download` from the host's apt sources, unpacked with
//!   `dpkg-deb`; the .debs are cached in `<template>/debs/`)
//! - `initramfs.cpio`  newc archive (written with the `cpio` crate): a static busybox
//!   (`vm.busybox_package`), the modules named in `vm.modules` with their dependencies from
//!   the `modules.dep` that `depmod` makes for the unpacked kernel, in load order, and `/init`
//!   (see [`init_script`])
//! - `root.img`        the template root as an ext4 image (`mkfs.ext4 -d`, no mounting,
//!   no journal: the guest mounts it read-only), label [`ROOT_LABEL`]
//! - `vm.toml`         the completion marker ([`VmMarker`]), written last before the rename
//!   of `vm-<hash16>.partial` to `vm-<hash16>`
//!
//! Per-domain images are made by the caller with [`make_ext4_image`]: the private volume
//! (label [`PRIVATE_LABEL`], read-write, at /home) and the guest tools (label
//! [`TOOLS_LABEL`], read-only, at /usr/lib/bulkhead).
//!
//! The guest finds its disks by label, not by /dev/vdX order.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bulkhead_domain::DomainName;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::error::TemplateError;
use crate::progress::{BuildProgress, Level};
use crate::recipe::Recipe;
use crate::store::{TemplateStatus, TemplateStore};

/// ext4 label of the template root image.
pub const ROOT_LABEL: &str = "bh-root";
/// ext4 label of a domain's private volume image.
pub use bulkhead_domain::volume::PRIVATE_LABEL;
/// ext4 label of the guest tools image.
pub const TOOLS_LABEL: &str = "bh-tools";
/// Kernel command line of a VM domain (the VMM appends the console and virtio-mmio entries).
/// `reboot=k`: a guest reboot resets through the i8042, which ends the VM; `panic=1`: a panic
/// reboots, i.e. ends the VM, instead of hanging; `bulkhead.channel=vsock`: the agent reaches
/// domaind over vsock. No `i8042.*` options: with `i8042.nopnp` the guest probes the VMM's
/// i8042, which answers only the reset command, and waits about 2 s for it; without, the
/// PNP check finds no PS/2 controller at once (the reset still goes through port 0x64).
pub const GUEST_CMDLINE: &str = "reboot=k panic=1 loglevel=4 rdinit=/init bulkhead.channel=vsock";
/// Line the initramfs prints on the console before it hands over to bulkhead-init.
pub const INITRAMFS_READY_LINE: &str = "bulkhead-initramfs: switching to the domain root";
/// Prefix of the line the initramfs prints when it gives up (then it reboots: the VM ends).
pub const INITRAMFS_FAIL_PREFIX: &str = "bulkhead-initramfs: FAILED:";

/// Version of what [`TemplateStore::build_vm`] produces (the initramfs and its `/init`, the
/// image layout). Bump it when the output changes for the same recipe: VM files with another
/// version are rebuilt at their next use.
pub const VM_FORMAT_VERSION: u32 = 2;

const VM_PREFIX: &str = "vm-";
const VM_MARKER: &str = "vm.toml";
const PARTIAL_SUFFIX: &str = ".partial";
/// Largest modules.dep read.
const MAX_MODULES_DEP: u64 = 16 << 20;
/// Most modules put into the initramfs (dependencies included).
const MAX_MODULES: usize = 256;
/// How long /init waits for a disk to appear.
const DISK_WAIT_SECS: u32 = 20;

/// The completion marker of a `vm-<hash16>` directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMarker {
    /// [`VM_FORMAT_VERSION`] of the builder that made them (0: before versions existed).
    #[serde(default)]
    pub format: u32,
    /// Full recipe hash (the root's).
    pub hash: String,
    /// The versioned kernel package and version used (`linux-image-6.1.0-57-cloud-amd64 6.1.192-3`).
    pub kernel_package: String,
    /// The kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    pub built_at: u64,
}

/// The files a VM domain of a template boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmArtifacts {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub root_image: PathBuf,
    pub marker: VmMarker,
}

impl VmArtifacts {
    fn in_dir(dir: &Path, marker: VmMarker) -> Self {
        Self {
            dir: dir.to_owned(),
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio"),
            root_image: dir.join("root.img"),
            marker,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run a program to completion; its output goes to `log`. Error with the output's tail.
fn run_logged(cmd: &mut Command, log: &mut dyn Write) -> Result<String, TemplateError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let line = format!(
        "# {} {}",
        program,
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(log, "{line}");
    debug!(command = %line, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TemplateError::Spawn {
            program: program.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = log.write_all(stdout.as_bytes());
    let _ = log.write_all(stderr.as_bytes());
    if !out.status.success() {
        let all = format!("{stdout}{stderr}");
        let lines: Vec<&str> = all.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(TemplateError::BuildFailed {
            program,
            status: out.status.to_string(),
            log: PathBuf::from("(the template's build.log)"),
            tail,
        });
    }
    Ok(stdout)
}

/// Fetch `package` with `apt-get download` into `debs` (reusing a cached .deb) and return it.
fn apt_download(package: &str, debs: &Path, log: &mut dyn Write) -> Result<PathBuf, TemplateError> {
    crate::recipe::validate_package_name(package).map_err(|message| TemplateError::Verify {
        root: debs.to_owned(),
        log: debs.to_owned(),
        problem: message,
    })?;
    fs::create_dir_all(debs).map_err(TemplateError::io(debs, "cannot create"))?;
    let find = || -> Option<PathBuf> {
        let prefix = format!("{package}_");
        let mut found: Vec<PathBuf> = fs::read_dir(debs)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    run_logged(
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(debs),
        log,
    )
    .map_err(|e| match e {
        TemplateError::BuildFailed { tail, status, .. } => TemplateError::BuildFailed {
            program: format!("apt-get download {package}"),
            status,
            log: debs.to_owned(),
            tail: format!("{tail}\n(does the host's apt know the package? try `apt-get update`)"),
        },
        other => other,
    })?;
    find().ok_or_else(|| TemplateError::Verify {
        root: debs.to_owned(),
        log: debs.to_owned(),
        problem: format!("apt-get download {package} left no {package}_*.deb"),
    })
}

/// A field of a .deb's control file.
fn deb_field(deb: &Path, field: &str, log: &mut dyn Write) -> Result<String, TemplateError> {
    Ok(
        run_logged(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field), log)?
            .trim()
            .to_owned(),
    )
}

/// Whether the .deb ships a kernel image (`./boot/vmlinuz-*`).
fn deb_has_kernel(deb: &Path, log: &mut dyn Write) -> Result<bool, TemplateError> {
    let listing = run_logged(
        Command::new("dpkg-deb").arg("-c").arg(deb),
        &mut std::io::sink(),
    )?;
    let _ = writeln!(
        log,
        "# {} lists {} entries",
        deb.display(),
        listing.lines().count()
    );
    Ok(listing.lines().any(|l| l.contains("./boot/vmlinuz-")))
}

/// The versioned kernel package a metapackage depends on: the first `linux-image-*`
/// alternative in `Depends`.
pub fn kernel_dependency(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.trim().split([' ', '(']).next().unwrap_or("").trim())
        .find(|d| d.starts_with("linux-image-") && crate::recipe::validate_package_name(d).is_ok())
        .map(str::to_owned)
}

/// One module of modules.dep: its path relative to the modules dir and its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDep {
    pub path: String,
    pub deps: Vec<String>,
}

/// Module name of a modules.dep path: basename without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Parse modules.dep (`path: dep dep ...` per line).
pub fn parse_modules_dep(text: &str) -> Vec<ModuleDep> {
    text.lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            let path = path.trim();
            if path.is_empty() {
                return None;
            }
            Some(ModuleDep {
                path: path.to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The module paths to load, dependencies before their users, for the wanted module names.
pub fn resolve_modules(deps: &[ModuleDep], wanted: &[String]) -> Result<Vec<String>, String> {
    fn visit(
        path: &str,
        deps: &[ModuleDep],
        out: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) -> Result<(), String> {
        if out.iter().any(|p| p == path) {
            return Ok(());
        }
        if stack.iter().any(|p| p == path) {
            return Err(format!("dependency cycle through {path}"));
        }
        if out.len() >= MAX_MODULES || stack.len() > MAX_MODULES {
            return Err(format!("more than {MAX_MODULES} modules"));
        }
        let entry = deps
            .iter()
            .find(|d| d.path == path)
            .ok_or_else(|| format!("modules.dep has no entry for {path}"))?;
        stack.push(path.to_owned());
        for d in &entry.deps {
            visit(d, deps, out, stack)?;
        }
        stack.pop();
        out.push(path.to_owned());
        Ok(())
    }
    let mut out = Vec::new();
    for w in wanted {
        let want = w.replace('-', "_");
        let entry = deps
            .iter()
            .find(|d| module_name(&d.path) == want)
            .ok_or_else(|| format!("the kernel has no module {w:?} (not in modules.dep)"))?;
        visit(&entry.path.clone(), deps, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// The initramfs `/init` (busybox sh). Loads `modules` (file names under /lib/modules, in
/// order), mounts the disks found by label: the template root read-only under a tmpfs
/// overlay as the new root, the private volume at /home, the guest tools read-only at
/// /usr/lib/bulkhead; sets the host name from `bulkhead.name=` and brings up `lo`; moves
/// /dev (with /dev/pts and /dev/shm), /proc, /sys over and switch_roots to bulkhead-init. Any
/// failure prints [`INITRAMFS_FAIL_PREFIX`] and reboots, which ends the VM: it never hangs.
pub fn init_script(modules: &[String]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
# Bulkhead VM initramfs /init (generated by bulkhead-templates). Never hangs: on any
# failure it says why on the console and reboots, which ends the VM (reboot=k).
B=/bin/busybox
fail() {
    echo "FAILPREFIX $*"
    $B sync
    $B reboot -f
    while :; do $B sleep 1; done
}
$B mkdir -p /proc /sys /dev /run /newroot /mnt/lower /mnt/rw
$B mount -t proc -o nosuid,nodev,noexec proc /proc || fail "mount /proc"
$B mount -t sysfs -o nosuid,nodev,noexec sysfs /sys || fail "mount /sys"
$B mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev || fail "mount /dev"
"#,
    )
    .replace("FAILPREFIX", INITRAMFS_FAIL_PREFIX);
    for m in modules {
        s.push_str(&format!(
            "$B insmod /lib/modules/{m} || fail \"insmod {m}\"\n"
        ));
    }
    s.push_str(&format!(
        r#"# Disks by label (the VMM's /dev/vdX order is not relied upon).
find_disk() {{
    i=0
    while [ $i -lt {wait10} ]; do
        d=$($B findfs LABEL=$1 2>/dev/null) && [ -b "$d" ] && {{ echo "$d"; return 0; }}
        $B usleep 100000
        i=$((i + 1))
    done
    return 1
}}
root=$(find_disk {root}) || fail "no disk labelled {root} (the template root)"
private=$(find_disk {private}) || fail "no disk labelled {private} (the private volume)"
tools=$(find_disk {tools}) || fail "no disk labelled {tools} (the guest tools)"
$B mount -t ext4 -o ro,noload "$root" /mnt/lower || fail "mount the template root $root"
$B mount -t tmpfs -o mode=0755 tmpfs /mnt/rw || fail "mount the overlay tmpfs"
$B mkdir -p /mnt/rw/upper /mnt/rw/work
$B mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot || fail "mount the root overlay"
$B mkdir -p /newroot/home /newroot/usr/lib/bulkhead /newroot/dev /newroot/proc /newroot/sys /newroot/run /newroot/tmp
$B mount -t ext4 -o nosuid,nodev "$private" /newroot/home || fail "mount the private volume $private"
$B mount -t ext4 -o ro,noload,nosuid,nodev "$tools" /newroot/usr/lib/bulkhead || fail "mount the guest tools $tools"
$B mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /newroot/run || fail "mount /run"
$B mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /newroot/tmp || fail "mount /tmp"
[ -x /newroot/usr/lib/bulkhead/bulkhead-init ] || fail "the guest tools disk has no bulkhead-init"
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts || fail "mount /dev/pts"
$B mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm || fail "mount /dev/shm"
# Host name: the domain's name from bulkhead.name= (letters, digits, '.', '_', '-' only).
name=localhost
for w in $($B cat /proc/cmdline); do
    case "$w" in bulkhead.name=*) name="${{w#bulkhead.name=}}" ;; esac
done
case "$name" in ""|*[!A-Za-z0-9_.-]*) name=localhost ;; esac
$B hostname "$name" || fail "set the host name"
$B ip link set lo up || fail "bring up lo"
$B mount --move /dev /newroot/dev || fail "move /dev"
$B mount --move /proc /newroot/proc || fail "move /proc"
$B mount --move /sys /newroot/sys || fail "move /sys"
echo "{ready}"
exec $B switch_root /newroot /usr/lib/bulkhead/bulkhead-init
"#,
        wait10 = DISK_WAIT_SECS * 10,
        root = ROOT_LABEL,
        private = PRIVATE_LABEL,
        tools = TOOLS_LABEL,
        ready = INITRAMFS_READY_LINE,
    ));
    // After a failed exec of switch_root.
    s.push_str("fail \"switch_root to /usr/lib/bulkhead/bulkhead-init\"\n");
    s
}

/// One file of an initramfs.
pub enum CpioEntry {
    Dir {
        name: String,
        mode: u32,
    },
    File {
        name: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDev {
        name: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        name: String,
        target: String,
    },
}

/// Write a newc archive of `entries` (owned by root, mtime 0: the output depends only on the
/// inputs).
pub fn write_cpio(entries: &[CpioEntry], out: &mut dyn Write) -> std::io::Result<()> {
    use cpio::newc::Builder;
    let too_big = |name: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name}: larger than 4 GiB (newc limit)"),
        )
    };
    let mut w: &mut dyn Write = out;
    for (i, e) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| too_big("inode count"))?;
        let b = |name: &str| Builder::new(name).ino(ino).uid(0).gid(0).nlink(1).mtime(0);
        match e {
            CpioEntry::Dir { name, mode } => {
                let wr = b(name)
                    .mode(0o040000 | (mode & 0o7777))
                    .nlink(2)
                    .write(w, 0);
                w = wr.finish()?;
            }
            CpioEntry::File { name, mode, data } => {
                let len = u32::try_from(data.len()).map_err(|_| too_big(name))?;
                let mut wr = b(name).mode(0o100000 | (mode & 0o7777)).write(w, len);
                wr.write_all(data)?;
                w = wr.finish()?;
            }
            CpioEntry::CharDev {
                name,
                mode,
                major,
                minor,
            } => {
                let wr = b(name)
                    .mode(0o020000 | (mode & 0o7777))
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(w, 0);
                w = wr.finish()?;
            }
            CpioEntry::Symlink { name, target } => {
                let len = u32::try_from(target.len()).map_err(|_| too_big(name))?;
                let mut wr = b(name).mode(0o120777).write(w, len);
                wr.write_all(target.as_bytes())?;
                w = wr.finish()?;
            }
        }
    }
    cpio::newc::trailer(w)?;
    Ok(())
}

/// The initramfs entries for a busybox binary and module files (name, bytes) in load order.
pub fn initramfs_entries(busybox: Vec<u8>, modules: Vec<(String, Vec<u8>)>) -> Vec<CpioEntry> {
    let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
    let mut v = Vec::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "lib",
        "lib/modules",
        "newroot",
        "mnt",
    ] {
        v.push(CpioEntry::Dir {
            name: d.into(),
            mode: 0o755,
        });
    }
    // The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    v.push(CpioEntry::CharDev {
        name: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    v.push(CpioEntry::File {
        name: "bin/busybox".into(),
        mode: 0o755,
        data: busybox,
    });
    v.push(CpioEntry::Symlink {
        name: "bin/sh".into(),
        target: "busybox".into(),
    });
    for (n, data) in modules {
        v.push(CpioEntry::File {
            name: format!("lib/modules/{n}"),
            mode: 0o644,
            data,
        });
    }
    v.push(CpioEntry::File {
        name: "init".into(),
        mode: 0o755,
        data: init_script(&names).into_bytes(),
    });
    v
}

/// Bytes and inodes used by a tree (not following symlinks; hard links counted once).
pub fn tree_usage(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p)?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        inodes += 1;
        bytes += m.blocks() * 512;
        if m.is_dir() {
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Make an ext4 image `image` of `size_mib` MiB holding the tree `src` (owners and modes
/// kept) with `mkfs.ext4 -d`; no mounting. `journal` false for images mounted read-only.
pub fn make_ext4_image(
    src: &Path,
    image: &Path,
    label: &str,
    size_mib: u64,
    journal: bool,
    log: &mut dyn Write,
) -> Result<(), TemplateError> {
    let (_, inodes) = tree_usage(src).map_err(TemplateError::io(src, "cannot measure"))?;
    let _ = fs::remove_file(image);
    let f = File::create(image).map_err(TemplateError::io(image, "cannot create"))?;
    f.set_len(size_mib.saturating_mul(1 << 20))
        .map_err(TemplateError::io(image, "cannot size"))?;
    drop(f);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-m", "0", "-L", label])
        .arg("-N")
        .arg((inodes + inodes / 4 + 4096).to_string())
        .arg("-E")
        .arg("root_owner=0:0,lazy_itable_init=0")
        .arg("-d")
        .arg(src);
    if !journal {
        cmd.args(["-O", "^has_journal"]);
    }
    cmd.arg(image);
    run_logged(&mut cmd, log).map_err(|e| match e {
        TemplateError::Spawn { source, .. } => TemplateError::Spawn {
            program: "mkfs.ext4 (apt-get install e2fsprogs)".into(),
            source,
        },
        other => other,
    })?;
    Ok(())
}

/// Size in MiB for an image of `src` with `free_mib` to spare.
pub fn image_size_mib(src: &Path, free_mib: u64) -> Result<u64, TemplateError> {
    let (bytes, inodes) = tree_usage(src).map_err(TemplateError::io(src, "cannot measure"))?;
    // ext4 overhead: inode tables (256 B per inode, with the headroom make_ext4_image asks
    // for), block group metadata; plus 10 % slack.
    let need = bytes + bytes / 10 + (inodes + inodes / 4 + 4096) * 256 + (16 << 20);
    Ok(need.div_ceil(1 << 20) + free_mib)
}

fn sync_tree(dir: &Path) -> Result<(), TemplateError> {
    for e in fs::read_dir(dir).map_err(TemplateError::io(dir, "cannot list"))? {
        let p = e.map_err(TemplateError::io(dir, "cannot list"))?.path();
        if p.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(TemplateError::io(&p, "cannot fsync"))?;
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TemplateError::io(dir, "cannot fsync"))
}

fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, TemplateError> {
    let f = File::open(path).map_err(TemplateError::io(path, "cannot open"))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(TemplateError::io(path, "cannot read"))?;
    if buf.len() as u64 > max {
        return Err(TemplateError::Verify {
            root: path.to_owned(),
            log: path.to_owned(),
            problem: format!("{} is larger than {max} bytes", path.display()),
        });
    }
    Ok(buf)
}

impl TemplateStore {
    fn vm_dir_for_root(root: &Path) -> Option<PathBuf> {
        let name = root.file_name()?.to_str()?;
        let hash = name.strip_prefix("root-")?;
        Some(root.with_file_name(format!("{VM_PREFIX}{hash}")))
    }

    /// The VM artifacts built for template root `root` (a `root-<hash16>` dir), if complete.
    pub fn vm_artifacts_for_root(&self, root: &Path) -> Option<VmArtifacts> {
        let dir = Self::vm_dir_for_root(root)?;
        let text = fs::read_to_string(dir.join(VM_MARKER)).ok()?;
        let marker: VmMarker = toml::from_str(&text).ok()?;
        if marker.format != VM_FORMAT_VERSION {
            return None;
        }
        let a = VmArtifacts::in_dir(&dir, marker);
        [&a.kernel, &a.initramfs, &a.root_image]
            .iter()
            .all(|p| p.is_file())
            .then_some(a)
    }

    /// Build (or reuse) the VM artifacts of `recipe`'s current root. The tree must be built
    /// (`NotBuilt` otherwise). Progress goes to `progress` as `vm: ...` messages.
    pub fn build_vm(
        &self,
        recipe: &Recipe,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<VmArtifacts, TemplateError> {
        let name = recipe.name();
        let vm = recipe
            .spec
            .vm
            .clone()
            .ok_or_else(|| TemplateError::Verify {
                root: recipe.path.clone(),
                log: recipe.path.clone(),
                problem: format!(
                    "recipe {} has no [vm] section: its template cannot boot VM domains",
                    recipe.path.display()
                ),
            })?;
        let root = match self.status_for(recipe) {
            TemplateStatus::Ready { root, .. } => root,
            TemplateStatus::Stale { .. } | TemplateStatus::Missing => {
                return Err(TemplateError::NotBuilt {
                    name: name.to_string(),
                })
            }
            TemplateStatus::Broken { reason } => {
                return Err(TemplateError::Broken {
                    name: name.to_string(),
                    reason,
                })
            }
        };
        // Up to date needs no lock (the marker is written last): a build of another process
        // must not make a mere check fail with BuildInProgress.
        let up_to_date = |a: VmArtifacts, progress: &mut dyn FnMut(BuildProgress)| {
            progress(BuildProgress::Message {
                level: Level::Info,
                text: format!("vm: up to date: {}", a.dir.display()),
            });
            Ok(a)
        };
        if let Some(a) = self.vm_artifacts_for_root(&root) {
            return up_to_date(a, progress);
        }
        let _lock = self.lock(name)?;
        if let Some(a) = self.vm_artifacts_for_root(&root) {
            return up_to_date(a, progress);
        }
        let started = Instant::now();
        let tdir = self.template_dir(name);
        let final_dir = Self::vm_dir_for_root(&root).ok_or_else(|| TemplateError::Broken {
            name: name.to_string(),
            reason: format!("{} is not a root-<hash> directory", root.display()),
        })?;
        let partial = tdir.join(format!(
            "{VM_PREFIX}{}{PARTIAL_SUFFIX}",
            recipe.short_hash()
        ));
        for p in [&partial, &final_dir] {
            if p.exists() {
                fs::remove_dir_all(p).map_err(TemplateError::io(p, "cannot remove"))?;
            }
        }
        fs::create_dir_all(&partial).map_err(TemplateError::io(&partial, "cannot create"))?;
        let log_path = tdir.join("build-vm.log");
        let mut log = File::create(&log_path)
            .map_err(TemplateError::io(&log_path, "cannot create build log"))?;
        let mut say = |step: u32, text: String| {
            info!(template = %name, step, "{text}");
            progress(BuildProgress::Message {
                level: Level::Info,
                text: format!("vm [{step}/5] {text}"),
            });
        };
        let debs = tdir.join("debs");

        // 1. The kernel.
        say(
            1,
            format!("fetching the guest kernel ({})", vm.kernel_package),
        );
        let mut kdeb = apt_download(&vm.kernel_package, &debs, &mut log)?;
        if !deb_has_kernel(&kdeb, &mut log)? {
            let depends = deb_field(&kdeb, "Depends", &mut log)?;
            let versioned = kernel_dependency(&depends).ok_or_else(|| TemplateError::Verify {
                root: kdeb.clone(),
                log: log_path.clone(),
                problem: format!(
                    "{} ships no kernel and depends on no linux-image-* package (Depends: {depends})",
                    vm.kernel_package
                ),
            })?;
            say(1, format!("fetching {versioned}"));
            kdeb = apt_download(&versioned, &debs, &mut log)?;
        }
        let kpkg = format!(
            "{} {}",
            deb_field(&kdeb, "Package", &mut log)?,
            deb_field(&kdeb, "Version", &mut log)?
        );
        let ktree = partial.join("kernel-tree");
        run_logged(
            Command::new("dpkg-deb").arg("-x").arg(&kdeb).arg(&ktree),
            &mut log,
        )?;
        let (vmlinuz, release) = find_kernel(&ktree).ok_or_else(|| TemplateError::Verify {
            root: ktree.clone(),
            log: log_path.clone(),
            problem: format!("{kpkg} has no boot/vmlinuz-*"),
        })?;
        fs::copy(&vmlinuz, partial.join("vmlinuz"))
            .map_err(TemplateError::io(&vmlinuz, "cannot copy"))?;

        // 2. Modules and their dependencies.
        say(2, format!("resolving modules for {release}"));
        run_logged(
            Command::new("depmod").arg("-b").arg(&ktree).arg(&release),
            &mut log,
        )
        .map_err(|e| match e {
            TemplateError::Spawn { source, .. } => TemplateError::Spawn {
                program: "depmod (apt-get install kmod)".into(),
                source,
            },
            other => other,
        })?;
        let moddir = ktree.join("lib/modules").join(&release);
        let dep_text = read_limited(&moddir.join("modules.dep"), MAX_MODULES_DEP)?;
        let deps = parse_modules_dep(&String::from_utf8_lossy(&dep_text));
        let order =
            resolve_modules(&deps, &vm.modules).map_err(|problem| TemplateError::Verify {
                root: moddir.clone(),
                log: log_path.clone(),
                problem,
            })?;
        let mut modules = Vec::new();
        for rel in &order {
            if rel.contains("..") {
                return Err(TemplateError::Verify {
                    root: moddir.clone(),
                    log: log_path.clone(),
                    problem: format!("odd module path {rel:?} in modules.dep"),
                });
            }
            let p = moddir.join(rel);
            if !rel.ends_with(".ko") {
                return Err(TemplateError::Verify {
                    root: moddir.clone(),
                    log: log_path.clone(),
                    problem: format!("{rel} is compressed; only plain .ko modules are supported"),
                });
            }
            let file = rel.rsplit('/').next().unwrap_or(rel).to_owned();
            modules.push((file, read_limited(&p, 64 << 20)?));
        }
        let _ = writeln!(log, "# modules in load order: {order:?}");

        // 3. busybox and the initramfs.
        say(
            3,
            format!("building the initramfs ({})", vm.busybox_package),
        );
        let bdeb = apt_download(&vm.busybox_package, &debs, &mut log)?;
        let btree = partial.join("busybox-tree");
        run_logged(
            Command::new("dpkg-deb").arg("-x").arg(&bdeb).arg(&btree),
            &mut log,
        )?;
        let busybox = read_limited(&btree.join("bin/busybox"), 64 << 20)?;
        let names: Vec<String> = modules.iter().map(|(n, _)| n.clone()).collect();
        let initramfs = partial.join("initramfs.cpio");
        {
            let f =
                File::create(&initramfs).map_err(TemplateError::io(&initramfs, "cannot create"))?;
            let mut w = BufWriter::new(f);
            write_cpio(&initramfs_entries(busybox, modules), &mut w)
                .and_then(|()| w.flush())
                .map_err(TemplateError::io(&initramfs, "cannot write"))?;
        }
        for t in [&ktree, &btree] {
            fs::remove_dir_all(t).map_err(TemplateError::io(t, "cannot remove"))?;
        }

        // 4. The root image.
        let size = image_size_mib(&root, vm.root_image_free_mib)?;
        say(
            4,
            format!("writing the root image ({size} MiB, mkfs.ext4 -d)"),
        );
        make_ext4_image(
            &root,
            &partial.join("root.img"),
            ROOT_LABEL,
            size,
            false,
            &mut log,
        )?;
        fs::set_permissions(partial.join("root.img"), fs::Permissions::from_mode(0o644))
            .map_err(TemplateError::io(&partial, "cannot chmod"))?;

        // 5. Marker, sync, rename.
        say(5, "finishing".into());
        let marker = VmMarker {
            format: VM_FORMAT_VERSION,
            hash: recipe.hash().to_owned(),
            kernel_package: kpkg,
            kernel_release: release,
            modules: names,
            built_at: now(),
        };
        let text = toml::to_string(&marker).map_err(|e| TemplateError::Verify {
            root: partial.clone(),
            log: log_path.clone(),
            problem: format!("cannot write the marker: {e}"),
        })?;
        fs::write(partial.join(VM_MARKER), text)
            .map_err(TemplateError::io(&partial, "cannot write the marker"))?;
        sync_tree(&partial)?;
        fs::rename(&partial, &final_dir).map_err(TemplateError::io(&final_dir, "cannot rename"))?;
        File::open(&tdir)
            .and_then(|d| d.sync_all())
            .map_err(TemplateError::io(&tdir, "cannot fsync"))?;
        let a = VmArtifacts::in_dir(&final_dir, marker);
        progress(BuildProgress::Message {
            level: Level::Info,
            text: format!(
                "vm: done in {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                a.dir.display()
            ),
        });
        Ok(a)
    }

    /// The VM artifacts of template `name`'s current root, if built.
    pub fn vm_artifacts(&self, name: &DomainName) -> Option<VmArtifacts> {
        let root = self.root_path(name).ok()?;
        self.vm_artifacts_for_root(&root)
    }
}

/// `boot/vmlinuz-<release>` in an unpacked kernel package.
fn find_kernel(tree: &Path) -> Option<(PathBuf, String)> {
    let boot = tree.join("boot");
    fs::read_dir(&boot)
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let n = e.file_name().to_str()?.to_owned();
            let release = n.strip_prefix("vmlinuz-")?.to_owned();
            let ok = !release.is_empty()
                && release
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
            ok.then(|| (e.path(), release))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/overlayfs/overlay.ko:\n\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/virtio/virtio.ko:\n\
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vsock.ko:\n";

    #[test]
    fn modules_resolve_in_load_order() {
        let deps = parse_modules_dep(DEP);
        let order = resolve_modules(
            &deps,
            &[
                "virtio_mmio".into(),
                "virtio-rng".into(),
                "vmw_vsock_virtio_transport".into(),
                "overlay".into(),
            ],
        )
        .unwrap();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(m)).unwrap();
        assert!(pos("/virtio.ko") < pos("/virtio_ring.ko"));
        assert!(pos("/virtio_ring.ko") < pos("/virtio_mmio.ko"));
        assert!(pos("/vsock.ko") < pos("/vmw_vsock_virtio_transport_common.ko"));
        assert!(pos("_common.ko") < pos("/vmw_vsock_virtio_transport.ko"));
        assert_eq!(order.len(), 8, "each module once: {order:?}");
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        let e = resolve_modules(&deps, &["nope".into()]).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        // A modules.dep naming a dependency it does not list, and a cycle.
        let broken = parse_modules_dep("a.ko: b.ko\n");
        assert!(resolve_modules(&broken, &["a".into()]).is_err());
        let cyc = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        assert!(resolve_modules(&cyc, &["a".into()])
            .unwrap_err()
            .contains("cycle"));
    }

    #[test]
    fn kernel_dependency_follows_the_metapackage() {
        assert_eq!(
            kernel_dependency("linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            kernel_dependency(
                "kmod, linux-image-6.1.0-9-amd64-unsigned | linux-image-6.1.0-9-amd64"
            )
            .as_deref(),
            Some("linux-image-6.1.0-9-amd64-unsigned")
        );
        assert_eq!(kernel_dependency("kmod, linux-base (>= 4.3~)"), None);
        assert_eq!(kernel_dependency("linux-image-$(reboot)"), None);
    }

    #[test]
    fn initramfs_archive_reads_back() {
        let entries = initramfs_entries(
            b"\x7fELF busybox".to_vec(),
            vec![
                ("virtio.ko".into(), vec![1, 2, 3]),
                ("virtio_mmio.ko".into(), vec![4; 4097]),
            ],
        );
        let mut buf = Vec::new();
        write_cpio(&entries, &mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let mut seen = Vec::new();
        let mut r: &[u8] = &buf;
        loop {
            let mut rd = cpio::newc::Reader::new(r).unwrap();
            if rd.entry().is_trailer() {
                break;
            }
            let (name, mode, size) = (
                rd.entry().name().to_owned(),
                rd.entry().mode(),
                rd.entry().file_size(),
            );
            let (maj, min) = (rd.entry().rdev_major(), rd.entry().rdev_minor());
            let mut data = Vec::new();
            rd.read_to_end(&mut data).unwrap();
            assert_eq!(data.len() as u32, size);
            seen.push((name, mode, data, maj, min));
            r = rd.finish().unwrap();
        }
        let get = |n: &str| seen.iter().find(|e| e.0 == n).unwrap();
        let init = get("init");
        assert_eq!(init.1, 0o100755);
        let script = String::from_utf8(init.2.clone()).unwrap();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        let a = script.find("insmod /lib/modules/virtio.ko").unwrap();
        let b = script.find("insmod /lib/modules/virtio_mmio.ko").unwrap();
        assert!(a < b, "modules load in the given order");
        assert!(script.contains("switch_root /newroot /usr/lib/bulkhead/bulkhead-init"));
        assert!(script.contains("name=\"${w#bulkhead.name=}\""), "{script}");
        assert!(script.contains("LABEL=$1") && script.contains(ROOT_LABEL));
        assert_eq!(get("lib/modules/virtio_mmio.ko").2, vec![4; 4097]);
        assert_eq!(get("bin/busybox").1, 0o100755);
        let console = get("dev/console");
        assert_eq!((console.1, console.3, console.4), (0o020600, 5, 1));
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").2, b"busybox");
        assert_eq!(get("lib/modules").1, 0o040755);
    }

    #[test]
    fn init_script_parses_with_a_shell() {
        // `sh -n` checks the syntax without running anything.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("init");
        fs::write(&p, init_script(&["virtio.ko".into()])).unwrap();
        let st = Command::new("sh").arg("-n").arg(&p).status().unwrap();
        assert!(st.success());
    }

    #[test]
    fn ext4_image_of_a_tree() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            bulkhead_test_skip::skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("user")).unwrap();
        fs::write(src.join("user/hello"), "hi").unwrap();
        let size = image_size_mib(&src, 8).unwrap();
        assert!(size >= 24, "{size}");
        let img = d.path().join("x.img");
        let mut log = Vec::new();
        make_ext4_image(&src, &img, PRIVATE_LABEL, size, true, &mut log).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), size << 20);
        // Read it back without mounting: debugfs from e2fsprogs.
        let out = Command::new("debugfs")
            .args(["-R", "cat /user/hello"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi");
        let out = Command::new("e2label").arg(&img).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), PRIVATE_LABEL);
    }
}
