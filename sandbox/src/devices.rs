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

/// The sandbox to enter: its init's pid and start time (`/proc/<pid>/stat` field 22), so that
/// a pid the kernel gave to another process since is never entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub init_pid: i32,
    pub init_start_time: u64,
}

impl Target {
    pub fn of(rec: &crate::SandboxRecord) -> Self {
        Self {
            init_pid: rec.init_pid,
            init_start_time: rec.init_start_time,
        }
    }
}

/// Enters the mount namespace of the sandbox's init and its root (single-threaded callers
/// only). The init is checked to be the same process after its descriptors are open.
fn enter(t: Target) -> Result<(), String> {
    let pid = t.init_pid;
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("open /proc/{pid}/root"), e))?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| fail(&format!("open /proc/{pid}/ns/mnt"), e))?;
    match crate::proc_stat(pid) {
        Some((start, state)) if start == t.init_start_time && state != 'Z' && state != 'X' => {}
        _ => return Err(format!("the sandbox's init (pid {pid}) is gone")),
    }
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("setns into the sandbox's mount namespace", e))?;
    rustix::process::fchdir(&root).map_err(|e| fail("fchdir to the sandbox's root", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot into the sandbox's root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    Ok(())
}

/// Opens `/dev/<dirs of name>` below the sandbox's `/dev`, making missing directories (root's,
/// 0755: the domain cannot change them, and nothing of it is ever chowned from here) when
/// `create`; returns the directory and the last component. No symlink is followed and no
/// mount point crossed (the domain's root may have mounted something there).
fn open_parent(name: &str, create: bool) -> Result<(OwnedFd, String), String> {
    let mut dir = rustix::fs::openat2(
        rustix::fs::CWD,
        "dev",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
    .map_err(|e| fail("open the sandbox's /dev", e))?;
    let mut parts: Vec<&str> = name.split('/').collect();
    let last = parts.pop().unwrap_or_default().to_owned();
    for p in parts {
        if create {
            match rustix::fs::mkdirat(&dir, p, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(fail(&format!("mkdir /dev/.../{p}"), e)),
            }
        }
        dir = rustix::fs::openat2(
            &dir,
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE | ResolveFlags::NO_XDEV,
        )
        .map_err(|e| {
            fail(
                &format!("open /dev/.../{p} (no symlinks, no mount points)"),
                e,
            )
        })?;
    }
    Ok((dir, last))
}

/// `bulkhead-sandbox device-add`: gives host node `host_node` (a character or block device
/// with device number `rdev` (major, minor): a node the kernel gave to another device since is
/// refused) to the sandbox `target`, at `/dev/<name>`, owned by host uid/gid `owner` with mode
/// 0600. Single-threaded callers only (it enters the sandbox's mount namespace). On a failure
/// the host node gets its owner and mode back.
pub fn add_device_here(
    target: Target,
    host_node: &Path,
    rdev: (u32, u32),
    name: &str,
    owner: u32,
) -> Result<(), String> {
    if !valid_device_name(name) {
        return Err(format!("{name:?} is not a device name"));
    }
    let node = rustix::fs::open(
        host_node,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("open {}", host_node.display()), e))?;
    let st =
        rustix::fs::fstat(&node).map_err(|e| fail(&format!("stat {}", host_node.display()), e))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if kind != rustix::fs::FileType::BlockDevice && kind != rustix::fs::FileType::CharacterDevice {
        return Err(format!("{} is not a device node", host_node.display()));
    }
    let got = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if got != rdev {
        return Err(format!(
            "{} is device {}:{} now, not {}:{} (the device went away)",
            host_node.display(),
            got.0,
            got.1,
            rdev.0,
            rdev.1
        ));
    }
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
    let set_owner = |uid: u32, gid: u32, mode: u32| -> Result<(), String> {
        rustix::fs::chownat(
            rustix::fs::CWD,
            proc_path.as_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| fail(&format!("chown {}", host_node.display()), e))?;
        rustix::fs::chmodat(
            rustix::fs::CWD,
            proc_path.as_str(),
            Mode::from_raw_mode(mode),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| fail(&format!("chmod {}", host_node.display()), e))
    };
    let tree = rustix::mount::open_tree(
        &node,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| fail(&format!("open_tree {}", host_node.display()), e))?;
    // Only the domain's user (and dom0's root) may open it, from now on.
    set_owner(owner, owner, 0o600)?;
    let attach = || -> Result<(), String> {
        enter(target)?;
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
        .map_err(|e| fail(&format!("mount {} at /dev/{name}", host_node.display()), e))
    };
    if let Err(e) = attach() {
        // the node's descriptor still works after the chroot: give it back
        let _ = set_owner(st.st_uid, st.st_gid, st.st_mode & 0o7777);
        return Err(e);
    }
    Ok(())
}

/// `bulkhead-sandbox device-remove`: takes `/dev/<name>` away from the sandbox `target`
/// (unmounts and removes it). Nothing to do when it is not there.
pub fn remove_device_here(target: Target, name: &str) -> Result<(), String> {
    if !valid_device_name(name) {
        return Err(format!("{name:?} is not a device name"));
    }
    enter(target)?;
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

/// How long a device-add or device-remove may take.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn run(launcher: &Launcher, args: &[&str]) -> Result<(), SandboxError> {
    let mut child = Command::new(&launcher.path)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::LauncherSpawn {
            path: launcher.path.clone(),
            source,
        })?;
    let t0 = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if t0.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Timeout {
                    what: format!("{} {}", launcher.path.display(), args.join(" ")),
                    secs: HELPER_TIMEOUT.as_secs(),
                });
            }
            Err(source) => {
                return Err(SandboxError::LauncherSpawn {
                    path: launcher.path.clone(),
                    source,
                })
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ =
            std::io::Read::read_to_string(&mut std::io::Read::take(&mut e, 64 * 1024), &mut stderr);
    }
    // anyhow's report: "Error: <what>" (then its causes).
    let said = match stderr.find("Error: ") {
        Some(i) => stderr[i + 7..].trim(),
        None => stderr.trim(),
    };
    Err(SandboxError::Device(if said.is_empty() {
        format!("{} exited with {status}", launcher.path.display())
    } else {
        said.chars().take(512).collect()
    }))
}

/// Gives host node `host_node` (device number `rdev`) to the running sandbox `target` at
/// `/dev/<name>`, for host uid/gid `owner` (the domain user's): see the module doc. Blocking.
pub fn add_device(
    launcher: &Launcher,
    target: Target,
    host_node: &Path,
    rdev: (u32, u32),
    name: &str,
    owner: u32,
) -> Result<(), SandboxError> {
    if !valid_device_name(name) {
        return Err(SandboxError::Device(format!(
            "{name:?} is not a device name"
        )));
    }
    let (pid, start) = (
        target.init_pid.to_string(),
        target.init_start_time.to_string(),
    );
    let rdev = format!("{}:{}", rdev.0, rdev.1);
    let owner = owner.to_string();
    let node = host_node.to_string_lossy();
    run(
        launcher,
        &[
            "device-add",
            "--pid",
            &pid,
            "--start-time",
            &start,
            "--node",
            &node,
            "--rdev",
            &rdev,
            "--name",
            name,
            "--owner",
            &owner,
        ],
    )
}

/// Takes `/dev/<name>` away from the running sandbox `target`. Blocking.
pub fn remove_device(launcher: &Launcher, target: Target, name: &str) -> Result<(), SandboxError> {
    if !valid_device_name(name) {
        return Err(SandboxError::Device(format!(
            "{name:?} is not a device name"
        )));
    }
    let (pid, start) = (
        target.init_pid.to_string(),
        target.init_start_time.to_string(),
    );
    run(
        launcher,
        &[
            "device-remove",
            "--pid",
            &pid,
            "--start-time",
            &start,
            "--name",
            name,
        ],
    )
}

/// Parses `MAJOR:MINOR`.
pub fn parse_rdev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
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
