//! The URB phase after an import: `USBIP_CMD_SUBMIT`, `USBIP_RET_SUBMIT`, `USBIP_CMD_UNLINK`
//! and `USBIP_RET_UNLINK` with their data and ISO packet descriptors, decoded and encoded.

use super::{
    invalid, limit, CodecError, Limits, Rd, CMD_SUBMIT, CMD_UNLINK, ISO_DESCRIPTOR_SIZE, NOT_ISO,
    RET_SUBMIT, RET_UNLINK, URB_HEADER_SIZE,
};

/// Transfer direction of a URB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

/// The basic header of every URB message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basic {
    pub seqnum: u32,
    pub devid: u32,
    pub direction: Direction,
    /// Endpoint number 0..=15.
    pub ep: u32,
}

/// One ISO packet descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsoDescriptor {
    pub offset: u32,
    pub length: u32,
    pub actual_length: u32,
    pub status: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrbMessage {
    CmdSubmit {
        basic: Basic,
        transfer_flags: u32,
        transfer_buffer_length: u32,
        start_frame: i32,
        /// [`NOT_ISO`] for a transfer that is not isochronous.
        number_of_packets: u32,
        interval: i32,
        setup: [u8; 8],
        /// The OUT data (`transfer_buffer_length` bytes); empty for IN.
        data: Vec<u8>,
        iso: Vec<IsoDescriptor>,
    },
    RetSubmit {
        basic: Basic,
        status: i32,
        actual_length: u32,
        start_frame: i32,
        number_of_packets: u32,
        error_count: i32,
        /// The IN data (`actual_length` bytes); empty for OUT.
        data: Vec<u8>,
        iso: Vec<IsoDescriptor>,
    },
    CmdUnlink {
        basic: Basic,
        unlink_seqnum: u32,
    },
    RetUnlink {
        basic: Basic,
        status: i32,
    },
}

fn iso_count(n: u32, limits: &Limits) -> Result<usize, CodecError> {
    if n == NOT_ISO {
        return Ok(0);
    }
    limit(
        "number_of_packets",
        u64::from(n),
        u64::from(limits.max_iso_packets),
    )?;
    Ok(n as usize)
}

fn read_iso(
    r: &mut Rd<'_>,
    n: usize,
    buffer_len: u32,
) -> Result<Option<Vec<IsoDescriptor>>, CodecError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(raw) = r.take(ISO_DESCRIPTOR_SIZE) else {
            return Ok(None);
        };
        let mut d = Rd::new(raw);
        let (Some(offset), Some(length), Some(actual_length), Some(status)) =
            (d.u32(), d.u32(), d.u32(), d.u32())
        else {
            return Ok(None);
        };
        if u64::from(offset) + u64::from(length) > u64::from(buffer_len) {
            return Err(invalid(
                "iso packet",
                format!("offset {offset} + length {length} beyond the buffer of {buffer_len}"),
            ));
        }
        if actual_length > length {
            return Err(invalid("iso packet", "actual_length above length"));
        }
        out.push(IsoDescriptor {
            offset,
            length,
            actual_length,
            status,
        });
    }
    Ok(Some(out))
}

/// Decode one URB message from the start of `buf`. A `RET_SUBMIT` carries data only for IN
/// transfers, and its own direction field is 0, so `direction_of(seqnum)` tells the decoder
/// the direction of the command it answers (`None`: no such command is pending, an error).
pub fn decode_urb(
    buf: &[u8],
    limits: &Limits,
    direction_of: &dyn Fn(u32) -> Option<Direction>,
) -> Result<Option<(UrbMessage, usize)>, CodecError> {
    let mut r = Rd::new(buf);
    let Some(head) = r.take(URB_HEADER_SIZE) else {
        return Ok(None);
    };
    let mut h = Rd::new(head);
    // The header is URB_HEADER_SIZE bytes, more than every field below reads.
    let fields = (|| Some((h.u32()?, h.u32()?, h.u32()?, h.u32()?, h.u32()?)))();
    let Some((command, seqnum, devid, dir, ep)) = fields else {
        return Ok(None);
    };
    let direction = match dir {
        0 => Direction::Out,
        1 => Direction::In,
        other => return Err(invalid("direction", format!("{other} (expected 0 or 1)"))),
    };
    limit("ep", u64::from(ep), 15)?;
    let basic = Basic {
        seqnum,
        devid,
        direction,
        ep,
    };
    let msg = match command {
        CMD_SUBMIT => {
            let parts = (|| Some((h.u32()?, h.u32()?, h.i32()?, h.u32()?, h.i32()?, h.take(8)?)))();
            let Some((transfer_flags, len, start_frame, npk, interval, setup)) = parts else {
                return Ok(None);
            };
            limit(
                "transfer_buffer_length",
                u64::from(len),
                u64::from(limits.max_transfer),
            )?;
            let n = iso_count(npk, limits)?;
            let data = if direction == Direction::Out {
                let Some(d) = r.take(len as usize) else {
                    return Ok(None);
                };
                d.to_vec()
            } else {
                Vec::new()
            };
            let Some(iso) = read_iso(&mut r, n, len)? else {
                return Ok(None);
            };
            let mut s = [0u8; 8];
            s.copy_from_slice(setup);
            UrbMessage::CmdSubmit {
                basic,
                transfer_flags,
                transfer_buffer_length: len,
                start_frame,
                number_of_packets: npk,
                interval,
                setup: s,
                data,
                iso,
            }
        }
        RET_SUBMIT => {
            let parts = (|| Some((h.i32()?, h.u32()?, h.i32()?, h.u32()?, h.i32()?)))();
            let Some((status, actual, start_frame, npk, error_count)) = parts else {
                return Ok(None);
            };
            limit(
                "actual_length",
                u64::from(actual),
                u64::from(limits.max_transfer),
            )?;
            let n = iso_count(npk, limits)?;
            if error_count < 0 || error_count as u64 > n as u64 {
                return Err(invalid(
                    "error_count",
                    format!("{error_count} with {n} packets"),
                ));
            }
            let dir = direction_of(seqnum)
                .ok_or_else(|| invalid("seqnum", format!("{seqnum} answers no pending command")))?;
            let data = if dir == Direction::In {
                let Some(d) = r.take(actual as usize) else {
                    return Ok(None);
                };
                d.to_vec()
            } else {
                Vec::new()
            };
            // The descriptors' offsets index the submit's transfer buffer, which can be longer
            // than `actual_length` (short ISO packets), and the codec does not know that
            // buffer: bound them by the largest transfer here; `UrbGuard` checks them against
            // the submit's `transfer_buffer_length`.
            let Some(iso) = read_iso(&mut r, n, limits.max_transfer)? else {
                return Ok(None);
            };
            UrbMessage::RetSubmit {
                basic,
                status,
                actual_length: actual,
                start_frame,
                number_of_packets: npk,
                error_count,
                data,
                iso,
            }
        }
        CMD_UNLINK => {
            let Some(unlink_seqnum) = h.u32() else {
                return Ok(None);
            };
            UrbMessage::CmdUnlink {
                basic,
                unlink_seqnum,
            }
        }
        RET_UNLINK => {
            let Some(status) = h.i32() else {
                return Ok(None);
            };
            UrbMessage::RetUnlink { basic, status }
        }
        other => return Err(CodecError::Command(other)),
    };
    Ok(Some((msg, r.at)))
}

/// Encode a URB message (48-byte header, then data and ISO descriptors as the decoder
/// expects them).
pub fn encode_urb(msg: &UrbMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(URB_HEADER_SIZE);
    let put = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_be_bytes());
    let basic = |out: &mut Vec<u8>, cmd: u32, b: &Basic| {
        for v in [
            cmd,
            b.seqnum,
            b.devid,
            match b.direction {
                Direction::Out => 0,
                Direction::In => 1,
            },
            b.ep,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    };
    let iso = |out: &mut Vec<u8>, iso: &[IsoDescriptor]| {
        for d in iso {
            for v in [d.offset, d.length, d.actual_length, d.status] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    };
    match msg {
        UrbMessage::CmdSubmit {
            basic: b,
            transfer_flags,
            transfer_buffer_length,
            start_frame,
            number_of_packets,
            interval,
            setup,
            data,
            iso: descs,
        } => {
            basic(&mut out, CMD_SUBMIT, b);
            put(&mut out, *transfer_flags);
            put(&mut out, *transfer_buffer_length);
            put(&mut out, *start_frame as u32);
            put(&mut out, *number_of_packets);
            put(&mut out, *interval as u32);
            out.extend_from_slice(setup);
            out.extend_from_slice(data);
            iso(&mut out, descs);
        }
        UrbMessage::RetSubmit {
            basic: b,
            status,
            actual_length,
            start_frame,
            number_of_packets,
            error_count,
            data,
            iso: descs,
        } => {
            basic(&mut out, RET_SUBMIT, b);
            put(&mut out, *status as u32);
            put(&mut out, *actual_length);
            put(&mut out, *start_frame as u32);
            put(&mut out, *number_of_packets);
            put(&mut out, *error_count as u32);
            out.resize(URB_HEADER_SIZE, 0);
            out.extend_from_slice(data);
            iso(&mut out, descs);
        }
        UrbMessage::CmdUnlink {
            basic: b,
            unlink_seqnum,
        } => {
            basic(&mut out, CMD_UNLINK, b);
            put(&mut out, *unlink_seqnum);
            out.resize(URB_HEADER_SIZE, 0);
        }
        UrbMessage::RetUnlink { basic: b, status } => {
            basic(&mut out, RET_UNLINK, b);
            put(&mut out, *status as u32);
            out.resize(URB_HEADER_SIZE, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(dir: Direction) -> Basic {
        Basic {
            seqnum: 7,
            devid: 0x0001_0002,
            direction: dir,
            ep: 1,
        }
    }

    #[test]
    fn urbs_round_trip() {
        let limits = Limits::default();
        let dir_in = |_: u32| Some(Direction::In);
        let msgs = [
            UrbMessage::CmdSubmit {
                basic: basic(Direction::Out),
                transfer_flags: 0,
                transfer_buffer_length: 4,
                start_frame: 0,
                number_of_packets: NOT_ISO,
                interval: 0,
                setup: [0x21, 0x09, 0, 2, 0, 0, 1, 0],
                data: vec![1, 2, 3, 4],
                iso: vec![],
            },
            UrbMessage::CmdSubmit {
                basic: basic(Direction::In),
                transfer_flags: 0x200,
                transfer_buffer_length: 64,
                start_frame: 0,
                number_of_packets: 2,
                interval: 1,
                setup: [0; 8],
                data: vec![],
                iso: vec![
                    IsoDescriptor {
                        offset: 0,
                        length: 32,
                        actual_length: 0,
                        status: 0,
                    },
                    IsoDescriptor {
                        offset: 32,
                        length: 32,
                        actual_length: 0,
                        status: 0,
                    },
                ],
            },
            UrbMessage::RetSubmit {
                basic: Basic {
                    seqnum: 7,
                    devid: 0,
                    direction: Direction::Out,
                    ep: 0,
                },
                status: 0,
                actual_length: 8,
                start_frame: 0,
                number_of_packets: NOT_ISO,
                error_count: 0,
                data: vec![0, 0, 4, 0, 0, 0, 0, 0],
                iso: vec![],
            },
            UrbMessage::CmdUnlink {
                basic: basic(Direction::Out),
                unlink_seqnum: 6,
            },
            UrbMessage::RetUnlink {
                basic: basic(Direction::Out),
                status: -104,
            },
        ];
        for m in &msgs {
            let b = encode_urb(m);
            let (back, used) = decode_urb(&b, &limits, &dir_in).unwrap().unwrap();
            assert_eq!(&back, m);
            assert_eq!(used, b.len());
            for cut in 0..b.len() {
                assert_eq!(decode_urb(&b[..cut], &limits, &dir_in).unwrap(), None);
            }
        }
        assert_eq!(encode_urb(&msgs[3]).len(), URB_HEADER_SIZE);
    }

    #[test]
    fn urb_violations() {
        let limits = Limits::default();
        let dir_in = |_: u32| Some(Direction::In);
        let submit = UrbMessage::CmdSubmit {
            basic: basic(Direction::In),
            transfer_flags: 0,
            transfer_buffer_length: 8,
            start_frame: 0,
            number_of_packets: NOT_ISO,
            interval: 0,
            setup: [0; 8],
            data: vec![],
            iso: vec![],
        };
        let good = encode_urb(&submit);
        let mut b = good.clone();
        b[24..28].copy_from_slice(&(64u32 << 20).to_be_bytes());
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Limit {
                field: "transfer_buffer_length",
                ..
            })
        ));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&2u32.to_be_bytes());
        assert!(decode_urb(&b, &limits, &dir_in).is_err(), "direction 2");
        let mut b = good.clone();
        b[16..20].copy_from_slice(&16u32.to_be_bytes());
        assert!(decode_urb(&b, &limits, &dir_in).is_err(), "ep 16");
        let mut b = good.clone();
        b[0..4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Command(9))
        );
        let mut b = good.clone();
        b[32..36].copy_from_slice(&5000u32.to_be_bytes());
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Limit {
                field: "number_of_packets",
                ..
            })
        ));
        // an ISO packet beyond the buffer
        let mut b = good.clone();
        b[32..36].copy_from_slice(&1u32.to_be_bytes());
        for v in [4u32, 8, 0, 0] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert!(matches!(
            decode_urb(&b, &limits, &dir_in),
            Err(CodecError::Invalid {
                field: "iso packet",
                ..
            })
        ));
        // a reply to nothing pending
        let ret = encode_urb(&UrbMessage::RetUnlink {
            basic: basic(Direction::Out),
            status: 0,
        });
        let mut b = ret.clone();
        b[0..4].copy_from_slice(&RET_SUBMIT.to_be_bytes());
        assert!(decode_urb(&b, &limits, &|_| None).is_err());
    }
}
