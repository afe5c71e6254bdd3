//! Small file-system helpers that bulkhead-sandbox, bulkhead-templates, bulkhead-domain (its
//! private volume) and domaind share (neither of the first two depends on the other, so they
//! live here, on the standard library only).
#![forbid(unsafe_code)]

use std::io;
use std::path::Path;

/// Decodes the octal escapes of a `/proc/self/mountinfo` field (`\040` for a space, `\011`
/// for a tab, `\012` for a newline, `\134` for a backslash). A backslash not followed by
/// three octal digits stays as it is; bytes that are not UTF-8 become U+FFFD.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a directory tree if it exists; a missing `path` is fine. Symlinks inside are
/// removed, not followed (`fs::remove_dir_all`), so whoever wrote the tree cannot steer the
/// removal outside it.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Remove a file if it exists.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Copy a (sparse) disk image with `cp --sparse=always`, so holes stay holes; `dst` must not
/// exist. A missing `src` is not an error (returns false).
pub fn copy_image(src: &Path, dst: &Path) -> io::Result<bool> {
    if !src.exists() {
        return Ok(false);
    }
    if dst.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", dst.display()),
        ));
    }
    let out = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg("--no-dereference")
        .arg("--")
        .arg(src)
        .arg(dst)
        .output()?;
    if !out.status.success() {
        let _ = std::fs::remove_file(dst);
        return Err(io::Error::other(format!(
            "cp {} {}: {}",
            src.display(),
            dst.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape_mountinfo("\\011\\012\\134"), "\t\n\\");
        // Not an escape: fewer than three octal digits, or not octal.
        assert_eq!(unescape_mountinfo("/a\\04"), "/a\\04");
        assert_eq!(unescape_mountinfo("/a\\089"), "/a\\089");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
        // A backslash with three digits at the very end is decoded too.
        assert_eq!(unescape_mountinfo("/a\\040"), "/a ");
        // Escaped bytes that are not UTF-8 become U+FFFD.
        assert_eq!(unescape_mountinfo("/\\377"), "/\u{fffd}");
    }

    #[test]
    fn remove_tree_removes_and_accepts_missing() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::write(t.join("a/b/f"), "x").unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        remove_tree(&t).unwrap();
        remove_tree(&dir.path().join("never/there")).unwrap();
    }

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let t = dir.path().join("t");
        fs::create_dir(&t).unwrap();
        std::os::unix::fs::symlink(&outside, t.join("link")).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert!(outside.join("keep").is_file());
    }

    #[test]
    fn remove_tree_of_a_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "x").unwrap();
        assert!(remove_tree(&f).is_err());
        assert!(f.is_file());
    }
}
