//! Fixture tests for the reply reader: every reply shape of `tshell.md`, each fed whole and
//! one byte at a time, with `\n` and with `\r\n` line ends — all four must agree.

use super::*;

const LOGIN: &[u8] = include_bytes!("fixtures/login_basic.txt");

fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn feed_whole(r: &mut ReplyReader, bytes: &[u8]) -> Vec<TshEvent> {
    r.feed(bytes)
}

fn feed_bytewise(r: &mut ReplyReader, bytes: &[u8]) -> Vec<TshEvent> {
    bytes
        .iter()
        .flat_map(|b| r.feed(std::slice::from_ref(b)))
        .collect()
}

/// Runs `fixture` after a login, with `shape` expected, in all four ways; asserts they agree
/// and returns the events.
fn run(fixture: &[u8], shape: ReplyShape) -> Vec<TshEvent> {
    let mut results = Vec::new();
    for bytes in [fixture.to_vec(), crlf(fixture)] {
        for bytewise in [false, true] {
            let mut r = ReplyReader::new();
            let login = r.feed(LOGIN);
            assert!(login.contains(&TshEvent::LoginReady));
            r.expect(shape);
            let ev = if bytewise {
                feed_bytewise(&mut r, &bytes)
            } else {
                feed_whole(&mut r, &bytes)
            };
            assert!(!r.is_awaiting(), "reply not completed");
            results.push(ev);
        }
    }
    for other in &results[1..] {
        assert_eq!(&results[0], other);
    }
    results.remove(0)
}

fn reply_of(events: &[TshEvent]) -> Reply {
    let replies: Vec<&Reply> = events
        .iter()
        .filter_map(|e| match e {
            TshEvent::Reply(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 1, "{events:#?}");
    replies[0].clone()
}

fn login_events(fixture: &[u8]) -> Vec<Vec<TshEvent>> {
    let mut out = Vec::new();
    for bytes in [fixture.to_vec(), crlf(fixture)] {
        let mut r = ReplyReader::new();
        out.push(feed_whole(&mut r, &bytes));
        let mut r = ReplyReader::new();
        out.push(feed_bytewise(&mut r, &bytes));
    }
    out
}

#[test]
fn login_basic_banner() {
    let all = login_events(LOGIN);
    for ev in &all {
        assert_eq!(ev, &all[0]);
    }
    let ev = &all[0];
    let ready = ev.iter().position(|e| *e == TshEvent::LoginReady).unwrap();
    assert_eq!(ev[0], TshEvent::Noise("Welcome to room-301".to_string()));
    assert_eq!(ready, 5);
    assert_eq!(ev.len(), 7); // trailing blank line after OK is noise
}

#[test]
fn login_custom_banner_ignores_ok_before_login_line_and_text_after() {
    let all = login_events(include_bytes!("fixtures/login_custom_banner.txt"));
    for ev in &all {
        assert_eq!(ev, &all[0]);
        assert_eq!(ev.iter().filter(|e| **e == TshEvent::LoginReady).count(), 1);
        let ready = ev.iter().position(|e| *e == TshEvent::LoginReady).unwrap();
        // the banner's own "OK" line (index 3) did not count
        assert_eq!(ev[3], TshEvent::Noise("OK".into()));
        assert_eq!(ready, 8);
        assert_eq!(
            ev[ready + 1],
            TshEvent::Noise("Last login from 10.0.0.5 at 2024-05-10 13:14:47".into())
        );
    }
}

#[test]
fn nothing_is_a_reply_before_login() {
    let mut r = ReplyReader::new();
    r.expect(ReplyShape::Plain);
    let ev = r.feed(b"OK\n*r ServicesShowResult (status=OK): \n** end\n");
    assert!(ev.iter().all(|e| matches!(e, TshEvent::Noise(_))));
    assert!(!r.is_logged_in());
}

#[test]
fn echo_off_answered_by_ok() {
    let ev = run(include_bytes!("fixtures/echo_off.txt"), ReplyShape::Plain);
    let r = reply_of(&ev);
    assert!(r.is_ok());
    assert_eq!(r.raw, vec!["OK"]);
}

#[test]
fn status_block_with_echo() {
    let r = reply_of(&run(
        include_bytes!("fixtures/status_volume.txt"),
        ReplyShape::Status,
    ));
    assert!(r.is_ok());
    assert_eq!(r.get("Audio Volume"), Some("50"));
    assert_eq!(r.fields[0].kind, 's');
    assert_eq!(r.result_id, None);
    assert_eq!(
        r.raw.first().map(String::as_str),
        Some("xStatus Audio Volume")
    );
    assert_eq!(r.raw.last().map(String::as_str), Some("OK"));
}

#[test]
fn status_value_ok_does_not_end_the_reply() {
    let r = reply_of(&run(
        include_bytes!("fixtures/status_signalstate_ok.txt"),
        ReplyShape::Status,
    ));
    assert!(r.is_ok());
    assert_eq!(r.result_id.as_deref(), Some("r3"));
    assert_eq!(r.get("Video Input Connector 1 SignalState"), Some("OK"));
    assert_eq!(r.get("Video Input Connector 2 SignalState"), Some("OK"));
    assert_eq!(r.get("video input connector 1 connected"), Some("True"));
    let items = r.items("Video Input Connector");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].index, "2");
    assert_eq!(items[1].get("SignalState"), Some("OK"));
}

#[test]
fn status_error_with_reason_and_error_trailer() {
    let r = reply_of(&run(
        include_bytes!("fixtures/status_error.txt"),
        ReplyShape::Status,
    ));
    assert_eq!(
        r.status,
        ReplyStatus::Error {
            reason: Some("No match on address expression.".into())
        }
    );
    assert_eq!(r.reason(), Some("No match on address expression."));
    assert_eq!(r.result_name.as_deref(), Some("Status"));
    assert_eq!(r.result_id.as_deref(), Some("r9"));
}

#[test]
fn configuration_read_and_set() {
    let r = reply_of(&run(
        include_bytes!("fixtures/config_read.txt"),
        ReplyShape::Status,
    ));
    assert!(r.is_ok());
    assert_eq!(r.get("Conference EndToEndEncryption Mode"), Some("On"));
    assert_eq!(
        r.get("Conference EndToEndEncryption Identity PreferredDomain"),
        Some("")
    );
    assert_eq!(r.fields[0].kind, 'c');

    let r = reply_of(&run(
        include_bytes!("fixtures/config_set.txt"),
        ReplyShape::Status,
    ));
    assert!(r.is_ok());
    assert!(r.fields.is_empty());
    assert_eq!(r.result_id.as_deref(), Some("r5"));
}

#[test]
fn xcommand_ok_first_then_result_block() {
    let r = reply_of(&run(
        include_bytes!("fixtures/command_show.txt"),
        ReplyShape::Command,
    ));
    assert!(r.is_ok());
    assert_eq!(r.result_id.as_deref(), Some("r42"));
    assert_eq!(r.result_name.as_deref(), Some("ServicesShowResult"));
    assert_eq!(
        r.get("Details 1 Fingerprint"),
        Some("ce4eb947c2c17d58bbc08303bf278464beebf2af")
    );
    assert_eq!(
        r.get("Details 1 IssuerName"),
        Some("/C=US/O=Example CA/CN=Example Issuing CA")
    );
    assert_eq!(
        r.get("Details 1 NotAfter"),
        Some("Aug 08 03:04:26 2026 GMT")
    );
    let items = r.items("Details");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].index, "1");
    assert_eq!(items[0].get("UsedFor"), Some("WebexIdentity"));
    assert_eq!(items[1].get("Fingerprint"), Some("0a0b0c"));
    assert_eq!(items[1].get("UsedFor"), Some(""));
    assert_eq!(r.get_all("Details 2 Fingerprint"), vec!["0a0b0c"]);
    assert_eq!(r.find_all("Details 1").count(), 6);
    assert_eq!(r.raw.first().map(String::as_str), Some("OK"));
    assert_eq!(r.raw.last().map(String::as_str), Some("** end"));
}

#[test]
fn xcommand_multiline_add_ok() {
    let r = reply_of(&run(
        include_bytes!("fixtures/command_add_ok.txt"),
        ReplyShape::Command,
    ));
    assert!(r.is_ok());
    assert_eq!(r.result_name.as_deref(), Some("ServicesAddResult"));
    assert_eq!(r.result_id.as_deref(), Some("r6"));
}

#[test]
fn xcommand_error_with_reason_containing_colon() {
    let r = reply_of(&run(
        include_bytes!("fixtures/command_error.txt"),
        ReplyShape::Command,
    ));
    assert_eq!(
        r.reason(),
        Some("No certificate with matching fingerprint: 0a0b")
    );
    assert!(matches!(r.status, ReplyStatus::Error { .. }));
}

#[test]
fn xcommand_parameter_error() {
    let r = reply_of(&run(
        include_bytes!("fixtures/command_parameter_error.txt"),
        ReplyShape::Command,
    ));
    assert_eq!(
        r.status,
        ReplyStatus::ParameterError {
            reason: Some("Invalid value for Format".into())
        }
    );
}

#[test]
fn tc7_indented_error() {
    let r = reply_of(&run(
        include_bytes!("fixtures/tc7_error.txt"),
        ReplyShape::Command,
    ));
    assert_eq!(
        r.status,
        ReplyStatus::Error {
            reason: Some("Invalid number".into())
        }
    );
    assert_eq!(r.result_name.as_deref(), Some("DialResult"));
}

#[test]
fn tc7_nested_fields() {
    let r = reply_of(&run(
        include_bytes!("fixtures/tc7_nested.txt"),
        ReplyShape::Command,
    ));
    assert!(r.is_ok());
    assert_eq!(r.get("Details 1 Fingerprint"), Some("ab12"));
    assert_eq!(r.get("Details 1 UsedFor"), Some("HTTPS"));
    assert_eq!(r.get("Details 2 Fingerprint"), Some("cd34"));
    assert_eq!(r.get("Count"), Some("2"));
    assert_eq!(r.items("Details").len(), 2);
}

#[test]
fn not_recognized_and_bare_error_end_any_shape() {
    for shape in [ReplyShape::Command, ReplyShape::Status, ReplyShape::Plain] {
        let r = reply_of(&run(include_bytes!("fixtures/not_recognized.txt"), shape));
        assert_eq!(r.status, ReplyStatus::NotRecognized);
        let r = reply_of(&run(include_bytes!("fixtures/bare_error.txt"), shape));
        assert_eq!(r.status, ReplyStatus::BareError);
    }
}

/// A failing xCommand that starts `ERROR` instead of `OK` (catalogue reply.command-error,
/// variant `command_error: error`): for a tagged command the block is the reply; a
/// configuration set answered by a bare `OK` (reply.config-set, `config_set: bare_ok`).
#[test]
fn error_first_command_and_bare_ok_config_set() {
    for bytes in [
        include_bytes!("fixtures/command_error_first.txt").to_vec(),
        crlf(include_bytes!("fixtures/command_error_first.txt")),
    ] {
        let mut r = ReplyReader::new();
        r.feed(LOGIN);
        r.expect_id(ReplyShape::Command, &ResultId::new("r7").unwrap());
        let reply = reply_of(&feed_bytewise(&mut r, &bytes));
        assert_eq!(
            reply.status,
            ReplyStatus::Error {
                reason: Some("No certificate with that fingerprint".into())
            }
        );
        assert_eq!(reply.result_id.as_deref(), Some("r7"));
    }
    let r = reply_of(&run(
        include_bytes!("fixtures/config_set_bare_ok.txt"),
        ReplyShape::ConfigSet,
    ));
    assert_eq!(r.status, ReplyStatus::Ok);
    let block = reply_of(&run(
        include_bytes!("fixtures/config_set.txt"),
        ReplyShape::ConfigSet,
    ));
    assert_eq!(block.status, ReplyStatus::Ok);
    assert_eq!(block.result_id.as_deref(), Some("r5"));
}

/// Services Show as a real Room Kit Plus prints it: `UsedFor: "SIP, HTTPS server"`, the
/// chain's intermediate as a second item (catalogue show.used-for, show.chain).
#[test]
fn show_as_a_room_kit_prints_it() {
    use crate::engine::steps::parse_show;
    let r = reply_of(&run(
        include_bytes!("fixtures/command_show_roomkit.txt"),
        ReplyShape::Command,
    ));
    let shown = parse_show(&r);
    assert_eq!(shown.len(), 2);
    assert!(shown[0].used_for.iter().any(|u| u == "HTTPS"), "{shown:?}");
    assert!(shown[0].used_for.iter().any(|u| u == "SIP"), "{shown:?}");
    assert_eq!(shown[1].subject, "/C=US/O=Let's Encrypt/CN=R3");
}

/// Every fixture file is listed in `fixtures/INDEX.md` with a catalogue entry that exists
/// in `docs/device-catalogue.md`.
#[test]
fn every_fixture_names_a_catalogue_entry() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tsh/fixtures");
    let index = std::fs::read_to_string(dir.join("INDEX.md")).unwrap();
    let catalogue = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/device-catalogue.md"),
    )
    .unwrap();
    let entries: std::collections::BTreeMap<String, String> = index
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let file = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let id = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((file.to_string(), id.to_string()))
        })
        .collect();
    for f in std::fs::read_dir(&dir).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".txt") {
            continue;
        }
        let id = entries
            .get(&name)
            .unwrap_or_else(|| panic!("fixture {name} is not in fixtures/INDEX.md"));
        assert!(
            catalogue.contains(&format!("| `{id}` ")),
            "fixture {name} names {id}, which the catalogue does not have"
        );
    }
}

#[test]
fn events_interleaved_do_not_end_or_join_the_reply() {
    let ev = run(
        include_bytes!("fixtures/events_interleaved.txt"),
        ReplyShape::Command,
    );
    let events: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            TshEvent::Event(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        events,
        vec![
            "*e CallSuccessful CallId: 3",
            "*e UserInterface Extensions Event Pressed Signal: \"b1\"",
            "*e UserInterface Extensions Event Pressed Type: \"pressed\"",
            "*e Standby: \"Off\"",
        ]
    );
    let r = reply_of(&ev);
    assert!(r.is_ok());
    assert_eq!(r.result_id.as_deref(), Some("r11"));
    assert_eq!(r.fields.len(), 1);
    assert_eq!(r.get("Details 1 Fingerprint"), Some("ce4e"));
    assert!(r.raw.iter().all(|l| !l.starts_with("*e")));
    // the reply is the last thing reported
    assert!(matches!(ev.last(), Some(TshEvent::Reply(_))));
}

#[test]
fn feedback_status_block_before_xcommand_result_is_skipped() {
    let r = reply_of(&run(
        include_bytes!("fixtures/command_after_feedback.txt"),
        ReplyShape::Command,
    ));
    assert_eq!(r.result_name.as_deref(), Some("AudioVolumeSetResult"));
    assert_eq!(r.result_id.as_deref(), Some("r12"));
    assert!(r.fields.is_empty());
}

#[test]
fn external_identity_both_forms() {
    let r = reply_of(&run(
        include_bytes!("fixtures/status_external_identity_new.txt"),
        ReplyShape::Status,
    ));
    let base = "Conference EndToEndEncryption ExternalIdentity";
    assert_eq!(r.get(&format!("{base} Verification")), Some("Valid"));
    assert_eq!(
        r.get(&format!("{base} Identity")),
        Some("meeting-room-1.example.com")
    );
    let certs = r.items(&format!("{base} CertificateChain Certificate"));
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0].get("Fingerprint"), Some("ce4e"));
    assert_eq!(
        certs[0].get("Subject 1 Name"),
        Some("CN=meeting-room-1.example.com")
    );
    assert_eq!(r.find_all(base).count(), 9);

    let r = reply_of(&run(
        include_bytes!("fixtures/status_external_identity_seed.txt"),
        ReplyShape::Status,
    ));
    assert_eq!(r.get(&format!("{base} Valid")), Some("True"));
    assert_eq!(
        r.get(&format!("{base} CertInfo")),
        Some("CN=meeting-room-1.example.com, O=Example")
    );
}

/// The verifier's reading of both node forms, each on its own, and of a device that says
/// its external identity is not valid (catalogue status.external-identity,
/// status.external-identity-seed).
#[test]
fn external_identity_verdicts_in_either_form() {
    use crate::engine::steps::identity::{judge, Expected};
    use crate::engine::steps::parse_external_identity;
    let now = time::macros::datetime!(2026-01-01 00:00 UTC);
    let want = Expected {
        identity: Some("meeting-room-1.example.com"),
        fingerprint: Some("ce4e"),
    };
    let newer = parse_external_identity(&reply_of(&run(
        include_bytes!("fixtures/status_external_identity_new.txt"),
        ReplyShape::Status,
    )));
    assert_eq!(newer.status.as_deref(), Some("Valid"));
    assert_eq!(newer.leaf_fingerprint.as_deref(), Some("ce4e"));
    assert_eq!(
        newer.identity.as_deref(),
        Some("meeting-room-1.example.com")
    );
    assert!(judge(&newer, &want, now).is_ok());
    let other = Expected {
        fingerprint: Some("9f9f"),
        ..want.clone()
    };
    assert!(
        judge(&newer, &other, now).is_err(),
        "the intermediate is not the leaf"
    );

    let seed = parse_external_identity(&reply_of(&run(
        include_bytes!("fixtures/status_external_identity_seed.txt"),
        ReplyShape::Status,
    )));
    assert_eq!(seed.valid.as_deref(), Some("True"));
    assert_eq!(seed.identity.as_deref(), Some("meeting-room-1.example.com"));
    // The seed fixture's CertInfo is not JSON: no fingerprint to compare, identity checked.
    assert!(judge(&seed, &want, now).is_ok());

    let invalid = b"*s Conference EndToEndEncryption ExternalIdentity Identity: \"\"\n\
*s Conference EndToEndEncryption ExternalIdentity Status: \"Invalid\"\n\
*s Conference EndToEndEncryption ExternalIdentity Verification: \"Unverified\"\n** end\n\nOK\n";
    let invalid = parse_external_identity(&reply_of(&run(invalid, ReplyShape::Status)));
    assert_eq!(invalid.identity, None);
    let err = judge(&invalid, &want, now).unwrap_err();
    assert!(err.contains("Status=Invalid"), "{err}");

    let empty = parse_external_identity(&reply_of(&run(b"** end\n\nOK\n", ReplyShape::Status)));
    assert!(judge(&empty, &want, now)
        .unwrap_err()
        .contains("no external identity"));
}

#[test]
fn a_session_of_several_replies_in_sequence() {
    // login, echo off, a Show, a status read: one reader, the client calling `expect`
    // before each command, bytes split at awkward places.
    let mut r = ReplyReader::new();
    let mut ev = r.feed(&crlf(include_bytes!("fixtures/login_custom_banner.txt")));
    assert!(ev.contains(&TshEvent::LoginReady));
    r.expect(ReplyShape::Plain);
    ev = r.feed(b"O");
    assert!(ev.is_empty());
    ev = r.feed(b"K\r\n");
    assert!(matches!(&ev[..], [TshEvent::Reply(rep)] if rep.is_ok()));

    r.expect(ReplyShape::Command);
    let show = crlf(include_bytes!("fixtures/command_show.txt"));
    let (a, b) = show.split_at(37);
    assert!(r.feed(a).is_empty());
    let ev = r.feed(b);
    assert_eq!(reply_of(&ev).result_id.as_deref(), Some("r42"));

    // A device that (unlike the spec) printed OK after the block: the stray OK is noise
    // and does not end the next status reply early.
    assert_eq!(
        r.feed(b"\r\nOK\r\n"),
        vec![TshEvent::Noise(String::new()), TshEvent::Noise("OK".into())]
    );
    r.expect(ReplyShape::Status);
    let ev = r.feed(&crlf(include_bytes!("fixtures/status_signalstate_ok.txt")));
    assert_eq!(reply_of(&ev).result_id.as_deref(), Some("r3"));

    // unsolicited event while idle
    assert_eq!(
        r.feed(b"*e Standby: On\r\n** end\r\n"),
        vec![
            TshEvent::Event("*e Standby: On".into()),
            TshEvent::Noise("** end".into())
        ]
    );
}

#[test]
fn overlong_line_is_cut_into_noise() {
    let mut r = ReplyReader::new();
    let big = vec![b'a'; (1 << 20) + 10];
    let ev = r.feed(&big);
    assert_eq!(ev.len(), 1);
    assert_eq!(r.partial_line().len(), 10);
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    let mut r = ReplyReader::new();
    r.feed(LOGIN);
    r.expect(ReplyShape::Status);
    let ev = r.feed(b"*s SystemUnit Name: \"caf\xe9\"\n** end\n\nOK\n");
    let rep = reply_of(&ev);
    assert_eq!(rep.get("SystemUnit Name"), Some("caf\u{fffd}"));
}

#[test]
fn stray_reply_with_other_result_id_is_skipped() {
    let mut r = ReplyReader::new();
    r.feed(LOGIN);
    r.expect_id(ReplyShape::Command, &ResultId::new("r8").unwrap());
    // a late reply to r7, then ours, in one chunk
    let ev = r.feed(
        b"OK\r\n*r ServicesAddResult (status=OK): \r\n** resultId: \"r7\"\r\n** end\r\n\
OK\r\n*r ServicesShowResult (status=OK): \r\n** resultId: \"r8\"\r\n** end\r\n",
    );
    assert!(matches!(&ev[..], [TshEvent::Stray(s), TshEvent::Reply(m)]
        if s.result_id.as_deref() == Some("r7") && m.result_id.as_deref() == Some("r8")
            && m.result_name.as_deref() == Some("ServicesShowResult")));
    // untagged answers are accepted
    r.expect_id(ReplyShape::Command, &ResultId::new("r9").unwrap());
    let ev = r.feed(b"Command not recognized.\r\n");
    assert!(matches!(&ev[..], [TshEvent::Reply(m)] if m.status == ReplyStatus::NotRecognized));
}

#[test]
fn status_display() {
    assert_eq!(ReplyStatus::Ok.to_string(), "OK");
    assert_eq!(
        ReplyStatus::Error {
            reason: Some("Illegal value".into())
        }
        .to_string(),
        "Error: Illegal value"
    );
    assert_eq!(
        ReplyStatus::ParameterError { reason: None }.to_string(),
        "ParameterError"
    );
    assert_eq!(
        ReplyStatus::NotRecognized.to_string(),
        "Command not recognized"
    );
    assert_eq!(ReplyStatus::BareError.to_string(), "ERROR");
}

#[test]
fn tc7_reason_on_its_own_line() {
    let r = reply_of(&run(
        include_bytes!("fixtures/tc7_reason_alone.txt"),
        ReplyShape::Command,
    ));
    assert_eq!(r.reason(), Some("Invalid number"));
}

#[test]
fn trailing_whitespace_and_doubled_cr_on_markers() {
    let mut r = ReplyReader::new();
    let ev = r.feed(b"*r Login successful \r\r\n\r\nOK \r\n");
    assert!(ev.contains(&TshEvent::LoginReady));
    r.expect(ReplyShape::Status);
    let ev = r.feed(b"*s Audio Volume: 50\r\r\n** end \r\n\r\nOK\r\r\n");
    let rep = reply_of(&ev);
    assert_eq!(rep.get("Audio Volume"), Some("50"));
}

#[test]
fn event_between_result_id_and_end_does_not_swallow_the_end() {
    let mut r = ReplyReader::new();
    r.feed(LOGIN);
    r.expect_id(ReplyShape::Command, &ResultId::new("r1").unwrap());
    let ev = r.feed(
        b"OK\r\n*r AudioVolumeSetResult (status=OK): \r\n** resultId: \"r1\"\r\n\
*e Standby: On\r\n** end\r\n** end\r\n",
    );
    assert_eq!(ev[0], TshEvent::Event("*e Standby: On".into()));
    assert!(matches!(&ev[1], TshEvent::Reply(rep) if rep.result_id.as_deref() == Some("r1")));
    assert_eq!(ev[2], TshEvent::Noise("** end".into()));
}

#[test]
fn after_a_body_terminator_an_untagged_not_recognized_is_the_dots_answer() {
    // catalogue command.populate-form, reply.not-recognized: a slow one-line device
    // answers the `.` roomkey sent on its own; that answer is never the command's reply.
    let mut r = ReplyReader::new();
    r.feed(LOGIN);
    r.expect_id(ReplyShape::Command, &ResultId::new("r3").unwrap());
    r.strict_terminators();
    // Out of order (the `.`'s answer first), then the command's own tagged block.
    let ev = r.feed(
        b"Command not recognized.\n\nOK\n*r ClientSecretPopulateResult (status=OK): \n** resultId: \"r3\"\n** end\n",
    );
    assert!(
        matches!(&ev[..], [TshEvent::Stray(s), TshEvent::Reply(m)]
            if s.status == ReplyStatus::NotRecognized && m.is_ok()
                && m.result_id.as_deref() == Some("r3")),
        "{ev:?}"
    );
    // The marker after it: a bare `ERROR` answering no command is skipped; an untagged
    // status block (a device ignoring tags) is still the marker's reply.
    r.expect_strict(ReplyShape::Status, &ResultId::new("r4").unwrap());
    let ev = r.feed(b"ERROR\n*s SystemUnit Uptime: 42\n** end\n\nOK\n");
    assert!(
        matches!(&ev[..], [TshEvent::Stray(s), TshEvent::Reply(m)]
            if s.status == ReplyStatus::BareError && m.get("SystemUnit Uptime") == Some("42")),
        "{ev:?}"
    );
    // Without the mark an untagged answer is accepted, as before.
    r.expect_id(ReplyShape::Command, &ResultId::new("r5").unwrap());
    let ev = r.feed(b"Command not recognized.\n");
    assert!(matches!(&ev[..], [TshEvent::Reply(m)] if m.status == ReplyStatus::NotRecognized));
}
