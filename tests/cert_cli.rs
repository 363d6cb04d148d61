//! End-to-end tests of `roomkey cert` (the built binary) in a temporary directory, with
//! openssl as the independent reference for fingerprints and for making RSA / P-384 keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn roomkey(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roomkey"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// openssl's `SHA1 Fingerprint=AB:CD:...` as lowercase hex without colons.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = openssl(&["x509", "-noout", "-fingerprint", "-sha1", "-in", s(cert)]);
    out.trim()
        .split_once('=')
        .unwrap()
        .1
        .replace(':', "")
        .to_lowercase()
}

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ok(&roomkey(&["cert", "test-ca", "--out", s(&root.join("ca"))]));
        Lab { _dir: dir, root }
    }

    /// Issues `cn` into `out/`; returns (cert path, key path).
    fn issue(&self, cn: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let out = self.root.join("dev");
        let ca = self.root.join("ca");
        let mut args = vec![
            "cert",
            "issue",
            "--ca",
            s(&ca),
            "--cn",
            cn,
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        ok(&roomkey(&args));
        (
            out.join(format!("{cn}.cert.pem")),
            out.join(format!("{cn}.key.pem")),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn check(cert: &Path, key: Option<&Path>, json: bool) -> Output {
    let mut args = vec!["cert", "check", "--cert", s(cert)];
    if let Some(k) = key {
        args.extend_from_slice(&["--key", s(k)]);
    }
    if json {
        args.push("--json");
    }
    roomkey(&args)
}

fn failed_with(out: &Output, needle: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{stdout}");
    assert!(stdout.contains(needle), "expected {needle:?} in:\n{stdout}");
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn issue_and_check_agree_with_openssl_fingerprint() {
    let lab = Lab::new();
    let (cert, key) = lab.issue(
        "room1.example.com",
        &["--san", "room1.example.com", "--san", "10.1.2.3"],
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&lab.path("ca").join("ca-key.pem")), 0o600);
    }
    let expected = openssl_fingerprint(&cert);
    assert_eq!(expected.len(), 40);

    let text = ok(&check(&cert, Some(&key), false));
    assert!(
        text.contains(&format!("fingerprint:  {expected} (SHA-1)")),
        "{text}"
    );
    assert!(text.contains("CN:           room1.example.com"), "{text}");
    assert!(
        text.contains("DNS:room1.example.com, IP:10.1.2.3"),
        "{text}"
    );
    assert!(text.contains("ECDSA P-256"), "{text}");
    assert!(text.contains("NOT for production"), "issuer shown: {text}");
    assert!(text.contains("result:       OK"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&check(&cert, Some(&key), true))).unwrap();
    assert_eq!(json["fingerprint_sha1"], expected.as_str());
    assert_eq!(json["ok"], true);
    assert_eq!(json["subject_cn"], "room1.example.com");
    assert_eq!(json["private_key"], "ECDSA P-256");

    // No key material in any output.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    assert!(!text.contains(key_line));

    // The combined file (what an `add` JWE carries) checks the same.
    let combined = lab.path("combined.pem");
    std::fs::write(
        &combined,
        std::fs::read_to_string(&cert).unwrap() + &key_text,
    )
    .unwrap();
    let text = ok(&check(&combined, None, false));
    assert!(text.contains(&expected));
}

#[test]
fn openssl_made_p256_certificate_with_sec1_key_passes() {
    let lab = Lab::new();
    let key = lab.path("ossl.key");
    let cert = lab.path("ossl.pem");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        s(&key),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        s(&key),
        "-out",
        s(&cert),
        "-days",
        "90",
        "-subj",
        "/C=US/O=Example/CN=room7.example.com",
    ]);
    let text = ok(&check(&cert, Some(&key), false));
    assert!(text.contains(&openssl_fingerprint(&cert)), "{text}");
    assert!(
        text.contains("subject:      /C=US/O=Example/CN=room7.example.com"),
        "{text}"
    );
}

#[test]
fn rsa_key_is_refused() {
    let lab = Lab::new();
    let key = lab.path("rsa.key");
    let cert = lab.path("rsa.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-days",
        "90",
        "-subj",
        "/CN=rsa-room.example.com",
    ]);
    let out = check(&cert, Some(&key), false);
    failed_with(&out, "key is RSA-2048; the device needs an ECDSA P-256 key");
    failed_with(&out, "certificate public key is RSA-2048");
    // An RSA key next to a good P-256 certificate is refused too.
    let (good_cert, _) = lab.issue("room2", &[]);
    failed_with(
        &check(&good_cert, Some(&key), false),
        "key is RSA-2048; the device needs an ECDSA P-256 key",
    );
}

#[test]
fn p384_key_is_refused() {
    let lab = Lab::new();
    let key = lab.path("p384.key");
    let cert = lab.path("p384.pem");
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        s(&key),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        s(&key),
        "-out",
        s(&cert),
        "-days",
        "90",
        "-subj",
        "/CN=p384.example.com",
    ]);
    failed_with(
        &check(&cert, Some(&key), false),
        "key is EC P-384; the device needs an ECDSA P-256 key",
    );
}

#[test]
fn mismatched_key_is_refused() {
    let lab = Lab::new();
    let (cert_a, _) = lab.issue("room-a", &[]);
    let (_, key_b) = lab.issue("room-b", &[]);
    failed_with(
        &check(&cert_a, Some(&key_b), false),
        "does not match the certificate's public key",
    );
    let out = check(&cert_a, Some(&key_b), true);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
}

#[test]
fn expired_certificate_is_refused_and_near_expiry_warns() {
    let lab = Lab::new();
    let (cert, key) = lab.issue("old-room", &["--backdate", "400", "--days", "30"]);
    failed_with(&check(&cert, Some(&key), false), "certificate expired on");
    let (cert, key) = lab.issue("soon-room", &["--backdate", "10", "--days", "20"]);
    let text = ok(&check(&cert, Some(&key), false));
    assert!(
        text.contains("warning:      certificate expires in"),
        "{text}"
    );
}

#[test]
fn unreadable_inputs_name_the_file() {
    let lab = Lab::new();
    let (cert, _) = lab.issue("room-x", &[]);
    let missing = lab.path("missing.key");
    let out = check(&cert, Some(&missing), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
    // A certificate file given as the key: no private key in it.
    let out = check(&cert, Some(&cert), false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("room-x.cert.pem") && err.contains("no private key"),
        "{err}"
    );
}

#[test]
fn keygen_writes_private_key_and_valid_csr() {
    let lab = Lab::new();
    let out_dir = lab.path("keys");
    ok(&roomkey(&[
        "cert",
        "keygen",
        "--cn",
        "room3.example.com",
        "--san",
        "room3.example.com",
        "--out",
        s(&out_dir),
    ]));
    let key = out_dir.join("room3.example.com.key.pem");
    let csr = out_dir.join("room3.example.com.csr.pem");
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    let text = openssl(&["req", "-in", s(&csr), "-noout", "-subject", "-verify"]);
    assert!(text.contains("room3.example.com"), "{text}");
    let pubkey = openssl(&["pkey", "-in", s(&key), "-noout", "-text"]);
    assert!(
        pubkey.contains("P-256") || pubkey.contains("prime256v1"),
        "{pubkey}"
    );
    // Never overwrites a key.
    let again = roomkey(&[
        "cert",
        "keygen",
        "--cn",
        "room3.example.com",
        "--out",
        s(&out_dir),
    ]);
    assert!(!again.status.success());
}

#[test]
fn help_labels_the_test_ca_as_not_for_production() {
    for sub in ["test-ca", "issue"] {
        let text = ok(&roomkey(&["cert", sub, "--help"]));
        assert!(text.contains("NOT for production"), "{sub}: {text}");
    }
    let text = ok(&roomkey(&["cert", "--help"]));
    assert!(text.contains("NOT for production"));
}
