//! The device side of the TSH line protocol, pure: splitting the received byte stream into
//! lines and frames (a command line plus its dot-terminated or length-prefixed `{N} ` body),
//! parsing a command line into a [`model::Request`], and rendering a [`model::Response`]
//! exactly as a RoomOS device prints it (terminal or pretty-printed JSON output mode, `OK`
//! before an xCommand's `*r` block, `** end` / blank / `OK` after xStatus and
//! xConfiguration, `** resultId: "…"` correlation). Also the log redaction of command lines.
//!
//! Everything is rendered with `\n` line ends, as a device writes them; a session that
//! requested a pty gets them through [`onlcr`], the terminal line discipline's `\r\n`
//! (catalogue `framing.line-ends`). Each shape names its catalogue entry
//! (`docs/device-catalogue.md`).

use zeroize::Zeroizing;

use super::model::{self, Kind, Leaf, Request, Response, Value};
use super::variants::{CommandErrorStart, ConfigSetReply, Variants};

/// Line end of everything the device prints (before a pty's line discipline).
pub const EOL: &str = "\n";

/// What a pty's line discipline (`ONLCR`) makes of the device's output: every `\n` becomes
/// `\r\n`. Without a pty the bytes pass unchanged (jsxapi splits on `\n` and waits for a
/// line exactly `OK`; catalogue `framing.line-ends`).
pub fn onlcr(text: &str, pty: bool) -> std::borrow::Cow<'_, str> {
    if pty && text.contains('\n') {
        std::borrow::Cow::Owned(text.replace('\n', "\r\n"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The greeting printed after login.
pub fn banner(name: &str) -> String {
    format!(
        "Welcome to {name}{EOL}Cisco Codec Release {}{EOL}SW Release Date: {}{EOL}\
         *r Login successful{EOL}{EOL}OK{EOL}{EOL}",
        model::RELEASE,
        model::RELEASE_DATE
    )
}

/// Upper bound of a line or body the device buffers; beyond it the session is dropped.
pub const MAX_INPUT: usize = 4 * 1024 * 1024;

/// What the input splitter produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A received line, for echo (body lines included).
    Echo(String),
    /// A complete command: its line and, for multi-line commands, the body.
    Frame {
        line: String,
        body: Option<ZeroizingString>,
    },
}

/// A body held in zeroizing memory (with a redacted `Debug`).
#[derive(PartialEq, Eq)]
pub struct ZeroizingString(pub Zeroizing<String>);

impl std::fmt::Debug for ZeroizingString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[body: {} bytes]", self.0.len())
    }
}

/// The input exceeded [`MAX_INPUT`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("input line or body too long")]
pub struct TooLong;

enum State {
    Lines,
    /// Collecting a dot-terminated body for `line`.
    Body {
        line: String,
        body: Zeroizing<String>,
    },
    /// Reading exactly `remaining` more bytes of a `{N} ` frame into `buf`.
    Counted {
        remaining: usize,
        buf: Zeroizing<Vec<u8>>,
    },
}

/// Splits the received bytes into [`Input`]s.
pub struct Splitter {
    pending: Zeroizing<Vec<u8>>,
    state: State,
    /// Which commands take a dot-terminated body depends on the variant
    /// (`populate_form: multi_line`).
    variants: Variants,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(Variants::default())
    }
}

impl Splitter {
    /// A splitter for a device playing `variants`.
    pub fn new(variants: Variants) -> Self {
        Splitter {
            pending: Zeroizing::new(Vec::new()),
            state: State::Lines,
            variants,
        }
    }
}

/// Does a `{N} ` line start a length-prefixed frame? Returns N and any text after it.
fn counted_prefix(line: &str) -> Option<(usize, &str)> {
    let rest = line.strip_prefix('{')?;
    let close = rest.find('}')?;
    let n: usize = rest.get(..close)?.parse().ok()?;
    let after = rest.get(close + 1..)?;
    let after = after.strip_prefix(' ').unwrap_or(after);
    Some((n, after))
}

fn needs_body(line: &str, v: &Variants) -> bool {
    match parse_line(line) {
        Parsed::X { req, .. } => model::Device::takes_body(req.kind, &req.path, v),
        _ => false,
    }
}

impl Splitter {
    /// Feeds received bytes; returns what became complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Input>, TooLong> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if let State::Counted { remaining, buf } = &mut self.state {
                let take = (*remaining).min(self.pending.len());
                buf.extend_from_slice(&self.pending[..take]);
                self.pending.drain(..take);
                *remaining -= take;
                if *remaining > 0 {
                    break;
                }
                let text = Zeroizing::new(String::from_utf8_lossy(buf).into_owned());
                self.state = State::Lines;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let (line, body) = match text.split_once('\n') {
                    Some((l, b)) => (l, Some(b)),
                    None => (text, None),
                };
                let line = line.strip_suffix('\r').unwrap_or(line).to_string();
                for l in text.split('\n') {
                    out.push(Input::Echo(l.strip_suffix('\r').unwrap_or(l).to_string()));
                }
                let body = body.map(|b| {
                    let joined: String = b
                        .split('\n')
                        .map(|l| l.strip_suffix('\r').unwrap_or(l))
                        .collect::<Vec<_>>()
                        .join("\n");
                    ZeroizingString(Zeroizing::new(joined))
                });
                out.push(Input::Frame { line, body });
                continue;
            }
            let Some(nl) = self.pending.iter().position(|b| *b == b'\n') else {
                if self.pending.len() > MAX_INPUT {
                    return Err(TooLong);
                }
                break;
            };
            let raw: Zeroizing<Vec<u8>> = Zeroizing::new(self.pending.drain(..=nl).collect());
            let text = String::from_utf8_lossy(&raw[..nl]).into_owned();
            let line = text.strip_suffix('\r').unwrap_or(&text).to_string();
            match &mut self.state {
                State::Lines => {
                    if let Some((n, after)) = counted_prefix(&line) {
                        out.push(Input::Echo(line.clone()));
                        let mut buf = Zeroizing::new(Vec::new());
                        let mut remaining = n;
                        if !after.is_empty() {
                            // Tolerate the command line on the `{N} ` line itself.
                            let first = format!("{after}\n");
                            buf.extend_from_slice(first.as_bytes());
                            remaining = remaining.saturating_sub(first.len());
                        }
                        if n > MAX_INPUT {
                            return Err(TooLong);
                        }
                        self.state = State::Counted { remaining, buf };
                        continue;
                    }
                    out.push(Input::Echo(line.clone()));
                    if needs_body(&line, &self.variants) {
                        self.state = State::Body {
                            line,
                            body: Zeroizing::new(String::new()),
                        };
                    } else {
                        out.push(Input::Frame { line, body: None });
                    }
                }
                State::Body { line: cmd, body } => {
                    out.push(Input::Echo(line.clone()));
                    if line == "." {
                        let cmd = std::mem::take(cmd);
                        let body = std::mem::take(body);
                        self.state = State::Lines;
                        out.push(Input::Frame {
                            line: cmd,
                            body: Some(ZeroizingString(body)),
                        });
                    } else {
                        if body.len() + line.len() > MAX_INPUT {
                            return Err(TooLong);
                        }
                        if !body.is_empty() {
                            body.push('\n');
                        }
                        body.push_str(&line);
                    }
                }
                State::Counted { .. } => {}
            }
        }
        Ok(out)
    }
}

/// Reply format selected with `xpreferences outputmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    Terminal,
    Json,
}

/// A parsed command line.
#[derive(Clone)]
pub enum Parsed {
    Empty,
    Echo(bool),
    OutputMode(OutputMode),
    /// `xpreferences` with an unsupported argument.
    BadPreference,
    /// `xFeedback register|deregister|deregisterall|list`; an unusable path is `Err`.
    Feedback {
        cmd: Result<FeedbackCmd, String>,
        result_id: Option<String>,
    },
    Bye,
    X {
        req: Request,
        result_id: Option<String>,
    },
    /// `xCommand <path> ?`: the command's help (catalogue `help.format`).
    Help {
        kind: Kind,
        path: Vec<String>,
    },
    /// An x-command whose parameters could not be parsed.
    Syntax {
        kind: Kind,
        reason: String,
        result_id: Option<String>,
    },
    NotRecognized,
}

/// Splits off a trailing ` | resultId="…"` (outside quotes).
fn split_result_id(line: &str) -> (&str, Option<String>) {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '|' if !in_quote => {
                let head = line[..i].trim_end();
                let tail = line[i + 1..].trim();
                let id = tail.split_once('=').and_then(|(k, v)| {
                    if k.trim().eq_ignore_ascii_case("resultid") {
                        let v = v.trim();
                        Some(
                            v.strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .unwrap_or(v)
                                .to_string(),
                        )
                    } else {
                        None
                    }
                });
                return (head, id);
            }
            _ => {}
        }
    }
    (line, None)
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            let mut v = String::new();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    _ => v.push(c),
                }
            }
            if !closed {
                return Err("Unterminated quoted value".into());
            }
            out.push(Token::Quoted(v));
            continue;
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '"' {
                break;
            }
            w.push(c);
            chars.next();
            if c == ':' {
                break;
            }
        }
        out.push(Token::Word(w));
    }
    Ok(out)
}

/// Path words and `Name: value` parameters of a command line.
type Args = (Vec<String>, Vec<(String, String)>);

/// Parses path words and `Name: value` parameters.
fn parse_args(s: &str) -> Result<Args, String> {
    let tokens = tokenize(s)?;
    let mut path = Vec::new();
    let mut params = Vec::new();
    let mut it = tokens.into_iter();
    while let Some(t) = it.next() {
        match t {
            Token::Word(w) if w.ends_with(':') && w.len() > 1 => {
                let name = w.trim_end_matches(':').to_string();
                let value = match it.next() {
                    Some(Token::Word(v)) | Some(Token::Quoted(v)) => v,
                    None => String::new(),
                };
                params.push((name, value));
            }
            Token::Word(w) if params.is_empty() => path.push(w),
            _ => return Err("Syntax error in parameters".into()),
        }
    }
    Ok((path, params))
}

/// Parses one command line (commands are case-insensitive).
pub fn parse_line(line: &str) -> Parsed {
    let (head, result_id) = split_result_id(line.trim());
    let head = head.trim();
    if head.is_empty() {
        return Parsed::Empty;
    }
    let (first, rest) = head
        .split_once(char::is_whitespace)
        .map(|(a, b)| (a, b.trim()))
        .unwrap_or((head, ""));
    let first_l = first.to_ascii_lowercase();
    let kind = match first_l.as_str() {
        "xcommand" => Kind::Command,
        "xstatus" => Kind::Status,
        "xconfiguration" => Kind::Configuration,
        "echo" => {
            return match rest.to_ascii_lowercase().as_str() {
                "off" => Parsed::Echo(false),
                "on" => Parsed::Echo(true),
                _ => Parsed::NotRecognized,
            }
        }
        "xpreferences" => {
            let words: Vec<String> = rest
                .split_whitespace()
                .map(str::to_ascii_lowercase)
                .collect();
            let w: Vec<&str> = words.iter().map(String::as_str).collect();
            return match w.as_slice() {
                ["outputmode", "terminal"] => Parsed::OutputMode(OutputMode::Terminal),
                ["outputmode", "json"] => Parsed::OutputMode(OutputMode::Json),
                _ => Parsed::BadPreference,
            };
        }
        "xfeedback" => {
            return Parsed::Feedback {
                cmd: parse_feedback(rest),
                result_id,
            }
        }
        "bye" | "exit" | "quit" => return Parsed::Bye,
        _ => return Parsed::NotRecognized,
    };
    // `xCommand <path> ?`: help, whatever the path (the device says whether it knows it).
    // Checked before the parameters are parsed, so `Services Add ?` takes no body either.
    // (`xStatus ?` / `xConfiguration ?` list trees on a device; not simulated.)
    if let Some(path) = rest.strip_suffix('?').filter(|_| kind == Kind::Command) {
        let words: Vec<String> = path.split_whitespace().map(str::to_string).collect();
        let plain = |w: &String| w.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
        if !words.is_empty() && words.iter().all(plain) {
            return Parsed::Help { kind, path: words };
        }
    }
    match parse_args(rest) {
        Ok((path, params)) => Parsed::X {
            req: Request {
                kind,
                path,
                params,
                body: None,
            },
            result_id,
        },
        Err(reason) => Parsed::Syntax {
            kind,
            reason,
            result_id,
        },
    }
}

/// The root of an `xFeedback` path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackRoot {
    Status,
    Configuration,
    /// Accepted like on a device; the simulator raises no events of its own.
    Event,
}

/// A registered feedback expression, e.g. `/Status/Conference/EndToEndEncryption`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedbackPath {
    pub root: FeedbackRoot,
    pub words: Vec<String>,
}

impl FeedbackPath {
    /// Whether a changed leaf of this kind lies at or below the path (case-insensitive,
    /// as device paths are).
    pub fn covers(&self, kind: Kind, leaf_path: &[String]) -> bool {
        let root_matches = matches!(
            (self.root, kind),
            (FeedbackRoot::Status, Kind::Status)
                | (FeedbackRoot::Configuration, Kind::Configuration)
        );
        root_matches
            && self.words.len() <= leaf_path.len()
            && self
                .words
                .iter()
                .zip(leaf_path)
                .all(|(w, p)| w.eq_ignore_ascii_case(p))
    }

    /// The path as the device prints it back in `xFeedback list`.
    pub fn text(&self) -> String {
        let root = match self.root {
            FeedbackRoot::Status => "Status",
            FeedbackRoot::Configuration => "Configuration",
            FeedbackRoot::Event => "Event",
        };
        std::iter::once(root)
            .chain(self.words.iter().map(String::as_str))
            .fold(String::new(), |acc, w| format!("{acc}/{w}"))
    }
}

/// An `xFeedback` subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedbackCmd {
    Register(FeedbackPath),
    Deregister(FeedbackPath),
    DeregisterAll,
    List,
}

fn parse_feedback_path(text: &str) -> Result<FeedbackPath, String> {
    let mut words = text
        .split('/')
        .filter(|w| !w.is_empty())
        .map(str::to_string);
    let root = match words.next().map(|w| w.to_ascii_lowercase()).as_deref() {
        Some("status") => FeedbackRoot::Status,
        Some("configuration") => FeedbackRoot::Configuration,
        Some("event") => FeedbackRoot::Event,
        _ => return Err(format!("invalid feedback path {text:?}")),
    };
    let words: Vec<String> = words.collect();
    if words.iter().any(|w| {
        !w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '[' || c == ']')
    }) {
        return Err(format!("invalid feedback path {text:?}"));
    }
    Ok(FeedbackPath { root, words })
}

fn parse_feedback(rest: &str) -> Result<FeedbackCmd, String> {
    let mut words = rest.split_whitespace();
    let sub = words.next().unwrap_or("").to_ascii_lowercase();
    let arg = words.next();
    if words.next().is_some() {
        return Err("too many arguments".into());
    }
    match (sub.as_str(), arg) {
        ("register", Some(p)) => parse_feedback_path(p).map(FeedbackCmd::Register),
        ("deregister", Some(p)) => parse_feedback_path(p).map(FeedbackCmd::Deregister),
        ("deregisterall", None) => Ok(FeedbackCmd::DeregisterAll),
        ("list", None) => Ok(FeedbackCmd::List),
        _ => Err(format!("unknown xFeedback usage {rest:?}")),
    }
}

/// A feedback message for changed leaves: in terminal mode `*s`/`*c` lines and `** end`
/// (no `OK`: nobody asked); in JSON mode one document.
pub fn render_feedback(kind: Kind, leaves: &[Leaf], mode: OutputMode) -> String {
    match mode {
        OutputMode::Terminal => {
            let mut s = String::new();
            for l in leaves {
                let prefix = match kind {
                    Kind::Configuration => "*c xConfiguration",
                    _ => "*s",
                };
                s.push_str(&format!(
                    "{prefix} {}: {}{EOL}",
                    l.path.join(" "),
                    value_text(&l.value)
                ));
            }
            s.push_str(&format!("** end{EOL}"));
            s
        }
        OutputMode::Json => {
            let doc = serde_json::json!({ node_name(kind): serde_json::Value::Object(json_tree(leaves)) });
            json_text(&doc, None)
        }
    }
}

/// The reply to an `xFeedback` subcommand (catalogue `feedback.commands`): in terminal mode
/// the registered paths (for `list`), `** end`, a blank line and `OK`; in JSON mode the
/// result id alone (as jsxapi's tests show for `register`), the paths under `Feedback` for
/// `list`; an unusable path is an error.
pub fn feedback_reply(
    outcome: Result<Option<Vec<String>>, String>,
    mode: OutputMode,
    result_id: Option<&str>,
) -> String {
    let rid = result_id_line(result_id);
    match (mode, outcome) {
        (OutputMode::Terminal, Ok(paths)) => {
            let mut s = String::new();
            for p in paths.unwrap_or_default() {
                s.push_str(&format!("{p}{EOL}"));
            }
            s.push_str(&format!("{rid}** end{EOL}{EOL}OK{EOL}"));
            s
        }
        (OutputMode::Terminal, Err(_)) => format!("{rid}ERROR{EOL}"),
        (OutputMode::Json, Ok(None)) => json_text(&serde_json::json!({}), result_id),
        (OutputMode::Json, Ok(Some(paths))) => {
            json_text(&serde_json::json!({ "Feedback": paths }), result_id)
        }
        (OutputMode::Json, Err(reason)) => json_text(
            &serde_json::json!({ "CommandResponse": { "Result": {
                "status": "Error",
                "Reason": { "Value": reason },
            } } }),
            result_id,
        ),
    }
}

/// Parameters whose values are harmless and kept in logs; every other value is redacted.
const LOGGED_PARAMS: &[&str] = &[
    "Purpose",
    "IsEncrypted",
    "Filter",
    "Format",
    "FingerprintAlgorithm",
];

/// A command line for logs: path words and parameter names, values redacted (except a few
/// harmless ones), the body only as its size.
pub fn redacted(req: &Request) -> String {
    let kw = match req.kind {
        Kind::Command => "xCommand",
        Kind::Status => "xStatus",
        Kind::Configuration => "xConfiguration",
    };
    let mut s = kw.to_string();
    for w in &req.path {
        s.push(' ');
        // Path words are identifiers; anything odd is not echoed into logs.
        if w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '[' || c == ']')
        {
            s.push_str(w);
        } else {
            s.push('?');
        }
    }
    for (k, v) in &req.params {
        let safe_name = k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '[' || c == ']');
        let name = if safe_name { k.as_str() } else { "?" };
        if LOGGED_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(k))
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
            && !model::looks_like_jwe(v)
        {
            s.push_str(&format!(" {name}: {v}"));
        } else {
            s.push_str(&format!(" {name}: [redacted]"));
        }
    }
    if let Some(b) = &req.body {
        s.push_str(&format!(" <body {} bytes>", b.len()));
    }
    s
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Literal(s) => s.clone(),
    }
}

fn result_id_line(result_id: Option<&str>) -> String {
    result_id
        .map(|id| format!("** resultId: {}{EOL}", quote(id)))
        .unwrap_or_default()
}

fn node_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Command => "Command",
        Kind::Status => "Status",
        Kind::Configuration => "Configuration",
    }
}

/// Renders a reply in terminal mode. `v` picks the alternatives the catalogue leaves open
/// (a failing xCommand starting `ERROR`, a configuration set answered by a bare `OK`).
pub fn render_terminal(resp: &Response, result_id: Option<&str>, v: &Variants) -> String {
    let rid = result_id_line(result_id);
    match resp {
        // catalogue reply.command, reply.command-error
        Response::Result {
            name,
            status,
            fields,
        } => {
            let first = if *status != model::ResultStatus::Ok
                && v.command_error == CommandErrorStart::Error
            {
                "ERROR"
            } else {
                "OK"
            };
            let mut s = format!("{first}{EOL}*r {name} (status={}): {EOL}", status.as_str());
            for f in fields {
                s.push_str(&format!(
                    "*r {name} {}: {}{EOL}",
                    f.path.join(" "),
                    value_text(&f.value)
                ));
            }
            s.push_str(&rid);
            s.push_str(&format!("** end{EOL}"));
            s
        }
        // catalogue reply.status
        Response::Status(leaves) => {
            let mut s = String::new();
            for l in leaves {
                s.push_str(&format!(
                    "*s {}: {}{EOL}",
                    l.path.join(" "),
                    value_text(&l.value)
                ));
            }
            s.push_str(&rid);
            s.push_str(&format!("** end{EOL}{EOL}OK{EOL}"));
            s
        }
        Response::Configuration(leaves) => {
            let mut s = String::new();
            for l in leaves {
                s.push_str(&format!(
                    "*c xConfiguration {}: {}{EOL}",
                    l.path.join(" "),
                    value_text(&l.value)
                ));
            }
            s.push_str(&rid);
            s.push_str(&format!("** end{EOL}{EOL}OK{EOL}"));
            s
        }
        // catalogue reply.config-set
        Response::ConfigurationSet => match v.config_set {
            ConfigSetReply::Block => format!("{rid}** end{EOL}{EOL}OK{EOL}"),
            ConfigSetReply::BareOk => format!("OK{EOL}"),
        },
        // catalogue reply.node-error
        Response::NodeError {
            kind,
            reason,
            xpath,
        } => {
            let n = node_name(*kind);
            format!(
                "*r {n} (status=Error): {EOL}*r {n} Reason: {}{EOL}*r {n} XPath: {}{EOL}\
                 {rid}** end{EOL}{EOL}ERROR{EOL}",
                quote(reason),
                quote(xpath)
            )
        }
    }
}

/// A JSON reply as a device prints it (catalogue `reply.json`): pretty-printed over several
/// lines, a line exactly `{` first and `}` last, the result id appended to the top-level
/// object on its own line as `,"ResultId": "…"` before the closing brace.
pub fn json_text(doc: &serde_json::Value, result_id: Option<&str>) -> String {
    let empty = doc.as_object().is_some_and(|m| m.is_empty());
    let id = result_id.map(|id| serde_json::Value::String(id.to_string()).to_string());
    let mut s = match (empty, id) {
        (true, Some(id)) => format!("{{{EOL}\"ResultId\": {id}{EOL}}}"),
        (true, None) => format!("{{{EOL}}}"),
        (false, id) => {
            let pretty = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".into());
            match (id, pretty.strip_suffix("\n}")) {
                (Some(id), Some(head)) => format!("{head}{EOL},\"ResultId\": {id}{EOL}}}"),
                _ => pretty,
            }
        }
    };
    s.push_str(EOL);
    s
}

fn json_insert(obj: &mut serde_json::Map<String, serde_json::Value>, path: &[String], v: &Value) {
    use serde_json::{json, Value as J};
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let text = match v {
        Value::Str(s) | Value::Literal(s) => s.clone(),
    };
    if rest.is_empty() {
        obj.insert(head.clone(), json!({ "Value": text }));
        return;
    }
    if let Some((idx, rest2)) = rest.split_first() {
        if idx.chars().all(|c| c.is_ascii_digit()) && !rest2.is_empty() {
            let arr = obj.entry(head.clone()).or_insert_with(|| J::Array(vec![]));
            if let J::Array(items) = arr {
                let pos = items
                    .iter()
                    .position(|i| i.get("id").and_then(J::as_str) == Some(idx.as_str()));
                let pos = match pos {
                    Some(p) => p,
                    None => {
                        items.push(json!({ "id": idx }));
                        items.len() - 1
                    }
                };
                if let Some(J::Object(m)) = items.get_mut(pos) {
                    json_insert(m, rest2, v);
                }
            }
            return;
        }
    }
    let child = obj
        .entry(head.clone())
        .or_insert_with(|| J::Object(Default::default()));
    if let J::Object(m) = child {
        json_insert(m, rest, v);
    }
}

fn json_tree(leaves: &[Leaf]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for l in leaves {
        json_insert(&mut m, &l.path, &l.value);
    }
    m
}

/// Renders a reply in JSON mode: one pretty-printed document, no trailing `OK`.
pub fn render_json(resp: &Response, result_id: Option<&str>) -> String {
    use serde_json::{json, Value as J};
    let doc = match resp {
        Response::Result {
            name,
            status,
            fields,
        } => {
            let mut inner = json_tree(fields);
            inner.insert("status".into(), J::String(status.as_str().into()));
            json!({ "CommandResponse": { name.clone(): J::Object(inner) } })
        }
        Response::Status(leaves) => json!({ "Status": J::Object(json_tree(leaves)) }),
        Response::Configuration(leaves) => {
            json!({ "Configuration": J::Object(json_tree(leaves)) })
        }
        // catalogue reply.json: a configuration set answers the result id alone.
        Response::ConfigurationSet => json!({}),
        // catalogue reply.json-error: the current form, without a CommandResponse wrapper.
        Response::NodeError {
            kind,
            reason,
            xpath,
        } => json!({ node_name(*kind): {
            "status": "Error",
            "Reason": { "Value": reason },
            "XPath": { "Value": xpath },
        } }),
    };
    json_text(&doc, result_id)
}

/// Renders in the selected mode.
pub fn render(resp: &Response, mode: OutputMode, result_id: Option<&str>, v: &Variants) -> String {
    match mode {
        OutputMode::Terminal => render_terminal(resp, result_id, v),
        OutputMode::Json => render_json(resp, result_id),
    }
}

/// The reply to a line that is not an x-command.
pub fn not_recognized() -> String {
    format!("Command not recognized.{EOL}")
}

/// The reply to `xCommand <path> ?` (catalogue `help.format`): the `*h` line, one line per
/// parameter, then `OK`; a path the device does not know is not recognized.
pub fn help_reply(lines: Option<Vec<String>>) -> String {
    match lines {
        Some(lines) => {
            let mut out = String::new();
            for l in lines {
                out.push_str(&l);
                out.push_str(EOL);
            }
            out.push_str("OK");
            out.push_str(EOL);
            out
        }
        None => not_recognized(),
    }
}

/// `OK` (echo, xpreferences, xFeedback).
pub fn ok_line() -> String {
    format!("OK{EOL}")
}

/// The reply to an x-command whose parameters did not parse.
pub fn syntax_error(kind: Kind, reason: &str) -> Response {
    match kind {
        Kind::Command => Response::Result {
            name: "Result".into(),
            status: model::ResultStatus::ParameterError,
            fields: vec![Leaf {
                path: vec!["Reason".into()],
                value: Value::Str(reason.into()),
            }],
        },
        k => Response::NodeError {
            kind: k,
            reason: reason.into(),
            xpath: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// catalogue help.format: `<path> ?` is help (no body awaited, nothing run); a `?`
    /// inside a quoted value is not.
    #[test]
    fn a_trailing_question_mark_is_help() {
        match parse_line("xCommand Security Certificates Services Add ?") {
            Parsed::Help { kind, path } => {
                assert_eq!(kind, Kind::Command);
                assert_eq!(path.join(" "), "Security Certificates Services Add");
            }
            _ => panic!("not help"),
        }
        assert!(!needs_body(
            "xCommand Security Certificates Services Add ?",
            &Variants::default()
        ));
        assert!(matches!(
            parse_line("xCommand Dial Number: \"?\""),
            Parsed::X { .. }
        ));
        let device = model::Device::new("room");
        let text = help_reply(device.help(
            Kind::Command,
            &["security".into(), "clientsecret".into(), "populate".into()],
        ));
        assert_eq!(
            text,
            "*h xCommand Security ClientSecret Populate\n    Secret(r): <S: 0, 1024>\nOK\n"
        );
        assert_eq!(
            help_reply(device.help(Kind::Command, &["Roomkey".into(), "Probe".into()])),
            not_recognized()
        );
    }

    fn frames(inputs: Vec<Input>) -> Vec<(String, Option<String>)> {
        inputs
            .into_iter()
            .filter_map(|i| match i {
                Input::Frame { line, body } => Some((line, body.map(|b| b.0.to_string()))),
                Input::Echo(_) => None,
            })
            .collect()
    }

    #[test]
    fn splits_lines_and_dot_bodies() {
        let mut s = Splitter::default();
        let out = s
            .push(b"echo off\r\nxCommand Security Certificates Services Add IsEncrypted: True\r\nabc\r\n")
            .unwrap();
        assert_eq!(frames(out), vec![("echo off".to_string(), None)]);
        let out = s.push(b"def\n.\nxStatus A\n").unwrap();
        assert_eq!(
            frames(out),
            vec![
                (
                    "xCommand Security Certificates Services Add IsEncrypted: True".to_string(),
                    Some("abc\ndef".to_string())
                ),
                ("xStatus A".to_string(), None)
            ]
        );
    }

    #[test]
    fn splits_length_prefixed_frames() {
        let content = "xCommand Security Certificates CA Add\nLINE1\nLINE2\n";
        let msg = format!("{{{}}} \n{}", content.len(), content);
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for b in msg.as_bytes().chunks(7) {
            out.extend(s.push(b).unwrap());
        }
        out.extend(s.push(b"xStatus B\n").unwrap());
        assert_eq!(
            frames(out),
            vec![
                (
                    "xCommand Security Certificates CA Add".to_string(),
                    Some("LINE1\nLINE2".to_string())
                ),
                ("xStatus B".to_string(), None)
            ]
        );
    }

    #[test]
    fn parses_params_quotes_and_result_id() {
        let Parsed::X { req, result_id } = parse_line(
            r#"xcommand Security Certificates Services Activate Purpose: WebexIdentity Fingerprint: "a|b\"c" | resultId="r42""#,
        ) else {
            panic!()
        };
        assert_eq!(result_id.as_deref(), Some("r42"));
        assert_eq!(req.path.len(), 4);
        assert_eq!(req.param("purpose"), Some("WebexIdentity"));
        assert_eq!(req.param("Fingerprint"), Some("a|b\"c"));
        assert!(matches!(parse_line("foo"), Parsed::NotRecognized));
        assert!(matches!(parse_line("ECHO OFF"), Parsed::Echo(false)));
        assert!(matches!(
            parse_line(r#"xCommand A B: "open"#),
            Parsed::Syntax { .. }
        ));
    }

    #[test]
    fn renders_terminal_shapes() {
        let r = Response::Result {
            name: "ServicesAddResult".into(),
            status: model::ResultStatus::Ok,
            fields: vec![],
        };
        assert_eq!(
            render_terminal(&r, Some("r1"), &Variants::default()),
            "OK\n*r ServicesAddResult (status=OK): \n** resultId: \"r1\"\n** end\n"
        );
        // With a pty, the line discipline makes every line end `\r\n` (framing.line-ends).
        assert_eq!(
            onlcr(&render_terminal(&r, None, &Variants::default()), true),
            "OK\r\n*r ServicesAddResult (status=OK): \r\n** end\r\n"
        );
        let s = Response::Status(vec![Leaf {
            path: vec!["Audio".into(), "Volume".into()],
            value: Value::Literal("50".into()),
        }]);
        assert_eq!(
            render_terminal(&s, None, &Variants::default()),
            "*s Audio Volume: 50\n** end\n\nOK\n"
        );
        // catalogue reply.json: pretty, the result id appended before the closing brace.
        assert_eq!(
            render_json(&s, Some("request-1")),
            "{\n  \"Status\": {\n    \"Audio\": {\n      \"Volume\": {\n        \"Value\": \"50\"\n      }\n    }\n  }\n,\"ResultId\": \"request-1\"\n}\n"
        );
        assert_eq!(
            render_json(&Response::ConfigurationSet, Some("request-2")),
            "{\n\"ResultId\": \"request-2\"\n}\n"
        );
        let e = Response::NodeError {
            kind: Kind::Status,
            reason: "No match on address expression.".into(),
            xpath: "Status/Foo".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&e, None)).unwrap();
        assert_eq!(v["Status"]["status"], "Error");
        assert_eq!(v["Status"]["XPath"]["Value"], "Status/Foo");
        // Variants: a failing command starting ERROR, a configuration set as a bare OK.
        let fail = Response::Result {
            name: "Result".into(),
            status: model::ResultStatus::Error,
            fields: vec![],
        };
        let alt = Variants {
            command_error: crate::sim::variants::CommandErrorStart::Error,
            config_set: crate::sim::variants::ConfigSetReply::BareOk,
            ..Variants::default()
        };
        assert!(render_terminal(&fail, None, &alt).starts_with("ERROR\n*r Result (status=Error)"));
        assert!(render_terminal(&fail, None, &Variants::default()).starts_with("OK\n"));
        assert_eq!(
            render_terminal(&Response::ConfigurationSet, Some("x"), &alt),
            "OK\n"
        );
    }

    #[test]
    fn json_indexes_become_arrays_with_ids() {
        let leaf = |p: &str, v: &str| Leaf {
            path: p.split(' ').map(String::from).collect(),
            value: Value::Str(v.into()),
        };
        let r = Response::Result {
            name: "ServicesShowResult".into(),
            status: model::ResultStatus::Ok,
            fields: vec![
                leaf("Details 1 Fingerprint", "aa"),
                leaf("Details 1 UsedFor", "HTTPS"),
                leaf("Details 2 Fingerprint", "bb"),
            ],
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&r, Some("x"))).unwrap();
        assert_eq!(v["ResultId"], "x");
        let details = &v["CommandResponse"]["ServicesShowResult"]["Details"];
        assert_eq!(details[0]["id"], "1");
        assert_eq!(details[0]["UsedFor"]["Value"], "HTTPS");
        assert_eq!(details[1]["Fingerprint"]["Value"], "bb");
        assert_eq!(v["CommandResponse"]["ServicesShowResult"]["status"], "OK");
    }

    #[test]
    fn quotes_are_escaped_in_terminal_values() {
        let s = Response::Status(vec![Leaf {
            path: vec!["A".into()],
            value: Value::Str("say \"hi\" \\ bye".into()),
        }]);
        assert_eq!(
            render_terminal(&s, None, &Variants::default()),
            "*s A: \"say \\\"hi\\\" \\\\ bye\"\n** end\n\nOK\n"
        );
    }

    #[test]
    fn feedback_commands_and_paths() {
        let Parsed::Feedback {
            cmd: Ok(FeedbackCmd::Register(p)),
            result_id,
        } = parse_line(
            "xFeedback register /Status/Conference/EndToEndEncryption | resultId=\"f1\"",
        )
        else {
            panic!("register not parsed");
        };
        assert_eq!(p.text(), "/Status/Conference/EndToEndEncryption");
        assert_eq!(result_id.as_deref(), Some("f1"));
        let leaf_path: Vec<String> = [
            "conference",
            "EndToEndEncryption",
            "ExternalIdentity",
            "Valid",
        ]
        .map(String::from)
        .to_vec();
        assert!(p.covers(Kind::Status, &leaf_path));
        assert!(!p.covers(Kind::Configuration, &leaf_path));
        assert!(!p.covers(Kind::Status, &leaf_path[..1]));
        assert!(matches!(
            parse_line("xfeedback deregisterall"),
            Parsed::Feedback {
                cmd: Ok(FeedbackCmd::DeregisterAll),
                ..
            }
        ));
        assert!(matches!(
            parse_line("xFeedback list"),
            Parsed::Feedback {
                cmd: Ok(FeedbackCmd::List),
                ..
            }
        ));
        assert!(matches!(
            parse_line("xFeedback register /Nowhere/X"),
            Parsed::Feedback { cmd: Err(_), .. }
        ));
        assert!(matches!(
            parse_line("xFeedback register /Status/A\"B"),
            Parsed::Feedback { cmd: Err(_), .. }
        ));
        let leaves = vec![Leaf {
            path: vec!["Audio".into(), "Volume".into()],
            value: Value::Literal("60".into()),
        }];
        assert_eq!(
            render_feedback(Kind::Status, &leaves, OutputMode::Terminal),
            "*s Audio Volume: 60\n** end\n"
        );
        assert_eq!(
            render_feedback(Kind::Status, &leaves, OutputMode::Json),
            "{\n  \"Status\": {\n    \"Audio\": {\n      \"Volume\": {\n        \"Value\": \"60\"\n      }\n    }\n  }\n}\n"
        );
        // catalogue feedback.commands
        assert_eq!(
            feedback_reply(Ok(None), OutputMode::Terminal, Some("f1")),
            "** resultId: \"f1\"\n** end\n\nOK\n"
        );
        assert_eq!(
            feedback_reply(Ok(None), OutputMode::Json, Some("f1")),
            "{\n\"ResultId\": \"f1\"\n}\n"
        );
    }

    #[test]
    fn redaction_hides_values() {
        let Parsed::X { req, .. } =
            parse_line(r#"xCommand Security ClientSecret Populate Secret: "b3NzaWZyYWdl""#)
        else {
            panic!()
        };
        let r = redacted(&req);
        assert!(!r.contains("b3NzaWZyYWdl"), "{r}");
        assert!(r.contains("Secret: [redacted]"));
        // The key password of `Services Add` is a value like any other: redacted.
        let Parsed::X { req, .. } = parse_line(
            r#"xCommand Security Certificates Services Add PrivateKeyPassword: "hunter2-key""#,
        ) else {
            panic!()
        };
        let r = redacted(&req);
        assert!(!r.contains("hunter2-key"), "{r}");
        assert!(r.contains("PrivateKeyPassword: [redacted]"), "{r}");
    }
}
