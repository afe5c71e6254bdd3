//! Just enough DNS to resolve a firewall rule's `dsthost` (A and AAAA over UDP, from inside the
//! net domain's namespace, asking the uplink's resolver as the domains do) and to answer such
//! queries in tests. Written here rather than pulling in a resolver crate: the firewall needs
//! two record types, one server and no cache, and the resolver must run in another network
//! namespace, which the resolver crates do not offer.
//!
//! The response parser treats the answer as hostile: it is bounded by [`MAX_MESSAGE`],
//! [`MAX_ANSWERS`] and [`MAX_POINTERS`] (compression pointers followed per name), and has a
//! cargo-fuzz target (`fuzz/fuzz_targets/dns_response.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::netns::NetNs;
use crate::NetError;

/// Largest message read.
pub const MAX_MESSAGE: usize = 4096;
/// Most answer records looked at.
pub const MAX_ANSWERS: usize = 64;
/// Most compression pointers followed while skipping one name.
pub const MAX_POINTERS: usize = 16;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message truncated")]
    Truncated,
    #[error("not an answer to our query")]
    NotOurs,
    #[error("server answered with error code {0}")]
    Rcode(u8),
    #[error("bad name in message")]
    BadName,
    #[error("name too long for a query")]
    NameTooLong,
}

/// A query for `name` (already validated as a DNS name) of type `qtype`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    encode_name(&mut m, name)?;
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(m)
}

fn encode_name(m: &mut Vec<u8>, name: &str) -> Result<(), DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 253 {
        return Err(DnsError::NameTooLong);
    }
    for l in name.split('.') {
        if l.is_empty() || l.len() > 63 {
            return Err(DnsError::BadName);
        }
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.push(0);
    Ok(())
}

fn u16_at(b: &[u8], i: usize) -> Result<u16, DnsError> {
    let s = b.get(i..i + 2).ok_or(DnsError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

/// Skip a (possibly compressed) name starting at `i`; returns the offset after it.
fn skip_name(b: &[u8], mut i: usize) -> Result<usize, DnsError> {
    let mut end = None;
    let mut pointers = 0;
    loop {
        let len = *b.get(i).ok_or(DnsError::Truncated)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Ok(end.unwrap_or(i + 1)),
            0x00 => i += 1 + len as usize,
            0xC0 => {
                let target = (u16_at(b, i)? & 0x3FFF) as usize;
                if end.is_none() {
                    end = Some(i + 2);
                }
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(DnsError::BadName);
                }
                i = target;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

/// The addresses in an answer to query `id` (A and AAAA records; others are skipped).
pub fn parse_response(b: &[u8], id: u16) -> Result<Vec<IpAddr>, DnsError> {
    if b.len() < 12 {
        return Err(DnsError::Truncated);
    }
    let b = &b[..b.len().min(MAX_MESSAGE)];
    if u16_at(b, 0)? != id || b[2] & 0x80 == 0 {
        return Err(DnsError::NotOurs);
    }
    let rcode = b[3] & 0x0F;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let qd = u16_at(b, 4)? as usize;
    let an = (u16_at(b, 6)? as usize).min(MAX_ANSWERS);
    let mut i = 12;
    for _ in 0..qd.min(4) {
        i = skip_name(b, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(b, i)?;
        let rtype = u16_at(b, i)?;
        let rdlen = u16_at(b, i + 8)? as usize;
        let data = b.get(i + 10..i + 10 + rdlen).ok_or(DnsError::Truncated)?;
        match (rtype, rdlen) {
            (TYPE_A, 4) => out.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                out.push(IpAddr::V6(Ipv6Addr::from(a)));
            }
            _ => {}
        }
        i += 10 + rdlen;
    }
    Ok(out)
}

/// An answer to `query` with `addrs` (those of the asked type), or NXDOMAIN when there are
/// none. For test servers.
pub fn build_response(query: &[u8], addrs: &[IpAddr]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let qend = skip_name(query, 12).ok()? + 4;
    let qtype = u16_at(query, qend - 4).ok()?;
    let answers: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| match a {
            IpAddr::V4(_) => qtype == TYPE_A,
            IpAddr::V6(_) => qtype == TYPE_AAAA,
        })
        .collect();
    let mut m = query.get(..qend)?.to_vec();
    m[2] = 0x81; // response, RD
    m[3] = if addrs.is_empty() { 0x83 } else { 0x80 }; // RA; NXDOMAIN when unknown
    m[4..6].copy_from_slice(&1u16.to_be_bytes());
    m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    m[8..12].fill(0);
    for a in answers {
        m.extend_from_slice(&[0xC0, 12]);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&60u32.to_be_bytes());
        match a {
            IpAddr::V4(v) => {
                m.extend_from_slice(&4u16.to_be_bytes());
                m.extend_from_slice(&v.octets());
            }
            IpAddr::V6(v) => {
                m.extend_from_slice(&16u16.to_be_bytes());
                m.extend_from_slice(&v.octets());
            }
        }
    }
    Some(m)
}

fn query_once(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Result<Vec<IpAddr>, String> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| format!("socket: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.connect(server)
        .map_err(|e| format!("connect {server}: {e}"))?;
    let mut idb = [0u8; 2];
    // Unpredictable ids make a spoofed answer harder to slip in.
    getrandom::fill(&mut idb).map_err(|e| format!("random query id: {e}"))?;
    let id = u16::from_be_bytes(idb);
    let q = build_query(id, name, qtype).map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    for _ in 0..2 {
        sock.send(&q)
            .map_err(|e| format!("send to {server}: {e}"))?;
        let mut buf = [0u8; MAX_MESSAGE];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match parse_response(&buf[..n], id) {
                    Ok(v) => return Ok(v),
                    Err(DnsError::NotOurs) => continue,
                    Err(DnsError::Rcode(3)) => return Ok(Vec::new()),
                    Err(e) => return Err(e.to_string()),
                },
                Err(e) => {
                    last = format!("{server}: {e}");
                    break;
                }
            }
        }
    }
    Err(last)
}

/// Resolve `name` (A and AAAA) by asking `server` from inside `ns`. An address literal is
/// returned as is.
pub fn resolve(ns: &NetNs, server: Ipv4Addr, name: &str) -> Result<Vec<IpAddr>, NetError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let n = name.to_owned();
    let srv = SocketAddr::from((server, 53));
    let r = ns.run(move || -> Result<Vec<IpAddr>, String> {
        let mut v = query_once(srv, &n, TYPE_A, Duration::from_secs(2))?;
        // AAAA is best effort: many test servers and some resolvers do not answer it.
        if let Ok(v6) = query_once(srv, &n, TYPE_AAAA, Duration::from_millis(500)) {
            v.extend(v6);
        }
        Ok(v)
    })?;
    r.map_err(|message| NetError::Dns {
        name: name.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_answer_round_trip() {
        let q = build_query(0x1234, "host.example.", TYPE_A).unwrap();
        let a: IpAddr = "192.0.2.80".parse().unwrap();
        let r = build_response(&q, &[a, "2001:db8::1".parse().unwrap()]).unwrap();
        assert_eq!(parse_response(&r, 0x1234).unwrap(), vec![a]);
        assert_eq!(parse_response(&r, 0x1235), Err(DnsError::NotOurs));
        let nx = build_response(&q, &[]).unwrap();
        assert_eq!(parse_response(&nx, 0x1234), Err(DnsError::Rcode(3)));
    }

    #[test]
    fn hostile_answers_are_bounded() {
        // A pointer loop in the answer's name.
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[0xC0, 12]);
        assert_eq!(parse_response(&m, 0x1234), Err(DnsError::BadName));
        // A record claiming more data than there is.
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0xFF, 0xFF, 1]);
        assert_eq!(parse_response(&m, 0x1234), Err(DnsError::Truncated));
        assert_eq!(parse_response(&[0; 5], 0), Err(DnsError::Truncated));
    }
}
