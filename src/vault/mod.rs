//! The ClientSecret vault: one file, encrypted at rest, that keeps every device's current
//! ClientSecret, the pending one during a rotation, the previous ones with dates, and named
//! credentials (device SSH passwords) referenced from the inventory.
//!
//! - `format`: the versioned file layout (scrypt + AES-256-GCM, header as AAD) — pure.
//! - `model`: the decrypted document and its bookkeeping rules — pure.
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
mod model;
mod passphrase;
pub mod phrase;

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
}

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
        let doc: Document = serde_json::from_slice(&plain).map_err(|e| VaultError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "content does not parse (line {}, column {})",
                e.line(),
                e.column()
            ),
        })?;
        Ok(Vault {
            path: path.to_path_buf(),
            doc,
            key,
            kdf: header.kdf,
            salt: header.salt,
            lock,
        })
    }

    /// Encrypts (fresh nonce) and writes the vault atomically; returns only once the new
    /// file and its directory entry are fsynced. The file key was derived when the vault was
    /// opened: a save never runs the passphrase's scrypt again.
    pub fn save(&mut self) -> Result<(), VaultError> {
        self.snapshot()?.write()
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
    pub fn write(self) -> Result<(), VaultError> {
        let plain = serialize(&self.doc).map_err(|_| VaultError::Corrupt {
            path: self.path.clone(),
            reason: "cannot serialize the vault".to_owned(),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let header = Header {
            kdf: self.kdf,
            salt: self.salt,
            nonce,
        };
        let bytes = format::seal(&self.key, &header, &plain)
            .map_err(|e| VaultError::format(&self.path, e))?;
        write_atomic(&self.path, &bytes).map_err(VaultError::io(&self.path, "write the vault"))
    }
}

/// Serializes the document into one exactly sized, zeroizing buffer: measuring first means
/// the buffer never grows, so no freed copy of the plaintext is left behind by a realloc.
fn serialize(doc: &Document) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
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
