//! The data path without domaind: three namespaces made here (net, two clients) and an
//! "internet" one with a TCP server on a documentation address, linked by the crate's own
//! functions, firewalled by a real `nft`. Needs root and nft; everything made here lives in
//! namespaces held by this process only, so it all vanishes when the test ends, pass or fail.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bulkhead_net::firewall::{parse_rules, RuleSet};
use bulkhead_net::link::{self, Uplink};
use bulkhead_net::netns::NetNs;
use bulkhead_net::nft::{self, Client, ClientFirewall, NetPlan, ResolvedRule};

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        bulkhead_test_skip::skip("needs root (network namespaces)");
        return false;
    }
    if std::process::Command::new("nft")
        .arg("-v")
        .output()
        .is_err()
    {
        bulkhead_test_skip::skip("nft is not installed (scripts/install-deps.sh)");
        return false;
    }
    true
}

/// A server in `ns` answering "hello\n" to every connection.
fn serve(ns: &NetNs, port: u16) -> SocketAddr {
    let addr = SocketAddr::from((SERVER, port));
    let l: TcpListener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"hello\n");
        }
    });
    addr
}

fn fetch(ns: &NetNs, addr: SocketAddr) -> Result<String, String> {
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut b = String::new();
        s.read_to_string(&mut b).map_err(|e| e.to_string())?;
        Ok(b)
    })
    .unwrap()
}

fn rules(text: &str) -> ClientFirewall {
    match parse_rules(text, 0) {
        RuleSet::Rules(r) => ClientFirewall::Rules(
            r.into_iter()
                .map(|rule| ResolvedRule {
                    rule,
                    host_addrs: vec![],
                })
                .collect(),
        ),
        RuleSet::Broken(m) => ClientFirewall::Broken(m),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_internet_through_net_and_the_firewall_decides() {
    if !can_run() {
        return;
    }
    let host = NetNs::current().unwrap();
    let internet = NetNs::new_detached().unwrap();
    let net = NetNs::new_detached().unwrap();
    let a = NetNs::new_detached().unwrap();
    let b = NetNs::new_detached().unwrap();
    // The uplink starts on the host, as a configured interface would.
    let up = format!("bhl{}", std::process::id() % 100_000);
    link::veth_pair(&host, &up, &internet, "wan").await.unwrap();
    link::address(&internet, "wan", SERVER, 24).await.unwrap();
    let http = serve(&internet, 80);
    let other = serve(&internet, 8080);
    let uplink = Uplink {
        ifname: up.clone(),
        address: UPLINK_IP,
        prefix: 24,
        gateway: Some(SERVER),
    };
    link::setup_net(&net, &host, Some(&uplink)).await.unwrap();
    // Setting up again (domaind restarted) finds the uplink already inside.
    link::setup_net(&net, &host, Some(&uplink)).await.unwrap();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 137, 0, 2), Ipv4Addr::new(10, 137, 0, 3));
    link::link_client(&net, &a, "vif0.2", ip_a).await.unwrap();
    link::link_client(&net, &b, "vif0.3", ip_b).await.unwrap();
    let apply = |fa: ClientFirewall, fb: ClientFirewall| {
        let plan = NetPlan {
            uplink: Some(up.clone()),
            dns: vec![SERVER],
            clients: vec![
                Client {
                    domain: "a".into(),
                    vif: "vif0.2".into(),
                    firewall: fa,
                },
                Client {
                    domain: "b".into(),
                    vif: "vif0.3".into(),
                    firewall: fb,
                },
            ],
        };
        nft::apply(&net, &nft::ruleset(&plan, 0)).unwrap();
    };

    apply(rules(""), rules(""));
    assert_eq!(fetch(&a, http).unwrap(), "hello\n");
    assert_eq!(fetch(&b, other).unwrap(), "hello\n");
    // Clients do not reach each other by default.
    let b_srv: TcpListener = b
        .run(move || TcpListener::bind((ip_b, 7000)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in b_srv.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"b\n");
        }
    });
    assert!(fetch(&a, SocketAddr::from((ip_b, 7000))).is_err());

    // Port rules; a broken set drops everything of that client only.
    apply(
        rules("action=accept dst4=192.0.2.0/24 proto=tcp dstports=80\naction=accept dst4=10.137.0.3 proto=tcp dstports=7000\naction=drop"),
        rules("action=bogus"),
    );
    assert_eq!(fetch(&a, http).unwrap(), "hello\n");
    assert!(fetch(&a, other).is_err());
    assert_eq!(fetch(&a, SocketAddr::from((ip_b, 7000))).unwrap(), "b\n");
    assert!(fetch(&b, http).is_err());

    // net restarts: the uplink goes back to the host, the client links die with net.
    assert!(link::return_uplink(&net, &host, &up).await.unwrap());
    drop(net);
    let net = NetNs::new_detached().unwrap();
    link::setup_net(&net, &host, Some(&uplink)).await.unwrap();
    link::link_client(&net, &a, "vif0.2", ip_a).await.unwrap();
    let plan = NetPlan {
        uplink: Some(up.clone()),
        dns: vec![SERVER],
        clients: vec![Client {
            domain: "a".into(),
            vif: "vif0.2".into(),
            firewall: rules(""),
        }],
    };
    nft::apply(&net, &nft::ruleset(&plan, 0)).unwrap();
    assert_eq!(fetch(&a, http).unwrap(), "hello\n");
    // b was not re-linked: it has no route anywhere.
    assert!(fetch(&b, http).is_err());
    link::return_uplink(&net, &host, &up).await.unwrap();
    let hh = host.rtnl().unwrap();
    link::delete(&hh, &up).await.unwrap();
}
