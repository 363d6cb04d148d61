//! `roomkey cert` (placeholder: filled in by its owner).

/// `roomkey cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not implemented yet.
    Todo,
}

pub fn run(_cmd: Command) -> anyhow::Result<i32> {
    anyhow::bail!("roomkey cert: not implemented yet")
}
