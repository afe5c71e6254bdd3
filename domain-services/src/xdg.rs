//! The domain's default application for a MIME type, the XDG way (written here: the crates
//! for desktop entries pull in much more than this needs, and `xdg-open` is not in the
//! minimal templates and returns before the application exits).
//!
//! - MIME type of a file: by extension (`mime_guess`, the shared-mime-info globs compiled
//!   in), else `text/plain` when the first bytes are UTF-8 without NUL, else
//!   `application/octet-stream`.
//! - Default application (XDG MIME Applications spec): `mimeapps.list` in
//!   `$XDG_CONFIG_HOME`, `$XDG_CONFIG_DIRS`, `$XDG_DATA_HOME/applications`,
//!   `$XDG_DATA_DIRS/applications`, in that order; the first `[Default Applications]` entry
//!   naming an installed desktop file wins; then `[Added Associations]`; then any installed
//!   desktop file whose `MimeType=` lists the type (by file name order).
//! - Desktop files are looked up by id in `$XDG_DATA_HOME/applications` then each
//!   `$XDG_DATA_DIRS/applications`; `Hidden=true` or a missing `Exec=` skips one.
//! - `Exec=` is split and expanded per the Desktop Entry spec (quoting, `%f %F %u %U`,
//!   `%c`, `%k`, `%i`, `%%`; deprecated codes dropped; with no file code the file is
//!   appended).

use std::fs;
use std::path::{Path, PathBuf};

/// Errors finding or expanding the application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdgError {
    #[error("no application for {0} in this domain (set one in ~/.config/mimeapps.list)")]
    NoApplication(String),
    #[error("{file}: invalid Exec line: {why}")]
    BadExec { file: String, why: String },
}

/// XDG base directories.
#[derive(Debug, Clone)]
pub struct XdgDirs {
    pub config_home: PathBuf,
    pub config_dirs: Vec<PathBuf>,
    pub data_home: PathBuf,
    pub data_dirs: Vec<PathBuf>,
}

fn env_dirs(var: &str, default: &str) -> Vec<PathBuf> {
    let v = std::env::var(var).ok().filter(|v| !v.is_empty());
    v.as_deref()
        .unwrap_or(default)
        .split(':')
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

impl XdgDirs {
    /// From the environment, with the spec's defaults.
    pub fn from_env() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let abs = |var: &str, default: PathBuf| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or(default)
        };
        XdgDirs {
            config_home: abs("XDG_CONFIG_HOME", home.join(".config")),
            config_dirs: env_dirs("XDG_CONFIG_DIRS", "/etc/xdg"),
            data_home: abs("XDG_DATA_HOME", home.join(".local/share")),
            data_dirs: env_dirs("XDG_DATA_DIRS", "/usr/local/share:/usr/share"),
        }
    }

    fn mimeapps_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config_home.join("mimeapps.list")];
        v.extend(self.config_dirs.iter().map(|d| d.join("mimeapps.list")));
        v.push(self.data_home.join("applications/mimeapps.list"));
        v.extend(
            self.data_dirs
                .iter()
                .map(|d| d.join("applications/mimeapps.list")),
        );
        v
    }

    fn application_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.data_home.join("applications")];
        v.extend(self.data_dirs.iter().map(|d| d.join("applications")));
        v
    }
}

/// MIME type of a file from its name and first bytes.
pub fn mime_type(name: &str, head: &[u8]) -> String {
    if let Some(m) = mime_guess::from_path(name).first() {
        return m.essence_str().to_string();
    }
    let text = !head.contains(&0)
        && match std::str::from_utf8(head) {
            Ok(_) => true,
            // a multi-byte character cut at the end of the sample
            Err(e) => e.error_len().is_none(),
        };
    if text {
        "text/plain".into()
    } else {
        "application/octet-stream".into()
    }
}

/// Key/value pairs of one group of an ini-style file (desktop entry / mimeapps.list).
fn group<'a>(text: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim(), v.trim()));
            }
        }
    }
    out
}

/// An installed application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopEntry {
    pub id: String,
    pub path: PathBuf,
    pub name: String,
    pub exec: String,
    pub icon: Option<String>,
}

/// Reads a desktop file at most 1 MiB.
fn read_small(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    fs::read_to_string(path).ok()
}

fn load_entry(id: &str, path: &Path) -> Option<DesktopEntry> {
    let text = read_small(path)?;
    parse_entry(id, path, &text)
}

/// The application a desktop file's text describes (`id` is its file name, `path` where it
/// was read, for messages); `None` for `Hidden=true`, a `Type` other than `Application` or a
/// missing `Exec`.
pub fn parse_entry(id: &str, path: &Path, text: &str) -> Option<DesktopEntry> {
    let g = group(text, "Desktop Entry");
    let get = |k: &str| {
        g.iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, v)| v.to_string())
    };
    if get("Hidden").as_deref() == Some("true") {
        return None;
    }
    if get("Type").is_some_and(|t| t != "Application") {
        return None;
    }
    Some(DesktopEntry {
        id: id.to_string(),
        path: path.to_owned(),
        name: get("Name").unwrap_or_else(|| id.to_string()),
        exec: get("Exec").filter(|e| !e.is_empty())?,
        icon: get("Icon"),
    })
}

fn find_entry(dirs: &XdgDirs, id: &str) -> Option<DesktopEntry> {
    if id.contains('/') || !id.ends_with(".desktop") {
        return None;
    }
    dirs.application_dirs()
        .iter()
        .find_map(|d| load_entry(id, &d.join(id)))
}

fn ids(v: &str) -> impl Iterator<Item = &str> {
    v.split(';').map(str::trim).filter(|s| !s.is_empty())
}

/// The default application for `mime`.
pub fn default_application(dirs: &XdgDirs, mime: &str) -> Result<DesktopEntry, XdgError> {
    let lists: Vec<String> = dirs
        .mimeapps_files()
        .iter()
        .filter_map(|p| read_small(p))
        .collect();
    for section in ["Default Applications", "Added Associations"] {
        for text in &lists {
            for (k, v) in group(text, section) {
                if k == mime {
                    if let Some(e) = ids(v).find_map(|id| find_entry(dirs, id)) {
                        return Ok(e);
                    }
                }
            }
        }
    }
    for d in dirs.application_dirs() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".desktop"))
            .collect();
        names.sort();
        for n in names {
            if let Some(e) = find_entry(dirs, &n) {
                let Some(text) = read_small(&e.path) else {
                    continue;
                };
                let g = group(&text, "Desktop Entry");
                if g.iter()
                    .any(|(k, v)| *k == "MimeType" && ids(v).any(|m| m == mime))
                {
                    return Ok(e);
                }
            }
        }
    }
    Err(XdgError::NoApplication(mime.to_string()))
}

/// Unescapes a desktop-file string value (`\s \n \t \r \\`).
fn unescape_value(v: &str) -> String {
    let mut out = String::new();
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Splits an Exec value into arguments (spaces separate; double quotes group, inside them
/// `\"`, `` \` ``, `\$` and `\\` are escapes).
fn split_exec(v: &str, file: &str) -> Result<Vec<String>, XdgError> {
    let bad = |why: &str| XdgError::BadExec {
        file: file.to_string(),
        why: why.to_string(),
    };
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut it = v.chars();
    while let Some(c) = it.next() {
        match c {
            ' ' => {
                if have {
                    args.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            '"' => {
                have = true;
                loop {
                    match it.next() {
                        None => return Err(bad("unterminated quote")),
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some(e @ ('"' | '`' | '$' | '\\')) => cur.push(e),
                            _ => return Err(bad("invalid escape in quotes")),
                        },
                        Some(o) => cur.push(o),
                    }
                }
            }
            o => {
                have = true;
                cur.push(o);
            }
        }
    }
    if have {
        args.push(cur);
    }
    if args.is_empty() {
        return Err(bad("empty"));
    }
    Ok(args)
}

/// argv for opening `target` (a file path or URL) with `entry`.
pub fn expand_exec(entry: &DesktopEntry, target: &str) -> Result<Vec<String>, XdgError> {
    expand(entry, Some(target))
}

/// argv for starting `entry` without a file (an application menu): the file and URL field
/// codes are dropped.
pub fn launch_argv(entry: &DesktopEntry) -> Result<Vec<String>, XdgError> {
    expand(entry, None)
}

/// Most desktop files [`list_applications`] reads from one directory.
pub const MAX_LISTED_APPLICATIONS: usize = 1000;

/// The applications for a menu from one `applications` directory, sorted by id: `*.desktop`
/// regular files (symbolic links are not followed: the directory may belong to a less
/// trusted domain), at most 1 MiB each and [`MAX_LISTED_APPLICATIONS`] of them, without
/// `NoDisplay=true` entries.
pub fn list_applications(dir: &Path) -> Vec<DesktopEntry> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".desktop") && !n.starts_with('.'))
        .collect();
    names.sort();
    names.truncate(MAX_LISTED_APPLICATIONS);
    names
        .iter()
        .filter_map(|id| {
            let path = dir.join(id);
            let text = read_small_nofollow(&path)?;
            parse_menu_entry(id, &path, &text)
        })
        .collect()
}

/// [`parse_entry`], and `None` also for `NoDisplay=true` (not for menus).
pub fn parse_menu_entry(id: &str, path: &Path, text: &str) -> Option<DesktopEntry> {
    let hidden = group(text, "Desktop Entry")
        .iter()
        .any(|(k, v)| *k == "NoDisplay" && *v == "true");
    if hidden {
        return None;
    }
    parse_entry(id, path, text)
}

/// A regular file of at most 1 MiB, opened without following a symbolic link.
fn read_small_nofollow(path: &Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

fn expand(entry: &DesktopEntry, target: Option<&str>) -> Result<Vec<String>, XdgError> {
    let shown = entry.path.display().to_string();
    let raw = split_exec(&unescape_value(&entry.exec), &shown)?;
    let mut out = Vec::new();
    let mut used = false;
    for arg in raw {
        match arg.as_str() {
            "%f" | "%F" | "%u" | "%U" => {
                if let Some(t) = target {
                    out.push(t.to_string());
                }
                used = true;
                continue;
            }
            "%i" => {
                if let Some(icon) = &entry.icon {
                    out.push("--icon".into());
                    out.push(icon.clone());
                }
                continue;
            }
            "%d" | "%D" | "%n" | "%N" | "%v" | "%m" => continue,
            _ => {}
        }
        let mut s = String::new();
        let mut it = arg.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                s.push(c);
                continue;
            }
            match it.next() {
                Some('%') => s.push('%'),
                Some('f' | 'u') => {
                    s.push_str(target.unwrap_or_default());
                    used = true;
                }
                Some('c') => s.push_str(&entry.name),
                Some('k') => s.push_str(&shown),
                Some('d' | 'D' | 'n' | 'N' | 'v' | 'm') => {}
                _ => {
                    return Err(XdgError::BadExec {
                        file: shown,
                        why: format!("unknown field code in {arg:?}"),
                    })
                }
            }
        }
        out.push(s);
    }
    if let (false, Some(t)) = (used, target) {
        out.push(t.to_string());
    }
    // e.g. `Exec=%U` started without a file leaves nothing to run
    if out.first().is_none_or(|a| a.is_empty()) {
        return Err(XdgError::BadExec {
            file: shown,
            why: "no program to run".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exec: &str) -> DesktopEntry {
        DesktopEntry {
            id: "e.desktop".into(),
            path: "/x/e.desktop".into(),
            name: "Ed".into(),
            exec: exec.into(),
            icon: Some("ed".into()),
        }
    }

    #[test]
    fn exec_expansion() {
        let f = "/tmp/a b/x.txt";
        assert_eq!(expand_exec(&entry("ed %f"), f).unwrap(), ["ed", f]);
        assert_eq!(expand_exec(&entry("ed"), f).unwrap(), ["ed", f]);
        assert_eq!(
            expand_exec(&entry("ed %i --name=%c %U"), f).unwrap(),
            ["ed", "--icon", "ed", "--name=Ed", f]
        );
        assert_eq!(
            expand_exec(&entry(r#""/opt/my ed/bin" "a\"b" 100%% %k %f"#), f).unwrap(),
            ["/opt/my ed/bin", "a\"b", "100%", "/x/e.desktop", f]
        );
        assert_eq!(
            expand_exec(&entry(r"sh\s-c %f"), f).unwrap(),
            ["sh", "-c", f]
        );
        assert!(expand_exec(&entry("ed %z"), f).is_err());
        assert!(expand_exec(&entry("\"ed"), f).is_err());
        assert!(expand_exec(&entry("   "), f).is_err());
    }

    #[test]
    fn launch_without_file() {
        assert_eq!(launch_argv(&entry("ed %F")).unwrap(), ["ed"]);
        assert_eq!(
            launch_argv(&entry("ed --x=%u -n")).unwrap(),
            ["ed", "--x=", "-n"]
        );
        assert_eq!(launch_argv(&entry("ed")).unwrap(), ["ed"]);
        // found by the desktop_entry fuzz target: nothing left to run
        assert!(launch_argv(&entry("%U")).is_err());
        assert!(launch_argv(&entry("%c %f")).is_ok());
        assert!(launch_argv(&DesktopEntry {
            name: String::new(),
            ..entry("%c")
        })
        .is_err());
    }

    #[test]
    fn menu_listing() {
        let t = tempfile::tempdir().unwrap();
        let w = |id: &str, body: &str| fs::write(t.path().join(id), body).unwrap();
        w(
            "b.desktop",
            "[Desktop Entry]\nType=Application\nName=Bee\nExec=bee\nIcon=bee\n",
        );
        w(
            "a.desktop",
            "[Desktop Entry]\nType=Application\nName=Ay\nExec=ay %U\n",
        );
        w(
            "c.desktop",
            "[Desktop Entry]\nType=Application\nName=C\nExec=c\nNoDisplay=true\n",
        );
        w("d.desktop", "[Desktop Entry]\nType=Link\nName=D\nURL=x\n");
        w(
            "e.txt",
            "[Desktop Entry]\nType=Application\nName=E\nExec=e\n",
        );
        std::os::unix::fs::symlink(t.path().join("b.desktop"), t.path().join("l.desktop")).unwrap();
        let got: Vec<(String, String, Option<String>)> = list_applications(t.path())
            .into_iter()
            .map(|e| (e.id, e.name, e.icon))
            .collect();
        assert_eq!(
            got,
            [
                ("a.desktop".into(), "Ay".into(), None),
                ("b.desktop".into(), "Bee".into(), Some("bee".into())),
            ]
        );
        assert!(list_applications(&t.path().join("missing")).is_empty());
    }

    #[test]
    fn mime_types() {
        assert_eq!(mime_type("a.txt", b""), "text/plain");
        assert_eq!(mime_type("a.pdf", b""), "application/pdf");
        assert_eq!(mime_type("README", b"hello"), "text/plain");
        assert_eq!(mime_type("blob", b"\0\x01"), "application/octet-stream");
        assert_eq!(mime_type("cut", "é".as_bytes()[..1].as_ref()), "text/plain");
    }

    #[test]
    fn lookup_order() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        for d in ["cfg", "etcxdg", "data/applications", "usr/applications"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        let dirs = XdgDirs {
            config_home: p("cfg"),
            config_dirs: vec![p("etcxdg")],
            data_home: p("data"),
            data_dirs: vec![p("usr")],
        };
        let app = |dir: &str, id: &str, extra: &str| {
            fs::write(
                p(dir).join(id),
                format!("[Desktop Entry]\nType=Application\nName={id}\nExec={id} %f\n{extra}"),
            )
            .unwrap()
        };
        assert!(matches!(
            default_application(&dirs, "text/plain"),
            Err(XdgError::NoApplication(_))
        ));
        app(
            "usr/applications",
            "viewer.desktop",
            "MimeType=text/plain;image/png;\n",
        );
        assert_eq!(
            default_application(&dirs, "text/plain").unwrap().id,
            "viewer.desktop"
        );
        app("usr/applications", "sysed.desktop", "");
        fs::write(
            p("etcxdg/mimeapps.list"),
            "[Default Applications]\ntext/plain=missing.desktop;sysed.desktop\n",
        )
        .unwrap();
        assert_eq!(
            default_application(&dirs, "text/plain").unwrap().id,
            "sysed.desktop"
        );
        app("data/applications", "mine.desktop", "");
        app("data/applications", "hidden.desktop", "Hidden=true\n");
        fs::write(
            p("cfg/mimeapps.list"),
            "# user\n[Added Associations]\ntext/plain=hidden.desktop\n[Default Applications]\ntext/plain=hidden.desktop;mine.desktop;\n",
        )
        .unwrap();
        let e = default_application(&dirs, "text/plain").unwrap();
        assert_eq!(e.id, "mine.desktop");
        assert_eq!(e.path, p("data/applications/mine.desktop"));
        assert_eq!(
            default_application(&dirs, "image/png").unwrap().id,
            "viewer.desktop"
        );
    }
}
