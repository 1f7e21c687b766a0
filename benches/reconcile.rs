//! Reconcile 1,000 TailscaleEndpoints and 500 TailscaleServices against the in-memory mocks
//! (a Kubernetes API server answering over `kube::Client`, and an in-memory tailnet), and print
//! CPU time per reconcile, API calls per object and peak memory.
//!
//! Run: `cargo bench --bench reconcile`. Everything runs on one thread, so the CPU time is the
//! reconciler's plus the in-process mock API server's.

/// The allocator of the `tailscale-gateway` binary, so figures match what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tailscale_gateway::api::{TailscaleEndpoints, TailscaleServices, TailscaleTailnet};
use tailscale_gateway::cache::Cache;
use tailscale_gateway::core::{Kind, Resource};
use tailscale_gateway::reconciler::owned::{self, OwnedWriters};
use tailscale_gateway::reconciler::testing::{FakeKube, MemoryFactory, MemoryTailscale, fake_client, sync_owned};
use tailscale_gateway::reconciler::{Config, Context, ReconcilerMetrics, endpoints, services};
use tailscale_gateway::tailscale::Device;

const ENDPOINTS: usize = 1_000;
const SERVICES: usize = 500;
const NAMESPACES: usize = 10;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// CPU time of this thread (ns), from the scheduler's accounting.
fn thread_cpu() -> Duration {
    let raw = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(raw.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ep_coll(ns: &str) -> String {
    format!(
        "/apis/gateway.tailscale.com/v1alpha1/namespaces/{ns}/{}",
        <TailscaleEndpoints as kube::Resource>::plural(&())
    )
}

fn svc_coll(ns: &str) -> String {
    format!(
        "/apis/gateway.tailscale.com/v1alpha1/namespaces/{ns}/{}",
        <TailscaleServices as kube::Resource>::plural(&())
    )
}

/// Namespace of TailscaleServices `j` and of the two TailscaleEndpoints it selects.
fn ns_of(j: usize) -> String {
    format!("ns-{}", j % NAMESPACES)
}

struct Bench {
    fake: Arc<FakeKube>,
    ts: Arc<MemoryTailscale>,
    ctx: Arc<Context>,
    cache: Cache,
    owned: std::cell::RefCell<OwnedWriters>,
}

impl Bench {
    fn endpoints(&self, i: usize) -> Arc<TailscaleEndpoints> {
        let v = self.fake.get(&format!("{}/ep-{i}", ep_coll(&ns_of(i / 2)))).unwrap_or_default();
        let ep: TailscaleEndpoints = serde_json::from_value(v).expect("parsing the stored TailscaleEndpoints");
        Arc::new(ep)
    }

    fn services(&self, j: usize) -> Arc<TailscaleServices> {
        let v = self.fake.get(&format!("{}/svc-{j}", svc_coll(&ns_of(j)))).unwrap_or_default();
        let svc: TailscaleServices = serde_json::from_value(v).expect("parsing the stored TailscaleServices");
        Arc::new(svc)
    }

    /// What the reflectors would do between phases: feed the current objects into the cache and
    /// the owned objects into the reconciler's stores.
    fn sync_cache(&self) {
        sync_owned(&self.fake, &mut self.owned.borrow_mut());
        for i in 0..ENDPOINTS {
            self.cache.apply(Resource::Endpoints((*self.endpoints(i)).clone()));
        }
        for j in 0..SERVICES {
            self.cache.apply(Resource::Services((*self.services(j)).clone()));
        }
    }
}

struct Row {
    phase: &'static str,
    objects: usize,
    cpu: Duration,
    wall: Duration,
    reads: usize,
    writes: usize,
    ts_calls: u64,
    errors: usize,
}

async fn phase<F, Fut>(b: &Bench, phase: &'static str, objects: usize, f: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    b.fake.take_requests();
    let ts_before = b.ts.total_calls();
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let mut errors = 0;
    for i in 0..objects {
        if !f(i).await {
            errors += 1;
        }
    }
    let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
    let reqs = b.fake.take_requests();
    let writes = reqs.iter().filter(|r| r.is_write()).count();
    Row {
        phase,
        objects,
        cpu,
        wall,
        reads: reqs.len() - writes,
        writes,
        ts_calls: b.ts.total_calls() - ts_before,
        errors,
    }
}

async fn run() -> Vec<Row> {
    let fake = FakeKube::new();
    let factory = Arc::new(MemoryFactory::default());
    let ts = factory.tailnet("corp");
    let cache = Cache::new(10_000);
    let tailnet: TailscaleTailnet = serde_json::from_value(json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
        "metadata": {"name": "corp", "uid": "uid-corp"},
        "spec": {"tailnet": "-", "oauthSecretRef": {"name": "oauth"}},
        "status": {"tailnetInfo": {"name": "tail8eff9.ts.net", "magicDNSSuffix": "tail8eff9.ts.net"}}
    }))
    .expect("parsing the TailscaleTailnet");
    fake.insert(
        "/api/v1/namespaces/tailscale-gateway/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth", "namespace": "tailscale-gateway"},
               "data": {"client_id": b64("id"), "client_secret": b64("secret")}}),
    );
    cache.apply(Resource::Tailnet(tailnet));
    for k in Kind::ALL {
        cache.mark_synced(k);
    }
    for i in 0..ENDPOINTS {
        let ns = ns_of(i / 2);
        fake.insert(
            &ep_coll(&ns),
            json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
            "metadata": {"name": format!("ep-{i}"), "namespace": ns, "uid": format!("uid-ep-{i}"), "generation": 1,
                         "labels": {"service": format!("svc-{}", i / 2)}, "finalizers": [endpoints::FINALIZER]},
            "spec": {"tailnet": "corp", "tags": ["tag:proxy"], "proxy": {"replicas": 2},
                     "ports": [{"port": 443}]}}),
        );
    }
    for j in 0..SERVICES {
        let ns = ns_of(j);
        fake.insert(
            &svc_coll(&ns),
            json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": format!("svc-{j}"), "namespace": ns, "uid": format!("uid-svc-{j}"), "generation": 1,
                         "finalizers": [services::FINALIZER]},
            "spec": {"selector": {"matchLabels": {"service": format!("svc-{j}")}},
                     "vipService": {"ports": ["tcp:443"], "tags": ["tag:svc"]}}}),
        );
    }
    let config = Config { device_refresh: Duration::from_secs(3600), ..Config::default() };
    let ctx = Arc::new(Context::new(
        fake_client(fake.clone()),
        cache.clone(),
        factory,
        Arc::new(ReconcilerMetrics::default()),
        config,
        None,
    ));
    let (stores, writers) = owned::stores();
    ctx.set_owned(stores);
    let b = Bench { fake, ts, ctx, cache, owned: std::cell::RefCell::new(writers) };
    b.sync_cache();

    let mut rows = Vec::new();
    let ep = |b: &Bench, i: usize| {
        let (obj, ctx) = (b.endpoints(i), b.ctx.clone());
        async move { endpoints::reconcile(obj, ctx).await.is_ok() }
    };
    let svc = |b: &Bench, j: usize| {
        let (obj, ctx) = (b.services(j), b.ctx.clone());
        async move { services::reconcile(obj, ctx).await.is_ok() }
    };
    rows.push(phase(&b, "endpoints: create", ENDPOINTS, |i| ep(&b, i)).await);
    b.sync_cache();

    // Every proxy logs in: state Secrets get device data, devices appear in the tailnet.
    for i in 0..ENDPOINTS {
        let ns = ns_of(i / 2);
        for r in 0..2 {
            let name = format!("ep-{i}-{r}");
            let node = format!("n{i}x{r}");
            let path = format!("/api/v1/namespaces/{ns}/secrets");
            let mut st: Value = b.fake.get(&format!("{path}/{name}")).unwrap_or_default();
            st["data"] = json!({"device_id": b64(&node), "device_fqdn": b64(&format!("{name}.tail8eff9.ts.net.")),
                                "device_ips": b64("[\"100.64.0.1\"]")});
            b.fake.insert(&path, st);
            b.ts.add_device(Device {
                id: format!("id-{node}"),
                node_id: node,
                name: format!("{name}.tail8eff9.ts.net."),
                hostname: name,
                addresses: vec!["100.64.0.1".into()],
                connected_to_control: true,
                ..Device::default()
            });
        }
    }
    if let Ok(h) = b.ctx.tailnet_api("corp").await {
        let _ = b.ctx.devices_max_age(&h, Duration::ZERO).await;
    }
    // The state Secrets' watch events reach the reconciler's stores.
    b.sync_cache();
    rows.push(phase(&b, "endpoints: devices registered", ENDPOINTS, |i| ep(&b, i)).await);
    b.sync_cache();
    rows.push(phase(&b, "services: create VIP", SERVICES, |j| svc(&b, j)).await);
    b.sync_cache();
    rows.push(phase(&b, "endpoints: advertise VIP", ENDPOINTS, |i| ep(&b, i)).await);
    b.sync_cache();
    rows.push(phase(&b, "endpoints: steady state", ENDPOINTS, |i| ep(&b, i)).await);
    rows.push(phase(&b, "services: steady state", SERVICES, |j| svc(&b, j)).await);
    rows
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let total = Instant::now();
    let rows = rt.block_on(run());
    println!(
        "{:<30} {:>7} {:>12} {:>12} {:>10} {:>10} {:>10} {:>6}",
        "phase", "objects", "cpu/obj µs", "wall/obj µs", "k8s rd/obj", "k8s wr/obj", "ts/obj", "errors"
    );
    for r in &rows {
        let n = r.objects.max(1) as f64;
        println!(
            "{:<30} {:>7} {:>12.0} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>6}",
            r.phase,
            r.objects,
            r.cpu.as_secs_f64() * 1e6 / n,
            r.wall.as_secs_f64() * 1e6 / n,
            r.reads as f64 / n,
            r.writes as f64 / n,
            r.ts_calls as f64 / n,
            r.errors
        );
    }
    println!("peak memory (VmHWM): {} MiB; total {:.1?}", vm_hwm_kib() / 1024, total.elapsed());
}
