//! A room's other certificates end to end (seed 001), with a real `roomkey apply` against
//! simulated rooms over real SSH: trusted CA bundles applied twice, SCEP enrolment with
//! 802.1X activation and a restart on ten rooms, the device's current limits refused before
//! connecting, a wrong
//! challenge failing only its room, a restart interrupted after the boot, service
//! certificates whose keys are password-protected (openssl-encrypted PKCS#8), and the
//! challenge and key passwords kept out of everything roomkey writes.

mod support;

use std::sync::Arc;

use roomkey::engine::events::DeviceStatus;
use roomkey::sim::FaultPlan;
use support::{
    openssl_encrypt_key, playbook, scep_server, Lab, PASSPHRASE, SCEP_CHALLENGE, SCEP_URL,
    TEST_POLICY,
};

fn ca_fingerprint(lab: &Lab) -> String {
    let pem = std::fs::read_to_string(lab.path().join("scep-ca.pem")).unwrap();
    roomkey::cert::parse_cert_pem(&pem)
        .unwrap()
        .fingerprint_sha1
}

/// `n` rooms that reach the lab's SCEP server, with its challenge stored in the vault as
/// `scep-challenge`; returns the lab and the SCEP CA's fingerprint.
async fn scep_lab(n: usize, subnet: u8) -> (Lab, String) {
    let lab = Lab::start_with(
        n,
        subnet,
        |_| FaultPlan::default(),
        |dir, opts| opts.scep_servers = vec![scep_server(dir)],
    )
    .await;
    lab.set_credentials(&[("scep-challenge", SCEP_CHALLENGE)]);
    let fp = ca_fingerprint(&lab);
    (lab, fp)
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The log shows the command carrying `param`, its value redacted (quoted as sent, or
/// escaped inside a structured log field).
fn assert_logged_redacted(log: &str, param: &str) {
    assert!(
        log.contains(&format!("{param}: \\\"[redacted]\\\""))
            || log.contains(&format!("{param}: \"[redacted]\"")),
        "the log shows {param}, redacted:\n{log}"
    );
}

/// Every device of the report at `path` changed.
fn assert_all_changed(path: &std::path::Path) {
    let doc = report(path);
    assert!(
        doc["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["status"] == "changed"),
        "{doc}"
    );
}

/// A certificate for `cn` from `ca`, valid from an hour ago for 90 days.
fn issue_90_days(ca: &roomkey::cert::TestCa, cn: &str) -> (String, roomkey::secret::Secret) {
    let now = time::OffsetDateTime::now_utc();
    ca.issue(
        cn,
        &[],
        now - time::Duration::hours(1),
        now + time::Duration::days(90),
    )
    .unwrap()
}

/// `roomkey apply` with a JSON report and logs at `level` (everything a secret could leak
/// into); returns (exit code, stdout, stderr, report path).
async fn apply_logged(
    lab: &Lab,
    pb: &std::path::Path,
    level: &str,
) -> (i32, String, String, std::path::PathBuf) {
    let report_path = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply_env(
            pb,
            &["--report", report_path.to_str().unwrap()],
            &[("RUST_LOG", level)],
        )
        .await;
    (code, stdout, stderr, report_path)
}

/// None of `secrets` is in `printed`, the lab's state files (journal, known_hosts) or
/// the report.
fn assert_nowhere(lab: &Lab, printed: &str, report_path: &std::path::Path, secrets: &[&str]) {
    let written = format!(
        "{printed}{}{}",
        lab.state_files_text(),
        std::fs::read_to_string(report_path).unwrap()
    );
    for secret in secrets {
        assert!(!written.contains(secret), "a secret leaked");
    }
}

fn scep_steps(fp: &str, challenge: &str, common_name: &str) -> String {
    format!(
        "  - add_ca_certificate: {{ file: scep-ca.pem }}
  - scep_enroll:
      url: \"{SCEP_URL}\"
      ca_fingerprint: {fp}
      challenge_password: \"{challenge}\"
      common_name: \"{common_name}\"
      organization_name: Lab
      san_dns: [\"{{name}}.lab.example.com\"]
      san_email: [\"av@lab.example.com\"]
  - activate_certificate: {{ purpose: 802.1X, certificate: enrolled }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_bundle_applied_twice_leaves_each_ca_once() {
    let lab = Lab::start(2, 80, |_| FaultPlan::default()).await;
    let a = roomkey::cert::TestCa::create("Corp Root CA").unwrap();
    let b = roomkey::cert::TestCa::create("Corp Issuing CA").unwrap();
    // The bundle lists one CA twice: it is still sent (and trusted) once.
    let bundle = format!("{}{}{}", a.cert_pem, b.cert_pem, a.cert_pem);
    std::fs::write(lab.path().join("bundle.pem"), bundle).unwrap();
    let pb = playbook(
        lab.path(),
        "trust",
        TEST_POLICY,
        "  - add_ca_certificate: { file: bundle.pem }\n",
    );
    for extra in [&[][..], &["--fresh"][..]] {
        let (code, stdout, stderr) = lab.apply(&pb, extra).await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    }
    let fa = roomkey::cert::parse_cert_pem(&a.cert_pem)
        .unwrap()
        .fingerprint_sha1;
    let fb = roomkey::cert::parse_cert_pem(&b.cert_pem)
        .unwrap()
        .fingerprint_sha1;
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        let fps: Vec<&str> = snap.cas.iter().map(|c| c.fingerprint.as_str()).collect();
        assert_eq!(fps, vec![fa.as_str(), fb.as_str()], "{name}");
        assert_eq!(snap.count("CA Add"), 1, "{name}: one CA Add in two runs");
        assert_eq!(snap.count("CA Show"), 2, "{name}: read before each change");
    }

    // Removing one by fingerprint leaves the other.
    let rm = playbook(
        lab.path(),
        "untrust",
        TEST_POLICY,
        &format!("  - remove_ca_certificate: {{ fingerprint: {fa} }}\n"),
    );
    let (code, stdout, stderr) = lab.apply(&rm, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        let fps: Vec<&str> = snap.cas.iter().map(|c| c.fingerprint.as_str()).collect();
        assert_eq!(fps, vec![fb.as_str()], "{name}");
    }
    // Removing by the bundle removes what is left of it; twice is harmless.
    let rm_all = playbook(
        lab.path(),
        "untrust-all",
        TEST_POLICY,
        "  - remove_ca_certificate: { file: bundle.pem }\n",
    );
    for extra in [&[][..], &["--fresh"][..]] {
        let (code, stdout, stderr) = lab.apply(&rm_all, extra).await;
        assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    }
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert!(snap.cas.is_empty(), "{name}");
        assert_eq!(snap.count("CA Delete"), 2, "{name}: one delete per CA");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scep_enrolment_on_ten_rooms_then_8021x_and_a_restart() {
    let (lab, fp) = scep_lab(10, 81).await;
    let steps = format!(
        "{}  - scep_renewal_profile: {{ action: set, ca_fingerprint: {fp}, url: \"{SCEP_URL}\" }}
  - restart: {{ timeout: 30s }}
  - scep_renewal_profile: {{ action: list }}
",
        scep_steps(&fp, "scep-challenge", "{name}.lab.example.com")
    );
    let pb = playbook(lab.path(), "scep", TEST_POLICY, &steps);
    let (code, stdout, stderr, report_path) = apply_logged(&lab, &pb, "debug").await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The run with debug logs, kept for the leak check at the end.
    let first_output = format!("{stdout}{stderr}");
    assert_logged_redacted(&first_output, "ChallengePassword");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        let cn = support::identity(name);
        let enrolled: Vec<_> = snap
            .certificates
            .iter()
            .filter(|c| c.common_name == cn)
            .collect();
        assert_eq!(enrolled.len(), 1, "{name}: one enrolled certificate");
        let cert = enrolled[0];
        assert!(cert.issuer.ends_with("/CN=lab SCEP CA"), "{}", cert.issuer);
        assert_eq!(cert.used_for, vec!["802.1X".to_string()], "{name}");
        assert_eq!((cert.not_after - cert.not_before).whole_days(), 365);
        assert_eq!(snap.boot_count, 1, "{name}: restarted once");
        assert_eq!(
            snap.renewal_profiles,
            vec![(fp.clone(), SCEP_URL.to_string())],
            "{name}: renewal profile set"
        );
        // The list after the restart ran on a new login: the device came back.
        assert_eq!(snap.logins, 2, "{name}: logged in again after the boot");
        let last = snap.commands.last().unwrap();
        assert!(last.line.contains("Profiles List"), "{name}: {last:?}");
    }
    assert_all_changed(&report_path);

    // A rerun: the journal has every step done, nothing is sent, nothing reboots.
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Without the restart, a fresh rerun reads the devices and enrols nothing again.
    let no_restart = playbook(
        lab.path(),
        "scep-again",
        TEST_POLICY,
        &scep_steps(&fp, "scep-challenge", "{name}.lab.example.com"),
    );
    let (code, stdout, stderr) = lab.apply(&no_restart, &["--fresh"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ok=10"), "{stdout}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.count("SCEP Request"), 1, "{name}: enrolled once");
        assert_eq!(snap.boot_count, 1, "{name}: not restarted again");
        assert_eq!(snap.cas.len(), 1, "{name}: CA trusted once");
    }

    // The challenge password is nowhere roomkey wrote or printed (logs at debug included).
    assert_nowhere(
        &lab,
        &format!("{stdout}{stderr}{first_output}"),
        &report_path,
        &[SCEP_CHALLENGE],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_65_character_common_name_is_refused_before_connecting() {
    // catalogue scep.limits: CommonName ≤ 64 (seed 001's 128 is the older text).
    let (lab, fp) = scep_lab(2, 82).await;
    // A literal value: refused when the playbook is read.
    let long = "c".repeat(65);
    let literal = playbook(
        lab.path(),
        "long",
        TEST_POLICY,
        &scep_steps(&fp, "scep-challenge", &long),
    );
    let (code, stdout, stderr) = lab.apply(&literal, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("long.yaml"), "{stderr}");
    assert!(stderr.contains("steps[2] (scep_enroll)"), "{stderr}");
    assert!(
        stderr.contains("`common_name` (CommonName) is 65 characters long; the device accepts at most 64: shorten it"),
        "{stderr}"
    );
    // A templated value that becomes too long for one device: refused in preflight,
    // naming the device, and no device is contacted.
    let templated = playbook(
        lab.path(),
        "templated",
        TEST_POLICY,
        &scep_steps(
            &fp,
            "scep-challenge",
            &format!("{{name}}{}", "c".repeat(58)),
        ),
    );
    let (code, stdout, stderr) = lab.apply(&templated, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("steps[2] (scep_enroll) for device room-01"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`common_name` (CommonName) is 65 characters long"),
        "{stderr}"
    );
    // Also the plan refuses it.
    let (code, _) = lab.plan(&literal).await;
    assert_ne!(code, 0);
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.logins, 0, "{name} was contacted");
        assert!(snap.commands.is_empty(), "{name} received commands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_challenge_fails_only_its_room_and_never_leaks() {
    let (lab, fp) = scep_lab(3, 83).await;
    // One-time challenges per room; room-02's is wrong.
    let wrong = "not-the-challenge-77d2";
    lab.set_credentials(&[
        ("scep-room-01", SCEP_CHALLENGE),
        ("scep-room-02", wrong),
        ("scep-room-03", SCEP_CHALLENGE),
    ]);
    let pb = playbook(
        lab.path(),
        "scep-wrong",
        TEST_POLICY,
        &scep_steps(&fp, "scep-{name}", "{name}.lab.example.com"),
    );

    let (code, plan_text) = lab.plan(&pb).await;
    assert_eq!(code, 0, "{plan_text}");
    assert!(
        plan_text.contains(&format!(
            "xCommand Security Certificates Services Enrollment SCEP Request URL: \"{SCEP_URL}\" Fingerprint: \"{fp}\" ChallengePassword: \"[redacted]\" CommonName: \"room-01.lab.example.com\""
        )),
        "{plan_text}"
    );
    assert!(
        plan_text.contains("xCommand Security Certificates CA Add"),
        "{plan_text}"
    );

    // --check reads and reports what would change; nothing changes.
    let (code, check_out, check_err) = lab.apply(&pb, &["--check"]).await;
    assert_eq!(code, 0, "stdout:\n{check_out}\nstderr:\n{check_err}");
    assert!(check_out.contains("changed=3"), "{check_out}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(
            snap.count("CA Add") + snap.count("SCEP Request"),
            0,
            "{name}"
        );
        assert!(
            snap.cas.is_empty() && snap.certificates.is_empty(),
            "{name}"
        );
    }

    let (code, stdout, stderr, report_path) = apply_logged(&lab, &pb, "debug").await;
    assert_ne!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let doc = report(&report_path);
    for o in doc["outcomes"].as_array().unwrap() {
        if o["device"] == "room-02" {
            assert_eq!(o["status"], "failed", "{o}");
            let reason = o["reason"].as_str().unwrap();
            assert!(reason.contains("wrong challenge password"), "{reason}");
            assert!(
                reason.contains("ChallengePassword: \"[redacted]\""),
                "{reason}"
            );
        } else {
            assert_eq!(o["status"], "changed", "{o}");
        }
    }
    let failed = lab.snapshot("room-02").await;
    assert!(failed.certificates.is_empty());
    for name in ["room-01", "room-03"] {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.certificates.len(), 1, "{name}");
        assert_eq!(snap.certificates[0].used_for, vec!["802.1X".to_string()]);
    }
    assert_nowhere(
        &lab,
        &format!("{plan_text}{check_out}{check_err}{stdout}{stderr}"),
        &report_path,
        &[SCEP_CHALLENGE, wrong],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_the_boot_does_not_restart_again() {
    let lab = Lab::start(2, 84, |_| FaultPlan::default()).await;
    let policy = TEST_POLICY.replace("retries: 2", "retries: 6");
    let pb = playbook(
        lab.path(),
        "restart",
        &policy,
        "  - restart: { timeout: 30s, if_changed: false }\n",
    );
    let (code, _stdout, stderr) = lab
        .apply_env(&pb, &[], &[("ROOMKEY_FAILPOINT", "restart-after-boot")])
        .await;
    assert_eq!(code, -1, "aborted by the failpoint: {stderr}");
    assert!(stderr.contains("failpoint restart-after-boot"), "{stderr}");
    // concurrency 8: both rooms may have been booted before the abort, or only one.
    let mut booted = Vec::new();
    for name in &lab.names {
        booted.push(lab.snapshot(name).await.boot_count);
    }
    assert!(booted.contains(&1), "{booted:?}");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for (i, name) in lab.names.iter().enumerate() {
        let snap = lab.snapshot(name).await;
        // A room booted before the abort is not booted again; one that was not, is now.
        assert_eq!(
            snap.boot_count, 1,
            "{name} (before the rerun: {})",
            booted[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_certificates_from_pem_files_activate_replace_and_delete() {
    let lab = Lab::start(2, 85, |_| FaultPlan::default()).await;
    // Two HTTPS certificates per room (not the identity ones), key in a separate file.
    let ca = roomkey::cert::TestCa::create("Corp HTTPS CA").unwrap();
    let mut fingerprints = std::collections::BTreeMap::new();
    for name in &lab.names {
        for which in ["old", "new"] {
            let (cert, key) = issue_90_days(&ca, &format!("{name}-{which}.https.example.com"));
            let certs = lab.path().join("certs");
            std::fs::write(certs.join(format!("{name}-{which}-https.pem")), &cert).unwrap();
            std::fs::write(
                certs.join(format!("{name}-{which}-https.key")),
                key.expose(),
            )
            .unwrap();
            let fp = roomkey::cert::parse_cert_pem(&cert)
                .unwrap()
                .fingerprint_sha1;
            fingerprints.insert(format!("{name}-{which}"), fp);
        }
    }
    let add = |which: &str| {
        format!(
            "  - add_service_certificate: {{ certificate: \"certs/{{name}}-{which}-https.pem\", key: \"certs/{{name}}-{which}-https.key\" }}
  - activate_certificate: {{ purpose: HTTPS, certificate: service }}
"
        )
    };
    let first = playbook(lab.path(), "https-old", TEST_POLICY, &add("old"));
    let (code, stdout, stderr) = lab.apply(&first, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The new one replaces the old one for HTTPS (one active per purpose), reported so.
    let second = playbook(lab.path(), "https-new", TEST_POLICY, &add("new"));
    let report_path = lab.path().join("report.json");
    let (code, stdout, stderr) = lab
        .apply(&second, &["--report", report_path.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let doc = report(&report_path);
    for o in doc["outcomes"].as_array().unwrap() {
        let device = o["device"].as_str().unwrap();
        let old = &fingerprints[&format!("{device}-old")];
        let note = o["steps"][1]["note"].as_str().unwrap_or_default();
        assert!(note.contains(&format!("replacing {old}")), "{o}");
    }
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.count("Services Add"), 2, "{name}");
        assert_eq!(
            snap.activations(&fingerprints[&format!("{name}-new")]),
            vec!["HTTPS".to_string()]
        );
        assert!(snap
            .activations(&fingerprints[&format!("{name}-old")])
            .is_empty());
    }
    // Deactivate and delete the new one by fingerprint; a rerun changes nothing.
    for name in &lab.names {
        let fp = &fingerprints[&format!("{name}-new")];
        let pb = playbook(
            lab.path(),
            &format!("https-remove-{name}"),
            TEST_POLICY,
            &format!(
                "  - deactivate_certificate: {{ purpose: HTTPS, certificate: {{ fingerprint: {fp} }} }}
  - delete_certificate: {{ purpose: HTTPS, certificate: {{ fingerprint: {fp} }} }}
"
            ),
        );
        for extra in [
            &["--limit", name.as_str()][..],
            &["--limit", name.as_str(), "--fresh"][..],
        ] {
            let (code, stdout, stderr) = lab.apply(&pb, extra).await;
            assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        }
        let snap = lab.snapshot(name).await;
        assert!(!snap.certificates.iter().any(|c| &c.fingerprint == fp));
        assert_eq!(snap.count("Services Delete"), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_shipped_certificate_playbooks_redacted() {
    let lab = Lab::start(2, 86, |_| FaultPlan::default()).await;
    lab.set_credentials(&[("scep-challenge", SCEP_CHALLENGE)]);
    let ca = roomkey::cert::TestCa::create("Corp Root CA").unwrap();
    std::fs::write(lab.path().join("certs/ca-bundle.pem"), &ca.cert_pem).unwrap();
    std::fs::write(lab.path().join("certs/scep-ca.pem"), &ca.cert_pem).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    for name in ["trust-ca.yaml", "scep-8021x.yaml"] {
        std::fs::copy(shipped.join(name), lab.path().join(name)).unwrap();
    }
    let (code, trust) = lab.plan(&lab.path().join("trust-ca.yaml")).await;
    assert_eq!(code, 0, "{trust}");
    assert!(
        trust.contains("xCommand Security Certificates CA Show"),
        "{trust}"
    );
    assert!(
        trust.contains("xCommand Security Certificates CA Add\n"),
        "{trust}"
    );
    assert!(trust.contains("-----BEGIN CERTIFICATE-----"), "{trust}");
    let (code, scep) = lab.plan(&lab.path().join("scep-8021x.yaml")).await;
    assert_eq!(code, 0, "{scep}");
    for want in [
        "ChallengePassword: \"[redacted]\" CommonName: \"room-01.example.com\" CountryName: \"US\"",
        "SanDns: \"room-01.example.com\"",
        "xCommand Security Certificates Services Activate Purpose: 802.1X Fingerprint: \"<certificate enrolled by scep_enroll>\"",
        "xCommand Security Certificates Services Enrollment SCEP Profiles Set Fingerprint:",
        "xStatus SystemUnit Uptime",
        "xCommand SystemUnit Boot",
        "xCommand Security Certificates Services Enrollment Profiles List",
        "vault credential 'scep-challenge'",
    ] {
        assert!(scep.contains(want), "missing {want:?} in:\n{scep}");
    }
    assert!(!scep.contains(SCEP_CHALLENGE));
    for name in &lab.names {
        assert_eq!(lab.snapshot(name).await.logins, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_interrupted_after_the_reply_is_not_repeated_without_a_trusted_ca() {
    let (lab, fp) = scep_lab(2, 87).await;
    // The SCEP CA is not trusted (no add_ca_certificate), and each room already holds a
    // certificate with the very CN the enrolment asks for (its identity certificate): only
    // the journal can tell which certificate the interrupted enrolment produced.
    let steps = scep_steps(&fp, "scep-challenge", "{name}.lab.example.com").replace(
        "  - add_ca_certificate: { file: scep-ca.pem }\n",
        "  - add_service_certificate: { certificate: \"certs/{name}.pem\", key: \"certs/{name}.key\" }\n",
    );
    let pb = playbook(lab.path(), "scep-untrusted", TEST_POLICY, &steps);
    let (code, _stdout, stderr) = lab
        .apply_env(&pb, &[], &[("ROOMKEY_FAILPOINT", "scep-after-reply")])
        .await;
    assert_eq!(code, -1, "aborted by the failpoint: {stderr}");
    assert!(stderr.contains("failpoint scep-after-reply"), "{stderr}");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.count("SCEP Request"), 1, "{name}: enrolled once");
        assert_eq!(snap.certificates.len(), 2, "{name}");
        let active: Vec<_> = snap
            .certificates
            .iter()
            .filter(|c| c.used_for.iter().any(|u| u == "802.1X"))
            .collect();
        assert_eq!(active.len(), 1, "{name}");
        assert!(
            active[0].issuer.ends_with("/CN=lab SCEP CA"),
            "{name}: the enrolled certificate is the active one, not the identity one"
        );
    }
}

/// The key password of each room (one vault credential per room, `key-<room>`).
fn key_password(name: &str) -> String {
    format!("key-password-{name}-3e8a")
}

/// Per room: an 802.1X certificate from its own CA in `certs/<room>-dot1x.pem`, its key
/// encrypted by openssl with the room's [`key_password`] in `certs/<room>-dot1x.key`, and
/// that password in the vault as `key-<room>`. Returns room → certificate fingerprint.
fn encrypted_service_certificates(lab: &Lab) -> std::collections::BTreeMap<String, String> {
    let ca = roomkey::cert::TestCa::create("Corp 802.1X CA").unwrap();
    let certs = lab.path().join("certs");
    let mut fingerprints = std::collections::BTreeMap::new();
    let mut creds = Vec::new();
    for name in &lab.names {
        let (cert, key) = issue_90_days(&ca, &format!("{name}.dot1x.example.com"));
        std::fs::write(certs.join(format!("{name}-dot1x.pem")), &cert).unwrap();
        let plain = lab.path().join(format!("{name}-plain.key"));
        std::fs::write(&plain, key.expose()).unwrap();
        openssl_encrypt_key(
            &plain,
            &certs.join(format!("{name}-dot1x.key")),
            &key_password(name),
        );
        std::fs::remove_file(&plain).unwrap();
        let fp = roomkey::cert::parse_cert_pem(&cert)
            .unwrap()
            .fingerprint_sha1;
        fingerprints.insert(name.clone(), fp);
        creds.push((format!("key-{name}"), key_password(name)));
    }
    let creds: Vec<(&str, &str)> = creds
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    lab.set_credentials(&creds);
    fingerprints
}

const ENCRYPTED_KEY_STEPS: &str = "  - add_service_certificate: { certificate: \"certs/{name}-dot1x.pem\", key: \"certs/{name}-dot1x.key\", private_key_password: \"key-{name}\" }
  - activate_certificate: { purpose: 802.1X, certificate: service }
  - activate_certificate: { purpose: HTTPS, certificate: service }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_key_with_a_password_is_opened_by_the_room_and_never_leaks() {
    let lab = Lab::start(2, 88, |_| FaultPlan::default()).await;
    let fingerprints = encrypted_service_certificates(&lab);
    let passwords: Vec<String> = lab.names.iter().map(|n| key_password(n)).collect();
    let pb = playbook(
        lab.path(),
        "dot1x-encrypted",
        TEST_POLICY,
        ENCRYPTED_KEY_STEPS,
    );

    // The plan shows the command with the password redacted and where it comes from.
    let (code, plan_text) = lab.plan(&pb).await;
    assert_eq!(code, 0, "{plan_text}");
    assert!(
        plan_text.contains(
            "xCommand Security Certificates Services Add PrivateKeyPassword: \"[redacted]\""
        ),
        "{plan_text}"
    );
    assert!(
        plan_text.contains("PrivateKeyPassword comes from vault credential 'key-{name}'"),
        "{plan_text}"
    );

    // Trace logs: everything that could carry the password is switched on.
    let (code, stdout, stderr, report_path) = apply_logged(&lab, &pb, "trace").await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let traced = format!("{stdout}{stderr}");
    assert_logged_redacted(&traced, "PrivateKeyPassword");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        let fp = &fingerprints[name];
        let cert = snap
            .certificates
            .iter()
            .find(|c| &c.fingerprint == fp)
            .unwrap_or_else(|| panic!("{name}: certificate {fp} not on the room"));
        assert_eq!(cert.common_name, format!("{name}.dot1x.example.com"));
        let mut used_for = cert.used_for.clone();
        used_for.sort();
        assert_eq!(used_for, vec!["802.1X".to_string(), "HTTPS".to_string()]);
        assert_eq!(snap.count("Services Add"), 1, "{name}");
        // The simulated room's own log redacts the password too.
        let add = snap
            .commands
            .iter()
            .find(|c| c.line.contains("Services Add"))
            .unwrap();
        assert!(
            add.line.contains("PrivateKeyPassword: [redacted]"),
            "{name}: {}",
            add.line
        );
    }
    assert_all_changed(&report_path);

    // A fresh rerun reads the rooms: the certificate is there, nothing is sent again.
    let (code, stdout, stderr) = lab.apply(&pb, &["--fresh"]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        assert_eq!(lab.snapshot(name).await.count("Services Add"), 1, "{name}");
    }

    let secrets: Vec<&str> = passwords.iter().map(String::as_str).collect();
    assert_nowhere(
        &lab,
        &format!("{plan_text}{traced}{stdout}{stderr}"),
        &report_path,
        &secrets,
    );
    // The rooms keep the key, decrypted, and never the password.
    let sim_state = lab.sim_state_text();
    assert!(sim_state.contains("-----BEGIN PRIVATE KEY-----"));
    for secret in &secrets {
        assert!(
            !sim_state.contains(secret),
            "the simulator stored a key password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_password_is_caught_in_preflight_and_refused_by_the_room() {
    let lab = Lab::start(2, 89, |_| FaultPlan::default()).await;
    let fingerprints = encrypted_service_certificates(&lab);

    // An encrypted key and no password named: refused before connecting.
    let unnamed = playbook(
        lab.path(),
        "no-password",
        TEST_POLICY,
        &ENCRYPTED_KEY_STEPS.replace(", private_key_password: \"key-{name}\"", ""),
    );
    let (code, stdout, stderr) = lab.apply(&unnamed, &[]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("no-password.yaml"), "{stderr}");
    for name in &lab.names {
        assert!(
            stderr.contains(&format!(
                "steps[1] (add_service_certificate) for device {name}"
            )),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("holds an encrypted private key"),
        "{stderr}"
    );
    assert!(stderr.contains("private_key_password"), "{stderr}");
    // `plan` reads no vault but refuses the same.
    let (code, _) = lab.plan(&unnamed).await;
    assert_ne!(code, 0);

    // room-02's vault password is wrong: preflight opens each key with its vault password,
    // so the run stops before anything is sent, naming room-02 only.
    let wrong = "not-the-key-password-51c7";
    lab.set_credentials(&[("key-room-02", wrong)]);
    let pb = playbook(
        lab.path(),
        "wrong-password",
        TEST_POLICY,
        ENCRYPTED_KEY_STEPS,
    );
    let (code, stdout, stderr) = lab.apply_env(&pb, &[], &[("RUST_LOG", "trace")]).await;
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("steps[1] (add_service_certificate) for device room-02"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("steps[1] (add_service_certificate) for device room-01"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the password in vault credential 'key-room-02': the password does not decrypt the private key"),
        "{stderr}"
    );
    let preflight_output = format!("{stdout}{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.logins, 0, "{name} was contacted");
    }

    // The room's own refusal, for a password that changes after preflight (preflight
    // passed with the right one): the engine runs in-process with a vault that now holds
    // the wrong password for room-02. Only room-02 fails, with the room's reason.
    lab.set_credentials(&[("key-room-02", &key_password("room-02"))]);
    let (playbook_loaded, devices, store) = lab.prepare(&pb);
    drop(store);
    lab.set_credentials(&[("key-room-02", wrong)]);
    let vault =
        roomkey::vault::Vault::open(&lab.vault, &roomkey::secret::Secret::new(PASSPHRASE)).unwrap();
    let secrets = Arc::new(roomkey::engine::secrets::VaultSecrets::new(vault));
    let (config, _stop) = lab.run_config(playbook_loaded, devices, secrets);
    let summary = roomkey::engine::run(config, Arc::new(roomkey::engine::events::Silent)).await;
    let mut seen = Vec::new();
    for o in &summary.outcomes {
        let snap = lab.snapshot(&o.device).await;
        let fp = &fingerprints[&o.device];
        if o.device == "room-02" {
            assert_eq!(o.status, DeviceStatus::Failed, "{o:?}");
            let reason = o.reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("the password does not decrypt the private key"),
                "{reason}"
            );
            assert!(
                reason.contains("PrivateKeyPassword: \"[redacted]\""),
                "{reason}"
            );
            assert!(!reason.contains(wrong), "{reason}");
            assert!(snap.certificates.iter().all(|c| &c.fingerprint != fp));
            assert_eq!(snap.count("Services Add"), 1, "sent once, refused");
        } else {
            assert_eq!(o.status, DeviceStatus::Changed, "{o:?}");
            assert!(snap.certificates.iter().any(|c| &c.fingerprint == fp));
        }
        seen.push(o.device.clone());
    }
    assert_eq!(seen.len(), 2);
    assert!(!format!("{summary:?}").contains(wrong));
    // Nowhere in what was printed or in the journal the in-process run wrote.
    let written = format!("{preflight_output}{}", lab.state_files_text());
    assert!(!written.contains(wrong), "a key password leaked");
}
