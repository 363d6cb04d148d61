//! When a SCEP enrolment counts (issue 13): only for a certificate that was not on the
//! room before the request and is valid — the requested CN, within its notBefore/notAfter.
//! Simulated SCEP servers whose CA issues an expired certificate, one not valid yet, or
//! one for a CN of its own make the room stop with that reason (and nothing activated); a
//! pending enrolment is waited for across a rerun, never requested twice. Real
//! `roomkey apply` against simulated rooms over SSH.

mod support;

use std::sync::Arc;

use roomkey::sim::scep::{ScepIssue, ScepServer, CA_ASSIGNED_CN};
use roomkey::sim::variants::{ScepCompletion, Variants};
use roomkey::sim::FaultPlan;
use support::*;

/// Each room reaches its own SCEP server (`.../<room>`), all signed by one lab CA; room i's
/// CA issues `issues[i]`. Returns the lab and the CA's fingerprint.
async fn lab_with(
    subnet: u8,
    issues: &[ScepIssue],
    plan: impl Fn(usize) -> FaultPlan,
) -> (Lab, String) {
    let ca = Arc::new(roomkey::cert::TestCa::create("lab SCEP CA").unwrap());
    let fp = roomkey::cert::parse_cert_pem(&ca.cert_pem)
        .unwrap()
        .fingerprint_sha1;
    let issues = issues.to_vec();
    let lab = Lab::start_with(issues.len(), subnet, plan, |dir, opts| {
        std::fs::write(dir.join("scep-ca.pem"), &ca.cert_pem).unwrap();
        opts.scep_servers = issues
            .iter()
            .enumerate()
            .map(|(i, issue)| {
                let mut s = ScepServer::new(
                    &format!("{SCEP_URL}/{}", room_name(i)),
                    ca.clone(),
                    roomkey::secret::Secret::new(SCEP_CHALLENGE),
                )
                .unwrap();
                s.issue = *issue;
                s
            })
            .collect();
    })
    .await;
    lab.set_credentials(&[("scep-challenge", SCEP_CHALLENGE)]);
    (lab, fp)
}

/// Trust the CA, enrol (with the current parameters: five SANs of a kind, state,
/// locality, organizational units), activate for 802.1X.
fn steps(fp: &str) -> String {
    format!(
        "  - add_ca_certificate: {{ file: scep-ca.pem }}
  - scep_enroll:
      url: \"{SCEP_URL}/{{name}}\"
      ca_fingerprint: {fp}
      challenge_password: scep-challenge
      common_name: \"{{name}}.lab.example.com\"
      country_name: NO
      state_or_province_name: Oslo
      locality_name: Oslo
      organization_name: Lab
      organizational_unit: [AV, Rooms]
      san_dns: [\"{{name}}.lab.example.com\", a.lab.example.com, b.lab.example.com, c.lab.example.com, d.lab.example.com]
      san_email: [av@lab.example.com]
  - activate_certificate: {{ purpose: 802.1X, certificate: enrolled }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_not_yet_valid_or_other_cn_enrolment_does_not_count() {
    let issues = [
        ScepIssue::Expired,
        ScepIssue::OtherCommonName,
        ScepIssue::NotYetValid,
        ScepIssue::Valid,
    ];
    let (lab, fp) = lab_with(224, &issues, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "scep", TEST_POLICY, &steps(&fp));
    let wants = [
        "expired on",
        &format!("issued for CN={CA_ASSIGNED_CN}, not the requested CN=room-02.lab.example.com"),
        "not valid before",
    ];
    for attempt in 1..=2 {
        let report = lab.path().join(format!("report-{attempt}.json"));
        let (code, stdout, stderr) = lab
            .apply(&pb, &["--report", report.to_str().unwrap()])
            .await;
        let got = report_outcomes(&report);
        let all = format!("attempt {attempt}: exit {code}\n{stdout}\n{stderr}\n{got:#?}");
        for (i, want) in wants.iter().enumerate() {
            let name = room_name(i);
            let (status, reason) = &got[&name];
            assert_eq!(status, "failed", "{name}: {all}");
            assert!(reason.contains("scep_enroll"), "{name}: {all}");
            assert!(reason.contains("does not count"), "{name}: {all}");
            assert!(reason.contains(want), "{name}: {want}: {all}");
            let snap = lab.snapshot(&name).await;
            // Each attempt requests once: the certificate an earlier one left does not
            // count (it was there before the request), so a rerun requests anew.
            assert_eq!(snap.count("SCEP Request"), attempt, "{name}: {all}");
            assert!(
                snap.certificates
                    .iter()
                    .all(|c| !c.used_for.iter().any(|u| u == "802.1X")),
                "{name}: nothing activated: {all}"
            );
        }
        // The control room enrolled once (five SanDns, units, state, locality accepted by
        // the device with the current parameter names) and a rerun finds it valid.
        let name = room_name(3);
        let (status, _) = &got[&name];
        let expected = if attempt == 1 { "changed" } else { "ok" };
        assert_eq!(status, expected, "{all}");
        let snap = lab.snapshot(&name).await;
        assert_eq!(snap.count("SCEP Request"), 1, "{all}");
        assert_eq!(snap.count("SanDns"), 1, "one request line: {all}");
        let enrolled = snap
            .certificates
            .iter()
            .find(|c| c.common_name == identity(&name))
            .expect("enrolled");
        assert_eq!(enrolled.used_for, vec!["802.1X".to_string()], "{all}");
    }
    lab.fleet.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_enrolment_is_waited_for_across_a_rerun_not_requested_twice() {
    // catalogue scep.completion: the certificate appears 8 s after the request is
    // accepted; the first run is killed right after the acceptance was journalled.
    let (lab, fp) = lab_with(225, &[ScepIssue::Valid], |_| FaultPlan {
        variants: Variants {
            scep_completion: ScepCompletion::Delayed,
            scep_delay_ms: Some(8_000),
            ..Variants::default()
        },
        ..FaultPlan::default()
    })
    .await;
    let pb = playbook(lab.path(), "scep-pending", TEST_POLICY, &steps(&fp));
    let (code, _stdout, stderr) = lab
        .apply_env(&pb, &[], &[("ROOMKEY_FAILPOINT", "scep-after-reply")])
        .await;
    assert_eq!(code, -1, "aborted by the failpoint: {stderr}");
    let name = room_name(0);
    let snap = lab.snapshot(&name).await;
    assert_eq!(snap.count("SCEP Request"), 1);
    assert!(
        !snap
            .certificates
            .iter()
            .any(|c| c.common_name == identity(&name)),
        "still pending when the rerun starts"
    );
    let report = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&pb, &["--report", report.to_str().unwrap()])
        .await;
    let got = report_outcomes(&report);
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{got:#?}");
    assert_eq!(got[&name].0, "changed", "{got:#?}");
    let snap = lab.snapshot(&name).await;
    assert_eq!(snap.count("SCEP Request"), 1, "requested once: {stderr}");
    let enrolled: Vec<_> = snap
        .certificates
        .iter()
        .filter(|c| c.common_name == identity(&name))
        .collect();
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].used_for, vec!["802.1X".to_string()]);
    lab.fleet.unwrap().shutdown().await;
}
