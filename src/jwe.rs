//! The Cisco RoomOS device JWE (RFC 7516 compact serialization, `alg: dir`, AES-GCM, with the
//! content key derived from the device ClientSecret by the `cisco-kdf` scrypt recipe).
//!
//! This module owns building, strictly parsing and decrypting that JWE exactly as devices
//! accept it (see `shared/spec/external-identity.md`): five parts with an empty encrypted-key
//! part, base64url without padding, header members in a fixed order, scrypt N=32768 r=8 p=1.
//! It is pure: no I/O, no async. scrypt is deliberately slow (tens of milliseconds, 32 MiB),
//! so async callers go through [`crate::kdf::KdfPool`], which runs [`derive_key`] off the
//! executor with bounded parallelism.
//!
//! Nothing here ever puts a secret, a derived key or a plaintext into an error or `Debug`.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::Secret;

/// scrypt cost for kdf version 1: N = 2^15 = 32768.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// The only `cisco-kdf` version devices know.
pub const KDF_VERSION: &str = "1";
/// Fresh random salt length we generate (the device requires at least [`MIN_SALT_LEN`]).
pub const SALT_LEN: usize = 16;
/// Minimum salt length the device accepts.
pub const MIN_SALT_LEN: usize = 4;
/// AES-GCM IV length (exactly).
pub const IV_LEN: usize = 12;
/// AES-GCM tag length (exactly).
pub const TAG_LEN: usize = 16;
/// Longest untrusted header value echoed back in an error message (keeps errors readable
/// when a header is garbage).
const MAX_ECHO: usize = 40;

/// What the device should do with the JWE's plaintext (`cisco-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Plaintext: the new ClientSecret (see [`populate_plaintext`]); empty resets it.
    Populate,
    /// Plaintext: certificate PEM followed by private key PEM.
    Add,
    /// Plaintext: lowercase hex SHA-1 fingerprint of the certificate DER.
    Activate,
    /// Plaintext: lowercase hex SHA-1 fingerprint of the certificate DER.
    Deactivate,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Populate,
        Action::Add,
        Action::Activate,
        Action::Deactivate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Populate => "populate",
            Action::Add => "add",
            Action::Activate => "activate",
            Action::Deactivate => "deactivate",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = JweError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| JweError::UnknownAction { action: echo(s) })
    }
}

/// Content encryption (`enc`): AES-GCM with a 128- or 256-bit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Enc {
    #[serde(rename = "A128GCM")]
    A128Gcm,
    #[serde(rename = "A256GCM")]
    A256Gcm,
}

impl Enc {
    pub const ALL: [Enc; 2] = [Enc::A128Gcm, Enc::A256Gcm];

    /// Key length in bytes (also the scrypt `dkLen`).
    pub fn key_len(self) -> usize {
        match self {
            Enc::A128Gcm => 16,
            Enc::A256Gcm => 32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Enc::A128Gcm => "A128GCM",
            Enc::A256Gcm => "A256GCM",
        }
    }
}

impl fmt::Display for Enc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Enc {
    type Err = JweError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Enc::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| JweError::UnknownEnc { enc: echo(s) })
    }
}

/// The protected header, minus what is fixed (`alg` is always `dir`, kdf version `"1"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub action: Action,
    pub enc: Enc,
    /// Raw salt bytes (not secret: they travel in the clear).
    pub salt: Vec<u8>,
}

impl Header {
    /// The header JSON with members in exactly the order devices (and the seed's worked
    /// example) use. Written by hand because serde's member order is not a contract.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"alg":"dir","cisco-action":"{}","cisco-kdf":{{"salt":"{}","version":"{}"}},"enc":"{}"}}"#,
            self.action,
            URL_SAFE_NO_PAD.encode(&self.salt),
            KDF_VERSION,
            self.enc
        )
    }
}

/// A structurally valid JWE, parsed but not decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedJwe {
    pub header: Header,
    /// The header part exactly as received: it is the AES-GCM additional authenticated data.
    pub header_b64: String,
    pub iv: [u8; IV_LEN],
    pub ciphertext: Vec<u8>,
    pub tag: [u8; TAG_LEN],
}

/// Which of the five compact parts an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    EncryptedKey,
    Iv,
    Ciphertext,
    Tag,
    /// `cisco-kdf.salt` inside the header.
    Salt,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "protected header (part 1)",
            Part::EncryptedKey => "encrypted key (part 2)",
            Part::Iv => "IV (part 3)",
            Part::Ciphertext => "ciphertext (part 4)",
            Part::Tag => "authentication tag (part 5)",
            Part::Salt => "cisco-kdf salt",
        })
    }
}

/// Everything that can be wrong with a device JWE, one variant per strict check.
/// Messages echo at most short, non-secret header values, never secrets, keys or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    #[error("a device JWE has 5 dot-separated parts (header..iv.ciphertext.tag), found {found}")]
    PartCount { found: usize },
    #[error("the encrypted-key part (part 2) must be empty for alg \"dir\"")]
    EncryptedKeyNotEmpty,
    #[error("{part} is not valid base64url")]
    Base64 { part: Part },
    #[error("{part} has '=' padding; the device requires base64url without padding")]
    Padding { part: Part },
    #[error("protected header is not a JSON object")]
    HeaderNotJson,
    #[error("protected header lacks member {member:?} (or it is not a string)")]
    MissingMember { member: &'static str },
    #[error("unsupported alg {alg:?}: the device only accepts \"dir\"")]
    UnsupportedAlg { alg: String },
    #[error("unknown enc {enc:?}: expected \"A128GCM\" or \"A256GCM\"")]
    UnknownEnc { enc: String },
    #[error("unknown cisco-action {action:?}: expected populate, add, activate or deactivate")]
    UnknownAction { action: String },
    #[error("cisco-kdf version {version:?} is not supported: the device only accepts \"1\"")]
    KdfVersion { version: String },
    #[error("cisco-kdf salt is {len} bytes; the device needs at least 4")]
    SaltTooShort { len: usize },
    #[error("IV is {len} bytes; AES-GCM here needs exactly 12")]
    IvLength { len: usize },
    #[error("authentication tag is {len} bytes; it must be exactly 16")]
    TagLength { len: usize },
    #[error("content key is {got} bytes; {enc} needs {expected}")]
    KeyLength {
        enc: Enc,
        expected: usize,
        got: usize,
    },
    #[error("JWE authentication failed: wrong secret or tampered")]
    Authentication,
    #[error("encryption failed (plaintext too long for AES-GCM)")]
    Encrypt,
    #[error("key derivation (scrypt) failed: {0}")]
    Kdf(String),
    #[error("the operating system random number generator failed: {0}")]
    Rng(String),
}

/// Truncates an untrusted header value before it goes into an error message.
fn echo(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_ECHO).collect();
        t.push('…');
        t
    }
}

fn b64_decode(part: Part, s: &str) -> Result<Vec<u8>, JweError> {
    if s.contains('=') {
        return Err(JweError::Padding { part });
    }
    // URL_SAFE_NO_PAD also refuses non-canonical trailing bits, so one JWE has one spelling.
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JweError::Base64 { part })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Parses and checks a compact JWE without decrypting it (needs no secret).
///
/// Surrounding ASCII whitespace (e.g. a trailing newline from a file) is ignored; whitespace
/// inside is not (it makes a part invalid base64url). Unknown extra header members are
/// tolerated; missing or wrong ones are refused precisely.
pub fn parse(compact: &str) -> Result<ParsedJwe, JweError> {
    let compact = compact.trim_matches(|c: char| c.is_ascii_whitespace());
    let parts: Vec<&str> = compact.split('.').collect();
    let [header_b64, enc_key, iv_b64, ct_b64, tag_b64] = parts.as_slice() else {
        return Err(JweError::PartCount { found: parts.len() });
    };
    if !enc_key.is_empty() {
        return Err(JweError::EncryptedKeyNotEmpty);
    }
    let header_bytes = b64_decode(Part::Header, header_b64)?;
    let header = parse_header(&header_bytes)?;
    let iv_vec = b64_decode(Part::Iv, iv_b64)?;
    let ciphertext = b64_decode(Part::Ciphertext, ct_b64)?;
    let tag_vec = b64_decode(Part::Tag, tag_b64)?;
    let iv: [u8; IV_LEN] = iv_vec
        .as_slice()
        .try_into()
        .map_err(|_| JweError::IvLength { len: iv_vec.len() })?;
    let tag: [u8; TAG_LEN] = tag_vec
        .as_slice()
        .try_into()
        .map_err(|_| JweError::TagLength { len: tag_vec.len() })?;
    Ok(ParsedJwe {
        header,
        header_b64: (*header_b64).to_string(),
        iv,
        ciphertext,
        tag,
    })
}

fn str_member<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    member: &'static str,
) -> Result<&'a str, JweError> {
    obj.get(member)
        .and_then(|v| v.as_str())
        .ok_or(JweError::MissingMember { member })
}

fn parse_header(bytes: &[u8]) -> Result<Header, JweError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| JweError::HeaderNotJson)?;
    let obj = value.as_object().ok_or(JweError::HeaderNotJson)?;
    let alg = str_member(obj, "alg")?;
    if alg != "dir" {
        return Err(JweError::UnsupportedAlg { alg: echo(alg) });
    }
    let enc: Enc = str_member(obj, "enc")?.parse()?;
    let action: Action = str_member(obj, "cisco-action")?.parse()?;
    let kdf = obj
        .get("cisco-kdf")
        .and_then(|v| v.as_object())
        .ok_or(JweError::MissingMember {
            member: "cisco-kdf",
        })?;
    let version = kdf
        .get("version")
        .and_then(|v| v.as_str())
        .ok_or(JweError::MissingMember {
            member: "cisco-kdf.version",
        })?;
    if version != KDF_VERSION {
        return Err(JweError::KdfVersion {
            version: echo(version),
        });
    }
    let salt_b64 = kdf
        .get("salt")
        .and_then(|v| v.as_str())
        .ok_or(JweError::MissingMember {
            member: "cisco-kdf.salt",
        })?;
    let salt = b64_decode(Part::Salt, salt_b64)?;
    if salt.len() < MIN_SALT_LEN {
        return Err(JweError::SaltTooShort { len: salt.len() });
    }
    Ok(Header { action, enc, salt })
}

/// Derives the content key: `scrypt(secret, salt, N=32768, r=8, p=1, dkLen=enc.key_len())`.
/// Blocking and slow (~32 MiB, tens of ms): async code must use [`crate::kdf::KdfPool`].
pub fn derive_key(secret: &[u8], salt: &[u8], enc: Enc) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, enc.key_len())
        .map_err(|e| JweError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new(vec![0u8; enc.key_len()]);
    scrypt::scrypt(secret, salt, &params, &mut key).map_err(|e| JweError::Kdf(e.to_string()))?;
    Ok(key)
}

fn check_key(enc: Enc, key: &[u8]) -> Result<(), JweError> {
    if key.len() == enc.key_len() {
        Ok(())
    } else {
        Err(JweError::KeyLength {
            enc,
            expected: enc.key_len(),
            got: key.len(),
        })
    }
}

/// Builds the compact JWE from an already derived key, salt and IV (no scrypt, no RNG).
/// Production code uses [`seal`]; this exists for tests, known-answer vectors and benchmarks —
/// reusing a salt/IV pair with the same key breaks AES-GCM.
pub fn seal_with_key(
    action: Action,
    enc: Enc,
    key: &[u8],
    salt: &[u8],
    iv: &[u8; IV_LEN],
    plaintext: &[u8],
) -> Result<String, JweError> {
    check_key(enc, key)?;
    if salt.len() < MIN_SALT_LEN {
        return Err(JweError::SaltTooShort { len: salt.len() });
    }
    let header = Header {
        action,
        enc,
        salt: salt.to_vec(),
    };
    let header_b64 = b64(header.to_json().as_bytes());
    let mut buf = Zeroizing::new(plaintext.to_vec());
    let nonce = Nonce::from_slice(iv);
    let tag = match enc {
        Enc::A128Gcm => Aes128Gcm::new_from_slice(key)
            .map_err(|_| JweError::KeyLength {
                enc,
                expected: enc.key_len(),
                got: key.len(),
            })?
            .encrypt_in_place_detached(nonce, header_b64.as_bytes(), &mut buf),
        Enc::A256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(|_| JweError::KeyLength {
                enc,
                expected: enc.key_len(),
                got: key.len(),
            })?
            .encrypt_in_place_detached(nonce, header_b64.as_bytes(), &mut buf),
    }
    .map_err(|_| JweError::Encrypt)?;
    Ok(format!(
        "{header_b64}..{}.{}.{}",
        b64(iv),
        b64(&buf),
        b64(tag.as_slice())
    ))
}

/// Decrypts a parsed JWE with an already derived key (no scrypt).
pub fn open_with_key(jwe: &ParsedJwe, key: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let enc = jwe.header.enc;
    check_key(enc, key)?;
    let mut buf = Zeroizing::new(jwe.ciphertext.clone());
    let nonce = Nonce::from_slice(&jwe.iv);
    let tag = Tag::from_slice(&jwe.tag);
    let aad = jwe.header_b64.as_bytes();
    let key_err = |_| JweError::KeyLength {
        enc,
        expected: enc.key_len(),
        got: key.len(),
    };
    match enc {
        Enc::A128Gcm => Aes128Gcm::new_from_slice(key)
            .map_err(key_err)?
            .decrypt_in_place_detached(nonce, aad, &mut buf, tag),
        Enc::A256Gcm => Aes256Gcm::new_from_slice(key)
            .map_err(key_err)?
            .decrypt_in_place_detached(nonce, aad, &mut buf, tag),
    }
    .map_err(|_| JweError::Authentication)?;
    Ok(buf)
}

fn random_bytes(out: &mut [u8]) -> Result<(), JweError> {
    OsRng
        .try_fill_bytes(out)
        .map_err(|e| JweError::Rng(e.to_string()))
}

/// Builds a device JWE: fresh 16-byte salt and 12-byte IV from the OS CSPRNG, key from the
/// ClientSecret by scrypt. Blocking (scrypt): async code uses [`crate::kdf::KdfPool::seal`].
pub fn seal(
    action: Action,
    enc: Enc,
    secret: &Secret,
    plaintext: &[u8],
) -> Result<String, JweError> {
    let mut salt = [0u8; SALT_LEN];
    let mut iv = [0u8; IV_LEN];
    random_bytes(&mut salt)?;
    random_bytes(&mut iv)?;
    let key = derive_key(secret.as_bytes(), &salt, enc)?;
    seal_with_key(action, enc, &key, &salt, &iv, plaintext)
}

/// Builds a device JWE under an already derived key for `salt`, with a fresh random 12-byte
/// IV from the OS CSPRNG (no scrypt). One key may seal many JWEs this way: AES-GCM stays
/// safe under one key as long as no IV repeats, and random 96-bit IVs make a repeat
/// negligible for far more messages than a device session sends (NIST SP 800-38D allows
/// 2^32). Used by [`crate::kdf::SessionKeys`] for every JWE of one device session.
pub fn seal_fresh_iv(
    action: Action,
    enc: Enc,
    key: &[u8],
    salt: &[u8],
    plaintext: &[u8],
) -> Result<String, JweError> {
    let mut iv = [0u8; IV_LEN];
    random_bytes(&mut iv)?;
    seal_with_key(action, enc, key, salt, &iv, plaintext)
}

/// A fresh random salt of [`SALT_LEN`] bytes from the OS CSPRNG.
pub fn fresh_salt() -> Result<[u8; SALT_LEN], JweError> {
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    Ok(salt)
}

/// Parses, derives the key from `secret` and the header's salt, and decrypts.
/// Blocking (scrypt): async code uses [`crate::kdf::KdfPool::open`].
pub fn open(compact: &str, secret: &Secret) -> Result<(Header, Zeroizing<Vec<u8>>), JweError> {
    let jwe = parse(compact)?;
    let key = derive_key(secret.as_bytes(), &jwe.header.salt, jwe.header.enc)?;
    let plaintext = open_with_key(&jwe, &key)?;
    Ok((jwe.header, plaintext))
}

/// The plaintext of a `populate` JWE that changes the ClientSecret to `new_secret`.
///
/// The seed does not say whether the device expects the raw phrase or its base64url form
/// (the form used for the plaintext first seeding). This product sends the **raw phrase
/// bytes**; this function is the single place that decision lives, so changing it is a
/// one-line edit. An empty `new_secret` yields an empty payload, which resets the secret.
pub fn populate_plaintext(new_secret: &Secret) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(new_secret.as_bytes().to_vec())
}

/// The value of the very first, plaintext `Populate Secret: "..."`: base64url without
/// padding of the phrase (`0123456789abcdef` → `MDEyMzQ1Njc4OWFiY2RlZg`).
/// The result is as sensitive as the secret itself: never log it.
pub fn initial_populate_value(secret: &Secret) -> String {
    b64(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The seed's worked example (spec: "Worked example", with the erratum applied).
    const EX_SALT: [u8; 8] = [0xE5, 0xE6, 0x53, 0x08, 0x03, 0xF8, 0x33, 0xF6];
    const EX_KEY: [u8; 16] = [
        0x95, 0x9e, 0xba, 0x6d, 0xd1, 0x22, 0x01, 0x05, 0x78, 0xfe, 0x6a, 0x9d, 0x22, 0x78, 0xff,
        0xac,
    ];
    const EX_IV: [u8; 12] = [
        0x34, 0xb3, 0x5d, 0xdd, 0x5f, 0x53, 0x7b, 0xaf, 0x2d, 0x92, 0x95, 0x83,
    ];
    const EX_HEADER: &str = "eyJhbGciOiJkaXIiLCJjaXNjby1hY3Rpb24iOiJhZGQiLCJjaXNjby1rZGYiOnsic2FsdCI6IjVlWlRDQVA0TV9ZIiwidmVyc2lvbiI6IjEifSwiZW5jIjoiQTEyOEdDTSJ9";
    const EX_TAIL: &str = "NLNd3V9Te68tkpWD.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ1Q";
    const EX_PLAINTEXT: &[u8] = b"this is a PEM file";

    fn example() -> String {
        format!("{EX_HEADER}..{EX_TAIL}")
    }

    #[test]
    fn seed_vector_parts() {
        assert_eq!(b64(&EX_SALT), "5eZTCAP4M_Y");
        assert_eq!(b64(&EX_KEY), "lZ66bdEiAQV4_mqdInj_rA");
        assert_eq!(b64(&EX_IV), "NLNd3V9Te68tkpWD");
        let h = Header {
            action: Action::Add,
            enc: Enc::A128Gcm,
            salt: EX_SALT.to_vec(),
        };
        assert_eq!(
            h.to_json(),
            r#"{"alg":"dir","cisco-action":"add","cisco-kdf":{"salt":"5eZTCAP4M_Y","version":"1"},"enc":"A128GCM"}"#
        );
        assert_eq!(b64(h.to_json().as_bytes()), EX_HEADER);
    }

    #[test]
    fn seed_vector_scrypt() {
        let key = derive_key(b"ossifrage", &EX_SALT, Enc::A128Gcm).unwrap();
        assert_eq!(key.as_slice(), &EX_KEY);
    }

    #[test]
    fn seed_vector_seal_byte_for_byte() {
        let jwe = seal_with_key(
            Action::Add,
            Enc::A128Gcm,
            &EX_KEY,
            &EX_SALT,
            &EX_IV,
            EX_PLAINTEXT,
        )
        .unwrap();
        assert_eq!(jwe, example());
    }

    #[test]
    fn seed_vector_open_with_secret() {
        let (header, pt) = open(&example(), &Secret::new("ossifrage")).unwrap();
        assert_eq!(header.action, Action::Add);
        assert_eq!(header.enc, Enc::A128Gcm);
        assert_eq!(header.salt, EX_SALT);
        assert_eq!(pt.as_slice(), EX_PLAINTEXT);
    }

    #[test]
    fn seed_erratum_garbled_string_is_refused() {
        // The string as printed in seed 000: a '9' moved from the header's end to after "..".
        let garbled = format!("{}..9{EX_TAIL}", EX_HEADER.strip_suffix('9').unwrap());
        assert!(parse(&garbled).is_err());
    }

    #[test]
    fn round_trips_all_actions_and_encs_with_key() {
        for enc in Enc::ALL {
            let key = vec![7u8; enc.key_len()];
            for action in Action::ALL {
                let pt = format!("payload for {action}");
                let jwe = seal_with_key(action, enc, &key, &[1, 2, 3, 4], &[9; 12], pt.as_bytes())
                    .unwrap();
                let parsed = parse(&jwe).unwrap();
                assert_eq!(parsed.header.action, action);
                assert_eq!(parsed.header.enc, enc);
                assert_eq!(
                    open_with_key(&parsed, &key).unwrap().as_slice(),
                    pt.as_bytes()
                );
            }
        }
    }

    #[test]
    fn round_trip_with_scrypt_both_encs() {
        let secret = Secret::new("correct horse");
        for enc in Enc::ALL {
            let jwe = seal(Action::Activate, enc, &secret, b"00ff").unwrap();
            let (h, pt) = open(&jwe, &secret).unwrap();
            assert_eq!(h.salt.len(), SALT_LEN);
            assert_eq!(h.enc, enc);
            assert_eq!(pt.as_slice(), b"00ff");
            assert_eq!(
                open(&jwe, &Secret::new("wrong horse")).unwrap_err(),
                JweError::Authentication
            );
        }
    }

    #[test]
    fn seal_uses_fresh_salt_and_iv() {
        let s = Secret::new("x");
        let a = parse(&seal(Action::Add, Enc::A128Gcm, &s, b"p").unwrap()).unwrap();
        let b = parse(&seal(Action::Add, Enc::A128Gcm, &s, b"p").unwrap()).unwrap();
        assert_ne!(a.header.salt, b.header.salt);
        assert_ne!(a.iv, b.iv);
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let key = [3u8; 32];
        let jwe =
            seal_with_key(Action::Populate, Enc::A256Gcm, &key, &[0; 4], &[0; 12], b"").unwrap();
        assert!(open_with_key(&parse(&jwe).unwrap(), &key)
            .unwrap()
            .is_empty());
    }

    // ---- one test per strict check -------------------------------------------------------

    fn hdr(json: &str) -> String {
        b64(json.as_bytes())
    }

    fn with_header(json: &str) -> String {
        format!("{}..{EX_TAIL}", hdr(json))
    }

    const GOOD_JSON: &str = r#"{"alg":"dir","cisco-action":"add","cisco-kdf":{"salt":"5eZTCAP4M_Y","version":"1"},"enc":"A128GCM"}"#;

    #[test]
    fn err_part_count() {
        assert_eq!(
            parse("a.b.c").unwrap_err(),
            JweError::PartCount { found: 3 }
        );
        assert_eq!(
            parse(&format!("{}.x", example())).unwrap_err(),
            JweError::PartCount { found: 6 }
        );
    }

    #[test]
    fn err_encrypted_key_not_empty() {
        let s = format!("{EX_HEADER}.AAAA.{EX_TAIL}");
        assert_eq!(parse(&s).unwrap_err(), JweError::EncryptedKeyNotEmpty);
    }

    #[test]
    fn err_base64_each_part() {
        let bad = "ab+c"; // '+' is standard base64, not base64url
        let parts = [
            EX_HEADER,
            "",
            "NLNd3V9Te68tkpWD",
            "f5lLVuWNfKfmzYCo1YJfODhQ",
            "PE-wDFWGXFFBeo928cfZ1Q",
        ];
        for (i, part) in [
            (0, Part::Header),
            (2, Part::Iv),
            (3, Part::Ciphertext),
            (4, Part::Tag),
        ] {
            let mut p = parts.map(str::to_string);
            p[i] = bad.to_string();
            assert_eq!(
                parse(&p.join(".")).unwrap_err(),
                JweError::Base64 { part },
                "{part}"
            );
        }
        // Non-canonical trailing bits are refused too (final 'R' differs from 'Q' only there).
        let s = format!(
            "{EX_HEADER}..NLNd3V9Te68tkpWD.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ1R"
        );
        assert!(matches!(parse(&s).unwrap_err(), JweError::Base64 { .. }));
    }

    #[test]
    fn err_padding() {
        let s = format!(
            "{EX_HEADER}..NLNd3V9Te68tkpWD.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ1Q=="
        );
        assert_eq!(
            parse(&s).unwrap_err(),
            JweError::Padding { part: Part::Tag }
        );
        let json = GOOD_JSON.replace("5eZTCAP4M_Y", "5eZTCAP4M_Y=");
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::Padding { part: Part::Salt }
        );
    }

    #[test]
    fn err_header_not_json() {
        assert_eq!(
            parse(&with_header("{not json")).unwrap_err(),
            JweError::HeaderNotJson
        );
        assert_eq!(
            parse(&with_header("[1,2]")).unwrap_err(),
            JweError::HeaderNotJson
        );
    }

    #[test]
    fn err_alg() {
        let json = GOOD_JSON.replace(r#""dir""#, r#""A128KW""#);
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::UnsupportedAlg {
                alg: "A128KW".into()
            }
        );
    }

    #[test]
    fn err_unknown_enc() {
        let json = GOOD_JSON.replace("A128GCM", "A192GCM");
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::UnknownEnc {
                enc: "A192GCM".into()
            }
        );
    }

    #[test]
    fn err_unknown_action() {
        let json = GOOD_JSON.replace(r#""add""#, r#""remove""#);
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::UnknownAction {
                action: "remove".into()
            }
        );
    }

    #[test]
    fn err_kdf_version() {
        let json = GOOD_JSON.replace(r#""version":"1""#, r#""version":"2""#);
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::KdfVersion {
                version: "2".into()
            }
        );
        // A number 1 is not the string "1".
        let json = GOOD_JSON.replace(r#""version":"1""#, r#""version":1"#);
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::MissingMember {
                member: "cisco-kdf.version"
            }
        );
    }

    #[test]
    fn err_salt_too_short() {
        let json = GOOD_JSON.replace("5eZTCAP4M_Y", "AAEC"); // 3 bytes
        assert_eq!(
            parse(&with_header(&json)).unwrap_err(),
            JweError::SaltTooShort { len: 3 }
        );
        assert_eq!(
            seal_with_key(Action::Add, Enc::A128Gcm, &EX_KEY, &[1, 2, 3], &EX_IV, b"").unwrap_err(),
            JweError::SaltTooShort { len: 3 }
        );
    }

    #[test]
    fn err_iv_length() {
        let s = format!(
            "{EX_HEADER}..AAAAAAAAAAAAAAAA{}",
            "AA.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ1Q"
        );
        assert_eq!(parse(&s).unwrap_err(), JweError::IvLength { len: 13 });
    }

    #[test]
    fn err_tag_length() {
        let s =
            format!("{EX_HEADER}..NLNd3V9Te68tkpWD.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ");
        assert_eq!(parse(&s).unwrap_err(), JweError::TagLength { len: 15 });
    }

    #[test]
    fn err_missing_members() {
        for (member, json) in [
            (
                "alg",
                r#"{"cisco-action":"add","cisco-kdf":{"salt":"5eZTCAP4M_Y","version":"1"},"enc":"A128GCM"}"#,
            ),
            (
                "enc",
                r#"{"alg":"dir","cisco-action":"add","cisco-kdf":{"salt":"5eZTCAP4M_Y","version":"1"}}"#,
            ),
            (
                "cisco-action",
                r#"{"alg":"dir","cisco-kdf":{"salt":"5eZTCAP4M_Y","version":"1"},"enc":"A128GCM"}"#,
            ),
            (
                "cisco-kdf",
                r#"{"alg":"dir","cisco-action":"add","enc":"A128GCM"}"#,
            ),
            (
                "cisco-kdf.salt",
                r#"{"alg":"dir","cisco-action":"add","cisco-kdf":{"version":"1"},"enc":"A128GCM"}"#,
            ),
        ] {
            assert_eq!(
                parse(&with_header(json)).unwrap_err(),
                JweError::MissingMember { member },
                "{member}"
            );
        }
    }

    #[test]
    fn err_authentication_tampered() {
        let key = EX_KEY;
        // Flip one ciphertext bit.
        let mut p = parse(&example()).unwrap();
        p.ciphertext[0] ^= 1;
        assert_eq!(
            open_with_key(&p, &key).unwrap_err(),
            JweError::Authentication
        );
        // Re-encode the header (same JSON, different AAD spelling is impossible, so change
        // the action instead): header is authenticated.
        let forged = format!(
            "{}..{EX_TAIL}",
            hdr(&GOOD_JSON.replace(r#""add""#, r#""activate""#))
        );
        assert_eq!(
            open_with_key(&parse(&forged).unwrap(), &key).unwrap_err(),
            JweError::Authentication
        );
        // Wrong key.
        let p = parse(&example()).unwrap();
        assert_eq!(
            open_with_key(&p, &[0u8; 16]).unwrap_err(),
            JweError::Authentication
        );
        assert_eq!(
            JweError::Authentication.to_string(),
            "JWE authentication failed: wrong secret or tampered"
        );
    }

    #[test]
    fn err_key_length() {
        let p = parse(&example()).unwrap();
        assert_eq!(
            open_with_key(&p, &[0u8; 32]).unwrap_err(),
            JweError::KeyLength {
                enc: Enc::A128Gcm,
                expected: 16,
                got: 32
            }
        );
    }

    #[test]
    fn long_untrusted_values_are_truncated_in_errors() {
        let long = "x".repeat(500);
        let json = GOOD_JSON.replace("A128GCM", &long);
        let msg = parse(&with_header(&json)).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn whitespace_around_is_tolerated() {
        assert!(parse(&format!("{}\n", example())).is_ok());
    }

    #[test]
    fn populate_helpers() {
        let s = Secret::new("0123456789abcdef");
        assert_eq!(initial_populate_value(&s), "MDEyMzQ1Njc4OWFiY2RlZg");
        assert_eq!(populate_plaintext(&s).as_slice(), b"0123456789abcdef");
    }

    #[test]
    fn action_and_enc_strings() {
        for a in Action::ALL {
            assert_eq!(a.to_string().parse::<Action>().unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        for e in Enc::ALL {
            assert_eq!(e.to_string().parse::<Enc>().unwrap(), e);
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{e}\""));
        }
        assert_eq!(Enc::A128Gcm.key_len(), 16);
        assert_eq!(Enc::A256Gcm.key_len(), 32);
    }

    #[test]
    fn errors_and_debug_do_not_leak_secret_or_plaintext() {
        let secret = Secret::new("ossifrage");
        let err = open(&example(), &Secret::new("not-it")).unwrap_err();
        let p = parse(&example()).unwrap();
        let text = format!("{err} {err:?} {p:?} {secret:?}");
        assert!(!text.contains("ossifrage"));
        assert!(!text.contains("PEM file"));
    }
}
