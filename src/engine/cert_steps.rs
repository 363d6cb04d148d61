//! The steps for a room's other certificates (seed 001): trusted CAs, service certificates
//! from PEM files, SCEP enrolment and renewal profiles, and the restart that follows an
//! enrolment. Same contract as `steps`: each reads the device before it changes anything,
//! journals itself in flight before its first changing command, and is safe to run again
//! after a crash at any point.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::assets::{CaCert, StepAsset};
use crate::engine::steps::{
    changed, local, normalise_fingerprint, require_ok, send, show, unchanged, would,
    ShownCertificate, StepContext, StepDone, StepError, WriteAhead,
};
use crate::playbook::{
    ProfileAction, ScepEnroll, ScepRenewalProfile, ENROLLED_FINGERPRINT, SERVICE_FINGERPRINT,
};
use crate::secret::Secret;
use crate::ssh::{SshError, TshSession};
use crate::tsh::{Reply, TshCommand};

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

// ---- Trusted CAs ---------------------------------------------------------------------------

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

/// (fingerprint, subject) of every CA `CA Show` lists, in order, duplicates kept (pure).
pub fn parse_ca_show(reply: &Reply) -> Vec<(String, String)> {
    fingerprint_items(reply, "Details", "SubjectName")
}

/// Journals the step in flight, sends a changing command and requires the device's OK.
async fn change(
    ctx: &mut StepContext<'_>,
    cmd: &TshCommand,
    what: &str,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<(), StepError> {
    write_ahead(what, BTreeMap::new())?;
    let reply = send(ctx, cmd).await?;
    require_ok(cmd, &reply)
}

async fn ca_show(ctx: &mut StepContext<'_>) -> Result<Vec<(String, String)>, StepError> {
    let cmd = TshCommand::xcommand("Security Certificates CA Show").map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(parse_ca_show(&reply))
}

/// The `CA Add` command for these certificates (one multi-line body).
pub fn ca_add_cmd(certs: &[&CaCert]) -> Result<TshCommand, crate::tsh::EncodeError> {
    let body: String = certs.iter().map(|c| c.pem.as_str()).collect();
    TshCommand::xcommand("Security Certificates CA Add").and_then(|c| c.body(&body))
}

/// Adds the bundle's CAs the device does not list yet. Devices only append to the trusted
/// list (an added CA is listed twice), so the read decides what is sent.
pub async fn add_ca(
    ctx: &mut StepContext<'_>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let Some(certs) = bundle(ctx)? else {
        return Err(StepError::Local(
            "the step's CA bundle was not loaded in preflight (internal error)".into(),
        ));
    };
    let listed = ca_show(ctx).await?;
    let missing: Vec<&CaCert> = certs
        .iter()
        .filter(|c| !listed.iter().any(|(fp, _)| *fp == c.fingerprint))
        .collect();
    let all: Vec<String> = certs.iter().map(|c| c.fingerprint.clone()).collect();
    let outputs = BTreeMap::from([("ca_fingerprints".to_string(), all.join(","))]);
    if missing.is_empty() {
        return Ok(StepDone {
            changed: false,
            outputs,
            note: Some(format!(
                "all {} CA certificate(s) already trusted",
                certs.len()
            )),
        });
    }
    let cmd = ca_add_cmd(&missing).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    change(ctx, &cmd, "add CA", write_ahead).await?;
    let added: Vec<&str> = missing.iter().map(|c| c.fingerprint.as_str()).collect();
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(format!(
            "added {} CA certificate(s): {} ({} already trusted)",
            added.len(),
            added.join(", "),
            certs.len() - added.len()
        )),
    })
}

/// Removes CAs by fingerprint (every copy the device lists) or the whole bundle's.
pub async fn remove_ca(
    ctx: &mut StepContext<'_>,
    fingerprint: Option<&str>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let targets: Vec<String> = match (fingerprint, bundle(ctx)?) {
        (Some(fp), _) => vec![normalise_fingerprint(fp)],
        (None, Some(certs)) => certs.iter().map(|c| c.fingerprint.clone()).collect(),
        (None, None) => return Err(StepError::Local("no CA to remove (internal error)".into())),
    };
    let listed = ca_show(ctx).await?;
    let present: Vec<&String> = targets
        .iter()
        .filter(|t| listed.iter().any(|(fp, _)| fp == *t))
        .collect();
    if present.is_empty() {
        return Ok(unchanged(
            "none of the CA certificates is trusted by the device",
        ));
    }
    let mut journalled = false;
    for fp in &present {
        let cmd = TshCommand::xcommand("Security Certificates CA Delete")
            .and_then(|c| c.param("Fingerprint", fp))
            .map_err(local)?;
        if ctx.check_mode {
            return Ok(would(&cmd));
        }
        if journalled {
            let reply = send(ctx, &cmd).await?;
            require_ok(&cmd, &reply)?;
        } else {
            change(ctx, &cmd, "remove CA", write_ahead).await?;
            journalled = true;
        }
    }
    let names: Vec<&str> = present.iter().map(|s| s.as_str()).collect();
    Ok(changed(format!(
        "removed CA certificate(s) {}",
        names.join(", ")
    )))
}

// ---- Service certificates ------------------------------------------------------------------

/// The `Services Add` command: plain PEM body (certificate + key), optional key password.
pub fn service_add_cmd(
    payload: &Secret,
    key_password: Option<&Secret>,
) -> Result<TshCommand, crate::tsh::EncodeError> {
    let mut cmd = TshCommand::xcommand("Security Certificates Services Add")?;
    if let Some(p) = key_password {
        cmd = cmd.param_secret("PrivateKeyPassword", p)?;
    }
    cmd.body_secret(payload)
}

/// Adds a service certificate (not the identity one) unless the device lists it.
pub async fn add_service(
    ctx: &mut StepContext<'_>,
    key_password: Option<&str>,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let StepAsset::Service(service) = asset(ctx)? else {
        return Err(StepError::Local(
            "unexpected step input (internal error)".into(),
        ));
    };
    let fp = service.fingerprint.clone();
    let outputs = BTreeMap::from([(SERVICE_FINGERPRINT.to_string(), fp.clone())]);
    let shown = show(ctx).await?;
    if shown.iter().any(|c| c.fingerprint == fp) {
        return Ok(StepDone {
            changed: false,
            outputs,
            note: Some(format!("certificate {fp} already on the device")),
        });
    }
    let password = vault_credential(ctx, key_password)?;
    let cmd = service_add_cmd(&service.payload, password.as_ref()).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    change(ctx, &cmd, "add service certificate", write_ahead).await?;
    Ok(StepDone {
        changed: true,
        outputs,
        note: Some(format!("added certificate {fp} ({})", service.subject)),
    })
}

// ---- SCEP ----------------------------------------------------------------------------------

/// The CN of a subject in either form devices print (`/O=x/CN=y` or `CN=y, O=x`).
pub fn subject_cn(subject: &str) -> Option<&str> {
    subject.split(['/', ',']).map(str::trim).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim().eq_ignore_ascii_case("CN").then(|| v.trim())
    })
}

/// Whether two distinguished names are the same, whatever separators the device used.
fn same_dn(a: &str, b: &str) -> bool {
    let parts = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .split(['/', ','])
            .map(|p| p.trim().replace(' ', "").to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        v.sort();
        v
    };
    parts(a) == parts(b)
}

/// The enrolled certificate among those shown: CN as requested and, when the device
/// trusts the CA (so its subject is known), issued by it.
pub fn find_enrolled<'a>(
    shown: &'a [ShownCertificate],
    cn: &str,
    ca_subject: Option<&str>,
) -> Option<&'a ShownCertificate> {
    shown.iter().find(|c| {
        subject_cn(&c.subject).is_some_and(|s| s.eq_ignore_ascii_case(cn))
            && ca_subject.is_none_or(|ca| same_dn(&c.issuer, ca))
    })
}

/// The SCEP request command; the challenge password is a secret parameter.
pub fn scep_cmd(
    values: &[(&'static str, String)],
    challenge: Option<&Secret>,
) -> Result<TshCommand, crate::tsh::EncodeError> {
    let mut cmd = TshCommand::xcommand("Security Certificates Services Enrollment SCEP Request")?;
    for (name, value) in values {
        cmd = cmd.param(name, value)?;
        if *name == "Fingerprint" {
            if let Some(c) = challenge {
                cmd = cmd.param_secret("ChallengePassword", c)?;
            }
        }
    }
    Ok(cmd)
}

fn value<'a>(values: &'a [(&'static str, String)], name: &str) -> &'a str {
    values
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// The write-ahead output of `scep_enroll`: the certificates listed before its request.
const LISTED_BEFORE: &str = "listed_before";

/// Enrols a certificate over SCEP unless the device already has one for this CN from this
/// CA; records its fingerprint (`enrolled_fingerprint`) for the activation step.
pub async fn scep_enroll(
    ctx: &mut StepContext<'_>,
    step: &ScepEnroll,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let StepAsset::Scep(values) = asset(ctx)? else {
        return Err(StepError::Local(
            "unexpected step input (internal error)".into(),
        ));
    };
    let cn = value(values, "CommonName").to_string();
    let ca_fp = normalise_fingerprint(value(values, "Fingerprint"));
    let cas = ca_show(ctx).await?;
    let ca_subject = cas
        .iter()
        .find(|(fp, _)| *fp == ca_fp)
        .map(|(_, s)| s.clone());
    let shown = show(ctx).await?;
    // Which certificate is already the enrolled one: with the CA trusted, one for this CN
    // issued by it. Without it the issuer cannot be told (the identity certificate may
    // carry the same CN), so only an earlier attempt's own enrolment counts: a certificate
    // for the CN that was not listed when that attempt journalled itself.
    let earlier = match ca_subject.as_deref() {
        Some(subject) => find_enrolled(&shown, &cn, Some(subject)),
        None => ctx
            .step_outputs
            .get(LISTED_BEFORE)
            .filter(|_| ctx.resuming)
            .and_then(|before| {
                let before: Vec<&str> = before.split(',').collect();
                let new: Vec<ShownCertificate> = shown
                    .iter()
                    .filter(|c| !before.contains(&c.fingerprint.as_str()))
                    .cloned()
                    .collect();
                find_enrolled(&new, &cn, None)
                    .and_then(|c| shown.iter().find(|s| s.fingerprint == c.fingerprint))
            }),
    };
    if let Some(c) = earlier {
        return Ok(StepDone {
            changed: false,
            outputs: BTreeMap::from([(ENROLLED_FINGERPRINT.to_string(), c.fingerprint.clone())]),
            note: Some(format!(
                "certificate {} for CN={cn} is already on the device",
                c.fingerprint
            )),
        });
    }
    let challenge = vault_credential(ctx, step.challenge_password.as_deref())?;
    let cmd = scep_cmd(values, challenge.as_ref()).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    let listed: Vec<&str> = shown.iter().map(|c| c.fingerprint.as_str()).collect();
    write_ahead(
        "scep enroll",
        BTreeMap::from([(LISTED_BEFORE.to_string(), listed.join(","))]),
    )?;
    let reply = send(ctx, &cmd).await?;
    crate::failpoint::hit("scep-after-reply");
    require_ok(&cmd, &reply)?;
    let after = show(ctx).await?;
    let fresh: Vec<ShownCertificate> = after
        .into_iter()
        .filter(|c| !shown.iter().any(|o| o.fingerprint == c.fingerprint))
        .collect();
    let Some(enrolled) = find_enrolled(&fresh, &cn, None) else {
        return Err(StepError::Refused(format!(
            "the device accepted the SCEP request but lists no new certificate for CN={cn}"
        )));
    };
    Ok(StepDone {
        changed: true,
        outputs: BTreeMap::from([(
            ENROLLED_FINGERPRINT.to_string(),
            enrolled.fingerprint.clone(),
        )]),
        note: Some(format!(
            "enrolled certificate {} for CN={cn}",
            enrolled.fingerprint
        )),
    })
}

/// The renewal profiles `Enrollment Profiles List` shows: (CA fingerprint, URL) (pure).
pub fn parse_profiles(reply: &Reply) -> Vec<(String, String)> {
    fingerprint_items(reply, "Profile", "URL")
}

/// The commands of `scep_renewal_profile` (the list, then the change if any).
pub fn profile_cmds(p: &ScepRenewalProfile) -> Result<Vec<TshCommand>, crate::tsh::EncodeError> {
    let list = TshCommand::xcommand("Security Certificates Services Enrollment Profiles List")?;
    let fp = p.ca_fingerprint.as_deref().unwrap_or_default();
    let change = match p.action {
        ProfileAction::List => None,
        ProfileAction::Set => Some(
            TshCommand::xcommand("Security Certificates Services Enrollment SCEP Renewal Request")?
                .param("Fingerprint", fp)?
                .param("URL", p.url.as_deref().unwrap_or_default())?,
        ),
        ProfileAction::Delete => Some(
            TshCommand::xcommand("Security Certificates Services Enrollment Profiles Delete")?
                .param("Fingerprint", fp)?,
        ),
    };
    Ok(std::iter::once(list).chain(change).collect())
}

/// Sets, deletes or lists the SCEP auto-renewal profile of a CA.
pub async fn renewal_profile(
    ctx: &mut StepContext<'_>,
    p: &ScepRenewalProfile,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let cmds = profile_cmds(p).map_err(local)?;
    let mut cmds = cmds.into_iter();
    let Some(list) = cmds.next() else {
        return Err(StepError::Local("no command (internal error)".into()));
    };
    let reply = send(ctx, &list).await?;
    require_ok(&list, &reply)?;
    let profiles = parse_profiles(&reply);
    let fp = normalise_fingerprint(p.ca_fingerprint.as_deref().unwrap_or_default());
    let existing = profiles.iter().find(|(f, _)| *f == fp);
    let listing = profiles
        .iter()
        .map(|(f, u)| format!("{f} → {u}"))
        .collect::<Vec<_>>()
        .join("; ");
    let in_place = match p.action {
        ProfileAction::List => {
            return Ok(StepDone {
                changed: false,
                outputs: BTreeMap::from([("profiles".to_string(), listing.clone())]),
                note: Some(if listing.is_empty() {
                    "no renewal profile".into()
                } else {
                    format!("renewal profiles: {listing}")
                }),
            })
        }
        ProfileAction::Set => existing.is_some_and(|(_, u)| Some(u.as_str()) == p.url.as_deref()),
        ProfileAction::Delete => existing.is_none(),
    };
    if in_place {
        return Ok(unchanged(format!(
            "the renewal profile for {fp} is already {}",
            if p.action == ProfileAction::Set {
                "set"
            } else {
                "absent"
            }
        )));
    }
    let Some(cmd) = cmds.next() else {
        return Err(StepError::Local("no command (internal error)".into()));
    };
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    change(ctx, &cmd, "renewal profile", write_ahead).await?;
    Ok(changed(format!(
        "renewal profile for {fp} {}",
        if p.action == ProfileAction::Set {
            "set"
        } else {
            "deleted"
        }
    )))
}

// ---- Restart -------------------------------------------------------------------------------

/// Seconds of rounding a restart check tolerates (uptimes are whole seconds).
const UPTIME_SLACK_SECS: u64 = 3;
const UPTIME_BEFORE: &str = "uptime_before";
const BOOT_SENT_AT_MS: &str = "boot_sent_at_ms";

/// Whether a device restarted since it reported `before` seconds of uptime,
/// `elapsed` seconds ago: without a restart its uptime would be `before + elapsed` (pure).
pub fn restarted_since(before: u64, elapsed: u64, now: u64) -> bool {
    now + UPTIME_SLACK_SECS < before.saturating_add(elapsed)
}

fn uptime_cmd() -> Result<TshCommand, StepError> {
    TshCommand::xstatus("SystemUnit Uptime").map_err(local)
}

async fn uptime_on(session: &mut TshSession) -> Result<u64, StepError> {
    let cmd = uptime_cmd()?;
    let reply = session.run(&cmd).await?;
    require_ok(&cmd, &reply)?;
    reply
        .get("SystemUnit Uptime")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| StepError::Refused("the device reports no SystemUnit Uptime".into()))
}

fn elapsed_secs(since_ms: u64) -> u64 {
    crate::journal::now_ms().saturating_sub(since_ms) / 1000
}

/// `xCommand SystemUnit Boot`, then waits (up to `timeout`) for the device to accept SSH
/// again with a lower uptime, and carries on with the new session. The uptime before the
/// boot is journalled with the write-ahead record, so a rerun after a crash sees that the
/// device already restarted and does not boot it again.
pub async fn restart(
    ctx: &mut StepContext<'_>,
    timeout: Duration,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let uptime = uptime_on(ctx.session).await?;
    let recorded = (
        ctx.step_outputs
            .get(UPTIME_BEFORE)
            .and_then(|v| v.parse().ok()),
        ctx.step_outputs
            .get(BOOT_SENT_AT_MS)
            .and_then(|v| v.parse().ok()),
    );
    if let (true, (Some(before), Some(at))) = (ctx.resuming, recorded) {
        if restarted_since(before, elapsed_secs(at), uptime) {
            return Ok(changed(format!(
                "the device restarted after an earlier attempt (uptime {uptime}s, was {before}s)"
            )));
        }
    }
    let cmd = TshCommand::xcommand("SystemUnit Boot").map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    let sent_at = crate::journal::now_ms();
    write_ahead(
        "restart",
        BTreeMap::from([
            (UPTIME_BEFORE.to_string(), uptime.to_string()),
            (BOOT_SENT_AT_MS.to_string(), sent_at.to_string()),
        ]),
    )?;
    let sent = send(ctx, &cmd).await;
    crate::failpoint::hit("restart-after-boot");
    match sent {
        Ok(reply) => require_ok(&cmd, &reply)?,
        // A device may drop the session as it goes down, before or after its reply.
        Err(StepError::Ssh(e)) => tracing::debug!(error = %e, "session ended by the boot"),
        Err(e) => return Err(e),
    }
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    // Poll often enough for a quick device, rarely enough not to hammer a booting one.
    let poll = (timeout / 60).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut last_error = String::from("no answer yet");
    loop {
        tokio::time::sleep(poll).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Refused(format!(
                "the device did not come back within {}s after `xCommand SystemUnit Boot` \
                 (last: {last_error})",
                timeout.as_secs()
            )));
        }
        let attempt = tokio::time::timeout_at(deadline, TshSession::connect(ctx.connect)).await;
        let mut session = match attempt {
            Err(_) => continue,
            Ok(Err(
                e @ (SshError::HostKeyChanged { .. }
                | SshError::HostKeyRevoked { .. }
                | SshError::HostKeyUnknown { .. }),
            )) => return Err(StepError::Ssh(e)),
            Ok(Err(e)) => {
                last_error = e.to_string();
                continue;
            }
            Ok(Ok(s)) => s,
        };
        // The device may still be on its way down: only a lower uptime proves the restart.
        match uptime_on(&mut session).await {
            Ok(now) if restarted_since(uptime, elapsed_secs(sent_at), now) => {
                let old = std::mem::replace(ctx.session, session);
                old.close().await;
                return Ok(StepDone {
                    changed: true,
                    outputs: BTreeMap::from([("uptime_after".to_string(), now.to_string())]),
                    note: Some(format!(
                        "restarted; back after {:.1}s",
                        started.elapsed().as_secs_f32()
                    )),
                });
            }
            Ok(now) => last_error = format!("still up for {now}s, not restarted yet"),
            Err(e) => last_error = e.to_string(),
        }
        session.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_is_judged_by_uptime() {
        // Up a day, booted 10 s ago, now up 4 s: restarted.
        assert!(restarted_since(86_400, 10, 4));
        // Not restarted: the uptime grew with the clock (give or take rounding).
        assert!(!restarted_since(86_400, 10, 86_410));
        assert!(!restarted_since(86_400, 10, 86_408));
        // A rerun long after the restart still sees it.
        assert!(restarted_since(600, 7_200, 7_000));
    }

    #[test]
    fn subjects_and_enrolled_certificates() {
        assert_eq!(
            subject_cn("/O=Example/CN=room-1.example.com"),
            Some("room-1.example.com")
        );
        assert_eq!(subject_cn("CN=room-1, O=Example"), Some("room-1"));
        assert_eq!(subject_cn("/O=Example"), None);
        assert!(same_dn("/O=Ex/CN=CA 1", "CN=CA 1, O=Ex"));
        let shown = vec![
            ShownCertificate {
                fingerprint: "aa".into(),
                subject: "/CN=room-1".into(),
                issuer: "/CN=Other CA".into(),
                used_for: vec![],
            },
            ShownCertificate {
                fingerprint: "bb".into(),
                subject: "/CN=room-1".into(),
                issuer: "/O=Ex/CN=SCEP CA".into(),
                used_for: vec![],
            },
        ];
        assert_eq!(
            find_enrolled(&shown, "ROOM-1", Some("/O=Ex/CN=SCEP CA"))
                .map(|c| c.fingerprint.as_str()),
            Some("bb")
        );
        assert_eq!(find_enrolled(&shown, "room-2", None), None);
    }

    #[test]
    fn service_add_sends_the_key_password_as_a_secret() {
        let payload = Secret::new("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n");
        let cmd = service_add_cmd(&payload, Some(&Secret::new("key-pass-9"))).unwrap();
        assert_eq!(
            cmd.redacted_text(),
            "xCommand Security Certificates Services Add PrivateKeyPassword: \"[redacted]\"\n[redacted]\n."
        );
        assert!(cmd.line().contains("key-pass-9"));
        let plain = service_add_cmd(&payload, None).unwrap();
        assert_eq!(
            plain.redacted_line(),
            "xCommand Security Certificates Services Add"
        );
    }

    #[test]
    fn scep_command_redacts_the_challenge() {
        let values = vec![
            ("URL", "http://scep".to_string()),
            ("Fingerprint", "ab".repeat(20)),
            ("CommonName", "room-1".to_string()),
            ("SanEmail", "a@x".to_string()),
            ("SanEmail", "b@x".to_string()),
        ];
        let cmd = scep_cmd(&values, Some(&Secret::new("s3cret-challenge"))).unwrap();
        let shown = cmd.redacted_line();
        assert!(!shown.contains("s3cret-challenge"), "{shown}");
        assert!(
            shown.contains("ChallengePassword: \"[redacted]\""),
            "{shown}"
        );
        assert!(
            shown.contains("SanEmail: \"a@x\" SanEmail: \"b@x\""),
            "{shown}"
        );
        assert!(cmd.line().contains("s3cret-challenge"));
    }
}
