//! `escape-probe`: tries the classic ways out of a sandbox domain, from inside it.
//!
//! `escape-probe battery [options]` prints one line per attempt,
//! `ESCAPE <name> blocked <detail>` or `ESCAPE <name> ESCAPED <detail>`, then
//! `ESCAPE-SUMMARY total=<n> escaped=<m>`, and exits 0 only if every attempt was blocked.
//! It depends on nothing in the domain (no shell, no tools), so it runs the same as the init
//! of a bare test root or as a command inside the Debian template.
//!
//! It refuses to run where uid 0 is the host's root: succeeding attempts would act on the host.
//!
//! Helper modes used by the tests: `whoami` (prints the effective uid, used for the setuid
//! checks), `idle` (a minimal init: writes test files, then reaps children until SIGTERM).
//!
//! The attempts, by family: confinement and privileges (`privileges`), the file system,
//! mounts and `/proc` (`filesystem`), sockets and the network (`network`), kernel interfaces,
//! namespaces and the 32-bit entry (`kernel`), host processes and resource limits
//! (`processes`). `report` counts and prints them, `child` forks and drops privileges, and
//! `modes` holds the helper modes.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use nix::unistd::Uid;

mod child;
mod filesystem;
mod kernel;
mod modes;
mod network;
mod privileges;
mod processes;
mod report;

use child::drop_to;
use filesystem::{chroot_walk, devices, mounts, proc_walks, proc_writes, secrets, template_write};
use kernel::{compat_syscalls, kernel_interfaces, namespaces};
use modes::{idle, inotify_hog, int80};
use network::sockets;
use privileges::{confinement_state, setuid};
use processes::{fork_bomb, memory_bomb, tracing_host};
use report::Report;

#[derive(Parser)]
#[command(name = "escape-probe")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every escape attempt.
    Battery(BatteryArgs),
    /// Print the effective and real uid.
    Whoami,
    /// Write MIB mebibytes of numbered lines to stdout, then "SPEW-DONE" (log bound tests).
    Spew {
        #[arg(long)]
        mib: u64,
    },
    /// Open inotify instances until the kernel refuses one, print
    /// `INOTIFY-HOG opened=<n> error=<errno>` and `READY`, then hold them until SIGTERM.
    InotifyHog,
    /// Make one i386 system call through `int 0x80` (x86_64 only) and print
    /// `INT80 nr=<nr> returned=<value>`. Run on the host by the tests to learn whether the
    /// kernel has IA32 emulation (`--nr 20`, i386 getpid).
    Int80 {
        #[arg(long)]
        nr: u32,
        #[arg(long, default_value_t = 0)]
        arg: u32,
    },
    /// Minimal init for tests: write files, then reap children until SIGTERM.
    Idle {
        /// Write "root" to this path as root.
        #[arg(long)]
        root_file: Option<PathBuf>,
        /// Write "user" to this path as uid:gid 1000.
        #[arg(long)]
        user_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub(crate) struct BatteryArgs {
    /// A host pid (outside the domain) to try to reach.
    #[arg(long)]
    pub(crate) host_pid: Option<i32>,
    /// Host paths of secret files (another domain's private file, host files).
    #[arg(long)]
    pub(crate) secret: Vec<PathBuf>,
    /// An abstract unix socket name listening in the host network namespace.
    #[arg(long)]
    pub(crate) host_abstract: Option<String>,
    /// The domain's pids limit; the fork bomb must stop below it.
    #[arg(long)]
    pub(crate) pids_max: Option<u64>,
    /// The domain's memory limit in MiB; the allocation must be stopped near it.
    #[arg(long)]
    pub(crate) memory_mib: Option<u64>,
    /// Drop to this uid/gid before the attempts (default: stay root of the domain).
    #[arg(long)]
    pub(crate) as_user: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Spew { mib } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let line = [b'x'; 1023];
            for i in 0..mib * 1024 {
                write!(out, "{i:08} ")?;
                out.write_all(&line[..1023 - 9])?;
                out.write_all(b"\n")?;
            }
            writeln!(out, "SPEW-DONE")?;
            out.flush()?;
            Ok(())
        }
        Cmd::Whoami => {
            println!("euid={} ruid={}", Uid::effective(), Uid::current());
            Ok(())
        }
        Cmd::Idle {
            root_file,
            user_file,
        } => idle(root_file, user_file),
        Cmd::InotifyHog => inotify_hog(),
        Cmd::Int80 { nr, arg } => {
            println!("INT80 nr={nr} returned={}", int80(nr, arg));
            Ok(())
        }
        Cmd::Battery(args) => {
            let escaped = battery(&args)?;
            std::process::exit(if escaped == 0 { 0 } else { 1 });
        }
    }
}

/// True when this process runs in the host's user namespace (uid 0 maps to host uid 0): the
/// battery's mount and sysctl attempts would then act on the host itself.
fn on_host() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    map.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 3 && f[0] == "0" && f[1] == "0"
    })
}

fn battery(a: &BatteryArgs) -> anyhow::Result<usize> {
    anyhow::ensure!(
        !on_host(),
        "refusing to run: uid 0 here is the host's root (not inside a sandbox domain); \
         the attempts would change the host"
    );
    if let Some(uid) = a.as_user {
        drop_to(uid)?;
    }
    let mut r = Report {
        total: 0,
        escaped: 0,
    };
    println!(
        "ESCAPE-INFO uid={} pid={} hostname={}",
        Uid::effective(),
        std::process::id(),
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    );

    confinement_state(&mut r);
    chroot_walk(&mut r, a);
    proc_walks(&mut r, a);
    mounts(&mut r);
    template_write(&mut r);
    tracing_host(&mut r, a);
    sockets(&mut r, a);
    devices(&mut r);
    secrets(&mut r, a);
    proc_writes(&mut r);
    setuid(&mut r);
    kernel_interfaces(&mut r);
    compat_syscalls(&mut r);
    namespaces(&mut r);
    if let Some(n) = a.pids_max {
        fork_bomb(&mut r, n);
    }
    if let Some(m) = a.memory_mib {
        memory_bomb(&mut r, m);
    }
    println!("ESCAPE-SUMMARY total={} escaped={}", r.total, r.escaped);
    Ok(r.escaped)
}
