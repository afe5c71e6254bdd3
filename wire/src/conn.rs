//! The async connection: establishing it (the handshake exchange itself is in
//! [`crate::handshake`]), the reader and writer tasks, and the dispatch of incoming frames,
//! including the credit accounting of stream frames. The stream handles and per-stream
//! state are in the `stream` submodule.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::{Violation, WireError};
use crate::frame::{Frame, FrameDecoder, FrameKind};
use crate::handshake::{self, MAX_WINDOW};
use crate::message::{Control, OpenRequest};

mod stream;

use stream::{bit, reset_payload, set_bit, Closed, StreamShared, StreamState};
pub use stream::{Stream, StreamEvent, StreamReceiver, StreamSender};

/// Oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Newest protocol version this build speaks.
/// Version 2 adds service calls ([`OpenRequest::Call`], [`OpenRequest::Service`]),
/// version 3 GUI streams ([`OpenRequest::Gui`]), version 4 USB devices
/// ([`OpenRequest::UsbImport`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// Most frames we queue in answer to peer frames (Pong, refusals) before calling it a flood.
const MAX_PENDING_REPLIES: usize = 1024;
/// Size of one socket read.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes the writer gathers into one write.
const WRITE_BATCH: usize = 256 * 1024;

/// Reset code: the stream was refused (too many streams, nobody accepting).
pub const RESET_REFUSED: u32 = 1;
/// Reset code: the local side dropped or cancelled the stream.
pub const RESET_CANCEL: u32 = 2;
/// Reset code: the stream protocol was violated.
pub const RESET_PROTOCOL: u32 = 3;

/// Limits and tunables of one connection. The defaults suit domaind <-> agent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame payload we accept (announced to the peer), 4 KiB..=256 KiB.
    pub max_frame_payload: u32,
    /// Credit we grant the peer on every stream, 4 KiB..=16 MiB. Bounds our buffer per stream.
    pub initial_window: u32,
    /// Most concurrent streams the peer may have open towards us; more are refused.
    /// Worst-case buffering for peer data is `max_streams * initial_window` (16 MiB by default).
    pub max_streams: usize,
    /// Most control messages queued for the application before the peer counts as flooding.
    pub max_pending_controls: usize,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Lowest protocol version we accept (normally [`MIN_PROTOCOL_VERSION`]).
    pub min_version: u16,
    /// Highest protocol version we offer (normally [`PROTOCOL_VERSION`]).
    pub max_version: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_payload: 64 * 1024,
            initial_window: 256 * 1024,
            max_streams: 64,
            max_pending_controls: 64,
            handshake_timeout: Duration::from_secs(10),
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        }
    }
}

impl Limits {
    fn clamped(mut self) -> Limits {
        self.max_frame_payload = self.max_frame_payload.clamp(
            handshake::MIN_FRAME_PAYLOAD,
            crate::frame::MAX_FRAME_PAYLOAD,
        );
        self.initial_window = self
            .initial_window
            .clamp(handshake::MIN_WINDOW, handshake::MAX_WINDOW);
        self.max_streams = self.max_streams.max(1);
        self.max_pending_controls = self.max_pending_controls.max(1);
        self.min_version = self.min_version.max(1);
        self.max_version = self.max_version.clamp(self.min_version, 255);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

impl Role {
    /// Parity of ids this side opens: client odd, server even.
    fn owns(self, id: u32) -> bool {
        match self {
            Role::Client => id & 1 == 1,
            Role::Server => id & 1 == 0,
        }
    }
}

/// Something the peer started: a stream or a control message.
#[derive(Debug)]
pub enum IncomingEvent {
    /// The peer opened a stream.
    Stream(IncomingStream),
    /// The peer sent a control message (never Ping/Pong, which the connection handles).
    Control(Control),
}

/// A stream the peer opened, with what it asked for.
#[derive(Debug)]
pub struct IncomingStream {
    /// What the stream is for.
    pub request: OpenRequest,
    /// The stream.
    pub stream: Stream,
}

/// Peer-initiated events. Dropping it refuses further peer streams (the connection stays up
/// while a [`Connection`] clone lives).
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<IncomingEvent>,
    _guard: Arc<CloseGuard>,
}

impl Incoming {
    /// Next peer-opened stream or control; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<IncomingEvent> {
        self.rx.recv().await
    }
}

/// One multiplexed connection. Cheap to clone; dropping the last clone (and the
/// [`Incoming`]) closes it gracefully after queued frames are written.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    _guard: Arc<CloseGuard>,
}

#[derive(Debug)]
struct CloseGuard(Arc<Inner>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Debug)]
enum WriterMsg {
    Frame(Bytes),
    Reply(Bytes),
    Close,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    version: u8,
    limits: Limits,
    /// Largest payload we may send (the peer's limit).
    send_max_payload: usize,
    /// Credit the peer grants us on each new stream.
    peer_window: u32,
    tx: mpsc::UnboundedSender<WriterMsg>,
    state: Mutex<ConnState>,
    cancel: CancellationToken,
    pending_replies: AtomicUsize,
}

#[derive(Debug)]
struct ConnState {
    streams: HashMap<u32, Arc<StreamShared>>,
    next_local: u32,
    last_peer: u32,
    incoming: Option<mpsc::Sender<IncomingEvent>>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    next_ping: u64,
    error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves consistent-enough state (plain fields);
    // keep going rather than poisoning the whole connection.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    /// Client side (domaind): sends the hello, waits for the server's answer, starts the
    /// connection tasks. Must be called inside a tokio runtime.
    pub async fn client<T>(io: T, limits: Limits) -> Result<(Connection, Incoming), WireError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::establish(io, limits, Role::Client).await
    }

    /// Server side (agent): waits for the hello, answers, starts the connection tasks.
    pub async fn server<T>(io: T, limits: Limits) -> Result<(Connection, Incoming), WireError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::establish(io, limits, Role::Server).await
    }

    async fn establish<T>(
        mut io: T,
        limits: Limits,
        role: Role,
    ) -> Result<(Connection, Incoming), WireError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let limits = limits.clamped();
        let mut dec = FrameDecoder::new(limits.max_frame_payload);
        let hs = async {
            match role {
                Role::Client => handshake::client_handshake(&mut io, &mut dec, &limits).await,
                Role::Server => handshake::server_handshake(&mut io, &mut dec, &limits).await,
            }
        };
        let neg = tokio::time::timeout(limits.handshake_timeout, hs)
            .await
            .map_err(|_| WireError::HandshakeTimeout(limits.handshake_timeout))??;
        // Versions are 1..=255 (checked by the handshake decoders).
        let version = u8::try_from(neg.version).unwrap_or(u8::MAX);
        dec.set_version(version);
        tracing::debug!(?role, version, "wire handshake complete");

        let (tx, rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(limits.max_streams + limits.max_pending_controls);
        let inner = Arc::new(Inner {
            role,
            version,
            send_max_payload: neg.peer_max_payload.min(crate::frame::MAX_FRAME_PAYLOAD) as usize,
            peer_window: neg.peer_window,
            tx,
            state: Mutex::new(ConnState {
                streams: HashMap::new(),
                next_local: match role {
                    Role::Client => 1,
                    Role::Server => 2,
                },
                last_peer: 0,
                incoming: Some(in_tx),
                pings: HashMap::new(),
                next_ping: 1,
                error: None,
            }),
            cancel: CancellationToken::new(),
            pending_replies: AtomicUsize::new(0),
            limits,
        });
        let (r, w) = tokio::io::split(io);
        tokio::spawn(reader_task(r, dec, inner.clone()));
        tokio::spawn(writer_task(w, rx, inner.clone()));
        let guard = Arc::new(CloseGuard(inner.clone()));
        Ok((
            Connection {
                inner,
                _guard: guard.clone(),
            },
            Incoming {
                rx: in_rx,
                _guard: guard,
            },
        ))
    }

    /// Opens a stream for `open`. Returns at once; if the peer refuses, the stream's
    /// first receive reports the reset.
    pub async fn open(&self, open: OpenRequest) -> Result<Stream, WireError> {
        open.validate().map_err(WireError::InvalidRequest)?;
        if u16::from(self.inner.version) < open.min_version() {
            return Err(WireError::Unsupported {
                version: self.inner.version,
                needed: open.min_version(),
            });
        }
        let payload = open.encode();
        if payload.len() > self.inner.send_max_payload {
            return Err(WireError::MessageTooLarge {
                len: payload.len(),
                max: self.inner.send_max_payload,
            });
        }
        let mut st = lock(&self.inner.state);
        if let Some(reason) = &st.error {
            return Err(WireError::ConnectionClosed {
                reason: reason.clone(),
            });
        }
        let id = st.next_local;
        st.next_local = id.checked_add(2).ok_or(WireError::StreamIdsExhausted)?;
        let shared = self.inner.new_stream(id);
        st.streams.insert(id, shared.clone());
        self.inner
            .send_frame(FrameKind::Open, id, Bytes::from(payload));
        drop(st);
        Ok(Stream::new(self.inner.clone(), shared))
    }

    /// Sends a control message on the connection.
    pub async fn send_control(&self, c: Control) -> Result<(), WireError> {
        self.inner.check_open()?;
        self.inner
            .send_frame(FrameKind::Control, 0, Bytes::from(c.encode()));
        Ok(())
    }

    /// Sends a Ping and waits for the Pong.
    pub async fn ping(&self) -> Result<(), WireError> {
        let rx = {
            let mut st = lock(&self.inner.state);
            if let Some(reason) = &st.error {
                return Err(WireError::ConnectionClosed {
                    reason: reason.clone(),
                });
            }
            let nonce = st.next_ping;
            st.next_ping += 1;
            let (tx, rx) = oneshot::channel();
            st.pings.insert(nonce, tx);
            self.inner.send_frame(
                FrameKind::Control,
                0,
                Bytes::from(Control::Ping { nonce }.encode()),
            );
            rx
        };
        rx.await.map_err(|_| self.inner.closed_error())
    }

    /// Resolves when the connection is gone (peer closed, violation, I/O error or local close).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<String> {
        lock(&self.inner.state).error.clone()
    }

    /// Closes gracefully: queued frames are written, then the socket is shut down.
    pub fn close(&self) {
        self.inner.close();
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u8 {
        self.inner.version
    }
}

impl Inner {
    fn new_stream(&self, id: u32) -> Arc<StreamShared> {
        Arc::new(StreamShared {
            id,
            st: Mutex::new(StreamState {
                events: VecDeque::new(),
                recv_remaining: self.limits.initial_window,
                consumed_unacked: 0,
                send_credit: self.peer_window,
                eof_in: [0; 4],
                remote_fin: false,
                local_fin: false,
                closed: None,
            }),
            recv_notify: Notify::new(),
            send_notify: Notify::new(),
        })
    }

    fn frame(&self, kind: FrameKind, stream: u32, payload: Bytes) -> Bytes {
        Frame::new(self.version, kind, stream, payload).encode()
    }

    fn send_frame(&self, kind: FrameKind, stream: u32, payload: Bytes) {
        // If the writer is gone the connection is failing; the caller learns it from state.
        let _ = self
            .tx
            .send(WriterMsg::Frame(self.frame(kind, stream, payload)));
    }

    /// Queues a frame that answers a peer frame; bounded so a peer cannot make us buffer
    /// unboundedly by never reading.
    fn reply(&self, kind: FrameKind, stream: u32, payload: Bytes) -> Result<(), Violation> {
        if self.pending_replies.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_REPLIES {
            return Err(Violation::Flood(
                "too many unanswered pings or refused streams",
            ));
        }
        let _ = self
            .tx
            .send(WriterMsg::Reply(self.frame(kind, stream, payload)));
        Ok(())
    }

    fn check_open(&self) -> Result<(), WireError> {
        match &lock(&self.state).error {
            Some(reason) => Err(WireError::ConnectionClosed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn closed_error(&self) -> WireError {
        WireError::ConnectionClosed {
            reason: lock(&self.state)
                .error
                .clone()
                .unwrap_or_else(|| "connection closed".into()),
        }
    }

    fn close(&self) {
        let _ = self.tx.send(WriterMsg::Close);
    }

    /// Marks the connection dead, wakes everything waiting on it.
    fn fail(&self, reason: String) {
        let streams = {
            let mut st = lock(&self.state);
            if st.error.is_some() {
                return;
            }
            st.error = Some(reason.clone());
            st.incoming = None;
            st.pings.clear();
            std::mem::take(&mut st.streams)
        };
        for s in streams.values() {
            let mut ss = lock(&s.st);
            if ss.closed.is_none() {
                ss.closed = Some(Closed::Connection(reason.clone()));
            }
            drop(ss);
            s.recv_notify.notify_waiters();
            s.send_notify.notify_waiters();
        }
        self.cancel.cancel();
    }

    fn remove_stream(&self, id: u32) {
        lock(&self.state).streams.remove(&id);
    }

    fn known_closed(&self, st: &ConnState, id: u32) -> bool {
        if self.role.owns(id) {
            id < st.next_local
        } else {
            id <= st.last_peer
        }
    }

    fn handle(self: &Arc<Self>, f: Frame) -> Result<(), Violation> {
        match f.kind {
            FrameKind::Control => self.on_control(&f.payload),
            FrameKind::Open => self.on_open(f.stream, &f.payload),
            FrameKind::Hello | FrameKind::HelloAck | FrameKind::HelloReject => {
                Err(Violation::UnexpectedHandshake {
                    expected: "no handshake frame after the handshake",
                    got: format!("{:?}", f.kind),
                })
            }
            _ => self.on_stream_frame(f),
        }
    }

    fn on_control(&self, payload: &[u8]) -> Result<(), Violation> {
        match Control::decode(payload)? {
            Control::Ping { nonce } => self.reply(
                FrameKind::Control,
                0,
                Bytes::from(Control::Pong { nonce }.encode()),
            ),
            Control::Pong { nonce } => {
                if let Some(tx) = lock(&self.state).pings.remove(&nonce) {
                    let _ = tx.send(());
                }
                Ok(())
            }
            other => {
                let st = lock(&self.state);
                if let Some(incoming) = &st.incoming {
                    match incoming.try_send(IncomingEvent::Control(other)) {
                        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            return Err(Violation::Flood("control messages not being consumed"))
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn on_open(self: &Arc<Self>, id: u32, payload: &[u8]) -> Result<(), Violation> {
        if self.role.owns(id) {
            return Err(Violation::WrongParity { stream: id });
        }
        let mut st = lock(&self.state);
        if id <= st.last_peer {
            return Err(Violation::StreamIdReuse {
                stream: id,
                last: st.last_peer,
            });
        }
        let request = OpenRequest::decode(payload)?;
        if u16::from(self.version) < request.min_version() {
            return Err(Violation::Message(crate::message::MessageError::Invalid {
                what: "open request",
                problem: format!(
                    "needs protocol version {}, the connection speaks {}",
                    request.min_version(),
                    self.version
                ),
            }));
        }
        st.last_peer = id;
        let peer_streams = st.streams.keys().filter(|k| !self.role.owns(**k)).count();
        if peer_streams >= self.limits.max_streams {
            drop(st);
            tracing::warn!(stream = id, "refusing stream: too many open streams");
            return self.reply(
                FrameKind::Reset,
                id,
                reset_payload(RESET_REFUSED, "too many open streams"),
            );
        }
        let Some(incoming) = st.incoming.clone() else {
            drop(st);
            return self.reply(
                FrameKind::Reset,
                id,
                reset_payload(RESET_REFUSED, "not accepting streams"),
            );
        };
        let shared = self.new_stream(id);
        st.streams.insert(id, shared.clone());
        drop(st);
        let stream = Stream::new(self.clone(), shared);
        if let Err(e) = incoming.try_send(IncomingEvent::Stream(IncomingStream { request, stream }))
        {
            tracing::warn!(
                stream = id,
                "refusing stream: incoming queue full or closed"
            );
            if let IncomingEvent::Stream(refused) = e.into_inner() {
                // Mark it closed so dropping it sends nothing; the refusal is a counted reply.
                lock(&refused.stream.tx.g.shared.st).closed =
                    Some(Closed::ResetByUs("refused".into()));
            }
            self.remove_stream(id);
            return self.reply(
                FrameKind::Reset,
                id,
                reset_payload(RESET_REFUSED, "not accepting streams"),
            );
        }
        Ok(())
    }

    fn on_stream_frame(&self, f: Frame) -> Result<(), Violation> {
        let id = f.stream;
        let shared = {
            let st = lock(&self.state);
            match st.streams.get(&id) {
                Some(s) => s.clone(),
                None if self.known_closed(&st, id) => return Ok(()), // late frame, ignore
                None => return Err(Violation::UnknownStream { stream: id }),
            }
        };
        let mut s = lock(&shared.st);
        let p = &f.payload;
        match f.kind {
            FrameKind::Data | FrameKind::Message => {
                if s.remote_fin {
                    return Err(Violation::AfterFin { stream: id });
                }
                let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
                if len > s.recv_remaining {
                    return Err(Violation::CreditExceeded {
                        stream: id,
                        len,
                        remaining: s.recv_remaining,
                    });
                }
                let ev = if f.kind == FrameKind::Data {
                    let channel = p[0];
                    if bit(&s.eof_in, channel) {
                        return Err(Violation::AfterEof {
                            stream: id,
                            channel,
                        });
                    }
                    StreamEvent::Data {
                        channel,
                        data: p.slice(1..),
                    }
                } else {
                    StreamEvent::Message(p.clone())
                };
                s.recv_remaining -= len;
                if s.closed.is_none() {
                    s.events.push_back(ev);
                }
                drop(s);
                shared.recv_notify.notify_waiters();
            }
            FrameKind::Eof => {
                if s.remote_fin {
                    return Err(Violation::AfterFin { stream: id });
                }
                let channel = p[0];
                if bit(&s.eof_in, channel) {
                    return Err(Violation::AfterEof {
                        stream: id,
                        channel,
                    });
                }
                set_bit(&mut s.eof_in, channel);
                s.events.push_back(StreamEvent::Eof { channel });
                drop(s);
                shared.recv_notify.notify_waiters();
            }
            FrameKind::Window => {
                let inc = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                let new = s.send_credit.checked_add(inc).filter(|n| *n <= MAX_WINDOW);
                match new {
                    Some(n) if inc > 0 => s.send_credit = n,
                    _ => {
                        return Err(Violation::BadWindow {
                            stream: id,
                            detail: format!(
                                "increment {inc} on credit {}, maximum {MAX_WINDOW}",
                                s.send_credit
                            ),
                        })
                    }
                }
                drop(s);
                shared.send_notify.notify_waiters();
            }
            FrameKind::Fin => {
                if s.remote_fin {
                    return Err(Violation::AfterFin { stream: id });
                }
                s.remote_fin = true;
                s.events.push_back(StreamEvent::Finished);
                let done = s.local_fin;
                drop(s);
                if done {
                    self.remove_stream(id);
                }
                shared.recv_notify.notify_waiters();
            }
            FrameKind::Reset => {
                let reason = String::from_utf8_lossy(&p[4..]).into_owned();
                s.closed = Some(Closed::ResetByPeer(reason));
                s.events.clear();
                drop(s);
                self.remove_stream(id);
                shared.recv_notify.notify_waiters();
                shared.send_notify.notify_waiters();
            }
            // Connection-level kinds are dispatched in `handle` and never reach here.
            FrameKind::Hello
            | FrameKind::HelloAck
            | FrameKind::HelloReject
            | FrameKind::Control
            | FrameKind::Open => {}
        }
        Ok(())
    }
}

async fn reader_task<R: AsyncRead + Unpin>(mut r: R, mut dec: FrameDecoder, inner: Arc<Inner>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let res: Result<(), WireError> = async {
        loop {
            while let Some(f) = dec.next_frame().map_err(Violation::from)? {
                inner.handle(f)?;
            }
            let n = tokio::select! {
                _ = inner.cancel.cancelled() => return Ok(()),
                n = r.read(&mut buf) => n.map_err(WireError::io("reading from the channel"))?,
            };
            if n == 0 {
                return Err(WireError::ConnectionClosed {
                    reason: "peer closed the connection".into(),
                });
            }
            dec.push(&buf[..n]);
        }
    }
    .await;
    let reason = match res {
        Ok(()) => "connection closed locally".to_string(),
        Err(e @ WireError::Violation(_)) => {
            tracing::warn!(error = %e, "dropping wire peer");
            e.to_string()
        }
        Err(e) => {
            tracing::debug!(error = %e, "wire connection ended");
            e.to_string()
        }
    };
    inner.fail(reason);
}

async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    inner: Arc<Inner>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let first = tokio::select! {
            _ = inner.cancel.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some(first) = first else { break };
        let mut closing = false;
        let mut replies = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                WriterMsg::Frame(b) => buf.extend_from_slice(&b),
                WriterMsg::Reply(b) => {
                    buf.extend_from_slice(&b);
                    replies += 1;
                }
                WriterMsg::Close => closing = true,
            }
            if buf.len() < WRITE_BATCH && !closing {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            let res = tokio::select! {
                _ = inner.cancel.cancelled() => break,
                r = async { w.write_all(&buf).await?; w.flush().await } => r,
            };
            if let Err(e) = res {
                inner.fail(format!("writing to the channel: {e}"));
                break;
            }
            buf.clear();
        }
        inner.pending_replies.fetch_sub(replies, Ordering::SeqCst);
        if closing {
            let _ = w.shutdown().await;
            inner.fail("connection closed locally".into());
            break;
        }
    }
}
