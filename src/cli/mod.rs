//! Command-line front ends (part of the binary, not the library): one module per subcommand
//! family, each owning its clap `Args`
//! and a `run` function. `anyhow` lives here and in `main.rs`, never in the library.

pub mod cert;
pub mod jwe;
pub mod secret;
pub mod sim;
