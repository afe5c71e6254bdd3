//! Which cgroup hierarchy the host offers, read from `/proc/self/mountinfo`: v2 when a
//! cgroup2 mount has memory, cpu and pids, else the four v1 controllers; and where the
//! calling process itself sits in it (`/proc/self/cgroup`).

use std::path::{Path, PathBuf};

use super::write;
use crate::{read_small, SandboxError};

pub(super) const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The hierarchy (mount points) the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    V2 {
        root: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
    },
}

struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
    super_opts: String,
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: PathBuf::from(bulkhead_fsutil::unescape_mountinfo(lf.get(4)?)),
                fstype: rf.first()?.to_string(),
                super_opts: rf.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn mounts() -> Result<Vec<MountEntry>, SandboxError> {
    let text =
        read_small(Path::new("/proc/self/mountinfo")).map_err(|source| SandboxError::Io {
            action: "read",
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    Ok(parse_mountinfo(&text))
}

fn v2_controllers(root: &Path) -> Vec<String> {
    read_small(&root.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn v1_mount<'a>(entries: &'a [MountEntry], ctrl: &str) -> Option<&'a MountEntry> {
    entries
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_opts.split(',').any(|o| o == ctrl))
}

/// Per controller: which cgroup version serves it on this host.
pub fn controller_versions() -> Vec<(String, &'static str)> {
    let entries = mounts().unwrap_or_default();
    let v2: Vec<String> = entries
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .flat_map(|m| v2_controllers(&m.mount_point))
        .collect();
    V1_CONTROLLERS
        .iter()
        .map(|c| {
            // the v2 freezer is core (cgroup.freeze): usable when the v2 hierarchy is the one in use
            let v2_in_use = V2_CONTROLLERS.iter().all(|k| v2.iter().any(|x| x == k));
            let in_v2 = v2.iter().any(|x| x == c) || (*c == "freezer" && v2_in_use);
            let version = if in_v2 {
                "v2"
            } else if v1_mount(&entries, c).is_some() {
                "v1"
            } else {
                "none"
            };
            (c.to_string(), version)
        })
        .collect()
}

impl Hierarchy {
    /// v2 when a cgroup2 mount has memory, cpu and pids; else v1 when all four v1 controllers
    /// are mounted.
    pub fn detect() -> Result<Hierarchy, SandboxError> {
        let entries = mounts()?;
        let mut v2: Vec<&MountEntry> = entries.iter().filter(|m| m.fstype == "cgroup2").collect();
        // prefer the conventional location
        v2.sort_by_key(|m| m.mount_point != Path::new("/sys/fs/cgroup"));
        for m in v2 {
            let have = v2_controllers(&m.mount_point);
            if V2_CONTROLLERS.iter().all(|c| have.iter().any(|h| h == c)) {
                return Ok(Hierarchy::V2 {
                    root: m.mount_point.clone(),
                });
            }
        }
        let find = |c: &str| {
            v1_mount(&entries, c)
                .map(|m| m.mount_point.clone())
                .ok_or_else(|| {
                    SandboxError::NoCgroups(format!(
                        "no cgroup2 mount with memory, cpu and pids, and no cgroup v1 `{c}` hierarchy"
                    ))
                })
        };
        Ok(Hierarchy::V1 {
            memory: find("memory")?,
            cpu: find("cpu")?,
            pids: find("pids")?,
            freezer: find("freezer")?,
        })
    }
}

/// The process's own cgroup path per hierarchy directory, so the launcher can step into the
/// domain cgroup (to clone the child there) and back out.
pub(crate) fn own_cgroups(hier: &Hierarchy) -> Result<Vec<PathBuf>, SandboxError> {
    let text = read_small(Path::new("/proc/self/cgroup")).map_err(|source| SandboxError::Io {
        action: "read",
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let lookup = |ctrl: Option<&str>| -> Result<String, SandboxError> {
        text.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                let ctrls = parts.next()?;
                let path = parts.next()?;
                let hit = match ctrl {
                    None => ctrls.is_empty(),
                    Some(c) => ctrls.split(',').any(|x| x == c),
                };
                hit.then(|| path.to_string())
            })
            .ok_or_else(|| {
                SandboxError::NoCgroups(format!("/proc/self/cgroup has no entry for {ctrl:?}"))
            })
    };
    let rel = |root: &Path, p: String| root.join(p.trim_start_matches('/'));
    Ok(match hier {
        Hierarchy::V2 { root } => vec![rel(root, lookup(None)?)],
        Hierarchy::V1 {
            memory,
            cpu,
            pids,
            freezer,
        } => vec![
            rel(memory, lookup(Some("memory"))?),
            rel(cpu, lookup(Some("cpu"))?),
            rel(pids, lookup(Some("pids"))?),
            rel(freezer, lookup(Some("freezer"))?),
        ],
    })
}

/// Moves the calling process into the given directories (as returned by [`own_cgroups`]).
pub(crate) fn move_self(dirs: &[PathBuf]) -> Result<(), SandboxError> {
    for d in dirs {
        write(&d.join("cgroup.procs"), "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupRoot;

    #[test]
    fn mountinfo_parsing() {
        let text =
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    50 27 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            v1_mount(&m, "cpu").map(|e| e.mount_point.clone()),
            Some(m[0].mount_point.clone())
        );
        assert!(v1_mount(&m, "cpuacct").is_some());
        assert!(v1_mount(&m, "cpuset").is_none());
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[2].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn own_cgroup_lines() {
        // whatever the layout, the launcher must find its own cgroup in each hierarchy it uses
        if let Ok(h) = Hierarchy::detect() {
            let own = own_cgroups(&h).expect("own cgroups");
            assert!(
                own.iter().all(|d| d.join("cgroup.procs").exists()),
                "{own:?}"
            );
        }
    }

    #[test]
    fn detect_on_this_host() {
        // every supported host has one of the two layouts; this one must be recognised
        match Hierarchy::detect() {
            Ok(h) => {
                let p = h.paths_for(&CgroupRoot::system(), "x");
                assert!(p.dirs().iter().all(|d| d.ends_with("bulkhead/x")));
            }
            Err(e) => {
                bulkhead_test_skip::skip(format_args!(
                    "no usable cgroup hierarchy on this host: {e}"
                ));
            }
        }
    }
}
