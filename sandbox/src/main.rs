//! `bulkhead-sandbox`: the sandbox launcher run by domaind (and a host probe).
//!
//! `bulkhead-sandbox launch [--spec FILE]` reads a SandboxSpec as JSON (stdin by default),
//! starts the sandbox and prints one JSON reply on stdout: `{"ok": record}` or
//! `{"error": {"step": ..., "message": ...}}` (exit status 1). Logs go to stderr.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulkhead-sandbox", about = "Bulkhead sandbox launcher")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a sandbox from a JSON SandboxSpec and print its SandboxRecord.
    Launch {
        /// Read the spec from this file instead of stdin.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
    /// Print what the host offers (cgroups, idmapped mounts, seccomp) as JSON.
    Probe,
    /// Kill everything in a domain's cgroup and remove it.
    RemoveCgroup {
        name: String,
        /// The domaind instance's cgroup root (`bulkhead` for the system instance,
        /// `bulkhead-<id>` for others: see the domaind log line "cgroup root").
        #[arg(long, default_value = bulkhead_sandbox::cgroup::PARENT)]
        root: String,
    },
    /// Give host device node NODE to the running sandbox whose init is PID, at /dev/NAME,
    /// owned by host uid and gid OWNER (mode 0600 on the host node too).
    DeviceAdd {
        #[arg(long)]
        pid: i32,
        /// The init's start time (`/proc/PID/stat` field 22): another process with that pid
        /// is refused.
        #[arg(long)]
        start_time: u64,
        #[arg(long)]
        node: PathBuf,
        /// MAJOR:MINOR the node must be.
        #[arg(long)]
        rdev: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: u32,
    },
    /// Take /dev/NAME away from the running sandbox whose init is PID.
    DeviceRemove {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        start_time: u64,
        #[arg(long)]
        name: String,
    },
    /// Internal (started by `launch`): copy stdin (the domain's output pipe) to stdout (the
    /// open log file at FILE), rotating FILE to FILE.old beyond MAX_BYTES.
    #[command(hide = true)]
    LogWriter {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        max_bytes: u64,
    },
}

/// Largest spec accepted (a spec is a few hundred bytes).
const MAX_SPEC: u64 = 1 << 20;

fn main() -> anyhow::Result<()> {
    bulkhead_logging::init("info");
    let cli = Cli::parse();
    // Descriptors our caller leaked without close-on-exec must not reach anything we start
    // (the log writer lives as long as the domain).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    if unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    } != 0
    {
        anyhow::bail!("close_range: {}", std::io::Error::last_os_error());
    }
    match cli.cmd {
        Cmd::Launch { spec } => {
            let mut buf = Vec::new();
            match spec {
                Some(p) => {
                    std::fs::File::open(&p)
                        .with_context(|| format!("open spec {}", p.display()))?
                        .take(MAX_SPEC)
                        .read_to_end(&mut buf)
                        .with_context(|| format!("read spec {}", p.display()))?;
                }
                None => {
                    std::io::stdin()
                        .take(MAX_SPEC)
                        .read_to_end(&mut buf)
                        .context("read spec from stdin")?;
                }
            }
            let reply = bulkhead_sandbox::launch::run_to_reply(&buf);
            let failed = matches!(reply, bulkhead_sandbox::LauncherReply::Error { .. });
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &reply).context("write reply")?;
            out.write_all(b"\n").context("write reply")?;
            out.flush().context("write reply")?;
            if failed {
                std::process::exit(1);
            }
        }
        Cmd::Probe => {
            let caps = bulkhead_sandbox::probe();
            println!("{}", serde_json::to_string_pretty(&caps)?);
        }
        Cmd::LogWriter { file, max_bytes } => {
            anyhow::ensure!(file.is_absolute(), "--file must be absolute");
            bulkhead_sandbox::logwriter::run_stdio(&file, max_bytes)
                .with_context(|| format!("log writer for {}", file.display()))?;
        }
        Cmd::DeviceAdd {
            pid,
            start_time,
            node,
            rdev,
            name,
            owner,
        } => {
            let target = bulkhead_sandbox::devices::Target {
                init_pid: pid,
                init_start_time: start_time,
            };
            let rdev = bulkhead_sandbox::devices::parse_rdev(&rdev)
                .ok_or_else(|| anyhow::anyhow!("--rdev {rdev:?} is not MAJOR:MINOR"))?;
            bulkhead_sandbox::devices::add_device_here(target, &node, rdev, &name, owner).map_err(
                |e| anyhow::anyhow!("give {} to pid {pid} as /dev/{name}: {e}", node.display()),
            )?
        }
        Cmd::DeviceRemove {
            pid,
            start_time,
            name,
        } => {
            let target = bulkhead_sandbox::devices::Target {
                init_pid: pid,
                init_start_time: start_time,
            };
            bulkhead_sandbox::devices::remove_device_here(target, &name)
                .map_err(|e| anyhow::anyhow!("take /dev/{name} from pid {pid}: {e}"))?
        }
        Cmd::RemoveCgroup { name, root } => {
            let root = bulkhead_sandbox::CgroupRoot::parse(&root).context("--root")?;
            bulkhead_sandbox::remove_cgroup(&root, &name)
                .with_context(|| format!("remove cgroup {root}/{name}"))?;
        }
    }
    Ok(())
}
