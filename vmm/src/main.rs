//! `bulkhead-vmm`: runs one VM from a JSON spec, or probes for hardware virtualization.
//!
//! Exit status of `run`: 0 the guest powered off or reset (a reboot ends the VM), 1 error
//! (message on stderr), 2 usage. A confined VMM runs as the child of a waiting parent (PID
//! namespace); SIGTERM/SIGINT/SIGHUP to the parent kill the VM and the parent exits 128 + N.
//! `probe`: 0 hardware virtualization, 3 not.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bulkhead_vmm::confine;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bulkhead-vmm",
    about = "The Bulkhead KVM monitor: one process per VM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the VM described by a JSON spec and run it until the guest powers off or resets.
    Run {
        /// The VM spec (JSON); `-` reads it from stdin.
        #[arg(long)]
        spec: PathBuf,
        /// Write one byte to this inherited fd once the vCPUs run, then close it.
        #[arg(long)]
        ready_fd: Option<RawFd>,
        /// Write the guest's first byte to I/O port 0x80 to this inherited fd (benchmarks).
        #[arg(long)]
        boot_timer_fd: Option<RawFd>,
    },
    /// Say whether this host has hardware virtualization (exit 0) or not (exit 3).
    Probe,
}

fn take_fd(fd: Option<RawFd>, what: &str) -> anyhow::Result<Option<OwnedFd>> {
    let Some(fd) = fd else { return Ok(None) };
    // Only take ownership of a descriptor that is really open in this process.
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .with_context(|| format!("--{what} {fd} is not an open file descriptor"))?;
    if fd <= 2 {
        anyhow::bail!("--{what} {fd}: stdin/stdout/stderr cannot be used");
    }
    // SAFETY: the fd is open (checked above), not a standard stream, and nothing else in this
    // process refers to it: it was inherited for exactly this purpose.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn run(spec: PathBuf, ready_fd: Option<RawFd>, boot_timer_fd: Option<RawFd>) -> anyhow::Result<u8> {
    let spec = bulkhead_vmm::VmSpec::from_file(&spec)?;
    let mut opts = bulkhead_vmm::RunOptions {
        ready_fd: take_fd(ready_fd, "ready-fd")?,
        boot_timer_fd: take_fd(boot_timer_fd, "boot-timer-fd")?,
        seccomp: None,
    };
    if let Some(c) = &spec.confine {
        // One malloc arena for every thread. glibc reads /proc/sys/vm/overcommit_memory the
        // first time it shrinks a thread arena's heap, and no seccomp filter allows open: a
        // device worker freeing memory was killed by SIGSYS now and then. The main arena
        // trims with brk instead. Fewer arenas also keep the VMM's own memory small.
        // SAFETY: mallopt only changes an allocator parameter; the process has one thread
        // here (enter_pid_namespace checks that next).
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
            tracing::warn!("mallopt(M_ARENA_MAX, 1) failed");
        }
        match confine::enter_pid_namespace(c).context("confining the VMM (PID namespace)")? {
            confine::PidNamespace::ParentExit(code) => return Ok(code),
            confine::PidNamespace::Child => {}
        }
        opts.seccomp = Some(bulkhead_vmm::seccomp::filters()?);
    }
    let vm = bulkhead_vmm::Vm::new(&spec, opts)
        .with_context(|| format!("setting up VM {}", spec.name))?;
    if let Some(c) = &spec.confine {
        confine::confine(c, &confine::kept_dirs(&spec)).context("confining the VMM")?;
    }
    let exit = vm
        .run()
        .with_context(|| format!("running VM {}", spec.name))?;
    tracing::info!(vm = %spec.name, ?exit, "VM ended");
    Ok(0)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    bulkhead_logging::init("warn");
    match cli.cmd {
        Cmd::Probe => {
            let p = bulkhead_vmm::probe_hardware_virtualization();
            println!("{}", p.reason);
            if p.hardware {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Cmd::Run {
            spec,
            ready_fd,
            boot_timer_fd,
        } => match run(spec, ready_fd, boot_timer_fd) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("bulkhead-vmm: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
