//! `add_service_certificate`: a service certificate and key from PEM files, with an optional
//! `PrivateKeyPassword` from the vault.

use crate::journal::StepOutputs;

use super::certificate::show;
use super::{
    asset, change, local, vault_credential, would, StepContext, StepDone, StepError, WriteAhead,
};
use crate::engine::assets::StepAsset;
use crate::secret::Secret;
use crate::tsh::TshCommand;

/// The `Services Add` command: plain PEM body (certificate + key), optional key password.
pub fn service_add_cmd(
    payload: &Secret,
    key_password: Option<&Secret>,
) -> Result<TshCommand, crate::tsh::EncodeError> {
    let mut cmd = super::certificate::services_add()?;
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
    let outputs = StepOutputs {
        service_fingerprint: Some(fp.clone()),
        ..StepOutputs::default()
    };
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

pub(super) fn plan(
    pc: &super::PlanContext<'_>,
    key_password: Option<&str>,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::{placeholder, planned};
    let Some(StepAsset::Service(svc)) = pc.device.assets.get(&pc.index) else {
        notes.push("the step's inputs were not resolved for this device".into());
        return Vec::new();
    };
    let password = key_password.map(|name| {
        notes.push(format!(
            "PrivateKeyPassword comes from vault credential '{name}'"
        ));
        placeholder()
    });
    vec![
        planned(super::certificate::show_cmd(), "always"),
        planned(
            service_add_cmd(&placeholder(), password.as_ref()),
            format!(
                "if {} is not listed (body: {} and its key)",
                svc.fingerprint,
                svc.certificate_path.display()
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
