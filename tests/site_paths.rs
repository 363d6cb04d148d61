//! One place for state and vault: beside the inventory, whatever the working directory.
//! Regression test for the README walkthrough that created `./.roomkey/vault` while
//! `apply -i inventory/site.yaml` looked in `inventory/.roomkey/vault`, and whose error
//! advice created the wrong file again: the advice printed now, run as printed, makes the
//! vault `apply` opens.

use std::path::Path;

const PASSPHRASE: &str = "site paths passphrase 5e1f";

fn roomkey(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
        .current_dir(dir)
        .env("ROOMKEY_VAULT_PASSPHRASE", PASSPHRASE)
        .env_remove("ROOMKEY_VAULT")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_vault_advice_creates_the_vault_apply_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = roomkey(
        dir.path(),
        &["init", "inventory", "--device", "room-301=192.0.2.31"],
    );
    assert_eq!(code, 0, "{err}");
    let inv = "inventory/inventory.yaml";
    let pb = "inventory/playbooks/external-identity.yaml";
    let (code, _, err) = roomkey(dir.path(), &["apply", "-i", inv, pb, "--output", "plain"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("inventory/.roomkey/vault"), "{err}");
    let advice = err
        .split('`')
        .find(|s| s.starts_with("roomkey secret init"))
        .unwrap_or_else(|| panic!("no advice in: {err}"));
    assert_eq!(advice, format!("roomkey secret init -i {inv}"));
    let args: Vec<&str> = advice.split_whitespace().skip(1).collect();
    let (code, _, err) = roomkey(dir.path(), &args);
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("inventory/.roomkey/vault").is_file());
    assert!(
        !dir.path().join(".roomkey").exists(),
        "a vault outside the site"
    );
    let (code, _, err) = roomkey(dir.path(), &["secret", "generate", "-i", inv]);
    assert_eq!(code, 0, "{err}");
    // The vault opens now; what stops apply is the missing certificate, named with its
    // path beside the inventory.
    let (code, _, err) = roomkey(dir.path(), &["apply", "-i", inv, pb, "--output", "plain"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("opening the vault"), "{err}");
    assert!(err.contains("inventory/certs/room-301.pem"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    // `secret list -i` reads the same vault.
    let (code, out, err) = roomkey(dir.path(), &["secret", "list", "-i", inv]);
    assert_eq!(code, 0, "{err}");
    assert!(format!("{out}{err}").contains("room-301"), "{out}{err}");
}

#[test]
fn import_from_standard_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = roomkey(dir.path(), &["init", "site"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = roomkey(dir.path(), &["secret", "init", "-i", "site/inventory.yaml"]);
    assert_eq!(code, 0, "{err}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(["secret", "import", "-i", "site/inventory.yaml", "-"])
        .current_dir(dir.path())
        .env("ROOMKEY_VAULT_PASSPHRASE", PASSPHRASE)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"room-301,first-secret-phrase-0123456789\nroom-302,second-secret-phrase-0123456789\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("imported 2"), "{err}");
    assert!(!err.contains("delete it securely"), "{err}");
    assert!(!err.contains("first-secret"), "{err}");
    let (code, out, err) = roomkey(
        dir.path(),
        &[
            "secret",
            "show",
            "-i",
            "site/inventory.yaml",
            "--device",
            "room-302",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "second-secret-phrase-0123456789");
}
