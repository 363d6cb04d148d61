//! The playbook: a named, ordered list of built-in steps plus the run policy (concurrency,
//! timeouts, retries, host-key policy). Pure: parsing and validation only; what a step sends
//! is decided in `engine::steps`, what it would send is shown by `plan`.
//!
//! ```yaml
//! name: external identity
//! policy: { concurrency: 20, command_timeout: 30s }
//! steps:
//!   - populate_secret: { initial: true }
//!   - add_certificate: {}
//!   - show_certificates: {}
//!   - activate_certificate: { purpose: WebexIdentity }
//!   - verify_external_identity: {}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::engine::rollout::{parse_batch_size, BatchSize, Budget, Serial, Window, WindowSpec};
use crate::input::{kind, parse_tree, suggest, Seg};
use crate::inventory::{child, render_problems, Problem, Reader};
use serde_yaml::Value;

/// The purposes a device certificate can be activated for (RoomOS `Purpose:` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub enum Purpose {
    #[serde(rename = "WebexIdentity")]
    WebexIdentity,
    #[serde(rename = "802.1X")]
    Dot1x,
    #[serde(rename = "HTTPS")]
    Https,
    #[serde(rename = "SIP")]
    Sip,
    #[serde(rename = "Audit")]
    Audit,
    #[serde(rename = "HttpClient")]
    HttpClient,
    #[serde(rename = "Pairing")]
    Pairing,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::WebexIdentity => "WebexIdentity",
            Purpose::Dot1x => "802.1X",
            Purpose::Https => "HTTPS",
            Purpose::Sip => "SIP",
            Purpose::Audit => "Audit",
            Purpose::HttpClient => "HttpClient",
            Purpose::Pairing => "Pairing",
        }
    }
}

/// Which certificate a deactivate/delete step acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateRef {
    /// The device's own certificate from the inventory (fingerprint computed locally).
    #[default]
    New,
    /// The certificate that was active for the purpose before this run's activation
    /// (recorded by `show_certificates`).
    Previous,
    /// An explicit SHA-1 fingerprint.
    Fingerprint(String),
    /// The certificate an earlier `scep_enroll` step enrolled (or found) in this run.
    Enrolled,
    /// The certificate an earlier `add_service_certificate` step added (or found).
    Service,
}

/// `add_ca_certificate` / `remove_ca_certificate`: trusted CAs from a PEM bundle, or one CA
/// by fingerprint (remove only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaCertificates {
    /// A PEM bundle, relative to the playbook; `{name}`, `{host}` and vars are filled in.
    #[serde(default)]
    pub file: Option<String>,
    /// One CA by SHA-1 fingerprint (`remove_ca_certificate` only).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// `add_service_certificate`: a certificate and key from PEM files (not the device's
/// identity certificate), e.g. for 802.1X or HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCertificate {
    /// Certificate PEM (may also hold the key), relative to the playbook; templated.
    pub certificate: String,
    /// Private key PEM; defaults to the certificate file.
    #[serde(default)]
    pub key: Option<String>,
    /// Name of the vault credential holding the key's passphrase (sent as
    /// `PrivateKeyPassword`); never the passphrase itself.
    #[serde(default)]
    pub private_key_password: Option<String>,
}

/// `scep_enroll`: `Security Certificates Services Enrollment SCEP Request`. Text values may
/// use `{name}`, `{host}` and inventory vars; each is checked against the device's limits
/// ([`SCEP_LIMITS`]) here when literal, and per device in preflight once filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScepEnroll {
    pub url: String,
    /// SHA-1 fingerprint of the issuing CA.
    pub ca_fingerprint: String,
    /// Name of the vault credential holding the challenge password (templated: a
    /// one-time challenge per room can be `scep-{name}`).
    #[serde(default)]
    pub challenge_password: Option<String>,
    pub common_name: String,
    #[serde(default)]
    pub country_name: Option<String>,
    #[serde(default)]
    pub state_or_province_name: Option<String>,
    #[serde(default)]
    pub locality_name: Option<String>,
    #[serde(default)]
    pub organization_name: Option<String>,
    #[serde(default)]
    pub organizational_unit: Vec<String>,
    #[serde(default)]
    pub san_dns: Vec<String>,
    #[serde(default)]
    pub san_email: Vec<String>,
    #[serde(default)]
    pub san_ip: Vec<String>,
    #[serde(default)]
    pub san_uri: Vec<String>,
}

/// The limits of one SCEP request parameter as current RoomOS documents them (device
/// catalogue `scep.limits`; seed 001's older text said 0–128 characters for every value and
/// `SanDns[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScepLimit {
    /// The device's parameter name.
    pub param: &'static str,
    /// The playbook key it comes from.
    pub key: &'static str,
    /// Most characters of one value.
    pub max_len: usize,
    /// Most values (1 for a single-valued parameter; `[5]` lists take 5).
    pub max_count: usize,
}

const fn limit(
    param: &'static str,
    key: &'static str,
    max_len: usize,
    max_count: usize,
) -> ScepLimit {
    ScepLimit {
        param,
        key,
        max_len,
        max_count,
    }
}

/// Every SCEP request parameter with its limits, in send order (catalogue `scep.limits`).
/// The simulated device enforces its own copy (`sim::scep::LIMITS`); a test keeps the two
/// equal.
pub const SCEP_LIMITS: &[ScepLimit] = &[
    limit("URL", "url", 256, 1),
    limit("Fingerprint", "ca_fingerprint", 128, 1),
    limit("ChallengePassword", "challenge_password", 256, 1),
    limit("CommonName", "common_name", 64, 1),
    limit("CountryName", "country_name", 2, 1),
    limit("StateOrProvinceName", "state_or_province_name", 64, 1),
    limit("LocalityName", "locality_name", 64, 1),
    limit("OrganizationName", "organization_name", 64, 1),
    limit("OrganizationalUnit", "organizational_unit", 64, 5),
    limit("SanDns", "san_dns", 64, 5),
    limit("SanEmail", "san_email", 64, 5),
    limit("SanIp", "san_ip", 64, 5),
    limit("SanUri", "san_uri", 64, 5),
];

/// Longest URL of a renewal profile (seed 001: `<S: 0, 128>`; the current documents give no
/// limit for `Profiles Set`, so the seed's stands — catalogue `scep.limits`).
pub const PROFILE_URL_MAX_LEN: usize = 128;

/// The limits of parameter `param` (case-insensitive), if it is a SCEP request parameter.
pub fn scep_limit(param: &str) -> Option<&'static ScepLimit> {
    SCEP_LIMITS
        .iter()
        .find(|l| l.param.eq_ignore_ascii_case(param))
}

impl ScepEnroll {
    /// The request's parameters as (name, value template) in send order, without the
    /// challenge password (a secret, sent separately).
    pub fn params(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("URL", self.url.as_str()),
            ("Fingerprint", self.ca_fingerprint.as_str()),
            ("CommonName", self.common_name.as_str()),
        ];
        for (name, one) in [
            ("CountryName", &self.country_name),
            ("StateOrProvinceName", &self.state_or_province_name),
            ("LocalityName", &self.locality_name),
            ("OrganizationName", &self.organization_name),
        ] {
            if let Some(x) = one {
                v.push((name, x.as_str()));
            }
        }
        for (name, list) in self.lists() {
            v.extend(list.iter().map(|x| (name, x.as_str())));
        }
        v
    }

    /// The multi-valued parameters (`OrganizationalUnit[5]`, `San…[5]`) with their names.
    pub fn lists(&self) -> [(&'static str, &Vec<String>); 5] {
        [
            ("OrganizationalUnit", &self.organizational_unit),
            ("SanDns", &self.san_dns),
            ("SanEmail", &self.san_email),
            ("SanIp", &self.san_ip),
            ("SanUri", &self.san_uri),
        ]
    }

    /// Checks how many values each list has (known without filling anything in).
    pub fn check_counts(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (name, list) in self.lists() {
            let Some(l) = scep_limit(name) else { continue };
            if list.len() > l.max_count {
                out.push((
                    l.key,
                    format!(
                        "`{}` has {} values; the device takes at most {} {name} values: \
                         remove {}",
                        l.key,
                        list.len(),
                        l.max_count,
                        list.len() - l.max_count
                    ),
                ));
            }
        }
        out
    }

    /// Checks filled-in values against the device's limits (catalogue `scep.limits`) and
    /// that the encoder can send them. Every problem is returned, each with the playbook
    /// key it concerns; a message names the key, the device parameter, the value's
    /// position in a list, the limit and the fix. A value is quoted only when it is short
    /// (none of these is a secret; the challenge password is checked on its own).
    pub fn check_values(params: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in params {
            let index = seen.iter().filter(|n| **n == *name).count();
            seen.push(name);
            let Some(l) = scep_limit(name) else {
                out.push(("", format!("{name} is not a SCEP request parameter")));
                continue;
            };
            let at = if l.max_count > 1 {
                format!("`{}[{}]` ({name})", l.key, index + 1)
            } else {
                format!("`{}` ({name})", l.key)
            };
            let n = value.chars().count();
            if n > l.max_len {
                out.push((
                    l.key,
                    format!(
                        "{at} is {n} characters long; the device accepts at most {}: shorten it",
                        l.max_len
                    ),
                ));
            } else if *name == "CountryName"
                && !(n == 2 && value.chars().all(|c| c.is_ascii_alphabetic()))
            {
                // The device takes 0–2 characters; a certificate's countryName is exactly
                // two letters (RFC 5280, ISO 3166), so anything else would fail at the CA.
                out.push((
                    l.key,
                    format!(
                        "{at} is a two-letter ISO 3166 country code such as \"NO\" or \"US\": \
                         got '{value}'"
                    ),
                ));
            } else if value.trim().is_empty() && l.max_count > 1 {
                out.push((
                    l.key,
                    format!("{at} is empty: remove the entry or give a value"),
                ));
            }
            if let Err(e) = crate::tsh::TshCommand::xcommand("x").and_then(|c| c.param(name, value))
            {
                out.push((l.key, format!("{at}: {e}")));
            }
        }
        out
    }
}

/// What `scep_renewal_profile` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileAction {
    /// `Enrollment SCEP Renewal Request` (Fingerprint + URL).
    Set,
    /// `Enrollment Profiles Delete` (Fingerprint).
    Delete,
    /// `Enrollment Profiles List` (read-only).
    List,
}

/// `scep_renewal_profile`: the device's SCEP auto-renewal profile for a CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScepRenewalProfile {
    pub action: ProfileAction,
    /// SHA-1 fingerprint of the issuing CA (set, delete).
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// The SCEP server (set).
    #[serde(default)]
    pub url: Option<String>,
}

/// `restart`: `xCommand SystemUnit Boot`, then wait for the device to accept SSH again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// How long to wait for the device to come back (default 10m).
    #[serde(default = "restart_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Restart only when an earlier step of this run changed the device (default); `false`
    /// restarts once in every run.
    #[serde(default = "yes")]
    pub if_changed: bool,
}

fn yes() -> bool {
    true
}

fn restart_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            timeout: restart_timeout(),
            if_changed: true,
        }
    }
}

/// `- restart:` (null) means the defaults, like `- restart: {}`.
fn restart_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<Restart, D::Error> {
    Ok(Option::<Restart>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PopulateSecret {
    /// Allow the plaintext first seeding (only for a device the vault records as never
    /// seeded). Without it, a never-seeded device fails the step.
    #[serde(default)]
    pub initial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    #[serde(default = "webex_identity")]
    pub purpose: Purpose,
    #[serde(default)]
    pub certificate: CertificateRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateTarget {
    #[serde(default = "webex_identity")]
    pub purpose: Purpose,
    #[serde(default)]
    pub certificate: CertificateRef,
    /// `delete_certificate` only: delete the certificate even while it is in use for some
    /// purpose (without it, a certificate in use is refused: deleting it would leave the
    /// purpose without a certificate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

fn webex_identity() -> Purpose {
    Purpose::WebexIdentity
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfiguration {
    /// e.g. `Conference EndToEndEncryption Mode`
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawXCommand {
    /// The command path after `xCommand`, e.g. `SystemUnit Software Version`.
    pub command: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Result fields that must have these values, e.g. `{ "Status": "OK" }`.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
    /// Whether the command only reads (the journal may then rerun it freely, and
    /// `apply --check` runs it — if the session agrees it reads: `xCommand … Show|List`).
    #[serde(default)]
    pub read_only: bool,
    /// Whether sending it twice does no harm: only then is a command found in flight (its
    /// outcome unknown) sent again without `--confirm-resend`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// One built-in step.
// `scep_enroll` carries every SCEP request parameter (a few hundred bytes); a playbook
// holds a handful of steps, read once per run, so boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    PopulateSecret(PopulateSecret),
    RotateSecret(#[serde(deserialize_with = "empty_or_map")] Empty),
    AddCertificate(#[serde(deserialize_with = "empty_or_map")] Empty),
    ShowCertificates(#[serde(deserialize_with = "empty_or_map")] Empty),
    ActivateCertificate(Activate),
    DeactivateCertificate(CertificateTarget),
    DeleteCertificate(CertificateTarget),
    SetConfiguration(SetConfiguration),
    VerifyExternalIdentity(#[serde(deserialize_with = "empty_or_map")] Empty),
    Xcommand(RawXCommand),
    AddCaCertificate(CaCertificates),
    RemoveCaCertificate(CaCertificates),
    AddServiceCertificate(ServiceCertificate),
    ScepEnroll(ScepEnroll),
    ScepRenewalProfile(ScepRenewalProfile),
    Restart(#[serde(deserialize_with = "restart_or_default")] Restart),
}

/// `- add_certificate:` (null) and `- add_certificate: {}` mean the same.
fn empty_or_map<'de, D: Deserializer<'de>>(d: D) -> Result<Empty, D::Error> {
    Ok(Option::<Empty>::deserialize(d)?.unwrap_or_default())
}

impl Step {
    /// The step's name as written in playbooks and shown in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::PopulateSecret(_) => "populate_secret",
            Step::RotateSecret(_) => "rotate_secret",
            Step::AddCertificate(_) => "add_certificate",
            Step::ShowCertificates(_) => "show_certificates",
            Step::ActivateCertificate(_) => "activate_certificate",
            Step::DeactivateCertificate(_) => "deactivate_certificate",
            Step::DeleteCertificate(_) => "delete_certificate",
            Step::SetConfiguration(_) => "set_configuration",
            Step::VerifyExternalIdentity(_) => "verify_external_identity",
            Step::Xcommand(_) => "xcommand",
            Step::AddCaCertificate(_) => "add_ca_certificate",
            Step::RemoveCaCertificate(_) => "remove_ca_certificate",
            Step::AddServiceCertificate(_) => "add_service_certificate",
            Step::ScepEnroll(_) => "scep_enroll",
            Step::ScepRenewalProfile(_) => "scep_renewal_profile",
            Step::Restart(_) => "restart",
        }
    }

    /// Whether the step needs the device's certificate and key from the inventory.
    pub fn needs_certificate(&self) -> bool {
        match self {
            Step::AddCertificate(_) | Step::ShowCertificates(_) => true,
            Step::ActivateCertificate(a) => a.certificate == CertificateRef::New,
            Step::DeactivateCertificate(t) | Step::DeleteCertificate(t) => {
                t.certificate == CertificateRef::New
            }
            _ => false,
        }
    }

    /// Whether the step needs the device's ClientSecret (it sends a JWE or seeds it).
    pub fn needs_client_secret(&self) -> bool {
        match self {
            Step::PopulateSecret(_) | Step::RotateSecret(_) | Step::AddCertificate(_) => true,
            Step::ActivateCertificate(a) => a.purpose == Purpose::WebexIdentity,
            Step::DeactivateCertificate(t) => t.purpose == Purpose::WebexIdentity,
            _ => false,
        }
    }

    /// Whether the step only reads from the device (safe for `apply --check` and reruns).
    pub fn is_read_only(&self) -> bool {
        match self {
            Step::ShowCertificates(_) | Step::VerifyExternalIdentity(_) => true,
            Step::Xcommand(x) => x.read_only,
            Step::ScepRenewalProfile(p) => p.action == ProfileAction::List,
            _ => false,
        }
    }

    /// Names of the vault credentials the step reads (challenge and key passwords).
    pub fn vault_credentials(&self) -> Vec<&str> {
        match self {
            Step::ScepEnroll(s) => s.challenge_password.iter().map(String::as_str).collect(),
            Step::AddServiceCertificate(c) => {
                c.private_key_password.iter().map(String::as_str).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Whether host keys not yet in known_hosts are refused or recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicySetting {
    #[default]
    Strict,
    AcceptNew,
}

/// How the JWEs of one device session get their scrypt salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KdfSalt {
    /// One random salt per device session, one derivation per secret, shared by every JWE
    /// of the session (each with its own random IV). Falls back to `per-jwe` for a device
    /// that refuses a repeated salt.
    #[default]
    PerSession,
    /// A fresh random salt, and so a fresh scrypt derivation, for every JWE.
    PerJwe,
}

/// How a run is carried out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Devices worked on at once.
    pub concurrency: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub auth_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub keepalive_interval: Duration,
    /// Extra attempts for an unreachable device or a dropped connection (never for a
    /// device's explicit refusal).
    pub retries: u32,
    #[serde(deserialize_with = "duration")]
    pub retry_backoff: Duration,
    pub host_key_policy: HostKeyPolicySetting,
    /// New SSH connections per second across the fleet (a burst of hundreds of logins can
    /// overwhelm an AAA server); unset = no limit. Jittered.
    pub connection_rate: Option<f64>,
    /// How long one device is expected to take before the journal has timings of its own
    /// (used to decide whether a device still fits in the maintenance window).
    #[serde(deserialize_with = "duration")]
    pub device_estimate: Duration,
    /// JWE salts: `per-session` (default) or `per-jwe` (see [`KdfSalt`]).
    pub kdf_salt: KdfSalt,
    /// How long `ClientSecret Populate` waits for the first byte of its reply before
    /// roomkey ends a body the device may be waiting for (catalogue
    /// `command.populate-form`); capped at half the command timeout.
    #[serde(deserialize_with = "duration")]
    pub body_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            concurrency: 10,
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
            retries: 2,
            retry_backoff: Duration::from_secs(1),
            host_key_policy: HostKeyPolicySetting::Strict,
            connection_rate: None,
            device_estimate: Duration::from_secs(120),
            kdf_salt: KdfSalt::PerSession,
            // The session's own default (`ssh::DEFAULT_BODY_WAIT`).
            body_wait: Duration::from_secs(5),
        }
    }
}

/// A duration as text (`500ms`, `10s`) or a bare number of seconds (`connect_timeout: 0`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(n) => Ok(Duration::from_secs(n)),
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

/// `250ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 500ms, 10s, 5m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("'{text}' has an unknown unit (use ms, s, m or h)")),
    }
}

/// The keys of a playbook file.
const TOP_KEYS: &[&str] = &[
    "name",
    "policy",
    "serial",
    "max_fail_percentage",
    "max_failures",
    "any_errors_fatal",
    "window",
    "steps",
];

/// The keys of `policy:`.
const POLICY_KEYS: &[&str] = &[
    "concurrency",
    "connect_timeout",
    "auth_timeout",
    "command_timeout",
    "keepalive_interval",
    "retries",
    "retry_backoff",
    "host_key_policy",
    "connection_rate",
    "device_estimate",
    "kdf_salt",
    "body_wait",
];

/// Every step name, as written in playbooks (see [`Step::kind`]).
pub const STEP_KINDS: &[&str] = &[
    "populate_secret",
    "rotate_secret",
    "add_certificate",
    "show_certificates",
    "activate_certificate",
    "deactivate_certificate",
    "delete_certificate",
    "set_configuration",
    "verify_external_identity",
    "xcommand",
    "add_ca_certificate",
    "remove_ca_certificate",
    "add_service_certificate",
    "scep_enroll",
    "scep_renewal_profile",
    "restart",
];

/// Longest value of `set_configuration` and of an `xcommand` parameter, in characters. The
/// device catalogue has no per-setting limits yet; RoomOS string settings are far shorter,
/// so this documented cap only stops a runaway value (a pasted file) before it is sent.
pub const MAX_VALUE_LEN: usize = 1024;

/// Longest configuration or command path (`Conference EndToEndEncryption Mode`).
pub const MAX_PATH_LEN: usize = 256;

/// Longest timeout or wait a playbook may set (a day): a bigger one is a unit mistake.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The file as read (the parts of it that could be read).
#[derive(Debug, Clone, Default)]
struct PlaybookFile {
    name: String,
    policy: Policy,
    /// Rolling batches: a count, a percentage or a list (`[1, 5, "25%"]`, last repeats).
    serial: Serial,
    /// A batch whose failed share exceeds this percentage stops the run.
    max_fail_percentage: Option<f64>,
    /// More failed devices than this in the whole run stops it.
    max_failures: Option<usize>,
    /// Any failed device stops the run (canaries).
    any_errors_fatal: bool,
    /// The maintenance window (inventory groups and devices may override it).
    window: Option<WindowSpec>,
    /// The steps that could be read, with their index in the file.
    steps: Vec<(usize, Step)>,
    /// How many steps the file lists (read or not).
    step_count: usize,
}

const SERIAL_EXPECTED: &str = "a number of devices (1 or more), a percentage such as \"25%\", \
                               or a list of them such as [1, 5, \"25%\"]";

impl Reader<'_> {
    fn playbook(&mut self, root: &Value) -> PlaybookFile {
        let mut file = PlaybookFile::default();
        let top = match root {
            Value::Mapping(m) => m,
            other => {
                self.problem(
                    &[],
                    format!(
                        "a playbook is a map with `name:` and `steps:`, found {}",
                        kind(other)
                    ),
                );
                return file;
            }
        };
        let entries = self.known_entries(top, &[], TOP_KEYS);
        if !entries.iter().any(|(k, _)| k == "name") {
            self.problem(
                &[],
                "missing key `name` (the playbook's name, e.g. `name: external identity`)",
            );
        }
        if !entries.iter().any(|(k, _)| k == "steps") {
            self.problem(&[], "missing key `steps` (the list of steps)");
        }
        for (key, v) in entries {
            let at = [Seg::Key(key.clone())];
            match key.as_str() {
                "name" => file.name = self.text(v, &at).unwrap_or_default(),
                "policy" => file.policy = self.policy(v, &at),
                "serial" => file.serial = self.serial(v, &at),
                "max_fail_percentage" => {
                    file.max_fail_percentage =
                        self.typed(v, &at, Some("a percentage from 0 to 100"))
                }
                "max_failures" => {
                    file.max_failures = self.typed(v, &at, Some("a number of devices (0 or more)"))
                }
                "any_errors_fatal" => {
                    file.any_errors_fatal =
                        self.typed(v, &at, Some("true or false")).unwrap_or_default()
                }
                "window" => {
                    file.window = self.typed(
                        v,
                        &at,
                        Some("a map such as `{ start: \"22:00\", end: \"06:00\", timezone: Europe/Oslo }`"),
                    )
                }
                "steps" => match v {
                    Value::Sequence(items) => {
                        file.step_count = items.len();
                        for (i, item) in items.iter().enumerate() {
                            if let Some(step) = self.step(item, &child(&at, Seg::Index(i))) {
                                file.steps.push((i, step));
                            }
                        }
                    }
                    Value::Null => {}
                    other => self.problem(
                        &at,
                        format!(
                            "expected a list of steps such as `- add_certificate: {{}}`, found {}",
                            kind(other)
                        ),
                    ),
                },
                _ => {}
            }
        }
        file
    }

    fn policy(&mut self, v: &Value, path: &[Seg]) -> Policy {
        let Some(m) = self.map(v, path, "a map of settings") else {
            return Policy::default();
        };
        let mut good = serde_yaml::Mapping::new();
        for (key, value) in self.known_entries(m, path, POLICY_KEYS) {
            let at = child(path, Seg::Key(key.clone()));
            let expected = match key.as_str() {
                "concurrency" => Some("a number of devices (1 or more)"),
                "retries" => Some("a number of attempts (0 or more)"),
                "connection_rate" => Some("a number of connections per second"),
                "host_key_policy" => None,
                _ => Some("a duration such as 500ms, 10s, 5m or 1h"),
            };
            // Each key on its own, so every bad one is reported.
            let mut one = serde_yaml::Mapping::new();
            one.insert(Value::String(key.clone()), value.clone());
            if self
                .typed::<Policy>(&Value::Mapping(one), &at, expected)
                .is_some()
            {
                good.insert(Value::String(key), value.clone());
            }
        }
        self.typed(&Value::Mapping(good), path, None)
            .unwrap_or_default()
    }

    fn serial(&mut self, v: &Value, path: &[Seg]) -> Serial {
        let one = |r: &mut Self, v: &Value, at: &[Seg]| -> Option<BatchSize> {
            let parsed = match v {
                Value::Number(n) => match n.as_u64() {
                    Some(c) if c >= 1 => usize::try_from(c).map(BatchSize::Count).ok(),
                    _ => None,
                },
                Value::String(t) => match parse_batch_size(t) {
                    Ok(b) => Some(b),
                    Err(msg) => {
                        r.problem(at, msg);
                        return None;
                    }
                },
                _ => None,
            };
            if parsed.is_none() {
                let found = match v {
                    Value::Number(_) => "a number below 1".to_string(),
                    other => kind(other).to_string(),
                };
                r.problem(at, format!("expected {SERIAL_EXPECTED}, found {found}"));
            }
            parsed
        };
        match v {
            Value::Sequence(items) if !items.is_empty() => Serial(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| one(self, item, &child(path, Seg::Index(i))))
                    .collect(),
            ),
            Value::Sequence(_) => {
                self.problem(
                    path,
                    format!("expected {SERIAL_EXPECTED}, found an empty list"),
                );
                Serial::default()
            }
            Value::Null => Serial::default(),
            other => Serial(one(self, other, path).into_iter().collect()),
        }
    }

    fn step(&mut self, item: &Value, path: &[Seg]) -> Option<Step> {
        const EXAMPLE: &str = "a step such as `- add_certificate: {}`";
        let m = match item {
            Value::Mapping(m) => m,
            Value::String(name) if STEP_KINDS.contains(&name.as_str()) => {
                self.problem(
                    path,
                    format!("write `- {name}: {{}}` (a step is a name followed by `:` and its settings)"),
                );
                return None;
            }
            other => {
                self.problem(path, format!("expected {EXAMPLE}, found {}", kind(other)));
                return None;
            }
        };
        let mut entries = m.iter();
        let (Some((k, v)), None) = (entries.next(), entries.next()) else {
            self.problem(
                path,
                format!(
                    "a step is one name with its settings ({EXAMPLE}); this one has {} keys: \
                     check the indentation of its settings",
                    m.len()
                ),
            );
            return None;
        };
        let Value::String(name) = k else {
            self.problem(
                path,
                format!("expected {EXAMPLE}, found {} as the name", kind(k)),
            );
            return None;
        };
        if !STEP_KINDS.contains(&name.as_str()) {
            let message = match suggest(name, STEP_KINDS) {
                Some(s) => format!("unknown step `{name}`: did you mean `{s}`?"),
                None => format!(
                    "unknown step `{name}`: expected one of {}",
                    STEP_KINDS.join(", ")
                ),
            };
            self.problem(&child(path, Seg::Key(name.clone())), message);
            return None;
        }
        let at = child(path, Seg::Key(name.clone()));
        let mut single = serde_yaml::Mapping::new();
        single.insert(k.clone(), v.clone());
        // serde_yaml writes enums as YAML tags (`!add_certificate`); playbooks use the
        // familiar one-key map form (`- add_certificate: {}`).
        match serde_yaml::with::singleton_map_recursive::deserialize::<Step, _>(Value::Mapping(
            single,
        )) {
            Ok(step) => Some(step),
            Err(e) => {
                self.serde_problem(&e.to_string(), &at, None);
                None
            }
        }
    }
}

/// A validated playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub path: PathBuf,
    pub name: String,
    pub policy: Policy,
    pub steps: Vec<Step>,
    pub serial: Serial,
    pub budget: Budget,
    pub window: Option<Window>,
}

impl Playbook {
    /// The journal key of step `index`: position and kind, so an edited playbook does not
    /// silently reuse another step's record.
    pub fn step_id(&self, index: usize) -> String {
        match self.steps.get(index) {
            Some(step) => format!("{:02}-{}", index + 1, step.kind()),
            None => format!("{:02}-unknown", index + 1),
        }
    }

    pub fn needs_certificate(&self) -> bool {
        self.steps.iter().any(Step::needs_certificate)
    }

    pub fn needs_client_secret(&self) -> bool {
        self.steps.iter().any(Step::needs_client_secret)
    }

    /// Whether any step reads a named credential from the vault.
    pub fn needs_vault_credentials(&self) -> bool {
        self.steps.iter().any(|s| !s.vault_credentials().is_empty())
    }

    /// The directory relative step files (CA bundles, service certificates) are found in.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

fn is_fingerprint(fp: &str) -> bool {
    fp.len() == 40 && fp.chars().all(|c| c.is_ascii_hexdigit())
}

/// Problems of a new-style step that can be seen without a device (templated values are
/// checked again per device in preflight, once filled in), each with the key of the step's
/// settings it concerns (`""`: the step itself) so it is reported at that key's line.
fn check_step(step: &Step) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let fp_msg = |what: &str| format!("{what} is a SHA-1 fingerprint: 40 hex digits");
    match step {
        Step::AddCaCertificate(c) => {
            if c.file.is_none() {
                out.push((
                    "",
                    "`file:` (a PEM bundle of CA certificates) is required".into(),
                ));
            }
            if c.fingerprint.is_some() {
                out.push((
                    "fingerprint",
                    "`fingerprint:` is only for remove_ca_certificate; add_ca_certificate takes `file:`"
                        .into(),
                ));
            }
        }
        Step::RemoveCaCertificate(c) => match (&c.file, &c.fingerprint) {
            (None, None) | (Some(_), Some(_)) => out.push((
                "",
                "give either `file:` (a PEM bundle) or `fingerprint:`".into(),
            )),
            (None, Some(fp)) if !is_fingerprint(fp) => {
                out.push(("fingerprint", fp_msg("`fingerprint`")))
            }
            _ => {}
        },
        Step::ScepEnroll(s) => {
            for (name, value) in [
                ("url", &s.url),
                ("ca_fingerprint", &s.ca_fingerprint),
                ("common_name", &s.common_name),
            ] {
                if value.trim().is_empty() {
                    out.push((name, format!("`{name}` is required")));
                }
            }
            if !s.ca_fingerprint.contains('{') && !is_fingerprint(&s.ca_fingerprint) {
                out.push(("ca_fingerprint", fp_msg("`ca_fingerprint`")));
            }
            out.extend(s.check_counts());
            // Values without placeholders are final: check them now.
            let literal: Vec<(&str, String)> = s
                .params()
                .into_iter()
                .filter(|(_, v)| !v.contains('{'))
                .map(|(n, v)| (n, v.to_string()))
                .collect();
            out.extend(ScepEnroll::check_values(&literal));
        }
        Step::ScepRenewalProfile(p) => {
            let needs_url = p.action == ProfileAction::Set;
            let needs_fp = p.action != ProfileAction::List;
            match &p.ca_fingerprint {
                None if needs_fp => out.push(("", "`ca_fingerprint` is required".into())),
                Some(fp) if !is_fingerprint(fp) => {
                    out.push(("ca_fingerprint", fp_msg("`ca_fingerprint`")))
                }
                _ => {}
            }
            match &p.url {
                None if needs_url => out.push(("", "`url` is required to set a profile".into())),
                Some(u) => {
                    let n = u.chars().count();
                    if n > PROFILE_URL_MAX_LEN {
                        out.push((
                            "url",
                            format!(
                                "`url` is {n} characters long; a renewal profile's URL is at \
                                 most {PROFILE_URL_MAX_LEN} characters: shorten it"
                            ),
                        ));
                    }
                    if let Err(e) =
                        crate::tsh::TshCommand::xcommand("x").and_then(|c| c.param("URL", u))
                    {
                        out.push(("url", format!("`url`: {e}")));
                    }
                }
                None => {}
            }
        }
        Step::Restart(r) => {
            out.extend(check_timeout("timeout", r.timeout, false).map(|m| ("timeout", m)))
        }
        _ => {}
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbook {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

pub fn load(path: &Path) -> Result<Playbook, PlaybookError> {
    let text = crate::input::read_file(path).map_err(|source| PlaybookError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// A timeout: longer than 0 (a zero timeout fails every device later, not the file now)
/// and at most [`MAX_TIMEOUT`].
fn check_timeout(name: &str, d: Duration, zero_ok: bool) -> Option<String> {
    if d.is_zero() && !zero_ok {
        Some(format!("`{name}` must be longer than 0 (e.g. 30s)"))
    } else if d > MAX_TIMEOUT {
        Some(format!(
            "`{name}` is longer than a day; the most is 24h (a unit mistake? use ms, s, m or h)"
        ))
    } else {
        None
    }
}

/// The text is read into a tree first and every entry is checked on its own, so every
/// problem of the file is reported at once.
pub fn parse(path: &Path, text: &str) -> Result<Playbook, PlaybookError> {
    let tree = parse_tree(text).map_err(|e| {
        PlaybookError::Invalid(vec![Problem {
            file: path.to_path_buf(),
            location: e.location,
            entry: String::new(),
            message: e.message,
        }])
    })?;
    let mut reader = Reader::new(path, text);
    reader.duplicates(&tree.duplicates);
    let file = reader.playbook(&tree.root);
    let mut problem = |at: &[Seg], message: String| reader.problem(at, message);
    let steps_key = [Seg::key("steps")];
    if file.step_count == 0 {
        problem(&steps_key, "the playbook has no step".into());
    }
    let window = match file.window.as_ref().map(WindowSpec::resolve).transpose() {
        Ok(w) => w,
        Err(msg) => {
            problem(&[Seg::key("window")], msg);
            None
        }
    };
    if let Some(p) = file.max_fail_percentage {
        if !(0.0..=100.0).contains(&p) {
            problem(
                &[Seg::key("max_fail_percentage")],
                "must be between 0 and 100".into(),
            );
        }
    }
    let policy_at = |k: &str| [Seg::key("policy"), Seg::key(k)];
    if let Some(r) = file.policy.connection_rate {
        if r.is_nan() || r <= 0.0 {
            problem(
                &policy_at("connection_rate"),
                "must be a positive number of connections per second".into(),
            );
        }
    }
    if file.policy.concurrency == 0 {
        problem(
            &policy_at("concurrency"),
            "must be at least 1 device".into(),
        );
    }
    for (name, d, zero_ok) in [
        ("connect_timeout", file.policy.connect_timeout, false),
        ("auth_timeout", file.policy.auth_timeout, false),
        ("command_timeout", file.policy.command_timeout, false),
        // 0 turns keepalives off.
        ("keepalive_interval", file.policy.keepalive_interval, true),
        ("retry_backoff", file.policy.retry_backoff, true),
        ("device_estimate", file.policy.device_estimate, true),
        ("body_wait", file.policy.body_wait, false),
    ] {
        if let Some(message) = check_timeout(name, d, zero_ok) {
            problem(&policy_at(name), message);
        }
    }
    for (i, step) in &file.steps {
        let at = [Seg::key("steps"), Seg::Index(*i)];
        let entry = format!("steps[{}] ({})", i + 1, step.kind());
        let mut step_problem = |message: String| reader.problem_named(&entry, &at, message);
        // Every value that reaches a command line is checked here, before any device is
        // contacted, with the same encoder that will send it.
        match step {
            Step::SetConfiguration(s) => {
                for m in check_lengths(&[
                    ("path", &s.path, MAX_PATH_LEN),
                    ("value", &s.value, MAX_VALUE_LEN),
                ]) {
                    step_problem(m);
                }
                if let Err(e) = crate::tsh::TshCommand::xconfiguration_set(&s.path, &s.value) {
                    step_problem(e.to_string());
                }
            }
            Step::Xcommand(x) => {
                let mut fields = vec![("command", x.command.as_str(), MAX_PATH_LEN)];
                fields.extend(
                    x.params
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str(), MAX_VALUE_LEN)),
                );
                for m in check_lengths(&fields) {
                    step_problem(m);
                }
                let built = crate::tsh::TshCommand::xcommand(&x.command).and_then(|mut c| {
                    for (k, v) in &x.params {
                        c = c.param(k, v)?;
                    }
                    Ok(c)
                });
                if let Err(e) = built {
                    step_problem(e.to_string());
                }
            }
            Step::DeactivateCertificate(CertificateTarget {
                certificate: CertificateRef::Fingerprint(fp),
                ..
            })
            | Step::DeleteCertificate(CertificateTarget {
                certificate: CertificateRef::Fingerprint(fp),
                ..
            })
            | Step::ActivateCertificate(Activate {
                certificate: CertificateRef::Fingerprint(fp),
                ..
            }) if !is_fingerprint(fp) => {
                step_problem("a certificate fingerprint is 40 hex digits (SHA-1)".into());
            }
            other => {
                for (key, message) in check_step(other) {
                    // At the setting's own line when it is written out, else the step's.
                    let mut at_key = at.to_vec();
                    if !key.is_empty() {
                        at_key.push(Seg::key(other.kind()));
                        at_key.push(Seg::key(key));
                    }
                    reader.problem_named(&entry, &at_key, message);
                }
            }
        }
    }
    for (i, message) in check_order(&file.steps) {
        let at = [Seg::key("steps"), Seg::Index(i)];
        let kind = file
            .steps
            .iter()
            .find(|(j, _)| *j == i)
            .map_or("step", |(_, s)| s.kind());
        reader.problem_named(&format!("steps[{}] ({kind})", i + 1), &at, message);
    }
    if !reader.problems.is_empty() {
        return Err(PlaybookError::Invalid(reader.problems));
    }
    Ok(Playbook {
        path: path.to_path_buf(),
        name: file.name,
        policy: file.policy,
        steps: file.steps.into_iter().map(|(_, s)| s).collect(),
        serial: file.serial,
        budget: Budget {
            max_fail_percentage: file.max_fail_percentage,
            max_failures: file.max_failures,
            any_errors_fatal: file.any_errors_fatal,
        },
        window,
    })
}

/// "`value` is 5000000 characters long; the most is 1024" for each field over its cap.
fn check_lengths(fields: &[(&str, &str, usize)]) -> Vec<String> {
    fields
        .iter()
        .filter_map(|(name, value, max)| {
            let n = value.chars().count();
            (n > *max).then(|| {
                format!("`{name}` is {n} characters long; the most roomkey sends is {max}")
            })
        })
        .collect()
}

/// Steps that use another step's output must come after it: `certificate: previous`
/// after `show_certificates`, `enrolled` after `scep_enroll`, `service` after
/// `add_service_certificate`, and activating (or deactivating) the inventory's
/// certificate after the `add_certificate` that uploads it. Returns (step index, message).
fn check_order(steps: &[(usize, Step)]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let position = |kind: &str| {
        steps
            .iter()
            .find(|(_, s)| s.kind() == kind)
            .map(|(i, _)| *i)
    };
    for (i, step) in steps {
        let target = match step {
            Step::ActivateCertificate(a) => Some(&a.certificate),
            Step::DeactivateCertificate(t) | Step::DeleteCertificate(t) => Some(&t.certificate),
            _ => None,
        };
        let Some(target) = target else { continue };
        let needs = match target {
            CertificateRef::Previous => Some(("show_certificates", "previous")),
            CertificateRef::Enrolled => Some(("scep_enroll", "enrolled")),
            CertificateRef::Service => Some(("add_service_certificate", "service")),
            CertificateRef::New if matches!(step, Step::ActivateCertificate(_)) => {
                // Only when the playbook uploads it: a playbook may activate a certificate
                // added by an earlier run.
                if let Some(add) = position("add_certificate").filter(|a| a > i) {
                    out.push((
                        *i,
                        format!(
                            "activates the certificate that `add_certificate` (steps[{}]) \
                             uploads: move this step after it",
                            add + 1
                        ),
                    ));
                }
                None
            }
            _ => None,
        };
        if let Some((kind, word)) = needs {
            let before = steps.iter().any(|(j, s)| j < i && s.kind() == kind);
            if !before {
                let place = match position(kind) {
                    Some(p) => format!("move this step after steps[{}] ({kind})", p + 1),
                    None => format!("add a `{kind}` step before this one"),
                };
                out.push((
                    *i,
                    format!("`certificate: {word}` uses what `{kind}` finds: {place}"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Playbook {
        parse(Path::new("p.yaml"), text).unwrap()
    }

    fn problems(text: &str) -> String {
        match parse(Path::new("p.yaml"), text) {
            Err(PlaybookError::Invalid(p)) => render_problems(&p),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_shipped_playbooks() {
        for name in [
            "external-identity.yaml",
            "renew-certificate.yaml",
            "rotate-secret.yaml",
            "trust-ca.yaml",
            "scep-8021x.yaml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("playbooks")
                .join(name);
            if path.exists() {
                load(&path).unwrap();
            }
        }
    }

    #[test]
    fn steps_and_policy() {
        let p = parse_ok(
            r#"
name: t
policy: { concurrency: 3, command_timeout: 250ms, host_key_policy: accept-new }
steps:
  - populate_secret: { initial: true }
  - add_certificate:
  - show_certificates: {}
  - activate_certificate: {}
  - deactivate_certificate: { certificate: previous }
  - delete_certificate: { certificate: { fingerprint: 0123456789abcdef0123456789abcdef01234567 } }
  - set_configuration: { path: Conference EndToEndEncryption Mode, value: "On" }
  - verify_external_identity: {}
"#,
        );
        assert_eq!(p.policy.concurrency, 3);
        assert_eq!(p.policy.command_timeout, Duration::from_millis(250));
        assert_eq!(p.policy.host_key_policy, HostKeyPolicySetting::AcceptNew);
        assert_eq!(p.steps.len(), 8);
        assert_eq!(
            p.steps[3],
            Step::ActivateCertificate(Activate {
                purpose: Purpose::WebexIdentity,
                certificate: CertificateRef::New
            })
        );
        assert!(p.needs_certificate() && p.needs_client_secret());
    }

    #[test]
    fn unknown_step_and_unknown_field_are_errors() {
        assert!(problems("name: t\nsteps:\n  - add_certificat: {}\n")
            .contains("unknown step `add_certificat`: did you mean `add_certificate`?"));
        let all = problems("name: t\nsteps:\n  - populate_secret: { inital: true }\n");
        assert!(
            all.contains("line 3, column 24: steps[1].populate_secret.inital: unknown key `inital`: did you mean `initial`?"),
            "{all}"
        );
    }

    #[test]
    fn every_problem_at_once_in_plain_words() {
        let all = problems(
            "name: t\nserial: 0\nmax_failures: -1\npolicy:\n  command_timeout: 0s\n  connect_timeout: 0\n  concurrency: x\n  retires: 2\nsteps:\n  - add_certificate: {}\n  - activate_certifcate: {}\n  - show_certificates: { x: 1 }\n",
        );
        for want in [
            "line 2, column 1: serial: expected a number of devices (1 or more)",
            "line 3, column 1: max_failures: expected a number of devices (0 or more), found a number",
            "line 5, column 3: policy.command_timeout: `command_timeout` must be longer than 0",
            "line 6, column 3: policy.connect_timeout: `connect_timeout` must be longer than 0",
            "line 7, column 3: policy.concurrency: expected a number of devices (1 or more), found text",
            "line 8, column 3: policy.retires: unknown key `retires`: did you mean `retries`?",
            "line 11, column 5: steps[2].activate_certifcate: unknown step `activate_certifcate`: did you mean `activate_certificate`?",
            "line 12, column 26: steps[3].show_certificates.x: unknown key `x`: this step takes no settings",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        for internal in ["u16", "usize", "u32", "untagged", "Raw", "struct ", "Empty"] {
            assert!(!all.contains(internal), "{internal} in:\n{all}");
        }
        let all = problems(
            "name: t\npolicy: { command_timeout: 2d }\nsteps:\n  - restart: { timeout: 48h }\n",
        );
        assert!(all.contains("unknown unit"), "{all}");
        assert!(all.contains("`timeout` is longer than a day"), "{all}");
    }

    #[test]
    fn steps_that_need_another_steps_output_come_after_it() {
        let all = problems(
            "name: t\nsteps:\n  - activate_certificate: {}\n  - add_certificate: {}\n  - deactivate_certificate: { certificate: previous }\n  - activate_certificate: { purpose: HTTPS, certificate: service }\n  - activate_certificate: { purpose: 802.1X, certificate: enrolled }\n  - scep_enroll: { url: http://s, ca_fingerprint: 0123456789abcdef0123456789abcdef01234567, common_name: x }\n",
        );
        for want in [
            "steps[1] (activate_certificate): activates the certificate that `add_certificate` (steps[2]) uploads: move this step after it",
            "steps[3] (deactivate_certificate): `certificate: previous` uses what `show_certificates` finds: add a `show_certificates` step before this one",
            "steps[4] (activate_certificate): `certificate: service` uses what `add_service_certificate` finds",
            "steps[5] (activate_certificate): `certificate: enrolled` uses what `scep_enroll` finds: move this step after steps[6] (scep_enroll)",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // Activating a certificate an earlier run added is fine.
        parse_ok("name: t\nsteps:\n  - activate_certificate: {}\n");
    }

    #[test]
    fn values_are_bounded_before_the_run() {
        let big = "x".repeat(5 << 20);
        let all = problems(&format!(
            "name: t\nsteps:\n  - set_configuration: {{ path: Audio Volume, value: \"{big}\" }}\n  - xcommand: {{ command: Dial, params: {{ Number: \"{}\" }} }}\n",
            "1".repeat(2000)
        ));
        assert!(
            all.contains("`value` is 5242880 characters long; the most roomkey sends is 1024"),
            "{}",
            &all[..all.len().min(2000)]
        );
        assert!(
            all.contains("`Number` is 2000 characters long"),
            "{}",
            &all[..all.len().min(2000)]
        );
        assert!(all.len() < 4000, "the value itself is not echoed");
    }

    #[test]
    fn injection_in_a_value_is_refused_before_anything_runs() {
        let all = problems(
            "name: t\nsteps:\n  - set_configuration: { path: Audio Volume, value: \"5\\\"\\nxCommand SystemUnit Boot\" }\n  - xcommand: { command: \"Dial | x\" }\n",
        );
        assert!(all.contains("steps[1] (set_configuration)"), "{all}");
        assert!(all.contains("steps[2] (xcommand)"), "{all}");
    }

    #[test]
    fn certificate_steps_parse() {
        let p = parse_ok(
            r#"
name: t
steps:
  - add_ca_certificate: { file: "certs/{site}/ca.pem" }
  - remove_ca_certificate: { fingerprint: 0123456789abcdef0123456789abcdef01234567 }
  - add_service_certificate: { certificate: "certs/{name}-https.pem", key: "certs/{name}-https.key", private_key_password: https-key }
  - activate_certificate: { purpose: HTTPS, certificate: service }
  - scep_enroll:
      url: http://scep
      ca_fingerprint: 0123456789abcdef0123456789abcdef01234567
      challenge_password: "scep-{name}"
      common_name: "{name}.example.com"
      san_email: [a@example.com, b@example.com]
  - activate_certificate: { purpose: 802.1X, certificate: enrolled }
  - scep_renewal_profile: { action: list }
  - restart: { timeout: 90s }
  - restart:
"#,
        );
        assert_eq!(p.steps.len(), 9);
        assert_eq!(p.steps[8], Step::Restart(Restart::default()));
        assert!(!p.needs_certificate() && !p.needs_client_secret());
        assert!(p.needs_vault_credentials());
        assert!(p.steps[6].is_read_only());
        assert_eq!(
            p.steps[7],
            Step::Restart(Restart {
                timeout: Duration::from_secs(90),
                if_changed: true,
            })
        );
        assert_eq!(p.steps[2].vault_credentials(), vec!["https-key"]);
        match &p.steps[4] {
            Step::ScepEnroll(s) => {
                let names: Vec<&str> = s.params().iter().map(|(n, _)| *n).collect();
                assert_eq!(
                    names,
                    ["URL", "Fingerprint", "CommonName", "SanEmail", "SanEmail"]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn certificate_step_limits_are_refused_at_load() {
        let long = "x".repeat(65);
        let all = problems(&format!(
            r#"
name: t
steps:
  - scep_enroll:
      url: http://scep
      ca_fingerprint: nope
      common_name: "{long}"
      country_name: "1"
      san_dns: [a, b, c, d, e]
      san_ip: ["1", "2", "3", "4", "5", "6"]
      organization_name: "a\"b"
      organizational_unit: [a, b, c, d, e, f, g]
      locality_name: "{long}"
  - add_ca_certificate: {{}}
  - remove_ca_certificate: {{ file: a.pem, fingerprint: 0123456789abcdef0123456789abcdef01234567 }}
  - scep_renewal_profile: {{ action: set, ca_fingerprint: 0123456789abcdef0123456789abcdef01234567 }}
  - restart: {{ timeout: 0s }}
"#
        ));
        for want in [
            "line 6, column 7: steps[1] (scep_enroll): `ca_fingerprint` is a SHA-1 fingerprint",
            "line 7, column 7: steps[1] (scep_enroll): `common_name` (CommonName) is 65 characters long; the device accepts at most 64: shorten it",
            "line 8, column 7: steps[1] (scep_enroll): `country_name` (CountryName) is a two-letter ISO 3166 country code",
            "line 10, column 7: steps[1] (scep_enroll): `san_ip` has 6 values; the device takes at most 5 SanIp values: remove 1",
            "line 12, column 7: steps[1] (scep_enroll): `organizational_unit` has 7 values; the device takes at most 5 OrganizationalUnit values: remove 2",
            "line 13, column 7: steps[1] (scep_enroll): `locality_name` (LocalityName) is 65 characters long",
            "\"OrganizationName\" contains a double quote",
            "steps[2] (add_ca_certificate): `file:`",
            "steps[3] (remove_ca_certificate): give either",
            "steps[4] (scep_renewal_profile): `url` is required",
            "steps[5] (restart): `timeout` must be longer than 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // Five values of each list kind are fine (current limits; seed 001 said SanDns[1]).
        assert!(!all.contains("san_dns"), "{all}");
        assert!(!all.contains(&long), "a long value is not echoed:\n{all}");
        // The current limits: a 256-character URL, a 64-character CN, two-letter country.
        parse_ok(&format!(
            "name: t\nsteps:\n  - scep_enroll: {{ url: \"http://{}\", ca_fingerprint: 0123456789abcdef0123456789abcdef01234567, common_name: \"{}\", country_name: NO, state_or_province_name: Oslo, organizational_unit: [a, b, c, d, e], san_email: [a@x, b@x, c@x, d@x, e@x] }}\n",
            "u".repeat(249),
            "c".repeat(64)
        ));
        let all = problems(&format!(
            "name: t\nsteps:\n  - scep_enroll: {{ url: \"http://{}\", ca_fingerprint: 0123456789abcdef0123456789abcdef01234567, common_name: c }}\n",
            "u".repeat(250)
        ));
        assert!(
            all.contains("`url` (URL) is 257 characters long; the device accepts at most 256"),
            "{all}"
        );
        // A templated value is checked per device, once filled in (preflight).
        parse_ok(&format!(
            "name: t\nsteps:\n  - scep_enroll: {{ url: u, ca_fingerprint: \"{{fp}}\", common_name: \"{{name}}{}\" }}\n",
            "x".repeat(200)
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10 parsecs").is_err());
    }
}
