//! [`FakeTailscale`]: a local HTTP server that follows the Tailscale API v2 endpoints we use, so
//! the real [`Client`](super::client::Client) is tested over real sockets, and tests and benches
//! can drive the reconciler without a tailnet.
//!
//! It checks OAuth client credentials and bearer tokens (with a configurable token lifetime so
//! refresh happens), keeps devices, VIP services and issued auth keys in memory, records every
//! call, and injects faults (429 with `Retry-After`, 500, slow answers) into the next N calls.
//! Like the real API, it auto-allocates VIP service `addrs` on create and rejects an update that
//! does not resend them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, body::Body};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{ClientConfig, KeyCreateBody, KeyCreated, TOKEN_PATH, TokenResponse};
use super::{AuthKeyRequest, Device, VipService};

/// A fault to inject into upcoming calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with `Retry-After: <retry_after_secs>`.
    TooManyRequests {
        /// Seconds in the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// HTTP 500.
    ServerError,
    /// Wait this long, then answer normally (to trip client timeouts).
    Slow(Duration),
}

/// Settings of a [`FakeTailscale`].
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// The tailnet's name; requests may also use `-`.
    pub tailnet: String,
    /// Accepted OAuth client ID.
    pub client_id: String,
    /// Accepted OAuth client secret.
    pub client_secret: String,
    /// Lifetime of issued access tokens (rounded up to whole seconds in `expires_in`).
    pub token_lifetime: Duration,
    /// MagicDNS suffix for devices made by [`FakeTailscale::register_device`].
    pub magic_dns_suffix: String,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            tailnet: "example.com".into(),
            client_id: "fake-client-id".into(),
            client_secret: "fake-client-secret".into(),
            token_lifetime: Duration::from_secs(3600),
            magic_dns_suffix: "tail0fake.ts.net".into(),
        }
    }
}

/// One recorded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// Request path as sent (percent-encoded), e.g. `/api/v2/tailnet/-/vip-services/svc:web`.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
}

/// An auth key the fake issued, with the request that created it.
#[derive(Clone, PartialEq)]
pub struct IssuedAuthKey {
    /// Key ID.
    pub id: String,
    /// The key, as returned to the client.
    pub key: String,
    /// What was asked for.
    pub request: AuthKeyRequest,
}

impl std::fmt::Debug for IssuedAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedAuthKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("request", &self.request)
            .finish()
    }
}

/// The tailnet a fake keeps, and the rules the real API applies to it: the one model behind both
/// doubles, [`FakeTailscale`] (over HTTP, for the real client) and the reconciler's in-memory
/// `MemoryTailscale` (behind the `TailscaleApi` trait).
#[derive(Debug, Default)]
pub struct Tailnet {
    /// Devices by legacy ID.
    pub devices: BTreeMap<String, Device>,
    /// VIP services by name.
    pub vip_services: BTreeMap<String, VipService>,
    /// Auth keys issued, oldest first.
    pub keys: Vec<IssuedAuthKey>,
    /// Serial for IDs and addresses.
    serial: u32,
}

/// Why the API refuses a call: the HTTP status and its message.
pub type Refusal = (u16, &'static str);

impl Tailnet {
    /// The next serial number (IDs, addresses, tokens).
    pub fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    /// A `[v4, v6]` pair in the Tailscale ranges, unique within this tailnet.
    pub fn allocate_addrs(&mut self, v4_prefix: [u8; 2]) -> Vec<String> {
        let n = self.next_serial();
        vec![
            format!("{}.{}.{}.{}", v4_prefix[0], v4_prefix[1], (n >> 8) & 0xff, n & 0xff),
            format!("fd7a:115c:a1e0::{n:x}"),
        ]
    }

    /// Adds or replaces a device (keyed by its legacy ID).
    pub fn add_device(&mut self, device: Device) {
        self.devices.insert(device.id.clone(), device);
    }

    /// A device by its legacy ID or its node ID, as `/api/v2/device/{id}` accepts either.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id).or_else(|| self.devices.values().find(|d| d.node_id == id))
    }

    /// Removes a device by either ID; whether it existed.
    pub fn remove_device(&mut self, id: &str) -> bool {
        let Some(key) = self.device(id).map(|d| d.id.clone()) else { return false };
        self.devices.remove(&key).is_some()
    }

    /// Issues an auth key for `request`: an OAuth client's keys must be tagged.
    pub fn create_auth_key(&mut self, request: AuthKeyRequest) -> Result<IssuedAuthKey, Refusal> {
        if request.tags.is_empty() || request.tags.iter().any(|t| !t.starts_with("tag:")) {
            return Err((400, "requested tags are invalid or missing"));
        }
        let n = self.next_serial();
        let id = format!("kFake{n}CNTRL");
        let key = format!("tskey-auth-{id}-{:016x}", fastrand::u64(..));
        let issued = IssuedAuthKey { id, key, request };
        self.keys.push(issued.clone());
        Ok(issued)
    }

    /// Creates (allocating `addrs` unless given) or updates (requiring `addrs` to be resent, and
    /// keeping the allocated ones) the VIP service `name`; returns it as stored.
    pub fn put_vip_service(&mut self, name: &str, mut svc: VipService) -> Result<VipService, Refusal> {
        if !name.starts_with("svc:") || name.len() <= 4 {
            return Err((400, "VIP service name must look like svc:<name>"));
        }
        if !svc.name.is_empty() && svc.name != name {
            return Err((400, "name in body does not match the path"));
        }
        svc.name = name.to_string();
        match self.vip_services.get(name) {
            Some(_) if svc.addrs.is_empty() => return Err((400, "addrs must be resent when updating a VIP service")),
            Some(existing) => svc.addrs = existing.addrs.clone(),
            None if svc.addrs.is_empty() => svc.addrs = self.allocate_addrs([100, 100]),
            None => {}
        }
        self.vip_services.insert(svc.name.clone(), svc.clone());
        Ok(svc)
    }
}

#[derive(Default)]
struct Store {
    opts: FakeOptions,
    /// Access token -> expiry.
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    tailnet: Tailnet,
    calls: Vec<Call>,
    api_faults: VecDeque<(Fault, usize)>,
    token_faults: VecDeque<(Fault, usize)>,
}

impl Store {
    fn take_fault(&mut self, token_endpoint: bool) -> Option<Fault> {
        let queue = if token_endpoint { &mut self.token_faults } else { &mut self.api_faults };
        let (fault, remaining) = queue.front_mut()?;
        let fault = *fault;
        *remaining -= 1;
        if *remaining == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    fn known_tailnet(&self, tailnet: &str) -> bool {
        tailnet == "-" || tailnet == self.opts.tailnet
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake Tailscale API on `127.0.0.1` (plain HTTP). Stops when dropped.
pub struct FakeTailscale {
    addr: SocketAddr,
    store: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeTailscale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTailscale").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeTailscale {
    /// Starts a fake with [`FakeOptions::default`] on an ephemeral port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a fake with the given options on an ephemeral port.
    pub async fn start_with(opts: FakeOptions) -> std::io::Result<Self> {
        let store: Shared = Arc::new(Mutex::new(Store { opts, ..Store::default() }));
        let api = Router::new()
            .route("/api/v2/tailnet/{tailnet}/devices", get(list_devices))
            .route("/api/v2/device/{id}", get(get_device).delete(delete_device))
            .route("/api/v2/tailnet/{tailnet}/keys", post(create_key))
            .route("/api/v2/tailnet/{tailnet}/vip-services", get(list_vip_services))
            .route(
                "/api/v2/tailnet/{tailnet}/vip-services/{name}",
                get(get_vip_service).put(put_vip_service).delete(delete_vip_service),
            )
            .route_layer(middleware::from_fn_with_state(store.clone(), require_token));
        let app = Router::new()
            .route(TOKEN_PATH, post(issue_token))
            .merge(api)
            .layer(middleware::from_fn_with_state(store.clone(), record_and_inject))
            .with_state(store.clone());

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "fake Tailscale API stopped");
            }
        });
        Ok(FakeTailscale { addr, store, shutdown: Some(tx), task })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (what a TailscaleTailnet's `apiURL` would hold).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client config for this fake: tailnet `-`, valid credentials, short timeouts and
    /// backoffs so tests run fast.
    pub fn client_config(&self) -> ClientConfig {
        let store = lock(&self.store);
        let mut cfg = ClientConfig::new("-", store.opts.client_id.clone(), store.opts.client_secret.clone());
        cfg.base_url = self.url();
        cfg.request_timeout = Duration::from_secs(2);
        cfg.max_retries = 3;
        cfg.initial_backoff = Duration::from_millis(10);
        cfg.max_backoff = Duration::from_millis(100);
        cfg.max_retry_after = Duration::from_secs(5);
        cfg
    }

    /// Adds or replaces a device (keyed by `id`).
    pub fn add_device(&self, device: Device) {
        lock(&self.store).tailnet.add_device(device);
    }

    /// Creates a connected, authorized device with fresh IDs and addresses, as a proxy joining
    /// the tailnet would, and returns it.
    pub fn register_device(&self, hostname: &str, tags: &[&str]) -> Device {
        let mut store = lock(&self.store);
        let n = store.tailnet.next_serial();
        let addresses = store.tailnet.allocate_addrs([100, 64]);
        let device = Device {
            id: format!("{}", 1_000_000 + n),
            node_id: format!("nFake{n:06}CNTRL"),
            name: format!("{hostname}.{}", store.opts.magic_dns_suffix),
            hostname: hostname.to_string(),
            addresses,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            authorized: true,
            connected_to_control: true,
            last_seen: Some(jiff::Timestamp::now().to_string()),
            os: Some("linux".into()),
            client_version: Some("1.84.0".into()),
            created: Some(jiff::Timestamp::now().to_string()),
            ..Device::default()
        };
        store.tailnet.add_device(device.clone());
        device
    }

    /// Removes a device, as if it left the tailnet; returns whether it existed.
    pub fn remove_device(&self, id: &str) -> bool {
        lock(&self.store).tailnet.remove_device(id)
    }

    /// All devices, ordered by ID.
    pub fn devices(&self) -> Vec<Device> {
        lock(&self.store).tailnet.devices.values().cloned().collect()
    }

    /// Adds or replaces a VIP service as stored (e.g. one owned by someone else).
    pub fn add_vip_service(&self, svc: VipService) {
        lock(&self.store).tailnet.vip_services.insert(svc.name.clone(), svc);
    }

    /// All VIP services, ordered by name.
    pub fn vip_services(&self) -> Vec<VipService> {
        lock(&self.store).tailnet.vip_services.values().cloned().collect()
    }

    /// Auth keys issued so far, oldest first.
    pub fn auth_keys(&self) -> Vec<IssuedAuthKey> {
        lock(&self.store).tailnet.keys.clone()
    }

    /// Every request received so far (faulted ones included), oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.store).calls.clone()
    }

    /// How many requests had this method and path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.store).calls.iter().filter(|c| c.method == method && c.path == path).count()
    }

    /// Forgets recorded calls (e.g. after a warm-up).
    pub fn clear_calls(&self) {
        lock(&self.store).calls.clear();
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.store).tokens_issued
    }

    /// Invalidates every issued access token, as if revoked; the next call gets 401.
    pub fn revoke_tokens(&self) {
        lock(&self.store).tokens.clear();
    }

    /// The next `count` API calls (not token requests) answer with `fault`. Queued after any
    /// faults already pending.
    pub fn inject(&self, fault: Fault, count: usize) {
        if count > 0 {
            lock(&self.store).api_faults.push_back((fault, count));
        }
    }

    /// The next `count` token requests answer with `fault`.
    pub fn inject_token(&self, fault: Fault, count: usize) {
        if count > 0 {
            lock(&self.store).token_faults.push_back((fault, count));
        }
    }
}

impl Drop for FakeTailscale {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// The answer to a call the [`Tailnet`] refused.
fn refused((status, message): Refusal) -> Response {
    error(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), message)
}

/// Records the call, then applies the next pending fault, if any.
async fn record_and_inject(State(store): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let fault = {
        let mut s = lock(&store);
        s.calls.push(Call {
            method: req.method().to_string(),
            path: path.clone(),
            query: req.uri().query().map(str::to_string),
        });
        s.take_fault(path == TOKEN_PATH)
    };
    match fault {
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            resp
        }
        Some(Fault::ServerError) => error(StatusCode::INTERNAL_SERVER_ERROR, "injected server error"),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(req).await
        }
        None => next.run(req).await,
    }
}

/// Rejects API calls without a valid, unexpired bearer token.
async fn require_token(State(store): State<Shared>, req: Request<Body>, next: Next) -> Response {
    let token =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| lock(&store).tokens.get(t).is_some_and(|expiry| Instant::now() < *expiry));
    if !valid {
        return error(StatusCode::UNAUTHORIZED, "invalid or expired access token");
    }
    next.run(req).await
}

/// `POST /api/v2/oauth/token` with a form body.
async fn issue_token(State(store): State<Shared>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut s = lock(&store);
    if field("grant_type").is_some_and(|g| g != "client_credentials") {
        return error(StatusCode::BAD_REQUEST, "unsupported grant_type");
    }
    if field("client_id") != Some(s.opts.client_id.as_str())
        || field("client_secret") != Some(s.opts.client_secret.as_str())
    {
        return error(StatusCode::UNAUTHORIZED, "invalid client credentials");
    }
    s.tokens_issued += 1;
    let n = s.tailnet.next_serial();
    let token = format!("tskey-api-fake{n}-{:016x}", fastrand::u64(..));
    let lifetime = s.opts.token_lifetime;
    s.tokens.insert(token.clone(), Instant::now() + lifetime);
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    Json(TokenResponse { access_token: token, token_type: "Bearer".into(), expires_in }).into_response()
}

async fn list_devices(State(store): State<Shared>, Path(tailnet): Path<String>) -> Response {
    let s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    let devices: Vec<&Device> = s.tailnet.devices.values().collect();
    Json(json!({ "devices": devices })).into_response()
}

async fn get_device(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    match lock(&store).tailnet.device(&id) {
        Some(d) => Json(d).into_response(),
        None => error(StatusCode::NOT_FOUND, "device not found"),
    }
}

async fn delete_device(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    match lock(&store).tailnet.remove_device(&id) {
        true => StatusCode::OK.into_response(),
        false => error(StatusCode::NOT_FOUND, "device not found"),
    }
}

async fn create_key(State(store): State<Shared>, Path(tailnet): Path<String>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<KeyCreateBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid key request body");
    };
    let mut s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    let IssuedAuthKey { id, key, .. } = match s.tailnet.create_auth_key(body.to_request()) {
        Ok(issued) => issued,
        Err(refusal) => return refused(refusal),
    };
    let now = jiff::Timestamp::now();
    let expiry = body.expiry_seconds.unwrap_or(90 * 24 * 3600);
    let expires = i64::try_from(expiry)
        .ok()
        .and_then(|secs| now.checked_add(jiff::SignedDuration::from_secs(secs)).ok())
        .map(|t| t.to_string());
    Json(KeyCreated { id, key, created: Some(now.to_string()), expires }).into_response()
}

async fn list_vip_services(State(store): State<Shared>, Path(tailnet): Path<String>) -> Response {
    let s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    let services: Vec<&VipService> = s.tailnet.vip_services.values().collect();
    Json(json!({ "vipServices": services })).into_response()
}

async fn get_vip_service(State(store): State<Shared>, Path((tailnet, name)): Path<(String, String)>) -> Response {
    let s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    match s.tailnet.vip_services.get(&name) {
        Some(svc) => Json(svc).into_response(),
        None => error(StatusCode::NOT_FOUND, "VIP service not found"),
    }
}

/// Creates (allocating `addrs` unless given) or updates (requiring `addrs` to be resent and
/// keeping the allocated ones) a VIP service.
async fn put_vip_service(
    State(store): State<Shared>,
    Path((tailnet, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(svc) = serde_json::from_slice::<VipService>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid VIP service body");
    };
    let mut s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    match s.tailnet.put_vip_service(&name, svc) {
        Ok(stored) => Json(stored).into_response(),
        Err(refusal) => refused(refusal),
    }
}

async fn delete_vip_service(State(store): State<Shared>, Path((tailnet, name)): Path<(String, String)>) -> Response {
    let mut s = lock(&store);
    if !s.known_tailnet(&tailnet) {
        return error(StatusCode::NOT_FOUND, "tailnet not found");
    }
    match s.tailnet.vip_services.remove(&name) {
        Some(_) => StatusCode::OK.into_response(),
        None => error(StatusCode::NOT_FOUND, "VIP service not found"),
    }
}

/// Parses `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let form = parse_form(b"client_id=abc&client_secret=a%2Bb+c%3D&grant_type=client_credentials&flag");
        assert_eq!(
            form,
            vec![
                ("client_id".into(), "abc".into()),
                ("client_secret".into(), "a+b c=".into()),
                ("grant_type".into(), "client_credentials".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(parse_form(b"x=%zz%4"), vec![("x".into(), "%zz%4".into())]);
    }

    #[test]
    fn faults_are_consumed_in_order() {
        let mut s = Store::default();
        s.api_faults.push_back((Fault::ServerError, 2));
        s.api_faults.push_back((Fault::TooManyRequests { retry_after_secs: 1 }, 1));
        assert_eq!(s.take_fault(true), None, "token faults are separate");
        assert_eq!(s.take_fault(false), Some(Fault::ServerError));
        assert_eq!(s.take_fault(false), Some(Fault::ServerError));
        assert_eq!(s.take_fault(false), Some(Fault::TooManyRequests { retry_after_secs: 1 }));
        assert_eq!(s.take_fault(false), None);
    }

    #[test]
    fn allocated_addresses_are_unique() {
        let mut s = Tailnet::default();
        let a = s.allocate_addrs([100, 100]);
        let b = s.allocate_addrs([100, 100]);
        assert_eq!(a.len(), 2);
        assert_ne!(a, b);
        assert!(a[0].starts_with("100.100."));
    }
}
