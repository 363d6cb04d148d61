//! The built-in steps: what each one reads, decides and sends. Every step is idempotent by
//! construction — it reads the device first (`Services Show`, `xConfiguration`, …) and sends
//! a changing command only if the device is not already in the wanted state — so a step
//! found in-flight after a crash is simply run again: the read decides whether the command
//! had landed. Before its first changing command a step awaits `write_ahead.in_flight`, which
//! makes the journal say "in-flight" durably.
//!
//! This module owns the contract (context, outcome, errors, the write-ahead hook) and the
//! helpers every step uses; each step family lives in a module of its own.

pub mod certificate;
mod configuration;
pub mod identity;
pub mod restart;
pub mod scep;
mod secret;
mod service;
pub mod trust;
mod xcommand;

pub use certificate::{normalise_fingerprint, parse_show, show_cmd, ShownCertificate};
pub use identity::{
    external_identity_cmd, identity_certificate, parse_external_identity, ExternalIdentityStatus,
};
pub use restart::restarted_since;
pub use scep::{find_enrolled, parse_profiles, profile_cmds, scep_cmd, subject_cn};
pub use secret::{
    classify_probe, is_decrypt_failure, populate_command, probe_command, release_of, ProbeAnswer,
    PROBE_FINGERPRINT,
};
pub use service::service_add_cmd;
pub use trust::{ca_add_cmd, parse_ca_show};

use crate::journal::StepOutputs;

use crate::engine::assets::{CaCert, StepAsset};
use crate::engine::prepare::PreparedDevice;
use crate::engine::secrets::SecretStore;
use crate::kdf::SessionKeys;
use crate::playbook::Step;
use crate::secret::Secret;
use crate::ssh::{SshError, TshSession};
use crate::tsh::{Reply, ReplyStatus, TshCommand};

/// One command a step may send, as `plan` shows it: rendered from the very constructor
/// the step sends with, secrets and JWEs shown as `[redacted]`.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct PlannedCommand {
    /// The command as it would be sent, secrets shown as `[redacted]`.
    pub text: String,
    /// When it is sent (`always`, or the condition checked on the device first).
    pub when: String,
    pub read_only: bool,
}

/// What the vault says of a device's ClientSecret, for the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedState {
    Seeded,
    NotSeeded,
    Unknown,
}

/// What `plan` knows when a step renders its commands for one device.
pub struct PlanContext<'a> {
    pub device: &'a PreparedDevice,
    /// The step's position (its inputs in `device.assets`).
    pub index: usize,
    pub seed: SeedState,
}

impl PlanContext<'_> {
    fn own_fingerprint(&self) -> Option<&str> {
        self.device.identity.as_ref().map(|i| i.fingerprint())
    }
}

/// A planned command from a step's own constructor.
pub(crate) fn planned(
    cmd: Result<TshCommand, crate::tsh::EncodeError>,
    when: impl Into<String>,
) -> PlannedCommand {
    match cmd {
        Ok(c) => PlannedCommand {
            text: c.redacted_text(),
            when: when.into(),
            read_only: c.is_read_only(),
        },
        Err(e) => PlannedCommand {
            text: format!("(cannot encode: {e})"),
            when: when.into(),
            read_only: true,
        },
    }
}

/// Stands in for a secret or JWE in a planned command (rendered `[redacted]`).
pub(crate) fn placeholder() -> Secret {
    Secret::new("placeholder")
}

/// The commands a step may send on one device, in order, with notes (for `plan`).
pub fn plan(step: &Step, pc: &PlanContext<'_>) -> (Vec<PlannedCommand>, Vec<String>) {
    let mut notes = Vec::new();
    let commands = match step {
        Step::PopulateSecret(p) => secret::plan_populate(pc, p.initial, &mut notes),
        Step::RotateSecret(_) => secret::plan_rotate(),
        Step::AddCertificate(_) => certificate::plan_add(pc),
        Step::ShowCertificates(_) => certificate::plan_show(),
        Step::ActivateCertificate(a) => {
            certificate::plan_activation(pc, a.purpose, &a.certificate, true)
        }
        Step::DeactivateCertificate(t) => {
            certificate::plan_activation(pc, t.purpose, &t.certificate, false)
        }
        Step::DeleteCertificate(t) => certificate::plan_delete(pc, &t.certificate, t.force),
        Step::SetConfiguration(s) => configuration::plan(&s.path, &s.value),
        Step::VerifyExternalIdentity(_) => identity::plan(pc, &mut notes),
        Step::Xcommand(x) => xcommand::plan(x, &mut notes),
        Step::AddCaCertificate(_) => trust::plan_add(pc, &mut notes),
        Step::RemoveCaCertificate(c) => trust::plan_remove(pc, c.fingerprint.as_deref()),
        Step::AddServiceCertificate(s) => {
            service::plan(pc, s.private_key_password.as_deref(), &mut notes)
        }
        Step::ScepEnroll(s) => scep::plan_enroll(pc, s, &mut notes),
        Step::ScepRenewalProfile(p) => scep::plan_profile(p),
        Step::Restart(r) => restart::plan(r, &mut notes),
    };
    (commands, notes)
}

/// What a step will seal with the device's current ClientSecret in this session, as far
/// as can be told before connecting (the engine derives that session key before it opens
/// the SSH session, see `DeviceRun::expects_current_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealsWithCurrent {
    /// Never (the step sends no JWE keyed from the current secret).
    Never,
    /// Its proofs, once the device is recorded as holding a secret (seeded, pending,
    /// secret-unknown) or an earlier attempt was interrupted: `populate_secret`.
    Proofs,
    /// Its payload, unless the step is already done (and never in check mode): the
    /// certificate and key (`add_certificate`), the fingerprint (activation).
    Payload,
}

/// [`SealsWithCurrent`] of `step`.
pub fn seals_with_current(step: &Step) -> SealsWithCurrent {
    match step {
        Step::PopulateSecret(_) => SealsWithCurrent::Proofs,
        Step::AddCertificate(_) | Step::ActivateCertificate(_) | Step::DeactivateCertificate(_) => {
            SealsWithCurrent::Payload
        }
        _ => SealsWithCurrent::Never,
    }
}

/// Reasons starting with this mark a device whose ClientSecret is unknown.
pub const SECRET_UNKNOWN_PREFIX: &str = "secret-unknown:";

pub struct StepContext<'a> {
    pub session: &'a mut TshSession,
    pub prepared: &'a PreparedDevice,
    /// This session's JWE keys (one salt, one derivation per secret; see `kdf`).
    pub kdf: &'a SessionKeys,
    pub secrets: &'a dyn SecretStore,
    /// Outputs of earlier steps (fingerprints).
    pub outputs: &'a StepOutputs,
    /// `apply --check`: read, but never send a changing command.
    pub check_mode: bool,
    /// The journal found this step in-flight: an earlier attempt may have reached the device.
    pub resuming: bool,
    /// The journal says an earlier run did this step (same inputs); the device is read
    /// anyway, and a change now means the device drifted.
    pub previously_done: bool,
    /// An earlier step of this run changed this device (or, in check mode, would).
    pub changed_earlier: bool,
    /// This step's own outputs as the journal holds them (those recorded with its
    /// write-ahead record by an earlier attempt, e.g. the uptime before a restart).
    pub step_outputs: &'a StepOutputs,
    /// How to log in again (the `restart` step replaces `session`).
    pub connect: &'a crate::ssh::ConnectOptions,
    /// The step's position in the playbook (its inputs in `prepared.assets`).
    pub index: usize,
}

/// A step that completed.
#[derive(Debug, Default)]
pub struct StepDone {
    pub changed: bool,
    pub outputs: StepOutputs,
    pub note: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The device refused, or a check failed: final for this device in this run.
    #[error("{0}")]
    Refused(String),
    /// The session failed: the step's outcome is unknown; the engine retries or gives up.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A local problem (journal, vault, encoding).
    #[error("{0}")]
    Local(String),
}

/// The write-ahead hook a step calls before its first changing command.
pub trait WriteAheadLog: Send {
    /// Journals the step in flight; the future completes only once the record is durable
    /// (fsynced), so a step that awaits it before sending keeps the write-ahead invariant.
    /// The outputs are kept with that record, for a resumed attempt to read back
    /// (`step_outputs`). The engine's implementation does the file I/O off the async
    /// workers, so a slow disk delays only this device.
    fn in_flight<'a>(
        &'a mut self,
        what: &'a str,
        outputs: StepOutputs,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// A plain closure is a write-ahead hook that completes at once (for callers that keep no
/// journal, e.g. a one-off CLI session).
impl<F> WriteAheadLog for F
where
    F: FnMut(&str, StepOutputs) -> Result<(), String> + Send,
{
    fn in_flight<'a>(
        &'a mut self,
        what: &'a str,
        outputs: StepOutputs,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        let result = self(what, outputs);
        Box::pin(std::future::ready(result))
    }
}

/// What steps receive: the engine's write-ahead hook.
pub type WriteAhead<'w> = dyn WriteAheadLog + 'w;

pub(crate) fn unchanged(note: impl Into<String>) -> StepDone {
    StepDone {
        changed: false,
        outputs: StepOutputs::default(),
        note: Some(note.into()),
    }
}

pub(crate) fn changed(note: impl Into<String>) -> StepDone {
    StepDone {
        changed: true,
        outputs: StepOutputs::default(),
        note: Some(note.into()),
    }
}

pub(crate) fn would(cmd: &TshCommand) -> StepDone {
    StepDone {
        changed: true,
        outputs: StepOutputs::default(),
        note: Some(format!("would send: {}", cmd.redacted_line())),
    }
}

pub(crate) fn local<E: std::fmt::Display>(e: E) -> StepError {
    StepError::Local(e.to_string())
}

pub(crate) async fn send(ctx: &mut StepContext<'_>, cmd: &TshCommand) -> Result<Reply, StepError> {
    Ok(ctx.session.run(cmd).await?)
}

/// The device's refusal as a message; it names the command by its redacted line only.
fn refusal(cmd: &TshCommand, reply: &Reply) -> String {
    match &reply.status {
        ReplyStatus::NotRecognized => format!(
            "device does not recognise `{}` (is its RoomOS too old?)",
            cmd.redacted_line()
        ),
        _ => format!(
            "device refused `{}`: {}",
            cmd.redacted_line(),
            reply.reason().unwrap_or("no reason given")
        ),
    }
}

pub(crate) fn require_ok(cmd: &TshCommand, reply: &Reply) -> Result<(), StepError> {
    if reply.is_ok() {
        Ok(())
    } else {
        Err(StepError::Refused(refusal(cmd, reply)))
    }
}

/// Runs one step.
pub async fn execute(
    step: &Step,
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    match step {
        Step::PopulateSecret(p) => secret::populate_secret(ctx, p.initial, write_ahead).await,
        Step::RotateSecret(_) => secret::rotate_secret(ctx, write_ahead).await,
        Step::AddCertificate(_) => certificate::add_certificate(ctx, write_ahead).await,
        Step::ShowCertificates(_) => certificate::show_certificates(ctx).await,
        Step::ActivateCertificate(a) => {
            certificate::set_activation(ctx, a.purpose, &a.certificate, true, write_ahead).await
        }
        Step::DeactivateCertificate(t) => {
            certificate::set_activation(ctx, t.purpose, &t.certificate, false, write_ahead).await
        }
        Step::DeleteCertificate(t) => {
            certificate::delete_certificate(ctx, &t.certificate, t.force, write_ahead).await
        }
        Step::SetConfiguration(s) => {
            configuration::set_configuration(ctx, &s.path, &s.value, write_ahead).await
        }
        Step::VerifyExternalIdentity(_) => identity::verify_external_identity(ctx).await,
        Step::Xcommand(x) => xcommand::raw_xcommand(ctx, x, write_ahead).await,
        Step::AddCaCertificate(_) => trust::add_ca(ctx, write_ahead).await,
        Step::RemoveCaCertificate(c) => {
            trust::remove_ca(ctx, c.fingerprint.as_deref(), write_ahead).await
        }
        Step::AddServiceCertificate(s) => {
            service::add_service(ctx, s.private_key_password.as_deref(), write_ahead).await
        }
        Step::ScepEnroll(s) => scep::scep_enroll(ctx, s, write_ahead).await,
        Step::ScepRenewalProfile(p) => scep::renewal_profile(ctx, p, write_ahead).await,
        Step::Restart(r) => restart::restart(ctx, r, write_ahead).await,
    }
}

// ---- Helpers of the certificate steps ---------------------------------------------------

fn asset<'a>(ctx: &StepContext<'a>) -> Result<&'a StepAsset, StepError> {
    ctx.prepared.assets.get(&ctx.index).ok_or_else(|| {
        StepError::Local("the step's files were not loaded in preflight (internal error)".into())
    })
}

fn bundle<'a>(ctx: &StepContext<'a>) -> Result<Option<&'a [CaCert]>, StepError> {
    match ctx.prepared.assets.get(&ctx.index) {
        Some(StepAsset::CaBundle { certs, .. }) => Ok(Some(certs)),
        None => Ok(None),
        Some(_) => Err(StepError::Local(
            "unexpected step input (internal error)".into(),
        )),
    }
}

/// A named vault credential (the name may be templated per device, e.g. a one-time
/// SCEP challenge per room: `scep-{name}`).
fn vault_credential(
    ctx: &StepContext<'_>,
    template: Option<&str>,
) -> Result<Option<Secret>, StepError> {
    let Some(template) = template else {
        return Ok(None);
    };
    let device = &ctx.prepared.device;
    let name = crate::inventory::expand_for(template, device).map_err(StepError::Local)?;
    ctx.secrets
        .credential(device, &name)
        .map(Some)
        .map_err(local)
}

/// (fingerprint, `other` field) of every `<prefix> <n>` item of a reply, in order.
fn fingerprint_items(reply: &Reply, prefix: &str, other: &str) -> Vec<(String, String)> {
    reply
        .items(prefix)
        .iter()
        .filter_map(|item| {
            Some((
                normalise_fingerprint(item.get("Fingerprint")?),
                item.get(other).unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Journals the step in flight, sends a changing command and requires the device's OK.
async fn change(
    ctx: &mut StepContext<'_>,
    cmd: &TshCommand,
    what: &str,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<(), StepError> {
    write_ahead.in_flight(what, StepOutputs::default()).await?;
    let reply = send(ctx, cmd).await?;
    require_ok(cmd, &reply)
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Local(message)
    }
}
