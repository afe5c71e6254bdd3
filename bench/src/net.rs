//! `bulkhead-bench net`: TCP latency (1-byte round trips) and throughput (a bulk send) from a
//! sandbox domain through its net domain (veth, forwarding, nftables firewall and NAT, the
//! uplink veth) to a server in a test "internet" namespace, next to the same from a bare
//! network namespace with a veth straight into that internet, in the same run, with the same
//! client program (perl, present in the template and on the host).
//!
//! Nothing leaves the machine: the internet is a namespace this process holds, the uplink a
//! veth into it, the server a thread of this process bound inside it (192.0.2.1, a
//! documentation address). A private domaind is always used (the uplink must be the bench's).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use bulkhead_api::Domaind1Proxy;
use bulkhead_net::link;
use bulkhead_net::netns::NetNs;
use bulkhead_testkit::{DomaindOptions, TestBus, TestDomaind};
use zbus::zvariant::Fd;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BARE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
const NET: &str = "bench-net";
const CLIENT: &str = "bench-net-client";

/// The client: `perl -e CLIENT_PL IP ROUND_TRIPS MIB` prints `rtt_us X` (median of the
/// round trips of one byte on port 7) and `mbit_s Y` (MIB MiB sent to port 9, until the
/// server's acknowledgement after EOF).
const CLIENT_PL: &str = r#"
use strict; use Socket qw(:DEFAULT IPPROTO_TCP TCP_NODELAY); use Time::HiRes qw(time);
my ($ip, $n, $mib) = @ARGV;
sub conn { my $p = shift; socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
  setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1); connect($s, sockaddr_in($p, inet_aton($ip))) or die "connect $ip:$p: $!"; $s }
my $s = conn(7); my @t;
for (0..$n) { my $t0 = time; syswrite($s, "x", 1) == 1 or die "write"; sysread($s, my $b, 1) == 1 or die "read"; push @t, time - $t0 if $_ }
@t = sort { $a <=> $b } @t; printf "rtt_us %.2f\n", $t[int(@t / 2)] * 1e6; close $s;
my $d = conn(9); my $buf = "x" x 65536; my $total = $mib * 1048576; my $sent = 0; my $t0 = time;
while ($sent < $total) { my $w = syswrite($d, $buf) or die "send: $!"; $sent += $w }
shutdown($d, 1); sysread($d, my $ack, 16); my $el = time - $t0;
printf "mbit_s %.1f\n", $sent * 8 / $el / 1e6;
"#;

/// Echo on :7 (byte for byte), sink on :9 (read to EOF, answer "ok").
fn serve(ns: &NetNs) -> Result<()> {
    for port in [7u16, 9] {
        let addr = SocketAddr::from((SERVER, port));
        let l: TcpListener = ns
            .run(move || TcpListener::bind(addr))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_context(|| format!("bind {addr}"))?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let _ = s.set_nodelay(true);
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) if port == 7 => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                    if port == 9 {
                        let _ = s.write_all(b"ok");
                    }
                });
            }
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rtt_us: f64,
    mbit_s: f64,
}

fn parse(out: &str) -> Result<Sample> {
    let get = |k: &str| -> Result<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
            .with_context(|| format!("no '{k}' in the client's output: {out:?}"))
    };
    Ok(Sample {
        rtt_us: get("rtt_us ")?,
        mbit_s: get("mbit_s ")?,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

async fn in_domain(p: &Domaind1Proxy<'_>, args: &[&str]) -> Result<Sample> {
    let (out_r, out_w) = pipe()?;
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(out_r).read_to_string(&mut s);
        s
    });
    let mut argv = vec!["perl", "-e", CLIENT_PL];
    argv.extend_from_slice(args);
    let code = p
        .run(
            CLIENT,
            &argv,
            "",
            Fd::from(&null),
            Fd::from(&out_w),
            Fd::from(&null),
        )
        .await
        .map_err(|e| anyhow::anyhow!("Run in {CLIENT}: {}", e.message()))?;
    drop(out_w);
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    if code != 0 {
        bail!("the client in {CLIENT} exited {code}: {out}");
    }
    parse(&out)
}

fn in_bare(ns: &NetNs, args: &[&str]) -> Result<Sample> {
    let out = ns
        .command("perl")
        .arg("-e")
        .arg(CLIENT_PL)
        .args(args)
        .output()
        .context("cannot run perl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the client in the bare namespace failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text)
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn bench(
    rounds: usize,
    round_trips: u32,
    mib: u32,
    cache: std::path::PathBuf,
    template: String,
) -> Result<()> {
    if rounds == 0 || round_trips == 0 || mib == 0 {
        bail!("--rounds, --round-trips and --mib must be at least 1");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (network namespaces)");
    }
    let host = NetNs::current()?;
    let internet = NetNs::new_detached()?;
    let bare = NetNs::new_detached()?;
    let tag = std::process::id() % 100_000;
    let uplink = format!("bhb{tag}");
    link::veth_pair(&host, &uplink, &internet, "wan").await?;
    link::address(&internet, "wan", SERVER, 24).await?;
    link::veth_pair(&bare, "eth0", &internet, "bare").await?;
    link::address(&bare, "eth0", BARE, 24).await?;
    // The internet answers the bare namespace through its own veth (a host route; ARP for
    // 192.0.2.1 is answered on any interface).
    link::route_dev(&internet, "bare", BARE).await?;
    serve(&internet)?;

    let bus = TestBus::start().map_err(anyhow::Error::msg)?;
    let daemon = TestDomaind::start(
        &bus,
        DomaindOptions {
            daemon_file: Some(format!(
                "[net]\ndomain = \"{NET}\"\nuplink = \"{uplink}\"\naddress = \"192.0.2.2/24\"\ngateway = \"{SERVER}\"\n"
            )),
            ..DomaindOptions::debian12(cache)
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let conn = daemon.connect().await.map_err(anyhow::Error::msg)?;
    let p = Domaind1Proxy::new(&conn).await?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    p.build_template(&template, Fd::from(&null))
        .await
        .map_err(|e| anyhow::anyhow!("BuildTemplate {template}: {}", e.message()))?;
    p.create(NET, "service", &template, "red", HashMap::new())
        .await
        .map_err(|e| anyhow::anyhow!("Create {NET}: {}", e.message()))?;
    p.create(
        CLIENT,
        "app",
        &template,
        "gray",
        HashMap::from([("netvm", NET)]),
    )
    .await
    .map_err(|e| anyhow::anyhow!("Create {CLIENT}: {}", e.message()))?;
    p.start(CLIENT)
        .await
        .map_err(|e| anyhow::anyhow!("Start {CLIENT}: {}", e.message()))?;

    let (n, m) = (round_trips.to_string(), mib.to_string());
    let args = [&SERVER.to_string(), n.as_str(), m.as_str()].map(|s| s.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dom = Vec::new();
    let mut peer = Vec::new();
    // One warm-up of each, then alternate so both see the same machine load.
    in_domain(&p, &args).await?;
    in_bare(&bare, &args)?;
    for _ in 0..rounds {
        dom.push(in_domain(&p, &args).await?);
        peer.push(in_bare(&bare, &args)?);
    }
    for d in [CLIENT, NET] {
        let _ = p.kill(d).await;
    }
    let rtt = (
        med(dom.iter().map(|s| s.rtt_us).collect()),
        med(peer.iter().map(|s| s.rtt_us).collect()),
    );
    let tput = (
        med(dom.iter().map(|s| s.mbit_s).collect()),
        med(peer.iter().map(|s| s.mbit_s).collect()),
    );
    println!(
        "TCP 1-byte round trip, median of {round_trips} x {rounds} rounds: domain through net {:.1} us, bare namespace {:.1} us, ratio {:.2}",
        rtt.0,
        rtt.1,
        rtt.0 / rtt.1
    );
    println!(
        "TCP bulk send of {mib} MiB, median of {rounds} rounds: domain through net {:.0} Mbit/s, bare namespace {:.0} Mbit/s, ratio {:.2}",
        tput.0,
        tput.1,
        tput.0 / tput.1
    );
    Ok(())
}
