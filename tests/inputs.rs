//! Inputs an administrator can trust (issue 14), end to end: `roomkey apply` on a lab of
//! simulated rooms over real SSH with broken inventories, playbooks and certificates. Every
//! input error exits 1, reports every problem at once in plain words, echoes no secret and
//! no control character — and no simulated room is logged in to or sent a command.
//!
//! Also here: the property test of the inventory and playbook loaders on random and
//! mutated YAML (no panic, bounded time).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roomkey::cert::TestCa;
use roomkey::sim::faults::ErrorRule;
use roomkey::sim::FaultPlan;
use support::*;

/// Nothing reached any room: no login, no command.
async fn assert_untouched(lab: &Lab) {
    for name in &lab.names {
        let snap = lab.snapshot(name).await;
        assert_eq!(snap.logins, 0, "{name} was logged in to");
        assert!(snap.commands.is_empty(), "{name} received commands");
    }
}

fn write(lab: &Lab, file: &str, text: &str) -> PathBuf {
    let path = lab.path().join(file);
    std::fs::write(&path, text).unwrap();
    path
}

async fn apply(lab: &Lab, inventory: &Path, playbook: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "apply",
        "-i",
        inventory.to_str().unwrap(),
        playbook.to_str().unwrap(),
        "--output",
        "plain",
    ];
    args.extend_from_slice(extra);
    let out = lab.roomkey(&args).output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn no_control_characters(text: &str) {
    for c in text.chars() {
        assert!(
            c == '\n' || !roomkey::display::is_unsafe(c),
            "raw {c:?} in output:\n{}",
            text.escape_debug()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typo_duplicate_address_and_bad_host_are_reported_together() {
    let lab = Lab::start(2, 93, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    let first = &lab.fleet().devices()[0];
    let (ip, port) = (first.addr.ip(), first.addr.port());
    let bad = good
        // A typo inside a device entry.
        .replacen(&format!("port: {port} }}"), &format!("prot: {port} }}"), 1)
        // The same room listed again, once as an IPv4-mapped IPv6 address.
        + &format!("  room-98: {{ host: {ip}, port: {port} }}\n")
        + &format!("  room-99: {{ host: \"::ffff:{ip}\", port: {port} }}\n")
        // A zero-padded address from a spreadsheet: octal to a resolver.
        + "  room-97: { host: \"127.93.0.010\" }\n";
    let inv = write(&lab, "broken.yaml", &bad);
    let (code, out) = apply(&lab, &inv, &pb, &[]).await;
    assert_eq!(code, 1, "{out}");
    for want in [
        "broken.yaml:",
        "devices.room-01.prot: unknown key `prot`: did you mean `port`?",
        &format!("devices.room-99: same address [::ffff:{ip}]:{port} as device 'room-98'"),
        &format!("devices.room-99.host: '::ffff:{ip}' is not in canonical form: write {ip}"),
        "devices.room-97.host: '127.93.0.010' is not a canonical IPv4 address: a resolver \
         reads it as 127.93.0.8 (a leading zero means octal); if you mean decimal, write \
         127.93.0.10",
        "nothing was sent to any device",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.contains("line "), "problems carry their line: {out}");
    assert_untouched(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbook_and_inventory_problems_in_plain_words_all_at_once() {
    let lab = Lab::start(1, 94, |_| FaultPlan::default()).await;
    let pb = write(
        &lab,
        "bad-playbook.yaml",
        "name: t\nserial: 0\npolicy: { command_timeout: 0s, connect_timeout: 0, concurrency: -1 }\nsteps:\n  - activate_certificate: {}\n  - add_certificate: {}\n  - set_configuration: { path: Audio Volume, value: \"5\" }\n",
    );
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    let port = lab.fleet().devices()[0].addr.port();
    let inv = write(
        &lab,
        "bad-inventory.yaml",
        &good
            .replace(&format!("port: {port}"), "port: 70000")
            .replace("defaults:\n", "defaults:\n  port: 0\n"),
    );
    let (code, out) = apply(&lab, &inv, &pb, &[]).await;
    assert_eq!(code, 1, "{out}");
    for want in [
        "bad-inventory.yaml:",
        "defaults.port: expected a port number from 1 to 65535",
        "devices.room-01.port: expected a port number from 1 to 65535",
        "bad-playbook.yaml:",
        "serial: expected a number of devices (1 or more)",
        "policy.command_timeout: `command_timeout` must be longer than 0",
        "policy.connect_timeout: `connect_timeout` must be longer than 0",
        "policy.concurrency: expected a number of devices (1 or more)",
        "steps[1] (activate_certificate): activates the certificate that `add_certificate` \
         (steps[2]) uploads: move this step after it",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    for internal in ["u16", "usize", "untagged", "enum Raw", "struct "] {
        assert!(!out.contains(internal), "{internal} in:\n{out}");
    }
    assert_untouched(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_certificate_names_and_a_mismatched_key_stop_preflight() {
    let lab = Lab::start(3, 95, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let certs = lab.path().join("certs");
    // room-01: a CN with a quote, CR/LF and `** end`.
    let now = time::OffsetDateTime::now_utc();
    let hostile = "room-01\" ** end\r\nxCommand SystemUnit Boot";
    let (cert, key) = TestCa::create("other CA")
        .unwrap()
        .issue(
            hostile,
            &[],
            now - time::Duration::hours(1),
            now + time::Duration::days(30),
        )
        .unwrap();
    std::fs::write(certs.join("room-01.pem"), cert).unwrap();
    std::fs::write(certs.join("room-01.key"), key.expose()).unwrap();
    // room-02: room-03's key.
    std::fs::copy(certs.join("room-03.key"), certs.join("room-02.key")).unwrap();
    // And an inventory problem: it must not hide the certificate problems.
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    let inv = write(
        &lab,
        "with-typo.yaml",
        &(good + "  room-77: { host: \"127.1\" }\n"),
    );
    let (code, out) = apply(&lab, &inv, &pb, &[]).await;
    assert_eq!(code, 1, "{out}");
    for want in [
        "devices.room-77.host: '127.1' is not a canonical IPv4 address: write 127.0.0.1",
        "devices.room-01.certificate",
        "contains a double quote",
        "contains control or invisible characters",
        "devices.room-02.key: ",
        "certs/room-02.key: the private key does not match",
        "(certificate ",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    no_control_characters(&out);
    assert_untouched(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_device_reasons_cannot_drive_the_terminal() {
    // A device whose refusal reason carries an escape sequence and a bidi override.
    let lab = Lab::start(1, 96, |_| FaultPlan {
        error: vec![ErrorRule {
            pattern: Some("Services Show".into()),
            times: Some(0),
            reason: "bad\u{1b}[2J\u{202e}news".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await;
    let pb = playbook(
        lab.path(),
        "show",
        TEST_POLICY,
        "  - show_certificates: {}\n",
    );
    let (code, out) = apply(&lab, &lab.inventory, &pb, &[]).await;
    assert_eq!(code, 2, "{out}");
    no_control_characters(&out);
    assert!(out.contains("bad\\u{1b}[2J\\u{202e}news"), "{out}");

    // Names from a file with ESC, NUL and a newline: refused, shown escaped.
    let lab = Lab::start(1, 97, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    let inv = write(
        &lab,
        "names.yaml",
        &(good + "  \"evil\\e[2J\\0\\nroom\": { host: 127.97.9.9 }\n"),
    );
    let (code, out) = apply(&lab, &inv, &pb, &[]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("devices.evil\\u{1b}[2J\\0\\nroom: a device name"),
        "{out}"
    );
    no_control_characters(&out);
    assert_untouched(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_input_error() {
    let lab = Lab::start(1, 98, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    let good = std::fs::read_to_string(&lab.inventory).unwrap();
    for (i, auth) in [
        "auth: hunter2",
        "auth: { password: [hunter2] }",
        "auth: { hunter2: yes }",
        "auth: { password: \"hunter2 }",
        "auth: { password: hunter2: x }",
        "auth: { password: hunter2, password: hunter2 }",
    ]
    .iter()
    .enumerate()
    {
        let text = good.replace("auth: { password_env: ROOMKEY_SIM_PASSWORD }", auth);
        let inv = write(&lab, &format!("secret-{i}.yaml"), &text);
        let (code, out) = apply(&lab, &inv, &pb, &[]).await;
        assert_eq!(code, 1, "{auth}: {out}");
        assert!(!out.contains("hunter2"), "{auth} echoed:\n{out}");
    }
    assert_untouched(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_and_limit_failed_before_any_run_exit_1() {
    let lab = Lab::start(1, 99, |_| FaultPlan::default()).await;
    let pb = playbook(lab.path(), "flow", TEST_POLICY, FULL_FLOW);
    for args in [
        &["apply", "--no-such-option"][..],
        &["apply"],
        &["no-such-command"],
        &["apply", "-i", "x.yaml", "p.yaml", "--output", "fancy"],
    ] {
        let out = lab.roomkey(args).output().await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [&["--help"][..], &["--version"], &["apply", "--help"]] {
        let out = lab.roomkey(args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
    let (code, out) = apply(&lab, &lab.inventory, &pb, &["--limit", "@failed"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("--limit @failed: no previous run of playbook 'flow'"),
        "{out}"
    );
    assert_untouched(&lab).await;
}

mod loaders {
    //! The loaders on random and mutated YAML: they return problems, never panic, and
    //! finish quickly whatever the text.

    use super::*;
    use proptest::prelude::*;

    const INVENTORY: &str = "\
vault: vault
defaults:
  username: admin
  auth: { password_env: ROOMKEY_PASSWORD }
  certificate: certs/{name}.pem
  key: certs/{name}.key
  identity: \"{name}.example.com\"
  window: { start: \"22:00\", end: \"06:00\", timezone: Europe/Oslo }
groups:
  campus: { vars: { domain: example.com } }
  building-a: { parents: [campus], port: 2222 }
devices:
  room-1: { host: 10.0.0.1, groups: [building-a] }
  room-2:
    host: room-2.example.com
    enc: A128GCM
    client_secret: { env: SECRET }
";

    const PLAYBOOK: &str = "\
name: external identity
serial: [1, \"25%\"]
max_fail_percentage: 10
policy: { concurrency: 4, command_timeout: 30s, connect_timeout: 5, host_key_policy: accept-new }
window: { start: \"22:00\", end: \"06:00\" }
steps:
  - populate_secret: { initial: true }
  - add_certificate: {}
  - show_certificates:
  - activate_certificate: { purpose: WebexIdentity }
  - deactivate_certificate: { certificate: previous }
  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }
  - xcommand: { command: SystemUnit Boot, params: { Action: Restart }, read_only: false }
  - scep_enroll: { url: \"http://scep\", ca_fingerprint: 0123456789abcdef0123456789abcdef01234567, common_name: \"{name}\" }
  - restart: { timeout: 90s }
  - verify_external_identity: {}
";

    /// Pieces that make YAML interesting: structure, quoting, anchors, tags, controls.
    const PIECES: &[&str] = &[
        ":",
        " ",
        "\n",
        "\t",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "&a ",
        "*a",
        "!t ",
        "#",
        "|",
        ">",
        "? ",
        "~",
        "null",
        "0",
        "-1",
        "70000",
        "1e400",
        "0x1F",
        "127.1",
        "010",
        "::ffff:1.2.3.4",
        "\u{1b}[2J",
        "\u{202e}",
        "\0",
        "\r",
        "hunter2",
        "host",
        "port",
        "auth",
        "steps",
        "devices",
        "<<: *a",
        "%YAML 1.2\n",
        "---\n",
        "...\n",
    ];

    fn mutate(base: &str, edits: &[(usize, usize, usize)]) -> String {
        let mut text: Vec<char> = base.chars().collect();
        for &(pos, kind, piece) in edits {
            let at = pos % (text.len() + 1);
            let piece: Vec<char> = PIECES[piece % PIECES.len()].chars().collect();
            match kind % 3 {
                0 => {
                    text.splice(at..at, piece);
                }
                1 => {
                    let end = (at + piece.len()).min(text.len());
                    text.splice(at..end, piece);
                }
                _ => {
                    let end = (at + 1 + piece.len() % 7).min(text.len());
                    text.drain(at..end);
                }
            }
        }
        text.into_iter().collect()
    }

    fn load_both(text: &str) {
        let start = Instant::now();
        let inv = roomkey::inventory::parse(Path::new("inv.yaml"), text);
        let pb = roomkey::playbook::parse(Path::new("pb.yaml"), text);
        // Errors render (escaped, one line each) without panicking.
        if let Err(e) = &inv {
            no_control_characters(&e.to_string());
        }
        if let Err(e) = &pb {
            no_control_characters(&e.to_string());
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?} on {} bytes starting {:?}",
            start.elapsed(),
            text.len(),
            text.chars().take(80).collect::<String>()
        );
    }

    #[test]
    fn the_untouched_fixtures_load() {
        roomkey::inventory::parse(Path::new("inv.yaml"), INVENTORY).unwrap();
        roomkey::playbook::parse(Path::new("pb.yaml"), PLAYBOOK).unwrap();
    }

    #[test]
    fn alias_bombs_and_deep_nesting_stay_bounded() {
        // "Billion laughs": each level refers to the previous one ten times.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        load_both(&bomb);
        for n in [100, 10_000, 100_000] {
            load_both(&format!("devices: {}{}", "[".repeat(n), "]".repeat(n)));
            load_both(&format!("devices: {}", "{a: ".repeat(n)));
            load_both(&"- ".repeat(n));
        }
        // Big but flat: a 2 MiB value is read, then refused by the length check.
        load_both(&format!(
            "name: t\nsteps:\n  - set_configuration: {{ path: A B, value: \"{}\" }}\n",
            "x".repeat(2 << 20)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn mutated_inventories_never_panic(
            edits in proptest::collection::vec((0usize..2000, 0usize..3, 0usize..64), 1..8)
        ) {
            load_both(&mutate(INVENTORY, &edits));
        }

        #[test]
        fn mutated_playbooks_never_panic(
            edits in proptest::collection::vec((0usize..2000, 0usize..3, 0usize..64), 1..8)
        ) {
            load_both(&mutate(PLAYBOOK, &edits));
        }

        #[test]
        fn random_text_never_panics(
            pieces in proptest::collection::vec(0usize..64, 0..200)
        ) {
            let text: String = pieces.iter().map(|p| PIECES[p % PIECES.len()]).collect();
            load_both(&text);
        }

        #[test]
        fn random_unicode_never_panics(text in "\\PC{0,300}") {
            load_both(&text);
        }
    }
}
