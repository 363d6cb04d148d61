//! The TSH command encoder: a typed builder that turns a verb, a path, parameters and an
//! optional multi-line body into the exact bytes sent to a device.
//!
//! Why a builder and not `format!`: every value that reaches a device comes from an
//! inventory, a playbook or a certificate file, and TSH has no escape mechanism we can rely
//! on. A value holding a quote, a newline, a `|` or a body line consisting of `.` would end the
//! current command and start another one. Every piece is therefore validated when it is
//! added, so a built [`TshCommand`] is injection-free by construction and `encode` cannot
//! fail. Errors name the parameter but never carry its value (it may be a secret).

use std::fmt;

use zeroize::Zeroizing;

use crate::secret::{Secret, REDACTED};

/// `xStatus SystemUnit Uptime` (catalogue `status.uptime`): the `restart` step judges a
/// boot by it, and the session reads it as a harmless marker to get back in step.
pub const UPTIME: &str = "SystemUnit Uptime";

/// The three TSH verbs roomkey speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    XCommand,
    XStatus,
    XConfiguration,
}

impl Verb {
    /// The word as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::XCommand => "xCommand",
            Verb::XStatus => "xStatus",
            Verb::XConfiguration => "xConfiguration",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a device delimits the reply to a command (see `reply.rs` for the grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyShape {
    /// `xCommand`: an optional `OK` first, then a `*r` block ending in `** end`.
    Command,
    /// `xStatus` / `xConfiguration` read: a block, `** end`, a blank line, `OK`/`ERROR`.
    Status,
    /// `xConfiguration <path>: <value>`: as [`ReplyShape::Status`], or a bare `OK`
    /// (catalogue `reply.config-set`: which one a device prints is unknown).
    ConfigSet,
    /// Session commands such as `echo off`: a single `OK` (or `ERROR`).
    Plain,
}

/// Why a command could not be built. Never contains a parameter value or body text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("empty command path")]
    EmptyPath,
    #[error(
        "invalid word {word:?} in command path (allowed: letters, digits, '.', optional [n] index)"
    )]
    InvalidPathWord { word: String },
    #[error("invalid parameter name {name:?} (allowed: letters, digits, '.', optional [n] index)")]
    InvalidParamName { name: String },
    #[error(
        "value of parameter {param:?} contains {what}, which cannot be sent safely to a device"
    )]
    ForbiddenCharInValue { param: String, what: &'static str },
    #[error("value of parameter {param:?} must be a bare word (letters, digits, '.', '_', '-')")]
    InvalidLiteral { param: String },
    #[error("value of parameter {param:?} is empty")]
    EmptyLiteral { param: String },
    #[error("command body is empty")]
    EmptyBody,
    #[error("command body line {line} consists of '.', which would end the body early")]
    BodyLineIsDot { line: usize },
    #[error("command body line {line} contains {what}")]
    ForbiddenCharInBody { line: usize, what: &'static str },
    #[error("a command body is only allowed on xCommand")]
    BodyNotAllowed,
    #[error("parameters are only allowed on xCommand")]
    ParamsNotAllowed,
    #[error("`?` help is only asked of an xCommand")]
    HelpNotAllowed,
    #[error("invalid resultId {id:?} (allowed: letters, digits, '_', '-')")]
    InvalidResultId { id: String },
}

/// A validated resultId tag (`[A-Za-z0-9_-]+`, at most 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultId(String);

impl ResultId {
    pub fn new(id: &str) -> Result<Self, EncodeError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(ResultId(id.to_string()))
        } else {
            Err(EncodeError::InvalidResultId { id: id.to_string() })
        }
    }

    /// The `n`th id of a session: `r1`, `r2`, ...
    pub fn sequence(n: u64) -> Self {
        ResultId(format!("r{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone)]
enum Value {
    /// Sent as `"..."`.
    Quoted(String),
    /// Sent as `"..."`, shown as `"[redacted]"`.
    Secret(Secret),
    /// Sent bare (`True`, `WebexIdentity`, `802.1X`).
    Literal(String),
}

impl Value {
    fn write_to(&self, out: &mut String, redact: bool) {
        match self {
            Value::Quoted(v) => {
                out.push('"');
                out.push_str(v);
                out.push('"');
            }
            Value::Secret(s) => {
                out.push('"');
                out.push_str(if redact { REDACTED } else { s.expose() });
                out.push('"');
            }
            Value::Literal(v) => out.push_str(v),
        }
    }
}

#[derive(Clone)]
struct Body {
    /// Validated lines, without line terminators.
    text: Secret,
    lines: usize,
    secret: bool,
}

/// One TSH command, valid by construction. `Debug` shows the redacted form.
#[derive(Clone)]
pub struct TshCommand {
    verb: Verb,
    path: Vec<String>,
    params: Vec<(String, Value)>,
    /// `xConfiguration <path>: <value>`.
    set_value: Option<Value>,
    body: Option<Body>,
    /// Marked by `into_secret_proof`: sent only to learn whether the device can decrypt it.
    proof: bool,
    /// `xCommand <path> ?`: the command's help, not the command (see `xcommand_help`).
    help: bool,
}

impl fmt::Debug for TshCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TshCommand")
            .field("line", &self.redacted_line())
            .field("body_lines", &self.body.as_ref().map(|b| b.lines))
            .finish()
    }
}

/// `[A-Za-z0-9.]+` optionally followed by one `[digits]` index.
fn is_word(w: &str) -> bool {
    let (stem, index) = match w.find('[') {
        Some(i) => (&w[..i], Some(&w[i..])),
        None => (w, None),
    };
    let stem_ok = !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    let index_ok = match index {
        None => true,
        Some(ix) => {
            ix.len() > 2
                && ix.ends_with(']')
                && ix[1..ix.len() - 1].bytes().all(|b| b.is_ascii_digit())
        }
    };
    stem_ok && index_ok
}

fn parse_path(path: &str) -> Result<Vec<String>, EncodeError> {
    let words: Vec<String> = path
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    if words.is_empty() {
        return Err(EncodeError::EmptyPath);
    }
    for w in &words {
        if !is_word(w) {
            return Err(EncodeError::InvalidPathWord { word: w.clone() });
        }
    }
    Ok(words)
}

/// Why a character may not appear inside a quoted value, if it may not.
fn forbidden_in_quoted(c: char) -> Option<&'static str> {
    match c {
        '\r' => Some("a carriage return"),
        '\n' => Some("a line feed"),
        '\0' => Some("a NUL byte"),
        '"' => Some("a double quote"),
        // Devices may treat a backslash as an escape (jsxapi JSON-escapes values), so a
        // trailing backslash could swallow the closing quote.
        '\\' => Some("a backslash"),
        // `|` introduces a pipe modifier (`| resultId=...`) on the command line.
        '|' => Some("a '|'"),
        c if c.is_control() => Some("a control character"),
        _ => None,
    }
}

fn check_quoted(param: &str, value: &str) -> Result<(), EncodeError> {
    match value.chars().find_map(forbidden_in_quoted) {
        Some(what) => Err(EncodeError::ForbiddenCharInValue {
            param: param.to_string(),
            what,
        }),
        None => Ok(()),
    }
}

fn is_literal(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl TshCommand {
    fn new(verb: Verb, path: &str) -> Result<Self, EncodeError> {
        Ok(TshCommand {
            verb,
            path: parse_path(path)?,
            params: Vec::new(),
            set_value: None,
            body: None,
            proof: false,
            help: false,
        })
    }

    /// `xCommand <path>`, e.g. `"Security Certificates Services Add"`.
    pub fn xcommand(path: &str) -> Result<Self, EncodeError> {
        Self::new(Verb::XCommand, path)
    }

    /// `xCommand <path> ?`: asks the device for the command's help (its parameters and
    /// value spaces, catalogue `help.format`) instead of running it. Read-only whatever the
    /// path; it takes no parameters and no body, and is sent without a resultId (the `?`
    /// must end the line). Only `roomkey probe` sends it, never a playbook step.
    pub fn xcommand_help(path: &str) -> Result<Self, EncodeError> {
        let mut cmd = Self::new(Verb::XCommand, path)?;
        cmd.help = true;
        Ok(cmd)
    }

    /// The `?` help of this xCommand: its verb and path only — parameters and body (and any
    /// secret in them) are dropped. So the probe asks for help of exactly the commands the
    /// steps build, without spelling their paths again.
    pub fn into_help(self) -> Result<Self, EncodeError> {
        if self.verb != Verb::XCommand {
            return Err(EncodeError::HelpNotAllowed);
        }
        Ok(TshCommand {
            verb: self.verb,
            path: self.path.clone(),
            params: Vec::new(),
            set_value: None,
            body: None,
            proof: false,
            help: true,
        })
    }

    /// Is this the `?` help of a command ([`xcommand_help`](Self::xcommand_help))?
    pub fn is_help(&self) -> bool {
        self.help
    }

    /// `xStatus <path>`.
    pub fn xstatus(path: &str) -> Result<Self, EncodeError> {
        Self::new(Verb::XStatus, path)
    }

    /// `xConfiguration <path>` (a read).
    pub fn xconfiguration(path: &str) -> Result<Self, EncodeError> {
        Self::new(Verb::XConfiguration, path)
    }

    /// `xConfiguration <path>: <value>` (a write). A bare word (`On`, `True`, `802.1X`) is
    /// sent unquoted; anything else is quoted and validated like a parameter value.
    pub fn xconfiguration_set(path: &str, value: &str) -> Result<Self, EncodeError> {
        let mut cmd = Self::new(Verb::XConfiguration, path)?;
        let v = if is_literal(value) {
            Value::Literal(value.to_string())
        } else {
            check_quoted(&cmd.path.join(" "), value)?;
            Value::Quoted(value.to_string())
        };
        cmd.set_value = Some(v);
        Ok(cmd)
    }

    fn push_param(mut self, name: &str, value: Value) -> Result<Self, EncodeError> {
        if self.verb != Verb::XCommand || self.help {
            return Err(EncodeError::ParamsNotAllowed);
        }
        if !is_word(name) {
            return Err(EncodeError::InvalidParamName {
                name: name.to_string(),
            });
        }
        self.params.push((name.to_string(), value));
        Ok(self)
    }

    fn check_name(name: &str) -> Result<(), EncodeError> {
        if is_word(name) {
            Ok(())
        } else {
            Err(EncodeError::InvalidParamName {
                name: name.to_string(),
            })
        }
    }

    /// `Name: "value"` — refuses control characters, `"`, `\` and `|`.
    pub fn param(self, name: &str, value: &str) -> Result<Self, EncodeError> {
        Self::check_name(name)?;
        check_quoted(name, value)?;
        self.push_param(name, Value::Quoted(value.to_string()))
    }

    /// Like [`param`](Self::param) but shown as `"[redacted]"` by `redacted_line`/`Debug`.
    pub fn param_secret(self, name: &str, value: &Secret) -> Result<Self, EncodeError> {
        Self::check_name(name)?;
        check_quoted(name, value.expose())?;
        self.push_param(name, Value::Secret(value.clone()))
    }

    /// `Name: value` unquoted (`True`, `WebexIdentity`, `802.1X`): `[A-Za-z0-9._-]+` only.
    pub fn param_literal(self, name: &str, value: &str) -> Result<Self, EncodeError> {
        Self::check_name(name)?;
        if value.is_empty() {
            return Err(EncodeError::EmptyLiteral {
                param: name.to_string(),
            });
        }
        if !is_literal(value) {
            return Err(EncodeError::InvalidLiteral {
                param: name.to_string(),
            });
        }
        self.push_param(name, Value::Literal(value.to_string()))
    }

    /// A multi-line body (sent after the command line, terminated by a line holding `.`).
    /// Line ends (`\r\n` or `\n`) are normalised to `\n`; one final line end is dropped.
    /// Refuses a line that is `.` (after trimming whitespace), CR not followed by LF, NUL
    /// and other control characters except TAB. The body is shown in `redacted_text`.
    pub fn body(self, text: &str) -> Result<Self, EncodeError> {
        self.set_body(text, false)
    }

    /// Like [`body`](Self::body) but redacted in every display form (a JWE, a key).
    pub fn body_secret(self, text: &Secret) -> Result<Self, EncodeError> {
        self.set_body(text.expose(), true)
    }

    fn set_body(mut self, text: &str, secret: bool) -> Result<Self, EncodeError> {
        if self.verb != Verb::XCommand || self.help {
            return Err(EncodeError::BodyNotAllowed);
        }
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(EncodeError::EmptyBody);
        }
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut count = 0usize;
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if let Some(what) = line.chars().find_map(|c| match c {
                '\r' => Some("a carriage return"),
                '\0' => Some("a NUL byte"),
                '\t' => None,
                c if c.is_control() => Some("a control character"),
                _ => None,
            }) {
                return Err(EncodeError::ForbiddenCharInBody {
                    line: line_no,
                    what,
                });
            }
            if line.trim() == "." {
                return Err(EncodeError::BodyLineIsDot { line: line_no });
            }
            if i > 0 {
                out.push('\n');
            }
            out.push_str(line);
            count += 1;
        }
        self.body = Some(Body {
            text: Secret::new(out.as_str()),
            lines: count,
            secret,
        });
        Ok(self)
    }

    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The path words, e.g. `["Security", "Certificates", "Services", "Show"]`.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// How the device will delimit the reply to this command.
    pub fn reply_shape(&self) -> ReplyShape {
        if self.help {
            // catalogue help.format: `*h` lines, then `OK`.
            return ReplyShape::Plain;
        }
        match self.verb {
            Verb::XCommand => ReplyShape::Command,
            Verb::XConfiguration if self.set_value.is_some() => ReplyShape::ConfigSet,
            Verb::XStatus | Verb::XConfiguration => ReplyShape::Status,
        }
    }

    /// Marks a `Security Certificates Services Deactivate Purpose: WebexIdentity` command
    /// whose `Fingerprint` JWE names a certificate the device cannot hold as a *proof*: the
    /// device answers "cannot decrypt" or "no such certificate" and changes nothing either
    /// way, so it may be sent where only read-only commands are allowed (`apply --check`).
    /// The mark is honoured only for exactly that shape (see `is_secret_proof`); the caller
    /// is responsible for the fingerprint inside the JWE.
    pub fn into_secret_proof(mut self) -> Self {
        self.proof = true;
        self
    }

    /// A command marked with `into_secret_proof` that has the one shape a proof may have.
    pub fn is_secret_proof(&self) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        self.proof
            && self.verb == Verb::XCommand
            && path == ["Security", "Certificates", "Services", "Deactivate"]
            && self.body.is_none()
            && self.params.iter().all(|(name, value)| match name.as_str() {
                "Purpose" => matches!(value, Value::Literal(v) if v == "WebexIdentity"),
                "Fingerprint" => matches!(value, Value::Secret(_)),
                _ => false,
            })
    }

    /// Whether sending this command leaves the device as it was: a read, or a secret proof.
    pub fn changes_nothing(&self) -> bool {
        self.is_read_only() || self.is_secret_proof()
    }

    /// True for commands that change nothing on the device: `xStatus`, an `xConfiguration`
    /// read, and `xCommand ... Show|List`.
    pub fn is_read_only(&self) -> bool {
        if self.help {
            return true;
        }
        match self.verb {
            Verb::XStatus => true,
            Verb::XConfiguration => self.set_value.is_none(),
            Verb::XCommand => matches!(
                self.path.last().map(String::as_str),
                Some("Show") | Some("List")
            ),
        }
    }

    fn render_line(&self, redact: bool) -> String {
        let mut out = String::from(self.verb.as_str());
        for w in &self.path {
            out.push(' ');
            out.push_str(w);
        }
        if self.help {
            out.push_str(" ?");
        }
        if let Some(v) = &self.set_value {
            out.push_str(": ");
            v.write_to(&mut out, redact);
        }
        for (name, value) in &self.params {
            out.push(' ');
            out.push_str(name);
            out.push_str(": ");
            value.write_to(&mut out, redact);
        }
        out
    }

    /// The command line without resultId or body. Contains secret parameter values: use
    /// [`redacted_line`](Self::redacted_line) for anything shown or logged.
    pub fn line(&self) -> Zeroizing<String> {
        Zeroizing::new(self.render_line(false))
    }

    /// The command line with every secret parameter shown as `"[redacted]"`.
    pub fn redacted_line(&self) -> String {
        self.render_line(true)
    }

    /// The full display form: the redacted line, then the body (or `[redacted]` for a
    /// secret body) and the terminating `.` line.
    pub fn redacted_text(&self) -> String {
        let mut out = self.redacted_line();
        if let Some(body) = &self.body {
            out.push('\n');
            if body.secret {
                out.push_str(REDACTED);
            } else {
                out.push_str(body.text.expose());
            }
            out.push_str("\n.");
        }
        out
    }

    /// The exact bytes to send: `<line> | resultId="<id>"\n`, then for a multi-line command
    /// the body lines and `.\n` (the dot-terminated form).
    pub fn encode(&self, result_id: &ResultId) -> Zeroizing<String> {
        let mut out = Zeroizing::new(self.render_line(false));
        if self.help {
            // Help is not a command: no resultId (whether a device accepts one after `?`
            // is not known), the `?` ends the line.
            out.push('\n');
            return out;
        }
        out.push_str(" | resultId=\"");
        out.push_str(result_id.as_str());
        out.push_str("\"\n");
        if let Some(body) = &self.body {
            out.push_str(body.text.expose());
            out.push_str("\n.\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> ResultId {
        ResultId::new(s).unwrap()
    }

    #[test]
    fn help_is_read_only_and_takes_nothing_but_a_path() {
        let c = TshCommand::xcommand_help("Security ClientSecret Populate").unwrap();
        assert_eq!(
            c.encode(&rid("r1")).as_str(),
            "xCommand Security ClientSecret Populate ?\n"
        );
        assert_eq!(
            c.redacted_line(),
            "xCommand Security ClientSecret Populate ?"
        );
        assert!(c.is_help() && c.is_read_only() && c.changes_nothing());
        assert_eq!(c.reply_shape(), ReplyShape::Plain);
        // Nothing can be smuggled after the `?`: no parameters, no body, path words only.
        let c = TshCommand::xcommand_help("Security ClientSecret Populate").unwrap();
        assert_eq!(
            c.param("Secret", "x").unwrap_err(),
            EncodeError::ParamsNotAllowed
        );
        let c = TshCommand::xcommand_help("Security Certificates Services Add").unwrap();
        assert_eq!(c.body("text").unwrap_err(), EncodeError::BodyNotAllowed);
        assert!(TshCommand::xcommand_help("Security ClientSecret Populate Secret: x").is_err());
        assert!(TshCommand::xcommand_help("Dial ? | resultId=\"x\"").is_err());
        assert!(!TshCommand::xcommand("Security ClientSecret Populate")
            .unwrap()
            .is_help());
        // The help of a built command keeps its path and drops the rest, secrets included.
        let full = TshCommand::xcommand("Security ClientSecret Populate")
            .unwrap()
            .param_secret("Secret", &Secret::new("ossifrage"))
            .unwrap();
        let help = full.into_help().unwrap();
        assert_eq!(
            help.encode(&rid("r1")).as_str(),
            "xCommand Security ClientSecret Populate ?\n"
        );
        assert_eq!(
            TshCommand::xstatus("SystemUnit")
                .unwrap()
                .into_help()
                .unwrap_err(),
            EncodeError::HelpNotAllowed
        );
    }

    #[test]
    fn simple_xcommand_encodes_with_result_id() {
        let c = TshCommand::xcommand("Security Certificates Services Show").unwrap();
        assert_eq!(
            c.encode(&rid("r1")).as_str(),
            "xCommand Security Certificates Services Show | resultId=\"r1\"\n"
        );
        assert!(c.is_read_only());
        assert_eq!(c.reply_shape(), ReplyShape::Command);
    }

    #[test]
    fn params_quoted_and_literal() {
        let c = TshCommand::xcommand("Security Certificates Services Activate")
            .unwrap()
            .param_literal("Purpose", "802.1X")
            .unwrap()
            .param("Fingerprint", "ce4eb947")
            .unwrap();
        assert_eq!(
            c.line().as_str(),
            "xCommand Security Certificates Services Activate Purpose: 802.1X Fingerprint: \"ce4eb947\""
        );
        assert!(!c.is_read_only());
    }

    #[test]
    fn multiline_body_is_dot_terminated_and_normalised() {
        let c = TshCommand::xcommand("Security Certificates Services Add")
            .unwrap()
            .param_literal("IsEncrypted", "True")
            .unwrap()
            .body("line1\r\nline2\n")
            .unwrap();
        assert_eq!(
            c.encode(&rid("r7")).as_str(),
            "xCommand Security Certificates Services Add IsEncrypted: True | resultId=\"r7\"\nline1\nline2\n.\n"
        );
    }

    #[test]
    fn body_refuses_dot_line_cr_nul_and_empty() {
        let base = || TshCommand::xcommand("Security Certificates CA Add").unwrap();
        assert_eq!(
            base().body("a\n.\nb").unwrap_err(),
            EncodeError::BodyLineIsDot { line: 2 }
        );
        assert_eq!(
            base().body("a\n.\r\nb").unwrap_err(),
            EncodeError::BodyLineIsDot { line: 2 }
        );
        assert_eq!(
            base().body(" . ").unwrap_err(),
            EncodeError::BodyLineIsDot { line: 1 }
        );
        assert!(matches!(
            base().body("a\rb").unwrap_err(),
            EncodeError::ForbiddenCharInBody { line: 1, .. }
        ));
        assert!(matches!(
            base().body("a\n\0").unwrap_err(),
            EncodeError::ForbiddenCharInBody { line: 2, .. }
        ));
        assert_eq!(base().body("\n").unwrap_err(), EncodeError::EmptyBody);
        // a dot inside a line is fine
        assert!(base().body("a.b\n..\n").is_ok());
    }

    #[test]
    fn values_cannot_inject() {
        let base = || TshCommand::xcommand("Security ClientSecret Populate").unwrap();
        for bad in [
            "a\"b",
            "a\nxCommand SystemUnit Boot",
            "a\r",
            "a\0",
            "a\\",
            "x | resultId=\"r9\"",
            "\u{1b}[2J",
        ] {
            let err = base().param("Secret", bad).unwrap_err();
            assert!(matches!(err, EncodeError::ForbiddenCharInValue { .. }));
            // the error never shows the value
            let msg = err.to_string();
            assert!(msg.contains("Secret"));
            assert!(!msg.contains(bad), "{msg}");
        }
        assert!(base().param("Secret", "abc-_=+/ ok é").is_ok());
    }

    #[test]
    fn literal_and_names_validated() {
        let base = || TshCommand::xcommand("Security Certificates Services Activate").unwrap();
        assert!(matches!(
            base().param_literal("Purpose", "Web Identity").unwrap_err(),
            EncodeError::InvalidLiteral { .. }
        ));
        assert!(matches!(
            base().param_literal("Purpose", "").unwrap_err(),
            EncodeError::EmptyLiteral { .. }
        ));
        assert!(matches!(
            base().param("Bad:Name", "x").unwrap_err(),
            EncodeError::InvalidParamName { .. }
        ));
        assert!(base().param("SanDns[1]", "a.example.com").is_ok());
        assert!(matches!(
            base().param("SanDns[x]", "a").unwrap_err(),
            EncodeError::InvalidParamName { .. }
        ));
        assert!(matches!(
            TshCommand::xcommand("Security\nBoot").unwrap_err(),
            EncodeError::InvalidPathWord { .. }
        ));
        assert!(matches!(
            TshCommand::xcommand("Security Cert\"ificates").unwrap_err(),
            EncodeError::InvalidPathWord { .. }
        ));
        assert_eq!(
            TshCommand::xstatus("  ").unwrap_err(),
            EncodeError::EmptyPath
        );
        assert!(TshCommand::xstatus("Video Input Connector[1]").is_ok());
    }

    #[test]
    fn params_and_body_only_on_xcommand() {
        assert_eq!(
            TshCommand::xstatus("Audio")
                .unwrap()
                .param("A", "b")
                .unwrap_err(),
            EncodeError::ParamsNotAllowed
        );
        assert_eq!(
            TshCommand::xconfiguration("Audio")
                .unwrap()
                .body("x")
                .unwrap_err(),
            EncodeError::BodyNotAllowed
        );
    }

    #[test]
    fn secrets_are_redacted_in_display_forms() {
        let jwe = Secret::new("eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..iv.ct.tag");
        let c = TshCommand::xcommand("Security Certificates Services Activate")
            .unwrap()
            .param_literal("Purpose", "WebexIdentity")
            .unwrap()
            .param_secret("Fingerprint", &jwe)
            .unwrap();
        assert_eq!(
            c.redacted_line(),
            "xCommand Security Certificates Services Activate Purpose: WebexIdentity Fingerprint: \"[redacted]\""
        );
        assert!(!format!("{c:?}").contains("eyJ"));
        assert!(c.encode(&rid("r2")).contains(jwe.expose()));

        let add = TshCommand::xcommand("Security Certificates Services Add")
            .unwrap()
            .param_literal("IsEncrypted", "True")
            .unwrap()
            .body_secret(&jwe)
            .unwrap();
        let text = add.redacted_text();
        assert!(!text.contains("eyJ"));
        assert!(text.ends_with("\n[redacted]\n."));
        assert!(!format!("{add:?}").contains("eyJ"));
    }

    #[test]
    fn configuration_set_and_read() {
        let c = TshCommand::xconfiguration_set("Conference EndToEndEncryption Mode", "On").unwrap();
        assert_eq!(
            c.line().as_str(),
            "xConfiguration Conference EndToEndEncryption Mode: On"
        );
        assert!(!c.is_read_only());
        assert_eq!(c.reply_shape(), ReplyShape::ConfigSet);
        let c = TshCommand::xconfiguration_set("SystemUnit Name", "Room 301").unwrap();
        assert_eq!(
            c.line().as_str(),
            "xConfiguration SystemUnit Name: \"Room 301\""
        );
        assert!(matches!(
            TshCommand::xconfiguration_set("SystemUnit Name", "a\"b").unwrap_err(),
            EncodeError::ForbiddenCharInValue { .. }
        ));
        let r = TshCommand::xconfiguration("Conference EndToEndEncryption").unwrap();
        assert!(r.is_read_only());
        assert_eq!(
            r.encode(&ResultId::sequence(3)).as_str(),
            "xConfiguration Conference EndToEndEncryption | resultId=\"r3\"\n"
        );
    }

    #[test]
    fn result_id_validated() {
        assert!(ResultId::new("r42").is_ok());
        assert!(ResultId::new("a_b-C9").is_ok());
        for bad in ["", "r\"1", "r 1", "r\n", "ü"] {
            assert!(ResultId::new(bad).is_err(), "{bad:?}");
        }
    }
}
