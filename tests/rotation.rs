//! ClientSecret rotation end to end: real `roomkey apply` processes of
//! `playbooks/rotate-secret.yaml` against simulated rooms, interrupted at every stage
//! (a test-only failpoint abort, a kill -9 while the device hangs, dropped connections, a
//! timeout) and resumed by a plain rerun. After each resume every device must hold exactly
//! the secret the vault calls current — and have just accepted a JWE keyed from it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use roomkey::secret::Secret;
use roomkey::sim::faults::Trigger;
use roomkey::sim::FaultPlan;
use roomkey::vault::SecretState;
use support::{playbook, Lab, TEST_POLICY};

/// One device at a time, so a failpoint abort leaves exactly one device mid-rotation.
const SERIAL_POLICY: &str = "concurrency: 1, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 10s, retries: 2, retry_backoff: 100ms, host_key_policy: accept-new";

const SEED: &str = "  - populate_secret: { initial: true }\n";

/// The shipped rotation playbook with the lab's policy (timeouts, accept-new host keys).
fn rotate_playbook(lab: &Lab, policy: &str) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/rotate-secret.yaml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let steps = text
        .split_once("steps:\n")
        .map(|(_, s)| s.to_string())
        .unwrap();
    playbook(lab.path(), "rotate-secret", policy, &steps)
}

async fn seeded_lab(n: usize, subnet: u8) -> Lab {
    let lab = Lab::start(n, subnet, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "seed", TEST_POLICY, SEED);
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "seeding failed:\n{stdout}\n{stderr}");
    lab
}

/// Every device holds exactly the vault's current secret, nothing is pending, and the
/// device's last `Populate` — the playbook's no-op proof keyed from that secret — was
/// accepted. Returns the vault for further checks.
async fn assert_consistent(lab: &Lab) -> roomkey::vault::Vault {
    let vault = lab.read_vault();
    for name in &lab.names {
        let d = vault.device(name).unwrap();
        assert_eq!(d.state, SecretState::Ok, "{name}: vault state");
        assert!(d.pending.is_none(), "{name}: nothing pending");
        assert!(d.seeded, "{name}: seeded");
        let current = d.current.as_ref().unwrap().secret.expose().to_string();
        assert_eq!(
            lab.device_secret(name).await.as_deref(),
            Some(current.as_str()),
            "{name}: the device holds the vault's current secret"
        );
        let snap = lab.snapshot(name).await;
        let last = snap
            .commands
            .iter()
            .rev()
            .find(|c| c.line.contains("ClientSecret Populate"))
            .unwrap();
        assert_eq!(last.outcome, "ok", "{name}: the proof JWE was accepted");
    }
    vault
}

fn pending_of(vault: &roomkey::vault::Vault, name: &str) -> Option<String> {
    vault
        .device(name)
        .and_then(|d| d.pending.as_ref())
        .map(|r| r.secret.expose().to_string())
}

fn current_of(vault: &roomkey::vault::Vault, name: &str) -> String {
    vault
        .current_secret(name)
        .map(|s| s.expose().to_string())
        .unwrap()
}

fn previous_count(vault: &roomkey::vault::Vault, name: &str) -> usize {
    vault.device(name).map(|d| d.previous.len()).unwrap_or(0)
}

/// Runs the rotation playbook with a failpoint armed; the process must abort there.
async fn crash_at(lab: &Lab, pb: &Path, failpoint: &str) {
    let (code, stdout, stderr) = lab
        .apply_env(pb, &[], &[("ROOMKEY_FAILPOINT", failpoint)])
        .await;
    assert_eq!(code, -1, "killed by SIGABRT:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("failpoint {failpoint}")),
        "{stderr}"
    );
}

async fn rerun_ok(lab: &Lab, pb: &Path) -> (String, String) {
    let (code, stdout, stderr) = lab.apply(pb, &[]).await;
    assert_eq!(code, 0, "resume failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_pending_saved_before_send_resumes() {
    let lab = seeded_lab(3, 61).await;
    let before = lab.read_vault();
    let pb = rotate_playbook(&lab, SERIAL_POLICY);
    crash_at(&lab, &pb, "rotate-after-pending-saved").await;

    // The device that crashed the run has its new secret pending in the vault, and never
    // received it: it still holds the old one.
    let mid = lab.read_vault();
    let crashed: Vec<&String> = lab
        .names
        .iter()
        .filter(|n| pending_of(&mid, n).is_some())
        .collect();
    assert_eq!(crashed.len(), 1, "a pending secret was saved");
    for name in &crashed {
        assert_eq!(
            lab.device_secret(name).await.unwrap(),
            current_of(&before, name),
            "{name}: nothing was sent"
        );
        assert_eq!(current_of(&mid, name), current_of(&before, name));
    }

    rerun_ok(&lab, &pb).await;
    let after = assert_consistent(&lab).await;
    for name in &lab.names {
        assert_ne!(
            current_of(&after, name),
            current_of(&before, name),
            "{name}"
        );
        assert_eq!(previous_count(&after, name), 1, "{name}: the seeded secret");
    }
    // The resumed device got the secret that was pending, not a second new one.
    for name in &crashed {
        assert_eq!(current_of(&after, name), pending_of(&mid, name).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_the_device_has_not_replied_resumes() {
    let lab = seeded_lab(3, 62).await;
    let before = lab.read_vault();
    // room-01 never answers its first rotation (nor anything after it in that session).
    lab.fleet()
        .set_faults(
            "room-01",
            FaultPlan {
                hang: vec![Trigger::pattern("ClientSecret Populate")],
                ..Default::default()
            },
        )
        .unwrap();
    let policy = "concurrency: 8, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 60s, retries: 0, retry_backoff: 100ms, host_key_policy: accept-new";
    let pb = rotate_playbook(&lab, policy);
    let mut child = lab.apply_command(&pb, &[]).spawn().unwrap();

    // Wait for the observable event: the simulator logged the hanging Populate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let snap = lab.snapshot("room-01").await;
        if snap.commands.iter().any(|c| c.outcome == "hang") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room-01 never received its rotation"
        );
        if let Ok(status) = child.try_wait() {
            assert!(status.is_none(), "apply ended before the hang: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The command is on the wire and unanswered: the new secret is already pending.
    let mid = lab.read_vault();
    assert!(pending_of(&mid, "room-01").is_some(), "pending before send");
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    assert_eq!(
        lab.device_secret("room-01").await.unwrap(),
        current_of(&before, "room-01"),
        "the hung rotation did not land"
    );

    rerun_ok(&lab, &pb).await;
    let after = assert_consistent(&lab).await;
    assert_eq!(
        current_of(&after, "room-01"),
        pending_of(&mid, "room-01").unwrap(),
        "the pending secret was resent under the old one"
    );
    for name in &lab.names {
        assert_eq!(previous_count(&after, name), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_device_replied_before_the_vault_write_resumes() {
    let lab = seeded_lab(3, 63).await;
    let before = lab.read_vault();
    let pb = rotate_playbook(&lab, SERIAL_POLICY);
    crash_at(&lab, &pb, "rotate-after-reply").await;

    // The crashed device took the new secret; the vault still calls the old one current.
    let mid = lab.read_vault();
    let landed: Vec<&String> = lab
        .names
        .iter()
        .filter(|n| pending_of(&mid, n).is_some())
        .collect();
    assert_eq!(landed.len(), 1);
    for name in &landed {
        assert_eq!(current_of(&mid, name), current_of(&before, name));
        assert_eq!(
            lab.device_secret(name).await,
            pending_of(&mid, name),
            "{name}: the rotation landed"
        );
    }

    rerun_ok(&lab, &pb).await;
    let after = assert_consistent(&lab).await;
    for name in &landed {
        assert_eq!(current_of(&after, name), pending_of(&mid, name).unwrap());
        // The resend under the old secret was refused (decryption), then the no-op under
        // the new one proved it.
        let snap = lab.snapshot(name).await;
        assert!(
            snap.commands
                .iter()
                .any(|c| c.line.contains("ClientSecret Populate") && c.outcome == "error"),
            "{name}: the resend under the old secret was refused"
        );
    }
    for name in &lab.names {
        assert_eq!(previous_count(&after, name), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_vault_write_does_not_rotate_twice() {
    let lab = seeded_lab(2, 64).await;
    let pb = rotate_playbook(&lab, SERIAL_POLICY);
    crash_at(&lab, &pb, "rotate-after-promote").await;
    let mid = lab.read_vault();
    let (stdout, stderr) = rerun_ok(&lab, &pb).await;
    let after = assert_consistent(&lab).await;
    for name in &lab.names {
        assert_eq!(previous_count(&after, name), 1, "{name}: rotated once");
        assert_eq!(current_of(&after, name).len(), 43);
    }
    // At least the crashed device was promoted before the crash and kept its secret.
    assert!(lab
        .names
        .iter()
        .any(|n| current_of(&mid, n) == current_of(&after, n)));
    assert!(
        format!("{stdout}{stderr}").contains("an earlier attempt completed the rotation"),
        "{stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_a_timeout_resume() {
    let lab = seeded_lab(4, 65).await;
    let before = lab.read_vault();
    let set = |name: &str, plan: FaultPlan| lab.fleet().set_faults(name, plan).unwrap();
    // room-01 drops before applying, room-02 applies then drops, room-03 never answers.
    set(
        "room-01",
        FaultPlan {
            drop_before: vec![Trigger::pattern("ClientSecret Populate")],
            ..Default::default()
        },
    );
    set(
        "room-02",
        FaultPlan {
            drop_after: vec![Trigger::pattern("ClientSecret Populate")],
            ..Default::default()
        },
    );
    set(
        "room-03",
        FaultPlan {
            hang: vec![Trigger::pattern("ClientSecret Populate")],
            ..Default::default()
        },
    );
    let policy = "concurrency: 8, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 3s, retries: 0, retry_backoff: 100ms, host_key_policy: accept-new";
    let pb = rotate_playbook(&lab, policy);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&pb, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let status = |name: &str| -> String {
        doc["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["device"] == name)
            .map(|o| o["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("room-01"), "unreachable");
    assert_eq!(status("room-02"), "unreachable");
    assert_eq!(status("room-03"), "timed-out");
    assert_eq!(status("room-04"), "changed");

    let mid = lab.read_vault();
    for name in ["room-01", "room-02", "room-03"] {
        assert!(pending_of(&mid, name).is_some(), "{name}: still pending");
    }
    assert_eq!(
        lab.device_secret("room-01").await.unwrap(),
        current_of(&before, "room-01")
    );
    assert_eq!(
        lab.device_secret("room-02").await,
        pending_of(&mid, "room-02")
    );
    assert_eq!(
        lab.device_secret("room-03").await.unwrap(),
        current_of(&before, "room-03")
    );

    // That run reached every room, so it is over; the failed rooms are retried with
    // --limit @failed (a plain rerun would be a new run, rotating room-04 again).
    let (code, stdout, stderr) = lab.apply(&pb, &["--limit", "@failed"]).await;
    assert_eq!(code, 0, "resume failed:\n{stdout}\n{stderr}");
    let after = assert_consistent(&lab).await;
    for name in &lab.names {
        assert_eq!(previous_count(&after, name), 1, "{name}");
        if name != "room-04" {
            assert_eq!(current_of(&after, name), pending_of(&mid, name).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holding_neither_secret_is_secret_unknown_and_both_are_kept() {
    let lab = seeded_lab(2, 66).await;
    let held = lab.device_secret("room-01").await.unwrap();
    // The vault loses track: it believes room-01 holds another secret.
    let wrong = roomkey::vault::generate_secret();
    let wrong_text = wrong.expose().to_string();
    {
        let mut v =
            roomkey::vault::Vault::open(&lab.vault, &Secret::new(support::PASSPHRASE)).unwrap();
        v.set_current("room-01", wrong, true, Some("test")).unwrap();
        v.save().unwrap();
    }
    let pb = rotate_playbook(&lab, TEST_POLICY);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply_env(
            &pb,
            &["--report", report.to_str().unwrap()],
            &[("RUST_LOG", "trace")],
        )
        .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let report_text = std::fs::read_to_string(&report).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&report_text).unwrap();
    let room1 = doc["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["device"] == "room-01")
        .unwrap()
        .clone();
    assert_eq!(room1["status"], "secret-unknown");
    assert!(
        room1["reason"].as_str().unwrap().contains("factory-reset"),
        "{room1}"
    );
    let v = lab.read_vault();
    let d = v.device("room-01").unwrap();
    assert_eq!(d.state, SecretState::SecretUnknown);
    assert_eq!(current_of(&v, "room-01"), wrong_text, "current kept");
    let pending = pending_of(&v, "room-01").expect("pending kept");
    assert!(
        d.previous.iter().any(|r| r.secret.expose() == held),
        "the seeded secret is kept too"
    );
    assert_eq!(lab.device_secret("room-01").await.unwrap(), held);

    // A rerun does not start another rotation: it retries the same pending secret.
    let (code, _, _) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 2);
    assert_eq!(pending_of(&lab.read_vault(), "room-01").unwrap(), pending);

    // Recovery: the administrator records the secret the device really holds; the next
    // run proves it and rotates.
    {
        let mut v =
            roomkey::vault::Vault::open(&lab.vault, &Secret::new(support::PASSPHRASE)).unwrap();
        v.set_current(
            "room-01",
            Secret::new(held.clone()),
            true,
            Some("recovered"),
        )
        .unwrap();
        v.save().unwrap();
    }
    let (code, stdout, stderr) = lab.apply(&pb, &["--limit", "room-01", "--fresh"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_consistent(&lab).await;

    // No secret in what was printed, journalled or reported.
    let written = format!("{stdout}{stderr}{report_text}{}", lab.state_files_text());
    for s in [held.as_str(), wrong_text.as_str(), pending.as_str()] {
        assert!(!written.contains(s), "a secret leaked");
    }
}

/// Every secret text a test must never find outside the vault, including the base64url
/// form the plaintext first seeding sends.
fn forbidden(vault: &roomkey::vault::Vault, lab: &Lab) -> Vec<String> {
    let mut out = vec![
        support::PASSWORD.to_string(),
        support::PASSPHRASE.to_string(),
    ];
    out.extend(lab.secrets.iter().cloned());
    for name in vault.device_names() {
        let d = vault.device(name).unwrap();
        for r in d
            .current
            .iter()
            .chain(d.pending.iter())
            .chain(d.previous.iter())
        {
            out.push(r.secret.expose().to_string());
        }
    }
    let seeds: Vec<String> = out
        .iter()
        .map(|s| roomkey::jwe::initial_populate_value(&Secret::new(s.clone())))
        .collect();
    out.extend(seeds);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_rotate_twice_and_no_secret_leaks() {
    let lab = Lab::start(50, 67, |_| FaultPlan::default()).await;
    let trace = [("RUST_LOG", "trace")];
    let policy = "concurrency: 16, connect_timeout: 10s, auth_timeout: 10s, command_timeout: 60s, retries: 2, retry_backoff: 100ms, host_key_policy: accept-new";
    let seed = playbook(lab.path(), "seed", policy, SEED);
    let mut printed = String::new();
    let (code, stdout, stderr) = lab.apply_env(&seed, &[], &trace).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    printed.push_str(&stdout);
    printed.push_str(&stderr);

    let pb = rotate_playbook(&lab, policy);
    let mut reports = String::new();
    for (round, extra) in [(1, vec![]), (2, vec!["--fresh"])] {
        let report = lab.path().join(format!("report-{round}.json"));
        let mut args = vec!["--report", report.to_str().unwrap()];
        args.extend(extra);
        let (code, stdout, stderr) = lab.apply_env(&pb, &args, &trace).await;
        assert_eq!(code, 0, "round {round}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("changed=50"), "round {round}: {stdout}");
        printed.push_str(&stdout);
        printed.push_str(&stderr);
        reports.push_str(&std::fs::read_to_string(&report).unwrap());
    }
    let vault = assert_consistent(&lab).await;
    for (i, name) in lab.names.iter().enumerate() {
        let d = vault.device(name).unwrap();
        // Two rotations: the seeded secret and the first rotation's are now previous.
        assert_eq!(d.previous.len(), 2, "{name}");
        assert_eq!(d.previous[1].secret.expose(), lab.secrets[i], "{name}");
        assert!(d.previous.iter().all(|r| r.retired.is_some()));
        assert_ne!(d.previous[0].secret, d.current.as_ref().unwrap().secret);
    }

    // The plan shows no secret either.
    let out = lab
        .roomkey(&[
            "plan",
            "-i",
            lab.inventory.to_str().unwrap(),
            pb.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    printed.push_str(&String::from_utf8_lossy(&out.stdout));
    printed.push_str(&String::from_utf8_lossy(&out.stderr));

    assert!(printed.contains("TRACE"), "trace logging was on");
    let written = format!("{printed}{reports}{}", lab.state_files_text());
    for s in forbidden(&vault, &lab) {
        assert!(!written.contains(&s), "a secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseeded_device_is_not_rotated_and_nothing_is_saved() {
    let lab = Lab::start(1, 68, |_| FaultPlan::default()).await;
    let pb = rotate_playbook(&lab, TEST_POLICY);
    let (code, stdout, stderr) = lab.apply(&pb, &["--check"]).await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("not recorded as seeded"),
        "{stdout}{stderr}"
    );
    let v = lab.read_vault();
    assert!(pending_of(&v, "room-01").is_none());
    assert_eq!(current_of(&v, "room-01"), lab.secrets[0]);
    let snap = lab.snapshot("room-01").await;
    assert_eq!(snap.count("ClientSecret Populate"), 0);
    assert!(snap.secret.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_needs_confirmation_then_leaves_the_device_without_a_secret() {
    let lab = seeded_lab(2, 69).await;
    let inv = lab.inventory.to_str().unwrap().to_string();
    let reset = |yes: bool| {
        let mut args = vec!["secret", "reset", "-i", inv.as_str(), "--device", "room-01"];
        if yes {
            args.push("--yes");
        }
        lab.roomkey(&args).output()
    };
    // Without a terminal and without --yes: refused, nothing sent.
    let out = reset(false).await.unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let held = lab.device_secret("room-01").await.unwrap();
    assert_eq!(
        lab.snapshot("room-01").await.count("ClientSecret Populate"),
        1
    );

    let out = reset(true).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ClientSecret reset"), "{stderr}");
    assert!(!stderr.contains(&held));
    assert!(lab.device_secret("room-01").await.is_none(), "reset");
    assert!(lab.device_secret("room-02").await.is_some());
    let v = lab.read_vault();
    let d = v.device("room-01").unwrap();
    assert!(!d.seeded);
    assert_eq!(current_of(&v, "room-01"), held, "the secret is kept");

    // Seeding again brings the device back to the vault's current secret.
    let pb = playbook(lab.path(), "seed", TEST_POLICY, SEED);
    let (code, stdout, stderr) = lab.apply(&pb, &["--fresh"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(lab.device_secret("room-01").await.unwrap(), held);
    assert!(lab.read_vault().device("room-01").unwrap().seeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_first_seeding_resumes_without_a_second_plaintext() {
    // Crash after the device took the plaintext seeding, before the vault recorded it.
    let lab = Lab::start(2, 70, |_| FaultPlan::default()).await;
    let seed = playbook(lab.path(), "seed", SERIAL_POLICY, SEED);
    crash_at(&lab, &seed, "populate-after-reply").await;
    let seeded_on_device: Vec<String> = {
        let mut out = Vec::new();
        for name in &lab.names {
            if lab.device_secret(name).await.is_some() {
                out.push(name.clone());
            }
        }
        out
    };
    assert_eq!(seeded_on_device.len(), 1);
    let crashed = &seeded_on_device[0];
    assert!(!lab.read_vault().device(crashed).unwrap().seeded);
    rerun_ok(&lab, &seed).await;
    assert_consistent(&lab).await;
    // The resumed device was proven with a JWE; the plaintext went out only once.
    let snap = lab.snapshot(crashed).await;
    assert_eq!(
        snap.count("ClientSecret Populate"),
        2,
        "plaintext, then proof"
    );

    // A seeding dropped before it reached the device: the rerun's proof is refused (no
    // secret yet), so the plaintext seeding is sent again.
    let lab = Lab::start(1, 71, |_| FaultPlan {
        drop_before: vec![Trigger::pattern("ClientSecret Populate")],
        ..Default::default()
    })
    .await;
    let policy = "concurrency: 1, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 10s, retries: 0, retry_backoff: 100ms, host_key_policy: accept-new";
    let seed = playbook(lab.path(), "seed", policy, SEED);
    let (code, stdout, stderr) = lab.apply(&seed, &[]).await;
    assert_eq!(code, 3, "unreachable:\n{stdout}\n{stderr}");
    assert!(lab.device_secret("room-01").await.is_none());
    rerun_ok(&lab, &seed).await;
    assert_consistent(&lab).await;
    let outcomes: Vec<String> = lab
        .snapshot("room-01")
        .await
        .commands
        .iter()
        .filter(|c| c.line.contains("ClientSecret Populate"))
        .map(|c| c.outcome.clone())
        .collect();
    assert_eq!(outcomes, ["dropped-before", "error", "ok"]);
}
