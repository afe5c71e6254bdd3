//! What the dom0 desktop asks for (the domain manager and the policy editor, crate
//! dom0-manager): resource usage, application menus and launching, policy files.

use std::io::Write as _;

use bulkhead_policy::{PolicyConfig, POLICY_SUFFIX};
use bulkhead_services::xdg;

use super::*;

/// Where a domain's application menu comes from, inside its template root.
pub const APPLICATIONS_DIR: &str = "usr/share/applications";

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

    /// The applications directory of `name`'s template root. Symbolic links on the way are
    /// refused: the tree belongs to a template domain and must not point dom0 elsewhere.
    fn applications_dir(&self, name: &str) -> Result<PathBuf, Error> {
        let dn = self.name(name)?;
        self.stored(&dn)?;
        let cfg = self.load(&dn)?;
        let root = self.template_root_for(&cfg)?;
        let mut dir = root.clone();
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

    /// `ListApplications`: the application menu of `name` (from its template's
    /// `/usr/share/applications`; `NoDisplay` entries skipped), sorted by desktop id.
    pub async fn list_applications(&self, name: &str) -> Result<Vec<xdg::DesktopEntry>, Error> {
        let dir = self.applications_dir(name)?;
        blocking(move || xdg::list_applications(&dir)).await
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
