//! The network link of a VM domain: a tap whose descriptor goes to the VMM.
//!
//! A VM client cannot have its link end in its own network namespace (its kernel is the
//! guest's), so domaind makes a small namespace per VM, the VM's *link namespace*, which
//! holds three interfaces: the tap [`VM_TAP`] (its descriptor is inherited by the VMM, which
//! never needs to enter any namespace), the bridge [`VM_BRIDGE`] and the client end `eth0`
//! of the usual veth pair to the netvm ([`crate::link::link_vm_client`]), both bridge ports.
//! The netvm sees exactly what a sandbox client gives it: `vifX.Y` with the gateway address,
//! a device route to the client's stable address, the client's chain in its ruleset. The
//! guest has the address itself (on its virtio-net interface, MAC [`vm_mac`]).
//!
//! Lifetimes: an open tun descriptor holds the namespace it was opened in, so the link
//! namespace lives exactly as long as the VMM (plus domaind's own descriptor while the domain
//! runs). When the VMM dies, even with domaind dead too, the namespace goes, and with it the
//! tap, the bridge and the veth pair: nothing is left in the netvm or on the host. When the
//! netvm restarts, its end of the pair dies with its namespace; domaind makes a new pair into
//! the same link namespace, and the VMM keeps its tap.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::netns::NetNs;
use crate::NetError;

/// The tap in a VM's link namespace.
pub const VM_TAP: &str = "tap0";
/// The bridge in a VM's link namespace (ports: the tap and the veth end towards the netvm).
pub const VM_BRIDGE: &str = "br0";

/// The guest's MAC for client address `ip`: locally administered, unicast, stable
/// (`02:b1:0a:89:x:y` for 10.137.x.y).
pub fn vm_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0xb1, o[0], o[1], o[2], o[3]]
}

/// The MAC of the netvm's end (`vifX.Y`) of a VM client's link, the guest's gateway:
/// stable per client (`02:b0:0a:89:x:y`), so it does not change when the netvm restarts.
pub fn gateway_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0xb0, o[0], o[1], o[2], o[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Create the tap `name` inside `ns` (from a thread that entered it) and return its
/// descriptor. The descriptor holds `ns` alive.
pub fn create_tap(ns: &NetNs, name: &str) -> Result<OwnedFd, NetError> {
    let n = name.to_owned();
    ns.run(move || bulkhead_virtio::net::open_tap(&n))?
        .map_err(|e| NetError::Netns {
            what: format!("create tap {name} (/dev/net/tun, TUNSETIFF)"),
            message: e.to_string(),
        })
}

/// `_IO('T', 227)`: a descriptor of the network namespace a tun device lives in.
const TUNGETDEVNETNS: libc::c_ulong = 0x54e3;

/// The link namespace of a running VM after a domaind restart: the namespace of the tap that
/// process `pid` (the VMM) holds as descriptor `fd` (pidfd_getfd, then TUNGETDEVNETNS).
pub fn netns_of_tap_in(pid: i32, fd: i32) -> Result<NetNs, NetError> {
    use std::os::fd::FromRawFd;
    let err = |what: &str| {
        let e = std::io::Error::last_os_error();
        NetError::Netns {
            what: format!("{what} (VMM pid {pid}, fd {fd})"),
            message: e.to_string(),
        }
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(err("pidfd_open"));
    }
    // SAFETY: a new descriptor returned to us above, owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags, and
    // returns a new (close-on-exec) descriptor or -1.
    let tap = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if tap < 0 {
        return Err(err("pidfd_getfd"));
    }
    // SAFETY: a new descriptor returned to us above, owned from here on.
    let tap = unsafe { OwnedFd::from_raw_fd(tap as i32) };
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new descriptor or -1; on a
    // descriptor that is not a tun device it fails (ENOTTY/EBADFD).
    let ns = unsafe { libc::ioctl(tap.as_raw_fd(), TUNGETDEVNETNS as _) };
    if ns < 0 {
        return Err(err("TUNGETDEVNETNS"));
    }
    // SAFETY: a new descriptor returned to us above, owned from here on.
    Ok(NetNs::from(unsafe { OwnedFd::from_raw_fd(ns) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_local_unicast_and_follows_the_address() {
        let m = vm_mac(Ipv4Addr::new(10, 137, 0, 5));
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_eq!(mac_text(m), "02:b1:0a:89:00:05");
        assert_ne!(m, vm_mac(Ipv4Addr::new(10, 137, 1, 5)));
        let g = gateway_mac(Ipv4Addr::new(10, 137, 0, 5));
        assert_eq!(g[0] & 3, 2, "local unicast");
        assert_ne!(g, m);
    }

    #[test]
    fn tap_names_are_checked() {
        assert!(bulkhead_virtio::net::open_tap("").is_err());
        assert!(bulkhead_virtio::net::open_tap("a-name-that-is-too-long").is_err());
        assert!(VM_TAP.len() < libc::IFNAMSIZ && VM_BRIDGE.len() < libc::IFNAMSIZ);
    }
}
