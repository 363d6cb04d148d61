//! Where the engine gets secrets: device ClientSecrets (and their seeding / rotation
//! bookkeeping) and SSH passwords. `SecretStore` is the seam between the engine and the
//! vault; the environment-variable store serves labs without a vault. Every write that a
//! crash must not lose (pending secret, promotion) is durable before the call returns.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::inventory::{ClientSecretSource, Device};
use crate::secret::Secret;
use crate::vault::{Held, Reading};

#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error("device {device}: environment variable {var} is not set (it should hold the {what})")]
    MissingEnv {
        device: String,
        var: String,
        what: &'static str,
    },
    #[error("device {device}: the vault has no ClientSecret for it; run `roomkey secret generate` or `roomkey secret set --device {device}`")]
    NoSecret { device: String },
    #[error("device {device}: a vault is needed for {what}, but none is open (pass --vault or set `vault:` in the inventory)")]
    NoVault { device: String, what: &'static str },
    #[error("device {device}: vault credential '{name}' does not exist; add it with `roomkey secret credential set {name}`")]
    NoCredential { device: String, name: String },
    #[error("device {device}: its ClientSecret comes from environment variable {var}; rotating it needs the vault (`client_secret: vault` in the inventory)")]
    RotationNeedsVault { device: String, var: String },
    #[error("vault: {0}")]
    Vault(String),
}

/// The secret bookkeeping a run needs. Implementations are shared by all device tasks.
pub trait SecretStore: Send + Sync {
    /// The secret the device is believed to hold (or should be seeded with).
    fn current(&self, device: &Device) -> Result<Secret, SecretStoreError>;
    /// Whether the device is known to hold `current` already.
    fn is_seeded(&self, device: &Device) -> bool;
    /// Records (durably) that the device holds `current`.
    fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The pending secret of an unfinished rotation, if any.
    fn pending(&self, device: &Device) -> Result<Option<Secret>, SecretStoreError>;
    /// Starts (or continues) a rotation: makes sure a pending secret is durably recorded and
    /// returns it. Called before the rotation command is sent.
    fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError>;
    /// The device confirmed the pending secret: it becomes current, the old one previous.
    fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The device was proven to still hold `current`: drop the pending secret.
    fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The device proved (a JWE under it was accepted) that it holds `current`: whatever
    /// the recorded state, it becomes `ok` and seeded; a pending secret, if any, is kept as
    /// previous (abandoned). Saves only if something changed.
    fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// Every recorded secret the device may hold, in the order a proof tries them
    /// (`pending`, its alternates, `current`).
    fn candidates(&self, device: &Device) -> Result<Vec<(Held, Secret)>, SecretStoreError>;
    /// Records durably, before a `Populate` carrying the pending secret as `sent_as` is
    /// sent, every secret the device may hold once it lands.
    fn record_attempt(&self, device: &Device, sent_as: Reading) -> Result<(), SecretStoreError>;
    /// The reading holding the pending secret would reveal (the form last sent), if any.
    fn pending_reading(&self, device: &Device) -> Result<Option<Reading>, SecretStoreError>;
    /// A proof showed the device holds `held`: promote it (or confirm the current one),
    /// durably. Returns the reading holding a new secret revealed.
    fn settle(&self, device: &Device, held: Held) -> Result<Option<Reading>, SecretStoreError>;
    /// The reading the device's firmware uses, if known: its own record on this release,
    /// else what the canary of this release showed.
    fn known_reading(&self, device: &Device, release: &str) -> Option<Reading>;
    /// Records (durably) the reading a proof showed, for the device and its release (the
    /// release keeps the first one it learned).
    fn learn_reading(
        &self,
        device: &Device,
        release: &str,
        reading: Reading,
    ) -> Result<(), SecretStoreError>;
    /// Whether the vault flags the device `secret-unknown` (neither secret was accepted).
    fn is_secret_unknown(&self, device: &Device) -> bool;
    /// Neither secret works: keep both and flag the device.
    fn mark_secret_unknown(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// A named credential (SSH password) from the vault.
    fn credential(&self, device: &Device, name: &str) -> Result<Secret, SecretStoreError>;
}

/// Secrets from environment variables (`client_secret: { env: VAR }`); no rotation, and
/// "seeded" is only remembered for the length of the run.
#[derive(Debug, Default)]
pub struct EnvSecrets {
    seeded: Mutex<BTreeSet<String>>,
}

impl EnvSecrets {
    pub fn new() -> Self {
        Self::default()
    }
}

pub fn env_secret(
    device: &Device,
    var: &str,
    what: &'static str,
) -> Result<Secret, SecretStoreError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(Secret::new)
        .ok_or_else(|| SecretStoreError::MissingEnv {
            device: device.name.clone(),
            var: var.to_string(),
            what,
        })
}

impl SecretStore for EnvSecrets {
    fn current(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        match &device.client_secret {
            ClientSecretSource::Env(var) => env_secret(device, var, "device ClientSecret"),
            ClientSecretSource::Vault => Err(SecretStoreError::NoVault {
                device: device.name.clone(),
                what: "its ClientSecret",
            }),
        }
    }

    fn is_seeded(&self, device: &Device) -> bool {
        self.seeded
            .lock()
            .map(|s| s.contains(&device.name))
            .unwrap_or(false)
    }

    fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError> {
        if let Ok(mut s) = self.seeded.lock() {
            s.insert(device.name.clone());
        }
        Ok(())
    }

    fn pending(&self, _device: &Device) -> Result<Option<Secret>, SecretStoreError> {
        Ok(None)
    }

    fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        Err(SecretStoreError::NoVault {
            device: device.name.clone(),
            what: "rotating its ClientSecret",
        })
    }

    fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).map(|_| ())
    }

    fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).map(|_| ())
    }

    fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.mark_seeded(device)
    }

    fn candidates(&self, device: &Device) -> Result<Vec<(Held, Secret)>, SecretStoreError> {
        Ok(vec![(Held::Current, self.current(device)?)])
    }

    fn record_attempt(&self, device: &Device, _sent_as: Reading) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).map(|_| ())
    }

    fn pending_reading(&self, _device: &Device) -> Result<Option<Reading>, SecretStoreError> {
        Ok(None)
    }

    fn settle(&self, device: &Device, held: Held) -> Result<Option<Reading>, SecretStoreError> {
        match held {
            Held::Current => self.mark_seeded(device).map(|_| None),
            _ => self.begin_rotation(device).map(|_| None),
        }
    }

    fn known_reading(&self, _device: &Device, _release: &str) -> Option<Reading> {
        None
    }

    fn learn_reading(
        &self,
        _device: &Device,
        _release: &str,
        _reading: Reading,
    ) -> Result<(), SecretStoreError> {
        Ok(())
    }

    fn is_secret_unknown(&self, _device: &Device) -> bool {
        false
    }

    fn mark_secret_unknown(&self, _device: &Device) -> Result<(), SecretStoreError> {
        Ok(())
    }

    fn credential(&self, device: &Device, name: &str) -> Result<Secret, SecretStoreError> {
        Err(SecretStoreError::NoCredential {
            device: device.name.clone(),
            name: name.to_string(),
        })
    }
}

/// Secrets from the encrypted vault. Every change is saved (atomically, fsynced) before the
/// call returns, so the engine may act on it: a pending secret is on disk before the
/// rotation command leaves, a promotion is on disk before the step is journalled done.
pub struct VaultSecrets {
    vault: Mutex<crate::vault::Vault>,
}

impl std::fmt::Debug for VaultSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultSecrets")
    }
}

impl VaultSecrets {
    pub fn new(vault: crate::vault::Vault) -> Self {
        VaultSecrets {
            vault: Mutex::new(vault),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<T, SecretStoreError>,
    ) -> Result<T, SecretStoreError> {
        let mut guard = self
            .vault
            .lock()
            .map_err(|_| SecretStoreError::Vault("vault lock poisoned".into()))?;
        f(&mut guard)
    }

    fn change(
        &self,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<(), crate::vault::VaultError>,
    ) -> Result<(), SecretStoreError> {
        self.with(|v| {
            f(v).and_then(|_| v.save())
                .map_err(|e| SecretStoreError::Vault(e.to_string()))
        })
    }
}

impl VaultSecrets {
    /// Reads the vault (for bookkeeping the trait does not cover).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&crate::vault::Vault) -> T,
    ) -> Result<T, SecretStoreError> {
        self.with(|v| Ok(f(v)))
    }

    /// Changes the vault and saves it durably before returning (for bookkeeping the trait
    /// does not cover, e.g. `roomkey secret reset`).
    pub fn update(
        &self,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<(), crate::vault::VaultError>,
    ) -> Result<(), SecretStoreError> {
        self.change(f)
    }
}

fn vault_err(e: crate::vault::VaultError) -> SecretStoreError {
    SecretStoreError::Vault(e.to_string())
}

impl SecretStore for VaultSecrets {
    fn current(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        if let ClientSecretSource::Env(var) = &device.client_secret {
            return env_secret(device, var, "device ClientSecret");
        }
        self.with(|v| {
            v.current_secret(&device.name)
                .cloned()
                .ok_or_else(|| SecretStoreError::NoSecret {
                    device: device.name.clone(),
                })
        })
    }

    fn is_seeded(&self, device: &Device) -> bool {
        self.with(|v| Ok(v.device(&device.name).is_some_and(|d| d.seeded)))
            .unwrap_or(false)
    }

    fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError> {
        if self.is_seeded(device) {
            return Ok(());
        }
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.change(|v| v.mark_seeded(&device.name))
    }

    fn pending(&self, device: &Device) -> Result<Option<Secret>, SecretStoreError> {
        self.with(|v| {
            Ok(v.device(&device.name)
                .and_then(|d| d.pending.as_ref())
                .map(|r| r.secret.clone()))
        })
    }

    fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        if let ClientSecretSource::Env(var) = &device.client_secret {
            return Err(SecretStoreError::RotationNeedsVault {
                device: device.name.clone(),
                var: var.clone(),
            });
        }
        if let Some(p) = self.pending(device)? {
            return Ok(p);
        }
        let new = crate::vault::generate_phrase();
        let keep = new.clone();
        self.with(|v| {
            v.begin_rotation(&device.name, new)
                .and_then(|_| v.save())
                .map_err(vault_err)
        })?;
        Ok(keep)
    }

    fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(|v| v.promote_pending(&device.name))
    }

    fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(|v| v.abandon_pending(&device.name))
    }

    fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.with(|v| {
            let settled = v.device(&device.name).is_some_and(|d| {
                d.seeded && d.pending.is_none() && d.state == crate::vault::SecretState::Ok
            });
            if settled {
                return Ok(());
            }
            v.confirm_current(&device.name)
                .and_then(|_| v.save())
                .map_err(vault_err)
        })
    }

    fn candidates(&self, device: &Device) -> Result<Vec<(Held, Secret)>, SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(vec![(Held::Current, self.current(device)?)]);
        }
        self.with(|v| {
            let d = v
                .device(&device.name)
                .ok_or_else(|| SecretStoreError::NoSecret {
                    device: device.name.clone(),
                })?;
            Ok(d.candidates()
                .into_iter()
                .map(|(h, s)| (h, s.clone()))
                .collect())
        })
    }

    fn record_attempt(&self, device: &Device, sent_as: Reading) -> Result<(), SecretStoreError> {
        self.change(|v| v.record_attempt(&device.name, sent_as))
    }

    fn pending_reading(&self, device: &Device) -> Result<Option<Reading>, SecretStoreError> {
        self.with(|v| {
            Ok(v.device(&device.name)
                .filter(|d| d.pending.is_some())
                .map(|d| d.pending_reading.unwrap_or(Reading::Raw)))
        })
    }

    fn settle(&self, device: &Device, held: Held) -> Result<Option<Reading>, SecretStoreError> {
        match held {
            Held::Current => self.confirm_current(device).map(|_| None),
            Held::Pending => {
                // A pending secret recorded before readings were tracked was sent raw.
                let reading = self.pending_reading(device)?.unwrap_or(Reading::Raw);
                self.promote_pending(device)?;
                Ok(Some(reading))
            }
            Held::Alternate(i) => {
                let reading = self.with(|v| {
                    v.device(&device.name)
                        .and_then(|d| d.alternates.get(i))
                        .map(|a| a.reading)
                        .ok_or_else(|| {
                            SecretStoreError::Vault(format!(
                                "device {}: no such candidate secret (internal error)",
                                device.name
                            ))
                        })
                })?;
                self.change(|v| v.promote_alternate(&device.name, i))?;
                Ok(Some(reading))
            }
        }
    }

    fn known_reading(&self, device: &Device, release: &str) -> Option<Reading> {
        self.with(|v| {
            let own = v
                .device(&device.name)
                .and_then(|d| d.firmware.as_ref())
                .filter(|f| f.release == release)
                .map(|f| f.reading);
            Ok(own.or_else(|| v.release_reading(release)))
        })
        .ok()
        .flatten()
    }

    fn learn_reading(
        &self,
        device: &Device,
        release: &str,
        reading: Reading,
    ) -> Result<(), SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.change(|v| v.learn_reading(&device.name, release, reading).map(|_| ()))
    }

    fn is_secret_unknown(&self, device: &Device) -> bool {
        self.with(|v| {
            Ok(v.device(&device.name)
                .is_some_and(|d| d.state == crate::vault::SecretState::SecretUnknown))
        })
        .unwrap_or(false)
    }

    fn mark_secret_unknown(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(|v| v.mark_secret_unknown(&device.name))
    }

    fn credential(&self, device: &Device, name: &str) -> Result<Secret, SecretStoreError> {
        self.with(|v| {
            v.credential(name)
                .cloned()
                .ok_or_else(|| SecretStoreError::NoCredential {
                    device: device.name.clone(),
                    name: name.to_string(),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{SecretState, Vault};

    fn devices() -> Vec<Device> {
        crate::inventory::parse(
            std::path::Path::new("inv.yaml"),
            "defaults:\n  auth: { password_env: PW }\ndevices:\n  r1: { host: 127.0.0.1 }\n  \
             r2: { host: 127.0.0.2, client_secret: { env: R2_SECRET } }\n",
        )
        .unwrap()
        .devices
    }

    #[test]
    fn vault_bookkeeping_is_saved_and_never_drops_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault");
        let pass = Secret::new("unit test passphrase");
        let mut v = Vault::create(&path, &pass).unwrap();
        v.set_current("r1", Secret::new("first secret"), false, None)
            .unwrap();
        v.save().unwrap();
        let devs = devices();
        let (r1, r2) = (&devs[0], &devs[1]);
        let store = VaultSecrets::new(v);

        // Rotation needs the vault: an env-sourced device is refused, nothing recorded.
        assert!(matches!(
            store.begin_rotation(r2),
            Err(SecretStoreError::RotationNeedsVault { .. })
        ));

        store.confirm_current(r1).unwrap();
        assert!(store.is_seeded(r1));
        // begin_rotation is durable and idempotent: the same pending secret until resolved.
        let p = store.begin_rotation(r1).unwrap();
        assert_eq!(store.begin_rotation(r1).unwrap(), p);
        let on_disk = Vault::open_read_only(&path, &pass).unwrap();
        assert_eq!(
            on_disk
                .device("r1")
                .unwrap()
                .pending
                .as_ref()
                .unwrap()
                .secret,
            p
        );

        // Neither secret worked, then the device proved the current one: the pending
        // secret is kept as previous.
        store.mark_secret_unknown(r1).unwrap();
        assert!(store.is_secret_unknown(r1));
        store.confirm_current(r1).unwrap();
        assert!(!store.is_secret_unknown(r1));
        let on_disk = Vault::open_read_only(&path, &pass).unwrap();
        let d = on_disk.device("r1").unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert!(d.pending.is_none());
        assert_eq!(d.previous[0].secret, p);
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "first secret");

        // A promoted rotation: the old current becomes previous.
        let p2 = store.begin_rotation(r1).unwrap();
        store.promote_pending(r1).unwrap();
        assert_eq!(store.current(r1).unwrap(), p2);
        let on_disk = Vault::open_read_only(&path, &pass).unwrap();
        let d = on_disk.device("r1").unwrap();
        assert_eq!(d.previous.len(), 2);
        assert_eq!(d.previous[0].secret.expose(), "first secret");
    }
}
