//! A proxy request from a template, parsed with limits.
//!
//! Accepted: `GET`/`HEAD` with an absolute `http://host[:port]/path` target (plain-HTTP
//! archives, apt's default), and `CONNECT host:port` (HTTPS archives: the proxy sees only the
//! host). Everything else is refused with the reason. The head is at most [`MAX_HEAD`] bytes
//! and [`MAX_HEADERS`] headers; host names are DNS names or IPv4 literals.

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers accepted.
pub const MAX_HEADERS: usize = 64;
/// Longest host name accepted.
pub const MAX_HOST: usize = 253;

/// Headers that concern the hop to the proxy, not the archive: never passed on.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the request head is longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("the request head is not valid HTTP/1.x: {0}")]
    Malformed(String),
    #[error("method {0:?} is not allowed (GET, HEAD, CONNECT)")]
    Method(String),
    #[error("target {0:?} is not an absolute http:// URL")]
    Target(String),
    #[error("host {0:?} is not a DNS name or an IPv4 address")]
    Host(String),
    #[error("port in {0:?} is not 1..=65535")]
    Port(String),
    #[error("a {0} request carries a body; archives are only read")]
    Body(String),
}

/// What the template asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// A plain-HTTP request, to be sent to `host:port` as `head`.
    Http {
        host: String,
        port: u16,
        /// The request rewritten for the archive: origin-form target, hop-by-hop headers
        /// dropped, `Connection: close`.
        head: Vec<u8>,
    },
    /// A tunnel to `host:port`.
    Connect { host: String, port: u16 },
}

impl ProxyRequest {
    pub fn host(&self) -> &str {
        match self {
            Self::Http { host, .. } | Self::Connect { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Self::Http { port, .. } | Self::Connect { port, .. } => *port,
        }
    }
}

/// Where the head ends in `buf` (the index after `\r\n\r\n`), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A DNS name (letters, digits, '-', '.', labels of 1..=63) or a dotted IPv4 address,
/// lower-cased.
pub fn valid_host(h: &str) -> Option<String> {
    if h.is_empty() || h.len() > MAX_HOST {
        return None;
    }
    let ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    ok.then(|| h.to_ascii_lowercase())
}

fn host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), RequestError> {
    let (h, p) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| RequestError::Port(authority.to_owned()))?;
            (h, port)
        }
        None => (
            authority,
            default_port.ok_or_else(|| RequestError::Port(authority.to_owned()))?,
        ),
    };
    let host = valid_host(h).ok_or_else(|| RequestError::Host(h.to_owned()))?;
    Ok((host, p))
}

/// Parses a complete head (`head_end` found it). `buf` holds exactly the head.
pub fn parse(buf: &[u8]) -> Result<ProxyRequest, RequestError> {
    if buf.len() > MAX_HEAD {
        return Err(RequestError::TooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(httparse::Status::Complete(_)) => {
            return Err(RequestError::Malformed("bytes after the head".into()))
        }
        Ok(httparse::Status::Partial) => return Err(RequestError::Malformed("incomplete".into())),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    match method {
        "CONNECT" => {
            let (host, port) = host_port(target, None)?;
            Ok(ProxyRequest::Connect { host, port })
        }
        "GET" | "HEAD" => {
            let rest = target
                .strip_prefix("http://")
                .ok_or_else(|| RequestError::Target(target.to_owned()))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.contains('@') {
                return Err(RequestError::Target(target.to_owned()));
            }
            let (host, port) = host_port(authority, Some(80))?;
            let mut head = Vec::with_capacity(buf.len() + 32);
            head.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
            // The archive is told the host the allow list was checked against, never the
            // template's own Host header (which could name another site behind the same
            // address).
            head.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
            for h in req.headers.iter() {
                let name = h.name.to_ascii_lowercase();
                // every proxy-* header is for the hop to a proxy (credentials among them)
                if HOP_BY_HOP.contains(&name.as_str())
                    || name.starts_with("proxy-")
                    || name == "host"
                {
                    continue;
                }
                if name == "content-length" && h.value != b"0" {
                    return Err(RequestError::Body(method.to_owned()));
                }
                head.extend_from_slice(h.name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(h.value);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            Ok(ProxyRequest::Http { host, port, head })
        }
        other => Err(RequestError::Method(other.chars().take(16).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target: a header named `proxy-…` that is none of the known ones
    /// went to the archive.
    #[test]
    fn no_proxy_header_reaches_the_archive() {
        let r = parse(
            b"GET http://deb.debian.org/x HTTP/1.1\r\nProxy-Authenticate-X: secret\r\n\
              Proxy-Whatever: 1\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let ProxyRequest::Http { head, .. } = r else {
            panic!("not http")
        };
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(!text.contains("proxy-"), "{text}");
        assert!(text.contains("accept: */*"), "{text}");
    }

    #[test]
    fn get_is_rewritten_for_the_archive() {
        let r = parse(
            b"GET http://Deb.Debian.org/debian/dists/bookworm/InRelease HTTP/1.1\r\n\
              Host: elsewhere.example\r\nProxy-Connection: keep-alive\r\nUser-Agent: apt\r\n\r\n",
        )
        .unwrap();
        let ProxyRequest::Http { host, port, head } = r else {
            panic!("not http")
        };
        assert_eq!((host.as_str(), port), ("deb.debian.org", 80));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /debian/dists/bookworm/InRelease HTTP/1.1\r\nHost: Deb.Debian.org\r\n\
             User-Agent: apt\r\nConnection: close\r\n\r\n"
        );
        let r = parse(b"HEAD http://10.0.0.1:8000 HTTP/1.0\r\n\r\n").unwrap();
        let ProxyRequest::Http { host, port, head } = r else {
            panic!("not http")
        };
        assert_eq!((host.as_str(), port), ("10.0.0.1", 8000));
        assert!(String::from_utf8(head)
            .unwrap()
            .starts_with("HEAD / HTTP/1.1\r\nHost: 10.0.0.1:8000\r\n"));
    }

    #[test]
    fn connect_names_host_and_port() {
        assert_eq!(
            parse(b"CONNECT security.debian.org:443 HTTP/1.1\r\n\r\n").unwrap(),
            ProxyRequest::Connect {
                host: "security.debian.org".into(),
                port: 443
            }
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"POST http://a/ HTTP/1.1\r\n\r\n", "method"),
            (b"GET /local HTTP/1.1\r\n\r\n", "absolute"),
            (b"GET https://a/ HTTP/1.1\r\n\r\n", "absolute"),
            (b"GET http://user@a/ HTTP/1.1\r\n\r\n", "absolute"),
            (b"GET http://a_b/ HTTP/1.1\r\n\r\n", "DNS name"),
            (b"GET http://a:0/ HTTP/1.1\r\n\r\n", "port"),
            (b"GET http://a:99999/ HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT a HTTP/1.1\r\n\r\n", "port"),
            (b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n", "DNS name"),
            (
                b"GET http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                "body",
            ),
            (
                b"GET http://a/ HTTP/1.1\r\nBad Header\r\n\r\n",
                "valid HTTP",
            ),
            (b"GET http://a/ HTTP/1.1\r\n\r\nextra", "valid HTTP"),
        ];
        for (req, want) in cases {
            let e = parse(req).unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(req)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let req = format!("GET http://a/ HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(req.as_bytes()),
            Err(RequestError::Malformed(_))
        ));
        let long = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse(&long), Err(RequestError::TooLong));
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
