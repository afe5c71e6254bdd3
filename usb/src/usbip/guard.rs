//! [`UrbGuard`]: the checker dom0 runs on a URB-phase USB/IP stream between two domains that
//! do not trust each other: the *importer* (the kernel's `vhci-hcd`, which sends
//! `USBIP_CMD_SUBMIT` / `USBIP_CMD_UNLINK`) and the *exporter* (the kernel's `usbip-host`
//! stub, which answers with `USBIP_RET_SUBMIT` / `USBIP_RET_UNLINK`).
//!
//! Every message is decoded with the codec's [`Limits`] and checked against what is pending
//! before the caller forwards its bytes unchanged:
//! - the importer sends only commands; a command's seqnum is not already pending; at most
//!   [`GuardLimits::max_pending`] submits and unlinks are pending; the control endpoint (0)
//!   carries no ISO packets;
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

use std::collections::{HashMap, VecDeque};

use super::{decode_urb, CodecError, Direction, Limits, UrbMessage, NOT_ISO};
use super::{CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Bounds the codec enforces on every message.
    pub codec: Limits,
    /// Most submits plus unlinks awaiting their reply.
    pub max_pending: usize,
    /// When set, the devid of the one device this stream carries.
    pub devid: Option<u32>,
    /// When set, the device's isochronous endpoints: a submit with ISO packets on any other
    /// endpoint is refused. (The exporting kernel reads ISO descriptors only for an
    /// isochronous endpoint; for another it would take those bytes as the next command, one
    /// this guard never checked.)
    pub iso_endpoints: Option<IsoEndpoints>,
}

/// Isochronous endpoints of a device, one bit per endpoint number and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IsoEndpoints {
    /// Bit n: endpoint n IN is isochronous.
    pub in_mask: u16,
    /// Bit n: endpoint n OUT is isochronous.
    pub out_mask: u16,
}

impl IsoEndpoints {
    /// Whether endpoint `ep` (0..=15) in `direction` is isochronous.
    pub fn contains(&self, ep: u32, direction: Direction) -> bool {
        let mask = match direction {
            Direction::In => self.in_mask,
            Direction::Out => self.out_mask,
        };
        ep < 16 && mask & (1 << ep) != 0
    }
}

impl Default for GuardLimits {
    fn default() -> Self {
        Self {
            codec: Limits::default(),
            max_pending: 1024,
            devid: None,
            iso_endpoints: None,
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
    pending: HashMap<u32, Pending>,
    /// Submits whose unlink answered 0 while they were pending: their `RET_SUBMIT` may
    /// still come, once. Bounded by `max_pending` through `late_order`.
    late: HashMap<u32, Submit>,
    late_order: VecDeque<u32>,
}

impl UrbGuard {
    pub fn new(limits: GuardLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            late: HashMap::new(),
            late_order: VecDeque::new(),
        }
    }

    /// Submits and unlinks awaiting their reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
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
                ..
            } => {
                self.check_devid(seqnum, basic.devid, false)?;
                let packets = packets(number_of_packets);
                if basic.ep == 0 && packets != 0 {
                    return Err(rule(seqnum, "ISO packets on the control endpoint"));
                }
                if let Some(iso) = self.limits.iso_endpoints {
                    if packets != 0 && !iso.contains(basic.ep, basic.direction) {
                        return Err(rule(
                            seqnum,
                            format!(
                                "ISO packets on endpoint {} {:?}, which is not isochronous",
                                basic.ep, basic.direction
                            ),
                        ));
                    }
                }
                self.make_room(seqnum)?;
                self.pending.insert(
                    seqnum,
                    Pending::Submit(Submit {
                        direction: basic.direction,
                        length: transfer_buffer_length,
                        packets,
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
        if self.pending.remove(&seqnum).is_none() {
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
            if target_pending {
                self.pending.remove(&target);
            }
            self.late.remove(&target);
        } else if let Some(Pending::Submit(s)) = self.pending.remove(&target) {
            // Completed before the unlink: its RET_SUBMIT may still come (or, after a race
            // in the stub, never).
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

    #[test]
    fn iso_packets_only_on_isochronous_endpoints_when_known() {
        let iso_on = |ep: u32| {
            encode_urb(&UrbMessage::CmdSubmit {
                basic: Basic {
                    ep,
                    ..basic(9, Direction::In)
                },
                transfer_flags: 0,
                transfer_buffer_length: 64,
                start_frame: 0,
                number_of_packets: 1,
                interval: 1,
                setup: [0; 8],
                data: vec![],
                iso: vec![IsoDescriptor {
                    offset: 0,
                    length: 64,
                    actual_length: 0,
                    status: 0,
                }],
            })
        };
        let limits = GuardLimits {
            iso_endpoints: Some(IsoEndpoints {
                in_mask: 1 << 2,
                out_mask: 0,
            }),
            ..GuardLimits::default()
        };
        let mut g = UrbGuard::new(limits);
        assert!(g.from_importer(&iso_on(2)).unwrap().is_some());
        let e = UrbGuard::new(limits).from_importer(&iso_on(1)).unwrap_err();
        assert!(e.to_string().contains("not isochronous"), "{e}");
        // unknown endpoint types: the codec's limits only
        assert!(UrbGuard::new(GuardLimits::default())
            .from_importer(&iso_on(1))
            .unwrap()
            .is_some());
    }
}
