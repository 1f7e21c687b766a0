//! The aggregated API at the HTTP level: delegated authentication (front-proxy trust), a
//! SubjectAccessReview denial (kube's API calls answered by a tower-test mock), local mTLS, and
//! watch resumption and `410 Gone`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};
use tailscale_gateway::aggregated::auth::{Auth, AuthnConfig, Delegated};
use tailscale_gateway::aggregated::{AggregatedApi, router};
use tailscale_gateway::cache::Cache;
use tailscale_gateway::core::Resource;
use tailscale_gateway::pki::Ca;
use tailscale_gateway::server::PeerCerts;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const GV: &str = "/apis/tailnet.gateway.tailscale.com/v1alpha1";

type MockHandle = tower_test::mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;

fn chain(pem: &str) -> PeerCerts {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("parsing the test certificate chain");
    PeerCerts(certs.into())
}

fn ca(name: &str) -> Ca {
    Ca::generate(name).unwrap_or_else(|e| panic!("generating {name}: {e}"))
}

fn endpoints(name: &str, online: bool) -> Resource {
    Resource::from_value(json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleEndpoints",
        "metadata": {"name": name, "namespace": "default", "labels": {"tier": "web"}},
        "spec": {"tailnet": "corp"},
        "status": {"devices": [{"hostname": format!("{name}-0"), "nodeID": format!("n-{name}"), "online": online,
            "tailscaleIP": "100.64.0.1"}]}}))
    .expect("building the TailscaleEndpoints resource")
}

struct Delegation {
    front_proxy: Ca,
    client_ca: Ca,
    api: AggregatedApi,
    mock: MockHandle,
}

fn delegation(cache: Cache) -> Delegation {
    let front_proxy = ca("front-proxy-ca");
    let client_ca = ca("client-ca");
    let (service, mock) = tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
    let client = kube::Client::new(service, "default");
    let delegated = Arc::new(Delegated::new(client));
    let data = BTreeMap::from([
        ("requestheader-client-ca-file".to_string(), front_proxy.pair().cert_pem.clone()),
        ("requestheader-allowed-names".to_string(), "[\"front-proxy-client\"]".to_string()),
        ("requestheader-username-headers".to_string(), "[\"X-Remote-User\"]".to_string()),
        ("requestheader-group-headers".to_string(), "[\"X-Remote-Group\"]".to_string()),
        ("requestheader-extra-headers-prefix".to_string(), "[\"X-Remote-Extra-\"]".to_string()),
        ("client-ca-file".to_string(), client_ca.pair().cert_pem.clone()),
    ]);
    delegated.set_config(AuthnConfig::from_data(&data).expect("parsing the requestheader authentication config"));
    let api = AggregatedApi::new(cache, Auth::Delegated(delegated), CancellationToken::new());
    Delegation { front_proxy, client_ca, api, mock }
}

fn request(path: &str, certs: PeerCerts, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut req = builder.body(Body::empty()).expect("building the request");
    req.extensions_mut().insert(certs);
    req
}

async fn send(api: &AggregatedApi, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(api.clone()).oneshot(req).await.unwrap_or_else(|e| match e {});
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn remote_user_header_from_untrusted_certificate_is_rejected() {
    let d = delegation(Cache::default());
    let stranger = ca("stranger-ca")
        .issue_client("front-proxy-client", &[])
        .expect("issuing a client certificate from a stranger CA");
    let headers = [("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")];
    let (status, body) = send(&d.api, request(GV, chain(&stranger.cert_pem), &headers)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "Unauthorized");

    // A front-proxy-CA certificate whose CN is not allowed may not speak for others either.
    let wrong_cn = d
        .front_proxy
        .issue_client("not-the-aggregator", &[])
        .expect("issuing a front-proxy client certificate with a disallowed CN");
    let (status, _) = send(&d.api, request(GV, chain(&wrong_cn.cert_pem), &headers)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No credentials at all.
    let (status, _) = send(&d.api, request(GV, PeerCerts::default(), &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn trusted_front_proxy_passes_the_aggregator_probe() {
    let d = delegation(Cache::default());
    let proxy =
        d.front_proxy.issue_client("front-proxy-client", &[]).expect("issuing the front-proxy client certificate");
    // The availability check: system:kube-aggregator in system:masters, no SubjectAccessReview.
    let headers = [("X-Remote-User", "system:kube-aggregator"), ("X-Remote-Group", "system:masters")];
    let (status, body) = send(&d.api, request(GV, chain(&proxy.cert_pem), &headers)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "APIResourceList");
    assert_eq!(body["resources"][0]["shortNames"][0], "tsdev");
    drop(d.mock);
}

async fn answer_sar(mut mock: MockHandle, allowed: bool) -> Value {
    let (req, respond) = mock.next_request().await.unwrap_or_else(|| panic!("no request reached the API server"));
    assert_eq!(req.uri().path(), "/apis/authorization.k8s.io/v1/subjectaccessreviews");
    let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut sar: Value = serde_json::from_slice(&bytes).expect("parsing the SubjectAccessReview body");
    sar["status"] = json!({"allowed": allowed, "reason": if allowed { "" } else { "no RBAC policy matched" }});
    let body = kube::client::Body::from(serde_json::to_vec(&sar).unwrap_or_default());
    respond
        .send_response(Response::builder().status(201).body(body).expect("building the SubjectAccessReview response"));
    sar
}

#[tokio::test]
async fn subject_access_review_denial_is_a_403_status_and_is_cached() {
    let cache = Cache::default();
    cache.apply(endpoints("web", true));
    let d = delegation(cache);
    let proxy =
        d.front_proxy.issue_client("front-proxy-client", &[]).expect("issuing the front-proxy client certificate");
    let headers = [("X-Remote-User", "bob"), ("X-Remote-Group", "dev"), ("X-Remote-Extra-Scopes", "read")];
    let path = format!("{GV}/namespaces/default/tailscaledevices");
    let server = tokio::spawn(answer_sar(d.mock, false));
    let (status, body) = send(&d.api, request(&path, chain(&proxy.cert_pem), &headers)).await;
    let sar = server.await.expect("joining the mock API server task");
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("User \"bob\" cannot list resource \"tailscaledevices\""), "{message}");
    assert!(message.contains("no RBAC policy matched"), "{message}");
    assert_eq!(sar["spec"]["user"], "bob");
    assert_eq!(sar["spec"]["groups"], json!(["dev", "system:authenticated"]));
    assert_eq!(sar["spec"]["extra"]["scopes"], json!(["read"]));
    assert_eq!(sar["spec"]["resourceAttributes"]["verb"], "list");
    assert_eq!(sar["spec"]["resourceAttributes"]["namespace"], "default");
    assert_eq!(sar["spec"]["resourceAttributes"]["group"], "tailnet.gateway.tailscale.com");

    // The denial is cached: the same request is answered without asking again (the mock
    // handle is gone, so a second SubjectAccessReview would fail with a 500).
    let (status, _) = send(&d.api, request(&path, chain(&proxy.cert_pem), &headers)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn client_ca_certificate_is_authorized_as_its_own_user_not_the_headers() {
    let cache = Cache::default();
    cache.apply(endpoints("web", true));
    let d = delegation(cache);
    let alice = d.client_ca.issue_client("alice", &["readers"]).expect("issuing alice's client certificate");
    let headers = [("X-Remote-User", "admin"), ("X-Remote-Group", "system:masters")];
    let server = tokio::spawn(answer_sar(d.mock, true));
    let path = format!("{GV}/namespaces/default/tailscaledevices/web-0");
    let (status, body) = send(&d.api, request(&path, chain(&alice.cert_pem), &headers)).await;
    let sar = server.await.expect("joining the mock API server task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "TailscaleDevice");
    assert_eq!(sar["spec"]["user"], "alice");
    assert_eq!(sar["spec"]["resourceAttributes"]["verb"], "get");
    assert_eq!(sar["spec"]["resourceAttributes"]["name"], "web-0");
}

fn local_api(cache: Cache) -> (AggregatedApi, PeerCerts) {
    let ca = ca("local-ca");
    let auth = Auth::local(&ca.pair().cert_pem).expect("building local authentication from the CA");
    let admin = ca.issue_client("admin", &["system:masters"]).expect("issuing the admin client certificate");
    let api =
        AggregatedApi::new(cache, auth, CancellationToken::new()).with_bookmark_interval(Duration::from_millis(100));
    (api, chain(&admin.cert_pem))
}

#[tokio::test]
async fn local_mode_needs_a_certificate_from_the_local_ca() {
    let (api, admin) = local_api(Cache::default());
    let (status, _) = send(&api, request(GV, PeerCerts::default(), &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let other =
        ca("other").issue_client("admin", &["system:masters"]).expect("issuing a client certificate from another CA");
    let (status, _) = send(&api, request(GV, chain(&other.cert_pem), &[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = send(&api, request(GV, admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["groupVersion"], "tailnet.gateway.tailscale.com/v1alpha1");
    let (status, body) =
        send(&api, request(&format!("{GV}/namespaces/default/tailscaledevices/nope"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["reason"], "NotFound");
    let mut delete = request(&format!("{GV}/namespaces/default/tailscaledevices/x"), admin, &[]);
    *delete.method_mut() = http::Method::DELETE;
    let (status, body) = send(&api, delete).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["reason"], "MethodNotAllowed");
}

async fn next_event(body: &mut Body, buffer: &mut Vec<u8>) -> Value {
    loop {
        if let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=pos).collect();
            return serde_json::from_slice(&line).expect("parsing a watch event line");
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap_or_else(|_| panic!("no watch event within 5s"))
            .unwrap_or_else(|| panic!("watch stream ended"))
            .expect("reading the watch stream");
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
}

#[tokio::test]
async fn watch_resumes_from_a_remembered_version_and_gets_410_when_too_old() {
    let cache = Cache::new(4);
    cache.apply(endpoints("a", true));
    let resume_from = cache.read().revision();
    cache.apply(endpoints("b", true));
    let (api, admin) = local_api(cache.clone());

    // Resume: the change after `resume_from` is replayed, then live changes are pushed.
    let path = format!(
        "{GV}/namespaces/default/tailscaledevices?watch=true&resourceVersion={resume_from}&allowWatchBookmarks=true"
    );
    let resp = router(api.clone()).oneshot(request(&path, admin.clone(), &[])).await.unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let replayed = next_event(&mut body, &mut buf).await;
    assert_eq!(replayed["type"], "ADDED");
    assert_eq!(replayed["object"]["metadata"]["name"], "b-0");
    cache.apply(endpoints("a", false));
    let mut modified = next_event(&mut body, &mut buf).await;
    while modified["type"] == "BOOKMARK" {
        modified = next_event(&mut body, &mut buf).await;
    }
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["status"]["online"], false);
    let rv: u64 = modified["object"]["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(rv > resume_from, "resourceVersion {rv} must grow past {resume_from}");
    // Bookmarks were asked for and come on the (test-short) interval.
    let bookmark = next_event(&mut body, &mut buf).await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "TailscaleDevice");

    // Push the oldest change out of the 4-entry log: resuming from it is 410 Gone.
    for i in 0..6 {
        cache.apply(endpoints("a", i % 2 == 0));
    }
    let path = format!("{GV}/tailscaledevices?watch=1&resourceVersion={resume_from}");
    let (status, status_body) = send(&api, request(&path, admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::GONE, "{status_body}");
    assert_eq!(status_body["kind"], "Status");
    assert_eq!(status_body["code"], 410);
    assert_eq!(status_body["reason"], "Expired");
}

#[tokio::test]
async fn a_watch_timeout_too_large_to_add_is_clamped_and_a_short_one_ends_the_stream() {
    let cache = Cache::default();
    cache.apply(endpoints("a", true));
    let (api, admin) = local_api(cache.clone());
    // i64::MAX seconds: adding it to now overflowed and panicked the watch task.
    let huge = format!("{GV}/tailscaledevices?watch=true&timeoutSeconds=9223372036854775807");
    let resp = router(api.clone()).oneshot(request(&huge, admin.clone(), &[])).await.unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut body, &mut buf).await["type"], "ADDED", "the watch runs");
    cache.apply(endpoints("a", false));
    assert_eq!(next_event(&mut body, &mut buf).await["type"], "MODIFIED", "and keeps running");
    let short = format!("{GV}/tailscaledevices?watch=true&timeoutSeconds=1");
    let resp = router(api).oneshot(request(&short, admin, &[])).await.unwrap_or_else(|e| match e {});
    let ended = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    assert!(ended.is_ok_and(|b| b.is_ok()), "timeoutSeconds=1 ends the stream cleanly");
}

#[tokio::test]
async fn watch_with_field_selector_sends_deleted_when_an_object_leaves_it() {
    let cache = Cache::default();
    cache.apply(endpoints("a", true));
    let (api, admin) = local_api(cache.clone());
    let path = format!("{GV}/tailscaledevices?watch=true&fieldSelector=status.online%3Dtrue");
    let resp = router(api).oneshot(request(&path, admin, &[])).await.unwrap_or_else(|e| match e {});
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut body, &mut buf).await["type"], "ADDED");
    cache.apply(endpoints("a", false));
    let left = next_event(&mut body, &mut buf).await;
    assert_eq!(left["type"], "DELETED");
    assert_eq!(left["object"]["metadata"]["name"], "a-0");
    cache.apply(endpoints("a", true));
    assert_eq!(next_event(&mut body, &mut buf).await["type"], "ADDED");
}

#[tokio::test]
async fn openapi_v2_is_json_by_default_and_protobuf_when_asked() {
    use prost::Message;
    use tailscale_gateway::aggregated::openapi_proto::{PROTOBUF, PROTOBUF_DEPRECATED, pb};

    let (api, admin) = local_api(Cache::default());
    let (status, body) = send(&api, request("/openapi/v2", admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["swagger"], "2.0");

    // kubectl 1.27/1.28 ask with the `@` spelling; the answer names the parseable one.
    let req = request("/openapi/v2", admin, &[("accept", PROTOBUF_DEPRECATED)]);
    let resp = router(api.clone()).oneshot(req).await.unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some(PROTOBUF));
    assert_eq!(resp.headers().get("vary").and_then(|v| v.to_str().ok()), Some("Accept"));
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let doc = pb::Document::decode(bytes).expect("decoding the protobuf document");
    assert_eq!(doc.swagger, "2.0");
    let names: Vec<_> = doc.definitions.iter().flat_map(|d| &d.additional_properties).map(|n| &n.name).collect();
    assert!(names.iter().any(|n| n.ends_with(".TailscaleDevice")), "{names:?}");
}

#[tokio::test]
async fn requests_and_open_watches_are_counted_by_verb_resource_and_code() {
    use prometheus_client::registry::Registry;
    use tailscale_gateway::metrics::{AggregatedMetrics, encode};

    let cache = Cache::default();
    cache.apply(endpoints("a", true));
    let mut registry = Registry::with_prefix("tailscale_gateway");
    let metrics = AggregatedMetrics::register(&mut registry);
    let (api, admin) = local_api(cache);
    let api = api.with_metrics(metrics);
    assert_eq!(send(&api, request(&format!("{GV}/tailscaledevices"), admin.clone(), &[])).await.0, StatusCode::OK);
    let (status, _) =
        send(&api, request(&format!("{GV}/namespaces/default/tailscaledevices/nope"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(send(&api, request(GV, PeerCerts::default(), &[])).await.0, StatusCode::UNAUTHORIZED);
    let watch = format!("{GV}/tailscaledevices?watch=true");
    let resp = router(api.clone()).oneshot(request(&watch, admin, &[])).await.unwrap_or_else(|e| match e {});
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert_eq!(next_event(&mut body, &mut buf).await["type"], "ADDED");

    let text = encode(&registry);
    for want in [
        r#"tailscale_gateway_aggregated_requests_total{verb="list",resource="tailscaledevices",code="200"} 1"#,
        r#"tailscale_gateway_aggregated_requests_total{verb="get",resource="tailscaledevices",code="404"} 1"#,
        r#"tailscale_gateway_aggregated_requests_total{verb="get",resource="-",code="401"} 1"#,
        r#"tailscale_gateway_aggregated_requests_total{verb="watch",resource="tailscaledevices",code="200"} 1"#,
        r#"tailscale_gateway_aggregated_request_duration_seconds_count{verb="list",resource="tailscaledevices"} 1"#,
        r#"tailscale_gateway_aggregated_watches{verb="watch",resource="tailscaledevices"} 1"#,
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    assert!(!text.contains(r#"duration_seconds_count{verb="watch""#), "watches have no latency:\n{text}");
    drop(body);
    let text = encode(&registry);
    assert!(
        text.contains(r#"tailscale_gateway_aggregated_watches{verb="watch",resource="tailscaledevices"} 0"#),
        "{text}"
    );
}

const CRD_GV: &str = "/apis/gateway.tailscale.com/v1alpha1";

fn crd_objects() -> Vec<Resource> {
    let docs = [
        json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleTailnet",
            "metadata": {"name": "corp", "creationTimestamp": "2025-06-25T10:00:00Z"},
            "spec": {"oauthSecretRef": {"name": "oauth"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ok", "message": "",
                "lastTransitionTime": "2025-06-25T10:00:00Z"}], "tailnetInfo": {"name": "corp.com"}}}),
        json!({"apiVersion": "gateway.tailscale.com/v1alpha1", "kind": "TailscaleServices",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"selector": {"matchLabels": {"tier": "web"}}, "vipService": {"name": "svc:web"}},
            "status": {"endpointCount": 2, "vipService": {"name": "svc:web", "backendCount": 2, "healthyBackends": 1}}}),
    ];
    docs.into_iter().map(|d| Resource::from_value(d).expect("building a resource from the fixture")).collect()
}

fn crd_cache() -> Cache {
    let cache = Cache::default();
    for obj in crd_objects() {
        cache.apply(obj);
    }
    cache.apply(endpoints("a", true));
    cache
}

#[tokio::test]
async fn the_crd_group_is_served_only_when_asked_for() {
    let (api, admin) = local_api(crd_cache());
    let (_, groups) = send(&api, request("/apis", admin.clone(), &[])).await;
    assert_eq!(groups["groups"].as_array().map(Vec::len), Some(1), "{groups}");
    for path in [CRD_GV.to_string(), format!("{CRD_GV}/namespaces/default/tailscaleservices")] {
        let (status, _) = send(&api, request(&path, admin.clone(), &[])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} without with_crds");
    }
    let api = api.with_crds();
    let (_, groups) = send(&api, request("/apis", admin.clone(), &[])).await;
    let names: Vec<&str> =
        groups["groups"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["tailnet.gateway.tailscale.com", "gateway.tailscale.com"]);
    let (status, resources) = send(&api, request(CRD_GV, admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resources["resources"].as_array().map(Vec::len), Some(tailscale_gateway::api::crds().len()));
    // The tailnet group is unchanged: its views only.
    let (_, tailnet) = send(&api, request(GV, admin, &[])).await;
    assert_eq!(tailnet["resources"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn crd_kinds_are_read_only_objects_lists_and_tables() {
    let (api, admin) = local_api(crd_cache());
    let api = api.with_crds();
    let (status, svc) =
        send(&api, request(&format!("{CRD_GV}/namespaces/default/tailscaleservices/web"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(svc["kind"], "TailscaleServices");
    assert_eq!(svc["apiVersion"], "gateway.tailscale.com/v1alpha1");
    assert_eq!(svc["status"]["endpointCount"], 2);
    assert_eq!(svc["spec"]["vipService"]["name"], "svc:web");
    let uid = svc["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    assert_eq!(uid.len(), 36, "{uid}");
    // The same object in another server gets the same uid.
    let (other, admin2) = local_api(crd_cache());
    let (_, again) =
        send(&other.with_crds(), request(&format!("{CRD_GV}/namespaces/default/tailscaleservices/web"), admin2, &[]))
            .await;
    assert_eq!(again["metadata"]["uid"], uid.as_str());

    // Cluster-scoped: no namespace in the path or the object.
    let (status, tn) = send(&api, request(&format!("{CRD_GV}/tailscaletailnets/corp"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(tn["metadata"].get("namespace").is_none(), "{tn}");
    let (status, _) =
        send(&api, request(&format!("{CRD_GV}/namespaces/default/tailscaletailnets"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&api, request(&format!("{CRD_GV}/tailscaleservices/web"), admin.clone(), &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let (_, t) = send(&api, request(&format!("{CRD_GV}/tailscaletailnets"), admin.clone(), &[("accept", table)])).await;
    let columns: Vec<&str> =
        t["columnDefinitions"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(columns, ["Name", "TAILNET", "MAGICDNS", "READY", "AGE"]);
    assert_eq!(t["rows"][0]["cells"][0], "corp");
    assert_eq!(t["rows"][0]["cells"][1], "corp.com");
    assert_eq!(t["rows"][0]["cells"][2], Value::Null);
    assert_eq!(t["rows"][0]["cells"][3], "True");
    let (_, list) =
        send(&api, request(&format!("{CRD_GV}/tailscaleservices?labelSelector=app%3Dweb"), admin.clone(), &[])).await;
    assert_eq!(list["kind"], "TailscaleServicesList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (_, none) = send(
        &api,
        request(&format!("{CRD_GV}/tailscaleservices?fieldSelector=metadata.name%3Dother"), admin.clone(), &[]),
    )
    .await;
    assert_eq!(none["items"].as_array().map(Vec::len), Some(0));

    for method in [http::Method::DELETE, http::Method::POST, http::Method::PUT, http::Method::PATCH] {
        let mut write = request(&format!("{CRD_GV}/namespaces/default/tailscaleservices/web"), admin.clone(), &[]);
        *write.method_mut() = method.clone();
        let (status, body) = send(&api, write).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(body["reason"], "MethodNotAllowed");
    }
    let (status, version) =
        send(&api, request("/version", admin, &[("user-agent", "kubectl/v1.30.2 (linux/amd64) kubernetes/x")])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["minor"], "30");
}

#[tokio::test]
async fn crd_watches_see_changes_of_their_kind() {
    let cache = crd_cache();
    let (api, admin) = local_api(cache.clone());
    let api = api.with_crds();
    let path = format!("{CRD_GV}/namespaces/default/tailscaleservices?watch=true");
    let resp = router(api).oneshot(request(&path, admin, &[])).await.unwrap_or_else(|e| match e {});
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let added = next_event(&mut body, &mut buf).await;
    assert_eq!((added["type"].as_str(), added["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("web")));
    // A device change is not a TailscaleServices event; the services change is.
    cache.apply(endpoints("a", false));
    let mut changed = crd_objects().remove(1);
    if let Resource::Services(s) = &mut changed {
        s.spec.tailnet = Some("corp".into());
    }
    cache.apply(changed);
    let modified = next_event(&mut body, &mut buf).await;
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["kind"], "TailscaleServices");
    assert_eq!(modified["object"]["spec"]["tailnet"], "corp");
    cache.delete(tailscale_gateway::core::Kind::Services, &tailscale_gateway::core::ObjectKey::new("default", "web"));
    let deleted = next_event(&mut body, &mut buf).await;
    assert_eq!(deleted["type"], "DELETED");
}
