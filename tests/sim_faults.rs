//! Fault injection, persistence and reboot of simulated devices, over real SSH.

mod support_raw;

use std::time::Duration;

use roomkey::secret::Secret;
use roomkey::sim::faults::{ErrorRule, Trigger};
use roomkey::sim::FaultPlan;
use support_raw::*;

const POPULATE: &str = "xCommand Security ClientSecret Populate Secret: \"b3NzaWZyYWdl\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_before_and_after() {
    let plan = FaultPlan {
        drop_before: vec![Trigger::pattern("services show")],
        drop_after: vec![Trigger::pattern("ClientSecret Populate")],
        ..Default::default()
    };
    let fleet = one_device(plan, None).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    c.send("xCommand Security Certificates Services Show\n")
        .await;
    assert_eq!(c.read_to_close().await, "");
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.commands.last().unwrap().outcome, "dropped-before");

    // Fires once: the next session gets past it; the populate is applied, then dropped.
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    let show = c
        .cmd("xCommand Security Certificates Services Show", "** end\r\n")
        .await;
    assert!(show.contains("(status=OK)"));
    c.send(&format!("{POPULATE}\n")).await;
    assert_eq!(c.read_to_close().await, "");
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.secret.unwrap().expose(), "ossifrage");
    assert_eq!(snap.commands.last().unwrap().outcome, "dropped-after");
    assert_eq!(snap.logins, 2);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nth_hang_and_injected_error() {
    let plan = FaultPlan {
        hang: vec![Trigger::nth(4)],
        error: vec![ErrorRule {
            pattern: Some("Services Show".into()),
            times: Some(0),
            reason: "Device busy".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let fleet = one_device(plan, None).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await; // 1
    assert_eq!(
        c.cmd("xCommand Security Certificates Services Show | resultId=\"e\"", "** end\r\n")
            .await, // 2
        "OK\r\n*r ServicesShowResult (status=Error): \r\n*r ServicesShowResult Reason: \"Device busy\"\r\n\
         ** resultId: \"e\"\r\n** end\r\n"
    );
    c.cmd("xStatus SystemUnit ProductId", "\r\nOK\r\n").await; // 3
    c.send("xStatus SystemUnit ProductId\n").await; // 4: hangs
    assert!(c.silent_for(Duration::from_millis(300)).await);
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.commands.last().unwrap().outcome, "hang");
    assert_eq!(snap.count("Services Show"), 1);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_auth_wrong_host_key_and_latency() {
    let fleet = one_device(
        FaultPlan {
            refuse_auth: true,
            ..Default::default()
        },
        None,
    )
    .await;
    let addr = fleet.devices()[0].addr;
    assert!(matches!(
        RawClient::connect(addr, USER, PASSWORD).await,
        Err(ConnectError::AuthRefused)
    ));
    fleet.shutdown().await;

    let fleet = one_device(
        FaultPlan {
            wrong_host_key: true,
            latency_ms: 50,
            login_notice: vec!["Last login from 10.0.0.5 at 2024-05-10 13:14:47".into()],
            ..Default::default()
        },
        None,
    )
    .await;
    let info = fleet.devices()[0].clone();
    let mut c = login(&fleet).await;
    assert_eq!(
        c.read_until("\r\n").await,
        "Last login from 10.0.0.5 at 2024-05-10 13:14:47\r\n"
    );
    assert_ne!(c.server_key, info.host_key);
    assert_eq!(c.server_key, info.presented_host_key);
    let t = std::time::Instant::now();
    c.cmd("echo off", "OK\r\n").await;
    assert!(t.elapsed() >= Duration::from_millis(50));
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_host_key_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = one_device(FaultPlan::default(), Some(dir.path().to_path_buf())).await;
    let key1 = fleet.devices()[0].host_key.clone();
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    let r = c.cmd(POPULATE, "** end\r\n").await;
    assert!(r.contains("(status=OK)"));
    c.cmd(
        "xConfiguration Conference EndToEndEncryption Identity PreferredDomain: \"example.com\"",
        "\r\nOK\r\n",
    )
    .await;
    // A service certificate (plain PEM body) active for HTTPS, and a trusted CA.
    let ca = roomkey::cert::TestCa::create("persist test CA").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (cert_pem, key_pem) = ca
        .issue(
            "room-001.example.com",
            &[],
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        )
        .unwrap();
    let fingerprint = roomkey::cert::parse_cert_pem(&cert_pem)
        .unwrap()
        .fingerprint_sha1;
    let body = format!("{}{}", cert_pem, key_pem.expose());
    let r = c
        .cmd(
            &format!(
                "xCommand Security Certificates Services Add\n{}\n.",
                body.trim_end()
            ),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    let r = c
        .cmd(
            &format!(
                "xCommand Security Certificates Services Activate Purpose: HTTPS Fingerprint: \"{fingerprint}\""
            ),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    let r = c
        .cmd(
            &format!(
                "xCommand Security Certificates CA Add\n{}\n.",
                ca.cert_pem.trim_end()
            ),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    drop(c);
    fleet.shutdown().await;

    let state = dir.path().join("room-001").join("state.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let fleet = one_device(FaultPlan::default(), Some(dir.path().to_path_buf())).await;
    assert_eq!(fleet.devices()[0].host_key, key1);
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.secret.as_ref().unwrap().expose(), "ossifrage");
    assert_eq!(snap.preferred_domain, "example.com");
    assert_eq!(snap.activations(&fingerprint), ["HTTPS"]);
    assert_eq!(snap.cas.len(), 1);
    assert!(snap.cas[0].subject.contains("persist test CA"));
    let mut c = login(&fleet).await;
    assert_eq!(c.server_key, key1);
    c.cmd("echo off", "OK\r\n").await;
    let r = c.cmd(POPULATE, "** end\r\n").await;
    assert!(r.contains("(status=Error)"), "{r}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_drops_sessions_and_comes_back_with_state() {
    let fleet = one_device(FaultPlan::default(), None).await;
    let addr = fleet.devices()[0].addr;
    let mut other = login(&fleet).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    c.cmd(POPULATE, "** end\r\n").await;
    c.send("xCommand SystemUnit Boot\n").await;
    let rest = c.read_to_close().await;
    assert_eq!(
        rest,
        "OK\r\n*r SystemUnitBootResult (status=OK): \r\n** end\r\n"
    );
    other.read_to_close().await;
    // Right after the boot the device refuses logins (boot delay 300 ms in tests).
    assert!(RawClient::connect(addr, USER, PASSWORD).await.is_err());
    // Poll until it is back (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match RawClient::connect(addr, USER, PASSWORD).await {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("device did not come back: {e:?}"),
        }
    };
    c.read_banner().await;
    let snap = fleet.snapshot("room-001").await.unwrap();
    assert_eq!(snap.boot_count, 1);
    assert_eq!(snap.secret.unwrap(), Secret::new("ossifrage"));
    fleet.shutdown().await;
}
