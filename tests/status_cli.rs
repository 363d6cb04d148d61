//! `roomkey status` against the simulator over real SSH: the table, JSON, CSV and
//! OpenMetrics renderings, the `--expiring-within` exit code for cron, and that reading the
//! fleet changes nothing on any device.

mod support;

use support::{Lab, FULL_FLOW, TEST_POLICY};

/// Three rooms (two provisioned, one factory-new) plus one address nothing listens on.
async fn lab(subnet: u8) -> Lab {
    let lab = Lab::start(3, subnet, |_| Default::default()).await;
    let pb = support::playbook(lab.path(), "external-identity", TEST_POLICY, FULL_FLOW);
    let (code, _, err) = lab.apply(&pb, &["--limit", "room-01,room-02"]).await;
    assert_eq!(code, 0, "{err}");
    // A room that is down: a loopback address on a port nothing listens on (port 1 is
    // privileged, so no test can be serving it).
    let mut inv = std::fs::read_to_string(&lab.inventory).unwrap();
    inv.push_str(&format!(
        "  room-99: {{ host: 127.{subnet}.9.9, port: 1 }}\n"
    ));
    std::fs::write(&lab.inventory, inv).unwrap();
    lab
}

async fn status(lab: &Lab, extra: &[&str]) -> (i32, String, String) {
    let inv = lab.inventory.to_str().unwrap().to_string();
    let mut args = vec![
        "status",
        "-i",
        &inv,
        "--accept-new-host-keys",
        "--timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    let out = lab.roomkey(&args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_csv_table_and_openmetrics() {
    let lab = lab(57).await;
    let before = lab.snapshot("room-03").await;

    // JSON: versioned, one entry per device, most urgent first.
    let (code, out, err) = status(&lab, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["version"], 1);
    assert!(doc["generated_at"].as_str().is_some());
    let devices = doc["devices"].as_array().unwrap();
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["room-99", "room-03", "room-01", "room-02"], "{out}");
    let down = &devices[0];
    assert_eq!(down["reach"], "unreachable", "{out}");
    assert!(
        down["error"].as_str().unwrap().contains("cannot connect"),
        "{out}"
    );
    let new = &devices[1];
    assert_eq!(new["reach"], "ok", "{out}");
    assert_eq!(new["identity_valid"], false, "{out}");
    assert!(new["e2ee_mode"].is_string(), "{out}");
    assert_eq!(new["secret_seeded"], false, "{out}");
    assert!(new["last_run"].is_null(), "{out}");
    let r1 = &devices[2];
    assert_eq!(r1["identity_valid"], true, "{out}");
    assert_eq!(r1["identity"], "room-01.lab.example.com", "{out}");
    assert_eq!(r1["e2ee_mode"], "On", "{out}");
    assert_eq!(r1["secret_seeded"], true, "{out}");
    assert_eq!(r1["last_run"]["playbook"], "external-identity", "{out}");
    assert_eq!(r1["last_run"]["outcome"], "ok", "{out}");
    assert!(
        r1["software"].as_str().unwrap().starts_with("RoomOS"),
        "{out}"
    );
    // The lab's certificates are valid from an hour ago for 90 days.
    assert_eq!(r1["days_left"], 89, "{out}");
    // The fingerprint is the one of the certificate file the room was given.
    let cert = roomkey::cert::parse_cert_pem(
        &std::fs::read_to_string(lab.path().join("certs/room-01.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        r1["fingerprint"].as_str().unwrap(),
        roomkey::engine::steps::normalise_fingerprint(&cert.fingerprint_sha1)
    );
    assert_eq!(
        r1["not_after"].as_str().unwrap(),
        cert.not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );

    // CSV: a header and one row per device.
    let (code, out, _) = status(&lab, &["--csv"]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("device,address,reach,identity_valid,identity"));
    assert!(lines[1].starts_with("room-99,"), "{out}");
    assert!(
        lines[3].starts_with("room-01,") && lines[3].contains(",ok,true,room-01.lab.example.com,"),
        "{out}"
    );

    // OpenMetrics, written atomically for node_exporter's textfile collector.
    let prom = lab.path().join("roomkey.prom");
    let (code, out, _) = status(&lab, &["--openmetrics", "-o", prom.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(out.is_empty());
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains(&format!(
            "roomkey_certificate_not_after_seconds{{device=\"room-01\",fingerprint=\"{}\"}} {}",
            r1["fingerprint"].as_str().unwrap(),
            cert.not_after.unix_timestamp()
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "roomkey_identity_valid{device=\"room-02\",identity=\"room-02.lab.example.com\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("roomkey_identity_valid{device=\"room-03\",identity=\"\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("roomkey_device_up{device=\"room-99\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("roomkey_secret_seeded{device=\"room-01\"} 1"),
        "{text}"
    );

    // The table (not a terminal here: no colour, no escape sequence), most urgent first.
    let (code, out, _) = status(&lab, &[]).await;
    assert_eq!(code, 0);
    assert!(!out.contains('\u{1b}'), "{out}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(
        rows[0].starts_with("DEVICE") && rows[0].contains("DAYS"),
        "{out}"
    );
    assert!(
        rows[1].starts_with("room-99") && rows[1].contains("unreachable"),
        "{out}"
    );
    assert!(
        rows[2].starts_with("room-03") && rows[2].contains("no-identity"),
        "{out}"
    );
    assert!(
        rows[3].starts_with("room-01") && rows[3].contains("room-01.lab.example.com"),
        "{out}"
    );
    assert!(out.contains("4 devices: 2 ok, 2 need attention"), "{out}");

    // Nothing was changed on the factory-new room by reading it.
    let after = lab.snapshot("room-03").await;
    assert!(after.secret.is_none());
    assert_eq!(after.certificates.len(), before.certificates.len());
    assert_eq!(after.e2ee_mode_on, before.e2ee_mode_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_expiring_within_gives_cron_an_exit_code() {
    let lab = lab(58).await;
    // A device without a valid identity, or unreachable: exit 2, and the names on stderr.
    let (code, _, err) = status(&lab, &["--expiring-within", "30d", "--json"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("room-03") && err.contains("room-99"), "{err}");
    assert!(!err.contains("room-01"), "{err}");
    // Only the provisioned rooms: 89 days left, nothing within 30 days.
    let (code, _, err) = status(
        &lab,
        &["--limit", "room-01,room-02", "--expiring-within", "30d"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // ... but within 13 weeks (91 days) they do expire.
    let (code, _, err) = status(
        &lab,
        &[
            "--limit",
            "room-01,room-02",
            "--expiring-within",
            "13w",
            "--csv",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 of 2 devices"), "{err}");
    // A bad value is refused before anything is read.
    let (code, _, err) = status(&lab, &["--expiring-within", "soon"]).await;
    assert_eq!(code, 1, "usage error, invalid input: {err}");
    assert!(err.contains("not a number of days"), "{err}");
}
