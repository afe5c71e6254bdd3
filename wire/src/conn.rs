//! The async connection: handshake, reader and writer tasks, streams with credit flow control.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::{Violation, WireError};
use crate::frame::{Frame, FrameDecoder, FrameKind, HANDSHAKE_FRAME_VERSION, MAX_RESET_REASON};
use crate::handshake::{self, Hello, HelloAck, HelloReject, MAX_WINDOW};
use crate::message::{Control, OpenRequest};

/// Oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Newest protocol version this build speaks.
/// Version 2 adds service calls ([`OpenRequest::Call`], [`OpenRequest::Service`]),
/// version 3 GUI streams ([`OpenRequest::Gui`]).
pub const PROTOCOL_VERSION: u16 = 3;

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
enum Closed {
    ResetByPeer(String),
    ResetByUs(String),
    Connection(String),
}

#[derive(Debug)]
struct StreamState {
    events: VecDeque<StreamEvent>,
    recv_remaining: u32,
    consumed_unacked: u32,
    send_credit: u32,
    eof_in: [u64; 4],
    remote_fin: bool,
    local_fin: bool,
    closed: Option<Closed>,
}

#[derive(Debug)]
struct StreamShared {
    id: u32,
    st: Mutex<StreamState>,
    recv_notify: Notify,
    send_notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks leaves consistent-enough state (plain fields);
    // keep going rather than poisoning the whole connection.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bit(set: &[u64; 4], ch: u8) -> bool {
    set[usize::from(ch / 64)] & (1u64 << (ch % 64)) != 0
}

fn set_bit(set: &mut [u64; 4], ch: u8) {
    set[usize::from(ch / 64)] |= 1u64 << (ch % 64);
}

fn reset_payload(code: u32, reason: &str) -> Bytes {
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

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: Frame) -> Result<(), WireError> {
    w.write_all(&f.encode())
        .await
        .map_err(WireError::io("writing the handshake"))?;
    w.flush()
        .await
        .map_err(WireError::io("writing the handshake"))
}

struct Negotiated {
    version: u16,
    peer_max_payload: u32,
    peer_window: u32,
}

async fn client_handshake<T: AsyncRead + AsyncWrite + Unpin>(
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
    write_frame(
        io,
        Frame::new(
            HANDSHAKE_FRAME_VERSION,
            FrameKind::Hello,
            0,
            hello.encode().into(),
        ),
    )
    .await?;
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

async fn server_handshake<T: AsyncRead + AsyncWrite + Unpin>(
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
    let Some(version) = handshake::negotiate(ours, theirs) else {
        let rej = HelloReject {
            min_version: ours.0,
            max_version: ours.1,
        };
        write_frame(
            io,
            Frame::new(
                HANDSHAKE_FRAME_VERSION,
                FrameKind::HelloReject,
                0,
                rej.encode().into(),
            ),
        )
        .await?;
        let _ = io.shutdown().await;
        return Err(WireError::VersionMismatch { ours, theirs });
    };
    let ack = HelloAck {
        version,
        max_frame_payload: limits.max_frame_payload,
        initial_window: limits.initial_window,
    };
    write_frame(
        io,
        Frame::new(
            HANDSHAKE_FRAME_VERSION,
            FrameKind::HelloAck,
            0,
            ack.encode().into(),
        ),
    )
    .await?;
    Ok(Negotiated {
        version,
        peer_max_payload: hello.max_frame_payload,
        peer_window: hello.initial_window,
    })
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
                Role::Client => client_handshake(&mut io, &mut dec, &limits).await,
                Role::Server => server_handshake(&mut io, &mut dec, &limits).await,
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

/// The shared part of a stream; resets the stream when the last handle goes away
/// before it finished cleanly.
#[derive(Debug)]
struct StreamGuard {
    inner: Arc<Inner>,
    shared: Arc<StreamShared>,
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
    tx: StreamSender,
    rx: StreamReceiver,
}

/// Sending half of a stream.
#[derive(Debug, Clone)]
pub struct StreamSender {
    g: Arc<StreamGuard>,
}

/// Receiving half of a stream.
#[derive(Debug)]
pub struct StreamReceiver {
    g: Arc<StreamGuard>,
}

impl Stream {
    fn new(inner: Arc<Inner>, shared: Arc<StreamShared>) -> Stream {
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
