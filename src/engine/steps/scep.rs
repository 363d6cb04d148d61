//! SCEP: `scep_enroll` (the device enrols with its CA; every value checked against the
//! device's limits in preflight, catalogue `scep.limits`) and `scep_renewal_profile` (set,
//! delete, list).
//!
//! An enrolment counts as done only for a certificate that was not on the device before the
//! request and is valid — the requested CN, within its notBefore/notAfter by roomkey's
//! clock ([`judge_enrolled`]). A certificate already there does not count for a request;
//! one already there *and valid* makes the request unnecessary. A new certificate that is
//! not valid stops the device with that reason. A request the device accepted is recorded
//! (write-ahead, `scep_request_accepted`) so a rerun waits for a pending enrolment and
//! never requests it twice (catalogue `scep.completion`).

use crate::journal::StepOutputs;

use super::certificate::{normalise_fingerprint, show, ShownCertificate};
use super::trust::ca_show;
use super::{
    asset, change, changed, fingerprint_items, local, require_ok, send, unchanged,
    vault_credential, would, StepContext, StepDone, StepError, WriteAhead,
};
use crate::engine::assets::StepAsset;
use crate::playbook::{ProfileAction, ScepEnroll, ScepRenewalProfile};
use crate::secret::Secret;
use crate::tsh::{Reply, TshCommand};

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

/// How far a device's clock may be ahead of roomkey's for a just-issued certificate's
/// notBefore to count as reached.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Whether `c` counts as an enrolment for `cn` at `now` (pure): the CN as requested and
/// within its validity (notBefore up to [`CLOCK_SKEW`] ahead). `Err` says why not.
pub fn judge_enrolled(
    c: &ShownCertificate,
    cn: &str,
    now: time::OffsetDateTime,
) -> Result<(), String> {
    use super::identity::parse_device_time;
    match subject_cn(&c.subject) {
        Some(got) if got.eq_ignore_ascii_case(cn) => {}
        Some(got) => {
            return Err(format!(
                "it was issued for CN={got}, not the requested CN={cn}"
            ))
        }
        None => return Err(format!("its subject names no CN (requested CN={cn})")),
    }
    let (Some(not_before), Some(not_after)) = (
        parse_device_time(&c.not_before),
        parse_device_time(&c.not_after),
    ) else {
        return Err(
            "the device shows no readable notBefore/notAfter for it (catalogue show.fields), \
             so its validity cannot be confirmed"
                .into(),
        );
    };
    if not_after <= now {
        return Err(format!("it expired on {} (notAfter)", c.not_after.trim()));
    }
    if not_before > now + CLOCK_SKEW {
        return Err(format!(
            "it is not valid before {} (notBefore)",
            c.not_before.trim()
        ));
    }
    Ok(())
}

/// The certificates among `shown` that may be this CN's enrolment: issued by the CA when
/// its subject is known, else any (pure).
fn from_ca<'a>(
    shown: impl IntoIterator<Item = &'a ShownCertificate>,
    ca_subject: Option<&str>,
) -> Vec<&'a ShownCertificate> {
    shown
        .into_iter()
        .filter(|c| ca_subject.is_none_or(|ca| same_dn(&c.issuer, ca)))
        .collect()
}

/// Enrols a certificate over SCEP unless the device already has a valid one for this CN
/// from this CA; records its fingerprint (`enrolled_fingerprint`) for the activation step.
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
    let now = time::OffsetDateTime::now_utc();
    // Which certificate is already the enrolled one: with the CA trusted, one for this CN
    // issued by it. Without it the issuer cannot be told (the identity certificate may
    // carry the same CN), so only an earlier attempt's own enrolment counts: a certificate
    // that was not listed when that attempt journalled itself. Either way only a valid one:
    // an expired or not yet valid certificate is replaced by a new enrolment.
    let resumed_before = (ctx.resuming && !ctx.step_outputs.listed_before.is_empty())
        .then(|| ctx.step_outputs.listed_before.clone());
    let earlier: Vec<&ShownCertificate> = match (ca_subject.as_deref(), &resumed_before) {
        (Some(subject), _) => from_ca(&shown, Some(subject)),
        (None, Some(before)) => shown
            .iter()
            .filter(|c| !before.contains(&c.fingerprint))
            .collect(),
        (None, None) => Vec::new(),
    };
    if let Some(c) = earlier.iter().find(|c| judge_enrolled(c, &cn, now).is_ok()) {
        return Ok(enrolled_done(
            false,
            &c.fingerprint,
            format!(
                "certificate {} for CN={cn} is already on the device and valid",
                c.fingerprint
            ),
        ));
    }
    // The certificates that were there before this enrolment: an earlier attempt's list
    // when resuming (its request may be pending on the device), else today's.
    let before: Vec<String> = match resumed_before {
        Some(b) => b,
        None => shown.iter().map(|c| c.fingerprint.clone()).collect(),
    };
    // catalogue scep.completion: an earlier attempt's request was accepted and may still
    // be pending: wait for it, never request again.
    let accepted_earlier = ctx.resuming && ctx.step_outputs.scep_request_accepted == Some(true);
    if accepted_earlier {
        if ctx.check_mode {
            return Ok(unchanged(
                "an earlier attempt's enrolment is pending; a run waits for it",
            ));
        }
        let enrolled = wait_for_enrolment(ctx, &before, &cn, ca_subject.as_deref()).await?;
        return Ok(enrolled_done(
            true,
            &enrolled.fingerprint,
            format!(
                "enrolled certificate {} for CN={cn} (the request of an earlier attempt, \
                 not sent again)",
                enrolled.fingerprint
            ),
        ));
    }
    let challenge = vault_credential(ctx, step.challenge_password.as_deref())?;
    let cmd = scep_cmd(values, challenge.as_ref()).map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    write_ahead
        .in_flight(
            "scep enroll",
            StepOutputs {
                listed_before: before.clone(),
                ..StepOutputs::default()
            },
        )
        .await?;
    let reply = send(ctx, &cmd).await?;
    // An enrolment still pending from an earlier attempt whose acceptance was not
    // recorded (it stopped between sending and the reply): the device refuses a second
    // request then, and roomkey waits for the first.
    if !(ctx.resuming && enrolment_in_progress(&reply)) {
        require_ok(&cmd, &reply)?;
    }
    write_ahead
        .in_flight(
            "scep request accepted",
            StepOutputs {
                listed_before: before.clone(),
                scep_request_accepted: Some(true),
                ..StepOutputs::default()
            },
        )
        .await?;
    crate::failpoint::hit("scep-after-reply");
    let enrolled = wait_for_enrolment(ctx, &before, &cn, ca_subject.as_deref()).await?;
    Ok(enrolled_done(
        true,
        &enrolled.fingerprint,
        format!("enrolled certificate {} for CN={cn}", enrolled.fingerprint),
    ))
}

fn enrolled_done(changed: bool, fingerprint: &str, note: String) -> StepDone {
    StepDone {
        changed,
        outputs: StepOutputs {
            enrolled_fingerprint: Some(fingerprint.to_string()),
            ..StepOutputs::default()
        },
        note: Some(note),
    }
}

/// How long `scep_enroll` waits for an accepted enrolment's certificate to appear (devices
/// may complete it asynchronously), and how often it looks.
const ENROL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const ENROL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the device refused a SCEP request because one is already in progress (pure).
pub fn enrolment_in_progress(reply: &Reply) -> bool {
    !reply.is_ok()
        && reply
            .reason()
            .is_some_and(|r| r.to_ascii_lowercase().contains("in progress"))
}

/// Reads `Services Show` until a certificate that was not listed `before` (from the CA,
/// when its subject is known) appears (catalogue scep.completion), or [`ENROL_WAIT`] has
/// passed. It counts only if valid for `cn` ([`judge_enrolled`]); a new one that is not
/// stops the step with the reason.
async fn wait_for_enrolment(
    ctx: &mut StepContext<'_>,
    before: &[String],
    cn: &str,
    ca_subject: Option<&str>,
) -> Result<ShownCertificate, StepError> {
    let deadline = tokio::time::Instant::now() + ENROL_WAIT;
    loop {
        let after = show(ctx).await?;
        let now = time::OffsetDateTime::now_utc();
        let fresh = from_ca(
            after.iter().filter(|c| !before.contains(&c.fingerprint)),
            ca_subject,
        );
        if let Some(enrolled) = fresh.iter().find(|c| judge_enrolled(c, cn, now).is_ok()) {
            return Ok((*enrolled).clone());
        }
        if !fresh.is_empty() {
            let why: Vec<String> = fresh
                .iter()
                .map(|c| {
                    let reason = judge_enrolled(c, cn, now).err().unwrap_or_default();
                    format!("{}: {reason}", c.fingerprint)
                })
                .collect();
            return Err(StepError::Refused(format!(
                "the SCEP enrolment produced a certificate that does not count ({}); it \
                 stays on the device unused — check the CA's template and clock",
                why.join("; ")
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Refused(format!(
                "the device accepted the SCEP request but lists no new certificate for \
                 CN={cn} after {}s (enrolment still pending?); a rerun waits for it without \
                 requesting again",
                ENROL_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(ENROL_POLL).await;
    }
}

/// The renewal profiles `Enrollment Profiles List` shows: (CA fingerprint, URL) (pure).
pub fn parse_profiles(reply: &Reply) -> Vec<(String, String)> {
    fingerprint_items(reply, "Profile", "URL")
}

/// The current name of the renewal-profile set (catalogue scep.commands).
const PROFILE_SET: &str = "Security Certificates Services Enrollment SCEP Profiles Set";
/// The older name, sent only when the device does not know the current one.
const PROFILE_SET_OLDER: &str = "Security Certificates Services Enrollment SCEP Renewal Request";

/// Whether a reply says the device does not know the command (pure).
pub fn unknown_command(reply: &Reply) -> bool {
    matches!(reply.status, crate::tsh::ReplyStatus::NotRecognized)
        || (!reply.is_ok()
            && reply
                .reason()
                .is_some_and(|r| r.eq_ignore_ascii_case("Unknown command")))
}

/// The commands of `scep_renewal_profile` (the list, then the change if any).
/// `Enrollment Profiles List` (read-only).
pub fn profiles_list_cmd() -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("Security Certificates Services Enrollment Profiles List")
}

pub fn profile_cmds(p: &ScepRenewalProfile) -> Result<Vec<TshCommand>, crate::tsh::EncodeError> {
    let list = profiles_list_cmd()?;
    let fp = p.ca_fingerprint.as_deref().unwrap_or_default();
    let change = match p.action {
        ProfileAction::List => None,
        ProfileAction::Set => Some(
            TshCommand::xcommand(PROFILE_SET)?
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
                outputs: StepOutputs {
                    profiles: Some(listing.clone()),
                    ..StepOutputs::default()
                },
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
    if p.action == ProfileAction::Set {
        write_ahead
            .in_flight("renewal profile", StepOutputs::default())
            .await?;
        let reply = send(ctx, &cmd).await?;
        if unknown_command(&reply) {
            // An older release: the same profile under the older command name.
            let older = TshCommand::xcommand(PROFILE_SET_OLDER)
                .and_then(|c| c.param("Fingerprint", &fp))
                .and_then(|c| c.param("URL", p.url.as_deref().unwrap_or_default()))
                .map_err(local)?;
            let reply = send(ctx, &older).await?;
            require_ok(&older, &reply)?;
        } else {
            require_ok(&cmd, &reply)?;
        }
    } else {
        change(ctx, &cmd, "renewal profile", write_ahead).await?;
    }
    Ok(changed(format!(
        "renewal profile for {fp} {}",
        if p.action == ProfileAction::Set {
            "set"
        } else {
            "deleted"
        }
    )))
}

pub(super) fn plan_enroll(
    pc: &super::PlanContext<'_>,
    step: &ScepEnroll,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned};
    let Some(StepAsset::Scep(values)) = pc.device.assets.get(&pc.index) else {
        notes.push("the step's inputs were not resolved for this device".into());
        return Vec::new();
    };
    if let Some(name) = &step.challenge_password {
        notes.push(format!(
            "ChallengePassword comes from vault credential '{name}'"
        ));
    }
    let cn = value(values, "CommonName");
    let challenge = step.challenge_password.as_ref().map(|_| placeholder());
    vec![
        planned(super::trust::ca_show_cmd(), "always"),
        planned(super::certificate::show_cmd(), "always"),
        planned(
            scep_cmd(values, challenge.as_ref()),
            format!(
                "if no valid certificate for CN={cn} (within its dates) issued by that CA is \
                 listed (the issuer is known only if CA Show lists the CA; otherwise it \
                 enrols), and no request of an earlier attempt is pending"
            ),
        ),
        planned(
            super::certificate::show_cmd(),
            "after the request, until it appears (at most 60 s): the new certificate counts \
             only if valid for the CN; otherwise the device stops with the reason",
        ),
    ]
}

pub(super) fn plan_profile(p: &ScepRenewalProfile) -> Vec<super::PlannedCommand> {
    use super::planned;
    match profile_cmds(p) {
        Ok(cmds) => cmds
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let when = if i == 0 {
                    "always"
                } else {
                    "if the profile is not already as wanted"
                };
                planned(Ok(c), when)
            })
            .collect(),
        Err(e) => vec![planned(Err(e), "never")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                not_before: String::new(),
                not_after: String::new(),
            },
            ShownCertificate {
                fingerprint: "bb".into(),
                subject: "/CN=room-1".into(),
                issuer: "/O=Ex/CN=SCEP CA".into(),
                used_for: vec![],
                not_before: String::new(),
                not_after: String::new(),
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
    fn an_enrolment_counts_only_valid_and_for_the_requested_cn() {
        // catalogue show.fields, show.time-format: `notBefore`/`notAfter` as printed.
        let now = time::macros::datetime!(2026-06-01 12:00 UTC);
        let cert = |subject: &str, nb: &str, na: &str| ShownCertificate {
            fingerprint: "aa".into(),
            subject: subject.into(),
            issuer: "/CN=lab SCEP CA".into(),
            used_for: vec![],
            not_before: nb.into(),
            not_after: na.into(),
        };
        let ok = cert(
            "/CN=room-1.example.com",
            "Jun 01 11:59:00 2026 GMT",
            "Jun 01 11:59:00 2027 GMT",
        );
        assert_eq!(judge_enrolled(&ok, "ROOM-1.example.com", now), Ok(()));
        // A device clock a little ahead: notBefore a minute in roomkey's future still counts.
        let ahead = cert(
            "/CN=room-1.example.com",
            "Jun 01 12:01:00 2026 GMT",
            "Jun 01 12:01:00 2027 GMT",
        );
        assert_eq!(judge_enrolled(&ahead, "room-1.example.com", now), Ok(()));
        let expired = cert(
            "/CN=room-1.example.com",
            "Apr 27 12:00:00 2025 GMT",
            "Apr 27 12:00:00 2026 GMT",
        );
        assert!(judge_enrolled(&expired, "room-1.example.com", now)
            .unwrap_err()
            .contains("expired on Apr 27 12:00:00 2026 GMT"));
        let later = cert(
            "/CN=room-1.example.com",
            "Jul 01 12:00:00 2026 GMT",
            "Jul 01 12:00:00 2027 GMT",
        );
        assert!(judge_enrolled(&later, "room-1.example.com", now)
            .unwrap_err()
            .contains("not valid before Jul 01 12:00:00 2026 GMT"));
        let other = cert(
            "/O=Lab/CN=device-4711",
            "Jun 01 11:59:00 2026 GMT",
            "Jun 01 11:59:00 2027 GMT",
        );
        assert!(judge_enrolled(&other, "room-1.example.com", now)
            .unwrap_err()
            .contains("issued for CN=device-4711, not the requested CN=room-1.example.com"));
        let undated = cert("/CN=room-1.example.com", "", "");
        assert!(judge_enrolled(&undated, "room-1.example.com", now)
            .unwrap_err()
            .contains("show.fields"));
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
