//! Command-line front ends (part of the binary, not the library): one module per subcommand
//! family, each owning its clap arguments and a `run` function. `anyhow` lives here and in
//! `main.rs`, never in the library.

pub mod apply;
pub mod bench;
pub mod cert;
pub mod demo;
pub mod jwe;
pub mod secret;
pub mod sim;
