//! The dry-run plan: per device, each step as it applies to that device (the identity the
//! engine journals), what a run would do with it, and the exact commands it may send —
//! rendered by each step's own module from the constructors it sends with, secrets and JWEs
//! replaced by `[redacted]`. Pure: built from prepared devices, the playbook and the
//! journal's step states; connects to nothing. Every run reads the device, so the plan says
//! what is *checked*; `apply --check` says what would change.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::prepare::PreparedDevice;
use crate::engine::resolve;
use crate::engine::steps::{self, PlanContext};
use crate::journal::{StepState, StepStatus};
use crate::playbook::{Playbook, Step};

pub use crate::engine::steps::{PlannedCommand, SeedState};

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct PlannedStep {
    /// The step's journal identity (kind + digest of its inputs on this device).
    pub id: String,
    pub kind: String,
    /// What a run would do: read and converge, re-check a write found in flight, skip an
    /// action done earlier in the same run, or stop on an unknown outcome.
    pub action: String,
    pub commands: Vec<PlannedCommand>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct DevicePlan {
    pub device: String,
    pub address: String,
    /// The rolling batch (1-based) the device runs in.
    pub batch: usize,
    /// The maintenance-window decision if the run started now.
    pub window: Option<String>,
    pub identity: Option<String>,
    pub fingerprint: Option<String>,
    pub steps: Vec<PlannedStep>,
}

/// What the plan knows of the run a real `apply` would work in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedRun {
    /// A new run.
    New,
    /// The interrupted run with this id, which `apply` would continue.
    Continue(String),
}

impl PlannedRun {
    fn id(&self) -> &str {
        match self {
            PlannedRun::New => "(next run)",
            PlannedRun::Continue(id) => id,
        }
    }
}

/// The action a run would take for one step, from the journal's record of it.
fn step_action(
    step: &Step,
    rs: &resolve::ResolvedStep,
    state: &StepState,
    run: &PlannedRun,
    notes: &mut Vec<String>,
) -> String {
    let this_run = matches!(run, PlannedRun::Continue(id) if *id == state.run);
    if rs.once_per_run && this_run && state.status == StepStatus::Done {
        return "skip (done earlier in the interrupted run, which apply continues)".into();
    }
    match state.status {
        StepStatus::InFlight => {
            if let Step::Xcommand(x) = step {
                if !x.read_only && !x.idempotent {
                    return format!(
                        "stop: outcome unknown (was in flight when an earlier run stopped); \
                         check the device, then apply --confirm-resend {}",
                        rs.id
                    );
                }
            }
            notes.push(
                "was in flight when an earlier run stopped: the device is read first, so \
                 nothing is applied twice"
                    .into(),
            );
            "re-check and run".into()
        }
        StepStatus::Done if !rs.once_per_run => {
            notes.push(
                "an earlier run did this; the device is read again and changed only if it no \
                 longer matches"
                    .into(),
            );
            "read the device; change only what differs".into()
        }
        StepStatus::Failed => "run again (failed in an earlier run)".into(),
        _ if rs.once_per_run => "run (once in this run)".into(),
        _ => "read the device; change only what differs".into(),
    }
}

/// Builds the plan of one device: the steps as they apply to it (the same identities the
/// engine journals), each with the commands its own module renders.
pub fn device_plan(
    device: &PreparedDevice,
    playbook: &Playbook,
    journal: &BTreeMap<String, StepState>,
    seed: SeedState,
    run: &PlannedRun,
) -> DevicePlan {
    let resolved = resolve::resolve(playbook, device, run.id());
    let finished_in_run = journal.get(crate::engine::DEVICE_RECORD).is_some_and(|d| {
        matches!(run, PlannedRun::Continue(id) if *id == d.run) && d.status == StepStatus::Done
    });
    let steps = resolved
        .iter()
        .filter_map(|rs| {
            let step = playbook.steps.get(rs.index)?;
            let state = journal.get(&rs.id).cloned().unwrap_or_default();
            if finished_in_run {
                return Some(PlannedStep {
                    id: rs.id.clone(),
                    kind: rs.kind.into(),
                    action: "skip (the device finished in the interrupted run, which apply \
                             continues)"
                        .into(),
                    commands: Vec::new(),
                    notes: Vec::new(),
                });
            }
            let pc = PlanContext {
                device,
                index: rs.index,
                seed,
            };
            let (commands, mut notes) = steps::plan(step, &pc);
            let action = step_action(step, rs, &state, run, &mut notes);
            Some(PlannedStep {
                id: rs.id.clone(),
                kind: rs.kind.into(),
                action,
                commands,
                notes,
            })
        })
        .collect();
    DevicePlan {
        device: device.device.name.clone(),
        address: device.device.address(),
        batch: 1,
        window: None,
        identity: device.expected_identity.clone(),
        fingerprint: device
            .identity
            .as_ref()
            .map(|i| i.fingerprint().to_string()),
        steps,
    }
}

/// Assigns batches (`serial`) and window decisions (as if the run started at `now`).
pub fn schedule(
    plans: &mut [DevicePlan],
    devices: &[PreparedDevice],
    playbook: &Playbook,
    now: jiff::Timestamp,
) {
    use crate::engine::rollout::{batch_sizes, local_time, WindowDecision};
    let sizes = batch_sizes(plans.len(), &playbook.serial);
    let mut batch_of = Vec::new();
    for (b, size) in sizes.iter().enumerate() {
        batch_of.extend(std::iter::repeat_n(b + 1, *size));
    }
    for (i, (plan, device)) in plans.iter_mut().zip(devices).enumerate() {
        plan.batch = batch_of.get(i).copied().unwrap_or(1);
        let window = device.device.window.as_ref().or(playbook.window.as_ref());
        plan.window = window.map(|w| {
            let estimate = playbook.policy.device_estimate;
            match w.decide(now, estimate) {
                WindowDecision::Fits { closes } => format!(
                    "{}: open until {} — would start now",
                    w.describe(),
                    local_time(closes, &w.tz)
                ),
                WindowDecision::TooLate { closes } => format!(
                    "{}: closes at {}, too soon for the estimated {}s — would not start \
                     (--wait-for-window waits for the next one)",
                    w.describe(),
                    local_time(closes, &w.tz),
                    estimate.as_secs()
                ),
                WindowDecision::Closed { opens } => format!(
                    "{}: closed until {} — would not start (--wait-for-window waits)",
                    w.describe(),
                    local_time(opens, &w.tz)
                ),
            }
        });
    }
}

/// Renders plans as text.
pub fn render(playbook: &Playbook, plans: &[DevicePlan], warnings: &[String]) -> String {
    let mut out = format!(
        "PLAN {} — {} device(s), {} step(s), concurrency {}; nothing is sent by `plan`\n",
        playbook.name,
        plans.len(),
        playbook.steps.len(),
        playbook.policy.concurrency
    );
    for w in warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let budget = &playbook.budget;
    let mut limits = Vec::new();
    if let Some(p) = budget.max_fail_percentage {
        limits.push(format!("max_fail_percentage {p}% per batch"));
    }
    if let Some(m) = budget.max_failures {
        limits.push(format!("max_failures {m}"));
    }
    if budget.any_errors_fatal {
        limits.push("any_errors_fatal".into());
    }
    if !limits.is_empty() {
        out.push_str(&format!("failure budget: {}\n", limits.join(", ")));
    }
    let batches = plans.iter().map(|p| p.batch).max().unwrap_or(0);
    let mut current = 0;
    for p in plans {
        if p.batch != current {
            current = p.batch;
            let n = plans.iter().filter(|q| q.batch == current).count();
            out.push_str(&format!(
                "\n== batch {current} of {batches} ({n} device(s))\n"
            ));
        }
        out.push_str(&format!("\n{} ({})", p.device, p.address));
        if let Some(id) = &p.identity {
            out.push_str(&format!(" identity {id}"));
        }
        if let Some(fp) = &p.fingerprint {
            out.push_str(&format!(" certificate {fp}"));
        }
        out.push('\n');
        if let Some(w) = &p.window {
            out.push_str(&format!("  window: {w}\n"));
        }
        for s in &p.steps {
            out.push_str(&format!("  {} — {}\n", s.id, s.action));
            for n in &s.notes {
                out.push_str(&format!("      note: {n}\n"));
            }
            for c in &s.commands {
                out.push_str(&format!("      [{}]\n", c.when));
                for line in c.text.lines() {
                    out.push_str(&format!("        {line}\n"));
                }
            }
        }
    }
    out
}
