//! The simulator never logs a secret, a JWE, a key or a password, even at TRACE: the whole
//! seed flow (plus failures, and a password-protected service key sent with a wrong then
//! the right `PrivateKeyPassword`) runs with a capturing subscriber, then the output is
//! searched.

mod support_raw;

use std::io::Write;
use std::sync::{Arc, Mutex};

use roomkey::cert::{DeviceIdentity, TestCa};
use roomkey::jwe::{self, Action, Enc};
use roomkey::secret::Secret;
use roomkey::sim::FaultPlan;
use support_raw::*;
use time::{Duration, OffsetDateTime};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_is_logged_at_trace() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .try_init()
        .unwrap();

    let fleet = one_device(FaultPlan::default(), None).await;
    let mut c = login(&fleet).await;
    c.cmd("echo off", "OK\r\n").await;
    let secret = Secret::new("ossifrage-phrase");
    let initial = jwe::initial_populate_value(&secret);
    c.cmd(
        &format!("xCommand Security ClientSecret Populate Secret: \"{initial}\""),
        "** end\r\n",
    )
    .await;
    let ca = TestCa::create("Log CA").unwrap();
    let now = OffsetDateTime::now_utc();
    let (cert, key) = ca
        .issue(
            "log.example.com",
            &[],
            now - Duration::days(1),
            now + Duration::days(9),
        )
        .unwrap();
    let id = DeviceIdentity::from_pem(&cert, &key).unwrap();
    let add = jwe::seal(
        Action::Add,
        Enc::A256Gcm,
        &secret,
        id.add_payload().as_bytes(),
    )
    .unwrap();
    c.send(&format!(
        "xCommand Security Certificates Services Add IsEncrypted: True\n{add}\n.\n"
    ))
    .await;
    c.read_until("** end\r\n").await;
    let act = jwe::seal(
        Action::Activate,
        Enc::A128Gcm,
        &secret,
        id.fingerprint().as_bytes(),
    )
    .unwrap();
    let r = c
        .cmd(
            &format!("xCommand Security Certificates Services Activate Purpose: WebexIdentity Fingerprint: \"{act}\""),
            "** end\r\n",
        )
        .await;
    assert!(r.contains("(status=OK)"), "{r}");
    // A plain Add (key in the clear body) and a wrong-secret JWE.
    c.send(&format!(
        "xCommand Security Certificates Services Add\n{cert}{}.\n",
        key.expose()
    ))
    .await;
    c.read_until("** end\r\n").await;
    // A password-protected key: a wrong password, then the right one.
    let (enc_cert, enc_plain) = ca
        .issue(
            "https.log.example.com",
            &[],
            now - Duration::days(1),
            now + Duration::days(9),
        )
        .unwrap();
    let enc_key = roomkey::cert::encrypt_key_pkcs8(
        &enc_plain,
        &Secret::new("key-pass-right-4d1f"),
        roomkey::cert::OPENSSL_PBKDF2_ITERATIONS,
    )
    .unwrap();
    for (password, status) in [
        ("key-pass-wrong-9b3a", "(status=Error)"),
        ("key-pass-right-4d1f", "(status=OK)"),
    ] {
        c.send(&format!(
            "xCommand Security Certificates Services Add PrivateKeyPassword: \"{password}\"\n{enc_cert}{}.\n",
            enc_key.expose()
        ))
        .await;
        let r = c.read_until("** end\r\n").await;
        assert!(r.contains(status), "{r}");
    }
    let bad = jwe::seal(
        Action::Populate,
        Enc::A128Gcm,
        &Secret::new("wrong"),
        b"next-secret",
    )
    .unwrap();
    c.cmd(
        &format!("xCommand Security ClientSecret Populate Secret: \"{bad}\""),
        "** end\r\n",
    )
    .await;
    // A failed login with a wrong password.
    let addr = fleet.devices()[0].addr;
    assert!(RawClient::connect(addr, USER, "wrong-password-xyz")
        .await
        .is_err());
    drop(c);
    fleet.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("command"), "tracing captured nothing");
    let key_body: String = key
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let enc_key_body: String = enc_key
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(logs.contains("PrivateKeyPassword: [redacted]"), "{logs}");
    for needle in [
        "key-pass-wrong-9b3a",
        "key-pass-right-4d1f",
        &enc_key_body[..30],
        "ossifrage-phrase",
        initial.as_str(),
        &add[..40],
        &act[..40],
        &bad[..40],
        "eyJ",
        "PRIVATE KEY",
        &key_body[..30],
        PASSWORD,
        "wrong-password-xyz",
        "next-secret",
    ] {
        assert!(!logs.contains(needle), "log leaks {needle:?}");
    }
}
