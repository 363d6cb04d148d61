//! The `roomkey` binary: parses the command line, sets up logging, dispatches to
//! `roomkey::cli`, and maps the outcome to a documented exit code.

use clap::{Parser, Subcommand};
mod cli;

/// Provision Cisco RoomOS devices (Room, Board, Desk) with externally issued identity
/// certificates over SSH.
#[derive(Debug, Parser)]
#[command(name = "roomkey", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Jwe(cmd) => cli::jwe::run(cmd),
        Command::Cert(cmd) => cli::cert::run(cmd),
        Command::Sim(args) => cli::sim::run(args),
        Command::Secret(cmd) => cli::secret::run(cmd),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
