//! Preflight: turns selected inventory devices into `PreparedDevice`s — certificates and
//! keys loaded and checked, login secrets and ClientSecrets resolved — and reports every
//! problem of every device at once. Nothing is sent to any device unless this succeeds for
//! all of them: a half-valid fleet is not started.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Each device's certificate and key (for devices that name one, when `wanted`), loaded
/// on every core: by device, in order.
fn load_identities(
    devices: &[&Device],
    wanted: bool,
) -> Vec<Option<Result<DeviceIdentity, crate::cert::CertError>>> {
    let load = |device: &&Device| {
        let cert = device.certificate.as_deref().filter(|_| wanted)?;
        Some(load_identity(cert, device.key.as_deref()))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = devices.len().div_ceil(threads).max(1);
    if threads < 2 || devices.len() < 2 {
        return devices.iter().map(load).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = devices
            .chunks(chunk)
            .map(|part| {
                let loading = scope.spawn(move || part.iter().map(load).collect::<Vec<_>>());
                (part.len(), loading)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(len, loading)| {
                // A panicking load (a bug) leaves its devices to the sequential path.
                loading
                    .join()
                    .unwrap_or_else(|_| std::iter::repeat_with(|| None).take(len).collect())
            })
            .collect()
    })
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
    // Each distinct certificate file is read (and its key opened) once, not per device.
    let mut cache = crate::engine::assets::AssetCache::default();
    // Each device's own certificate and key: read, parsed and matched (a P-256 scalar
    // multiplication each) on every core — at 2,000 devices this was a second of one core.
    let verify_only = playbook
        .steps
        .iter()
        .any(|s| matches!(s, crate::playbook::Step::VerifyExternalIdentity(_)));
    let mut identities = load_identities(devices, playbook.needs_certificate() || verify_only);
    for (device, loaded) in devices.iter().zip(identities.iter_mut()) {
        let (assets, asset_problems) =
            crate::engine::assets::resolve_cached(playbook, device, secrets, &mut cache);
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
                Some(cert_path) => match loaded
                    .take()
                    .unwrap_or_else(|| load_identity(cert_path, device.key.as_deref()))
                {
                    Err(e) => problem("certificate", e.to_string()),
                    Ok(id) => {
                        let report = id.check(now);
                        let key_path = device.key.as_deref().unwrap_or(cert_path);
                        for e in &report.errors {
                            if e.starts_with("the private key does not match")
                                || e.starts_with("key is ")
                            {
                                // The key file is the one to fix (or the pairing).
                                problem(
                                    "key",
                                    format!(
                                        "{}: {e} (certificate {})",
                                        key_path.display(),
                                        cert_path.display()
                                    ),
                                );
                            } else {
                                problem("certificate", format!("{}: {e}", cert_path.display()));
                            }
                        }
                        for e in crate::engine::assets::check_names(
                            id.cert.subject_cn.as_deref(),
                            &id.cert.sans,
                        ) {
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
        } else if verify_only {
            // A verify-only playbook: the device's certificate, when its files load, tells
            // the verifier which certificate the device must be using (its fingerprint);
            // without them the verifier checks validity and CN only, and says so.
            if let Some(Ok(id)) = loaded.take() {
                identity = Some(Arc::new(id));
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
    problems.extend(duplicate_resolved_addresses(
        inventory_path,
        devices,
        &mut warnings,
    ));
    if problems.is_empty() {
        Ok(Prepared {
            devices: prepared,
            warnings,
        })
    } else {
        Err(problems)
    }
}

/// How long preflight waits for the inventory's names to resolve, all of them together: a
/// resolver that does not answer must not hold up a run (or `plan`) indefinitely.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(10);
/// Lookups in flight at once (the system resolver blocks a thread per lookup).
const RESOLVERS: usize = 32;

/// Resolves a host name (and port) to addresses: the system resolver, or a test's.
type Resolve = dyn Fn(&str, u16) -> std::io::Result<Vec<IpAddr>> + Send + Sync;

fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, port)
        .to_socket_addrs()?
        .map(|a| a.ip().to_canonical())
        .collect())
}

/// Resolves every distinct (host, port) on up to [`RESOLVERS`] threads at once. A name
/// with no answer by `deadline` is reported as such; its lookup (which cannot be
/// cancelled) finishes in the background and is ignored, and no new lookup starts.
fn resolve_all(
    names: BTreeSet<(String, u16)>,
    resolve: Arc<Resolve>,
    deadline: Duration,
) -> BTreeMap<(String, u16), Result<Vec<IpAddr>, String>> {
    let wanted = names.len();
    let queue = Arc::new(Mutex::new(names.iter().cloned().collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..wanted.min(RESOLVERS) {
        let (queue, stop, tx, resolve) = (
            Arc::clone(&queue),
            Arc::clone(&stop),
            tx.clone(),
            Arc::clone(&resolve),
        );
        let spawned = std::thread::Builder::new()
            .name("roomkey-resolve".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((host, port)) = next else { break };
                    let answer = resolve(&host, port).map_err(|e| e.to_string());
                    if tx.send(((host, port), answer)).is_err() {
                        break;
                    }
                }
            });
        if spawned.is_err() {
            break; // fewer resolvers; the names left unanswered are reported below
        }
    }
    drop(tx);
    let until = std::time::Instant::now() + deadline;
    let mut answers = BTreeMap::new();
    while answers.len() < wanted {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((name, answer)) => {
                answers.insert(name, answer);
            }
            Err(_) => break, // the deadline, or every resolver gone
        }
    }
    stop.store(true, Ordering::Relaxed);
    for name in names {
        answers
            .entry(name)
            .or_insert_with(|| Err(format!("no answer within {deadline:?}")));
    }
    answers
}

/// Devices written with a DNS name are resolved here (all at once, see [`resolve_all`]):
/// a name that resolves to another device's address (and port) would provision one device
/// twice. A name that does not resolve now is a warning (the device may be unreachable at
/// run time, exit 3).
fn duplicate_resolved_addresses(
    inventory_path: &std::path::Path,
    devices: &[&Device],
    warnings: &mut Vec<String>,
) -> Vec<Problem> {
    duplicate_resolved_addresses_with(
        inventory_path,
        devices,
        warnings,
        Arc::new(system_resolve),
        RESOLVE_DEADLINE,
    )
}

fn duplicate_resolved_addresses_with(
    inventory_path: &std::path::Path,
    devices: &[&Device],
    warnings: &mut Vec<String>,
    resolve: Arc<Resolve>,
    deadline: Duration,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut by_address: BTreeMap<(IpAddr, u16), &str> = BTreeMap::new();
    // Literal addresses first, so a name is reported against the literal device.
    let (literal, named): (Vec<&&Device>, Vec<&&Device>) = devices
        .iter()
        .partition(|d| d.host.parse::<IpAddr>().is_ok());
    for d in literal {
        if let Ok(ip) = d.host.parse::<IpAddr>() {
            by_address
                .entry((ip.to_canonical(), d.port))
                .or_insert(&d.name);
        }
    }
    let answers = resolve_all(
        named.iter().map(|d| (d.host.clone(), d.port)).collect(),
        resolve,
        deadline,
    );
    for d in named {
        // Cloned, not taken: two devices written with one name must both see it.
        let answer = answers
            .get(&(d.host.clone(), d.port))
            .cloned()
            .unwrap_or_else(|| Err("not looked up".into()));
        let resolved = match answer {
            Ok(addrs) => addrs,
            Err(e) => {
                warnings.push(format!(
                    "{}: devices.{}: cannot resolve {} now ({e}); the run will try again",
                    inventory_path.display(),
                    d.name,
                    d.host
                ));
                continue;
            }
        };
        let mut reported = false;
        let mut mine = Vec::new();
        for ip in resolved {
            match by_address.get(&(ip, d.port)) {
                Some(other) if *other != d.name && !reported => {
                    problems.push(Problem::new(
                        inventory_path,
                        format!("devices.{}.host", d.name),
                        format!(
                            "{} resolves to {ip}, the address of device '{other}' (port {}): \
                             each device must be listed once",
                            d.host, d.port
                        ),
                    ));
                    reported = true;
                }
                _ => mine.push(ip),
            }
        }
        for ip in mine {
            by_address.entry((ip, d.port)).or_insert(&d.name);
        }
    }
    problems
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::assets::check_names;

    #[test]
    fn certificate_names_must_be_plain_and_bounded() {
        assert!(check_names(Some("room-1.example.com"), &["room-1.example.com".into()]).is_empty());
        let bad = check_names(
            Some("x\" ** end\r\nxCommand SystemUnit Boot"),
            &["a".repeat(300), "b\u{202e}c".into()],
        );
        let all = bad.join("\n");
        assert!(all.contains("CN"), "{all}");
        assert!(all.contains("double quote"), "{all}");
        assert!(all.contains("control or invisible characters"), "{all}");
        assert!(
            all.contains("SAN is 300 characters long; the most is 253"),
            "{all}"
        );
        assert!(!all.contains('\r') && !all.contains('\u{202e}'), "{all}");
        assert!(check_names(Some(&"c".repeat(65)), &[])
            .join("")
            .contains("the most is 64"));
    }

    #[test]
    fn identities_load_on_every_core_in_device_order() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::cert::TestCa::create("prepare test CA").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let mut yaml = String::from("defaults: { auth: { agent: true } }\ndevices:\n");
        for i in 0..9 {
            let cn = format!("room-{i}.example.com");
            let (cert, key) = ca
                .issue(
                    &cn,
                    std::slice::from_ref(&cn),
                    now,
                    now + time::Duration::days(30),
                )
                .unwrap();
            let cert_path = dir.path().join(format!("{i}.pem"));
            let key_path = dir.path().join(format!("{i}.key"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key.expose()).unwrap();
            // Room 4 names no certificate; room 7's key file is missing.
            let files = match i {
                4 => String::new(),
                7 => format!(
                    ", certificate: {}, key: /nonexistent.key",
                    cert_path.display()
                ),
                _ => format!(
                    ", certificate: {}, key: {}",
                    cert_path.display(),
                    key_path.display()
                ),
            };
            yaml.push_str(&format!("  room-{i}: {{ host: 10.0.0.{i}{files} }}\n"));
        }
        let inv = crate::inventory::parse(&dir.path().join("inv.yaml"), &yaml).unwrap();
        let devices: Vec<&Device> = inv.devices.iter().collect();
        let loaded = load_identities(&devices, true);
        assert_eq!(loaded.len(), 9);
        for (i, (device, id)) in devices.iter().zip(&loaded).enumerate() {
            match (i, id) {
                (4, None) | (7, Some(Err(_))) => {}
                (_, Some(Ok(id))) => assert_eq!(
                    id.cert.subject_cn.as_deref(),
                    Some(format!("{}.example.com", device.name).as_str())
                ),
                other => panic!("{other:?}"),
            }
        }
        assert!(load_identities(&devices, false).iter().all(Option::is_none));
    }

    fn named_fleet(n: usize) -> crate::inventory::Inventory {
        let mut yaml = String::from("defaults: { auth: { agent: true } }\ndevices:\n");
        for i in 0..n {
            yaml.push_str(&format!("  room-{i}: {{ host: room-{i}.test }}\n"));
        }
        yaml.push_str("  twin: { host: alias-3.test }\n  literal: { host: 10.0.0.7 }\n");
        crate::inventory::parse(std::path::Path::new("inv.yaml"), &yaml).unwrap()
    }

    #[test]
    fn names_resolve_all_at_once_and_duplicates_are_still_found() {
        let inv = named_fleet(100);
        let devices: Vec<&Device> = inv.devices.iter().collect();
        let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&lookups);
        // room-i.test and alias-i.test are 10.0.1.i, except room-7.test, which is the
        // literal device's address.
        let resolver = move |host: &str, _port: u16| -> std::io::Result<Vec<IpAddr>> {
            counted.fetch_add(1, Ordering::Relaxed);
            let i: u8 = host
                .trim_start_matches("room-")
                .trim_start_matches("alias-")
                .trim_end_matches(".test")
                .parse()
                .map_err(std::io::Error::other)?;
            Ok(vec![if i == 7 {
                IpAddr::from([10, 0, 0, 7])
            } else {
                IpAddr::from([10, 0, 1, i])
            }])
        };
        let mut warnings = Vec::new();
        let problems = duplicate_resolved_addresses_with(
            &inv.path,
            &devices,
            &mut warnings,
            Arc::new(resolver),
            Duration::from_secs(600),
        );
        // Each name once.
        assert_eq!(lookups.load(Ordering::Relaxed), 101);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut entries: Vec<_> = problems.iter().map(|p| p.entry.as_str()).collect();
        entries.sort();
        assert_eq!(
            entries,
            ["devices.room-7.host", "devices.twin.host"],
            "{problems:?}"
        );
    }

    #[test]
    fn a_resolver_that_never_answers_does_not_hold_up_preflight() {
        let inv = named_fleet(5);
        let devices: Vec<&Device> = inv.devices.iter().collect();
        let hang = |_: &str, _: u16| -> std::io::Result<Vec<IpAddr>> {
            loop {
                std::thread::park();
            }
        };
        let mut warnings = Vec::new();
        let problems = duplicate_resolved_addresses_with(
            &inv.path,
            &devices,
            &mut warnings,
            Arc::new(hang),
            Duration::ZERO,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(
            warnings[0].contains("cannot resolve room-0.test now (no answer within 0ns)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_name_resolving_to_another_devices_address_is_refused() {
        let inv = crate::inventory::parse(
            std::path::Path::new("inv.yaml"),
            "defaults: { auth: { agent: true } }\ndevices:\n  a: { host: 127.0.0.1 }\n  b: { host: localhost }\n  c: { host: localhost, port: 2222 }\n",
        )
        .unwrap();
        let devices: Vec<&Device> = inv.devices.iter().collect();
        let mut warnings = Vec::new();
        let p = duplicate_resolved_addresses(&inv.path, &devices, &mut warnings);
        assert_eq!(p.len(), 1, "{p:?} {warnings:?}");
        assert_eq!(p[0].entry, "devices.b.host");
        assert!(
            p[0].message
                .contains("localhost resolves to 127.0.0.1, the address of device 'a'"),
            "{}",
            p[0]
        );
    }
}
