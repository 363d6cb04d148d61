//! TSH, the device's xAPI shell, as a pure core (no I/O): [`TshCommand`] builds
//! injection-free command bytes and [`ReplyReader`] turns the bytes a device sends back
//! into login readiness, replies, events and noise. The SSH edge (`crate::ssh`) moves the
//! bytes; everything that decides what they mean lives here and is tested with fixtures of
//! every reply shape in `shared/spec/tshell.md`.
//!
//! The client speaks terminal mode only (never `xpreferences outputmode json|xml`), tags
//! every command with a resultId and sends one command at a time; see `reply.rs` for how
//! replies are delimited.

mod command;
mod reply;

pub use command::{EncodeError, ReplyShape, ResultId, TshCommand, Verb, UPTIME};
pub use reply::{Field, Item, Reply, ReplyReader, ReplyStatus, TshEvent};

/// The session command sent after login so commands are not echoed back.
pub const ECHO_OFF: &str = "echo off\n";

#[cfg(test)]
mod fixture_tests;
