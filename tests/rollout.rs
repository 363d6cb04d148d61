//! Rollout at fleet scale against simulated rooms: canaries, failure budgets, maintenance
//! windows (a closing one, and waiting for one with paused time).

mod support;

use std::sync::Arc;

use roomkey::engine::events::{DeviceStatus, Event, Recorder, Reporter};
use roomkey::engine::RunConfig;
use roomkey::sim::faults::ErrorRule;
use roomkey::sim::FaultPlan;
use support::{playbook, Lab, FULL_FLOW};

const POLICY: &str = "concurrency: 3, command_timeout: 20s, retries: 1, retry_backoff: 50ms, host_key_policy: accept-new";

fn refuse(pattern: &str) -> FaultPlan {
    FaultPlan {
        error: vec![ErrorRule {
            pattern: Some(pattern.into()),
            times: Some(0),
            reason: "Simulated refusal".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn with_rollout(lab: &Lab, rollout: &str) -> std::path::PathBuf {
    let pb = playbook(lab.path(), "flow", POLICY, FULL_FLOW);
    let text = std::fs::read_to_string(&pb).unwrap();
    std::fs::write(&pb, format!("{rollout}\n{text}")).unwrap();
    pb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_run_before_batch_two() {
    let lab = Lab::start(6, 51, |i| {
        if i == 0 {
            refuse("Services Activate")
        } else {
            FaultPlan::default()
        }
    })
    .await;
    let pb = with_rollout(&lab, "serial: [1, 5]\nany_errors_fatal: true");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 4, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("any_errors_fatal"), "{stdout}");
    assert!(stdout.contains("room-01  failed"), "{stdout}");
    for name in &lab.names[1..] {
        assert_eq!(lab.snapshot(name).await.logins, 0, "{name} was started");
        assert!(stdout.contains(&format!("{name}  not-started")), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripped_budget_lets_in_flight_devices_finish_and_the_rerun_resumes() {
    let lab = Lab::start(6, 52, |i| {
        if i == 0 {
            refuse("Services Add")
        } else {
            FaultPlan::default()
        }
    })
    .await;
    let pb = with_rollout(&lab, "serial: 3\nmax_failures: 0");
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 4, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("max_failures"), "{stdout}");
    // Batch two never started.
    for name in &lab.names[3..] {
        assert_eq!(lab.snapshot(name).await.logins, 0, "{name} was started");
    }
    // The other in-flight devices stopped at a step boundary: none is half-way through a
    // step in the journal.
    let journal = std::fs::read_dir(lab.path().join(".roomkey/journal/flow")).unwrap();
    for entry in journal.flatten() {
        let steps = roomkey::journal::read_steps(
            &lab.path().join(".roomkey"),
            "flow",
            entry.path().file_stem().unwrap().to_str().unwrap(),
        )
        .unwrap();
        assert!(
            steps
                .values()
                .all(|s| s.status != roomkey::journal::StepStatus::InFlight),
            "{:?}: {steps:?}",
            entry.path()
        );
    }

    // Fixed; rerun: everything completes, nothing is added twice.
    lab.fleet()
        .set_faults("room-01", FaultPlan::default())
        .unwrap();
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(
            snap.certificates.len(),
            1,
            "{name}: one certificate, added once"
        );
        assert!(snap.e2ee_mode_on, "{name}");
    }
}

/// Regression: a device's key is derived before it takes a session slot, so the next
/// devices wait for the slot with their keys ready. The slot must not pass to one of them
/// before the failed device's outcome has been counted: with one session and no failure
/// allowed, exactly one device may ever connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripped_budget_stops_devices_whose_keys_are_ready() {
    let lab = Lab::start(4, 56, |_| refuse("Services Add")).await;
    let pb = playbook(
        lab.path(),
        "flow",
        &POLICY.replace("concurrency: 3", "concurrency: 1"),
        FULL_FLOW,
    );
    let text = std::fs::read_to_string(&pb).unwrap();
    std::fs::write(&pb, format!("max_failures: 0\n{text}")).unwrap();
    let (code, stdout, stderr) = lab.apply(&pb, &[]).await;
    assert_eq!(code, 4, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut connected = 0;
    for name in &lab.names {
        if lab.snapshot(name).await.logins > 0 {
            connected += 1;
            assert!(stdout.contains(&format!("{name}  failed")), "{stdout}");
        } else {
            assert!(stdout.contains(&format!("{name}  not-started")), "{stdout}");
        }
    }
    assert_eq!(connected, 1, "{stdout}");
}

/// Runs the flow one room at a time, started at 08:00:00 UTC, in a window from 07:00 to
/// `end`, each room estimated at `estimate` until real timings replace the estimate.
async fn run_one_at_a_time_in_window(
    lab: &Lab,
    end: &str,
    estimate: &str,
) -> roomkey::engine::RunSummary {
    let start = jiff::Timestamp::from_second(1_800_000_000).unwrap(); // 2027-01-15T08:00:00Z
    let pb = with_rollout(
        lab,
        &format!("window: {{ start: \"07:00\", end: \"{end}\", timezone: UTC }}"),
    );
    let text = std::fs::read_to_string(&pb).unwrap().replace(
        "concurrency: 3",
        &format!("concurrency: 1, device_estimate: {estimate}"),
    );
    std::fs::write(&pb, text).unwrap();
    let (playbook, devices, store) = lab.prepare(&pb);
    let (config, _stop) = lab.run_config(playbook, devices, store);
    roomkey::engine::run(
        RunConfig {
            start_time: Some(start),
            ..config
        },
        Arc::new(roomkey::engine::events::Silent),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_window_leaves_no_device_half_provisioned() {
    let lab = Lab::start(8, 53, |_| FaultPlan {
        latency_ms: 50,
        ..Default::default()
    })
    .await;
    // The window closes two seconds after the run starts; each device is estimated at one
    // second (until real timings replace the estimate) and they run one at a time.
    let summary = run_one_at_a_time_in_window(&lab, "08:00:02", "1s").await;
    assert_eq!(summary.exit_code(), 4, "{summary:#?}");
    let held_back: Vec<_> = summary
        .outcomes
        .iter()
        .filter(|o| o.status == DeviceStatus::NotStarted)
        .collect();
    assert!(!held_back.is_empty(), "the window closed on someone");
    assert!(held_back[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("maintenance window"));
    for o in &summary.outcomes {
        let snap = lab.snapshot(&o.device).await;
        match o.status {
            DeviceStatus::Changed => assert!(snap.e2ee_mode_on, "{} finished", o.device),
            DeviceStatus::NotStarted => {
                assert_eq!(snap.logins, 0, "{} started after the cutoff", o.device)
            }
            other => panic!("{}: unexpected {other:?}", o.device),
        }
    }
}

/// Regression: a device's key is derived before it takes a session slot, so it may wait
/// for the slot after its window was judged. The window is judged again when it takes the
/// slot: here the first room takes over a second (every reply 120 ms late) and the window
/// closes one second after the start, so the rooms that waited never connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_closes_while_a_device_waits_for_its_slot_stops_it() {
    let lab = Lab::start(4, 57, |_| FaultPlan {
        latency_ms: 120,
        ..Default::default()
    })
    .await;
    let summary = run_one_at_a_time_in_window(&lab, "08:00:01", "500ms").await;
    let mut connected = 0;
    for o in &summary.outcomes {
        if lab.snapshot(&o.device).await.logins > 0 {
            connected += 1;
            assert_eq!(o.status, DeviceStatus::Changed, "{o:?}");
        } else {
            assert_eq!(o.status, DeviceStatus::NotStarted, "{o:?}");
            assert!(
                o.reason
                    .as_deref()
                    .unwrap()
                    .starts_with("maintenance window"),
                "{o:?}"
            );
        }
    }
    assert!(connected <= 1, "{connected} rooms connected: {summary:#?}");
}

/// A reporter that lets time run again once a window opens: the wait itself happens in
/// paused time (instantly), the SSH work after it in real time.
struct ResumeOnOpen {
    inner: Recorder,
    resumed: std::sync::atomic::AtomicBool,
}

impl Reporter for ResumeOnOpen {
    fn event(&self, event: &Event) {
        if matches!(event, Event::WindowOpen { .. })
            && !self.resumed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::time::resume();
        }
        self.inner.event(event);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn wait_for_window_sleeps_until_it_opens_then_continues() {
    let lab = Lab::start(3, 54, |_| FaultPlan::default()).await;
    let pb = with_rollout(
        &lab,
        "window: { start: \"22:00\", end: \"06:00\", timezone: Europe/Oslo }",
    );
    let (playbook, devices, store) = lab.prepare(&pb);
    // 20:00 in Oslo (UTC+1 in January): the window opens in two hours.
    let start: jiff::Timestamp = "2027-01-15T19:00:00Z".parse().unwrap();
    let reporter = Arc::new(ResumeOnOpen {
        inner: Recorder::default(),
        resumed: Default::default(),
    });
    let (config, _stop) = lab.run_config(playbook, devices, store);
    tokio::time::pause();
    let wall = std::time::Instant::now();
    let summary = roomkey::engine::run(
        RunConfig {
            wait_for_window: true,
            start_time: Some(start),
            ..config
        },
        reporter.clone(),
    )
    .await;
    assert_eq!(summary.exit_code(), 0, "{summary:#?}");
    assert!(
        wall.elapsed() < std::time::Duration::from_secs(120),
        "no real two-hour wait"
    );
    let events = reporter.inner.events.lock().unwrap().clone();
    let waits: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::WindowWait { until, .. } => Some(until.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(waits.len(), 3, "every device waited");
    assert!(waits[0].starts_with("2027-01-15 22:00"), "{waits:?}");
    for name in &lab.names {
        assert!(lab.snapshot(name).await.e2ee_mode_on, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_batches_budget_and_window_decisions() {
    let lab = Lab::start(4, 55, |_| FaultPlan::default()).await;
    let pb = with_rollout(
        &lab,
        "serial: [1, \"50%\"]\nmax_fail_percentage: 10\nwindow: { start: \"00:00\", end: \"00:01\", timezone: UTC }",
    );
    let (code, stdout) = lab.plan(&pb).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("== batch 1 of 3 (1 device(s))"), "{stdout}");
    assert!(stdout.contains("== batch 2 of 3 (2 device(s))"), "{stdout}");
    assert!(
        stdout.contains("failure budget: max_fail_percentage 10% per batch"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("  window: 00:00–00:01 UTC").count(),
        4,
        "{stdout}"
    );
}
