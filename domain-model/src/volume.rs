//! Private volumes: one sparse ext4 image per domain, `<state>/domains/<name>/private.img`,
//! the same format for both backends. A VM's guest mounts it as a virtio disk; a sandbox's
//! launcher mounts it through a loop device inside the domain's mount namespace only (see
//! `bulkhead_sandbox::loopdev`). Its size (the `private_size` property) is enforced by the
//! file system: a full domain gets ENOSPC in its own volume, dom0 and the other domains keep
//! writing. The host never has it mounted, so nothing a domain stores there (setuid files,
//! file capabilities, device nodes) means anything on the host.
//!
//! Once a VM has had the image as a raw disk, its guest could have written any bytes into
//! it: dom0's kernel must never mount it. A marker file next to it says so
//! ([`VM_WRITTEN_MARKER`]), and sandbox starts refuse such an image.
//!
//! Domains made before images (a `private` directory) are converted at their next start:
//! the image is built from the directory (`mkfs.ext4 -d`, owners and modes kept), then the
//! directory is renamed to `private.migrated` (kept, never used again; remove it once the
//! domain's data looks right).

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{info, warn};

/// File name of a domain's private volume image in its state dir.
pub const IMAGE_NAME: &str = crate::PRIVATE_IMAGE_NAME;
/// ext4 label of a domain's private volume image (the guest of a VM mounts it by label).
pub const PRIVATE_LABEL: &str = "bh-private";
/// Next to the image: present once a VM has used it (dom0 must not mount it then).
pub const VM_WRITTEN_MARKER: &str = "private.img.vm-written";
/// What a converted private directory is renamed to.
pub const MIGRATED_DIR_NAME: &str = "private.migrated";
/// The domain's default user inside the domain.
const DOMAIN_USER_ID: u32 = 1000;
/// Mode of the default user's home.
const HOME_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the private volume image {}: {message}", path.display())]
    Mkfs { path: PathBuf, message: String },
    #[error(
        "the private volume {} is {have} MiB; private_size {want} MiB would shrink it (a volume only grows)",
        path.display()
    )]
    Shrink { path: PathBuf, have: u64, want: u64 },
}

fn io(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    let what = what.into();
    move |source| VolumeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The image, the legacy directory and the marker of one domain.
#[derive(Debug, Clone)]
pub struct PrivateVolume {
    pub image: PathBuf,
    /// The pre-image private directory (`private`), if the domain still has one.
    pub legacy_dir: PathBuf,
}

impl PrivateVolume {
    pub fn new(paths: &crate::Paths, name: &crate::DomainName) -> Self {
        Self {
            image: paths.private_image(name),
            legacy_dir: paths.private_dir(name),
        }
    }

    fn marker(&self) -> PathBuf {
        self.image.with_file_name(VM_WRITTEN_MARKER)
    }

    /// Whether a VM has had this volume as a raw disk.
    pub fn vm_written(&self) -> bool {
        self.marker().exists()
    }

    /// Record that a VM gets the volume (before the VMM opens it).
    pub fn mark_vm_written(&self) -> Result<(), VolumeError> {
        let m = self.marker();
        fs::write(
            &m,
            b"a VM's guest has written private.img: dom0 never mounts it\n",
        )
        .map_err(io("cannot write", &m))
    }

    /// Makes the image if the domain has none (from its legacy directory, or empty with a
    /// home for `user`), or grows it to `size_mib`. Returns whether it was created.
    pub fn ensure(&self, size_mib: u64) -> Result<bool, VolumeError> {
        if self.image.exists() {
            self.grow(size_mib)?;
            return Ok(false);
        }
        let dir = self
            .image
            .parent()
            .ok_or_else(|| VolumeError::Mkfs {
                path: self.image.clone(),
                message: "no parent directory".into(),
            })?
            .to_path_buf();
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        if self.legacy_dir.is_dir() {
            make_image(&self.legacy_dir, &self.image, size_mib)?;
            let moved = dir.join(MIGRATED_DIR_NAME);
            fs::rename(&self.legacy_dir, &moved).map_err(io("cannot rename", &self.legacy_dir))?;
            info!(image = %self.image.display(), kept = %moved.display(),
                "private directory converted to a private volume image; the directory is kept, unused");
        } else {
            let skel = tempfile::Builder::new()
                .prefix(".private-skel-")
                .tempdir_in(&dir)
                .map_err(io("cannot make a staging dir in", &dir))?;
            let user = skel.path().join("user");
            fs::create_dir(&user).map_err(io("cannot create", &user))?;
            std::os::unix::fs::chown(&user, Some(DOMAIN_USER_ID), Some(DOMAIN_USER_ID))
                .map_err(io("cannot chown", &user))?;
            fs::set_permissions(&user, fs::Permissions::from_mode(HOME_MODE))
                .map_err(io("cannot chmod", &user))?;
            fs::set_permissions(skel.path(), fs::Permissions::from_mode(0o755))
                .map_err(io("cannot chmod", skel.path()))?;
            make_image(skel.path(), &self.image, size_mib)?;
        }
        Ok(true)
    }

    /// Replaces `dest`'s volume with a copy of this one (sparse), the VM marker included. A
    /// domain not converted yet is converted into `dest`'s image; a domain without any volume
    /// leaves `dest` without one (made empty at its first start).
    pub fn copy_to(&self, dest: &PrivateVolume, size_mib: u64) -> Result<(), VolumeError> {
        for p in [&dest.image, &dest.marker()] {
            bulkhead_fsutil::remove_file(p).map_err(io("cannot remove", p))?;
        }
        bulkhead_fsutil::remove_tree(&dest.legacy_dir)
            .map_err(io("cannot remove", &dest.legacy_dir))?;
        if let Some(parent) = dest.image.parent() {
            fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        if self.image.exists() {
            bulkhead_fsutil::copy_image(&self.image, &dest.image)
                .map_err(io("cannot copy the private volume to", &dest.image))?;
            if self.vm_written() {
                dest.mark_vm_written()?;
            }
        } else if self.legacy_dir.is_dir() {
            make_image(&self.legacy_dir, &dest.image, size_mib)?;
        }
        Ok(())
    }

    /// Size of the image file in MiB.
    pub fn size_mib(&self) -> Result<u64, VolumeError> {
        let len = fs::metadata(&self.image)
            .map_err(io("cannot stat", &self.image))?
            .len();
        Ok(len >> 20)
    }

    /// Grows a halted domain's image (file and file system) to `size_mib`; refuses to shrink.
    fn grow(&self, size_mib: u64) -> Result<(), VolumeError> {
        let have = self.size_mib()?;
        if size_mib == have {
            return Ok(());
        }
        if size_mib < have {
            return Err(VolumeError::Shrink {
                path: self.image.clone(),
                have,
                want: size_mib,
            });
        }
        // dom0 never parses what a guest wrote: a VM-written volume only gets a bigger disk,
        // and its file system is grown from inside the VM (resize2fs, online). One written
        // only by dom0's own kernel is checked and grown offline here.
        let vm_written = self.vm_written();
        if !vm_written {
            run(
                Command::new("e2fsck").args(["-f", "-p"]).arg(&self.image),
                &self.image,
                &[0, 1],
            )?;
        }
        File::options()
            .write(true)
            .open(&self.image)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(io("cannot grow", &self.image))?;
        if vm_written {
            info!(image = %self.image.display(), size_mib, "private volume disk grown; run resize2fs on it inside the VM to use the space");
            return Ok(());
        }
        run(
            Command::new("resize2fs").arg("-p").arg(&self.image),
            &self.image,
            &[0],
        )?;
        info!(image = %self.image.display(), from_mib = have, size_mib, "private volume grown");
        Ok(())
    }
}

fn run(cmd: &mut Command, image: &Path, ok: &[i32]) -> Result<(), VolumeError> {
    let out = cmd.output().map_err(|e| VolumeError::Mkfs {
        path: image.to_path_buf(),
        message: format!(
            "cannot run {:?} (apt-get install e2fsprogs): {e}",
            cmd.get_program()
        ),
    })?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    warn!(image = %image.display(), status = %out.status, stderr = %err, "e2fsprogs failed");
    Err(VolumeError::Mkfs {
        path: image.to_path_buf(),
        message: format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            err.trim()
        ),
    })
}

/// A sparse ext4 image of `size_mib` holding the tree `src` (owners and modes kept), written
/// to a temporary name, fsynced and renamed into place, mode 0600.
fn make_image(src: &Path, image: &Path, size_mib: u64) -> Result<(), VolumeError> {
    let tmp = image.with_extension("img.new");
    let _ = fs::remove_file(&tmp);
    File::create(&tmp)
        .and_then(|f| {
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.set_len(size_mib << 20)
        })
        .map_err(io("cannot create", &tmp))?;
    // Default inode ratio (a home holds many small files); inode tables are left for the
    // kernel to initialise lazily, so a new volume costs a few MiB of disk, not its size.
    let made = run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-L"])
            .arg(PRIVATE_LABEL)
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(src)
            .arg(&tmp),
        image,
        &[0],
    );
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("cannot fsync", &tmp))?;
    fs::rename(&tmp, image).map_err(io("cannot rename into place", image))?;
    if let Some(d) = image.parent() {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(io("cannot fsync", d))?;
    }
    info!(image = %image.display(), size_mib, "private volume image created");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(dir: &Path) -> PrivateVolume {
        PrivateVolume {
            image: dir.join(IMAGE_NAME),
            legacy_dir: dir.join("private"),
        }
    }

    #[test]
    fn a_new_volume_is_sparse_sized_and_grows_but_never_shrinks() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("the skeleton home is chowned to uid 1000: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let v = vol(t.path());
        assert!(v.ensure(128).unwrap());
        let meta = fs::metadata(&v.image).unwrap();
        assert_eq!(meta.len(), 128 << 20);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
        assert!(!v.ensure(128).unwrap(), "second ensure makes nothing");
        v.ensure(192).unwrap();
        assert_eq!(v.size_mib().unwrap(), 192);
        let e = v.ensure(64).unwrap_err();
        assert!(
            matches!(
                e,
                VolumeError::Shrink {
                    have: 192,
                    want: 64,
                    ..
                }
            ),
            "{e}"
        );
        // still a clean file system of the new size
        let out = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&v.image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn a_legacy_private_dir_is_converted_and_kept_aside() {
        if !nix::unistd::geteuid().is_root() {
            bulkhead_test_skip::skip("converting keeps owners: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let v = vol(t.path());
        fs::create_dir_all(v.legacy_dir.join("user")).unwrap();
        fs::write(v.legacy_dir.join("user/notes"), b"kept").unwrap();
        assert!(v.ensure(128).unwrap());
        assert!(!v.legacy_dir.exists());
        assert_eq!(
            fs::read(t.path().join(MIGRATED_DIR_NAME).join("user/notes")).unwrap(),
            b"kept"
        );
        // the file is in the image (debugfs reads it without mounting)
        let out = Command::new("debugfs")
            .args(["-R", "cat /user/notes"])
            .arg(&v.image)
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"kept");
    }

    #[test]
    fn a_vm_written_volume_is_marked() {
        let t = tempfile::tempdir().unwrap();
        let v = vol(t.path());
        assert!(!v.vm_written());
        v.mark_vm_written().unwrap();
        assert!(v.vm_written());
    }
}
