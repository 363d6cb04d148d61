//! The ClientSecret vault: one file, encrypted at rest, that keeps every device's current
//! ClientSecret, the pending one during a rotation, the previous ones with dates, and named
//! credentials (device SSH passwords) referenced from the inventory.
//!
//! - `format`: the versioned file layout (scrypt + AES-256-GCM, header as AAD) — pure.
//! - `model`: the decrypted document and its bookkeeping rules — pure.
//! - `log`: the change log beside the vault (`<vault>.log`): a run's changes are appended
//!   (sealed, fsynced) instead of rewriting the whole file per change — pure layout.
//! - `fsio`: atomic durable 0600 writes and the writer lock — I/O.
//! - `passphrase`: file, environment or no-echo prompt — I/O.
//!
//! Crash-safe rotation (done by the engine on top of this API):
//! `begin_rotation` + `save` *before* the command is sent; `promote_pending` + `save` only
//! after the device confirmed; on an unknown outcome the next run finds `pending` still
//! recorded and resolves it from the device (`promote_pending`, `abandon_pending` /
//! `confirm_current`, or `mark_secret_unknown`). No operation here deletes a device's
//! secret: superseded ones move to `previous`.

mod format;
mod fsio;
mod log;
mod model;
mod passphrase;
pub mod phrase;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::secret::Secret;

pub use format::{KdfParams, FORMAT_VERSION};
pub use fsio::{lock_path, write_atomic, write_new};
pub use model::{
    check_name, check_secret, Alternate, BookkeepingError, DeviceSecrets, Firmware, Held,
    SecretRecord, SecretState,
};
pub use passphrase::{
    passphrase_source, prompt, read_new_passphrase, read_passphrase, PassphraseSource,
    PASSPHRASE_ENV,
};
pub use phrase::{generate_phrase, Reading};

use format::{FormatError, Header, NONCE_LEN, SALT_LEN};
use model::Document;

/// Everything that can go wrong with the vault. No variant ever carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "{path}: wrong vault passphrase, or the vault file was modified or corrupted (nothing was changed)"
    )]
    WrongPassphraseOrTampered { path: PathBuf },
    #[error("{path}: not a roomkey vault file")]
    NotAVault { path: PathBuf },
    #[error(
        "{path}: vault format version {found} is not supported by this roomkey (it reads up to version {supported}); use a newer roomkey"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error("{path}: corrupt vault file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: a file already exists there; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: no vault there (create one with `roomkey secret init --vault {path}`)")]
    NotFound { path: PathBuf },
    #[error("{path}: the vault is in use by another roomkey process (lock {lock})")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("{path}: the vault was opened read-only")]
    ReadOnly { path: PathBuf },
    #[error("{path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("key derivation failed")]
    Kdf,
    #[error(
        "no vault passphrase: set {PASSPHRASE_ENV}, pass --passphrase-file, or run on a terminal"
    )]
    NoPassphrase,
    #[error("the vault passphrase from {source_name} is not valid UTF-8")]
    PassphraseNotUtf8 { source_name: String },
    #[error("the vault passphrase is empty")]
    EmptyPassphrase,
    #[error("the two passphrases do not match")]
    PassphraseMismatch,
    #[error(transparent)]
    Bookkeeping(#[from] BookkeepingError),
}

impl VaultError {
    fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> VaultError + 'a {
        move |source| VaultError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    fn format(path: &Path, e: FormatError) -> VaultError {
        let path = path.to_path_buf();
        match e {
            FormatError::NotAVault => VaultError::NotAVault { path },
            FormatError::UnsupportedVersion(found) => VaultError::UnsupportedVersion {
                path,
                found,
                supported: FORMAT_VERSION,
            },
            FormatError::CorruptHeader(reason) => VaultError::Corrupt {
                path,
                reason: reason.to_owned(),
            },
            FormatError::Decrypt => VaultError::WrongPassphraseOrTampered { path },
            FormatError::Kdf => VaultError::Kdf,
        }
    }
}

/// An open vault: the decrypted document plus the key to save it again.
pub struct Vault {
    path: PathBuf,
    doc: Document,
    key: Zeroizing<[u8; 32]>,
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
    /// The writer lock, held while the vault is open; `None` for a read-only snapshot.
    lock: Option<File>,
    /// The vault file as last written or read (the change log's base).
    base: Written,
    /// Where the change log of that base stands.
    log: LogState,
}

/// What a full save wrote: the base a change log extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    nonce: [u8; NONCE_LEN],
    len: u64,
}

/// The change log of the current base: records appended so far and the length of its
/// verified content (0: no log for this base yet; the next append creates it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogState {
    seq: u64,
    len: u64,
}

/// A log is compacted into the base once it is larger than the base (and this floor): the
/// appends a compaction saves then pay for it, so the cost per change stays constant.
const COMPACT_AT_LEAST: u64 = 64 * 1024;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("devices", &self.doc.devices.len())
            .field("credentials", &self.doc.credentials.len())
            .field("read_only", &self.lock.is_none())
            .finish_non_exhaustive()
    }
}

fn now() -> OffsetDateTime {
    // Whole seconds: plenty for ages and dates, and tidier in exports.
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

fn take_lock(path: &Path) -> Result<File, VaultError> {
    fsio::lock(path).map_err(|e| match e {
        fsio::LockError::Busy => VaultError::Locked {
            path: path.to_path_buf(),
            lock: lock_path(path),
        },
        fsio::LockError::Io(source) => VaultError::Io {
            path: lock_path(path),
            op: "lock the vault",
            source,
        },
    })
}

impl Vault {
    /// Creates an empty vault (default scrypt cost). Refuses to overwrite any existing file.
    pub fn create(path: &Path, passphrase: &Secret) -> Result<Vault, VaultError> {
        Self::create_with(path, passphrase, KdfParams::default())
    }

    /// Creates an empty vault with a chosen scrypt cost (at least the default).
    pub fn create_with(
        path: &Path,
        passphrase: &Secret,
        kdf: KdfParams,
    ) -> Result<Vault, VaultError> {
        if passphrase.is_empty() {
            return Err(VaultError::EmptyPassphrase);
        }
        fsio::create_parent_dirs(path).map_err(VaultError::io(path, "create the directory"))?;
        let lock = take_lock(path)?;
        if path.symlink_metadata().is_ok() {
            return Err(VaultError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let mut salt = [0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let key =
            format::derive_key(passphrase, &salt, kdf).map_err(|e| VaultError::format(path, e))?;
        let mut vault = Vault {
            path: path.to_path_buf(),
            doc: Document::default(),
            key,
            kdf,
            salt,
            lock: Some(lock),
            base: Written {
                nonce: [0; NONCE_LEN],
                len: 0,
            },
            log: LogState::default(),
        };
        vault.save()?;
        Ok(vault)
    }

    /// Opens a vault for reading and writing; holds the writer lock until dropped.
    pub fn open(path: &Path, passphrase: &Secret) -> Result<Vault, VaultError> {
        // Checked before locking: the lock file would otherwise fail in a missing directory.
        if path.symlink_metadata().is_err() {
            return Err(VaultError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let lock = take_lock(path)?;
        Self::load(path, passphrase, Some(lock))
    }

    /// Opens a snapshot for reading only (no lock: saves are atomic renames, so a reader
    /// always sees a whole file). `save` on it is an error.
    pub fn open_read_only(path: &Path, passphrase: &Secret) -> Result<Vault, VaultError> {
        Self::load(path, passphrase, None)
    }

    /// Opens the vault, creating an empty one if there is no file yet.
    pub fn open_or_create(path: &Path, passphrase: &Secret) -> Result<Vault, VaultError> {
        match Self::open(path, passphrase) {
            Err(VaultError::NotFound { .. }) => Self::create(path, passphrase),
            other => other,
        }
    }

    fn load(path: &Path, passphrase: &Secret, lock: Option<File>) -> Result<Vault, VaultError> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VaultError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                VaultError::io(path, "read the vault")(e)
            }
        })?;
        let fail = |e| VaultError::format(path, e);
        let (header, body) = format::parse(&bytes).map_err(fail)?;
        let key = format::derive_key(passphrase, &header.salt, header.kdf).map_err(fail)?;
        let plain = format::open(&key, &header, body).map_err(fail)?;
        // Only the position is reported: serde messages may quote the offending value.
        let corrupt = |path: &Path, what: &str, e: serde_json::Error| VaultError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{what} does not parse (line {}, column {})",
                e.line(),
                e.column()
            ),
        };
        let mut doc: Document =
            serde_json::from_slice(&plain).map_err(|e| corrupt(path, "content", e))?;
        // The changes appended since this base was written (see `log`).
        let log_file = log::log_path(path);
        let mut log = LogState::default();
        let log_bytes = match std::fs::read(&log_file) {
            Ok(bytes) => Some(Zeroizing::new(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(VaultError::io(&log_file, "read the vault log")(e)),
        };
        if let Some(bytes) = log_bytes {
            let read =
                log::read(&bytes, &key, &header.nonce).map_err(|reason| VaultError::Corrupt {
                    path: log_file.clone(),
                    reason,
                })?;
            if let log::LogRead::Current { records, good_len } = read {
                for record in &records {
                    let delta: log::Delta = serde_json::from_slice(record)
                        .map_err(|e| corrupt(&log_file, "a record", e))?;
                    delta.apply(&mut doc);
                }
                log = LogState {
                    seq: records.len() as u64,
                    len: good_len,
                };
            }
        }
        Ok(Vault {
            path: path.to_path_buf(),
            doc,
            key,
            kdf: header.kdf,
            salt: header.salt,
            lock,
            base: Written {
                nonce: header.nonce,
                len: bytes.len() as u64,
            },
            log,
        })
    }

    /// Encrypts (fresh nonce) and writes the vault atomically; returns only once the new
    /// file and its directory entry are fsynced. The file key was derived when the vault was
    /// opened: a save never runs the passphrase's scrypt again.
    pub fn save(&mut self) -> Result<(), VaultError> {
        let written = self.snapshot()?.write()?;
        self.base_written(written);
        Ok(())
    }

    /// A full save wrote `written`: it holds every change so far, so the log of the old
    /// base is stale — it is removed (if that fails, it is still ignored: it names the old
    /// base) and the next change starts a new one.
    pub fn base_written(&mut self, written: Written) {
        self.base = written;
        self.log = LogState::default();
        let _ = std::fs::remove_file(log::log_path(&self.path));
    }

    /// Whether changes are in the log rather than the vault file (a full save folds them in).
    pub fn has_log(&self) -> bool {
        self.log.seq > 0
    }

    /// Whether this vault can be saved (it was not opened read-only).
    pub fn is_writable(&self) -> bool {
        self.lock.is_some()
    }

    /// Whether the log has outgrown the vault file, so the next save should be a full one.
    pub fn log_due_for_compaction(&self) -> bool {
        self.log.len > self.base.len.max(COMPACT_AT_LEAST)
    }

    /// The change to `devices` (their whole entries, and the release readings), ready to
    /// be appended to the log — by `engine::secrets`'s writer thread, like [`Snapshot`].
    pub fn log_append(&self, devices: &BTreeSet<String>) -> Result<LogAppend, VaultError> {
        if self.lock.is_none() {
            return Err(VaultError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let delta = log::Delta {
            devices: devices
                .iter()
                .filter_map(|name| Some((name.clone(), self.doc.devices.get(name)?.clone())))
                .collect(),
            readings: self.doc.readings.clone(),
        };
        Ok(LogAppend {
            path: log::log_path(&self.path),
            delta,
            key: self.key.clone(),
            base: self.base.nonce,
            at: self.log,
        })
    }

    /// A [`LogAppend`] made from this vault's log state reached the disk; the log is now
    /// `len` bytes long.
    pub fn log_appended(&mut self, len: u64) {
        self.log = LogState {
            seq: self.log.seq.saturating_add(1),
            len,
        };
    }

    /// A copy of the document as it stands, with what saving it needs (the derived key,
    /// never the passphrase), to be sealed and written later — by `engine::secrets`'s
    /// writer thread, without holding up the callers that keep changing the vault.
    pub fn snapshot(&self) -> Result<Snapshot, VaultError> {
        if self.lock.is_none() {
            return Err(VaultError::ReadOnly {
                path: self.path.clone(),
            });
        }
        Ok(Snapshot {
            path: self.path.clone(),
            doc: self.doc.clone(),
            key: self.key.clone(),
            kdf: self.kdf,
            salt: self.salt,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn device(&self, name: &str) -> Option<&DeviceSecrets> {
        self.doc.devices.get(name)
    }

    /// Device names, sorted.
    pub fn device_names(&self) -> impl Iterator<Item = &str> {
        self.doc.devices.keys().map(String::as_str)
    }

    /// The device's current secret, if any.
    pub fn current_secret(&self, device: &str) -> Option<&Secret> {
        self.device(device)?.current.as_ref().map(|r| &r.secret)
    }

    /// Manual set / generate / import: `secret` becomes current; the old current (and a
    /// pending one) move to `previous`. `seeded`: the device already holds `secret`.
    pub fn set_current(
        &mut self,
        device: &str,
        secret: Secret,
        seeded: bool,
        note: Option<&str>,
    ) -> Result<(), VaultError> {
        check_name(device)?;
        check_secret(device, &secret)?;
        let t = now();
        let record = SecretRecord::new(secret, t, note);
        self.doc
            .devices
            .entry(device.to_owned())
            .or_default()
            .set_current(record, seeded, t)?;
        Ok(())
    }

    /// The device is now known to hold its current secret (first populate done).
    pub fn mark_seeded(&mut self, device: &str) -> Result<(), VaultError> {
        let d = self.device_mut(device)?;
        if d.current.is_none() {
            return Err(BookkeepingError::NoCurrentSecret {
                device: device.to_owned(),
            }
            .into());
        }
        d.seeded = true;
        Ok(())
    }

    /// Records `new` as pending. Save before sending the rotation command.
    pub fn begin_rotation(&mut self, device: &str, new: Secret) -> Result<(), VaultError> {
        check_secret(device, &new)?;
        let record = SecretRecord::new(new, now(), Some("rotation"));
        self.device_mut(device)?.begin_rotation(device, record)?;
        Ok(())
    }

    /// The device confirmed (or proved) it holds `pending`: promote it.
    pub fn promote_pending(&mut self, device: &str) -> Result<(), VaultError> {
        self.device_mut(device)?.promote_pending(device, now())?;
        Ok(())
    }

    /// The device is proven to still hold `current`: drop the rotation (the pending secret
    /// is kept in `previous`, marked abandoned).
    pub fn abandon_pending(&mut self, device: &str) -> Result<(), VaultError> {
        self.device_mut(device)?.abandon_pending(device, now())?;
        Ok(())
    }

    /// The device is proven to hold its current secret: state back to `ok`, seeded; a
    /// pending secret, if any, is kept in `previous` (marked abandoned).
    pub fn confirm_current(&mut self, device: &str) -> Result<(), VaultError> {
        self.device_mut(device)?.confirm_current(device, now())?;
        Ok(())
    }

    /// Neither secret was accepted: mark the device `secret-unknown`, keeping both.
    pub fn mark_secret_unknown(&mut self, device: &str) -> Result<(), VaultError> {
        self.device_mut(device)?.mark_secret_unknown();
        Ok(())
    }

    /// Records (before the command is sent; save afterwards) every secret the device may
    /// hold once a `Populate` carrying its pending secret as `sent_as` lands.
    pub fn record_attempt(&mut self, device: &str, sent_as: Reading) -> Result<(), VaultError> {
        self.device_mut(device)?
            .record_attempt(device, sent_as, now())?;
        Ok(())
    }

    /// A proof showed the device holds alternate `index`: promote it.
    pub fn promote_alternate(&mut self, device: &str, index: usize) -> Result<(), VaultError> {
        self.device_mut(device)?
            .promote_alternate(device, index, now())?;
        Ok(())
    }

    /// The device was factory-reset or replaced: every secret it had moves to history, a
    /// fresh one becomes current (not seeded), so the next apply seeds it.
    pub fn forget_device(&mut self, device: &str) -> Result<(), VaultError> {
        let t = now();
        let fresh = SecretRecord::new(generate_phrase(), t, Some("generated after forget"));
        self.device_mut(device)?.forget(fresh, t);
        Ok(())
    }

    /// How the firmware of `release` reads a `populate` plaintext, if a canary taught it.
    pub fn release_reading(&self, release: &str) -> Option<Reading> {
        self.doc.readings.get(release).copied()
    }

    /// Every release with its learned reading.
    pub fn release_readings(&self) -> impl Iterator<Item = (&str, Reading)> {
        self.doc.readings.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// A proof showed `device`, running `release`, reads the plaintext as `reading`: the
    /// device records it; the release learns it if it had not yet (the first device to
    /// show it is the canary). Returns the release's reading as it stands afterwards.
    pub fn learn_reading(
        &mut self,
        device: &str,
        release: &str,
        reading: Reading,
    ) -> Result<Reading, VaultError> {
        self.device_mut(device)?.firmware = Some(Firmware {
            release: release.to_owned(),
            reading,
        });
        Ok(*self
            .doc
            .readings
            .entry(release.to_owned())
            .or_insert(reading))
    }

    fn device_mut(&mut self, device: &str) -> Result<&mut DeviceSecrets, VaultError> {
        self.doc.devices.get_mut(device).ok_or_else(|| {
            BookkeepingError::NoSuchDevice {
                device: device.to_owned(),
            }
            .into()
        })
    }

    /// A named credential (e.g. a device SSH password referenced from the inventory).
    pub fn credential(&self, name: &str) -> Option<&Secret> {
        self.doc.credentials.get(name).map(|r| &r.secret)
    }

    /// Credential names, sorted.
    pub fn credential_names(&self) -> impl Iterator<Item = &str> {
        self.doc.credentials.keys().map(String::as_str)
    }

    /// Adds or replaces a named credential.
    pub fn set_credential(&mut self, name: &str, secret: Secret) -> Result<(), VaultError> {
        check_name(name)?;
        check_secret(name, &secret)?;
        self.doc
            .credentials
            .insert(name.to_owned(), SecretRecord::new(secret, now(), None));
        Ok(())
    }

    /// Removes a named credential; returns whether it existed.
    pub fn remove_credential(&mut self, name: &str) -> bool {
        self.doc.credentials.remove(name).is_some()
    }
}

/// The vault's content at one moment, ready to be saved (see [`Vault::snapshot`]). Its
/// secrets are zeroized when it is dropped (`Secret`, and the key is `Zeroizing`).
pub struct Snapshot {
    path: PathBuf,
    doc: Document,
    key: Zeroizing<[u8; 32]>,
    kdf: KdfParams,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Serializes, encrypts (fresh nonce) and writes it atomically; returns only once the
    /// new file and its directory entry are fsynced. Blocking: call it off the async workers.
    /// Give the result to [`Vault::base_written`].
    pub fn write(self) -> Result<Written, VaultError> {
        let (plain, nonce) = to_seal(&self.doc, &self.path, "the vault")?;
        let header = Header {
            kdf: self.kdf,
            salt: self.salt,
            nonce,
        };
        let bytes = format::seal(&self.key, &header, &plain)
            .map_err(|e| VaultError::format(&self.path, e))?;
        write_atomic(&self.path, &bytes).map_err(VaultError::io(&self.path, "write the vault"))?;
        Ok(Written {
            nonce,
            len: bytes.len() as u64,
        })
    }
}

/// Changes ready to be appended to the vault's log (see [`Vault::log_append`]). Its
/// secrets are zeroized when it is dropped.
pub struct LogAppend {
    path: PathBuf,
    delta: log::Delta,
    key: Zeroizing<[u8; 32]>,
    base: [u8; NONCE_LEN],
    at: LogState,
}

impl std::fmt::Debug for LogAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogAppend")
            .field("path", &self.path)
            .field("devices", &self.delta.devices.len())
            .finish_non_exhaustive()
    }
}

impl LogAppend {
    /// Seals the change and appends it; returns the log's new length once the record is
    /// fsynced (for [`Vault::log_appended`]). The first record of a base creates the log
    /// (header, fsync, directory fsync); a torn record left by a crash is overwritten.
    /// Blocking: call it off the async workers.
    pub fn write(self) -> Result<u64, VaultError> {
        let (plain, nonce) = to_seal(&self.delta, &self.path, "a vault change")?;
        let record = log::seal_record(&self.key, &self.base, self.at.seq, nonce, &plain).map_err(
            |reason| VaultError::Corrupt {
                path: self.path.clone(),
                reason: reason.to_owned(),
            },
        )?;
        let io = VaultError::io(&self.path, "append to the vault log");
        if self.at.len == 0 {
            let mut bytes = log::header(&self.base).to_vec();
            bytes.extend_from_slice(&record);
            fsio::write_log(&self.path, &bytes).map_err(io)?;
            Ok(bytes.len() as u64)
        } else {
            fsio::append_log(&self.path, self.at.len, &record).map_err(io)
        }
    }
}

/// `value` serialized (see [`serialize`]) and a fresh nonce to seal it with.
fn to_seal<T: serde::Serialize>(
    value: &T,
    path: &Path,
    what: &str,
) -> Result<(Zeroizing<Vec<u8>>, [u8; NONCE_LEN]), VaultError> {
    let plain = serialize(value).map_err(|_| VaultError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot serialize {what}"),
    })?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    Ok((plain, nonce))
}

/// Serializes the document into one exactly sized, zeroizing buffer: measuring first means
/// the buffer never grows, so no freed copy of the plaintext is left behind by a realloc.
fn serialize<T: serde::Serialize>(doc: &T) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, doc)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *buf, doc)?;
    Ok(buf)
}

/// A fresh random password or passphrase: 32 bytes from the OS RNG as unpadded base64url
/// (43 printable ASCII characters from `A-Za-z0-9-_`: no quotes, spaces or shell
/// metacharacters). ClientSecrets use [`generate_phrase`] instead, which no firmware reading
/// of a `populate` plaintext can confuse.
pub fn generate_secret() -> Secret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut_slice());
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pass() -> Secret {
        Secret::new("correct horse battery staple")
    }

    #[test]
    fn generated_secrets_are_printable_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert!(a
            .expose()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn create_save_open_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault");
        let mut v = Vault::create(&path, &pass()).unwrap();
        v.set_current("r1", Secret::new("s1"), false, Some("set"))
            .unwrap();
        v.set_credential("ssh-admin", Secret::new("pw")).unwrap();
        v.save().unwrap();
        drop(v);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v = Vault::open(&path, &pass()).unwrap();
        assert_eq!(v.current_secret("r1").unwrap().expose(), "s1");
        assert_eq!(v.credential("ssh-admin").unwrap().expose(), "pw");
        assert_eq!(v.device_names().collect::<Vec<_>>(), ["r1"]);
        assert!(!v.device("r1").unwrap().seeded);
    }

    /// A vault with three devices (saved whole), and a change to two of them appended
    /// to its log, as the engine's writer thread does.
    fn vault_with_a_log(path: &Path) -> Vault {
        let mut v = Vault::create(path, &pass()).unwrap();
        for name in ["r1", "r2", "r3"] {
            v.set_current(name, Secret::new(format!("s-{name}")), false, None)
                .unwrap();
        }
        v.save().unwrap();
        append(&mut v, &["r1"], |v| v.mark_seeded("r1").unwrap());
        append(&mut v, &["r2"], |v| {
            v.begin_rotation("r2", Secret::new("new-r2")).unwrap()
        });
        v
    }

    fn append(v: &mut Vault, devices: &[&str], change: impl FnOnce(&mut Vault)) {
        change(v);
        let names = devices.iter().map(|d| d.to_string()).collect();
        let len = v.log_append(&names).unwrap().write().unwrap();
        v.log_appended(len);
    }

    fn assert_logged_changes(v: &Vault) {
        assert!(v.device("r1").unwrap().seeded);
        assert_eq!(
            v.device("r2")
                .unwrap()
                .pending
                .as_ref()
                .unwrap()
                .secret
                .expose(),
            "new-r2"
        );
    }

    #[test]
    fn logged_changes_are_read_back_and_a_full_save_folds_them_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let log = log::log_path(&path);
        let v = vault_with_a_log(&path);
        assert!(v.has_log());
        assert!(!v.device("r3").unwrap().seeded);
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(v);
        assert_logged_changes(&Vault::open_read_only(&path, &pass()).unwrap());
        let mut v = Vault::open(&path, &pass()).unwrap();
        assert_logged_changes(&v);
        // Appending continues the log the open found.
        append(&mut v, &["r3"], |v| v.mark_seeded("r3").unwrap());
        drop(v);
        let mut v = Vault::open(&path, &pass()).unwrap();
        assert!(v.device("r3").unwrap().seeded);
        v.save().unwrap();
        assert!(!log.exists(), "the full save folded the log in");
        assert!(!v.has_log());
        drop(v);
        let v = Vault::open(&path, &pass()).unwrap();
        assert_logged_changes(&Vault::open_read_only(&path, &pass()).unwrap());
        assert!(v.device("r3").unwrap().seeded);
    }

    #[test]
    fn a_log_left_by_a_crash_after_a_full_save_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let mut v = vault_with_a_log(&path);
        // The full save lands, the crash comes before the log is removed.
        v.mark_seeded("r3").unwrap();
        v.snapshot().unwrap().write().unwrap();
        drop(v);
        assert!(log::log_path(&path).exists());
        let mut v = Vault::open(&path, &pass()).unwrap();
        assert_logged_changes(&v);
        assert!(v.device("r3").unwrap().seeded);
        assert!(!v.has_log(), "the stale log is not this base's");
        // The next change starts a new log over the stale one.
        append(&mut v, &["r1"], |v| v.confirm_current("r1").unwrap());
        drop(v);
        assert!(Vault::open(&path, &pass()).unwrap().has_log());
    }

    #[test]
    fn a_torn_append_is_dropped_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let log_file = log::log_path(&path);
        let v = vault_with_a_log(&path);
        drop(v);
        // The second record was being appended when the power went.
        let len = std::fs::metadata(&log_file).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log_file)
            .unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let mut v = Vault::open(&path, &pass()).unwrap();
        assert!(v.device("r1").unwrap().seeded);
        assert!(
            v.device("r2").unwrap().pending.is_none(),
            "never acknowledged"
        );
        append(&mut v, &["r3"], |v| v.mark_seeded("r3").unwrap());
        drop(v);
        let v = Vault::open(&path, &pass()).unwrap();
        assert!(v.device("r1").unwrap().seeded && v.device("r3").unwrap().seeded);
    }

    #[test]
    fn a_damaged_log_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let log_file = log::log_path(&path);
        drop(vault_with_a_log(&path));
        let mut bytes = std::fs::read(&log_file).unwrap();
        bytes[log::HEADER_LEN + 30] ^= 1; // inside the first of two records
        std::fs::write(&log_file, &bytes).unwrap();
        match Vault::open(&path, &pass()) {
            Err(VaultError::Corrupt { path, reason }) => {
                assert_eq!(path, log_file);
                assert!(reason.contains("record 1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_log_is_due_for_compaction_once_larger_than_the_vault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let mut v = vault_with_a_log(&path);
        assert!(!v.log_due_for_compaction());
        let mut appends = 0;
        while !v.log_due_for_compaction() {
            append(&mut v, &["r1"], |v| v.confirm_current("r1").unwrap());
            appends += 1;
            assert!(appends < 1_000, "never due");
        }
        v.save().unwrap();
        assert!(!v.log_due_for_compaction() && !v.has_log());
    }

    #[test]
    fn each_save_uses_a_fresh_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let mut v = Vault::create(&path, &pass()).unwrap();
        let a = std::fs::read(&path).unwrap();
        v.save().unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(a[..41], b[..41], "same header up to the nonce");
        assert_ne!(a[41..53], b[41..53], "nonce reused");
    }

    #[test]
    fn create_refuses_an_existing_file_and_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let v = Vault::create(&path, &pass()).unwrap();
        assert!(matches!(
            Vault::open(&path, &pass()),
            Err(VaultError::Locked { .. })
        ));
        assert!(Vault::open_read_only(&path, &pass()).is_ok());
        drop(v);
        assert!(matches!(
            Vault::create(&path, &pass()),
            Err(VaultError::AlreadyExists { .. })
        ));
        let mut ro = Vault::open_read_only(&path, &pass()).unwrap();
        assert!(matches!(ro.save(), Err(VaultError::ReadOnly { .. })));
    }

    #[test]
    fn open_or_create_and_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        assert!(matches!(
            Vault::open(&path, &pass()),
            Err(VaultError::NotFound { .. })
        ));
        drop(Vault::open_or_create(&path, &pass()).unwrap());
        drop(Vault::open_or_create(&path, &pass()).unwrap());
    }

    #[test]
    fn wrong_passphrase_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        drop(Vault::create(&path, &pass()).unwrap());
        let err = Vault::open(&path, &Secret::new("nope")).unwrap_err();
        assert!(matches!(err, VaultError::WrongPassphraseOrTampered { .. }));
        assert!(err.to_string().contains("wrong vault passphrase"));
    }

    #[test]
    fn mark_seeded_and_missing_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = Vault::create(&dir.path().join("vault"), &pass()).unwrap();
        assert!(v.mark_seeded("nope").is_err());
        assert!(v.promote_pending("nope").is_err());
        v.set_current("r1", generate_secret(), false, None).unwrap();
        v.mark_seeded("r1").unwrap();
        assert!(v.device("r1").unwrap().seeded);
        assert!(v
            .set_current("bad name", generate_secret(), false, None)
            .is_err());
        assert!(v.set_current("r2", Secret::new(""), false, None).is_err());
    }
}
