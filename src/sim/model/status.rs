//! The status tree (`xStatus`): system unit facts, uptime, E2EE availability and the
//! External/InternalIdentity nodes in the current form or the seed's older one (variant
//! `external_identity`, never both at once).

use sha1::Digest as _;
use time::OffsetDateTime;

use super::certificates::{device_time, CertMeta};
use super::{
    leaf, select, Device, Kind, Leaf, Outcome, Request, Response, Value, INITIAL_UPTIME_SECS,
    RELEASE, RELEASE_DATE,
};

impl Device {
    /// The whole status tree (canonical names), in print order.
    pub fn status_tree(&self, now: OffsetDateTime) -> Vec<Leaf> {
        let uptime = self
            .booted_at
            .map(|b| (now - b).whole_seconds().max(0))
            .unwrap_or(INITIAL_UPTIME_SECS);
        let mut v = vec![
            leaf(
                &["SystemUnit", "Uptime"],
                Value::Literal(uptime.to_string()),
            ),
            leaf(
                &["SystemUnit", "ProductId"],
                Value::Str("Cisco Room Kit".into()),
            ),
            leaf(
                &["SystemUnit", "ProductPlatform"],
                Value::Str("Room Kit".into()),
            ),
            leaf(
                &["SystemUnit", "Software", "DisplayName"],
                Value::Str(RELEASE.into()),
            ),
            leaf(
                &["SystemUnit", "Software", "ReleaseDate"],
                Value::Str(RELEASE_DATE.into()),
            ),
            leaf(
                &["SystemUnit", "Software", "Version"],
                Value::Str("ce11.14.1.5.a1b2c3d".into()),
            ),
            leaf(
                &["SystemUnit", "Hardware", "Module", "SerialNumber"],
                Value::Str(format!(
                    "FOC{}",
                    &hex::encode(sha1::Sha1::digest(self.name.as_bytes()))[..8].to_uppercase()
                )),
            ),
        ];
        let base = ["Conference", "EndToEndEncryption"];
        let avail = if self.e2ee_mode_on {
            "Available"
        } else {
            "Unavailable"
        };
        v.push(leaf(
            &[base[0], base[1], "Availability"],
            Value::Literal(avail.into()),
        ));
        let ext = self.external_identity();
        let p = |rest: &[&str]| -> Vec<String> {
            let mut path: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            path.push("ExternalIdentity".into());
            path.extend(rest.iter().map(|s| s.to_string()));
            path
        };
        let leaf_at = |path: Vec<String>, value: Value| Leaf { path, value };
        match self.variants.external_identity {
            // catalogue status.external-identity (current RoomOS docs)
            crate::sim::variants::IdentityForm::Current => match ext {
                Some(c) => {
                    let m = &c.meta;
                    v.push(leaf_at(
                        p(&["Verification"]),
                        Value::Literal("External".into()),
                    ));
                    v.push(leaf_at(p(&["Identity"]), Value::Str(m.common_name.clone())));
                    v.push(leaf_at(
                        p(&["Status"]),
                        Value::Literal(validity_word(m, now).into()),
                    ));
                    // The chain: the leaf, its uploaded intermediates, then trusted CAs
                    // (CA Add) up the issuer links.
                    let mut chain: Vec<&CertMeta> = vec![m];
                    chain.extend(c.chain.iter());
                    while chain.len() < 5 {
                        let Some(last) = chain.last() else { break };
                        if last.subject == last.issuer {
                            break;
                        }
                        let Some(ca) = self.cas.iter().find(|ca| {
                            ca.subject == last.issuer
                                && !chain.iter().any(|x| x.fingerprint == ca.fingerprint)
                        }) else {
                            break;
                        };
                        chain.push(ca);
                    }
                    for (i, c) in chain.iter().enumerate() {
                        let n = (i + 1).to_string();
                        let cc = |f: &[&str]| {
                            let mut r = vec!["CertificateChain", "Certificate", n.as_str()];
                            r.extend_from_slice(f);
                            p(&r)
                        };
                        v.extend([
                            leaf_at(cc(&["Fingerprint"]), Value::Str(c.fingerprint.clone())),
                            leaf_at(cc(&["NotAfter"]), Value::Str(device_time(c.not_after))),
                            leaf_at(cc(&["NotBefore"]), Value::Str(device_time(c.not_before))),
                            leaf_at(cc(&["PrimaryName"]), Value::Str(c.common_name.clone())),
                            leaf_at(
                                cc(&["PublicKeyAlgorithm"]),
                                Value::Str(c.public_key_algorithm.clone()),
                            ),
                            leaf_at(cc(&["SerialNumber"]), Value::Str(c.serial.clone())),
                            leaf_at(
                                cc(&["SignatureAlgorithm"]),
                                Value::Str(c.signature_algorithm.clone()),
                            ),
                            leaf_at(cc(&["Subject", "1", "Name"]), Value::Str(c.subject.clone())),
                            leaf_at(
                                cc(&["Validity"]),
                                Value::Literal(validity_word(c, now).into()),
                            ),
                        ]);
                    }
                }
                None => {
                    v.push(leaf_at(p(&["Verification"]), Value::Literal("None".into())));
                    v.push(leaf_at(p(&["Identity"]), Value::Str(String::new())));
                    v.push(leaf_at(
                        p(&["Status"]),
                        Value::Literal("NotConfigured".into()),
                    ));
                }
            },
            // catalogue status.external-identity-seed (seed 000's older text)
            crate::sim::variants::IdentityForm::Seed => match ext {
                Some(c) => {
                    let m = &c.meta;
                    let valid = validity_word(m, now) == "Valid";
                    let info = serde_json::json!({
                        "subject": m.subject,
                        "issuer": m.issuer,
                        "serialNumber": m.serial,
                        "notBefore": device_time(m.not_before),
                        "notAfter": device_time(m.not_after),
                        "fingerprint": m.fingerprint,
                        "subjectAltNames": m.sans,
                    })
                    .to_string();
                    let tf = if valid { "True" } else { "False" };
                    v.push(leaf_at(p(&["Valid"]), Value::Literal(tf.into())));
                    v.push(leaf_at(p(&["Identity"]), Value::Str(m.common_name.clone())));
                    v.push(leaf_at(p(&["CertInfo"]), Value::Str(info)));
                }
                None => {
                    v.push(leaf_at(p(&["Valid"]), Value::Literal("False".into())));
                    v.push(leaf_at(p(&["Identity"]), Value::Str(String::new())));
                    v.push(leaf_at(p(&["CertInfo"]), Value::Str(String::new())));
                }
            },
        }
        let internal: &[(&str, Value)] = match self.variants.external_identity {
            crate::sim::variants::IdentityForm::Current => &[
                ("Verification", Value::Literal("None".into())),
                ("Identity", Value::Str(String::new())),
                ("Status", Value::Literal("NotConfigured".into())),
            ],
            crate::sim::variants::IdentityForm::Seed => &[
                ("Valid", Value::Literal("False".into())),
                ("Identity", Value::Str(String::new())),
                ("CertInfo", Value::Str(String::new())),
            ],
        };
        for (field, value) in internal {
            v.push(leaf(
                &[base[0], base[1], "InternalIdentity", field],
                value.clone(),
            ));
        }
        v
    }

    pub(super) fn status(&self, req: &Request, now: OffsetDateTime) -> Outcome {
        let leaves = select(self.status_tree(now), &req.path);
        if leaves.is_empty() {
            return Outcome::reply(Response::NodeError {
                kind: Kind::Status,
                reason: "No match on address expression.".into(),
                xpath: format!("Status/{}", req.path.join("/")),
            });
        }
        Outcome::reply(Response::Status(leaves))
    }
}

/// A certificate's validity at `now` as the status tree words it.
fn validity_word(m: &CertMeta, now: OffsetDateTime) -> &'static str {
    if now > m.not_after {
        "Expired"
    } else if now < m.not_before {
        "NotYetValid"
    } else {
        "Valid"
    }
}
