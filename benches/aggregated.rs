//! Aggregated API figures (not a test): list 10,000 devices as Table and as JSON through the
//! router (authentication, routing, rendering), watch fan-out to 100 watchers over 1,000
//! changes, and the process's memory with 10,000 devices cached; then, side by side over HTTPS
//! with mTLS, the same lists against the peer users would pick instead: k8s.io/sample-apiserver
//! (built by `hack/bench-peers.sh`) with 10,000 Flunders in the real etcd, beside a real
//! kube-apiserver for its delegated authentication and informers.
//!
//! Run with `cargo bench --bench aggregated` (optional env: BENCH_ROUNDS, rounds of the side-by-side
//! lists, default 30; BENCH_NO_PEER=1 skips the side-by-side part, for profiling ours).

#[path = "../tests/util/mod.rs"]
mod util;

mod peers;

/// The allocator of the `tailscale-gateway` binary, so figures match what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
use tailscale_gateway::server::tls::{CertStore, certified_key, server_config};
use tailscale_gateway::server::{Limits, PeerCerts};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use util::cluster::ControlPlane;

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
    .expect("building endpoints")
}

fn memory() -> (u64, u64) {
    peers::memory("self")
}

fn request(path: &str, accept: &str, certs: &PeerCerts) -> Request<Body> {
    let mut req = Request::get(path).header("accept", accept).body(Body::empty()).expect("building request");
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
        let (events, done) = w.await.expect("watcher task");
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

const PEER_GV: &str = "/apis/wardle.example.com/v1alpha1";
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// k8s.io/sample-apiserver as its README runs it beside a cluster: on the control plane's etcd,
/// client certificates from the cluster CA (the admin's, in system:masters, so authorization
/// needs no SubjectAccessReview), kube-apiserver for its informers and delegated authentication.
struct SampleApiserver {
    process: util::KillOnDrop,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SampleApiserver {
    fn start(bin: &Path, cp: &ControlPlane) -> SampleApiserver {
        let dir = tempfile::Builder::new().prefix("tsgw-sample-apiserver-").tempdir().expect("creating a directory");
        let serving = cp
            .pki
            .ca
            .issue_server(&["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("issuing sample-apiserver's serving certificate");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &serving.cert_pem).expect("writing sample-apiserver's certificate");
        std::fs::write(&key, &serving.key_pem).expect("writing sample-apiserver's key");
        let port = util::cluster::free_port();
        let log = dir.path().join("sample-apiserver.log");
        let out = std::fs::File::create(&log).expect("creating sample-apiserver's log");
        let path = |flag: &str, p: &Path| format!("--{flag}={}", p.display());
        let child = std::process::Command::new(bin)
            .args([format!("--secure-port={port}"), "--bind-address=127.0.0.1".to_string()])
            .arg(format!("--etcd-servers={}", cp.etcd_url))
            .arg(path("tls-cert-file", &cert))
            .arg(path("tls-private-key-file", &key))
            .arg(path("cert-dir", dir.path()))
            .arg(path("client-ca-file", &cp.files.ca))
            .arg(path("kubeconfig", &cp.kubeconfig))
            .arg(path("authentication-kubeconfig", &cp.kubeconfig))
            .arg(path("authorization-kubeconfig", &cp.kubeconfig))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("cloning the log handle"))
            .stderr(out)
            .spawn()
            .expect("starting sample-apiserver");
        let addr = ([127, 0, 0, 1], port).into();
        SampleApiserver { process: util::KillOnDrop(child), addr, log, _dir: dir }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.process.0.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("sample-apiserver exited ({status}):\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&mut self, cfg: Arc<rustls::ClientConfig>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.assert_running();
            assert!(Instant::now() < deadline, "sample-apiserver not ready within 90s; log: {}", self.log.display());
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                let mut conn = util::Conn::open(self.addr, cfg.clone()).await;
                if conn.get("/readyz").await.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn memory(&self) -> (u64, u64) {
        peers::memory(&self.process.0.id().to_string())
    }
}

/// Creates 10,000 Flunders (10 namespaces × 1,000) through sample-apiserver, 8 connections at once;
/// the namespaces through kube-apiserver first.
async fn create_flunders(peer: SocketAddr, kube: SocketAddr, cfg: Arc<rustls::ClientConfig>) {
    let mut conn = util::Conn::open(kube, cfg.clone()).await;
    for n in 0..NAMESPACES {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}")}});
        let r = conn.post_json("/api/v1/namespaces", &ns).await;
        assert!(r.status == 201 || r.status == 409, "creating namespace ns-{n}: {}", String::from_utf8_lossy(&r.body));
    }
    let start = Instant::now();
    let total = NAMESPACES * ENDPOINTS_PER_NS * DEVICES_PER_ENDPOINTS;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let mut conn = util::Conn::open(peer, cfg).await;
                for i in (t..total).step_by(8) {
                    let (n, e, d) = (i % NAMESPACES, i / NAMESPACES % ENDPOINTS_PER_NS, i / NAMESPACES / ENDPOINTS_PER_NS);
                    let flunder = json!({"apiVersion": "wardle.example.com/v1alpha1", "kind": "Flunder",
                        "metadata": {"name": format!("ep-{e}-{d}"), "labels": {"app": "bench", "shard": format!("ep-{e}")}},
                        "spec": {"reference": format!("ep-{e}-{}", (d + 1) % DEVICES_PER_ENDPOINTS)}});
                    let r = conn.post_json(&format!("{PEER_GV}/namespaces/ns-{n}/flunders"), &flunder).await;
                    assert_eq!(r.status, 201, "creating a Flunder: {}", String::from_utf8_lossy(&r.body));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("Flunder creation task");
    }
    let took = start.elapsed();
    println!(
        "sample-apiserver: created {total} Flunders in {:.1} s ({:.0}/s, 8 connections)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}

/// One timed list on a kept-alive connection: time to the last byte, and the body.
async fn timed_list(conn: &mut util::Conn, path: &str, accept: &str) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let r = conn.get_accept(path, accept).await;
    let took = start.elapsed();
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body[..r.body.len().min(500)]));
    (took, r.body)
}

/// How many rows or items a list response has.
fn entries(v: &serde_json::Value) -> usize {
    v["rows"].as_array().or(v["items"].as_array()).map(Vec::len).unwrap_or(0)
}

/// Our aggregated API over HTTPS beside sample-apiserver: the same lists, taking turns.
async fn bench_against_sample_apiserver(cache: &Cache) {
    let bin = tokio::task::block_in_place(|| peers::build("sample-apiserver", "SAMPLE_APISERVER_VERSION"));
    let cp = tokio::task::block_in_place(ControlPlane::start);
    let read = |p: &Path| std::fs::read_to_string(p).expect("reading the control plane's PKI");
    let ca_pem = read(&cp.files.ca);
    let cfg = util::client_config(&[&ca_pem], Some((&read(&cp.files.admin_cert), &read(&cp.files.admin_key))));
    let mut peer = SampleApiserver::start(&bin, &cp);
    peer.wait_ready(cfg.clone()).await;
    let (rss_empty, _) = peer.memory();
    let kube: SocketAddr = cp.server.trim_start_matches("https://").parse().expect("kube-apiserver's address");
    create_flunders(peer.addr, kube, cfg.clone()).await;

    // Ours: the same router as in-process, served over TLS by our HTTPS server, clients
    // authenticated by the same CA as sample-apiserver's.
    let serving = cp
        .pki
        .ca
        .issue_server(&["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("issuing our serving certificate");
    let tls = server_config(CertStore::new(
        certified_key(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())
            .expect("loading our serving certificate"),
    ))
    .expect("building our TLS config");
    let auth = Auth::local(&ca_pem).expect("local authentication from the cluster CA");
    let stop = CancellationToken::new();
    let api = AggregatedApi::new(cache.clone(), auth, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding our HTTPS listener");
    let ours_addr = listener.local_addr().expect("our HTTPS address");
    tokio::spawn(tailscale_gateway::server::serve(listener, tls, router(api), Limits::default(), stop.clone()));

    let ours_path = format!("{GV}/tailscaledevices");
    let peer_path = format!("{PEER_GV}/flunders");
    let mut ours_conn = util::Conn::open(ours_addr, cfg.clone()).await;
    let mut peer_conn = util::Conn::open(peer.addr, cfg.clone()).await;
    // The first list of each after the Flunders were created; then every response is checked once.
    let (first, _) = timed_list(&mut peer_conn, &peer_path, TABLE).await;
    println!("sample-apiserver: first Table list after creating them {:.2} ms", first.as_secs_f64() * 1e3);
    let total = NAMESPACES * ENDPOINTS_PER_NS * DEVICES_PER_ENDPOINTS;
    for (conn, path) in [(&mut ours_conn, &ours_path), (&mut peer_conn, &peer_path)] {
        for accept in [TABLE, "application/json"] {
            let (_, body) = timed_list(conn, path, accept).await;
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a list response is JSON");
            assert_eq!(entries(&v), total, "GET {path} as {accept}: {} entries", entries(&v));
        }
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    // [ours Table, peer Table, ours JSON, peer JSON]: times, and the body size of each.
    let mut times: [Vec<Duration>; 4] = Default::default();
    let mut sizes = [0usize; 4];
    for _ in 0..rounds {
        for (i, accept) in [TABLE, "application/json"].into_iter().enumerate() {
            for (j, (conn, path)) in
                [(&mut ours_conn, &ours_path), (&mut peer_conn, &peer_path)].into_iter().enumerate()
            {
                let (t, body) = timed_list(conn, path, accept).await;
                times[2 * i + j].push(t);
                sizes[2 * i + j] = body.len();
            }
        }
    }
    // Median and p90 of each.
    let [ot, pt, oj, pj] = times.map(|mut v| {
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.9))
    });
    peer.assert_running();
    let (rss_peer, hwm_peer) = peer.memory();
    let (rss_ours, hwm_ours) = memory();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "over HTTPS (mTLS, keep-alive, one connection each, time to the last byte), {rounds} rounds taking turns; medians (p90):"
    );
    println!("{:<22} | {:>22} | {:>22} | {:>9}", "list 10,000 as", "tailscale-gateway", "sample-apiserver", "ratio");
    for (label, (o, o90), (p, p90), (os, ps)) in
        [("Table", ot, pt, (sizes[0], sizes[1])), ("JSON", oj, pj, (sizes[2], sizes[3]))]
    {
        println!(
            "{label:<22} | {:>7.2} ms ({:>6.2}) {:>4.1}MB | {:>7.2} ms ({:>6.2}) {:>4.1}MB | {:>8.1}x",
            ms(o),
            ms(o90),
            os as f64 / 1e6,
            ms(p),
            ms(p90),
            ps as f64 / 1e6,
            ms(p) / ms(o)
        );
    }
    println!(
        "memory: sample-apiserver VmRSS {:.1} MiB empty, {:.1} MiB with 10,000 Flunders after the lists (VmHWM {:.1} MiB); \
         this process (ours, its cache, the load generator and its buffers) VmRSS {:.1} MiB (VmHWM {:.1} MiB)",
        rss_empty as f64 / 1024.0,
        rss_peer as f64 / 1024.0,
        hwm_peer as f64 / 1024.0,
        rss_ours as f64 / 1024.0,
        hwm_ours as f64 / 1024.0
    );
    stop.cancel();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the runtime");
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

        let ca = Ca::generate("bench-ca").expect("generating the bench CA");
        let admin = ca.issue_client("admin", &["system:masters"]).expect("issuing the admin certificate");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(admin.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parsing the admin certificate");
        let certs = PeerCerts(certs.into());
        let auth = Auth::local(&ca.pair().cert_pem).expect("local authentication from the bench CA");
        let api = AggregatedApi::new(cache.clone(), auth, CancellationToken::new());

        bench_list(&api, &certs, "Table", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json").await;
        bench_list(&api, &certs, "JSON", "application/json").await;
        let (rss2, hwm2) = memory();
        println!("after list runs: VmRSS {:.1} MiB, VmHWM {:.1} MiB", rss2 as f64 / 1024.0, hwm2 as f64 / 1024.0);

        if std::env::var_os("BENCH_NO_PEER").is_none() {
            bench_against_sample_apiserver(&cache).await;
        }

        bench_fanout(&api, &cache, &certs).await;
        let (rss3, hwm3) = memory();
        println!("after fan-out: VmRSS {:.1} MiB, VmHWM {:.1} MiB", rss3 as f64 / 1024.0, hwm3 as f64 / 1024.0);
    });
}
