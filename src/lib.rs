//! roomkey — provision fleets of Cisco RoomOS devices with externally issued identity
//! certificates over SSH.
//!
//! Layering (see `ARCHITECTURE.md`): pure cores (`jwe`, `tsh`, `inventory`, `playbook`,
//! `plan`, `sim::model`) do no I/O; I/O lives at the edges (`ssh`, `journal`, `vault`,
//! `sim::server`, `report`); the `engine` sends typed events to a reporter and never prints.

pub mod cert;
pub mod display;
pub mod engine;
pub mod failpoint;
pub mod fsutil;
pub mod input;
pub mod inventory;
pub mod journal;
pub mod jwe;
pub mod kdf;
pub mod plan;
pub mod playbook;
pub mod probe;
pub mod report;
pub mod secret;
pub mod sim;
pub mod ssh;
pub mod status;
pub mod tsh;
pub mod vault;
