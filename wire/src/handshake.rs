//! Handshake messages. Their layout is fixed forever (independent of the negotiated
//! version) so that any two Bulkhead builds can at least tell each other what they speak.
//!
//! Hello (client -> server), 20 bytes:
//! `magic "BHWIRE\0\x01"` (8) · `min_version u16` · `max_version u16` ·
//! `max_frame_payload u32` · `initial_window u32`
//!
//! HelloAck (server -> client), 10 bytes:
//! `version u16` · `max_frame_payload u32` · `initial_window u32`
//!
//! HelloReject (server -> client), 4 bytes: `min_version u16` · `max_version u16`
//! (the server's range). The server closes the connection right after it.
//!
//! The exchange itself (`client_handshake`, `server_handshake`) runs on the raw stream
//! before the connection starts its tasks, in frames with version byte 0; a frame of another
//! kind than the one expected is a violation.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::Limits;
use crate::error::{Violation, WireError};
use crate::frame::{Frame, FrameDecoder, FrameKind, HANDSHAKE_FRAME_VERSION, MAX_FRAME_PAYLOAD};

/// Magic at the start of a Hello.
pub const MAGIC: [u8; 8] = *b"BHWIRE\0\x01";

/// Smallest frame payload a peer may announce (so Open/Control always fit).
pub const MIN_FRAME_PAYLOAD: u32 = 4096;

/// Smallest per-stream window a peer may announce.
pub const MIN_WINDOW: u32 = 4096;

/// Largest per-stream window (and credit) a peer may announce or grant.
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;

/// Client hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Largest frame payload the client accepts.
    pub max_frame_payload: u32,
    /// Credit the client grants the server on every new stream.
    pub initial_window: u32,
}

/// Server acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloAck {
    /// The negotiated version (within both ranges).
    pub version: u16,
    /// Largest frame payload the server accepts.
    pub max_frame_payload: u32,
    /// Credit the server grants the client on every new stream.
    pub initial_window: u32,
}

/// Server refusal: no common version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReject {
    /// Lowest version the server speaks.
    pub min_version: u16,
    /// Highest version the server speaks.
    pub max_version: u16,
}

/// A malformed handshake message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Wrong size for the message.
    #[error("{what} must be {expected} bytes, got {got}")]
    BadLength {
        /// Message name.
        what: &'static str,
        /// Expected size.
        expected: usize,
        /// Received size.
        got: usize,
    },
    /// Not a Bulkhead peer.
    #[error("bad magic in hello: not a Bulkhead wire peer")]
    BadMagic,
    /// A field outside its allowed range.
    #[error("{field} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// Received value.
        value: u64,
        /// Minimum.
        min: u64,
        /// Maximum.
        max: u64,
    },
}

fn check(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), HandshakeError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(HandshakeError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

fn check_limits(max_frame_payload: u32, initial_window: u32) -> Result<(), HandshakeError> {
    check(
        "max_frame_payload",
        max_frame_payload.into(),
        MIN_FRAME_PAYLOAD.into(),
        MAX_FRAME_PAYLOAD.into(),
    )?;
    check(
        "initial_window",
        initial_window.into(),
        MIN_WINDOW.into(),
        MAX_WINDOW.into(),
    )
}

fn exact<const N: usize>(what: &'static str, b: &[u8]) -> Result<[u8; N], HandshakeError> {
    b.try_into().map_err(|_| HandshakeError::BadLength {
        what,
        expected: N,
        got: b.len(),
    })
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&self.min_version.to_be_bytes());
        v.extend_from_slice(&self.max_version.to_be_bytes());
        v.extend_from_slice(&self.max_frame_payload.to_be_bytes());
        v.extend_from_slice(&self.initial_window.to_be_bytes());
        v
    }

    /// Decodes and validates a hello.
    pub fn decode(b: &[u8]) -> Result<Hello, HandshakeError> {
        let b: [u8; 20] = exact("hello", b)?;
        if b[..8] != MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        let h = Hello {
            min_version: u16_at(&b, 8),
            max_version: u16_at(&b, 10),
            max_frame_payload: u32_at(&b, 12),
            initial_window: u32_at(&b, 16),
        };
        check("min_version", h.min_version.into(), 1, h.max_version.into())?;
        check("max_version", h.max_version.into(), 1, 255)?;
        check_limits(h.max_frame_payload, h.initial_window)?;
        Ok(h)
    }
}

impl HelloAck {
    /// Encodes the ack.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(10);
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.max_frame_payload.to_be_bytes());
        v.extend_from_slice(&self.initial_window.to_be_bytes());
        v
    }

    /// Decodes and validates an ack (the version is checked against our range by the caller).
    pub fn decode(b: &[u8]) -> Result<HelloAck, HandshakeError> {
        let b: [u8; 10] = exact("hello-ack", b)?;
        let a = HelloAck {
            version: u16_at(&b, 0),
            max_frame_payload: u32_at(&b, 2),
            initial_window: u32_at(&b, 6),
        };
        check("version", a.version.into(), 1, 255)?;
        check_limits(a.max_frame_payload, a.initial_window)?;
        Ok(a)
    }
}

impl HelloReject {
    /// Encodes the reject.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4);
        v.extend_from_slice(&self.min_version.to_be_bytes());
        v.extend_from_slice(&self.max_version.to_be_bytes());
        v
    }

    /// Decodes a reject.
    pub fn decode(b: &[u8]) -> Result<HelloReject, HandshakeError> {
        let b: [u8; 4] = exact("hello-reject", b)?;
        Ok(HelloReject {
            min_version: u16_at(&b, 0),
            max_version: u16_at(&b, 2),
        })
    }
}

/// Picks the highest version both ranges contain.
pub fn negotiate(ours: (u16, u16), theirs: (u16, u16)) -> Option<u16> {
    let lo = ours.0.max(theirs.0);
    let hi = ours.1.min(theirs.1);
    (lo <= hi).then_some(hi)
}

async fn read_handshake_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
) -> Result<Frame, WireError> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(f) = dec.next_frame().map_err(Violation::from)? {
            return Ok(f);
        }
        let n = r
            .read(&mut buf)
            .await
            .map_err(WireError::io("reading the handshake"))?;
        if n == 0 {
            return Err(WireError::ConnectionClosed {
                reason: "peer closed the connection during the handshake".into(),
            });
        }
        dec.push(&buf[..n]);
    }
}

/// Writes one handshake frame (`kind` with `payload`, stream 0) and flushes it.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: Vec<u8>,
) -> Result<(), WireError> {
    let f = Frame::new(HANDSHAKE_FRAME_VERSION, kind, 0, payload.into());
    w.write_all(&f.encode())
        .await
        .map_err(WireError::io("writing the handshake"))?;
    w.flush()
        .await
        .map_err(WireError::io("writing the handshake"))
}

/// What the handshake agreed on.
pub(crate) struct Negotiated {
    pub(crate) version: u16,
    pub(crate) peer_max_payload: u32,
    pub(crate) peer_window: u32,
}

/// Client side of the exchange: sends the hello, reads the answer.
pub(crate) async fn client_handshake<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    dec: &mut FrameDecoder,
    limits: &Limits,
) -> Result<Negotiated, WireError> {
    let hello = Hello {
        min_version: limits.min_version,
        max_version: limits.max_version,
        max_frame_payload: limits.max_frame_payload,
        initial_window: limits.initial_window,
    };
    write_frame(io, FrameKind::Hello, hello.encode()).await?;
    let f = read_handshake_frame(io, dec).await?;
    match f.kind {
        FrameKind::HelloAck => {
            let ack = HelloAck::decode(&f.payload).map_err(Violation::from)?;
            if !(limits.min_version..=limits.max_version).contains(&ack.version) {
                return Err(Violation::VersionNotOffered(ack.version).into());
            }
            Ok(Negotiated {
                version: ack.version,
                peer_max_payload: ack.max_frame_payload,
                peer_window: ack.initial_window,
            })
        }
        FrameKind::HelloReject => {
            let rej = HelloReject::decode(&f.payload).map_err(Violation::from)?;
            Err(WireError::VersionMismatch {
                ours: (limits.min_version, limits.max_version),
                theirs: (rej.min_version, rej.max_version),
            })
        }
        other => Err(Violation::UnexpectedHandshake {
            expected: "hello-ack or hello-reject",
            got: format!("{other:?}"),
        }
        .into()),
    }
}

/// Server side of the exchange: reads the hello, answers with an ack or a reject.
pub(crate) async fn server_handshake<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    dec: &mut FrameDecoder,
    limits: &Limits,
) -> Result<Negotiated, WireError> {
    let f = read_handshake_frame(io, dec).await?;
    if f.kind != FrameKind::Hello {
        return Err(Violation::UnexpectedHandshake {
            expected: "hello",
            got: format!("{:?}", f.kind),
        }
        .into());
    }
    let hello = Hello::decode(&f.payload).map_err(Violation::from)?;
    let ours = (limits.min_version, limits.max_version);
    let theirs = (hello.min_version, hello.max_version);
    let Some(version) = negotiate(ours, theirs) else {
        let rej = HelloReject {
            min_version: ours.0,
            max_version: ours.1,
        };
        write_frame(io, FrameKind::HelloReject, rej.encode()).await?;
        let _ = io.shutdown().await;
        return Err(WireError::VersionMismatch { ours, theirs });
    };
    let ack = HelloAck {
        version,
        max_frame_payload: limits.max_frame_payload,
        initial_window: limits.initial_window,
    };
    write_frame(io, FrameKind::HelloAck, ack.encode()).await?;
    Ok(Negotiated {
        version,
        peer_max_payload: hello.max_frame_payload,
        peer_window: hello.initial_window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let h = Hello {
            min_version: 1,
            max_version: 3,
            max_frame_payload: 65536,
            initial_window: 1 << 20,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let a = HelloAck {
            version: 1,
            max_frame_payload: 4096,
            initial_window: 4096,
        };
        assert_eq!(HelloAck::decode(&a.encode()), Ok(a));
        let r = HelloReject {
            min_version: 2,
            max_version: 9,
        };
        assert_eq!(HelloReject::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn hello_rejects_garbage() {
        let mut h = Hello {
            min_version: 1,
            max_version: 1,
            max_frame_payload: 65536,
            initial_window: 65536,
        }
        .encode();
        assert!(matches!(
            Hello::decode(&h[..19]),
            Err(HandshakeError::BadLength { .. })
        ));
        h[0] = b'X';
        assert_eq!(Hello::decode(&h), Err(HandshakeError::BadMagic));
        let bad_window = Hello {
            min_version: 1,
            max_version: 1,
            max_frame_payload: 65536,
            initial_window: MAX_WINDOW + 1,
        };
        assert!(matches!(
            Hello::decode(&bad_window.encode()),
            Err(HandshakeError::OutOfRange { .. })
        ));
        let inverted = Hello {
            min_version: 3,
            max_version: 2,
            max_frame_payload: 65536,
            initial_window: 65536,
        };
        assert!(Hello::decode(&inverted.encode()).is_err());
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
        assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
        assert_eq!(negotiate((1, 1), (2, 2)), None);
        assert_eq!(negotiate((3, 4), (1, 2)), None);
    }
}
