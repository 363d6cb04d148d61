//! Step identity: what each step of a playbook does *to one device*. Pure.
//!
//! A step's journal identity is its kind plus a digest of every input that decides what it
//! sends to this device — the playbook's values for it, the device's certificate and key
//! fingerprint (the key must match it), the expected identity, the CA and service certificates and SCEP values
//! preflight resolved for it. So:
//! - a step whose inputs changed (a renewed certificate file, another configuration value)
//!   is a new step: nothing an earlier run recorded about the old one is taken for it;
//! - a step inserted earlier in a playbook does not inherit another step's record (the
//!   position is not part of the identity);
//! - two playbooks that do the same thing to a device name it the same way.
//!
//! Steps that are *actions* rather than states — a ClientSecret rotation, a raw `xcommand`
//! that changes something, a restart — happen once per run: their identity includes the
//! run id, so each run does them once and a resumed run does not do them again.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::engine::assets::StepAsset;
use crate::engine::prepare::PreparedDevice;
use crate::playbook::{Playbook, Step};

/// One step of the playbook as it applies to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStep {
    /// Position in the playbook (its inputs in `PreparedDevice::assets`).
    pub index: usize,
    pub kind: &'static str,
    /// The journal identity: `<kind>-<first 12 hex digits of the inputs' SHA-256>`.
    pub id: String,
    /// Done once per run (its identity includes the run id).
    pub once_per_run: bool,
}

/// Whether a step is an action (once per run) rather than a state to converge to.
pub fn once_per_run(step: &Step) -> bool {
    match step {
        Step::RotateSecret(_) | Step::Restart(_) => true,
        Step::Xcommand(x) => !x.read_only,
        _ => false,
    }
}

/// What preflight resolved for one step on one device, as identity inputs. No secret: a
/// service key enters only through its certificate's fingerprint, a vault credential only
/// by name.
fn asset_inputs(asset: Option<&StepAsset>) -> Value {
    match asset {
        None => Value::Null,
        Some(StepAsset::CaBundle { certs, .. }) => json!({
            "ca_fingerprints": certs.iter().map(|c| c.fingerprint.as_str()).collect::<Vec<_>>(),
        }),
        Some(StepAsset::Service(s)) => json!({ "service_fingerprint": s.fingerprint }),
        Some(StepAsset::Scep(values)) => json!({ "scep": values }),
    }
}

/// The identity inputs of step `index` on `device` (pure; the digest is taken of this).
pub fn inputs(step: &Step, index: usize, device: &PreparedDevice, run: &str) -> Value {
    let identity = device.identity.as_ref();
    json!({
        "kind": step.kind(),
        "step": serde_json::to_value(step).unwrap_or(Value::Null),
        "device": device.device.name,
        "certificate": identity.map(|i| i.fingerprint()),
        "expected_identity": device.expected_identity,
        "assets": asset_inputs(device.assets.get(&index)),
        "run": once_per_run(step).then_some(run),
    })
}

fn digest(value: &Value) -> String {
    // serde_json's map is ordered (BTreeMap), so the text is canonical for equal values.
    let text = value.to_string();
    hex::encode(Sha256::digest(text.as_bytes()))
        .get(..12)
        .unwrap_or_default()
        .to_string()
}

/// Every step of `playbook` resolved for `device` within `run`.
pub fn resolve(playbook: &Playbook, device: &PreparedDevice, run: &str) -> Vec<ResolvedStep> {
    playbook
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| ResolvedStep {
            index,
            kind: step.kind(),
            id: format!(
                "{}-{}",
                step.kind(),
                digest(&inputs(step, index, device, run))
            ),
            once_per_run: once_per_run(step),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prepare::PreparedDevice;

    fn playbook(yaml: &str) -> Playbook {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, yaml).unwrap();
        crate::playbook::load(&path).unwrap()
    }

    fn device(name: &str) -> PreparedDevice {
        use crate::inventory::{AuthSource, ClientSecretSource, Device};
        PreparedDevice {
            device: Device {
                name: name.into(),
                host: "127.0.0.1".into(),
                port: 22,
                username: "admin".into(),
                auth: AuthSource::Agent,
                certificate: None,
                key: None,
                identity: None,
                enc: crate::jwe::Enc::A128Gcm,
                client_secret: ClientSecretSource::Vault,
                groups: Default::default(),
                vars: Default::default(),
                window: None,
                sim: None,
            },
            auth: crate::ssh::ClientAuth::Agent,
            identity: None,
            expected_identity: None,
            assets: Default::default(),
        }
    }

    #[test]
    fn a_step_is_named_by_what_it_does_not_where_it_stands() {
        let a = playbook(
            "name: a\nsteps:\n  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }\n",
        );
        let b = playbook(
            "name: b\nsteps:\n  - show_certificates: {}\n  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }\n",
        );
        let d = device("room-1");
        let ra = resolve(&a, &d, "r1");
        let rb = resolve(&b, &d, "r1");
        assert_eq!(
            ra[0].id, rb[1].id,
            "two playbooks doing the same thing agree"
        );
        assert_ne!(rb[0].id, rb[1].id);
        assert!(ra[0].id.starts_with("set_configuration-"));
    }

    #[test]
    fn changed_inputs_make_a_new_step() {
        let on = playbook(
            "name: a\nsteps:\n  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"On\" }\n",
        );
        let off = playbook(
            "name: a\nsteps:\n  - set_configuration: { path: Conference EndToEndEncryption Mode, value: \"Off\" }\n",
        );
        let d = device("room-1");
        assert_ne!(resolve(&on, &d, "r")[0].id, resolve(&off, &d, "r")[0].id);
        assert_ne!(
            resolve(&on, &d, "r")[0].id,
            resolve(&on, &device("room-2"), "r")[0].id
        );
    }

    #[test]
    fn actions_are_once_per_run_states_are_not() {
        let p = playbook("name: a\nsteps:\n  - rotate_secret: {}\n  - show_certificates: {}\n");
        let d = device("room-1");
        let (r1, r2) = (resolve(&p, &d, "run-1"), resolve(&p, &d, "run-2"));
        assert!(r1[0].once_per_run);
        assert_ne!(r1[0].id, r2[0].id, "each run rotates once");
        assert!(!r1[1].once_per_run);
        assert_eq!(r1[1].id, r2[1].id);
    }
}
