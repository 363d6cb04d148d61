//! Preflight: turns selected inventory devices into `PreparedDevice`s — certificates and
//! keys loaded and checked, login secrets and ClientSecrets resolved — and reports every
//! problem of every device at once. Nothing is sent to any device unless this succeeds for
//! all of them: a half-valid fleet is not started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cert::{load_identity, DeviceIdentity};
use crate::engine::secrets::{env_secret, SecretStore};
use crate::inventory::{AuthSource, Device, PasswordMethod, Problem};
use crate::playbook::Playbook;
use crate::secret::Secret;
use crate::ssh::ClientAuth;

/// A device ready to run: everything a step needs is loaded and valid.
#[derive(Debug, Clone)]
pub struct PreparedDevice {
    pub device: Device,
    pub auth: ClientAuth,
    /// The device's certificate and key, when the playbook needs them.
    pub identity: Option<Arc<DeviceIdentity>>,
    /// The CN the device must report after activation.
    pub expected_identity: Option<String>,
    /// Inputs of the certificate steps (CA bundles, service certificates, SCEP values),
    /// by step index.
    pub assets: crate::engine::assets::StepAssets,
}

/// Preflight result: devices, plus warnings that do not stop the run.
#[derive(Debug)]
pub struct Prepared {
    pub devices: Vec<PreparedDevice>,
    pub warnings: Vec<String>,
}

/// Resolves and checks every selected device. `resolve_secrets` is false for `plan`, which
/// must work without a vault passphrase: it then checks only that secrets are configured.
pub fn prepare(
    inventory_path: &std::path::Path,
    devices: &[&Device],
    playbook: &Playbook,
    secrets: Option<&dyn SecretStore>,
    now: time::OffsetDateTime,
) -> Result<Prepared, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut prepared = Vec::new();
    let mut by_fingerprint: BTreeMap<String, String> = BTreeMap::new();
    for device in devices {
        let (assets, asset_problems) = crate::engine::assets::resolve(playbook, device, secrets);
        problems.extend(asset_problems);
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                file: inventory_path.to_path_buf(),
                location: None,
                entry: if field.is_empty() {
                    format!("devices.{}", device.name)
                } else {
                    format!("devices.{}.{field}", device.name)
                },
                message,
            })
        };
        let auth = match resolve_auth(device, secrets) {
            Ok(a) => Some(a),
            Err(msg) => {
                problem("auth", msg);
                None
            }
        };
        if playbook.needs_client_secret() {
            if let Some(store) = secrets {
                if let Err(e) = store.current(device) {
                    problem("client_secret", e.to_string());
                }
            }
        }
        let mut identity = None;
        if playbook.needs_certificate() {
            match &device.certificate {
                None => problem(
                    "certificate",
                    format!(
                        "playbook '{}' needs a certificate: set `certificate:` (and `key:`) \
                         for the device, a group or `defaults`",
                        playbook.name
                    ),
                ),
                Some(cert_path) => match load_identity(cert_path, device.key.as_deref()) {
                    Err(e) => problem("certificate", e.to_string()),
                    Ok(id) => {
                        let report = id.check(now);
                        for e in &report.errors {
                            problem("certificate", format!("{}: {e}", cert_path.display()));
                        }
                        for w in &report.warnings {
                            warnings.push(format!(
                                "{}: devices.{}: {}: {w}",
                                inventory_path.display(),
                                device.name,
                                cert_path.display()
                            ));
                        }
                        if let Some(other) =
                            by_fingerprint.insert(id.fingerprint().to_string(), device.name.clone())
                        {
                            problem(
                                "certificate",
                                format!(
                                    "{} is the same certificate as device '{other}' uses \
                                     (fingerprint {}): every device needs its own",
                                    cert_path.display(),
                                    id.fingerprint()
                                ),
                            );
                        }
                        if let (Some(want), Some(cn)) =
                            (&device.identity, id.cert.subject_cn.as_ref())
                        {
                            if !want.eq_ignore_ascii_case(cn) {
                                problem(
                                    "identity",
                                    format!(
                                        "expected identity '{want}' but {} has CN '{cn}'",
                                        cert_path.display()
                                    ),
                                );
                            }
                        }
                        identity = Some(Arc::new(id));
                    }
                },
            }
        }
        let expected_identity = device.identity.clone().or_else(|| {
            identity
                .as_ref()
                .and_then(|i: &Arc<DeviceIdentity>| i.cert.subject_cn.clone())
        });
        if let Some(auth) = auth {
            prepared.push(PreparedDevice {
                device: (*device).clone(),
                auth,
                identity,
                expected_identity,
                assets,
            });
        }
    }
    if problems.is_empty() {
        Ok(Prepared {
            devices: prepared,
            warnings,
        })
    } else {
        Err(problems)
    }
}

fn method_auth(method: PasswordMethod, secret: Secret) -> ClientAuth {
    match method {
        PasswordMethod::KeyboardInteractive => ClientAuth::KeyboardInteractive(secret),
        PasswordMethod::Password => ClientAuth::Password(secret),
    }
}

/// Resolves how to log in. Without a store (plan), a placeholder stands in for vault
/// credentials after checking only what can be checked without the passphrase.
fn resolve_auth(device: &Device, secrets: Option<&dyn SecretStore>) -> Result<ClientAuth, String> {
    match &device.auth {
        AuthSource::PasswordEnv { var, method } => {
            let secret = env_secret(device, var, "SSH password").map_err(|e| e.to_string())?;
            Ok(method_auth(*method, secret))
        }
        AuthSource::PasswordLiteral { value, method } => Ok(method_auth(*method, value.clone())),
        AuthSource::PasswordVault { name, method } => match secrets {
            Some(store) => store
                .credential(device, name)
                .map(|s| method_auth(*method, s))
                .map_err(|e| e.to_string()),
            None => Ok(method_auth(*method, Secret::default())),
        },
        AuthSource::KeyFile {
            path,
            passphrase_env,
        } => {
            if !path.is_file() {
                return Err(format!("key file {} does not exist", path.display()));
            }
            let passphrase = match passphrase_env {
                Some(var) => Some(
                    env_secret(device, var, "key file passphrase").map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            Ok(ClientAuth::KeyFile {
                path: PathBuf::from(path),
                passphrase,
            })
        }
        AuthSource::Agent => {
            if std::env::var_os("SSH_AUTH_SOCK").is_none() {
                return Err(
                    "auth is `agent: true` but SSH_AUTH_SOCK is not set (no ssh-agent)".into(),
                );
            }
            Ok(ClientAuth::Agent)
        }
    }
}
