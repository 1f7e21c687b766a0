//! The shared cache: one in-memory [`Index`] of our objects, fed by kube-runtime reflectors in a
//! cluster or by files in local mode, and read concurrently by every face. Every change bumps one
//! revision, published on a `tokio::sync::watch` channel so readers are pushed updates instead of
//! polling. The index itself (objects, links, views, event log) is the core's, pure.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

pub use crate::core::index::*;
use crate::core::routes::RouteKind;
use crate::core::views::LiveDevice;
use crate::core::{Kind, ObjectKey, Resource};

/// Cheap-to-clone handle on the shared index.
#[derive(Clone)]
pub struct Cache {
    index: Arc<RwLock<Index>>,
    revision: Arc<watch::Sender<u64>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_LOG)
    }
}

impl Cache {
    /// An empty cache keeping `event_log` view changes for watch resumption.
    pub fn new(event_log: usize) -> Self {
        let index = Index::with_event_log(event_log);
        Self { index: Arc::new(RwLock::new(index)), revision: Arc::new(watch::channel(0).0) }
    }

    /// Read access. Hold the guard briefly: copy out `Arc`s, then serialize outside the lock.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, f: impl FnOnce(&mut Index)) {
        let revision = {
            let mut guard: RwLockWriteGuard<'_, Index> =
                self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard);
            guard.revision()
        };
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    /// Pushed the current revision on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Inserts or replaces an object.
    pub fn apply(&self, res: Resource) {
        self.write(|idx| idx.apply(res));
    }

    /// Inserts or replaces an HTTPRoute or GRPCRoute (only its backendRefs of our kinds are kept).
    pub fn apply_route(&self, kind: RouteKind, route: &serde_json::Value) {
        self.write(|idx| idx.apply_route(kind, route));
    }

    /// Records the IPs of one of our ingress-capable proxy pods (none: it is gone).
    pub fn set_ingress_pod(&self, pod: ObjectKey, ips: Vec<std::net::IpAddr>) {
        self.write(|idx| idx.set_ingress_pod(pod, ips));
    }

    /// Replaces every ingress proxy pod (a relist).
    pub fn reset_ingress_pods(&self, pods: std::collections::BTreeMap<ObjectKey, Vec<std::net::IpAddr>>) {
        self.write(|idx| idx.reset_ingress_pods(pods));
    }

    /// Removes a route.
    pub fn delete_route(&self, kind: RouteKind, key: &ObjectKey) {
        self.write(|idx| idx.delete_route(kind, key));
    }

    /// Replaces every route of `kind` (a relist, or a reload of the local folder).
    pub fn reset_routes(&self, kind: RouteKind, routes: &[serde_json::Value]) {
        self.write(|idx| idx.reset_routes(kind, routes));
    }

    /// Removes an object.
    pub fn delete(&self, kind: Kind, key: &ObjectKey) {
        self.write(|idx| idx.delete(kind, key));
    }

    /// Replaces every object of `kind` with `objects` (a reflector relist, or a reload of the
    /// local directory) and marks the kind synced.
    pub fn reset(&self, kind: Kind, objects: Vec<Resource>) {
        self.write(|idx| idx.reset(kind, objects));
    }

    /// Logs changes of our four kinds too, for watchers of them (local mode serves them). Until
    /// now they were not logged, so a watch cannot resume from before this point.
    pub fn log_resource_events(&self) {
        self.write(|idx| idx.log_resource_events());
    }

    /// Marks a kind as loaded (for `/readyz`).
    pub fn mark_synced(&self, kind: Kind) {
        self.write(|idx| idx.mark_synced(kind));
    }

    /// Replaces the live device data of a tailnet (written by the reconciler).
    pub fn set_live_devices(&self, tailnet: &str, devices: Vec<LiveDevice>) {
        self.write(|idx| idx.set_live_devices(tailnet, devices));
    }

    /// Whether every kind has completed its initial load.
    pub fn synced(&self) -> bool {
        self.read().synced()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::API_VERSION;
    use crate::core::validate::ClusterView;

    #[test]
    fn memos_are_computed_once_and_shared_by_copies() {
        let memo = Memo::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let init = || {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            7u32
        };
        assert_eq!(*memo.get_or_init(init), 7);
        assert_eq!(*memo.clone().get_or_init(init), 7);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Another type is computed afresh, never mistaken for the stored one.
        assert_eq!(*memo.get_or_init(|| "other"), "other");
        assert_eq!(*memo.get_or_init(init), 7);
    }

    #[test]
    fn entries_share_their_memo_with_their_event_until_they_change() {
        let cache = Cache::default();
        cache.apply(endpoints("ns", "ep", json!({}), &["a"]));
        let key = ObjectKey::new("ns", "a");
        let (stored, event) = {
            let idx = cache.read();
            (idx.device(&key), idx.events_since(0).ok().and_then(|e| e.last().cloned()))
        };
        let (Some(stored), Some(event)) = (stored, event) else { panic!("device and its event") };
        assert_eq!(*stored.memo.get_or_init(|| 1u8), 1);
        assert_eq!(*event.memo.get_or_init(|| 2u8), 1, "the event sees the entry's memo");
        cache.apply(endpoints("ns", "ep", json!({"x": "y"}), &["a"]));
        let changed = cache.read().device(&key).map(|s| *s.memo.get_or_init(|| 3u8));
        assert_eq!(changed, Some(3), "a changed object gets a fresh memo");
    }

    fn endpoints(ns: &str, name: &str, labels: serde_json::Value, hosts: &[&str]) -> Resource {
        let devices: Vec<_> =
            hosts.iter().map(|h| json!({"hostname": h, "nodeID": format!("n-{h}"), "online": true})).collect();
        Resource::from_value(json!({"apiVersion": API_VERSION, "kind": "TailscaleEndpoints",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"tailnet": "t"}, "status": {"devices": devices}}))
        .expect("building the TailscaleEndpoints resource")
    }

    fn services(ns: &str, name: &str, match_labels: serde_json::Value, vip: Option<&str>) -> Resource {
        Resource::from_value(json!({"apiVersion": API_VERSION, "kind": "TailscaleServices",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"matchLabels": match_labels}, "vipService": {"name": vip, "ports": ["tcp:80"]}}}))
        .expect("building the TailscaleServices resource")
    }

    #[test]
    fn selection_follows_label_changes_both_ways() {
        let cache = Cache::new(100);
        let svc = ObjectKey::new("default", "web");
        let ep = ObjectKey::new("default", "east");
        cache.apply(services("default", "web", json!({"tier": "web"}), None));
        cache.apply(endpoints("default", "east", json!({"tier": "web"}), &["east-0", "east-1"]));
        cache.apply(endpoints("other", "east", json!({"tier": "web"}), &["o-0"]));
        {
            let idx = cache.read();
            assert_eq!(idx.selected_endpoints(&svc).collect::<Vec<_>>(), vec![&ep]);
            assert_eq!(idx.selecting_services(&ep).collect::<Vec<_>>(), vec![&svc]);
            let sel = idx.selection(&svc).unwrap_or_else(|| panic!("no selection"));
            assert_eq!(sel.object.machine_count(), 2);
            assert_eq!(sel.object.healthy_count(), 2);
            assert_eq!(idx.devices(Some("default")).len(), 2);
            assert_eq!(idx.devices(None).len(), 3);
        }
        cache.apply(endpoints("default", "east", json!({"tier": "db"}), &["east-0", "east-1"]));
        let idx = cache.read();
        assert_eq!(idx.selected_endpoints(&svc).count(), 0);
        assert_eq!(idx.selecting_services(&ep).count(), 0);
        assert_eq!(idx.selection(&svc).map(|s| s.object.machine_count()), Some(0));
    }

    #[test]
    fn vip_claims_and_cluster_view() {
        let cache = Cache::new(100);
        cache.apply(services("a", "web", json!({"x": "y"}), None));
        cache.apply(services("b", "web2", json!({"x": "y"}), Some("svc:web")));
        let idx = cache.read();
        assert_eq!(idx.vip_claimants("svc:web"), vec![ObjectKey::new("a", "web"), ObjectKey::new("b", "web2")]);
        drop(idx);
        cache.delete(Kind::Services, &ObjectKey::new("a", "web"));
        assert_eq!(cache.read().vip_claimants("svc:web"), vec![ObjectKey::new("b", "web2")]);
    }

    #[test]
    fn events_resume_and_gone() {
        let cache = Cache::new(3);
        let rx = cache.subscribe();
        cache.apply(endpoints("default", "e", json!({}), &["e-0"]));
        assert!(rx.has_changed().unwrap_or(false));
        let r1 = cache.read().revision();
        cache.apply(endpoints("default", "e", json!({}), &["e-0", "e-1"]));
        let events = cache.read().events_since(r1).unwrap_or_default();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventType::Added);
        // Unchanged input: no new revision, no event.
        let before = cache.read().revision();
        cache.apply(endpoints("default", "e", json!({}), &["e-0", "e-1"]));
        assert_eq!(cache.read().revision(), before);
        cache.delete(Kind::Endpoints, &ObjectKey::new("default", "e"));
        let idx = cache.read();
        let tail = idx.events_since(before).unwrap_or_default();
        assert_eq!(tail.iter().filter(|e| e.kind == EventType::Deleted).count(), 2);
        assert!(matches!(idx.events_since(0), Err(Gone { .. })));
    }

    #[test]
    fn resource_changes_are_logged_only_when_asked() {
        let cache = Cache::new(100);
        cache.apply(services("default", "web", json!({"app": "web"}), None));
        let logged = cache.read().events_since(0).unwrap_or_default();
        assert!(logged.iter().all(|e| e.view_kind() == ViewKind::Selection), "not logged by default: {logged:?}");
        let before = cache.read().revision();
        cache.log_resource_events();
        assert!(cache.read().events_since(before.saturating_sub(1)).is_err(), "cannot resume from before");
        cache.apply(services("default", "web", json!({"app": "api"}), None));
        cache.apply(endpoints("default", "e", json!({"app": "api"}), &["e-0"]));
        cache.delete(Kind::Services, &ObjectKey::new("default", "web"));
        let idx = cache.read();
        let events = idx.events_since(before).unwrap_or_default();
        let kinds: Vec<(ViewKind, EventType)> = events.iter().map(|e| (e.view_kind(), e.kind)).collect();
        assert_eq!(kinds[0], (ViewKind::Services, EventType::Modified));
        assert!(kinds.contains(&(ViewKind::Endpoints, EventType::Added)), "{kinds:?}");
        assert!(kinds.contains(&(ViewKind::Device, EventType::Added)), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&(ViewKind::Selection, EventType::Deleted)), "{kinds:?}");
        assert!(kinds.contains(&(ViewKind::Services, EventType::Deleted)), "{kinds:?}");
        // Entries carry the revision of their last event.
        let e = idx.endpoints_entry(&ObjectKey::new("default", "e")).unwrap_or_else(|| panic!("missing"));
        let added = events.iter().find(|ev| ev.view_kind() == ViewKind::Endpoints).map(|ev| ev.revision);
        assert_eq!(Some(e.revision), added);
        assert_eq!(idx.endpoints_entries(Some("other")).len(), 0);
        assert_eq!(idx.services_entries(None).len(), 0);
    }

    #[test]
    fn live_devices_overlay_status() {
        let cache = Cache::new(100);
        cache.apply(endpoints("default", "e", json!({}), &["e-0"]));
        cache.set_live_devices(
            "t",
            vec![LiveDevice {
                node_id: "n-e-0".into(),
                hostname: "e-0".into(),
                addresses: vec!["100.64.0.1".into()],
                connected_to_control: false,
                os: Some("linux".into()),
                ..LiveDevice::default()
            }],
        );
        let d = cache.read().device(&ObjectKey::new("default", "e-0")).unwrap_or_else(|| panic!("missing"));
        assert_eq!(d.object.addresses, vec!["100.64.0.1".to_string()]);
        assert!(!d.object.online);
        assert_eq!(d.object.os.as_deref(), Some("linux"));
    }

    #[test]
    fn reset_replaces_a_kind_and_marks_sync() {
        let cache = Cache::new(100);
        assert!(!cache.synced());
        cache.apply(endpoints("default", "old", json!({}), &[]));
        cache.reset(Kind::Endpoints, vec![endpoints("default", "new", json!({}), &[])]);
        for k in [Kind::Tailnet, Kind::Services, Kind::RoutePolicy] {
            cache.reset(k, Vec::new());
        }
        // Becoming synced notifies subscribers even when no object changed (readiness waits on it).
        let mut rx = cache.subscribe();
        rx.borrow_and_update();
        cache.mark_synced(Kind::Gateway);
        assert!(rx.has_changed().unwrap_or(false));
        assert!(cache.synced());
        let idx = cache.read();
        assert!(idx.endpoints(&ObjectKey::new("default", "old")).is_none());
        assert!(idx.endpoints(&ObjectKey::new("default", "new")).is_some());
    }
}
