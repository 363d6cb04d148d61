//! `roomkey secret` (placeholder: filled in by its owner).

/// `roomkey secret` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not implemented yet.
    Todo,
}

pub fn run(_cmd: Command) -> anyhow::Result<i32> {
    anyhow::bail!("roomkey secret: not implemented yet")
}
