//! The caller's side of `Run`/`RunDisposable`/`Call` through D-Bus: close-on-exec pipes
//! for the stdio descriptors, their output collected, and the common calls built on them.

use bulkhead_api::Domaind1Proxy;

use crate::TestResult;

/// The three pipes of one `Run`/`RunDisposable`/`Call` through D-Bus: stdin is fed from a
/// byte string, stdout and stderr are collected. All are close-on-exec: tests run in
/// parallel, and a process another test spawns meanwhile must not hold these pipes open.
///
/// ```no_run
/// # async fn t(p: &bulkhead_api::Domaind1Proxy<'_>) {
/// let io = bulkhead_testkit::StdioPipes::new(b"").unwrap();
/// let (i, o, e) = io.fds();
/// let code = p.run("work", &["id", "-un"], "", i, o, e).await;
/// let (stdout, stderr) = io.finish().await;
/// # }
/// ```
pub struct StdioPipes {
    stdin: std::os::fd::OwnedFd,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
    feeder: std::thread::JoinHandle<()>,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

/// A close-on-exec pipe (read end, write end): tests run in parallel, and a domaind another
/// test spawns meanwhile must not inherit this test's pipes (it would hold them open).
pub fn cloexec_pipe() -> TestResult<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

/// A thread reading `fd` to its end; joins with everything read.
pub fn collect(fd: std::os::fd::OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut v);
        v
    })
}

impl StdioPipes {
    /// Pipes whose stdin delivers `input` and then EOF.
    pub fn new(input: &[u8]) -> TestResult<Self> {
        let (in_r, in_w) = cloexec_pipe()?;
        let (out_r, out_w) = cloexec_pipe()?;
        let (err_r, err_w) = cloexec_pipe()?;
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut std::fs::File::from(in_w), &input);
        });
        Ok(Self {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
            feeder,
            out: collect(out_r),
            err: collect(err_r),
        })
    }

    /// The (stdin, stdout, stderr) descriptors to pass in the D-Bus call.
    pub fn fds(
        &self,
    ) -> (
        zbus::zvariant::Fd<'_>,
        zbus::zvariant::Fd<'_>,
        zbus::zvariant::Fd<'_>,
    ) {
        (
            zbus::zvariant::Fd::from(&self.stdin),
            zbus::zvariant::Fd::from(&self.stdout),
            zbus::zvariant::Fd::from(&self.stderr),
        )
    }

    /// After the call: closes our ends and returns (stdout, stderr) once every other holder
    /// (domaind, the domain's processes) has closed them too.
    pub async fn finish(self) -> (String, String) {
        let Self {
            stdin,
            stdout,
            stderr,
            feeder,
            out,
            err,
        } = self;
        drop((stdin, stdout, stderr));
        // Joining blocks until the pipes' last holder is gone: not on a runtime worker.
        let joined = tokio::task::spawn_blocking(move || {
            let _ = feeder.join();
            (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            )
        })
        .await
        .unwrap_or_default();
        (
            String::from_utf8_lossy(&joined.0).into_owned(),
            String::from_utf8_lossy(&joined.1).into_owned(),
        )
    }
}

/// What [`run_in`] returns: the call's result (the exit code), stdout and stderr.
#[derive(Debug)]
pub struct RunOutput {
    pub result: Result<i32, bulkhead_api::Error>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code; panics with the call's error and output if the call itself failed.
    pub fn code(&self) -> i32 {
        match &self.result {
            Ok(c) => *c,
            Err(e) => panic!(
                "Run failed: {e}\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            ),
        }
    }
}

/// D-Bus `Run` of `argv` in `domain` as `user` ("" = the default user) with `input` on stdin.
pub async fn run_in(
    p: &Domaind1Proxy<'_>,
    domain: &str,
    argv: &[&str],
    user: &str,
    input: &[u8],
) -> TestResult<RunOutput> {
    let io = StdioPipes::new(input)?;
    let (i, o, e) = io.fds();
    let result = p.run(domain, argv, user, i, o, e).await;
    let (stdout, stderr) = io.finish().await;
    Ok(RunOutput {
        result,
        stdout,
        stderr,
    })
}

/// D-Bus `BuildTemplate` of recipe `name`: builds it into the store if it is not up to date
/// there, and registers the template domain. Returns (root, progress text); the error carries
/// the progress too.
pub async fn register_template(p: &Domaind1Proxy<'_>, name: &str) -> TestResult<(String, String)> {
    let (r, w) = cloexec_pipe()?;
    let progress = collect(r);
    let res = p.build_template(name, zbus::zvariant::Fd::from(&w)).await;
    drop(w);
    let progress = tokio::task::spawn_blocking(move || progress.join().unwrap_or_default())
        .await
        .unwrap_or_default();
    let progress = String::from_utf8_lossy(&progress).into_owned();
    match res {
        Ok(root) => Ok((root, progress)),
        Err(e) => Err(format!("BuildTemplate {name}: {e}\n{progress}")),
    }
}

/// `Run` of `argv` in `domain` with empty stdin; returns (exit code, stdout, stderr).
pub async fn run_captured(
    p: &Domaind1Proxy<'_>,
    domain: &str,
    argv: &[&str],
) -> Result<(i32, String, String), bulkhead_api::Error> {
    let io = StdioPipes::new(b"").map_err(bulkhead_api::Error::Io)?;
    let (i, o, e) = io.fds();
    let res = p.run(domain, argv, "", i, o, e).await;
    let (out, err) = io.finish().await;
    res.map(|code| (code, out, err))
}

/// `sh -c script` in `domain` through `Run` (empty stdin): (exit code, stdout + stderr);
/// panics if the call fails, with the end of the domain's log (a VM's console: what its
/// kernel said when it died, which the nested harness reads for emulator failures).
pub async fn run_sh(p: &Domaind1Proxy<'_>, domain: &str, script: &str) -> (i32, String) {
    run_sh_as(p, domain, "", script).await
}

/// [`run_sh`] as `user` ("" for the domain's default user).
pub async fn run_sh_as(
    p: &Domaind1Proxy<'_>,
    domain: &str,
    user: &str,
    script: &str,
) -> (i32, String) {
    let io = StdioPipes::new(b"").expect("pipes");
    let (i, o, e) = io.fds();
    let res = p
        .run(domain, &["/bin/sh", "-c", script], user, i, o, e)
        .await;
    let (out, err) = io.finish().await;
    match res {
        Ok(code) => (code, format!("{out}{err}")),
        Err(e) => panic!(
            "Run in {domain}: {e}\nthe end of {domain}'s log:\n{}",
            log_tail(p, domain, 60).await
        ),
    }
}

/// The whole of `domain`'s log (a VM's console), or why there is none.
pub async fn domain_log(p: &Domaind1Proxy<'_>, domain: &str) -> String {
    log_tail(p, domain, usize::MAX).await
}

/// The last `lines` lines of `domain`'s log (through `OpenLog`), or why there is none.
pub async fn log_tail(p: &Domaind1Proxy<'_>, domain: &str, lines: usize) -> String {
    use std::io::Read as _;
    match p.open_log(domain).await {
        Ok(fd) => {
            let fd: std::os::fd::OwnedFd = fd.into();
            let mut text = String::new();
            let _ = std::fs::File::from(fd).read_to_string(&mut text);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// Runs through D-Bus `Run` (domain = Some) or `Call` (domain = None: `argv` is
/// [TARGET, SERVICE]) with pipes; returns (result, stdout, stderr).
pub async fn exchange(
    p: &Domaind1Proxy<'_>,
    domain: Option<&str>,
    argv: &[&str],
    input: &[u8],
) -> (Result<i32, bulkhead_api::Error>, String, String) {
    let io = StdioPipes::new(input).expect("pipes");
    let (i, o, e) = io.fds();
    let res = match domain {
        Some(d) => p.run(d, argv, "", i, o, e).await,
        None => p.call(argv[0], argv[1], i, o, e).await,
    };
    let (out, err) = io.finish().await;
    (res, out, err)
}
