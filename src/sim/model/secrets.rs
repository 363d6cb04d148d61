//! The ClientSecret as the device holds it: `Security ClientSecret Populate`, first seeding
//! (base64url of the phrase in plaintext) and rotation (a `populate` JWE opened with the
//! current secret), read as the firmware variant says ([`super::PopulateReading`]).

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{
    err, looks_like_jwe, ok, Decrypted, Device, JweAction, Outcome, PopulateReading, Request,
    ResultStatus,
};
use crate::secret::Secret;

impl Device {
    pub(super) fn populate(
        &mut self,
        name: &str,
        req: &Request,
        decrypted: Option<Result<Decrypted, ()>>,
    ) -> Outcome {
        // catalogue command.populate-form: one line (`Secret: "…"`) or a multi-line body.
        let value: String = match self.variants.populate_form {
            crate::sim::variants::PopulateForm::OneLine => match req.param("Secret") {
                Some(v) => v.to_string(),
                None => return err(name, ResultStatus::ParameterError, "Missing Secret"),
            },
            crate::sim::variants::PopulateForm::MultiLine => {
                let body: String = req
                    .body
                    .as_ref()
                    .map(|b| b.split_whitespace().collect())
                    .unwrap_or_default();
                if req.param("Secret").is_some() || body.is_empty() {
                    return err(
                        name,
                        ResultStatus::ParameterError,
                        "The secret is given as the command's body",
                    );
                }
                body
            }
        };
        let value = Zeroizing::new(value);
        let value = value.as_str();
        if self.secret.is_none() {
            // First seeding: base64url of the phrase, in plaintext.
            let trimmed = value.trim_end_matches('=');
            let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed) else {
                return err(name, ResultStatus::Error, "Secret is not valid base64url");
            };
            let bytes = Zeroizing::new(bytes);
            let Ok(phrase) = std::str::from_utf8(&bytes) else {
                return err(name, ResultStatus::Error, "Secret is not valid UTF-8");
            };
            if phrase.is_empty() {
                return err(name, ResultStatus::Error, "Secret must not be empty");
            }
            self.secret = Some(Secret::new(phrase));
            self.generation += 1;
            return Outcome::changed(ok(name, vec![]));
        }
        if !looks_like_jwe(value) {
            return err(
                name,
                ResultStatus::Error,
                "A client secret is already set; send a populate JWE",
            );
        }
        let plaintext = match self.take_plaintext(name, decrypted, JweAction::Populate) {
            Ok(p) => p,
            Err(o) => return o,
        };
        if plaintext.is_empty() {
            self.secret = None;
        } else {
            let bytes = match self.populate_reading {
                PopulateReading::Raw => plaintext,
                PopulateReading::Base64url => {
                    let Some(decoded) = std::str::from_utf8(&plaintext).ok().and_then(|t| {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(t.trim_end_matches('='))
                            .ok()
                    }) else {
                        return err(name, ResultStatus::Error, "Secret is not valid base64url");
                    };
                    let decoded = Zeroizing::new(decoded);
                    if decoded.is_empty() {
                        return err(name, ResultStatus::Error, "Secret must not be empty");
                    }
                    decoded
                }
            };
            // A simulator limit: the model keeps secrets as text, so bytes that are not
            // UTF-8 are refused (a real firmware might hold them).
            let Ok(phrase) = std::str::from_utf8(&bytes) else {
                return err(name, ResultStatus::Error, "Secret is not valid UTF-8");
            };
            self.secret = Some(Secret::new(phrase));
        }
        self.generation += 1;
        Outcome::changed(ok(name, vec![]))
    }
}
