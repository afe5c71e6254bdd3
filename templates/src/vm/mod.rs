//! What a VM domain boots: the guest kernel, an initramfs built here, and disk images.
//!
//! Built on demand (not by the default template build, so CI's template build stays fast):
//! by `bulkhead-template build --vm` or by domaind at the first start of a VM domain. The
//! artifacts of a template root `root-<hash16>` live in `vm-<hash16>/` next to it (the recipe
//! hash covers the `[vm]` section, so one key serves both):
//! - `vmlinuz`         the kernel of the recipe's `vm.kernel_package` (Debian's
//!   `linux-image-amd64`: the metapackage is followed to the versioned package it
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
//!
//! Here: the artifacts, their marker and [`TemplateStore::build_vm`], which puts them
//! together. The guest kernel and its modules come from `kernel`, the initramfs archive and
//! its `/init` from `initramfs`, ext4 images from `image`.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
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

mod image;
mod initramfs;
mod kernel;

pub use image::{image_size_mib, make_ext4_image, tree_usage};
pub use initramfs::{init_script, initramfs_entries, write_cpio, CpioEntry};
use kernel::{apt_download, deb_field, deb_has_kernel, find_kernel};
pub use kernel::{kernel_dependency, module_name, parse_modules_dep, resolve_modules, ModuleDep};

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
/// `hung_task_timeout_secs=30`: a task stuck in the kernel for 30 s is reported on the console
/// (the domain's log) with its stack, as a CPU stuck in the kernel is (soft lockup, 20 s).
pub const GUEST_CMDLINE: &str = "reboot=k panic=1 loglevel=4 rdinit=/init bulkhead.channel=vsock sysctl.kernel.hung_task_timeout_secs=30";
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
