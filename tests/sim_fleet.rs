//! 200 simulated devices in one process: every one accepts a login and answers xStatus.

mod support_raw;

use futures::StreamExt as _;
use roomkey::secret::Secret;
use roomkey::sim::{FaultPlan, Fleet, SimDeviceSpec};
use support_raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_answer() {
    let specs: Vec<SimDeviceSpec> = (1..=200)
        .map(|i| SimDeviceSpec {
            name: format!("room-{i:03}"),
            addr: "127.0.0.1:0".parse().unwrap(),
            username: USER.into(),
            password: Secret::new(PASSWORD),
            faults: FaultPlan::default(),
        })
        .collect();
    let fleet = Fleet::start(specs, options(None)).await.unwrap();
    let devices = fleet.devices();
    assert_eq!(devices.len(), 200);
    let results: Vec<(String, String)> = futures::stream::iter(devices.clone())
        .map(|d| async move {
            let mut c = RawClient::connect(d.addr, USER, PASSWORD).await.unwrap();
            let banner = c.read_banner().await;
            assert!(banner.starts_with(&format!("Welcome to {}\r\n", d.name)));
            c.cmd("echo off", "OK\r\n").await;
            let reply = c.cmd("xStatus SystemUnit ProductId", "\r\nOK\r\n").await;
            (d.name, reply)
        })
        .buffer_unordered(25)
        .collect()
        .await;
    assert_eq!(results.len(), 200);
    for (name, reply) in results {
        assert_eq!(
            reply, "*s SystemUnit ProductId: \"Cisco Room Kit\"\r\n** end\r\n\r\nOK\r\n",
            "{name}"
        );
    }
    fleet.shutdown().await;
}
