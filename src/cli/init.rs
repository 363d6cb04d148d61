//! `roomkey init DIR`: lays out a site directory the way the README describes it, so every
//! later command finds its files without a path being guessed:
//!
//! ```text
//! DIR/inventory.yaml      the rooms (paths in it are relative to it)
//! DIR/playbooks/*.yaml    the built-in playbooks
//! DIR/certs/              {name}.pem, {name}.key, {name}.csr (the inventory's templates)
//! DIR/.roomkey/           journal, known_hosts, vault, lock (0700; never committed)
//! DIR/.gitignore          keeps .roomkey/ and private keys out of git
//! ```
//!
//! Existing files are never overwritten.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The built-in playbooks, copied into the site.
const PLAYBOOKS: [(&str, &str); 5] = [
    (
        "external-identity.yaml",
        include_str!("../../playbooks/external-identity.yaml"),
    ),
    (
        "renew-certificate.yaml",
        include_str!("../../playbooks/renew-certificate.yaml"),
    ),
    (
        "rotate-secret.yaml",
        include_str!("../../playbooks/rotate-secret.yaml"),
    ),
    (
        "scep-8021x.yaml",
        include_str!("../../playbooks/scep-8021x.yaml"),
    ),
    (
        "trust-ca.yaml",
        include_str!("../../playbooks/trust-ca.yaml"),
    ),
];

const GITIGNORE: &str = "\
# roomkey: state (journal, known_hosts, the encrypted vault, the lock) stays local.
/.roomkey/
# Private keys never go into git.
*.key
*.key.pem
# Reports may name every room.
/run.json
/run.html
";

/// Arguments of `roomkey init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The site directory to create (or complete).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// A room as NAME=HOST or NAME=HOST:PORT; repeatable. Without any, the inventory holds
    /// two examples on documentation addresses to edit.
    #[arg(long = "device", value_name = "NAME=HOST[:PORT]", value_parser = parse_device)]
    pub devices: Vec<(String, String, Option<u16>)>,
    /// Domain of the rooms' identities (`{name}.DOMAIN`, the certificates' CN).
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    /// SSH login name of the rooms.
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Environment variable holding the rooms' SSH password.
    #[arg(long, default_value = "ROOMKEY_DEVICE_PASSWORD")]
    pub password_env: String,
}

fn parse_device(text: &str) -> Result<(String, String, Option<u16>), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}': write NAME=HOST or NAME=HOST:PORT"))?;
    if !roomkey::inventory::is_safe_name(name) {
        return Err(format!(
            "'{name}': a device name may contain only letters, digits, '-', '_' and '.'"
        ));
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("'{p}' is not a port number"))?,
            ),
        ),
        _ => (addr, None),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    {
        return Err(format!("'{host}' is not a host name or address"));
    }
    Ok((name.to_string(), host.to_string(), port))
}

/// The inventory skeleton.
pub fn inventory_text(args: &Args) -> String {
    let mut out = format!(
        "# The rooms of this site. Paths here are relative to this file; state (journal,\n\
         # known_hosts) and the vault live in .roomkey/ beside it.\n\
         # Reference: docs/inventory.md\n\
         defaults:\n\
         \x20 username: {user}\n\
         \x20 auth: {{ password_env: {env} }}\n\
         \x20 certificate: certs/{{name}}.pem\n\
         \x20 key: certs/{{name}}.key\n\
         \x20 identity: \"{{name}}.{{domain}}\"\n\
         \x20 vars: {{ domain: {domain} }}\n\
         devices:\n",
        user = args.username,
        env = args.password_env,
        domain = args.domain,
    );
    if args.devices.is_empty() {
        out.push_str(
            "  # Replace these examples with your rooms.\n\
             \x20 room-301: { host: 192.0.2.31 }\n\
             \x20 room-302: { host: 192.0.2.32 }\n",
        );
    } else {
        for (name, host, port) in &args.devices {
            match port {
                Some(p) => out.push_str(&format!("  {name}: {{ host: \"{host}\", port: {p} }}\n")),
                None => out.push_str(&format!("  {name}: {{ host: \"{host}\" }}\n")),
            }
        }
    }
    out
}

/// Writes `text` to `path` unless a file is there already; says which.
fn write_new(path: &Path, text: &str, made: &mut Vec<String>) -> anyhow::Result<()> {
    if path.exists() {
        eprintln!("kept     {} (exists)", path.display());
        return Ok(());
    }
    roomkey::fsutil::write_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    made.push(path.display().to_string());
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.dir.exists() && !args.dir.is_dir() {
        bail!("{} exists and is not a directory", args.dir.display());
    }
    let inventory = inventory_text(&args);
    // The skeleton must load as the real thing would (a bad --domain, for instance).
    roomkey::inventory::parse(&args.dir.join("inventory.yaml"), &inventory)
        .context("the inventory skeleton does not validate")?;
    make_dir(&args.dir, 0o755)?;
    make_dir(&args.dir.join("playbooks"), 0o755)?;
    make_dir(&args.dir.join("certs"), 0o755)?;
    make_dir(&args.dir.join(".roomkey"), 0o700)?;
    let mut made = Vec::new();
    write_new(&args.dir.join("inventory.yaml"), &inventory, &mut made)?;
    write_new(&args.dir.join(".gitignore"), GITIGNORE, &mut made)?;
    for (name, text) in PLAYBOOKS {
        write_new(&args.dir.join("playbooks").join(name), text, &mut made)?;
    }
    for m in &made {
        eprintln!("created  {m}");
    }
    let d = args.dir.display();
    println!("site directory {d} is ready. Next, from inside it (cd {d}):");
    println!("  edit inventory.yaml (your rooms), then");
    println!("  roomkey secret init -i inventory.yaml");
    println!("  roomkey secret generate -i inventory.yaml");
    println!("  roomkey cert csr -i inventory.yaml");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(devices: &[&str]) -> Args {
        Args {
            dir: PathBuf::from("site"),
            devices: devices.iter().map(|d| parse_device(d).unwrap()).collect(),
            domain: "example.com".into(),
            username: "admin".into(),
            password_env: "ROOMKEY_DEVICE_PASSWORD".into(),
        }
    }

    #[test]
    fn skeleton_validates_and_resolves_paths_beside_itself() {
        for a in [
            args(&[]),
            args(&["room-1=127.0.0.1:2201", "room-2=10.0.0.2"]),
        ] {
            let text = inventory_text(&a);
            let inv = roomkey::inventory::parse(Path::new("site/inventory.yaml"), &text).unwrap();
            assert_eq!(inv.vault, Path::new("site/.roomkey/vault"));
            assert_eq!(inv.known_hosts, Path::new("site/.roomkey/known_hosts"));
            let d = &inv.devices[0];
            assert_eq!(
                d.certificate.as_deref(),
                Some(Path::new(&format!("site/certs/{}.pem", d.name)))
            );
        }
        let inv = roomkey::inventory::parse(
            Path::new("site/inventory.yaml"),
            &inventory_text(&args(&["room-1=127.0.0.1:2201"])),
        )
        .unwrap();
        assert_eq!(inv.devices[0].port, 2201);
        assert_eq!(
            inv.devices[0].identity.as_deref(),
            Some("room-1.example.com")
        );
    }

    #[test]
    fn device_arguments() {
        assert!(parse_device("room").is_err());
        assert!(parse_device("ro om=1.2.3.4").is_err());
        assert!(parse_device("room=1.2.3.4:x").is_err());
        assert!(parse_device("room=a\"b").is_err());
        assert_eq!(
            parse_device("r=h.example.com").unwrap(),
            ("r".into(), "h.example.com".into(), None)
        );
    }
}
