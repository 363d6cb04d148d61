//! The simulated RoomOS device as a pure state machine: ClientSecret, service certificates
//! and their activations, the trusted CA list, the E2EE configuration and the status tree.
//!
//! No I/O and no async here. The one expensive operation a device performs — opening a JWE
//! (scrypt) — is kept out of the model on purpose: [`Device::jwe_to_open`] says which JWE a
//! request carries and with which secret, the caller opens it wherever it likes (the server
//! does it on the bounded blocking KDF pool) and hands the outcome to [`Device::handle`]. The
//! model then checks the action and applies the plaintext, so every rule of the device lives
//! here and is unit-tested with fixtures.
//!
//! This file owns the request/reply types, the [`Device`] itself and the dispatcher
//! ([`Device::handle`] and the xCommand table); each subject's rules live in a submodule:
//! [`secrets`] (ClientSecret populate), [`certificates`] (service certificates, parsing,
//! activation, `Services Show`), [`cas`] (the trusted CA list), [`enrolment`] (SCEP
//! enrolment and renewal profiles as the device holds them; the SCEP server is
//! `sim::scep`), [`status`] and [`config`] (the two trees), [`persistence`] (the on-disk
//! form), [`help`] (what `xCommand <path> ?` prints) and [`variants`] (the firmware
//! alternatives that are not one subject's).

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::secret::Secret;

mod cas;
mod certificates;
mod config;
mod enrolment;
mod help;
mod persistence;
mod secrets;
mod status;
mod variants;

pub use certificates::{
    device_time, parse_cert_and_key, parse_cert_and_key_with_password, parse_cert_bundle,
    parse_cert_der, CertError, CertMeta, Purpose, ServiceCert,
};
pub use enrolment::RenewalProfile;

/// The SCEP profile command of each verb generation (catalogue scep.commands): current
/// devices know `SCEP Profiles Set`, older ones `SCEP Renewal Request` (variant
/// `scep_verbs`). The dispatcher and the `?` help both use these.
const PROFILES_SET: &[&str] = &[
    "Security",
    "Certificates",
    "Services",
    "Enrollment",
    "SCEP",
    "Profiles",
    "Set",
];
const RENEWAL_REQUEST: &[&str] = &[
    "Security",
    "Certificates",
    "Services",
    "Enrollment",
    "SCEP",
    "Renewal",
    "Request",
];
pub use persistence::{PersistedCert, PersistedState};
pub use variants::PopulateReading;

/// The release line the simulated devices announce.
pub const RELEASE: &str = "RoomOS 11.14.1.5 a1b2c3d";
/// The software release date printed in the banner.
pub const RELEASE_DATE: &str = "2024-05-10";

/// Which `cisco-action` a JWE carried (mirrors `jwe::Action` so the model does not depend
/// on the crypto module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JweAction {
    Populate,
    Add,
    Activate,
    Deactivate,
}

/// The outcome of opening a JWE for this device.
pub struct Decrypted {
    pub action: JweAction,
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The secret generation the JWE was opened with (see [`Device::jwe_to_open`]).
    pub generation: u64,
}

/// What the caller must decrypt before calling [`Device::handle`].
pub struct JweJob {
    pub compact: String,
    pub secret: Secret,
    pub generation: u64,
}

/// The three x-command families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Command,
    Status,
    Configuration,
}

/// An already parsed x-command.
#[derive(Clone)]
pub struct Request {
    pub kind: Kind,
    /// Path words after the `xCommand`/`xStatus`/`xConfiguration` keyword, as typed.
    pub path: Vec<String>,
    /// `Name: value` parameters in order, names as typed.
    pub params: Vec<(String, String)>,
    /// The multi-line body, if the command took one.
    pub body: Option<Zeroizing<String>>,
}

impl Request {
    /// The first parameter with this name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path_is(&self, words: &[&str]) -> bool {
        self.path.len() == words.len()
            && self
                .path
                .iter()
                .zip(words)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// A leaf value; `Str` is printed quoted, `Literal` bare (numbers, enums, booleans).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Literal(String),
}

/// One line of a reply: the path below the result/status/configuration root and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub path: Vec<String>,
    pub value: Value,
}

fn leaf(path: &[&str], value: Value) -> Leaf {
    Leaf {
        path: path.iter().map(|s| s.to_string()).collect(),
        value,
    }
}

/// The status of an xCommand result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultStatus {
    Ok,
    Error,
    ParameterError,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Ok => "OK",
            ResultStatus::Error => "Error",
            ResultStatus::ParameterError => "ParameterError",
        }
    }
}

/// A structured reply; the TSH layer renders it in terminal or JSON form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// An xCommand result (`*r <name> ...`), errors included.
    Result {
        name: String,
        status: ResultStatus,
        fields: Vec<Leaf>,
    },
    /// `xStatus` leaves (`*s ...`).
    Status(Vec<Leaf>),
    /// `xConfiguration` leaves (`*c xConfiguration ...`).
    Configuration(Vec<Leaf>),
    /// A configuration was set.
    ConfigurationSet,
    /// An xStatus / xConfiguration error (ends in `ERROR`).
    NodeError {
        kind: Kind,
        reason: String,
        xpath: String,
    },
}

/// What a request did besides its reply.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    /// Device state changed (the caller persists it).
    pub changed: bool,
    /// The device was asked to reboot.
    pub reboot: bool,
}

impl Outcome {
    fn reply(response: Response) -> Self {
        Outcome {
            response,
            changed: false,
            reboot: false,
        }
    }
    fn changed(response: Response) -> Self {
        Outcome {
            response,
            changed: true,
            reboot: false,
        }
    }
}

/// How long a simulated device claims to have been up when first asked: real rooms run for
/// weeks, and a restart must be visible as a drop in uptime.
pub const INITIAL_UPTIME_SECS: i64 = 86_400;

/// A simulated device.
#[derive(Clone)]
pub struct Device {
    pub name: String,
    secret: Option<Secret>,
    generation: u64,
    pub certificates: Vec<ServiceCert>,
    pub cas: Vec<CertMeta>,
    pub e2ee_mode_on: bool,
    pub preferred_domain: String,
    pub boot_count: u64,
    /// The SCEP servers this device can reach (set by the fleet, not persisted).
    pub scep_servers: Vec<super::scep::ScepServer>,
    pub renewal_profiles: Vec<RenewalProfile>,
    /// When the device last booted; set on first use to `now - INITIAL_UPTIME_SECS`.
    pub booted_at: Option<OffsetDateTime>,
    /// The alternatives this device plays (set by the fleet, not persisted).
    pub variants: super::variants::Variants,
    /// A SCEP enrolment accepted but not yet complete (variant `scep_completion: delayed`):
    /// when it completes, the certificate and key it installs. Not persisted (a restart of
    /// the simulator loses it, as a reboot would abort a real one).
    pub pending_enrolment: Option<(OffsetDateTime, ServiceCert)>,
    /// How this device's firmware reads a `populate` JWE's plaintext (set by the fleet from
    /// the device's `sim:` block, not persisted: it is the firmware, not the state).
    pub populate_reading: PopulateReading,
}

fn err(name: &str, status: ResultStatus, reason: &str) -> Outcome {
    Outcome::reply(Response::Result {
        name: name.to_string(),
        status,
        fields: vec![leaf(&["Reason"], Value::Str(reason.to_string()))],
    })
}

fn ok(name: &str, fields: Vec<Leaf>) -> Response {
    Response::Result {
        name: name.to_string(),
        status: ResultStatus::Ok,
        fields,
    }
}

/// Does this text look like a JWE compact serialization (five dot-separated parts)?
pub fn looks_like_jwe(s: &str) -> bool {
    s.split('.').count() == 5
}

/// The reason given for every JWE that cannot be opened (deliberately uninformative).
pub const DECRYPT_FAILED: &str = "Failed to decrypt the payload";

impl Device {
    pub fn new(name: impl Into<String>) -> Self {
        Device {
            name: name.into(),
            secret: None,
            generation: 0,
            certificates: Vec::new(),
            cas: Vec::new(),
            e2ee_mode_on: true,
            preferred_domain: String::new(),
            boot_count: 0,
            scep_servers: Vec::new(),
            renewal_profiles: Vec::new(),
            booted_at: None,
            variants: super::variants::Variants::default(),
            pending_enrolment: None,
            populate_reading: PopulateReading::default(),
        }
    }

    /// Seconds since the device booted (`xStatus SystemUnit Uptime`).
    pub fn uptime(&mut self, now: OffsetDateTime) -> i64 {
        let booted = *self
            .booted_at
            .get_or_insert(now - time::Duration::seconds(INITIAL_UPTIME_SECS));
        (now - booted).whole_seconds().max(0)
    }

    /// The current ClientSecret (the simulator exposes it to tests only).
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// The JWE this request carries that must be opened with the device's current secret,
    /// or `None` if it carries none (or the device has no secret, which `handle` reports).
    pub fn jwe_to_open(&self, req: &Request) -> Option<JweJob> {
        if req.kind != Kind::Command {
            return None;
        }
        let secret = self.secret.clone()?;
        let compact = if req.path_is(&["Security", "ClientSecret", "Populate"]) {
            let value: String = match self.variants.populate_form {
                super::variants::PopulateForm::OneLine => req.param("Secret")?.to_string(),
                super::variants::PopulateForm::MultiLine => {
                    req.body.as_ref()?.split_whitespace().collect()
                }
            };
            Some(value).filter(|v| looks_like_jwe(v))?
        } else if req.path_is(&["Security", "Certificates", "Services", "Add"]) {
            if !req
                .param("IsEncrypted")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                return None;
            }
            let body = req.body.as_ref()?;
            body.split_whitespace().collect::<String>()
        } else if req.path_is(&["Security", "Certificates", "Services", "Activate"])
            || req.path_is(&["Security", "Certificates", "Services", "Deactivate"])
        {
            let purpose = req.param("Purpose").and_then(Purpose::parse)?;
            if purpose != Purpose::WebexIdentity {
                return None;
            }
            req.param("Fingerprint")?.to_string()
        } else {
            return None;
        };
        Some(JweJob {
            compact,
            secret,
            generation: self.generation,
        })
    }

    /// Applies a request. `decrypted` is the outcome of opening the JWE named by
    /// [`Device::jwe_to_open`] (`Err` = could not be opened); `now` decides validity.
    pub fn handle(
        &mut self,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
        now: OffsetDateTime,
    ) -> Outcome {
        // Uptime starts counting at the first request a device ever sees.
        self.uptime(now);
        self.complete_enrolment(now);
        match req.kind {
            Kind::Command => self.command(req, decrypted, now),
            Kind::Status => self.status(req, now),
            Kind::Configuration => self.configuration(req),
        }
    }

    /// The `<Name>Result` of an xCommand (`Services Show` → `ServicesShowResult`).
    pub fn result_name(req: &Request) -> String {
        let n = req.path.len();
        let tail = &req.path[n.saturating_sub(2)..];
        let canon: String = tail.iter().map(|w| canonical_word(w)).collect();
        format!("{canon}Result")
    }

    /// Checks a decrypt outcome against the expected action and secret generation.
    fn take_plaintext(
        &self,
        name: &str,
        decrypted: Option<Result<Decrypted, ()>>,
        expected: JweAction,
    ) -> Result<Zeroizing<Vec<u8>>, Outcome> {
        match decrypted {
            None => Err(err(name, ResultStatus::Error, DECRYPT_FAILED)),
            Some(Err(())) => Err(err(name, ResultStatus::Error, DECRYPT_FAILED)),
            Some(Ok(d)) if d.generation != self.generation => Err(err(
                name,
                ResultStatus::Error,
                "The client secret changed; payload rejected",
            )),
            Some(Ok(d)) if d.action != expected => Err(err(
                name,
                ResultStatus::Error,
                "Unexpected cisco-action in the payload",
            )),
            Some(Ok(d)) => Ok(d.plaintext),
        }
    }

    fn command(
        &mut self,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
        now: OffsetDateTime,
    ) -> Outcome {
        let name = Self::result_name(req);
        let name = name.as_str();
        if req.path_is(&["Security", "ClientSecret", "Populate"]) {
            return self.populate(name, req, decrypted);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Add"]) {
            return self.services_add(name, req, decrypted);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Show"]) {
            return Outcome::reply(self.services_show(name, req));
        }
        if req.path_is(&["Security", "Certificates", "Services", "Activate"]) {
            return self.activation(name, req, decrypted, true);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Deactivate"]) {
            return self.activation(name, req, decrypted, false);
        }
        if req.path_is(&["Security", "Certificates", "Services", "Delete"]) {
            return self.services_delete(name, req);
        }
        if req.path_is(&["Security", "Certificates", "CA", "Add"]) {
            return self.ca_add(name, req);
        }
        if req.path_is(&["Security", "Certificates", "CA", "Show"]) {
            return Outcome::reply(self.ca_show(name));
        }
        if req.path_is(&["Security", "Certificates", "CA", "Delete"]) {
            return self.ca_delete(name, req);
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "SCEP",
            "Request",
        ]) {
            return self.scep_request(name, req, now);
        }
        // catalogue scep.commands: current devices know `SCEP Profiles Set`, older ones
        // `SCEP Renewal Request` (variant `scep_verbs`).
        let older = self.variants.scep_verbs == super::variants::ScepVerbs::Older;
        if (older && req.path_is(RENEWAL_REQUEST)) || (!older && req.path_is(PROFILES_SET)) {
            return self.renewal_request(name, req);
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "List",
        ]) {
            return Outcome::reply(self.profiles_list(name));
        }
        if req.path_is(&[
            "Security",
            "Certificates",
            "Services",
            "Enrollment",
            "Profiles",
            "Delete",
        ]) {
            return self.profiles_delete(name, req);
        }
        if req.path_is(&["SystemUnit", "Boot"]) {
            self.boot_count += 1;
            self.booted_at = Some(now);
            return Outcome {
                response: ok(name, vec![]),
                changed: true,
                reboot: true,
            };
        }
        Self::unknown_command(req)
    }

    /// `Unknown command` with the path it did not know (catalogue `reply.unknown-command`,
    /// jsxapi's tests: `XPath` `/Dila`).
    fn unknown_command(req: &Request) -> Outcome {
        let xpath: String = req.path.iter().map(|w| format!("/{w}")).collect();
        Outcome::reply(Response::Result {
            name: "Result".to_string(),
            status: ResultStatus::Error,
            fields: vec![
                leaf(&["Reason"], Value::Str("Unknown command".to_string())),
                leaf(&["XPath"], Value::Str(xpath)),
            ],
        })
    }
}

/// The leaves whose path starts with `prefix` (case-insensitive).
fn select(tree: Vec<Leaf>, prefix: &[String]) -> Vec<Leaf> {
    tree.into_iter()
        .filter(|l| {
            l.path.len() >= prefix.len()
                && l.path
                    .iter()
                    .zip(prefix)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        })
        .collect()
}

/// Canonical spelling of a command word (for result names of case-insensitive input).
fn canonical_word(w: &str) -> String {
    const WORDS: &[&str] = &[
        "Security",
        "ClientSecret",
        "Populate",
        "Certificates",
        "Services",
        "Add",
        "Show",
        "Activate",
        "Deactivate",
        "Delete",
        "CA",
        "Enrollment",
        "SCEP",
        "Renewal",
        "Request",
        "Profiles",
        "List",
        "Set",
        "SystemUnit",
        "Boot",
    ];
    WORDS
        .iter()
        .find(|c| c.eq_ignore_ascii_case(w))
        .map(|c| c.to_string())
        .unwrap_or_else(|| w.to_string())
}

#[cfg(test)]
mod tests;
