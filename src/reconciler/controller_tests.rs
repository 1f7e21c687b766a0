//! Controller tests: each reconcile runs against a `tower_test::mock::pair` Kubernetes API
//! (answered by [`FakeKube`], which records every request) and an in-memory tailnet, and the
//! tests assert the exact writes sent — including none at all in a steady state.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{Request, Response};
use serde_json::{Value, json};

use super::owned::{self, OwnedWriters};
use super::testing::{FakeKube, MemoryFactory, MemoryTailscale, Recorded, sync_owned};
use super::{Config, Context, ReconcilerMetrics, endpoints, services, tailnet};
use crate::api::{TailscaleEndpoints, TailscaleServices, TailscaleTailnet};
use crate::cache::Cache;
use crate::core::{Kind, Resource};
use crate::tailscale::{Device, VipService};

/// Collection paths follow the types' plurals, whatever the CRDs call them.
fn ep_path() -> String {
    format!(
        "/apis/gateway.tailscale.com/v1alpha1/namespaces/prod/{}",
        <TailscaleEndpoints as kube::Resource>::plural(&())
    )
}

fn svc_path() -> String {
    format!(
        "/apis/gateway.tailscale.com/v1alpha1/namespaces/prod/{}",
        <TailscaleServices as kube::Resource>::plural(&())
    )
}
const SECRETS: &str = "/api/v1/namespaces/prod/secrets";

struct Harness {
    fake: Arc<FakeKube>,
    ts: Arc<MemoryTailscale>,
    ctx: Arc<Context>,
    cache: Cache,
    /// The owned-object stores' writing ends: the reflectors' part, played by [`Harness::endpoints`].
    owned: std::sync::Mutex<OwnedWriters>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    let raw = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap_or_default();
    String::from_utf8(raw).unwrap_or_default()
}

/// A mock API server behind `tower_test::mock::pair`, answered by a [`FakeKube`].
fn mock_client(fake: Arc<FakeKube>) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(fake.serve(req).await);
        }
    });
    kube::Client::new(svc, "default")
}

fn harness() -> Harness {
    let fake = FakeKube::new();
    let factory = Arc::new(MemoryFactory::default());
    let ts = factory.tailnet("corp");
    let cache = Cache::new(10_000);
    let tailnet: TailscaleTailnet = serde_json::from_value(json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
        "metadata": {"name": "corp", "uid": "uid-corp", "generation": 1},
        "spec": {"tailnet": "-", "oauthSecretRef": {"name": "oauth"}, "tags": ["tag:k8s"]},
        "status": {"tailnetInfo": {"name": "tail8eff9.ts.net", "magicDNSSuffix": "tail8eff9.ts.net"}}
    }))
    .expect("parsing the TailscaleTailnet");
    fake.insert(
        "/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets",
        serde_json::to_value(&tailnet).unwrap_or_default(),
    );
    fake.insert(
        "/api/v1/namespaces/tailscale-gateway/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth", "namespace": "tailscale-gateway"},
               "data": {"client_id": b64("id"), "client_secret": b64("very-secret")}}),
    );
    cache.apply(Resource::Tailnet(tailnet));
    for k in Kind::ALL {
        cache.mark_synced(k);
    }
    let config = Config { cluster_id: "c1".into(), device_refresh: Duration::from_secs(3600), ..Config::default() };
    let ctx = Arc::new(Context::new(
        mock_client(fake.clone()),
        cache.clone(),
        factory,
        Arc::new(ReconcilerMetrics::default()),
        config,
        Some("test".into()),
    ));
    let (stores, writers) = owned::stores();
    ctx.set_owned(stores);
    Harness { fake, ts, ctx, cache, owned: std::sync::Mutex::new(writers) }
}

fn endpoints_json(replicas: i32) -> Value {
    json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
        "metadata": {"name": "web", "namespace": "prod", "uid": "uid-web", "generation": 1,
                     "labels": {"app": "web"}, "finalizers": [endpoints::FINALIZER]},
        "spec": {"tailnet": "corp", "tags": ["tag:web-proxy"], "proxy": {"replicas": replicas},
                 "ports": [{"port": 443, "protocol": "TCP"}]}})
}

impl Harness {
    /// The object as the API server has it now, also fed into the cache, with the owned-object
    /// stores brought up to date (the reflectors' job).
    fn endpoints(&self) -> Arc<TailscaleEndpoints> {
        self.sync_owned();
        self.endpoints_stale_stores()
    }

    /// The object as the API server has it now, fed into the cache, the owned-object stores left
    /// as they are (their watch events have not arrived yet).
    fn endpoints_stale_stores(&self) -> Arc<TailscaleEndpoints> {
        let epp = ep_path();
        let v = self.fake.get(&format!("{epp}/web")).unwrap_or_else(|| panic!("endpoints missing"));
        let ep: TailscaleEndpoints = serde_json::from_value(v).expect("parsing the stored TailscaleEndpoints");
        self.cache.apply(Resource::Endpoints(ep.clone()));
        Arc::new(ep)
    }

    /// Brings the owned-object stores up to what the API server holds.
    fn sync_owned(&self) {
        sync_owned(&self.fake, &mut self.owned.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn services(&self, name: &str) -> Arc<TailscaleServices> {
        let spp = svc_path();
        let v = self.fake.get(&format!("{spp}/{name}")).unwrap_or_else(|| panic!("services missing"));
        let svc: TailscaleServices = serde_json::from_value(v).expect("parsing the stored TailscaleServices");
        self.cache.apply(Resource::Services(svc.clone()));
        Arc::new(svc)
    }

    fn writes(&self) -> Vec<Recorded> {
        self.fake.take_requests().into_iter().filter(Recorded::is_write).collect()
    }

    /// A proxy logs in: writes its state Secret and appears in the tailnet.
    fn register(&self, i: i32, node_id: &str) {
        let name = format!("web-{i}");
        let mut state = self.fake.get(&format!("{SECRETS}/{name}")).unwrap_or_else(|| panic!("state secret"));
        state["data"] = json!({"device_id": b64(node_id), "device_fqdn": b64(&format!("{name}.tail8eff9.ts.net.")),
                               "device_ips": b64(&format!("[\"100.64.0.{}\"]", i + 1))});
        self.fake.insert(SECRETS, state);
        self.ts.add_device(Device {
            id: format!("id-{node_id}"),
            node_id: node_id.into(),
            name: format!("{name}.tail8eff9.ts.net."),
            hostname: name,
            addresses: vec![format!("100.64.0.{}", i + 1)],
            connected_to_control: true,
            tags: vec!["tag:web-proxy".into()],
            ..Device::default()
        });
    }

    /// The auth key in replica `i`'s config Secret as the API server has it ("" without one).
    fn auth_key(&self, i: i32) -> String {
        let config = self.fake.get(&format!("{SECRETS}/web-{i}-config")).unwrap_or_default();
        let hujson: Value = serde_json::from_str(&unb64(&config["data"]["cap-107.hujson"])).unwrap_or_default();
        hujson["AuthKey"].as_str().unwrap_or_default().to_string()
    }

    async fn refresh_devices(&self) {
        let handle = self.ctx.tailnet_api("corp").await.expect("getting the corp tailnet's API handle");
        self.ctx.devices_max_age(&handle, Duration::ZERO).await.expect("refreshing the device list");
    }
}

fn summary(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter().map(|r| format!("{} {}", r.method, r.path)).collect()
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_only() {
    let epp = ep_path();
    let h = harness();
    let mut ep = endpoints_json(2);
    ep["metadata"]["finalizers"] = json!(null);
    h.fake.insert(&ep_path(), ep);
    let action = endpoints::reconcile(h.endpoints(), h.ctx.clone()).await;
    assert!(action.is_ok(), "{action:?} {:?}", h.fake.requests());
    let writes = h.writes();
    assert_eq!(summary(&writes), vec![format!("PATCH {epp}/web")]);
    assert_eq!(writes[0].content_type, "application/json-patch+json");
    assert_eq!(writes[0].body.as_ref().and_then(|b| b.pointer("/1/value/0")), Some(&json!(endpoints::FINALIZER)));
    assert_eq!(h.ts.total_calls(), 0);
}

#[tokio::test]
async fn endpoints_lifecycle_create_steady_register_scale_down_delete() {
    let epp = ep_path();
    let h = harness();
    h.fake.insert(&ep_path(), endpoints_json(2));

    // 1. Create everything. The only reads: the tailnet's OAuth Secret (first use of its API),
    // and each replica's Secrets, checked on the API server before a key is minted (the stores
    // may trail it).
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the new TailscaleEndpoints");
    let (writes, reads): (Vec<Recorded>, Vec<Recorded>) =
        h.fake.take_requests().into_iter().partition(Recorded::is_write);
    assert_eq!(
        summary(&reads),
        std::iter::once("GET /api/v1/namespaces/tailscale-gateway/secrets/oauth".to_string())
            .chain(["web-0-config", "web-0", "web-1-config", "web-1"].map(|n| format!("GET {SECRETS}/{n}")))
            .collect::<Vec<_>>(),
        "no GET of owned objects but the Secrets of replicas without a key"
    );
    let objects: Vec<String> = summary(&writes).into_iter().filter(|s| !s.contains("/events")).collect();
    assert_eq!(
        objects,
        vec![
            "PATCH /api/v1/namespaces/prod/serviceaccounts/web".to_string(),
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/prod/roles/web".into(),
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/prod/rolebindings/web".into(),
            "PATCH /api/v1/namespaces/prod/configmaps/web-proxies".into(),
            format!("PATCH {SECRETS}/web-0-config"),
            format!("PATCH {SECRETS}/web-0"),
            format!("PATCH {SECRETS}/web-1-config"),
            format!("PATCH {SECRETS}/web-1"),
            "PATCH /apis/apps/v1/namespaces/prod/statefulsets/web".into(),
            "PATCH /api/v1/namespaces/prod/services/web-svc".into(),
            format!("PATCH {epp}/web/status"),
        ]
    );
    assert!(writes.iter().any(|w| w.is_event() && w.method == "POST"), "a ProxiesCreated event");
    for w in writes.iter().filter(|w| !w.is_event()) {
        assert!(w.content_type.starts_with("application/apply-patch"), "{} is server-side apply", w.path);
        assert!(w.query.contains("fieldManager=tailscale-gateway") && w.query.contains("force=true"), "{}", w.query);
    }
    let config =
        writes.iter().find(|w| w.path.ends_with("web-1-config")).and_then(|w| w.body.clone()).unwrap_or_default();
    let hujson: Value = serde_json::from_str(&unb64(&config["data"]["cap-107.hujson"])).unwrap_or_default();
    assert_eq!(hujson["AuthKey"], h.ts.state().tailnet.keys[1].key, "the second key issued");
    assert_eq!(hujson["Hostname"], "web-1");
    assert_eq!(hujson["Version"], "alpha0");
    assert_eq!(hujson["AcceptRoutes"], false);
    let state =
        writes.iter().find(|w| w.path.ends_with("/secrets/web-0")).and_then(|w| w.body.clone()).unwrap_or_default();
    assert!(state.get("data").is_none(), "never overwrite what the proxy writes");
    let status = writes.iter().find(|w| w.path.ends_with("/status")).and_then(|w| w.body.clone()).unwrap_or_default();
    assert_eq!(status["status"]["conditions"][0]["reason"], "WaitingForDevices");
    assert_eq!(status["status"]["deviceCount"], 0);
    {
        let s = h.ts.state();
        assert_eq!(s.tailnet.keys.len(), 2);
        let asked = s.tailnet.keys.iter().map(|k| &k.request);
        assert!(asked.clone().all(|k| !k.reusable && k.preauthorized && k.tags == vec!["tag:web-proxy"]));
    }
    assert_eq!(h.ts.calls("list_devices"), 1);

    // 2. Steady state: nothing changed, nothing written, no Tailscale call; and nothing read
    // from the API server either (the owned objects come from the stores).
    let calls = h.ts.total_calls();
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the unchanged TailscaleEndpoints");
    assert_eq!(summary(&h.fake.take_requests()), Vec::<String>::new(), "steady state sends no request");
    assert_eq!(h.ts.total_calls(), calls, "no Tailscale API call either");

    // 3. Proxies register: only the status changes; keys are not minted again.
    h.register(0, "n0");
    h.register(1, "n1");
    h.refresh_devices().await;
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling after the proxies registered");
    let writes = h.writes();
    assert_eq!(summary(&writes), vec![format!("PATCH {epp}/web/status")]);
    let status = &writes[0].body.as_ref().unwrap_or_else(|| panic!("body"))["status"];
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["devices"][1]["nodeID"], "n1");
    assert_eq!(status["devices"][1]["tailscaleFQDN"], "web-1.tail8eff9.ts.net");
    assert_eq!(status["devices"][1]["online"], true);
    assert_eq!(h.ts.state().tailnet.keys.len(), 2);
    // The live device data reached the shared cache (aggregated API).
    assert!(h.cache.read().live_devices("corp").iter().any(|d| d.node_id == "n1"));
    endpoints::reconcile(h.endpoints(), h.ctx.clone())
        .await
        .expect("reconciling the registered TailscaleEndpoints again");
    assert_eq!(summary(&h.writes()), Vec::<String>::new(), "steady again");

    // 4. Scale down to 1: web-1's device leaves the tailnet and its Secrets go.
    let mut ep = h.fake.get(&format!("{epp}/web")).unwrap_or_default();
    ep["spec"]["proxy"]["replicas"] = json!(1);
    ep["metadata"]["generation"] = json!(2);
    h.fake.insert(&ep_path(), ep);
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the scale-down to 1");
    let all_writes = h.writes();
    let writes: Vec<String> = summary(&all_writes).into_iter().filter(|s| !s.contains("/events")).collect();
    assert_eq!(
        writes,
        vec![
            "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/prod/roles/web".to_string(),
            "PATCH /apis/apps/v1/namespaces/prod/statefulsets/web".into(),
            format!("DELETE {SECRETS}/web-1"),
            format!("DELETE {SECRETS}/web-1-config"),
            format!("PATCH {epp}/web/status"),
        ]
    );
    assert_eq!(h.ts.calls("delete_device"), 1);
    assert_eq!(h.ts.state().tailnet.devices.values().map(|d| d.node_id.clone()).collect::<Vec<_>>(), vec!["n0"]);
    let scaled_down = |reqs: &[Recorded]| {
        reqs.iter().filter(|r| r.is_event() && r.body.as_ref().is_some_and(|b| b["reason"] == "ScaledDown")).count()
    };
    assert_eq!(scaled_down(&all_writes), 1, "one ScaledDown event");
    // Reconciled again before the stores see the deletions: nothing left to delete, no second Event.
    endpoints::reconcile(h.endpoints_stale_stores(), h.ctx.clone())
        .await
        .expect("reconciling again before the stores see the deletions");
    assert_eq!(scaled_down(&h.fake.take_requests()), 0);
    assert_eq!(h.ts.calls("delete_device"), 1);

    // 5. Deletion: the remaining device leaves the tailnet, then the finalizer goes.
    let mut ep = h.fake.get(&format!("{epp}/web")).unwrap_or_default();
    ep["metadata"]["deletionTimestamp"] = json!("2025-06-25T11:00:00Z");
    h.fake.insert(&ep_path(), ep);
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the deletion");
    assert!(h.ts.state().tailnet.devices.is_empty());
    let writes = h.writes();
    assert_eq!(summary(&writes), vec![format!("PATCH {epp}/web")]);
    assert_eq!(
        writes[0].body,
        Some(json!([{"op": "test", "path": "/metadata/finalizers/0", "value": endpoints::FINALIZER},
                                            {"op": "remove", "path": "/metadata/finalizers/0"}]))
    );
}

#[tokio::test]
async fn endpoints_stale_stores_cost_idempotent_applies_but_never_a_second_key() {
    let epp = ep_path();
    let h = harness();
    h.fake.insert(&epp, endpoints_json(2));
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the new TailscaleEndpoints");
    let key = |i: i32| h.auth_key(i);
    let keys = (key(0), key(1));
    assert!(!keys.0.is_empty() && keys.0 != keys.1, "a key per replica: {keys:?}");
    h.fake.take_requests();

    // Reconciled again before any watch event reached the stores: they are still empty.
    endpoints::reconcile(h.endpoints_stale_stores(), h.ctx.clone()).await.expect("reconciling again with stale stores");
    assert_eq!(h.ts.state().tailnet.keys.len(), 2, "the keys on the API server are found, none minted");
    assert_eq!((key(0), key(1)), keys, "and the config keeps them");
    let writes: Vec<Recorded> = h.writes().into_iter().filter(|w| !w.is_event()).collect();
    assert!(!writes.is_empty(), "stale stores make the objects look missing");
    for w in &writes {
        assert!(
            w.method == "PATCH"
                && (w.content_type.starts_with("application/apply-patch") || w.path.ends_with("/status")),
            "only idempotent applies: {} {} ({})",
            w.method,
            w.path,
            w.content_type
        );
    }

    // Once the stores catch up, nothing is sent.
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling once the stores caught up");
    assert_eq!(summary(&h.fake.take_requests()), Vec::<String>::new());
}

#[tokio::test]
async fn endpoints_scale_down_and_up_again_faster_than_the_stores() {
    let epp = ep_path();
    let h = harness();
    h.fake.insert(&epp, endpoints_json(2));
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the new TailscaleEndpoints");
    h.register(0, "n0");
    h.refresh_devices().await;
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling after replica 0 registered");
    // Replica 1 registers, and the replicas go down to 1, before the stores hear of either.
    h.register(1, "n1");
    h.refresh_devices().await;
    let set_replicas = |n: i32| {
        let mut ep = h.fake.get(&format!("{epp}/web")).unwrap_or_default();
        ep["spec"]["proxy"]["replicas"] = json!(n);
        h.fake.insert(&epp, ep);
    };
    set_replicas(1);
    endpoints::reconcile(h.endpoints_stale_stores(), h.ctx.clone())
        .await
        .expect("reconciling the scale-down to 1 with stale stores");
    assert_eq!(h.ts.calls("delete_device"), 1, "the device the stores had not seen is removed all the same");
    assert_eq!(h.ts.state().tailnet.devices.values().map(|d| d.node_id.clone()).collect::<Vec<_>>(), vec!["n0"]);
    assert!(h.fake.get(&format!("{SECRETS}/web-1")).is_none());

    // Back to 2, still before the stores see the deletions: replica 1 must not be handed its
    // spent key or its old registration from the stale store; it gets a new key.
    let keys = h.ts.state().tailnet.keys.len();
    set_replicas(2);
    endpoints::reconcile(h.endpoints_stale_stores(), h.ctx.clone())
        .await
        .expect("reconciling the scale-up to 2 with stale stores");
    assert_eq!(h.ts.state().tailnet.keys.len(), keys + 1, "a fresh key for the new replica 1");
    let newest = h.ts.state().tailnet.keys.last().map(|k| k.key.clone());
    assert_eq!(Some(h.auth_key(1)), newest, "the config is recreated with it");
    assert!(h.fake.get(&format!("{SECRETS}/web-1")).is_some(), "and an empty state Secret again");
}

#[tokio::test]
async fn endpoints_wait_for_the_stores_initial_lists() {
    let h = harness();
    h.fake.insert(&ep_path(), endpoints_json(1));
    let ep = h.endpoints();
    // Stores whose reflectors have not listed yet.
    let (stores, _writers) = owned::stores();
    h.ctx.set_owned(stores);
    h.fake.take_requests();
    let error = endpoints::reconcile(ep, h.ctx.clone()).await.err().unwrap_or_else(|| panic!("expected an error"));
    assert_eq!(error.metric_label(), "not_synced", "{error}");
    assert_eq!(h.writes(), Vec::<Recorded>::new(), "nothing written from an empty picture");
    assert_eq!(h.ts.state().tailnet.keys.len(), 0);
}

#[tokio::test]
async fn endpoints_transient_api_error_keeps_status() {
    let epp = ep_path();
    let h = harness();
    h.fake.insert(&ep_path(), endpoints_json(1));
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the new TailscaleEndpoints");
    h.register(0, "n0");
    h.fake.take_requests();
    // The device list cannot be refreshed (500) and no auth key can be minted (429): the
    // reconcile fails, the status stays as it was, and the error policy backs off.
    h.ts.fail_next(Some("list_devices"), 500, 1);
    let handle = h.ctx.tailnet_api("corp").await.expect("getting the corp tailnet's API handle");
    let stale = h.ctx.devices_max_age(&handle, Duration::ZERO).await.expect("reading the cached device list");
    assert!(stale.is_empty(), "a failed refresh reuses the last list");
    let mut ep = h.fake.get(&format!("{epp}/web")).unwrap_or_default();
    ep["spec"]["proxy"]["replicas"] = json!(2);
    h.fake.insert(&ep_path(), ep);
    h.ts.fail_next(Some("create_auth_key"), 429, 1);
    let before = h.fake.get(&format!("{epp}/web")).and_then(|v| v.get("status").cloned());
    let err =
        endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.err().unwrap_or_else(|| panic!("expected an error"));
    assert_eq!(err.metric_label(), "tailscale_transient");
    assert!(h.writes().iter().all(|w| !w.path.ends_with("/status")), "status untouched");
    assert_eq!(h.fake.get(&format!("{epp}/web")).and_then(|v| v.get("status").cloned()), before);
    let first = endpoints::error_policy(h.endpoints(), &err, h.ctx.clone());
    assert_ne!(first, kube::runtime::controller::Action::await_change());
    // Next time it goes through.
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling after the API recovered");
    assert_eq!(h.ts.state().tailnet.keys.len(), 2);
}

fn services_json(name: &str, extra: Value) -> Value {
    let mut v = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
        "metadata": {"name": name, "namespace": "prod", "uid": format!("uid-{name}"), "generation": 1,
                     "finalizers": [services::FINALIZER]},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "vipService": {"name": format!("svc:{name}"), "ports": ["tcp:443"], "tags": ["tag:web"]}}});
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    v
}

/// An endpoints object with two online devices, in the API server and the cache.
fn ready_endpoints(h: &Harness) {
    let mut ep = endpoints_json(2);
    ep["status"] = json!({"devices": [
        {"hostname": "web-0", "nodeID": "n0", "online": true, "connected": true},
        {"hostname": "web-1", "nodeID": "n1", "online": true, "connected": true}]});
    h.fake.insert(&ep_path(), ep);
    h.endpoints();
}

#[tokio::test]
async fn services_create_vip_then_steady_state_writes_nothing() {
    let spp = svc_path();
    let h = harness();
    ready_endpoints(&h);
    let serve = json!({"serve": [{"port": 443, "protocol": "TCP", "backendRef": {"name": "web", "port": 8443}}]});
    h.fake.insert(&svc_path(), services_json("web", serve));
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling the new TailscaleServices");
    let writes = h.writes();
    let objects: Vec<String> = summary(&writes).into_iter().filter(|s| !s.contains("/events")).collect();
    assert_eq!(objects, vec![format!("PATCH {spp}/web/status")]);
    let status =
        &writes.iter().find(|w| w.path.ends_with("/status")).and_then(|w| w.body.clone()).unwrap_or_default()["status"];
    assert_eq!(status["vipService"]["name"], "svc:web");
    assert_eq!(status["vipService"]["dnsName"], "web.tail8eff9.ts.net");
    let allocated = h.ts.state().tailnet.vip_services.get("svc:web").map(|v| v.addrs.clone()).unwrap_or_default();
    assert!(allocated[0].starts_with("100.100."), "{allocated:?}");
    assert_eq!(status["vipService"]["addresses"][0], allocated[0]);
    assert_eq!(status["vipService"]["backendCount"], 2);
    assert_eq!(status["vipService"]["healthyBackends"], 2);
    assert_eq!(
        status["selectedEndpoints"],
        json!([{"name": "web", "machines": ["web-0", "web-1"], "healthyMachines": 2}])
    );
    assert_eq!(status["endpointCount"], 1);
    assert_eq!(status["conditions"][0]["status"], "True");
    let vip = h.ts.state().tailnet.vip_services.get("svc:web").cloned().unwrap_or_else(|| panic!("vip"));
    assert_eq!(vip.ports, vec!["tcp:443"]);
    assert_eq!(vip.tags, vec!["tag:web"]);
    assert_eq!(vip.annotations["gateway.tailscale.com/owner-operator"], "c1");
    assert_eq!(h.ts.calls("put_vip_service"), 1);

    // Steady state: one GET of the VIP service, no write anywhere.
    let puts = h.ts.calls("put_vip_service");
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling the unchanged TailscaleServices");
    assert_eq!(summary(&h.writes()), Vec::<String>::new(), "steady state writes nothing");
    assert_eq!(h.ts.calls("put_vip_service"), puts);
    assert_eq!(h.ts.calls("delete_vip_service"), 0);

    // The selected endpoints serve the VIP first, then advertise it on their registered replicas.
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the selected TailscaleEndpoints");
    let writes = h.writes();
    let cm = writes
        .iter()
        .find(|w| w.path.ends_with("/configmaps/web-proxies"))
        .and_then(|w| w.body.clone())
        .unwrap_or_else(|| panic!("ConfigMap written: {:?}", summary(&writes)));
    let serve_config: Value =
        serde_json::from_str(cm["data"]["serve-config.json"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        serve_config,
        json!({"Services": {"svc:web": {"TCP": {"443": {"TCPForward": "web.prod.svc.cluster.local:8443"}}}}})
    );
    h.register(0, "n0");
    h.refresh_devices().await;
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling after replica 0 registered");
    let writes = h.writes();
    let cfg0 = writes
        .iter()
        .find(|w| w.path.ends_with("web-0-config"))
        .and_then(|w| w.body.clone())
        .unwrap_or_else(|| panic!("web-0 config rewritten: {:?}", summary(&writes)));
    let hujson: Value = serde_json::from_str(&unb64(&cfg0["data"]["cap-107.hujson"])).unwrap_or_default();
    assert_eq!(hujson["AdvertiseServices"], json!(["svc:web"]));
    assert!(!writes.iter().any(|w| w.path.ends_with("web-1-config")), "web-1 is not ready: nothing advertised");

    // The VIP stops being served here: the advertisement goes first, the serve entry a reconcile later.
    let mut svc = h.fake.get(&format!("{spp}/web")).unwrap_or_default();
    svc["spec"]["serve"] = json!([]);
    h.fake.insert(&svc_path(), svc);
    h.services("web");
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone())
        .await
        .expect("reconciling the endpoints after the VIP stopped being served");
    let writes = h.writes();
    let advertised = |writes: &[Recorded]| {
        let cfg = writes.iter().find(|w| w.path.ends_with("web-0-config")).and_then(|w| w.body.clone())?;
        let hujson: Value = serde_json::from_str(&unb64(&cfg["data"]["cap-107.hujson"])).ok()?;
        Some(hujson["AdvertiseServices"].clone())
    };
    assert_eq!(advertised(&writes), Some(Value::Null), "advertisement removed: {:?}", summary(&writes));
    assert!(!writes.iter().any(|w| w.path.ends_with("/configmaps/web-proxies")), "serve entry kept while advertised");
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone())
        .await
        .expect("reconciling the endpoints again to drop the serve entry");
    let writes = h.writes();
    let cm = writes.iter().find(|w| w.path.ends_with("/configmaps/web-proxies")).and_then(|w| w.body.clone());
    let served: Option<Value> =
        cm.and_then(|c| serde_json::from_str(c["data"]["serve-config.json"].as_str().unwrap_or_default()).ok());
    assert_eq!(served, Some(json!({"Services": {}})), "the entry goes once no replica advertises it");

    // Deletion: last consumer, so the VIP service is deleted and the finalizer removed.
    let mut svc = h.fake.get(&format!("{spp}/web")).unwrap_or_default();
    svc["metadata"]["deletionTimestamp"] = json!("2025-06-25T11:00:00Z");
    h.fake.insert(&svc_path(), svc);
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling the TailscaleServices deletion");
    assert!(h.ts.state().tailnet.vip_services.is_empty());
    assert_eq!(summary(&h.writes()), vec![format!("PATCH {spp}/web")]);
}

#[tokio::test]
async fn an_https_vip_is_advertised_once_its_shared_certificate_exists() {
    let h = harness();
    ready_endpoints(&h);
    let serve = json!({"serve": [{"port": 443, "protocol": "HTTPS", "backendRef": {"name": "web", "port": 8080}}]});
    h.fake.insert(&svc_path(), services_json("web", serve));
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling the HTTPS TailscaleServices");
    h.services("web"); // the status (VIP name, DNS name) reaches the cache
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling the selected TailscaleEndpoints");
    let writes = h.writes();
    let domain = "web.tail8eff9.ts.net";
    let cert = writes
        .iter()
        .find(|w| w.path == format!("{SECRETS}/{domain}"))
        .and_then(|w| w.body.clone())
        .unwrap_or_else(|| panic!("the shared certificate Secret: {:?}", summary(&writes)));
    assert!(cert.get("data").is_none(), "created empty: replica 0 fills it");
    let role = writes.iter().find(|w| w.path.ends_with("/roles/web")).and_then(|w| w.body.clone()).unwrap_or_default();
    assert!(role["rules"][0]["resourceNames"].as_array().is_some_and(|n| n.contains(&json!(domain))), "{role}");
    // Registered and served now, but no certificate yet: not advertised (a TLS error for clients).
    h.register(0, "n0");
    h.refresh_devices().await;
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone()).await.expect("reconciling after replica 0 registered");
    let advertised = |writes: &[Recorded]| {
        let cfg = writes.iter().find(|w| w.path.ends_with("web-0-config")).and_then(|w| w.body.clone())?;
        let hujson: Value = serde_json::from_str(&unb64(&cfg["data"]["cap-107.hujson"])).ok()?;
        Some(hujson["AdvertiseServices"].clone())
    };
    assert_eq!(advertised(&h.writes()), None, "{:?}", summary(&h.writes()));
    // Replica 0 wrote the certificate: now it is advertised.
    let mut secret = h.fake.get(&format!("{SECRETS}/{domain}")).unwrap_or_else(|| panic!("stored"));
    secret["data"] = json!({"tls.crt": "Y2VydA==", "tls.key": "a2V5"});
    h.fake.insert(SECRETS, secret);
    h.fake.take_requests();
    endpoints::reconcile(h.endpoints(), h.ctx.clone())
        .await
        .expect("reconciling after the shared certificate was written");
    assert_eq!(advertised(&h.writes()), Some(json!(["svc:web"])), "{:?}", summary(&h.writes()));
}

#[tokio::test]
async fn services_transient_errors_keep_status_and_never_duplicate_the_vip() {
    let spp = svc_path();
    let h = harness();
    ready_endpoints(&h);
    h.fake.insert(&svc_path(), services_json("web", json!({})));
    // 429 on the lookup: error, no status write, no PUT.
    h.ts.fail_next(Some("get_vip_service"), 429, 1);
    let err = services::reconcile(h.services("web"), h.ctx.clone()).await.err().unwrap_or_else(|| panic!("error"));
    assert_eq!(err.metric_label(), "tailscale_transient");
    assert!(h.writes().is_empty());
    assert_eq!(h.ts.calls("put_vip_service"), 0);
    // The PUT takes effect but the answer is a 500: retried, the service is recognised as ours.
    h.ts.fail_after_effect("put_vip_service", 500);
    assert!(services::reconcile(h.services("web"), h.ctx.clone()).await.is_err());
    assert!(h.writes().is_empty(), "no status on failure");
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("retrying after the PUT's 500");
    assert_eq!(h.ts.calls("put_vip_service"), 1, "no second create");
    assert_eq!(h.ts.state().tailnet.vip_services.len(), 1);
    assert_eq!(
        summary(&h.writes()).into_iter().filter(|s| !s.contains("/events")).collect::<Vec<_>>(),
        vec![format!("PATCH {spp}/web/status")]
    );
    // With a status in place, a later 500 keeps it untouched.
    let before = h.fake.get(&format!("{spp}/web")).map(|v| v["status"].clone());
    h.ts.fail_next(None, 503, 1);
    assert!(services::reconcile(h.services("web"), h.ctx.clone()).await.is_err());
    assert!(h.writes().is_empty());
    assert_eq!(h.fake.get(&format!("{spp}/web")).map(|v| v["status"].clone()), before);
    assert_eq!(before.and_then(|s| s["vipService"]["addresses"].as_array().map(Vec::len)), Some(2));
}

#[tokio::test]
async fn services_never_adopt_a_foreign_vip_service() {
    let spp = svc_path();
    let h = harness();
    ready_endpoints(&h);
    h.ts.state().tailnet.vip_services.insert(
        "svc:web".into(),
        VipService {
            name: "svc:web".into(),
            addrs: vec!["100.100.9.9".into()],
            annotations: [("tailscale.com/owner-references".to_string(), "{\"ownerRefs\":[]}".to_string())].into(),
            ..VipService::default()
        },
    );
    h.fake.insert(&svc_path(), services_json("web", json!({})));
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling next to a foreign VIP service");
    assert_eq!(h.ts.calls("put_vip_service"), 0);
    let writes = h.writes();
    assert!(writes.iter().any(|w| w.is_event()), "a warning event");
    let status =
        &writes.iter().find(|w| w.path.ends_with("/status")).and_then(|w| w.body.clone()).unwrap_or_default()["status"];
    assert_eq!(status["conditions"][1]["reason"], "OwnedByAnother");
    assert!(status.get("vipService").is_none());
    // Deleting ours leaves theirs alone.
    let mut svc = h.fake.get(&format!("{spp}/web")).unwrap_or_default();
    svc["metadata"]["deletionTimestamp"] = json!("2025-06-25T11:00:00Z");
    h.fake.insert(&svc_path(), svc);
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling the TailscaleServices deletion");
    assert!(h.ts.state().tailnet.vip_services.contains_key("svc:web"));
    assert_eq!(h.ts.calls("delete_vip_service"), 0);
}

#[tokio::test]
async fn services_auto_provision_and_clean_up_endpoints() {
    let epp = ep_path();
    let spp = svc_path();
    let h = harness();
    let template = json!({"endpointTemplate": {"tailnet": "corp", "tags": ["tag:web"], "proxy": {"replicas": 1},
                                               "ports": [{"port": 443}]}});
    h.fake.insert(&svc_path(), services_json("web", template));
    services::reconcile(h.services("web"), h.ctx.clone())
        .await
        .expect("reconciling the TailscaleServices with an endpointTemplate");
    let writes = h.writes();
    let provisioned = writes
        .iter()
        .find(|w| w.path == format!("{epp}/web-endpoints"))
        .and_then(|w| w.body.clone())
        .unwrap_or_else(|| panic!("no endpoints provisioned: {:?}", summary(&writes)));
    assert_eq!(provisioned["metadata"]["annotations"]["tailscale-gateway.com/auto-provisioned"], "true");
    assert_eq!(provisioned["metadata"]["labels"]["app"], "web");
    assert_eq!(provisioned["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(provisioned["spec"]["tailnet"], "corp");
    // The reflector delivers it; the next reconcile selects it and provisions nothing more.
    let ep: TailscaleEndpoints =
        serde_json::from_value(h.fake.get(&format!("{epp}/web-endpoints")).unwrap_or_default())
            .expect("parsing the auto-provisioned TailscaleEndpoints");
    h.cache.apply(Resource::Endpoints(ep));
    services::reconcile(h.services("web"), h.ctx.clone())
        .await
        .expect("reconciling once the provisioned endpoints are cached");
    let again = h.writes();
    assert!(!again.iter().any(|w| w.path.contains("tailscaleendpoints/web-endpoints")), "{:?}", summary(&again));
    // The selector moves away: the auto-provisioned endpoints is orphaned and deleted.
    let mut svc = h.fake.get(&format!("{spp}/web")).unwrap_or_default();
    svc["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    svc["spec"].as_object_mut().map(|s| s.remove("endpointTemplate"));
    h.fake.insert(&svc_path(), svc);
    services::reconcile(h.services("web"), h.ctx.clone()).await.expect("reconciling after the selector moved away");
    let writes = h.writes();
    assert!(summary(&writes).contains(&format!("DELETE {epp}/web-endpoints")), "{:?}", summary(&writes));
}

#[tokio::test]
async fn tailnet_discovers_suffix_and_reports_bad_credentials() {
    let h = harness();
    h.ts.add_device(Device {
        id: "1".into(),
        node_id: "n1".into(),
        name: "x.tail1234.ts.net.".into(),
        ..Device::default()
    });
    let path = "/apis/gateway.tailscale.com/v1alpha1/tailscaletailnets/corp";
    let get = |h: &Harness| -> Arc<TailscaleTailnet> {
        Arc::new(
            serde_json::from_value(h.fake.get(path).unwrap_or_default()).expect("parsing the stored TailscaleTailnet"),
        )
    };
    tailnet::reconcile(get(&h), h.ctx.clone()).await.expect("reconciling the new TailscaleTailnet");
    let writes = h.writes();
    assert_eq!(summary(&writes), vec![format!("PATCH {path}/status")]);
    let status = &writes[0].body.as_ref().unwrap_or_else(|| panic!("body"))["status"];
    assert_eq!(status["tailnetInfo"], json!({"name": "tail1234.ts.net", "magicDNSSuffix": "tail1234.ts.net"}));
    assert_eq!(status["conditions"][0]["status"], "True");
    assert!(!writes[0].body.as_ref().map(Value::to_string).unwrap_or_default().contains("very-secret"));
    // Steady state.
    tailnet::reconcile(get(&h), h.ctx.clone()).await.expect("reconciling the unchanged TailscaleTailnet");
    assert!(h.writes().is_empty(), "steady state writes nothing");
    // The Secret loses its client_secret: Ready=False, InvalidCredentials, one Warning event.
    h.fake.insert(
        "/api/v1/namespaces/tailscale-gateway/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth", "namespace": "tailscale-gateway"},
               "data": {"client_id": b64("id")}}),
    );
    tailnet::reconcile(get(&h), h.ctx.clone())
        .await
        .expect("reconciling the TailscaleTailnet with a Secret lacking client_secret");
    let writes = h.writes();
    assert_eq!(writes.iter().filter(|w| w.is_event()).count(), 1);
    let status =
        &writes.iter().find(|w| w.path.ends_with("/status")).and_then(|w| w.body.clone()).unwrap_or_default()["status"];
    assert_eq!(status["conditions"][0]["reason"], "InvalidCredentials");
    assert_eq!(status["tailnetInfo"]["magicDNSSuffix"], "tail1234.ts.net", "discovered info is kept");
}

#[tokio::test]
async fn controllers_run_only_while_leader() {
    let h = harness();
    h.fake.take_requests();
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(super::run(h.ctx.clone(), leader_rx, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.fake.requests().is_empty(), "a follower sends nothing");
    leader_tx.send_replace(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = h.fake.take_requests();
    let watched: Vec<String> = requests.iter().map(|r| r.path.clone()).collect();
    let owned = ["serviceaccounts", "roles", "rolebindings", "services", "statefulsets", "secrets"];
    for plural in
        ["tailscaletailnets", <TailscaleEndpoints as kube::Resource>::plural(&()).as_ref()].into_iter().chain(owned)
    {
        assert!(watched.iter().any(|p| p.ends_with(plural)), "leader watches {plural}: {watched:?}");
    }
    for plural in owned {
        let listed = requests.iter().filter(|r| r.path.ends_with(&format!("/{plural}"))).collect::<Vec<_>>();
        assert!(
            listed.iter().all(|r| r.query.contains("labelSelector=tailscale-gateway.com%2Fendpoints")),
            "only labelled {plural} are watched: {listed:?}"
        );
    }
    leader_tx.send_replace(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.fake.take_requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.fake.requests().is_empty(), "after losing the lease nothing is sent");
    stop.cancel();
    let finished = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(finished.is_ok(), "run returns on shutdown");
}
