//! The fleet's state at a glance (`roomkey status`), as a pure core: what one device's
//! read-only replies say (software release, external identity, the certificate in use and
//! its expiry, E2EE mode), folded with the vault's and the journal's view into one row per
//! device; rows ordered by urgency; and the renderings (terminal table, CSV, versioned JSON,
//! OpenMetrics text for node_exporter's textfile collector). The SSH reads live in
//! `cli::status`; device replies are read with the engine's parsers
//! (`engine::steps::parse_external_identity`, `parse_show`), never a second copy.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::engine::steps::identity::{judge, Expected};
use crate::engine::steps::{
    identity_certificate, normalise_fingerprint, parse_external_identity, parse_show,
};
use crate::tsh::Reply;

/// Version of the `status --json` document.
pub const STATUS_VERSION: u32 = 1;

/// The configuration that turns end-to-end encryption on.
pub const E2EE_MODE: &str = "Conference EndToEndEncryption Mode";
/// The status node naming the software release.
pub const SOFTWARE: &str = "SystemUnit Software";

/// How the connection to a device went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// Logged in and read.
    Ok,
    /// No TCP/SSH connection (or it dropped, or timed out).
    Unreachable,
    /// The login was refused.
    AuthFailed,
    /// The host key is unknown or changed (see known_hosts).
    HostKey,
    /// Connected, but a read failed.
    Error,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Ok => "ok",
            Reach::Unreachable => "unreachable",
            Reach::AuthFailed => "auth-failed",
            Reach::HostKey => "host-key",
            Reach::Error => "error",
        }
    }
}

/// What the device itself said (all `None` when it could not be read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    pub software: Option<String>,
    pub identity_valid: Option<bool>,
    pub identity: Option<String>,
    /// Lower-case hex SHA-1 of the certificate in use for the external identity.
    pub fingerprint: Option<String>,
    pub not_after: Option<OffsetDateTime>,
    pub e2ee_mode: Option<String>,
}

/// Reads the facts out of the device's replies. `identity` is the reply to
/// `engine::steps::external_identity_cmd`; `show` (optional) the reply to
/// `engine::steps::show_cmd`, used for the fingerprint when the device's status tree has no
/// certificate chain (the seed's older node form).
pub fn facts_from_replies(
    software: Option<&Reply>,
    identity: Option<&Reply>,
    show: Option<&Reply>,
    e2ee: Option<&Reply>,
) -> DeviceFacts {
    let mut facts = DeviceFacts {
        software: software.filter(|r| r.is_ok()).and_then(|r| {
            r.get(&format!("{SOFTWARE} DisplayName"))
                .or_else(|| r.get(&format!("{SOFTWARE} Version")))
                .map(str::to_string)
        }),
        e2ee_mode: e2ee
            .filter(|r| r.is_ok())
            .and_then(|r| r.get(E2EE_MODE))
            .map(str::to_string),
        ..DeviceFacts::default()
    };
    if let Some(reply) = identity.filter(|r| r.is_ok()) {
        let status = parse_external_identity(reply);
        // Whether the device says its external identity is valid (Status / Valid; never
        // Verification). The certificate's dates are judged separately (days left), so
        // the verdict is taken without a clock or an expected certificate.
        let verdict = judge(&status, &Expected::default(), OffsetDateTime::UNIX_EPOCH);
        facts.identity_valid = Some(verdict.is_ok());
        facts.identity = status.identity;
        let (fingerprint, not_after) = identity_certificate(reply);
        facts.fingerprint = fingerprint
            .as_deref()
            .map(normalise_fingerprint)
            .filter(|f| !f.is_empty());
        facts.not_after = not_after.as_deref().and_then(parse_device_time);
    }
    if facts.fingerprint.is_none() {
        if let Some(show) = show.filter(|r| r.is_ok()) {
            facts.fingerprint = parse_show(show)
                .into_iter()
                .find(|c| {
                    c.used_for
                        .iter()
                        .any(|u| u.eq_ignore_ascii_case("WebexIdentity"))
                })
                .map(|c| c.fingerprint);
        }
    }
    facts
}

/// Parses a device time as RoomOS prints it (`Aug 08 03:04:26 2026 GMT`, the OpenSSL form
/// also seen with a single-digit day `Aug  8 …`), or RFC 3339 as newer software may.
pub fn parse_device_time(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let [month, day, clock, year, zone] = words.as_slice() else {
        return None;
    };
    if !zone.eq_ignore_ascii_case("GMT") && !zone.eq_ignore_ascii_case("UTC") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let m = MONTHS
        .iter()
        .position(|m| month.eq_ignore_ascii_case(m))
        .and_then(|i| u8::try_from(i + 1).ok())
        .and_then(|i| time::Month::try_from(i).ok())?;
    let day: u8 = day.parse().ok()?;
    let year: i32 = year.parse().ok()?;
    let mut hms = clock.split(':').map(|p| p.parse::<u8>().ok());
    let (Some(Some(h)), Some(Some(mi)), Some(Some(s)), None) =
        (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    let date = time::Date::from_calendar_date(year, m, day).ok()?;
    let clock = time::Time::from_hms(h, mi, s).ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

/// The last run the journal recorded for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct LastRun {
    /// The playbook's journal key.
    pub playbook: String,
    /// `done` / `failed` / `in-flight` (the journal's device record).
    pub outcome: String,
    /// When that record was written (RFC 3339).
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One device's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DeviceRow {
    pub device: String,
    pub address: String,
    pub reach: Reach,
    /// Why the device could not be read (connection, login or command error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub software: Option<String>,
    /// Whether the device reports a valid external identity (`null`: not read).
    pub identity_valid: Option<bool>,
    pub identity: Option<String>,
    /// The identity the inventory expects (for a mismatch to stand out).
    pub expected_identity: Option<String>,
    pub fingerprint: Option<String>,
    /// NotAfter of the certificate in use (RFC 3339).
    pub not_after: Option<String>,
    /// Whole days until NotAfter (negative: expired).
    pub days_left: Option<i64>,
    pub e2ee_mode: Option<String>,
    /// Whether the vault records the device's ClientSecret as seeded (`null`: the vault was
    /// not opened, or the secret comes from the environment).
    pub secret_seeded: Option<bool>,
    pub last_run: Option<LastRun>,
    /// `not_after` as Unix seconds (for OpenMetrics; not serialised).
    #[serde(skip)]
    pub not_after_unix: Option<i64>,
}

impl DeviceRow {
    /// A row for a device from what was read.
    pub fn new(
        device: &str,
        address: &str,
        reach: Reach,
        error: Option<String>,
        facts: DeviceFacts,
        now: OffsetDateTime,
    ) -> Self {
        DeviceRow {
            device: device.to_string(),
            address: address.to_string(),
            reach,
            error,
            software: facts.software,
            identity_valid: facts.identity_valid,
            identity: facts.identity,
            expected_identity: None,
            fingerprint: facts.fingerprint,
            not_after: facts.not_after.and_then(|t| t.format(&Rfc3339).ok()),
            days_left: facts.not_after.map(|t| (t - now).whole_days()),
            e2ee_mode: facts.e2ee_mode,
            secret_seeded: None,
            last_run: None,
            not_after_unix: facts.not_after.map(OffsetDateTime::unix_timestamp),
        }
    }

    /// Does this device need attention within `within` days: unreadable, no valid identity,
    /// an identity other than the expected one, or a certificate that expires by then?
    pub fn needs_attention(&self, within_days: i64) -> bool {
        self.reach != Reach::Ok
            || self.identity_valid != Some(true)
            || self.identity_mismatch()
            || self.days_left.is_none_or(|d| d < within_days)
    }

    /// The device reports an identity other than the inventory's.
    pub fn identity_mismatch(&self) -> bool {
        match (&self.identity, &self.expected_identity) {
            (Some(have), Some(want)) => !have.eq_ignore_ascii_case(want),
            _ => false,
        }
    }

    /// Sort key: unreadable first, then no valid identity, then fewest days left.
    fn urgency(&self) -> (u8, i64, &str) {
        let class = if self.reach != Reach::Ok {
            0
        } else if self.identity_valid != Some(true) || self.identity_mismatch() {
            1
        } else {
            2
        };
        (class, self.days_left.unwrap_or(i64::MIN), &self.device)
    }
}

/// Orders rows by urgency: unreadable devices, then devices without a valid identity, then
/// by days left (fewest first), then by name.
pub fn sort_by_urgency(rows: &mut [DeviceRow]) {
    rows.sort_by(|a, b| a.urgency().cmp(&b.urgency()));
}

/// The `status --json` document.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct StatusDocument<'a> {
    pub version: u32,
    pub tool: &'static str,
    pub tool_version: &'static str,
    /// When the devices were read (RFC 3339).
    pub generated_at: String,
    pub devices: &'a [DeviceRow],
}

impl<'a> StatusDocument<'a> {
    pub fn new(rows: &'a [DeviceRow], now: OffsetDateTime) -> Self {
        StatusDocument {
            version: STATUS_VERSION,
            tool: "roomkey",
            tool_version: env!("CARGO_PKG_VERSION"),
            generated_at: now.format(&Rfc3339).unwrap_or_default(),
            devices: rows,
        }
    }
}

/// Device-supplied text made printable with the product's one terminal escaping
/// (`display::escape`): a device's reply never moves the cursor, recolours an operator's
/// terminal or splits a line.
pub fn printable(s: &str) -> String {
    crate::display::escape(s).into_owned()
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(printable).unwrap_or_else(|| "-".into())
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    }
}

/// The short state word of a row for the table.
pub fn state_word(row: &DeviceRow, within_days: i64) -> &'static str {
    if row.reach != Reach::Ok {
        row.reach.as_str()
    } else if row.identity_valid != Some(true) {
        "no-identity"
    } else if row.identity_mismatch() {
        "wrong-identity"
    } else if row.days_left.is_some_and(|d| d < 0) {
        "expired"
    } else if row.days_left.is_none_or(|d| d < within_days) {
        "expiring"
    } else {
        "ok"
    }
}

/// The terminal table (rows as given; sort them first), with a one-line summary.
pub fn render_table(rows: &[DeviceRow], within_days: i64) -> String {
    let header = [
        "DEVICE",
        "STATE",
        "IDENTITY",
        "DAYS",
        "NOT AFTER",
        "FINGERPRINT",
        "E2EE",
        "SEEDED",
        "SOFTWARE",
        "LAST RUN",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let last = r
            .last_run
            .as_ref()
            .map(|l| printable(&format!("{} {}", l.playbook, l.outcome)))
            .unwrap_or_else(|| "-".into());
        let detail = match (&r.error, r.reach) {
            (Some(e), _) => printable(e),
            (None, _) => opt(&r.identity),
        };
        table.push(vec![
            printable(&r.device),
            state_word(r, within_days).into(),
            detail,
            r.days_left.map(|d| d.to_string()).unwrap_or("-".into()),
            r.not_after
                .as_deref()
                .and_then(|t| t.get(..10))
                .unwrap_or("-")
                .to_string(),
            r.fingerprint
                .as_deref()
                .map(|f| f.get(..12).unwrap_or(f).to_string())
                .unwrap_or("-".into()),
            opt(&r.e2ee_mode),
            yes_no(r.secret_seeded).into(),
            opt(&r.software),
            last,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|row| row.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(cell.chars().count()) + 2,
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let attention = rows
        .iter()
        .filter(|r| r.needs_attention(within_days))
        .count();
    out.push_str(&format!(
        "\n{} devices: {} ok, {} need attention (unreachable, no valid identity, or expiring within {} days)\n",
        rows.len(),
        rows.len().saturating_sub(attention),
        attention,
        within_days
    ));
    out
}

fn csv_field(s: &str) -> String {
    let s = printable(s);
    // A leading =, +, - or @ would be a formula to a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s
    };
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// CSV with a header row (RFC 4180 quoting).
pub fn render_csv(rows: &[DeviceRow]) -> String {
    let mut out = String::from(
        "device,address,reach,identity_valid,identity,expected_identity,fingerprint,not_after,days_left,e2ee_mode,secret_seeded,software,last_run_playbook,last_run_outcome,last_run_at,error\n",
    );
    for r in rows {
        let b = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_default();
        let s = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
        let fields = [
            csv_field(&r.device),
            csv_field(&r.address),
            r.reach.as_str().to_string(),
            b(r.identity_valid),
            s(&r.identity),
            s(&r.expected_identity),
            s(&r.fingerprint),
            s(&r.not_after),
            r.days_left.map(|d| d.to_string()).unwrap_or_default(),
            s(&r.e2ee_mode),
            b(r.secret_seeded),
            s(&r.software),
            r.last_run
                .as_ref()
                .map(|l| csv_field(&l.playbook))
                .unwrap_or_default(),
            r.last_run
                .as_ref()
                .map(|l| csv_field(&l.outcome))
                .unwrap_or_default(),
            r.last_run
                .as_ref()
                .map(|l| csv_field(&l.at))
                .unwrap_or_default(),
            s(&r.error),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// A label value escaped as the OpenMetrics text format requires.
fn label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The OpenMetrics text format (node_exporter's textfile collector reads it as a `.prom`
/// file): per device whether it was read, whether its identity is valid, the certificate's
/// NotAfter, and whether the vault records its secret as seeded.
pub fn render_openmetrics(rows: &[DeviceRow], now: OffsetDateTime) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, unit: Option<&str>, lines: Vec<String>| {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            if let Some(u) = unit {
                out.push_str(&format!("# UNIT {name} {u}\n"));
            }
            out.push_str(&format!("# HELP {name} {help}\n"));
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        };
    let dev = |r: &DeviceRow| format!("device=\"{}\"", label(&r.device));
    family(
        "roomkey_device_up",
        "gauge",
        "1 if roomkey logged in and read the device's status.",
        None,
        rows.iter()
            .map(|r| {
                format!(
                    "roomkey_device_up{{{}}} {}",
                    dev(r),
                    u8::from(r.reach == Reach::Ok)
                )
            })
            .collect(),
    );
    family(
        "roomkey_identity_valid",
        "gauge",
        "1 if the device reports a valid external identity (with the expected name).",
        None,
        rows.iter()
            .filter(|r| r.reach == Reach::Ok)
            .map(|r| {
                let valid = r.identity_valid == Some(true) && !r.identity_mismatch();
                format!(
                    "roomkey_identity_valid{{{},identity=\"{}\"}} {}",
                    dev(r),
                    label(r.identity.as_deref().unwrap_or("")),
                    u8::from(valid)
                )
            })
            .collect(),
    );
    family(
        "roomkey_certificate_not_after_seconds",
        "gauge",
        "NotAfter of the certificate the device uses for its external identity, Unix seconds.",
        Some("seconds"),
        rows.iter()
            .filter_map(|r| {
                let t = r.not_after_unix?;
                Some(format!(
                    "roomkey_certificate_not_after_seconds{{{},fingerprint=\"{}\"}} {t}",
                    dev(r),
                    label(r.fingerprint.as_deref().unwrap_or(""))
                ))
            })
            .collect(),
    );
    family(
        "roomkey_secret_seeded",
        "gauge",
        "1 if the vault records the device's ClientSecret as seeded.",
        None,
        rows.iter()
            .filter_map(|r| {
                let s = r.secret_seeded?;
                Some(format!(
                    "roomkey_secret_seeded{{{}}} {}",
                    dev(r),
                    u8::from(s)
                ))
            })
            .collect(),
    );
    family(
        "roomkey_status_generated_seconds",
        "gauge",
        "When roomkey status read the fleet, Unix seconds.",
        Some("seconds"),
        vec![format!(
            "roomkey_status_generated_seconds {}",
            now.unix_timestamp()
        )],
    );
    out.push_str("# EOF\n");
    out
}

/// Parses `--expiring-within`: whole days as `30d`, `30` or weeks `4w`.
pub fn parse_days(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix('d') {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('w') {
        (n, 7)
    } else {
        (t, 1)
    };
    num.parse::<i64>()
        .ok()
        .filter(|n| (0..=36_500).contains(n))
        .map(|n| n * mult)
        .ok_or_else(|| format!("'{text}' is not a number of days (e.g. 30d or 4w)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsh::{ReplyReader, ReplyShape, TshEvent};

    /// Feeds a device's text to the real reply reader.
    fn reply(shape: ReplyShape, text: &str) -> Reply {
        let mut r = ReplyReader::new();
        r.feed(b"*r Login successful\n\nOK\n");
        r.expect(shape);
        r.feed(text.as_bytes())
            .into_iter()
            .find_map(|e| match e {
                TshEvent::Reply(r) => Some(r),
                _ => None,
            })
            .expect("a complete reply")
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-06-01T00:00:00Z", &Rfc3339).unwrap()
    }

    #[test]
    fn device_times() {
        let t = parse_device_time("Aug 08 03:04:26 2026 GMT").unwrap();
        assert_eq!(t.format(&Rfc3339).unwrap(), "2026-08-08T03:04:26Z");
        assert!(parse_device_time("Aug  8 03:04:26 2026 GMT").is_some());
        assert!(parse_device_time("2026-08-08T03:04:26Z").is_some());
        for bad in [
            "",
            "Foo 08 03:04:26 2026 GMT",
            "Aug 32 03:04:26 2026 GMT",
            "Aug 08 03:04 2026 GMT",
            "Aug 08 03:04:26 2026 CET",
        ] {
            assert!(parse_device_time(bad).is_none(), "{bad}");
        }
    }

    // The newer node form with a certificate chain (catalogue: ExternalIdentity status,
    // tshell.md "Corrections", current RoomOS docs).
    const IDENTITY_NEW: &str = "*s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 Fingerprint: \"CE:4E:B9\"\n\
*s Conference EndToEndEncryption ExternalIdentity CertificateChain Certificate 1 NotAfter: \"Jun 21 00:00:00 2026 GMT\"\n\
*s Conference EndToEndEncryption ExternalIdentity Identity: \"room-1.example.com\"\n\
*s Conference EndToEndEncryption ExternalIdentity Status: Valid\n\
** end\n\nOK\n";

    #[test]
    fn facts_from_the_newer_form() {
        let id = reply(ReplyShape::Status, IDENTITY_NEW);
        let sw = reply(
            ReplyShape::Status,
            "*s SystemUnit Software DisplayName: \"RoomOS 11.14.1.5 a1b2c3d\"\n** end\n\nOK\n",
        );
        let cfg = reply(
            ReplyShape::Status,
            "*c xConfiguration Conference EndToEndEncryption Mode: On\n** end\n\nOK\n",
        );
        let f = facts_from_replies(Some(&sw), Some(&id), None, Some(&cfg));
        assert_eq!(f.software.as_deref(), Some("RoomOS 11.14.1.5 a1b2c3d"));
        assert_eq!(f.identity_valid, Some(true));
        assert_eq!(f.identity.as_deref(), Some("room-1.example.com"));
        assert_eq!(f.fingerprint.as_deref(), Some("ce4eb9"));
        assert_eq!(f.e2ee_mode.as_deref(), Some("On"));
        let row = DeviceRow::new("room-1", "10.0.0.1:22", Reach::Ok, None, f, now());
        assert_eq!(row.days_left, Some(20));
        assert!(row.needs_attention(30));
        assert!(!row.needs_attention(20));
    }

    #[test]
    fn fingerprint_from_show_when_no_chain() {
        // The seed's older form: Valid/Identity, no chain; the Show reply names the
        // certificate used for WebexIdentity (tshell.md, Services Show).
        let id = reply(
            ReplyShape::Status,
            "*s Conference EndToEndEncryption ExternalIdentity Valid: True\n*s Conference EndToEndEncryption ExternalIdentity Identity: \"r.example.com\"\n** end\n\nOK\n",
        );
        let show = reply(
            ReplyShape::Command,
            "OK\n*r ServicesShowResult (status=OK): \n*r ServicesShowResult Details 1 Fingerprint: \"aa11\"\n*r ServicesShowResult Details 1 UsedFor: \"HTTPS\"\n*r ServicesShowResult Details 2 Fingerprint: \"BB22\"\n*r ServicesShowResult Details 2 UsedFor: \"WebexIdentity\"\n** end\n",
        );
        let f = facts_from_replies(None, Some(&id), Some(&show), None);
        assert_eq!(f.identity_valid, Some(true));
        assert_eq!(f.fingerprint.as_deref(), Some("bb22"));
        assert_eq!(f.not_after, None);
    }

    fn row(name: &str, reach: Reach, valid: Option<bool>, days: Option<i64>) -> DeviceRow {
        let facts = DeviceFacts {
            identity_valid: valid,
            identity: valid.map(|_| format!("{name}.example.com")),
            not_after: days.map(|d| now() + time::Duration::days(d) + time::Duration::hours(1)),
            fingerprint: days.map(|_| "00ff".repeat(10)),
            ..DeviceFacts::default()
        };
        DeviceRow::new(name, "h:22", reach, None, facts, now())
    }

    #[test]
    fn urgency_order_and_attention() {
        let mut rows = vec![
            row("d-ok-200", Reach::Ok, Some(true), Some(200)),
            row("c-ok-10", Reach::Ok, Some(true), Some(10)),
            row("b-invalid", Reach::Ok, Some(false), None),
            row("a-down", Reach::Unreachable, None, None),
            row("e-expired", Reach::Ok, Some(true), Some(-3)),
        ];
        sort_by_urgency(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(
            names,
            ["a-down", "b-invalid", "e-expired", "c-ok-10", "d-ok-200"]
        );
        let attention: Vec<&str> = rows
            .iter()
            .filter(|r| r.needs_attention(30))
            .map(|r| r.device.as_str())
            .collect();
        assert_eq!(attention, ["a-down", "b-invalid", "e-expired", "c-ok-10"]);
        let mut wrong = row("f", Reach::Ok, Some(true), Some(100));
        wrong.expected_identity = Some("other.example.com".into());
        assert!(wrong.needs_attention(30));
        assert_eq!(state_word(&wrong, 30), "wrong-identity");
    }

    #[test]
    fn renderings() {
        let mut rows = vec![
            row("room-1", Reach::Ok, Some(true), Some(100)),
            row("room-\u{1b}[31m2", Reach::Unreachable, None, None),
        ];
        rows[1].error = Some("cannot connect, \"refused\"".into());
        let table = render_table(&rows, 30);
        assert!(table.starts_with("DEVICE"), "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(
            table.contains("2 devices: 1 ok, 1 need attention"),
            "{table}"
        );
        let csv = render_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("room-1,h:22,ok,true,room-1.example.com,,"),
            "{csv}"
        );
        assert!(
            lines[2].ends_with("\"cannot connect, \"\"refused\"\"\""),
            "{csv}"
        );
        let om = render_openmetrics(&rows, now());
        assert!(om.ends_with("# EOF\n"));
        let expect =
            (now() + time::Duration::days(100) + time::Duration::hours(1)).unix_timestamp();
        assert!(
            om.contains(&format!(
                "roomkey_certificate_not_after_seconds{{device=\"room-1\",fingerprint=\"{}\"}} {expect}",
                "00ff".repeat(10)
            )),
            "{om}"
        );
        assert!(
            om.contains("roomkey_device_up{device=\"room-?[31m2\"} 0"),
            "{om}"
        );
        let json = serde_json::to_value(StatusDocument::new(&rows, now())).unwrap();
        assert_eq!(json["version"], STATUS_VERSION);
        assert_eq!(json["devices"][0]["days_left"], 100);
        assert_eq!(json["devices"][1]["reach"], "unreachable");
    }

    #[test]
    fn csv_neutralises_formulas() {
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("-5"), "-5");
    }

    #[test]
    fn days() {
        assert_eq!(parse_days("30d"), Ok(30));
        assert_eq!(parse_days("4w"), Ok(28));
        assert_eq!(parse_days("7"), Ok(7));
        assert!(parse_days("-1d").is_err());
        assert!(parse_days("soon").is_err());
    }
}
