//! The user commands' logic (the binaries only parse arguments and print).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::call::{call_failure, spawn_call, ClientError};
use crate::filecopy::{self, Answer, SendSummary};

/// Service names.
pub const SERVICE_FILECOPY: &str = "bulkhead.Filecopy";
pub const SERVICE_OPEN_IN_VM: &str = "bulkhead.OpenInVM";
pub const SERVICE_OPEN_URL: &str = "bulkhead.OpenURL";

/// Copies at least this large show progress on stderr.
pub const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// Prints progress lines to stderr at most every half second (`\r` on a terminal).
pub struct ProgressPrinter {
    prog: &'static str,
    last: Option<Instant>,
    tty: bool,
    printed: bool,
}

impl ProgressPrinter {
    pub fn new(prog: &'static str) -> Self {
        ProgressPrinter {
            prog,
            last: None,
            tty: std::io::stderr().is_terminal(),
            printed: false,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if total < PROGRESS_MIN_BYTES {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(500))
            && done != total
        {
            return;
        }
        self.last = Some(now);
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let pct = done.saturating_mul(100) / total.max(1);
        let end = if self.tty { "\r" } else { "\n" };
        eprint!(
            "{}: sent {:.1} MiB of {:.1} MiB ({pct}%){end}",
            self.prog,
            mib(done),
            mib(total)
        );
        self.printed = true;
    }

    pub fn finish(&self) {
        if self.printed && self.tty {
            eprintln!();
        }
    }
}

/// Result of a successful copy.
#[derive(Debug)]
pub struct CopyDone {
    pub sent: SendSummary,
    /// Sources that could not be removed after a move (with why).
    pub not_removed: Vec<String>,
}

/// `bulkhead-copy[-to-vm]` / `bulkhead-move[-to-vm]`: scans, sends through `bulkhead-call`,
/// checks the receiver's answer; for a move, removes exactly what was sent, and only after
/// the receiver confirmed everything.
pub fn copy_files(
    prog: &'static str,
    target: &str,
    files: &[PathBuf],
    remove_sources: bool,
) -> Result<CopyDone, ClientError> {
    let plan = filecopy::scan(files)?;
    let mut child = spawn_call(target, SERVICE_FILECOPY)?;
    let stdout = child.stdout.take();
    // The answer is read concurrently: the receiver may answer (error) while we still write.
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(out) = stdout {
            let _ = out.take(64 * 1024).read_to_end(&mut buf);
        }
        buf
    });
    let mut progress = ProgressPrinter::new(prog);
    let sent = match child.stdin.take() {
        Some(stdin) => {
            let mut w = std::io::BufWriter::with_capacity(128 * 1024, stdin);
            let r = filecopy::send(&plan, &mut w, &mut |d, t| progress.update(d, t));
            let r = r.and_then(|s| {
                w.flush()
                    .map_err(|e| filecopy::FilecopyError::io("sending", "the stream", e))?;
                Ok(s)
            });
            drop(w); // EOF for the receiver (or an abort without end marker)
            r
        }
        None => Err(filecopy::FilecopyError::io(
            "sending",
            "the stream",
            std::io::Error::other("no pipe to bulkhead-call"),
        )),
    };
    progress.finish();
    let status = child
        .wait()
        .map_err(|e| ClientError::Other(format!("waiting for bulkhead-call: {e}")))?;
    let answer_raw = reader.join().unwrap_or_default();
    if let Some(e) = call_failure(target, status) {
        return Err(e);
    }
    let answer = filecopy::parse_answer(&answer_raw);
    let (sent, answer) = match (sent, answer) {
        // a local cause (a file changed, a special file) explains the receiver's complaint
        (Err(e @ filecopy::FilecopyError::Unsendable { .. }), _) => return Err(e.into()),
        (_, Ok(Answer::Error(msg))) => return Err(filecopy::FilecopyError::Remote(msg).into()),
        (Err(e), _) => return Err(e.into()),
        (Ok(s), Err(e)) => {
            return Err(ClientError::Other(format!(
                "{e} (service exit status: {status}); sources kept (sent {s:?})"
            )))
        }
        (Ok(s), Ok(Answer::Ok(got))) => (s, got),
    };
    if answer != sent {
        return Err(ClientError::Other(format!(
            "the receiver confirmed {answer:?} but {sent:?} was sent; sources kept"
        )));
    }
    if !status.success() {
        return Err(ClientError::Other(format!(
            "the receiving service exited with {status}; sources kept"
        )));
    }
    let not_removed = if remove_sources {
        remove_sent(&plan)
    } else {
        Vec::new()
    };
    Ok(CopyDone { sent, not_removed })
}

/// Removes what a plan sent, deepest first; a directory that gained entries since the scan
/// is left (and reported), nothing not sent is ever removed.
fn remove_sent(plan: &filecopy::Plan) -> Vec<String> {
    let mut failed = Vec::new();
    for e in plan.entries.iter().rev() {
        let r = match e.kind {
            filecopy::EntryKind::Dir => std::fs::remove_dir(&e.source),
            _ => std::fs::remove_file(&e.source),
        };
        if let Err(err) = r {
            failed.push(format!("{}: {err}", e.source.display()));
        }
    }
    failed
}

/// `bulkhead-open-in-vm` / `bulkhead-open-in-dvm`.
pub fn open_in_vm(
    target: &str,
    file: &std::path::Path,
) -> Result<crate::open::Opened, ClientError> {
    let mut child = spawn_call(target, SERVICE_OPEN_IN_VM)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(ClientError::Other("no pipes to bulkhead-call".into()));
    };
    let result = crate::open::client(file, stdin, stdout);
    let status = child
        .wait()
        .map_err(|e| ClientError::Other(format!("waiting for bulkhead-call: {e}")))?;
    if let Some(e) = call_failure(target, status) {
        return Err(e);
    }
    Ok(result?)
}

/// `bulkhead-open-url`.
pub fn open_url(target: &str, url: &str) -> Result<(), ClientError> {
    let url = crate::url::check_url(url).map_err(|e| ClientError::Other(e.to_string()))?;
    let mut child = spawn_call(target, SERVICE_OPEN_URL)?;
    if let Some(mut stdin) = child.stdin.take() {
        // a write error means the service is gone; its status tells why
        let _ = stdin.write_all(format!("{url}\n").as_bytes());
    }
    drop(child.stdout.take());
    let status = child
        .wait()
        .map_err(|e| ClientError::Other(format!("waiting for bulkhead-call: {e}")))?;
    if let Some(e) = call_failure(target, status) {
        return Err(e);
    }
    if !status.success() {
        return Err(ClientError::Other(format!(
            "the service in {target} could not open the URL ({status})"
        )));
    }
    Ok(())
}

fn code(n: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(n).unwrap_or(1))
}

/// The copy/move commands: runs [`copy_files`], prints the outcome, returns the exit
/// status (0 done, 126 refused by policy, 125 call failure, 1 any other error).
pub fn copy_command(
    prog: &'static str,
    target: &str,
    files: &[PathBuf],
    remove_sources: bool,
) -> std::process::ExitCode {
    match copy_files(prog, target, files, remove_sources) {
        Ok(done) => {
            tracing::info!("sent {:?}", done.sent);
            if done.not_removed.is_empty() {
                code(0)
            } else {
                for f in &done.not_removed {
                    eprintln!("{prog}: copied but not removed: {f}");
                }
                code(1)
            }
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            code(e.exit_code())
        }
    }
}

/// `bulkhead-open-in-vm` / `-dvm`: exit status as for [`copy_command`].
pub fn open_command(
    prog: &'static str,
    target: &str,
    file: &std::path::Path,
) -> std::process::ExitCode {
    match open_in_vm(target, file) {
        Ok(crate::open::Opened::Unchanged) => code(0),
        Ok(crate::open::Opened::Replaced(n)) => {
            let place = if target.starts_with("@dispvm") {
                "the disposable"
            } else {
                target
            };
            eprintln!(
                "{prog}: {} was edited in {place}; saved the new version ({n} bytes)",
                file.display()
            );
            code(0)
        }
        Err(e) => {
            eprintln!("{prog}: {e}");
            code(e.exit_code())
        }
    }
}

/// `bulkhead-open-url`: exit status as for [`copy_command`].
pub fn open_url_command(prog: &'static str, target: &str, url: &str) -> std::process::ExitCode {
    match open_url(target, url) {
        Ok(()) => code(0),
        Err(e) => {
            eprintln!("{prog}: {e}");
            code(e.exit_code())
        }
    }
}
