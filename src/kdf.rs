//! The async, bounded edge around the device JWE's scrypt key derivation.
//!
//! scrypt (N=32768, r=8, p=1) costs ~32 MiB and tens of milliseconds of CPU per call. Run on
//! the async executor it would stall every other connection; run unbounded over a fleet it
//! would exhaust memory. [`KdfPool`] therefore runs each derivation with
//! `tokio::task::spawn_blocking` while holding a semaphore permit, so at most `max_parallel`
//! derivations (by default one per core) run at once. The permit moves into the blocking
//! task, so a cancelled caller does not free a slot while its scrypt is still running.

pub mod buffers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::jwe::{self, Action, Enc, Header, JweError};
use crate::secret::Secret;

/// Bounded executor for scrypt derivations; cheap to clone (clones share the bound and the
/// accounting).
#[derive(Clone, Debug)]
pub struct KdfPool {
    permits: Arc<Semaphore>,
    max_parallel: usize,
    usage: Arc<Accounting>,
}

/// What the pool's derivations cost: how many ran and the CPU time of the threads that ran
/// them (the unavoidable cost a run is measured against).
#[derive(Debug, Default)]
struct Accounting {
    derivations: AtomicU64,
    cpu_ns: AtomicU64,
}

/// A snapshot of [`KdfPool`]'s accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct KdfUsage {
    /// Jobs run on the pool (each one scrypt derivation).
    pub derivations: u64,
    /// Thread CPU time they took, in milliseconds.
    pub cpu_ms: u64,
}

/// CPU time consumed so far by the calling thread (zero where the clock is unavailable).
fn thread_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
            return secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        }
    }
    0
}

impl KdfPool {
    /// A pool allowing at most `max_parallel` concurrent derivations (0 is treated as 1).
    pub fn new(max_parallel: usize) -> Self {
        let max_parallel = max_parallel.max(1);
        KdfPool {
            permits: Arc::new(Semaphore::new(max_parallel)),
            max_parallel,
            usage: Arc::default(),
        }
    }

    /// One derivation per available core (1 if that cannot be determined).
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The bound this pool enforces.
    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }

    /// Derivations run so far and their CPU time.
    pub fn usage(&self) -> KdfUsage {
        KdfUsage {
            derivations: self.usage.derivations.load(Ordering::Relaxed),
            cpu_ms: self.usage.cpu_ns.load(Ordering::Relaxed) / 1_000_000,
        }
    }

    /// Runs `work` on the blocking thread pool while holding one permit.
    async fn run_bounded<T, F>(&self, work: F) -> Result<T, JweError>
    where
        F: FnOnce() -> Result<T, JweError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| JweError::Kdf("key derivation pool is closed".into()))?;
        let usage = Arc::clone(&self.usage);
        tokio::task::spawn_blocking(move || {
            let _permit = permit; // released when the derivation is really finished
            let before = thread_cpu_ns();
            let result = work();
            let spent = thread_cpu_ns().saturating_sub(before);
            usage.derivations.fetch_add(1, Ordering::Relaxed);
            usage.cpu_ns.fetch_add(spent, Ordering::Relaxed);
            result
        })
        .await
        .map_err(|_| JweError::Kdf("key derivation task panicked or was cancelled".into()))?
    }

    /// [`jwe::seal`] off the executor, bounded.
    pub async fn seal(
        &self,
        action: Action,
        enc: Enc,
        secret: &Secret,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<String, JweError> {
        let secret = secret.clone();
        self.run_bounded(move || jwe::seal(action, enc, &secret, &plaintext))
            .await
    }

    /// [`jwe::open`] off the executor, bounded. The JWE is parsed first, so a malformed one
    /// fails at once without taking a slot.
    pub async fn open(
        &self,
        compact: String,
        secret: &Secret,
    ) -> Result<(Header, Zeroizing<Vec<u8>>), JweError> {
        let parsed = jwe::parse(&compact)?;
        let secret = secret.clone();
        self.run_bounded(move || {
            let key = jwe::derive_key(secret.as_bytes(), &parsed.header.salt, parsed.header.enc)?;
            let plaintext = jwe::open_with_key(&parsed, &key)?;
            Ok((parsed.header, plaintext))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_n_derivations_at_once() {
        const N: usize = 2;
        const CALLS: usize = 7;
        let pool = KdfPool::new(N);
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = mpsc::channel::<()>();
        // Each job blocks until the test hands it a token: the test decides when jobs end,
        // so no timing is involved.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));

        let mut handles = Vec::new();
        for _ in 0..CALLS {
            let pool = pool.clone();
            let (active, peak, started_tx, release_rx) = (
                active.clone(),
                peak.clone(),
                started_tx.clone(),
                release_rx.clone(),
            );
            handles.push(tokio::spawn(async move {
                pool.run_bounded(move || {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                    active.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            }));
        }
        drop(started_tx);

        // Release jobs one at a time; after the first N start, each release lets exactly one
        // more start. The peak must reach N (the bound is usable) and never exceed it.
        let rx = tokio::task::spawn_blocking(move || {
            for _ in 0..N {
                started_rx.recv().unwrap();
            }
            for i in 0..CALLS {
                release_tx.send(()).unwrap();
                if i + N < CALLS {
                    started_rx.recv().unwrap();
                }
            }
        });
        rx.await.unwrap();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), N);
        assert_eq!(active.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn seal_and_open_round_trip() {
        let pool = KdfPool::new(1);
        let secret = Secret::new("ossifrage");
        let jwe = pool
            .seal(
                Action::Add,
                Enc::A256Gcm,
                &secret,
                Zeroizing::new(b"pem".to_vec()),
            )
            .await
            .unwrap();
        let (h, pt) = pool.open(jwe.clone(), &secret).await.unwrap();
        assert_eq!(h.action, Action::Add);
        assert_eq!(pt.as_slice(), b"pem");
        assert_eq!(
            pool.open(jwe, &Secret::new("nope")).await.unwrap_err(),
            JweError::Authentication
        );
        assert!(matches!(
            pool.open("garbage".into(), &secret).await.unwrap_err(),
            JweError::PartCount { found: 1 }
        ));
    }

    #[test]
    fn zero_is_one_and_per_core_is_positive() {
        assert_eq!(KdfPool::new(0).max_parallel(), 1);
        assert!(KdfPool::per_core().max_parallel() >= 1);
    }
}
