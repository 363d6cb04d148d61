//! Service certificates as the device holds them: reading X.509 certificates and their
//! keys (PEM, DER, bundles, password-protected PKCS#8), the purposes a certificate is
//! activated for, `Services Add|Show|Activate|Deactivate|Delete`, and the `Details` fields
//! `Show` prints.
//!
//! A password-protected service key (`Services Add PrivateKeyPassword:`) is opened in the
//! model itself: its PBKDF2 costs about a millisecond at openssl's 2,048 iterations, and
//! [`crate::cert::decrypt_pkcs8`] refuses parameters above a ceiling before doing any work,
//! so a hostile file holds the executor for a bounded time (well under a second), not the
//! minutes an unbounded derivation could.

use std::collections::BTreeSet;

use sha1::Digest as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{
    err, looks_like_jwe, ok, Decrypted, Device, JweAction, Leaf, Outcome, Request, Response,
    ResultStatus, Value,
};
use crate::secret::Secret;

/// The purposes a service certificate can be activated for; one active certificate each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Purpose {
    Dot1x,
    Audit,
    Https,
    Pairing,
    Sip,
    HttpClient,
    WebexIdentity,
}

impl Purpose {
    pub const ALL: [Purpose; 7] = [
        Purpose::Dot1x,
        Purpose::Audit,
        Purpose::Https,
        Purpose::Pairing,
        Purpose::Sip,
        Purpose::HttpClient,
        Purpose::WebexIdentity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Dot1x => "802.1X",
            Purpose::Audit => "Audit",
            Purpose::Https => "HTTPS",
            Purpose::Pairing => "Pairing",
            Purpose::Sip => "SIP",
            Purpose::HttpClient => "HttpClient",
            Purpose::WebexIdentity => "WebexIdentity",
        }
    }

    /// How `Services Show` words the purpose in `UsedFor` (catalogue `show.used-for`:
    /// `HTTPS server` is seen on a real Room Kit; the others are printed as named).
    pub fn shown(self) -> &'static str {
        match self {
            Purpose::Https => "HTTPS server",
            p => p.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// Facts read from one X.509 certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertMeta {
    /// Lower-case hex SHA-1 of the DER.
    pub fingerprint: String,
    /// Lower-case hex SHA-256 of the DER.
    pub fingerprint_sha256: String,
    /// OpenSSL one-line form, e.g. `/C=US/O=Example CA/CN=Example Issuing CA`.
    pub subject: String,
    pub issuer: String,
    pub common_name: String,
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Upper-case hex of the serial number.
    pub serial: String,
    /// OpenSSL short name of the signature algorithm, e.g. `sha256WithRSAEncryption`.
    pub signature_algorithm: String,
    /// What `Services Show` prints as `HashingAlgorithm`: on a real Room Kit the signature
    /// algorithm's name, `sha256WithRSAEncryption` (catalogue `show.fields`).
    pub hashing_algorithm: String,
    /// OpenSSL short name of the key type, e.g. `rsaEncryption`, `id-ecPublicKey`.
    pub public_key_algorithm: String,
    pub public_key_bits: usize,
    pub version: u32,
    /// The certificate alone, PEM.
    pub pem: String,
    pub der: Vec<u8>,
}

/// A service certificate with its private key and activations.
#[derive(Clone)]
pub struct ServiceCert {
    pub meta: CertMeta,
    /// Intermediates uploaded with the certificate (listed by `Show` as further items).
    pub chain: Vec<CertMeta>,
    pub key_pem: Secret,
    pub used_for: BTreeSet<Purpose>,
}

/// Why a certificate/key text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("no certificate found in the PEM text")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("no private key found in the PEM text")]
    NoKey,
    #[error("the private key is not an ECDSA P-256 key")]
    KeyNotP256,
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("the private key is encrypted; PrivateKeyPassword is required")]
    KeyPasswordRequired,
    #[error("cannot open the encrypted private key: {0}")]
    KeyPassword(crate::cert::KeyPasswordError),
}

/// Formats a time as devices print it: `Aug 08 03:04:26 2026 GMT`.
pub fn device_time(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[month repr:short] [day] [hour]:[minute]:[second] [year] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

fn dn_oneline(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let key = x509_parser::objects::oid2abbrev(oid, registry)
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = attr
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| hex::encode(attr.attr_value().data));
            out.push('/');
            out.push_str(&key);
            out.push('=');
            out.push_str(&value);
        }
    }
    out
}

/// Parses one DER certificate.
pub fn parse_cert_der(der: &[u8]) -> Result<CertMeta, CertError> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Certificate(e.to_string()))?;
    let registry = x509_parser::objects::oid_registry();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                GeneralName::IPAddress(ip) => sans.push(format!("IP:{}", hex::encode(ip))),
                _ => {}
            }
        }
    }
    let sig_oid = &cert.signature_algorithm.algorithm;
    let signature_algorithm = x509_parser::objects::oid2sn(sig_oid, registry)
        .map(str::to_string)
        .unwrap_or_else(|_| sig_oid.to_id_string());
    let hashing_algorithm = signature_algorithm.clone();
    let key_oid = &cert.public_key().algorithm.algorithm;
    let public_key_algorithm = x509_parser::objects::oid2sn(key_oid, registry)
        .map(str::to_string)
        .unwrap_or_else(|_| key_oid.to_id_string());
    let public_key_bits = cert
        .public_key()
        .parsed()
        .map(|k| k.key_size())
        .unwrap_or(0);
    let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.to_vec())).replace("\r\n", "\n");
    Ok(CertMeta {
        fingerprint: hex::encode(sha1::Sha1::digest(der)),
        fingerprint_sha256: hex::encode(sha2::Sha256::digest(der)),
        subject: dn_oneline(cert.subject()),
        issuer: dn_oneline(cert.issuer()),
        common_name,
        sans,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        serial: cert
            .raw_serial_as_string()
            .replace(':', "")
            .to_ascii_uppercase(),
        signature_algorithm,
        hashing_algorithm,
        public_key_algorithm,
        public_key_bits,
        version: cert.version().0 + 1,
        pem,
        der: der.to_vec(),
    })
}

/// Every certificate in a PEM text (a bundle), in order.
pub fn parse_cert_bundle(text: &str) -> Result<Vec<CertMeta>, CertError> {
    let blocks = pem::parse_many(text.as_bytes()).map_err(|e| CertError::Pem(e.to_string()))?;
    let certs: Vec<CertMeta> = blocks
        .iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| parse_cert_der(p.contents()))
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

/// The certificates of a PEM text other than `leaf` (an uploaded chain's intermediates), in
/// order; unparsable blocks are skipped (the leaf and key were already checked).
pub(super) fn intermediates(text: &str, leaf: &CertMeta) -> Vec<CertMeta> {
    pem::parse_many(text.as_bytes())
        .map(|blocks| {
            blocks
                .iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .filter_map(|p| parse_cert_der(p.contents()).ok())
                .filter(|m| m.fingerprint != leaf.fingerprint)
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `certificate PEM + private key PEM`, checking the key is P-256 and matches.
pub fn parse_cert_and_key(text: &str) -> Result<(CertMeta, Secret), CertError> {
    parse_cert_and_key_with_password(text, None)
}

/// [`parse_cert_and_key`] for `Services Add` with its optional `PrivateKeyPassword`: an
/// `ENCRYPTED PRIVATE KEY` (PKCS#8, PBES2) is opened with the password and kept decrypted
/// (the device stores the key, not the password). A password given with a plain key is
/// ignored, as openssl's `-passin` is: there is nothing for it to open, and refusing would
/// break a playbook whose key file was later replaced by an unencrypted one. Legacy PEM
/// encryption (`Proc-Type: 4,ENCRYPTED`) is refused as unsupported, not as a wrong key.
pub fn parse_cert_and_key_with_password(
    text: &str,
    password: Option<&str>,
) -> Result<(CertMeta, Secret), CertError> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
    let blocks = pem::parse_many(text.as_bytes()).map_err(|e| CertError::Pem(e.to_string()))?;
    let cert_block = blocks
        .iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or(CertError::NoCertificate)?;
    let meta = parse_cert_der(cert_block.contents())?;
    let key_block = blocks
        .iter()
        .find(|p| p.tag().ends_with("PRIVATE KEY"))
        .ok_or(CertError::NoKey)?;
    if key_block
        .headers()
        .get("Proc-Type")
        .is_some_and(|v| v.contains("ENCRYPTED"))
    {
        return Err(CertError::KeyPassword(
            crate::cert::KeyPasswordError::Unsupported(
                "legacy PEM encryption (Proc-Type: 4,ENCRYPTED)".into(),
            ),
        ));
    }
    let mut decrypted_pem = None;
    let key = match key_block.tag() {
        "PRIVATE KEY" => p256::SecretKey::from_pkcs8_der(key_block.contents())
            .map_err(|_| CertError::KeyNotP256)?,
        "ENCRYPTED PRIVATE KEY" => {
            let password = password.ok_or(CertError::KeyPasswordRequired)?;
            let plain = crate::cert::decrypt_pkcs8(key_block.contents(), password.as_bytes())
                .map_err(CertError::KeyPassword)?;
            let key = p256::SecretKey::from_pkcs8_der(&plain).map_err(|_| CertError::KeyNotP256)?;
            let pem = key
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|_| CertError::KeyNotP256)?;
            decrypted_pem = Some(Secret::new(pem.as_str()));
            key
        }
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(key_block.contents())
            .map_err(|_| CertError::KeyNotP256)?,
        _ => return Err(CertError::KeyNotP256),
    };
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        '_,
        x509_parser::error::X509Error,
    >>::from_der(cert_block.contents())
    .map_err(|e| CertError::Certificate(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != point.as_bytes() {
        return Err(CertError::KeyMismatch);
    }
    let key_pem =
        decrypted_pem.unwrap_or_else(|| Secret::new(pem::encode(key_block).replace("\r\n", "\n")));
    Ok((meta, key_pem))
}

impl Device {
    pub(super) fn services_add(
        &mut self,
        name: &str,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
    ) -> Outcome {
        let encrypted = req
            .param("IsEncrypted")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let text: Zeroizing<String> = if encrypted {
            if self.secret.is_none() {
                return err(
                    name,
                    ResultStatus::Error,
                    "No client secret has been populated",
                );
            }
            let plaintext = match self.take_plaintext(name, decrypted, JweAction::Add) {
                Ok(p) => p,
                Err(o) => return o,
            };
            match std::str::from_utf8(&plaintext) {
                Ok(s) => Zeroizing::new(s.to_string()),
                Err(_) => return err(name, ResultStatus::Error, "Payload is not PEM text"),
            }
        } else {
            match &req.body {
                Some(b) => b.clone(),
                None => return err(name, ResultStatus::ParameterError, "Missing body"),
            }
        };
        let password = req.param("PrivateKeyPassword");
        let (meta, key_pem) = match parse_cert_and_key_with_password(&text, password) {
            Ok(v) => v,
            Err(e) => return err(name, ResultStatus::Error, &e.to_string()),
        };
        if self
            .certificates
            .iter()
            .any(|c| c.meta.fingerprint == meta.fingerprint)
        {
            // Re-adding an installed certificate keeps the one entry (and its activations).
            return Outcome::reply(ok(name, vec![]));
        }
        let chain = intermediates(&text, &meta);
        self.certificates.push(ServiceCert {
            meta,
            chain,
            key_pem,
            used_for: BTreeSet::new(),
        });
        Outcome::changed(ok(name, vec![]))
    }

    pub(super) fn services_show(&self, name: &str, req: &Request) -> Response {
        let sha256 = req
            .param("FingerprintAlgorithm")
            .is_some_and(|v| v.eq_ignore_ascii_case("sha256"));
        let filter = req.param("Filter").map(str::to_ascii_lowercase);
        let mut fields = Vec::new();
        let mut n = 0;
        for c in &self.certificates {
            if let Some(f) = &filter {
                let hay = format!("{} {}", c.meta.fingerprint, c.meta.subject).to_ascii_lowercase();
                if !hay.contains(f.as_str()) {
                    continue;
                }
            }
            n += 1;
            fields.extend(cert_fields(n, &c.meta, Some(&c.used_for), sha256));
            // catalogue show.chain: an uploaded chain's intermediates are further items
            // with the same UsedFor.
            for i in &c.chain {
                n += 1;
                fields.extend(cert_fields(n, i, Some(&c.used_for), sha256));
            }
        }
        ok(name, fields)
    }

    pub(super) fn activation(
        &mut self,
        name: &str,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
        activate: bool,
    ) -> Outcome {
        let Some(purpose_text) = req.param("Purpose") else {
            return err(name, ResultStatus::ParameterError, "Missing Purpose");
        };
        let Some(purpose) = Purpose::parse(purpose_text) else {
            return err(name, ResultStatus::ParameterError, "Invalid Purpose");
        };
        let Some(fp_param) = req.param("Fingerprint") else {
            return err(name, ResultStatus::ParameterError, "Missing Fingerprint");
        };
        let fingerprint: String = if purpose == Purpose::WebexIdentity {
            if self.secret.is_none() {
                return err(
                    name,
                    ResultStatus::Error,
                    "No client secret has been populated",
                );
            }
            if !looks_like_jwe(fp_param) {
                return err(
                    name,
                    ResultStatus::Error,
                    "The fingerprint must be encrypted for WebexIdentity",
                );
            }
            let expected = if activate {
                JweAction::Activate
            } else {
                JweAction::Deactivate
            };
            let plaintext = match self.take_plaintext(name, decrypted, expected) {
                Ok(p) => p,
                Err(o) => return o,
            };
            match std::str::from_utf8(&plaintext) {
                Ok(s) => s.trim().to_string(),
                Err(_) => return err(name, ResultStatus::Error, "Invalid fingerprint"),
            }
        } else {
            fp_param.to_string()
        };
        let Some(idx) = self
            .certificates
            .iter()
            .position(|c| c.meta.fingerprint.eq_ignore_ascii_case(&fingerprint))
        else {
            return err(
                name,
                ResultStatus::Error,
                "No certificate with that fingerprint",
            );
        };
        if activate {
            for c in &mut self.certificates {
                c.used_for.remove(&purpose);
            }
            if let Some(c) = self.certificates.get_mut(idx) {
                c.used_for.insert(purpose);
            }
        } else if let Some(c) = self.certificates.get_mut(idx) {
            c.used_for.remove(&purpose);
        }
        Outcome::changed(ok(name, vec![]))
    }

    pub(super) fn services_delete(&mut self, name: &str, req: &Request) -> Outcome {
        let Some(fp) = req.param("Fingerprint") else {
            return err(name, ResultStatus::ParameterError, "Missing Fingerprint");
        };
        let before = self.certificates.len();
        self.certificates
            .retain(|c| !c.meta.fingerprint.eq_ignore_ascii_case(fp));
        if self.certificates.len() == before {
            return err(
                name,
                ResultStatus::Error,
                "No certificate with that fingerprint",
            );
        }
        Outcome::changed(ok(name, vec![]))
    }

    /// The certificate active for `WebexIdentity`, if any.
    pub fn external_identity(&self) -> Option<&ServiceCert> {
        self.certificates
            .iter()
            .find(|c| c.used_for.contains(&Purpose::WebexIdentity))
    }
}

/// Certificate fields as `Details <n> <Field>` leaves.
pub(super) fn cert_fields(
    n: usize,
    m: &CertMeta,
    used_for: Option<&BTreeSet<Purpose>>,
    sha256: bool,
) -> Vec<Leaf> {
    let idx = n.to_string();
    let f = |name: &str, value: Value| Leaf {
        path: vec!["Details".into(), idx.clone(), name.to_string()],
        value,
    };
    let fp = if sha256 {
        m.fingerprint_sha256.clone()
    } else {
        m.fingerprint.clone()
    };
    let mut v = vec![
        f("Fingerprint", Value::Str(fp)),
        f("SubjectName", Value::Str(m.subject.clone())),
        f("IssuerName", Value::Str(m.issuer.clone())),
        f("notAfter", Value::Str(device_time(m.not_after))),
        f("notBefore", Value::Str(device_time(m.not_before))),
    ];
    if let Some(u) = used_for {
        // catalogue show.used-for: a real Room Kit prints `SIP, HTTPS server`.
        let s: Vec<&str> = u.iter().map(|p| p.shown()).collect();
        v.push(f("UsedFor", Value::Str(s.join(", "))));
    }
    v.extend([
        f("HashingAlgorithm", Value::Str(m.hashing_algorithm.clone())),
        f(
            "PublicKeySize",
            Value::Literal(m.public_key_bits.to_string()),
        ),
        f("SerialNumber", Value::Str(m.serial.clone())),
        f(
            "SignatureAlgorithm",
            Value::Str(m.public_key_algorithm.clone()),
        ),
        f("Version", Value::Literal(m.version.to_string())),
    ]);
    v
}
