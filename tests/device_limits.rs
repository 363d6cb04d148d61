//! roomkey against a device's session limits and failed-login lockout (catalogue
//! session.limits, auth.lockout, auth.prompts), over real SSH to the simulator: a refused
//! password costs exactly one failed login per connection (no second try with the same
//! secret by another method or prompt), a locked account refuses even the right password,
//! and a session beyond the device's limit is told so.

mod support_raw;

use std::time::Duration;

use roomkey::secret::Secret;
use roomkey::sim::FaultPlan;
use roomkey::ssh::{ClientAuth, ConnectOptions, HostKeyPolicy, TshSession};
use support_raw::*;

fn options(addr: std::net::SocketAddr, dir: &tempfile::TempDir, pw: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        addr.ip().to_string(),
        USER,
        ClientAuth::Password(Secret::new(pw)),
    );
    o.port = addr.port();
    o.known_hosts = dir.path().join("known_hosts");
    o.host_key_policy = HostKeyPolicy::AcceptNew;
    o.connect_timeout = Duration::from_secs(10);
    o.auth_timeout = Duration::from_secs(10);
    o.command_timeout = Duration::from_secs(10);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_costs_one_failed_login_per_connection() {
    let fleet = one_device(
        FaultPlan {
            max_failed_logins: Some(3),
            lockout_secs: Some(3600),
            ..FaultPlan::default()
        },
        None,
    )
    .await;
    let addr = fleet.devices()[0].addr;
    let dir = tempfile::tempdir().unwrap();
    // Two refused connections: two failed logins, below the lockout of three.
    for _ in 0..2 {
        let err = TshSession::connect(&options(addr, &dir, "wrong"))
            .await
            .unwrap_err();
        assert!(err.is_auth(), "{err}");
    }
    // So the right password still works (and resets the count).
    let s = TshSession::connect(&options(addr, &dir, PASSWORD))
        .await
        .expect("not locked out by two refused connections");
    drop(s);
    // Three refused connections lock the account: now even the right password is refused.
    for _ in 0..3 {
        assert!(TshSession::connect(&options(addr, &dir, "wrong"))
            .await
            .unwrap_err()
            .is_auth());
    }
    let err = TshSession::connect(&options(addr, &dir, PASSWORD))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "locked: {err}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_beyond_the_limit_is_told_so_and_closed() {
    let fleet = one_device(
        FaultPlan {
            max_sessions: Some(1),
            ..FaultPlan::default()
        },
        None,
    )
    .await;
    let addr = fleet.devices()[0].addr;
    let first = login(&fleet).await;
    let mut second = RawClient::connect(addr, USER, PASSWORD).await.unwrap();
    assert_eq!(
        second.read_to_close().await,
        "Maximum number of sessions reached\r\n"
    );
    // roomkey's own client reports it as a failed login phase, not a hang.
    let dir = tempfile::tempdir().unwrap();
    let err = TshSession::connect(&options(addr, &dir, PASSWORD))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    drop(first);
    fleet.shutdown().await;
}

/// A device offering Ed25519 and ECDSA host keys, pinned by its ECDSA key: roomkey offers the
/// pinned type first (as OpenSSH does) and connects under strict checking instead of
/// reporting a changed key; pinned by its Ed25519 key, the same (catalogue hostkey.types).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_host_key_type_is_preferred() {
    use roomkey::sim::store::HostKeyType;
    let fleet = one_device(
        FaultPlan {
            host_key_types: vec![HostKeyType::Ed25519, HostKeyType::Ecdsa],
            ..FaultPlan::default()
        },
        None,
    )
    .await;
    let info = fleet.devices()[0].clone();
    assert_eq!(info.host_keys.len(), 2);
    for key in &info.host_keys {
        let dir = tempfile::tempdir().unwrap();
        let line = roomkey::ssh::known_hosts::entry_line(
            &info.addr.ip().to_string(),
            info.addr.port(),
            key,
        )
        .unwrap();
        std::fs::write(dir.path().join("known_hosts"), line).unwrap();
        let mut o = options(info.addr, &dir, PASSWORD);
        o.host_key_policy = HostKeyPolicy::Strict;
        let s = TshSession::connect(&o)
            .await
            .unwrap_or_else(|e| panic!("pinned {}: {e}", key.algorithm().as_str()));
        drop(s);
    }
    fleet.shutdown().await;
}
