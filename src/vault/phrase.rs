//! ClientSecret phrases and the two readings of a `populate` JWE (pure: no I/O besides the
//! OS random generator in [`generate_phrase`]).
//!
//! The seed says the plaintext of a `populate` JWE "is the new ClientSecret". The plaintext
//! first seeding sends base64url of the phrase and the KDF uses the phrase itself, so a
//! firmware may read the JWE plaintext either as the phrase (`raw`) or as base64url of it
//! (`base64url`: it decodes and holds the bytes). roomkey must always be able to name the
//! secret a device holds, so for every `Populate` it sends it computes here what the device
//! may hold afterwards under each reading ([`outcomes`]) and records those candidates in
//! the vault before the command leaves.
//!
//! Generated phrases ([`generate_phrase`]) are chosen so that the readings cannot collide
//! and a firmware that reads the other way refuses instead of adopting bytes nobody chose:
//!
//! - 41 characters from `A-Za-z0-9` with one `~` after the 21st (42 in all). `~` is in
//!   neither base64 alphabet (URL-safe or standard), so a strict decoder refuses the phrase.
//! - A lenient decoder that skips characters outside its alphabet is left with 41 (≡ 1 mod
//!   4) characters, and one that stops at the first such character with 21 (≡ 1 mod 4): no
//!   base64 text has that length (a lone trailing character carries 6 bits, not a byte), so
//!   those refuse too. No `-`, `_`, `+` or `/`, so both alphabets see the same characters.
//! - Sent to a base64url-reading firmware, a phrase goes as its base64url form (56
//!   characters of `A-Za-z0-9-_`, never a `~`); if that firmware turned out to read raw after
//!   all, it would hold that form — known, recorded, and never equal to a phrase (no `~`).
//!
//! 41 characters of 62 give 244 bits of entropy. A phrase typed by a room owner is checked
//! by [`check_owner_phrase`]: it must not be base64 text a decoding firmware could adopt.

use base64::Engine as _;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// How a firmware reads the plaintext of a `populate` JWE (recorded in the vault per device
/// and per software release once a proof has shown it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Reading {
    /// The plaintext bytes are the new phrase.
    Raw,
    /// The plaintext is base64url of the new phrase; the device decodes it.
    Base64url,
}

impl Reading {
    pub fn as_str(self) -> &'static str {
        match self {
            Reading::Raw => "raw",
            Reading::Base64url => "base64url",
        }
    }

    pub fn other(self) -> Reading {
        match self {
            Reading::Raw => Reading::Base64url,
            Reading::Base64url => Reading::Raw,
        }
    }
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Characters of the first part of a generated phrase, then of the second.
const HEAD: usize = 21;
const TAIL: usize = 20;
/// The character between them: outside both base64 alphabets.
const MARK: char = '~';
const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh ClientSecret phrase (see the module header for why it looks like this).
pub fn generate_phrase() -> Secret {
    let mut out = Zeroizing::new(String::with_capacity(HEAD + TAIL + 1));
    let mut buf = Zeroizing::new([0u8; 64]);
    let mut taken = 0;
    while taken < HEAD + TAIL {
        rand::rngs::OsRng.fill_bytes(buf.as_mut_slice());
        for &b in buf.iter() {
            // Rejection sampling: 248 = 4 × 62, so `b % 62` is uniform below it.
            if b >= 248 || taken == HEAD + TAIL {
                continue;
            }
            if taken == HEAD {
                out.push(MARK);
            }
            out.push(char::from(ALNUM[usize::from(b % 62)]));
            taken += 1;
        }
    }
    Secret::new(out.as_str())
}

/// Whether `text` is base64 some decoder could turn into bytes: strict URL-safe or standard
/// alphabet, with or without padding.
fn decodes(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD]
        .iter()
        .find_map(|e| e.decode(text).ok())
        .map(Zeroizing::new)
}

/// What a base64url-reading firmware would make of `plaintext`: the decoded bytes as text,
/// `None` when it would refuse (not base64url, empty, or not UTF-8 — roomkey keeps secrets
/// as text, so a phrase whose decoding is not text is refused by [`check_owner_phrase`]).
fn decoded_text(plaintext: &str) -> Option<Secret> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(plaintext.trim_end_matches('='))
        .ok()
        .map(Zeroizing::new)?;
    let text = std::str::from_utf8(&bytes).ok()?;
    (!text.is_empty()).then(|| Secret::new(text))
}

/// The plaintext of a `populate` JWE that gives a firmware reading `reading` the phrase.
pub fn plaintext(phrase: &Secret, reading: Reading) -> Zeroizing<Vec<u8>> {
    match reading {
        Reading::Raw => Zeroizing::new(phrase.as_bytes().to_vec()),
        Reading::Base64url => Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(phrase.as_bytes())
                .into_bytes(),
        ),
    }
}

/// Every secret a device may hold after accepting a `populate` JWE whose plaintext is
/// [`plaintext`]`(phrase, sent_as)`, with the reading that holding it reveals. The phrase
/// itself (under `sent_as`) comes first; what the other reading makes of the plaintext
/// follows when it would adopt something (a generated phrase sent raw: nothing, the other
/// reading refuses).
pub fn outcomes(phrase: &Secret, sent_as: Reading) -> Vec<(Secret, Reading)> {
    let mut out = vec![(phrase.clone(), sent_as)];
    let plain = plaintext(phrase, sent_as);
    let Ok(text) = std::str::from_utf8(&plain) else {
        return out;
    };
    let other = match sent_as {
        Reading::Raw => decoded_text(text),
        Reading::Base64url => Some(Secret::new(text)),
    };
    if let Some(s) = other.filter(|s| s != phrase) {
        out.push((s, sent_as.other()));
    }
    out
}

/// Checks a phrase a room owner typed. Besides the vault's own rules (not empty, no control
/// characters), it must be at least 12 characters and must not be base64 text: a firmware
/// that base64url-decodes the plaintext would refuse it rather than adopt bytes nobody
/// chose (a space or a character such as `.`, `!`, `~` anywhere is enough).
pub fn check_owner_phrase(phrase: &Secret) -> Result<(), &'static str> {
    let text = phrase.expose();
    if text.chars().count() < 12 {
        return Err("it is shorter than 12 characters");
    }
    if text.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    if decodes(text).is_some() || decodes(text.trim_end_matches('=')).is_some() {
        return Err(
            "it is valid base64 text, which a firmware that decodes the populate plaintext \
             would turn into other bytes; add a space or a character such as `.`, `!` or `~`",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_phrases_defeat_every_decoder() {
        for _ in 0..200 {
            let p = generate_phrase();
            let t = p.expose();
            assert_eq!(t.len(), 42);
            assert_eq!(t.find('~'), Some(21));
            assert!(t.chars().all(|c| c == '~' || c.is_ascii_alphanumeric()));
            // Strict decoders refuse; skipping or stopping at the `~` leaves a length no
            // base64 text has.
            assert!(decodes(t).is_none());
            let skipped: String = t.chars().filter(|c| *c != '~').collect();
            assert_eq!(skipped.len() % 4, 1);
            assert!(decodes(&skipped).is_none());
            assert!(decodes(&t[..21]).is_none());
            // Sent raw, the other reading adopts nothing; sent as base64url, the raw reading
            // would hold the base64url text, which is never a phrase.
            assert_eq!(outcomes(&p, Reading::Raw), vec![(p.clone(), Reading::Raw)]);
            let b = outcomes(&p, Reading::Base64url);
            assert_eq!(b.len(), 2);
            assert_eq!(b[0], (p.clone(), Reading::Base64url));
            assert_eq!(b[1].1, Reading::Raw);
            assert!(!b[1].0.expose().contains('~'));
            assert_eq!(b[1].0.expose().len(), 56);
            assert!(check_owner_phrase(&p).is_ok());
        }
        assert_ne!(generate_phrase(), generate_phrase());
    }

    #[test]
    fn plaintexts_and_the_other_readings_of_them() {
        let p = Secret::new("0123456789abcdef");
        assert_eq!(plaintext(&p, Reading::Raw).as_slice(), b"0123456789abcdef");
        assert_eq!(
            plaintext(&p, Reading::Base64url).as_slice(),
            b"MDEyMzQ1Njc4OWFiY2RlZg"
        );
        // A phrase that is itself base64url text: sent raw, a decoding firmware would hold
        // its decoding — a candidate too.
        let swordfish = Secret::new("c3dvcmRmaXNo");
        let o = outcomes(&swordfish, Reading::Raw);
        assert_eq!(o[1], (Secret::new("swordfish"), Reading::Base64url));
        let o = outcomes(&p, Reading::Base64url);
        assert_eq!(o[1], (Secret::new("MDEyMzQ1Njc4OWFiY2RlZg"), Reading::Raw));
    }

    #[test]
    fn owner_phrases_must_not_be_base64() {
        assert!(check_owner_phrase(&Secret::new("short one")).is_err());
        assert!(check_owner_phrase(&Secret::new("c3dvcmRmaXNoZXM")).is_err());
        assert!(check_owner_phrase(&Secret::new("Room301Room301Ro")).is_err());
        assert!(check_owner_phrase(&Secret::new("QUJDREVGR0hJSktM==")).is_err());
        assert!(check_owner_phrase(&Secret::new("blue kettle on the third floor")).is_ok());
        assert!(check_owner_phrase(&Secret::new("Room301.Room301")).is_ok());
        let err = check_owner_phrase(&Secret::new("tab\tinside phrase")).unwrap_err();
        assert!(err.contains("control"));
    }
}
