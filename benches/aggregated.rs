//! Aggregated API figures (not a test): list 10,000 devices as Table and as JSON through the
//! router (authentication, routing, rendering), watch fan-out to 100 watchers over 1,000
//! changes, and the process's memory with 10,000 devices cached.
//!
//! Run with `cargo bench --bench aggregated`.

/// The allocator of the `tailscale-gateway` binary, so figures match what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::json;
use tailscale_gateway::aggregated::auth::Auth;
use tailscale_gateway::aggregated::{AggregatedApi, router};
use tailscale_gateway::cache::Cache;
use tailscale_gateway::core::Resource;
use tailscale_gateway::pki::Ca;
use tailscale_gateway::server::PeerCerts;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const NAMESPACES: usize = 10;
const ENDPOINTS_PER_NS: usize = 100;
const DEVICES_PER_ENDPOINTS: usize = 10;
const WATCHERS: usize = 100;
const CHANGES: usize = 1_000;
const LIST_RUNS: usize = 30;
const GV: &str = "/apis/tailnet.gateway.tailscale.com/v1alpha1";

fn endpoints(ns: &str, name: &str, devices: usize, online: bool, seen: usize) -> Resource {
    let devs: Vec<_> = (0..devices)
        .map(|i| {
            json!({"hostname": format!("{name}-{i}"), "nodeID": format!("n{ns}{name}{i}"),
                "tailscaleIP": format!("100.64.{}.{}", i / 250, i % 250 + 1),
                "tailscaleFQDN": format!("{name}-{i}.tail1234.ts.net"), "statefulSetPod": format!("{name}-{i}"),
                "online": online, "connected": online, "lastSeen": format!("2025-06-25T10:{:02}:00Z", seen % 60),
                "tags": ["tag:k8s-proxy", "tag:bench"], "os": "linux", "clientVersion": "1.84.2"})
        })
        .collect();
    Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "shard": name},
            "creationTimestamp": "2025-06-25T10:00:00Z"},
        "spec": {"tailnet": "corp"}, "status": {"devices": devs}}))
    .unwrap_or_else(|e| panic!("building endpoints: {e}"))
}

fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn request(path: &str, accept: &str, certs: &PeerCerts) -> Request<Body> {
    let mut req = Request::get(path)
        .header("accept", accept)
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("building request: {e}"));
    req.extensions_mut().insert(certs.clone());
    req
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench_list(api: &AggregatedApi, certs: &PeerCerts, label: &str, accept: &str) {
    let path = format!("{GV}/tailscaledevices");
    let mut times = Vec::with_capacity(LIST_RUNS);
    let mut bytes = 0;
    for _ in 0..LIST_RUNS {
        let start = Instant::now();
        let resp = router(api.clone()).oneshot(request(&path, accept, certs)).await.unwrap_or_else(|e| match e {});
        assert!(resp.status().is_success(), "list failed: {}", resp.status());
        let body = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        times.push(start.elapsed());
        bytes = body.len();
    }
    times.sort();
    println!(
        "list 10k devices as {label:<5}: p50 {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  {:>9} bytes",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        bytes
    );
}

async fn bench_fanout(api: &AggregatedApi, cache: &Cache, certs: &PeerCerts) {
    cache.apply(endpoints("hot", "hot", 1, true, 0));
    let rv = cache.read().revision();
    let path = format!("{GV}/namespaces/hot/tailscaledevices?watch=true&resourceVersion={rv}");
    let mut watchers = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let resp =
            router(api.clone()).oneshot(request(&path, "application/json", certs)).await.unwrap_or_else(|e| match e {});
        assert!(resp.status().is_success());
        let mut body = resp.into_body();
        watchers.push(tokio::spawn(async move {
            let mut events = 0usize;
            while events < CHANGES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            events += data.iter().filter(|b| **b == b'\n').count();
                        }
                    }
                    _ => break,
                }
            }
            (events, Instant::now())
        }));
    }
    let start = Instant::now();
    for i in 1..=CHANGES {
        cache.apply(endpoints("hot", "hot", 1, i % 2 == 0, i));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let produced = start.elapsed();
    let mut delivered = 0;
    let mut last = start;
    for w in watchers {
        let (events, done) = w.await.unwrap_or_else(|e| panic!("watcher task: {e}"));
        delivered += events;
        last = last.max(done);
    }
    let total = last.duration_since(start);
    println!(
        "watch fan-out: {WATCHERS} watchers x {CHANGES} changes: {delivered} events delivered in {:.1} ms \
         (changes applied in {:.1} ms; {:.0} events/s)",
        total.as_secs_f64() * 1e3,
        produced.as_secs_f64() * 1e3,
        delivered as f64 / total.as_secs_f64()
    );
    assert_eq!(delivered, WATCHERS * CHANGES, "every watcher must see every change");
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let (rss0, _) = memory();
        let cache = Cache::default();
        for n in 0..NAMESPACES {
            for e in 0..ENDPOINTS_PER_NS {
                cache.apply(endpoints(&format!("ns-{n}"), &format!("ep-{e}"), DEVICES_PER_ENDPOINTS, e % 7 != 0, e));
            }
        }
        let devices = cache.read().devices(None).len();
        let (rss1, hwm1) = memory();
        println!(
            "cache with {devices} devices: VmRSS {:.1} MiB (+{:.1} MiB for the data), VmHWM {:.1} MiB",
            rss1 as f64 / 1024.0,
            (rss1.saturating_sub(rss0)) as f64 / 1024.0,
            hwm1 as f64 / 1024.0
        );

        let ca = Ca::generate("bench-ca").unwrap_or_else(|e| panic!("{e}"));
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap_or_else(|e| panic!("{e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(admin.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let certs = PeerCerts(certs.into());
        let auth = Auth::local(&ca.pair().cert_pem).unwrap_or_else(|e| panic!("{e}"));
        let api = AggregatedApi::new(cache.clone(), auth, CancellationToken::new());

        bench_list(&api, &certs, "Table", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json").await;
        bench_list(&api, &certs, "JSON", "application/json").await;
        let (rss2, hwm2) = memory();
        println!("after list runs: VmRSS {:.1} MiB, VmHWM {:.1} MiB", rss2 as f64 / 1024.0, hwm2 as f64 / 1024.0);

        bench_fanout(&api, &cache, &certs).await;
        let (rss3, hwm3) = memory();
        println!("after fan-out: VmRSS {:.1} MiB, VmHWM {:.1} MiB", rss3 as f64 / 1024.0, hwm3 as f64 / 1024.0);
    });
}
