//! The configuration tree (`xConfiguration`): E2EE `Mode` and `Identity PreferredDomain`,
//! reads and sets with the device's value checks.

use super::{leaf, select, Device, Kind, Leaf, Outcome, Request, Response, Value};

impl Device {
    /// Every configuration leaf the device has (what `xConfiguration` of the root prints).
    pub fn config_tree(&self) -> Vec<Leaf> {
        vec![
            leaf(
                &[
                    "Conference",
                    "EndToEndEncryption",
                    "Identity",
                    "PreferredDomain",
                ],
                Value::Str(self.preferred_domain.clone()),
            ),
            leaf(
                &["Conference", "EndToEndEncryption", "Mode"],
                Value::Literal(if self.e2ee_mode_on { "On" } else { "Off" }.into()),
            ),
        ]
    }

    pub(super) fn configuration(&mut self, req: &Request) -> Outcome {
        // `xConfiguration A B C: value` arrives as path [A, B] and param (C, value).
        let Some((last, value)) = req.params.first() else {
            let leaves = select(self.config_tree(), &req.path);
            if leaves.is_empty() {
                return Outcome::reply(Response::NodeError {
                    kind: Kind::Configuration,
                    reason: "No match on address expression.".into(),
                    xpath: format!("Configuration/{}", req.path.join("/")),
                });
            }
            return Outcome::reply(Response::Configuration(leaves));
        };
        let mut path = req.path.clone();
        path.push(last.clone());
        let full = Request {
            kind: Kind::Configuration,
            path,
            params: vec![],
            body: None,
        };
        let xpath = format!("Configuration/{}", full.path.join("/"));
        let node_err = |reason: &str| {
            Outcome::reply(Response::NodeError {
                kind: Kind::Configuration,
                reason: reason.to_string(),
                xpath: xpath.clone(),
            })
        };
        if full.path_is(&["Conference", "EndToEndEncryption", "Mode"]) {
            let on = if value.eq_ignore_ascii_case("on") {
                true
            } else if value.eq_ignore_ascii_case("off") {
                false
            } else {
                return node_err("Illegal value");
            };
            self.e2ee_mode_on = on;
            return Outcome::changed(Response::ConfigurationSet);
        }
        if full.path_is(&[
            "Conference",
            "EndToEndEncryption",
            "Identity",
            "PreferredDomain",
        ]) {
            if self.external_identity().is_some() {
                return node_err(
                    "PreferredDomain cannot be set while an external identity certificate is active",
                );
            }
            if value.len() > 255 {
                return node_err("Illegal value");
            }
            self.preferred_domain = value.clone();
            return Outcome::changed(Response::ConfigurationSet);
        }
        node_err("No match on address expression.")
    }
}
