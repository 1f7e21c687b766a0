//! Extension server latency against a pass-through floor, over loopback gRPC.
//!
//! PostTranslateModify with 1,000 clusters, 1,000 routes and 200 TailscaleServices exposed by a
//! TailscaleGateway, PostClusterModify alone, and Envoy's authorization Check for a route policy
//! of 20 rules (the last one matching) against a server that allows everything unread. The floor is a server that only decodes the
//! request and re-encodes the same resources, so the ratio shows what our work adds on top of
//! the unavoidable protobuf and transport cost. Target: translate p50 <= 2x the floor.
//!
//! Run: `cargo bench --bench xds` (or `--profile dev` for a quick, unoptimized run).

/// The allocator of the `tailscale-gateway` binary, so figures match what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ConfigSource, config_source};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use prost::Message;
use serde_json::json;
use tailscale_gateway::cache::Cache;
use tailscale_gateway::core::{Kind, Resource};
use tailscale_gateway::xds::pb::envoy_gateway_extension_client::EnvoyGatewayExtensionClient;
use tailscale_gateway::xds::pb::envoy_gateway_extension_server::{EnvoyGatewayExtension, EnvoyGatewayExtensionServer};
use tailscale_gateway::xds::pb::*;
use tailscale_gateway::xds::{XdsMetrics, XdsOptions, serve_listener};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

const API: &str = "gateway.tailscale.com/v1alpha1";
const CLUSTERS: usize = 1_000;
const ROUTES: usize = 1_000;
const SERVICES: usize = 200;
const WARMUP: usize = 20;
const ROUNDS: usize = 300;
const MAX: usize = 256 << 20;

/// Allows every request without reading it: the floor of an ext_authz Check.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..CheckResponse::default()
        }))
    }
}

/// A route policy of 20 rules on `web`: 19 that miss a request for `/reports/q3`, then one that
/// allows it for a capability, with a header set.
fn policy_json() -> serde_json::Value {
    let mut rules: Vec<serde_json::Value> = (0..19)
        .map(|i| {
            json!({"matches": [{"path": {"value": format!("/area-{i}")}, "method": "POST"}],
            "action": {"type": "Deny", "deny": {"reason": "no"}}})
        })
        .collect();
    rules.push(json!({"matches": [{"identity": {"capabilities": ["example.com/cap/reports"]}, "path": {"value": "/reports"}}],
        "action": {"type": "Allow", "requestHeaders": {"set": [{"name": "X-Role", "value": "reader"}]}, "timeout": "10s"}}));
    json!({"apiVersion": API, "kind": "TailscaleRoutePolicy", "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web"}],
            "rules": rules, "defaultAction": "Deny"}})
}

/// A Check as Envoy sends it for a browser's GET, from an ingress proxy pod.
fn check_request() -> CheckRequest {
    let headers = [
        (":authority", "www.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        ("accept", "text/html,application/xhtml+xml"),
        ("tailscale-user-login", "alice@example.com"),
        ("tailscale-user-name", "Alice"),
        ("tailscale-app-capabilities", r#"{"example.com/cap/reports":[{}]}"#),
        ("x-forwarded-for", "100.64.0.7"),
        ("x-request-id", "4f1c6a0e-8a3b-4c1e-9d2f-0b7e5a9c1d23"),
    ];
    tailscale_gateway::xds::authz::testing::check_request(
        "apps/web",
        "10.0.0.7",
        "GET",
        "/reports/q3?format=html",
        &headers,
    )
}

/// Answers every hook with exactly what it received: the decode + encode floor.
struct PassThrough;

#[tonic::async_trait]
impl EnvoyGatewayExtension for PassThrough {
    async fn post_route_modify(
        &self,
        r: Request<PostRouteModifyRequest>,
    ) -> Result<Response<PostRouteModifyResponse>, Status> {
        Ok(Response::new(PostRouteModifyResponse { route: r.into_inner().route }))
    }
    async fn post_virtual_host_modify(
        &self,
        r: Request<PostVirtualHostModifyRequest>,
    ) -> Result<Response<PostVirtualHostModifyResponse>, Status> {
        Ok(Response::new(PostVirtualHostModifyResponse { virtual_host: r.into_inner().virtual_host }))
    }
    async fn post_http_listener_modify(
        &self,
        r: Request<PostHttpListenerModifyRequest>,
    ) -> Result<Response<PostHttpListenerModifyResponse>, Status> {
        Ok(Response::new(PostHttpListenerModifyResponse { listener: r.into_inner().listener }))
    }
    async fn post_cluster_modify(
        &self,
        r: Request<PostClusterModifyRequest>,
    ) -> Result<Response<PostClusterModifyResponse>, Status> {
        Ok(Response::new(PostClusterModifyResponse { cluster: r.into_inner().cluster }))
    }
    async fn post_endpoints_modify(
        &self,
        r: Request<PostEndpointsModifyRequest>,
    ) -> Result<Response<PostEndpointsModifyResponse>, Status> {
        Ok(Response::new(PostEndpointsModifyResponse { load_assignment: r.into_inner().load_assignment }))
    }
    async fn post_translate_modify(
        &self,
        r: Request<PostTranslateModifyRequest>,
    ) -> Result<Response<PostTranslateModifyResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(PostTranslateModifyResponse {
            clusters: r.clusters,
            secrets: r.secrets,
            listeners: r.listeners,
            routes: r.routes,
        }))
    }
}

fn res(v: serde_json::Value) -> Resource {
    Resource::from_value(v).expect("building the resource")
}

fn service_json(i: usize) -> serde_json::Value {
    json!({"apiVersion": API, "kind": "TailscaleServices",
        "metadata": {"name": format!("svc-{i}"), "namespace": "apps", "generation": 1, "resourceVersion": "1"},
        "spec": {"selector": {"matchLabels": {"app": format!("app-{i}")}},
                 "vipService": {"ports": ["tcp:443"]},
                 "loadBalancing": {"strategy": "round-robin", "healthCheck": {"path": "/health", "interval": "10s"}}},
        "status": {"vipService": {"dnsName": format!("svc-{i}.tail8eff9.ts.net")}}})
}

fn fill(cache: &Cache) {
    for i in 0..SERVICES {
        for region in ["east", "west"] {
            cache.apply(res(json!({"apiVersion": API, "kind": "TailscaleEndpoints",
                "metadata": {"name": format!("ep-{i}-{region}"), "namespace": "apps",
                             "labels": {"app": format!("app-{i}"), "region": region}},
                "spec": {"tailnet": "corp", "ports": [{"port": 443}]},
                "status": {"devices": [{"hostname": format!("ep-{i}-{region}-0"), "online": true},
                                       {"hostname": format!("ep-{i}-{region}-1"), "online": false}]}})));
        }
        cache.apply(res(service_json(i)));
    }
    cache.apply(res(json!({"apiVersion": API, "kind": "TailscaleGateway",
        "metadata": {"name": "tsgw", "namespace": "apps"},
        "spec": {"gatewayRef": {"name": "eg", "namespace": "gw"}, "tailnets": [{"name": "corp"}]}})));
    // The Check row's policy and ingress proxy pod (its HTTPRoute is not in the cache, so the
    // translate row holds no route for it).
    cache.apply(res(policy_json()));
    cache.set_ingress_pod(
        tailscale_gateway::core::ObjectKey::new("apps", "ep-0-east-0"),
        vec!["10.0.0.7".parse().expect("an IP")],
    );
    for kind in Kind::ALL {
        cache.mark_synced(kind);
    }
}

fn eg_cluster(name: String) -> Cluster {
    Cluster {
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            service_name: name.clone(),
            eds_config: Some(ConfigSource {
                resource_api_version: 2,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                ..Default::default()
            }),
        }),
        name,
        connect_timeout: Some(PbDuration { seconds: 10, nanos: 0 }),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
        ..Default::default()
    }
}

fn translate_request() -> PostTranslateModifyRequest {
    let clusters = (0..CLUSTERS).map(|i| eg_cluster(format!("httproute/ns-{}/route-{i}/rule/0", i % 20))).collect();
    // Ten listeners' route configurations of 100 routes each; the first belongs to the Gateway
    // the TailscaleGateway targets.
    let routes = (0..10)
        .map(|l| RouteConfiguration {
            name: if l == 0 { "gw/eg/http".into() } else { format!("gw/other-{l}/http") },
            virtual_hosts: vec![VirtualHost {
                name: format!("vh-{l}"),
                domains: vec![format!("host-{l}.example.com")],
                routes: (0..ROUTES / 10)
                    .map(|r| Route {
                        name: format!("httproute/ns/route-{l}-{r}/rule/0/match/0"),
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix(format!("/app-{r}/"))),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(format!(
                                "httproute/ns/route-{r}/rule/0"
                            ))),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    PostTranslateModifyRequest { clusters, routes, ..Default::default() }
}

async fn client(addr: SocketAddr) -> EnvoyGatewayExtensionClient<Channel> {
    EnvoyGatewayExtensionClient::connect(format!("http://{addr}"))
        .await
        .expect("connecting to the extension server")
        .max_decoding_message_size(MAX)
        .max_encoding_message_size(MAX)
}

#[derive(Clone, Copy)]
struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats { p50: at(0.50), p99: at(0.99) }
}

async fn measure<F, Fut>(mut call: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    for _ in 0..WARMUP {
        call().await;
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let n = call().await;
        samples.push(t.elapsed());
        std::hint::black_box(n);
    }
    stats(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cache = Cache::default();
    fill(&cache);

    let ours_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding our server's listener");
    let ours_addr = ours_listener.local_addr().expect("reading our server's address");
    let stop = tokio_util::sync::CancellationToken::new();
    let server_cache = cache.clone();
    let server_stop = stop.clone();
    let ours = tokio::spawn(async move {
        let opts = XdsOptions { addr: ours_addr, ..XdsOptions::default() };
        serve_listener(ours_listener, server_cache, opts, XdsMetrics::default(), server_stop)
            .await
            .expect("serving our extension");
    });

    let floor_listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the floor server's listener");
    let floor_addr = floor_listener.local_addr().expect("reading the floor server's address");
    let (floor_stop_tx, floor_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let floor = tokio::spawn(async move {
        Server::builder()
            .add_service(
                EnvoyGatewayExtensionServer::new(PassThrough)
                    .max_decoding_message_size(MAX)
                    .max_encoding_message_size(MAX),
            )
            .add_service(AuthorizationServer::new(AllowAll))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(floor_listener).with_nodelay(Some(true)),
                async {
                    let _ = floor_stop_rx.await;
                },
            )
            .await
            .expect("serving the pass-through floor server");
    });

    let translate = translate_request();
    let cluster_req = PostClusterModifyRequest {
        cluster: Some(eg_cluster("httproute/apps/web/rule/0".into())),
        post_cluster_context: Some(PostClusterExtensionContext {
            backend_extension_resources: vec![ExtensionResource {
                unstructured_bytes: serde_json::to_vec(&service_json(7)).unwrap_or_default(),
            }],
        }),
    };

    let mut ours_c = client(ours_addr).await;
    let floor_c = client(floor_addr).await;
    let ours_authz = AuthorizationClient::connect(format!("http://{ours_addr}")).await.expect("connecting to Check");
    let floor_authz = AuthorizationClient::connect(format!("http://{floor_addr}")).await.expect("connecting to Check");
    let check = check_request();
    let answer = ours_authz.clone().check(check.clone()).await.expect("calling Check").into_inner();
    assert!(
        matches!(answer.http_response, Some(HttpResponse::OkResponse(_))),
        "the last rule allows the benchmark's request: {answer:?}"
    );
    let out = ours_c
        .post_translate_modify(translate.clone())
        .await
        .expect("calling PostTranslateModify on our server")
        .into_inner();
    let added_routes: usize =
        out.routes.iter().map(|r| r.virtual_hosts.iter().map(|v| v.routes.len()).sum::<usize>()).sum();
    println!(
        "translate request: {} clusters, {} routes, {} bytes; response: {} clusters, {} routes, {} bytes",
        translate.clusters.len(),
        ROUTES,
        translate.encoded_len(),
        out.clusters.len(),
        added_routes,
        out.encoded_len()
    );

    let mut rows = Vec::new();
    for (name, ours_stats, floor_stats) in
        [
            (
                "PostTranslateModify",
                measure(|| {
                    let mut c = ours_c.clone();
                    let r = translate.clone();
                    async move { c.post_translate_modify(r).await.map(|r| r.into_inner().clusters.len()).unwrap_or(0) }
                })
                .await,
                measure(|| {
                    let mut c = floor_c.clone();
                    let r = translate.clone();
                    async move { c.post_translate_modify(r).await.map(|r| r.into_inner().clusters.len()).unwrap_or(0) }
                })
                .await,
            ),
            (
                "PostClusterModify",
                measure(|| {
                    let mut c = ours_c.clone();
                    let r = cluster_req.clone();
                    async move {
                        c.post_cluster_modify(r).await.map(|r| r.into_inner().cluster.is_some() as usize).unwrap_or(0)
                    }
                })
                .await,
                measure(|| {
                    let mut c = floor_c.clone();
                    let r = cluster_req.clone();
                    async move {
                        c.post_cluster_modify(r).await.map(|r| r.into_inner().cluster.is_some() as usize).unwrap_or(0)
                    }
                })
                .await,
            ),
            (
                "Check (route policy)",
                measure(|| {
                    let mut c = ours_authz.clone();
                    let r = check.clone();
                    async move { c.check(r).await.map(|r| r.into_inner().http_response.is_some() as usize).unwrap_or(0) }
                })
                .await,
                measure(|| {
                    let mut c = floor_authz.clone();
                    let r = check.clone();
                    async move { c.check(r).await.map(|r| r.into_inner().http_response.is_some() as usize).unwrap_or(0) }
                })
                .await,
            ),
        ]
    {
        rows.push((name, ours_stats, floor_stats));
    }

    println!("{:<22} {:>10} {:>10} {:>12} {:>12} {:>8}", "hook", "p50 ms", "p99 ms", "floor p50", "floor p99", "ratio");
    for (name, o, f) in rows {
        println!(
            "{:<22} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>7.2}x",
            name,
            ms(o.p50),
            ms(o.p99),
            ms(f.p50),
            ms(f.p99),
            o.p50.as_secs_f64() / f.p50.as_secs_f64()
        );
    }
    stop.cancel();
    let _ = floor_stop_tx.send(());
    let _ = ours.await;
    let _ = floor.await;
}
