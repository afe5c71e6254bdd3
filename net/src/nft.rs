//! The nftables ruleset of a net domain: NAT to the uplink, DNS redirection, and one chain per
//! client domain with its firewall.
//!
//! As in Qubes, a client's firewall governs what leaves through the net domain; it never
//! opens a way to another client: traffic from one client link to another is rejected before
//! any client's rules are looked at, whatever they accept (a rule for another domain's
//! address, `dst4=0.0.0.0/0`, no destination at all). The only way between two clients is
//! an explicit pair ([`Client::may_reach`], the feature [`ALLOW_INTER_DOMAIN_FEATURE`] of the
//! source domain, off by default): new connections from that client to that one, one way.
//!
//! IPv6 is not routed for clients (they have no IPv6 addresses or routes; the firewall rules
//! and the NAT are IPv4): every IPv6 packet from or to a client link is dropped, forwarded or
//! addressed to the net domain itself, even if IPv6 forwarding is switched on there, so no
//! IPv6 path (global or link-local) goes around the IPv4 rules.
//!
//! Applied by feeding the generated text to the `nft` binary on stdin, run inside the net
//! domain's network namespace ([`crate::netns::NetNs::command`]). Why the binary and not a
//! netlink crate: the text form is what nftables documents and what an administrator reads
//! (`nft list ruleset` inside net shows the same), one `nft -f -` is one atomic transaction
//! (the whole `bulkhead` table is replaced at once, so a client never sees a half-applied
//! firewall), and the Rust nftables crates either wrap the same binary (JSON over stdin) or
//! need libnftnl/libmnl bindings that would lock us to their version of the expression set.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;

use crate::firewall::{Action, Dest, Proto, Rule};
use crate::netns::NetNs;
use crate::{NetError, DNS_VIRTUAL};

/// Name of the table domaind owns in a net domain's namespace.
pub const TABLE: &str = "bulkhead";
/// Interface name pattern of the client links on the net side.
pub const VIF_PATTERN: &str = "vif*";
/// The domain feature naming the domains it may open connections to through its netvm
/// (names separated by spaces or commas; off when unset).
pub const ALLOW_INTER_DOMAIN_FEATURE: &str = "allow-inter-domain";
/// Most domains one domain may name in [`ALLOW_INTER_DOMAIN_FEATURE`].
pub const MAX_INTER_DOMAIN: usize = 64;
/// Longest domain name accepted there.
const MAX_NAME: usize = 64;

/// The domain names of an [`ALLOW_INTER_DOMAIN_FEATURE`] value. Names are letters, digits,
/// `-`, `_` and `.`; anything else, or more than [`MAX_INTER_DOMAIN`] names, is an error
/// (the whole setting is then ignored: nothing between domains is opened).
pub fn parse_allow_inter_domain(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
        .collect();
    if names.len() > MAX_INTER_DOMAIN {
        return Err(format!(
            "{} domains named; at most {MAX_INTER_DOMAIN}",
            names.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if n.len() > MAX_NAME
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!("{n:?} is not a domain name"));
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// A rule with its `dsthost` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRule {
    pub rule: Rule,
    /// The addresses of `dsthost` (empty for other rules).
    pub host_addrs: Vec<IpAddr>,
}

/// A client's firewall as it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFirewall {
    Rules(Vec<ResolvedRule>),
    /// Drop everything; the reason is only for the ruleset's comment.
    Broken(String),
}

/// One client domain linked to the net domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub domain: String,
    /// Its link's name on the net side.
    pub vif: String,
    pub firewall: ClientFirewall,
    /// Other clients (domain names) this one may open connections to, one way, whatever its
    /// firewall says; names that are not clients of this net domain are ignored.
    pub may_reach: Vec<String>,
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// Interface the traffic leaves by (masqueraded); `None`: no uplink, nothing leaves.
    pub uplink: Option<String>,
    /// Resolvers the virtual DNS addresses are redirected to (first for 10.139.1.1,
    /// second, or the first again, for 10.139.1.2).
    pub dns: Vec<Ipv4Addr>,
    pub clients: Vec<Client>,
}

/// nft string literal: only characters our names can have (checked by the callers) pass;
/// anything else is replaced, so no text can end the string.
fn q(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/ *".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("\"{clean}\"")
}

const REJECT: &str = "reject with icmpx type admin-prohibited";

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Accept => "accept",
        Action::Drop => REJECT,
    }
}

/// The nft statements (one per line) of one rule.
fn rule_lines(r: &ResolvedRule, now: u64) -> Vec<String> {
    let rule = &r.rule;
    if rule.expired(now) {
        return Vec::new();
    }
    // Destination matches; several when a dsthost has addresses of both families.
    let mut dests: Vec<(Option<&'static str>, String)> = Vec::new();
    match &rule.dest {
        None => dests.push((None, format!("oifname != {}", q(VIF_PATTERN)))),
        Some(Dest::V4(ip, len)) => dests.push((Some("4"), format!("ip daddr {ip}/{len}"))),
        Some(Dest::V6(ip, len)) => dests.push((Some("6"), format!("ip6 daddr {ip}/{len}"))),
        Some(Dest::Dns) => dests.push((
            Some("4"),
            format!(
                "ct original ip daddr {{ {}, {} }} th dport 53",
                DNS_VIRTUAL[0], DNS_VIRTUAL[1]
            ),
        )),
        Some(Dest::Host(_)) => {
            let v4: Vec<String> = r
                .host_addrs
                .iter()
                .filter(|a| a.is_ipv4())
                .map(|a| a.to_string())
                .collect();
            let v6: Vec<String> = r
                .host_addrs
                .iter()
                .filter(|a| a.is_ipv6())
                .map(|a| a.to_string())
                .collect();
            if !v4.is_empty() {
                dests.push((Some("4"), format!("ip daddr {{ {} }}", v4.join(", "))));
            }
            if !v6.is_empty() {
                dests.push((Some("6"), format!("ip6 daddr {{ {} }}", v6.join(", "))));
            }
            // No address: the rule matches nothing.
        }
    }
    let mut out = Vec::new();
    for (family, d) in dests {
        let mut s = d;
        match (rule.proto, rule.dstports, rule.icmptype) {
            (Some(p @ (Proto::Tcp | Proto::Udp)), Some((a, b)), _) => {
                let _ = write!(s, " {} dport {a}-{b}", p.as_str());
            }
            (Some(p @ (Proto::Tcp | Proto::Udp)), None, _) => {
                let _ = write!(s, " meta l4proto {}", p.as_str());
            }
            (Some(Proto::Icmp), _, t) => {
                let v6 = family == Some("6");
                match (t, v6) {
                    (Some(t), false) => {
                        let _ = write!(s, " icmp type {t}");
                    }
                    (Some(t), true) => {
                        let _ = write!(s, " icmpv6 type {t}");
                    }
                    (None, false) if family.is_some() => s.push_str(" meta l4proto icmp"),
                    (None, true) => s.push_str(" meta l4proto ipv6-icmp"),
                    (None, false) => s.push_str(" meta l4proto { icmp, ipv6-icmp }"),
                }
            }
            (None, _, _) => {}
        }
        let _ = write!(s, " {}", verdict(rule.action));
        out.push(s);
    }
    out
}

/// The chain of one client's firewall.
pub fn client_chain(chain: &str, fw: &ClientFirewall, now: u64) -> String {
    let mut s = format!("  chain {chain} {{\n");
    match fw {
        ClientFirewall::Broken(why) => {
            let _ = writeln!(s, "    {REJECT} comment {}", q(&truncate(why, 120)));
        }
        ClientFirewall::Rules(rules) => {
            if rules.iter().all(|r| r.rule.expired(now)) {
                // The default firewall: everything but the other domains.
                let _ = writeln!(s, "    oifname != {} accept", q(VIF_PATTERN));
            }
            for r in rules {
                for l in rule_lines(r, now) {
                    let _ = writeln!(s, "    {l}");
                }
            }
            let _ = writeln!(s, "    {REJECT}");
        }
    }
    s.push_str("  }\n");
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The whole ruleset (one nft transaction that replaces our table).
pub fn ruleset(plan: &NetPlan, now: u64) -> String {
    let mut s = String::new();
    // Create-then-delete makes the delete valid whether or not the table exists.
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
    );
    if !plan.dns.is_empty() {
        for (i, v) in DNS_VIRTUAL.iter().enumerate() {
            let to = plan.dns.get(i).unwrap_or(&plan.dns[0]);
            for p in ["udp", "tcp"] {
                let _ = writeln!(
                    s,
                    "    iifname {} ip daddr {v} {p} dport 53 dnat ip to {to}",
                    q(VIF_PATTERN)
                );
            }
        }
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    if let Some(up) = &plan.uplink {
        let _ = writeln!(s, "    oifname {} masquerade", q(up));
    }
    s.push_str("  }\n");
    s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    let _ = writeln!(s, "    iifname {} meta nfproto ipv6 drop", q(VIF_PATTERN));
    let _ = writeln!(
        s,
        "    iifname {} ct state established,related accept",
        q(VIF_PATTERN)
    );
    let _ = writeln!(
        s,
        "    iifname {} icmp type echo-request accept",
        q(VIF_PATTERN)
    );
    let _ = writeln!(s, "    iifname {} {REJECT}", q(VIF_PATTERN));
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy drop;\n");
    // No IPv6 from or to a client, before anything can accept it.
    for dir in ["iifname", "oifname"] {
        let _ = writeln!(s, "    {dir} {} meta nfproto ipv6 drop", q(VIF_PATTERN));
    }
    s.push_str("    ct state established,related accept\n    ct state invalid drop\n");
    // Between clients: only the explicit pairs, then nothing (before any client's rules).
    for c in &plan.clients {
        for to in &c.may_reach {
            let Some(t) = plan
                .clients
                .iter()
                .find(|t| &t.domain == to && t.domain != c.domain)
            else {
                continue;
            };
            let _ = writeln!(
                s,
                "    iifname {} oifname {} accept comment {}",
                q(&c.vif),
                q(&t.vif),
                q(&format!(
                    "{} to {}: {ALLOW_INTER_DOMAIN_FEATURE}",
                    c.domain, t.domain
                ))
            );
        }
    }
    let _ = writeln!(
        s,
        "    iifname {} oifname {} {REJECT}",
        q(VIF_PATTERN),
        q(VIF_PATTERN)
    );
    for (i, c) in plan.clients.iter().enumerate() {
        let _ = writeln!(
            s,
            "    iifname {} jump fw{i} comment {}",
            q(&c.vif),
            q(&c.domain)
        );
    }
    s.push_str("  }\n");
    for (i, c) in plan.clients.iter().enumerate() {
        s.push_str(&client_chain(&format!("fw{i}"), &c.firewall, now));
    }
    s.push_str("}\n");
    s
}

/// Apply `text` with `nft -f -` inside `ns`.
pub fn apply(ns: &NetNs, text: &str) -> Result<(), NetError> {
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| NetError::Nft {
        message: format!("cannot run nft (install the nftables package): {e}"),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetError::Nft {
                message: format!("writing the ruleset to nft: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Nft {
        message: format!("waiting for nft: {e}"),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NetError::Nft {
            message: format!(
                "nft refused the ruleset ({}): {}",
                out.status,
                truncate(err.trim(), 2000)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(line: &str, addrs: &[&str]) -> ResolvedRule {
        ResolvedRule {
            rule: Rule::parse(line, 0).unwrap(),
            host_addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn rules_become_statements() {
        let l = |line: &str| rule_lines(&rr(line, &[]), 10);
        assert_eq!(
            l("action=accept dst4=192.0.2.0/24 proto=tcp dstports=80-81"),
            vec!["ip daddr 192.0.2.0/24 tcp dport 80-81 accept"]
        );
        assert_eq!(
            l("action=drop proto=udp"),
            vec![format!("oifname != \"vif*\" meta l4proto udp {REJECT}")]
        );
        assert_eq!(
            l("action=accept proto=icmp icmptype=8"),
            vec!["oifname != \"vif*\" icmp type 8 accept"]
        );
        assert_eq!(
            l("action=accept specialtarget=dns"),
            vec!["ct original ip daddr { 10.139.1.1, 10.139.1.2 } th dport 53 accept"]
        );
        assert!(l("action=accept expire=5").is_empty());
        assert_eq!(
            rule_lines(
                &rr(
                    "action=accept dsthost=x.example",
                    &["192.0.2.9", "2001:db8::9"]
                ),
                0
            ),
            vec![
                "ip daddr { 192.0.2.9 } accept",
                "ip6 daddr { 2001:db8::9 } accept"
            ]
        );
    }

    #[test]
    fn names_cannot_break_out_of_strings() {
        assert_eq!(q("a\"; flush ruleset"), "\"a__ flush ruleset\"");
    }

    #[test]
    fn ruleset_has_nat_dns_and_a_chain_per_client() {
        let plan = NetPlan {
            uplink: Some("up0".into()),
            dns: vec!["192.0.2.53".parse().unwrap()],
            clients: vec![
                Client {
                    domain: "work".into(),
                    vif: "vif5".into(),
                    firewall: ClientFirewall::Rules(vec![]),
                    may_reach: vec![],
                },
                Client {
                    domain: "bad".into(),
                    vif: "vif6".into(),
                    firewall: ClientFirewall::Broken("rule 1: x".into()),
                    may_reach: vec![],
                },
            ],
        };
        let t = ruleset(&plan, 0);
        assert!(t.contains("oifname \"up0\" masquerade"), "{t}");
        assert!(
            t.contains("ip daddr 10.139.1.2 udp dport 53 dnat ip to 192.0.2.53"),
            "{t}"
        );
        assert!(t.contains("iifname \"vif6\" jump fw1"), "{t}");
        assert!(
            t.contains("chain fw0 {\n    oifname != \"vif*\" accept\n"),
            "{t}"
        );
        assert!(
            t.contains(&format!("chain fw1 {{\n    {REJECT} comment")),
            "{t}"
        );
    }

    fn client(domain: &str, vif: &str, rules: &[&str], may_reach: &[&str]) -> Client {
        Client {
            domain: domain.into(),
            vif: vif.into(),
            firewall: ClientFirewall::Rules(rules.iter().map(|l| rr(l, &[])).collect()),
            may_reach: may_reach.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The forward chain's statements, in order.
    fn forward(t: &str) -> Vec<&str> {
        let start = t.find("chain forward {").unwrap();
        t[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.trim() != "}")
            .map(str::trim)
            .collect()
    }

    #[test]
    fn rules_never_open_the_way_to_another_client() {
        let plan = NetPlan {
            uplink: Some("up0".into()),
            dns: vec![],
            clients: vec![
                client(
                    "a",
                    "vif2",
                    &[
                        "action=accept dst4=10.137.0.3",
                        "action=accept dst4=0.0.0.0/0",
                        "action=accept",
                    ],
                    &[],
                ),
                client("b", "vif3", &[], &[]),
            ],
        };
        let t = ruleset(&plan, 0);
        let f = forward(&t);
        let block = f
            .iter()
            .position(|l| *l == format!("iifname \"vif*\" oifname \"vif*\" {REJECT}"))
            .unwrap_or_else(|| panic!("no client-to-client reject in\n{t}"));
        let first_jump = f.iter().position(|l| l.contains("jump fw")).unwrap();
        assert!(block < first_jump, "{t}");
        assert!(!f.iter().any(|l| l.contains("oifname \"vif3\"")), "{t}");
    }

    #[test]
    fn an_explicit_pair_opens_one_way_only() {
        let plan = NetPlan {
            uplink: None,
            dns: vec![],
            clients: vec![
                client("a", "vif2", &["action=drop"], &["b", "ghost", "a"]),
                client("b", "vif3", &[], &[]),
            ],
        };
        let t = ruleset(&plan, 0);
        let f = forward(&t);
        let pair =
            "iifname \"vif2\" oifname \"vif3\" accept comment \"a to b: allow-inter-domain\"";
        let p = f
            .iter()
            .position(|l| *l == pair)
            .unwrap_or_else(|| panic!("{t}"));
        let block = f
            .iter()
            .position(|l| l.starts_with("iifname \"vif*\" oifname \"vif*\""))
            .unwrap();
        assert!(p < block, "{t}");
        assert!(!t.contains("iifname \"vif3\" oifname \"vif2\""), "{t}");
        assert!(!t.contains("ghost") && !t.contains("a to a"), "{t}");
    }

    #[test]
    fn no_ipv6_from_or_to_clients() {
        let plan = NetPlan {
            uplink: Some("up0".into()),
            dns: vec![],
            clients: vec![client(
                "a",
                "vif2",
                &["action=accept dst6=::/0", "action=accept"],
                &[],
            )],
        };
        let t = ruleset(&plan, 0);
        let f = forward(&t);
        assert_eq!(
            &f[..2],
            [
                "iifname \"vif*\" meta nfproto ipv6 drop",
                "oifname \"vif*\" meta nfproto ipv6 drop"
            ],
            "{t}"
        );
        let input = &t[t.find("chain input {").unwrap()..];
        assert_eq!(
            input.lines().nth(2).map(str::trim),
            Some("iifname \"vif*\" meta nfproto ipv6 drop"),
            "{t}"
        );
    }

    #[test]
    fn allow_inter_domain_values() {
        assert_eq!(
            parse_allow_inter_domain(" b, c  b\td ").unwrap(),
            vec!["b", "c", "d"]
        );
        assert!(parse_allow_inter_domain("").unwrap().is_empty());
        assert!(parse_allow_inter_domain("b;flush")
            .unwrap_err()
            .contains("not a domain"));
        let many = vec!["x"; MAX_INTER_DOMAIN + 1].join(" ");
        assert!(parse_allow_inter_domain(&many)
            .unwrap_err()
            .contains("at most"));
    }
}
