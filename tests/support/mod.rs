//! Test support: a lab of simulated rooms served in-process by the real simulator over
//! real SSH on loopback, with a test CA, per-room certificates, a vault and an inventory
//! file pointing at the rooms' actual (port 0) addresses. Each test picks its own
//! 127.N.x.y range, so tests never share a listener.
#![allow(dead_code)]

/// Runs a scenario `async fn NAME(reading, subnet)` as two tests, `NAME::raw` and
/// `NAME::base64url`, each on its own loopback range.
#[allow(unused_macros)] // used by the test files that run a scenario under both readings
macro_rules! both_readings {
    ($name:ident, $subnet:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn raw() {
                super::$name(roomkey::sim::model::PopulateReading::Raw, $subnet).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn base64url() {
                super::$name(
                    roomkey::sim::model::PopulateReading::Base64url,
                    $subnet + 100,
                )
                .await
            }
        }
    };
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use roomkey::cert::TestCa;
use roomkey::kdf::KdfPool;
use roomkey::secret::Secret;
use roomkey::sim::{DeviceSnapshot, FaultPlan, Fleet, FleetOptions, SimDeviceSpec};

pub const PASSWORD: &str = "lab-admin-password-7f3a";
pub const PASSPHRASE: &str = "lab vault passphrase 91c2";

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub fleet: Option<Fleet>,
    pub names: Vec<String>,
    pub inventory: PathBuf,
    pub vault: PathBuf,
    pub secrets: Vec<String>,
}

pub fn room_name(i: usize) -> String {
    format!("room-{:02}", i + 1)
}

pub fn identity(name: &str) -> String {
    format!("{name}.lab.example.com")
}

/// The per-device outcomes of a `--report` file: name → (status, the failed step and the
/// reason).
pub fn report_outcomes(report: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["device"].as_str().unwrap().to_string(),
                (
                    o["status"].as_str().unwrap().to_string(),
                    format!(
                        "{} {}",
                        o["failed_step"].as_str().unwrap_or_default(),
                        o["reason"].as_str().unwrap_or_default()
                    ),
                ),
            )
        })
        .collect()
}

/// A playbook with the given steps (YAML list items) and test-sized timeouts.
pub fn playbook(dir: &Path, name: &str, policy: &str, steps: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("name: {name}\npolicy: {{ {policy} }}\nsteps:\n{steps}"),
    )
    .unwrap();
    path
}

pub const FULL_FLOW: &str = "  - populate_secret: { initial: true }
  - add_certificate: {}
  - show_certificates: {}
  - activate_certificate: { purpose: WebexIdentity }
  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }
  - verify_external_identity: {}
";

pub const TEST_POLICY: &str = "concurrency: 8, connect_timeout: 5s, auth_timeout: 5s, command_timeout: 10s, retries: 2, retry_backoff: 100ms, host_key_policy: accept-new";

/// Writes `certs/NAME.pem` and `certs/NAME.key` for each room, issued by `ca` for the room's
/// identity (valid from an hour ago for 90 days).
pub fn issue_certificates(ca: &TestCa, certs: &Path, names: &[String]) {
    let now = time::OffsetDateTime::now_utc();
    for name in names {
        let cn = identity(name);
        let (cert, key) = ca
            .issue(
                &cn,
                std::slice::from_ref(&cn),
                now - time::Duration::hours(1),
                now + time::Duration::days(90),
            )
            .unwrap();
        std::fs::write(certs.join(format!("{name}.pem")), cert).unwrap();
        std::fs::write(certs.join(format!("{name}.key")), key.expose()).unwrap();
    }
}

impl Lab {
    /// Starts `n` rooms on 127.`subnet`.0.x; `faults(i)` gives room i's fault plan.
    pub async fn start(n: usize, subnet: u8, faults: impl Fn(usize) -> FaultPlan) -> Lab {
        Self::start_with(n, subnet, faults, |_, _| {}).await
    }

    /// [`start`](Self::start) with the fleet's options adjusted (SCEP servers, boot delay);
    /// `options` also gets the lab directory.
    pub async fn start_with(
        n: usize,
        subnet: u8,
        faults: impl Fn(usize) -> FaultPlan,
        options: impl FnOnce(&Path, &mut FleetOptions),
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..n).map(room_name).collect();
        let specs = names
            .iter()
            .enumerate()
            .map(|(i, name)| SimDeviceSpec {
                name: name.clone(),
                addr: format!("127.{subnet}.{}.{}:0", i / 200, i % 200 + 1)
                    .parse()
                    .unwrap(),
                username: "admin".into(),
                password: Secret::new(PASSWORD),
                faults: faults(i),
            })
            .collect();
        let mut opts = FleetOptions {
            state_dir: Some(dir.path().join("sim")),
            kdf: KdfPool::new(1),
            boot_delay: Duration::from_millis(300),
            auth_rejection_time: Duration::from_millis(10),
            ..FleetOptions::default()
        };
        options(dir.path(), &mut opts);
        let fleet = Fleet::start(specs, opts).await.unwrap();

        // Certificates from a test CA.
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        issue_certificates(&TestCa::create("lab CA").unwrap(), &certs, &names);

        // A vault with one unseeded secret per room.
        let vault = dir.path().join("vault");
        let mut v = roomkey::vault::Vault::create(&vault, &Secret::new(PASSPHRASE)).unwrap();
        let mut secrets = Vec::new();
        for name in &names {
            let s = roomkey::vault::generate_secret();
            secrets.push(s.expose().to_string());
            v.set_current(name, s, false, None).unwrap();
        }
        v.save().unwrap();
        drop(v);

        let mut inv = String::from(
            "vault: vault\nknown_hosts: known_hosts\ndefaults:\n  auth: { password_env: ROOMKEY_SIM_PASSWORD }\n  certificate: certs/{name}.pem\n  key: certs/{name}.key\n  identity: \"{name}.lab.example.com\"\ndevices:\n",
        );
        for d in fleet.devices() {
            inv.push_str(&format!(
                "  {}: {{ host: {}, port: {} }}\n",
                d.name,
                d.addr.ip(),
                d.addr.port()
            ));
        }
        let inventory = dir.path().join("inventory.yaml");
        std::fs::write(&inventory, &inv).unwrap();
        // The same rooms with the password written in (for tests that run the engine
        // in-process and must not touch the process environment).
        std::fs::write(
            dir.path().join("inventory-literal.yaml"),
            inv.replace(
                "auth: { password_env: ROOMKEY_SIM_PASSWORD }",
                &format!("auth: {{ password: \"{PASSWORD}\" }}"),
            ),
        )
        .unwrap();
        Lab {
            dir,
            fleet: Some(fleet),
            names,
            inventory,
            vault,
            secrets,
        }
    }

    pub fn fleet(&self) -> &Fleet {
        self.fleet.as_ref().unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `roomkey <args>` with the lab's environment.
    pub fn roomkey(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomkey"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("ROOMKEY_SIM_PASSWORD", PASSWORD)
            .env("ROOMKEY_VAULT_PASSPHRASE", PASSPHRASE)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `roomkey apply` on the lab and returns (exit code, stdout, stderr).
    pub async fn apply(&self, playbook: &Path, extra: &[&str]) -> (i32, String, String) {
        let inv = self.inventory.to_str().unwrap().to_string();
        let pb = playbook.to_str().unwrap().to_string();
        let mut args = vec!["apply", "-i", &inv, &pb, "--output", "plain"];
        args.extend_from_slice(extra);
        let out = self.roomkey(&args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn snapshot(&self, name: &str) -> DeviceSnapshot {
        self.fleet().snapshot(name).await.unwrap()
    }

    /// Every file under the lab directory except the simulator's own state (which holds the
    /// simulated devices' secrets by design) and the vault (encrypted).
    pub fn state_files_text(&self) -> String {
        files_text(&self.dir.path().join(".roomkey"))
    }

    /// Every file the simulator persisted (the rooms' state, keys included).
    pub fn sim_state_text(&self) -> String {
        files_text(&self.dir.path().join("sim"))
    }
}

/// The text of every file below `root` (missing directories are skipped).
fn files_text(root: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(t) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&t));
            }
        }
    }
    out
}

impl Lab {
    /// Prepares the lab's rooms for an in-process engine run (`inventory-literal.yaml`).
    pub fn prepare(
        &self,
        playbook: &Path,
    ) -> (
        roomkey::playbook::Playbook,
        Vec<roomkey::engine::PreparedDevice>,
        std::sync::Arc<dyn roomkey::engine::SecretStore>,
    ) {
        let store = std::sync::Arc::new(self.vault_store());
        let (playbook, devices) = self.prepare_with(playbook, store.as_ref());
        (playbook, devices, store)
    }

    /// A store over the lab's vault (opened now, so it holds the vault's lock).
    pub fn vault_store(&self) -> roomkey::engine::secrets::VaultSecrets {
        let vault = roomkey::vault::Vault::open(&self.vault, &Secret::new(PASSPHRASE)).unwrap();
        roomkey::engine::secrets::VaultSecrets::new(vault)
    }

    /// [`Lab::prepare`] with the caller's store (a test that needs the concrete type).
    pub fn prepare_with(
        &self,
        playbook: &Path,
        store: &dyn roomkey::engine::SecretStore,
    ) -> (
        roomkey::playbook::Playbook,
        Vec<roomkey::engine::PreparedDevice>,
    ) {
        let inventory =
            roomkey::inventory::load(&self.dir.path().join("inventory-literal.yaml")).unwrap();
        let playbook = roomkey::playbook::load(playbook).unwrap();
        let devices: Vec<&roomkey::inventory::Device> = inventory.devices.iter().collect();
        let prepared = roomkey::engine::prepare::prepare(
            &inventory.path,
            &devices,
            &playbook,
            Some(store),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        (playbook, prepared.devices)
    }
}

impl Lab {
    /// The configuration of an in-process engine run over the lab (not in check mode, not
    /// fresh, no window wait, started now), and the sender that stops it.
    pub fn run_config(
        &self,
        playbook: roomkey::playbook::Playbook,
        devices: Vec<roomkey::engine::PreparedDevice>,
        secrets: std::sync::Arc<dyn roomkey::engine::SecretStore>,
    ) -> (roomkey::engine::RunConfig, tokio::sync::watch::Sender<bool>) {
        let (tx, stop) = tokio::sync::watch::channel(false);
        let config = roomkey::engine::RunConfig {
            playbook,
            devices,
            state_dir: self.dir.path().join(".roomkey"),
            known_hosts: self.dir.path().join("known_hosts"),
            host_key_policy: None,
            check_mode: false,
            new_run: false,
            confirm_resend: Vec::new(),
            kdf: KdfPool::per_core(),
            secrets,
            stop,
            wait_for_window: false,
            start_time: None,
        };
        (config, tx)
    }
}

// ---- Added for the rotation tests (existing helpers above are unchanged) ----------------

impl Lab {
    /// The `roomkey apply` command for the lab (not started), for tests that add
    /// environment variables or kill the process.
    pub fn apply_command(&self, playbook: &Path, extra: &[&str]) -> tokio::process::Command {
        let inv = self.inventory.to_str().unwrap().to_string();
        let pb = playbook.to_str().unwrap().to_string();
        let mut args = vec!["apply", "-i", &inv, &pb, "--output", "plain"];
        args.extend_from_slice(extra);
        let mut cmd = self.roomkey(&args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// Runs `roomkey apply` with extra environment variables (`RUST_LOG`,
    /// `ROOMKEY_FAILPOINT`, …); returns (exit code or -1 if killed by a signal, stdout,
    /// stderr).
    pub async fn apply_env(
        &self,
        playbook: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        let mut cmd = self.apply_command(playbook, extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The lab's vault, opened read-only (no lock: a running apply may hold it).
    pub fn read_vault(&self) -> roomkey::vault::Vault {
        roomkey::vault::Vault::open_read_only(&self.vault, &Secret::new(PASSPHRASE)).unwrap()
    }

    /// The secret the simulated device holds, as text.
    pub async fn device_secret(&self, name: &str) -> Option<String> {
        self.snapshot(name)
            .await
            .secret
            .map(|s| s.expose().to_string())
    }
}

// ---- Added for the certificate tests (CA bundles, SCEP) ---------------------------------

/// The URL of the lab's simulated SCEP server.
pub const SCEP_URL: &str = "http://scep.lab.example.com/certsrv/mscep/mscep.dll";
/// The challenge password the lab's SCEP server expects.
pub const SCEP_CHALLENGE: &str = "scep-challenge-5b1e9c";

/// A SCEP server for [`Lab::start_with`]: its CA is written to `scep-ca.pem` in `dir`.
pub fn scep_server(dir: &Path) -> roomkey::sim::scep::ScepServer {
    let ca = TestCa::create("lab SCEP CA").unwrap();
    std::fs::write(dir.join("scep-ca.pem"), &ca.cert_pem).unwrap();
    roomkey::sim::scep::ScepServer::new(
        SCEP_URL,
        std::sync::Arc::new(ca),
        Secret::new(SCEP_CHALLENGE),
    )
    .unwrap()
}

impl Lab {
    /// Runs `roomkey plan` on the lab's inventory; returns (exit code, stdout).
    pub async fn plan(&self, playbook: &Path) -> (i32, String) {
        self.plan_with(playbook, &[]).await
    }

    /// `roomkey plan` with extra arguments (`--json`, `--limit ...`): (exit code, stdout).
    pub async fn plan_with(&self, playbook: &Path, extra: &[&str]) -> (i32, String) {
        let inv = self.inventory.to_str().unwrap().to_string();
        let pb = playbook.to_str().unwrap().to_string();
        let mut args = vec!["plan", "-i", &inv, &pb];
        args.extend_from_slice(extra);
        let out = self.roomkey(&args).output().await.unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Stores named credentials in the lab's vault.
    pub fn set_credentials(&self, creds: &[(&str, &str)]) {
        // The vault lock is an flock: a `roomkey` child that another test forks in this
        // process holds a copy of the lock's descriptor until it execs, so the lock taken
        // and released by `start` can look busy for an instant. Retry that, nothing else.
        let mut attempts = 0;
        let mut v = loop {
            match roomkey::vault::Vault::open(&self.vault, &Secret::new(PASSPHRASE)) {
                Ok(v) => break v,
                Err(roomkey::vault::VaultError::Locked { .. }) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("opening the lab vault: {e}"),
            }
        };
        for (name, value) in creds {
            v.set_credential(name, Secret::new(*value)).unwrap();
        }
        v.save().unwrap();
    }
}

// ---- Added for password-protected service keys --------------------------------------------

/// Encrypts the plain PKCS#8 key at `plain` into `out` exactly as an administrator would,
/// `openssl pkcs8 -topk8 -v2 aes-256-cbc` (PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC). The
/// password goes through the environment, not the command line, so it is not in `ps`.
pub fn openssl_encrypt_key(plain: &Path, out: &Path, password: &str) {
    let status = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout"])
        .arg("env:ROOMKEY_TEST_KEY_PASSWORD")
        .arg("-in")
        .arg(plain)
        .arg("-out")
        .arg(out)
        .env("ROOMKEY_TEST_KEY_PASSWORD", password)
        .status()
        .unwrap();
    assert!(status.success(), "openssl pkcs8 -topk8 failed");
    let text = std::fs::read_to_string(out).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
}
