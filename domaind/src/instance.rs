//! `instance.json`: what domaind must know to find a running domain again after it restarts.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) right after the
//! launcher returns, so a domaind killed at any point leaves either no record (the cgroup is
//! then an orphan and is removed at the next start) or a complete one.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest instance.json we accept (it is ours, but the runtime dir could be tampered with).
pub const MAX_INSTANCE_FILE: u64 = 1 << 20;
/// Format version of the file.
pub const INSTANCE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_INSTANCE_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported version {version} (expected {INSTANCE_VERSION})")]
    Version { path: PathBuf, version: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError + '_ {
    move |source| InstanceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The record plus domaind's own bookkeeping. `R` is the backend's record
/// (`bulkhead_sandbox::SandboxRecord`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceFile<R> {
    pub version: u32,
    pub name: String,
    pub uid_slot: u32,
    /// Class at start time (a disposable is removed when found dead).
    pub class: String,
    /// Seconds since the epoch when the start began.
    pub started_at: u64,
    /// The domaind process that started it (for the logs).
    pub domaind_pid: u32,
    /// The template root the domain runs on (kept from template garbage collection);
    /// absent in records of older domainds.
    #[serde(default)]
    pub template_root: Option<PathBuf>,
    pub record: R,
}

impl<R: Serialize + DeserializeOwned> InstanceFile<R> {
    /// Write atomically to `path`.
    pub fn write(&self, path: &Path) -> Result<(), InstanceError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io(dir))?;
        let json = serde_json::to_vec_pretty(self).map_err(|source| InstanceError::Json {
            path: path.to_owned(),
            source,
        })?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        tmp.write_all(&json).map_err(io(path))?;
        tmp.as_file().sync_all().map_err(io(path))?;
        tmp.persist(path).map_err(|e| InstanceError::Io {
            path: path.to_owned(),
            source: e.error,
        })?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }

    /// Read and check a record.
    pub fn read(path: &Path) -> Result<Self, InstanceError> {
        let f = fs::File::open(path).map_err(io(path))?;
        let mut buf = Vec::new();
        f.take(MAX_INSTANCE_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(io(path))?;
        if buf.len() as u64 > MAX_INSTANCE_FILE {
            return Err(InstanceError::TooLarge {
                path: path.to_owned(),
            });
        }
        let me: Self = serde_json::from_slice(&buf).map_err(|source| InstanceError::Json {
            path: path.to_owned(),
            source,
        })?;
        if me.version != INSTANCE_VERSION {
            return Err(InstanceError::Version {
                path: path.to_owned(),
                version: me.version,
            });
        }
        Ok(me)
    }
}

/// Seconds since the epoch (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Rec {
        pid: i32,
    }

    #[test]
    fn roundtrip_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/instance.json");
        let f = InstanceFile {
            version: INSTANCE_VERSION,
            name: "work".into(),
            uid_slot: 3,
            class: "app".into(),
            started_at: 1,
            domaind_pid: 2,
            template_root: None,
            record: Rec { pid: 42 },
        };
        f.write(&p).unwrap();
        let g = InstanceFile::<Rec>::read(&p).unwrap();
        assert_eq!(g.record, Rec { pid: 42 });
        assert_eq!(g.uid_slot, 3);

        fs::write(&p, b"{not json").unwrap();
        let e = InstanceFile::<Rec>::read(&p).unwrap_err();
        assert!(e.to_string().contains("instance.json"), "{e}");

        fs::write(&p, vec![b' '; (MAX_INSTANCE_FILE + 10) as usize]).unwrap();
        assert!(matches!(
            InstanceFile::<Rec>::read(&p),
            Err(InstanceError::TooLarge { .. })
        ));
    }
}
