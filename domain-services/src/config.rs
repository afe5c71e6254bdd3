//! Receiver configuration: `/etc/bulkhead/filecopy.toml` in the receiving domain (or the
//! file named by `BULKHEAD_FILECOPY_CONFIG`), keys of [`crate::filecopy::Limits`], e.g.
//!
//! ```toml
//! max_entries = 100000
//! max_total_bytes = 17179869184
//! max_file_bytes = 17179869184
//! max_depth = 32
//! max_path_bytes = 4096
//! ```
//! A missing file means the defaults; an unreadable or invalid one is an error (the copy is
//! refused rather than run with limits the owner did not mean).
//!
//! Open-in-vm's write-back limit lives in `/etc/bulkhead/open-in-vm.toml` of the calling
//! domain (or the file named by `BULKHEAD_OPEN_CONFIG`), with the same rules:
//!
//! ```toml
//! max_edited_bytes = 1073741824   # largest edited copy written back over the original
//! ```

use std::path::{Path, PathBuf};

use crate::filecopy::Limits;

/// Largest file sent to, or accepted back from, the other domain by the open service.
pub const MAX_OPEN_BYTES: u64 = 4 << 30;

/// Default location of the receiver's configuration.
pub const FILECOPY_CONFIG: &str = "/etc/bulkhead/filecopy.toml";
/// Environment variable overriding it.
pub const ENV_FILECOPY_CONFIG: &str = "BULKHEAD_FILECOPY_CONFIG";

/// Default location of the open-in-vm client's configuration.
pub const OPEN_CONFIG: &str = "/etc/bulkhead/open-in-vm.toml";
/// Environment variable overriding it.
pub const ENV_OPEN_CONFIG: &str = "BULKHEAD_OPEN_CONFIG";
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Limits of the open-in-vm client (the domain whose file is edited elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenLimits {
    /// Largest edited copy accepted back (bytes); larger ones are refused and the original
    /// stays as it was. At most [`MAX_OPEN_BYTES`].
    pub max_edited_bytes: u64,
}

impl OpenLimits {
    /// The default write-back limit: 1 GiB.
    pub const DEFAULT_MAX_EDITED: u64 = 1 << 30;

    fn capped(self) -> Self {
        OpenLimits {
            max_edited_bytes: self.max_edited_bytes.min(MAX_OPEN_BYTES),
        }
    }
}

impl Default for OpenLimits {
    fn default() -> Self {
        OpenLimits {
            max_edited_bytes: Self::DEFAULT_MAX_EDITED,
        }
    }
}

/// Loads the open-in-vm limits from `path` (missing file: defaults).
pub fn load_open_limits(path: &Path) -> Result<OpenLimits, ConfigError> {
    use std::io::Read;
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => f
            .take(MAX_CONFIG_BYTES)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OpenLimits::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let l: OpenLimits = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(l.capped())
}

/// The open-in-vm configuration path in effect.
pub fn open_limits_path() -> PathBuf {
    std::env::var_os(ENV_OPEN_CONFIG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(OPEN_CONFIG))
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

/// Loads the limits from `path` (missing file: defaults).
pub fn load_limits(path: &Path) -> Result<Limits, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Limits::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let l: Limits = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(l.capped())
}

/// The configuration path in effect.
pub fn limits_path() -> PathBuf {
    std::env::var_os(ENV_FILECOPY_CONFIG)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FILECOPY_CONFIG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.toml");
        assert_eq!(load_limits(&p).unwrap(), Limits::default());
        std::fs::write(&p, "max_entries = 5\nmax_depth = 100000\n").unwrap();
        let l = load_limits(&p).unwrap();
        assert_eq!(l.max_entries, 5);
        assert_eq!(l.max_depth, Limits::DEPTH_CAP);
        assert_eq!(l.max_file_bytes, Limits::default().max_file_bytes);
        std::fs::write(&p, "max_entrys = 5\n").unwrap();
        assert!(load_limits(&p).unwrap_err().to_string().contains("f.toml"));
    }

    #[test]
    fn loads_open_limits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("open.toml");
        assert_eq!(load_open_limits(&p).unwrap(), OpenLimits::default());
        std::fs::write(&p, "max_edited_bytes = 10\n").unwrap();
        assert_eq!(load_open_limits(&p).unwrap().max_edited_bytes, 10);
        std::fs::write(&p, "max_edited_bytes = 18446744073709551615\n").ok();
        // out of TOML's i64 range: refused, never taken as "no limit"
        assert!(load_open_limits(&p).is_err());
        std::fs::write(&p, "max_edited_bytes = 9223372036854775807\n").unwrap();
        assert_eq!(
            load_open_limits(&p).unwrap().max_edited_bytes,
            MAX_OPEN_BYTES
        );
        std::fs::write(&p, "max_edit = 1\n").unwrap();
        assert!(load_open_limits(&p)
            .unwrap_err()
            .to_string()
            .contains("open.toml"));
    }
}
