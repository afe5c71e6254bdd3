//! The guest kernel: fetching the kernel package (following a metapackage to the versioned
//! package it depends on), finding `vmlinuz` in it, and the modules to load from its
//! `modules.dep`, dependencies first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_logged;
use crate::error::TemplateError;

/// Most modules put into the initramfs (dependencies included).
const MAX_MODULES: usize = 256;

/// Fetch `package` with `apt-get download` into `debs` (reusing a cached .deb) and return it.
pub(super) fn apt_download(
    package: &str,
    debs: &Path,
    log: &mut dyn Write,
) -> Result<PathBuf, TemplateError> {
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
pub(super) fn deb_field(
    deb: &Path,
    field: &str,
    log: &mut dyn Write,
) -> Result<String, TemplateError> {
    Ok(
        run_logged(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field), log)?
            .trim()
            .to_owned(),
    )
}

/// Whether the .deb ships a kernel image (`./boot/vmlinuz-*`).
pub(super) fn deb_has_kernel(deb: &Path, log: &mut dyn Write) -> Result<bool, TemplateError> {
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

/// `boot/vmlinuz-<release>` in an unpacked kernel package.
pub(super) fn find_kernel(tree: &Path) -> Option<(PathBuf, String)> {
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
}
