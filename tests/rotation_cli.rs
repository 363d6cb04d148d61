//! `roomkey secret generate -i INVENTORY [--limit ...]`: a secret for every selected
//! vault-backed device that has none, in the inventory's vault; nothing else touched.

use std::process::{Command, Output, Stdio};

use roomkey::secret::Secret;
use roomkey::vault::Vault;

const PASS: &str = "generate test passphrase";

fn roomkey(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
        .env("ROOMKEY_VAULT_PASSPHRASE", PASS)
        .env_remove("ROOMKEY_VAULT")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn generate_for_the_selected_devices_of_an_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(
        &inv,
        "vault: secrets/vault\ndefaults:\n  auth: { password_env: PW }\ndevices:\n  \
         room-01: { host: 127.0.0.1 }\n  room-02: { host: 127.0.0.2 }\n  \
         room-03: { host: 127.0.0.3 }\n  lobby-01: { host: 127.0.0.4 }\n  \
         lab-01: { host: 127.0.0.5, client_secret: { env: LAB_SECRET } }\n",
    )
    .unwrap();
    let vault_path = dir.path().join("secrets/vault");
    std::fs::create_dir_all(vault_path.parent().unwrap()).unwrap();
    let mut v = Vault::create(&vault_path, &Secret::new(PASS)).unwrap();
    v.set_current(
        "room-01",
        Secret::new("room one's existing secret"),
        true,
        None,
    )
    .unwrap();
    v.save().unwrap();
    drop(v);

    let inv_arg = inv.to_str().unwrap();
    let out = roomkey(
        dir.path(),
        &[
            "secret",
            "generate",
            "-i",
            inv_arg,
            "--limit",
            "room-*,lab-*,!room-03",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("room-01: already has a secret"), "{stderr}");
    assert!(stderr.contains("room-02: generated"), "{stderr}");
    assert!(
        stderr.contains("lab-01: its ClientSecret comes from environment variable LAB_SECRET"),
        "{stderr}"
    );
    let v = Vault::open_read_only(&vault_path, &Secret::new(PASS)).unwrap();
    assert_eq!(
        v.current_secret("room-01").unwrap().expose(),
        "room one's existing secret"
    );
    let room2 = v.device("room-02").unwrap();
    assert!(!room2.seeded, "a generated secret is not seeded yet");
    let generated = room2.current.as_ref().unwrap().secret.expose().to_string();
    assert_eq!(generated.len(), 42);
    assert!(!stderr.contains(&generated));
    for absent in ["room-03", "lobby-01", "lab-01"] {
        assert!(v.device(absent).is_none(), "{absent}");
    }

    // Without --limit: every remaining vault-backed device.
    let out = roomkey(dir.path(), &["secret", "generate", "-i", inv_arg]);
    assert_eq!(out.status.code(), Some(0));
    let v = Vault::open_read_only(&vault_path, &Secret::new(PASS)).unwrap();
    assert!(v.device("room-03").is_some() && v.device("lobby-01").is_some());
    assert!(v.device("lab-01").is_none());
    assert_eq!(
        v.current_secret("room-02").unwrap().expose(),
        generated,
        "existing secrets are never replaced"
    );

    // --limit needs an inventory; names and an inventory do not mix. Usage errors exit 1
    // with the other input errors (2 means "a device failed").
    let out = roomkey(dir.path(), &["secret", "generate", "--limit", "room-*"]);
    assert_eq!(out.status.code(), Some(1));
    let out = roomkey(
        dir.path(),
        &["secret", "generate", "-i", inv_arg, "room-01"],
    );
    assert_eq!(out.status.code(), Some(1));
    // An unknown device in --limit is an error, and nothing is written.
    let out = roomkey(
        dir.path(),
        &["secret", "generate", "-i", inv_arg, "--limit", "nowhere-9"],
    );
    assert_ne!(out.status.code(), Some(0));
}
