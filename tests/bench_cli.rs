//! `roomkey bench` end to end on a tiny fleet (a smoke test of its accounting, not a
//! measurement): the device-time profile reaches the simulator, the simulator's key cache
//! gives one derivation per device session, and `--json` carries both floors.

use std::process::Command;

#[test]
fn bench_reports_the_device_time_profile_and_both_floors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(["bench", "--devices", "3", "--concurrency", "3"])
        .args(["--latency-ms", "5", "--device-scrypt-ms", "300"])
        .args(["--scrypt-samples", "1", "--base", "127.231.0.1", "--json"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: every target met; 2: measured, a target missed (a debug build on a busy machine).
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{:?}\n{stderr}",
        out.status
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["devices"], 3);
    assert_eq!(doc["device_scrypt_ms"], 300);
    // add and activate share one session: with the cache the device derives once.
    let sim = &doc["simulator"];
    assert_eq!(sim["device_derivations"], 3, "{doc:#}");
    assert_eq!(sim["keys_reused"], 3, "{doc:#}");
    assert!((sim["device_derivation_delay_s"].as_f64().unwrap() - 0.9).abs() < 1e-9);
    assert!(sim["device_latency_s"].as_f64().unwrap() > 0.0);
    // The controller derives once per device session too.
    assert_eq!(doc["controller"]["scrypt_derivations"], 3, "{doc:#}");
    let floors = &doc["floors"];
    for f in ["controller_s", "cpu_s", "device_s"] {
        assert!(floors[f].as_f64().unwrap() > 0.0, "{f}: {doc:#}");
    }
    assert!(floors["cpu_s"].as_f64() >= floors["controller_s"].as_f64());
    assert!(stderr.contains("device floor"), "{stderr}");
}
