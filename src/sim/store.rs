//! Persisted simulator state, one directory per device under the state dir:
//! `<state-dir>/<device>/state.json` (the device model, secret included — it is a simulated
//! device) and `<state-dir>/<device>/host_key` (its ed25519 SSH host key, OpenSSH format;
//! `host_key_ecdsa` and `host_key_rsa` for the other types a device may offer).
//! Both files are 0600 and written atomically (temp file in the same dir, fsync, rename,
//! fsync of the directory), so a crash never leaves a torn file behind.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::PrivateKey;
use zeroize::Zeroizing;

use super::model::PersistedState;

/// Errors of the state dir.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid device name for a state directory: {0:?}")]
    BadName(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("host key error in {path}: {reason}")]
    HostKey { path: PathBuf, reason: String },
}

/// One device's directory in the state dir.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

const STATE_FILE: &str = "state.json";
const HOST_KEY_FILE: &str = "host_key";

/// Writes `data` to `path` atomically with mode 0600.
pub fn write_atomic_private(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::fsutil::write_atomic(path, data, 0o600).map_err(|source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The host key types a simulated device can have (catalogue hostkey.types; devices choose
/// with `NetworkServices SSH HostKeyAlgorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyType {
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256 (`ecdsa-sha2-nistp256`).
    Ecdsa,
    /// RSA, 2,048 bits (key type `ssh-rsa`, signed as `rsa-sha2-512`/`rsa-sha2-256` or the
    /// old SHA-1 `ssh-rsa`, whichever the client asks for). Generating one takes seconds
    /// (longer in a debug build): it is persisted like the others and made off the executor.
    Rsa,
}

/// The size of a generated RSA host key (catalogue hostkey.types: the size devices use is
/// not documented; 2,048 is OpenSSH's minimum for new keys and common on appliances).
pub const RSA_HOST_KEY_BITS: usize = 2048;

impl HostKeyType {
    /// The file the persistent key of this type lives in.
    fn file(self) -> &'static str {
        match self {
            HostKeyType::Ed25519 => HOST_KEY_FILE,
            HostKeyType::Ecdsa => "host_key_ecdsa",
            HostKeyType::Rsa => "host_key_rsa",
        }
    }

    /// A fresh key of this type.
    pub fn random(self) -> Result<PrivateKey, String> {
        match self {
            HostKeyType::Ed25519 => Ok(random_host_key()),
            HostKeyType::Ecdsa => random_ecdsa_host_key(),
            HostKeyType::Rsa => random_rsa_host_key(),
        }
    }
}

/// A fresh RSA host key of [`RSA_HOST_KEY_BITS`]. Blocking and slow: call it off the
/// executor.
fn random_rsa_host_key() -> Result<PrivateKey, String> {
    use russh::keys::ssh_key::private::RsaKeypair;
    let keypair =
        RsaKeypair::random(&mut rand_0_10::rng(), RSA_HOST_KEY_BITS).map_err(|e| e.to_string())?;
    Ok(PrivateKey::from(keypair))
}

/// Appends an SSH `string` (u32 length, bytes).
fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| "field too long".to_string())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A fresh ECDSA P-256 host key, built as the OpenSSH private key format (PROTOCOL.key) and
/// read back with the same parser as a stored key.
fn random_ecdsa_host_key() -> Result<PrivateKey, String> {
    use base64::Engine as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let q = sk.public_key().to_encoded_point(false);
    let d = Zeroizing::new(sk.to_bytes().to_vec());
    let mut public = Vec::new();
    ssh_string(&mut public, b"ecdsa-sha2-nistp256")?;
    ssh_string(&mut public, b"nistp256")?;
    ssh_string(&mut public, q.as_bytes())?;
    let mut private = Zeroizing::new(Vec::new());
    let check = rand::RngCore::next_u32(&mut rand::rngs::OsRng).to_be_bytes();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    ssh_string(&mut private, b"ecdsa-sha2-nistp256")?;
    ssh_string(&mut private, b"nistp256")?;
    ssh_string(&mut private, q.as_bytes())?;
    // mpint: no leading zeros, a zero byte first if the top bit is set.
    let start = d.iter().position(|b| *b != 0).unwrap_or(d.len());
    let mut mpint = Zeroizing::new(Vec::new());
    if d.get(start).is_some_and(|b| b & 0x80 != 0) {
        mpint.push(0);
    }
    mpint.extend_from_slice(d.get(start..).unwrap_or_default());
    ssh_string(&mut private, &mpint)?;
    ssh_string(&mut private, b"")?;
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad = pad.wrapping_add(1);
    }
    let mut blob = Zeroizing::new(b"openssh-key-v1\0".to_vec());
    ssh_string(&mut blob, b"none")?;
    ssh_string(&mut blob, b"none")?;
    ssh_string(&mut blob, b"")?;
    blob.extend_from_slice(&1u32.to_be_bytes());
    ssh_string(&mut blob, &public)?;
    ssh_string(&mut blob, &private)?;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*blob));
    let mut text = Zeroizing::new(String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(70) {
        text.push_str(&String::from_utf8_lossy(chunk));
        text.push('\n');
    }
    text.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    PrivateKey::from_openssh(text.as_bytes()).map_err(|e| e.to_string())
}

pub fn random_host_key() -> PrivateKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

impl Store {
    /// The directory of device `name` under `root` (created, 0700).
    pub fn open(root: &Path, name: &str) -> Result<Store, StoreError> {
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(StoreError::BadName(name.to_string()));
        }
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Write {
            path: dir.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved device state, if any.
    pub fn load_state(&self) -> Result<Option<PersistedState>, StoreError> {
        let path = self.dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                // serde_json errors name a position and category, never the content.
                reason: format!("line {} column {}", e.line(), e.column()),
            })
    }

    /// Saves the device state atomically (0600).
    pub fn save_state(&self, state: &PersistedState) -> Result<(), StoreError> {
        let path = self.dir.join(STATE_FILE);
        let bytes =
            Zeroizing::new(
                serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            );
        write_atomic_private(&path, &bytes)
    }

    /// The device's persistent (Ed25519) host key (created on first use).
    pub fn host_key(&self) -> Result<PrivateKey, StoreError> {
        self.host_key_of(HostKeyType::Ed25519)
    }

    /// The device's persistent host key of one type (created on first use).
    pub fn host_key_of(&self, kind: HostKeyType) -> Result<PrivateKey, StoreError> {
        let path = self.dir.join(kind.file());
        let herr = |reason: String| StoreError::HostKey {
            path: path.clone(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                PrivateKey::from_openssh(&*bytes).map_err(|e| herr(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = kind.random().map_err(herr)?;
                let text = key
                    .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                    .map_err(|e| herr(e.to_string()))?;
                write_atomic_private(&path, text.as_bytes())?;
                Ok(key)
            }
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_host_key_round_trip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "room-001").unwrap();
        assert!(s.load_state().unwrap().is_none());
        let mut st = PersistedState::default();
        st.version = 1;
        st.secret = Some("ossifrage".into());
        st.boot_count = 3;
        s.save_state(&st).unwrap();
        let back = s.load_state().unwrap().unwrap();
        assert_eq!(back.secret.as_deref(), Some("ossifrage"));
        assert_eq!(back.boot_count, 3);
        let k1 = s.host_key().unwrap();
        let k2 = s.host_key().unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        // An ECDSA P-256 key besides it, persisted the same way.
        let e1 = s.host_key_of(HostKeyType::Ecdsa).unwrap();
        let e2 = s.host_key_of(HostKeyType::Ecdsa).unwrap();
        assert_eq!(e1.public_key(), e2.public_key());
        assert_eq!(e1.algorithm().as_str(), "ecdsa-sha2-nistp256");
        assert_ne!(e1.public_key(), k1.public_key());
        // And an RSA one (catalogue hostkey.types), 2,048 bits, made once and then read back.
        let r1 = s.host_key_of(HostKeyType::Rsa).unwrap();
        let r2 = s.host_key_of(HostKeyType::Rsa).unwrap();
        assert_eq!(r1.public_key(), r2.public_key());
        assert_eq!(r1.algorithm().as_str(), "ssh-rsa");
        let bits = r1
            .public_key()
            .key_data()
            .rsa()
            .map(|k| k.n().as_positive_bytes().map_or(0, |b| b.len() * 8));
        assert_eq!(bits, Some(RSA_HOST_KEY_BITS));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for f in [STATE_FILE, HOST_KEY_FILE, "host_key_ecdsa", "host_key_rsa"] {
                let m = std::fs::metadata(s.dir().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(m & 0o777, 0o600, "{f}");
            }
        }
        assert!(Store::open(dir.path(), "../x").is_err());
    }
}
