//! `roomkey sim`: serves simulated RoomOS devices (TSH over SSH) until Ctrl-C, either from an
//! inventory (`--inventory FILE`) or as a quick fleet (`--count N --base A --port P`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use roomkey::secret::Secret;
use roomkey::sim::{self, FaultPlan, Fleet, FleetOptions};

/// Environment variable holding the password of `--count` fleets.
pub const PASSWORD_ENV: &str = "ROOMKEY_SIM_PASSWORD";
/// Environment variable holding the challenge password of the `--scep-url` server.
pub const SCEP_CHALLENGE_ENV: &str = "ROOMKEY_SIM_SCEP_CHALLENGE";

/// Arguments of `roomkey sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve every device of this inventory (each on its own host:port).
    #[arg(long, value_name = "FILE", conflicts_with = "count")]
    pub inventory: Option<PathBuf>,
    /// Serve N devices room-001… on consecutive addresses (password from ROOMKEY_SIM_PASSWORD).
    #[arg(long, value_name = "N", required_unless_present = "inventory")]
    pub count: Option<usize>,
    /// First address of a --count fleet.
    #[arg(long, default_value = "127.0.0.10")]
    pub base: std::net::Ipv4Addr,
    /// Port of every device of a --count fleet.
    #[arg(long, default_value_t = 2222)]
    pub port: u16,
    /// Put a --count fleet on one address (--base) and consecutive ports from --port,
    /// instead of consecutive addresses on one port (use in containers).
    #[arg(long)]
    pub same_address: bool,
    /// Login name of a --count fleet.
    #[arg(long, default_value = "admin")]
    pub user: String,
    /// Keep device state and host keys here (otherwise in memory only).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds a device refuses logins after `xCommand SystemUnit Boot`.
    #[arg(long, default_value_t = 5)]
    pub boot_delay: u64,
    /// YAML fault plan applied to every device of a --count fleet (same keys as an
    /// inventory's `sim:` block).
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// How every device's firmware reads a `populate` JWE's plaintext: the phrase itself
    /// (`raw`) or base64url of it (`base64url`). Overrides `populate_reading` of every
    /// device's `sim:` block (or of the --faults plan).
    #[arg(long, value_name = "READING")]
    pub populate_reading: Option<PopulateReadingArg>,
    /// A device variant for every device, `KNOB=VALUE` (repeatable), e.g.
    /// `--variant external_identity=seed --variant config_set=bare_ok`: the alternatives
    /// `docs/device-catalogue.md` lists as unknown (knobs: see `sim: { variants: … }`).
    /// Overrides the same knob of every device's `sim:` block.
    #[arg(long, value_name = "KNOB=VALUE")]
    pub variant: Vec<String>,
    /// Concurrent scrypt derivations (default: one per core).
    #[arg(long)]
    pub kdf_parallel: Option<usize>,
    /// Device time each scrypt derivation takes on top of this machine's, in
    /// milliseconds (a Room Kit's CPU is much slower): waited, not spent on a core.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub device_scrypt_ms: u64,
    /// Reuse a device's derived JWE key when a JWE repeats the (secret, salt) of a recent
    /// one, so one controller session costs the device one derivation. Off by default
    /// (whether real devices cache is unknown); `roomkey bench` turns it on so the
    /// simulator, which shares the cores with the controller, spends what the bench
    /// models rather than a derivation per JWE.
    #[arg(long)]
    pub cache_jwe_keys: bool,
    /// Serve a simulated SCEP server at this URL (what `scep_enroll` names); its CA is
    /// `--scep-ca`, its challenge password comes from ROOMKEY_SIM_SCEP_CHALLENGE.
    #[arg(long, value_name = "URL", requires = "scep_ca")]
    pub scep_url: Option<String>,
    /// Test-CA directory (`roomkey cert test-ca`) that signs the SCEP enrolments.
    #[arg(long, value_name = "DIR", requires = "scep_url")]
    pub scep_ca: Option<PathBuf>,
    /// What the `--scep-url` server's CA issues: a valid certificate, or one roomkey must
    /// not count as an enrolment (expired, not yet valid, or for a CN of the CA's own).
    #[arg(long, value_enum, default_value_t = ScepIssueArg::Valid, requires = "scep_url")]
    pub scep_issue: ScepIssueArg,
}

/// `--scep-issue` (the simulator's `ScepIssue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScepIssueArg {
    Valid,
    Expired,
    NotYetValid,
    OtherCommonName,
}

impl From<ScepIssueArg> for sim::scep::ScepIssue {
    fn from(a: ScepIssueArg) -> Self {
        match a {
            ScepIssueArg::Valid => sim::scep::ScepIssue::Valid,
            ScepIssueArg::Expired => sim::scep::ScepIssue::Expired,
            ScepIssueArg::NotYetValid => sim::scep::ScepIssue::NotYetValid,
            ScepIssueArg::OtherCommonName => sim::scep::ScepIssue::OtherCommonName,
        }
    }
}

/// `--populate-reading` (the simulator's `PopulateReading`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PopulateReadingArg {
    Raw,
    Base64url,
}

impl From<PopulateReadingArg> for sim::model::PopulateReading {
    fn from(a: PopulateReadingArg) -> Self {
        match a {
            PopulateReadingArg::Raw => sim::model::PopulateReading::Raw,
            PopulateReadingArg::Base64url => sim::model::PopulateReading::Base64url,
        }
    }
}

/// The `--scep-url` server, if any.
fn scep_servers(args: &Args) -> anyhow::Result<Vec<sim::scep::ScepServer>> {
    let (Some(url), Some(dir)) = (&args.scep_url, &args.scep_ca) else {
        return Ok(Vec::new());
    };
    let challenge = std::env::var(SCEP_CHALLENGE_ENV)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("set {SCEP_CHALLENGE_ENV} to the SCEP server's challenge password")
        })?;
    let ca = roomkey::cert::TestCa::load(dir)
        .with_context(|| format!("loading the SCEP test CA from {}", dir.display()))?;
    let mut server =
        sim::scep::ScepServer::new(url, std::sync::Arc::new(ca), Secret::new(challenge))
            .context("reading the SCEP CA certificate")?;
    server.issue = args.scep_issue.into();
    println!(
        "SCEP server {url}: CA fingerprint {}",
        server.ca_fingerprint
    );
    Ok(vec![server])
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mut specs = match (&args.inventory, args.count) {
        (Some(path), _) => {
            let inv = roomkey::inventory::load_for_sim(path)?;
            sim::specs_from_inventory(&inv)?
        }
        (None, Some(count)) => {
            let password = std::env::var(PASSWORD_ENV).map_err(|_| {
                anyhow::anyhow!("set {PASSWORD_ENV} to the password the simulated devices accept")
            })?;
            if password.is_empty() {
                anyhow::bail!("{PASSWORD_ENV} is empty");
            }
            let faults = match &args.faults {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    serde_yaml::from_str::<FaultPlan>(&text)
                        .with_context(|| format!("parsing fault plan {}", p.display()))?
                }
                None => FaultPlan::default(),
            };
            sim::count_specs(
                count,
                args.base,
                args.port,
                if args.same_address {
                    sim::Layout::Ports
                } else {
                    sim::Layout::Addresses
                },
                &args.user,
                &Secret::new(password),
                &faults,
            )?
        }
        (None, None) => anyhow::bail!("give --inventory FILE or --count N"),
    };
    if let Some(reading) = args.populate_reading {
        for spec in &mut specs {
            spec.faults.populate_reading = reading.into();
        }
    }
    for v in &args.variant {
        let (key, value) = v
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--variant {v:?}: expected KNOB=VALUE"))?;
        for spec in &mut specs {
            spec.faults
                .variants
                .set(key.trim(), value.trim())
                .map_err(|e| anyhow::anyhow!("--variant {v:?}: {e}"))?;
        }
    }
    let kdf = match args.kdf_parallel {
        Some(n) => roomkey::kdf::KdfPool::new(n),
        None => roomkey::kdf::KdfPool::per_core(),
    };
    let usage = kdf.clone();
    let device_cpu = sim::device_cpu::DeviceCpu {
        cache_keys: args.cache_jwe_keys,
        derivation_delay: Duration::from_millis(args.device_scrypt_ms),
        account: std::sync::Arc::default(),
    };
    let device_time = std::sync::Arc::clone(&device_cpu.account);
    let opts = FleetOptions {
        state_dir: args.state_dir.clone(),
        kdf,
        boot_delay: Duration::from_secs(args.boot_delay),
        scep_servers: scep_servers(&args)?,
        device_cpu,
        ..FleetOptions::default()
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let fleet = Fleet::start(specs, opts).await?;
        for d in fleet.devices() {
            println!("{}\t{}\t{}", d.name, d.addr, d.host_key_fingerprint);
        }
        println!(
            "serving {} simulated device(s); Ctrl-C to stop",
            fleet.devices().len()
        );
        wait_for_stop().await?;
        fleet.shutdown().await;
        // What the devices spent opening JWEs (read by `roomkey bench`).
        let used = usage.usage();
        println!(
            "scrypt: {} derivations, {} ms CPU",
            used.derivations, used.cpu_ms
        );
        // The simulated device time (read by `roomkey bench` for the devices' floor).
        let dt = device_time.usage();
        println!(
            "device time: {} ms latency, {} ms derivation delay, {} derivations, {} keys reused",
            dt.latency_ms, dt.derivation_delay_ms, dt.derivations, dt.reused
        );
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

/// Ctrl-C, or SIGTERM (what `docker stop` sends).
async fn wait_for_stop() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}
