//! Which cgroup root ([`CgroupRoot`]) a domaind instance owns, from its `--instance` and its
//! runtime dir: the daemon and the test harness (which starts test domainds and cleans up
//! below their roots) derive it here, the same way.

use std::path::{Path, PathBuf};

use crate::CgroupRoot;

/// Environment variable for `--instance`.
pub const ENV_INSTANCE: &str = "BULKHEAD_INSTANCE";
/// The `--instance` of the system domaind (cgroups `bulkhead/<domain>`).
pub const SYSTEM_INSTANCE: &str = "system";

/// An unusable `--instance`.
#[derive(Debug, thiserror::Error)]
#[error("--instance {name:?}: {reason}; use `{SYSTEM_INSTANCE}` for the system domaind, or 1..={max} of [a-z0-9_-] (its cgroups go to bulkhead-<NAME>/), or leave it out to derive one from --runtime-dir", max = crate::cgroup::MAX_ROOT_ID_LEN)]
pub struct InstanceError {
    pub name: String,
    pub reason: String,
}

/// The cgroup root of a domaind instance, so that instances never touch each other's
/// domains (tests on a host with the system domaind, a second daemon):
/// - `instance = Some("system")`, or none and `runtime_dir` is the default
///   [`bulkhead_domain::DEFAULT_RUNTIME_DIR`]: the system root `bulkhead`, as always;
/// - `instance = Some(NAME)`: `bulkhead-NAME`;
/// - otherwise `bulkhead-<hash of the canonical runtime dir>`: every runtime dir (and so
///   every set of running domains) gets its own, the same after a restart.
pub fn cgroup_root(
    instance: Option<&str>,
    runtime_dir: &Path,
) -> Result<CgroupRoot, InstanceError> {
    match instance {
        Some(SYSTEM_INSTANCE) => Ok(CgroupRoot::system()),
        Some(name) => CgroupRoot::instance(name).map_err(|e| InstanceError {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
        None => {
            let dir = canonical(runtime_dir);
            if dir == canonical(Path::new(bulkhead_domain::DEFAULT_RUNTIME_DIR)) {
                Ok(CgroupRoot::system())
            } else {
                Ok(CgroupRoot::for_runtime_dir(&dir))
            }
        }
    }
}

/// `path` with symlinks resolved as far as it exists (the runtime dir may not exist yet at
/// the first start), made absolute.
fn canonical(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest.iter().rev().fold(c, |acc, part| acc.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_roots_of_instances() {
        let sys = CgroupRoot::system();
        let default = Path::new(bulkhead_domain::DEFAULT_RUNTIME_DIR);
        assert_eq!(cgroup_root(None, default).unwrap(), sys);
        assert_eq!(
            cgroup_root(Some("system"), Path::new("/tmp/x")).unwrap(),
            sys
        );
        assert_eq!(
            cgroup_root(Some("ci-2"), default).unwrap().as_str(),
            "bulkhead-ci-2"
        );
        let e = cgroup_root(Some("Bad/Name"), default).unwrap_err();
        assert!(e.to_string().contains("--instance \"Bad/Name\""), "{e}");

        // any other runtime dir: its own root, the same whether or not the dir exists yet
        // and however it is spelled
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("run");
        let before = cgroup_root(None, &run).unwrap();
        assert!(!before.is_system());
        std::fs::create_dir(&run).unwrap();
        assert_eq!(cgroup_root(None, &run).unwrap(), before);
        std::os::unix::fs::symlink(t.path(), t.path().join("link")).unwrap();
        assert_eq!(
            cgroup_root(None, &t.path().join("link/./run")).unwrap(),
            before
        );
        assert_ne!(cgroup_root(None, &t.path().join("run2")).unwrap(), before);
    }
}
