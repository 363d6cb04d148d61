//! Every reply shape of `tshell.md`, checked against the exact bytes the simulator sends
//! over a real SSH session.

mod support_raw;

use roomkey::cert::TestCa;
use roomkey::sim::FaultPlan;
use support_raw::*;
use time::{Duration, OffsetDateTime};

fn leaf_pems() -> (String, roomkey::secret::Secret, String) {
    let ca = TestCa::create("Example Issuing CA").unwrap();
    let now = OffsetDateTime::now_utc();
    let (cert, key) = ca
        .issue(
            "plain.example.com",
            &[],
            now - Duration::days(1),
            now + Duration::days(30),
        )
        .unwrap();
    (cert, key, ca.cert_pem.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reply_shapes() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let mut c = login(&fleet).await;

    // Echo is on by default: the command line comes back first.
    assert_eq!(
        c.cmd("xStatus SystemUnit Software Version", "\r\nOK\r\n")
            .await,
        "xStatus SystemUnit Software Version\r\n\
         *s SystemUnit Software Version: \"ce11.14.1.5.a1b2c3d\"\r\n** end\r\n\r\nOK\r\n"
    );
    assert_eq!(c.cmd("echo off", "OK\r\n").await, "echo off\r\nOK\r\n");
    assert_eq!(
        c.cmd("foo bar", "\r\n").await,
        "Command not recognized.\r\n"
    );
    assert_eq!(
        c.cmd("xCommand Foo Bar", "** end\r\n").await,
        // catalogue reply.unknown-command
        "OK\r\n*r Result (status=Error): \r\n*r Result Reason: \"Unknown command\"\r\n\
         *r Result XPath: \"/Foo/Bar\"\r\n** end\r\n"
    );
    assert_eq!(
        c.cmd("xConfiguration Conference EndToEndEncryption", "\r\nOK\r\n")
            .await,
        "*c xConfiguration Conference EndToEndEncryption Identity PreferredDomain: \"\"\r\n\
         *c xConfiguration Conference EndToEndEncryption Mode: On\r\n** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        c.cmd(
            "xconfiguration conference endtoendencryption mode: Off | resultId=\"c1\"",
            "\r\nOK\r\n"
        )
        .await,
        "** resultId: \"c1\"\r\n** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        c.cmd(
            "xStatus Conference EndToEndEncryption Availability",
            "\r\nOK\r\n"
        )
        .await,
        "*s Conference EndToEndEncryption Availability: Unavailable\r\n** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        c.cmd(
            "xConfiguration Conference EndToEndEncryption Mode: Maybe",
            "ERROR\r\n"
        )
        .await,
        "*r Configuration (status=Error): \r\n*r Configuration Reason: \"Illegal value\"\r\n\
         *r Configuration XPath: \"Configuration/Conference/EndToEndEncryption/Mode\"\r\n\
         ** end\r\n\r\nERROR\r\n"
    );
    assert_eq!(
        c.cmd("xStatus Nope | resultId=\"s9\"", "ERROR\r\n").await,
        "*r Status (status=Error): \r\n*r Status Reason: \"No match on address expression.\"\r\n\
         *r Status XPath: \"Status/Nope\"\r\n** resultId: \"s9\"\r\n** end\r\n\r\nERROR\r\n"
    );
    assert_eq!(
        c.cmd(
            "xCommand Security Certificates Services Activate Purpose: Bogus Fingerprint: \"x\"",
            "** end\r\n"
        )
        .await,
        "OK\r\n*r ServicesActivateResult (status=ParameterError): \r\n\
         *r ServicesActivateResult Reason: \"Invalid Purpose\"\r\n** end\r\n"
    );

    // A plain (unencrypted) Add with a dot-terminated body, plain activation, Show, Delete.
    let (cert, key, ca_pem) = leaf_pems();
    let body = format!("{cert}{}", key.expose());
    c.send(&format!(
        "xCommand Security Certificates Services Add\n{body}.\n"
    ))
    .await;
    assert_eq!(
        c.read_until("** end\r\n").await,
        "OK\r\n*r ServicesAddResult (status=OK): \r\n** end\r\n"
    );
    let info = roomkey::cert::parse_cert_pem(&cert).unwrap();
    let fp = info.fingerprint_sha1.clone();
    assert_eq!(
        c.cmd(
            &format!("xCommand Security Certificates Services Activate Purpose: HTTPS Fingerprint: \"{fp}\""),
            "** end\r\n"
        )
        .await,
        "OK\r\n*r ServicesActivateResult (status=OK): \r\n** end\r\n"
    );
    let show = c
        .cmd("xCommand Security Certificates Services Show", "** end\r\n")
        .await;
    let p = "*r ServicesShowResult Details 1";
    let expected = format!(
        "OK\r\n*r ServicesShowResult (status=OK): \r\n\
         {p} Fingerprint: \"{fp}\"\r\n\
         {p} SubjectName: \"/CN=plain.example.com\"\r\n\
         {p} IssuerName: \"{}\"\r\n\
         {p} notAfter: \"{}\"\r\n\
         {p} notBefore: \"{}\"\r\n\
         {p} UsedFor: \"HTTPS server\"\r\n\
         {p} HashingAlgorithm: \"ecdsa-with-SHA256\"\r\n\
         {p} PublicKeySize: 256\r\n\
         {p} SerialNumber: \"{}\"\r\n\
         {p} SignatureAlgorithm: \"id-ecPublicKey\"\r\n\
         {p} Version: 3\r\n** end\r\n",
        info.issuer,
        roomkey::sim::model::device_time(info.not_after),
        roomkey::sim::model::device_time(info.not_before),
        info.serial_hex.to_uppercase(),
    );
    assert_eq!(show, expected);
    assert!(
        info.issuer.ends_with("/CN=Example Issuing CA"),
        "{}",
        info.issuer
    );

    // Length-prefixed body (jsxapi form) for a CA bundle; duplicates are kept.
    let content = format!("xCommand Security Certificates CA Add\n{ca_pem}{ca_pem}");
    let content = if content.ends_with('\n') {
        content
    } else {
        format!("{content}\n")
    };
    c.send(&format!("{{{}}} \n{content}", content.len())).await;
    assert_eq!(
        c.read_until("** end\r\n").await,
        "OK\r\n*r CAAddResult (status=OK): \r\n** end\r\n"
    );
    let ca_show = c
        .cmd("xCommand Security Certificates CA Show", "** end\r\n")
        .await;
    assert!(
        ca_show.contains("*r CAShowResult Details 2 SubjectName: "),
        "{ca_show}"
    );
    assert_eq!(fleet.snapshot("room-001").await.unwrap().cas.len(), 2);

    assert_eq!(
        c.cmd(
            &format!("xCommand Security Certificates Services Delete Fingerprint: \"{fp}\""),
            "** end\r\n"
        )
        .await,
        "OK\r\n*r ServicesDeleteResult (status=OK): \r\n** end\r\n"
    );
    assert!(fleet
        .snapshot("room-001")
        .await
        .unwrap()
        .certificates
        .is_empty());

    // echo on again, then `bye` closes the session.
    assert_eq!(c.cmd("echo on", "OK\r\n").await, "OK\r\n");
    c.send("bye\n").await;
    assert_eq!(c.read_to_close().await, "bye\r\n");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_shapes() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    // catalogue reply.json: the switch is not answered in JSON mode; replies are pretty,
    // framed by lines `{` and `}`, the result id appended before the closing brace.
    c.send("xpreferences outputmode json\n").await;
    assert_eq!(
        c.cmd(
            "xStatus Conference EndToEndEncryption Availability | resultId=\"j1\"",
            "\r\n}\r\n"
        )
        .await,
        "{\r\n  \"Status\": {\r\n    \"Conference\": {\r\n      \"EndToEndEncryption\": {\r\n        \
         \"Availability\": {\r\n          \"Value\": \"Available\"\r\n        }\r\n      }\r\n    }\r\n  }\r\n\
         ,\"ResultId\": \"j1\"\r\n}\r\n"
    );
    let unknown = c.cmd("xCommand Foo", "\r\n}\r\n").await;
    let v: serde_json::Value = serde_json::from_str(&unknown).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"CommandResponse": {"Result": {
            "status": "Error",
            "Reason": {"Value": "Unknown command"},
            "XPath": {"Value": "/Foo"},
        }}})
    );
    let show = c
        .cmd("xCommand Security Certificates Services Show", "\r\n}\r\n")
        .await;
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"CommandResponse": {"ServicesShowResult": {"status": "OK"}}})
    );
    assert_eq!(
        c.cmd("xpreferences outputmode terminal", "OK\r\n").await,
        "OK\r\n"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_and_wrong_credentials() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let mut c = RawClient::connect_kbd(addr, USER, PASSWORD).await.unwrap();
    assert!(c
        .read_banner()
        .await
        .ends_with("*r Login successful\r\n\r\nOK\r\n\r\n"));
    assert!(matches!(
        RawClient::connect(addr, USER, "nope").await,
        Err(ConnectError::AuthRefused)
    ));
    assert!(matches!(
        RawClient::connect_kbd(addr, USER, "nope").await,
        Err(ConnectError::AuthRefused)
    ));
    assert!(matches!(
        RawClient::connect(addr, "root", PASSWORD).await,
        Err(ConnectError::AuthRefused)
    ));
    let info = &fleet.devices()[0];
    assert_eq!(&c.server_key, &info.host_key);
    assert!(info.host_key_fingerprint.starts_with("SHA256:"));
    fleet.shutdown().await;
}

/// `xFeedback`: a session that registered a path gets `*s`/`*c` feedback for every change
/// under it — made by itself (after the command's own reply) or by another session — and
/// nothing once it deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reaches_registered_sessions() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let mut watcher = login(&fleet).await;
    watcher.cmd("echo off", "OK\r\n").await;
    // catalogue feedback.commands: `** end`, a blank line, `OK`.
    assert_eq!(
        watcher
            .cmd("xFeedback register /Configuration/Conference", "OK\r\n")
            .await,
        "** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        watcher
            .cmd(
                "xFeedback register /Status/Conference/EndToEndEncryption",
                "OK\r\n"
            )
            .await,
        "** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        watcher.cmd("xFeedback list", "OK\r\n").await,
        "/Configuration/Conference\r\n/Status/Conference/EndToEndEncryption\r\n** end\r\n\r\nOK\r\n"
    );
    assert_eq!(
        watcher.cmd("xFeedback register /Bogus/Path", "\r\n").await,
        "ERROR\r\n"
    );

    // Its own change: the reply, then the feedback — the status it changed too.
    assert_eq!(
        watcher
            .cmd(
                "xConfiguration Conference EndToEndEncryption Mode: Off",
                "*c xConfiguration Conference EndToEndEncryption Mode: Off\r\n** end\r\n"
            )
            .await,
        "** end\r\n\r\nOK\r\n\
         *s Conference EndToEndEncryption Availability: Unavailable\r\n** end\r\n\
         *c xConfiguration Conference EndToEndEncryption Mode: Off\r\n** end\r\n"
    );

    // Another session's change reaches the watcher, unasked.
    let mut other = login(&fleet).await;
    other.cmd("echo off", "OK\r\n").await;
    other
        .cmd(
            "xConfiguration Conference EndToEndEncryption Identity PreferredDomain: \"example.com\"",
            "\r\nOK\r\n",
        )
        .await;
    assert_eq!(
        watcher.read_until("** end\r\n").await,
        "*c xConfiguration Conference EndToEndEncryption Identity PreferredDomain: \"example.com\"\r\n** end\r\n"
    );

    // Deregistered: a change brings nothing, the next reply is just the reply.
    assert_eq!(
        watcher.cmd("xFeedback deregisterall", "OK\r\n").await,
        "** end\r\n\r\nOK\r\n"
    );
    other
        .cmd(
            "xConfiguration Conference EndToEndEncryption Mode: On",
            "\r\nOK\r\n",
        )
        .await;
    assert_eq!(
        watcher.cmd("xFeedback list", "OK\r\n").await,
        "** end\r\n\r\nOK\r\n"
    );
    fleet.shutdown().await;
}
