//! Command-line front ends (part of the binary, not the library): one module per subcommand
//! family, each owning its clap arguments and a `run` function. `anyhow` lives here and in
//! `main.rs`, never in the library.

pub mod apply;
pub mod bench;
pub mod cert;
pub mod demo;
pub mod init;
pub mod jwe;
pub mod probe;
pub mod secret;
pub mod sim;
pub mod status;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A working directory for `demo` and `bench`: the user's `--dir` (created if missing), or a
/// fresh temporary one that lives as long as the returned guard.
pub fn work_dir(
    dir: Option<&Path>,
    prefix: &str,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// Issues a throw-away certificate for `cn` (SAN = CN, valid from an hour ago for a year)
/// and writes it, and its key with mode 0600.
pub fn issue_test_certificate(
    ca: &roomkey::cert::TestCa,
    cn: &str,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let (cert_pem, key_pem) = ca.issue(
        cn,
        &[cn.to_string()],
        now - time::Duration::hours(1),
        now + time::Duration::days(365),
    )?;
    std::fs::write(cert_path, cert_pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    roomkey::fsutil::write_atomic(key_path, key_pem.as_bytes(), 0o600)?;
    Ok(())
}
