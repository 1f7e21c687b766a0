//! The real Tailscale API client against the local fake API, over real sockets: OAuth tokens,
//! every endpoint, retries on 429/500/timeouts, credential errors, and no secret in any error or
//! log line.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tailscale_gateway::tailscale::client::{Client, ClientConfig};
use tailscale_gateway::tailscale::fake::{Call, FakeOptions, FakeTailscale, Fault};
use tailscale_gateway::tailscale::{ApiError, AuthKeyRequest, TailscaleApi, VipService};

async fn fake() -> FakeTailscale {
    fake_with(FakeOptions::default()).await
}

async fn fake_with(opts: FakeOptions) -> FakeTailscale {
    FakeTailscale::start_with(opts).await.expect("starting the fake Tailscale API")
}

fn client(cfg: ClientConfig) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(cfg).expect("building the Tailscale API client")
}

fn ok<T>(r: Result<T, ApiError>) -> T {
    r.expect("calling the Tailscale API")
}

const TOKEN: &str = "/api/v2/oauth/token";
const DEVICES: &str = "/api/v2/tailnet/-/devices";

#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let fake = fake().await;
    let c = client(fake.client_config());
    ok(c.list_devices().await);
    ok(c.list_vip_services().await);
    ok(c.list_devices().await);
    assert_eq!(fake.tokens_issued(), 1);
    assert_eq!(fake.count("POST", TOKEN), 1);
    assert_eq!(fake.count("GET", DEVICES), 2);
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let fake = fake_with(FakeOptions { token_lifetime: Duration::from_secs(1), ..FakeOptions::default() }).await;
    let c = client(fake.client_config());
    ok(c.list_devices().await);
    // Refresh is due at 90% of the lifetime: before the server-side expiry, so no 401 happens.
    tokio::time::sleep(Duration::from_millis(950)).await;
    ok(c.list_devices().await);
    assert_eq!(fake.tokens_issued(), 2);
    let calls: Vec<String> = fake.calls().iter().map(|c| format!("{} {}", c.method, c.path)).collect();
    assert_eq!(
        calls,
        vec![format!("POST {TOKEN}"), format!("GET {DEVICES}"), format!("POST {TOKEN}"), format!("GET {DEVICES}"),],
        "a refresh, not a rejected call followed by a retry"
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_token_fetch() {
    let fake = fake().await;
    let c = Arc::new(client(fake.client_config()));
    // Slow token endpoint so every caller is waiting while the first fetch is in flight.
    fake.inject_token(Fault::Slow(Duration::from_millis(200)), 1);
    let calls = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.list_devices().await.map(|d| d.len()) })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(ok(r.expect("joining a list_devices task")), 0);
    }
    assert_eq!(fake.tokens_issued(), 1);
    assert_eq!(fake.count("GET", DEVICES), 8);
}

#[tokio::test]
async fn a_rejected_token_is_dropped_and_fetched_again_once() {
    let fake = fake().await;
    let c = client(fake.client_config());
    ok(c.list_devices().await);
    fake.revoke_tokens();
    ok(c.list_devices().await);
    assert_eq!(fake.tokens_issued(), 2);
    assert_eq!(fake.count("GET", DEVICES), 3, "the 401 call, and its retry with the new token");
}

#[tokio::test]
async fn a_token_rejected_twice_is_an_unauthorized_error() {
    // Tokens that are already expired when issued: every call is rejected.
    let fake = fake_with(FakeOptions { token_lifetime: Duration::ZERO, ..FakeOptions::default() }).await;
    let c = client(fake.client_config());
    let err = c.list_devices().await.err().unwrap_or_else(|| panic!("expired tokens must fail"));
    assert!(matches!(err, ApiError::Unauthorized(_)), "{err:?}");
    assert!(!err.is_transient());
    let text = format!("{err} {err:?}");
    assert!(text.contains("GET /api/v2/tailnet/-/devices"), "{text}");
    assert!(text.contains("invalid or expired access token"), "{text}");
    assert!(!text.contains("tskey-api"), "no token in errors: {text}");
    assert_eq!(fake.count("GET", DEVICES), 2, "retried exactly once");
}

#[tokio::test]
async fn wrong_credentials_are_an_unauthorized_error_without_the_secret() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.client_secret = "wrong-secret-0xdeadbeef".into();
    let c = client(cfg);
    let err = c.list_devices().await.err().unwrap_or_else(|| panic!("wrong secret must fail"));
    assert!(matches!(err, ApiError::Unauthorized(_)), "{err:?}");
    let text = format!("{err} {err:?} {c:?}");
    assert!(text.contains("POST /api/v2/oauth/token"), "{text}");
    assert!(text.contains("invalid client credentials"), "{text}");
    assert!(!text.contains("0xdeadbeef"), "{text}");
    assert_eq!(fake.count("POST", TOKEN), 1, "credential errors are not retried");
    assert_eq!(fake.count("GET", DEVICES), 0);
}

#[tokio::test]
async fn devices_list_get_and_delete() {
    let fake = fake().await;
    let a = fake.register_device("web-proxy-east-0", &["tag:k8s-proxy"]);
    let b = fake.register_device("web-proxy-east-1", &["tag:k8s-proxy"]);
    let c = client(fake.client_config());

    let listed = ok(c.list_devices().await);
    assert_eq!(listed, vec![a.clone(), b.clone()]);
    assert_eq!(ok(c.get_device(&a.id).await), Some(a.clone()));
    assert_eq!(ok(c.get_device("no-such-device").await), None);

    ok(c.delete_device(&a.id).await);
    ok(c.delete_device(&a.id).await); // already gone: still Ok
    assert_eq!(fake.devices(), vec![b.clone()]);

    let api_calls: Vec<Call> = fake.calls().into_iter().filter(|c| c.path != TOKEN).collect();
    let dev = format!("/api/v2/device/{}", a.id);
    let q = Some("fields=all".to_string());
    let expect =
        |method: &str, path: &str, query: Option<String>| Call { method: method.into(), path: path.into(), query };
    assert_eq!(
        api_calls,
        vec![
            expect("GET", DEVICES, q.clone()),
            expect("GET", &dev, q.clone()),
            expect("GET", "/api/v2/device/no-such-device", q),
            expect("DELETE", &dev, None),
            expect("DELETE", &dev, None),
        ]
    );

    // A device that leaves the tailnet on its own is gone for the client too.
    assert!(fake.remove_device(&b.id));
    assert!(!fake.remove_device(&b.id));
    assert_eq!(ok(c.get_device(&b.id).await), None);
    assert!(ok(c.list_devices().await).is_empty());
}

#[tokio::test]
async fn auth_keys_are_created_with_the_requested_capabilities() {
    let fake = fake().await;
    let c = client(fake.client_config());
    let req = AuthKeyRequest {
        tags: vec!["tag:k8s-proxy".into(), "tag:web-proxy".into()],
        reusable: false,
        ephemeral: false,
        preauthorized: true,
        description: "web-proxy-east-0".into(),
        expiry: Some(Duration::from_secs(3600)),
    };
    let key = ok(c.create_auth_key(&req).await);
    let issued = fake.auth_keys();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].request, req);
    assert_eq!(key.id, issued[0].id);
    assert_eq!(key.key, issued[0].key);
    assert!(key.key.starts_with("tskey-auth-"));
    assert!(key.expires.is_some());
    assert!(!format!("{key:?} {:?}", issued[0]).contains(&key.key), "Debug redacts keys");
    assert_eq!(fake.count("POST", "/api/v2/tailnet/-/keys"), 1);

    // The API's message reaches the error, with method and path.
    let untagged = AuthKeyRequest { tags: vec![], ..req };
    let err = c.create_auth_key(&untagged).await.err().unwrap_or_else(|| panic!("untagged keys are refused"));
    match &err {
        ApiError::Status { method, path, status, message } => {
            assert_eq!((method.as_str(), path.as_str(), *status), ("POST", "/api/v2/tailnet/-/keys", 400));
            assert!(message.contains("tags"), "{message}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(!err.is_transient());
}

#[tokio::test]
async fn vip_services_get_put_list_delete() {
    let fake = fake().await;
    let c = client(fake.client_config());
    let path = "/api/v2/tailnet/-/vip-services/svc:web";

    assert_eq!(ok(c.get_vip_service("svc:web").await), None);

    let mut svc = VipService {
        name: "svc:web".into(),
        comment: "managed by tailscale-gateway".into(),
        annotations: [("tailscale.com/owner-references".to_string(), "{}".to_string())].into(),
        ports: vec!["tcp:80".into(), "tcp:443".into()],
        tags: vec!["tag:web-service".into()],
        ..VipService::default()
    };
    ok(c.put_vip_service(&svc).await);
    let created = ok(c.get_vip_service("svc:web").await).unwrap_or_else(|| panic!("created"));
    assert_eq!(created.addrs.len(), 2, "addresses are allocated on create");
    assert_eq!(created.ports, svc.ports);
    assert_eq!(created.annotations, svc.annotations);

    // An update must resend the allocated addresses; the API refuses one that does not.
    svc.ports = vec!["tcp:443".into()];
    let err = c.put_vip_service(&svc).await.err().unwrap_or_else(|| panic!("update without addrs"));
    assert!(err.to_string().contains(&format!("PUT {path}: HTTP 400")), "{err}");
    assert!(err.to_string().contains("addrs"), "{err}");
    svc.addrs = created.addrs.clone();
    ok(c.put_vip_service(&svc).await);
    assert_eq!(ok(c.list_vip_services().await), vec![svc.clone()]);

    ok(c.delete_vip_service("svc:web").await);
    ok(c.delete_vip_service("svc:web").await); // already gone: still Ok
    assert!(fake.vip_services().is_empty());
    assert_eq!(fake.count("PUT", path), 3);
    assert_eq!(fake.count("GET", path), 2);
    assert_eq!(fake.count("DELETE", path), 2);
    assert_eq!(fake.count("GET", "/api/v2/tailnet/-/vip-services"), 1);
}

#[tokio::test]
async fn a_named_tailnet_and_odd_names_are_percent_encoded() {
    let fake = fake_with(FakeOptions { tailnet: "user@example.com".into(), ..FakeOptions::default() }).await;
    let mut cfg = fake.client_config();
    cfg.tailnet = "user@example.com".into();
    let c = client(cfg.clone());
    ok(c.list_devices().await);
    assert_eq!(fake.count("GET", "/api/v2/tailnet/user@example.com/devices"), 1);
    assert_eq!(ok(c.get_vip_service("svc:a b").await), None);
    assert_eq!(fake.count("GET", "/api/v2/tailnet/user@example.com/vip-services/svc:a%20b"), 1);

    cfg.tailnet = "other.example.com".into();
    let err = client(cfg).list_devices().await.err().unwrap_or_else(|| panic!("unknown tailnet"));
    assert!(matches!(err, ApiError::Status { status: 404, .. }), "{err:?}");
    assert!(err.to_string().contains("tailnet not found"), "{err}");
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_retry_after_delay() {
    let fake = fake().await;
    let c = client(fake.client_config());
    ok(c.list_devices().await); // token fetched beforehand
    fake.inject(Fault::TooManyRequests { retry_after_secs: 1 }, 1);
    let started = Instant::now();
    fake.register_device("a", &["tag:x"]);
    assert_eq!(ok(c.list_devices().await).len(), 1);
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(fake.count("GET", DEVICES), 3);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let fake = fake().await;
    let c = client(fake.client_config());
    fake.inject(Fault::ServerError, 2);
    ok(c.put_vip_service(&VipService { name: "svc:db".into(), ..VipService::default() }).await);
    assert_eq!(fake.count("PUT", "/api/v2/tailnet/-/vip-services/svc:db"), 3);
    assert_eq!(fake.vip_services().len(), 1, "created once");
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_retry_budget() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.max_retries = 2;
    let c = client(cfg);
    fake.inject(Fault::ServerError, 10);
    let err = c.list_vip_services().await.err().unwrap_or_else(|| panic!("must fail"));
    assert!(err.is_transient());
    assert_eq!(err.to_string(), "tailscale API GET /api/v2/tailnet/-/vip-services: HTTP 500: injected server error");
    assert_eq!(fake.count("GET", "/api/v2/tailnet/-/vip-services"), 3, "1 attempt + 2 retries");
}

#[tokio::test]
async fn token_endpoint_errors_are_retried_too() {
    let fake = fake().await;
    let c = client(fake.client_config());
    fake.inject_token(Fault::ServerError, 1);
    fake.inject_token(Fault::TooManyRequests { retry_after_secs: 0 }, 1);
    ok(c.list_devices().await);
    assert_eq!(fake.count("POST", TOKEN), 3);
    assert_eq!(fake.tokens_issued(), 1);
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.request_timeout = Duration::from_millis(300);
    let c = client(cfg);
    ok(c.list_devices().await);
    fake.inject(Fault::Slow(Duration::from_secs(2)), 1);
    let started = Instant::now();
    ok(c.list_devices().await);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "timed out first: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "did not wait for the slow answer: {elapsed:?}");
    assert_eq!(fake.count("GET", DEVICES), 3);
}

#[tokio::test]
async fn persistent_timeouts_are_a_transport_error() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    cfg.request_timeout = Duration::from_millis(100);
    cfg.max_retries = 1;
    let c = client(cfg);
    ok(c.list_devices().await);
    fake.inject(Fault::Slow(Duration::from_secs(1)), 2);
    let err = c.get_device("123").await.err().unwrap_or_else(|| panic!("must time out"));
    assert!(matches!(err, ApiError::Transport(_)), "{err:?}");
    assert!(err.is_transient());
    let text = err.to_string();
    assert!(text.contains("GET /api/v2/device/123") && text.contains("timed out"), "{text}");
}

#[tokio::test]
async fn an_unreachable_api_is_a_transport_error() {
    let fake = fake().await;
    let mut cfg = fake.client_config();
    drop(fake); // nothing listens on that port any more
    cfg.max_retries = 1;
    let err = client(cfg).list_devices().await.err().unwrap_or_else(|| panic!("must fail"));
    assert!(matches!(err, ApiError::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("POST /api/v2/oauth/token"), "{err}");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = fake().await;
    let cfg = fake.client_config();
    let secret = cfg.client_secret.clone();
    let c = client(cfg);
    fake.inject(Fault::ServerError, 1);
    let key = ok(c
        .create_auth_key(&AuthKeyRequest { tags: vec!["tag:a".into()], preauthorized: true, ..Default::default() })
        .await);
    fake.revoke_tokens();
    ok(c.list_devices().await);

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(logs.contains("retrying"), "the logs were captured: {logs}");
    assert!(!logs.contains(&secret), "client secret logged");
    assert!(!logs.contains(&key.key), "auth key logged");
    assert!(!logs.contains("tskey-api"), "access token logged");
}
