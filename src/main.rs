//! The `roomkey` binary: parses the command line, sets up logging, dispatches to `cli`,
//! and maps the outcome to a documented exit code. `anyhow` lives only here and in `cli`.

use clap::{CommandFactory, Parser, Subcommand};

mod cli;

/// Exit code of a command-line usage error: the same as any other invalid input (see the
/// README's exit-code table); clap's own default, 2, means "a device failed" here.
const EXIT_USAGE: u8 = 1;

/// Keeps scrypt's 32 MiB buffer between derivations instead of faulting in fresh pages for
/// every JWE (see `roomkey::kdf::buffers`).
#[global_allocator]
static ALLOCATOR: roomkey::kdf::buffers::ScryptBufferCache =
    roomkey::kdf::buffers::ScryptBufferCache::new();

/// Provision Cisco RoomOS devices (Room, Board, Desk) with externally issued identity
/// certificates over SSH.
#[derive(Debug, Parser)]
#[command(name = "roomkey", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=roomkey=debug).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a playbook on the inventory's devices (resumable; see exit codes in --help).
    Apply(cli::apply::ApplyArgs),
    /// Show what `apply` would do, per device, without connecting to anything.
    Plan(cli::apply::PlanArgs),
    /// Run the external-identity playbook on a built-in simulated fleet of rooms.
    Demo(cli::demo::Args),
    /// Build, decrypt and inspect the device JWE (Cisco `cisco-kdf` scrypt + AES-GCM).
    #[command(subcommand)]
    Jwe(cli::jwe::Command),
    /// Check device certificates, make keys and CSRs, run a local test CA.
    #[command(subcommand)]
    Cert(cli::cert::Command),
    /// Run simulated RoomOS devices that speak TSH over SSH.
    Sim(cli::sim::Args),
    /// Manage the encrypted ClientSecret vault.
    #[command(subcommand)]
    Secret(cli::secret::Command),
    /// Compare real devices with the device catalogue, read-only (probe one room of each
    /// model and software release before a fleet run).
    Probe(cli::probe::Args),
    /// Measure a fleet run against a simulator in its own process: wall time, controller
    /// CPU and memory, set against the scrypt floor.
    Bench(cli::bench::Args),
    /// Show the fleet, read-only: reachability, external identity, certificate expiry,
    /// E2EE mode, seeding, last run (table, JSON, CSV, OpenMetrics, HTML).
    Status(cli::status::StatusArgs),
    /// Lay out a site directory: inventory skeleton, playbooks, certs/, .roomkey/, .gitignore.
    Init(cli::init::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line definition.
    Man,
}

fn init_logging(format: LogFormat, multi: &indicatif::MultiProgress) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let writer = roomkey::report::LogWriter::new(Some(multi.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(roomkey::report::colour_stderr())
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> std::process::ExitCode {
    roomkey::kdf::buffers::tune_system_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are not errors; every usage error exits 1 with the other
        // input errors, so exit 2 keeps its one meaning ("a device failed").
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let multi = roomkey::report::multi_progress(true);
    init_logging(cli.log_format, &multi);
    let result = match cli.command {
        Command::Apply(args) => cli::apply::run_apply(args, multi),
        Command::Plan(args) => cli::apply::run_plan(args),
        Command::Demo(args) => cli::demo::run(args, multi),
        Command::Jwe(cmd) => cli::jwe::run(cmd),
        Command::Cert(cmd) => cli::cert::run(cmd),
        Command::Sim(args) => cli::sim::run(args),
        Command::Secret(cmd) => cli::secret::run(cmd),
        Command::Bench(args) => cli::bench::run(args),
        Command::Probe(args) => cli::probe::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Init(args) => cli::init::run(args),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "roomkey", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let man = clap_mangen::Man::new(Cli::command());
            man.render(&mut std::io::stdout())
                .map(|()| 0)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            // An error can quote a file or a device: nothing in it may drive the terminal.
            eprintln!(
                "error: {}",
                roomkey::display::escape_text(&format!("{err:#}"))
            );
            std::process::ExitCode::from(1)
        }
    }
}
