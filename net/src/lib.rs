//! Bulkhead networking (issue 7): netvm links between network namespaces, the net domain's
//! NAT and DNS redirection, and the per-domain firewall in Qubes' rule format.
//!
//! - [`netns`]: namespaces held by descriptor; running code, netlink and programs inside one.
//! - [`link`]: veth pairs between a net domain and its clients, the uplink (rtnetlink).
//! - [`firewall`]: the rule format, its parser (limits + fuzz target) and the rule file.
//! - [`nft`]: the net domain's nftables ruleset (NAT, DNS, a chain per client) and `nft -f -`.
//! - [`dns`]: the small resolver for `dsthost` rules (and test answers).
//! - [`addr`]: stable client addresses.
//! - [`tap`]: the link namespace and tap of a VM client (its descriptor goes to the VMM).
//!
//! Addressing follows Qubes: clients in 10.137.0.0/16 (one /32 each), the gateway 10.137.0.1
//! on every net-side link, DNS at the virtual 10.139.1.1 and 10.139.1.2, redirected in net to
//! the uplink's resolvers.

pub mod addr;
pub mod dns;
pub mod firewall;
pub mod link;
pub mod netns;
pub mod nft;
pub mod tap;
pub mod vmnetvm;

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The gateway address clients route through (on the net side of every client link).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 137, 0, 1);
/// The virtual DNS servers of every client (its /etc/resolv.conf).
pub const DNS_VIRTUAL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 139, 1, 1), Ipv4Addr::new(10, 139, 1, 2)];

/// The resolv.conf of a domain with a netvm.
pub fn resolv_conf() -> String {
    format!(
        "# Bulkhead: the net domain answers here\nnameserver {}\nnameserver {}\n",
        DNS_VIRTUAL[0], DNS_VIRTUAL[1]
    )
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace: {what}: {message}")]
    Netns { what: String, message: String },
    #[error("netlink: {what}: {message}")]
    Netlink { what: String, message: String },
    #[error("nftables: {message}")]
    Nft { message: String },
    #[error("resolving {name}: {message}")]
    Dns { name: String, message: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("no free client address left in 10.137.0.0/16")]
    Exhausted,
}
