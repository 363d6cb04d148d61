//! Recovering rooms and owners' own secrets, end to end against simulated rooms over SSH,
//! under both firmware readings of a `populate` plaintext:
//!
//! - `roomkey secret forget-device NAME...` (and `-i INVENTORY --limit ...`): rooms that
//!   were factory-reset or replaced — the vault keeps their old secrets in history, marks
//!   them unseeded, and the next apply seeds them;
//! - `roomkey secret change --device NAME`: a room owner's phrase, from a prompt or
//!   `--phrase-stdin`, never the command line, with the rotation's guarantees.

#[macro_use]
mod support;

use std::process::Stdio;

use roomkey::sim::model::PopulateReading;
use roomkey::sim::FaultPlan;
use roomkey::vault::SecretState;
use support::{playbook, Lab, TEST_POLICY};
use tokio::io::AsyncWriteExt as _;

const SEED: &str = "  - populate_secret: { initial: true }\n";
const ROTATE: &str = "  - rotate_secret: {}\n  - populate_secret: {}\n";

async fn seeded_lab(n: usize, subnet: u8, reading: PopulateReading) -> Lab {
    let lab = Lab::start(n, subnet, move |_| FaultPlan {
        populate_reading: reading,
        ..Default::default()
    })
    .await;
    let pb = playbook(lab.path(), "seed", TEST_POLICY, SEED);
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "seeding failed:\n{stdout}\n{stderr}");
    lab
}

fn current_of(vault: &roomkey::vault::Vault, name: &str) -> String {
    vault.current_secret(name).unwrap().expose().to_string()
}

fn previous_of(vault: &roomkey::vault::Vault, name: &str) -> Vec<String> {
    vault
        .device(name)
        .unwrap()
        .previous
        .iter()
        .map(|r| r.secret.expose().to_string())
        .collect()
}

async fn populates(lab: &Lab, name: &str) -> usize {
    lab.snapshot(name).await.count("ClientSecret Populate")
}

/// Runs `roomkey <args>` in the lab: (exit code, stderr).
async fn run(lab: &Lab, args: &[&str]) -> (i32, String) {
    let out = lab.roomkey(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Two rooms are factory-reset behind the vault's back: the rotation names the recovery
/// command; `forget-device` (bulk) keeps their old secrets in history and marks them
/// unseeded; the next seeding brings them back with fresh secrets, and they rotate again.
async fn forget_device_recovers_factory_reset_rooms(reading: PopulateReading, subnet: u8) {
    let lab = seeded_lab(3, subnet, reading).await;
    let inv = lab.inventory.to_str().unwrap().to_string();
    // Factory reset: the rooms lose their secret (and certificates); the vault is not told.
    let sent_before = [
        populates(&lab, "room-01").await,
        populates(&lab, "room-02").await,
    ];
    for name in ["room-01", "room-02"] {
        lab.fleet().factory_reset(name).await.unwrap();
        assert!(lab.device_secret(name).await.is_none());
    }
    let old: Vec<String> = {
        let v = lab.read_vault();
        lab.names.iter().map(|n| current_of(&v, n)).collect()
    };

    // The rotation proves nothing can be sent and names the command that recovers.
    let rotate = playbook(lab.path(), "rotate", TEST_POLICY, ROTATE);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&rotate, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("holds no ClientSecret"), "{text}");
    assert!(
        text.contains("roomkey secret forget-device room-01"),
        "{text}"
    );
    assert!(
        text.contains("roomkey secret forget-device room-02"),
        "{text}"
    );
    for (i, name) in ["room-01", "room-02"].into_iter().enumerate() {
        assert_eq!(
            populates(&lab, name).await,
            sent_before[i],
            "{name}: nothing sent"
        );
        let d = lab.read_vault();
        assert!(
            d.device(name).unwrap().pending.is_none(),
            "{name}: nothing begun"
        );
    }

    let room3 = current_of(&lab.read_vault(), "room-03");

    // An unknown name: refused, nothing written.
    let vault_arg = lab.vault.to_str().unwrap().to_string();
    let (code, out) = run(
        &lab,
        &[
            "secret",
            "forget-device",
            "--vault",
            &vault_arg,
            "room-03",
            "nowhere-9",
        ],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nowhere-9"), "{out}");
    assert!(lab.read_vault().device("room-03").unwrap().seeded);

    // The bulk form over the inventory.
    let (code, out) = run(
        &lab,
        &[
            "secret",
            "forget-device",
            "-i",
            &inv,
            "--limit",
            "room-01,room-02",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("room-01: forgotten") && out.contains("room-02: forgotten"));
    let v = lab.read_vault();
    for (i, name) in ["room-01", "room-02"].into_iter().enumerate() {
        let d = v.device(name).unwrap();
        assert!(!d.seeded, "{name}: unseeded");
        assert_eq!(d.state, SecretState::Ok);
        assert!(previous_of(&v, name).contains(&old[i]), "{name}: old kept");
        assert_ne!(current_of(&v, name), old[i], "{name}: a fresh secret");
        assert!(!out.contains(&old[i]) && !out.contains(&current_of(&v, name)));
    }
    assert!(v.device("room-03").unwrap().seeded, "room-03 untouched");
    assert_eq!(current_of(&v, "room-03"), room3);

    // The next seeding seeds them; then they rotate like the others.
    let seed = playbook(lab.path(), "seed", TEST_POLICY, SEED);
    let (code, stdout, stderr) = lab.apply(&seed, &["--fresh"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, stdout, stderr) = lab.apply(&rotate, &["--fresh"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v = lab.read_vault();
    for name in &lab.names {
        assert_eq!(
            lab.device_secret(name).await.unwrap(),
            current_of(&v, name),
            "{name}"
        );
        assert!(v.device(name).unwrap().seeded);
    }
}
both_readings!(forget_device_recovers_factory_reset_rooms, 31);

/// `roomkey secret change` with the phrase piped in.
async fn change(lab: &Lab, device: &str, phrase: &str) -> (i32, String) {
    let inv = lab.inventory.to_str().unwrap().to_string();
    let mut child = lab
        .roomkey(&[
            "secret",
            "change",
            "-i",
            &inv,
            "--device",
            device,
            "--phrase-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{phrase}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A room owner changes their room's secret to a phrase of their own: it never appears on
/// a command line or in any output, a phrase a decoding firmware would misread is refused
/// before anything is sent, and the device ends holding exactly the phrase.
async fn an_owner_changes_their_rooms_secret(reading: PopulateReading, subnet: u8) {
    let lab = seeded_lab(2, subnet, reading).await;
    let before = lab.read_vault();
    let sent_before = populates(&lab, "room-01").await;

    // Base64 text is refused (a decoding firmware would hold other bytes); nothing sent.
    let (code, out) = change(&lab, "room-01", "c3dvcmRmaXNoZXM").await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("base64"), "{out}");
    assert!(!out.contains("c3dvcmRmaXNoZXM"), "{out}");
    assert_eq!(populates(&lab, "room-01").await, sent_before);
    // No terminal and no --phrase-stdin: refused; the phrase is never an argument.
    let inv = lab.inventory.to_str().unwrap().to_string();
    let (code, out) = run(
        &lab,
        &["secret", "change", "-i", &inv, "--device", "room-01"],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--phrase-stdin"), "{out}");

    let phrase = "blue kettle on the third floor";
    let (code, out) = change(&lab, "room-01", phrase).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("changed to the owner's phrase"), "{out}");
    assert!(!out.contains(phrase), "{out}");
    assert_eq!(lab.device_secret("room-01").await.unwrap(), phrase);
    let v = lab.read_vault();
    assert_eq!(current_of(&v, "room-01"), phrase);
    assert!(previous_of(&v, "room-01").contains(&current_of(&before, "room-01")));
    let d = v.device("room-01").unwrap();
    assert!(d.pending.is_none() && d.alternates.is_empty() && d.seeded);
    assert_eq!(
        d.firmware.as_ref().map(|f| f.reading.as_str()),
        Some(match reading {
            PopulateReading::Raw => "raw",
            PopulateReading::Base64url => "base64url",
        })
    );
    // The other room is untouched.
    assert_eq!(current_of(&v, "room-02"), current_of(&before, "room-02"));
    assert_eq!(
        lab.device_secret("room-02").await.unwrap(),
        current_of(&before, "room-02")
    );
    // The same phrase again: nothing to do.
    let (code, out) = change(&lab, "room-01", phrase).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("already its current secret"), "{out}");

    // A proof that changes nothing agrees, and sends no Populate.
    let sent = populates(&lab, "room-01").await;
    let prove = playbook(
        lab.path(),
        "prove",
        TEST_POLICY,
        "  - populate_secret: {}\n",
    );
    let (code, stdout, stderr) = lab.apply(&prove, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(populates(&lab, "room-01").await, sent);
    assert!(!format!("{stdout}{stderr}{}", lab.state_files_text()).contains(phrase));
}
both_readings!(an_owner_changes_their_rooms_secret, 32);
