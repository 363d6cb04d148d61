//! Vault saves are group commits and log appends (issue 16): 50 simulated rooms seeded and
//! then rotated, 50 sessions at once, over real SSH, by the in-process engine. Every change
//! is durable before the step that made it goes on (the rotation tests kill the process at
//! each write-ahead point), but changes that arrive together share one save, and a save is
//! an append of the changed rooms' entries to the vault's log: the whole vault is rewritten
//! once per run (when the store closes), where each change used to rewrite it (a cost
//! quadratic in the fleet).

mod support;

use std::sync::Arc;

use roomkey::engine::events::{DeviceStatus, Event, Reporter};
use roomkey::engine::secrets::SaveCounts;
use roomkey::sim::FaultPlan;
use support::{playbook, Lab};

const ROOMS: usize = 50;
const POLICY: &str = "concurrency: 50, connect_timeout: 20s, auth_timeout: 20s, command_timeout: 60s, retries: 2, retry_backoff: 100ms, host_key_policy: accept-new";

struct Quiet;
impl Reporter for Quiet {
    fn event(&self, _event: &Event) {}
}

/// Runs `steps` on every room with a fresh store over the lab's vault; returns the store's
/// save counts once it has closed.
async fn run(lab: &Lab, name: &str, steps: &str) -> SaveCounts {
    let pb = playbook(lab.path(), name, POLICY, steps);
    let store = Arc::new(lab.vault_store());
    let (playbook, devices) = lab.prepare_with(&pb, store.as_ref());
    let (config, _stop) = lab.run_config(
        playbook,
        devices,
        Arc::clone(&store) as Arc<dyn roomkey::engine::SecretStore>,
    );
    let summary = roomkey::engine::run(config, Arc::new(Quiet)).await;
    assert_eq!(summary.exit_code(), 0, "{summary:#?}");
    assert!(summary
        .outcomes
        .iter()
        .all(|o| o.status == DeviceStatus::Changed));
    let counts = store.save_counts();
    // The engine's config held a clone; this is the last reference: the writer thread
    // folds the log into the vault file and ends, and the vault lock is released.
    drop(store);
    assert!(
        !lab.path().join("vault.log").exists(),
        "the log was folded into the vault file when the store closed"
    );
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rooms_seeding_and_rotating_at_once_share_vault_saves() {
    let lab = Lab::start(ROOMS, 230, |_| FaultPlan::default()).await;

    let counts = run(&lab, "seed", "  - populate_secret: { initial: true }\n").await;
    eprintln!("seeding: {counts:?}");
    assert_eq!(counts.changes, ROOMS as u64, "one change per room: seeded");
    assert!(counts.saves() <= counts.changes, "{counts:?}");
    // Before the close, the whole vault was rewritten only if the log outgrew it.
    assert_eq!(counts.rewrites, 0, "{counts:?}");

    // A rotation's changes do not arrive together here: the simulator opens the JWEs one
    // at a time (one scrypt thread), so they come spread out by its derivations and most
    // saves carry one change. Group commit never adds saves: at most one per change, and
    // the writer is never more than one save behind; each is a short append.
    let counts = run(&lab, "rotate", "  - rotate_secret: {}\n").await;
    eprintln!("rotation: {counts:?}");
    assert!(counts.changes >= 3 * ROOMS as u64, "{counts:?}");
    assert!(counts.saves() <= counts.changes, "{counts:?}");
    assert!(counts.rewrites <= 1, "{counts:?}");

    // Nothing was lost: every room holds the secret the vault names as current.
    let vault = lab.read_vault();
    for name in &lab.names {
        let d = vault.device(name).unwrap();
        assert!(d.seeded && d.pending.is_none(), "{name}");
        assert_eq!(
            lab.device_secret(name).await.as_deref(),
            Some(d.current.as_ref().unwrap().secret.expose()),
            "{name}"
        );
    }
}
