//! The network of a VM domain, set up by its init from the kernel command line that domaind
//! writes (`bulkhead.ip=A bulkhead.gw=G bulkhead.dns=D1,D2 bulkhead.mac=M`): the interface
//! with MAC M gets A/32, a device route to G and the default route through G, exactly as a
//! sandbox's `eth0`; /etc/resolv.conf names D1, D2 (the netvm's virtual DNS). A sandbox gets
//! the same from domaind directly; its kernel command line is the host's and has none of
//! these, so nothing happens there.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Most DNS servers taken from the command line.
pub const MAX_DNS: usize = 3;

/// What the guest configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum VmNetError {
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("no network interface with MAC {0}")]
    NoInterface(String),
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The value of `key=` on the kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `bulkhead.dns=D1,D2` (at most [`MAX_DNS`]); none when absent or empty.
fn cmdline_dns(cmdline: &str) -> Result<Vec<Ipv4Addr>, VmNetError> {
    match cmdline_value(cmdline, "bulkhead.dns") {
        Some(d) if !d.is_empty() => d
            .split(',')
            .take(MAX_DNS)
            .map(|a| {
                a.parse()
                    .map_err(|_| VmNetError::Cmdline(format!("bulkhead.dns={d:?} is not valid")))
            })
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// The network the command line asks for: None when it names no address (no netvm).
pub fn parse_cmdline(cmdline: &str) -> Result<Option<GuestNet>, VmNetError> {
    let get = |key: &str| cmdline_value(cmdline, key);
    let Some(ip) = get("bulkhead.ip") else {
        return Ok(None);
    };
    let bad = |what: &str, v: &str| VmNetError::Cmdline(format!("{what}={v:?} is not valid"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad("bulkhead.ip", ip))?;
    let gw = get("bulkhead.gw").ok_or_else(|| bad("bulkhead.gw", ""))?;
    let gateway: Ipv4Addr = gw.parse().map_err(|_| bad("bulkhead.gw", gw))?;
    let mac_s = get("bulkhead.mac").ok_or_else(|| bad("bulkhead.mac", ""))?;
    let mac = parse_mac(mac_s).ok_or_else(|| bad("bulkhead.mac", mac_s))?;
    let dns = cmdline_dns(cmdline)?;
    Ok(Some(GuestNet {
        ip,
        gateway,
        dns,
        mac,
    }))
}

/// The text of /etc/resolv.conf (same as a sandbox's).
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut s = String::from("# Bulkhead: the net domain answers here\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// The interface in `sys_class_net` (normally /sys/class/net) whose address is `mac`.
pub fn interface_with_mac(sys_class_net: &Path, mac: [u8; 6]) -> Option<String> {
    let want = mac_text(mac);
    std::fs::read_dir(sys_class_net)
        .ok()?
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(&want))
        })
        .and_then(|e| e.file_name().into_string().ok())
}

fn ip_tool() -> Option<&'static str> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Configure the interface, the routes and /etc/resolv.conf (the guest's init, as root).
/// The interface may take a moment to appear after the driver loads: waited for up to 5 s.
pub fn configure(net: &GuestNet) -> Result<String, VmNetError> {
    let mut ifname = None;
    for _ in 0..50 {
        ifname = interface_with_mac(Path::new("/sys/class/net"), net.mac);
        if ifname.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ifname = ifname.ok_or_else(|| VmNetError::NoInterface(mac_text(net.mac)))?;
    let ip = ip_tool().ok_or_else(|| VmNetError::Setup {
        what: "ip".into(),
        message: "no ip(8) in the template (iproute2)".into(),
    })?;
    let (a, g) = (net.ip.to_string(), net.gateway.to_string());
    let steps: [&[&str]; 4] = [
        &["addr", "replace", &format!("{a}/32"), "dev", &ifname],
        &["link", "set", &ifname, "up"],
        &["route", "replace", &g, "dev", &ifname, "scope", "link"],
        &["route", "replace", "default", "via", &g, "dev", &ifname],
    ];
    for args in steps {
        let out = Command::new(ip)
            .args(args)
            .output()
            .map_err(|e| VmNetError::Setup {
                what: format!("ip {}", args.join(" ")),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(VmNetError::Setup {
                what: format!("ip {}", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    // Unprivileged ICMP echo sockets, as a sandbox's namespace has them.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    if !net.dns.is_empty() {
        // /etc/resolv.conf may be a symlink into the template (resolvconf): replace it.
        let _ = std::fs::remove_file("/etc/resolv.conf");
        std::fs::write("/etc/resolv.conf", resolv_conf(&net.dns)).map_err(|e| {
            VmNetError::Setup {
                what: "write /etc/resolv.conf".into(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(ifname)
}

/// One interface of a net VM, from `bulkhead.netvm.up=A/LEN,GW,MAC` or
/// `bulkhead.netvm.down=A/LEN,MAC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetvmIf {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: [u8; 6],
}

/// What a net VM configures (see `bulkhead_net::vmnetvm`): its uplink (when the host has one
/// for it) with the default route, its link to the firewall in front of its clients,
/// forwarding from that link to the uplink, masquerading, and resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetvm {
    pub up: Option<NetvmIf>,
    pub down: NetvmIf,
    pub dns: Vec<Ipv4Addr>,
}

/// The net VM's interfaces the command line asks for: None when it names none.
pub fn parse_netvm_cmdline(cmdline: &str) -> Result<Option<GuestNetvm>, VmNetError> {
    let get = |key: &str| cmdline_value(cmdline, key);
    let Some(down) = get("bulkhead.netvm.down") else {
        return Ok(None);
    };
    let bad = |what: &str, v: &str| VmNetError::Cmdline(format!("{what}={v:?} is not valid"));
    let iface = |key: &str, v: &str, with_gw: bool| -> Result<NetvmIf, VmNetError> {
        let parts: Vec<&str> = v.split(',').collect();
        let (addr, gw, mac) = match (with_gw, parts.as_slice()) {
            (true, [a, g, m]) => (*a, Some(*g), *m),
            (false, [a, m]) => (*a, None, *m),
            _ => return Err(bad(key, v)),
        };
        let (ip, prefix) = addr
            .split_once('/')
            .and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok().filter(|l| *l <= 32)?)))
            .ok_or_else(|| bad(key, v))?;
        let gateway = match gw {
            None | Some("-") => None,
            Some(g) => Some(g.parse().map_err(|_| bad(key, v))?),
        };
        let mac = parse_mac(mac).ok_or_else(|| bad(key, v))?;
        Ok(NetvmIf {
            ip,
            prefix,
            gateway,
            mac,
        })
    };
    let down = iface("bulkhead.netvm.down", down, false)?;
    let up = match get("bulkhead.netvm.up") {
        Some(v) => Some(iface("bulkhead.netvm.up", v, true)?),
        None => None,
    };
    let dns = cmdline_dns(cmdline)?;
    Ok(Some(GuestNetvm { up, down, dns }))
}

/// The nftables ruleset of a net VM: forward only from the firewall's link out to the uplink
/// (and the answers back), masquerade what leaves by the uplink.
pub fn netvm_ruleset(up: &str, down: &str) -> String {
    format!(
        "table ip bulkhead-netvm {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{down}\" oifname \"{up}\" accept\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100;\n\
         \t\toifname \"{up}\" masquerade\n\
         \t}}\n\
         }}\n"
    )
}

fn wait_for_mac(mac: [u8; 6]) -> Result<String, VmNetError> {
    for _ in 0..50 {
        if let Some(i) = interface_with_mac(Path::new("/sys/class/net"), mac) {
            return Ok(i);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(VmNetError::NoInterface(mac_text(mac)))
}

fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<(), VmNetError> {
    use std::io::Write;
    let what = format!("{tool} {}", args.join(" "));
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| VmNetError::Setup {
            what: what.clone(),
            message: e.to_string(),
        })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| VmNetError::Setup {
        what: what.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(VmNetError::Setup {
            what,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Configure a net VM (its init, as root): both interfaces, the default route through the
/// uplink's gateway, forwarding and the NAT ruleset ([`netvm_ruleset`]), resolv.conf.
/// Returns the interface names (uplink or "", link to the firewall).
pub fn configure_netvm(n: &GuestNetvm) -> Result<(String, String), VmNetError> {
    let ip = ip_tool().ok_or_else(|| VmNetError::Setup {
        what: "ip".into(),
        message: "no ip(8) in the template (iproute2)".into(),
    })?;
    let down = wait_for_mac(n.down.mac)?;
    run_tool(
        ip,
        &[
            "addr",
            "replace",
            &format!("{}/{}", n.down.ip, n.down.prefix),
            "dev",
            &down,
        ],
        None,
    )?;
    run_tool(ip, &["link", "set", &down, "up"], None)?;
    let mut up_name = String::new();
    if let Some(u) = &n.up {
        let up = wait_for_mac(u.mac)?;
        run_tool(
            ip,
            &[
                "addr",
                "replace",
                &format!("{}/{}", u.ip, u.prefix),
                "dev",
                &up,
            ],
            None,
        )?;
        run_tool(ip, &["link", "set", &up, "up"], None)?;
        if let Some(g) = u.gateway {
            run_tool(
                ip,
                &[
                    "route",
                    "replace",
                    "default",
                    "via",
                    &g.to_string(),
                    "dev",
                    &up,
                ],
                None,
            )?;
        }
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| VmNetError::Setup {
                what: "nft".into(),
                message: "no nft(8) in the template (nftables): a net VM cannot masquerade".into(),
            })?;
        run_tool(nft, &["-f", "-"], Some(&netvm_ruleset(&up, &down)))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| VmNetError::Setup {
            what: "ip_forward".into(),
            message: e.to_string(),
        })?;
        up_name = up;
    }
    if !n.dns.is_empty() {
        let _ = std::fs::remove_file("/etc/resolv.conf");
        let mut s = String::from("# Bulkhead: the uplink's resolvers\n");
        for d in &n.dns {
            s.push_str(&format!("nameserver {d}\n"));
        }
        std::fs::write("/etc/resolv.conf", s).map_err(|e| VmNetError::Setup {
            what: "write /etc/resolv.conf".into(),
            message: e.to_string(),
        })?;
    }
    Ok((up_name, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_net_vm_reads_both_interfaces() {
        let n = parse_netvm_cmdline(
            "reboot=k bulkhead.netvm.up=192.0.2.10/24,192.0.2.254,02:b3:00:00:00:01 \
             bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02 bulkhead.dns=192.0.2.53",
        )
        .unwrap()
        .unwrap();
        let up = n.up.as_ref().unwrap();
        assert_eq!((up.ip, up.prefix), (Ipv4Addr::new(192, 0, 2, 10), 24));
        assert_eq!(up.gateway, Some(Ipv4Addr::new(192, 0, 2, 254)));
        assert_eq!(n.down.ip, Ipv4Addr::new(10, 138, 255, 2));
        assert_eq!((n.down.prefix, n.down.gateway), (30, None));
        assert_eq!(n.dns, [Ipv4Addr::new(192, 0, 2, 53)]);
        let n = parse_netvm_cmdline("bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02")
            .unwrap()
            .unwrap();
        assert!(n.up.is_none());
        assert_eq!(parse_netvm_cmdline("bulkhead.ip=10.0.0.1").unwrap(), None);
        for bad in [
            "bulkhead.netvm.down=10.138.255.2,02:b2:0a:8a:ff:02",
            "bulkhead.netvm.down=10.138.255.2/33,02:b2:0a:8a:ff:02",
            "bulkhead.netvm.down=10.138.255.2/30",
            "bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02 bulkhead.netvm.up=1.2.3.4/24,02:b3:00:00:00:01",
            "bulkhead.netvm.down=10.138.255.2/30,02:b2:0a:8a:ff:02 bulkhead.netvm.up=1.2.3.4/24,x,02:b3:00:00:00:01",
        ] {
            assert!(parse_netvm_cmdline(bad).is_err(), "{bad}");
        }
        let r = netvm_ruleset("eth0", "eth1");
        assert!(
            r.contains("iifname \"eth1\" oifname \"eth0\" accept"),
            "{r}"
        );
        assert!(r.contains("oifname \"eth0\" masquerade"), "{r}");
    }

    #[test]
    fn cmdline_gives_the_network_or_none() {
        assert_eq!(
            parse_cmdline("reboot=k bulkhead.channel=vsock bulkhead.name=w").unwrap(),
            None
        );
        let n = parse_cmdline(
            "reboot=k bulkhead.name=w bulkhead.ip=10.137.0.7 bulkhead.gw=10.137.0.1 bulkhead.dns=10.139.1.1,10.139.1.2 bulkhead.mac=02:b1:0a:89:00:07 console=ttyS0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n.ip, Ipv4Addr::new(10, 137, 0, 7));
        assert_eq!(n.gateway, Ipv4Addr::new(10, 137, 0, 1));
        assert_eq!(n.dns.len(), 2);
        assert_eq!(n.mac, [2, 0xb1, 10, 137, 0, 7]);
        assert_eq!(
            resolv_conf(&n.dns),
            "# Bulkhead: the net domain answers here\nnameserver 10.139.1.1\nnameserver 10.139.1.2\n"
        );
        for bad in [
            "bulkhead.ip=10.137.0.300 bulkhead.gw=10.137.0.1 bulkhead.mac=02:b1:0a:89:00:07",
            "bulkhead.ip=10.137.0.3 bulkhead.mac=02:b1:0a:89:00:07",
            "bulkhead.ip=10.137.0.3 bulkhead.gw=10.137.0.1 bulkhead.mac=02:b1:0a:89:00",
            "bulkhead.ip=10.137.0.3 bulkhead.gw=10.137.0.1 bulkhead.mac=02:b1:0a:89:00:07:08",
            "bulkhead.ip=10.137.0.3 bulkhead.gw=10.137.0.1 bulkhead.mac=02:b1:0a:89:00:07 bulkhead.dns=x",
        ] {
            assert!(parse_cmdline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_found_by_mac() {
        let d = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "02:b1:0a:89:00:07")] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_with_mac(d.path(), [2, 0xb1, 10, 137, 0, 7]).as_deref(),
            Some("eth0")
        );
        assert_eq!(interface_with_mac(d.path(), [2, 0xb1, 10, 137, 0, 8]), None);
    }
}
