//! The persisted form of a device (what `sim::store` writes, 0600): its secret,
//! certificates with keys and activations, CAs, configuration and renewal profiles. The
//! firmware (variants) and reachable SCEP servers are set by the fleet, not persisted.

use zeroize::Zeroizing;

use super::certificates::{
    intermediates, parse_cert_and_key, parse_cert_bundle, CertError, Purpose, ServiceCert,
};
use super::{Device, RenewalProfile};
use crate::secret::Secret;

/// The persisted form of a device (includes its secret: it is a simulated device).
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    pub secret: Option<String>,
    pub certificates: Vec<PersistedCert>,
    pub cas: Vec<String>,
    pub e2ee_mode_on: bool,
    pub preferred_domain: String,
    pub boot_count: u64,
    /// SCEP auto-renewal profiles (absent in files written before they existed).
    #[serde(default)]
    pub renewal_profiles: Vec<RenewalProfile>,
}

impl Drop for PersistedState {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        if let Some(s) = self.secret.as_mut() {
            s.zeroize();
        }
        for c in &mut self.certificates {
            c.key_pem.zeroize();
        }
    }
}

/// One persisted service certificate.
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PersistedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub used_for: Vec<String>,
}

impl Device {
    /// The persisted form of the device.
    pub fn to_persisted(&self) -> PersistedState {
        PersistedState {
            version: 1,
            secret: self.secret.as_ref().map(|s| s.expose().to_string()),
            certificates: self
                .certificates
                .iter()
                .map(|c| PersistedCert {
                    cert_pem: std::iter::once(&c.meta)
                        .chain(c.chain.iter())
                        .map(|m| m.pem.as_str())
                        .collect(),
                    key_pem: c.key_pem.expose().to_string(),
                    used_for: c.used_for.iter().map(|p| p.as_str().to_string()).collect(),
                })
                .collect(),
            cas: self.cas.iter().map(|c| c.pem.clone()).collect(),
            e2ee_mode_on: self.e2ee_mode_on,
            preferred_domain: self.preferred_domain.clone(),
            boot_count: self.boot_count,
            renewal_profiles: self.renewal_profiles.clone(),
        }
    }

    /// Rebuilds a device from its persisted form.
    pub fn from_persisted(name: &str, state: &PersistedState) -> Result<Device, CertError> {
        let mut d = Device::new(name);
        d.secret = state.secret.as_deref().map(Secret::new);
        d.generation = 1;
        for pc in &state.certificates {
            let mut text = Zeroizing::new(pc.cert_pem.clone());
            text.push('\n');
            text.push_str(&pc.key_pem);
            let (meta, key_pem) = parse_cert_and_key(&text)?;
            let chain = intermediates(&pc.cert_pem, &meta);
            let used_for = pc
                .used_for
                .iter()
                .filter_map(|p| Purpose::parse(p))
                .collect();
            d.certificates.push(ServiceCert {
                meta,
                chain,
                key_pem,
                used_for,
            });
        }
        for ca in &state.cas {
            d.cas.extend(parse_cert_bundle(ca)?);
        }
        d.e2ee_mode_on = state.e2ee_mode_on;
        d.preferred_domain = state.preferred_domain.clone();
        d.boot_count = state.boot_count;
        d.renewal_profiles = state.renewal_profiles.clone();
        Ok(d)
    }
}
