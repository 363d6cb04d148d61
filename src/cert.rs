//! Device certificates and keys: parsing (x509-parser), the checks an administrator needs
//! before touching a room, the SHA-1 fingerprint the device shows, the `add` payload, and key,
//! CSR and local test-CA generation (rcgen).
//!
//! The device needs an **ECDSA P-256** key; its certificate's CN is the identity shown to
//! meeting participants; the lowercase hex SHA-1 of the certificate DER is what
//! `Services Show` lists and what an `activate` JWE carries.
//!
//! Parsing and checks are pure; file I/O is confined to [`load_identity`], [`TestCa::save`],
//! [`TestCa::load`] and the two file writers. Private keys only travel in [`Secret`]s and
//! zeroizing buffers, and no error message or `Debug` output ever contains key material.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use p256::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha1::{Digest, Sha1};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::der_parser;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid2abbrev, oid2sn, oid_registry};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};
use zeroize::Zeroizing;

use crate::secret::Secret;

/// A certificate with less than this left is accepted with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// File names inside a test-CA directory.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const NEED_P256: &str = "the device needs an ECDSA P-256 key";

/// What kind of key a certificate or private key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA / EC on NIST P-256 (prime256v1): the only kind the device accepts.
    EcP256,
    /// EC on another curve (name such as "P-384", or the curve OID).
    EcOther(String),
    /// RSA with the modulus size in bits.
    Rsa(u32),
    /// Anything else (algorithm name or OID).
    Other(String),
}

impl KeyKind {
    pub fn is_p256(&self) -> bool {
        matches!(self, KeyKind::EcP256)
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcOther(curve) => write!(f, "EC {curve}"),
            KeyKind::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyKind::Other(name) => f.write_str(name),
        }
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        OID_P256 => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        other => other.into(),
    }
}

fn ec_kind(curve_oid: Option<&str>) -> KeyKind {
    match curve_oid {
        Some(OID_P256) => KeyKind::EcP256,
        Some(oid) => KeyKind::EcOther(curve_name(oid)),
        None => KeyKind::EcOther("with unnamed curve".into()),
    }
}

/// Bits of a big-endian unsigned integer (leading zero bytes and bits ignored).
fn int_bits(be: &[u8]) -> u32 {
    let trimmed: &[u8] = match be.iter().position(|&b| b != 0) {
        Some(i) => be.get(i..).unwrap_or_default(),
        None => &[],
    };
    match trimmed.first() {
        Some(first) => {
            let len = u32::try_from(trimmed.len()).unwrap_or(u32::MAX / 8);
            len * 8 - first.leading_zeros()
        }
        None => 0,
    }
}

/// Errors of certificate and key handling; each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<CertError>,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it (choose another --out directory)")]
    Exists { path: PathBuf },
    #[error("not valid UTF-8 text; expected a PEM file")]
    NotText,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error(
        "no CERTIFICATE block found; expected a PEM certificate (-----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate,
    #[error("found {count} CERTIFICATE blocks, expected exactly one: give the device certificate alone (no chain)")]
    MultipleCertificates { count: usize },
    #[error("certificate cannot be parsed: {0}")]
    X509(String),
    #[error("no private key found; expected a PEM block -----BEGIN PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----")]
    NoPrivateKey,
    #[error("found {count} private keys, expected exactly one")]
    MultipleKeys { count: usize },
    #[error("the private key is encrypted; decrypt it first (e.g. `openssl pkey -in KEY -out PLAIN.pem`) and keep the result private")]
    EncryptedKey,
    #[error("private key cannot be read ({0}); expected an unencrypted PKCS#8 or SEC1 PEM key")]
    BadKey(String),
    #[error(transparent)]
    KeyPassword(#[from] KeyPasswordError),
    #[error("the private key does not match the certificate's public key (wrong key file for this certificate?)")]
    KeyMismatch,
    #[error("key is {kind}; {NEED_P256}")]
    UnsupportedKey { kind: KeyKind },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("invalid validity window: not_after must be later than not_before")]
    Validity,
}

impl CertError {
    fn in_file(self, path: &Path) -> CertError {
        CertError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

// ---- PEM ------------------------------------------------------------------------------------

/// One PEM block: its label, decoded DER and normalised text (LF line ends).
struct PemBlock {
    label: String,
    der: Zeroizing<Vec<u8>>,
    text: Zeroizing<String>,
    encrypted_header: bool,
}

/// Finds every PEM block in `text`, ignoring anything between blocks (openssl's
/// "Bag Attributes", comments). Own scanner so key text never leaves zeroizing buffers.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, CertError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(|l| l.trim_end_matches(['\r', ' ', '\t']));
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim_start()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut out = Zeroizing::new(format!("-----BEGIN {label}-----\n"));
        let mut encrypted_header = false;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim_start();
            if l == end {
                closed = true;
                break;
            }
            if l.starts_with("-----") {
                return Err(CertError::Pem(format!(
                    "{label} block is not closed by {end}"
                )));
            }
            if l.contains(':') {
                // RFC 1421 headers (Proc-Type: 4,ENCRYPTED / DEK-Info) = legacy encrypted key.
                encrypted_header |= l.starts_with("Proc-Type") && l.contains("ENCRYPTED");
            } else {
                body.push_str(l);
            }
            out.push_str(l);
            out.push('\n');
        }
        if !closed {
            return Err(CertError::Pem(format!(
                "{label} block is not closed by {end}"
            )));
        }
        out.push_str(&end);
        out.push('\n');
        let der = if encrypted_header {
            Zeroizing::new(Vec::new())
        } else {
            Zeroizing::new(
                STANDARD
                    .decode(body.as_bytes())
                    .map_err(|_| CertError::Pem(format!("{label} block is not valid base64")))?,
            )
        };
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
            text: out,
            encrypted_header,
        });
    }
    Ok(blocks)
}

/// PEM text of a DER certificate (64-column base64, LF line ends).
fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = b64.as_bytes();
    for chunk in bytes.chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---- certificates ---------------------------------------------------------------------------

/// What the tool knows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    /// Slash form as the device shows it, e.g. `/C=US/O=Example/CN=room1.example.com`.
    pub subject: String,
    /// Issuer in the same slash form.
    pub issuer: String,
    /// Subject alternative names, openssl style: `DNS:name`, `IP:addr`, `email:x`, `URI:x`.
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Lowercase hex SHA-1 of the DER: what the device shows and `activate` carries.
    pub fingerprint_sha1: String,
    /// The certificate's public key kind.
    pub key: KeyKind,
    /// Signature algorithm short name (e.g. `ecdsa-with-SHA256`) or OID.
    pub signature_algorithm: String,
    pub public_key_bits: u32,
    pub der: Vec<u8>,
    /// Canonical PEM (64 columns, LF, trailing newline).
    pub pem: String,
}

/// Lowercase hex SHA-1 of a certificate's DER.
pub fn sha1_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha1::digest(der))
}

fn slash_name(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let key = oid2abbrev(attr.attr_type(), oid_registry())
                .map(str::to_string)
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| format!("#{}", hex::encode(attr.attr_value().data)));
            out.push('/');
            out.push_str(&key);
            out.push('=');
            out.push_str(&value);
        }
    }
    out
}

fn format_ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(bytes);
            std::net::Ipv4Addr::from(a).to_string()
        }
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => hex::encode(bytes),
    }
}

fn cert_info_from_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for gn in &ext.value.general_names {
            sans.push(match gn {
                GeneralName::DNSName(s) => format!("DNS:{s}"),
                GeneralName::IPAddress(b) => format!("IP:{}", format_ip(b)),
                GeneralName::RFC822Name(s) => format!("email:{s}"),
                GeneralName::URI(s) => format!("URI:{s}"),
                other => other.to_string(),
            });
        }
    }
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    let (key, public_key_bits) = if alg == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .map(|p| Oid::new(p.data.into()).to_id_string());
        let point = spki.subject_public_key.data.as_ref();
        let bits = match point.first() {
            Some(4) => point.len().saturating_sub(1) * 4,
            Some(2 | 3) => point.len().saturating_sub(1) * 8,
            _ => 0,
        };
        (ec_kind(curve.as_deref()), u32::try_from(bits).unwrap_or(0))
    } else if alg == OID_RSA {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => int_bits(rsa.modulus),
            _ => 0,
        };
        (KeyKind::Rsa(bits), bits)
    } else {
        let name = oid2sn(&spki.algorithm.algorithm, oid_registry())
            .map(str::to_string)
            .unwrap_or(alg);
        (KeyKind::Other(name), 0)
    };
    let sig = &cert.signature_algorithm.algorithm;
    Ok(CertInfo {
        subject_cn,
        subject: slash_name(cert.subject()),
        issuer: slash_name(cert.issuer()),
        sans,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        serial_hex: hex::encode(cert.raw_serial()),
        fingerprint_sha1: sha1_fingerprint(der),
        key,
        signature_algorithm: oid2sn(sig, oid_registry())
            .map(str::to_string)
            .unwrap_or_else(|_| sig.to_id_string()),
        public_key_bits,
        der: der.to_vec(),
        pem: der_to_pem("CERTIFICATE", der),
    })
}

/// Parses all `CERTIFICATE` blocks (e.g. a CA bundle); other blocks are ignored.
pub fn parse_cert_bundle(pem: &str) -> Result<Vec<CertInfo>, CertError> {
    let certs: Vec<CertInfo> = pem_blocks(pem)?
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| cert_info_from_der(&b.der))
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

/// Parses exactly one `CERTIFICATE` block (other blocks, e.g. a key, are ignored).
pub fn parse_cert_pem(pem: &str) -> Result<CertInfo, CertError> {
    let mut certs = parse_cert_bundle(pem)?;
    match certs.len() {
        1 => certs.pop().ok_or(CertError::NoCertificate),
        count => Err(CertError::MultipleCertificates { count }),
    }
}

// ---- private keys ---------------------------------------------------------------------------

/// A private key as found in a PEM text: its kind, its P-256 public key if it is one, and its
/// PEM block (normalised).
struct ParsedKey {
    kind: KeyKind,
    public: Option<p256::PublicKey>,
    pem: Zeroizing<String>,
}

fn rsa_bits_from_pkcs1(der: &[u8]) -> u32 {
    // RSAPrivateKey ::= SEQUENCE { version, modulus INTEGER, ... }
    der_parser::parse_der(der)
        .ok()
        .and_then(|(_, obj)| {
            obj.as_sequence()
                .ok()
                .and_then(|items| items.get(1).and_then(|m| m.as_slice().ok()).map(int_bits))
        })
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Names the curve of a SEC1 key p256 refused (only for the error message).
fn sec1_curve_guess(der: &[u8]) -> KeyKind {
    const CURVES: [(&[u8], &str); 3] = [
        (&[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22], "P-384"),
        (&[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23], "P-521"),
        (&[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A], "secp256k1"),
    ];
    CURVES
        .iter()
        .find(|(oid, _)| contains(der, oid))
        .map_or(KeyKind::EcOther("on an unknown curve".into()), |(_, n)| {
            KeyKind::EcOther((*n).into())
        })
}

fn classify_key(block: &PemBlock) -> Result<ParsedKey, CertError> {
    let pem = block.text.clone();
    match block.label.as_str() {
        "PRIVATE KEY" => {
            if let Ok(sk) = p256::SecretKey::from_pkcs8_der(&block.der) {
                return Ok(ParsedKey {
                    kind: KeyKind::EcP256,
                    public: Some(sk.public_key()),
                    pem,
                });
            }
            let info = p256::pkcs8::PrivateKeyInfo::try_from(block.der.as_slice())
                .map_err(|e| CertError::BadKey(format!("PKCS#8: {e}")))?;
            let alg = info.algorithm.oid.to_string();
            let kind = if alg == OID_RSA {
                KeyKind::Rsa(rsa_bits_from_pkcs1(info.private_key))
            } else if alg == OID_EC_PUBLIC_KEY {
                let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
                match ec_kind(curve.as_deref()) {
                    KeyKind::EcP256 => {
                        return Err(CertError::BadKey("invalid P-256 key".into()));
                    }
                    other => other,
                }
            } else if alg == "1.3.101.112" {
                KeyKind::Other("Ed25519".into())
            } else {
                KeyKind::Other(format!("algorithm {alg}"))
            };
            Ok(ParsedKey {
                kind,
                public: None,
                pem,
            })
        }
        "EC PRIVATE KEY" => match p256::SecretKey::from_sec1_der(&block.der) {
            Ok(sk) => Ok(ParsedKey {
                kind: KeyKind::EcP256,
                public: Some(sk.public_key()),
                pem,
            }),
            Err(_) => Ok(ParsedKey {
                kind: sec1_curve_guess(&block.der),
                public: None,
                pem,
            }),
        },
        "RSA PRIVATE KEY" => Ok(ParsedKey {
            kind: KeyKind::Rsa(rsa_bits_from_pkcs1(&block.der)),
            public: None,
            pem,
        }),
        other => Err(CertError::BadKey(format!("unsupported key format {other}"))),
    }
}

fn is_key_label(label: &str) -> bool {
    label.ends_with("PRIVATE KEY")
}

/// The one private-key block among `blocks` (other blocks such as certificates are ignored).
fn the_key_block(blocks: &[PemBlock]) -> Result<&PemBlock, CertError> {
    let keys: Vec<&PemBlock> = blocks.iter().filter(|b| is_key_label(&b.label)).collect();
    match keys.as_slice() {
        [] => Err(CertError::NoPrivateKey),
        [one] => Ok(*one),
        many => Err(CertError::MultipleKeys { count: many.len() }),
    }
}

/// The one private key in `text` (other blocks such as certificates are ignored).
fn parse_private_key(text: &str) -> Result<ParsedKey, CertError> {
    let blocks = pem_blocks(text)?;
    let block = the_key_block(&blocks)?;
    if block.label == "ENCRYPTED PRIVATE KEY" || block.encrypted_header {
        return Err(CertError::EncryptedKey);
    }
    classify_key(block)
}

// ---- password-protected keys ----------------------------------------------------------------

/// The most PBKDF2 iterations an encrypted key may ask for. openssl's `pkcs8 -topk8 -v2`
/// uses 2,048 and current guidance is 600,000; the ceiling exists because opening a key is
/// not bounded like the JWE's scrypt (the simulator opens it on its executor) and a file
/// asking for 100 million iterations would stall a run for minutes.
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;
/// The most scrypt work (N·r·p) an encrypted key may ask for: the pkcs8 crate's own default
/// (N=2^17, r=8, p=1, 128 MiB), for the same reason as [`MAX_PBKDF2_ITERATIONS`].
pub const MAX_SCRYPT_WORK: u64 = (1 << 17) * 8;

/// Why a password-protected (PKCS#8 `ENCRYPTED PRIVATE KEY`) key could not be opened. The
/// messages never contain the password or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPasswordError {
    #[error("the encrypted private key is malformed ({0})")]
    Malformed(String),
    #[error("the private key's encryption is not supported ({0}); re-encrypt it with PBES2, e.g. `openssl pkcs8 -topk8 -v2 aes-256-cbc`")]
    Unsupported(String),
    #[error("the private key's encryption asks for too much work to open ({0})")]
    TooCostly(String),
    #[error("the password does not decrypt the private key")]
    WrongPassword,
}

/// Refuses key-derivation parameters above the ceilings, before any work is done.
fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Result<(), KeyPasswordError> {
    use pkcs8::pkcs5::pbes2::Kdf;
    let Some(params) = scheme.pbes2() else {
        return Err(KeyPasswordError::Unsupported(
            "PBES1 (legacy PKCS#5 v1.5)".into(),
        ));
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => {
            Err(KeyPasswordError::TooCostly(format!(
                "{} PBKDF2 iterations, at most {MAX_PBKDF2_ITERATIONS}",
                p.iteration_count
            )))
        }
        Kdf::Scrypt(p) => {
            let work = p
                .cost_parameter
                .saturating_mul(u64::from(p.block_size))
                .saturating_mul(u64::from(p.parallelization));
            if work > MAX_SCRYPT_WORK {
                Err(KeyPasswordError::TooCostly(format!(
                    "scrypt N·r·p = {work}, at most {MAX_SCRYPT_WORK}"
                )))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Opens a PKCS#8 `EncryptedPrivateKeyInfo` (DER) with `password` and returns the plain
/// PKCS#8 `PrivateKeyInfo` DER, in zeroizing memory. Decryption happens in place in that
/// buffer so no plaintext copy is left behind. A wrong password usually fails the padding
/// check; when it does not, the plaintext is not a `PrivateKeyInfo`, which is reported the
/// same way.
pub fn decrypt_pkcs8(der: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyPasswordError> {
    use pkcs8::der::Decode as _;
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(der)
        .map_err(|e| KeyPasswordError::Malformed(e.to_string()))?;
    check_kdf_cost(&info.encryption_algorithm)?;
    let mut buffer = Zeroizing::new(info.encrypted_data.to_vec());
    let plain_len = match info
        .encryption_algorithm
        .decrypt_in_place(password, &mut buffer)
    {
        Ok(plain) => plain.len(),
        // pkcs5 0.7 reports a bad padding (the usual sign of a wrong password) as
        // `EncryptFailed` even when decrypting; both mean the same here.
        Err(pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed) => {
            return Err(KeyPasswordError::WrongPassword)
        }
        Err(e) => return Err(KeyPasswordError::Unsupported(e.to_string())),
    };
    buffer.truncate(plain_len);
    if pkcs8::PrivateKeyInfo::from_der(&buffer).is_err() {
        return Err(KeyPasswordError::WrongPassword);
    }
    Ok(buffer)
}

/// PBKDF2 iterations [`encrypt_key_pkcs8`] uses: openssl's `pkcs8 -topk8` default, so a
/// key made here is what an administrator's openssl would make.
pub const OPENSSL_PBKDF2_ITERATIONS: u32 = 2048;

/// A plain PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`) encrypted with `password` as
/// `openssl pkcs8 -topk8 -v2 aes-256-cbc` does (PBES2: PBKDF2-HMAC-SHA256 at `iterations`,
/// AES-256-CBC, random salt and IV). For test fixtures and the simulator's tests; the
/// result is an `ENCRYPTED PRIVATE KEY` PEM.
pub fn encrypt_key_pkcs8(
    key_pem: &Secret,
    password: &Secret,
    iterations: u32,
) -> Result<Secret, CertError> {
    use pkcs8::der::Decode as _;
    use rand::RngCore as _;
    let bad = |e: &dyn fmt::Display| CertError::BadKey(format!("PKCS#8: {e}"));
    let (label, doc) = pkcs8::SecretDocument::from_pem(key_pem.expose()).map_err(|e| bad(&e))?;
    if label != "PRIVATE KEY" {
        return Err(CertError::BadKey(format!(
            "expected a PRIVATE KEY block, found {label}"
        )));
    }
    let info = pkcs8::PrivateKeyInfo::from_der(doc.as_bytes()).map_err(|e| bad(&e))?;
    let (mut salt, mut iv) = ([0u8; 16], [0u8; 16]);
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(iterations, &salt, &iv)
        .map_err(|e| bad(&e))?;
    let encrypted = info
        .encrypt_with_params(params, password.expose())
        .map_err(|e| bad(&e))?;
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(|e| bad(&e))?;
    Ok(Secret::new(pem.as_str()))
}

/// [`encrypt_key_pkcs8`] on plain text, for unit tests.
#[cfg(test)]
pub(crate) fn encrypt_pkcs8_pem(key_pem: &str, password: &str, iterations: u32) -> String {
    encrypt_key_pkcs8(&Secret::new(key_pem), &Secret::new(password), iterations)
        .unwrap()
        .expose()
        .to_string()
}

/// Whether the private key in `text` is password-protected: a PKCS#8 `ENCRYPTED PRIVATE
/// KEY` block or a legacy key with a `Proc-Type: 4,ENCRYPTED` header.
pub fn key_is_encrypted(text: &str) -> Result<bool, CertError> {
    Ok(pem_blocks(text)?
        .iter()
        .any(|b| b.label == "ENCRYPTED PRIVATE KEY" || b.encrypted_header))
}

/// Preflight for a password-protected key: `password` opens it, it is P-256 and it belongs
/// to `cert` — everything the device would check, so a wrong vault password stops the run
/// before anything is sent.
pub fn check_encrypted_key(
    cert: &CertInfo,
    key_text: &str,
    password: &Secret,
) -> Result<(), CertError> {
    let blocks = pem_blocks(key_text)?;
    let block = the_key_block(&blocks)?;
    if block.encrypted_header {
        return Err(KeyPasswordError::Unsupported(
            "legacy PEM encryption (Proc-Type: 4,ENCRYPTED)".into(),
        )
        .into());
    }
    if block.label != "ENCRYPTED PRIVATE KEY" {
        // Not encrypted: the device ignores the password, so there is nothing to check.
        return Ok(());
    }
    let plain = decrypt_pkcs8(&block.der, password.expose().as_bytes())?;
    let key = p256::SecretKey::from_pkcs8_der(&plain).map_err(|_| CertError::UnsupportedKey {
        kind: KeyKind::Other("an encrypted key that is not ECDSA P-256".into()),
    })?;
    if !cert_matches_key(cert, &key.public_key()) {
        return Err(CertError::KeyMismatch);
    }
    Ok(())
}

// ---- device identity ------------------------------------------------------------------------

/// Outcome of [`DeviceIdentity::check`]: errors refuse the identity, warnings do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A device certificate with its private key, as uploaded in an `add` JWE.
pub struct DeviceIdentity {
    pub cert: CertInfo,
    key: Secret,
    key_kind: KeyKind,
    key_public: Option<p256::PublicKey>,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("cert_cn", &self.cert.subject_cn)
            .field("fingerprint_sha1", &self.cert.fingerprint_sha1)
            .field("key_kind", &self.key_kind)
            .field("key", &self.key)
            .finish()
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl DeviceIdentity {
    fn from_parts(cert: CertInfo, key: ParsedKey) -> Self {
        DeviceIdentity {
            cert,
            key: Secret::new(key.pem.as_str()),
            key_kind: key.kind,
            key_public: key.public,
        }
    }

    /// Certificate PEM and key PEM from separate texts. A key of the wrong kind (RSA, P-384)
    /// is accepted here and refused by [`check`](Self::check), so `cert check` can still show
    /// what it found.
    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<Self, CertError> {
        let cert = parse_cert_pem(cert_pem)?;
        let key = parse_private_key(key_pem.expose())?;
        Ok(Self::from_parts(cert, key))
    }

    /// Certificate and key in one PEM text (what the device receives in an `add` JWE).
    pub fn from_combined(text: &Secret) -> Result<Self, CertError> {
        Self::from_pem(text.expose(), text)
    }

    /// The private key's kind.
    pub fn key_kind(&self) -> &KeyKind {
        &self.key_kind
    }

    /// The checks to pass before uploading: P-256 key, key matches certificate, inside the
    /// validity window (warns with < 30 days left), CN present.
    pub fn check(&self, now: OffsetDateTime) -> CheckReport {
        let mut r = CheckReport::default();
        if !self.key_kind.is_p256() {
            r.errors
                .push(format!("key is {}; {NEED_P256}", self.key_kind));
        }
        if !self.cert.key.is_p256() {
            r.errors.push(format!(
                "certificate public key is {}; {NEED_P256}",
                self.cert.key
            ));
        }
        if let Some(public) = &self.key_public {
            if self.cert.key.is_p256() && !cert_matches_key(&self.cert, public) {
                r.errors.push(
                    "the private key does not match the certificate's public key \
                     (wrong key file for this certificate?)"
                        .into(),
                );
            }
        }
        if now < self.cert.not_before {
            r.errors.push(format!(
                "certificate is not yet valid (valid from {})",
                fmt_time(self.cert.not_before)
            ));
        } else if now > self.cert.not_after {
            r.errors.push(format!(
                "certificate expired on {}",
                fmt_time(self.cert.not_after)
            ));
        } else {
            let left = self.cert.not_after - now;
            if left < Duration::days(EXPIRY_WARNING_DAYS) {
                r.warnings.push(format!(
                    "certificate expires in {} days ({}); plan its renewal",
                    left.whole_days(),
                    fmt_time(self.cert.not_after)
                ));
            }
        }
        match self.cert.subject_cn.as_deref() {
            Some(cn) if !cn.trim().is_empty() => {}
            _ => r.errors.push(
                "certificate subject has no CN; the device shows the CN as its verified identity"
                    .into(),
            ),
        }
        r
    }

    /// The `add` JWE plaintext: certificate PEM, then key PEM, one text.
    pub fn add_payload(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(
            self.cert.pem.len() + self.key.expose().len() + 1,
        ));
        out.push_str(&self.cert.pem);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(self.key.expose());
        out
    }

    /// Lowercase hex SHA-1 of the certificate DER.
    pub fn fingerprint(&self) -> &str {
        &self.cert.fingerprint_sha1
    }
}

fn cert_matches_key(cert: &CertInfo, public: &p256::PublicKey) -> bool {
    let Ok((_, x509)) = X509Certificate::from_der(&cert.der) else {
        return false;
    };
    match p256::PublicKey::from_sec1_bytes(x509.public_key().subject_public_key.data.as_ref()) {
        Ok(cert_public) => &cert_public == public,
        Err(_) => false,
    }
}

// ---- files ----------------------------------------------------------------------------------

/// Reads a file into a zeroizing string (it may hold a private key).
fn read_text(path: &Path) -> Result<Zeroizing<String>, CertError> {
    let read_err = |source| CertError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Pre-size so the buffer holding key bytes is not reallocated (leaving stale copies).
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(len).unwrap_or(0).saturating_add(1),
    ));
    file.read_to_end(&mut bytes).map_err(read_err)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(CertError::NotText.in_file(path))
        }
    }
}

/// Reads a file that may hold a private key into a [`Secret`].
pub fn read_secret_file(path: &Path) -> Result<Secret, CertError> {
    Ok(Secret::from_file_text(read_text(path)?))
}

/// Loads a device identity: `key_path` `None` means `cert_path` holds certificate and key.
/// Errors name the file they are about.
pub fn load_identity(
    cert_path: &Path,
    key_path: Option<&Path>,
) -> Result<DeviceIdentity, CertError> {
    let cert_text = read_text(cert_path)?;
    let cert = parse_cert_pem(&cert_text).map_err(|e| e.in_file(cert_path))?;
    let key = match key_path {
        Some(kp) => {
            let key_text = read_text(kp)?;
            parse_private_key(&key_text).map_err(|e| e.in_file(kp))?
        }
        None => parse_private_key(&cert_text).map_err(|e| e.in_file(cert_path))?,
    };
    Ok(DeviceIdentity::from_parts(cert, key))
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CertError> {
    crate::fsutil::write_atomic(path, data, mode).map_err(|source| CertError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn refuse_existing(path: &Path) -> Result<(), CertError> {
    if path.exists() {
        Err(CertError::Exists {
            path: path.to_path_buf(),
        })
    } else {
        Ok(())
    }
}

/// Writes a secret file (private key): mode 0600, atomically; refuses to overwrite.
pub fn write_private_file(path: &Path, data: &Secret) -> Result<(), CertError> {
    refuse_existing(path)?;
    write_atomic(path, data.as_bytes(), 0o600)
}

/// Writes a public file (certificate, CSR): mode 0644, atomically; refuses to overwrite.
pub fn write_public_file(path: &Path, data: &str) -> Result<(), CertError> {
    refuse_existing(path)?;
    write_atomic(path, data.as_bytes(), 0o644)
}

// ---- generation -----------------------------------------------------------------------------

fn random_serial() -> SerialNumber {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive
    serial[0] |= 0x01; // no leading zero byte
    SerialNumber::from(serial.to_vec())
}

fn key_pem_secret(key: &KeyPair) -> Secret {
    Secret::new(key.serialize_pem())
}

/// SANs default to the CN (public CAs require the name in the SAN).
fn sans_or_cn(cn: &str, sans: &[String]) -> Vec<String> {
    if sans.is_empty() {
        vec![cn.to_string()]
    } else {
        sans.to_vec()
    }
}

/// A new ECDSA P-256 key and a CSR (CN + SANs; SANs default to the CN) to send to a CA.
pub fn generate_key_and_csr(cn: &str, sans: &[String]) -> Result<(Secret, String), CertError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(sans_or_cn(cn, sans)).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(gen_err)?
        .pem()
        .map_err(gen_err)?;
    Ok((key_pem_secret(&key), csr))
}

/// What an enrolment asks a CA for (see [`TestCa::issue_request`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueRequest {
    pub common_name: String,
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub organizational_units: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_email: Vec<String>,
    pub san_ip: Vec<String>,
    pub san_uri: Vec<String>,
}

/// Key kinds a [`TestCa`] can issue for (to exercise the device's refusal in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKeyKind {
    P256,
    P384,
}

/// A local certificate authority for labs, tests and demos. **Not for production**: its key
/// sits in a plain file and nothing about it is audited.
pub struct TestCa {
    pub cert_pem: String,
    key: Secret,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_pem", &self.cert_pem)
            .field("key", &self.key)
            .finish()
    }
}

impl TestCa {
    /// A new self-signed P-256 CA valid for ten years.
    pub fn create(cn: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::OrganizationName,
            "roomkey test CA (NOT for production)",
        );
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            key: key_pem_secret(&key),
        })
    }

    /// Writes `ca-cert.pem` and `ca-key.pem` (0600) into `dir` (created if missing);
    /// refuses to overwrite an existing CA.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        refuse_existing(&key_path)?;
        refuse_existing(&cert_path)?;
        write_private_file(&key_path, &self.key)?;
        write_public_file(&cert_path, &self.cert_pem)
    }

    /// Reads a CA written by [`save`](Self::save).
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_text = read_text(&cert_path)?;
        let info = parse_cert_pem(&cert_text).map_err(|e| e.in_file(&cert_path))?;
        let key = Secret::from_file_text(read_text(&key_path)?);
        KeyPair::from_pem(key.expose())
            .map_err(|e| CertError::BadKey(e.to_string()).in_file(&key_path))?;
        Ok(TestCa {
            cert_pem: info.pem,
            key,
        })
    }

    /// Issues a P-256 device certificate (SANs default to the CN); returns (cert PEM, key PEM).
    pub fn issue(
        &self,
        cn: &str,
        sans: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, Secret), CertError> {
        self.issue_with_key_kind(cn, sans, not_before, not_after, TestKeyKind::P256)
    }

    /// The CA's key and its certificate in the form rcgen signs with.
    fn signer(&self) -> Result<(KeyPair, rcgen::Certificate), CertError> {
        let ca_key = KeyPair::from_pem(self.key.expose()).map_err(gen_err)?;
        let issuer = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(gen_err)?
            .self_signed(&ca_key)
            .map_err(gen_err)?;
        Ok((ca_key, issuer))
    }

    /// Issues a P-256 certificate for an enrolment request (what a SCEP server does with a
    /// device's request): subject CN plus optional C and O, and typed SANs. Returns
    /// (cert PEM, key PEM); the key stands for the one the device generated itself.
    pub fn issue_request(
        &self,
        req: &IssueRequest,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(String, Secret), CertError> {
        if not_after <= not_before {
            return Err(CertError::Validity);
        }
        let (ca_key, issuer) = self.signer()?;
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(c) = req.country.as_deref().filter(|c| !c.is_empty()) {
            dn.push(DnType::CountryName, c);
        }
        if let Some(st) = req.state.as_deref().filter(|s| !s.is_empty()) {
            dn.push(DnType::StateOrProvinceName, st);
        }
        if let Some(l) = req.locality.as_deref().filter(|l| !l.is_empty()) {
            dn.push(DnType::LocalityName, l);
        }
        if let Some(o) = req.organization.as_deref().filter(|o| !o.is_empty()) {
            dn.push(DnType::OrganizationName, o);
        }
        // rcgen keeps one value per attribute type: the first unit stands for them all.
        if let Some(ou) = req.organizational_units.iter().find(|u| !u.is_empty()) {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(DnType::CommonName, req.common_name.as_str());
        params.distinguished_name = dn;
        let ia5 = |s: &str| rcgen::Ia5String::try_from(s.to_string()).map_err(gen_err);
        for d in &req.san_dns {
            params
                .subject_alt_names
                .push(rcgen::SanType::DnsName(ia5(d)?));
        }
        for e in &req.san_email {
            params
                .subject_alt_names
                .push(rcgen::SanType::Rfc822Name(ia5(e)?));
        }
        for ip in &req.san_ip {
            let addr: std::net::IpAddr = ip
                .parse()
                .map_err(|_| CertError::Generate(format!("'{ip}' is not an IP address")))?;
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(addr));
        }
        for u in &req.san_uri {
            params.subject_alt_names.push(rcgen::SanType::URI(ia5(u)?));
        }
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer, &ca_key).map_err(gen_err)?;
        Ok((cert.pem(), key_pem_secret(&key)))
    }

    /// Signs a certificate signing request (PEM) as a lab CA would: the request's subject
    /// and SANs, the given validity, client-auth usage. The key stays with whoever made the
    /// request (`cert csr`). Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<String, CertError> {
        if not_after <= not_before {
            return Err(CertError::Validity);
        }
        let (ca_key, issuer) = self.signer()?;
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CertError::Generate(format!("not a valid CSR: {e}")))?;
        csr.params.not_before = not_before;
        csr.params.not_after = not_after;
        csr.params.serial_number = Some(random_serial());
        csr.params.is_ca = IsCa::NoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.use_authority_key_identifier_extension = true;
        let cert = csr.signed_by(&issuer, &ca_key).map_err(gen_err)?;
        Ok(cert.pem())
    }

    /// [`issue`](Self::issue) with a chosen key kind (P-384 exists to test refusals).
    pub fn issue_with_key_kind(
        &self,
        cn: &str,
        sans: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        kind: TestKeyKind,
    ) -> Result<(String, Secret), CertError> {
        if not_after <= not_before {
            return Err(CertError::Validity);
        }
        let (ca_key, issuer) = self.signer()?;
        let key = match kind {
            TestKeyKind::P256 => KeyPair::generate(),
            TestKeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        }
        .map_err(gen_err)?;
        let mut params = CertificateParams::new(sans_or_cn(cn, sans)).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer, &ca_key).map_err(gen_err)?;
        Ok((cert.pem(), key_pem_secret(&key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn ca() -> TestCa {
        TestCa::create("roomkey unit-test CA").unwrap()
    }

    fn issue(ca: &TestCa, cn: &str, from: i64, to: i64) -> (String, Secret) {
        ca.issue(
            cn,
            &[],
            now() + Duration::days(from),
            now() + Duration::days(to),
        )
        .unwrap()
    }

    #[test]
    fn encrypted_keys_open_with_their_password_only() {
        let ca = ca();
        let (cert, key) = issue(&ca, "a.example.com", -1, 30);
        let (_, other_key) = issue(&ca, "b.example.com", -1, 30);
        let info = parse_cert_pem(&cert).unwrap();
        let enc = encrypt_pkcs8_pem(key.expose(), "right horse", 2048);
        assert!(key_is_encrypted(&enc).unwrap());
        assert!(!key_is_encrypted(key.expose()).unwrap());
        check_encrypted_key(&info, &enc, &Secret::new("right horse")).unwrap();
        assert!(matches!(
            check_encrypted_key(&info, &enc, &Secret::new("wrong horse")).unwrap_err(),
            CertError::KeyPassword(KeyPasswordError::WrongPassword)
        ));
        // The right password for another room's key: refused like the device would.
        let other = encrypt_pkcs8_pem(other_key.expose(), "right horse", 2048);
        assert!(matches!(
            check_encrypted_key(&info, &other, &Secret::new("right horse")).unwrap_err(),
            CertError::KeyMismatch
        ));
        // A plain key: the device ignores the password, so does the check.
        check_encrypted_key(&info, key.expose(), &Secret::new("anything")).unwrap();
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(key_is_encrypted(legacy).unwrap());
        let e = check_encrypted_key(&info, legacy, &Secret::new("x")).unwrap_err();
        assert!(matches!(
            e,
            CertError::KeyPassword(KeyPasswordError::Unsupported(_))
        ));
        assert!(e
            .to_string()
            .contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"));
        // The password is in no message.
        let e = check_encrypted_key(&info, &enc, &Secret::new("wrong horse")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("horse"));
    }

    #[test]
    fn costly_key_encryption_is_refused_before_any_work() {
        use pkcs8::pkcs5::{pbes2, EncryptionScheme};
        let (salt, iv) = ([1; 16], [2; 16]);
        let ok =
            pbes2::Parameters::pbkdf2_sha256_aes256cbc(MAX_PBKDF2_ITERATIONS, &salt, &iv).unwrap();
        check_kdf_cost(&EncryptionScheme::from(ok)).unwrap();
        let slow =
            pbes2::Parameters::pbkdf2_sha256_aes256cbc(MAX_PBKDF2_ITERATIONS + 1, &salt, &iv)
                .unwrap();
        assert!(matches!(
            check_kdf_cost(&EncryptionScheme::from(slow)),
            Err(KeyPasswordError::TooCostly(_))
        ));
        let big = pkcs8::pkcs5::scrypt::Params::new(18, 8, 1, 32).unwrap();
        let scrypt = pbes2::Parameters::scrypt_aes256cbc(big, &salt, &iv).unwrap();
        assert!(matches!(
            check_kdf_cost(&EncryptionScheme::from(scrypt)),
            Err(KeyPasswordError::TooCostly(_))
        ));
        assert!(matches!(
            decrypt_pkcs8(b"not der", b"x"),
            Err(KeyPasswordError::Malformed(_))
        ));
    }

    #[test]
    fn issued_cert_parses_and_checks_ok() {
        let ca = ca();
        let (cert, key) = ca
            .issue(
                "room1.example.com",
                &["room1.example.com".into(), "10.0.0.7".into()],
                now() - Duration::days(1),
                now() + Duration::days(365),
            )
            .unwrap();
        let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
        assert_eq!(id.cert.subject_cn.as_deref(), Some("room1.example.com"));
        assert_eq!(id.cert.subject, "/CN=room1.example.com");
        assert_eq!(
            id.cert.issuer,
            "/O=roomkey test CA (NOT for production)/CN=roomkey unit-test CA"
        );
        assert_eq!(id.cert.sans, vec!["DNS:room1.example.com", "IP:10.0.0.7"]);
        assert_eq!(id.cert.key, KeyKind::EcP256);
        assert_eq!(id.cert.public_key_bits, 256);
        assert_eq!(id.cert.signature_algorithm, "ecdsa-with-SHA256");
        assert_eq!(id.fingerprint().len(), 40);
        assert_eq!(id.fingerprint(), sha1_fingerprint(&id.cert.der));
        let report = id.check(now());
        assert!(report.is_ok(), "{report:?}");
        assert!(report.warnings.is_empty());
        // The canonical PEM is the one rcgen wrote (both 64 columns).
        assert_eq!(
            id.cert.pem.replace("\r\n", "\n"),
            cert.replace("\r\n", "\n")
        );
    }

    #[test]
    fn combined_and_add_payload() {
        let ca = ca();
        let (cert, key) = issue(&ca, "room2", -1, 100);
        let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
        let payload = id.add_payload();
        assert!(payload.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(payload.contains("-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n"));
        assert!(payload.ends_with("-----END PRIVATE KEY-----\n"));
        let again = DeviceIdentity::from_combined(&Secret::new(payload.as_str())).unwrap();
        assert_eq!(again.fingerprint(), id.fingerprint());
        assert!(again.check(now()).is_ok());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let ca = ca();
        let (cert, _) = issue(&ca, "a", -1, 100);
        let (_, other_key) = issue(&ca, "b", -1, 100);
        let report = DeviceIdentity::from_pem(&cert, &other_key)
            .unwrap()
            .check(now());
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert!(report.errors[0].contains("does not match"));
    }

    #[test]
    fn validity_window() {
        let ca = ca();
        let (cert, key) = issue(&ca, "old", -400, -35);
        let r = DeviceIdentity::from_pem(&cert, &key).unwrap().check(now());
        assert!(r.errors.iter().any(|e| e.contains("expired")), "{r:?}");
        let (cert, key) = issue(&ca, "future", 3, 300);
        let r = DeviceIdentity::from_pem(&cert, &key).unwrap().check(now());
        assert!(
            r.errors.iter().any(|e| e.contains("not yet valid")),
            "{r:?}"
        );
        let (cert, key) = issue(&ca, "soon", -300, 10);
        let r = DeviceIdentity::from_pem(&cert, &key).unwrap().check(now());
        assert!(r.is_ok());
        assert!(r.warnings[0].contains("expires in"), "{r:?}");
    }

    #[test]
    fn p384_key_is_refused() {
        let ca = ca();
        let (cert, key) = ca
            .issue_with_key_kind(
                "p384",
                &[],
                now() - Duration::days(1),
                now() + Duration::days(90),
                TestKeyKind::P384,
            )
            .unwrap();
        let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
        assert_eq!(id.key_kind(), &KeyKind::EcOther("P-384".into()));
        assert_eq!(id.cert.key, KeyKind::EcOther("P-384".into()));
        let r = id.check(now());
        assert!(r
            .errors
            .contains(&"key is EC P-384; the device needs an ECDSA P-256 key".to_string()));
    }

    #[test]
    fn missing_cn_is_an_error() {
        let ca = ca();
        let ca_key = KeyPair::from_pem(ca.key.expose()).unwrap();
        let issuer = CertificateParams::from_ca_cert_pem(&ca.cert_pem)
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
        let id = DeviceIdentity::from_pem(&cert.pem(), &key_pem_secret(&key)).unwrap();
        let r = id.check(OffsetDateTime::now_utc());
        assert!(r.errors.iter().any(|e| e.contains("no CN")), "{r:?}");
    }

    #[test]
    fn sec1_key_is_accepted() {
        let ca = ca();
        let (cert, key) = issue(&ca, "sec1", -1, 100);
        let sk = p256::SecretKey::from_pkcs8_pem(key.expose()).unwrap();
        let sec1 = sk.to_sec1_der().unwrap();
        let sec1_pem = Secret::new(der_to_pem("EC PRIVATE KEY", &sec1));
        let id = DeviceIdentity::from_pem(&cert, &sec1_pem).unwrap();
        assert!(id.check(now()).is_ok());
    }

    #[test]
    fn pem_errors() {
        assert!(matches!(
            parse_cert_pem("hello").unwrap_err(),
            CertError::NoCertificate
        ));
        assert!(matches!(
            parse_cert_pem("-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err(),
            CertError::Pem(_)
        ));
        assert!(matches!(
            parse_cert_pem("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .unwrap_err(),
            CertError::Pem(_)
        ));
        assert!(matches!(
            parse_cert_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err(),
            CertError::X509(_)
        ));
        let ca = ca();
        let (cert, key) = issue(&ca, "x", -1, 10);
        let two = format!("{cert}{}", ca.cert_pem);
        assert!(matches!(
            parse_cert_pem(&two).unwrap_err(),
            CertError::MultipleCertificates { count: 2 }
        ));
        assert_eq!(parse_cert_bundle(&two).unwrap().len(), 2);
        assert!(matches!(
            DeviceIdentity::from_pem(&cert, &Secret::new(cert.clone())).unwrap_err(),
            CertError::NoPrivateKey
        ));
        let enc = Secret::new(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(matches!(
            DeviceIdentity::from_pem(&cert, &enc).unwrap_err(),
            CertError::EncryptedKey
        ));
        let two_keys = Secret::new(format!("{}{}", key.expose(), key.expose()));
        assert!(matches!(
            DeviceIdentity::from_pem(&cert, &two_keys).unwrap_err(),
            CertError::MultipleKeys { count: 2 }
        ));
    }

    #[test]
    fn debug_and_errors_never_show_the_key() {
        let ca = ca();
        let (cert, key) = issue(&ca, "dbg", -1, 10);
        let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
        let body: String = key
            .expose()
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(30)
            .collect();
        let text = format!("{id:?} {ca:?}");
        assert!(!text.contains(&body));
        assert!(text.contains("[redacted]"));
        // A broken key's error does not echo it.
        let broken = Secret::new(key.expose().replace("-----END PRIVATE KEY-----", ""));
        let err = DeviceIdentity::from_pem(&cert, &broken)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&body), "{err}");
    }

    #[test]
    fn csr_generation() {
        let (key, csr) = generate_key_and_csr("room9.example.com", &[]).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(p256::SecretKey::from_pkcs8_pem(key.expose()).is_ok());
    }

    #[test]
    fn ca_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca();
        ca.save(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            ca.save(dir.path()).unwrap_err(),
            CertError::Exists { .. }
        ));
        let loaded = TestCa::load(dir.path()).unwrap();
        let (cert, key) = issue(&loaded, "after-load", -1, 10);
        let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
        assert!(id.check(now()).is_ok());
        let err = load_identity(&dir.path().join("nope.pem"), None).unwrap_err();
        assert!(err.to_string().contains("nope.pem"));
    }

    #[test]
    fn int_bits_counts() {
        assert_eq!(int_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(int_bits(&[0x01]), 1);
        assert_eq!(int_bits(&[]), 0);
    }
}
