//! Networking of a VM domain with a real Debian guest: a VM domain with `netvm = net` gets
//! its stable client address on its virtio-net interface, reaches a TCP server in a test
//! "internet" namespace through net (NAT), resolves names through net's DNS redirection, and
//! net's firewall chain for it applies; a domaind restart keeps the link and the firewall
//! still follows changes; a restart of net re-links the running VM (same tap, same address);
//! a VM's shutdown leaves no link in net.
//!
//! The net domain is a sandbox on a mini template built by the test domaind into its own
//! template store, under the test's temporary root: inside L1 that is on the ext4 scratch
//! disk, where idmapped mounts work (the debian-12 template root reaches L1 over 9p, which has
//! none, so a debian-12 sandbox cannot start there). net needs no tools of its own: domaind
//! configures its namespace from outside.
//!
//! Needs hardware virtualization; runs itself inside L1 where there is none (see
//! `vm_full_boot.rs` and [`hardware_vm_here_or_nested`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bulkhead_api::Domaind1Proxy;
use bulkhead_net::addr;
use bulkhead_net::netns::NetNs;
use bulkhead_testkit::{
    bounded, hardware_vm_here_or_nested, run_sh as sh, template_cache, Debian12Env, DomaindOptions,
    TestDomaind, TestInternet, VmHost, ENV_IN_L1,
};

const TEST_LIMIT: Duration = Duration::from_secs(1200);
const TEST_NAME: &str = "vm_domain_gets_the_network_of_its_netvm";
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

#[test]
fn vm_domain_gets_the_network_of_its_netvm() {
    let Some(cache) = template_cache() else {
        panic!(
            "the VM network test needs the debian-12 template cache (scripts/test.sh builds it)"
        );
    };
    assert!(
        cache.join("debian-12/current").exists()
            || cache.join("templates/debian-12/current").exists(),
        "{} has no built debian-12 template (scripts/test.sh builds it)",
        cache.display()
    );
    if std::process::Command::new("nft")
        .arg("-v")
        .output()
        .is_err()
    {
        bulkhead_test_skip::skip("nft is not installed (scripts/install-deps.sh)");
        return;
    }
    if std::env::var_os(ENV_IN_L1).is_none() {
        bulkhead_testkit::ensure_vm_files(&cache, "debian-12")
            .unwrap_or_else(|e| panic!("the VM files of debian-12: {e}"));
    }
    match hardware_vm_here_or_nested(TEST_NAME) {
        VmHost::PassedInL1 => {}
        VmHost::Here => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(bounded(TEST_LIMIT, scenario(cache))),
    }
}

/// TCP to WEB:port from `domain` (timeouts generous: the guest runs nested under TCG).
async fn tcp(p: &Domaind1Proxy<'_>, domain: &str, port: u16) -> Option<String> {
    let (code, out) = sh(
        p,
        domain,
        &format!("timeout 15 bash -c 'exec 3<>/dev/tcp/{WEB}/{port} && head -n1 <&3'"),
    )
    .await;
    (code == 0).then(|| out.trim().to_owned())
}

/// The interfaces of the running sandbox `name` (`ip -o link` in its namespace, from here).
fn links_of(d: &TestDomaind, name: &str) -> String {
    let rec = d.instance_record(name);
    let pid = rec["init_pid"].as_i64().expect("init_pid of net") as i32;
    let ns = NetNs::of_pid(pid).expect("net's namespace");
    let out = ns
        .command("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn scenario(cache: std::path::PathBuf) {
    let inet = TestInternet::start("bhv", &[("web.test", WEB)], &[(WEB, 80), (WEB, 8080)]).await;
    inet.serve_sink((WEB, 9000).into());
    let pre = format!("vn{}-", std::process::id() % 100_000);
    let (net, vm) = (format!("{pre}net"), format!("{pre}vm"));
    // the bus and the connection stay in env
    let env = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        daemon_file: Some(inet.net_section(&net, WEB)),
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let (mut d, p) = (env.d, env.p);
    // net: a sandbox on a mini template in the test's own store (see the module doc).
    let tmpl = format!("{pre}tmpl");
    d.mini_template(&tmpl).expect("mini template");
    p.create(&tmpl, "template", "", "black", HashMap::new())
        .await
        .expect("register the mini template");
    p.create(&net, "app", &tmpl, "red", HashMap::new())
        .await
        .expect("create net");
    let props = HashMap::from([
        ("isolation", "vm"),
        ("memory", "768"),
        ("vcpus", "2"),
        ("netvm", net.as_str()),
    ]);
    p.create(&vm, "app", "debian-12", "green", props)
        .await
        .expect("create the VM");

    // Starting the VM starts net first.
    let t0 = Instant::now();
    if let Err(e) = p.start(&vm).await {
        panic!(
            "start: {e}\nconsole:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &vm).await,
            d.log()
        );
    }
    println!("VM with a netvm started in {:?}", t0.elapsed());

    // Its stable address (the address book's) on its interface, the routes, resolv.conf.
    let book = addr::AddressBook::load(&d.paths.state_dir.join("net/addresses.toml")).unwrap();
    let ip = *book
        .entries
        .get(&vm)
        .unwrap_or_else(|| panic!("no address for {vm}\n{}", d.log()));
    let (code, out) = sh(
        &p,
        &vm,
        "ip -4 -o addr show; ip -4 route; cat /etc/resolv.conf",
    )
    .await;
    println!("in the VM:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("inet {ip}/32")),
        "the VM does not have its address {ip}:\n{out}\nconsole:\n{}",
        bulkhead_testkit::domain_log(&p, &vm).await
    );
    assert!(out.contains("default via 10.137.0.1"), "{out}");
    assert!(out.contains("nameserver 10.139.1.1"), "{out}");
    let vif = addr::vif_name(ip);
    assert!(links_of(&d, &net).contains(&vif), "{}", links_of(&d, &net));

    // Through net to the internet (NAT), and DNS through net's redirection.
    assert_eq!(
        tcp(&p, &vm, 80).await.as_deref(),
        Some("hello from 192.0.2.1:80"),
        "{}",
        d.log()
    );
    let (code, out) = sh(&p, &vm, "timeout 20 getent hosts web.test").await;
    assert_eq!(code, 0, "DNS through net: {out}");
    assert!(out.starts_with("192.0.2.1"), "{out}");

    // net's firewall chain for the VM applies.
    bulkhead_testkit::set_firewall(
        &p,
        &vm,
        &["action=accept proto=tcp dstports=80", "action=drop"],
    )
    .await;
    assert!(tcp(&p, &vm, 80).await.is_some());
    assert_eq!(tcp(&p, &vm, 8080).await, None, "8080 was not dropped");
    p.firewall_reset(&vm).await.unwrap();
    assert!(tcp(&p, &vm, 8080).await.is_some());

    // The figures, as vm_netvm.rs measures them through a net VM: 8 MiB to a sink, and 20
    // connections' round trips (printed, not asserted).
    let (code, out) = sh(
        &p,
        &vm,
        &format!(
            "s=$(date +%s%N); timeout 120 bash -c 'exec 3<>/dev/tcp/{WEB}/9000; head -c 8388608 /dev/zero >&3; exec 3>&-' ; e=$(date +%s%N); echo $(( (e-s)/1000000 ))"
        ),
    )
    .await;
    let ms: f64 = out.trim().parse().unwrap_or(f64::NAN);
    let (_, rtt) = sh(
        &p,
        &vm,
        &format!(
            "s=$(date +%s%N); for i in $(seq 20); do bash -c 'exec 3<>/dev/tcp/{WEB}/80 && head -n1 <&3' >/dev/null; done; e=$(date +%s%N); echo $(( (e-s)/20000 ))"
        ),
    )
    .await;
    println!(
        "NET BENCH through the sandbox net domain: 8 MiB in {ms:.0} ms ({:.2} MiB/s, exit {code}); connect+greeting round trip {} us",
        8_000.0 / ms,
        rtt.trim()
    );

    // A domaind restart keeps the link, and the firewall still follows changes.
    d.restart().await.unwrap();
    let (_c, p) = d.client().await.unwrap();
    assert!(tcp(&p, &vm, 80).await.is_some(), "{}", d.log());
    bulkhead_testkit::set_firewall(&p, &vm, &["action=drop"]).await;
    assert_eq!(tcp(&p, &vm, 80).await, None, "drop after the restart");
    p.firewall_reset(&vm).await.unwrap();

    // A restart of net re-links the running VM (its VMM keeps its tap).
    p.shutdown(&net, 10).await.unwrap();
    assert_eq!(tcp(&p, &vm, 80).await, None);
    p.start(&net).await.unwrap();
    let got = tcp(&p, &vm, 80).await;
    if got.as_deref() != Some("hello from 192.0.2.1:80") {
        let (_, neigh) = sh(&p, &vm, "ip neigh; ip -s link show").await;
        panic!(
            "after the net restart: {got:?}\nin the VM:\n{neigh}\nnet:\n{}\n{}",
            links_of(&d, &net),
            d.log()
        );
    }
    let (_, out) = sh(&p, &vm, "ip -4 -o addr show").await;
    assert!(out.contains(&format!("inet {ip}/32")), "{out}");

    // The VM's shutdown leaves no link in net.
    p.shutdown(&vm, 30).await.unwrap();
    let t0 = Instant::now();
    while links_of(&d, &net).contains(&vif) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{vif} still in net after the VM stopped:\n{}",
            links_of(&d, &net)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = p.kill(&net).await;
}
