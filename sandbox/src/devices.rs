//! Device nodes handed to a running sandbox, one at a time (a USB device attached to it).
//!
//! A sandbox shares dom0's kernel, so a USB device attached to one appears in dom0's kernel
//! (through `vhci-hcd`) with nodes in dom0's devtmpfs (`/dev/sdb`, `/dev/input/event7`,
//! `/dev/bus/usb/003/002`). Handing it to the sandbox alone means: the host node is owned by
//! the domain user's host uid with mode 0600 (nothing else in dom0 but root opens it), and a
//! bind mount of it appears at the same name under the sandbox's own `/dev` (a tmpfs mounted
//! `nodev`: a node made there would not open; a bind mount of devtmpfs's node does). No other
//! domain's `/dev` ever shows it.
//!
//! The mount must be made inside the sandbox's mount namespace, which a multithreaded domaind
//! cannot enter (`setns` of a mount namespace needs a single-threaded caller), so the
//! single-threaded `bulkhead-sandbox device-add` / `device-remove` does it
//! ([`add_device_here`], [`remove_device_here`]), started by domaind through [`add_device`] /
//! [`remove_device`]: `open_tree(OPEN_TREE_CLONE)` of the host node while still in dom0's
//! namespace, then `setns` into the sandbox's, `chroot` into its root (as its init sees it),
//! and under `/dev` every directory is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: a domain that put a symlink there gets an error, not a mount
//! somewhere else.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::{Launcher, SandboxError};

/// Longest device name below `/dev`.
pub const MAX_DEVICE_NAME: usize = 128;
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Whether `name` is a device name below `/dev` as the kernel gives them (`sdb`, `sdb1`,
/// `input/event7`, `bus/usb/003/002`, `hidraw0`): relative, components of
/// `[A-Za-z0-9_.:-]`, none of them `.` or `..`, at most four.
pub fn valid_device_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    !name.is_empty()
        && name.len() <= MAX_DEVICE_NAME
        && parts.len() <= 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        })
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Enters the mount namespace of `init_pid` and its root (single-threaded callers only).
fn enter(init_pid: i32) -> Result<(), String> {
    let root = rustix::fs::open(
        format!("/proc/{init_pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("open /proc/{init_pid}/root"), e))?;
    let ns = std::fs::File::open(format!("/proc/{init_pid}/ns/mnt"))
        .map_err(|e| fail(&format!("open /proc/{init_pid}/ns/mnt"), e))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("setns into the sandbox's mount namespace", e))?;
    rustix::process::fchdir(&root).map_err(|e| fail("fchdir to the sandbox's root", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot into the sandbox's root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    Ok(())
}

/// Opens `/dev/<dirs of name>` below the sandbox's `/dev`, making missing directories (owned
/// like `/dev`) when `create`; returns the directory and the last component.
fn open_parent(name: &str, create: bool) -> Result<(OwnedFd, String), String> {
    let mut dir = rustix::fs::openat2(
        rustix::fs::CWD,
        "dev",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(|e| fail("open the sandbox's /dev", e))?;
    let owner = rustix::fs::fstat(&dir).map_err(|e| fail("stat /dev", e))?;
    let mut parts: Vec<&str> = name.split('/').collect();
    let last = parts.pop().unwrap_or_default().to_owned();
    for p in parts {
        if create {
            match rustix::fs::mkdirat(&dir, p, Mode::from_raw_mode(0o755)) {
                Ok(()) => {
                    // chown needs a descriptor that is not O_PATH
                    let d = rustix::fs::openat2(
                        &dir,
                        p,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        RESOLVE,
                    )
                    .map_err(|e| fail(&format!("open /dev/.../{p}"), e))?;
                    rustix::fs::fchown(
                        &d,
                        Some(rustix::fs::Uid::from_raw(owner.st_uid)),
                        Some(rustix::fs::Gid::from_raw(owner.st_gid)),
                    )
                    .map_err(|e| fail(&format!("chown /dev/.../{p}"), e))?;
                }
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(fail(&format!("mkdir /dev/.../{p}"), e)),
            }
        }
        dir = rustix::fs::openat2(
            &dir,
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| fail(&format!("open /dev/.../{p} (no symlinks)"), e))?;
    }
    Ok((dir, last))
}

/// `bulkhead-sandbox device-add`: gives host node `host_node` (a character or block device)
/// to the sandbox whose init is `init_pid`, at `/dev/<name>`, owned by host uid/gid `owner`
/// with mode 0600. Single-threaded callers only (it enters the sandbox's mount namespace).
pub fn add_device_here(
    init_pid: i32,
    host_node: &Path,
    name: &str,
    owner: u32,
) -> Result<(), String> {
    if !valid_device_name(name) {
        return Err(format!("{name:?} is not a device name"));
    }
    let meta = std::fs::symlink_metadata(host_node)
        .map_err(|e| fail(&format!("stat {}", host_node.display()), e))?;
    let ft = meta.file_type();
    if !ft.is_block_device() && !ft.is_char_device() {
        return Err(format!("{} is not a device node", host_node.display()));
    }
    // Only the domain's user (and dom0's root) may open it.
    let node = rustix::fs::open(
        host_node,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("open {}", host_node.display()), e))?;
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
    rustix::fs::chownat(
        rustix::fs::CWD,
        proc_path.as_str(),
        Some(rustix::fs::Uid::from_raw(owner)),
        Some(rustix::fs::Gid::from_raw(owner)),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| fail(&format!("chown {}", host_node.display()), e))?;
    rustix::fs::chmodat(
        rustix::fs::CWD,
        proc_path.as_str(),
        Mode::from_raw_mode(0o600),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(|e| fail(&format!("chmod {}", host_node.display()), e))?;
    let tree = rustix::mount::open_tree(
        &node,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| fail(&format!("open_tree {}", host_node.display()), e))?;
    enter(init_pid)?;
    let (dir, last) = open_parent(name, true)?;
    let placeholder = rustix::fs::openat2(
        &dir,
        last.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
        RESOLVE,
    )
    .map_err(|e| fail(&format!("create /dev/{name} in the sandbox"), e))?;
    rustix::mount::move_mount(
        &tree,
        "",
        &placeholder,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| fail(&format!("mount {} at /dev/{name}", host_node.display()), e))?;
    Ok(())
}

/// `bulkhead-sandbox device-remove`: takes `/dev/<name>` away from the sandbox whose init is
/// `init_pid` (unmounts and removes it). Nothing to do when it is not there.
pub fn remove_device_here(init_pid: i32, name: &str) -> Result<(), String> {
    if !valid_device_name(name) {
        return Err(format!("{name:?} is not a device name"));
    }
    enter(init_pid)?;
    let (dir, last) = match open_parent(name, false) {
        Ok(v) => v,
        Err(_) => return Ok(()), // its directory is gone: so is the node
    };
    // The directories were opened without following symlinks; the path to unmount is the
    // same one, and UMOUNT_NOFOLLOW keeps the last component from being a symlink.
    match rustix::mount::unmount(
        format!("/dev/{name}").as_str(),
        rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
    ) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(fail(&format!("unmount /dev/{name}"), e)),
    }
    match rustix::fs::unlinkat(&dir, last.as_str(), rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(fail(&format!("remove /dev/{name}"), e)),
    }
}

fn run(launcher: &Launcher, args: &[&str]) -> Result<(), SandboxError> {
    let out = Command::new(&launcher.path)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|source| SandboxError::LauncherSpawn {
            path: launcher.path.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    // anyhow's report: "Error: <what>" (then its causes).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = match stderr.find("Error: ") {
        Some(i) => stderr[i + 7..].trim(),
        None => stderr.trim(),
    };
    Err(SandboxError::Device(format!(
        "{}{}",
        said.chars().take(512).collect::<String>(),
        if said.is_empty() {
            format!("{} exited with {}", launcher.path.display(), out.status)
        } else {
            String::new()
        }
    )))
}

/// Gives host node `host_node` to the running sandbox `init_pid` at `/dev/<name>`, for host
/// uid/gid `owner` (the domain user's): see the module doc. Blocking.
pub fn add_device(
    launcher: &Launcher,
    init_pid: i32,
    host_node: &Path,
    name: &str,
    owner: u32,
) -> Result<(), SandboxError> {
    if !valid_device_name(name) {
        return Err(SandboxError::Device(format!(
            "{name:?} is not a device name"
        )));
    }
    let pid = init_pid.to_string();
    let owner = owner.to_string();
    let node = host_node.to_string_lossy();
    run(
        launcher,
        &[
            "device-add",
            "--pid",
            &pid,
            "--node",
            &node,
            "--name",
            name,
            "--owner",
            &owner,
        ],
    )
}

/// Takes `/dev/<name>` away from the running sandbox `init_pid`. Blocking.
pub fn remove_device(launcher: &Launcher, init_pid: i32, name: &str) -> Result<(), SandboxError> {
    if !valid_device_name(name) {
        return Err(SandboxError::Device(format!(
            "{name:?} is not a device name"
        )));
    }
    let pid = init_pid.to_string();
    run(launcher, &["device-remove", "--pid", &pid, "--name", name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        for ok in [
            "sdb",
            "sdb1",
            "input/event7",
            "bus/usb/003/002",
            "hidraw0",
            "bsg/0:0:0:0",
        ] {
            assert!(valid_device_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/sdb",
            "sdb/",
            "../etc/passwd",
            "input/../../x",
            "a//b",
            ".",
            "a/b/c/d/e",
            "sd b",
            &"x".repeat(129),
        ] {
            assert!(!valid_device_name(bad), "{bad:?}");
        }
    }
}
