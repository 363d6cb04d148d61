//! The engine end to end: a real `roomkey apply` process against simulated rooms over real
//! SSH — the full flow, faults, bad input (nothing sent), the plan, and resumption.

mod support;

use roomkey::sim::faults::Trigger;
use roomkey::sim::FaultPlan;
use support::{playbook, Lab, FULL_FLOW, TEST_POLICY};

fn assert_provisioned(snap: &roomkey::sim::DeviceSnapshot, name: &str) {
    let active: Vec<_> = snap
        .certificates
        .iter()
        .filter(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
        .collect();
    assert_eq!(active.len(), 1, "{name}: one active identity certificate");
    assert_eq!(active[0].common_name, support::identity(name));
    assert!(snap.e2ee_mode_on, "{name}: E2EE on");
    assert!(snap.secret.is_some(), "{name}: secret seeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_on_twenty_rooms_then_rerun_changes_nothing() {
    let lab = Lab::start(20, 41, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&pb, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (i, name) in lab.names.iter().enumerate() {
        let snap = lab.snapshot(name).await;
        assert_provisioned(&snap, name);
        assert_eq!(
            snap.secret.as_ref().map(|s| s.expose().to_string()),
            Some(lab.secrets[i].clone()),
            "{name} holds the vault's secret"
        );
        assert_eq!(snap.count("Services Add"), 1, "{name}: added once");
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["outcomes"].as_array().unwrap().len(), 20);
    assert!(doc["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["status"] == "changed"));

    // A rerun with --fresh reads every device and changes nothing.
    let (code, stdout, stderr) = lab.apply(&pb, &["--fresh"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ok=20"), "{stdout}");
    for name in &lab.names {
        assert_eq!(lab.snapshot(name).await.count("Services Add"), 1);
    }

    // No secret anywhere in what roomkey wrote or printed.
    let written = format!("{stdout}{stderr}{}", lab.state_files_text());
    for s in &lab.secrets {
        assert!(!written.contains(s.as_str()), "a ClientSecret leaked");
    }
    assert!(!written.contains(support::PASSWORD));
}

/// The devices `roomkey plan --limit LIMIT` selects, in plan order.
async fn planned_devices(lab: &Lab, pb: &std::path::Path, limit: &str) -> Vec<String> {
    let (code, stdout) = lab.plan_with(pb, &["--json", "--limit", limit]).await;
    assert_eq!(code, 0, "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["version"], 1);
    doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_faulty_room_gets_its_own_status_while_the_rest_complete() {
    // room-01 drops every Add, room-02 hangs on Show, room-03 refuses logins,
    // room-04's known host key changes before a second run, room-05 refuses Activate.
    let lab = Lab::start(8, 42, |i| match i {
        0 => FaultPlan {
            drop_before: vec![Trigger::pattern("Services Add").always()],
            ..Default::default()
        },
        1 => FaultPlan {
            hang: vec![Trigger::pattern("Services Show")],
            ..Default::default()
        },
        2 => FaultPlan {
            refuse_auth: true,
            ..Default::default()
        },
        4 => FaultPlan {
            error: vec![roomkey::sim::faults::ErrorRule {
                pattern: Some("Services Activate".into()),
                times: Some(0),
                reason: "Certificate activation failed".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        _ => FaultPlan::default(),
    })
    .await;
    let policy = "concurrency: 8, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 5s, retries: 1, retry_backoff: 50ms, host_key_policy: accept-new";
    let pb = playbook(lab.path(), "flow", policy, FULL_FLOW);
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&pb, &["--report", report.to_str().unwrap()])
        .await;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
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
    assert_eq!(status("room-02"), "timed-out");
    assert_eq!(status("room-03"), "auth-failed");
    assert_eq!(status("room-05"), "failed");
    for name in ["room-04", "room-06", "room-07", "room-08"] {
        assert_eq!(status(name), "changed", "{name}");
        assert_provisioned(&lab.snapshot(name).await, name);
    }
    assert!(stdout.contains("Certificate activation failed"), "{stdout}");

    // `--limit @failed` selects every room whose run failed, including those that never
    // reached a step (unreachable, refused login), and none that completed.
    assert_eq!(
        planned_devices(&lab, &pb, "@failed").await,
        ["room-01", "room-02", "room-03", "room-05"]
    );

    // Now room-04's recorded host key no longer matches what it presents (as after a
    // device swap or a man in the middle): it fails loudly, even with accept-new.
    let known_hosts = lab.path().join("known_hosts");
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    let devices = lab.fleet().devices();
    let host_of = |name: &str| {
        let d = devices.iter().find(|d| d.name == name).unwrap();
        format!("[{}]:{} ", d.addr.ip(), d.addr.port())
    };
    let (h4, h5) = (host_of("room-04"), host_of("room-05"));
    let key5 = text
        .lines()
        .find_map(|l| l.strip_prefix(h5.as_str()))
        .unwrap()
        .to_string();
    let swapped: String = text
        .lines()
        .map(|l| {
            if l.starts_with(h4.as_str()) {
                format!("{h4}{key5}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&known_hosts, swapped).unwrap();
    let (code, stdout, stderr) = lab.apply(&pb, &["--limit", "room-04", "--fresh"]).await;
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("host-key-changed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_sent() {
    let lab = Lab::start(3, 43, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    let write = |name: &str, text: &str| {
        let p = lab.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // An RSA key, a mismatched key and an expired certificate for room-01..03.
    let rsa = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=room-01.lab.example.com"])
        .arg("-keyout")
        .arg(lab.path().join("certs/room-01.key"))
        .arg("-out")
        .arg(lab.path().join("certs/room-01.pem"))
        .output()
        .unwrap();
    assert!(rsa.status.success(), "openssl: {rsa:?}");
    let ca = roomkey::cert::TestCa::create("other CA").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (expired, expired_key) = ca
        .issue(
            "room-03.lab.example.com",
            &[],
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap();
    std::fs::write(lab.path().join("certs/room-03.pem"), expired).unwrap();
    std::fs::write(lab.path().join("certs/room-03.key"), expired_key.expose()).unwrap();
    std::fs::copy(
        lab.path().join("certs/room-03.key"),
        lab.path().join("certs/room-02.key"),
    )
    .unwrap();

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "malformed.yaml",
            "devices: [unclosed\n".into(),
            vec!["malformed.yaml"],
        ),
        (
            "unknown-key.yaml",
            good.replace("defaults:", "defaults:\n  prot: 22"),
            vec!["unknown key `prot`: did you mean `port`?"],
        ),
        (
            "missing-cert.yaml",
            good.replace("certs/{name}.pem", "nowhere/{name}.pem"),
            vec!["devices.room-01.certificate", "nowhere/room-01.pem"],
        ),
        (
            "duplicate-address.yaml",
            format!(
                "{good}  room-99: {{ host: {} }}\n",
                lab.fleet().devices()[0].addr.ip()
            )
            .replace(
                &format!(
                    "room-99: {{ host: {} }}",
                    lab.fleet().devices()[0].addr.ip()
                ),
                &format!(
                    "room-99: {{ host: {}, port: {} }}",
                    lab.fleet().devices()[0].addr.ip(),
                    lab.fleet().devices()[0].addr.port()
                ),
            ),
            vec!["same address"],
        ),
        (
            "duplicate-name.yaml",
            format!("{good}  room-01: {{ host: 127.0.0.99 }}\n"),
            vec!["duplicate entry 'room-01'"],
        ),
        (
            "shared-cert.yaml",
            good.replace("certs/{name}.pem", "certs/room-01.pem")
                .replace("certs/{name}.key", "certs/room-01.key"),
            vec!["also used by device"],
        ),
        (
            "injection.yaml",
            good.replace(
                "identity: \"{name}.lab.example.com\"",
                "identity: \"x\\\" | xCommand SystemUnit Boot\"",
            ),
            vec!["devices.room-01.identity"],
        ),
    ];
    for (file, text, needles) in cases {
        let inv = write(file, &text);
        let out = lab
            .roomkey(&["apply", "-i", inv.to_str().unwrap(), pb.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(
            stderr.contains(file),
            "{file}: the message names the file:\n{stderr}"
        );
        for n in needles {
            assert!(stderr.contains(n), "{file}: expected {n:?} in:\n{stderr}");
        }
        assert!(stderr.contains("nothing was sent"), "{file}: {stderr}");
    }
    // The certificate problems of all three rooms are reported together.
    let out = lab
        .roomkey(&[
            "apply",
            "-i",
            lab.inventory.to_str().unwrap(),
            pb.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("devices.room-01.certificate"), "{stderr}");
    assert!(stderr.contains("RSA"), "{stderr}");
    // A key that does not match its certificate names the key file (issue 14).
    assert!(
        stderr.contains("devices.room-02.key") && stderr.contains("certs/room-02.key"),
        "{stderr}"
    );
    assert!(stderr.contains("devices.room-03.certificate"), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.logins, 0, "{name} was contacted");
        assert!(snap.commands.is_empty(), "{name} received commands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_connects_to_nothing_and_shows_no_secret() {
    let lab = Lab::start(2, 44, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("xCommand Security Certificates Services Add IsEncrypted: True"));
    assert!(stdout.contains("[redacted]"));
    assert!(stdout.contains("PLAINTEXT"), "plaintext seeding is flagged");
    assert!(!stdout.contains("eyJ"), "no JWE in a plan");
    for s in &lab.secrets {
        assert!(!stdout.contains(s.as_str()));
    }
    for name in &lab.names {
        assert_eq!(lab.snapshot(name).await.logins, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_run_then_rerun_completes_without_adding_twice() {
    use tokio::io::AsyncBufReadExt;
    // rooms 1-4 hang on their first Activate; rooms 5-7 apply their first Add and drop the
    // connection before replying; the rest behave.
    let lab = Lab::start(10, 45, |i| match i {
        0..=3 => FaultPlan {
            hang: vec![Trigger::pattern("Services Activate")],
            ..Default::default()
        },
        4..=6 => FaultPlan {
            drop_after: vec![Trigger::pattern("Services Add")],
            ..Default::default()
        },
        _ => FaultPlan::default(),
    })
    .await;
    let policy = "concurrency: 10, command_timeout: 60s, retries: 2, retry_backoff: 50ms, host_key_policy: accept-new";
    let pb = playbook(lab.path(), "flow", policy, FULL_FLOW);
    let inv = lab.inventory.to_str().unwrap().to_string();
    let mut child = lab
        .roomkey(&[
            "apply",
            "-i",
            &inv,
            pb.to_str().unwrap(),
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Follow the run's own event stream: kill it once the four hanging rooms are inside
    // their activation step and the six others are done.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut activating = std::collections::BTreeSet::new();
    let mut finished = std::collections::BTreeSet::new();
    while activating.len() < 4 || finished.len() < 6 {
        let line = lines.next_line().await.unwrap().expect("apply ended early");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let device = event["device"].as_str().unwrap_or_default().to_string();
        match event["event"].as_str() {
            Some("step-started")
                if event["step"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("activate_certificate-")) =>
            {
                activating.insert(device);
            }
            Some("device-finished") => {
                finished.insert(event["outcome"]["device"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let mut logins_before = Vec::new();
    for name in &lab.names {
        logins_before.push(lab.snapshot(name).await.logins);
    }

    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_provisioned(&snap, name);
        assert_eq!(
            snap.count("Services Add"),
            1,
            "{name}: certificate added once"
        );
    }
    // The rerun continues the interrupted run: the six rooms it had finished are not
    // contacted again.
    for (i, name) in lab.names.iter().enumerate().skip(4) {
        assert!(
            stderr.contains(&format!("{name}: ok — finished earlier in this run")),
            "{name}: {stderr}"
        );
        let logins = lab.snapshot(name).await.logins;
        assert_eq!(logins, logins_before[i], "{name} logged in again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mode_reads_only_and_reports_what_would_change() {
    let lab = Lab::start(2, 46, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let (code, stdout, stderr) = lab.apply(&pb, &["--check"]).await;
    // A fresh fleet: the check lists what the run would change and exits 0 (verification
    // would run after the changes, which the check does not make).
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("would send: xCommand Security Certificates Services Add"),
        "{stderr}"
    );
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert!(snap.secret.is_none(), "{name}: nothing seeded");
        assert!(snap.certificates.is_empty(), "{name}: nothing added");
        for c in &snap.commands {
            let l = c.line.to_ascii_lowercase();
            assert!(
                l.starts_with("echo")
                    || l.contains("show")
                    || l.starts_with("xstatus")
                    || (l.starts_with("xconfiguration") && !l.contains(": on")),
                "{name}: non-read-only command in check mode: {}",
                c.line
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_new_work_records_everything_and_the_rerun_resumes() {
    use tokio::io::AsyncBufReadExt;
    let lab = Lab::start(6, 47, |_| FaultPlan {
        latency_ms: 150,
        ..Default::default()
    })
    .await;
    let policy = "concurrency: 2, command_timeout: 20s, retries: 1, retry_backoff: 50ms, host_key_policy: accept-new";
    let pb = playbook(lab.path(), "flow", policy, FULL_FLOW);
    let inv = lab.inventory.to_str().unwrap().to_string();
    let mut child = lab
        .roomkey(&[
            "apply",
            "-i",
            &inv,
            pb.to_str().unwrap(),
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Interrupt as soon as the first room is done (others are mid-way).
    loop {
        let line = lines.next_line().await.unwrap().expect("apply ended early");
        if line.contains("\"event\":\"device-finished\"") {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut summary = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("\"event\":\"run-finished\"") {
            summary = Some(line);
        }
    }
    let code = child.wait().await.unwrap().code();
    assert_eq!(code, Some(4), "stopped early, resumable");
    let summary: serde_json::Value = serde_json::from_str(&summary.unwrap()).unwrap();
    assert!(summary["summary"]["stopped_early"]["reason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    // Nothing was left half-way inside a step: in-flight commands finished.
    for name in &lab.names {
        let steps =
            roomkey::journal::read_steps(&lab.path().join(".roomkey"), "flow", name).unwrap();
        assert!(
            steps
                .values()
                .all(|s| s.status != roomkey::journal::StepStatus::InFlight),
            "{name}: {steps:?}"
        );
    }
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        assert_provisioned(&lab.snapshot(name).await, name);
    }
}
