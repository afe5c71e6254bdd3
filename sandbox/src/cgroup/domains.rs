//! Domain cgroups in a [`Hierarchy`]: their paths below an instance's root, creating one
//! with its limits, listing the domains and roots present, removing an empty root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{read, write, CgroupPaths, CgroupRoot, Hierarchy};
use crate::SandboxError;

const CFS_PERIOD_US: u64 = 100_000;

/// Limits written into a new cgroup.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: u64,
    pub vcpus: u32,
    pub pids_max: u64,
}

impl Hierarchy {
    /// Paths a domain's cgroup has (or would have) in this hierarchy, below `owner`.
    pub fn paths_for(&self, owner: &CgroupRoot, name: &str) -> CgroupPaths {
        let parent = owner.as_str();
        match self {
            Hierarchy::V2 { root } => CgroupPaths::V2 {
                dir: root.join(parent).join(name),
            },
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => CgroupPaths::V1 {
                memory: memory.join(parent).join(name),
                cpu: cpu.join(parent).join(name),
                pids: pids.join(parent).join(name),
                freezer: freezer.join(parent).join(name),
            },
        }
    }

    /// Creates `<owner>/<name>` with the limits. A leftover empty cgroup of the same name is
    /// reused; one that still has processes is an error (the domain is running).
    pub fn create(
        &self,
        owner: &CgroupRoot,
        name: &str,
        limits: Limits,
    ) -> Result<CgroupPaths, SandboxError> {
        let paths = self.paths_for(owner, name);
        if let Some(pid) = paths.procs()?.first() {
            return Err(SandboxError::Cgroup {
                path: paths.dirs()[0].clone(),
                action: "create: cgroup still has processes (is the domain running?)",
                source: io::Error::other(format!("pid {pid} present")),
            });
        }
        match self {
            Hierarchy::V2 { root } => {
                let parent = root.join(owner.as_str());
                mkdir(&parent)?;
                let enable = "+memory +cpu +pids";
                write(&root.join("cgroup.subtree_control"), enable)?;
                write(&parent.join("cgroup.subtree_control"), enable)?;
            }
            Hierarchy::V1 { .. } => {
                for d in paths.dirs() {
                    if let Some(p) = d.parent() {
                        mkdir(p)?;
                    }
                }
            }
        }
        for d in paths.dirs() {
            mkdir(d)?;
        }
        let quota = u64::from(limits.vcpus) * CFS_PERIOD_US;
        match &paths {
            CgroupPaths::V2 { dir } => {
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                // no swap: the memory limit is the limit
                if dir.join("memory.swap.max").exists() {
                    write(&dir.join("memory.swap.max"), "0")?;
                }
                write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
            }
            CgroupPaths::V1 {
                memory, cpu, pids, ..
            } => {
                set_v1_memory(memory, limits.memory_bytes)?;
                write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
            }
        }
        Ok(paths)
    }

    /// The mount points of the hierarchy (one for v2, one per controller for v1).
    fn mount_points(&self) -> Vec<&PathBuf> {
        match self {
            Hierarchy::V2 { root } => vec![root],
            Hierarchy::V1 {
                memory,
                cpu,
                pids,
                freezer,
            } => vec![memory, cpu, pids, freezer],
        }
    }

    fn parents(&self, owner: &CgroupRoot) -> Vec<PathBuf> {
        self.mount_points()
            .into_iter()
            .map(|p| p.join(owner.as_str()))
            .collect()
    }

    /// The instance roots present (`bulkhead` and `bulkhead-*` directories, any hierarchy).
    pub fn roots(&self) -> Result<Vec<CgroupRoot>, SandboxError> {
        let mut roots = Vec::new();
        for mp in self.mount_points() {
            let entries = fs::read_dir(mp).map_err(|source| SandboxError::Cgroup {
                path: mp.clone(),
                action: "list",
                source,
            })?;
            for e in entries.flatten() {
                let Some(n) = e.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                if let Ok(r) = CgroupRoot::parse(&n) {
                    if !roots.contains(&r) {
                        roots.push(r);
                    }
                }
            }
        }
        roots.sort();
        Ok(roots)
    }

    /// Removes `owner`'s directory where it is empty (no domain cgroup left below it).
    /// Returns whether it is gone from every hierarchy.
    pub fn remove_root_if_empty(&self, owner: &CgroupRoot) -> bool {
        let mut gone = true;
        for d in self.parents(owner) {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => gone = false,
            }
        }
        gone
    }
}

/// Names of the domain cgroups below `owner` (any hierarchy). Another instance's cgroups,
/// even of the same names, are not listed.
pub fn list_domains(owner: &CgroupRoot) -> Result<Vec<String>, SandboxError> {
    let hier = Hierarchy::detect()?;
    list_domains_in(&hier, owner)
}

/// [`list_domains`] in a given hierarchy.
pub fn list_domains_in(hier: &Hierarchy, owner: &CgroupRoot) -> Result<Vec<String>, SandboxError> {
    let mut names = Vec::new();
    for parent in hier.parents(owner) {
        let entries = match fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SandboxError::Cgroup {
                    path: parent,
                    action: "list",
                    source,
                })
            }
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(n) = e.file_name().to_str() {
                    if crate::valid_name(n) && !names.iter().any(|x| x == n) {
                        names.push(n.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Every domain cgroup on the host, of every instance: (root, name). For judging whether
/// anything may still run in a uid range, whoever owns it.
pub fn list_all_domains() -> Result<Vec<(CgroupRoot, String)>, SandboxError> {
    let hier = Hierarchy::detect()?;
    let mut all = Vec::new();
    for root in hier.roots()? {
        for n in list_domains_in(&hier, &root)? {
            all.push((root.clone(), n));
        }
    }
    Ok(all)
}

fn mkdir(p: &Path) -> Result<(), SandboxError> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(SandboxError::Cgroup {
            path: p.to_path_buf(),
            action: "mkdir",
            source,
        }),
    }
}

/// Sets memory and memory+swap (where swap accounting exists) of a v1 memory cgroup to
/// `bytes`. The kernel keeps `memory.limit_in_bytes <= memory.memsw.limit_in_bytes` at every
/// step and answers EINVAL to a write that would break it, and a reused leftover cgroup holds
/// the limits of its previous run: when raising, memsw goes first; when lowering, memory.
fn set_v1_memory(dir: &Path, bytes: u64) -> Result<(), SandboxError> {
    let mem = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let value = bytes.to_string();
    if !memsw.exists() {
        return write(&mem, &value);
    }
    let current: u64 = read(&mem)?
        .trim()
        .parse()
        .map_err(|e| SandboxError::Cgroup {
            path: mem.clone(),
            action: "parse current limit",
            source: io::Error::other(format!("{e}")),
        })?;
    if bytes > current {
        write(&memsw, &value)?;
        write(&mem, &value)
    } else {
        write(&mem, &value)?;
        write(&memsw, &value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::hierarchy::V1_CONTROLLERS;
    use crate::read_small;

    #[test]
    fn paths_layout() {
        let h = Hierarchy::V2 {
            root: "/sys/fs/cgroup".into(),
        };
        let sys = CgroupRoot::system();
        assert_eq!(
            h.paths_for(&sys, "work"),
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead/work".into()
            }
        );
        let json = serde_json::to_string(&h.paths_for(&sys, "work")).expect("json");
        assert!(json.contains("\"version\":\"v2\""), "{json}");
        let other = CgroupRoot::instance("t1").expect("root");
        assert_eq!(
            h.paths_for(&other, "work"),
            CgroupPaths::V2 {
                dir: "/sys/fs/cgroup/bulkhead-t1/work".into()
            }
        );
    }

    /// Listing looks below one root only; the roots present are found.
    #[test]
    fn listing_is_per_root() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            vcpus: 1,
            pids_max: 16,
        };
        let t = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::V2 {
            root: t.path().to_path_buf(),
        };
        let sys = CgroupRoot::system();
        let mine = CgroupRoot::instance("mine").expect("root");
        h.create(&sys, "work", limits).expect("create");
        h.create(&mine, "work", limits).expect("create");
        h.create(&mine, "other", limits).expect("create");
        fs::create_dir(t.path().join("unrelated")).expect("mkdir");
        assert_eq!(list_domains_in(&h, &sys).expect("list"), ["work"]);
        assert_eq!(list_domains_in(&h, &mine).expect("list"), ["other", "work"]);
        assert_eq!(h.roots().expect("roots"), [sys.clone(), mine.clone()]);
        assert!(
            !h.remove_root_if_empty(&mine),
            "removed a root with domains in it"
        );
    }

    /// The knob values written for each layout. Plain directories stand in for cgroupfs here
    /// because the build hosts cannot mount a v2 hierarchy with controllers; the real v1 path
    /// is exercised by the integration tests.
    #[test]
    fn knobs_written_v2_and_v1() {
        let limits = Limits {
            memory_bytes: 256 << 20,
            vcpus: 2,
            pids_max: 500,
        };
        let t = tempfile::tempdir().expect("tempdir");
        let h = Hierarchy::V2 {
            root: t.path().to_path_buf(),
        };
        let p = h
            .create(&CgroupRoot::system(), "dom", limits)
            .expect("create v2");
        let dir = t.path().join("bulkhead/dom");
        assert_eq!(p, CgroupPaths::V2 { dir: dir.clone() });
        let rd = |f: &Path| fs::read_to_string(f).expect("read knob");
        assert_eq!(
            rd(&t.path().join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(
            rd(&t.path().join("bulkhead/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(rd(&dir.join("memory.max")), (256u64 << 20).to_string());
        assert_eq!(rd(&dir.join("cpu.max")), "200000 100000");
        assert_eq!(rd(&dir.join("pids.max")), "500");
        assert_eq!(p.memory_limit(), Some(256 << 20));
        assert_eq!(p.pids_limit(), Some(500));

        let t = tempfile::tempdir().expect("tempdir");
        let sub = |n: &str| t.path().join(n);
        for c in V1_CONTROLLERS {
            fs::create_dir(sub(c)).expect("hierarchy mount point");
        }
        let h = Hierarchy::V1 {
            memory: sub("memory"),
            cpu: sub("cpu"),
            pids: sub("pids"),
            freezer: sub("freezer"),
        };
        let p = h
            .create(&CgroupRoot::system(), "dom", limits)
            .expect("create v1");
        assert_eq!(
            rd(&sub("memory/bulkhead/dom/memory.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        assert_eq!(rd(&sub("cpu/bulkhead/dom/cpu.cfs_quota_us")), "200000");
        assert_eq!(rd(&sub("cpu/bulkhead/dom/cpu.cfs_period_us")), "100000");
        assert_eq!(rd(&sub("pids/bulkhead/dom/pids.max")), "500");
        assert!(sub("freezer/bulkhead/dom").is_dir());
        assert_eq!(p.dirs().len(), 4);
    }

    /// A leftover v1 cgroup is reused with a larger, then a smaller memory limit (the
    /// kernel refuses memory > memory+swap, so the order of the two writes matters).
    #[test]
    fn v1_reused_cgroup_memory_limit_up_and_down() {
        if !nix::unistd::Uid::effective().is_root() {
            bulkhead_test_skip::skip("not root");
            return;
        }
        let h = match Hierarchy::detect() {
            Ok(h @ Hierarchy::V1 { .. }) => h,
            other => {
                bulkhead_test_skip::skip(format_args!("no cgroup v1 memory hierarchy ({other:?})"));
                return;
            }
        };
        let name = format!("bh-test-memsw-{}", std::process::id());
        let owner = CgroupRoot::instance("unit-tests").expect("root");
        let limits = |mib: u64| Limits {
            memory_bytes: mib << 20,
            vcpus: 1,
            pids_max: 16,
        };
        let CgroupPaths::V1 { memory, .. } = h.paths_for(&owner, &name) else {
            unreachable!("v1 hierarchy gives v1 paths")
        };
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        let memsw_value = || -> Option<u64> { read_small(&memsw).ok()?.trim().parse().ok() };
        let mut had_memsw = false;
        let result = (|| -> Result<(), String> {
            for mib in [64u64, 256, 32, 512] {
                let p = h
                    .create(&owner, &name, limits(mib))
                    .map_err(|e| format!("{mib} MiB: {e}"))?;
                if p.memory_limit() != Some(mib << 20) {
                    return Err(format!("{mib} MiB: memory limit {:?}", p.memory_limit()));
                }
                had_memsw = memsw.exists();
                if had_memsw && memsw_value() != Some(mib << 20) {
                    return Err(format!("{mib} MiB: memsw limit {:?}", memsw_value()));
                }
            }
            Ok(())
        })();
        h.paths_for(&owner, &name)
            .remove()
            .expect("remove test cgroup");
        h.remove_root_if_empty(&owner);
        if !had_memsw {
            println!("note: no swap accounting here; only memory.limit_in_bytes was checked");
        }
        result.expect("reused cgroup limits");
    }
}
