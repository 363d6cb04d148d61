//! Output at the edge: reporters that turn engine events into progress bars (a terminal),
//! plain lines (a pipe or a log file) or JSON lines (`--output json`); the final recap
//! table; the versioned JSON report file; and a tracing writer that never garbles the bars.
//! Nothing here sees a secret: events carry none.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::display::escape;
use crate::engine::events::{DeviceStatus, Event, Reporter, RunSummary};
use crate::journal::StepStatus;

/// Version of the `--report` JSON document.
pub const REPORT_VERSION: u32 = 1;

/// Progress bars on a terminal: one overall bar and one spinner per device in progress.
pub struct ProgressReporter {
    multi: MultiProgress,
    overall: ProgressBar,
    devices: Mutex<HashMap<String, ProgressBar>>,
}

impl ProgressReporter {
    pub fn new(multi: MultiProgress) -> Self {
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} devices {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(200));
        ProgressReporter {
            multi,
            overall,
            devices: Mutex::new(HashMap::new()),
        }
    }

    fn device_bar(&self, device: &str) -> Option<ProgressBar> {
        let mut map = self.devices.lock().ok()?;
        Some(
            map.entry(device.to_string())
                .or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix:20} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(escape(device).into_owned());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                })
                .clone(),
        )
    }
}

impl Reporter for ProgressReporter {
    fn event(&self, event: &Event) {
        match event {
            Event::RunStarted {
                playbook, devices, ..
            } => {
                self.overall.set_length(*devices as u64);
                self.overall.set_prefix(escape(playbook).into_owned());
            }
            Event::Connecting { device, attempt } => {
                if let Some(b) = self.device_bar(device) {
                    b.set_message(if *attempt > 1 {
                        format!("connecting (attempt {attempt})")
                    } else {
                        "connecting".into()
                    });
                }
            }
            Event::StepStarted { device, step } => {
                if let Some(b) = self.device_bar(device) {
                    b.set_message(escape(step).into_owned());
                }
            }
            Event::Notice { device, message } => {
                let line = match device {
                    Some(d) => format!("{d}: {message}"),
                    None => message.clone(),
                };
                self.multi.suspend(|| eprintln!("{}", escape(&line)));
            }
            Event::DeviceFinished { outcome } => {
                if let Some(bar) = self
                    .devices
                    .lock()
                    .ok()
                    .and_then(|mut m| m.remove(&outcome.device))
                {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if !outcome.status.is_success() {
                    let line = format!(
                        "{}: {}{}",
                        outcome.device,
                        outcome.status.as_str(),
                        outcome
                            .reason
                            .as_deref()
                            .map(|r| format!(" — {r}"))
                            .unwrap_or_default()
                    );
                    self.multi.suspend(|| eprintln!("{}", escape(&line)));
                }
                self.overall.inc(1);
            }
            Event::Stopping { reason } => self
                .overall
                .set_message(format!("stopping: {}", escape(reason))),
            Event::RunFinished { .. } => self.overall.finish_and_clear(),
            _ => {}
        }
    }
}

/// One line per step and device outcome (non-terminal output).
pub struct PlainReporter<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> PlainReporter<W> {
    pub fn new(out: W) -> Self {
        PlainReporter {
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> Reporter for PlainReporter<W> {
    fn event(&self, event: &Event) {
        let line = match event {
            Event::RunStarted {
                playbook,
                devices,
                steps,
                check_mode,
                ..
            } => Some(format!(
                "run {playbook}: {devices} devices, {steps} steps{}",
                if *check_mode {
                    " (check mode: read-only)"
                } else {
                    ""
                }
            )),
            Event::StepFinished { device, step } => Some(format!(
                "{device}: {} {}{}{}",
                step.id,
                status_word(step.status, step.changed),
                step.duration_ms
                    .map(|d| format!(" {d}ms"))
                    .unwrap_or_default(),
                step.note
                    .as_deref()
                    .map(|n| format!(" — {n}"))
                    .unwrap_or_default()
            )),
            Event::Notice { device, message } => Some(match device {
                Some(d) => format!("{d}: {message}"),
                None => message.clone(),
            }),
            Event::DeviceFinished { outcome } => Some(format!(
                "{}: {}{}",
                outcome.device,
                outcome.status.as_str(),
                outcome
                    .reason
                    .as_deref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default()
            )),
            Event::Stopping { reason } => Some(format!("stopping: {reason}")),
            _ => None,
        };
        // Names, notes and reasons come from files and devices: one escaped line each.
        if let (Some(line), Ok(mut out)) = (line, self.out.lock()) {
            let _ = writeln!(out, "{}", escape(&line));
            let _ = out.flush();
        }
    }
}

fn status_word(status: StepStatus, changed: bool) -> &'static str {
    match (status, changed) {
        (StepStatus::Done, true) => "changed",
        (StepStatus::Done, false) => "ok",
        (StepStatus::Failed, _) => "FAILED",
        (StepStatus::Skipped, _) => "skipped",
        (StepStatus::InFlight, _) => "interrupted",
        (StepStatus::Pending, _) => "pending",
    }
}

/// Every event as one JSON line (`--output json`).
pub struct JsonReporter<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> JsonReporter<W> {
    pub fn new(out: W) -> Self {
        JsonReporter {
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> Reporter for JsonReporter<W> {
    fn event(&self, event: &Event) {
        if let (Ok(json), Ok(mut out)) = (serde_json::to_string(event), self.out.lock()) {
            let _ = writeln!(out, "{json}");
            let _ = out.flush();
        }
    }
}

/// The recap table printed at the end of a run.
pub fn render_recap(summary: &RunSummary) -> String {
    let mut out = String::new();
    let width = summary
        .outcomes
        .iter()
        .map(|o| escape(&o.device).chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!(
        "{:width$}  {:16}  {}\n",
        "DEVICE", "STATUS", "DETAIL"
    ));
    for o in &summary.outcomes {
        let detail = match (&o.failed_step, &o.reason, &o.identity) {
            (Some(step), Some(reason), _) => format!("{step}: {reason}"),
            (None, Some(reason), _) => reason.clone(),
            (_, None, Some(identity)) => format!("identity {identity}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:width$}  {:16}  {}\n",
            escape(&o.device),
            o.status.as_str(),
            escape(&detail)
        ));
    }
    let counts: Vec<String> = [
        DeviceStatus::Ok,
        DeviceStatus::Changed,
        DeviceStatus::Failed,
        DeviceStatus::TimedOut,
        DeviceStatus::Unreachable,
        DeviceStatus::AuthFailed,
        DeviceStatus::HostKeyChanged,
        DeviceStatus::HostKeyUnknown,
        DeviceStatus::SecretUnknown,
        DeviceStatus::Interrupted,
        DeviceStatus::NotStarted,
    ]
    .iter()
    .filter_map(|s| {
        let n = summary.count(*s);
        (n > 0).then(|| format!("{}={n}", s.as_str()))
    })
    .collect();
    out.push_str(&format!(
        "\n{} devices in {:.1}s: {}\n",
        summary.outcomes.len(),
        summary.duration_ms as f64 / 1000.0,
        counts.join(" ")
    ));
    if let Some(stopped) = &summary.stopped_early {
        out.push_str(&format!(
            "stopped early, resumable: {}\n",
            escape(&stopped.reason)
        ));
    }
    out
}

#[derive(Serialize)]
struct ReportDocument<'a> {
    version: u32,
    tool: &'static str,
    tool_version: &'static str,
    exit_code: i32,
    #[serde(flatten)]
    summary: &'a RunSummary,
}

/// Writes the `--report` JSON document atomically.
pub fn write_report(path: &Path, summary: &RunSummary) -> std::io::Result<()> {
    let doc = ReportDocument {
        version: REPORT_VERSION,
        tool: "roomkey",
        tool_version: env!("CARGO_PKG_VERSION"),
        exit_code: summary.exit_code(),
        summary,
    };
    let json = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, &json, 0o644)
}

/// A tracing writer for stderr that pauses the progress bars while a line is written.
#[derive(Clone)]
pub struct LogWriter {
    multi: Option<MultiProgress>,
}

impl LogWriter {
    pub fn new(multi: Option<MultiProgress>) -> Self {
        LogWriter { multi }
    }
}

pub struct LogLine {
    multi: Option<MultiProgress>,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let write = || {
            let _ = std::io::stderr().write_all(&buf);
        };
        match &self.multi {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            multi: self.multi.clone(),
            buf: Vec::new(),
        }
    }
}

/// A `MultiProgress` drawing to stderr, or hidden when stderr is not a terminal.
pub fn multi_progress(visible: bool) -> MultiProgress {
    if visible {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::{DeviceOutcome, StoppedEarly};

    fn outcome(name: &str, status: DeviceStatus) -> DeviceOutcome {
        DeviceOutcome {
            device: name.into(),
            address: "127.0.0.1:22".into(),
            status,
            failed_step: (status == DeviceStatus::Failed).then(|| "02-add_certificate".into()),
            reason: (status == DeviceStatus::Failed).then(|| "device refused".into()),
            identity: (status == DeviceStatus::Changed).then(|| "r.example.com".into()),
            steps: vec![],
            duration_ms: 5,
            connections: 1,
        }
    }

    #[test]
    fn recap_and_exit_codes() {
        let mut s = RunSummary {
            playbook: "p".into(),
            run: "r".into(),
            outcomes: vec![
                outcome("room-1", DeviceStatus::Changed),
                outcome("room-2", DeviceStatus::Ok),
            ],
            stopped_early: None,
            duration_ms: 1500,
            check_mode: false,
            kdf: Default::default(),
        };
        assert_eq!(s.exit_code(), 0);
        let recap = render_recap(&s);
        assert!(recap.contains("room-1  changed"), "{recap}");
        assert!(recap.contains("identity r.example.com"), "{recap}");
        s.outcomes
            .push(outcome("room-3", DeviceStatus::Unreachable));
        assert_eq!(s.exit_code(), 3);
        s.outcomes.push(outcome("room-4", DeviceStatus::Failed));
        assert_eq!(s.exit_code(), 2);
        assert!(render_recap(&s).contains("02-add_certificate: device refused"));
        let s2 = RunSummary {
            outcomes: vec![
                outcome("a", DeviceStatus::Ok),
                outcome("b", DeviceStatus::NotStarted),
            ],
            stopped_early: Some(StoppedEarly { reason: "x".into() }),
            ..s
        };
        assert_eq!(s2.exit_code(), 4);
    }

    #[test]
    fn report_file_is_versioned_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let s = RunSummary {
            playbook: "p".into(),
            run: "r".into(),
            outcomes: vec![outcome("room-1", DeviceStatus::Changed)],
            stopped_early: None,
            duration_ms: 1,
            check_mode: false,
            kdf: Default::default(),
        };
        write_report(&path, &s).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["outcomes"][0]["status"], "changed");
    }
}
