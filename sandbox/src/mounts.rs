//! Mount assembly, run by the launcher (host root) inside the child's mount namespace.
//!
//! Idmapped mounts use the new mount API: `open_tree(OPEN_TREE_CLONE)` makes a detached copy,
//! `mount_setattr(MOUNT_ATTR_IDMAP, userns_fd)` maps its ids through the domain's user
//! namespace, `move_mount` attaches it. (util-linux' `X-mount.idmap` was silently ignored on
//! these hosts, so the syscalls are used directly.)

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chown, Gid, Uid};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::launch::{LaunchError, StepResult};
use crate::SandboxSpec;

/// Device nodes bound from the host into /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn err(step: &str, what: impl std::fmt::Display) -> LaunchError {
    LaunchError::new(step, what.to_string())
}

/// True when the kernel has mount_setattr (probed with invalid arguments: EBADF/EINVAL mean
/// the call exists, ENOSYS that it does not).
pub(crate) fn mount_setattr_available() -> bool {
    // SAFETY: mount_setattr with fd -1, an empty path and a NULL attr of size 0 reads no memory;
    // the kernel rejects it before touching anything.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::null::<libc::mount_attr>(),
            0usize,
        )
    };
    r == 0 || nix::Error::last() != nix::Error::ENOSYS
}

/// mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set, userns_fd}).
fn mount_setattr(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    // SAFETY: `attr` is a valid, initialised mount_attr that outlives the call and its size is
    // passed; the path is a NUL-terminated empty string; fd is a valid open_tree fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(nix::Error::last())
    } else {
        Ok(())
    }
}

/// Attaches a copy of `src` at `dst` with mount attributes (and an idmap when `userns` is set).
fn bind_with_attrs(
    step: &str,
    src: &Path,
    dst: &Path,
    attrs: u64,
    userns: Option<BorrowedFd<'_>>,
) -> StepResult<()> {
    let tree: OwnedFd = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| err(step, format!("open_tree({}): {e}", src.display())))?;
    let mut all = attrs;
    if userns.is_some() {
        all |= libc::MOUNT_ATTR_IDMAP;
    }
    if all != 0 {
        mount_setattr(tree.as_fd(), all, userns).map_err(|e| {
            err(
                step,
                format!(
                    "mount_setattr({}, attrs {all:#x}{}): {e}",
                    src.display(),
                    if userns.is_some() {
                        ", idmapped: the filesystem must support idmapped mounts"
                    } else {
                        ""
                    }
                ),
            )
        })?;
    }
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        err(
            step,
            format!("move_mount({} -> {}): {e}", src.display(), dst.display()),
        )
    })?;
    Ok(())
}

fn mount_fs(step: &str, fstype: &str, dst: &Path, flags: MsFlags, data: &str) -> StepResult<()> {
    mount(Some(fstype), dst, Some(fstype), flags, Some(data)).map_err(|e| {
        err(
            step,
            format!("mount {fstype} on {} ({data}): {e}", dst.display()),
        )
    })
}

/// Creates a directory (and parents) owned by `owner` if it is missing.
fn ensure_dir(step: &str, p: &Path, owner: u32, mode: u32) -> StepResult<()> {
    if p.is_dir() {
        return Ok(());
    }
    if let Some(parent) = p.parent() {
        if !parent.is_dir() {
            ensure_dir(step, parent, owner, 0o755)?;
        }
    }
    fs::create_dir(p).map_err(|e| err(step, format!("mkdir {}: {e}", p.display())))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| err(step, format!("chmod {}: {e}", p.display())))?;
    chown(p, Some(Uid::from_raw(owner)), Some(Gid::from_raw(owner)))
        .map_err(|e| err(step, format!("chown {}: {e}", p.display())))?;
    Ok(())
}

/// Where things live while assembling.
pub(crate) struct Layout {
    /// scratch_dir/upper (overlay upper layer, owned by the domain's root)
    pub upper: PathBuf,
    /// scratch_dir/work
    pub work: PathBuf,
    /// scratch_dir/mnt: a tmpfs inside the child's mount ns holding `lower` and `root`
    pub staging: PathBuf,
}

impl Layout {
    pub fn new(scratch: &Path) -> Layout {
        Layout {
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            staging: scratch.join("mnt"),
        }
    }

    /// The assembled root, which the child pivots into.
    pub fn root(&self) -> PathBuf {
        self.staging.join("root")
    }
}

/// Builds the domain's root under `layout.root()`. Must run inside the child's mount namespace.
pub(crate) fn assemble(
    spec: &SandboxSpec,
    layout: &Layout,
    userns: BorrowedFd<'_>,
) -> StepResult<()> {
    let base = spec.uid_base();
    let owner_opts = format!("uid={base},gid={base}");

    // Nothing we do here may propagate back to the host namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("mount:propagation", format!("make / rprivate: {e}")))?;

    mount_fs(
        "mount:staging",
        "tmpfs",
        &layout.staging,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=0700,size=1m",
    )?;
    let lower = layout.staging.join("lower");
    let scratch_view = layout.staging.join("s");
    let root = layout.root();
    for d in [&lower, &scratch_view, &root] {
        fs::create_dir(d)
            .map_err(|e| err("mount:staging", format!("mkdir {}: {e}", d.display())))?;
    }

    // Template, read-only, ids shifted into the domain's range.
    bind_with_attrs(
        "mount:template",
        &spec.template_root,
        &lower,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV,
        Some(userns),
    )?;
    // Upper and work through one bind so the overlay options show only staging-relative names.
    let scratch = layout
        .upper
        .parent()
        .ok_or_else(|| err("mount:overlay", "scratch dir has no parent"))?;
    bind_with_attrs("mount:overlay", scratch, &scratch_view, 0, None)?;
    std::env::set_current_dir(&layout.staging)
        .map_err(|e| err("mount:overlay", format!("chdir staging: {e}")))?;
    mount_fs(
        "mount:overlay",
        "overlay",
        Path::new("root"),
        MsFlags::MS_NODEV,
        "lowerdir=lower,upperdir=s/upper,workdir=s/work",
    )?;
    std::env::set_current_dir("/").map_err(|e| err("mount:overlay", format!("chdir /: {e}")))?;

    // Private volume at /home.
    let home = root.join("home");
    ensure_dir("mount:home", &home, base, 0o755)?;
    bind_with_attrs(
        "mount:home",
        &spec.private_dir,
        &home,
        libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        Some(userns),
    )?;

    // Guest tools, read-only.
    let tools = root.join("usr/lib/bulkhead");
    ensure_dir("mount:guest-tools", &tools, base, 0o755)?;
    bind_with_attrs(
        "mount:guest-tools",
        &spec.guest_tools_dir,
        &tools,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        None,
    )?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // /tmp
    let tmp = root.join("tmp");
    ensure_dir("mount:tmp", &tmp, base, 0o1777)?;
    mount_fs(
        "mount:tmp",
        "tmpfs",
        &tmp,
        nosuid_nodev_noexec,
        &format!("mode=1777,{owner_opts}"),
    )?;

    // /run with the channel.
    let run = root.join("run");
    ensure_dir("mount:run", &run, base, 0o755)?;
    mount_fs(
        "mount:run",
        "tmpfs",
        &run,
        nosuid_nodev_noexec,
        &format!("mode=0755,{owner_opts}"),
    )?;
    let chan = run.join("bulkhead-channel");
    ensure_dir("mount:channel", &chan, base, 0o755)?;
    bind_with_attrs(
        "mount:channel",
        &spec.channel_dir,
        &chan,
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
        None,
    )?;

    // Minimal /dev: a nodev tmpfs; the device nodes are bind mounts of the host's.
    let dev = root.join("dev");
    ensure_dir("mount:dev", &dev, base, 0o755)?;
    mount_fs(
        "mount:dev",
        "tmpfs",
        &dev,
        nosuid_nodev_noexec,
        &format!("mode=0755,size=64k,{owner_opts}"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::File::create(&target)
            .map_err(|e| err("mount:dev", format!("create {}: {e}", target.display())))?;
        bind_with_attrs(
            "mount:dev",
            &Path::new("/dev").join(name),
            &target,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
            None,
        )?;
    }
    let pts = dev.join("pts");
    ensure_dir("mount:devpts", &pts, base, 0o755)?;
    mount_fs(
        "mount:devpts",
        "devpts",
        &pts,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // gid 5 (tty) inside the domain
        &format!("newinstance,ptmxmode=0666,mode=0620,gid={}", base + 5),
    )?;
    let shm = dev.join("shm");
    ensure_dir("mount:shm", &shm, base, 0o1777)?;
    mount_fs(
        "mount:shm",
        "tmpfs",
        &shm,
        nosuid_nodev_noexec,
        &format!("mode=1777,{owner_opts}"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        symlink(to, &path).map_err(|e| err("mount:dev", format!("symlink /dev/{link}: {e}")))?;
        nix::unistd::fchownat(
            None,
            &path,
            Some(Uid::from_raw(base)),
            Some(Gid::from_raw(base)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err("mount:dev", format!("chown /dev/{link}: {e}")))?;
    }

    // /proc is mounted by the child (it must be in the new pid namespace).
    ensure_dir("mount:proc", &root.join("proc"), base, 0o555)?;
    Ok(())
}
