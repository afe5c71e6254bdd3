//! The VM specification `bulkhead-vmm run --spec FILE.json` reads (contract A of session 4).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest guest RAM we accept: the boot structures live below 1 MiB and a kernel needs more.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest RAM we accept (a desktop domain never needs more; bounds the mmap).
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// Most vCPUs a VM may have (the MADT, CPUID topology and thread count assume small numbers).
pub const MAX_VCPUS: u8 = 32;
/// Most virtio-mmio devices (GSIs 5..23 are the free legacy IOAPIC inputs).
pub const MAX_MMIO_DEVICES: usize = 19;
/// Longest kernel command line the spec may give (the guest limit is 2048 with what we append).
pub const MAX_SPEC_CMDLINE: usize = 1024;
/// Most network interfaces of one VM.
pub const MAX_NETS: usize = 4;

/// One VM: what to boot, with how much, and which devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Domain name (used in logs and thread names only).
    pub name: String,
    /// ELF vmlinux (tried first) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// The VMM appends `console=ttyS0 reboot=k panic=-1` and `virtio_mmio.device=` entries.
    #[serde(default)]
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Console output, bounded: `serial_log_max` bytes, then one rotation to `<serial_log>.old`.
    pub serial_log: PathBuf,
    pub serial_log_max: u64,
    /// A FIFO whose bytes go to the guest's COM1 as console input (`bulkhead console`).
    #[serde(default)]
    pub serial_input: Option<PathBuf>,
    /// Disks in order: /dev/vda, /dev/vdb, ...
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub vsock: Option<VsockSpec>,
    /// Network interfaces in order (a client has one; a net VM its uplink, then the link to
    /// its clients). At most [`MAX_NETS`].
    #[serde(default)]
    pub nets: Vec<NetSpec>,
    #[serde(default)]
    pub rng: bool,
    /// Confinement of the VMM process; `None` only in tests.
    #[serde(default)]
    pub confine: Option<ConfineSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    pub guest_cid: u64,
    /// Host side of the hybrid vsock: the device listens here; guest connections to port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Name of an existing tap device (opened by name in the VMM's network namespace), or,
    /// with `fd`, only the name of the inherited tap (for logs).
    pub tap: String,
    pub mac: [u8; 6],
    /// An inherited descriptor of a tap already attached with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR` (domaind makes it in the VM's link namespace, so the VMM never needs to be
    /// in the netvm's or any other network namespace). The VMM takes ownership of it.
    #[serde(default)]
    pub fd: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfineSpec {
    pub uid: u32,
    pub gid: u32,
    /// A cgroup directory (v1 or v2) the VMM process moves itself into before confining.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading VM spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing VM spec {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("VM spec: memory_mib {0} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}")]
    Memory(u64),
    #[error("VM spec: vcpus {0} is outside 1..={MAX_VCPUS}")]
    Vcpus(u8),
    #[error("VM spec: {0} virtio devices requested, at most {MAX_MMIO_DEVICES} fit")]
    TooManyDevices(usize),
    #[error("VM spec: cmdline is {0} bytes, at most {MAX_SPEC_CMDLINE}")]
    Cmdline(usize),
    #[error("VM spec: serial_log_max must be at least 1 byte")]
    SerialLogMax,
    #[error("VM spec: vsock guest_cid {0} is reserved (must be >= 3 and < 2^32-1)")]
    GuestCid(u64),
    #[error("VM spec: tap name {0:?} is not a valid interface name")]
    Tap(String),
    #[error("VM spec: tap fd {0} cannot be used (stdin, stdout and stderr are not taps, and each tap has its own)")]
    TapFd(i32),
    #[error("VM spec: {0} network interfaces, at most {MAX_NETS}")]
    TooManyNets(usize),
    #[error("VM spec: name {0:?} must be 1..=64 printable characters")]
    Name(String),
}

impl VmSpec {
    /// Reads a spec from a JSON file, or from stdin when `path` is `-`.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = if path == Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| {
                SpecError::Read {
                    path: path.into(),
                    source,
                }
            })?;
            s
        } else {
            std::fs::read_to_string(path).map_err(|source| SpecError::Read {
                path: path.into(),
                source,
            })?
        };
        let spec: VmSpec = serde_json::from_str(&text).map_err(|source| SpecError::Parse {
            path: path.into(),
            source,
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every bound the monitor relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.name.is_empty() || self.name.len() > 64 || self.name.chars().any(|c| c.is_control())
        {
            return Err(SpecError::Name(self.name.clone()));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory(self.memory_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(SpecError::Vcpus(self.vcpus));
        }
        let n = self.mmio_device_count();
        if n > MAX_MMIO_DEVICES {
            return Err(SpecError::TooManyDevices(n));
        }
        if self.cmdline.len() > MAX_SPEC_CMDLINE {
            return Err(SpecError::Cmdline(self.cmdline.len()));
        }
        if self.serial_log_max == 0 {
            return Err(SpecError::SerialLogMax);
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
                return Err(SpecError::GuestCid(v.guest_cid));
            }
        }
        if self.nets.len() > MAX_NETS {
            return Err(SpecError::TooManyNets(self.nets.len()));
        }
        let mut fds = Vec::new();
        for n in &self.nets {
            let ok = !n.tap.is_empty()
                && n.tap.len() < 16
                && n.tap
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(SpecError::Tap(n.tap.clone()));
            }
            if let Some(fd) = n.fd {
                if fd <= 2 || fds.contains(&fd) {
                    return Err(SpecError::TapFd(fd));
                }
                fds.push(fd);
            }
        }
        Ok(())
    }

    /// How many virtio-mmio windows this spec needs (disks, then vsock, net, rng).
    pub fn mmio_device_count(&self) -> usize {
        self.disks.len()
            + usize::from(self.vsock.is_some())
            + self.nets.len()
            + usize::from(self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "t".into(),
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
            memory_mib: 64,
            vcpus: 1,
            serial_log: "/tmp/s".into(),
            serial_log_max: 4096,
            serial_input: None,
            disks: vec![],
            vsock: None,
            nets: Vec::new(),
            rng: false,
            confine: None,
        }
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let s = spec();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&text).unwrap(), s);
        let minimal = r#"{"name":"a","kernel":"/k","memory_mib":16,"vcpus":1,
            "serial_log":"/l","serial_log_max":10}"#;
        let m: VmSpec = serde_json::from_str(minimal).unwrap();
        assert!(m.disks.is_empty() && !m.rng && m.confine.is_none());
        assert!(serde_json::from_str::<VmSpec>(r#"{"name":"a","bogus":1}"#).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut s = spec();
        s.memory_mib = 1;
        assert!(matches!(s.validate(), Err(SpecError::Memory(1))));
        let mut s = spec();
        s.vcpus = 0;
        assert!(matches!(s.validate(), Err(SpecError::Vcpus(0))));
        let mut s = spec();
        s.disks = vec![
            DiskSpec {
                path: "/d".into(),
                read_only: false
            };
            20
        ];
        assert!(matches!(s.validate(), Err(SpecError::TooManyDevices(20))));
        let mut s = spec();
        s.vsock = Some(VsockSpec {
            guest_cid: 2,
            uds_path: "/v".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::GuestCid(2))));
        let mut s = spec();
        s.nets = vec![NetSpec {
            tap: "tap/../x".into(),
            mac: [0; 6],
            fd: None,
        }];
        assert!(matches!(s.validate(), Err(SpecError::Tap(_))));
        let mut s = spec();
        s.nets = vec![NetSpec {
            tap: "tap0".into(),
            mac: [0; 6],
            fd: Some(1),
        }];
        assert!(matches!(s.validate(), Err(SpecError::TapFd(1))));
        let tap = |fd| NetSpec {
            tap: "tap0".into(),
            mac: [0; 6],
            fd: Some(fd),
        };
        s.nets = vec![tap(4)];
        assert!(s.validate().is_ok());
        s.nets = vec![tap(4), tap(5)];
        assert!(s.validate().is_ok());
        s.nets = vec![tap(4), tap(4)];
        assert!(matches!(s.validate(), Err(SpecError::TapFd(4))));
        s.nets = (4..4 + MAX_NETS as i32 + 1).map(tap).collect();
        assert!(matches!(s.validate(), Err(SpecError::TooManyNets(_))));
        assert!(spec().validate().is_ok());
    }
}
