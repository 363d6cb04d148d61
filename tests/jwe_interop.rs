//! Interop of `roomkey::jwe` with an independent implementation (Python's hashlib.scrypt +
//! `cryptography` AESGCM, in tests/fixtures/jwe/make_fixture.py).
//!
//! - python_made.json was produced outside Rust by
//!   `python3 tests/fixtures/jwe/make_fixture.py make tests/fixtures/jwe/python_made.json`;
//!   Rust must decrypt every case (always runs).
//! - rust_made.json was produced by roomkey with
//!   `cargo test --test jwe_interop -- --ignored regenerate_rust_fixture`; the Python script
//!   verifies it (`python3 tests/fixtures/jwe/make_fixture.py verify tests/fixtures/jwe/rust_made.json`).
//! - Fresh JWEs from `roomkey::jwe::seal` and from `roomkey jwe encrypt` are verified by the
//!   Python script whenever python3 with `cryptography` is available (otherwise a skip note is
//!   printed: CI images may lack it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use roomkey::jwe::{self, Action, Enc};
use roomkey::secret::Secret;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwe")
}

fn cases(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture_dir().join(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn field<'a>(case: &'a serde_json::Value, name: &str) -> &'a str {
    case[name].as_str().unwrap()
}

/// Runs `roomkey ARGS` with `input` on its standard input.
fn roomkey_with_stdin(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
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

fn python_available() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography, hashlib; hashlib.scrypt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn python_verify(path: &Path) -> bool {
    if !python_available() {
        // CI installs it (.ci/run): there, a missing independent check is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide python3 with the `cryptography` package (see .ci/run)"
        );
        eprintln!("SKIP: python3 with the `cryptography` package is not available; the Python side of the interop check did not run");
        return false;
    }
    let out = Command::new("python3")
        .arg(fixture_dir().join("make_fixture.py"))
        .arg("verify")
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python verifier failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    true
}

fn check_case_in_rust(case: &serde_json::Value) {
    let name = field(case, "name");
    let secret = Secret::new(field(case, "secret"));
    let (header, plaintext) =
        jwe::open(field(case, "jwe"), &secret).unwrap_or_else(|e| panic!("case {name}: {e}"));
    assert_eq!(header.action.to_string(), field(case, "action"), "{name}");
    assert_eq!(header.enc.to_string(), field(case, "enc"), "{name}");
    let expected = STANDARD.decode(field(case, "plaintext_b64")).unwrap();
    assert_eq!(plaintext.as_slice(), expected.as_slice(), "{name}");
    // And the wrong secret is refused.
    assert_eq!(
        jwe::open(field(case, "jwe"), &Secret::new("not the secret")).unwrap_err(),
        jwe::JweError::Authentication
    );
}

#[test]
fn python_made_jwes_decrypt_in_rust() {
    let cases = cases("python_made.json");
    assert!(cases.len() >= 4);
    for case in &cases {
        check_case_in_rust(case);
    }
}

#[test]
fn python_made_jwe_decrypts_with_the_cli() {
    let case = &cases("python_made.json")[0];
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", field(case, "secret"))).unwrap();
    let out = roomkey_with_stdin(
        &[
            "jwe",
            "decrypt",
            "--secret-file",
            secret_file.to_str().unwrap(),
        ],
        &format!("{}\n", field(case, "jwe")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        STANDARD.decode(field(case, "plaintext_b64")).unwrap()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("action=add enc=A128GCM"), "{stderr}");
    assert!(!stderr.contains(field(case, "secret")));
}

#[test]
fn rust_made_fixture_decrypts_in_rust_and_python() {
    for case in &cases("rust_made.json") {
        check_case_in_rust(case);
    }
    python_verify(&fixture_dir().join("rust_made.json"));
}

/// The cases roomkey seals: every action with both encs, plus an empty populate.
fn rust_cases() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for enc in Enc::ALL {
        for action in Action::ALL {
            let secret = if action == Action::Populate {
                "0123456789abcdef"
            } else {
                "ossifrage"
            };
            let plaintext: &[u8] = match action {
                Action::Populate => b"a new secret phrase",
                Action::Add => b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n",
                Action::Activate | Action::Deactivate => b"3f786850e387550fdab836ed7e6dc881de23001b",
            };
            let compact = jwe::seal(action, enc, &Secret::new(secret), plaintext).unwrap();
            out.push(serde_json::json!({
                "name": format!("{action}-{enc}"),
                "secret": secret,
                "action": action.to_string(),
                "enc": enc.to_string(),
                "plaintext_b64": STANDARD.encode(plaintext),
                "jwe": compact,
            }));
        }
    }
    let empty = jwe::seal(
        Action::Populate,
        Enc::A128Gcm,
        &Secret::new("ossifrage"),
        b"",
    )
    .unwrap();
    out.push(serde_json::json!({
        "name": "populate-empty-reset", "secret": "ossifrage", "action": "populate",
        "enc": "A128GCM", "plaintext_b64": "", "jwe": empty,
    }));
    out
}

fn write_cases(path: &Path, cases: Vec<serde_json::Value>, generator: &str) {
    let doc = serde_json::json!({ "generator": generator, "cases": cases });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}

#[test]
fn fresh_rust_jwes_verify_in_python() {
    let mut cases = rust_cases();
    // One more made by the binary, as an administrator would.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "ossifrage\n").unwrap();
    let input = dir.path().join("fp.txt");
    std::fs::write(&input, "3f786850e387550fdab836ed7e6dc881de23001b\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args([
            "jwe",
            "encrypt",
            "--action",
            "activate",
            "--enc",
            "A256GCM",
            "--strip-newline",
            "--secret-file",
        ])
        .arg(&secret_file)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compact = String::from_utf8(out.stdout).unwrap();
    cases.push(serde_json::json!({
        "name": "cli-activate-A256GCM", "secret": "ossifrage", "action": "activate",
        "enc": "A256GCM",
        "plaintext_b64": STANDARD.encode("3f786850e387550fdab836ed7e6dc881de23001b"),
        "jwe": compact.trim(),
    }));
    for case in &cases {
        check_case_in_rust(case);
    }
    let path = dir.path().join("fresh.json");
    write_cases(
        &path,
        cases,
        "tests/jwe_interop.rs fresh_rust_jwes_verify_in_python",
    );
    python_verify(&path);
}

/// Regenerates the committed Rust-made fixture:
/// `cargo test --test jwe_interop -- --ignored regenerate_rust_fixture`
#[test]
#[ignore = "writes tests/fixtures/jwe/rust_made.json; run on purpose only"]
fn regenerate_rust_fixture() {
    write_cases(
        &fixture_dir().join("rust_made.json"),
        rust_cases(),
        "cargo test --test jwe_interop -- --ignored regenerate_rust_fixture",
    );
}

/// `roomkey jwe inspect` reads the seed's worked example without a secret: header members,
/// salt, IV and sizes — and refuses a JWE a device would refuse, saying why.
#[test]
fn inspect_shows_the_seed_vector_without_a_secret() {
    const SEED_JWE: &str = "eyJhbGciOiJkaXIiLCJjaXNjby1hY3Rpb24iOiJhZGQiLCJjaXNjby1rZGYiOnsic2FsdCI6IjVlWlRDQVA0TV9ZIiwidmVyc2lvbiI6IjEifSwiZW5jIjoiQTEyOEdDTSJ9..NLNd3V9Te68tkpWD.f5lLVuWNfKfmzYCo1YJfODhQ.PE-wDFWGXFFBeo928cfZ1Q";
    let run = |input: &str| roomkey_with_stdin(&["jwe", "inspect"], input);
    let out = run(&format!("{SEED_JWE}\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("enc:          A128GCM (16-byte key)"),
        "{stdout}"
    );
    assert!(stdout.contains("cisco-action: add"), "{stdout}");
    assert!(
        stdout.contains("salt 5eZTCAP4M_Y (hex e5e6530803f833f6, 8 bytes)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("iv:           12 bytes (hex 34b35ddd5f537baf2d929583)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ciphertext:   18 bytes (= plaintext length)"),
        "{stdout}"
    );
    assert!(stdout.contains("tag:          16 bytes"), "{stdout}");
    assert!(
        !stdout.contains("note:"),
        "the seed header is canonical: {stdout}"
    );

    // The garbled string printed in seed 000 (a `9` moved after the `..`) is refused.
    let garbled = SEED_JWE.replacen("J9..NLN", "J..9NLN", 1);
    assert_ne!(garbled, SEED_JWE);
    let out = run(&garbled);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a device would refuse this JWE"),
        "{stderr}"
    );
}
