//! OpenSSH `known_hosts` handling: parse the file, decide whether a presented host key is
//! known, unknown, changed or revoked, and append a newly accepted key.
//!
//! Supported: `host` / `[host]:port` patterns (comma lists, `*`/`?` globs, `!` negation),
//! hashed entries (`|1|salt|hmac`, HMAC-SHA1 as OpenSSH writes them), `@revoked` markers.
//! `@cert-authority` lines are ignored (devices present plain host keys).
//! A host with entries but none matching the presented key is *changed* — even when the
//! entries are of another key type — so an attacker cannot downgrade to a type the
//! administrator never pinned.
//!
//! Linear in the fleet: a file is parsed once per process into a [`KnownHosts`] index
//! (exact host patterns in a hash map; globs, negations and hashed entries checked in line
//! order) and kept in a process-wide cache keyed by path and validated by the file's
//! length and modification time, so each connection costs a `stat`, a map lookup and one
//! key parse. An accepted key is appended to the file and to the cached index together.
//! [`check_path`] and [`learn`] block (file I/O): the SSH client calls them on the blocking
//! pool.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use russh::keys::{HashAlg, PublicKey};
use sha1::{Digest, Sha1};

/// The host string as it appears in `known_hosts` for `host:port`.
pub fn host_pattern(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The outcome of checking a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host holds this key.
    Known { line: usize },
    /// No line for this host.
    Unknown,
    /// Lines exist for this host, none with this key.
    Changed { line: usize, expected_fp: String },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

/// One host-key line, its key still text: a check parses only the keys of lines whose host
/// pattern matches (and revoked lines), so a check costs one key parse, not one per line
/// of a fleet-sized file.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: String,
    kind: String,
    b64: String,
}

impl Entry {
    /// The line's key; `None` for an unparseable one, which is skipped, as OpenSSH does.
    fn key(&self) -> Option<PublicKey> {
        PublicKey::from_openssh(&format!("{} {}", self.kind, self.b64)).ok()
    }
}

/// Parses one line (1-based `number`); `None` for blanks, comments, markers other than
/// `@revoked`, and lines without a key.
fn parse_line(number: usize, raw: &str) -> Option<Entry> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut parts = line.split_whitespace();
    let mut first = parts.next()?;
    let mut revoked = false;
    if first.starts_with('@') {
        match first {
            "@revoked" => revoked = true,
            // @cert-authority and unknown markers: not host keys we can pin.
            _ => return None,
        }
        first = parts.next()?;
    }
    let (kind, b64) = (parts.next()?, parts.next()?);
    Some(Entry {
        line: number,
        revoked,
        hosts: first.to_string(),
        kind: kind.to_string(),
        b64: b64.to_string(),
    })
}

/// A parsed known_hosts file, indexed by host pattern.
#[derive(Debug, Default, Clone)]
pub struct KnownHosts {
    /// Every entry, in line order.
    entries: Vec<Entry>,
    /// Lowercased plain host patterns (no glob, negation or hash) → entries naming them.
    exact: HashMap<String, Vec<usize>>,
    /// Entries whose host field needs matching (globs, negations, hashed hosts).
    patterned: Vec<usize>,
    /// `@revoked` entries.
    revoked: Vec<usize>,
    /// Lines in the text parsed (the next appended line is `lines + 1`).
    lines: usize,
}

impl KnownHosts {
    /// Parses and indexes the text of a known_hosts file.
    pub fn parse(text: &str) -> Self {
        let mut index = KnownHosts::default();
        for (i, raw) in text.lines().enumerate() {
            index.lines = i + 1;
            if let Some(entry) = parse_line(i + 1, raw) {
                index.push(entry);
            }
        }
        index
    }

    fn push(&mut self, entry: Entry) {
        let i = self.entries.len();
        if entry.revoked {
            self.revoked.push(i);
        } else if entry.hosts.starts_with("|1|") || entry.hosts.contains(['*', '?', '!']) {
            self.patterned.push(i);
        } else {
            for host in entry.hosts.split(',') {
                let slot = self.exact.entry(host.to_ascii_lowercase()).or_default();
                if slot.last() != Some(&i) {
                    slot.push(i);
                }
            }
        }
        self.entries.push(entry);
    }

    /// Checks `key` for `host:port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let pattern = host_pattern(host, port);
        if let Some(e) = self
            .revoked
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .find(|e| e.key().is_some_and(|k| k.key_data() == key.key_data()))
        {
            return Verdict::Revoked { line: e.line };
        }
        let mut first_other: Option<(&Entry, PublicKey)> = None;
        for e in self.candidates(&pattern) {
            if !hosts_match(&e.hosts, &pattern) {
                continue;
            }
            let Some(k) = e.key() else {
                continue;
            };
            if k.key_data() == key.key_data() {
                return Verdict::Known { line: e.line };
            }
            if first_other.is_none() {
                first_other = Some((e, k));
            }
        }
        match first_other {
            Some((e, k)) => Verdict::Changed {
                line: e.line,
                expected_fp: fingerprint(&k),
            },
            None => Verdict::Unknown,
        }
    }
}

impl KnownHosts {
    /// The entries that may name `pattern`, in line order: its exact entries and every
    /// patterned one (the caller still matches the patterned ones).
    fn candidates(&self, pattern: &str) -> impl Iterator<Item = &Entry> {
        let mut indices: Vec<usize> = self
            .exact
            .get(pattern)
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .chain(&self.patterned)
            .copied()
            .collect();
        indices.sort_unstable();
        indices.dedup();
        indices.into_iter().filter_map(|i| self.entries.get(i))
    }

    /// The algorithms of the keys pinned for `host:port` (not revoked), in line order,
    /// found through the index (the host's exact entries and the patterned ones).
    pub fn pinned_algorithms(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let pattern = host_pattern(host, port);
        self.candidates(&pattern)
            .filter(|e| !e.revoked && hosts_match(&e.hosts, &pattern))
            .filter_map(|e| e.key().map(|k| k.algorithm()))
            .collect()
    }
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, text.get(i..).unwrap_or(&[]))),
        Some((b'?', rest)) => text.split_first().is_some_and(|(_, t)| glob(rest, t)),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t0, t)| t0.eq_ignore_ascii_case(c) && glob(rest, t)),
    }
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        let d = Sha1::digest(key);
        k[..20].copy_from_slice(&d);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha1::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hashed_matches(field: &str, pattern: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut it = field.trim_start_matches("|1|").split('|');
    let (Some(salt), Some(hash)) = (it.next(), it.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    hmac_sha1(&salt, pattern.as_bytes()).as_slice() == hash.as_slice()
}

/// Does the host field of a line apply to `pattern` (the output of [`host_pattern`])?
fn hosts_match(field: &str, pattern: &str) -> bool {
    if field.starts_with("|1|") {
        return hashed_matches(field, pattern);
    }
    let mut matched = false;
    for p in field.split(',') {
        let (negated, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        if glob(p.as_bytes(), pattern.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// Checks `key` for `host:port` against the text of a known_hosts file.
pub fn check(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    KnownHosts::parse(text).check(host, port, key)
}

/// What a cached index was parsed from: the file's length and modification time (`None`:
/// the file did not exist).
type Stamp = Option<(u64, SystemTime)>;

/// File times tick coarsely (a few milliseconds), so a file rewritten with the same length
/// within one tick of our read keeps its stamp. As git does with its index, a stamp younger
/// than this when the file was read is not trusted: the next check reads the file again.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

fn settled(stamp: &Stamp) -> bool {
    match stamp {
        Some((_, modified)) => SystemTime::now()
            .duration_since(*modified)
            .is_ok_and(|age| age >= RACY),
        None => true,
    }
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.len(), m.modified()?))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A parsed file: the stamp it was read at, whether that stamp can be trusted to mean
/// "unchanged" later (see [`RACY`]), and the index.
struct CachedFile {
    stamp: Stamp,
    trusted: bool,
    index: KnownHosts,
}

/// Parsed files of this process, by path.
static CACHE: Mutex<Option<HashMap<PathBuf, CachedFile>>> = Mutex::new(None);

/// Runs `f` on the index of `path`, parsed once and re-read only when the file changed.
fn with_index<T>(path: &Path, f: impl FnOnce(&KnownHosts) -> T) -> std::io::Result<T> {
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let files = cache.get_or_insert_with(HashMap::new);
    let now = stamp(path)?;
    let fresh = files.get(path).is_some_and(|c| c.trusted && c.stamp == now);
    if !fresh {
        let index = KnownHosts::parse(&read(path)?);
        // The stamp taken before the read: a change during it makes the next check re-read.
        files.insert(
            path.to_path_buf(),
            CachedFile {
                trusted: settled(&now),
                stamp: now,
                index,
            },
        );
    }
    match files.get(path) {
        Some(c) => Ok(f(&c.index)),
        None => Ok(f(&KnownHosts::default())),
    }
}

/// Checks `key` for `host:port` against the file at `path` (missing: empty), through the
/// process-wide index. Blocking.
pub fn check_path(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    with_index(path, |index| index.check(host, port, key))
}

/// The host key algorithms to offer when connecting to `host:port`, most preferred first:
/// the types of the keys already pinned for it, then the rest of `defaults` in their order
/// — as OpenSSH does, so a device pinned with its RSA key that also offers Ed25519 is not
/// reported as changed (catalogue hostkey.types).
pub fn preferred_algorithms(
    text: &str,
    host: &str,
    port: u16,
    defaults: &[russh::keys::Algorithm],
) -> Vec<russh::keys::Algorithm> {
    order_algorithms(
        &KnownHosts::parse(text).pinned_algorithms(host, port),
        defaults,
    )
}

/// [`preferred_algorithms`] for the file at `path` (missing: empty), through the
/// process-wide index: the file is parsed once per process, not once per connection.
/// Blocking (it checks the file's stamp): call it on the blocking pool.
pub fn preferred_algorithms_at(
    path: &Path,
    host: &str,
    port: u16,
    defaults: &[russh::keys::Algorithm],
) -> std::io::Result<Vec<russh::keys::Algorithm>> {
    let pinned = with_index(path, |index| index.pinned_algorithms(host, port))?;
    Ok(order_algorithms(&pinned, defaults))
}

/// `defaults` with the families of `pinned` first, each group in `defaults`' order.
fn order_algorithms(
    pinned: &[russh::keys::Algorithm],
    defaults: &[russh::keys::Algorithm],
) -> Vec<russh::keys::Algorithm> {
    use russh::keys::Algorithm;
    let same_family = |a: &Algorithm, p: &Algorithm| match (a, p) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        _ => a == p,
    };
    let mut out: Vec<Algorithm> = defaults
        .iter()
        .filter(|a| pinned.iter().any(|p| same_family(a, p)))
        .cloned()
        .collect();
    for a in defaults {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The line appended for an accepted key: `<pattern> <type> <base64>`.
pub fn entry_line(host: &str, port: u16, key: &PublicKey) -> Result<String, String> {
    let bare = PublicKey::new(key.key_data().clone(), "");
    let openssh = bare.to_openssh().map_err(|e| e.to_string())?;
    Ok(format!("{} {}\n", host_pattern(host, port), openssh.trim()))
}

/// Reads the file; a missing file is empty.
pub fn read(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Serialises check-then-append within this process so concurrent connections to one host
/// do not add it twice.
static APPEND_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Accept-new: re-checks under a lock, then appends the key (creating the file 0600 and its
/// directory if missing) and fsyncs. Returns the verdict found under the lock; only
/// `Unknown` leads to an append.
pub fn learn(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    let _guard = APPEND_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (verdict, ends_open) =
        with_index(path, |index| (index.check(host, port, key), index.lines))?;
    if verdict != Verdict::Unknown {
        return Ok(verdict);
    }
    let mut line = entry_line(host, port, key).map_err(std::io::Error::other)?;
    // Only the last byte decides whether a newline must come first.
    if last_byte(path)?.is_some_and(|b| b != b'\n') {
        line.insert(0, '\n');
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let existed = path.exists();
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    if !existed {
        if let Some(dir) = dir {
            // Make the new directory entry durable too; best effort on platforms where a
            // directory cannot be opened.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
    }
    // The cached index learns the line too, so the next connection does not re-read.
    let after = stamp(path)?;
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = cache.get_or_insert_with(HashMap::new).get_mut(path) {
        let number = ends_open + 1;
        if let Some(entry) = parse_line(number, line.trim_start_matches('\n')) {
            c.index.push(entry);
            c.index.lines = number;
            // We wrote it under the lock: what is on disk is what we hold.
            c.stamp = after;
            c.trusted = true;
        }
    }
    Ok(Verdict::Unknown)
}

/// The file's last byte (`None`: missing or empty).
fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() == 0 {
        return Ok(None);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(Some(b[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    use russh::keys::PrivateKey;

    fn key(seed: u8) -> PublicKey {
        let kp = Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::new(KeypairData::Ed25519(kp), "")
            .unwrap()
            .public_key()
            .clone()
    }

    fn line(pattern: &str, k: &PublicKey) -> String {
        format!("{pattern} {}\n", k.to_openssh().unwrap())
    }

    #[test]
    fn patterns_for_ports() {
        assert_eq!(host_pattern("Room1.Example.com", 22), "room1.example.com");
        assert_eq!(host_pattern("10.0.0.5", 2222), "[10.0.0.5]:2222");
    }

    #[test]
    fn known_unknown_changed() {
        let a = key(1);
        let b = key(2);
        let text = format!(
            "# comment\n\n{}{}",
            line("room1,10.0.0.5", &a),
            line("[10.0.0.6]:2222", &a)
        );
        assert_eq!(check(&text, "10.0.0.5", 22, &a), Verdict::Known { line: 3 });
        assert_eq!(check(&text, "ROOM1", 22, &a), Verdict::Known { line: 3 });
        assert_eq!(
            check(&text, "10.0.0.6", 2222, &a),
            Verdict::Known { line: 4 }
        );
        // same host, other port: unknown
        assert_eq!(check(&text, "10.0.0.6", 22, &a), Verdict::Unknown);
        assert_eq!(check(&text, "10.0.0.7", 22, &a), Verdict::Unknown);
        assert_eq!(
            check(&text, "10.0.0.5", 22, &b),
            Verdict::Changed {
                line: 3,
                expected_fp: fingerprint(&a)
            }
        );
    }

    /// A fleet-sized file: only the matching host's key is parsed (other lines may even be
    /// unparseable), and an unparseable key on the matching line is skipped, as before.
    #[test]
    fn a_check_in_a_fleet_sized_file_reads_only_its_host() {
        let a = key(1);
        let mut text = String::new();
        for i in 0..5_000 {
            text.push_str(&format!(
                "[10.1.{}.{}]:22 ssh-ed25519 not-base64!\n",
                i / 250,
                i % 250
            ));
        }
        text.push_str("10.9.9.9 ssh-ed25519 AAAA-broken\n");
        text.push_str(&line("10.9.9.9", &a));
        assert_eq!(
            check(&text, "10.9.9.9", 22, &a),
            Verdict::Known { line: 5_002 }
        );
        assert_eq!(check(&text, "10.1.0.1", 22, &a), Verdict::Unknown);
    }

    #[test]
    fn globs_negation_revoked_and_markers() {
        let a = key(1);
        let b = key(2);
        let text = format!(
            "{}{}{}",
            line("*.lab.example,!bad.lab.example", &a),
            format_args!("@revoked * {}\n", b.to_openssh().unwrap()),
            format_args!("@cert-authority * {}\n", b.to_openssh().unwrap()),
        );
        assert_eq!(
            check(&text, "r1.lab.example", 22, &a),
            Verdict::Known { line: 1 }
        );
        assert_eq!(check(&text, "bad.lab.example", 22, &a), Verdict::Unknown);
        assert_eq!(
            check(&text, "r1.lab.example", 22, &b),
            Verdict::Revoked { line: 2 }
        );
        assert!(glob(b"r?.lab*", b"r1.lab.example"));
        assert!(!glob(b"r?.lab", b"r12.lab"));
    }

    #[test]
    fn hashed_entries() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let a = key(1);
        let salt = [7u8; 20];
        let h = hmac_sha1(&salt, b"[10.0.0.9]:2222");
        let field = format!("|1|{}|{}", b64.encode(salt), b64.encode(h));
        let text = line(&field, &a);
        assert_eq!(
            check(&text, "10.0.0.9", 2222, &a),
            Verdict::Known { line: 1 }
        );
        assert_eq!(check(&text, "10.0.0.9", 22, &a), Verdict::Unknown);
    }

    #[test]
    fn hmac_sha1_matches_rfc2202() {
        // RFC 2202 test case 2
        assert_eq!(
            hex::encode(hmac_sha1(b"Jefe", b"what do ya want for nothing?")),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn learn_creates_0600_and_appends_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("known_hosts");
        let a = key(1);
        assert_eq!(
            learn(&path, "10.0.0.5", 2222, &a).unwrap(),
            Verdict::Unknown
        );
        assert_eq!(
            learn(&path, "10.0.0.5", 2222, &a).unwrap(),
            Verdict::Known { line: 1 }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("[10.0.0.5]:2222 ssh-ed25519 "));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // a file without a trailing newline gets one before the new line
        std::fs::write(&path, text.trim_end()).unwrap();
        learn(&path, "room2", 22, &key(3)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            check(&text, "room2", 22, &key(3)),
            Verdict::Known { line: 2 }
        );
        assert_eq!(
            check(&text, "10.0.0.5", 2222, &a),
            Verdict::Known { line: 1 }
        );
    }

    /// The process-wide index: parsed once, updated by `learn`, re-read when the file
    /// changes underneath (another tool edited it).
    #[test]
    fn check_path_indexes_once_learns_in_place_and_sees_outside_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let (a, b) = (key(1), key(2));
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!(
                "[10.2.{}.{}]:22 ssh-ed25519 x\n",
                i / 250,
                i % 250
            ));
        }
        text.push_str(&line("Room-A.example,10.3.0.1", &a));
        std::fs::write(&path, &text).unwrap();
        let known = Verdict::Known { line: 10_001 };
        assert_eq!(check_path(&path, "room-a.example", 22, &a).unwrap(), known);
        assert_eq!(check_path(&path, "10.3.0.1", 22, &a).unwrap(), known);
        assert_eq!(
            check_path(&path, "10.3.0.2", 22, &a).unwrap(),
            Verdict::Unknown
        );

        assert_eq!(learn(&path, "10.3.0.2", 22, &b).unwrap(), Verdict::Unknown);
        assert_eq!(
            check_path(&path, "10.3.0.2", 22, &b).unwrap(),
            Verdict::Known { line: 10_002 }
        );
        // What the cache says is what a fresh parse of the file says.
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            check(&on_disk, "10.3.0.2", 22, &b),
            Verdict::Known { line: 10_002 }
        );

        // Someone pins another key for room-a: the next check re-reads and says changed.
        std::fs::write(&path, format!("# edited\n{}", line("room-a.example", &b))).unwrap();
        assert!(matches!(
            check_path(&path, "room-a.example", 22, &a).unwrap(),
            Verdict::Changed { line: 2, .. }
        ));
    }

    #[test]
    fn pinned_key_types_are_preferred() {
        use russh::keys::Algorithm;
        let defaults = russh::Preferred::DEFAULT.key.to_vec();
        let ecdsa = crate::sim::store::HostKeyType::Ecdsa.random().unwrap();
        let line = entry_line("10.0.0.5", 22, ecdsa.public_key()).unwrap();
        let order = preferred_algorithms(&line, "10.0.0.5", 22, &defaults);
        assert_eq!(
            order.first().map(Algorithm::as_str),
            Some("ecdsa-sha2-nistp256")
        );
        assert_eq!(order.len(), defaults.len());
        // Another host, or nothing pinned: the defaults unchanged.
        assert_eq!(
            preferred_algorithms(&line, "10.0.0.6", 22, &defaults),
            defaults
        );
        assert_eq!(
            preferred_algorithms("", "10.0.0.5", 22, &defaults),
            defaults
        );
        // From a file, through the process-wide index: the same answers, a missing file
        // gives the defaults, and a key pinned later is seen.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        assert_eq!(
            preferred_algorithms_at(&path, "10.0.0.5", 22, &defaults).unwrap(),
            defaults
        );
        std::fs::write(&path, &line).unwrap();
        assert_eq!(
            preferred_algorithms_at(&path, "10.0.0.5", 22, &defaults).unwrap(),
            order
        );
        assert_eq!(
            preferred_algorithms_at(&path, "10.0.0.6", 22, &defaults).unwrap(),
            defaults
        );
    }
}
