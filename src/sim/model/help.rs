//! The `?` help a device prints for the commands it knows (`xCommand <path> ?`): the
//! command's parameters, `(r)` marking the required ones, each with its value space. The
//! form (catalogue `help.format`) is documented for TC software (`*h xCommand Dial`, one
//! line per parameter, then `OK`) and inferred for RoomOS; the parameter lists are those of
//! the commands roomkey sends (catalogue `help.*`), in the form the device is playing
//! (variants `populate_form`, `scep_verbs`).

use super::{canonical_word, Device, Kind};

/// `(path, parameter lines)` of the commands whose help the simulated device knows.
const HELP: &[(&[&str], &[&str])] = &[
    (
        &["Security", "Certificates", "Services", "Add"],
        &[
            "IsEncrypted: <False/True>",
            "PrivateKeyPassword: <S: 0, 128>",
        ],
    ),
    (
        &["Security", "Certificates", "Services", "Activate"],
        &[
            "Fingerprint(r): <S: 0, 8192>",
            "Purpose(r): <802.1X/Audit/HTTPS/Pairing/SIP/HttpClient/WebexIdentity>",
        ],
    ),
    (
        &["Security", "Certificates", "Services", "Deactivate"],
        &[
            "Fingerprint(r): <S: 0, 8192>",
            "Purpose(r): <802.1X/Audit/HTTPS/Pairing/SIP/HttpClient/WebexIdentity>",
        ],
    ),
    (
        &["Security", "Certificates", "Services", "Show"],
        &[
            "Filter: <S: 0, 1024>",
            "FingerprintAlgorithm: <sha1/sha256>",
        ],
    ),
    (
        &["Security", "Certificates", "Services", "Delete"],
        &["Fingerprint(r): <S: 0, 128>"],
    ),
    (&["Security", "Certificates", "CA", "Add"], &[]),
    (&["Security", "Certificates", "CA", "Show"], &[]),
    (
        &["Security", "Certificates", "CA", "Delete"],
        &["Fingerprint(r): <S: 0, 128>"],
    ),
    (
        &[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "SCEP",
            "Request",
        ],
        &[
            "ChallengePassword: <S: 0, 128>",
            "CommonName(r): <S: 0, 64>",
            "CountryName: <S: 0, 2>",
            "Fingerprint(r): <S: 0, 128>",
            "Locality: <S: 0, 128>",
            "OrganizationName: <S: 0, 64>",
            "OrganizationalUnit: <S: 0, 64>",
            "SanDns[5]: <S: 0, 255>",
            "SanEmail[5]: <S: 0, 255>",
            "SanIp[5]: <S: 0, 255>",
            "SanUri[5]: <S: 0, 255>",
            "State: <S: 0, 128>",
            "URL(r): <S: 0, 256>",
        ],
    ),
    (
        &[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "List",
        ],
        &[],
    ),
    (
        &[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "Delete",
        ],
        &["Fingerprint(r): <S: 0, 128>"],
    ),
    (&["SystemUnit", "Boot"], &["Action: <Restart/Shutdown>"]),
];

const PROFILE_PARAMS: &[&str] = &["Fingerprint(r): <S: 0, 128>", "URL(r): <S: 0, 256>"];

impl Device {
    /// The help text of `xCommand <path> ?`: the `*h` header line and the parameter lines
    /// (without line ends or the closing `OK`), or `None` for a command the device does not
    /// know. Only xCommands have help here (`xStatus ?` and `xConfiguration ?` list trees,
    /// which roomkey never asks for).
    pub fn help(&self, kind: Kind, path: &[String]) -> Option<Vec<String>> {
        if kind != Kind::Command {
            return None;
        }
        let same = |known: &[&str]| {
            known.len() == path.len()
                && known
                    .iter()
                    .zip(path)
                    .all(|(k, w)| k.eq_ignore_ascii_case(w))
        };
        let older = self.variants.scep_verbs == crate::sim::variants::ScepVerbs::Older;
        let params: Vec<&str> = if same(&["Security", "ClientSecret", "Populate"]) {
            // catalogue command.populate-form: the multi-line form takes the secret as its
            // body, so it has no `Secret` parameter.
            match self.variants.populate_form {
                crate::sim::variants::PopulateForm::OneLine => vec!["Secret(r): <S: 0, 1024>"],
                crate::sim::variants::PopulateForm::MultiLine => vec![],
            }
        } else if (!older && same(super::PROFILES_SET)) || (older && same(super::RENEWAL_REQUEST)) {
            PROFILE_PARAMS.to_vec()
        } else {
            HELP.iter().find(|(p, _)| same(p))?.1.to_vec()
        };
        let canon: Vec<String> = path.iter().map(|w| canonical_word(w)).collect();
        let mut lines = vec![format!("*h xCommand {}", canon.join(" "))];
        lines.extend(params.iter().map(|p| format!("    {p}")));
        Some(lines)
    }
}
