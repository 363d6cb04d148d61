//! `verify_external_identity`: reads the whole `ExternalIdentity` status subtree, in either
//! node form (catalogue `status.external-identity`: current RoomOS `Verification`,
//! `Identity`, `Status`, `CertificateChain …`; `status.external-identity-seed`: seed 000's
//! `Valid`, `Identity`, `CertInfo`), and decides — purely, from the reply, the certificate
//! roomkey activated and the time — whether the device really uses that certificate as a
//! valid identity.
//!
//! `Verification` says only that the device uses an externally issued certificate; it is
//! never taken as validity. A device passes only if its validity node says valid, the
//! leaf it shows is the certificate roomkey activated (where it shows a fingerprint), the
//! identity is the expected CN and the certificate's NotAfter has not passed.

use time::OffsetDateTime;

use super::certificate::normalise_fingerprint;
use super::{local, require_ok, send, StepContext, StepDone, StepError};
use crate::journal::StepOutputs;
use crate::tsh::{Reply, TshCommand};

pub const BASE: &str = "Conference EndToEndEncryption ExternalIdentity";

/// What `xStatus Conference EndToEndEncryption ExternalIdentity` says, in either node form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalIdentityStatus {
    /// `Status` (current form), e.g. `Valid`, `Expired`, `NotConfigured`.
    pub status: Option<String>,
    /// `Valid` (seed form), e.g. `True`.
    pub valid: Option<String>,
    /// `Verification` (current form): whether the device uses an external certificate.
    pub verification: Option<String>,
    pub identity: Option<String>,
    /// The leaf's fingerprint (`CertificateChain Certificate 1 Fingerprint`, or the seed
    /// form's `CertInfo` JSON `fingerprint`), normalised to lower-case hex.
    pub leaf_fingerprint: Option<String>,
    /// The leaf's NotAfter as the device prints it.
    pub not_after: Option<String>,
    /// The leaf's own `Validity` word (current form).
    pub leaf_validity: Option<String>,
}

/// Reads both node forms. Pure; tested with fixtures.
pub fn parse_external_identity(reply: &Reply) -> ExternalIdentityStatus {
    let get = |leaf: &str| {
        reply
            .get(&format!("{BASE} {leaf}"))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let mut st = ExternalIdentityStatus {
        status: get("Status"),
        valid: get("Valid"),
        verification: get("Verification"),
        identity: get("Identity"),
        leaf_fingerprint: get("CertificateChain Certificate 1 Fingerprint")
            .map(|f| normalise_fingerprint(&f)),
        not_after: get("CertificateChain Certificate 1 NotAfter"),
        leaf_validity: get("CertificateChain Certificate 1 Validity"),
    };
    // The seed form carries the leaf's facts as JSON in `CertInfo`.
    if let Some(info) = get("CertInfo")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(serde_json::Value::is_object)
    {
        let field = |k: &str| info.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if st.leaf_fingerprint.is_none() {
            st.leaf_fingerprint = field("fingerprint").map(|f| normalise_fingerprint(&f));
        }
        if st.not_after.is_none() {
            st.not_after = field("notAfter");
        }
    }
    st
}

/// Parses a device time, `Aug 08 03:04:26 2026 GMT` (catalogue `show.time-format`).
pub fn parse_device_time(text: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!(
        "[month repr:short] [day] [hour]:[minute]:[second] [year] GMT"
    );
    time::PrimitiveDateTime::parse(text.trim(), &fmt)
        .ok()
        .map(|t| t.assume_utc())
}

pub fn says_valid(word: &str) -> bool {
    matches!(
        word.to_ascii_lowercase().as_str(),
        "valid" | "true" | "ok" | "yes"
    )
}

/// What the verifier expects.
#[derive(Debug, Clone, Default)]
pub struct Expected<'a> {
    /// The CN the device must report.
    pub identity: Option<&'a str>,
    /// Lower-case hex SHA-1 of the certificate roomkey activated.
    pub fingerprint: Option<&'a str>,
}

/// The verdict: `Ok(note)` or `Err(reason)`. Pure.
pub fn judge(
    st: &ExternalIdentityStatus,
    want: &Expected<'_>,
    now: OffsetDateTime,
) -> Result<String, String> {
    // Validity: every validity node the device prints must say valid, and it must print one.
    let mut words = Vec::new();
    if let Some(s) = &st.status {
        words.push(format!("Status={s}"));
    }
    if let Some(v) = &st.valid {
        words.push(format!("Valid={v}"));
    }
    if words.is_empty() {
        return Err(match &st.verification {
            Some(v) => format!(
                "the device prints no validity node (Verification={v} says only that an \
                 external certificate is in use)"
            ),
            None => "the device reports no external identity (no Status or Valid node)".into(),
        });
    }
    let all_valid = st
        .status
        .iter()
        .chain(st.valid.iter())
        .all(|w| says_valid(w));
    if !all_valid {
        let expired = st
            .status
            .iter()
            .chain(st.leaf_validity.iter())
            .any(|w| w.eq_ignore_ascii_case("expired"));
        let after = st
            .not_after
            .as_deref()
            .map(|t| format!(", NotAfter {t}"))
            .unwrap_or_default();
        return Err(if expired {
            format!(
                "the device's identity certificate has expired ({}{after})",
                words.join(", ")
            )
        } else {
            format!(
                "the device reports no valid external identity ({}{after})",
                words.join(", ")
            )
        });
    }
    if let Some(v) = st.leaf_validity.as_deref().filter(|v| !says_valid(v)) {
        return Err(format!(
            "the device's identity certificate is not valid (Validity={v})"
        ));
    }
    // The certificate in use must be the one roomkey activated.
    match (&st.leaf_fingerprint, want.fingerprint) {
        (Some(have), Some(want_fp)) if have != &normalise_fingerprint(want_fp) => {
            return Err(format!(
                "the device uses certificate {have} as its identity, not {} that roomkey \
                 activated",
                normalise_fingerprint(want_fp)
            ));
        }
        _ => {}
    }
    let identity = st.identity.clone().unwrap_or_default();
    if let Some(want_cn) = want.identity {
        if !identity.eq_ignore_ascii_case(want_cn) {
            return Err(format!(
                "the device's external identity is '{identity}', expected '{want_cn}'"
            ));
        }
    }
    // roomkey's own clock as a second opinion on the device's.
    if let Some(after) = st.not_after.as_deref() {
        match parse_device_time(after) {
            Some(t) if t < now => {
                return Err(format!(
                    "the device's identity certificate expired at {after} (the device still \
                     says {})",
                    words.join(", ")
                ))
            }
            _ => {}
        }
    }
    let mut note = format!("verified identity {identity}");
    match (&st.leaf_fingerprint, &st.not_after) {
        (Some(fp), Some(t)) => note.push_str(&format!(" (certificate {fp}, valid until {t})")),
        (Some(fp), None) => note.push_str(&format!(" (certificate {fp})")),
        (None, Some(t)) => note.push_str(&format!(
            " (valid until {t}; the device shows no fingerprint)"
        )),
        (None, None) => note.push_str(" (the device shows no fingerprint)"),
    }
    Ok(note)
}

pub(super) async fn verify_external_identity(
    ctx: &mut StepContext<'_>,
) -> Result<StepDone, StepError> {
    let cmd = external_identity_cmd().map_err(local)?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    let status = parse_external_identity(&reply);
    let fingerprint = ctx
        .prepared
        .identity
        .as_deref()
        .map(|i| i.fingerprint().to_string());
    let want = Expected {
        identity: ctx.prepared.expected_identity.as_deref(),
        fingerprint: fingerprint.as_deref(),
    };
    let note = judge(&status, &want, OffsetDateTime::now_utc()).map_err(StepError::Refused)?;
    Ok(StepDone {
        changed: false,
        outputs: StepOutputs {
            identity: Some(status.identity.clone().unwrap_or_default()),
            not_after: status.not_after.clone(),
            fingerprint: status.leaf_fingerprint.clone(),
            ..StepOutputs::default()
        },
        note: Some(note),
    })
}

/// The whole `ExternalIdentity` subtree: either node form answers it (also what
/// `roomkey status` reads).
pub fn external_identity_cmd() -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xstatus(BASE)
}

/// The certificate the device uses for its external identity, as the newer node form's
/// chain names it (`CertificateChain Certificate 1`, the leaf): its fingerprint and its
/// `NotAfter` text as printed. Both `None` in the seed's older form (no chain).
pub fn identity_certificate(reply: &Reply) -> (Option<String>, Option<String>) {
    let leaf = |field: &str| {
        reply
            .get(&format!("{BASE} CertificateChain Certificate 1 {field}"))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    (leaf("Fingerprint"), leaf("NotAfter"))
}

pub(super) fn plan(
    pc: &super::PlanContext<'_>,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    notes.push(format!(
        "expects a valid external identity '{}' from the certificate roomkey activated",
        pc.device.expected_identity.as_deref().unwrap_or("(any)")
    ));
    vec![super::planned(external_identity_cmd(), "always")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsh::{ReplyReader, ReplyShape, TshEvent};

    const LOGIN: &[u8] = include_bytes!("../../tsh/fixtures/login_basic.txt");

    fn reply(fixture: &str) -> Reply {
        let mut r = ReplyReader::new();
        r.feed(LOGIN);
        r.expect(ReplyShape::Status);
        r.feed(fixture.as_bytes())
            .into_iter()
            .find_map(|e| match e {
                TshEvent::Reply(r) => Some(r),
                _ => None,
            })
            .expect("a reply")
    }

    const FP: &str = "ce4eb947c2c17d58bbc08303bf278464beebf2af";

    fn current(status: &str, fp: &str, not_after: &str) -> String {
        // catalogue status.external-identity
        format!(
            "*s Conference EndToEndEncryption ExternalIdentity Verification: External\n\
             *s Conference EndToEndEncryption ExternalIdentity Identity: \"meeting-room-1.example.com\"\n\
             *s Conference EndToEndEncryption ExternalIdentity Status: {status}\n\
             *s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 Fingerprint: \"{fp}\"\n\
             *s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 NotAfter: \"{not_after}\"\n\
             *s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 Validity: {status}\n\
             ** end\n\nOK\n"
        )
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn want() -> Expected<'static> {
        Expected {
            identity: Some("meeting-room-1.example.com"),
            fingerprint: Some(FP),
        }
    }

    #[test]
    fn current_form_valid_and_ours_passes_with_not_after() {
        let st = parse_external_identity(&reply(&current("Valid", FP, "Aug 08 03:04:26 2026 GMT")));
        assert_eq!(st.leaf_fingerprint.as_deref(), Some(FP));
        let note = judge(&st, &want(), now()).unwrap();
        assert!(note.contains("Aug 08 03:04:26 2026 GMT"), "{note}");
    }

    #[test]
    fn a_valid_but_different_certificate_fails() {
        let other = "00".repeat(20);
        let st = parse_external_identity(&reply(&current(
            "Valid",
            &other,
            "Aug 08 03:04:26 2026 GMT",
        )));
        let err = judge(&st, &want(), now()).unwrap_err();
        assert!(err.contains(&other) && err.contains("not"), "{err}");
    }

    #[test]
    fn an_expired_certificate_fails_whoever_says_so() {
        let st =
            parse_external_identity(&reply(&current("Expired", FP, "Aug 08 03:04:26 2025 GMT")));
        let err = judge(&st, &want(), now()).unwrap_err();
        assert!(err.contains("expired"), "{err}");
        // The device still says Valid, but NotAfter has passed by roomkey's clock.
        let st = parse_external_identity(&reply(&current("Valid", FP, "Aug 08 03:04:26 2025 GMT")));
        let err = judge(&st, &want(), now()).unwrap_err();
        assert!(err.contains("expired at Aug 08 03:04:26 2025 GMT"), "{err}");
    }

    #[test]
    fn verification_alone_is_not_validity() {
        let text = "*s Conference EndToEndEncryption ExternalIdentity Verification: External\n\
                    *s Conference EndToEndEncryption ExternalIdentity Identity: \"meeting-room-1.example.com\"\n\
                    ** end\n\nOK\n";
        let err = judge(&parse_external_identity(&reply(text)), &want(), now()).unwrap_err();
        assert!(err.contains("no validity node"), "{err}");
    }

    #[test]
    fn seed_form_reads_certinfo() {
        // catalogue status.external-identity-seed
        let text = format!(
            "*s Conference EndToEndEncryption ExternalIdentity Valid: True\n\
             *s Conference EndToEndEncryption ExternalIdentity Identity: \"meeting-room-1.example.com\"\n\
             *s Conference EndToEndEncryption ExternalIdentity CertInfo: \"{{\\\"fingerprint\\\":\\\"{FP}\\\",\\\"notAfter\\\":\\\"Aug 08 03:04:26 2026 GMT\\\"}}\"\n\
             ** end\n\nOK\n"
        );
        let st = parse_external_identity(&reply(&text));
        assert_eq!(st.leaf_fingerprint.as_deref(), Some(FP));
        assert!(judge(&st, &want(), now()).is_ok());
        let other = Expected {
            fingerprint: Some("11"),
            ..want()
        };
        assert!(judge(&st, &other, now()).is_err());
        let invalid = text.replace("Valid: True", "Valid: False");
        assert!(judge(&parse_external_identity(&reply(&invalid)), &want(), now()).is_err());
    }

    #[test]
    fn wrong_cn_fails() {
        let st = parse_external_identity(&reply(&current("Valid", FP, "Aug 08 03:04:26 2026 GMT")));
        let w = Expected {
            identity: Some("room-2.example.com"),
            ..want()
        };
        assert!(judge(&st, &w, now()).unwrap_err().contains("expected"));
    }

    #[test]
    fn device_time_parses() {
        assert_eq!(
            parse_device_time("Aug 08 03:04:26 2026 GMT"),
            Some(time::macros::datetime!(2026-08-08 03:04:26 UTC))
        );
        assert_eq!(parse_device_time("tomorrow"), None);
    }
}
