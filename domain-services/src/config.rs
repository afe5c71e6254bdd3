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

use std::path::{Path, PathBuf};

use crate::filecopy::Limits;

/// Default location of the receiver's configuration.
pub const FILECOPY_CONFIG: &str = "/etc/bulkhead/filecopy.toml";
/// Environment variable overriding it.
pub const ENV_FILECOPY_CONFIG: &str = "BULKHEAD_FILECOPY_CONFIG";

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
}
