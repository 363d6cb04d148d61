//! `roomkey status`: reads every selected device at once, read-only, and shows the fleet:
//! reachability, software release, external identity (valid, name, fingerprint of the
//! certificate in use, NotAfter, days left), E2EE mode, whether the vault records the
//! ClientSecret as seeded, and the journal's last run. Table (by urgency), JSON, CSV or
//! OpenMetrics; `--expiring-within` gives cron an exit code. Only `xStatus`,
//! `xConfiguration` reads and `Services Show` are sent (the session is opened read-only
//! and refuses anything else); the pure core is `roomkey::status`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::stream::StreamExt;
use roomkey::engine::prepare::{prepare, PreparedDevice};
use roomkey::engine::secrets::{SecretStore, VaultSecrets};
use roomkey::inventory::{self, AuthSource, ClientSecretSource, Device};
use roomkey::journal::{read_steps, StepStatus};
use roomkey::ssh::{ConnectOptions, HostKeyPolicy, SshError, TshSession};
use roomkey::status::{self, DeviceFacts, DeviceRow, LastRun, Reach};
use roomkey::tsh::{Reply, TshCommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Exit code when a selected device needs attention (`--expiring-within`).
pub const EXIT_ATTENTION: i32 = 2;

/// Arguments of `roomkey status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 read (and, with --expiring-within, every selected \
device has a valid identity that lasts longer); 1 invalid input; 2 with --expiring-within: a \
selected device is unreadable, has no valid identity, or its certificate expires within that \
time."
)]
pub struct StatusArgs {
    /// Inventory YAML file (paths in it are relative to it; state and vault default to
    /// `.roomkey/` beside it).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Select devices: names, globs, groups, comma-separated; `!pattern` excludes.
    #[arg(short, long, value_name = "PATTERNS")]
    pub limit: Option<String>,
    /// State directory (journal). Default: `.roomkey/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Vault file (for the `seeded` column and vault logins). Default: the inventory's
    /// `vault:` (`.roomkey/vault` beside it). Opened read-only, only when a passphrase is
    /// available or a device logs in with a vault password.
    #[arg(long, value_name = "FILE", env = "ROOMKEY_VAULT")]
    pub vault: Option<PathBuf>,
    /// File holding the vault passphrase (else ROOMKEY_VAULT_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Shorthand for `--format json` (versioned document).
    #[arg(long, conflicts_with_all = ["format", "csv", "openmetrics"])]
    pub json: bool,
    /// Shorthand for `--format csv`.
    #[arg(long, conflicts_with_all = ["format", "openmetrics"])]
    pub csv: bool,
    /// Shorthand for `--format openmetrics` (node_exporter textfile collector).
    #[arg(long, conflicts_with = "format")]
    pub openmetrics: bool,
    /// Write the output to FILE atomically instead of stdout (e.g.
    /// /var/lib/node_exporter/textfile/roomkey.prom).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write a self-contained HTML page of the fleet to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Exit 2 when a selected device is unreadable, has no valid identity, or its
    /// certificate expires within this time (`30d`, `4w`, `30`).
    #[arg(long, value_name = "DAYS", value_parser = status::parse_days)]
    pub expiring_within: Option<i64>,
    /// Devices read at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,
    /// Connect and per-command timeout in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
    /// Record host keys of devices not yet in known_hosts (a changed key still fails).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    Openmetrics,
}

/// Days used for the table's "expiring" state when `--expiring-within` is not given.
const DEFAULT_WARN_DAYS: i64 = 30;

pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let inv = match inventory::load(&args.inventory) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}\nnothing was sent to any device.");
            return Ok(1);
        }
    };
    let devices = match inventory::select(&inv, args.limit.as_deref(), &Default::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(1);
        }
    };
    for w in &inv.warnings {
        eprintln!("warning: {w}");
    }
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| inv.path.parent().unwrap_or(Path::new(".")).join(".roomkey"));
    let vault = open_vault(&args, &inv, &devices)?;
    // Seeding as the vault records it, by device (`None`: the vault was not opened).
    let seeded: Option<BTreeMap<String, bool>> = vault.as_ref().map(|v| {
        devices
            .iter()
            .map(|d| (d.name.clone(), v.device(&d.name).is_some_and(|s| s.seeded)))
            .collect()
    });
    let store: Option<Arc<dyn SecretStore>> =
        vault.map(|v| Arc::new(VaultSecrets::new(v)) as Arc<dyn SecretStore>);
    // Resolves logins exactly as `apply` does; a read-only playbook needs no certificate.
    let read_only = roomkey::playbook::parse(
        Path::new("(status)"),
        "name: status\nsteps:\n  - verify_external_identity: {}\n",
    )?;
    let prepared = match prepare(
        &inv.path,
        &devices,
        &read_only,
        store.as_deref(),
        OffsetDateTime::now_utc(),
    ) {
        Ok(p) => p.devices,
        Err(problems) => {
            eprintln!(
                "error: {}\nnothing was sent to any device.",
                inventory::render_problems(&problems)
            );
            return Ok(1);
        }
    };
    let timeout = Duration::from_secs(args.timeout);
    let policy = if args.accept_new_host_keys {
        HostKeyPolicy::AcceptNew
    } else {
        HostKeyPolicy::Strict
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let known_hosts = inv.known_hosts.clone();
    let now = OffsetDateTime::now_utc();
    let mut rows: Vec<DeviceRow> = runtime.block_on(async {
        futures::stream::iter(prepared.iter().map(|p| {
            let opts = connect_options(p, &known_hosts, policy, timeout);
            async move {
                let (reach, error, facts) = probe(&opts).await;
                DeviceRow::new(
                    &p.device.name,
                    &p.device.address(),
                    reach,
                    error,
                    facts,
                    now,
                )
            }
        }))
        .buffer_unordered(usize::from(args.concurrency))
        .collect()
        .await
    });
    for row in &mut rows {
        let Some(device) = devices.iter().find(|d| d.name == row.device) else {
            continue;
        };
        row.expected_identity = device.identity.clone();
        row.secret_seeded = match (&seeded, &device.client_secret) {
            (Some(s), ClientSecretSource::Vault) => s.get(&device.name).copied(),
            _ => None,
        };
        row.last_run = last_run(&state_dir, &device.name);
    }
    status::sort_by_urgency(&mut rows);

    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else if args.openmetrics {
        Format::Openmetrics
    } else {
        args.format
    };
    let warn_days = args.expiring_within.unwrap_or(DEFAULT_WARN_DAYS);
    let text = match format {
        Format::Table => status::render_table(&rows, warn_days),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&status::StatusDocument::new(&rows, now))?;
            s.push('\n');
            s
        }
        Format::Csv => status::render_csv(&rows),
        Format::Openmetrics => status::render_openmetrics(&rows, now),
    };
    match &args.output {
        Some(path) => roomkey::fsutil::write_atomic(path, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &args.html {
        let page = roomkey::report::render_status_html(&rows, now, warn_days);
        roomkey::fsutil::write_atomic(path, page.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match args.expiring_within {
        Some(days) => {
            let attention: Vec<&DeviceRow> =
                rows.iter().filter(|r| r.needs_attention(days)).collect();
            if attention.is_empty() {
                Ok(0)
            } else {
                if format != Format::Table || !std::io::stdout().is_terminal() {
                    eprintln!(
                        "{} of {} devices need attention within {days} days: {}",
                        attention.len(),
                        rows.len(),
                        attention
                            .iter()
                            .map(|r| status::printable(&r.device))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Ok(EXIT_ATTENTION)
            }
        }
        None => Ok(0),
    }
}

/// Opens the vault read-only when a passphrase is at hand without asking, or when a
/// device's login needs it (then the usual prompt applies).
fn open_vault(
    args: &StatusArgs,
    inv: &inventory::Inventory,
    devices: &[&Device],
) -> anyhow::Result<Option<roomkey::vault::Vault>> {
    let path = args.vault.clone().unwrap_or_else(|| inv.vault.clone());
    let login_needs_it = devices
        .iter()
        .any(|d| matches!(d.auth, AuthSource::PasswordVault { .. }));
    let have_passphrase = args.passphrase_file.is_some()
        || std::env::var_os(roomkey::vault::PASSPHRASE_ENV).is_some();
    let usable = have_passphrase && path.exists();
    if !(login_needs_it || usable) {
        return Ok(None);
    }
    let passphrase = roomkey::vault::read_passphrase(args.passphrase_file.as_deref())
        .context("reading the vault passphrase")?;
    let vault = roomkey::vault::Vault::open_read_only(&path, &passphrase)
        .with_context(|| super::apply::vault_advice(&path, &inv.path, args.vault.is_some()))?;
    Ok(Some(vault))
}

fn connect_options(
    p: &PreparedDevice,
    known_hosts: &Path,
    policy: HostKeyPolicy,
    timeout: Duration,
) -> ConnectOptions {
    ConnectOptions {
        host: p.device.host.clone(),
        port: p.device.port,
        username: p.device.username.clone(),
        auth: p.auth.clone(),
        known_hosts: known_hosts.to_path_buf(),
        host_key_policy: policy,
        connect_timeout: timeout,
        auth_timeout: timeout,
        command_timeout: timeout,
        keepalive_interval: Duration::from_secs(5),
        // The session itself refuses anything but reads.
        read_only: true,
        body_wait: roomkey::ssh::DEFAULT_BODY_WAIT,
    }
}

fn reach_of(e: &SshError) -> Reach {
    if e.is_auth() {
        Reach::AuthFailed
    } else if e.is_host_key() {
        Reach::HostKey
    } else if e.is_unreachable() {
        Reach::Unreachable
    } else {
        Reach::Error
    }
}

/// Logs in and sends the read-only commands; never anything else.
async fn probe(opts: &ConnectOptions) -> (Reach, Option<String>, DeviceFacts) {
    let mut session = match TshSession::connect(opts).await {
        Ok(s) => s,
        Err(e) => return (reach_of(&e), Some(e.to_string()), DeviceFacts::default()),
    };
    let mut read =
        async |cmd: Result<TshCommand, roomkey::tsh::EncodeError>| -> Result<Reply, String> {
            let cmd = cmd.map_err(|e| e.to_string())?;
            if !cmd.is_read_only() {
                return Err(format!("refusing to send {}", cmd.redacted_line()));
            }
            session.run(&cmd).await.map_err(|e| e.to_string())
        };
    let result = async {
        let software = read(TshCommand::xstatus(status::SOFTWARE)).await?;
        let identity = read(roomkey::engine::steps::external_identity_cmd()).await?;
        let e2ee = read(TshCommand::xconfiguration(status::E2EE_MODE)).await?;
        // The seed's older node form has no certificate chain: the fingerprint then comes
        // from the certificate list.
        let show = if roomkey::engine::steps::identity_certificate(&identity)
            .0
            .is_some()
        {
            None
        } else {
            Some(read(roomkey::engine::steps::show_cmd()).await?)
        };
        Ok::<_, String>(status::facts_from_replies(
            Some(&software),
            Some(&identity),
            show.as_ref(),
            Some(&e2ee),
        ))
    }
    .await;
    session.close().await;
    match result {
        Ok(facts) => (Reach::Ok, None, facts),
        Err(e) => (Reach::Error, Some(e), DeviceFacts::default()),
    }
}

/// The newest device record across the playbooks' journals.
fn last_run(state_dir: &Path, device: &str) -> Option<LastRun> {
    let journal = state_dir.join("journal");
    let mut best: Option<(u64, LastRun)> = None;
    for entry in std::fs::read_dir(&journal).ok()?.flatten() {
        let key = entry.file_name().to_string_lossy().into_owned();
        let Ok(steps) = read_steps(state_dir, &key, device) else {
            continue;
        };
        let Some(rec) = steps.get(roomkey::engine::DEVICE_RECORD) else {
            continue;
        };
        let at = rec.finished_ms.or(rec.started_ms).unwrap_or(0);
        if best.as_ref().is_some_and(|(t, _)| *t >= at) {
            continue;
        }
        let outcome = match rec.status {
            StepStatus::Done => "ok",
            StepStatus::Failed => "failed",
            StepStatus::InFlight => "in-flight",
            StepStatus::Skipped => "skipped",
            StepStatus::Pending => "pending",
        };
        let at_text = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        best = Some((
            at,
            LastRun {
                playbook: key,
                outcome: outcome.into(),
                at: at_text,
                error: rec.error.clone(),
            },
        ));
    }
    best.map(|(_, l)| l)
}
