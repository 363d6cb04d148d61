//! SCEP as the device model sees it: `Enrollment SCEP Request` (a fresh key, a request to
//! a reachable SCEP server, the certificate installed at once or after a delay), the
//! pending enrolment, and the auto-renewal profiles (`SCEP Profiles Set` or the older
//! `SCEP Renewal Request`, `Enrollment Profiles List|Delete`). The SCEP server itself and
//! the parameter rules of a request are `sim::scep`.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::certificates::{parse_cert_and_key, ServiceCert};
use super::{err, ok, Device, Leaf, Outcome, Request, Response, ResultStatus, Value};

/// A SCEP auto-renewal profile (`Enrollment SCEP Renewal Request`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalProfile {
    /// Lower-case hex SHA-1 of the issuing CA.
    pub fingerprint: String,
    pub url: String,
}

impl Device {
    /// `Enrollment SCEP Request`: the device makes a fresh P-256 key, sends the request to
    /// the SCEP server at `URL` and installs the certificate it gets back.
    pub(super) fn scep_request(
        &mut self,
        name: &str,
        req: &Request,
        now: OffsetDateTime,
    ) -> Outcome {
        use crate::sim::scep::{parse_request, EnrolError};
        if self.pending_enrolment.is_some() {
            return err(
                name,
                ResultStatus::Error,
                "An enrollment is already in progress",
            );
        }
        let (url, fingerprint, challenge, issue) = match parse_request(&req.params) {
            Ok(v) => v,
            Err(EnrolError::Parameter(m)) => return err(name, ResultStatus::ParameterError, &m),
            Err(EnrolError::Refused(m)) => return err(name, ResultStatus::Error, &m),
        };
        let Some(server) = self.scep_servers.iter().find(|s| s.url == url) else {
            return err(name, ResultStatus::Error, "Could not reach the SCEP server");
        };
        let (cert, key) = match server.enrol(&fingerprint, challenge.as_deref(), &issue, now) {
            Ok(v) => v,
            Err(e) => return err(name, ResultStatus::Error, &e.to_string()),
        };
        let mut text = Zeroizing::new(cert);
        text.push_str(key.expose());
        let (meta, key_pem) = match parse_cert_and_key(&text) {
            Ok(v) => v,
            Err(e) => return err(name, ResultStatus::Error, &e.to_string()),
        };
        let cert = ServiceCert {
            meta,
            chain: Vec::new(),
            key_pem,
            used_for: BTreeSet::new(),
        };
        // catalogue scep.completion: at once, or later (pending in between).
        match self.variants.scep_completion {
            crate::sim::variants::ScepCompletion::Immediate => self.certificates.push(cert),
            crate::sim::variants::ScepCompletion::Delayed => {
                let delay = time::Duration::try_from(self.variants.scep_delay())
                    .unwrap_or(time::Duration::ZERO);
                self.pending_enrolment = Some((now + delay, cert));
            }
        }
        Outcome::changed(ok(name, vec![]))
    }

    /// Installs a pending enrolment's certificate once its time has come.
    pub(super) fn complete_enrolment(&mut self, now: OffsetDateTime) {
        if self
            .pending_enrolment
            .as_ref()
            .is_some_and(|(due, _)| now >= *due)
        {
            if let Some((_, cert)) = self.pending_enrolment.take() {
                self.certificates.push(cert);
            }
        }
    }

    pub(super) fn renewal_request(&mut self, name: &str, req: &Request) -> Outcome {
        let (Some(fp), Some(url)) = (req.param("Fingerprint"), req.param("URL")) else {
            return err(
                name,
                ResultStatus::ParameterError,
                "Fingerprint and URL are required",
            );
        };
        if fp.len() > crate::sim::scep::MAX_VALUE_LEN || url.len() > crate::sim::scep::MAX_VALUE_LEN
        {
            return err(name, ResultStatus::ParameterError, "Value too long");
        }
        let fingerprint = fp.to_ascii_lowercase();
        self.renewal_profiles
            .retain(|p| p.fingerprint != fingerprint);
        self.renewal_profiles.push(RenewalProfile {
            fingerprint,
            url: url.to_string(),
        });
        Outcome::changed(ok(name, vec![]))
    }

    pub(super) fn profiles_list(&self, name: &str) -> Response {
        let mut fields = Vec::new();
        for (i, p) in self.renewal_profiles.iter().enumerate() {
            let n = (i + 1).to_string();
            fields.push(Leaf {
                path: vec!["Profile".into(), n.clone(), "Fingerprint".into()],
                value: Value::Str(p.fingerprint.clone()),
            });
            fields.push(Leaf {
                path: vec!["Profile".into(), n, "URL".into()],
                value: Value::Str(p.url.clone()),
            });
        }
        ok(name, fields)
    }

    pub(super) fn profiles_delete(&mut self, name: &str, req: &Request) -> Outcome {
        let Some(fp) = req.param("Fingerprint") else {
            return err(name, ResultStatus::ParameterError, "Missing Fingerprint");
        };
        let before = self.renewal_profiles.len();
        self.renewal_profiles
            .retain(|p| !p.fingerprint.eq_ignore_ascii_case(fp));
        if self.renewal_profiles.len() == before {
            return err(
                name,
                ResultStatus::Error,
                "No profile with that fingerprint",
            );
        }
        Outcome::changed(ok(name, vec![]))
    }
}
