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

/// Whether stderr output may carry ANSI colour: only on a terminal, and never when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>). Logs written to a file
/// or `docker logs` stay plain text.
pub fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The rule behind [`colour_stderr`] (pure, for tests).
pub fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Progress bars on a terminal: one overall bar (devices done, elapsed, ETA) and one spinner
/// per device in progress showing "step k/n".
pub struct ProgressReporter {
    multi: MultiProgress,
    overall: ProgressBar,
    devices: Mutex<HashMap<String, ProgressBar>>,
    steps: std::sync::atomic::AtomicUsize,
    /// The step ids each device has started, in order (k of "step k/n"; a retried step
    /// keeps its place).
    started: Mutex<HashMap<String, Vec<String>>>,
}

impl ProgressReporter {
    pub fn new(multi: MultiProgress) -> Self {
        let overall = multi.add(ProgressBar::new(0));
        let template = if colour_stderr() {
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} devices, {elapsed} elapsed, ETA {eta} {msg}"
        } else {
            "{prefix} [{bar:30}] {pos}/{len} devices, {elapsed} elapsed, ETA {eta} {msg}"
        };
        overall.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(200));
        ProgressReporter {
            multi,
            overall,
            devices: Mutex::new(HashMap::new()),
            steps: std::sync::atomic::AtomicUsize::new(0),
            started: Mutex::new(HashMap::new()),
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
                playbook,
                devices,
                steps,
                ..
            } => {
                self.overall.set_length(*devices as u64);
                self.overall.set_prefix(escape(playbook).into_owned());
                self.steps
                    .store(*steps, std::sync::atomic::Ordering::Relaxed);
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
                    let n = self.steps.load(std::sync::atomic::Ordering::Relaxed);
                    let k = self
                        .started
                        .lock()
                        .map(|mut m| {
                            let ids = m.entry(device.clone()).or_default();
                            match ids.iter().position(|i| i == step) {
                                Some(p) => p + 1,
                                None => {
                                    ids.push(step.clone());
                                    ids.len()
                                }
                            }
                        })
                        .unwrap_or(0);
                    b.set_message(escape(&step_progress(step, k, n)).into_owned());
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
                if let Ok(mut m) = self.started.lock() {
                    m.remove(&outcome.device);
                }
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

/// "step k/n: kind" for a step id (`activate_certificate-332fa558`: the kind, then a digest
/// of its inputs) that is the device's k-th step of n.
pub fn step_progress(step: &str, k: usize, steps: usize) -> String {
    let kind = match step.rsplit_once('-') {
        Some((kind, digest))
            if !digest.is_empty() && digest.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            kind
        }
        _ => step,
    };
    if steps == 0 {
        kind.to_string()
    } else {
        format!("step {k}/{steps}: {kind}")
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

/// Version of the `--output json` event lines.
pub const EVENTS_VERSION: u32 = 1;

/// One `--output json` line: the event, with the stream's schema version and the time it
/// was emitted.
#[derive(Serialize, schemars::JsonSchema)]
pub struct EventLine<'a> {
    /// Schema version of the event stream (`docs/schemas/events.schema.json`).
    pub version: u32,
    /// When the event was emitted (RFC 3339, UTC, milliseconds).
    pub ts: String,
    #[serde(flatten)]
    pub event: &'a Event,
}

/// The current time as the event stream writes it.
fn timestamp_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

impl<W: Write + Send> Reporter for JsonReporter<W> {
    fn event(&self, event: &Event) {
        let line = EventLine {
            version: EVENTS_VERSION,
            ts: timestamp_now(),
            event,
        };
        if let (Ok(json), Ok(mut out)) = (serde_json::to_string(&line), self.out.lock()) {
            let _ = writeln!(out, "{json}");
            let _ = out.flush();
        }
    }
}

/// Every device status, in the order counts are shown.
const ALL_STATUSES: [DeviceStatus; 11] = [
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
];

/// Successful devices listed one per line in the recap up to this many; above it they are
/// summarised (the report file has every device).
pub const RECAP_LIST_OK: usize = 20;

/// The recap printed at the end of a run: the counts first, then every device that did not
/// succeed with its failing step and reason, then the successful ones (listed when few,
/// summarised when many), so that at 300 devices what needs attention is on screen.
pub fn render_recap(summary: &RunSummary) -> String {
    let mut out = String::new();
    let counts: Vec<String> = ALL_STATUSES
        .iter()
        .filter_map(|s| {
            let n = summary.count(*s);
            (n > 0).then(|| format!("{}={n}", s.as_str()))
        })
        .collect();
    out.push_str(&format!(
        "{} devices in {:.1}s: {}\n",
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
    let (bad, good): (Vec<_>, Vec<_>) = summary
        .outcomes
        .iter()
        .partition(|o| !o.status.is_success());
    let listed: Vec<_> = if good.len() <= RECAP_LIST_OK {
        bad.iter().chain(good.iter()).collect()
    } else {
        bad.iter().collect()
    };
    if !listed.is_empty() {
        let width = listed
            .iter()
            .map(|o| escape(&o.device).chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        out.push_str(&format!(
            "\n{:width$}  {:16}  {}\n",
            "DEVICE", "STATUS", "DETAIL"
        ));
        for o in listed {
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
    }
    if good.len() > RECAP_LIST_OK {
        out.push_str(&format!(
            "\n{} devices succeeded (changed={} ok={}); every device is in the report \
             (--report FILE, --report-html FILE)\n",
            good.len(),
            summary.count(DeviceStatus::Changed),
            summary.count(DeviceStatus::Ok)
        ));
    }
    out
}

/// The `--report` JSON document.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ReportDocument<'a> {
    /// Schema version (`docs/schemas/report.schema.json`).
    pub version: u32,
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// The exit code `roomkey apply` ended with.
    pub exit_code: i32,
    #[serde(flatten)]
    pub summary: &'a RunSummary,
}

/// Version of the `plan --json` document.
pub const PLAN_VERSION: u32 = 1;

/// The `plan --json` document: the per-device plans, versioned.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PlanDocument<'a> {
    /// Schema version (`docs/schemas/plan.schema.json`).
    pub version: u32,
    pub tool: &'static str,
    pub tool_version: &'static str,
    pub playbook: &'a str,
    pub devices: &'a [crate::plan::DevicePlan],
}

impl<'a> PlanDocument<'a> {
    pub fn new(playbook: &'a str, devices: &'a [crate::plan::DevicePlan]) -> Self {
        PlanDocument {
            version: PLAN_VERSION,
            tool: "roomkey",
            tool_version: env!("CARGO_PKG_VERSION"),
            playbook,
            devices,
        }
    }
}

/// The JSON Schemas of every machine-readable output, generated from the types that
/// serialise them: (file name under `docs/schemas/`, schema).
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let v = |s: schemars::Schema| s.to_value();
    vec![
        (
            "report.schema.json",
            v(schemars::schema_for!(ReportDocument<'static>)),
        ),
        (
            "events.schema.json",
            v(schemars::schema_for!(EventLine<'static>)),
        ),
        (
            "plan.schema.json",
            v(schemars::schema_for!(PlanDocument<'static>)),
        ),
        (
            "status.schema.json",
            v(schemars::schema_for!(
                crate::status::StatusDocument<'static>
            )),
        ),
    ]
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

// ---- Self-contained HTML (a page an administrator can attach to a change ticket) --------

/// Text made safe inside HTML element content and attribute values; control characters
/// become `?` (a device's text never carries markup or terminal escapes into the page).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if crate::display::is_unsafe(c) => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// One certificate on the expiry picture: a device and its whole days left (`None`:
/// unknown), and whether it is in trouble for another reason (unreadable, invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryPoint {
    pub device: String,
    pub days_left: Option<i64>,
}

/// Expiry buckets of the picture: label, inclusive upper bound of days left.
const BUCKETS: [(&str, i64); 6] = [
    ("expired", -1),
    ("< 7 days", 6),
    ("< 30 days", 29),
    ("< 90 days", 89),
    ("< 1 year", 364),
    ("1 year +", i64::MAX),
];

/// An inline SVG bar chart of certificates by days left (no script, no fetch).
pub fn expiry_svg(points: &[ExpiryPoint]) -> String {
    let mut counts = [0usize; BUCKETS.len() + 1];
    for p in points {
        let i = match p.days_left {
            Some(d) => BUCKETS
                .iter()
                .position(|(_, max)| d <= *max)
                .unwrap_or(BUCKETS.len() - 1),
            None => BUCKETS.len(),
        };
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    let labels: Vec<&str> = BUCKETS
        .iter()
        .map(|(l, _)| *l)
        .chain(std::iter::once("unknown"))
        .collect();
    let colours = [
        "#b00020", "#d84315", "#f9a825", "#9e9d24", "#2e7d32", "#1b5e20", "#757575",
    ];
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let (bar_w, gap, height) = (90usize, 16usize, 160usize);
    let width = labels.len() * (bar_w + gap) + gap;
    let mut svg = format!(
        "<svg id=\"expiry-chart\" role=\"img\" aria-label=\"certificates by days left\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" \
         viewBox=\"0 0 {width} {}\">",
        height + 50,
        height + 50
    );
    for (i, (label, count)) in labels.iter().zip(counts).enumerate() {
        let h = count * height / max;
        let x = gap + i * (bar_w + gap);
        let y = height + 10 - h;
        let colour = colours.get(i).copied().unwrap_or("#757575");
        svg.push_str(&format!(
            "<rect class=\"bar\" data-bucket=\"{label}\" data-count=\"{count}\" x=\"{x}\" \
             y=\"{y}\" width=\"{bar_w}\" height=\"{h}\" fill=\"{colour}\"></rect>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\">{count}</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">{label}</text>",
            x + bar_w / 2,
            y.saturating_sub(4).max(12),
            x + bar_w / 2,
            height + 30,
            label = html_escape(label),
        ));
    }
    svg.push_str("</svg>");
    svg
}

const HTML_STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;\
text-align:left;font-size:14px}th{background:#f0f0f0}tr.bad td{background:#fdecea}\
tr.warn td{background:#fff8e1}td:first-child{white-space:nowrap}.counts span{margin-right:1.5em}code{font-size:13px}";

fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:\">\
         <title>{}</title><style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n",
        html_escape(title)
    )
}

/// The run report as one self-contained HTML page: summary counts, every device's outcome
/// (failing step and reason first), and the certificates' expiry across the fleet.
pub fn render_run_html(summary: &RunSummary, expiry: &[ExpiryPoint]) -> String {
    let mut body = format!(
        "<h1>roomkey run: {}</h1>\n<p>run <code>{}</code>, {} devices in {:.1} s{}, exit code \
         <span id=\"exit-code\">{}</span>, roomkey {}</p>\n",
        html_escape(&summary.playbook),
        html_escape(&summary.run),
        summary.outcomes.len(),
        summary.duration_ms as f64 / 1000.0,
        if summary.check_mode {
            " (check mode: read-only)"
        } else {
            ""
        },
        summary.exit_code(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(stopped) = &summary.stopped_early {
        body.push_str(&format!(
            "<p><strong>Stopped early, resumable:</strong> {}</p>\n",
            html_escape(&stopped.reason)
        ));
    }
    body.push_str("<p class=\"counts\" id=\"counts\">");
    for s in ALL_STATUSES {
        let n = summary.count(s);
        if n > 0 {
            body.push_str(&format!(
                "<span data-status=\"{0}\">{0}: <b>{n}</b></span>",
                s.as_str()
            ));
        }
    }
    body.push_str("</p>\n<h2>Certificate expiry</h2>\n");
    body.push_str(&expiry_svg(expiry));
    body.push_str(
        "\n<h2>Devices</h2>\n<table id=\"devices\"><thead><tr><th>device</th><th>address</th>\
         <th>status</th><th>failed step</th><th>reason / identity</th><th>days left</th>\
         <th>duration</th></tr></thead><tbody>\n",
    );
    let mut outcomes: Vec<&crate::engine::events::DeviceOutcome> =
        summary.outcomes.iter().collect();
    outcomes.sort_by_key(|o| (o.status.is_success(), o.device.clone()));
    for o in outcomes {
        let days = expiry
            .iter()
            .find(|p| p.device == o.device)
            .and_then(|p| p.days_left)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let class = if o.status.is_success() { "ok" } else { "bad" };
        body.push_str(&format!(
            "<tr class=\"{class}\" data-device=\"{dev}\"><td>{dev}</td><td>{}</td>\
             <td class=\"status\">{}</td><td>{}</td><td>{}</td><td>{days}</td><td>{:.1} s</td></tr>\n",
            html_escape(&o.address),
            o.status.as_str(),
            html_escape(o.failed_step.as_deref().unwrap_or("")),
            html_escape(o.reason.as_deref().or(o.identity.as_deref()).unwrap_or("")),
            o.duration_ms as f64 / 1000.0,
            dev = html_escape(&o.device),
        ));
    }
    body.push_str("</tbody></table>\n");
    html_page(&format!("roomkey run: {}", summary.playbook), &body)
}

/// `status --html`: the fleet's identities and expiry as one self-contained page.
pub fn render_status_html(
    rows: &[crate::status::DeviceRow],
    now: time::OffsetDateTime,
    warn_days: i64,
) -> String {
    let generated = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let attention = rows.iter().filter(|r| r.needs_attention(warn_days)).count();
    let mut body = format!(
        "<h1>roomkey fleet status</h1>\n<p>read {generated}: {} devices, <span id=\"attention\">{attention}</span> need attention \
         (unreadable, no valid identity, or expiring within {warn_days} days)</p>\n\
         <h2>Certificate expiry</h2>\n",
        rows.len()
    );
    let points: Vec<ExpiryPoint> = rows
        .iter()
        .map(|r| ExpiryPoint {
            device: r.device.clone(),
            days_left: r.days_left,
        })
        .collect();
    body.push_str(&expiry_svg(&points));
    body.push_str(
        "\n<h2>Devices</h2>\n<table id=\"devices\"><thead><tr><th>device</th><th>state</th>\
         <th>identity</th><th>days left</th><th>not after</th><th>fingerprint</th><th>E2EE</th>\
         <th>seeded</th><th>software</th><th>last run</th></tr></thead><tbody>\n",
    );
    for r in rows {
        let state = crate::status::state_word(r, warn_days);
        let class = match state {
            "ok" => "ok",
            "expiring" => "warn",
            _ => "bad",
        };
        let o = |v: &Option<String>| html_escape(v.as_deref().unwrap_or("-"));
        body.push_str(&format!(
            "<tr class=\"{class}\" data-device=\"{dev}\"><td>{dev}</td><td class=\"state\">{state}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>\n",
            html_escape(r.error.as_deref().or(r.identity.as_deref()).unwrap_or("-")),
            r.days_left.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
            o(&r.not_after),
            o(&r.fingerprint),
            o(&r.e2ee_mode),
            match r.secret_seeded {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            o(&r.software),
            html_escape(
                &r.last_run
                    .as_ref()
                    .map(|l| format!("{} {} {}", l.playbook, l.outcome, l.at))
                    .unwrap_or_else(|| "-".into())
            ),
            dev = html_escape(&r.device),
        ));
    }
    body.push_str("</tbody></table>\n");
    html_page("roomkey fleet status", &body)
}

/// Writes the HTML run report atomically.
pub fn write_html_report(
    path: &Path,
    summary: &RunSummary,
    expiry: &[ExpiryPoint],
) -> std::io::Result<()> {
    crate::fsutil::write_atomic(path, render_run_html(summary, expiry).as_bytes(), 0o644)
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
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn step_k_of_n() {
        assert_eq!(
            step_progress("show_certificates-0a1b2c3d", 3, 6),
            "step 3/6: show_certificates"
        );
        assert_eq!(
            step_progress("set_configuration", 5, 6),
            "step 5/6: set_configuration"
        );
        assert_eq!(step_progress("restart", 1, 0), "restart");
    }

    #[test]
    fn recap_at_300_devices_puts_counts_and_failures_first() {
        let mut outcomes: Vec<DeviceOutcome> = (0..298)
            .map(|i| outcome(&format!("room-{i:03}"), DeviceStatus::Changed))
            .collect();
        outcomes.insert(150, outcome("room-bad", DeviceStatus::Failed));
        outcomes.push(outcome("room-down", DeviceStatus::Unreachable));
        let s = RunSummary {
            playbook: "p".into(),
            run: "r".into(),
            outcomes,
            stopped_early: None,
            duration_ms: 1,
            check_mode: false,
            kdf: Default::default(),
        };
        let recap = render_recap(&s);
        let lines: Vec<&str> = recap.lines().collect();
        assert!(lines.len() < 12, "{recap}");
        assert!(lines[0].starts_with("300 devices in"), "{recap}");
        assert!(
            lines[0].contains("changed=298 failed=1 unreachable=1"),
            "{recap}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("room-bad ") && l.contains(" failed ")),
            "{recap}"
        );
        assert!(
            recap.contains("02-add_certificate: device refused"),
            "{recap}"
        );
        assert!(recap.contains("room-down"), "{recap}");
        assert!(recap.contains("298 devices succeeded"), "{recap}");
        assert!(!recap.contains("room-007"), "{recap}");
    }

    #[test]
    fn html_report_escapes_and_pictures_expiry() {
        let mut bad = outcome("room-<b>", DeviceStatus::Failed);
        bad.reason = Some("<script>alert(1)</script>\u{1b}[2J".into());
        let s = RunSummary {
            playbook: "p".into(),
            run: "r".into(),
            outcomes: vec![outcome("room-1", DeviceStatus::Changed), bad],
            stopped_early: None,
            duration_ms: 1,
            check_mode: false,
            kdf: Default::default(),
        };
        let points = [
            ExpiryPoint {
                device: "room-1".into(),
                days_left: Some(20),
            },
            ExpiryPoint {
                device: "room-<b>".into(),
                days_left: Some(-2),
            },
        ];
        let page = render_run_html(&s, &points);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains('\u{1b}'));
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(
            page.contains("data-bucket=\"expired\" data-count=\"1\""),
            "{page}"
        );
        assert!(
            page.contains("data-bucket=\"&lt; 30 days\" data-count=\"1\""),
            "{page}"
        );
        // Nothing fetched from anywhere.
        let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!without_ns.contains("http:") && !without_ns.contains("https:"));
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
