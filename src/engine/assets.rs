//! Per-device inputs of the certificate steps, resolved in preflight: CA bundles and service
//! certificates read from (templated) files, SCEP request values filled in with the
//! device's name, host and vars and checked against the device's limits. Resolving here,
//! before anything connects, is what lets a bad file or a 129-character CommonName stop the
//! run with a message naming the playbook, the step and the device — and lets `plan` show
//! the exact commands.
//!
//! Linear in the fleet: a fleet usually shares a few files (one CA bundle, one service
//! certificate with an encrypted key). [`AssetCache`] keeps what each distinct file gave —
//! the parsed bundle, the service asset after its key was opened with the vault password —
//! so preflight reads, parses and decrypts each file once per run, not once per device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::engine::secrets::SecretStore;
use crate::inventory::{expand_for, Device, Problem};
use crate::playbook::{CaCertificates, Playbook, ScepEnroll, ServiceCertificate, Step};
use crate::secret::Secret;

/// One trusted CA certificate from a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    /// Lower-case hex SHA-1 of the DER.
    pub fingerprint: String,
    pub subject: String,
    /// Canonical PEM of this certificate alone.
    pub pem: String,
}

/// A service certificate and its key, ready to send.
#[derive(Debug, Clone)]
pub struct ServiceAsset {
    pub fingerprint: String,
    pub subject: String,
    /// Certificate PEM then key PEM (the `Services Add` body); holds the key.
    pub payload: Secret,
    pub certificate_path: PathBuf,
}

/// What one step needs for one device.
#[derive(Debug, Clone)]
pub enum StepAsset {
    /// CA certificates, de-duplicated by fingerprint, bundle order kept.
    CaBundle {
        path: PathBuf,
        certs: Vec<CaCert>,
    },
    Service(ServiceAsset),
    /// SCEP request parameters (name, filled-in value) in send order, without the
    /// challenge password.
    Scep(Vec<(&'static str, String)>),
}

/// Step index → asset, for the steps that have one.
pub type StepAssets = BTreeMap<usize, StepAsset>;

/// Longest CN roomkey sends a device or expects back (X.520 `ub-common-name`).
pub const MAX_CN_LEN: usize = 64;
/// Longest SAN (a DNS name is at most 253 characters; URIs and e-mail addresses get the
/// same documented cap).
pub const MAX_SAN_LEN: usize = 253;

/// Problems with the names in a certificate: the CN is compared with what the device
/// reports and shown in messages, so it must be printable, without a double quote or a
/// control character (a CR/LF or `"` would end a TSH value or split a line), and of sane
/// length; the same for every SAN.
pub fn check_names(cn: Option<&str>, sans: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, value: &str, max: usize| {
        let n = value.chars().count();
        if n > max {
            out.push(format!(
                "the certificate's {what} is {n} characters long; the most is {max}"
            ));
        }
        if value.chars().any(crate::display::is_unsafe) {
            out.push(format!(
                "the certificate's {what} '{}' contains control or invisible characters; \
                 issue a certificate with a plain name",
                crate::display::escape(value)
            ));
        }
        if value.contains('"') {
            out.push(format!(
                "the certificate's {what} '{}' contains a double quote; issue a certificate \
                 with a plain name",
                crate::display::escape(value)
            ));
        }
    };
    if let Some(cn) = cn {
        check("CN", cn, MAX_CN_LEN);
    }
    for san in sans {
        check("SAN", san, MAX_SAN_LEN);
    }
    out
}

fn fill(template: &str, device: &Device) -> Result<String, String> {
    expand_for(template, device)
}

fn resolve_path(base: &Path, template: &str, device: &Device) -> Result<PathBuf, String> {
    Ok(base.join(fill(template, device)?))
}

/// What preflight already read, by file: shared across the devices of one run.
#[derive(Debug, Default)]
pub struct AssetCache {
    bundles: BTreeMap<PathBuf, Result<StepAsset, String>>,
    /// (certificate file, key file) → for each key password tried (credential name and
    /// value), the resolved asset or the problem.
    services: BTreeMap<ServiceKey, Vec<(KeyPassword, Resolved)>>,
}

type ServiceKey = (PathBuf, Option<PathBuf>);
/// The vault credential (name, password) a key was opened with, if any.
type KeyPassword = Option<(String, Secret)>;
/// What resolving a file gave: the asset or the problem.
type Resolved = Result<StepAsset, String>;

fn ca_bundle(
    base: &Path,
    c: &CaCertificates,
    device: &Device,
    cache: &mut AssetCache,
) -> Result<Option<StepAsset>, String> {
    let Some(template) = &c.file else {
        return Ok(None);
    };
    let path = resolve_path(base, template, device)?;
    if let Some(done) = cache.bundles.get(&path) {
        return done.clone().map(Some);
    }
    let result = read_bundle(path.clone());
    cache.bundles.insert(path, result.clone());
    result.map(Some)
}

fn read_bundle(path: PathBuf) -> Result<StepAsset, String> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
    let infos = crate::cert::parse_cert_bundle(&text)
        .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
    if infos.is_empty() {
        return Err(format!(
            "CA bundle {} holds no CERTIFICATE block",
            path.display()
        ));
    }
    let mut certs: Vec<CaCert> = Vec::new();
    for info in infos {
        if !certs.iter().any(|c| c.fingerprint == info.fingerprint_sha1) {
            certs.push(CaCert {
                fingerprint: info.fingerprint_sha1,
                subject: info.subject,
                pem: info.pem,
            });
        }
    }
    Ok(StepAsset::CaBundle { path, certs })
}

/// `key_password` is the vault credential the step names (name, password) when a vault is
/// open: not for `plan`, and not when the credential is missing (reported on its own).
fn service(
    base: &Path,
    s: &ServiceCertificate,
    device: &Device,
    key_password: Option<&(String, Secret)>,
    cache: &mut AssetCache,
) -> Result<StepAsset, String> {
    let cert_path = resolve_path(base, &s.certificate, device)?;
    let key_path = match &s.key {
        Some(k) => Some(resolve_path(base, k, device)?),
        None => None,
    };
    let same_password = |tried: &Option<(String, Secret)>| match (tried, key_password) {
        (None, None) => true,
        (Some((n1, p1)), Some((n2, p2))) => n1 == n2 && p1.as_bytes() == p2.as_bytes(),
        _ => false,
    };
    let tried = cache
        .services
        .entry((cert_path.clone(), key_path.clone()))
        .or_default();
    if let Some((_, done)) = tried.iter().find(|(p, _)| same_password(p)) {
        return done.clone();
    }
    let result = read_service(cert_path, key_path, s, key_password);
    tried.push((key_password.cloned(), result.clone()));
    result
}

fn read_service(
    cert_path: PathBuf,
    key_path: Option<PathBuf>,
    s: &ServiceCertificate,
    key_password: Option<&(String, Secret)>,
) -> Result<StepAsset, String> {
    let cert_text = crate::cert::read_secret_file(&cert_path).map_err(|e| e.to_string())?;
    let info = crate::cert::parse_cert_pem(cert_text.expose())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    // The device shows and reports these names: plain and bounded, as for the identity.
    let names = check_names(info.subject_cn.as_deref(), &info.sans);
    if !names.is_empty() {
        return Err(format!("{}: {}", cert_path.display(), names.join("; ")));
    }
    let (key_path, key_text) = match key_path {
        Some(key_path) => {
            let text = crate::cert::read_secret_file(&key_path).map_err(|e| e.to_string())?;
            if !text.expose().contains("PRIVATE KEY-----") {
                return Err(format!("{} holds no private key", key_path.display()));
            }
            (key_path, text)
        }
        None => {
            if !cert_text.expose().contains("PRIVATE KEY-----") {
                return Err(format!(
                    "{} holds no private key; add `key:` for a separate key file",
                    cert_path.display()
                ));
            }
            (cert_path.clone(), cert_text.clone())
        }
    };
    check_key_password(&info, &key_path, &key_text, s, key_password)?;
    // The body is the certificate alone, then the key block(s) (an encrypted key stays
    // encrypted: the device opens it with PrivateKeyPassword).
    let mut payload = zeroize::Zeroizing::new(info.pem.clone());
    if !payload.ends_with('\n') {
        payload.push('\n');
    }
    let key_only = key_blocks(key_text.expose());
    payload.push_str(&key_only);
    Ok(StepAsset::Service(ServiceAsset {
        fingerprint: info.fingerprint_sha1,
        subject: info.subject,
        payload: Secret::new(payload.as_str()),
        certificate_path: cert_path,
    }))
}

/// An encrypted key needs a named password, and the vault's password must open it and
/// match the certificate: found here, a wrong password stops the run before anything is
/// sent rather than failing room by room on the device.
fn check_key_password(
    cert: &crate::cert::CertInfo,
    key_path: &Path,
    key_text: &Secret,
    s: &ServiceCertificate,
    key_password: Option<&(String, Secret)>,
) -> Result<(), String> {
    let in_file = |e: crate::cert::CertError| format!("{}: {e}", key_path.display());
    if !crate::cert::key_is_encrypted(key_text.expose()).map_err(in_file)? {
        return Ok(());
    }
    if s.private_key_password.is_none() {
        return Err(format!(
            "{} holds an encrypted private key; name the vault credential holding its \
             password with `private_key_password:`",
            key_path.display()
        ));
    }
    match key_password {
        Some((name, password)) => {
            crate::cert::check_encrypted_key(cert, key_text.expose(), password).map_err(|e| {
                format!(
                    "{} with the password in vault credential '{name}': {e}",
                    key_path.display()
                )
            })
        }
        None => Ok(()),
    }
}

/// The `-----BEGIN … PRIVATE KEY-----` blocks of a PEM text (the certificate dropped, so a
/// combined file does not send it twice).
fn key_blocks(text: &str) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::new());
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("-----BEGIN") && t.contains("PRIVATE KEY") {
            inside = true;
        }
        if inside {
            out.push_str(t);
            out.push('\n');
        }
        if t.starts_with("-----END") && t.contains("PRIVATE KEY") {
            inside = false;
        }
    }
    out
}

/// A SCEP challenge password the device would refuse (too long, or not sendable); the
/// message never holds the value.
fn check_challenge(secret: &crate::secret::Secret) -> Option<String> {
    let max = crate::playbook::scep_limit("ChallengePassword").map_or(256, |l| l.max_len);
    let n = secret.expose().chars().count();
    if n > max {
        return Some(format!(
            "the vault credential for `challenge_password` is {n} characters long; the \
             device accepts at most {max} (ChallengePassword): store a shorter one"
        ));
    }
    crate::tsh::TshCommand::xcommand("x")
        .and_then(|c| c.param_secret("ChallengePassword", secret))
        .err()
        .map(|e| format!("the vault credential for `challenge_password`: {e}"))
}

fn scep(s: &ScepEnroll, device: &Device) -> Result<StepAsset, Vec<String>> {
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for (name, template) in s.params() {
        match fill(template, device) {
            Ok(v) => values.push((name, v)),
            Err(e) => problems.push(e),
        }
    }
    // The list lengths were checked when the playbook was loaded; values only now, against
    // the device's limits (catalogue `scep.limits`), once filled in for this device.
    problems.extend(
        ScepEnroll::check_values(&values)
            .into_iter()
            .map(|(_, m)| format!("{m} (once filled in for this device)")),
    );
    if let Some((_, fp)) = values.iter().find(|(n, _)| *n == "Fingerprint") {
        if fp.len() != 40 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
            problems.push(format!(
                "ca_fingerprint '{fp}' is not a SHA-1 fingerprint (40 hex digits)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(StepAsset::Scep(values))
    } else {
        Err(problems)
    }
}

/// Resolves every step's inputs for one device and, given a store (not for `plan`), checks
/// that the vault credentials the steps name exist. Problems name the playbook, the step
/// and the device.
pub fn resolve(
    playbook: &Playbook,
    device: &Device,
    secrets: Option<&dyn SecretStore>,
) -> (StepAssets, Vec<Problem>) {
    resolve_cached(playbook, device, secrets, &mut AssetCache::default())
}

/// [`resolve`] for one device of many: files already read for another device (same path,
/// same key password) come from `cache`.
pub fn resolve_cached(
    playbook: &Playbook,
    device: &Device,
    secrets: Option<&dyn SecretStore>,
    cache: &mut AssetCache,
) -> (StepAssets, Vec<Problem>) {
    let base = playbook.base_dir();
    let mut assets = StepAssets::new();
    let mut problems = Vec::new();
    for (i, step) in playbook.steps.iter().enumerate() {
        let mut problem = |message: String| {
            problems.push(Problem {
                file: playbook.path.clone(),
                location: None,
                entry: format!(
                    "steps[{}] ({}) for device {}",
                    i + 1,
                    step.kind(),
                    device.name
                ),
                message,
            })
        };
        // Named vault credentials (SCEP challenge, key password) are checked like login
        // credentials; their names may be templated per device.
        if let Some(store) = secrets {
            for template in step.vault_credentials() {
                let checked = fill(template, device)
                    .and_then(|name| store.credential(device, &name).map_err(|e| e.to_string()));
                match checked {
                    Err(e) => problem(e),
                    // The SCEP challenge goes out as `ChallengePassword` (≤ 256 characters,
                    // catalogue `scep.limits`); its value is never shown.
                    Ok(secret) if matches!(step, Step::ScepEnroll(_)) => {
                        if let Some(m) = check_challenge(&secret) {
                            problem(m);
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        let result = match step {
            Step::AddCaCertificate(c) | Step::RemoveCaCertificate(c) => {
                ca_bundle(&base, c, device, cache).map_err(|e| vec![e])
            }
            Step::AddServiceCertificate(s) => {
                // A missing credential was reported above; the key is then not checked.
                let password =
                    secrets
                        .zip(s.private_key_password.as_deref())
                        .and_then(|(store, template)| {
                            let name = fill(template, device).ok()?;
                            let password = store.credential(device, &name).ok()?;
                            Some((name, password))
                        });
                service(&base, s, device, password.as_ref(), cache)
                    .map(Some)
                    .map_err(|e| vec![e])
            }
            Step::ScepEnroll(s) => scep(s, device).map(Some),
            _ => Ok(None),
        };
        match result {
            Ok(Some(asset)) => {
                assets.insert(i, asset);
            }
            Ok(None) => {}
            Err(messages) => messages.into_iter().for_each(&mut problem),
        }
    }
    (assets, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blocks_drop_the_certificate() {
        let text = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                    -----BEGIN ENCRYPTED PRIVATE KEY-----\nBBB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            key_blocks(text).as_str(),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nBBB\n-----END ENCRYPTED PRIVATE KEY-----\n"
        );
    }

    fn device(name: &str) -> Device {
        use crate::inventory::{AuthSource, ClientSecretSource};
        Device {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 22,
            username: "admin".into(),
            auth: AuthSource::Agent,
            certificate: None,
            key: None,
            identity: None,
            enc: crate::jwe::Enc::A128Gcm,
            client_secret: ClientSecretSource::Vault,
            groups: Default::default(),
            vars: Default::default(),
            window: None,
            sim: None,
        }
    }

    /// A shared bundle is read once for the whole fleet: once the first device resolved it,
    /// the file is not read again (here it is gone, and the others still get it).
    #[test]
    fn a_shared_bundle_is_read_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::cert::TestCa::create("Fleet Root").unwrap();
        std::fs::write(dir.path().join("bundle.pem"), &ca.cert_pem).unwrap();
        let pb_path = dir.path().join("p.yaml");
        std::fs::write(
            &pb_path,
            "name: p\nsteps:\n  - add_ca_certificate: { file: bundle.pem }\n",
        )
        .unwrap();
        let playbook = crate::playbook::load(&pb_path).unwrap();
        let mut cache = AssetCache::default();
        let (first, problems) = resolve_cached(&playbook, &device("room-1"), None, &mut cache);
        assert!(problems.is_empty(), "{problems:?}");
        std::fs::remove_file(dir.path().join("bundle.pem")).unwrap();
        for i in 2..=1_000 {
            let (assets, problems) =
                resolve_cached(&playbook, &device(&format!("room-{i}")), None, &mut cache);
            assert!(problems.is_empty(), "{problems:?}");
            match (assets.get(&0), first.get(&0)) {
                (
                    Some(StepAsset::CaBundle { certs, .. }),
                    Some(StepAsset::CaBundle { certs: c1, .. }),
                ) => assert_eq!(certs, c1),
                other => panic!("{other:?}"),
            }
        }
        // Without the cache, the missing file is reported.
        let (_, problems) = resolve(&playbook, &device("room-x"), None);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
