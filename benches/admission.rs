//! Admission throughput and latency over TLS with keep-alive, side by side with a bare
//! hyper+rustls responder that returns a canned AdmissionReview (the ceiling).
//!
//! Run: `cargo bench --bench admission` (optional env: BENCH_SECONDS per contender and
//! concurrency, default 10, split into BENCH_ROUNDS interleaved slices, default 20; BENCH_ONLY=
//! bare|canned|ours runs one contender, for profiling; BENCH_CONC=1,16,64 picks concurrencies;
//! BENCH_HANDLER_ONLY=1 skips the socket runs; BENCH_NO_STAGES=1 skips the per-stage timings;
//! BENCH_CLIENT=own puts the load generator on a runtime of its own instead of the servers').
//! Built with the `bench` profile: whole-program LTO, as the shipped `dist` build.

#[path = "../tests/util/mod.rs"]
mod util;

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    // BENCH_CLIENT=own runs the load generator on a runtime of its own (two threads, as a
    // separate process would), instead of beside the servers on theirs.
    let own_client = std::env::var("BENCH_CLIENT").is_ok_and(|c| c == "own");
    let client_rt = own_client.then(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("load")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let client = client_rt.as_ref().map(|rt| rt.handle().clone());
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let manifests = dir.path().join("m");
        std::fs::create_dir_all(&manifests).unwrap_or_else(|e| panic!("{e}"));
        util::copy_examples(&manifests);
        let state = dir.path().join("state");
        let ours = runtime::start(ServeArgs::local(&manifests, &state, "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"))))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let ca = std::fs::read_to_string(state.join("ca.crt")).unwrap_or_else(|e| panic!("{e}"));
        let cert = std::fs::read(state.join("tls.crt")).unwrap_or_else(|e| panic!("{e}"));
        let key = std::fs::read(state.join("tls.key")).unwrap_or_else(|e| panic!("{e}"));
        let tls = server_config(CertStore::new(certified_key(&cert, &key).unwrap_or_else(|e| panic!("{e}"))))
            .unwrap_or_else(|e| panic!("{e}"));
        let ceiling = bare_responder(tls.clone()).await;
        // Our HTTPS server with a handler that only reads the body (as the webhook does) and
        // answers the canned review: separates server cost from the webhook's own work.
        let canned_app = tower::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let _ = tailscale_gateway::admission::read_json_body(req).await;
            Ok::<_, std::convert::Infallible>(axum::response::IntoResponse::into_response((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                CANNED,
            )))
        });
        let canned_listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let canned = canned_listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
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
        println!("admission over TLS, keep-alive, {seconds}s per contender in {rounds} interleaved slices; req/s, p50, p99: medians of the slices; ratio: median of the slices' ours/bare; body {} bytes; load generator on {}", body.len(), if own_client { "its own runtime" } else { "the servers' runtime" });
        println!("{:>4} | {:>22} | {:>22} | {:>22} | {:>6}", "conc", "bare hyper+rustls", "our server, canned", "tailscale-gateway", "ratio");
        println!(
            "{:>4} | {:>8} {:>6} {:>6} | {:>8} {:>6} {:>6} | {:>8} {:>6} {:>6} | {:>6}",
            "", "req/s", "p50us", "p99us", "req/s", "p50us", "p99us", "req/s", "p50us", "p99us", ""
        );
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
        let only = std::env::var("BENCH_ONLY").ok().and_then(|o| ["bare", "canned", "ours"].iter().position(|c| *c == o));
        for &conc in &socket_runs {
            let mut runs: [Vec<Stats>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..rounds {
                for (i, addr) in [ceiling, canned, ours.https_addr].into_iter().enumerate() {
                    if only.is_some_and(|o| o != i) {
                        runs[i].push(Stats { rps: f64::NAN, p50: Duration::ZERO, p99: Duration::ZERO });
                        continue;
                    }
                    let job = load(addr, cfg.clone(), conc, seconds / rounds as f64, body.clone());
                    runs[i].push(match &client {
                        Some(client) => client.spawn(job).await.unwrap_or_else(|e| panic!("{e}")),
                        None => job.await,
                    });
                }
            }
            // Ratio: each round's ours/bare from adjacent slices, then the median of those, so a
            // slow stretch of the machine cancels out instead of landing on one contender.
            let mut paired: Vec<f64> = runs[2].iter().zip(&runs[0]).map(|(o, c)| o.rps / c.rps).collect();
            paired.sort_by(|a, b| a.total_cmp(b));
            let ratio = paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN);
            let [c, f, o] = runs.map(median);
            println!(
                "{conc:>4} | {:>8.0} {:>6} {:>6} | {:>8.0} {:>6} {:>6} | {:>8.0} {:>6} {:>6} | {:>6.2}",
                c.rps,
                c.p50.as_micros(),
                c.p99.as_micros(),
                f.rps,
                f.p50.as_micros(),
                f.p99.as_micros(),
                o.rps,
                o.p50.as_micros(),
                o.p99.as_micros(),
                ratio
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
