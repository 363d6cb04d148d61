//! The durable per-device, per-step journal under the state directory, and the lock that
//! keeps two applies off one state directory.
//!
//! Layout: `<state>/journal/<playbook-key>/<device>.jsonl`, append-only. Every line is one
//! JSON record carrying a checksum of its own body; each append is fsynced before the
//! engine acts on it (write-ahead: a step is recorded `started` before its command is
//! sent). `kill -9` at any instant can at worst leave a torn last line: it fails its
//! checksum, is ignored, and is cut off before the next append, so the journal always reads
//! as the true story up to the last completed write. No secret is ever written here: records
//! hold step ids, statuses, timings, fingerprints and error texts (which are built from
//! redacted command lines only).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The apply that wrote it (RFC 3339 start time of that run).
    pub run: String,
    /// Step id (`03-show_certificates`) or `device` for device-level facts.
    pub step: String,
    pub status: StepStatus,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// Whether the step changed the device (for the recap's `changed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
    /// Values later steps need (fingerprints). Never a secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    record: Record,
    /// First 16 hex digits of SHA-256 over the record's JSON.
    sum: String,
}

fn checksum(json: &str) -> String {
    let digest = Sha256::digest(json.as_bytes());
    hex::encode(&digest[..8])
}

/// What the journal says about one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepState {
    pub status: StepStatus,
    pub changed: bool,
    pub outputs: BTreeMap<String, String>,
    pub error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// How many times the step was started.
    pub attempts: u32,
}

/// A device's journal: its folded state plus the open file to append to.
pub struct DeviceJournal {
    path: PathBuf,
    file: File,
    steps: BTreeMap<String, StepState>,
    /// Torn or corrupt lines found (and cut) when the journal was opened.
    pub discarded_lines: usize,
}

impl std::fmt::Debug for DeviceJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceJournal")
            .field("path", &self.path)
            .field("steps", &self.steps)
            .finish()
    }
}

impl DeviceJournal {
    /// Opens (creating if needed) the journal of `device` for the playbook `key`.
    pub fn open(state_dir: &Path, key: &str, device: &str) -> Result<Self, JournalError> {
        let dir = state_dir.join("journal").join(key);
        create_dir_all_synced(&dir)?;
        let path = dir.join(format!("{device}.jsonl"));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io_err(&path))?;
        let (records, valid_len, discarded) = parse_lines(&text);
        if valid_len < text.len() {
            // Cut a torn tail so the next append starts on a fresh line.
            file.set_len(valid_len as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
        let mut journal = DeviceJournal {
            path,
            file,
            steps: BTreeMap::new(),
            discarded_lines: discarded,
        };
        for r in records {
            journal.fold(&r);
        }
        Ok(journal)
    }

    fn fold(&mut self, r: &Record) {
        fold_into(&mut self.steps, r);
    }

    /// Appends a record durably (fsync) and folds it into the state.
    pub fn append(&mut self, record: Record) -> Result<(), JournalError> {
        let json = serde_json::to_string(&record).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let line = Line {
            sum: checksum(&json),
            record,
        };
        let mut text = serde_json::to_string(&line).map_err(|e| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.fold(&line.record);
        Ok(())
    }

    pub fn step(&self, id: &str) -> StepState {
        self.steps.get(id).cloned().unwrap_or_default()
    }

    pub fn steps(&self) -> &BTreeMap<String, StepState> {
        &self.steps
    }

    /// Forgets every step (a `--fresh` run); written as `pending` records so the history
    /// stays in the file.
    pub fn reset(&mut self, run: &str) -> Result<(), JournalError> {
        let ids: Vec<String> = self.steps.keys().cloned().collect();
        for id in ids {
            self.append(Record {
                run: run.to_string(),
                step: id,
                status: StepStatus::Pending,
                at_ms: now_ms(),
                changed: false,
                outputs: BTreeMap::new(),
                error: None,
            })?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Parses journal bytes: the valid records, the byte length of the valid prefix, and how
/// many lines were discarded. Reading stops at the first bad line: everything after a
/// corrupt line is suspect, and appends only ever tear the last one.
pub fn parse_lines(bytes: &[u8]) -> (Vec<Record>, usize, usize) {
    let mut records = Vec::new();
    let mut valid = 0usize;
    let mut rest = bytes;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let (line, tail) = rest.split_at(nl);
        let ok = std::str::from_utf8(line)
            .ok()
            .and_then(|s| serde_json::from_str::<Line>(s).ok())
            .and_then(|l| {
                let json = serde_json::to_string(&l.record).ok()?;
                (checksum(&json) == l.sum).then_some(l.record)
            });
        match ok {
            Some(r) => {
                records.push(r);
                valid += nl + 1;
                rest = tail.get(1..).unwrap_or_default();
            }
            None => break,
        }
    }
    let remaining = &bytes[valid..];
    let discarded = remaining
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    (records, valid, discarded)
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
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
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
    let path = state_dir
        .join("journal")
        .join(key)
        .join(format!("{device}.jsonl"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let (records, _, _) = parse_lines(&bytes);
    let mut steps = BTreeMap::new();
    for r in &records {
        fold_into(&mut steps, r);
    }
    Ok(steps)
}

/// Folds one record into the step states (shared by `DeviceJournal` and `read_steps`).
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
        StepStatus::Pending => s.outputs.clear(),
    }
    s.status = r.status;
    s.changed = r.changed || (s.changed && r.status != StepStatus::Pending);
    s.error = r.error.clone();
    for (k, v) in &r.outputs {
        s.outputs.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: &str, status: StepStatus) -> Record {
        Record {
            run: "r1".into(),
            step: step.into(),
            status,
            at_ms: 1,
            changed: status == StepStatus::Done,
            outputs: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn append_fold_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "room-1").unwrap();
        j.append(rec("01-add_certificate", StepStatus::InFlight))
            .unwrap();
        let mut done = rec("01-add_certificate", StepStatus::Done);
        done.outputs.insert("fingerprint".into(), "ab".into());
        j.append(done).unwrap();
        j.append(rec("02-show_certificates", StepStatus::InFlight))
            .unwrap();
        drop(j);
        let j = DeviceJournal::open(dir.path(), "pb", "room-1").unwrap();
        let s = j.step("01-add_certificate");
        assert_eq!(s.status, StepStatus::Done);
        assert_eq!(s.attempts, 1);
        assert_eq!(s.outputs.get("fingerprint").map(String::as_str), Some("ab"));
        assert_eq!(j.step("02-show_certificates").status, StepStatus::InFlight);
        assert_eq!(j.step("03-x").status, StepStatus::Pending);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        j.append(rec("01-a", StepStatus::Done)).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"run":"r1","step":"02-b","sta"#).unwrap();
        drop(f);
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        assert_eq!(j.discarded_lines, 1);
        assert_eq!(j.step("02-b").status, StepStatus::Pending);
        j.append(rec("02-b", StepStatus::Done)).unwrap();
        drop(j);
        let j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        assert_eq!(j.discarded_lines, 0);
        assert_eq!(j.step("02-b").status, StepStatus::Done);
    }

    #[test]
    fn every_truncation_point_reads_as_a_prefix_of_the_story() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        for (i, st) in [StepStatus::InFlight, StepStatus::Done, StepStatus::InFlight]
            .into_iter()
            .enumerate()
        {
            j.append(rec(&format!("0{i}-s"), st)).unwrap();
        }
        let bytes = std::fs::read(j.path()).unwrap();
        let full = parse_lines(&bytes).0;
        assert_eq!(full.len(), 3);
        for cut in 0..=bytes.len() {
            let (records, valid, _) = parse_lines(&bytes[..cut]);
            assert!(valid <= cut);
            assert_eq!(records[..], full[..records.len()], "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = DeviceJournal::open(dir.path(), "pb", "d").unwrap();
        j.append(rec("01-a", StepStatus::Done)).unwrap();
        let mut bytes = std::fs::read(j.path()).unwrap();
        let pos = bytes.iter().position(|b| *b == b'0').unwrap();
        bytes[pos] = b'9';
        assert_eq!(parse_lines(&bytes).0.len(), 0);
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
