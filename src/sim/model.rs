//! The simulated RoomOS device as a pure state machine: ClientSecret, service certificates
//! and their activations, the trusted CA list, the E2EE configuration and the status tree.
//!
//! No I/O and no async here. The one expensive operation a device performs — opening a JWE
//! (scrypt) — is kept out of the model on purpose: [`Device::jwe_to_open`] says which JWE a
//! request carries and with which secret, the caller opens it wherever it likes (the server
//! does it on the bounded blocking KDF pool) and hands the outcome to [`Device::handle`]. The
//! model then checks the action and applies the plaintext, so every rule of the device lives
//! here and is unit-tested with fixtures.
//!
//! A password-protected service key (`Services Add PrivateKeyPassword:`) is opened in the
//! model itself: its PBKDF2 costs about a millisecond at openssl's 2,048 iterations, and
//! [`crate::cert::decrypt_pkcs8`] refuses parameters above a ceiling before doing any work,
//! so a hostile file holds the executor for a bounded time (well under a second), not the
//! minutes an unbounded derivation could.

use std::collections::BTreeSet;

use base64::Engine as _;
use sha1::Digest as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// The release line the simulated devices announce.
pub const RELEASE: &str = "RoomOS 11.14.1.5 a1b2c3d";
/// The software release date printed in the banner.
pub const RELEASE_DATE: &str = "2024-05-10";

/// Which `cisco-action` a JWE carried (mirrors `jwe::Action` so the model does not depend
/// on the crypto module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JweAction {
    Populate,
    Add,
    Activate,
    Deactivate,
}

/// The outcome of opening a JWE for this device.
pub struct Decrypted {
    pub action: JweAction,
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The secret generation the JWE was opened with (see [`Device::jwe_to_open`]).
    pub generation: u64,
}

/// What the caller must decrypt before calling [`Device::handle`].
pub struct JweJob {
    pub compact: String,
    pub secret: Secret,
    pub generation: u64,
}

/// How a device reads the plaintext of a `populate` JWE. The seed says only that it "is the
/// new ClientSecret"; the plaintext first seeding sends base64url of the phrase, the KDF uses
/// the phrase itself (see "Corrections" in `external-identity.md`). A real firmware does one
/// of these; the simulator plays either, per device, so roomkey is tested against both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PopulateReading {
    /// The plaintext bytes are the new secret phrase (what roomkey has always assumed).
    #[default]
    Raw,
    /// The plaintext is base64url of the phrase, as in the first seeding: the device decodes
    /// it (strictly: URL-safe alphabet, trailing `=` tolerated as the first seeding does) and
    /// holds the decoded bytes. A plaintext that does not decode is refused, nothing changed.
    Base64url,
}

impl PopulateReading {
    pub fn as_str(self) -> &'static str {
        match self {
            PopulateReading::Raw => "raw",
            PopulateReading::Base64url => "base64url",
        }
    }
}

/// The three x-command families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Command,
    Status,
    Configuration,
}

/// An already parsed x-command.
#[derive(Clone)]
pub struct Request {
    pub kind: Kind,
    /// Path words after the `xCommand`/`xStatus`/`xConfiguration` keyword, as typed.
    pub path: Vec<String>,
    /// `Name: value` parameters in order, names as typed.
    pub params: Vec<(String, String)>,
    /// The multi-line body, if the command took one.
    pub body: Option<Zeroizing<String>>,
}

impl Request {
    /// The first parameter with this name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path_is(&self, words: &[&str]) -> bool {
        self.path.len() == words.len()
            && self
                .path
                .iter()
                .zip(words)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// A leaf value; `Str` is printed quoted, `Literal` bare (numbers, enums, booleans).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Literal(String),
}

/// One line of a reply: the path below the result/status/configuration root and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub path: Vec<String>,
    pub value: Value,
}

fn leaf(path: &[&str], value: Value) -> Leaf {
    Leaf {
        path: path.iter().map(|s| s.to_string()).collect(),
        value,
    }
}

/// The status of an xCommand result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultStatus {
    Ok,
    Error,
    ParameterError,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Ok => "OK",
            ResultStatus::Error => "Error",
            ResultStatus::ParameterError => "ParameterError",
        }
    }
}

/// A structured reply; the TSH layer renders it in terminal or JSON form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// An xCommand result (`*r <name> ...`), errors included.
    Result {
        name: String,
        status: ResultStatus,
        fields: Vec<Leaf>,
    },
    /// `xStatus` leaves (`*s ...`).
    Status(Vec<Leaf>),
    /// `xConfiguration` leaves (`*c xConfiguration ...`).
    Configuration(Vec<Leaf>),
    /// A configuration was set.
    ConfigurationSet,
    /// An xStatus / xConfiguration error (ends in `ERROR`).
    NodeError {
        kind: Kind,
        reason: String,
        xpath: String,
    },
}

/// What a request did besides its reply.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    /// Device state changed (the caller persists it).
    pub changed: bool,
    /// The device was asked to reboot.
    pub reboot: bool,
}

impl Outcome {
    fn reply(response: Response) -> Self {
        Outcome {
            response,
            changed: false,
            reboot: false,
        }
    }
    fn changed(response: Response) -> Self {
        Outcome {
            response,
            changed: true,
            reboot: false,
        }
    }
}

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
fn intermediates(text: &str, leaf: &CertMeta) -> Vec<CertMeta> {
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

/// The persisted form of a device (includes its secret: it is a simulated device).
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    pub secret: Option<String>,
    pub certificates: Vec<PersistedCert>,
    pub cas: Vec<String>,
    pub e2ee_mode_on: bool,
    pub preferred_domain: String,
    pub boot_count: u64,
    /// SCEP auto-renewal profiles (absent in files written before they existed).
    #[serde(default)]
    pub renewal_profiles: Vec<RenewalProfile>,
}

impl Drop for PersistedState {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(s) = self.secret.as_mut() {
            s.zeroize();
        }
        for c in &mut self.certificates {
            c.key_pem.zeroize();
        }
    }
}

/// One persisted service certificate.
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PersistedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub used_for: Vec<String>,
}

/// A SCEP auto-renewal profile (`Enrollment SCEP Renewal Request`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalProfile {
    /// Lower-case hex SHA-1 of the issuing CA.
    pub fingerprint: String,
    pub url: String,
}

/// How long a simulated device claims to have been up when first asked: real rooms run for
/// weeks, and a restart must be visible as a drop in uptime.
pub const INITIAL_UPTIME_SECS: i64 = 86_400;

/// A simulated device.
#[derive(Clone)]
pub struct Device {
    pub name: String,
    secret: Option<Secret>,
    generation: u64,
    pub certificates: Vec<ServiceCert>,
    pub cas: Vec<CertMeta>,
    pub e2ee_mode_on: bool,
    pub preferred_domain: String,
    pub boot_count: u64,
    /// The SCEP servers this device can reach (set by the fleet, not persisted).
    pub scep_servers: Vec<super::scep::ScepServer>,
    pub renewal_profiles: Vec<RenewalProfile>,
    /// When the device last booted; set on first use to `now - INITIAL_UPTIME_SECS`.
    pub booted_at: Option<OffsetDateTime>,
    /// The alternatives this device plays (set by the fleet, not persisted).
    pub variants: super::variants::Variants,
    /// A SCEP enrolment accepted but not yet complete (variant `scep_completion: delayed`):
    /// when it completes, the certificate and key it installs. Not persisted (a restart of
    /// the simulator loses it, as a reboot would abort a real one).
    pub pending_enrolment: Option<(OffsetDateTime, ServiceCert)>,
    /// How this device's firmware reads a `populate` JWE's plaintext (set by the fleet from
    /// the device's `sim:` block, not persisted: it is the firmware, not the state).
    pub populate_reading: PopulateReading,
}

fn err(name: &str, status: ResultStatus, reason: &str) -> Outcome {
    Outcome::reply(Response::Result {
        name: name.to_string(),
        status,
        fields: vec![leaf(&["Reason"], Value::Str(reason.to_string()))],
    })
}

fn ok(name: &str, fields: Vec<Leaf>) -> Response {
    Response::Result {
        name: name.to_string(),
        status: ResultStatus::Ok,
        fields,
    }
}

/// Does this text look like a JWE compact serialization (five dot-separated parts)?
pub fn looks_like_jwe(s: &str) -> bool {
    s.split('.').count() == 5
}

/// The reason given for every JWE that cannot be opened (deliberately uninformative).
pub const DECRYPT_FAILED: &str = "Failed to decrypt the payload";

impl Device {
    pub fn new(name: impl Into<String>) -> Self {
        Device {
            name: name.into(),
            secret: None,
            generation: 0,
            certificates: Vec::new(),
            cas: Vec::new(),
            e2ee_mode_on: true,
            preferred_domain: String::new(),
            boot_count: 0,
            scep_servers: Vec::new(),
            renewal_profiles: Vec::new(),
            booted_at: None,
            variants: super::variants::Variants::default(),
            pending_enrolment: None,
            populate_reading: PopulateReading::default(),
        }
    }

    /// Seconds since the device booted (`xStatus SystemUnit Uptime`).
    pub fn uptime(&mut self, now: OffsetDateTime) -> i64 {
        let booted = *self
            .booted_at
            .get_or_insert(now - time::Duration::seconds(INITIAL_UPTIME_SECS));
        (now - booted).whole_seconds().max(0)
    }

    /// The current ClientSecret (the simulator exposes it to tests only).
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// Does this command take a multi-line body? (catalogue `command.multi-line`,
    /// `command.populate-form`)
    pub fn takes_body(kind: Kind, path: &[String], v: &super::variants::Variants) -> bool {
        let lower: Vec<String> = path.iter().map(|w| w.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        kind == Kind::Command
            && (matches!(
                l.as_slice(),
                ["security", "certificates", "services", "add"]
                    | ["security", "certificates", "ca", "add"]
            ) || (v.populate_form == super::variants::PopulateForm::MultiLine
                && l.as_slice() == ["security", "clientsecret", "populate"]))
    }

    /// The JWE this request carries that must be opened with the device's current secret,
    /// or `None` if it carries none (or the device has no secret, which `handle` reports).
    pub fn jwe_to_open(&self, req: &Request) -> Option<JweJob> {
        if req.kind != Kind::Command {
            return None;
        }
        let secret = self.secret.clone()?;
        let compact = if req.path_is(&["Security", "ClientSecret", "Populate"]) {
            let value: String = match self.variants.populate_form {
                super::variants::PopulateForm::OneLine => req.param("Secret")?.to_string(),
                super::variants::PopulateForm::MultiLine => {
                    req.body.as_ref()?.split_whitespace().collect()
                }
            };
            Some(value).filter(|v| looks_like_jwe(v))?
        } else if req.path_is(&["Security", "Certificates", "Services", "Add"]) {
            if !req
                .param("IsEncrypted")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                return None;
            }
            let body = req.body.as_ref()?;
            body.split_whitespace().collect::<String>()
        } else if req.path_is(&["Security", "Certificates", "Services", "Activate"])
            || req.path_is(&["Security", "Certificates", "Services", "Deactivate"])
        {
            let purpose = req.param("Purpose").and_then(Purpose::parse)?;
            if purpose != Purpose::WebexIdentity {
                return None;
            }
            req.param("Fingerprint")?.to_string()
        } else {
            return None;
        };
        Some(JweJob {
            compact,
            secret,
            generation: self.generation,
        })
    }

    /// Applies a request. `decrypted` is the outcome of opening the JWE named by
    /// [`Device::jwe_to_open`] (`Err` = could not be opened); `now` decides validity.
    pub fn handle(
        &mut self,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
        now: OffsetDateTime,
    ) -> Outcome {
        // Uptime starts counting at the first request a device ever sees.
        self.uptime(now);
        self.complete_enrolment(now);
        match req.kind {
            Kind::Command => self.command(req, decrypted, now),
            Kind::Status => self.status(req, now),
            Kind::Configuration => self.configuration(req),
        }
    }

    /// The `<Name>Result` of an xCommand (`Services Show` → `ServicesShowResult`).
    pub fn result_name(req: &Request) -> String {
        let n = req.path.len();
        let tail = &req.path[n.saturating_sub(2)..];
        let canon: String = tail.iter().map(|w| canonical_word(w)).collect();
        format!("{canon}Result")
    }

    /// Checks a decrypt outcome against the expected action and secret generation.
    fn take_plaintext(
        &self,
        name: &str,
        decrypted: Option<Result<Decrypted, ()>>,
        expected: JweAction,
    ) -> Result<Zeroizing<Vec<u8>>, Outcome> {
        match decrypted {
            None => Err(err(name, ResultStatus::Error, DECRYPT_FAILED)),
            Some(Err(())) => Err(err(name, ResultStatus::Error, DECRYPT_FAILED)),
            Some(Ok(d)) if d.generation != self.generation => Err(err(
                name,
                ResultStatus::Error,
                "The client secret changed; payload rejected",
            )),
            Some(Ok(d)) if d.action != expected => Err(err(
                name,
                ResultStatus::Error,
                "Unexpected cisco-action in the payload",
            )),
            Some(Ok(d)) => Ok(d.plaintext),
        }
    }

    fn command(
        &mut self,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
        now: OffsetDateTime,
    ) -> Outcome {
        let name = Self::result_name(req);
        let name = name.as_str();
        if req.path_is(&["Security", "ClientSecret", "Populate"]) {
            return self.populate(name, req, decrypted);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Add"]) {
            return self.services_add(name, req, decrypted);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Show"]) {
            return Outcome::reply(self.services_show(name, req));
        }
        if req.path_is(&["Security", "Certificates", "Services", "Activate"]) {
            return self.activation(name, req, decrypted, true);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Deactivate"]) {
            return self.activation(name, req, decrypted, false);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Delete"]) {
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
            return Outcome::changed(ok(name, vec![]));
        }
        if req.path_is(&["Security", "Certificates", "CA", "Add"]) {
            let body = req.body.as_ref().map(|b| b.as_str()).unwrap_or("");
            return match parse_cert_bundle(body) {
                Ok(certs) => {
                    self.cas.extend(certs);
                    Outcome::changed(ok(name, vec![]))
                }
                Err(e) => err(name, ResultStatus::Error, &e.to_string()),
            };
        }
        if req.path_is(&["Security", "Certificates", "CA", "Show"]) {
            let mut fields = Vec::new();
            for (i, ca) in self.cas.iter().enumerate() {
                fields.extend(cert_fields(i + 1, &ca.clone(), None, false));
            }
            return Outcome::reply(ok(name, fields));
        }
        if req.path_is(&["Security", "Certificates", "CA", "Delete"]) {
            let Some(fp) = req.param("Fingerprint") else {
                return err(name, ResultStatus::ParameterError, "Missing Fingerprint");
            };
            let before = self.cas.len();
            self.cas.retain(|c| !c.fingerprint.eq_ignore_ascii_case(fp));
            if self.cas.len() == before {
                return err(name, ResultStatus::Error, "No CA with that fingerprint");
            }
            return Outcome::changed(ok(name, vec![]));
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "SCEP",
            "Request",
        ]) {
            return self.scep_request(name, req, now);
        }
        // catalogue scep.commands: current devices know `SCEP Profiles Set`, older ones
        // `SCEP Renewal Request` (variant `scep_verbs`).
        let older = self.variants.scep_verbs == super::variants::ScepVerbs::Older;
        if older
            && req.path_is(&[
                "Security",
                "Certificates",
                "Services",
                "Enrollment",
                "SCEP",
                "Renewal",
                "Request",
            ])
        {
            return self.renewal_request(name, req);
        }
        if !older
            && req.path_is(&[
                "Security",
                "Certificates",
                "Services",
                "Enrollment",
                "SCEP",
                "Profiles",
                "Set",
            ])
        {
            return self.renewal_request(name, req);
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "List",
        ]) {
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
            return Outcome::reply(ok(name, fields));
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "Delete",
        ]) {
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
            return Outcome::changed(ok(name, vec![]));
        }
        if req.path_is(&["SystemUnit", "Boot"]) {
            self.boot_count += 1;
            self.booted_at = Some(now);
            return Outcome {
                response: ok(name, vec![]),
                changed: true,
                reboot: true,
            };
        }
        Self::unknown_command(req)
    }

    /// `Unknown command` with the path it did not know (catalogue `reply.unknown-command`,
    /// jsxapi's tests: `XPath` `/Dila`).
    fn unknown_command(req: &Request) -> Outcome {
        let xpath: String = req.path.iter().map(|w| format!("/{w}")).collect();
        Outcome::reply(Response::Result {
            name: "Result".to_string(),
            status: ResultStatus::Error,
            fields: vec![
                leaf(&["Reason"], Value::Str("Unknown command".to_string())),
                leaf(&["XPath"], Value::Str(xpath)),
            ],
        })
    }

    /// `Enrollment SCEP Request`: the device makes a fresh P-256 key, sends the request to
    /// the SCEP server at `URL` and installs the certificate it gets back.
    fn scep_request(&mut self, name: &str, req: &Request, now: OffsetDateTime) -> Outcome {
        use super::scep::{parse_request, EnrolError};
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
            super::variants::ScepCompletion::Immediate => self.certificates.push(cert),
            super::variants::ScepCompletion::Delayed => {
                let delay = time::Duration::try_from(self.variants.scep_delay())
                    .unwrap_or(time::Duration::ZERO);
                self.pending_enrolment = Some((now + delay, cert));
            }
        }
        Outcome::changed(ok(name, vec![]))
    }

    /// Installs a pending enrolment's certificate once its time has come.
    fn complete_enrolment(&mut self, now: OffsetDateTime) {
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

    fn renewal_request(&mut self, name: &str, req: &Request) -> Outcome {
        let (Some(fp), Some(url)) = (req.param("Fingerprint"), req.param("URL")) else {
            return err(
                name,
                ResultStatus::ParameterError,
                "Fingerprint and URL are required",
            );
        };
        if fp.len() > super::scep::MAX_VALUE_LEN || url.len() > super::scep::MAX_VALUE_LEN {
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

    fn populate(
        &mut self,
        name: &str,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
    ) -> Outcome {
        // catalogue command.populate-form: one line (`Secret: "…"`) or a multi-line body.
        let value: String = match self.variants.populate_form {
            super::variants::PopulateForm::OneLine => match req.param("Secret") {
                Some(v) => v.to_string(),
                None => return err(name, ResultStatus::ParameterError, "Missing Secret"),
            },
            super::variants::PopulateForm::MultiLine => {
                let body: String = req
                    .body
                    .as_ref()
                    .map(|b| b.split_whitespace().collect())
                    .unwrap_or_default();
                if req.param("Secret").is_some() || body.is_empty() {
                    return err(
                        name,
                        ResultStatus::ParameterError,
                        "The secret is given as the command's body",
                    );
                }
                body
            }
        };
        let value = Zeroizing::new(value);
        let value = value.as_str();
        if self.secret.is_none() {
            // First seeding: base64url of the phrase, in plaintext.
            let trimmed = value.trim_end_matches('=');
            let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed) else {
                return err(name, ResultStatus::Error, "Secret is not valid base64url");
            };
            let bytes = Zeroizing::new(bytes);
            let Ok(phrase) = std::str::from_utf8(&bytes) else {
                return err(name, ResultStatus::Error, "Secret is not valid UTF-8");
            };
            if phrase.is_empty() {
                return err(name, ResultStatus::Error, "Secret must not be empty");
            }
            self.secret = Some(Secret::new(phrase));
            self.generation += 1;
            return Outcome::changed(ok(name, vec![]));
        }
        if !looks_like_jwe(value) {
            return err(
                name,
                ResultStatus::Error,
                "A client secret is already set; send a populate JWE",
            );
        }
        let plaintext = match self.take_plaintext(name, decrypted, JweAction::Populate) {
            Ok(p) => p,
            Err(o) => return o,
        };
        if plaintext.is_empty() {
            self.secret = None;
        } else {
            let bytes = match self.populate_reading {
                PopulateReading::Raw => plaintext,
                PopulateReading::Base64url => {
                    let Some(decoded) = std::str::from_utf8(&plaintext).ok().and_then(|t| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(t.trim_end_matches('='))
                            .ok()
                    }) else {
                        return err(name, ResultStatus::Error, "Secret is not valid base64url");
                    };
                    let decoded = Zeroizing::new(decoded);
                    if decoded.is_empty() {
                        return err(name, ResultStatus::Error, "Secret must not be empty");
                    }
                    decoded
                }
            };
            // A simulator limit: the model keeps secrets as text, so bytes that are not
            // UTF-8 are refused (a real firmware might hold them).
            let Ok(phrase) = std::str::from_utf8(&bytes) else {
                return err(name, ResultStatus::Error, "Secret is not valid UTF-8");
            };
            self.secret = Some(Secret::new(phrase));
        }
        self.generation += 1;
        Outcome::changed(ok(name, vec![]))
    }

    fn services_add(
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

    fn services_show(&self, name: &str, req: &Request) -> Response {
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

    fn activation(
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

    /// The certificate active for `WebexIdentity`, if any.
    pub fn external_identity(&self) -> Option<&ServiceCert> {
        self.certificates
            .iter()
            .find(|c| c.used_for.contains(&Purpose::WebexIdentity))
    }

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
            super::variants::IdentityForm::Current => match ext {
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
            super::variants::IdentityForm::Seed => match ext {
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
            super::variants::IdentityForm::Current => &[
                ("Verification", Value::Literal("None".into())),
                ("Identity", Value::Str(String::new())),
                ("Status", Value::Literal("NotConfigured".into())),
            ],
            super::variants::IdentityForm::Seed => &[
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

    /// Every configuration leaf the device has (what `xConfiguration` of the root prints).
    pub fn config_tree(&self) -> Vec<Leaf> {
        vec![
            leaf(
                &[
                    "Conference",
                    "EndToEndEncryption",
                    "Identity",
                    "PreferredDomain",
                ],
                Value::Str(self.preferred_domain.clone()),
            ),
            leaf(
                &["Conference", "EndToEndEncryption", "Mode"],
                Value::Literal(if self.e2ee_mode_on { "On" } else { "Off" }.into()),
            ),
        ]
    }

    fn status(&self, req: &Request, now: OffsetDateTime) -> Outcome {
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

    fn configuration(&mut self, req: &Request) -> Outcome {
        // `xConfiguration A B C: value` arrives as path [A, B] and param (C, value).
        let Some((last, value)) = req.params.first() else {
            let leaves = select(self.config_tree(), &req.path);
            if leaves.is_empty() {
                return Outcome::reply(Response::NodeError {
                    kind: Kind::Configuration,
                    reason: "No match on address expression.".into(),
                    xpath: format!("Configuration/{}", req.path.join("/")),
                });
            }
            return Outcome::reply(Response::Configuration(leaves));
        };
        let mut path = req.path.clone();
        path.push(last.clone());
        let full = Request {
            kind: Kind::Configuration,
            path,
            params: vec![],
            body: None,
        };
        let xpath = format!("Configuration/{}", full.path.join("/"));
        let node_err = |reason: &str| {
            Outcome::reply(Response::NodeError {
                kind: Kind::Configuration,
                reason: reason.to_string(),
                xpath: xpath.clone(),
            })
        };
        if full.path_is(&["Conference", "EndToEndEncryption", "Mode"]) {
            let on = if value.eq_ignore_ascii_case("on") {
                true
            } else if value.eq_ignore_ascii_case("off") {
                false
            } else {
                return node_err("Illegal value");
            };
            self.e2ee_mode_on = on;
            return Outcome::changed(Response::ConfigurationSet);
        }
        if full.path_is(&[
            "Conference",
            "EndToEndEncryption",
            "Identity",
            "PreferredDomain",
        ]) {
            if self.external_identity().is_some() {
                return node_err(
                    "PreferredDomain cannot be set while an external identity certificate is active",
                );
            }
            if value.len() > 255 {
                return node_err("Illegal value");
            }
            self.preferred_domain = value.clone();
            return Outcome::changed(Response::ConfigurationSet);
        }
        node_err("No match on address expression.")
    }

    /// The persisted form of the device.
    pub fn to_persisted(&self) -> PersistedState {
        PersistedState {
            version: 1,
            secret: self.secret.as_ref().map(|s| s.expose().to_string()),
            certificates: self
                .certificates
                .iter()
                .map(|c| PersistedCert {
                    cert_pem: std::iter::once(&c.meta)
                        .chain(c.chain.iter())
                        .map(|m| m.pem.as_str())
                        .collect(),
                    key_pem: c.key_pem.expose().to_string(),
                    used_for: c.used_for.iter().map(|p| p.as_str().to_string()).collect(),
                })
                .collect(),
            cas: self.cas.iter().map(|c| c.pem.clone()).collect(),
            e2ee_mode_on: self.e2ee_mode_on,
            preferred_domain: self.preferred_domain.clone(),
            boot_count: self.boot_count,
            renewal_profiles: self.renewal_profiles.clone(),
        }
    }

    /// Rebuilds a device from its persisted form.
    pub fn from_persisted(name: &str, state: &PersistedState) -> Result<Device, CertError> {
        let mut d = Device::new(name);
        d.secret = state.secret.as_deref().map(Secret::new);
        d.generation = 1;
        for pc in &state.certificates {
            let mut text = Zeroizing::new(pc.cert_pem.clone());
            text.push('\n');
            text.push_str(&pc.key_pem);
            let (meta, key_pem) = parse_cert_and_key(&text)?;
            let chain = intermediates(&pc.cert_pem, &meta);
            let used_for = pc
                .used_for
                .iter()
                .filter_map(|p| Purpose::parse(p))
                .collect();
            d.certificates.push(ServiceCert {
                meta,
                chain,
                key_pem,
                used_for,
            });
        }
        for ca in &state.cas {
            d.cas.extend(parse_cert_bundle(ca)?);
        }
        d.e2ee_mode_on = state.e2ee_mode_on;
        d.preferred_domain = state.preferred_domain.clone();
        d.boot_count = state.boot_count;
        d.renewal_profiles = state.renewal_profiles.clone();
        Ok(d)
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

/// The leaves whose path starts with `prefix` (case-insensitive).
fn select(tree: Vec<Leaf>, prefix: &[String]) -> Vec<Leaf> {
    tree.into_iter()
        .filter(|l| {
            l.path.len() >= prefix.len()
                && l.path
                    .iter()
                    .zip(prefix)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        })
        .collect()
}

/// Certificate fields as `Details <n> <Field>` leaves.
fn cert_fields(
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

/// Canonical spelling of a command word (for result names of case-insensitive input).
fn canonical_word(w: &str) -> String {
    const WORDS: &[&str] = &[
        "Security",
        "ClientSecret",
        "Populate",
        "Certificates",
        "Services",
        "Add",
        "Show",
        "Activate",
        "Deactivate",
        "Delete",
        "CA",
        "Enrollment",
        "SCEP",
        "Renewal",
        "Request",
        "Profiles",
        "List",
        "Set",
        "SystemUnit",
        "Boot",
    ];
    WORDS
        .iter()
        .find(|c| c.eq_ignore_ascii_case(w))
        .map(|c| c.to_string())
        .unwrap_or_else(|| w.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn make_cert(cn: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    fn cmd(path: &str, params: &[(&str, &str)], body: Option<&str>) -> Request {
        Request {
            kind: Kind::Command,
            path: path.split(' ').map(String::from).collect(),
            params: params
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.map(|b| Zeroizing::new(b.to_string())),
        }
    }

    fn status_of(o: &Outcome) -> ResultStatus {
        match &o.response {
            Response::Result { status, .. } => *status,
            other => panic!("not a result: {other:?}"),
        }
    }

    #[test]
    fn first_populate_is_plaintext_then_refused() {
        let mut d = Device::new("room-1");
        let o = d.handle(
            &cmd(
                "Security ClientSecret Populate",
                &[("Secret", "MDEyMzQ1Njc4OWFiY2RlZg")],
                None,
            ),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok);
        assert!(o.changed);
        assert_eq!(d.secret().unwrap().expose(), "0123456789abcdef");
        let o = d.handle(
            &cmd(
                "security clientsecret populate",
                &[("secret", "b3NzaWZyYWdl")],
                None,
            ),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Error);
        assert_eq!(d.secret().unwrap().expose(), "0123456789abcdef");
    }

    #[test]
    fn populate_jwe_wrong_secret_changes_nothing_and_empty_resets() {
        let mut d = Device::new("r");
        d.handle(
            &cmd(
                "Security ClientSecret Populate",
                &[("Secret", "b3NzaWZyYWdl")],
                None,
            ),
            None,
            now(),
        );
        let req = cmd(
            "Security ClientSecret Populate",
            &[("Secret", "a.b.c.d.e")],
            None,
        );
        let job = d.jwe_to_open(&req).unwrap();
        assert_eq!(job.compact, "a.b.c.d.e");
        let o = d.handle(&req, Some(Err(())), now());
        assert_eq!(status_of(&o), ResultStatus::Error);
        assert!(!o.changed);
        assert_eq!(d.secret().unwrap().expose(), "ossifrage");
        // Wrong action is refused too.
        let o = d.handle(
            &req,
            Some(Ok(Decrypted {
                action: JweAction::Add,
                plaintext: Zeroizing::new(b"x".to_vec()),
                generation: job.generation,
            })),
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Error);
        let o = d.handle(
            &req,
            Some(Ok(Decrypted {
                action: JweAction::Populate,
                plaintext: Zeroizing::new(Vec::new()),
                generation: job.generation,
            })),
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok);
        assert!(d.secret().is_none());
    }

    #[test]
    fn populate_reading_decides_what_a_populate_jwe_sets() {
        let populate = |d: &mut Device, plaintext: &[u8]| {
            let req = cmd(
                "Security ClientSecret Populate",
                &[("Secret", "a.b.c.d.e")],
                None,
            );
            let generation = d.jwe_to_open(&req).unwrap().generation;
            d.handle(
                &req,
                Some(Ok(Decrypted {
                    action: JweAction::Populate,
                    plaintext: Zeroizing::new(plaintext.to_vec()),
                    generation,
                })),
                now(),
            )
        };
        let seeded = |reading| {
            let mut d = Device::new("r");
            d.populate_reading = reading;
            d.handle(
                &cmd(
                    "Security ClientSecret Populate",
                    &[("Secret", "b3NzaWZyYWdl")],
                    None,
                ),
                None,
                now(),
            );
            d
        };
        // Raw: the plaintext is the phrase, base64url-looking or not.
        let mut d = seeded(PopulateReading::Raw);
        assert_eq!(
            status_of(&populate(&mut d, b"b3NzaWZyYWdl")),
            ResultStatus::Ok
        );
        assert_eq!(d.secret().unwrap().expose(), "b3NzaWZyYWdl");
        assert_eq!(
            status_of(&populate(&mut d, b"not~base64!")),
            ResultStatus::Ok
        );
        assert_eq!(d.secret().unwrap().expose(), "not~base64!");
        // Base64url: the plaintext is decoded; one that does not decode changes nothing.
        let mut d = seeded(PopulateReading::Base64url);
        assert_eq!(
            status_of(&populate(&mut d, b"c3dvcmRmaXNo")),
            ResultStatus::Ok
        );
        assert_eq!(d.secret().unwrap().expose(), "swordfish");
        let o = populate(&mut d, b"not~base64!");
        assert_eq!(status_of(&o), ResultStatus::Error);
        assert!(!o.changed);
        assert!(reason(&o).contains("base64url"), "{}", reason(&o));
        assert_eq!(d.secret().unwrap().expose(), "swordfish");
        // Five alphabet characters (a length no base64 text has) are refused too.
        assert_eq!(status_of(&populate(&mut d, b"abcde")), ResultStatus::Error);
        assert_eq!(d.secret().unwrap().expose(), "swordfish");
        // An empty plaintext resets the secret under either reading.
        assert_eq!(status_of(&populate(&mut d, b"")), ResultStatus::Ok);
        assert!(d.secret().is_none());
        // The knob is read from a `sim:` block.
        let plan: crate::sim::FaultPlan =
            serde_yaml::from_str("populate_reading: base64url").unwrap();
        assert_eq!(plan.populate_reading, PopulateReading::Base64url);
        assert_eq!(
            crate::sim::FaultPlan::default().populate_reading,
            PopulateReading::Raw
        );
        assert!(serde_yaml::from_str::<crate::sim::FaultPlan>("populate_reading: hex").is_err());
    }

    #[test]
    fn add_show_activate_status_and_preferred_domain() {
        let mut d = Device::new("r");
        let pem = make_cert("meeting-room-1.example.com");
        let o = d.handle(
            &cmd("Security Certificates Services Add", &[], Some(&pem)),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
        // Added twice: still one entry.
        d.handle(
            &cmd("Security Certificates Services Add", &[], Some(&pem)),
            None,
            now(),
        );
        assert_eq!(d.certificates.len(), 1);
        let fp = d.certificates[0].meta.fingerprint.clone();
        assert_eq!(fp.len(), 40);
        assert_eq!(
            d.certificates[0].meta.subject,
            "/CN=meeting-room-1.example.com"
        );
        // Plain activation for HTTPS.
        let o = d.handle(
            &cmd(
                "Security Certificates Services Activate",
                &[("Purpose", "https"), ("Fingerprint", &fp)],
                None,
            ),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok);
        // WebexIdentity needs a JWE and a secret.
        let req = cmd(
            "Security Certificates Services Activate",
            &[("Purpose", "WebexIdentity"), ("Fingerprint", &fp)],
            None,
        );
        assert_eq!(status_of(&d.handle(&req, None, now())), ResultStatus::Error);
        d.handle(
            &cmd(
                "Security ClientSecret Populate",
                &[("Secret", "b3NzaWZyYWdl")],
                None,
            ),
            None,
            now(),
        );
        let req = cmd(
            "Security Certificates Services Activate",
            &[("Purpose", "WebexIdentity"), ("Fingerprint", "h..i.c.t")],
            None,
        );
        let job = d.jwe_to_open(&req).unwrap();
        let o = d.handle(
            &req,
            Some(Ok(Decrypted {
                action: JweAction::Activate,
                plaintext: Zeroizing::new(fp.clone().into_bytes()),
                generation: job.generation,
            })),
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok);
        let st = Request {
            kind: Kind::Status,
            path: vec![
                "conference".into(),
                "EndToEndEncryption".into(),
                "externalidentity".into(),
            ],
            params: vec![],
            body: None,
        };
        let Response::Status(leaves) = d.handle(&st, None, now()).response else {
            panic!()
        };
        assert!(leaves.contains(&Leaf {
            path: [
                "Conference",
                "EndToEndEncryption",
                "ExternalIdentity",
                "Identity"
            ]
            .map(String::from)
            .to_vec(),
            value: Value::Str("meeting-room-1.example.com".into())
        }));
        // catalogue status.external-identity: the current form only, never the seed's too.
        let last = |name: &str| {
            leaves
                .iter()
                .find(|l| l.path.get(3).map(String::as_str) == Some(name))
                .map(|l| l.value.clone())
        };
        assert_eq!(last("Status"), Some(Value::Literal("Valid".into())));
        assert_eq!(
            last("Verification"),
            Some(Value::Literal("External".into()))
        );
        assert_eq!(last("Valid"), None);
        assert_eq!(last("CertInfo"), None);
        assert!(leaves.iter().any(|l| l.path.ends_with(&[
            "CertificateChain".to_string(),
            "Certificate".to_string(),
            "1".to_string(),
            "Fingerprint".to_string()
        ])));
        // The seed's older form as a variant: Valid/Identity/CertInfo, nothing else.
        let mut seed = d.clone();
        seed.variants.external_identity = super::super::variants::IdentityForm::Seed;
        let Response::Status(old) = seed.handle(&st, None, now()).response else {
            panic!()
        };
        let names: Vec<&str> = old.iter().map(|l| l.path[3].as_str()).collect();
        assert_eq!(names, ["Valid", "Identity", "CertInfo"]);
        assert_eq!(old[0].value, Value::Literal("True".into()));
        // A device whose clock is outside the validity (rcgen: 1975..4096) says so.
        let Response::Status(late) = d
            .clone()
            .handle(&st, None, OffsetDateTime::UNIX_EPOCH)
            .response
        else {
            panic!()
        };
        assert!(late.contains(&Leaf {
            path: [
                "Conference",
                "EndToEndEncryption",
                "ExternalIdentity",
                "Status"
            ]
            .map(String::from)
            .to_vec(),
            value: Value::Literal("NotYetValid".into())
        }));
        // PreferredDomain refused while the external identity is active.
        let set = Request {
            kind: Kind::Configuration,
            path: ["Conference", "EndToEndEncryption", "Identity"]
                .map(String::from)
                .to_vec(),
            params: vec![("PreferredDomain".into(), "example.com".into())],
            body: None,
        };
        assert!(matches!(
            d.handle(&set, None, now()).response,
            Response::NodeError { .. }
        ));
        // Persistence round trip keeps everything.
        let p = d.to_persisted();
        let d2 = Device::from_persisted("r", &p).unwrap();
        assert_eq!(d2.certificates.len(), 1);
        assert!(d2.external_identity().is_some());
        assert_eq!(d2.secret().unwrap().expose(), "ossifrage");
    }

    #[test]
    fn services_add_opens_an_encrypted_key_with_its_password_only() {
        let mut d = Device::new("r");
        let plain = make_cert("https.example.com");
        let at = plain.find("-----BEGIN PRIVATE KEY").unwrap();
        let (cert, key) = plain.split_at(at);
        let body = format!(
            "{cert}{}",
            crate::cert::encrypt_pkcs8_pem(key, "key pass 1", 2048)
        );
        let add = |params: &[(&str, &str)]| {
            cmd("Security Certificates Services Add", params, Some(&body))
        };
        // Missing or wrong password: refused with a reason, nothing stored.
        for (params, want) in [
            (&[][..], "PrivateKeyPassword is required"),
            (
                &[("PrivateKeyPassword", "key pass 2")][..],
                "the password does not decrypt the private key",
            ),
        ] {
            let o = d.handle(&add(params), None, now());
            assert_eq!(status_of(&o), ResultStatus::Error);
            assert!(reason(&o).contains(want), "{}", reason(&o));
            assert!(!reason(&o).contains("key pass"));
            assert!(!o.changed);
            assert!(d.certificates.is_empty());
        }
        let o = d.handle(&add(&[("PrivateKeyPassword", "key pass 1")]), None, now());
        assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
        assert!(o.changed);
        assert_eq!(d.certificates.len(), 1);
        // Stored decrypted (the device keeps the key, not the password), so it persists.
        let stored = d.certificates[0].key_pem.expose().to_string();
        assert!(
            stored.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{stored}"
        );
        let d2 = Device::from_persisted("r", &d.to_persisted()).unwrap();
        assert_eq!(d2.certificates.len(), 1);
        // A password with a plain key is ignored, as devices do.
        let mut d = Device::new("r");
        let o = d.handle(
            &cmd(
                "Security Certificates Services Add",
                &[("PrivateKeyPassword", "unused")],
                Some(&plain),
            ),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
        // The right password for a key that is not the certificate's: still a mismatch.
        let other = make_cert("other.example.com");
        let other_key = &other[other.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let mismatched = format!(
            "{cert}{}",
            crate::cert::encrypt_pkcs8_pem(other_key, "key pass 1", 2048)
        );
        assert_eq!(
            parse_cert_and_key_with_password(&mismatched, Some("key pass 1")).unwrap_err(),
            CertError::KeyMismatch
        );
        // Legacy PEM encryption is named as such, whatever the password.
        let legacy = format!(
            "{cert}-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
             DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
             -----END EC PRIVATE KEY-----\n"
        );
        let e = parse_cert_and_key_with_password(&legacy, Some("key pass 1")).unwrap_err();
        assert!(e.to_string().contains("legacy PEM encryption"), "{e}");
    }

    #[test]
    fn key_mismatch_and_non_p256_refused() {
        let a = make_cert("a");
        let b = make_cert("b");
        let cert_a = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
        let key_b = &b[b.find("-----BEGIN PRIVATE KEY").unwrap()..];
        assert_eq!(
            parse_cert_and_key(&format!("{cert_a}{key_b}")).unwrap_err(),
            CertError::KeyMismatch
        );
        assert_eq!(parse_cert_and_key(cert_a).unwrap_err(), CertError::NoKey);
    }

    #[test]
    fn ca_add_keeps_duplicates_and_time_format() {
        let mut d = Device::new("r");
        let a = make_cert("ca");
        let cert = &a[..a.find("-----BEGIN PRIVATE KEY").unwrap()];
        let bundle = format!("{cert}{cert}");
        d.handle(
            &cmd("Security Certificates CA Add", &[], Some(&bundle)),
            None,
            now(),
        );
        d.handle(
            &cmd("Security Certificates CA Add", &[], Some(cert)),
            None,
            now(),
        );
        assert_eq!(d.cas.len(), 3);
        let t = time::macros::datetime!(2026-08-08 03:04:26 UTC);
        assert_eq!(device_time(t), "Aug 08 03:04:26 2026 GMT");
    }

    #[test]
    fn unknown_command_and_status_subtree() {
        let mut d = Device::new("r");
        let o = d.handle(&cmd("Foo Bar", &[], None), None, now());
        assert_eq!(status_of(&o), ResultStatus::Error);
        let st = Request {
            kind: Kind::Status,
            path: vec!["Nope".into()],
            params: vec![],
            body: None,
        };
        assert!(matches!(
            d.handle(&st, None, now()).response,
            Response::NodeError { .. }
        ));
    }

    fn reason(o: &Outcome) -> String {
        match &o.response {
            Response::Result { fields, .. } => fields
                .iter()
                .find(|l| l.path == ["Reason"])
                .map(|l| format!("{:?}", l.value))
                .unwrap_or_default(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn scep_enrolment_profiles_and_uptime() {
        use std::sync::Arc;
        let ca = Arc::new(crate::cert::TestCa::create("sim SCEP CA").unwrap());
        let server = super::super::scep::ScepServer::new(
            "http://scep.example.com/certsrv/mscep/mscep.dll",
            ca,
            Secret::new("challenge-1"),
        )
        .unwrap();
        let fp = server.ca_fingerprint.clone();
        let mut d = Device::new("r");
        d.scep_servers = vec![server];
        let enrol = |challenge: &str, ca_fp: &str| {
            cmd(
                "Security Certificates Services Enrollment SCEP Request",
                &[
                    ("URL", "http://scep.example.com/certsrv/mscep/mscep.dll"),
                    ("Fingerprint", ca_fp),
                    ("ChallengePassword", challenge),
                    ("CommonName", "r.example.com"),
                    ("OrganizationName", "Example"),
                    ("SanDns", "r.example.com"),
                ],
                None,
            )
        };
        let o = d.handle(&enrol("wrong", &fp), None, now());
        assert_eq!(status_of(&o), ResultStatus::Error);
        assert!(reason(&o).contains("challenge"), "{o:?}");
        let o = d.handle(&enrol("challenge-1", &"0".repeat(40)), None, now());
        assert!(reason(&o).contains("fingerprint"), "{o:?}");
        assert!(d.certificates.is_empty());
        let o = d.handle(&enrol("challenge-1", &fp), None, now());
        assert_eq!(status_of(&o), ResultStatus::Ok, "{o:?}");
        assert_eq!(d.certificates.len(), 1);
        let meta = &d.certificates[0].meta;
        assert_eq!(meta.common_name, "r.example.com");
        assert_eq!(meta.subject, "/O=Example/CN=r.example.com");
        assert!(meta.issuer.ends_with("/CN=sim SCEP CA"), "{}", meta.issuer);
        assert_eq!((meta.not_after - meta.not_before).whole_days(), 365);
        // A 129-character value is a parameter error.
        let long = "x".repeat(129);
        let o = d.handle(
            &cmd(
                "Security Certificates Services Enrollment SCEP Request",
                &[("URL", "u"), ("Fingerprint", &fp), ("CommonName", &long)],
                None,
            ),
            None,
            now(),
        );
        assert_eq!(status_of(&o), ResultStatus::ParameterError);

        // Renewal profiles: set (twice = one), list, delete. A current device knows only the
        // current name, an older one only the older name (catalogue scep.commands).
        let older_set = cmd(
            "Security Certificates Services Enrollment SCEP Renewal Request",
            &[("Fingerprint", &fp), ("URL", "http://scep")],
            None,
        );
        assert!(reason(&d.handle(&older_set, None, now())).contains("Unknown command"));
        let set = cmd(
            "Security Certificates Services Enrollment SCEP Profiles Set",
            &[("Fingerprint", &fp), ("URL", "http://scep")],
            None,
        );
        d.handle(&set, None, now());
        d.handle(&set, None, now());
        assert_eq!(d.renewal_profiles.len(), 1);
        let mut older = d.clone();
        older.variants.scep_verbs = super::super::variants::ScepVerbs::Older;
        assert!(reason(&older.handle(&set, None, now())).contains("Unknown command"));
        assert_eq!(
            status_of(&older.handle(&older_set, None, now())),
            ResultStatus::Ok
        );
        let list = d.handle(
            &cmd(
                "Security Certificates Services Enrollment Profiles List",
                &[],
                None,
            ),
            None,
            now(),
        );
        assert!(format!("{:?}", list.response).contains(&fp));
        let del = cmd(
            "Security Certificates Services Enrollment Profiles Delete",
            &[("Fingerprint", &fp)],
            None,
        );
        assert_eq!(status_of(&d.handle(&del, None, now())), ResultStatus::Ok);
        assert_eq!(status_of(&d.handle(&del, None, now())), ResultStatus::Error);

        // Uptime: a day at first, near zero after a boot.
        let up = Request {
            kind: Kind::Status,
            path: vec!["SystemUnit".into(), "Uptime".into()],
            params: vec![],
            body: None,
        };
        let t0 = now();
        let o = d.handle(&up, None, t0);
        assert!(format!("{:?}", o.response).contains("864"), "{o:?}");
        let o = d.handle(&cmd("SystemUnit Boot", &[], None), None, t0);
        assert!(o.reboot);
        let o = d.handle(&up, None, t0 + time::Duration::seconds(3));
        assert!(
            format!("{:?}", o.response).contains("Literal(\"3\")"),
            "{o:?}"
        );
    }
}
