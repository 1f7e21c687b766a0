//! The gRPC face: parses what Envoy Gateway sends, calls the pure builders over a snapshot of the
//! cache, and answers. A bad extension object never fails a call: Envoy Gateway would abort the
//! whole xDS update on an error (unless failOpen), so the object's resource is left unchanged,
//! the problem is logged once per object and counted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::backend::{self, BadResource, Placement};
use super::metrics::XdsMetrics;
use super::pb::envoy_gateway_extension_server::EnvoyGatewayExtension;
use super::pb::*;
use super::translate;
use crate::cache::Cache;
use crate::core::authz;
use crate::core::envoy::{Backend, DEFAULT_CONNECT_TIMEOUT, fill_cluster, merge_translation, rewrite_route_host};

/// How many distinct bad objects are remembered for "log once" before the memory is reset.
const SEEN_CAPACITY: usize = 10_000;

/// Settings the hooks need.
#[derive(Clone)]
pub struct HookSettings {
    /// Cluster domain and local region.
    pub placement: Placement,
    /// Connect timeout for clusters that come without one.
    pub connect_timeout: Duration,
    /// Where Envoy reaches our authorization service (route policies).
    pub authz: crate::core::authz::AuthzAddress,
    /// Where route policies are read fresh before a translation is extended (kube-apiserver in a
    /// cluster); none: the cache is the source (local mode, tests).
    pub policy_source: Option<Arc<dyn PolicySource>>,
}

impl std::fmt::Debug for HookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSettings")
            .field("placement", &self.placement)
            .field("connect_timeout", &self.connect_timeout)
            .field("authz", &self.authz)
            .field("policy_source", &self.policy_source.as_ref().map(|_| "kube-apiserver"))
            .finish()
    }
}

/// Reads every TailscaleRoutePolicy now.
#[tonic::async_trait]
pub trait PolicySource: Send + Sync {
    /// All policies, as stored.
    async fn list(&self) -> Result<Vec<crate::api::TailscaleRoutePolicy>, String>;
}

#[tonic::async_trait]
impl PolicySource for kube::Api<crate::api::TailscaleRoutePolicy> {
    async fn list(&self) -> Result<Vec<crate::api::TailscaleRoutePolicy>, String> {
        kube::Api::list(self, &kube::api::ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| crate::errors::Chain(&e).to_string())
    }
}

/// How long PostTranslateModify waits for the policies before it uses the cache's.
const POLICY_LIST_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for HookSettings {
    fn default() -> Self {
        Self {
            placement: Placement::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            authz: crate::core::authz::AuthzAddress { host: "127.0.0.1".into(), port: 5005, tls: false },
            policy_source: None,
        }
    }
}

/// The `EnvoyGatewayExtension` implementation over the shared cache.
#[derive(Clone)]
pub struct ExtensionService {
    cache: Cache,
    settings: Arc<HookSettings>,
    metrics: XdsMetrics,
    seen: Arc<Mutex<HashSet<String>>>,
}

impl ExtensionService {
    /// A service reading `cache`.
    pub fn new(cache: Cache, settings: HookSettings, metrics: XdsMetrics) -> Self {
        Self { cache, settings: Arc::new(settings), metrics, seen: Arc::default() }
    }

    /// Brings the cache's route policies up to what kube-apiserver holds now (a consistent read:
    /// the change that made Envoy Gateway translate is in it). On failure the cache's stand, and
    /// the watch catches up.
    async fn refresh_policies(&self) {
        let Some(source) = &self.settings.policy_source else { return };
        match tokio::time::timeout(POLICY_LIST_TIMEOUT, source.list()).await {
            Ok(Ok(policies)) => {
                let resources = policies.into_iter().map(crate::core::Resource::RoutePolicy).collect();
                self.cache.reset(crate::core::Kind::RoutePolicy, resources);
            }
            Ok(Err(error)) => {
                self.metrics.error("PostTranslateModify", "policy_list");
                tracing::warn!(%error, "reading route policies failed; using the cache's");
            }
            Err(_) => {
                self.metrics.error("PostTranslateModify", "policy_list");
                tracing::warn!("reading route policies timed out; using the cache's");
            }
        }
    }

    /// Counts a bad resource, and logs it the first time this object (at this version) is seen.
    fn report(&self, hook: &'static str, bytes: &[u8], err: &BadResource) {
        self.metrics.error(hook, err.reason());
        // Clipped before it is kept or logged: the object's identity comes from the peer.
        let id = crate::errors::clip(&backend::identity(bytes)).into_owned();
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= SEEN_CAPACITY {
                seen.clear();
            }
            seen.insert(id.clone())
        };
        // A peer can send a new object in every call: at most one warning per interval.
        static THROTTLE: crate::errors::Throttle = crate::errors::Throttle::new();
        if let Some(left_out) = first.then(|| THROTTLE.allow()).flatten() {
            let error = err.to_string();
            let error = crate::errors::Clipped(&error);
            tracing::warn!(hook, object = %id, reason = err.reason(), %error, left_out, "extension resource left unchanged");
        } else {
            tracing::debug!(hook, object = %id, reason = err.reason(), "extension resource left unchanged (again)");
        }
    }

    /// Resolves the usable backends among `resources`, reporting the others. `cluster` is Envoy
    /// Gateway's name for the route rule's cluster, which finds the rule's backendRefs (their
    /// ports and weights) when the route is known.
    fn backends(&self, hook: &'static str, resources: &[ExtensionResource], cluster: Option<&str>) -> Vec<Backend> {
        let parsed: Vec<backend::BackendObject> = resources
            .iter()
            .filter_map(|r| match backend::parse_backend(&r.unstructured_bytes) {
                Ok(o) => Some(o),
                Err(e) => {
                    self.report(hook, &r.unstructured_bytes, &e);
                    None
                }
            })
            .collect();
        if parsed.is_empty() {
            return Vec::new();
        }
        let idx = self.cache.read();
        let rule = cluster.and_then(|c| idx.rule_backends(c));
        parsed.iter().map(|o| backend::resolve(&idx, o, &self.settings.placement, rule)).collect()
    }

    fn done(&self, hook: &'static str, start: Instant) {
        let elapsed = start.elapsed();
        self.metrics.observe(hook, elapsed);
        tracing::trace!(hook, elapsed_us = elapsed.as_micros() as u64, "hook served");
    }

    fn missing(&self, hook: &'static str) {
        self.metrics.error(hook, "missing_field");
        tracing::debug!(hook, "request without the resource to modify; answering with none (no change)");
    }
}

#[tonic::async_trait]
impl EnvoyGatewayExtension for ExtensionService {
    async fn post_route_modify(
        &self,
        request: Request<PostRouteModifyRequest>,
    ) -> Result<Response<PostRouteModifyResponse>, Status> {
        const HOOK: &str = "PostRouteModify";
        let start = Instant::now();
        let req = request.into_inner();
        let Some(mut route) = req.route else {
            self.missing(HOOK);
            self.done(HOOK, start);
            return Ok(Response::new(PostRouteModifyResponse { route: None }));
        };
        let resources = req.post_route_context.map(|c| c.extension_resources).unwrap_or_default();
        let backends = self.backends(HOOK, &resources, None);
        rewrite_route_host(&mut route, &backends);
        self.done(HOOK, start);
        Ok(Response::new(PostRouteModifyResponse { route: Some(route) }))
    }

    async fn post_virtual_host_modify(
        &self,
        request: Request<PostVirtualHostModifyRequest>,
    ) -> Result<Response<PostVirtualHostModifyResponse>, Status> {
        let start = Instant::now();
        let virtual_host = request.into_inner().virtual_host;
        self.done("PostVirtualHostModify", start);
        Ok(Response::new(PostVirtualHostModifyResponse { virtual_host }))
    }

    async fn post_http_listener_modify(
        &self,
        request: Request<PostHttpListenerModifyRequest>,
    ) -> Result<Response<PostHttpListenerModifyResponse>, Status> {
        let start = Instant::now();
        let listener = request.into_inner().listener;
        self.done("PostHTTPListenerModify", start);
        Ok(Response::new(PostHttpListenerModifyResponse { listener }))
    }

    async fn post_cluster_modify(
        &self,
        request: Request<PostClusterModifyRequest>,
    ) -> Result<Response<PostClusterModifyResponse>, Status> {
        const HOOK: &str = "PostClusterModify";
        let start = Instant::now();
        let req = request.into_inner();
        let Some(mut cluster) = req.cluster else {
            self.missing(HOOK);
            self.done(HOOK, start);
            return Ok(Response::new(PostClusterModifyResponse { cluster: None }));
        };
        let resources = req.post_cluster_context.map(|c| c.backend_extension_resources).unwrap_or_default();
        let backends = self.backends(HOOK, &resources, Some(&cluster.name));
        if !backends.is_empty() {
            fill_cluster(&mut cluster, &backends, self.settings.connect_timeout);
            tracing::debug!(
                hook = HOOK,
                cluster = %cluster.name,
                backends = backends.len(),
                upstreams = backends.iter().map(|b| b.upstreams.len()).sum::<usize>(),
                "cluster filled"
            );
        }
        self.done(HOOK, start);
        Ok(Response::new(PostClusterModifyResponse { cluster: Some(cluster) }))
    }

    async fn post_endpoints_modify(
        &self,
        request: Request<PostEndpointsModifyRequest>,
    ) -> Result<Response<PostEndpointsModifyResponse>, Status> {
        let start = Instant::now();
        let load_assignment = request.into_inner().load_assignment;
        self.done("PostEndpointsModify", start);
        Ok(Response::new(PostEndpointsModifyResponse { load_assignment }))
    }

    async fn post_translate_modify(
        &self,
        request: Request<PostTranslateModifyRequest>,
    ) -> Result<Response<PostTranslateModifyResponse>, Status> {
        const HOOK: &str = "PostTranslateModify";
        let start = Instant::now();
        let PostTranslateModifyRequest { clusters: mut cl, secrets, mut listeners, routes: mut rc, .. } =
            request.into_inner();
        self.refresh_policies().await;
        let plan = {
            let idx = self.cache.read();
            translate::plan(&idx, &self.settings.placement, self.settings.connect_timeout)
        };
        let (gateways, generated) = (plan.routes.len(), plan.clusters.len());
        merge_translation(plan, &mut cl, &mut rc);
        // Route policies: after the TailscaleGateways' routes are in, so they are held too.
        let policies = {
            let idx = self.cache.read();
            authz::plan(&idx, &rc, &self.settings.placement, self.settings.connect_timeout)
        };
        authz::enforce(&policies, &self.settings.authz, &mut listeners, &mut rc, &mut cl);
        tracing::debug!(
            hook = HOOK,
            gateways,
            generated_clusters = generated,
            clusters = cl.len(),
            policy_routes = policies.holders.len(),
            "translation extended"
        );
        self.done(HOOK, start);
        Ok(Response::new(PostTranslateModifyResponse { clusters: cl, secrets, listeners, routes: rc }))
    }
}
