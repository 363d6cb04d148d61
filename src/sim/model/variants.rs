//! The firmware alternatives of the device model that no single subject owns: how a
//! `populate` JWE's plaintext is read ([`PopulateReading`]) and which commands take a
//! multi-line body. The subject modules consult `Device::variants` where their behaviour
//! forks (populate form, SCEP verbs and completion, ExternalIdentity form), each citing its
//! catalogue entry; `sim::variants` defines the variants and parses them.

use super::{Device, Kind};

/// How a device reads the plaintext of a `populate` JWE. The seed says only that it "is the
/// new ClientSecret"; the plaintext first seeding sends base64url of the phrase, the KDF uses
/// the phrase itself (see "Corrections" in `external-identity.md`). A real firmware does one
/// of these; the simulator plays either, per device, so roomkey is tested against both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PopulateReading {
    /// The plaintext bytes are the new secret phrase (what roomkey has always assumed).
    #[default]
    Raw,
    /// The plaintext is base64url of the phrase, as in the first seeding: the device decodes
    /// it (strictly: URL-safe alphabet, trailing `=` tolerated as the first seeding does) and
    /// holds the decoded bytes. A plaintext that does not decode is refused, nothing changed.
    Base64url,
}

impl PopulateReading {
    pub fn as_str(self) -> &'static str {
        match self {
            PopulateReading::Raw => "raw",
            PopulateReading::Base64url => "base64url",
        }
    }
}

impl Device {
    /// Does this command take a multi-line body? (catalogue `command.multi-line`,
    /// `command.populate-form`)
    pub fn takes_body(kind: Kind, path: &[String], v: &crate::sim::variants::Variants) -> bool {
        let lower: Vec<String> = path.iter().map(|w| w.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        kind == Kind::Command
            && (matches!(
                l.as_slice(),
                ["security", "certificates", "services", "add"]
                    | ["security", "certificates", "ca", "add"]
            ) || (v.populate_form == crate::sim::variants::PopulateForm::MultiLine
                && l.as_slice() == ["security", "clientsecret", "populate"]))
    }
}
