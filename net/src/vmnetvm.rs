//! A VM that serves as a netvm (Qubes' sys-net), with the clients' firewall in front of it
//! (Qubes' sys-firewall), where the VM cannot reach it.
//!
//! The VM gets two network interfaces, both taps whose descriptors go to its VMM:
//! - its **uplink** ([`UPLINK_TAP`]) in the *uplink namespace*, bridged ([`UPLINK_BRIDGE`])
//!   with the host's uplink interface, moved there from the host (the fallback where the NIC
//!   cannot be given to the VM through VFIO: dom0's kernel only bridges frames, the VM has
//!   the address, the routes, DHCP or not, and the NAT to the world);
//! - its **link to the clients** ([`FIREWALL_TAP`]) in the *firewall namespace*: a namespace
//!   only domaind controls, where the clients' links end exactly as in a sandbox netvm's
//!   namespace (`vifX.Y`, one nftables chain per client with its firewall, DNS redirection,
//!   clients kept apart), and which masquerades them behind [`FIREWALL_ADDR`] towards the VM
//!   at [`VM_DOWN_ADDR`] (a /30). The VM sees one peer and no client; the firewall's rules
//!   are out of its reach: a compromised net VM cannot rewrite them (see the module doc of
//!   `domaind::manager::netvm`).
//!
//! Lifetimes: each tap's descriptor holds its namespace, so both go when the VMM dies (with
//! domaind's own references dropped); the uplink is moved back to the host before that by
//! [`crate::link::return_uplink`].

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use rtnetlink::{LinkBridge, LinkUnspec};

use crate::link::{index, Uplink};
use crate::netns::NetNs;
use crate::tap::create_tap;
use crate::NetError;

/// The VM's link to its clients, in the firewall namespace.
pub const FIREWALL_TAP: &str = "nvm0";
/// The VM's uplink tap, in the uplink namespace.
pub const UPLINK_TAP: &str = "nvmup";
/// The bridge of the uplink namespace (ports: the host's uplink and [`UPLINK_TAP`]).
pub const UPLINK_BRIDGE: &str = "brup";
/// The firewall namespace's address on [`FIREWALL_TAP`].
pub const FIREWALL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 138, 255, 1);
/// The net VM's address on its link to the firewall.
pub const VM_DOWN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 138, 255, 2);
/// Prefix of that link.
pub const DOWN_PREFIX: u8 = 30;

/// The MAC of the net VM's link to the firewall (locally administered, stable).
pub const VM_DOWN_MAC: [u8; 6] = [0x02, 0xb2, 10, 138, 255, 2];
/// The MAC of the net VM's uplink (locally administered, stable).
pub const VM_UPLINK_MAC: [u8; 6] = [0x02, 0xb3, 0, 0, 0, 1];

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        what,
        message: e.to_string(),
    }
}

/// The firewall namespace's "uplink": the tap towards the VM, addressed, the VM as gateway.
/// [`crate::link::setup_net`] configures it like a sandbox net domain's uplink.
pub fn firewall_uplink() -> Uplink {
    Uplink {
        ifname: FIREWALL_TAP.to_owned(),
        address: FIREWALL_ADDR,
        prefix: DOWN_PREFIX,
        gateway: Some(VM_DOWN_ADDR),
    }
}

/// Makes the tap of the VM's link to its clients in the firewall namespace `fw` and returns
/// its descriptor (for the VMM). `fw` is then served like a sandbox netvm's namespace, with
/// [`firewall_uplink`] as its uplink.
pub fn prepare_firewall(fw: &NetNs) -> Result<OwnedFd, NetError> {
    create_tap(fw, FIREWALL_TAP)
}

/// Moves the host's uplink `ifname` from `host` into the uplink namespace `up` (unless it is
/// there already) and bridges it with a new tap for the VM; returns the tap's descriptor.
/// Neither the bridge nor the uplink gets an address: the VM has it.
pub async fn prepare_uplink(up: &NetNs, host: &NetNs, ifname: &str) -> Result<OwnedFd, NetError> {
    let uh = up.rtnl()?;
    let uidx = crate::link::take_uplink(up, host, ifname, "the net VM's uplink namespace").await?;
    if index(&uh, UPLINK_BRIDGE).await?.is_none() {
        uh.link()
            .add(LinkBridge::new(UPLINK_BRIDGE).build())
            .execute()
            .await
            .map_err(nl(format!("create bridge {UPLINK_BRIDGE}")))?;
    }
    let bidx = index(&uh, UPLINK_BRIDGE)
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: UPLINK_BRIDGE.into(),
            message: "missing after its creation".into(),
        })?;
    let tap = create_tap(up, UPLINK_TAP)?;
    let tidx = index(&uh, UPLINK_TAP)
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: UPLINK_TAP.into(),
            message: "missing after its creation".into(),
        })?;
    for (idx, name) in [(uidx, ifname), (tidx, UPLINK_TAP)] {
        uh.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .controller(bidx)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("{name} into {UPLINK_BRIDGE}, up")))?;
    }
    uh.link()
        .set(LinkUnspec::new_with_index(bidx).up().build())
        .execute()
        .await
        .map_err(nl(format!("{UPLINK_BRIDGE} up")))?;
    Ok(tap)
}

/// The kernel command line words that tell a net VM's init its two interfaces:
/// `bulkhead.netvm.up=A/LEN,GW,MAC bulkhead.netvm.down=A/LEN,MAC bulkhead.dns=D1,D2`
/// (no `up` without an uplink; no GW without a gateway: `-`).
pub fn guest_cmdline(uplink: Option<&Uplink>, dns: &[Ipv4Addr]) -> String {
    let mut s = String::new();
    if let Some(u) = uplink {
        let gw = u
            .gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            " bulkhead.netvm.up={}/{},{gw},{}",
            u.address,
            u.prefix,
            crate::tap::mac_text(VM_UPLINK_MAC)
        ));
    }
    s.push_str(&format!(
        " bulkhead.netvm.down={VM_DOWN_ADDR}/{DOWN_PREFIX},{}",
        crate::tap::mac_text(VM_DOWN_MAC)
    ));
    if !dns.is_empty() {
        let d: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        s.push_str(&format!(" bulkhead.dns={}", d.join(",")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_learns_both_interfaces_from_its_command_line() {
        let up = Uplink {
            ifname: "eth9".into(),
            address: Ipv4Addr::new(192, 0, 2, 10),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(192, 0, 2, 254)),
        };
        let c = guest_cmdline(Some(&up), &[Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(
            c,
            " bulkhead.netvm.up=192.0.2.10/24,192.0.2.254,02:b3:00:00:00:01 \
             bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02 bulkhead.dns=192.0.2.53"
        );
        let c = guest_cmdline(None, &[]);
        assert_eq!(c, " bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02");
        let fw = firewall_uplink();
        assert_eq!(
            (fw.address, fw.gateway),
            (FIREWALL_ADDR, Some(VM_DOWN_ADDR))
        );
    }
}
