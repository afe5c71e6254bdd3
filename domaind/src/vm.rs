//! The VM backend: one `bulkhead-vmm run --spec FILE` process per VM domain.
//!
//! A start ([`launch`]):
//! 1. the probe (`bulkhead-vmm probe`, see [`probe`]): without hardware virtualization the
//!    start fails at once with the probe's reason, unless the daemon runs with
//!    `--allow-software-kvm` (tests: PVM's software KVM cannot boot a stock kernel);
//! 2. the disks: the template's root image (built on demand, see
//!    `bulkhead_templates::vm`), the domain's private volume image (`private.img` in its
//!    state dir, made from the private dir at the first VM start), a guest tools image
//!    made from the guest tools dir at every start (in scratch);
//! 3. the domain's cgroup (the sandbox backend's hierarchy and naming, so orphan recovery
//!    covers both) with the domain's memory plus [`VMM_OVERHEAD_MIB`];
//! 4. the VMM, spawned so that it is in that cgroup before it runs any code (the child writes
//!    to pre-opened `cgroup.procs` files before exec: works for v1's several hierarchies,
//!    which the spec's single `confine.cgroup` path cannot express, so that is left empty),
//!    with `confine` set to the domain's first host uid/gid, the serial console going to the
//!    domain's log, and hybrid vsock with `uds_path = <channel>/vsock.sock`, so the guest
//!    agent's connection to CID 2 port 1024 reaches `<channel>/vsock.sock_1024`, where
//!    domaind listens (peer check: the VMM's uid);
//! 5. the VMM's `--ready-fd` byte (its vCPUs run) within [`READY_TIMEOUT`].
//!
//! The spec written here mirrors `bulkhead_vmm::VmSpec` (contract A); the VMM parses it with
//! `deny_unknown_fields`, so a mismatch fails every VM start (and the VM lifecycle test).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_sandbox::cgroup::{Hierarchy, Limits};
use bulkhead_sandbox::{CgroupPaths, SandboxError};
use bulkhead_vmm::{ConfineSpec, DiskSpec, VmSpec, VsockSpec};
use tracing::{info, warn};

use crate::backend::VmRecord;

/// Memory the VMM process itself may use beyond guest RAM (its cgroup limit is the domain's
/// memory plus this).
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Most tasks (threads) in a VMM's cgroup: vCPUs, device workers, control.
pub const VMM_PIDS_MAX: u64 = 128;
/// How long the VMM may take to get its vCPUs running.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Guest CID of every VM (each VM has its own vsock device; CIDs are per VM).
pub const GUEST_CID: u64 = 3;
/// Host side of the hybrid vsock in the channel dir (the VMM listens here).
pub const VSOCK_UDS_NAME: &str = "vsock.sock";
/// Console log bound (the VMM rotates once to `.old`), same as the sandbox's log writer.
pub const SERIAL_LOG_MAX: u64 = bulkhead_sandbox::logwriter::LOG_MAX_BYTES;
/// The fd number the VMM gets its ready pipe on.
const READY_FD: i32 = 3;
/// The fd number the VMM gets its (first) tap on (see [`VmNetwork`]); a second one follows.
pub const TAP_FD: i32 = 4;

/// The network of a VM domain with a netvm: the tap domaind made in the VM's link namespace
/// (`bulkhead_net::tap`), handed to the VMM as fd [`TAP_FD`], and what the guest configures
/// on its virtio-net interface from the kernel command line ([`VmNet::cmdline`]).
#[derive(Debug, Clone)]
pub struct VmNet {
    pub tap: std::sync::Arc<OwnedFd>,
    pub ip: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
    pub dns: Vec<std::net::Ipv4Addr>,
    pub mac: [u8; 6],
}

impl VmNet {
    /// ` bulkhead.ip=A bulkhead.gw=G bulkhead.dns=D1,D2 bulkhead.mac=M`, read by the guest's
    /// init (`bulkhead_agent::vmnet`).
    pub fn cmdline(&self) -> String {
        let dns: Vec<String> = self.dns.iter().map(|d| d.to_string()).collect();
        format!(
            " bulkhead.ip={} bulkhead.gw={} bulkhead.dns={} bulkhead.mac={}",
            self.ip,
            self.gateway,
            dns.join(","),
            bulkhead_net::tap::mac_text(self.mac)
        )
    }
}

/// A net VM's interfaces (see `bulkhead_net::vmnetvm`): its uplink tap (bridged with the
/// host's uplink) with the address the guest gives it, and its tap in the firewall namespace
/// in front of its clients.
#[derive(Debug, Clone)]
pub struct VmNetvm {
    pub uplink: Option<(std::sync::Arc<OwnedFd>, bulkhead_net::link::Uplink)>,
    pub down: std::sync::Arc<OwnedFd>,
    pub dns: Vec<std::net::Ipv4Addr>,
}

/// The network of a VM domain: a client of a netvm, or a net VM itself.
#[derive(Debug, Clone)]
pub enum VmNetwork {
    Client(VmNet),
    Netvm(VmNetvm),
}

impl VmNetwork {
    /// What the guest's init reads from the kernel command line.
    pub fn cmdline(&self) -> String {
        match self {
            VmNetwork::Client(n) => n.cmdline(),
            VmNetwork::Netvm(n) => {
                bulkhead_net::vmnetvm::guest_cmdline(n.uplink.as_ref().map(|(_, u)| u), &n.dns)
            }
        }
    }

    /// The taps in the order the VMM gets them (fds [`TAP_FD`], [`TAP_FD`] + 1): their
    /// descriptors, names (for logs) and the guest's MACs.
    pub fn taps(&self) -> Vec<(std::sync::Arc<OwnedFd>, &'static str, [u8; 6])> {
        use bulkhead_net::vmnetvm::{FIREWALL_TAP, UPLINK_TAP, VM_DOWN_MAC, VM_UPLINK_MAC};
        match self {
            VmNetwork::Client(n) => vec![(n.tap.clone(), bulkhead_net::tap::VM_TAP, n.mac)],
            VmNetwork::Netvm(n) => n
                .uplink
                .iter()
                .map(|(t, _)| (t.clone(), UPLINK_TAP, VM_UPLINK_MAC))
                .chain([(n.down.clone(), FIREWALL_TAP, VM_DOWN_MAC)])
                .collect(),
        }
    }
}

/// Errors of the VM backend.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM domains need hardware virtualization (VT-x or AMD-V); this host cannot boot them: {reason}")]
    NoHardware { reason: String },
    #[error("cannot run {}: {source} (is bulkhead-vmm installed next to domaind or in BULKHEAD_LIBEXEC_DIR?)", path.display())]
    VmmMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} probe failed ({status}): {output}", path.display())]
    Probe {
        path: PathBuf,
        status: String,
        output: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the domain's cgroup: {0}")]
    Cgroup(#[from] SandboxError),
    #[error("making a disk image: {0}")]
    Image(#[from] bulkhead_templates::TemplateError),
    #[error("the VMM did not start its vCPUs within {} s", READY_TIMEOUT.as_secs())]
    ReadyTimeout,
    #[error("the VMM exited before its vCPUs ran ({status})")]
    Exited { status: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub hardware: bool,
    pub reason: String,
}

/// Run `bulkhead-vmm probe`: exit 0 hardware virtualization, 3 not; one line of text.
pub fn probe(vmm: &Path) -> Result<Probe, VmError> {
    let out = Command::new(vmm)
        .arg("probe")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::VmmMissing {
            path: vmm.to_owned(),
            source,
        })?;
    let text = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.len().min(4096)])
            .trim()
            .to_owned()
    };
    let reason = text(&out.stdout);
    match out.status.code() {
        Some(0) => Ok(Probe {
            hardware: true,
            reason,
        }),
        Some(3) => Ok(Probe {
            hardware: false,
            reason,
        }),
        _ => Err(VmError::Probe {
            path: vmm.to_owned(),
            status: out.status.to_string(),
            output: format!("{reason} {}", text(&out.stderr)),
        }),
    }
}

/// Everything a VM start needs.
#[derive(Debug, Clone)]
pub struct VmStart {
    pub name: String,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub root_image: PathBuf,
    pub private_image: PathBuf,
    pub tools_image: PathBuf,
    pub channel_dir: PathBuf,
    pub log_file: PathBuf,
    /// The console input FIFO (`bulkhead console` writes into it; see [`make_console_fifo`]).
    pub console_input: PathBuf,
    /// Where the spec JSON is written (root-only runtime dir).
    pub spec_file: PathBuf,
    pub scratch_dir: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The VMM's uid and gid (the domain slot's first host uid).
    pub uid: u32,
    /// The domaind instance's cgroup root; the VMM's cgroup is `<root>/<name>`.
    pub cgroup_root: bulkhead_sandbox::CgroupRoot,
    /// The network (a VM with a netvm, or a net VM), or none.
    pub net: Option<VmNetwork>,
}

impl VmStart {
    /// The spec for the VMM.
    pub fn spec(&self) -> Result<VmSpec, VmError> {
        let vcpus = u8::try_from(self.vcpus)
            .ok()
            .filter(|v| (1..=32).contains(v))
            .ok_or_else(|| {
                VmError::Invalid(format!(
                    "vcpus = {} is too many for a VM domain (1..=32)",
                    self.vcpus
                ))
            })?;
        Ok(VmSpec {
            name: self.name.clone(),
            kernel: self.kernel.clone(),
            initramfs: Some(self.initramfs.clone()),
            cmdline: format!(
                "{} bulkhead.name={}{}",
                bulkhead_templates::vm::GUEST_CMDLINE,
                self.name,
                self.net
                    .as_ref()
                    .map(VmNetwork::cmdline)
                    .unwrap_or_default()
            ),
            memory_mib: self.memory_mib,
            vcpus,
            serial_log: self.log_file.clone(),
            serial_log_max: SERIAL_LOG_MAX,
            serial_input: Some(self.console_input.clone()),
            disks: vec![
                DiskSpec {
                    path: self.root_image.clone(),
                    read_only: true,
                },
                DiskSpec {
                    path: self.private_image.clone(),
                    read_only: false,
                },
                DiskSpec {
                    path: self.tools_image.clone(),
                    read_only: true,
                },
            ],
            vsock: Some(VsockSpec {
                guest_cid: GUEST_CID,
                uds_path: self.channel_dir.join(VSOCK_UDS_NAME),
            }),
            nets: self
                .net
                .iter()
                .flat_map(VmNetwork::taps)
                .zip(TAP_FD..)
                .map(|((_, name, mac), fd)| bulkhead_vmm::NetSpec {
                    tap: name.to_owned(),
                    mac,
                    fd: Some(fd),
                })
                .collect(),
            rng: true,
            confine: Some(ConfineSpec {
                uid: self.uid,
                gid: self.uid,
                cgroup: None,
            }),
        })
    }
}

/// The socket domaind listens on for the agent of a VM domain: `<channel>/vsock.sock_1024`
/// (the hybrid vsock's `<uds_path>_<port>` for [`bulkhead_wire::AGENT_VSOCK_PORT`]).
pub fn agent_socket(channel_dir: &Path) -> PathBuf {
    channel_dir.join(format!(
        "{VSOCK_UDS_NAME}_{}",
        bulkhead_wire::AGENT_VSOCK_PORT
    ))
}

/// File name of a VM domain's console input FIFO in its runtime dir.
pub const CONSOLE_FIFO_NAME: &str = "console.in";

/// Make (anew) the console input FIFO `path`, root-only (the VMM opens it before it drops
/// privileges; `OpenConsole` hands dom0's admin a write end).
pub fn make_console_fifo(path: &Path) -> Result<(), VmError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot remove {}", path.display()))(e)),
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io(format!("cannot make the FIFO {}", path.display()))(e.into()))
}

/// Make the guest tools image (read-only in the guest at /usr/lib/bulkhead).
pub fn make_tools_image(tools_dir: &Path, image: &Path) -> Result<(), VmError> {
    let size = bulkhead_templates::vm::image_size_mib(tools_dir, 8)?;
    let mut log = Vec::new();
    bulkhead_templates::vm::make_ext4_image(
        tools_dir,
        image,
        bulkhead_templates::vm::TOOLS_LABEL,
        size,
        false,
        &mut log,
    )?;
    Ok(())
}

/// Create the cgroup, spawn the confined VMM inside it, wait for its vCPUs. On failure
/// nothing is left running and the cgroup is gone.
pub fn launch(s: &VmStart) -> Result<VmRecord, VmError> {
    let spec = s.spec()?;
    let json = serde_json::to_vec_pretty(&spec)
        .map_err(|e| VmError::Invalid(format!("cannot encode the VM spec: {e}")))?;
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&s.spec_file)
            .map_err(io(format!("cannot write {}", s.spec_file.display())))?;
        f.write_all(&json)
            .map_err(io(format!("cannot write {}", s.spec_file.display())))?;
    }
    let hier = Hierarchy::detect()?;
    let cgroup = hier.create(
        &s.cgroup_root,
        &s.name,
        Limits {
            memory_bytes: (s.memory_mib + VMM_OVERHEAD_MIB) << 20,
            vcpus: s.vcpus,
            pids_max: VMM_PIDS_MAX,
        },
    )?;
    match spawn_in(&cgroup, s) {
        Ok(r) => Ok(r),
        Err(e) => {
            if let Err(ce) = cgroup.remove() {
                warn!(domain = %s.name, error = %ce, "cannot remove the VM's cgroup after a failed start");
            }
            Err(e)
        }
    }
}

fn spawn_in(cgroup: &CgroupPaths, s: &VmStart) -> Result<VmRecord, VmError> {
    // Opened here, written by the child before exec: it is in the cgroup before the VMM runs.
    let mut procs: Vec<OwnedFd> = Vec::new();
    for d in cgroup.dirs() {
        let p = d.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io(format!("cannot open {}", p.display())))?;
        procs.push(f.into());
    }
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io("pipe for the VMM's ready byte")(e.into()))?;
    // Both descriptors the child moves to fixed numbers are first put above them, so that
    // one dup2 never overwrites the other's source.
    let ready_w = dup_high(&ready_w, "the ready pipe")?;
    let taps = s
        .net
        .iter()
        .flat_map(VmNetwork::taps)
        .map(|(t, _, _)| dup_high(&t, "a tap"))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(d) = s.log_file.parent() {
        fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&s.log_file)
        .map_err(io(format!("cannot open {}", s.log_file.display())))?;
    let mut cmd = Command::new(&s.vmm);
    cmd.arg("run")
        .arg("--spec")
        .arg(&s.spec_file)
        .arg("--ready-fd")
        .arg(READY_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .env_clear();
    let procs_raw: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let ready_raw = ready_w.as_raw_fd();
    // Allocated here: the child below must not allocate.
    let taps_raw: Vec<i32> = taps.iter().map(|t| t.as_raw_fd()).collect();
    // SAFETY: runs in the forked child before exec and only makes raw system calls (write,
    // dup2, fcntl, close_range, setsid) on descriptors opened above; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &procs_raw {
                // "0": the writing process itself.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if ready_raw == READY_FD {
                if libc::fcntl(READY_FD, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(ready_raw, READY_FD) != READY_FD {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the copy. Every source is above the targets
            // (dup_high), so no dup2 overwrites a later one's source.
            for (i, t) in taps_raw.iter().enumerate() {
                let to = TAP_FD + i as i32;
                if libc::dup2(*t, to) != to {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Every other descriptor closes at exec: zbus keeps the descriptors callers pass
            // (received without MSG_CMSG_CLOEXEC) until their call ends, and a VMM started
            // meanwhile (a call that autostarts a VM) would otherwise hold, for its whole life,
            // another caller's stdout: that caller's output would never end.
            let first = if taps_raw.is_empty() {
                READY_FD + 1
            } else {
                TAP_FD + taps_raw.len() as i32
            };
            if libc::close_range(
                first as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| VmError::VmmMissing {
        path: s.vmm.clone(),
        source,
    })?;
    drop(cmd);
    drop(ready_w);
    drop(taps);
    drop(procs);
    let pid = i32::try_from(child.id())
        .map_err(|_| VmError::Invalid(format!("pid {} out of range", child.id())))?;
    let kill_child = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    match wait_ready(ready_r, READY_TIMEOUT) {
        Ok(true) => {}
        Ok(false) => {
            let status = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| format!("wait failed: {e}"));
            return Err(VmError::Exited { status });
        }
        Err(e) => {
            kill_child(&mut child);
            return Err(e);
        }
    }
    let Some((start, _)) = bulkhead_sandbox::proc_stat(pid) else {
        kill_child(&mut child);
        return Err(VmError::Exited {
            status: "gone right after it became ready".into(),
        });
    };
    // The VMM is our child: reap it when it exits so it does not stay a zombie (the pidfd
    // watcher sees the exit either way).
    // Its exit status also goes to the domain's log, where `bulkhead log` shows it.
    let name = s.name.clone();
    let log_file = s.log_file.clone();
    let reaper = std::thread::Builder::new()
        .name(format!("reap-vmm-{pid}"))
        .spawn(move || match child.wait() {
            Ok(st) => {
                info!(domain = %name, pid, status = %st, "VMM exited");
                crate::fsutil::append_log_line(
                    &log_file,
                    &format!("domaind: the VMM (pid {pid}) exited: {st}"),
                );
            }
            Err(e) => warn!(domain = %name, pid, error = %e, "cannot wait for the VMM"),
        });
    if let Err(e) = reaper {
        warn!(pid, error = %e, "cannot start the VMM reaper thread; the VMM will stay a zombie after it exits until domaind does");
    }
    info!(domain = %s.name, pid, "VMM running");
    Ok(VmRecord {
        name: s.name.clone(),
        vmm_pid: pid,
        vmm_start_time: start,
        vmm_uid: s.uid,
        cgroup: cgroup.clone(),
        scratch_dir: s.scratch_dir.clone(),
    })
}

/// A close-on-exec copy of `fd` numbered above [`READY_FD`] and [`TAP_FD`].
fn dup_high(fd: &OwnedFd, what: &str) -> Result<OwnedFd, VmError> {
    use std::os::fd::FromRawFd;
    let raw = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| io(format!("dup {what}"))(e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Wait for one byte on `r`: Ok(true) got it, Ok(false) EOF (the VMM exited), Err timeout.
fn wait_ready(r: OwnedFd, limit: Duration) -> Result<bool, VmError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + limit;
    let mut f = File::from(r);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(VmError::ReadyTimeout);
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return Err(VmError::ReadyTimeout),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io("poll on the VMM's ready pipe")(e.into())),
        }
        let mut b = [0u8; 1];
        return match f.read(&mut b) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(io("reading the VMM's ready pipe")(e)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> VmStart {
        VmStart {
            name: "work".into(),
            vmm: "/x/bulkhead-vmm".into(),
            kernel: "/t/vm/vmlinuz".into(),
            initramfs: "/t/vm/initramfs.cpio".into(),
            root_image: "/t/vm/root.img".into(),
            private_image: "/s/private.img".into(),
            tools_image: "/s/scratch/tools.img".into(),
            channel_dir: "/run/bulkhead/domains/work/channel".into(),
            log_file: "/l/work.log".into(),
            console_input: "/run/bulkhead/domains/work/console.in".into(),
            spec_file: "/run/bulkhead/domains/work/vm.json".into(),
            scratch_dir: "/s/scratch".into(),
            memory_mib: 512,
            vcpus: 2,
            uid: bulkhead_sandbox::UID_BASE,
            cgroup_root: bulkhead_sandbox::CgroupRoot::system(),
            net: None,
        }
    }

    #[test]
    fn a_vm_with_a_netvm_gets_the_tap_fd_and_its_address_on_the_command_line() {
        let s = start().spec().unwrap();
        assert!(s.nets.is_empty());
        assert!(!s.cmdline.contains("bulkhead.ip="), "{}", s.cmdline);
        let mut st = start();
        let (r, _w) = nix::unistd::pipe().unwrap();
        st.net = Some(VmNetwork::Client(VmNet {
            tap: std::sync::Arc::new(r),
            ip: "10.137.0.7".parse().unwrap(),
            gateway: bulkhead_net::GATEWAY,
            dns: bulkhead_net::DNS_VIRTUAL.to_vec(),
            mac: bulkhead_net::tap::vm_mac("10.137.0.7".parse().unwrap()),
        }));
        let s = st.spec().unwrap();
        assert_eq!(s.nets.len(), 1);
        let n = &s.nets[0];
        assert_eq!(n.fd, Some(TAP_FD));
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, [0x02, 0xb1, 10, 137, 0, 7]);
        assert!(
            s.cmdline.ends_with(" bulkhead.name=work bulkhead.ip=10.137.0.7 bulkhead.gw=10.137.0.1 bulkhead.dns=10.139.1.1,10.139.1.2 bulkhead.mac=02:b1:0a:89:00:07"),
            "{}",
            s.cmdline
        );
        s.validate().unwrap();
    }

    #[test]
    fn a_net_vm_gets_its_uplink_and_its_link_to_the_firewall() {
        let mut st = start();
        let (a, _w) = nix::unistd::pipe().unwrap();
        let (b, _w2) = nix::unistd::pipe().unwrap();
        let up = bulkhead_net::link::Uplink {
            ifname: "eth9".into(),
            address: "192.0.2.10".parse().unwrap(),
            prefix: 24,
            gateway: Some("192.0.2.254".parse().unwrap()),
        };
        st.net = Some(VmNetwork::Netvm(VmNetvm {
            uplink: Some((std::sync::Arc::new(a), up)),
            down: std::sync::Arc::new(b),
            dns: vec!["192.0.2.53".parse().unwrap()],
        }));
        let s = st.spec().unwrap();
        let got: Vec<(&str, Option<i32>)> = s.nets.iter().map(|n| (n.tap.as_str(), n.fd)).collect();
        assert_eq!(got, [("nvmup", Some(TAP_FD)), ("nvm0", Some(TAP_FD + 1))]);
        assert!(
            s.cmdline
                .contains(" bulkhead.netvm.up=192.0.2.10/24,192.0.2.254,")
                && s.cmdline.contains(" bulkhead.netvm.down=10.138.255.2/30,"),
            "{}",
            s.cmdline
        );
        s.validate().unwrap();
    }

    #[test]
    fn spec_has_disks_in_order_confinement_and_the_channel() {
        let s = start().spec().unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["disks"][0]["path"], "/t/vm/root.img");
        assert_eq!(v["disks"][0]["read_only"], true);
        assert_eq!(v["disks"][1]["read_only"], false);
        assert_eq!(v["disks"][2]["path"], "/s/scratch/tools.img");
        assert_eq!(
            v["vsock"]["uds_path"],
            "/run/bulkhead/domains/work/channel/vsock.sock"
        );
        assert_eq!(v["confine"]["uid"], bulkhead_sandbox::UID_BASE);
        assert_eq!(v["confine"]["gid"], bulkhead_sandbox::UID_BASE);
        assert!(v["confine"]["cgroup"].is_null());
        let cmdline = v["cmdline"].as_str().unwrap();
        assert!(cmdline.contains("bulkhead.channel=vsock"), "{cmdline}");
        assert!(cmdline.contains("bulkhead.name=work"), "{cmdline}");
        assert!(cmdline.contains("reboot=k"), "{cmdline}");
        assert_eq!(
            agent_socket(Path::new("/c")),
            PathBuf::from("/c/vsock.sock_1024")
        );
        let mut many = start();
        many.vcpus = 64;
        assert!(matches!(many.spec(), Err(VmError::Invalid(_))));
    }

    #[test]
    fn ready_pipe_eof_and_timeout() {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert!(!wait_ready(r, Duration::from_secs(5)).unwrap());
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            wait_ready(r, Duration::from_millis(50)),
            Err(VmError::ReadyTimeout)
        ));
        drop(w);
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"x").unwrap();
        assert!(wait_ready(r, Duration::from_secs(5)).unwrap());
    }
}
