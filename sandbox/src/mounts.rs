//! Mount assembly, run by the launcher (host root) inside the child's mount namespace.
//!
//! Idmapped mounts use the new mount API: `open_tree(OPEN_TREE_CLONE)` makes a detached copy,
//! `mount_setattr(MOUNT_ATTR_IDMAP, userns_fd)` maps its ids through the domain's user
//! namespace, `move_mount` attaches it. (util-linux' `X-mount.idmap` was silently ignored on
//! these hosts, so the syscalls are used directly.)
//!
//! Symlinks: the launcher runs as host root and sees the host's tree (this is a copy of the
//! host mount namespace), so following a symlink of the template (`/home -> /etc`) would
//! resolve against the host root. Every lookup below the assembled root therefore goes
//! through a directory fd of that root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`;
//! missing directories are created with `mkdirat` in the parent found that way, and mounts
//! are attached to the resulting fd (`move_mount(MOVE_MOUNT_T_EMPTY_PATH)`, or `mount(2)` on
//! its `/proc/self/fd/N`). A template whose mount target (or a directory above one) is a
//! symlink fails to start with the step and path named; Debian trees have none.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::launch::{LaunchError, StepResult};
use crate::loopdev;
use crate::SandboxSpec;

/// Device nodes bound from the host into /dev.
/// Uid of the domain's default user (`user`) inside the domain.
pub const DOMAIN_USER_UID: u32 = 1000;

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

/// Where a mount goes: a path the launcher owns (staging), or a directory/file opened
/// symlink-safely below the assembled root.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>, &'a str),
}

impl Target<'_> {
    fn describe(&self) -> String {
        match self {
            Target::Path(p) => p.display().to_string(),
            Target::Fd(_, rel) => format!("/{rel} (in the domain root)"),
        }
    }
}

/// Attaches a copy of `src` at `dst` with mount attributes (and an idmap when `userns` is set).
fn bind_with_attrs(
    step: &str,
    src: &Path,
    dst: Target<'_>,
    attrs: u64,
    userns: Option<BorrowedFd<'_>>,
) -> StepResult<()> {
    let tree: OwnedFd = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| err(step, format!("open_tree({}): {e}", src.display())))?;
    attach_tree(step, tree, &src.display().to_string(), dst, attrs, userns)
}

/// Like [`bind_with_attrs`] for a directory already opened (symlink-safely) by the caller.
fn bind_fd_with_attrs(
    step: &str,
    src: BorrowedFd<'_>,
    what: &str,
    dst: Target<'_>,
    attrs: u64,
    userns: Option<BorrowedFd<'_>>,
) -> StepResult<()> {
    let tree: OwnedFd = rustix::mount::open_tree(
        src,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| err(step, format!("open_tree({what}): {e}")))?;
    attach_tree(step, tree, what, dst, attrs, userns)
}

/// Sets the attributes of a detached tree and attaches it at `dst`.
fn attach_tree(
    step: &str,
    tree: OwnedFd,
    what: &str,
    dst: Target<'_>,
    attrs: u64,
    userns: Option<BorrowedFd<'_>>,
) -> StepResult<()> {
    let mut all = attrs;
    if userns.is_some() {
        all |= libc::MOUNT_ATTR_IDMAP;
    }
    if all != 0 {
        mount_setattr(tree.as_fd(), all, userns).map_err(|e| {
            err(
                step,
                format!(
                    "mount_setattr({what}, attrs {all:#x}{}): {e}",
                    if userns.is_some() {
                        ", idmapped: the filesystem must support idmapped mounts"
                    } else {
                        ""
                    }
                ),
            )
        })?;
    }
    let moved = match dst {
        Target::Path(p) => rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            p,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ),
        Target::Fd(fd, _) => rustix::mount::move_mount(
            &tree,
            "",
            fd,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        ),
    };
    moved.map_err(|e| {
        err(
            step,
            format!("move_mount({what} -> {}): {e}", dst.describe()),
        )
    })?;
    Ok(())
}

/// Opens (creating if missing) `user/Incoming` in the private volume on the host side,
/// without following symlinks, owned like `user` and mode 0700. `None` when the volume has
/// no `user` home (nothing to protect).
fn incoming_dir(private_dir: &Path) -> StepResult<Option<OwnedFd>> {
    const STEP: &str = "mount:incoming";
    let private = Root::open(private_dir).map_err(|e| err(STEP, e.message))?;
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
    let refuse = |what: &str, e: rustix::io::Errno| {
        err(
            STEP,
            format!(
                "{what} in the private volume cannot be used ({e}); it must be a real \
                 directory, not a symlink"
            ),
        )
    };
    let user = match Root::open_at(private.fd.as_fd(), "user", dir_flags) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(refuse("user", e)),
    };
    let st = rustix::fs::fstat(&user).map_err(|e| err(STEP, format!("stat user: {e}")))?;
    let incoming = match Root::open_at(user.as_fd(), "Incoming", dir_flags) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdirat(&user, "Incoming", Mode::from_raw_mode(0o700))
                .map_err(|e| err(STEP, format!("mkdir user/Incoming: {e}")))?;
            let fd = Root::open_at(user.as_fd(), "Incoming", dir_flags)
                .map_err(|e| refuse("user/Incoming", e))?;
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(st.st_uid)),
                Some(rustix::fs::Gid::from_raw(st.st_gid)),
            )
            .map_err(|e| err(STEP, format!("chown user/Incoming: {e}")))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                .map_err(|e| err(STEP, format!("chmod user/Incoming: {e}")))?;
            fd
        }
        Err(e) => return Err(refuse("user/Incoming", e)),
    };
    Ok(Some(incoming))
}

fn mount_fs(
    step: &str,
    fstype: &str,
    dst: Target<'_>,
    flags: MsFlags,
    data: &str,
) -> StepResult<()> {
    // mount(2) takes a path; for an fd, its /proc/self/fd link names exactly the opened
    // directory (the kernel follows that magic link, nothing else).
    let path = match dst {
        Target::Path(p) => p.to_path_buf(),
        Target::Fd(fd, _) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
    };
    mount(Some(fstype), &path, Some(fstype), flags, Some(data)).map_err(|e| {
        err(
            step,
            format!("mount {fstype} on {} ({data}): {e}", dst.describe()),
        )
    })
}

/// Lookups below the assembled root: never through a symlink, never above the root.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// The assembled root, opened after the overlay is mounted on it.
struct Root {
    fd: OwnedFd,
}

impl Root {
    fn open(path: &Path) -> StepResult<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err("mount:root", format!("open {}: {e}", path.display())))?;
        Ok(Root { fd })
    }

    /// Opens `name` (one component, or "." ) below `dir` without following symlinks.
    fn open_at(dir: BorrowedFd<'_>, name: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        rustix::fs::openat2(
            dir,
            name,
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// Opens the directory `rel` (relative, '/'-separated) below the root, creating missing
    /// components as directories owned by `owner` (the last with `mode`, others 0755).
    /// A component that is a symlink (or not a directory) is an error naming the path.
    fn ensure_dir(&self, step: &str, rel: &str, owner: u32, mode: u32) -> StepResult<OwnedFd> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut cur = Root::open_at(self.fd.as_fd(), ".", OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| err(step, format!("open the domain root: {e}")))?;
        let mut seen = String::new();
        for (i, c) in comps.iter().enumerate() {
            if !seen.is_empty() {
                seen.push('/');
            }
            seen.push_str(c);
            let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let next = match Root::open_at(cur.as_fd(), c, dir_flags) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    let m = if i + 1 == comps.len() { mode } else { 0o755 };
                    // mkdirat does not follow a final symlink (EEXIST if one appeared)
                    rustix::fs::mkdirat(cur.as_fd(), *c, Mode::from_raw_mode(m))
                        .map_err(|e| err(step, format!("mkdir /{seen}: {e}")))?;
                    let fd = Root::open_at(cur.as_fd(), c, dir_flags)
                        .map_err(|e| err(step, format!("open new /{seen}: {e}")))?;
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(m))
                        .map_err(|e| err(step, format!("chmod /{seen}: {e}")))?;
                    let id = Some(rustix::fs::Uid::from_raw(owner));
                    let gid = Some(rustix::fs::Gid::from_raw(owner));
                    rustix::fs::fchown(&fd, id, gid)
                        .map_err(|e| err(step, format!("chown /{seen}: {e}")))?;
                    fd
                }
                Err(
                    e @ (rustix::io::Errno::LOOP
                    | rustix::io::Errno::NOTDIR
                    | rustix::io::Errno::XDEV),
                ) => {
                    let is_link =
                        rustix::fs::statat(cur.as_fd(), *c, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| {
                                rustix::fs::FileType::from_raw_mode(st.st_mode)
                                    == rustix::fs::FileType::Symlink
                            });
                    let what = if is_link {
                        "is a symlink"
                    } else {
                        "is not a directory"
                    };
                    return Err(err(
                        step,
                        format!(
                            "/{seen} in the template {what} ({e}); mount targets and the \
                             directories above them must be real directories, not symlinks"
                        ),
                    ));
                }
                Err(e) => return Err(err(step, format!("open /{seen}: {e}"))),
            };
            cur = next;
        }
        Ok(cur)
    }
}

/// Where things live while assembling.
pub(crate) struct Layout {
    /// scratch_dir/mnt: a tmpfs inside the child's mount ns holding the template's view
    /// (`lower`), the root's writable layer (`s`, a tmpfs), the private volume (`p`), the
    /// guest tools (`t`) and the assembled `root`. None of it is ever on the host's disk.
    pub staging: PathBuf,
}

impl Layout {
    pub fn new(scratch: &Path) -> Layout {
        Layout {
            staging: scratch.join("mnt"),
        }
    }

    /// The assembled root, which the child pivots into.
    pub fn root(&self) -> PathBuf {
        self.staging.join("root")
    }
}

/// Makes `upper` (the domain root's, 0755) and `work` in the root's writable layer at
/// `layer`, and the domain's /etc/resolv.conf in `upper` when the spec has one.
fn prepare_upper(spec: &SandboxSpec, layer: &Path) -> StepResult<()> {
    const STEP: &str = "mount:overlay";
    let base = spec.uid_base();
    let owned = |p: &Path, mode: u32| -> StepResult<()> {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .and_then(|()| std::os::unix::fs::chown(p, Some(base), Some(base)))
            .map_err(|e| err(STEP, format!("chown/chmod {}: {e}", p.display())))
    };
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for (d, mode) in [(&upper, 0o755), (&work, 0o700)] {
        fs::create_dir(d).map_err(|e| err(STEP, format!("mkdir {}: {e}", d.display())))?;
        owned(d, mode)?;
    }
    if let Some(text) = &spec.resolv_conf {
        // upper/etc merges with the template's /etc (a plain, non-opaque directory); the
        // file in it hides the template's resolv.conf.
        let etc = upper.join("etc");
        let file = etc.join("resolv.conf");
        fs::create_dir(&etc).map_err(|e| err(STEP, format!("mkdir {}: {e}", etc.display())))?;
        owned(&etc, 0o755)?;
        fs::write(&file, text.as_bytes())
            .map_err(|e| err(STEP, format!("write {}: {e}", file.display())))?;
        owned(&file, 0o644)?;
    }
    Ok(())
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
        Target::Path(&layout.staging),
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
        Target::Path(&lower),
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV,
        Some(userns),
    )?;
    // The root's writable layer: a tmpfs of the spec's size, so what a domain writes outside
    // its private volume is bounded (and charged to the domain's memory cgroup, whose
    // processes fault its pages in), and gone when the domain's mount namespace is.
    // A template's layer is a directory on the host's disk instead: domaind keeps what is
    // in it once the domain stopped.
    match &spec.root_changes_dir {
        Some(dir) => bind_with_attrs(
            "mount:overlay",
            dir,
            Target::Path(&scratch_view),
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            None,
        )?,
        None => mount_fs(
            "mount:overlay",
            "tmpfs",
            Target::Path(&scratch_view),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            &format!("mode=0700,size={}m", spec.root_overlay_mib),
        )?,
    }
    prepare_upper(spec, &scratch_view)?;
    std::env::set_current_dir(&layout.staging)
        .map_err(|e| err("mount:overlay", format!("chdir staging: {e}")))?;
    // Relative layer names: the overlay's options in the domain's mountinfo name no host path.
    // A template's layer is folded into a new root after it stops: pin the overlay's on-disk
    // format to plain copies, whiteouts and opaque directories, whatever the kernel's
    // defaults (a redirect or a metadata-only copy would not survive the fold).
    let options = if spec.root_changes_dir.is_some() {
        "lowerdir=lower,upperdir=s/upper,workdir=s/work,redirect_dir=off,metacopy=off,index=off"
    } else {
        "lowerdir=lower,upperdir=s/upper,workdir=s/work"
    };
    mount_fs(
        "mount:overlay",
        "overlay",
        Target::Path(Path::new("root")),
        MsFlags::MS_NODEV,
        options,
    )?;
    std::env::set_current_dir("/").map_err(|e| err("mount:overlay", format!("chdir /: {e}")))?;

    // From here on, every path is resolved below the overlay root without symlinks.
    let root_dir = Root::open(&root)?;

    // Private volume at /home: the domain's ext4 image on a loop device, mounted here only
    // (see crate::loopdev), then bound idmapped. Its mountinfo line shows the loop device
    // and "/", not where the image lives on the host.
    let private = layout.staging.join("p");
    fs::create_dir(&private)
        .map_err(|e| err("mount:private", format!("mkdir {}: {e}", private.display())))?;
    loopdev::mount_ext4(
        &spec.private_image,
        &private,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("errors=remount-ro"),
    )
    .map_err(|e| err("mount:private", e))?;
    let home = root_dir.ensure_dir("mount:home", "home", base, 0o755)?;
    bind_with_attrs(
        "mount:home",
        &private,
        Target::Fd(home.as_fd(), "home"),
        libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        Some(userns),
    )?;

    // ~/Incoming of the default user (where files from other domains land): its own
    // idmapped bind with noexec, nosuid and nodev. Made on the host side first (a mkdir
    // through the idmapped /home would need the launcher's uid in the domain's range).
    if let Some(incoming) = incoming_dir(&private)? {
        let target = root_dir.ensure_dir("mount:incoming", "home/user/Incoming", base, 0o700)?;
        bind_fd_with_attrs(
            "mount:incoming",
            incoming.as_fd(),
            "user/Incoming of the private volume",
            Target::Fd(target.as_fd(), "home/user/Incoming"),
            libc::MOUNT_ATTR_NOEXEC | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            Some(userns),
        )?;
    }

    // Guest tools, read-only: an overlay of the tools dir (bound into staging, which the
    // domain never sees) and an empty dir, with relative layer names, so /usr/lib/bulkhead
    // in the domain's mountinfo says "overlay" and "/" instead of the host's tools path.
    let tools_src = layout.staging.join("t");
    let empty = layout.staging.join("e");
    for d in [&tools_src, &empty] {
        fs::create_dir(d)
            .map_err(|e| err("mount:guest-tools", format!("mkdir {}: {e}", d.display())))?;
    }
    bind_with_attrs(
        "mount:guest-tools",
        &spec.guest_tools_dir,
        Target::Path(&tools_src),
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        None,
    )?;
    let tools = root_dir.ensure_dir("mount:guest-tools", "usr/lib/bulkhead", base, 0o755)?;
    std::env::set_current_dir(&layout.staging)
        .map_err(|e| err("mount:guest-tools", format!("chdir staging: {e}")))?;
    mount_fs(
        "mount:guest-tools",
        "overlay",
        Target::Fd(tools.as_fd(), "usr/lib/bulkhead"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "lowerdir=t:e",
    )?;
    std::env::set_current_dir("/")
        .map_err(|e| err("mount:guest-tools", format!("chdir /: {e}")))?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // /tmp
    let tmp = root_dir.ensure_dir("mount:tmp", "tmp", base, 0o1777)?;
    mount_fs(
        "mount:tmp",
        "tmpfs",
        Target::Fd(tmp.as_fd(), "tmp"),
        nosuid_nodev_noexec,
        &format!("mode=1777,{owner_opts}"),
    )?;

    // /run with the channel (looked up again: the new tmpfs is on top of the old fd's dir).
    let run = root_dir.ensure_dir("mount:run", "run", base, 0o755)?;
    mount_fs(
        "mount:run",
        "tmpfs",
        Target::Fd(run.as_fd(), "run"),
        nosuid_nodev_noexec,
        &format!("mode=0755,{owner_opts}"),
    )?;
    let chan = root_dir.ensure_dir("mount:channel", "run/bulkhead-channel", base, 0o755)?;
    bind_with_attrs(
        "mount:channel",
        &spec.channel_dir,
        Target::Fd(chan.as_fd(), "run/bulkhead-channel"),
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC,
        None,
    )?;

    // The GUI session's runtime dir (XDG_RUNTIME_DIR of the gui-agent and of every command,
    // contract E): the domain user's, 0700. Made here because the domain's init cannot chown
    // (it keeps no CAP_CHOWN).
    root_dir.ensure_dir(
        "mount:gui-runtime",
        "run/bulkhead-gui",
        base + DOMAIN_USER_UID,
        0o700,
    )?;

    // Minimal /dev: a nodev tmpfs; the device nodes are bind mounts of the host's.
    let dev_under = root_dir.ensure_dir("mount:dev", "dev", base, 0o755)?;
    mount_fs(
        "mount:dev",
        "tmpfs",
        Target::Fd(dev_under.as_fd(), "dev"),
        nosuid_nodev_noexec,
        &format!("mode=0755,size=64k,{owner_opts}"),
    )?;
    // the fresh tmpfs on /dev
    let dev = root_dir.ensure_dir("mount:dev", "dev", base, 0o755)?;
    for name in DEVICES {
        let node = rustix::fs::openat(
            &dev,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| err("mount:dev", format!("create /dev/{name}: {e}")))?;
        bind_with_attrs(
            "mount:dev",
            &Path::new("/dev").join(name),
            Target::Fd(node.as_fd(), name),
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOEXEC,
            None,
        )?;
    }
    let pts = root_dir.ensure_dir("mount:devpts", "dev/pts", base, 0o755)?;
    mount_fs(
        "mount:devpts",
        "devpts",
        Target::Fd(pts.as_fd(), "dev/pts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // gid 5 (tty) inside the domain
        &format!("newinstance,ptmxmode=0666,mode=0620,gid={}", base + 5),
    )?;
    let shm = root_dir.ensure_dir("mount:shm", "dev/shm", base, 0o1777)?;
    mount_fs(
        "mount:shm",
        "tmpfs",
        Target::Fd(shm.as_fd(), "dev/shm"),
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
        rustix::fs::symlinkat(to, &dev, link)
            .map_err(|e| err("mount:dev", format!("symlink /dev/{link}: {e}")))?;
        rustix::fs::chownat(
            &dev,
            link,
            Some(rustix::fs::Uid::from_raw(base)),
            Some(rustix::fs::Gid::from_raw(base)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err("mount:dev", format!("chown /dev/{link}: {e}")))?;
    }

    // /proc is mounted by the child (it must be in the new pid namespace), on the directory
    // checked here.
    root_dir.ensure_dir("mount:proc", "proc", base, 0o555)?;
    Ok(())
}
