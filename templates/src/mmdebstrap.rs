//! The real root builder: mmdebstrap in mode root, format directory, on a pseudo-terminal so
//! that it draws its progress bars (which we parse), in a private mount namespace so that a
//! killed build leaves no mounts behind on the host.

use std::ffi::{CStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::MsFlags;
use nix::pty::{openpty, Winsize};
use nix::sched::CloneFlags;
use tracing::{debug, info};

use crate::error::TemplateError;
use crate::progress::{BuildProgress, OutputParser};
use crate::recipe::Recipe;
use crate::sources::host_sources_for_suite;

/// Builds a root tree for a recipe into a directory. [`Mmdebstrap`] is the real one; tests of
/// the store's file handling may inject another.
pub trait RootBuilder {
    /// Build `recipe` into `target`, which does not exist yet (its parent does). `work_dir`
    /// is the template's directory for auxiliary files. Everything worth keeping goes to
    /// `log`; progress events to `progress`.
    fn build_root(
        &self,
        recipe: &Recipe,
        target: &Path,
        work_dir: &Path,
        log: &mut dyn Write,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(), TemplateError>;
}

/// Lines of the log quoted in a build failure.
const TAIL_LINES: usize = 20;

/// mmdebstrap, driven from a recipe.
#[derive(Debug, Clone)]
pub struct Mmdebstrap {
    /// The program (default `mmdebstrap` from `PATH`).
    pub program: PathBuf,
    /// Where the host's apt configuration lives (default `/etc/apt`).
    pub etc_apt: PathBuf,
}

impl Default for Mmdebstrap {
    fn default() -> Self {
        Self {
            program: "mmdebstrap".into(),
            etc_apt: "/etc/apt".into(),
        }
    }
}

/// Quote for `sh` (values are validated already; this is belt and braces).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `--customize-hook` shell snippets for a recipe (run by mmdebstrap with `$1` = root).
pub fn customize_hooks(recipe: &Recipe) -> Vec<String> {
    let s = &recipe.spec;
    let u = &s.user;
    let mut hooks = vec![
        format!(
            "chroot \"$1\" groupadd --gid {} {}",
            u.gid,
            sh_quote(&u.name)
        ),
        format!(
            "chroot \"$1\" useradd --uid {} --gid {} --create-home --home-dir {} --shell {} {}",
            u.uid,
            u.gid,
            sh_quote(&u.home),
            sh_quote(&u.shell),
            sh_quote(&u.name)
        ),
        // The sandbox sets the real host name (the domain's name) in its UTS namespace.
        format!("printf '%s\\n' {} > \"$1/etc/hostname\"", sh_quote(&s.hostname)),
        "printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' > \"$1/etc/hosts\""
            .to_owned(),
    ];
    // The archives this tree's apt uses: what the update proxy in a net domain based on this
    // template reaches (bulkhead-updates-proxy reads it; comments in the sources skipped).
    hooks.push(
        "mkdir -p \"$1/etc/bulkhead\" && cat \"$1\"/etc/apt/sources.list \"$1\"/etc/apt/sources.list.d/*.list \"$1\"/etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' | grep -oE 'https?:/{2}[^/[:space:]]+' | sed -E 's#^https?:/{2}##' | sort -u > \"$1/etc/bulkhead/updates-proxy.allow\""
            .to_owned(),
    );
    if s.clean {
        hooks.push(
            "rm -rf \"$1\"/var/cache/apt/*.bin \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/lib/apt/lists/* \"$1\"/var/log/apt \"$1\"/var/log/dpkg.log \"$1\"/var/log/alternatives.log \"$1\"/var/cache/debconf/*-old \"$1\"/var/lib/dpkg/*-old \"$1\"/var/cache/ldconfig/aux-cache"
                .to_owned(),
        );
    }
    hooks
}

/// The full argument list (without the program) for building `recipe` into `target` with
/// the apt sources in `sources_file`.
pub fn mmdebstrap_args(recipe: &Recipe, target: &Path, sources_file: &Path) -> Vec<OsString> {
    let s = &recipe.spec;
    let mut args: Vec<OsString> = vec![
        "--mode=root".into(),
        "--format=directory".into(),
        format!("--variant={}", s.variant).into(),
        format!("--components={}", s.components.join(",")).into(),
    ];
    let packages = recipe.all_packages();
    if !packages.is_empty() {
        args.push(format!("--include={}", packages.join(",")).into());
    }
    if s.exclude_docs {
        for opt in [
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/info/*",
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/locale/*",
            "path-include=/usr/share/locale/locale.alias",
        ] {
            args.push(format!("--dpkgopt={opt}").into());
        }
    }
    for hook in customize_hooks(recipe) {
        args.push(format!("--customize-hook={hook}").into());
    }
    args.push("--".into());
    args.push(s.suite.clone().into());
    args.push(target.into());
    args.push(sources_file.into());
    args
}

fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

impl RootBuilder for Mmdebstrap {
    fn build_root(
        &self,
        recipe: &Recipe,
        target: &Path,
        work_dir: &Path,
        log: &mut dyn Write,
        progress: &mut dyn FnMut(BuildProgress),
    ) -> Result<(), TemplateError> {
        let log_path = work_dir.join("build.log");
        let log_err = |e| TemplateError::io(&log_path, "cannot write build log")(e);
        // mmdebstrap takes a deb822 file by path when its name ends in `.sources`; inside the
        // tree it becomes /etc/apt/sources.list.d/0000<basename>.
        let sources = host_sources_for_suite(&self.etc_apt, &recipe.spec.suite)?;
        let apt_dir = work_dir.join("apt");
        fs::create_dir_all(&apt_dir).map_err(TemplateError::io(&apt_dir, "cannot create"))?;
        let sources_file = apt_dir.join(format!("{}.sources", recipe.spec.suite));
        fs::write(&sources_file, &sources)
            .map_err(TemplateError::io(&sources_file, "cannot write"))?;

        let args = mmdebstrap_args(recipe, target, &sources_file);
        writeln!(
            log,
            "# apt sources ({}):\n{sources}",
            sources_file.display()
        )
        .map_err(log_err)?;
        writeln!(
            log,
            "# command: {} {}",
            self.program.display(),
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        )
        .map_err(log_err)?;
        info!(template = %recipe.name(), target = %target.display(), "running mmdebstrap");

        let winsize = Winsize {
            ws_row: 24,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&winsize), None).map_err(|source| TemplateError::Sys {
            what: "openpty for mmdebstrap's progress output".into(),
            source,
        })?;
        let slave = File::from(pty.slave);
        let out = slave
            .try_clone()
            .map_err(TemplateError::io("/dev/ptmx", "cannot dup pty"))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(slave))
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        // SAFETY: the closure runs in the forked child before exec, after std has set up
        // stdio, and only makes raw system calls (setsid, ioctl, unshare, mount with static C
        // strings): no allocation, no locks.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                // mmdebstrap reads the terminal width from /dev/tty, so the pty must be the
                // controlling terminal of its new session.
                if libc::ioctl(2, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
                nix::mount::mount(
                    None::<&CStr>,
                    c"/",
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&CStr>,
                )?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| TemplateError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        // Our copies of the slave end went into `cmd`; drop it so that reads on the master
        // end with EIO once mmdebstrap and its children are gone.
        drop(cmd);
        let mut master = File::from(pty.master);
        debug!(
            pid = child.id(),
            fd = master.as_raw_fd(),
            "mmdebstrap started"
        );
        let mut parser = OutputParser::new();
        let mut all_lines: Vec<String> = Vec::new();
        let mut buf = [0u8; 8192];
        let mut write_failed = None;
        loop {
            let n = match master.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: every slave fd is closed.
                Err(_) => break,
            };
            let (events, lines) = parser.feed(&buf[..n]);
            for line in lines {
                if write_failed.is_none() {
                    if let Err(e) = writeln!(log, "{line}") {
                        write_failed = Some(e);
                    }
                }
                all_lines.push(line);
                if all_lines.len() > 4 * TAIL_LINES {
                    all_lines.drain(..2 * TAIL_LINES);
                }
            }
            events.into_iter().for_each(&mut *progress);
        }
        let (events, lines) = parser.finish();
        for line in lines {
            let _ = writeln!(log, "{line}");
            all_lines.push(line);
        }
        events.into_iter().for_each(&mut *progress);
        let status = child
            .wait()
            .map_err(TemplateError::io(&self.program, "cannot wait for"))?;
        let _ = writeln!(log, "# {} exited: {status}", self.program.display());
        if let Some(e) = write_failed {
            return Err(log_err(e));
        }
        if !status.success() {
            return Err(TemplateError::BuildFailed {
                program: self.program.display().to_string(),
                status: status.to_string(),
                log: log_path,
                tail: tail(&all_lines),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        Recipe::load(&dir.join("debian-12.toml")).unwrap()
    }

    #[test]
    fn args_follow_the_recipe() {
        let r = recipe();
        let args: Vec<String> = mmdebstrap_args(
            &r,
            Path::new("/t/build.partial"),
            Path::new("/t/apt/bookworm.sources"),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        assert!(args.contains(&"--mode=root".to_owned()));
        assert!(args.contains(&"--format=directory".to_owned()));
        assert!(args.contains(&format!("--variant={}", r.spec.variant)));
        let inc = args.iter().find(|a| a.starts_with("--include=")).unwrap();
        for p in &r.spec.packages {
            assert!(inc.split(['=', ',']).any(|x| x == p), "{p}");
        }
        let n = args.len();
        assert_eq!(
            &args[n - 4..],
            &[
                "--",
                "bookworm",
                "/t/build.partial",
                "/t/apt/bookworm.sources"
            ]
        );
        // No mirror host is ever named by us.
        assert!(!args.iter().any(|a| a.contains("://")));
        let hooks: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--customize-hook="))
            .collect();
        assert!(hooks
            .iter()
            .any(|h| h
                .contains("useradd --uid 1000 --gid 1000 --create-home --home-dir '/home/user'")));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn failure_reports_tail_and_log() {
        // A real program that fails like mmdebstrap would: exercises the pty plumbing and
        // the error path without network.
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-mmdebstrap");
        fs::write(
            &script,
            "#!/bin/sh\n[ -t 2 ] && echo 'I: stderr is a terminal' >&2\nprintf '\\033[32mI: running apt-get update...\\033[0m\\n' >&2\nprintf '\\033[2Kupdate: 42.00 [==>  ]\\r' >&2\necho 'E: simulated failure' >&2\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let apt = d.path().join("apt-etc");
        fs::create_dir_all(&apt).unwrap();
        fs::write(
            apt.join("sources.list"),
            "deb http://mirror.invalid/debian bookworm main\n",
        )
        .unwrap();
        let b = Mmdebstrap {
            program: script,
            etc_apt: apt,
        };
        let mut log = Vec::new();
        let mut events = Vec::new();
        let err = b
            .build_root(
                &recipe(),
                &d.path().join("t"),
                d.path(),
                &mut log,
                &mut |e| events.push(e),
            )
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("exit status: 3") && msg.contains("E: simulated failure"),
            "{msg}"
        );
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("I: stderr is a terminal"), "{log}");
        assert!(log.contains("# command:"));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, BuildProgress::Percent { percent, .. } if *percent == 42.0)),
            "{events:?}"
        );
        assert!(d.path().join("apt/bookworm.sources").exists());
    }
}
