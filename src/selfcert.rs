//! Self-managed certificates: the default in a cluster without cert-manager.
//!
//! All replicas share one Secret holding a CA, the serving certificate it signed, and the CA
//! bundle clients must trust. Whoever finds the Secret missing creates it; a replica that loses
//! that race (HTTP 409) adopts the winner's. Every replica loads the serving certificate into its
//! [`CertStore`] and keeps the `caBundle` of our ValidatingWebhookConfiguration,
//! MutatingWebhookConfiguration and APIService equal to the bundle, patching only on a
//! difference.
//!
//! Rotation never fails a request:
//! - the serving certificate is reissued by the same CA before it expires, so the published
//!   bundle stays valid for both the old and the new certificate;
//! - a CA close to expiry is first *staged*: the next CA joins the bundle while the current one
//!   keeps signing. Only after [`Policy::ca_overlap`] (time for every replica to publish the
//!   bundle) is it *promoted* and the serving certificate reissued by it. The old CA stays in the
//!   bundle until it expires.
//!
//! [`plan`] is the pure decision; [`SelfCert`] does the Kubernetes calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::pki::{Ca, CertPair, PkiError, Validity};
use crate::server::tls::{CertStore, TlsError, certified_key};

/// Secret key: serving certificate.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key: serving key.
pub const TLS_KEY: &str = "tls.key";
/// Secret key: the CA that signs serving certificates.
pub const CA_CRT: &str = "ca.crt";
/// Secret key: its key.
pub const CA_KEY: &str = "ca.key";
/// Secret key: a staged CA, trusted but not yet signing.
pub const NEXT_CA_CRT: &str = "next-ca.crt";
/// Secret key: its key.
pub const NEXT_CA_KEY: &str = "next-ca.key";
/// Secret key: every CA clients must trust (the published `caBundle`).
pub const CA_BUNDLE: &str = "ca-bundle.crt";

/// Errors of certificate management.
#[derive(Debug, thiserror::Error)]
pub enum SelfCertError {
    /// Generating a certificate failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The serving certificate could not be loaded for TLS.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A Kubernetes call failed.
    #[error("{operation}: {source}")]
    Kube {
        /// What we were doing.
        operation: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// The Secret kept changing under us.
    #[error("secret {0} changed concurrently too often")]
    Contended(String),
    /// Encoding a patch failed.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

fn kube_err(operation: impl Into<String>) -> impl FnOnce(kube::Error) -> SelfCertError {
    let operation = operation.into();
    move |source| SelfCertError::Kube { operation, source }
}

/// How long certificates live and when they are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a serving certificate, in days.
    pub serving_days: i64,
    /// Reissue the serving certificate when it has less than this left.
    pub serving_renew_before: time::Duration,
    /// Lifetime of a CA, in days.
    pub ca_days: i64,
    /// Stage the next CA when the current one has less than this left.
    pub ca_renew_before: time::Duration,
    /// How long a staged CA is published before it signs.
    pub ca_overlap: time::Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            serving_days: 90,
            serving_renew_before: time::Duration::days(30),
            ca_days: 3650,
            ca_renew_before: time::Duration::days(365),
            ca_overlap: time::Duration::days(1),
        }
    }
}

/// What the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The signing CA.
    pub ca: CertPair,
    /// The serving certificate, signed by `ca`.
    pub serving: CertPair,
    /// A staged CA (trusted, not yet signing).
    pub next_ca: Option<CertPair>,
    /// PEM of every CA clients must trust.
    pub bundle: String,
}

/// What [`plan`] changed, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing usable existed: a new CA and serving certificate.
    Fresh,
    /// Expired CAs left the bundle.
    Pruned,
    /// The next CA joined the bundle.
    StagedCa,
    /// The staged CA became the signing CA.
    PromotedCa,
    /// A new serving certificate from the signing CA.
    RenewedServing,
}

/// Facts read from one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity (Unix seconds).
    pub not_before: i64,
    /// End of validity (Unix seconds).
    pub not_after: i64,
    /// Raw subject (DER).
    pub subject: Vec<u8>,
    /// Raw issuer (DER).
    pub issuer: Vec<u8>,
    /// DNS and IP SANs, as text.
    pub names: Vec<String>,
}

/// Reads every certificate in a PEM bundle. Blocks that do not parse are skipped.
pub fn parse_certs(pem: &str) -> Vec<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).flatten() {
        let Ok(cert) = block.parse_x509() else { continue };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push((*d).to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => names.push(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                        16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(b);
                            names.push(std::net::Ipv6Addr::from(a).to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        out.push(CertInfo {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            names,
        });
    }
    out
}

fn one_cert(pem: &str) -> Option<CertInfo> {
    parse_certs(pem).into_iter().next()
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn new_ca(now: i64, policy: &Policy) -> Result<CertPair, PkiError> {
    // A distinct subject per CA, so a serving certificate names which CA signed it.
    let ca = Ca::generate_valid(&format!("tailscale-gateway CA {now}"), Validity::days_from(at(now), policy.ca_days))?;
    Ok(ca.pair().clone())
}

fn new_serving(ca: &CertPair, names: &[String], now: i64, policy: &Policy) -> Result<CertPair, PkiError> {
    Ca::from_pem(ca.clone())?.issue_server_valid(names, Validity::days_from(at(now), policy.serving_days))
}

fn join_bundle(certs: &[&str]) -> String {
    let mut out = String::new();
    for c in certs {
        let c = c.trim();
        if !c.is_empty() && !out.contains(c) {
            out.push_str(c);
            out.push('\n');
        }
    }
    out
}

/// Decides the next content of the Secret at time `now` (Unix seconds) for a server reachable as
/// `names`: `None` when `current` is fine as it is, otherwise the new material and what changed.
pub fn plan(
    current: Option<&Material>,
    names: &[String],
    now: i64,
    policy: &Policy,
) -> Result<Option<(Material, Vec<Step>)>, PkiError> {
    let secs = |d: time::Duration| d.whole_seconds();
    let usable_ca = current
        .and_then(|m| one_cert(&m.ca.cert_pem).map(|info| (m, info)))
        .filter(|(m, info)| info.not_after > now && Ca::from_pem(m.ca.clone()).is_ok() && !m.ca.key_pem.is_empty());
    let Some((current, ca_info)) = usable_ca else {
        let ca = new_ca(now, policy)?;
        let serving = new_serving(&ca, names, now, policy)?;
        let bundle = join_bundle(&[&ca.cert_pem]);
        return Ok(Some((Material { ca, serving, next_ca: None, bundle }, vec![Step::Fresh])));
    };
    let mut m = current.clone();
    let mut steps = Vec::new();
    let mut ca_info = ca_info;

    // Drop expired CAs from the bundle; make sure the signing and staged CAs are in it.
    let kept: Vec<String> = x509_parser::pem::Pem::iter_from_buffer(m.bundle.as_bytes())
        .flatten()
        .filter(|p| p.parse_x509().is_ok_and(|c| c.validity().not_after.timestamp() > now))
        .map(|p| pem_block(&p.contents))
        .collect();
    let mut all: Vec<&str> = kept.iter().map(String::as_str).collect();
    all.push(&m.ca.cert_pem);
    if let Some(next) = &m.next_ca {
        all.push(&next.cert_pem);
    }
    let bundle = join_bundle(&all);
    if parse_certs(&bundle).len() < parse_certs(&m.bundle).len() {
        steps.push(Step::Pruned);
    }
    m.bundle = bundle;

    // CA rotation: stage, then promote after the overlap.
    let next_info = m.next_ca.as_ref().and_then(|n| one_cert(&n.cert_pem));
    match (&m.next_ca, next_info) {
        (Some(next), Some(info)) if now - info.not_before >= secs(policy.ca_overlap) => {
            m.ca = next.clone();
            m.next_ca = None;
            ca_info = info;
            steps.push(Step::PromotedCa);
        }
        (Some(_), Some(_)) => {}
        _ => {
            m.next_ca = None;
            if ca_info.not_after - now <= secs(policy.ca_renew_before) {
                let next = new_ca(now, policy)?;
                m.bundle = join_bundle(&[&m.bundle, &next.cert_pem]);
                m.next_ca = Some(next);
                steps.push(Step::StagedCa);
            }
        }
    }

    // Serving certificate: signed by the signing CA, not about to expire, right names.
    let serving_ok = one_cert(&m.serving.cert_pem).is_some_and(|s| {
        s.issuer == ca_info.subject
            && s.not_after - now > secs(policy.serving_renew_before)
            && s.names == names
            && certified_key(m.serving.cert_pem.as_bytes(), m.serving.key_pem.as_bytes()).is_ok()
    });
    if !serving_ok {
        m.serving = new_serving(&m.ca, names, now, policy)?;
        steps.push(Step::RenewedServing);
    }
    Ok((m != *current).then_some((m, steps)))
}

/// A certificate's PEM block, without the final line break ([`join_bundle`] adds them).
fn pem_block(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let mut out = pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config);
    out.truncate(out.trim_end().len());
    out
}

/// The Secret's `data` for `m`.
pub fn secret_data(m: &Material) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    put(TLS_CRT, &m.serving.cert_pem);
    put(TLS_KEY, &m.serving.key_pem);
    put(CA_CRT, &m.ca.cert_pem);
    put(CA_KEY, &m.ca.key_pem);
    put(CA_BUNDLE, &m.bundle);
    if let Some(next) = &m.next_ca {
        put(NEXT_CA_CRT, &next.cert_pem);
        put(NEXT_CA_KEY, &next.key_pem);
    }
    data
}

/// Reads material from a Secret; `None` when a required key is missing (then [`plan`] starts
/// afresh).
pub fn from_secret(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| data.get(k).and_then(|v| String::from_utf8(v.0.clone()).ok());
    let pair = |c: &str, k: &str| Some(CertPair { cert_pem: get(c)?, key_pem: get(k)? });
    Some(Material {
        ca: pair(CA_CRT, CA_KEY)?,
        serving: pair(TLS_CRT, TLS_KEY)?,
        next_ca: pair(NEXT_CA_CRT, NEXT_CA_KEY),
        bundle: get(CA_BUNDLE).unwrap_or_default(),
    })
}

/// Where the certificate lives and which registrations trust it.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the Secret (the server's).
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// Names the serving certificate carries.
    pub names: Vec<String>,
    /// ValidatingWebhookConfiguration and MutatingWebhookConfiguration to keep `caBundle` of
    /// (empty: none).
    pub webhook_config_name: String,
    /// APIService to keep `caBundle` of (empty: none).
    pub apiservice_name: String,
    /// How often the Secret and the registrations are checked.
    pub interval: Duration,
    /// Lifetimes.
    pub policy: Policy,
}

/// The Kubernetes side of self-managed certificates.
#[derive(Clone)]
pub struct SelfCert {
    client: kube::Client,
    cfg: Config,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

const MAX_ATTEMPTS: usize = 5;

impl SelfCert {
    /// A manager using `client`.
    pub fn new(client: kube::Client, cfg: Config) -> Self {
        Self { client, cfg }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    /// Returns the Secret's material at time `now`, creating or rotating it when needed. Races
    /// between replicas are settled by the API server: a create or update that conflicts (409)
    /// is dropped and the winner's Secret read and used.
    pub async fn ensure(&self, now: i64) -> Result<Material, SelfCertError> {
        let api = self.secrets();
        let name = &self.cfg.secret_name;
        for _ in 0..MAX_ATTEMPTS {
            let existing = api.get_opt(name).await.map_err(kube_err(format!("reading secret {name}")))?;
            let current = existing.as_ref().and_then(from_secret);
            let Some((next, steps)) = plan(current.as_ref(), &self.cfg.names, now, &self.cfg.policy)? else {
                if let Some(m) = current {
                    return Ok(m);
                }
                continue;
            };
            let result = match existing {
                None => {
                    let secret = Secret {
                        metadata: kube::api::ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(self.cfg.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                crate::api::MANAGED_BY_LABEL.to_string(),
                                crate::api::MANAGED_BY_VALUE.to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(secret_data(&next)),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // Replace carries the resourceVersion we read: a concurrent writer makes it 409.
                    secret.data = Some(secret_data(&next));
                    api.replace(name, &PostParams::default(), &secret).await
                }
            };
            match result {
                Ok(_) => {
                    tracing::info!(secret = %name, steps = ?steps, "certificate secret written");
                    return Ok(next);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(secret = %name, "another replica wrote the certificate secret first; reading it");
                }
                Err(e) => return Err(kube_err(format!("writing secret {name}"))(e)),
            }
        }
        Err(SelfCertError::Contended(name.clone()))
    }

    /// Makes the `caBundle` of our webhook configurations and APIService equal `bundle_pem`,
    /// patching only those that differ. Registrations that do not exist are skipped. Returns how
    /// many objects were patched.
    pub async fn publish_ca_bundle(&self, bundle_pem: &str) -> Result<usize, SelfCertError> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bundle_pem.as_bytes());
        let mut patched = 0;
        let name = self.cfg.webhook_config_name.as_str();
        if !name.is_empty() {
            let vwc: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
            if let Some(obj) = vwc.get_opt(name).await.map_err(kube_err(format!("reading webhook config {name}")))? {
                patched += patch_webhooks(&vwc, name, &serde_json::to_value(&obj)?, &b64).await?;
            }
            let mwc: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
            if let Some(obj) = mwc.get_opt(name).await.map_err(kube_err(format!("reading webhook config {name}")))? {
                patched += patch_webhooks(&mwc, name, &serde_json::to_value(&obj)?, &b64).await?;
            }
        }
        let name = self.cfg.apiservice_name.as_str();
        if !name.is_empty() {
            let api: Api<APIService> = Api::all(self.client.clone());
            if let Some(obj) = api.get_opt(name).await.map_err(kube_err(format!("reading APIService {name}")))? {
                let current = obj.spec.as_ref().and_then(|s| s.ca_bundle.as_ref()).map(|b| b.0.as_slice());
                if current != Some(bundle_pem.as_bytes()) {
                    let patch = json!({"spec": {"caBundle": b64}});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(kube_err(format!("patching APIService {name}")))?;
                    tracing::info!(apiservice = %name, "caBundle updated");
                    patched += 1;
                }
            }
        }
        Ok(patched)
    }

    /// Loads the Secret into `store` and publishes the bundle every `interval` until `stop`.
    /// Failures are logged and retried; the last good certificate keeps serving.
    pub async fn run(self, store: Arc<CertStore>, mut loaded: Material, stop: CancellationToken) {
        let mut published = false;
        loop {
            match self.ensure(unix_now()).await {
                Ok(m) => {
                    if m.serving != loaded.serving {
                        match certified_key(m.serving.cert_pem.as_bytes(), m.serving.key_pem.as_bytes()) {
                            Ok(k) => {
                                store.replace(k);
                                tracing::info!(secret = %self.cfg.secret_name, "serving certificate reloaded");
                            }
                            Err(error) => {
                                tracing::warn!(error = %crate::errors::Chain(&error), "serving certificate in secret is unusable")
                            }
                        }
                    }
                    if m.bundle != loaded.bundle {
                        published = false;
                    }
                    loaded = m;
                }
                Err(error) => {
                    tracing::warn!(error = %crate::errors::Chain(&error), "checking the certificate secret failed")
                }
            }
            if !published {
                match self.publish_ca_bundle(&loaded.bundle).await {
                    Ok(n) => {
                        published = true;
                        tracing::debug!(patched = n, "caBundle in sync");
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::errors::Chain(&error), "updating caBundle failed; retrying")
                    }
                }
            }
            // Someone may edit a registration (kubectl apply drops caBundle): re-check each round.
            let wait = if published { self.cfg.interval } else { self.cfg.interval.min(Duration::from_secs(10)) };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            published = published && self.bundle_in_sync(&loaded.bundle).await;
        }
    }

    async fn bundle_in_sync(&self, bundle_pem: &str) -> bool {
        let b64 = base64::engine::general_purpose::STANDARD.encode(bundle_pem.as_bytes());
        let name = self.cfg.webhook_config_name.as_str();
        if !name.is_empty() {
            for value in [
                Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|o| serde_json::to_value(o).unwrap_or_default()),
                Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|o| serde_json::to_value(o).unwrap_or_default()),
            ]
            .into_iter()
            .flatten()
            {
                if !webhook_ops(&value, &b64).is_empty() {
                    return false;
                }
            }
        }
        let name = self.cfg.apiservice_name.as_str();
        if !name.is_empty()
            && let Ok(Some(obj)) = Api::<APIService>::all(self.client.clone()).get_opt(name).await
        {
            return obj.spec.and_then(|s| s.ca_bundle).map(|b| b.0) == Some(bundle_pem.as_bytes().to_vec());
        }
        true
    }
}

/// JSON Patch operations setting `caBundle` (base64) on every webhook of a configuration that
/// has another value. Each `replace` is guarded by a `test` of the webhook's name, so a
/// concurrent reorder makes the patch fail instead of touching the wrong webhook.
pub fn webhook_ops(config: &Value, ca_bundle_b64: &str) -> Vec<Value> {
    let mut ops = Vec::new();
    for (i, hook) in config.get("webhooks").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if hook.pointer("/clientConfig/caBundle").and_then(Value::as_str) == Some(ca_bundle_b64) {
            continue;
        }
        let name = hook.get("name").cloned().unwrap_or(Value::Null);
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": ca_bundle_b64}));
    }
    ops
}

async fn patch_webhooks<K>(api: &Api<K>, name: &str, current: &Value, b64: &str) -> Result<usize, SelfCertError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ops = webhook_ops(current, b64);
    if ops.is_empty() {
        return Ok(0);
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(kube_err(format!("patching webhook config {name}")))?;
    tracing::info!(webhook_config = %name, kind = %K::kind(&()), "caBundle updated");
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use http_body_util::BodyExt;

    const DAY: i64 = 86_400;

    fn names() -> Vec<String> {
        crate::install::service_dns_names("gw", "tsgw", "cluster.local")
    }

    fn fresh(now: i64) -> Material {
        let (m, steps) = plan(None, &names(), now, &Policy::default())
            .expect("planning fresh material")
            .unwrap_or_else(|| panic!("nothing planned"));
        assert_eq!(steps, [Step::Fresh]);
        m
    }

    fn info(pem: &str) -> CertInfo {
        one_cert(pem).unwrap_or_else(|| panic!("no certificate in {pem}"))
    }

    fn step(m: &Material, now: i64) -> Option<(Material, Vec<Step>)> {
        plan(Some(m), &names(), now, &Policy::default()).expect("planning the next step")
    }

    #[test]
    fn fresh_material_is_stable_and_carries_the_service_names() {
        let now = unix_now();
        let m = fresh(now);
        let serving = info(&m.serving.cert_pem);
        assert_eq!(serving.names, names());
        assert_eq!(serving.issuer, info(&m.ca.cert_pem).subject);
        assert_eq!(parse_certs(&m.bundle).len(), 1);
        assert_eq!(step(&m, now), None, "a fresh secret needs nothing");
        assert_eq!(step(&m, now + 50 * DAY), None, "nor does one 50 days old");
        assert!(!format!("{m:?}").contains("PRIVATE KEY"), "Debug never shows keys");
        assert_eq!(from_secret(&Secret { data: Some(secret_data(&m)), ..Secret::default() }), Some(m));
    }

    #[test]
    fn serving_certificate_is_renewed_by_the_same_ca() {
        let now = unix_now();
        let m = fresh(now);
        let (renewed, steps) = step(&m, now + 61 * DAY).unwrap_or_else(|| panic!("no renewal 29 days before expiry"));
        assert_eq!(steps, [Step::RenewedServing]);
        assert_eq!(renewed.ca, m.ca);
        assert_eq!(renewed.bundle, m.bundle, "the published bundle stays valid");
        assert_ne!(renewed.serving, m.serving);
        assert!(info(&renewed.serving.cert_pem).not_after > info(&m.serving.cert_pem).not_after);
    }

    #[test]
    fn changed_names_or_a_broken_key_reissue_the_serving_certificate() {
        let now = unix_now();
        let m = fresh(now);
        let other = crate::install::service_dns_names("gw2", "tsgw", "cluster.local");
        let (re, steps) = plan(Some(&m), &other, now, &Policy::default())
            .expect("planning for changed names")
            .unwrap_or_else(|| panic!("names changed"));
        assert_eq!(steps, [Step::RenewedServing]);
        assert_eq!(info(&re.serving.cert_pem).names, other);
        let broken = Material { serving: CertPair { key_pem: "garbage".into(), ..m.serving.clone() }, ..m.clone() };
        assert_eq!(step(&broken, now).map(|(_, s)| s), Some(vec![Step::RenewedServing]));
        let no_ca = Material { ca: CertPair { key_pem: String::new(), ..m.ca.clone() }, ..m };
        assert_eq!(step(&no_ca, now).map(|(_, s)| s), Some(vec![Step::Fresh]));
    }

    #[test]
    fn ca_rotation_stages_then_promotes_then_prunes() {
        let t0 = unix_now();
        let m = fresh(t0);
        let old_ca = info(&m.ca.cert_pem);
        // 300 days before the CA expires: the next CA is staged (trusted, not signing).
        let t1 = old_ca.not_after - 300 * DAY;
        let (staged, steps) = step(&m, t1).unwrap_or_else(|| panic!("no staging"));
        assert!(steps.contains(&Step::StagedCa), "{steps:?}");
        assert_eq!(staged.ca, m.ca, "the current CA still signs");
        assert_eq!(info(&staged.serving.cert_pem).issuer, old_ca.subject);
        let next = staged.next_ca.clone().unwrap_or_else(|| panic!("no next CA"));
        assert_eq!(parse_certs(&staged.bundle).len(), 2, "bundle holds old and new CA");
        assert_eq!(step(&staged, t1 + 3600), None, "nothing during the overlap");
        // After the overlap the staged CA signs; the old one stays trusted.
        let t2 = t1 + 2 * DAY;
        let (promoted, steps) = step(&staged, t2).unwrap_or_else(|| panic!("no promotion"));
        assert_eq!(steps, [Step::PromotedCa, Step::RenewedServing]);
        assert_eq!(promoted.ca, next);
        assert_eq!(promoted.next_ca, None);
        assert_eq!(info(&promoted.serving.cert_pem).issuer, info(&next.cert_pem).subject);
        assert_eq!(parse_certs(&promoted.bundle).len(), 2);
        // Once the old CA has expired it leaves the bundle.
        let t3 = old_ca.not_after + 1;
        let (pruned, steps) = step(&promoted, t3).unwrap_or_else(|| panic!("no pruning"));
        assert!(steps.contains(&Step::Pruned), "{steps:?}");
        assert_eq!(pruned.ca, promoted.ca);
        let left = parse_certs(&pruned.bundle);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].subject, info(&next.cert_pem).subject);
    }

    #[test]
    fn webhook_ops_touch_only_stale_webhooks() {
        let config = json!({"webhooks": [
            {"name": "a", "clientConfig": {"caBundle": "NEW"}},
            {"name": "b", "clientConfig": {"caBundle": "OLD"}},
            {"name": "c", "clientConfig": {}},
        ]});
        assert_eq!(
            webhook_ops(&config, "NEW"),
            vec![
                json!({"op": "test", "path": "/webhooks/1/name", "value": "b"}),
                json!({"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "NEW"}),
                json!({"op": "test", "path": "/webhooks/2/name", "value": "c"}),
                json!({"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "NEW"}),
            ]
        );
        assert!(
            webhook_ops(&json!({"webhooks": [{"name": "a", "clientConfig": {"caBundle": "NEW"}}]}), "NEW").is_empty()
        );
    }

    /// One expected request and the canned answer.
    struct Expect {
        method: &'static str,
        path: String,
        status: u16,
        body: Value,
    }

    fn expect(method: &'static str, path: &str, status: u16, body: Value) -> Expect {
        Expect { method, path: path.to_string(), status, body }
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code, "message": reason})
    }

    /// A client whose requests must be exactly `script`, in order. The task returns the request
    /// bodies (with their `Content-Type`) for further checks.
    fn scripted(script: Vec<Expect>) -> (kube::Client, tokio::task::JoinHandle<Vec<(String, Value)>>) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for e in script {
                let (req, send) =
                    handle.next_request().await.unwrap_or_else(|| panic!("expected {} {}", e.method, e.path));
                assert_eq!((req.method().as_str(), req.uri().path()), (e.method, e.path.as_str()));
                let ct = req
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let bytes = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                bodies.push((ct, serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
                let mut resp = Response::new(kube::client::Body::from(serde_json::to_vec(&e.body).unwrap_or_default()));
                *resp.status_mut() = http::StatusCode::from_u16(e.status).expect("building the scripted status code");
                send.send_response(resp);
            }
            bodies
        });
        (kube::Client::new(svc, "default"), task)
    }

    fn config() -> Config {
        Config {
            namespace: "tsgw".into(),
            secret_name: "tls".into(),
            names: names(),
            webhook_config_name: "gw".into(),
            apiservice_name: "v1alpha1.tailnet.gateway.tailscale.com".into(),
            interval: Duration::from_secs(60),
            policy: Policy::default(),
        }
    }

    const SECRET: &str = "/api/v1/namespaces/tsgw/secrets/tls";
    const SECRETS: &str = "/api/v1/namespaces/tsgw/secrets";

    fn secret_json(m: &Material, rv: &str) -> Value {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("tls".into()),
                namespace: Some("tsgw".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some(secret_data(m)),
            ..Default::default()
        };
        serde_json::to_value(s).unwrap_or_default()
    }

    #[tokio::test]
    async fn creates_the_secret_when_missing() {
        let (client, task) = scripted(vec![
            expect("GET", SECRET, 404, status(404, "NotFound")),
            expect("POST", SECRETS, 201, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}})),
        ]);
        let m = SelfCert::new(client, config()).ensure(unix_now()).await.expect("ensuring the certificate Secret");
        let bodies = task.await.expect("joining the scripted API server task");
        let created = &bodies[1].1;
        assert_eq!(created["metadata"]["name"], "tls");
        assert_eq!(created["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tailscale-gateway");
        let sent = from_secret(&serde_json::from_value(created.clone()).unwrap_or_default());
        assert_eq!(sent, Some(m), "what is served is what was stored");
    }

    #[tokio::test]
    async fn losing_the_create_race_adopts_the_winners_secret() {
        let now = unix_now();
        let winner = fresh(now);
        let (client, task) = scripted(vec![
            expect("GET", SECRET, 404, status(404, "NotFound")),
            expect("POST", SECRETS, 409, status(409, "AlreadyExists")),
            expect("GET", SECRET, 200, secret_json(&winner, "7")),
        ]);
        let m = SelfCert::new(client, config())
            .ensure(now)
            .await
            .expect("ensuring the certificate Secret after losing the create race");
        assert_eq!(m, winner, "every replica serves the same certificate");
        assert_eq!(task.await.map(|b| b.len()).unwrap_or_default(), 3, "no further writes");
    }

    #[tokio::test]
    async fn rotation_replaces_with_the_read_version_and_yields_to_a_concurrent_writer() {
        let t0 = unix_now();
        let old = fresh(t0);
        let later = t0 + 80 * DAY;
        let winner = step(&old, later).map(|(m, _)| m).unwrap_or_else(|| panic!("renewal due"));
        let (client, task) = scripted(vec![
            expect("GET", SECRET, 200, secret_json(&old, "5")),
            expect("PUT", SECRET, 409, status(409, "Conflict")),
            expect("GET", SECRET, 200, secret_json(&winner, "6")),
        ]);
        let m = SelfCert::new(client, config()).ensure(later).await.expect("ensuring the rotated certificate Secret");
        assert_eq!(m, winner);
        let bodies = task.await.expect("joining the scripted API server task");
        assert_eq!(bodies[1].1["metadata"]["resourceVersion"], "5", "optimistic concurrency on the version read");
    }

    #[tokio::test]
    async fn ca_bundle_is_patched_only_where_it_differs() {
        let bundle = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(bundle);
        let vwc = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "gw"},
            "webhooks": [{"name": "validate.gateway.tailscale.com", "sideEffects": "None",
                          "admissionReviewVersions": ["v1"], "clientConfig": {"caBundle": "b2xk"}}]});
        let mwc = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "gw"},
            "webhooks": [{"name": "mutate.gateway.tailscale.com", "sideEffects": "None",
                          "admissionReviewVersions": ["v1"], "clientConfig": {"caBundle": b64}}]});
        let apis = "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.tailnet.gateway.tailscale.com";
        let apiservice = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1alpha1.tailnet.gateway.tailscale.com"},
            "spec": {"group": "tailnet.gateway.tailscale.com", "version": "v1alpha1",
                     "groupPriorityMinimum": 1000, "versionPriority": 15}});
        let vwc_path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/gw";
        let (client, task) = scripted(vec![
            expect("GET", vwc_path, 200, vwc.clone()),
            expect("PATCH", vwc_path, 200, vwc),
            expect("GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/gw", 200, mwc),
            expect("GET", apis, 200, apiservice.clone()),
            expect("PATCH", apis, 200, apiservice),
        ]);
        let n = SelfCert::new(client, config()).publish_ca_bundle(bundle).await.expect("publishing the CA bundle");
        assert_eq!(n, 2);
        let bodies = task.await.expect("joining the scripted API server task");
        assert_eq!(bodies[1].0, "application/json-patch+json");
        assert_eq!(
            bodies[1].1,
            json!([{"op": "test", "path": "/webhooks/0/name", "value": "validate.gateway.tailscale.com"},
                   {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64}])
        );
        assert_eq!(bodies[4].0, "application/merge-patch+json");
        assert_eq!(bodies[4].1, json!({"spec": {"caBundle": b64}}));
    }

    #[tokio::test]
    async fn missing_registrations_are_skipped() {
        let (client, task) = scripted(vec![
            expect(
                "GET",
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/gw",
                404,
                status(404, "NotFound"),
            ),
            expect(
                "GET",
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/gw",
                404,
                status(404, "NotFound"),
            ),
            expect(
                "GET",
                "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.tailnet.gateway.tailscale.com",
                404,
                status(404, "NotFound"),
            ),
        ]);
        let n = SelfCert::new(client, config())
            .publish_ca_bundle("x")
            .await
            .expect("publishing the CA bundle with registrations missing");
        assert_eq!(n, 0);
        assert_eq!(task.await.map(|b| b.len()).unwrap_or_default(), 3);
    }
}
