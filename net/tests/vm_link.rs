//! A VM client's link without a VM: the link namespace with its bridge and tap
//! (`link::prepare_vm_link`), linked to a netvm namespace (`link::link_vm_client`); frames
//! written into the tap's descriptor (as the VMM's virtio-net does) get answers from the
//! netvm's gateway address; a "restarted" netvm (a new namespace) is linked to the same tap;
//! the tap's descriptor alone holds the link namespace, and once it is closed nothing of the
//! link is left in the netvm. Needs root.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use bulkhead_net::netns::NetNs;
use bulkhead_net::tap::vm_mac;
use bulkhead_net::{link, GATEWAY};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 137, 0, 9);
const VIF: &str = "vif0.9";
/// The tap's default vnet header (struct virtio_net_hdr, 10 bytes).
const VNET_HDR: usize = 10;

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs root (network namespaces, /dev/net/tun)");
        return false;
    }
    true
}

fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&CLIENT.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GATEWAY.octets());
    f
}

/// Write an ARP request for the gateway into the tap; wait for the reply (other frames are
/// skipped). Returns the gateway's MAC.
fn gateway_answers(tap: &OwnedFd, mac: [u8; 6]) -> Option<[u8; 6]> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut asked = Instant::now() - Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if asked.elapsed() > Duration::from_secs(1) {
            nix::unistd::write(tap, &arp_request(mac)).expect("write into the tap");
            asked = Instant::now();
        }
        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        let n = nix::unistd::read(tap.as_raw_fd(), &mut buf).expect("read from the tap");
        let f = &buf[VNET_HDR.min(n)..n];
        let is_reply = f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 2]
            && f[28..32] == GATEWAY.octets()
            && f[38..42] == CLIENT.octets()
            && f[0..6] == mac;
        if is_reply {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[22..28]);
            return Some(m);
        }
    }
    None
}

/// The interfaces of `ns` (`ip -o link` run inside it).
fn links_in(ns: &NetNs) -> String {
    let out = ns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_in_a_link_namespace_reaches_the_netvm_and_survives_its_restart() {
    if !can_run() {
        return;
    }
    let net = NetNs::new_detached().unwrap();
    link::setup_net(&net, &net, None).await.unwrap();
    let link_ns = NetNs::new_detached().unwrap();
    let tap = link::prepare_vm_link(&link_ns).await.unwrap();
    link::link_vm_client(&net, &link_ns, VIF, CLIENT)
        .await
        .unwrap();
    let mac = vm_mac(CLIENT);
    let gw1 = gateway_answers(&tap, mac).expect("the netvm's gateway answered through the tap");
    let links = links_in(&link_ns);
    for dev in ["br0", "tap0", "eth0"] {
        assert!(links.contains(dev), "{links}");
    }
    assert!(links_in(&net).contains(VIF), "{}", links_in(&net));

    // The netvm restarts: its namespace (and its end of the pair) is gone, a new one comes.
    drop(net);
    let net2 = NetNs::new_detached().unwrap();
    link::setup_net(&net2, &net2, None).await.unwrap();
    link::link_vm_client(&net2, &link_ns, VIF, CLIENT)
        .await
        .unwrap();
    let gw2 = gateway_answers(&tap, mac).expect("the new netvm answered through the same tap");
    // The same gateway MAC on the new pair: the guest's neighbour entry stays right.
    assert_eq!(gw1, gw2);
    assert_eq!(gw1, bulkhead_net::tap::gateway_mac(CLIENT));

    // After a domaind restart the namespace is found again through the VMM's descriptor.
    let again = bulkhead_net::tap::netns_of_tap_in(std::process::id() as i32, tap.as_raw_fd())
        .expect("the link namespace from the tap");
    assert_eq!(again.inode().unwrap(), link_ns.inode().unwrap());
    drop(again);

    // Only the tap's descriptor holds the link namespace now: the link stays.
    drop(link_ns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(links_in(&net2).contains(VIF), "{}", links_in(&net2));
    assert!(gateway_answers(&tap, mac).is_some());
    // The VMM exits (its tap closes): the link namespace goes, and the pair with it.
    drop(tap);
    let t0 = Instant::now();
    while links_in(&net2).contains(VIF) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{VIF} still in the netvm 10 s after the tap was closed:\n{}",
            links_in(&net2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
