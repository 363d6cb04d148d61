//! `set_configuration`: one `xConfiguration` value, read first and set only if different.

use crate::journal::StepOutputs;

use super::{
    local, planned, require_ok, send, unchanged, would, PlannedCommand, StepContext, StepDone,
    StepError, WriteAhead,
};
use crate::tsh::TshCommand;

pub(super) async fn set_configuration(
    ctx: &mut StepContext<'_>,
    path: &str,
    value: &str,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let read = TshCommand::xconfiguration(path).map_err(local)?;
    // (The plan renders the same two constructors: see `plan` below.)
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
    write_ahead("configure", StepOutputs::default())?;
    let reply = send(ctx, &cmd).await?;
    require_ok(&cmd, &reply)?;
    Ok(StepDone {
        changed: true,
        outputs: StepOutputs::default(),
        note: Some(format!("set {path} to {value}")),
    })
}

pub(super) fn plan(path: &str, value: &str) -> Vec<PlannedCommand> {
    vec![
        planned(TshCommand::xconfiguration(path), "always"),
        planned(
            TshCommand::xconfiguration_set(path, value),
            format!("if not already {value}"),
        ),
    ]
}
