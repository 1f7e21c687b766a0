//! The background reconciler: three kube-runtime controllers (TailscaleTailnet,
//! TailscaleEndpoints, TailscaleServices) that run only while this replica holds the lease.
//!
//! Shaped like kube-rs controller-rs: one [`Context`] (Kubernetes client, shared cache, event
//! recorder, metrics, per-tailnet Tailscale API handles, config), and per controller a
//! `reconcile` + `error_policy`. Pure builders live in [`builders`], [`vip`] and [`provision`];
//! the controllers only read, compare, and write what differs, so a steady state sends no write.

#[cfg(test)]
mod controller_tests;
pub mod endpoints;
/// The pure builders of the proxies' objects, their conditions and the VIP service rules live in
/// the core crate; these names keep the reconciler's paths.
pub use crate::core::{conditions as status, provision, proxies as builders, vip};
pub mod metrics;
pub mod owned;
pub mod policies;
pub mod services;
pub mod tailnet;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod triggers;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use metrics::ReconcilerMetrics;

use crate::api::TailscaleTailnet;
use crate::cache::Cache;
use crate::tailscale::{ApiError, Device, TailscaleApi};

/// Field manager of every server-side apply we send.
pub const FIELD_MANAGER: &str = "tailscale-gateway";

/// Static settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace the server runs in (default namespace of OAuth Secrets).
    pub namespace: String,
    /// Default proxy image.
    pub proxy_image: String,
    /// Field manager of server-side apply ([`FIELD_MANAGER`]).
    pub field_manager: String,
    /// ID of this installation in shared VIP service registries.
    pub cluster_id: String,
    /// Longest a tailnet's device list is reused before it is fetched again.
    pub device_refresh: Duration,
    /// Requeue of a healthy object (periodic resync).
    pub requeue: Duration,
    /// Cluster DNS domain and Envoy Gateway's namespace, for the addresses proxies forward to.
    pub placement: crate::core::dataplane::Placement,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: "tailscale-gateway".into(),
            proxy_image: "tailscale/tailscale:stable".into(),
            field_manager: FIELD_MANAGER.into(),
            cluster_id: "default".into(),
            device_refresh: Duration::from_secs(60),
            requeue: Duration::from_secs(300),
            placement: crate::core::dataplane::Placement::default(),
        }
    }
}

/// OAuth client credentials read from a TailscaleTailnet's Secret. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthCredentials {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`. Never log it.
    pub client_secret: String,
}

impl Debug for OAuthCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthCredentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// Builds the Tailscale API client of a tailnet. The server implements it with the HTTPS
/// client; tests and benchmarks with in-memory fakes.
pub trait ApiFactory: Send + Sync {
    /// A client for `tailnet` (its `apiURL` and tailnet name) authenticating with `credentials`.
    fn build(
        &self,
        tailnet: &TailscaleTailnet,
        credentials: OAuthCredentials,
    ) -> Result<Arc<dyn TailscaleApi>, ApiError>;
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Tailscale API call failed.
    #[error(transparent)]
    Tailscale(#[from] ApiError),
    /// The TailscaleTailnet named by an object does not exist (yet).
    #[error("TailscaleTailnet {0:?} not found")]
    TailnetNotFound(String),
    /// The OAuth Secret is missing or incomplete.
    #[error("OAuth secret {secret}: {reason}")]
    Credentials {
        /// `namespace/name` of the Secret.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object cannot be reconciled as written.
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The stores of owned objects have not received their initial lists (yet).
    #[error(
        "the caches of proxy objects (ServiceAccounts, Roles, RoleBindings, Services, StatefulSets, Secrets, ConfigMaps) have not synced"
    )]
    NotSynced,
    /// Encoding an object failed.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// Adding or removing our finalizer failed, or the wrapped reconcile failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short class for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Tailscale(e) if e.is_transient() => "tailscale_transient",
            Error::Tailscale(_) => "tailscale",
            Error::TailnetNotFound(_) => "tailnet_not_found",
            Error::Credentials { .. } => "credentials",
            Error::Invalid(_) => "invalid",
            Error::NotSynced => "not_synced",
            Error::Encode(_) => "encode",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
        }
    }

    fn from_finalizer(e: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(e))
    }
}

/// A tailnet's cached device list.
struct DeviceList {
    fetched: Instant,
    devices: Arc<Vec<Device>>,
}

/// One tailnet's Tailscale API client plus its device list, fetched at most once per refresh
/// interval however many objects ask for it.
pub struct TailnetHandle {
    /// TailscaleTailnet name.
    pub name: String,
    /// The API client.
    pub api: Arc<dyn TailscaleApi>,
    fingerprint: u64,
    devices: tokio::sync::Mutex<Option<DeviceList>>,
}

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The shared cache (selections, devices, tailnets).
    pub cache: Cache,
    /// Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<ReconcilerMetrics>,
    /// Settings.
    pub config: Config,
    factory: Arc<dyn ApiFactory>,
    /// Stores of the endpoints controller's owned objects, replaced on every leadership term.
    owned: RwLock<owned::OwnedStores>,
    /// Secrets deleted by this replica that the stores may still show.
    pub(crate) deleted: owned::Tombstones,
    tailnets: Mutex<HashMap<String, Arc<TailnetHandle>>>,
    failures: Mutex<HashMap<(&'static str, String), u32>>,
}

impl Context {
    /// A context. `instance` names this replica in Events (usually the pod name).
    pub fn new(
        client: Client,
        cache: Cache,
        factory: Arc<dyn ApiFactory>,
        metrics: Arc<ReconcilerMetrics>,
        config: Config,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: config.field_manager.clone(), instance });
        Self {
            client,
            cache,
            recorder,
            metrics,
            config,
            factory,
            // Never ready until the controllers (or a test) install stores with live writers.
            owned: RwLock::new(owned::stores().0),
            deleted: owned::Tombstones::default(),
            tailnets: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The stores of owned objects in use.
    pub fn owned(&self) -> owned::OwnedStores {
        self.owned.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes reconciles read owned objects from `stores` (the controllers do this when they
    /// start; tests and benchmarks with stores they fill themselves).
    pub fn set_owned(&self, stores: owned::OwnedStores) {
        *self.owned.write().unwrap_or_else(|p| p.into_inner()) = stores;
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TailnetHandle>>> {
        self.tailnets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The API handle of the tailnet named `name`, connecting on first use.
    pub async fn tailnet_api(&self, name: &str) -> Result<Arc<TailnetHandle>, Error> {
        if let Some(h) = self.handles().get(name) {
            return Ok(h.clone());
        }
        let tailnet =
            self.cache.read().tailnet(name).cloned().ok_or_else(|| Error::TailnetNotFound(name.to_string()))?;
        self.connect(&tailnet).await
    }

    /// Reads the tailnet's OAuth Secret and returns its API handle, rebuilding it when the
    /// credentials, URL or tailnet changed.
    pub async fn connect(&self, tailnet: &TailscaleTailnet) -> Result<Arc<TailnetHandle>, Error> {
        let name = tailnet.name_any();
        let ns = tailnet.spec.oauth_secret_ref.namespace.clone().unwrap_or_else(|| self.config.namespace.clone());
        let secret_name = &tailnet.spec.oauth_secret_ref.name;
        let where_ = format!("{ns}/{secret_name}");
        let secret = Api::<Secret>::namespaced(self.client.clone(), &ns)
            .get_opt(secret_name)
            .await?
            .ok_or_else(|| Error::Credentials { secret: where_.clone(), reason: "not found".into() })?;
        let field = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::Credentials { secret: where_.clone(), reason: format!("missing key {k}") })
        };
        let credentials = OAuthCredentials { client_id: field("client_id")?, client_secret: field("client_secret")? };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&credentials.client_id, &credentials.client_secret, &tailnet.spec.api_url, &tailnet.spec.tailnet)
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        if let Some(h) = self.handles().get(&name)
            && h.fingerprint == fingerprint
        {
            return Ok(h.clone());
        }
        let api = self.factory.build(tailnet, credentials)?;
        let handle =
            Arc::new(TailnetHandle { name: name.clone(), api, fingerprint, devices: tokio::sync::Mutex::new(None) });
        tracing::info!(tailnet = %name, "connected Tailscale API client");
        self.handles().insert(name, handle.clone());
        Ok(handle)
    }

    /// Forgets a tailnet's handle (the TailscaleTailnet is gone).
    pub fn forget_tailnet(&self, name: &str) {
        self.handles().remove(name);
    }

    /// The tailnet's devices, fetched at most once per `config.device_refresh` and pushed into the
    /// cache for the aggregated API. On a transient error the last list is reused.
    pub async fn devices(&self, handle: &TailnetHandle) -> Result<Arc<Vec<Device>>, ApiError> {
        self.devices_max_age(handle, self.config.device_refresh).await
    }

    /// Like [`Context::devices`] with an explicit maximum age.
    pub async fn devices_max_age(
        &self,
        handle: &TailnetHandle,
        max_age: Duration,
    ) -> Result<Arc<Vec<Device>>, ApiError> {
        let mut slot = handle.devices.lock().await;
        if let Some(list) = slot.as_ref()
            && list.fetched.elapsed() < max_age
        {
            return Ok(list.devices.clone());
        }
        match handle.api.list_devices().await {
            Ok(devices) => {
                let devices = Arc::new(devices);
                self.cache.set_live_devices(&handle.name, devices.iter().map(Device::to_live).collect());
                *slot = Some(DeviceList { fetched: Instant::now(), devices: devices.clone() });
                Ok(devices)
            }
            Err(e) if e.is_transient() && slot.is_some() => {
                tracing::warn!(tailnet = %handle.name, error = %crate::errors::Chain(&e), "device list refresh failed; using the last one");
                Ok(slot.as_ref().map(|l| l.devices.clone()).unwrap_or_default())
            }
            Err(e) => Err(e),
        }
    }

    /// Drops deleted devices from the cached list (and the shared cache) without a refetch.
    pub async fn forget_devices(&self, handle: &TailnetHandle, node_ids: &[String]) {
        let mut slot = handle.devices.lock().await;
        if let Some(list) = slot.as_mut() {
            let kept: Vec<Device> = list.devices.iter().filter(|d| !node_ids.contains(&d.node_id)).cloned().collect();
            self.cache.set_live_devices(&handle.name, kept.iter().map(Device::to_live).collect());
            list.devices = Arc::new(kept);
        }
    }

    /// Publishes a Kubernetes Event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(object = %obj.meta().name.clone().unwrap_or_default(), error = %crate::errors::Chain(&e), "publishing event failed");
        }
    }

    /// Backoff before retrying a failed object: 5 s doubling up to 5 min, with ±20 % jitter.
    pub fn backoff(&self, controller: &'static str, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry((controller, key)).or_insert(0);
        let base = Duration::from_secs(5).saturating_mul(1u32 << (*n).min(6)).min(Duration::from_secs(300));
        *n = n.saturating_add(1);
        base.mul_f64(0.8 + fastrand::f64() * 0.4)
    }

    fn reset_backoff(&self, controller: &'static str, key: String) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&(controller, key));
    }
}

/// Server-side applies `desired` unless `observed` already contains it. Returns the object as
/// the server stored it when it wrote, `None` when nothing needed writing.
pub(crate) async fn ensure<K>(
    ctx: &Context,
    api: &Api<K>,
    observed: Option<&K>,
    desired: &K,
) -> Result<Option<K>, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    if let Some(obs) = observed
        && status::contains(&serde_json::to_value(obs)?, &serde_json::to_value(desired)?)
    {
        return Ok(None);
    }
    let name = desired.meta().name.clone().ok_or_else(|| Error::Invalid("object without a name".into()))?;
    let params = PatchParams::apply(&ctx.config.field_manager).force();
    let stored = api.patch(&name, &params, &Patch::Apply(desired)).await?;
    tracing::debug!(name = %name, "applied");
    Ok(Some(stored))
}

/// Server-side applies `status` on the status subresource when it differs from `observed`.
pub(crate) async fn apply_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    observed: Option<&S>,
    status: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if observed == Some(status) {
        return Ok(false);
    }
    let name = obj.meta().name.clone().ok_or_else(|| Error::Invalid("object without a name".into()))?;
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&name, &PatchParams::apply(&ctx.config.field_manager).force(), &Patch::Apply(&body)).await?;
    Ok(true)
}

/// Deletes an object, treating "already gone" as success. Whether this call deleted it.
pub(crate) async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Runs one reconcile with metrics and backoff bookkeeping.
pub(crate) async fn instrumented<F>(
    ctx: &Context,
    controller: &'static str,
    key: String,
    fut: F,
) -> Result<Action, Error>
where
    F: Future<Output = Result<Action, Error>>,
{
    let timer = ctx.metrics.start(controller);
    let result = fut.await;
    match &result {
        Ok(_) => ctx.reset_backoff(controller, key),
        Err(e) => {
            timer.fail(e.metric_label());
            tracing::warn!(controller, object = %key, error = %crate::errors::Chain(e), "reconcile failed");
        }
    }
    result
}

/// Runs every controller while `is_leader` is true, stops them when leadership is lost, and
/// returns once `stop` is cancelled. Only the lease holder reconciles; every replica keeps
/// serving from the cache.
pub async fn run(ctx: Arc<Context>, mut is_leader: watch::Receiver<bool>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = is_leader.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("leader: starting controllers");
        // One token per term as leader: cancelled when leadership is lost or on shutdown.
        let term = CancellationToken::new();
        let controllers = tokio::spawn(run_controllers(ctx.clone(), term.clone()));
        let done = tokio::select! {
            _ = stop.cancelled() => true,
            r = is_leader.wait_for(|l| !*l) => r.is_err(),
        };
        tracing::info!(shutdown = done, "stopping controllers");
        term.cancel();
        if let Err(e) = controllers.await {
            tracing::error!(error = %crate::errors::Chain(&e), "controllers task failed");
        }
        if done {
            return;
        }
    }
}

async fn run_controllers(ctx: Arc<Context>, stop: CancellationToken) {
    use crate::api::{TailscaleEndpoints, TailscaleServices};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::runtime::{Controller, controller, watcher};

    let client = ctx.client.clone();
    let (ep_tx, ep_rx) = tokio::sync::mpsc::unbounded_channel();
    let (svc_tx, svc_rx) = tokio::sync::mpsc::unbounded_channel();
    let triggers = tokio::spawn(triggers::run(ctx.cache.clone(), ep_tx, svc_tx, stop.clone()));
    let cfg = controller::Config::default().debounce(Duration::from_millis(500)).concurrency(8);

    // Owned objects: one reflector per kind fills the store reconciles read, and its touched
    // objects trigger their owners (so an edit or deletion of a proxy object is repaired).
    let (stores, w) = owned::stores();
    let sel = owned::watch_config;
    let (sa_task, sa) = owned::reflect(Api::<ServiceAccount>::all(client.clone()), sel(), w.service_accounts);
    let (role_task, roles) = owned::reflect(Api::<Role>::all(client.clone()), sel(), w.roles);
    let (rb_task, rbs) = owned::reflect(Api::<RoleBinding>::all(client.clone()), sel(), w.role_bindings);
    let (svc_task, svcs) = owned::reflect(Api::<Service>::all(client.clone()), sel(), w.services);
    let (sts_task, stss) = owned::reflect(Api::<StatefulSet>::all(client.clone()), sel(), w.stateful_sets);
    let (secret_task, secrets) = owned::reflect(Api::<Secret>::all(client.clone()), sel(), w.secrets);
    let (cm_task, config_maps) = owned::reflect(Api::<ConfigMap>::all(client.clone()), sel(), w.config_maps);
    // Aborted when this function ends, however it ends.
    let _reflectors = AbortOnDrop(vec![sa_task, role_task, rb_task, svc_task, sts_task, secret_task, cm_task]);
    ctx.set_owned(stores.clone());

    let tailnets = Controller::new(Api::<TailscaleTailnet>::all(client.clone()), watcher::Config::default())
        .with_config(cfg.clone())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(tailnet::reconcile, tailnet::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("tailnet", r) });
    let endpoints = {
        let (ctx, client, cfg, stop) = (ctx.clone(), client.clone(), cfg.clone(), stop.clone());
        async move {
            if !owned_synced(&stores, &stop).await {
                return;
            }
            Controller::new(Api::<TailscaleEndpoints>::all(client), watcher::Config::default())
                .owns_stream(sa)
                .owns_stream(roles)
                .owns_stream(rbs)
                .owns_stream(svcs)
                .owns_stream(stss)
                .owns_stream(secrets)
                .owns_stream(config_maps)
                .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(ep_rx))
                .with_config(cfg)
                .graceful_shutdown_on(stop.cancelled_owned())
                .run(endpoints::reconcile, endpoints::error_policy, ctx)
                .for_each(|r| async move { log_result("endpoints", r) })
                .await
        }
    };
    let policy_status = policies::run(ctx.clone(), stop.clone());
    let services = Controller::new(Api::<TailscaleServices>::all(client.clone()), watcher::Config::default())
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(svc_rx))
        .with_config(cfg)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(services::reconcile, services::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("services", r) });
    tokio::join!(tailnets, endpoints, services, policy_status);
    triggers.abort();
}

/// Tasks aborted when this is dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Waits for the owned-object stores' initial lists, saying every 30 s what it waits for. `false`
/// when `stop` came first.
async fn owned_synced(stores: &owned::OwnedStores, stop: &CancellationToken) -> bool {
    let started = Instant::now();
    let ready = stores.ready();
    tokio::pin!(ready);
    loop {
        tokio::select! {
            ok = &mut ready => {
                tracing::info!(after = ?started.elapsed(), "proxy object caches synced; starting the endpoints controller");
                return ok;
            }
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_secs(30)) => tracing::warn!(
                waited = ?started.elapsed(),
                "endpoints controller waits for its caches: can this server list and watch labelled \
                 ServiceAccounts, Roles, RoleBindings, Services, StatefulSets and Secrets?"
            ),
        }
    }
}

fn log_result<K: Resource, E: std::error::Error + 'static>(
    controller: &'static str,
    r: Result<(kube::runtime::reflector::ObjectRef<K>, Action), E>,
) {
    match r {
        Ok((obj, _)) => tracing::trace!(controller, object = %obj, "reconciled"),
        Err(e) => tracing::debug!(controller, error = %crate::errors::Chain(&e), "controller error"),
    }
}

/// Builds real HTTPS clients ([`crate::tailscale::client::Client`]) from a TailscaleTailnet's
/// `apiURL` and tailnet name and the credentials read from its OAuth Secret.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpsApiFactory;

impl ApiFactory for HttpsApiFactory {
    fn build(
        &self,
        tailnet: &TailscaleTailnet,
        credentials: OAuthCredentials,
    ) -> Result<Arc<dyn TailscaleApi>, ApiError> {
        let mut cfg = crate::tailscale::client::ClientConfig::new(
            tailnet.spec.tailnet.clone().unwrap_or_else(|| "-".into()),
            credentials.client_id,
            credentials.client_secret,
        );
        if let Some(url) = &tailnet.spec.api_url {
            cfg.base_url = url.trim_end_matches('/').to_string();
        }
        let client = crate::tailscale::client::Client::new(cfg).map_err(|e| ApiError::Transport(e.to_string()))?;
        Ok(Arc::new(client))
    }
}
