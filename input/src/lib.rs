//! Bulkhead's input proxy: keyboards and mice stay in the usb domain; dom0 gets a checked
//! stream of their events and injects it through uinput, never the device itself.
//!
//! - [`proto`]: the stream (Hello, then Events batches), its limits, and dom0's policy
//!   ([`proto::restrict`], [`proto::Validator`]).
//! - [`evdev`]: the usb domain's side, a grabbed `/dev/input/eventN` (the
//!   `bulkhead-input-sender` binary writes its stream to stdout).
//! - [`uinput`]: dom0's side, a uinput device with only the restricted capabilities.
//! - [`forward`]: decode, validate and inject one stream until it ends or misbehaves.

pub mod evdev;
pub mod proto;
pub mod uinput;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

use proto::{decode, Kind, Limits, Msg, ProtoError, Validator, Violation};
use uinput::{UinputDevice, UinputError};

/// How a stream ended well (EOF after whole messages).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardEnd {
    /// The uinput device's sysname (`inputN`), if a Hello came (the device is destroyed now).
    pub device: Option<String>,
    /// Batches and events injected, events dropped by the policy.
    pub batches: u64,
    pub events: u64,
    pub dropped: u64,
}

/// Why a stream was cut off (its device, if any, destroyed).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("malformed stream: {0}")]
    Proto(#[from] ProtoError),
    #[error("events before the hello")]
    NoHello,
    #[error("a second hello")]
    HelloAgain,
    #[error("the sender says the device is a {claimed:?}; it is a {device:?}")]
    WrongKind { claimed: Kind, device: Kind },
    #[error("policy violation: {0}")]
    Violation(#[from] Violation),
    #[error("uinput: {0}")]
    Uinput(#[from] UinputError),
    #[error("stream ended inside a message ({0} bytes left)")]
    Truncated(usize),
}

/// Decodes, validates and injects `stream` from `domain` until EOF or a violation; the
/// uinput device exists from the Hello to the end of this call.
pub async fn forward<R: AsyncRead>(
    stream: R,
    domain: &str,
    limits: Limits,
) -> Result<ForwardEnd, ForwardError> {
    forward_with(stream, domain, limits, |_| {}).await
}

/// [`forward`], calling `created` once with the uinput device when it exists (e.g. to log
/// its node, or for a test to open it).
pub async fn forward_with<R: AsyncRead>(
    stream: R,
    domain: &str,
    limits: Limits,
    mut created: impl FnMut(&UinputDevice),
) -> Result<ForwardEnd, ForwardError> {
    tokio::pin!(stream);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 4096];
    let mut end = ForwardEnd::default();
    let mut dev: Option<(UinputDevice, Validator)> = None;
    loop {
        let n = stream.read(&mut chunk).await.map_err(ForwardError::Read)?;
        if n == 0 {
            if !buf.is_empty() {
                return Err(ForwardError::Truncated(buf.len()));
            }
            tracing::info!(domain, device = ?end.device, events = end.events, "input stream ended");
            return Ok(end);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used_total = 0;
        while let Some((msg, used)) = decode(&buf[used_total..])? {
            used_total += used;
            match (msg, dev.as_mut()) {
                (Msg::Hello(hello), None) => {
                    if let Some(want) = limits.kind {
                        if hello.kind != want {
                            return Err(ForwardError::WrongKind {
                                claimed: hello.kind,
                                device: want,
                            });
                        }
                    }
                    let validator = Validator::new(&hello, limits.clone());
                    let d = UinputDevice::create(validator.caps(), &hello.name, domain)?;
                    tracing::info!(domain, name = %hello.name, kind = ?hello.kind, sysname = d.sysname(), "input device from domain");
                    end.device = Some(d.sysname().to_owned());
                    created(&d);
                    dev = Some((d, validator));
                }
                (Msg::Hello(_), Some(_)) => return Err(ForwardError::HelloAgain),
                (Msg::Events(_), None) => return Err(ForwardError::NoHello),
                (Msg::Events(events), Some((d, validator))) => {
                    let checked = validator.check(&events, Instant::now())?;
                    end.dropped += checked.dropped as u64;
                    if !checked.events.is_empty() {
                        d.write_events(&checked.events)?;
                        end.batches += 1;
                        end.events += checked.events.len() as u64;
                    }
                }
            }
        }
        buf.drain(..used_total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{encode, Event};

    fn run(bytes: Vec<u8>) -> Result<ForwardEnd, ForwardError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(forward(&bytes[..], "test", Limits::default()))
    }

    #[test]
    fn an_empty_stream_ends_without_a_device() {
        assert_eq!(run(Vec::new()).unwrap(), ForwardEnd::default());
    }

    #[test]
    fn events_before_the_hello_are_refused() {
        let bytes = encode(&Msg::Events(vec![Event::syn_report()]));
        assert!(matches!(run(bytes), Err(ForwardError::NoHello)));
    }

    /// The sender cannot claim another kind than dom0 knows the device to be (before any
    /// uinput device is made).
    #[test]
    fn a_hello_of_another_kind_is_refused() {
        let hello = proto::Hello {
            name: "QEMU USB Mouse".into(),
            kind: Kind::Keyboard,
            caps: proto::allowed(Kind::Keyboard),
        };
        let bytes = encode(&Msg::Hello(hello));
        let limits = Limits {
            kind: Some(Kind::Mouse),
            ..Limits::default()
        };
        let r = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(forward(&bytes[..], "test", limits));
        assert!(
            matches!(
                r,
                Err(ForwardError::WrongKind {
                    claimed: Kind::Keyboard,
                    device: Kind::Mouse
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn malformed_and_truncated_streams_are_refused() {
        assert!(matches!(
            run(vec![0xff, 0xff, 0, 0]),
            Err(ForwardError::Proto(ProtoError::FrameTooLong(_)))
        ));
        let mut bytes = encode(&Msg::Events(vec![Event::syn_report()]));
        bytes.pop();
        assert!(matches!(run(bytes), Err(ForwardError::Truncated(13))));
    }
}
