//! The objects the endpoints controller owns (ServiceAccounts, Roles, RoleBindings, Services,
//! StatefulSets, config and state Secrets, data-plane ConfigMaps), kept in reflector stores so a reconcile reads them
//! from memory instead of sending a GET per kind and a LIST of Secrets per object.
//!
//! The stores are filled by watches on objects carrying [`builders::ENDPOINTS_LABEL`], started
//! with the controllers on every leadership term, and they trail the API server by the latency of
//! a watch event. A stale read costs at most one idempotent server-side apply, and the watch
//! event that brings the store up to date triggers the owner's next reconcile. The one decision a
//! stale read could get wrong, minting a second auth key for a replica, is checked against the
//! API server first (see the endpoints controller).

use std::fmt::Debug;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::builders;

/// Readers of the owned objects, one store per kind. Cloning is cheap (shared stores).
#[derive(Clone)]
pub struct OwnedStores {
    /// Proxy ServiceAccounts.
    pub service_accounts: Store<ServiceAccount>,
    /// Proxy Roles.
    pub roles: Store<Role>,
    /// Proxy RoleBindings.
    pub role_bindings: Store<RoleBinding>,
    /// Proxy Services.
    pub services: Store<Service>,
    /// Proxy StatefulSets.
    pub stateful_sets: Store<StatefulSet>,
    /// Per-replica config and state Secrets.
    pub secrets: Store<Secret>,
    /// The proxies' data-plane ConfigMaps.
    pub config_maps: Store<ConfigMap>,
}

/// The writing ends of [`OwnedStores`]: the reflectors' (or a test's).
pub struct OwnedWriters {
    /// Proxy ServiceAccounts.
    pub service_accounts: Writer<ServiceAccount>,
    /// Proxy Roles.
    pub roles: Writer<Role>,
    /// Proxy RoleBindings.
    pub role_bindings: Writer<RoleBinding>,
    /// Proxy Services.
    pub services: Writer<Service>,
    /// Proxy StatefulSets.
    pub stateful_sets: Writer<StatefulSet>,
    /// Per-replica config and state Secrets.
    pub secrets: Writer<Secret>,
    /// The proxies' data-plane ConfigMaps.
    pub config_maps: Writer<ConfigMap>,
}

/// Empty stores and their writers. The stores are ready once every writer has applied its
/// initial list (`InitDone`); with the writers dropped first they never are.
pub fn stores() -> (OwnedStores, OwnedWriters) {
    let (service_accounts, sa) = kube::runtime::reflector::store();
    let (roles, r) = kube::runtime::reflector::store();
    let (role_bindings, rb) = kube::runtime::reflector::store();
    let (services, svc) = kube::runtime::reflector::store();
    let (stateful_sets, sts) = kube::runtime::reflector::store();
    let (secrets, sec) = kube::runtime::reflector::store();
    let (config_maps, cm) = kube::runtime::reflector::store();
    (
        OwnedStores { service_accounts, roles, role_bindings, services, stateful_sets, secrets, config_maps },
        OwnedWriters {
            service_accounts: sa,
            roles: r,
            role_bindings: rb,
            services: svc,
            stateful_sets: sts,
            secrets: sec,
            config_maps: cm,
        },
    )
}

impl OwnedStores {
    /// Waits until every store holds its initial list. `false` when a writer went away first
    /// (the controllers stopped).
    pub async fn ready(&self) -> bool {
        self.service_accounts.wait_until_ready().await.is_ok()
            && self.roles.wait_until_ready().await.is_ok()
            && self.role_bindings.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && self.stateful_sets.wait_until_ready().await.is_ok()
            && self.secrets.wait_until_ready().await.is_ok()
            && self.config_maps.wait_until_ready().await.is_ok()
    }

    /// Whether every store holds its initial list now.
    pub fn is_ready(&self) -> bool {
        self.ready().now_or_never().unwrap_or(false)
    }

    /// The config and state Secrets of the TailscaleEndpoints `ns/name`.
    pub fn secrets_of(&self, ns: &str, name: &str) -> Vec<Arc<Secret>> {
        self.secrets.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.labels().get(builders::ENDPOINTS_LABEL).map(String::as_str) == Some(name)
        })
    }
}

/// Objects this replica deleted that the stores may still hold (their deletion's watch event has
/// not arrived): by UID, with when they were deleted. Reading a store through them makes a
/// deleted object absent at once, so nothing is decided from it (an auth key already spent, a
/// registration that is gone). Entries go when the store drops the object, or after
/// [`Tombstones::KEEP`].
#[derive(Debug, Default)]
pub struct Tombstones(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl Tombstones {
    /// Longest a UID is remembered: far longer than a watch event takes.
    pub const KEEP: std::time::Duration = std::time::Duration::from_secs(600);

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::time::Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that the object with `uid` was deleted.
    pub fn add(&self, uid: &str) {
        self.map().insert(uid.to_string(), std::time::Instant::now());
    }

    /// Whether `uid` was deleted (recently enough to matter).
    pub fn contains(&self, uid: &str) -> bool {
        self.map().get(uid).is_some_and(|at| at.elapsed() < Self::KEEP)
    }

    /// Forgets UIDs the Secret store no longer holds, and expired ones.
    pub fn prune(&self, secrets: &Store<Secret>) {
        // The common case, and the cheap one: nothing deleted lately.
        if self.map().is_empty() {
            return;
        }
        let held: std::collections::HashSet<String> =
            secrets.state().iter().filter_map(|s| s.metadata.uid.clone()).collect();
        self.map().retain(|uid, at| held.contains(uid) && at.elapsed() < Self::KEEP);
    }
}

/// The object `ns/name` in `store`, if the store has seen it.
pub fn get<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(ns))
}

/// The watch selector of every owned kind: objects built for some TailscaleEndpoints.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().labels(builders::ENDPOINTS_LABEL)
}

/// Starts a reflector of `api`'s objects matching `config` into `writer`, on a task of its own
/// so the store fills whether or not anyone reads the returned stream. The stream yields every
/// object the watch touches, after the store has it (the controller's owner triggers). Watch
/// errors are logged and retried with backoff. Aborting the handle stops the watch.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
) -> (tokio::task::JoinHandle<()>, UnboundedReceiverStream<Result<K, watcher::Error>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let events = watcher(api, config)
            .default_backoff()
            // Nothing reads managedFields back; they are often the largest part of an object.
            .modify(|o: &mut K| o.managed_fields_mut().clear())
            .reflect(writer)
            .touched_objects();
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(object) => {
                    if tx.send(Ok(object)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), error = %crate::errors::Chain(&error), "watching owned objects failed; retrying")
                }
            }
        }
    });
    (task, UnboundedReceiverStream::new(rx))
}

/// Replaces everything in `writer`'s store with `objects`, as a reflector's relist does, and
/// marks the store ready. For tests and benchmarks standing in for a reflector.
pub fn relist<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn tombstones_last_while_the_store_holds_the_object() {
        let (stores, mut w) = stores();
        let mut held = secret("prod", "web-1", Some("web"));
        held.metadata.uid = Some("u1".into());
        relist(&mut w.secrets, [held]);
        let deleted = Tombstones::default();
        deleted.add("u1");
        deleted.add("u2");
        deleted.prune(&stores.secrets);
        assert!(deleted.contains("u1"), "still in the store: still hidden");
        assert!(!deleted.contains("u2"), "the store no longer has it: forgotten");
        relist(&mut w.secrets, []);
        deleted.prune(&stores.secrets);
        assert!(!deleted.contains("u1"));
    }

    fn secret(ns: &str, name: &str, endpoints: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: endpoints.map(|e| [(builders::ENDPOINTS_LABEL.to_string(), e.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn ready_only_after_every_store_has_its_list() {
        let (stores, mut w) = stores();
        assert!(!stores.is_ready());
        relist(&mut w.service_accounts, []);
        relist(&mut w.roles, []);
        relist(&mut w.role_bindings, []);
        relist(&mut w.services, []);
        relist(&mut w.stateful_sets, []);
        assert!(!stores.is_ready(), "Secrets not listed yet");
        relist(&mut w.secrets, [secret("prod", "web-0", Some("web"))]);
        assert!(!stores.is_ready(), "ConfigMaps not listed yet");
        relist(&mut w.config_maps, []);
        assert!(stores.is_ready());
    }

    #[tokio::test]
    async fn dropped_writers_never_make_a_store_ready() {
        let (stores, writers) = stores();
        drop(writers);
        assert!(!stores.ready().await);
        assert!(!stores.is_ready());
    }

    #[test]
    fn secrets_of_one_endpoints_in_its_namespace() {
        let (stores, mut w) = stores();
        relist(
            &mut w.secrets,
            [
                secret("prod", "web-0", Some("web")),
                secret("prod", "web-0-config", Some("web")),
                secret("prod", "api-0", Some("api")),
                secret("dev", "web-0", Some("web")),
                secret("prod", "unlabelled", None),
            ],
        );
        let mut names: Vec<String> = stores.secrets_of("prod", "web").iter().map(|s| s.name_any()).collect();
        names.sort();
        assert_eq!(names, ["web-0", "web-0-config"]);
        assert!(get(&stores.secrets, "dev", "web-0").is_some());
        assert!(get(&stores.secrets, "dev", "web-0-config").is_none());
    }
}
