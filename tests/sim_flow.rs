//! The seed's external-identity flow end to end against the simulator over real SSH, with
//! JWEs from `roomkey::jwe` and certificates from `roomkey::cert::TestCa`, checking exact bytes.

mod support_raw;

use roomkey::cert::{DeviceIdentity, TestCa};
use roomkey::jwe::{self, Action, Enc};
use roomkey::secret::Secret;
use roomkey::sim::FaultPlan;
use support_raw::*;
use time::{Duration, OffsetDateTime};

fn identity(cn: &str) -> (TestCa, DeviceIdentity) {
    let ca = TestCa::create("Example Issuing CA").unwrap();
    let now = OffsetDateTime::now_utc();
    let (cert, key) = ca
        .issue(cn, &[], now - Duration::days(1), now + Duration::days(365))
        .unwrap();
    let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
    (ca, id)
}

fn seal(action: Action, secret: &Secret, plaintext: &[u8]) -> String {
    jwe::seal(action, Enc::A128Gcm, secret, plaintext).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_end_to_end() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let mut c = RawClient::connect(addr, USER, PASSWORD).await.unwrap();
    assert_eq!(
        c.read_banner().await,
        "Welcome to room-001\r\nCisco Codec Release RoomOS 11.14.1.5 a1b2c3d\r\n\
         SW Release Date: 2024-05-10\r\n*r Login successful\r\n\r\nOK\r\n\r\n"
    );
    assert_eq!(c.cmd("echo off", "OK\r\n").await, "echo off\r\nOK\r\n");

    let secret = Secret::new("ossifrage");
    let populate = format!(
        "xCommand Security ClientSecret Populate Secret: \"{}\"",
        jwe::initial_populate_value(&secret)
    );
    assert_eq!(
        c.cmd(&populate, "** end\r\n").await,
        "OK\r\n*r ClientSecretPopulateResult (status=OK): \r\n** end\r\n"
    );

    let (ca, id) = identity("meeting-room-1.example.com");
    let add_jwe = seal(Action::Add, &secret, id.add_payload().as_bytes());
    c.send(&format!(
        "xCommand Security Certificates Services Add IsEncrypted: True\n{add_jwe}\n.\n"
    ))
    .await;
    assert_eq!(
        c.read_until("** end\r\n").await,
        "OK\r\n*r ServicesAddResult (status=OK): \r\n** end\r\n"
    );

    let fp = id.fingerprint().to_string();
    let show = c
        .cmd(
            "xCommand Security Certificates Services Show | resultId=\"r7\"",
            "** end\r\n",
        )
        .await;
    assert!(
        show.starts_with("OK\r\n*r ServicesShowResult (status=OK): \r\n"),
        "{show}"
    );
    assert!(show.contains(&format!(
        "*r ServicesShowResult Details 1 Fingerprint: \"{fp}\"\r\n"
    )));
    assert!(show.contains(
        "*r ServicesShowResult Details 1 SubjectName: \"/CN=meeting-room-1.example.com\"\r\n"
    ));
    assert!(show.contains("*r ServicesShowResult Details 1 UsedFor: \"\"\r\n"));
    assert!(
        show.ends_with("** resultId: \"r7\"\r\n** end\r\n"),
        "{show}"
    );

    let act = seal(Action::Activate, &secret, fp.as_bytes());
    assert_eq!(
        c.cmd(
            &format!(
                "xCommand Security Certificates Services Activate Purpose: WebexIdentity Fingerprint: \"{act}\""
            ),
            "** end\r\n"
        )
        .await,
        "OK\r\n*r ServicesActivateResult (status=OK): \r\n** end\r\n"
    );

    // Trusting the issuing CA makes it appear as Certificate 2 of the chain.
    c.send(&format!(
        "xCommand Security Certificates CA Add\n{}.\n",
        ca.cert_pem
    ))
    .await;
    assert_eq!(
        c.read_until("** end\r\n").await,
        "OK\r\n*r CAAddResult (status=OK): \r\n** end\r\n"
    );

    let status = c
        .cmd(
            "xStatus Conference EndToEndEncryption ExternalIdentity",
            "\r\nOK\r\n",
        )
        .await;
    // catalogue status.external-identity: the current node form only.
    assert!(status.starts_with(
        "*s Conference EndToEndEncryption ExternalIdentity Verification: External\r\n\
         *s Conference EndToEndEncryption ExternalIdentity Identity: \"meeting-room-1.example.com\"\r\n\
         *s Conference EndToEndEncryption ExternalIdentity Status: Valid\r\n"
    ), "{status}");
    assert!(!status.contains("ExternalIdentity Valid:"), "{status}");
    assert!(!status.contains("CertInfo"), "{status}");
    assert!(status.contains(&format!(
        "*s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 Fingerprint: \"{fp}\"\r\n"
    )));
    assert!(status.contains(
        "*s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 Subject 1 Name: \"/CN=meeting-room-1.example.com\"\r\n"
    ));
    assert!(status.contains(
        "*s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 2 PrimaryName: \"Example Issuing CA\"\r\n"
    ), "{status}");
    assert!(status.ends_with("** end\r\n\r\nOK\r\n"));

    let single = c
        .cmd(
            "xstatus conference endtoendencryption externalidentity identity",
            "\r\nOK\r\n",
        )
        .await;
    assert_eq!(
        single,
        "*s Conference EndToEndEncryption ExternalIdentity Identity: \"meeting-room-1.example.com\"\r\n** end\r\n\r\nOK\r\n"
    );

    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.secret.as_ref().unwrap().expose(), "ossifrage");
    assert_eq!(snap.activations(&fp), vec!["WebexIdentity".to_string()]);
    assert_eq!(snap.count("Services Add"), 1);
    assert_eq!(snap.count("Services Activate Purpose: WebexIdentity"), 1);
    for cmd in &snap.commands {
        assert!(!cmd.line.contains("eyJ"), "JWE in log: {}", cmd.line);
        assert!(!cmd.line.contains(&jwe::initial_populate_value(&secret)));
    }

    // Deactivate (JWE) clears the identity.
    let deact = seal(Action::Deactivate, &secret, fp.as_bytes());
    let r = c
        .cmd(
            &format!(
                "xCommand Security Certificates Services Deactivate Purpose: WebexIdentity Fingerprint: \"{deact}\""
            ),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert!(snap.activations(&fp).is_empty());
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_jwe_is_refused_and_changes_nothing() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    let secret = Secret::new("right-secret");
    c.cmd(
        &format!(
            "xCommand Security ClientSecret Populate Secret: \"{}\"",
            jwe::initial_populate_value(&secret)
        ),
        "** end\r\n",
    )
    .await;
    let wrong = Secret::new("wrong-secret");
    let (_ca, id) = identity("room.example.com");
    let add_jwe = seal(Action::Add, &wrong, id.add_payload().as_bytes());
    c.send(&format!(
        "xCommand Security Certificates Services Add IsEncrypted: True\n{add_jwe}\n.\n"
    ))
    .await;
    assert_eq!(
        c.read_until("** end\r\n").await,
        "OK\r\n*r ServicesAddResult (status=Error): \r\n\
         *r ServicesAddResult Reason: \"Failed to decrypt the payload\"\r\n** end\r\n"
    );
    // A populate JWE under the wrong secret does not change the secret.
    let pop = seal(Action::Populate, &wrong, b"new-secret");
    let r = c
        .cmd(
            &format!("xCommand Security ClientSecret Populate Secret: \"{pop}\""),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=Error)"), "{r}");
    // Plaintext populate is refused once a secret is set.
    let r = c
        .cmd(
            &format!(
                "xCommand Security ClientSecret Populate Secret: \"{}\"",
                jwe::initial_populate_value(&wrong)
            ),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=Error)"), "{r}");
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.secret.unwrap().expose(), "right-secret");
    assert!(snap.certificates.is_empty());

    // Rotation with a JWE under the current secret works; an empty payload resets.
    let rot = seal(Action::Populate, &secret, b"rotated");
    let r = c
        .cmd(
            &format!("xCommand Security ClientSecret Populate Secret: \"{rot}\""),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    let rotated = Secret::new("rotated");
    let reset = seal(Action::Populate, &rotated, b"");
    let r = c
        .cmd(
            &format!("xCommand Security ClientSecret Populate Secret: \"{reset}\""),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    assert!(fleet.snapshot("room-001").await.unwrap().secret.is_none());
    fleet.shutdown().await;
}
