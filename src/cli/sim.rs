//! `roomkey sim` (placeholder: filled in by its owner).

/// Arguments of `roomkey sim`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("roomkey sim: not implemented yet")
}
