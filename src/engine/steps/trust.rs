//! The trusted-CA steps: `add_ca_certificate` (only the CAs `CA Show` does not list yet, as
//! devices append duplicates) and `remove_ca_certificate`.

use crate::journal::StepOutputs;

use super::certificate::normalise_fingerprint;
use super::{
    bundle, change, changed, fingerprint_items, local, require_ok, send, unchanged, would,
    StepContext, StepDone, StepError, WriteAhead,
};
use crate::engine::assets::CaCert;
use crate::tsh::{Reply, TshCommand};

/// (fingerprint, subject) of every CA `CA Show` lists, in order, duplicates kept (pure).
pub fn parse_ca_show(reply: &Reply) -> Vec<(String, String)> {
    fingerprint_items(reply, "Details", "SubjectName")
}

/// `CA Show`: the trusted CAs, duplicates included.
pub fn ca_show_cmd() -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("Security Certificates CA Show")
}

fn ca_delete_cmd(fp: &str) -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("Security Certificates CA Delete").and_then(|c| c.param("Fingerprint", fp))
}

pub(super) async fn ca_show(ctx: &mut StepContext<'_>) -> Result<Vec<(String, String)>, StepError> {
    let cmd = ca_show_cmd().map_err(local)?;
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
    let outputs = StepOutputs {
        ca_fingerprints: all.clone(),
        ..StepOutputs::default()
    };
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
        let cmd = ca_delete_cmd(fp).map_err(local)?;
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

pub(super) fn plan_add(
    pc: &super::PlanContext<'_>,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::planned;
    let Some(crate::engine::assets::StepAsset::CaBundle { path, certs }) =
        pc.device.assets.get(&pc.index)
    else {
        notes.push("the step's inputs were not resolved for this device".into());
        return Vec::new();
    };
    let fps: Vec<&str> = certs.iter().map(|c| c.fingerprint.as_str()).collect();
    notes.push(format!(
        "{}: {} CA certificate(s): {}",
        path.display(),
        certs.len(),
        fps.join(", ")
    ));
    let all: Vec<&CaCert> = certs.iter().collect();
    vec![
        planned(ca_show_cmd(), "always"),
        planned(
            ca_add_cmd(&all),
            "with only the certificates CA Show does not list (none listed: all of them)",
        ),
    ]
}

pub(super) fn plan_remove(
    pc: &super::PlanContext<'_>,
    fingerprint: Option<&str>,
) -> Vec<super::PlannedCommand> {
    use super::planned;
    let targets: Vec<String> = match (fingerprint, pc.device.assets.get(&pc.index)) {
        (Some(fp), _) => vec![normalise_fingerprint(fp)],
        (None, Some(crate::engine::assets::StepAsset::CaBundle { certs, .. })) => {
            certs.iter().map(|c| c.fingerprint.clone()).collect()
        }
        _ => Vec::new(),
    };
    std::iter::once(planned(ca_show_cmd(), "always"))
        .chain(
            targets
                .iter()
                .map(|fp| planned(ca_delete_cmd(fp), format!("if {fp} is listed"))),
        )
        .collect()
}
