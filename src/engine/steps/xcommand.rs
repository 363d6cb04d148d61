//! `xcommand`: a raw command from the playbook (validated by the encoder like every other),
//! with expected result fields, for what the step catalogue lacks.

use crate::journal::StepOutputs;

use super::{local, require_ok, send, would, StepContext, StepDone, StepError, WriteAhead};
use crate::tsh::TshCommand;

pub(super) async fn raw_xcommand(
    ctx: &mut StepContext<'_>,
    x: &crate::playbook::RawXCommand,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let cmd = raw_cmd(x).map_err(local)?;
    if ctx.check_mode && !x.read_only {
        return Ok(would(&cmd));
    }
    if !x.read_only {
        write_ahead("xcommand", StepOutputs::default())?;
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
        outputs: StepOutputs::default(),
        note: None,
    })
}

/// The playbook's command with its parameters, through the encoder like every other.
fn raw_cmd(x: &crate::playbook::RawXCommand) -> Result<TshCommand, crate::tsh::EncodeError> {
    let mut cmd = TshCommand::xcommand(&x.command)?;
    for (k, v) in &x.params {
        cmd = cmd.param(k, v)?;
    }
    Ok(cmd)
}

pub(super) fn plan(
    x: &crate::playbook::RawXCommand,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    let cmd = raw_cmd(x);
    let reads = cmd.as_ref().is_ok_and(|c| c.is_read_only());
    if x.read_only && !reads {
        notes.push(
            "marked read_only, but the session does not count it as a read: `apply --check` \
             refuses to send it"
                .into(),
        );
    }
    let when = if x.read_only {
        "always"
    } else {
        "once per run (an action: the device cannot show whether it was applied)"
    };
    vec![super::planned(cmd, when)]
}
