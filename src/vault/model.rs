//! The vault's decrypted content and its bookkeeping rules (pure: no I/O, the clock is a
//! parameter). Everything here keeps one invariant: a secret is never deleted before the
//! device is proven to hold its successor — superseded secrets move to `previous`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::phrase::Reading;
use crate::secret::Secret;

/// Where a device's ClientSecret stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretState {
    /// The device holds (or, if not yet seeded, will be seeded with) `current`.
    #[default]
    Ok,
    /// `pending` was recorded before a rotation command was sent; the outcome is not yet
    /// confirmed, so the device holds either `current` or `pending`.
    RotationPending,
    /// Neither `current` nor `pending` was accepted by the device: only a factory reset
    /// recovers it. Both secrets are kept.
    SecretUnknown,
}

impl SecretState {
    /// The name used in listings and in the file (`ok`, `rotation-pending`, `secret-unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretState::Ok => "ok",
            SecretState::RotationPending => "rotation-pending",
            SecretState::SecretUnknown => "secret-unknown",
        }
    }
}

impl std::fmt::Display for SecretState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret with its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    #[serde(with = "secret_serde")]
    pub secret: Secret,
    /// When the secret was generated or entered.
    #[serde(with = "time_serde")]
    pub created: OffsetDateTime,
    /// When it stopped being current (or pending); set on entries of `previous`.
    #[serde(
        default,
        with = "opt_time_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub retired: Option<OffsetDateTime>,
    /// Free text: how the secret came to be (`generated`, `set`, `imported`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SecretRecord {
    pub fn new(secret: Secret, created: OffsetDateTime, note: Option<&str>) -> Self {
        SecretRecord {
            secret,
            created,
            retired: None,
            note: note.map(str::to_owned),
        }
    }

    fn retire(mut self, now: OffsetDateTime, why: Option<&str>) -> Self {
        self.retired = Some(now);
        if let Some(why) = why {
            self.note = Some(match self.note.take() {
                Some(n) => format!("{n}; {why}"),
                None => why.to_owned(),
            });
        }
        self
    }
}

/// Another secret a device may hold after the in-flight `Populate`: what the other reading
/// of its plaintext makes of it (see [`super::phrase::outcomes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alternate {
    pub record: SecretRecord,
    /// The reading a device holding this secret has revealed.
    pub reading: Reading,
}

/// A device's firmware reading of the `populate` plaintext, as a proof showed it, with the
/// software release it was running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    pub release: String,
    pub reading: Reading,
}

/// Which recorded secret a proof showed the device holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Current,
    Pending,
    Alternate(usize),
}

/// Everything the vault knows about one device's ClientSecret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceSecrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<SecretRecord>,
    /// Recorded (and saved) before a rotation command is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<SecretRecord>,
    /// The reading a device holding `pending` has revealed: the plaintext form of the last
    /// `Populate` that carried it (recorded before that command was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reading: Option<Reading>,
    /// The other secrets the device may hold after the `Populate`s sent for `pending`
    /// (recorded before each was sent); a proof decides between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<Alternate>,
    /// The firmware reading this device revealed, and the release it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Superseded secrets, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<SecretRecord>,
    /// The device is known to hold `current` (the plaintext first populate is done).
    #[serde(default)]
    pub seeded: bool,
    #[serde(default)]
    pub state: SecretState,
}

/// Why a bookkeeping step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookkeepingError {
    #[error("device {device} is not in the vault")]
    NoSuchDevice { device: String },
    #[error("device {device} has no current secret to rotate from")]
    NoCurrentSecret { device: String },
    #[error(
        "device {device} has an unresolved rotation (state {state}); resolve it before starting another"
    )]
    RotationInProgress { device: String, state: SecretState },
    #[error("device {device} has no pending rotation")]
    NoPendingRotation { device: String },
    #[error("device {device}: the new secret is the same as the current one")]
    SameSecret { device: String },
    #[error("invalid secret for {name}: {reason}")]
    InvalidSecret { name: String, reason: &'static str },
    #[error("invalid device or credential name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
}

/// Checks a secret the vault is asked to keep. The value is never part of the error.
/// Control characters are refused: a secret must survive a terminal, a CSV line and a TSH
/// command line.
pub fn check_secret(name: &str, secret: &Secret) -> Result<(), BookkeepingError> {
    let bad = |reason| BookkeepingError::InvalidSecret {
        name: name.to_owned(),
        reason,
    };
    if secret.is_empty() {
        return Err(bad("it is empty"));
    }
    if secret.expose().chars().any(char::is_control) {
        return Err(bad("it contains a control character (newline, tab, ...)"));
    }
    Ok(())
}

/// Checks a device or credential name (a key in the vault, shown in listings).
pub fn check_name(name: &str) -> Result<(), BookkeepingError> {
    let bad = |reason| BookkeepingError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("it contains whitespace or a control character"));
    }
    Ok(())
}

impl DeviceSecrets {
    /// Manual set (or generate/import): `secret` becomes current. The old current and any
    /// pending secret move to `previous` — nothing is deleted. `seeded` says whether the
    /// device is already known to hold `secret`.
    pub fn set_current(
        &mut self,
        record: SecretRecord,
        seeded: bool,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        self.retire_candidates(now, "superseded by a manual set");
        match self.current.take() {
            Some(old) if old.secret == record.secret => {
                // Same value: keep its original record (and date).
                self.current = Some(old);
            }
            Some(old) => {
                self.previous.insert(0, old.retire(now, None));
                self.current = Some(record);
            }
            None => self.current = Some(record),
        }
        self.seeded = seeded;
        self.state = SecretState::Ok;
        Ok(())
    }

    /// Records `record` as pending. The caller must save the vault durably before sending
    /// the rotation command. Refused when a rotation is unresolved (it would drop a secret
    /// the device may hold) or when there is no current secret to rotate from.
    pub fn begin_rotation(
        &mut self,
        device: &str,
        record: SecretRecord,
    ) -> Result<(), BookkeepingError> {
        if self.pending.is_some() || self.state != SecretState::Ok {
            return Err(BookkeepingError::RotationInProgress {
                device: device.to_owned(),
                state: self.state,
            });
        }
        let Some(current) = &self.current else {
            return Err(BookkeepingError::NoCurrentSecret {
                device: device.to_owned(),
            });
        };
        if current.secret == record.secret {
            return Err(BookkeepingError::SameSecret {
                device: device.to_owned(),
            });
        }
        self.pending = Some(record);
        self.state = SecretState::RotationPending;
        Ok(())
    }

    /// The device is proven to hold `pending`: it becomes current, the old current goes to
    /// `previous` (dated). Also resolves `secret-unknown` if the device later proves to hold
    /// `pending`.
    pub fn promote_pending(
        &mut self,
        device: &str,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        let Some(pending) = self.pending.take() else {
            return Err(BookkeepingError::NoPendingRotation {
                device: device.to_owned(),
            });
        };
        self.retire_alternates(now, "not adopted: the device holds the chosen secret");
        self.pending_reading = None;
        if let Some(old) = self.current.take() {
            self.previous.insert(0, old.retire(now, None));
        }
        self.current = Some(pending);
        self.seeded = true;
        self.state = SecretState::Ok;
        Ok(())
    }

    /// Moves every alternate to `previous` (nothing is deleted).
    fn retire_alternates(&mut self, now: OffsetDateTime, why: &str) {
        for alt in std::mem::take(&mut self.alternates) {
            self.previous.insert(0, alt.record.retire(now, Some(why)));
        }
    }

    /// Moves `pending` and every alternate to `previous`.
    fn retire_candidates(&mut self, now: OffsetDateTime, why: &str) {
        self.retire_alternates(now, why);
        self.pending_reading = None;
        if let Some(pending) = self.pending.take() {
            self.previous.insert(0, pending.retire(now, Some(why)));
        }
    }

    /// Records, before a `Populate` carrying `pending` as `plaintext(pending, sent_as)` is
    /// sent, every secret the device may hold once it lands: holding `pending` will mean
    /// the firmware reads `sent_as`; what the other reading makes of the plaintext joins
    /// the alternates (which accumulate until the rotation is resolved).
    pub fn record_attempt(
        &mut self,
        device: &str,
        sent_as: Reading,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        let Some(pending) = &self.pending else {
            return Err(BookkeepingError::NoPendingRotation {
                device: device.to_owned(),
            });
        };
        let outcomes = super::phrase::outcomes(&pending.secret, sent_as);
        for (secret, reading) in outcomes.into_iter().skip(1) {
            let known = self.alternates.iter().any(|a| a.record.secret == secret)
                || self.current.as_ref().is_some_and(|c| c.secret == secret);
            if !known {
                self.alternates.push(Alternate {
                    record: SecretRecord::new(secret, now, Some("other reading of a populate")),
                    reading,
                });
            }
        }
        self.pending_reading = Some(sent_as);
        Ok(())
    }

    /// Every secret the device may hold, in the order a proof should try them: `pending`,
    /// the alternates, then `current` (after a `Populate` the new secrets are likelier).
    pub fn candidates(&self) -> Vec<(Held, &Secret)> {
        let mut out = Vec::new();
        if let Some(p) = &self.pending {
            out.push((Held::Pending, &p.secret));
        }
        for (i, a) in self.alternates.iter().enumerate() {
            out.push((Held::Alternate(i), &a.record.secret));
        }
        if let Some(c) = &self.current {
            out.push((Held::Current, &c.secret));
        }
        out
    }

    /// A proof showed the device holds alternate `index`: it becomes current; the old
    /// current, `pending` and the other alternates move to `previous`.
    pub fn promote_alternate(
        &mut self,
        device: &str,
        index: usize,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        if index >= self.alternates.len() {
            return Err(BookkeepingError::NoPendingRotation {
                device: device.to_owned(),
            });
        }
        let chosen = self.alternates.remove(index);
        self.retire_candidates(now, "not adopted: the device holds another reading of it");
        if let Some(old) = self.current.take() {
            self.previous.insert(0, old.retire(now, None));
        }
        self.current = Some(chosen.record);
        self.seeded = true;
        self.state = SecretState::Ok;
        Ok(())
    }

    /// The device was factory-reset or replaced: it holds no secret. Every recorded secret
    /// moves to `previous`; `fresh` becomes current, not seeded, so the next apply seeds it;
    /// the learned firmware reading is dropped (a replacement may run another release).
    pub fn forget(&mut self, fresh: SecretRecord, now: OffsetDateTime) {
        let why = "device forgotten (factory reset or replaced)";
        self.retire_candidates(now, why);
        if let Some(old) = self.current.take() {
            self.previous.insert(0, old.retire(now, Some(why)));
        }
        self.current = Some(fresh);
        self.seeded = false;
        self.state = SecretState::Ok;
        self.firmware = None;
    }

    /// The device is proven to still hold `current`: the rotation is dropped. The pending
    /// secret is kept in `previous` (marked abandoned) rather than deleted.
    pub fn abandon_pending(
        &mut self,
        device: &str,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        if self.pending.is_none() {
            return Err(BookkeepingError::NoPendingRotation {
                device: device.to_owned(),
            });
        }
        self.retire_candidates(now, "rotation abandoned");
        self.seeded = true;
        self.state = SecretState::Ok;
        Ok(())
    }

    /// The device is proven to hold `current` (e.g. a JWE under it was accepted): whatever
    /// the state, it becomes `ok` and seeded; a pending secret, if any, is kept in
    /// `previous` (marked abandoned). Refused without a current secret.
    pub fn confirm_current(
        &mut self,
        device: &str,
        now: OffsetDateTime,
    ) -> Result<(), BookkeepingError> {
        if self.current.is_none() {
            return Err(BookkeepingError::NoCurrentSecret {
                device: device.to_owned(),
            });
        }
        if self.pending.is_some() {
            return self.abandon_pending(device, now);
        }
        self.seeded = true;
        self.state = SecretState::Ok;
        Ok(())
    }

    /// Neither secret works: mark the device, keep `current` and `pending` both.
    pub fn mark_secret_unknown(&mut self) {
        self.state = SecretState::SecretUnknown;
    }
}

/// The whole decrypted vault document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Document {
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceSecrets>,
    /// Software release → how its firmware reads a `populate` plaintext, learned from the
    /// first device (the canary) a proof settled on that release.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub readings: BTreeMap<String, Reading>,
    /// Named credentials (device SSH passwords) referenced from the inventory.
    #[serde(default)]
    pub credentials: BTreeMap<String, SecretRecord>,
}

/// Serde for a `Secret` as a plain string (used only for the vault's encrypted content).
mod secret_serde {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        String::deserialize(de).map(Secret::new)
    }
}

/// RFC 3339 timestamps (the `time` crate's serde feature is not enabled in this crate).
mod time_serde {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use time::{format_description::well_known::Rfc3339, OffsetDateTime};

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, ser: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        ser.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(de)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(D::Error::custom)
    }
}

mod opt_time_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, ser: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time_serde::serialize(t, ser),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::time_serde")] OffsetDateTime);
        Option::<Wrap>::deserialize(de).map(|w| w.map(|Wrap(t)| t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn rec(s: &str, t: OffsetDateTime) -> SecretRecord {
        SecretRecord::new(Secret::new(s), t, None)
    }

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
    const T1: OffsetDateTime = datetime!(2026-02-01 00:00 UTC);
    const T2: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);

    fn seeded(s: &str) -> DeviceSecrets {
        let mut d = DeviceSecrets::default();
        d.set_current(rec(s, T0), true, T0).unwrap();
        d
    }

    #[test]
    fn begin_then_promote_keeps_old_as_previous() {
        let mut d = seeded("old");
        d.begin_rotation("r1", rec("new", T1)).unwrap();
        assert_eq!(d.state, SecretState::RotationPending);
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "old");
        d.promote_pending("r1", T1).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert!(d.pending.is_none());
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "new");
        assert_eq!(d.previous.len(), 1);
        assert_eq!(d.previous[0].secret.expose(), "old");
        assert_eq!(d.previous[0].retired, Some(T1));
        assert_eq!(d.previous[0].created, T0);
    }

    #[test]
    fn two_rotations_give_two_previous_newest_first() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.promote_pending("r1", T1).unwrap();
        d.begin_rotation("r1", rec("c", T2)).unwrap();
        d.promote_pending("r1", T2).unwrap();
        let prev: Vec<_> = d.previous.iter().map(|r| r.secret.expose()).collect();
        assert_eq!(prev, ["b", "a"]);
        assert_eq!(d.current.unwrap().secret.expose(), "c");
    }

    #[test]
    fn unknown_keeps_both_and_blocks_a_new_rotation() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.mark_secret_unknown();
        assert_eq!(d.state, SecretState::SecretUnknown);
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "a");
        assert_eq!(d.pending.as_ref().unwrap().secret.expose(), "b");
        let err = d.begin_rotation("r1", rec("c", T2)).unwrap_err();
        assert!(matches!(err, BookkeepingError::RotationInProgress { .. }));
        // Still both there.
        assert_eq!(d.pending.as_ref().unwrap().secret.expose(), "b");
        // A later proof that the device holds `pending` resolves it.
        d.promote_pending("r1", T2).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert_eq!(d.current.unwrap().secret.expose(), "b");
    }

    #[test]
    fn pending_rotation_blocks_a_second_begin() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        assert!(d.begin_rotation("r1", rec("c", T1)).is_err());
        assert_eq!(d.pending.unwrap().secret.expose(), "b");
    }

    #[test]
    fn begin_needs_a_current_and_a_different_secret() {
        let mut d = DeviceSecrets::default();
        assert!(matches!(
            d.begin_rotation("r1", rec("x", T0)),
            Err(BookkeepingError::NoCurrentSecret { .. })
        ));
        let mut d = seeded("a");
        assert!(matches!(
            d.begin_rotation("r1", rec("a", T0)),
            Err(BookkeepingError::SameSecret { .. })
        ));
    }

    #[test]
    fn abandon_keeps_pending_in_previous() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.abandon_pending("r1", T2).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "a");
        assert_eq!(d.previous[0].secret.expose(), "b");
        assert!(d.previous[0].note.as_deref().unwrap().contains("abandoned"));
        assert!(d.abandon_pending("r1", T2).is_err());
    }

    #[test]
    fn confirm_current_resolves_any_state_without_losing_a_secret() {
        let mut d = seeded("a");
        d.mark_secret_unknown();
        d.confirm_current("r1", T1).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.mark_secret_unknown();
        d.confirm_current("r1", T2).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert!(d.pending.is_none());
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "a");
        assert_eq!(d.previous[0].secret.expose(), "b");
        assert!(DeviceSecrets::default().confirm_current("r1", T2).is_err());
    }

    #[test]
    fn manual_set_moves_current_and_pending_to_previous() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.mark_secret_unknown();
        d.set_current(rec("c", T2), false, T2).unwrap();
        assert_eq!(d.state, SecretState::Ok);
        assert!(!d.seeded);
        let prev: Vec<_> = d.previous.iter().map(|r| r.secret.expose()).collect();
        assert_eq!(prev, ["a", "b"]);
    }

    #[test]
    fn manual_set_of_the_same_value_keeps_the_record() {
        let mut d = seeded("a");
        d.set_current(rec("a", T2), true, T2).unwrap();
        assert!(d.previous.is_empty());
        assert_eq!(d.current.unwrap().created, T0);
    }

    #[test]
    fn candidates_are_recorded_before_a_populate_and_a_proof_promotes_one() {
        let mut d = seeded("old");
        let p = crate::vault::phrase::generate_phrase();
        d.begin_rotation("r1", SecretRecord::new(p.clone(), T1, None))
            .unwrap();
        // Sent raw: a decoding firmware refuses a generated phrase, no alternate.
        d.record_attempt("r1", Reading::Raw, T1).unwrap();
        assert!(d.alternates.is_empty());
        assert_eq!(d.pending_reading, Some(Reading::Raw));
        // Then as base64url: a raw firmware would hold the base64url text.
        d.record_attempt("r1", Reading::Base64url, T1).unwrap();
        d.record_attempt("r1", Reading::Base64url, T1).unwrap();
        assert_eq!(d.alternates.len(), 1);
        assert_eq!(d.alternates[0].reading, Reading::Raw);
        assert_eq!(d.pending_reading, Some(Reading::Base64url));
        let order: Vec<Held> = d.candidates().into_iter().map(|(h, _)| h).collect();
        assert_eq!(order, [Held::Pending, Held::Alternate(0), Held::Current]);
        // The device holds the alternate: it becomes current, nothing is lost.
        let alt = d.alternates[0].record.secret.clone();
        d.promote_alternate("r1", 0, T2).unwrap();
        assert_eq!(d.current.as_ref().unwrap().secret, alt);
        assert!(d.pending.is_none() && d.alternates.is_empty() && d.pending_reading.is_none());
        let prev: Vec<&Secret> = d.previous.iter().map(|r| &r.secret).collect();
        assert!(prev.contains(&&p) && prev.contains(&&Secret::new("old")));
        assert!(d.promote_alternate("r1", 0, T2).is_err());
        // Promoting the pending secret retires the alternates.
        d.begin_rotation("r1", rec("third", T2)).unwrap();
        d.record_attempt("r1", Reading::Base64url, T2).unwrap();
        d.promote_pending("r1", T2).unwrap();
        assert!(d.alternates.is_empty());
        assert_eq!(d.previous.len(), 4);
    }

    #[test]
    fn forget_keeps_every_secret_in_history_and_unseeds() {
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        d.record_attempt("r1", Reading::Base64url, T1).unwrap();
        d.mark_secret_unknown();
        d.firmware = Some(Firmware {
            release: "RoomOS 11".into(),
            reading: Reading::Raw,
        });
        d.forget(rec("fresh", T2), T2);
        assert_eq!(d.state, SecretState::Ok);
        assert!(!d.seeded);
        assert!(d.firmware.is_none());
        assert_eq!(d.current.as_ref().unwrap().secret.expose(), "fresh");
        let prev: Vec<&str> = d.previous.iter().map(|r| r.secret.expose()).collect();
        assert_eq!(prev.len(), 3);
        assert!(prev.contains(&"a") && prev.contains(&"b"));
        assert!(d.previous.iter().all(|r| r.retired == Some(T2)));
    }

    #[test]
    fn secret_and_name_checks() {
        assert!(check_secret("d", &Secret::new("")).is_err());
        assert!(check_secret("d", &Secret::new("a\nb")).is_err());
        assert!(check_secret("d", &Secret::new("a b,c")).is_ok());
        let err = check_secret("d", &Secret::new("hunter2\t")).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("room-1.example.com").is_ok());
    }

    #[test]
    fn document_round_trips_through_json() {
        let mut doc = Document::default();
        let mut d = seeded("a");
        d.begin_rotation("r1", rec("b", T1)).unwrap();
        doc.devices.insert("r1".into(), d);
        doc.credentials.insert(
            "ssh".into(),
            SecretRecord::new(Secret::new("pw"), T0, Some("x")),
        );
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains("\"rotation-pending\""));
        assert!(text.contains("2026-01-01T00:00:00Z"));
        let back: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }
}
