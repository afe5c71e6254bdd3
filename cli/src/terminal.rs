//! Output from a domain is hostile: on a terminal, escape sequences could repaint the
//! screen, retitle the window, or in some terminals answer back as typed input. Like
//! Qubes' `qvm-run`, we replace control characters before domain bytes reach a terminal:
//! C0 controls except tab and newline, DEL, C1 controls, and invalid UTF-8 become `_`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

const REPLACEMENT: u8 = b'_';

/// A streaming filter: UTF-8 sequences split across chunks are held until complete.
#[derive(Default)]
pub struct EscapeFilter {
    pending: Vec<u8>,
}

impl EscapeFilter {
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    push_text(text, out);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid_up_to` guarantees this prefix is UTF-8.
                    push_text(std::str::from_utf8(valid).unwrap_or_default(), out);
                    match e.error_len() {
                        Some(bad) => {
                            out.push(REPLACEMENT);
                            rest = &after[bad..];
                        }
                        // An incomplete sequence at the end: wait for the next chunk.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
    }

    /// End of input: an unfinished sequence is invalid.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.push(REPLACEMENT);
            self.pending.clear();
        }
    }
}

fn push_text(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        let allowed = c == '\n' || c == '\t' || !(c.is_control());
        if allowed {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        } else {
            out.push(REPLACEMENT);
        }
    }
}

/// Copies `from` to `to` through the filter until end of file (run on a thread).
pub fn pump(from: OwnedFd, mut to: impl Write) -> std::io::Result<()> {
    let mut from = std::fs::File::from(from);
    let mut filter = EscapeFilter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(buf.len());
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.clear();
        filter.push(&buf[..n], &mut out);
        to.write_all(&out)?;
        to.flush()?;
    }
    out.clear();
    filter.finish(&mut out);
    to.write_all(&out)?;
    to.flush()
}

/// For text from a domain shown in one line (error messages quoting a domain's log).
pub fn sanitize_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.finish(&mut out);
        out
    }

    #[test]
    fn plain_text_tabs_and_newlines_pass() {
        assert_eq!(filter_chunks(&[b"a\tb\nc"]), b"a\tb\nc");
    }

    #[test]
    fn escape_sequences_are_defused() {
        // Retitle the window, clear the screen, ring the bell, carriage-return overwrite.
        let out = filter_chunks(&[b"\x1b]0;owned\x07\x1b[2J\rX\x7f"]);
        assert_eq!(out, b"_]0;owned__[2J_X_");
    }

    #[test]
    fn c1_controls_and_invalid_utf8_are_replaced() {
        // U+009B (CSI as a C1 control, UTF-8 c2 9b), a raw 0x9b byte, a lone continuation.
        assert_eq!(filter_chunks(&[b"\xc2\x9b[31m", b"\x9bx\x80"]), b"_[31m_x_");
    }

    #[test]
    fn utf8_split_across_chunks_is_kept() {
        let snow = "☃".as_bytes();
        assert_eq!(filter_chunks(&[&snow[..1], &snow[1..2], &snow[2..]]), snow);
        assert_eq!(filter_chunks(&["é".as_bytes()]), "é".as_bytes());
    }

    #[test]
    fn truncated_sequence_at_end_is_replaced() {
        assert_eq!(filter_chunks(&[b"ok\xe2\x98"]), b"ok_");
    }

    #[test]
    fn one_line_sanitizer() {
        assert_eq!(sanitize_line("log: \x1b[31mred\x07"), "log: _[31mred_");
    }
}
