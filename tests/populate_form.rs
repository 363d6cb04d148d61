//! `ClientSecret Populate` as a one-line or a multi-line command (catalogue
//! `command.populate-form`: unknown). roomkey sends the one-line form; a device that waits
//! for a body sends nothing, so after `body_wait` roomkey ends the body with `.`, the
//! device refuses the empty body (nothing seeded) and roomkey sends the same value as the
//! body. A one-line device that is merely slower than `body_wait` answers the command and
//! then the `.` on its own; that answer is never taken for another command's. Each case
//! runs under both readings of the populate plaintext, seeding and then rotating, and no
//! secret reaches the output, the logs, the journal or the report.

mod support;

use base64::Engine as _;
use roomkey::sim::model::PopulateReading;
use roomkey::sim::variants::{PopulateForm, Variants};
use roomkey::sim::FaultPlan;
use support::*;

const POLICY: &str = "concurrency: 4, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 20s, retries: 0, retry_backoff: 100ms, host_key_policy: accept-new, body_wait: 200ms";

fn firmware(reading: PopulateReading, form: PopulateForm, latency_ms: u64) -> FaultPlan {
    FaultPlan {
        populate_reading: reading,
        latency_ms,
        variants: Variants {
            populate_form: form,
            ..Variants::default()
        },
        ..FaultPlan::default()
    }
}

/// Seeds and rotates one room with trace logs; checks the room completed, holds the
/// vault's current secret, and that no secret was written anywhere. Returns the room's
/// snapshot.
async fn seed_and_rotate(lab: &Lab) -> roomkey::sim::DeviceSnapshot {
    let steps = format!("{FULL_FLOW}  - rotate_secret: {{}}\n");
    let pb = playbook(lab.path(), "populate-form", POLICY, &steps);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply_env(
            &pb,
            &["--report", report.to_str().unwrap()],
            &[("RUST_LOG", "roomkey=trace")],
        )
        .await;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{doc}");
    let name = &lab.names[0];
    assert_eq!(doc["outcomes"][0]["status"], "changed", "{doc}");
    let snap = lab.snapshot(name).await;
    let on_device = snap
        .secret
        .as_ref()
        .map(|s| s.expose().to_string())
        .expect("the room holds a secret");
    let vault = lab.read_vault();
    let d = vault.device(name).unwrap();
    assert_eq!(
        d.current.as_ref().map(|r| r.secret.expose().to_string()),
        Some(on_device.clone()),
        "the vault names the secret the room holds"
    );
    assert!(d.pending.is_none(), "nothing left pending");
    assert_ne!(Some(&on_device), lab.secrets.first(), "rotated");
    // No secret, in either form, anywhere roomkey writes.
    let written = format!(
        "{stdout}{stderr}{}{}",
        lab.state_files_text(),
        std::fs::read_to_string(&report).unwrap()
    );
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    for s in lab.secrets.iter().chain(std::iter::once(&on_device)) {
        assert!(!written.contains(s.as_str()), "a secret leaked");
        assert!(!written.contains(&b64(s)), "a secret leaked (base64url)");
    }
    assert!(!written.contains("eyJhbGciOiJkaXIi"), "a JWE leaked");
    snap
}

/// A room whose `Populate` takes a body: seeded (one-line refused after the empty body,
/// then the body form), rotated in the form it learned, never timed out.
async fn a_multi_line_device_is_seeded_and_rotated(reading: PopulateReading, subnet: u8) {
    let lab = Lab::start(1, subnet, |_| firmware(reading, PopulateForm::MultiLine, 0)).await;
    let snap = seed_and_rotate(&lab).await;
    // The one-line form was sent once (refused after the empty body); every later
    // Populate of the session went as a body.
    assert_eq!(snap.count("Populate Secret"), 1, "{:#?}", snap.commands);
    assert!(
        snap.count("ClientSecret Populate") >= 2,
        "{:#?}",
        snap.commands
    );
    assert!(
        !snap.commands.iter().any(|c| c.outcome == "not-recognized"),
        "the `.` ended the body, nothing was answered on its own: {:#?}",
        snap.commands
    );
    lab.fleet.unwrap().shutdown().await;
}

/// A one-line room that answers every command later than `body_wait`: the `.` roomkey
/// sends is answered on its own (`Command not recognized.`) and taken for nothing; the
/// body form is never sent; every later step reads its own reply.
async fn a_slow_one_line_device_is_not_mistaken(reading: PopulateReading, subnet: u8) {
    let lab = Lab::start(1, subnet, |_| firmware(reading, PopulateForm::OneLine, 400)).await;
    let snap = seed_and_rotate(&lab).await;
    let populates = snap.count("ClientSecret Populate");
    assert!(populates >= 2, "seeded and rotated: {:#?}", snap.commands);
    assert_eq!(
        snap.count("Populate Secret"),
        populates,
        "only the one-line form: {:#?}",
        snap.commands
    );
    // The body wait passed: roomkey sent `.`, which the device answered on its own.
    assert!(
        snap.commands.iter().any(|c| c.outcome == "not-recognized"),
        "the `.` was sent and answered: {:#?}",
        snap.commands
    );
    let cert = snap
        .certificates
        .iter()
        .find(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
        .expect("identity active");
    assert_eq!(cert.common_name, identity(&lab.names[0]));
    lab.fleet.unwrap().shutdown().await;
}

mod multi_line {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw() {
        a_multi_line_device_is_seeded_and_rotated(PopulateReading::Raw, 220).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn base64url() {
        a_multi_line_device_is_seeded_and_rotated(PopulateReading::Base64url, 221).await
    }
}

mod slow_one_line {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw() {
        a_slow_one_line_device_is_not_mistaken(PopulateReading::Raw, 222).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn base64url() {
        a_slow_one_line_device_is_not_mistaken(PopulateReading::Base64url, 223).await
    }
}
