//! The device's trusted CA list (`Security Certificates CA Add|Show|Delete`): the CAs a
//! service certificate's chain and the ExternalIdentity chain are completed from.

use super::certificates::{cert_fields, parse_cert_bundle};
use super::{err, ok, Device, Outcome, Request, Response, ResultStatus};

impl Device {
    pub(super) fn ca_add(&mut self, name: &str, req: &Request) -> Outcome {
        let body = req.body.as_ref().map(|b| b.as_str()).unwrap_or("");
        match parse_cert_bundle(body) {
            Ok(certs) => {
                self.cas.extend(certs);
                Outcome::changed(ok(name, vec![]))
            }
            Err(e) => err(name, ResultStatus::Error, &e.to_string()),
        }
    }

    pub(super) fn ca_show(&self, name: &str) -> Response {
        let mut fields = Vec::new();
        for (i, ca) in self.cas.iter().enumerate() {
            fields.extend(cert_fields(i + 1, &ca.clone(), None, false));
        }
        ok(name, fields)
    }

    pub(super) fn ca_delete(&mut self, name: &str, req: &Request) -> Outcome {
        let Some(fp) = req.param("Fingerprint") else {
            return err(name, ResultStatus::ParameterError, "Missing Fingerprint");
        };
        let before = self.cas.len();
        self.cas.retain(|c| !c.fingerprint.eq_ignore_ascii_case(fp));
        if self.cas.len() == before {
            return err(name, ResultStatus::Error, "No CA with that fingerprint");
        }
        Outcome::changed(ok(name, vec![]))
    }
}
