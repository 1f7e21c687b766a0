//! Who is asking and may they: authentication and authorization of aggregated API requests.
//!
//! - Local mode: mutual TLS against the local CA; the certificate's CN is the user, O its groups.
//!   Any authenticated user may read.
//! - In a cluster (delegated, as kube-apiserver's extension servers do): trust the front-proxy
//!   headers (`X-Remote-User`, ...) only on a connection whose client certificate chains to the
//!   requestheader CA with an allowed CN; otherwise a client certificate from the client CA, or a
//!   bearer token checked with a TokenReview. Every request is then authorized with a
//!   SubjectAccessReview (decisions cached briefly); `system:masters` is always allowed, as the
//!   generic apiserver does. The CAs and header names come from ConfigMap
//!   `kube-system/extension-apiserver-authentication`, followed as it changes.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::runtime::watcher;
use rustls::RootCertStore;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio_util::sync::CancellationToken;

use super::resources::{GROUP, VERSION};
use crate::server::PeerCerts;
use crate::server::tls::{ca_certs, provider};

/// Namespace and name of the ConfigMap kube-apiserver publishes for extension servers.
pub const AUTH_CONFIGMAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");
/// The group that is always allowed (kube-apiserver's generic default).
pub const PRIVILEGED_GROUP: &str = "system:masters";
/// How long an allow decision is reused.
pub const ALLOW_TTL: Duration = Duration::from_secs(10);
/// How long a deny decision is reused.
pub const DENY_TTL: Duration = Duration::from_secs(10);
/// How long a TokenReview result is reused.
pub const TOKEN_TTL: Duration = Duration::from_secs(10);
/// Cache bound (entries) for decisions and tokens.
const CACHE_MAX: usize = 10_000;

/// An authenticated user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// UID, when known.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request wants to do, as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, ...
    pub verb: String,
    /// Resource attributes for a resource request, else `None` (a non-resource URL).
    pub resource: Option<ResourceRequest>,
    /// URL path (for non-resource requests).
    pub path: String,
}

/// The resource part of [`Attributes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceRequest {
    /// Namespace (empty for all namespaces).
    pub namespace: String,
    /// Resource (`tailscaledevices`).
    pub resource: String,
    /// Object name (empty for collections).
    pub name: String,
    /// Subresource (empty for none).
    pub subresource: String,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No acceptable credentials: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed: 403.
    #[error("{0}")]
    Forbidden(String),
    /// TokenReview or SubjectAccessReview failed: 500.
    #[error("{0}")]
    Failed(String),
}

impl AuthError {
    /// The HTTP status kube-apiserver answers this refusal with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Unauthorized(_) => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => http::StatusCode::FORBIDDEN,
            AuthError::Failed(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The ConfigMap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A CA bundle did not parse.
    #[error("{key}: {message}")]
    Ca {
        /// ConfigMap key.
        key: &'static str,
        /// Why.
        message: String,
    },
    /// A header list is not a JSON array of strings.
    #[error("{key}: want a JSON array of strings: {source}")]
    List {
        /// ConfigMap key.
        key: &'static str,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// A client-certificate verifier trusting exactly the CAs in `pem`.
pub fn verifier_for(pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in ca_certs(pem).map_err(|e| e.to_string())? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| e.to_string())
}

/// Whether the connection's chain verifies against `verifier` now.
pub fn chain_verifies(verifier: &dyn ClientCertVerifier, certs: &PeerCerts) -> bool {
    match certs.0.split_first() {
        Some((leaf, intermediates)) => verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).is_ok(),
        None => false,
    }
}

/// CN and O of a certificate (Kubernetes reads them as user and groups).
pub fn cert_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, orgs))
}

fn user_from_cert(certs: &PeerCerts) -> Option<UserInfo> {
    let (username, groups) = cert_subject(certs.leaf()?)?;
    Some(UserInfo { username, groups: with_authenticated(groups), ..UserInfo::default() })
}

fn with_authenticated(mut groups: Vec<String>) -> Vec<String> {
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    groups
}

/// Front-proxy settings from the ConfigMap.
pub struct RequestHeaderConfig {
    verifier: Arc<dyn ClientCertVerifier>,
    /// CNs allowed to send headers; empty = any CN the CA signed.
    pub allowed_names: Vec<String>,
    /// Headers naming the user (first non-empty wins).
    pub username_headers: Vec<String>,
    /// Headers naming the UID.
    pub uid_headers: Vec<String>,
    /// Headers naming groups (all values, all headers).
    pub group_headers: Vec<String>,
    /// Prefixes of extra-attribute headers.
    pub extra_prefixes: Vec<String>,
}

/// Authentication settings of a cluster, from `extension-apiserver-authentication`.
#[derive(Default)]
pub struct AuthnConfig {
    /// Front-proxy trust, when the ConfigMap has a requestheader CA.
    pub request_header: Option<RequestHeaderConfig>,
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for AuthnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthnConfig")
            .field("request_header", &self.request_header.as_ref().map(|r| &r.allowed_names))
            .field("client_ca", &self.client_ca.is_some())
            .finish()
    }
}

fn string_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
    default: &[&str],
) -> Result<Vec<String>, ConfigError> {
    match data.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(text) => serde_json::from_str(text).map_err(|source| ConfigError::List { key, source }),
        None => Ok(default.iter().map(|s| s.to_string()).collect()),
    }
}

impl AuthnConfig {
    /// Reads the ConfigMap's data. Missing CAs disable that path; a broken one is an error.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let ca = |key: &'static str| -> Result<Option<Arc<dyn ClientCertVerifier>>, ConfigError> {
            match data.get(key).filter(|s| !s.trim().is_empty()) {
                Some(pem) => verifier_for(pem.as_bytes()).map(Some).map_err(|message| ConfigError::Ca { key, message }),
                None => Ok(None),
            }
        };
        let request_header = match ca("requestheader-client-ca-file")? {
            Some(verifier) => Some(RequestHeaderConfig {
                verifier,
                allowed_names: string_list(data, "requestheader-allowed-names", &[])?,
                username_headers: string_list(data, "requestheader-username-headers", &["X-Remote-User"])?,
                uid_headers: string_list(data, "requestheader-uid-headers", &[])?,
                group_headers: string_list(data, "requestheader-group-headers", &["X-Remote-Group"])?,
                extra_prefixes: string_list(data, "requestheader-extra-headers-prefix", &["X-Remote-Extra-"])?,
            }),
            None => None,
        };
        Ok(Self { request_header, client_ca: ca("client-ca-file")? })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RequestHeaderConfig {
    /// The user the front proxy vouches for, if this connection may speak for it and named one.
    pub fn authenticate(&self, certs: &PeerCerts, headers: &HeaderMap) -> Option<UserInfo> {
        if !chain_verifies(self.verifier.as_ref(), certs) {
            return None;
        }
        let (cn, _) = cert_subject(certs.leaf()?)?;
        if !self.allowed_names.is_empty() && !self.allowed_names.contains(&cn) {
            static THROTTLE: crate::errors::Throttle = crate::errors::Throttle::new();
            if let Some(left_out) = THROTTLE.allow() {
                tracing::warn!(cn = %crate::errors::Clipped(&cn), left_out, "front-proxy certificate CN is not in requestheader-allowed-names");
            }
            return None;
        }
        let first = |names: &[String]| {
            names
                .iter()
                .filter_map(|h| headers.get(h.as_str()).and_then(|v| v.to_str().ok()))
                .find(|v| !v.is_empty())
                .map(str::to_string)
        };
        let username = first(&self.username_headers)?;
        let uid = first(&self.uid_headers).unwrap_or_default();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let lower = name.as_str();
            for prefix in &self.extra_prefixes {
                let p = prefix.to_ascii_lowercase();
                if let Some(key) = lower.strip_prefix(p.as_str())
                    && let Ok(v) = value.to_str()
                {
                    extra.entry(percent_decode(key).to_ascii_lowercase()).or_default().push(v.to_string());
                }
            }
        }
        // Like every authenticated user (the generic apiserver's AuthenticatedGroupAdder): the
        // front proxy forwards kube-apiserver's own requests (OpenAPI, discovery) as
        // `system:aggregator` with no group, and system:authenticated is what lets them read
        // /openapi/v2 and /apis under the default RBAC (system:discovery).
        Some(UserInfo { username, uid, groups: with_authenticated(groups), extra })
    }
}

/// A small TTL cache (decisions, token reviews); bounded by pruning expired entries.
struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, key: &K) -> Option<V> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(until, _)| *until > Instant::now()).map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V, ttl: Duration) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_MAX {
            let now = Instant::now();
            map.retain(|_, (until, _)| *until > now);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (Instant::now() + ttl, value));
    }
}

/// Delegated authentication and authorization against a cluster.
pub struct Delegated {
    client: kube::Client,
    config: RwLock<Option<Arc<AuthnConfig>>>,
    tokens: TtlCache<String, Result<UserInfo, String>>,
    decisions: TtlCache<(UserInfo, Attributes), Result<(), String>>,
}

impl Delegated {
    /// Delegates to the cluster `client` talks to; no requests are authenticated until a
    /// configuration is set (normally by [`follow_authentication_config`]).
    pub fn new(client: kube::Client) -> Self {
        Self { client, config: RwLock::new(None), tokens: TtlCache::new(), decisions: TtlCache::new() }
    }

    /// Replaces the authentication configuration.
    pub fn set_config(&self, config: AuthnConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(config));
    }

    fn config(&self) -> Option<Arc<AuthnConfig>> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn authenticate(&self, certs: &PeerCerts, headers: &HeaderMap) -> Result<UserInfo, AuthError> {
        let config = self.config();
        if let Some(cfg) = &config {
            if let Some(rh) = &cfg.request_header
                && let Some(user) = rh.authenticate(certs, headers)
            {
                return Ok(user);
            }
            if let Some(ca) = &cfg.client_ca
                && chain_verifies(ca.as_ref(), certs)
                && let Some(user) = user_from_cert(certs)
            {
                return Ok(user);
            }
        }
        if let Some(token) = bearer_token(headers) {
            return self.review_token(token).await;
        }
        Err(AuthError::Unauthorized(match config {
            None => "Unauthorized: authentication configuration not loaded yet".into(),
            Some(_) => "Unauthorized".into(),
        }))
    }

    async fn review_token(&self, token: &str) -> Result<UserInfo, AuthError> {
        if let Some(cached) = self.tokens.get(&token.to_string()) {
            return cached.map_err(AuthError::Unauthorized);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let result = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Failed(format!("TokenReview failed: {}", crate::errors::Chain(&e))))?;
        let status = result.status.unwrap_or_default();
        let outcome = match (status.authenticated, status.user) {
            (Some(true), Some(u)) => Ok(UserInfo {
                username: u.username.unwrap_or_default(),
                uid: u.uid.unwrap_or_default(),
                groups: u.groups.unwrap_or_default(),
                extra: u.extra.unwrap_or_default(),
            }),
            _ => Err(format!("Unauthorized: {}", status.error.unwrap_or_else(|| "token not accepted".into()))),
        };
        self.tokens.insert(token.to_string(), outcome.clone(), TOKEN_TTL);
        outcome.map_err(AuthError::Unauthorized)
    }

    async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), AuthError> {
        if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
            return Ok(());
        }
        let key = (user.clone(), attrs.clone());
        if let Some(cached) = self.decisions.get(&key) {
            return cached.map_err(|reason| AuthError::Forbidden(forbidden_message(user, attrs, &reason)));
        }
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let result = api
            .create(&PostParams::default(), &subject_access_review(user, attrs))
            .await
            .map_err(|e| AuthError::Failed(format!("SubjectAccessReview failed: {}", crate::errors::Chain(&e))))?;
        let status = result.status.unwrap_or_default();
        let decision = if status.allowed { Ok(()) } else { Err(status.reason.unwrap_or_default()) };
        let ttl = if decision.is_ok() { ALLOW_TTL } else { DENY_TTL };
        self.decisions.insert(key, decision.clone(), ttl);
        tracing::debug!(user = %user.username, verb = %attrs.verb, allowed = decision.is_ok(), "SubjectAccessReview");
        decision.map_err(|reason| AuthError::Forbidden(forbidden_message(user, attrs, &reason)))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The SubjectAccessReview asking whether `user` may do `attrs`.
pub fn subject_access_review(user: &UserInfo, attrs: &Attributes) -> SubjectAccessReview {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let (resource_attributes, non_resource_attributes) = match &attrs.resource {
        Some(r) => (
            Some(ResourceAttributes {
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(r.resource.clone()),
                namespace: opt(&r.namespace),
                name: opt(&r.name),
                subresource: opt(&r.subresource),
                verb: Some(attrs.verb.clone()),
                ..ResourceAttributes::default()
            }),
            None,
        ),
        None => (None, Some(NonResourceAttributes { path: Some(attrs.path.clone()), verb: Some(attrs.verb.clone()) })),
    };
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            uid: opt(&user.uid),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes,
            non_resource_attributes,
        },
        ..SubjectAccessReview::default()
    }
}

/// kube-apiserver's wording for a 403.
pub fn forbidden_message(user: &UserInfo, attrs: &Attributes, reason: &str) -> String {
    let mut msg = match &attrs.resource {
        Some(r) => {
            let what = if r.name.is_empty() {
                format!("{}.{GROUP}", r.resource)
            } else {
                format!("{}.{GROUP} \"{}\"", r.resource, r.name)
            };
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{}\"", r.namespace)
            };
            format!(
                "{what} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{GROUP}\" {scope}",
                user.username, attrs.verb, r.resource
            )
        }
        None => format!("forbidden: User \"{}\" cannot {} path \"{}\"", user.username, attrs.verb, attrs.path),
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    msg
}

/// How requests are authenticated and authorized.
#[derive(Clone)]
pub enum Auth {
    /// Local mode: client certificates from this CA; every authenticated user may read.
    Local(Arc<dyn ClientCertVerifier>),
    /// A cluster: delegated to kube-apiserver.
    Delegated(Arc<Delegated>),
}

impl Auth {
    /// Local mode trusting client certificates signed by `ca_pem`.
    pub fn local(ca_pem: &str) -> Result<Self, String> {
        Ok(Auth::Local(verifier_for(ca_pem.as_bytes())?))
    }

    /// Authenticates and authorizes a request for `path`, a URL that is no API resource
    /// (`/metrics`), with the same rule as the aggregated API's own non-resource paths: in a
    /// cluster, a SubjectAccessReview for `nonResourceAttributes {path, verb}`, as kube-apiserver
    /// and metrics-server authorize `/metrics`. Local mode serves such paths to whoever reaches its
    /// loopback port, as its kubeconfig user could read them anyway.
    pub async fn check_non_resource(
        &self,
        certs: &PeerCerts,
        headers: &HeaderMap,
        verb: &str,
        path: &str,
    ) -> Result<(), AuthError> {
        match self {
            Auth::Local(_) => Ok(()),
            Auth::Delegated(_) => {
                let attrs = Attributes { verb: verb.to_string(), resource: None, path: path.to_string() };
                self.check(certs, headers, &attrs).await.map(|_| ())
            }
        }
    }

    /// Authenticates and authorizes one request.
    pub async fn check(
        &self,
        certs: &PeerCerts,
        headers: &HeaderMap,
        attrs: &Attributes,
    ) -> Result<UserInfo, AuthError> {
        match self {
            Auth::Local(verifier) => {
                if certs.leaf().is_none() {
                    return Err(AuthError::Unauthorized("Unauthorized: a client certificate is required".into()));
                }
                if !chain_verifies(verifier.as_ref(), certs) {
                    return Err(AuthError::Unauthorized(
                        "Unauthorized: client certificate not signed by the local CA".into(),
                    ));
                }
                user_from_cert(certs)
                    .ok_or_else(|| AuthError::Unauthorized("Unauthorized: certificate has no CN".into()))
            }
            Auth::Delegated(d) => {
                let user = d.authenticate(certs, headers).await?;
                d.authorize(&user, attrs).await?;
                Ok(user)
            }
        }
    }
}

/// Follows `kube-system/extension-apiserver-authentication` into `delegated` until `stop`.
/// A broken ConfigMap is logged and the previous configuration kept.
pub async fn follow_authentication_config(delegated: Arc<Delegated>, stop: CancellationToken) {
    use kube::runtime::WatchStreamExt;
    let (ns, name) = AUTH_CONFIGMAP;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(delegated.client.clone(), ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let cm = match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(error = %crate::errors::Chain(&error), configmap = name, "watching authentication ConfigMap failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => cm,
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(configmap = name, "authentication ConfigMap deleted; keeping the last configuration");
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
        };
        match AuthnConfig::from_data(&cm.data.unwrap_or_default()) {
            Ok(cfg) => {
                tracing::info!(
                    requestheader = cfg.request_header.is_some(),
                    client_ca = cfg.client_ca.is_some(),
                    "loaded delegated authentication configuration"
                );
                delegated.set_config(cfg);
            }
            Err(error) => {
                tracing::warn!(error = %crate::errors::Chain(&error), configmap = name, "ignoring unusable authentication ConfigMap")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use rustls::pki_types::{CertificateDer, pem::PemObject};

    fn chain(pem: &str) -> PeerCerts {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap_or_default();
        PeerCerts(certs.into())
    }

    #[test]
    fn request_header_trusts_only_allowed_front_proxies() {
        let front = Ca::generate("front-proxy-ca").expect("generating the front-proxy CA");
        let other = Ca::generate("other-ca").expect("generating another CA");
        let data = BTreeMap::from([
            ("requestheader-client-ca-file".to_string(), front.pair().cert_pem.clone()),
            ("requestheader-allowed-names".to_string(), "[\"front-proxy-client\"]".to_string()),
            ("requestheader-username-headers".to_string(), "[\"X-Remote-User\"]".to_string()),
            ("requestheader-group-headers".to_string(), "[\"X-Remote-Group\"]".to_string()),
            ("requestheader-extra-headers-prefix".to_string(), "[\"X-Remote-Extra-\"]".to_string()),
        ]);
        let cfg = AuthnConfig::from_data(&data).expect("parsing the authentication config");
        let rh = cfg.request_header.as_ref().unwrap_or_else(|| panic!("no requestheader config"));
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-user", "alice".parse().expect("parsing the X-Remote-User value"));
        headers.append("x-remote-group", "dev".parse().expect("parsing an X-Remote-Group value"));
        headers.append("x-remote-group", "ops".parse().expect("parsing an X-Remote-Group value"));
        headers.insert("x-remote-extra-scopes%2fa", "s1".parse().expect("parsing an X-Remote-Extra value"));

        let good = front.issue_client("front-proxy-client", &[]).expect("issuing the front-proxy client certificate");
        let user = rh.authenticate(&chain(&good.cert_pem), &headers).unwrap_or_else(|| panic!("not authenticated"));
        assert_eq!(user.username, "alice");
        assert_eq!(user.groups, ["dev", "ops", "system:authenticated"].map(String::from));
        assert_eq!(user.extra.get("scopes/a"), Some(&vec!["s1".to_string()]));

        let wrong_cn =
            front.issue_client("someone-else", &[]).expect("issuing a front-proxy certificate with another CN");
        assert!(rh.authenticate(&chain(&wrong_cn.cert_pem), &headers).is_none());
        let wrong_ca =
            other.issue_client("front-proxy-client", &[]).expect("issuing a client certificate from another CA");
        assert!(rh.authenticate(&chain(&wrong_ca.cert_pem), &headers).is_none());
        assert!(rh.authenticate(&PeerCerts::default(), &headers).is_none());
    }

    #[test]
    fn broken_configmap_is_an_error() {
        let data = BTreeMap::from([("client-ca-file".to_string(), "not a pem".to_string())]);
        assert!(AuthnConfig::from_data(&data).is_err());
        let empty = AuthnConfig::from_data(&BTreeMap::new()).expect("parsing an empty authentication config");
        assert!(empty.request_header.is_none());
    }

    #[test]
    fn review_and_messages() {
        let user = UserInfo { username: "bob".into(), groups: vec!["dev".into()], ..UserInfo::default() };
        let attrs = Attributes {
            verb: "list".into(),
            resource: Some(ResourceRequest {
                namespace: "default".into(),
                resource: "tailscaledevices".into(),
                name: String::new(),
                subresource: String::new(),
            }),
            path: "/apis/x".into(),
        };
        let sar = subject_access_review(&user, &attrs);
        let ra = sar.spec.resource_attributes.unwrap_or_default();
        assert_eq!(ra.group.as_deref(), Some(GROUP));
        assert_eq!(ra.namespace.as_deref(), Some("default"));
        assert!(ra.name.is_none());
        assert_eq!(
            forbidden_message(&user, &attrs, ""),
            "tailscaledevices.tailnet.gateway.tailscale.com is forbidden: User \"bob\" cannot list resource \
             \"tailscaledevices\" in API group \"tailnet.gateway.tailscale.com\" in the namespace \"default\""
        );
        let mut headers = HeaderMap::new();
        headers
            .insert(http::header::AUTHORIZATION, "Bearer abc".parse().expect("parsing the Authorization header value"));
        assert_eq!(bearer_token(&headers), Some("abc"));
    }
}
