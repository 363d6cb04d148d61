//! The async, bounded edge around the device JWE's scrypt key derivation.
//!
//! scrypt (N=32768, r=8, p=1) costs ~32 MiB and tens of milliseconds of CPU per call. Run on
//! the async executor it would stall every other connection; run unbounded over a fleet it
//! would exhaust memory. [`KdfPool`] therefore runs each derivation on a thread of its own
//! while holding a semaphore permit, so at most `max_parallel` derivations (by default one
//! per core) run at once. The permit moves into the thread, so a cancelled caller does not
//! free a slot while its scrypt is still running. The controller's pool runs them below
//! its other work ([`KdfPool::below_io`], nice +10).
//!
//! One derivation per device session ([`SessionKeys`]): the device derives a JWE's key
//! from (ClientSecret, salt) alone, and the seed only asks that the sender choose a salt
//! of at least 4 random bytes. So a session draws one random salt, derives the key once
//! per (secret, enc) on the pool, and seals every JWE of the session (add, activate,
//! deactivate, a rotation's proof under the new secret) with that key and a fresh random
//! 12-byte IV — AES-GCM is safe for many messages under one key while IVs do not repeat.
//! The keys are zeroized when the session ends (drop). `kdf_salt: per-jwe` keeps the old
//! behaviour (fresh salt and derivation per JWE), and a session falls back to it for a
//! device that refuses a JWE whose salt it has seen ([`SessionKeys::fall_back_to_per_jwe`]).

pub mod buffers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::jwe::{self, Action, Enc, Header, JweError, SALT_LEN};
use crate::secret::Secret;

/// Bounded executor for scrypt derivations; cheap to clone (clones share the bound and the
/// accounting).
#[derive(Clone, Debug)]
pub struct KdfPool {
    permits: Arc<Semaphore>,
    max_parallel: usize,
    usage: Arc<Accounting>,
    /// Nice value of the derivation threads (0: the process's priority).
    nice: i32,
}

/// The nice value of a [`KdfPool::below_io`] pool's derivation threads.
pub const BACKGROUND_NICE: i32 = 10;

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

/// Lowers the calling thread's priority by `nice` (nothing for 0, or where it cannot be
/// done: the derivation then runs at the process's priority, as before).
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // On Linux a thread is a task with its own nice value: PRIO_PROCESS with id 0
        // names the calling thread (setpriority(2), "BUGS").
        // SAFETY: plain syscall on the calling thread; no pointers involved.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
            nice: 0,
        }
    }

    /// The same pool with its derivations running below everything else the process does
    /// (nice +[`BACKGROUND_NICE`] on their own threads): the controller's. scrypt is the
    /// one long CPU burst of a run; below it, the async workers (keepalives, timeouts,
    /// replies) and the journal's and vault's writes get a core as soon as they are ready
    /// even on a 2-core machine, and a device's own work is never queued behind a
    /// derivation for another device. It also makes the bench's simulator, on the same
    /// cores, run first: its devices answer, end their sessions and free them, instead of
    /// sessions piling up while the controller derives ahead.
    pub fn below_io(mut self) -> Self {
        self.nice = BACKGROUND_NICE;
        self
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

    /// Runs `work` on a thread of its own while holding one permit. Its own thread, not
    /// tokio's blocking pool: a derivation thread may run at a lower priority
    /// ([`KdfPool::below_io`]), which an unprivileged process cannot undo, so it must not
    /// be a thread that later does the run's I/O. Starting a thread costs microseconds
    /// against a derivation's tens of milliseconds.
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
        let nice = self.nice;
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("roomkey-kdf".into())
            .spawn(move || {
                let _permit = permit; // released when the derivation is really finished
                lower_priority(nice);
                let before = thread_cpu_ns();
                let result = work();
                let spent = thread_cpu_ns().saturating_sub(before);
                usage.derivations.fetch_add(1, Ordering::Relaxed);
                usage.cpu_ns.fetch_add(spent, Ordering::Relaxed);
                // The caller may have stopped waiting (cancelled): the result is dropped.
                let _ = done.send(result);
            })
            .map_err(|e| JweError::Kdf(format!("cannot start a key derivation thread: {e}")))?;
        result
            .await
            .map_err(|_| JweError::Kdf("key derivation thread panicked".into()))?
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

    /// [`jwe::derive_key`] off the executor, bounded (the simulator's key cache derives
    /// once and opens many JWEs with the key).
    pub async fn derive(
        &self,
        secret: &Secret,
        salt: Vec<u8>,
        enc: Enc,
    ) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let secret = secret.clone();
        self.run_bounded(move || jwe::derive_key(secret.as_bytes(), &salt, enc))
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

/// The JWE keys of one device session: one random salt, one scrypt derivation per
/// (secret, enc), every JWE of the session sealed with it (see the module header).
/// Dropping it zeroizes the keys (and the secrets kept to find them).
#[derive(Debug)]
pub struct SessionKeys {
    pool: KdfPool,
    state: std::sync::Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    /// Fresh salt and key per JWE (the `kdf_salt: per-jwe` setting, or after a fallback).
    per_jwe: bool,
    /// Drawn at the first JWE of the session.
    salt: Option<[u8; SALT_LEN]>,
    keys: Vec<SessionKey>,
    /// JWEs sealed with the session salt.
    sealed: u64,
}

struct SessionKey {
    secret: Secret,
    enc: Enc,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("enc", &self.enc)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// A session's keys, derived on `pool`. `per_jwe`: a fresh salt and derivation for
    /// every JWE instead (the `kdf_salt: per-jwe` setting).
    pub fn new(pool: KdfPool, per_jwe: bool) -> Self {
        SessionKeys {
            pool,
            state: std::sync::Mutex::new(SessionState {
                per_jwe,
                ..SessionState::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        // The state holds no invariant a panicking holder could break half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool the derivations run on.
    pub fn pool(&self) -> &KdfPool {
        &self.pool
    }

    /// JWEs sealed with the session salt so far.
    pub fn sealed(&self) -> u64 {
        self.state().sealed
    }

    /// Whether this session seals with a fresh salt per JWE.
    pub fn is_per_jwe(&self) -> bool {
        self.state().per_jwe
    }

    /// Seals a device JWE: with the session's salt and key (derived on the pool at the
    /// first use of this secret and enc), or per JWE as [`KdfPool::seal`] does.
    pub async fn seal(
        &self,
        action: Action,
        enc: Enc,
        secret: &Secret,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<String, JweError> {
        let Some((salt, key)) = self.session_key(enc, secret).await? else {
            return self.pool.seal(action, enc, secret, plaintext).await;
        };
        self.state().sealed += 1;
        // AES-GCM over a few KiB: microseconds, fine on the executor.
        jwe::seal_fresh_iv(action, enc, &key, &salt, &plaintext)
    }

    /// Derives the session key for (`secret`, `enc`) now, ahead of the JWE that will use
    /// it, so the derivation's wait for the pool is spent before the device's SSH session
    /// is opened rather than holding it idle (the engine does this when the session will
    /// almost surely need the key). Nothing in per-JWE mode, or when the key is there.
    pub async fn prepare(&self, enc: Enc, secret: &Secret) -> Result<(), JweError> {
        self.session_key(enc, secret).await.map(|_| ())
    }

    /// The session salt and the key for (`secret`, `enc`), derived on the pool at its first
    /// use; `None` in per-JWE mode.
    async fn session_key(
        &self,
        enc: Enc,
        secret: &Secret,
    ) -> Result<Option<([u8; SALT_LEN], Zeroizing<Vec<u8>>)>, JweError> {
        let (salt, cached) = {
            let mut st = self.state();
            if st.per_jwe {
                return Ok(None);
            }
            let salt = match st.salt {
                Some(salt) => salt,
                None => *st.salt.insert(jwe::fresh_salt()?),
            };
            let cached = st
                .keys
                .iter()
                .find(|k| k.enc == enc && k.secret.as_bytes() == secret.as_bytes())
                .map(|k| k.key.clone());
            (salt, cached)
        };
        if let Some(key) = cached {
            return Ok(Some((salt, key)));
        }
        let s = secret.clone();
        let key = self
            .pool
            .run_bounded(move || jwe::derive_key(s.as_bytes(), &salt, enc))
            .await?;
        let mut st = self.state();
        // Two callers may have derived the same key at once; one copy is kept.
        if !st
            .keys
            .iter()
            .any(|k| k.enc == enc && k.secret.as_bytes() == secret.as_bytes())
        {
            st.keys.push(SessionKey {
                secret: secret.clone(),
                enc,
                key: key.clone(),
            });
        }
        Ok(Some((salt, key)))
    }

    /// Switches this session to a fresh salt per JWE if it has sealed more than one JWE
    /// with its salt (so a device's refusal may be of the repeated salt); the keys are
    /// dropped (zeroized). True if it switched: the caller may retry what was refused.
    pub fn fall_back_to_per_jwe(&self) -> bool {
        let mut st = self.state();
        if st.per_jwe || st.sealed < 2 {
            return false;
        }
        st.per_jwe = true;
        st.keys.clear();
        true
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

    fn salt_of(compact: &str) -> Vec<u8> {
        jwe::parse(compact).unwrap().header.salt
    }

    #[tokio::test]
    async fn a_session_derives_once_per_secret_and_shares_its_salt() {
        let pool = KdfPool::new(1);
        let secret = Secret::new("ossifrage");
        let other = Secret::new("squeamish");
        let pt = || Zeroizing::new(b"payload".to_vec());
        let session = SessionKeys::new(pool.clone(), false);
        let a = session
            .seal(Action::Add, Enc::A128Gcm, &secret, pt())
            .await
            .unwrap();
        let b = session
            .seal(Action::Activate, Enc::A128Gcm, &secret, pt())
            .await
            .unwrap();
        assert_eq!(pool.usage().derivations, 1, "one derivation for two JWEs");
        let c = session
            .seal(Action::Populate, Enc::A128Gcm, &other, pt())
            .await
            .unwrap();
        assert_eq!(
            pool.usage().derivations,
            2,
            "a second secret derives once more"
        );
        assert_eq!(salt_of(&a), salt_of(&b));
        assert_eq!(salt_of(&a), salt_of(&c));
        assert_ne!(
            jwe::parse(&a).unwrap().iv,
            jwe::parse(&b).unwrap().iv,
            "every JWE has its own IV"
        );
        // Every JWE opens as the device opens it: derive from its header's salt.
        for (jwe, s) in [(&a, &secret), (&b, &secret), (&c, &other)] {
            let (_, plain) = jwe::open(jwe, s).unwrap();
            assert_eq!(plain.as_slice(), b"payload");
        }
        drop(session);
        let next = SessionKeys::new(pool.clone(), false);
        let d = next
            .seal(Action::Add, Enc::A128Gcm, &secret, pt())
            .await
            .unwrap();
        assert_ne!(
            salt_of(&a),
            salt_of(&d),
            "the next session draws a new salt"
        );
    }

    #[tokio::test]
    async fn per_jwe_and_the_fallback_draw_a_salt_per_jwe() {
        let pool = KdfPool::new(1);
        let secret = Secret::new("ossifrage");
        let pt = || Zeroizing::new(b"payload".to_vec());
        let per_jwe = SessionKeys::new(pool.clone(), true);
        let a = per_jwe
            .seal(Action::Add, Enc::A256Gcm, &secret, pt())
            .await
            .unwrap();
        let b = per_jwe
            .seal(Action::Add, Enc::A256Gcm, &secret, pt())
            .await
            .unwrap();
        assert_ne!(salt_of(&a), salt_of(&b));
        assert_eq!(pool.usage().derivations, 2);
        assert!(!per_jwe.fall_back_to_per_jwe(), "already per JWE");

        let session = SessionKeys::new(pool.clone(), false);
        let c = session
            .seal(Action::Add, Enc::A256Gcm, &secret, pt())
            .await
            .unwrap();
        assert!(
            !session.fall_back_to_per_jwe(),
            "one JWE: its salt was never repeated, nothing to fall back from"
        );
        let d = session
            .seal(Action::Activate, Enc::A256Gcm, &secret, pt())
            .await
            .unwrap();
        assert_eq!(salt_of(&c), salt_of(&d));
        assert!(session.fall_back_to_per_jwe());
        assert!(session.is_per_jwe());
        let e = session
            .seal(Action::Activate, Enc::A256Gcm, &secret, pt())
            .await
            .unwrap();
        assert_ne!(salt_of(&e), salt_of(&c));
        assert_eq!(jwe::open(&e, &secret).unwrap().1.as_slice(), b"payload");
    }

    #[tokio::test]
    async fn a_prepared_key_is_the_one_the_session_seals_with() {
        let pool = KdfPool::new(1);
        let secret = Secret::new("ossifrage");
        let pt = || Zeroizing::new(b"payload".to_vec());
        let session = SessionKeys::new(pool.clone(), false);
        session.prepare(Enc::A128Gcm, &secret).await.unwrap();
        assert_eq!(pool.usage().derivations, 1);
        assert_eq!(session.sealed(), 0, "preparing seals nothing");
        let a = session
            .seal(Action::Add, Enc::A128Gcm, &secret, pt())
            .await
            .unwrap();
        let b = session
            .seal(Action::Activate, Enc::A128Gcm, &secret, pt())
            .await
            .unwrap();
        assert_eq!(pool.usage().derivations, 1, "the prepared key was used");
        assert_eq!(salt_of(&a), salt_of(&b));
        assert_eq!(jwe::open(&a, &secret).unwrap().1.as_slice(), b"payload");
        // Preparing again, or for a key already derived, derives nothing.
        session.prepare(Enc::A128Gcm, &secret).await.unwrap();
        assert_eq!(pool.usage().derivations, 1);
        // A wrong guess costs a derivation, never a wrong key.
        let other = Secret::new("squeamish");
        let c = session
            .seal(Action::Add, Enc::A256Gcm, &other, pt())
            .await
            .unwrap();
        assert_eq!(pool.usage().derivations, 2);
        assert_eq!(jwe::open(&c, &other).unwrap().1.as_slice(), b"payload");
        // Per JWE there is no session key to prepare.
        let per_jwe = SessionKeys::new(pool.clone(), true);
        per_jwe.prepare(Enc::A128Gcm, &secret).await.unwrap();
        assert_eq!(pool.usage().derivations, 2);
    }
}
