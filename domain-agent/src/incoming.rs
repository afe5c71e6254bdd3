//! `~/Incoming` in a VM domain: where files from other domains land gets a mount of its own,
//! noexec, nosuid and nodev, as the sandbox launcher gives a sandbox's (a program copied in
//! from another domain cannot be run from there by a click or a path). The VM's init does it
//! as pid 1, before any domain process runs; the private volume is the VM's own disk.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Mode of a new `Incoming`: its user's only.
const INCOMING_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {message}")]
pub struct IncomingError {
    pub what: &'static str,
    pub path: String,
    pub message: String,
}

fn err(what: &'static str, path: &Path, e: impl std::fmt::Display) -> IncomingError {
    IncomingError {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Makes `<home>/user/Incoming` (owned like `user`, 0700) if missing and mounts it on itself
/// noexec,nosuid,nodev. A home without `user` needs nothing; a symlink in its place is refused.
/// Returns whether it mounted.
pub fn mount_incoming(home: &Path) -> Result<bool, IncomingError> {
    let user = home.join("user");
    let meta = match std::fs::symlink_metadata(&user) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err("cannot stat", &user, e)),
    };
    if !meta.is_dir() {
        return Err(err("not a directory", &user, "refusing to use it"));
    }
    let incoming = user.join("Incoming");
    match std::fs::symlink_metadata(&incoming) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(err("not a directory", &incoming, "refusing to mount it")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(INCOMING_MODE)
                .create(&incoming)
                .map_err(|e| err("cannot create", &incoming, e))?;
            std::os::unix::fs::lchown(&incoming, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| err("cannot chown", &incoming, e))?;
        }
        Err(e) => return Err(err("cannot stat", &incoming, e)),
    }
    mount(
        Some(&incoming),
        &incoming,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err("cannot bind", &incoming, e))?;
    mount(
        None::<&str>,
        &incoming,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| err("cannot make noexec,nosuid,nodev", &incoming, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_without_user_needs_nothing_and_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(!mount_incoming(t.path()).unwrap());
        std::fs::create_dir(t.path().join("user")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("user/Incoming")).unwrap();
        let e = mount_incoming(t.path()).unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
    }
}
