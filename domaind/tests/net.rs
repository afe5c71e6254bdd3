//! Networking with real sandbox domains of the debian-12 template: a net domain with an
//! uplink into a test "internet" (a network namespace made here, with HTTP-like and DNS
//! servers on documentation addresses), client domains linked to it, the firewall.
//!
//! Nothing leaves the machine: the uplink is a veth whose other end lives in the test's
//! internet namespace. Everything this test makes is held by descriptors of this process or
//! lives in the domains' namespaces (killed with their cgroups when the test domaind drops),
//! so a failing test leaves no interface or namespace behind.
//!
//! Inside the domains: bash's /dev/tcp for TCP, perl (an ICMP datagram socket) for ping,
//! getent for DNS: all in the template already.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bulkhead_api::{Domaind1Proxy, Error};
use bulkhead_testkit::{
    run_sh as sh, sandbox_available, template_cache, DomaindOptions, TestBus, TestDomaind,
    TestInternet,
};
use zbus::zvariant::Fd;

const TEST_LIMIT: Duration = Duration::from_secs(480);
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// TCP to ip:port from `domain`: the server's greeting, or None.
async fn tcp(p: &Domaind1Proxy<'_>, domain: &str, ip: Ipv4Addr, port: u16) -> Option<String> {
    let (code, out) = sh(
        p,
        domain,
        &format!("timeout 4 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -n1 <&3'"),
    )
    .await;
    (code == 0).then(|| out.trim().to_owned())
}

const PING: &str = r#"use Socket; socket(my $s, PF_INET, SOCK_DGRAM, 1) or die "socket: $!\n"; send($s, pack("CCnnn", 8, 0, 0, 0, 1) . "bulkhead", 0, sockaddr_in(0, inet_aton($ARGV[0]))) or die "send: $!\n"; my $r = ""; vec($r, fileno($s), 1) = 1; select($r, undef, undef, 3) or die "timeout\n"; defined(recv($s, my $b, 1500, 0)) or die "recv: $!\n"; exit(unpack("C", $b) == 0 ? 0 : 2);"#;

/// ICMP echo from `domain` to `ip` answered?
async fn ping(p: &Domaind1Proxy<'_>, domain: &str, ip: Ipv4Addr) -> bool {
    sh(p, domain, &format!("perl -e '{PING}' {ip}")).await.0 == 0
}

/// `getent hosts name` from `domain` (through the domain's resolv.conf and net's DNAT).
async fn lookup(p: &Domaind1Proxy<'_>, domain: &str, name: &str) -> Option<String> {
    let (code, out) = sh(p, domain, &format!("timeout 8 getent hosts {name}")).await;
    (code == 0).then(|| out.split_whitespace().next().unwrap_or("").to_owned())
}

async fn set_rules(p: &Domaind1Proxy<'_>, domain: &str, rules: &[&str]) {
    p.firewall_reset(domain).await.unwrap();
    for r in rules {
        p.firewall_add(domain, r, -1)
            .await
            .unwrap_or_else(|e| panic!("add {r}: {e}"));
    }
}

/// The client address of `domain` (its eth0).
async fn addr_of(p: &Domaind1Proxy<'_>, domain: &str) -> Ipv4Addr {
    let (code, out) = sh(p, domain, "ip -4 -o addr show dev eth0").await;
    assert_eq!(code, 0, "{out}");
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {out}"))
}

async fn state(p: &Domaind1Proxy<'_>, name: &str) -> String {
    p.list()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.name == name)
        .map(|d| d.state)
        .unwrap_or_default()
}

fn host_has_link(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn net_domain_links_nat_dns_and_firewall() {
    if tokio::time::timeout(TEST_LIMIT, body()).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

async fn body() {
    if !sandbox_available() {
        return;
    }
    let Some(cache) = template_cache() else {
        return;
    };
    if !cache.join("debian-12/current").exists() {
        bulkhead_test_skip::skip(format_args!(
            "{} has no built debian-12 template",
            cache.display()
        ));
        return;
    }
    if std::process::Command::new("nft")
        .arg("-v")
        .output()
        .is_err()
    {
        bulkhead_test_skip::skip("nft is not installed (scripts/install-deps.sh)");
        return;
    }
    let inet = TestInternet::start(
        "bhn",
        &[("web.test", WEB), ("other.test", OTHER)],
        &[(WEB, 80), (WEB, 8080), (OTHER, 80)],
    )
    .await;
    let pre = format!("n{}-", std::process::id() % 100_000);
    let (net, a, b, c) = (
        format!("{pre}net"),
        format!("{pre}a"),
        format!("{pre}b"),
        format!("{pre}c"),
    );
    let bus = TestBus::start().unwrap();
    let mut d = TestDomaind::start(
        &bus,
        DomaindOptions {
            binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
            with_guest_tools: true,
            template_cache: Some(cache),
            recipes_dir: Some(bulkhead_templates::source_recipes_dir()),
            daemon_file: Some(inet.net_section(&net, WEB)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_c, p) = d.client().await.unwrap();
    // Registers the cached template (no build: the recipe is unchanged).
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    p.build_template("debian-12", Fd::from(&null))
        .await
        .unwrap_or_else(|e| panic!("build_template: {e}\n{}", d.log()));
    p.create(&net, "service", "debian-12", "red", HashMap::new())
        .await
        .unwrap();
    let with_net = HashMap::from([("netvm", net.as_str())]);
    for x in [&a, &b] {
        p.create(x, "app", "debian-12", "blue", with_net.clone())
            .await
            .unwrap();
    }
    p.create(&c, "app", "debian-12", "green", HashMap::new())
        .await
        .unwrap();

    // Starting a client starts its netvm first; the uplink moves into net.
    p.start(&a)
        .await
        .unwrap_or_else(|e| panic!("start {a}: {e}\n{}", d.log()));
    assert_eq!(state(&p, &net).await, "running");
    assert!(
        !host_has_link(&inet.uplink),
        "the uplink is still on the host"
    );
    let web = tcp(&p, &a, WEB, 80).await;
    assert_eq!(
        web.as_deref(),
        Some("hello from 192.0.2.1:80"),
        "{}",
        d.log()
    );
    assert!(ping(&p, &a, WEB).await);
    assert_eq!(
        lookup(&p, &a, "web.test").await.as_deref(),
        Some("192.0.2.1")
    );
    let (_, resolv) = sh(&p, &a, "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.139.1.1"), "{resolv}");

    // No netvm: no route anywhere.
    p.start(&c).await.unwrap();
    assert_eq!(tcp(&p, &c, WEB, 80).await, None);
    let (_, routes) = sh(&p, &c, "ip -4 route show").await;
    assert!(routes.trim().is_empty(), "{routes}");

    // Two clients do not reach each other, whatever their firewalls accept; only the
    // explicit features.allow-inter-domain of the source opens the way, one way.
    p.start(&b).await.unwrap();
    let ip_b = addr_of(&p, &b).await;
    let ip_a = addr_of(&p, &a).await;
    assert_ne!(ip_a, ip_b);
    assert!(!ping(&p, &a, ip_b).await, "a reached b by default");
    assert!(!ping(&p, &b, ip_a).await, "b reached a by default");
    for rule in [
        format!("action=accept dst4={ip_b}"),
        "action=accept dst4=0.0.0.0/0".into(),
    ] {
        set_rules(&p, &a, &[&rule]).await;
        assert!(!ping(&p, &a, ip_b).await, "the rule {rule} let a reach b");
    }
    p.firewall_reset(&a).await.unwrap();
    p.set_property(&a, "features.allow-inter-domain", &b)
        .await
        .unwrap();
    assert!(
        ping(&p, &a, ip_b).await,
        "allow-inter-domain did not let a reach b\n{}",
        d.log()
    );
    assert!(
        !ping(&p, &b, ip_a).await,
        "a's allow-inter-domain opened b's way back too"
    );
    p.set_property(&a, "features.allow-inter-domain", "")
        .await
        .unwrap();
    assert!(
        !ping(&p, &a, ip_b).await,
        "removing the feature left the way open"
    );

    // dst4.
    set_rules(&p, &a, &["action=accept dst4=192.0.2.1/32", "action=drop"]).await;
    assert!(tcp(&p, &a, WEB, 80).await.is_some());
    assert_eq!(tcp(&p, &a, OTHER, 80).await, None);
    // dsthost (resolved through net's resolver).
    set_rules(&p, &a, &["action=accept dsthost=other.test", "action=drop"]).await;
    assert!(tcp(&p, &a, OTHER, 80).await.is_some(), "{}", d.log());
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    // proto + dstports.
    set_rules(
        &p,
        &a,
        &["action=accept proto=tcp dstports=8080-8080", "action=drop"],
    )
    .await;
    assert!(tcp(&p, &a, WEB, 8080).await.is_some());
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    // icmptype.
    set_rules(
        &p,
        &a,
        &["action=accept proto=icmp icmptype=8", "action=drop"],
    )
    .await;
    assert!(ping(&p, &a, WEB).await);
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    set_rules(
        &p,
        &a,
        &["action=accept proto=icmp icmptype=13", "action=drop"],
    )
    .await;
    assert!(!ping(&p, &a, WEB).await);
    // specialtarget=dns.
    set_rules(&p, &a, &["action=accept specialtarget=dns", "action=drop"]).await;
    assert_eq!(
        lookup(&p, &a, "web.test").await.as_deref(),
        Some("192.0.2.1")
    );
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    set_rules(&p, &a, &["action=drop"]).await;
    assert_eq!(lookup(&p, &a, "web.test").await, None);
    // expire: the rule works until it is due, then it is gone from the list.
    set_rules(&p, &a, &["action=accept expire=+4", "action=drop"]).await;
    assert!(tcp(&p, &a, WEB, 80).await.is_some());
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if p.firewall_list(&a).await.unwrap() == vec!["action=drop".to_owned()] {
            gone = true;
            break;
        }
    }
    assert!(gone, "the expired rule is still listed");
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    p.firewall_reset(&a).await.unwrap();
    assert!(tcp(&p, &a, WEB, 80).await.is_some());

    // A broken rule file drops all of that domain's traffic, and only its.
    let a_dir = d
        .paths
        .domain_state_dir(&bulkhead_domain::DomainName::new(&a).unwrap());
    std::fs::write(
        a_dir.join("firewall.rules"),
        "action=accept\naction=maybe\n",
    )
    .unwrap();
    p.firewall_reset(&b).await.unwrap(); // any change re-applies net's whole ruleset
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    assert!(!ping(&p, &a, WEB).await);
    assert!(tcp(&p, &b, WEB, 80).await.is_some());
    match p.firewall_list(&a).await {
        Err(Error::InvalidProperty(m)) => {
            assert!(m.contains("rule 2") && m.contains("maybe"), "{m}")
        }
        other => panic!("list of a broken firewall: {other:?}"),
    }
    p.firewall_del(&a, 1).await.unwrap();
    assert!(tcp(&p, &a, WEB, 80).await.is_some());

    // Changing netvm of a running domain re-links it.
    p.set_property(&a, "netvm", "").await.unwrap();
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    p.set_property(&a, "netvm", &net).await.unwrap();
    assert!(tcp(&p, &a, WEB, 80).await.is_some());

    // A domaind restart keeps the links (the namespaces never went away) and takes the
    // netvm and its clients back: the firewall still follows changes.
    d.restart().await.unwrap();
    let (_c, p) = d.client().await.unwrap();
    assert!(tcp(&p, &a, WEB, 80).await.is_some(), "{}", d.log());
    set_rules(&p, &a, &["action=drop"]).await;
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    p.firewall_reset(&a).await.unwrap();
    assert!(tcp(&p, &a, WEB, 80).await.is_some());

    // A net restart: the uplink comes back to the host meanwhile, every client is linked
    // again once net is back.
    p.shutdown(&net, 10).await.unwrap();
    assert!(
        host_has_link(&inet.uplink),
        "the uplink did not come back to the host"
    );
    assert_eq!(tcp(&p, &a, WEB, 80).await, None);
    p.start(&net).await.unwrap();
    for x in [&a, &b] {
        assert_eq!(
            tcp(&p, x, WEB, 80).await.as_deref(),
            Some("hello from 192.0.2.1:80"),
            "{x} after the net restart\n{}",
            d.log()
        );
    }
    // Same addresses as before.
    assert_eq!(addr_of(&p, &a).await, ip_a);

    for x in [&a, &b, &c, &net] {
        let _ = p.kill(x).await;
    }
}
