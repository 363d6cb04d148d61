//! Certificates for a whole inventory: `cert csr -i` (a key and CSR per device at the
//! inventory's paths, CN/SAN from its identity), `cert issue -i` (the test CA signs those
//! CSRs), `cert check -i` (every device at once, including a CN that is not the device's
//! identity and two devices sharing one certificate).

use std::path::Path;

fn roomkey(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn csr_issue_and_check_for_every_device_of_an_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = roomkey(
        d,
        &[
            "init",
            "site",
            "--domain",
            "corp.example.net",
            "--device",
            "room-301=10.1.3.1",
            "--device",
            "room-302=10.1.3.2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let inv = "site/inventory.yaml";

    let (code, out, err) = roomkey(d, &["cert", "csr", "-i", inv]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CN room-301.corp.example.net"), "{out}");
    for name in ["room-301", "room-302"] {
        let key = d.join(format!("site/certs/{name}.key"));
        let csr = d.join(format!("site/certs/{name}.csr"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(std::fs::read_to_string(&csr)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
    // Run again: existing keys are kept, nothing is overwritten.
    let key_before = std::fs::read(d.join("site/certs/room-301.key")).unwrap();
    let (code, out, _) = roomkey(d, &["cert", "csr", "-i", inv]);
    assert_eq!(code, 0);
    assert!(out.contains("kept the existing key"), "{out}");
    assert_eq!(
        std::fs::read(d.join("site/certs/room-301.key")).unwrap(),
        key_before
    );

    let (code, _, err) = roomkey(d, &["cert", "test-ca", "--out", "ca"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = roomkey(d, &["cert", "issue", "-i", inv, "--ca", "ca"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("site/certs/room-302.pem"), "{out}");
    // The certificates were issued for the keys `cert csr` made (the key stays put).
    assert_eq!(
        std::fs::read(d.join("site/certs/room-301.key")).unwrap(),
        key_before
    );

    let (code, out, err) = roomkey(d, &["cert", "check", "-i", inv]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("room-301: OK  CN room-301.corp.example.net"),
        "{out}"
    );
    assert!(out.contains("2 devices: 2 ok, 0 failed"), "{out}");
    let (code, out, _) = roomkey(d, &["cert", "check", "-i", inv, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["ok"], true);
    assert!(v[0]["days_left"].as_i64().unwrap() >= 363);

    // room-302 given room-301's certificate and key: wrong CN and a shared certificate.
    std::fs::copy(
        d.join("site/certs/room-301.pem"),
        d.join("site/certs/room-302.pem"),
    )
    .unwrap();
    std::fs::copy(
        d.join("site/certs/room-301.key"),
        d.join("site/certs/room-302.key"),
    )
    .unwrap();
    let (code, out, _) = roomkey(d, &["cert", "check", "-i", inv]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("room-302: FAILED")
            && out.contains("the inventory expects 'room-302.corp.example.net'")
            && out.contains("the same certificate as device room-301's"),
        "{out}"
    );
    // --limit selects: room-301 alone passes.
    let (code, out, _) = roomkey(d, &["cert", "check", "-i", inv, "--limit", "room-301"]);
    assert_eq!(code, 0, "{out}");
}
