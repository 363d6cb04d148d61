//! The vault file format (pure: bytes in, bytes out; no I/O).
//!
//! Version 1 layout (all integers big-endian):
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 13   | magic `ROOMKEY-VAULT`                   |
//! | 13     | 2    | format version (1)                      |
//! | 15     | 1    | kdf id (1 = scrypt)                     |
//! | 16     | 1    | scrypt log2(N)                          |
//! | 17     | 4    | scrypt r                                |
//! | 21     | 4    | scrypt p                                |
//! | 25     | 16   | salt                                    |
//! | 41     | 12   | AES-GCM nonce                           |
//! | 53     | ...  | AES-256-GCM ciphertext + 16-byte tag    |
//!
//! The whole 53-byte header is the AEAD's associated data, so changing any header byte
//! (version, kdf parameters, salt, nonce) fails authentication like a wrong passphrase.
//! The plaintext is the JSON of [`super::model::Document`]. The version is read before
//! anything else, so a newer file is reported as such even if its layout differs.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::secret::Secret;

pub const MAGIC: &[u8; 13] = b"ROOMKEY-VAULT";
/// The newest format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const KDF_SCRYPT: u8 = 1;
pub const HEADER_LEN: usize = 53;
pub const SALT_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// scrypt cost parameters, stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// N = 32768, r = 8, p = 1.
    fn default() -> Self {
        KdfParams {
            log_n: 15,
            r: 8,
            p: 1,
        }
    }
}

/// Largest scrypt memory (128·r·N bytes) a header may ask for: a tampered header must not
/// make `open` allocate without bound.
const MAX_KDF_MEMORY: u64 = 1 << 30;

impl KdfParams {
    /// Accepts only parameters at least as strong as the default and within a memory cap.
    pub fn check(self) -> Result<(), &'static str> {
        if self.log_n < 15 || self.log_n > 24 {
            return Err("scrypt log2(N) out of range 15..=24");
        }
        if self.r < 8 || self.r > 64 || self.p == 0 || self.p > 16 {
            return Err("scrypt r or p out of range");
        }
        let memory = 128u64 * u64::from(self.r) * (1u64 << self.log_n);
        if memory > MAX_KDF_MEMORY {
            return Err("scrypt parameters need more than 1 GiB");
        }
        Ok(())
    }
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kdf: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..13].copy_from_slice(MAGIC);
        out[13..15].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[15] = KDF_SCRYPT;
        out[16] = self.kdf.log_n;
        out[17..21].copy_from_slice(&self.kdf.r.to_be_bytes());
        out[21..25].copy_from_slice(&self.kdf.p.to_be_bytes());
        out[25..41].copy_from_slice(&self.salt);
        out[41..53].copy_from_slice(&self.nonce);
        out
    }
}

/// Why a file could not be decoded (the caller adds the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    NotAVault,
    UnsupportedVersion(u16),
    CorruptHeader(&'static str),
    /// Authentication failed: wrong passphrase or modified bytes.
    Decrypt,
    Kdf,
}

/// Splits a file into its header and the ciphertext (tag included).
pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), FormatError> {
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(FormatError::NotAVault);
    }
    let version = bytes
        .get(13..15)
        .and_then(|v| <[u8; 2]>::try_from(v).ok())
        .map(u16::from_be_bytes)
        .ok_or(FormatError::CorruptHeader("file is truncated"))?;
    if version != FORMAT_VERSION {
        // Version 0 was never written; anything else is from a newer roomkey.
        return Err(FormatError::UnsupportedVersion(version));
    }
    let head = bytes
        .get(..HEADER_LEN)
        .ok_or(FormatError::CorruptHeader("file is truncated"))?;
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    if body.len() < TAG_LEN {
        return Err(FormatError::CorruptHeader("file is truncated"));
    }
    let be32 = |r: std::ops::Range<usize>| {
        head.get(r)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or(FormatError::CorruptHeader("file is truncated"))
    };
    let kdf_id = head.get(15).copied();
    if kdf_id != Some(KDF_SCRYPT) {
        return Err(FormatError::CorruptHeader(
            "unknown key-derivation function",
        ));
    }
    let kdf = KdfParams {
        log_n: head.get(16).copied().unwrap_or_default(),
        r: be32(17..21)?,
        p: be32(21..25)?,
    };
    kdf.check().map_err(FormatError::CorruptHeader)?;
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(head.get(25..41).unwrap_or(&[0u8; SALT_LEN]));
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(head.get(41..53).unwrap_or(&[0u8; NONCE_LEN]));
    Ok((Header { kdf, salt, nonce }, body))
}

/// The 32-byte file key: scrypt(passphrase, salt).
pub fn derive_key(
    passphrase: &Secret,
    salt: &[u8; SALT_LEN],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, FormatError> {
    kdf.check().map_err(FormatError::CorruptHeader)?;
    let params = scrypt::Params::new(kdf.log_n, kdf.r, kdf.p, 32).map_err(|_| FormatError::Kdf)?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase.as_bytes(), salt, &params, key.as_mut_slice())
        .map_err(|_| FormatError::Kdf)?;
    Ok(key)
}

/// Encrypts `plaintext` into a complete file.
pub fn seal(key: &[u8; 32], header: &Header, plaintext: &[u8]) -> Result<Vec<u8>, FormatError> {
    let aad = header.to_bytes();
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| FormatError::Kdf)?;
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&header.nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| FormatError::Decrypt)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.extend_from_slice(&aad);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts and authenticates a file's body against its header.
pub fn open(
    key: &[u8; 32],
    header: &Header,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    let aad = header.to_bytes();
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| FormatError::Kdf)?;
    cipher
        .decrypt(
            Nonce::from_slice(&header.nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| FormatError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            kdf: KdfParams::default(),
            salt: [7u8; SALT_LEN],
            nonce: [9u8; NONCE_LEN],
        }
    }

    #[test]
    fn seal_then_open() {
        let key = [1u8; 32];
        let file = seal(&key, &header(), b"{}").unwrap();
        let (h, body) = parse(&file).unwrap();
        assert_eq!(h, header());
        assert_eq!(&open(&key, &h, body).unwrap()[..], b"{}");
    }

    #[test]
    fn any_flipped_byte_fails_cleanly() {
        let key = [1u8; 32];
        let file = seal(&key, &header(), b"{\"devices\":{}}").unwrap();
        for i in 0..file.len() {
            let mut f = file.clone();
            f[i] ^= 0x01;
            let res = parse(&f).and_then(|(h, body)| open(&key, &h, body).map(|_| ()));
            assert!(res.is_err(), "byte {i} flipped but file still opened");
        }
    }

    #[test]
    fn truncated_and_foreign_files() {
        let key = [1u8; 32];
        let file = seal(&key, &header(), b"x").unwrap();
        assert_eq!(parse(b"hello").unwrap_err(), FormatError::NotAVault);
        assert_eq!(parse(b"").unwrap_err(), FormatError::NotAVault);
        for n in 13..file.len() - 16 {
            assert!(parse(&file[..n]).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn newer_version_is_reported_before_anything_else() {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&2u16.to_be_bytes());
        assert_eq!(parse(&f).unwrap_err(), FormatError::UnsupportedVersion(2));
    }

    #[test]
    fn kdf_params_are_bounded() {
        assert!(KdfParams::default().check().is_ok());
        assert!(KdfParams {
            log_n: 14,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(KdfParams {
            log_n: 30,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(KdfParams {
            p: 0,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(KdfParams {
            log_n: 20,
            r: 8,
            p: 1
        }
        .check()
        .is_ok());
        assert!(KdfParams {
            log_n: 21,
            r: 8,
            p: 1
        }
        .check()
        .is_err());
    }
}
