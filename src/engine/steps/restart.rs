//! `restart`: `SystemUnit Boot`, wait for the device to accept SSH again, log in again and
//! go on; judged by the uptime recorded before the boot, so a rerun does not reboot again.

use crate::journal::StepOutputs;
use std::time::Duration;

use super::{
    changed, local, require_ok, send, would, StepContext, StepDone, StepError, WriteAhead,
};
use crate::ssh::{SshError, TshSession};
use crate::tsh::TshCommand;

/// Seconds of rounding a restart check tolerates (uptimes are whole seconds).
const UPTIME_SLACK_SECS: u64 = 3;

/// Whether a device restarted since it reported `before` seconds of uptime,
/// `elapsed` seconds ago: without a restart its uptime would be `before + elapsed` (pure).
pub fn restarted_since(before: u64, elapsed: u64, now: u64) -> bool {
    now + UPTIME_SLACK_SECS < before.saturating_add(elapsed)
}

/// The status node the restart is judged by (the command reads it, the reply carries it).
pub use crate::tsh::UPTIME;

fn uptime_cmd() -> Result<TshCommand, StepError> {
    TshCommand::xstatus(UPTIME).map_err(local)
}

fn boot_cmd() -> Result<TshCommand, crate::tsh::EncodeError> {
    TshCommand::xcommand("SystemUnit Boot")
}

pub(super) async fn uptime_on(session: &mut TshSession) -> Result<u64, StepError> {
    let cmd = uptime_cmd()?;
    let reply = session.run(&cmd).await?;
    require_ok(&cmd, &reply)?;
    reply
        .get(UPTIME)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| StepError::Refused(format!("the device reports no {UPTIME}")))
}

fn elapsed_secs(since_ms: u64) -> u64 {
    crate::journal::now_ms().saturating_sub(since_ms) / 1000
}

/// `xCommand SystemUnit Boot`, then waits (up to `timeout`) for the device to accept SSH
/// again with a lower uptime, and carries on with the new session. The uptime before the
/// boot is journalled with the write-ahead record, so a rerun after a crash sees that the
/// device already restarted and does not boot it again.
///
/// A restart is an action done once per run; with `if_changed` (the default) only when an
/// earlier step of this run changed the device, so a rerun that changes nothing reboots
/// nothing.
pub async fn restart(
    ctx: &mut StepContext<'_>,
    step: &crate::playbook::Restart,
    write_ahead: &mut WriteAhead<'_>,
) -> Result<StepDone, StepError> {
    let timeout = step.timeout;
    if step.if_changed && !ctx.changed_earlier && !ctx.resuming {
        return Ok(super::unchanged(
            "no earlier step changed the device in this run: no restart needed",
        ));
    }
    let uptime = uptime_on(ctx.session).await?;
    let recorded = (
        ctx.step_outputs.uptime_before,
        ctx.step_outputs.boot_sent_at_ms,
    );
    if let (true, (Some(before), Some(at))) = (ctx.resuming, recorded) {
        if restarted_since(before, elapsed_secs(at), uptime) {
            return Ok(changed(format!(
                "the device restarted after an earlier attempt (uptime {uptime}s, was {before}s)"
            )));
        }
    }
    let cmd = boot_cmd().map_err(local)?;
    if ctx.check_mode {
        return Ok(would(&cmd));
    }
    let sent_at = crate::journal::now_ms();
    write_ahead
        .in_flight(
            "restart",
            StepOutputs {
                uptime_before: Some(uptime),
                boot_sent_at_ms: Some(sent_at),
                ..StepOutputs::default()
            },
        )
        .await?;
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
                "the device did not come back within {}s after `{}` (last: {last_error})",
                timeout.as_secs(),
                cmd.redacted_line()
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
                    outputs: StepOutputs {
                        uptime_after: Some(now),
                        ..StepOutputs::default()
                    },
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

pub(super) fn plan(
    step: &crate::playbook::Restart,
    notes: &mut Vec<String>,
) -> Vec<super::PlannedCommand> {
    use super::{planned, PlannedCommand};
    notes.push(format!(
        "then waits up to {}s for the device to accept SSH with a lower uptime, logs in again \
         and runs the next step on the new session",
        step.timeout.as_secs()
    ));
    let uptime = match uptime_cmd() {
        Ok(c) => planned(Ok(c), "always"),
        Err(e) => PlannedCommand {
            text: e.to_string(),
            when: "always".into(),
            read_only: true,
        },
    };
    let when = if step.if_changed {
        "once per run, if an earlier step of the run changed the device, unless an earlier \
         attempt's boot already restarted it (lower uptime)"
    } else {
        "once per run, unless an earlier attempt's boot already restarted it (lower uptime)"
    };
    vec![uptime, planned(boot_cmd(), when)]
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
}
