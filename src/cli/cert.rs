//! `roomkey cert`: check a device certificate and key before provisioning, make a P-256 key
//! and CSR for a public CA, and run a local test CA for labs and demos. The logic lives in
//! `roomkey::cert`; this module only handles arguments, files and printing.

use std::path::{Path, PathBuf};

use anyhow::Context;
use roomkey::cert::{self, TestCa};
use roomkey::display::escape;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Exit code of `cert check` when a check fails.
pub const EXIT_CHECK_FAILED: i32 = 2;

/// `roomkey cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a device certificate and its key: ECDSA P-256 key, key matches the certificate,
    /// inside the validity window (warns with < 30 days left), CN present.
    ///
    /// Prints CN, SANs, issuer, validity, SHA-1 fingerprint (what the device shows) and key
    /// type. Exit status: 0 = all checks pass, 2 = a check failed, 1 = files unreadable.
    Check(CheckArgs),
    /// Generate a new ECDSA P-256 private key (mode 0600) and a CSR to send to a public CA.
    Keygen(KeygenArgs),
    /// Create a local test CA (test CA: NOT for production) for labs and demos.
    ///
    /// Writes ca-cert.pem and ca-key.pem (0600) into --out.
    TestCa(TestCaArgs),
    /// Issue a device certificate from a local test CA (test CA: NOT for production).
    ///
    /// Writes <CN>.cert.pem and <CN>.key.pem (0600) into --out.
    Issue(IssueArgs),
}

/// Arguments of `roomkey cert check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Certificate PEM file (or certificate + key in one file when --key is omitted).
    #[arg(long)]
    pub cert: PathBuf,
    /// Private key PEM file (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY").
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `roomkey cert keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Common name: the identity shown to meeting participants (e.g. room1.example.com).
    #[arg(long)]
    pub cn: String,
    /// Subject alternative name (DNS name or IP address); repeatable. Default: the CN.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Directory for <CN>.key.pem and <CN>.csr.pem (created if missing; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `roomkey cert test-ca`.
#[derive(Debug, clap::Args)]
pub struct TestCaArgs {
    /// Directory for ca-cert.pem and ca-key.pem (created if missing; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Common name of the test CA.
    #[arg(long, default_value = "roomkey test CA")]
    pub cn: String,
}

/// Arguments of `roomkey cert issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Test-CA directory made by `roomkey cert test-ca`.
    #[arg(long)]
    pub ca: PathBuf,
    /// Common name of the device certificate.
    #[arg(long)]
    pub cn: String,
    /// Subject alternative name (DNS name or IP address); repeatable. Default: the CN.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Validity in days, counted from the start.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Start the validity this many days in the past (e.g. 400 with --days 30 makes an
    /// expired certificate for tests).
    #[arg(long, default_value_t = 1)]
    pub backdate: u32,
    /// Directory for <CN>.cert.pem and <CN>.key.pem (created if missing; never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Check(a) => check(a),
        Command::Keygen(a) => keygen(a),
        Command::TestCa(a) => test_ca(a),
        Command::Issue(a) => issue(a),
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A CN turned into a safe file-name stem.
fn file_stem(cn: &str) -> String {
    let s: String = cn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "device".into()
    } else {
        s
    }
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn check(a: CheckArgs) -> anyhow::Result<i32> {
    let id = cert::load_identity(&a.cert, a.key.as_deref())?;
    let now = OffsetDateTime::now_utc();
    let report = id.check(now);
    let c = &id.cert;
    if a.json {
        let v = serde_json::json!({
            "ok": report.is_ok(),
            "subject_cn": c.subject_cn,
            "subject": c.subject,
            "issuer": c.issuer,
            "sans": c.sans,
            "not_before": fmt_time(c.not_before),
            "not_after": fmt_time(c.not_after),
            "days_left": (c.not_after - now).whole_days(),
            "serial": c.serial_hex,
            "fingerprint_sha1": c.fingerprint_sha1,
            "certificate_key": c.key.to_string(),
            "private_key": id.key_kind().to_string(),
            "signature_algorithm": c.signature_algorithm,
            "errors": report.errors,
            "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "CN:           {}",
            escape(c.subject_cn.as_deref().unwrap_or("(none)"))
        );
        println!("subject:      {}", escape(&c.subject));
        println!(
            "SANs:         {}",
            if c.sans.is_empty() {
                "(none)".to_string()
            } else {
                escape(&c.sans.join(", ")).into_owned()
            }
        );
        println!("issuer:       {}", escape(&c.issuer));
        println!(
            "validity:     {} .. {} ({} days left)",
            fmt_time(c.not_before),
            fmt_time(c.not_after),
            (c.not_after - now).whole_days()
        );
        println!("serial:       {}", c.serial_hex);
        println!("fingerprint:  {} (SHA-1)", c.fingerprint_sha1);
        println!("key:          {} (private key: {})", c.key, id.key_kind());
        println!("signature:    {}", c.signature_algorithm);
        for w in &report.warnings {
            println!("warning:      {}", escape(w));
        }
        for e in &report.errors {
            println!("FAILED:       {}", escape(e));
        }
        if report.is_ok() {
            println!("result:       OK, ready for the device");
        }
    }
    Ok(if report.is_ok() { 0 } else { EXIT_CHECK_FAILED })
}

fn keygen(a: KeygenArgs) -> anyhow::Result<i32> {
    ensure_dir(&a.out)?;
    let stem = file_stem(&a.cn);
    let key_path = a.out.join(format!("{stem}.key.pem"));
    let csr_path = a.out.join(format!("{stem}.csr.pem"));
    for p in [&key_path, &csr_path] {
        anyhow::ensure!(
            !p.exists(),
            "{} already exists; refusing to overwrite it",
            p.display()
        );
    }
    let (key, csr) = cert::generate_key_and_csr(&a.cn, &a.sans)?;
    cert::write_private_file(&key_path, &key)?;
    cert::write_public_file(&csr_path, &csr)?;
    println!(
        "private key:  {} (ECDSA P-256, mode 0600; keep it private)",
        key_path.display()
    );
    println!("CSR:          {}", csr_path.display());
    println!("next:         send the CSR to your public CA (purpose: Webex identity), then run");
    println!(
        "              roomkey cert check --cert <issued cert> --key {}",
        key_path.display()
    );
    Ok(0)
}

fn test_ca(a: TestCaArgs) -> anyhow::Result<i32> {
    let ca = TestCa::create(&a.cn)?;
    ca.save(&a.out)?;
    let info = cert::parse_cert_pem(&ca.cert_pem)?;
    println!(
        "test CA (NOT for production) written to {}",
        a.out.display()
    );
    println!("certificate:  {}", a.out.join(cert::CA_CERT_FILE).display());
    println!(
        "private key:  {} (mode 0600)",
        a.out.join(cert::CA_KEY_FILE).display()
    );
    println!("fingerprint:  {} (SHA-1)", info.fingerprint_sha1);
    Ok(0)
}

fn issue(a: IssueArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.days > 0, "--days must be at least 1");
    let ca = TestCa::load(&a.ca)?;
    ensure_dir(&a.out)?;
    let stem = file_stem(&a.cn);
    let cert_path = a.out.join(format!("{stem}.cert.pem"));
    let key_path = a.out.join(format!("{stem}.key.pem"));
    for p in [&cert_path, &key_path] {
        anyhow::ensure!(
            !p.exists(),
            "{} already exists; refusing to overwrite it",
            p.display()
        );
    }
    let start = OffsetDateTime::now_utc() - Duration::days(i64::from(a.backdate));
    let end = start + Duration::days(i64::from(a.days));
    let (cert_pem, key) = ca.issue(&a.cn, &a.sans, start, end)?;
    cert::write_private_file(&key_path, &key)?;
    cert::write_public_file(&cert_path, &cert_pem)?;
    let info = cert::parse_cert_pem(&cert_pem)?;
    println!("issued by the test CA (NOT for production):");
    println!("certificate:  {}", cert_path.display());
    println!("private key:  {} (mode 0600)", key_path.display());
    println!("validity:     {} .. {}", fmt_time(start), fmt_time(end));
    println!("fingerprint:  {} (SHA-1)", info.fingerprint_sha1);
    Ok(0)
}
