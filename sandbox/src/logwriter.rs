//! The bounded log of a domain.
//!
//! The domain init's stdout and stderr are the write end of a pipe. The read end belongs to a
//! small host process, `bulkhead-sandbox log-writer`, started by the launcher: it appends what
//! it reads to the domain's log file and, when the file would exceed [`LOG_MAX_BYTES`], renames
//! it to `<log>.old` (replacing the previous one) and starts a new file. A domain therefore
//! uses at most about `2 * LOG_MAX_BYTES` of host disk for its log, however much it writes.
//!
//! Why a process of its own, and where it lives:
//! - it does not depend on domaind: a domaind restart (or crash) leaves it running, so the
//!   domain never sees EPIPE on its stdout (a pipe read by domaind would break then);
//! - it is placed in the domain's cgroup (not domaind's), so stopping domaind's service does
//!   not kill it, and the sandbox's `kill_all`/`cleanup`/`remove_cgroup` reap it with the
//!   domain; it sets its OOM score to -1000 so the domain's memory limit never picks it;
//! - it is host root in the host's user and pid namespaces: the domain cannot see or signal
//!   it. It drops every capability once its log file is open (renaming and creating files in
//!   the root-owned log directory needs none);
//! - it exits at EOF, i.e. once every process of the domain has closed the pipe.
//!
//! The launcher opens the log file itself (so a bad path fails the start at step `log`) and
//! hands it to the writer as its stdout; the path is passed for rotation. The writer closes
//! every other descriptor it may have inherited before anything else.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest size of the domain log file before it is rotated to `<log>.old`.
pub const LOG_MAX_BYTES: u64 = 8 << 20;

/// Bytes read from the pipe at once (also the most a file can exceed the limit by).
const CHUNK: usize = 64 * 1024;

/// `<log>.old`, where the previous generation goes.
pub fn old_log_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".old");
    PathBuf::from(s)
}

/// Opens (creates) a log file for appending, refusing a symlink at its name.
pub fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Copies `input` into `log` (already open for appending, currently at `path`) until EOF,
/// rotating to `<path>.old` whenever the file would grow beyond `max_bytes`.
///
/// Write and rotation errors never stop the copy (the domain must never block on a full
/// disk): the data of that chunk is dropped and the next chunk tries again.
pub fn pump(mut input: impl Read, mut log: File, path: &Path, max_bytes: u64) -> io::Result<()> {
    let mut size = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if size > 0 && size + n as u64 > max_bytes {
            match rotate(path) {
                Ok(f) => {
                    log = f;
                    size = 0;
                }
                Err(e) => {
                    tracing::warn!(log = %path.display(), error = %e, "log rotation failed; dropping output");
                    continue;
                }
            }
        }
        match log.write_all(&buf[..n]) {
            Ok(()) => size += n as u64,
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e, "log write failed; dropping output");
                // The file may have been removed or truncated behind us: measure again.
                size = log.metadata().map(|m| m.len()).unwrap_or(size);
            }
        }
    }
}

fn rotate(path: &Path) -> io::Result<File> {
    fs::rename(path, old_log_path(path))?;
    let mut f = open_log(path)?;
    // Best effort: say where the earlier output went.
    let _ = writeln!(
        f,
        "[bulkhead: log reached its size limit; earlier output is in {}]",
        old_log_path(path).display()
    );
    Ok(f)
}

/// The whole job of `bulkhead-sandbox log-writer`: stdin is the pipe, stdout the open log.
pub fn run_stdio(path: &Path, max_bytes: u64) -> io::Result<()> {
    // Whatever else was inherited (fds domaind's callers leaked without close-on-exec, such as
    // the pipes of a Run call in flight) must not be held for the domain's lifetime: a reader
    // of such a pipe would never see EOF.
    // SAFETY: close_range only closes descriptors; none above 2 is used by this process.
    if unsafe { libc::close_range(3, libc::c_uint::MAX, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Started through /proc/self/exe, so the kernel calls it "exe": name it for ps and top.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"bulkhead-log".as_ptr(), 0, 0, 0) };
    // Never the OOM victim of the domain's memory cgroup (it holds almost no memory).
    if let Err(e) = fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "cannot set the log writer's OOM score");
    }
    drop_all_capabilities();
    // SAFETY: fds 0 and 1 were set up by the launcher (pipe read end, log file); taking
    // ownership here is the only use of them in this process.
    let (input, log) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(0), File::from_raw_fd(1))
    };
    pump(input, log, path, max_bytes)
}

/// Drops every capability (bounding, permitted, effective, inheritable, ambient) and sets
/// no_new_privs. Failures are logged: the writer works without this, only less confined.
fn drop_all_capabilities() {
    // SAFETY: prctl with constant integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "log writer: no_new_privs");
    }
    for set in [
        caps::CapSet::Bounding,
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        if let Err(e) = caps::clear(None, set) {
            tracing::warn!(error = %e, ?set, "log writer: dropping capabilities");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_stays_bounded() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("dom.log");
        fs::write(&path, "earlier run\n").expect("seed");
        let max = 100_000u64;
        // 1 MiB of numbered lines, fed through a real pipe in odd-sized writes
        let mut data = Vec::new();
        let mut i = 0u64;
        while data.len() < 1 << 20 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
            i += 1;
        }
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let feed = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            for c in feed.chunks(7919) {
                w.write_all(c).expect("write pipe");
            }
        });
        pump(File::from(r), open_log(&path).expect("open"), &path, max).expect("pump");
        writer.join().expect("writer thread");
        let cur = fs::read(&path).expect("log");
        let old = fs::read(old_log_path(&path)).expect("old log");
        assert!(cur.len() as u64 <= max + CHUNK as u64, "{}", cur.len());
        assert!(old.len() as u64 <= max + CHUNK as u64, "{}", old.len());
        // the newest output is complete at the end of the current file
        let tail = &data[data.len() - 1000..];
        assert!(cur.ends_with(tail));
        assert!(String::from_utf8_lossy(&cur).starts_with("[bulkhead: log reached"));
    }

    #[test]
    fn refuses_a_symlinked_log() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("elsewhere");
        fs::write(&target, "keep\n").expect("target");
        let link = d.path().join("dom.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(open_log(&link).is_err());
        assert_eq!(fs::read_to_string(&target).expect("target"), "keep\n");
    }
}
