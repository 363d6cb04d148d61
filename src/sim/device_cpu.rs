//! What opening a JWE costs a simulated device, shaped for `roomkey bench` (issue 16): a
//! per-derivation device delay, an optional per-device cache of derived keys, and the
//! fleet's account of simulated device time (reply latency and derivation delays).
//!
//! - **Derivation delay** (`roomkey sim --device-scrypt-ms`): a Room Kit derives scrypt
//!   keys on a CPU much slower than this machine's. Each derivation waits this long as a
//!   `tokio::time::sleep` — device time, not this machine's: no thread is held, so it does
//!   not compete with the controller for the cores.
//! - **Key cache** (`roomkey sim --cache-jwe-keys`, default off): the last few derived keys
//!   per device, by (secret, salt, enc), zeroized when evicted. With one salt per controller
//!   session (`kdf_salt: per-session`) a session's JWEs then cost the device one
//!   derivation. Whether a real device caches is unknown (the firmware's behaviour is not
//!   public), so tests keep it off and every JWE is opened with its own derivation, as the
//!   seed describes. It exists for the bench's CPU accounting: the simulator runs on the
//!   same cores as the controller being measured, and without it the simulator's repeated
//!   derivations would dominate the machine.
//! - **Device time**: the fleet sums the latency it waited before replies and the
//!   derivation delays, so the bench can state the devices' floor (their time over the
//!   session concurrency).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::jwe::{self, Enc, Header, JweError};
use crate::kdf::KdfPool;
use crate::secret::Secret;

/// Keys a device keeps (a session uses one per secret; a rotation's proofs try a few).
const CACHE_ENTRIES: usize = 4;

/// The fleet's device-cost settings (part of `FleetOptions`).
#[derive(Clone, Debug, Default)]
pub struct DeviceCpu {
    /// Reuse a derived key for a repeated (secret, salt, enc) on the same device.
    pub cache_keys: bool,
    /// Device time each scrypt derivation takes on top of this machine's.
    pub derivation_delay: Duration,
    /// Where the fleet's device time is summed.
    pub account: Arc<DeviceTime>,
}

/// The fleet's simulated device time, summed over every device.
#[derive(Debug, Default)]
pub struct DeviceTime {
    latency_ns: AtomicU64,
    delay_ns: AtomicU64,
    derivations: AtomicU64,
    reused: AtomicU64,
}

/// A reading of [`DeviceTime`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceTimeUsage {
    /// Reply latency waited, in milliseconds.
    pub latency_ms: u64,
    /// Derivation delays waited, in milliseconds.
    pub derivation_delay_ms: u64,
    /// Keys derived to open JWEs.
    pub derivations: u64,
    /// JWEs opened with a cached key.
    pub reused: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl DeviceTime {
    /// A reply waited `latency` (the fault plan's `latency_ms`).
    pub fn add_latency(&self, latency: Duration) {
        self.latency_ns.fetch_add(nanos(latency), Ordering::Relaxed);
    }

    pub fn usage(&self) -> DeviceTimeUsage {
        DeviceTimeUsage {
            latency_ms: self.latency_ns.load(Ordering::Relaxed) / 1_000_000,
            derivation_delay_ms: self.delay_ns.load(Ordering::Relaxed) / 1_000_000,
            derivations: self.derivations.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
        }
    }
}

struct CachedKey {
    secret: Secret,
    salt: Vec<u8>,
    enc: Enc,
    key: Zeroizing<Vec<u8>>,
}

/// One device's derived keys, most recent last (bounded, zeroized on eviction).
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<VecDeque<CachedKey>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CachedKey>> {
        // Only whole entries are pushed and popped: nothing half-done to refuse.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, secret: &Secret, salt: &[u8], enc: Enc) -> Option<Zeroizing<Vec<u8>>> {
        self.lock()
            .iter()
            .find(|e| e.enc == enc && e.salt == salt && e.secret.as_bytes() == secret.as_bytes())
            .map(|e| e.key.clone())
    }

    fn insert(&self, secret: &Secret, salt: Vec<u8>, enc: Enc, key: Zeroizing<Vec<u8>>) {
        let mut entries = self.lock();
        if entries.len() >= CACHE_ENTRIES {
            entries.pop_front();
        }
        entries.push_back(CachedKey {
            secret: secret.clone(),
            salt,
            enc,
            key,
        });
    }
}

/// Opens a device JWE keyed from `secret`: the key from `cache` when the settings allow
/// and it holds one, else derived on `kdf` after the device's derivation delay.
pub async fn open(
    cpu: &DeviceCpu,
    cache: &KeyCache,
    kdf: &KdfPool,
    compact: &str,
    secret: &Secret,
) -> Result<(Header, Zeroizing<Vec<u8>>), JweError> {
    let parsed = jwe::parse(compact)?;
    let enc = parsed.header.enc;
    let cached = cpu
        .cache_keys
        .then(|| cache.find(secret, &parsed.header.salt, enc))
        .flatten();
    let key = match cached {
        Some(key) => {
            cpu.account.reused.fetch_add(1, Ordering::Relaxed);
            key
        }
        None => {
            if !cpu.derivation_delay.is_zero() {
                tokio::time::sleep(cpu.derivation_delay).await;
                cpu.account
                    .delay_ns
                    .fetch_add(nanos(cpu.derivation_delay), Ordering::Relaxed);
            }
            let key = kdf.derive(secret, parsed.header.salt.clone(), enc).await?;
            cpu.account.derivations.fetch_add(1, Ordering::Relaxed);
            if cpu.cache_keys {
                cache.insert(secret, parsed.header.salt.clone(), enc, key.clone());
            }
            key
        }
    };
    let plaintext = jwe::open_with_key(&parsed, &key)?;
    Ok((parsed.header, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwe::Action;
    use crate::kdf::SessionKeys;

    /// Three JWEs of one controller session (one salt), then one of another session.
    async fn jwes(secret: &Secret) -> Vec<String> {
        let mut out = Vec::new();
        let first = SessionKeys::new(KdfPool::new(1), false);
        for _ in 0..3 {
            let plain = Zeroizing::new(b"fingerprint".to_vec());
            out.push(
                first
                    .seal(Action::Deactivate, Enc::A256Gcm, secret, plain)
                    .await
                    .unwrap(),
            );
        }
        let second = SessionKeys::new(KdfPool::new(1), false);
        let plain = Zeroizing::new(b"fingerprint".to_vec());
        out.push(
            second
                .seal(Action::Deactivate, Enc::A256Gcm, secret, plain)
                .await
                .unwrap(),
        );
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_derives_once_per_salt_and_the_delay_is_device_time() {
        let secret = Secret::new("device secret 1");
        let jwes = jwes(&secret).await;
        for cache_keys in [false, true] {
            let cpu = DeviceCpu {
                cache_keys,
                derivation_delay: Duration::from_millis(800),
                account: Arc::default(),
            };
            let (cache, kdf) = (KeyCache::default(), KdfPool::new(1));
            let started = tokio::time::Instant::now();
            for j in &jwes {
                let (_, plain) = open(&cpu, &cache, &kdf, j, &secret).await.unwrap();
                assert_eq!(plain.as_slice(), b"fingerprint");
            }
            // Another secret's key is not taken from the cache.
            let wrong = open(&cpu, &cache, &kdf, &jwes[0], &Secret::new("other secret")).await;
            assert!(wrong.is_err());
            let derived: u64 = if cache_keys { 2 + 1 } else { 4 + 1 };
            let used = cpu.account.usage();
            assert_eq!(used.derivations, derived, "cache {cache_keys}");
            assert_eq!(kdf.usage().derivations, derived, "cache {cache_keys}");
            assert_eq!(used.reused, 5 - derived);
            assert_eq!(used.derivation_delay_ms, 800 * derived);
            // The delay is waited (paused clock: exactly), not spent on a thread.
            assert!(started.elapsed() >= Duration::from_millis(800 * derived));
        }
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = KeyCache::default();
        let secret = Secret::new("s");
        for i in 0..10u8 {
            cache.insert(
                &secret,
                vec![i; 16],
                Enc::A128Gcm,
                Zeroizing::new(vec![i; 16]),
            );
        }
        assert_eq!(cache.lock().len(), CACHE_ENTRIES);
        assert!(cache.find(&secret, &[9; 16], Enc::A128Gcm).is_some());
        assert!(cache.find(&secret, &[0; 16], Enc::A128Gcm).is_none());
    }
}
