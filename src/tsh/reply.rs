//! The TSH reply reader: a pure, incremental parser fed the bytes a device sends and
//! producing [`TshEvent`]s (login ready, complete replies, `*e` events, noise).
//!
//! # How a reply is delimited
//! Terminal-mode TSH has no framing, and the word `OK` is both a terminator and a common
//! value (`*s ... SignalState: OK`), so the reader never guesses: the client sends one
//! command at a time and tells the reader, with [`ReplyReader::expect`], which
//! [`ReplyShape`] the answer has. Only whole lines are compared, never substrings.
//!
//! - [`ReplyShape::Command`] (`xCommand`): a leading `OK` is noise (devices print it
//!   *before* the result); the reply ends at the `** end` closing a block that holds `*r`
//!   lines or a `** resultId`. A block of only `*s`/`*c` lines is unsolicited feedback and
//!   is skipped.
//! - [`ReplyShape::Status`] (`xStatus`, `xConfiguration` read or set): the block, `** end`,
//!   then the reply ends at the next `OK` or `ERROR` line (blank lines skipped). An `OK`
//!   before `** end` is noise.
//! - [`ReplyShape::ConfigSet`] (`xConfiguration` set): as `Status`, but an `OK` before
//!   anything else is the whole reply (devices may answer a set with a bare `OK`).
//! - [`ReplyShape::Plain`] (`echo off`): the reply ends at `OK` or `ERROR`.
//! - Any shape: `Command not recognized.` ends the reply; a bare `ERROR` outside a status
//!   trailer ends it as [`ReplyStatus::BareError`].
//!
//! `*e` lines are reported as [`TshEvent::Event`] wherever they appear and never become
//! part of a reply; the `** end` that closes an event block is consumed with it, so an event
//! arriving between a command's `OK` and its result block cannot end the reply early.
//!
//! Unsolicited `*s`/`*c` feedback blocks (only sent after `xFeedback register`, which
//! roomkey never sends) cannot be told apart from an `xStatus` reply and would be merged into
//! it; during an `xCommand` they are recognised (no `*r` line) and skipped.
//!
//! Correlation is by resultId: the reply carries the `** resultId: "rN"` the client sent,
//! and the SSH client discards replies whose id is not the one it awaits.
//!
//! Before login the reader only looks for readiness: the first line exactly `OK` after
//! `*r Login successful`; banner lines are reported as [`TshEvent::Noise`].
//!
//! Both `\r\n` and `\n` line ends are accepted. Only terminal mode is parsed: the client
//! never switches to `xpreferences outputmode json|xml`, so JSON replies are out of scope.
//! Older TC7 software printed result fields on indented lines under the `*r` header
//! (`    Reason: ...`); those are parsed too, nesting by indentation.

use super::command::{ReplyShape, ResultId};

/// Longest line kept whole; a device sending more without a newline gets it cut into
/// noise chunks so memory stays bounded.
const MAX_LINE: usize = 1 << 20;

/// What the reader reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TshEvent {
    /// The session is ready: the first `OK` after `*r Login successful`.
    LoginReady,
    /// A complete reply to the command last announced with `expect`.
    Reply(Reply),
    /// An unsolicited `*e` line.
    Event(String),
    /// Any other line not part of a reply (banner, echo, stray trailers).
    Noise(String),
    /// A complete reply carrying a resultId other than the one announced with
    /// [`ReplyReader::expect_id`] (a late answer to an abandoned command). The reader keeps
    /// waiting for the announced reply.
    Stray(Reply),
}

/// The outcome a device reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    Ok,
    /// `(status=Error)`, with its `Reason` field if any.
    Error {
        reason: Option<String>,
    },
    /// `(status=ParameterError)`.
    ParameterError {
        reason: Option<String>,
    },
    /// Any other `(status=...)` word.
    Other {
        status: String,
        reason: Option<String>,
    },
    /// `Command not recognized.`
    NotRecognized,
    /// A bare `ERROR` line without a status header.
    BareError,
}

impl std::fmt::Display for ReplyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let with_reason = |f: &mut std::fmt::Formatter<'_>, what: &str, r: &Option<String>| match r
        {
            Some(r) => write!(f, "{what}: {r}"),
            None => f.write_str(what),
        };
        match self {
            ReplyStatus::Ok => f.write_str("OK"),
            ReplyStatus::Error { reason } => with_reason(f, "Error", reason),
            ReplyStatus::ParameterError { reason } => with_reason(f, "ParameterError", reason),
            ReplyStatus::Other { status, reason } => with_reason(f, status, reason),
            ReplyStatus::NotRecognized => f.write_str("Command not recognized"),
            ReplyStatus::BareError => f.write_str("ERROR"),
        }
    }
}

/// One `*r` / `*s` / `*c` line (or TC7 indented line) of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `'r'`, `'s'` or `'c'`.
    pub kind: char,
    /// Path words after the result name (`*r`) or the verb (`*c xConfiguration`), e.g.
    /// `["Details", "1", "Fingerprint"]`.
    pub path: Vec<String>,
    /// The value with surrounding quotes removed.
    pub value: String,
}

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// From `** resultId: "r42"`.
    pub result_id: Option<String>,
    pub status: ReplyStatus,
    /// The result name of `*r` lines, e.g. `ServicesShowResult`.
    pub result_name: Option<String>,
    pub fields: Vec<Field>,
    /// Every line of the reply as received (without line ends), events excluded.
    pub raw: Vec<String>,
}

/// The fields of one indexed item, e.g. `Details 1 ...` of a Show result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    /// The index word (`"1"`).
    pub index: &'a str,
    /// `(path after the index, value)`.
    pub fields: Vec<(&'a [String], &'a str)>,
}

impl Item<'_> {
    /// The value at `path` (space-separated, ASCII case-insensitive) below the index.
    pub fn get(&self, path: &str) -> Option<&str> {
        let want: Vec<&str> = path.split_whitespace().collect();
        self.fields
            .iter()
            .find(|(p, _)| path_eq(p, &want))
            .map(|(_, v)| *v)
    }
}

fn path_eq(have: &[String], want: &[&str]) -> bool {
    have.len() == want.len()
        && have
            .iter()
            .zip(want)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

fn path_starts_with(have: &[String], want: &[&str]) -> bool {
    have.len() >= want.len()
        && have
            .iter()
            .zip(want)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status == ReplyStatus::Ok
    }

    /// The device's reason for a failure, if it gave one.
    pub fn reason(&self) -> Option<&str> {
        match &self.status {
            ReplyStatus::Error { reason }
            | ReplyStatus::ParameterError { reason }
            | ReplyStatus::Other { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// The first value at `path` (space-separated words, ASCII case-insensitive), e.g.
    /// `get("Details 1 Fingerprint")` or `get("Conference EndToEndEncryption Mode")`.
    pub fn get(&self, path: &str) -> Option<&str> {
        let want: Vec<&str> = path.split_whitespace().collect();
        self.fields
            .iter()
            .find(|f| path_eq(&f.path, &want))
            .map(|f| f.value.as_str())
    }

    /// Every value at `path`.
    pub fn get_all(&self, path: &str) -> Vec<&str> {
        let want: Vec<&str> = path.split_whitespace().collect();
        self.fields
            .iter()
            .filter(|f| path_eq(&f.path, &want))
            .map(|f| f.value.as_str())
            .collect()
    }

    /// Every field whose path starts with `prefix`.
    pub fn find_all<'a>(&'a self, prefix: &str) -> impl Iterator<Item = &'a Field> + 'a {
        let want: Vec<String> = prefix.split_whitespace().map(str::to_string).collect();
        self.fields.iter().filter(move |f| {
            let w: Vec<&str> = want.iter().map(String::as_str).collect();
            path_starts_with(&f.path, &w)
        })
    }

    /// The items indexed right below `prefix`, in order of first appearance: for
    /// `items("Details")` the fields `Details 1 Fingerprint`, `Details 1 UsedFor`,
    /// `Details 2 ...` give items `"1"` and `"2"`. Works for any index word (digits on
    /// RoomOS, but nothing assumes it).
    pub fn items(&self, prefix: &str) -> Vec<Item<'_>> {
        let want: Vec<&str> = prefix.split_whitespace().collect();
        let mut out: Vec<Item<'_>> = Vec::new();
        for f in &self.fields {
            if !path_starts_with(&f.path, &want) {
                continue;
            }
            let rest = f.path.get(want.len()..).unwrap_or(&[]);
            let Some((index, below)) = rest.split_first() else {
                continue;
            };
            match out.iter_mut().find(|i| i.index == index.as_str()) {
                Some(item) => item.fields.push((below, f.value.as_str())),
                None => out.push(Item {
                    index: index.as_str(),
                    fields: vec![(below, f.value.as_str())],
                }),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing of the result block seen yet.
    Before,
    /// Inside a block.
    InBlock,
    /// Status shape: `** end` seen, waiting for `OK` / `ERROR`.
    AwaitTrailer,
}

#[derive(Debug, Default)]
struct Acc {
    raw: Vec<String>,
    fields: Vec<Field>,
    result_id: Option<String>,
    result_name: Option<String>,
    header: Option<String>,
    saw_r: bool,
    saw_sc: bool,
    /// TC7 indentation stack: (indent, path words of a `Name:` line with no value).
    indent_stack: Vec<(usize, Vec<String>)>,
}

#[derive(Debug)]
struct Pending {
    shape: ReplyShape,
    expected_id: Option<String>,
    phase: Phase,
    acc: Acc,
    /// An extra line the device may answer on its own was sent (a body terminator `.` for
    /// a command that may have taken none): an untagged `Command not recognized.` or bare
    /// `ERROR` is that line's answer, reported as [`TshEvent::Stray`], never this reply.
    strict: bool,
}

/// The incremental reader. Feed it whatever the channel delivers; it keeps a partial line
/// between calls, so feeding a reply whole or one byte at a time gives the same events.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    logged_in: bool,
    saw_login_line: bool,
    pending: Option<Pending>,
    /// Inside an `*e` block whose `** end` has not arrived yet.
    in_event: bool,
}

impl ReplyReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once [`TshEvent::LoginReady`] has been reported.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// True while a reply announced with `expect` has not completed.
    pub fn is_awaiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Announces that a command was sent and its reply has `shape`. Replaces any reply still
    /// pending (the client gave up on it).
    pub fn expect(&mut self, shape: ReplyShape) {
        self.pending = Some(Pending {
            shape,
            expected_id: None,
            phase: Phase::Before,
            acc: Acc::default(),
            strict: false,
        });
    }

    /// Like [`expect`](Self::expect) for a command tagged with `result_id`: a reply carrying
    /// another resultId is reported as [`TshEvent::Stray`] and the wait goes on. Replies
    /// without any resultId (`Command not recognized.`, a bare `ERROR`, devices that ignore
    /// the tag) are accepted as the answer, since one command is outstanding at a time.
    pub fn expect_id(&mut self, shape: ReplyShape, result_id: &ResultId) {
        self.pending = Some(Pending {
            shape,
            expected_id: Some(result_id.as_str().to_string()),
            phase: Phase::Before,
            acc: Acc::default(),
            strict: false,
        });
    }

    /// From now on, until the pending reply completes (and for the next one announced with
    /// [`expect_strict`](Self::expect_strict)), an untagged `Command not recognized.` or
    /// bare `ERROR` is reported as [`TshEvent::Stray`]: the client sent a line of its own
    /// that a device may answer that way (the `.` that ends a body the device may not have
    /// been waiting for), and that answer must not be taken for the command's.
    pub fn strict_terminators(&mut self) {
        if let Some(p) = self.pending.as_mut() {
            p.strict = true;
        }
    }

    /// [`expect_id`](Self::expect_id) with [`strict_terminators`](Self::strict_terminators).
    pub fn expect_strict(&mut self, shape: ReplyShape, result_id: &ResultId) {
        self.expect_id(shape, result_id);
        self.strict_terminators();
    }

    /// Forgets a pending reply (after a timeout).
    pub fn cancel(&mut self) {
        self.pending = None;
    }

    /// Consumes bytes from the device and reports what they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<TshEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                while line.last() == Some(&b'\r') {
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                self.line(text, &mut out);
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    let chunk = std::mem::take(&mut self.buf);
                    out.push(TshEvent::Noise(
                        String::from_utf8_lossy(&chunk).into_owned(),
                    ));
                }
            }
        }
        out
    }

    /// The partial line buffered so far (text after the last newline), e.g. for an error
    /// message when the channel closes.
    pub fn partial_line(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    fn line(&mut self, line: String, out: &mut Vec<TshEvent>) {
        if !self.logged_in {
            let t = line.trim_end();
            if t == "*r Login successful" {
                self.saw_login_line = true;
            } else if t == "OK" && self.saw_login_line {
                self.logged_in = true;
                out.push(TshEvent::LoginReady);
                return;
            }
            out.push(TshEvent::Noise(line));
            return;
        }

        // Events, wherever they are.
        if line.starts_with("*e ") || line == "*e" {
            self.in_event = true;
            out.push(TshEvent::Event(line));
            return;
        }
        // Once this reply's `** resultId` line has been seen, the next `** end` is the
        // reply's own (the tag comes just before it), even if an event slipped in between.
        let tagged = self
            .pending
            .as_ref()
            .is_some_and(|p| p.acc.result_id.is_some());
        if self.in_event && !tagged {
            if line.trim_end() == "** end" {
                self.in_event = false;
                out.push(TshEvent::Noise(line));
                return;
            }
            if !line.trim().is_empty() {
                self.in_event = false;
            }
        }

        let Some(mut p) = self.pending.take() else {
            out.push(TshEvent::Noise(line));
            return;
        };
        match step(&mut p, line) {
            Some(reply) => match (&p.expected_id, &reply.result_id) {
                (Some(want), Some(got)) if want != got => {
                    out.push(TshEvent::Stray(reply));
                    self.pending = Some(Pending {
                        shape: p.shape,
                        expected_id: p.expected_id,
                        phase: Phase::Before,
                        acc: Acc::default(),
                        strict: p.strict,
                    });
                }
                (_, None)
                    if p.strict
                        && matches!(
                            reply.status,
                            ReplyStatus::NotRecognized | ReplyStatus::BareError
                        ) =>
                {
                    out.push(TshEvent::Stray(reply));
                    self.pending = Some(Pending {
                        shape: p.shape,
                        expected_id: p.expected_id,
                        phase: Phase::Before,
                        acc: Acc::default(),
                        strict: true,
                    });
                }
                _ => out.push(TshEvent::Reply(reply)),
            },
            None => self.pending = Some(p),
        }
    }
}

/// Processes one line for the pending reply; returns the reply if it completed.
fn step(p: &mut Pending, line: String) -> Option<Reply> {
    let acc = &mut p.acc;
    // Markers are compared whole, ignoring trailing whitespace only, so a value that merely
    // contains `OK` or `ERROR` never matches.
    let t = line.trim_end().to_string();
    let t = t.as_str();
    if t == "Command not recognized." {
        acc.raw.push(line);
        return Some(finish(acc, Some(ReplyStatus::NotRecognized)));
    }
    if p.shape == ReplyShape::Plain {
        let status = match t {
            "OK" => Some(ReplyStatus::Ok),
            "ERROR" => Some(ReplyStatus::BareError),
            _ => None,
        };
        acc.raw.push(line);
        return status.map(|s| finish(acc, Some(s)));
    }
    if p.phase == Phase::AwaitTrailer {
        let done = match t {
            "OK" => Some(None),
            "ERROR" => Some(Some(ReplyStatus::BareError)),
            _ => None,
        };
        if !t.is_empty() {
            acc.raw.push(line);
        }
        return done.map(|trailer| finish(acc, trailer));
    }
    if p.shape == ReplyShape::ConfigSet
        && t == "OK"
        && acc.fields.is_empty()
        && acc.result_id.is_none()
        && acc.header.is_none()
    {
        // catalogue reply.config-set: a bare `OK`.
        acc.raw.push(line);
        return Some(finish(acc, None));
    }
    if t == "ERROR" {
        // catalogue reply.command-error: a failing xCommand may start `ERROR` where others
        // start `OK`, its `*r` block following. For a command tagged with a resultId the
        // block (which carries the tag) is awaited; untagged, `ERROR` ends the reply.
        let error_first = p.shape == ReplyShape::Command
            && p.expected_id.is_some()
            && !acc.saw_r
            && acc.result_id.is_none()
            && acc
                .raw
                .iter()
                .all(|l| l.trim().is_empty() || l.trim() == "OK");
        acc.raw.push(line);
        if error_first {
            return None;
        }
        return Some(finish(acc, Some(ReplyStatus::BareError)));
    }
    if t.is_empty() {
        return None;
    }
    if t == "** end" {
        acc.raw.push(line);
        match p.shape {
            ReplyShape::Status | ReplyShape::ConfigSet => {
                p.phase = Phase::AwaitTrailer;
                return None;
            }
            _ => {
                let unsolicited = !acc.saw_r && acc.result_id.is_none() && acc.saw_sc;
                if unsolicited {
                    // Feedback (`*s`/`*c` block) that is not this xCommand's result.
                    let raw = std::mem::take(&mut acc.raw);
                    *acc = Acc {
                        raw,
                        ..Acc::default()
                    };
                    p.phase = Phase::Before;
                    return None;
                }
                return Some(finish(acc, None));
            }
        }
    }
    if let Some(rest) = line.strip_prefix("** resultId:") {
        acc.result_id = Some(unquote(rest.trim()));
        acc.raw.push(line);
        return None;
    }
    let kind = if line.starts_with("*r ") {
        Some('r')
    } else if line.starts_with("*s ") {
        Some('s')
    } else if line.starts_with("*c ") {
        Some('c')
    } else {
        None
    };
    if let Some(kind) = kind {
        p.phase = Phase::InBlock;
        acc.indent_stack.clear();
        parse_star_line(acc, kind, line.get(3..).unwrap_or(""));
        acc.raw.push(line);
        return None;
    }
    // TC7: fields on lines below the `*r` header, indented (nested by indentation) or,
    // for `Reason: ...`, at the start of the line.
    let indent = line.len() - line.trim_start().len();
    if p.phase == Phase::InBlock && acc.saw_r && !line.starts_with('*') {
        parse_indented(acc, indent, line.trim());
    }
    // `OK` before the block, echoed commands and anything else: kept in raw only.
    acc.raw.push(line);
    None
}

fn finish(acc: &mut Acc, terminator: Option<ReplyStatus>) -> Reply {
    let reason = acc
        .fields
        .iter()
        .find(|f| {
            f.kind == 'r'
                && f.path.len() == 1
                && f.path
                    .first()
                    .is_some_and(|w| w.eq_ignore_ascii_case("Reason"))
        })
        .map(|f| f.value.clone());
    let header = acc.header.as_deref().map(|h| match h {
        "OK" => ReplyStatus::Ok,
        "Error" => ReplyStatus::Error {
            reason: reason.clone(),
        },
        "ParameterError" => ReplyStatus::ParameterError {
            reason: reason.clone(),
        },
        other => ReplyStatus::Other {
            status: other.to_string(),
            reason: reason.clone(),
        },
    });
    let status = match (terminator, header) {
        (Some(ReplyStatus::NotRecognized), _) => ReplyStatus::NotRecognized,
        // A header that already says what went wrong beats a bare ERROR trailer.
        (Some(ReplyStatus::BareError), Some(h)) if h != ReplyStatus::Ok => h,
        (Some(t), _) => t,
        (None, Some(h)) => h,
        (None, None) => ReplyStatus::Ok,
    };
    Reply {
        result_id: acc.result_id.take(),
        status,
        result_name: acc.result_name.take(),
        fields: std::mem::take(&mut acc.fields),
        raw: std::mem::take(&mut acc.raw),
    }
}

/// A value without its surrounding quotes; inside quotes `\"` and `\\` stand for `"` and
/// `\` (catalogue `reply.value-quoting`: the command syntax's escapes, as the simulator
/// prints them; a JSON text such as the seed form's `CertInfo` depends on it).
fn unquote(v: &str) -> String {
    let Some(inner) = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| v.len() >= 2)
    else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Splits `Path words: value` at the first colon. Path words never contain a colon.
fn split_field(text: &str) -> Option<(Vec<String>, String)> {
    let (head, value) = text.split_once(':')?;
    let words = head.split_whitespace().map(str::to_string).collect();
    Some((words, unquote(value.trim())))
}

/// Parses the text after `*r `, `*s ` or `*c `.
fn parse_star_line(acc: &mut Acc, kind: char, text: &str) {
    match kind {
        'r' => {
            acc.saw_r = true;
            let Some((words, value)) = split_field(text) else {
                return;
            };
            let Some((name, rest)) = words.split_first() else {
                return;
            };
            if acc.result_name.is_none() {
                acc.result_name = Some(name.clone());
            }
            if let Some(status) = rest
                .first()
                .and_then(|w| w.strip_prefix("(status="))
                .and_then(|w| w.strip_suffix(')'))
            {
                acc.header = Some(status.to_string());
                return;
            }
            acc.fields.push(Field {
                kind,
                path: rest.to_vec(),
                value,
            });
        }
        _ => {
            acc.saw_sc = true;
            let Some((mut words, value)) = split_field(text) else {
                return;
            };
            // `*c xConfiguration Audio DefaultVolume: 50` — drop the verb so paths read the
            // same as the command's path.
            if words.first().is_some_and(|w| {
                w.eq_ignore_ascii_case("xConfiguration") || w.eq_ignore_ascii_case("xStatus")
            }) {
                words.remove(0);
            }
            acc.fields.push(Field {
                kind,
                path: words,
                value,
            });
        }
    }
}

/// TC7 form: fields on indented lines below the `*r` header, nested by indentation.
fn parse_indented(acc: &mut Acc, indent: usize, text: &str) {
    let Some((words, value)) = split_field(text) else {
        return;
    };
    while acc.indent_stack.last().is_some_and(|(i, _)| *i >= indent) {
        acc.indent_stack.pop();
    }
    if value.is_empty() && text.trim_end().ends_with(':') {
        acc.indent_stack.push((indent, words));
        return;
    }
    let mut path: Vec<String> = acc
        .indent_stack
        .iter()
        .flat_map(|(_, w)| w.iter().cloned())
        .collect();
    path.extend(words);
    acc.fields.push(Field {
        kind: 'r',
        path,
        value,
    });
}
