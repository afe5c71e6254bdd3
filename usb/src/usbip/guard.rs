//! [`UrbGuard`]: the checker dom0 runs on a URB-phase USB/IP stream between two domains that
//! do not trust each other: the *importer* (the kernel's `vhci-hcd`, which sends
//! `USBIP_CMD_SUBMIT` / `USBIP_CMD_UNLINK`) and the *exporter* (the kernel's `usbip-host`
//! stub, which answers with `USBIP_RET_SUBMIT` / `USBIP_RET_UNLINK`).
//!
//! Every message is decoded with the codec's [`Limits`] and checked against what is pending
//! before the caller forwards its bytes unchanged:
//! - the importer sends only commands; a command's seqnum is not already pending; at most
//!   [`GuardLimits::max_pending`] submits and unlinks, and at most
//!   [`GuardLimits::max_pending_bytes`] of transfer buffers, are pending; `number_of_packets`
//!   is never `0xffffffff` (`vhci-hcd` sends 0 for a transfer that is not isochronous); the
//!   control endpoint (0) carries no ISO packets;
//! - with [`GuardLimits::endpoints`] set (a [`DeviceEndpoints`] built from the device's
//!   descriptors and its state in sysfs), a submit goes to endpoint 0 or to an endpoint (number
//!   and direction) of the current altsettings of the active configuration; ISO packets only
//!   on an isochronous endpoint, and at least one there;
//! - configuration changes are followed: a control submit whose setup packet is
//!   `SET_INTERFACE` (`01 0b`) or `SET_CONFIGURATION` (`00 09`, to a configuration the
//!   descriptors have, or 0) is pending as a change; while one is, no submit to an endpoint
//!   other than 0 is allowed (the importing kernel disables an interface's endpoints before
//!   it asks); its `RET_SUBMIT` with status 0 applies it to the model (an unknown
//!   altsetting or interface leaves only endpoint 0 until a `SET_CONFIGURATION` succeeds),
//!   another status keeps the old state, and an unlink that ends it before its `RET_SUBMIT`
//!   (the stub ran the request before it submitted the URB, so whether it took is unknown)
//!   leaves only endpoint 0 as well;
//! - the exporter sends only replies, each to a pending command of the right kind; a
//!   `RET_SUBMIT` is decoded with the direction of its submit, its `actual_length` is within
//!   the submit's `transfer_buffer_length`, it has as many ISO packets as the submit (0 and
//!   `0xffffffff` both mean none) and every ISO packet lies within the submit's buffer;
//! - with [`GuardLimits::devid`] set, commands carry that devid, and replies carry it or 0
//!   (the stub writes 0 into the devid, direction and ep of its replies: `setup_base_pdu`
//!   in `drivers/usb/usbip/stub_tx.c`).
//!
//! Unlinks follow the stub (`stub_rx.c` `stub_recv_cmd_unlink`, `stub_tx.c` `stub_complete`):
//! when the target URB was still in flight, the stub cancels it and answers only with a
//! `RET_UNLINK` carrying the URB's completion status (normally `-ECONNRESET`), never with a
//! `RET_SUBMIT`; when the URB had already completed, its `RET_SUBMIT` is (normally) sent
//! first and the `RET_UNLINK` has status 0. So a `RET_UNLINK` with a nonzero status ends
//! its target (a later `RET_SUBMIT` for it is a violation), and one with status 0 moves a
//! target that is still pending to a bounded set of URBs whose `RET_SUBMIT` may still come
//! (tolerated once) or may never come (the stub's completion raced with the unlink and it
//! reported status 0 without a `RET_SUBMIT`); that set holds at most `max_pending` seqnums,
//! oldest dropped first, and does not count as pending.
//!
//! Why the endpoint rules: Linux's `stub_recv_cmd_submit` (`stub_rx.c`) looks the endpoint up
//! in the device's current `ep_in[]`/`ep_out[]` (`get_pipe`) and, when it is not there or
//! `number_of_packets` does not fit its type, returns without reading the command's OUT data
//! or ISO descriptors; `usbip_recv_iso` reads ISO descriptors only for an isochronous pipe.
//! Those bytes would then be the stub's next 48-byte command, one this guard never checked.
//! The model must therefore never hold an endpoint the exporting kernel lacks: it keeps only
//! what the kernel keeps of the descriptors, drops ambiguous addresses, and forgets the
//! state (endpoint 0 only) whenever it cannot tell what the kernel did.

use std::collections::{HashMap, VecDeque};

use super::endpoints::{ConfigChange, DeviceEndpoints, TransferType};
use super::{decode_urb, CodecError, Direction, Limits, UrbMessage, NOT_ISO};
use super::{Basic, CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK};

/// One end of a relayed USB/IP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The domain that uses the device (`vhci-hcd`): sends commands.
    Importer,
    /// The domain that holds the device (`usbip-host`): sends replies.
    Exporter,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Importer => "the importing domain",
            Side::Exporter => "the exporting domain",
        })
    }
}

/// Bounds of a [`UrbGuard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardLimits {
    /// Bounds the codec enforces on every message.
    pub codec: Limits,
    /// Most submits plus unlinks awaiting their reply.
    pub max_pending: usize,
    /// Most bytes of transfer buffers (`transfer_buffer_length`) of pending submits.
    pub max_pending_bytes: u64,
    /// When set, the devid of the one device this stream carries.
    pub devid: Option<u32>,
    /// When set, the device's configurations and the current state: a submit to an endpoint
    /// the current altsettings lack, or with ISO packets that do not fit the endpoint's type,
    /// is refused (see the module docs). `None`: endpoints unknown, not checked.
    pub endpoints: Option<DeviceEndpoints>,
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            codec: Limits::default(),
            max_pending: 256,
            max_pending_bytes: 64 << 20,
            devid: None,
            endpoints: None,
        }
    }
}

/// What a side broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes are not a USB/IP URB message within the limits.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A well-formed message that breaks the exchange's rules.
    #[error("seqnum {seqnum}: {rule}")]
    Rule { seqnum: u32, rule: String },
}

/// A message the guard refused: drop both peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("the importing domain broke USB/IP: {0}")]
    Importer(Violation),
    #[error("the exporting domain broke USB/IP: {0}")]
    Exporter(Violation),
}

impl GuardError {
    /// The side that sent the refused message.
    pub fn side(&self) -> Side {
        match self {
            GuardError::Importer(_) => Side::Importer,
            GuardError::Exporter(_) => Side::Exporter,
        }
    }

    pub(crate) fn new(side: Side, v: Violation) -> Self {
        match side {
            Side::Importer => GuardError::Importer(v),
            Side::Exporter => GuardError::Exporter(v),
        }
    }
}

fn rule(seqnum: u32, rule: impl Into<String>) -> Violation {
    Violation::Rule {
        seqnum,
        rule: rule.into(),
    }
}

/// A submit awaiting its `RET_SUBMIT`.
#[derive(Debug, Clone, Copy)]
struct Submit {
    direction: Direction,
    length: u32,
    /// ISO packets (0 when not isochronous).
    packets: u32,
    /// The configuration change this control submit asks for.
    change: Option<ConfigChange>,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Submit(Submit),
    Unlink { target: u32 },
}

/// `0xffffffff` (the protocol document) and 0 (what `vhci-hcd` sends) both mean "not ISO".
fn packets(n: u32) -> u32 {
    if n == NOT_ISO {
        0
    } else {
        n
    }
}

/// The checker of one URB-phase stream; see the module docs for the rules.
#[derive(Debug)]
pub struct UrbGuard {
    limits: GuardLimits,
    /// The endpoint model, taken out of `limits` (it changes with the device's state).
    endpoints: Option<DeviceEndpoints>,
    pending: HashMap<u32, Pending>,
    /// Sum of the `transfer_buffer_length`s of pending submits.
    pending_bytes: u64,
    /// Pending submits that change the configuration or an altsetting.
    pending_changes: usize,
    /// Submits whose unlink answered 0 while they were pending: their `RET_SUBMIT` may
    /// still come, once. Bounded by `max_pending` through `late_order`.
    late: HashMap<u32, Submit>,
    late_order: VecDeque<u32>,
}

impl UrbGuard {
    pub fn new(mut limits: GuardLimits) -> Self {
        Self {
            endpoints: limits.endpoints.take(),
            limits,
            pending: HashMap::new(),
            pending_bytes: 0,
            pending_changes: 0,
            late: HashMap::new(),
            late_order: VecDeque::new(),
        }
    }

    /// Submits and unlinks awaiting their reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of transfer buffers of the pending submits.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The endpoint model as it stands now (`None`: endpoints unknown).
    pub fn endpoints(&self) -> Option<&DeviceEndpoints> {
        self.endpoints.as_ref()
    }

    /// Check the message at the start of `buf`, sent by the importer. `Ok(Some(n))`: the
    /// first `n` bytes are one allowed message (forward them unchanged); `Ok(None)`: more
    /// bytes are needed; `Err`: a violation.
    pub fn from_importer(&mut self, buf: &[u8]) -> Result<Option<usize>, GuardError> {
        self.importer(buf)
            .map_err(|v| GuardError::new(Side::Importer, v))
    }

    /// Check the message at the start of `buf`, sent by the exporter; as
    /// [`UrbGuard::from_importer`].
    pub fn from_exporter(&mut self, buf: &[u8]) -> Result<Option<usize>, GuardError> {
        self.exporter(buf)
            .map_err(|v| GuardError::new(Side::Exporter, v))
    }

    /// The command word and seqnum, when the buffer has them.
    fn peek(buf: &[u8]) -> Option<(u32, u32)> {
        let c = buf.get(0..4)?;
        let s = buf.get(4..8)?;
        Some((
            u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        ))
    }

    fn check_devid(&self, seqnum: u32, devid: u32, reply: bool) -> Result<(), Violation> {
        match self.limits.devid {
            Some(want) if devid != want && !(reply && devid == 0) => Err(rule(
                seqnum,
                format!("devid 0x{devid:08x}, this stream carries 0x{want:08x}"),
            )),
            _ => Ok(()),
        }
    }

    fn make_room(&self, seqnum: u32) -> Result<(), Violation> {
        if self.pending.contains_key(&seqnum) || self.late.contains_key(&seqnum) {
            return Err(rule(seqnum, "this seqnum is already pending"));
        }
        if self.pending.len() >= self.limits.max_pending {
            return Err(rule(
                seqnum,
                format!(
                    "more than {} commands pending at once",
                    self.limits.max_pending
                ),
            ));
        }
        Ok(())
    }

    /// The endpoint rules of a submit (module docs); returns the configuration change a
    /// control submit asks for.
    fn check_submit(
        &self,
        seqnum: u32,
        basic: &Basic,
        number_of_packets: u32,
        setup: &[u8; 8],
    ) -> Result<Option<ConfigChange>, Violation> {
        if number_of_packets == NOT_ISO {
            return Err(rule(
                seqnum,
                "number_of_packets 0xffffffff (vhci-hcd sends 0 for a transfer that is not isochronous)",
            ));
        }
        let is_in = basic.direction == Direction::In;
        let kind = if basic.ep == 0 {
            TransferType::Control
        } else {
            if self.pending_changes > 0 {
                return Err(rule(
                    seqnum,
                    format!(
                        "a submit to endpoint {} while a configuration change is pending",
                        basic.ep
                    ),
                ));
            }
            match &self.endpoints {
                None => {
                    // Unknown endpoints: only the control endpoint is known to carry no
                    // ISO packets.
                    return Ok(None);
                }
                Some(m) => m.endpoint(basic.ep, is_in).ok_or_else(|| {
                    rule(
                        seqnum,
                        format!(
                            "endpoint {} {:?} is not in the device's current altsettings",
                            basic.ep, basic.direction
                        ),
                    )
                })?,
            }
        };
        match (kind, number_of_packets) {
            (TransferType::Isochronous, 0) => {
                return Err(rule(
                    seqnum,
                    format!(
                        "no ISO packets for isochronous endpoint {} {:?}",
                        basic.ep, basic.direction
                    ),
                ))
            }
            (TransferType::Isochronous, _) | (_, 0) => {}
            (_, _) => {
                return Err(rule(
                    seqnum,
                    format!(
                        "ISO packets on endpoint {} {:?}, which is not isochronous",
                        basic.ep, basic.direction
                    ),
                ))
            }
        }
        if kind != TransferType::Control {
            return Ok(None);
        }
        // The stub runs SET_CONFIGURATION / SET_INTERFACE on any control pipe.
        let change = ConfigChange::from_setup(setup);
        if let (Some(ConfigChange::Configuration(c)), Some(m)) = (change, &self.endpoints) {
            if !m.has_config(c) {
                return Err(rule(
                    seqnum,
                    format!("SET_CONFIGURATION {c}: the device has no such configuration"),
                ));
            }
        }
        Ok(change)
    }

    /// A pending submit ends (answered or cancelled): its bytes and change are released.
    /// `applied`: whether the change took effect (`Some(true)`), did not (`Some(false)`) or
    /// may have (`None`: the model is lost).
    fn release(&mut self, s: &Submit, applied: Option<bool>) {
        self.pending_bytes = self.pending_bytes.saturating_sub(u64::from(s.length));
        let Some(change) = s.change else {
            return;
        };
        self.pending_changes = self.pending_changes.saturating_sub(1);
        if let Some(m) = &mut self.endpoints {
            match applied {
                Some(true) => m.apply(change),
                Some(false) => {}
                None => m.lose(),
            }
            tracing::debug!(?change, ?applied, config = ?m.active_config(), "USB configuration change");
        }
    }

    fn importer(&mut self, buf: &[u8]) -> Result<Option<usize>, Violation> {
        let Some((command, seqnum)) = Self::peek(buf) else {
            return Ok(None);
        };
        if command != CMD_SUBMIT && command != CMD_UNLINK {
            return Err(rule(
                seqnum,
                format!("sent command {command}; only CMD_SUBMIT (1) and CMD_UNLINK (2) may come from this side"),
            ));
        }
        // Commands never consult the direction of a pending command.
        let Some((msg, used)) = decode_urb(buf, &self.limits.codec, &|_| None)? else {
            return Ok(None);
        };
        match msg {
            UrbMessage::CmdSubmit {
                basic,
                transfer_buffer_length,
                number_of_packets,
                setup,
                ..
            } => {
                self.check_devid(seqnum, basic.devid, false)?;
                let change = self.check_submit(seqnum, &basic, number_of_packets, &setup)?;
                self.make_room(seqnum)?;
                let bytes = self.pending_bytes + u64::from(transfer_buffer_length);
                if bytes > self.limits.max_pending_bytes {
                    return Err(rule(
                        seqnum,
                        format!(
                            "more than {} bytes of transfers pending at once",
                            self.limits.max_pending_bytes
                        ),
                    ));
                }
                self.pending_bytes = bytes;
                if change.is_some() {
                    self.pending_changes += 1;
                }
                self.pending.insert(
                    seqnum,
                    Pending::Submit(Submit {
                        direction: basic.direction,
                        length: transfer_buffer_length,
                        packets: number_of_packets,
                        change,
                    }),
                );
            }
            UrbMessage::CmdUnlink {
                basic,
                unlink_seqnum,
            } => {
                self.check_devid(seqnum, basic.devid, false)?;
                self.make_room(seqnum)?;
                // The target may be unknown here: its RET_SUBMIT can be on its way to the
                // importer already (the stub then answers with status 0).
                self.pending.insert(
                    seqnum,
                    Pending::Unlink {
                        target: unlink_seqnum,
                    },
                );
            }
            UrbMessage::RetSubmit { .. } | UrbMessage::RetUnlink { .. } => {
                return Err(rule(seqnum, "sent a reply"));
            }
        }
        Ok(Some(used))
    }

    fn exporter(&mut self, buf: &[u8]) -> Result<Option<usize>, Violation> {
        let Some((command, seqnum)) = Self::peek(buf) else {
            return Ok(None);
        };
        match command {
            RET_SUBMIT => self.ret_submit(buf, seqnum),
            RET_UNLINK => self.ret_unlink(buf, seqnum),
            other => Err(rule(
                seqnum,
                format!("sent command {other}; only RET_SUBMIT (3) and RET_UNLINK (4) may come from this side"),
            )),
        }
    }

    fn ret_submit(&mut self, buf: &[u8], seqnum: u32) -> Result<Option<usize>, Violation> {
        let submit = match (self.pending.get(&seqnum), self.late.get(&seqnum)) {
            (Some(Pending::Submit(s)), _) => *s,
            (None, Some(s)) => *s,
            (Some(Pending::Unlink { .. }), _) => {
                return Err(rule(seqnum, "RET_SUBMIT answers an unlink"))
            }
            (None, None) => return Err(rule(seqnum, "RET_SUBMIT answers no pending submit")),
        };
        let direction = submit.direction;
        let Some((msg, used)) = decode_urb(buf, &self.limits.codec, &|_| Some(direction))? else {
            return Ok(None);
        };
        let UrbMessage::RetSubmit {
            basic,
            status,
            actual_length,
            number_of_packets,
            iso,
            ..
        } = msg
        else {
            return Err(rule(seqnum, "not a RET_SUBMIT"));
        };
        self.check_devid(seqnum, basic.devid, true)?;
        if actual_length > submit.length {
            return Err(rule(
                seqnum,
                format!(
                    "actual_length {actual_length} above the submit's transfer_buffer_length {}",
                    submit.length
                ),
            ));
        }
        if packets(number_of_packets) != submit.packets {
            return Err(rule(
                seqnum,
                format!(
                    "{} ISO packets in the reply, {} in the submit",
                    packets(number_of_packets),
                    submit.packets
                ),
            ));
        }
        for d in &iso {
            if u64::from(d.offset) + u64::from(d.length) > u64::from(submit.length) {
                return Err(rule(
                    seqnum,
                    format!(
                        "ISO packet at {} of {} bytes beyond the submit's buffer of {}",
                        d.offset, d.length, submit.length
                    ),
                ));
            }
        }
        if self.pending.remove(&seqnum).is_some() {
            // The stub ran a configuration change before it submitted the URB; status 0
            // says it took.
            self.release(&submit, Some(status == 0));
        } else {
            self.late.remove(&seqnum);
            tracing::debug!(seqnum, "RET_SUBMIT after its unlink answered 0");
        }
        Ok(Some(used))
    }

    fn ret_unlink(&mut self, buf: &[u8], seqnum: u32) -> Result<Option<usize>, Violation> {
        let target = match self.pending.get(&seqnum) {
            Some(Pending::Unlink { target }) => *target,
            Some(Pending::Submit(_)) => return Err(rule(seqnum, "RET_UNLINK answers a submit")),
            None => return Err(rule(seqnum, "RET_UNLINK answers no pending unlink")),
        };
        let Some((msg, used)) = decode_urb(buf, &self.limits.codec, &|_| None)? else {
            return Ok(None);
        };
        let UrbMessage::RetUnlink { basic, status } = msg else {
            return Err(rule(seqnum, "not a RET_UNLINK"));
        };
        self.check_devid(seqnum, basic.devid, true)?;
        self.pending.remove(&seqnum);
        let target_pending = matches!(self.pending.get(&target), Some(Pending::Submit(_)));
        if status != 0 {
            // The stub cancelled the URB: no RET_SUBMIT will come for it.
            // A configuration change ran before the URB was submitted: whether it took is
            // unknown.
            if target_pending {
                if let Some(Pending::Submit(s)) = self.pending.remove(&target) {
                    self.release(&s, None);
                }
            }
            self.late.remove(&target);
        } else if let Some(Pending::Submit(s)) = self.pending.remove(&target) {
            // Completed before the unlink: its RET_SUBMIT may still come (or, after a race
            // in the stub, never), so its status may never be seen.
            self.release(&s, None);
            self.remember_late(target, s);
        }
        tracing::trace!(seqnum, target, status, "RET_UNLINK");
        Ok(Some(used))
    }

    fn remember_late(&mut self, seqnum: u32, s: Submit) {
        while self.late_order.len() >= self.limits.max_pending.max(1) {
            if let Some(old) = self.late_order.pop_front() {
                self.late.remove(&old);
            }
        }
        self.late_order.push_back(seqnum);
        self.late.insert(seqnum, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usbip::{encode_urb, Basic, IsoDescriptor};

    const DEVID: u32 = 0x0001_0002;

    fn basic(seqnum: u32, direction: Direction) -> Basic {
        Basic {
            seqnum,
            devid: DEVID,
            direction,
            ep: 1,
        }
    }

    fn submit(seqnum: u32, direction: Direction, len: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::CmdSubmit {
            basic: basic(seqnum, direction),
            transfer_flags: 0,
            transfer_buffer_length: len,
            start_frame: 0,
            number_of_packets: 0,
            interval: 0,
            setup: [0; 8],
            data: if direction == Direction::Out {
                vec![0xab; len as usize]
            } else {
                vec![]
            },
            iso: vec![],
        })
    }

    fn ret(seqnum: u32, direction: Direction, actual: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::RetSubmit {
            // as the stub writes it: devid, direction and ep 0
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
                vec![0xcd; actual as usize]
            } else {
                vec![]
            },
            iso: vec![],
        })
    }

    fn unlink(seqnum: u32, target: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::CmdUnlink {
            basic: basic(seqnum, Direction::Out),
            unlink_seqnum: target,
        })
    }

    fn ret_unlink(seqnum: u32, status: i32) -> Vec<u8> {
        encode_urb(&UrbMessage::RetUnlink {
            basic: Basic {
                seqnum,
                devid: 0,
                direction: Direction::Out,
                ep: 0,
            },
            status,
        })
    }

    fn guard() -> UrbGuard {
        UrbGuard::new(GuardLimits::default())
    }

    fn ok_imp(g: &mut UrbGuard, b: &[u8]) {
        assert_eq!(g.from_importer(b), Ok(Some(b.len())));
    }

    fn ok_exp(g: &mut UrbGuard, b: &[u8]) {
        assert_eq!(g.from_exporter(b), Ok(Some(b.len())));
    }

    fn rule_err(r: Result<Option<usize>, GuardError>, side: Side) {
        match r {
            Err(e) => {
                assert_eq!(e.side(), side, "{e}");
                assert!(
                    matches!(
                        e,
                        GuardError::Importer(Violation::Rule { .. })
                            | GuardError::Exporter(Violation::Rule { .. })
                    ),
                    "{e}"
                );
            }
            other => panic!("expected a rule violation by {side}, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_in_and_out() {
        let mut g = guard();
        ok_imp(&mut g, &submit(1, Direction::In, 64));
        ok_imp(&mut g, &submit(2, Direction::Out, 16));
        assert_eq!(g.pending(), 2);
        // The OUT reply carries no data, the IN one its actual_length.
        ok_exp(&mut g, &ret(2, Direction::Out, 16));
        ok_exp(&mut g, &ret(1, Direction::In, 18));
        assert_eq!(g.pending(), 0);
        // Two messages in one buffer: only the first is claimed.
        let mut two = submit(3, Direction::In, 8);
        let first = two.len();
        two.extend_from_slice(&submit(4, Direction::Out, 4));
        assert_eq!(g.from_importer(&two), Ok(Some(first)));
    }

    #[test]
    fn partial_input_asks_for_more() {
        let mut g = guard();
        let s = submit(1, Direction::Out, 32);
        for cut in 0..s.len() {
            assert_eq!(g.from_importer(&s[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(g.pending(), 0);
        ok_imp(&mut g, &submit(1, Direction::In, 32));
        let r = ret(1, Direction::In, 20);
        for cut in 0..r.len() {
            assert_eq!(g.from_exporter(&r[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(g.pending(), 1);
        ok_exp(&mut g, &r);
    }

    #[test]
    fn unknown_and_duplicate_seqnums() {
        let mut g = guard();
        rule_err(g.from_exporter(&ret(9, Direction::In, 0)), Side::Exporter);
        rule_err(g.from_exporter(&ret_unlink(9, 0)), Side::Exporter);
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        rule_err(
            g.from_importer(&submit(1, Direction::Out, 8)),
            Side::Importer,
        );
        rule_err(g.from_importer(&unlink(1, 1)), Side::Importer);
        // replies to the wrong kind of command
        ok_imp(&mut g, &unlink(2, 1));
        rule_err(g.from_exporter(&ret_unlink(1, 0)), Side::Exporter);
        rule_err(g.from_exporter(&ret(2, Direction::Out, 0)), Side::Exporter);
        // a reply ends the command: the second is unknown
        ok_exp(&mut g, &ret(1, Direction::In, 8));
        rule_err(g.from_exporter(&ret(1, Direction::In, 8)), Side::Exporter);
    }

    #[test]
    fn max_pending_is_enforced() {
        let mut g = UrbGuard::new(GuardLimits {
            max_pending: 3,
            ..GuardLimits::default()
        });
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        ok_imp(&mut g, &submit(2, Direction::In, 8));
        ok_imp(&mut g, &unlink(3, 1));
        rule_err(
            g.from_importer(&submit(4, Direction::In, 8)),
            Side::Importer,
        );
        rule_err(g.from_importer(&unlink(4, 2)), Side::Importer);
        ok_exp(&mut g, &ret(2, Direction::In, 0));
        ok_imp(&mut g, &submit(4, Direction::In, 8));
        assert_eq!(g.pending(), 3);
    }

    #[test]
    fn each_side_sends_only_its_kind() {
        let mut g = guard();
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        ok_imp(&mut g, &unlink(2, 1));
        rule_err(
            g.from_exporter(&submit(5, Direction::In, 8)),
            Side::Exporter,
        );
        rule_err(g.from_exporter(&unlink(6, 1)), Side::Exporter);
        rule_err(g.from_importer(&ret(1, Direction::In, 0)), Side::Importer);
        rule_err(g.from_importer(&ret_unlink(2, 0)), Side::Importer);
        // an unknown command word is refused before the rest of the message arrives
        let mut junk = 9u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&1u32.to_be_bytes());
        rule_err(g.from_importer(&junk), Side::Importer);
        rule_err(g.from_exporter(&junk), Side::Exporter);
        // codec errors are the sender's too
        let mut bad = submit(7, Direction::In, 8);
        bad[12..16].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(
            g.from_importer(&bad),
            Err(GuardError::Importer(Violation::Codec(_)))
        ));
    }

    #[test]
    fn actual_length_within_the_submit() {
        let mut g = guard();
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        rule_err(g.from_exporter(&ret(1, Direction::In, 9)), Side::Exporter);
        ok_imp(&mut g, &submit(2, Direction::Out, 8));
        rule_err(g.from_exporter(&ret(2, Direction::Out, 9)), Side::Exporter);
        assert_eq!(g.pending(), 2);
        ok_exp(&mut g, &ret(1, Direction::In, 8));
    }

    #[test]
    fn iso_packets_match_the_submit() {
        let mut g = guard();
        let desc = |offset, length, actual_length| IsoDescriptor {
            offset,
            length,
            actual_length,
            status: 0,
        };
        let iso_submit = encode_urb(&UrbMessage::CmdSubmit {
            basic: basic(1, Direction::In),
            transfer_flags: 0,
            transfer_buffer_length: 64,
            start_frame: 0,
            number_of_packets: 2,
            interval: 1,
            setup: [0; 8],
            data: vec![],
            iso: vec![desc(0, 32, 0), desc(32, 32, 0)],
        });
        ok_imp(&mut g, &iso_submit);
        let iso_ret = |iso: Vec<IsoDescriptor>| {
            let actual = iso.iter().map(|d| d.actual_length).sum::<u32>();
            encode_urb(&UrbMessage::RetSubmit {
                basic: Basic {
                    seqnum: 1,
                    devid: 0,
                    direction: Direction::Out,
                    ep: 0,
                },
                status: 0,
                actual_length: actual,
                start_frame: 0,
                number_of_packets: iso.len() as u32,
                error_count: 0,
                data: vec![0; actual as usize],
                iso,
            })
        };
        // a packet beyond the submit's buffer, a different packet count
        rule_err(
            g.from_exporter(&iso_ret(vec![desc(0, 32, 4), desc(40, 32, 4)])),
            Side::Exporter,
        );
        rule_err(
            g.from_exporter(&iso_ret(vec![desc(0, 32, 4)])),
            Side::Exporter,
        );
        // short packets: offsets beyond actual_length but within the buffer are fine
        ok_exp(&mut g, &iso_ret(vec![desc(0, 32, 4), desc(32, 32, 4)]));
        // no ISO on the control endpoint
        let mut ctl = iso_submit.clone();
        ctl[16..20].copy_from_slice(&0u32.to_be_bytes());
        rule_err(g.from_importer(&ctl), Side::Importer);
    }

    #[test]
    fn unlink_that_cancelled_ends_the_submit() {
        let mut g = guard();
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        ok_imp(&mut g, &unlink(2, 1));
        assert_eq!(g.pending(), 2);
        ok_exp(&mut g, &ret_unlink(2, -104));
        assert_eq!(g.pending(), 0);
        rule_err(g.from_exporter(&ret(1, Direction::In, 0)), Side::Exporter);
    }

    #[test]
    fn unlink_too_late_keeps_the_submit() {
        let mut g = guard();
        // RET_SUBMIT before RET_UNLINK (the stub's order)
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        ok_imp(&mut g, &unlink(2, 1));
        ok_exp(&mut g, &ret(1, Direction::In, 8));
        ok_exp(&mut g, &ret_unlink(2, 0));
        assert_eq!(g.pending(), 0);
        // RET_SUBMIT after a status-0 RET_UNLINK: tolerated once
        ok_imp(&mut g, &submit(3, Direction::Out, 8));
        ok_imp(&mut g, &unlink(4, 3));
        ok_exp(&mut g, &ret_unlink(4, 0));
        ok_exp(&mut g, &ret(3, Direction::Out, 8));
        rule_err(g.from_exporter(&ret(3, Direction::Out, 8)), Side::Exporter);
        // an unlink of something already answered (its reply crossed the unlink)
        ok_imp(&mut g, &unlink(5, 1));
        ok_exp(&mut g, &ret_unlink(5, 0));
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn late_set_is_bounded() {
        let mut g = UrbGuard::new(GuardLimits {
            max_pending: 2,
            ..GuardLimits::default()
        });
        for s in [1u32, 3, 5] {
            ok_imp(&mut g, &submit(s, Direction::In, 8));
            ok_imp(&mut g, &unlink(s + 1, s));
            ok_exp(&mut g, &ret_unlink(s + 1, 0));
        }
        assert_eq!(g.pending(), 0);
        // the oldest was dropped; the two newest may still be answered
        rule_err(g.from_exporter(&ret(1, Direction::In, 0)), Side::Exporter);
        ok_exp(&mut g, &ret(3, Direction::In, 0));
        ok_exp(&mut g, &ret(5, Direction::In, 0));
        // a seqnum in the late set counts as pending for a new command
        ok_imp(&mut g, &submit(7, Direction::In, 8));
        ok_imp(&mut g, &unlink(8, 7));
        ok_exp(&mut g, &ret_unlink(8, 0));
        rule_err(
            g.from_importer(&submit(7, Direction::In, 8)),
            Side::Importer,
        );
    }

    #[test]
    fn devid_is_checked() {
        let mut g = UrbGuard::new(GuardLimits {
            devid: Some(DEVID),
            ..GuardLimits::default()
        });
        ok_imp(&mut g, &submit(1, Direction::In, 8));
        let mut other = submit(2, Direction::In, 8);
        other[8..12].copy_from_slice(&0x0001_0003u32.to_be_bytes());
        rule_err(g.from_importer(&other), Side::Importer);
        let mut zero = submit(2, Direction::In, 8);
        zero[8..12].copy_from_slice(&0u32.to_be_bytes());
        rule_err(g.from_importer(&zero), Side::Importer);
        // replies: the devid or 0 (what the stub writes)
        let mut r = ret(1, Direction::In, 0);
        r[8..12].copy_from_slice(&0x0001_0003u32.to_be_bytes());
        rule_err(g.from_exporter(&r), Side::Exporter);
        r[8..12].copy_from_slice(&DEVID.to_be_bytes());
        ok_exp(&mut g, &r);
        ok_imp(&mut g, &submit(2, Direction::In, 8));
        ok_exp(&mut g, &ret(2, Direction::In, 0));
    }

    fn model(raw: Vec<u8>) -> DeviceEndpoints {
        DeviceEndpoints::new(crate::usbip::parse_descriptors(&raw).unwrap(), 1, &[])
    }

    fn guard_of(raw: Vec<u8>) -> UrbGuard {
        UrbGuard::new(GuardLimits {
            endpoints: Some(model(raw)),
            ..GuardLimits::default()
        })
    }

    /// A submit to `ep` with `packets` ISO packets of 8 bytes (0: not isochronous).
    fn submit_to(seqnum: u32, ep: u32, direction: Direction, packets: u32) -> Vec<u8> {
        let len = 8 * packets.max(1);
        encode_urb(&UrbMessage::CmdSubmit {
            basic: Basic {
                ep,
                ..basic(seqnum, direction)
            },
            transfer_flags: 0,
            transfer_buffer_length: len,
            start_frame: 0,
            number_of_packets: packets,
            interval: 1,
            setup: [0; 8],
            data: if direction == Direction::Out {
                vec![0; len as usize]
            } else {
                vec![]
            },
            iso: (0..packets)
                .map(|i| IsoDescriptor {
                    offset: 8 * i,
                    length: 8,
                    actual_length: 0,
                    status: 0,
                })
                .collect(),
        })
    }

    fn control(seqnum: u32, setup: [u8; 8]) -> Vec<u8> {
        encode_urb(&UrbMessage::CmdSubmit {
            basic: Basic {
                ep: 0,
                ..basic(seqnum, Direction::Out)
            },
            transfer_flags: 0,
            transfer_buffer_length: 0,
            start_frame: 0,
            number_of_packets: 0,
            interval: 0,
            setup,
            data: vec![],
            iso: vec![],
        })
    }

    fn ret_status(seqnum: u32, status: i32) -> Vec<u8> {
        encode_urb(&UrbMessage::RetSubmit {
            basic: Basic {
                seqnum,
                devid: 0,
                direction: Direction::Out,
                ep: 0,
            },
            status,
            actual_length: 0,
            start_frame: 0,
            number_of_packets: 0,
            error_count: 0,
            data: vec![],
            iso: vec![],
        })
    }

    fn ret_iso(seqnum: u32, packets: u32) -> Vec<u8> {
        encode_urb(&UrbMessage::RetSubmit {
            basic: Basic {
                seqnum,
                devid: 0,
                direction: Direction::Out,
                ep: 0,
            },
            status: 0,
            actual_length: 0,
            start_frame: 0,
            number_of_packets: packets,
            error_count: 0,
            data: vec![],
            iso: (0..packets)
                .map(|i| IsoDescriptor {
                    offset: 8 * i,
                    length: 8,
                    actual_length: 0,
                    status: 0,
                })
                .collect(),
        })
    }

    const SET_ALT_1_OF_1: [u8; 8] = [0x01, 0x0b, 1, 0, 1, 0, 0, 0];

    #[test]
    fn submits_only_to_endpoints_that_exist() {
        use crate::usbip::endpoints_build::mass_storage;
        let mut g = guard_of(mass_storage());
        ok_imp(&mut g, &submit_to(1, 1, Direction::In, 0));
        ok_imp(&mut g, &submit_to(2, 2, Direction::Out, 0));
        ok_imp(&mut g, &submit_to(3, 0, Direction::In, 0));
        // endpoint 3 does not exist; 1 OUT and 2 IN neither
        for (ep, dir) in [(3, Direction::In), (1, Direction::Out), (2, Direction::In)] {
            let e = guard_of(mass_storage())
                .from_importer(&submit_to(9, ep, dir, 0))
                .unwrap_err();
            assert!(
                e.to_string()
                    .contains("not in the device's current altsettings"),
                "{e}"
            );
        }
    }

    #[test]
    fn iso_only_on_isochronous_endpoints() {
        use crate::usbip::endpoints_build::{audio, mass_storage};
        // ISO on a bulk endpoint, on the control endpoint
        let e = guard_of(mass_storage())
            .from_importer(&submit_to(1, 1, Direction::In, 2))
            .unwrap_err();
        assert!(e.to_string().contains("not isochronous"), "{e}");
        rule_err(
            guard_of(mass_storage()).from_importer(&submit_to(1, 0, Direction::In, 1)),
            Side::Importer,
        );
        // an isochronous endpoint needs packets
        let mut g = guard_of(audio());
        ok_imp(&mut g, &control(1, SET_ALT_1_OF_1));
        ok_exp(&mut g, &ret_status(1, 0));
        let e = g
            .from_importer(&submit_to(2, 2, Direction::In, 0))
            .unwrap_err();
        assert!(e.to_string().contains("no ISO packets"), "{e}");
        ok_imp(&mut g, &submit_to(2, 2, Direction::In, 3));
        ok_exp(&mut g, &ret_iso(2, 3));
        // endpoints unknown: ISO on ep 1 is left to the codec
        ok_imp(&mut guard(), &submit_to(1, 1, Direction::In, 2));
    }

    #[test]
    fn not_iso_from_the_importer_is_refused() {
        use crate::usbip::endpoints_build::mass_storage;
        let mut raw = submit_to(1, 1, Direction::In, 0);
        raw[32..36].copy_from_slice(&NOT_ISO.to_be_bytes());
        let e = guard().from_importer(&raw).unwrap_err();
        assert!(e.to_string().contains("0xffffffff"), "{e}");
        rule_err(guard_of(mass_storage()).from_importer(&raw), Side::Importer);
        raw[16..20].copy_from_slice(&0u32.to_be_bytes());
        rule_err(guard().from_importer(&raw), Side::Importer);
    }

    #[test]
    fn set_interface_switches_after_its_reply() {
        use crate::usbip::endpoints_build::audio;
        let mut g = guard_of(audio());
        // alt 0 of interface 1 has no endpoint
        rule_err(
            guard_of(audio()).from_importer(&submit_to(9, 2, Direction::In, 1)),
            Side::Importer,
        );
        ok_imp(&mut g, &submit_to(1, 3, Direction::In, 0));
        ok_imp(&mut g, &control(2, SET_ALT_1_OF_1));
        // while the change is pending: no endpoint but 0, neither the old nor the new
        for (s, ep, n) in [(3, 3, 0), (4, 2, 1)] {
            let e = g
                .from_importer(&submit_to(s, ep, Direction::In, n))
                .unwrap_err();
            assert!(
                e.to_string().contains("configuration change is pending"),
                "{e}"
            );
        }
        let mut g = guard_of(audio());
        ok_imp(&mut g, &control(2, SET_ALT_1_OF_1));
        ok_imp(&mut g, &control(3, [0x80, 0x06, 0, 1, 0, 0, 0, 0]));
        ok_exp(&mut g, &ret_status(2, 0));
        assert_eq!(g.endpoints().and_then(|m| m.current_alt(1)), Some(1));
        ok_imp(&mut g, &submit_to(4, 2, Direction::In, 2));
        ok_imp(&mut g, &submit_to(5, 3, Direction::In, 0));
        ok_exp(&mut g, &ret_iso(4, 2));
    }

    #[test]
    fn failed_or_cancelled_set_interface() {
        use crate::usbip::endpoints_build::audio;
        let mut g = guard_of(audio());
        ok_imp(&mut g, &control(1, SET_ALT_1_OF_1));
        ok_exp(&mut g, &ret_status(1, -32));
        // the old map stands
        assert_eq!(g.endpoints().and_then(|m| m.current_alt(1)), Some(0));
        ok_imp(&mut g, &submit_to(2, 3, Direction::In, 0));
        rule_err(
            g.from_importer(&submit_to(3, 2, Direction::In, 1)),
            Side::Importer,
        );
        // an unlinked change: unknown whether it took, so only ep 0 remains, until a
        // SET_CONFIGURATION succeeds
        let mut g = guard_of(audio());
        ok_imp(&mut g, &control(1, SET_ALT_1_OF_1));
        ok_imp(&mut g, &unlink(2, 1));
        ok_exp(&mut g, &ret_unlink(2, -104));
        rule_err(
            g.from_importer(&submit_to(3, 3, Direction::In, 0)),
            Side::Importer,
        );
        ok_imp(&mut g, &control(4, [0x00, 0x09, 1, 0, 0, 0, 0, 0]));
        ok_exp(&mut g, &ret_status(4, 0));
        ok_imp(&mut g, &submit_to(5, 3, Direction::In, 0));
        // an unknown altsetting that the device accepted: only ep 0
        ok_imp(&mut g, &control(6, [0x01, 0x0b, 9, 0, 1, 0, 0, 0]));
        ok_exp(&mut g, &ret_status(6, 0));
        assert_eq!(g.endpoints().and_then(|m| m.active_config()), None);
        rule_err(
            g.from_importer(&submit_to(7, 3, Direction::In, 0)),
            Side::Importer,
        );
        ok_imp(&mut g, &submit_to(7, 0, Direction::In, 0));
    }

    #[test]
    fn set_configuration_must_name_a_configuration() {
        use crate::usbip::endpoints_build::mass_storage;
        let mut g = guard_of(mass_storage());
        rule_err(
            g.from_importer(&control(1, [0x00, 0x09, 2, 0, 0, 0, 0, 0])),
            Side::Importer,
        );
        ok_imp(&mut g, &control(1, [0x00, 0x09, 0, 0, 0, 0, 0, 0]));
        ok_exp(&mut g, &ret_status(1, 0));
        // unconfigured: no endpoints
        rule_err(
            g.from_importer(&submit_to(2, 1, Direction::In, 0)),
            Side::Importer,
        );
        ok_imp(&mut g, &control(2, [0x00, 0x09, 1, 0, 0, 0, 0, 0]));
        ok_exp(&mut g, &ret_status(2, 0));
        ok_imp(&mut g, &submit_to(3, 1, Direction::In, 0));
    }

    #[test]
    fn max_pending_bytes_is_enforced() {
        let mut g = UrbGuard::new(GuardLimits {
            max_pending_bytes: 100,
            ..GuardLimits::default()
        });
        ok_imp(&mut g, &submit(1, Direction::In, 60));
        ok_imp(&mut g, &submit(2, Direction::Out, 40));
        assert_eq!(g.pending_bytes(), 100);
        let e = g.from_importer(&submit(3, Direction::In, 1)).unwrap_err();
        assert!(e.to_string().contains("bytes of transfers pending"), "{e}");
        ok_exp(&mut g, &ret(1, Direction::In, 10));
        assert_eq!(g.pending_bytes(), 40);
        ok_imp(&mut g, &submit(3, Direction::In, 60));
        // cancelled and late-answered submits release their bytes too
        ok_imp(&mut g, &unlink(4, 3));
        ok_exp(&mut g, &ret_unlink(4, -104));
        ok_imp(&mut g, &unlink(5, 2));
        ok_exp(&mut g, &ret_unlink(5, 0));
        assert_eq!(g.pending_bytes(), 0);
        assert_eq!(GuardLimits::default().max_pending, 256);
        assert_eq!(GuardLimits::default().max_pending_bytes, 64 << 20);
    }
}
