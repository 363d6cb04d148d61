//! `roomkey demo`: the whole product on a simulated fleet, in one process and one command.
//! It serves the rooms of `inventory/lab.yaml` with the built-in simulator on free loopback
//! ports, issues each room a certificate from a throw-away test CA, seeds a vault with a
//! fresh ClientSecret per room, runs `playbooks/external-identity.yaml` through the real
//! engine over real SSH, and shows each room's verified identity as the device reports it.
//! The rooms start factory-new (no secret, no certificate, E2EE off), so every step changes
//! something.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use roomkey::cert::TestCa;
use roomkey::engine::prepare::prepare;
use roomkey::engine::secrets::VaultSecrets;
use roomkey::engine::{self, Reporter, RunConfig};
use roomkey::kdf::KdfPool;
use roomkey::playbook::HostKeyPolicySetting;
use roomkey::report;
use roomkey::secret::Secret;
use roomkey::sim::{Fleet, FleetOptions, SimDeviceSpec};

const LAB_INVENTORY: &str = include_str!("../../inventory/lab.yaml");
const PLAYBOOK: &str = include_str!("../../playbooks/external-identity.yaml");
const PASSWORD_ENV: &str = "ROOMKEY_SIM_PASSWORD";

/// Arguments of `roomkey demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the demo's files (inventory, test CA, certificates, vault, journal) in DIR
    /// instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Progress display: auto (bars on a terminal), plain, json.
    #[arg(long, value_enum, default_value = "auto")]
    pub output: super::apply::Output,
}

pub fn run(args: Args, multi: indicatif::MultiProgress) -> anyhow::Result<i32> {
    let (dir, _tmp) = super::work_dir(args.dir.as_deref(), "roomkey-demo-")?;
    // The simulated rooms' admin password: the caller's, or a fresh random one. Set before
    // any thread starts, so the environment is not raced.
    if std::env::var_os(PASSWORD_ENV).is_none() {
        std::env::set_var(PASSWORD_ENV, roomkey::vault::generate_secret().expose());
    }
    let password = Secret::new(std::env::var(PASSWORD_ENV).unwrap_or_default());

    let inventory_path = dir.join("lab.yaml");
    let playbook_path = dir.join("external-identity.yaml");
    std::fs::write(&inventory_path, LAB_INVENTORY)?;
    std::fs::write(&playbook_path, PLAYBOOK)?;
    let mut inventory = roomkey::inventory::load(&inventory_path)?;
    let playbook = roomkey::playbook::load(&playbook_path)?;

    // A throw-away CA and one certificate per room (NOT for production).
    let now = time::OffsetDateTime::now_utc();
    let ca = TestCa::create("roomkey demo test CA (not for production)")?;
    std::fs::create_dir_all(dir.join("certs"))?;
    ca.save(&dir.join("ca"))?;
    for d in &inventory.devices {
        let cn = d.identity.clone().unwrap_or_else(|| d.name.clone());
        let (Some(cert_path), Some(key_path)) = (&d.certificate, &d.key) else {
            anyhow::bail!("lab inventory: device {} has no certificate path", d.name);
        };
        super::issue_test_certificate(&ca, &cn, cert_path, key_path)?;
    }

    // A vault with a fresh ClientSecret per room, never seeded yet.
    let passphrase = roomkey::vault::generate_secret();
    let mut vault = roomkey::vault::Vault::create(&inventory.vault, &passphrase)
        .with_context(|| format!("creating the demo vault {}", inventory.vault.display()))?;
    for d in &inventory.devices {
        vault.set_current(
            &d.name,
            roomkey::vault::generate_secret(),
            false,
            Some("demo"),
        )?;
    }
    vault.save()?;
    let store = Arc::new(VaultSecrets::new(vault));

    // Every simulated room starts as a factory-new device would: no ClientSecret, no
    // certificate, end-to-end encryption off — so every step of the playbook has work to do
    // (set_configuration turns E2EE on). A kept --dir is left as the last demo made it.
    let sim_dir = dir.join("sim");
    for d in &inventory.devices {
        factory_new(&sim_dir, &d.name)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let specs: Vec<SimDeviceSpec> = inventory
        .devices
        .iter()
        .map(|d| {
            Ok(SimDeviceSpec {
                name: d.name.clone(),
                addr: std::net::SocketAddr::new(d.host.parse()?, 0),
                username: d.username.clone(),
                password: password.clone(),
                faults: Default::default(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let fleet = runtime.block_on(Fleet::start(
        specs,
        FleetOptions {
            state_dir: Some(sim_dir),
            kdf: KdfPool::per_core(),
            boot_delay: Duration::from_secs(2),
            ..FleetOptions::default()
        },
    ))?;
    for info in fleet.devices() {
        if let Some(d) = inventory.devices.iter_mut().find(|d| d.name == info.name) {
            d.port = info.addr.port();
        }
    }
    println!(
        "roomkey demo: {} simulated rooms on loopback, files in {}",
        inventory.devices.len(),
        dir.display()
    );

    let selected: Vec<&roomkey::inventory::Device> = inventory.devices.iter().collect();
    let prepared = match prepare(
        &inventory.path,
        &selected,
        &playbook,
        Some(store.as_ref()),
        now,
    ) {
        Ok(p) => p,
        Err(problems) => anyhow::bail!(roomkey::inventory::render_problems(&problems)),
    };
    let reporter: Arc<dyn Reporter> = match args.output {
        super::apply::Output::Json => Arc::new(report::JsonReporter::new(std::io::stdout())),
        super::apply::Output::Auto if std::io::stderr().is_terminal() => {
            Arc::new(report::ProgressReporter::new(multi))
        }
        _ => Arc::new(report::PlainReporter::new(std::io::stderr())),
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let config = RunConfig {
        playbook: playbook.clone(),
        devices: prepared.devices,
        state_dir: dir.join(".roomkey"),
        known_hosts: inventory.known_hosts.clone(),
        // First contact with freshly made simulated rooms: record their host keys.
        host_key_policy: Some(HostKeyPolicySetting::AcceptNew),
        check_mode: false,
        new_run: false,
        confirm_resend: Vec::new(),
        kdf: KdfPool::per_core().below_io(),
        secrets: store,
        stop,
        wait_for_window: false,
        start_time: None,
    };
    let summary = runtime.block_on(engine::run(config, reporter));
    if args.output != super::apply::Output::Json {
        print!("\n{}", report::render_recap(&summary));
        println!("\nWhat each room reports now (read back from the simulated device):");
        println!(
            "{:10}  {:32}  {:8}  {:40}",
            "ROOM", "EXTERNAL IDENTITY", "E2EE", "ACTIVE WEBEXIDENTITY CERTIFICATE"
        );
        for d in &inventory.devices {
            let snap = runtime.block_on(fleet.snapshot(&d.name))?;
            let active = snap
                .certificates
                .iter()
                .find(|c| c.used_for.iter().any(|u| u == "WebexIdentity"));
            println!(
                "{:10}  {:32}  {:8}  {:40}",
                d.name,
                active.map(|c| c.common_name.as_str()).unwrap_or("-"),
                if snap.e2ee_mode_on { "on" } else { "off" },
                active.map(|c| c.fingerprint.as_str()).unwrap_or("-"),
            );
        }
    }
    runtime.block_on(fleet.shutdown());
    Ok(summary.exit_code())
}

/// Writes a factory-new state for a simulated room that has none yet.
fn factory_new(sim_dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let store = roomkey::sim::store::Store::open(sim_dir, name)?;
    if store.load_state()?.is_some() {
        return Ok(());
    }
    let mut state = roomkey::sim::model::PersistedState::default();
    state.version = 1;
    state.e2ee_mode_on = false;
    store.save_state(&state)?;
    Ok(())
}
