//! `roomkey probe` against the simulator: every probed behaviour matches the device
//! catalogue on a default device; on a device playing the older ExternalIdentity form the
//! difference is named; the transcript holds the exchange and no secret.

mod support;

use roomkey::sim::{FaultPlan, Variants};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_matches_the_catalogue_and_names_a_variant() {
    let lab = Lab::start(2, 63, |i| FaultPlan {
        variants: if i == 1 {
            Variants {
                external_identity: roomkey::sim::variants::IdentityForm::Seed,
                populate_form: roomkey::sim::variants::PopulateForm::MultiLine,
                ..Variants::default()
            }
        } else {
            Variants::default()
        },
        ..FaultPlan::default()
    })
    .await;
    let inv = lab.inventory.to_str().unwrap().to_string();
    let transcript = lab.path().join("probe.txt");
    let out = lab
        .roomkey(&[
            "probe",
            "-i",
            &inv,
            "--limit",
            "room-01",
            "--accept-new-host-keys",
            "--transcript",
            transcript.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for entry in [
        "login.banner",
        "status.uptime",
        "status.external-identity",
        "show.fields",
        "help.populate",
        "help.services-add",
        "help.services-activate",
        "help.services-show",
        "help.scep-request",
        "reply.unknown-command",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(entry) && l.contains("matches")),
            "{entry}: {stdout}"
        );
    }
    assert!(!stdout.contains("differs"), "{stdout}");
    let text = std::fs::read_to_string(&transcript).unwrap();
    assert!(text.contains("> xStatus Conference EndToEndEncryption ExternalIdentity"));
    assert!(
        text.contains("< *s Conference EndToEndEncryption ExternalIdentity Status: NotConfigured")
    );
    assert!(text.contains("> xCommand Security ClientSecret Populate ?"));
    assert!(text.contains("< *h xCommand Security ClientSecret Populate"));
    assert!(!text.contains(PASSWORD), "no secret in the transcript");
    // Only read-only commands reached the device.
    let snap = lab.snapshot("room-01").await;
    assert!(
        snap.commands
            .iter()
            .any(|c| c.line == "xCommand Security ClientSecret Populate ?"),
        "{:?}",
        snap.commands
    );
    assert!(
        snap.commands.iter().all(|c| {
            let l = c.line.to_ascii_lowercase();
            l.starts_with("echo")
                || l.starts_with("xstatus")
                || l.contains("show")
                || l.contains("list")
                || l.ends_with(" ?")
        }),
        "{:?}",
        snap.commands
    );

    // The older node form is named as a difference.
    let out = lab
        .roomkey(&[
            "probe",
            "-i",
            &inv,
            "--limit",
            "room-02",
            "--accept-new-host-keys",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("status.external-identity")
                && l.contains("differs")
                && l.contains("older")),
        "{stdout}"
    );
    // The multi-line Populate form shows in its help: no Secret parameter.
    assert!(
        stdout.lines().any(|l| l.starts_with("help.populate")
            && l.contains("differs")
            && l.contains("Secret")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("help.services-add") && l.contains("matches")),
        "{stdout}"
    );
    lab.fleet.unwrap().shutdown().await;
}

/// A device whose login is kept in the vault (`auth: { password_vault: NAME }`) is probed
/// with that password, resolved as `apply` resolves it: no password in the environment, and
/// the vault opened read-only (it works while another process holds the vault's lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_logs_in_with_a_vault_held_password() {
    let lab = Lab::start(1, 210, |_| FaultPlan::default()).await;
    lab.set_credentials(&[("room-login", PASSWORD)]);
    let text = std::fs::read_to_string(&lab.inventory).unwrap();
    let vaulted = text.replace(
        "auth: { password_env: ROOMKEY_SIM_PASSWORD }",
        "auth: { password_vault: room-login }",
    );
    assert_ne!(text, vaulted);
    let inv = lab.path().join("inventory-vault.yaml");
    std::fs::write(&inv, vaulted).unwrap();
    // Someone else holds the vault's writer lock for the whole probe.
    let held =
        roomkey::vault::Vault::open(&lab.vault, &roomkey::secret::Secret::new(PASSPHRASE)).unwrap();
    let before = std::fs::read(&lab.vault).unwrap();
    let transcript = lab.path().join("probe-vault.txt");
    let out = lab
        .roomkey(&[
            "probe",
            "-i",
            inv.to_str().unwrap(),
            "--accept-new-host-keys",
            "--transcript",
            transcript.to_str().unwrap(),
        ])
        .env_remove("ROOMKEY_SIM_PASSWORD")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("not probed"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("login.banner") && l.contains("matches")),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&transcript).unwrap();
    assert!(!text.contains(PASSWORD), "no password in the transcript");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    drop(held);
    assert_eq!(
        std::fs::read(&lab.vault).unwrap(),
        before,
        "vault untouched"
    );

    // A wrong vault-held password: the device is not probed, and the reason says so.
    lab.set_credentials(&[("room-login", "not the password")]);
    let out = lab
        .roomkey(&["probe", "-i", inv.to_str().unwrap()])
        .env_remove("ROOMKEY_SIM_PASSWORD")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("not probed"), "{stdout}");
    lab.fleet.unwrap().shutdown().await;
}
