//! `roomkey demo` (wired up once the simulator lands).

/// Arguments of `roomkey demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _multi: indicatif::MultiProgress) -> anyhow::Result<i32> {
    anyhow::bail!("roomkey demo: not implemented yet")
}
