//! One scrypt derivation per device session, against the simulator over real SSH: every
//! JWE of one session carries the session's salt, the next session draws another, a device
//! that refuses a repeated salt (the simulator's `refuse_repeated_salt` variant) is served
//! by the fallback to a salt per JWE, and `kdf_salt: per-jwe` draws one salt per JWE.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use roomkey::engine::events::DeviceStatus;
use roomkey::sim::FaultPlan;
use support::{playbook, Lab, FULL_FLOW, TEST_POLICY};

/// Runs the playbook in process; returns the run's controller-side derivations.
async fn run(lab: &Lab, pb: &std::path::Path, new_run: bool) -> u64 {
    let (playbook, devices, store) = lab.prepare(pb);
    let (config, _stop) = lab.run_config(playbook, devices, store);
    let summary = roomkey::engine::run(
        roomkey::engine::RunConfig { new_run, ..config },
        Arc::new(roomkey::engine::events::Silent),
    )
    .await;
    assert_eq!(summary.exit_code(), 0, "{summary:#?}");
    for o in &summary.outcomes {
        assert!(
            matches!(o.status, DeviceStatus::Changed | DeviceStatus::Ok),
            "{}: {:?}",
            o.device,
            o.status
        );
    }
    summary.kdf.derivations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_shares_one_salt_the_next_draws_another_and_a_refusing_device_falls_back() {
    // room-01 accepts a repeated salt; room-02 refuses one.
    let lab = Lab::start(2, 203, |i| FaultPlan {
        refuse_repeated_salt: i == 1,
        ..FaultPlan::default()
    })
    .await;
    let fleet = lab.fleet();
    let pb = playbook(lab.path(), "keys", TEST_POLICY, FULL_FLOW);
    let derivations = run(&lab, &pb, false).await;

    // room-01: add and activate (at least two JWEs), all under the session's one salt.
    let first = fleet.jwe_salts("room-01").unwrap();
    assert!(first.len() >= 2, "{} JWEs", first.len());
    assert!(first.iter().all(|s| s == &first[0]), "one salt per session");
    assert!(first[0].len() >= 16);

    // room-02 refused the second JWE for its repeated salt; the step was run again with a
    // fresh salt per JWE, and every JWE after the refusal has a salt of its own.
    let second = fleet.jwe_salts("room-02").unwrap();
    assert!(second.len() >= 3, "{} JWEs", second.len());
    assert_eq!(second[0], second[1], "the session salt was repeated once");
    let after: BTreeSet<_> = second[1..].iter().collect();
    assert_eq!(
        after.len(),
        second.len() - 1,
        "fresh salts after the fallback"
    );
    let snap = lab.snapshot("room-02").await;
    assert!(snap.e2ee_mode_on);
    assert_eq!(
        snap.certificates
            .iter()
            .filter(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
            .count(),
        1,
        "room-02 provisioned through the fallback"
    );

    // Controller derivations: one for room-01's whole session; room-02 one for its session
    // salt plus one per JWE after the fallback.
    let expected = 1 + 1 + (second.len() as u64 - 2);
    assert_eq!(
        derivations, expected,
        "room-01 {first:?}, room-02 {second:?}"
    );

    // The next session (a new run reads and proves the secret) draws a new salt.
    fleet.set_faults("room-01", FaultPlan::default()).unwrap();
    run(&lab, &pb, true).await;
    let next = fleet.jwe_salts("room-01").unwrap();
    assert!(!next.is_empty(), "the rerun sealed at least one JWE");
    assert!(next.iter().all(|s| s == &next[0]));
    assert_ne!(next[0], first[0], "a new session, a new salt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdf_salt_per_jwe_draws_a_salt_for_every_jwe() {
    let lab = Lab::start(1, 204, |_| FaultPlan::default()).await;
    let policy = format!("{TEST_POLICY}, kdf_salt: per-jwe");
    let pb = playbook(lab.path(), "perjwe", &policy, FULL_FLOW);
    let derivations = run(&lab, &pb, false).await;
    let salts = lab.fleet().jwe_salts("room-01").unwrap();
    assert!(salts.len() >= 2);
    let distinct: BTreeSet<_> = salts.iter().collect();
    assert_eq!(distinct.len(), salts.len());
    assert_eq!(derivations, salts.len() as u64);
}

/// A device that never gets as far as a JWE (here it refuses every session) is retried
/// with the key derived for its first attempt: the device never saw that salt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_retried_before_any_jwe_costs_one_derivation() {
    let lab = Lab::start(1, 205, |_| FaultPlan {
        max_sessions: Some(0),
        ..FaultPlan::default()
    })
    .await;
    let pb = playbook(lab.path(), "keys", TEST_POLICY, FULL_FLOW);
    let (playbook, devices, store) = lab.prepare(&pb);
    let (config, _stop) = lab.run_config(playbook, devices, store);
    let summary = roomkey::engine::run(config, Arc::new(roomkey::engine::events::Silent)).await;
    let outcome = &summary.outcomes[0];
    assert_eq!(outcome.connections, 3, "{outcome:#?}");
    assert!(!outcome.status.is_success(), "{outcome:#?}");
    assert_eq!(
        summary.kdf.derivations, 1,
        "one derivation for three attempts"
    );
}
