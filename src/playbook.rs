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

use crate::engine::rollout::{Budget, Serial, Window, WindowSpec};
use crate::inventory::{render_problems, yaml_location, Problem};

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
/// use `{name}`, `{host}` and inventory vars; each is at most 128 characters once filled in.
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
    pub organization_name: Option<String>,
    #[serde(default)]
    pub san_dns: Vec<String>,
    #[serde(default)]
    pub san_email: Vec<String>,
    #[serde(default)]
    pub san_ip: Vec<String>,
    #[serde(default)]
    pub san_uri: Vec<String>,
}

/// Longest value of a SCEP request parameter (seed 001: `<S: 0, 128>`).
pub const SCEP_MAX_LEN: usize = 128;

impl ScepEnroll {
    /// The request's parameters as (name, value template) in send order, without the
    /// challenge password (a secret, sent separately).
    pub fn params(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("URL", self.url.as_str()),
            ("Fingerprint", self.ca_fingerprint.as_str()),
            ("CommonName", self.common_name.as_str()),
        ];
        if let Some(c) = &self.country_name {
            v.push(("CountryName", c.as_str()));
        }
        if let Some(o) = &self.organization_name {
            v.push(("OrganizationName", o.as_str()));
        }
        for (name, list) in self.san_lists() {
            v.extend(list.iter().map(|x| (name, x.as_str())));
        }
        v
    }

    /// The SAN lists with their parameter names and the most values each takes.
    pub fn san_lists(&self) -> [(&'static str, &Vec<String>); 4] {
        [
            ("SanDns", &self.san_dns),
            ("SanEmail", &self.san_email),
            ("SanIp", &self.san_ip),
            ("SanUri", &self.san_uri),
        ]
    }

    /// Checks filled-in values: length, and that the encoder can send them. Every problem
    /// is returned (messages name the parameter, and show the value: none is a secret).
    pub fn check_values(params: &[(&str, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, value) in params {
            let n = value.chars().count();
            if n > SCEP_MAX_LEN {
                out.push(format!(
                    "{name} is {n} characters long; the device accepts at most {SCEP_MAX_LEN}: '{value}'"
                ));
            }
            if let Err(e) = crate::tsh::TshCommand::xcommand("x").and_then(|c| c.param(name, value))
            {
                out.push(e.to_string());
            }
        }
        out
    }
}

/// The most values each SAN list of a SCEP request takes (seed 001: `SanDns[1]`, …).
pub fn san_limit(name: &str) -> usize {
    match name {
        "SanDns" => 1,
        _ => 5,
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
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaybookFile {
    name: String,
    #[serde(default)]
    policy: Policy,
    /// Rolling batches: a count, a percentage or a list (`[1, 5, "25%"]`, last repeats).
    #[serde(default)]
    serial: Serial,
    /// A batch whose failed share exceeds this percentage stops the run.
    #[serde(default)]
    max_fail_percentage: Option<f64>,
    /// More failed devices than this in the whole run stops it.
    #[serde(default)]
    max_failures: Option<usize>,
    /// Any failed device stops the run (canaries).
    #[serde(default)]
    any_errors_fatal: bool,
    /// The maintenance window (inventory groups and devices may override it).
    #[serde(default)]
    window: Option<WindowSpec>,
    // serde_yaml writes enums as YAML tags (`!add_certificate`); playbooks use the familiar
    // one-key map form (`- add_certificate: {}`).
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    steps: Vec<Step>,
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
/// checked again per device in preflight, once filled in).
fn check_step(step: &Step) -> Vec<String> {
    let mut out = Vec::new();
    let fp_msg = |what: &str| format!("{what} is a SHA-1 fingerprint: 40 hex digits");
    match step {
        Step::AddCaCertificate(c) => {
            if c.file.is_none() {
                out.push("`file:` (a PEM bundle of CA certificates) is required".into());
            }
            if c.fingerprint.is_some() {
                out.push(
                    "`fingerprint:` is only for remove_ca_certificate; add_ca_certificate takes `file:`"
                        .into(),
                );
            }
        }
        Step::RemoveCaCertificate(c) => match (&c.file, &c.fingerprint) {
            (None, None) | (Some(_), Some(_)) => {
                out.push("give either `file:` (a PEM bundle) or `fingerprint:`".into())
            }
            (None, Some(fp)) if !is_fingerprint(fp) => out.push(fp_msg("`fingerprint`")),
            _ => {}
        },
        Step::ScepEnroll(s) => {
            for (name, value) in [
                ("url", &s.url),
                ("ca_fingerprint", &s.ca_fingerprint),
                ("common_name", &s.common_name),
            ] {
                if value.trim().is_empty() {
                    out.push(format!("`{name}` is required"));
                }
            }
            if !s.ca_fingerprint.contains('{') && !is_fingerprint(&s.ca_fingerprint) {
                out.push(fp_msg("`ca_fingerprint`"));
            }
            for (name, list) in s.san_lists() {
                let limit = san_limit(name);
                if list.len() > limit {
                    out.push(format!(
                        "{name} takes at most {limit} value(s), got {}",
                        list.len()
                    ));
                }
            }
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
                None if needs_fp => out.push("`ca_fingerprint` is required".into()),
                Some(fp) if !is_fingerprint(fp) => out.push(fp_msg("`ca_fingerprint`")),
                _ => {}
            }
            match &p.url {
                None if needs_url => out.push("`url` is required to set a profile".into()),
                Some(u) => out.extend(ScepEnroll::check_values(&[("URL", u.clone())])),
                None => {}
            }
        }
        Step::Restart(r) if r.timeout.is_zero() => {
            out.push("`timeout` must be longer than 0".into())
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
    let text = std::fs::read_to_string(path).map_err(|source| PlaybookError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Playbook, PlaybookError> {
    let file: PlaybookFile = serde_yaml::from_str(text).map_err(|e| {
        PlaybookError::Invalid(vec![Problem {
            file: path.to_path_buf(),
            entry: yaml_location(&e),
            message: format!("{e}"),
        }])
    })?;
    let mut problems = Vec::new();
    let mut problem = |entry: String, message: String| {
        problems.push(Problem {
            file: path.to_path_buf(),
            entry,
            message,
        })
    };
    if file.steps.is_empty() {
        problem("steps".into(), "the playbook has no step".into());
    }
    let window = match file.window.as_ref().map(WindowSpec::resolve).transpose() {
        Ok(w) => w,
        Err(msg) => {
            problem("window".into(), msg);
            None
        }
    };
    if let Some(p) = file.max_fail_percentage {
        if !(0.0..=100.0).contains(&p) {
            problem(
                "max_fail_percentage".into(),
                "must be between 0 and 100".into(),
            );
        }
    }
    if let Some(r) = file.policy.connection_rate {
        if r.is_nan() || r <= 0.0 {
            problem(
                "policy.connection_rate".into(),
                "must be a positive number of connections per second".into(),
            );
        }
    }
    if file.policy.concurrency == 0 {
        problem(
            "policy.concurrency".into(),
            "must be at least 1 device".into(),
        );
    }
    for (i, step) in file.steps.iter().enumerate() {
        let entry = format!("steps[{}] ({})", i + 1, step.kind());
        // Every value that reaches a command line is checked here, before any device is
        // contacted, with the same encoder that will send it.
        match step {
            Step::SetConfiguration(s) => {
                if let Err(e) = crate::tsh::TshCommand::xconfiguration_set(&s.path, &s.value) {
                    problem(entry, e.to_string());
                }
            }
            Step::Xcommand(x) => {
                let built = crate::tsh::TshCommand::xcommand(&x.command).and_then(|mut c| {
                    for (k, v) in &x.params {
                        c = c.param(k, v)?;
                    }
                    Ok(c)
                });
                if let Err(e) = built {
                    problem(entry, e.to_string());
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
                problem(
                    entry,
                    "a certificate fingerprint is 40 hex digits (SHA-1)".into(),
                );
            }
            other => {
                for message in check_step(other) {
                    problem(entry.clone(), message);
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(PlaybookError::Invalid(problems));
    }
    Ok(Playbook {
        path: path.to_path_buf(),
        name: file.name,
        policy: file.policy,
        steps: file.steps,
        serial: file.serial,
        budget: Budget {
            max_fail_percentage: file.max_fail_percentage,
            max_failures: file.max_failures,
            any_errors_fatal: file.any_errors_fatal,
        },
        window,
    })
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
        assert!(problems("name: t\nsteps:\n  - add_certificat: {}\n").contains("unknown variant"));
        assert!(
            problems("name: t\nsteps:\n  - populate_secret: { inital: true }\n")
                .contains("unknown field `inital`")
        );
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
        let long = "x".repeat(129);
        let all = problems(&format!(
            r#"
name: t
steps:
  - scep_enroll:
      url: http://scep
      ca_fingerprint: nope
      common_name: "{long}"
      san_dns: [a, b]
      san_ip: ["1", "2", "3", "4", "5", "6"]
      organization_name: "a\"b"
  - add_ca_certificate: {{}}
  - remove_ca_certificate: {{ file: a.pem, fingerprint: 0123456789abcdef0123456789abcdef01234567 }}
  - scep_renewal_profile: {{ action: set, ca_fingerprint: 0123456789abcdef0123456789abcdef01234567 }}
  - restart: {{ timeout: 0s }}
"#
        ));
        for want in [
            "steps[1] (scep_enroll): `ca_fingerprint` is a SHA-1 fingerprint",
            "CommonName is 129 characters long; the device accepts at most 128",
            "SanDns takes at most 1 value(s), got 2",
            "SanIp takes at most 5 value(s), got 6",
            "\"OrganizationName\" contains a double quote",
            "steps[2] (add_ca_certificate): `file:`",
            "steps[3] (remove_ca_certificate): give either",
            "steps[4] (scep_renewal_profile): `url` is required",
            "steps[5] (restart): `timeout` must be longer than 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
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
