//! The variant matrix: the shipped playbooks against a simulated room per device variant
//! (every alternative `docs/device-catalogue.md` lists as unknown, `sim::Variants`). Each
//! room either completes correctly or stops with a clear, specific reason — never a
//! timeout, never a wrong "ok", never a lost secret. The expected outcome of every
//! variant is asserted.

mod support;

use std::path::{Path, PathBuf};

use roomkey::sim::{FaultPlan, Variants};
use support::*;

/// The shipped playbook `name`, with the test policy (short timeouts, no retries, host keys
/// recorded on first use) instead of its own.
fn shipped(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("playbooks/{name}.yaml")),
    )
    .unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    // A generous command timeout: a shared, loaded machine makes the simulated rooms'
    // scrypt slow, and the matrix tests behaviour, not speed. `body_wait` is short, so the
    // multi-line Populate is settled long before any timeout.
    let policy: serde_yaml::Value = serde_yaml::from_str(
        "{ concurrency: 8, connect_timeout: 10s, auth_timeout: 10s, command_timeout: 30s, \
           retries: 0, retry_backoff: 100ms, host_key_policy: accept-new, body_wait: 1s }",
    )
    .unwrap();
    doc["policy"] = policy;
    let path = dir.join(format!("shipped-{name}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_playbooks_against_every_variant() {
    let mut variants: Vec<(&str, FaultPlan)> = vec![("default", FaultPlan::default())];
    variants.extend(Variants::alternatives().into_iter().map(|(k, v)| {
        (
            k,
            FaultPlan {
                variants: v,
                ..FaultPlan::default()
            },
        )
    }));
    // catalogue secret.populate-plaintext: issue 12's knob, part of the same matrix.
    variants.push((
        "populate_reading=base64url",
        FaultPlan {
            populate_reading: roomkey::sim::model::PopulateReading::Base64url,
            ..FaultPlan::default()
        },
    ));
    let plans: Vec<FaultPlan> = variants.iter().map(|(_, p)| p.clone()).collect();
    let lab = Lab::start(plans.len(), 61, |i| plans[i].clone()).await;
    let name_of = |key: &str| {
        let i = variants.iter().position(|(k, _)| *k == key).unwrap();
        lab.names[i].clone()
    };

    // 1. external-identity.yaml.
    let report = lab.path().join("identity.json");
    let (code, stdout, stderr) = lab
        .apply(
            &shipped(lab.path(), "external-identity"),
            &["--report", report.to_str().unwrap()],
        )
        .await;
    let got = report_outcomes(&report);
    let all = format!("exit {code}\n{stdout}\n{stderr}\n{got:#?}");
    for (key, _) in &variants {
        let name = name_of(key);
        let (status, _) = &got[&name];
        match *key {
            // catalogue command.populate-form: a device that reads Populate as a
            // multi-line command waits for a body after roomkey's one-line Populate; after
            // `body_wait` roomkey ends the body with `.`, the device refuses the empty body
            // (nothing seeded) and roomkey sends the same value as the body: seeded, and
            // the room completes — well before the command timeout.
            "populate_form=multi_line" => {
                assert_eq!(status, "changed", "{key}: {all}");
                let snap = lab.snapshot(&name).await;
                assert_eq!(
                    snap.secret.as_ref().map(|s| s.expose().to_string()),
                    lab.device_secret(&name).await,
                    "{key}: seeded with the vault's secret"
                );
                assert_eq!(
                    snap.count("ClientSecret Populate"),
                    2,
                    "{key}: one-line, then body"
                );
                assert_eq!(snap.count("Services Add"), 1, "{key}: went on");
            }
            _ => {
                assert_eq!(status, "changed", "{key}: {all}");
                let snap = lab.snapshot(&name).await;
                let cert = snap
                    .certificates
                    .iter()
                    .find(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
                    .unwrap_or_else(|| panic!("{key}: identity active: {all}"));
                assert_eq!(cert.common_name, identity(&name), "{key}");
                assert_eq!(
                    snap.secret.as_ref().map(|s| s.expose().to_string()),
                    lab.device_secret(&name).await,
                    "{key}"
                );
            }
        }
    }
    // Rerun: every completed room reads as done, nothing is added twice.
    let report2 = lab.path().join("identity-2.json");
    lab.apply(
        &shipped(lab.path(), "external-identity"),
        &["--report", report2.to_str().unwrap()],
    )
    .await;
    for (key, _) in &variants {
        let name = name_of(key);
        let snap = lab.snapshot(&name).await;
        assert!(snap.count("Services Add") <= 1, "{key}: added twice");
    }

    // 2. A failing xCommand (catalogue reply.command-error): with `OK` or `ERROR` first,
    // the device's reason reaches the report, not a timeout.
    let failing = playbook(
        lab.path(),
        "failing",
        TEST_POLICY,
        "  - xcommand: { command: \"Security Certificates Services Delete\", params: { Fingerprint: \"0000000000000000000000000000000000000000\" } }\n",
    );
    let report3 = lab.path().join("failing.json");
    let (code, stdout, stderr) = lab
        .apply(&failing, &["--report", report3.to_str().unwrap()])
        .await;
    assert!(report3.exists(), "exit {code}\n{stdout}\n{stderr}");
    let got = report_outcomes(&report3);
    for key in ["default", "command_error=error"] {
        let (status, reason) = &got[&name_of(key)];
        assert_eq!(status, "failed", "{key}: {got:#?}");
        assert!(
            reason.contains("No certificate with that fingerprint"),
            "{key}: {got:#?}"
        );
    }

    // 3. A configuration set (catalogue reply.config-set): a block or a bare `OK`.
    let toggle = playbook(
        lab.path(),
        "toggle",
        TEST_POLICY,
        concat!(
            "  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"Off\" }\n",
            "  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }\n",
        ),
    );
    let report5 = lab.path().join("toggle.json");
    let (code, stdout, stderr) = lab
        .apply(&toggle, &["--report", report5.to_str().unwrap()])
        .await;
    assert!(report5.exists(), "exit {code}\n{stdout}\n{stderr}");
    let got = report_outcomes(&report5);
    for (key, _) in &variants {
        let name = name_of(key);
        assert_eq!(got[&name].0, "changed", "{key}: {got:#?}");
        let snap = lab.snapshot(&name).await;
        assert!(snap.e2ee_mode_on, "{key}");
        assert_eq!(
            snap.count("Mode: [redacted]"),
            2,
            "{key}: each set sent once"
        );
    }

    // 4. rotate-secret.yaml (catalogue secret.populate-plaintext): whichever way the
    // device reads the populate plaintext, roomkey's vault names the secret it holds.
    let report4 = lab.path().join("rotate.json");
    lab.apply(
        &shipped(lab.path(), "rotate-secret"),
        &["--report", report4.to_str().unwrap()],
    )
    .await;
    let got = report_outcomes(&report4);
    let vault = lab.read_vault();
    for (key, _) in &variants {
        let name = name_of(key);
        let on_device = lab
            .snapshot(&name)
            .await
            .secret
            .map(|s| s.expose().to_string())
            .unwrap_or_else(|| panic!("{key}: the device lost its secret"));
        let known = vault.device(&name).map(|d| {
            d.current
                .iter()
                .chain(d.pending.iter())
                .chain(d.previous.iter())
                .map(|r| r.secret.expose().to_string())
                .collect::<Vec<_>>()
        });
        assert!(
            known.is_some_and(|k| k.contains(&on_device)),
            "{key}: the vault does not hold the device's secret ({:?})",
            got.get(&name)
        );
        let (status, reason) = &got[&name];
        match *key {
            "populate_reading=base64url" => assert!(
                status == "changed" || !reason.is_empty(),
                "{key}: {status} without a reason"
            ),
            // The shipped rotation stops the run (`any_errors_fatal`) when a device of the
            // canary's release reads the populate plaintext otherwise (the base64url
            // device above): the devices it had not reached yet are left interrupted —
            // safely, every secret named by the vault (checked above).
            _ => assert!(
                status == "changed" || status == "interrupted",
                "{key}: {got:#?}"
            ),
        }
    }
    lab.fleet.unwrap().shutdown().await;
}

/// The shipped SCEP playbook (scep-8021x.yaml, with the lab's SCEP server, CA and
/// challenge filled in) against a device that completes an enrolment at once, one that
/// completes it later (pending in between), and one that knows only the older renewal
/// command name (catalogue scep.completion, scep.commands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scep_playbook_against_scep_variants() {
    use roomkey::sim::variants::{ScepCompletion, ScepVerbs};
    let cases: Vec<(&str, Variants)> = vec![
        ("default", Variants::default()),
        (
            "scep_completion=delayed",
            Variants {
                scep_completion: ScepCompletion::Delayed,
                scep_delay_ms: Some(1_500),
                ..Variants::default()
            },
        ),
        (
            "scep_verbs=older",
            Variants {
                scep_verbs: ScepVerbs::Older,
                ..Variants::default()
            },
        ),
    ];
    let plans: Vec<FaultPlan> = cases
        .iter()
        .map(|(_, v)| FaultPlan {
            variants: v.clone(),
            ..FaultPlan::default()
        })
        .collect();
    let lab = Lab::start_with(
        cases.len(),
        62,
        |i| plans[i].clone(),
        |dir, opts| opts.scep_servers = vec![scep_server(dir)],
    )
    .await;
    lab.set_credentials(&[("scep-challenge", SCEP_CHALLENGE)]);
    let ca_pem = std::fs::read_to_string(lab.path().join("scep-ca.pem")).unwrap();
    let fp = roomkey::cert::parse_cert_pem(&ca_pem)
        .unwrap()
        .fingerprint_sha1;
    // The shipped playbook with the lab's values in place of its examples.
    let shipped_path = shipped(lab.path(), "scep-8021x");
    let text = std::fs::read_to_string(&shipped_path)
        .unwrap()
        .replace("certs/scep-ca.pem", "scep-ca.pem")
        .replace("http://scep.example.com/certsrv/mscep/mscep.dll", SCEP_URL)
        .replace("0123456789abcdef0123456789abcdef01234567", &fp);
    std::fs::write(&shipped_path, text).unwrap();
    let report = lab.path().join("scep.json");
    let (code, stdout, stderr) = lab
        .apply(&shipped_path, &["--report", report.to_str().unwrap()])
        .await;
    let got = report_outcomes(&report);
    let all = format!("exit {code}\n{stdout}\n{stderr}\n{got:#?}");
    for (i, (key, _)) in cases.iter().enumerate() {
        let name = &lab.names[i];
        assert_eq!(got[name].0, "changed", "{key}: {all}");
        let snap = lab.snapshot(name).await;
        let enrolled: Vec<_> = snap
            .certificates
            .iter()
            .filter(|c| c.common_name == format!("{name}.example.com"))
            .collect();
        assert_eq!(enrolled.len(), 1, "{key}: enrolled once: {all}");
        assert_eq!(enrolled[0].used_for, vec!["802.1X".to_string()], "{key}");
        assert_eq!(snap.renewal_profiles.len(), 1, "{key}: profile set");
        assert_eq!(
            snap.count("Enrollment SCEP Request"),
            1,
            "{key}: requested once"
        );
    }
    // The older device got the profile under the older name after the current one failed.
    let older = lab.snapshot(&lab.names[2]).await;
    assert_eq!(older.count("SCEP Profiles Set"), 1);
    assert_eq!(older.count("SCEP Renewal Request"), 1);
    let current = lab.snapshot(&lab.names[0]).await;
    assert_eq!(current.count("SCEP Renewal Request"), 0);
    lab.fleet.unwrap().shutdown().await;
}
