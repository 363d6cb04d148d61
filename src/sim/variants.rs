//! Device variants: for every behaviour the catalogue (`docs/device-catalogue.md`) lists as
//! unknown or as differing between software releases, the plausible alternatives a
//! simulated device can play. Pure data, chosen per device in the inventory's `sim:` block
//! (`variants: { external_identity: seed, ... }`) or with `roomkey sim --variant K=V`.
//!
//! The default of every knob is the behaviour the catalogue rates most likely for a current
//! RoomOS device; a test matrix (`tests/variant_matrix.rs`) runs the shipped playbooks
//! against each alternative.

use std::time::Duration;

/// Which `ExternalIdentity` status nodes the device prints (catalogue `status.external-identity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityForm {
    /// Current RoomOS docs: `Verification`, `Identity`, `Status`, `CertificateChain …`.
    #[default]
    Current,
    /// Seed 000's older text: `Valid`, `Identity`, `CertInfo` (JSON).
    Seed,
}

/// How a configuration set is answered in terminal mode (catalogue `reply.config-set`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSetReply {
    /// `** end`, a blank line, `OK`.
    #[default]
    Block,
    /// A bare `OK`.
    BareOk,
}

/// The first line of a failing xCommand's reply (catalogue `reply.command-error`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandErrorStart {
    /// `OK`, then the `*r … (status=Error)` block (as for every xCommand).
    #[default]
    Ok,
    /// `ERROR`, then the block.
    Error,
}

/// Whether `ClientSecret Populate` is a one-line command or takes a multi-line body
/// (catalogue `command.populate-form`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PopulateForm {
    /// `Secret: "…"` on the command line.
    #[default]
    OneLine,
    /// The command line, then the secret (or JWE) as a dot-terminated body; a `Secret:`
    /// parameter is refused.
    MultiLine,
}

/// When a SCEP enrolment completes (catalogue `scep.completion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScepCompletion {
    /// The request's reply comes after the certificate is installed.
    #[default]
    Immediate,
    /// The request is accepted at once; the certificate appears `scep_delay_ms` later
    /// (the request is pending in between and a second request is refused).
    Delayed,
}

/// Which SCEP command names the device knows (catalogue `scep.commands`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScepVerbs {
    /// `… Enrollment SCEP Request`, `… Enrollment SCEP Profiles Set`, `… Enrollment Profiles List|Delete`.
    #[default]
    Current,
    /// Only the older names: `… Enrollment SCEP Request` and `… Enrollment SCEP Renewal Request`
    /// (the current `Profiles Set` is an unknown command).
    Older,
}

/// The variants of one simulated device.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Variants {
    pub external_identity: IdentityForm,
    pub config_set: ConfigSetReply,
    pub command_error: CommandErrorStart,
    pub populate_form: PopulateForm,
    pub scep_completion: ScepCompletion,
    /// The delay of [`ScepCompletion::Delayed`] (default 2 s).
    pub scep_delay_ms: Option<u64>,
    pub scep_verbs: ScepVerbs,
}

impl Variants {
    /// The delay before a delayed SCEP enrolment completes.
    pub fn scep_delay(&self) -> Duration {
        Duration::from_millis(self.scep_delay_ms.unwrap_or(2_000))
    }

    /// Sets one knob from `key=value` (the CLI's `--variant`); `value` in snake case.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, String> {
            serde_yaml::from_value(serde_yaml::Value::String(value.to_string()))
                .map_err(|e| format!("variant {key}: {e}"))
        }
        match key {
            "external_identity" => self.external_identity = parse(key, value)?,
            "config_set" => self.config_set = parse(key, value)?,
            "command_error" => self.command_error = parse(key, value)?,
            "populate_form" => self.populate_form = parse(key, value)?,
            "scep_completion" => self.scep_completion = parse(key, value)?,
            "scep_verbs" => self.scep_verbs = parse(key, value)?,
            "scep_delay_ms" => {
                self.scep_delay_ms = Some(
                    value
                        .parse()
                        .map_err(|_| format!("variant {key}: not a number of milliseconds"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown variant {key:?} (known: {})",
                    KNOBS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Every single-knob alternative to the defaults, as (`key=value`, variants): what the
    /// variant matrix runs.
    pub fn alternatives() -> Vec<(&'static str, Variants)> {
        let d = Variants::default;
        vec![
            (
                "external_identity=seed",
                Variants {
                    external_identity: IdentityForm::Seed,
                    ..d()
                },
            ),
            (
                "config_set=bare_ok",
                Variants {
                    config_set: ConfigSetReply::BareOk,
                    ..d()
                },
            ),
            (
                "command_error=error",
                Variants {
                    command_error: CommandErrorStart::Error,
                    ..d()
                },
            ),
            (
                "populate_form=multi_line",
                Variants {
                    populate_form: PopulateForm::MultiLine,
                    ..d()
                },
            ),
            (
                "scep_completion=delayed",
                Variants {
                    scep_completion: ScepCompletion::Delayed,
                    ..d()
                },
            ),
            (
                "scep_verbs=older",
                Variants {
                    scep_verbs: ScepVerbs::Older,
                    ..d()
                },
            ),
        ]
    }
}

/// The knob names, for messages.
pub const KNOBS: &[&str] = &[
    "external_identity",
    "config_set",
    "command_error",
    "populate_form",
    "scep_completion",
    "scep_delay_ms",
    "scep_verbs",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_parses_every_knob_and_refuses_unknowns() {
        let mut v = Variants::default();
        v.set("external_identity", "seed").unwrap();
        v.set("config_set", "bare_ok").unwrap();
        v.set("command_error", "error").unwrap();
        v.set("populate_form", "multi_line").unwrap();
        v.set("scep_completion", "delayed").unwrap();
        v.set("scep_delay_ms", "50").unwrap();
        v.set("scep_verbs", "older").unwrap();
        assert_eq!(v.external_identity, IdentityForm::Seed);
        assert_eq!(v.scep_delay(), Duration::from_millis(50));
        assert!(v.set("external_identity", "both").is_err());
        assert!(v.set("colour", "blue").is_err());
        let yaml: Variants =
            serde_yaml::from_str("{ external_identity: seed, populate_form: multi_line }").unwrap();
        assert_eq!(yaml.populate_form, PopulateForm::MultiLine);
        assert!(serde_yaml::from_str::<Variants>("{ bogus: 1 }").is_err());
        assert_eq!(Variants::alternatives().len(), 6);
    }
}
