//! Where the vault passphrase comes from: a passphrase file named on the command line,
//! the `ROOMKEY_VAULT_PASSPHRASE` environment variable, or a no-echo prompt on the
//! terminal — never a command-line argument (it would show in `ps` and shell history).

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::VaultError;
use crate::secret::Secret;

/// The environment variable that may hold the vault passphrase.
pub const PASSPHRASE_ENV: &str = "ROOMKEY_VAULT_PASSPHRASE";

/// Where a passphrase was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// `ROOMKEY_VAULT_PASSPHRASE`.
    Env,
    /// A passphrase file (one trailing newline is dropped).
    File(PathBuf),
    /// An interactive prompt on the terminal.
    Prompt,
}

/// Picks the source: an explicitly named file first (it was asked for on this command
/// line), then the environment variable, then the terminal.
pub fn passphrase_source(file: Option<&Path>) -> PassphraseSource {
    match file {
        Some(f) => PassphraseSource::File(f.to_path_buf()),
        None if std::env::var_os(PASSPHRASE_ENV).is_some() => PassphraseSource::Env,
        None => PassphraseSource::Prompt,
    }
}

/// Reads the passphrase of an existing vault.
pub fn read_passphrase(file: Option<&Path>) -> Result<Secret, VaultError> {
    read(passphrase_source(file), false)
}

/// Reads the passphrase for a new vault: a prompt asks twice.
pub fn read_new_passphrase(file: Option<&Path>) -> Result<Secret, VaultError> {
    read(passphrase_source(file), true)
}

fn read(source: PassphraseSource, confirm: bool) -> Result<Secret, VaultError> {
    let pass = match source {
        PassphraseSource::Env => {
            let v = std::env::var(PASSPHRASE_ENV).map_err(|_| VaultError::PassphraseNotUtf8 {
                source_name: PASSPHRASE_ENV.to_owned(),
            })?;
            Secret::new(v)
        }
        PassphraseSource::File(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| VaultError::Io {
                path: path.clone(),
                op: "read passphrase file",
                source: e,
            })?;
            Secret::from_file_text(Zeroizing::new(text))
        }
        PassphraseSource::Prompt => {
            let first = prompt("Vault passphrase: ")?;
            if confirm {
                let again = prompt("Vault passphrase (again): ")?;
                if first != again {
                    return Err(VaultError::PassphraseMismatch);
                }
            }
            first
        }
    };
    if pass.is_empty() {
        return Err(VaultError::EmptyPassphrase);
    }
    Ok(pass)
}

/// A no-echo prompt on the controlling terminal (`/dev/tty`), so it works even when
/// stdin/stdout are redirected; without a terminal it is a clear error.
pub fn prompt(text: &str) -> Result<Secret, VaultError> {
    rpassword::prompt_password(text)
        .map(Secret::new)
        .map_err(|_| VaultError::NoPassphrase)
}
