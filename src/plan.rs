//! The dry-run plan: per device, each step, whether the journal would skip it, and the exact
//! commands it would send — secrets and JWEs replaced by `[redacted]`. Pure: built from
//! prepared devices, the playbook and the journal's step states; connects to nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::prepare::PreparedDevice;
use crate::journal::StepStatus;
use crate::playbook::{CertificateRef, Playbook, Purpose, Step};
use crate::secret::Secret;
use crate::tsh::TshCommand;

/// One command a step may send.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedCommand {
    /// The command as it would be sent, secrets shown as `[redacted]`.
    pub text: String,
    /// When it is sent (`always`, or the condition checked on the device first).
    pub when: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedStep {
    pub id: String,
    pub kind: String,
    /// `run`, `skip (done in an earlier run)`, or `re-check (in-flight in an earlier run)`.
    pub action: String,
    pub commands: Vec<PlannedCommand>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

/// What the plan knows about a device's secret bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedState {
    Seeded,
    NotSeeded,
    Unknown,
}

const PLACEHOLDER: &str = "placeholder";

fn cmd(result: Result<TshCommand, crate::tsh::EncodeError>, when: &str) -> PlannedCommand {
    match result {
        Ok(c) => PlannedCommand {
            text: c.redacted_text(),
            when: when.to_string(),
            read_only: c.is_read_only(),
        },
        Err(e) => PlannedCommand {
            text: format!("(cannot encode: {e})"),
            when: when.to_string(),
            read_only: true,
        },
    }
}

fn show() -> PlannedCommand {
    cmd(
        TshCommand::xcommand("Security Certificates Services Show"),
        "always",
    )
}

fn secret_placeholder() -> Secret {
    Secret::new(PLACEHOLDER)
}

fn populate(when: &str) -> PlannedCommand {
    cmd(
        TshCommand::xcommand("Security ClientSecret Populate")
            .and_then(|c| c.param_secret("Secret", &secret_placeholder())),
        when,
    )
}

fn fp_text(which: &CertificateRef, own: Option<&str>) -> String {
    match which {
        CertificateRef::New => own.unwrap_or("<certificate fingerprint>").to_string(),
        CertificateRef::Previous => "<previously active certificate>".into(),
        CertificateRef::Fingerprint(fp) => fp.clone(),
        CertificateRef::Enrolled => "<certificate enrolled by scep_enroll>".into(),
        CertificateRef::Service => "<certificate added by add_service_certificate>".into(),
    }
}

fn ca_show() -> PlannedCommand {
    cmd(
        TshCommand::xcommand("Security Certificates CA Show"),
        "always",
    )
}

/// The commands of the seed-001 certificate steps, from the device's resolved inputs.
fn cert_step_commands(
    step: &Step,
    device: &PreparedDevice,
    index: usize,
    notes: &mut Vec<String>,
) -> Vec<PlannedCommand> {
    use crate::engine::assets::StepAsset;
    use crate::engine::steps;
    let asset = device.assets.get(&index);
    match (step, asset) {
        (Step::AddCaCertificate(_), Some(StepAsset::CaBundle { path, certs })) => {
            let fps: Vec<&str> = certs.iter().map(|c| c.fingerprint.as_str()).collect();
            notes.push(format!(
                "{}: {} CA certificate(s): {}",
                path.display(),
                certs.len(),
                fps.join(", ")
            ));
            let all: Vec<&crate::engine::assets::CaCert> = certs.iter().collect();
            vec![
                ca_show(),
                cmd(
                    steps::ca_add_cmd(&all),
                    "with only the certificates CA Show does not list (none listed: all of them)",
                ),
            ]
        }
        (Step::RemoveCaCertificate(c), asset) => {
            let targets: Vec<String> = match (&c.fingerprint, asset) {
                (Some(fp), _) => vec![fp.to_ascii_lowercase()],
                (None, Some(StepAsset::CaBundle { certs, .. })) => {
                    certs.iter().map(|c| c.fingerprint.clone()).collect()
                }
                _ => Vec::new(),
            };
            std::iter::once(ca_show())
                .chain(targets.iter().map(|fp| {
                    cmd(
                        TshCommand::xcommand("Security Certificates CA Delete")
                            .and_then(|c| c.param("Fingerprint", fp)),
                        &format!("if {fp} is listed"),
                    )
                }))
                .collect()
        }
        (Step::AddServiceCertificate(s), Some(StepAsset::Service(svc))) => {
            let password = s.private_key_password.as_ref().map(|name| {
                notes.push(format!(
                    "PrivateKeyPassword comes from vault credential '{name}'"
                ));
                secret_placeholder()
            });
            vec![
                show(),
                cmd(
                    steps::service_add_cmd(&secret_placeholder(), password.as_ref()),
                    &format!(
                        "if {} is not listed (body: {} and its key)",
                        svc.fingerprint,
                        svc.certificate_path.display()
                    ),
                ),
            ]
        }
        (Step::ScepEnroll(s), Some(StepAsset::Scep(values))) => {
            if let Some(name) = &s.challenge_password {
                notes.push(format!(
                    "ChallengePassword comes from vault credential '{name}'"
                ));
            }
            let cn = values
                .iter()
                .find(|(n, _)| *n == "CommonName")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            let challenge = s.challenge_password.as_ref().map(|_| secret_placeholder());
            vec![
                ca_show(),
                show(),
                cmd(
                    steps::scep_cmd(values, challenge.as_ref()),
                    &format!(
                        "if no certificate for CN={cn} issued by that CA is listed (the issuer is \
                         known only if CA Show lists the CA; otherwise it enrols)"
                    ),
                ),
                cmd(
                    TshCommand::xcommand("Security Certificates Services Show"),
                    "after the request: finds the enrolled certificate's fingerprint",
                ),
            ]
        }
        (Step::ScepRenewalProfile(p), _) => match steps::profile_cmds(p) {
            Ok(cmds) => cmds
                .into_iter()
                .enumerate()
                .map(|(i, c)| PlannedCommand {
                    text: c.redacted_text(),
                    when: if i == 0 {
                        "always".into()
                    } else {
                        "if the profile is not already as wanted".into()
                    },
                    read_only: c.is_read_only(),
                })
                .collect(),
            Err(e) => vec![cmd(Err(e), "never")],
        },
        (Step::Restart(r), _) => {
            notes.push(format!(
                "then waits up to {}s for the device to accept SSH with a lower uptime, logs in \
                 again and runs the next step on the new session",
                r.timeout.as_secs()
            ));
            vec![
                cmd(TshCommand::xstatus("SystemUnit Uptime"), "always"),
                cmd(
                    TshCommand::xcommand("SystemUnit Boot"),
                    "unless an earlier attempt's boot already restarted it (lower uptime)",
                ),
            ]
        }
        _ => {
            notes.push("the step's inputs were not resolved for this device".into());
            Vec::new()
        }
    }
}

/// The commands a step may send, in order.
fn step_commands(
    step: &Step,
    index: usize,
    device: &PreparedDevice,
    seed: SeedState,
) -> (Vec<PlannedCommand>, Vec<String>) {
    let own_fp = device
        .identity
        .as_ref()
        .map(|i| i.fingerprint().to_string());
    let mut notes = Vec::new();
    let commands = match step {
        Step::PopulateSecret(p) => match seed {
            SeedState::Seeded => vec![populate(
                "always: a no-op populate JWE keyed from the current secret proves the device \
                 holds it (if a rotation is pending, also one under the pending secret)",
            )],
            _ => {
                if p.initial {
                    notes.push(
                        "WARNING: first seeding sends the ClientSecret in PLAINTEXT over the \
                         network (base64url); do it on an unregistered device or a trusted \
                         network"
                            .into(),
                    );
                    vec![
                        populate("if the vault records the device as never seeded: plaintext first seeding"),
                        populate("otherwise, or if refused: a no-op populate JWE under the same secret proves the device holds it"),
                    ]
                } else {
                    notes.push("fails unless the vault records the device as seeded".into());
                    vec![populate(
                        "if seeded: a no-op populate JWE proves the device holds the current secret",
                    )]
                }
            }
        },
        Step::RotateSecret(_) => vec![
            populate("always: populate JWE with a new secret, keyed from the current one (the new one is saved in the vault as pending first)"),
            populate("if refused: populate JWE new-under-new proves an earlier rotation landed"),
        ],
        Step::AddCertificate(_) => vec![
            show(),
            cmd(
                TshCommand::xcommand("Security Certificates Services Add")
                    .and_then(|c| c.param_literal("IsEncrypted", "True"))
                    .and_then(|c| c.body_secret(&secret_placeholder())),
                &format!(
                    "if {} is not listed (body: add JWE of certificate + key)",
                    own_fp.as_deref().unwrap_or("the certificate")
                ),
            ),
        ],
        Step::ShowCertificates(_) => vec![show()],
        Step::ActivateCertificate(a) => {
            let fp = fp_text(&a.certificate, own_fp.as_deref());
            vec![show(), activation_cmd("Activate", a.purpose, &fp)]
        }
        Step::DeactivateCertificate(t) => {
            let fp = fp_text(&t.certificate, own_fp.as_deref());
            vec![show(), activation_cmd("Deactivate", t.purpose, &fp)]
        }
        Step::DeleteCertificate(t) => {
            let fp = fp_text(&t.certificate, own_fp.as_deref());
            vec![
                show(),
                cmd(
                    TshCommand::xcommand("Security Certificates Services Delete")
                        .and_then(|c| c.param("Fingerprint", &fp)),
                    &format!("if {fp} is listed"),
                ),
            ]
        }
        Step::SetConfiguration(s) => vec![
            cmd(TshCommand::xconfiguration(&s.path), "always"),
            cmd(
                TshCommand::xconfiguration_set(&s.path, &s.value),
                &format!("if not already {}", s.value),
            ),
        ],
        Step::VerifyExternalIdentity(_) => {
            notes.push(format!(
                "expects a valid external identity '{}'",
                device.expected_identity.as_deref().unwrap_or("(any)")
            ));
            vec![cmd(
                TshCommand::xstatus("Conference EndToEndEncryption ExternalIdentity"),
                "always",
            )]
        }
        Step::Xcommand(x) => {
            let mut built = TshCommand::xcommand(&x.command);
            for (k, v) in &x.params {
                built = built.and_then(|c| c.param(k, v));
            }
            vec![cmd(built, "always")]
        }
        Step::AddCaCertificate(_)
        | Step::RemoveCaCertificate(_)
        | Step::AddServiceCertificate(_)
        | Step::ScepEnroll(_)
        | Step::ScepRenewalProfile(_)
        | Step::Restart(_) => cert_step_commands(step, device, index, &mut notes),
    };
    (commands, notes)
}

fn activation_cmd(verb: &str, purpose: Purpose, fp: &str) -> PlannedCommand {
    let base = TshCommand::xcommand(&format!("Security Certificates Services {verb}"))
        .and_then(|c| c.param_literal("Purpose", purpose.as_str()));
    let built = if purpose == Purpose::WebexIdentity {
        base.and_then(|c| c.param_secret("Fingerprint", &secret_placeholder()))
    } else {
        base.and_then(|c| c.param("Fingerprint", fp))
    };
    let state = if verb == "Activate" {
        "active"
    } else {
        "inactive"
    };
    let jwe = if purpose == Purpose::WebexIdentity {
        format!(
            " (fingerprint {fp} sent as a {} JWE)",
            verb.to_ascii_lowercase()
        )
    } else {
        String::new()
    };
    cmd(
        built,
        &format!(
            "if {fp} is not already {state} for {}{jwe}",
            purpose.as_str()
        ),
    )
}

/// Builds the plan of one device.
pub fn device_plan(
    device: &PreparedDevice,
    playbook: &Playbook,
    journal: &BTreeMap<String, StepStatus>,
    seed: SeedState,
    fresh: bool,
) -> DevicePlan {
    let steps = playbook
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let id = playbook.step_id(i);
            let status = if fresh {
                StepStatus::Pending
            } else {
                journal.get(&id).copied().unwrap_or_default()
            };
            let (commands, mut notes) = step_commands(step, i, device, seed);
            let action = match status {
                StepStatus::Done | StepStatus::Skipped => {
                    return PlannedStep {
                        id,
                        kind: step.kind().into(),
                        action: "skip (done in an earlier run)".into(),
                        commands: vec![],
                        notes: vec![],
                    }
                }
                StepStatus::InFlight => {
                    notes.push(
                        "was in flight when an earlier run stopped: the device is read first, \
                         so nothing is applied twice"
                            .into(),
                    );
                    "re-check and run"
                }
                StepStatus::Failed => "run again (failed in an earlier run)",
                StepStatus::Pending => "run",
            };
            PlannedStep {
                id,
                kind: step.kind().into(),
                action: action.into(),
                commands,
                notes,
            }
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
