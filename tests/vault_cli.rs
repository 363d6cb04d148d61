//! `roomkey secret ...` end to end, running the real binary with the passphrase in
//! `ROOMKEY_VAULT_PASSPHRASE` (or a passphrase file) and no terminal.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PASS: &str = "cli test passphrase";

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    vault: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let vault = root.join("state/vault");
        Env {
            _dir: dir,
            root,
            vault,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_roomkey"));
        c.arg("secret")
            .args(args)
            .arg("--vault")
            .arg(&self.vault)
            .env("ROOMKEY_VAULT_PASSPHRASE", PASS)
            .env_remove("ROOMKEY_VAULT")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_generate_set_show_round_trip() {
    let e = Env::new();
    e.ok(&["init"]);
    assert_eq!(mode(&e.vault), 0o600);
    // init never overwrites.
    let again = e.run(&["init"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already exists"));

    e.ok(&["generate", "--device", "room-a", "room-b"]);
    let a = e.ok(&["show", "--device", "room-a"]);
    let a = a.trim_end();
    assert_eq!(a.len(), 42, "generated phrase: 41 alphanumerics and a `~`");
    assert!(
        a.contains('~'),
        "no base64 decoder accepts a generated phrase"
    );
    // Generating again leaves an existing secret alone.
    let out = e.run(&["generate", "room-a"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("already has a secret"));
    assert_eq!(e.ok(&["show", "--device", "room-a"]).trim_end(), a);

    let out = e.with_stdin(
        &["set", "--device", "room-a", "--seeded"],
        "manual secret 1\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.ok(&["show", "--device", "room-a"]), "manual secret 1\n");
    assert_eq!(mode(&e.vault), 0o600);

    let list = e.ok(&["list"]);
    let line = list.lines().find(|l| l.starts_with("room-a")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "ok");
    assert_eq!(cols[2], "yes");
    assert_eq!(cols[4], "no");
    assert_eq!(cols[5], "1", "the generated secret is kept as previous");

    let missing = e.run(&["show", "--device", "nope"]);
    assert!(!missing.status.success());
}

#[test]
fn list_never_prints_a_secret() {
    let e = Env::new();
    e.ok(&["init"]);
    e.ok(&["generate", "r1", "r2", "r3"]);
    let out = e.with_stdin(&["set", "--device", "r4"], "hand-typed-secret-4");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = e.with_stdin(&["credential", "set", "ssh-admin"], "ssh-password-zz");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut secrets: Vec<String> = ["r1", "r2", "r3", "r4"]
        .iter()
        .map(|d| e.ok(&["show", "--device", d]).trim_end().to_owned())
        .collect();
    secrets.push("ssh-password-zz".into());
    let out = e.run(&["list"]);
    assert!(out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("r4"));
    assert!(all.contains("credentials: ssh-admin"));
    for s in &secrets {
        assert!(!all.contains(s.as_str()), "list printed a secret");
    }
    // Neither do the commands that change the vault.
    for args in [vec!["generate", "r5"], vec!["list"]] {
        let o = e.run(&args);
        let text = format!("{}{}", stderr(&o), String::from_utf8_lossy(&o.stdout));
        for s in &secrets {
            assert!(!text.contains(s.as_str()));
        }
    }
}

#[test]
fn a_missing_vault_says_how_to_create_one() {
    let e = Env::new();
    for args in [vec!["list"], vec!["generate", "r1"]] {
        let out = e.run(&args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("secret init"), "{}", stderr(&out));
    }
    assert!(!e.vault.parent().unwrap().exists());
}

#[test]
fn wrong_passphrase_is_an_error_and_the_file_is_unchanged() {
    let e = Env::new();
    e.ok(&["init"]);
    e.ok(&["generate", "r1"]);
    let before = std::fs::read(&e.vault).unwrap();
    for args in [
        vec!["list"],
        vec!["generate", "r2"],
        vec!["show", "--device", "r1"],
    ] {
        let out = e
            .cmd(&args)
            .env("ROOMKEY_VAULT_PASSPHRASE", "wrong")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("wrong vault passphrase"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
    let out = e.with_stdin(&["set", "--device", "r1"], "x");
    assert!(out.status.success());
    let after_set = std::fs::read(&e.vault).unwrap();
    assert_ne!(after_set, before);
    let out = e
        .cmd(&["set", "--device", "r1"])
        .env("ROOMKEY_VAULT_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&e.vault).unwrap(), after_set);
}

#[test]
fn tampered_vault_is_an_error_and_left_alone() {
    let e = Env::new();
    e.ok(&["init"]);
    e.ok(&["generate", "r1"]);
    let mut bytes = std::fs::read(&e.vault).unwrap();
    let i = bytes.len() - 20;
    bytes[i] ^= 1;
    std::fs::write(&e.vault, &bytes).unwrap();
    let out = e.run(&["generate", "r2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("modified or corrupted"));
    assert_eq!(std::fs::read(&e.vault).unwrap(), bytes);
}

#[test]
fn the_v1_fixture_reads_through_the_cli() {
    let e = Env::new();
    std::fs::create_dir_all(e.vault.parent().unwrap()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault/v1.vault"),
        &e.vault,
    )
    .unwrap();
    let out = e
        .cmd(&["show", "--device", "room-2"])
        .env("ROOMKEY_VAULT_PASSPHRASE", "roomkey fixture v1 passphrase")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fixture-current-2\n");
    assert!(stderr(&out).contains("rotation-pending"));
}

#[test]
fn passphrase_file_is_accepted() {
    let e = Env::new();
    let pf = e.root.join("pass.txt");
    std::fs::write(&pf, "from a file\n").unwrap();
    let pf = pf.to_str().unwrap();
    let out = e
        .cmd(&["init", "--passphrase-file", pf])
        .env_remove("ROOMKEY_VAULT_PASSPHRASE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The env passphrase is not the file's: the vault uses the file's.
    assert!(!e.run(&["list"]).status.success());
    let out = e
        .cmd(&["list", "--passphrase-file", pf])
        .env_remove("ROOMKEY_VAULT_PASSPHRASE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn no_passphrase_and_no_terminal_is_a_clear_error() {
    // `setsid` detaches the child from any controlling terminal, so the prompt cannot
    // open /dev/tty (and the test cannot hang waiting for a developer's keyboard).
    if Command::new("setsid").arg("--version").output().is_err() {
        return;
    }
    let e = Env::new();
    let out = Command::new("setsid")
        .arg("-w")
        .arg(env!("CARGO_BIN_EXE_roomkey"))
        .args(["secret", "init", "--vault"])
        .arg(&e.vault)
        .env_remove("ROOMKEY_VAULT_PASSPHRASE")
        .env_remove("ROOMKEY_VAULT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ROOMKEY_VAULT_PASSPHRASE"),
        "{}",
        stderr(&out)
    );
    assert!(!e.vault.exists());
}

#[test]
fn export_then_import_csv_and_yaml() {
    let e = Env::new();
    e.ok(&["init"]);
    e.ok(&["generate", "r1", "r2"]);
    let s1 = e.ok(&["show", "--device", "r1"]);
    let s2 = e.ok(&["show", "--device", "r2"]);
    for ext in ["csv", "yaml"] {
        let file = e.root.join(format!("export.{ext}"));
        let f = file.to_str().unwrap();
        let out = e.run(&["export", f]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("plaintext"));
        assert_eq!(mode(&file), 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(s1.trim_end()) && text.contains(s2.trim_end()));
        // Export never overwrites.
        assert!(!e.run(&["export", f]).status.success());

        // Into a fresh vault.
        let e2 = Env::new();
        e2.ok(&["init"]);
        let out = e2.run(&["import", f, "--seeded"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("delete it"));
        assert_eq!(e2.ok(&["show", "--device", "r1"]), s1);
        assert_eq!(e2.ok(&["show", "--device", "r2"]), s2);
        let list = e2.ok(&["list"]);
        assert!(list
            .lines()
            .any(|l| l.starts_with("r1") && l.contains(" yes ")));
    }
}

#[test]
fn import_refuses_to_replace_a_different_secret_without_replace() {
    let e = Env::new();
    e.ok(&["init"]);
    let out = e.with_stdin(&["set", "--device", "r1"], "original");
    assert!(out.status.success());
    let file = e.root.join("in.csv");
    std::fs::write(&file, "device,secret\nr1,replacement\nr2,\"with,comma\"\n").unwrap();
    let f = file.to_str().unwrap();
    let out = e.run(&["import", f]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("r1"));
    assert!(!stderr(&out).contains("replacement"));
    assert_eq!(e.ok(&["show", "--device", "r1"]), "original\n");
    assert!(!e.run(&["show", "--device", "r2"]).status.success());

    e.ok(&["import", f, "--replace"]);
    assert_eq!(e.ok(&["show", "--device", "r1"]), "replacement\n");
    assert_eq!(e.ok(&["show", "--device", "r2"]), "with,comma\n");
    let list = e.ok(&["list"]);
    let r1: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("r1"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(r1[5], "1", "the replaced secret is kept as previous");
}

#[test]
fn bad_import_rows_name_the_line_not_the_secret() {
    let e = Env::new();
    e.ok(&["init"]);
    let file = e.root.join("bad.csv");
    std::fs::write(&file, "r1,ok-secret\nr2,leaky-secret,extra\n").unwrap();
    let out = e.run(&["import", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 2"));
    assert!(!stderr(&out).contains("leaky-secret"));
}

#[test]
fn credentials_set_and_remove() {
    let e = Env::new();
    e.ok(&["init"]);
    let out = e.with_stdin(&["credential", "set", "ssh-admin"], "pw-1\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(e.ok(&["list"]).contains("credentials: ssh-admin"));
    e.ok(&["credential", "remove", "ssh-admin"]);
    assert!(!e.ok(&["list"]).contains("ssh-admin"));
    assert!(!e
        .run(&["credential", "remove", "ssh-admin"])
        .status
        .success());
}

#[test]
fn a_second_writer_is_refused_while_the_vault_is_locked() {
    let e = Env::new();
    e.ok(&["init"]);
    // Hold the lock the way another roomkey process would.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.vault.with_file_name("vault.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let out = e.run(&["generate", "r1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    // Readers are not blocked.
    assert!(e.run(&["list"]).status.success());
    drop(lock);
    e.ok(&["generate", "r1"]);
}
