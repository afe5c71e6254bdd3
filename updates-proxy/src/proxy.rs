//! One `bulkhead.UpdatesProxy` call in the net domain: read the template's request head (with
//! a deadline: a template that stalls is dropped), check it against the allow list, connect to
//! the archive, relay. A refusal answers with an HTTP status and the reason, which apt shows.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::allow::AllowList;
use crate::request::{self, ProxyRequest, MAX_HEAD};

/// How long the template has to send its request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// How long connecting to an archive may take.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// A relay with no byte in either direction for this long ends.
pub const IDLE: Duration = Duration::from_secs(60);

/// Whether `ip` is an address the proxy must not reach by a name: the net domain's own, its
/// local networks', or nobody's (an archive there must be named by its address in the list).
pub fn internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| internal(v4.into()))
        }
    }
}

/// Where `host:port` may be reached: an address literal as it is (the list named it), a
/// name through the resolver, refused when it resolves to an internal address.
async fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, (u16, String)> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let found =
        match tokio::time::timeout(CONNECT_DEADLINE, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => return Err((502, format!("cannot resolve {host}: {e}"))),
            Err(_) => return Err((502, format!("resolving {host} took too long"))),
        };
    if found.is_empty() {
        return Err((502, format!("{host} has no address")));
    }
    if let Some(a) = found.iter().find(|a| internal(a.ip())) {
        return Err((
            403,
            format!("{host} resolves to the internal address {}; list an internal archive by its address", a.ip()),
        ));
    }
    Ok(found)
}

/// Copies until EOF or [`IDLE`] without a byte; returns the bytes copied.
async fn copy_idle<R, W>(from: &mut R, to: &mut W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match tokio::time::timeout(IDLE, from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return n,
            Ok(Ok(k)) => k,
        };
        if to.write_all(&buf[..k]).await.is_err() {
            return n;
        }
        n += k as u64;
    }
}

/// How a call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed to host:port; bytes from the archive.
    Relayed { host: String, port: u16, bytes: u64 },
    /// Refused with this HTTP status and reason.
    Refused { status: u16, reason: String },
}

async fn refuse<W: AsyncWrite + Unpin>(out: &mut W, status: u16, reason: String) -> Outcome {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        _ => "Bad Gateway",
    };
    let body = format!("bulkhead update proxy: {reason}\n");
    let msg = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = out.write_all(msg.as_bytes()).await;
    let _ = out.flush().await;
    Outcome::Refused { status, reason }
}

/// Reads until the end of the head; returns (head, bytes after it). Err: the status and
/// reason to refuse with.
async fn read_head<R: AsyncRead + Unpin>(
    input: &mut R,
) -> Result<(Vec<u8>, Vec<u8>), (u16, String)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = request::head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err((
                400,
                format!("the request head is longer than {MAX_HEAD} bytes"),
            ));
        }
        match input.read(&mut chunk).await {
            Ok(0) => return Err((400, "the connection ended before the request head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err((400, format!("reading the request: {e}"))),
        }
    }
}

/// Serves one call: `input`/`output` are the template's side (the call's stdio).
pub async fn serve<R, W>(mut input: R, mut output: W, allow: &AllowList) -> Outcome
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (head, early) = match tokio::time::timeout(HEAD_DEADLINE, read_head(&mut input)).await {
        Ok(Ok(h)) => h,
        Ok(Err((status, reason))) => return refuse(&mut output, status, reason).await,
        Err(_) => {
            return refuse(
                &mut output,
                408,
                format!("no request head within {} s", HEAD_DEADLINE.as_secs()),
            )
            .await
        }
    };
    let req = match request::parse(&head) {
        Ok(r) => r,
        Err(e) => return refuse(&mut output, 400, e.to_string()).await,
    };
    let (host, port) = (req.host().to_owned(), req.port());
    if !allow.allows(&host, port) {
        return refuse(
            &mut output,
            403,
            format!(
                "{host}:{port} is not a package archive this proxy reaches (see {})",
                crate::ALLOW_FILE
            ),
        )
        .await;
    }
    let addrs = match resolve(&host, port).await {
        Ok(a) => a,
        Err((status, reason)) => return refuse(&mut output, status, reason).await,
    };
    let mut upstream = match tokio::time::timeout(CONNECT_DEADLINE, TcpStream::connect(&addrs[..]))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(&mut output, 502, format!("cannot reach {host}:{port}: {e}")).await
        }
        Err(_) => return refuse(&mut output, 502, format!("{host}:{port} did not answer")).await,
    };
    let sent = match &req {
        ProxyRequest::Http { head, .. } => upstream.write_all(head).await,
        // Bytes the client sent before our answer belong to the tunnel.
        ProxyRequest::Connect { .. } => {
            let ok = output
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            match ok {
                Ok(()) => upstream.write_all(&early).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = sent {
        return refuse(&mut output, 502, format!("writing to {host}:{port}: {e}")).await;
    }
    let _ = output.flush().await;
    let (mut up_r, mut up_w) = upstream.into_split();
    let tunnel = matches!(req, ProxyRequest::Connect { .. });
    // Down: the archive's answer to the template, until the archive closes. Up: only a
    // tunnel carries more from the template (a plain request has no body).
    let down = async {
        let n = copy_idle(&mut up_r, &mut output).await;
        let _ = output.flush().await;
        n
    };
    let up = async {
        if tunnel {
            copy_idle(&mut input, &mut up_w).await;
            let _ = up_w.shutdown().await;
        }
        std::future::pending::<()>().await
    };
    let bytes = tokio::select! {
        n = down => n,
        () = up => 0,
    };
    Outcome::Relayed { host, port, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;
    use tokio::net::TcpListener;

    /// An archive on 127.0.0.1 that records the request head and answers `body`.
    async fn archive(body: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while request::head_end(&buf).is_none() {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        (port, task)
    }

    fn allow(port: u16) -> AllowList {
        AllowList::parse(&format!("127.0.0.1:{port}\n"), "test").unwrap()
    }

    async fn call(req: &[u8], allow: &AllowList) -> (Outcome, String) {
        let (mut tmpl, svc) = duplex(64 * 1024);
        let (r, w) = tokio::io::split(svc);
        tmpl.write_all(req).await.unwrap();
        let out = serve(r, w, allow).await;
        let mut answer = Vec::new();
        tmpl.shutdown().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), tmpl.read_to_end(&mut answer)).await;
        (out, String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test]
    async fn an_allowed_request_reaches_the_archive() {
        let (port, seen) = archive("Packages").await;
        let req = format!(
            "GET http://127.0.0.1:{port}/debian/Packages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Connection: keep-alive\r\n\r\n"
        );
        let (out, answer) = call(req.as_bytes(), &allow(port)).await;
        assert!(
            matches!(out, Outcome::Relayed { bytes, .. } if bytes > 0),
            "{out:?}"
        );
        assert!(answer.ends_with("\r\n\r\nPackages"), "{answer}");
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("GET /debian/Packages HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(!head.contains("Proxy-Connection") && head.contains("Connection: close"));
    }

    #[tokio::test]
    async fn anything_else_is_refused_with_the_reason() {
        let (port, _seen) = archive("x").await;
        let cases: [(&str, u16, &str); 3] = [
            (
                "GET http://127.0.0.2:80/ HTTP/1.1\r\n\r\n",
                403,
                "not a package archive",
            ),
            ("POST http://127.0.0.1/ HTTP/1.1\r\n\r\n", 400, "method"),
            (
                "GET http://127.0.0.1:1/ HTTP/1.1\r\n\r\n",
                403,
                "127.0.0.1:1",
            ),
        ];
        for (req, want, why) in cases {
            let (out, answer) = call(req.as_bytes(), &allow(port)).await;
            match out {
                Outcome::Refused { status, reason } => {
                    assert_eq!(status, want, "{req}");
                    assert!(reason.contains(why), "{req}: {reason}");
                    assert!(answer.starts_with(&format!("HTTP/1.1 {want} ")), "{answer}");
                }
                other => panic!("{req}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_closed_archive_is_a_bad_gateway() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n");
        let (out, _) = call(req.as_bytes(), &allow(port)).await;
        assert!(
            matches!(out, Outcome::Refused { status: 502, .. }),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_tunnel_carries_both_ways() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b.map(|c| c.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let req = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nhello");
        let (out, answer) = call(req.as_bytes(), &allow(port)).await;
        assert!(matches!(out, Outcome::Relayed { bytes: 5, .. }), "{out:?}");
        assert_eq!(answer, "HTTP/1.1 200 Connection established\r\n\r\nHELLO");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_template_is_dropped() {
        let (_tmpl, svc) = duplex(1024);
        let (r, w) = tokio::io::split(svc);
        let out = serve(r, w, &AllowList::default()).await;
        assert!(
            matches!(out, Outcome::Refused { status: 408, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(internal(a.parse().unwrap()), "{a}");
        }
        for a in ["151.101.2.132", "192.0.2.1", "2a04:4e42::644"] {
            assert!(!internal(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused() {
        let allow = AllowList::parse("localhost:80\n", "test").unwrap();
        let (out, answer) = call(b"GET http://localhost/ HTTP/1.1\r\n\r\n", &allow).await;
        assert!(
            matches!(&out, Outcome::Refused { status: 403, reason } if reason.contains("internal address")),
            "{out:?}"
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
}
