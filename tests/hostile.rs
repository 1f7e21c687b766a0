//! Regression tests of the hostile-input review (issue 17), against the real binary: peer-controlled
//! strings are clipped in logs; the extension port refuses calls with too many resources before
//! decoding them; the HTTPS port caps and times out connections while the health listener answers;
//! and a bounded soak: many idle TLS connections, then a fresh client is served.

mod util;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use tailscale_gateway::xds::pb::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tailscale_gateway::xds::pb::{ExtensionResource, PostClusterExtensionContext, PostClusterModifyRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_kind_in_a_grpc_call_makes_a_short_log_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("creating the folder");
    util::copy_examples(&manifests);
    let [https, xds] = util::cluster::free_ports();
    let server = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
        .args(["serve", "--local"])
        .arg(&manifests)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", &format!("127.0.0.1:{https}"), "--xds-addr", &format!("127.0.0.1:{xds}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting serve");
    let mut server = util::KillOnDrop(server);
    // Up to 30 s: this binary's other tests (19,000 connections) may share the two cores.
    let mut client = None;
    for _ in 0..300 {
        if let Ok(c) = EnvoyGatewayExtensionClient::connect(format!("http://127.0.0.1:{xds}")).await {
            client = Some(c);
            break;
        }
        assert!(server.0.try_wait().ok().flatten().is_none(), "serve exited before it listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("the extension server answers within 30 s");
    let kind = "K".repeat(10 * 1024 * 1024);
    let object =
        format!(r#"{{"apiVersion":"gateway.tailscale.com/v1alpha1","kind":"{kind}","metadata":{{"name":"x"}}}}"#);
    let request = PostClusterModifyRequest {
        cluster: Some(Cluster { name: "c".into(), ..Cluster::default() }),
        post_cluster_context: Some(PostClusterExtensionContext {
            backend_extension_resources: vec![ExtensionResource { unstructured_bytes: object.into_bytes() }],
        }),
    };
    // With a 20 MiB log line to write, the server stalled on its own stderr: time-boxed, so that fails.
    tokio::time::timeout(Duration::from_secs(20), client.post_cluster_modify(request))
        .await
        .expect("answered in time")
        .expect("a bad object does not fail the call");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.0.kill().expect("stopping serve");
    let mut log = String::new();
    server.0.stderr.take().expect("stderr").read_to_string(&mut log).expect("serve's log");
    let warning =
        log.lines().find(|l| l.contains("extension resource left unchanged")).expect("the bad object is logged");
    assert!(warning.contains(" bytes)"), "the clipped text says how long it was: {warning}");
    let longest = log.lines().map(str::len).max().unwrap_or_default();
    assert!(longest < 2048, "a log line of {longest} bytes");
}

/// The binary in local mode on the examples, with `extra` arguments, and where it serves.
struct Server {
    process: util::KillOnDrop,
    https: SocketAddr,
    xds: SocketAddr,
    health: SocketAddr,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("creating the folder");
        util::copy_examples(&manifests);
        let [https, xds, health] = util::cluster::free_ports().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let state = dir.path().join("state");
        let child = Command::new(env!("CARGO_BIN_EXE_tailscale-gateway"))
            .args(["serve", "--local"])
            .arg(&manifests)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &https.to_string(), "--xds-addr", &xds.to_string()])
            .args(["--health-addr", &health.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("creating the log file"))
            .spawn()
            .expect("starting serve");
        let process = util::KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(health).await.is_ok() && util::plain_get(health, "/readyz").await.contains(" 200 ") {
                break;
            }
            assert!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { process, https, xds, health, state, _dir: dir }
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        let ca = std::fs::read_to_string(self.state.join("ca.crt")).expect("the local CA");
        util::client_config(&[&ca], None)
    }

    /// What the server has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("serve.log")).expect("reading the server's log")
    }

    /// Peak resident memory of the server, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_default()
    }
}

/// One idle TLS connection (handshake done, no request sent).
async fn idle_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

/// Whether the server has closed `conn`: a read sees EOF or an error within `within`.
async fn closed(conn: &mut TlsStream<TcpStream>, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, conn.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// A raw gRPC unary call over HTTP/2 with `message` as the already-encoded request: the
/// `grpc-status` and `grpc-message` the server answered.
async fn raw_grpc(addr: SocketAddr, method: &str, message: &[u8]) -> (String, String) {
    let tcp = TcpStream::connect(addr).await.expect("connecting to the extension port");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("size").to_be_bytes());
    body.extend_from_slice(message);
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/envoygateway.extension.EnvoyGatewayExtension/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("the call is answered");
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let get = |name: &str| {
        trailers.get(name).or_else(|| headers.get(name)).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    (get("grpc-status"), get("grpc-message"))
}

/// Row 1: a 2 MB PostTranslateModify of 1,000,000 empty clusters took 14-16 s and 5 GB; it is
/// refused from its wire bytes, fast, with the count and the limit named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_empty_clusters_are_refused_fast_with_bounded_memory() {
    let server = Server::start(&[]).await;
    let before = server.peak_rss_kib();
    let message = b"\x12\x00".repeat(1_000_000);
    let started = Instant::now();
    let (status, text) = raw_grpc(server.xds, "PostTranslateModify", &message).await;
    let took = started.elapsed();
    let peak = server.peak_rss_kib();
    eprintln!("1,000,000 empty clusters: refused in {took:?}; peak RSS {before} KiB before, {peak} KiB after");
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {text}");
    let text = text.replace("%20", " ");
    assert!(text.contains("1000000 clusters") && text.contains("--xds-max-resources-per-call"), "{text}");
    assert!(peak < before + 64 * 1024, "peak RSS grew from {before} KiB to {peak} KiB");
    // A message over --xds-max-message-size is refused too, and a normal call still works.
    let (status, _) = raw_grpc(server.xds, "PostTranslateModify", &vec![0u8; 17 * 1024 * 1024]).await;
    assert_eq!(status, "8");
    let (status, text) = raw_grpc(server.xds, "PostTranslateModify", &b"\x12\x00".repeat(1000)).await;
    assert_eq!(status, "0", "{text}");
}

/// Row 1, the lists the per-list limit does not count: one cluster of 8,000,000 empty health
/// checks fits in a 16 MB message and would decode to about 21 GB; its decoded size is estimated
/// from the wire bytes and the call refused, naming --xds-max-decoded-size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_million_empty_health_checks_are_refused_before_decoding() {
    let server = Server::start(&[]).await;
    let before = server.peak_rss_kib();
    let checks = b"\x42\x00".repeat(8_000_000);
    let mut message = vec![0x12];
    let mut len = checks.len();
    while len >= 0x80 {
        message.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    message.push(len as u8);
    message.extend_from_slice(&checks);
    let started = Instant::now();
    let (status, text) = raw_grpc(server.xds, "PostTranslateModify", &message).await;
    let peak = server.peak_rss_kib();
    eprintln!(
        "8,000,000 empty health checks ({} bytes): refused in {:?}; peak RSS {before} KiB before, {peak} KiB after",
        message.len(),
        started.elapsed()
    );
    assert_eq!(status, "8", "RESOURCE_EXHAUSTED: {text}");
    let text = text.replace("%20", " ");
    assert!(text.contains("--xds-max-decoded-size (512 MiB)"), "{text}");
    // The body is held once (16 MB) and walked, never decoded.
    assert!(peak < before + 64 * 1024, "peak RSS grew from {before} KiB to {peak} KiB");
    let (status, text) = raw_grpc(server.xds, "PostTranslateModify", &b"\x12\x00".repeat(1000)).await;
    assert_eq!(status, "0", "{text}");
}

/// Row 6: a peer that repeats a call the server warns about gets one warning per interval, which
/// says how many it left out, not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_warnings_are_rate_limited() {
    let server = Server::start(&[]).await;
    for _ in 0..200 {
        let (status, _) = raw_grpc(server.xds, "PostTranslateModify", &b"\x12\x00".repeat(30_000)).await;
        assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
    }
    // Denials are logged at most once a second.
    let mut conn = util::Conn::open(server.https, server.tls()).await;
    let bad = serde_json::json!({
        "apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
        "metadata": {"name": "bad", "namespace": "default"}, "spec": {}
    });
    let started = Instant::now();
    for _ in 0..200 {
        let answer = conn.post_json("/validate", &util::review("CREATE", bad.clone(), None)).await.json();
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
    }
    let seconds = started.elapsed().as_secs() as usize;
    let log = server.log();
    let refused = log.lines().filter(|l| l.contains("extension call refused")).count();
    assert_eq!(refused, 1, "one warning for 200 refused calls within the interval:\n{log}");
    let denied = log.lines().filter(|l| l.contains("denied")).count();
    assert!((1..=seconds + 1).contains(&denied), "{denied} denials logged in {seconds} s:\n{log}");
    assert!(log.contains("left_out"), "{log}");
}

/// Row 2: the HTTPS port holds at most --max-connections; more are closed at once instead of
/// failing accept, connections that send nothing are closed after --header-read-timeout, and
/// the health listener answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_port_caps_and_times_out_connections_and_health_still_answers() {
    let server = Server::start(&["--max-connections", "50", "--header-read-timeout", "2s"]).await;
    let cfg = server.tls();
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(idle_tls(server.https, cfg.clone()).await.expect("a connection within the limit"));
    }
    // Over the limit: closed at once (before or right after the handshake).
    let mut refused = 0;
    for _ in 0..20 {
        match idle_tls(server.https, cfg.clone()).await {
            Err(_) => refused += 1,
            Ok(mut conn) => refused += usize::from(closed(&mut conn, Duration::from_millis(500)).await),
        }
    }
    assert_eq!(refused, 20, "connections over --max-connections are closed");
    for path in ["/healthz", "/livez", "/readyz"] {
        let resp = util::plain_get(server.health, path).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    }
    // The idle ones are closed after --header-read-timeout; then HTTPS serves again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for conn in &mut held {
        assert!(closed(conn, Duration::from_secs(2)).await, "an idle connection outlived --header-read-timeout");
    }
    let mut fresh = util::Conn::open(server.https, cfg).await;
    assert_eq!(fresh.get("/healthz").await.status, 200);
}

/// Soak (bounded): 2,000 idle TLS connections held for 3 s; a fresh client then gets /healthz and
/// a webhook review answered, and the health listener answered all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_thousand_idle_tls_connections_then_a_fresh_client_is_served() {
    let server = Server::start(&[]).await;
    let cfg = server.tls();
    let started = Instant::now();
    let mut held = Vec::new();
    for chunk in 0..20 {
        let opened = futures::future::join_all((0..100).map(|_| idle_tls(server.https, cfg.clone()))).await;
        for conn in opened {
            held.push(conn.unwrap_or_else(|e| panic!("connection {} of 2,000 (batch {chunk}): {e}", held.len())));
        }
    }
    eprintln!("2,000 idle TLS connections opened in {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(util::plain_get(server.health, "/readyz").await.starts_with("HTTP/1.1 200"));
    let mut fresh = util::Conn::open(server.https, cfg).await;
    assert_eq!(fresh.get("/healthz").await.status, 200);
    let object = serde_json::json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
                                    "metadata": {"name": "soak"}, "spec": {"oauthSecretRef": {"name": "oauth"}}});
    let resp = fresh.post_json("/validate", &util::review("CREATE", object, None)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let mut still_open = 0;
    for conn in &mut held {
        still_open += usize::from(!closed(conn, Duration::from_millis(1)).await);
    }
    assert_eq!(still_open, 2000, "idle connections within the limit and the timeouts stay open");
    eprintln!("soak done in {:?}; server peak RSS {} KiB", started.elapsed(), server.peak_rss_kib());
}

/// Row 8: in local mode /metrics stays open (loopback only); in a cluster it goes through the
/// delegated SubjectAccessReview (tests/real_cluster.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_serves_metrics_without_credentials() {
    let server = Server::start(&[]).await;
    let mut conn = util::Conn::open(server.https, server.tls()).await;
    let resp = conn.get("/metrics").await;
    assert_eq!(resp.status, 200);
    assert!(String::from_utf8_lossy(&resp.body).ends_with("# EOF\n"), "{}", String::from_utf8_lossy(&resp.body));
    // The health listener serves nothing else.
    assert!(util::plain_get(server.health, "/metrics").await.starts_with("HTTP/1.1 404"));
}

/// The issue's row 2 at full size (ignored in plain `cargo test`; `hack/test.sh`, and so CI, runs it
/// with `--include-ignored`): 19,000
/// TLS connections against the default --max-connections (4,096) within a 20,000 open-file limit.
/// The server holds 4,096, closes the rest at once, the health listener answers throughout, and
/// once --header-read-timeout has closed the idle ones a fresh HTTPS client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "opens 19,000 connections: run hack/test.sh (CI does)"]
async fn nineteen_thousand_idle_tls_connections() {
    let server = Server::start(&[]).await;
    let cfg = server.tls();
    let started = Instant::now();
    let (mut held, mut refused) = (Vec::new(), 0usize);
    for _ in 0..95 {
        let opened = futures::future::join_all((0..200).map(|_| idle_tls(server.https, cfg.clone()))).await;
        for conn in opened {
            match conn {
                Ok(conn) => held.push(conn),
                Err(_) => refused += 1,
            }
        }
    }
    let mut open = 0;
    for conn in &mut held {
        open += usize::from(!closed(conn, Duration::from_millis(1)).await);
    }
    eprintln!(
        "19,000 attempts in {:?}: {open} open, {} closed after the handshake, {refused} refused during it",
        started.elapsed(),
        held.len() - open
    );
    let probe = Instant::now();
    let readyz = util::plain_get(server.health, "/readyz").await;
    eprintln!("/readyz on the health listener with the HTTPS port full: {:?}", probe.elapsed());
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(open <= tailscale_gateway::server::DEFAULT_MAX_CONNECTIONS, "{open} open");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut fresh = util::Conn::open(server.https, cfg).await;
    assert_eq!(fresh.get("/healthz").await.status, 200);
    eprintln!("peak RSS {} KiB", server.peak_rss_kib());
}

/// Row 2's timeouts: a connection that never finishes its handshake, and a kept-alive one with no
/// request in flight, are closed; a watch (a response still streaming) is not idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_idle_timeouts_close_connections_but_not_a_watch() {
    use tokio::io::AsyncWriteExt;
    let limits = ["--tls-handshake-timeout", "1s", "--header-read-timeout", "1s", "--idle-timeout", "1s"];
    let server = Server::start(&limits).await;
    // No handshake at all.
    let mut silent = TcpStream::connect(server.https).await.expect("connecting");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "a silent connection outlived --tls-handshake-timeout: {read:?}");
    // One request, then idle.
    let mut kept = idle_tls(server.https, server.tls()).await.expect("a connection");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("writing");
    let mut got = vec![0u8; 512];
    let n = kept.read(&mut got).await.expect("the response");
    assert!(got[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..n]));
    assert!(closed(&mut kept, Duration::from_secs(3)).await, "an idle connection outlived --idle-timeout");
    // A watch stays open past the idle timeout.
    let read = |name: &str| std::fs::read_to_string(server.state.join(name)).expect("local PKI");
    let (ca, cert, key) = (read("ca.crt"), read("client.crt"), read("client.key"));
    let cfg = util::client_config(&[&ca], Some((&cert, &key)));
    let mut watch = idle_tls(server.https, cfg).await.expect("a connection");
    let path = "/apis/tailnet.gateway.tailscale.com/v1alpha1/tailscaledevices?watch=true";
    watch.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.expect("writing");
    let n = watch.read(&mut got).await.expect("the watch's headers");
    assert!(got[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..n]));
    // Read what the watch sends for 2.5 s (initial events, then nothing): it must not end.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(read) = tokio::time::timeout_at(until, watch.read(&mut got)).await {
        assert!(matches!(read, Ok(n) if n > 0), "--idle-timeout cut a watch: {read:?}");
    }
}

/// A kept-alive HTTP/1 connection outlives --header-read-timeout between requests (it is idle,
/// not slow) and is closed after --idle-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_lasts_the_idle_timeout_not_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&["--header-read-timeout", "1s", "--idle-timeout", "3s"]).await;
    let mut conn = idle_tls(server.https, server.tls()).await.expect("a connection");
    let mut got = vec![0u8; 512];
    for _ in 0..2 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("writing");
        let n = conn.read(&mut got).await.expect("the response");
        assert!(got[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got[..n]));
        // Idle for twice the header timeout: still open.
        assert!(!closed(&mut conn, Duration::from_secs(2)).await, "closed after --header-read-timeout");
    }
    assert!(closed(&mut conn, Duration::from_secs(3)).await, "open after --idle-timeout");
}
