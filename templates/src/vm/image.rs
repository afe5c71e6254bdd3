//! ext4 images of a directory tree, made with `mkfs.ext4 -d` (no mounting), and the size
//! such an image needs.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::run_logged;
use crate::error::TemplateError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::PRIVATE_LABEL;

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
