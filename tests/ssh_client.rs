//! Integration tests of `roomkey::ssh::TshSession` over real SSH on 127.0.0.1 against a
//! small scripted russh server (`support`): host-key policies, auth methods, login banner
//! variants, OK-first replies, resultId matching, events, timeouts and disconnects.

use std::time::Duration;

use roomkey::secret::Secret;
use roomkey::ssh::{ClientAuth, ConnectOptions, HostKeyPolicy, Phase, SshError, TshSession};
use roomkey::tsh::{ReplyStatus, TshCommand};

mod support {
    //! A scripted TSH-speaking SSH server: prints a banner, answers `echo off` with `OK`,
    //! collects multi-line bodies (commands containing ` Add`) and answers every other
    //! command through the test's `respond` closure. Not a simulator: a fixture.

    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    use russh::keys::{PrivateKey, PublicKey};
    use russh::server::{self, Auth, Msg, Response, Session, VerifiedPublicKey};
    use russh::{Channel, ChannelId, MethodKind, MethodSet};

    pub const PASSWORD: &str = "s3cret-pw";

    pub const BANNER: &str = "Welcome to room-301\nCisco Codec Release RoomOS 11.14.1.5 a1b2c3d\n\
SW Release Date: 2024-05-10\n*r Login successful\n\nOK\n\n";

    pub enum Action {
        /// Send this text (`\n` becomes `\r\n`).
        Send(String),
        /// Never answer.
        Silent,
        /// Send this text, then close the channel.
        SendThenClose(String),
    }

    pub type Respond = dyn Fn(&str, &str, Option<&str>) -> Action + Send + Sync;

    pub struct Script {
        pub banner: String,
        pub methods: Vec<MethodKind>,
        pub client_key: Option<PublicKey>,
        /// `(command line without tag, resultId, body)` → what to send.
        pub respond: Box<Respond>,
    }

    impl Default for Script {
        fn default() -> Self {
            Script {
                banner: BANNER.to_string(),
                methods: vec![MethodKind::Password, MethodKind::KeyboardInteractive],
                client_key: None,
                respond: Box::new(|_, id, _| {
                    Action::Send(format!(
                        "OK\n*r Result (status=OK): \n** resultId: \"{id}\"\n** end\n"
                    ))
                }),
            }
        }
    }

    pub fn key(seed: u8) -> PrivateKey {
        PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])),
            "",
        )
        .unwrap()
    }

    pub struct Server {
        pub addr: SocketAddr,
        pub host_key: PublicKey,
        /// Every line received after the shell started (bodies included).
        pub received: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn start(seed: u8, script: Script) -> Server {
        let host = key(seed);
        let host_key = host.public_key().clone();
        let config = Arc::new(server::Config {
            keys: vec![host],
            methods: MethodSet::from(&script.methods[..]),
            auth_rejection_time: std::time::Duration::ZERO,
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            inactivity_timeout: None,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let handler = Conn {
                    script: script.clone(),
                    received: rec.clone(),
                    buf: Vec::new(),
                    body: None,
                };
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(running) = server::run_stream(config, socket, handler).await {
                        let _ = running.await;
                    }
                });
            }
        });
        Server {
            addr,
            host_key,
            received,
            task,
        }
    }

    struct Conn {
        script: Arc<Script>,
        received: Arc<Mutex<Vec<String>>>,
        buf: Vec<u8>,
        /// `(command, id, body lines)` while reading a multi-line body.
        body: Option<(String, String, Vec<String>)>,
    }

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    impl Conn {
        fn act(&self, channel: ChannelId, session: &mut Session, action: Action) {
            match action {
                Action::Send(t) => {
                    let _ = session.data(channel, crlf(&t));
                }
                Action::Silent => {}
                Action::SendThenClose(t) => {
                    let _ = session.data(channel, crlf(&t));
                    let _ = session.eof(channel);
                    let _ = session.close(channel);
                }
            }
        }

        fn line(&mut self, channel: ChannelId, session: &mut Session, line: String) {
            self.received.lock().unwrap().push(line.clone());
            if let Some((cmd, id, mut body)) = self.body.take() {
                if line == "." {
                    let text = body.join("\n");
                    let action = (self.script.respond)(&cmd, &id, Some(&text));
                    self.act(channel, session, action);
                } else {
                    body.push(line);
                    self.body = Some((cmd, id, body));
                }
                return;
            }
            if line == "echo off" {
                let _ = session.data(channel, b"OK\r\n".to_vec());
                return;
            }
            let (cmd, id) = match line.split_once(" | resultId=\"") {
                Some((c, rest)) => (c.to_string(), rest.trim_end_matches('"').to_string()),
                None => (line.clone(), String::new()),
            };
            if cmd.contains(" Add") {
                self.body = Some((cmd, id, Vec::new()));
                return;
            }
            let action = (self.script.respond)(&cmd, &id, None);
            self.act(channel, session, action);
        }
    }

    impl server::Handler for Conn {
        type Error = russh::Error;

        async fn auth_password(
            &mut self,
            _user: &str,
            password: &str,
        ) -> Result<Auth, Self::Error> {
            Ok(if password == PASSWORD {
                Auth::Accept
            } else {
                Auth::reject()
            })
        }

        async fn auth_keyboard_interactive<'a>(
            &'a mut self,
            _user: &str,
            _submethods: &str,
            response: Option<Response<'a>>,
        ) -> Result<Auth, Self::Error> {
            match response {
                None => Ok(Auth::Partial {
                    name: "".into(),
                    instructions: "".into(),
                    prompts: vec![("Password: ".into(), false)].into(),
                }),
                Some(mut r) => Ok(match r.next() {
                    Some(answer) if &answer[..] == PASSWORD.as_bytes() => Auth::Accept,
                    _ => Auth::reject(),
                }),
            }
        }

        async fn auth_publickey(
            &mut self,
            _user: &str,
            key: VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(match &self.script.client_key {
                Some(k) if k.key_data() == key.public_key.key_data() => Auth::Accept,
                _ => Auth::reject(),
            })
        }

        async fn channel_open_session(
            &mut self,
            _channel: Channel<Msg>,
            reply: server::ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn shell_request(
            &mut self,
            channel: ChannelId,
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            session.data(channel, crlf(&self.script.banner))?;
            Ok(())
        }

        async fn data(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            self.buf.extend_from_slice(data);
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut raw: Vec<u8> = self.buf.drain(..=pos).collect();
                raw.pop();
                if raw.last() == Some(&b'\r') {
                    raw.pop();
                }
                let line = String::from_utf8_lossy(&raw).into_owned();
                self.line(channel, session, line);
            }
            Ok(())
        }
    }
}

use support::{Action, Script};

fn opts(
    server: &support::Server,
    dir: &tempfile::TempDir,
    auth: ClientAuth,
    policy: HostKeyPolicy,
) -> ConnectOptions {
    let mut o = ConnectOptions::new("127.0.0.1", "admin", auth);
    o.port = server.addr.port();
    o.known_hosts = dir.path().join("known_hosts");
    o.host_key_policy = policy;
    o.connect_timeout = Duration::from_secs(10);
    o.auth_timeout = Duration::from_secs(10);
    o.command_timeout = Duration::from_secs(10);
    o
}

fn password() -> ClientAuth {
    ClientAuth::Password(Secret::new(support::PASSWORD))
}

fn trust(server: &support::Server, dir: &tempfile::TempDir) {
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        server.addr.port(),
        server.host_key.to_openssh().unwrap()
    );
    std::fs::write(dir.path().join("known_hosts"), line).unwrap();
}

fn show_reply(id: &str) -> String {
    format!(
        "OK\n*r ServicesShowResult (status=OK): \n\
*r ServicesShowResult Details 1 Fingerprint: \"ce4eb947c2c17d58bbc08303bf278464beebf2af\"\n\
*r ServicesShowResult Details 1 UsedFor: \"WebexIdentity\"\n\
** resultId: \"{id}\"\n** end\n"
    )
}

#[tokio::test]
async fn password_login_banner_and_ok_first_show() {
    let server = support::start(
        1,
        Script {
            respond: Box::new(|cmd, id, _| {
                assert_eq!(cmd, "xCommand Security Certificates Services Show");
                Action::Send(show_reply(id))
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    assert_eq!(
        s.banner(),
        "Welcome to room-301\nCisco Codec Release RoomOS 11.14.1.5 a1b2c3d\n\
SW Release Date: 2024-05-10\n*r Login successful"
    );
    let cmd = TshCommand::xcommand("Security Certificates Services Show").unwrap();
    let r = s.run(&cmd).await.unwrap();
    assert!(r.is_ok());
    assert_eq!(r.result_id.as_deref(), Some("r1"));
    assert_eq!(
        r.get("Details 1 Fingerprint"),
        Some("ce4eb947c2c17d58bbc08303bf278464beebf2af")
    );
    let r = s.run(&cmd).await.unwrap();
    assert_eq!(r.result_id.as_deref(), Some("r2"));
    s.close().await;
    let received = server.received.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![
            "echo off",
            "xCommand Security Certificates Services Show | resultId=\"r1\"",
            "xCommand Security Certificates Services Show | resultId=\"r2\"",
        ]
    );
}

#[tokio::test]
async fn keyboard_interactive_only_device() {
    let server = support::start(
        2,
        Script {
            methods: vec![russh::MethodKind::KeyboardInteractive],
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    // explicit keyboard-interactive
    let ki = ClientAuth::KeyboardInteractive(Secret::new(support::PASSWORD));
    let s = TshSession::connect(&opts(&server, &dir, ki, HostKeyPolicy::Strict))
        .await
        .unwrap();
    s.close().await;
    // `Password` falls back to keyboard-interactive
    let s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    s.close().await;
}

#[tokio::test]
async fn wrong_password_is_rejected_without_leaking_it() {
    let server = support::start(3, Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    for auth in [
        ClientAuth::Password(Secret::new("hunter2-wrong")),
        ClientAuth::KeyboardInteractive(Secret::new("hunter2-wrong")),
    ] {
        let err = TshSession::connect(&opts(&server, &dir, auth, HostKeyPolicy::Strict))
            .await
            .unwrap_err();
        assert!(err.is_auth(), "{err}");
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{}", server.addr.port())));
    }
    assert!(server.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn key_file_auth() {
    let client_key = support::key(42);
    let server = support::start(
        4,
        Script {
            methods: vec![russh::MethodKind::PublicKey],
            client_key: Some(client_key.public_key().clone()),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let path = dir.path().join("id_ed25519");
    let pem = client_key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .unwrap();
    std::fs::write(&path, pem.as_bytes()).unwrap();
    let auth = ClientAuth::KeyFile {
        path: path.clone(),
        passphrase: None,
    };
    let s = TshSession::connect(&opts(&server, &dir, auth, HostKeyPolicy::Strict))
        .await
        .unwrap();
    s.close().await;
    // another key is refused
    let other = dir.path().join("other");
    std::fs::write(
        &other,
        support::key(43)
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let auth = ClientAuth::KeyFile {
        path: other,
        passphrase: None,
    };
    let err = TshSession::connect(&opts(&server, &dir, auth, HostKeyPolicy::Strict))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
}

/// `auth: { agent: true }` against a real `ssh-agent` (OpenSSH): the agent's key logs in,
/// and the key never leaves the agent.
#[tokio::test]
async fn agent_auth_with_a_real_ssh_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // Without -D, ssh-agent forks and its parent exits once the socket is listening.
    let started = std::process::Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .arg("-s")
        .output();
    let out = match started {
        Ok(out) if out.status.success() => out,
        _ => {
            // CI installs openssh-client (.ci/run): there, a skipped check is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide ssh-agent"
            );
            eprintln!("SKIP: ssh-agent is not available");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = text
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    struct KillAgent(i32);
    impl Drop for KillAgent {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg(self.0.to_string())
                .status();
        }
    }
    let _agent = KillAgent(pid);

    let client_key = support::key(44);
    let mut agent = russh::keys::agent::client::AgentClient::connect_uds(&sock)
        .await
        .unwrap();
    agent.add_identity(&client_key, &[]).await.unwrap();
    drop(agent);
    // Only this test reads SSH_AUTH_SOCK, which `ClientAuth::Agent` takes from the
    // environment as every SSH client does.
    std::env::set_var("SSH_AUTH_SOCK", &sock);

    let server = support::start(
        16,
        Script {
            methods: vec![russh::MethodKind::PublicKey],
            client_key: Some(client_key.public_key().clone()),
            ..Default::default()
        },
    )
    .await;
    trust(&server, &dir);
    let s = TshSession::connect(&opts(
        &server,
        &dir,
        ClientAuth::Agent,
        HostKeyPolicy::Strict,
    ))
    .await
    .unwrap();
    s.close().await;

    // A device that knows another key refuses the agent's.
    let other = support::start(
        17,
        Script {
            methods: vec![russh::MethodKind::PublicKey],
            client_key: Some(support::key(45).public_key().clone()),
            ..Default::default()
        },
    )
    .await;
    trust(&other, &dir);
    let err = TshSession::connect(&opts(
        &other,
        &dir,
        ClientAuth::Agent,
        HostKeyPolicy::Strict,
    ))
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err}");
}

#[tokio::test]
async fn unknown_host_strict_then_accept_new_then_known() {
    let server = support::start(5, Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    let err = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap_err();
    match &err {
        SshError::HostKeyUnknown { presented_fp, .. } => {
            assert!(presented_fp.starts_with("SHA256:"))
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("--accept-new-host-keys"));
    assert!(err.to_string().contains("ssh-keyscan"));
    assert!(!kh.exists());

    let s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::AcceptNew))
        .await
        .unwrap();
    s.close().await;
    let text = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(
        text,
        format!(
            "[127.0.0.1]:{} {}\n",
            server.addr.port(),
            server.host_key.to_openssh().unwrap()
        )
    );
    let s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    s.close().await;
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), text);
}

#[tokio::test]
async fn changed_host_key_fails_even_with_accept_new() {
    let server = support::start(6, Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let old = support::key(99);
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        server.addr.port(),
        old.public_key().to_openssh().unwrap()
    );
    std::fs::write(dir.path().join("known_hosts"), &line).unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let err = TshSession::connect(&opts(&server, &dir, password(), policy))
            .await
            .unwrap_err();
        match &err {
            SshError::HostKeyChanged {
                expected_fp,
                presented_fp,
                line,
                ..
            } => {
                assert_ne!(expected_fp, presented_fp);
                assert_eq!(*line, 1);
            }
            other => panic!("{other}"),
        }
        assert!(err.is_host_key());
    }
    // file untouched, nothing received
    assert_eq!(
        std::fs::read_to_string(dir.path().join("known_hosts")).unwrap(),
        line
    );
    assert!(server.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn custom_banner_with_ok_lines_and_last_login() {
    let server = support::start(
        7,
        Script {
            banner: "\n  Room 12 - authorised use only. OK\nOK\n*r Login successful\n\nOK\n\
Last login from 10.0.0.5 at 2024-05-10 13:14:47\n"
                .into(),
            respond: Box::new(|_, id, _| {
                Action::Send(format!(
                    "*s Audio Volume: 50\n** resultId: \"{id}\"\n** end\n\nOK\n"
                ))
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    assert_eq!(
        s.banner(),
        "  Room 12 - authorised use only. OK\nOK\n*r Login successful"
    );
    let r = s
        .run(&TshCommand::xstatus("Audio Volume").unwrap())
        .await
        .unwrap();
    assert_eq!(r.get("Audio Volume"), Some("50"));
    s.close().await;
}

#[tokio::test]
async fn multiline_add_sends_exact_body() {
    let server = support::start(
        8,
        Script {
            respond: Box::new(|cmd, id, body| {
                assert_eq!(
                    cmd,
                    "xCommand Security Certificates Services Add IsEncrypted: True"
                );
                assert_eq!(body, Some("eyJhbGciOiJkaXIifQ..aa.bb.cc"));
                Action::Send(format!(
                    "OK\n*r ServicesAddResult (status=OK): \n** resultId: \"{id}\"\n** end\n"
                ))
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    let cmd = TshCommand::xcommand("Security Certificates Services Add")
        .unwrap()
        .param_literal("IsEncrypted", "True")
        .unwrap()
        .body_secret(&Secret::new("eyJhbGciOiJkaXIifQ..aa.bb.cc\n"))
        .unwrap();
    let r = s.run(&cmd).await.unwrap();
    assert!(r.is_ok());
    assert_eq!(r.result_name.as_deref(), Some("ServicesAddResult"));
    s.close().await;
}

#[tokio::test]
async fn events_and_stray_replies_are_skipped() {
    let server = support::start(
        9,
        Script {
            respond: Box::new(|_, id, _| {
                Action::Send(format!(
                    "*e Standby: \"Off\"\n** end\n\
OK\n*r ServicesAddResult (status=OK): \n** resultId: \"r99\"\n** end\n\
OK\n*e CallSuccessful CallId: 3\n** end\n\
*r ServicesActivateResult (status=Error): \n\
*r ServicesActivateResult Reason: \"No certificate with matching fingerprint\"\n\
** resultId: \"{id}\"\n** end\n"
                ))
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    let cmd = TshCommand::xcommand("Security Certificates Services Activate")
        .unwrap()
        .param_literal("Purpose", "HTTPS")
        .unwrap()
        .param("Fingerprint", "0a0b")
        .unwrap();
    let r = s.run(&cmd).await.unwrap();
    assert_eq!(r.result_id.as_deref(), Some("r1"));
    assert_eq!(
        r.status,
        ReplyStatus::Error {
            reason: Some("No certificate with matching fingerprint".into())
        }
    );
    assert_eq!(
        s.take_events(),
        vec!["*e Standby: \"Off\"", "*e CallSuccessful CallId: 3"]
    );
    s.close().await;
}

#[tokio::test]
async fn command_timeout_then_session_refuses_more() {
    let server = support::start(
        10,
        Script {
            respond: Box::new(|_, _, _| Action::Silent),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut o = opts(&server, &dir, password(), HostKeyPolicy::Strict);
    o.command_timeout = Duration::from_millis(300);
    let mut s = TshSession::connect(&o).await.unwrap();
    let cmd = TshCommand::xstatus("Audio Volume").unwrap();
    let err = s.run(&cmd).await.unwrap_err();
    assert!(
        matches!(
            err,
            SshError::Timeout {
                phase: Phase::Command,
                ..
            }
        ),
        "{err}"
    );
    let err = s.run(&cmd).await.unwrap_err();
    assert!(matches!(err, SshError::Protocol { .. }), "{err}");
    s.close().await;
}

#[tokio::test]
async fn disconnect_mid_reply() {
    let server = support::start(
        11,
        Script {
            respond: Box::new(|_, _, _| {
                Action::SendThenClose("OK\n*r ServicesAddResult (status=OK): \n*r Serv".into())
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    let cmd = TshCommand::xcommand("Security Certificates Services Show").unwrap();
    let err = s.run(&cmd).await.unwrap_err();
    match &err {
        SshError::Disconnected { phase, detail, .. } => {
            assert_eq!(*phase, Phase::Command);
            assert!(detail.contains("incomplete"), "{detail}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn login_never_ready_times_out() {
    let server = support::start(
        12,
        Script {
            banner: "Welcome\nOK\n".into(), // no "*r Login successful"
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut o = opts(&server, &dir, password(), HostKeyPolicy::Strict);
    o.command_timeout = Duration::from_millis(300);
    let err = TshSession::connect(&o).await.unwrap_err();
    assert!(
        matches!(
            err,
            SshError::Timeout {
                phase: Phase::Login,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connect_timeout_and_refused() {
    // a TCP listener that never speaks SSH
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut o = ConnectOptions::new("127.0.0.1", "admin", password());
    o.port = port;
    o.known_hosts = dir.path().join("known_hosts");
    o.connect_timeout = Duration::from_millis(300);
    let err = TshSession::connect(&o).await.unwrap_err();
    assert!(
        matches!(
            err,
            SshError::Timeout {
                phase: Phase::Connect,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_unreachable());
    drop(listener);
    let err = TshSession::connect(&o).await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
}

/// A device that drops off the network mid-session (packets vanish, no FIN, no RST) is
/// caught by SSH keepalives long before the command timeout, as a dropped connection (which
/// the engine retries), not as a hang.
#[tokio::test]
async fn keepalive_detects_a_device_that_drops_off_the_network() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = support::start(
        18,
        Script {
            respond: Box::new(|_, _, _| Action::Silent),
            ..Default::default()
        },
    )
    .await;
    // A loopback proxy in front of the device that can turn into a black hole.
    let blackhole = Arc::new(AtomicBool::new(false));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = server.addr;
    let hole = Arc::clone(&blackhole);
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let device = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (dr, dw) = device.into_split();
        let pump = |hole: Arc<AtomicBool>,
                    mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf| async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return (from, to),
                    Ok(n) if !hole.load(Ordering::SeqCst) => {
                        if to.write_all(&buf[..n]).await.is_err() {
                            return (from, to);
                        }
                    }
                    Ok(_) => {} // swallowed: the network is gone, the sockets stay open
                }
            }
        };
        let up = tokio::spawn(pump(Arc::clone(&hole), cr, dw));
        let down = tokio::spawn(pump(hole, dr, cw));
        let _ = tokio::join!(up, down);
    });

    let dir = tempfile::tempdir().unwrap();
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        proxy_addr.port(),
        server.host_key.to_openssh().unwrap()
    );
    std::fs::write(dir.path().join("known_hosts"), line).unwrap();
    let mut o = ConnectOptions::new("127.0.0.1", "admin", password());
    o.port = proxy_addr.port();
    o.known_hosts = dir.path().join("known_hosts");
    o.host_key_policy = HostKeyPolicy::Strict;
    o.connect_timeout = Duration::from_secs(10);
    o.auth_timeout = Duration::from_secs(10);
    // Far longer than the test may take: only keepalives can end the command.
    o.command_timeout = Duration::from_secs(3600);
    o.keepalive_interval = Duration::from_millis(200);
    let mut s = TshSession::connect(&o).await.unwrap();

    blackhole.store(true, Ordering::SeqCst);
    let cmd = TshCommand::xstatus("Audio Volume").unwrap();
    let err = s.run(&cmd).await.unwrap_err();
    assert!(
        matches!(
            err,
            SshError::Disconnected {
                phase: Phase::Command,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable(), "{err}");
}

/// A device that never ends its reply is cut off at `MAX_REPLY_BYTES` ("reply too large"),
/// not buffered without end; the session refuses further commands.
#[tokio::test]
async fn endless_reply_is_refused_as_too_large() {
    let server = support::start(
        40,
        Script {
            respond: Box::new(|_, _, _| {
                let line = "*r ServicesShowResult Details 1 Fingerprint: \"00\"\n";
                Action::Send(format!(
                    "OK\n{}",
                    line.repeat(roomkey::ssh::MAX_REPLY_BYTES / line.len() + 64)
                ))
            }),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let mut s = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap();
    let cmd = TshCommand::xcommand("Security Certificates Services Show").unwrap();
    let err = s.run(&cmd).await.unwrap_err();
    assert!(
        matches!(&err, SshError::Protocol { detail, .. } if detail.contains("reply too large")),
        "{err}"
    );
    assert!(s.run(&cmd).await.is_err(), "the session is not reused");
}

/// A banner past `MAX_BANNER_BYTES` before the login is ready fails the connection.
#[tokio::test]
async fn endless_banner_is_refused_as_too_large() {
    let server = support::start(
        41,
        Script {
            banner: "Welcome to the room\n".repeat(roomkey::ssh::MAX_BANNER_BYTES / 20 + 10),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    trust(&server, &dir);
    let err = TshSession::connect(&opts(&server, &dir, password(), HostKeyPolicy::Strict))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SshError::Protocol { detail, .. } if detail.contains("banner too large")),
        "{err}"
    );
}
