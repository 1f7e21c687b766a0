//! The index of our objects behind the shared cache: the objects themselves, which
//! TailscaleEndpoints each TailscaleServices selects (and the reverse), which VIP service names are
//! claimed by whom, the rule backends of routes, the device and selection views of the aggregated
//! API, and a bounded log of view changes that watchers resume from. Maintained incrementally as
//! objects change; plain data, no locks and no I/O (the main crate's `cache::Cache` shares it
//! between tasks and publishes its revision).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use crate::api::{TailscaleEndpoints, TailscaleGateway, TailscaleRoutePolicy, TailscaleServices, TailscaleTailnet};
use crate::dataplane;
use crate::routes::{self, RouteBackend, RouteKind};
use crate::selector::Selector;
use crate::validate::ClusterView;
use crate::views::{self, Device, LiveDevice, Selection};
use crate::{FieldPath, Kind, ObjectKey, Resource, resource::vip_service_name};

/// How many view changes the log keeps for watch resumption by default.
pub const DEFAULT_EVENT_LOG: usize = 50_000;

/// Which derived view an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewKind {
    /// `tailscaledevices`.
    Device,
    /// `selectedendpoints`.
    Selection,
    /// A TailscaleTailnet (logged only with [`Cache::log_resource_events`]).
    Tailnet,
    /// A TailscaleEndpoints (likewise).
    Endpoints,
    /// A TailscaleServices (likewise).
    Services,
    /// A TailscaleGateway (likewise).
    Gateway,
    /// A TailscaleRoutePolicy (likewise).
    RoutePolicy,
}

/// How a view object changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// New object.
    Added,
    /// Changed object.
    Modified,
    /// Removed object (the event carries its last state).
    Deleted,
}

/// A view object with the revision it last changed at.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewObject {
    /// A device.
    Device(Arc<Device>),
    /// A selection.
    Selection(Arc<Selection>),
    /// A TailscaleTailnet (logged only with [`Cache::log_resource_events`]).
    Tailnet(Arc<TailscaleTailnet>),
    /// A TailscaleEndpoints (likewise).
    Endpoints(Arc<TailscaleEndpoints>),
    /// A TailscaleServices (likewise).
    Services(Arc<TailscaleServices>),
    /// A TailscaleGateway (likewise).
    Gateway(Arc<TailscaleGateway>),
    /// A TailscaleRoutePolicy (likewise).
    RoutePolicy(Arc<TailscaleRoutePolicy>),
}

/// One change of a view object.
#[derive(Clone, Debug)]
pub struct Event {
    /// Revision of the change; also the object's `resourceVersion`.
    pub revision: u64,
    /// Added, modified or deleted.
    pub kind: EventType,
    /// The object after the change (before it, for deletions).
    pub object: ViewObject,
    /// Memo of the object at this revision, shared with its [`Stored`] entry (watchers render
    /// each change once between them).
    pub memo: Memo,
}

impl Event {
    /// The view kind of the event's object.
    pub fn view_kind(&self) -> ViewKind {
        match self.object {
            ViewObject::Device(_) => ViewKind::Device,
            ViewObject::Selection(_) => ViewKind::Selection,
            ViewObject::Tailnet(_) => ViewKind::Tailnet,
            ViewObject::Endpoints(_) => ViewKind::Endpoints,
            ViewObject::Services(_) => ViewKind::Services,
            ViewObject::Gateway(_) => ViewKind::Gateway,
            ViewObject::RoutePolicy(_) => ViewKind::RoutePolicy,
        }
    }
}

/// A revision older than the event log reaches.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too old resource version: {requested} (oldest available {oldest})")]
pub struct Gone {
    /// What was asked for.
    pub requested: u64,
    /// The oldest revision a watch can still resume from.
    pub oldest: u64,
}

/// Something a reader derives from one object at one revision (the aggregated API keeps its
/// serialized forms here), computed on first use, shared by every copy of the entry, and dropped
/// with it. The cache never looks inside.
#[derive(Clone, Default)]
pub struct Memo(Arc<OnceLock<Arc<dyn Any + Send + Sync>>>);

impl Memo {
    /// The memoized value, initialized by `init` on first use. A memo holds one type; asking
    /// for another one computes it afresh each time.
    pub fn get_or_init<R: Any + Send + Sync>(&self, init: impl Fn() -> R) -> Arc<R> {
        let value = self.0.get_or_init(|| Arc::new(init()));
        Arc::clone(value).downcast::<R>().unwrap_or_else(|_| Arc::new(init()))
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Memo(set)" } else { "Memo(empty)" })
    }
}

/// A stored object with the revision it last changed at.
#[derive(Debug)]
pub struct Stored<T> {
    /// The object.
    pub object: Arc<T>,
    /// Cache revision of its last change.
    pub revision: u64,
    /// What readers derived from `object` at `revision`.
    pub memo: Memo,
}

impl<T> Stored<T> {
    /// `object` at `revision`, with an empty memo.
    pub fn new(object: Arc<T>, revision: u64) -> Self {
        Self { object, revision, memo: Memo::default() }
    }
}

impl<T> Clone for Stored<T> {
    fn clone(&self) -> Self {
        Self { object: self.object.clone(), revision: self.revision, memo: self.memo.clone() }
    }
}

struct CompiledService {
    stored: Stored<TailscaleServices>,
    /// `None` when the selector is absent or invalid: selects nothing.
    selector: Option<Selector>,
    vip: Option<String>,
}

/// The index behind the cache. Readers get it through [`Cache::read`]. Four parts, each with
/// its own methods: what was written in ([`Objects`]), what joins them ([`Links`], [`Routes`]),
/// what is derived from them for the aggregated API ([`Views`]), and the change log
/// ([`EventLog`]); the methods here keep them consistent.
#[derive(Default)]
pub struct Index {
    objects: Objects,
    links: Links,
    routes: Routes,
    /// Pod IPs of our ingress and bidirectional proxies, by pod: the sources whose identity
    /// headers are tailscaled's own (route policies trust no other).
    ingress_pods: BTreeMap<ObjectKey, Vec<std::net::IpAddr>>,
    views: Views,
    log: EventLog,
}

/// What was written in: our four kinds, which kinds have loaded, and each tailnet's live devices.
#[derive(Default)]
struct Objects {
    synced: BTreeSet<Kind>,
    tailnets: BTreeMap<String, Stored<TailscaleTailnet>>,
    endpoints: BTreeMap<ObjectKey, Stored<TailscaleEndpoints>>,
    services: BTreeMap<ObjectKey, CompiledService>,
    gateways: BTreeMap<ObjectKey, Stored<TailscaleGateway>>,
    policies: BTreeMap<ObjectKey, Stored<TailscaleRoutePolicy>>,
    live: HashMap<String, Arc<Vec<LiveDevice>>>,
}

/// Join tables: which TailscaleEndpoints each TailscaleServices selects (both ways), and which
/// TailscaleServices claim each VIP service name.
#[derive(Default)]
struct Links {
    selection: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    selected_by: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    vip_claims: BTreeMap<String, BTreeSet<ObjectKey>>,
}

/// HTTPRoutes and GRPCRoutes, as far as the extension and route policies need them.
#[derive(Default)]
struct Routes {
    /// Backends of our kinds per route rule, by Envoy Gateway's cluster name for the rule.
    rule_backends: BTreeMap<String, Vec<RouteBackend>>,
    /// The rule cluster names of each route.
    route_rules: BTreeMap<(RouteKind, ObjectKey), Vec<String>>,
}

/// The aggregated API's derived objects: devices and selections.
#[derive(Default)]
struct Views {
    devices: BTreeMap<ObjectKey, Stored<Device>>,
    devices_by_endpoints: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    selections: BTreeMap<ObjectKey, Stored<Selection>>,
}

/// The revision and the bounded log of changes that watchers resume from.
#[derive(Default)]
struct EventLog {
    revision: u64,
    events: VecDeque<Event>,
    capacity: usize,
    /// Revision before the oldest event still in the log.
    floor: u64,
    /// Whether changes of our four kinds are logged too (local mode serves them to watchers).
    resources: bool,
}

/// The entries of a map keyed by namespace and name, in one namespace or all.
fn entries<V, T>(map: &BTreeMap<ObjectKey, V>, namespace: Option<&str>, f: impl Fn(&V) -> T) -> Vec<T> {
    match namespace {
        Some(ns) => ns_range(map, ns).map(|(_, v)| f(v)).collect(),
        None => map.values().map(f).collect(),
    }
}

fn ns_range<'a, V>(map: &'a BTreeMap<ObjectKey, V>, ns: &'a str) -> impl Iterator<Item = (&'a ObjectKey, &'a V)> {
    map.range(ObjectKey::new(ns, "")..).take_while(move |(k, _)| k.namespace == ns)
}

impl Objects {
    fn live_devices(&self, tailnet: &str) -> &[LiveDevice] {
        self.live.get(tailnet).map(|v| v.as_slice()).unwrap_or_default()
    }

    /// Whether the TailscaleServices `svc` selects the TailscaleEndpoints `ep` (both must exist).
    fn selects(&self, svc: &ObjectKey, ep: &ObjectKey) -> bool {
        match (self.services.get(svc), self.endpoints.get(ep)) {
            (Some(svc), Some(ep)) => svc.selector.as_ref().is_some_and(|s| {
                let empty = BTreeMap::new();
                s.matches(ep.object.metadata.labels.as_ref().unwrap_or(&empty))
            }),
            _ => false,
        }
    }

    fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        match kind {
            Kind::Tailnet => self.tailnets.keys().map(ObjectKey::cluster).collect(),
            Kind::Endpoints => self.endpoints.keys().cloned().collect(),
            Kind::Services => self.services.keys().cloned().collect(),
            Kind::Gateway => self.gateways.keys().cloned().collect(),
            Kind::RoutePolicy => self.policies.keys().cloned().collect(),
        }
    }
}

impl Links {
    fn selected_endpoints(&self, service: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.selection.get(service).into_iter().flatten()
    }

    fn selecting_services(&self, endpoints: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.selected_by.get(endpoints).into_iter().flatten()
    }

    /// Records whether `svc` selects `ep`; returns whether membership changed.
    fn set_selected(&mut self, svc_key: &ObjectKey, ep_key: &ObjectKey, matches: bool) -> bool {
        let was = self.selection.get(svc_key).is_some_and(|s| s.contains(ep_key));
        if matches && !was {
            self.selection.entry(svc_key.clone()).or_default().insert(ep_key.clone());
            self.selected_by.entry(ep_key.clone()).or_default().insert(svc_key.clone());
        } else if !matches && was {
            if let Some(s) = self.selection.get_mut(svc_key) {
                s.remove(ep_key);
                if s.is_empty() {
                    self.selection.remove(svc_key);
                }
            }
            if let Some(s) = self.selected_by.get_mut(ep_key) {
                s.remove(svc_key);
                if s.is_empty() {
                    self.selected_by.remove(ep_key);
                }
            }
        }
        matches != was
    }

    fn set_vip_claim(&mut self, key: &ObjectKey, old: Option<String>, new: Option<String>) {
        if old == new {
            return;
        }
        if let Some(o) = old
            && let Some(set) = self.vip_claims.get_mut(&o)
        {
            set.remove(key);
            if set.is_empty() {
                self.vip_claims.remove(&o);
            }
        }
        if let Some(n) = new {
            self.vip_claims.entry(n).or_default().insert(key.clone());
        }
    }
}

impl Routes {
    fn remove(&mut self, kind: RouteKind, key: &ObjectKey) {
        for cluster in self.route_rules.remove(&(kind, key.clone())).unwrap_or_default() {
            self.rule_backends.remove(&cluster);
        }
    }

    fn apply(&mut self, kind: RouteKind, route: &serde_json::Value) {
        let s = |p: &str| route.pointer(p).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        let key = ObjectKey::new(s("/metadata/namespace"), s("/metadata/name"));
        self.remove(kind, &key);
        // Every route is remembered (route policies may target any); rules only with our backends.
        let rules = routes::rule_backends(kind, route);
        self.route_rules.insert((kind, key), rules.iter().map(|(c, _)| c.clone()).collect());
        self.rule_backends.extend(rules);
    }

    /// Replaces every route of `kind`.
    fn reset(&mut self, kind: RouteKind, routes: &[serde_json::Value]) {
        let old: Vec<ObjectKey> = self.route_rules.keys().filter(|(k, _)| *k == kind).map(|(_, o)| o.clone()).collect();
        for key in old {
            self.remove(kind, &key);
        }
        for r in routes {
            self.apply(kind, r);
        }
    }
}

impl Views {
    fn devices_of(&self, endpoints: &ObjectKey) -> Vec<Arc<Device>> {
        self.devices_by_endpoints
            .get(endpoints)
            .into_iter()
            .flatten()
            .filter_map(|k| self.devices.get(k).map(|d| d.object.clone()))
            .collect()
    }

    /// Replaces the devices of one TailscaleEndpoints with `new`, logging each change.
    fn set_devices(&mut self, log: &mut EventLog, ep_key: &ObjectKey, new: Vec<Device>) {
        let old_keys = self.devices_by_endpoints.remove(ep_key).unwrap_or_default();
        let mut new_keys = Vec::with_capacity(new.len());
        for dev in new {
            let key = ObjectKey::new(dev.namespace.clone(), dev.name.clone());
            let kind = match self.devices.get(&key) {
                Some(s) if *s.object == dev => {
                    new_keys.push(key);
                    continue;
                }
                Some(_) => EventType::Modified,
                None => EventType::Added,
            };
            let object = Arc::new(dev);
            let (revision, memo) = log.record(kind, ViewObject::Device(object.clone()));
            self.devices.insert(key.clone(), Stored { object, revision, memo });
            new_keys.push(key);
        }
        for key in old_keys.iter().filter(|k| !new_keys.contains(k)) {
            if let Some(s) = self.devices.remove(key) {
                log.record(EventType::Deleted, ViewObject::Device(s.object));
            }
        }
        if !new_keys.is_empty() {
            self.devices_by_endpoints.insert(ep_key.clone(), new_keys);
        }
    }

    /// Replaces the selection of one TailscaleServices with `view` (`None`: removed), logging
    /// the change if there is one.
    fn set_selection(&mut self, log: &mut EventLog, svc_key: &ObjectKey, view: Option<Selection>) {
        let Some(view) = view else {
            if let Some(s) = self.selections.remove(svc_key) {
                log.record(EventType::Deleted, ViewObject::Selection(s.object));
            }
            return;
        };
        let kind = match self.selections.get(svc_key) {
            Some(s) if *s.object == view => return,
            Some(_) => EventType::Modified,
            None => EventType::Added,
        };
        let object = Arc::new(view);
        let (revision, memo) = log.record(kind, ViewObject::Selection(object.clone()));
        self.selections.insert(svc_key.clone(), Stored { object, revision, memo });
    }
}

impl EventLog {
    fn with_capacity(capacity: usize) -> Self {
        EventLog { capacity: capacity.max(1), ..EventLog::default() }
    }

    fn since(&self, revision: u64) -> Result<Vec<Event>, Gone> {
        if revision < self.floor {
            return Err(Gone { requested: revision, oldest: self.floor });
        }
        let start = self.events.partition_point(|e| e.revision <= revision);
        Ok(self.events.range(start..).cloned().collect())
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Logs a change; returns its revision and the memo the object's entry shares with it.
    fn record(&mut self, kind: EventType, object: ViewObject) -> (u64, Memo) {
        let revision = self.bump();
        let memo = Memo::default();
        self.events.push_back(Event { revision, kind, object, memo: memo.clone() });
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.revision;
            }
        }
        (revision, memo)
    }

    /// Logs a change of one of our four kinds when they are logged; else only bumps the revision.
    fn record_resource(&mut self, old: bool, object: ViewObject) -> (u64, Memo) {
        let kind = if old { EventType::Modified } else { EventType::Added };
        if self.resources {
            return self.record(kind, object);
        }
        (self.bump(), Memo::default())
    }

    /// Logs the removal of one of our four kinds (when they are logged); bumps the revision.
    fn record_removal(&mut self, object: Option<ViewObject>) -> bool {
        match object {
            Some(o) if self.resources => {
                self.record(EventType::Deleted, o);
                true
            }
            Some(_) => {
                self.bump();
                true
            }
            None => false,
        }
    }

    /// Starts logging our four kinds; a watch cannot resume from before this point.
    fn log_resources(&mut self) {
        if !self.resources {
            self.resources = true;
            self.floor = self.floor.max(self.revision);
        }
    }
}

impl Index {
    /// An empty index keeping `event_log` view changes for watch resumption.
    pub fn with_event_log(event_log: usize) -> Self {
        Index { log: EventLog::with_capacity(event_log), ..Index::default() }
    }

    /// Current revision (increases with every change).
    pub fn revision(&self) -> u64 {
        self.log.revision
    }

    /// Inserts or replaces an HTTPRoute or GRPCRoute (only its backendRefs of our kinds are kept).
    pub fn apply_route(&mut self, kind: RouteKind, route: &serde_json::Value) {
        self.routes.apply(kind, route);
    }

    /// Removes a route.
    pub fn delete_route(&mut self, kind: RouteKind, key: &ObjectKey) {
        self.routes.remove(kind, key);
    }

    /// Replaces every route of `kind` (a relist, or a reload of the local folder).
    pub fn reset_routes(&mut self, kind: RouteKind, routes: &[serde_json::Value]) {
        self.routes.reset(kind, routes);
    }

    /// Records the IPs of one of our ingress-capable proxy pods (none: it is gone or has none).
    pub fn set_ingress_pod(&mut self, pod: ObjectKey, ips: Vec<std::net::IpAddr>) {
        if ips.is_empty() {
            self.ingress_pods.remove(&pod);
        } else {
            self.ingress_pods.insert(pod, ips);
        }
    }

    /// Replaces every ingress proxy pod (a relist).
    pub fn reset_ingress_pods(&mut self, pods: BTreeMap<ObjectKey, Vec<std::net::IpAddr>>) {
        self.ingress_pods = pods.into_iter().filter(|(_, ips)| !ips.is_empty()).collect();
    }

    /// Whether `ip` is one of our ingress proxies' pods: a request from it came through tailscaled.
    pub fn is_ingress_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.ingress_pods.values().any(|ips| ips.contains(&ip))
    }

    /// Logs changes of our four kinds too, for watchers of them (local mode serves them). Until
    /// now they were not logged, so a watch cannot resume from before this point.
    pub fn log_resource_events(&mut self) {
        self.log.log_resources();
    }

    /// Whether every kind has completed its initial load.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.objects.synced.contains(k))
    }

    /// A TailscaleTailnet by name.
    pub fn tailnet(&self, name: &str) -> Option<&Arc<TailscaleTailnet>> {
        self.objects.tailnets.get(name).map(|s| &s.object)
    }

    /// All TailscaleTailnets.
    pub fn tailnets(&self) -> impl Iterator<Item = &Arc<TailscaleTailnet>> {
        self.objects.tailnets.values().map(|s| &s.object)
    }

    /// A TailscaleEndpoints by key.
    pub fn endpoints(&self, key: &ObjectKey) -> Option<&Arc<TailscaleEndpoints>> {
        self.objects.endpoints.get(key).map(|s| &s.object)
    }

    /// All TailscaleEndpoints.
    pub fn all_endpoints(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<TailscaleEndpoints>)> {
        self.objects.endpoints.iter().map(|(k, s)| (k, &s.object))
    }

    /// A TailscaleServices by key.
    pub fn services(&self, key: &ObjectKey) -> Option<&Arc<TailscaleServices>> {
        self.objects.services.get(key).map(|s| &s.stored.object)
    }

    /// All TailscaleServices.
    pub fn all_services(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<TailscaleServices>)> {
        self.objects.services.iter().map(|(k, s)| (k, &s.stored.object))
    }

    /// A TailscaleGateway by key.
    pub fn gateway(&self, key: &ObjectKey) -> Option<&Arc<TailscaleGateway>> {
        self.objects.gateways.get(key).map(|s| &s.object)
    }

    /// All TailscaleGateways.
    pub fn gateways(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<TailscaleGateway>)> {
        self.objects.gateways.iter().map(|(k, s)| (k, &s.object))
    }

    /// All TailscaleRoutePolicies.
    pub fn route_policies(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<TailscaleRoutePolicy>)> {
        self.objects.policies.iter().map(|(k, s)| (k, &s.object))
    }

    /// The TailscaleEndpoints a TailscaleServices selects now.
    pub fn selected_endpoints(&self, service: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.links.selected_endpoints(service)
    }

    /// The TailscaleServices selecting a TailscaleEndpoints now.
    pub fn selecting_services(&self, endpoints: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.links.selecting_services(endpoints)
    }

    /// The MagicDNS name of a TailscaleServices' VIP service: from its status, else built from
    /// the VIP name and the MagicDNS suffix of its tailnet (its own, else that of the first
    /// TailscaleEndpoints it selects).
    pub fn vip_dns_name(&self, svc: &TailscaleServices) -> Option<String> {
        if let Some(dns) = svc.status.as_ref().and_then(|s| s.vip_service.as_ref()).and_then(|v| v.dns_name.as_ref()) {
            return Some(dns.trim_end_matches('.').to_string()).filter(|d| !d.is_empty());
        }
        let label = vip_service_name(svc)?.strip_prefix("svc:")?.to_string();
        let tailnet = svc.spec.tailnet.clone().or_else(|| {
            let key = ObjectKey::of(&svc.metadata);
            self.selected_endpoints(&key).find_map(|k| self.endpoints(k)).map(|e| e.spec.tailnet.clone())
        })?;
        let suffix = self.tailnet(&tailnet)?.status.as_ref()?.tailnet_info.as_ref()?.magic_dns_suffix.clone()?;
        Some(format!("{label}.{}", suffix.trim_matches('.')))
    }

    /// What the proxies of a TailscaleEndpoints carry now (see [`dataplane::proxy_plan`]): the
    /// reconciler writes it into their ConfigMap, the extension points Envoy at its match ports.
    pub fn proxy_plan(&self, endpoints: &ObjectKey, place: &dataplane::Placement) -> Option<dataplane::ProxyPlan> {
        let ep = self.endpoints(endpoints)?;
        let services: Vec<(&TailscaleServices, Option<String>)> = self
            .selecting_services(endpoints)
            .filter_map(|k| self.services(k))
            .map(|s| (s.as_ref(), self.vip_dns_name(s)))
            .collect();
        let selecting: Vec<dataplane::Selecting<'_>> =
            services.iter().map(|(s, dns)| dataplane::Selecting { services: s, dns_name: dns.as_deref() }).collect();
        let mut plan = dataplane::proxy_plan(ep, &selecting, place);
        let caps = self.policy_capabilities();
        for v in &mut plan.serve {
            v.accept_app_caps = caps.clone();
        }
        Some(plan)
    }

    /// Every application capability a route policy matches on, sorted: what the ingress proxies'
    /// web handlers pass on to Envoy.
    pub fn policy_capabilities(&self) -> Vec<String> {
        let caps: BTreeSet<&String> = self
            .objects
            .policies
            .values()
            .flat_map(|p| &p.object.spec.rules)
            .flat_map(|r| &r.matches)
            .filter_map(|m| m.identity.as_ref())
            .flat_map(|i| &i.capabilities)
            .collect();
        caps.into_iter().cloned().collect()
    }

    /// The backendRefs of our kinds in the route rule Envoy Gateway names `cluster`
    /// (`httproute/<ns>/<name>/rule/<i>`), when the route is known.
    pub fn rule_backends(&self, cluster: &str) -> Option<&[RouteBackend]> {
        self.routes.rule_backends.get(cluster).map(Vec::as_slice)
    }

    /// Whether a route of `kind` is known (watched in a cluster, read in local mode).
    pub fn route_known(&self, kind: RouteKind, key: &ObjectKey) -> bool {
        self.routes.route_rules.contains_key(&(kind, key.clone()))
    }

    /// The TailscaleServices claiming a VIP service name.
    pub fn vip_claims(&self, vip: &str) -> impl Iterator<Item = &ObjectKey> {
        self.links.vip_claims.get(vip).into_iter().flatten()
    }

    /// Live device data of a tailnet, as last written by the reconciler.
    pub fn live_devices(&self, tailnet: &str) -> &[LiveDevice] {
        self.objects.live_devices(tailnet)
    }

    /// Devices (all namespaces, or one), ordered by namespace and name.
    pub fn devices(&self, namespace: Option<&str>) -> Vec<Stored<Device>> {
        entries(&self.views.devices, namespace, Clone::clone)
    }

    /// One device.
    pub fn device(&self, key: &ObjectKey) -> Option<Stored<Device>> {
        self.views.devices.get(key).cloned()
    }

    /// The devices of one TailscaleEndpoints.
    pub fn devices_of(&self, endpoints: &ObjectKey) -> Vec<Arc<Device>> {
        self.views.devices_of(endpoints)
    }

    /// Selections (all namespaces, or one), ordered by namespace and name.
    pub fn selections(&self, namespace: Option<&str>) -> Vec<Stored<Selection>> {
        entries(&self.views.selections, namespace, Clone::clone)
    }

    /// One selection.
    pub fn selection(&self, key: &ObjectKey) -> Option<Stored<Selection>> {
        self.views.selections.get(key).cloned()
    }

    /// TailscaleTailnets with their revisions (`namespace` must be `None`: they are cluster-scoped).
    pub fn tailnet_entries(&self, namespace: Option<&str>) -> Vec<Stored<TailscaleTailnet>> {
        if namespace.is_some_and(|ns| !ns.is_empty()) {
            return Vec::new();
        }
        self.objects.tailnets.values().cloned().collect()
    }

    /// One TailscaleTailnet with its revision.
    pub fn tailnet_entry(&self, key: &ObjectKey) -> Option<Stored<TailscaleTailnet>> {
        if !key.namespace.is_empty() {
            return None;
        }
        self.objects.tailnets.get(&key.name).cloned()
    }

    /// TailscaleEndpoints with their revisions, ordered by namespace and name.
    pub fn endpoints_entries(&self, namespace: Option<&str>) -> Vec<Stored<TailscaleEndpoints>> {
        entries(&self.objects.endpoints, namespace, Clone::clone)
    }

    /// One TailscaleEndpoints with its revision.
    pub fn endpoints_entry(&self, key: &ObjectKey) -> Option<Stored<TailscaleEndpoints>> {
        self.objects.endpoints.get(key).cloned()
    }

    /// TailscaleServices with their revisions, ordered by namespace and name.
    pub fn services_entries(&self, namespace: Option<&str>) -> Vec<Stored<TailscaleServices>> {
        entries(&self.objects.services, namespace, |c| c.stored.clone())
    }

    /// One TailscaleServices with its revision.
    pub fn services_entry(&self, key: &ObjectKey) -> Option<Stored<TailscaleServices>> {
        self.objects.services.get(key).map(|c| c.stored.clone())
    }

    /// TailscaleGateways with their revisions, ordered by namespace and name.
    pub fn gateway_entries(&self, namespace: Option<&str>) -> Vec<Stored<TailscaleGateway>> {
        entries(&self.objects.gateways, namespace, Clone::clone)
    }

    /// One TailscaleGateway with its revision.
    pub fn gateway_entry(&self, key: &ObjectKey) -> Option<Stored<TailscaleGateway>> {
        self.objects.gateways.get(key).cloned()
    }

    /// TailscaleRoutePolicies with their revisions, ordered by namespace and name.
    pub fn route_policy_entries(&self, namespace: Option<&str>) -> Vec<Stored<TailscaleRoutePolicy>> {
        entries(&self.objects.policies, namespace, Clone::clone)
    }

    /// One TailscaleRoutePolicy with its revision.
    pub fn route_policy_entry(&self, key: &ObjectKey) -> Option<Stored<TailscaleRoutePolicy>> {
        self.objects.policies.get(key).cloned()
    }

    /// View changes after `revision`, or [`Gone`] when the log no longer reaches back that far.
    pub fn events_since(&self, revision: u64) -> Result<Vec<Event>, Gone> {
        self.log.since(revision)
    }

    fn refresh_devices(&mut self, ep_key: &ObjectKey) {
        let new: Vec<Device> = match self.objects.endpoints.get(ep_key) {
            Some(ep) => views::devices_of(&ep.object, self.objects.live_devices(&ep.object.spec.tailnet)),
            None => Vec::new(),
        };
        self.views.set_devices(&mut self.log, ep_key, new);
    }

    fn refresh_selection_view(&mut self, svc_key: &ObjectKey) {
        let view = self.objects.services.get(svc_key).map(|s| {
            let selected: Vec<(Arc<TailscaleEndpoints>, Vec<Device>)> = self
                .selected_endpoints(svc_key)
                .filter_map(|k| {
                    self.objects
                        .endpoints
                        .get(k)
                        .map(|e| (e.object.clone(), self.devices_of(k).iter().map(|d| (**d).clone()).collect()))
                })
                .collect();
            let pairs: Vec<(&TailscaleEndpoints, &[Device])> =
                selected.iter().map(|(e, d)| (e.as_ref(), d.as_slice())).collect();
            views::selection_of(&s.stored.object, &pairs)
        });
        self.views.set_selection(&mut self.log, svc_key, view);
    }

    /// Recomputes whether `svc` selects `ep`; returns whether membership changed.
    fn relink(&mut self, svc_key: &ObjectKey, ep_key: &ObjectKey) -> bool {
        let matches = self.objects.selects(svc_key, ep_key);
        self.links.set_selected(svc_key, ep_key, matches)
    }

    fn endpoints_changed(&mut self, key: &ObjectKey) {
        self.refresh_devices(key);
        let mut affected: BTreeSet<ObjectKey> = self.selecting_services(key).cloned().collect();
        let same_ns: Vec<ObjectKey> =
            ns_range(&self.objects.services, &key.namespace).map(|(k, _)| k.clone()).collect();
        for svc in same_ns {
            self.relink(&svc, key);
        }
        affected.extend(self.selecting_services(key).cloned());
        for svc in affected {
            self.refresh_selection_view(&svc);
        }
    }

    fn services_changed(&mut self, key: &ObjectKey) {
        let same_ns: Vec<ObjectKey> =
            ns_range(&self.objects.endpoints, &key.namespace).map(|(k, _)| k.clone()).collect();
        for ep in same_ns {
            self.relink(key, &ep);
        }
        self.refresh_selection_view(key);
    }

    /// Inserts or replaces an object, and what derives from it.
    pub fn apply(&mut self, res: Resource) {
        let key = res.key();
        match res {
            Resource::Tailnet(t) => {
                let old = self.objects.tailnets.get(&key.name);
                if old.is_some_and(|o| *o.object == t) {
                    return;
                }
                let object = Arc::new(t);
                let (revision, memo) = self.log.record_resource(old.is_some(), ViewObject::Tailnet(object.clone()));
                self.objects.tailnets.insert(key.name, Stored { object, revision, memo });
            }
            Resource::Gateway(g) => {
                let old = self.objects.gateways.get(&key);
                if old.is_some_and(|o| *o.object == g) {
                    return;
                }
                let object = Arc::new(g);
                let (revision, memo) = self.log.record_resource(old.is_some(), ViewObject::Gateway(object.clone()));
                self.objects.gateways.insert(key, Stored { object, revision, memo });
            }
            Resource::RoutePolicy(p) => {
                let old = self.objects.policies.get(&key);
                if old.is_some_and(|o| *o.object == p) {
                    return;
                }
                let object = Arc::new(p);
                let (revision, memo) = self.log.record_resource(old.is_some(), ViewObject::RoutePolicy(object.clone()));
                self.objects.policies.insert(key, Stored { object, revision, memo });
            }
            Resource::Endpoints(e) => {
                let old = self.objects.endpoints.get(&key);
                if old.is_some_and(|o| *o.object == e) {
                    return;
                }
                let object = Arc::new(e);
                let (revision, memo) = self.log.record_resource(old.is_some(), ViewObject::Endpoints(object.clone()));
                self.objects.endpoints.insert(key.clone(), Stored { object, revision, memo });
                self.endpoints_changed(&key);
            }
            Resource::Services(s) => self.apply_services(key, s),
        }
    }

    fn apply_services(&mut self, key: ObjectKey, s: TailscaleServices) {
        let old = self.objects.services.get(&key);
        if old.is_some_and(|o| *o.stored.object == s) {
            return;
        }
        let existed = old.is_some();
        let selector = s
            .spec
            .selector
            .as_ref()
            .and_then(|sel| Selector::from_label_selector(sel, &FieldPath::new("spec.selector")).ok());
        let vip = vip_service_name(&s);
        let old_vip = self.objects.services.get(&key).and_then(|o| o.vip.clone());
        self.links.set_vip_claim(&key, old_vip, vip.clone());
        let object = Arc::new(s);
        let (revision, memo) = self.log.record_resource(existed, ViewObject::Services(object.clone()));
        self.objects
            .services
            .insert(key.clone(), CompiledService { stored: Stored { object, revision, memo }, selector, vip });
        self.services_changed(&key);
    }

    /// Removes an object, and what derives from it.
    pub fn delete(&mut self, kind: Kind, key: &ObjectKey) {
        let objects = &mut self.objects;
        let removed = match kind {
            Kind::Tailnet => objects.tailnets.remove(&key.name).map(|s| ViewObject::Tailnet(s.object)),
            Kind::Gateway => objects.gateways.remove(key).map(|s| ViewObject::Gateway(s.object)),
            Kind::RoutePolicy => objects.policies.remove(key).map(|s| ViewObject::RoutePolicy(s.object)),
            Kind::Endpoints => objects.endpoints.remove(key).map(|s| ViewObject::Endpoints(s.object)),
            Kind::Services => objects.services.remove(key).map(|old| {
                self.links.set_vip_claim(key, old.vip, None);
                ViewObject::Services(old.stored.object)
            }),
        };
        if !self.log.record_removal(removed) {
            return;
        }
        match kind {
            Kind::Endpoints => self.endpoints_changed(key),
            Kind::Services => {
                let eps: Vec<ObjectKey> = self.selected_endpoints(key).cloned().collect();
                for ep in eps {
                    self.relink(key, &ep);
                }
                self.refresh_selection_view(key);
            }
            Kind::Tailnet | Kind::Gateway | Kind::RoutePolicy => {}
        }
    }

    /// Replaces every object of `kind` with `objects` and marks the kind synced.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Resource>) {
        let keep: BTreeSet<ObjectKey> = objects.iter().map(Resource::key).collect();
        for key in self.objects.keys(kind) {
            if !keep.contains(&key) {
                self.delete(kind, &key);
            }
        }
        for obj in objects {
            if obj.kind() == kind {
                self.apply(obj);
            }
        }
        self.mark_synced(kind);
    }

    /// Marks a kind as loaded (for `/readyz`).
    pub fn mark_synced(&mut self, kind: Kind) {
        if self.objects.synced.insert(kind) {
            // Readiness is part of what subscribers are told about.
            self.log.bump();
        }
    }

    /// Replaces the live device data of a tailnet.
    pub fn set_live_devices(&mut self, tailnet: &str, devices: Vec<LiveDevice>) {
        if self.objects.live.get(tailnet).is_some_and(|d| **d == devices) {
            return;
        }
        self.objects.live.insert(tailnet.to_string(), Arc::new(devices));
        self.log.bump();
        let eps: Vec<ObjectKey> = self
            .objects
            .endpoints
            .iter()
            .filter(|(_, e)| e.object.spec.tailnet == tailnet)
            .map(|(k, _)| k.clone())
            .collect();
        for ep in eps {
            self.endpoints_changed(&ep);
        }
    }
}

impl ClusterView for Index {
    fn tailnet_exists(&self, name: &str) -> bool {
        self.objects.tailnets.contains_key(name)
    }

    fn vip_claimants(&self, vip: &str) -> Vec<ObjectKey> {
        self.vip_claims(vip).cloned().collect()
    }
}
