//! Where the engine gets secrets: device ClientSecrets (and their seeding / rotation
//! bookkeeping) and SSH passwords. `SecretStore` is the seam between the engine and the
//! vault; the environment-variable store serves labs without a vault. Every write that a
//! crash must not lose (pending secret, promotion) is durable before the call's future
//! completes.
//!
//! Vault saves are group commits: a change is applied to the in-memory vault under a short
//! lock, and the caller awaits the save that includes it. One writer thread per open vault
//! does every save off the async workers, sealing with the key derived at open (no
//! scrypt); changes that arrive while a save is being written go together into the next
//! one. A save of changes to some devices is an append to the vault's change log (their
//! entries, sealed, fsynced: `vault::log`), so its cost does not grow with the fleet; the
//! log is folded into a full rewrite of the vault file (serialize, encrypt, write, fsync,
//! rename) once it outgrows the file, when a change is not tied to devices, after a failed
//! append, and when the store closes. A failed save fails every caller whose change it
//! carried, and they do not proceed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

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
/// Reads answer from memory; every change is async and completes only once it is durable.
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync {
    /// The secret the device is believed to hold (or should be seeded with).
    fn current(&self, device: &Device) -> Result<Secret, SecretStoreError>;
    /// Whether the device is known to hold `current` already.
    fn is_seeded(&self, device: &Device) -> bool;
    /// Records (durably) that the device holds `current`.
    async fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The pending secret of an unfinished rotation, if any.
    fn pending(&self, device: &Device) -> Result<Option<Secret>, SecretStoreError>;
    /// Starts (or continues) a rotation: makes sure a pending secret is durably recorded and
    /// returns it. Called before the rotation command is sent.
    async fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError>;
    /// The device confirmed the pending secret: it becomes current, the old one previous.
    async fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The device was proven to still hold `current`: drop the pending secret.
    async fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// The device proved (a JWE under it was accepted) that it holds `current`: whatever
    /// the recorded state, it becomes `ok` and seeded; a pending secret, if any, is kept as
    /// previous (abandoned). Saves only if something changed.
    async fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError>;
    /// Every recorded secret the device may hold, in the order a proof tries them
    /// (`pending`, its alternates, `current`).
    fn candidates(&self, device: &Device) -> Result<Vec<(Held, Secret)>, SecretStoreError>;
    /// Records durably, before a `Populate` carrying the pending secret as `sent_as` is
    /// sent, every secret the device may hold once it lands.
    async fn record_attempt(
        &self,
        device: &Device,
        sent_as: Reading,
    ) -> Result<(), SecretStoreError>;
    /// The reading holding the pending secret would reveal (the form last sent), if any.
    fn pending_reading(&self, device: &Device) -> Result<Option<Reading>, SecretStoreError>;
    /// A proof showed the device holds `held`: promote it (or confirm the current one),
    /// durably. Returns the reading holding a new secret revealed.
    async fn settle(
        &self,
        device: &Device,
        held: Held,
    ) -> Result<Option<Reading>, SecretStoreError>;
    /// The reading the device's firmware uses, if known: its own record on this release,
    /// else what the canary of this release showed.
    fn known_reading(&self, device: &Device, release: &str) -> Option<Reading>;
    /// Records (durably) the reading a proof showed, for the device and its release (the
    /// release keeps the first one it learned).
    async fn learn_reading(
        &self,
        device: &Device,
        release: &str,
        reading: Reading,
    ) -> Result<(), SecretStoreError>;
    /// Whether the vault flags the device `secret-unknown` (neither secret was accepted).
    fn is_secret_unknown(&self, device: &Device) -> bool;
    /// Neither secret works: keep both and flag the device.
    async fn mark_secret_unknown(&self, device: &Device) -> Result<(), SecretStoreError>;
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

#[async_trait::async_trait]
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

    async fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError> {
        if let Ok(mut s) = self.seeded.lock() {
            s.insert(device.name.clone());
        }
        Ok(())
    }

    fn pending(&self, _device: &Device) -> Result<Option<Secret>, SecretStoreError> {
        Ok(None)
    }

    async fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        Err(SecretStoreError::NoVault {
            device: device.name.clone(),
            what: "rotating its ClientSecret",
        })
    }

    async fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).await.map(|_| ())
    }

    async fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).await.map(|_| ())
    }

    async fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.mark_seeded(device).await
    }

    fn candidates(&self, device: &Device) -> Result<Vec<(Held, Secret)>, SecretStoreError> {
        Ok(vec![(Held::Current, self.current(device)?)])
    }

    async fn record_attempt(
        &self,
        device: &Device,
        _sent_as: Reading,
    ) -> Result<(), SecretStoreError> {
        self.begin_rotation(device).await.map(|_| ())
    }

    fn pending_reading(&self, _device: &Device) -> Result<Option<Reading>, SecretStoreError> {
        Ok(None)
    }

    async fn settle(
        &self,
        device: &Device,
        held: Held,
    ) -> Result<Option<Reading>, SecretStoreError> {
        match held {
            Held::Current => self.mark_seeded(device).await.map(|_| None),
            _ => self.begin_rotation(device).await.map(|_| None),
        }
    }

    fn known_reading(&self, _device: &Device, _release: &str) -> Option<Reading> {
        None
    }

    async fn learn_reading(
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

    async fn mark_secret_unknown(&self, _device: &Device) -> Result<(), SecretStoreError> {
        Ok(())
    }

    fn credential(&self, device: &Device, name: &str) -> Result<Secret, SecretStoreError> {
        Err(SecretStoreError::NoCredential {
            device: device.name.clone(),
            name: name.to_string(),
        })
    }
}

/// Secrets from the encrypted vault. A change completes only once the save that carries it
/// is on disk (atomically, fsynced), so the engine may act on it: a pending secret is on
/// disk before the rotation command leaves, a promotion before the step is journalled done.
/// Saves are group commits done by one writer thread (see the module header).
pub struct VaultSecrets {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the callers and the writer thread share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: a change was made, or the store is closing.
    wake: Condvar,
    /// How far the saves got; callers wait on it for their change.
    committed: tokio::sync::watch::Sender<Committed>,
    /// Saves done: log appends and whole-vault rewrites.
    appends: AtomicU64,
    rewrites: AtomicU64,
}

struct State {
    vault: crate::vault::Vault,
    /// Changes applied so far (a change's ticket is this count right after it).
    changes: u64,
    /// Devices whose entries changed since the last save (what a log append carries).
    dirty: BTreeSet<String>,
    /// A change since the last save is not tied to devices, or an append failed: the next
    /// save rewrites the whole vault.
    whole: bool,
    closing: bool,
}

/// Saves done by a [`VaultSecrets`] so far (see [`VaultSecrets::save_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveCounts {
    /// Changes appended to the vault's log.
    pub appends: u64,
    /// Whole-vault rewrites (folding the log in).
    pub rewrites: u64,
    /// Changes made.
    pub changes: u64,
}

impl SaveCounts {
    pub fn saves(&self) -> u64 {
        self.appends + self.rewrites
    }
}

/// What a change touches, which decides how it can be saved.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// One device's entry (and the release readings): a log append carries it.
    Device(&'a str),
    /// Anything else: a full save.
    Whole,
}

/// The writer's progress. A change with ticket `t` is durable once `durable >= t`; it is
/// lost to its caller (who must not proceed) if `failed_upto >= t` while `durable < t`.
#[derive(Debug, Clone, Default)]
struct Committed {
    durable: u64,
    failed_upto: u64,
    /// The last failure, for the callers it failed (no secret in it: `VaultError` has none).
    error: Option<Arc<str>>,
}

impl std::fmt::Debug for VaultSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultSecrets")
    }
}

impl VaultSecrets {
    /// Takes the open vault and starts its writer thread.
    pub fn new(vault: crate::vault::Vault) -> Self {
        let (committed, _) = tokio::sync::watch::channel(Committed::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                vault,
                changes: 0,
                dirty: BTreeSet::new(),
                whole: false,
                closing: false,
            }),
            wake: Condvar::new(),
            committed,
            appends: AtomicU64::new(0),
            rewrites: AtomicU64::new(0),
        });
        let for_writer = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("roomkey-vault-writer".into())
            .spawn(move || writer_loop(&for_writer))
            .ok();
        if writer.is_none() {
            // No thread, no saves: every change fails rather than waiting forever.
            shared.committed.send_modify(|c| {
                c.failed_upto = u64::MAX;
                c.error = Some(Arc::from("cannot start the vault writer thread"));
            });
        }
        VaultSecrets {
            shared,
            writer: Mutex::new(writer),
        }
    }

    /// How many saves were done (log appends, whole-vault rewrites) and how many changes
    /// they carried — for tests and benchmarks.
    pub fn save_counts(&self) -> SaveCounts {
        let changes = self.shared.state.lock().map(|s| s.changes).unwrap_or(0);
        SaveCounts {
            appends: self.shared.appends.load(Ordering::Relaxed),
            rewrites: self.shared.rewrites.load(Ordering::Relaxed),
            changes,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<T, SecretStoreError>,
    ) -> Result<T, SecretStoreError> {
        let mut guard = self
            .shared
            .state
            .lock()
            .map_err(|_| SecretStoreError::Vault("vault lock poisoned".into()))?;
        f(&mut guard.vault)
    }

    /// Applies `f` to the in-memory vault and, if it changed anything (`Ok(true)`), waits
    /// for the save that carries the change. The lock is held only for `f`.
    async fn commit<T>(
        &self,
        scope: Scope<'_>,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<(T, bool), SecretStoreError>,
    ) -> Result<T, SecretStoreError> {
        let (value, ticket) = {
            let mut guard = self
                .shared
                .state
                .lock()
                .map_err(|_| SecretStoreError::Vault("vault lock poisoned".into()))?;
            let (value, changed) = f(&mut guard.vault)?;
            if !changed {
                return Ok(value);
            }
            guard.changes += 1;
            match scope {
                Scope::Device(name) => {
                    guard.dirty.insert(name.to_owned());
                }
                Scope::Whole => guard.whole = true,
            }
            (value, guard.changes)
        };
        self.shared.wake.notify_one();
        self.durable(ticket).await?;
        Ok(value)
    }

    /// Waits until the change with `ticket` is on disk, or the save carrying it failed.
    async fn durable(&self, ticket: u64) -> Result<(), SecretStoreError> {
        let mut rx = self.shared.committed.subscribe();
        let seen = rx
            .wait_for(|c| c.durable >= ticket || c.failed_upto >= ticket)
            .await
            .map_err(|_| SecretStoreError::Vault("the vault writer stopped".into()))?;
        if seen.durable >= ticket {
            return Ok(());
        }
        Err(SecretStoreError::Vault(format!(
            "saving the vault failed, so this change is not recorded: {}",
            seen.error.as_deref().unwrap_or("unknown error")
        )))
    }

    /// Applies a vault change and waits for the save that carries it.
    async fn change(
        &self,
        scope: Scope<'_>,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<(), crate::vault::VaultError>,
    ) -> Result<(), SecretStoreError> {
        self.commit(scope, |v| f(v).map(|()| ((), true)).map_err(vault_err))
            .await
    }
}

/// Marks every change not yet saved as failed when the writer ends for any reason (a
/// panic included), so no caller waits forever.
struct FailRemaining<'a>(&'a Shared);

impl Drop for FailRemaining<'_> {
    fn drop(&mut self) {
        self.0.committed.send_modify(|c| {
            c.failed_upto = u64::MAX;
            if c.error.is_none() {
                c.error = Some(Arc::from("the vault writer stopped"));
            }
        });
    }
}

/// One save, prepared under the lock and written without it.
enum Save {
    /// The changed devices' entries, appended to the vault's change log.
    Append(crate::vault::LogAppend),
    /// The whole vault, rewritten (folding the log in).
    Whole(crate::vault::Snapshot),
}

/// The writer thread: whenever changes are waiting, take what the save needs under the
/// lock (the changed devices' entries for a log append, or a copy of the whole vault),
/// then seal and write it with the lock released, so callers keep changing the vault
/// meanwhile — those changes are the next save's batch. Ends once the store is dropped,
/// every change is saved and the log is folded into the vault file.
fn writer_loop(shared: &Shared) {
    let _guard = FailRemaining(shared);
    let mut saved = 0u64;
    let mut folded_on_close = false;
    loop {
        let (save, upto) = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            while st.changes == saved && !st.closing {
                st = match shared.wake.wait(st) {
                    Ok(st) => st,
                    Err(_) => return,
                };
            }
            if st.changes == saved {
                // Closing, every change handed to a save. Once more, a whole rewrite: it
                // folds the log into the vault file, and writes the changes a failed
                // save left in memory only (their callers were told, and stopped).
                let unsaved = st.whole || st.vault.has_log();
                if folded_on_close || !unsaved || !st.vault.is_writable() {
                    return;
                }
                folded_on_close = true;
            }
            let whole = st.whole || st.closing || st.vault.log_due_for_compaction();
            let save = if whole {
                st.vault.snapshot().map(Save::Whole)
            } else {
                st.vault.log_append(&st.dirty).map(Save::Append)
            };
            st.dirty.clear();
            st.whole = false;
            (save, st.changes)
        };
        let result = save.and_then(|save| match save {
            Save::Append(append) => {
                shared.appends.fetch_add(1, Ordering::Relaxed);
                append.write().map(|len| {
                    with_vault(shared, |v| v.log_appended(len));
                })
            }
            Save::Whole(snapshot) => {
                shared.rewrites.fetch_add(1, Ordering::Relaxed);
                snapshot.write().map(|written| {
                    with_vault(shared, |v| v.base_written(written));
                })
            }
        });
        if result.is_err() {
            // The log may now end in a torn record, or the vault file is older than the
            // changes: the next save rewrites the whole vault.
            if let Ok(mut st) = shared.state.lock() {
                st.whole = true;
            }
        }
        saved = upto;
        shared.committed.send_modify(|c| match &result {
            Ok(()) => c.durable = upto,
            Err(e) => {
                c.failed_upto = upto;
                c.error = Some(Arc::from(e.to_string()));
            }
        });
    }
}

/// Updates the vault's record of what is on disk, after a save.
fn with_vault(shared: &Shared, f: impl FnOnce(&mut crate::vault::Vault)) {
    if let Ok(mut st) = shared.state.lock() {
        f(&mut st.vault);
    }
}

impl Drop for VaultSecrets {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.closing = true;
        }
        self.shared.wake.notify_one();
        let handle = self.writer.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle {
            // The last changes are written before the vault (and its lock) is released.
            let _ = handle.join();
        }
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

    /// Changes the vault and returns once the change is durable (for bookkeeping the trait
    /// does not cover, e.g. `roomkey secret reset`).
    pub async fn update(
        &self,
        f: impl FnOnce(&mut crate::vault::Vault) -> Result<(), crate::vault::VaultError>,
    ) -> Result<(), SecretStoreError> {
        self.change(Scope::Whole, f).await
    }
}

fn vault_err(e: crate::vault::VaultError) -> SecretStoreError {
    SecretStoreError::Vault(e.to_string())
}

#[async_trait::async_trait]
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

    async fn mark_seeded(&self, device: &Device) -> Result<(), SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.commit(Scope::Device(&device.name), |v| {
            if v.device(&device.name).is_some_and(|d| d.seeded) {
                return Ok(((), false));
            }
            v.mark_seeded(&device.name).map_err(vault_err)?;
            Ok(((), true))
        })
        .await
    }

    fn pending(&self, device: &Device) -> Result<Option<Secret>, SecretStoreError> {
        self.with(|v| {
            Ok(v.device(&device.name)
                .and_then(|d| d.pending.as_ref())
                .map(|r| r.secret.clone()))
        })
    }

    async fn begin_rotation(&self, device: &Device) -> Result<Secret, SecretStoreError> {
        if let ClientSecretSource::Env(var) = &device.client_secret {
            return Err(SecretStoreError::RotationNeedsVault {
                device: device.name.clone(),
                var: var.clone(),
            });
        }
        self.commit(Scope::Device(&device.name), |v| {
            // An unresolved rotation's pending secret is reused, never replaced. It may
            // still be on its way to disk (another call's batch): waiting for the ticket
            // of this call is enough, since it is later than that change's.
            if let Some(p) = v.device(&device.name).and_then(|d| d.pending.as_ref()) {
                return Ok((p.secret.clone(), false));
            }
            let new = crate::vault::generate_phrase();
            v.begin_rotation(&device.name, new.clone())
                .map_err(vault_err)?;
            Ok((new, true))
        })
        .await
    }

    async fn promote_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(Scope::Device(&device.name), |v| {
            v.promote_pending(&device.name)
        })
        .await
    }

    async fn abandon_pending(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(Scope::Device(&device.name), |v| {
            v.abandon_pending(&device.name)
        })
        .await
    }

    async fn confirm_current(&self, device: &Device) -> Result<(), SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.commit(Scope::Device(&device.name), |v| {
            let settled = v.device(&device.name).is_some_and(|d| {
                d.seeded && d.pending.is_none() && d.state == crate::vault::SecretState::Ok
            });
            if settled {
                return Ok(((), false));
            }
            v.confirm_current(&device.name).map_err(vault_err)?;
            Ok(((), true))
        })
        .await
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

    async fn record_attempt(
        &self,
        device: &Device,
        sent_as: Reading,
    ) -> Result<(), SecretStoreError> {
        self.change(Scope::Device(&device.name), |v| {
            v.record_attempt(&device.name, sent_as)
        })
        .await
    }

    fn pending_reading(&self, device: &Device) -> Result<Option<Reading>, SecretStoreError> {
        self.with(|v| {
            Ok(v.device(&device.name)
                .filter(|d| d.pending.is_some())
                .map(|d| d.pending_reading.unwrap_or(Reading::Raw)))
        })
    }

    async fn settle(
        &self,
        device: &Device,
        held: Held,
    ) -> Result<Option<Reading>, SecretStoreError> {
        match held {
            Held::Current => self.confirm_current(device).await.map(|_| None),
            Held::Pending => {
                // A pending secret recorded before readings were tracked was sent raw.
                let reading = self.pending_reading(device)?.unwrap_or(Reading::Raw);
                self.promote_pending(device).await?;
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
                self.change(Scope::Device(&device.name), |v| {
                    v.promote_alternate(&device.name, i)
                })
                .await?;
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

    async fn learn_reading(
        &self,
        device: &Device,
        release: &str,
        reading: Reading,
    ) -> Result<(), SecretStoreError> {
        if matches!(device.client_secret, ClientSecretSource::Env(_)) {
            return Ok(());
        }
        self.change(Scope::Device(&device.name), |v| {
            v.learn_reading(&device.name, release, reading).map(|_| ())
        })
        .await
    }

    fn is_secret_unknown(&self, device: &Device) -> bool {
        self.with(|v| {
            Ok(v.device(&device.name)
                .is_some_and(|d| d.state == crate::vault::SecretState::SecretUnknown))
        })
        .unwrap_or(false)
    }

    async fn mark_secret_unknown(&self, device: &Device) -> Result<(), SecretStoreError> {
        self.change(Scope::Device(&device.name), |v| {
            v.mark_secret_unknown(&device.name)
        })
        .await
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

    #[tokio::test]
    async fn vault_bookkeeping_is_saved_and_never_drops_a_secret() {
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
            store.begin_rotation(r2).await,
            Err(SecretStoreError::RotationNeedsVault { .. })
        ));

        store.confirm_current(r1).await.unwrap();
        assert!(store.is_seeded(r1));
        // begin_rotation is durable and idempotent: the same pending secret until resolved.
        let p = store.begin_rotation(r1).await.unwrap();
        assert_eq!(store.begin_rotation(r1).await.unwrap(), p);
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
        store.mark_secret_unknown(r1).await.unwrap();
        assert!(store.is_secret_unknown(r1));
        store.confirm_current(r1).await.unwrap();
        assert!(!store.is_secret_unknown(r1));
        let on_disk = Vault::open_read_only(&path, &pass).unwrap();
        let d = on_disk.device("r1").unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert!(d.pending.is_none());
        assert_eq!(d.previous[0].secret, p);
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "first secret");

        // A promoted rotation: the old current becomes previous.
        let p2 = store.begin_rotation(r1).await.unwrap();
        store.promote_pending(r1).await.unwrap();
        assert_eq!(store.current(r1).unwrap(), p2);
        let on_disk = Vault::open_read_only(&path, &pass).unwrap();
        let d = on_disk.device("r1").unwrap();
        assert_eq!(d.previous.len(), 2);
        assert_eq!(d.previous[0].secret.expose(), "first secret");
    }

    /// A vault with `n` unseeded devices `d0`..`d{n-1}`, and their inventory entries.
    fn fleet(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, VaultSecrets, Vec<Device>) {
        let path = dir.join("sub").join("vault");
        let mut v = Vault::create(&path, &Secret::new("unit test passphrase")).unwrap();
        let mut yaml = String::from("defaults:\n  auth: { password_env: PW }\ndevices:\n");
        for i in 0..n {
            v.set_current(
                &format!("d{i}"),
                crate::vault::generate_phrase(),
                false,
                None,
            )
            .unwrap();
            yaml.push_str(&format!("  d{i}: {{ host: 127.230.0.{} }}\n", i + 1));
        }
        v.save().unwrap();
        let devices = crate::inventory::parse(std::path::Path::new("inv.yaml"), &yaml)
            .unwrap()
            .devices;
        (path, VaultSecrets::new(v), devices)
    }

    /// Many devices changing the vault at once share saves, and each change is on disk
    /// when its call returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_that_arrive_together_share_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, devices) = fleet(dir.path(), 50);
        let store = Arc::new(store);
        // Hold the writer (the vault lock) so every change is applied before any save.
        let held = store.shared.state.lock().unwrap();
        let tasks: Vec<_> = devices
            .iter()
            .cloned()
            .map(|d| {
                let (store, path) = (Arc::clone(&store), path.clone());
                tokio::spawn(async move {
                    store.confirm_current(&d).await.unwrap();
                    // Durable when the call returns: a fresh read of the file has it.
                    let on_disk =
                        Vault::open_read_only(&path, &Secret::new("unit test passphrase")).unwrap();
                    assert!(on_disk.device(&d.name).unwrap().seeded, "{}", d.name);
                })
            })
            .collect();
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let counts = store.save_counts();
        assert_eq!(counts.changes, 50);
        assert!(counts.saves() < 50 / 4, "{counts:?}");
        let on_disk = Vault::open_read_only(&path, &Secret::new("unit test passphrase")).unwrap();
        assert!(devices
            .iter()
            .all(|d| on_disk.device(&d.name).unwrap().seeded));
    }

    /// A failed save fails every caller whose change it carried (none proceeds believing
    /// its change durable); the next save that works carries them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_save_reaches_every_waiting_caller() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, devices) = fleet(dir.path(), 20);
        let store = Arc::new(store);
        // The vault's directory disappears (as root, permissions would not stop a write).
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        let results = futures::future::join_all(devices.iter().map(|d| {
            let store = Arc::clone(&store);
            async move { store.begin_rotation(d).await }
        }))
        .await;
        for (d, r) in devices.iter().zip(&results) {
            let e = r.as_ref().expect_err(&d.name);
            assert!(e.to_string().contains("saving the vault failed"), "{e}");
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        store.confirm_current(&devices[0]).await.unwrap();
        let on_disk = Vault::open_read_only(&path, &Secret::new("unit test passphrase")).unwrap();
        // The pending secrets applied in memory went to disk with the save that worked:
        // more is recorded than was acted on, never less.
        assert!(on_disk.device("d1").unwrap().pending.is_some());
    }

    /// Changes go to the vault's log as they come; closing the store folds the log into
    /// the vault file — and writes a change that a failed save left in memory only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_folds_the_log_and_writes_what_a_failed_save_left() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, devices) = fleet(dir.path(), 3);
        let log = path.with_file_name("vault.log");
        store.confirm_current(&devices[0]).await.unwrap();
        let counts = store.save_counts();
        assert_eq!((counts.appends, counts.rewrites), (1, 0), "{counts:?}");
        assert!(log.exists());
        // Seen by a reader while the store is open.
        let passphrase = Secret::new("unit test passphrase");
        let on_disk = Vault::open_read_only(&path, &passphrase).unwrap();
        assert!(on_disk.device(&devices[0].name).unwrap().seeded);
        // A save fails (the log cannot be written), leaving the change in memory only.
        std::fs::remove_file(&log).unwrap();
        std::fs::create_dir(&log).unwrap();
        let failed = store.confirm_current(&devices[1]).await;
        assert!(failed.is_err());
        std::fs::remove_dir(&log).unwrap();
        drop(store);
        assert!(!log.exists(), "folded into the vault file");
        let on_disk = Vault::open_read_only(&path, &passphrase).unwrap();
        assert!(on_disk.device(&devices[0].name).unwrap().seeded);
        assert!(
            on_disk.device(&devices[1].name).unwrap().seeded,
            "more is recorded than was acted on, never less"
        );
    }

    /// A store over a vault opened read-only (`apply --check`) reads the log and never
    /// writes: closing it leaves the log for the next writer to fold in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_store_leaves_the_log_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, devices) = fleet(dir.path(), 2);
        let log = path.with_file_name("vault.log");
        store.confirm_current(&devices[0]).await.unwrap();
        drop(store);
        // An interrupted run: the log is left beside the vault file.
        let passphrase = Secret::new("unit test passphrase");
        let mut v = Vault::open(&path, &passphrase).unwrap();
        let names = [devices[1].name.clone()].into_iter().collect();
        v.confirm_current(&devices[1].name).unwrap();
        let len = v.log_append(&names).unwrap().write().unwrap();
        v.log_appended(len);
        drop(v);
        let (vault_before, log_before) =
            (std::fs::read(&path).unwrap(), std::fs::read(&log).unwrap());
        let store = VaultSecrets::new(Vault::open_read_only(&path, &passphrase).unwrap());
        assert!(store.is_seeded(&devices[0]) && store.is_seeded(&devices[1]));
        drop(store);
        assert_eq!(std::fs::read(&path).unwrap(), vault_before);
        assert_eq!(std::fs::read(&log).unwrap(), log_before);
    }
}
