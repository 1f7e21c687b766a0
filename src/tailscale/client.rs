//! [`Client`]: the Tailscale API v2 over HTTPS, authenticated with an OAuth client (client
//! credentials flow). It caches the access token and refreshes it before expiry, retries 429, 5xx
//! and transport failures with exponential backoff and jitter (honouring `Retry-After`), bounds
//! every request with a timeout, and never lets a credential, token or auth key reach a log line,
//! an error message or `Debug` output.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::{ApiError, ApiFuture, AuthKey, AuthKeyRequest, Device, TailscaleApi, VipService};

/// The public Tailscale API, the default when a TailscaleTailnet sets no `apiURL`.
pub const DEFAULT_BASE_URL: &str = "https://api.tailscale.com";

/// Path of the OAuth token endpoint.
pub(crate) const TOKEN_PATH: &str = "/api/v2/oauth/token";

/// How to reach one tailnet through the API. `Debug` redacts the client secret.
#[derive(Clone)]
pub struct ClientConfig {
    /// Scheme and host, e.g. `https://api.tailscale.com` (a TailscaleTailnet's `apiURL`).
    pub base_url: String,
    /// Tailnet name, or `-` for the OAuth client's own tailnet.
    pub tailnet: String,
    /// OAuth client ID.
    pub client_id: String,
    /// OAuth client secret. Never logged.
    pub client_secret: String,
    /// Upper bound for one HTTP request (connect, send, read the body).
    pub request_timeout: Duration,
    /// Retries after the first attempt for 429, 5xx and transport failures.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles on each further retry.
    pub initial_backoff: Duration,
    /// Cap on the computed backoff.
    pub max_backoff: Duration,
    /// Cap on a server-sent `Retry-After`, so a bad header cannot stall a reconcile for long.
    pub max_retry_after: Duration,
    /// Refresh the token this long before it expires (at most 10% of its lifetime).
    pub token_refresh_margin: Duration,
}

impl ClientConfig {
    /// A config with the public API URL and the default timeouts and retry policy.
    pub fn new(tailnet: impl Into<String>, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        ClientConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            tailnet: tailnet.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            request_timeout: Duration::from_secs(30),
            max_retries: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            token_refresh_margin: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("tailnet", &self.tailnet)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("token_refresh_margin", &self.token_refresh_margin)
            .finish()
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `base_url` is not an absolute http(s) URL.
    #[error("invalid Tailscale API URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tailnet name is empty.
    #[error("tailnet name is empty (use \"-\" for the OAuth client's own tailnet)")]
    EmptyTailnet,
    /// The HTTP client could not be built (TLS setup).
    #[error("building the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// A cached access token. Deliberately no `Debug`.
struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// The Tailscale API for one tailnet over HTTPS; the production [`TailscaleApi`].
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    /// `base_url` without a trailing slash.
    base: String,
    /// The tailnet as a percent-encoded path segment.
    tailnet_segment: String,
    /// Held while fetching, so concurrent callers wait for one refresh instead of each starting one.
    token: Mutex<Option<CachedToken>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base)
            .field("tailnet", &self.cfg.tailnet)
            .finish_non_exhaustive()
    }
}

/// A final answer from the API: 2xx or 404 (everything else becomes an [`ApiError`]).
struct Reply {
    status: StatusCode,
    body: Bytes,
}

/// `{"devices": [...]}`.
#[derive(Deserialize)]
struct DeviceList {
    #[serde(default)]
    devices: Vec<Device>,
}

/// `{"vipServices": [...]}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VipServiceList {
    #[serde(default)]
    vip_services: Vec<VipService>,
}

/// The OAuth token response.
#[derive(Deserialize, Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) token_type: String,
    pub(crate) expires_in: u64,
}

/// The body of `POST /api/v2/tailnet/{tailnet}/keys`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyCreateBody {
    #[serde(default)]
    pub(crate) capabilities: KeyCapabilities,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expiry_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
}

/// `capabilities` of a key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyCapabilities {
    #[serde(default)]
    pub(crate) devices: KeyDeviceCapabilities,
}

/// `capabilities.devices` of a key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyDeviceCapabilities {
    #[serde(default)]
    pub(crate) create: KeyCreateCapabilities,
}

/// `capabilities.devices.create` of a key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct KeyCreateCapabilities {
    #[serde(default)]
    pub(crate) reusable: bool,
    #[serde(default)]
    pub(crate) ephemeral: bool,
    #[serde(default)]
    pub(crate) preauthorized: bool,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
}

impl KeyCreateBody {
    /// The wire body for a request.
    pub(crate) fn from_request(req: &AuthKeyRequest) -> Self {
        KeyCreateBody {
            capabilities: KeyCapabilities {
                devices: KeyDeviceCapabilities {
                    create: KeyCreateCapabilities {
                        reusable: req.reusable,
                        ephemeral: req.ephemeral,
                        preauthorized: req.preauthorized,
                        tags: req.tags.clone(),
                    },
                },
            },
            expiry_seconds: req.expiry.map(|d| d.as_secs()),
            description: req.description.clone(),
        }
    }

    /// The request this body encodes (the fake API reads requests back this way).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn to_request(&self) -> AuthKeyRequest {
        let create = &self.capabilities.devices.create;
        AuthKeyRequest {
            tags: create.tags.clone(),
            reusable: create.reusable,
            ephemeral: create.ephemeral,
            preauthorized: create.preauthorized,
            description: self.description.clone(),
            expiry: self.expiry_seconds.map(Duration::from_secs),
        }
    }
}

/// The response of `POST /api/v2/tailnet/{tailnet}/keys` (the fields we use). No `Debug`.
#[derive(Deserialize, Serialize)]
pub(crate) struct KeyCreated {
    pub(crate) id: String,
    pub(crate) key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<String>,
}

impl Client {
    /// Builds a client. Installs ring as the process-wide rustls provider if none is installed
    /// yet (reqwest is built without a provider of its own).
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(&cfg.base_url)
            .map_err(|e| ClientError::InvalidBaseUrl { url: cfg.base_url.clone(), reason: e.to_string() })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ClientError::InvalidBaseUrl {
                url: cfg.base_url.clone(),
                reason: "expected an absolute http or https URL".into(),
            });
        }
        if cfg.tailnet.is_empty() {
            return Err(ClientError::EmptyTailnet);
        }
        // Err only means a provider is installed already, which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent(concat!("tailscale-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.request_timeout)
            .build()
            .map_err(ClientError::Http)?;
        Ok(Client {
            http,
            base: cfg.base_url.trim_end_matches('/').to_string(),
            tailnet_segment: encode_segment(&cfg.tailnet),
            cfg,
            token: Mutex::new(None),
        })
    }

    /// The configured tailnet (`-` for the credential's own).
    pub fn tailnet(&self) -> &str {
        &self.cfg.tailnet
    }

    fn tailnet_path(&self, rest: &str) -> String {
        format!("/api/v2/tailnet/{}/{rest}", self.tailnet_segment)
    }

    /// Backoff before retry number `attempt` (0-based): exponential, capped, with jitter in
    /// `[d/2, d]` so replicas that failed together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        backoff_delay(self.cfg.initial_backoff, self.cfg.max_backoff, attempt, fastrand::f64())
    }

    /// A valid access token, fetching one when none is cached or the cached one is due.
    async fn token(&self) -> Result<String, ApiError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `rejected` if it is still the cached token (a concurrent caller may have
    /// refreshed it already).
    async fn invalidate(&self, rejected: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == rejected) {
            *cached = None;
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, ApiError> {
        let url = format!("{}{TOKEN_PATH}", self.base);
        let form = [
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            let sent = self
                .http
                .post(&url)
                .header(ACCEPT, "application/json")
                .timeout(self.cfg.request_timeout)
                .form(&form)
                .send()
                .await;
            let outcome = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    resp.bytes().await.map(|b| (status, retry_after, b))
                }
                Err(e) => Err(e),
            };
            let delay = match outcome {
                Ok((status, _, body)) if status.is_success() => {
                    let t: TokenResponse = decode("POST", TOKEN_PATH, &body)?;
                    let lifetime = Duration::from_secs(t.expires_in);
                    let margin = self.cfg.token_refresh_margin.min(lifetime / 10);
                    debug!(
                        expires_in_secs = t.expires_in,
                        token_type = %t.token_type,
                        "fetched Tailscale API access token"
                    );
                    return Ok(CachedToken {
                        value: t.access_token,
                        refresh_at: started + lifetime.saturating_sub(margin),
                    });
                }
                Ok((status, retry_after, body)) => {
                    let message = api_message(&body);
                    let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !transient {
                        return Err(ApiError::Unauthorized(format!(
                            "POST {TOKEN_PATH}: HTTP {}: {message}",
                            status.as_u16()
                        )));
                    }
                    if attempt >= self.cfg.max_retries {
                        return Err(ApiError::Status {
                            method: "POST".into(),
                            path: TOKEN_PATH.into(),
                            status: status.as_u16(),
                            message,
                        });
                    }
                    warn!(path = TOKEN_PATH, status = status.as_u16(), attempt, %message, "token request failed, retrying");
                    self.retry_delay(attempt, retry_after)
                }
                Err(e) => {
                    let reason = transport_reason(&e, self.cfg.request_timeout);
                    if attempt >= self.cfg.max_retries {
                        return Err(ApiError::Transport(format!(
                            "POST {TOKEN_PATH}: {reason} (after {} attempts)",
                            attempt + 1
                        )));
                    }
                    warn!(path = TOKEN_PATH, attempt, %reason, "token request failed, retrying");
                    self.backoff(attempt)
                }
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.cfg.max_retry_after),
            None => self.backoff(attempt),
        }
    }

    /// Sends one API call with retries. Returns 2xx and 404 answers; every other outcome is an
    /// error naming `method` and `path`.
    // long: one retry loop; each outcome (success, first 401, 401/403, transient, transport) ends it or sets the delay.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ApiError> {
        let url = match query {
            Some(q) => format!("{}{path}?{q}", self.base),
            None => format!("{}{path}", self.base),
        };
        let mut attempt = 0u32;
        let mut reauthorized = false;
        loop {
            let token = self.token().await?;
            let started = Instant::now();
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .header(ACCEPT, "application/json")
                .timeout(self.cfg.request_timeout);
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    resp.bytes().await.map(|b| (status, retry_after, b))
                }
                Err(e) => Err(e),
            };
            let delay = match outcome {
                Ok((status, _, body)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                    debug!(%method, path, status = status.as_u16(), attempt, elapsed_ms = started.elapsed().as_millis() as u64, "tailscale API call");
                    return Ok(Reply { status, body });
                }
                Ok((status, retry_after, body)) => {
                    let message = api_message(&body);
                    if status == StatusCode::UNAUTHORIZED && !reauthorized {
                        // The token may have been revoked or expired early: fetch a new one once.
                        debug!(%method, path, "access token rejected, fetching a new one");
                        self.invalidate(&token).await;
                        reauthorized = true;
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(ApiError::Unauthorized(format!(
                            "{method} {path}: HTTP {}: {message}",
                            status.as_u16()
                        )));
                    }
                    let transient = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !transient || attempt >= self.cfg.max_retries {
                        return Err(ApiError::Status {
                            method: method.to_string(),
                            path: path.to_string(),
                            status: status.as_u16(),
                            message,
                        });
                    }
                    let delay = self.retry_delay(attempt, retry_after);
                    warn!(%method, path, status = status.as_u16(), attempt, delay_ms = delay.as_millis() as u64, %message, "tailscale API call failed, retrying");
                    delay
                }
                Err(e) => {
                    let reason = transport_reason(&e, self.cfg.request_timeout);
                    if attempt >= self.cfg.max_retries {
                        return Err(ApiError::Transport(format!(
                            "{method} {path}: {reason} (after {} attempts)",
                            attempt + 1
                        )));
                    }
                    let delay = self.backoff(attempt);
                    warn!(%method, path, attempt, delay_ms = delay.as_millis() as u64, %reason, "tailscale API call failed, retrying");
                    delay
                }
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn list_devices_impl(&self) -> Result<Vec<Device>, ApiError> {
        let path = self.tailnet_path("devices");
        let reply = self.call(Method::GET, &path, Some("fields=all"), None).await?;
        let list: DeviceList = expect_found("GET", &path, reply)?;
        Ok(list.devices)
    }

    async fn get_device_impl(&self, id: &str) -> Result<Option<Device>, ApiError> {
        let path = format!("/api/v2/device/{}", encode_segment(id));
        let reply = self.call(Method::GET, &path, Some("fields=all"), None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode("GET", &path, &reply.body).map(Some)
    }

    async fn delete_device_impl(&self, id: &str) -> Result<(), ApiError> {
        let path = format!("/api/v2/device/{}", encode_segment(id));
        let reply = self.call(Method::DELETE, &path, None, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            debug!(device_id = id, "device already gone");
        }
        Ok(())
    }

    async fn create_auth_key_impl(&self, req: &AuthKeyRequest) -> Result<AuthKey, ApiError> {
        let path = self.tailnet_path("keys");
        let body = encode_json("POST", &path, &KeyCreateBody::from_request(req))?;
        // Retried like every call: a 5xx or timeout after the API created the key leaves an
        // unused single-use key behind, which expires on its own; a missing key blocks a proxy.
        let reply = self.call(Method::POST, &path, None, Some(body)).await?;
        let created: KeyCreated = expect_found("POST", &path, reply)?;
        debug!(key_id = %created.id, tags = ?req.tags, "created auth key");
        Ok(AuthKey { id: created.id, key: created.key, expires: created.expires })
    }

    async fn list_vip_services_impl(&self) -> Result<Vec<VipService>, ApiError> {
        let path = self.tailnet_path("vip-services");
        let reply = self.call(Method::GET, &path, None, None).await?;
        let list: VipServiceList = expect_found("GET", &path, reply)?;
        Ok(list.vip_services)
    }

    fn vip_path(&self, name: &str) -> String {
        self.tailnet_path(&format!("vip-services/{}", encode_segment(name)))
    }

    async fn get_vip_service_impl(&self, name: &str) -> Result<Option<VipService>, ApiError> {
        let path = self.vip_path(name);
        let reply = self.call(Method::GET, &path, None, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode("GET", &path, &reply.body).map(Some)
    }

    async fn put_vip_service_impl(&self, svc: &VipService) -> Result<(), ApiError> {
        let path = self.vip_path(&svc.name);
        let body = encode_json("PUT", &path, svc)?;
        let reply = self.call(Method::PUT, &path, None, Some(body)).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(not_found("PUT", &path, &reply));
        }
        Ok(())
    }

    async fn delete_vip_service_impl(&self, name: &str) -> Result<(), ApiError> {
        let path = self.vip_path(name);
        let reply = self.call(Method::DELETE, &path, None, None).await?;
        if reply.status == StatusCode::NOT_FOUND {
            debug!(vip_service = name, "VIP service already gone");
        }
        Ok(())
    }
}

impl TailscaleApi for Client {
    fn list_devices(&self) -> ApiFuture<'_, Vec<Device>> {
        Box::pin(self.list_devices_impl())
    }

    fn get_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, Option<Device>> {
        Box::pin(self.get_device_impl(id))
    }

    fn delete_device<'a>(&'a self, id: &'a str) -> ApiFuture<'a, ()> {
        Box::pin(self.delete_device_impl(id))
    }

    fn create_auth_key<'a>(&'a self, req: &'a AuthKeyRequest) -> ApiFuture<'a, AuthKey> {
        Box::pin(self.create_auth_key_impl(req))
    }

    fn list_vip_services(&self) -> ApiFuture<'_, Vec<VipService>> {
        Box::pin(self.list_vip_services_impl())
    }

    fn get_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, Option<VipService>> {
        Box::pin(self.get_vip_service_impl(name))
    }

    fn put_vip_service<'a>(&'a self, svc: &'a VipService) -> ApiFuture<'a, ()> {
        Box::pin(self.put_vip_service_impl(svc))
    }

    fn delete_vip_service<'a>(&'a self, name: &'a str) -> ApiFuture<'a, ()> {
        Box::pin(self.delete_vip_service_impl(name))
    }
}

/// Exponential backoff `initial * 2^attempt`, capped at `max`, scaled by `0.5 + jitter/2`
/// (`jitter` in `[0, 1)`).
fn backoff_delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let exp = initial.checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).unwrap_or(max).min(max);
    exp.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: we fall back to our backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The API's error message: `message` of a JSON body (or OAuth's `error_description` /
/// `error`), else a short prefix of the body.
fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        error_description: Option<String>,
        error: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body)
        && let Some(m) = e.message.or(e.error_description).or(e.error)
    {
        return m;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(200).collect()
}

/// Parses a JSON body. The error says where parsing failed but never quotes the body, which
/// may hold a token or an auth key.
fn decode<T: DeserializeOwned>(method: &str, path: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::Decode(format!(
            "{method} {path}: {:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

fn encode_json<T: Serialize>(method: &str, path: &str, value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Decode(format!("{method} {path}: encoding: {e}")))
}

fn not_found(method: &str, path: &str, reply: &Reply) -> ApiError {
    ApiError::Status {
        method: method.into(),
        path: path.into(),
        status: reply.status.as_u16(),
        message: api_message(&reply.body),
    }
}

/// Decodes a reply to a call where 404 is an error (lists, creates).
fn expect_found<T: DeserializeOwned>(method: &str, path: &str, reply: Reply) -> Result<T, ApiError> {
    if reply.status == StatusCode::NOT_FOUND {
        return Err(not_found(method, path, &reply));
    }
    decode(method, path, &reply.body)
}

/// Describes a transport failure without the URL (the caller adds method and path).
fn transport_reason(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut reason = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_body() || e.is_decode() {
        "reading the response failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// Percent-encodes one path segment: keeps RFC 3986 unreserved characters plus `:` and `@`
/// (`svc:web` and `user@example.com` stay readable, as the API's own clients send them).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("svc:web"), "svc:web");
        assert_eq!(encode_segment("user@example.com"), "user@example.com");
        assert_eq!(encode_segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff_delay(i, m, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(i, m, 0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(i, m, 2, 1.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(i, m, 10, 1.0), m);
        assert_eq!(backoff_delay(i, m, 40, 1.0), m, "huge attempt counts do not overflow");
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().expect("parsing a Retry-After value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("parsing a Retry-After date"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn api_message_prefers_the_message_field() {
        assert_eq!(api_message(br#"{"message":"tailnet not found"}"#), "tailnet not found");
        assert_eq!(api_message(br#"{"error":"invalid_client","error_description":"bad secret"}"#), "bad secret");
        assert_eq!(api_message(b"upstream down"), "upstream down");
        assert_eq!(api_message(b""), "(empty body)");
    }

    #[test]
    fn decode_errors_never_quote_the_body() {
        let body = br#"{"id":"k1","key":12,"note":"tskey-auth-secret"}"#;
        let err = decode::<KeyCreated>("POST", "/api/v2/tailnet/-/keys", body)
            .err()
            .unwrap_or_else(|| panic!("a numeric key must not decode"));
        let text = err.to_string();
        assert!(text.contains("POST /api/v2/tailnet/-/keys"), "{text}");
        assert!(!text.contains("tskey"), "{text}");
    }

    #[test]
    fn key_body_matches_the_api_shape() {
        let req = AuthKeyRequest {
            tags: vec!["tag:k8s-proxy".into()],
            reusable: false,
            ephemeral: false,
            preauthorized: true,
            description: "web-proxy-east-0".into(),
            expiry: Some(Duration::from_secs(3600)),
        };
        let body = KeyCreateBody::from_request(&req);
        let json = serde_json::to_value(&body).expect("serializing the key request body");
        assert_eq!(
            json,
            serde_json::json!({
                "capabilities": {"devices": {"create": {
                    "reusable": false, "ephemeral": false, "preauthorized": true,
                    "tags": ["tag:k8s-proxy"]}}},
                "expirySeconds": 3600,
                "description": "web-proxy-east-0"
            })
        );
        assert_eq!(body.to_request(), req);
    }

    #[test]
    fn config_debug_redacts_the_secret() {
        let cfg = ClientConfig::new("-", "client-id", "very-secret-value");
        let text = format!("{cfg:?}");
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(text.contains("client-id"));
    }

    #[test]
    fn rejects_bad_base_urls() {
        let mut cfg = ClientConfig::new("-", "id", "secret");
        cfg.base_url = "not a url".into();
        assert!(matches!(Client::new(cfg.clone()), Err(ClientError::InvalidBaseUrl { .. })));
        cfg.base_url = "ftp://example.com".into();
        assert!(matches!(Client::new(cfg.clone()), Err(ClientError::InvalidBaseUrl { .. })));
        cfg.base_url = "https://api.example.com/".into();
        cfg.tailnet = String::new();
        assert!(matches!(Client::new(cfg), Err(ClientError::EmptyTailnet)));
    }
}
