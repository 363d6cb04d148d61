//! Rollout policy, pure: rolling batches (`serial`), failure budgets and maintenance
//! windows. No I/O and no clock of its own — callers pass `now` — so every decision is
//! unit-tested with fixed times, including windows that cross midnight and DST changes.

use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::{Deserialize, Deserializer};

/// One entry of `serial:` — a device count or a percentage of the selected devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchSize {
    Count(usize),
    Percent(f64),
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(0) => Err(serde::de::Error::custom("a batch size must be at least 1")),
            Raw::Count(n) => Ok(BatchSize::Count(n)),
            Raw::Text(t) => parse_batch_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_batch_size(text: &str) -> Result<BatchSize, String> {
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not a percentage (e.g. \"25%\")"))?;
        if !(v > 0.0 && v <= 100.0) {
            return Err(format!(
                "'{text}': a percentage must be above 0 and at most 100"
            ));
        }
        Ok(BatchSize::Percent(v))
    } else {
        match t.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "'{text}' is not a batch size (a number of devices ≥ 1 or a percentage like \"25%\")"
            )),
            Ok(n) => Ok(BatchSize::Count(n)),
        }
    }
}

/// `serial:` as a single size or a list (the last entry repeats until every device ran).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Serial(pub Vec<BatchSize>);

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(BatchSize),
            Many(Vec<BatchSize>),
        }
        Ok(Serial(match Raw::deserialize(d)? {
            Raw::One(b) => vec![b],
            Raw::Many(v) => v,
        }))
    }
}

/// Splits `total` devices into batch sizes. Percentages round up (a batch has at least one
/// device); no serial means one batch of everything.
pub fn batch_sizes(total: usize, serial: &Serial) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let size = match serial.0.get(i).or(serial.0.last()) {
            None => left,
            Some(BatchSize::Count(n)) => *n,
            Some(BatchSize::Percent(p)) => ((total as f64) * p / 100.0).ceil() as usize,
        }
        .clamp(1, left);
        out.push(size);
        left -= size;
        i += 1;
    }
    out
}

/// Failure budgets of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    /// A batch whose failed share exceeds this stops the run.
    pub max_fail_percentage: Option<f64>,
    /// More failed devices than this in the whole run stops it.
    pub max_failures: Option<usize>,
    /// Any failure stops the run (canaries).
    pub any_errors_fatal: bool,
}

impl Budget {
    /// Checked whenever a device fails: the run-wide budgets.
    pub fn run_tripped(&self, failed_total: usize) -> Option<String> {
        if self.any_errors_fatal && failed_total > 0 {
            return Some("any_errors_fatal: a device failed".into());
        }
        match self.max_failures {
            Some(max) if failed_total > max => Some(format!(
                "max_failures: {failed_total} devices failed (budget {max})"
            )),
            _ => None,
        }
    }

    /// Checked when a batch ends.
    pub fn batch_tripped(&self, batch: usize, size: usize, failed: usize) -> Option<String> {
        let max = self.max_fail_percentage?;
        let share = if size == 0 {
            0.0
        } else {
            failed as f64 * 100.0 / size as f64
        };
        (share > max).then(|| {
            format!(
                "max_fail_percentage: {failed} of {size} devices failed in batch {batch} \
                 ({share:.0}% > {max}%)"
            )
        })
    }
}

/// A daily maintenance window in a time zone (`start`..`end`, may cross midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: Time,
    pub end: Time,
    pub tz: TimeZone,
    pub tz_name: String,
}

/// The YAML form: `window: { start: "22:00", end: "06:00", timezone: Europe/Oslo }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub start: String,
    pub end: String,
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl WindowSpec {
    pub fn resolve(&self) -> Result<Window, String> {
        let parse = |s: &str, what: &str| {
            s.parse::<Time>()
                .map_err(|_| format!("window {what} '{s}' is not a time of day (e.g. \"22:00\")"))
        };
        let start = parse(&self.start, "start")?;
        let end = parse(&self.end, "end")?;
        if start == end {
            return Err("window start and end are the same time".into());
        }
        let tz = TimeZone::get(&self.timezone).map_err(|_| {
            format!(
                "unknown time zone '{}' (use an IANA name such as Europe/Oslo, or UTC)",
                self.timezone
            )
        })?;
        Ok(Window {
            start,
            end,
            tz,
            tz_name: self.timezone.clone(),
        })
    }
}

/// Whether a device may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowDecision {
    /// Inside the window, and the estimate fits before it closes.
    Fits { closes: Timestamp },
    /// Inside the window, but the device would not finish before it closes.
    TooLate { closes: Timestamp },
    /// Outside the window.
    Closed { opens: Timestamp },
}

impl Window {
    /// The occurrences (start, end) that begin on the day before, the day of and the day
    /// after `now` (local), in order.
    fn occurrences(&self, now: Timestamp) -> Vec<(Timestamp, Timestamp)> {
        let local = now.to_zoned_datetime(self.tz.clone());
        let today = local.date();
        let mut out = Vec::new();
        for offset in [-1i64, 0, 1] {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let end_day = if self.end > self.start {
                Ok(day)
            } else {
                day.checked_add(jiff::Span::new().days(1))
            };
            let Ok(end_day) = end_day else { continue };
            let start = day
                .to_datetime(self.start)
                .to_zoned_datetime(self.tz.clone());
            let end = end_day
                .to_datetime(self.end)
                .to_zoned_datetime(self.tz.clone());
            if let (Ok(s), Ok(e)) = (start, end) {
                out.push((s.timestamp(), e.timestamp()));
            }
        }
        out
    }

    /// Decides for a device expected to take `estimate`.
    pub fn decide(&self, now: Timestamp, estimate: Duration) -> WindowDecision {
        let occurrences = self.occurrences(now);
        if let Some((_, end)) = occurrences.iter().find(|(s, e)| *s <= now && now < *e) {
            let finish = jiff::SignedDuration::try_from(estimate)
                .ok()
                .and_then(|d| now.checked_add(d).ok());
            return match finish {
                Some(f) if f <= *end => WindowDecision::Fits { closes: *end },
                _ => WindowDecision::TooLate { closes: *end },
            };
        }
        let opens = occurrences
            .iter()
            .map(|(s, _)| *s)
            .find(|s| *s > now)
            .unwrap_or(now);
        WindowDecision::Closed { opens }
    }

    /// The next time the window opens strictly after `now`.
    pub fn next_open(&self, now: Timestamp) -> Timestamp {
        let mut probe = now;
        for _ in 0..3 {
            if let Some(s) = self
                .occurrences(probe)
                .into_iter()
                .map(|(s, _)| s)
                .find(|s| *s > now)
            {
                return s;
            }
            probe = probe
                .checked_add(jiff::SignedDuration::from_hours(24))
                .unwrap_or(probe);
        }
        now
    }

    pub fn describe(&self) -> String {
        format!(
            "{}–{} {}",
            self.start.strftime("%H:%M"),
            self.end.strftime("%H:%M"),
            self.tz_name
        )
    }
}

/// Formats a timestamp in the window's zone for messages.
pub fn local_time(t: Timestamp, tz: &TimeZone) -> String {
    let z: ZonedDateTime = t.to_zoned_datetime(tz.clone());
    z.strftime("%Y-%m-%d %H:%M %Z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(yaml: &str) -> Serial {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn batches_from_counts_percentages_and_lists() {
        assert_eq!(batch_sizes(10, &Serial::default()), vec![10]);
        assert_eq!(batch_sizes(10, &serial("3")), vec![3, 3, 3, 1]);
        assert_eq!(batch_sizes(10, &serial("\"25%\"")), vec![3, 3, 3, 1]);
        assert_eq!(
            batch_sizes(20, &serial("[1, 5, \"25%\"]")),
            vec![1, 5, 5, 5, 4]
        );
        assert_eq!(batch_sizes(2, &serial("[1, 5]")), vec![1, 1]);
        assert_eq!(batch_sizes(0, &serial("[1]")), Vec::<usize>::new());
        assert!(serde_yaml::from_str::<Serial>("0").is_err());
        assert!(serde_yaml::from_str::<Serial>("\"150%\"").is_err());
        assert!(serde_yaml::from_str::<Serial>("\"many\"").is_err());
    }

    #[test]
    fn budgets() {
        let b = Budget {
            max_fail_percentage: Some(20.0),
            max_failures: Some(2),
            any_errors_fatal: false,
        };
        assert!(b.batch_tripped(1, 10, 2).is_none());
        assert!(b
            .batch_tripped(1, 10, 3)
            .unwrap()
            .contains("max_fail_percentage"));
        assert!(b.run_tripped(2).is_none());
        assert!(b.run_tripped(3).unwrap().contains("max_failures"));
        let canary = Budget {
            any_errors_fatal: true,
            ..Budget::default()
        };
        assert!(canary.run_tripped(1).is_some());
        assert!(canary.run_tripped(0).is_none());
    }

    fn window(start: &str, end: &str, tz: &str) -> Window {
        WindowSpec {
            start: start.into(),
            end: end.into(),
            timezone: tz.into(),
        }
        .resolve()
        .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn window_across_midnight() {
        let w = window("22:00", "06:00", "Europe/Oslo"); // UTC+1 in January
        let min = Duration::from_secs(60);
        // 23:30 local: inside, closes 06:00 local = 05:00Z.
        assert_eq!(
            w.decide(ts("2026-01-10T22:30:00Z"), 10 * min),
            WindowDecision::Fits {
                closes: ts("2026-01-11T05:00:00Z")
            }
        );
        // 05:55 local with 10 minutes of work: too late.
        assert!(matches!(
            w.decide(ts("2026-01-11T04:55:00Z"), 10 * min),
            WindowDecision::TooLate { .. }
        ));
        // 12:00 local: closed, opens 22:00 local = 21:00Z.
        assert_eq!(
            w.decide(ts("2026-01-11T11:00:00Z"), min),
            WindowDecision::Closed {
                opens: ts("2026-01-11T21:00:00Z")
            }
        );
        assert_eq!(
            w.next_open(ts("2026-01-11T11:00:00Z")),
            ts("2026-01-11T21:00:00Z")
        );
        assert_eq!(
            w.next_open(ts("2026-01-10T22:30:00Z")),
            ts("2026-01-11T21:00:00Z")
        );
    }

    #[test]
    fn window_follows_dst() {
        let w = window("01:00", "04:00", "Europe/Oslo");
        // Summer (UTC+2): 01:00 local = 23:00Z the day before.
        assert_eq!(
            w.decide(ts("2026-07-01T22:00:00Z"), Duration::from_secs(60)),
            WindowDecision::Closed {
                opens: ts("2026-07-01T23:00:00Z")
            }
        );
    }

    #[test]
    fn bad_window_specs() {
        let bad = |s: &str, e: &str, tz: &str| {
            WindowSpec {
                start: s.into(),
                end: e.into(),
                timezone: tz.into(),
            }
            .resolve()
            .unwrap_err()
        };
        assert!(bad("25:00", "06:00", "UTC").contains("not a time of day"));
        assert!(bad("22:00", "06:00", "Mars/Olympus").contains("unknown time zone"));
        assert!(bad("22:00", "22:00", "UTC").contains("same time"));
    }
}
