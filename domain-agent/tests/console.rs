//! A VM guest's init puts a relay between its console and the agent and gui-agent, which log
//! to it ([`bulkhead_agent::console::relay_output_to_console`]): a console that stops draining
//! (here a pseudo-terminal nobody reads) loses log lines, but never stalls or breaks a process
//! that logs, and what the console takes still reaches it.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "BULKHEAD_TEST_CONSOLE_CHILD";
const TEST: &str = "a_console_nobody_drains_never_stalls_the_logger";
/// Far more than a terminal's output buffer and the relay's pipe hold.
const LOGGED: usize = 8 << 20;

#[test]
fn a_console_nobody_drains_never_stalls_the_logger() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The child: its stdout and stderr are the undrained terminal, as init's are the
        // console.
        bulkhead_agent::console::relay_output_to_console().expect("relay");
        let line = [b'x'; 1023];
        for i in 0..LOGGED / 1024 {
            // Through the pipe, a write never fails and never waits on the console: print
            // macros (which panic on a write error) are safe too.
            if i % 64 == 0 {
                println!("line {i}");
            }
            let mut err = std::io::stderr();
            err.write_all(&line).expect("log write");
            err.write_all(b"\n").expect("log write");
        }
        std::process::exit(0);
    }
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let tty = std::fs::File::from(pty.slave);
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            TEST,
            "--nocapture",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(tty.try_clone().expect("dup tty"))
        .stderr(tty)
        .spawn()
        .expect("spawn the child");
    // Nobody reads the terminal while the child logs: it fills and stays full.
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
    assert!(status.success(), "the child failed: {status}");
    // What the console took is the start of the log.
    let mut master = std::fs::File::from(pty.master);
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("non-blocking master");
    let mut got = vec![0u8; 64 * 1024];
    let n = master.read(&mut got).expect("read the terminal");
    let got = String::from_utf8_lossy(&got[..n]);
    assert!(
        got.contains("xxxxxxxx") || got.contains("line 0"),
        "the console got none of the log: {got:?}"
    );
}
