//! Title and app id sanitising (gui.md §6 rule 3, Qubes' `sanitize_string_from_vm`).

/// How titles are filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TitleMode {
    /// Only printable ASCII 0x20..=0x7E; every other byte becomes `_` (Qubes' default).
    #[default]
    Ascii,
    /// Well-formed UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF); each invalid
    /// sequence, control character, bidi control and zero-width/format character becomes `_`.
    Utf8,
}

/// Characters refused in UTF-8 mode although they are valid code points: bidi controls,
/// zero-width and other invisible format characters, line/paragraph separators, tags.
pub fn is_refused_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'                  // soft hyphen
            | '\u{034F}'                // combining grapheme joiner
            | '\u{061C}'                // arabic letter mark
            | '\u{115F}' | '\u{1160}'   // hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'   // mongolian selectors / vowel separator
            | '\u{200B}'..='\u{200F}'   // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}'   // separators, LRE RLE PDF LRO RLO
            | '\u{2060}'..='\u{206F}'   // word joiner, invisible operators, LRI RLI FSI PDI, deprecated
            | '\u{3164}'                // hangul filler
            | '\u{FE00}'..='\u{FE0F}'   // variation selectors
            | '\u{FEFF}'                // zero-width no-break space
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotation
            | '\u{1D173}'..='\u{1D17A}' // musical format characters
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
        )
}

/// The title to show for raw guest bytes (already at most `MAX_TITLE_LEN` bytes by the
/// protocol). Never fails; dom0 adds the `[domain]` prefix itself when drawing.
pub fn sanitize_title(raw: &[u8], mode: TitleMode) -> String {
    match mode {
        TitleMode::Ascii => raw
            .iter()
            .map(|&b| {
                if (0x20..=0x7E).contains(&b) {
                    char::from(b)
                } else {
                    '_'
                }
            })
            .collect(),
        TitleMode::Utf8 => {
            let mut out = String::with_capacity(raw.len());
            for chunk in raw.utf8_chunks() {
                out.extend(
                    chunk
                        .valid()
                        .chars()
                        .map(|c| if is_refused_char(c) { '_' } else { c }),
                );
                if !chunk.invalid().is_empty() {
                    out.push('_');
                }
            }
            out
        }
    }
}

/// The app id to keep: printable ASCII without spaces; everything else becomes `_`.
pub fn sanitize_app_id(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| {
            if (0x21..=0x7E).contains(&b) {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_mode_keeps_printable_ascii_only() {
        assert_eq!(
            sanitize_title(b"Hello, World ~!", TitleMode::Ascii),
            "Hello, World ~!"
        );
        assert_eq!(
            sanitize_title(b"a\x1b[31mb\x7f\n", TitleMode::Ascii),
            "a_[31mb__"
        );
        assert_eq!(
            sanitize_title("caf\u{e9}".as_bytes(), TitleMode::Ascii),
            "caf__"
        );
    }

    #[test]
    fn utf8_mode_refuses_invalid_control_bidi_and_zero_width() {
        assert_eq!(
            sanitize_title("café ✓".as_bytes(), TitleMode::Utf8),
            "café ✓"
        );
        // Overlong '/', a surrogate (ED A0 80), a truncated sequence.
        assert_eq!(sanitize_title(b"a\xc0\xafb", TitleMode::Utf8), "a__b");
        assert_eq!(sanitize_title(b"a\xed\xa0\x80b", TitleMode::Utf8), "a___b");
        assert_eq!(sanitize_title(b"x\xe2\x82", TitleMode::Utf8), "x_");
        // Bidi override making "txt.exe" look like "exe.txt", zero-width space, BOM, LRI.
        assert_eq!(
            sanitize_title("a\u{202E}txt.exe".as_bytes(), TitleMode::Utf8),
            "a_txt.exe"
        );
        assert_eq!(
            sanitize_title("p\u{200B}a\u{FEFF}y\u{2066}".as_bytes(), TitleMode::Utf8),
            "p_a_y_"
        );
        assert_eq!(
            sanitize_title("a\tb\u{85}".as_bytes(), TitleMode::Utf8),
            "a_b_"
        );
    }

    #[test]
    fn app_ids() {
        assert_eq!(sanitize_app_id(b"org.gnome.Foo"), "org.gnome.Foo");
        assert_eq!(sanitize_app_id(b"a b\x00\xff"), "a_b__");
    }
}
