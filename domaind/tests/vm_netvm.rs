//! net as a VM, for real (L1): the net domain is a VM that owns the uplink (a tap bridged with
//! the test internet's veth: this VMM has no VFIO passthrough, and `prefs` says so); its
//! clients, a VM and a sandbox, link into the firewall namespace in front of it, where their
//! per-client firewall applies:
//! - both reach a server in the test internet through the net VM (NAT in the VM), and names
//!   resolve;
//! - a client's firewall drops what it should, and the net VM's root, adding an accept-all rule
//!   to its own ruleset, changes nothing: the rules are not in the VM, which never sees a
//!   client's address;
//! - a restart of the net VM keeps the clients' addresses and links them again; the uplink
//!   goes back to the host while the net VM is down;
//! - figures (printed, not asserted): TCP throughput and connection round trip from the VM
//!   client through the net VM, and the same through a sandbox net domain in `vm_net.rs`.
//!
//! Needs hardware virtualization; runs itself inside L1 where there is none (see
//! `vm_full_boot.rs`).

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bulkhead_api::Domaind1Proxy;
use bulkhead_net::addr;
use bulkhead_net::netns::NetNs;
use bulkhead_testkit::{
    bounded, hardware_vm_here_or_nested, run_sh as sh, template_cache, Debian12Env, DomaindOptions,
    TestDomaind, TestInternet, VmHost, ENV_IN_L1,
};

const TEST_LIMIT: Duration = Duration::from_secs(1500);
const TEST_NAME: &str = "net_as_a_vm_forwards_its_clients_under_their_firewall";
const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SINK_PORT: u16 = 9000;

#[test]
fn net_as_a_vm_forwards_its_clients_under_their_firewall() {
    let Some(cache) = template_cache() else {
        panic!("the net VM test needs the debian-12 template cache (scripts/test.sh builds it)");
    };
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

/// `sh -c script` as root in `domain`: (exit code, stdout + stderr).
async fn root_sh(p: &Domaind1Proxy<'_>, domain: &str, script: &str) -> (i32, String) {
    bulkhead_testkit::run_sh_as(p, domain, "root", script).await
}

/// TCP to WEB:port from VM `domain` (bash's /dev/tcp; timeouts generous: nested TCG).
async fn tcp_vm(p: &Domaind1Proxy<'_>, domain: &str, port: u16) -> Option<String> {
    let (code, out) = sh(
        p,
        domain,
        &format!("timeout 15 bash -c 'exec 3<>/dev/tcp/{WEB}/{port} && head -n1 <&3'"),
    )
    .await;
    (code == 0).then(|| out.trim().to_owned())
}

/// TCP to WEB:port from sandbox `domain`'s network namespace (the mini template has no
/// client of its own; the packets leave from the domain's namespace all the same).
fn tcp_sandbox(d: &TestDomaind, domain: &str, port: u16) -> Option<String> {
    let rec = d.instance_record(domain);
    let pid = rec["init_pid"].as_i64().expect("init_pid") as i32;
    let ns = NetNs::of_pid(pid).expect("the sandbox's namespace");
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((WEB, port)), Duration::from_secs(10))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(&mut s).read_line(&mut line).ok()?;
        Some(line.trim().to_owned())
    })
    .expect("enter the sandbox's namespace")
}

fn host_has_link(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

async fn scenario(cache: std::path::PathBuf) {
    let inet = TestInternet::start("bhm", &[("web.test", WEB)], &[(WEB, 80), (WEB, 8080)]).await;
    inet.serve_sink((WEB, SINK_PORT).into());
    let pre = format!("nv{}-", std::process::id() % 100_000);
    let (net, cvm, csb) = (
        format!("{pre}net"),
        format!("{pre}cvm"),
        format!("{pre}csb"),
    );
    let env = Debian12Env::start(DomaindOptions {
        binary: Some(env!("CARGO_BIN_EXE_domaind").into()),
        daemon_file: Some(inet.net_section(&net, WEB)),
        ..DomaindOptions::debian12(cache)
    })
    .await;
    let (d, p) = (env.d, env.p);
    let tmpl = format!("{pre}tmpl");
    d.mini_template(&tmpl).expect("mini template");
    p.create(&tmpl, "template", "", "black", HashMap::new())
        .await
        .expect("register the mini template");
    fn vm(netvm: Option<&str>) -> HashMap<&str, &str> {
        let mut m = HashMap::from([("isolation", "vm"), ("memory", "640"), ("vcpus", "1")]);
        if let Some(n) = netvm {
            m.insert("netvm", n);
        }
        m
    }
    p.create(&net, "app", "debian-12", "red", vm(None))
        .await
        .expect("create net");
    p.create(&cvm, "app", "debian-12", "green", vm(Some(&net)))
        .await
        .expect("create the VM client");
    p.create(
        &csb,
        "app",
        &tmpl,
        "yellow",
        HashMap::from([("netvm", net.as_str())]),
    )
    .await
    .expect("create the sandbox client");
    let props = p.get_properties(&net).await.expect("prefs net");
    let uplink = props.get("uplink").cloned().unwrap_or_default();
    assert!(
        uplink.contains(&inet.uplink) && uplink.contains("bridged") && uplink.contains("VFIO"),
        "prefs net uplink: {uplink:?}"
    );
    println!("prefs {net} uplink: {uplink}");

    // Starting the VM client starts the net VM first.
    let t0 = Instant::now();
    if let Err(e) = p.start(&cvm).await {
        panic!(
            "start: {e}\nnet console:\n{}\nclient console:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &net).await,
            bulkhead_testkit::domain_log(&p, &cvm).await,
            d.log()
        );
    }
    println!("VM client with a net VM started in {:?}", t0.elapsed());
    p.start(&csb).await.expect("start the sandbox client");
    assert!(!host_has_link(&inet.uplink), "the uplink is still dom0's");

    // Through the net VM to the internet, and names.
    let got = tcp_vm(&p, &cvm, 80).await;
    if got.as_deref() != Some("hello from 192.0.2.1:80") {
        let (_, inside) = root_sh(&p, &net, "ip -4 addr; ip -4 route; nft list ruleset").await;
        panic!(
            "the VM client: {got:?}\nin net:\n{inside}\nnet console:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &net).await,
            d.log()
        );
    }
    assert_eq!(
        tcp_sandbox(&d, &csb, 80).as_deref(),
        Some("hello from 192.0.2.1:80"),
        "the sandbox client\n{}",
        d.log()
    );
    let (code, out) = sh(&p, &cvm, "timeout 20 getent hosts web.test").await;
    assert_eq!(code, 0, "DNS through the net VM: {out}");
    assert!(out.starts_with("192.0.2.1"), "{out}");

    // The VM client's firewall applies; the net VM cannot undo it.
    bulkhead_testkit::set_firewall(
        &p,
        &cvm,
        &["action=accept proto=tcp dstports=80", "action=drop"],
    )
    .await;
    assert!(tcp_vm(&p, &cvm, 80).await.is_some());
    assert_eq!(tcp_vm(&p, &cvm, 8080).await, None, "8080 was not dropped");
    assert!(
        tcp_sandbox(&d, &csb, 8080).is_some(),
        "the other client is not affected"
    );
    let (code, out) = root_sh(
        &p,
        &net,
        "nft insert rule ip bulkhead-netvm forward accept && nft list ruleset",
    )
    .await;
    assert_eq!(code, 0, "nft in the net VM: {out}");
    assert!(
        !out.contains("10.137."),
        "the net VM's ruleset knows a client address:\n{out}"
    );
    assert_eq!(
        tcp_vm(&p, &cvm, 8080).await,
        None,
        "the net VM's root opened 8080 for the client"
    );
    p.firewall_reset(&cvm).await.unwrap();
    assert!(tcp_vm(&p, &cvm, 8080).await.is_some());

    // The figures: 8 MiB to the sink, and 20 connections' round trips (small: the nested
    // emulator is slow, and under a long flood of L2 network traffic its L1 has crashed).
    let (code, out) = sh(
        &p,
        &cvm,
        &format!(
            "s=$(date +%s%N); timeout 120 bash -c 'exec 3<>/dev/tcp/{WEB}/{SINK_PORT}; head -c 8388608 /dev/zero >&3; exec 3>&-' ; e=$(date +%s%N); echo $(( (e-s)/1000000 ))"
        ),
    )
    .await;
    let ms: f64 = out.trim().parse().unwrap_or(f64::NAN);
    let (_, rtt) = sh(
        &p,
        &cvm,
        &format!(
            "s=$(date +%s%N); for i in $(seq 20); do bash -c 'exec 3<>/dev/tcp/{WEB}/80 && head -n1 <&3' >/dev/null; done; e=$(date +%s%N); echo $(( (e-s)/20000 ))"
        ),
    )
    .await;
    println!(
        "NET BENCH through the net VM: 8 MiB in {ms:.0} ms ({:.2} MiB/s, exit {code}); connect+greeting round trip {} us",
        8_000.0 / ms,
        rtt.trim()
    );

    // A restart of the net VM: the uplink comes back to dom0 meanwhile, the clients keep their
    // addresses and are linked again.
    let book = addr::AddressBook::load(&d.paths.state_dir.join("net/addresses.toml")).unwrap();
    let (ip_vm, ip_sb) = (book.entries[&cvm], book.entries[&csb]);
    // A net VM that died during the figures (its VMM says why in domaind's log, e.g. an
    // emulator's triple fault the nested harness then reruns) is shown, not just "not running".
    if let Err(e) = p.shutdown(&net, 30).await {
        panic!(
            "shut net down: {e:?}\nnet console:\n{}\nclient console:\n{}\ndomaind:\n{}",
            bulkhead_testkit::domain_log(&p, &net).await,
            bulkhead_testkit::domain_log(&p, &cvm).await,
            d.log()
        );
    }
    assert!(host_has_link(&inet.uplink), "the uplink did not come back");
    assert_eq!(tcp_vm(&p, &cvm, 80).await, None);
    p.start(&net).await.expect("start net again");
    let t0 = Instant::now();
    let mut got = None;
    while t0.elapsed() < Duration::from_secs(90) {
        got = tcp_vm(&p, &cvm, 80).await;
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(
        got.as_deref(),
        Some("hello from 192.0.2.1:80"),
        "after the restart\nnet console:\n{}\n{}",
        bulkhead_testkit::domain_log(&p, &net).await,
        d.log()
    );
    assert!(
        tcp_sandbox(&d, &csb, 80).is_some(),
        "the sandbox after the restart"
    );
    let book = addr::AddressBook::load(&d.paths.state_dir.join("net/addresses.toml")).unwrap();
    assert_eq!((book.entries[&cvm], book.entries[&csb]), (ip_vm, ip_sb));
    let (_, out) = sh(&p, &cvm, "ip -4 -o addr show").await;
    assert!(out.contains(&format!("inet {ip_vm}/32")), "{out}");

    let _ = p.kill(&cvm).await;
    let _ = p.kill(&csb).await;
    let _ = p.kill(&net).await;
    let _ = std::io::stdout().flush();
}
