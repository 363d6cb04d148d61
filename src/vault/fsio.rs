//! File-system edge of the vault: durable atomic writes of secret-bearing files (0600,
//! temp file in the same directory, fsync, rename, fsync of the directory) and the
//! writer lock. Also used for `roomkey secret export`, whose file holds plaintext secrets.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use crate::fsutil::parent_dir;

/// Creates the missing directories above `path`, new ones readable by the owner only.
pub fn create_parent_dirs(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent_dir(path))
}

/// Replaces (or creates) `path` with `bytes`, mode 0600, atomically and durably: when this
/// returns Ok the new content is on disk; on any error the old file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::fsutil::write_atomic(path, bytes, 0o600)
}

/// Writes a new file (0600) that must not exist yet, durably. Not atomic against a
/// reader, which is fine for an export file nobody reads while it is written.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let result = f.write_all(bytes).and_then(|()| f.sync_all());
    if result.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
        return result;
    }
    File::open(parent_dir(path))?.sync_all()
}

/// Starts the vault's change log at `path` with `bytes` (header and first record), mode
/// 0600, replacing a stale log; durable (file and directory fsynced) when this returns Ok.
/// Not atomic, and need not be: a reader takes a log cut short for a torn append.
pub fn write_log(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    File::open(parent_dir(path))?.sync_all()
}

/// Appends `bytes` to the change log at `path` at offset `at` (the end of its verified
/// records: a torn record beyond it is cut off first) and fsyncs it; returns the new length.
pub fn append_log(path: &Path, at: u64, bytes: &[u8]) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    if f.metadata()?.len() != at {
        f.set_len(at)?;
    }
    f.write_all_at(bytes, at)?;
    // fdatasync: the new length is metadata the data needs, so it is flushed too.
    f.sync_data()?;
    let added = u64::try_from(bytes.len()).map_err(io::Error::other)?;
    at.checked_add(added)
        .ok_or_else(|| io::Error::other("vault log too long"))
}

/// The lock file beside the vault. It is a separate file because the vault itself is
/// replaced by rename on every save (a lock on its inode would not cover the new file).
/// It is never deleted: deleting lock files reopens the race they close.
pub fn lock_path(vault: &Path) -> PathBuf {
    beside(vault, ".lock")
}

/// The file beside the vault whose name is the vault's with `suffix` added.
pub fn beside(vault: &Path, suffix: &str) -> PathBuf {
    let mut name = vault.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    parent_dir(vault).join(name)
}

/// Why the lock could not be taken.
pub enum LockError {
    Busy,
    Io(io::Error),
}

/// Takes the exclusive writer lock (non-blocking); it is held until the file is dropped.
pub fn lock(vault: &Path) -> Result<File, LockError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(vault))
        .map_err(LockError::Io)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Busy),
        Err(std::fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn write_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_new(&p, b"one").unwrap();
        let err = write_new(&p, b"two").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn second_lock_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vault");
        let first = lock(&p).ok().unwrap();
        assert!(matches!(lock(&p), Err(LockError::Busy)));
        drop(first);
        assert!(lock(&p).is_ok());
    }

    #[test]
    fn parent_of_a_bare_name_is_dot() {
        assert_eq!(parent_dir(Path::new("vault")), Path::new("."));
        assert_eq!(lock_path(Path::new("a/vault")), Path::new("a/vault.lock"));
    }
}
