//! The ClientSecret steps: `populate_secret` (the first, plaintext seeding and the proof
//! that a seeded device holds the vault's secret) and `rotate_secret` (crash-safe rotation,
//! the new secret recorded as pending before it is sent).

use crate::journal::StepOutputs;

use super::{
    changed, local, refusal, send, unchanged, StepContext, StepDone, StepError, WriteAhead,
    SECRET_UNKNOWN_PREFIX,
};
use crate::jwe::{self, Action};
use crate::secret::Secret;
use crate::tsh::{Reply, ReplyStatus, TshCommand};

/// `ClientSecret Populate Secret: "…"` — plaintext (base64url) the first time, a JWE after.
pub fn populate_command(value: &Secret) -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("Security ClientSecret Populate")
        .and_then(|c| c.param_secret("Secret", value))
}

fn populate_cmd(value: Secret) -> Result<TshCommand, StepError> {
    populate_command(&value).map_err(local)
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
pub(super) async fn populate_jwe(
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
pub(super) async fn prove_held(
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
    write_ahead("populate plaintext", StepOutputs::default())?;
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
    write_ahead("rotate", StepOutputs::default())?;
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

// ---- The plan: rendered from `populate_command` -----------------------------------------

pub(super) fn plan_populate(
    pc: &super::PlanContext<'_>,
    initial: bool,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned, SeedState};
    let populate = |when: &str| planned(populate_command(&placeholder()), when);
    match pc.seed {
        SeedState::Seeded => vec![populate(
            "always: a no-op populate JWE keyed from the current secret proves the device \
             holds it (if a rotation is pending, also one under the pending secret)",
        )],
        _ if initial => {
            notes.push(
                "WARNING: first seeding sends the ClientSecret in PLAINTEXT over the network \
                 (base64url); do it on an unregistered device or a trusted network"
                    .into(),
            );
            vec![
                populate(
                    "if the vault records the device as never seeded: plaintext first seeding",
                ),
                populate(
                    "otherwise, or if refused: a no-op populate JWE under the same secret proves \
                     the device holds it",
                ),
            ]
        }
        _ => {
            notes.push("fails unless the vault records the device as seeded".into());
            vec![populate(
                "if seeded: a no-op populate JWE proves the device holds the current secret",
            )]
        }
    }
}

pub(super) fn plan_rotate() -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned};
    vec![
        planned(
            populate_command(&placeholder()),
            "once per run: populate JWE with a new secret, keyed from the current one (the new \
             one is saved in the vault as pending first)",
        ),
        planned(
            populate_command(&placeholder()),
            "if refused: populate JWE new-under-new proves an earlier rotation landed",
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
