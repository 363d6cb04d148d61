//! `verify_external_identity`: reads the whole `ExternalIdentity` status subtree and accepts
//! both node forms (seed: `Valid`/`Identity`/`CertInfo`; newer RoomOS: `Verification`,
//! `Status`, `CertificateChain`).

use crate::journal::StepOutputs;

use super::{local, require_ok, send, StepContext, StepDone, StepError};
use crate::tsh::{Reply, TshCommand};

/// What `xStatus Conference EndToEndEncryption ExternalIdentity` says, in either node form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentityStatus {
    pub valid: bool,
    pub identity: Option<String>,
    /// The raw validity words seen (for messages).
    pub evidence: String,
}

/// The status subtree the step reads, and the node prefix of every reply line.
const BASE: &str = "Conference EndToEndEncryption ExternalIdentity";

/// Reads both node forms: the seed's (`Valid`, `Identity`, `CertInfo`) and the newer one
/// (`Verification`, `Identity`, `Status`, `CertificateChain …`). Pure; tested with fixtures.
pub fn parse_external_identity(reply: &Reply) -> ExternalIdentityStatus {
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

pub(super) async fn verify_external_identity(
    ctx: &mut StepContext<'_>,
) -> Result<StepDone, StepError> {
    let cmd = external_identity_cmd().map_err(local)?;
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
        outputs: StepOutputs {
            identity: Some(identity.clone()),
            ..StepOutputs::default()
        },
        note: Some(format!("verified identity {identity}")),
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
        "expects a valid external identity '{}'",
        pc.device.expected_identity.as_deref().unwrap_or("(any)")
    ));
    vec![super::planned(external_identity_cmd(), "always")]
}
