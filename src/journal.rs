//! The durable per-device, per-step journal under the state directory, the run log, and the
//! lock that keeps two applies off one state directory.
//!
//! Layout: `<state>/journal/<playbook-key>/<device>.jsonl` (one device's step records) and
//! `<state>/journal/<playbook-key>.runs.jsonl` (which run is current), both append-only.
//! Every line is one JSON object whose last member is `"sum"`: the first 16 hex digits of
//! SHA-256 over the *exact bytes* of the line with that member removed. Each append is
//! fsynced before the engine acts on it (write-ahead: a step is recorded `in-flight` before
//! its command is sent).
//!
//! What the journal is for: resuming interrupted *writes* (a step found in flight) and
//! remembering actions that must happen once per run (a rotation). It is never a cache of
//! the device: every run reads the device before it decides.
//!
//! Invariants:
//! - The journal never destroys what it cannot read. Only an unterminated last line (a torn
//!   write) is dropped. A bad line anywhere else moves the file aside (`*.corrupt-<ms>`), the
//!   valid records — before and after the damage — are written back, and the damage is
//!   reported; the engine then re-reads the device rather than guessing.
//! - A record written by a newer roomkey (a field this one does not know) verifies and reads:
//!   the checksum covers the bytes as written, not a re-serialisation.
//! - A failed append is rolled back (the file is cut to its length before the append).
//! - A newly created journal file has its directory fsynced.
//! - No secret is ever written here: records hold step ids, statuses, timings, fingerprints
//!   and error texts (built from redacted command lines only).
//!
//! I/O off the executor: the engine appends with [`DeviceJournal::append_async`], which runs
//! the write and its fsync on tokio's blocking pool and returns only once the line is
//! durable, so the write-ahead invariant holds while a slow disk stalls only the device
//! whose record it is writing (not the two async workers every other device shares). Each
//! device has its own file, so there is nothing to group-commit across devices: their
//! fsyncs run in parallel on the blocking pool.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state directory {} is in use by another roomkey apply ({holder}); wait for it to \
         finish, or remove {} if no roomkey is running",
        dir.display(), lock.display()
    )]
    Locked {
        dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a step stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    #[default]
    Pending,
    /// Started, outcome not recorded: the command may or may not have reached the device.
    InFlight,
    Done,
    Failed,
    Skipped,
}

/// What a step learnt that later steps (or a resumed attempt of itself) use. Typed: each
/// value has one meaning and one producer. Never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepOutputs {
    /// The device's certificate for this inventory entry (`add`, `show`, `activate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The certificate that was active for the purpose before `activate` replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_fingerprint: Option<String>,
    /// A service certificate's activation: the one it replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_fingerprint: Option<String>,
    /// The verified external identity (CN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The verified certificate's NotAfter as the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The certificate `scep_enroll` enrolled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled_fingerprint: Option<String>,
    /// The certificate `add_service_certificate` added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_fingerprint: Option<String>,
    /// The trusted CAs `add_ca_certificate` made sure of.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_or_joined"
    )]
    pub ca_fingerprints: Vec<String>,
    /// The certificates listed before a SCEP request (write-ahead, to recognise the
    /// enrolment on resume).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_or_joined"
    )]
    pub listed_before: Vec<String>,
    /// Renewal profiles as listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles: Option<String>,
    /// Uptime (s) before a restart's boot, and when the boot was sent (write-ahead).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "number_or_text"
    )]
    pub uptime_before: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "number_or_text"
    )]
    pub boot_sent_at_ms: Option<u64>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "number_or_text"
    )]
    pub uptime_after: Option<u64>,
    /// The device accepted this step's SCEP request (write-ahead after its reply): a rerun
    /// waits for the enrolment and never requests it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scep_request_accepted: Option<bool>,
}

impl StepOutputs {
    /// Overlays `other`'s values on these (a later record wins per value).
    pub fn merge(&mut self, other: &StepOutputs) {
        macro_rules! overlay {
            ($($f:ident),*) => {$(
                if other.$f.is_some() { self.$f = other.$f.clone(); }
            )*};
        }
        overlay!(
            fingerprint,
            previous_fingerprint,
            replaced_fingerprint,
            identity,
            not_after,
            enrolled_fingerprint,
            service_fingerprint,
            profiles,
            uptime_before,
            boot_sent_at_ms,
            uptime_after,
            scep_request_accepted
        );
        if !other.ca_fingerprints.is_empty() {
            self.ca_fingerprints = other.ca_fingerprints.clone();
        }
        if !other.listed_before.is_empty() {
            self.listed_before = other.listed_before.clone();
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == StepOutputs::default()
    }
}

/// Older journals kept lists comma-joined in a string.
fn list_or_joined<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Joined(s) => s
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Older journals kept numbers as text.
fn number_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        Some(Either::Number(n)) => Some(n),
        Some(Either::Text(s)) => s.parse().ok(),
        None => None,
    })
}

/// Outputs that cannot be read (a newer roomkey's shape) read as none rather than making
/// the whole line unreadable: the engine re-reads the device anyway.
fn lenient_outputs<'de, D: Deserializer<'de>>(d: D) -> Result<StepOutputs, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The run that wrote it (its id in the run log).
    pub run: String,
    /// Step id (`add_certificate-3f2a…`, see `engine::resolve`) or `device` for
    /// device-level facts.
    pub step: String,
    pub status: StepStatus,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Whether the step changed the device (for the recap's `changed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
    /// Values later steps need (fingerprints). Never a secret.
    #[serde(
        default,
        skip_serializing_if = "StepOutputs::is_empty",
        deserialize_with = "lenient_outputs"
    )]
    pub outputs: StepOutputs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const SUM_MEMBER: &str = ",\"sum\":\"";

fn checksum(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

/// One record as the bytes of a journal line (with its newline).
fn encode_line(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_string(record)?;
    let sum = checksum(json.as_bytes());
    let body = json.strip_suffix('}').unwrap_or(&json);
    Ok(format!("{body}{SUM_MEMBER}{sum}\"}}\n").into_bytes())
}

/// Verifies one line (without its newline) against its checksum and reads its record.
/// The checksum covers the exact bytes written, minus the `"sum"` member, so a line from a
/// newer version with more fields still verifies (and its unknown fields are ignored).
fn decode_line(line: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(line).ok()?;
    let at = text.rfind(SUM_MEMBER)?;
    let (body, tail) = text.split_at(at);
    let sum = tail.strip_prefix(SUM_MEMBER)?.strip_suffix("\"}")?;
    let mut signed = Vec::with_capacity(body.len() + 1);
    signed.extend_from_slice(body.as_bytes());
    signed.push(b'}');
    if sum.len() != 16 || checksum(&signed) != sum {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// What reading a journal's bytes found.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Every valid record, in order (also those after a damaged line).
    pub records: Vec<Record>,
    /// The exact bytes of the valid lines, in order.
    pub valid_bytes: Vec<u8>,
    /// Complete lines that failed their checksum or did not read.
    pub damaged: usize,
    /// An unterminated last line (a torn append) was found.
    pub torn_tail: bool,
}

/// Parses journal bytes. A complete line that does not verify is counted as damage and
/// skipped — the records after it are kept; only an unterminated tail counts as torn.
pub fn parse_lines(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            parsed.torn_tail = true;
            break;
        };
        let (line, tail) = rest.split_at(nl);
        if !line.is_empty() {
            match decode_line(line) {
                Some(r) => {
                    parsed.records.push(r);
                    parsed.valid_bytes.extend_from_slice(line);
                    parsed.valid_bytes.push(b'\n');
                }
                None => parsed.damaged += 1,
            }
        }
        rest = tail.get(1..).unwrap_or_default();
    }
    parsed
}

/// What the journal says about one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepState {
    pub status: StepStatus,
    /// The run of the step's last record.
    pub run: String,
    pub changed: bool,
    pub outputs: StepOutputs,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// How many times the step was started.
    pub attempts: u32,
}

/// Damage found (and set aside) when a journal was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub lines: usize,
    /// Where the damaged file was moved.
    pub moved_to: PathBuf,
}

/// An append-only journal file: its folded state plus the open file to append to.
/// Opened `read_only` (for `apply --check` and `plan`), it creates nothing and appends only
/// in memory.
pub struct DeviceJournal {
    path: PathBuf,
    /// Shared with a blocking write in progress, so an append whose caller was cancelled
    /// still finishes (and rolls back on failure) on the file the journal keeps.
    file: Option<Arc<Mutex<File>>>,
    steps: BTreeMap<String, StepState>,
    records: Vec<Record>,
    /// A torn last line was found and cut.
    pub torn_tail: bool,
    /// Damaged lines found when the journal was opened, and where the file went.
    pub damage: Option<Damage>,
    /// Some appended line is not fsynced yet ([`Durability::WithNext`]).
    unsynced: bool,
}

/// When an appended record must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the append returns (fsync): a write-ahead (`in-flight`) record, which must be
    /// durable before its command is sent, and what a lost record would let be repeated.
    Now,
    /// With the next `Now` append or [`DeviceJournal::sync_async`] (the engine syncs when
    /// a device ends): an outcome whose loss in a power cut (a killed process loses
    /// nothing: the line is in the page cache) only makes the next run read the device
    /// again, as it always does. One fsync then carries several records.
    WithNext,
}

impl std::fmt::Debug for DeviceJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceJournal")
            .field("path", &self.path)
            .field("steps", &self.steps)
            .finish()
    }
}

/// The journal file of `device` for the playbook `key`.
pub fn device_journal_path(state_dir: &Path, key: &str, device: &str) -> PathBuf {
    state_dir
        .join("journal")
        .join(key)
        .join(format!("{device}.jsonl"))
}

/// The run log of the playbook `key`.
pub fn run_log_path(state_dir: &Path, key: &str) -> PathBuf {
    state_dir.join("journal").join(format!("{key}.runs.jsonl"))
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl DeviceJournal {
    /// Opens (creating if needed) the journal of `device` for the playbook `key`.
    pub fn open(state_dir: &Path, key: &str, device: &str) -> Result<Self, JournalError> {
        Self::open_path(device_journal_path(state_dir, key, device), false)
    }

    /// Reads the journal of `device` without creating or changing anything.
    pub fn open_read_only(state_dir: &Path, key: &str, device: &str) -> Result<Self, JournalError> {
        Self::open_path(device_journal_path(state_dir, key, device), true)
    }

    pub fn open_path(path: PathBuf, read_only: bool) -> Result<Self, JournalError> {
        if read_only {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_err(&path)(e)),
            };
            let parsed = parse_lines(&bytes);
            let mut journal = DeviceJournal {
                path,
                file: None,
                steps: BTreeMap::new(),
                records: Vec::new(),
                torn_tail: parsed.torn_tail,
                damage: None,
                unsynced: false,
            };
            for r in parsed.records {
                journal.fold(r);
            }
            return Ok(journal);
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        create_dir_all_synced(&dir)?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            fsync_dir(&dir);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(&path))?;
        let parsed = parse_lines(&bytes);
        let mut damage = None;
        if parsed.damaged > 0 {
            // Keep the damaged file for inspection; carry on with every valid record.
            let moved_to = path.with_extension(format!("jsonl.corrupt-{}", now_ms()));
            drop(file);
            // Copy aside first, then replace: a crash in between leaves both intact.
            crate::fsutil::write_atomic(&moved_to, &bytes, 0o600).map_err(io_err(&moved_to))?;
            crate::fsutil::write_atomic(&path, &parsed.valid_bytes, 0o600)
                .map_err(io_err(&path))?;
            file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            damage = Some(Damage {
                lines: parsed.damaged,
                moved_to,
            });
        } else if parsed.torn_tail {
            // Cut a torn tail so the next append starts on a fresh line.
            file.set_len(parsed.valid_bytes.len() as u64)
                .map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        let mut journal = DeviceJournal {
            path,
            file: Some(Arc::new(Mutex::new(file))),
            steps: BTreeMap::new(),
            records: Vec::new(),
            torn_tail: parsed.torn_tail,
            damage,
            unsynced: false,
        };
        for r in parsed.records {
            journal.fold(r);
        }
        Ok(journal)
    }

    fn fold(&mut self, r: Record) {
        fold_into(&mut self.steps, &r);
        self.records.push(r);
    }

    /// Appends a record durably (fsync) and folds it into the state. A failed write is
    /// rolled back so the file never keeps half a record in its middle. Blocks the calling
    /// thread for the write and fsync: async code uses [`DeviceJournal::append_async`].
    pub fn append(&mut self, record: Record) -> Result<(), JournalError> {
        let Some(file) = self.file.as_ref() else {
            self.fold(record);
            return Ok(());
        };
        let line = encode_line(&record).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_line(file, &self.path, &line, Durability::Now)?;
        self.unsynced = false;
        self.fold(record);
        Ok(())
    }

    /// [`DeviceJournal::append`] with the write and fsync on tokio's blocking pool: the
    /// future completes only when the line is durable (or rolled back), and the async
    /// worker is free meanwhile. If the caller is cancelled the write still completes on
    /// the file, but the record is not folded into this journal's in-memory state (the
    /// next open reads it from the file).
    pub async fn append_async(&mut self, record: Record) -> Result<(), JournalError> {
        self.append_async_with(record, Durability::Now).await
    }

    /// [`DeviceJournal::append_async`] with the record's [`Durability`].
    pub async fn append_async_with(
        &mut self,
        record: Record,
        durability: Durability,
    ) -> Result<(), JournalError> {
        let Some(file) = self.file.as_ref() else {
            self.fold(record);
            return Ok(());
        };
        let line = encode_line(&record).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let file = Arc::clone(file);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_line(&file, &path, &line, durability))
            .await
            .map_err(|e| JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(format!("journal write task failed: {e}")),
            })??;
        self.unsynced = durability == Durability::WithNext;
        self.fold(record);
        Ok(())
    }

    /// Makes every appended line durable (fsync on the blocking pool); nothing when all
    /// are.
    pub async fn sync_async(&mut self) -> Result<(), JournalError> {
        let Some(file) = self.file.as_ref().filter(|_| self.unsynced) else {
            return Ok(());
        };
        let file = Arc::clone(file);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            run_sync_hook(&path);
            file.sync_data().map_err(io_err(&path))
        })
        .await
        .map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("journal sync task failed: {e}")),
        })??;
        self.unsynced = false;
        Ok(())
    }

    pub fn step(&self, id: &str) -> StepState {
        self.steps.get(id).cloned().unwrap_or_default()
    }

    pub fn steps(&self) -> &BTreeMap<String, StepState> {
        &self.steps
    }

    /// Every valid record, in order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Called with the journal's path just before each append's fsync. Test support only (zero
/// cost when unset): a test installs a hook that blocks to stand in for a slow disk.
type SyncHook = Arc<dyn Fn(&Path) + Send + Sync>;

static SYNC_HOOK: Mutex<Option<SyncHook>> = Mutex::new(None);

/// Installs (or with `None` removes) the process-wide hook run before every journal
/// append's write and fsync. For tests that simulate a slow filesystem; never set by the
/// product.
#[doc(hidden)]
pub fn set_sync_hook(hook: Option<SyncHook>) {
    if let Ok(mut slot) = SYNC_HOOK.lock() {
        *slot = hook;
    }
}

fn run_sync_hook(path: &Path) {
    let hook = SYNC_HOOK.lock().ok().and_then(|slot| slot.clone());
    if let Some(hook) = hook {
        hook(path);
    }
}

/// Writes one encoded line at the end of the file and, for [`Durability::Now`], fsyncs it
/// (and every line before it); on failure cuts the file back to its length before the
/// write. Blocking.
fn write_line(
    file: &Mutex<File>,
    path: &Path,
    line: &[u8],
    durability: Durability,
) -> Result<(), JournalError> {
    // A poisoned lock means an earlier write panicked; the file itself is still usable and
    // the length check below rolls back whatever that write left.
    let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = file.metadata().map_err(io_err(path))?.len();
    if crate::failpoint::armed_here("journal-torn-append") {
        // Test-only: a power cut in the middle of this append.
        let half = line.get(..line.len() / 2).unwrap_or_default();
        let _ = file.write_all(half).and_then(|()| file.sync_data());
        crate::failpoint::abort("journal-torn-append");
    }
    let written = match durability {
        Durability::Now => {
            run_sync_hook(path);
            file.write_all(line).and_then(|()| file.sync_data())
        }
        Durability::WithNext => file.write_all(line),
    };
    if let Err(e) = written {
        let _ = file.set_len(before);
        let _ = file.sync_data();
        return Err(io_err(path)(e));
    }
    Ok(())
}

/// The run log of one playbook: which run is current. A run is one unit: rerunning the
/// command after an interruption continues the same run (the devices it finished are not
/// redone, its once-per-run actions are not repeated); a run that finished is over and the
/// next invocation starts a new one.
#[derive(Debug)]
pub struct RunLog {
    journal: DeviceJournal,
}

/// The run an apply works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRun {
    pub id: String,
    /// It continues an interrupted run (started at `id`).
    pub resumed: bool,
}

const RUN_STEP: &str = "run";

impl RunLog {
    pub fn open(state_dir: &Path, key: &str, read_only: bool) -> Result<Self, JournalError> {
        Ok(RunLog {
            journal: DeviceJournal::open_path(run_log_path(state_dir, key), read_only)?,
        })
    }

    /// The run that was interrupted (started, never finished), if any.
    pub fn interrupted(&self) -> Option<String> {
        let s = self.journal.steps().get(RUN_STEP)?;
        (s.status == StepStatus::InFlight).then(|| s.run.clone())
    }

    /// The latest run, interrupted or finished.
    pub fn latest(&self) -> Option<String> {
        self.journal.steps().get(RUN_STEP).map(|s| s.run.clone())
    }

    /// Continues the interrupted run, or starts `new_id` (durably) unless `new_run` says
    /// the interrupted one is abandoned.
    pub fn begin(&mut self, new_id: &str, abandon: bool) -> Result<CurrentRun, JournalError> {
        if let (Some(id), false) = (self.interrupted(), abandon) {
            return Ok(CurrentRun { id, resumed: true });
        }
        if let Some(old) = self.interrupted() {
            self.journal.append(Record {
                run: old,
                step: RUN_STEP.into(),
                status: StepStatus::Skipped,
                at_ms: now_ms(),
                changed: false,
                outputs: StepOutputs::default(),
                error: Some("abandoned by --new-run".into()),
            })?;
        }
        self.journal.append(Record {
            run: new_id.to_string(),
            step: RUN_STEP.into(),
            status: StepStatus::InFlight,
            at_ms: now_ms(),
            changed: false,
            outputs: StepOutputs::default(),
            error: None,
        })?;
        Ok(CurrentRun {
            id: new_id.to_string(),
            resumed: false,
        })
    }

    /// Marks the run finished: the next invocation starts a new one.
    pub fn finish(&mut self, id: &str) -> Result<(), JournalError> {
        self.journal.append(Record {
            run: id.to_string(),
            step: RUN_STEP.into(),
            status: StepStatus::Done,
            at_ms: now_ms(),
            changed: false,
            outputs: StepOutputs::default(),
            error: None,
        })
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Creates a directory (and parents) and fsyncs the parent so the entry survives a crash.
pub fn create_dir_all_synced(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent);
    }
    Ok(())
}

/// The exclusive lock of a state directory, held for a whole apply; released on drop
/// (and by the OS if the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, JournalError> {
        create_dir_all_synced(state_dir)?;
        let path = state_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(JournalError::Locked {
                    dir: state_dir.to_path_buf(),
                    lock: path,
                    holder: if holder.trim().is_empty() {
                        "unknown process".into()
                    } else {
                        holder.trim().to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        let _ = write!(file, "pid {}", std::process::id());
        let _ = file.sync_data();
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a device's step states without creating anything (for `plan` and `--limit @failed`).
pub fn read_steps(
    state_dir: &Path,
    key: &str,
    device: &str,
) -> Result<BTreeMap<String, StepState>, JournalError> {
    Ok(DeviceJournal::open_read_only(state_dir, key, device)?.steps)
}

/// Folds one record into the step states (shared by every reader).
fn fold_into(steps: &mut BTreeMap<String, StepState>, r: &Record) {
    let s = steps.entry(r.step.clone()).or_default();
    match r.status {
        StepStatus::InFlight => {
            s.attempts += 1;
            s.started_ms = Some(r.at_ms);
            s.finished_ms = None;
        }
        StepStatus::Done | StepStatus::Failed | StepStatus::Skipped => {
            s.finished_ms = Some(r.at_ms)
        }
        // A reset: the step starts over, and its old outputs must not be reused.
        StepStatus::Pending => s.outputs = StepOutputs::default(),
    }
    // `changed` is what the step did in its latest run: a run that found it already done
    // does not inherit an earlier run's change.
    let same_run = s.run == r.run;
    s.status = r.status;
    s.run = r.run.clone();
    s.changed = r.changed || (s.changed && same_run && r.status != StepStatus::Pending);
    s.error = r.error.clone();
    s.outputs.merge(&r.outputs);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outcome appended `WithNext` is written at once (a reopen reads it) but costs no
    /// fsync; the next `Now` append or `sync_async` carries it, and a second sync is free.
    #[tokio::test]
    async fn outcomes_ride_on_the_next_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&syncs);
        // The hook is process-wide: count only this test's directory.
        set_sync_hook(Some(Arc::new(move |path: &Path| {
            if path.starts_with(&root) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })));
        let count = || syncs.load(std::sync::atomic::Ordering::SeqCst);
        let mut j = DeviceJournal::open(dir.path(), "pb", "room-1").unwrap();
        j.append_async_with(
            rec("add_certificate-1", StepStatus::InFlight),
            Durability::Now,
        )
        .await
        .unwrap();
        assert_eq!(count(), 1);
        j.append_async_with(
            rec("add_certificate-1", StepStatus::Done),
            Durability::WithNext,
        )
        .await
        .unwrap();
        assert_eq!(count(), 1, "an outcome costs no fsync of its own");
        let reread = DeviceJournal::open_read_only(dir.path(), "pb", "room-1").unwrap();
        assert_eq!(reread.step("add_certificate-1").status, StepStatus::Done);
        j.sync_async().await.unwrap();
        assert_eq!(count(), 2);
        j.sync_async().await.unwrap();
        assert_eq!(count(), 2, "nothing left to sync");
        j.append_async_with(rec("activate-1", StepStatus::Done), Durability::WithNext)
            .await
            .unwrap();
        j.append_async(rec("show-1", StepStatus::InFlight))
            .await
            .unwrap();
        assert_eq!(
            count(),
            3,
            "the write-ahead record's fsync carried the outcome"
        );
        j.sync_async().await.unwrap();
        assert_eq!(count(), 3);
    }

    fn rec(step: &str, status: StepStatus) -> Record {
        Record {
            run: "r1".into(),
            step: step.into(),
            status,
            at_ms: 1,
            changed: status == StepStatus::Done,
            outputs: StepOutputs::default(),
            error: None,
        }
    }

    #[test]
    fn append_fold_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "room-1").unwrap();
        j.append(rec("add_certificate-1", StepStatus::InFlight))
            .unwrap();
        let mut done = rec("add_certificate-1", StepStatus::Done);
        done.outputs.fingerprint = Some("ab".into());
        j.append(done).unwrap();
        j.append(rec("show_certificates-2", StepStatus::InFlight))
            .unwrap();
        drop(j);
        let j = DeviceJournal::open(dir.path(), "pb", "room-1").unwrap();
        let s = j.step("add_certificate-1");
        assert_eq!(s.status, StepStatus::Done);
        assert_eq!(s.run, "r1");
        assert_eq!(s.attempts, 1);
        assert_eq!(s.outputs.fingerprint.as_deref(), Some("ab"));
        assert_eq!(j.step("show_certificates-2").status, StepStatus::InFlight);
        assert_eq!(j.step("x").status, StepStatus::Pending);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        j.append(rec("a", StepStatus::Done)).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"run":"r1","step":"b","sta"#).unwrap();
        drop(f);
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        assert!(j.torn_tail);
        assert!(j.damage.is_none());
        assert_eq!(j.step("b").status, StepStatus::Pending);
        j.append(rec("b", StepStatus::Done)).unwrap();
        drop(j);
        let j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        assert!(!j.torn_tail);
        assert_eq!(j.step("b").status, StepStatus::Done);
    }

    #[test]
    fn every_truncation_point_reads_as_a_prefix_of_the_story() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        for (i, st) in [StepStatus::InFlight, StepStatus::Done, StepStatus::InFlight]
            .into_iter()
            .enumerate()
        {
            j.append(rec(&format!("s{i}"), st)).unwrap();
        }
        let bytes = std::fs::read(j.path()).unwrap();
        let full = parse_lines(&bytes).records;
        assert_eq!(full.len(), 3);
        for cut in 0..=bytes.len() {
            let parsed = parse_lines(&bytes[..cut]);
            assert_eq!(parsed.damaged, 0, "cut at {cut}");
            assert_eq!(
                parsed.records[..],
                full[..parsed.records.len()],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        j.append(rec("a", StepStatus::Done)).unwrap();
        let mut bytes = std::fs::read(j.path()).unwrap();
        let pos = bytes.iter().position(|b| *b == b'1').unwrap();
        bytes[pos] = b'9';
        let parsed = parse_lines(&bytes);
        assert_eq!(parsed.records.len(), 0);
        assert_eq!(parsed.damaged, 1);
    }

    /// A damaged middle line: the file is moved aside, every valid record before and after
    /// the damage is kept, and appends go on.
    #[test]
    fn a_damaged_middle_line_moves_the_file_aside_and_keeps_every_valid_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        for s in ["a", "b", "c"] {
            j.append(rec(s, StepStatus::Done)).unwrap();
        }
        let path = j.path().to_path_buf();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("\"step\":\"b\"", "\"step\":\"B\"", 1);
        std::fs::write(&path, &damaged).unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        let damage = j.damage.clone().expect("damage reported");
        assert_eq!(damage.lines, 1);
        assert_eq!(std::fs::read_to_string(&damage.moved_to).unwrap(), damaged);
        assert_eq!(j.step("a").status, StepStatus::Done);
        assert_eq!(j.step("b").status, StepStatus::Pending);
        assert_eq!(
            j.step("c").status,
            StepStatus::Done,
            "the record after the damage"
        );
        j.append(rec("d", StepStatus::Done)).unwrap();
        drop(j);
        let j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        assert!(j.damage.is_none(), "the rewritten journal is clean");
        assert_eq!(j.records().len(), 3);
    }

    /// A line written by a newer roomkey (an extra field) verifies and reads.
    #[test]
    fn a_newer_field_is_not_corruption() {
        let record = rec("a", StepStatus::Done);
        let json = serde_json::to_string(&record).unwrap();
        let newer = json.replacen('{', r#"{"tenant":"x","#, 1);
        let sum = checksum(newer.as_bytes());
        let line = format!(
            "{}{SUM_MEMBER}{sum}\"}}\n",
            newer.strip_suffix('}').unwrap()
        );
        let parsed = parse_lines(line.as_bytes());
        assert_eq!(parsed.damaged, 0);
        assert_eq!(parsed.records, vec![record]);
    }

    /// Lines written before typed outputs (strings for numbers, comma-joined lists) read.
    #[test]
    fn an_older_line_reads() {
        let body = r#"{"run":"r0","step":"01-restart","status":"in-flight","at_ms":5,"outputs":{"uptime_before":"42","ca_fingerprints":"aa,bb","added":"true"}}"#;
        let line = format!(
            "{}{SUM_MEMBER}{}\"}}\n",
            body.strip_suffix('}').unwrap(),
            checksum(body.as_bytes())
        );
        let parsed = parse_lines(line.as_bytes());
        assert_eq!(parsed.damaged, 0);
        let r = &parsed.records[0];
        assert_eq!(r.outputs.uptime_before, Some(42));
        assert_eq!(r.outputs.ca_fingerprints, vec!["aa", "bb"]);
    }

    #[test]
    fn changed_belongs_to_the_run_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        j.append(rec("a", StepStatus::Done)).unwrap();
        assert!(j.step("a").changed);
        let mut later = rec("a", StepStatus::Done);
        later.run = "r2".into();
        later.changed = false;
        j.append(later).unwrap();
        assert!(!j.step("a").changed, "r2 changed nothing");
        assert_eq!(j.step("a").run, "r2");
    }

    #[test]
    fn read_only_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open_read_only(dir.path(), "pb", "d").unwrap();
        j.append(rec("a", StepStatus::Done)).unwrap();
        assert_eq!(j.step("a").status, StepStatus::Done);
        assert!(!dir.path().join("journal").exists());
    }

    #[test]
    fn an_interrupted_run_is_continued_and_a_finished_one_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path(), "pb", false).unwrap();
        let first = log.begin("run-1", false).unwrap();
        assert!(!first.resumed);
        drop(log);
        let mut log = RunLog::open(dir.path(), "pb", false).unwrap();
        let again = log.begin("run-2", false).unwrap();
        assert_eq!(
            again,
            CurrentRun {
                id: "run-1".into(),
                resumed: true
            }
        );
        log.finish("run-1").unwrap();
        let next = log.begin("run-3", false).unwrap();
        assert_eq!(next.id, "run-3");
        assert!(!next.resumed);
        let abandoned = log.begin("run-4", true).unwrap();
        assert_eq!(abandoned.id, "run-4");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another roomkey apply"),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
