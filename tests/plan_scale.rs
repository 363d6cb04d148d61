//! `plan` is linear in the fleet: 10,000 devices sharing one CA bundle are loaded,
//! preflighted, planned and rendered with each file read once and no scrypt (the plan
//! never derives a key). The bound is loose on purpose (a debug build on a shared
//! machine); a quadratic step anywhere — re-reading the bundle, re-parsing per device —
//! would blow through it. The measured time is printed for the record.

use std::collections::BTreeMap;
use std::time::Instant;

const DEVICES: usize = 10_000;

#[test]
fn plan_for_ten_thousand_devices_is_linear_and_derives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = roomkey::cert::TestCa::create("Fleet Root").unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &ca.cert_pem).unwrap();
    let mut inv = String::from(
        "known_hosts: known_hosts\ndefaults:\n  auth: { password: \"not-used-by-plan\" }\ndevices:\n",
    );
    for i in 0..DEVICES {
        inv.push_str(&format!(
            "  room-{i:05}: {{ host: 10.{}.{}.{}, port: 22 }}\n",
            i / 65_536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let inv_path = dir.path().join("inventory.yaml");
    std::fs::write(&inv_path, inv).unwrap();
    let pb_path = dir.path().join("fleet.yaml");
    std::fs::write(
        &pb_path,
        "name: fleet\nsteps:\n  - populate_secret: { initial: true }\n  - add_ca_certificate: { file: bundle.pem }\n  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }\n",
    )
    .unwrap();

    let started = Instant::now();
    let inventory = roomkey::inventory::load(&inv_path).unwrap();
    let playbook = roomkey::playbook::load(&pb_path).unwrap();
    let devices: Vec<&roomkey::inventory::Device> = inventory.devices.iter().collect();
    assert_eq!(devices.len(), DEVICES);
    let prepared = roomkey::engine::prepare::prepare(
        &inventory.path,
        &devices,
        &playbook,
        None,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let journal = BTreeMap::new();
    let mut plans: Vec<_> = prepared
        .devices
        .iter()
        .map(|p| {
            roomkey::plan::device_plan(
                p,
                &playbook,
                &journal,
                roomkey::plan::SeedState::Unknown,
                &roomkey::plan::PlannedRun::New,
            )
        })
        .collect();
    roomkey::plan::schedule(
        &mut plans,
        &prepared.devices,
        &playbook,
        jiff::Timestamp::now(),
    );
    let text = roomkey::plan::render(&playbook, &plans, &[]);
    let elapsed = started.elapsed();
    eprintln!(
        "plan for {DEVICES} devices: {elapsed:?} ({} bytes rendered)",
        text.len()
    );
    assert_eq!(plans.len(), DEVICES);
    assert!(text.contains("room-09999"));
    assert!(
        elapsed.as_secs() < 60,
        "plan for {DEVICES} devices took {elapsed:?}"
    );
}
