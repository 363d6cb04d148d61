//! The vault through its library API: the committed v1 fixture still opens (a vault written
//! by one version is read by the next), wrong passphrases and tampered files fail without
//! touching the file, and the rotation bookkeeping keeps every secret it must.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use roomkey::secret::Secret;
use roomkey::vault::{SecretState, Vault, VaultError, FORMAT_VERSION};

const FIXTURE_PASSPHRASE: &str = "roomkey fixture v1 passphrase";

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault/v1.vault")
}

fn pass() -> Secret {
    Secret::new("test passphrase")
}

/// Fills a vault with the fixture content (one device per interesting state).
fn fill_fixture(v: &mut Vault) {
    v.set_current(
        "room-1.example.com",
        Secret::new("fixture-old-1"),
        true,
        None,
    )
    .unwrap();
    v.begin_rotation("room-1.example.com", Secret::new("fixture-current-1"))
        .unwrap();
    v.promote_pending("room-1.example.com").unwrap();
    v.set_current("room-2", Secret::new("fixture-current-2"), true, None)
        .unwrap();
    v.begin_rotation("room-2", Secret::new("fixture-pending-2"))
        .unwrap();
    v.set_current("room-3", Secret::new("fixture-current-3"), true, None)
        .unwrap();
    v.begin_rotation("room-3", Secret::new("fixture-pending-3"))
        .unwrap();
    v.mark_secret_unknown("room-3").unwrap();
    v.set_current(
        "room-4",
        Secret::new("fixture-unseeded-4"),
        false,
        Some("generated"),
    )
    .unwrap();
    v.set_credential("ssh-admin", Secret::new("fixture-ssh-password"))
        .unwrap();
}

/// Regenerates the committed fixture. Run only when the format version changes and a NEW
/// fixture file is added (never overwrite an old one: it proves backward reading):
/// `ROOMKEY_WRITE_VAULT_FIXTURE=1 cargo test --test vault_format -- --ignored`.
#[test]
#[ignore]
fn write_v1_fixture() {
    if std::env::var_os("ROOMKEY_WRITE_VAULT_FIXTURE").is_none() {
        return;
    }
    let mut v = Vault::create(&fixture_path(), &Secret::new(FIXTURE_PASSPHRASE)).unwrap();
    fill_fixture(&mut v);
    v.save().unwrap();
}

#[test]
fn a_vault_written_by_version_1_is_read_by_this_version() {
    const { assert!(FORMAT_VERSION >= 1) };
    let bytes = std::fs::read(fixture_path()).unwrap();
    assert_eq!(&bytes[..13], b"ROOMKEY-VAULT");
    assert_eq!(&bytes[13..15], &1u16.to_be_bytes());
    let v = Vault::open_read_only(&fixture_path(), &Secret::new(FIXTURE_PASSPHRASE)).unwrap();
    assert_eq!(
        v.device_names().collect::<Vec<_>>(),
        ["room-1.example.com", "room-2", "room-3", "room-4"]
    );

    let d1 = v.device("room-1.example.com").unwrap();
    assert_eq!(d1.state, SecretState::Ok);
    assert!(d1.seeded);
    assert_eq!(
        d1.current.as_ref().unwrap().secret.expose(),
        "fixture-current-1"
    );
    assert_eq!(d1.previous.len(), 1);
    assert_eq!(d1.previous[0].secret.expose(), "fixture-old-1");
    assert!(d1.previous[0].retired.is_some());

    let d2 = v.device("room-2").unwrap();
    assert_eq!(d2.state, SecretState::RotationPending);
    assert_eq!(
        d2.pending.as_ref().unwrap().secret.expose(),
        "fixture-pending-2"
    );

    let d3 = v.device("room-3").unwrap();
    assert_eq!(d3.state, SecretState::SecretUnknown);
    assert_eq!(
        d3.current.as_ref().unwrap().secret.expose(),
        "fixture-current-3"
    );
    assert_eq!(
        d3.pending.as_ref().unwrap().secret.expose(),
        "fixture-pending-3"
    );

    let d4 = v.device("room-4").unwrap();
    assert!(!d4.seeded);
    assert_eq!(
        d4.current.as_ref().unwrap().note.as_deref(),
        Some("generated")
    );

    assert_eq!(
        v.credential("ssh-admin").unwrap().expose(),
        "fixture-ssh-password"
    );
}

#[test]
fn the_fixture_opened_and_saved_again_keeps_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    std::fs::copy(fixture_path(), &path).unwrap();
    let mut v = Vault::open(&path, &Secret::new(FIXTURE_PASSPHRASE)).unwrap();
    v.save().unwrap();
    drop(v);
    let v = Vault::open(&path, &Secret::new(FIXTURE_PASSPHRASE)).unwrap();
    assert_eq!(
        v.current_secret("room-2").unwrap().expose(),
        "fixture-current-2"
    );
}

#[test]
fn wrong_passphrase_errors_and_leaves_the_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&path, &pass()).unwrap();
    fill_fixture(&mut v);
    v.save().unwrap();
    drop(v);
    let before = std::fs::read(&path).unwrap();
    let err = Vault::open(&path, &Secret::new("not the passphrase")).unwrap_err();
    assert!(
        matches!(err, VaultError::WrongPassphraseOrTampered { .. }),
        "{err:?}"
    );
    assert!(Vault::open_or_create(&path, &Secret::new("not the passphrase")).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn every_tampered_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&path, &pass()).unwrap();
    v.set_current("r1", Secret::new("s1"), true, None).unwrap();
    v.save().unwrap();
    drop(v);
    let good = std::fs::read(&path).unwrap();
    // Header fields, first and last ciphertext bytes, the tag (each costs one scrypt).
    for i in [13, 16, 20, 30, 45, 53, good.len() / 2, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = Vault::open(&path, &pass()).unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::WrongPassphraseOrTampered { .. }
                    | VaultError::Corrupt { .. }
                    | VaultError::UnsupportedVersion { .. }
            ),
            "byte {i}: {err:?}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bad,
            "byte {i}: file rewritten"
        );
    }
    let mut short = good.clone();
    short.truncate(good.len() - 1);
    std::fs::write(&path, &short).unwrap();
    assert!(matches!(
        Vault::open(&path, &pass()).unwrap_err(),
        VaultError::WrongPassphraseOrTampered { .. }
    ));
}

#[test]
fn a_newer_format_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut bytes = std::fs::read(fixture_path()).unwrap();
    bytes[13..15].copy_from_slice(&2u16.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = Vault::open(&path, &Secret::new(FIXTURE_PASSPHRASE)).unwrap_err();
    assert!(
        matches!(err, VaultError::UnsupportedVersion { found: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("version 2"));
}

#[test]
fn not_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    std::fs::write(&path, "device,secret\n").unwrap();
    assert!(matches!(
        Vault::open(&path, &pass()).unwrap_err(),
        VaultError::NotAVault { .. }
    ));
}

#[test]
fn saved_file_is_0600_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&path, &pass()).unwrap();
    v.set_current(
        "room-plaintext-check",
        Secret::new("visible-secret-xyz"),
        false,
        None,
    )
    .unwrap();
    v.save().unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("visible-secret-xyz"));
    assert!(!text.contains("room-plaintext-check"));
    // The debug form of the vault shows no secret either.
    assert!(!format!("{v:?}").contains("visible-secret-xyz"));
    assert!(!format!("{:?}", v.device("room-plaintext-check")).contains("visible-secret-xyz"));
}

#[test]
fn rotation_bookkeeping_survives_save_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&path, &pass()).unwrap();
    v.set_current("r1", Secret::new("gen-0"), false, None)
        .unwrap();
    v.mark_seeded("r1").unwrap();
    for (i, new) in ["gen-1", "gen-2"].into_iter().enumerate() {
        v.begin_rotation("r1", Secret::new(new)).unwrap();
        // Crash here: the pending secret must already be durable.
        v.save().unwrap();
        drop(v);
        v = Vault::open(&path, &pass()).unwrap();
        let d = v.device("r1").unwrap();
        assert_eq!(d.state, SecretState::RotationPending);
        assert_eq!(d.pending.as_ref().unwrap().secret.expose(), new);
        assert_eq!(d.previous.len(), i);
        v.promote_pending("r1").unwrap();
        v.save().unwrap();
    }
    drop(v);
    let v = Vault::open(&path, &pass()).unwrap();
    let d = v.device("r1").unwrap();
    assert_eq!(d.current.as_ref().unwrap().secret.expose(), "gen-2");
    let prev: Vec<_> = d.previous.iter().map(|r| r.secret.expose()).collect();
    assert_eq!(prev, ["gen-1", "gen-0"]);
    assert!(d.pending.is_none());
}

#[test]
fn secret_unknown_keeps_both_secrets_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&path, &pass()).unwrap();
    v.set_current("r1", Secret::new("old"), true, None).unwrap();
    v.begin_rotation("r1", Secret::new("new")).unwrap();
    v.mark_secret_unknown("r1").unwrap();
    assert!(v.begin_rotation("r1", Secret::new("newer")).is_err());
    v.save().unwrap();
    drop(v);
    let v = Vault::open(&path, &pass()).unwrap();
    let d = v.device("r1").unwrap();
    assert_eq!(d.state, SecretState::SecretUnknown);
    assert_eq!(d.current.as_ref().unwrap().secret.expose(), "old");
    assert_eq!(d.pending.as_ref().unwrap().secret.expose(), "new");
}
