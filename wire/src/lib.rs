//! # bulkhead-wire: the domain channel protocol
//!
//! One connection per domain, between `domaind` (the *client* role) and the domain's
//! `bulkhead-agent` (the *server* role), over a unix socket today and vsock later. Anything
//! `AsyncRead + AsyncWrite` works.
//!
//! ## Layers
//! 1. **Frames** ([`frame`]): a fixed 12-byte header (version, kind, flags, stream id,
//!    payload length) and a payload of at most [`Limits::max_frame_payload`]
//!    (hard cap [`MAX_FRAME_PAYLOAD`]). The decoder ([`FrameDecoder`], pure and synchronous)
//!    checks the header before it buffers the payload, so a length is never trusted for
//!    allocation beyond the limit.
//! 2. **Handshake** ([`handshake`]): the client sends `Hello{min,max version, its frame
//!    limit, its per-stream window}`; the server answers `HelloAck{version, ...}` or
//!    `HelloReject{its range}`. Handshake frames carry version byte 0; every later frame
//!    must carry the negotiated version, anything else is a violation.
//! 3. **Streams**: either side opens streams (client odd ids, server even ids, strictly
//!    increasing, never reused) with an `Open` frame carrying an [`OpenRequest`]. A stream
//!    has 256 byte channels (Data/Eof per channel), typed Messages, a `Fin` per direction and
//!    `Reset`. Data and Message frames consume **credit**: each side grants the other
//!    `initial_window` bytes per stream and more with `Window` frames as the application
//!    consumes data; a frame beyond the granted credit is a violation.
//! 4. **Controls** on stream 0: [`Control::Shutdown`], `Ping`/`Pong` (answered by the
//!    connection itself; see [`Connection::ping`]).
//! 5. **Exec** ([`exec`]): `Open(Exec(ExecRequest))`, stdin on channel 0 from the client,
//!    stdout/stderr on channels 1/2 from the server, EOF per channel, then
//!    `Message(ExecMessage::Exit(status))` and `Fin`.
//!
//! ## Use
//! ```no_run
//! # async fn demo(domaind_side: tokio::net::UnixStream, agent_side: tokio::net::UnixStream)
//! #     -> Result<(), bulkhead_wire::WireError> {
//! use bulkhead_wire::{exec, Connection, Control, ExecRequest, IncomingEvent, Limits, OpenRequest};
//!
//! // domaind (client role): run a command, stream its output, get the status.
//! let (conn, _incoming) = Connection::client(domaind_side, Limits::default()).await?;
//! let req = ExecRequest { user: Some("root".into()), ..ExecRequest::new(["cat", "/etc/os-release"]) };
//! let (mut out, mut err) = (Vec::new(), Vec::new());
//! let status = exec::run(&conn, req, tokio::io::empty(), &mut out, &mut err).await?;
//! println!("exit code {}: {}", status.as_shell_code(), String::from_utf8_lossy(&out));
//! conn.send_control(Control::Shutdown { timeout_secs: 10 }).await?;
//! conn.closed().await;
//!
//! // agent (server role): accept what domaind asks for.
//! let (_conn, mut incoming) = Connection::server(agent_side, Limits::default()).await?;
//! while let Some(ev) = incoming.next().await {
//!     match ev {
//!         IncomingEvent::Stream(s) => match s.request {
//!             // spawn the process, then exec::serve(s.stream, stdin, stdout, stderr, wait)
//!             OpenRequest::Exec(req) => exec::reject(s.stream, "not implemented here").await?,
//!             _ => exec::reject(s.stream, "not served here").await?,
//!         },
//!         IncomingEvent::Control(c) => println!("control {c:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! 6. **GUI** ([`gui`]): the byte protocol between a domain's gui-agent and dom0 that a GUI
//!    stream carries (its own little-endian messages, versions and limits).
//!
//! ## Version mismatch
//! Each build speaks a range `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`. The server picks the
//! highest version in both ranges. If there is none it sends `HelloReject` with its own
//! range and closes; both sides then fail with [`WireError::VersionMismatch`] naming both
//! ranges, and domaind reports that the domain's guest tools and domaind must be updated
//! together. Nothing is sent before a version is agreed. New features (service calls, GUI
//! streams) come as new [`OpenRequest`]/[`Control`] variants in a new version, sent only when
//! that version was negotiated; a variant unknown to the receiver is a violation.
//!
//! ## Faults
//! Any violation (bad header, oversize, unknown kind, credit exceeded, stream id reuse,
//! malformed payload, flooding) is logged with `tracing`, the connection is dropped, every
//! stream fails with an error and [`Connection::closed`] resolves.
#![forbid(unsafe_code)]

pub mod error;
pub mod exec;
pub mod frame;
pub mod gui;
pub mod handshake;
pub mod message;
pub mod relay;

mod conn;

pub use conn::{
    Connection, Incoming, IncomingEvent, IncomingStream, Limits, Stream, StreamEvent,
    StreamReceiver, StreamSender, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RESET_CANCEL,
    RESET_PROTOCOL, RESET_REFUSED,
};
pub use error::{Violation, WireError};
pub use frame::{Frame, FrameDecoder, FrameError, FrameKind, MAX_FRAME_PAYLOAD};
pub use message::{
    CallRequest, Control, ExecMessage, ExecRequest, ExitStatus, MessageError, OpenRequest,
    ServiceRequest, UsbExportReply, UsbExportRequest, UsbImportReply, UsbImportRequest,
    CALLS_VERSION, GUI_VERSION, USB_VERSION,
};

/// vsock port the agent of a VM domain connects to (CID 2, the host).
pub const AGENT_VSOCK_PORT: u32 = 1024;
