//! The device inventory: the YAML file format, its resolution (device → groups → defaults)
//! and its validation. Pure: it reads no file itself (`load` is the one thin wrapper that
//! does), sends nothing, and reports every problem at once so an administrator fixes a bad
//! inventory in one pass.
//!
//! ```yaml
//! defaults:                    # lowest precedence
//!   username: admin
//!   auth: { password_env: ROOMKEY_PASSWORD }
//!   certificate: certs/{name}.pem
//!   key: certs/{name}.key
//!   identity: "{name}.example.com"
//! groups:
//!   building-a: { parents: [campus], vars: { site: a } }
//! devices:
//!   room-301: { host: 10.0.0.31, groups: [building-a] }
//! ```
//! Paths are relative to the inventory file. `{name}`, `{host}` and `{var}` placeholders in
//! `certificate`, `key` and `identity` are filled from the device.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::rollout::{Window, WindowSpec};
use crate::jwe::Enc;

/// How roomkey logs in to a device. Secrets are never literal in the resolved form: they are
/// fetched from the environment or the vault at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Environment variable holding the SSH password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Name of a credential stored in the vault.
    #[serde(default)]
    pub password_vault: Option<String>,
    /// A literal password in the file: accepted with a warning, never recommended.
    #[serde(default)]
    pub password: Option<String>,
    /// Private key file for public-key auth.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key file's passphrase.
    #[serde(default)]
    pub key_passphrase_env: Option<String>,
    /// Use the keys of a running ssh-agent (`SSH_AUTH_SOCK`).
    #[serde(default)]
    pub agent: bool,
    /// `keyboard-interactive` (what devices offer; the default) or `password`.
    #[serde(default)]
    pub method: Option<PasswordMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordMethod {
    KeyboardInteractive,
    Password,
}

/// Where a device's ClientSecret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSettings {
    /// Environment variable holding the secret phrase (labs); otherwise the vault is used.
    #[serde(default)]
    pub env: Option<String>,
}

/// Settings that may appear in `defaults`, a group or a device; the most specific wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub auth: Option<AuthSettings>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub enc: Option<Enc>,
    #[serde(default)]
    pub client_secret: Option<SecretSettings>,
    /// A maintenance window overriding the playbook's (sites in other time zones).
    #[serde(default)]
    pub window: Option<WindowSpec>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Groups this group belongs to (their settings apply below this group's own).
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub host: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(flatten)]
    pub settings: Settings,
    /// Simulator behaviour (faults, variants) for this device, kept as an opaque value: the
    /// simulator owns its format and checks it (`sim::specs_from_inventory`), so the
    /// product does not depend on the simulator.
    #[serde(default)]
    pub sim: Option<serde_yaml::Value>,
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    #[serde(default)]
    pub defaults: Settings,
    #[serde(default, deserialize_with = "unique_map")]
    pub groups: BTreeMap<String, GroupEntry>,
    #[serde(deserialize_with = "unique_map")]
    pub devices: BTreeMap<String, DeviceEntry>,
    /// Vault file (relative to the inventory); default `.roomkey/vault` beside it.
    #[serde(default)]
    pub vault: Option<PathBuf>,
    /// known_hosts file; default `.roomkey/known_hosts` beside the inventory.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

/// Deserializes a map and refuses a key written twice (YAML parsers keep the last one
/// silently; two entries for `room-301` would hide a typo or a copy-paste error).
pub(crate) fn unique_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visitor<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of names to entries")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate entry '{key}': each name may appear once"
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Visitor(std::marker::PhantomData))
}

/// How a device's SSH login is resolved (the secret itself is fetched at connect time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthSource {
    PasswordEnv {
        var: String,
        method: PasswordMethod,
    },
    PasswordVault {
        name: String,
        method: PasswordMethod,
    },
    /// A literal password from the inventory (kept out of `Debug`).
    PasswordLiteral {
        value: crate::secret::Secret,
        method: PasswordMethod,
    },
    KeyFile {
        path: PathBuf,
        passphrase_env: Option<String>,
    },
    Agent,
}

/// Where a device's ClientSecret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecretSource {
    Vault,
    Env(String),
}

/// One device with every setting resolved and validated.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: AuthSource,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub identity: Option<String>,
    pub enc: Enc,
    pub client_secret: ClientSecretSource,
    /// Every group the device belongs to, directly or through parents.
    pub groups: BTreeSet<String>,
    pub vars: BTreeMap<String, String>,
    /// The device's own maintenance window, if the inventory sets one.
    pub window: Option<Window>,
    pub sim: Option<serde_yaml::Value>,
}

impl Device {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A resolved inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    pub devices: Vec<Device>,
    pub groups: BTreeSet<String>,
    pub vault: PathBuf,
    pub known_hosts: PathBuf,
    /// Things that are allowed but unwise (a literal password in the file).
    pub warnings: Vec<String>,
}

/// One problem with an inventory, naming the file and the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub entry: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.entry,
            self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

pub fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!(
        "{} problem{} found:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

/// Reads and resolves an inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and resolves inventory text; `path` names the file in messages and anchors
/// relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let file: InventoryFile = serde_yaml::from_str(text).map_err(|e| {
        InventoryError::Invalid(vec![Problem {
            file: path.to_path_buf(),
            entry: yaml_location(&e),
            message: format!("{e}"),
        }])
    })?;
    resolve(path, file)
}

pub(crate) fn yaml_location(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {}, column {}", loc.line(), loc.column()),
        None => "(file)".to_string(),
    }
}

fn resolve(path: &Path, file: InventoryFile) -> Result<Inventory, InventoryError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let problem = |entry: &str, message: String| Problem {
        file: path.to_path_buf(),
        entry: entry.to_string(),
        message,
    };

    // Groups: names, parents that exist, no cycles.
    for (gname, group) in &file.groups {
        if !is_safe_name(gname) {
            problems.push(problem(
                &format!("groups.{gname}"),
                "a group name may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        for parent in &group.parents {
            if !file.groups.contains_key(parent) {
                problems.push(problem(
                    &format!("groups.{gname}.parents"),
                    format!("unknown group '{parent}': define it under `groups:`"),
                ));
            }
        }
    }
    let mut group_chain_cache: HashMap<String, Vec<String>> = HashMap::new();
    for gname in file.groups.keys() {
        if let Err(cycle) = group_lineage(&file.groups, gname, &mut Vec::new()) {
            problems.push(problem(
                &format!("groups.{gname}"),
                format!("group parents form a cycle: {}", cycle.join(" -> ")),
            ));
        } else if let Ok(chain) = group_lineage(&file.groups, gname, &mut Vec::new()) {
            group_chain_cache.insert(gname.clone(), chain);
        }
    }

    if file.devices.is_empty() {
        problems.push(problem("devices", "the inventory lists no device".into()));
    }

    let mut devices = Vec::new();
    for (name, entry) in &file.devices {
        let where_ = format!("devices.{name}");
        if !is_safe_name(name) {
            problems.push(problem(
                &where_,
                "a device name may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        if let Err(msg) = validate_host(&entry.host) {
            problems.push(problem(&format!("{where_}.host"), msg));
        }
        // Precedence: device, then its groups in the order listed (each followed by its
        // parents), then defaults.
        let mut layers: Vec<&Settings> = vec![&entry.settings];
        let mut all_groups = BTreeSet::new();
        for g in &entry.groups {
            match group_chain_cache.get(g) {
                Some(chain) => {
                    for member in chain {
                        if all_groups.insert(member.clone()) {
                            if let Some(group) = file.groups.get(member) {
                                layers.push(&group.settings);
                            }
                        }
                    }
                }
                None if !file.groups.contains_key(g) => problems.push(problem(
                    &format!("{where_}.groups"),
                    format!("unknown group '{g}': define it under `groups:`"),
                )),
                None => {}
            }
        }
        layers.push(&file.defaults);
        let pick = |f: &dyn Fn(&Settings) -> Option<String>| layers.iter().find_map(|s| f(s));
        let mut vars = BTreeMap::new();
        for layer in layers.iter().rev() {
            for (k, v) in &layer.vars {
                vars.insert(k.clone(), v.clone());
            }
        }
        let port = layers.iter().find_map(|s| s.port).unwrap_or(22);
        let username = pick(&|s| s.username.clone()).unwrap_or_else(|| "admin".to_string());
        if !is_safe_name(&username) {
            problems.push(problem(
                &format!("{where_}.username"),
                "a username may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        let enc = layers.iter().find_map(|s| s.enc).unwrap_or(Enc::A256Gcm);
        let auth = match layers.iter().find_map(|s| s.auth.clone()) {
            Some(a) => match auth_source(&a, &base) {
                Ok((src, warn)) => {
                    if let Some(w) = warn {
                        warnings.push(format!("{}: {where_}: {w}", path.display()));
                    }
                    Some(src)
                }
                Err(msg) => {
                    problems.push(problem(&format!("{where_}.auth"), msg));
                    None
                }
            },
            None => {
                problems.push(problem(
                    &where_,
                    "no `auth:` for this device (set it on the device, a group or `defaults`), \
                     e.g. `auth: { password_env: ROOMKEY_PASSWORD }`"
                        .into(),
                ));
                None
            }
        };
        let client_secret = match layers.iter().find_map(|s| s.client_secret.clone()) {
            Some(SecretSettings { env: Some(var) }) => {
                if !is_env_name(&var) {
                    problems.push(problem(
                        &format!("{where_}.client_secret.env"),
                        format!("'{var}' is not a valid environment variable name"),
                    ));
                }
                ClientSecretSource::Env(var)
            }
            _ => ClientSecretSource::Vault,
        };
        let ctx = TemplateContext {
            name,
            host: &entry.host,
            vars: &vars,
        };
        let mut template = |field: &str, value: Option<String>| -> Option<String> {
            let value = value?;
            match expand(&value, &ctx) {
                Ok(v) => Some(v),
                Err(msg) => {
                    problems.push(problem(&format!("{where_}.{field}"), msg));
                    None
                }
            }
        };
        let certificate = template("certificate", pick(&|s| s.certificate.clone()));
        let key = template("key", pick(&|s| s.key.clone()));
        let identity = template("identity", pick(&|s| s.identity.clone()));
        if let Some(id) = &identity {
            if !is_dns_name(id) {
                problems.push(problem(
                    &format!("{where_}.identity"),
                    format!("'{id}' is not a DNS name (letters, digits, '-', '.', '*')"),
                ));
            }
        }
        let window = match layers.iter().find_map(|s| s.window.as_ref()) {
            Some(spec) => match spec.resolve() {
                Ok(w) => Some(w),
                Err(msg) => {
                    problems.push(problem(&format!("{where_}.window"), msg));
                    None
                }
            },
            None => None,
        };
        let Some(auth) = auth else { continue };
        devices.push(Device {
            name: name.clone(),
            host: entry.host.clone(),
            port,
            username,
            auth,
            certificate: certificate.map(|c| base.join(c)),
            key: key.map(|k| base.join(k)),
            identity,
            enc,
            client_secret,
            groups: all_groups,
            vars,
            window,
            sim: entry.sim.clone(),
        });
    }

    // Two entries for one device (by address) would provision it twice.
    let mut by_address: BTreeMap<(String, u16), &str> = BTreeMap::new();
    for d in &devices {
        let key = (d.host.to_ascii_lowercase(), d.port);
        if let Some(other) = by_address.insert(key, &d.name) {
            problems.push(problem(
                &format!("devices.{}", d.name),
                format!(
                    "same address {} as device '{other}': each device must be listed once",
                    d.address()
                ),
            ));
        }
    }
    // One certificate file for two devices would share an identity (the seed calls it insecure).
    let mut by_cert: BTreeMap<&Path, &str> = BTreeMap::new();
    for d in &devices {
        if let Some(c) = &d.certificate {
            if let Some(other) = by_cert.insert(c.as_path(), &d.name) {
                problems.push(problem(
                    &format!("devices.{}.certificate", d.name),
                    format!(
                        "certificate {} is also used by device '{other}': every device needs \
                         its own certificate",
                        c.display()
                    ),
                ));
            }
        }
    }

    if !problems.is_empty() {
        return Err(InventoryError::Invalid(problems));
    }
    let state_dir = base.join(".roomkey");
    Ok(Inventory {
        path: path.to_path_buf(),
        groups: file.groups.keys().cloned().collect(),
        devices,
        vault: file
            .vault
            .map(|v| base.join(v))
            .unwrap_or_else(|| state_dir.join("vault")),
        known_hosts: file
            .known_hosts
            .map(|k| base.join(k))
            .unwrap_or_else(|| state_dir.join("known_hosts")),
        warnings,
    })
}

/// A group followed by all its ancestors (depth first, each once); `Err` names a cycle.
fn group_lineage(
    groups: &BTreeMap<String, GroupEntry>,
    name: &str,
    stack: &mut Vec<String>,
) -> Result<Vec<String>, Vec<String>> {
    if stack.iter().any(|s| s == name) {
        let mut cycle = stack.clone();
        cycle.push(name.to_string());
        return Err(cycle);
    }
    stack.push(name.to_string());
    let mut out = vec![name.to_string()];
    if let Some(g) = groups.get(name) {
        for p in &g.parents {
            for member in group_lineage(groups, p, stack)? {
                if !out.contains(&member) {
                    out.push(member);
                }
            }
        }
    }
    stack.pop();
    Ok(out)
}

fn auth_source(a: &AuthSettings, base: &Path) -> Result<(AuthSource, Option<String>), String> {
    let method = a.method.unwrap_or(PasswordMethod::KeyboardInteractive);
    let chosen = [
        a.password_env.is_some(),
        a.password_vault.is_some(),
        a.password.is_some(),
        a.key_file.is_some(),
        a.agent,
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        return Err(
            "choose exactly one of password_env, password_vault, password, key_file, \
                    agent"
                .into(),
        );
    }
    if let Some(var) = &a.password_env {
        if !is_env_name(var) {
            return Err(format!("'{var}' is not a valid environment variable name"));
        }
        return Ok((
            AuthSource::PasswordEnv {
                var: var.clone(),
                method,
            },
            None,
        ));
    }
    if let Some(name) = &a.password_vault {
        if !is_safe_name(name) {
            return Err(
                "a vault credential name may contain only letters, digits, '-', '_' \
                        and '.'"
                    .into(),
            );
        }
        return Ok((
            AuthSource::PasswordVault {
                name: name.clone(),
                method,
            },
            None,
        ));
    }
    if let Some(p) = &a.password {
        return Ok((
            AuthSource::PasswordLiteral {
                value: crate::secret::Secret::new(p.clone()),
                method,
            },
            Some(
                "a literal password is written in the inventory; prefer `password_env` or \
                 `password_vault`"
                    .into(),
            ),
        ));
    }
    if let Some(path) = &a.key_file {
        if let Some(var) = &a.key_passphrase_env {
            if !is_env_name(var) {
                return Err(format!("'{var}' is not a valid environment variable name"));
            }
        }
        return Ok((
            AuthSource::KeyFile {
                path: base.join(path),
                passphrase_env: a.key_passphrase_env.clone(),
            },
            None,
        ));
    }
    Ok((AuthSource::Agent, None))
}

struct TemplateContext<'a> {
    name: &'a str,
    host: &'a str,
    vars: &'a BTreeMap<String, String>,
}

/// Fills a template from a playbook (a CA bundle path, a SCEP CommonName) for one
/// device, with the same placeholders as the inventory's own templates.
pub fn expand_for(template: &str, device: &Device) -> Result<String, String> {
    expand(
        template,
        &TemplateContext {
            name: &device.name,
            host: &device.host,
            vars: &device.vars,
        },
    )
}

/// Fills `{name}`, `{host}` and `{var}` placeholders; an unknown placeholder is an error.
fn expand(template: &str, ctx: &TemplateContext<'_>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed '{{' in '{template}'"));
        };
        let key = &after[..end];
        let value = match key {
            "name" => ctx.name,
            "host" => ctx.host,
            other => match ctx.vars.get(other) {
                Some(v) => v.as_str(),
                None => {
                    return Err(format!(
                        "unknown placeholder '{{{other}}}' in '{template}': use {{name}}, \
                         {{host}} or a var defined for the device"
                    ))
                }
            },
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*' || c == '_')
        })
}

fn validate_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() || is_dns_name(host) {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not an IP address or a host name",
            host.escape_debug()
        ))
    }
}

/// Selects devices by `--limit` patterns: a device name, a glob (`room-1*`), a group name,
/// or `@file`-style sets resolved by the caller (`extra` maps `@failed`/`@unfinished` to
/// names). Several patterns separated by commas are a union; `!pattern` excludes.
pub fn select<'a>(
    inventory: &'a Inventory,
    limit: Option<&str>,
    named_sets: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<&'a Device>, String> {
    let Some(limit) = limit else {
        return Ok(inventory.devices.iter().collect());
    };
    let mut include: Option<BTreeSet<&str>> = None;
    let mut exclude: BTreeSet<&str> = BTreeSet::new();
    for raw in limit.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (negate, pattern) = match raw.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, raw),
        };
        let matched: BTreeSet<&str> = if let Some(set) = pattern.strip_prefix('@') {
            let names = named_sets.get(set).ok_or_else(|| {
                format!("--limit: unknown set '@{set}' (known: @failed, @unfinished)")
            })?;
            inventory
                .devices
                .iter()
                .filter(|d| names.contains(&d.name))
                .map(|d| d.name.as_str())
                .collect()
        } else {
            inventory
                .devices
                .iter()
                .filter(|d| glob_match(pattern, &d.name) || d.groups.contains(pattern))
                .map(|d| d.name.as_str())
                .collect()
        };
        if matched.is_empty() && !pattern.starts_with('@') {
            return Err(format!(
                "--limit: '{pattern}' matches no device name, glob or group in {}",
                inventory.path.display()
            ));
        }
        if negate {
            exclude.extend(matched);
        } else {
            include.get_or_insert_with(BTreeSet::new).extend(matched);
        }
    }
    Ok(inventory
        .devices
        .iter()
        .filter(|d| {
            include
                .as_ref()
                .is_none_or(|set| set.contains(d.name.as_str()))
                && !exclude.contains(d.name.as_str())
        })
        .collect())
}

/// Shell-style glob with `*` and `?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
defaults:
  username: admin
  auth: { password_env: ROOMKEY_PASSWORD }
  certificate: certs/{name}.pem
  key: certs/{name}.key
  identity: "{name}.{domain}"
  vars: { domain: example.com }
groups:
  campus: { vars: { domain: campus.example.com } }
  building-a: { parents: [campus], port: 2222 }
devices:
  room-1: { host: 127.0.0.10, groups: [building-a] }
  room-2: { host: 127.0.0.11, enc: A128GCM }
  board-1: { host: board-1.example.com, identity: "board.example.com", port: 22 }
"#;

    fn parse_ok(text: &str) -> Inventory {
        parse(Path::new("inv/lab.yaml"), text).unwrap()
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(Path::new("inv/lab.yaml"), text) {
            Err(InventoryError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn resolves_device_then_groups_then_defaults() {
        let inv = parse_ok(GOOD);
        let d = |n: &str| inv.devices.iter().find(|d| d.name == n).unwrap();
        let r1 = d("room-1");
        assert_eq!(r1.port, 2222);
        assert_eq!(r1.identity.as_deref(), Some("room-1.campus.example.com"));
        assert_eq!(
            r1.certificate.as_deref(),
            Some(Path::new("inv/certs/room-1.pem"))
        );
        assert!(r1.groups.contains("campus"));
        assert_eq!(r1.enc, Enc::A256Gcm);
        let r2 = d("room-2");
        assert_eq!(r2.port, 22);
        assert_eq!(r2.enc, Enc::A128Gcm);
        assert_eq!(r2.identity.as_deref(), Some("room-2.example.com"));
        assert_eq!(d("board-1").identity.as_deref(), Some("board.example.com"));
        assert_eq!(inv.vault, Path::new("inv/.roomkey/vault"));
    }

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let p = problems("devices:\n  r1: { host: 127.0.0.1, prot: 22 }\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("unknown field `prot`"), "{}", p[0]);
        assert!(p[0].entry.starts_with("line 2"), "{}", p[0]);
    }

    #[test]
    fn reports_all_problems_at_once() {
        let text = r#"
defaults: { auth: { password_env: P }, certificate: "c/{nmae}.pem" }
devices:
  a: { host: 127.0.0.1, groups: [nope] }
  b: { host: "127.0.0.1" }
  "c;rm": { host: "10.0.0.1\nxCommand SystemUnit Boot" }
"#;
        let p = problems(text);
        let all = render_problems(&p);
        assert!(all.contains("unknown group 'nope'"), "{all}");
        assert!(all.contains("unknown placeholder '{nmae}'"), "{all}");
        assert!(all.contains("devices.c;rm: a device name"), "{all}");
        assert!(all.contains("devices.c;rm.host"), "{all}");
        assert!(p.len() >= 4, "{all}");
    }

    #[test]
    fn duplicate_addresses_and_shared_certificates_are_refused() {
        let text = r#"
defaults: { auth: { password_env: P }, certificate: shared.pem }
devices:
  a: { host: 127.0.0.1 }
  b: { host: 127.0.0.1 }
"#;
        let all = render_problems(&problems(text));
        assert!(all.contains("same address 127.0.0.1:22"), "{all}");
        assert!(all.contains("also used by device 'a'"), "{all}");
    }

    #[test]
    fn duplicate_device_names_are_refused() {
        let p = problems(
            "defaults: { auth: { agent: true } }\ndevices:\n  a: { host: 1.1.1.1 }\n  a: { host: 1.1.1.2 }\n",
        );
        assert!(p[0].message.contains("duplicate"), "{}", p[0]);
    }

    #[test]
    fn literal_password_warns_and_is_not_in_debug() {
        let inv = parse_ok(
            "defaults: { auth: { password: hunter2 } }\ndevices:\n  a: { host: 1.1.1.1 }\n",
        );
        assert_eq!(inv.warnings.len(), 1);
        assert!(!format!("{inv:?}").contains("hunter2"));
    }

    #[test]
    fn group_cycles_are_reported() {
        let p = problems(
            "defaults: { auth: { agent: true } }\ngroups:\n  x: { parents: [y] }\n  y: { parents: [x] }\ndevices:\n  a: { host: 1.1.1.1, groups: [x] }\n",
        );
        assert!(render_problems(&p).contains("cycle"));
    }

    #[test]
    fn limit_by_name_glob_group_set_and_exclusion() {
        let inv = parse_ok(GOOD);
        let names = |limit: &str| -> Vec<String> {
            let mut sets = BTreeMap::new();
            sets.insert("failed".to_string(), BTreeSet::from(["room-2".to_string()]));
            select(&inv, Some(limit), &sets)
                .unwrap()
                .into_iter()
                .map(|d| d.name.clone())
                .collect()
        };
        assert_eq!(names("room-*"), ["room-1", "room-2"]);
        assert_eq!(names("campus"), ["room-1"]);
        assert_eq!(names("@failed"), ["room-2"]);
        assert_eq!(names("room-*,!room-1"), ["room-2"]);
        assert_eq!(names("board-?"), ["board-1"]);
        assert!(select(&inv, Some("nothing"), &BTreeMap::new()).is_err());
    }

    #[test]
    fn glob() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a?c", "ac"));
    }
}
