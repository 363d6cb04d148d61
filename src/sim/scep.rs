//! Simulated SCEP servers: what a device reaches when it runs
//! `xCommand Security Certificates Services Enrollment SCEP Request`. Each server is a URL,
//! a test CA that signs the enrolled certificates and the challenge password it expects.
//!
//! Pure (no I/O, no network): the device model calls [`ScepServer::enrol`] in-process, so a
//! fleet's enrolments are deterministic apart from the fresh keys and serial numbers. The
//! request rules (required parameters, the 0–128 character limit, how many SANs of each
//! kind) live here so the simulator refuses exactly what a device would.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::cert::{IssueRequest, TestCa};
use crate::secret::Secret;

/// Longest value of any SCEP request parameter (seed 001: `<S: 0, 128>`).
pub const MAX_VALUE_LEN: usize = 128;
/// How many values each SAN list takes (seed 001: `SanDns[1]`, `SanEmail[5]`, …).
pub const SAN_LIMITS: [(&str, usize); 4] =
    [("SanDns", 1), ("SanEmail", 5), ("SanIp", 5), ("SanUri", 5)];
/// How long an enrolled certificate is valid (the request asks for one year).
pub const VALIDITY_DAYS: i64 = 365;

/// One simulated SCEP server.
#[derive(Clone)]
pub struct ScepServer {
    pub url: String,
    pub ca: Arc<TestCa>,
    /// Lower-case hex SHA-1 of the CA certificate (what a request's `Fingerprint` names).
    pub ca_fingerprint: String,
    pub challenge: Secret,
}

impl std::fmt::Debug for ScepServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScepServer")
            .field("url", &self.url)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("challenge", &self.challenge)
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
        self.ca
            .issue_request(
                req,
                now - Duration::minutes(1),
                now + Duration::days(VALIDITY_DAYS),
            )
            .map_err(|e| EnrolError::Refused(format!("The SCEP server could not issue: {e}")))
    }
}

/// Reads and checks an enrolment request's parameters (`(name, value)` in order, names
/// case-insensitive, SAN parameters repeated once per value).
pub fn parse_request(
    params: &[(String, String)],
) -> Result<(String, String, Option<String>, IssueRequest), EnrolError> {
    for (k, v) in params {
        if v.chars().count() > MAX_VALUE_LEN {
            return Err(EnrolError::Parameter(format!(
                "{k}: value is longer than {MAX_VALUE_LEN} characters"
            )));
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
    for (name, limit) in SAN_LIMITS {
        if all(name).len() > limit {
            return Err(EnrolError::Parameter(format!(
                "{name}: at most {limit} value(s)"
            )));
        }
    }
    let req = IssueRequest {
        common_name,
        country: one("CountryName"),
        organization: one("OrganizationName"),
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
        let long = "x".repeat(129);
        assert!(matches!(
            parse_request(&p(&[
                ("URL", "u"),
                ("Fingerprint", "f"),
                ("CommonName", &long)
            ])),
            Err(EnrolError::Parameter(_))
        ));
        assert!(matches!(
            parse_request(&p(&[("URL", "u"), ("Fingerprint", "f")])),
            Err(EnrolError::Parameter(m)) if m.contains("CommonName")
        ));
        assert!(matches!(
            parse_request(&p(&[
                ("URL", "u"),
                ("Fingerprint", "f"),
                ("CommonName", "c"),
                ("SanDns", "a"),
                ("SanDns", "b"),
            ])),
            Err(EnrolError::Parameter(m)) if m.contains("SanDns")
        ));
    }

    #[test]
    fn the_client_checks_the_same_limits_the_device_enforces() {
        // Two sides of one spec (seed 001): roomkey refuses in preflight exactly what the
        // simulated device would refuse.
        assert_eq!(MAX_VALUE_LEN, crate::playbook::SCEP_MAX_LEN);
        for (name, limit) in SAN_LIMITS {
            assert_eq!(crate::playbook::san_limit(name), limit, "{name}");
        }
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
