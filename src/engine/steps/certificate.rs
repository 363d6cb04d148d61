//! The identity certificate steps: `add_certificate` (the `add` JWE), `show_certificates`
//! (the device's fingerprint against the local one), activation and deactivation for a
//! purpose (the fingerprint as a JWE for `WebexIdentity`), and `delete_certificate`.

use crate::journal::StepOutputs;

use super::{
    changed, local, placeholder, planned, require_ok, send, unchanged, would, PlanContext,
    PlannedCommand, StepContext, StepDone, StepError, WriteAhead,
};
use crate::jwe::Action;
use crate::playbook::{CertificateRef, Purpose};
use crate::secret::Secret;
use crate::tsh::{EncodeError, Reply, TshCommand};

/// One certificate as `Services Show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCertificate {
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub used_for: Vec<String>,
    /// `notBefore` / `notAfter` as the device prints them (catalogue `show.fields`,
    /// `show.time-format`); empty when not shown.
    pub not_before: String,
    pub not_after: String,
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
                not_before: item.get("notBefore").unwrap_or_default().to_string(),
                not_after: item.get("notAfter").unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// `Services Show`: every certificate on the device, with its fingerprint and purposes.
pub fn show_cmd() -> Result<TshCommand, EncodeError> {
    TshCommand::xcommand("Security Certificates Services Show")
}

/// `Services Add`: a certificate and key as its body (the identity's as a JWE, a service
/// certificate's as PEM).
pub fn services_add() -> Result<TshCommand, EncodeError> {
    TshCommand::xcommand("Security Certificates Services Add")
}

/// `Services Add IsEncrypted: True`, awaiting the `add` JWE as its body.
fn add_header() -> Result<TshCommand, EncodeError> {
    services_add().and_then(|c| c.param_literal("IsEncrypted", "True"))
}

/// `Services Activate|Deactivate Purpose: <p>`, awaiting its `Fingerprint`.
pub fn activation_header(activate: bool, purpose: Purpose) -> Result<TshCommand, EncodeError> {
    let verb = if activate { "Activate" } else { "Deactivate" };
    TshCommand::xcommand(&format!("Security Certificates Services {verb}"))
        .and_then(|c| c.param_literal("Purpose", purpose.as_str()))
}

/// The `Fingerprint` of an activation: a JWE for `WebexIdentity`, plain for the others.
fn with_fingerprint(
    header: Result<TshCommand, EncodeError>,
    purpose: Purpose,
    fp: &str,
    jwe: &Secret,
) -> Result<TshCommand, EncodeError> {
    if purpose == Purpose::WebexIdentity {
        header.and_then(|c| c.param_secret("Fingerprint", jwe))
    } else {
        header.and_then(|c| c.param("Fingerprint", fp))
    }
}

fn delete_cmd(fp: &str) -> Result<TshCommand, EncodeError> {
    TshCommand::xcommand("Security Certificates Services Delete")
        .and_then(|c| c.param("Fingerprint", fp))
}

pub(crate) async fn show(ctx: &mut StepContext<'_>) -> Result<Vec<ShownCertificate>, StepError> {
    let cmd = show_cmd().map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(parse_show(&reply))
}

fn own_identity<'a>(ctx: &StepContext<'a>) -> Result<&'a crate::cert::DeviceIdentity, StepError> {
    ctx.prepared.identity.as_deref().ok_or_else(|| {
        StepError::Local("no certificate loaded for this device (check the inventory)".into())
    })
}

pub(super) async fn add_certificate(
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let identity = own_identity(ctx)?;
    let fingerprint = identity.fingerprint().to_string();
    let outputs = StepOutputs {
        fingerprint: Some(fingerprint.clone()),
        ..StepOutputs::default()
    };
    let shown = show(ctx).await?;
    if shown.iter().any(|c| c.fingerprint == fingerprint) {
        return Ok(StepDone {
            changed: false,
            outputs,
            note: Some("certificate already on the device".into()),
        });
    }
    let header = add_header().map_err(local)?;
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
    write_ahead
        .in_flight("add certificate", StepOutputs::default())
        .await?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(format!("added certificate {fingerprint}")),
    })
}

pub(super) async fn show_certificates(ctx: &mut StepContext<'_>) -> Result<StepDone, StepError> {
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
    let mut outputs = StepOutputs {
        fingerprint: Some(ours.fingerprint.clone()),
        ..StepOutputs::default()
    };
    // Remember which certificate held the identity before ours, for renewals.
    if let Some(prev) = shown.iter().find(|c| {
        c.fingerprint != local_fp
            && c.used_for
                .iter()
                .any(|u| u.eq_ignore_ascii_case(Purpose::WebexIdentity.as_str()))
    }) {
        outputs.previous_fingerprint = Some(prev.fingerprint.clone());
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
        CertificateRef::Enrolled => "enrolled",
        CertificateRef::Service => "service",
        _ => return None,
    };
    (ctx.check_mode && output_for(ctx.outputs, which).is_none()).then(|| {
        changed(format!(
            "would act on the certificate an earlier step adds (`{key}` is known only once it \
             is on the device)"
        ))
    })
}

/// The certificate an earlier step recorded for a symbolic reference.
fn output_for(outputs: &StepOutputs, which: &CertificateRef) -> Option<String> {
    match which {
        CertificateRef::Previous => outputs.previous_fingerprint.clone(),
        CertificateRef::Enrolled => outputs.enrolled_fingerprint.clone(),
        CertificateRef::Service => outputs.service_fingerprint.clone(),
        CertificateRef::New | CertificateRef::Fingerprint(_) => None,
    }
}

/// Resolves which fingerprint a step targets; `None` = there is no previous certificate.
fn target_fingerprint(
    ctx: &StepContext<'_>,
    which: &CertificateRef,
) -> Result<Option<String>, StepError> {
    Ok(match which {
        CertificateRef::New => Some(own_identity(ctx)?.fingerprint().to_string()),
        CertificateRef::Fingerprint(fp) => Some(normalise_fingerprint(fp)),
        CertificateRef::Previous => ctx.outputs.previous_fingerprint.clone(),
        CertificateRef::Enrolled | CertificateRef::Service => {
            Some(output_for(ctx.outputs, which).ok_or_else(|| {
                StepError::Refused(
                    "no earlier step recorded the certificate: put scep_enroll (for `enrolled`) \
                     or add_service_certificate (for `service`) before this step"
                        .into(),
                )
            })?)
        }
    })
}

pub(super) async fn set_activation(
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
    if ctx.check_mode {
        return Ok(would(
            &with_fingerprint(
                activation_header(activate, purpose),
                purpose,
                &fp,
                &super::placeholder(),
            )
            .map_err(local)?,
        ));
    }
    // WebexIdentity takes the fingerprint as a JWE; the other purposes take it plain.
    let jwe = if purpose == Purpose::WebexIdentity {
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
        Secret::new(jwe)
    } else {
        super::placeholder()
    };
    let cmd = with_fingerprint(activation_header(activate, purpose), purpose, &fp, &jwe)
        .map_err(local)?;
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
    write_ahead.in_flight(verb, StepOutputs::default()).await?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    let mut outputs = StepOutputs::default();
    let mut note = format!(
        "{} {fp} for {}",
        if activate { "activated" } else { "deactivated" },
        purpose.as_str()
    );
    if let Some(old) = replaced {
        note.push_str(&format!(" (replacing {old})"));
        outputs.replaced_fingerprint = Some(old);
    }
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(note),
    })
}

/// Deletes a certificate — never one that is in use for some purpose unless `force`:
/// the device cannot undo a delete, and a purpose left without its certificate breaks
/// the service (a renewal deletes the previous certificate only after activating the new).
pub(super) async fn delete_certificate(
    ctx: &mut StepContext<'_>,
    which: &CertificateRef,
    force: bool,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    if let Some(done) = not_added_in_check_mode(ctx, which) {
        return Ok(done);
    }
    let Some(fp) = target_fingerprint(ctx, which)? else {
        return Ok(unchanged("no previous certificate to delete"));
    };
    let shown = show(ctx).await?;
    let Some(cert) = shown.iter().find(|c| c.fingerprint == fp) else {
        return Ok(unchanged(format!("certificate {fp} is not on the device")));
    };
    if !cert.used_for.is_empty() && !force {
        return Err(StepError::Refused(format!(
            "certificate {fp} is in use for {}; deactivate it first, or set `force: true` \
             on the delete_certificate step",
            cert.used_for.join(", ")
        )));
    }
    let cmd = delete_cmd(&fp).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    write_ahead
        .in_flight("delete", StepOutputs::default())
        .await?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs: StepOutputs::default(),
        note: Some(format!("deleted certificate {fp}")),
    })
}

// ---- The plan: rendered from the constructors above ------------------------------------

fn fp_text(which: &CertificateRef, own: Option<&str>) -> String {
    match which {
        CertificateRef::New => own.unwrap_or("<certificate fingerprint>").to_string(),
        CertificateRef::Previous => "<previously active certificate>".into(),
        CertificateRef::Fingerprint(fp) => normalise_fingerprint(fp),
        CertificateRef::Enrolled => "<certificate enrolled by scep_enroll>".into(),
        CertificateRef::Service => "<certificate added by add_service_certificate>".into(),
    }
}

pub(super) fn plan_show() -> Vec<PlannedCommand> {
    vec![planned(show_cmd(), "always")]
}

pub(super) fn plan_add(pc: &PlanContext<'_>) -> Vec<PlannedCommand> {
    vec![
        planned(show_cmd(), "always"),
        planned(
            add_header().and_then(|c| c.body_secret(&placeholder())),
            format!(
                "if {} is not listed (body: add JWE of certificate + key)",
                pc.own_fingerprint().unwrap_or("the certificate")
            ),
        ),
    ]
}

pub(super) fn plan_activation(
    pc: &PlanContext<'_>,
    purpose: Purpose,
    which: &CertificateRef,
    activate: bool,
) -> Vec<PlannedCommand> {
    let fp = fp_text(which, pc.own_fingerprint());
    let state = if activate { "active" } else { "inactive" };
    let jwe = if purpose == Purpose::WebexIdentity {
        format!(
            " (fingerprint {fp} sent as a {} JWE)",
            if activate { "activate" } else { "deactivate" }
        )
    } else {
        String::new()
    };
    vec![
        planned(show_cmd(), "always"),
        planned(
            with_fingerprint(
                activation_header(activate, purpose),
                purpose,
                &fp,
                &placeholder(),
            ),
            format!(
                "if {fp} is not already {state} for {}{jwe}",
                purpose.as_str()
            ),
        ),
    ]
}

pub(super) fn plan_delete(
    pc: &PlanContext<'_>,
    which: &CertificateRef,
    force: bool,
) -> Vec<PlannedCommand> {
    let fp = fp_text(which, pc.own_fingerprint());
    let unless = if force {
        ""
    } else {
        " and in use for nothing (a certificate in use is refused without `force: true`)"
    };
    vec![
        planned(show_cmd(), "always"),
        planned(delete_cmd(&fp), format!("if {fp} is listed{unless}")),
    ]
}
