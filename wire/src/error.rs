//! Error types.

use std::time::Duration;

use crate::frame::FrameError;
use crate::handshake::HandshakeError;
use crate::message::MessageError;

/// Something the peer did that the protocol forbids. The connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Bad frame header or per-kind payload size.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Bad handshake message.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Bad Open/Control/stream message payload.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The peer's first frame was not the expected handshake message.
    #[error("expected {expected} during the handshake, got {got}")]
    UnexpectedHandshake {
        /// What we waited for.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The server picked a version outside our range.
    #[error("peer chose protocol version {0}, which we did not offer")]
    VersionNotOffered(u16),
    /// Data or Message beyond the credit we granted.
    #[error("stream {stream}: {len} bytes sent with only {remaining} bytes of credit")]
    CreditExceeded {
        /// Stream id.
        stream: u32,
        /// Frame payload length.
        len: u32,
        /// Credit left.
        remaining: u32,
    },
    /// Window increment of 0 or one that takes credit above the maximum window.
    #[error("stream {stream}: invalid window update ({detail})")]
    BadWindow {
        /// Stream id.
        stream: u32,
        /// What is wrong.
        detail: String,
    },
    /// Open with an id that was already used (ids must increase).
    #[error("stream id {stream} reused (last peer-opened id was {last})")]
    StreamIdReuse {
        /// Stream id.
        stream: u32,
        /// Highest id the peer opened before.
        last: u32,
    },
    /// Open with an id of our parity.
    #[error("stream id {stream} has the wrong parity for a stream opened by the peer")]
    WrongParity {
        /// Stream id.
        stream: u32,
    },
    /// Frame for a stream that was never opened.
    #[error("frame for stream {stream}, which was never opened")]
    UnknownStream {
        /// Stream id.
        stream: u32,
    },
    /// Data, Message, Eof or Fin after the peer's Fin.
    #[error("stream {stream}: frame after the peer finished the stream")]
    AfterFin {
        /// Stream id.
        stream: u32,
    },
    /// Data after Eof on that channel, or a second Eof.
    #[error("stream {stream}: channel {channel} used after its EOF")]
    AfterEof {
        /// Stream id.
        stream: u32,
        /// Channel.
        channel: u8,
    },
    /// Too many controls or replies queued (the peer floods us).
    #[error("peer floods the connection: {0}")]
    Flood(&'static str),
    /// A stream protocol (e.g. exec) received something it does not allow.
    #[error("stream {stream}: {problem}")]
    StreamProtocol {
        /// Stream id.
        stream: u32,
        /// What is wrong.
        problem: String,
    },
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the protocol; the connection has been dropped.
    #[error("peer violated the wire protocol: {0}")]
    Violation(#[from] Violation),
    /// No protocol version in common; see the crate docs.
    #[error("protocol version mismatch: we speak {ours:?}, the peer speaks {theirs:?}; update the older side (bulkhead guest tools or domaind)")]
    VersionMismatch {
        /// Our (min, max).
        ours: (u16, u16),
        /// The peer's (min, max).
        theirs: (u16, u16),
    },
    /// The handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The connection is gone (peer closed it, it failed, or we closed it).
    #[error("connection closed: {reason}")]
    ConnectionClosed {
        /// Why.
        reason: String,
    },
    /// The stream was reset.
    #[error("stream {stream} reset by {by}: {reason}")]
    StreamReset {
        /// Stream id.
        stream: u32,
        /// "peer" or "us".
        by: &'static str,
        /// Reason text.
        reason: String,
    },
    /// We already finished sending on this stream.
    #[error("stream {0} is already finished for sending")]
    StreamFinished(u32),
    /// A request we were asked to send breaks a limit.
    #[error("invalid request: {0}")]
    InvalidRequest(MessageError),
    /// The message does not fit into one frame for this peer.
    #[error("message of {len} bytes exceeds the peer's frame limit of {max} bytes")]
    MessageTooLarge {
        /// Encoded size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// All stream ids of this connection are used up; reconnect.
    #[error("stream ids exhausted on this connection")]
    StreamIdsExhausted,
    /// The command could not be started in the domain.
    #[error("command could not be started: {reason}")]
    ExecFailed {
        /// Reason reported by the agent.
        reason: String,
    },
    /// The service call was refused by policy.
    #[error("call refused: {reason}")]
    CallRefused {
        /// Reason reported by domaind.
        reason: String,
    },
    /// The negotiated protocol version lacks what was asked for.
    #[error("the peer speaks protocol version {version}, this needs {needed}; update the guest tools and domaind together")]
    Unsupported {
        /// Negotiated version.
        version: u8,
        /// Version needed.
        needed: u16,
    },
}

impl WireError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> WireError {
        move |source| WireError::Io { context, source }
    }
}
