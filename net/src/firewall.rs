//! The per-domain firewall in Qubes' rule format.
//!
//! One rule per line, `key=value` words separated by spaces, `comment=` last and taking the
//! rest of the line:
//!
//! ```text
//! action=accept dst4=192.0.2.0/24 proto=tcp dstports=80-443 comment=web
//! action=accept specialtarget=dns
//! action=accept dsthost=example.org
//! action=accept proto=icmp icmptype=8 expire=1767225600
//! action=drop
//! ```
//!
//! Rules are tried in order; the first that matches decides. An empty rule list means
//! "accept everything" (Qubes' default firewall); a non-empty list that no rule matches drops.
//! The rules govern what leaves through the net domain; no rule reaches another domain,
//! whatever it accepts (that domain's address, `dst4=0.0.0.0/0`, no destination): domains
//! reach each other only through the separate, explicit `allow-inter-domain` feature (see
//! [`crate::nft`]). IPv6 is dropped for clients, so `dst6` rules match nothing. Stored in the domain's state directory as text
//! ([`RuleFile`]); a file that does not parse makes the whole domain's traffic drop (see
//! [`crate::nft`]) and the parse error is reported by `list`.
//!
//! Limits (the file sits in a directory root owns, but a parser that meets hostile text must
//! stay bounded): [`MAX_RULES`], [`MAX_LINE`], [`MAX_FILE`], [`MAX_COMMENT`],
//! [`MAX_HOST`].

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Most rules one domain may have.
pub const MAX_RULES: usize = 512;
/// Longest rule line in bytes.
pub const MAX_LINE: usize = 1024;
/// Largest rule file in bytes.
pub const MAX_FILE: u64 = 256 * 1024;
/// Longest comment in bytes.
pub const MAX_COMMENT: usize = 256;
/// Longest `dsthost` (a DNS name).
pub const MAX_HOST: usize = 253;

/// A rule line that does not parse, or a rule that breaks a constraint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("empty rule")]
    Empty,
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("unknown key '{0}' (known: action, dst4, dst6, dsthost, specialtarget, proto, dstports, icmptype, expire, comment)")]
    UnknownKey(String),
    #[error("'{0}' given twice")]
    Duplicate(&'static str),
    #[error("action is missing (action=accept or action=drop)")]
    NoAction,
    #[error("{key}={value}: {why}")]
    Value {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("only one of dst4, dst6, dsthost and specialtarget may be given")]
    ManyDestinations,
    #[error("dstports needs proto=tcp or proto=udp")]
    PortsWithoutProto,
    #[error("icmptype needs proto=icmp")]
    IcmpTypeWithoutIcmp,
    #[error("comment is longer than {MAX_COMMENT} bytes")]
    CommentTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// Where a rule's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// An IPv4 network (host bits zero).
    V4(Ipv4Addr, u8),
    /// An IPv6 network (host bits zero).
    V6(Ipv6Addr, u8),
    /// A DNS name (or an address literal), resolved when the rules are applied.
    Host(String),
    /// `specialtarget=dns`: the domain's virtual DNS servers.
    Dns,
}

/// One firewall rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub dest: Option<Dest>,
    pub proto: Option<Proto>,
    /// Inclusive port range.
    pub dstports: Option<(u16, u16)>,
    pub icmptype: Option<u8>,
    /// Seconds since the epoch after which the rule is gone.
    pub expire: Option<u64>,
    pub comment: Option<String>,
}

fn value_err(key: &'static str, value: &str, why: impl Into<String>) -> RuleError {
    RuleError::Value {
        key,
        value: value.chars().take(80).collect(),
        why: why.into(),
    }
}

fn parse_v4_net(v: &str) -> Result<(Ipv4Addr, u8), RuleError> {
    let (a, len) = match v.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| value_err("dst4", v, "prefix length must be 0..=32"))?,
        ),
        None => (v, 32),
    };
    let ip: Ipv4Addr = a
        .parse()
        .map_err(|_| value_err("dst4", v, "not an IPv4 address"))?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    if u32::from(ip) & !mask != 0 {
        return Err(value_err(
            "dst4",
            v,
            format!(
                "host bits are set; the network is {}/{len}",
                Ipv4Addr::from(u32::from(ip) & mask)
            ),
        ));
    }
    Ok((ip, len))
}

fn parse_v6_net(v: &str) -> Result<(Ipv6Addr, u8), RuleError> {
    let (a, len) = match v.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .ok()
                .filter(|l| *l <= 128)
                .ok_or_else(|| value_err("dst6", v, "prefix length must be 0..=128"))?,
        ),
        None => (v, 128),
    };
    let ip: Ipv6Addr = a
        .parse()
        .map_err(|_| value_err("dst6", v, "not an IPv6 address"))?;
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    if u128::from(ip) & !mask != 0 {
        return Err(value_err(
            "dst6",
            v,
            format!(
                "host bits are set; the network is {}/{len}",
                Ipv6Addr::from(u128::from(ip) & mask)
            ),
        ));
    }
    Ok((ip, len))
}

/// A DNS name: labels of [A-Za-z0-9-] (not starting or ending with '-'), 1..=63 bytes each,
/// at most [`MAX_HOST`] in all; or an address literal.
fn valid_host(v: &str) -> bool {
    if v.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let v = v.strip_suffix('.').unwrap_or(v);
    !v.is_empty()
        && v.len() <= MAX_HOST
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_ports(v: &str) -> Result<(u16, u16), RuleError> {
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| value_err("dstports", v, "ports are 1..=65535"))
    };
    let (a, b) = match v.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(v)?;
            (p, p)
        }
    };
    if a > b {
        return Err(value_err("dstports", v, "the range is reversed"));
    }
    Ok((a, b))
}

impl Rule {
    /// Parse one rule line. `now` turns a relative `expire=+SECONDS` into an absolute time.
    pub fn parse(line: &str, now: u64) -> Result<Rule, RuleError> {
        if line.len() > MAX_LINE {
            return Err(RuleError::TooLong);
        }
        let line = line.trim();
        if line.is_empty() {
            return Err(RuleError::Empty);
        }
        let mut action = None;
        let mut dest: Option<Dest> = None;
        let mut proto = None;
        let mut dstports = None;
        let mut icmptype = None;
        let mut expire = None;
        let mut comment = None;
        let mut rest = line;
        while !rest.is_empty() {
            let (word, after) = match rest.find(char::is_whitespace) {
                Some(i) => (&rest[..i], rest[i..].trim_start()),
                None => (rest, ""),
            };
            let Some((key, value)) = word.split_once('=') else {
                return Err(RuleError::NotKeyValue(word.chars().take(80).collect()));
            };
            if key == "comment" {
                // The rest of the line, spaces included.
                let text = rest["comment=".len()..].trim_end();
                if text.len() > MAX_COMMENT {
                    return Err(RuleError::CommentTooLong);
                }
                if text.chars().any(char::is_control) {
                    return Err(value_err("comment", text, "control characters"));
                }
                comment = Some(text.to_owned());
                break;
            }
            fn set<T>(slot: &mut Option<T>, v: T, k: &'static str) -> Result<(), RuleError> {
                if slot.is_some() {
                    return Err(RuleError::Duplicate(k));
                }
                *slot = Some(v);
                Ok(())
            }
            let set_dest = |dest: &mut Option<Dest>, d: Dest| {
                if dest.is_some() {
                    return Err(RuleError::ManyDestinations);
                }
                *dest = Some(d);
                Ok(())
            };
            match key {
                "action" => {
                    let a = match value {
                        "accept" => Action::Accept,
                        "drop" => Action::Drop,
                        _ => return Err(value_err("action", value, "must be accept or drop")),
                    };
                    set(&mut action, a, "action")?;
                }
                "dst4" => {
                    let (ip, len) = parse_v4_net(value)?;
                    set_dest(&mut dest, Dest::V4(ip, len))?;
                }
                "dst6" => {
                    let (ip, len) = parse_v6_net(value)?;
                    set_dest(&mut dest, Dest::V6(ip, len))?;
                }
                "dsthost" => {
                    if !valid_host(value) {
                        return Err(value_err("dsthost", value, "not a DNS name or address"));
                    }
                    set_dest(&mut dest, Dest::Host(value.to_ascii_lowercase()))?;
                }
                "specialtarget" => {
                    if value != "dns" {
                        return Err(value_err("specialtarget", value, "only 'dns' is known"));
                    }
                    set_dest(&mut dest, Dest::Dns)?;
                }
                "proto" => {
                    let p = match value {
                        "tcp" => Proto::Tcp,
                        "udp" => Proto::Udp,
                        "icmp" => Proto::Icmp,
                        _ => return Err(value_err("proto", value, "must be tcp, udp or icmp")),
                    };
                    set(&mut proto, p, "proto")?;
                }
                "dstports" => set(&mut dstports, parse_ports(value)?, "dstports")?,
                "icmptype" => {
                    let t = value
                        .parse::<u8>()
                        .map_err(|_| value_err("icmptype", value, "must be 0..=255"))?;
                    set(&mut icmptype, t, "icmptype")?;
                }
                "expire" => {
                    let t = match value.strip_prefix('+') {
                        Some(rel) => rel.parse::<u64>().ok().map(|r| now.saturating_add(r)),
                        None => value.parse::<u64>().ok(),
                    }
                    .ok_or_else(|| {
                        value_err(
                            "expire",
                            value,
                            "seconds since the epoch, or +SECONDS from now",
                        )
                    })?;
                    set(&mut expire, t, "expire")?;
                }
                other => return Err(RuleError::UnknownKey(other.chars().take(40).collect())),
            }
            rest = after;
        }
        let action = action.ok_or(RuleError::NoAction)?;
        if dstports.is_some() && !matches!(proto, Some(Proto::Tcp | Proto::Udp)) {
            return Err(RuleError::PortsWithoutProto);
        }
        if icmptype.is_some() && proto != Some(Proto::Icmp) {
            return Err(RuleError::IcmpTypeWithoutIcmp);
        }
        Ok(Rule {
            action,
            dest,
            proto,
            dstports,
            icmptype,
            expire,
            comment,
        })
    }

    /// Whether the rule has expired at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expire.is_some_and(|e| e <= now)
    }
}

impl fmt::Display for Rule {
    /// The canonical text form (what the file stores and `list` shows).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self.action {
            Action::Accept => "accept",
            Action::Drop => "drop",
        };
        write!(f, "action={a}")?;
        match &self.dest {
            Some(Dest::V4(ip, len)) => write!(f, " dst4={ip}/{len}")?,
            Some(Dest::V6(ip, len)) => write!(f, " dst6={ip}/{len}")?,
            Some(Dest::Host(h)) => write!(f, " dsthost={h}")?,
            Some(Dest::Dns) => write!(f, " specialtarget=dns")?,
            None => {}
        }
        if let Some(p) = self.proto {
            write!(f, " proto={}", p.as_str())?;
        }
        if let Some((a, b)) = self.dstports {
            write!(f, " dstports={a}-{b}")?;
        }
        if let Some(t) = self.icmptype {
            write!(f, " icmptype={t}")?;
        }
        if let Some(e) = self.expire {
            write!(f, " expire={e}")?;
        }
        if let Some(c) = &self.comment {
            write!(f, " comment={c}")?;
        }
        Ok(())
    }
}

/// A whole rule text: the parsed rules, or why it does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSet {
    Rules(Vec<Rule>),
    /// The text does not parse: every packet of the domain is dropped.
    Broken(String),
}

/// The entries of a rule text: its lines without blanks and `#` comments.
pub fn entries(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Parse a whole rule text (see [`entries`]); the first bad line breaks the set.
pub fn parse_rules(text: &str, now: u64) -> RuleSet {
    let lines = entries(text);
    if lines.len() > MAX_RULES {
        return RuleSet::Broken(format!(
            "{} rules; at most {MAX_RULES} are allowed",
            lines.len()
        ));
    }
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match Rule::parse(l, now) {
            Ok(r) => out.push(r),
            Err(e) => return RuleSet::Broken(format!("rule {}: {e}", i + 1)),
        }
    }
    RuleSet::Rules(out)
}

/// Errors reading or writing a rule file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not UTF-8 text")]
    NotText { path: PathBuf },
}

/// A domain's rule file (`<state>/domains/<name>/firewall.rules`).
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub path: PathBuf,
}

/// File name of the rule file in a domain's state directory.
pub const RULE_FILE_NAME: &str = "firewall.rules";

impl RuleFile {
    pub fn in_dir(dir: &Path) -> RuleFile {
        RuleFile {
            path: dir.join(RULE_FILE_NAME),
        }
    }

    /// The raw text ("" when there is no file: the default, accept everything).
    pub fn read_text(&self) -> Result<String, FileError> {
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(source) => {
                return Err(FileError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut buf = Vec::new();
        f.take(MAX_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(|source| FileError::Io {
                path: self.path.clone(),
                source,
            })?;
        if buf.len() as u64 > MAX_FILE {
            return Err(FileError::TooLarge {
                path: self.path.clone(),
            });
        }
        String::from_utf8(buf).map_err(|_| FileError::NotText {
            path: self.path.clone(),
        })
    }

    /// The rule set as applied: a file that cannot be read counts as broken.
    pub fn load(&self, now: u64) -> RuleSet {
        match self.read_text() {
            Ok(t) => parse_rules(&t, now),
            Err(e) => RuleSet::Broken(e.to_string()),
        }
    }

    /// Replace the file with `lines` (atomically: temp file, fsync, rename). No lines:
    /// the file is removed (the default firewall).
    pub fn write_lines(&self, lines: &[String]) -> Result<(), FileError> {
        let io = |source| FileError::Io {
            path: self.path.clone(),
            source,
        };
        if lines.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(e)),
            };
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile_in(dir).map_err(io)?;
        let mut text = String::new();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        tmp.1.write_all(text.as_bytes()).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, &self.path).map_err(io)?;
        Ok(())
    }
}

/// A new file `dir/.firewall.rules.<pid>.<n>` (no extra crate for one temp file).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = dir.join(format!(
        ".{RULE_FILE_NAME}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok((p, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_round_trips() {
        for (line, canon) in [
            (
                "action=accept dst4=192.0.2.0/24 proto=tcp dstports=80",
                "action=accept dst4=192.0.2.0/24 proto=tcp dstports=80-80",
            ),
            (
                "action=drop dst4=192.0.2.7",
                "action=drop dst4=192.0.2.7/32",
            ),
            (
                "action=accept dst6=2001:db8::/32",
                "action=accept dst6=2001:db8::/32",
            ),
            (
                "action=accept dsthost=Example.ORG",
                "action=accept dsthost=example.org",
            ),
            (
                "action=accept specialtarget=dns",
                "action=accept specialtarget=dns",
            ),
            (
                "action=accept proto=icmp icmptype=8",
                "action=accept proto=icmp icmptype=8",
            ),
            (
                "action=accept proto=udp dstports=1000-2000 expire=+60 comment=a b  c",
                "action=accept proto=udp dstports=1000-2000 expire=1060 comment=a b  c",
            ),
            ("action=drop", "action=drop"),
        ] {
            let r = Rule::parse(line, 1000).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.to_string(), canon);
            assert_eq!(Rule::parse(canon, 5).unwrap(), r, "{canon}");
        }
    }

    #[test]
    fn rejects_with_reasons() {
        for (line, want) in [
            ("proto=tcp", "action is missing"),
            ("action=allow", "accept or drop"),
            ("action=accept dst4=192.0.2.1/24", "host bits"),
            ("action=accept dst4=300.0.0.0", "not an IPv4"),
            ("action=accept dst4=10.0.0.0/33", "prefix length"),
            ("action=accept dstports=80", "needs proto"),
            ("action=accept proto=icmp dstports=80", "needs proto"),
            ("action=accept proto=tcp icmptype=3", "needs proto=icmp"),
            ("action=accept proto=tcp dstports=90-80", "reversed"),
            ("action=accept proto=tcp dstports=0", "1..=65535"),
            ("action=accept dst4=10.0.0.0/8 dsthost=a.b", "only one"),
            ("action=accept dsthost=a..b", "DNS name"),
            ("action=accept specialtarget=ntp", "only 'dns'"),
            ("action=accept color=red", "unknown key"),
            ("action=accept action=drop", "twice"),
            ("action=accept junk", "key=value"),
            ("action=accept expire=soon", "seconds"),
        ] {
            let e = Rule::parse(line, 0).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
        assert_eq!(
            Rule::parse(&"x".repeat(MAX_LINE + 1), 0),
            Err(RuleError::TooLong)
        );
        let long = format!("action=accept comment={}", "c".repeat(MAX_COMMENT + 1));
        assert_eq!(Rule::parse(&long, 0), Err(RuleError::CommentTooLong));
    }

    #[test]
    fn rule_sets_break_on_the_first_bad_line_and_name_it() {
        let t = "# mine\naction=accept specialtarget=dns\n\naction=bogus\n";
        assert_eq!(entries(t).len(), 2);
        match parse_rules(t, 0) {
            RuleSet::Broken(m) => assert!(m.starts_with("rule 2:"), "{m}"),
            other => panic!("{other:?}"),
        }
        let many = "action=drop\n".repeat(MAX_RULES + 1);
        assert!(matches!(parse_rules(&many, 0), RuleSet::Broken(m) if m.contains("at most")));
        assert_eq!(parse_rules("", 0), RuleSet::Rules(vec![]));
    }

    #[test]
    fn file_round_trip_and_default() {
        let d = tempfile::tempdir().unwrap();
        let f = RuleFile::in_dir(&d.path().join("x"));
        assert_eq!(f.load(0), RuleSet::Rules(vec![]));
        f.write_lines(&[
            "action=accept specialtarget=dns".into(),
            "action=drop".into(),
        ])
        .unwrap();
        match f.load(0) {
            RuleSet::Rules(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
        f.write_lines(&[]).unwrap();
        assert!(!f.path.exists());
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        std::fs::write(&f.path, vec![0xffu8; 10]).unwrap();
        assert!(matches!(f.load(0), RuleSet::Broken(m) if m.contains("UTF-8")));
    }
}
