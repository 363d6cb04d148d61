//! The built-in steps: what each one reads, decides and sends. Every step is idempotent by
//! construction — it reads the device first (`Services Show`, `xConfiguration`, …) and sends
//! a changing command only if the device is not already in the wanted state — so a step
//! found in-flight after a crash is simply run again: the read decides whether the command
//! had landed. Before its first changing command a step calls `write_ahead`, which makes the
//! journal say "in-flight" durably.

use std::collections::BTreeMap;

use crate::engine::cert_steps;
use crate::engine::prepare::PreparedDevice;
use crate::engine::secrets::SecretStore;
use crate::jwe::{self, Action};
use crate::kdf::KdfPool;
use crate::playbook::{CertificateRef, Purpose, Step};
use crate::secret::Secret;
use crate::ssh::{SshError, TshSession};
use crate::tsh::{Reply, ReplyStatus, TshCommand};

/// Reasons starting with this mark a device whose ClientSecret is unknown.
pub const SECRET_UNKNOWN_PREFIX: &str = "secret-unknown:";

pub struct StepContext<'a> {
    pub session: &'a mut TshSession,
    pub prepared: &'a PreparedDevice,
    pub kdf: &'a KdfPool,
    pub secrets: &'a dyn SecretStore,
    /// Outputs of earlier steps (fingerprints).
    pub outputs: &'a BTreeMap<String, String>,
    /// `apply --check`: read, but never send a changing command.
    pub check_mode: bool,
    /// The journal found this step in-flight: an earlier attempt may have reached the device.
    pub resuming: bool,
    /// This step's own outputs as the journal holds them (those recorded with its
    /// write-ahead record by an earlier attempt, e.g. the uptime before a restart).
    pub step_outputs: &'a BTreeMap<String, String>,
    /// How to log in again (the `restart` step replaces `session`).
    pub connect: &'a crate::ssh::ConnectOptions,
    /// The step's position in the playbook (its inputs in `prepared.assets`).
    pub index: usize,
}

/// A step that completed.
#[derive(Debug, Default)]
pub struct StepDone {
    pub changed: bool,
    pub outputs: BTreeMap<String, String>,
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

/// Journals the step in flight (fsynced) before its first changing command. The outputs
/// are kept with that record, for a resumed attempt to read back (`step_outputs`).
pub type WriteAhead<'w> =
    dyn FnMut(&str, BTreeMap<String, String>) -> Result<(), String> + Send + 'w;

pub(crate) fn unchanged(note: impl Into<String>) -> StepDone {
    StepDone {
        changed: false,
        outputs: BTreeMap::new(),
        note: Some(note.into()),
    }
}

pub(crate) fn would(cmd: &TshCommand) -> StepDone {
    StepDone {
        changed: true,
        outputs: BTreeMap::new(),
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
        Step::PopulateSecret(p) => populate_secret(ctx, p.initial, write_ahead).await,
        Step::RotateSecret(_) => rotate_secret(ctx, write_ahead).await,
        Step::AddCertificate(_) => add_certificate(ctx, write_ahead).await,
        Step::ShowCertificates(_) => show_certificates(ctx).await,
        Step::ActivateCertificate(a) => {
            set_activation(ctx, a.purpose, &a.certificate, true, write_ahead).await
        }
        Step::DeactivateCertificate(t) => {
            set_activation(ctx, t.purpose, &t.certificate, false, write_ahead).await
        }
        Step::DeleteCertificate(t) => delete_certificate(ctx, &t.certificate, write_ahead).await,
        Step::SetConfiguration(s) => set_configuration(ctx, &s.path, &s.value, write_ahead).await,
        Step::VerifyExternalIdentity(_) => verify_external_identity(ctx).await,
        Step::Xcommand(x) => raw_xcommand(ctx, x, write_ahead).await,
        Step::AddCaCertificate(_) => cert_steps::add_ca(ctx, write_ahead).await,
        Step::RemoveCaCertificate(c) => {
            cert_steps::remove_ca(ctx, c.fingerprint.as_deref(), write_ahead).await
        }
        Step::AddServiceCertificate(s) => {
            cert_steps::add_service(ctx, s.private_key_password.as_deref(), write_ahead).await
        }
        Step::ScepEnroll(s) => cert_steps::scep_enroll(ctx, s, write_ahead).await,
        Step::ScepRenewalProfile(p) => cert_steps::renewal_profile(ctx, p, write_ahead).await,
        Step::Restart(r) => cert_steps::restart(ctx, r.timeout, write_ahead).await,
    }
}

// ---- ClientSecret ----------------------------------------------------------------------

fn populate_cmd(value: Secret) -> Result<TshCommand, StepError> {
    TshCommand::xcommand("Security ClientSecret Populate")
        .and_then(|c| c.param_secret("Secret", &value))
        .map_err(local)
}

/// What a device answered to a populate JWE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PopulateAnswer {
    /// Accepted: the device holds the secret the JWE was keyed from (and now the one it
    /// carried).
    Accepted,
    /// Refused because the payload could not be decrypted: the device does not hold the
    /// secret the JWE was keyed from. The message names the command by its redacted line.
    DecryptFailed(String),
    /// Refused for another reason (no secret at all, a busy device, …): proves nothing
    /// about which secret the device holds.
    Refused(String),
}

/// Whether a refusal reason says the payload could not be decrypted (pure). Devices word
/// it "Failed to decrypt the payload"; any mention of decryption counts. Only this kind of
/// refusal may count towards `secret-unknown`: an unrecognised wording yields a plain
/// failure, never a wrong verdict.
pub fn is_decrypt_failure(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("decrypt")
}

/// Classifies the reply to a populate JWE (pure; tested with fixtures).
pub fn classify_populate(cmd: &TshCommand, reply: &Reply) -> PopulateAnswer {
    if reply.is_ok() {
        PopulateAnswer::Accepted
    } else if matches!(reply.status, ReplyStatus::NotRecognized) {
        PopulateAnswer::Refused(refusal(cmd, reply))
    } else if reply.reason().is_some_and(is_decrypt_failure) {
        PopulateAnswer::DecryptFailed(refusal(cmd, reply))
    } else {
        PopulateAnswer::Refused(refusal(cmd, reply))
    }
}

impl PopulateAnswer {
    fn message(&self) -> &str {
        match self {
            PopulateAnswer::Accepted => "accepted",
            PopulateAnswer::DecryptFailed(m) | PopulateAnswer::Refused(m) => m,
        }
    }
}

/// Sends `Populate` with a `populate` JWE carrying `new`, keyed from `under`. With
/// `new == under` this changes nothing and proves the device holds `under`.
async fn populate_jwe(
    ctx: &mut StepContext<'_>,
    under: &Secret,
    new: &Secret,
) -> Result<PopulateAnswer, StepError> {
    let enc = ctx.prepared.device.enc;
    let jwe = ctx
        .kdf
        .seal(Action::Populate, enc, under, jwe::populate_plaintext(new))
        .await
        .map_err(local)?;
    let cmd = populate_cmd(Secret::new(jwe))?;
    let reply = send(ctx, &cmd).await?;
    Ok(classify_populate(&cmd, &reply))
}

pub(crate) fn changed(note: impl Into<String>) -> StepDone {
    StepDone {
        changed: true,
        outputs: BTreeMap::new(),
        note: Some(note.into()),
    }
}

/// Flags the device `secret-unknown` in the vault (both secrets kept) and returns the
/// refusal that makes the engine report it so, with the recovery advice.
fn secret_unknown(
    ctx: &StepContext<'_>,
    what: &str,
    evidence: &PopulateAnswer,
) -> Result<StepDone, StepError> {
    let name = &ctx.prepared.device.name;
    ctx.secrets
        .mark_secret_unknown(&ctx.prepared.device)
        .map_err(local)?;
    Err(StepError::Refused(format!(
        "{SECRET_UNKNOWN_PREFIX} the device accepts {what} ({}); every secret is kept in the \
         vault. If you know the secret it holds, record it with `roomkey secret set --device \
         {name} --seeded`; otherwise factory-reset the device and seed it again",
        evidence.message()
    )))
}

/// Proves which recorded secret the device holds without changing it (no-op populate JWEs:
/// `current` under `current`, then `pending` under `pending`), and settles the vault:
/// `current` proven → `ok` (an unfinished rotation is abandoned, its secret kept as
/// previous); `pending` proven → promoted; neither (both decryption failures) →
/// `secret-unknown`.
async fn prove_held(
    ctx: &mut StepContext<'_>,
    current: &Secret,
    pending: Option<&Secret>,
) -> Result<StepDone, StepError> {
    let device = &ctx.prepared.device;
    let first = populate_jwe(ctx, current, current).await?;
    if first == PopulateAnswer::Accepted {
        ctx.secrets.confirm_current(device).map_err(local)?;
        return Ok(unchanged(if pending.is_some() {
            "the device proved it still holds the current ClientSecret; the unfinished \
             rotation is abandoned (its secret kept as previous)"
        } else {
            "the device proved it holds the ClientSecret on record"
        }));
    }
    let Some(pending) = pending else {
        return match first {
            PopulateAnswer::DecryptFailed(_) => {
                secret_unknown(ctx, "no JWE keyed from the ClientSecret on record", &first)
            }
            _ => Err(StepError::Refused(format!(
                "could not prove the device holds the ClientSecret on record: {}",
                first.message()
            ))),
        };
    };
    let second = populate_jwe(ctx, pending, pending).await?;
    match (&first, &second) {
        (_, PopulateAnswer::Accepted) => {
            ctx.secrets.promote_pending(device).map_err(local)?;
            Ok(unchanged(
                "the device proved it holds the pending ClientSecret: the interrupted \
                 rotation is complete",
            ))
        }
        (PopulateAnswer::DecryptFailed(_), PopulateAnswer::DecryptFailed(_)) => secret_unknown(
            ctx,
            "neither the current nor the pending ClientSecret",
            &second,
        ),
        _ => Err(StepError::Refused(format!(
            "could not prove which ClientSecret the device holds (current: {}; pending: {}); \
             both are kept in the vault",
            first.message(),
            second.message()
        ))),
    }
}

/// Seeds the device's ClientSecret from the vault, or proves it holds it.
///
/// - Recorded as seeded (or with an unresolved rotation, or `secret-unknown`): nothing is
///   changed; a no-op populate JWE proves which recorded secret the device holds (see
///   [`prove_held`]) — this is also how a playbook verifies a rotation.
/// - Never seeded: the plaintext first seeding, only with `initial: true`. If the device
///   refuses it (it already has a secret), a no-op JWE proves the secret is ours. When the
///   journal says an earlier attempt was in flight, the proof comes first, so the plaintext
///   is not sent a second time if it had landed.
async fn populate_secret(
    ctx: &mut StepContext<'_>,
    initial: bool,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let device = &ctx.prepared.device;
    let current = ctx.secrets.current(device).map_err(local)?;
    let pending = ctx.secrets.pending(device).map_err(local)?;
    let recorded =
        ctx.secrets.is_seeded(device) || pending.is_some() || ctx.secrets.is_secret_unknown(device);
    if recorded {
        if ctx.check_mode {
            return Ok(unchanged(
                "would prove the device holds the ClientSecret on record (a no-op populate JWE)",
            ));
        }
        return prove_held(ctx, &current, pending.as_ref()).await;
    }
    if !initial {
        return Err(StepError::Refused(
            "the device is not recorded as seeded; the first seeding sends the secret in \
             plaintext and needs `populate_secret: { initial: true }`"
                .into(),
        ));
    }
    if ctx.check_mode {
        return Ok(changed(
            "would seed the ClientSecret (plaintext over the network)",
        ));
    }
    if ctx.resuming {
        match populate_jwe(ctx, &current, &current).await? {
            PopulateAnswer::Accepted => {
                ctx.secrets.confirm_current(device).map_err(local)?;
                return Ok(unchanged(
                    "an earlier attempt had seeded the device; it proved the ClientSecret",
                ));
            }
            answer @ PopulateAnswer::DecryptFailed(_) => {
                return secret_unknown(ctx, "no JWE keyed from the ClientSecret on record", &answer)
            }
            // Most likely no secret yet (the earlier attempt did not land): seed it.
            PopulateAnswer::Refused(_) => {}
        }
    }
    write_ahead("populate plaintext", BTreeMap::new())?;
    let cmd = populate_cmd(Secret::new(jwe::initial_populate_value(&current)))?;
    let reply = send(ctx, &cmd).await?;
    if reply.is_ok() {
        crate::failpoint::hit("populate-after-reply");
        ctx.secrets.confirm_current(device).map_err(local)?;
        return Ok(changed("ClientSecret seeded (plaintext first seeding)"));
    }
    // Refused: the device most likely has a secret already. Prove it is ours.
    let plaintext_refusal = refusal(&cmd, &reply);
    match populate_jwe(ctx, &current, &current).await? {
        PopulateAnswer::Accepted => {
            ctx.secrets.confirm_current(device).map_err(local)?;
            Ok(unchanged("the device already holds this ClientSecret"))
        }
        answer @ PopulateAnswer::DecryptFailed(_) => {
            secret_unknown(ctx, "no JWE keyed from the ClientSecret on record", &answer)
        }
        answer @ PopulateAnswer::Refused(_) => Err(StepError::Refused(format!(
            "the device refused the first seeding ({plaintext_refusal}) and a populate JWE \
             under the secret on record ({})",
            answer.message()
        ))),
    }
}

/// Crash-safe rotation (`Populate` with a `populate` JWE carrying a new secret, keyed from
/// the current one):
///
/// 1. The new secret is recorded as pending and saved (fsynced) before anything is sent; an
///    unresolved rotation's pending secret is reused, never replaced.
/// 2. The rotation is sent under the current secret; the device's acceptance promotes the
///    pending secret (the old one is kept as previous).
/// 3. Otherwise — an earlier attempt may have landed — the new secret is proven with a
///    no-op rotation (new under new); only its acceptance promotes it.
/// 4. Both refused as decryption failures: `secret-unknown`, both secrets kept. Any other
///    refusal leaves the rotation pending for the next run.
///
/// An unknown outcome (crash, dropped connection, timeout) leaves the pending secret in the
/// vault, so the next attempt resolves it from the device by the same steps 2–4.
async fn rotate_secret(
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let device = &ctx.prepared.device;
    if let crate::inventory::ClientSecretSource::Env(var) = &device.client_secret {
        return Err(StepError::Refused(format!(
            "the ClientSecret comes from environment variable {var}; rotating it needs the \
             vault (remove `client_secret: {{ env: ... }}` from the inventory)"
        )));
    }
    let current = ctx.secrets.current(device).map_err(local)?;
    let pending = ctx.secrets.pending(device).map_err(local)?;
    let unknown = ctx.secrets.is_secret_unknown(device);
    if pending.is_none() && !unknown && !ctx.secrets.is_seeded(device) {
        // A JWE needs a secret the device holds: seed (or prove) it first.
        return Err(StepError::Refused(
            "the device is not recorded as seeded; seed it first (`populate_secret: { \
             initial: true }`) — rotation sends the new secret keyed from the current one"
                .into(),
        ));
    }
    if ctx.check_mode {
        return Ok(changed(if pending.is_some() {
            "would resolve the unfinished rotation, then the device holds the new ClientSecret"
        } else {
            "would rotate the ClientSecret"
        }));
    }
    if pending.is_none() && (ctx.resuming || unknown) {
        // Resuming with nothing pending: the earlier attempt got as far as promoting (it
        // crashed before the journal said done) — prove it rather than rotate twice. A
        // `secret-unknown` device must prove the current secret before a new rotation.
        let answer = populate_jwe(ctx, &current, &current).await?;
        match answer {
            PopulateAnswer::Accepted => {
                ctx.secrets.confirm_current(device).map_err(local)?;
                if ctx.resuming {
                    return Ok(unchanged(
                        "an earlier attempt completed the rotation; the device proved the \
                         current ClientSecret",
                    ));
                }
            }
            PopulateAnswer::DecryptFailed(_) => {
                return secret_unknown(ctx, "no JWE keyed from the ClientSecret on record", &answer)
            }
            PopulateAnswer::Refused(m) => {
                return Err(StepError::Refused(format!(
                    "could not prove the device holds the ClientSecret on record: {m}"
                )))
            }
        }
    }
    let fresh = pending.is_none();
    let new = match pending {
        Some(p) => p,
        None => ctx.secrets.begin_rotation(device).map_err(local)?,
    };
    crate::failpoint::hit("rotate-after-pending-saved");
    write_ahead("rotate", BTreeMap::new())?;
    let first = populate_jwe(ctx, &current, &new).await?;
    if first == PopulateAnswer::Accepted {
        crate::failpoint::hit("rotate-after-reply");
        ctx.secrets.promote_pending(device).map_err(local)?;
        crate::failpoint::hit("rotate-after-promote");
        return Ok(changed(if fresh {
            "ClientSecret rotated"
        } else {
            "rotation completed (resent under the old secret)"
        }));
    }
    // Not taken under the old secret: perhaps an earlier attempt had landed. Prove the new
    // secret with a no-op rotation before believing it.
    let second = populate_jwe(ctx, &new, &new).await?;
    match (&first, &second) {
        (_, PopulateAnswer::Accepted) => {
            ctx.secrets.promote_pending(device).map_err(local)?;
            Ok(changed(
                "an earlier attempt had landed: the device proved the new ClientSecret",
            ))
        }
        (PopulateAnswer::DecryptFailed(_), PopulateAnswer::DecryptFailed(_)) => secret_unknown(
            ctx,
            "neither the current nor the pending ClientSecret",
            &first,
        ),
        _ => Err(StepError::Refused(format!(
            "the rotation was not confirmed (under the current secret: {}; proof of the new \
             one: {}); the new secret stays pending in the vault and the next run resolves it",
            first.message(),
            second.message()
        ))),
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use crate::tsh::Reply;

    fn reply(status: ReplyStatus) -> Reply {
        Reply {
            result_id: None,
            status,
            result_name: Some("ClientSecretPopulateResult".into()),
            fields: Vec::new(),
            raw: Vec::new(),
        }
    }

    #[test]
    fn populate_replies_are_classified_by_reason() {
        let cmd = populate_cmd(Secret::new("a.b.c.d.e")).unwrap();
        assert_eq!(
            classify_populate(&cmd, &reply(ReplyStatus::Ok)),
            PopulateAnswer::Accepted
        );
        let decrypt = classify_populate(
            &cmd,
            &reply(ReplyStatus::Error {
                reason: Some(crate::sim::model::DECRYPT_FAILED.into()),
            }),
        );
        assert!(matches!(decrypt, PopulateAnswer::DecryptFailed(_)));
        // The message names the command by its redacted line only.
        assert!(
            !decrypt.message().contains("a.b.c.d.e"),
            "{}",
            decrypt.message()
        );
        for other in [
            reply(ReplyStatus::Error {
                reason: Some("Secret is not valid base64url".into()),
            }),
            reply(ReplyStatus::Error { reason: None }),
            reply(ReplyStatus::NotRecognized),
            reply(ReplyStatus::BareError),
        ] {
            assert!(matches!(
                classify_populate(&cmd, &other),
                PopulateAnswer::Refused(_)
            ));
        }
        assert!(is_decrypt_failure("Decryption failed"));
        assert!(!is_decrypt_failure(
            "The client secret changed; payload rejected"
        ));
    }
}

// ---- Certificates ----------------------------------------------------------------------

/// One certificate as `Services Show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCertificate {
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub used_for: Vec<String>,
}

/// Normalises a fingerprint as devices and tools print it (`AB:CD…`, `abcd…`).
pub fn normalise_fingerprint(fp: &str) -> String {
    fp.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Reads the certificate list out of a `Services Show` reply (pure; tested with fixtures).
pub fn parse_show(reply: &Reply) -> Vec<ShownCertificate> {
    reply
        .items("Details")
        .iter()
        .filter_map(|item| {
            let fingerprint = normalise_fingerprint(item.get("Fingerprint")?);
            let used_for = item
                .get("UsedFor")
                .unwrap_or_default()
                .split([',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("none"))
                .map(str::to_string)
                .collect();
            Some(ShownCertificate {
                fingerprint,
                subject: item.get("SubjectName").unwrap_or_default().to_string(),
                issuer: item.get("IssuerName").unwrap_or_default().to_string(),
                used_for,
            })
        })
        .collect()
}

pub(crate) async fn show(ctx: &mut StepContext<'_>) -> Result<Vec<ShownCertificate>, StepError> {
    let cmd = TshCommand::xcommand("Security Certificates Services Show").map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(parse_show(&reply))
}

fn own_identity<'a>(ctx: &StepContext<'a>) -> Result<&'a crate::cert::DeviceIdentity, StepError> {
    ctx.prepared.identity.as_deref().ok_or_else(|| {
        StepError::Local("no certificate loaded for this device (check the inventory)".into())
    })
}

async fn add_certificate(
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let identity = own_identity(ctx)?;
    let fingerprint = identity.fingerprint().to_string();
    let mut outputs = BTreeMap::from([("fingerprint".to_string(), fingerprint.clone())]);
    let shown = show(ctx).await?;
    if shown.iter().any(|c| c.fingerprint == fingerprint) {
        return Ok(StepDone {
            changed: false,
            outputs,
            note: Some("certificate already on the device".into()),
        });
    }
    let header = TshCommand::xcommand("Security Certificates Services Add")
        .and_then(|c| c.param_literal("IsEncrypted", "True"))
        .map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&header));
    }
    let secret = ctx.secrets.current(&ctx.prepared.device).map_err(local)?;
    let payload = identity.add_payload();
    let jwe = ctx
        .kdf
        .seal(
            Action::Add,
            ctx.prepared.device.enc,
            &secret,
            zeroize::Zeroizing::new(payload.as_bytes().to_vec()),
        )
        .await
        .map_err(local)?;
    let cmd = header.body_secret(&Secret::new(jwe)).map_err(local)?;
    write_ahead("add certificate", BTreeMap::new())?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    outputs.insert("added".into(), "true".into());
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(format!("added certificate {fingerprint}")),
    })
}

async fn show_certificates(ctx: &mut StepContext<'_>) -> Result<StepDone, StepError> {
    let identity = own_identity(ctx)?;
    let local_fp = identity.fingerprint().to_string();
    let cn = identity.cert.subject_cn.clone().unwrap_or_default();
    let shown = show(ctx).await?;
    let Some(ours) = shown.iter().find(|c| c.fingerprint == local_fp) else {
        let same_cn = shown
            .iter()
            .find(|c| !cn.is_empty() && c.subject.contains(&format!("CN={cn}")));
        return Err(StepError::Refused(match same_cn {
            Some(c) => format!(
                "the device shows a certificate for CN={cn} with fingerprint {} but the local \
                 certificate's SHA-1 is {local_fp}: they are not the same certificate",
                c.fingerprint
            ),
            None => format!("certificate {local_fp} (CN={cn}) is not on the device"),
        }));
    };
    let mut outputs = BTreeMap::from([("fingerprint".to_string(), ours.fingerprint.clone())]);
    // Remember which certificate held the identity before ours, for renewals.
    if let Some(prev) = shown.iter().find(|c| {
        c.fingerprint != local_fp
            && c.used_for
                .iter()
                .any(|u| u.eq_ignore_ascii_case(Purpose::WebexIdentity.as_str()))
    }) {
        outputs.insert("previous_fingerprint".into(), prev.fingerprint.clone());
    }
    Ok(StepDone {
        changed: false,
        outputs,
        note: Some(format!("device fingerprint matches {local_fp}")),
    })
}

/// `apply --check` records no outputs, so a certificate an earlier step of the same check
/// would add (`enrolled`, `service`) has no fingerprint yet: report what would happen.
fn not_added_in_check_mode(ctx: &StepContext<'_>, which: &CertificateRef) -> Option<StepDone> {
    let key = match which {
        CertificateRef::Enrolled | CertificateRef::Service => which.output_key()?,
        _ => return None,
    };
    (ctx.check_mode && !ctx.outputs.contains_key(key)).then(|| {
        changed(format!(
            "would act on the certificate an earlier step adds (`{key}` is known only once it \
             is on the device)"
        ))
    })
}

/// Resolves which fingerprint a step targets; `None` = there is no previous certificate.
fn target_fingerprint(
    ctx: &StepContext<'_>,
    which: &CertificateRef,
) -> Result<Option<String>, StepError> {
    Ok(match which {
        CertificateRef::New => Some(own_identity(ctx)?.fingerprint().to_string()),
        CertificateRef::Fingerprint(fp) => Some(normalise_fingerprint(fp)),
        CertificateRef::Previous => ctx.outputs.get("previous_fingerprint").cloned(),
        CertificateRef::Enrolled | CertificateRef::Service => {
            let key = which.output_key().unwrap_or_default();
            Some(ctx.outputs.get(key).cloned().ok_or_else(|| {
                StepError::Refused(format!(
                    "no earlier step recorded `{key}`: put scep_enroll (for `enrolled`) or \
                     add_service_certificate (for `service`) before this step"
                ))
            })?)
        }
    })
}

async fn set_activation(
    ctx: &mut StepContext<'_>,
    purpose: Purpose,
    which: &CertificateRef,
    activate: bool,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    if let Some(done) = not_added_in_check_mode(ctx, which) {
        return Ok(done);
    }
    let Some(fp) = target_fingerprint(ctx, which)? else {
        return Ok(unchanged("no previous certificate to act on"));
    };
    let shown = show(ctx).await?;
    let Some(cert) = shown.iter().find(|c| c.fingerprint == fp) else {
        if !activate {
            return Ok(unchanged(format!("certificate {fp} is not on the device")));
        }
        return Err(StepError::Refused(format!(
            "certificate {fp} is not on the device; add it first"
        )));
    };
    let active = cert
        .used_for
        .iter()
        .any(|u| u.eq_ignore_ascii_case(purpose.as_str()));
    if active == activate {
        return Ok(unchanged(format!(
            "certificate {fp} is already {} for {}",
            if activate { "active" } else { "inactive" },
            purpose.as_str()
        )));
    }
    let verb = if activate { "Activate" } else { "Deactivate" };
    let mut cmd = TshCommand::xcommand(&format!("Security Certificates Services {verb}"))
        .and_then(|c| c.param_literal("Purpose", purpose.as_str()))
        .map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    // WebexIdentity takes the fingerprint as a JWE; the other purposes take it plain.
    if purpose == Purpose::WebexIdentity {
        let secret = ctx.secrets.current(&ctx.prepared.device).map_err(local)?;
        let action = if activate {
            Action::Activate
        } else {
            Action::Deactivate
        };
        let jwe = ctx
            .kdf
            .seal(
                action,
                ctx.prepared.device.enc,
                &secret,
                zeroize::Zeroizing::new(fp.as_bytes().to_vec()),
            )
            .await
            .map_err(local)?;
        cmd = cmd
            .param_secret("Fingerprint", &Secret::new(jwe))
            .map_err(local)?;
    } else {
        cmd = cmd.param("Fingerprint", &fp).map_err(local)?;
    }
    // One certificate is active per purpose: activating ours replaces whichever was.
    let replaced = shown
        .iter()
        .find(|c| {
            activate
                && c.fingerprint != fp
                && c.used_for
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(purpose.as_str()))
        })
        .map(|c| c.fingerprint.clone());
    write_ahead(verb, BTreeMap::new())?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    let mut outputs = BTreeMap::new();
    let mut note = format!(
        "{} {fp} for {}",
        if activate { "activated" } else { "deactivated" },
        purpose.as_str()
    );
    if let Some(old) = replaced {
        note.push_str(&format!(" (replacing {old})"));
        outputs.insert("replaced_fingerprint".to_string(), old);
    }
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(note),
    })
}

async fn delete_certificate(
    ctx: &mut StepContext<'_>,
    which: &CertificateRef,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    if let Some(done) = not_added_in_check_mode(ctx, which) {
        return Ok(done);
    }
    let Some(fp) = target_fingerprint(ctx, which)? else {
        return Ok(unchanged("no previous certificate to delete"));
    };
    let shown = show(ctx).await?;
    if !shown.iter().any(|c| c.fingerprint == fp) {
        return Ok(unchanged(format!("certificate {fp} is not on the device")));
    }
    let cmd = TshCommand::xcommand("Security Certificates Services Delete")
        .and_then(|c| c.param("Fingerprint", &fp))
        .map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    write_ahead("delete", BTreeMap::new())?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs: BTreeMap::new(),
        note: Some(format!("deleted certificate {fp}")),
    })
}

// ---- Configuration, verification, raw commands -------------------------------------------

async fn set_configuration(
    ctx: &mut StepContext<'_>,
    path: &str,
    value: &str,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let read = TshCommand::xconfiguration(path).map_err(local)?;
    let reply = send(ctx, &read).await?;
    if reply.is_ok() {
        if let Some(current) = reply.get(path) {
            if current.eq_ignore_ascii_case(value) {
                return Ok(unchanged(format!("{path} is already {value}")));
            }
        }
    }
    let cmd = TshCommand::xconfiguration_set(path, value).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    write_ahead("configure", BTreeMap::new())?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs: BTreeMap::new(),
        note: Some(format!("set {path} to {value}")),
    })
}

/// What `xStatus Conference EndToEndEncryption ExternalIdentity` says, in either node form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentityStatus {
    pub valid: bool,
    pub identity: Option<String>,
    /// The raw validity words seen (for messages).
    pub evidence: String,
}

/// Reads both node forms: the seed's (`Valid`, `Identity`, `CertInfo`) and the newer one
/// (`Verification`, `Identity`, `Status`, `CertificateChain …`). Pure; tested with fixtures.
pub fn parse_external_identity(reply: &Reply) -> ExternalIdentityStatus {
    const BASE: &str = "Conference EndToEndEncryption ExternalIdentity";
    let get = |leaf: &str| reply.get(&format!("{BASE} {leaf}"));
    let truthy = |v: &str| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "valid" | "verified" | "ok" | "yes"
        )
    };
    let mut evidence = Vec::new();
    let mut valid = false;
    for leaf in ["Valid", "Verification", "Status"] {
        if let Some(v) = get(leaf) {
            evidence.push(format!("{leaf}={v}"));
            valid |= truthy(v);
        }
    }
    if evidence.is_empty() {
        evidence.push("no validity node".into());
    }
    ExternalIdentityStatus {
        valid,
        identity: get("Identity")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        evidence: evidence.join(", "),
    }
}

async fn verify_external_identity(ctx: &mut StepContext<'_>) -> Result<StepDone, StepError> {
    let cmd =
        TshCommand::xstatus("Conference EndToEndEncryption ExternalIdentity").map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    let status = parse_external_identity(&reply);
    if !status.valid {
        return Err(StepError::Refused(format!(
            "the device reports no valid external identity ({})",
            status.evidence
        )));
    }
    let identity = status.identity.clone().unwrap_or_default();
    if let Some(want) = &ctx.prepared.expected_identity {
        if !identity.eq_ignore_ascii_case(want) {
            return Err(StepError::Refused(format!(
                "the device's external identity is '{identity}', expected '{want}'"
            )));
        }
    }
    Ok(StepDone {
        changed: false,
        outputs: BTreeMap::from([("identity".to_string(), identity.clone())]),
        note: Some(format!("verified identity {identity}")),
    })
}

async fn raw_xcommand(
    ctx: &mut StepContext<'_>,
    x: &crate::playbook::RawXCommand,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let mut cmd = TshCommand::xcommand(&x.command).map_err(local)?;
    for (k, v) in &x.params {
        cmd = cmd.param(k, v).map_err(local)?;
    }
    if ctx.check_mode && !x.read_only {
        return Ok(would(&cmd));
    }
    if !x.read_only {
        write_ahead("xcommand", BTreeMap::new())?;
    }
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    for (field, want) in &x.expect {
        match reply.get(field) {
            Some(got) if got == want => {}
            got => {
                return Err(StepError::Refused(format!(
                    "`{}`: expected {field} = {want:?}, got {}",
                    cmd.redacted_line(),
                    got.map(|g| format!("{g:?}")).unwrap_or("nothing".into())
                )))
            }
        }
    }
    Ok(StepDone {
        changed: !x.read_only,
        outputs: BTreeMap::new(),
        note: None,
    })
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Local(message)
    }
}
