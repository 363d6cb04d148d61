//! The typed events the engine emits and the outcome types a run ends with. The engine
//! never prints: reporters (progress bars, plain lines, JSON) turn these into output.
//! Nothing here ever carries a secret: reasons are device texts or messages built from
//! redacted command lines.

use serde::Serialize;

use crate::journal::StepStatus;

/// How one device ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// Every step done, nothing changed.
    Ok,
    /// Every step done, at least one changed the device.
    Changed,
    /// A step failed (the device refused, or a check did not hold).
    Failed,
    /// No reply within the command timeout.
    TimedOut,
    /// Could not connect (or the connection dropped) after every retry.
    Unreachable,
    /// The SSH login was refused.
    AuthFailed,
    /// The device presented a host key different from the one in known_hosts.
    HostKeyChanged,
    /// The device's host key is not in known_hosts and the policy is strict.
    HostKeyUnknown,
    /// Neither the vault's current nor its pending secret is accepted by the device.
    SecretUnknown,
    /// The run stopped (Ctrl-C, budget) before this device finished; rerun to resume.
    Interrupted,
    /// The run stopped before this device started.
    NotStarted,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Ok => "ok",
            DeviceStatus::Changed => "changed",
            DeviceStatus::Failed => "failed",
            DeviceStatus::TimedOut => "timed-out",
            DeviceStatus::Unreachable => "unreachable",
            DeviceStatus::AuthFailed => "auth-failed",
            DeviceStatus::HostKeyChanged => "host-key-changed",
            DeviceStatus::HostKeyUnknown => "host-key-unknown",
            DeviceStatus::SecretUnknown => "secret-unknown",
            DeviceStatus::Interrupted => "interrupted",
            DeviceStatus::NotStarted => "not-started",
        }
    }

    pub fn is_success(self) -> bool {
        matches!(self, DeviceStatus::Ok | DeviceStatus::Changed)
    }

    pub fn is_unreachable(self) -> bool {
        matches!(self, DeviceStatus::Unreachable)
    }

    pub fn is_unfinished(self) -> bool {
        matches!(self, DeviceStatus::Interrupted | DeviceStatus::NotStarted)
    }
}

/// One step of one device, as reported.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct StepReport {
    pub id: String,
    pub kind: String,
    pub status: StepStatus,
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it was skipped, what it found, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How one device ended.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct DeviceOutcome {
    pub device: String,
    pub address: String,
    pub status: DeviceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The verified external identity (CN), when a verify step ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub steps: Vec<StepReport>,
    pub duration_ms: u64,
    pub connections: u32,
}

/// Why a run stopped before every selected device was worked on.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct StoppedEarly {
    pub reason: String,
}

/// The end of a run.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct RunSummary {
    pub playbook: String,
    pub run: String,
    pub outcomes: Vec<DeviceOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<StoppedEarly>,
    pub duration_ms: u64,
    /// `apply --check`: only read-only commands were sent.
    pub check_mode: bool,
    /// The scrypt derivations the run did for its JWEs and their CPU time (what the run's
    /// speed is measured against: `roomkey bench`).
    pub kdf: crate::kdf::KdfUsage,
}

/// Exit codes of `roomkey apply` (documented in the README and `--help`).
pub mod exit {
    /// Every selected device finished its steps.
    pub const ALL_DONE: i32 = 0;
    /// The input was invalid or the run could not start; nothing was sent.
    pub const INVALID: i32 = 1;
    /// At least one device failed (a refusal, a failed check, a timeout, a host key or
    /// login problem).
    pub const SOME_FAILED: i32 = 2;
    /// No device failed, but at least one could not be reached.
    pub const SOME_UNREACHABLE: i32 = 3;
    /// The run stopped early (Ctrl-C, a failure budget, the maintenance window); rerunning
    /// the same command resumes.
    pub const STOPPED_RESUMABLE: i32 = 4;
}

impl RunSummary {
    pub fn count(&self, status: DeviceStatus) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }

    pub fn exit_code(&self) -> i32 {
        let failed = self.outcomes.iter().any(|o| {
            !o.status.is_success() && !o.status.is_unreachable() && !o.status.is_unfinished()
        });
        let unreachable = self.outcomes.iter().any(|o| o.status.is_unreachable());
        let unfinished = self.outcomes.iter().any(|o| o.status.is_unfinished());
        if self.stopped_early.is_some() {
            // A budget, a window or Ctrl-C stopped the run: what matters first is that it
            // is unfinished and resumable (the recap lists the failures).
            exit::STOPPED_RESUMABLE
        } else if failed {
            exit::SOME_FAILED
        } else if unreachable {
            exit::SOME_UNREACHABLE
        } else if unfinished {
            exit::STOPPED_RESUMABLE
        } else {
            exit::ALL_DONE
        }
    }
}

/// What the engine tells its reporter, in order, per device.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        playbook: String,
        run: String,
        devices: usize,
        steps: usize,
        check_mode: bool,
    },
    BatchStarted {
        batch: usize,
        batches: usize,
        devices: Vec<String>,
    },
    /// The device's maintenance window is closed; waiting for it to open.
    WindowWait {
        device: String,
        until: String,
    },
    WindowOpen {
        device: String,
    },
    DeviceStarted {
        device: String,
    },
    Connecting {
        device: String,
        attempt: u32,
    },
    Connected {
        device: String,
        banner: String,
    },
    StepStarted {
        device: String,
        step: String,
    },
    StepFinished {
        device: String,
        step: StepReport,
    },
    Notice {
        device: Option<String>,
        message: String,
    },
    DeviceFinished {
        outcome: DeviceOutcome,
    },
    Stopping {
        reason: String,
    },
    RunFinished {
        summary: RunSummary,
    },
}

/// Receives the engine's events. Implementations must be cheap and never block for long:
/// they are called from device tasks.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

/// A reporter that keeps every event (tests, the demo's final table).
#[derive(Debug, Default)]
pub struct Recorder {
    pub events: std::sync::Mutex<Vec<Event>>,
}

impl Reporter for Recorder {
    fn event(&self, event: &Event) {
        if let Ok(mut v) = self.events.lock() {
            v.push(event.clone());
        }
    }
}

/// A reporter that drops everything.
#[derive(Debug, Default)]
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _event: &Event) {}
}
