//! `roomkey apply` and `roomkey plan`: load and validate the inventory and playbook, select
//! devices, preflight every one of them (nothing is sent unless all pass), then run the
//! engine with a reporter, print the recap and exit with a documented code.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use roomkey::display::{escape, escape_text};
use roomkey::engine::events::exit;
use roomkey::engine::prepare::{prepare, Prepared};
use roomkey::engine::secrets::{EnvSecrets, SecretStore, VaultSecrets};
use roomkey::engine::{self, Reporter, RunConfig, RunSummary};
use roomkey::inventory::{self, ClientSecretSource, Device, Inventory};
use roomkey::journal::{read_steps, StateLock, StepStatus};
use roomkey::kdf::KdfPool;
use roomkey::playbook::{self, HostKeyPolicySetting, Playbook};
use roomkey::report;

/// Options shared by `apply` and `plan`.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Inventory YAML file.
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Playbook YAML file (see playbooks/).
    #[arg(value_name = "PLAYBOOK")]
    pub playbook: PathBuf,
    /// Select devices: names, globs (`room-1*`), groups, `@failed` (the last run failed
    /// it: a step, a refused login, a changed host key, unreachable) or `@unfinished` (from
    /// the journal), comma-separated; `!pattern` excludes.
    #[arg(short, long, value_name = "PATTERNS")]
    pub limit: Option<String>,
    /// State directory (journal, lock). Default: `.roomkey/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Vault file. Default: the inventory's `vault:` or `.roomkey/vault` beside it.
    #[arg(long, value_name = "FILE", env = "ROOMKEY_VAULT")]
    pub vault: Option<PathBuf>,
    /// File holding the vault passphrase (else ROOMKEY_VAULT_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// No longer needed, kept so older scripts work: every run reads each device and redoes
    /// whatever is not as wanted, and each run rotates once.
    #[arg(long, hide = true)]
    pub fresh: bool,
}

/// Arguments of `roomkey apply`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 all devices done; 1 invalid input, nothing sent; \
2 some devices failed; 3 some devices unreachable (none failed); 4 stopped early (Ctrl-C, a \
failure budget, the maintenance window), rerun to resume."
)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connect and run only read-only commands; report what would change.
    #[arg(long)]
    pub check: bool,
    /// Record host keys of devices not yet in known_hosts (a changed key still fails).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Progress display: auto (bars on a terminal, lines otherwise), plain, json.
    #[arg(long, value_enum, default_value = "auto")]
    pub output: Output,
    /// When a device's maintenance window is closed, wait for it to open instead of
    /// leaving the device for the next run.
    #[arg(long)]
    pub wait_for_window: bool,
    /// Write a versioned JSON report of the run to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a self-contained HTML report of the run to FILE (summary, every device's
    /// outcome, certificate expiry across the fleet).
    #[arg(long, value_name = "FILE")]
    pub report_html: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: PolicyOverrides,
    /// Start a new run even though the previous one was interrupted (by default, rerunning
    /// continues the interrupted run: devices it finished are not redone and its once-per-
    /// run actions, such as a rotation, are not repeated).
    #[arg(long)]
    pub new_run: bool,
    /// Send again a step whose outcome is unknown (a raw xcommand found in flight), after
    /// checking the device by hand: the step id the failure names, or a step kind.
    #[arg(long, value_name = "STEP")]
    pub confirm_resend: Vec<String>,
}

/// Playbook policy overridden from the command line (what Ansible users pass as flags).
#[derive(Debug, Default, clap::Args)]
pub struct PolicyOverrides {
    /// Devices worked on at once (overrides `policy.concurrency`; Ansible's --forks).
    #[arg(long, visible_alias = "forks", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Extra connection attempts per device (overrides `policy.retries`).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// TCP connect + SSH handshake timeout, e.g. 10s (overrides `policy.connect_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = roomkey::playbook::parse_duration)]
    pub connect_timeout: Option<std::time::Duration>,
    /// Per-command timeout, e.g. 30s (overrides `policy.command_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = roomkey::playbook::parse_duration)]
    pub command_timeout: Option<std::time::Duration>,
    /// Stop the run after more than N failed devices (overrides `max_failures`).
    #[arg(long, value_name = "N")]
    pub max_failures: Option<usize>,
    /// Stop the run at the first failed device (overrides `any_errors_fatal`).
    #[arg(long)]
    pub any_errors_fatal: bool,
}

impl PolicyOverrides {
    /// Applies the flags given to the playbook's policy.
    pub fn apply(&self, playbook: &mut Playbook) {
        let policy = &mut playbook.policy;
        if let Some(n) = self.concurrency {
            policy.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.retries {
            policy.retries = n;
        }
        if let Some(d) = self.connect_timeout {
            policy.connect_timeout = d;
        }
        if let Some(d) = self.command_timeout {
            policy.command_timeout = d;
        }
        if let Some(n) = self.max_failures {
            playbook.budget.max_failures = Some(n);
        }
        if self.any_errors_fatal {
            playbook.budget.any_errors_fatal = true;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Auto,
    Plain,
    Json,
}

/// Arguments of `roomkey plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Loaded and validated inputs.
pub struct Loaded {
    pub inventory: Inventory,
    pub playbook: Playbook,
    pub state_dir: PathBuf,
}

/// Loads inventory and playbook, reporting every problem of both at once — and, when the
/// inventory has problems but the playbook has none, the preflight problems (certificates,
/// keys, logins) of the selected devices the inventory describes soundly, so a bad
/// inventory does not hide them until the next run.
pub fn load(target: &Target) -> Result<Loaded, String> {
    let inv = inventory::load(&target.inventory);
    let pb = playbook::load(&target.playbook);
    let (inv, pb) = match (inv, pb) {
        (Ok(inventory), Ok(playbook)) => {
            let state_dir = target.state_dir.clone().unwrap_or_else(|| {
                inventory
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(".roomkey")
            });
            return Ok(Loaded {
                inventory,
                playbook,
                state_dir,
            });
        }
        other => other,
    };
    let mut problems = Vec::new();
    let mut errors = Vec::new();
    match inv {
        Err(inventory::InventoryError::Invalid(p)) => problems.extend(p),
        Err(e) => errors.push(e.to_string()),
        Ok(_) => {}
    }
    match &pb {
        Err(playbook::PlaybookError::Invalid(p)) => problems.extend(p.iter().cloned()),
        Err(e) => errors.push(e.to_string()),
        Ok(playbook) => {
            if let Ok((Some(partial), _)) = inventory::load_partial(&target.inventory) {
                let selected =
                    inventory::select(&partial, target.limit.as_deref(), &BTreeMap::new());
                if let Ok(devices) = selected {
                    if let Err(p) = prepare(
                        &partial.path,
                        &devices,
                        playbook,
                        None,
                        time::OffsetDateTime::now_utc(),
                    ) {
                        problems.extend(p);
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        errors.insert(0, inventory::render_problems(&problems));
    }
    Err(errors.join("\n"))
}

/// `@failed` and `@unfinished` from the journal: how each device's last run ended, and
/// which devices the latest run (interrupted or not) has not finished.
pub fn named_sets(loaded: &Loaded) -> BTreeMap<String, BTreeSet<String>> {
    let key = engine::playbook_key(&loaded.playbook);
    let latest = roomkey::journal::RunLog::open(&loaded.state_dir, &key, true)
        .ok()
        .and_then(|log| log.latest());
    let mut failed = BTreeSet::new();
    let mut unfinished = BTreeSet::new();
    for d in &loaded.inventory.devices {
        let steps = read_steps(&loaded.state_dir, &key, &d.name).unwrap_or_default();
        let device = steps.get(engine::DEVICE_RECORD);
        if device.is_some_and(|s| s.status == StepStatus::Failed) {
            failed.insert(d.name.clone());
        }
        let finished = device.is_some_and(|s| {
            Some(&s.run) == latest.as_ref()
                && matches!(s.status, StepStatus::Done | StepStatus::Failed)
        });
        if !finished {
            unfinished.insert(d.name.clone());
        }
    }
    BTreeMap::from([
        ("failed".to_string(), failed),
        ("unfinished".to_string(), unfinished),
    ])
}

fn needs_vault(devices: &[&Device], playbook: &Playbook) -> bool {
    let secret_from_vault = playbook.needs_client_secret()
        && devices
            .iter()
            .any(|d| d.client_secret == ClientSecretSource::Vault);
    let login_from_vault = devices
        .iter()
        .any(|d| matches!(d.auth, inventory::AuthSource::PasswordVault { .. }));
    let rotates = playbook
        .steps
        .iter()
        .any(|s| matches!(s, playbook::Step::RotateSecret(_)));
    secret_from_vault || login_from_vault || rotates || playbook.needs_vault_credentials()
}

/// Opens the secret store the selected devices need (the vault only when needed).
/// `read_only` (plan, `apply --check`) opens a snapshot without the vault's writer lock.
pub fn open_store(
    target: &Target,
    inventory: &Inventory,
    devices: &[&Device],
    playbook: &Playbook,
    read_only: bool,
) -> anyhow::Result<Arc<dyn SecretStore>> {
    open_store_with(
        target.vault.as_deref(),
        target.passphrase_file.as_deref(),
        inventory,
        devices,
        playbook,
        read_only,
    )
}

/// [`open_store`] for a command that has no [`Target`] (`probe`): `vault` is `--vault` /
/// `ROOMKEY_VAULT`, else the inventory's; `passphrase_file` as `--passphrase-file`.
pub fn open_store_with(
    vault: Option<&Path>,
    passphrase_file: Option<&Path>,
    inventory: &Inventory,
    devices: &[&Device],
    playbook: &Playbook,
    read_only: bool,
) -> anyhow::Result<Arc<dyn SecretStore>> {
    if !needs_vault(devices, playbook) {
        return Ok(Arc::new(EnvSecrets::new()));
    }
    let path = vault
        .map(Path::to_path_buf)
        .unwrap_or_else(|| inventory.vault.clone());
    let passphrase =
        roomkey::vault::read_passphrase(passphrase_file).context("reading the vault passphrase")?;
    let opened = if read_only {
        roomkey::vault::Vault::open_read_only(&path, &passphrase)
    } else {
        roomkey::vault::Vault::open(&path, &passphrase)
    }
    .with_context(|| vault_advice(&path, &inventory.path, vault.is_some()))?;
    Ok(Arc::new(VaultSecrets::new(opened)))
}

/// Which vault was opened and why that one: every error that names the vault says where
/// the path came from and the command that creates it there.
pub fn vault_advice(path: &Path, inventory: &Path, from_flag: bool) -> String {
    let origin = if from_flag {
        "from --vault / ROOMKEY_VAULT".to_string()
    } else {
        format!(
            "the inventory's `vault:`, default `.roomkey/vault` beside {} (paths in an \
             inventory are relative to it)",
            inventory.display()
        )
    };
    let create = if from_flag {
        format!("roomkey secret init --vault {}", path.display())
    } else {
        format!("roomkey secret init -i {}", inventory.display())
    };
    format!(
        "opening the vault {} ({origin}); to create it there: `{create}`",
        path.display()
    )
}

fn select<'a>(loaded: &'a Loaded, limit: Option<&str>) -> Result<Vec<&'a Device>, String> {
    let sets = named_sets(loaded);
    if limit.is_some_and(names_failed) && !any_previous_run(loaded) {
        // An empty `@failed` would otherwise read as "nothing failed" and exit 0.
        return Err(format!(
            "--limit @failed: no previous run of playbook '{}' is recorded in {}; run it \
             without `--limit @failed` first",
            loaded.playbook.name,
            loaded.state_dir.join("journal").display()
        ));
    }
    inventory::select(&loaded.inventory, limit, &sets)
}

/// Whether a `--limit` value uses the `@failed` set (included or excluded).
fn names_failed(limit: &str) -> bool {
    limit
        .split(',')
        .map(|p| p.trim().trim_start_matches('!'))
        .any(|p| p == "@failed")
}

/// Whether the journal records a run of this playbook (or, for journals from before the
/// run log, any step of it for a device of the inventory).
fn any_previous_run(loaded: &Loaded) -> bool {
    let key = engine::playbook_key(&loaded.playbook);
    let logged = roomkey::journal::RunLog::open(&loaded.state_dir, &key, true)
        .ok()
        .and_then(|log| log.latest())
        .is_some();
    logged
        || loaded.inventory.devices.iter().any(|d| {
            read_steps(&loaded.state_dir, &key, &d.name).is_ok_and(|steps| !steps.is_empty())
        })
}

pub fn run_apply(args: ApplyArgs, multi: indicatif::MultiProgress) -> anyhow::Result<i32> {
    let loaded = match load(&args.target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: {}\nnothing was sent to any device.",
                escape_text(&e)
            );
            return Ok(exit::INVALID);
        }
    };
    let devices = match select(&loaded, args.target.limit.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", escape_text(&e));
            return Ok(exit::INVALID);
        }
    };
    for w in &loaded.inventory.warnings {
        eprintln!("warning: {}", escape(w));
    }
    if devices.is_empty() {
        eprintln!("no device selected; nothing to do");
        return Ok(exit::ALL_DONE);
    }
    let mut playbook = loaded.playbook.clone();
    args.overrides.apply(&mut playbook);
    let store = open_store(
        &args.target,
        &loaded.inventory,
        &devices,
        &loaded.playbook,
        args.check,
    )?;
    let Prepared {
        devices: prepared,
        warnings,
    } = match prepare(
        &loaded.inventory.path,
        &devices,
        &playbook,
        Some(store.as_ref()),
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(p) => p,
        Err(problems) => {
            eprintln!(
                "error: {}\nnothing was sent to any device.",
                escape_text(&inventory::render_problems(&problems))
            );
            return Ok(exit::INVALID);
        }
    };
    for w in &warnings {
        eprintln!("warning: {}", escape(w));
    }
    if args.target.fresh {
        eprintln!(
            "note: --fresh is no longer needed: every run reads each device and redoes what \
             is not as wanted, and each run rotates once (use --new-run to abandon an \
             interrupted run)"
        );
    }
    let _lock = StateLock::acquire(&loaded.state_dir)?;
    let reporter: Arc<dyn Reporter> = match args.output {
        Output::Json => Arc::new(report::JsonReporter::new(std::io::stdout())),
        Output::Plain => Arc::new(report::PlainReporter::new(std::io::stderr())),
        Output::Auto if std::io::stderr().is_terminal() => {
            Arc::new(report::ProgressReporter::new(multi))
        }
        Output::Auto => Arc::new(report::PlainReporter::new(std::io::stderr())),
    };
    let expiry = expiry_points(&prepared);
    let config = |stop| RunConfig {
        playbook: playbook.clone(),
        devices: prepared.clone(),
        state_dir: loaded.state_dir.clone(),
        known_hosts: loaded.inventory.known_hosts.clone(),
        host_key_policy: args
            .accept_new_host_keys
            .then_some(HostKeyPolicySetting::AcceptNew),
        check_mode: args.check,
        new_run: args.new_run,
        confirm_resend: args.confirm_resend.clone(),
        kdf: KdfPool::per_core().below_io(),
        secrets: Arc::clone(&store),
        stop,
        wait_for_window: args.wait_for_window,
        start_time: None,
    };
    let summary = run_engine(config, reporter)?;
    if let Some(path) = &args.report_html {
        report::write_html_report(path, &summary, &expiry)
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
    }
    finish(&summary, args.output, args.report.as_deref())
}

/// Days left of each device's certificate (from preflight, else read from its file), for
/// the HTML report's expiry picture.
pub fn expiry_points(prepared: &[engine::PreparedDevice]) -> Vec<report::ExpiryPoint> {
    let now = time::OffsetDateTime::now_utc();
    prepared
        .iter()
        .map(|p| {
            let not_after = match &p.identity {
                Some(id) => Some(id.cert.not_after),
                None => p
                    .device
                    .certificate
                    .as_ref()
                    .and_then(|path| std::fs::read_to_string(path).ok())
                    .and_then(|pem| roomkey::cert::parse_cert_pem(&pem).ok())
                    .map(|c| c.not_after),
            };
            report::ExpiryPoint {
                device: p.device.name.clone(),
                days_left: not_after.map(|t| (t - now).whole_days()),
            }
        })
        .collect()
}

/// The blocking pool's bound: journal appends and fsyncs, the run log, known_hosts, key
/// files (scrypt has threads of its own, `kdf::KdfPool`). tokio's default is 512: with
/// hundreds of sessions each waiting on an fsync, the pool grew towards a thread per
/// session (~110 threads at 100 sessions), each with its stack and malloc arena (bench,
/// 1,000 devices, 400 sessions: peak RSS 145.8 -> 141.0 MiB). More threads would not make
/// a disk faster.
const BLOCKING_THREADS: usize = 8;

/// Runs the engine on a fresh runtime with Ctrl-C wired to a graceful stop.
pub fn run_engine(
    config: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> RunConfig,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<RunSummary> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = config(stop_rx);
    let summary = runtime.block_on(async move {
        let signal_reporter = Arc::clone(&reporter);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                signal_reporter.event(&engine::Event::Stopping {
                    reason: "Ctrl-C: finishing in-flight commands; press Ctrl-C again to abort \
                             (the journal stays consistent either way)"
                        .into(),
                });
                let _ = stop_tx.send(true);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(exit::STOPPED_RESUMABLE);
                }
            }
        });
        engine::run(config, reporter).await
    });
    Ok(summary)
}

pub fn finish(
    summary: &RunSummary,
    output: Output,
    report_path: Option<&Path>,
) -> anyhow::Result<i32> {
    if output != Output::Json {
        print!("{}", report::render_recap(summary));
    }
    if let Some(path) = report_path {
        report::write_report(path, summary)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(summary.exit_code())
}

pub fn run_plan(args: PlanArgs) -> anyhow::Result<i32> {
    let loaded = match load(&args.target) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {}", escape_text(&e));
            return Ok(exit::INVALID);
        }
    };
    let devices = match select(&loaded, args.target.limit.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", escape_text(&e));
            return Ok(exit::INVALID);
        }
    };
    // The plan works without the vault passphrase; it opens the vault only if one is given.
    let store: Option<Arc<dyn SecretStore>> = if needs_vault(&devices, &loaded.playbook)
        && (std::env::var_os(roomkey::vault::PASSPHRASE_ENV).is_some()
            || args.target.passphrase_file.is_some())
    {
        Some(open_store(
            &args.target,
            &loaded.inventory,
            &devices,
            &loaded.playbook,
            true,
        )?)
    } else {
        None
    };
    let prepared = match prepare(
        &loaded.inventory.path,
        &devices,
        &loaded.playbook,
        store.as_deref(),
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(p) => p,
        Err(problems) => {
            eprintln!(
                "error: {}",
                escape_text(&inventory::render_problems(&problems))
            );
            return Ok(exit::INVALID);
        }
    };
    let key = engine::playbook_key(&loaded.playbook);
    // The run a real apply would work in: the interrupted one it would continue, or a new one.
    let planned_run = match roomkey::journal::RunLog::open(&loaded.state_dir, &key, true)
        .ok()
        .and_then(|log| log.interrupted())
    {
        Some(id) => roomkey::plan::PlannedRun::Continue(id),
        None => roomkey::plan::PlannedRun::New,
    };
    let mut plans: Vec<_> = prepared
        .devices
        .iter()
        .map(|p| {
            let journal = read_steps(&loaded.state_dir, &key, &p.device.name).unwrap_or_default();
            let seed = match &store {
                Some(s) if s.is_seeded(&p.device) => roomkey::plan::SeedState::Seeded,
                Some(_) => roomkey::plan::SeedState::NotSeeded,
                None => roomkey::plan::SeedState::Unknown,
            };
            roomkey::plan::device_plan(p, &loaded.playbook, &journal, seed, &planned_run)
        })
        .collect();
    roomkey::plan::schedule(
        &mut plans,
        &prepared.devices,
        &loaded.playbook,
        jiff::Timestamp::now(),
    );
    let mut warnings = loaded.inventory.warnings.clone();
    warnings.extend(prepared.warnings);
    if args.json {
        let doc = report::PlanDocument::new(&loaded.playbook.name, &plans);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        // The plan quotes names, paths and values from the inputs.
        print!(
            "{}",
            escape_text(&roomkey::plan::render(&loaded.playbook, &plans, &warnings))
        );
    }
    Ok(exit::ALL_DONE)
}
