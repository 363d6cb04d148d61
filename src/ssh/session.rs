//! One TSH session over russh: connect, check the host key, authenticate, open the shell
//! (no pty, as Cisco's own jsxapi does), wait for login readiness, `echo off`, then run
//! commands one at a time.
//!
//! After a command times out or the connection breaks, the session refuses further
//! commands: the device may still answer the abandoned command, and an untagged late
//! answer (`ERROR`, `Command not recognized.`) could otherwise be taken for the next
//! command's reply. Callers reconnect instead.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::client::{self, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, MethodKind};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::known_hosts::{self, Verdict};
use super::{ClientAuth, ConnectOptions, HostKeyPolicy, Phase, SshError};
use crate::secret::Secret;
use crate::tsh::{Reply, ReplyReader, ReplyShape, ResultId, TshCommand, TshEvent, ECHO_OFF};

/// Most unsolicited `*e` lines kept for [`TshSession::take_events`].
const MAX_EVENTS: usize = 256;
/// Keepalives sent without an answer before the connection is dropped.
const KEEPALIVE_MAX: usize = 3;
/// Keyboard-interactive rounds answered before giving up (a device asks once).
const MAX_KI_ROUNDS: usize = 8;
/// Most bytes a device may send while one reply is awaited. Generous: the largest real
/// replies (a certificate list, a status tree) are tens of KiB. Past it the session fails
/// with "reply too large" instead of buffering without end; other devices go on.
pub const MAX_REPLY_BYTES: usize = 8 << 20;
/// Most bytes a device may print before its login is ready (welcome text, release line,
/// last-login notice: a few hundred bytes on real devices).
pub const MAX_BANNER_BYTES: usize = 64 << 10;

/// The result of the host key check, kept by the handler for `connect` to report.
type KeyCheckSlot = Arc<Mutex<Option<SshError>>>;

struct DeviceHandler {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    rejection: KeyCheckSlot,
}

impl DeviceHandler {
    fn reject(&self, err: SshError) -> Result<bool, russh::Error> {
        if let Ok(mut slot) = self.rejection.lock() {
            *slot = Some(err);
        }
        Ok(false)
    }

    fn known_hosts_error(&self, e: impl std::fmt::Display) -> SshError {
        SshError::KnownHosts {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            detail: e.to_string(),
        }
    }

    fn judge(&self, verdict: Verdict, presented_fp: String) -> Result<bool, russh::Error> {
        match verdict {
            Verdict::Known { .. } => Ok(true),
            Verdict::Changed { line, expected_fp } => self.reject(SshError::HostKeyChanged {
                host: self.host.clone(),
                port: self.port,
                expected_fp,
                presented_fp,
                known_hosts: self.known_hosts.clone(),
                line,
            }),
            Verdict::Revoked { line } => self.reject(SshError::HostKeyRevoked {
                host: self.host.clone(),
                port: self.port,
                presented_fp,
                known_hosts: self.known_hosts.clone(),
                line,
            }),
            Verdict::Unknown => self.reject(SshError::HostKeyUnknown {
                host: self.host.clone(),
                port: self.port,
                presented_fp,
                known_hosts: self.known_hosts.clone(),
            }),
        }
    }
}

impl client::Handler for DeviceHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                return self.reject(SshError::Protocol {
                    host: self.host.clone(),
                    port: self.port,
                    detail: "the device presented a host certificate; only plain host keys \
                             checked against known_hosts are supported"
                        .into(),
                });
            }
        };
        let fp = known_hosts::fingerprint(key);
        let learn_new = self.policy == HostKeyPolicy::AcceptNew;
        // known_hosts is read (once per process, then a stat per check) and appended on the
        // blocking pool: a slow disk must not stall the async workers other devices share.
        let (path, host, port, presented) = (
            self.known_hosts.clone(),
            self.host.clone(),
            self.port,
            key.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let verdict = known_hosts::check_path(&path, &host, port, &presented)?;
            if verdict == Verdict::Unknown && learn_new {
                known_hosts::learn(&path, &host, port, &presented).map(|v| (v, true))
            } else {
                Ok((verdict, false))
            }
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let (verdict, learnt) = match checked {
            Ok(v) => v,
            Err(e) => return self.reject(self.known_hosts_error(e)),
        };
        if learnt && verdict == Verdict::Unknown {
            // `learn` found it still unknown under its lock and appended it.
            tracing::info!(
                host = %self.host, port = self.port, fingerprint = %fp,
                "new host key added to known_hosts"
            );
            return Ok(true);
        }
        // Otherwise (or someone else added it meanwhile): judge what is there now.
        self.judge(verdict, fp)
    }
}

/// An open TSH session to one device.
pub struct TshSession {
    handle: Handle<DeviceHandler>,
    channel: russh::Channel<client::Msg>,
    reader: ReplyReader,
    banner: String,
    host: String,
    port: u16,
    command_timeout: std::time::Duration,
    next_id: u64,
    events: Vec<String>,
    /// Why the session may no longer be used, once it may not.
    broken: Option<&'static str>,
    /// Only commands that change nothing may be sent (`apply --check`).
    read_only: bool,
    /// See [`ConnectOptions::body_wait`].
    body_wait: std::time::Duration,
    /// Bytes received since the last command was sent.
    received: usize,
    /// Answers to no command of ours seen since the counter was reset: stray replies and
    /// `Command not recognized.` / `ERROR` lines arriving while nothing was awaited.
    strays: usize,
    /// Learned in this session: the device takes `run_either_form`'s value as a body.
    multi_line: bool,
}

impl std::fmt::Debug for TshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TshSession")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("next_id", &self.next_id)
            .field("broken", &self.broken)
            .finish()
    }
}

fn client_config(opts: &ConnectOptions) -> client::Config {
    let keepalive = (!opts.keepalive_interval.is_zero()).then_some(opts.keepalive_interval);
    client::Config {
        keepalive_interval: keepalive,
        keepalive_max: KEEPALIVE_MAX,
        // With keepalives, a silent peer is caught after KEEPALIVE_MAX unanswered probes;
        // the inactivity timeout is a backstop in case the peer answers nothing at all.
        inactivity_timeout: keepalive.map(|k| k * (KEEPALIVE_MAX as u32 + 2)),
        nodelay: true,
        ..Default::default()
    }
}

impl TshSession {
    /// Connects, checks the host key, authenticates, opens the shell, waits for the login
    /// `OK` and turns echo off.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, SshError> {
        let host = opts.host.clone();
        let port = opts.port;
        let rejection: KeyCheckSlot = Arc::new(Mutex::new(None));
        let handler = DeviceHandler {
            host: host.clone(),
            port,
            known_hosts: opts.known_hosts.clone(),
            policy: opts.host_key_policy,
            rejection: rejection.clone(),
        };
        let mut config = client_config(opts);
        // Offer first the host key types already pinned for this device (as OpenSSH does),
        // from the process-wide known_hosts index, on the blocking pool (it stats the file).
        let preferred = {
            let (path, host) = (opts.known_hosts.clone(), host.clone());
            tokio::task::spawn_blocking(move || {
                known_hosts::preferred_algorithms_at(
                    &path,
                    &host,
                    port,
                    &russh::Preferred::DEFAULT.key,
                )
            })
            .await
        };
        if let Ok(Ok(order)) = preferred {
            config.preferred.key = order.into();
        }
        let config = Arc::new(config);

        let handshake = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| SshError::Connect {
                    host: host.clone(),
                    port,
                    detail: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            client::connect_stream(config, tcp, handler)
                .await
                .map_err(|e| {
                    let rejected = rejection.lock().ok().and_then(|mut s| s.take());
                    rejected.unwrap_or_else(|| SshError::Connect {
                        host: host.clone(),
                        port,
                        detail: format!("SSH handshake failed: {e}"),
                    })
                })
        };
        let mut handle = timeout(opts.connect_timeout, handshake)
            .await
            .map_err(|_| SshError::Timeout {
                host: host.clone(),
                port,
                phase: Phase::Connect,
            })??;

        let authed = timeout(opts.auth_timeout, authenticate(&mut handle, opts))
            .await
            .map_err(|_| SshError::Timeout {
                host: host.clone(),
                port,
                phase: Phase::Auth,
            })??;
        if !authed {
            return Err(SshError::AuthRejected {
                host,
                port,
                username: opts.username.clone(),
                method: opts.auth.method_name(),
            });
        }

        let mut session = timeout(opts.command_timeout, open_shell(handle, opts))
            .await
            .map_err(|_| SshError::Timeout {
                host: host.clone(),
                port,
                phase: Phase::Login,
            })??;

        // echo off: answered by OK. A device that refuses keeps echoing, which the reader
        // tolerates (echoed lines are noise), so a refusal is only logged.
        let echo = timeout(opts.command_timeout, async {
            session.reader.expect(ReplyShape::Plain);
            session.send(ECHO_OFF.as_bytes(), Phase::Login).await?;
            session.await_reply(Phase::Login).await
        })
        .await
        .map_err(|_| SshError::Timeout {
            host: host.clone(),
            port,
            phase: Phase::Login,
        })??;
        if !echo.is_ok() {
            tracing::warn!(host = %host, port, status = ?echo.status, "device refused `echo off`");
        }
        session.read_only = opts.read_only;
        Ok(session)
    }

    /// Runs one command: tags it with a fresh resultId (`r1`, `r2`, ...), sends it and waits
    /// for its reply, skipping `*e` events and replies tagged with other ids. A reply with a
    /// device-side error is `Ok(reply)` with a non-OK status; `Err` is a transport problem.
    pub async fn run(&mut self, cmd: &TshCommand) -> Result<Reply, SshError> {
        self.check_sendable(cmd)?;
        self.next_id += 1;
        let id = ResultId::sequence(self.next_id);
        tracing::debug!(
            host = %self.host, port = self.port, result_id = %id,
            command = %cmd.redacted_line(), body = cmd.has_body(), "sending command"
        );
        let bytes = cmd.encode(&id);
        self.reader.expect_id(cmd.reply_shape(), &id);
        let limit = self.command_timeout;
        let exchange = async {
            self.send(bytes.as_bytes(), Phase::Command).await?;
            self.await_reply(Phase::Command).await
        };
        match timeout(limit, exchange).await {
            Ok(Ok(reply)) => {
                tracing::debug!(
                    host = %self.host, result_id = %id, status = ?reply.status, "reply"
                );
                Ok(reply)
            }
            Ok(Err(e)) => {
                self.broken = Some("the connection failed");
                Err(e)
            }
            Err(_) => {
                self.reader.cancel();
                self.broken = Some("a command timed out");
                Err(SshError::Timeout {
                    host: self.host.clone(),
                    port: self.port,
                    phase: Phase::Command,
                })
            }
        }
    }

    /// Runs a command whose form is unknown (catalogue `command.populate-form`: is
    /// `ClientSecret Populate` one line with its value as a parameter, or a multi-line
    /// command with the value as its body?) without ever ending at the command timeout,
    /// attributing a reply wrongly, or sending a value the caller did not give:
    ///
    /// 1. `one_line` is sent. A reply, or any byte of one, within the body wait
    ///    ([`ConnectOptions::body_wait`]): a one-line device; its reply is the answer.
    /// 2. Not a byte: the device is most likely waiting for a body. A line holding `.` ends
    ///    it with an empty body; such a device then answers the command — it cannot have
    ///    taken anything but the command line's own value (an empty body carries neither
    ///    a secret nor a JWE). A one-line device that was merely slow answers the command
    ///    and then the `.` on its own (`Command not recognized.`, catalogue
    ///    `reply.not-recognized`); from the `.` on, such an untagged answer is never taken
    ///    for the command's reply ([`ReplyReader::strict_terminators`]).
    /// 3. A read marker (`xStatus SystemUnit Uptime`) is sent and awaited: every answer to
    ///    no command of ours (the `.`'s) arrives before its reply, so afterwards the
    ///    session is in step again, and the count tells the two devices apart. With an
    ///    answer to the `.`, or with the command accepted, the reply stands.
    /// 4. Refused after the empty body, with no answer to the `.`: a multi-line device
    ///    that refused the one-line form — nothing changed. `multi_line` (the same value
    ///    as the body) is sent and its reply is the answer, checked with a marker the same
    ///    way; the session sends the multi-line form from then on. Should the `.` or the
    ///    body line turn out to have been answered on their own after all, the first
    ///    refusal is the device's real answer and is returned.
    ///
    /// Both forms carry the same value, so whatever the device took, it took what the
    /// caller prepared for (the ClientSecret steps record every outcome of that value in
    /// the vault before calling this).
    pub async fn run_either_form(
        &mut self,
        one_line: &TshCommand,
        multi_line: &TshCommand,
    ) -> Result<EitherFormReply, SshError> {
        if self.multi_line {
            let reply = self.run(multi_line).await?;
            return Ok(EitherFormReply {
                reply,
                form: CommandForm::MultiLine,
                note: None,
            });
        }
        self.check_sendable(one_line)?;
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        self.next_id += 1;
        let id = ResultId::sequence(self.next_id);
        tracing::debug!(
            host = %self.host, port = self.port, result_id = %id,
            command = %one_line.redacted_line(), "sending command (one-line form)"
        );
        let bytes = one_line.encode(&id);
        self.reader.expect_id(one_line.reply_shape(), &id);
        self.received = 0;
        self.strays = 0;
        if let Err(e) = self.send(bytes.as_bytes(), Phase::Command).await {
            self.broken = Some("the connection failed");
            return Err(e);
        }
        let wait = self.body_wait;
        match timeout(wait, self.await_reply(Phase::Command)).await {
            Ok(Ok(reply)) => {
                return Ok(EitherFormReply {
                    reply,
                    form: CommandForm::OneLine,
                    note: None,
                })
            }
            Ok(Err(e)) => {
                self.broken = Some("the connection failed");
                return Err(e);
            }
            Err(_) => {}
        }
        if self.received > 0 {
            // The device is answering: a one-line device, merely slow.
            let reply = self.await_until(deadline).await?;
            return Ok(EitherFormReply {
                reply,
                form: CommandForm::OneLine,
                note: None,
            });
        }
        tracing::info!(
            host = %self.host, port = self.port, result_id = %id,
            "no reply within the body wait: ending a body the device may be waiting for"
        );
        self.reader.strict_terminators();
        if let Err(e) = self.send(b".\n", Phase::Command).await {
            self.broken = Some("the connection failed");
            return Err(e);
        }
        let first = self.await_until(deadline).await?;
        let strays = self.resynchronise().await?;
        let waited = format!(
            "it sent no reply within {} ms, so roomkey ended a body it might be waiting for",
            wait.as_millis()
        );
        match judge_either_form(&first, strays) {
            EitherFormVerdict::OneLine => {
                return Ok(EitherFormReply {
                    reply: first,
                    form: CommandForm::OneLine,
                    note: Some(format!(
                        "{waited}; it answered the command line (one-line form)"
                    )),
                })
            }
            EitherFormVerdict::TryBody => {}
        }
        let refusal = first.status.to_string();
        self.strays = 0;
        let second = self.run(multi_line).await?;
        let strays = self.resynchronise().await?;
        if strays > 0 {
            // The body line was answered on its own: a one-line device after all, and the
            // first refusal was its answer to the command.
            return Ok(EitherFormReply {
                reply: first,
                form: CommandForm::OneLine,
                note: Some(format!(
                    "{waited}; it refused the command ({refusal}) and answered the \
                     multi-line form's lines one by one (a one-line device)"
                )),
            });
        }
        self.multi_line = true;
        Ok(EitherFormReply {
            reply: second,
            form: CommandForm::MultiLine,
            note: Some(format!(
                "{waited}; it refused the one-line form with the empty body ({refusal}), so \
                 the same value was sent as the body (multi-line form, used from now on in \
                 this session)"
            )),
        })
    }

    /// Sends a read marker and awaits its reply; returns how many answers to no command of
    /// ours arrived since the stray count was reset (they all come before the marker's).
    async fn resynchronise(&mut self) -> Result<usize, SshError> {
        let marker = TshCommand::xstatus(RESYNC_MARKER).map_err(|e| SshError::Protocol {
            host: self.host.clone(),
            port: self.port,
            detail: format!("marker command: {e}"),
        })?;
        self.next_id += 1;
        let id = ResultId::sequence(self.next_id);
        let bytes = marker.encode(&id);
        self.reader.expect_strict(marker.reply_shape(), &id);
        if let Err(e) = self.send(bytes.as_bytes(), Phase::Command).await {
            self.broken = Some("the connection failed");
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let reply = self.await_until(deadline).await?;
        tracing::debug!(host = %self.host, result_id = %id, strays = self.strays, status = ?reply.status, "resynchronised");
        Ok(self.strays)
    }

    /// Awaits the pending reply until `deadline`; a timeout leaves the session unusable.
    async fn await_until(&mut self, deadline: tokio::time::Instant) -> Result<Reply, SshError> {
        match tokio::time::timeout_at(deadline, self.await_reply(Phase::Command)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.broken = Some("the connection failed");
                Err(e)
            }
            Err(_) => {
                self.reader.cancel();
                self.broken = Some("a command timed out");
                Err(SshError::Timeout {
                    host: self.host.clone(),
                    port: self.port,
                    phase: Phase::Command,
                })
            }
        }
    }

    /// Refuses a command the session may not send (check mode, or a broken session).
    fn check_sendable(&self, cmd: &TshCommand) -> Result<(), SshError> {
        if self.read_only && !cmd.changes_nothing() {
            return Err(SshError::ReadOnly {
                host: self.host.clone(),
                port: self.port,
                command: cmd.redacted_line(),
            });
        }
        if let Some(why) = self.broken {
            return Err(SshError::Protocol {
                host: self.host.clone(),
                port: self.port,
                detail: format!("session no longer usable ({why}); reconnect"),
            });
        }
        Ok(())
    }

    /// The text the device printed before login was ready (welcome line, release, ...).
    pub fn banner(&self) -> &str {
        &self.banner
    }

    /// The unsolicited `*e` lines seen since the last call.
    pub fn take_events(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the channel and the connection (best effort, bounded by the command timeout).
    pub async fn close(self) {
        let t = self.command_timeout;
        let _ = timeout(t, async {
            let _ = self.channel.eof().await;
            let _ = self
                .handle
                .disconnect(Disconnect::ByApplication, "", "en")
                .await;
        })
        .await;
    }

    async fn send(&mut self, bytes: &[u8], phase: Phase) -> Result<(), SshError> {
        self.channel
            .data(bytes)
            .await
            .map_err(|e| SshError::Disconnected {
                host: self.host.clone(),
                port: self.port,
                phase,
                detail: format!("sending failed: {e}"),
            })
    }

    /// Reads channel messages until the reader completes the pending reply.
    async fn await_reply(&mut self, phase: Phase) -> Result<Reply, SshError> {
        let mut received = 0usize;
        loop {
            let Some(msg) = self.channel.wait().await else {
                return Err(self.disconnected(phase));
            };
            match msg {
                ChannelMsg::Data { data } => {
                    received = received.saturating_add(data.len());
                    self.received = self.received.saturating_add(data.len());
                    if received > MAX_REPLY_BYTES {
                        self.reader.cancel();
                        return Err(SshError::Protocol {
                            host: self.host.clone(),
                            port: self.port,
                            detail: format!(
                                "reply too large: more than {} MiB without an end",
                                MAX_REPLY_BYTES >> 20
                            ),
                        });
                    }
                    let mut reply = None;
                    for ev in self.reader.feed(&data) {
                        match ev {
                            TshEvent::Reply(r) => reply = Some(r),
                            other => self.note(other),
                        }
                    }
                    if let Some(r) = reply {
                        return Ok(r);
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => return Err(self.disconnected(phase)),
                _ => {}
            }
        }
    }

    fn disconnected(&self, phase: Phase) -> SshError {
        let partial = self.reader.partial_line();
        SshError::Disconnected {
            host: self.host.clone(),
            port: self.port,
            phase,
            detail: if self.reader.is_awaiting() {
                format!(
                    "reply incomplete{}",
                    if partial.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} bytes of an unfinished line)", partial.len())
                    }
                )
            } else {
                String::new()
            },
        }
    }

    fn note(&mut self, ev: TshEvent) {
        match ev {
            TshEvent::Event(e) => {
                tracing::debug!(host = %self.host, event = %e, "device event");
                if self.events.len() < MAX_EVENTS {
                    self.events.push(e);
                }
            }
            TshEvent::Stray(r) => {
                self.strays = self.strays.saturating_add(1);
                tracing::debug!(host = %self.host, result_id = ?r.result_id, "skipped stray reply");
            }
            // Noise is not logged by content: with echo still on it could be a command we
            // sent, values included.
            TshEvent::Noise(n) => {
                let t = n.trim();
                if t == "Command not recognized." || t == "ERROR" {
                    // An answer arriving while no reply was awaited.
                    self.strays = self.strays.saturating_add(1);
                }
                tracing::trace!(host = %self.host, bytes = n.len(), "noise line");
            }
            TshEvent::LoginReady | TshEvent::Reply(_) => {}
        }
    }
}

/// The read sent to bring a session back in step after a line the device may have
/// answered on its own (catalogue `status.uptime`).
const RESYNC_MARKER: &str = crate::tsh::UPTIME;

/// Which form of a command that may take a body the device took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandForm {
    /// The value as a parameter on the command line.
    OneLine,
    /// The value as a dot-terminated body.
    MultiLine,
}

/// The answer of [`TshSession::run_either_form`].
#[derive(Debug, Clone)]
pub struct EitherFormReply {
    pub reply: Reply,
    /// The form `reply` answers.
    pub form: CommandForm,
    /// How it was found out, when the body wait passed (never holds a value).
    pub note: Option<String>,
}

/// What to make of the reply to a one-line command after its body was ended with `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EitherFormVerdict {
    /// The reply answers the one-line form: the `.` was answered on its own (a slow
    /// one-line device), or the device accepted the command line.
    OneLine,
    /// Refused with the empty body and no answer to the `.`: a multi-line device refusing
    /// the one-line form (nothing changed); send the value as the body.
    TryBody,
}

/// Pure: the reply to the command after the `.`, and how many answers to no command of
/// ours arrived before the marker's reply.
pub fn judge_either_form(first: &Reply, strays: usize) -> EitherFormVerdict {
    if strays > 0 || first.is_ok() {
        EitherFormVerdict::OneLine
    } else {
        EitherFormVerdict::TryBody
    }
}

async fn open_shell(
    handle: Handle<DeviceHandler>,
    opts: &ConnectOptions,
) -> Result<TshSession, SshError> {
    let host = opts.host.clone();
    let port = opts.port;
    let channel = handle
        .channel_open_session()
        .await
        .map_err(|e| SshError::Protocol {
            host: host.clone(),
            port,
            detail: format!("cannot open a session channel: {e}"),
        })?;
    // No pty: TSH needs none (jsxapi opens a plain shell), and a pty would add echo and
    // line-discipline limits on long lines such as a JWE.
    channel
        .request_shell(true)
        .await
        .map_err(|e| SshError::Protocol {
            host: host.clone(),
            port,
            detail: format!("shell request failed: {e}"),
        })?;
    let mut session = TshSession {
        handle,
        channel,
        reader: ReplyReader::new(),
        banner: String::new(),
        host,
        port,
        command_timeout: opts.command_timeout,
        next_id: 0,
        events: Vec::new(),
        broken: None,
        read_only: false,
        body_wait: opts.body_wait.min(opts.command_timeout / 2),
        received: 0,
        strays: 0,
        multi_line: false,
    };
    let mut banner: Vec<String> = Vec::new();
    let mut received = 0usize;
    loop {
        let Some(msg) = session.channel.wait().await else {
            return Err(session.disconnected(Phase::Login));
        };
        match msg {
            ChannelMsg::Data { data } => {
                received = received.saturating_add(data.len());
                if received > MAX_BANNER_BYTES {
                    return Err(SshError::Protocol {
                        host: session.host.clone(),
                        port: session.port,
                        detail: format!(
                            "banner too large: more than {} KiB before the login was ready",
                            MAX_BANNER_BYTES >> 10
                        ),
                    });
                }
                let mut ready = false;
                for ev in session.reader.feed(&data) {
                    match ev {
                        TshEvent::LoginReady => ready = true,
                        TshEvent::Noise(line) if !ready => banner.push(line),
                        other => session.note(other),
                    }
                }
                if ready {
                    while banner.last().is_some_and(|l| l.trim().is_empty()) {
                        banner.pop();
                    }
                    let start = banner.iter().take_while(|l| l.trim().is_empty()).count();
                    session.banner = banner.get(start..).unwrap_or(&[]).join("\n");
                    return Ok(session);
                }
            }
            ChannelMsg::Failure => {
                return Err(SshError::Protocol {
                    host: session.host.clone(),
                    port: session.port,
                    detail: "the device refused to start a shell".into(),
                })
            }
            ChannelMsg::Eof | ChannelMsg::Close => return Err(session.disconnected(Phase::Login)),
            _ => {}
        }
    }
}

fn proto(opts: &ConnectOptions, e: impl std::fmt::Display) -> SshError {
    SshError::Protocol {
        host: opts.host.clone(),
        port: opts.port,
        detail: format!("authentication: {e}"),
    }
}

/// Returns whether the device accepted the credentials.
async fn authenticate(
    handle: &mut Handle<DeviceHandler>,
    opts: &ConnectOptions,
) -> Result<bool, SshError> {
    let user = opts.username.as_str();
    match &opts.auth {
        ClientAuth::Password(pw) => {
            // Ask which methods the device offers (`none` checks no credential), then give
            // the password once, by one method: `password` if offered, else
            // keyboard-interactive (RoomOS offers that). Trying the same secret by a second
            // method after a refusal would count another failed login against the
            // device's lockout (catalogue auth.lockout, auth.prompts) — and a server may
            // drop `password` from the methods it lists after refusing it.
            let offered = handle
                .authenticate_none(user)
                .await
                .map_err(|e| proto(opts, e))?;
            let remaining = match offered {
                client::AuthResult::Success => return Ok(true),
                client::AuthResult::Failure {
                    remaining_methods, ..
                } => remaining_methods,
            };
            if !remaining.contains(&MethodKind::Password)
                && remaining.contains(&MethodKind::KeyboardInteractive)
            {
                return keyboard_interactive(handle, opts, pw).await;
            }
            let r = handle
                .authenticate_password(user, pw.expose())
                .await
                .map_err(|e| proto(opts, e))?;
            Ok(r.success())
        }
        ClientAuth::KeyboardInteractive(pw) => keyboard_interactive(handle, opts, pw).await,
        ClientAuth::KeyFile { path, passphrase } => {
            // Read and decrypted (an OpenSSH key's bcrypt KDF is CPU-heavy) on the blocking
            // pool, not on the async worker that other devices' sessions share.
            let loaded = {
                let (path, passphrase) = (path.clone(), passphrase.clone());
                tokio::task::spawn_blocking(move || {
                    russh::keys::load_secret_key(&path, passphrase.as_ref().map(Secret::expose))
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("loading the key failed: {e}")))
            };
            let key = loaded.map_err(|detail| SshError::Key {
                host: opts.host.clone(),
                port: opts.port,
                path: path.clone(),
                detail,
            })?;
            let hash = if key.algorithm().is_rsa() {
                handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| proto(opts, e))?
                    .flatten()
            } else {
                None
            };
            let r = handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|e| proto(opts, e))?;
            Ok(r.success())
        }
        ClientAuth::Agent => {
            let agent_err = |e: &dyn std::fmt::Display| SshError::Agent {
                host: opts.host.clone(),
                port: opts.port,
                detail: e.to_string(),
            };
            let mut agent = AgentClient::connect_env()
                .await
                .map_err(|e| agent_err(&e))?;
            let identities = agent
                .request_identities()
                .await
                .map_err(|e| agent_err(&e))?;
            for identity in identities {
                let AgentIdentity::PublicKey { key, .. } = identity else {
                    continue;
                };
                let hash = if key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .map_err(|e| proto(opts, e))?
                        .flatten()
                } else {
                    None
                };
                let r = handle
                    .authenticate_publickey_with(user, key, hash, &mut agent)
                    .await
                    .map_err(|e| agent_err(&e))?;
                if r.success() {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

async fn keyboard_interactive(
    handle: &mut Handle<DeviceHandler>,
    opts: &ConnectOptions,
    pw: &Secret,
) -> Result<bool, SshError> {
    let mut resp = handle
        .authenticate_keyboard_interactive_start(opts.username.as_str(), None::<String>)
        .await
        .map_err(|e| proto(opts, e))?;
    // The password is given once per connection: a device that prompts again after it was
    // answered has refused it, and every further answer would be one more failed login
    // towards its lockout (catalogue auth.prompts, auth.lockout).
    let mut answered = false;
    for _ in 0..MAX_KI_ROUNDS {
        match resp {
            KeyboardInteractiveAuthResponse::Success => return Ok(true),
            KeyboardInteractiveAuthResponse::Failure { .. } => return Ok(false),
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                if !prompts.is_empty() {
                    if answered {
                        return Ok(false);
                    }
                    answered = true;
                }
                let answers = prompts.iter().map(|_| pw.expose().to_string()).collect();
                resp = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .map_err(|e| proto(opts, e))?;
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsh::ReplyStatus;

    fn reply(status: ReplyStatus) -> Reply {
        Reply {
            result_id: Some("r1".into()),
            status,
            result_name: Some("ClientSecretPopulateResult".into()),
            fields: Vec::new(),
            raw: Vec::new(),
        }
    }

    #[test]
    fn the_reply_after_an_ended_body_is_judged_by_what_answered_the_dot() {
        let refused = reply(ReplyStatus::ParameterError {
            reason: Some("The secret is given as the command's body".into()),
        });
        // No answer to the `.`, refused: a multi-line device refused the empty body.
        assert_eq!(judge_either_form(&refused, 0), EitherFormVerdict::TryBody);
        // The `.` answered on its own: a slow one-line device; its refusal stands.
        assert_eq!(judge_either_form(&refused, 1), EitherFormVerdict::OneLine);
        // Accepted: the command line's own value was taken (an empty body carries none).
        let ok = reply(ReplyStatus::Ok);
        assert_eq!(judge_either_form(&ok, 0), EitherFormVerdict::OneLine);
        assert_eq!(judge_either_form(&ok, 1), EitherFormVerdict::OneLine);
    }
}
