//! The SSH side of the simulator: one russh server listener per simulated device, all in one
//! process, each connection running a TSH session against the device's shared model.
//!
//! Per device: a [`DeviceRuntime`] owns the model (behind an async mutex so commands apply
//! in order), the fault counters, the redacted command log and the optional [`Store`].
//! JWEs are opened on the bounded [`KdfPool`] (scrypt never runs on the executor) without
//! holding the model lock; the model re-checks the secret generation when it applies the
//! plaintext. `xCommand SystemUnit Boot` bumps a watch channel that disconnects every
//! session of the device, and the listener refuses logins until the boot delay has passed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, Disconnect, MethodKind, MethodSet};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::faults::{self, FaultState};
use super::model::{self, Decrypted, Device, JweAction, Kind, Request, Response};
use super::store::{self, Store};
use super::tsh_server::{
    self as tsh, FeedbackCmd, FeedbackPath, Input, OutputMode, Parsed, Splitter,
};
use super::{SimDeviceSpec, SimError};
use crate::kdf::KdfPool;
use crate::secret::Secret;

/// Concurrent sessions a simulated device serves unless its plan says otherwise
/// (catalogue session.limits: the real default is not public).
pub const DEFAULT_MAX_SESSIONS: usize = 8;
/// Failed logins before the account locks (catalogue auth.lockout; inferred).
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 5;
/// How long a locked account stays locked (catalogue auth.lockout; inferred).
pub const DEFAULT_LOCKOUT_SECS: u64 = 60;

/// Options shared by every device of a fleet.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Where device state and host keys persist; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// Bounds the simulator's scrypt work.
    pub kdf: KdfPool,
    /// How long a device refuses logins after `xCommand SystemUnit Boot`.
    pub boot_delay: Duration,
    /// russh's constant-time rejection delay for failed logins.
    pub auth_rejection_time: Duration,
    /// The SCEP servers every device can reach (by URL).
    pub scep_servers: Vec<super::scep::ScepServer>,
    /// What opening a JWE costs a device (bench settings; default: no delay, no cache).
    pub device_cpu: super::device_cpu::DeviceCpu,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            state_dir: None,
            kdf: KdfPool::per_core(),
            boot_delay: Duration::from_secs(5),
            auth_rejection_time: Duration::from_millis(200),
            scep_servers: Vec::new(),
            device_cpu: super::device_cpu::DeviceCpu::default(),
        }
    }
}

/// Where a device listens and which host key it has.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub addr: SocketAddr,
    /// The device's own (persistent) host key.
    pub host_key: PublicKey,
    /// `SHA256:…` fingerprint of `host_key`.
    pub host_key_fingerprint: String,
    /// Every host key the device has, one per type, in the order it offers them.
    pub host_keys: Vec<PublicKey>,
    /// The key actually presented (differs under the `wrong_host_key` fault).
    pub presented_host_key: PublicKey,
}

/// One received command, as logged (values redacted, bodies only as a size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedCommand {
    /// 1-based number over all the device's commands.
    pub seq: u64,
    pub line: String,
    /// `ok`, `error`, `dropped-before`, `dropped-after`, `hang`, `injected-error`,
    /// `not-recognized`.
    pub outcome: String,
}

/// A certificate as seen in a snapshot.
#[derive(Clone, Debug)]
pub struct CertSnapshot {
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub common_name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub used_for: Vec<String>,
}

/// A device's state for tests.
#[derive(Clone, Debug)]
pub struct DeviceSnapshot {
    /// The device's ClientSecret (exposed for tests; redacted in `Debug`).
    pub secret: Option<Secret>,
    pub certificates: Vec<CertSnapshot>,
    pub cas: Vec<CertSnapshot>,
    pub e2ee_mode_on: bool,
    pub preferred_domain: String,
    pub boot_count: u64,
    /// SCEP auto-renewal profiles as (CA fingerprint, URL).
    pub renewal_profiles: Vec<(String, String)>,
    pub commands: Vec<LoggedCommand>,
    pub logins: u64,
}

impl DeviceSnapshot {
    /// How many received commands contain `pattern` (case-insensitive).
    pub fn count(&self, pattern: &str) -> usize {
        let p = pattern.to_ascii_lowercase();
        self.commands
            .iter()
            .filter(|c| c.line.to_ascii_lowercase().contains(&p))
            .count()
    }

    /// The purposes the certificate with this fingerprint is active for.
    pub fn activations(&self, fingerprint: &str) -> Vec<String> {
        self.certificates
            .iter()
            .find(|c| c.fingerprint.eq_ignore_ascii_case(fingerprint))
            .map(|c| c.used_for.clone())
            .unwrap_or_default()
    }
}

fn cert_snapshot(m: &model::CertMeta, used_for: Vec<String>) -> CertSnapshot {
    CertSnapshot {
        fingerprint: m.fingerprint.clone(),
        subject: m.subject.clone(),
        issuer: m.issuer.clone(),
        common_name: m.common_name.clone(),
        not_before: m.not_before,
        not_after: m.not_after,
        used_for,
    }
}

struct DeviceRuntime {
    name: String,
    username: String,
    password: Secret,
    model: tokio::sync::Mutex<Device>,
    faults: StdMutex<FaultState>,
    log: StdMutex<Vec<LoggedCommand>>,
    /// A command held back by the `land_late` fault, and the (lowercase) text of the later
    /// command after whose answer it lands.
    landing: StdMutex<Option<(Request, String)>>,
    store: Option<Store>,
    kdf: KdfPool,
    /// JWE opening cost settings, and this device's derived keys (used only if cached).
    cpu: super::device_cpu::DeviceCpu,
    keys: super::device_cpu::KeyCache,
    boot: watch::Sender<u64>,
    down_until: StdMutex<Option<tokio::time::Instant>>,
    boot_delay: Duration,
    logins: AtomicU64,
    latency: Duration,
    refuse_auth: bool,
    /// Fixed at start (also held by the model, which plays the command-level ones).
    variants: super::variants::Variants,
    /// The device's clock offset (fault `clock_offset_secs`).
    clock_offset: time::Duration,
    /// Failed logins counted and, once locked, until when.
    failed_logins: StdMutex<(u32, Option<tokio::time::Instant>)>,
    max_failed_logins: u32,
    lockout: Duration,
    /// Open TSH sessions, and how many the device serves at once.
    sessions: std::sync::atomic::AtomicUsize,
    max_sessions: usize,
    login_notice: Vec<String>,
    /// Status and configuration leaves changed by a command, for sessions that registered
    /// `xFeedback` (any session's change reaches every registered session, as on a device).
    feedback: broadcast::Sender<Arc<Changes>>,
}

/// What one changing command changed.
#[derive(Debug, Default)]
struct Changes {
    status: Vec<model::Leaf>,
    config: Vec<model::Leaf>,
}

/// Leaves of `after` that are new or hold another value than in `before`.
fn changed_leaves(before: &[model::Leaf], after: Vec<model::Leaf>) -> Vec<model::Leaf> {
    let old: std::collections::HashMap<&[String], &model::Value> = before
        .iter()
        .map(|l| (l.path.as_slice(), &l.value))
        .collect();
    after
        .into_iter()
        .filter(|l| old.get(l.path.as_slice()) != Some(&&l.value))
        .collect()
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks cannot leave torn data worth refusing.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Length-independent comparison (the simulator should not leak timing either).
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(*x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl DeviceRuntime {
    /// Checks a login, counting failures towards the lockout: once `max_failed_logins`
    /// failures are counted, every login (a correct one too) is refused until the lockout
    /// time has passed (catalogue auth.lockout).
    fn credentials_ok(&self, user: &str, password: &[u8]) -> bool {
        let mut lock_state = lock(&self.failed_logins);
        let now = tokio::time::Instant::now();
        if let Some(until) = lock_state.1 {
            if now < until {
                tracing::info!(device = %self.name, "login refused: account locked");
                return false;
            }
            *lock_state = (0, None);
        }
        let ok =
            !self.refuse_auth && user == self.username && same(password, self.password.as_bytes());
        if ok {
            lock_state.0 = 0;
        } else {
            lock_state.0 = lock_state.0.saturating_add(1);
            if self.max_failed_logins > 0 && lock_state.0 >= self.max_failed_logins {
                tracing::info!(device = %self.name, "too many failed logins: account locked");
                lock_state.1 = Some(now + self.lockout);
            }
        }
        ok
    }

    fn is_down(&self) -> bool {
        let mut d = lock(&self.down_until);
        match *d {
            Some(t) if tokio::time::Instant::now() < t => true,
            Some(_) => {
                *d = None;
                false
            }
            None => false,
        }
    }

    fn reboot(&self) {
        *lock(&self.down_until) = Some(tokio::time::Instant::now() + self.boot_delay);
        self.boot.send_modify(|g| *g += 1);
        tracing::info!(device = %self.name, "device rebooting");
    }

    fn log_command(&self, seq: u64, line: String, outcome: &str) {
        tracing::debug!(device = %self.name, seq, command = %line, outcome, "command");
        lock(&self.log).push(LoggedCommand {
            seq,
            line,
            outcome: outcome.to_string(),
        });
    }

    /// Opens a JWE off the executor; a repeated salt is refused here when the fault plan
    /// asks for that firmware variant (`refuse_repeated_salt`).
    async fn open_jwe(
        &self,
        job: &model::JweJob,
    ) -> Result<(crate::jwe::Header, Zeroizing<Vec<u8>>), crate::jwe::JweError> {
        if let Ok(parsed) = crate::jwe::parse(&job.compact) {
            if lock(&self.faults).on_jwe_salt(&parsed.header.salt) {
                tracing::debug!(device = %self.name, "JWE refused: repeated salt");
                return Err(crate::jwe::JweError::Authentication);
            }
        }
        super::device_cpu::open(&self.cpu, &self.keys, &self.kdf, &job.compact, &job.secret).await
    }

    /// Opens the request's JWE (if any) off the executor, then applies it to the model and
    /// persists a changed state.
    async fn apply(&self, req: &Request) -> model::Outcome {
        let job = self.model.lock().await.jwe_to_open(req);
        let decrypted = match job {
            None => None,
            Some(job) => Some(match self.open_jwe(&job).await {
                Ok((header, plaintext)) => Ok(Decrypted {
                    action: match header.action {
                        crate::jwe::Action::Populate => JweAction::Populate,
                        crate::jwe::Action::Add => JweAction::Add,
                        crate::jwe::Action::Activate => JweAction::Activate,
                        crate::jwe::Action::Deactivate => JweAction::Deactivate,
                    },
                    plaintext,
                    generation: job.generation,
                }),
                Err(_) => {
                    tracing::debug!(device = %self.name, "JWE could not be opened");
                    Err(())
                }
            }),
        };
        let mut m = self.model.lock().await;
        let now = OffsetDateTime::now_utc()
            .checked_add(self.clock_offset)
            .unwrap_or_else(OffsetDateTime::now_utc);
        // The trees are only compared when some session listens for feedback.
        let before =
            (self.feedback.receiver_count() > 0).then(|| (m.status_tree(now), m.config_tree()));
        let outcome = m.handle(req, decrypted, now);
        if let (true, Some((status, config))) = (outcome.changed, before) {
            let changes = Changes {
                status: changed_leaves(&status, m.status_tree(now)),
                config: changed_leaves(&config, m.config_tree()),
            };
            if !changes.status.is_empty() || !changes.config.is_empty() {
                let _ = self.feedback.send(Arc::new(changes));
            }
        }
        if outcome.changed {
            if let Some(store) = self.store.clone() {
                let state = m.to_persisted();
                let name = self.name.clone();
                let res = tokio::task::spawn_blocking(move || store.save_state(&state)).await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(device = %name, error = %e, "saving state failed")
                    }
                    Err(_) => tracing::error!(device = %name, "saving state panicked"),
                }
            }
        }
        outcome
    }

    fn snapshot(&self, m: &Device) -> DeviceSnapshot {
        DeviceSnapshot {
            secret: m.secret().cloned(),
            certificates: m
                .certificates
                .iter()
                .map(|c| {
                    cert_snapshot(
                        &c.meta,
                        c.used_for.iter().map(|p| p.as_str().to_string()).collect(),
                    )
                })
                .collect(),
            cas: m.cas.iter().map(|c| cert_snapshot(c, vec![])).collect(),
            e2ee_mode_on: m.e2ee_mode_on,
            preferred_domain: m.preferred_domain.clone(),
            boot_count: m.boot_count,
            renewal_profiles: m
                .renewal_profiles
                .iter()
                .map(|p| (p.fingerprint.clone(), p.url.clone()))
                .collect(),
            commands: lock(&self.log).clone(),
            logins: self.logins.load(Ordering::Relaxed),
        }
    }
}

/// What a session does after a frame.
enum Flow {
    Reply(String),
    ReplyThenReboot(String),
    Drop,
    Hang,
    Close,
}

struct SessionState {
    echo: bool,
    mode: OutputMode,
    /// The client requested a pty: output goes through the line discipline (`\r\n`).
    pty: bool,
    /// `xFeedback register` expressions of this session.
    feedback: Vec<FeedbackPath>,
}

impl SessionState {
    /// The feedback messages this session gets for `changes` (empty if none registered
    /// covers them).
    fn feedback_text(&self, changes: &Changes) -> String {
        let mut out = String::new();
        for (kind, leaves) in [
            (Kind::Status, &changes.status),
            (Kind::Configuration, &changes.config),
        ] {
            let covered: Vec<model::Leaf> = leaves
                .iter()
                .filter(|l| self.feedback.iter().any(|f| f.covers(kind, &l.path)))
                .cloned()
                .collect();
            if !covered.is_empty() {
                out.push_str(&tsh::render_feedback(kind, &covered, self.mode));
            }
        }
        out
    }

    /// Runs an `xFeedback` subcommand; returns the paths to list (for `list`).
    fn feedback_command(&mut self, cmd: FeedbackCmd) -> Option<Vec<String>> {
        match cmd {
            FeedbackCmd::Register(p) => {
                if !self.feedback.contains(&p) {
                    self.feedback.push(p);
                }
            }
            FeedbackCmd::Deregister(p) => self.feedback.retain(|f| f != &p),
            FeedbackCmd::DeregisterAll => self.feedback.clear(),
            FeedbackCmd::List => return Some(self.feedback.iter().map(|f| f.text()).collect()),
        }
        None
    }
}

/// The device's help for `path` (read under the model's lock; changes nothing).
async fn lock_model_help(rt: &DeviceRuntime, kind: Kind, path: &[String]) -> Option<Vec<String>> {
    rt.model.lock().await.help(kind, path)
}

async fn process_frame(
    rt: &DeviceRuntime,
    st: &mut SessionState,
    line: &str,
    body: Option<tsh::ZeroizingString>,
) -> Flow {
    let parsed = tsh::parse_line(line);
    if matches!(parsed, Parsed::Empty) {
        return Flow::Reply(String::new());
    }
    let action = lock(&rt.faults).on_command(line);
    let seq = {
        let log = lock(&rt.log);
        log.len() as u64 + 1
    };
    let log_line = match &parsed {
        Parsed::X { req, .. } => {
            let mut r = req.clone();
            r.body = body.as_ref().map(|b| Zeroizing::new(b.0.to_string()));
            tsh::redacted(&r)
        }
        Parsed::Echo(on) => format!("echo {}", if *on { "on" } else { "off" }),
        Parsed::OutputMode(m) => format!("xpreferences outputmode {m:?}").to_ascii_lowercase(),
        Parsed::BadPreference => "xpreferences ?".into(),
        Parsed::Feedback { .. } => "xFeedback".into(),
        Parsed::Bye => "bye".into(),
        Parsed::Help { kind, path } => format!("x{kind:?} {} ?", path.join(" ")),
        Parsed::Syntax { kind, .. } => format!("{kind:?} <syntax error>"),
        Parsed::NotRecognized | Parsed::Empty => "<not recognized>".into(),
    };
    let result_id = match &parsed {
        Parsed::X { result_id, .. }
        | Parsed::Syntax { result_id, .. }
        | Parsed::Feedback { result_id, .. } => result_id.clone(),
        _ => None,
    };
    match action {
        faults::Action::DropBefore => {
            rt.log_command(seq, log_line, "dropped-before");
            return Flow::Drop;
        }
        faults::Action::Hang => {
            rt.log_command(seq, log_line, "hang");
            return Flow::Hang;
        }
        faults::Action::LandLate(after) => {
            rt.log_command(seq, log_line, "hang");
            if let Parsed::X { mut req, .. } = parsed {
                req.body = body.map(|b| b.0);
                *lock(&rt.landing) = Some((req, after));
            }
            return Flow::Hang;
        }
        faults::Action::Error(reason) => {
            rt.log_command(seq, log_line, "injected-error");
            let (kind, name) = match &parsed {
                Parsed::X { req, .. } => (req.kind, Device::result_name(req)),
                _ => (Kind::Command, "Result".to_string()),
            };
            let resp = match kind {
                Kind::Command => Response::Result {
                    name,
                    status: model::ResultStatus::Error,
                    fields: vec![model::Leaf {
                        path: vec!["Reason".into()],
                        value: model::Value::Str(reason),
                    }],
                },
                k => Response::NodeError {
                    kind: k,
                    reason,
                    xpath: String::new(),
                },
            };
            return Flow::Reply(tsh::render(
                &resp,
                st.mode,
                result_id.as_deref(),
                &rt.variants,
            ));
        }
        faults::Action::Normal | faults::Action::DropAfter => {}
    }
    let drop_after = action == faults::Action::DropAfter;
    let finish = |flow: Flow, outcome: &str| {
        rt.log_command(
            seq,
            log_line.clone(),
            if drop_after { "dropped-after" } else { outcome },
        );
        if drop_after {
            Flow::Drop
        } else {
            flow
        }
    };
    match parsed {
        Parsed::Empty => Flow::Reply(String::new()),
        Parsed::Echo(on) => {
            st.echo = on;
            finish(Flow::Reply(tsh::ok_line()), "ok")
        }
        Parsed::OutputMode(m) => {
            st.mode = m;
            // catalogue reply.json: in JSON mode a device prints JSON documents only; the
            // switch itself is not answered there (jsxapi feeds everything after it to
            // its JSON parser, which would report an `OK` line as an error).
            let reply = match m {
                OutputMode::Terminal => tsh::ok_line(),
                OutputMode::Json => String::new(),
            };
            finish(Flow::Reply(reply), "ok")
        }
        Parsed::BadPreference | Parsed::NotRecognized => {
            finish(Flow::Reply(tsh::not_recognized()), "not-recognized")
        }
        Parsed::Feedback { cmd, .. } => {
            let ok = cmd.is_ok();
            let outcome = cmd.map(|c| st.feedback_command(c));
            let text = tsh::feedback_reply(outcome, st.mode, result_id.as_deref());
            finish(Flow::Reply(text), if ok { "ok" } else { "error" })
        }
        Parsed::Bye => finish(Flow::Close, "ok"),
        Parsed::Help { kind, path } => {
            let lines = lock_model_help(rt, kind, &path).await;
            let known = lines.is_some();
            finish(
                Flow::Reply(tsh::help_reply(lines)),
                if known { "ok" } else { "not-recognized" },
            )
        }
        Parsed::Syntax { kind, reason, .. } => finish(
            Flow::Reply(tsh::render(
                &tsh::syntax_error(kind, &reason),
                st.mode,
                result_id.as_deref(),
                &rt.variants,
            )),
            "error",
        ),
        Parsed::X { mut req, result_id } => {
            req.body = body.map(|b| b.0);
            let outcome = rt.apply(&req).await;
            let ok = match &outcome.response {
                Response::Result { status, .. } => *status == model::ResultStatus::Ok,
                Response::NodeError { .. } => false,
                _ => true,
            };
            let text = tsh::render(
                &outcome.response,
                st.mode,
                result_id.as_deref(),
                &rt.variants,
            );
            let flow = if outcome.reboot {
                Flow::ReplyThenReboot(text)
            } else {
                Flow::Reply(text)
            };
            if drop_after && outcome.reboot {
                rt.reboot();
            }
            let flow = finish(flow, if ok { "ok" } else { "error" });
            land_held_back(rt, &log_line).await;
            flow
        }
    }
}

/// Lands the command the `land_late` fault held back, once the device has answered the
/// command it waits for (the answer above was made before it landed).
async fn land_held_back(rt: &DeviceRuntime, answered: &str) {
    let held = {
        let mut landing = lock(&rt.landing);
        let due = landing
            .as_ref()
            .is_some_and(|(_, after)| answered.to_ascii_lowercase().contains(after.as_str()));
        if due {
            landing.take()
        } else {
            None
        }
    };
    if let Some((req, _)) = held {
        let outcome = rt.apply(&req).await;
        let seq = lock(&rt.log).len() as u64 + 1;
        let landed = match &outcome.response {
            Response::Result { status, .. } if *status == model::ResultStatus::Ok => "landed",
            _ => "landed-with-error",
        };
        rt.log_command(seq, tsh::redacted(&req), landed);
    }
}

/// Counts one open session for as long as it lives.
struct SessionSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends device output; with a pty through the line discipline (`\n` → `\r\n`).
async fn send(channel: &Channel<Msg>, text: &str, pty: bool) -> bool {
    if text.is_empty() {
        return true;
    }
    channel.data(tsh::onlcr(text, pty).as_bytes()).await.is_ok()
}

/// The next feedback message, or never when the session has not registered any.
async fn next_change(
    rx: &mut Option<broadcast::Receiver<Arc<Changes>>>,
) -> Result<Arc<Changes>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one TSH session on an accepted session channel.
async fn run_tsh(
    rt: Arc<DeviceRuntime>,
    mut channel: Channel<Msg>,
    handle: russh::server::Handle,
    tcp: Option<Arc<std::net::TcpStream>>,
) {
    // Wait for the shell; pty/env requests are answered by the handler, and a pty
    // request decides the line ends (catalogue framing.line-ends).
    let mut pty = false;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestShell { .. }) => break,
            Some(ChannelMsg::RequestPty { .. }) => pty = true,
            Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    }
    // catalogue session.limits: one session more than the device serves is told so and
    // closed before the banner.
    let open = rt.sessions.fetch_add(1, Ordering::SeqCst);
    let _session = SessionSlot(&rt.sessions);
    if open >= rt.max_sessions {
        tracing::info!(device = %rt.name, "session refused: too many sessions");
        let _ = send(
            &channel,
            &format!("Maximum number of sessions reached{}", tsh::EOL),
            pty,
        )
        .await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
        return;
    }
    rt.logins.fetch_add(1, Ordering::Relaxed);
    let mut banner = tsh::banner(&rt.name);
    for line in &rt.login_notice {
        banner.push_str(line);
        banner.push_str(tsh::EOL);
    }
    if !send(&channel, &banner, pty).await {
        return;
    }
    let mut splitter = Splitter::new(rt.variants.clone());
    let mut st = SessionState {
        echo: true,
        mode: OutputMode::Terminal,
        pty,
        feedback: Vec::new(),
    };
    // Subscribed only while the session has feedback registered, so devices nobody
    // listens to never compute what changed.
    let mut changes: Option<broadcast::Receiver<Arc<Changes>>> = None;
    let mut hung = false;
    loop {
        match (&changes, st.feedback.is_empty()) {
            (None, false) => changes = Some(rt.feedback.subscribe()),
            (Some(_), true) => changes = None,
            _ => {}
        }
        let msg = tokio::select! {
            msg = channel.wait() => msg,
            change = next_change(&mut changes) => {
                // Lagged: feedback is best effort, as on a device.
                if let Ok(change) = change {
                    let text = st.feedback_text(&change);
                    if !hung && !send(&channel, &text, st.pty).await {
                        return;
                    }
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let data = match msg {
            ChannelMsg::Data { data } => data,
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => continue,
        };
        if hung {
            continue;
        }
        let inputs = match splitter.push(&data) {
            Ok(i) => i,
            Err(_) => {
                tracing::warn!(device = %rt.name, "input too long; dropping the session");
                let _ = handle
                    .disconnect(Disconnect::ByApplication, String::new(), String::new())
                    .await;
                return;
            }
        };
        for input in inputs {
            if hung {
                break;
            }
            match input {
                Input::Echo(line) => {
                    if st.echo && !send(&channel, &format!("{line}{}", tsh::EOL), st.pty).await {
                        return;
                    }
                }
                Input::Frame { line, body } => {
                    let flow = process_frame(&rt, &mut st, &line, body).await;
                    if !rt.latency.is_zero() {
                        tokio::time::sleep(rt.latency).await;
                        rt.cpu.account.add_latency(rt.latency);
                    }
                    match flow {
                        Flow::Reply(text) => {
                            if !send(&channel, &text, st.pty).await {
                                return;
                            }
                        }
                        Flow::ReplyThenReboot(text) => {
                            let _ = send(&channel, &text, st.pty).await;
                            rt.reboot();
                            return;
                        }
                        Flow::Drop => {
                            tracing::info!(device = %rt.name, "fault: dropping the connection");
                            drop_connection(&handle, tcp.as_deref()).await;
                            return;
                        }
                        Flow::Hang => {
                            tracing::info!(device = %rt.name, "fault: hanging");
                            hung = true;
                        }
                        Flow::Close => {
                            let _ = channel.eof().await;
                            let _ = channel.close().await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Drops a connection like a network failure: the TCP socket is shut down under the SSH
/// session (no SSH disconnect message); without a socket handle, a plain SSH disconnect.
async fn drop_connection(handle: &russh::server::Handle, tcp: Option<&std::net::TcpStream>) {
    match tcp {
        Some(s) => {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        None => {
            let _ = handle
                .disconnect(Disconnect::ByApplication, String::new(), String::new())
                .await;
        }
    }
}

/// The russh handler of one connection.
struct ConnHandler {
    rt: Arc<DeviceRuntime>,
    /// A duplicate of the connection's socket, to shut it down for drop faults.
    tcp: Option<Arc<std::net::TcpStream>>,
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self.rt.credentials_ok(user, password.as_bytes()) {
            tracing::debug!(device = %self.rt.name, "password login accepted");
            Ok(Auth::Accept)
        } else {
            tracing::info!(device = %self.rt.name, "login refused");
            Ok(Auth::reject())
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        match response {
            None => Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![("Password: ".into(), false)].into(),
            }),
            Some(mut answers) => {
                let answer = answers.next().unwrap_or_default();
                if self.rt.credentials_ok(user, &answer) {
                    tracing::debug!(device = %self.rt.name, "keyboard-interactive login accepted");
                    Ok(Auth::Accept)
                } else {
                    tracing::info!(device = %self.rt.name, "login refused");
                    Ok(Auth::reject())
                }
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let rt = self.rt.clone();
        let handle = session.handle();
        tokio::spawn(run_tsh(rt, channel, handle, self.tcp.clone()));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}

/// A running simulated fleet.
pub struct Fleet {
    devices: Vec<(DeviceInfo, Arc<DeviceRuntime>)>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Returns the socket (still registered with tokio) and a duplicate of its descriptor.
fn split_for_drop(
    socket: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_socket = socket.into_std()?;
    let dup = std_socket.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std_socket)?, dup))
}

async fn accept_loop(
    rt: Arc<DeviceRuntime>,
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(device = %rt.name, error = %e, "accept failed");
                continue;
            }
        };
        if rt.is_down() {
            // Rebooting: the connection is closed at once, like a refused port.
            drop(socket);
            continue;
        }
        tracing::debug!(device = %rt.name, %peer, "connection");
        let _ = socket.set_nodelay(true);
        // Keep a duplicate of the socket so a drop fault can cut the TCP connection itself.
        let (socket, tcp) = match split_for_drop(socket) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(device = %rt.name, error = %e, "socket setup failed");
                continue;
            }
        };
        let handler = ConnHandler {
            rt: rt.clone(),
            tcp: Some(Arc::new(tcp)),
        };
        let config = config.clone();
        let mut boot_rx = rt.boot.subscribe();
        let mut shutdown_rx = shutdown.clone();
        tokio::spawn(async move {
            let session = match russh::server::run_stream(config, socket, handler).await {
                Ok(s) => s,
                Err(_) => return,
            };
            let handle = session.handle();
            tokio::select! {
                _ = session => {}
                _ = boot_rx.changed() => {
                    let _ = handle.disconnect(Disconnect::ByApplication, "rebooting".into(), String::new()).await;
                }
                _ = shutdown_rx.changed() => {
                    let _ = handle.disconnect(Disconnect::ByApplication, "shutting down".into(), String::new()).await;
                }
            }
        });
    }
}

/// Loads (or creates) a device's persisted state and host keys (one per type).
fn load_device(
    dir: &std::path::Path,
    name: &str,
    types: &[store::HostKeyType],
) -> Result<(Option<Store>, Device, Vec<PrivateKey>), SimError> {
    let st = Store::open(dir, name)?;
    let device = match st.load_state()? {
        Some(p) => Device::from_persisted(name, &p).map_err(|e| SimError::State {
            device: name.to_string(),
            reason: e.to_string(),
        })?,
        None => Device::new(name),
    };
    let keys = types
        .iter()
        .map(|t| st.host_key_of(*t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Some(st), device, keys))
}

/// Fresh keys of the given types (in-memory devices, the `wrong_host_key` fault), made on
/// a blocking thread: an RSA key takes a noticeable time to generate.
async fn random_keys(
    name: &str,
    types: &[store::HostKeyType],
) -> Result<Vec<PrivateKey>, SimError> {
    let owned = types.to_vec();
    let made = tokio::task::spawn_blocking(move || {
        owned
            .iter()
            .map(|t| t.random())
            .collect::<Result<Vec<_>, String>>()
    })
    .await;
    match made {
        Ok(Ok(keys)) => Ok(keys),
        Ok(Err(reason)) => Err(SimError::State {
            device: name.to_string(),
            reason: format!("host key: {reason}"),
        }),
        Err(_) => Err(SimError::State {
            device: name.to_string(),
            reason: "host key generation panicked".into(),
        }),
    }
}

impl Fleet {
    /// Binds every device and starts serving.
    pub async fn start(specs: Vec<SimDeviceSpec>, opts: FleetOptions) -> Result<Fleet, SimError> {
        let (shutdown, _) = watch::channel(false);
        let mut fleet = Fleet {
            devices: Vec::new(),
            tasks: Vec::new(),
            shutdown,
        };
        let mut names = std::collections::HashSet::new();
        for spec in specs {
            if !names.insert(spec.name.clone()) {
                return Err(SimError::DuplicateName(spec.name));
            }
            let types: Vec<store::HostKeyType> = if spec.faults.host_key_types.is_empty() {
                vec![store::HostKeyType::Ed25519]
            } else {
                spec.faults.host_key_types.clone()
            };
            let (store, mut device, host_keys) = match opts.state_dir.clone() {
                Some(dir) => {
                    let name = spec.name.clone();
                    let types = types.clone();
                    // File I/O (and key parsing) off the executor.
                    tokio::task::spawn_blocking(move || load_device(&dir, &name, &types))
                        .await
                        .map_err(|_| SimError::State {
                            device: spec.name.clone(),
                            reason: "loading state panicked".into(),
                        })??
                }
                None => (
                    None,
                    Device::new(&spec.name),
                    random_keys(&spec.name, &types).await?,
                ),
            };
            device.scep_servers = opts.scep_servers.clone();
            device.variants = spec.faults.variants.clone();
            device.populate_reading = spec.faults.populate_reading;
            let presented: Vec<PrivateKey> = if spec.faults.wrong_host_key {
                random_keys(&spec.name, &types).await?
            } else {
                host_keys.clone()
            };
            let (Some(host_key), Some(first_presented)) =
                (host_keys.first().cloned(), presented.first().cloned())
            else {
                return Err(SimError::Config(format!(
                    "device {}: no host key",
                    spec.name
                )));
            };
            let listener = TcpListener::bind(spec.addr)
                .await
                .map_err(|source| SimError::Bind {
                    device: spec.name.clone(),
                    addr: spec.addr,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| SimError::Bind {
                device: spec.name.clone(),
                addr: spec.addr,
                source,
            })?;
            let config = russh::server::Config {
                methods: MethodSet::from(
                    &[MethodKind::Password, MethodKind::KeyboardInteractive][..],
                ),
                auth_rejection_time: opts.auth_rejection_time,
                auth_rejection_time_initial: Some(Duration::ZERO),
                keys: presented.clone(),
                inactivity_timeout: Some(Duration::from_secs(3600)),
                nodelay: true,
                ..Default::default()
            };
            let (boot, _) = watch::channel(0u64);
            let rt = Arc::new(DeviceRuntime {
                name: spec.name.clone(),
                username: spec.username.clone(),
                password: spec.password.clone(),
                model: tokio::sync::Mutex::new(device),
                latency: spec.faults.latency(),
                variants: spec.faults.variants.clone(),
                clock_offset: time::Duration::seconds(spec.faults.clock_offset_secs),
                failed_logins: StdMutex::new((0, None)),
                max_failed_logins: spec
                    .faults
                    .max_failed_logins
                    .unwrap_or(DEFAULT_MAX_FAILED_LOGINS),
                lockout: Duration::from_secs(
                    spec.faults.lockout_secs.unwrap_or(DEFAULT_LOCKOUT_SECS),
                ),
                sessions: std::sync::atomic::AtomicUsize::new(0),
                max_sessions: spec.faults.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
                refuse_auth: spec.faults.refuse_auth,
                login_notice: spec
                    .faults
                    .login_notice
                    .iter()
                    // One line each: a notice cannot smuggle extra protocol lines.
                    .map(|l| l.replace(['\r', '\n'], " "))
                    .collect(),
                faults: StdMutex::new(FaultState::new(spec.faults.clone())),
                log: StdMutex::new(Vec::new()),
                landing: StdMutex::new(None),
                store,
                kdf: opts.kdf.clone(),
                cpu: opts.device_cpu.clone(),
                keys: super::device_cpu::KeyCache::default(),
                boot,
                down_until: StdMutex::new(None),
                boot_delay: opts.boot_delay,
                logins: AtomicU64::new(0),
                feedback: broadcast::channel(64).0,
            });
            let info = DeviceInfo {
                name: spec.name.clone(),
                addr,
                host_key_fingerprint: fingerprint(host_key.public_key()),
                host_key: host_key.public_key().clone(),
                host_keys: host_keys.iter().map(|k| k.public_key().clone()).collect(),
                presented_host_key: first_presented.public_key().clone(),
            };
            tracing::info!(device = %spec.name, %addr, "device listening");
            fleet.tasks.push(tokio::spawn(accept_loop(
                rt.clone(),
                listener,
                Arc::new(config),
                fleet.shutdown.subscribe(),
            )));
            fleet.devices.push((info, rt));
        }
        Ok(fleet)
    }

    /// Every device: name, bound address, host key.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|(i, _)| i.clone()).collect()
    }

    fn runtime(&self, name: &str) -> Result<&Arc<DeviceRuntime>, SimError> {
        self.devices
            .iter()
            .find(|(i, _)| i.name == name)
            .map(|(_, rt)| rt)
            .ok_or_else(|| SimError::UnknownDevice(name.to_string()))
    }

    /// A device's current state and command log.
    pub async fn snapshot(&self, name: &str) -> Result<DeviceSnapshot, SimError> {
        let rt = self.runtime(name)?;
        let m = rt.model.lock().await;
        Ok(rt.snapshot(&m))
    }

    /// Replaces a device's fault plan (counters restart). Latency, auth refusal and the
    /// presented host key are fixed at start.
    /// The `cisco-kdf` salts of every JWE `name` received since its fault plan was set.
    pub fn jwe_salts(&self, name: &str) -> Result<Vec<Vec<u8>>, SimError> {
        let rt = self.runtime(name)?;
        let salts = lock(&rt.faults).salts().to_vec();
        Ok(salts)
    }

    pub fn set_faults(&self, name: &str, plan: faults::FaultPlan) -> Result<(), SimError> {
        let rt = self.runtime(name)?;
        *lock(&rt.faults) = FaultState::new(plan);
        Ok(())
    }

    /// Changes how a device's firmware reads a `populate` JWE's plaintext (a firmware
    /// upgrade between runs, in a test).
    pub async fn set_populate_reading(
        &self,
        name: &str,
        reading: model::PopulateReading,
    ) -> Result<(), SimError> {
        let rt = self.runtime(name)?;
        rt.model.lock().await.populate_reading = reading;
        Ok(())
    }

    /// Removes every certificate (and so every activation) from a device behind roomkey's
    /// back; its ClientSecret stays (a test of "a rerun reads the device").
    pub async fn remove_certificates(&self, name: &str) -> Result<(), SimError> {
        let rt = self.runtime(name)?;
        rt.model.lock().await.certificates.clear();
        Ok(())
    }

    /// Resets a device to its factory state: no ClientSecret, no certificates, no trusted
    /// CAs. What the firmware is (its populate reading, its SCEP servers) stays.
    pub async fn factory_reset(&self, name: &str) -> Result<(), SimError> {
        let rt = self.runtime(name)?;
        let mut model = rt.model.lock().await;
        let mut fresh = model::Device::new(model.name.clone());
        fresh.scep_servers = std::mem::take(&mut model.scep_servers);
        fresh.populate_reading = model.populate_reading;
        *model = fresh;
        Ok(())
    }

    /// Stops every listener and disconnects every session.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
