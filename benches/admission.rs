//! Admission throughput and latency over TLS with keep-alive, side by side with a bare
//! hyper+rustls responder that returns a canned AdmissionReview (the ceiling) and with the peer
//! users would pick instead: controller-runtime's webhook server validating the same review with
//! the same rules in Go (`hack/bench-peers/admission`, built by `hack/bench-peers.sh`).
//!
//! Run: `cargo bench --bench admission` (optional env: BENCH_SECONDS per contender and
//! concurrency, default 10, split into BENCH_ROUNDS interleaved slices, default 20; BENCH_ONLY=
//! bare|canned|ours|controller-runtime runs one contender, for profiling; BENCH_CONC=1,16,64 picks concurrencies;
//! BENCH_HANDLER_ONLY=1 skips the socket runs; BENCH_NO_STAGES=1 skips the per-stage timings;
//! BENCH_CLIENT=own puts the load generator on a runtime of its own instead of the servers').
//! Built with the `bench` profile: whole-program LTO, as the shipped `dist` build.

#[path = "../tests/util/mod.rs"]
mod util;

mod peers;

/// The allocator of the `tailscale-gateway` binary, so figures match what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tailscale_gateway::runtime::{self, ServeArgs};
use tailscale_gateway::server::tls::{CertStore, certified_key, server_config};
use tokio::net::TcpListener;

const CANNED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

/// The ceiling: TLS, HTTP/1.1 keep-alive, read the body, answer a constant.
async fn bare_responder(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the bare responder");
    let addr = listener.local_addr().expect("bare responder's address");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(CANNED.as_bytes())))
                            .unwrap_or_default(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// Starts the controller-runtime peer on a free port with the certificate in `certs`, and waits
/// until it answers TLS.
async fn start_peer(
    bin: &std::path::Path,
    certs: &std::path::Path,
    logs: &std::path::Path,
) -> (util::KillOnDrop, SocketAddr) {
    let port = util::cluster::free_port();
    let log = std::fs::File::create(logs.join("controller-runtime.log")).expect("creating the peer's log");
    let child = std::process::Command::new(bin)
        .arg("-cert-dir")
        .arg(certs)
        .args(["-port", &port.to_string()])
        .stdout(log.try_clone().expect("cloning the log handle"))
        .stderr(log)
        .spawn()
        .expect("starting the controller-runtime peer");
    let mut peer = util::KillOnDrop(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = peer.0.try_wait() {
            let log = std::fs::read_to_string(logs.join("controller-runtime.log")).unwrap_or_default();
            panic!("the controller-runtime peer exited ({status}):\n{log}");
        }
        assert!(Instant::now() < deadline, "the controller-runtime peer did not listen on {addr} within 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (peer, addr)
}

/// The peer and ours must agree: both allow the bench's review, and both deny it with a broken
/// VIP port, a duplicate tag and a bad label value (so the peer is not timed answering blindly).
async fn check_peer_agrees(peer: SocketAddr, ours: SocketAddr, cfg: Arc<rustls::ClientConfig>, body: &[u8]) {
    let mut bad: serde_json::Value = serde_json::from_slice(body).expect("the bench's review is JSON");
    let object = &mut bad["request"]["object"];
    object["spec"]["vipService"]["ports"] = json!(["tcp:80", "tcp:70-90"]);
    object["spec"]["vipService"]["tags"] = json!(["tag:web", "tag:web"]);
    object["metadata"]["labels"]["app"] = json!("-bench");
    let bad = serde_json::to_vec(&bad).expect("encoding the broken review");
    for (name, addr) in [("controller-runtime", peer), ("tailscale-gateway", ours)] {
        let mut conn = util::Conn::open(addr, cfg.clone()).await;
        for (review, want) in [(body, true), (bad.as_slice(), false)] {
            let r = conn.request("POST", "/validate", Some("application/json"), review.to_vec()).await;
            let answer = r.json();
            assert_eq!(answer["response"]["allowed"], json!(want), "{name} answered {answer}");
            if !want {
                let message = answer["response"]["status"]["message"].as_str().unwrap_or_default().to_string();
                for field in ["spec.vipService.ports[1]", "spec.vipService.tags[1]", "metadata.labels"] {
                    assert!(message.contains(field), "{name} does not name {field}: {message}");
                }
            }
        }
    }
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

/// The median of each figure over rounds.
fn median(mut runs: Vec<Stats>) -> Stats {
    let mid = runs.len() / 2;
    let pick = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(mid).copied().unwrap_or_default()
    };
    let mut rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
    let mut p50: Vec<f64> = runs.iter().map(|r| r.p50.as_secs_f64()).collect();
    let mut p99: Vec<f64> = runs.iter().map(|r| r.p99.as_secs_f64()).collect();
    runs.clear();
    Stats {
        rps: pick(&mut rps),
        p50: Duration::from_secs_f64(pick(&mut p50)),
        p99: Duration::from_secs_f64(pick(&mut p99)),
    }
}

async fn load(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    concurrency: usize,
    seconds: f64,
    body: Arc<Vec<u8>>,
) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let cfg = cfg.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = util::Conn::open(addr, cfg).await;
            let mut lat = Vec::with_capacity(100_000);
            // Warm-up request, not measured.
            let _ = conn.request("POST", "/validate", Some("application/json"), body.to_vec()).await;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = conn.request("POST", "/validate", Some("application/json"), body.to_vec()).await;
                assert_eq!(r.status, 200);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Stats { rps: all.len() as f64 / seconds, p50: pick(0.50), p99: pick(0.99) }
}

/// Times the handler's stages one by one (each in a loop of its own, so caches are warm).
fn stages(body: &[u8], cache: &tailscale_gateway::cache::Cache, n: usize) {
    use tailscale_gateway::admission::{Decision, parse_review, respond};
    use tailscale_gateway::core::{Kind, Resource, validate::review};
    let time = |label: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        println!("  {label:<50} {:>6.2} us", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    };
    let Ok(req) = parse_review(body, false) else { panic!("bench body does not parse") };
    let object = match req.object {
        tailscale_gateway::admission::Payload::Raw(o) => o.get(),
        _ => panic!("bench body has no object"),
    };
    let Ok(res) = Resource::from_json_as(Kind::Services, object) else { panic!("bench object does not parse") };
    time("parse AdmissionReview, object kept raw", &mut || {
        std::hint::black_box(parse_review(std::hint::black_box(body), false).map(|r| r.uid.len()).unwrap_or_default());
    });
    time("parse raw object into TailscaleServices", &mut || {
        std::hint::black_box(Resource::from_json_as(Kind::Services, std::hint::black_box(object)).is_ok());
    });
    time("parse AdmissionReview and object in one pass", &mut || {
        std::hint::black_box(parse_review(std::hint::black_box(body), true).map(|r| r.uid.len()).unwrap_or_default());
    });
    time("rules + cache lookups", &mut || {
        std::hint::black_box(review(std::hint::black_box(&res), None, &*cache.read()).allowed());
    });
    time("encode response", &mut || {
        std::hint::black_box(
            respond(&req.uid, &Decision { allowed: true, ..Decision::default() }).map(|b| b.len()).unwrap_or_default(),
        );
    });
    // The same object as kube-apiserver sends it after `kubectl apply`: managedFields, the
    // last-applied annotation, server-set metadata, userInfo groups and options.
    let stored = realistic_review(object);
    println!("  as kube-apiserver sends it after kubectl apply ({} bytes):", stored.len());
    time("  one pass, metadata trimmed to what rules read", &mut || {
        std::hint::black_box(
            parse_review(std::hint::black_box(&stored), true).map(|r| r.uid.len()).unwrap_or_default(),
        );
    });
    time("  raw, then the full object type", &mut || {
        let r = parse_review(std::hint::black_box(&stored), false);
        let o = r.as_ref().ok().and_then(|r| match r.object {
            tailscale_gateway::admission::Payload::Raw(o) => Some(o.get()),
            _ => None,
        });
        std::hint::black_box(o.map(|o| Resource::from_json_as(Kind::Services, o).is_ok()));
    });
}

/// An AdmissionReview of `object` dressed as kube-apiserver sends it after `kubectl apply`.
fn realistic_review(object: &str) -> Vec<u8> {
    let mut object: serde_json::Value = serde_json::from_str(object).unwrap_or_default();
    let applied = object.to_string();
    let meta = &mut object["metadata"];
    meta["uid"] = json!("3f1c1a2e-8d51-4f7e-9a0b-6c2d5e4f7a81");
    meta["resourceVersion"] = json!("123456");
    meta["generation"] = json!(1);
    meta["creationTimestamp"] = json!("2026-11-22T07:00:00Z");
    meta["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": applied});
    meta["managedFields"] = json!([{
        "manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "gateway.tailscale.com/v1alpha1",
        "time": "2026-11-22T07:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                                    "f:labels": {".": {}, "f:app": {}}},
                     "f:spec": {".": {}, "f:loadBalancing": {".": {}, "f:healthCheck": {".": {}, "f:interval": {}, "f:path": {}},
                                                          "f:strategy": {}},
                                "f:selector": {".": {}, "f:matchLabels": {".": {}, "f:environment": {}, "f:service-type": {}}},
                                "f:vipService": {".": {}, "f:name": {}, "f:ports": {}, "f:tags": {}}}}
    }]);
    let mut review = util::review("CREATE", object, None);
    let request = &mut review["request"];
    request["requestKind"] = request["kind"].clone();
    request["requestResource"] = request["resource"].clone();
    request["name"] = json!("bench-svc");
    request["userInfo"] = json!({"username": "kubernetes-admin", "uid": "aws-iam-authenticator:123",
        "groups": ["system:masters", "system:authenticated"], "extra": {"accessKeyId": ["AKIAEXAMPLE"]}});
    request["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl-client-side-apply",
        "fieldValidation": "Strict"});
    serde_json::to_vec(&review).unwrap_or_default()
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the runtime");
    // BENCH_CLIENT=own runs the load generator on a runtime of its own (two threads, as a
    // separate process would), instead of beside the servers on theirs.
    let own_client = std::env::var("BENCH_CLIENT").is_ok_and(|c| c == "own");
    let client_rt = own_client.then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("load")
            .enable_all()
            .build()
            .expect("building the load generator's runtime")
    });
    let client = client_rt.as_ref().map(|rt| rt.handle().clone());
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let manifests = dir.path().join("m");
        std::fs::create_dir_all(&manifests).expect("creating the manifests directory");
        util::copy_examples(&manifests);
        let state = dir.path().join("state");
        let ours = runtime::start(ServeArgs::local(&manifests, &state, "127.0.0.1:0".parse().expect("a socket address")))
            .await
            .expect("starting tailscale-gateway in local mode");
        let ca = std::fs::read_to_string(state.join("ca.crt")).expect("reading the CA our server wrote");
        let cert = std::fs::read(state.join("tls.crt")).expect("reading the serving certificate our server wrote");
        let key = std::fs::read(state.join("tls.key")).expect("reading the serving key our server wrote");
        let tls = server_config(CertStore::new(certified_key(&cert, &key).expect("loading the serving certificate")))
            .expect("building the TLS server config");
        let ceiling = bare_responder(tls.clone()).await;
        // The peer: controller-runtime's webhook server, serving our certificate (tls.crt and
        // tls.key in the state directory, the file names it reads by default).
        let peer_bin = peers::build("controller-runtime-webhook", "CONTROLLER_RUNTIME_VERSION");
        let (_peer, peer_addr) = start_peer(&peer_bin, &state, dir.path()).await;
        // Our HTTPS server with a handler that only reads the body (as the webhook does) and
        // answers the canned review: separates server cost from the webhook's own work.
        let canned_app = tower::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let _ = tailscale_gateway::admission::read_json_body(req).await;
            Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                CANNED,
            )))
        });
        let canned_listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the canned server");
        let canned = canned_listener.local_addr().expect("canned server's address");
        let canned_stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(tailscale_gateway::server::serve(
            canned_listener,
            tls,
            canned_app,
            tailscale_gateway::server::Limits::default(),
            canned_stop.clone(),
        ));
        let cfg = util::client_config(&[&ca], None);
        let object = json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": "bench-svc", "namespace": "default", "labels": {"app": "bench"}},
            "spec": {"selector": {"matchLabels": {"service-type": "web", "environment": "production"}},
                     "vipService": {"name": "svc:bench-svc", "ports": ["tcp:80", "tcp:443"], "tags": ["tag:web"]},
                     "loadBalancing": {"strategy": "round-robin", "healthCheck": {"path": "/health", "interval": "10s"}}}});
        let body = Arc::new(serde_json::to_vec(&util::review("CREATE", object, None)).unwrap_or_default());
        let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
        check_peer_agrees(peer_addr, ours.https_addr, cfg.clone(), &body).await;
        println!("admission over TLS, keep-alive, {seconds}s per contender in {rounds} interleaved slices; req/s, p50, p99: medians of the slices; ratios: medians of the slices' ours/bare and ours/controller-runtime; body {} bytes; load generator on {}", body.len(), if own_client { "its own runtime" } else { "the servers' runtime" });
        println!(
            "{:>4} | {:>22} | {:>22} | {:>22} | {:>6} | {:>22} | {:>6}",
            "conc", "bare hyper+rustls", "our server, canned", "tailscale-gateway", "/bare", "controller-runtime", "/c-r"
        );
        let head = format!("{:>8} {:>6} {:>6}", "req/s", "p50us", "p99us");
        println!("{:>4} | {head} | {head} | {head} | {:>6} | {head} | {:>6}", "", "", "");
        // BENCH_HANDLER_ONLY=1 skips the socket runs (for profiling the handler).
        // BENCH_CONC=16 (comma-separated) picks the concurrencies.
        let socket_runs: Vec<usize> = if std::env::var_os("BENCH_HANDLER_ONLY").is_some() {
            Vec::new()
        } else {
            std::env::var("BENCH_CONC")
                .ok()
                .map(|c| c.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1, 16, 64])
        };
        // Contenders take turns in short slices, several rounds: a slow second of the machine hits
        // all three alike, and the median of the rounds is reported.
        // BENCH_ONLY=bare|canned|ours runs one contender (for profiling it alone).
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .and_then(|o| ["bare", "canned", "ours", "controller-runtime"].iter().position(|c| *c == o));
        for &conc in &socket_runs {
            let mut runs: [Vec<Stats>; 4] = Default::default();
            for _ in 0..rounds {
                for (i, addr) in [ceiling, canned, ours.https_addr, peer_addr].into_iter().enumerate() {
                    if only.is_some_and(|o| o != i) {
                        runs[i].push(Stats { rps: f64::NAN, p50: Duration::ZERO, p99: Duration::ZERO });
                        continue;
                    }
                    let job = load(addr, cfg.clone(), conc, seconds / rounds as f64, body.clone());
                    runs[i].push(match &client {
                        Some(client) => client.spawn(job).await.expect("load generator task"),
                        None => job.await,
                    });
                }
            }
            // Ratio: each round's ours/bare from adjacent slices, then the median of those, so a
            // slow stretch of the machine cancels out instead of landing on one contender.
            let paired = |a: &[Stats], b: &[Stats]| {
                let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.rps / b.rps).collect();
                r.sort_by(|a, b| a.total_cmp(b));
                r.get(r.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let ratio = paired(&runs[2], &runs[0]);
            let peer_ratio = paired(&runs[2], &runs[3]);
            let [c, f, o, p] = runs.map(median);
            let cell = |s: &Stats| format!("{:>8.0} {:>6} {:>6}", s.rps, s.p50.as_micros(), s.p99.as_micros());
            println!(
                "{conc:>4} | {} | {} | {} | {:>6.2} | {} | {:>6.2}",
                cell(&c),
                cell(&f),
                cell(&o),
                ratio,
                cell(&p),
                peer_ratio
            );
        }
        // The server's own view of those requests: mean time inside the webhook handler.
        if !socket_runs.is_empty() {
            let mut conn = util::Conn::open(ours.https_addr, cfg.clone()).await;
            let text = String::from_utf8_lossy(&conn.get("/metrics").await.body).into_owned();
            let total = |suffix: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(&format!("tailscale_gateway_admission_request_duration_seconds_{suffix}{{")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            let (sum, count) = (total("sum"), total("count"));
            if count > 0.0 {
                println!("mean time inside the validate handler under load: {:.1} us ({count} reviews)", sum / count * 1e6);
            }
        }
        // Server-side cost of our handler alone (no TLS, no HTTP), to show where time goes.
        let state = tailscale_gateway::admission::Admission::new(
            ours.cache.clone(),
            tailscale_gateway::metrics::AdmissionMetrics::register(&mut prometheus_client::registry::Registry::default()),
        );
        let n: usize = std::env::var("BENCH_HANDLER_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
        let t = Instant::now();
        for _ in 0..n {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/validate")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_vec()))
                .unwrap_or_default();
            let resp = tailscale_gateway::admission::handle(&state, tailscale_gateway::admission::Webhook::Validate, req).await;
            assert_eq!(resp.status(), 200);
        }
        println!("validate handler alone (parse, rules, cache lookup, encode): {:.1} us/review", t.elapsed().as_secs_f64() * 1e6 / n as f64);
        if std::env::var_os("BENCH_NO_STAGES").is_none() {
            stages(&body, &ours.cache, n);
        }
        canned_stop.cancel();
        ours.shutdown().await;
    });
}
