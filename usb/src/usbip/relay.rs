//! [`relay_urbs`]: carry a URB-phase USB/IP stream between an importer (`vhci-hcd`) and an
//! exporter (`usbip-host`), forwarding each message unchanged only after [`UrbGuard`] allowed
//! it.
//!
//! Each direction reads into its own buffer, forwards every complete message it holds with
//! `write_all`, and reads again only then: a slow reader on the far side stalls the sender
//! (backpressure) instead of growing a buffer. A buffer never grows past one largest message
//! the limits allow (header, `max_transfer` data, `max_iso_packets` descriptors); consumed
//! bytes are moved out with `copy_within`, so a message costs no buffer allocation.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::guard::{GuardError, GuardLimits, Side, UrbGuard};
use super::{ISO_DESCRIPTOR_SIZE, URB_HEADER_SIZE};

/// First size of a direction's buffer; it doubles up to the largest message when a message
/// needs it.
const START_BUFFER: usize = 64 * 1024;

/// How a side ended the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// End of stream between messages.
    Eof,
    /// End of stream inside a message: `buffered` bytes of it were dropped, not forwarded.
    EofMidMessage { buffered: usize },
    /// Reading failed (e.g. the connection was reset).
    ReadFailed(io::ErrorKind),
}

/// What a relay carried before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes forwarded from the importer to the exporter.
    pub importer_bytes: u64,
    /// Bytes forwarded from the exporter to the importer.
    pub exporter_bytes: u64,
    /// Messages forwarded, both ways.
    pub messages: u64,
    /// The side whose stream ended first.
    pub ended_by: Side,
    /// How it ended.
    pub end: RelayEnd,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A side broke the protocol; drop both peers.
    #[error(transparent)]
    Violation(#[from] GuardError),
    /// Writing to `side` failed.
    #[error("writing to {side}: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
}

/// The largest message `limits` allow.
fn max_message(limits: &GuardLimits) -> usize {
    let c = &limits.codec;
    URB_HEADER_SIZE
        .saturating_add(c.max_transfer as usize)
        .saturating_add((c.max_iso_packets as usize).saturating_mul(ISO_DESCRIPTOR_SIZE))
}

struct Counters {
    importer_bytes: AtomicU64,
    exporter_bytes: AtomicU64,
    messages: AtomicU64,
}

/// Relay URB messages between `importer` and `exporter` until one of them ends its stream
/// (then the other's write half is shut down and the stats returned) or breaks the protocol
/// (then the error returns at once; the caller drops both peers). Both directions run
/// concurrently on the calling task and share one [`UrbGuard`].
pub async fn relay_urbs<I, E>(
    importer: I,
    exporter: E,
    limits: GuardLimits,
) -> Result<RelayStats, RelayError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    E: AsyncRead + AsyncWrite + Unpin,
{
    let cap = max_message(&limits);
    let guard = Mutex::new(UrbGuard::new(limits));
    let counters = Counters {
        importer_bytes: AtomicU64::new(0),
        exporter_bytes: AtomicU64::new(0),
        messages: AtomicU64::new(0),
    };
    let (mut imp_rd, mut imp_wr) = tokio::io::split(importer);
    let (mut exp_rd, mut exp_wr) = tokio::io::split(exporter);
    let up = pump(
        Side::Importer,
        &mut imp_rd,
        &mut exp_wr,
        &guard,
        cap,
        &counters,
    );
    let down = pump(
        Side::Exporter,
        &mut exp_rd,
        &mut imp_wr,
        &guard,
        cap,
        &counters,
    );
    // Whichever direction finishes first ends the relay; the other is dropped mid-way.
    let (ended_by, end) = tokio::select! {
        r = up => (Side::Importer, r?),
        r = down => (Side::Exporter, r?),
    };
    let stats = RelayStats {
        importer_bytes: counters.importer_bytes.load(Ordering::Relaxed),
        exporter_bytes: counters.exporter_bytes.load(Ordering::Relaxed),
        messages: counters.messages.load(Ordering::Relaxed),
        ended_by,
        end,
    };
    tracing::debug!(?stats, "USB/IP relay ended");
    Ok(stats)
}

/// One direction: read from `from`'s stream, check, forward to the other side's `to`.
async fn pump<R, W>(
    from: Side,
    rd: &mut R,
    to: &mut W,
    guard: &Mutex<UrbGuard>,
    cap: usize,
    counters: &Counters,
) -> Result<RelayEnd, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to_side = match from {
        Side::Importer => Side::Exporter,
        Side::Exporter => Side::Importer,
    };
    let bytes = match from {
        Side::Importer => &counters.importer_bytes,
        Side::Exporter => &counters.exporter_bytes,
    };
    let write_err = |source| RelayError::Io {
        side: to_side,
        source,
    };
    let mut buf = vec![0u8; START_BUFFER.min(cap)];
    let mut filled = 0;
    loop {
        // Forward every complete message in the buffer.
        let mut start = 0;
        loop {
            let next = {
                let mut g = guard.lock().unwrap_or_else(|p| p.into_inner());
                let rest = &buf[start..filled];
                match from {
                    Side::Importer => g.from_importer(rest),
                    Side::Exporter => g.from_exporter(rest),
                }
            }?;
            let Some(n) = next else { break };
            to.write_all(&buf[start..start + n])
                .await
                .map_err(write_err)?;
            start += n;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            counters.messages.fetch_add(1, Ordering::Relaxed);
        }
        if start > 0 {
            to.flush().await.map_err(write_err)?;
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
        if filled == buf.len() {
            if buf.len() >= cap {
                // The guard bounds every message by the same limits, so it would have
                // refused a message this large already; refuse it here too.
                return Err(GuardError::new(
                    from,
                    super::guard::Violation::Codec(super::CodecError::Limit {
                        field: "message size",
                        value: filled as u64,
                        limit: cap as u64,
                    }),
                )
                .into());
            }
            buf.resize(buf.len().saturating_mul(2).min(cap), 0);
        }
        let end = match rd.read(&mut buf[filled..]).await {
            Ok(0) if filled == 0 => RelayEnd::Eof,
            Ok(0) => RelayEnd::EofMidMessage { buffered: filled },
            Ok(n) => {
                filled += n;
                continue;
            }
            Err(e) => RelayEnd::ReadFailed(e.kind()),
        };
        tracing::debug!(side = %from, ?end, "USB/IP stream ended");
        if let Err(e) = to.shutdown().await {
            tracing::debug!(side = %to_side, error = %e, "shutting down the write half");
        }
        return Ok(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usbip::{encode_urb, Basic, Direction, UrbMessage};
    use tokio::io::duplex;

    fn submit(seqnum: u32, direction: Direction, len: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::CmdSubmit {
            basic: Basic {
                seqnum,
                devid: 1,
                direction,
                ep: 2,
            },
            transfer_flags: 0,
            transfer_buffer_length: len,
            start_frame: 0,
            number_of_packets: 0,
            interval: 0,
            setup: [0; 8],
            data: if direction == Direction::Out {
                (0..len).map(|i| i as u8).collect()
            } else {
                vec![]
            },
            iso: vec![],
        })
    }

    fn ret(seqnum: u32, direction: Direction, actual: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::RetSubmit {
            basic: Basic {
                seqnum,
                devid: 0,
                direction: Direction::Out,
                ep: 0,
            },
            status: 0,
            actual_length: actual,
            start_frame: 0,
            number_of_packets: 0,
            error_count: 0,
            data: if direction == Direction::In {
                (0..actual).map(|i| (i * 7) as u8).collect()
            } else {
                vec![]
            },
            iso: vec![],
        })
    }

    /// Read exactly `n` bytes.
    async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        r.read_exact(&mut v).await.unwrap();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_cross_unchanged_both_ways() {
        let (mut imp, imp_relay) = duplex(4096);
        let (mut exp, exp_relay) = duplex(4096);
        let relay = tokio::spawn(relay_urbs(imp_relay, exp_relay, GuardLimits::default()));
        // Big messages (beyond the duplex buffer and the relay's first buffer) cross too.
        let cmds = [
            submit(1, Direction::Out, 100_000),
            submit(2, Direction::In, 200_000),
            submit(3, Direction::Out, 0),
        ];
        let rets = [
            ret(1, Direction::Out, 100_000),
            ret(2, Direction::In, 150_000),
            ret(3, Direction::Out, 0),
        ];
        let all: Vec<u8> = cmds.concat();
        let importer = async {
            // one write in odd pieces
            for chunk in all.chunks(777) {
                imp.write_all(chunk).await.unwrap();
            }
            let back = read_n(&mut imp, rets.iter().map(Vec::len).sum()).await;
            assert_eq!(back, rets.concat());
            imp
        };
        let exporter = async {
            let got = read_n(&mut exp, all.len()).await;
            assert_eq!(got, all);
            for r in &rets {
                exp.write_all(r).await.unwrap();
            }
            exp
        };
        let (imp, mut exp) = tokio::join!(importer, exporter);
        drop(imp); // importer EOF ends the relay and shuts the exporter's write half
        let stats = relay.await.unwrap().unwrap();
        assert_eq!(stats.ended_by, Side::Importer);
        assert_eq!(stats.end, RelayEnd::Eof);
        assert_eq!(stats.importer_bytes, all.len() as u64);
        assert_eq!(
            stats.exporter_bytes,
            rets.iter().map(|r| r.len() as u64).sum::<u64>()
        );
        assert_eq!(stats.messages, 6);
        let mut rest = Vec::new();
        assert_eq!(exp.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn importer_violation_ends_the_relay() {
        let (mut imp, imp_relay) = duplex(4096);
        let (mut exp, exp_relay) = duplex(4096);
        let relay = tokio::spawn(relay_urbs(imp_relay, exp_relay, GuardLimits::default()));
        let ok = submit(1, Direction::In, 8);
        imp.write_all(&ok).await.unwrap();
        assert_eq!(read_n(&mut exp, ok.len()).await, ok);
        // a reply from the importer
        imp.write_all(&ret(1, Direction::In, 0)).await.unwrap();
        let err = relay.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RelayError::Violation(g) if g.side() == Side::Importer),
            "{err}"
        );
        assert!(err.to_string().contains("importing domain"), "{err}");
        // nothing of the refused message crossed; the relay dropped its ends
        let mut rest = Vec::new();
        exp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn exporter_violation_ends_the_relay() {
        let (mut imp, imp_relay) = duplex(4096);
        let (mut exp, exp_relay) = duplex(4096);
        let relay = tokio::spawn(relay_urbs(imp_relay, exp_relay, GuardLimits::default()));
        let ok = submit(1, Direction::In, 8);
        imp.write_all(&ok).await.unwrap();
        assert_eq!(read_n(&mut exp, ok.len()).await, ok);
        // more data than the submit asked for
        exp.write_all(&ret(1, Direction::In, 9)).await.unwrap();
        let err = relay.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RelayError::Violation(g) if g.side() == Side::Exporter),
            "{err}"
        );
        let mut rest = Vec::new();
        imp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn exporter_eof_mid_message_is_reported() {
        let (mut imp, imp_relay) = duplex(4096);
        let (mut exp, exp_relay) = duplex(4096);
        let relay = tokio::spawn(relay_urbs(imp_relay, exp_relay, GuardLimits::default()));
        let ok = submit(1, Direction::In, 8);
        imp.write_all(&ok).await.unwrap();
        assert_eq!(read_n(&mut exp, ok.len()).await, ok);
        let r = ret(1, Direction::In, 8);
        exp.write_all(&r[..20]).await.unwrap();
        drop(exp);
        let stats = relay.await.unwrap().unwrap();
        assert_eq!(stats.ended_by, Side::Exporter);
        assert_eq!(stats.end, RelayEnd::EofMidMessage { buffered: 20 });
        assert_eq!(stats.messages, 1);
        // the importer sees the end of its stream, none of the partial reply
        let mut rest = Vec::new();
        imp.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn oversized_message_is_refused_without_growing() {
        let limits = GuardLimits {
            codec: crate::usbip::Limits {
                max_transfer: 1024,
                max_iso_packets: 0,
                ..crate::usbip::Limits::default()
            },
            ..GuardLimits::default()
        };
        let (mut imp, imp_relay) = duplex(4096);
        let (_exp, exp_relay) = duplex(4096);
        let relay = tokio::spawn(relay_urbs(imp_relay, exp_relay, limits));
        imp.write_all(&submit(1, Direction::Out, 2048)).await.ok();
        let err = relay.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RelayError::Violation(g) if g.side() == Side::Importer),
            "{err}"
        );
    }
}
