//! The one type every secret travels in: ClientSecrets, SSH passwords, private keys,
//! vault passphrases. It zeroizes on drop and never shows its value through `Debug` or
//! `Display`, so a secret cannot leak into a log line, an error message or a panic by
//! accident; reading it needs an explicit `expose()`.

use zeroize::Zeroizing;

/// A secret string (zeroized on drop, redacted in `Debug`/`Display`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

/// What is shown wherever a secret would otherwise appear.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// Reads a secret from a file's text: one trailing newline (`\n` or `\r\n`) is dropped,
    /// nothing else is trimmed (a secret may legitimately contain spaces).
    pub fn from_file_text(text: Zeroizing<String>) -> Self {
        let mut s = text;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        }
        Secret(s)
    }

    /// The secret's value. Call only where the value is really needed (a KDF, an SSH auth).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("ossifrage");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "ossifrage");
    }

    #[test]
    fn file_text_drops_one_trailing_newline_only() {
        let s = Secret::from_file_text(Zeroizing::new("a b \r\n".to_string()));
        assert_eq!(s.expose(), "a b ");
        let s = Secret::from_file_text(Zeroizing::new("x\n\n".to_string()));
        assert_eq!(s.expose(), "x\n");
    }
}
