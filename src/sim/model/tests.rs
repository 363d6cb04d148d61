//! Unit tests of the device model, against fixtures (certificates made with rcgen).

use super::*;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn make_cert(cn: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn cmd(path: &str, params: &[(&str, &str)], body: Option<&str>) -> Request {
    Request {
        kind: Kind::Command,
        path: path.split(' ').map(String::from).collect(),
        params: params
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        body: body.map(|b| Zeroizing::new(b.to_string())),
    }
}

fn status_of(o: &Outcome) -> ResultStatus {
    match &o.response {
        Response::Result { status, .. } => *status,
        other => panic!("not a result: {other:?}"),
    }
}

#[test]
fn first_populate_is_plaintext_then_refused() {
    let mut d = Device::new("room-1");
    let o = d.handle(
        &cmd(
            "Security ClientSecret Populate",
            &[("Secret", "MDEyMzQ1Njc4OWFiY2RlZg")],
            None,
        ),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok);
    assert!(o.changed);
    assert_eq!(d.secret().unwrap().expose(), "0123456789abcdef");
    let o = d.handle(
        &cmd(
            "security clientsecret populate",
            &[("secret", "b3NzaWZyYWdl")],
            None,
        ),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Error);
    assert_eq!(d.secret().unwrap().expose(), "0123456789abcdef");
}

#[test]
fn populate_jwe_wrong_secret_changes_nothing_and_empty_resets() {
    let mut d = Device::new("r");
    d.handle(
        &cmd(
            "Security ClientSecret Populate",
            &[("Secret", "b3NzaWZyYWdl")],
            None,
        ),
        None,
        now(),
    );
    let req = cmd(
        "Security ClientSecret Populate",
        &[("Secret", "a.b.c.d.e")],
        None,
    );
    let job = d.jwe_to_open(&req).unwrap();
    assert_eq!(job.compact, "a.b.c.d.e");
    let o = d.handle(&req, Some(Err(())), now());
    assert_eq!(status_of(&o), ResultStatus::Error);
    assert!(!o.changed);
    assert_eq!(d.secret().unwrap().expose(), "ossifrage");
    // Wrong action is refused too.
    let o = d.handle(
        &req,
        Some(Ok(Decrypted {
            action: JweAction::Add,
            plaintext: Zeroizing::new(b"x".to_vec()),
            generation: job.generation,
        })),
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Error);
    let o = d.handle(
        &req,
        Some(Ok(Decrypted {
            action: JweAction::Populate,
            plaintext: Zeroizing::new(Vec::new()),
            generation: job.generation,
        })),
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok);
    assert!(d.secret().is_none());
}

#[test]
fn populate_reading_decides_what_a_populate_jwe_sets() {
    let populate = |d: &mut Device, plaintext: &[u8]| {
        let req = cmd(
            "Security ClientSecret Populate",
            &[("Secret", "a.b.c.d.e")],
            None,
        );
        let generation = d.jwe_to_open(&req).unwrap().generation;
        d.handle(
            &req,
            Some(Ok(Decrypted {
                action: JweAction::Populate,
                plaintext: Zeroizing::new(plaintext.to_vec()),
                generation,
            })),
            now(),
        )
    };
    let seeded = |reading| {
        let mut d = Device::new("r");
        d.populate_reading = reading;
        d.handle(
            &cmd(
                "Security ClientSecret Populate",
                &[("Secret", "b3NzaWZyYWdl")],
                None,
            ),
            None,
            now(),
        );
        d
    };
    // Raw: the plaintext is the phrase, base64url-looking or not.
    let mut d = seeded(PopulateReading::Raw);
    assert_eq!(
        status_of(&populate(&mut d, b"b3NzaWZyYWdl")),
        ResultStatus::Ok
    );
    assert_eq!(d.secret().unwrap().expose(), "b3NzaWZyYWdl");
    assert_eq!(
        status_of(&populate(&mut d, b"not~base64!")),
        ResultStatus::Ok
    );
    assert_eq!(d.secret().unwrap().expose(), "not~base64!");
    // Base64url: the plaintext is decoded; one that does not decode changes nothing.
    let mut d = seeded(PopulateReading::Base64url);
    assert_eq!(
        status_of(&populate(&mut d, b"c3dvcmRmaXNo")),
        ResultStatus::Ok
    );
    assert_eq!(d.secret().unwrap().expose(), "swordfish");
    let o = populate(&mut d, b"not~base64!");
    assert_eq!(status_of(&o), ResultStatus::Error);
    assert!(!o.changed);
    assert!(reason(&o).contains("base64url"), "{}", reason(&o));
    assert_eq!(d.secret().unwrap().expose(), "swordfish");
    // Five alphabet characters (a length no base64 text has) are refused too.
    assert_eq!(status_of(&populate(&mut d, b"abcde")), ResultStatus::Error);
    assert_eq!(d.secret().unwrap().expose(), "swordfish");
    // An empty plaintext resets the secret under either reading.
    assert_eq!(status_of(&populate(&mut d, b"")), ResultStatus::Ok);
    assert!(d.secret().is_none());
    // The knob is read from a `sim:` block.
    let plan: crate::sim::FaultPlan = serde_yaml::from_str("populate_reading: base64url").unwrap();
    assert_eq!(plan.populate_reading, PopulateReading::Base64url);
    assert_eq!(
        crate::sim::FaultPlan::default().populate_reading,
        PopulateReading::Raw
    );
    assert!(serde_yaml::from_str::<crate::sim::FaultPlan>("populate_reading: hex").is_err());
}

#[test]
fn add_show_activate_status_and_preferred_domain() {
    let mut d = Device::new("r");
    let pem = make_cert("meeting-room-1.example.com");
    let o = d.handle(
        &cmd("Security Certificates Services Add", &[], Some(&pem)),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
    // Added twice: still one entry.
    d.handle(
        &cmd("Security Certificates Services Add", &[], Some(&pem)),
        None,
        now(),
    );
    assert_eq!(d.certificates.len(), 1);
    let fp = d.certificates[0].meta.fingerprint.clone();
    assert_eq!(fp.len(), 40);
    assert_eq!(
        d.certificates[0].meta.subject,
        "/CN=meeting-room-1.example.com"
    );
    // Plain activation for HTTPS.
    let o = d.handle(
        &cmd(
            "Security Certificates Services Activate",
            &[("Purpose", "https"), ("Fingerprint", &fp)],
            None,
        ),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok);
    // WebexIdentity needs a JWE and a secret.
    let req = cmd(
        "Security Certificates Services Activate",
        &[("Purpose", "WebexIdentity"), ("Fingerprint", &fp)],
        None,
    );
    assert_eq!(status_of(&d.handle(&req, None, now())), ResultStatus::Error);
    d.handle(
        &cmd(
            "Security ClientSecret Populate",
            &[("Secret", "b3NzaWZyYWdl")],
            None,
        ),
        None,
        now(),
    );
    let req = cmd(
        "Security Certificates Services Activate",
        &[("Purpose", "WebexIdentity"), ("Fingerprint", "h..i.c.t")],
        None,
    );
    let job = d.jwe_to_open(&req).unwrap();
    let o = d.handle(
        &req,
        Some(Ok(Decrypted {
            action: JweAction::Activate,
            plaintext: Zeroizing::new(fp.clone().into_bytes()),
            generation: job.generation,
        })),
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok);
    let st = Request {
        kind: Kind::Status,
        path: vec![
            "conference".into(),
            "EndToEndEncryption".into(),
            "externalidentity".into(),
        ],
        params: vec![],
        body: None,
    };
    let Response::Status(leaves) = d.handle(&st, None, now()).response else {
        panic!()
    };
    assert!(leaves.contains(&Leaf {
        path: [
            "Conference",
            "EndToEndEncryption",
            "ExternalIdentity",
            "Identity"
        ]
        .map(String::from)
        .to_vec(),
        value: Value::Str("meeting-room-1.example.com".into())
    }));
    // catalogue status.external-identity: the current form only, never the seed's too.
    let last = |name: &str| {
        leaves
            .iter()
            .find(|l| l.path.get(3).map(String::as_str) == Some(name))
            .map(|l| l.value.clone())
    };
    assert_eq!(last("Status"), Some(Value::Literal("Valid".into())));
    assert_eq!(
        last("Verification"),
        Some(Value::Literal("External".into()))
    );
    assert_eq!(last("Valid"), None);
    assert_eq!(last("CertInfo"), None);
    assert!(leaves.iter().any(|l| l.path.ends_with(&[
        "CertificateChain".to_string(),
        "Certificate".to_string(),
        "1".to_string(),
        "Fingerprint".to_string()
    ])));
    // The seed's older form as a variant: Valid/Identity/CertInfo, nothing else.
    let mut seed = d.clone();
    seed.variants.external_identity = crate::sim::variants::IdentityForm::Seed;
    let Response::Status(old) = seed.handle(&st, None, now()).response else {
        panic!()
    };
    let names: Vec<&str> = old.iter().map(|l| l.path[3].as_str()).collect();
    assert_eq!(names, ["Valid", "Identity", "CertInfo"]);
    assert_eq!(old[0].value, Value::Literal("True".into()));
    // A device whose clock is outside the validity (rcgen: 1975..4096) says so.
    let Response::Status(late) = d
        .clone()
        .handle(&st, None, OffsetDateTime::UNIX_EPOCH)
        .response
    else {
        panic!()
    };
    assert!(late.contains(&Leaf {
        path: [
            "Conference",
            "EndToEndEncryption",
            "ExternalIdentity",
            "Status"
        ]
        .map(String::from)
        .to_vec(),
        value: Value::Literal("NotYetValid".into())
    }));
    // PreferredDomain refused while the external identity is active.
    let set = Request {
        kind: Kind::Configuration,
        path: ["Conference", "EndToEndEncryption", "Identity"]
            .map(String::from)
            .to_vec(),
        params: vec![("PreferredDomain".into(), "example.com".into())],
        body: None,
    };
    assert!(matches!(
        d.handle(&set, None, now()).response,
        Response::NodeError { .. }
    ));
    // Persistence round trip keeps everything.
    let p = d.to_persisted();
    let d2 = Device::from_persisted("r", &p).unwrap();
    assert_eq!(d2.certificates.len(), 1);
    assert!(d2.external_identity().is_some());
    assert_eq!(d2.secret().unwrap().expose(), "ossifrage");
}

#[test]
fn services_add_opens_an_encrypted_key_with_its_password_only() {
    let mut d = Device::new("r");
    let plain = make_cert("https.example.com");
    let at = plain.find("-----BEGIN PRIVATE KEY").unwrap();
    let (cert, key) = plain.split_at(at);
    let body = format!(
        "{cert}{}",
        crate::cert::encrypt_pkcs8_pem(key, "key pass 1", 2048)
    );
    let add =
        |params: &[(&str, &str)]| cmd("Security Certificates Services Add", params, Some(&body));
    // Missing or wrong password: refused with a reason, nothing stored.
    for (params, want) in [
        (&[][..], "PrivateKeyPassword is required"),
        (
            &[("PrivateKeyPassword", "key pass 2")][..],
            "the password does not decrypt the private key",
        ),
    ] {
        let o = d.handle(&add(params), None, now());
        assert_eq!(status_of(&o), ResultStatus::Error);
        assert!(reason(&o).contains(want), "{}", reason(&o));
        assert!(!reason(&o).contains("key pass"));
        assert!(!o.changed);
        assert!(d.certificates.is_empty());
    }
    let o = d.handle(&add(&[("PrivateKeyPassword", "key pass 1")]), None, now());
    assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
    assert!(o.changed);
    assert_eq!(d.certificates.len(), 1);
    // Stored decrypted (the device keeps the key, not the password), so it persists.
    let stored = d.certificates[0].key_pem.expose().to_string();
    assert!(
        stored.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{stored}"
    );
    let d2 = Device::from_persisted("r", &d.to_persisted()).unwrap();
    assert_eq!(d2.certificates.len(), 1);
    // A password with a plain key is ignored, as devices do.
    let mut d = Device::new("r");
    let o = d.handle(
        &cmd(
            "Security Certificates Services Add",
            &[("PrivateKeyPassword", "unused")],
            Some(&plain),
        ),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
    // The right password for a key that is not the certificate's: still a mismatch.
    let other = make_cert("other.example.com");
    let other_key = &other[other.find("-----BEGIN PRIVATE KEY").unwrap()..];
    let mismatched = format!(
        "{cert}{}",
        crate::cert::encrypt_pkcs8_pem(other_key, "key pass 1", 2048)
    );
    assert_eq!(
        parse_cert_and_key_with_password(&mismatched, Some("key pass 1")).unwrap_err(),
        CertError::KeyMismatch
    );
    // Legacy PEM encryption is named as such, whatever the password.
    let legacy = format!(
        "{cert}-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
         -----END EC PRIVATE KEY-----\n"
    );
    let e = parse_cert_and_key_with_password(&legacy, Some("key pass 1")).unwrap_err();
    assert!(e.to_string().contains("legacy PEM encryption"), "{e}");
}

#[test]
fn key_mismatch_and_non_p256_refused() {
    let a = make_cert("a");
    let b = make_cert("b");
    let cert_a = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
    let key_b = &b[b.find("-----BEGIN PRIVATE KEY").unwrap()..];
    assert_eq!(
        parse_cert_and_key(&format!("{cert_a}{key_b}")).unwrap_err(),
        CertError::KeyMismatch
    );
    assert_eq!(parse_cert_and_key(cert_a).unwrap_err(), CertError::NoKey);
}

#[test]
fn ca_add_keeps_duplicates_and_time_format() {
    let mut d = Device::new("r");
    let a = make_cert("ca");
    let cert = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
    let bundle = format!("{cert}{cert}");
    d.handle(
        &cmd("Security Certificates CA Add", &[], Some(&bundle)),
        None,
        now(),
    );
    d.handle(
        &cmd("Security Certificates CA Add", &[], Some(cert)),
        None,
        now(),
    );
    assert_eq!(d.cas.len(), 3);
    let t = time::macros::datetime!(2026-08-08 03:04:26 UTC);
    assert_eq!(device_time(t), "Aug 08 03:04:26 2026 GMT");
}

#[test]
fn unknown_command_and_status_subtree() {
    let mut d = Device::new("r");
    let o = d.handle(&cmd("Foo Bar", &[], None), None, now());
    assert_eq!(status_of(&o), ResultStatus::Error);
    let st = Request {
        kind: Kind::Status,
        path: vec!["Nope".into()],
        params: vec![],
        body: None,
    };
    assert!(matches!(
        d.handle(&st, None, now()).response,
        Response::NodeError { .. }
    ));
}

fn reason(o: &Outcome) -> String {
    match &o.response {
        Response::Result { fields, .. } => fields
            .iter()
            .find(|l| l.path == ["Reason"])
            .map(|l| format!("{:?}", l.value))
            .unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

#[test]
fn scep_enrolment_profiles_and_uptime() {
    use std::sync::Arc;
    let ca = Arc::new(crate::cert::TestCa::create("sim SCEP CA").unwrap());
    let server = crate::sim::scep::ScepServer::new(
        "http://scep.example.com/certsrv/mscep/mscep.dll",
        ca,
        Secret::new("challenge-1"),
    )
    .unwrap();
    let fp = server.ca_fingerprint.clone();
    let mut d = Device::new("r");
    d.scep_servers = vec![server];
    let enrol = |challenge: &str, ca_fp: &str| {
        cmd(
            "Security Certificates Services Enrollment SCEP Request",
            &[
                ("URL", "http://scep.example.com/certsrv/mscep/mscep.dll"),
                ("Fingerprint", ca_fp),
                ("ChallengePassword", challenge),
                ("CommonName", "r.example.com"),
                ("OrganizationName", "Example"),
                ("SanDns", "r.example.com"),
            ],
            None,
        )
    };
    let o = d.handle(&enrol("wrong", &fp), None, now());
    assert_eq!(status_of(&o), ResultStatus::Error);
    assert!(reason(&o).contains("challenge"), "{o:?}");
    let o = d.handle(&enrol("challenge-1", &"0".repeat(40)), None, now());
    assert!(reason(&o).contains("fingerprint"), "{o:?}");
    assert!(d.certificates.is_empty());
    let o = d.handle(&enrol("challenge-1", &fp), None, now());
    assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
    assert_eq!(d.certificates.len(), 1);
    let meta = &d.certificates[0].meta;
    assert_eq!(meta.common_name, "r.example.com");
    assert_eq!(meta.subject, "/O=Example/CN=r.example.com");
    assert!(meta.issuer.ends_with("/CN=sim SCEP CA"), "{}", meta.issuer);
    assert_eq!((meta.not_after - meta.not_before).whole_days(), 365);
    // A 129-character value is a parameter error.
    let long = "x".repeat(129);
    let o = d.handle(
        &cmd(
            "Security Certificates Services Enrollment SCEP Request",
            &[("URL", "u"), ("Fingerprint", &fp), ("CommonName", &long)],
            None,
        ),
        None,
        now(),
    );
    assert_eq!(status_of(&o), ResultStatus::ParameterError);

    // Renewal profiles: set (twice = one), list, delete. A current device knows only the
    // current name, an older one only the older name (catalogue scep.commands).
    let older_set = cmd(
        "Security Certificates Services Enrollment SCEP Renewal Request",
        &[("Fingerprint", &fp), ("URL", "http://scep")],
        None,
    );
    assert!(reason(&d.handle(&older_set, None, now())).contains("Unknown command"));
    let set = cmd(
        "Security Certificates Services Enrollment SCEP Profiles Set",
        &[("Fingerprint", &fp), ("URL", "http://scep")],
        None,
    );
    d.handle(&set, None, now());
    d.handle(&set, None, now());
    assert_eq!(d.renewal_profiles.len(), 1);
    let mut older = d.clone();
    older.variants.scep_verbs = crate::sim::variants::ScepVerbs::Older;
    assert!(reason(&older.handle(&set, None, now())).contains("Unknown command"));
    assert_eq!(
        status_of(&older.handle(&older_set, None, now())),
        ResultStatus::Ok
    );
    let list = d.handle(
        &cmd(
            "Security Certificates Services Enrollment Profiles List",
            &[],
            None,
        ),
        None,
        now(),
    );
    assert!(format!("{:?}", list.response).contains(&fp));
    let del = cmd(
        "Security Certificates Services Enrollment Profiles Delete",
        &[("Fingerprint", &fp)],
        None,
    );
    assert_eq!(status_of(&d.handle(&del, None, now())), ResultStatus::Ok);
    assert_eq!(status_of(&d.handle(&del, None, now())), ResultStatus::Error);

    // Uptime: a day at first, near zero after a boot.
    let up = Request {
        kind: Kind::Status,
        path: vec!["SystemUnit".into(), "Uptime".into()],
        params: vec![],
        body: None,
    };
    let t0 = now();
    let o = d.handle(&up, None, t0);
    assert!(format!("{:?}", o.response).contains("864"), "{o:?}");
    let o = d.handle(&cmd("SystemUnit Boot", &[], None), None, t0);
    assert!(o.reboot);
    let o = d.handle(&up, None, t0 + time::Duration::seconds(3));
    assert!(
        format!("{:?}", o.response).contains("Literal(\"3\")"),
        "{o:?}"
    );
}
