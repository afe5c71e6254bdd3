//! Links, addresses and routes through route netlink (the rtnetlink crate), each operation
//! in the namespace it belongs to.
//!
//! A client link is a veth pair created in the net domain's namespace with its peer created
//! directly in the client's namespace (`IFLA_NET_NS_FD` on the peer): neither end ever
//! exists in the host's namespace or in a third domain's. Addresses (Qubes-like):
//! the client has `10.137.x.y/32` on `eth0` with a device route to the gateway 10.137.0.1 and
//! the default route through it; the net side (`vifN`) has 10.137.0.1/32 and a device route
//! to the client's address. When either namespace goes away the kernel deletes the pair.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::netns::NetNs;
use crate::tap::{create_tap, VM_BRIDGE, VM_TAP};
use crate::{NetError, GATEWAY};

/// Interface name of the link inside a client domain.
pub const CLIENT_IF: &str = "eth0";

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Netlink {
        what,
        message: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| c.get() == -errno))
}

/// Index of interface `name`, `None` if there is none.
pub async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("look up interface {name}"))(e)),
    }
}

async fn need_index(h: &Handle, name: &str, place: &str) -> Result<u32, NetError> {
    index(h, name).await?.ok_or_else(|| NetError::Netlink {
        what: format!("interface {name}"),
        message: format!("not found in {place}"),
    })
}

async fn up(h: &Handle, idx: u32, name: &str) -> Result<(), NetError> {
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("set {name} up")))
}

async fn add_addr(h: &Handle, idx: u32, ip: Ipv4Addr, len: u8, name: &str) -> Result<(), NetError> {
    h.address()
        .add(idx, IpAddr::V4(ip), len)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("add {ip}/{len} to {name}")))
}

async fn device_route(h: &Handle, idx: u32, dst: Ipv4Addr, name: &str) -> Result<(), NetError> {
    let r = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(r)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("route {dst} dev {name}")))
}

async fn default_route(h: &Handle, idx: u32, via: Ipv4Addr, name: &str) -> Result<(), NetError> {
    let r = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(via)
        .output_interface(idx)
        .onlink()
        .build();
    h.route()
        .add(r)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("default route via {via} dev {name}")))
}

/// Delete interface `name` if it exists.
pub async fn delete(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(idx) = index(h, name).await? {
        match h.link().del(idx).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::ENODEV) => {}
            Err(e) => return Err(nl(format!("delete {name}"))(e)),
        }
    }
    Ok(())
}

/// A veth pair: `a_name` in the namespace of `h`, its peer `b_name` created directly in `b`.
async fn create_veth(h: &Handle, a_name: &str, b: &NetNs, b_name: &str) -> Result<(), NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(b_name.to_owned())
        .setns_by_fd(b.raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(a_name.to_owned())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl(format!("create veth {a_name} <-> {b_name}")))
}

/// The uplink of a net domain, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub ifname: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

/// Make `net` a net domain's namespace: forwarding on, and (if given) the uplink moved in
/// from `host` and configured. An uplink already inside `net` (domaind restarted) is only
/// configured again.
pub async fn setup_net(net: &NetNs, host: &NetNs, uplink: Option<&Uplink>) -> Result<(), NetError> {
    net.sysctl("net/ipv4/ip_forward", "1")?;
    let Some(u) = uplink else {
        return Ok(());
    };
    let nh = net.rtnl()?;
    let idx = take_uplink(net, host, &u.ifname, "the net domain").await?;
    add_addr(&nh, idx, u.address, u.prefix, &u.ifname).await?;
    up(&nh, idx, &u.ifname).await?;
    if let Some(gw) = u.gateway {
        default_route(&nh, idx, gw, &u.ifname).await?;
    }
    Ok(())
}

/// Moves the host's uplink `ifname` from `host` into `into` (`place` names it in messages),
/// unless it is there already (domaind restarted); returns its index there.
pub async fn take_uplink(
    into: &NetNs,
    host: &NetNs,
    ifname: &str,
    place: &str,
) -> Result<u32, NetError> {
    let nh = into.rtnl()?;
    if let Some(i) = index(&nh, ifname).await? {
        return Ok(i);
    }
    let hh = host.rtnl()?;
    let hidx = index(&hh, ifname).await?.ok_or_else(|| NetError::Netlink {
        what: format!("uplink {ifname}"),
        message: "no such interface on the host (check [net] uplink in domaind.toml)".into(),
    })?;
    hh.link()
        .set(
            LinkUnspec::new_with_index(hidx)
                .setns_by_fd(into.raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move uplink {ifname} into {place}")))?;
    need_index(&nh, ifname, place).await
}

/// Move the uplink out of `net` back to `host` (before `net` goes away). No uplink in `net`:
/// nothing to do.
pub async fn return_uplink(net: &NetNs, host: &NetNs, ifname: &str) -> Result<bool, NetError> {
    let nh = net.rtnl()?;
    let Some(idx) = index(&nh, ifname).await? else {
        return Ok(false);
    };
    nh.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .setns_by_fd(host.raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move uplink {ifname} back to the host")))?;
    Ok(true)
}

/// The net domain's side of a client link, the same for sandbox and VM clients: removes an
/// older link (`eth0` in `other`, `vif` in `net`), creates the veth pair `vif` <-> `eth0`,
/// gives `vif` the MAC `mac` (when set) and the gateway address, sets it up and routes
/// `client_ip` through it. `ch` is `other`'s netlink handle.
async fn net_side(
    net: &NetNs,
    ch: &Handle,
    vif: &str,
    other: &NetNs,
    client_ip: Ipv4Addr,
    mac: Option<[u8; 6]>,
) -> Result<(), NetError> {
    let nh = net.rtnl()?;
    delete(ch, CLIENT_IF).await?;
    delete(&nh, vif).await?;
    create_veth(&nh, vif, other, CLIENT_IF).await?;
    let vidx = need_index(&nh, vif, "the net domain").await?;
    if let Some(mac) = mac {
        nh.link()
            .set(
                LinkUnspec::new_with_index(vidx)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("set the MAC of {vif}")))?;
    }
    add_addr(&nh, vidx, GATEWAY, 32, vif).await?;
    up(&nh, vidx, vif).await?;
    device_route(&nh, vidx, client_ip, vif).await
}

/// Link a client: a veth pair `vif` (in `net`) <-> `eth0` (in `client`), addressed and
/// routed. Replaces an older link of the same client.
pub async fn link_client(
    net: &NetNs,
    client: &NetNs,
    vif: &str,
    client_ip: Ipv4Addr,
) -> Result<(), NetError> {
    let ch = client.rtnl()?;
    net_side(net, &ch, vif, client, client_ip, None).await?;
    let cidx = need_index(&ch, CLIENT_IF, "the client domain").await?;
    add_addr(&ch, cidx, client_ip, 32, CLIENT_IF).await?;
    up(&ch, cidx, CLIENT_IF).await?;
    device_route(&ch, cidx, GATEWAY, CLIENT_IF).await?;
    default_route(&ch, cidx, GATEWAY, CLIENT_IF).await?;
    // Unprivileged ICMP echo sockets (ping without CAP_NET_RAW), as systemd sets on hosts.
    client.sysctl("net/ipv4/ping_group_range", "0 2147483647")?;
    Ok(())
}

/// Make `ns` a VM's link namespace (see [`crate::tap`]): IPv6 off (nothing of the link
/// namespace itself talks on the link), the bridge [`VM_BRIDGE`], the tap [`VM_TAP`] as its
/// port, both up. Returns the tap's descriptor (for the VMM), which holds `ns` alive.
pub async fn prepare_vm_link(ns: &NetNs) -> Result<std::os::fd::OwnedFd, NetError> {
    for key in [
        "net/ipv6/conf/all/disable_ipv6",
        "net/ipv6/conf/default/disable_ipv6",
    ] {
        // A kernel without IPv6 has no such key: nothing to turn off.
        if let Err(e) = ns.sysctl(key, "1") {
            tracing::debug!(key, error = %e, "IPv6 sysctl in a VM link namespace");
        }
    }
    let h = ns.rtnl()?;
    if index(&h, VM_BRIDGE).await?.is_none() {
        h.link()
            .add(LinkBridge::new(VM_BRIDGE).build())
            .execute()
            .await
            .map_err(nl(format!("create bridge {VM_BRIDGE}")))?;
    }
    let bidx = need_index(&h, VM_BRIDGE, "the VM link namespace").await?;
    up(&h, bidx, VM_BRIDGE).await?;
    let tap = create_tap(ns, VM_TAP)?;
    let tidx = need_index(&h, VM_TAP, "the VM link namespace").await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(tidx)
                .controller(bidx)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("{VM_TAP} into {VM_BRIDGE}, up")))?;
    Ok(tap)
}

/// Link a VM client: a veth pair `vif` (in `net`, addressed and routed exactly as for a
/// sandbox client by [`link_client`]) <-> `eth0` in the VM's link namespace `link_ns`, where
/// it joins the bridge with the VM's tap. `eth0` there has no address: the guest has
/// `client_ip`. Replaces an older link (after a restart of the netvm or a netvm change).
pub async fn link_vm_client(
    net: &NetNs,
    link_ns: &NetNs,
    vif: &str,
    client_ip: Ipv4Addr,
) -> Result<(), NetError> {
    let ch = link_ns.rtnl()?;
    // The gateway's MAC stays the same across netvm restarts: the guest keeps its neighbour
    // entry for 10.137.0.1, which a new random MAC would leave pointing nowhere until it
    // expires (a sandbox gets a new eth0, and with it an empty neighbour table).
    let mac = crate::tap::gateway_mac(client_ip);
    net_side(net, &ch, vif, link_ns, client_ip, Some(mac)).await?;

    let bidx = need_index(&ch, VM_BRIDGE, "the VM link namespace").await?;
    let cidx = need_index(&ch, CLIENT_IF, "the VM link namespace").await?;
    ch.link()
        .set(
            LinkUnspec::new_with_index(cidx)
                .controller(bidx)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("{CLIENT_IF} into {VM_BRIDGE}, up")))
}

/// Remove a client's link (both ends go with `eth0`).
pub async fn unlink_client(client: &NetNs) -> Result<(), NetError> {
    let ch = client.rtnl()?;
    delete(&ch, CLIENT_IF).await
}

/// A veth pair `a_name` (in `a`) <-> `b_name` (in `b`), both up, without addresses. For
/// test networks and benchmarks (the "internet" side of an uplink).
pub async fn veth_pair(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<(), NetError> {
    let ah = a.rtnl()?;
    let bh = b.rtnl()?;
    create_veth(&ah, a_name, b, b_name).await?;
    let ai = need_index(&ah, a_name, "the first namespace").await?;
    up(&ah, ai, a_name).await?;
    let bi = need_index(&bh, b_name, "the second namespace").await?;
    up(&bh, bi, b_name).await
}

/// Give `ifname` in `ns` the address `ip/prefix` and set it (and `lo`) up.
pub async fn address(ns: &NetNs, ifname: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    let h = ns.rtnl()?;
    let i = need_index(&h, ifname, "the namespace").await?;
    add_addr(&h, i, ip, prefix, ifname).await?;
    up(&h, i, ifname).await?;
    if let Some(lo) = index(&h, "lo").await? {
        up(&h, lo, "lo").await?;
    }
    Ok(())
}

/// A device route to `dst`/32 through `ifname` in `ns` (test networks and benchmarks).
pub async fn route_dev(ns: &NetNs, ifname: &str, dst: Ipv4Addr) -> Result<(), NetError> {
    let h = ns.rtnl()?;
    let i = need_index(&h, ifname, "the namespace").await?;
    device_route(&h, i, dst, ifname).await
}

/// Whether a client link exists: `vif` in `net` and `eth0` in `client` (after a domaind
/// restart the links of running domains are still there and are kept).
pub async fn is_linked(net: &NetNs, client: &NetNs, vif: &str) -> Result<bool, NetError> {
    let nh = net.rtnl()?;
    let ch = client.rtnl()?;
    Ok(index(&nh, vif).await?.is_some() && index(&ch, CLIENT_IF).await?.is_some())
}
