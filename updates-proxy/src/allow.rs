//! The archives the proxy reaches: one `host` or `host:port` per line (`#` comments). A bare
//! host allows ports 80 (http) and 443 (https through CONNECT). At most [`MAX_FILE`] bytes
//! and [`MAX_ENTRIES`] entries; a bad line is an error naming it (a proxy with a list it
//! cannot read allows nothing).

use std::collections::BTreeSet;
use std::path::Path;

use crate::request::valid_host;

/// Largest list file read.
pub const MAX_FILE: u64 = 64 * 1024;
/// Most entries.
pub const MAX_ENTRIES: usize = 1024;

/// Why the list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE} bytes")]
    TooLarge { path: String },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The allowed (host, port) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: BTreeSet<(String, u16)>,
}

impl AllowList {
    /// Parses the text of a list (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, AllowError> {
        let mut entries = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| AllowError::Line {
                path: path.to_owned(),
                line: i + 1,
                reason: reason.to_owned(),
            };
            let (h, ports) = match line.rsplit_once(':') {
                Some((h, p)) => {
                    let p: u16 = p
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad("the port is not 1..=65535"))?;
                    (h, vec![p])
                }
                None => (line, vec![80, 443]),
            };
            let host = valid_host(h).ok_or_else(|| bad("not a DNS name or an IPv4 address"))?;
            for p in ports {
                entries.insert((host.clone(), p));
            }
            if entries.len() > MAX_ENTRIES {
                return Err(bad(&format!("more than {MAX_ENTRIES} entries")));
            }
        }
        Ok(Self { entries })
    }

    /// Reads the list at `path`.
    pub fn load(path: &Path) -> Result<Self, AllowError> {
        let name = path.display().to_string();
        let io = |source| AllowError::Io {
            path: name.clone(),
            source,
        };
        let md = std::fs::metadata(path).map_err(io)?;
        if md.len() > MAX_FILE {
            return Err(AllowError::TooLarge { path: name });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, &name)
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.entries.contains(&(host.to_ascii_lowercase(), port))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        let l = AllowList::parse(
            "# archives\ndeb.debian.org\n\n192.0.2.10:8000  # the test archive\n",
            "t",
        )
        .unwrap();
        assert!(l.allows("deb.debian.org", 80));
        assert!(l.allows("Deb.Debian.Org", 443));
        assert!(!l.allows("deb.debian.org", 22));
        assert!(l.allows("192.0.2.10", 8000));
        assert!(!l.allows("192.0.2.10", 80));
        assert!(!l.allows("evil.example", 80));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [("a\nb_c\n", 2), ("a:0\n", 1), ("a:x\n", 1), ("-a\n", 1)] {
            match AllowList::parse(text, "f") {
                Err(AllowError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let many: String = (0..MAX_ENTRIES + 1).map(|i| format!("h{i}:80\n")).collect();
        assert!(AllowList::parse(&many, "f").is_err());
    }
}
