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
    /// type. With `-i INVENTORY`: every selected device's certificate and key at once, also
    /// checking each CN against the device's `identity` and that no two devices share a
    /// certificate. Exit status: 0 = all checks pass, 2 = a check failed, 1 = files
    /// unreadable.
    Check(CheckArgs),
    /// Generate a new ECDSA P-256 private key (mode 0600) and a CSR to send to a public CA.
    Keygen(KeygenArgs),
    /// A key (0600) and a CSR for every selected device of an inventory, named as the
    /// inventory expects: the key at the device's `key:` path, the CSR beside it with the
    /// extension `.csr`; CN and SAN from the device's `identity` (else its name). Existing
    /// keys are kept.
    Csr(CsrArgs),
    /// Create a local test CA (test CA: NOT for production) for labs and demos.
    ///
    /// Writes ca-cert.pem and ca-key.pem (0600) into --out.
    TestCa(TestCaArgs),
    /// Issue device certificates from a local test CA (test CA: NOT for production).
    ///
    /// With `-i INVENTORY`: for every selected device, at the inventory's `certificate:` and
    /// `key:` paths (signing the device's CSR from `cert csr` when there is one). With
    /// `--cn`: writes <CN>.cert.pem and <CN>.key.pem (0600) into --out.
    Issue(IssueArgs),
}

/// Selecting devices of an inventory (`cert csr|issue|check -i`).
#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// Inventory YAML file: its devices' `certificate:`, `key:` and `identity:`.
    #[arg(short, long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// With -i: select devices (names, globs, groups; `!pattern` excludes).
    #[arg(short, long, value_name = "PATTERNS", requires = "inventory")]
    pub limit: Option<String>,
}

/// Arguments of `roomkey cert csr`.
#[derive(Debug, clap::Args)]
pub struct CsrArgs {
    #[command(flatten)]
    pub select: InventoryArgs,
}

/// Arguments of `roomkey cert check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub select: InventoryArgs,
    /// Certificate PEM file (or certificate + key in one file when --key is omitted).
    #[arg(
        long,
        required_unless_present = "inventory",
        conflicts_with = "inventory"
    )]
    pub cert: Option<PathBuf>,
    /// Private key PEM file (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY").
    #[arg(long, conflicts_with = "inventory")]
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
    #[command(flatten)]
    pub select: InventoryArgs,
    /// Test-CA directory made by `roomkey cert test-ca`.
    #[arg(long)]
    pub ca: PathBuf,
    /// Common name of the device certificate.
    #[arg(
        long,
        required_unless_present = "inventory",
        conflicts_with = "inventory"
    )]
    pub cn: Option<String>,
    /// Subject alternative name (DNS name or IP address); repeatable. Default: the CN.
    #[arg(long = "san", conflicts_with = "inventory")]
    pub sans: Vec<String>,
    /// Validity in days, counted from the start.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Start the validity this many days in the past (e.g. 400 with --days 30 makes an
    /// expired certificate for tests).
    #[arg(long, default_value_t = 1)]
    pub backdate: u32,
    /// Directory for <CN>.cert.pem and <CN>.key.pem (created if missing; never overwritten).
    #[arg(
        long,
        required_unless_present = "inventory",
        conflicts_with = "inventory"
    )]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Check(a) if a.select.inventory.is_some() => check_inventory(a),
        Command::Check(a) => check(a),
        Command::Keygen(a) => keygen(a),
        Command::Csr(a) => csr_inventory(a),
        Command::TestCa(a) => test_ca(a),
        Command::Issue(a) if a.select.inventory.is_some() => issue_inventory(a),
        Command::Issue(a) => issue(a),
    }
}

/// One selected device's certificate files and CN, from the inventory.
struct DeviceFiles {
    name: String,
    cn: String,
    cert: PathBuf,
    key: PathBuf,
    csr: PathBuf,
}

/// The selected devices' files; every device without `certificate:`/`key:` is a problem,
/// reported all at once.
fn inventory_files(select: &InventoryArgs) -> anyhow::Result<Vec<DeviceFiles>> {
    let Some(path) = &select.inventory else {
        anyhow::bail!("give -i INVENTORY");
    };
    let inv = roomkey::inventory::load(path)?;
    let devices = roomkey::inventory::select(&inv, select.limit.as_deref(), &Default::default())
        .map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for d in devices {
        match (&d.certificate, &d.key) {
            (Some(cert), Some(key)) => out.push(DeviceFiles {
                name: d.name.clone(),
                cn: d.identity.clone().unwrap_or_else(|| d.name.clone()),
                cert: cert.clone(),
                key: key.clone(),
                csr: key.with_extension("csr"),
            }),
            _ => problems.push(format!(
                "{}: devices.{}: set `certificate:` and `key:` (for the device, a group or \
                 `defaults`, e.g. certificate: certs/{{name}}.pem, key: certs/{{name}}.key)",
                path.display(),
                d.name
            )),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => ensure_dir(p),
        _ => Ok(()),
    }
}

/// `cert csr -i`: a key and CSR per device, at the inventory's paths.
fn csr_inventory(a: CsrArgs) -> anyhow::Result<i32> {
    let files = inventory_files(&a.select)?;
    for f in &files {
        if f.key.exists() {
            println!("{}: kept the existing key {}", f.name, f.key.display());
            continue;
        }
        ensure_parent(&f.key)?;
        let (key, csr) = cert::generate_key_and_csr(&f.cn, std::slice::from_ref(&f.cn))?;
        cert::write_private_file(&f.key, &key)?;
        cert::write_public_file(&f.csr, &csr)?;
        println!(
            "{}: key {} (0600), CSR {} (CN {})",
            f.name,
            f.key.display(),
            f.csr.display(),
            f.cn
        );
    }
    println!(
        "next: send each CSR to your CA (purpose: Webex identity); save each issued \
         certificate at the device's `certificate:` path, then run `roomkey cert check -i`"
    );
    Ok(0)
}

/// `cert issue -i`: test-CA certificates at the inventory's paths (signing the device's
/// CSR when `cert csr` made one).
fn issue_inventory(a: IssueArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.days > 0, "--days must be at least 1");
    let ca = TestCa::load(&a.ca)?;
    let files = inventory_files(&a.select)?;
    let start = OffsetDateTime::now_utc() - Duration::days(i64::from(a.backdate));
    let end = start + Duration::days(i64::from(a.days));
    println!("issuing from the test CA (NOT for production):");
    for f in &files {
        if f.cert.exists() {
            println!(
                "{}: kept the existing certificate {}",
                f.name,
                f.cert.display()
            );
            continue;
        }
        ensure_parent(&f.cert)?;
        let cert_pem = if f.key.exists() {
            let csr = std::fs::read_to_string(&f.csr).with_context(|| {
                format!(
                    "{}: {} exists but its CSR {} cannot be read (make both with `roomkey \
                     cert csr -i`, or remove the key)",
                    f.name,
                    f.key.display(),
                    f.csr.display()
                )
            })?;
            ca.sign_csr(&csr, start, end)
                .with_context(|| format!("{}: signing {}", f.name, f.csr.display()))?
        } else {
            let (cert_pem, key) = ca.issue(&f.cn, std::slice::from_ref(&f.cn), start, end)?;
            ensure_parent(&f.key)?;
            cert::write_private_file(&f.key, &key)?;
            cert_pem
        };
        cert::write_public_file(&f.cert, &cert_pem)?;
        let info = cert::parse_cert_pem(&cert_pem)?;
        println!(
            "{}: {} (CN {}, until {}, SHA-1 {})",
            f.name,
            f.cert.display(),
            f.cn,
            fmt_time(end),
            info.fingerprint_sha1
        );
    }
    Ok(0)
}

/// `cert check -i`: every selected device's certificate and key at once.
fn check_inventory(a: CheckArgs) -> anyhow::Result<i32> {
    let files = inventory_files(&a.select)?;
    let now = OffsetDateTime::now_utc();
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut rows = Vec::new();
    let mut failed = 0usize;
    for f in &files {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut row = serde_json::json!({ "device": f.name, "certificate": f.cert, "key": f.key });
        match cert::load_identity(&f.cert, Some(&f.key)) {
            Err(e) => errors.push(e.to_string()),
            Ok(id) => {
                let report = id.check(now);
                errors.extend(report.errors.iter().map(|e| e.to_string()));
                warnings.extend(report.warnings.iter().map(|w| w.to_string()));
                let c = &id.cert;
                if let Some(cn) = &c.subject_cn {
                    if !cn.eq_ignore_ascii_case(&f.cn) {
                        errors.push(format!("CN is '{cn}', the inventory expects '{}'", f.cn));
                    }
                }
                if let Some(other) = seen.insert(c.fingerprint_sha1.clone(), f.name.clone()) {
                    errors.push(format!("the same certificate as device {other}'s"));
                }
                row["subject_cn"] = serde_json::json!(c.subject_cn);
                row["not_after"] = serde_json::json!(fmt_time(c.not_after));
                row["days_left"] = serde_json::json!((c.not_after - now).whole_days());
                row["fingerprint_sha1"] = serde_json::json!(c.fingerprint_sha1);
            }
        }
        if !errors.is_empty() {
            failed += 1;
        }
        row["ok"] = serde_json::json!(errors.is_empty());
        row["errors"] = serde_json::json!(errors);
        row["warnings"] = serde_json::json!(warnings);
        rows.push(row);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            let name = r["device"].as_str().unwrap_or_default();
            let errs: Vec<&str> = r["errors"]
                .as_array()
                .map(|v| v.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            let warns: Vec<&str> = r["warnings"]
                .as_array()
                .map(|v| v.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            if errs.is_empty() {
                println!(
                    "{name}: OK  CN {}  {} days left  SHA-1 {}",
                    r["subject_cn"].as_str().unwrap_or("-"),
                    r["days_left"],
                    r["fingerprint_sha1"].as_str().unwrap_or("-")
                );
            } else {
                println!("{name}: FAILED  {}", errs.join("; "));
            }
            for w in warns {
                println!("{name}: warning  {w}");
            }
        }
        println!(
            "{} devices: {} ok, {failed} failed",
            rows.len(),
            rows.len().saturating_sub(failed)
        );
    }
    Ok(if failed == 0 { 0 } else { EXIT_CHECK_FAILED })
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
    let Some(cert_path) = &a.cert else {
        anyhow::bail!("give --cert FILE or -i INVENTORY");
    };
    let id = cert::load_identity(cert_path, a.key.as_deref())?;
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
    let (Some(cn), Some(out)) = (&a.cn, &a.out) else {
        anyhow::bail!("give --cn and --out, or -i INVENTORY");
    };
    let ca = TestCa::load(&a.ca)?;
    ensure_dir(out)?;
    let stem = file_stem(cn);
    let cert_path = out.join(format!("{stem}.cert.pem"));
    let key_path = out.join(format!("{stem}.key.pem"));
    for p in [&cert_path, &key_path] {
        anyhow::ensure!(
            !p.exists(),
            "{} already exists; refusing to overwrite it",
            p.display()
        );
    }
    let start = OffsetDateTime::now_utc() - Duration::days(i64::from(a.backdate));
    let end = start + Duration::days(i64::from(a.days));
    let (cert_pem, key) = ca.issue(cn, &a.sans, start, end)?;
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
