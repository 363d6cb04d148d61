//! `roomkey jwe`: build, decrypt and inspect the device JWE from the command line — for
//! administrators and for working out why a device refused a JWE. The codec itself lives in
//! `roomkey::jwe`; this module only reads inputs and prints.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use roomkey::jwe::{self, Action, Enc, Header};
use roomkey::secret::Secret;
use zeroize::Zeroizing;

/// `roomkey jwe` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Encrypt a plaintext into a device JWE (printed on stdout).
    ///
    /// The key is derived from the ClientSecret phrase with scrypt (N=32768, r=8, p=1) and a
    /// fresh random 16-byte salt; the IV is 12 fresh random bytes. The plaintext is taken
    /// byte for byte (use --strip-newline for `echo` input).
    /// Plaintexts: populate = new secret phrase, add = certificate PEM + key PEM,
    /// activate/deactivate = hex SHA-1 fingerprint.
    Encrypt(EncryptArgs),
    /// Decrypt a device JWE: plaintext on stdout, header summary on stderr.
    Decrypt(DecryptArgs),
    /// Show a JWE's header, salt and sizes and check it strictly, without any secret.
    Inspect(InspectArgs),
}

/// Arguments of `roomkey jwe encrypt`.
#[derive(Debug, clap::Args)]
pub struct EncryptArgs {
    /// cisco-action: populate, add, activate or deactivate.
    #[arg(long, value_parser = clap::value_parser!(Action))]
    pub action: Action,
    /// Content encryption: A128GCM or A256GCM.
    #[arg(long, default_value = "A128GCM", value_parser = clap::value_parser!(Enc))]
    pub enc: Enc,
    /// File holding the ClientSecret phrase (one trailing newline is ignored).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Plaintext file (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Drop one trailing newline (\n or \r\n) from the plaintext.
    #[arg(long)]
    pub strip_newline: bool,
}

/// Arguments of `roomkey jwe decrypt`.
#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// File holding the ClientSecret phrase (one trailing newline is ignored).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// File holding the compact JWE (default: stdin); surrounding whitespace is ignored.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

/// Arguments of `roomkey jwe inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// File holding the compact JWE (default: stdin); surrounding whitespace is ignored.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

pub fn run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Encrypt(a) => encrypt(a),
        Command::Decrypt(a) => decrypt(a),
        Command::Inspect(a) => inspect(a),
    }
}

/// Reads a file (or stdin) into a zeroizing buffer: it may be a plaintext or a secret.
fn read_input(path: Option<&Path>) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match path {
        Some(p) => {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            buf.reserve(usize::try_from(len).unwrap_or(0).saturating_add(1));
            f.read_to_end(&mut buf)
                .with_context(|| format!("cannot read {}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
        }
    }
    Ok(buf)
}

fn read_text_input(path: Option<&Path>) -> anyhow::Result<String> {
    let bytes = read_input(path)?;
    let text = std::str::from_utf8(&bytes).context("the JWE input is not text")?;
    Ok(text.trim().to_string())
}

/// Reads a ClientSecret phrase file (one trailing newline dropped).
pub fn read_secret_file(path: &Path) -> anyhow::Result<Secret> {
    let mut bytes = read_input(Some(path))?;
    let text = match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(s) => Zeroizing::new(s),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            anyhow::bail!("secret file {} is not UTF-8 text", path.display());
        }
    };
    let secret = Secret::from_file_text(text);
    if secret.is_empty() {
        anyhow::bail!("secret file {} is empty", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: secret file {} is readable by other users (chmod 600 it)",
                    path.display()
                );
            }
        }
    }
    Ok(secret)
}

fn encrypt(a: EncryptArgs) -> anyhow::Result<i32> {
    let secret = read_secret_file(&a.secret_file)?;
    let mut plaintext = read_input(a.input.as_deref())?;
    if a.strip_newline && plaintext.last() == Some(&b'\n') {
        plaintext.pop();
        if plaintext.last() == Some(&b'\r') {
            plaintext.pop();
        }
    }
    let compact = jwe::seal(a.action, a.enc, &secret, &plaintext).context("encryption failed")?;
    println!("{compact}");
    Ok(0)
}

fn header_summary(h: &Header) -> String {
    format!(
        "action={} enc={} kdf=scrypt(v{}) salt={} ({} bytes)",
        h.action,
        h.enc,
        jwe::KDF_VERSION,
        URL_SAFE_NO_PAD.encode(&h.salt),
        h.salt.len()
    )
}

fn decrypt(a: DecryptArgs) -> anyhow::Result<i32> {
    let secret = read_secret_file(&a.secret_file)?;
    let compact = read_text_input(a.input.as_deref())?;
    let (header, plaintext) = jwe::open(&compact, &secret).context("cannot decrypt the JWE")?;
    eprintln!(
        "{} plaintext={} bytes",
        header_summary(&header),
        plaintext.len()
    );
    let mut out = std::io::stdout().lock();
    out.write_all(&plaintext)
        .and_then(|()| out.flush())
        .context("cannot write the plaintext to stdout")?;
    Ok(0)
}

fn inspect(a: InspectArgs) -> anyhow::Result<i32> {
    let compact = read_text_input(a.input.as_deref())?;
    let parsed = jwe::parse(&compact).context("a device would refuse this JWE")?;
    let h = &parsed.header;
    let raw_header = URL_SAFE_NO_PAD
        .decode(&parsed.header_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    println!("alg:          dir");
    println!("enc:          {} ({}-byte key)", h.enc, h.enc.key_len());
    println!("cisco-action: {}", h.action);
    println!(
        "cisco-kdf:    version {}, salt {} (hex {}, {} bytes)",
        jwe::KDF_VERSION,
        URL_SAFE_NO_PAD.encode(&h.salt),
        hex::encode(&h.salt),
        h.salt.len()
    );
    println!("header JSON:  {raw_header}");
    if raw_header != h.to_json() {
        println!(
            "note:         header spelling/member order differs from roomkey's canonical form"
        );
    }
    println!(
        "iv:           {} bytes (hex {})",
        parsed.iv.len(),
        hex::encode(parsed.iv)
    );
    println!(
        "ciphertext:   {} bytes (= plaintext length)",
        parsed.ciphertext.len()
    );
    println!("tag:          {} bytes", parsed.tag.len());
    println!(
        "compact:      {} characters, 5 parts, empty encrypted key",
        compact.len()
    );
    Ok(0)
}
