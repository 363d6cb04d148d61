//! `roomkey probe`: the bridge to real hardware. Connects to the selected devices (one room
//! of each model and release), sends only read-only commands (`probe::commands`), compares
//! every reply with the device catalogue and prints a table; `--transcript FILE` writes the
//! redacted exchange (replayable as a fixture). Exit 0 when everything matched, 2 when a
//! device differed or could not be probed, 1 on bad input.

use std::path::PathBuf;

use anyhow::Context as _;
use roomkey::inventory;
use roomkey::probe::{self, Verdict};
use roomkey::ssh::{ConnectOptions, HostKeyPolicy, TshSession};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The inventory.
    #[arg(short = 'i', long = "inventory", value_name = "FILE")]
    pub inventory: PathBuf,
    /// Which devices (names, globs, groups, `!exclusions`), e.g. `--limit room-301`.
    #[arg(long)]
    pub limit: Option<String>,
    /// Record an unknown device's host key in known_hosts (as `apply` does).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Write the redacted transcript of every exchange here.
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// Vault file, for logins kept in it (`auth: { password_vault: NAME }`). Default: the
    /// inventory's `vault:` or `.roomkey/vault` beside it. Opened read-only.
    #[arg(long, value_name = "FILE", env = "ROOMKEY_VAULT")]
    pub vault: Option<PathBuf>,
    /// File holding the vault passphrase (else ROOMKEY_VAULT_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let inv = inventory::load(&args.inventory)?;
    let selected = inventory::select(&inv, args.limit.as_deref(), &Default::default())
        .map_err(anyhow::Error::msg)?;
    if selected.is_empty() {
        anyhow::bail!("no device selected");
    }
    let pb = roomkey::playbook::parse(
        std::path::Path::new("probe"),
        "name: probe\nsteps:\n  - scep_renewal_profile: { action: list }\n",
    )?;
    // Logins are resolved as `apply` resolves them, vault-held ones included; the vault is
    // opened read-only (a snapshot, no writer lock: probing never changes it, and works
    // while an apply holds it).
    let store = super::apply::open_store_with(
        args.vault.as_deref(),
        args.passphrase_file.as_deref(),
        &inv,
        &selected,
        &pb,
        true,
    )?;
    let prepared = roomkey::engine::prepare::prepare(
        &inv.path,
        &selected,
        &pb,
        Some(store.as_ref()),
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|p| anyhow::anyhow!(inventory::render_problems(&p)))?;
    let commands = probe::commands()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut all_match = true;
    let mut transcript = String::new();
    for p in prepared.devices {
        let d = &p.device;
        let mut opts = ConnectOptions::new(d.host.clone(), d.username.clone(), p.auth.clone());
        opts.port = d.port;
        opts.known_hosts = inv.known_hosts.clone();
        opts.read_only = true;
        if args.accept_new_host_keys {
            opts.host_key_policy = HostKeyPolicy::AcceptNew;
        }
        let result = runtime.block_on(async {
            let mut session = TshSession::connect(&opts).await?;
            let mut replies = Vec::new();
            for c in &commands {
                replies.push(session.run(&c.command).await?);
            }
            let banner = session.banner().to_string();
            session.close().await;
            Ok::<_, roomkey::ssh::SshError>((banner, replies))
        });
        match result {
            Ok((banner, replies)) => {
                let mut findings = vec![probe::judge_banner(&banner)];
                findings.extend(
                    commands
                        .iter()
                        .zip(&replies)
                        .map(|(c, r)| probe::judge(c.entry, r)),
                );
                all_match &= findings.iter().all(|f| f.verdict == Verdict::Matches);
                print!("{}", probe::table(&d.name, &findings));
                let exchanges: Vec<_> = commands.iter().zip(replies.iter()).collect();
                transcript.push_str(&format!("# device {}\n", d.name));
                transcript.push_str(&probe::transcript(&banner, &exchanges));
            }
            Err(e) => {
                all_match = false;
                println!("{}\n  not probed: {e}", d.name);
            }
        }
    }
    if let Some(path) = &args.transcript {
        roomkey::fsutil::write_atomic(path, transcript.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if all_match { 0 } else { 2 })
}
