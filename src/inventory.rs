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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::display::escape;
use crate::engine::rollout::{Window, WindowSpec};
pub use crate::input::Location;
use crate::input::{
    humanize, is_secret_path, key_text, kind, parse_tree, path_string, unknown_key_message,
    Locator, Seg,
};
use crate::jwe::Enc;
use serde_yaml::{Mapping, Value};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub port: Option<u16>,
    pub username: Option<String>,
    pub auth: Option<AuthSettings>,
    pub certificate: Option<String>,
    pub key: Option<String>,
    pub identity: Option<String>,
    pub enc: Option<Enc>,
    pub client_secret: Option<SecretSettings>,
    /// A maintenance window overriding the playbook's (sites in other time zones).
    pub window: Option<WindowSpec>,
    pub vars: BTreeMap<String, String>,
}

/// The keys of [`Settings`] as written.
const SETTINGS_KEYS: &[&str] = &[
    "port",
    "username",
    "auth",
    "certificate",
    "key",
    "identity",
    "enc",
    "client_secret",
    "window",
    "vars",
];

#[derive(Debug, Clone, Default)]
pub struct GroupEntry {
    /// Groups this group belongs to (their settings apply below this group's own).
    pub parents: Vec<String>,
    pub settings: Settings,
}

#[derive(Debug, Clone, Default)]
pub struct DeviceEntry {
    pub host: String,
    pub groups: Vec<String>,
    pub settings: Settings,
    /// Simulator behaviour (faults, variants) for this device, kept as an opaque value: the
    /// simulator owns its format and checks it (`sim::specs_from_inventory`), so the
    /// product does not depend on the simulator.
    pub sim: Option<serde_yaml::Value>,
}

/// The file as written (the parts of it that could be read).
#[derive(Debug, Clone, Default)]
pub struct InventoryFile {
    pub defaults: Settings,
    pub groups: BTreeMap<String, GroupEntry>,
    pub devices: BTreeMap<String, DeviceEntry>,
    /// Vault file (relative to the inventory); default `.roomkey/vault` beside it.
    pub vault: Option<PathBuf>,
    /// known_hosts file; default `.roomkey/known_hosts` beside the inventory.
    pub known_hosts: Option<PathBuf>,
}

const TOP_KEYS: &[&str] = &["defaults", "groups", "devices", "vault", "known_hosts"];

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

/// One problem with an input file (inventory, playbook, or a file they name), naming the
/// file, where in it (when known), the entry and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub entry: String,
    pub message: String,
}

impl Problem {
    /// A problem without a position in the file (found after reading it).
    pub fn new(file: &Path, entry: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_path_buf(),
            location: None,
            entry: entry.into(),
            message: message.into(),
        }
    }

    /// `line L, column C: entry: message` (without the file; see [`render_problems`]).
    fn body(&self) -> String {
        let loc = self.location.map(|l| format!("{l}: ")).unwrap_or_default();
        let entry = if self.entry.is_empty() {
            String::new()
        } else {
            format!("{}: ", escape(&self.entry))
        };
        format!("{loc}{entry}{}", escape(&self.message))
    }
}

/// One line, every part escaped: entries and messages quote names and values from files.
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            escape(&self.file.display().to_string()),
            self.body()
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

/// Every problem, grouped by file (files in the order their first problem was found), one
/// escaped line each.
pub fn render_problems(problems: &[Problem]) -> String {
    let mut out = format!(
        "{} problem{} found:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    let mut files: Vec<&Path> = Vec::new();
    for p in problems {
        if !files.contains(&p.file.as_path()) {
            files.push(&p.file);
        }
    }
    for file in files {
        out.push_str(&format!("\n  {}:", escape(&file.display().to_string())));
        // In file order (problems without a position last, in the order found).
        let mut in_file: Vec<&Problem> = problems.iter().filter(|p| p.file == file).collect();
        in_file.sort_by_key(|p| {
            p.location
                .map_or((usize::MAX, usize::MAX), |l| (l.line, l.column))
        });
        for p in in_file {
            out.push_str("\n    - ");
            out.push_str(&p.body());
        }
    }
    out
}

/// Reads and resolves an inventory file.
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = crate::input::read_file(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Reads an inventory for `roomkey sim`, which serves its devices: there `port: 0` means
/// "any free port" (the simulator prints the ports it got). Everything else is as strict
/// as [`load`], which refuses port 0 (no device listens there).
pub fn load_for_sim(path: &Path) -> Result<Inventory, InventoryError> {
    let text = crate::input::read_file(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (inventory, problems) = parse_with(path, &text, true);
    match inventory {
        Some(inv) if problems.is_empty() => Ok(inv),
        _ => Err(InventoryError::Invalid(problems)),
    }
}

/// Parses and resolves inventory text; `path` names the file in messages and anchors
/// relative paths. The text is read into a tree first and every entry is checked on its
/// own, so every problem of the file is reported at once.
pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
    let (inventory, problems) = parse_partial(path, text);
    match inventory {
        Some(inv) if problems.is_empty() => Ok(inv),
        _ => Err(InventoryError::Invalid(problems)),
    }
}

/// Like [`parse`], but with problems also returns the inventory of the devices whose own
/// entries have none (`None` when the text is not YAML at all), so that preflight can
/// check their certificates too and a bad inventory does not hide certificate problems.
pub fn parse_partial(path: &Path, text: &str) -> (Option<Inventory>, Vec<Problem>) {
    parse_with(path, text, false)
}

fn parse_with(path: &Path, text: &str, any_port: bool) -> (Option<Inventory>, Vec<Problem>) {
    let tree = match parse_tree(text) {
        Ok(t) => t,
        Err(e) => {
            return (
                None,
                vec![Problem {
                    file: path.to_path_buf(),
                    location: e.location,
                    entry: String::new(),
                    message: e.message,
                }],
            )
        }
    };
    let mut reader = Reader::new(path, text);
    reader.any_port = any_port;
    reader.duplicates(&tree.duplicates);
    let file = reader.inventory(&tree.root);
    let (mut inventory, problems) = resolve(path, file, reader);
    inventory.devices.retain(|d| {
        let entry = format!("devices.{}", d.name);
        !problems.iter().any(|p| {
            p.entry == entry
                || p.entry
                    .strip_prefix(entry.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    });
    (Some(inventory), problems)
}

/// [`parse_partial`] of a file.
pub fn load_partial(path: &Path) -> Result<(Option<Inventory>, Vec<Problem>), InventoryError> {
    let text = crate::input::read_file(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_partial(path, &text))
}

/// Reads the tree into an [`InventoryFile`], collecting every problem with its location.
pub(crate) struct Reader<'a> {
    file: PathBuf,
    locator: Locator<'a>,
    pub(crate) problems: Vec<Problem>,
    /// `port: 0` is accepted (`roomkey sim`: any free port).
    any_port: bool,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(file: &Path, text: &'a str) -> Self {
        Reader {
            file: file.to_path_buf(),
            locator: Locator::new(text),
            problems: Vec::new(),
            any_port: false,
        }
    }

    /// A problem at `path` (entry and location from it).
    pub(crate) fn problem(&mut self, path: &[Seg], message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            location: self.locator.locate(path),
            entry: path_string(path),
            message: message.into(),
        });
    }

    /// A problem with its own entry name, located at `at`.
    pub(crate) fn problem_named(&mut self, entry: &str, at: &[Seg], message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            location: self.locator.locate(at),
            entry: entry.to_string(),
            message: message.into(),
        });
    }

    /// A problem named by `entry_path` but located at `at` (a key that must not be echoed).
    fn problem_at(&mut self, entry_path: &[Seg], at: &[Seg], message: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            location: self.locator.locate(at).or(self.locator.locate(entry_path)),
            entry: path_string(entry_path),
            message,
        });
    }

    pub(crate) fn duplicates(&mut self, duplicates: &[Vec<Seg>]) {
        for dup in duplicates {
            let Some((Seg::Key(last), parent)) = dup.split_last() else {
                continue;
            };
            let message = if is_secret_path(dup) {
                "a key is written twice here; YAML would keep only one: remove one".to_string()
            } else if matches!(parent, [Seg::Key(top)] if top == "devices" || top == "groups") {
                format!("duplicate entry '{last}': each name may appear once")
            } else {
                format!("`{last}` is written twice here; YAML would keep only one: remove one")
            };
            let entry = if is_secret_path(dup) {
                parent
            } else {
                &dup[..]
            };
            self.problems.push(Problem {
                file: self.file.clone(),
                location: self.locator.locate_repeat(dup, 1),
                entry: path_string(entry),
                message,
            });
        }
    }

    /// `v` as a map; null is an empty map (an entry written without settings). Anything
    /// else is a problem.
    pub(crate) fn map<'v>(
        &mut self,
        v: &'v Value,
        path: &[Seg],
        what: &str,
    ) -> Option<&'v Mapping> {
        match v {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                self.problem(path, format!("expected {what}, found {}", kind(other)));
                None
            }
        }
    }

    /// The entries of `m` whose key is in `known`; every other key is a problem (with the
    /// nearest known key suggested).
    pub(crate) fn known_entries<'v>(
        &mut self,
        m: &'v Mapping,
        path: &[Seg],
        known: &[&str],
    ) -> Vec<(String, &'v Value)> {
        let mut out = Vec::new();
        for (k, v) in m {
            let Value::String(key) = k else {
                self.problem(path, format!("a key must be a name, found {}", kind(k)));
                continue;
            };
            if known.contains(&key.as_str()) {
                out.push((key.clone(), v));
            } else {
                let secret = is_secret_path(path);
                let at = child(path, Seg::Key(key.clone()));
                let message = unknown_key_message(key, known, secret);
                if secret {
                    self.problem_at(path, &at, message);
                } else {
                    self.problem(&at, message);
                }
            }
        }
        out
    }

    /// The names and values of a map of named entries (`devices:`, `groups:`); non-text
    /// names are problems.
    pub(crate) fn named<'v>(&mut self, m: &'v Mapping, path: &[Seg]) -> Vec<(String, &'v Value)> {
        let mut out = Vec::new();
        for (k, v) in m {
            match k {
                Value::String(name) => out.push((name.clone(), v)),
                Value::Number(_) | Value::Bool(_) => out.push((key_text(k), v)),
                other => self.problem(path, format!("a name must be text, found {}", kind(other))),
            }
        }
        out
    }

    /// `v` deserialized as `T`; a failure is a problem in plain words (`expected` describes
    /// what the key takes).
    pub(crate) fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        v: &Value,
        path: &[Seg],
        expected: Option<&str>,
    ) -> Option<T> {
        match serde_yaml::from_value::<T>(v.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.serde_problem(&e.to_string(), path, expected);
                None
            }
        }
    }

    /// Reports serde's message about the value at `path` in plain words.
    pub(crate) fn serde_problem(&mut self, raw: &str, path: &[Seg], expected: Option<&str>) {
        let message = humanize(raw, path, expected);
        // Point at the unknown key inside the value, when that is the problem.
        match raw
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            Some(field) if !is_secret_path(path) => {
                self.problem(&child(path, Seg::key(field)), message)
            }
            Some(field) => self.problem_at(path, &child(path, Seg::key(field)), message),
            None => self.problem(path, message),
        }
    }

    /// Text; a number or true/false is taken as written (`floor: 3`).
    pub(crate) fn text(&mut self, v: &Value, path: &[Seg]) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.problem(path, format!("expected text, found {}", kind(other)));
                None
            }
        }
    }

    /// A list of names (`groups: [a, b]`, `parents: [x]`); one name alone is accepted.
    fn names(&mut self, v: &Value, path: &[Seg]) -> Vec<String> {
        match v {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.text(item, &child(path, Seg::Index(i))))
                .collect(),
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            other => {
                self.problem(
                    path,
                    format!("expected a list of names, found {}", kind(other)),
                );
                Vec::new()
            }
        }
    }

    /// A TCP port: 1 to 65535.
    fn port(&mut self, v: &Value, path: &[Seg]) -> Option<u16> {
        match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(p) if p > 0 || self.any_port => Some(p),
            _ => {
                let found = match v {
                    Value::Number(_) => "a number outside that range".to_string(),
                    other => kind(other).to_string(),
                };
                self.problem(
                    path,
                    format!("expected a port number from 1 to 65535, found {found}"),
                );
                None
            }
        }
    }

    fn settings(&mut self, entries: &[(String, &Value)], path: &[Seg]) -> Settings {
        let mut s = Settings::default();
        for (key, v) in entries {
            let at = child(path, Seg::Key(key.clone()));
            match key.as_str() {
                "port" => s.port = self.port(v, &at),
                "username" => s.username = self.text(v, &at),
                "auth" => {
                    s.auth = self.typed(
                        v,
                        &at,
                        Some(
                            "a map with one of `password_env`, `password_vault`, `password`, \
                             `key_file` or `agent: true`",
                        ),
                    )
                }
                "certificate" => s.certificate = self.text(v, &at),
                "key" => s.key = self.text(v, &at),
                "identity" => s.identity = self.text(v, &at),
                "enc" => s.enc = self.typed(v, &at, Some("`A128GCM` or `A256GCM`")),
                "client_secret" => {
                    s.client_secret = self.typed(v, &at, Some("a map such as `{ env: VAR }`"))
                }
                "window" => {
                    s.window = self.typed(
                        v,
                        &at,
                        Some("a map such as `{ start: \"22:00\", end: \"06:00\", timezone: Europe/Oslo }`"),
                    )
                }
                "vars" => {
                    if let Some(m) = self.map(v, &at, "a map of names to text") {
                        for (name, value) in self.named(m, &at) {
                            let vat = child(&at, Seg::Key(name.clone()));
                            if let Some(t) = self.text(value, &vat) {
                                s.vars.insert(name, t);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }

    fn inventory(&mut self, root: &Value) -> InventoryFile {
        let mut file = InventoryFile::default();
        let Some(top) = (match root {
            Value::Mapping(m) => Some(m),
            Value::Null => None,
            other => {
                self.problem(
                    &[],
                    format!(
                        "an inventory is a map with `defaults:`, `groups:` and `devices:`, found {}",
                        kind(other)
                    ),
                );
                return file;
            }
        }) else {
            return file;
        };
        for (key, v) in self.known_entries(top, &[], TOP_KEYS) {
            let at = [Seg::Key(key.clone())];
            match key.as_str() {
                "defaults" => {
                    if let Some(m) = self.map(v, &at, "a map of settings") {
                        let entries = self.known_entries(m, &at, SETTINGS_KEYS);
                        file.defaults = self.settings(&entries, &at);
                    }
                }
                "groups" => {
                    if let Some(m) = self.map(v, &at, "a map of group names to settings") {
                        for (name, g) in self.named(m, &at) {
                            let gat = child(&at, Seg::Key(name.clone()));
                            let mut entry = GroupEntry::default();
                            if let Some(gm) = self.map(g, &gat, "a map of settings") {
                                let known: Vec<&str> = std::iter::once("parents")
                                    .chain(SETTINGS_KEYS.iter().copied())
                                    .collect();
                                let entries = self.known_entries(gm, &gat, &known);
                                for (k, pv) in &entries {
                                    if k == "parents" {
                                        entry.parents =
                                            self.names(pv, &child(&gat, Seg::key("parents")));
                                    }
                                }
                                entry.settings = self.settings(&entries, &gat);
                            }
                            file.groups.insert(name, entry);
                        }
                    }
                }
                "devices" => {
                    if let Some(m) = self.map(v, &at, "a map of device names to settings") {
                        for (name, d) in self.named(m, &at) {
                            let dat = child(&at, Seg::Key(name.clone()));
                            if let Some(entry) = self.device(d, &dat) {
                                file.devices.insert(name, entry);
                            }
                        }
                    }
                }
                "vault" => file.vault = self.text(v, &at).map(PathBuf::from),
                "known_hosts" => file.known_hosts = self.text(v, &at).map(PathBuf::from),
                _ => {}
            }
        }
        file
    }

    fn device(&mut self, v: &Value, path: &[Seg]) -> Option<DeviceEntry> {
        let Value::Mapping(m) = v else {
            self.problem(
                path,
                format!(
                    "expected a map such as `{{ host: 10.0.0.31 }}`, found {}",
                    kind(v)
                ),
            );
            return None;
        };
        let known: Vec<&str> = ["host", "groups", "sim"]
            .into_iter()
            .chain(SETTINGS_KEYS.iter().copied())
            .collect();
        let entries = self.known_entries(m, path, &known);
        let mut entry = DeviceEntry::default();
        let mut host = None;
        for (k, v) in &entries {
            let at = child(path, Seg::Key(k.clone()));
            match k.as_str() {
                "host" => host = self.text(v, &at),
                "groups" => entry.groups = self.names(v, &at),
                // The simulator's own block: checked where it is resolved.
                "sim" => entry.sim = Some((*v).clone()),
                _ => {}
            }
        }
        entry.settings = self.settings(&entries, path);
        match host {
            Some(h) => entry.host = h,
            None if !entries.iter().any(|(k, _)| k == "host") => {
                self.problem(
                    path,
                    "missing key `host` (the device's address or DNS name)",
                );
                return None;
            }
            None => return None,
        }
        Some(entry)
    }
}

/// `path` extended by `seg`.
pub(crate) fn child(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

fn seg(k: &str) -> Seg {
    Seg::key(k)
}

fn resolve(path: &Path, file: InventoryFile, reader: Reader<'_>) -> (Inventory, Vec<Problem>) {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let Reader {
        locator,
        mut problems,
        ..
    } = reader;
    let mut warnings = Vec::new();
    let problem = |at: &[Seg], message: String| Problem {
        file: path.to_path_buf(),
        location: locator.locate(at),
        entry: path_string(at),
        message,
    };

    // Groups: names, parents that exist, no cycles.
    for (gname, group) in &file.groups {
        if !is_safe_name(gname) {
            problems.push(problem(
                &[seg("groups"), Seg::Key(gname.clone())],
                "a group name may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        for parent in &group.parents {
            if !file.groups.contains_key(parent) {
                problems.push(problem(
                    &[seg("groups"), Seg::Key(gname.clone()), seg("parents")],
                    format!("unknown group '{parent}': define it under `groups:`"),
                ));
            }
        }
    }
    let mut group_chain_cache: HashMap<String, Vec<String>> = HashMap::new();
    for gname in file.groups.keys() {
        if let Err(cycle) = group_lineage(&file.groups, gname, &mut Vec::new()) {
            problems.push(problem(
                &[seg("groups"), Seg::Key(gname.clone())],
                format!("group parents form a cycle: {}", cycle.join(" -> ")),
            ));
        } else if let Ok(chain) = group_lineage(&file.groups, gname, &mut Vec::new()) {
            group_chain_cache.insert(gname.clone(), chain);
        }
    }

    if file.devices.is_empty() {
        problems.push(problem(
            &[seg("devices")],
            "the inventory lists no device".into(),
        ));
    }

    let mut devices = Vec::new();
    for (name, entry) in &file.devices {
        let dev = [seg("devices"), Seg::Key(name.clone())];
        if !is_safe_name(name) {
            problems.push(problem(
                &dev,
                "a device name may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        if let Err(msg) = validate_host(&entry.host) {
            problems.push(problem(&child(&dev, seg("host")), msg));
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
                    &child(&dev, seg("groups")),
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
                &child(&dev, seg("username")),
                "a username may contain only letters, digits, '-', '_' and '.'".into(),
            ));
        }
        let enc = layers.iter().find_map(|s| s.enc).unwrap_or(Enc::A256Gcm);
        let auth = match layers.iter().find_map(|s| s.auth.clone()) {
            Some(a) => match auth_source(&a, &base) {
                Ok((src, warn)) => {
                    if let Some(w) = warn {
                        warnings.push(format!("{}: {}: {w}", path.display(), path_string(&dev)));
                    }
                    Some(src)
                }
                Err(msg) => {
                    problems.push(problem(&child(&dev, seg("auth")), msg));
                    None
                }
            },
            None => {
                problems.push(problem(
                    &dev,
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
                        &[
                            seg("devices"),
                            Seg::Key(name.clone()),
                            seg("client_secret"),
                            seg("env"),
                        ],
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
                    problems.push(problem(&child(&dev, seg(field)), msg));
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
                    &child(&dev, seg("identity")),
                    format!("'{id}' is not a DNS name (letters, digits, '-', '.', '*')"),
                ));
            }
        }
        let window = match layers.iter().find_map(|s| s.window.as_ref()) {
            Some(spec) => match spec.resolve() {
                Ok(w) => Some(w),
                Err(msg) => {
                    problems.push(problem(&child(&dev, seg("window")), msg));
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
    // Addresses are compared in canonical form (an IPv4-mapped IPv6 address is its IPv4
    // address); names that resolve to another device's address are caught in preflight.
    let mut by_address: BTreeMap<(String, u16), &str> = BTreeMap::new();
    for d in &devices {
        let key = (address_key(&d.host), d.port);
        if let Some(other) = by_address.insert(key, &d.name) {
            problems.push(problem(
                &[seg("devices"), Seg::Key(d.name.clone())],
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
                    &[seg("devices"), Seg::Key(d.name.clone()), seg("certificate")],
                    format!(
                        "certificate {} is also used by device '{other}': every device needs \
                         its own certificate",
                        c.display()
                    ),
                ));
            }
        }
    }

    let state_dir = base.join(".roomkey");
    let inventory = Inventory {
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
    };
    (inventory, problems)
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

/// The form two device addresses are compared in: an IP address canonical (IPv4-mapped
/// IPv6 as its IPv4 address), a DNS name in lower case without a trailing dot.
pub fn address_key(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => host.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// A host is an IP address in canonical form or a DNS name. Anything that looks like a
/// number but is not a canonical address (`127.20.116.010`, `0x7f.1`, `127.1`,
/// `2130706433`) is refused with the canonical spelling: resolvers read such forms
/// inet_aton-style (a leading zero means octal), so `010` would reach another room.
pub fn validate_host(host: &str) -> Result<(), String> {
    let shown = escape(host);
    if host.is_empty() {
        return Err("the host is empty: write an IP address or a DNS name".into());
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<Ipv6Addr>() {
            return Err(format!(
                "'{shown}': write the address without brackets: {}",
                canonical_v6(ip)
            ));
        }
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        // Rust's parser accepts only the dotted-decimal form; still compare the spelling.
        return if ip.to_string() == host {
            Ok(())
        } else {
            Err(format!("'{shown}' is not in canonical form: write {ip}"))
        };
    }
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        let canonical = canonical_v6(ip);
        return if canonical == host {
            Ok(())
        } else {
            Err(format!(
                "'{shown}' is not in canonical form: write {canonical}"
            ))
        };
    }
    if looks_numeric(host) {
        return Err(match inet_aton(host) {
            Some((ip, decimal @ Some(d))) if d != ip => format!(
                "'{shown}' is not a canonical IPv4 address: a resolver reads it as {ip} \
                 (a leading zero means octal){}",
                decimal
                    .map(|d| format!("; if you mean decimal, write {d}"))
                    .unwrap_or_default()
            ),
            Some((ip, _)) => format!("'{shown}' is not a canonical IPv4 address: write {ip}"),
            None => format!(
                "'{shown}' looks like an IPv4 address but is not one: write four numbers from \
                 0 to 255 separated by dots, e.g. 10.0.0.31"
            ),
        });
    }
    if is_dns_name(host) {
        Ok(())
    } else {
        Err(format!(
            "'{shown}' is not an IP address or a host name (letters, digits, '-' and '.')"
        ))
    }
}

/// An IPv6 address in canonical (RFC 5952) form; an IPv4-mapped one as its IPv4 address.
fn canonical_v6(ip: Ipv6Addr) -> String {
    match ip.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => ip.to_string(),
    }
}

/// Whether every dot-separated part is a number (decimal, octal or `0x` hex): a host
/// name never looks like that, an address in a non-canonical spelling does.
fn looks_numeric(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|part| {
            let hex = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X"));
            match hex {
                Some(h) => !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()),
                None => !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()),
            }
        })
}

/// How inet_aton reads a numeric host (1 to 4 parts, each decimal, `0`-octal or `0x`-hex),
/// and, for comparison, the address when every part is read as decimal (what a spreadsheet
/// meant by `010`). `None` when it is no address at all.
fn inet_aton(host: &str) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    let read = |p: &str, decimal: bool| -> Option<u64> {
        if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            u64::from_str_radix(h, 16).ok()
        } else if !decimal && p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(p, 8).ok()
        } else {
            p.parse().ok()
        }
    };
    let assemble = |decimal: bool| -> Option<Ipv4Addr> {
        let nums: Vec<u64> = parts
            .iter()
            .map(|p| read(p, decimal))
            .collect::<Option<_>>()?;
        let (last, head) = nums.split_last()?;
        if head.len() > 3 || head.iter().any(|n| *n > 255) {
            return None;
        }
        let last_bits = 8 * (4 - head.len() as u32);
        if *last >= 1u64 << last_bits {
            return None;
        }
        let mut v: u64 = 0;
        for n in head {
            v = (v << 8) | n;
        }
        let v = (v << last_bits) | last;
        u32::try_from(v).ok().map(Ipv4Addr::from)
    };
    let ip = assemble(false)?;
    let decimal = if parts.len() == 4 {
        assemble(true)
    } else {
        None
    };
    Some((ip, decimal))
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
        let all = render_problems(&p);
        let typo = p.iter().find(|p| p.message.contains("prot")).expect(&all);
        assert!(
            typo.message
                .starts_with("unknown key `prot`: did you mean `port`?"),
            "{typo}"
        );
        assert_eq!(typo.entry, "devices.r1.prot");
        assert_eq!(
            typo.location,
            Some(Location {
                line: 2,
                column: 26
            })
        );
    }

    #[test]
    fn every_problem_of_the_file_at_once_with_lines_and_fixes() {
        // A typo inside a device entry, a bad port, a zero port, a duplicate address, a
        // non-canonical host, a wrong type: all reported, each with its line.
        let text = "\
defaults:
  auth: { password_env: P }
  usernme: admin
devices:
  a: { host: 127.20.116.22, prot: 22 }
  b: { host: 127.20.116.22 }
  c: { host: \"127.20.116.010\" }
  d: { host: 10.0.0.4, port: 70000 }
  e: { host: 10.0.0.5, port: 0 }
  f: { host: 10.0.0.6, groups: 3, enc: A192GCM }
";
        let p = problems(text);
        let all = render_problems(&p);
        for (line, needle) in [
            (
                3,
                "defaults.usernme: unknown key `usernme`: did you mean `username`?",
            ),
            (
                5,
                "devices.a.prot: unknown key `prot`: did you mean `port`?",
            ),
            (6, "devices.b: same address 127.20.116.22:22 as device 'a'"),
            (
                7,
                "devices.c.host: '127.20.116.010' is not a canonical IPv4 address",
            ),
            (8, "devices.d.port: expected a port number from 1 to 65535"),
            (9, "devices.e.port: expected a port number from 1 to 65535"),
            (
                10,
                "devices.f.enc: unknown value `A192GCM`: did you mean `A128GCM`?",
            ),
        ] {
            let hit = p
                .iter()
                .find(|p| p.to_string().contains(needle))
                .unwrap_or_else(|| panic!("missing {needle:?} in:\n{all}"));
            assert_eq!(hit.location.map(|l| l.line), Some(line), "{hit}");
        }
        assert!(
            all.contains("devices.f.groups: expected a list of names"),
            "{all}"
        );
        for internal in ["u16", "usize", "untagged", "Raw", "struct ", "Settings"] {
            assert!(!all.contains(internal), "{internal} in:\n{all}");
        }
        assert!(
            all.starts_with("8 problems found:\n  inv/lab.yaml:\n    - line "),
            "{all}"
        );
    }

    #[test]
    fn port_zero_is_only_for_the_simulator() {
        let text =
            "defaults: { auth: { agent: true }, port: 0 }\ndevices:\n  a: { host: 127.0.0.1 }\n";
        let all = render_problems(&problems(text));
        assert!(
            all.contains("defaults.port: expected a port number from 1 to 65535"),
            "{all}"
        );
        let (inv, p) = parse_with(Path::new("sim.yaml"), text, true);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(inv.unwrap().devices[0].port, 0);
    }

    #[test]
    fn hosts_must_be_canonical_addresses_or_names() {
        let check = |host: &str| validate_host(host);
        for ok in [
            "10.0.0.1",
            "127.20.116.10",
            "::1",
            "2001:db8::1",
            "room-1.example.com",
            "localhost",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for (bad, wants) in [
            (
                "127.20.116.010",
                &["127.20.116.8", "write 127.20.116.10"][..],
            ),
            ("127.1", &["write 127.0.0.1"]),
            ("0x7f.0.0.1", &["write 127.0.0.1"]),
            ("2130706433", &["write 127.0.0.1"]),
            ("010.0.0.1", &["8.0.0.1", "write 10.0.0.1"]),
            ("::FFFF:127.20.116.22", &["write 127.20.116.22"]),
            ("::ffff:127.20.116.22", &["write 127.20.116.22"]),
            ("2001:DB8::1", &["write 2001:db8::1"]),
            ("2001:db8:0:0:0:0:0:1", &["write 2001:db8::1"]),
            ("[::1]", &["without brackets: ::1"]),
            ("256.1.1.1", &["four numbers from 0 to 255"]),
            ("1.2.3.4.5", &["four numbers from 0 to 255"]),
            ("", &["empty"]),
            ("room 1", &["not an IP address or a host name"]),
            ("a\u{1b}[2J", &["\\u{1b}"]),
        ] {
            let e = check(bad).expect_err(bad);
            for w in wants {
                assert!(e.contains(w), "{bad}: {e}");
            }
            assert!(!e.contains('\u{1b}'), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicates_compare_canonical_addresses() {
        assert_eq!(
            address_key("127.20.116.22"),
            address_key("::ffff:127.20.116.22")
        );
        assert_eq!(
            address_key("Room.Example.com."),
            address_key("room.example.com")
        );
        // Written both ways in one file: the mapped form is refused and the pair is
        // reported as one device.
        let all = render_problems(&problems(
            "defaults: { auth: { agent: true } }\ndevices:\n  a: { host: 127.20.116.22 }\n  b: { host: \"::ffff:127.20.116.22\" }\n",
        ));
        assert!(all.contains("devices.b.host: '::ffff:127.20.116.22' is not in canonical form: write 127.20.116.22"), "{all}");
        assert!(all.contains("same address"), "{all}");
    }

    #[test]
    fn no_secret_is_echoed_by_any_message() {
        for text in [
            "defaults:\n  auth: hunter2\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { password: [hunter2] }\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { hunter2: x }\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { password: hunter2, password: hunter2 }\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { password: \"hunter2 }\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { password: hunter2: x }\n",
            "defaults:\n  client_secret: { env: hunter2, secret: hunter2 }\ndevices:\n  a: { host: 1.1.1.1 }\n",
            "defaults:\n  auth: { password: { hunter2: 1 } }\ndevices:\n  a: { host: 1.1.1.1 }\n",
        ] {
            let all = render_problems(&problems(text));
            assert!(!all.contains("hunter2"), "{text}\n{all}");
        }
        // The typo is still explained.
        let all = render_problems(&problems(
            "defaults:\n  auth: { pasword_env: P }\ndevices:\n  a: { host: 1.1.1.1 }\n",
        ));
        assert!(all.contains("did you mean `password_env`?"), "{all}");
    }

    #[test]
    fn yaml_syntax_errors_are_explained() {
        let p = problems("devices:\n\ta: { host: 1.1.1.1 }\n");
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].message,
            "YAML does not allow tabs for indentation; use spaces"
        );
        assert_eq!(p[0].location.map(|l| l.line), Some(2));
        let all = render_problems(&problems("devices: [unclosed\n"));
        assert!(all.contains("not valid YAML"), "{all}");
    }

    #[test]
    fn control_characters_in_names_are_escaped_when_shown() {
        let p = problems(
            "defaults: { auth: { agent: true } }\ndevices:\n  \"a\\e[2Jb\\nc\\0\": { host: 1.1.1.1 }\n",
        );
        let all = render_problems(&p);
        assert!(
            all.contains("devices.a\\u{1b}[2Jb\\nc\\0: a device name"),
            "{all}"
        );
        assert!(!all.contains('\u{1b}') && !all.contains('\0'), "{all}");
        assert_eq!(all.lines().count(), 3, "{all}");
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
