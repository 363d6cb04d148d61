//! RSA host keys (catalogue hostkey.types): roomkey's SSH client connects to a simulated
//! device that offers only an RSA key, pins it in known_hosts, and reconnects under strict
//! checking, also after the simulator restarted (the key is persisted); a device pinned by
//! its RSA key that also offers Ed25519 is not reported as changed, because the pinned type
//! (`ssh-rsa`, signed as `rsa-sha2-512`/`rsa-sha2-256`) is offered first.

use std::path::Path;
use std::time::Duration;

use roomkey::secret::Secret;
use roomkey::sim::store::HostKeyType;
use roomkey::sim::{FaultPlan, Fleet, FleetOptions, SimDeviceSpec};
use roomkey::ssh::{ClientAuth, ConnectOptions, HostKeyPolicy, TshSession};

const USER: &str = "admin";
const PASSWORD: &str = "host-key-pw";

async fn start(ip: &str, types: Vec<HostKeyType>, state_dir: &Path) -> Fleet {
    let spec = SimDeviceSpec {
        name: "room-rsa".into(),
        addr: format!("{ip}:0").parse().unwrap(),
        username: USER.into(),
        password: Secret::new(PASSWORD),
        faults: FaultPlan {
            host_key_types: types,
            ..FaultPlan::default()
        },
    };
    let opts = FleetOptions {
        state_dir: Some(state_dir.to_path_buf()),
        kdf: roomkey::kdf::KdfPool::new(1),
        boot_delay: Duration::from_millis(300),
        auth_rejection_time: Duration::from_millis(10),
        ..FleetOptions::default()
    };
    Fleet::start(vec![spec], opts).await.expect("fleet starts")
}

fn options(
    addr: std::net::SocketAddr,
    known_hosts: &Path,
    policy: HostKeyPolicy,
) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        addr.ip().to_string(),
        USER,
        ClientAuth::Password(Secret::new(PASSWORD)),
    );
    o.port = addr.port();
    o.known_hosts = known_hosts.to_path_buf();
    o.host_key_policy = policy;
    o.connect_timeout = Duration::from_secs(30);
    o.auth_timeout = Duration::from_secs(30);
    o.command_timeout = Duration::from_secs(30);
    o
}

async fn status_read(o: &ConnectOptions) {
    let mut s = TshSession::connect(o)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    let reply = s
        .run(&roomkey::tsh::TshCommand::xstatus("SystemUnit Uptime").unwrap())
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_keyed_device_is_pinned_and_reconnected() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim");
    let known_hosts = dir.path().join("known_hosts");
    let fleet = start("127.211.0.1", vec![HostKeyType::Rsa], &state).await;
    let info = fleet.devices()[0].clone();
    assert_eq!(info.host_key.algorithm().as_str(), "ssh-rsa");

    // First contact: accepted and pinned as an RSA key.
    status_read(&options(info.addr, &known_hosts, HostKeyPolicy::AcceptNew)).await;
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(" ssh-rsa "), "{text}");
    let pinned = roomkey::ssh::known_hosts::entry_line(
        &info.addr.ip().to_string(),
        info.addr.port(),
        &info.host_key,
    )
    .unwrap();
    assert_eq!(text.trim_end(), pinned.trim_end());

    // Reconnect under strict checking: the pinned key matches.
    status_read(&options(info.addr, &known_hosts, HostKeyPolicy::Strict)).await;

    // The simulator restarts on the same state dir: the same RSA key, still accepted.
    fleet.shutdown().await;
    let fleet = start("127.211.0.1", vec![HostKeyType::Rsa], &state).await;
    let again = fleet.devices()[0].clone();
    assert_eq!(again.host_key, info.host_key, "the RSA key is persisted");
    // The listener's port is new (port 0): the pin moves to it, the key stays.
    let text = std::fs::read_to_string(&known_hosts).unwrap().replace(
        &format!("]:{} ", info.addr.port()),
        &format!("]:{} ", again.addr.port()),
    );
    assert!(
        text.contains(&format!("]:{} ssh-rsa ", again.addr.port())),
        "{text}"
    );
    std::fs::write(&known_hosts, &text).unwrap();
    status_read(&options(again.addr, &known_hosts, HostKeyPolicy::Strict)).await;
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pinned_as_rsa_that_also_offers_ed25519_is_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim");
    let fleet = start(
        "127.211.0.2",
        vec![HostKeyType::Ed25519, HostKeyType::Rsa],
        &state,
    )
    .await;
    let info = fleet.devices()[0].clone();
    let rsa = info
        .host_keys
        .iter()
        .find(|k| k.algorithm().is_rsa())
        .expect("an RSA key")
        .clone();
    let host = info.addr.ip().to_string();
    let line = roomkey::ssh::known_hosts::entry_line(&host, info.addr.port(), &rsa).unwrap();

    // The pinned `ssh-rsa` key puts every RSA signature algorithm first, SHA-2 ones before
    // the old SHA-1 `ssh-rsa`; Ed25519 only after them.
    let order = roomkey::ssh::known_hosts::preferred_algorithms(
        &line,
        &host,
        info.addr.port(),
        &russh::Preferred::DEFAULT.key,
    );
    let names: Vec<&str> = order.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        names.get(..3),
        Some(&["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"][..]),
        "{names:?}"
    );

    // Over SSH: strict checking against the RSA pin connects (no "changed" report) and
    // leaves known_hosts as it was.
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, &line).unwrap();
    status_read(&options(info.addr, &known_hosts, HostKeyPolicy::Strict)).await;
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), line);

    // Pinned by its Ed25519 key instead, the same device connects too.
    let ed = info
        .host_keys
        .iter()
        .find(|k| k.algorithm().as_str() == "ssh-ed25519")
        .expect("an Ed25519 key")
        .clone();
    let line = roomkey::ssh::known_hosts::entry_line(&host, info.addr.port(), &ed).unwrap();
    std::fs::write(&known_hosts, &line).unwrap();
    status_read(&options(info.addr, &known_hosts, HostKeyPolicy::Strict)).await;
    fleet.shutdown().await;
}
