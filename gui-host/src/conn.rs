//! An async GUI connection to one domain's gui-agent (over the fd D-Bus `OpenGui` returns,
//! or any byte stream), and [`drive`], which feeds a [`DomainWindows`] until the peer closes
//! or breaks a rule.

use std::sync::{Arc, Mutex};

use bulkhead_wire::gui::{AgentMsg, GuiDecoder, GuiError, GuiMessage, Hello, HostMsg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::state::{Change, DomainWindows, Violation};

/// Messages dom0 may queue for a peer that does not read before it is called a flood (the
/// agent stopped reading) and further sends fail.
pub const SEND_QUEUE: usize = 4096;
/// Bytes read at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Failures of a GUI connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Reading or writing the socket failed.
    #[error("GUI connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent malformed bytes.
    #[error(transparent)]
    Protocol(#[from] GuiError),
    /// The peer closed in the middle of a message.
    #[error("the peer closed the GUI connection in the middle of a message ({0} bytes pending)")]
    Truncated(usize),
}

/// Why a message could not be queued for the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is gone.
    #[error("the GUI connection is closed")]
    Closed,
    /// The agent does not read what dom0 sends.
    #[error("the agent does not read: {SEND_QUEUE} messages queued")]
    Backlog,
}

/// Sends dom0 -> agent messages; cheap to clone. A writer task owns the socket's write half.
#[derive(Debug, Clone)]
pub struct HostSender {
    tx: mpsc::Sender<Vec<u8>>,
    /// Messages queued so far (by every clone).
    queued: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Messages the writer task has written to the socket.
    written: tokio::sync::watch::Receiver<u64>,
}

impl HostSender {
    /// Queues one message without waiting.
    pub fn send(&self, msg: &HostMsg) -> Result<(), SendError> {
        self.tx.try_send(msg.encode()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Backlog,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })?;
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Returns once every message queued before the call is written to the socket (or the
    /// connection is gone): a program that exits after its last message waits here.
    pub async fn flushed(&self) {
        let target = self.queued.load(std::sync::atomic::Ordering::SeqCst);
        let mut written = self.written.clone();
        let _ = written.wait_for(|n| *n >= target).await;
    }
}

/// The dom0 end of one domain's GUI stream.
pub struct GuiConnection {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    decoder: GuiDecoder<AgentMsg>,
    sender: HostSender,
    /// Dropped with the connection: stops the writer task, which closes the socket even
    /// while senders are still held elsewhere.
    _alive: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for GuiConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuiConnection")
            .field("buffered", &self.decoder.buffered())
            .finish()
    }
}

impl GuiConnection {
    /// Takes over a byte stream, spawns its writer task (needs a tokio runtime) and queues
    /// our hello (and the keymap, if any) as the first messages.
    pub fn new<S>(stream: S, keymap: Option<bytes::Bytes>) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, mut writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
        let (alive, mut alive_rx) = tokio::sync::watch::channel(());
        let (written_tx, written) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    buf = rx.recv() => {
                        let Some(buf) = buf else { break };
                        if let Err(e) = writer.write_all(&buf).await {
                            tracing::debug!("GUI connection write failed: {e}");
                            return;
                        }
                        written_tx.send_modify(|n| *n += 1);
                    }
                    // The connection was dropped (peer gone or dropped for a violation).
                    _ = alive_rx.changed() => return,
                }
            }
            let _ = writer.shutdown().await;
        });
        let sender = HostSender {
            tx,
            queued: Default::default(),
            written,
        };
        // The queue is empty, so these cannot fail for lack of room.
        let _ = sender.send(&HostMsg::Hello(Hello::OURS));
        if let Some(keymap) = keymap {
            let _ = sender.send(&HostMsg::Keymap { keymap });
        }
        Self {
            reader: Box::new(reader),
            decoder: GuiDecoder::new(),
            sender,
            _alive: alive,
        }
    }

    /// From the fd D-Bus `OpenGui` returned (one end of a unix socketpair).
    pub fn from_fd(
        fd: std::os::fd::OwnedFd,
        keymap: Option<bytes::Bytes>,
    ) -> Result<Self, ConnError> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(std)?;
        Ok(Self::new(stream, keymap))
    }

    /// A sender for input, configure/close requests and clipboard messages.
    pub fn sender(&self) -> HostSender {
        self.sender.clone()
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between messages.
    pub async fn recv(&mut self) -> Result<Option<AgentMsg>, ConnError> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(Some(m));
            }
            let want = self.decoder.wanted().clamp(1, READ_CHUNK);
            let buf = self.decoder.buffer_mut();
            buf.reserve(want.max(READ_CHUNK.min(64 * 1024)));
            let n = self.reader.read_buf(buf).await?;
            if n == 0 {
                return match self.decoder.buffered() {
                    0 => Ok(None),
                    pending => Err(ConnError::Truncated(pending)),
                };
            }
        }
    }
}

/// How a driven connection ended.
#[derive(Debug)]
pub enum PeerEnd {
    /// The agent closed the connection.
    Closed,
    /// The agent broke a rule and was dropped.
    Dropped(Violation),
    /// I/O failure or truncation.
    Failed(ConnError),
}

impl std::fmt::Display for PeerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerEnd::Closed => write!(f, "closed by the domain"),
            PeerEnd::Dropped(v) => write!(f, "dropped: {v}"),
            PeerEnd::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Receives and applies messages until the peer closes or breaks a rule; `on_change` runs
/// (outside the state lock) after every applied message. A violation is logged with the
/// domain's name and ends only this connection.
pub async fn drive(
    domain: &str,
    mut conn: GuiConnection,
    state: Arc<Mutex<DomainWindows>>,
    mut on_change: impl FnMut(&Change),
) -> PeerEnd {
    loop {
        let msg = match conn.recv().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::info!(domain, "GUI connection closed by the domain");
                return PeerEnd::Closed;
            }
            Err(ConnError::Protocol(e)) => {
                tracing::warn!(
                    domain,
                    "GUI protocol violation, dropping the domain's GUI connection: {e}"
                );
                return PeerEnd::Dropped(Violation::Protocol(e));
            }
            Err(e) => {
                tracing::warn!(domain, "GUI connection failed: {e}");
                return PeerEnd::Failed(e);
            }
        };
        let res = state.lock().unwrap_or_else(|p| p.into_inner()).apply(msg);
        match res {
            Ok(change) => on_change(&change),
            Err(v) => {
                tracing::warn!(
                    domain,
                    "GUI rule broken, dropping the domain's GUI connection: {v}"
                );
                return PeerEnd::Dropped(v);
            }
        }
    }
}
