//! A domain's private volume image on a loop device, for the launcher (host root).
//!
//! The private volume is a sparse ext4 image (`private.img`), so its size is the kernel's to
//! enforce: a full domain gets ENOSPC in its own volume and nowhere else. The launcher
//! attaches the image to a free loop device with `LOOP_CONFIGURE` and `LO_FLAGS_AUTOCLEAR`,
//! mounts it inside the domain's mount namespace only (the host never sees it mounted) and
//! closes the device: the kernel detaches it by itself once the last mount of it is gone,
//! i.e. when the domain's mount namespace dies. Nothing is left to clean up on the host.
//!
//! One writer at a time: the launcher takes an exclusive `flock` on the image through the
//! very open file it hands to the loop device. The loop device keeps that open file (and so
//! the lock) until it is detached, so a second start of the same domain (or anything else
//! that honours the lock, such as the VMM opening the image) waits until the previous
//! mount is really gone instead of mounting one ext4 twice.
//!
//! Written by hand on the kernel ABI from `linux-raw-sys` (the `loopdev` crates need
//! bindgen and libclang at build time, for three ioctls).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linux_raw_sys::loop_device::{
    loop_config, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LO_FLAGS_AUTOCLEAR,
};

/// How long a start waits for the previous run's mount of the same image to go away.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Why an image could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is still in use (a previous run of this domain has not released it after {} s, or another program holds it)",
        path.display(),
        LOCK_WAIT.as_secs()
    )]
    Busy { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("no free loop device: {0}")]
    NoDevice(String),
    #[error("mount {} ({}) as ext4: {source}", device.display(), image.display())]
    Mount {
        device: PathBuf,
        image: PathBuf,
        source: nix::Error,
    },
}

/// An attached loop device. Dropping it closes the device; with AUTOCLEAR the kernel then
/// detaches it as soon as nothing has it mounted (at once, if the mount never happened).
pub struct LoopDevice {
    pub path: PathBuf,
    _dev: OwnedFd,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LoopError + 'a {
    move |source| LoopError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens `image` read-write without following a symlink and locks it exclusively, waiting
/// up to [`LOCK_WAIT`] for a previous holder.
pub fn open_locked(image: &Path) -> Result<File, LoopError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(image)
        .map_err(io("cannot open the private volume image", image))?;
    let meta = f
        .metadata()
        .map_err(io("cannot stat the private volume image", image))?;
    if !meta.file_type().is_file() {
        return Err(LoopError::NotAFile {
            path: image.to_path_buf(),
        });
    }
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(LoopError::Io {
                what: "cannot lock the private volume image",
                path: image.to_path_buf(),
                source: e,
            });
        }
        if Instant::now() >= deadline {
            return Err(LoopError::Busy {
                path: image.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Attaches the (locked) image file to a free loop device, read-write, autoclear.
pub fn attach(image: File, shown: &Path) -> Result<LoopDevice, LoopError> {
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(ctl_path)
        .map_err(io("cannot open (modprobe loop)", ctl_path))?;
    // Another process can take the device between GET_FREE and CONFIGURE: then EBUSY, and
    // the next free one is asked for.
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(LoopError::NoDevice(format!(
                "LOOP_CTL_GET_FREE: {}",
                std::io::Error::last_os_error()
            )));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(d) => d,
            // udev has not made the node yet
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(io("cannot open", &path)(e)),
        };
        let is_block = dev
            .metadata()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if !is_block {
            return Err(LoopError::NoDevice(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        // SAFETY: loop_config is a plain C struct of integers and byte arrays; all zeroes is
        // its documented default (no offset, no size limit, no flags).
        let mut cfg: loop_config = unsafe { std::mem::zeroed() };
        cfg.fd = image.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR as u32;
        let name = shown.as_os_str().as_encoded_bytes();
        let len = name.len().min(cfg.info.lo_file_name.len() - 1);
        cfg.info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads one loop_config from the pointer, which lives until
        // the call returns; the image fd in it is open.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if r == 0 {
            // The device holds its own reference to the image file (and its lock).
            return Ok(LoopDevice {
                path,
                _dev: dev.into(),
            });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(LoopError::Io {
                what: "LOOP_CONFIGURE",
                path,
                source: e,
            });
        }
    }
    Err(LoopError::NoDevice(
        "every free loop device was taken by someone else (32 tries)".into(),
    ))
}

/// Locks `image` ([`open_locked`]), attaches it ([`attach`]) and mounts it as ext4 on
/// `target` with `flags` and `data`. The loop device is closed before returning: it goes away
/// with the last unmount (autoclear), and the lock with it.
pub fn mount_ext4(
    image: &Path,
    target: &Path,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> Result<(), LoopError> {
    let dev = attach(open_locked(image)?, image)?;
    nix::mount::mount(Some(&dev.path), target, Some("ext4"), flags, data).map_err(|source| {
        LoopError::Mount {
            device: dev.path.clone(),
            image: image.to_path_buf(),
            source,
        }
    })
}
