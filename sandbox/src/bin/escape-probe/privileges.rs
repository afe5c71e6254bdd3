//! Confinement and privileges: no-new-privs, seccomp, capabilities and the uid map as the
//! kernel reports them, and setuid files that must not raise the effective uid.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Gid, Uid};

use crate::child::drop_to;
use crate::report::Report;

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

pub(crate) fn confinement_state(r: &mut Report) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let nnp = status_field(&status, "NoNewPrivs:");
    r.line(
        "no-new-privs",
        nnp.as_deref() == Some("1"),
        format!("NoNewPrivs={nnp:?}"),
    );
    let sec = status_field(&status, "Seccomp:");
    r.line(
        "seccomp-active",
        sec.as_deref() == Some("2"),
        format!("Seccomp={sec:?}"),
    );
    // CAP_KILL(5), CAP_SETGID(6), CAP_SETUID(7) at most.
    const ALLOWED: u64 = 0xe0;
    for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "CapInh:"] {
        let v = status_field(&status, key).and_then(|h| u64::from_str_radix(&h, 16).ok());
        let ok = matches!(v, Some(bits) if bits & !ALLOWED == 0);
        r.line(
            &format!("caps-{}", key.trim_end_matches(':').to_lowercase()),
            ok,
            match v {
                Some(bits) => format!("{key} {bits:#x}"),
                None => format!("{key} unreadable"),
            },
        );
    }
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let first: Vec<u64> = map
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ok = first.len() == 3 && first[0] == 0 && first[1] != 0 && first[2] <= 65536;
    r.line(
        "uid-map-unprivileged",
        ok,
        format!("uid_map {}", map.trim()),
    );
}

pub(crate) fn setuid(r: &mut Report) {
    // A root-owned setuid copy of this binary, run as uid 1000, must not run with euid 0.
    for (name, dir) in [
        ("setuid-tmp", "/tmp"),
        ("setuid-home", "/home"),
        ("setuid-shm", "/dev/shm"),
    ] {
        let target = Path::new(dir).join("escape-suid");
        let prep = (|| -> anyhow::Result<()> {
            let _ = fs::remove_file(&target);
            fs::copy("/proc/self/exe", &target).context("copy")?;
            nix::unistd::chown(&target, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
                .context("chown")?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o4755)).context("chmod")?;
            Ok(())
        })();
        if let Err(e) = prep {
            r.line(name, true, format!("cannot plant a setuid file: {e:#}"));
            continue;
        }
        let out = run_as_user_capture(&target, 1000);
        let _ = fs::remove_file(&target);
        match out {
            Ok(text) if text.contains("euid=0") => {
                r.line(name, false, format!("setuid gave {}", text.trim()))
            }
            Ok(text) if text.contains("euid=") => r.line(
                name,
                true,
                format!("ran without privilege: {}", text.trim()),
            ),
            Ok(text) => r.line(name, true, format!("did not run: {}", text.trim())),
            Err(e) => r.line(name, true, format!("did not run: {e:#}")),
        }
    }
}

/// Forks, drops to `uid`, execs `bin whoami` with stdout to a pipe; returns what it printed.
fn run_as_user_capture(bin: &Path, uid: u32) -> anyhow::Result<String> {
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    let cbin = CString::new(bin.as_os_str().as_encoded_bytes()).context("path")?;
    let arg = c"whoami".to_owned();
    // SAFETY: single-threaded probe; the child only drops privileges, dup2s and execs.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rd);
            let ok = drop_to(uid).is_ok();
            // SAFETY: dup2 onto stdout of the child.
            unsafe { libc::dup2(wr.as_raw_fd(), 1) };
            if ok {
                let Err(e) = nix::unistd::execv(&cbin, &[cbin.clone(), arg]);
                println!("exec failed: {e}");
            } else {
                println!("could not drop to uid {uid}");
            }
            let _ = std::io::stdout().flush();
            // SAFETY: leave without running destructors.
            unsafe { libc::_exit(126) }
        }
        ForkResult::Parent { child } => {
            drop(wr);
            let mut s = String::new();
            fs::File::from(rd)
                .take(4096)
                .read_to_string(&mut s)
                .context("read")?;
            let _ = waitpid(child, None);
            Ok(s)
        }
    }
}
