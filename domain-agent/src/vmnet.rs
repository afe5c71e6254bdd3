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

/// The network the command line asks for: None when it names no address (no netvm).
pub fn parse_cmdline(cmdline: &str) -> Result<Option<GuestNet>, VmNetError> {
    let get = |key: &str| {
        cmdline
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    let Some(ip) = get("bulkhead.ip") else {
        return Ok(None);
    };
    let bad = |what: &str, v: &str| VmNetError::Cmdline(format!("{what}={v:?} is not valid"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad("bulkhead.ip", ip))?;
    let gw = get("bulkhead.gw").ok_or_else(|| bad("bulkhead.gw", ""))?;
    let gateway: Ipv4Addr = gw.parse().map_err(|_| bad("bulkhead.gw", gw))?;
    let mac_s = get("bulkhead.mac").ok_or_else(|| bad("bulkhead.mac", ""))?;
    let mac = parse_mac(mac_s).ok_or_else(|| bad("bulkhead.mac", mac_s))?;
    let dns = match get("bulkhead.dns") {
        Some(d) if !d.is_empty() => d
            .split(',')
            .take(MAX_DNS)
            .map(|a| a.parse().map_err(|_| bad("bulkhead.dns", d)))
            .collect::<Result<Vec<Ipv4Addr>, _>>()?,
        _ => Vec::new(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
