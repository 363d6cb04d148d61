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
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulateSecret {
    /// Allow the plaintext first seeding (only for a device the vault records as never
    /// seeded). Without it, a never-seeded device fails the step.
    #[serde(default)]
    pub initial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    #[serde(default = "webex_identity")]
    pub purpose: Purpose,
    #[serde(default)]
    pub certificate: CertificateRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateTarget {
    #[serde(default = "webex_identity")]
    pub purpose: Purpose,
    #[serde(default)]
    pub certificate: CertificateRef,
}

fn webex_identity() -> Purpose {
    Purpose::WebexIdentity
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfiguration {
    /// e.g. `Conference EndToEndEncryption Mode`
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// `apply --check` runs it).
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// One built-in step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
            _ => false,
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
            }) if fp.len() != 40 || !fp.chars().all(|c| c.is_ascii_hexdigit()) => {
                problem(
                    entry,
                    "a certificate fingerprint is 40 hex digits (SHA-1)".into(),
                );
            }
            _ => {}
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
        assert_eq!(p.step_id(1), "02-add_certificate");
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
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10 parsecs").is_err());
    }
}
