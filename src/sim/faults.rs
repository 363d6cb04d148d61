//! Fault injection for simulated devices, pure and deterministic: a [`FaultPlan`] (from the
//! inventory's `sim:` block, the CLI or a test) and the [`FaultState`] that counts commands
//! and decides, for each received command, what the device does instead of behaving.
//!
//! Counting: every command frame a device receives (over all its sessions, since the
//! simulator started; `echo`/`xpreferences` included) gets the next 1-based number. A
//! trigger fires on command number `nth`, or on commands whose line contains `pattern`
//! (case-insensitive), or — with both — on the `nth` command matching `pattern`. Each
//! trigger fires at most `times` times (default 1), so a client that reconnects and resumes
//! gets past it.

use std::time::Duration;

/// When a fault fires.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// The 1-based command number (counted over all commands, or over matching ones when
    /// `pattern` is set).
    #[serde(default)]
    pub nth: Option<u64>,
    /// Case-insensitive substring of the command line.
    #[serde(default)]
    pub pattern: Option<String>,
    /// How many times the trigger fires (default 1; 0 = every time).
    #[serde(default)]
    pub times: Option<u32>,
}

impl Trigger {
    pub fn nth(n: u64) -> Self {
        Trigger {
            nth: Some(n),
            ..Default::default()
        }
    }
    pub fn pattern(p: &str) -> Self {
        Trigger {
            pattern: Some(p.to_string()),
            ..Default::default()
        }
    }
    pub fn always(mut self) -> Self {
        self.times = Some(0);
        self
    }
}

/// Answer matching commands with an error instead of executing them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    #[serde(default)]
    pub nth: Option<u64>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub times: Option<u32>,
    /// The `Reason` of the error reply.
    #[serde(default = "default_reason")]
    pub reason: String,
}

impl ErrorRule {
    /// The trigger part of the rule.
    pub fn trigger(&self) -> Trigger {
        Trigger {
            nth: self.nth,
            pattern: self.pattern.clone(),
            times: self.times,
        }
    }
}

/// A command still running on the device when its client gave up: it is not answered (as
/// with `hang`), and its effect lands only once the device has answered a later command
/// whose line contains `after` (case-insensitive; from any session). Real devices finish a
/// command they have read whether or not anybody waits for the answer, so a rerun's first
/// reads can race the landing of a killed run's last command.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandLateRule {
    #[serde(default)]
    pub nth: Option<u64>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub times: Option<u32>,
    /// The later command after whose answer the effect lands.
    pub after: String,
}

impl LandLateRule {
    /// The trigger part of the rule.
    pub fn trigger(&self) -> Trigger {
        Trigger {
            nth: self.nth,
            pattern: self.pattern.clone(),
            times: self.times,
        }
    }
}

fn default_reason() -> String {
    "Simulated failure".to_string()
}

/// The faults of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultPlan {
    /// Delay before every reply, in milliseconds.
    pub latency_ms: u64,
    /// Refuse every login.
    pub refuse_auth: bool,
    /// Present a freshly generated host key instead of the device's persistent one.
    pub wrong_host_key: bool,
    /// Drop the connection before applying the command (no reply, no state change).
    pub drop_before: Vec<Trigger>,
    /// Apply the command (state changes and is persisted), then drop without replying.
    pub drop_after: Vec<Trigger>,
    /// Never reply to the command (nor to anything after it in that session).
    pub hang: Vec<Trigger>,
    /// Answer with `(status=Error)` and this reason.
    pub error: Vec<ErrorRule>,
    /// Never answer the command, and apply it only after a later one ([`LandLateRule`]).
    pub land_late: Vec<LandLateRule>,
    /// Extra lines printed after the banner's `OK` (a variant real devices show, e.g.
    /// `Last login from 10.0.0.5 at 2024-05-10 13:14:47`); clients must cope.
    pub login_notice: Vec<String>,
    /// The host key types the device offers, in its order (catalogue hostkey.types;
    /// default: Ed25519 only). Each is persistent like the Ed25519 key.
    pub host_key_types: Vec<super::store::HostKeyType>,
    /// Concurrent TSH sessions the device serves (`Security Session MaxTotalSessions`,
    /// catalogue session.limits; default 8, inferred): one more is told so and closed.
    pub max_sessions: Option<usize>,
    /// Failed logins after which the account is locked (`Security Session
    /// MaxFailedLogins`, catalogue auth.lockout; default 5, inferred; 0 = never).
    pub max_failed_logins: Option<u32>,
    /// How long a locked account refuses every login, even a correct one
    /// (`FailedLoginsLockoutTime`; default 60 s, inferred).
    pub lockout_secs: Option<u64>,
    /// How far the device's clock is off, in seconds (a room whose clock is a year ahead
    /// sees its certificate expired).
    pub clock_offset_secs: i64,
    /// The alternatives this device plays where real devices are uncertain (fixed when
    /// the device starts).
    pub variants: super::variants::Variants,
    /// How the device's firmware reads a `populate` JWE's plaintext (`raw`, the default, or
    /// `base64url`). Not a fault but a firmware variant: the seed leaves it open, and
    /// roomkey must be safe under both.
    pub populate_reading: super::model::PopulateReading,
    /// A firmware variant that refuses (as it refuses a JWE it cannot decrypt) a JWE whose
    /// `cisco-kdf` salt it has already seen since this plan was set. The seed does not say
    /// a device accepts a repeated salt; roomkey must fall back to a salt per JWE.
    pub refuse_repeated_salt: bool,
}

impl FaultPlan {
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }
}

/// What the device does with one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Normal,
    DropBefore,
    DropAfter,
    Hang,
    /// Hang, and land the command after the device answers one containing this text.
    LandLate(String),
    Error(String),
}

#[derive(Clone, Debug, Default)]
struct TriggerState {
    matched: u64,
    fired: u32,
}

/// The counters of one device's plan.
#[derive(Debug)]
pub struct FaultState {
    plan: FaultPlan,
    seen: u64,
    drop_before: Vec<TriggerState>,
    drop_after: Vec<TriggerState>,
    hang: Vec<TriggerState>,
    land_late: Vec<TriggerState>,
    error: Vec<TriggerState>,
    /// Every JWE salt received, in order (not secret: salts travel in the clear).
    salts: Vec<Vec<u8>>,
}

fn check(t: &Trigger, st: &mut TriggerState, seq: u64, line_lower: &str) -> bool {
    let matches = match &t.pattern {
        Some(p) => line_lower.contains(&p.to_ascii_lowercase()),
        None => true,
    };
    if !matches {
        return false;
    }
    st.matched += 1;
    let hit = match (t.nth, &t.pattern) {
        (Some(n), Some(_)) => st.matched == n,
        (Some(n), None) => seq == n,
        (None, Some(_)) => true,
        (None, None) => false,
    };
    let limit = t.times.unwrap_or(1);
    if hit && (limit == 0 || st.fired < limit) {
        st.fired += 1;
        return true;
    }
    false
}

impl FaultState {
    pub fn new(plan: FaultPlan) -> Self {
        let n = |v: usize| vec![TriggerState::default(); v];
        FaultState {
            drop_before: n(plan.drop_before.len()),
            drop_after: n(plan.drop_after.len()),
            hang: n(plan.hang.len()),
            land_late: n(plan.land_late.len()),
            error: n(plan.error.len()),
            plan,
            seen: 0,
            salts: Vec::new(),
        }
    }

    /// Records a received JWE's salt; true if the device refuses it for being repeated.
    pub fn on_jwe_salt(&mut self, salt: &[u8]) -> bool {
        let repeated = self.salts.iter().any(|s| s == salt);
        self.salts.push(salt.to_vec());
        repeated && self.plan.refuse_repeated_salt
    }

    /// Every JWE salt received since the plan was set, in order.
    pub fn salts(&self) -> &[Vec<u8>] {
        &self.salts
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Counts one received command and decides its fate (first firing fault wins, in the
    /// order drop-before, hang, land-late, error, drop-after; every trigger still counts the
    /// command).
    pub fn on_command(&mut self, line: &str) -> Action {
        self.seen += 1;
        let seq = self.seen;
        let lower = line.to_ascii_lowercase();
        let fire = |triggers: &[Trigger], states: &mut [TriggerState]| {
            let mut any = None;
            for (i, (t, st)) in triggers.iter().zip(states.iter_mut()).enumerate() {
                if check(t, st, seq, &lower) && any.is_none() {
                    any = Some(i);
                }
            }
            any
        };
        let db = fire(&self.plan.drop_before, &mut self.drop_before);
        let hang = fire(&self.plan.hang, &mut self.hang);
        let land_whens: Vec<Trigger> = self
            .plan
            .land_late
            .iter()
            .map(LandLateRule::trigger)
            .collect();
        let land = fire(&land_whens, &mut self.land_late);
        let error_whens: Vec<Trigger> = self.plan.error.iter().map(ErrorRule::trigger).collect();
        let err = fire(&error_whens, &mut self.error);
        let da = fire(&self.plan.drop_after, &mut self.drop_after);
        if db.is_some() {
            Action::DropBefore
        } else if hang.is_some() {
            Action::Hang
        } else if let Some(rule) = land.and_then(|i| self.plan.land_late.get(i)) {
            Action::LandLate(rule.after.to_ascii_lowercase())
        } else if let Some(i) = err {
            Action::Error(
                self.plan
                    .error
                    .get(i)
                    .map(|e| e.reason.clone())
                    .unwrap_or_else(default_reason),
            )
        } else if da.is_some() {
            Action::DropAfter
        } else {
            Action::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_and_pattern_fire_once_by_default() {
        let mut s = FaultState::new(FaultPlan {
            drop_before: vec![Trigger::nth(2)],
            drop_after: vec![Trigger::pattern("services add")],
            ..Default::default()
        });
        assert_eq!(s.on_command("echo off"), Action::Normal);
        assert_eq!(s.on_command("xStatus X"), Action::DropBefore);
        assert_eq!(
            s.on_command("xCommand Security Certificates Services Add"),
            Action::DropAfter
        );
        assert_eq!(
            s.on_command("xCommand Security Certificates Services Add"),
            Action::Normal
        );
    }

    #[test]
    fn nth_matching_and_always_and_error() {
        let mut s = FaultState::new(FaultPlan {
            hang: vec![Trigger {
                nth: Some(2),
                pattern: Some("xstatus".into()),
                times: None,
            }],
            error: vec![ErrorRule {
                pattern: Some("Show".into()),
                times: Some(0),
                reason: "busy".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(s.on_command("xStatus A"), Action::Normal);
        assert_eq!(s.on_command("xCommand B"), Action::Normal);
        assert_eq!(s.on_command("xStatus A"), Action::Hang);
        assert_eq!(
            s.on_command("xcommand x show"),
            Action::Error("busy".into())
        );
        assert_eq!(
            s.on_command("xcommand x show"),
            Action::Error("busy".into())
        );
    }

    #[test]
    fn land_late_hangs_and_names_what_it_lands_after() {
        let mut s = FaultState::new(FaultPlan {
            land_late: vec![LandLateRule {
                pattern: Some("Populate".into()),
                after: "Deactivate".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            s.on_command("xCommand Security ClientSecret Populate"),
            Action::LandLate("deactivate".into())
        );
        assert_eq!(
            s.on_command("xCommand Security ClientSecret Populate"),
            Action::Normal
        );
    }

    #[test]
    fn deserializes_from_yaml_and_rejects_unknown() {
        let p: FaultPlan = serde_yaml::from_str(
            "latency_ms: 5\ndrop_after: [{pattern: Activate}]\nerror: [{pattern: Show, reason: x}]\n",
        )
        .unwrap();
        assert_eq!(p.latency_ms, 5);
        assert_eq!(p.error[0].reason, "x");
        assert!(serde_yaml::from_str::<FaultPlan>("bogus: 1\n").is_err());
    }
}
