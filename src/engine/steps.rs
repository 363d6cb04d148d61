//! The built-in steps: what each one reads, decides and sends. Every step is idempotent by
//! construction — it reads the device first (`Services Show`, `xConfiguration`, …) and sends
//! a changing command only if the device is not already in the wanted state — so a step
//! found in-flight after a crash is simply run again: the read decides whether the command
//! had landed. Before its first changing command a step calls `write_ahead`, which makes the
//! journal say "in-flight" durably.

use std::collections::BTreeMap;

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

pub type WriteAhead<'w> = dyn FnMut(&str) -> Result<(), String> + Send + 'w;

fn unchanged(note: impl Into<String>) -> StepDone {
    StepDone {
        changed: false,
        outputs: BTreeMap::new(),
        note: Some(note.into()),
    }
}

fn would(cmd: &TshCommand) -> StepDone {
    StepDone {
        changed: true,
        outputs: BTreeMap::new(),
        note: Some(format!("would send: {}", cmd.redacted_line())),
    }
}

fn local<E: std::fmt::Display>(e: E) -> StepError {
    StepError::Local(e.to_string())
}

async fn send(ctx: &mut StepContext<'_>, cmd: &TshCommand) -> Result<Reply, StepError> {
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

fn require_ok(cmd: &TshCommand, reply: &Reply) -> Result<(), StepError> {
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
    }
}

// ---- ClientSecret ----------------------------------------------------------------------

fn populate_cmd(value: Secret) -> Result<TshCommand, StepError> {
    TshCommand::xcommand("Security ClientSecret Populate")
        .and_then(|c| c.param_secret("Secret", &value))
        .map_err(local)
}

/// Sends `Populate` with a `populate` JWE carrying `new`, keyed from `under`. With
/// `new == under` this changes nothing and proves the device holds `under`.
async fn populate_jwe(
    ctx: &mut StepContext<'_>,
    under: &Secret,
    new: &Secret,
) -> Result<(TshCommand, Reply), StepError> {
    let enc = ctx.prepared.device.enc;
    let jwe = ctx
        .kdf
        .seal(Action::Populate, enc, under, jwe::populate_plaintext(new))
        .await
        .map_err(local)?;
    let cmd = populate_cmd(Secret::new(jwe))?;
    let reply = send(ctx, &cmd).await?;
    Ok((cmd, reply))
}

async fn populate_secret(
    ctx: &mut StepContext<'_>,
    initial: bool,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let device = &ctx.prepared.device;
    if ctx.secrets.is_seeded(device) && !ctx.resuming {
        return Ok(unchanged("the vault records the device as seeded"));
    }
    let secret = ctx.secrets.current(device).map_err(local)?;
    if ctx.check_mode {
        return Ok(StepDone {
            changed: true,
            outputs: BTreeMap::new(),
            note: Some("would seed the ClientSecret (plaintext over the network)".into()),
        });
    }
    if !ctx.resuming {
        if !initial {
            return Err(StepError::Refused(
                "the device is not recorded as seeded; the first seeding sends the secret in \
                 plaintext and needs `populate_secret: { initial: true }`"
                    .into(),
            ));
        }
        write_ahead("populate plaintext")?;
        let cmd = populate_cmd(Secret::new(jwe::initial_populate_value(&secret)))?;
        let reply = send(ctx, &cmd).await?;
        if reply.is_ok() {
            ctx.secrets.mark_seeded(device).map_err(local)?;
            return Ok(StepDone {
                changed: true,
                outputs: BTreeMap::new(),
                note: Some("ClientSecret seeded".into()),
            });
        }
    }
    // Either an earlier attempt may have landed, or the device already has a secret: prove
    // which one with a no-op rotation under ours.
    let (cmd, reply) = populate_jwe(ctx, &secret, &secret).await?;
    if reply.is_ok() {
        ctx.secrets.mark_seeded(device).map_err(local)?;
        Ok(unchanged("the device already holds this ClientSecret"))
    } else {
        Err(StepError::Refused(format!(
            "the device holds a different ClientSecret than the one on record ({}); recover \
             it with the right secret or factory-reset the device",
            refusal(&cmd, &reply)
        )))
    }
}

/// Crash-safe rotation: the pending secret is durable before anything is sent; only the
/// device's confirmation promotes it; an unknown outcome is resolved from the device.
async fn rotate_secret(
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let device = &ctx.prepared.device;
    let current = ctx.secrets.current(device).map_err(local)?;
    if ctx.check_mode {
        return Ok(StepDone {
            changed: true,
            outputs: BTreeMap::new(),
            note: Some("would rotate the ClientSecret".into()),
        });
    }
    let had_pending = ctx.secrets.pending(device).map_err(local)?.is_some();
    let new = ctx.secrets.begin_rotation(device).map_err(local)?;
    write_ahead("rotate")?;
    let (first_cmd, reply) = populate_jwe(ctx, &current, &new).await?;
    if reply.is_ok() {
        ctx.secrets.promote_pending(device).map_err(local)?;
        return Ok(StepDone {
            changed: true,
            outputs: BTreeMap::new(),
            note: Some(if had_pending {
                "rotation completed (resent under the old secret)".into()
            } else {
                "ClientSecret rotated".into()
            }),
        });
    }
    // The device refused the old secret: perhaps the rotation had already landed. Prove
    // the new one with a no-op rotation before believing it.
    let (_, proof) = populate_jwe(ctx, &new, &new).await?;
    if proof.is_ok() {
        ctx.secrets.promote_pending(device).map_err(local)?;
        return Ok(StepDone {
            changed: true,
            outputs: BTreeMap::new(),
            note: Some("rotation had landed earlier; the device proved the new secret".into()),
        });
    }
    ctx.secrets.mark_secret_unknown(device).map_err(local)?;
    Err(StepError::Refused(format!(
        "{SECRET_UNKNOWN_PREFIX} the device accepts neither the current nor the pending \
         ClientSecret ({}); both are kept in the vault. Recover with a secret it accepts, or \
         factory-reset the device",
        refusal(&first_cmd, &reply)
    )))
}

// ---- Certificates ----------------------------------------------------------------------

/// One certificate as `Services Show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCertificate {
    pub fingerprint: String,
    pub subject: String,
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
                used_for,
            })
        })
        .collect()
}

async fn show(ctx: &mut StepContext<'_>) -> Result<Vec<ShownCertificate>, StepError> {
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
    write_ahead("add certificate")?;
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

/// Resolves which fingerprint a step targets; `None` = there is no previous certificate.
fn target_fingerprint(
    ctx: &StepContext<'_>,
    which: &CertificateRef,
) -> Result<Option<String>, StepError> {
    Ok(match which {
        CertificateRef::New => Some(own_identity(ctx)?.fingerprint().to_string()),
        CertificateRef::Previous => ctx.outputs.get("previous_fingerprint").cloned(),
        CertificateRef::Fingerprint(fp) => Some(normalise_fingerprint(fp)),
    })
}

async fn set_activation(
    ctx: &mut StepContext<'_>,
    purpose: Purpose,
    which: &CertificateRef,
    activate: bool,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
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
    write_ahead(verb)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs: BTreeMap::new(),
        note: Some(format!(
            "{} {fp} for {}",
            if activate { "activated" } else { "deactivated" },
            purpose.as_str()
        )),
    })
}

async fn delete_certificate(
    ctx: &mut StepContext<'_>,
    which: &CertificateRef,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
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
    write_ahead("delete")?;
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
    write_ahead("configure")?;
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
        write_ahead("xcommand")?;
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
