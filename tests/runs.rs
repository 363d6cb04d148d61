//! Desired state and runs, end to end: a real `roomkey apply` against simulated rooms.
//! "ok" means the device is right *now* — every rerun connects and reads; a device changed
//! behind roomkey's back is put right by a plain rerun; a run is one unit, so an
//! interrupted rotation continued with the same command rotates every device exactly once;
//! `apply --check` reports what would change and can send nothing that changes a device;
//! the journal survives damage without losing a record.

mod support;

use std::path::{Path, PathBuf};

use roomkey::sim::FaultPlan;
use support::{playbook, Lab, FULL_FLOW, TEST_POLICY};
use tokio::io::{AsyncBufReadExt, BufReader};

/// One device at a time, so an interruption after the first device leaves the rest untouched.
const SERIAL_POLICY: &str = "concurrency: 1, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 10s, retries: 2, retry_backoff: 100ms, host_key_policy: accept-new";

fn active_identity(snap: &roomkey::sim::DeviceSnapshot) -> Vec<String> {
    snap.certificates
        .iter()
        .filter(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
        .map(|c| c.fingerprint.clone())
        .collect()
}

async fn apply_ok(lab: &Lab, pb: &Path, extra: &[&str]) -> String {
    let (code, stdout, stderr) = lab.apply(pb, extra).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    format!("{stdout}{stderr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_reads_every_device_and_puts_right_what_changed_behind_its_back() {
    let lab = Lab::start(3, 150, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    apply_ok(&lab, &pb, &[]).await;

    // A plain rerun connects to every device and reads it: ok, nothing sent that changes.
    let mut reads_before = Vec::new();
    for name in &lab.names {
        reads_before.push(lab.snapshot(name).await.count("ExternalIdentity"));
    }
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("ok=3"), "{out}");
    for (name, before) in lab.names.iter().zip(&reads_before) {
        let snap = lab.snapshot(name).await;
        assert_eq!(
            snap.count("ExternalIdentity"),
            before + 1,
            "{name}: verified again"
        );
        assert_eq!(snap.count("Services Add"), 1, "{name}: nothing re-added");
    }

    // Certificates and activations removed behind roomkey's back (the secret stays): a
    // plain rerun re-provisions that room and says why.
    lab.fleet().remove_certificates("room-01").await.unwrap();
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("changed=1"), "{out}");
    assert!(out.contains("no longer matched"), "{out}");
    let snap = lab.snapshot("room-01").await;
    assert_eq!(active_identity(&snap).len(), 1, "room-01 re-provisioned");
    assert_eq!(snap.count("Services Add"), 2);
    for name in ["room-02", "room-03"] {
        assert_eq!(lab.snapshot(name).await.count("Services Add"), 1, "{name}");
    }

    // Reset to factory state (no secret): the room stops with a clear reason; the others
    // are fine and nothing is guessed.
    lab.fleet().factory_reset("room-02").await.unwrap();
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let out = format!("{stdout}{stderr}");
    let room2: Vec<&str> = out.lines().filter(|l| l.starts_with("room-02:")).collect();
    assert!(
        room2
            .iter()
            .any(|l| l.contains("secret") && l.contains("roomkey secret forget-device")),
        "room-02's reason names its secret and the recovery command: {room2:?}"
    );
    assert!(lab.snapshot("room-02").await.certificates.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_a_year_later_works_without_fresh() {
    use roomkey::cert::TestCa;
    let lab = Lab::start(2, 151, |_| FaultPlan::default()).await;
    let flow = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    apply_ok(&lab, &flow, &[]).await;
    let renew = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/renew-certificate.yaml");
    for year in ["2027", "2028"] {
        let mut before = Vec::new();
        for name in &lab.names {
            before.push(active_identity(&lab.snapshot(name).await));
        }
        let ca = TestCa::create(&format!("lab CA {year}")).unwrap();
        support::issue_certificates(&ca, &lab.path().join("certs"), &lab.names);
        let out = apply_ok(&lab, &renew, &[]).await;
        assert!(out.contains("changed=2"), "{year}: {out}");
        for (name, old) in lab.names.iter().zip(&before) {
            let snap = lab.snapshot(name).await;
            let now = active_identity(&snap);
            assert_eq!(now.len(), 1, "{year} {name}");
            assert_ne!(
                &now, old,
                "{year} {name}: the renewed certificate is active"
            );
            assert_eq!(
                snap.certificates.len(),
                1,
                "{year} {name}: the old one deleted"
            );
        }
        // The same renewal run again: every room ok, nothing sent that changes.
        let out = apply_ok(&lab, &renew, &[]).await;
        assert!(out.contains("ok=2"), "{year}: {out}");
    }
}

/// The rotation playbook with the given policy.
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
    let pb = playbook(
        lab.path(),
        "seed",
        TEST_POLICY,
        "  - populate_secret: { initial: true }\n",
    );
    apply_ok(&lab, &pb, &[]).await;
    lab
}

/// How many rotations each device went through (the vault's history: the seeded secret
/// plus one entry per rotation), and every device holds the vault's current secret.
async fn rotations(lab: &Lab) -> Vec<usize> {
    let vault = lab.read_vault();
    let mut out = Vec::new();
    for name in &lab.names {
        let d = vault.device(name).unwrap();
        assert!(d.pending.is_none(), "{name}: nothing pending");
        let current = d.current.as_ref().unwrap().secret.expose().to_string();
        assert_eq!(
            lab.device_secret(name).await.as_deref(),
            Some(current.as_str()),
            "{name}: holds the vault's current secret"
        );
        out.push(d.previous.len());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rotation_run_rotates_once() {
    let lab = seeded_lab(2, 152).await;
    let pb = rotate_playbook(&lab, TEST_POLICY);
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("changed=2"), "{out}");
    assert_eq!(rotations(&lab).await, [1, 1]);
    // Rotation is an action, not a state: the next run rotates again, no flag needed.
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("changed=2"), "{out}");
    assert_eq!(rotations(&lab).await, [2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_rotation_killed_after_the_first_device_continues_that_run() {
    let lab = seeded_lab(4, 153).await;
    let pb = rotate_playbook(&lab, SERIAL_POLICY);
    let (code, stdout, stderr) = lab
        .apply_env(
            &pb,
            &["--fresh"],
            &[("ROOMKEY_FAILPOINT", "device-finished")],
        )
        .await;
    assert_eq!(
        code, -1,
        "killed after the first device:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        rotations(&lab).await.iter().sum::<usize>(),
        1,
        "one device rotated before the kill"
    );
    // The same command again continues that run: the finished device is not redone.
    let out = apply_ok(&lab, &pb, &["--fresh"]).await;
    assert!(out.contains("continuing run"), "{out}");
    assert_eq!(rotations(&lab).await, [1, 1, 1, 1]);
    // That run is over now: the next invocation is a new run and rotates again.
    apply_ok(&lab, &pb, &["--fresh"]).await;
    assert_eq!(rotations(&lab).await, [2, 2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_rotation_stopped_by_ctrl_c_continues_that_run() {
    let lab = seeded_lab(4, 154).await;
    let pb = rotate_playbook(&lab, SERIAL_POLICY);
    let mut child = lab.apply_command(&pb, &["--fresh"]).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Ctrl-C once the first device has finished.
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("room-") && line.contains(": changed") && !line.contains(" — ") {
            break;
        }
    }
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let status = child.wait().await.unwrap();
    drain.await.unwrap();
    let code = status.code().unwrap_or(-1);
    assert!(
        code == 4 || code == 0,
        "stopped early (or finished before the signal landed): {code}"
    );
    let out = apply_ok(&lab, &pb, &["--fresh"]).await;
    if code == 4 {
        assert!(out.contains("continuing run"), "{out}");
    }
    assert_eq!(rotations(&lab).await, [1, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mode_reports_what_would_change_and_sends_nothing_that_changes() {
    let lab = Lab::start(2, 155, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    // On a fresh fleet: exit 0, every change listed, nothing changed, no journal written.
    let out = apply_ok(&lab, &pb, &["--check"]).await;
    assert!(out.contains("would send"), "{out}");
    assert!(out.contains("would run after the changes above"), "{out}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert!(snap.certificates.is_empty(), "{name}: nothing added");
        assert!(
            snap.commands
                .iter()
                .all(|c| !c.line.contains("Services Add") && !c.line.contains("Activate")),
            "{name}: {:?}",
            snap.commands
        );
    }
    assert!(
        !lab.path().join(".roomkey/journal").exists(),
        "--check writes no journal"
    );
    // Provisioned: all ok.
    apply_ok(&lab, &pb, &[]).await;
    let out = apply_ok(&lab, &pb, &["--check"]).await;
    assert!(out.contains("ok=2"), "{out}");

    // A command marked read_only that is not a read is refused by the session itself.
    let boot = playbook(
        lab.path(),
        "boot",
        TEST_POLICY,
        "  - xcommand: { command: SystemUnit Boot, read_only: true }\n",
    );
    let (code, stdout, stderr) = lab.apply(&boot, &["--check"]).await;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("refused to send `xCommand SystemUnit Boot`"),
        "{stdout}\n{stderr}"
    );
    for name in &lab.names {
        assert_eq!(lab.snapshot(name).await.boot_count, 0, "{name}: not booted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_command_found_in_flight_is_not_resent_without_consent() {
    let lab = Lab::start(1, 156, |_| FaultPlan::default()).await;
    let pb = playbook(
        lab.path(),
        "raw",
        TEST_POLICY,
        "  - xcommand: { command: SystemUnit Boot }\n",
    );
    // Killed with the command in flight: the run log's record (1st append) and the
    // step's write-ahead (2nd) are durable, the command is sent, and the process dies
    // writing its outcome (3rd).
    let (code, _, stderr) = lab
        .apply_env(&pb, &[], &[("ROOMKEY_FAILPOINT", "journal-torn-append@3")])
        .await;
    assert_eq!(code, -1, "{stderr}");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    let out = format!("{stdout}{stderr}");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("outcome unknown"), "{out}");
    let id = out
        .split("--confirm-resend ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = apply_ok(&lab, &pb, &["--confirm-resend", &id]).await;
    assert!(out.contains("changed=1"), "{out}");
}

/// The journal file of one device for a playbook.
fn journal_file(lab: &Lab, playbook: &str, device: &str) -> PathBuf {
    lab.path()
        .join(".roomkey/journal")
        .join(playbook)
        .join(format!("{device}.jsonl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_loses_no_record_and_the_run_goes_on() {
    let lab = Lab::start(1, 157, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    apply_ok(&lab, &pb, &[]).await;
    let path = journal_file(&lab, "flow", "room-01");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 4, "{text}");

    // A newer roomkey's field on every line is not damage.
    let newer: String = lines
        .iter()
        .map(|l| format!("{}\n", l.replacen('{', r#"{"zone":"emea","#, 1)))
        .collect();
    // (The checksum covers the bytes as written: re-sign the lines as a newer writer would.)
    let resigned = resign(&newer);
    std::fs::write(&path, &resigned).unwrap();
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(!out.contains("damaged"), "{out}");

    // A damaged line in the middle: the file is kept aside, every other record survives,
    // and the run reads the device and goes on.
    let text = std::fs::read_to_string(&path).unwrap();
    let count = text.lines().count();
    let middle = count / 2;
    let damaged: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == middle {
                format!("{}\n", l.replacen("\"status\"", "\"stat\"", 1))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&path, &damaged).unwrap();
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("damaged line"), "{out}");
    let kept = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(kept, "the damaged file is kept");
    let after = std::fs::read_to_string(&path).unwrap();
    for (i, line) in text.lines().enumerate() {
        if i != middle {
            assert!(after.contains(line), "record {i} kept");
        }
    }

    // Killed in the middle of an append: the torn line is dropped, the rerun completes.
    let (code, _, stderr) = lab
        .apply_env(&pb, &[], &[("ROOMKEY_FAILPOINT", "journal-torn-append@3")])
        .await;
    assert_eq!(code, -1, "{stderr}");
    let before = std::fs::read_to_string(&path).unwrap();
    assert!(!before.ends_with('\n'), "a torn last line");
    let out = apply_ok(&lab, &pb, &[]).await;
    assert!(out.contains("ok=1"), "{out}");
    let after = std::fs::read_to_string(&path).unwrap();
    let complete = before.rsplit_once('\n').map(|(head, _)| head).unwrap();
    assert!(after.starts_with(complete), "every complete record kept");
}

/// Re-signs journal lines (each `…,"sum":"…"}`) over their exact bytes, as a writer that
/// knows more fields would have signed them.
fn resign(text: &str) -> String {
    use sha2::{Digest, Sha256};
    text.lines()
        .map(|l| {
            let at = l.rfind(",\"sum\":\"").unwrap();
            let body = format!("{}}}", &l[..at]);
            let sum = hex::encode(&Sha256::digest(body.as_bytes())[..8]);
            format!("{},\"sum\":\"{sum}\"}}\n", &l[..at])
        })
        .collect()
}

/// No step's command text is spelled twice in the product: each lives in its step module
/// (the plan renders the same constructors). The simulator, the device's side, is apart.
#[test]
fn every_step_command_is_spelled_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("sim") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("tests.rs")
            {
                files.push(path);
            }
        }
    }
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            // Unit tests may quote commands to check what was built.
            let code = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_string();
            (f.clone(), code)
        })
        .collect();
    let commands = [
        "Security Certificates Services Show",
        "Security Certificates Services Add",
        "Security Certificates Services Delete",
        "Security ClientSecret Populate",
        "Security Certificates CA Show",
        "Security Certificates CA Add",
        "Security Certificates CA Delete",
        "Conference EndToEndEncryption ExternalIdentity",
        "SystemUnit Boot",
        "SystemUnit Uptime",
        "Enrollment SCEP Request",
        "Enrollment Profiles List",
        "Enrollment Profiles Delete",
    ];
    for command in commands {
        let places: Vec<String> = texts
            .iter()
            .flat_map(|(f, t)| {
                t.lines()
                    .filter(|l| l.contains(command) && l.contains('"'))
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(move |l| format!("{}: {}", f.display(), l.trim()))
            })
            .collect();
        assert!(
            places.len() <= 1,
            "`{command}` is spelled in {} places:\n{}",
            places.len(),
            places.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_in_use_is_deleted_only_with_force() {
    let lab = Lab::start(1, 158, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    apply_ok(&lab, &pb, &[]).await;
    let delete = playbook(
        lab.path(),
        "delete",
        TEST_POLICY,
        "  - delete_certificate: {}\n",
    );
    let (code, stdout, stderr) = lab.apply(&delete, &[]).await;
    let out = format!("{stdout}{stderr}");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is in use for WebexIdentity"), "{out}");
    assert_eq!(lab.snapshot("room-01").await.certificates.len(), 1);
    let forced = playbook(
        lab.path(),
        "delete-forced",
        TEST_POLICY,
        "  - delete_certificate: { force: true }\n",
    );
    let out = apply_ok(&lab, &forced, &[]).await;
    assert!(out.contains("changed=1"), "{out}");
    assert!(lab.snapshot("room-01").await.certificates.is_empty());
}
