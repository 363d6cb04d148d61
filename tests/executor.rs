//! The executor never blocks on file I/O: a device whose journal fsync hangs (a slow disk,
//! injected with the journal's test hook) stalls only itself. Every other device runs its
//! playbook to the end — real engine, real SSH to the in-process simulator — while the
//! stuck fsyncs are still held, on a current-thread runtime (one worker: a blocking fsync
//! there would stop the simulator too) and on two workers with two devices stuck at once
//! (the case: two fsyncs used to take both workers).
//!
//! No timing decides the outcome: the hook holds the stuck devices' first append until the
//! test has seen every other device finish. Only if the engine did block would the
//! watchdog (a failure detector, not a synchronisation) release them, and the test then
//! fails because the others finished after the release.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use roomkey::engine::events::{DeviceStatus, Event, Reporter};
use roomkey::journal::{DeviceJournal, StepStatus};
use roomkey::sim::FaultPlan;
use support::{playbook, room_name, Lab, TEST_POLICY};

/// How long the watchdog waits before it releases stuck devices of a broken engine.
const WATCHDOG: Duration = Duration::from_secs(60);

#[derive(Default)]
struct GateState {
    /// Devices whose first append is being held.
    held: BTreeSet<String>,
    released: bool,
}

/// One test's slow disk: the devices to hold, and whether they were let go.
struct Gate {
    dir: PathBuf,
    stuck: BTreeSet<String>,
    state: Mutex<GateState>,
    cv: Condvar,
}

impl Gate {
    fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.cv.notify_all();
    }

    fn released(&self) -> bool {
        self.state.lock().unwrap().released
    }

    /// Runs on the thread doing the journal write (the blocking pool once fixed).
    fn on_sync(&self, device: &str) {
        let mut st = self.state.lock().unwrap();
        if self.stuck.contains(device) {
            if !st.held.insert(device.to_string()) {
                return; // only the first append is slow
            }
            self.cv.notify_all();
            while !st.released {
                st = self.cv.wait(st).unwrap();
            }
        } else {
            // The others write only once every stuck device is held, so whatever they
            // complete, they complete while the stuck fsyncs are pending.
            while st.held.len() < self.stuck.len() && !st.released {
                st = self.cv.wait(st).unwrap();
            }
        }
    }
}

/// The process-wide hook dispatches by state directory, so the tests of this file can run
/// in parallel.
fn gates() -> &'static Mutex<Vec<Arc<Gate>>> {
    static GATES: OnceLock<Mutex<Vec<Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(|| {
        roomkey::journal::set_sync_hook(Some(Arc::new(|path: &Path| {
            let gate = gates()
                .lock()
                .unwrap()
                .iter()
                .find(|g| path.starts_with(&g.dir))
                .cloned();
            // Device journals only (the run log is `<playbook>.runs.jsonl`).
            let device = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.starts_with("room-"));
            if let (Some(gate), Some(device)) = (gate, device) {
                gate.on_sync(device);
            }
        })));
        Mutex::new(Vec::new())
    })
}

/// Notes, for each device that finished, whether the stuck devices had been released yet.
struct Watch {
    gate: Arc<Gate>,
    finished: Mutex<Vec<(String, bool)>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Reporter for Watch {
    fn event(&self, event: &Event) {
        if let Event::DeviceFinished { outcome } = event {
            let released = self.gate.released();
            self.finished
                .lock()
                .unwrap()
                .push((outcome.device.clone(), released));
            let _ = self.tx.send(outcome.device.clone());
        }
    }
}

async fn slow_fsync_stalls_only_its_device(rooms: usize, stuck: usize, subnet: u8) {
    let lab = Lab::start(rooms, subnet, |_| FaultPlan::default()).await;
    let pb = playbook(
        lab.path(),
        "slowdisk",
        TEST_POLICY,
        "  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"Off\" }\n",
    );
    let state_dir = lab.path().join(".roomkey");
    let gate = Arc::new(Gate {
        dir: state_dir.clone(),
        stuck: (0..stuck).map(room_name).collect(),
        state: Mutex::default(),
        cv: Condvar::new(),
    });
    gates().lock().unwrap().push(Arc::clone(&gate));
    let watchdog_gate = Arc::clone(&gate);
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        watchdog_gate.release();
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = Arc::new(Watch {
        gate: Arc::clone(&gate),
        finished: Mutex::default(),
        tx,
    });
    let (playbook, devices, store) = lab.prepare(&pb);
    let (config, _stop) = lab.run_config(playbook, devices, store);
    let run = tokio::spawn(roomkey::engine::run(
        config,
        Arc::clone(&watch) as Arc<dyn Reporter>,
    ));

    // Every device that is not stuck finishes; only then are the stuck fsyncs let go.
    let mut others = BTreeSet::new();
    while others.len() < rooms - stuck {
        let device = rx.recv().await.expect("the run ended early");
        assert!(
            !gate.stuck.contains(&device),
            "{device} finished before the others: the executor blocked until the watchdog let it go"
        );
        others.insert(device);
    }
    assert_eq!(
        gate.state.lock().unwrap().held.len(),
        stuck,
        "every stuck device was held in its fsync"
    );
    gate.release();
    let summary = run.await.unwrap();

    assert_eq!(summary.exit_code(), 0, "{summary:#?}");
    for o in &summary.outcomes {
        assert_eq!(o.status, DeviceStatus::Changed, "{}", o.device);
        assert!(!lab.snapshot(&o.device).await.e2ee_mode_on, "{}", o.device);
    }
    for (device, released) in watch.finished.lock().unwrap().iter() {
        if !gate.stuck.contains(device) {
            assert!(
                !released,
                "{device} finished only after the stuck fsyncs were released: the executor blocked"
            );
        }
    }
    // The held append was the write-ahead record: durable before the command was sent.
    for device in &gate.stuck {
        let journal =
            DeviceJournal::open_read_only(&state_dir, "slowdisk", device).expect("journal");
        let statuses: Vec<StepStatus> = journal
            .records()
            .iter()
            .filter(|r| r.step != "device")
            .map(|r| r.status)
            .collect();
        assert_eq!(
            statuses,
            [StepStatus::InFlight, StepStatus::Done],
            "{device}"
        );
    }
}

#[tokio::test]
async fn one_worker_a_stuck_fsync_stalls_only_its_device() {
    slow_fsync_stalls_only_its_device(4, 1, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_two_stuck_fsyncs_stall_only_their_devices() {
    slow_fsync_stalls_only_its_device(6, 2, 202).await;
}
