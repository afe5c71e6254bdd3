//! The domain store: one TOML file per domain in `<config>/domains/`, written atomically.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::config::{DomainConfig, ValidationError};
use crate::name::{validate_name, DomainName, NameError};

/// Largest domain file accepted (the biggest valid file, with every feature at its limit,
/// is about 1.1 MiB).
pub const MAX_DOMAIN_FILE_BYTES: u64 = 2 * 1024 * 1024;

/// Extension of domain files.
pub const DOMAIN_FILE_EXT: &str = "toml";

/// Marker in the names of temporary files written by [`DomainStore::save`]
/// (`.<name>.toml.<random>.tmp`). Files starting with `.` are never loaded as domains.
const TMP_SUFFIX: &str = ".tmp";

/// Errors of the domain store. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}{}: {message}", path.display(), location(*line, *column, field.as_deref()))]
    Parse {
        path: PathBuf,
        /// The field serde/toml blamed (dotted path, e.g. `memory` or `features.x`).
        field: Option<String>,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    #[error("{}{}: {source}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// The line of the offending key, when it is in the file.
        line: Option<usize>,
        #[source]
        source: ValidationError,
    },
    #[error("{}: field `name`: the file is named for domain {expected:?} but says name = {found:?}; rename the file or fix the field", path.display())]
    NameMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{}: file name is not a valid domain name: {source}", path.display())]
    BadFileName {
        path: PathBuf,
        #[source]
        source: NameError,
    },
    #[error("{}: file is {size} bytes; domain files are limited to {MAX_DOMAIN_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("no such domain {name:?} (no file {})", path.display())]
    NotFound { name: String, path: PathBuf },
    #[error("cannot serialize domain {name:?}: {source}")]
    Serialize {
        name: String,
        #[source]
        source: toml::ser::Error,
    },
}

/// A domain file that could not be loaded; the other domains load regardless.
pub type LoadError = StoreError;

fn location(line: Option<usize>, column: Option<usize>, field: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    if let Some(f) = field {
        s.push_str(&format!(": field `{f}`"));
    }
    s
}

impl StoreError {
    /// The file concerned, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Parse { path, .. }
            | StoreError::Invalid { path, .. }
            | StoreError::NameMismatch { path, .. }
            | StoreError::BadFileName { path, .. }
            | StoreError::TooLarge { path, .. }
            | StoreError::NotFound { path, .. } => Some(path),
            StoreError::Serialize { .. } => None,
        }
    }

    /// The field concerned, if known.
    pub fn field(&self) -> Option<&str> {
        match self {
            StoreError::Parse { field, .. } => field.as_deref(),
            StoreError::Invalid { source, .. } => Some(&source.field),
            StoreError::NameMismatch { .. } => Some("name"),
            _ => None,
        }
    }

    /// The 1-based line concerned, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            StoreError::Parse { line, .. } | StoreError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io {
            path,
            action,
            source,
        }
    }
}

/// Extract the name between the first pair of backticks (serde's "unknown field `x`").
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Parse and validate a domain file's text. `path` is used for errors only.
pub fn parse_domain_toml(path: &Path, text: &str) -> Result<DomainConfig, StoreError> {
    let de = toml::Deserializer::new(text);
    let cfg: DomainConfig = match serde_path_to_error::deserialize(de) {
        Ok(cfg) => cfg,
        Err(err) => {
            let at = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().trim().to_owned();
            let (line, column) = match inner.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    (Some(line), Some(column))
                }
                None => (None, None),
            };
            // serde_path_to_error already ends the path with an unknown key; for a missing
            // field it reports the parent, and the field name is in the message.
            let named = if message.starts_with("missing field") {
                backticked(&message).map(|f| {
                    if at == "." || at.is_empty() {
                        f.to_owned()
                    } else {
                        format!("{at}.{f}")
                    }
                })
            } else {
                None
            };
            let field = named.or_else(|| (at != "." && !at.is_empty()).then_some(at));
            return Err(StoreError::Parse {
                path: path.to_owned(),
                field,
                line,
                column,
                message,
            });
        }
    };
    cfg.validate().map_err(|source| StoreError::Invalid {
        path: path.to_owned(),
        line: key_line(text, &source.field),
        source,
    })?;
    Ok(cfg)
}

/// The 1-based line where top-level `key` (or `KEY` of `features.KEY`) is assigned, if any.
fn key_line(text: &str, field: &str) -> Option<usize> {
    let key = field.strip_prefix("features.").unwrap_or(field);
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l.trim_start_matches('"');
            l.strip_prefix(key)
                .map(|rest| rest.trim_start_matches('"').trim_start().starts_with('='))
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

/// Read a file of at most `limit` bytes.
fn read_limited(path: &Path) -> Result<String, StoreError> {
    let file = File::open(path).map_err(StoreError::io(path, "cannot open"))?;
    let size = file
        .metadata()
        .map_err(StoreError::io(path, "cannot stat"))?
        .len();
    if size > MAX_DOMAIN_FILE_BYTES {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    file.take(MAX_DOMAIN_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(StoreError::io(path, "cannot read"))?;
    if buf.len() as u64 > MAX_DOMAIN_FILE_BYTES {
        return Err(StoreError::TooLarge {
            path: path.to_owned(),
            size: buf.len() as u64,
        });
    }
    String::from_utf8(buf).map_err(|e| StoreError::Parse {
        path: path.to_owned(),
        field: None,
        line: None,
        column: None,
        message: format!("file is not valid UTF-8: {e}"),
    })
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir, "cannot fsync directory"))
}

/// The set of domain files in one directory (`<config>/domains`).
#[derive(Debug, Clone)]
pub struct DomainStore {
    dir: PathBuf,
}

impl DomainStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<name>.toml`.
    pub fn path_for(&self, name: &DomainName) -> PathBuf {
        self.dir.join(format!("{name}.{DOMAIN_FILE_EXT}"))
    }

    /// Whether a file for `name` exists.
    pub fn exists(&self, name: &DomainName) -> bool {
        self.path_for(name).exists()
    }

    fn load_path(&self, path: &Path, expected: &str) -> Result<DomainConfig, StoreError> {
        let text = read_limited(path)?;
        let cfg = parse_domain_toml(path, &text)?;
        if cfg.name.as_str() != expected {
            return Err(StoreError::NameMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                found: cfg.name.to_string(),
            });
        }
        Ok(cfg)
    }

    /// Load one domain.
    pub fn load(&self, name: &DomainName) -> Result<DomainConfig, StoreError> {
        let path = self.path_for(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    name: name.to_string(),
                    path,
                })
            }
            Err(e) => return Err(StoreError::io(&path, "cannot stat")(e)),
            Ok(_) => {}
        }
        self.load_path(&path, name.as_str())
    }

    /// Load every `*.toml` file (names starting with `.` are skipped). A bad file gives an
    /// error naming it and does not stop the others. A missing directory means no domains.
    /// Domains come back sorted by name.
    pub fn load_all(&self) -> (Vec<DomainConfig>, Vec<LoadError>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (good, bad),
            Err(e) => {
                bad.push(StoreError::io(&self.dir, "cannot list domain directory")(e));
                return (good, bad);
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    bad.push(StoreError::io(&self.dir, "cannot list domain directory")(e));
                    continue;
                }
            };
            let path = entry.path();
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                debug!(path = %path.display(), "skipping non-UTF-8 file name");
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let Some(stem) = file_name.strip_suffix(&format!(".{DOMAIN_FILE_EXT}")) else {
                continue;
            };
            if let Err(source) = validate_name(stem) {
                bad.push(StoreError::BadFileName { path, source });
                continue;
            }
            match self.load_path(&path, stem) {
                Ok(cfg) => good.push(cfg),
                Err(e) => {
                    warn!(error = %e, "domain file not loaded");
                    bad.push(e)
                }
            }
        }
        good.sort_by(|a, b| a.name.cmp(&b.name));
        (good, bad)
    }

    /// Validate and write `cfg` atomically: temp file in the same directory, write, fsync,
    /// rename over `<name>.toml`, fsync the directory. A crash at any point leaves either the
    /// old file or the new one, never a mix.
    pub fn save(&self, cfg: &DomainConfig) -> Result<(), StoreError> {
        self.save_with_hook(cfg, &mut |_| {})
    }

    /// [`save`](Self::save) with a hook run after the temp file is written and synced and
    /// before the rename (test seam for crash tests).
    #[doc(hidden)]
    pub fn save_with_hook(
        &self,
        cfg: &DomainConfig,
        before_rename: &mut dyn FnMut(&Path),
    ) -> Result<(), StoreError> {
        let path = self.path_for(&cfg.name);
        cfg.validate().map_err(|source| StoreError::Invalid {
            path: path.clone(),
            line: None,
            source,
        })?;
        let text = cfg.to_toml().map_err(|source| StoreError::Serialize {
            name: cfg.name.to_string(),
            source,
        })?;
        fs::create_dir_all(&self.dir)
            .map_err(StoreError::io(&self.dir, "cannot create domain directory"))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.{DOMAIN_FILE_EXT}.", cfg.name))
            .suffix(TMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(StoreError::io(&self.dir, "cannot create temporary file"))?;
        let tmp_path = tmp.path().to_owned();
        tmp.write_all(text.as_bytes())
            .map_err(StoreError::io(&tmp_path, "cannot write"))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(StoreError::io(&tmp_path, "cannot chmod"))?;
        tmp.as_file()
            .sync_all()
            .map_err(StoreError::io(&tmp_path, "cannot fsync"))?;
        before_rename(&tmp_path);
        tmp.persist(&path).map_err(|e| {
            StoreError::io(&path, "cannot rename temporary file into place")(e.error)
        })?;
        fsync_dir(&self.dir)?;
        debug!(domain = %cfg.name, path = %path.display(), "domain saved");
        Ok(())
    }

    /// Remove a domain's file.
    pub fn remove(&self, name: &DomainName) -> Result<(), StoreError> {
        let path = self.path_for(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    name: name.to_string(),
                    path,
                })
            }
            Err(e) => return Err(StoreError::io(&path, "cannot remove")(e)),
        }
        fsync_dir(&self.dir)
    }

    /// Remove temporary files left by a save that crashed. Only call this while nothing
    /// else saves into the store (domaind at start-up). Returns the files removed.
    pub fn sweep_temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(StoreError::io(&self.dir, "cannot list domain directory")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&self.dir, "cannot list domain directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.')
                && name.ends_with(TMP_SUFFIX)
                && name.contains(&format!(".{DOMAIN_FILE_EXT}."))
            {
                let path = entry.path();
                fs::remove_file(&path).map_err(StoreError::io(&path, "cannot remove"))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DomainClass, Label};

    fn n(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    fn app(name: &str) -> DomainConfig {
        DomainConfig::new(n(name), DomainClass::App, Label::Blue, Some(n("debian-12"))).unwrap()
    }

    fn store() -> (tempfile::TempDir, DomainStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = DomainStore::new(dir.path().join("domains"));
        (dir, s)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_load_round_trip() {
        let (_t, s) = store();
        assert!(s.load_all().0.is_empty(), "missing dir = no domains");
        let mut c = app("work");
        c.set_property("features.a", "b").unwrap();
        s.save(&c).unwrap();
        assert!(s.exists(&c.name));
        assert_eq!(s.load(&c.name).unwrap(), c);
        c.set_property("memory", "800").unwrap();
        s.save(&c).unwrap();
        assert_eq!(s.load(&c.name).unwrap().memory, 800);
        assert_eq!(files(s.dir()), vec!["work.toml"], "no temp files left");
        let mode = fs::metadata(s.path_for(&c.name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        s.remove(&c.name).unwrap();
        assert!(!s.exists(&c.name));
        assert!(matches!(
            s.remove(&c.name),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(s.load(&c.name), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn save_refuses_invalid() {
        let (_t, s) = store();
        let mut c = app("work");
        c.memory = 1;
        let e = s.save(&c).unwrap_err();
        assert_eq!(e.field(), Some("memory"));
        assert!(!s.exists(&c.name));
    }

    /// Each malformed file: (file name, contents, expected field, text the message must contain).
    const BAD: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "badtoml.toml",
            "name = \"badtoml\"\nlabel = \"red\nclass = \"app\"\n",
            None,
            "",
        ),
        (
            "unknown.toml",
            "name = \"unknown\"\nlabel = \"red\"\nclass = \"standalone\"\ncolour = \"red\"\n",
            Some("colour"),
            "unknown field",
        ),
        (
            "wrongtype.toml",
            "name = \"wrongtype\"\nlabel = \"red\"\nclass = \"standalone\"\nmemory = \"lots\"\n",
            Some("memory"),
            "invalid type",
        ),
        (
            "badlabel.toml",
            "name = \"badlabel\"\nlabel = \"pink\"\nclass = \"standalone\"\n",
            Some("label"),
            "pink",
        ),
        (
            "badname.toml",
            "name = \"bad name\"\nlabel = \"red\"\nclass = \"standalone\"\n",
            Some("name"),
            "bad name",
        ),
        (
            "mismatch.toml",
            "name = \"other\"\nlabel = \"red\"\nclass = \"standalone\"\n",
            Some("name"),
            "other",
        ),
        (
            "notemplate.toml",
            "name = \"notemplate\"\nlabel = \"red\"\nclass = \"app\"\n",
            Some("template"),
            "needs a template",
        ),
        (
            "missinglabel.toml",
            "name = \"missinglabel\"\nclass = \"standalone\"\n",
            Some("label"),
            "missing field",
        ),
        (
            "badfeature.toml",
            "name = \"badfeature\"\nlabel = \"red\"\nclass = \"standalone\"\n[features]\nx = 3\n",
            Some("features.x"),
            "invalid type",
        ),
        (
            "bigmem.toml",
            "name = \"bigmem\"\nlabel = \"red\"\nclass = \"standalone\"\nmemory = 9999999\n",
            Some("memory"),
            "out of range",
        ),
        ("bad name.toml", "", None, "not a valid domain name"),
    ];

    #[test]
    fn malformed_files_name_file_and_field_and_others_load() {
        let (_t, s) = store();
        s.save(&app("good1")).unwrap();
        s.save(&app("good2")).unwrap();
        for (file, text, _, _) in BAD {
            fs::write(s.dir().join(file), text).unwrap();
        }
        // Ignored: not .toml, hidden, leftover temp file.
        fs::write(s.dir().join("README"), "x").unwrap();
        fs::write(s.dir().join(".good1.toml.abc.tmp"), "garbage").unwrap();
        let (good, bad) = s.load_all();
        let names: Vec<&str> = good.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["good1", "good2"]);
        assert_eq!(bad.len(), BAD.len(), "{bad:#?}");
        for (file, _, field, needle) in BAD {
            let e = bad
                .iter()
                .find(|e| e.path().is_some_and(|p| p.ends_with(file)))
                .unwrap_or_else(|| panic!("no error for {file}"));
            let msg = e.to_string();
            println!("{msg}");
            assert!(msg.contains(file), "{file}: message lacks file: {msg}");
            assert_eq!(e.field(), *field, "{file}: {msg}");
            if let Some(f) = field {
                assert!(
                    msg.contains(&format!("`{f}`")),
                    "{file}: message lacks field: {msg}"
                );
            }
            assert!(
                msg.contains(needle),
                "{file}: message lacks {needle:?}: {msg}"
            );
        }
        // Line numbers where toml knows them.
        let line_of = |file: &str| {
            bad.iter()
                .find(|e| e.path().is_some_and(|p| p.ends_with(file)))
                .and_then(|e| e.line())
        };
        assert_eq!(line_of("wrongtype.toml"), Some(4));
        assert_eq!(line_of("badlabel.toml"), Some(2));
        assert_eq!(line_of("unknown.toml"), Some(4));
        assert!(line_of("badtoml.toml").is_some());
        assert_eq!(line_of("bigmem.toml"), Some(4));
    }

    #[test]
    fn too_large_and_non_utf8() {
        let (_t, s) = store();
        fs::create_dir_all(s.dir()).unwrap();
        fs::write(
            s.dir().join("huge.toml"),
            vec![b'#'; MAX_DOMAIN_FILE_BYTES as usize + 1],
        )
        .unwrap();
        fs::write(s.dir().join("latin.toml"), b"name = \"l\xe4tin\"\n").unwrap();
        let (good, bad) = s.load_all();
        assert!(good.is_empty());
        assert_eq!(bad.len(), 2);
        assert!(bad.iter().any(|e| matches!(e, StoreError::TooLarge { .. })));
        assert!(bad.iter().any(|e| e.to_string().contains("UTF-8")));
    }

    #[test]
    fn failed_save_before_rename_keeps_old_file() {
        let (_t, s) = store();
        let old = app("work");
        s.save(&old).unwrap();
        let mut new = old.clone();
        new.memory = 2048;
        // A save whose rename fails (target replaced by a non-empty directory).
        let path = s.path_for(&new.name);
        let err = s.save_with_hook(&new, &mut |_| {
            fs::remove_file(&path).unwrap();
            fs::create_dir(&path).unwrap();
            fs::write(path.join("x"), "").unwrap();
        });
        assert!(matches!(err, Err(StoreError::Io { .. })));
        assert_eq!(files(s.dir()), vec!["work.toml"], "temp file cleaned up");
    }

    const CRASH_ENV: &str = "BULKHEAD_DOMAIN_TEST_CRASH_DIR";

    /// The child half of `crash_between_write_and_rename_keeps_old_file`: saves a new
    /// version and aborts the process right before the rename.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_ENV) else {
            return; // only meaningful when spawned by the parent test
        };
        let s = DomainStore::new(PathBuf::from(dir));
        let mut c = s.load(&n("work")).unwrap();
        c.memory = 4096;
        let _ = s.save_with_hook(&c, &mut |_| std::process::abort());
        unreachable!("the hook aborts");
    }

    #[test]
    fn crash_between_write_and_rename_keeps_old_file() {
        let (_t, s) = store();
        let old = app("work");
        s.save(&old).unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_child", "--test-threads=1"])
            .env(CRASH_ENV, s.dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "child must have crashed");
        // The old file is intact; the half-done temp file is there but never loaded.
        assert_eq!(s.load(&old.name).unwrap(), old);
        let leftovers: Vec<String> = files(s.dir())
            .into_iter()
            .filter(|f| f != "work.toml")
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        assert!(leftovers[0].starts_with(".work.toml.") && leftovers[0].ends_with(".tmp"));
        let (good, bad) = s.load_all();
        assert_eq!(good, vec![old.clone()]);
        assert!(bad.is_empty(), "{bad:?}");
        // The crashed child had written and synced the new content into the temp file.
        let tmp_text = fs::read_to_string(s.dir().join(&leftovers[0])).unwrap();
        assert!(tmp_text.contains("memory = 4096"));
        let swept = s.sweep_temp_files().unwrap();
        assert_eq!(swept.len(), 1);
        assert_eq!(files(s.dir()), vec!["work.toml"]);
    }
}
