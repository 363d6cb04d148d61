//! `verify_external_identity` against simulated rooms over real SSH: a room whose
//! ExternalIdentity reports a valid but different certificate than the one roomkey
//! activated, and a room whose (clock says its) certificate has expired, both fail with
//! that reason; a correct room passes and reports the certificate's NotAfter.

mod support;

use roomkey::sim::FaultPlan;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_or_expired_identity_certificate_fails_verification() {
    // room-03's clock is 200 days ahead: its 90-day certificate has expired there.
    let lab = Lab::start(3, 64, |i| FaultPlan {
        clock_offset_secs: if i == 2 { 200 * 86_400 } else { 0 },
        ..FaultPlan::default()
    })
    .await;
    let flow = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let report = lab.path().join("flow.json");
    let (code, stdout, stderr) = lab
        .apply(&flow, &["--report", report.to_str().unwrap()])
        .await;
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let outcome = |doc: &serde_json::Value, name: &str| {
        doc["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["device"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert_eq!(outcome(&doc, "room-01")["status"], "changed", "{doc}");
    let expired = outcome(&doc, "room-03");
    assert_eq!(expired["status"], "failed", "{doc}");
    let reason = expired["reason"].as_str().unwrap();
    assert!(reason.contains("expired"), "{reason}");
    assert!(reason.contains("Status=Expired"), "{reason}");

    // room-02 gets a new certificate file for the same CN; the device still uses the old
    // one: verification names both fingerprints.
    let ca = roomkey::cert::TestCa::create("second lab CA").unwrap();
    issue_certificates(&ca, &lab.path().join("certs"), &["room-02".to_string()]);
    let new_fp = roomkey::cert::parse_cert_pem(
        &std::fs::read_to_string(lab.path().join("certs/room-02.pem")).unwrap(),
    )
    .unwrap()
    .fingerprint_sha1;
    let verify = playbook(
        lab.path(),
        "verify",
        TEST_POLICY,
        "  - verify_external_identity: {}\n",
    );
    let report2 = lab.path().join("verify.json");
    lab.apply(
        &verify,
        &[
            "--report",
            report2.to_str().unwrap(),
            "--limit",
            "room-01,room-02",
        ],
    )
    .await;
    let doc2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report2).unwrap()).unwrap();
    let ok = outcome(&doc2, "room-01");
    assert_eq!(ok["status"], "ok", "{doc2}");
    let steps = ok["steps"].to_string();
    assert!(steps.contains("valid until"), "NotAfter reported: {steps}");
    let different = outcome(&doc2, "room-02");
    assert_eq!(different["status"], "failed", "{doc2}");
    let reason = different["reason"].as_str().unwrap();
    assert!(
        reason.contains(&new_fp) && reason.contains("not") && reason.contains("activated"),
        "{reason}"
    );
    lab.fleet.unwrap().shutdown().await;
}
