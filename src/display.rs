//! Terminal-safe text: every string that comes from a file or a device (device names,
//! identities, paths, reasons, banners) is passed through [`escape`] (or [`Safe`]) before it
//! is printed, so nothing from outside can move the cursor, clear the screen, recolour the
//! terminal, split a line or reorder what is shown (bidi overrides). Pure; no I/O.
//!
//! What is escaped, and how:
//! - C0 controls and DEL: `\n`, `\r`, `\t`, `\0` by name, the rest as `\u{1b}` etc. ESC is
//!   what starts every terminal escape sequence; CR and LF split or overwrite lines.
//! - C1 controls (U+0080–U+009F): `\u{9b}` is a one-character CSI on many terminals.
//! - Bidirectional formatting (U+061C, U+200E–U+200F, U+202A–U+202E, U+2066–U+2069):
//!   "Trojan source" reordering makes `room-1` look like another name.
//! - Line and paragraph separators (U+2028, U+2029), zero-width and other invisible format
//!   characters (U+200B–U+200D, U+2060–U+2064, U+FEFF): they split lines or hide text.
//!
//! Everything else (letters of any script, punctuation, the backslash) is kept as is, so
//! ordinary names and paths print unchanged and cheaply ([`escape`] borrows when there is
//! nothing to escape).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal raw.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// `s` with every unsafe character escaped (see the module header); one line, always.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`escape`] but keeps `\n`: for multi-line text roomkey composed itself (a plan, a
/// list of problems) whose parts may come from outside. Each part that must stay on one
/// line is escaped with [`escape`] where it is formatted.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c != '\n' && is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A `Display` wrapper that escapes: `format!("{}", Safe(&name))`.
#[derive(Debug, Clone, Copy)]
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for s in ["room-301", "Zürich Raum 3", "会議室", "certs\\a.pem", ""] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn escape_sequences_and_line_breaks_are_escaped() {
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\r\ny\0"), "x\\r\\ny\\0");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert_eq!(escape("\u{7f}\u{9b}31m"), "\\u{7f}\\u{9b}31m");
        assert_eq!(escape("a\u{2028}b"), "a\\u{2028}b");
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_are_escaped() {
        assert_eq!(escape("room-\u{202E}1-moor"), "room-\\u{202e}1-moor");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape("a\u{200B}b\u{FEFF}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(escape("\u{61C}"), "\\u{61c}");
    }

    #[test]
    fn nothing_unsafe_survives_any_input() {
        // Every code point in the ranges that matter, one at a time and all together.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = escape(&all);
        assert!(!out.chars().any(is_unsafe));
        assert!(!out.contains('\u{1b}') && !out.contains('\n'));
    }

    #[test]
    fn text_keeps_its_own_newlines_only() {
        assert_eq!(escape_text("a\nb\u{1b}c\r"), "a\nb\\u{1b}c\\r");
        assert!(matches!(escape_text("a\nb"), Cow::Borrowed(_)));
        assert_eq!(Safe("x\u{1b}").to_string(), "x\\u{1b}");
    }
}
