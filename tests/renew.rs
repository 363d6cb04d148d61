//! The shipped `playbooks/renew-certificate.yaml` on provisioned rooms: the renewed
//! certificate is added, activated and verified before the old one is deactivated and
//! deleted, and a rerun changes nothing.

mod support;

use std::path::Path;

use roomkey::cert::TestCa;
use roomkey::sim::FaultPlan;
use support::{issue_certificates, playbook, Lab, FULL_FLOW, TEST_POLICY};

fn identity_fingerprint(snap: &roomkey::sim::DeviceSnapshot) -> Vec<String> {
    snap.certificates
        .iter()
        .filter(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
        .map(|c| c.fingerprint.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_identity_certificate_and_removes_the_old_one() {
    let lab = Lab::start(3, 73, |_| FaultPlan::default()).await;
    let flow = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let (code, stdout, stderr) = lab.apply(&flow, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut old = Vec::new();
    for name in &lab.names {
        let fp = identity_fingerprint(&lab.snapshot(name).await);
        assert_eq!(fp.len(), 1, "{name}");
        old.push(fp[0].clone());
    }

    // The renewed certificates (new keys, from the CA's successor) replace the files.
    let ca = TestCa::create("lab CA 2027").unwrap();
    issue_certificates(&ca, &lab.path().join("certs"), &lab.names);

    let renew = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks/renew-certificate.yaml");
    let (code, stdout, stderr) = lab.apply(&renew, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (name, old_fp) in lab.names.iter().zip(&old) {
        let snap = lab.snapshot(name).await;
        let active = identity_fingerprint(&snap);
        assert_eq!(active.len(), 1, "{name}: one active identity certificate");
        assert_ne!(
            &active[0], old_fp,
            "{name}: the renewed certificate is active"
        );
        assert!(
            snap.certificates.iter().all(|c| &c.fingerprint != old_fp),
            "{name}: the old certificate is deleted"
        );
        assert_eq!(snap.certificates.len(), 1, "{name}");
        // Order on the device: the new certificate was verified before the old one went.
        let lines: Vec<&str> = snap.commands.iter().map(|c| c.line.as_str()).collect();
        let verified = lines
            .iter()
            .rposition(|l| l.contains("ExternalIdentity"))
            .unwrap();
        let deleted = lines
            .iter()
            .rposition(|l| l.contains("Services Delete"))
            .unwrap();
        assert!(
            verified < deleted,
            "{name}: verify before delete: {lines:?}"
        );
    }

    // A rerun finds everything done and sends nothing that changes a room.
    let adds_before: Vec<usize> = commands_matching(&lab, "Services Add").await;
    let (code, stdout, stderr) = lab.apply(&renew, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(commands_matching(&lab, "Services Add").await, adds_before);

    // The plan names the same steps the journal records: every room would be read again
    // and changed only where it differs.
    let (code, stdout) = lab.plan_with(&renew, &["--json"]).await;
    assert_eq!(code, 0, "{stdout}");
    let plans: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let plans = plans["devices"].as_array().unwrap();
    assert_eq!(plans.len(), lab.names.len());
    for plan in plans {
        for step in plan["steps"].as_array().unwrap() {
            assert_eq!(
                step["action"], "read the device; change only what differs",
                "{step}"
            );
        }
    }
}

async fn commands_matching(lab: &Lab, pattern: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for name in &lab.names {
        out.push(lab.snapshot(name).await.count(pattern));
    }
    out
}
