//! Reading policy directories and files, with includes and limits.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Diagnostic, ErrorKind};
use crate::rule::{parse_legacy_fields, parse_rule_fields, parse_service_argument, Location, Rule};

/// Explicit bounds on what the loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest policy file, in bytes.
    pub max_file_bytes: u64,
    /// Longest line, in bytes.
    pub max_line_bytes: usize,
    /// Most rules in the whole policy.
    pub max_rules: usize,
    /// Deepest `!include` nesting (a top-level file is depth 0).
    pub max_include_depth: usize,
    /// Most files read in one load, counting every include (stops include fan-out).
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 1024 * 1024,
            max_line_bytes: 4096,
            max_rules: 100_000,
            max_include_depth: 16,
            max_files: 4096,
        }
    }
}

/// The file name suffix of policy files.
pub const POLICY_SUFFIX: &str = ".policy";

/// What changes when a file or directory changes; `None` when it is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Every path the last load looked at, with its state then.
pub(crate) type Fingerprint = Vec<(PathBuf, Option<Stamp>)>;

/// What a line of a file is parsed as.
#[derive(Clone)]
enum Mode {
    /// The 4.1+ format.
    Normal,
    /// A legacy per-service file from `!include-service`.
    Service {
        service: Option<String>,
        argument: Option<String>,
    },
}

/// Accumulates rules and diagnostics over one load.
pub(crate) struct Loader {
    limits: Limits,
    pub(crate) rules: Vec<Rule>,
    pub(crate) diagnostics: Vec<Diagnostic>,
    pub(crate) fingerprint: Fingerprint,
    /// Canonical paths of the files being loaded (the include chain).
    stack: Vec<PathBuf>,
    files_read: usize,
    rules_limit_hit: bool,
    files_limit_hit: bool,
}

fn valid_file_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'_' | b'.' | b'-'))
}

impl Loader {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            rules: Vec::new(),
            diagnostics: Vec::new(),
            fingerprint: Vec::new(),
            stack: Vec::new(),
            files_read: 0,
            rules_limit_hit: false,
            files_limit_hit: false,
        }
    }

    fn error(&mut self, file: &Path, line: usize, kind: ErrorKind) {
        self.diagnostics.push(Diagnostic::new(file, line, kind));
    }

    /// The `.policy` files of `dir` as Qubes chooses them: regular files (symlinks
    /// followed) whose name ends in `.policy` and does not start with `.`; any such name
    /// with a character outside `0-9 a-z _ . -` is an error. Returns (name, path) pairs.
    fn list_dir(&mut self, dir: &Path, report_at: (&Path, usize)) -> Vec<(String, PathBuf)> {
        self.fingerprint.push((dir.to_path_buf(), stamp(dir)));
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.error(
                    report_at.0,
                    report_at.1,
                    ErrorKind::Io {
                        path: dir.to_path_buf(),
                        message: e.to_string(),
                    },
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.error(
                        report_at.0,
                        report_at.1,
                        ErrorKind::Io {
                            path: dir.to_path_buf(),
                            message: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            let raw = entry.file_name();
            let path = entry.path();
            let bytes = raw.as_encoded_bytes();
            if bytes.starts_with(b".") || !bytes.ends_with(POLICY_SUFFIX.as_bytes()) {
                continue;
            }
            // Qubes' is_file(): follows symlinks; anything else is silently skipped.
            if !fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
                continue;
            }
            match raw.to_str() {
                Some(name) if valid_file_name(name) => out.push((name.to_owned(), path)),
                _ => {
                    let shown = raw.to_string_lossy().into_owned();
                    self.error(&path, 0, ErrorKind::InvalidFilename(shown));
                }
            }
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out
    }

    /// Load the top-level directories: files merged by name (the first directory that has
    /// a name wins), then read in C-locale name order. Missing optional directories are
    /// skipped; a missing required one is an error.
    pub(crate) fn load_dirs(&mut self, dirs: &[(PathBuf, bool)]) {
        let mut chosen: Vec<(String, PathBuf)> = Vec::new();
        for (dir, required) in dirs {
            if !required && !dir.exists() {
                self.fingerprint.push((dir.clone(), None));
                continue;
            }
            for (name, path) in self.list_dir(dir, (dir, 0)) {
                if !chosen.iter().any(|(n, _)| *n == name) {
                    chosen.push((name, path));
                }
            }
        }
        chosen.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (_, path) in chosen {
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            self.load_top_file(&path, &base);
        }
    }

    fn load_top_file(&mut self, path: &Path, base: &Path) {
        match fs::canonicalize(path) {
            Ok(canon) => self.load_file(path, &canon, Some(base), Mode::Normal),
            Err(e) => self.error(
                path,
                0,
                ErrorKind::Io {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                },
            ),
        }
    }

    /// Read a file, bounded by the size limit.
    fn read_bounded(&mut self, path: &Path) -> Option<Vec<u8>> {
        self.fingerprint.push((path.to_path_buf(), stamp(path)));
        let io_err = |e: std::io::Error| ErrorKind::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.error(path, 0, io_err(e));
                return None;
            }
        };
        let limit = self.limits.max_file_bytes;
        let mut buf = Vec::new();
        if let Err(e) = (&mut f).take(limit.saturating_add(1)).read_to_end(&mut buf) {
            self.error(path, 0, io_err(e));
            return None;
        }
        if buf.len() as u64 > limit {
            let size = f
                .metadata()
                .map(|m| m.len())
                .unwrap_or(buf.len() as u64)
                .max(buf.len() as u64);
            self.error(path, 0, ErrorKind::FileTooLarge { size, limit });
            return None;
        }
        Some(buf)
    }

    /// Parse `text` as if it were the file `label` (no file system access unless `base` is
    /// given, which enables includes relative to it).
    pub(crate) fn load_text(&mut self, label: &Path, text: &[u8], base: Option<&Path>) {
        self.stack.push(label.to_path_buf());
        self.parse_lines(label, text, base, &Mode::Normal);
        self.stack.pop();
    }

    fn load_file(&mut self, shown: &Path, canon: &Path, base: Option<&Path>, mode: Mode) {
        if self.files_read >= self.limits.max_files {
            if !self.files_limit_hit {
                self.files_limit_hit = true;
                self.error(shown, 0, ErrorKind::TooManyFiles(self.limits.max_files));
            }
            return;
        }
        self.files_read += 1;
        let Some(text) = self.read_bounded(shown) else {
            return;
        };
        self.stack.push(canon.to_path_buf());
        self.parse_lines(shown, &text, base, &mode);
        self.stack.pop();
    }

    fn parse_lines(&mut self, file: &Path, text: &[u8], base: Option<&Path>, mode: &Mode) {
        let file_arc = Arc::new(file.to_path_buf());
        for (idx, raw) in text.split(|b| *b == b'\n').enumerate() {
            let lineno = idx + 1;
            if raw.len() > self.limits.max_line_bytes {
                self.error(
                    file,
                    lineno,
                    ErrorKind::LineTooLong {
                        len: raw.len(),
                        limit: self.limits.max_line_bytes,
                    },
                );
                continue;
            }
            let Ok(line) = std::str::from_utf8(raw) else {
                self.error(file, lineno, ErrorKind::NotUtf8);
                continue;
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rewritten;
            let line = match mode {
                Mode::Normal => line,
                Mode::Service { .. } => {
                    rewritten = line
                        .replace("$include:", "!include ")
                        .replace('$', "@")
                        .replace(',', " ");
                    rewritten.as_str()
                }
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with('!') {
                self.directive(file, lineno, &fields, base, mode);
                continue;
            }
            let body = match mode {
                Mode::Normal => parse_rule_fields(&fields),
                Mode::Service { service, argument } => {
                    parse_legacy_fields(service, argument, &fields)
                }
            };
            match body {
                Ok(b) => self.push_rule(
                    Rule {
                        service: b.service,
                        argument: b.argument,
                        source: b.source,
                        target: b.target,
                        action: b.action,
                        location: Location {
                            file: Arc::clone(&file_arc),
                            line: lineno,
                        },
                    },
                    file,
                    lineno,
                ),
                Err(kind) => self.error(file, lineno, kind),
            }
        }
    }

    fn push_rule(&mut self, rule: Rule, file: &Path, lineno: usize) {
        if self.rules.len() >= self.limits.max_rules {
            if !self.rules_limit_hit {
                self.rules_limit_hit = true;
                self.error(file, lineno, ErrorKind::TooManyRules(self.limits.max_rules));
            }
            return;
        }
        self.rules.push(rule);
    }

    fn directive(
        &mut self,
        file: &Path,
        lineno: usize,
        fields: &[&str],
        base: Option<&Path>,
        mode: &Mode,
    ) {
        let (directive, params) = match fields.split_first() {
            Some((d, p)) => (*d, p),
            None => return,
        };
        match (directive, mode) {
            ("!include", Mode::Normal) => {
                let [path] = params else {
                    return self.error(file, lineno, ErrorKind::DirectiveParams("!include"));
                };
                self.include_file(file, lineno, path, base, Mode::Normal);
            }
            ("!include", Mode::Service { .. }) => {
                let [path] = params else {
                    return self.error(file, lineno, ErrorKind::DirectiveParams("!include"));
                };
                self.include_file(file, lineno, path, base, mode.clone());
            }
            ("!include-dir", Mode::Normal) => {
                let [path] = params else {
                    return self.error(file, lineno, ErrorKind::DirectiveParams("!include-dir"));
                };
                self.include_dir(file, lineno, path, base);
            }
            ("!include-service", Mode::Normal) => {
                let [service, argument, path] = params else {
                    return self.error(
                        file,
                        lineno,
                        ErrorKind::DirectiveParams("!include-service"),
                    );
                };
                match parse_service_argument(service, argument) {
                    Ok((service, argument)) => self.include_file(
                        file,
                        lineno,
                        path,
                        base,
                        Mode::Service { service, argument },
                    ),
                    Err(kind) => self.error(file, lineno, kind),
                }
            }
            ("!compat-4.0", Mode::Normal) => {
                self.error(file, lineno, ErrorKind::Compat40Unsupported)
            }
            (other, _) => self.error(file, lineno, ErrorKind::InvalidDirective(other.to_owned())),
        }
    }

    /// Resolve an include path: absolute as given, relative against `base` (the directory
    /// of the top-level policy file the include chain started from, as Qubes does).
    fn resolve(
        &mut self,
        file: &Path,
        lineno: usize,
        path: &str,
        base: Option<&Path>,
    ) -> Option<PathBuf> {
        let Some(base) = base else {
            self.error(file, lineno, ErrorKind::IncludeUnavailable);
            return None;
        };
        if self.stack.len() > self.limits.max_include_depth {
            self.error(
                file,
                lineno,
                ErrorKind::IncludeTooDeep(self.limits.max_include_depth),
            );
            return None;
        }
        Some(base.join(path))
    }

    fn include_file(
        &mut self,
        file: &Path,
        lineno: usize,
        path: &str,
        base: Option<&Path>,
        mode: Mode,
    ) {
        let Some(joined) = self.resolve(file, lineno, path, base) else {
            return;
        };
        let canon = match fs::canonicalize(&joined) {
            Ok(c) if c.is_file() => c,
            _ => {
                self.fingerprint.push((joined.clone(), stamp(&joined)));
                return self.error(file, lineno, ErrorKind::NotAFile(joined));
            }
        };
        if self.stack.contains(&canon) {
            return self.error(file, lineno, ErrorKind::IncludeCycle(canon));
        }
        if joined != canon {
            // A symlink: its retargeting must trigger a reload too.
            self.fingerprint.push((joined.clone(), stamp(&joined)));
        }
        self.load_file(&canon.clone(), &canon, base, mode);
    }

    fn include_dir(&mut self, file: &Path, lineno: usize, path: &str, base: Option<&Path>) {
        let Some(joined) = self.resolve(file, lineno, path, base) else {
            return;
        };
        let canon = match fs::canonicalize(&joined) {
            Ok(c) if c.is_dir() => c,
            _ => {
                self.fingerprint.push((joined.clone(), stamp(&joined)));
                return self.error(file, lineno, ErrorKind::NotADirectory(joined));
            }
        };
        let files = self.list_dir(&canon, (file, lineno));
        if files.is_empty() {
            tracing::warn!(dir = %canon.display(), "{}:{}: !include-dir of a directory with no policy files", file.display(), lineno);
        }
        for (_, p) in files {
            let pcanon = match fs::canonicalize(&p) {
                Ok(c) => c,
                Err(e) => {
                    self.error(
                        file,
                        lineno,
                        ErrorKind::Io {
                            path: p.clone(),
                            message: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            if self.stack.contains(&pcanon) {
                self.error(file, lineno, ErrorKind::IncludeCycle(pcanon));
                continue;
            }
            self.load_file(&p, &pcanon, base, Mode::Normal);
        }
    }
}
