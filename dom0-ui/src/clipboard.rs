//! The secure clipboard's dom0 side: what the copy and paste chords mean, and the one dom0
//! buffer between a copy and a paste. Data is never parsed or shown; only its size and where
//! it came from are.

use bytes::Bytes;

/// Default most bytes dom0 keeps from a domain's clipboard (Qubes' default).
pub const DEFAULT_MAX_BYTES: usize = 64_000;

/// A key chord dom0 keeps for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chord {
    /// Ctrl-Shift-C: take the focused domain's clipboard into dom0.
    Copy,
    /// Ctrl-Shift-V: paste dom0's clipboard into the focused domain.
    Paste,
}

/// The chord a key press is, if any: Ctrl and Shift held (Alt and Super not), and the key
/// C or V (by keysym name, either case, so it follows the dom0 keyboard layout).
pub fn chord(key_name: &str, ctrl: bool, shift: bool, alt_or_super: bool) -> Option<Chord> {
    if !ctrl || !shift || alt_or_super {
        return None;
    }
    match key_name {
        "c" | "C" => Some(Chord::Copy),
        "v" | "V" => Some(Chord::Paste),
        _ => None,
    }
}

/// What dom0 holds between a copy and a paste.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Domain it came from.
    pub source: String,
    /// The bytes.
    pub data: Bytes,
}

/// Result of storing a domain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Kept: (source, bytes).
    Kept(String, usize),
    /// The domain's clipboard was empty (or the agent could not read it).
    Empty(String),
    /// Larger than the cap: nothing kept (the previous contents are dropped too).
    TooBig(String, usize),
}

/// The dom0 clipboard.
#[derive(Debug)]
pub struct Buffer {
    max: usize,
    held: Option<Held>,
}

impl Buffer {
    /// Empty, keeping at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max, held: None }
    }

    /// Stores a domain's answer to a copy request.
    pub fn store(&mut self, source: &str, data: Bytes) -> Stored {
        self.held = None;
        if data.is_empty() {
            return Stored::Empty(source.to_owned());
        }
        if data.len() > self.max {
            return Stored::TooBig(source.to_owned(), data.len());
        }
        let n = data.len();
        self.held = Some(Held {
            source: source.to_owned(),
            data,
        });
        Stored::Kept(source.to_owned(), n)
    }

    /// What is held, without taking it.
    pub fn peek(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Takes the contents for a paste (the buffer is empty afterwards).
    pub fn take(&mut self) -> Option<Held> {
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chords_need_ctrl_and_shift_only() {
        assert_eq!(chord("C", true, true, false), Some(Chord::Copy));
        assert_eq!(chord("v", true, true, false), Some(Chord::Paste));
        assert_eq!(chord("c", true, false, false), None);
        assert_eq!(chord("c", false, true, false), None);
        assert_eq!(chord("c", true, true, true), None);
        assert_eq!(chord("x", true, true, false), None);
    }

    #[test]
    fn buffer_caps_and_clears_after_a_paste() {
        let mut b = Buffer::new(4);
        assert_eq!(
            b.store("work", Bytes::from_static(b"abcd")),
            Stored::Kept("work".into(), 4)
        );
        assert_eq!(b.peek().map(|h| h.source.as_str()), Some("work"));
        assert_eq!(
            b.store("vault", Bytes::from_static(b"abcde")),
            Stored::TooBig("vault".into(), 5)
        );
        // A refused copy does not leave older contents behind.
        assert_eq!(b.peek(), None);
        b.store("work", Bytes::from_static(b"x"));
        assert_eq!(b.take().map(|h| h.data), Some(Bytes::from_static(b"x")));
        assert_eq!(b.take(), None);
        assert_eq!(b.store("work", Bytes::new()), Stored::Empty("work".into()));
    }
}
