//! The RoomOS device simulator: simulated devices that speak TSH over SSH, all in one
//! process, so roomkey can be tested and demonstrated without a rack of Room Kits.
//!
//! - [`model`]: the pure device (secret, certificates, CAs, status/config trees);
//! - [`tsh_server`]: the pure device side of the TSH line protocol;
//! - [`faults`]: deterministic fault plans;
//! - [`device_cpu`]: what opening a JWE costs a device (bench settings, device time);
//! - [`variants`]: the alternatives a device can play where real devices are uncertain;
//! - [`scep`]: simulated SCEP servers (a test CA and a challenge per URL);
//! - [`store`]: persisted state and host keys (atomic, 0600);
//! - [`server`]: the russh listeners and sessions ([`Fleet`]).

pub mod device_cpu;
pub mod faults;
pub mod model;
pub mod scep;
pub mod server;
pub mod store;
pub mod tsh_server;
pub mod variants;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use faults::FaultPlan;
pub use server::{CertSnapshot, DeviceInfo, DeviceSnapshot, Fleet, FleetOptions, LoggedCommand};
pub use variants::Variants;

use crate::secret::Secret;

/// One simulated device to serve.
#[derive(Clone, Debug)]
pub struct SimDeviceSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub username: String,
    pub password: Secret,
    pub faults: FaultPlan,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("device {device}: cannot listen on {addr}: {source}")]
    Bind {
        device: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("two simulated devices are named {0:?}")]
    DuplicateName(String),
    #[error("no simulated device named {0:?}")]
    UnknownDevice(String),
    #[error("device {device}: saved state unusable: {reason}")]
    State { device: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("inventory {path}: {reason}")]
    Inventory { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// How a `--count` fleet is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Consecutive addresses from the base, all on the same port (the default: on Linux all
    /// of 127/8 is loopback, so each device looks like its own host).
    Addresses,
    /// One address, consecutive ports from the base port (for containers, where only the
    /// container's own address can be published).
    Ports,
}

/// `--count N --base A --port P`: devices `room-001`… laid out per `layout`.
pub fn count_specs(
    count: usize,
    base: std::net::Ipv4Addr,
    port: u16,
    layout: Layout,
    username: &str,
    password: &Secret,
    faults: &FaultPlan,
) -> Result<Vec<SimDeviceSpec>, SimError> {
    let start = u32::from(base);
    (0..count)
        .map(|i| {
            let overflow = || SimError::Config("address or port range overflows".into());
            let addr = match layout {
                Layout::Addresses => {
                    let ip = u32::try_from(i)
                        .ok()
                        .and_then(|i| start.checked_add(i))
                        .ok_or_else(overflow)?;
                    SocketAddr::from((std::net::Ipv4Addr::from(ip), port))
                }
                Layout::Ports => {
                    let p = u16::try_from(i)
                        .ok()
                        .and_then(|i| port.checked_add(i))
                        .ok_or_else(overflow)?;
                    SocketAddr::from((base, p))
                }
            };
            Ok(SimDeviceSpec {
                name: format!("room-{:03}", i + 1),
                addr,
                username: username.to_string(),
                password: password.clone(),
                faults: faults.clone(),
            })
        })
        .collect()
}

/// The simulated devices of a resolved inventory: each on its `host:port` (host must be an
/// IP address), with the inventory's username and password (`password_env` or a literal
/// password; the simulator cannot open the vault) and the faults and variants of its `sim:`
/// block. The `sim:` block's format is the simulator's ([`FaultPlan`]); the inventory keeps
/// it opaque. Every device's problem is reported at once.
pub fn specs_from_inventory(
    inv: &crate::inventory::Inventory,
) -> Result<Vec<SimDeviceSpec>, SimError> {
    use crate::inventory::AuthSource;
    let mut problems = Vec::new();
    let mut specs = Vec::new();
    for d in &inv.devices {
        let mut problem = |what: String| problems.push(format!("devices.{}: {what}", d.name));
        let ip: Option<std::net::IpAddr> = d.host.parse().ok();
        if ip.is_none() {
            problem(format!(
                "the simulator needs an IP address as host, not {:?}",
                d.host
            ));
        }
        let password = match &d.auth {
            AuthSource::PasswordEnv { var, .. } => match std::env::var(var) {
                Ok(v) => Some(Secret::new(v)),
                Err(_) => {
                    problem(format!("environment variable {var} is not set"));
                    None
                }
            },
            AuthSource::PasswordLiteral { value, .. } => Some(value.clone()),
            _ => {
                problem(
                    "the simulator needs auth.password_env (or a literal password)".to_string(),
                );
                None
            }
        };
        let faults = match &d.sim {
            Some(v) => match serde_yaml::from_value::<FaultPlan>(v.clone()) {
                Ok(f) => Some(f),
                Err(e) => {
                    problem(format!("sim: {e}"));
                    None
                }
            },
            None => Some(FaultPlan::default()),
        };
        if let (Some(ip), Some(password), Some(faults)) = (ip, password, faults) {
            specs.push(SimDeviceSpec {
                name: d.name.clone(),
                addr: SocketAddr::new(ip, d.port),
                username: d.username.clone(),
                password,
                faults,
            });
        }
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(SimError::Inventory {
            path: inv.path.clone(),
            reason: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_layouts() {
        let pw = Secret::new("pw");
        let f = FaultPlan::default();
        let base = std::net::Ipv4Addr::new(127, 0, 0, 10);
        let a = count_specs(3, base, 2222, Layout::Addresses, "admin", &pw, &f).unwrap();
        assert_eq!(a[2].name, "room-003");
        assert_eq!(a[2].addr, "127.0.0.12:2222".parse().unwrap());
        let p = count_specs(3, base, 2222, Layout::Ports, "admin", &pw, &f).unwrap();
        assert_eq!(p[2].addr, "127.0.0.10:2224".parse().unwrap());
        assert!(count_specs(2, base, u16::MAX, Layout::Ports, "admin", &pw, &f).is_err());
    }

    #[test]
    fn specs_from_the_engine_inventory() {
        std::env::set_var("ROOMKEY_SIM_TEST_PW_2", "pw2");
        let text = "defaults: { port: 2300, username: admin, auth: { password_env: ROOMKEY_SIM_TEST_PW_2 } }\n\
                    devices:\n  room-a: { host: 127.0.0.21, sim: { latency_ms: 5, drop_after: [{ pattern: Add }] } }\n  room-b: { host: 127.0.0.22 }\n";
        let inv = crate::inventory::parse(std::path::Path::new("inv.yaml"), text).unwrap();
        let specs = specs_from_inventory(&inv).unwrap();
        assert_eq!(specs.len(), 2);
        let a = specs.iter().find(|s| s.name == "room-a").unwrap();
        assert_eq!(a.addr, "127.0.0.21:2300".parse().unwrap());
        assert_eq!(a.password.expose(), "pw2");
        assert_eq!(a.faults.latency_ms, 5);
        assert_eq!(a.faults.drop_after.len(), 1);
        // The `sim:` block is the simulator's: the inventory keeps it opaque, the simulator
        // refuses an unknown key (naming file and device) along with every other problem.
        let bad = "defaults: { auth: { password_env: ROOMKEY_SIM_TEST_PW_2 } }\n\
                   devices:\n  room-a: { host: 127.0.0.21, sim: { bogus: 1 } }\n  \
                   room-b: { host: 127.0.0.22, sim: { variants: { external_identity: seed } } }\n  \
                   room-c: { host: 127.0.0.23, sim: { variants: { config_set: maybe } } }\n";
        let inv = crate::inventory::parse(std::path::Path::new("inv.yaml"), bad).unwrap();
        let err = specs_from_inventory(&inv).unwrap_err().to_string();
        assert!(err.contains("inv.yaml"), "{err}");
        assert!(err.contains("devices.room-a: sim:"), "{err}");
        assert!(err.contains("devices.room-c: sim:"), "{err}");
        assert!(!err.contains("room-b"), "{err}");
    }
}
