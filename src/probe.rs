//! `roomkey probe`, the pure core: the read-only commands a probe sends, and the comparison
//! of a device's replies with the device catalogue (`docs/device-catalogue.md`): for each
//! entry probed, whether the device matches, differs (and what roomkey does about it), or
//! could not be told. Also the redacted transcript a probe writes (commands by their
//! redacted line, replies as received), which the test suite can replay as a fixture.
//!
//! No I/O here: `cli::probe` connects, sends [`commands`] and hands the replies in.

use crate::engine::steps;
use crate::tsh::{Reply, ReplyStatus, TshCommand};

/// One read-only command of a probe and the catalogue entry its reply is compared with.
pub struct ProbeCommand {
    pub entry: &'static str,
    pub command: TshCommand,
}

/// A step's command whose help a probe asks for (built by the step's own constructor, so
/// the path is spelled once).
type StepCommand = fn() -> Result<TshCommand, crate::tsh::EncodeError>;

/// The `?` help a probe asks for: catalogue entry, the step command, and the parameters
/// roomkey sends with it (catalogue `help.*`), which the help must list.
pub const HELP: &[(&str, StepCommand, &[&str])] = &[
    (
        "help.populate",
        || steps::populate_command(&crate::secret::Secret::default()),
        &["Secret"],
    ),
    (
        "help.services-add",
        steps::certificate::services_add,
        &["IsEncrypted"],
    ),
    (
        "help.services-activate",
        || steps::certificate::activation_header(true, crate::playbook::Purpose::WebexIdentity),
        &["Fingerprint", "Purpose"],
    ),
    ("help.services-show", steps::show_cmd, &[]),
    (
        "help.scep-request",
        || steps::scep_cmd(&[], None),
        &["URL", "Fingerprint", "CommonName"],
    ),
];

/// The commands a probe sends, in order. All read-only: status reads, `Show`/`List`, the
/// `?` help of the commands roomkey changes things with ([`HELP`]; help runs nothing), and
/// one command the device cannot know (named `… Show`, so it is read-only whatever the
/// device makes of it).
pub fn commands() -> Result<Vec<ProbeCommand>, crate::tsh::EncodeError> {
    let mut help = Vec::new();
    for (entry, command, _) in HELP {
        help.push(ProbeCommand {
            entry,
            command: command()?.into_help()?,
        });
    }
    let mut all = vec![
        ProbeCommand {
            entry: "status.uptime",
            command: TshCommand::xstatus("SystemUnit")?,
        },
        ProbeCommand {
            entry: "status.external-identity",
            command: steps::identity::external_identity_cmd()?,
        },
        ProbeCommand {
            entry: "show.fields",
            command: steps::certificate::show_cmd()?,
        },
        ProbeCommand {
            entry: "ca.commands",
            command: steps::trust::ca_show_cmd()?,
        },
        ProbeCommand {
            entry: "scep.commands",
            command: steps::scep::profiles_list_cmd()?,
        },
    ];
    all.extend(help);
    all.push(ProbeCommand {
        entry: "reply.unknown-command",
        command: TshCommand::xcommand("Roomkey Probe Show")?,
    });
    Ok(all)
}

/// Compares a `?` help reply with catalogue `help.format` and the parameters roomkey sends.
/// A form the probe does not recognise is `Unknown`, never `Differs`: what RoomOS prints for
/// help is only inferred. Only a recognised help that lacks a parameter roomkey sends
/// differs.
fn judge_help(want: &[String], params: &[&str], reply: &Reply) -> Verdict {
    if reply.status == ReplyStatus::NotRecognized {
        return Verdict::Unknown("the device does not answer `?` help".into());
    }
    let mut lines = reply.raw.iter().map(|l| l.trim()).skip_while(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        !(words.len() == want.len() + 2
            && words.first() == Some(&"*h")
            && words
                .get(1)
                .is_some_and(|w| w.eq_ignore_ascii_case("xCommand"))
            && words.get(2..).is_some_and(|rest| {
                rest.iter()
                    .zip(want)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
            }))
    });
    if lines.next().is_none() {
        return Verdict::Unknown("an unfamiliar help format (no `*h xCommand …` line)".into());
    }
    // `Name(r): <…>`, `Name[5]: <…>`, `Name: <…>`.
    let listed: Vec<String> = lines
        .filter_map(|l| {
            let (name, space) = l.split_once(':')?;
            if !space.trim_start().starts_with('<') {
                return None;
            }
            let name = name.trim_end_matches("(r)");
            let name = name.split('[').next().unwrap_or(name);
            Some(name.to_ascii_lowercase())
        })
        .collect();
    let missing: Vec<&str> = params
        .iter()
        .filter(|p| !listed.contains(&p.to_ascii_lowercase()))
        .copied()
        .collect();
    if missing.is_empty() {
        Verdict::Matches
    } else {
        Verdict::Differs(format!(
            "the help lists no {} parameter",
            missing.join(", ")
        ))
    }
}

/// How a probed behaviour compares with the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Matches,
    /// The device differs; the text says how.
    Differs(String),
    /// The reply did not tell (e.g. nothing to show).
    Unknown(String),
}

/// One line of the probe's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub entry: &'static str,
    pub verdict: Verdict,
    /// What roomkey does about it.
    pub action: &'static str,
}

/// The login banner's finding (catalogue login.banner).
pub fn judge_banner(banner: &str) -> Finding {
    let verdict = if banner.lines().any(|l| l.trim() == "*r Login successful") {
        Verdict::Matches
    } else {
        Verdict::Differs("no `*r Login successful` line before the OK".into())
    };
    Finding {
        entry: "login.banner",
        verdict,
        action: "ready at the first line exactly `OK` after the login line",
    }
}

/// Compares one reply with the catalogue entry it was sent for. Pure.
pub fn judge(entry: &'static str, reply: &Reply) -> Finding {
    let ok = reply.is_ok();
    let failed = || Verdict::Differs(format!("the device answered {}", reply.status));
    let (verdict, action) = match entry {
        "status.uptime" => (
            match reply.get(steps::restart::UPTIME) {
                Some(u) if u.parse::<u64>().is_ok() => Verdict::Matches,
                Some(u) => Verdict::Differs(format!("Uptime is {u:?}, not seconds")),
                None if !ok => failed(),
                None => Verdict::Differs(format!("no {}", steps::restart::UPTIME)),
            },
            "restart: a lower uptime proves the boot",
        ),
        "status.external-identity" => {
            let base = steps::identity::BASE;
            let current = ["Status", "Verification"]
                .iter()
                .any(|l| reply.get(&format!("{base} {l}")).is_some());
            let seed = ["Valid", "CertInfo"]
                .iter()
                .any(|l| reply.get(&format!("{base} {l}")).is_some());
            (
                match (current, seed) {
                    (true, false) => Verdict::Matches,
                    (false, true) => Verdict::Differs(
                        "the older node form (Valid, CertInfo): catalogue \
                         status.external-identity-seed"
                            .into(),
                    ),
                    (true, true) => {
                        Verdict::Differs("both node forms at once (never seen before)".into())
                    }
                    (false, false) if !ok => failed(),
                    (false, false) => Verdict::Unknown("no ExternalIdentity nodes".into()),
                },
                "verify reads either form; requires a valid Status/Valid, the activated \
                 leaf fingerprint and the CN",
            )
        }
        "show.fields" => {
            let items = reply.items("Details");
            (
                if !ok {
                    failed()
                } else if items.is_empty() {
                    // An empty list in the catalogue's form: nothing more to compare.
                    Verdict::Matches
                } else if items.iter().all(|i| i.get("Fingerprint").is_some()) {
                    match items.iter().find_map(|i| i.get("UsedFor")) {
                        Some(u) if u.contains("HTTPS") && !u.contains("HTTPS server") => {
                            Verdict::Differs(format!("UsedFor worded {u:?}"))
                        }
                        _ => Verdict::Matches,
                    }
                } else {
                    Verdict::Differs("an item without Fingerprint".into())
                },
                "certificates are matched by SHA-1 fingerprint; purposes by word",
            )
        }
        "ca.commands" => (
            if ok { Verdict::Matches } else { failed() },
            "add_ca_certificate sends only the CAs CA Show does not list",
        ),
        "scep.commands" => (
            if ok { Verdict::Matches } else { failed() },
            "renewal profiles use the current names, the older ones on 'Unknown command'",
        ),
        e if e.starts_with("help.") => match HELP
            .iter()
            .find(|(h, _, _)| *h == e)
            .and_then(|(_, c, p)| Some((c().ok()?, p)))
        {
            Some((command, params)) => (
                judge_help(command.path(), params, reply),
                "none at once: a command whose parameters differ fails with the device's \
                 reason when a playbook sends it",
            ),
            None => (
                Verdict::Unknown("not compared".into()),
                "nothing (not in the catalogue)",
            ),
        },
        "reply.unknown-command" => (
            match &reply.status {
                ReplyStatus::Error { reason: Some(r) } if r == "Unknown command" => {
                    Verdict::Matches
                }
                other => Verdict::Differs(format!("answered {other}")),
            },
            "an unknown command is a refusal with the device's reason",
        ),
        _ => (
            Verdict::Unknown("not compared".into()),
            "nothing (not in the catalogue)",
        ),
    };
    Finding {
        entry,
        verdict,
        action,
    }
}

/// The table a probe prints: one line per finding.
pub fn table(device: &str, findings: &[Finding]) -> String {
    let mut out = format!("{device}\n{:<28} {:<8} {}\n", "ENTRY", "RESULT", "DETAIL");
    for f in findings {
        let (word, detail) = match &f.verdict {
            Verdict::Matches => ("matches", f.action.to_string()),
            Verdict::Differs(d) => ("differs", format!("{d} — roomkey: {}", f.action)),
            Verdict::Unknown(d) => ("unknown", d.clone()),
        };
        out.push_str(&format!("{:<28} {word:<8} {detail}\n", f.entry));
    }
    out
}

/// The redacted transcript: each command by its redacted line, then the reply's lines as
/// received, with the entry compared. Control characters are dropped (a transcript is shown
/// in terminals). Device replies carry no secrets (roomkey sends none in a probe).
pub fn transcript(banner: &str, exchanges: &[(&ProbeCommand, &Reply)]) -> String {
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect() };
    let mut out = String::from("# roomkey probe transcript (docs/device-catalogue.md)\n");
    for l in banner.lines() {
        out.push_str(&format!("< {}\n", clean(l)));
    }
    for (cmd, reply) in exchanges {
        out.push_str(&format!(
            "# entry {}\n> {}\n",
            cmd.entry,
            clean(&cmd.command.redacted_line())
        ));
        for l in &reply.raw {
            out.push_str(&format!("< {}\n", clean(l)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsh::{ReplyReader, ReplyShape, TshEvent};

    fn reply(shape: ReplyShape, text: &str) -> Reply {
        let mut r = ReplyReader::new();
        r.feed(b"*r Login successful\n\nOK\n");
        r.expect(shape);
        r.feed(text.as_bytes())
            .into_iter()
            .find_map(|e| match e {
                TshEvent::Reply(r) => Some(r),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn the_commands_are_read_only() {
        for c in commands().unwrap() {
            assert!(c.command.is_read_only(), "{}", c.command.redacted_line());
        }
    }

    #[test]
    fn help_verdicts() {
        let plain = |text: &str| reply(ReplyShape::Plain, text);
        // catalogue help.format (TC guides' form)
        let known =
            plain("*h xCommand Security ClientSecret Populate\n    Secret(r): <S: 0, 1024>\nOK\n");
        assert_eq!(judge("help.populate", &known).verdict, Verdict::Matches);
        // catalogue command.populate-form: the multi-line form has no Secret parameter.
        let body = plain("*h xCommand Security ClientSecret Populate\nOK\n");
        assert!(matches!(
            judge("help.populate", &body).verdict,
            Verdict::Differs(d) if d.contains("Secret")
        ));
        // An unfamiliar form, a refusal: unknown, not differs.
        let other = plain("Usage: Populate Secret=<text>\nOK\n");
        assert!(matches!(
            judge("help.populate", &other).verdict,
            Verdict::Unknown(_)
        ));
        let refused = plain("Command not recognized.\n");
        assert!(matches!(
            judge("help.populate", &refused).verdict,
            Verdict::Unknown(_)
        ));
        let scep = plain(
            "*h xCommand Security Certificates Services Enrollment SCEP Request\n    CommonName(r): <S: 0, 64>\n    Fingerprint(r): <S: 0, 128>\n    SanDns[5]: <S: 0, 255>\n    URL(r): <S: 0, 256>\nOK\n",
        );
        assert_eq!(judge("help.scep-request", &scep).verdict, Verdict::Matches);
    }

    /// Help is for the probe only: no playbook step asks a device for it.
    #[test]
    fn the_engine_never_sends_help() {
        let mut stack = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine")];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files += 1;
                    let text = std::fs::read_to_string(&p).unwrap();
                    for call in ["xcommand_help", "into_help"] {
                        assert!(!text.contains(call), "{}: {call}", p.display());
                    }
                }
            }
        }
        assert!(files > 10);
    }

    #[test]
    fn verdicts_per_entry() {
        // catalogue status.external-identity-seed
        let seed = reply(
            ReplyShape::Status,
            "*s Conference EndToEndEncryption ExternalIdentity Valid: False\n** end\n\nOK\n",
        );
        assert!(matches!(
            judge("status.external-identity", &seed).verdict,
            Verdict::Differs(d) if d.contains("older")
        ));
        // catalogue reply.unknown-command
        let unknown = reply(
            ReplyShape::Command,
            "OK\n*r Result (status=Error): \n*r Result Reason: \"Unknown command\"\n** end\n",
        );
        assert_eq!(
            judge("reply.unknown-command", &unknown).verdict,
            Verdict::Matches
        );
        // catalogue show.used-for
        let show = reply(
            ReplyShape::Command,
            "OK\n*r ServicesShowResult (status=OK): \n*r ServicesShowResult Details 1 Fingerprint: \"ab\"\n*r ServicesShowResult Details 1 UsedFor: \"HTTPS\"\n** end\n",
        );
        assert!(matches!(
            judge("show.fields", &show).verdict,
            Verdict::Differs(_)
        ));
        assert!(table("room", &[judge("show.fields", &show)]).contains("differs"));
    }
}
