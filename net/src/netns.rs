//! Network namespaces held by descriptor, and ways to act inside one from domaind.
//!
//! A namespace lives as long as a process is in it or a descriptor refers to it: domaind
//! keeps the descriptor of each net domain's namespace, so the uplink can be moved back to
//! the host when that domain stops (a veth left in a dying namespace would be destroyed).
//!
//! Acting inside: a netlink socket belongs to the namespace of the thread that created it,
//! so [`NetNs::rtnl`] creates it on a short-lived thread that first `setns`es into the
//! namespace; [`NetNs::run`] runs any closure so (sysctls, sockets); [`NetNs::command`]
//! spawns a program (nft) that enters the namespace between fork and exec.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::NetError;

/// A network namespace, held open.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    /// The namespace of process `pid`.
    pub fn of_pid(pid: i32) -> Result<NetNs, NetError> {
        Self::open(&format!("/proc/{pid}/ns/net"))
    }

    /// The namespace of the calling thread (domaind's: the host's).
    pub fn current() -> Result<NetNs, NetError> {
        Self::open("/proc/thread-self/ns/net")
    }

    fn open(path: &str) -> Result<NetNs, NetError> {
        let f = std::fs::File::open(path).map_err(|e| NetError::Netns {
            what: format!("open {path}"),
            message: e.to_string(),
        })?;
        Ok(NetNs { fd: f.into() })
    }

    /// A new, empty namespace (only `lo`, down), held by this descriptor alone: it vanishes
    /// when the last holder closes it. For tests and benchmarks.
    pub fn new_detached() -> Result<NetNs, NetError> {
        std::thread::spawn(|| -> Result<NetNs, NetError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                what: "unshare(CLONE_NEWNET)".into(),
                message: e.to_string(),
            })?;
            // This thread ends right after: the namespace is then held only by the fd.
            NetNs::current()
        })
        .join()
        .map_err(|_| NetError::Netns {
            what: "namespace thread".into(),
            message: "panicked".into(),
        })?
    }

    pub fn try_clone(&self) -> Result<NetNs, NetError> {
        Ok(NetNs {
            fd: self.fd.try_clone().map_err(|e| NetError::Netns {
                what: "dup".into(),
                message: e.to_string(),
            })?,
        })
    }

    /// The inode number: two descriptors of one namespace have the same.
    pub fn inode(&self) -> Result<u64, NetError> {
        nix::sys::stat::fstat(self.fd.as_raw_fd())
            .map(|s| s.st_ino)
            .map_err(|e| NetError::Netns {
                what: "fstat".into(),
                message: e.to_string(),
            })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Run `f` on a new thread that has entered this namespace; the thread ends with `f`,
    /// so no other code ever runs in the wrong namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let fd = self.try_clone()?;
        std::thread::spawn(move || -> Result<T, NetError> {
            setns(fd.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                what: "setns(CLONE_NEWNET)".into(),
                message: e.to_string(),
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetError::Netns {
            what: "namespace thread".into(),
            message: "panicked".into(),
        })?
    }

    /// A command that runs inside this namespace (it enters it between fork and exec).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let raw = self.fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; `raw` stays open in the child (the parent holds the
        // descriptor for as long as the Command may be spawned, borrowed by &self).
        unsafe {
            cmd.pre_exec(move || {
                // SAFETY: `raw` is an open descriptor of the parent, inherited by the child.
                let fd = BorrowedFd::borrow_raw(raw);
                setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// A route-netlink handle bound to this namespace. Must be called within a tokio
    /// runtime: the connection task is spawned on it.
    pub fn rtnl(&self) -> Result<rtnetlink::Handle, NetError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| NetError::Netns {
            what: "netlink connection".into(),
            message: format!("no async runtime: {e}"),
        })?;
        let rt2 = rt.clone();
        let (conn, handle) = self
            .run(move || {
                // The socket is created (in this namespace) and registered with the runtime
                // here; afterwards it may be used from any thread.
                let _enter = rt2.enter();
                rtnetlink::new_connection().map(|(c, h, _)| (c, h))
            })?
            .map_err(|e| NetError::Netns {
                what: "netlink socket".into(),
                message: e.to_string(),
            })?;
        rt.spawn(conn);
        Ok(handle)
    }

    /// Write a sysctl below /proc/sys/net as seen from this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        if key.contains("..") || !key.starts_with("net/") {
            return Err(NetError::Netns {
                what: format!("sysctl {key}"),
                message: "not a net sysctl".into(),
            });
        }
        let path = format!("/proc/sys/{key}");
        let v = value.to_owned();
        let p = path.clone();
        self.run(move || std::fs::write(&p, v.as_bytes()))?
            .map_err(|e| NetError::Netns {
                what: format!("write {path}"),
                message: e.to_string(),
            })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<OwnedFd> for NetNs {
    fn from(fd: OwnedFd) -> Self {
        NetNs { fd }
    }
}
