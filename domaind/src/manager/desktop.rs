//! What the dom0 desktop asks for (the domain manager and the policy editor, crate
//! dom0-manager): resource usage, application menus and launching, policy files.

use std::io::Write as _;

use bulkhead_policy::{PolicyConfig, POLICY_SUFFIX};
use bulkhead_services::xdg;

use super::*;

/// Where a domain's application menu comes from, inside its template root.
pub const APPLICATIONS_DIR: &str = "usr/share/applications";

/// Icon sizes `GetApplicationIcon` looks for an icon name in, in this order, as
/// `usr/share/icons/hicolor/SIZE/apps/NAME.png` below the template root (then
/// [`ICON_PIXMAPS_DIR`]).
pub const ICON_SIZES: [&str; 7] = [
    "48x48", "64x64", "32x32", "128x128", "256x256", "24x24", "16x16",
];
/// The last place `GetApplicationIcon` looks: `NAME.png` there.
pub const ICON_PIXMAPS_DIR: &str = "usr/share/pixmaps";
/// The largest icon file `GetApplicationIcon` returns; a larger one counts as not found.
pub const MAX_ICON_BYTES: u64 = 256 * 1024;
/// The largest desktop file read (as `ListApplications`: `xdg::list_applications`).
const MAX_DESKTOP_FILE_BYTES: u64 = 1 << 20;
/// The longest icon name looked up.
const MAX_ICON_NAME: usize = 200;

/// The files (relative to a template root) that may hold the PNG of an entry's `Icon=`
/// value, in the order they are tried: an icon name (`foot`, or `foot.png`) in hicolor's
/// sizes ([`ICON_SIZES`]), then in [`ICON_PIXMAPS_DIR`]. Empty, so no icon, for a path
/// (absolute or with a `/`: never looked at), an SVG or XPM (not supported), or a name with
/// control characters or a leading dot.
pub fn icon_candidates(icon: &str) -> Vec<String> {
    let name = icon.strip_suffix(".png").unwrap_or(icon);
    let lower = name.to_ascii_lowercase();
    let usable = !name.is_empty()
        && name.len() <= MAX_ICON_NAME
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control)
        && ![".svg", ".svgz", ".xpm"]
            .iter()
            .any(|ext| lower.ends_with(ext));
    if !usable {
        return Vec::new();
    }
    ICON_SIZES
        .iter()
        .map(|size| format!("usr/share/icons/hicolor/{size}/apps/{name}.png"))
        .chain(std::iter::once(format!("{ICON_PIXMAPS_DIR}/{name}.png")))
        .collect()
}

/// A desktop id `GetApplicationIcon` reads: a plain file name ending in `.desktop`, not
/// hidden, at most 255 bytes.
fn valid_desktop_id(id: &str) -> bool {
    id.len() <= 255
        && id.len() > ".desktop".len()
        && id.ends_with(".desktop")
        && !id.starts_with('.')
        && !id.contains('/')
        && !id.contains('\0')
}

fn no_application(domain: &str, id: &str) -> Error {
    Error::InvalidArgument(format!(
        "'{domain}' has no application '{id}' in its menu (see ListApplications)"
    ))
}

/// `GetApplicationIcon`'s work in the template root `root` (blocking): the entry `id` of
/// its applications directory (a regular file, no symbolic link on the way, as
/// `ListApplications` reads it), then the PNG its `Icon=` names ([`icon_candidates`], each
/// read with [`fsutil::read_in_root`](crate::fsutil::read_in_root): symbolic links resolved
/// inside the root only, regular files of at most [`MAX_ICON_BYTES`]). Empty when the entry
/// has no icon or none of the candidates is usable; why a candidate was refused is logged.
pub fn application_icon_in(root: &Path, domain: &str, id: &str) -> Result<Vec<u8>, Error> {
    use crate::fsutil::{open_root, read_in_root, Links, RootReadError};
    use std::os::fd::AsFd as _;
    let shown = root.display().to_string();
    let fd = open_root(root).map_err(io_err(&shown))?;
    let rel = format!("{APPLICATIONS_DIR}/{id}");
    let text = match read_in_root(fd.as_fd(), &rel, Links::Refused, MAX_DESKTOP_FILE_BYTES) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| no_application(domain, id))?,
        Err(RootReadError::NotFound { .. }) => return Err(no_application(domain, id)),
        Err(e) => {
            debug!(domain, app = id, error = %e, "desktop entry not read");
            return Err(no_application(domain, id));
        }
    };
    let entry = xdg::parse_menu_entry(id, &root.join(&rel), &text)
        .ok_or_else(|| no_application(domain, id))?;
    let Some(icon) = entry.icon.filter(|i| !i.is_empty()) else {
        return Ok(Vec::new());
    };
    let candidates = icon_candidates(&icon);
    if candidates.is_empty() {
        info!(domain, app = id, icon = %icon.escape_debug(), "icon not looked up: only PNG icon names are (no paths, no SVG)");
        return Ok(Vec::new());
    }
    for rel in &candidates {
        match read_in_root(fd.as_fd(), rel, Links::InRoot, MAX_ICON_BYTES) {
            Ok(bytes) => return Ok(bytes),
            Err(RootReadError::NotFound { .. }) => {}
            Err(e) => info!(domain, app = id, error = %e, "icon file not used"),
        }
    }
    debug!(domain, app = id, icon = %icon.escape_debug(), "no PNG icon found");
    Ok(Vec::new())
}

/// `RunApplication` target for a new disposable of dom0's default disposable template;
/// `@dispvm:BASE` names the disposable template.
pub const DISPVM_TARGET: &str = "@dispvm";

/// A policy file name for reading: what the policy loader reads (`[0-9a-z_.-]`, ends in
/// `.policy`, does not start with a dot), at most 255 bytes.
pub fn valid_policy_file_name(name: &str) -> bool {
    name.len() <= 255
        && name.len() > POLICY_SUFFIX.len()
        && name.ends_with(POLICY_SUFFIX)
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_digit() || b.is_ascii_lowercase() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// A policy file name the editor may write: `NN-name.policy` (two digits give the order).
pub fn writable_policy_file_name(name: &str) -> bool {
    let b = name.as_bytes();
    valid_policy_file_name(name)
        && b.len() > 3 + POLICY_SUFFIX.len()
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2] == b'-'
}

fn policy_name_error(name: &str) -> Error {
    Error::InvalidArgument(format!(
        "'{name}' is not a policy file name: use NN-name.policy (two digits, then letters, digits, '_', '.' or '-'), e.g. 30-user.policy"
    ))
}

/// Sorted `(name, path)` of the policy files in `dir` (regular files with a valid name).
fn policy_files_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let path = e.path();
            (valid_policy_file_name(&name) && path.is_file()).then_some((name, path))
        })
        .collect();
    v.sort();
    v
}

/// Open `path` read-only without following a final symbolic link.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
}

/// The applications directory below the template root `root` (of domain `name`, for
/// messages); an error when a component on the way is not a directory (a symbolic link, say).
fn applications_dir_in(root: &Path, name: &str) -> Result<PathBuf, Error> {
    let mut dir = root.to_owned();
    for part in APPLICATIONS_DIR.split('/') {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(Error::Io(format!(
                    "{} in the template of '{name}' is not a directory; its application menu is not read",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dir),
            Err(e) => return Err(Error::Io(format!("{}: {e}", dir.display()))),
        }
    }
    Ok(dir)
}

impl Manager {
    /// `GetUsage`: (memory bytes, CPU ns) of a domain's cgroup; (0, 0) when it is not
    /// running or the cgroup does not say.
    pub fn usage(&self, dn: &DomainName) -> Result<(u64, u64), Error> {
        let name = dn.as_str();
        self.known(dn)?;
        let inst = lock(&self.domains).get(name).and_then(|r| r.instance());
        let Some(inst) = inst else {
            return Ok((0, 0));
        };
        let (mem, cpu) = inst.record.usage();
        Ok((mem.unwrap_or(0), cpu.unwrap_or(0)))
    }

    /// The root of `name`'s template, where its application menu comes from.
    fn menu_root(&self, name: &str) -> Result<PathBuf, Error> {
        let dn = self.name(name)?;
        self.stored(&dn)?;
        let cfg = self.load(&dn)?;
        self.template_root_for(&cfg)
    }

    /// The applications directory of `name`'s template root. Symbolic links on the way are
    /// refused: the tree belongs to a template domain and must not point dom0 elsewhere.
    fn applications_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let root = self.menu_root(name)?;
        applications_dir_in(&root, name)
    }

    /// `ListApplications`: the application menu of `name` (from its template's
    /// `/usr/share/applications`; `NoDisplay` entries skipped), sorted by desktop id.
    pub async fn list_applications(&self, name: &str) -> Result<Vec<xdg::DesktopEntry>, Error> {
        let dir = self.applications_dir(name)?;
        blocking(move || xdg::list_applications(&dir)).await
    }

    /// `GetApplicationIcon`: the PNG icon of `desktop_id` in `name`'s application menu, from
    /// its template root only ([`application_icon_in`]); empty when it has none.
    pub async fn application_icon(&self, name: &str, desktop_id: &str) -> Result<Vec<u8>, Error> {
        if !valid_desktop_id(desktop_id) {
            return Err(Error::InvalidArgument(format!(
                "'{}' is not a desktop id (NAME.desktop)",
                desktop_id.escape_debug()
            )));
        }
        let root = self.menu_root(name)?;
        // the same checks as ListApplications
        applications_dir_in(&root, name)?;
        let (name, id) = (name.to_owned(), desktop_id.to_owned());
        blocking(move || application_icon_in(&root, &name, &id)).await?
    }

    /// `RunApplication`: start `desktop_id` detached in `target` (a domain, started first if
    /// halted; `@dispvm` a new disposable of dom0's default disposable template,
    /// `@dispvm:BASE` one of BASE). Returns once the domain runs (a disposable: once the
    /// launch began); the application's exit is only logged.
    pub async fn run_application(
        self: &Arc<Self>,
        target: &str,
        desktop_id: &str,
    ) -> Result<(), Error> {
        let base = if target == DISPVM_TARGET {
            Some(
                self.cfg
                    .dom0_default_dispvm
                    .as_ref()
                    .map(|d| d.to_string())
                    .ok_or_else(|| {
                        Error::InvalidState(
                            "dom0 has no default disposable template; pick one (@dispvm:NAME) or configure domaind's default".into(),
                        )
                    })?,
            )
        } else {
            target.strip_prefix("@dispvm:").map(str::to_owned)
        };
        let menu_of = base.as_deref().unwrap_or(target);
        let entry = self
            .list_applications(menu_of)
            .await?
            .into_iter()
            .find(|e| e.id == desktop_id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "'{menu_of}' has no application '{desktop_id}' in its menu (see ListApplications)"
                ))
            })?;
        let argv = xdg::launch_argv(&entry).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let io = null_stdio()?;
        let never: CallerGone = Box::pin(std::future::pending());
        let me = Arc::clone(self);
        let id = desktop_id.to_owned();
        match base {
            Some(base) => {
                tokio::spawn(async move {
                    match me.run_disposable(&base, argv, "", io, never).await {
                        Ok((d, code)) => {
                            info!(disposable = %d, app = %id, code, "application exited")
                        }
                        Err(e) => {
                            warn!(base = %base, app = %id, error = %e.message(), "application in a disposable failed")
                        }
                    }
                });
            }
            None => {
                let name = self.name(target)?;
                self.ensure_running(&name).await?;
                tokio::spawn(async move {
                    match me.run(&name, argv, "", io, never).await {
                        Ok(code) => info!(domain = %name, app = %id, code, "application exited"),
                        Err(e) => {
                            warn!(domain = %name, app = %id, error = %e.message(), "application failed")
                        }
                    }
                });
            }
        }
        Ok(())
    }

    fn policy_config(&self) -> PolicyConfig {
        PolicyConfig::from_paths(&self.cfg.paths)
    }

    /// `ListPolicyFiles`: `(name, path)` in evaluation order: the runtime directory's files
    /// are merged in by name (a runtime file replaces the configured one of that name), then
    /// all are read in name order.
    pub fn list_policy_files(&self) -> Vec<(String, String)> {
        let pc = self.policy_config();
        let mut by_name: std::collections::BTreeMap<String, PathBuf> =
            policy_files_in(&pc.dir).into_iter().collect();
        if let Some(rt) = &pc.runtime_dir {
            by_name.extend(policy_files_in(rt));
        }
        by_name
            .into_iter()
            .map(|(n, p)| (n, p.display().to_string()))
            .collect()
    }

    /// `ReadPolicyFile`: the text of policy file `name` (the one the policy reads, see
    /// [`list_policy_files`](Self::list_policy_files)).
    pub fn read_policy_file(&self, name: &str) -> Result<String, Error> {
        if !valid_policy_file_name(name) {
            return Err(policy_name_error(name));
        }
        let Some((_, path)) = self
            .list_policy_files()
            .into_iter()
            .find(|(n, _)| n == name)
        else {
            return Err(Error::InvalidArgument(format!(
                "there is no policy file '{name}' (see ListPolicyFiles)"
            )));
        };
        let max = self.policy_config().limits.max_file_bytes;
        let f = open_nofollow(Path::new(&path)).map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        use std::io::Read as _;
        f.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
            return Err(Error::Io(format!(
                "{path} is larger than {max} bytes, the most a policy file may have"
            )));
        }
        String::from_utf8(bytes).map_err(|_| Error::Io(format!("{path} is not UTF-8 text")))
    }

    /// `WritePolicyFile`: replace (or create) `name` in the policy directory with `text`,
    /// atomically (temporary file, fsync, rename, fsync of the directory). Refused, with
    /// every error as `file:line: message`, when the text has errors.
    pub async fn write_policy_file(&self, name: &str, text: &str) -> Result<(), Error> {
        if !writable_policy_file_name(name) {
            return Err(policy_name_error(name));
        }
        let errors = self.calls.check_text(name, text)?;
        if !errors.is_empty() {
            let lines: Vec<String> = errors
                .iter()
                .map(|(f, l, m)| format!("{f}:{l}: {m}"))
                .collect();
            return Err(Error::InvalidArgument(lines.join("\n")));
        }
        let dir = self.policy_config().dir;
        let path = dir.join(name);
        let text = text.to_owned();
        let _cl = self.config_lock.lock().await;
        blocking(move || write_atomically(&dir, &path, text.as_bytes())).await?
    }

    /// `DeletePolicyFile`: remove `name` from the policy directory (a regular file there
    /// only: a symlink is removed as a link, never followed), then sync the directory.
    pub async fn delete_policy_file(&self, name: &str) -> Result<(), Error> {
        if !writable_policy_file_name(name) {
            return Err(policy_name_error(name));
        }
        let dir = self.policy_config().dir;
        let path = dir.join(name);
        // The file in effect under that name must be this one: a runtime file of the same
        // name would keep applying after the config directory's copy went.
        if let Some((_, effective)) = self
            .list_policy_files()
            .into_iter()
            .find(|(n, _)| n == name)
        {
            if Path::new(&effective) != path {
                return Err(Error::InvalidArgument(format!(
                    "the policy file '{name}' in effect is {effective}, not the policy directory's; it cannot be deleted here"
                )));
            }
        }
        let _cl = self.config_lock.lock().await;
        let shown = path.display().to_string();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::InvalidArgument(format!(
                        "there is no policy file '{}' in {} (see ListPolicyFiles)",
                        path.file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default(),
                        dir.display()
                    )))
                }
                Err(e) => return Err(io_err(&shown)(e)),
            }
            tracing::info!(file = %shown, "policy file deleted");
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    Error::Io(format!(
                        "{shown} was deleted, but its directory could not be synced: {e}"
                    ))
                })
        })
        .await?
    }
}

/// stdin, stdout and stderr on /dev/null for a detached command.
fn null_stdio() -> Result<Stdio, Error> {
    let open = |write: bool| -> Result<OwnedFd, Error> {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(io_err("/dev/null"))
    };
    Ok(Stdio {
        stdin: open(false)?,
        stdout: open(true)?,
        stderr: open(true)?,
    })
}

/// Write `bytes` to `path` (mode 0644) through a temporary file in `dir`, so a reader sees
/// the old or the new file, never a part.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let shown = path.display().to_string();
    std::fs::create_dir_all(dir).map_err(io_err(&shown))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".policy-edit-")
        .tempfile_in(dir)
        .map_err(io_err(&shown))?;
    tmp.write_all(bytes).map_err(io_err(&shown))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(&shown))?;
    tmp.as_file().sync_all().map_err(io_err(&shown))?;
    tmp.persist(path)
        .map_err(|e| Error::Io(format!("{shown}: {}", e.error)))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&shown))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_file_names() {
        assert!(valid_policy_file_name("90-default.policy"));
        assert!(valid_policy_file_name("x.policy"));
        assert!(!valid_policy_file_name(".x.policy"));
        assert!(!valid_policy_file_name("a/b.policy"));
        assert!(!valid_policy_file_name("A.policy"));
        assert!(!valid_policy_file_name(".policy"));
        assert!(writable_policy_file_name("30-user.policy"));
        assert!(!writable_policy_file_name("x.policy"));
        assert!(!writable_policy_file_name("30-.policy"));
        assert!(!writable_policy_file_name("3-user.policy"));
        assert!(!writable_policy_file_name("30_user.policy"));
    }

    #[test]
    fn icon_names_and_where_they_are_looked_for() {
        let c = icon_candidates("foot");
        assert_eq!(c.len(), ICON_SIZES.len() + 1);
        assert_eq!(c[0], "usr/share/icons/hicolor/48x48/apps/foot.png");
        assert_eq!(c[ICON_SIZES.len()], "usr/share/pixmaps/foot.png");
        assert_eq!(icon_candidates("foot.png"), c);
        assert_eq!(
            icon_candidates("org.gnome.Foo")[1],
            "usr/share/icons/hicolor/64x64/apps/org.gnome.Foo.png"
        );
        for bad in [
            "",
            "/usr/share/pixmaps/foot.png",
            "../foot",
            "a/b",
            "foot.svg",
            "foot.SVG",
            "foot.xpm",
            ".hidden",
            "..",
            "a\nb",
        ] {
            assert!(icon_candidates(bad).is_empty(), "{bad:?}");
        }
        assert!(icon_candidates(&"x".repeat(201)).is_empty());
        assert!(valid_desktop_id("foot.desktop"));
        assert!(!valid_desktop_id("../foot.desktop"));
        assert!(!valid_desktop_id(".desktop"));
        assert!(!valid_desktop_id("foot"));
    }

    /// A fake template root: icons from hicolor and pixmaps, and what must not be returned.
    #[test]
    fn application_icons_come_from_the_template_root_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let apps = root.join(APPLICATIONS_DIR);
        let hicolor = |size: &str| root.join(format!("usr/share/icons/hicolor/{size}/apps"));
        let pixmaps = root.join(ICON_PIXMAPS_DIR);
        for d in [&apps, &hicolor("48x48"), &hicolor("32x32"), &pixmaps] {
            std::fs::create_dir_all(d).unwrap();
        }
        let entry = |id: &str, icon: Option<&str>| {
            let icon = icon.map(|i| format!("Icon={i}\n")).unwrap_or_default();
            std::fs::write(
                apps.join(id),
                format!("[Desktop Entry]\nType=Application\nName=X\n{icon}Exec=x\n"),
            )
            .unwrap();
        };
        let outside = t.path().join("outside.png");
        std::fs::write(&outside, b"host file").unwrap();

        // 48x48 comes before 32x32
        entry("both.desktop", Some("both"));
        std::fs::write(hicolor("48x48").join("both.png"), b"png 48").unwrap();
        std::fs::write(hicolor("32x32").join("both.png"), b"png 32").unwrap();
        // only in pixmaps
        entry("pix.desktop", Some("pix"));
        std::fs::write(pixmaps.join("pix.png"), b"png pix").unwrap();
        // a symlink out of the root: skipped, the pixmap is taken
        entry("escape.desktop", Some("escape"));
        std::os::unix::fs::symlink(&outside, hicolor("48x48").join("escape.png")).unwrap();
        std::fs::write(pixmaps.join("escape.png"), b"png escape").unwrap();
        // a symlink out of the root and nothing else
        entry("escape-only.desktop", Some("escape-only"));
        std::os::unix::fs::symlink(
            "../../../../../../../../outside.png",
            hicolor("48x48").join("escape-only.png"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, pixmaps.join("escape-only.png")).unwrap();
        // a symlink inside the root (Debian's firefox-esr icons are such links)
        entry("linked.desktop", Some("linked"));
        std::fs::write(pixmaps.join("real.png"), b"png real").unwrap();
        std::os::unix::fs::symlink(
            "/usr/share/pixmaps/real.png",
            hicolor("48x48").join("linked.png"),
        )
        .unwrap();
        // too large at 48x48: the 32x32 one
        entry("big.desktop", Some("big"));
        let big = vec![0u8; usize::try_from(MAX_ICON_BYTES).unwrap() + 1];
        std::fs::write(hicolor("48x48").join("big.png"), &big).unwrap();
        std::fs::write(hicolor("32x32").join("big.png"), b"png big 32").unwrap();
        entry("big-only.desktop", Some("big-only"));
        std::fs::write(pixmaps.join("big-only.png"), &big).unwrap();
        // absolute paths and SVGs are not looked up; no icon at all
        entry("abs.desktop", Some(outside.to_str().unwrap()));
        entry("rootabs.desktop", Some("/usr/share/pixmaps/pix.png"));
        entry("svg.desktop", Some("pix.svg"));
        entry("none.desktop", None);
        entry("missing.desktop", Some("missing"));
        // a desktop file that is a symlink is not an application (as in ListApplications)
        std::os::unix::fs::symlink(apps.join("pix.desktop"), apps.join("alias.desktop")).unwrap();

        let icon = |id: &str| application_icon_in(&root, "work", id);
        assert_eq!(icon("both.desktop").unwrap(), b"png 48");
        assert_eq!(icon("pix.desktop").unwrap(), b"png pix");
        assert_eq!(icon("escape.desktop").unwrap(), b"png escape");
        assert_eq!(icon("escape-only.desktop").unwrap(), b"");
        assert_eq!(icon("linked.desktop").unwrap(), b"png real");
        assert_eq!(icon("big.desktop").unwrap(), b"png big 32");
        assert_eq!(icon("big-only.desktop").unwrap(), b"");
        for id in [
            "abs.desktop",
            "rootabs.desktop",
            "svg.desktop",
            "none.desktop",
            "missing.desktop",
        ] {
            assert_eq!(icon(id).unwrap(), b"", "{id}");
        }
        for id in ["alias.desktop", "gone.desktop"] {
            assert!(matches!(icon(id), Err(Error::InvalidArgument(_))), "{id}");
        }
        assert!(matches!(
            application_icon_in(&t.path().join("no-root"), "work", "pix.desktop"),
            Err(Error::Io(_))
        ));
    }

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("30-a.policy");
        std::fs::write(&p, "old").unwrap();
        write_atomically(t.path(), &p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}
