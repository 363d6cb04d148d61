//! A raw SSH test client for the simulator: logs in with russh (password or
//! keyboard-interactive), opens a shell, sends lines and returns the exact bytes the device
//! printed, so tests can assert reply shapes byte for byte.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, KeyboardInteractiveAuthResponse};
use russh::keys::PublicKey;
use russh::keys::PublicKeyOrCertificate;
use russh::ChannelMsg;

/// Generous bound so a broken simulator fails a test instead of hanging it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct KeyRecorder(pub Arc<Mutex<Option<PublicKey>>>);

impl client::Handler for KeyRecorder {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if let PublicKeyOrCertificate::PublicKey { key, .. } = key {
            *self.0.lock().unwrap() = Some(key.clone());
        }
        Ok(true)
    }
}

pub struct RawClient {
    pub handle: client::Handle<KeyRecorder>,
    pub channel: russh::Channel<client::Msg>,
    pub buf: Vec<u8>,
    pub server_key: PublicKey,
    pub closed: bool,
}

#[derive(Debug)]
pub enum ConnectError {
    Ssh(russh::Error),
    AuthRefused,
}

impl From<russh::Error> for ConnectError {
    fn from(e: russh::Error) -> Self {
        ConnectError::Ssh(e)
    }
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    })
}

impl RawClient {
    /// Connects with password auth, requests a pty and a shell.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(addr, user, password, false, true).await
    }

    /// Connects with password auth and opens a shell with no pty (as jsxapi does).
    pub async fn connect_no_pty(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(addr, user, password, false, false).await
    }

    /// Connects with keyboard-interactive auth (answering every prompt with the password).
    pub async fn connect_kbd(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Self, ConnectError> {
        Self::connect_with(addr, user, password, true, true).await
    }

    async fn connect_with(
        addr: SocketAddr,
        user: &str,
        password: &str,
        kbd: bool,
        pty: bool,
    ) -> Result<Self, ConnectError> {
        let key = Arc::new(Mutex::new(None));
        let mut handle = client::connect(config(), addr, KeyRecorder(key.clone())).await?;
        let ok = if kbd {
            let mut r = handle
                .authenticate_keyboard_interactive_start(user, None::<String>)
                .await?;
            loop {
                match r {
                    KeyboardInteractiveAuthResponse::Success => break true,
                    KeyboardInteractiveAuthResponse::Failure { .. } => break false,
                    KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                        let answers = prompts.iter().map(|_| password.to_string()).collect();
                        r = handle
                            .authenticate_keyboard_interactive_respond(answers)
                            .await?;
                    }
                }
            }
        } else {
            handle
                .authenticate_password(user, password)
                .await?
                .success()
        };
        if !ok {
            return Err(ConnectError::AuthRefused);
        }
        let channel = handle.channel_open_session().await?;
        if pty {
            channel
                .request_pty(true, "vt100", 200, 50, 0, 0, &[])
                .await?;
        }
        channel.request_shell(true).await?;
        let server_key = key.lock().unwrap().clone().expect("server key seen");
        Ok(RawClient {
            handle,
            channel,
            buf: Vec::new(),
            server_key,
            closed: false,
        })
    }

    /// Sends raw text.
    pub async fn send(&mut self, text: &str) {
        self.channel.data(text.as_bytes()).await.expect("send");
    }

    /// Receives more bytes; false when the channel/connection ended.
    async fn fill(&mut self) -> bool {
        loop {
            match tokio::time::timeout(TIMEOUT, self.channel.wait()).await {
                Err(_) => panic!(
                    "timed out waiting for the device; got so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(None) | Ok(Some(ChannelMsg::Close)) | Ok(Some(ChannelMsg::Eof)) => {
                    self.closed = true;
                    return false;
                }
                Ok(Some(ChannelMsg::Data { data })) => {
                    self.buf.extend_from_slice(&data);
                    return true;
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Everything up to and including the first occurrence of `needle`.
    pub async fn read_until(&mut self, needle: &str) -> String {
        loop {
            if let Some(pos) = find(&self.buf, needle.as_bytes()) {
                let end = pos + needle.len();
                let out: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8(out).expect("utf-8");
            }
            if !self.fill().await {
                panic!(
                    "connection closed before {needle:?}; got: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads the banner (through the `OK` and the blank line after it).
    pub async fn read_banner(&mut self) -> String {
        self.read_until("OK\r\n\r\n").await
    }

    /// Sends a line and reads the reply through `end`.
    pub async fn cmd(&mut self, line: &str, end: &str) -> String {
        self.send(&format!("{line}\n")).await;
        self.read_until(end).await
    }

    /// Waits until the device closes the session; returns what it sent before.
    pub async fn read_to_close(&mut self) -> String {
        while self.fill().await {}
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }

    /// True if nothing arrives within `d` (used only to check a hang, with a short bound).
    pub async fn silent_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.channel.wait()).await.is_err() && self.buf.is_empty()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub const USER: &str = "admin";
pub const PASSWORD: &str = "device-pw";

/// A fleet of one device on 127.0.0.1 (port 0) with the given faults.
pub async fn one_device(
    faults: roomkey::sim::FaultPlan,
    state_dir: Option<std::path::PathBuf>,
) -> roomkey::sim::Fleet {
    let spec = roomkey::sim::SimDeviceSpec {
        name: "room-001".into(),
        addr: "127.0.0.1:0".parse().unwrap(),
        username: USER.into(),
        password: roomkey::secret::Secret::new(PASSWORD),
        faults,
    };
    roomkey::sim::Fleet::start(vec![spec], options(state_dir))
        .await
        .expect("fleet starts")
}

pub fn options(state_dir: Option<std::path::PathBuf>) -> roomkey::sim::FleetOptions {
    roomkey::sim::FleetOptions {
        state_dir,
        kdf: roomkey::kdf::KdfPool::new(2),
        boot_delay: Duration::from_millis(300),
        auth_rejection_time: Duration::from_millis(10),
        ..roomkey::sim::FleetOptions::default()
    }
}

/// Logs in to the fleet's first device and reads the banner.
pub async fn login(fleet: &roomkey::sim::Fleet) -> RawClient {
    let addr = fleet.devices()[0].addr;
    let mut c = RawClient::connect(addr, USER, PASSWORD)
        .await
        .expect("login");
    c.read_banner().await;
    c
}
