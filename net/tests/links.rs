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
    let apply_pairs = |fa: ClientFirewall, fb: ClientFirewall, a_reaches: &[&str]| {
        let plan = NetPlan {
            uplink: Some(up.clone()),
            dns: vec![SERVER],
            clients: vec![
                Client {
                    domain: "a".into(),
                    vif: "vif0.2".into(),
                    firewall: fa,
                    may_reach: a_reaches.iter().map(|s| s.to_string()).collect(),
                },
                Client {
                    domain: "b".into(),
                    vif: "vif0.3".into(),
                    firewall: fb,
                    may_reach: vec![],
                },
            ],
        };
        nft::apply(&net, &nft::ruleset(&plan, 0)).unwrap();
    };
    let apply = |fa: ClientFirewall, fb: ClientFirewall| apply_pairs(fa, fb, &[]);

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
    // No firewall rule opens the way to another client, however it is written.
    for fw in [
        "action=accept dst4=10.137.0.3 proto=tcp dstports=7000",
        "action=accept dst4=10.137.0.0/16",
        "action=accept dst4=0.0.0.0/0",
        "action=accept",
    ] {
        apply(rules(fw), rules(""));
        assert!(
            fetch(&a, SocketAddr::from((ip_b, 7000))).is_err(),
            "{fw} let a reach b"
        );
        if fw == "action=accept" || fw.ends_with("0.0.0.0/0") {
            assert_eq!(fetch(&a, http).unwrap(), "hello\n", "{fw}");
        }
    }
    // Only the explicit pair does, one way.
    let a_srv: TcpListener = a
        .run(move || TcpListener::bind((ip_a, 7000)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in a_srv.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"a\n");
        }
    });
    apply_pairs(rules(""), rules(""), &["b"]);
    assert_eq!(fetch(&a, SocketAddr::from((ip_b, 7000))).unwrap(), "b\n");
    assert!(fetch(&b, SocketAddr::from((ip_a, 7000))).is_err());

    // Port rules; a broken set drops everything of that client only.
    apply(
        rules("action=accept dst4=192.0.2.0/24 proto=tcp dstports=80\naction=drop"),
        rules("action=bogus"),
    );
    assert_eq!(fetch(&a, http).unwrap(), "hello\n");
    assert!(fetch(&a, other).is_err());
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
            may_reach: vec![],
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

/// `ip ARGS` inside `ns`.
fn ip(ns: &NetNs, args: &str) {
    let out = ns
        .command("ip")
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("ip {args}: {e}"));
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MAC address of `dev` in `ns`.
fn mac_of(ns: &NetNs, dev: &str) -> String {
    let out = ns
        .command("ip")
        .args(["-o", "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text}"))
        .to_owned()
}

fn fetch6(ns: &NetNs, addr: SocketAddr) -> Result<String, String> {
    fetch(ns, addr)
}

fn serve6(ns: &NetNs, addr: SocketAddr, greeting: &'static [u8]) {
    let l: TcpListener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(greeting);
        }
    });
}

/// Even with IPv6 forwarding switched on in net and IPv6 addresses and routes everywhere,
/// no IPv6 goes from a client to the internet around its IPv4 rules, to another client
/// (global or link-local), or to net itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ipv6_path_goes_around_the_ipv4_rules() {
    if !can_run() {
        return;
    }
    let host = NetNs::current().unwrap();
    let internet = NetNs::new_detached().unwrap();
    let net = NetNs::new_detached().unwrap();
    let a = NetNs::new_detached().unwrap();
    let b = NetNs::new_detached().unwrap();
    let up = format!("bh6{}", std::process::id() % 100_000);
    link::veth_pair(&host, &up, &internet, "wan").await.unwrap();
    link::address(&internet, "wan", SERVER, 24).await.unwrap();
    let uplink = Uplink {
        ifname: up.clone(),
        address: UPLINK_IP,
        prefix: 24,
        gateway: Some(SERVER),
    };
    link::setup_net(&net, &host, Some(&uplink)).await.unwrap();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 137, 0, 2), Ipv4Addr::new(10, 137, 0, 3));
    link::link_client(&net, &a, "vif0.2", ip_a).await.unwrap();
    link::link_client(&net, &b, "vif0.3", ip_b).await.unwrap();
    // What a careless admin (or a compromised net) could have: IPv6 routed everywhere.
    net.sysctl("net/ipv6/conf/all/forwarding", "1").unwrap();
    ip(&internet, "-6 addr add 2001:db8::1/64 dev wan nodad");
    ip(&net, &format!("-6 addr add 2001:db8::2/64 dev {up} nodad"));
    ip(&net, "-6 addr add fd00:a::1/64 dev vif0.2 nodad");
    ip(&net, "-6 addr add fd00:b::1/64 dev vif0.3 nodad");
    ip(&a, "-6 addr add fd00:a::2/64 dev eth0 nodad");
    ip(&a, "-6 route add default via fd00:a::1 dev eth0");
    ip(&b, "-6 addr add fd00:b::2/64 dev eth0 nodad");
    ip(&b, "-6 route add default via fd00:b::1 dev eth0");
    // Neighbours known on every link (static entries), so that only the ruleset stands
    // between a client and IPv6: ICMPv6 neighbour discovery from a client is one of the
    // things net's input chain refuses, which alone must not be what keeps IPv6 out.
    for (x, dev, peer_ns, peer_dev, peer_ip) in [
        (&a, "eth0", &net, "vif0.2", "fd00:a::1"),
        (&net, "vif0.2", &a, "eth0", "fd00:a::2"),
        (&b, "eth0", &net, "vif0.3", "fd00:b::1"),
        (&net, "vif0.3", &b, "eth0", "fd00:b::2"),
    ] {
        let mac = mac_of(peer_ns, peer_dev);
        ip(
            x,
            &format!("-6 neigh replace {peer_ip} lladdr {mac} dev {dev} nud permanent"),
        );
    }
    let web6 = SocketAddr::from(("2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(), 80));
    serve6(&internet, web6, b"hello6\n");
    let b6 = SocketAddr::from(("fd00:b::2".parse::<std::net::Ipv6Addr>().unwrap(), 7006));
    serve6(&b, b6, b"b6\n");
    let net6 = SocketAddr::from(("fd00:a::1".parse::<std::net::Ipv6Addr>().unwrap(), 7007));
    serve6(&net, net6, b"net6\n");

    // a may not reach 192.0.2.1 over IPv4, and accepts everything else.
    let plan = NetPlan {
        uplink: Some(up.clone()),
        dns: vec![SERVER],
        clients: vec![
            Client {
                domain: "a".into(),
                vif: "vif0.2".into(),
                firewall: rules(
                    "action=drop dst4=192.0.2.1\naction=accept dst6=::/0\naction=accept",
                ),
                may_reach: vec![],
            },
            Client {
                domain: "b".into(),
                vif: "vif0.3".into(),
                firewall: rules(""),
                may_reach: vec![],
            },
        ],
    };
    nft::apply(&net, &nft::ruleset(&plan, 0)).unwrap();
    let web4 = serve(&internet, 80);
    assert!(fetch(&a, web4).is_err(), "the IPv4 rule did not hold");
    assert!(fetch6(&a, web6).is_err(), "IPv6 went around the IPv4 rule");
    assert!(fetch6(&a, b6).is_err(), "a reached b over IPv6");
    assert!(fetch6(&a, net6).is_err(), "a reached net over IPv6");
    // Link-local: a's eth0 and net's vif0.2 share a link; net never answers a on it.
    ip(&net, "-6 addr add fe80::1/64 dev vif0.2 nodad");
    ip(&a, "-6 addr add fe80::2/64 dev eth0 nodad");
    serve6(&net, "[::]:7008".parse().unwrap(), b"ll\n");
    let eth0 = a
        .run(|| {
            // SAFETY: the argument is a NUL-terminated literal; if_nametoindex only reads it.
            unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }
        })
        .unwrap();
    assert_ne!(eth0, 0);
    let ll = SocketAddr::V6(std::net::SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        7008,
        0,
        eth0,
    ));
    assert!(fetch6(&a, ll).is_err(), "a reached net over link-local");
    // The IPv4 path still works where the rules allow it: b reaches the web.
    assert_eq!(fetch(&b, web4).unwrap(), "hello\n");
    link::return_uplink(&net, &host, &up).await.unwrap();
    let hh = host.rtnl().unwrap();
    link::delete(&hh, &up).await.unwrap();
}
