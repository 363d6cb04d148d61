//! The vault's change log, `<vault>.log`: how a run's many small vault changes (a device
//! seeded, a rotation's pending secret) each become durable with one short append and one
//! fsync, instead of re-encrypting and rewriting the whole vault per change — which grows
//! with the square of the fleet (2,000 devices: ~2,000 saves of a ~1 MB file). Pure: the
//! layout, sealing and reading; the appends and compactions are done by `Vault`.
//!
//! Layout: a header — [`MAGIC`] and the nonce of the vault file the log extends (its
//! *base*) — then records. A record is its length (`u32` LE) and the length's complement
//! (so a damaged length is told from a torn append), a fresh 12-byte nonce, and the
//! AES-256-GCM sealing, under the vault's file key, of one [`Delta`] as JSON, with
//! `MAGIC ‖ base nonce ‖ seq (u64 LE)` as associated data: a record verifies only in its
//! place, in the log of its base.
//!
//! Invariants:
//! - Opening the vault applies its base's log in order, so a change whose record was fsynced
//!   (the only point at which the engine is told it is durable) is seen by every later
//!   open, read-only ones included.
//! - A log whose header names another base is stale: a full save that already holds its
//!   changes replaced the base (a crash came before the log's removal). It is ignored.
//! - An incomplete or unverifiable *last* record is a torn append, whose change was never
//!   reported durable: it is dropped, and the next append overwrites it. An unverifiable
//!   record before the last is damage: the vault refuses to open (nothing is guessed).
//! - A full save (compaction) writes the base with a fresh nonce, then removes the log.
//! - Nothing is written in clear: records are sealed with the base's key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::format::NONCE_LEN;
use super::model::{DeviceSecrets, Document};
use super::phrase::Reading;

/// The first bytes of every vault log.
pub const MAGIC: &[u8; 8] = b"RKVLOG1\n";
/// Magic and the base's nonce.
pub const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN;
/// A record's length and its complement.
const LEN_PREFIX: usize = 8;
const TAG_LEN: usize = 16;

/// One logged change: the whole entry of each device it touched, and the release
/// readings as they stand (a small map that only grows).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceSecrets>,
    #[serde(default)]
    pub readings: BTreeMap<String, Reading>,
}

impl Delta {
    /// Applies the change to the document read from the base (or from earlier records).
    pub fn apply(self, doc: &mut Document) {
        doc.devices.extend(self.devices);
        doc.readings = self.readings;
    }
}

/// `<vault>.log`, beside the vault.
pub fn log_path(vault: &Path) -> PathBuf {
    super::fsio::beside(vault, ".log")
}

/// The header of a log extending the base sealed with `base`.
pub fn header(base: &[u8; NONCE_LEN]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..MAGIC.len()].copy_from_slice(MAGIC);
    h[MAGIC.len()..].copy_from_slice(base);
    h
}

fn aad(base: &[u8; NONCE_LEN], seq: u64) -> [u8; HEADER_LEN + 8] {
    let mut a = [0u8; HEADER_LEN + 8];
    a[..HEADER_LEN].copy_from_slice(&header(base));
    a[HEADER_LEN..].copy_from_slice(&seq.to_le_bytes());
    a
}

/// Seals `plain` (a serialized [`Delta`]) as record `seq` of the log of base `base`.
pub fn seal_record(
    key: &[u8; 32],
    base: &[u8; NONCE_LEN],
    seq: u64,
    nonce: [u8; NONCE_LEN],
    plain: &[u8],
) -> Result<Vec<u8>, &'static str> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| "bad key")?;
    let aad = aad(base, seq);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .map_err(|_| "cannot seal a vault log record")?;
    let len = u32::try_from(NONCE_LEN + ct.len()).map_err(|_| "vault log record too large")?;
    let mut out = Vec::with_capacity(LEN_PREFIX + NONCE_LEN + ct.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// What a log file holds for a base.
#[derive(Debug)]
pub enum LogRead {
    /// Written for another base (or its creation was torn): nothing to apply.
    Stale,
    /// The records' plaintexts in order, and the length of the verified prefix (where the
    /// next append goes; a torn last record beyond it is dropped).
    Current {
        records: Vec<Zeroizing<Vec<u8>>>,
        good_len: u64,
    },
}

/// Reads a log for the base sealed with nonce `base` under `key`. Errors name the damage
/// (never any content).
pub fn read(bytes: &[u8], key: &[u8; 32], base: &[u8; NONCE_LEN]) -> Result<LogRead, String> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        // Shorter than a header: its creation was torn before any record was durable.
        return Ok(LogRead::Stale);
    };
    if &head[..MAGIC.len()] != MAGIC {
        return Err("not a roomkey vault log".into());
    }
    if head[MAGIC.len()..] != base[..] {
        return Ok(LogRead::Stale);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| "bad key".to_string())?;
    let mut records = Vec::new();
    let mut pos = HEADER_LEN;
    let mut seq = 0u64;
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        let torn_or = |what: &str, end_is_eof: bool| -> Result<(), String> {
            if end_is_eof {
                Ok(())
            } else {
                Err(format!("record {} {what}", seq + 1))
            }
        };
        let (Some(len), Some(check)) = (
            rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
            rest.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()),
        ) else {
            break; // a torn length
        };
        let (len, check) = (u32::from_le_bytes(len), u32::from_le_bytes(check));
        if len != !check {
            // A torn append may leave zeros where the file grew; anything else is damage.
            torn_or("has a damaged length", rest.iter().all(|&b| b == 0))?;
            break;
        }
        let body_len = len as usize;
        let Some(body) = rest.get(LEN_PREFIX..LEN_PREFIX.saturating_add(body_len)) else {
            break; // the record runs past the end: a torn append
        };
        let end = LEN_PREFIX + body_len;
        let opened = body
            .split_at_checked(NONCE_LEN)
            .filter(|(_, ct)| ct.len() >= TAG_LEN)
            .and_then(|(nonce, ct)| {
                cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: ct,
                            aad: &aad(base, seq),
                        },
                    )
                    .ok()
            });
        match opened {
            Some(plain) => records.push(Zeroizing::new(plain)),
            None => {
                torn_or("does not verify", end == rest.len())?;
                break;
            }
        }
        pos += end;
        seq += 1;
    }
    Ok(LogRead::Current {
        records,
        good_len: pos as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const BASE: [u8; NONCE_LEN] = [3; NONCE_LEN];

    fn log_of(records: &[&[u8]]) -> Vec<u8> {
        let mut out = header(&BASE).to_vec();
        for (i, r) in records.iter().enumerate() {
            out.extend(seal_record(&KEY, &BASE, i as u64, [i as u8; NONCE_LEN], r).unwrap());
        }
        out
    }

    fn plains(read: LogRead) -> (Vec<Vec<u8>>, u64) {
        match read {
            LogRead::Current { records, good_len } => {
                (records.iter().map(|r| r.to_vec()).collect(), good_len)
            }
            LogRead::Stale => panic!("stale"),
        }
    }

    #[test]
    fn records_read_back_in_order() {
        let log = log_of(&[b"one", b"two", b"three"]);
        let (records, good) = plains(read(&log, &KEY, &BASE).unwrap());
        assert_eq!(
            records,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(good, log.len() as u64);
    }

    #[test]
    fn a_torn_last_record_is_dropped_at_every_cut() {
        let whole = log_of(&[b"one", b"two"]);
        let first_end = log_of(&[b"one"]).len();
        for cut in first_end..whole.len() {
            let (records, good) = plains(read(&whole[..cut], &KEY, &BASE).unwrap());
            assert_eq!(records, vec![b"one".to_vec()], "cut at {cut}");
            assert_eq!(good, first_end as u64);
        }
        // The file grew but the appended bytes never reached the disk (zeros).
        let mut zeroed = whole.clone();
        zeroed[first_end..].fill(0);
        let (records, _) = plains(read(&zeroed, &KEY, &BASE).unwrap());
        assert_eq!(records, vec![b"one".to_vec()]);
        let mut zero_tail = log_of(&[b"one"]);
        zero_tail.extend([0u8; 40]);
        assert_eq!(plains(read(&zero_tail, &KEY, &BASE).unwrap()).0.len(), 1);
    }

    #[test]
    fn damage_before_the_last_record_refuses() {
        let whole = log_of(&[b"one", b"two", b"three"]);
        let first_end = log_of(&[b"one"]).len();
        // A flipped ciphertext byte in the middle record.
        let mut bad = whole.clone();
        bad[first_end + LEN_PREFIX + NONCE_LEN + 1] ^= 1;
        assert!(read(&bad, &KEY, &BASE).unwrap_err().contains("record 2"));
        // A damaged length in the middle record.
        let mut bad = whole.clone();
        bad[first_end] ^= 1;
        assert!(read(&bad, &KEY, &BASE).unwrap_err().contains("length"));
        // Records swapped: each verifies only in its place.
        let second = log_of(&[b"one", b"two"]);
        let mut swapped = header(&BASE).to_vec();
        swapped.extend(&second[first_end..]);
        swapped.extend(&second[HEADER_LEN..first_end]);
        assert!(read(&swapped, &KEY, &BASE).is_err());
        // The wrong key.
        assert!(read(&whole, &[8; 32], &BASE).is_err());
    }

    #[test]
    fn a_log_of_another_base_is_stale() {
        let log = log_of(&[b"one"]);
        assert!(matches!(
            read(&log, &KEY, &[4; NONCE_LEN]).unwrap(),
            LogRead::Stale
        ));
        assert!(matches!(
            read(&log[..HEADER_LEN - 1], &KEY, &BASE).unwrap(),
            LogRead::Stale
        ));
        assert!(read(b"something else entirely", &KEY, &BASE).is_err());
    }
}
