//! Rules for names that cross a domain boundary: file names in a copy stream, symlink
//! targets, the source domain's name.
//!
//! A name component is accepted when it is
//! - valid UTF-8, 1..=[`MAX_NAME_BYTES`] bytes,
//! - not `.` or `..`, without `/` and without NUL,
//! - free of control characters (Unicode category Cc: C0, DEL, C1) and of the invisible
//!   direction controls that can make `evil.exe.txt` look like something else
//!   (U+200E, U+200F, U+202A..=U+202E, U+2066..=U+2069).
//!
//! Anything else is refused, never rewritten: a receiver that silently renamed would make
//! the sender's and receiver's views of the tree differ.

use std::fmt;

/// Longest file name component (bytes), as on Linux file systems.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest symlink target (bytes), PATH_MAX minus the NUL.
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name is not valid UTF-8")]
    NotUtf8,
    #[error("name is {0} bytes long; at most {MAX_NAME_BYTES} are allowed")]
    TooLong(usize),
    #[error("`.` and `..` are not file names")]
    Dots,
    #[error("name contains `/`")]
    Slash,
    #[error("name contains the control character U+{0:04X}")]
    Control(u32),
    #[error("name contains the invisible direction control U+{0:04X}")]
    Bidi(u32),
}

/// Characters that change the display order of text (Unicode bidi controls).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks one file name component (raw bytes from a peer).
pub fn check_component(raw: &[u8]) -> Result<&str, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(raw.len()));
    }
    let s = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if s == "." || s == ".." {
        return Err(NameError::Dots);
    }
    for c in s.chars() {
        if c == '/' {
            return Err(NameError::Slash);
        }
        if c.is_control() {
            return Err(NameError::Control(c as u32));
        }
        if is_bidi_control(c) {
            return Err(NameError::Bidi(c as u32));
        }
    }
    Ok(s)
}

/// Makes a safe file name out of anything (used for the single file of open-in-vm, where
/// only an extension matters): invalid characters become `_`, the result is cut at
/// [`MAX_NAME_BYTES`] / 2 bytes on a character boundary, `file` if nothing is left.
pub fn sanitize_component(raw: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for c in lossy.chars() {
        let ok = !(c == '/' || c == '\u{fffd}' || c.is_control() || is_bidi_control(c));
        let c = if ok { c } else { '_' };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES / 2 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() || out == "." || out == ".." {
        return "file".into();
    }
    out
}

/// Formats raw bytes from a peer for a message: lossy UTF-8 with control characters escaped.
pub struct Shown<'a>(pub &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 300;
        let s = String::from_utf8_lossy(self.0);
        f.write_str("'")?;
        for (n, c) in s.chars().enumerate() {
            if n >= MAX {
                f.write_str("...")?;
                break;
            }
            if c.is_control() || is_bidi_control(c) || c == '\'' || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        f.write_str("'")
    }
}

/// Why a symlink was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymlinkError {
    #[error("a symlink at the top of a copy would point outside the copied tree")]
    TopLevel,
    #[error("empty target")]
    Empty,
    #[error("target is {0} bytes long; at most {MAX_SYMLINK_TARGET} are allowed")]
    TooLong(usize),
    #[error("absolute target")]
    Absolute,
    #[error("`..` after a name in the target (only leading `..` are allowed)")]
    DotDotInside,
    #[error(
        "target climbs {ups} levels but the link is only {depth} levels deep in the copied tree"
    )]
    Escapes { ups: usize, depth: usize },
    #[error("target component: {0}")]
    Name(NameError),
}

/// Checks that a symlink stays inside the copied tree.
///
/// `link_depth` is the number of components of the link's own path in the transfer
/// (`top/d/link` is 3). The target must be relative, made of `k` leading `..` followed by
/// plain names (no `.`, no empty components, no `..` after a name), with `k <= link_depth
/// - 2`, i.e. it never climbs above the top directory of the copy. By induction every link
/// of a tree accepted under this rule resolves inside the tree, even through other links,
/// because `..` is never applied to a link's result. Top-level symlinks are refused.
pub fn check_symlink_target(link_depth: usize, raw: &[u8]) -> Result<&str, SymlinkError> {
    if link_depth < 2 {
        return Err(SymlinkError::TopLevel);
    }
    if raw.is_empty() {
        return Err(SymlinkError::Empty);
    }
    if raw.len() > MAX_SYMLINK_TARGET {
        return Err(SymlinkError::TooLong(raw.len()));
    }
    let s = std::str::from_utf8(raw).map_err(|_| SymlinkError::Name(NameError::NotUtf8))?;
    if s.starts_with('/') {
        return Err(SymlinkError::Absolute);
    }
    let mut ups = 0usize;
    let mut seen_name = false;
    for comp in s.split('/') {
        if comp == ".." {
            if seen_name {
                return Err(SymlinkError::DotDotInside);
            }
            ups += 1;
        } else {
            check_component(comp.as_bytes()).map_err(SymlinkError::Name)?;
            seen_name = true;
        }
    }
    let depth = link_depth - 2;
    if ups > depth {
        return Err(SymlinkError::Escapes { ups, depth });
    }
    Ok(s)
}

/// The source domain name given by domaind (`BULKHEAD_REMOTE_DOMAIN`): a valid domain name,
/// or `dom0` for calls from the admin domain.
pub fn check_source_domain(name: &str) -> Result<(), bulkhead_domain::NameError> {
    if name == "dom0" {
        return Ok(());
    }
    bulkhead_domain::validate_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        assert_eq!(check_component(b"report.pdf"), Ok("report.pdf"));
        assert_eq!(
            check_component("résumé ünïcode".as_bytes()),
            Ok("résumé ünïcode")
        );
        assert_eq!(check_component(b""), Err(NameError::Empty));
        assert_eq!(check_component(b"."), Err(NameError::Dots));
        assert_eq!(check_component(b".."), Err(NameError::Dots));
        assert_eq!(check_component(b"..."), Ok("..."));
        assert_eq!(check_component(b"a/b"), Err(NameError::Slash));
        assert_eq!(check_component(b"/"), Err(NameError::Slash));
        assert_eq!(check_component(b"a\nb"), Err(NameError::Control(10)));
        assert_eq!(check_component(b"a\0b"), Err(NameError::Control(0)));
        assert_eq!(check_component(b"a\x7fb"), Err(NameError::Control(0x7f)));
        assert_eq!(
            check_component("a\u{85}b".as_bytes()),
            Err(NameError::Control(0x85))
        );
        assert_eq!(
            check_component("cod\u{202e}fdp.exe".as_bytes()),
            Err(NameError::Bidi(0x202e))
        );
        assert_eq!(check_component(b"\xff\xfe"), Err(NameError::NotUtf8));
        assert_eq!(check_component(&[b'a'; 256]), Err(NameError::TooLong(256)));
        assert!(check_component(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_component(b"../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize_component(b".."), "file");
        assert_eq!(sanitize_component(b""), "file");
        assert_eq!(sanitize_component(b"a\nb\xff.txt"), "a_b_.txt");
        assert!(sanitize_component(&[b'x'; 1000]).len() <= MAX_NAME_BYTES / 2);
        assert_eq!(sanitize_component("é".repeat(200).as_bytes()).len() % 2, 0);
    }

    #[test]
    fn symlinks() {
        assert_eq!(check_symlink_target(2, b"x"), Ok("x"));
        assert_eq!(check_symlink_target(3, b"../x"), Ok("../x"));
        assert_eq!(check_symlink_target(3, b".."), Ok(".."));
        assert_eq!(
            check_symlink_target(3, b"../../x"),
            Err(SymlinkError::Escapes { ups: 2, depth: 1 })
        );
        assert_eq!(
            check_symlink_target(2, b"../x"),
            Err(SymlinkError::Escapes { ups: 1, depth: 0 })
        );
        assert_eq!(check_symlink_target(1, b"x"), Err(SymlinkError::TopLevel));
        assert_eq!(
            check_symlink_target(5, b"/etc/passwd"),
            Err(SymlinkError::Absolute)
        );
        assert_eq!(
            check_symlink_target(5, b"a/../../x"),
            Err(SymlinkError::DotDotInside)
        );
        assert_eq!(
            check_symlink_target(5, b"a/./x"),
            Err(SymlinkError::Name(NameError::Dots))
        );
        assert_eq!(
            check_symlink_target(5, b"a//x"),
            Err(SymlinkError::Name(NameError::Empty))
        );
        assert_eq!(
            check_symlink_target(5, b"a/"),
            Err(SymlinkError::Name(NameError::Empty))
        );
        assert_eq!(check_symlink_target(5, b""), Err(SymlinkError::Empty));
        assert_eq!(
            check_symlink_target(5, b"a\x01"),
            Err(SymlinkError::Name(NameError::Control(1)))
        );
    }

    #[test]
    fn source_domains() {
        assert!(check_source_domain("work").is_ok());
        assert!(check_source_domain("disp1234").is_ok());
        assert!(check_source_domain("dom0").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "x\n", &"a".repeat(40)] {
            assert!(check_source_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shown_escapes() {
        assert_eq!(Shown(b"a\nb").to_string(), "'a\\nb'");
        assert_eq!(Shown(b"\xff").to_string(), "'\u{fffd}'");
    }
}
