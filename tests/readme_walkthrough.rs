//! The README's walkthrough, followed literally: the commands between the `walkthrough`
//! markers of README.md are run in order, from a clean directory, against simulated rooms
//! over real SSH. The one thing a reader supplies is the rooms' addresses: the
//! `--device NAME=HOST` values of `roomkey init` are replaced by where the simulated rooms
//! listen, and the `...` of each `export` by the test's password and passphrase. No file is
//! renamed and no path guessed; every command must succeed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use roomkey::kdf::KdfPool;
use roomkey::secret::Secret;
use roomkey::sim::{Fleet, FleetOptions, SimDeviceSpec};

const README: &str = include_str!("../README.md");
const PASSWORD: &str = "walkthrough-admin-3c1d";
const PASSPHRASE: &str = "walkthrough vault passphrase 72aa";

/// The shell lines of the walkthrough block, comments and blank lines dropped.
fn walkthrough_lines() -> Vec<String> {
    let start = README
        .find("<!-- walkthrough")
        .expect("README has a walkthrough block");
    let rest = &README[start..];
    let end = rest
        .find("<!-- /walkthrough -->")
        .expect("the walkthrough block ends");
    let block = &rest[..end];
    let body_start = block.find("```sh\n").expect("a sh code block") + "```sh\n".len();
    let body_end = block.rfind("```").expect("the code block ends");
    block[body_start..body_end]
        .lines()
        .map(|l| match l.find(" #") {
            Some(i) => l[..i].trim_end(),
            None => l,
        })
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

struct Shell {
    cwd: PathBuf,
    env: BTreeMap<String, String>,
    addresses: BTreeMap<String, String>,
}

impl Shell {
    async fn run(&mut self, line: &str) {
        for command in line.split("&&").map(str::trim) {
            let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
            match words.first().map(String::as_str) {
                Some("cd") => {
                    self.cwd = self.cwd.join(&words[1]);
                    assert!(self.cwd.is_dir(), "cd {}: no such directory", words[1]);
                }
                Some("export") => {
                    let (k, v) = words[1].split_once('=').unwrap();
                    let value = match (k, v) {
                        ("ROOMKEY_DEVICE_PASSWORD", "...") => PASSWORD,
                        ("ROOMKEY_VAULT_PASSPHRASE", "...") => PASSPHRASE,
                        (_, v) => v,
                    };
                    self.env.insert(k.to_string(), value.to_string());
                }
                Some("roomkey") => self.roomkey(&words[1..], line).await,
                other => panic!("the walkthrough has a command this test cannot run: {other:?}"),
            }
        }
    }

    async fn roomkey(&self, args: &[String], line: &str) {
        let args: Vec<String> = if args.first().map(String::as_str) == Some("init") {
            // The reader's room addresses -> the simulated rooms'.
            args.iter()
                .map(|a| match a.split_once('=') {
                    Some((name, _)) if self.addresses.contains_key(name) => {
                        format!("{name}={}", self.addresses[name])
                    }
                    _ => a.clone(),
                })
                .collect()
        } else {
            args.to_vec()
        };
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomkey"))
            .args(&args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "README command failed ({:?}): {line}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status.code()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_works_literally() {
    let lines = walkthrough_lines();
    assert!(lines.len() >= 10, "{lines:?}");
    let names: Vec<String> = lines
        .iter()
        .find(|l| l.starts_with("roomkey init"))
        .expect("the walkthrough starts with roomkey init")
        .split_whitespace()
        .filter_map(|w| w.split_once('=').map(|(n, _)| n.to_string()))
        .collect();
    assert!(!names.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let specs = names
        .iter()
        .enumerate()
        .map(|(i, name)| SimDeviceSpec {
            name: name.clone(),
            addr: format!("127.59.0.{}:0", i + 1).parse().unwrap(),
            username: "admin".into(),
            password: Secret::new(PASSWORD),
            faults: Default::default(),
        })
        .collect();
    let fleet = Fleet::start(
        specs,
        FleetOptions {
            state_dir: Some(dir.path().join("sim")),
            kdf: KdfPool::new(1),
            boot_delay: Duration::from_millis(300),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let addresses = fleet
        .devices()
        .iter()
        .map(|d| (d.name.clone(), d.addr.to_string()))
        .collect();
    let mut shell = Shell {
        cwd: dir.path().to_path_buf(),
        env: BTreeMap::new(),
        addresses,
    };
    for line in &lines {
        shell.run(line).await;
    }

    // The walkthrough did what it says: every room holds a valid external identity with
    // the certificate the site's files name, and the files are where the README says.
    let site = dir.path().join("site");
    for name in &names {
        let snap = fleet.snapshot(name).await.unwrap();
        let active = snap
            .certificates
            .iter()
            .find(|c| c.used_for.iter().any(|u| u == "WebexIdentity"))
            .unwrap_or_else(|| panic!("{name}: no WebexIdentity certificate"));
        assert_eq!(active.common_name, format!("{name}.example.com"));
        let cert = roomkey::cert::parse_cert_pem(
            &std::fs::read_to_string(site.join(format!("certs/{name}.pem"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            roomkey::engine::steps::normalise_fingerprint(&active.fingerprint),
            roomkey::engine::steps::normalise_fingerprint(&cert.fingerprint_sha1)
        );
        assert!(site.join(format!("certs/{name}.csr")).is_file());
    }
    for f in [
        ".roomkey/vault",
        ".roomkey/known_hosts",
        ".gitignore",
        "run.json",
        "run.html",
        "roomkey.prom",
    ] {
        assert!(site.join(f).is_file(), "{f} missing");
    }
    assert!(
        !dir.path().join(".roomkey").exists(),
        "state outside the site"
    );
    let gitignore = std::fs::read_to_string(site.join(".gitignore")).unwrap();
    assert!(gitignore.contains("/.roomkey/") && gitignore.contains("*.key"));
    fleet.shutdown().await;
}
