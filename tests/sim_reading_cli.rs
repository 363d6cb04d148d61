//! `roomkey sim --populate-reading base64url` as its own process: the knob reaches every
//! simulated device, and a real `roomkey apply` seeds and rotates them, learning from the
//! first device that this "release" decodes the populate plaintext.

use std::path::Path;
use std::process::Stdio;

use roomkey::secret::Secret;
use roomkey::vault::{Reading, Vault};
use tokio::io::AsyncBufReadExt as _;

const PASSWORD: &str = "sim-reading-cli-password";
const PASSPHRASE: &str = "sim reading cli passphrase";

async fn apply(dir: &Path, playbook: &str) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args([
            "apply",
            "-i",
            "inventory.yaml",
            playbook,
            "--output",
            "plain",
        ])
        .current_dir(dir)
        .env("ROOMKEY_SIM_PASSWORD", PASSWORD)
        .env("ROOMKEY_VAULT_PASSPHRASE", PASSPHRASE)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_cli_knob_makes_every_device_decode_the_populate_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args([
            "sim",
            "--count",
            "2",
            "--base",
            "127.91.0.1",
            "--port",
            "0",
            "--populate-reading",
            "base64url",
            "--state-dir",
        ])
        .arg(dir.path().join("sim"))
        .env("ROOMKEY_SIM_PASSWORD", PASSWORD)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut inventory = String::from(
        "vault: vault\nknown_hosts: known_hosts\ndefaults:\n  auth: { password_env: ROOMKEY_SIM_PASSWORD }\ndevices:\n",
    );
    let mut names = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.starts_with("serving ") {
            break;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let addr: std::net::SocketAddr = fields[1].parse().unwrap();
        inventory.push_str(&format!(
            "  {}: {{ host: {}, port: {} }}\n",
            fields[0],
            addr.ip(),
            addr.port()
        ));
        names.push(fields[0].to_string());
    }
    assert_eq!(names, ["room-001", "room-002"]);
    std::fs::write(dir.path().join("inventory.yaml"), inventory).unwrap();
    let mut v = Vault::create(&dir.path().join("vault"), &Secret::new(PASSPHRASE)).unwrap();
    for name in &names {
        v.set_current(name, roomkey::vault::generate_phrase(), false, None)
            .unwrap();
    }
    v.save().unwrap();
    drop(v);
    let policy = "policy: { concurrency: 2, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 20s, retries: 1, retry_backoff: 100ms, host_key_policy: accept-new }\n";
    std::fs::write(
        dir.path().join("seed.yaml"),
        format!("name: seed\n{policy}steps:\n  - populate_secret: {{ initial: true }}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rotate.yaml"),
        format!(
            "name: rotate\n{policy}serial: [1, \"100%\"]\nany_errors_fatal: true\nsteps:\n  - rotate_secret: {{}}\n  - populate_secret: {{}}\n"
        ),
    )
    .unwrap();
    let (code, out) = apply(dir.path(), "seed.yaml").await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = apply(dir.path(), "rotate.yaml").await;
    assert_eq!(code, 0, "{out}");
    let v = Vault::open_read_only(&dir.path().join("vault"), &Secret::new(PASSPHRASE)).unwrap();
    assert_eq!(
        v.release_reading(roomkey::sim::model::RELEASE),
        Some(Reading::Base64url),
        "the canary showed the simulator decodes the plaintext"
    );
    for name in &names {
        let d = v.device(name).unwrap();
        assert_eq!(d.firmware.as_ref().unwrap().reading, Reading::Base64url);
        assert!(d.pending.is_none() && d.seeded);
    }
    sim.start_kill().unwrap();
    sim.wait().await.unwrap();
}
