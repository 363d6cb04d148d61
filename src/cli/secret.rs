//! `roomkey secret`: manage the encrypted ClientSecret vault (init, generate, set, show,
//! list, import, export, named credentials). Secret values reach stdout only through
//! `show` and the files only through `export`; everything else prints names and states.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use roomkey::secret::Secret;
use roomkey::vault::{self, Vault};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Which vault, and where its passphrase comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct VaultArgs {
    /// The vault file [default: with `-i`, the inventory's `vault:` (`.roomkey/vault` beside
    /// the inventory, where `apply` looks); without, `.roomkey/vault` here].
    #[arg(long, env = "ROOMKEY_VAULT")]
    pub vault: Option<PathBuf>,
    /// The inventory whose vault this is (and, for `generate` and `reset`, its devices).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Read the vault passphrase from this file (otherwise from ROOMKEY_VAULT_PASSPHRASE,
    /// otherwise a no-echo prompt on the terminal).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// `roomkey secret` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an empty vault (refuses to overwrite an existing file).
    Init {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Generate a random high-entropy ClientSecret for each named device (or each device
    /// of an inventory, optionally limited) that has none.
    Generate {
        #[command(flatten)]
        vault: VaultArgs,
        /// A device (repeatable); device names may also be given as arguments.
        #[arg(long = "device", value_name = "DEVICE", conflicts_with = "inventory")]
        devices: Vec<String>,
        #[arg(value_name = "DEVICE", conflicts_with = "inventory")]
        names: Vec<String>,
        /// With --inventory: select devices — names, globs (`room-1*`), groups,
        /// comma-separated; `!pattern` excludes.
        #[arg(short, long, value_name = "PATTERNS", requires = "inventory")]
        limit: Option<String>,
    },
    /// Set a device's ClientSecret, read from stdin or a no-echo prompt (the old one is
    /// kept as previous).
    Set {
        #[command(flatten)]
        vault: VaultArgs,
        #[arg(long, value_name = "DEVICE")]
        device: String,
        /// The device already holds this secret (it was seeded by other means).
        #[arg(long)]
        seeded: bool,
    },
    /// Print a device's current ClientSecret (e.g. to hand it to the room owner).
    Show {
        #[command(flatten)]
        vault: VaultArgs,
        #[arg(long, value_name = "DEVICE")]
        device: String,
        /// Print the pending secret of an unresolved rotation instead.
        #[arg(long)]
        pending: bool,
    },
    /// List devices with their secret state, seeding and age — never the secrets.
    List {
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Import `device,secret` rows from a CSV file or a YAML map (by extension), or from
    /// standard input with `-` (no plaintext file on disk: e.g. `pass show rooms | roomkey
    /// secret import -i inventory.yaml -`).
    Import {
        #[command(flatten)]
        vault: VaultArgs,
        /// A `.csv` file of `device,secret` rows, a `.yaml` map of `device: secret`, or `-`
        /// for standard input.
        file: PathBuf,
        /// The format of standard input (`-`): csv or yaml.
        #[arg(long, value_enum, default_value = "csv")]
        stdin_format: StdinFormat,
        /// The devices already hold these secrets.
        #[arg(long)]
        seeded: bool,
        /// Replace a device's different current secret (it is kept as previous).
        #[arg(long)]
        replace: bool,
    },
    /// Export every device's current secret to a new CSV or YAML file (0600, plaintext!).
    Export {
        #[command(flatten)]
        vault: VaultArgs,
        /// A new `.csv` or `.yaml` file (an existing file is never overwritten).
        file: PathBuf,
    },
    /// Manage named credentials (device SSH passwords referenced from the inventory).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Reset a device's ClientSecret (a populate JWE with an empty payload): the device is
    /// left with no secret, until the next `populate_secret: { initial: true }` seeds it
    /// again in plaintext. Asks for the device name as confirmation unless --yes.
    Reset(ResetArgs),
    /// Recover rooms that were factory-reset or replaced: every secret the vault holds for
    /// them moves to history (nothing is deleted), a fresh secret becomes current, and they
    /// are marked unseeded, so the next apply of a playbook with `populate_secret: {
    /// initial: true }` seeds them. Contacts no device. Takes device names, or an
    /// inventory's devices (optionally --limit'ed).
    ForgetDevice(ForgetArgs),
    /// Change one room's ClientSecret to a phrase its owner types at a no-echo prompt (or
    /// pipes in with --phrase-stdin) — never on the command line. Same guarantees as a
    /// rotation: the phrase is recorded as pending before it is sent, proofs decide what
    /// the device holds, and an interruption is resolved by rerunning this command with the
    /// same phrase or any playbook with `rotate_secret` or `populate_secret`.
    Change(ChangeArgs),
}

/// Arguments of `roomkey secret forget-device`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// Devices to forget (or, with -i, the inventory's devices, optionally --limit'ed).
    #[arg(value_name = "DEVICE", conflicts_with = "inventory")]
    pub names: Vec<String>,
    /// With --inventory: select devices — names, globs, groups, comma-separated; `!pattern`
    /// excludes.
    #[arg(short, long, value_name = "PATTERNS", requires = "inventory")]
    pub limit: Option<String>,
}

/// Arguments of `roomkey secret change`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// `-i` (required here): the inventory holding the device (address, login; its
    /// `vault:` unless --vault).
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The device whose secret changes.
    #[arg(long, value_name = "DEVICE")]
    pub device: String,
    /// Read the new phrase from stdin (one line) instead of prompting on the terminal.
    #[arg(long)]
    pub phrase_stdin: bool,
    /// Record the host key of a device not yet in known_hosts (otherwise refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// Arguments of `roomkey secret reset`.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The device to reset (in the inventory given with -i).
    #[arg(long, value_name = "DEVICE")]
    pub device: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Record the host key of a device not yet in known_hosts (otherwise refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

/// `roomkey secret credential` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CredentialCommand {
    /// Add or replace a credential, read from stdin or a no-echo prompt.
    Set {
        #[command(flatten)]
        vault: VaultArgs,
        name: String,
    },
    /// Remove a credential.
    Remove {
        #[command(flatten)]
        vault: VaultArgs,
        name: String,
    },
}

impl VaultArgs {
    /// The vault path: `--vault`/`ROOMKEY_VAULT`, else the inventory's (`-i`) `vault:`,
    /// else `.roomkey/vault` in the current directory.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(v) = &self.vault {
            return Ok(v.clone());
        }
        match &self.inventory {
            Some(inv) => Ok(roomkey::inventory::load(inv)?.vault),
            None => Ok(PathBuf::from(".roomkey/vault")),
        }
    }
}

pub fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Init { vault } => init(&vault),
        Command::Generate {
            vault,
            mut devices,
            names,
            limit,
        } => match vault.inventory.clone() {
            Some(inventory) => generate_for_inventory(vault, &inventory, limit.as_deref()),
            None => {
                devices.extend(names);
                generate(&vault, &devices)
            }
        },
        Command::Set {
            vault,
            device,
            seeded,
        } => set(&vault, &device, seeded),
        Command::Show {
            vault,
            device,
            pending,
        } => show(&vault, &device, pending),
        Command::List { vault } => list(&vault),
        Command::Import {
            vault,
            file,
            stdin_format,
            seeded,
            replace,
        } => import(&vault, &file, stdin_format, seeded, replace),
        Command::Export { vault, file } => export(&vault, &file),
        Command::Credential(CredentialCommand::Set { vault, name }) => {
            credential_set(&vault, &name)
        }
        Command::Credential(CredentialCommand::Remove { vault, name }) => {
            credential_remove(&vault, &name)
        }
        Command::Reset(args) => reset(args),
        Command::ForgetDevice(args) => forget_device(args),
        Command::Change(args) => change(args),
    }
}

fn open(args: &VaultArgs) -> anyhow::Result<Vault> {
    let pass = vault::read_passphrase(args.passphrase_file.as_deref())?;
    Ok(Vault::open(&args.path()?, &pass)?)
}

fn open_read_only(args: &VaultArgs) -> anyhow::Result<Vault> {
    let pass = vault::read_passphrase(args.passphrase_file.as_deref())?;
    Ok(Vault::open_read_only(&args.path()?, &pass)?)
}

fn init(args: &VaultArgs) -> anyhow::Result<i32> {
    let path = args.path()?;
    let pass = vault::read_new_passphrase(args.passphrase_file.as_deref())?;
    Vault::create(&path, &pass)?;
    eprintln!("created an empty vault at {}", path.display());
    Ok(0)
}

fn generate(args: &VaultArgs, devices: &[String]) -> anyhow::Result<i32> {
    if devices.is_empty() {
        bail!("name at least one device (--device D or D ...)");
    }
    for d in devices {
        vault::check_name(d)?;
    }
    let mut v = open(args)?;
    let mut made = 0;
    for d in devices {
        if v.current_secret(d).is_some() {
            eprintln!("{d}: already has a secret; left as is");
            continue;
        }
        v.set_current(d, vault::generate_phrase(), false, Some("generated"))?;
        eprintln!("{d}: generated a new secret");
        made += 1;
    }
    if made > 0 {
        v.save()?;
    }
    Ok(0)
}

/// `generate -i INVENTORY [--limit ...]`: a secret for every selected device whose
/// ClientSecret comes from the vault and which has none yet.
fn generate_for_inventory(
    mut args: VaultArgs,
    inventory: &Path,
    limit: Option<&str>,
) -> anyhow::Result<i32> {
    use roomkey::inventory::{self, ClientSecretSource};
    let inv = inventory::load(inventory)?;
    let selected = inventory::select(&inv, limit, &BTreeMap::new()).map_err(anyhow::Error::msg)?;
    if selected.is_empty() {
        eprintln!("no device selected; nothing to do");
        return Ok(0);
    }
    if args.vault.is_none() {
        args.vault = Some(inv.vault.clone());
    }
    let mut names = Vec::new();
    for d in selected {
        match &d.client_secret {
            ClientSecretSource::Vault => names.push(d.name.clone()),
            ClientSecretSource::Env(var) => eprintln!(
                "{}: its ClientSecret comes from environment variable {var}; skipped",
                d.name
            ),
        }
    }
    if names.is_empty() {
        eprintln!("no selected device takes its ClientSecret from the vault; nothing to do");
        return Ok(0);
    }
    generate(&args, &names)
}

/// Reads one secret from stdin when it is not a terminal, else from a no-echo prompt
/// (asked twice).
fn read_secret(what: &str) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = vault::prompt(&format!("{what}: "))?;
        let again = vault::prompt(&format!("{what} (again): "))?;
        if first != again {
            bail!("the two entries do not match");
        }
        Ok(first)
    } else {
        let mut text = Zeroizing::new(String::new());
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the secret from stdin")?;
        Ok(Secret::from_file_text(text))
    }
}

fn set(args: &VaultArgs, device: &str, seeded: bool) -> anyhow::Result<i32> {
    vault::check_name(device)?;
    let mut v = open(args)?;
    let secret = read_secret(&format!("New ClientSecret for {device}"))?;
    v.set_current(device, secret, seeded, Some("set"))?;
    v.save()?;
    eprintln!("{device}: secret set");
    Ok(0)
}

fn show(args: &VaultArgs, device: &str, pending: bool) -> anyhow::Result<i32> {
    let v = open_read_only(args)?;
    let Some(d) = v.device(device) else {
        bail!("device {device} is not in the vault");
    };
    let record = if pending { &d.pending } else { &d.current };
    let Some(record) = record else {
        bail!(
            "device {device} has no {} secret",
            if pending { "pending" } else { "current" }
        );
    };
    if !pending && d.pending.is_some() {
        eprintln!(
            "warning: {device} is in state {}: the device may hold the pending secret instead (see --pending)",
            d.state
        );
    } else if d.state != vault::SecretState::Ok {
        eprintln!("warning: {device} is in state {}", d.state);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", record.secret.expose())?;
    Ok(0)
}

/// A short age: `45s`, `12m`, `5h`, `3d`.
fn age(created: OffsetDateTime, now: OffsetDateTime) -> String {
    let s = (now - created).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The `list` table (pure, for tests): no secret value can reach it.
fn list_table(v: &Vault, now: OffsetDateTime) -> String {
    let mut rows = vec![[
        "DEVICE".to_owned(),
        "STATE".to_owned(),
        "SEEDED".to_owned(),
        "AGE".to_owned(),
        "PENDING".to_owned(),
        "PREVIOUS".to_owned(),
    ]];
    for name in v.device_names() {
        let Some(d) = v.device(name) else { continue };
        rows.push([
            name.to_owned(),
            d.state.to_string(),
            if d.seeded { "yes" } else { "no" }.to_owned(),
            d.current
                .as_ref()
                .map_or_else(|| "-".to_owned(), |r| age(r.created, now)),
            if d.pending.is_some() { "yes" } else { "no" }.to_owned(),
            d.previous.len().to_string(),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let creds: Vec<&str> = v.credential_names().collect();
    if !creds.is_empty() {
        out.push_str(&format!("credentials: {}\n", creds.join(", ")));
    }
    // What each release's canary showed about the populate plaintext.
    for (release, reading) in v.release_readings() {
        out.push_str(&format!("populate reading of {release}: {reading}\n"));
    }
    out
}

fn list(args: &VaultArgs) -> anyhow::Result<i32> {
    let v = open_read_only(args)?;
    if v.device_names().next().is_none() && v.credential_names().next().is_none() {
        eprintln!("the vault is empty");
        return Ok(0);
    }
    print!("{}", list_table(&v, OffsetDateTime::now_utc()));
    Ok(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Csv,
    Yaml,
}

/// The format of secrets read from standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StdinFormat {
    Csv,
    Yaml,
}

fn file_kind(path: &Path) -> anyhow::Result<FileKind> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(FileKind::Csv),
        Some("yaml" | "yml") => Ok(FileKind::Yaml),
        _ => bail!(
            "{}: use a .csv or .yaml/.yml file name to choose the format",
            path.display()
        ),
    }
}

/// Parses one CSV line into fields (RFC 4180 quoting, no line breaks inside fields).
fn csv_fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field"),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// `device,secret` rows; an optional `device,secret` header, blank lines and `#` comments
/// are skipped. Errors name the line, never its content.
fn parse_csv(text: &str) -> anyhow::Result<Vec<(String, Secret)>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = csv_fields(line).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        if fields.len() != 2 {
            bail!(
                "line {n}: expected 2 fields (device,secret), found {}",
                fields.len()
            );
        }
        let secret = Secret::new(fields.pop().unwrap_or_default());
        let device = fields.pop().unwrap_or_default();
        if rows.is_empty()
            && device.eq_ignore_ascii_case("device")
            && secret.expose().eq_ignore_ascii_case("secret")
        {
            continue;
        }
        rows.push((device, secret));
    }
    Ok(rows)
}

fn csv_quote(field: &str) -> String {
    if field.contains([',', '"'])
        || field.starts_with(' ')
        || field.ends_with(' ')
        || field.starts_with('#')
    {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn to_csv(rows: &[(&str, &Secret)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from("device,secret\n"));
    for (d, s) in rows {
        out.push_str(&csv_quote(d));
        out.push(',');
        out.push_str(&csv_quote(s.expose()));
        out.push('\n');
    }
    out
}

/// A YAML map `device: secret`. Errors give the position only (messages may quote values).
fn parse_yaml(text: &str) -> anyhow::Result<Vec<(String, Secret)>> {
    let map: BTreeMap<String, String> = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        anyhow::anyhow!("not a YAML map of device: secret{at}")
    })?;
    Ok(map.into_iter().map(|(d, s)| (d, Secret::new(s))).collect())
}

fn to_yaml(rows: &[(&str, &Secret)]) -> anyhow::Result<Zeroizing<String>> {
    let map: BTreeMap<&str, &str> = rows.iter().map(|(d, s)| (*d, s.expose())).collect();
    Ok(Zeroizing::new(
        serde_yaml::to_string(&map).map_err(|_| anyhow::anyhow!("cannot write YAML"))?,
    ))
}

fn import(
    args: &VaultArgs,
    file: &Path,
    stdin_format: StdinFormat,
    seeded: bool,
    replace: bool,
) -> anyhow::Result<i32> {
    let from_stdin = file == Path::new("-");
    let (kind, text) = if from_stdin {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the secrets from standard input")?;
        let kind = match stdin_format {
            StdinFormat::Csv => FileKind::Csv,
            StdinFormat::Yaml => FileKind::Yaml,
        };
        (kind, text)
    } else {
        let kind = file_kind(file)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?,
        );
        (kind, text)
    };
    let file = if from_stdin {
        Path::new("(standard input)")
    } else {
        file
    };
    let rows = match kind {
        FileKind::Csv => parse_csv(&text),
        FileKind::Yaml => parse_yaml(&text),
    }
    .with_context(|| format!("{}", file.display()))?;
    let mut seen = std::collections::BTreeSet::new();
    for (d, s) in &rows {
        vault::check_name(d)?;
        vault::check_secret(d, s)?;
        if !seen.insert(d.as_str()) {
            bail!("{}: device {d} appears twice", file.display());
        }
    }
    let mut v = open(args)?;
    let conflicts: Vec<&str> = rows
        .iter()
        .filter(|(d, s)| v.current_secret(d).is_some_and(|c| c != s))
        .map(|(d, _)| d.as_str())
        .collect();
    if !conflicts.is_empty() && !replace {
        bail!(
            "these devices already have a different secret (nothing imported; use --replace to replace them, the old ones are kept as previous): {}",
            conflicts.join(", ")
        );
    }
    let n = rows.len();
    for (d, s) in rows {
        v.set_current(&d, s, seeded, Some("imported"))?;
    }
    v.save()?;
    eprintln!(
        "imported {n} device secret(s) into {}",
        args.path()?.display()
    );
    if !from_stdin {
        eprintln!(
            "warning: {} holds plaintext secrets; delete it securely now",
            file.display()
        );
    }
    Ok(0)
}

fn export(args: &VaultArgs, file: &Path) -> anyhow::Result<i32> {
    let kind = file_kind(file)?;
    if file.symlink_metadata().is_ok() {
        bail!(
            "{}: already exists; refusing to overwrite it",
            file.display()
        );
    }
    let v = open_read_only(args)?;
    let rows: Vec<(&str, &Secret)> = v
        .device_names()
        .filter_map(|d| v.current_secret(d).map(|s| (d, s)))
        .collect();
    let text = match kind {
        FileKind::Csv => to_csv(&rows),
        FileKind::Yaml => to_yaml(&rows)?,
    };
    vault::write_new(file, text.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!(
        "warning: {} holds {} plaintext secret(s) (mode 0600); keep it safe and delete it when done",
        file.display(),
        rows.len()
    );
    Ok(0)
}

fn credential_set(args: &VaultArgs, name: &str) -> anyhow::Result<i32> {
    vault::check_name(name)?;
    let mut v = open(args)?;
    let secret = read_secret(&format!("Credential {name}"))?;
    v.set_credential(name, secret)?;
    v.save()?;
    eprintln!("credential {name} set");
    Ok(0)
}

fn credential_remove(args: &VaultArgs, name: &str) -> anyhow::Result<i32> {
    let mut v = open(args)?;
    if !v.remove_credential(name) {
        bail!("no credential named {name}");
    }
    v.save()?;
    eprintln!("credential {name} removed");
    Ok(0)
}

/// Asks for the device name on the terminal; `--yes` skips it, and without a terminal
/// `--yes` is required.
fn confirm_reset(args: &ResetArgs) -> anyhow::Result<()> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "resetting {} leaves it without a ClientSecret; confirm with --yes",
            args.device
        );
    }
    eprint!(
        "Resetting leaves {} without a ClientSecret (its JWEs stop working until it is seeded \
         again, in plaintext). Type the device name to confirm: ",
        args.device
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != args.device {
        bail!("not confirmed; nothing was sent");
    }
    Ok(())
}

/// The inventory (`-i`, required: `missing_inventory` says so) and the one device a
/// single-device secret command acts on, refused unless its ClientSecret is kept in the
/// vault (`env_refusal` says why); the vault path defaults to the inventory's.
fn vault_device(
    vault: &mut VaultArgs,
    name: &str,
    missing_inventory: &str,
    env_refusal: &str,
) -> anyhow::Result<(roomkey::inventory::Inventory, roomkey::inventory::Device)> {
    let Some(inventory_path) = vault.inventory.clone() else {
        bail!("{missing_inventory}");
    };
    let inv = roomkey::inventory::load(&inventory_path)?;
    let Some(device) = inv.devices.iter().find(|d| d.name == name).cloned() else {
        bail!("device {name} is not in {}", inventory_path.display());
    };
    if let roomkey::inventory::ClientSecretSource::Env(var) = &device.client_secret {
        bail!(
            "{}: its ClientSecret comes from environment variable {var}; {env_refusal}",
            device.name
        );
    }
    if vault.vault.is_none() {
        vault.vault = Some(inv.vault.clone());
    }
    Ok((inv, device))
}

/// Preflight of one device for a one-step playbook, and how to connect to it.
fn prepare_one(
    inv: &roomkey::inventory::Inventory,
    device: &roomkey::inventory::Device,
    pb: &roomkey::playbook::Playbook,
    store: &roomkey::engine::secrets::VaultSecrets,
    accept_new_host_keys: bool,
) -> anyhow::Result<(
    roomkey::engine::PreparedDevice,
    roomkey::ssh::ConnectOptions,
)> {
    use roomkey::ssh::{ConnectOptions, HostKeyPolicy};
    let prepared = roomkey::engine::prepare::prepare(
        &inv.path,
        &[device],
        pb,
        Some(store),
        OffsetDateTime::now_utc(),
    )
    .map_err(|p| anyhow::anyhow!(roomkey::inventory::render_problems(&p)))?;
    let Some(prepared) = prepared.devices.into_iter().next() else {
        bail!("{}: preflight produced no device", device.name);
    };
    let mut opts = ConnectOptions::new(
        device.host.clone(),
        device.username.clone(),
        prepared.auth.clone(),
    );
    opts.port = device.port;
    opts.known_hosts = inv.known_hosts.clone();
    if accept_new_host_keys {
        opts.host_key_policy = HostKeyPolicy::AcceptNew;
    }
    Ok((prepared, opts))
}

/// `roomkey secret reset`: empties the device's ClientSecret with a populate JWE keyed from
/// the current one. Crash-safe bookkeeping: after connecting and before sending, the vault
/// stops recording the device as seeded (the secret itself stays current), so whatever
/// happens next, `populate_secret: { initial: true }` settles it — the plaintext seeding
/// lands on a reset device, or is refused by one that still holds the secret and a
/// proof (a Deactivate JWE that changes nothing) shows it. A refusal (nothing changed on
/// the device) restores the seeded mark.
fn reset(mut args: ResetArgs) -> anyhow::Result<i32> {
    use roomkey::engine::secrets::{SecretStore, VaultSecrets};
    use roomkey::ssh::TshSession;

    let (inv, device) = vault_device(
        &mut args.vault,
        &args.device,
        "name the inventory holding the device with -i/--inventory",
        "reset works on secrets kept in the vault",
    )?;
    let device = &device;
    let v = open(&args.vault)?;
    match v.device(&device.name) {
        None => bail!("{}: the vault has no ClientSecret for it", device.name),
        Some(d) if d.pending.is_some() || d.state != vault::SecretState::Ok => bail!(
            "{}: secret state is {}; resolve it first (rerun the rotation, or record the \
             secret it holds with `roomkey secret set --seeded`)",
            device.name,
            d.state
        ),
        Some(d) if !d.seeded => bail!(
            "{}: not recorded as seeded; there is nothing to reset",
            device.name
        ),
        Some(_) => {}
    }
    confirm_reset(&args)?;
    let store = VaultSecrets::new(v);
    let current = store.current(device)?;
    let pb = roomkey::playbook::parse(
        Path::new("secret-reset"),
        "name: secret-reset\nsteps:\n  - rotate_secret: {}\n",
    )?;
    let (_prepared, opts) = prepare_one(&inv, device, &pb, &store, args.accept_new_host_keys)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let name = device.name.clone();
    let outcome = runtime.block_on(async {
        let kdf = roomkey::kdf::KdfPool::new(1);
        let jwe = kdf
            .seal(
                roomkey::jwe::Action::Populate,
                device.enc,
                &current,
                Zeroizing::new(Vec::new()),
            )
            .await?;
        let cmd = roomkey::engine::steps::populate_command(&Secret::new(jwe))?;
        let mut session = TshSession::connect(&opts).await?;
        // Durable before the command leaves: the vault no longer claims a seeded device.
        if let Err(e) = store
            .update(|v| v.set_current(&name, current.clone(), false, None))
            .await
        {
            session.close().await;
            return Err(anyhow::Error::from(e));
        }
        let reply = session.run(&cmd).await;
        session.close().await;
        Ok::<_, anyhow::Error>((cmd, reply))
    });
    let (cmd, reply) = outcome?;
    match reply {
        Ok(reply) if reply.is_ok() => {
            eprintln!(
                "{name}: ClientSecret reset; the device holds none now. The vault keeps the \
                 old secret as current, not seeded: seed it again with `populate_secret: \
                 {{ initial: true }}` (plaintext), after `roomkey secret set` if you want a \
                 new one."
            );
            Ok(0)
        }
        Ok(reply) => {
            // A refusal changed nothing on the device: it is as seeded as it was.
            runtime.block_on(store.update(|v| v.mark_seeded(&name)))?;
            eprintln!(
                "{name}: the device refused `{}`: {}",
                cmd.redacted_line(),
                roomkey::display::escape(reply.reason().unwrap_or("no reason given"))
            );
            Ok(2)
        }
        Err(e) => {
            eprintln!(
                "{name}: the reset's outcome is unknown ({}); the vault now records the device \
                 as not seeded — run a playbook with `populate_secret: {{ initial: true }}` to \
                 settle it",
                roomkey::display::escape(&e.to_string())
            );
            Ok(3)
        }
    }
}

/// `roomkey secret forget-device`: the rooms were factory-reset or replaced. Every name is
/// checked before anything is written; the vault is saved once.
fn forget_device(mut args: ForgetArgs) -> anyhow::Result<i32> {
    let mut names = args.names.clone();
    if let Some(inventory) = &args.vault.inventory {
        let inv = roomkey::inventory::load(inventory)?;
        let selected = roomkey::inventory::select(&inv, args.limit.as_deref(), &BTreeMap::new())
            .map_err(anyhow::Error::msg)?;
        for d in selected {
            match &d.client_secret {
                roomkey::inventory::ClientSecretSource::Vault => names.push(d.name.clone()),
                roomkey::inventory::ClientSecretSource::Env(var) => eprintln!(
                    "{}: its ClientSecret comes from environment variable {var}; skipped",
                    d.name
                ),
            }
        }
        if args.vault.vault.is_none() {
            args.vault.vault = Some(inv.vault.clone());
        }
    }
    if names.is_empty() {
        bail!("name at least one device (DEVICE ..., or -i INVENTORY [--limit PATTERNS])");
    }
    let mut v = open(&args.vault)?;
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| v.device(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "not in the vault: {}; nothing was changed",
            missing.join(", ")
        );
    }
    for name in &names {
        v.forget_device(name)?;
    }
    v.save()?;
    for name in &names {
        eprintln!(
            "{name}: forgotten — its old secrets are kept in the vault's history, a fresh \
             secret is current and not seeded; the next apply with `populate_secret: {{ \
             initial: true }}` seeds it (in plaintext: do it on a network you trust)"
        );
    }
    Ok(0)
}

/// Reads the owner's new phrase: one line from stdin with --phrase-stdin, else a no-echo
/// prompt asked twice. Never from the command line (it would be in `ps` and the history).
fn read_owner_phrase(args: &ChangeArgs) -> anyhow::Result<Secret> {
    if args.phrase_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the phrase from stdin")?;
        return Ok(Secret::from_file_text(line));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt on: pipe the phrase in with --phrase-stdin");
    }
    let first = vault::prompt(&format!("New ClientSecret phrase for {}: ", args.device))?;
    let again = vault::prompt(&format!(
        "New ClientSecret phrase for {} (again): ",
        args.device
    ))?;
    if first != again {
        bail!("the two entries do not match; nothing was changed");
    }
    Ok(first)
}

/// `roomkey secret change`: rotates one device to an owner's phrase with the engine's own
/// rotation step (pending recorded before sending, candidates, proofs), then proves it.
fn change(mut args: ChangeArgs) -> anyhow::Result<i32> {
    use roomkey::engine::secrets::{SecretStore, VaultSecrets};
    use roomkey::engine::steps::{self, StepContext, StepError};
    use roomkey::ssh::TshSession;

    let (inv, device) = vault_device(
        &mut args.vault,
        &args.device,
        "`roomkey secret change` needs the inventory holding the device: -i FILE",
        "changing it needs the vault",
    )?;
    let device = &device;
    let phrase = read_owner_phrase(&args)?;
    vault::check_secret(&device.name, &phrase)?;
    if let Err(why) = vault::phrase::check_owner_phrase(&phrase) {
        bail!(
            "{}: the phrase is refused: {why}; nothing was changed",
            device.name
        );
    }
    let v = open(&args.vault)?;
    let begin = match v.device(&device.name) {
        None => bail!("{}: the vault has no ClientSecret for it", device.name),
        Some(d) if d.current.as_ref().is_some_and(|c| c.secret == phrase) => {
            bail!("{}: that is already its current secret", device.name)
        }
        // Rerun after an interruption with the same phrase: resolve and finish it.
        Some(d) if d.pending.as_ref().is_some_and(|p| p.secret == phrase) => false,
        Some(d) if d.pending.is_some() || d.state != vault::SecretState::Ok => bail!(
            "{}: secret state is {}; resolve it first (rerun the rotation playbook, or this \
             command with the phrase of the unfinished change)",
            device.name,
            d.state
        ),
        Some(d) if !d.seeded => bail!(
            "{}: not recorded as seeded; seed it first (`populate_secret: {{ initial: true }}`)",
            device.name
        ),
        Some(_) => true,
    };
    let store = VaultSecrets::new(v);
    let pb = roomkey::playbook::parse(
        Path::new("secret-change"),
        "name: secret-change\nsteps:\n  - rotate_secret: {}\n  - populate_secret: {}\n",
    )?;
    let (prepared, opts) = prepare_one(&inv, device, &pb, &store, args.accept_new_host_keys)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let name = device.name.clone();
    let result = runtime.block_on(async {
        let kdf = roomkey::kdf::KdfPool::new(1);
        let mut session = TshSession::connect(&opts).await?;
        if begin {
            // The write-ahead record: the phrase is pending, on disk, before anything that
            // could change the device is sent.
            if let Err(e) = store
                .update(|v| v.begin_rotation(&name, phrase.clone()))
                .await
            {
                session.close().await;
                return Err(anyhow::Error::from(e));
            }
        }
        let outputs = roomkey::journal::StepOutputs::default();
        let mut notes = Vec::new();
        let mut outcome = Ok(());
        // One salt and derivation per session, as the engine does.
        let keys = roomkey::kdf::SessionKeys::new(kdf.clone(), false);
        for (index, step) in pb.steps.iter().enumerate() {
            let mut ctx = StepContext {
                session: &mut session,
                prepared: &prepared,
                kdf: &keys,
                secrets: &store as &dyn SecretStore,
                outputs: &outputs,
                check_mode: false,
                resuming: false,
                previously_done: false,
                changed_earlier: index > 0,
                step_outputs: &outputs,
                connect: &opts,
                index,
            };
            // The vault's pending secret and candidates are this command's write-ahead
            // record; there is no journal to write.
            match steps::execute(
                step,
                &mut ctx,
                &mut |_: &str, _: roomkey::journal::StepOutputs| Ok(()),
            )
            .await
            {
                Ok(done) => notes.extend(done.note),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        session.close().await;
        Ok::<_, anyhow::Error>((notes, outcome))
    });
    match result {
        Ok((notes, Ok(()))) => {
            for n in notes {
                eprintln!("{name}: {n}");
            }
            eprintln!("{name}: ClientSecret changed to the owner's phrase");
            Ok(0)
        }
        Ok((_, Err(StepError::Ssh(e)))) => {
            eprintln!(
                "{name}: the change's outcome is unknown ({e}); the vault keeps every secret \
                 the device may hold — rerun this command with the same phrase to settle it"
            );
            Ok(3)
        }
        Ok((_, Err(e))) => {
            eprintln!("{name}: {e}");
            Ok(2)
        }
        Err(e) => {
            eprintln!("{name}: nothing was changed: {e:#}");
            Ok(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_with_awkward_values() {
        let a = Secret::new("plain");
        let b = Secret::new("with,comma and \"quote\"");
        let c = Secret::new(" padded ");
        let text = to_csv(&[("r1", &a), ("r2", &b), ("r3", &c)]);
        let rows = parse_csv(&text).unwrap();
        let got: Vec<(&str, &str)> = rows.iter().map(|(d, s)| (d.as_str(), s.expose())).collect();
        assert_eq!(
            got,
            [
                ("r1", "plain"),
                ("r2", "with,comma and \"quote\""),
                ("r3", " padded ")
            ]
        );
    }

    #[test]
    fn csv_skips_header_blank_and_comments_and_reports_lines_only() {
        let rows = parse_csv("device,secret\r\n\n# note\nr1,s1\r\n").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.expose(), "s1");
        let err = parse_csv("r1,s1\nr2,topsecret,extra\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"));
        assert!(!err.contains("topsecret"));
        let err = parse_csv("r1,\"topsecret\n").unwrap_err().to_string();
        assert!(!err.contains("topsecret"));
    }

    #[test]
    fn yaml_round_trip_and_errors_without_values() {
        let a = Secret::new("yes");
        let b = Secret::new("12345");
        let text = to_yaml(&[("r1", &a), ("r2", &b)]).unwrap();
        let rows = parse_yaml(&text).unwrap();
        assert_eq!(rows[0].1.expose(), "yes");
        assert_eq!(rows[1].1.expose(), "12345");
        let err = parse_yaml("r1: [topsecret]\n").unwrap_err().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn ages() {
        let t = time::macros::datetime!(2026-01-01 00:00 UTC);
        assert_eq!(age(t, t + time::Duration::seconds(5)), "5s");
        assert_eq!(age(t, t + time::Duration::minutes(30)), "30m");
        assert_eq!(age(t, t + time::Duration::hours(5)), "5h");
        assert_eq!(age(t, t + time::Duration::days(40)), "40d");
        assert_eq!(age(t, t - time::Duration::days(1)), "0s");
    }

    #[test]
    fn file_kinds() {
        assert_eq!(file_kind(Path::new("a.CSV")).unwrap(), FileKind::Csv);
        assert_eq!(file_kind(Path::new("a.yml")).unwrap(), FileKind::Yaml);
        assert!(file_kind(Path::new("a.txt")).is_err());
    }
}
