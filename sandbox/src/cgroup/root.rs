//! [`CgroupRoot`]: the directory below each hierarchy's mount point that holds one domaind
//! instance's domain cgroups, `bulkhead` or `bulkhead-<id>`.

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// Parent directory of the system instance's domain cgroups, under each hierarchy; other
/// instances use `bulkhead-<id>` ([`CgroupRoot`]).
pub const PARENT: &str = "bulkhead";
/// Longest instance id in `bulkhead-<id>`.
pub const MAX_ROOT_ID_LEN: usize = 32;

/// The cgroup directory (one path component below each hierarchy's mount point) under which
/// one domaind instance creates its domains' cgroups: [`PARENT`] for the system instance,
/// `bulkhead-<id>` (`<id>`: 1..=32 of `[a-z0-9_-]`) for any other.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupRoot(String);

impl CgroupRoot {
    /// The system instance's root, `bulkhead`.
    pub fn system() -> Self {
        CgroupRoot(PARENT.to_owned())
    }

    /// `bulkhead-<id>`.
    pub fn instance(id: &str) -> Result<Self, SandboxError> {
        Self::parse(&format!("{PARENT}-{id}"))
    }

    /// The root of the instance whose runtime dir is `dir` (as the daemon uses it, ideally
    /// canonical): `bulkhead-<16 hex digits of a hash of the path>`. Stable across restarts
    /// and versions (FNV-1a 64, not the std hasher).
    pub fn for_runtime_dir(dir: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in dir.as_os_str().as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        CgroupRoot(format!("{PARENT}-{h:016x}"))
    }

    /// Checks a directory name: `bulkhead` or `bulkhead-<id>`.
    pub fn parse(s: &str) -> Result<Self, SandboxError> {
        let ok = s == PARENT
            || s.strip_prefix(PARENT)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|id| {
                    !id.is_empty()
                        && id.len() <= MAX_ROOT_ID_LEN
                        && id.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        })
                });
        if ok {
            Ok(CgroupRoot(s.to_owned()))
        } else {
            Err(SandboxError::InvalidSpec(format!(
                "cgroup root {s:?}: must be `{PARENT}` or `{PARENT}-<id>` with 1..={MAX_ROOT_ID_LEN} of [a-z0-9_-]"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the system instance's root.
    pub fn is_system(&self) -> bool {
        self.0 == PARENT
    }
}

impl Default for CgroupRoot {
    /// The system root: what specs and records written before roots existed used.
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Display for CgroupRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CgroupRoot {
    type Error = SandboxError;
    fn try_from(s: String) -> Result<Self, SandboxError> {
        Self::parse(&s)
    }
}

impl From<CgroupRoot> for String {
    fn from(r: CgroupRoot) -> String {
        r.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn roots_are_checked_and_stable() {
        assert_eq!(CgroupRoot::system().as_str(), "bulkhead");
        assert!(CgroupRoot::system().is_system());
        assert_eq!(CgroupRoot::default(), CgroupRoot::system());
        for bad in [
            "",
            "bulkhead-",
            "bulkhead-A",
            "bulkhead-a/b",
            "bulkheadx",
            "bulkhead-..",
            "x",
        ] {
            assert!(CgroupRoot::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(CgroupRoot::instance(&"a".repeat(MAX_ROOT_ID_LEN + 1)).is_err());
        let r = CgroupRoot::for_runtime_dir(Path::new("/tmp/bulkhead-domaind-x/run"));
        // fixed: the name must not change between versions, or a restarted domaind would
        // lose its running domains
        assert_eq!(r.as_str(), "bulkhead-386822c33bc0b168");
        assert!(!r.is_system());
        assert_eq!(CgroupRoot::parse(r.as_str()).expect("parse"), r);
        assert_ne!(
            r,
            CgroupRoot::for_runtime_dir(Path::new("/tmp/bulkhead-domaind-y/run"))
        );
        // serde goes through the check
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json, format!("\"{r}\""));
        assert!(serde_json::from_str::<CgroupRoot>("\"../etc\"").is_err());
    }
}
