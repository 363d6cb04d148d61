//! The README's main command: `roomkey demo` runs the whole product on its built-in
//! simulated fleet, from nothing but the binary, and every room ends verified.

use std::process::Command;

#[test]
fn demo_provisions_every_lab_room_and_shows_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(["demo", "--output", "plain", "--dir"])
        .arg(dir.path())
        .env_remove("ROOMKEY_SIM_PASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let inventory = include_str!("../inventory/lab.yaml");
    let rooms: Vec<&str> = inventory
        .lines()
        .filter_map(|l| l.trim_start().split_once(": { host:"))
        .map(|(name, _)| name.trim())
        .collect();
    assert_eq!(rooms.len(), 12, "the lab fleet has twelve rooms");
    let readback = stdout
        .split_once("What each room reports now")
        .map(|(_, table)| table)
        .unwrap_or_else(|| panic!("no read-back table:\n{stdout}"));
    for room in rooms {
        // The read-back table: room, its verified external identity, E2EE on, fingerprint.
        let line = readback
            .lines()
            .find(|l| l.starts_with(&format!("{room} ")))
            .unwrap_or_else(|| panic!("no read-back line for {room}:\n{stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols.get(1),
            Some(&format!("{room}.lab.example.com").as_str()),
            "{line}"
        );
        assert_eq!(cols.get(2), Some(&"on"), "{line}");
        assert_eq!(cols.get(3).map(|f| f.len()), Some(40), "{line}");
        // The rooms start factory-new: every step does its work, set_configuration too
        // (E2EE starts off), and nothing is merely found already done.
        for kind in [
            "populate_secret",
            "add_certificate",
            "activate_certificate",
            "set_configuration",
        ] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&format!("{room}: {kind}")) && l.contains(" changed")),
                "{room}: {kind} did not change anything:\n{stderr}"
            );
        }
    }
    // The demo's vault passphrase and room password are random and never shown.
    assert!(!stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"));
}
