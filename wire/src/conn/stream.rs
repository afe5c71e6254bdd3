//! Streams: the handles the application holds ([`Stream`], [`StreamSender`],
//! [`StreamReceiver`]), the state one stream shares with the connection, sending with
//! credit (waiting for the peer's window) and receiving with credit returned as the
//! application consumes, and the reset sent when the last handle goes away unfinished.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{lock, Inner, RESET_CANCEL};
use crate::error::{Violation, WireError};
use crate::frame::{FrameKind, MAX_RESET_REASON};

/// An event on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes on a channel.
    Data {
        /// Channel number (for exec: 0 stdin, 1 stdout, 2 stderr).
        channel: u8,
        /// The bytes (never empty).
        data: Bytes,
    },
    /// A channel reached its end.
    Eof {
        /// Channel number.
        channel: u8,
    },
    /// A typed message, decoded by the stream protocol (e.g. [`crate::ExecMessage`]).
    Message(Bytes),
    /// The peer will send nothing more on this stream.
    Finished,
}

#[derive(Debug, Clone)]
pub(super) enum Closed {
    ResetByPeer(String),
    ResetByUs(String),
    Connection(String),
}

#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) events: VecDeque<StreamEvent>,
    pub(super) recv_remaining: u32,
    pub(super) consumed_unacked: u32,
    pub(super) send_credit: u32,
    pub(super) eof_in: [u64; 4],
    pub(super) remote_fin: bool,
    pub(super) local_fin: bool,
    pub(super) closed: Option<Closed>,
}

#[derive(Debug)]
pub(super) struct StreamShared {
    pub(super) id: u32,
    pub(super) st: Mutex<StreamState>,
    pub(super) recv_notify: Notify,
    pub(super) send_notify: Notify,
}

pub(super) fn bit(set: &[u64; 4], ch: u8) -> bool {
    set[usize::from(ch / 64)] & (1u64 << (ch % 64)) != 0
}

pub(super) fn set_bit(set: &mut [u64; 4], ch: u8) {
    set[usize::from(ch / 64)] |= 1u64 << (ch % 64);
}

pub(super) fn reset_payload(code: u32, reason: &str) -> Bytes {
    let mut r = reason;
    while r.len() > MAX_RESET_REASON {
        // cut on a char boundary
        let mut end = MAX_RESET_REASON;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r = &r[..end];
    }
    let mut v = Vec::with_capacity(4 + r.len());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(r.as_bytes());
    Bytes::from(v)
}

impl Closed {
    fn to_error(&self, stream: u32) -> WireError {
        match self {
            Closed::ResetByPeer(r) => WireError::StreamReset {
                stream,
                by: "peer",
                reason: r.clone(),
            },
            Closed::ResetByUs(r) => WireError::StreamReset {
                stream,
                by: "us",
                reason: r.clone(),
            },
            Closed::Connection(r) => WireError::ConnectionClosed { reason: r.clone() },
        }
    }
}

/// The shared part of a stream; resets the stream when the last handle goes away
/// before it finished cleanly.
#[derive(Debug)]
pub(super) struct StreamGuard {
    inner: Arc<Inner>,
    pub(super) shared: Arc<StreamShared>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.shared.st);
        let clean = s.local_fin && s.remote_fin;
        if !clean && s.closed.is_none() {
            s.closed = Some(Closed::ResetByUs("dropped".into()));
            self.inner.send_frame(
                FrameKind::Reset,
                self.shared.id,
                reset_payload(RESET_CANCEL, "stream dropped"),
            );
        }
        drop(s);
        self.inner.remove_stream(self.shared.id);
    }
}

/// A multiplexed stream. Use it directly or [`Stream::split`] it into a sender (cloneable)
/// and a receiver. Dropping every handle before both sides finished resets the stream.
#[derive(Debug)]
pub struct Stream {
    pub(super) tx: StreamSender,
    rx: StreamReceiver,
}

/// Sending half of a stream.
#[derive(Debug, Clone)]
pub struct StreamSender {
    pub(super) g: Arc<StreamGuard>,
}

/// Receiving half of a stream.
#[derive(Debug)]
pub struct StreamReceiver {
    g: Arc<StreamGuard>,
}

impl Stream {
    pub(super) fn new(inner: Arc<Inner>, shared: Arc<StreamShared>) -> Stream {
        let g = Arc::new(StreamGuard { inner, shared });
        Stream {
            tx: StreamSender { g: g.clone() },
            rx: StreamReceiver { g },
        }
    }

    /// Stream id.
    pub fn id(&self) -> u32 {
        self.tx.g.shared.id
    }

    /// Splits into a sender and a receiver usable from different tasks.
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.tx, self.rx)
    }

    /// See [`StreamReceiver::recv`].
    pub async fn recv(&mut self) -> Result<StreamEvent, WireError> {
        self.rx.recv().await
    }

    /// See [`StreamSender::send_data`].
    pub async fn send_data(&self, channel: u8, data: &[u8]) -> Result<(), WireError> {
        self.tx.send_data(channel, data).await
    }

    /// See [`StreamSender::send_eof`].
    pub fn send_eof(&self, channel: u8) -> Result<(), WireError> {
        self.tx.send_eof(channel)
    }

    /// See [`StreamSender::send_message`].
    pub async fn send_message(&self, msg: &[u8]) -> Result<(), WireError> {
        self.tx.send_message(msg).await
    }

    /// See [`StreamSender::finish`].
    pub fn finish(&self) -> Result<(), WireError> {
        self.tx.finish()
    }

    /// See [`StreamSender::reset`].
    pub fn reset(&self, reason: &str) {
        self.tx.reset(reason)
    }
}

impl StreamSender {
    /// Stream id.
    pub fn id(&self) -> u32 {
        self.g.shared.id
    }

    /// Waits until at least `need` bytes of credit are available and takes up to `want`.
    async fn take_credit(&self, need: u32, want: u32) -> Result<u32, WireError> {
        let shared = &self.g.shared;
        loop {
            let mut notified = pin!(shared.send_notify.notified());
            notified.as_mut().enable();
            {
                let mut s = lock(&shared.st);
                if let Some(c) = &s.closed {
                    return Err(c.to_error(shared.id));
                }
                if s.local_fin {
                    return Err(WireError::StreamFinished(shared.id));
                }
                if s.send_credit >= need {
                    let n = s.send_credit.min(want);
                    s.send_credit -= n;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    /// Sends bytes on a channel, split into frames, waiting for credit as needed.
    pub async fn send_data(&self, channel: u8, data: &[u8]) -> Result<(), WireError> {
        let max_chunk = self.g.inner.send_max_payload.saturating_sub(1).max(1);
        let mut rest = data;
        while !rest.is_empty() {
            let want = u32::try_from(rest.len().min(max_chunk) + 1).unwrap_or(u32::MAX);
            let n = self.take_credit(2, want).await? as usize - 1;
            let mut p = Vec::with_capacity(n + 1);
            p.push(channel);
            p.extend_from_slice(&rest[..n]);
            self.g
                .inner
                .send_frame(FrameKind::Data, self.id(), Bytes::from(p));
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Sends a typed message (consumes credit like data).
    pub async fn send_message(&self, msg: &[u8]) -> Result<(), WireError> {
        let max = crate::frame::MAX_MESSAGE_PAYLOAD.min(self.g.inner.send_max_payload);
        if msg.is_empty() || msg.len() > max {
            return Err(WireError::MessageTooLarge {
                len: msg.len(),
                max,
            });
        }
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        // The receiver keeps granting credit until less than half its window (>= MIN_WINDOW/2
        // = MAX_MESSAGE_PAYLOAD) is outstanding, so this wait always ends.
        self.take_credit(len, len).await?;
        self.g
            .inner
            .send_frame(FrameKind::Message, self.id(), Bytes::copy_from_slice(msg));
        Ok(())
    }

    fn send_simple(&self, kind: FrameKind, payload: Bytes) -> Result<(), WireError> {
        let shared = &self.g.shared;
        let mut s = lock(&shared.st);
        if let Some(c) = &s.closed {
            return Err(c.to_error(shared.id));
        }
        if s.local_fin {
            return Err(WireError::StreamFinished(shared.id));
        }
        if kind == FrameKind::Fin {
            s.local_fin = true;
        }
        self.g.inner.send_frame(kind, shared.id, payload);
        let done = s.local_fin && s.remote_fin;
        drop(s);
        if done {
            self.g.inner.remove_stream(shared.id);
        }
        Ok(())
    }

    /// Marks the end of one channel.
    pub fn send_eof(&self, channel: u8) -> Result<(), WireError> {
        self.send_simple(FrameKind::Eof, Bytes::copy_from_slice(&[channel]))
    }

    /// Says we will send nothing more on this stream.
    pub fn finish(&self) -> Result<(), WireError> {
        self.send_simple(FrameKind::Fin, Bytes::new())
    }

    /// Aborts the stream in both directions.
    pub fn reset(&self, reason: &str) {
        let shared = &self.g.shared;
        let mut s = lock(&shared.st);
        if s.closed.is_none() {
            s.closed = Some(Closed::ResetByUs(reason.to_string()));
            s.events.clear();
            self.g.inner.send_frame(
                FrameKind::Reset,
                shared.id,
                reset_payload(RESET_CANCEL, reason),
            );
        }
        drop(s);
        self.g.inner.remove_stream(shared.id);
        shared.recv_notify.notify_waiters();
        shared.send_notify.notify_waiters();
    }
}

impl StreamReceiver {
    /// Stream id.
    pub fn id(&self) -> u32 {
        self.g.shared.id
    }

    /// Next event. Buffered events are delivered even after the connection went away;
    /// after [`StreamEvent::Finished`] further calls wait for nothing and report the end.
    pub async fn recv(&mut self) -> Result<StreamEvent, WireError> {
        let shared = &self.g.shared;
        loop {
            let mut notified = pin!(shared.recv_notify.notified());
            notified.as_mut().enable();
            {
                let mut s = lock(&shared.st);
                if let Some(ev) = s.events.pop_front() {
                    let used = match &ev {
                        StreamEvent::Data { data, .. } => data.len() + 1,
                        StreamEvent::Message(m) => m.len(),
                        _ => 0,
                    };
                    s.consumed_unacked = s
                        .consumed_unacked
                        .saturating_add(u32::try_from(used).unwrap_or(u32::MAX));
                    let threshold = (self.g.inner.limits.initial_window / 2).max(1);
                    if s.consumed_unacked >= threshold && !s.remote_fin && s.closed.is_none() {
                        let inc = s.consumed_unacked;
                        s.consumed_unacked = 0;
                        s.recv_remaining = s.recv_remaining.saturating_add(inc);
                        self.g.inner.send_frame(
                            FrameKind::Window,
                            shared.id,
                            Bytes::copy_from_slice(&inc.to_be_bytes()),
                        );
                    }
                    return Ok(ev);
                }
                if let Some(c) = &s.closed {
                    return Err(c.to_error(shared.id));
                }
                if s.remote_fin {
                    return Err(WireError::ConnectionClosed {
                        reason: format!("stream {} already finished by the peer", shared.id),
                    });
                }
            }
            notified.await;
        }
    }

    /// Reports a stream-protocol violation by the peer: logs it, drops the whole connection
    /// and returns the error to hand back to the caller.
    pub fn violation(&self, problem: impl Into<String>) -> WireError {
        let v = Violation::StreamProtocol {
            stream: self.id(),
            problem: problem.into(),
        };
        tracing::warn!(error = %v, "dropping wire peer");
        self.g
            .inner
            .fail(format!("peer violated the wire protocol: {v}"));
        WireError::Violation(v)
    }
}
