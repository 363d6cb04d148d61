//! The fleet engine: takes prepared devices and a playbook and brings every device through
//! the steps, concurrently and durably.
//!
//! - Concurrency is bounded twice: a semaphore for device sessions (`policy.concurrency`)
//!   and the `KdfPool` for scrypt (at most one derivation per core).
//! - Each device runs its steps in order on one TSH session. One device's failure, hang or
//!   disconnect only ends that device: its task owns its session and its journal.
//! - Every run reads the device: each selected device is connected and every step reads
//!   before it decides, so "ok" means the device is right *now*. The journal is for
//!   resuming interrupted writes and for actions done once per run, never a cache of the
//!   device.
//! - A run is one unit with an id (`journal::RunLog`): rerunning an interrupted command
//!   continues that run — devices it finished are not redone, its once-per-run actions
//!   (rotation, restart, raw commands) are not repeated. A finished run is over.
//! - Write-ahead journal: a step is recorded `in-flight` (fsynced) before its first
//!   changing command is sent, `done`/`failed` after. A step found in-flight on a rerun is
//!   reconciled against the device with read-only commands before anything is resent; a
//!   raw command whose outcome the device cannot show is not resent without consent.
//! - Stop (Ctrl-C): no new device or step starts; the current command finishes or times out;
//!   everything is recorded; the run ends resumable.
//! - The engine never prints: it sends `Event`s to a `Reporter`.

pub mod assets;
pub mod events;
pub mod prepare;
pub mod resolve;
pub mod rollout;
pub mod secrets;
pub mod steps;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore, SemaphorePermit};

use crate::journal::{now_ms, DeviceJournal, Durability, Record, RunLog, StepOutputs, StepStatus};
use crate::kdf::{KdfPool, SessionKeys};
use crate::playbook::{HostKeyPolicySetting, Playbook};
use crate::ssh::{ConnectOptions, HostKeyPolicy, SshError, TshSession};

pub use events::{DeviceOutcome, DeviceStatus, Event, Reporter, RunSummary, StepReport};
pub use prepare::PreparedDevice;
pub use secrets::SecretStore;

/// Everything a run needs, validated and resolved up front.
pub struct RunConfig {
    pub playbook: Playbook,
    pub devices: Vec<PreparedDevice>,
    pub state_dir: PathBuf,
    pub known_hosts: PathBuf,
    /// Overrides the playbook's host-key policy (`--accept-new-host-keys`).
    pub host_key_policy: Option<HostKeyPolicySetting>,
    /// `apply --check`: run only read-only commands, report what would change; write no
    /// journal. The SSH session itself refuses anything else.
    pub check_mode: bool,
    /// `--new-run`: abandon an interrupted run instead of continuing it.
    pub new_run: bool,
    /// `--confirm-resend`: step ids (or kinds) whose outcome was unknown (found in flight)
    /// and that the administrator confirmed may be sent again.
    pub confirm_resend: Vec<String>,
    pub kdf: KdfPool,
    pub secrets: Arc<dyn SecretStore>,
    /// Becomes `true` to stop starting new work.
    pub stop: watch::Receiver<bool>,
    /// `--wait-for-window`: sleep until a closed maintenance window opens instead of
    /// leaving the device for the next run.
    pub wait_for_window: bool,
    /// Pins the run's wall-clock start (tests); `None` = now.
    pub start_time: Option<jiff::Timestamp>,
}

/// The journal directory key of a playbook: its name, made file-system safe.
pub fn playbook_key(playbook: &Playbook) -> String {
    let key: String = playbook
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        "playbook".into()
    } else {
        key
    }
}

fn run_id() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now_ms().to_string())
}

/// Why the run stops starting new devices (Ctrl-C, a failure budget). Device tasks watch it.
type Halt = watch::Receiver<Option<String>>;

fn halted(halt: &Halt) -> bool {
    halt.borrow().is_some()
}

/// The run's wall clock: the wall time at start plus tokio's elapsed time, so tests can
/// pin the start and drive time with `tokio::time::pause`.
#[derive(Clone, Copy)]
struct Clock {
    wall: jiff::Timestamp,
    at: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> jiff::Timestamp {
        let elapsed = jiff::SignedDuration::try_from(self.at.elapsed()).unwrap_or_default();
        self.wall.checked_add(elapsed).unwrap_or(self.wall)
    }

    fn instant_for(&self, t: jiff::Timestamp) -> tokio::time::Instant {
        let ahead = t.duration_since(self.wall);
        let ahead = Duration::try_from(ahead).unwrap_or_default();
        self.at + ahead
    }
}

/// Expected device duration: the mean of devices that did work (this run and, seeded, the
/// journal of earlier runs), else the policy's default.
struct Estimator {
    default: Duration,
    total_ms: AtomicU64,
    count: AtomicU64,
}

impl Estimator {
    fn estimate(&self) -> Duration {
        match self.count.load(Ordering::Relaxed) {
            0 => self.default,
            n => Duration::from_millis(self.total_ms.load(Ordering::Relaxed) / n),
        }
    }

    fn record(&self, d: Duration) {
        self.total_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Spaces new connections `1/rate` apart across the fleet, with jitter.
struct RateLimiter {
    interval: Option<Duration>,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    fn new(rate: Option<f64>) -> Self {
        RateLimiter {
            interval: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self, device: &str) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let now = tokio::time::Instant::now();
            let slot = (*next).max(now);
            // ±25% jitter keeps a fleet from synchronising on the slots.
            let spread = jitter_fraction(device, 0) - 0.25;
            let step = interval.mul_f64(1.0 + spread);
            *next = slot + step;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

struct Shared {
    config: Arc<RunConfig>,
    reporter: Arc<dyn Reporter>,
    /// Devices in their turn (journal open, key being prepared, or in a session): the
    /// sessions plus one per derivation slot, so that while every session is busy the
    /// next devices' keys are already being derived.
    turns: Semaphore,
    /// Open SSH sessions (`policy.concurrency`): taken when a device's key is ready and it
    /// connects, given back when its session closes (also between retries).
    sessions: Semaphore,
    halt_tx: watch::Sender<Option<String>>,
    failed_total: AtomicUsize,
    clock: Clock,
    estimator: Estimator,
    rate: RateLimiter,
    run: String,
    /// The run log could not be read or written: no device is started.
    run_error: Option<String>,
}

impl Shared {
    fn halt(&self, reason: String) {
        self.halt_tx.send_if_modified(|h| {
            if h.is_none() {
                *h = Some(reason.clone());
                true
            } else {
                false
            }
        });
    }
}

/// Runs the playbook on every prepared device and returns the summary (also sent as the
/// last event). Devices run in batches (`serial`); failure budgets and maintenance windows
/// decide whether more devices start.
pub async fn run(config: RunConfig, reporter: Arc<dyn Reporter>) -> RunSummary {
    let started = Instant::now();
    let key = playbook_key(&config.playbook);
    // The run log is read-only in check mode: a check neither starts nor continues a run,
    // but it judges devices as the real rerun would (continuing an interrupted run).
    // Opened, repaired and appended to (fsync) on the blocking pool: the async workers
    // never wait on a disk.
    let opened = {
        let (state_dir, read_only, new_run) =
            (config.state_dir.clone(), config.check_mode, config.new_run);
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            RunLog::open(&state_dir, &key, read_only).and_then(|mut log| {
                let current = log.begin(&run_id(), new_run)?;
                Ok((log, current))
            })
        })
        .await
        .unwrap_or_else(|e| Err(blocking_failed(&config.state_dir, "the run log", &e)))
    };
    let (mut run_log, run, run_error) = match opened {
        Ok((log, current)) => {
            if current.resumed {
                reporter.event(&Event::Notice {
                    device: None,
                    message: format!(
                        "continuing run {} (it was interrupted): devices it finished are not \
                         redone, and what it did once per run is not repeated",
                        current.id
                    ),
                });
            }
            (Some(log), current.id, None)
        }
        Err(e) => (None, run_id(), Some(e.to_string())),
    };
    reporter.event(&Event::RunStarted {
        playbook: config.playbook.name.clone(),
        run: run.clone(),
        devices: config.devices.len(),
        steps: config.playbook.steps.len(),
        check_mode: config.check_mode,
    });
    let (halt_tx, halt_rx) = watch::channel(None);
    let estimator = Estimator {
        default: config.playbook.policy.device_estimate,
        total_ms: AtomicU64::new(0),
        count: AtomicU64::new(0),
    };
    for d in journal_durations(&config).await {
        estimator.record(d);
    }
    let sessions = config.playbook.policy.concurrency.max(1);
    let shared = Arc::new(Shared {
        turns: Semaphore::new(sessions.saturating_add(config.kdf.max_parallel())),
        sessions: Semaphore::new(sessions),
        rate: RateLimiter::new(config.playbook.policy.connection_rate),
        clock: Clock {
            wall: config.start_time.unwrap_or_else(jiff::Timestamp::now),
            at: tokio::time::Instant::now(),
        },
        config: Arc::new(config),
        reporter,
        halt_tx,
        failed_total: AtomicUsize::new(0),
        estimator,
        run: run.clone(),
        run_error,
    });
    // Ctrl-C (the caller's stop signal) halts like a budget does.
    let forward = {
        let shared = Arc::clone(&shared);
        let mut stop = shared.config.stop.clone();
        tokio::spawn(async move {
            if stop.wait_for(|s| *s).await.is_ok() {
                shared.halt("interrupted".into());
            }
        })
    };

    let total = shared.config.devices.len();
    let sizes = rollout::batch_sizes(total, &shared.config.playbook.serial);
    let mut outcomes: Vec<Option<DeviceOutcome>> = vec![None; total];
    let mut first = 0usize;
    for (batch_index, size) in sizes.iter().enumerate() {
        let batch = batch_index + 1;
        let range = first..first + size;
        first += size;
        if halted(&halt_rx) {
            break;
        }
        shared.reporter.event(&Event::BatchStarted {
            batch,
            batches: sizes.len(),
            devices: range
                .clone()
                .filter_map(|i| shared.config.devices.get(i))
                .map(|d| d.device.name.clone())
                .collect(),
        });
        let mut tasks = tokio::task::JoinSet::new();
        for index in range.clone() {
            let shared = Arc::clone(&shared);
            let halt = halt_rx.clone();
            tasks.spawn(async move {
                let outcome = device_task(&shared, index, halt).await?;
                shared.reporter.event(&Event::DeviceFinished {
                    outcome: outcome.clone(),
                });
                Some((index, outcome))
            });
        }
        let mut failed_in_batch = 0;
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Some((index, outcome))) = joined {
                if !outcome.status.is_success() && !outcome.status.is_unfinished() {
                    failed_in_batch += 1;
                }
                if let Some(slot) = outcomes.get_mut(index) {
                    *slot = Some(outcome);
                }
            }
        }
        if let Some(reason) =
            shared
                .config
                .playbook
                .budget
                .batch_tripped(batch, range.len(), failed_in_batch)
        {
            shared.halt(reason);
        }
    }
    forward.abort();
    // Gone once awaited: the run's references (to the secret store among them) are then
    // all in `shared`, released below.
    let _ = forward.await;

    let outcomes: Vec<DeviceOutcome> = outcomes
        .into_iter()
        .zip(shared.config.devices.iter())
        .map(|(o, d)| o.unwrap_or_else(|| not_started(d)))
        .collect();
    let window_closed = outcomes.iter().any(|o| {
        o.status == DeviceStatus::NotStarted
            && o.reason
                .as_deref()
                .is_some_and(|r| r.starts_with(WINDOW_PREFIX))
    });
    let halt_reason = halt_rx.borrow().clone();
    let stopped_early = match (halt_reason, window_closed) {
        (Some(reason), _) => Some(events::StoppedEarly {
            reason: format!("{reason}; rerun the same command to resume"),
        }),
        (None, true) => Some(events::StoppedEarly {
            reason: "the maintenance window does not leave time for every device; rerun in \
                     the next window (or use --wait-for-window) to continue"
                .into(),
        }),
        (None, false) => None,
    };
    // A run that reached every selected device is over; the next invocation is a new run.
    let reached_all = outcomes.iter().all(|o| !o.status.is_unfinished());
    if let (Some(mut log), false, None, true) = (
        run_log.take(),
        shared.config.check_mode,
        &stopped_early,
        reached_all,
    ) {
        let id = run.clone();
        let finished = tokio::task::spawn_blocking(move || log.finish(&id))
            .await
            .unwrap_or_else(|e| Err(blocking_failed(&shared.config.state_dir, "the run log", &e)));
        if let Err(e) = finished {
            shared.reporter.event(&Event::Notice {
                device: None,
                message: format!("could not record the run as finished: {e}"),
            });
        }
    }
    let summary = RunSummary {
        playbook: shared.config.playbook.name.clone(),
        run,
        outcomes,
        stopped_early,
        duration_ms: started.elapsed().as_millis() as u64,
        check_mode: shared.config.check_mode,
        kdf: shared.config.kdf.usage(),
    };
    // The run may hold the last reference to the secret store: releasing it closes the
    // vault, folding its change log into the vault file (a blocking save) — done on the
    // blocking pool, and before the run is reported finished, so the caller finds the
    // vault whole and unlocked.
    let reporter = Arc::clone(&shared.reporter);
    let _ = tokio::task::spawn_blocking(move || drop(shared)).await;
    reporter.event(&Event::RunFinished {
        summary: summary.clone(),
    });
    summary
}

/// Reasons of devices held back by their maintenance window start with this.
pub const WINDOW_PREFIX: &str = "maintenance window";

/// One device from the start of its turn to its outcome: window, turn, halt check.
async fn device_task(shared: &Shared, index: usize, mut halt: Halt) -> Option<DeviceOutcome> {
    let config = &shared.config;
    let prepared = config.devices.get(index)?;
    let window = prepared
        .device
        .window
        .as_ref()
        .or(config.playbook.window.as_ref());
    loop {
        let permit = tokio::select! {
            p = shared.turns.acquire() => p.ok(),
            _ = halt.wait_for(|h| h.is_some()) => None,
        };
        let Some(permit) = permit.filter(|_| !halted(&halt)) else {
            return Some(not_started(prepared));
        };
        // The window is judged when the device would really start (it may have queued for
        // its turn), with the estimate as it stands now.
        let opens = match window {
            None => None,
            Some(window) => match window_refusal_now(shared, window) {
                None => None,
                Some(reason) if !config.wait_for_window => {
                    return Some(window_refusal(prepared, reason));
                }
                Some(_) => Some((window, window.next_open(shared.clock.now()))),
            },
        };
        match opens {
            None => {
                let started = Instant::now();
                // Boxed: a device's whole run is a large state machine, and every device
                // of a batch is spawned at once to queue for its turn. Inline, each queued
                // task would hold that state from the start; boxed, it is allocated only
                // while the device has its turn (memory bounded by sessions, not by the
                // fleet).
                let (outcome, session_slot) =
                    Box::pin(run_device(shared, prepared, window, halt.clone())).await;
                // Its window closed (or grew too short) while its key was derived and it
                // waited for a session slot: nothing was sent; with --wait-for-window it
                // waits for the next one like any device.
                let window_closed = outcome.status == DeviceStatus::NotStarted
                    && outcome
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with(WINDOW_PREFIX));
                if window_closed && config.wait_for_window {
                    drop(permit);
                    continue;
                }
                // Counted while the device still holds its session slot: a budget that
                // trips halts the run before the next device can take the slot.
                count_failure(shared, &outcome);
                drop(session_slot);
                drop(permit);
                if outcome.connections > 0 && outcome.status.is_success() {
                    shared.estimator.record(started.elapsed());
                }
                return Some(outcome);
            }
            Some((window, opens)) => {
                // Wait without holding a turn.
                drop(permit);
                shared.reporter.event(&Event::WindowWait {
                    device: prepared.device.name.clone(),
                    until: rollout::local_time(opens, &window.tz),
                });
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.clock.instant_for(opens)) => {}
                    _ = halt.wait_for(|h| h.is_some()) => return Some(not_started(prepared)),
                }
                shared.reporter.event(&Event::WindowOpen {
                    device: prepared.device.name.clone(),
                });
            }
        }
    }
}

/// Why the device's maintenance window does not let it start now — closed, or too short
/// for the estimated duration — if it does not. Judged when a device takes its turn, and
/// again when it takes its session slot (it may have waited for it).
fn window_refusal_now(shared: &Shared, window: &rollout::Window) -> Option<String> {
    let estimate = shared.estimator.estimate();
    match window.decide(shared.clock.now(), estimate) {
        rollout::WindowDecision::Fits { .. } => None,
        rollout::WindowDecision::TooLate { closes } => Some(format!(
            "{WINDOW_PREFIX} {} closes at {}; the estimated {}s would not fit",
            window.describe(),
            rollout::local_time(closes, &window.tz),
            estimate.as_secs()
        )),
        rollout::WindowDecision::Closed { opens } => Some(format!(
            "{WINDOW_PREFIX} {} is closed; it opens at {}",
            window.describe(),
            rollout::local_time(opens, &window.tz)
        )),
    }
}

/// Counts a failed device against the run's failure budget, halting the run when it trips.
fn count_failure(shared: &Shared, outcome: &DeviceOutcome) {
    if !outcome.status.is_success() && !outcome.status.is_unfinished() {
        let failed = shared.failed_total.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(reason) = shared.config.playbook.budget.run_tripped(failed) {
            shared.halt(reason);
        }
    }
}

fn window_refusal(prepared: &PreparedDevice, reason: String) -> DeviceOutcome {
    DeviceOutcome {
        reason: Some(reason),
        ..not_started(prepared)
    }
}

/// Durations of devices that completed the playbook in earlier runs (from the journal):
/// from a run's first record of the device to its device-level `done` record.
/// A blocking-pool task that did not complete (it panicked, or the runtime is shutting
/// down), as a journal error naming what it was doing.
fn blocking_failed(
    state_dir: &std::path::Path,
    what: &str,
    e: &tokio::task::JoinError,
) -> crate::journal::JournalError {
    crate::journal::JournalError::Io {
        path: state_dir.to_path_buf(),
        source: std::io::Error::other(format!("writing {what} failed: {e}")),
    }
}

/// How long earlier runs took per device (for the ETA), read from the journals on the
/// blocking pool: one file per device.
async fn journal_durations(config: &RunConfig) -> Vec<Duration> {
    let key = playbook_key(&config.playbook);
    let state_dir = config.state_dir.clone();
    let names: Vec<String> = config
        .devices
        .iter()
        .map(|d| d.device.name.clone())
        .collect();
    tokio::task::spawn_blocking(move || journal_durations_of(&state_dir, &key, &names))
        .await
        .unwrap_or_default()
}

fn journal_durations_of(state_dir: &std::path::Path, key: &str, names: &[String]) -> Vec<Duration> {
    names
        .iter()
        .filter_map(|name| {
            let journal = DeviceJournal::open_read_only(state_dir, key, name).ok()?;
            let records = journal.records();
            let done = records
                .iter()
                .rev()
                .find(|r| r.step == DEVICE_RECORD && r.status == StepStatus::Done)?;
            let first = records.iter().find(|r| r.run == done.run)?;
            (done.at_ms >= first.at_ms).then(|| Duration::from_millis(done.at_ms - first.at_ms))
        })
        .collect()
}

fn not_started(prepared: &PreparedDevice) -> DeviceOutcome {
    DeviceOutcome {
        device: prepared.device.name.clone(),
        address: prepared.device.address(),
        status: DeviceStatus::NotStarted,
        failed_step: None,
        reason: Some("the run stopped before this device started".into()),
        identity: None,
        steps: Vec::new(),
        duration_ms: 0,
        connections: 0,
    }
}

fn connect_options(config: &RunConfig, prepared: &PreparedDevice) -> ConnectOptions {
    let policy = &config.playbook.policy;
    let host_key_policy = match config.host_key_policy.unwrap_or(policy.host_key_policy) {
        HostKeyPolicySetting::Strict => HostKeyPolicy::Strict,
        HostKeyPolicySetting::AcceptNew => HostKeyPolicy::AcceptNew,
    };
    ConnectOptions {
        host: prepared.device.host.clone(),
        port: prepared.device.port,
        username: prepared.device.username.clone(),
        auth: prepared.auth.clone(),
        known_hosts: config.known_hosts.clone(),
        host_key_policy,
        connect_timeout: policy.connect_timeout,
        auth_timeout: policy.auth_timeout,
        command_timeout: policy.command_timeout,
        keepalive_interval: policy.keepalive_interval,
        read_only: config.check_mode,
        body_wait: policy.body_wait,
    }
}

/// How a device's session attempt ended, deciding whether to retry.
enum Attempt {
    /// All steps processed (done, skipped or one failed: see the outcome fields).
    Finished,
    /// The connection failed or dropped: retry if attempts remain.
    Retry(String),
    /// A final failure of the device (auth, host key, timeout...).
    Fatal(DeviceStatus, String),
    /// The run is stopping.
    Stopped,
    /// Before it connected, the device's maintenance window closed (or became too short).
    WindowClosed(String),
}

struct DeviceRun<'a> {
    config: &'a RunConfig,
    prepared: &'a PreparedDevice,
    rate: &'a RateLimiter,
    /// One of the run's SSH session slots (`Shared::sessions`), taken when the device
    /// first connects — after its key was derived, so a slot is never held by a device
    /// waiting for scrypt — and kept through its retries until its outcome has been
    /// counted against the failure budgets (so a budget that trips stops the next device
    /// before it connects).
    session_slot: Option<SemaphorePermit<'a>>,
    /// The run (its clock and duration estimate, for the window) and the device's
    /// maintenance window, judged again when the device takes its session slot.
    shared: &'a Shared,
    window: Option<&'a rollout::Window>,
    halt: Halt,
    journal: DeviceJournal,
    run: &'a str,
    reporter: &'a dyn Reporter,
    /// The playbook's steps as they apply to this device in this run.
    resolved: Vec<resolve::ResolvedStep>,
    reports: BTreeMap<String, StepReport>,
    failed: Option<(String, String)>,
    identity: Option<String>,
    /// Outputs of this device's steps in this run (merged over the journal's).
    outputs: StepOutputs,
    /// Some step changed the device in this run (a restart boots only then).
    changed_this_run: bool,
    /// `apply --check`: an earlier step would change the device, so later reads describe
    /// a device that the real run would already have changed.
    would_change: bool,
    /// Keys of an attempt that sealed nothing (it failed to connect, or before any JWE):
    /// the device never saw their salt, so the next attempt uses them instead of deriving
    /// again — an unreachable device costs one derivation, not one per retry.
    unused_keys: Option<SessionKeys>,
}

/// A device's run, and the session slot it held (if it connected), for the caller to give
/// back once the outcome has been counted.
async fn run_device<'s>(
    shared: &'s Shared,
    prepared: &'s PreparedDevice,
    window: Option<&'s rollout::Window>,
    halt: Halt,
) -> (DeviceOutcome, Option<SemaphorePermit<'s>>) {
    let config: &RunConfig = &shared.config;
    let reporter: &dyn Reporter = shared.reporter.as_ref();
    let run: &str = &shared.run;
    let started = Instant::now();
    let name = prepared.device.name.clone();
    let mut outcome = DeviceOutcome {
        device: name.clone(),
        address: prepared.device.address(),
        status: DeviceStatus::Ok,
        failed_step: None,
        reason: None,
        identity: None,
        steps: Vec::new(),
        duration_ms: 0,
        connections: 0,
    };
    if let Some(e) = &shared.run_error {
        outcome.status = DeviceStatus::Failed;
        outcome.reason = Some(e.clone());
        return (outcome, None);
    }
    let key = playbook_key(&config.playbook);
    // Check mode writes no journal: it reads it and keeps its own records in memory. The
    // file is opened (read, repaired, its directory fsynced) on the blocking pool.
    let (state_dir, read_only, device) =
        (config.state_dir.clone(), config.check_mode, name.clone());
    let opened = tokio::task::spawn_blocking(move || {
        if read_only {
            DeviceJournal::open_read_only(&state_dir, &key, &device)
        } else {
            DeviceJournal::open(&state_dir, &key, &device)
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(crate::journal::JournalError::Io {
            path: config.state_dir.clone(),
            source: std::io::Error::other(format!("opening the journal failed: {e}")),
        })
    });
    let journal = match opened {
        Ok(j) => j,
        Err(e) => {
            outcome.status = DeviceStatus::Failed;
            outcome.reason = Some(e.to_string());
            return (outcome, None);
        }
    };
    if let Some(damage) = &journal.damage {
        reporter.event(&Event::Notice {
            device: Some(name.clone()),
            message: format!(
                "its journal had {} damaged line(s); the file was kept as {} and the device is \
                 read again rather than trusted from the journal",
                damage.lines,
                damage.moved_to.display()
            ),
        });
    }
    // A device this run already finished (before an interruption) is not redone.
    let device_state = journal.step(DEVICE_RECORD);
    if device_state.run == run && device_state.status == StepStatus::Done {
        outcome.reason = Some("finished earlier in this run (not redone)".into());
        outcome.identity = device_state.outputs.identity.clone();
        return (outcome, None);
    }
    let resolved = resolve::resolve(&config.playbook, prepared, run);
    // What earlier attempts recorded for these very steps (same inputs), e.g. the
    // certificate an activation replaced, which the device no longer shows.
    let mut outputs = StepOutputs::default();
    let mut changed_this_run = false;
    for step in &resolved {
        let state = journal.step(&step.id);
        outputs.merge(&state.outputs);
        changed_this_run |= state.run == run && state.changed;
    }
    let mut dr = DeviceRun {
        config,
        prepared,
        journal,
        run,
        reporter,
        rate: &shared.rate,
        shared,
        window,
        halt: halt.clone(),
        resolved,
        reports: BTreeMap::new(),
        failed: None,
        identity: None,
        outputs,
        changed_this_run,
        would_change: false,
        unused_keys: None,
        session_slot: None,
    };

    let policy = &config.playbook.policy;
    let mut attempt = 0u32;
    let final_state = loop {
        attempt += 1;
        outcome.connections += 1;
        let result = dr.session_attempt(attempt).await;
        match result {
            Attempt::Retry(reason) if attempt <= policy.retries && !halted(&halt) => {
                let backoff = backoff_delay(policy.retry_backoff, attempt, &name);
                reporter.event(&Event::Notice {
                    device: Some(name.clone()),
                    message: format!(
                        "{reason}; retrying in {:.1}s (attempt {} of {})",
                        backoff.as_secs_f32(),
                        attempt + 1,
                        policy.retries + 1
                    ),
                });
                let mut halt = halt.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = halt.wait_for(|h| h.is_some()) => break Attempt::Stopped,
                }
            }
            other => break other,
        }
    };

    outcome.steps = dr
        .resolved
        .iter()
        .filter_map(|r| dr.reports.get(&r.id).cloned())
        .collect();
    outcome.identity = dr.identity.clone();
    let any_changed = outcome.steps.iter().any(|s| s.changed);
    match final_state {
        Attempt::Finished => match dr.failed.take() {
            Some((step, reason)) => {
                outcome.status = if reason.starts_with(steps::SECRET_UNKNOWN_PREFIX) {
                    DeviceStatus::SecretUnknown
                } else {
                    DeviceStatus::Failed
                };
                outcome.failed_step = Some(step);
                outcome.reason = Some(reason);
            }
            None => {
                outcome.status = if any_changed {
                    DeviceStatus::Changed
                } else {
                    DeviceStatus::Ok
                }
            }
        },
        Attempt::Retry(reason) => {
            outcome.status = DeviceStatus::Unreachable;
            outcome.reason = Some(reason);
        }
        Attempt::Fatal(status, reason) => {
            outcome.status = status;
            outcome.reason = Some(reason);
            outcome.failed_step = dr.failed.take().map(|(s, _)| s);
        }
        // Halted while its first key was derived or it waited for a session slot: it
        // never connected, so it did not start.
        Attempt::WindowClosed(reason) => {
            outcome = window_refusal(prepared, reason);
        }
        Attempt::Stopped if dr.session_slot.is_none() => {
            outcome = not_started(prepared);
        }
        Attempt::Stopped => {
            outcome.status = DeviceStatus::Interrupted;
            outcome.reason = Some("the run stopped; rerun to resume this device".into());
        }
    }
    if outcome.status != DeviceStatus::NotStarted {
        outcome.duration_ms = started.elapsed().as_millis() as u64;
    }
    dr.record_outcome(&outcome).await;
    // However the device ended, its records are on disk before it counts as finished.
    if let Err(e) = dr.journal.sync_async().await {
        tracing::warn!(device = %outcome.device, "syncing the journal: {e}");
    }
    crate::failpoint::hit("device-finished");
    (outcome, dr.session_slot.take())
}

/// The journal's step id for device-level facts (how the device's last run ended).
pub const DEVICE_RECORD: &str = "device";

impl DeviceRun<'_> {
    /// Records how this device's run ended, so `--limit @failed` finds devices that never
    /// reached a step (unreachable, refused login, changed host key) as well as those whose
    /// step failed, and a resumed run knows which devices it finished. An interrupted
    /// device keeps the record of its previous run.
    async fn record_outcome(&mut self, outcome: &DeviceOutcome) {
        if self.config.check_mode || outcome.status.is_unfinished() {
            return;
        }
        let status = if outcome.status.is_success() {
            StepStatus::Done
        } else {
            StepStatus::Failed
        };
        let error = (!outcome.status.is_success()).then(|| outcome.status.as_str().to_string());
        let outputs = StepOutputs {
            identity: outcome.identity.clone(),
            ..StepOutputs::default()
        };
        if let Err(e) = self
            .record(DEVICE_RECORD, status, false, outputs, error)
            .await
        {
            tracing::warn!(device = %outcome.device, "recording the device outcome: {e}");
        }
    }
}

/// Exponential backoff with deterministic per-device jitter (up to +50%), so a fleet that
/// lost its network together does not reconnect in one burst.
fn backoff_delay(base: Duration, attempt: u32, device: &str) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(6));
    exp + exp.mul_f64(jitter_fraction(device, attempt))
}

/// A per-device, per-attempt fraction in [0, 0.5): deterministic jitter (tests repeat).
fn jitter_fraction(device: &str, attempt: u32) -> f64 {
    let hash = device.bytes().fold(attempt as u64 + 7, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    });
    (hash % 500) as f64 / 1000.0
}

impl DeviceRun<'_> {
    async fn record(
        &mut self,
        step: &str,
        status: StepStatus,
        changed: bool,
        outputs: StepOutputs,
        error: Option<String>,
    ) -> Result<(), String> {
        // A step's outcome rides on the next fsync of the device's journal (its next
        // write-ahead record, or the device's last record): lost in a power cut, it only
        // makes the next run read the device again. An action done once per run is
        // recorded durably at once, so a lost record can never repeat it.
        let once = self.resolved.iter().any(|r| r.id == step && r.once_per_run);
        let durability = if once || step == DEVICE_RECORD {
            Durability::Now
        } else {
            Durability::WithNext
        };
        self.journal
            .append_async_with(
                Record {
                    run: self.run.to_string(),
                    step: step.to_string(),
                    status,
                    at_ms: now_ms(),
                    changed,
                    outputs,
                    error,
                },
                durability,
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn session_attempt(&mut self, attempt: u32) -> Attempt {
        let opts = connect_options(self.config, self.prepared);
        // One salt and one derivation per (secret, enc) for this session's JWEs; the keys
        // are zeroized when `keys` drops at the end of the session.
        let per_jwe = self.config.playbook.policy.kdf_salt == crate::playbook::KdfSalt::PerJwe;
        let keys = self
            .unused_keys
            .take()
            .unwrap_or_else(|| SessionKeys::new(self.config.kdf.clone(), per_jwe));
        // The key the session will almost surely need is derived before connecting, and
        // before taking a session slot: the wait for a derivation slot (the whole fleet
        // shares a few) is then spent without an SSH session held open and idle on the
        // device and here (~100 KiB each in russh), and a session slot is only ever held by
        // a device that is talking to its device. A wrong guess costs one derivation, never
        // correctness: the steps derive whatever key they need when they seal, and a
        // failure here shows there again.
        let mut halt = self.halt.clone();
        if self.expects_current_key() {
            if let Ok(secret) = self.config.secrets.current(&self.prepared.device) {
                // A halt (budget, Ctrl-C) stops the wait: nothing was sent yet.
                tokio::select! {
                    _ = keys.prepare(self.prepared.device.enc, &secret) => {}
                    _ = halt.wait_for(|h| h.is_some()) => return Attempt::Stopped,
                }
            }
        }
        if self.session_slot.is_none() {
            let slot = tokio::select! {
                slot = self.shared.sessions.acquire() => slot.ok(),
                _ = halt.wait_for(|h| h.is_some()) => None,
            };
            match slot.filter(|_| !halted(&halt)) {
                Some(slot) => {
                    if let Some(reason) =
                        self.window.and_then(|w| window_refusal_now(self.shared, w))
                    {
                        return Attempt::WindowClosed(reason);
                    }
                    self.session_slot = Some(slot);
                }
                None => return Attempt::Stopped,
            }
            // Started: it holds one of the `concurrency` slots until it is finished.
            self.reporter.event(&Event::DeviceStarted {
                device: self.prepared.device.name.clone(),
            });
        }
        self.reporter.event(&Event::Connecting {
            device: self.prepared.device.name.clone(),
            attempt,
        });
        self.rate.wait(&self.prepared.device.name).await;
        let mut session = match TshSession::connect(&opts).await {
            Ok(s) => s,
            Err(e) => {
                self.keep_if_unused(keys);
                return classify_ssh_error(&e);
            }
        };
        self.reporter.event(&Event::Connected {
            device: self.prepared.device.name.clone(),
            banner: session
                .banner()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        });
        let result = self.run_steps(&mut session, &keys).await;
        session.close().await;
        if matches!(result, Attempt::Retry(_)) {
            self.keep_if_unused(keys);
        }
        result
    }

    /// Keeps `keys` for the next attempt if no JWE was sealed with them (otherwise they
    /// drop here, zeroized, and the next session draws a new salt).
    fn keep_if_unused(&mut self, keys: SessionKeys) {
        if keys.sealed() == 0 && !keys.is_per_jwe() {
            self.unused_keys = Some(keys);
        }
    }

    /// Whether some step of this session will seal a JWE with the device's current
    /// ClientSecret, judged before connecting from the vault's record and the journal
    /// (which may be out of date: this only decides when the key is derived).
    fn expects_current_key(&self) -> bool {
        let device = &self.prepared.device;
        let secrets = self.config.secrets.as_ref();
        self.resolved.iter().any(|rs| {
            let Some(step) = self.config.playbook.steps.get(rs.index) else {
                return false;
            };
            let state = self.journal.step(&rs.id);
            match steps::seals_with_current(step) {
                steps::SealsWithCurrent::Never => false,
                steps::SealsWithCurrent::Proofs => {
                    secrets.is_seeded(device)
                        || secrets.is_secret_unknown(device)
                        || secrets.pending(device).is_ok_and(|p| p.is_some())
                        || state.status == StepStatus::InFlight
                }
                steps::SealsWithCurrent::Payload => {
                    !self.config.check_mode && state.status != StepStatus::Done
                }
            }
        })
    }

    /// Whether the administrator confirmed that the step may be sent again.
    fn resend_confirmed(&self, step: &resolve::ResolvedStep) -> bool {
        self.config
            .confirm_resend
            .iter()
            .any(|c| c == &step.id || c == step.kind)
    }

    fn report(&mut self, id: &str, report: StepReport) {
        self.reporter.event(&Event::StepFinished {
            device: self.prepared.device.name.clone(),
            step: report.clone(),
        });
        self.reports.insert(id.to_string(), report);
    }

    async fn run_steps(&mut self, session: &mut TshSession, keys: &SessionKeys) -> Attempt {
        let name = self.prepared.device.name.clone();
        let connect = connect_options(self.config, self.prepared);
        let resolved = self.resolved.clone();
        for rs in &resolved {
            let Some(step) = self.config.playbook.steps.get(rs.index) else {
                continue;
            };
            let id = rs.id.clone();
            let kind = rs.kind.to_string();
            let state = self.journal.step(&id);
            // An action already done in this run (before an interruption, or on an earlier
            // connection) is not done again; states are always read again.
            if rs.once_per_run
                && state.run == self.run
                && matches!(state.status, StepStatus::Done | StepStatus::Skipped)
            {
                if !self.reports.contains_key(&id) {
                    self.reports.insert(
                        id.clone(),
                        StepReport {
                            id: id.clone(),
                            kind,
                            status: state.status,
                            changed: state.changed,
                            duration_ms: None,
                            note: Some("done earlier in this run (an action: not repeated)".into()),
                        },
                    );
                }
                continue;
            }
            if halted(&self.halt) {
                return Attempt::Stopped;
            }
            let resuming = state.status == StepStatus::InFlight;
            // A raw command that changes something cannot be checked on the device: found
            // in flight, its outcome is unknown, and it is sent again only with consent.
            if let crate::playbook::Step::Xcommand(x) = step {
                if resuming && !x.read_only && !x.idempotent && !self.resend_confirmed(rs) {
                    let reason = format!(
                        "outcome unknown: `{}` was in flight when an earlier attempt stopped, \
                         and the device cannot show whether it was applied; check the device, \
                         then rerun with --confirm-resend {id} (or mark the step \
                         `idempotent: true`)",
                        x.command
                    );
                    self.report(
                        &id,
                        StepReport {
                            id: id.clone(),
                            kind,
                            status: StepStatus::Failed,
                            changed: false,
                            duration_ms: None,
                            note: Some(reason.clone()),
                        },
                    );
                    self.failed = Some((id, reason));
                    return Attempt::Finished;
                }
            }
            self.reporter.event(&Event::StepStarted {
                device: name.clone(),
                step: id.clone(),
            });
            let started = Instant::now();
            let outputs = self.outputs.clone();
            let mut ctx = steps::StepContext {
                session,
                prepared: self.prepared,
                kdf: keys,
                secrets: self.config.secrets.as_ref(),
                outputs: &outputs,
                check_mode: self.config.check_mode,
                resuming,
                previously_done: state.status == StepStatus::Done,
                changed_earlier: self.changed_this_run || self.would_change,
                step_outputs: &state.outputs,
                connect: &connect,
                index: rs.index,
            };
            // Write-ahead: the journal says in-flight before any changing command is sent.
            let mut write_ahead = JournalWriteAhead {
                journal: &mut self.journal,
                run: self.run,
                step: &id,
                check_mode: self.config.check_mode,
                error: None,
            };
            let sealed_before = keys.sealed();
            let mut result = steps::execute(step, &mut ctx, &mut write_ahead).await;
            // A device may refuse a JWE whose salt it has seen before (the seed does not
            // promise it accepts a repeated one): if this step sealed with a salt the session
            // had used before and was refused, once per session fall back to a fresh salt
            // per JWE and run the step again. It reads the device first, like any rerun, and
            // is resumed (its write-ahead record may be on the journal).
            // The ClientSecret steps are not retried: a populate may have changed the secret,
            // and they have their own candidate and reading logic.
            let secret_step = matches!(
                step,
                crate::playbook::Step::PopulateSecret(_) | crate::playbook::Step::RotateSecret(_)
            );
            if matches!(result, Err(steps::StepError::Refused(_)))
                && !secret_step
                && keys.sealed() > sealed_before
                && keys.fall_back_to_per_jwe()
            {
                self.reporter.event(&Event::Notice {
                    device: Some(name.clone()),
                    message: "the device refused a JWE sealed with this session's salt; \
                              retrying with a fresh salt per JWE (kdf_salt: per-jwe) for the \
                              rest of the session"
                        .into(),
                });
                ctx.resuming = true;
                result = steps::execute(step, &mut ctx, &mut write_ahead).await;
            }
            let write_ahead_error = write_ahead.error;
            let duration_ms = Some(started.elapsed().as_millis() as u64);
            // In check mode, once an earlier step would change the device, a later step's
            // read describes a device the real run would already have changed: what it
            // cannot confirm yet is what the run would do, not a failure.
            let result = match result {
                Err(steps::StepError::Refused(reason))
                    if self.config.check_mode && self.would_change =>
                {
                    Ok(steps::StepDone {
                        changed: true,
                        outputs: StepOutputs::default(),
                        note: Some(format!(
                            "would run after the changes above (checked on the device as it is \
                             now: {reason})"
                        )),
                    })
                }
                other => other,
            };
            match result {
                Ok(mut done) => {
                    if done.changed && state.status == StepStatus::Done && !rs.once_per_run {
                        // The journal said this was done, but the device no longer matched.
                        let note = done.note.take().unwrap_or_default();
                        done.note = Some(format!(
                            "the device no longer matched what an earlier run did; {note}"
                        ));
                    }
                    if !self.config.check_mode {
                        if let Err(e) = self
                            .record(
                                &id,
                                StepStatus::Done,
                                done.changed,
                                done.outputs.clone(),
                                None,
                            )
                            .await
                        {
                            return Attempt::Fatal(DeviceStatus::Failed, e);
                        }
                    }
                    if done.changed {
                        if self.config.check_mode {
                            self.would_change = true;
                        } else {
                            self.changed_this_run = true;
                        }
                    }
                    self.outputs.merge(&done.outputs);
                    if let Some(identity) = &done.outputs.identity {
                        self.identity = Some(identity.clone());
                    }
                    self.report(
                        &id,
                        StepReport {
                            id: id.clone(),
                            kind,
                            status: StepStatus::Done,
                            changed: done.changed,
                            duration_ms,
                            note: done.note,
                        },
                    );
                }
                Err(steps::StepError::Refused(reason)) => {
                    if !self.config.check_mode {
                        if let Err(e) = self
                            .record(
                                &id,
                                StepStatus::Failed,
                                false,
                                StepOutputs::default(),
                                Some(reason.clone()),
                            )
                            .await
                        {
                            return Attempt::Fatal(DeviceStatus::Failed, e);
                        }
                    }
                    self.report(
                        &id,
                        StepReport {
                            id: id.clone(),
                            kind,
                            status: StepStatus::Failed,
                            changed: false,
                            duration_ms,
                            note: Some(reason.clone()),
                        },
                    );
                    self.failed = Some((id, reason));
                    return Attempt::Finished;
                }
                Err(steps::StepError::Ssh(e)) => {
                    // The step stays in-flight in the journal: the next attempt (or run)
                    // reconciles it against the device before resending anything.
                    self.report(
                        &id,
                        StepReport {
                            id: id.clone(),
                            kind,
                            status: StepStatus::InFlight,
                            changed: false,
                            duration_ms,
                            note: Some(e.to_string()),
                        },
                    );
                    let attempt = classify_ssh_error(&e);
                    if let Attempt::Fatal(..) = attempt {
                        self.failed = Some((id, e.to_string()));
                    }
                    return attempt;
                }
                Err(steps::StepError::Local(reason)) => {
                    let reason = write_ahead_error.unwrap_or(reason);
                    self.failed = Some((id, reason.clone()));
                    return Attempt::Fatal(DeviceStatus::Failed, reason);
                }
            }
        }
        Attempt::Finished
    }
}

/// The engine's write-ahead hook: appends the step's `in-flight` record to the device's
/// journal, the write and fsync on the blocking pool (`DeviceJournal::append_async`).
struct JournalWriteAhead<'j> {
    journal: &'j mut DeviceJournal,
    run: &'j str,
    step: &'j str,
    check_mode: bool,
    /// The append that failed, if one did (the step then fails with it).
    error: Option<String>,
}

impl steps::WriteAheadLog for JournalWriteAhead<'_> {
    fn in_flight<'a>(
        &'a mut self,
        _what: &'a str,
        outputs: StepOutputs,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if self.check_mode {
                return Ok(());
            }
            let record = Record {
                run: self.run.to_string(),
                step: self.step.to_string(),
                status: StepStatus::InFlight,
                at_ms: now_ms(),
                changed: false,
                outputs,
                error: None,
            };
            self.journal.append_async(record).await.map_err(|e| {
                let msg = e.to_string();
                self.error = Some(msg.clone());
                msg
            })
        })
    }
}

fn classify_ssh_error(e: &SshError) -> Attempt {
    match e {
        SshError::HostKeyChanged { .. } | SshError::HostKeyRevoked { .. } => {
            Attempt::Fatal(DeviceStatus::HostKeyChanged, e.to_string())
        }
        SshError::HostKeyUnknown { .. } => {
            Attempt::Fatal(DeviceStatus::HostKeyUnknown, e.to_string())
        }
        _ if e.is_auth() => Attempt::Fatal(DeviceStatus::AuthFailed, e.to_string()),
        SshError::Timeout { .. } if !e.is_retryable() => {
            Attempt::Fatal(DeviceStatus::TimedOut, e.to_string())
        }
        // Connection-level trouble may pass: retry with backoff.
        _ if e.is_retryable() => Attempt::Retry(e.to_string()),
        // Local problems (known_hosts file, key file, agent) and a command refused by a
        // read-only session will not fix themselves.
        _ => Attempt::Fatal(DeviceStatus::Failed, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_jitters_per_device() {
        let base = Duration::from_secs(1);
        let a1 = backoff_delay(base, 1, "room-1");
        let a2 = backoff_delay(base, 2, "room-1");
        assert!(a1 >= base && a1 < base * 2);
        assert!(a2 >= base * 2 && a2 < base * 3);
        assert_ne!(
            backoff_delay(base, 1, "room-1"),
            backoff_delay(base, 1, "room-2")
        );
    }
}
