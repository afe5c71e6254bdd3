//! Network fixtures: a test "internet", a network namespace made here with a veth towards the
//! host (to become net's uplink), TCP servers answering `hello from IP:PORT` and a DNS server
//! for a few names. Nothing leaves the machine, and everything is held by descriptors of this
//! process: a failing test leaves no interface or namespace behind.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use bulkhead_net::netns::NetNs;
use bulkhead_net::{dns, link};

/// The test internet (see the module doc); dropped, its namespace goes.
pub struct TestInternet {
    _ns: NetNs,
    /// The host's end of the veth (`<prefix><pid>`), for net's `uplink`.
    pub uplink: String,
}

impl TestInternet {
    /// `hosts`: (DNS name, address); the first address is the namespace's on its `wan` link
    /// (a /24) and serves DNS on port 53, the others are added as /32s. `tcp`: where a
    /// server greets. The host end of the veth is named `uplink_prefix` and this process's
    /// id (mod 100 000). Panics on failure.
    pub async fn start(
        uplink_prefix: &str,
        hosts: &[(&str, Ipv4Addr)],
        tcp: &[(Ipv4Addr, u16)],
    ) -> Self {
        let host = NetNs::current().unwrap();
        let ns = NetNs::new_detached().unwrap();
        let uplink = format!("{uplink_prefix}{}", std::process::id() % 100_000);
        link::veth_pair(&host, &uplink, &ns, "wan").await.unwrap();
        let (_, first) = *hosts.first().expect("at least one host");
        link::address(&ns, "wan", first, 24).await.unwrap();
        for (_, a) in &hosts[1..] {
            link::address(&ns, "wan", *a, 32).await.unwrap();
        }
        for a in tcp {
            serve_tcp(&ns, (*a).into());
        }
        let names = hosts
            .iter()
            .map(|(name, a)| (dns_labels(name), *a))
            .collect();
        serve_dns(&ns, first, names);
        Self { _ns: ns, uplink }
    }

    /// A sink at `at`: reads whatever a connection sends, then answers with the byte count
    /// (`got N`) once the sender shut its side. For throughput figures.
    pub fn serve_sink(&self, at: SocketAddr) {
        let l: TcpListener = self
            ._ns
            .run(move || TcpListener::bind(at))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    while let Ok(k) = std::io::Read::read(&mut s, &mut buf) {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    let _ = writeln!(s, "got {n}");
                });
            }
        });
    }

    /// An HTTP/1.1 file server at `at` for the files in `dir` (GET, one request per
    /// connection, 404 for anything missing or outside `dir`): a package archive for apt.
    /// Returns a log of the requested paths.
    pub fn serve_http_dir(
        &self,
        at: SocketAddr,
        dir: std::path::PathBuf,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let l: TcpListener = self
            ._ns
            .run(move || TcpListener::bind(at))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (dir, log) = (dir.clone(), log.clone());
                std::thread::spawn(move || serve_http_file(s, &dir, &log));
            }
        });
        seen
    }

    /// The `[net]` section of `domaind.toml` ([`DomaindOptions::daemon_file`]) that makes
    /// domain `net` the net domain on this uplink, at 192.0.2.2/24 with `gateway` as its
    /// gateway and DNS server.
    ///
    /// [`DomaindOptions::daemon_file`]: crate::DomaindOptions::daemon_file
    pub fn net_section(&self, net: &str, gateway: Ipv4Addr) -> String {
        format!(
            "[net]\ndomain = \"{net}\"\nuplink = \"{}\"\naddress = \"192.0.2.2/24\"\ngateway = \"{gateway}\"\ndns = [\"{gateway}\"]\n",
            self.uplink
        )
    }
}

fn serve_http_file(
    mut s: std::net::TcpStream,
    dir: &std::path::Path,
    log: &std::sync::Mutex<Vec<String>>,
) {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    if let Ok(mut l) = log.lock() {
        l.push(format!("/{path}"));
    }
    let file = (!path.split('/').any(|c| c == ".." || c.is_empty()))
        .then(|| std::fs::read(dir.join(&path)).ok())
        .flatten();
    let _ = match file {
        Some(body) => s
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .and_then(|()| s.write_all(&body)),
        None => {
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
    };
}

/// A flat apt archive in `dir` (`deb [trusted=yes] http://HOST/ ./`) holding one package
/// `name` 1.0 that installs `/usr/bin/<name>`, a script printing `says`. Built with dpkg-deb;
/// `Packages` and `Release` written here. Panics on failure.
pub fn build_test_archive(dir: &std::path::Path, name: &str, says: &str) {
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
    let control = format!(
        "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Bulkhead tests <tests@bulkhead.invalid>\nDescription: a package from the test archive\n"
    );
    std::fs::write(pkg.join("DEBIAN/control"), &control).unwrap();
    let bin = pkg.join("usr/bin").join(name);
    std::fs::write(&bin, format!("#!/bin/sh\necho '{says}'\n")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deb_name = format!("{name}_1.0_all.deb");
    let deb = dir.join(&deb_name);
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&pkg).unwrap();
    let bytes = std::fs::read(&deb).unwrap();
    let hex = |b: &[u8]| -> String { b.iter().map(|x| format!("{x:02x}")).collect() };
    let packages = format!(
        "{control}Filename: ./{deb_name}\nSize: {}\nSHA256: {}\n\n",
        bytes.len(),
        hex(&sha2::Sha256::digest(&bytes))
    );
    std::fs::write(dir.join("Packages"), &packages).unwrap();
    let release = format!(
        "Origin: bulkhead-test\nLabel: bulkhead-test\nSHA256:\n {} {} Packages\n",
        hex(&sha2::Sha256::digest(packages.as_bytes())),
        packages.len()
    );
    std::fs::write(dir.join("Release"), release).unwrap();
}

/// `name` as the labels of a DNS question (`web.test` -> `\x03web\x04test`), lower case.
fn dns_labels(name: &str) -> String {
    name.split('.')
        .map(|l| format!("{}{}", char::from(l.len() as u8), l.to_ascii_lowercase()))
        .collect()
}

fn serve_tcp(ns: &NetNs, addr: SocketAddr) {
    let l: TcpListener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = writeln!(s, "hello from {addr}");
        }
    });
}

fn serve_dns(ns: &NetNs, at: Ipv4Addr, names: Vec<(String, Ipv4Addr)>) {
    let s: UdpSocket = ns.run(move || UdpSocket::bind((at, 53))).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let q = &buf[..n];
            // The name is in the question: answer by looking for it.
            let text = String::from_utf8_lossy(q).to_ascii_lowercase();
            let addrs: Vec<IpAddr> = names
                .iter()
                .find(|(labels, _)| text.contains(labels.as_str()))
                .map(|(_, a)| vec![IpAddr::V4(*a)])
                .unwrap_or_default();
            if let Some(r) = dns::build_response(q, &addrs) {
                let _ = s.send_to(&r, from);
            }
        }
    });
}

/// Replaces `domain`'s firewall with `rules` (Qubes' rule format), in order; panics on a
/// refused rule.
pub async fn set_firewall(p: &bulkhead_api::Domaind1Proxy<'_>, domain: &str, rules: &[&str]) {
    p.firewall_reset(domain).await.unwrap();
    for r in rules {
        p.firewall_add(domain, r, -1)
            .await
            .unwrap_or_else(|e| panic!("add {r}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_labels_of_names() {
        assert_eq!(super::dns_labels("web.test"), "\x03web\x04test");
        assert_eq!(super::dns_labels("Other.test"), "\x05other\x04test");
    }
}
