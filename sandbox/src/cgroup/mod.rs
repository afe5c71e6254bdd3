//! cgroups for sandboxes: `<root>/<domain>` under the cgroup2 hierarchy when it has the
//! memory, cpu and pids controllers, else under each cgroup v1 hierarchy (memory, cpu, pids,
//! freezer).
//!
//! `<root>` ([`CgroupRoot`]) belongs to one domaind instance: `bulkhead` for the system
//! instance, `bulkhead-<id>` for any other (a test's, a second daemon's). Everything that
//! lists or removes domain cgroups is given a root and looks only below it, so one instance
//! never touches another's domains, even those of the same name.
//!
//! The parts: [`CgroupRoot`] names an instance's root (`root`); [`Hierarchy`] is what the
//! host mounts and where the calling process sits in it (`hierarchy`); domain cgroups are
//! created, listed and removed in it (`domains`); [`CgroupPaths`] is the handle on one
//! sandbox's cgroup (`paths`), which reads task states from `/proc` (`procfs`). The knob
//! reads and writes they share are here.

use std::fs;
use std::path::Path;

use crate::{read_small, SandboxError};

mod domains;
mod hierarchy;
mod paths;
mod procfs;
mod root;

pub use domains::{list_all_domains, list_domains, list_domains_in, Limits};
pub use hierarchy::{controller_versions, Hierarchy};
pub(crate) use hierarchy::{move_self, own_cgroups};
pub use paths::CgroupPaths;
pub use root::{CgroupRoot, MAX_ROOT_ID_LEN, PARENT};

fn write(p: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(p, value).map_err(|source| SandboxError::Cgroup {
        path: p.to_path_buf(),
        action: "write",
        source,
    })
}

fn read(p: &Path) -> Result<String, SandboxError> {
    read_small(p).map_err(|source| SandboxError::Cgroup {
        path: p.to_path_buf(),
        action: "read",
        source,
    })
}
