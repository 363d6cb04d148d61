//! The ClientSecret steps: `populate_secret` (the first, plaintext seeding, and the proof
//! that a seeded device holds a secret the vault names) and `rotate_secret` (crash-safe
//! rotation under either reading of a `populate` JWE's plaintext).
//!
//! Two rules make a secret impossible to lose, whatever the firmware does:
//!
//! - **Proofs change nothing.** Which secret a device holds is proven with a `Deactivate`
//!   JWE (`Purpose: WebexIdentity`) for a fingerprint no certificate has ([`PROBE_FINGERPRINT`]),
//!   keyed from a candidate secret: a device that cannot decrypt it answers with a decrypt
//!   failure, one that can looks the fingerprint up and answers "no such certificate" —
//!   either way nothing is deactivated. No proof, check or resume path sends `Populate`.
//! - **Candidates before commands.** Before a rotation's `Populate` leaves, the vault
//!   records (fsynced) every secret the device may hold once it lands — the current one,
//!   the new phrase, and what the other reading of the plaintext makes of it
//!   ([`crate::vault::phrase::outcomes`]). A proof decides between them; only then is one
//!   promoted.
//!
//! The firmware's reading is learned once per software release: the first device of a
//! rotation (the canary) tries the raw phrase, then its base64url form, and a proof shows
//! which one it adopted; the vault records it per device and per release, and later devices
//! on that release send only that form. A device that refuses both, or answers otherwise
//! than its release taught, stops with the reason and nothing changed afterwards.

use super::{
    changed, local, refusal, send, unchanged, StepContext, StepDone, StepError, WriteAhead,
    SECRET_UNKNOWN_PREFIX,
};
use crate::journal::StepOutputs;
use crate::jwe::{self, Action};
use crate::secret::Secret;
use crate::tsh::{Reply, ReplyStatus, TshCommand};
use crate::vault::{phrase, Held, Reading};

/// The fingerprint a proof asks the device to deactivate. No certificate has it: a SHA-1 of
/// all zeros would be a preimage. A device that can decrypt the JWE therefore answers "no
/// such certificate" and deactivates nothing.
pub const PROBE_FINGERPRINT: &str = "0000000000000000000000000000000000000000";

const POPULATE: &str = "Security ClientSecret Populate";

/// `ClientSecret Populate Secret: "…"` — plaintext (base64url) the first time, a JWE after.
pub fn populate_command(value: &Secret) -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand(POPULATE).and_then(|c| c.param_secret("Secret", value))
}

/// The same `Populate` in the multi-line form: the value as the body (catalogue
/// `command.populate-form`: a schema text calls the command multi-line).
pub fn populate_body_command(value: &Secret) -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand(POPULATE).and_then(|c| c.body_secret(value))
}

/// Sends `Populate` with `value`, one-line first, the multi-line form only if the device
/// shows it waits for a body (`TshSession::run_either_form`: never a wait to the command
/// timeout, never a reply taken for another's). Both forms carry the same value, so the
/// candidates the vault recorded before the call cover whatever the device took.
async fn send_populate(
    ctx: &mut StepContext<'_>,
    value: Secret,
) -> Result<(TshCommand, Reply, Option<String>), StepError> {
    let one_line = populate_command(&value).map_err(local)?;
    let multi_line = populate_body_command(&value).map_err(local)?;
    let answer = ctx.session.run_either_form(&one_line, &multi_line).await?;
    let cmd = match answer.form {
        crate::ssh::CommandForm::OneLine => one_line,
        crate::ssh::CommandForm::MultiLine => multi_line,
    };
    Ok((cmd, answer.reply, answer.note))
}

/// The proof: `Services Deactivate Purpose: WebexIdentity Fingerprint: "<JWE>"`, the JWE
/// carrying [`PROBE_FINGERPRINT`] keyed from a candidate secret.
/// Marked as a secret proof: the session sends it even under `apply --check`.
pub fn probe_command(jwe: &Secret) -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("Security Certificates Services Deactivate")
        .and_then(|c| c.param_literal("Purpose", "WebexIdentity"))
        .and_then(|c| c.param_secret("Fingerprint", jwe))
        .map(TshCommand::into_secret_proof)
}

/// What a device answered to a proof (a `Deactivate` JWE for [`PROBE_FINGERPRINT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// It decrypted the JWE: the device holds the secret it was keyed from.
    Holds,
    /// It could not decrypt the JWE: the device does not hold that secret.
    DoesNotHold(String),
    /// It has no ClientSecret at all (factory-reset, or never seeded).
    NoSecret(String),
    /// Any other answer: proves nothing (the message names the command redacted).
    Inconclusive(String),
}

/// Whether a refusal reason says the payload could not be decrypted (pure). Devices word
/// it "Failed to decrypt the payload"; any mention of decryption counts. Only this kind of
/// refusal may count towards `secret-unknown`: an unrecognised wording yields a plain
/// failure, never a wrong verdict.
pub fn is_decrypt_failure(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("decrypt")
}

/// Classifies the reply to a proof (pure; tested with the simulator's reply shapes: the
/// decrypt failure, "No certificate with that fingerprint", "No client secret has been
/// populated" — device catalogue `secret.proof-replies` (and `command.jwe`); how a real device
/// words these refusals is not seen publicly, so only a reason that names decryption counts
/// as "does not hold", only one that names a certificate or fingerprint as "holds", and
/// anything else proves nothing and stops the step).
pub fn classify_probe(cmd: &TshCommand, reply: &Reply) -> ProbeAnswer {
    if reply.is_ok() {
        // It decrypted the JWE (and had nothing to deactivate).
        return ProbeAnswer::Holds;
    }
    if matches!(reply.status, ReplyStatus::NotRecognized) {
        return ProbeAnswer::Inconclusive(refusal(cmd, reply));
    }
    let reason = reply.reason().unwrap_or_default().to_ascii_lowercase();
    if is_decrypt_failure(&reason) {
        ProbeAnswer::DoesNotHold(refusal(cmd, reply))
    } else if reason.contains("no client secret") || reason.contains("not been populated") {
        ProbeAnswer::NoSecret(refusal(cmd, reply))
    } else if reason.contains("certificate") || reason.contains("fingerprint") {
        ProbeAnswer::Holds
    } else {
        ProbeAnswer::Inconclusive(refusal(cmd, reply))
    }
}

/// Sends one proof keyed from `secret`. Changes nothing on the device.
async fn probe(ctx: &mut StepContext<'_>, secret: &Secret) -> Result<ProbeAnswer, StepError> {
    let enc = ctx.prepared.device.enc;
    let jwe = ctx
        .kdf
        .seal(
            Action::Deactivate,
            enc,
            secret,
            zeroize::Zeroizing::new(PROBE_FINGERPRINT.as_bytes().to_vec()),
        )
        .await
        .map_err(local)?;
    let cmd = probe_command(&Secret::new(jwe)).map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    Ok(classify_probe(&cmd, &reply))
}

/// What a series of proofs showed.
enum Proof {
    Holds(Held),
    /// Every candidate's JWE failed to decrypt.
    Neither(String),
    NoSecret(String),
}

/// Proves which of the vault's candidates the device holds, trying them in the vault's
/// order. An inconclusive answer stops with an error (nothing changed, nothing settled).
async fn prove(ctx: &mut StepContext<'_>) -> Result<Proof, StepError> {
    let device = &ctx.prepared.device;
    let candidates = ctx.secrets.candidates(device).map_err(local)?;
    let mut last = String::from("no candidate secret on record");
    for (held, secret) in candidates {
        match probe(ctx, &secret).await? {
            ProbeAnswer::Holds => return Ok(Proof::Holds(held)),
            ProbeAnswer::DoesNotHold(m) => last = m,
            ProbeAnswer::NoSecret(m) => return Ok(Proof::NoSecret(m)),
            ProbeAnswer::Inconclusive(m) => {
                return Err(StepError::Refused(format!(
                    "could not prove which ClientSecret the device holds: {m}; nothing was \
                     changed and every candidate secret is kept in the vault"
                )))
            }
        }
    }
    Ok(Proof::Neither(last))
}

/// Pause between two rounds of proofs when resuming an interrupted rotation.
///
/// Why: a Populate sent by a session that died (killed controller, dropped link) may still
/// be running on the device when the next run proves its secret — the device finishes a
/// command it has read even when nobody waits for the answer. Proofs made while it lands
/// can see the old secret (and abandon a rotation that then lands) or see neither secret
/// (and flag a healthy device `secret-unknown`). Proofs change nothing, so roomkey proves
/// again after a pause and acts only on two rounds that agree.
const PROOF_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// Rounds of proofs before roomkey gives up on a device whose answer keeps changing.
const PROOF_ROUNDS: usize = 4;

/// Two proofs showed the same thing (the evidence texts may differ).
fn same_proof(a: &Proof, b: &Proof) -> bool {
    match (a, b) {
        (Proof::Holds(x), Proof::Holds(y)) => x == y,
        (Proof::Neither(_), Proof::Neither(_)) | (Proof::NoSecret(_), Proof::NoSecret(_)) => true,
        _ => false,
    }
}

/// [`prove`] for a device an earlier, interrupted session may still be changing: proves
/// until two rounds [`PROOF_SETTLE`] apart agree. Holding the new secret is final (the
/// interrupted command can only have brought the device there), so it needs one round.
async fn prove_settled(ctx: &mut StepContext<'_>) -> Result<Proof, StepError> {
    let mut last = prove(ctx).await?;
    for _ in 1..PROOF_ROUNDS {
        if matches!(last, Proof::Holds(held) if held != Held::Current) {
            return Ok(last);
        }
        tokio::time::sleep(PROOF_SETTLE).await;
        let next = prove(ctx).await?;
        if same_proof(&last, &next) {
            return Ok(next);
        }
        tracing::info!(
            device = %ctx.prepared.device.name,
            "the device's answer to the ClientSecret proofs changed between two rounds \
             (an interrupted command may still be landing): proving again"
        );
        last = next;
    }
    if matches!(last, Proof::Holds(held) if held != Held::Current) {
        return Ok(last);
    }
    Err(StepError::Refused(format!(
        "the device's ClientSecret kept changing while roomkey proved it ({PROOF_ROUNDS} \
         rounds {} ms apart disagreed): another session may be changing it; nothing was \
         changed and every candidate secret is kept in the vault — rerun when it is idle",
        PROOF_SETTLE.as_millis()
    )))
}

/// The recovery advice every "secret unknown" or "no secret" message carries.
fn recovery(name: &str) -> String {
    format!(
        "if you know the secret it holds, record it with `roomkey secret set --device {name} \
         --seeded`; if the room was factory-reset or replaced, run `roomkey secret \
         forget-device {name}` and apply the seeding playbook again"
    )
}

/// Flags the device `secret-unknown` in the vault (every candidate kept) and returns the
/// refusal that makes the engine report it so, with the recovery advice.
async fn secret_unknown(
    ctx: &StepContext<'_>,
    what: &str,
    evidence: &str,
) -> Result<StepDone, StepError> {
    let name = &ctx.prepared.device.name;
    ctx.secrets
        .mark_secret_unknown(&ctx.prepared.device)
        .await
        .map_err(local)?;
    Err(StepError::Refused(format!(
        "{SECRET_UNKNOWN_PREFIX} the device decrypts no JWE keyed from {what} ({evidence}); \
         every secret is kept in the vault. {}",
        recovery(name)
    )))
}

fn no_secret(ctx: &StepContext<'_>, evidence: &str) -> StepError {
    StepError::Refused(format!(
        "the device holds no ClientSecret ({evidence}); the vault is unchanged. {}",
        recovery(&ctx.prepared.device.name)
    ))
}

/// The software release in a login banner (`Cisco Codec Release RoomOS 11.14.1.5 a1b2c3d`
/// → `RoomOS 11.14.1.5 a1b2c3d`), printable and bounded; `unknown release` without one.
pub fn release_of(banner: &str) -> String {
    let found = banner.lines().find_map(|l| {
        l.split_once("Release ")
            .map(|(_, r)| r.trim())
            .filter(|r| !r.is_empty())
    });
    match found {
        Some(r) => r
            .chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect::<String>(),
        None => "unknown release".to_string(),
    }
}

/// Settles the vault on what a proof showed (promotes a candidate, or confirms the
/// current secret). Returns the reading holding a new secret revealed (`None` when the
/// device holds the current one).
async fn settle(ctx: &StepContext<'_>, held: Held) -> Result<Option<Reading>, StepError> {
    ctx.secrets
        .settle(&ctx.prepared.device, held)
        .await
        .map_err(local)
}

/// After a new secret was proven and promoted: checks the reading it revealed against the
/// one expected (the release's learned reading, or the form just sent) and records it for
/// the device and its release. A device that adopted another reading than expected has
/// been settled — the vault names the secret it holds — but the step fails, so a canary
/// stops the run before other devices are rotated under a wrong assumption.
async fn learn(
    ctx: &StepContext<'_>,
    reading: Option<Reading>,
    expected: Option<Reading>,
) -> Result<(), StepError> {
    let Some(reading) = reading else {
        return Ok(());
    };
    let release = release_of(ctx.session.banner());
    if let Some(e) = expected.filter(|e| *e != reading) {
        return Err(StepError::Refused(format!(
            "the device adopted the new ClientSecret reading the populate plaintext as \
             {reading}, where {e} was expected (release {release}); the vault names the \
             secret it holds now, and the step stops so no other device is rotated under a \
             wrong assumption"
        )));
    }
    ctx.secrets
        .learn_reading(&ctx.prepared.device, &release, reading)
        .await
        .map_err(local)?;
    Ok(())
}

/// Proves which recorded secret the device holds and settles the vault, changing nothing
/// on the device: the current one → `ok` (an unfinished rotation is abandoned, its
/// secrets kept as previous); a new one → promoted; none → `secret-unknown`.
async fn prove_and_settle(ctx: &mut StepContext<'_>) -> Result<StepDone, StepError> {
    let had_pending = ctx
        .secrets
        .pending(&ctx.prepared.device)
        .map_err(local)?
        .is_some();
    // After an interrupted attempt (pending, or `secret-unknown`) its command may still be
    // landing: prove until two rounds agree. A device merely seeded needs one round.
    let proof = if had_pending || ctx.secrets.is_secret_unknown(&ctx.prepared.device) {
        prove_settled(ctx).await?
    } else {
        prove(ctx).await?
    };
    match proof {
        Proof::Holds(Held::Current) => {
            settle(ctx, Held::Current).await?;
            Ok(unchanged(if had_pending {
                "the device proved it still holds the current ClientSecret; the unfinished \
                 rotation is abandoned (its secrets kept as previous)"
            } else {
                "the device proved it holds the ClientSecret on record"
            }))
        }
        Proof::Holds(held) => {
            let expected = expected_reading(ctx, held);
            let reading = settle(ctx, held).await?;
            learn(ctx, reading, expected).await?;
            Ok(unchanged(
                "the device proved it holds the new ClientSecret: the interrupted rotation \
                 is complete",
            ))
        }
        Proof::Neither(evidence) => secret_unknown(ctx, "any secret on record", &evidence).await,
        Proof::NoSecret(evidence) => Err(no_secret(ctx, &evidence)),
    }
}

/// `apply --check`: the same proofs as a real run (they change nothing, and the session lets
/// only them through), but the vault is not touched — it is open read-only. Fails where the
/// real run would: no recorded secret decrypts, or the device has none.
async fn check_proof(ctx: &mut StepContext<'_>) -> Result<(), StepError> {
    let name = ctx.prepared.device.name.clone();
    match prove(ctx).await? {
        Proof::Holds(_) => Ok(()),
        Proof::Neither(evidence) => Err(StepError::Refused(format!(
            "{SECRET_UNKNOWN_PREFIX} the device decrypts no JWE keyed from any secret on \
             record ({evidence}); check mode changed nothing. {}",
            recovery(&name)
        ))),
        Proof::NoSecret(evidence) => Err(no_secret(ctx, &evidence)),
    }
}

/// Seeds the device's ClientSecret from the vault, or proves it holds it.
///
/// - Recorded as seeded (or with an unresolved rotation, or `secret-unknown`): nothing is
///   changed; proofs show which recorded secret the device holds (see [`prove_and_settle`])
///   — this is also how a playbook verifies a rotation, and what every rerun does.
/// - Never seeded: the plaintext first seeding (base64url of the phrase — unambiguous),
///   only with `initial: true`. If the device refuses it (it already has a secret), a proof
///   shows whether it is ours. When the journal says an earlier attempt was in flight, the
///   proof comes first, so the plaintext is not sent a second time if it had landed.
pub(super) async fn populate_secret(
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
            return check_proof(ctx)
                .await
                .map(|()| unchanged("the device proved it holds the ClientSecret on record"));
        }
        return prove_and_settle(ctx).await;
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
        match probe(ctx, &current).await? {
            ProbeAnswer::Holds => {
                ctx.secrets.confirm_current(device).await.map_err(local)?;
                return Ok(unchanged(
                    "an earlier attempt had seeded the device; it proved the ClientSecret",
                ));
            }
            ProbeAnswer::DoesNotHold(m) => {
                return secret_unknown(ctx, "the ClientSecret on record", &m).await
            }
            // No secret yet (the earlier attempt did not land): seed it.
            ProbeAnswer::NoSecret(_) => {}
            ProbeAnswer::Inconclusive(m) => {
                return Err(StepError::Refused(format!(
                    "could not tell whether an earlier seeding landed: {m}; nothing was sent"
                )))
            }
        }
    }
    write_ahead
        .in_flight("populate plaintext", StepOutputs::default())
        .await?;
    let (cmd, reply, form_note) =
        send_populate(ctx, Secret::new(jwe::initial_populate_value(&current))).await?;
    let device = &ctx.prepared.device;
    if reply.is_ok() {
        crate::failpoint::hit("populate-after-reply");
        ctx.secrets.confirm_current(device).await.map_err(local)?;
        return Ok(changed(match form_note {
            Some(n) => format!("ClientSecret seeded (plaintext first seeding; {n})"),
            None => "ClientSecret seeded (plaintext first seeding)".to_string(),
        }));
    }
    // Refused: the device most likely has a secret already. Prove it is ours.
    let plaintext_refusal = refusal(&cmd, &reply);
    match probe(ctx, &current).await? {
        ProbeAnswer::Holds => {
            ctx.secrets.confirm_current(device).await.map_err(local)?;
            Ok(unchanged("the device already holds this ClientSecret"))
        }
        ProbeAnswer::DoesNotHold(m) => secret_unknown(ctx, "the ClientSecret on record", &m).await,
        ProbeAnswer::NoSecret(m) | ProbeAnswer::Inconclusive(m) => {
            Err(StepError::Refused(format!(
                "the device refused the first seeding ({plaintext_refusal}) and the proof of \
                 the secret on record was not conclusive ({m})"
            )))
        }
    }
}

/// Crash-safe rotation (`Populate` with a `populate` JWE keyed from the current secret):
///
/// 1. Proofs first: the device must hold a recorded secret before any `Populate`. If it
///    holds a candidate left by an earlier attempt, that is promoted and the step is done
///    — a step never rotates twice.
/// 2. The new secret is recorded as pending (fsynced) before anything is sent; an
///    unresolved rotation's pending secret is reused, never replaced.
/// 3. For each plaintext form to try — the form the device's release is known to read, or
///    for a canary the raw phrase, then its base64url form — every secret the device may
///    hold once it lands is recorded (fsynced), the `Populate` is sent, and proofs decide;
///    a new secret proven is promoted and the reading it revealed recorded.
/// 4. The device still holds the current secret after every form: the rotation is dropped
///    (its secrets kept as previous) and the step fails with the reason — nothing changed.
///
/// An unknown outcome (crash, dropped connection, timeout) leaves the candidates in the
/// vault, so the next attempt resolves them from the device by step 1.
pub(super) async fn rotate_secret(
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
        check_proof(ctx).await?;
        return Ok(changed(if pending.is_some() {
            "would resolve the unfinished rotation, then the device holds the new ClientSecret"
        } else {
            "would rotate the ClientSecret"
        }));
    }
    {
        // Before any Populate, the device proves which recorded secret it holds: an earlier
        // attempt may have landed, or promoted already (it crashed before the journal said
        // done); the device may be `secret-unknown`, or factory-reset — and a populate JWE
        // must never reach a device without a secret, which might take it for a plaintext
        // first seeding. After an interrupted attempt (pending, or `secret-unknown`), its
        // command may still be landing: prove until two rounds agree.
        let proof = if pending.is_some() || unknown {
            prove_settled(ctx).await?
        } else {
            prove(ctx).await?
        };
        match proof {
            Proof::Holds(Held::Current) => {
                if pending.is_none() {
                    settle(ctx, Held::Current).await?;
                    if ctx.resuming {
                        return Ok(unchanged(
                            "an earlier attempt completed the rotation; the device proved \
                             the current ClientSecret",
                        ));
                    }
                }
                // Pending but not landed: rotate with the same pending secret below.
            }
            Proof::Holds(held) => {
                let expected = expected_reading(ctx, held);
                let reading = settle(ctx, held).await?;
                learn(ctx, reading, expected).await?;
                return Ok(changed(
                    "an earlier attempt had landed: the device proved the new ClientSecret",
                ));
            }
            Proof::Neither(evidence) => {
                return secret_unknown(ctx, "any secret on record", &evidence).await
            }
            Proof::NoSecret(evidence) => return Err(no_secret(ctx, &evidence)),
        }
    }
    let device = &ctx.prepared.device;
    let current = ctx.secrets.current(device).map_err(local)?;
    let new = ctx.secrets.begin_rotation(device).await.map_err(local)?;
    crate::failpoint::hit("rotate-after-pending-saved");
    write_ahead
        .in_flight("rotate", StepOutputs::default())
        .await?;
    let release = release_of(ctx.session.banner());
    let known = known_reading(ctx);
    let forms: &[Reading] = match known {
        Some(Reading::Raw) => &[Reading::Raw],
        Some(Reading::Base64url) => &[Reading::Base64url],
        None => &[Reading::Raw, Reading::Base64url],
    };
    let mut answers = Vec::new();
    for &form in forms {
        // Every secret the device may hold once this command lands, on disk first.
        ctx.secrets
            .record_attempt(&ctx.prepared.device, form)
            .await
            .map_err(local)?;
        crate::failpoint::hit("rotate-after-candidates-saved");
        crate::failpoint::hit(&format!("rotate-after-candidates-saved-{form}"));
        let enc = ctx.prepared.device.enc;
        let jwe = ctx
            .kdf
            .seal(
                Action::Populate,
                enc,
                &current,
                phrase::plaintext(&new, form),
            )
            .await
            .map_err(local)?;
        let (cmd, reply, form_note) = send_populate(ctx, Secret::new(jwe)).await?;
        if let Some(n) = form_note {
            tracing::info!(device = %ctx.prepared.device.name, "populate: {n}");
        }
        crate::failpoint::hit("rotate-after-reply");
        crate::failpoint::hit(&format!("rotate-after-reply-{form}"));
        // Either reading may answer OK: only a proof says what the device now holds.
        answers.push(if reply.is_ok() {
            format!("{form}: accepted")
        } else {
            format!("{form}: {}", refusal(&cmd, &reply))
        });
        match prove(ctx).await? {
            Proof::Holds(Held::Current) => continue,
            Proof::Holds(held) => {
                let reading = settle(ctx, held).await?;
                crate::failpoint::hit("rotate-after-promote");
                // Holding the phrase means the device read the form just sent; holding
                // the other reading of it means it did not (after refusing the raw phrase,
                // or against its release's learned reading).
                learn(ctx, reading, Some(form)).await?;
                return Ok(changed(match (known, reading) {
                    (Some(_), _) => "ClientSecret rotated".to_string(),
                    (None, Some(r)) => format!(
                        "ClientSecret rotated; this device showed its release reads the \
                         populate plaintext as {r} (recorded for the devices after it)"
                    ),
                    (None, None) => "ClientSecret rotated".to_string(),
                }));
            }
            Proof::Neither(evidence) => {
                return secret_unknown(ctx, "any secret on record", &evidence).await
            }
            Proof::NoSecret(evidence) => return Err(no_secret(ctx, &evidence)),
        }
    }
    // Proven to hold the current secret after every form: nothing changed. Drop the
    // rotation (its secrets stay in the vault's history) and stop.
    ctx.secrets
        .confirm_current(&ctx.prepared.device)
        .await
        .map_err(local)?;
    Err(StepError::Refused(format!(
        "the device did not take the new ClientSecret {} ({}); a proof shows it still holds \
         the current one, nothing was changed, and the new secret is kept in the vault's \
         history",
        match known {
            Some(r) => format!(
                "in the form its release ({release}) was learned to read ({r}) — it reads \
                 the populate plaintext otherwise than the canary did"
            ),
            None => "under either reading of the populate plaintext".to_string(),
        },
        answers.join("; ")
    )))
}

/// The reading a proof of `held` should reveal: the release's known one; without it, for
/// an alternate, the form it was sent in — an alternate is what the *other* reading makes
/// of a plaintext, so holding one after the form was refused is a surprise too.
fn expected_reading(ctx: &StepContext<'_>, held: Held) -> Option<Reading> {
    known_reading(ctx).or_else(|| match held {
        Held::Alternate(_) => ctx
            .secrets
            .pending_reading(&ctx.prepared.device)
            .ok()
            .flatten(),
        _ => None,
    })
}

/// The reading the device's release is known to use (from this device's own record on the
/// same release, or from the canary of that release).
fn known_reading(ctx: &StepContext<'_>) -> Option<Reading> {
    let release = release_of(ctx.session.banner());
    ctx.secrets.known_reading(&ctx.prepared.device, &release)
}

// ---- The plan: rendered from `populate_command` and `probe_command` ----------------------

const PROOF_WHEN: &str = "a proof that changes nothing: a Deactivate JWE for a fingerprint no \
     certificate has, keyed from each secret the vault records for the device (current, or \
     an unfinished rotation's candidates) until one decrypts";

/// When the multi-line `Populate` is sent (catalogue `command.populate-form`).
const POPULATE_BODY_WHEN: &str = "only if the device sends no byte within `body_wait` and, \
     after a `.` ends the body it waits for, refuses the one-line form: the same value as \
     the body";

pub(super) fn plan_populate(
    pc: &super::PlanContext<'_>,
    initial: bool,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned, SeedState};
    let proof = |when: &str| planned(probe_command(&placeholder()), when);
    match pc.seed {
        SeedState::Seeded => vec![proof(&format!("always: {PROOF_WHEN}"))],
        _ if initial => {
            notes.push(
                "WARNING: first seeding sends the ClientSecret in PLAINTEXT over the network \
                 (base64url); do it on an unregistered device or a trusted network"
                    .into(),
            );
            vec![
                planned(
                    populate_command(&placeholder()),
                    "if the vault records the device as never seeded: plaintext first seeding",
                ),
                planned(populate_body_command(&placeholder()), POPULATE_BODY_WHEN),
                proof(&format!("if refused, or resuming: {PROOF_WHEN}")),
            ]
        }
        _ => {
            notes.push("fails unless the vault records the device as seeded".into());
            vec![proof(&format!("if seeded: {PROOF_WHEN}"))]
        }
    }
}

pub(super) fn plan_rotate() -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned};
    vec![
        planned(
            probe_command(&placeholder()),
            format!("first: {PROOF_WHEN}; a candidate an earlier attempt left is promoted"),
        ),
        planned(
            populate_command(&placeholder()),
            "once per run: populate JWE with a new secret, keyed from the current one, in the \
             form the device's release reads (a canary tries the raw phrase, then its \
             base64url form); every secret it may hold afterwards is saved in the vault first",
        ),
        planned(populate_body_command(&placeholder()), POPULATE_BODY_WHEN),
        planned(
            probe_command(&placeholder()),
            format!("after each populate: {PROOF_WHEN}; only then is one promoted"),
        ),
    ]
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use crate::tsh::Reply;

    fn reply(status: ReplyStatus) -> Reply {
        Reply {
            result_id: None,
            status,
            result_name: Some("ServicesDeactivateResult".into()),
            fields: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn error(reason: &str) -> Reply {
        reply(ReplyStatus::Error {
            reason: Some(reason.into()),
        })
    }

    #[test]
    fn probe_replies_are_classified_by_reason() {
        let cmd = TshCommand::xcommand("Security Certificates Services Deactivate")
            .and_then(|c| c.param_literal("Purpose", "WebexIdentity"))
            .and_then(|c| c.param_secret("Fingerprint", &Secret::new("a.b.c.d.e")))
            .unwrap();
        // The simulator's reply shapes.
        assert_eq!(
            classify_probe(&cmd, &error("No certificate with that fingerprint")),
            ProbeAnswer::Holds
        );
        assert_eq!(
            classify_probe(&cmd, &reply(ReplyStatus::Ok)),
            ProbeAnswer::Holds
        );
        let decrypt = classify_probe(&cmd, &error(crate::sim::model::DECRYPT_FAILED));
        assert!(matches!(decrypt, ProbeAnswer::DoesNotHold(_)));
        let ProbeAnswer::DoesNotHold(m) = decrypt else {
            unreachable!()
        };
        // The message names the command by its redacted line only.
        assert!(!m.contains("a.b.c.d.e"), "{m}");
        assert!(matches!(
            classify_probe(&cmd, &error("No client secret has been populated")),
            ProbeAnswer::NoSecret(_)
        ));
        for other in [
            error("The client secret changed; payload rejected"),
            error("Unexpected cisco-action in the payload"),
            reply(ReplyStatus::Error { reason: None }),
            reply(ReplyStatus::NotRecognized),
            reply(ReplyStatus::BareError),
        ] {
            assert!(
                matches!(classify_probe(&cmd, &other), ProbeAnswer::Inconclusive(_)),
                "{other:?}"
            );
        }
        assert!(is_decrypt_failure("Decryption failed"));
    }

    #[test]
    fn releases_from_banners() {
        assert_eq!(
            release_of("Welcome to room-301\nCisco Codec Release RoomOS 11.14.1.5 a1b2c3d\nSW Release Date: 2024-05-10"),
            "RoomOS 11.14.1.5 a1b2c3d"
        );
        assert_eq!(release_of("custom banner"), "unknown release");
        assert_eq!(release_of("Release \u{1b}[2Jx"), "[2Jx");
        assert_eq!(
            release_of(&format!("Release {}", "9".repeat(200))).len(),
            80
        );
    }
}
