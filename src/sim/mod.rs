//! The RoomOS device simulator: simulated devices that speak TSH over SSH.
pub mod model;
pub mod tsh_server;
pub mod faults;
pub mod store;
