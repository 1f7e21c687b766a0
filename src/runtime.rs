//! Where the process is wired: arguments, the shared cache and what feeds it, the HTTPS server
//! (webhooks, aggregated API, health, metrics), and shutdown. A reader sees every task and port here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use http::{StatusCode, header};
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Webhook, mutate_handler, validate_handler};
use crate::aggregated::AggregatedApi;
use crate::aggregated::auth::{Auth, Delegated, follow_authentication_config};
use crate::cache::Cache;
use crate::core::{Kind, Resource};
use crate::metrics::AdmissionMetrics;
use crate::server::tls::{self, CertStore};

/// `tailscale-gateway serve` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// HTTPS address for webhooks and the aggregated API [default: 0.0.0.0:8443, or
    /// 127.0.0.1:8443 with --local].
    #[arg(long, env = "TSGW_LISTEN", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Serving certificate (PEM); reloaded when the file changes. Self-generated when omitted.
    #[arg(long, env = "TSGW_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving certificate key (PEM).
    #[arg(long, env = "TSGW_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often certificate files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Extra names for a self-generated serving certificate (e.g. SVC.NAMESPACE.svc).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// Local mode: load objects from the manifests in DIR instead of a cluster.
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Local mode: where certificates and the kubeconfig are kept.
    #[arg(long, default_value = ".state", env = "TSGW_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Local mode: how often DIR is checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub local_poll_interval: Duration,
    /// Envoy Gateway extension (gRPC) address [default: 0.0.0.0:5005, or 127.0.0.1:5005 with --local].
    #[arg(long, env = "TSGW_XDS_ADDR", value_parser = parse_listen)]
    pub xds_addr: Option<SocketAddr>,
    /// Where Envoy reaches this server's authorization service for route policies (the
    /// extension's gRPC port), as HOST:PORT [default: tailscale-gateway-xds.NAMESPACE.svc.CLUSTER-DOMAIN
    /// on the extension's port, or 127.0.0.1 with --local].
    #[arg(long, value_parser = parse_host_port)]
    pub authz_address: Option<crate::core::authz::AuthzAddress>,
    /// Extension server certificate (PEM), reloaded when the file changes; plain gRPC when omitted.
    #[arg(long, requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// Extension server key (PEM).
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// CA that Envoy Gateway's client certificate must chain to (mutual TLS).
    #[arg(long, requires = "xds_tls_cert")]
    pub xds_client_ca: Option<PathBuf>,
    /// Largest gRPC message the extension server accepts or sends, in bytes (Envoy Gateway's
    /// maxMessageSize must not exceed it).
    #[arg(long, default_value_t = crate::xds::DEFAULT_MAX_MESSAGE_SIZE)]
    pub xds_max_message_size: usize,
    /// Most elements in any one list of an extension call (clusters, listeners, route
    /// configurations, virtual hosts, routes, filter chains, endpoints, secrets, extension
    /// resources); a call with more is refused with RESOURCE_EXHAUSTED before it is decoded.
    #[arg(long, default_value_t = crate::xds::limits::DEFAULT_MAX_RESOURCES)]
    pub xds_max_resources_per_call: usize,
    /// Extension calls decoded and served at once; more wait their turn.
    #[arg(long, default_value_t = crate::xds::limits::DEFAULT_MAX_CONCURRENT_CALLS)]
    pub xds_max_concurrent_calls: usize,
    /// Bytes the extension calls in flight may take once decoded, estimated from their wire bytes
    /// before decoding (an upper bound): a call above it is refused with RESOURCE_EXHAUSTED, calls
    /// that together exceed it wait their turn.
    #[arg(long, default_value_t = crate::xds::limits::DEFAULT_MAX_DECODED_SIZE)]
    pub xds_max_decoded_size: usize,
    /// Open connections to the extension port; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = crate::xds::DEFAULT_MAX_CONNECTIONS)]
    pub xds_max_connections: usize,
    /// Open connections to the HTTPS port; more are closed as soon as they are accepted (lowered,
    /// with a warning, to fit the open-file limit).
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Time an HTTPS client has to finish the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Time an HTTPS client has to send its first request's headers, counted from the end of the
    /// handshake (later requests on a kept-alive connection have --idle-timeout to arrive in full).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// An HTTPS connection with no request in flight for this long is closed (HTTP/1: also the
    /// longest a later request's headers may take).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Plain-HTTP address serving only /healthz, /livez and /readyz, outside --max-connections (for
    /// kubelet probes: deploy/ sets :8081) [default: none; they are on the HTTPS port too].
    #[arg(long, env = "TSGW_HEALTH_ADDR", value_parser = parse_listen)]
    pub health_addr: Option<SocketAddr>,
    /// Region of the Envoy fleet: endpoints labelled with another region are remote (failover priority 1).
    #[arg(long)]
    pub xds_local_region: Option<String>,
    /// Kubernetes cluster DNS domain used in proxy Service names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Namespace of Envoy Gateway's controller: a TailscaleServices that serves a Gateway forwards
    /// to the Service Envoy Gateway runs that Gateway behind, in this namespace.
    #[arg(long, default_value = crate::core::dataplane::DEFAULT_ENVOY_GATEWAY_NAMESPACE)]
    pub envoy_gateway_namespace: String,
    /// Namespace the server runs in (leader Lease, default namespace of OAuth Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tailscale-gateway")]
    pub namespace: String,
    /// This replica's identity in the leader Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Name of the Lease that elects the one replica that reconciles.
    #[arg(long, default_value = "tailscale-gateway-reconciler")]
    pub lease_name: String,
    /// How long the leader holds the Lease without renewing it (whole seconds).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lease_renew_interval: Duration,
    /// How often a replica that does not lead checks whether it can take over.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_interval: Duration,
    /// A leader that could not renew for this long stops reconciling (less than --lease-duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,
    /// Longest a tailnet's device list (from the Tailscale API) is reused before it is fetched again.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub device_refresh: Duration,
    /// Default Tailscale proxy image for TailscaleEndpoints that name none.
    #[arg(long, env = "TSGW_PROXY_IMAGE", default_value = "tailscale/tailscale:stable")]
    pub proxy_image: String,
    /// ID of this installation in VIP services shared by several clusters.
    #[arg(long, env = "TSGW_CLUSTER_ID", default_value = "default")]
    pub cluster_id: String,
    /// Serve webhooks, the aggregated API and the extension only; never reconcile.
    #[arg(long)]
    pub no_reconciler: bool,
    /// In a cluster without --tls-cert-file: keep a CA and serving certificate in the Secret
    /// --cert-secret (shared by all replicas) and the caBundle of our registrations current.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", env = "TSGW_SELF_MANAGED_CERTS")]
    pub self_managed_certs: bool,
    /// Secret (in --namespace) holding the self-managed certificates.
    #[arg(long, default_value = crate::install::CERT_SECRET_NAME)]
    pub cert_secret: String,
    /// Service in front of the HTTPS port: the self-managed certificate is issued for its DNS names.
    #[arg(long, default_value = crate::install::SERVICE_NAME)]
    pub service_name: String,
    /// CA (PEM) that callers of the webhooks must present a client certificate from: set it to
    /// the CA of the client certificate kube-apiserver presents to webhooks (its admission
    /// configuration's kubeconfig), and nothing else reaching the port gets a review answered.
    #[arg(long)]
    pub webhook_client_ca: Option<PathBuf>,
    /// Validating and mutating webhook configurations whose caBundle we keep ("" for none).
    #[arg(long, default_value = crate::install::WEBHOOK_CONFIG_NAME)]
    pub webhook_config_name: String,
    /// APIService whose caBundle we keep ("" for none).
    #[arg(long, default_value = crate::install::APISERVICE_NAME)]
    pub apiservice_name: String,
}

impl ServeArgs {
    /// Where this installation runs, as the reconciler and the extension name things.
    pub fn placement(&self) -> crate::core::dataplane::Placement {
        crate::core::dataplane::Placement {
            cluster_domain: self.cluster_domain.clone(),
            local_region: self.xds_local_region.clone(),
            envoy_gateway_namespace: self.envoy_gateway_namespace.clone(),
        }
    }

    /// Arguments for local mode on `dir` with everything else defaulted (tests, examples).
    pub fn local(dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            listen: Some(listen),
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_interval: Duration::from_secs(2),
            tls_sans: Vec::new(),
            local: Some(dir.into()),
            state_dir: state_dir.into(),
            local_poll_interval: Duration::from_secs(1),
            xds_addr: Some(SocketAddr::new(listen.ip(), 0)),
            authz_address: None,
            xds_tls_cert: None,
            xds_tls_key: None,
            xds_client_ca: None,
            xds_max_message_size: crate::xds::DEFAULT_MAX_MESSAGE_SIZE,
            xds_max_resources_per_call: crate::xds::limits::DEFAULT_MAX_RESOURCES,
            xds_max_concurrent_calls: crate::xds::limits::DEFAULT_MAX_CONCURRENT_CALLS,
            xds_max_decoded_size: crate::xds::limits::DEFAULT_MAX_DECODED_SIZE,
            xds_max_connections: crate::xds::DEFAULT_MAX_CONNECTIONS,
            max_connections: crate::server::DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout: crate::server::DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: crate::server::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: crate::server::DEFAULT_IDLE_TIMEOUT,
            health_addr: None,
            xds_local_region: None,
            cluster_domain: "cluster.local".into(),
            envoy_gateway_namespace: crate::core::dataplane::DEFAULT_ENVOY_GATEWAY_NAMESPACE.into(),
            namespace: "default".into(),
            pod_name: None,
            lease_name: "tailscale-gateway-reconciler".into(),
            lease_duration: Duration::from_secs(15),
            lease_renew_interval: Duration::from_secs(5),
            lease_retry_interval: Duration::from_secs(2),
            lease_renew_deadline: Duration::from_secs(10),
            device_refresh: Duration::from_secs(60),
            proxy_image: "tailscale/tailscale:stable".into(),
            cluster_id: "default".into(),
            no_reconciler: true,
            self_managed_certs: false,
            cert_secret: crate::install::CERT_SECRET_NAME.into(),
            service_name: crate::install::SERVICE_NAME.into(),
            webhook_client_ca: None,
            webhook_config_name: crate::install::WEBHOOK_CONFIG_NAME.into(),
            apiservice_name: crate::install::APISERVICE_NAME.into(),
        }
    }
}

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT`, or `:PORT` for every interface
/// (the form Kubernetes components take).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let want = || match s.parse::<u16>() {
        Ok(port) => format!(
            "{s:?} is a port alone: want IP:PORT, :PORT or localhost:PORT, e.g. :{port} (every interface) or localhost:{port}"
        ),
        Err(_) => format!(
            "{s:?} is no listen address: want IP:PORT, :PORT or localhost:PORT, e.g. 127.0.0.1:8443, :8443 or localhost:8443"
        ),
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(want)?;
    let port: u16 = port.parse().map_err(|_| want())?;
    match host {
        "" => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        "localhost" => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => Err(want()),
    }
}

/// A polling interval: a Go duration longer than zero.
fn parse_duration(s: &str) -> Result<Duration, String> {
    match crate::core::duration::parse(s)? {
        d if d.is_zero() => Err(format!("{s:?} is no interval: want a duration longer than 0s, e.g. \"2s\"")),
        d => Ok(d),
    }
}

/// The User-Agent of our requests to kube-apiserver, so audit logs and metrics tell them apart
/// (kube's client sends none of its own).
pub const KUBE_USER_AGENT: &str = concat!("tailscale-gateway/", env!("CARGO_PKG_VERSION"));

/// A Kubernetes client from the environment (in-cluster or kubeconfig) that names itself.
async fn kube_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.headers.push((header::USER_AGENT, http::HeaderValue::from_static(KUBE_USER_AGENT)));
    Ok(kube::Client::try_from(config)?)
}

/// Leader election works only with renew interval < renew deadline < lease duration (whole
/// seconds, as the Lease stores it): a leader must stop before anyone else may start.
fn check_lease_timings(args: &ServeArgs) -> anyhow::Result<()> {
    let (duration, renew, deadline) = (args.lease_duration, args.lease_renew_interval, args.lease_renew_deadline);
    if duration.subsec_nanos() != 0 {
        anyhow::bail!("--lease-duration {duration:?}: want whole seconds (the Lease stores leaseDurationSeconds)");
    }
    if !(renew < deadline && deadline < duration) {
        anyhow::bail!(
            "leader election needs --lease-renew-interval ({renew:?}) < --lease-renew-deadline ({deadline:?}) < --lease-duration ({duration:?})"
        );
    }
    Ok(())
}

/// A started server.
pub struct Running {
    /// Where HTTPS is served.
    pub https_addr: SocketAddr,
    /// Where the Envoy Gateway extension (gRPC) is served.
    pub xds_addr: SocketAddr,
    /// Where the plain-HTTP health listener is served (`--health-addr`), if at all.
    pub health_addr: Option<SocketAddr>,
    /// Local mode: the kubeconfig for kubectl.
    pub kubeconfig: Option<PathBuf>,
    /// The shared cache.
    pub cache: Cache,
    /// Cancel to shut everything down.
    pub stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Local mode: the state directory, held until the server is dropped.
    _state_lock: Option<crate::local::StateLock>,
}

impl Running {
    /// Waits until every task has finished (after `stop` is cancelled).
    pub async fn wait(mut self) {
        while let Some(res) = self.tasks.join_next().await {
            if let Err(error) = res {
                tracing::error!(%error, "task failed");
            }
        }
    }

    /// Cancels and waits.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.wait().await;
    }
}

#[derive(Clone)]
struct AppState {
    cache: Cache,
    registry: Arc<Registry>,
    /// Who may read `/metrics`: [`Auth::check_non_resource`].
    auth: Option<Auth>,
}

async fn ok() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.cache.synced() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "cache not synced").into_response()
    }
}

async fn metrics(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    if let Some(auth) = &state.auth {
        let certs = req.extensions().get::<crate::server::PeerCerts>().cloned().unwrap_or_default();
        if let Err(e) = auth.check_non_resource(&certs, req.headers(), "get", "/metrics").await {
            tracing::info!(status = e.status().as_u16(), error = %e, "/metrics request refused");
            return crate::server::status::status_response(e.status(), e.to_string());
        }
    }
    let body = crate::metrics::encode(&state.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// The health listener's routes (`--health-addr`): liveness and readiness only.
pub fn health_router(cache: Cache) -> Router {
    let registry = Arc::new(Registry::default());
    Router::new()
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(readyz))
        .with_state(AppState { cache, registry, auth: None })
}

/// The HTTPS port's limits from the flags, `--max-connections` lowered to fit the open-file limit
/// (raised to its hard limit first) with room for the extension and health listeners and the
/// cache's own files and API connections.
fn https_limits(args: &ServeArgs) -> crate::server::Limits {
    let mut max_connections = args.max_connections;
    if let Some(files) = crate::server::raise_open_file_limit() {
        let others = (args.xds_max_connections + crate::server::HEALTH_MAX_CONNECTIONS + 512) as u64;
        let room = usize::try_from(files.saturating_sub(others)).unwrap_or(usize::MAX).max(16);
        if room < max_connections {
            tracing::warn!(
                open_file_limit = files,
                "--max-connections {max_connections} does not fit the open-file limit; using {room}"
            );
            max_connections = room;
        }
    }
    crate::server::Limits {
        max_connections,
        handshake_timeout: args.tls_handshake_timeout,
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
    }
}

/// The HTTPS routes: webhooks, health and metrics (for whom `auth` allows). Served behind
/// [`HttpsApp`], which answers `POST /validate` and `POST /mutate` itself; the webhook routes
/// keep this router complete on its own and answer other methods on those paths with 405.
pub fn router(admission: Admission, registry: Arc<Registry>, auth: Auth) -> Router {
    let cache = admission.cache.clone();
    let webhooks = Router::new()
        .route("/validate", post(validate_handler))
        .route("/mutate", post(mutate_handler))
        .with_state(admission);
    let ops = Router::new()
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { cache, registry, auth: Some(auth) });
    webhooks.merge(ops)
}

/// The HTTPS service: admission reviews go straight to their handler (the hot path: no
/// routing table, extractors or state clones), everything else through the axum router, which
/// also answers other methods on the webhook paths.
#[derive(Clone)]
pub struct HttpsApp(Arc<(Admission, Router)>);

impl HttpsApp {
    /// Webhooks on `admission`, the rest on `router`.
    pub fn new(admission: Admission, router: Router) -> Self {
        Self(Arc::new((admission, router)))
    }
}

impl tower::Service<http::Request<hyper::body::Incoming>> for HttpsApp {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let webhook = match (req.method() == http::Method::POST).then(|| req.uri().path()) {
            Some("/validate") => Some(Webhook::Validate),
            Some("/mutate") => Some(Webhook::Mutate),
            _ => None,
        };
        let app = self.0.clone();
        Box::pin(async move {
            let (admission, router) = &*app;
            match webhook {
                Some(webhook) => Ok(crate::admission::handle(admission, webhook, req).await),
                None => tower::ServiceExt::oneshot(router.clone(), req).await,
            }
        })
    }
}

/// Feeds one kind into the cache from a kube-runtime watcher (relists reset the kind).
async fn reflect<K>(api: kube::Api<K>, kind: Kind, cache: Cache, stop: CancellationToken)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    Resource: From<K>,
{
    use kube::runtime::WatchStreamExt;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer: Vec<Resource> = Vec::new();
    let mut failing = WatchFailures::new(kind);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        match &event {
            Some(Err(error)) => {
                failing.failed(error);
                // kube's backoff restarts with every relist it begins, so a watch that always
                // fails would retry about once a second forever: wait longer each time.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(failing.pause()) => {}
                }
            }
            Some(Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                failing.recovered()
            }
            Some(Ok(_)) | None => {}
        }
        match event {
            None => return,
            Some(Err(_)) => {}
            Some(Ok(watcher::Event::Init)) => buffer.clear(),
            Some(Ok(watcher::Event::InitApply(o))) => buffer.push(Resource::from(o)),
            Some(Ok(watcher::Event::InitDone)) => cache.reset(kind, std::mem::take(&mut buffer)),
            Some(Ok(watcher::Event::Apply(o))) => cache.apply(Resource::from(o)),
            Some(Ok(watcher::Event::Delete(o))) => {
                let r = Resource::from(o);
                cache.delete(kind, &r.key());
            }
        }
    }
}

/// Feeds HTTPRoutes or GRPCRoutes into the cache: the extension reads their backendRefs' ports and
/// weights, which Envoy Gateway does not send it. Optional: without Gateway API's CRDs (or RBAC
/// for them) the extension falls back to each VIP's first port and equal weights, says so once,
/// and the server is ready all the same.
/// Keeps the cache's IPs of our ingress and bidirectional proxy pods current: route policies
/// trust the identity headers of requests from these addresses only.
async fn reflect_ingress_pods(client: kube::Client, cache: Cache, stop: CancellationToken) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::WatchStreamExt;
    let selector = format!("{} in (ingress,bidirectional)", crate::core::proxies::CONNECTION_TYPE_LABEL);
    let api = kube::Api::<Pod>::all(client);
    let stream = watcher(api, watcher::Config::default().labels(&selector)).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer = std::collections::BTreeMap::new();
    let ips = |p: &Pod| -> Vec<std::net::IpAddr> {
        let status = p.status.as_ref();
        let running = p.metadata.deletion_timestamp.is_none();
        let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|i| i.ip.as_str());
        listed
            .chain(status.and_then(|s| s.pod_ip.as_deref()))
            .filter_map(|ip| ip.parse().ok())
            .filter(|_| running)
            .collect()
    };
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(error = %crate::errors::Chain(&error), "watching our ingress proxy pods failed; retrying");
            }
            Some(Ok(watcher::Event::Init)) => buffer.clear(),
            Some(Ok(watcher::Event::InitApply(p))) => {
                buffer.insert(crate::core::ObjectKey::of(&p.metadata), ips(&p));
            }
            Some(Ok(watcher::Event::InitDone)) => cache.reset_ingress_pods(std::mem::take(&mut buffer)),
            Some(Ok(watcher::Event::Apply(p))) => {
                cache.set_ingress_pod(crate::core::ObjectKey::of(&p.metadata), ips(&p))
            }
            Some(Ok(watcher::Event::Delete(p))) => {
                cache.set_ingress_pod(crate::core::ObjectKey::of(&p.metadata), Vec::new())
            }
        }
    }
}

async fn reflect_routes(
    client: kube::Client,
    kind: crate::core::routes::RouteKind,
    cache: Cache,
    stop: CancellationToken,
) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use kube::runtime::WatchStreamExt;
    let gvk = GroupVersionKind::gvk(crate::core::dataplane::GATEWAY_API_GROUP, "v1", kind.kind());
    let api = kube::Api::<DynamicObject>::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, kind.plural()));
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut buffer: Vec<serde_json::Value> = Vec::new();
    let mut pause = Duration::from_millis(500);
    let mut said = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let as_value = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
        match event {
            None => return,
            Some(Err(error)) => {
                if !said {
                    tracing::warn!(
                        kind = kind.kind(),
                        error = %crate::errors::Chain(&error),
                        "cannot watch Gateway API routes; backendRefs to our kinds use each VIP's first port and equal weights until this works, retrying"
                    );
                    said = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
            Some(Ok(event)) => {
                if said {
                    tracing::info!(kind = kind.kind(), "watching Gateway API routes again");
                    said = false;
                }
                pause = Duration::from_millis(500);
                match event {
                    watcher::Event::Init => buffer.clear(),
                    watcher::Event::InitApply(o) => buffer.push(as_value(o)),
                    watcher::Event::InitDone => cache.reset_routes(kind, &std::mem::take(&mut buffer)),
                    watcher::Event::Apply(o) => cache.apply_route(kind, &as_value(o)),
                    watcher::Event::Delete(o) => {
                        let key = crate::core::ObjectKey::new(
                            o.metadata.namespace.clone().unwrap_or_default(),
                            o.metadata.name.clone().unwrap_or_default(),
                        );
                        cache.delete_route(kind, &key);
                    }
                }
            }
        }
    }
}

/// What a feeder says of its watch failing: a missing CustomResourceDefinition once, in words
/// that say how to install it, and any other failure once until it changes (the watcher retries
/// with backoff; the cache stays not ready, so `/readyz` says so).
struct WatchFailures {
    kind: Kind,
    last: Option<String>,
    /// Failures since the watch last worked.
    streak: u32,
}

impl WatchFailures {
    /// The longest pause between two attempts.
    const MAX_PAUSE: Duration = Duration::from_secs(60);

    fn new(kind: Kind) -> Self {
        Self { kind, last: None, streak: 0 }
    }

    /// How long to wait before the next attempt: 0.5 s, doubling up to [`Self::MAX_PAUSE`].
    fn pause(&mut self) -> Duration {
        self.streak = self.streak.saturating_add(1);
        Duration::from_millis(250u64.saturating_mul(1 << self.streak.min(10))).min(Self::MAX_PAUSE)
    }

    fn failed(&mut self, error: &watcher::Error) {
        let kind = self.kind;
        let text = match crate::errors::is_api_code(error, 404) {
            true => format!(
                "the CustomResourceDefinition {} is not installed; install crds/ with `kubectl apply --server-side -k crds/` \
                 (or `tailscale-gateway crds | kubectl apply --server-side -f -`); not ready until it is, retrying",
                crate::api::crd_name(kind)
            ),
            false => format!("watching {kind} failed; retrying: {}", crate::errors::Chain(error)),
        };
        if self.last.as_deref() == Some(text.as_str()) {
            tracing::debug!(%kind, "{text}");
        } else {
            tracing::error!(%kind, "{text}");
            self.last = Some(text);
        }
    }

    fn recovered(&mut self) {
        self.streak = 0;
        if self.last.take().is_some() {
            tracing::info!(kind = %self.kind, "watching {} again", self.kind);
        }
    }
}

/// Starts the server: cache and its feeders, HTTPS server, background tasks. Each step below is
/// a function of its own; their order is the order things are bound, loaded and spawned.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let cache = Cache::default();
    let mut metrics = Metrics::register();

    check_lease_timings(&args)?;
    if let Some(dir) = &args.local {
        std::fs::metadata(dir).with_context(|| {
            format!("--local {}: want a folder (or file) of manifests, e.g. examples/", dir.display())
        })?;
    }
    let local = args.local.is_some();
    let listeners = Listeners::bind(&args).await?;
    let (https_addr, xds_addr) = (listeners.https_addr, listeners.xds_addr);
    let kube_client = match &args.local {
        Some(_) => None,
        None => {
            Some(kube_client().await.context("connecting to Kubernetes (use --local DIR to run without a cluster)")?)
        }
    };
    let serving = serving_certificate(&args, kube_client.as_ref(), https_addr, &mut tasks, &stop).await?;
    // In a cluster the extension reads route policies from kube-apiserver before it extends a
    // translation, so the policy change that made Envoy Gateway translate is always in it.
    let policy_source = kube_client.clone().map(|client| {
        Arc::new(kube::Api::<crate::api::TailscaleRoutePolicy>::all(client)) as Arc<dyn crate::xds::PolicySource>
    });

    // Feed the cache; decide how the aggregated API authenticates.
    let aggregated_auth = match &args.local {
        Some(dir) => feed_from_dir(&args, dir, serving.local_ca, &cache, &mut tasks, &stop)?,
        None => {
            let client = kube_client.context("no Kubernetes client")?;
            feed_from_cluster(&args, client, &cache, &mut metrics.registry, &mut tasks, &stop)
        }
    };

    spawn_xds(&args, listeners.xds, cache.clone(), metrics.xds, policy_source, &mut tasks, &stop)?;
    let app =
        https_app(&args, &cache, metrics.registry, metrics.admission, metrics.aggregated, aggregated_auth, &stop)?;
    let tls_config = tls::server_config(serving.store)?;
    let limits = https_limits(&args);
    tasks.spawn(crate::server::serve(listeners.https, tls_config, app, limits, stop.clone()));
    let health_addr = listeners.health.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(health) = listeners.health {
        let app = health_router(cache.clone());
        tasks.spawn(crate::server::serve_plain(health, app, crate::server::Limits::health(), stop.clone()));
    }
    tracing::info!(%https_addr, %xds_addr, local, "serving");
    Ok(Running {
        https_addr,
        xds_addr,
        health_addr,
        kubeconfig: serving.kubeconfig,
        cache,
        stop,
        tasks,
        _state_lock: listeners.state_lock,
    })
}

/// Every metric family, registered at start (the reconciler adds its own while it is wired).
struct Metrics {
    registry: Registry,
    admission: AdmissionMetrics,
    xds: crate::xds::XdsMetrics,
    aggregated: crate::metrics::AggregatedMetrics,
}

impl Metrics {
    fn register() -> Self {
        let mut registry = Registry::with_prefix("tailscale_gateway");
        let admission = AdmissionMetrics::register(&mut registry);
        let xds = crate::xds::XdsMetrics::register(&mut registry);
        let aggregated = crate::metrics::AggregatedMetrics::register(&mut registry);
        Self { registry, admission, xds, aggregated }
    }
}

/// The bound ports, and in local mode the state directory's lock.
struct Listeners {
    https: TcpListener,
    https_addr: SocketAddr,
    xds: TcpListener,
    xds_addr: SocketAddr,
    health: Option<TcpListener>,
    state_lock: Option<crate::local::StateLock>,
}

impl Listeners {
    /// Locks the state directory (local mode), then binds HTTPS, the extension and health.
    async fn bind(args: &ServeArgs) -> anyhow::Result<Self> {
        let local = args.local.is_some();
        let listen = args.listen.unwrap_or_else(|| {
            if local { SocketAddr::from(([127, 0, 0, 1], 8443)) } else { SocketAddr::from(([0, 0, 0, 0], 8443)) }
        });
        // Before anything is bound or written: a second local server on the same state directory
        // would rewrite the first one's kubeconfig.
        let state_lock = match local {
            true => Some(crate::local::lock_state_dir(&args.state_dir, &format!("https://{}", display_addr(listen)))?),
            false => None,
        };
        let https = TcpListener::bind(listen).await.with_context(|| format!("binding HTTPS listener on {listen}"))?;
        let https_addr = https.local_addr()?;
        let xds_listen = args.xds_addr.unwrap_or_else(|| {
            if local { SocketAddr::from(([127, 0, 0, 1], 5005)) } else { SocketAddr::from(([0, 0, 0, 0], 5005)) }
        });
        let xds = TcpListener::bind(xds_listen)
            .await
            .with_context(|| format!("binding Envoy Gateway extension listener on {xds_listen}"))?;
        let xds_addr = xds.local_addr()?;
        let health = match args.health_addr {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("binding the health listener on {addr}"))?)
            }
            None => None,
        };
        Ok(Self { https, https_addr, xds, xds_addr, health, state_lock })
    }
}

/// The serving certificate, and what local mode's PKI leaves for later steps.
struct Serving {
    store: Arc<CertStore>,
    /// Local mode: the kubeconfig written for kubectl.
    kubeconfig: Option<PathBuf>,
    /// Local mode: the state directory's CA (PEM), which client certificates are checked against.
    local_ca: Option<String>,
}

/// The serving certificate: files (reloaded on change), local-mode PKI, self-managed in a
/// Secret, or self-generated.
async fn serving_certificate(
    args: &ServeArgs,
    kube_client: Option<&kube::Client>,
    https_addr: SocketAddr,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<Serving> {
    let served = |store| Serving { store, kubeconfig: None, local_ca: None };
    match (&args.tls_cert_file, &args.tls_key_file, &args.local, kube_client) {
        (Some(cert), Some(key), _, _) => {
            let (c, k) = tls::load_files(cert, key)?;
            let store =
                CertStore::new(tls::certified_key(&c, &k).with_context(|| format!("loading {}", cert.display()))?);
            tasks.spawn(tls::reload_on_change(
                store.clone(),
                cert.clone(),
                key.clone(),
                args.tls_reload_interval,
                stop.clone(),
            ));
            Ok(served(store))
        }
        (_, _, Some(_), _) => {
            let pki = crate::local::ensure_pki(&args.state_dir, &args.tls_sans)?;
            let server = format!("https://{}", display_addr(https_addr));
            let kubeconfig = Some(crate::local::write_kubeconfig(&args.state_dir, &server, &pki)?);
            let store =
                CertStore::new(tls::certified_key(pki.serving.cert_pem.as_bytes(), pki.serving.key_pem.as_bytes())?);
            Ok(Serving { store, kubeconfig, local_ca: Some(pki.ca.cert_pem) })
        }
        (_, _, None, Some(client)) if args.self_managed_certs => {
            Ok(served(self_managed_certificate(args, client.clone(), tasks, stop).await?))
        }
        _ => {
            let ca = crate::pki::Ca::generate("tailscale-gateway self-signed CA")?;
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            names.extend(args.tls_sans.iter().cloned());
            let pair = ca.issue_server(&names)?;
            tracing::warn!("no --tls-cert-file given: serving a self-generated certificate");
            Ok(served(CertStore::new(tls::certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes())?)))
        }
    }
}

/// A serving certificate kept in a Secret, issued now if need be and renewed in the background.
async fn self_managed_certificate(
    args: &ServeArgs,
    client: kube::Client,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<CertStore>> {
    let mut names = crate::install::service_dns_names(&args.service_name, &args.namespace, &args.cluster_domain);
    names.extend(args.tls_sans.iter().cloned());
    let manager = crate::selfcert::SelfCert::new(
        client,
        crate::selfcert::Config {
            namespace: args.namespace.clone(),
            secret_name: args.cert_secret.clone(),
            names,
            webhook_config_name: args.webhook_config_name.clone(),
            apiservice_name: args.apiservice_name.clone(),
            interval: Duration::from_secs(60),
            policy: crate::selfcert::Policy::default(),
        },
    );
    let material = manager
        .ensure(crate::selfcert::unix_now())
        .await
        .with_context(|| format!("self-managed certificates in secret {}/{}", args.namespace, args.cert_secret))?;
    let store =
        CertStore::new(tls::certified_key(material.serving.cert_pem.as_bytes(), material.serving.key_pem.as_bytes())?);
    tasks.spawn(manager.run(store.clone(), material, stop.clone()));
    Ok(store)
}

/// Local mode: loads the manifests in `dir` and follows them; the aggregated API checks client
/// certificates against the state directory's CA (even when serving files are given).
fn feed_from_dir(
    args: &ServeArgs,
    dir: &std::path::Path,
    local_ca: Option<String>,
    cache: &Cache,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<Auth> {
    let ca_pem = match local_ca {
        Some(pem) => pem,
        None => crate::local::ensure_pki(&args.state_dir, &args.tls_sans)?.ca.cert_pem,
    };
    let auth = Auth::local(&ca_pem).map_err(anyhow::Error::msg)?;
    let mut local_dir = crate::local::LocalDir::new(dir);
    let summary = local_dir.load(cache);
    tracing::info!(dir = %dir.display(), objects = summary.objects, rejected = summary.rejected, "loaded local manifests");
    tasks.spawn(crate::local::watch_dir(cache.clone(), local_dir, args.local_poll_interval, stop.clone()));
    Ok(auth)
}

/// In a cluster: the aggregated API delegates authentication and authorization to the
/// kube-apiserver; a watcher per kind (and per route kind) feeds the cache; and, unless
/// `--no-reconciler`, leader election and the reconciler run.
fn feed_from_cluster(
    args: &ServeArgs,
    client: kube::Client,
    cache: &Cache,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> Auth {
    let delegated = Arc::new(Delegated::new(client.clone()));
    tasks.spawn(follow_authentication_config(delegated.clone(), stop.clone()));
    for kind in Kind::ALL {
        spawn_reflector(tasks, kind, client.clone(), cache.clone(), stop.clone());
    }
    for kind in crate::core::routes::RouteKind::ALL {
        tasks.spawn(reflect_routes(client.clone(), kind, cache.clone(), stop.clone()));
    }
    tasks.spawn(reflect_ingress_pods(client.clone(), cache.clone(), stop.clone()));
    if !args.no_reconciler {
        spawn_reconciler(tasks, args, client, cache.clone(), registry, stop.clone());
    }
    Auth::Delegated(delegated)
}

/// Where Envoy reaches the authorization service when `--authz-address` is not given: our
/// extension Service in a cluster, this listener on loopback in local mode.
fn default_authz_address(args: &ServeArgs, listener: &TcpListener) -> crate::core::authz::AuthzAddress {
    match args.local {
        Some(_) => crate::core::authz::AuthzAddress {
            host: String::from("127.0.0.1"),
            port: listener.local_addr().map_or(crate::install::XDS_PORT, |a| a.port()),
            tls: false,
        },
        None => crate::core::authz::AuthzAddress {
            host: format!("{}.{}.svc.{}", crate::install::XDS_SERVICE_NAME, args.namespace, args.cluster_domain),
            port: crate::install::XDS_PORT,
            tls: false,
        },
    }
}

/// `HOST:PORT` for `--authz-address`.
fn parse_host_port(s: &str) -> Result<crate::core::authz::AuthzAddress, String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: want HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| format!("{s:?}: the port must be a number 1-65535"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?}: want HOST:PORT"));
    }
    Ok(crate::core::authz::AuthzAddress { host: host.to_string(), port, tls: false })
}

/// Spawns [`reflect`] for `kind` with the API of its type.
fn spawn_reflector(tasks: &mut JoinSet<()>, kind: Kind, client: kube::Client, cache: Cache, stop: CancellationToken) {
    use crate::api::{TailscaleEndpoints, TailscaleGateway, TailscaleRoutePolicy, TailscaleServices, TailscaleTailnet};
    use kube::Api;
    match kind {
        Kind::Tailnet => tasks.spawn(reflect(Api::<TailscaleTailnet>::all(client), kind, cache, stop)),
        Kind::Endpoints => tasks.spawn(reflect(Api::<TailscaleEndpoints>::all(client), kind, cache, stop)),
        Kind::Services => tasks.spawn(reflect(Api::<TailscaleServices>::all(client), kind, cache, stop)),
        Kind::Gateway => tasks.spawn(reflect(Api::<TailscaleGateway>::all(client), kind, cache, stop)),
        Kind::RoutePolicy => tasks.spawn(reflect(Api::<TailscaleRoutePolicy>::all(client), kind, cache, stop)),
    };
}

/// The Envoy Gateway extension on `listener`; its failure stops the whole server. Unusable TLS
/// files fail here, at start-up, not in the background.
fn spawn_xds(
    args: &ServeArgs,
    listener: TcpListener,
    cache: Cache,
    metrics: crate::xds::XdsMetrics,
    policy_source: Option<Arc<dyn crate::xds::PolicySource>>,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let options = crate::xds::XdsOptions {
        addr: listener.local_addr()?,
        tls: args.xds_tls_cert.clone().zip(args.xds_tls_key.clone()).map(|(cert, key)| crate::xds::TlsFiles {
            cert,
            key,
            client_ca: args.xds_client_ca.clone(),
            reload_interval: args.tls_reload_interval,
        }),
        max_message_size: args.xds_max_message_size,
        max_resources_per_call: args.xds_max_resources_per_call,
        max_concurrent_calls: args.xds_max_concurrent_calls,
        max_decoded_size: args.xds_max_decoded_size,
        max_connections: args.xds_max_connections,
        hooks: crate::xds::HookSettings {
            placement: args.placement(),
            authz: crate::core::authz::AuthzAddress {
                tls: args.xds_tls_cert.is_some(),
                ..args.authz_address.clone().unwrap_or_else(|| default_authz_address(args, &listener))
            },
            policy_source,
            ..crate::xds::HookSettings::default()
        },
    };
    if let Some(files) = &options.tls {
        crate::xds::tls_config(files)?;
    }
    let stop = stop.clone();
    tasks.spawn(async move {
        if let Err(error) = crate::xds::serve_listener(listener, cache, options, metrics, stop.clone()).await {
            tracing::error!(%error, "Envoy Gateway extension server failed; shutting down");
            stop.cancel();
        }
    });
    Ok(())
}

/// The HTTPS port's service: webhooks, the aggregated API (our CRD kinds too in local mode, which
/// has no kube-apiserver to serve them), health and metrics.
fn https_app(
    args: &ServeArgs,
    cache: &Cache,
    registry: Registry,
    admission_metrics: AdmissionMetrics,
    aggregated_metrics: crate::metrics::AggregatedMetrics,
    auth: Auth,
    stop: &CancellationToken,
) -> anyhow::Result<HttpsApp> {
    let aggregated = AggregatedApi::new(cache.clone(), auth.clone(), stop.clone()).with_metrics(aggregated_metrics);
    let aggregated = if args.local.is_some() { aggregated.with_crds() } else { aggregated };
    let mut admission = Admission::new(cache.clone(), admission_metrics);
    if let Some(path) = &args.webhook_client_ca {
        let pem = std::fs::read(path).with_context(|| format!("reading --webhook-client-ca {}", path.display()))?;
        let verifier = crate::aggregated::auth::verifier_for(&pem)
            .map_err(|e| anyhow::anyhow!("--webhook-client-ca {}: {e}", path.display()))?;
        admission.client_ca = Some(verifier);
    }
    let routes = router(admission.clone(), Arc::new(registry), auth).merge(crate::aggregated::router(aggregated));
    Ok(HttpsApp::new(admission, routes))
}

/// Starts leader election and the reconciler, which runs only while this replica leads.
fn spawn_reconciler(
    tasks: &mut JoinSet<()>,
    args: &ServeArgs,
    client: kube::Client,
    cache: Cache,
    registry: &mut Registry,
    stop: CancellationToken,
) {
    use crate::reconciler::{Config, Context, HttpsApiFactory, ReconcilerMetrics};
    let identity = args.pod_name.clone().unwrap_or_else(|| format!("tailscale-gateway-{}", std::process::id()));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let lease = crate::lease::LeaseConfig {
        lease_duration: args.lease_duration,
        renew_interval: args.lease_renew_interval,
        retry_interval: args.lease_retry_interval,
        renew_deadline: args.lease_renew_deadline,
        ..crate::lease::LeaseConfig::new(args.namespace.clone(), args.lease_name.clone(), identity.clone())
    };
    let elector = crate::lease::LeaderElector::new(client.clone(), lease);
    tasks.spawn(elector.run(leader_tx, stop.clone()));
    let config = Config {
        namespace: args.namespace.clone(),
        proxy_image: args.proxy_image.clone(),
        cluster_id: args.cluster_id.clone(),
        device_refresh: args.device_refresh,
        placement: args.placement(),
        ..Config::default()
    };
    let metrics = Arc::new(ReconcilerMetrics::new(registry));
    let ctx = Arc::new(Context::new(client, cache, Arc::new(HttpsApiFactory), metrics, config, Some(identity)));
    tasks.spawn(crate::reconciler::run(ctx, leader_rx, stop));
}

fn display_addr(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn polling_intervals_must_be_longer_than_zero() {
        assert_eq!(super::parse_duration("1500ms"), Ok(std::time::Duration::from_millis(1500)));
        for zero in ["0s", "0", "0ms"] {
            let err = super::parse_duration(zero).err().unwrap_or_default();
            assert!(err.contains("longer than 0s"), "{zero}: {err}");
        }
        assert!(super::parse_duration("soon").is_err());
    }

    #[test]
    fn lease_timings_must_let_a_leader_stop_before_another_starts() {
        let mut args = super::ServeArgs::local("examples", ".state", std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        assert!(super::check_lease_timings(&args).is_ok(), "the defaults");
        args.lease_duration = std::time::Duration::from_secs(3);
        args.lease_renew_interval = std::time::Duration::from_millis(500);
        args.lease_retry_interval = std::time::Duration::from_millis(250);
        args.lease_renew_deadline = std::time::Duration::from_secs(2);
        assert!(super::check_lease_timings(&args).is_ok(), "short timings");
        args.lease_renew_deadline = std::time::Duration::from_secs(3);
        let err = super::check_lease_timings(&args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--lease-renew-deadline (3s) < --lease-duration (3s)"), "{err}");
        args.lease_duration = std::time::Duration::from_millis(3500);
        let err = super::check_lease_timings(&args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("want whole seconds"), "{err}");
    }

    #[test]
    fn listen_addresses_take_the_kubernetes_forms() {
        let ok = |s: &str| super::parse_listen(s).map(|a| a.to_string());
        assert_eq!(ok("127.0.0.1:8443").as_deref(), Ok("127.0.0.1:8443"));
        assert_eq!(ok("[::1]:8443").as_deref(), Ok("[::1]:8443"));
        assert_eq!(ok(":8443").as_deref(), Ok("0.0.0.0:8443"));
        assert_eq!(ok("localhost:0").as_deref(), Ok("127.0.0.1:0"));
        for bad in ["8443", "example.com:8443", ":http", "", "1.2.3.4:70000"] {
            let err = super::parse_listen(bad).err().unwrap_or_default();
            assert!(err.contains("want IP:PORT, :PORT or localhost:PORT"), "{bad:?}: {err}");
        }
        let port = super::parse_listen("18448").err().unwrap_or_default();
        assert!(port.contains("is a port alone") && port.contains("e.g. :18448"), "{port}");
    }
}
