//! Simulated SCEP servers: what a device reaches when it runs
//! `xCommand Security Certificates Services Enrollment SCEP Request`. Each server is a URL,
//! a test CA that signs the enrolled certificates and the challenge password it expects.
//!
//! Pure (no I/O, no network): the device model calls [`ScepServer::enrol`] in-process, so a
//! fleet's enrolments are deterministic apart from the fresh keys and serial numbers. The
//! request rules (required parameters, each parameter's length limit, how many values each
//! list takes — catalogue `scep.limits`) live here so the simulator refuses exactly what a
//! device would.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::cert::{IssueRequest, TestCa};
use crate::secret::Secret;

/// Every SCEP request parameter a current device takes: (name, most characters of one
/// value, most values). Current RoomOS documents (catalogue `scep.limits`): `URL` ≤ 256,
/// `Fingerprint` ≤ 128, `ChallengePassword` ≤ 256, `CommonName` ≤ 64, `CountryName` ≤ 2,
/// `StateOrProvinceName` / `LocalityName` / `OrganizationName` ≤ 64,
/// `OrganizationalUnit[5]` and `San…[5]`, each ≤ 64. (Seed 001's older text said 0–128 for
/// every value and `SanDns[1]`.)
pub const LIMITS: &[(&str, usize, usize)] = &[
    ("URL", 256, 1),
    ("Fingerprint", 128, 1),
    ("ChallengePassword", 256, 1),
    ("CommonName", 64, 1),
    ("CountryName", 2, 1),
    ("StateOrProvinceName", 64, 1),
    ("LocalityName", 64, 1),
    ("OrganizationName", 64, 1),
    ("OrganizationalUnit", 64, 5),
    ("SanDns", 64, 5),
    ("SanEmail", 64, 5),
    ("SanIp", 64, 5),
    ("SanUri", 64, 5),
];
/// Longest `Fingerprint` / `URL` of a renewal profile (seed 001: `<S: 0, 128>`; the
/// current documents give no limit for `Profiles Set`, so the seed's stands).
pub const MAX_VALUE_LEN: usize = 128;
/// How long an enrolled certificate is valid (the request asks for one year).
pub const VALIDITY_DAYS: i64 = 365;

/// What a simulated SCEP server's CA issues (a fault of the CA, not of the device): what
/// roomkey must not count as an enrolment (engine `scep::judge_enrolled`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScepIssue {
    /// A certificate for the requested CN, valid from a minute ago for a year.
    #[default]
    Valid,
    /// One that expired a month ago (a CA with a wrong clock or validity template).
    Expired,
    /// One valid only from a month from now.
    NotYetValid,
    /// One for a CN the CA assigns itself ([`CA_ASSIGNED_CN`]) instead of the requested one
    /// (a CA template that overrides the subject).
    OtherCommonName,
}

/// The CN a [`ScepIssue::OtherCommonName`] CA puts in every certificate.
pub const CA_ASSIGNED_CN: &str = "ca-assigned-device";

/// One simulated SCEP server.
#[derive(Clone)]
pub struct ScepServer {
    pub url: String,
    pub ca: Arc<TestCa>,
    /// Lower-case hex SHA-1 of the CA certificate (what a request's `Fingerprint` names).
    pub ca_fingerprint: String,
    pub challenge: Secret,
    /// What its CA issues (default: valid certificates).
    pub issue: ScepIssue,
}

impl std::fmt::Debug for ScepServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScepServer")
            .field("url", &self.url)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("challenge", &self.challenge)
            .field("issue", &self.issue)
            .finish()
    }
}

/// Why an enrolment was refused; `ParameterError` vs `Error` as a device reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    Parameter(String),
    #[error("{0}")]
    Refused(String),
}

impl ScepServer {
    /// A server at `url` signing with `ca` and expecting `challenge`.
    pub fn new(
        url: &str,
        ca: Arc<TestCa>,
        challenge: Secret,
    ) -> Result<Self, crate::cert::CertError> {
        let ca_fingerprint = crate::cert::parse_cert_pem(&ca.cert_pem)?.fingerprint_sha1;
        Ok(ScepServer {
            url: url.to_string(),
            ca,
            ca_fingerprint,
            challenge,
            issue: ScepIssue::Valid,
        })
    }

    /// Checks the CA fingerprint and challenge, then issues a one-year certificate for
    /// the request. Returns (cert PEM, key PEM).
    pub fn enrol(
        &self,
        fingerprint: &str,
        challenge: Option<&str>,
        req: &IssueRequest,
        now: OffsetDateTime,
    ) -> Result<(String, Secret), EnrolError> {
        let want: String = fingerprint
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if want != self.ca_fingerprint {
            return Err(EnrolError::Refused(
                "The CA fingerprint does not match the SCEP server's CA certificate".into(),
            ));
        }
        let given = challenge.unwrap_or_default().as_bytes();
        let expected = self.challenge.as_bytes();
        // Length-independent comparison: the simulator should not leak timing either.
        let mut diff = given.len() ^ expected.len();
        for (i, b) in expected.iter().enumerate() {
            diff |= usize::from(*b ^ given.get(i).copied().unwrap_or(0));
        }
        if diff != 0 {
            return Err(EnrolError::Refused(
                "Enrollment rejected by the SCEP server: wrong challenge password".into(),
            ));
        }
        let year = Duration::days(VALIDITY_DAYS);
        let month = Duration::days(30);
        let (not_before, not_after) = match self.issue {
            ScepIssue::Expired => (now - year - month, now - month),
            ScepIssue::NotYetValid => (now + month, now + month + year),
            ScepIssue::Valid | ScepIssue::OtherCommonName => {
                (now - Duration::minutes(1), now + year)
            }
        };
        let overridden;
        let req = if self.issue == ScepIssue::OtherCommonName {
            overridden = IssueRequest {
                common_name: CA_ASSIGNED_CN.to_string(),
                ..req.clone()
            };
            &overridden
        } else {
            req
        };
        self.ca
            .issue_request(req, not_before, not_after)
            .map_err(|e| EnrolError::Refused(format!("The SCEP server could not issue: {e}")))
    }
}

/// Reads and checks an enrolment request's parameters (`(name, value)` in order, names
/// case-insensitive, SAN parameters repeated once per value).
pub fn parse_request(
    params: &[(String, String)],
) -> Result<(String, String, Option<String>, IssueRequest), EnrolError> {
    // The device checks every parameter against its own limits before it contacts the
    // SCEP server (reason wording inferred; status ParameterError as for any bad value).
    for (k, v) in params {
        let Some((name, max_len, _)) = LIMITS.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(k))
        else {
            return Err(EnrolError::Parameter(format!("Unknown parameter: {k}")));
        };
        if v.chars().count() > *max_len {
            return Err(EnrolError::Parameter(format!(
                "{name}: value is longer than {max_len} characters"
            )));
        }
    }
    for (name, _, max_count) in LIMITS {
        let n = params
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count();
        if n > *max_count {
            return Err(EnrolError::Parameter(if *max_count == 1 {
                format!("{name}: given more than once")
            } else {
                format!("{name}: at most {max_count} values")
            }));
        }
    }
    let one = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let all = |name: &str| -> Vec<String> {
        params
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let required = |name: &str| {
        one(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| EnrolError::Parameter(format!("Missing {name}")))
    };
    let url = required("URL")?;
    let fingerprint = required("Fingerprint")?;
    let common_name = required("CommonName")?;
    let req = IssueRequest {
        common_name,
        country: one("CountryName"),
        state: one("StateOrProvinceName"),
        locality: one("LocalityName"),
        organization: one("OrganizationName"),
        organizational_units: all("OrganizationalUnit"),
        san_dns: all("SanDns"),
        san_email: all("SanEmail"),
        san_ip: all("SanIp"),
        san_uri: all("SanUri"),
    };
    Ok((url, fingerprint, one("ChallengePassword"), req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn request_rules() {
        let ok = parse_request(&p(&[
            ("URL", "http://scep"),
            ("Fingerprint", "ab"),
            ("CommonName", "room"),
            ("SanEmail", "a@x"),
            ("SanEmail", "b@x"),
        ]))
        .unwrap();
        assert_eq!(ok.3.san_email.len(), 2);
        assert_eq!(ok.2, None);
        let long = "x".repeat(65);
        assert!(matches!(
            parse_request(&p(&[
                ("URL", "u"),
                ("Fingerprint", "f"),
                ("CommonName", &long)
            ])),
            Err(EnrolError::Parameter(m)) if m == "CommonName: value is longer than 64 characters"
        ));
        assert!(matches!(
            parse_request(&p(&[("URL", "u"), ("Fingerprint", "f")])),
            Err(EnrolError::Parameter(m)) if m.contains("CommonName")
        ));
        // A URL may be 256 characters, a CountryName 2.
        let url = format!("http://{}", "u".repeat(249));
        assert!(parse_request(&p(&[
            ("URL", &url),
            ("Fingerprint", "f"),
            ("CommonName", "c")
        ]))
        .is_ok());
        assert!(matches!(
            parse_request(&p(&[("URL", &format!("{url}x")), ("Fingerprint", "f"), ("CommonName", "c")])),
            Err(EnrolError::Parameter(m)) if m.contains("URL")
        ));
        assert!(matches!(
            parse_request(&p(&[("URL", "u"), ("Fingerprint", "f"), ("CommonName", "c"), ("CountryName", "NOR")])),
            Err(EnrolError::Parameter(m)) if m.contains("CountryName")
        ));
        // Up to 5 values of each list kind (current names), not 6.
        let mut five = p(&[
            ("URL", "u"),
            ("Fingerprint", "f"),
            ("CommonName", "c"),
            ("StateOrProvinceName", "Oslo"),
            ("LocalityName", "Oslo"),
        ]);
        for kind in [
            "SanDns",
            "SanEmail",
            "SanIp",
            "SanUri",
            "OrganizationalUnit",
        ] {
            for i in 0..5 {
                five.push((kind.to_string(), format!("v{i}")));
            }
        }
        let ok = parse_request(&five).unwrap();
        assert_eq!(ok.3.san_dns.len(), 5);
        assert_eq!(ok.3.organizational_units.len(), 5);
        assert_eq!(ok.3.state.as_deref(), Some("Oslo"));
        five.push(("SanDns".into(), "v5".into()));
        assert!(matches!(
            parse_request(&five),
            Err(EnrolError::Parameter(m)) if m == "SanDns: at most 5 values"
        ));
        assert!(matches!(
            parse_request(&p(&[("URL", "u"), ("Fingerprint", "f"), ("CommonName", "c"), ("Colour", "x")])),
            Err(EnrolError::Parameter(m)) if m.contains("Colour")
        ));
    }

    #[test]
    fn the_client_checks_the_same_limits_the_device_enforces() {
        // Two sides of one catalogue entry (scep.limits): roomkey refuses in preflight
        // exactly what the simulated device would refuse.
        let client: Vec<(&str, usize, usize)> = crate::playbook::SCEP_LIMITS
            .iter()
            .map(|l| (l.param, l.max_len, l.max_count))
            .collect();
        assert_eq!(client, LIMITS.to_vec());
    }

    #[test]
    fn enrol_checks_fingerprint_and_challenge() {
        let ca = Arc::new(TestCa::create("scep unit CA").unwrap());
        let server = ScepServer::new("http://scep", ca, Secret::new("open sesame")).unwrap();
        let req = IssueRequest {
            common_name: "room-1.example.com".into(),
            san_dns: vec!["room-1.example.com".into()],
            san_ip: vec!["10.0.0.1".into()],
            ..IssueRequest::default()
        };
        let now = OffsetDateTime::now_utc();
        let fp = server.ca_fingerprint.to_ascii_uppercase();
        assert!(matches!(
            server.enrol("00", Some("open sesame"), &req, now),
            Err(EnrolError::Refused(m)) if m.contains("fingerprint")
        ));
        assert!(matches!(
            server.enrol(&fp, Some("open"), &req, now),
            Err(EnrolError::Refused(m)) if m.contains("challenge")
        ));
        let (cert, _key) = server.enrol(&fp, Some("open sesame"), &req, now).unwrap();
        let info = crate::cert::parse_cert_pem(&cert).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("room-1.example.com"));
        assert!(info.issuer.contains("scep unit CA"));
        assert_eq!(info.sans, vec!["DNS:room-1.example.com", "IP:10.0.0.1"]);
        assert_eq!(
            (info.not_after - info.not_before).whole_days(),
            VALIDITY_DAYS
        );
    }
}
