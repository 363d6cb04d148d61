//! The SSH edge: a russh client that logs in to a device, checks its host key against a
//! `known_hosts` file, opens the TSH shell and runs [`crate::tsh::TshCommand`]s one at a time,
//! each tagged with a resultId and matched to its reply by the pure
//! [`crate::tsh::ReplyReader`]. Every phase has its own timeout and the connection sends
//! keepalives, so a device that drops off the network fails instead of hanging.
//!
//! Errors always name `host:port` and never contain a password, passphrase or command
//! value.

pub mod known_hosts;
mod session;

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

pub use session::{
    judge_either_form, CommandForm, EitherFormReply, EitherFormVerdict, TshSession,
    MAX_BANNER_BYTES, MAX_REPLY_BYTES,
};

/// What to do with a host key not yet in `known_hosts`. A *changed* key always fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Unknown hosts fail (the default).
    #[default]
    Strict,
    /// Unknown hosts are added to `known_hosts` (like OpenSSH `StrictHostKeyChecking=accept-new`).
    AcceptNew,
}

/// How to authenticate.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// The `password` method; falls back to keyboard-interactive with the same secret when
    /// the device does not offer `password` (RoomOS offers keyboard-interactive).
    Password(Secret),
    /// Keyboard-interactive, answering every prompt with the secret.
    KeyboardInteractive(Secret),
    /// An OpenSSH/PEM private key file, optionally encrypted.
    KeyFile {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    /// Every identity of the agent at `SSH_AUTH_SOCK`, in order.
    Agent,
}

impl ClientAuth {
    fn method_name(&self) -> &'static str {
        match self {
            ClientAuth::Password(_) => "password",
            ClientAuth::KeyboardInteractive(_) => "keyboard-interactive",
            ClientAuth::KeyFile { .. } => "publickey (key file)",
            ClientAuth::Agent => "publickey (ssh-agent)",
        }
    }
}

/// Everything needed to open a TSH session to one device.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: ClientAuth,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    /// TCP connect plus SSH handshake.
    pub connect_timeout: Duration,
    /// Authentication.
    pub auth_timeout: Duration,
    /// Per command, from sending it to its complete reply. Also bounds the wait for login.
    pub command_timeout: Duration,
    /// Interval of SSH keepalives; after 3 unanswered ones the connection is dropped.
    /// Zero disables them.
    pub keepalive_interval: Duration,
    /// `apply --check`: the session refuses to send any command that could change the
    /// device (enforced here, below every step, so no step or playbook value can).
    pub read_only: bool,
    /// How long a command that may or may not take a body (`ClientSecret Populate`,
    /// catalogue `command.populate-form`) waits for the first byte of its reply before the
    /// session ends a body the device may be waiting for (see
    /// [`TshSession::run_either_form`]). Capped at half the command timeout.
    pub body_wait: Duration,
}

/// The default of [`ConnectOptions::body_wait`]: a device answers a one-line command in
/// well under a second; scrypt for a populate JWE takes a device a fraction of one.
pub const DEFAULT_BODY_WAIT: Duration = Duration::from_secs(5);

impl ConnectOptions {
    /// Options with the usual defaults: port 22, strict host keys, 10 s connect and auth,
    /// 30 s per command, 15 s keepalive.
    pub fn new(host: impl Into<String>, username: impl Into<String>, auth: ClientAuth) -> Self {
        ConnectOptions {
            host: host.into(),
            port: 22,
            username: username.into(),
            auth,
            known_hosts: PathBuf::from(".roomkey/known_hosts"),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(15),
            read_only: false,
            body_wait: DEFAULT_BODY_WAIT,
        }
    }
}

/// The phase a timeout or disconnect happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Auth,
    Login,
    Command,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Auth => "authentication",
            Phase::Login => "login",
            Phase::Command => "command",
        })
    }
}

/// Why a session could not be opened or a command not completed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}:{port}: cannot connect: {detail}")]
    Connect {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("{host}:{port}: timed out during {phase}")]
    Timeout {
        host: String,
        port: u16,
        phase: Phase,
    },
    #[error(
        "{host}:{port}: HOST KEY CHANGED: known_hosts {known_hosts}:{line} has {expected_fp}, \
         the device presented {presented_fp}. This may be an attack or a replaced device; \
         if the change is expected, remove the old line and reconnect"
    )]
    HostKeyChanged {
        host: String,
        port: u16,
        expected_fp: String,
        presented_fp: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error(
        "{host}:{port}: unknown host key {presented_fp} (not in {known_hosts}); accept it with \
         --accept-new-host-keys, or add it after checking: ssh-keyscan -p {port} {host} >> {known_hosts}"
    )]
    HostKeyUnknown {
        host: String,
        port: u16,
        presented_fp: String,
        known_hosts: PathBuf,
    },
    #[error("{host}:{port}: host key {presented_fp} is marked @revoked in {known_hosts}:{line}")]
    HostKeyRevoked {
        host: String,
        port: u16,
        presented_fp: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("{host}:{port}: cannot use known_hosts file {known_hosts}: {detail}")]
    KnownHosts {
        host: String,
        port: u16,
        known_hosts: PathBuf,
        detail: String,
    },
    #[error("{host}:{port}: authentication rejected for user {username} ({method})")]
    AuthRejected {
        host: String,
        port: u16,
        username: String,
        method: &'static str,
    },
    #[error("{host}:{port}: cannot load SSH key {path}: {detail}")]
    Key {
        host: String,
        port: u16,
        path: PathBuf,
        detail: String,
    },
    #[error("{host}:{port}: ssh-agent: {detail}")]
    Agent {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("{host}:{port}: connection closed during {phase}{}", detail_suffix(.detail))]
    Disconnected {
        host: String,
        port: u16,
        phase: Phase,
        detail: String,
    },
    #[error(
        "{host}:{port}: refused to send `{command}`: apply --check sends only commands that \
         change nothing"
    )]
    ReadOnly {
        host: String,
        port: u16,
        command: String,
    },
    #[error("{host}:{port}: protocol error: {detail}")]
    Protocol {
        host: String,
        port: u16,
        detail: String,
    },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

impl SshError {
    /// The device could not be reached or did not answer in time before login: reported
    /// as "unreachable" rather than "failed".
    pub fn is_unreachable(&self) -> bool {
        match self {
            SshError::Connect { .. } => true,
            SshError::Timeout { phase, .. } => *phase == Phase::Connect,
            SshError::Disconnected { phase, .. } => *phase == Phase::Connect,
            _ => false,
        }
    }

    /// A host key problem (changed, unknown or revoked): a distinct status for the fleet.
    pub fn is_host_key(&self) -> bool {
        matches!(
            self,
            SshError::HostKeyChanged { .. }
                | SshError::HostKeyUnknown { .. }
                | SshError::HostKeyRevoked { .. }
        )
    }

    /// Worth another attempt later: the device was unreachable, slow before login, or the
    /// connection dropped. Host key, credential, key file and command-timeout failures are
    /// not (a timed-out command may still have been applied; re-check before resending).
    pub fn is_retryable(&self) -> bool {
        match self {
            SshError::Connect { .. } | SshError::Disconnected { .. } => true,
            SshError::Timeout { phase, .. } => *phase != Phase::Command,
            _ => false,
        }
    }

    /// Credentials were refused.
    pub fn is_auth(&self) -> bool {
        matches!(self, SshError::AuthRejected { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_host_port_and_classify() {
        let changed = SshError::HostKeyChanged {
            host: "10.0.0.5".into(),
            port: 2222,
            expected_fp: "SHA256:old".into(),
            presented_fp: "SHA256:new".into(),
            known_hosts: PathBuf::from("/k/known_hosts"),
            line: 3,
        };
        let msg = changed.to_string();
        assert!(msg.starts_with("10.0.0.5:2222: HOST KEY CHANGED"), "{msg}");
        assert!(msg.contains("/k/known_hosts:3") && msg.contains("SHA256:new"));
        assert!(changed.is_host_key() && !changed.is_retryable() && !changed.is_unreachable());

        let t = SshError::Timeout {
            host: "h".into(),
            port: 22,
            phase: Phase::Connect,
        };
        assert_eq!(t.to_string(), "h:22: timed out during connect");
        assert!(t.is_unreachable() && t.is_retryable());
        let t = SshError::Timeout {
            host: "h".into(),
            port: 22,
            phase: Phase::Command,
        };
        assert!(!t.is_unreachable() && !t.is_retryable());

        let d = SshError::Disconnected {
            host: "h".into(),
            port: 22,
            phase: Phase::Command,
            detail: String::new(),
        };
        assert_eq!(d.to_string(), "h:22: connection closed during command");
        assert!(d.is_retryable());

        let a = SshError::AuthRejected {
            host: "h".into(),
            port: 22,
            username: "admin".into(),
            method: "password",
        };
        assert!(a.is_auth() && !a.is_retryable());
    }

    #[test]
    fn options_debug_hides_the_password() {
        let o = ConnectOptions::new("h", "admin", ClientAuth::Password(Secret::new("pw-xyzzy")));
        assert!(!format!("{o:?}").contains("xyzzy"));
        assert_eq!(o.port, 22);
        assert_eq!(o.host_key_policy, HostKeyPolicy::Strict);
    }
}
