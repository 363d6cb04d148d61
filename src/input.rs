//! Lenient reading of the YAML input files (inventory, playbook): the text is parsed into a
//! plain tree first — keeping the first of two equal keys and noting the second — so the
//! loaders can check every entry on its own and report every problem at once instead of
//! stopping at the first one serde meets. Pure except [`read_file`], the one bounded read.
//!
//! Also here, because every loader needs the same words:
//! - [`Locator`]: the line and column of a key path in the text (the tree has no positions).
//! - [`syntax_message`]: a YAML syntax error in plain words ("YAML does not allow tabs").
//! - [`humanize`]: serde's messages without internal type names (`u16`, `untagged enum
//!   Raw`, `struct AuthSettings`) and without the offending value — a value under `auth:`
//!   or a `password`/`secret` key may be a secret, and no message ever echoes one.
//! - [`suggest`]: the nearest known key for a typo ("did you mean `port`?").

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_yaml::{Mapping, Value};

/// Where in a file a problem is (1-based, as editors count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// The largest input file read (inventories of thousands of rooms stay far below it); a
/// bigger file is refused before parsing so memory and time stay bounded.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Deepest nesting accepted: real files nest 5 levels; a deeper one is a mistake or an
/// attack on the parser's stack.
pub const MAX_DEPTH: usize = 64;

/// Reads an input file, refusing one larger than [`MAX_FILE_BYTES`] without reading it
/// (`/dev/zero` or a wrong path to a disk image must not exhaust memory).
pub fn read_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB; roomkey reads input files up to that size",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text: save the file as UTF-8",
        )
    })
}

/// One step of a key path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

/// `devices.room-1.port`, `steps[2].scep_enroll.url`.
pub fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{}]", i + 1)),
        }
    }
    out
}

/// A parsed file: the tree, plus keys written twice (the first is kept in the tree).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub root: Value,
    pub duplicates: Vec<Vec<Seg>>,
}

/// A syntax problem: the text cannot be read as YAML at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub location: Option<Location>,
    pub message: String,
}

/// Parses `text` into a [`Tree`]; an empty file is an empty tree (null).
pub fn parse_tree(text: &str) -> Result<Tree, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            location: None,
            message: format!(
                "the file is larger than {} MiB; roomkey reads input files up to that size",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    // The YAML scanner's time grows with the square of the nesting: refuse deep flow
    // nesting (`[[[[…`) before it starts.
    if let Some(offset) = too_deep(text) {
        let locator = Locator::new(text);
        return Err(SyntaxError {
            location: Some(locator.location_of(offset)),
            message: format!("nested more than {MAX_DEPTH} levels deep; nest less deeply"),
        });
    }
    match serde_yaml::from_str::<Lenient>(text) {
        Ok(l) => Ok(Tree {
            root: l.value,
            duplicates: l.duplicates,
        }),
        Err(e) => Err(SyntaxError {
            location: e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            }),
            message: syntax_message(&e, text),
        }),
    }
}

/// The offset where `[`/`{` nesting (outside quotes and comments), or a run of `- `
/// items on one line, first passes [`MAX_DEPTH`].
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut dashes = 0usize;
    let mut line_start = true;
    for (i, c) in text.char_indices() {
        if c == '\n' {
            comment = false;
            dashes = 0;
            line_start = true;
            continue;
        }
        if comment {
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' => comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(i);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                '-' if line_start => {
                    dashes += 1;
                    if dashes > MAX_DEPTH {
                        return Some(i);
                    }
                }
                ' ' => {}
                _ => line_start = false,
            },
        }
    }
    None
}

/// A value and the duplicate keys found beneath it (paths relative to it).
struct Lenient {
    value: Value,
    duplicates: Vec<Vec<Seg>>,
}

impl Lenient {
    fn plain(value: Value) -> Self {
        Lenient {
            value,
            duplicates: Vec::new(),
        }
    }
}

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts nesting while a collection is read; refuses past [`MAX_DEPTH`].
struct DepthGuard;

impl DepthGuard {
    fn enter<E: de::Error>() -> Result<DepthGuard, E> {
        let d = DEPTH.with(|c| {
            let d = c.get() + 1;
            c.set(d);
            d
        });
        let guard = DepthGuard;
        if d > MAX_DEPTH {
            return Err(E::custom(format!(
                "nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(guard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Number(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Number(v.into())))
    }
    fn visit_str<E>(self, v: &str) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Lenient, E> {
        Ok(Lenient::plain(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
        Lenient::deserialize(d)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Lenient, A::Error> {
        Err(de::Error::custom(
            "YAML tags (`!name`) are not used in roomkey files; write `- name: {...}` instead",
        ))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
        let _depth = DepthGuard::enter::<A::Error>()?;
        let mut items = Vec::new();
        let mut duplicates = Vec::new();
        while let Some(item) = seq.next_element::<Lenient>()? {
            let i = items.len();
            duplicates.extend(item.duplicates.into_iter().map(|mut p| {
                p.insert(0, Seg::Index(i));
                p
            }));
            items.push(item.value);
        }
        Ok(Lenient {
            value: Value::Sequence(items),
            duplicates,
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
        let _depth = DepthGuard::enter::<A::Error>()?;
        let mut out = Mapping::new();
        let mut duplicates = Vec::new();
        while let Some(key) = map.next_key::<Lenient>()? {
            let value: Lenient = map.next_value()?;
            let name = key_text(&key.value);
            if out.contains_key(&key.value) {
                duplicates.push(vec![Seg::Key(name)]);
                continue;
            }
            duplicates.extend(value.duplicates.into_iter().map(|mut p| {
                p.insert(0, Seg::Key(name.clone()));
                p
            }));
            out.insert(key.value, value.value);
        }
        Ok(Lenient {
            value: Value::Mapping(out),
            duplicates,
        })
    }
}

/// A key as text (numbers and booleans as written; anything else as `?`).
pub fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".into(),
        _ => "?".into(),
    }
}

/// What kind of value `v` is, in words (never the value itself).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (an empty value)",
        Value::Bool(_) => "true/false",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A YAML syntax error in plain words, with the fix where one is known.
pub fn syntax_message(e: &serde_yaml::Error, text: &str) -> String {
    let raw = e.to_string();
    let line_text = e
        .location()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1)))
        .unwrap_or("");
    let prefix = line_text
        .get(..e.location().map_or(0, |l| l.column().saturating_sub(1)))
        .unwrap_or(line_text);
    if raw.contains("cannot start any token") && (line_text.contains('\t')) {
        return "YAML does not allow tabs for indentation; use spaces".into();
    }
    if prefix.contains('\t') || (raw.contains("tab") && line_text.contains('\t')) {
        return "YAML does not allow tabs for indentation; use spaces".into();
    }
    // The scanner's words, without the `at line … column …` tail (the location is shown
    // on its own) and without quoting the text (it may be a secret).
    let words = raw
        .split(" at line ")
        .next()
        .unwrap_or(&raw)
        .trim()
        .to_string();
    let hint = if words.contains("mapping values are not allowed") {
        "; a value containing `: ` must be quoted"
    } else if words.contains("did not find expected key") || words.contains("did not find expected")
    {
        "; check the indentation and that every `{`, `[` and quote is closed"
    } else if words.contains("found undefined alias") || words.contains("unknown anchor") {
        "; an alias `*name` needs an anchor `&name` before it"
    } else if words.contains("recursion limit") || words.contains("nested more than") {
        "; nest less deeply"
    } else {
        ""
    };
    let words = if words.starts_with("YAML tags") || words.starts_with("nested more than") {
        words
    } else {
        format!("not valid YAML: {}", redact_quoted(&words, &[]))
    };
    format!("{words}{hint}")
}

/// Replaces every quoted part (`…`, '…', "…") that is not one of `keep` with `…`: the
/// quoted text of a library message may be a value from the file.
pub fn redact_quoted(message: &str, keep: &[&str]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let Some(start) = rest.find(['`', '\'', '"']) else {
            out.push_str(rest);
            return out;
        };
        let quote = rest[start..].chars().next().unwrap_or('"');
        let after = &rest[start + quote.len_utf8()..];
        // An apostrophe inside a word ("didn't") is not a quote.
        let word_before = rest[..start]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
        let Some(end) = after
            .find(quote)
            .filter(|_| !(quote == '\'' && word_before))
        else {
            out.push_str(&rest[..start + quote.len_utf8()]);
            rest = after;
            continue;
        };
        let inner = &after[..end];
        out.push_str(&rest[..start]);
        out.push(quote);
        if keep.contains(&inner) {
            out.push_str(inner);
        } else {
            out.push('…');
        }
        out.push(quote);
        rest = &after[end + quote.len_utf8()..];
    }
}

/// Whether a value at `path` may be a secret: anything under `auth`, any key naming a
/// secret or a password. Messages about such values never quote them.
pub fn is_secret_path(path: &[Seg]) -> bool {
    path.iter().any(|s| match s {
        Seg::Key(k) => {
            let k = k.to_ascii_lowercase();
            // Not `contains("secret")`: `populate_secret` is a step name, not a secret.
            k == "auth"
                || k == "secret"
                || k == "client_secret"
                || k.starts_with("secret_")
                || k.contains("password")
                || k.contains("passphrase")
        }
        Seg::Index(_) => false,
    })
}

/// The known name nearest to `typo` (edit distance at most 2, or 3 for long names;
/// case-insensitive), if any.
pub fn suggest<'a>(typo: &str, known: &[&'a str]) -> Option<&'a str> {
    let t = typo.to_ascii_lowercase();
    let limit = if t.chars().count() > 8 { 3 } else { 2 };
    known
        .iter()
        .map(|k| (distance(&t, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (with adjacent transpositions), bounded inputs only.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(prev2[j - 2] + 1);
            }
            cur[j] = v;
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// "unknown key `prot`: did you mean `port`? (…)" for a key not in `known`. Under a secret
/// path the key itself is not echoed (a value typed where a key belongs may be a secret).
pub fn unknown_key_message(key: &str, known: &[&str], secret: bool) -> String {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let shown = if secret {
        "an unknown key (not shown: it may be a secret)".to_string()
    } else {
        format!("unknown key `{key}`")
    };
    match suggest(key, known) {
        Some(s) => format!("{shown}: did you mean `{s}`? (expected one of {list})"),
        None => format!("{shown}: expected one of {list}"),
    }
}

/// Turns a serde message about the value at `path` into words for an administrator:
/// `expected` (when given) describes what the field takes and replaces serde's type names;
/// values are never quoted; unknown keys and variants get a suggestion.
pub fn humanize(message: &str, path: &[Seg], expected: Option<&str>) -> String {
    let secret = is_secret_path(path);
    let m = message.trim();
    // serde_yaml appends a location for some errors; ours comes from the locator.
    let m = m.split(" at line ").next().unwrap_or(m);
    if let Some(rest) = m.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        if tail.contains("there are no fields") {
            let shown = if secret { "an unknown key" } else { "" };
            return if secret {
                format!("{shown}: this takes no settings; write `{{}}`")
            } else {
                format!("unknown key `{field}`: this step takes no settings; write `{{}}`")
            };
        }
        let known = backquoted(tail);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        return unknown_key_message(field, &known, secret);
    }
    if let Some(rest) = m.strip_prefix("unknown variant `") {
        let (variant, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backquoted(tail);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let shown = if secret {
            "an unknown value".to_string()
        } else {
            format!("unknown value `{variant}`")
        };
        return match suggest(variant, &known) {
            Some(s) => format!("{shown}: did you mean `{s}`? (expected one of {list})"),
            None => format!("{shown}: expected one of {list}"),
        };
    }
    if let Some(rest) = m.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return format!("missing key `{field}`");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = m.strip_prefix(prefix) {
            let (found, want) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let want = expected
                .map(str::to_string)
                .unwrap_or_else(|| plain_type(want));
            return format!("expected {want}, found {}", found_kind(found));
        }
    }
    if m.contains("did not match any variant") || m.starts_with("invalid length") {
        return match expected {
            Some(e) => format!("expected {e}"),
            None => "this value has the wrong form".into(),
        };
    }
    // A custom message of ours (durations, batch sizes, ...): kept, quoted parts removed
    // under a secret path.
    let words = if secret {
        redact_quoted(m, &[])
    } else {
        m.to_string()
    };
    match expected {
        Some(e) if words.contains("expected ") && has_type_name(&words) => {
            format!("expected {e}")
        }
        _ => words,
    }
}

/// The words in backquotes of `text`.
fn backquoted(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// "string \"hunter2\"" → "text"; "integer `70000`" → "a number".
fn found_kind(found: &str) -> &'static str {
    let f = found.trim();
    if f.starts_with("string") || f.starts_with("char") {
        "text"
    } else if f.starts_with("integer") {
        "a number"
    } else if f.starts_with("floating point") {
        "a decimal number"
    } else if f.starts_with("boolean") {
        "true/false"
    } else if f.starts_with("sequence") {
        "a list"
    } else if f.starts_with("map") {
        "a map"
    } else if f.starts_with("unit") || f.starts_with("null") || f.starts_with("Option") {
        "nothing (an empty value)"
    } else {
        "a value of another kind"
    }
}

fn has_type_name(s: &str) -> bool {
    [
        "u8", "u16", "u32", "u64", "usize", "i64", "f64", "struct ", "enum ", "Raw",
    ]
    .iter()
    .any(|t| s.contains(t))
}

/// serde's expectation in words.
fn plain_type(want: &str) -> String {
    let w = want.trim();
    match w {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "usize" => "a whole number (0 or more)".into(),
        "i64" | "i32" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "text".into(),
        "a sequence" => "a list".into(),
        "a map" => "a map".into(),
        _ if w.starts_with("struct ") || w.starts_with("a map") => "a map of settings".into(),
        _ if w.starts_with("enum ") || w.contains("variant") => "one of the listed names".into(),
        _ if has_type_name(w) => "a value of another kind".into(),
        _ => w.to_string(),
    }
}

/// Finds where key paths are in the text. The tree keeps no positions, so this scans the
/// text: each key is looked for after its parent, as a key (`name:` at a line start, after
/// `{`, `,` or `- `, quoted or not, outside comments); a list index counts the `- ` items
/// under its parent. Good enough to point an editor at the right line; when a path cannot
/// be followed to the end, the deepest part found is returned.
pub struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator { text, line_starts }
    }

    fn location_of(&self, offset: usize) -> Location {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        Location {
            line: line + 1,
            column,
        }
    }

    /// The location of `path` (its last key or list item).
    pub fn locate(&self, path: &[Seg]) -> Option<Location> {
        self.offset(path, 0).map(|o| self.location_of(o))
    }

    /// The location of the `nth` (0-based) occurrence of the last key of `path` under its
    /// parent: a key written twice is reported where it is written again.
    pub fn locate_repeat(&self, path: &[Seg], nth: usize) -> Option<Location> {
        self.offset(path, nth).map(|o| self.location_of(o))
    }

    fn offset(&self, path: &[Seg], repeat_last: usize) -> Option<usize> {
        let mut pos = 0usize;
        let mut found = None;
        for (i, seg) in path.iter().enumerate() {
            let repeat = if i + 1 == path.len() { repeat_last } else { 0 };
            let next = match seg {
                Seg::Key(k) => {
                    let mut p = self.find_key(k, pos, i == 0);
                    for _ in 0..repeat {
                        p = p.and_then(|p| self.find_key(k, p + 1, i == 0));
                    }
                    p
                }
                Seg::Index(n) => self.find_item(*n, pos),
            };
            match next {
                Some(p) => {
                    found = Some(p);
                    pos = p;
                }
                None => break,
            }
        }
        found
    }

    /// The next occurrence of `key` written as a key at or after `from`.
    fn find_key(&self, key: &str, from: usize, top_level: bool) -> Option<usize> {
        let text = self.text;
        let mut search = from;
        while let Some(rel) = text.get(search..)?.find(key) {
            let at = search + rel;
            search = at + key.len().max(1);
            let (start, end) = quoted_span(text, at, key.len());
            let before = text.get(..start)?;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line_before = &before[line_start..];
            if line_before.contains('#') {
                continue;
            }
            let prefix_ok = {
                let t = line_before.trim_end();
                t.is_empty() || t.ends_with('{') || t.ends_with(',') || t.ends_with('-')
            };
            if !prefix_ok || (top_level && !line_before.is_empty()) {
                continue;
            }
            let after = text.get(end..)?.trim_start_matches([' ', '\t']);
            if after.starts_with(':') {
                return Some(start);
            }
        }
        None
    }

    /// The start of the `n`th (0-based) `- ` item of the block list that follows `from`,
    /// or the `n`th element of a flow list `[…]`.
    fn find_item(&self, n: usize, from: usize) -> Option<usize> {
        let text = self.text;
        let rest = text.get(from..)?;
        // A flow list on the parent's line.
        let line_end = rest.find('\n').unwrap_or(rest.len());
        if let Some(open) = rest[..line_end].find('[') {
            let mut idx = 0;
            let mut depth = 0i32;
            let mut item_start = Some(from + open + 1);
            for (i, c) in rest[open..].char_indices() {
                match c {
                    '[' | '{' => depth += 1,
                    ']' | '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        idx += 1;
                        item_start = Some(from + open + i + 1);
                    }
                    _ => {}
                }
                if idx == n && c == ',' {
                    break;
                }
            }
            if idx == n {
                return item_start.map(|s| {
                    s + text
                        .get(s..)
                        .map_or(0, |t| t.len() - t.trim_start_matches(' ').len())
                });
            }
            return None;
        }
        let mut indent: Option<usize> = None;
        let mut count = 0;
        let mut offset = from + line_end + 1;
        for line in text.get(offset.min(text.len())..)?.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let trimmed = body.trim_start_matches(' ');
            let this_indent = body.len() - trimmed.len();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                offset += line.len();
                continue;
            }
            match indent {
                None if trimmed.starts_with('-') => indent = Some(this_indent),
                None => return None,
                Some(i) if this_indent < i => return None,
                Some(i) if this_indent == i && !trimmed.starts_with('-') => return None,
                _ => {}
            }
            if Some(this_indent) == indent && trimmed.starts_with('-') {
                if count == n {
                    return Some(offset + this_indent);
                }
                count += 1;
            }
            offset += line.len();
        }
        None
    }
}

/// The span of a key at `at` including quotes around it, if any.
fn quoted_span(text: &str, at: usize, len: usize) -> (usize, usize) {
    let before = text.get(..at).and_then(|s| s.chars().next_back());
    let after = text.get(at + len..).and_then(|s| s.chars().next());
    match (before, after) {
        (Some(q @ ('"' | '\'')), Some(r)) if q == r => (at - 1, at + len + 1),
        _ => (at, at + len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> Vec<Seg> {
        path.split('.')
            .map(|s| match s.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::key(s),
            })
            .collect()
    }

    #[test]
    fn duplicates_are_kept_once_and_noted() {
        let t = parse_tree("devices:\n  a: { host: x }\n  a: { host: y }\n  b: { k: 1, k: 2 }\n")
            .unwrap();
        assert_eq!(t.duplicates, vec![p("devices.a"), p("devices.b.k")]);
        assert_eq!(t.root["devices"]["a"]["host"], Value::from("x"));
    }

    #[test]
    fn tabs_get_words_not_scanner_jargon() {
        let e = parse_tree("devices:\n\troom: { host: x }\n").unwrap_err();
        assert_eq!(
            e.message,
            "YAML does not allow tabs for indentation; use spaces"
        );
        assert_eq!(e.location.map(|l| l.line), Some(2));
    }

    #[test]
    fn syntax_errors_do_not_quote_the_text() {
        let e = parse_tree("auth: { password: \"hunter2 }\n").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e:?}");
        let e = parse_tree("a: b: hunter2\n").unwrap_err();
        assert!(!e.message.contains("hunter2"), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let e = parse_tree(&deep).unwrap_err();
        assert!(e.message.contains("nest"), "{e:?}");
    }

    #[test]
    fn tags_are_refused() {
        assert!(parse_tree("steps: [!add_certificate {}]\n").is_err());
    }

    #[test]
    fn humanized_messages_have_no_type_names_or_values() {
        let path = p("auth");
        let m = humanize(
            "invalid type: string \"hunter2\", expected struct AuthSettings",
            &path,
            None,
        );
        assert_eq!(m, "expected a map of settings, found text");
        let m = humanize(
            "invalid value: integer `70000`, expected u16",
            &p("devices.a.port"),
            Some("a number from 1 to 65535"),
        );
        assert_eq!(m, "expected a number from 1 to 65535, found a number");
        let m = humanize(
            "data did not match any variant of untagged enum Raw",
            &p("serial"),
            Some("a count"),
        );
        assert_eq!(m, "expected a count");
        let m = humanize(
            "unknown field `prot`, expected one of `port`, `username`",
            &p("defaults"),
            None,
        );
        assert_eq!(
            m,
            "unknown key `prot`: did you mean `port`? (expected one of `port`, `username`)"
        );
        let m = humanize(
            "unknown field `hunter2`, expected one of `password_env`, `password`",
            &p("defaults.auth"),
            None,
        );
        assert!(!m.contains("hunter2"), "{m}");
        let m = humanize(
            "unknown variant `add_certificat`, expected one of `add_certificate`, `restart`",
            &p("steps.0"),
            None,
        );
        assert!(m.contains("did you mean `add_certificate`?"), "{m}");
        for t in ["u16", "usize", "Raw", "struct"] {
            assert!(!m.contains(t));
        }
    }

    #[test]
    fn suggestions() {
        let known = ["port", "username", "auth", "certificate", "identity"];
        assert_eq!(suggest("prot", &known), Some("port"));
        assert_eq!(suggest("usernme", &known), Some("username"));
        assert_eq!(suggest("certficate", &known), Some("certificate"));
        assert_eq!(suggest("zzz", &known), None);
    }

    #[test]
    fn redaction_keeps_key_names_only() {
        assert_eq!(
            redact_quoted("unknown `hunter2` near 'x' and \"y\", don't", &[]),
            "unknown `…` near '…' and \"…\", don't"
        );
        assert_eq!(redact_quoted("key `port`", &["port"]), "key `port`");
    }

    #[test]
    fn locator_finds_block_and_flow_keys_and_items() {
        let text = "\
# devices: not this
defaults:
  port: 22
devices:
  room-1: { host: 10.0.0.1, prot: 22 }
  room-2:
    host: \"10.0.0.2\"
    groups: [a, b]
steps:
  - add_certificate: {}
  # - comment
  - scep_enroll:
      url: x
";
        let l = Locator::new(text);
        assert_eq!(
            l.locate(&p("devices.room-1.prot")),
            Some(Location {
                line: 5,
                column: 29
            })
        );
        assert_eq!(
            l.locate(&p("devices.room-2.host")),
            Some(Location { line: 7, column: 5 })
        );
        assert_eq!(
            l.locate(&p("devices.room-2.groups.1")),
            Some(Location {
                line: 8,
                column: 17
            })
        );
        assert_eq!(
            l.locate(&p("steps.1.scep_enroll.url")),
            Some(Location {
                line: 13,
                column: 7
            })
        );
        assert_eq!(
            l.locate(&p("steps.1")),
            Some(Location {
                line: 12,
                column: 3
            })
        );
        // The deepest part found.
        assert_eq!(
            l.locate(&p("devices.room-3")),
            Some(Location { line: 4, column: 1 })
        );
        let dup = Locator::new("devices:\n  a: 1\n  a: 2\n");
        assert_eq!(
            dup.locate_repeat(&p("devices.a"), 1),
            Some(Location { line: 3, column: 3 })
        );
    }
}
