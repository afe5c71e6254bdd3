//! A VM guest's init hands its console to the agent and the gui-agent as their log output
//! ([`bulkhead_agent::console::never_block_on_console`]): a console that stops draining (here
//! a pseudo-terminal nobody reads) must drop log lines, never stall the process that logs.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "BULKHEAD_TEST_CONSOLE_CHILD";
const TEST: &str = "a_console_nobody_drains_never_stalls_the_logger";
/// Far more than a terminal's output buffer holds.
const LOGGED: usize = 4 << 20;

#[test]
fn a_console_nobody_drains_never_stalls_the_logger() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: its stdout and stderr are the undrained terminal.
        bulkhead_agent::console::never_block_on_console().expect("non-blocking console");
        let line = [b'x'; 1023];
        let mut dropped = 0usize;
        for _ in 0..LOGGED / 1024 {
            let mut err = std::io::stderr();
            if err.write_all(&line).and_then(|()| err.write_all(b"\n")).is_err() {
                dropped += 1;
            }
        }
        // Nothing more can be printed on the full terminal (libtest's summary would fail to
        // print): the exit status says it. 3: everything was taken, which a terminal nobody
        // reads cannot do, so the test itself is broken.
        std::process::exit(if dropped > 0 { 0 } else { 3 });
    }
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let tty = std::fs::File::from(pty.slave);
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1", "--quiet"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(tty.try_clone().expect("dup tty"))
        .stderr(tty)
        .spawn()
        .expect("spawn the child");
    // Nobody reads `pty.master`: the terminal fills and stays full.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child logging to a full console never ended: it blocked on the console");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(pty.master);
    // The child's own assertion failing would also end it, with a failure status.
    assert!(status.success(), "the child failed: {status}");
}
