//! Frame layout and the pure, synchronous frame decoder.
//!
//! Every frame is a fixed 12-byte header followed by `length` payload bytes:
//!
//! | offset | size | field                                               |
//! |--------|------|-----------------------------------------------------|
//! | 0      | 1    | protocol version (0 only for handshake frames)      |
//! | 1      | 1    | kind ([`FrameKind`])                                |
//! | 2      | 2    | flags, reserved, must be 0                          |
//! | 4      | 4    | stream id, big endian (0 = the connection itself)   |
//! | 8      | 4    | payload length, big endian, `<= max_payload`        |
//!
//! The decoder checks the header before it waits for (or buffers) the payload, so a
//! peer can never make it hold more than one header plus `max_payload` bytes of a frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 12;

/// Hard upper bound for any frame payload; [`crate::Limits::max_frame_payload`] may only lower it.
pub const MAX_FRAME_PAYLOAD: u32 = 256 * 1024;

/// Version byte carried by handshake frames (before a version has been negotiated).
pub const HANDSHAKE_FRAME_VERSION: u8 = 0;

/// Largest [`FrameKind::Message`] payload. Kept at half the smallest window so a message
/// always fits into the credit a receiver keeps granting; bulk data goes on channels.
pub const MAX_MESSAGE_PAYLOAD: usize = 2048;

/// Longest reason text in a [`FrameKind::Reset`] payload.
pub const MAX_RESET_REASON: usize = 512;

/// Kind of a frame. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client hello (stream 0, handshake).
    Hello = 1,
    /// Server accepts and names the negotiated version (stream 0, handshake).
    HelloAck = 2,
    /// Server refuses the client's versions (stream 0, handshake); the server then closes.
    HelloReject = 3,
    /// Connection-level control message (stream 0), see [`crate::Control`].
    Control = 4,
    /// Opens a new stream; payload is an [`crate::OpenRequest`].
    Open = 16,
    /// Stream data: payload = channel byte + at least one data byte. Consumes credit.
    Data = 17,
    /// End of one channel of a stream: payload = channel byte.
    Eof = 18,
    /// A typed message on a stream (for exec: the exit status). Consumes credit.
    Message = 19,
    /// Grants the peer more credit on a stream: payload = u32 increment (> 0).
    Window = 20,
    /// The sender will send nothing more on this stream.
    Fin = 21,
    /// Aborts the stream in both directions: payload = u32 code + UTF-8 reason.
    Reset = 22,
}

impl FrameKind {
    /// Parses the kind byte.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::HelloAck,
            3 => FrameKind::HelloReject,
            4 => FrameKind::Control,
            16 => FrameKind::Open,
            17 => FrameKind::Data,
            18 => FrameKind::Eof,
            19 => FrameKind::Message,
            20 => FrameKind::Window,
            21 => FrameKind::Fin,
            22 => FrameKind::Reset,
            _ => return None,
        })
    }

    /// Whether this kind belongs to the handshake.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            FrameKind::Hello | FrameKind::HelloAck | FrameKind::HelloReject
        )
    }

    /// Whether this kind travels on stream 0 (the connection itself).
    pub fn is_connection_level(self) -> bool {
        self.is_handshake() || self == FrameKind::Control
    }

    /// Whether frames of this kind consume flow-control credit.
    pub fn consumes_credit(self) -> bool {
        matches!(self, FrameKind::Data | FrameKind::Message)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Version byte from the header.
    pub version: u8,
    /// Kind of the frame.
    pub kind: FrameKind,
    /// Stream id (0 for connection-level frames).
    pub stream: u32,
    /// Payload bytes (already checked against the per-kind size rules).
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame.
    pub fn new(version: u8, kind: FrameKind, stream: u32, payload: Bytes) -> Frame {
        Frame {
            version,
            kind,
            stream,
            payload,
        }
    }

    /// Serialises the frame (header + payload).
    ///
    /// The caller is responsible for keeping the payload within the peer's limit; the
    /// connection layer always does.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        out.put_u8(self.version);
        out.put_u8(self.kind as u8);
        out.put_u16(0);
        out.put_u32(self.stream);
        // Payloads are produced by this crate and bounded by MAX_FRAME_PAYLOAD.
        out.put_u32(u32::try_from(self.payload.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(&self.payload);
        out.freeze()
    }
}

/// A frame the peer should never have sent. Any of these drops the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Header version differs from the one in force.
    #[error("frame has protocol version {got}, expected {expected}")]
    BadVersion {
        /// Version byte received.
        got: u8,
        /// Version in force on this connection.
        expected: u8,
    },
    /// Unknown kind byte.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// Reserved flag bits set.
    #[error("reserved frame flags set: {0:#06x}")]
    ReservedFlags(u16),
    /// Announced payload larger than allowed.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Announced length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// Handshake frame after the handshake, or a stream frame during it.
    #[error("frame kind {kind:?} is not allowed {phase}")]
    UnexpectedKind {
        /// Kind received.
        kind: FrameKind,
        /// "during the handshake" or "after the handshake".
        phase: &'static str,
    },
    /// Connection-level frame on a stream, or stream frame on stream 0.
    #[error("frame kind {kind:?} not allowed on stream {stream}")]
    BadStreamId {
        /// Kind received.
        kind: FrameKind,
        /// Stream id received.
        stream: u32,
    },
    /// Payload size does not fit the kind (e.g. a Window frame that is not 4 bytes).
    #[error("frame kind {kind:?} has a malformed payload of {len} bytes")]
    BadPayloadSize {
        /// Kind received.
        kind: FrameKind,
        /// Payload length.
        len: usize,
    },
    /// The input ended in the middle of a frame (only from [`decode_one`]).
    #[error("input truncated: {needed} more bytes needed")]
    Truncated {
        /// Missing bytes.
        needed: usize,
    },
}

/// Checks a header and returns (kind, stream, payload length).
fn check_header(
    h: &[u8; HEADER_LEN],
    expected_version: u8,
    max_payload: u32,
) -> Result<(FrameKind, u32, u32), FrameError> {
    let version = h[0];
    let kind = FrameKind::from_u8(h[1]).ok_or(FrameError::UnknownKind(h[1]))?;
    let flags = u16::from_be_bytes([h[2], h[3]]);
    let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    if kind.is_handshake() {
        if expected_version != HANDSHAKE_FRAME_VERSION {
            return Err(FrameError::UnexpectedKind {
                kind,
                phase: "after the handshake",
            });
        }
    } else if expected_version == HANDSHAKE_FRAME_VERSION {
        return Err(FrameError::UnexpectedKind {
            kind,
            phase: "during the handshake",
        });
    }
    if version != expected_version {
        return Err(FrameError::BadVersion {
            got: version,
            expected: expected_version,
        });
    }
    if flags != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    let max = max_payload.min(MAX_FRAME_PAYLOAD);
    if len > max {
        return Err(FrameError::PayloadTooLarge { len, max });
    }
    if kind.is_connection_level() != (stream == 0) {
        return Err(FrameError::BadStreamId { kind, stream });
    }
    let len_ok = match kind {
        FrameKind::Data => len >= 2,
        FrameKind::Eof => len == 1,
        FrameKind::Window => len == 4,
        FrameKind::Fin => len == 0,
        FrameKind::Reset => (4..=4 + MAX_RESET_REASON as u32).contains(&len),
        FrameKind::Message => (1..=MAX_MESSAGE_PAYLOAD as u32).contains(&len),
        FrameKind::Control | FrameKind::Open => len >= 1,
        FrameKind::Hello | FrameKind::HelloAck | FrameKind::HelloReject => true,
    };
    if !len_ok {
        return Err(FrameError::BadPayloadSize {
            kind,
            len: len as usize,
        });
    }
    Ok((kind, stream, len))
}

/// Decodes exactly one frame from the start of `input`.
///
/// Returns the frame and the number of bytes it used. Incomplete input gives
/// [`FrameError::Truncated`]. Never allocates more than the announced (and checked) length.
pub fn decode_one(
    input: &[u8],
    expected_version: u8,
    max_payload: u32,
) -> Result<(Frame, usize), FrameError> {
    let header: &[u8; HEADER_LEN] = input
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated {
            needed: HEADER_LEN - input.len().min(HEADER_LEN),
        })?;
    let (kind, stream, len) = check_header(header, expected_version, max_payload)?;
    let total = HEADER_LEN + len as usize;
    let body = input
        .get(HEADER_LEN..total)
        .ok_or_else(|| FrameError::Truncated {
            needed: total.saturating_sub(input.len()),
        })?;
    Ok((
        Frame::new(header[0], kind, stream, Bytes::copy_from_slice(body)),
        total,
    ))
}

/// Incremental frame decoder: push bytes as they arrive, pull complete frames.
///
/// Holds at most what was pushed and not yet consumed; the async reader pushes one read
/// (bounded) at a time and drains all complete frames before reading again.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    expected_version: u8,
    max_payload: u32,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder for the handshake phase (expects version 0 handshake frames).
    pub fn new(max_payload: u32) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            expected_version: HANDSHAKE_FRAME_VERSION,
            max_payload: max_payload.min(MAX_FRAME_PAYLOAD),
            failed: None,
        }
    }

    /// Switches to the negotiated version: from now on only frames with this version byte
    /// and no handshake frames are accepted.
    pub fn set_version(&mut self, version: u8) {
        self.expected_version = version;
    }

    /// Version byte currently expected.
    pub fn version(&self) -> u8 {
        self.expected_version
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Number of buffered, not yet decoded bytes.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Next complete frame, `Ok(None)` if more input is needed.
    ///
    /// After an error the decoder stays failed and returns the same error again.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        let (kind, stream, len) = match check_header(&h, self.expected_version, self.max_payload) {
            Ok(v) => v,
            Err(e) => {
                self.failed = Some(e.clone());
                return Err(e);
            }
        };
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len as usize).freeze();
        Ok(Some(Frame::new(h[0], kind, stream, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(version: u8, kind: u8, flags: u16, stream: u32, len: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![version, kind];
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trip_and_byte_by_byte() {
        let f = Frame::new(1, FrameKind::Data, 7, Bytes::from_static(b"\x01hello"));
        let enc = f.encode();
        assert_eq!(enc.len(), HEADER_LEN + 6);
        let mut d = FrameDecoder::new(1024);
        d.set_version(1);
        for (i, b) in enc.iter().enumerate() {
            d.push(&[*b]);
            let got = d.next_frame().unwrap();
            if i + 1 < enc.len() {
                assert!(got.is_none(), "frame early at byte {i}");
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert_eq!(d.buffered(), 0);
        let (g, used) = decode_one(&enc, 1, 1024).unwrap();
        assert_eq!((g, used), (f, enc.len()));
    }

    #[test]
    fn complete_frame_with_trailing_bytes() {
        // Found by the frame_decoder fuzz target: the "needed" count was computed eagerly.
        let mut enc = Frame::new(1, FrameKind::Fin, 3, Bytes::new())
            .encode()
            .to_vec();
        enc.extend_from_slice(b"next");
        let (f, used) = decode_one(&enc, 1, 1024).unwrap();
        assert_eq!((f.kind, used), (FrameKind::Fin, HEADER_LEN));
    }

    #[test]
    fn truncated_input() {
        let enc = Frame::new(1, FrameKind::Fin, 3, Bytes::new()).encode();
        assert_eq!(
            decode_one(&enc[..5], 1, 1024),
            Err(FrameError::Truncated { needed: 7 })
        );
        let enc = Frame::new(1, FrameKind::Data, 3, Bytes::from_static(b"\x01abc")).encode();
        assert_eq!(
            decode_one(&enc[..enc.len() - 1], 1, 1024),
            Err(FrameError::Truncated { needed: 1 })
        );
    }

    #[test]
    fn oversize_is_rejected_before_buffering() {
        let mut d = FrameDecoder::new(1024);
        d.set_version(1);
        d.push(&raw(1, 17, 0, 1, 1025, b""));
        assert_eq!(
            d.next_frame(),
            Err(FrameError::PayloadTooLarge {
                len: 1025,
                max: 1024
            })
        );
        // stays failed
        assert!(d.next_frame().is_err());
        // a limit above the hard cap is clamped
        assert_eq!(
            decode_one(&raw(1, 17, 0, 1, u32::MAX, b""), 1, u32::MAX),
            Err(FrameError::PayloadTooLarge {
                len: u32::MAX,
                max: MAX_FRAME_PAYLOAD
            })
        );
    }

    #[test]
    fn bad_version_unknown_kind_flags() {
        assert_eq!(
            decode_one(&raw(2, 21, 0, 1, 0, b""), 1, 64),
            Err(FrameError::BadVersion {
                got: 2,
                expected: 1
            })
        );
        assert_eq!(
            decode_one(&raw(1, 99, 0, 1, 0, b""), 1, 64),
            Err(FrameError::UnknownKind(99))
        );
        assert_eq!(
            decode_one(&raw(1, 21, 1, 1, 0, b""), 1, 64),
            Err(FrameError::ReservedFlags(1))
        );
    }

    #[test]
    fn phase_and_stream_rules() {
        // hello after handshake
        assert!(matches!(
            decode_one(&raw(1, 1, 0, 0, 0, b""), 1, 64),
            Err(FrameError::UnexpectedKind { .. })
        ));
        // data during handshake
        assert!(matches!(
            decode_one(&raw(0, 17, 0, 1, 2, b"\x00a"), 0, 64),
            Err(FrameError::UnexpectedKind { .. })
        ));
        // control on a stream, data on stream 0
        assert!(matches!(
            decode_one(&raw(1, 4, 0, 3, 1, b"\x00"), 1, 64),
            Err(FrameError::BadStreamId { .. })
        ));
        assert!(matches!(
            decode_one(&raw(1, 17, 0, 0, 2, b"\x00a"), 1, 64),
            Err(FrameError::BadStreamId { .. })
        ));
    }

    #[test]
    fn per_kind_sizes() {
        for (kind, body) in [
            (20u8, &b"\0\0\0"[..]),
            (21, b"x"),
            (18, b""),
            (17, b"\x01"),
            (22, b"\0\0"),
            (19, b""),
            (19, &[0u8; MAX_MESSAGE_PAYLOAD + 1][..]),
        ] {
            let len = body.len() as u32;
            assert!(
                matches!(
                    decode_one(&raw(1, kind, 0, 1, len, body), 1, 65536),
                    Err(FrameError::BadPayloadSize { .. })
                ),
                "kind {kind} len {len}"
            );
        }
    }
}
