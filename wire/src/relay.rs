//! Byte relay between a wire stream and a local socket (GUI streams: the agent relays to the
//! gui-agent's socket, domaind to dom0's `OpenGui` socket).
//!
//! The stream carries the bytes on channel [`BYTES_CHANNEL`] in both directions. When the
//! local side reaches end of file, we send EOF on the channel and Fin; when the peer sends
//! EOF, we shut the local socket's write side. The relay ends when both directions are
//! done. Every direction waits for credit (wire) or for the socket to accept bytes, so a
//! slow reader slows the writer down and nothing piles up.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conn::{Stream, StreamEvent};
use crate::error::WireError;

/// The channel that carries the relayed bytes (both directions).
pub const BYTES_CHANNEL: u8 = 0;
/// Bytes read from the local socket at a time.
const CHUNK: usize = 64 * 1024;

/// Relays `stream` <-> `io` until both directions ended. A peer using another channel or
/// sending messages is a violation (its connection is dropped); an I/O error or a reset
/// ends the relay with an error after resetting the stream.
pub async fn relay_bytes<T>(stream: Stream, io: T) -> Result<(), WireError>
where
    T: AsyncRead + AsyncWrite,
{
    relay_bytes_with(stream, io, || async {}).await
}

/// [`relay_bytes`], with `on_peer_end` run when the peer ended its direction (EOF or Fin) and
/// before the local socket's write side is shut: the local side learns of the end only after
/// it. A USB export uses it to take the device from the kernel's `usbip-host` first, which
/// then closes its own end without the device reset that an end of file would cause.
pub async fn relay_bytes_with<T, F, Fut>(
    stream: Stream,
    io: T,
    on_peer_end: F,
) -> Result<(), WireError>
where
    T: AsyncRead + AsyncWrite,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut on_peer_end = Some(on_peer_end);
    let (tx, mut rx) = stream.split();
    let (mut r, mut w) = tokio::io::split(io);
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r
                .read(&mut buf)
                .await
                .map_err(WireError::io("reading the local end of a relayed stream"))?;
            if n == 0 {
                tx.send_eof(BYTES_CHANNEL)?;
                tx.finish()?;
                return Ok::<(), WireError>(());
            }
            tx.send_data(BYTES_CHANNEL, &buf[..n]).await?;
        }
    };
    let down = async {
        loop {
            match rx.recv().await? {
                StreamEvent::Data {
                    channel: BYTES_CHANNEL,
                    data,
                } => w
                    .write_all(&data)
                    .await
                    .map_err(WireError::io("writing the local end of a relayed stream"))?,
                StreamEvent::Eof {
                    channel: BYTES_CHANNEL,
                } => {
                    if let Some(f) = on_peer_end.take() {
                        f().await;
                    }
                    let _ = w.shutdown().await;
                }
                StreamEvent::Finished => {
                    if let Some(f) = on_peer_end.take() {
                        f().await;
                    }
                    let _ = w.shutdown().await;
                    return Ok::<(), WireError>(());
                }
                StreamEvent::Data { channel, .. } | StreamEvent::Eof { channel } => {
                    return Err(rx.violation(format!("relayed stream used channel {channel}")))
                }
                StreamEvent::Message(_) => {
                    return Err(rx.violation("message on a relayed byte stream"))
                }
            }
        }
    };
    let res = tokio::try_join!(up, down);
    if let Err(e) = &res {
        tracing::debug!(error = %e, "relayed stream ended with an error");
        tx.reset("relay failed");
    }
    res.map(|_| ())
}
